local gwt = require("gw.test")
local api_key = require("hooks.api_key")

describe("hooks.api_key", function()
    before_each(function() gwt.install_gw() end)
    after_each(function() gwt.uninstall_gw() end)

    local function run(hook, opts)
        local req = gwt.request(opts)
        return gwt.run_on_request(hook.on_request, req), req
    end

    it("rejects a request without a key with 401 JSON and WWW-Authenticate", function()
        local r = run(api_key.new{ keys = { "k1" } }, { id = "rid-1" })
        assert.are.equal(401, r.status)
        assert.are.equal("application/json", r.headers["Content-Type"])
        assert.are.equal('ApiKey realm="api"', r.headers["WWW-Authenticate"])
        assert.are.same({ error = "unauthorized", message = "missing API key", request_id = "rid-1" },
            gwt.json_body(r))
    end)

    it("rejects an invalid key, including a prefix or an extension of a valid one", function()
        local hook = api_key.new{ keys = { "secret" }, realm = "admin" }
        for _, k in ipairs({ "wrong", "secre", "secret2", "SECRET", "" }) do
            local r = run(hook, { headers = { ["X-API-Key"] = k } })
            assert.are.equal(401, r.status, k)
            assert.are.equal('ApiKey realm="admin"', r.headers["WWW-Authenticate"])
        end
        local r = run(hook, { headers = { ["X-API-Key"] = "nope" } })
        assert.are.equal("invalid API key", gwt.json_body(r).message)
    end)

    it("accepts a listed key, names the client and strips the header", function()
        local r, req = run(api_key.new{ keys = { "k1", "k2" } },
            { headers = { ["x-api-key"] = "k2", ["X-Other"] = "1" } })
        assert.is_nil(r)
        assert.are.equal("key#2", req.ctx.client)
        assert.is_nil(req:header("X-API-Key"))
        assert.are.equal("1", req:header("X-Other"))
    end)

    it("maps keys to client names", function()
        local _, req = run(api_key.new{ keys = { abc = "client-a", def = "client-b" } },
            { headers = { ["X-API-Key"] = "def" } })
        assert.are.equal("client-b", req.ctx.client)
    end)

    it("uses a custom header", function()
        local hook = api_key.new{ keys = { "k" }, header = "Authorization-Token" }
        assert.is_nil(run(hook, { headers = { ["authorization-token"] = "k" } }))
        assert.are.equal(401, run(hook, { headers = { ["X-API-Key"] = "k" } }).status)
    end)

    describe("with query_param", function()
        local hook
        before_each(function()
            hook = api_key.new{ keys = { ["a b/c"] = "spacey", k1 = "c1" }, query_param = "api_key" }
        end)

        it("accepts the key from the query string", function()
            local r, req = run(hook, { path = "/x?foo=1&api_key=k1&bar" })
            assert.is_nil(r)
            assert.are.equal("c1", req.ctx.client)
        end)

        it("URL-decodes the parameter", function()
            local r, req = run(hook, { path = "/x?api_key=a+b%2Fc" })
            assert.is_nil(r)
            assert.are.equal("spacey", req.ctx.client)
        end)

        it("rejects a wrong or empty parameter, and a lookalike name", function()
            assert.are.equal(401, run(hook, { path = "/x?api_key=k2" }).status)
            assert.are.equal(401, run(hook, { path = "/x?api_key=" }).status)
            assert.are.equal(401, run(hook, { path = "/x?api_key" }).status)
            assert.are.equal(401, run(hook, { path = "/x?xapi_key=k1" }).status)
            assert.are.equal(401, run(hook, { path = "/x" }).status)
        end)

        it("prefers the header, even when it is wrong", function()
            local r = run(hook, { path = "/x?api_key=k1", headers = { ["X-API-Key"] = "bad" } })
            assert.are.equal(401, r.status)
        end)

        it("ignores the query string when query_param is not set", function()
            local plain = api_key.new{ keys = { "k1" } }
            assert.are.equal(401, run(plain, { path = "/x?api_key=k1" }).status)
        end)
    end)

    it("validates its options", function()
        assert.has_error(function() api_key.new() end)
        assert.has_error(function() api_key.new{} end)
        assert.has_error(function() api_key.new{ keys = {} } end)
        assert.has_error(function() api_key.new{ keys = { "" } } end)
        assert.has_error(function() api_key.new{ keys = { "a", b = "c" } } end)
        assert.has_error(function() api_key.new{ keys = { a = 1 } } end)
        assert.has_error(function() api_key.new{ keys = { "a" }, header = "" } end)
        assert.has_error(function() api_key.new{ keys = { "a" }, query_param = 1 } end)
        assert.has_error(function() api_key.new{ keys = { "a" }, realm = 'x"y' } end)
    end)

    it("parses query strings", function()
        local qv = api_key._query_value
        assert.are.equal("1", qv("a=1&b=2", "a"))
        assert.are.equal("2", qv("a=1&b=2", "b"))
        assert.are.equal("", qv("a&b=2", "a"))
        assert.are.equal("x", qv("a%5F=x", "a_"))
        assert.is_nil(qv("ab=1", "a"))
    end)
end)
