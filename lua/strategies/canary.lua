--- strategies.canary: send a small share of requests to canary backends.
--
-- Backends are split once per membership change into a canary set and a stable set: canaries
-- are those for which `canary(backend)` is true (e.g. `backend.meta.canary`, set with
-- `meta = { canary = true }` in the backend's config) or whose url is in `urls`. A request
-- goes to the canary set with probability `weight` percent (math.random), else to the stable
-- set; within the chosen set, `gw.strategy.prequal` picks, over a filtered view of just that
-- set (see strategies.subset: a preallocated array refilled per pick, no allocation, the
-- filter evaluated only when membership changes, so `canary` must look at static fields only:
-- url, id, weight, meta).
--
-- A request header (`header`, default "X-Canary") forces the choice: "always" sends it to the
-- canary set only and "never" to the stable set only (case-insensitive). A forced request gets
-- no backend (503) when its set has none available: a tester asking for the canary learns
-- that it is down instead of silently getting a stable backend. Any other value is ignored.
--
-- Unforced requests fail over: when the chosen set has no healthy, untried backend, the other
-- set is used, so a dead canary costs no availability.
--
-- Options:
--
--  * `canary = fn(backend) -> bool` or `urls = { "http://10.0.0.9:8080", ... }` (exact urls as
--    the runtime reports them); exactly one.
--  * `weight` (5): percent of unforced requests for the canary set, 0..100.
--  * `header` ("X-Canary"): the forcing header; false disables forcing.
--
-- Example:
--
--     backends = { "http://127.0.0.1:9001", "http://127.0.0.1:9002",
--                  { url = "http://127.0.0.1:9003", meta = { canary = true } } },
--     strategy = require("strategies.canary").new{
--         canary = function(b) return b.meta.canary == true end, weight = 5 },
--
-- @module strategies.canary

local subset = require("strategies.subset")

local type, ipairs, error, random, lower = type, ipairs, error, math.random, string.lower

local M = {}

--- Builds the strategy.
-- @tparam table opts see the module comment
-- @return a strategy table
function M.new(opts)
    if type(opts) ~= "table" then
        error("canary.new: options table expected", 2)
    end
    local is_canary
    if opts.canary ~= nil and opts.urls ~= nil then
        error("canary.new: give canary or urls, not both", 2)
    elseif type(opts.canary) == "function" then
        is_canary = opts.canary
    elseif type(opts.urls) == "table" then
        local set = {}
        for i, u in ipairs(opts.urls) do
            if type(u) ~= "string" then
                error("canary.new: urls[" .. i .. "] must be a string", 2)
            end
            set[u] = true
        end
        is_canary = function(b) return set[b.url] == true end
    else
        error("canary.new: canary must be a function of backend, or urls a list of urls", 2)
    end
    local weight = opts.weight or 5
    if type(weight) ~= "number" or weight < 0 or weight > 100 then
        error("canary.new: weight must be a percentage in 0..100", 2)
    end
    local header = opts.header
    if header == nil then
        header = "X-Canary"
    end
    if header ~= false and (type(header) ~= "string" or header == "") then
        error("canary.new: header must be a header name or false", 2)
    end

    local function stable(b) return not is_canary(b) end

    local function init_state(state)
        state.canary, state.stable = subset.new(is_canary), subset.new(stable)
        return state
    end

    -- Prequal over one set, or nil when it has no healthy, untried member (a native strategy
    -- would rather return an unhealthy one than nil, which would defeat failing over).
    local function pick_in(set, other, backends, req)
        local view, m, rebuilt = subset.view(set, backends)
        if rebuilt then
            subset.invalidate(other)
        end
        if m == 0 or subset.count_available(view, m, req) == 0 then
            return nil
        end
        return gw.strategy.prequal(view, req)
    end

    local strategy = { name = "canary" }

    function strategy.init(_, _, state)
        return init_state(state or {})
    end

    function strategy.on_backends_changed(_, state)
        if state.canary then
            subset.invalidate(state.canary)
            subset.invalidate(state.stable)
        end
    end

    function strategy.pick(backends, req, state)
        if state.canary == nil then
            init_state(state)
        end
        if header then
            local force = req:header(header)
            if force then
                force = lower(force)
                if force == "always" then
                    return pick_in(state.canary, state.stable, backends, req)
                elseif force == "never" then
                    return pick_in(state.stable, state.canary, backends, req)
                end
            end
        end
        local first, second = state.stable, state.canary
        if random() * 100 < weight then
            first, second = second, first
        end
        return pick_in(first, second, backends, req) or pick_in(second, first, backends, req)
    end

    return strategy
end

return M
