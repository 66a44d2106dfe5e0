local gwt = require("gw.test")
local cors = require("hooks.cors")

describe("hooks.cors", function()
    before_each(function() gwt.install_gw() end)
    after_each(function() gwt.uninstall_gw() end)

    local function preflight(hook, origin, method, headers)
        local h = { Origin = origin, ["Access-Control-Request-Method"] = method,
            ["Access-Control-Request-Headers"] = headers }
        return gwt.run_on_request(hook.on_request, gwt.request{ method = "OPTIONS", headers = h })
    end

    -- A request followed by its response, sharing ctx as the runtime does.
    local function exchange(hook, req_opts, res_opts)
        local req = gwt.request(req_opts)
        local r = gwt.run_on_request(hook.on_request, req)
        assert.is_nil(r)
        res_opts = res_opts or {}
        res_opts.ctx = req.ctx
        res_opts.backend = res_opts.backend or "http://127.0.0.1:9001"
        local res = gwt.response(res_opts)
        gwt.run_on_response(hook.on_response, res)
        return res
    end

    describe("with a list of origins", function()
        local hook
        before_each(function()
            hook = cors.new{ origins = { "https://a.example", "https://b.example" },
                methods = { "GET", "POST" }, headers = { "Content-Type", "X-Token" },
                expose = { "X-Request-Id", "X-Total" }, credentials = true, max_age = 120 }
        end)

        it("answers an allowed preflight with 204 and the Allow headers", function()
            local r = preflight(hook, "https://a.example", "POST", "content-type, x-token")
            assert.are.equal(204, r.status)
            assert.are.equal("", r.body)
            local h = r.headers
            assert.are.equal("https://a.example", h["Access-Control-Allow-Origin"])
            assert.are.equal("GET, POST", h["Access-Control-Allow-Methods"])
            assert.are.equal("Content-Type, X-Token", h["Access-Control-Allow-Headers"])
            assert.are.equal("true", h["Access-Control-Allow-Credentials"])
            assert.are.equal("120", h["Access-Control-Max-Age"])
            assert.are.equal("Origin", h["Vary"])
        end)

        it("refuses a preflight from another origin with 403", function()
            local r = preflight(hook, "https://evil.example", "GET")
            assert.are.equal(403, r.status)
            assert.are.equal("forbidden", gwt.json_body(r).error)
            assert.is_nil(r.headers["Access-Control-Allow-Origin"])
        end)

        it("refuses a disallowed method or header", function()
            assert.are.equal(403, preflight(hook, "https://a.example", "DELETE").status)
            local r = preflight(hook, "https://a.example", "GET", "X-Token, X-Evil")
            assert.are.equal(403, r.status)
            assert.matches("x%-evil", gwt.json_body(r).message)
        end)

        it("lets OPTIONS without Access-Control-Request-Method through", function()
            local req = gwt.request{ method = "OPTIONS", headers = { Origin = "https://a.example" } }
            assert.is_nil(gwt.run_on_request(hook.on_request, req))
        end)

        it("adds the response headers for an allowed origin", function()
            local res = exchange(hook, { headers = { Origin = "https://b.example" } },
                { headers = { Vary = "Accept-Encoding" } })
            assert.are.equal("https://b.example", res:header("Access-Control-Allow-Origin"))
            assert.are.equal("true", res:header("Access-Control-Allow-Credentials"))
            assert.are.equal("X-Request-Id, X-Total", res:header("Access-Control-Expose-Headers"))
            assert.are.equal("Accept-Encoding, Origin", res:headers().vary)
        end)

        it("does not repeat Origin in Vary", function()
            local res = exchange(hook, { headers = { Origin = "https://a.example" } },
                { headers = { Vary = "origin" } })
            assert.are.equal("origin", res:headers().vary)
        end)

        it("adds nothing but Vary for a disallowed or missing origin", function()
            for _, h in ipairs({ { Origin = "https://evil.example" }, {} }) do
                local res = exchange(hook, { headers = h },
                    { headers = { ["Access-Control-Allow-Origin"] = "*" } })
                assert.are.equal("*", res:header("Access-Control-Allow-Origin")) -- untouched
                assert.is_nil(res:header("Access-Control-Allow-Credentials"))
                assert.are.equal("Origin", res:header("Vary"))
            end
        end)
    end)

    describe("with origins = \"*\"", function()
        it("answers * without credentials and adds no Vary", function()
            local hook = cors.new{ origins = "*" }
            local r = preflight(hook, "https://any.example", "PUT", "X-Custom")
            assert.are.equal(204, r.status)
            assert.are.equal("*", r.headers["Access-Control-Allow-Origin"])
            assert.are.equal("X-Custom", r.headers["Access-Control-Allow-Headers"]) -- reflected
            assert.are.equal("600", r.headers["Access-Control-Max-Age"])
            assert.is_nil(r.headers["Vary"])
            assert.is_nil(r.headers["Access-Control-Allow-Credentials"])
            local res = exchange(hook, { headers = { Origin = "https://any.example" } })
            assert.are.equal("*", res:header("Access-Control-Allow-Origin"))
            assert.is_nil(res:header("Vary"))
            assert.is_nil(res:header("Access-Control-Expose-Headers"))
        end)

        it("echoes the origin when credentials are allowed", function()
            local hook = cors.new{ origins = "*", credentials = true, max_age = false }
            local r = preflight(hook, "https://any.example", "GET")
            assert.are.equal("https://any.example", r.headers["Access-Control-Allow-Origin"])
            assert.are.equal("Origin", r.headers["Vary"])
            assert.is_nil(r.headers["Access-Control-Max-Age"])
            local res = exchange(hook, { headers = { Origin = "https://any.example" } })
            assert.are.equal("https://any.example", res:header("Access-Control-Allow-Origin"))
        end)
    end)

    it("takes a function for origins", function()
        local hook = cors.new{ origins = function(o) return o:match("%.example$") ~= nil end }
        assert.are.equal(204, preflight(hook, "https://x.example", "GET").status)
        assert.are.equal(403, preflight(hook, "https://x.evil", "GET").status)
    end)

    it("validates its options", function()
        assert.has_error(function() cors.new() end)
        assert.has_error(function() cors.new{} end)
        assert.has_error(function() cors.new{ origins = 5 } end)
        assert.has_error(function() cors.new{ origins = { 1 } } end)
        assert.has_error(function() cors.new{ origins = "*", methods = "GET" } end)
        assert.has_error(function() cors.new{ origins = "*", max_age = -1 } end)
    end)
end)
