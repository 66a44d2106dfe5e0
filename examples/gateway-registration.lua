-- prequal-gw with backends that register themselves: no static backend list, no separate
-- registry. Backends join with POST /register (and keep joining, as a heartbeat, before their
-- TTL runs out), leave with POST /unregister, and are checked by an on_register hook.
-- `prequal-gw examples/gateway-registration.lua`, then:
--
--   build/pgw-backend --port 9101 --quiet &
--   curl -s -H 'Authorization: Bearer dev-token' localhost:9901/register \
--        -d '{"url": "http://127.0.0.1:9101", "meta": {"zone": "a", "service": "app"}}'
--   curl -s localhost:8080/hello                         # served by 9101
--   curl -s localhost:9901/status                        # id, source, member, expires_in_ms
--   while sleep 10; do curl -s -H 'Authorization: Bearer dev-token' localhost:9901/register \
--        -d '{"url": "http://127.0.0.1:9101"}' >/dev/null; done &    # the heartbeat
--
-- Set PGW_ADMIN_TOKEN to use another token, ZONE for the gateway's own zone.

local zone_aware = require("strategies.zone_aware")

local ZONES = { a = true, b = true, c = true }

return {
  listen  = "0.0.0.0:8080",
  workers = "auto",
  admin   = { listen = "127.0.0.1:9901", token = os.getenv("PGW_ADMIN_TOKEN") or "dev-token" },
  registration = {
    allow        = { "127.0.0.0/8", "10.0.0.0/8" },  -- where backends may be: never the world
    ttl_ms       = 30000,                             -- gone 30 s after the last heartbeat
    max_backends = 32,
    upstream     = "app",                             -- for bodies without "upstream"
  },

  upstreams = {
    app = {
      -- Keeps traffic in this gateway's zone (from the registered meta) while the zone has two
      -- healthy backends, and lets Prequal choose within it.
      strategy = zone_aware.new{ zone = os.getenv("ZONE") or "a", min_healthy = 2 },
      prequal  = { probe_path = "/probe" },
      backends = {},
      retries  = { max = 2 },
    },
  },

  routes = {
    { match = { path_prefix = "/" }, upstream = "app" },
  },

  hooks = {
    -- Admission control: a backend must say which zone it runs in and that it is an app
    -- server; anything else gets 403 "rejected".
    on_register = function(backend, upstream)
      local meta = backend.meta
      if not ZONES[meta.zone] or meta.service ~= "app" then
        gw.log.warn("refusing " .. backend.url .. " in " .. upstream .. ": meta.zone must be a, b "
                    .. "or c and meta.service \"app\"")
        return false
      end
      gw.log.info("admitting " .. backend.url .. " (zone " .. meta.zone .. ") to " .. upstream)
    end,
    on_unregister = function(backend, upstream, reason)
      gw.log.info(backend.url .. " left " .. upstream .. " (" .. reason .. ")")
    end,
  },
}
