#!/usr/bin/env python3
"""Keep-alive on both sides, HTTP/1.0 clients, Connection: close, pipelining."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403


class KeepAliveTest(GwTestCase):

    def setUp(self):
        super().setUp()
        self.py = self.raw_server(keepalive_handler(json_echo))
        self.b1 = self.backend("b1")
        self.gw = self.gateway(basic_config(
            upstreams={"py": upstream_cfg(self.py.url,
                                          keepalive={"max_idle": 16, "idle_timeout_ms": 60000}),
                       "b": upstream_cfg(self.b1.url)},
            routes=[{"name": "b", "match": {"path_prefix": "/b"}, "upstream": "b", "strip_prefix": True},
                    {"name": "py", "match": {"path_prefix": "/"}, "upstream": "py"}]))

    def test_many_requests_one_connection_upstream_reused(self):
        with self.gw.client() as c:
            for i in range(50):
                c.request("GET", "/seq/%d" % i)
                r = c.read_response()
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()["path"], "/seq/%d" % i)
                self.assertFalse(c.eof)
        self.assertEqual(len(self.py.requests), 50)
        self.assertLessEqual(self.py.accepted, 3,
                             "upstream connections not reused: %d accepted for 50 requests" % self.py.accepted)

    def test_upstream_reused_across_client_connections(self):
        for i in range(20):
            status, _, _ = self.gw.get("/fresh/%d" % i)
            self.assertEqual(status, 200)
        self.assertLessEqual(self.py.accepted, 3,
                             "upstream connections not reused: %d accepted for 20 requests" % self.py.accepted)

    def test_http10_closes(self):
        with self.gw.client() as c:
            c.send(b"GET /ten HTTP/1.0\r\n\r\n")
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["path"], "/ten")
            if r.framing != "close":
                self.assertTrue(c.wait_closed(3), "HTTP/1.0 connection not closed after response")
            self.assertNotEqual(r.framing, "chunked")

    def test_http10_chunked_upstream_not_chunked_downstream(self):
        with self.gw.client() as c:
            c.send(b"GET /b/chunked/10000 HTTP/1.0\r\n\r\n")
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertNotIn("chunked", r.headers.tokens("transfer-encoding"))
            self.assertEqual(r.body, pattern_bytes(10000))

    def test_http10_keepalive(self):
        with self.gw.client() as c:
            c.send(b"GET /ten-ka1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.framing, "length", "keep-alive response to HTTP/1.0 needs Content-Length")
            self.assertIn("keep-alive", r.headers.tokens("connection"))
            c.send(b"GET /ten-ka2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r2 = c.read_response()
            self.assertEqual(r2.status, 200, r2)
            self.assertEqual(r2.json()["path"], "/ten-ka2")

    def test_connection_close_honoured(self):
        with self.gw.client() as c:
            c.request("GET", "/close-me", headers={"Connection": "close"})
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertIn("close", r.headers.tokens("connection"))
            if r.framing != "close":
                self.assertTrue(c.wait_closed(3), "connection not closed after Connection: close")

    def test_pipelined_in_order(self):
        body = b"pipelined body bytes"
        data = (build_request("GET", "/p1", [("Host", "x")]) +
                build_request("POST", "/p2", [("Host", "x"), ("Content-Length", str(len(body)))], body) +
                build_request("GET", "/p3", [("Host", "x")]) +
                build_request("POST", "/p4", [("Host", "x"), ("Transfer-Encoding", "chunked")],
                              chunked(b"chunky" * 50, 7)) +
                build_request("GET", "/p5", [("Host", "x")]))
        with self.gw.client() as c:
            c.send(data)
            rs = [c.read_response() for _ in range(5)]
        paths = [r.json()["path"] for r in rs]
        self.assertEqual(paths, ["/p1", "/p2", "/p3", "/p4", "/p5"])
        self.assertEqual(rs[1].json()["body_bytes"], len(body))
        self.assertEqual(crc_of(rs[1].json()), zlib.crc32(body))
        self.assertEqual(rs[3].json()["body_bytes"], 300)
        self.assertEqual(crc_of(rs[3].json()), zlib.crc32(b"chunky" * 50))
        self.assertEqual(rs[1].json()["method"], "POST")

    def test_pipelined_mixed_routes(self):
        data = (build_request("GET", "/b/bytes/100", [("Host", "x")]) +
                build_request("GET", "/py1", [("Host", "x")]) +
                build_request("HEAD", "/b/bytes/50", [("Host", "x")]) +
                build_request("GET", "/b/chunked/300", [("Host", "x")]) +
                build_request("GET", "/py2", [("Host", "x"), ("Connection", "close")]))
        with self.gw.client() as c:
            c.send(data)
            r1 = c.read_response()
            r2 = c.read_response()
            r3 = c.read_response("HEAD")
            r4 = c.read_response()
            r5 = c.read_response()
            self.assertTrue(c.wait_closed(3) if r5.framing != "close" else True)
        self.assertEqual(r1.body, pattern_bytes(100))
        self.assertEqual(r2.json()["path"], "/py1")
        self.assertEqual(r3.status, 200)
        self.assertEqual(r3.body, b"")
        self.assertEqual(r4.body, pattern_bytes(300))
        self.assertEqual(r5.json()["path"], "/py2")


if __name__ == "__main__":
    main()
