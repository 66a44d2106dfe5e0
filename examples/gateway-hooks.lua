-- prequal-gw with Lua hooks: every module of lua/hooks/ on one upstream.
-- `prequal-gw examples/gateway-hooks.lua` (with the example backends on 127.0.0.1:9001-9004, as
-- `./scripts/run` starts them). Try:
--
--   curl -i localhost:8080/old/hello                               # 301 to /new/hello
--   curl -i localhost:8080/api/hello                               # 401: no key
--   curl -i -H 'X-API-Key: demo-key-1' localhost:8080/api/hello    # proxied as /hello
--   curl -i 'localhost:8080/api/hello?api_key=demo-key-2'          # key in the query string
--   curl -i -X OPTIONS -H 'Origin: https://app.example' \
--        -H 'Access-Control-Request-Method: POST' localhost:8080/api/hello   # CORS preflight
--   curl -i -H 'X-API-Key: demo-key-1' localhost:8080/v2/missing   # a backend 404 as JSON
--
-- Hooks run in this order: global on_request, route on_request (which may answer), route
-- rewrite_path, pick, global then route on_response, on_log. A route takes one function per
-- hook; hooks.chain combines several.

local api_key     = require("hooks.api_key")
local chain       = require("hooks.chain")
local cors        = require("hooks.cors")
local headers     = require("hooks.headers")
local json_errors = require("hooks.json_errors")
local rate_limit  = require("hooks.rate_limit")
local rewrite     = require("hooks.rewrite")

-- Keys map to client names; the names (never the keys) go to req.ctx.client and the logs.
local auth = api_key.new{
    keys = {
        [os.getenv("DEMO_KEY_1") or "demo-key-1"] = "demo-client-1",
        [os.getenv("DEMO_KEY_2") or "demo-key-2"] = "demo-client-2",
    },
    header = "X-API-Key",
    query_param = "api_key",   -- note: a key in the query string does reach the backend
    realm = "demo",
}

local web_cors = cors.new{
    origins = { "https://app.example", "http://localhost:3000" },
    methods = { "GET", "POST", "PUT", "DELETE" },
    headers = { "Content-Type", "X-API-Key" },
    expose = { "X-Request-Id" },
    credentials = true,
    max_age = 600,
}

-- Per worker: with `workers = 2` a client gets up to 2 x 20 requests per second overall.
local limiter = rate_limit.new{
    rate = 20, burst = 40, max_keys = 10000,
    key = function(req) return req:client_ip() end,
}

local errors = json_errors.new{
    include_request_id = true,
    messages = { [404] = "no such resource", [502] = "the backend failed; try again" },
}

local to_upstream = headers.request{
    set = {
        ["X-Client"] = function(req) return req.ctx.client end,  -- set by auth
        ["X-Gateway-Worker"] = function() return tostring(gw.worker.id) end,
    },
    remove = { "X-Debug" },
}

local to_client = headers.response{
    set = { ["X-Served-By"] = "prequal-gw" },
    remove = { "Server" },
}

return {
    listen  = "0.0.0.0:8080",
    workers = 2,
    admin   = { listen = "127.0.0.1:9901" },
    access_log = "stdout",
    log_level  = "info",

    upstreams = {
        app = {
            strategy = "prequal",
            prequal  = { probe_path = "/probe" },
            backends = {
                "http://127.0.0.1:9001",
                "http://127.0.0.1:9002",
                "http://127.0.0.1:9003",
                "http://127.0.0.1:9004",
            },
        },
    },

    -- Global hooks run before each route's own.
    hooks = {
        on_response = to_client,
    },

    routes = {
        -- Old URLs: answered by the gateway with a redirect, never proxied.
        { name = "legacy", match = { path_prefix = "/old/" }, upstream = "app",
          on_request = rewrite.redirect{
              { "^/old/(.*)$", "/new/%1", status = 301 },
          } },

        -- The API: CORS first (a preflight carries no key), then the rate limit (so failed
        -- keys are limited too), then the key, then the upstream headers.
        { name = "api", match = { path_prefix = "/api/" }, upstream = "app",
          strip_prefix = true,
          on_request = chain.on_request(web_cors, limiter, auth, to_upstream),
          rewrite_path = rewrite.new{
              { "^/v1/(.*)$", "/%1" },          -- /api/v1/x -> /x
              { "^/me$", "/users/self" },
          },
          on_response = web_cors.on_response,
          on_log = function(res)
              if res:status() >= 500 then
                  -- gw.log joins its arguments with spaces
                  gw.log.warn("api error", res:status(), "from", res:backend() or "gateway",
                              "client=" .. (res.ctx.client or "-"))
              end
          end },

        -- Buffered, so backend error pages can be rewritten as JSON.
        { name = "v2", match = { path_prefix = "/v2/" }, upstream = "app",
          buffer_response = true,
          on_request = chain.on_request(auth, errors),
          on_response = errors.on_response },

        { name = "default", match = { path_prefix = "/" }, upstream = "app" },
    },
}
