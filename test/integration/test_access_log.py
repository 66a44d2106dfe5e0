#!/usr/bin/env python3
"""Access log: one JSON object per line with the documented keys; SIGUSR1 reopens it."""

import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403

KEYS = ["time", "request_id", "client", "method", "target", "host", "status", "bytes_in", "bytes_out",
        "duration_ms", "route", "upstream", "upstream_ms", "worker"]


def wait_lines(path, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                lines = [l for l in f.read().splitlines() if l.strip()]
        except FileNotFoundError:
            lines = []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    return lines


class AccessLogTest(GwTestCase):

    def setUp(self):
        super().setUp()
        self.b1 = self.backend("b1")
        self.gw = self.gateway(basic_config(
            upstreams={"u": upstream_cfg(self.b1.url)},
            routes=[{"name": "hello", "match": {"path_prefix": "/hello"},
                     "respond": {"status": 200, "body": "hi\n"}},
                    {"name": "proxied", "match": {"path_prefix": "/p/"}, "upstream": "u"}]))

    def test_lines_are_json_with_keys(self):
        with self.gw.client() as c:
            c.request("POST", "/p/echo?q=1", body=b"0123456789", host="log.example",
                      headers={"X-Request-Id": "log-rid-1"})
            r1 = c.read_response()
            c.request("GET", "/hello")
            r2 = c.read_response()
            c.request("GET", "/missing")
            r3 = c.read_response()
        self.assertEqual((r1.status, r2.status, r3.status), (200, 200, 404))
        lines = wait_lines(self.gw.access_log, 3)
        self.assertEqual(len(lines), 3, lines)
        recs = []
        for line in lines:
            try:
                recs.append(json.loads(line))
            except ValueError:
                self.fail("access log line is not JSON: %r" % line)
        for rec in recs:
            for k in KEYS:
                self.assertIn(k, rec, "key %r missing in %r" % (k, rec))
        a, b, c3 = recs
        self.assertEqual(a["method"], "POST")
        self.assertEqual(a["target"], "/p/echo?q=1")
        self.assertEqual(a["host"], "log.example")
        self.assertEqual(a["status"], 200)
        self.assertEqual(a["request_id"], "log-rid-1")
        self.assertEqual(a["route"], "proxied")
        self.assertEqual(a["upstream"], "u")
        self.assertEqual(a["client"].split(":")[0], "127.0.0.1")
        self.assertGreaterEqual(a["bytes_in"], 10)
        self.assertGreaterEqual(a["bytes_out"], 10)
        self.assertIsInstance(a["duration_ms"], (int, float))
        self.assertIsInstance(a["upstream_ms"], (int, float))
        self.assertEqual(b["route"], "hello")
        self.assertEqual(b["status"], 200)
        self.assertEqual(b["request_id"], r2.header("x-request-id"))
        self.assertEqual(c3["status"], 404)
        self.assertEqual(c3["target"], "/missing")

    def test_sigusr1_reopens(self):
        path = self.gw.access_log
        for i in range(2):
            self.assertEqual(self.gw.get("/hello?before=%d" % i)[0], 200)
        self.assertEqual(len(wait_lines(path, 2)), 2)
        os.rename(path, path + ".1")
        self.gw.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 3
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(3):
            self.assertEqual(self.gw.get("/hello?after=%d" % i)[0], 200)
        new = wait_lines(path, 3)
        self.assertTrue(os.path.exists(path), "no new log file at the old path after SIGUSR1")
        self.assertEqual(len(new), 3, new)
        self.assertTrue(all("after=" in json.loads(l)["target"] for l in new), new)
        old = wait_lines(path + ".1", 2, timeout=0.5)
        self.assertEqual(len(old), 2, old)
        self.assertTrue(all("before=" in json.loads(l)["target"] for l in old), old)
        self.assertIsNone(self.gw.proc.poll(), "gateway died on SIGUSR1")


if __name__ == "__main__":
    main()
