local gwt = require("gw.test")
local rate_limit = require("hooks.rate_limit")

describe("hooks.rate_limit", function()
    before_each(function() gwt.install_gw() end)
    after_each(function() gwt.uninstall_gw() end)

    local function hit(hook, ip)
        return gwt.run_on_request(hook.on_request, gwt.request{ client_ip = ip or "10.0.0.1" })
    end

    it("allows a burst, then answers 429 with Retry-After and X-RateLimit headers", function()
        local hook = rate_limit.new{ rate = 1, burst = 3 }
        for _ = 1, 3 do
            assert.is_nil(hit(hook))
        end
        local r = hit(hook)
        assert.are.equal(429, r.status)
        assert.are.equal("too_many_requests", gwt.json_body(r).error)
        assert.are.equal("application/json", r.headers["Content-Type"])
        assert.are.equal("1", r.headers["Retry-After"])
        assert.are.equal("3", r.headers["X-RateLimit-Limit"])
        assert.are.equal("0", r.headers["X-RateLimit-Remaining"])
    end)

    it("refills over (fake) time", function()
        local hook = rate_limit.new{ rate = 2, burst = 2 }
        assert.is_nil(hit(hook))
        assert.is_nil(hit(hook))
        assert.are.equal(429, hit(hook).status)
        gwt.advance(0.25) -- half a token
        assert.are.equal(429, hit(hook).status)
        gwt.advance(0.25) -- one token
        assert.is_nil(hit(hook))
        assert.are.equal(429, hit(hook).status)
        gwt.advance(100) -- capped at burst
        assert.is_nil(hit(hook))
        assert.is_nil(hit(hook))
        assert.are.equal(429, hit(hook).status)
    end)

    it("computes Retry-After in whole seconds, at least 1", function()
        local hook = rate_limit.new{ rate = 0.1, burst = 1 } -- one request per 10 s
        assert.is_nil(hit(hook))
        assert.are.equal("10", hit(hook).headers["Retry-After"])
        gwt.advance(2.5)
        assert.are.equal("8", hit(hook).headers["Retry-After"])
        local fast = rate_limit.new{ rate = 1000, burst = 1 }
        assert.is_nil(hit(fast))
        assert.are.equal("1", hit(fast).headers["Retry-After"])
    end)

    it("keeps one bucket per key", function()
        local hook = rate_limit.new{ rate = 1, burst = 1 }
        assert.is_nil(hit(hook, "a"))
        assert.are.equal(429, hit(hook, "a").status)
        assert.is_nil(hit(hook, "b"))
    end)

    it("uses a custom key, and does not limit a nil key", function()
        local hook = rate_limit.new{ rate = 1, burst = 1, key = function(req) return req:header("X-User") end }
        local function as(user)
            return gwt.run_on_request(hook.on_request, gwt.request{ headers = { ["X-User"] = user } })
        end
        assert.is_nil(as("u1"))
        assert.are.equal(429, as("u1").status)
        assert.is_nil(as("u2"))
        for _ = 1, 5 do
            assert.is_nil(gwt.run_on_request(hook.on_request, gwt.request()))
        end
    end)

    it("evicts the least recently seen key beyond max_keys", function()
        local hook = rate_limit.new{ rate = 0.001, burst = 1, max_keys = 2 }
        assert.is_nil(hit(hook, "a"))
        assert.is_nil(hit(hook, "b"))
        assert.are.equal(429, hit(hook, "a").status) -- a is now the most recent
        assert.is_nil(hit(hook, "c"))                -- evicts b
        assert.are.equal(429, hit(hook, "a").status) -- a survived
        assert.is_nil(hit(hook, "b"))                -- b came back with a full bucket (evicts c)
        assert.are.equal(429, hit(hook, "a").status)
        assert.is_nil(hit(hook, "c"))
    end)

    it("stays bounded under many keys", function()
        local hook = rate_limit.new{ rate = 1, burst = 1, max_keys = 100 }
        for i = 1, 5000 do
            assert.is_nil(hit(hook, "k" .. i))
        end
        assert.are.equal(429, hit(hook, "k5000").status)
        assert.is_nil(hit(hook, "k1"))
    end)

    it("does not let time going backwards mint tokens", function()
        local t = 100
        gwt.install_gw{ now = function() return t end }
        local hook = rate_limit.new{ rate = 1, burst = 1 }
        assert.is_nil(hit(hook))
        t = 50
        assert.are.equal(429, hit(hook).status)
        t = 101
        assert.is_nil(hit(hook))
    end)

    it("defaults burst to rate", function()
        local hook = rate_limit.new{ rate = 5 }
        for _ = 1, 5 do assert.is_nil(hit(hook)) end
        local r = hit(hook)
        assert.are.equal("5", r.headers["X-RateLimit-Limit"])
    end)

    it("validates its options", function()
        assert.has_error(function() rate_limit.new() end)
        assert.has_error(function() rate_limit.new{} end)
        assert.has_error(function() rate_limit.new{ rate = 0 } end)
        assert.has_error(function() rate_limit.new{ rate = 0 / 0 } end)
        assert.has_error(function() rate_limit.new{ rate = 1, burst = 0.5 } end)
        assert.has_error(function() rate_limit.new{ rate = 1, key = "ip" } end)
        assert.has_error(function() rate_limit.new{ rate = 1, max_keys = 0 } end)
    end)
end)
