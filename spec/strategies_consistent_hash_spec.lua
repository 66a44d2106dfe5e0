local gwt = require("gw.test")
local consistent_hash = require("strategies.consistent_hash")

local function five(overrides)
    local list = {}
    for i = 1, 5 do
        list[i] = { url = "http://10.0.0." .. i .. ":80", id = i }
        for k, v in pairs(overrides and overrides[i] or {}) do
            list[i][k] = v
        end
    end
    return list
end

local function user(u)
    return gwt.request{ headers = { ["X-User"] = u } }
end

describe("strategies.consistent_hash", function()
    before_each(function() gwt.install_gw() end)
    after_each(function() gwt.uninstall_gw() end)

    it("hashes with FNV-1a 32 and a Murmur3 finaliser", function()
        assert.are.equal(0x811c9dc5, consistent_hash.fnv1a32(""))
        assert.are.equal(0xe40c292c, consistent_hash.fnv1a32("a"))
        assert.are.equal(0xbf9cf968, consistent_hash.fnv1a32("foobar"))
        assert.are.equal(0xab3e7c0b, consistent_hash.hash(""))
        assert.are.equal(0x1a80b1b3, consistent_hash.hash("a"))
        local h = consistent_hash.hash("some longer key with bytes \255\0\1")
        assert.is_true(h >= 0 and h < 2 ^ 32 and h == math.floor(h))
    end)

    it("is a valid strategy table", function()
        local s = consistent_hash.new{ header = "X-User" }
        assert.are.equal("consistent_hash", s.name)
        assert.is_function(s.pick)
        assert.is_function(s.init)
        assert.is_function(s.on_backends_changed)
    end)

    it("sends the same key to the same backend, across workers", function()
        local s = consistent_hash.new{ header = "X-User" }
        local w1 = gwt.strategy_runner(s, gwt.backends(five()))
        local w2 = gwt.strategy_runner(s, gwt.backends(five()))
        for i = 1, 200 do
            local b = w1:pick(user("u" .. i))
            assert.are.equal(b.id, w1:pick(user("u" .. i)).id)
            assert.are.equal(b.id, w2:pick(user("u" .. i)).id)
        end
    end)

    it("spreads keys evenly", function()
        local r = gwt.strategy_runner(consistent_hash.new{ header = "X-User" }, gwt.backends(five()))
        local counts = { 0, 0, 0, 0, 0 }
        local n = 10000
        for i = 1, n do
            local b = r:pick(user("user-" .. i))
            counts[b.id] = counts[b.id] + 1
        end
        for id = 1, 5 do
            local share = counts[id] / n
            assert.is_true(share > 0.14 and share < 0.26, "backend " .. id .. " got " .. share)
        end
    end)

    it("honours weights", function()
        local r = gwt.strategy_runner(consistent_hash.new{ header = "X-User" },
            gwt.backends{ { url = "http://a", weight = 3 }, { url = "http://b", weight = 1 } })
        local heavy = 0
        for i = 1, 4000 do
            if r:pick(user("k" .. i)).id == 1 then heavy = heavy + 1 end
        end
        assert.is_true(heavy / 4000 > 0.65 and heavy / 4000 < 0.85, tostring(heavy))
    end)

    it("remaps only the leaving backend's keys (~1/5) when one of five leaves", function()
        local s = consistent_hash.new{ header = "X-User" }
        local r = gwt.strategy_runner(s, gwt.backends(five()))
        local n, before = 10000, {}
        for i = 1, n do
            before[i] = r:pick(user("user-" .. i)).id
        end
        local four = five()
        table.remove(four, 3)
        r:set_backends(gwt.backends(four))
        local moved = 0
        for i = 1, n do
            local now = r:pick(user("user-" .. i)).id
            assert.are_not.equal(3, now)
            if now ~= before[i] then
                moved = moved + 1
                assert.are.equal(3, before[i]) -- only keys of the leaving backend move
            end
        end
        assert.is_true(moved / n > 0.14 and moved / n < 0.26, "moved " .. moved / n)
    end)

    it("takes ~1/(N+1) of the keys for a new backend, from everyone", function()
        local s = consistent_hash.new{ header = "X-User" }
        local four = five()
        four[5] = nil
        local r = gwt.strategy_runner(s, gwt.backends(four))
        local before = {}
        for i = 1, 5000 do before[i] = r:pick(user("u" .. i)).id end
        r:set_backends(gwt.backends(five()))
        local moved = 0
        for i = 1, 5000 do
            local now = r:pick(user("u" .. i)).id
            if now ~= before[i] then
                moved = moved + 1
                assert.are.equal(5, now)
            end
        end
        assert.is_true(moved / 5000 > 0.14 and moved / 5000 < 0.26, "moved " .. moved / 5000)
    end)

    it("skips an unhealthy backend and moves only its keys, which come back", function()
        local view = gwt.backends(five())
        local r = gwt.strategy_runner(consistent_hash.new{ header = "X-User" }, view)
        local before = {}
        for i = 1, 2000 do before[i] = r:pick(user("u" .. i)).id end
        gwt.update(view, 2, { healthy = false })
        for i = 1, 2000 do
            local now = r:pick(user("u" .. i)).id
            assert.are_not.equal(2, now)
            if before[i] ~= 2 then assert.are.equal(before[i], now) end
        end
        gwt.update(view, 2, { healthy = true })
        for i = 1, 2000 do assert.are.equal(before[i], r:pick(user("u" .. i)).id) end
    end)

    it("walks on to an untried backend on retries, then gives up", function()
        local view = gwt.backends(five())
        local r = gwt.strategy_runner(consistent_hash.new{ header = "X-User" }, view)
        local req = user("retry-me")
        local seen = {}
        for _ = 1, 5 do
            local b = r:pick(req)
            assert.is_nil(seen[b.id])
            seen[b.id] = true
            gwt.mark_tried(req, b)
        end
        assert.is_nil(r:pick(req))
    end)

    it("returns an unhealthy untried owner when no healthy one is left", function()
        local unhealthy = {}
        for i = 1, 5 do unhealthy[i] = { healthy = false } end
        local r = gwt.strategy_runner(consistent_hash.new{ header = "X-User" },
            gwt.backends(five(unhealthy)))
        local b = r:pick(user("x"))
        assert.is_not_nil(b)
        assert.are.equal(b.id, r:pick(user("x")).id)
    end)

    it("falls back to gw.strategy.prequal without a key", function()
        local calls = 0
        gwt.install_gw{ strategies = { prequal = function(b) calls = calls + 1; return b[4] end } }
        local r = gwt.strategy_runner(consistent_hash.new{ header = "X-User" }, gwt.backends(five()))
        assert.are.equal(4, r:pick(gwt.request()).id)
        assert.are.equal(4, r:pick(user("")).id)
        assert.are.equal(2, calls)
        local rr = gwt.strategy_runner(consistent_hash.new{ header = "X-User", fallback = "round_robin" },
            gwt.backends(five()))
        assert.is_not_nil(rr:pick(gwt.request()))
        assert.are.equal(2, calls)
    end)

    it("reads the key from a cookie", function()
        local r = gwt.strategy_runner(consistent_hash.new{ cookie = "session" }, gwt.backends(five()))
        local a = r:pick(gwt.request{ headers = { Cookie = "theme=dark; session=abc123; x=1" } })
        local b = r:pick(gwt.request{ headers = { Cookie = "session=abc123" } })
        assert.are.equal(a.id, b.id)
        local cv = consistent_hash._cookie_value
        assert.are.equal("abc123", cv("a=1;session=abc123 ", "session"))
        assert.is_nil(cv("xsession=1; sessionx=2", "session"))
        assert.are.equal("", cv("session=", "session"))
    end)

    it("reads the key from a function", function()
        local r = gwt.strategy_runner(consistent_hash.new{ key = function(req) return req:path() end },
            gwt.backends(five()))
        assert.are.equal(r:pick(gwt.request{ path = "/a" }).id, r:pick(gwt.request{ path = "/a?x" }).id)
    end)

    it("rebuilds when membership changes unannounced", function()
        local s = consistent_hash.new{ header = "X-User" }
        local r = gwt.strategy_runner(s, gwt.backends(five()))
        r:pick(user("a"))
        local other = five()
        other[3] = { url = "http://10.0.0.9:80", id = 9 }
        r.backends = gwt.backends(other) -- no on_backends_changed
        for i = 1, 300 do
            assert.is_not_nil(r:pick(user("k" .. i)))
        end
        -- a state without a ring (init not called) works too
        local b = s.pick(gwt.backends(five()), user("z"), {})
        assert.is_not_nil(b)
    end)

    it("returns nil with no backends", function()
        local r = gwt.strategy_runner(consistent_hash.new{ header = "X-User" }, gwt.backends{})
        assert.is_nil(r:pick(user("a")))
    end)

    it("validates its options", function()
        assert.has_error(function() consistent_hash.new() end)
        assert.has_error(function() consistent_hash.new{} end)
        assert.has_error(function() consistent_hash.new{ header = "a", cookie = "b" } end)
        assert.has_error(function() consistent_hash.new{ header = "" } end)
        assert.has_error(function() consistent_hash.new{ key = "x" } end)
        assert.has_error(function() consistent_hash.new{ header = "a", replicas = 0 } end)
        assert.has_error(function() consistent_hash.new{ header = "a", replicas = 1.5 } end)
    end)
end)
