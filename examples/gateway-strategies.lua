-- prequal-gw with Lua strategies: every module of lua/strategies/ over the four example backends
-- (127.0.0.1:9001-9004, as `./scripts/run` starts them). `prequal-gw examples/gateway-strategies.lua`.
-- Try:
--
--   curl -s -H 'X-User: alice' localhost:8080/         # always the same backend for alice
--   curl -s --cookie 'session=s1' localhost:8080/sticky/hello
--   curl -s localhost:8080/canary/hello                 # ~10% answered by 127.0.0.1:9004
--   curl -s -H 'X-Canary: always' localhost:8080/canary/hello
--   ZONE=b prequal-gw examples/gateway-strategies.lua   # /zonal/ prefers 9003-9004
--
-- A strategy is a table ({ name, init?, pick, on_result?, on_backends_changed? }); `pick` runs
-- on the request path without I/O, and delegates to a native strategy through gw.strategy.*.
-- Backend tables may carry `meta`, which strategies read as `backend.meta`.

local canary          = require("strategies.canary")
local consistent_hash = require("strategies.consistent_hash")
local zone_aware      = require("strategies.zone_aware")

-- The same four backends for every upstream; meta says where each runs and which is the canary.
local function backends()
    return {
        { url = "http://127.0.0.1:9001", meta = { zone = "a" } },
        { url = "http://127.0.0.1:9002", meta = { zone = "a" } },
        { url = "http://127.0.0.1:9003", meta = { zone = "b" } },
        { url = "http://127.0.0.1:9004", meta = { zone = "b", canary = true } },
    }
end

local common = {
    prequal  = { probe_path = "/probe" },   -- gw.strategy.prequal uses these pools
    timeouts = { connect_ms = 1000, read_ms = 30000 },
    retries  = { max = 2 },
    health   = { max_fails = 3, eject_ms = 1000 },
}

local function upstream(strategy)
    local u = { strategy = strategy, backends = backends() }
    for k, v in pairs(common) do
        u[k] = v
    end
    return u
end

return {
    listen  = "0.0.0.0:8080",
    workers = "auto",
    admin   = { listen = "127.0.0.1:9901" },
    access_log = "stdout",

    upstreams = {
        -- Requests with X-User stick to one backend (only ~1/4 of users move when a backend
        -- leaves); requests without it go to Prequal.
        app = upstream(consistent_hash.new{ header = "X-User", replicas = 160 }),

        -- Sticky sessions by cookie.
        sticky = upstream(consistent_hash.new{ cookie = "session" }),

        -- 10% of requests to the canary (9004); X-Canary: always|never forces the choice.
        canary = upstream(canary.new{
            canary = function(b) return b.meta.canary == true end,
            weight = 10,
            header = "X-Canary",
        }),

        -- Stay in this gateway's zone while it has at least 2 healthy backends.
        zonal = upstream(zone_aware.new{ zone = os.getenv("ZONE") or "a", min_healthy = 2 }),
    },

    routes = {
        { name = "sticky", match = { path_prefix = "/sticky/" }, upstream = "sticky",
          strip_prefix = true },
        { name = "canary", match = { path_prefix = "/canary/" }, upstream = "canary",
          strip_prefix = true },
        { name = "zonal", match = { path_prefix = "/zonal/" }, upstream = "zonal",
          strip_prefix = true },
        { name = "default", match = { path_prefix = "/" }, upstream = "app" },
    },
}
