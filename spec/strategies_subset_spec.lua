local gwt = require("gw.test")
local subset = require("strategies.subset")

describe("strategies.subset", function()
    local function odd(b) return b.id % 2 == 1 end

    it("views the members as a plain array with the right length", function()
        local v = gwt.backends{ "http://1", "http://2", "http://3", "http://4", "http://5" }
        local s = subset.new(odd)
        local arr, m = subset.view(s, v)
        assert.are.equal(3, m)
        assert.are.equal(3, #arr)
        assert.are.same({ 1, 3, 5 }, { arr[1].id, arr[2].id, arr[3].id })
    end)

    it("reuses one array and calls the filter only on changes", function()
        local calls = 0
        local s = subset.new(function(b) calls = calls + 1; return b.id ~= 2 end)
        local v = gwt.backends{ "http://1", "http://2", "http://3" }
        local a1 = subset.view(s, v)
        local a2 = subset.view(s, v)
        assert.are.equal(a1, a2)
        assert.are.equal(3, calls)
        gwt.update(v, 1, { healthy = false })
        assert.is_false(subset.view(s, v)[1].healthy) -- fresh entries, no rebuild
        assert.are.equal(3, calls)
    end)

    it("notices shrinking, growing and replaced members", function()
        local s = subset.new(odd)
        local _, m = subset.view(s, gwt.backends{ "http://1", "http://2", "http://3", "http://4",
            "http://5" })
        assert.are.equal(3, m)
        local arr
        arr, m = subset.view(s, gwt.backends{ "http://1" })
        assert.are.equal(1, m)
        assert.are.equal(1, #arr)
        assert.is_nil(arr[2])
        arr, m = subset.view(s, gwt.backends{ { url = "http://x", id = 4 } })
        assert.are.equal(0, m)
        assert.are.equal(0, #arr)
        subset.rebuild(s, gwt.backends{ "http://1", "http://2", "http://3" })
        subset.invalidate(s)
        arr, m = subset.view(s, gwt.backends{ "http://1", "http://2", "http://3" })
        assert.are.equal(2, #arr)
        assert.are.equal(2, m)
    end)

    it("counts available members", function()
        local v = gwt.backends{ "http://1", { url = "http://2", healthy = false }, "http://3" }
        local arr, m = subset.view(subset.new(function() return true end), v)
        assert.are.equal(2, subset.count_available(arr, m))
        assert.are.equal(1, subset.count_available(arr, m, gwt.request{ tried = { 1 } }))
    end)

    it("requires a filter function", function()
        assert.has_error(function() subset.new() end)
    end)
end)
