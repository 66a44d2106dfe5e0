#!/usr/bin/env python3
"""Strict request parsing: ambiguous or malformed framing and headers get a 400
and the connection is closed, and nothing pipelined after the bad request is
ever processed. Limits: 431, 414, 413 (before contacting the upstream, no 100
Continue), 505 for unsupported HTTP versions."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403

CANARY = b"GET /pipelined-after-bad HTTP/1.1\r\nHost: x\r\n\r\n"


class FramingTest(RawBackendTestCase):
    GW_OPTIONS = {"limits": {"header_bytes": 4096, "uri_bytes": 1024, "headers": 20,
                             "body_bytes": 1000}}

    def backend_saw(self):
        return self.py.requests[self.before:]

    def rejected(self, raw, status=400, head_may_reach_backend=False):
        """Send raw + a pipelined canary; expect `status` (JSON), then close, and
        the backend never sees the canary (nor the bad request, unless allowed)."""
        with self.gw.client() as c:
            c.send(raw + CANARY)
            try:
                r = c.read_response()
            except ConnectionClosed as e:
                self.fail("connection closed without a %d response (got %r)" % (status, e.partial))
            self.assertJsonError(r, status)
            self.assertTrue(c.wait_closed(3), "connection not closed after %d" % status)
        time.sleep(0.3)
        saw = self.backend_saw()
        self.assertFalse(any("pipelined-after-bad" in q.target for q in saw),
                         "request pipelined after the bad one was processed: %r" % saw)
        if not head_may_reach_backend:
            self.assertEqual(saw, [], "backend saw requests: %r" % saw)
        return r

    # --- ambiguous framing ---------------------------------------------------

    def test_content_length_and_transfer_encoding(self):
        self.rejected(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")

    def test_transfer_encoding_and_content_length(self):
        self.rejected(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      b"Content-Length: 5\r\n\r\nhello")

    def test_differing_content_lengths(self):
        self.rejected(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")

    def test_content_length_list_differing(self):
        self.rejected(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!")

    def test_bad_content_length(self):
        self.rejected(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello")

    def test_negative_content_length(self):
        self.rejected(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")

    def test_transfer_encoding_not_chunked(self):
        self.rejected(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello")

    def test_transfer_encoding_chunked_not_final(self):
        self.rejected(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n")

    def test_invalid_chunk_size(self):
        # The head is valid, so the gateway may already have started the upstream request.
        self.rejected(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\nhello\r\n0\r\n\r\n", head_may_reach_backend=True)

    def test_chunk_size_overflow(self):
        self.rejected(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", head_may_reach_backend=True)

    # --- malformed heads ---------------------------------------------------------

    def test_nul_in_header_value(self):
        self.rejected(b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n")

    def test_bare_cr_in_header_value(self):
        self.rejected(b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n")

    def test_obs_fold(self):
        self.rejected(b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n")

    def test_invalid_header_name_char(self):
        self.rejected(b"GET /a HTTP/1.1\r\nHost: x\r\nBad{Name: v\r\n\r\n")

    def test_space_before_colon(self):
        self.rejected(b"GET /a HTTP/1.1\r\nHost: x\r\nX-A : v\r\n\r\n")

    def test_missing_host_http11(self):
        self.rejected(b"GET /a HTTP/1.1\r\nX-A: v\r\n\r\n")

    def test_two_host_headers(self):
        self.rejected(b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")

    def test_garbage_request_line(self):
        self.rejected(b"THIS IS NOT HTTP\r\n\r\n")

    # --- limits ------------------------------------------------------------------

    def test_headers_too_large_431(self):
        big = b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 900) for i in range(8))
        self.rejected(b"GET /a HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n", status=431)

    def test_too_many_headers_431(self):
        many = b"".join(b"X-H-%d: v\r\n" % i for i in range(40))
        self.rejected(b"GET /a HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n", status=431)

    def test_uri_too_long_414(self):
        self.rejected(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", status=414)

    def test_under_limits_ok(self):
        hs = b"".join(b"X-H-%d: %s\r\n" % (i, b"v" * 100) for i in range(10))
        with self.gw.client() as c:
            c.send(b"GET /" + b"a" * 900 + b" HTTP/1.1\r\nHost: x\r\n" + hs + b"\r\n")
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        body = b"b" * 1000
        with self.gw.client() as c:
            c.request("POST", "/exact-limit", body=body)
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body_bytes"], 1000)

    def test_body_too_large_413(self):
        self.rejected(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + b"z" * 2000, status=413)

    def test_body_too_large_413_no_100_continue(self):
        with self.gw.client() as c:
            c.send(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n")
            r = c.read_interim_or_final(timeout=5)
            self.assertNotEqual(r.status, 100, "100 Continue sent for a body over the limit")
            self.assertJsonError(r, 413)
        time.sleep(0.3)
        self.assertEqual(self.backend_saw(), [])

    def test_chunked_body_too_large_413(self):
        with self.gw.client() as c:
            c.send(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"q" * 3000, 500))
            try:
                r = c.read_response()
            except ConnectionClosed as e:
                self.fail("closed without a 413 (got %r)" % e.partial)
            self.assertJsonError(r, 413)
        time.sleep(0.2)
        self.assertFalse(any(len(q.body) > 1000 for q in self.backend_saw()))

    def test_http2_request_line_505(self):
        self.rejected(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", status=505)

    def test_http37_request_line_505(self):
        self.rejected(b"GET / HTTP/3.7\r\nHost: x\r\n\r\n", status=505)


if __name__ == "__main__":
    main()
