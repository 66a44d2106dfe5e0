#!/usr/bin/env python3
"""Per-request Lua state ends with its request, and every request leaves one trace.

Hooks mark req.ctx with the request's id and a few KB that belong to it alone; on_log counts
what it sees. Hundreds of requests are then aborted mid-flight with raw sockets (before the
response head, with a body half sent, in the middle of a large body), and the test checks that:
new requests see a fresh ctx; each aborted request ran on_log once, has one access-log line (499,
or the status that was sent with the bytes that went out) and is counted in gw_requests_total;
and the Lua heap (gw_lua_memory_bytes, after a full collection) stays flat. A second test runs the
other end paths once each (hook error, upstream timeout, client send timeout, a drain that runs
out at a reload) and checks each request is logged and given to on_log exactly once."""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403
from test_reload import post  # noqa: E402

BIG = 50 * 1000 * 1000

PRELUDE = r'''
local stats = { requests = 0, stale = 0, logs = 0, log_ctx = 0, by_status = {} }
local function mark(req)
    stats.requests = stats.requests + 1
    if next(req.ctx) ~= nil then stats.stale = stats.stale + 1 end
    req:set_header("X-Ctx-Before", tostring(req.ctx.mark))
    req.ctx.mark = req:id()
    -- 32 KB that belong to this request only: a ctx that outlives it shows in the heap.
    req.ctx.blob = string.rep(req:id(), 1000)
    if req:header("x-explode") then error("hook exploded") end
end
local function on_log(res)
    stats.logs = stats.logs + 1
    local s = res:status()
    stats.by_status[s] = (stats.by_status[s] or 0) + 1
    if res.ctx.mark then stats.log_ctx = stats.log_ctx + 1 end
    gw.log.info("on_log status=" .. s .. " mark=" .. tostring(res.ctx.mark))
end
local function report(req)
    collectgarbage("collect")
    collectgarbage("collect")
    local by = {}
    for k, v in pairs(stats.by_status) do by[tostring(k)] = v end
    return 200, { requests = stats.requests, stale = stats.stale, logs = stats.logs,
                  log_ctx = stats.log_ctx, by_status = by, kb = collectgarbage("count") }
end
'''


def routes():
    return [
        {"name": "stats", "match": {"path_prefix": "/_stats"}, "respond": {"status": 204},
         "on_request": Lua("report")},
        {"name": "app-cut", "match": {"path_prefix": "/cut"}, "upstream": "cut",
         "on_request": Lua("mark"), "on_log": Lua("on_log")},
        {"name": "app", "match": {"path_prefix": "/"}, "upstream": "u",
         "on_request": Lua("mark"), "on_log": Lua("on_log")},
    ]


def cut_short(conn):
    """A backend that dies in the middle of its response body."""
    conn.read_request()
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 30000)


def rst_close(sock):
    """Close with a reset (SO_LINGER 0), as a client that gives up abruptly does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class LuaCtxTest(GwTestCase):
    TEST_TIMEOUT = 180

    def start(self, upstream=None, **cfg):
        self.b = self.backend("b1")
        cut = self.raw_server(cut_short)
        config = basic_config(
            upstreams={"u": upstream_cfg(self.b.url, retries={"max": 0}, **(upstream or {})),
                       "cut": upstream_cfg(cut.url, retries={"max": 0})},
            routes=routes(), workers=1, **cfg)
        self.gw = self.gateway(config, prelude=PRELUDE)
        return self.gw

    def stats(self):
        st, _, body = get(self.gw.port, "/_stats")
        self.assertEqual(st, 200, body)
        return json.loads(body)

    def heap(self):
        """(the Lua heap after a full collection as /_stats reports it, gw_lua_memory_bytes)."""
        kb = self.stats()["kb"]
        return kb * 1024, self.gw.metric("gw_lua_memory_bytes", worker="0")

    def wait_stats(self, key, n, timeout=20.0):
        s = wait_until(lambda: (lambda j: j if j[key] >= n else None)(self.stats()), timeout, 0.05)
        self.assertTrue(s, "stats[%s] did not reach %d: %s" % (key, n, self.stats()))
        return s

    def app_lines(self):
        out = []
        for line in self.gw.access_log_lines():
            e = json.loads(line)
            if e["route"].startswith("app"):
                out.append(e)
        return out

    def abort_batch(self, n, kind):
        """n requests held by the backend (/delay), aborted before the response head: "fin"
        closes, "rst" resets, "body" sends half its body first, then resets."""
        before = self.stats()["requests"]
        socks = []
        for i in range(n):
            s = socket.create_connection((HOST, self.gw.port))
            if kind == "body":
                s.sendall(b"POST /delay/20000 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                          + b"x" * 400)
            else:
                s.sendall(b"GET /delay/20000 HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        self.wait_stats("requests", before + n)
        # Every one is in flight to the backend (with its 400 body bytes, which go as soon as
        # the head is written), so the aborts cut real upstream exchanges.
        self.assertTrue(wait_until(
            lambda: self.gw.metric("gw_upstream_in_flight", backend=self.b.url) == n, 20),
            self.gw.metrics())
        for s in socks:
            if kind == "fin":
                s.close()
            else:
                rst_close(s)

    def abort_mid_body(self, n):
        """n large downloads, each reset after its head and at least 256 KB of body."""
        for _ in range(n):
            c = Client(self.gw.port)
            c.request("GET", "/bytes/%d" % BIG)
            head = c.read_until(b"\r\n\r\n")
            self.assertIn(b" 200 ", head.split(b"\r\n")[0])
            got = len(c.buf)
            while got < 256 * 1024:
                data = c._recv(5)
                self.assertTrue(data, "closed mid-body")
                got += len(data)
            rst_close(c.sock)

    def fresh_requests(self, n):
        for _ in range(n):
            st, _, body = get(self.gw.port, "/headers")
            self.assertEqual(st, 200, body)
            self.assertEqual(json.loads(body)["headers"]["x-ctx-before"], "nil")

    def test_aborted_requests_end_their_lua_state_and_are_logged(self):
        gw = self.start()
        # Warm-up: one round of everything, so JIT traces and interned strings are in place
        # before the heap is measured.
        self.abort_batch(20, "rst")
        self.abort_mid_body(2)
        self.fresh_requests(5)
        warm = 20 + 2 + 5
        self.wait_stats("logs", warm)
        base_heap, base_metric = self.heap()
        self.assertGreater(base_metric, 0)
        # The gauge is what the worker published at the end of the /_stats request, right after
        # its full collection: the same heap, give or take that request's own garbage.
        self.assertLess(abs(base_metric - base_heap), 64 * 1024, (base_metric, base_heap))

        aborted = 0
        for kind in ("fin", "rst", "body", "fin", "rst", "body"):
            self.abort_batch(50, kind)
            aborted += 50
        self.abort_mid_body(20)
        self.fresh_requests(50)
        total = warm + aborted + 20 + 50
        s = self.wait_stats("logs", total)

        # A fresh ctx for every request: none saw another request's mark.
        self.assertEqual(s["stale"], 0, s)
        # on_log ran once for each, with its own ctx, and saw 499 for the aborted ones.
        self.assertEqual(s["requests"], total, s)
        self.assertEqual(s["logs"], total, s)
        self.assertEqual(s["log_ctx"], total, s)
        self.assertEqual(s["by_status"].get("499"), 20 + aborted, s)
        self.assertEqual(s["by_status"].get("200"), 2 + 5 + 20 + 50, s)

        # The Lua heap is flat: 320 leaked contexts would be over 10 MB.
        heap, metric = self.heap()
        self.assertLess(heap - base_heap, 256 * 1024, (base_heap, heap))
        self.assertLess(metric - base_metric, 256 * 1024, (base_metric, metric))

        # One access-log line per request, 499 for the aborted ones (nothing was sent), the
        # status that was sent for the interrupted downloads, with the bytes that went out.
        lines = wait_until(lambda: (lambda l: l if len(l) >= total else None)(self.app_lines()), 5)
        self.assertTrue(lines, "%d app lines, want %d" % (len(self.app_lines()), total))
        self.assertEqual(len(lines), total)
        self.assertEqual(len({e["request_id"] for e in lines}), total)
        l499 = [e for e in lines if e["status"] == 499]
        self.assertEqual(len(l499), 20 + aborted)
        for e in l499:
            self.assertEqual(e["bytes_out"], 0, e)
            self.assertTrue(e["target"].startswith("/delay/"), e)
            self.assertEqual(e["backend"], self.b.url, e)
        self.assertEqual(sum(1 for e in l499 if e["method"] == "POST" and e["bytes_in"] == 400),
                         100, l499[:3])
        cut = [e for e in lines if e["target"].startswith("/bytes/")]
        self.assertEqual(len(cut), 22)
        for e in cut:
            self.assertEqual(e["status"], 200, e)
            self.assertGreater(e["bytes_out"], 256 * 1024, e)
            self.assertLess(e["bytes_out"], BIG, e)

        # gw_requests_total counted them.
        text = gw.metrics()
        self.assertEqual(metric_value(text, "gw_requests_total", route="app", code="4xx"),
                         20 + aborted, text)
        self.assertEqual(metric_value(text, "gw_requests_total", route="app", code="2xx"),
                         2 + 5 + 20 + 50, text)
        # The backend saw every upstream connection of an aborted request close.
        self.assertEqual(wait_until(lambda: metric_value(gw.metrics(), "gw_upstream_in_flight") == 0,
                                    5), True)
        # The exposition with the Lua families still passes promtool.
        promtool = shutil.which("promtool")
        if promtool:
            p = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                               capture_output=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stdout.decode() + p.stderr.decode())

    def test_every_end_path_logs_once(self):
        gw = self.start(upstream={"timeouts": {"read_ms": 4000}},
                        timeouts={"send_ms": 300, "drain_ms": 600})

        def rid(tag):
            return {"X-Request-Id": tag}

        # A hook error: 500.
        st, _, _ = http_request(gw.port, "GET", "/headers", headers=dict(rid("hookerr"),
                                                                        **{"X-Explode": "1"}))
        self.assertEqual(st, 500)
        # A backend that fails in the middle of the body: the status it had sent, and the
        # bytes that went out.
        c = Client(gw.port)
        c.request("GET", "/cut", headers=rid("upcut"))
        data = c.read_until_close(5)
        self.assertIn(b" 200 ", data[:20])
        c.close()
        # An upstream timeout: 504.
        st, _, _ = http_request(gw.port, "GET", "/delay/20000", headers=rid("uptimeout"))
        self.assertEqual(st, 504)
        # A client that stops reading a large response: the send timeout closes it.
        c = Client(gw.port, rcvbuf=4096)
        c.request("GET", "/bytes/%d" % BIG, headers=rid("sendtimeout"))
        self.wait_stats("logs", 4)
        c.close()
        # A reload while two requests wait for the backend: the old worker's drain runs out
        # (drain_ms 600 < the backend's 3 s < read_ms) and gives up on them: 503, not the
        # client's doing.
        held = []
        for tag in ("drain1", "drain2"):
            s = socket.create_connection((HOST, gw.port))
            s.sendall(("GET /delay/3000 HTTP/1.1\r\nHost: x\r\nX-Request-Id: %s\r\n\r\n"
                       % rid(tag)["X-Request-Id"]).encode())
            held.append(s)
        self.wait_stats("requests", 6)
        st, _, body = post(gw.admin_port, "/reload")
        self.assertEqual(st, 200, body)
        for s in held:
            s.settimeout(5)
            self.assertEqual(s.recv(100), b"")  # closed without an answer
            s.close()
        # A client that gives up in the middle of its request head: 400, as nginx logs it. One
        # that sent nothing but blank lines (which a server ignores before a request) sent no
        # request: no line.
        s = socket.create_connection((HOST, gw.port))
        s.sendall(b"GET /partial HTTP/1.1\r\nHost: x\r\nX-Request-Id: partialhead\r\nX-Fo")
        time.sleep(0.1)
        s.close()
        s = socket.create_connection((HOST, gw.port))
        s.sendall(b"\r\n\r\n")
        time.sleep(0.1)
        s.close()
        # One answered request on the new workers, which start with fresh Lua state.
        st, _, _ = http_request(gw.port, "GET", "/headers", headers=rid("after"))
        self.assertEqual(st, 200)

        want = {"hookerr": 500, "upcut": 200, "uptimeout": 504, "sendtimeout": 200,
                "drain1": 503, "drain2": 503, "after": 200}

        def by_id():
            got = {}
            for e in self.app_lines():
                got.setdefault(e["request_id"], []).append(e)
            return got if all(k in got for k in want) else None

        got = wait_until(by_id, 5)
        self.assertTrue(got, self.gw.access_log_lines())
        for tag, status in want.items():
            self.assertEqual(len(got[tag]), 1, got[tag])
            self.assertEqual(got[tag][0]["status"], status, got[tag])
        self.assertEqual(len(self.app_lines()), len(want))
        others = [json.loads(l) for l in gw.access_log_lines()]
        others = [e for e in others if not e["route"].startswith("app") and e["route"] != "stats"]
        self.assertEqual([(e["request_id"], e["status"], e["target"]) for e in others],
                         [("partialhead", 400, "/partial")])
        self.assertGreater(got["upcut"][0]["bytes_out"], 30000)
        self.assertLess(got["upcut"][0]["bytes_out"], 100000)
        self.assertGreater(got["sendtimeout"][0]["bytes_out"], 0)
        self.assertLess(got["sendtimeout"][0]["bytes_out"], BIG)
        # on_log ran once for each of them (the drained ones in the old worker's Lua state).
        err = gw.stderr()
        for tag, status in want.items():
            self.assertEqual(err.count("on_log status=%d mark=%s\n" % (status, tag)), 1,
                             (tag, [l for l in err.splitlines() if "on_log" in l]))


if __name__ == "__main__":
    main()
