#!/usr/bin/env python3
"""Graceful drain on SIGTERM: in-flight requests finish, the listener closes,
the process exits 0 within timeouts.drain_ms."""

import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403

DRAIN_MS = 3000


class DrainTest(GwTestCase):

    def start(self, workers=1):
        b = self.backend("slow")
        gw = self.gateway(basic_config(
            upstreams={"b": upstream_cfg(b.url)},
            routes=[{"match": {"path_prefix": "/"}, "upstream": "b"}],
            workers=workers,
            timeouts={"drain_ms": DRAIN_MS}))
        return gw

    def _drain(self, workers):
        gw = self.start(workers)
        results = {}

        def inflight():
            try:
                with gw.client(timeout=10) as c:
                    c.request("GET", "/delay/1000")
                    results["r"] = c.read_response(timeout=10)
            except Exception as e:  # noqa: BLE001
                results["e"] = e

        t = threading.Thread(target=inflight, daemon=True)
        t.start()
        time.sleep(0.2)
        t_sig = time.monotonic()
        gw.signal(signal.SIGTERM)
        # New connections are refused soon after the signal.
        refused_at = None
        while time.monotonic() - t_sig < 2.0:
            if not port_open(gw.port, timeout=0.2):
                refused_at = time.monotonic() - t_sig
                break
            time.sleep(0.02)
        t.join(10)
        try:
            rc = gw.proc.wait(timeout=DRAIN_MS / 1000 + 5)
        except subprocess.TimeoutExpired:
            rc = None
        exited_at = time.monotonic() - t_sig
        gw.stopped = True
        gw.kill()
        self.assertNotIn("e", results, "in-flight request failed during drain: %r" % results.get("e"))
        r = results["r"]
        self.assertEqual(r.status, 200, r)
        self.assertIsNotNone(refused_at, "listener still accepting 2 s after SIGTERM")
        self.assertLess(refused_at, 0.7, "listener closed only %.2fs after SIGTERM" % refused_at)
        self.assertIsNotNone(rc, "gateway still running %.1fs after SIGTERM" % exited_at)
        gw.check_exit(rc)
        self.assertLess(exited_at, DRAIN_MS / 1000 + 0.5,
                        "exit took %.2fs, drain_ms is %d" % (exited_at, DRAIN_MS))
        self.assertGreaterEqual(exited_at, 0.7, "exited before the in-flight request could finish")

    def test_drain_inflight_completes(self):
        self._drain(1)

    def test_drain_two_workers(self):
        self._drain(2)

    def test_idle_exit_is_quick(self):
        gw = self.start()
        with gw.client() as c:  # an idle keep-alive connection must not hold up the exit
            c.request("GET", "/bytes/10")
            self.assertEqual(c.read_response().status, 200)
            t0 = time.monotonic()
            gw.signal(signal.SIGTERM)
            rc = gw.proc.wait(timeout=DRAIN_MS / 1000 + 5)
            elapsed = time.monotonic() - t0
        gw.stopped = True
        gw.check_exit(rc)
        self.assertLess(elapsed, DRAIN_MS / 1000 + 0.5)


if __name__ == "__main__":
    main()
