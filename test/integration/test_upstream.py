#!/usr/bin/env python3
"""Upstream failures: refused connections and retries, all backends down, read
timeouts, malformed and ambiguous responses, extra bytes after a response,
non-idempotent requests not retried, client aborts propagated upstream."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403


def dead_url():
    """A loopback URL nothing listens on (connection refused)."""
    return "http://%s:%d" % (HOST, free_port())


def never_answer(conn):
    conn.read_request()
    conn.wait_eof(30)


def bad_status_line(conn):
    conn.read_request()
    conn.send(b"HTTP/1.1 abc Broken\r\nContent-Length: 2\r\n\r\nok")
    conn.wait_eof(5)


def not_http(conn):
    conn.read_request()
    conn.send(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    conn.wait_eof(5)


def cl_and_te(conn):
    conn.read_request()
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n0\r\n\r\n")
    conn.wait_eof(5)


def extra_bytes(conn):
    """First response on each connection carries 5 bytes past its Content-Length;
    later requests on the same connection get a clean response naming the connection."""
    first = True
    while True:
        req = conn.read_request()
        if first:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA")
            first = False
        else:
            body = ("conn=%d" % conn.index).encode()
            conn.respond(200, body)


def read_then_close(conn):
    conn.read_request()
    time.sleep(0.05)
    raise ConnectionClosed("closing without an answer")


class UpstreamTest(GwTestCase):

    def gw_for(self, upstreams, routes=None, **kw):
        if routes is None:
            routes = [{"name": name, "match": {"path_prefix": "/%s/" % name}, "upstream": name}
                      for name in upstreams]
        return self.gateway(basic_config(upstreams=upstreams, routes=routes, **kw))

    def test_connect_refused_retried_on_healthy_backend(self):
        b = self.backend("good")
        gw = self.gw_for({"u": upstream_cfg(dead_url(), b.url, retries={"max": 2, "backoff_ms": 0},
                                            timeouts={"connect_ms": 500, "read_ms": 5000})})
        for i in range(6):
            with gw.client() as c:
                c.request("GET", "/u/r%d" % i)
                r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["backend"], "good")
        m = gw.metrics()
        self.assertGreaterEqual(metric_value(m, "gw_retries_total", upstream="u"), 1, m)
        self.assertGreaterEqual(metric_value(m, "gw_upstream_errors_total", upstream="u", kind="connect"), 1, m)

    def test_all_backends_down_502(self):
        gw = self.gw_for({"u": upstream_cfg(dead_url(), dead_url(), retries={"max": 2, "backoff_ms": 0},
                                            timeouts={"connect_ms": 500})})
        with gw.client() as c:
            c.request("GET", "/u/x")
            r = c.read_response()
            self.assertJsonError(r, 502)
            # A gateway-generated 502 does not have to cost the client its connection.
            if not r.headers.tokens("connection") == ["close"]:
                c.request("GET", "/u/y")
                self.assertJsonError(c.read_response(), 502)

    def test_read_timeout_504(self):
        s = self.raw_server(never_answer)
        gw = self.gw_for({"u": upstream_cfg(s.url, retries={"max": 0, "backoff_ms": 0},
                                            timeouts={"connect_ms": 500, "read_ms": 300})})
        with gw.client() as c:
            t0 = time.monotonic()
            c.request("GET", "/u/slow")
            r = c.read_response(timeout=10)
            elapsed = time.monotonic() - t0
        self.assertJsonError(r, 504)
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 3.0)
        m = gw.metrics()
        self.assertGreaterEqual(metric_value(m, "gw_upstream_errors_total", upstream="u", kind="timeout"), 1, m)
        # The timed-out upstream connection is closed, not returned to the pool.
        self.assertTrue(s.conns[0].eof_event.wait(3), "upstream connection left open after 504")

    def _expect_502(self, handler):
        s = self.raw_server(handler)
        gw = self.gw_for({"u": upstream_cfg(s.url, retries={"max": 0, "backoff_ms": 0},
                                            timeouts={"connect_ms": 500, "read_ms": 3000})})
        with gw.client() as c:
            c.request("GET", "/u/bad")
            r = c.read_response(timeout=10)
        self.assertJsonError(r, 502)
        self.assertNotIn(b"hello", r.body)
        m = gw.metrics()
        self.assertGreaterEqual(metric_value(m, "gw_upstream_errors_total", upstream="u", kind="protocol"), 1, m)
        return gw

    def test_malformed_status_line_502(self):
        self._expect_502(bad_status_line)

    def test_not_http_response_502(self):
        self._expect_502(not_http)

    def test_response_with_cl_and_te_502(self):
        self._expect_502(cl_and_te)

    def test_extra_bytes_after_response_not_reused(self):
        s = self.raw_server(extra_bytes)
        gw = self.gw_for({"u": upstream_cfg(s.url, retries={"max": 0, "backoff_ms": 0})})
        with gw.client() as c:
            c.request("GET", "/u/one")
            r1 = c.read_response()
            self.assertEqual(r1.status, 200, r1)
            self.assertEqual(r1.body, b"hello")
            time.sleep(0.1)
            c.request("GET", "/u/two")
            r2 = c.read_response()
        self.assertEqual(r2.status, 200, r2)
        self.assertEqual(s.requests[1].conn_index, 2,
                         "second request reused the connection that sent bytes past its response")
        self.assertEqual(r2.body, b"hello")  # a fresh connection's first response

    def test_post_not_retried_get_retried(self):
        closer = self.raw_server(read_then_close)
        good = self.raw_server(keepalive_handler(json_echo))
        closer2 = self.raw_server(read_then_close)
        good2 = self.raw_server(keepalive_handler(json_echo))
        retries = {"max": 2, "backoff_ms": 0}
        gw = self.gw_for({"g": upstream_cfg(closer.url, good.url, retries=retries),
                          "p": upstream_cfg(closer2.url, good2.url, retries=retries)})
        # GET: whenever the closer is picked, the request is retried on the good backend.
        for i in range(4):
            with gw.client() as c:
                c.request("GET", "/g/get%d" % i)
                r = c.read_response()
            self.assertEqual(r.status, 200, r)
        self.assertGreaterEqual(len(closer.requests), 1, "round robin never picked the closing backend")
        self.assertEqual(len(good.requests), 4)
        # POST: never retried once its bytes reached a backend.
        statuses = []
        for i in range(4):
            with gw.client() as c:
                c.request("POST", "/p/post%d" % i, body=b"payload-%d" % i)
                r = c.read_response()
            statuses.append(r.status)
            if r.status != 200:
                self.assertJsonError(r, 502)
        n502 = statuses.count(502)
        self.assertGreaterEqual(n502, 1, "round robin never picked the closing backend: %r" % statuses)
        self.assertEqual(statuses.count(200) + n502, 4, statuses)
        self.assertEqual(len(closer2.requests), n502, "POST retried on the closing backend")
        self.assertEqual(len(good2.requests), statuses.count(200), "failed POST was retried on another backend")

    def test_client_abort_while_waiting_closes_upstream(self):
        s = self.raw_server(never_answer)
        gw = self.gw_for({"u": upstream_cfg(s.url, retries={"max": 0, "backoff_ms": 0},
                                            timeouts={"read_ms": 20000})})
        c = gw.client()
        c.request("GET", "/u/abandon")
        self.assertTrue(s.wait_requests(1, 5), "request never reached the backend")
        c.close()
        self.assertTrue(s.conns[0].eof_event.wait(5),
                        "client went away but the gateway kept the upstream connection open")

    def test_client_abort_mid_body_closes_upstream(self):
        def slow_body(conn):
            conn.read_request(read_body=False)
            conn.wait_eof(30)

        s = self.raw_server(slow_body)
        gw = self.gw_for({"u": upstream_cfg(s.url, retries={"max": 0, "backoff_ms": 0},
                                            timeouts={"read_ms": 20000})})
        c = gw.client()
        c.request("POST", "/u/upload", headers={"Content-Length": "100000"})
        c.send(b"x" * 1000)
        # Bodies stream: the upstream sees the head before the body is complete.
        self.assertTrue(s.wait_requests(1, 5), "the gateway held the head until the body ended")
        c.close()
        self.assertTrue(s.conns[0].eof_event.wait(5),
                        "client went away mid-body but the gateway kept the upstream connection open")


if __name__ == "__main__":
    main()
