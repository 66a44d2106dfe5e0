--- strategies.zone_aware: keep traffic in the gateway's own zone while the zone can take it.
--
-- Backends whose `meta.zone` equals `zone` (set with `meta = { zone = "a" }` in the backend's
-- config) are local. While at least `min_healthy` local backends are healthy, a request goes
-- to one of them; below that the request may go anywhere (local backends included), so a zone
-- that is losing replicas does not take all of its traffic on the few that remain. Within the
-- chosen set `gw.strategy.prequal` picks. The local set is a filtered view built only when
-- membership changes and refilled per pick without allocation (see strategies.subset).
--
-- A retry still prefers another local backend; when every local one has been tried it goes
-- to the whole upstream.
--
-- Options:
--
--  * `zone` (os.getenv("ZONE") or "a"): this gateway's zone.
--  * `min_healthy` (2): healthy local backends needed to stay in the zone (>= 1).
--
-- Example:
--
--     backends = { { url = "http://10.0.1.1:80", meta = { zone = "a" } },
--                  { url = "http://10.0.2.1:80", meta = { zone = "b" } } },
--     strategy = require("strategies.zone_aware").new{ zone = os.getenv("ZONE"), min_healthy = 2 },
--
-- @module strategies.zone_aware

local subset = require("strategies.subset")

local type, error, floor = type, error, math.floor

local M = {}

--- Builds the strategy.
-- @tparam table opts see the module comment (may be nil)
-- @return a strategy table
function M.new(opts)
    opts = opts or {}
    if type(opts) ~= "table" then
        error("zone_aware.new: options table expected", 2)
    end
    local zone = opts.zone
    if zone == nil then
        zone = os.getenv("ZONE") or "a"
    end
    if type(zone) ~= "string" or zone == "" then
        error("zone_aware.new: zone must be a non-empty string", 2)
    end
    local min_healthy = opts.min_healthy or 2
    if type(min_healthy) ~= "number" or min_healthy < 1 or min_healthy ~= floor(min_healthy) then
        error("zone_aware.new: min_healthy must be a positive integer", 2)
    end

    local function is_local(b)
        local meta = b.meta
        return meta ~= nil and meta.zone == zone
    end

    local strategy = { name = "zone_aware" }

    function strategy.init(_, _, state)
        state = state or {}
        state.zone = subset.new(is_local)
        return state
    end

    function strategy.on_backends_changed(_, state)
        if state.zone then
            subset.invalidate(state.zone)
        end
    end

    function strategy.pick(backends, req, state)
        local set = state.zone
        if set == nil then
            set = subset.new(is_local)
            state.zone = set
        end
        local view, m = subset.view(set, backends)
        if m >= min_healthy then
            local healthy = 0
            for k = 1, m do
                if view[k].healthy then
                    healthy = healthy + 1
                end
            end
            if healthy >= min_healthy and subset.count_available(view, m, req) > 0 then
                local b = gw.strategy.prequal(view, req)
                if b then
                    return b
                end
            end
        end
        return gw.strategy.prequal(backends, req)
    end

    return strategy
end

return M
