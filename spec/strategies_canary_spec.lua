local gwt = require("gw.test")
local canary = require("strategies.canary")

local function view(extra)
    local list = {
        { url = "http://s1" }, { url = "http://s2" }, { url = "http://s3" },
        { url = "http://c1", meta = { canary = true } },
    }
    for i, fields in pairs(extra or {}) do
        for k, v in pairs(fields) do list[i][k] = v end
    end
    return gwt.backends(list)
end

local function is_canary(b) return b.meta.canary == true end

describe("strategies.canary", function()
    before_each(function()
        gwt.install_gw()
        math.randomseed(42)
    end)
    after_each(function() gwt.uninstall_gw() end)

    local function share(r, n, req_opts)
        local c = 0
        for _ = 1, n do
            if r:pick(gwt.request(req_opts)).url == "http://c1" then c = c + 1 end
        end
        return c / n
    end

    it("sends about weight percent to the canary over 10k picks", function()
        local r = gwt.strategy_runner(canary.new{ canary = is_canary, weight = 5 }, view())
        local s = share(r, 10000)
        assert.is_true(s > 0.04 and s < 0.06, "canary share " .. s)
        local r20 = gwt.strategy_runner(canary.new{ canary = is_canary, weight = 20 }, view())
        s = share(r20, 10000)
        assert.is_true(s > 0.18 and s < 0.22, "canary share " .. s)
    end)

    it("spreads stable traffic over the stable set with prequal", function()
        local calls = 0
        local real = gw.strategy.prequal
        gwt.install_gw{ strategies = { prequal = function(b, req)
            calls = calls + 1
            return real(b, req)
        end } }
        local r = gwt.strategy_runner(canary.new{ canary = is_canary, weight = 0 }, view())
        local seen = {}
        for _ = 1, 300 do
            local b = r:pick()
            seen[b.url] = true
        end
        assert.are.same({ ["http://s1"] = true, ["http://s2"] = true, ["http://s3"] = true }, seen)
        assert.are.equal(300, calls)
    end)

    it("passes prequal a view of just the chosen set", function()
        local got
        gwt.install_gw{ strategies = { prequal = function(b)
            got = {}
            for i = 1, #b do got[i] = b[i].url end
            return b[1]
        end } }
        local r = gwt.strategy_runner(canary.new{ canary = is_canary, weight = 0 }, view())
        r:pick()
        assert.are.same({ "http://s1", "http://s2", "http://s3" }, got)
        r:pick(gwt.request{ headers = { ["X-Canary"] = "always" } })
        assert.are.same({ "http://c1" }, got)
    end)

    it("forces the choice with the header", function()
        local r = gwt.strategy_runner(canary.new{ canary = is_canary, weight = 50 }, view())
        assert.are.equal(1, share(r, 200, { headers = { ["X-Canary"] = "always" } }))
        assert.are.equal(0, share(r, 200, { headers = { ["X-Canary"] = "NEVER" } }))
        local s = share(r, 2000, { headers = { ["X-Canary"] = "sometimes" } }) -- ignored
        assert.is_true(s > 0.4 and s < 0.6)
    end)

    it("can have forcing disabled or renamed", function()
        local off = gwt.strategy_runner(canary.new{ canary = is_canary, weight = 0, header = false }, view())
        assert.are.equal(0, share(off, 100, { headers = { ["X-Canary"] = "always" } }))
        local named = gwt.strategy_runner(canary.new{ canary = is_canary, weight = 0, header = "X-Track" },
            view())
        assert.are.equal(1, share(named, 50, { headers = { ["X-Track"] = "always" } }))
    end)

    it("selects canaries by url", function()
        local r = gwt.strategy_runner(canary.new{ urls = { "http://s2" }, weight = 100 }, view())
        for _ = 1, 50 do assert.are.equal("http://s2", r:pick().url) end
    end)

    it("fails over to the other set when the chosen one is down", function()
        local v = view{ [4] = { healthy = false } }
        local r = gwt.strategy_runner(canary.new{ canary = is_canary, weight = 100 }, v)
        for _ = 1, 50 do assert.are_not.equal("http://c1", r:pick().url) end
        gwt.update(v, 4, { healthy = true })
        for i = 1, 3 do gwt.update(v, i, { healthy = false }) end
        local r0 = gwt.strategy_runner(canary.new{ canary = is_canary, weight = 0 }, v)
        for _ = 1, 50 do assert.are.equal("http://c1", r0:pick().url) end
    end)

    it("answers nil for a forced set that is down", function()
        local r = gwt.strategy_runner(canary.new{ canary = is_canary }, view{ [4] = { healthy = false } })
        assert.is_nil(r:pick(gwt.request{ headers = { ["X-Canary"] = "always" } }))
    end)

    it("does not retry a tried backend while another is left", function()
        local r = gwt.strategy_runner(canary.new{ canary = is_canary, weight = 0 }, view())
        local req = gwt.request()
        local seen = {}
        for _ = 1, 4 do
            local b = r:pick(req)
            assert.is_nil(seen[b.id])
            seen[b.id] = true
            gwt.mark_tried(req, b)
        end
        assert.is_nil(r:pick(req))
    end)

    it("follows membership changes", function()
        local r = gwt.strategy_runner(canary.new{ canary = is_canary, weight = 100 }, view())
        assert.are.equal("http://c1", r:pick().url)
        r:set_backends(gwt.backends{ { url = "http://s1", id = 1 },
            { url = "http://c2", id = 7, meta = { canary = true } } })
        for _ = 1, 20 do assert.are.equal("http://c2", r:pick().url) end
        r:set_backends(gwt.backends{ { url = "http://s1", id = 1 } }) -- no canary left
        for _ = 1, 20 do assert.are.equal("http://s1", r:pick().url) end
        r:set_backends(gwt.backends{ { url = "http://c3", id = 8, meta = { canary = true } } })
        assert.are.equal("http://c3", r:pick().url)
        -- an unannounced change of length or of a member's position is noticed too
        r.backends = gwt.backends{ { url = "http://s1", id = 1 },
            { url = "http://c3", id = 8, meta = { canary = true } } }
        assert.are.equal("http://c3", r:pick().url)
        r.backends = gwt.backends{ { url = "http://c4", id = 9, meta = { canary = true } },
            { url = "http://s1", id = 1 } }
        assert.are.equal("http://c4", r:pick().url)
    end)

    it("works with a state that init did not build", function()
        local s = canary.new{ canary = is_canary, weight = 100 }
        assert.are.equal("http://c1", s.pick(view(), gwt.request(), {}).url)
    end)

    it("validates its options", function()
        assert.has_error(function() canary.new() end)
        assert.has_error(function() canary.new{} end)
        assert.has_error(function() canary.new{ canary = is_canary, urls = {} } end)
        assert.has_error(function() canary.new{ urls = { 1 } } end)
        assert.has_error(function() canary.new{ canary = is_canary, weight = 101 } end)
        assert.has_error(function() canary.new{ canary = is_canary, header = 1 } end)
    end)
end)
