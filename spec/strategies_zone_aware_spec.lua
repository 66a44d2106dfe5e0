local gwt = require("gw.test")
local zone_aware = require("strategies.zone_aware")

local function view()
    return gwt.backends{
        { url = "http://a1", meta = { zone = "a" } },
        { url = "http://a2", meta = { zone = "a" } },
        { url = "http://b1", meta = { zone = "b" } },
        { url = "http://b2", meta = { zone = "b" } },
        { url = "http://nz" },
    }
end

local function zones_seen(r, n, req_fn)
    local seen = {}
    for _ = 1, n do
        local b = r:pick(req_fn and req_fn() or nil)
        seen[b.url] = (seen[b.url] or 0) + 1
    end
    return seen
end

describe("strategies.zone_aware", function()
    before_each(function()
        gwt.install_gw()
        math.randomseed(7)
    end)
    after_each(function() gwt.uninstall_gw() end)

    it("stays in its zone while enough local backends are healthy", function()
        local r = gwt.strategy_runner(zone_aware.new{ zone = "a", min_healthy = 2 }, view())
        local seen = zones_seen(r, 200)
        assert.is_true(seen["http://a1"] > 0 and seen["http://a2"] > 0)
        assert.is_nil(seen["http://b1"])
        assert.is_nil(seen["http://nz"])
    end)

    it("spills over to every backend below min_healthy, and comes back", function()
        local v = view()
        local r = gwt.strategy_runner(zone_aware.new{ zone = "a", min_healthy = 2 }, v)
        gwt.update(v, 2, { healthy = false })
        local seen = zones_seen(r, 400)
        assert.is_nil(seen["http://a2"])
        assert.is_true(seen["http://a1"] > 0 and seen["http://b1"] > 0 and seen["http://nz"] > 0)
        gwt.update(v, 2, { healthy = true })
        seen = zones_seen(r, 100)
        assert.is_nil(seen["http://b1"])
    end)

    it("falls back when its zone has fewer members than min_healthy", function()
        local r = gwt.strategy_runner(zone_aware.new{ zone = "b", min_healthy = 3 }, view())
        assert.is_true(zones_seen(r, 300)["http://a1"] ~= nil)
        local one = gwt.strategy_runner(zone_aware.new{ zone = "b", min_healthy = 1 }, view())
        assert.is_nil(zones_seen(one, 100)["http://a1"])
    end)

    it("falls back when its zone has no member at all", function()
        local r = gwt.strategy_runner(zone_aware.new{ zone = "z" }, view())
        assert.is_not_nil(r:pick())
    end)

    it("retries locally first, then anywhere", function()
        local r = gwt.strategy_runner(zone_aware.new{ zone = "a", min_healthy = 2 }, view())
        local req = gwt.request()
        local first = r:pick(req)
        gwt.mark_tried(req, first)
        local second = r:pick(req)
        assert.matches("^http://a", second.url)
        assert.are_not.equal(first.id, second.id)
        gwt.mark_tried(req, second)
        assert.does_not.match("^http://a", r:pick(req).url)
    end)

    it("delegates to gw.strategy.prequal with the local view", function()
        local views = {}
        gwt.install_gw{ strategies = { prequal = function(b)
            views[#views + 1] = #b
            return b[1]
        end } }
        local r = gwt.strategy_runner(zone_aware.new{ zone = "b", min_healthy = 2 }, view())
        assert.are.equal("http://b1", r:pick().url)
        assert.are.same({ 2 }, views)
    end)

    it("follows membership changes", function()
        local r = gwt.strategy_runner(zone_aware.new{ zone = "a", min_healthy = 1 }, view())
        assert.matches("^http://a", r:pick().url)
        r:set_backends(gwt.backends{ { url = "http://b1", id = 3, meta = { zone = "b" } },
            { url = "http://a9", id = 9, meta = { zone = "a" } } })
        for _ = 1, 20 do assert.are.equal("http://a9", r:pick().url) end
    end)

    it("reads the zone from $ZONE by default", function()
        local s = zone_aware.new()
        assert.are.equal("zone_aware", s.name)
        local expected = os.getenv("ZONE") or "a"
        local r = gwt.strategy_runner(s, view())
        local b = r:pick()
        if expected == "a" then assert.matches("^http://a", b.url) end
    end)

    it("validates its options", function()
        assert.has_error(function() zone_aware.new("a") end)
        assert.has_error(function() zone_aware.new{ zone = "" } end)
        assert.has_error(function() zone_aware.new{ zone = 1 } end)
        assert.has_error(function() zone_aware.new{ zone = "a", min_healthy = 0 } end)
        assert.has_error(function() zone_aware.new{ zone = "a", min_healthy = 1.5 } end)
    end)
end)
