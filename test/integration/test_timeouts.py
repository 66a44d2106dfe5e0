#!/usr/bin/env python3
"""Downstream timeouts: header_ms (408), body_ms (total, not idle), keepalive_ms."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403

HEADER_MS = 300
BODY_MS = 1000
KEEPALIVE_MS = 500


class TimeoutsTest(RawBackendTestCase):
    GW_OPTIONS = {"timeouts": {"header_ms": HEADER_MS, "body_ms": BODY_MS,
                               "keepalive_ms": KEEPALIVE_MS, "send_ms": 5000, "drain_ms": 2000}}

    def test_half_head_408(self):
        with self.gw.client() as c:
            t0 = time.monotonic()
            c.send(b"GET /slow-head HTTP/1.1\r\nHost: x\r\nX-Partial: ")
            r = c.read_response(timeout=5)
            elapsed = time.monotonic() - t0
            self.assertJsonError(r, 408)
            self.assertTrue(c.wait_closed(2), "connection not closed after 408")
        self.assertGreaterEqual(elapsed, HEADER_MS / 1000 * 0.8)
        self.assertLess(elapsed, HEADER_MS / 1000 + 2.0)

    def test_trickled_head_still_408(self):
        """header_ms bounds the whole head, not the gap between bytes."""
        head = b"GET /trickle-head HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 200
        with self.gw.client() as c:
            t0 = time.monotonic()
            got = None
            for i in range(len(head)):
                try:
                    c.send(head[i:i + 1])
                except OSError:
                    break
                r, _, _ = select.select([c.sock], [], [], 0.05)
                if r:
                    break
                if time.monotonic() - t0 > 4:
                    break
            try:
                got = c.read_response(timeout=3)
            except (ConnectionClosed, OSError):
                got = None
            elapsed = time.monotonic() - t0
        if got is not None:
            self.assertJsonError(got, 408)
        self.assertLess(elapsed, HEADER_MS / 1000 + 2.0, "head trickle was not cut off by header_ms")

    def test_trickled_body_cut_off(self):
        with self.gw.client() as c:
            c.send(b"POST /trickle-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            t0 = time.monotonic()
            stop = threading.Event()

            def trickle():
                for _ in range(100):
                    if stop.wait(0.1):
                        return
                    try:
                        c.sock.send(b"x")
                    except OSError:
                        return

            t = threading.Thread(target=trickle, daemon=True)
            t.start()
            status = None
            try:
                r = c.read_response(timeout=8)
                status = r.status
            except (ConnectionClosed, OSError):
                pass
            elapsed = time.monotonic() - t0
            stop.set()
            t.join()
        self.assertIn(status, (None, 408), "trickled body was not cut off (got %s after %.2fs)" % (status, elapsed))
        self.assertGreaterEqual(elapsed, BODY_MS / 1000 * 0.8)
        self.assertLess(elapsed, BODY_MS / 1000 + 2.0,
                        "body_ms is a total budget: a 100-byte body at 10 B/s must be cut off at ~%d ms"
                        % BODY_MS)

    def test_idle_keepalive_closed(self):
        with self.gw.client() as c:
            c.request("GET", "/ka")
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            t0 = time.monotonic()
            rest = c.read_until_close(timeout=KEEPALIVE_MS / 1000 + 3)
            elapsed = time.monotonic() - t0
        self.assertTrue(rest == b"" or rest.startswith(b"HTTP/1.1 408"), rest[:200])
        self.assertGreaterEqual(elapsed, KEEPALIVE_MS / 1000 * 0.8)
        self.assertLess(elapsed, KEEPALIVE_MS / 1000 + 2.0)

    def test_keepalive_timer_reset_by_activity(self):
        """Requests spaced below keepalive_ms keep the connection alive past it."""
        with self.gw.client() as c:
            for i in range(4):
                c.request("GET", "/ka-%d" % i)
                self.assertEqual(c.read_response().status, 200)
                time.sleep(KEEPALIVE_MS / 1000 * 0.5)
            c.request("GET", "/ka-last")
            self.assertEqual(c.read_response().status, 200)

    def test_fresh_idle_connection_closed(self):
        with self.gw.client() as c:
            t0 = time.monotonic()
            rest = c.read_until_close(timeout=5)
            elapsed = time.monotonic() - t0
        self.assertTrue(rest == b"" or rest.startswith(b"HTTP/1.1 408"), rest[:200])
        self.assertLess(elapsed, max(HEADER_MS, KEEPALIVE_MS) / 1000 + 2.0)


class FirstRequestTimeoutTest(RawBackendTestCase):
    """A connection's first request head is timed by header_ms from accept; keepalive_ms (much
    longer here) is only the wait between requests."""

    HEADER_MS = 600
    KEEPALIVE_MS = 10000
    GW_OPTIONS = {"timeouts": {"header_ms": HEADER_MS, "keepalive_ms": KEEPALIVE_MS}}

    def test_silent_connection_closed_at_header_ms(self):
        with self.gw.client() as c:
            t0 = time.monotonic()
            rest = c.read_until_close(timeout=5)
            elapsed = time.monotonic() - t0
        self.assertTrue(rest == b"" or rest.startswith(b"HTTP/1.1 408"), rest[:200])
        self.assertGreaterEqual(elapsed, self.HEADER_MS / 1000 * 0.8)
        self.assertLess(elapsed, self.HEADER_MS / 1000 + 1.5,
                        "a connection that sends nothing was kept %.2fs (header_ms %d, keepalive_ms %d)"
                        % (elapsed, self.HEADER_MS, self.KEEPALIVE_MS))

    def test_late_first_byte_does_not_restart_the_clock(self):
        with self.gw.client() as c:
            t0 = time.monotonic()
            time.sleep(self.HEADER_MS / 1000 * 0.8)
            c.send(b"GET /late HTTP/1.1\r\nHost: x\r\n")
            try:
                r = c.read_response(timeout=5)
            except (ConnectionClosed, OSError):
                r = None
            elapsed = time.monotonic() - t0
        if r is not None:
            self.assertJsonError(r, 408)
        # From accept it is 1.0 header_ms; from the first byte it would be 0.8 + 1.0.
        self.assertGreaterEqual(elapsed, self.HEADER_MS / 1000 * 0.9)
        self.assertLess(elapsed, self.HEADER_MS / 1000 * 1.4,
                        "the first head was timed from its first byte, not from accept (%.2fs)" % elapsed)

    def test_keepalive_between_requests_is_not_header_ms(self):
        with self.gw.client() as c:
            c.request("GET", "/one")
            self.assertEqual(c.read_response().status, 200)
            time.sleep(self.HEADER_MS / 1000 * 2)
            c.request("GET", "/two")
            self.assertEqual(c.read_response().status, 200)


if __name__ == "__main__":
    main()
