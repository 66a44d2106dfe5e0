-- End-to-end specs: the real prequal-gw, with a generated gateway.lua that uses every module of
-- lua/hooks and lua/strategies, in front of real pgw-backend processes, driven over HTTP.
--
-- Binaries: PGW_BIN (default build/prequal-gw) and PGW_BACKEND (default build/pgw-backend); when
-- either is missing every spec here is pending. Every process started is killed in teardown and
-- by a finally in the first spec (PGW_E2E_KEEP=1 keeps the temp dir with the logs).
local E = require("support.e2e")
local gwt = require("gw.test")

local missing = E.missing()

describe("e2e: library hooks and strategies in prequal-gw", function()
    if missing then
        pending(missing)
        return
    end

    local b = {}      -- name -> { name, port, url, pid }
    local gwp         -- the gateway: { port, admin, pid, log }
    local dir

    local function get(path, headers, method)
        return E.request(gwp.port, { method = method, path = path, headers = headers })
    end

    -- The backend's echo of the request it received.
    local function echo(res)
        local j = E.json(res)
        assert.is_table(j, "expected the backend's JSON echo, got: " .. tostring(res.raw))
        return j
    end

    setup(function()
        local ok, err = pcall(function()
            dir = E.tmpdir()
            for i = 1, 4 do
                local n = "b" .. i
                b[n] = E.start_backend(dir, n)
            end
            local config = ([[
local api_key     = require("hooks.api_key")
local chain       = require("hooks.chain")
local cors        = require("hooks.cors")
local headers     = require("hooks.headers")
local json_errors = require("hooks.json_errors")
local rate_limit  = require("hooks.rate_limit")
local rewrite     = require("hooks.rewrite")
local canary          = require("strategies.canary")
local consistent_hash = require("strategies.consistent_hash")
local zone_aware      = require("strategies.zone_aware")

local B1, B2, B3, B4 = "%B1%", "%B2%", "%B3%", "%B4%"

local auth = api_key.new{ keys = { ["sekrit-1"] = "client-one", ["sekrit-2"] = "client-two" },
                          header = "X-API-Key", query_param = "api_key", realm = "e2e" }
local web_cors = cors.new{ origins = { "https://app.example" }, methods = { "GET", "POST" },
                           headers = { "Content-Type", "X-Token" }, expose = { "X-Request-Id" },
                           credentials = true, max_age = 600 }
local limiter = rate_limit.new{ rate = 1, burst = 3 }
local errors = json_errors.new{}

local function up(strategy, list)
    return { strategy = strategy, backends = list, prequal = { probe_path = "/probe" },
             retries = { max = 1 } }
end
local zoned = {
    { url = B1, meta = { zone = "a" } }, { url = B2, meta = { zone = "a" } },
    { url = B3, meta = { zone = "b" } }, { url = B4, meta = { zone = "b" } },
}

return {
    listen = "127.0.0.1:%PORT%",
    workers = 1,
    admin = { listen = "127.0.0.1:%ADMIN%" },
    log_level = "warn",
    upstreams = {
        one    = up("round_robin", { B1 }),
        hash   = up(consistent_hash.new{ header = "X-User" }, { B1, B2, B3, B4 }),
        canary = up(canary.new{ urls = { B4 }, weight = 0 }, { B1, B2, B3, B4 }),
        zone_a = up(zone_aware.new{ zone = "a", min_healthy = 1 }, zoned),
        zone_b = up(zone_aware.new{ zone = "b", min_healthy = 2 }, zoned),
        zone_z = up(zone_aware.new{ zone = "z", min_healthy = 1 }, zoned),
    },
    routes = {
        { name = "auth", match = { path_prefix = "/auth/" }, upstream = "one",
          on_request = auth.on_request },
        { name = "cors", match = { path_prefix = "/cors/" }, upstream = "one",
          on_request = web_cors.on_request, on_response = web_cors.on_response },
        { name = "limited", match = { path_prefix = "/limited/" }, upstream = "one",
          on_request = limiter.on_request },
        { name = "rw", match = { path_prefix = "/rw/" }, upstream = "one",
          on_request = rewrite.redirect{ { "^/rw/old/(.*)$", "/rw/new/%1", status = 308 },
                                         { "^/rw/gone$", "https://elsewhere.example/", status = 302,
                                           keep_query = false } },
          rewrite_path = rewrite.new{ { "^/rw/v1/(.*)$", "/api/%1" }, { "^/rw/me$", "/users/self" } } },
        { name = "hdr", match = { path_prefix = "/hdr/" }, upstream = "one", strip_prefix = true,
          on_request = headers.request{
              set = { ["X-Client-IP"] = function(req) return req:client_ip() end,
                      ["X-Static"] = "static-value",
                      ["X-Orig-Path"] = function(req) return req:orig_path() end,
                      ["X-Skipped"] = function() return nil end },
              add = { ["X-Multi"] = { "one", "two" } },
              remove = { "X-Debug" } },
          on_response = headers.response{
              set = { ["X-Upstream"] = function(res) return res:backend() end,
                      ["X-Status-Seen"] = function(res) return tostring(res:status()) end },
              add = { ["Cache-Control"] = "no-transform" },
              remove = { "Server" } } },
        { name = "errors", match = { path_prefix = "/errors/" }, upstream = "one", strip_prefix = true,
          on_request = errors.on_request,
          -- pgw-backend always answers JSON: make its error page look like HTML first.
          on_response = chain.on_response(
              headers.response{ set = { ["Content-Type"] = function(res)
                  -- ... except a 500, which stays JSON
                  if res:status() ~= 500 then return "text/html" end end } },
              errors) },
        { name = "chain", match = { path_prefix = "/chain/" }, upstream = "one",
          on_request = chain.on_request(web_cors, nil, auth,
              headers.request{ set = { ["X-Client"] = function(req) return req.ctx.client end } }),
          rewrite_path = chain.rewrite_path(rewrite.new{ { "^/chain/a/(.*)$", "/chain/b/%1" } },
                                            rewrite.new{ { "^/chain/b/(.*)$", "/final/%1" } }),
          on_response = chain.on_response(web_cors, headers.response{ set = { ["X-Chained"] = "yes" } }) },
        { name = "hash", match = { path_prefix = "/hash/" }, upstream = "hash" },
        { name = "canary", match = { path_prefix = "/canary/" }, upstream = "canary" },
        { name = "zone_a", match = { path_prefix = "/zone-a/" }, upstream = "zone_a" },
        { name = "zone_b", match = { path_prefix = "/zone-b/" }, upstream = "zone_b" },
        { name = "zone_z", match = { path_prefix = "/zone-z/" }, upstream = "zone_z" },
    },
}
]]):gsub("%%B(%d)%%", function(i) return b["b" .. i].url end)
            gwp = E.start_gateway(dir, config)
        end)
        if not ok then
            E.stop_all()
            error(err, 0)
        end
    end)

    teardown(function()
        E.stop_all()
    end)

    it("starts the gateway and the backends", function()
        -- Belt and braces: if this file is aborted from here on, the processes still go.
        finally(function()
            if gwp == nil then E.stop_all() end
        end)
        assert.is_number(gwp.port)
        for i = 1, 4 do assert.is_true(E.alive(b["b" .. i].pid)) end
        assert.is_true(E.alive(gwp.pid))
    end)

    describe("hooks.api_key", function()
        it("answers 401 without a key, never reaching a backend", function()
            local r = get("/auth/x")
            assert.are.equal(401, r.status)
            assert.is_nil(r.headers["x-backend"])
            assert.are.equal('ApiKey realm="e2e"', r.headers["www-authenticate"])
            assert.matches("application/json", r.headers["content-type"])
            local j = E.json(r)
            assert.are.equal("unauthorized", j.error)
            assert.are.equal("missing API key", j.message)
            assert.are.equal(r.headers["x-request-id"], j.request_id)
        end)

        it("answers 401 to a wrong key", function()
            local r = get("/auth/x", { { "X-API-Key", "nope" } })
            assert.are.equal(401, r.status)
            assert.are.equal("invalid API key", E.json(r).message)
            -- a wrong header is rejected even if the query parameter is right
            r = get("/auth/x?api_key=sekrit-1", { { "X-API-Key", "nope" } })
            assert.are.equal(401, r.status)
        end)

        it("proxies with a valid key and strips the key header", function()
            local r = get("/auth/x", { { "x-api-key", "sekrit-1" }, { "X-Other", "kept" } })
            assert.are.equal(200, r.status)
            assert.are.equal("b1", r.headers["x-backend"])
            local j = echo(r)
            assert.are.equal("/auth/x", j.path)
            assert.is_nil(j.headers["x-api-key"])
            assert.are.equal("kept", j.headers["x-other"])
        end)

        it("accepts the key in the query parameter (which does reach the backend)", function()
            local r = get("/auth/q?api_key=sekrit-2")
            assert.are.equal(200, r.status)
            assert.are.equal("/auth/q?api_key=sekrit-2", echo(r).path)
        end)
    end)

    describe("hooks.cors", function()
        local preflight = function(origin, method, hdrs)
            local h = { { "Origin", origin }, { "Access-Control-Request-Method", method } }
            if hdrs then h[#h + 1] = { "Access-Control-Request-Headers", hdrs } end
            return get("/cors/x", h, "OPTIONS")
        end

        it("answers an allowed preflight with 204 and the Allow headers", function()
            local r = preflight("https://app.example", "POST", "content-type, X-Token")
            assert.are.equal(204, r.status)
            assert.is_nil(r.headers["x-backend"])
            assert.are.equal("", r.body)
            assert.are.equal("https://app.example", r.headers["access-control-allow-origin"])
            assert.matches("POST", r.headers["access-control-allow-methods"])
            assert.matches("GET", r.headers["access-control-allow-methods"])
            assert.matches("X%-Token", r.headers["access-control-allow-headers"])
            assert.are.equal("true", r.headers["access-control-allow-credentials"])
            assert.are.equal("600", r.headers["access-control-max-age"])
            assert.matches("Origin", r.headers["vary"])
        end)

        it("refuses a preflight from another origin, method or header with 403", function()
            for _, r in ipairs({
                preflight("https://evil.example", "POST"),
                preflight("https://app.example", "DELETE"),
                preflight("https://app.example", "POST", "X-Secret"),
            }) do
                assert.are.equal(403, r.status)
                assert.is_nil(r.headers["x-backend"])
                assert.are.equal("forbidden", E.json(r).error)
                assert.is_nil(r.headers["access-control-allow-origin"])
            end
        end)

        it("decorates a proxied response for an allowed origin only", function()
            local r = get("/cors/x", { { "Origin", "https://app.example" } })
            assert.are.equal(200, r.status)
            assert.are.equal("b1", r.headers["x-backend"])
            assert.are.equal("https://app.example", r.headers["access-control-allow-origin"])
            assert.are.equal("true", r.headers["access-control-allow-credentials"])
            assert.are.equal("X-Request-Id", r.headers["access-control-expose-headers"])
            assert.matches("Origin", r.headers["vary"])
            r = get("/cors/x", { { "Origin", "https://evil.example" } })
            assert.are.equal(200, r.status)
            assert.is_nil(r.headers["access-control-allow-origin"])
        end)
    end)

    describe("hooks.rate_limit", function()
        it("answers 429 with Retry-After once the burst is spent", function()
            local statuses, limited = {}, nil
            for i = 1, 8 do
                local r = get("/limited/x")
                statuses[i] = r.status
                if r.status == 429 then limited = r end
            end
            -- burst 3 at 1/s: the first 3 pass; all 8 run well within a second, so at most one
            -- more token can come back.
            assert.are.same({ 200, 200, 200 }, { statuses[1], statuses[2], statuses[3] })
            local n429 = 0
            for _, s in ipairs(statuses) do
                if s == 429 then n429 = n429 + 1 end
            end
            assert.is_true(n429 >= 4, "429s: " .. table.concat(statuses, ","))
            assert.is_not_nil(limited)
            assert.is_nil(limited.headers["x-backend"])
            assert.is_true(tonumber(limited.headers["retry-after"]) >= 1)
            assert.are.equal("3", limited.headers["x-ratelimit-limit"])
            assert.are.equal("0", limited.headers["x-ratelimit-remaining"])
            assert.are.equal("too_many_requests", E.json(limited).error)
        end)
    end)

    describe("hooks.rewrite", function()
        it("rewrites the path the backend sees, keeping the query", function()
            local r = get("/rw/v1/users/7?x=1&y=2")
            assert.are.equal(200, r.status)
            assert.are.equal("/api/users/7?x=1&y=2", echo(r).path)
            assert.are.equal("/users/self", echo(get("/rw/me")).path)
            assert.are.equal("/rw/other", echo(get("/rw/other")).path)
        end)

        it("redirects without proxying", function()
            local r = get("/rw/old/a/b?q=1")
            assert.are.equal(308, r.status)
            assert.are.equal("/rw/new/a/b?q=1", r.headers["location"])
            assert.is_nil(r.headers["x-backend"])
            r = get("/rw/gone?q=1")
            assert.are.equal(302, r.status)
            assert.are.equal("https://elsewhere.example/", r.headers["location"])
        end)
    end)

    describe("hooks.headers", function()
        it("transforms request headers on the way up", function()
            local r = get("/hdr/x", { { "X-Debug", "1" }, { "X-Static", "from-client" },
                { "X-Multi", "zero" }, { "X-Skipped", "client" } })
            assert.are.equal(200, r.status)
            local h = echo(r).headers
            assert.is_nil(h["x-debug"])
            assert.are.equal("127.0.0.1", h["x-client-ip"])
            assert.are.equal("static-value", h["x-static"])
            assert.are.equal("/hdr/x", h["x-orig-path"])
            assert.are.equal("zero, one, two", h["x-multi"])
            assert.are.equal("client", h["x-skipped"])
        end)

        it("transforms response headers on the way down", function()
            local r = get("/hdr/status/418")
            assert.are.equal(418, r.status)
            assert.are.equal("b1", r.headers["x-backend"])
            assert.is_nil(r.headers["server"])
            assert.are.equal(b.b1.url, r.headers["x-upstream"])
            assert.are.equal("418", r.headers["x-status-seen"])
            assert.are.equal("no-transform", r.headers["cache-control"])
        end)
    end)

    describe("hooks.json_errors", function()
        it("marks a non-JSON upstream error as passed through (no buffer_response)", function()
            local r = get("/errors/status/404")
            assert.are.equal(404, r.status)
            assert.are.equal("b1", r.headers["x-backend"])
            assert.are.equal("text/html", r.headers["content-type"])
            assert.are.equal("passthrough", r.headers["x-error-format"])
        end)

        it("leaves successes and JSON errors alone", function()
            local r = get("/errors/x")
            assert.are.equal(200, r.status)
            assert.is_nil(r.headers["x-error-format"])
            r = get("/errors/status/500")
            assert.are.equal(500, r.status)
            assert.are.equal("application/json", r.headers["content-type"])
            assert.is_nil(r.headers["x-error-format"])
        end)
    end)

    describe("hooks.chain", function()
        it("runs cors before auth: a preflight needs no key", function()
            local r = get("/chain/a/z", { { "Origin", "https://app.example" },
                { "Access-Control-Request-Method", "GET" } }, "OPTIONS")
            assert.are.equal(204, r.status)
            assert.are.equal("https://app.example", r.headers["access-control-allow-origin"])
        end)

        it("stops at auth, and on success runs the rest, both rewrites and both response hooks", function()
            local r = get("/chain/a/z", { { "Origin", "https://app.example" } })
            assert.are.equal(401, r.status)
            -- on_response hooks run for gateway answers too
            assert.are.equal("yes", r.headers["x-chained"])
            r = get("/chain/a/z?k=v", { { "Origin", "https://app.example" }, { "X-API-Key", "sekrit-2" } })
            assert.are.equal(200, r.status)
            local j = echo(r)
            assert.are.equal("/final/z?k=v", j.path)
            assert.are.equal("client-two", j.headers["x-client"])
            assert.is_nil(j.headers["x-api-key"])
            assert.are.equal("yes", r.headers["x-chained"])
            assert.are.equal("https://app.example", r.headers["access-control-allow-origin"])
        end)
    end)

    describe("strategies.consistent_hash", function()
        it("sends a user to the same backend every time, the one the ring predicts", function()
            -- The ring depends only on the urls, so gw.test predicts the owner.
            gwt.install_gw()
            local runner = gwt.strategy_runner(require("strategies.consistent_hash").new{ header = "X-User" },
                gwt.backends({ b.b1.url, b.b2.url, b.b3.url, b.b4.url }), "hash")
            local name_of = {}
            for i = 1, 4 do name_of[b["b" .. i].url] = "b" .. i end
            local seen = {}
            for u = 1, 16 do
                local user = "user-" .. u
                local expect = name_of[runner:pick(gwt.request{ headers = { ["X-User"] = user } }).url]
                for _ = 1, 3 do
                    local r = get("/hash/x", { { "X-User", user } })
                    assert.are.equal(200, r.status)
                    assert.are.equal(expect, r.headers["x-backend"], user)
                end
                seen[expect] = true
            end
            gwt.uninstall_gw()
            local n = 0
            for _ in pairs(seen) do n = n + 1 end
            assert.is_true(n >= 3, "16 users should spread over at least 3 of 4 backends")
        end)

        it("serves requests without a key through the fallback", function()
            local r = get("/hash/x")
            assert.are.equal(200, r.status)
            assert.matches("^b%d$", r.headers["x-backend"])
        end)
    end)

    describe("strategies.canary", function()
        it("honours X-Canary: always / never, and weight 0 otherwise", function()
            for _ = 1, 6 do
                assert.are.equal("b4", get("/canary/x", { { "X-Canary", "always" } }).headers["x-backend"])
                assert.are_not.equal("b4", get("/canary/x", { { "X-Canary", "NEVER" } }).headers["x-backend"])
                local r = get("/canary/x")
                assert.are.equal(200, r.status)
                assert.are_not.equal("b4", r.headers["x-backend"])
            end
        end)
    end)

    describe("strategies.zone_aware", function()
        local function backends_for(path, n)
            local seen = {}
            for _ = 1, n do
                local r = get(path)
                assert.are.equal(200, r.status)
                seen[r.headers["x-backend"]] = true
            end
            return seen
        end

        it("keeps traffic in the local zone", function()
            local a = backends_for("/zone-a/x", 12)
            assert.is_nil(a.b3); assert.is_nil(a.b4)
            local z = backends_for("/zone-b/x", 12)
            assert.is_nil(z.b1); assert.is_nil(z.b2)
        end)

        it("uses the whole upstream when the zone has too few backends", function()
            local seen = backends_for("/zone-z/x", 6)
            assert.is_not_nil(next(seen))
        end)
    end)

    it("logged no Lua errors", function()
        local log = E.read_file(gwp.log) or ""
        assert.is_nil(log:find("%[error%]"), log)
        local m = E.request(gwp.admin, { path = "/metrics" })
        assert.are.equal(200, m.status)
        for line in m.body:gmatch("[^\n]+") do
            if line:match("^gw_lua_errors_total") or line:match("^gw_lua_strategy_errors_total") then
                assert.matches(" 0$", line)
            end
        end
    end)
end)
