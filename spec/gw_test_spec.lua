-- Specs for gw.test itself: the fakes must behave like the API in DESIGN.md §6, and be strict.
local gwt = require("gw.test")
local cjson = require("cjson")

describe("gw.test", function()
    before_each(function()
        gwt.install_gw()
    end)
    after_each(function()
        gwt.uninstall_gw()
    end)

    it("runs under LuaJIT", function()
        assert.is_not_nil(jit)
        assert.is_not_nil(require("bit"))
    end)

    describe("request", function()
        it("has defaults", function()
            local req = gwt.request()
            assert.are.equal("GET", req:method())
            assert.are.equal("/", req:path())
            assert.are.equal("/", req:orig_path())
            assert.are.equal("", req:query())
            assert.are.equal("localhost", req:host())
            assert.are.equal("127.0.0.1", req:client_ip())
            assert.matches("^test%-%d+$", req:id())
            assert.are.same({}, req.ctx)
        end)

        it("splits a query off the path", function()
            local req = gwt.request{ path = "/a/b?x=1&y=2" }
            assert.are.equal("/a/b", req:path())
            assert.are.equal("x=1&y=2", req:query())
        end)

        it("takes the client's raw path apart from the canonical one", function()
            local req = gwt.request{ path = "/admin/x?k=v", orig_path = "/%61dmin//x" }
            assert.are.equal("/admin/x", req:path())
            assert.are.equal("/%61dmin//x", req:orig_path())
            assert.are.equal("k=v", req:query())
            assert.has_error(function() gwt.request{ orig_path = "x" } end,
                "gw.test.request: orig_path must be a string starting with \"/\"")
            assert.has_error(function() gwt.request{ orig_path = 5 } end,
                "gw.test.request: orig_path must be a string starting with \"/\"")
        end)

        it("keeps the given fields", function()
            local req = gwt.request{ method = "POST", path = "/p", query = "q=1", host = "h.example",
                client_ip = "10.0.0.1", id = "abc" }
            assert.are.equal("POST", req:method())
            assert.are.equal("q=1", req:query())
            assert.are.equal("h.example", req:host())
            assert.are.equal("h.example", req:header("host"))
            assert.are.equal("10.0.0.1", req:client_ip())
            assert.are.equal("abc", req:id())
        end)

        it("looks headers up case-insensitively and joins repeats", function()
            local req = gwt.request{ headers = { ["X-A"] = "1", Accept = { "a/b", "c/d" } } }
            assert.are.equal("1", req:header("x-a"))
            assert.are.equal("a/b", req:header("ACCEPT"))
            assert.is_nil(req:header("X-Missing"))
            local h = req:headers()
            assert.are.equal("a/b, c/d", h.accept)
            assert.are.equal("1", h["x-a"])
        end)

        it("accepts a list of header pairs", function()
            local req = gwt.request{ headers = { { "X-B", "1" }, { "x-b", "2" } } }
            assert.are.equal("1, 2", req:headers()["x-b"])
        end)

        it("applies and records header and path changes", function()
            local req = gwt.request{ path = "/old", headers = { ["X-A"] = "1", ["X-Del"] = "x" } }
            req:set_header("x-a", "2")
            req:add_header("X-Add", "a")
            req:add_header("X-Add", "b")
            req:clear_header("x-del")
            req:set_path("/new")
            req:set_header("X-Num", 42)
            local h = req:headers()
            assert.are.equal("2", h["x-a"])
            assert.are.equal("a, b", h["x-add"])
            assert.is_nil(h["x-del"])
            assert.are.equal("42", h["x-num"])
            assert.are.equal("/new", req:path())
            assert.are.equal("/old", req:orig_path())
            local ops = gwt.ops(req)
            assert.are.same({ op = "set_header", name = "x-a", value = "2" }, ops[1])
            assert.are.same({ op = "clear_header", name = "x-del" }, ops[4])
            assert.are.same({ op = "set_path", path = "/new" }, ops[5])
        end)

        it("headers() returns a copy", function()
            local req = gwt.request{ headers = { ["X-A"] = "1" } }
            req:headers()["x-a"] = "changed"
            assert.are.equal("1", req:header("X-A"))
        end)

        it("refuses bad header names, values and paths with nil, err", function()
            local req = gwt.request()
            local function refused(ok, err)
                assert.is_nil(ok)
                assert.is_string(err)
            end
            refused(req:set_header("Bad Name", "v"))
            refused(req:set_header("X-A", "a\r\nInjected: 1"))
            refused(req:set_header("X-A", nil))
            refused(req:add_header("X-A", {}))
            refused(req:clear_header(""))
            refused(req:set_path("no-slash"))
            refused(req:set_path("/a b"))
            assert.is_nil(req:header("X-A"))
            assert.are.equal("/", req:path())
            assert.are.same({}, gwt.ops(req))
            assert.is_true(req:set_header("X-A", "ok"))
            assert.is_true(req:set_path("/ok"))
            assert.has_error(function() gwt.request{ path = "x" } end)
            assert.has_error(function() req:header(nil) end)
        end)

        it("is strict about fields", function()
            local req = gwt.request()
            assert.has_error(function() return req.path .. "" end)
            assert.has_error(function() req.foo = 1 end)
            req.ctx.foo = 1
            assert.are.equal(1, req.ctx.foo)
        end)

        it("tracks tried backends by id or url", function()
            local bs = gwt.backends{ "http://a:1", "http://b:2" }
            local req = gwt.request{ tried = { 1 } }
            assert.is_true(req:tried(bs[1]))
            assert.is_false(req:tried(bs[2]))
            gwt.mark_tried(req, "http://b:2")
            assert.is_true(req:tried(bs[2]))
        end)

        it("respond returns gw.RESPONDED and raises on an invalid response", function()
            local req = gwt.request()
            assert.are.equal(gwt.RESPONDED, req:respond(418, "tea", { X = "1" }))
            assert.are.equal(gwt.RESPONDED, gw.RESPONDED)
            assert.has_error(function() req:respond(42) end)
            assert.has_error(function() req:respond(200, "", { ["X"] = "a\nb" }) end)
        end)

        it("tried is false for what is not a backend", function()
            assert.is_false(gwt.request():tried(nil))
        end)

        it("shares ctx with a response", function()
            local req = gwt.request()
            local res = gwt.response{ ctx = req.ctx }
            req.ctx.x = 1
            assert.are.equal(1, res.ctx.x)
        end)
    end)

    describe("response", function()
        it("has defaults", function()
            local res = gwt.response()
            assert.are.equal(200, res:status())
            assert.are.equal("gateway", res:source())
            assert.is_nil(res:backend())
            local body, err = res:body()
            assert.is_nil(body)
            assert.are.equal("not buffered", err)
            assert.are.same({ nil, "not buffered" }, { res:set_body("x") })
        end)

        it("reports upstream, backend and headers", function()
            local bs = gwt.backends{ "http://a:1" }
            local res = gwt.response{ status = 404, backend = bs[1],
                headers = { ["Content-Type"] = "text/plain" } }
            assert.are.equal("upstream", res:source())
            assert.are.equal("http://a:1", res:backend())
            assert.are.equal("text/plain", res:header("content-type"))
            assert.is_true(res:set_status(500))
            assert.are.equal(500, res:status())
            local ok, err = res:set_status(99)
            assert.is_nil(ok)
            assert.matches("status", err)
            assert.are.equal(500, res:status())
            res:set_header("X-A", "1")
            res:add_header("X-A", "2")
            assert.are.equal("1, 2", res:headers()["x-a"])
            res:clear_header("X-A")
            assert.is_nil(res:header("X-A"))
        end)

        it("buffers when asked", function()
            local res = gwt.response{ body = "hello" }
            assert.are.equal("hello", res:body())
            assert.is_true(res:set_body("bye"))
            assert.are.equal("bye", res:body())
            assert.has_error(function() res:set_body(1) end)
            local empty = gwt.response{ buffered = true }
            assert.are.equal("", empty:body())
            local unbuffered = gwt.response{ body = "x", buffered = false }
            assert.is_nil(unbuffered:body())
            assert.are.equal("x", gwt.body(unbuffered))
        end)

        it("rejects a bad source", function()
            assert.has_error(function() gwt.response{ source = "elsewhere" } end)
        end)
    end)

    describe("run_on_request", function()
        it("returns nil when the hook continues", function()
            assert.is_nil(gwt.run_on_request(function() end, gwt.request()))
        end)

        it("normalises a returned triple", function()
            local r = gwt.run_on_request(function() return 403, "no", { ["X-A"] = 1 } end,
                gwt.request())
            assert.are.same({ status = 403, body = "no", headers = { ["X-A"] = "1" } }, r)
        end)

        it("normalises req:respond", function()
            local r = gwt.run_on_request(function(req) return req:respond(200) end, gwt.request())
            assert.are.same({ status = 200, body = "", headers = {} }, r)
        end)

        it("JSON-encodes table bodies with cjson", function()
            local r = gwt.run_on_request(function() return 400, { error = "bad", n = 1 } end,
                gwt.request())
            assert.are.equal("application/json", r.headers["Content-Type"])
            assert.are.same({ error = "bad", n = 1 }, cjson.decode(r.body))
            assert.are.same({ error = "bad", n = 1 }, gwt.json_body(r))
        end)

        it("keeps a Content-Type the hook set", function()
            local r = gwt.run_on_request(function()
                return 400, { a = 1 }, { ["content-type"] = "application/problem+json" }
            end, gwt.request())
            assert.is_nil(r.headers["Content-Type"])
            assert.are.equal("application/problem+json", r.headers["content-type"])
        end)

        it("raises on what the runtime would reject", function()
            local req = gwt.request()
            assert.has_error(function() gwt.run_on_request(function() return "200" end, req) end)
            assert.has_error(function() gwt.run_on_request(function() return 200, 5 end, req) end)
            assert.has_error(function()
                gwt.run_on_request(function() return 200, "", "X: y" end, req)
            end)
            assert.has_error(function()
                gwt.run_on_request(function() return 200, "", { X = "a\nb" } end, req)
            end)
        end)

        it("ends the request when respond() is called, even if not returned", function()
            local r = gwt.run_on_request(function(req) req:respond(401, { e = 1 }) end, gwt.request())
            assert.are.equal(401, r.status)
            assert.are.equal("application/json", r.headers["Content-Type"])
        end)

        it("raises on a list of header values, which the runtime cannot send", function()
            assert.has_error(function()
                gwt.run_on_request(function() return 200, "", { ["Set-Cookie"] = { "a", "b" } } end,
                    gwt.request())
            end)
        end)

        it("takes a hooks table or a list, stopping at the first response", function()
            local calls = {}
            local list = {
                function() calls[#calls + 1] = 1 end,
                { on_request = function() calls[#calls + 1] = 2; return 204 end },
                function() calls[#calls + 1] = 3 end,
            }
            local r = gwt.run_on_request(list, gwt.request())
            assert.are.equal(204, r.status)
            assert.are.same({ 1, 2 }, calls)
        end)
    end)

    it("run_rewrite_path applies a new path", function()
        local req = gwt.request{ path = "/a" }
        assert.are.equal("/b", gwt.run_rewrite_path(function(p) return p:gsub("a", "b") end, req))
        assert.are.equal("/b", gwt.run_rewrite_path(function() return nil end, req))
        assert.has_error(function() gwt.run_rewrite_path(function() return 1 end, req) end)
    end)

    it("run_on_response runs each hook", function()
        local res = gwt.response()
        gwt.run_on_response({ function(r) r:set_header("A", "1") end,
            { on_response = function(r) r:set_header("B", "2") end } }, res)
        assert.are.equal("1", res:header("A"))
        assert.are.equal("2", res:header("B"))
    end)

    describe("backends", function()
        it("builds entries with defaults and ids 1..n", function()
            local bs = gwt.backends{ "http://a:1", { url = "http://b:2", weight = 3, healthy = false,
                rif = 4, latency_ms = 5, probe_rif = 6, probe_latency_ms = 7, probe_age_ms = 8,
                fails = 2, meta = { zone = "b" } } }
            assert.are.equal(2, #bs)
            local a, b = bs[1], bs[2]
            assert.are.equal(1, a.id)
            assert.are.equal("http://a:1", a.url)
            assert.are.equal(1, a.weight)
            assert.is_true(a.healthy)
            assert.are.equal(0, a.rif)
            assert.is_nil(a.probe_rif)
            assert.are.same({}, a.meta)
            assert.are.equal(2, b.id)
            assert.is_false(b.healthy)
            assert.are.equal(6, b.probe_rif)
            assert.are.equal(8, b.probe_age_ms)
            assert.are.equal("b", b.meta.zone)
            assert.is_nil(bs[3])
        end)

        it("is a read-only array", function()
            local bs = gwt.backends{ "http://a:1", "http://b:2" }
            local urls = {}
            for i, b in ipairs(bs) do urls[i] = b.url end
            assert.are.same({ "http://a:1", "http://b:2" }, urls)
            assert.has_error(function() bs[3] = {} end)
            assert.has_error(function() bs.n = 1 end)
            assert.has_error(function() bs[1].healthy = false end)
            assert.has_error(function() bs[1].url = "x" end)
            assert.has_error(function() return bs[1].zone end)
        end)

        it("keeps explicit ids and rejects duplicates and unknown fields", function()
            local bs = gwt.backends{ { url = "http://a:1", id = 7 } }
            assert.are.equal(7, bs[1].id)
            assert.has_error(function() gwt.backends{ { url = "x", id = 1 }, { url = "y", id = 1 } } end)
            assert.has_error(function() gwt.backends{ { url = "x", zone = "a" } } end)
            assert.has_error(function() gwt.backends{ { weight = 1 } } end)
            assert.has_error(function() gwt.backends{ { url = "x", healthy = "yes" } } end)
        end)

        it("update changes runtime fields only", function()
            local bs = gwt.backends{ "http://a:1" }
            gwt.update(bs, 1, { healthy = false, rif = 9 })
            assert.is_false(bs[1].healthy)
            assert.are.equal(9, bs[1].rif)
            assert.has_error(function() gwt.update(bs, 1, { url = "http://b" }) end)
            assert.has_error(function() gwt.update(bs, 2, { rif = 1 }) end)
        end)
    end)

    describe("fake gw", function()
        it("is installed and removed", function()
            assert.are.equal(gwt.gw, gw)
            assert.are.equal(cjson, gw.json)
            assert.are.equal(0, gw.worker.id)
            gwt.uninstall_gw()
            assert.is_nil(rawget(_G, "gw"))
            gwt.install_gw{ worker_id = 3 }
            assert.are.equal(3, gw.worker.id)
        end)

        it("captures logs", function()
            gw.log.info("a", 1, true, nil)
            gw.log.err("boom")
            assert.are.same({ level = "info", message = "a 1 true nil" }, gwt.logs[1])
            assert.is_true(gwt.logged("err", "boom"))
            assert.is_false(gwt.logged("warn", "boom"))
            gwt.install_gw()
            assert.are.equal(0, #gwt.logs)
        end)

        it("has a fake clock", function()
            local t0 = gw.now()
            gwt.advance(1.5)
            assert.are.equal(t0 + 1.5, gw.now())
            assert.are.equal(gw.now(), gwt.time())
        end)

        it("takes a custom clock", function()
            gwt.install_gw{ now = function() return 42 end }
            assert.are.equal(42, gw.now())
            assert.has_error(function() gwt.advance(1) end)
            assert.has_error(function() gwt.install_gw{ now = 5 } end)
        end)

        it("stand-in strategies skip tried and unhealthy backends", function()
            local bs = gwt.backends{ "http://a", "http://b", { url = "http://c", healthy = false } }
            local req = gwt.request{ tried = { 1 } }
            for _, name in ipairs({ "round_robin", "random", "least_conn", "prequal" }) do
                for _ = 1, 20 do
                    assert.are.equal(2, gw.strategy[name](bs, req).id, name)
                end
            end
            gwt.mark_tried(req, 2)
            assert.are.equal(3, gw.strategy.prequal(bs, req).id) -- unhealthy beats nothing
            gwt.mark_tried(req, 3)
            assert.is_nil(gw.strategy.prequal(bs, req))
        end)

        it("round_robin takes turns and least_conn takes the least loaded", function()
            local bs = gwt.backends{ { url = "http://a", rif = 5 }, { url = "http://b", rif = 1 },
                { url = "http://c", rif = 4, weight = 2 } }
            local seen = {}
            for _ = 1, 3 do
                seen[gw.strategy.round_robin(bs, gwt.request()).id] = true
            end
            assert.are.same({ true, true, true }, seen)
            assert.are.equal(2, gw.strategy.least_conn(bs, gwt.request()).id)
        end)

        it("prequal stand-in prefers cold, fast backends", function()
            local bs = gwt.backends{
                { url = "http://a", probe_rif = 1, probe_latency_ms = 50 },
                { url = "http://b", probe_rif = 2, probe_latency_ms = 5 },
                { url = "http://c", probe_rif = 1, probe_latency_ms = 20 },
                { url = "http://d", probe_rif = 2, probe_latency_ms = 30 },
                { url = "http://e", probe_rif = 2, probe_latency_ms = 30 },
                { url = "http://f", probe_rif = 2, probe_latency_ms = 30 },
                { url = "http://g", probe_rif = 90, probe_latency_ms = 1 },
            }
            assert.are.equal(2, gw.strategy.prequal(bs, gwt.request()).id)
        end)

        it("accepts plain arrays of entries (filtered views)", function()
            local bs = gwt.backends{ "http://a", "http://b" }
            assert.are.equal(2, gw.strategy.least_conn({ bs[2] }, gwt.request()).id)
        end)

        it("lets a test replace a native strategy", function()
            gwt.install_gw{ strategies = { prequal = function(b) return b[#b] end } }
            local bs = gwt.backends{ "http://a", "http://b" }
            assert.are.equal(2, gw.strategy.prequal(bs).id)
        end)
    end)

    describe("strategy_runner", function()
        local bs
        before_each(function()
            bs = gwt.backends{ "http://a", "http://b" }
        end)

        it("validates the strategy table", function()
            assert.has_error(function() gwt.strategy_runner({ pick = function() end }, bs) end)
            assert.has_error(function() gwt.strategy_runner({ name = "x" }, bs) end)
            assert.has_error(function()
                gwt.strategy_runner({ name = "x", pick = function() end, init = 1 }, bs)
            end)
        end)

        it("gives init the state to fill and passes it back", function()
            local seen = {}
            local s = {
                name = "first",
                init = function(up, backends, state)
                    seen.up, seen.n = up, #backends
                    state.picks = 0
                    return { ignored = true }
                end,
                pick = function(backends, _, state)
                    state.picks = state.picks + 1
                    return backends[1]
                end,
                on_result = function(b, result, state) state.last = { b.id, result } end,
                on_backends_changed = function(backends, state) state.n = #backends end,
            }
            local r = gwt.strategy_runner(s, bs, "api")
            assert.are.same({ up = "api", n = 2 }, seen)
            assert.are.equal(1, r:pick().id)
            assert.are.equal(1, r.state.picks)
            r:result(bs[1], { status = 503 })
            assert.are.same({ 1, { status = 503, latency_ms = 1, ok = false } }, r.state.last)
            r:set_backends(gwt.backends{ "http://c" })
            assert.are.equal(1, r.state.n)
        end)

        it("gives an empty state without init", function()
            local r = gwt.strategy_runner({ name = "x", pick = function() return nil end }, bs)
            assert.are.same({}, r.state)
            assert.is_nil(r:pick())
        end)

        it("reports a strategy that modifies its view", function()
            local t = gwt.strategy_runner({ name = "t", pick = function(b)
                rawset(b, 1, b[2])
                return b[1]
            end }, bs)
            assert.has_error(function() t:pick() end)
        end)

        it("rejects a pick that yields or returns a stranger", function()
            local y = gwt.strategy_runner({ name = "y", pick = function() coroutine.yield() end }, bs)
            assert.has_error(function() y:pick() end)
            local other = gwt.backends{ { url = "http://z", id = 99 } }
            local s = gwt.strategy_runner({ name = "s", pick = function() return other[1] end }, bs)
            assert.has_error(function() s:pick() end)
            local e = gwt.strategy_runner({ name = "e", pick = function() error("boom") end }, bs)
            assert.has_error(function() e:pick() end)
        end)
    end)

    describe("membership hooks", function()
        it("builds the backend table hooks receive", function()
            local b = gwt.member{ url = "http://10.0.0.7:8080", id = 3, meta = { zone = "b" } }
            assert.are.same({ id = 3, url = "http://10.0.0.7:8080", weight = 1,
                              meta = { zone = "b" }, static = false }, b)
            assert.are.same({ id = 1, url = "http://x:1", weight = 1, meta = {}, static = false },
                gwt.member("http://x:1"))
            assert.has_error(function() gwt.member{ url = "http://x:1", zone = "a" } end,
                "gw.test.member: unknown field 'zone'")
            assert.has_error(function() gwt.member{ url = "http://x:1", weight = "2" } end,
                "gw.test.member: weight must be a number")
        end)

        it("refuses only when on_register returns false", function()
            local only_zone_a = function(b) if b.meta.zone ~= "a" then return false end end
            assert.is_true(gwt.run_on_register(only_zone_a, gwt.member{ url = "http://x:1", meta = { zone = "a" } }))
            assert.is_false(gwt.run_on_register(only_zone_a, gwt.member("http://x:2")))
            assert.is_true(gwt.run_on_register(function() return nil end, gwt.member("http://x:3")))
            assert.is_true(gwt.run_on_register(function() return 0 end, gwt.member("http://x:3")))
            assert.has_error(function()
                gwt.run_on_register(function() error("boom", 0) end, gwt.member("http://x:4"))
            end, "boom")
        end)

        it("passes upstream and reason to on_unregister", function()
            local seen = {}
            local hook = function(b, u, reason) seen[#seen + 1] = b.url .. " " .. u .. " " .. reason end
            gwt.run_on_unregister(hook, gwt.member("http://x:1"), "api")
            gwt.run_on_unregister(hook, gwt.member("http://x:2"), "api", "expired")
            assert.are.same({ "http://x:1 api unregister", "http://x:2 api expired" }, seen)
            assert.has_error(function() gwt.run_on_unregister(hook, gwt.member("http://x:3"), "api", "gone") end)
        end)
    end)
end)
