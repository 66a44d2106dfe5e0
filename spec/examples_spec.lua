-- The example configs load, reference what exists, and their hooks and strategies behave.
-- (Validation by the binary itself, `prequal-gw -t`, comes with the C side of hooks.)
local gwt = require("gw.test")

local HOOK_KEYS = { on_request = true, rewrite_path = true, on_response = true, on_log = true,
    on_register = true, on_unregister = true }

local function load_config(path)
    local chunk = assert(loadfile(path))
    local cfg = chunk()
    assert.is_table(cfg)
    return cfg
end

local function view_of(upstream)
    local list = {}
    for i, b in ipairs(upstream.backends) do
        list[i] = type(b) == "string" and { url = b } or { url = b.url, weight = b.weight, meta = b.meta }
    end
    return gwt.backends(list)
end

local function check_common(cfg)
    local app = cfg.upstreams.app
    assert.is_table(app)
    local urls = {}
    for i, b in ipairs(app.backends) do
        urls[i] = type(b) == "string" and b or b.url
    end
    assert.are.same({ "http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003",
        "http://127.0.0.1:9004" }, urls)
    for i, route in ipairs(cfg.routes) do
        assert.is_not_nil(cfg.upstreams[route.upstream], "routes[" .. i .. "].upstream")
        for k, v in pairs(route) do
            if HOOK_KEYS[k] then
                assert.is_function(v, "routes[" .. i .. "]." .. k)
            end
        end
    end
    for k, v in pairs(cfg.hooks or {}) do
        assert.is_true(HOOK_KEYS[k] ~= nil, "hooks." .. k)
        assert.is_function(v)
    end
end

local function route(cfg, name)
    for _, r in ipairs(cfg.routes) do
        if r.name == name then return r end
    end
    error("no route " .. name)
end

describe("examples/gateway-hooks.lua", function()
    local cfg
    before_each(function()
        gwt.install_gw()
        cfg = load_config("examples/gateway-hooks.lua")
    end)
    after_each(function() gwt.uninstall_gw() end)

    it("is well formed", function()
        check_common(cfg)
    end)

    it("redirects legacy paths", function()
        local r = gwt.run_on_request(route(cfg, "legacy").on_request, gwt.request{ path = "/old/x?y=1" })
        assert.are.equal(301, r.status)
        assert.are.equal("/new/x?y=1", r.headers.Location)
    end)

    it("guards the API with CORS, a rate limit and a key", function()
        local api = route(cfg, "api")
        local r = gwt.run_on_request(api.on_request, gwt.request{ path = "/api/x" })
        assert.are.equal(401, r.status)
        local pre = gwt.run_on_request(api.on_request, gwt.request{ method = "OPTIONS", path = "/api/x",
            headers = { Origin = "https://app.example", ["Access-Control-Request-Method"] = "POST" } })
        assert.are.equal(204, pre.status)
        local req = gwt.request{ path = "/x", client_ip = "10.9.9.9",
            headers = { ["X-API-Key"] = "demo-key-1", Origin = "https://app.example", ["X-Debug"] = "1" } }
        assert.is_nil(gwt.run_on_request(api.on_request, req))
        assert.are.equal("demo-client-1", req:header("X-Client"))
        assert.are.equal("0", req:header("X-Gateway-Worker"))
        assert.is_nil(req:header("X-API-Key"))
        assert.is_nil(req:header("X-Debug"))
        assert.are.equal("/x", gwt.run_rewrite_path(api.rewrite_path, gwt.request{ path = "/v1/x" }))
        local res = gwt.response{ ctx = req.ctx, backend = "http://127.0.0.1:9001",
            headers = { Server = "pgw-backend" } }
        gwt.run_on_response({ cfg.hooks.on_response, api.on_response }, res)
        assert.are.equal("https://app.example", res:header("Access-Control-Allow-Origin"))
        assert.are.equal("prequal-gw", res:header("X-Served-By"))
        assert.is_nil(res:header("Server"))
        api.on_log(gwt.response{ status = 502, ctx = req.ctx })
        assert.is_true(gwt.logged("warn", "api error 502 from gateway client=demo%-client%-1"))
        for _ = 1, 60 do
            r = gwt.run_on_request(api.on_request, gwt.request{ client_ip = "10.1.1.1" })
        end
        assert.are.equal(429, r.status)
    end)

    it("turns backend errors into JSON on the buffered route", function()
        local v2 = route(cfg, "v2")
        assert.is_true(v2.buffer_response)
        local req = gwt.request{ path = "/v2/nope", id = "r1", headers = { ["X-API-Key"] = "demo-key-2" } }
        assert.is_nil(gwt.run_on_request(v2.on_request, req))
        local res = gwt.response{ status = 404, body = "<html>", ctx = req.ctx, backend = "http://127.0.0.1:9002" }
        gwt.run_on_response(v2.on_response, res)
        assert.are.same({ error = "not_found", status = 404, message = "no such resource", request_id = "r1" },
            gwt.json_body(res))
    end)
end)

describe("examples/gateway-strategies.lua", function()
    local cfg
    before_each(function()
        gwt.install_gw()
        math.randomseed(1)
        cfg = load_config("examples/gateway-strategies.lua")
    end)
    after_each(function() gwt.uninstall_gw() end)

    it("is well formed, with a Lua strategy on every upstream", function()
        check_common(cfg)
        for name, u in pairs(cfg.upstreams) do
            assert.is_table(u.strategy, name)
            local r = gwt.strategy_runner(u.strategy, view_of(u), name)
            for _ = 1, 20 do
                assert.is_not_nil(r:pick(gwt.request{ headers = { ["X-User"] = "u", Cookie = "session=s" } }))
            end
        end
    end)

    it("keeps users on one backend and forces the canary", function()
        local app = gwt.strategy_runner(cfg.upstreams.app.strategy, view_of(cfg.upstreams.app))
        local first = app:pick(gwt.request{ headers = { ["X-User"] = "alice" } })
        for _ = 1, 10 do
            assert.are.equal(first.id, app:pick(gwt.request{ headers = { ["X-User"] = "alice" } }).id)
        end
        local c = gwt.strategy_runner(cfg.upstreams.canary.strategy, view_of(cfg.upstreams.canary))
        local b = c:pick(gwt.request{ headers = { ["X-Canary"] = "always" } })
        assert.are.equal("http://127.0.0.1:9004", b.url)
    end)
end)

describe("examples/gateway-registration.lua", function()
    local cfg
    before_each(function()
        gwt.install_gw()
        cfg = load_config("examples/gateway-registration.lua")
    end)
    after_each(function() gwt.uninstall_gw() end)

    it("starts empty and takes registrations from loopback and 10/8", function()
        assert.are.same({}, cfg.upstreams.app.backends)
        assert.are.same({ "127.0.0.0/8", "10.0.0.0/8" }, cfg.registration.allow)
        assert.are.equal("app", cfg.registration.upstream)
        assert.is_string(cfg.admin.token)
    end)

    it("admits only app servers that name their zone", function()
        local on_register = cfg.hooks.on_register
        assert.is_true(gwt.run_on_register(on_register,
            gwt.member{ url = "http://10.0.0.7:8080", meta = { zone = "b", service = "app" } }, "app"))
        assert.is_false(gwt.run_on_register(on_register,
            gwt.member{ url = "http://10.0.0.8:8080", meta = { zone = "z", service = "app" } }, "app"))
        assert.is_false(gwt.run_on_register(on_register, gwt.member("http://10.0.0.9:8080"), "app"))
        assert.is_true(gwt.logged("warn", "refusing http://10.0.0.9:8080 in app"))
        gwt.run_on_unregister(cfg.hooks.on_unregister, gwt.member("http://10.0.0.7:8080"), "app", "expired")
        assert.is_true(gwt.logged("info", "http://10.0.0.7:8080 left app %(expired%)"))
    end)

    it("keeps traffic in its zone as members come and go", function()
        local view = gwt.backends{
            { url = "http://10.0.0.1:80", id = 1, meta = { zone = "a" } },
            { url = "http://10.0.0.2:80", id = 2, meta = { zone = "a" } },
            { url = "http://10.0.0.3:80", id = 3, meta = { zone = "b" } },
        }
        local r = gwt.strategy_runner(cfg.upstreams.app.strategy, view, "app")
        for _ = 1, 20 do
            assert.are.equal("a", r:pick().meta.zone)
        end
        -- One zone-a backend left: below min_healthy, the whole upstream is used.
        r:set_backends(gwt.backends{
            { url = "http://10.0.0.1:80", id = 1, meta = { zone = "a" } },
            { url = "http://10.0.0.3:80", id = 3, meta = { zone = "b" } },
        })
        local zones = {}
        for _ = 1, 60 do
            zones[r:pick().meta.zone] = true
        end
        assert.are.same({ a = true, b = true }, zones)
    end)
end)
