local gwt = require("gw.test")
local headers = require("hooks.headers")

describe("hooks.headers", function()
    before_each(function() gwt.install_gw() end)
    after_each(function() gwt.uninstall_gw() end)

    it("removes, then sets, then adds request headers", function()
        local hook = headers.request{
            remove = { "X-Secret", "X-Set" },
            set = { ["X-Set"] = "new", ["X-Ip"] = function(req) return req:client_ip() end,
                    ["X-Num"] = 7 },
            add = { ["X-Add"] = { "a", "b" }, Via = "gw" },
        }
        local req = gwt.request{ client_ip = "10.1.2.3", headers = { ["X-Secret"] = "s",
            ["X-Set"] = "old", ["X-Add"] = "0", Via = "1.1 proxy" } }
        assert.is_nil(gwt.run_on_request(hook, req))
        local h = req:headers()
        assert.is_nil(h["x-secret"])
        assert.are.equal("new", h["x-set"])
        assert.are.equal("10.1.2.3", h["x-ip"])
        assert.are.equal("7", h["x-num"])
        assert.are.equal("0, a, b", h["x-add"])
        assert.are.equal("1.1 proxy, gw", h["via"])
        -- remove ran before set: X-Set is set once, not removed after
        local ops = gwt.ops(req)
        assert.are.equal("clear_header", ops[1].op)
        assert.are.equal("clear_header", ops[2].op)
    end)

    it("skips a header whose function returns nil", function()
        local hook = headers.request{ set = { ["X-Maybe"] = function() return nil end } }
        local req = gwt.request{ headers = { ["X-Maybe"] = "kept" } }
        gwt.run_on_request(hook, req)
        assert.are.equal("kept", req:header("X-Maybe"))
    end)

    it("changes response headers with functions of res", function()
        local hook = headers.response{
            set = { ["X-Upstream"] = function(res) return res:backend() end,
                    ["X-Status"] = function(res) return tostring(res:status()) end },
            add = { ["Cache-Control"] = "no-transform" },
            remove = { "Server" },
        }
        local res = gwt.response{ status = 201, backend = "http://127.0.0.1:9001",
            headers = { Server = "backend/1.0", ["Cache-Control"] = "max-age=5" } }
        gwt.run_on_response(hook, res)
        assert.are.equal("http://127.0.0.1:9001", res:header("X-Upstream"))
        assert.are.equal("201", res:header("X-Status"))
        assert.are.equal("max-age=5, no-transform", res:headers()["cache-control"])
        assert.is_nil(res:header("Server"))
    end)

    it("skips a function-valued header on a gateway response without a backend", function()
        local hook = headers.response{ set = { ["X-Upstream"] = function(res) return res:backend() end } }
        local res = gwt.response{ status = 503 }
        gwt.run_on_response(hook, res)
        assert.is_nil(res:header("X-Upstream"))
    end)

    it("applies headers in name order", function()
        local hook = headers.request{ add = { ["X-B"] = "2", ["X-A"] = "1", ["X-C"] = "3" } }
        local req = gwt.request()
        gwt.run_on_request(hook, req)
        local names = {}
        for _, op in ipairs(gwt.ops(req)) do names[#names + 1] = op.name end
        assert.are.same({ "X-A", "X-B", "X-C" }, names)
    end)

    it("works with no options", function()
        local req = gwt.request()
        assert.is_nil(gwt.run_on_request(headers.request(), req))
        assert.are.same({}, gwt.ops(req))
    end)

    it("validates its options", function()
        assert.has_error(function() headers.request("x") end)
        assert.has_error(function() headers.request{ sett = {} } end)
        assert.has_error(function() headers.request{ set = { ["X-A"] = true } } end)
        assert.has_error(function() headers.request{ set = { ["X-A"] = { "a" } } } end)
        assert.has_error(function() headers.response{ remove = { 1 } } end)
        assert.has_error(function() headers.response{ add = { [1] = "x" } } end)
    end)

    it("sends nothing for a computed value the API refuses (CR/LF)", function()
        local hook = headers.request{ set = { ["X-A"] = function() return "a\r\nb: c" end } }
        local req = gwt.request()
        assert.is_nil(gwt.run_on_request(hook, req))
        assert.is_nil(req:header("X-A"))
        assert.is_true(gwt.logged("warn", "hooks.headers: req:set_header: header value contains CR"))
    end)
end)
