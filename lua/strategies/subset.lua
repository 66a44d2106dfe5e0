--- strategies.subset: cheap filtered views of a backends view, for strategies that delegate
-- the choice within a subset to a native strategy (`gw.strategy.prequal(view, req)`).
--
-- Not a strategy itself. How it stays cheap:
--
--  * The filter runs only when membership changes, not per request. It must therefore depend
--    only on what does not change between membership changes: `id`, `url`, `weight`, `meta`
--    (not `healthy`, `rif`, ...). The subset remembers the positions and ids of the members.
--  * Per request, `subset.view` refills one preallocated Lua array with the current entries at
--    those positions (no allocation) and returns it.
--  * The runtime calls `on_backends_changed` on every membership change: call
--    `subset.invalidate` there. As a safety net `view` also rebuilds when `#backends` changed
--    or a member's position now holds another id; it cannot see a non-member replaced by a
--    new member at the same position without the call.
--  * The array is a plain table, not a proxy with `__len`: LuaJIT (Lua 5.1 semantics) ignores
--    `__len` on tables, so only a real array gives the right `#view`.
--
-- The array is reused by the next call on the same subset: use it before picking again, and
-- never keep it (a worker runs one pick at a time, so this is safe inside `pick`).
--
-- Example (inside a strategy):
--
--     local subset = require("strategies.subset")
--     state.fast = state.fast or subset.new(function(b) return b.meta.tier == "fast" end)
--     local view, n = subset.view(state.fast, backends)
--     if n > 0 then return gw.strategy.prequal(view, req) end
--
-- @module strategies.subset

local M = {}

--- A new, empty subset selecting the backends for which `filter(backend)` is true.
function M.new(filter)
    if type(filter) ~= "function" then
        error("subset.new: filter must be a function", 2)
    end
    return { filter = filter, pos = {}, ids = {}, n = -1, m = 0, array = {}, filled = 0 }
end

--- Recomputes the members from `backends` (call it from on_backends_changed; `view` also
-- does it by itself when it notices a change).
function M.rebuild(s, backends)
    local pos, ids, filter = s.pos, s.ids, s.filter
    local n = #backends
    local m = 0
    for i = 1, n do
        local b = backends[i]
        if filter(b) then
            m = m + 1
            pos[m], ids[m] = i, b.id
        end
    end
    for k = m + 1, s.m do
        pos[k], ids[k] = nil, nil
    end
    s.n, s.m = n, m
end

--- Marks the subset stale, so the next `view` rebuilds it.
function M.invalidate(s)
    s.n = -1
end

-- Fills s.array with the current entries; false when a position no longer holds its member.
local function fill(s, backends)
    local array, pos, ids = s.array, s.pos, s.ids
    if s.m > s.filled then
        s.filled = s.m -- entries up to s.m may be written below, even if this fill fails
    end
    for k = 1, s.m do
        local b = backends[pos[k]]
        if b == nil or b.id ~= ids[k] then
            return false
        end
        array[k] = b
    end
    for k = s.filled, s.m + 1, -1 do
        array[k] = nil
    end
    s.filled = s.m
    return true
end

--- The members' current entries as a plain array (reused per call), their count, and
-- whether the subset had to be rebuilt (membership changed: sibling subsets are stale too).
function M.view(s, backends)
    if s.n ~= #backends or not fill(s, backends) then
        M.rebuild(s, backends)
        fill(s, backends)
        return s.array, s.m, true
    end
    return s.array, s.m, false
end

--- How many members are healthy and not yet tried for `req` (req may be nil).
function M.count_available(view, m, req)
    local c = 0
    for k = 1, m do
        local b = view[k]
        if b.healthy and not (req and req:tried(b)) then
            c = c + 1
        end
    end
    return c
end

return M
