#!/usr/bin/env python3
"""Lua inside the gateway, end to end: hooks (on_request, rewrite_path, on_response, on_log) with
the req/res/gw API, short-circuit responses, errors in every hook kind (500 + counted, or fail
open), the sandbox, and Lua strategies with delegation and fallback."""

import json
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403

HOOKS = r'''
local M = {}
function M.tag(req)
    req:set_header("X-Hooked", req:method() .. " " .. req:path())
    req:clear_header("X-Secret")
    req:add_header("X-Multi", "a")
    req:add_header("X-Multi", "b")
    req.ctx.seen = req:header("x-in") or "none"
    if req:header("x-deny") then
        return 403, { error = "denied", id = req:id() }, { ["X-Why"] = "header" }
    end
    if req:header("x-respond") then
        return req:respond(200, "short\n", { ["Content-Type"] = "text/plain" })
    end
end
function M.rewrite(path, req)
    local rest = path:match("^/old/(.*)$")
    if rest then return "/new/" .. rest end
end
function M.resp(res)
    res:set_header("X-Ctx", res.ctx.seen or "nil")
    res:set_header("X-Source", res:source())
    res:set_header("X-Backend-Url", res:backend() or "none")
    res:clear_header("Server")
    if res:status() == 404 then res:set_status(410) end
end
function M.log(res)
    gw.log.info("on_log status=" .. res:status() .. " ctx=" .. tostring(res.ctx.seen))
end
function M.fail() error("hook exploded") end
function M.partial(res) res:set_header("X-Partial", "1"); error("after an edit") end
function M.upper(res)
    local body = res:body()  -- nil for a bodyless response (HEAD, 204, 304)
    if body then
        assert(res:set_body(body:upper()))
        res:set_header("X-Orig-Len", #body)
    end
end
function M.streaming(res)
    local body, err = res:body()
    res:set_header("X-Body", tostring(body) .. " / " .. tostring(err))
end
function M.sandbox() os.execute("true") end
local function spin(ms)  -- busy for `ms` milliseconds (a hook cannot sleep)
    local t = gw.now() + ms / 1000
    while gw.now() < t do end
end
function M.slow() spin(15) end
M.strategy = {
    name = "zone_b",
    init = function(upstream, backends, state) state.inits = (state.inits or 0) + 1 end,
    pick = function(backends, req, state)
        if req:header("x-strategy-fail") then error("strategy exploded") end
        if req:header("x-strategy-slow") then spin(15) end
        if req:header("x-delegate") then
            return gw.strategy.prequal({ backends[1], backends[2] }, req)
        end
        for _, b in ipairs(backends) do
            if b.healthy and b.meta.zone == "b" then return b end
        end
    end,
}
return M
'''


class LuaTest(GwTestCase):

    def start(self, extra_routes=(), **cfg):
        self.b1, self.b2 = self.backend("b1"), self.backend("b2")
        routes = list(extra_routes) + [
            {"name": "fail", "match": {"path_prefix": "/fail"}, "upstream": "u",
             "on_request": Lua("h.fail")},
            {"name": "failopen", "match": {"path_prefix": "/open"}, "upstream": "u",
             "on_request": Lua("h.fail"), "lua": {"on_error": "continue"}},
            {"name": "respfail", "match": {"path_prefix": "/respfail"}, "upstream": "u",
             "on_response": Lua("h.fail")},
            {"name": "partial", "match": {"path_prefix": "/partial"}, "upstream": "u",
             "on_response": Lua("h.partial")},
            {"name": "logfail", "match": {"path_prefix": "/logfail"}, "upstream": "u",
             "on_log": Lua("h.fail")},
            {"name": "sandbox", "match": {"path_prefix": "/sandbox"}, "upstream": "u",
             "on_request": Lua("h.sandbox")},
            {"name": "zone", "match": {"path_prefix": "/zone"}, "upstream": "z"},
            {"name": "slow", "match": {"path_prefix": "/slow"}, "upstream": "u",
             "on_request": Lua("h.slow")},
            {"name": "buf", "match": {"path_prefix": "/buf/"}, "upstream": "u", "strip_prefix": True,
             "buffer_response": {"max_bytes": 200000}, "on_response": Lua("h.upper")},
            {"name": "stream", "match": {"path_prefix": "/stream/"}, "upstream": "u",
             "strip_prefix": True, "on_response": Lua("h.streaming")},
            {"name": "main", "match": {"path_prefix": "/"}, "upstream": "u",
             "on_request": Lua("h.tag"), "rewrite_path": Lua("h.rewrite"),
             "on_response": Lua("h.resp"), "on_log": Lua("h.log")},
        ]
        config = basic_config(
            upstreams={
                "u": upstream_cfg(self.b1.url, self.b2.url),
                "z": {"backends": [{"url": self.b1.url, "meta": {"zone": "a"}},
                                   {"url": self.b2.url, "meta": {"zone": "b"}}],
                      "strategy": Lua("h.strategy"), "fallback_strategy": "round_robin"},
            },
            routes=routes, workers=2, **cfg)
        self.gw = self.gateway(config, prelude='local h = dofile(%r)\n' % self.write_hooks())
        return self.gw

    def write_hooks(self):
        import shutil
        import tempfile
        d = tempfile.mkdtemp(prefix="pgw-lua-")
        self.addCleanup(shutil.rmtree, d, True)
        p = os.path.join(d, "hooks.lua")
        with open(p, "w") as f:
            f.write(HOOKS)
        return p

    def test_on_request_edits_and_rewrite(self):
        gw = self.start()
        st, hdrs, body = http_request(gw.port, "GET", "/old/x?q=1",
                                      headers={"X-Secret": "s", "X-In": "v"})
        self.assertEqual(st, 200, body)
        j = json.loads(body)
        self.assertEqual(j["path"], "/new/x?q=1")             # rewrite_path, query kept
        self.assertEqual(j["headers"]["x-hooked"], "GET /old/x")  # req:path() before the rewrite
        self.assertNotIn("x-secret", j["headers"])
        self.assertEqual(j["headers"]["x-multi"], "a, b")
        h = {k.lower(): v for k, v in hdrs}
        self.assertEqual(h["x-ctx"], "v")                      # req.ctx is res.ctx
        self.assertEqual(h["x-source"], "upstream")
        self.assertIn(h["x-backend-url"], (self.b1.url, self.b2.url))
        self.assertNotIn("server", h)                          # cleared by on_response

    def test_short_circuit_responses(self):
        gw = self.start()
        st, hdrs, body = http_request(gw.port, "GET", "/x", headers={"X-Deny": "1"})
        self.assertEqual(st, 403)
        h = {k.lower(): v for k, v in hdrs}
        self.assertEqual(h["content-type"], "application/json")
        self.assertEqual(h["x-why"], "header")
        self.assertEqual(h["x-source"], "gateway")             # on_response saw it too
        self.assertEqual(json.loads(body)["error"], "denied")
        self.assertEqual(json.loads(body)["id"], h["x-request-id"])
        st, hdrs, body = http_request(gw.port, "GET", "/x", headers={"X-Respond": "1"})
        self.assertEqual((st, body), (200, b"short\n"))
        # Both were answered by the hook: nothing reached a backend.
        self.assertEqual(metric_value(gw.metrics(), "gw_upstream_requests_total"), 0)

    def test_on_response_changes_status(self):
        gw = self.start()
        st, _, _ = http_request(gw.port, "GET", "/status/404")
        self.assertEqual(st, 410)

    def test_errors_in_every_hook_kind(self):
        gw = self.start()
        st, _, body = http_request(gw.port, "GET", "/fail")
        self.assertEqual(st, 500)
        j = json.loads(body)
        self.assertEqual(j["error"], "internal")
        self.assertNotIn("exploded", body.decode())            # never the Lua message
        self.assertEqual(http_request(gw.port, "GET", "/open")[0], 200)      # fails open
        self.assertEqual(http_request(gw.port, "GET", "/respfail")[0], 500)  # on_response error
        st, hdrs, _ = http_request(gw.port, "GET", "/partial")
        self.assertEqual(st, 500)
        self.assertNotIn("x-partial", {k.lower() for k, _ in hdrs})        # its edit is dropped
        self.assertEqual(http_request(gw.port, "GET", "/logfail")[0], 200)   # on_log: after the fact
        self.assertEqual(http_request(gw.port, "GET", "/sandbox")[0], 500)   # os.execute is gone
        time.sleep(0.2)
        text = gw.metrics()
        for route, hook in (("fail", "on_request"), ("failopen", "on_request"),
                            ("respfail", "on_response"), ("logfail", "on_log"),
                            ("sandbox", "on_request")):
            self.assertEqual(metric_value(text, "gw_lua_errors_total", route=route, hook=hook), 1,
                             "%s/%s\n%s" % (route, hook, text))
        log = gw.stderr()
        self.assertIn("hook exploded", log)
        self.assertIn("stack traceback", log)
        # The gateway keeps serving, and on_log runs after the response.
        self.assertEqual(http_request(gw.port, "GET", "/x")[0], 200)
        deadline = time.time() + 5
        while "on_log status=200" not in gw.stderr() and time.time() < deadline:
            time.sleep(0.05)
        self.assertRegex(gw.stderr(), r"on_log status=200 ctx=none")

    def test_lua_strategy_view_delegation_and_fallback(self):
        gw = self.start()
        for _ in range(4):
            st, _, body = http_request(gw.port, "GET", "/zone")
            self.assertEqual(st, 200)
            self.assertEqual(json.loads(body)["backend"], "b2")  # meta.zone == "b"
        seen = set()
        for _ in range(10):
            st, _, body = http_request(gw.port, "GET", "/zone", headers={"X-Delegate": "1"})
            self.assertEqual(st, 200)
            seen.add(json.loads(body)["backend"])
        self.assertTrue(seen <= {"b1", "b2"})
        seen = set()
        for _ in range(6):
            st, _, body = http_request(gw.port, "GET", "/zone", headers={"X-Strategy-Fail": "1"})
            self.assertEqual(st, 200)                          # fallback_strategy answered
            seen.add(json.loads(body)["backend"])
        self.assertEqual(seen, {"b1", "b2"})                   # round robin over both
        text = gw.metrics()
        self.assertEqual(metric_value(text, "gw_lua_strategy_errors_total", upstream="z"), 6, text)
        self.assertGreater(metric_value(text, "prequal_picks_total", upstream="z"), 0, text)

    def test_slow_hooks_are_logged_and_counted(self):
        gw = self.start()
        for _ in range(2):
            self.assertEqual(http_request(gw.port, "GET", "/slow")[0], 200)
        st, _, body = http_request(gw.port, "GET", "/zone", headers={"X-Strategy-Slow": "1"})
        self.assertEqual((st, json.loads(body)["backend"]), (200, "b2"))  # slow, not failed
        text = gw.metrics()
        self.assertEqual(metric_value(text, "gw_lua_slow_total", route="slow", hook="on_request"), 2, text)
        self.assertEqual(metric_value(text, "gw_lua_slow_total", route="main", hook="on_request"), 0, text)
        self.assertEqual(metric_value(text, "gw_lua_strategy_slow_total", upstream="z"), 1, text)
        self.assertEqual(metric_value(text, "gw_lua_strategy_errors_total", upstream="z"), 0, text)
        err = gw.stderr()
        self.assertRegex(err, r"slow on_request hook on route slow: \d+\.\d ms")
        self.assertRegex(err, r"slow pick in the strategy of upstream z: \d+\.\d ms")

    def test_buffer_response(self):
        gw = self.start()
        for path, n in (("/buf/bytes/150000", 150000), ("/buf/chunked/70000", 70000),
                        ("/buf/close/5000", 5000)):
            st, hdrs, body = http_request(gw.port, "GET", path)
            self.assertEqual(st, 200, path)
            h = {k.lower(): v for k, v in hdrs}
            self.assertEqual(int(h["content-length"]), n, path)   # re-framed with the new length
            self.assertNotIn("transfer-encoding", h)
            self.assertEqual(h["x-orig-len"], str(n))
            self.assertEqual(body, pattern_bytes(n).upper(), path)
        st, _, body = http_request(gw.port, "GET", "/buf/bytes/300000")  # over max_bytes
        self.assertEqual(st, 502)
        self.assertEqual(json.loads(body)["error"], "upstream_response_too_large")
        st, hdrs, body = http_request(gw.port, "HEAD", "/buf/bytes/100")
        self.assertEqual((st, body), (200, b""))
        # Without buffer_response the body streams and res:body() says so.
        st, hdrs, body = http_request(gw.port, "GET", "/stream/bytes/10")
        h = {k.lower(): v for k, v in hdrs}
        self.assertEqual(body, pattern_bytes(10))
        self.assertTrue(h["x-body"].startswith("nil / not buffered"), h["x-body"])

    def test_bad_hook_config(self):
        p = self.write_hooks()
        d = os.path.dirname(p)
        cfg = os.path.join(d, "gateway.lua")
        with open(cfg, "w") as f:
            f.write("return { upstreams = { u = { backends = { 'http://127.0.0.1:1' } } },\n"
                    " routes = { { upstream = 'u',\n on_request = 'not a function' } } }\n")
        p = subprocess.run([PGW_BIN, "-t", cfg], capture_output=True, timeout=10)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(":3: routes[1].on_request: expected function, got string", p.stderr.decode())


COUNTING_STRATEGY = """{
  name = "pending_first",
  -- the first backend while nothing is pending, else the second: a count that an outcome the
  -- strategy never hears about would leave raised for good
  pick = function(backends, req, state)
    state.pending = (state.pending or 0) + 1
    return state.pending == 1 and backends[1] or backends[2]
  end,
  on_result = function(backend, result, state)
    state.pending = state.pending - 1
  end,
}"""


class LuaStrategyResultTest(GwTestCase):

    def test_client_abort_reaches_on_result(self):
        # A client that leaves before the response head ends the attempt, for the strategy, as
        # a cancelled one (status 0, ok false), as a lost hedge race does.
        eof = threading.Event()

        def slow_first(conn):
            while True:
                req = conn.read_request()
                if req.target == "/hang":
                    conn.wait_eof(20)
                    eof.set()
                    return
                conn.respond(200, b"b1")

        b1 = self.raw_server(slow_first)
        b2 = self.raw_server(keepalive_handler(lambda conn, req: conn.respond(200, b"b2")))
        gw = self.gateway(basic_config(
            upstreams={"u": {"backends": [b1.url, b2.url], "strategy": Lua(COUNTING_STRATEGY)}},
            routes=[{"match": {"path_prefix": "/"}, "upstream": "u"}]))
        c = Client(gw.port)
        c.request("GET", "/hang")
        self.assertTrue(b1.wait_requests(1))
        c.close()
        self.assertTrue(eof.wait(10), "the gateway kept the abandoned request open")
        st, _, body = http_request(gw.port, "GET", "/ok")
        self.assertEqual((st, body), (200, b"b1"))  # nothing pending: the abort was reported
        st, _, body = http_request(gw.port, "GET", "/ok")
        self.assertEqual((st, body), (200, b"b1"))


if __name__ == "__main__":
    main()
