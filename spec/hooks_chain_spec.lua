local gwt = require("gw.test")
local chain = require("hooks.chain")

describe("hooks.chain", function()
    before_each(function() gwt.install_gw() end)
    after_each(function() gwt.uninstall_gw() end)

    it("runs on_request hooks until one answers", function()
        local calls = {}
        local fn = chain.on_request(
            function() calls[#calls + 1] = "a" end,
            nil,
            { on_request = function(req) calls[#calls + 1] = "b"; return req:respond(403, "no") end },
            { on_response = function() end }, -- no on_request: skipped
            function() calls[#calls + 1] = "c" end)
        local r = gwt.run_on_request(fn, gwt.request())
        assert.are.equal(403, r.status)
        assert.are.equal("no", r.body)
        assert.are.same({ "a", "b" }, calls)
    end)

    it("continues when every hook does", function()
        local fn = chain.on_request(function() end, function() end)
        assert.is_nil(gwt.run_on_request(fn, gwt.request()))
    end)

    it("runs every on_response and on_log hook in order", function()
        local order = {}
        local fn = chain.on_response(function() order[#order + 1] = 1 end,
            { on_response = function() order[#order + 1] = 2 end })
        fn(gwt.response())
        local log = chain.on_log({ on_log = function() order[#order + 1] = 3 end })
        log(gwt.response())
        assert.are.same({ 1, 2, 3 }, order)
    end)

    it("threads the path through rewrite_path hooks", function()
        local fn = chain.rewrite_path(function(p) return p .. "/x" end, function() return nil end,
            function(p) return p:upper() end)
        assert.are.equal("/A/X", fn("/a", gwt.request()))
        assert.is_nil(chain.rewrite_path(function() end)("/a"))
    end)

    it("rejects what is not a hook", function()
        assert.has_error(function() chain.on_request(5) end)
        assert.has_error(function() chain.on_request({ on_request = "x" }) end)
    end)
end)
