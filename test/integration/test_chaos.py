#!/usr/bin/env python3
"""Chaos, bounded in time (reloads under load are in test_reload.py):

- a backend killed with SIGKILL under load, then restarted on its port: idempotent requests see
  no error (retried on the other backend), and the restarted one gets traffic again;
- slowloris bursts, thousands of connections that send part of a head or nothing at all: every
  one is closed by header_ms (timed from accept), the gateway keeps serving meanwhile, and its
  fds and RSS come back to where they were.
"""

import os
import resource
import selectors
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403

HEADER_MS = 1000


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need and (hard == resource.RLIM_INFINITY or hard >= need):
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= need


class ChaosTest(GwTestCase):

    def test_backend_sigkill_under_load(self):
        b1, b2 = self.backend("b1", ["--service-ms", "2"]), self.backend("b2", ["--service-ms", "2"])
        port1 = b1.port
        gw = self.gateway(basic_config(
            upstreams={"u": upstream_cfg(b1.url, b2.url, strategy="round_robin")},
            routes=[{"match": {"path_prefix": "/"}, "upstream": "u"}], workers=2))
        with Load(gw.port, keepalive=3, fresh=1) as load:
            time.sleep(0.5)
            before = load.backends.get("b1", 0)
            self.assertGreater(before, 0, "b1 got no traffic before the kill: %r" % load.backends)
            b1.proc.send_signal(signal.SIGKILL)
            b1.proc.wait()
            time.sleep(0.7)
            b1 = self.backend("b1", ["--service-ms", "2"], port=port1)
            # Back in rotation once its ejection (eject_ms 1000 at most twice over) has run out.
            at_restart = load.backends.get("b1", 0)
            back = wait_until(lambda: load.backends.get("b1", 0) > at_restart + 20, 5.0)
        self.assertEqual(load.errors, [], "idempotent requests failed when a backend died")
        self.assertTrue(back, "the restarted backend got no traffic: %r" % load.backends)
        self.assertGreater(load.counts["keepalive"], 200, load.counts)
        self.assertGreater(load.counts["fresh"], 50, load.counts)

    def test_slowloris_bursts(self):
        n, rounds = 2000, 3
        if not raise_fd_limit(n + 512):
            self.skipTest("open-file limit below %d" % (n + 512))
        b1 = self.backend("b1")
        gw = self.gateway(basic_config(
            upstreams={"u": upstream_cfg(b1.url)},
            routes=[{"match": {"path_prefix": "/"}, "upstream": "u"}], workers=1,
            limits={"connections": 4 * n}, timeouts={"header_ms": HEADER_MS}))
        self.assertEqual(get(gw.port, "/x")[0], 200)
        time.sleep(0.3)
        fds0, rss0 = fd_count(gw.pid), gw.rss_kb()
        for r in range(rounds):
            socks = []
            self.addCleanup(lambda socks=socks: [s.close() for s in socks])
            t0 = time.monotonic()
            for i in range(n):
                s = socket.create_connection((HOST, gw.port))
                if i % 4:  # a quarter send nothing at all
                    s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * (i % 300))
                socks.append(s)
            opened = time.monotonic() - t0
            # The gateway still serves while they are held.
            self.assertEqual(get(gw.port, "/x", timeout=5)[0], 200)
            # Every one is closed (408 or plain close) by header_ms after its accept.
            sel = selectors.DefaultSelector()
            for s in socks:
                sel.register(s, selectors.EVENT_READ)
            left = n
            deadline = t0 + opened + HEADER_MS / 1000 + 2.0
            while left and time.monotonic() < deadline:
                for key, _ in sel.select(0.2):
                    try:
                        data = key.fileobj.recv(4096)
                    except OSError:
                        data = b""
                    if data == b"" or data.startswith(b"HTTP/1.1 408"):
                        sel.unregister(key.fileobj)
                        left -= 1
            closed_after = time.monotonic() - t0
            sel.close()
            for s in socks:
                s.close()
            self.assertEqual(left, 0, "round %d: %d of %d connections still open %.1fs "
                             "after the first accept (header_ms %d)"
                             % (r, left, n, closed_after, HEADER_MS))
            self.assertTrue(wait_until(lambda: fd_count(gw.pid) <= fds0, 2.0),
                            "round %d: %d fds, %d before" % (r, fd_count(gw.pid), fds0))
        self.assertEqual(get(gw.port, "/x")[0], 200)
        if binary_has_asan(PGW_BIN):
            return  # ASan's allocator and quarantine make RSS meaningless
        # The workers give back what the bursts needed (a second after the drop).
        ok = wait_until(lambda: gw.rss_kb() <= rss0 + 10 * 1024, 4.0, step=0.2)
        self.assertTrue(ok, "RSS %d KiB after %d bursts of %d connections, %d KiB before"
                        % (gw.rss_kb(), rounds, n, rss0))


if __name__ == "__main__":
    main()
