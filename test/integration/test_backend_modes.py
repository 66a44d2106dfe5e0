#!/usr/bin/env python3
"""The example backend's load modes, which the benchmark matrix (bench/prequal-matrix.sh) relies on.

- --concurrency N: N service slots and a FIFO queue; the probe reports queued + in service as RIF.
- --freeze-ms / --freeze-every-ms: nothing answers during a freeze, probes and /health included;
  everything held is answered when it ends.
- --slow-factor / --slow-ms / --slow-every-ms: service times that start in the window are longer;
  probes stay fast.
Windows count from start-up, which is just before the backend prints its port, so a test that
measures from that line is at most a few ms late; the margins below are 100+ ms.
"""

import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403


def timed_get(port, path, out, key, timeout=10):
    """GET path on a new connection; out[key] = (status, seconds from send to full response)."""
    t = time.monotonic()
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        out[key] = (r.status, time.monotonic() - t)
    finally:
        c.close()


def concurrent_gets(port, n, path="/"):
    out = {}
    ts = [threading.Thread(target=timed_get, args=(port, path, out, i)) for i in range(n)]
    for t in ts:
        t.start()
    return out, ts


def probe(port):
    c = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        c.request("GET", "/probe", headers={"Accept": "application/json"})
        r = c.getresponse()
        return json.loads(r.read())
    finally:
        c.close()


class BackendModesTest(GwTestCase):
    TEST_TIMEOUT = 30

    def test_concurrency_one_serves_one_at_a_time(self):
        service = 0.3
        b = self.backend("one", ["--concurrency", "1", "--service-ms", "300"])
        out, ts = concurrent_gets(b.port, 2)
        time.sleep(0.1)
        self.assertEqual(probe(b.port)["rif"], 2, "RIF counts the queued request too")
        for t in ts:
            t.join()
        lat = sorted(v[1] for v in out.values())
        self.assertEqual([v[0] for v in out.values()], [200, 200])
        self.assertGreaterEqual(lat[1], 2 * service - 0.02, "the second waited for the first")
        # the latency a probe reports includes the wait: samples are 300 and 600 ms at RIF 0 and 1
        self.assertGreaterEqual(probe(b.port)["latency_ms"], 300)

    def test_concurrency_n_and_unlimited(self):
        b2 = self.backend("two", ["--concurrency", "2", "--service-ms", "300"])
        bu = self.backend("unlimited", ["--service-ms", "300"])
        out2, ts2 = concurrent_gets(b2.port, 3)
        outu, tsu = concurrent_gets(bu.port, 3)
        for t in ts2 + tsu:
            t.join()
        lat2 = sorted(v[1] for v in out2.values())
        latu = sorted(v[1] for v in outu.values())
        self.assertLess(lat2[1], 0.55, "two slots: two requests served at once")
        self.assertGreaterEqual(lat2[2], 0.58, "the third waited for a slot")
        self.assertLess(latu[2], 0.55, "no --concurrency: all three overlap")

    def test_freeze_answers_nothing_until_it_ends(self):
        b = self.backend("frozen", ["--freeze-ms", "1000", "--freeze-every-ms", "1500",
                                    "--service-ms", "1"])
        t0 = time.monotonic()  # start-up was at most a few ms before this
        time.sleep(0.2)
        t = time.monotonic()
        probe(b.port)
        self.assertLess(time.monotonic() - t, 0.5, "answered before the first freeze")
        time.sleep(max(0.0, t0 + 1.7 - time.monotonic()))  # the freeze is [1.5, 2.5) s
        socks = {}
        for path in ("/probe", "/health", "/"):
            s = socket.create_connection((HOST, b.port), timeout=5)  # the kernel still accepts
            s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
            socks[path] = s
        deadline = t0 + 2.3
        for path, s in socks.items():
            s.settimeout(max(0.01, deadline - time.monotonic()))
            with self.assertRaises(socket.timeout, msg="%s answered during the freeze" % path):
                s.recv(1)
        for path, s in socks.items():
            s.settimeout(1.5)
            head = s.recv(100)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), "%s after the freeze: %r" % (path, head))
            s.close()
        self.assertGreaterEqual(time.monotonic() - t0, 2.3)
        self.assertLess(time.monotonic() - t0, 3.0, "answered when the freeze ended")

    def test_periodic_slowdown(self):
        b = self.backend("flappy", ["--slow-factor", "10", "--slow-ms", "1000",
                                    "--slow-every-ms", "1500", "--service-ms", "50"])
        t0 = time.monotonic()
        time.sleep(0.2)
        out = {}
        timed_get(b.port, "/", out, "before")
        time.sleep(max(0.0, t0 + 1.7 - time.monotonic()))  # the slow window is [1.5, 2.5) s
        t = time.monotonic()
        probe(b.port)
        self.assertLess(time.monotonic() - t, 0.2, "probes stay fast")
        timed_get(b.port, "/", out, "during")
        self.assertLess(out["before"][1], 0.3)
        self.assertGreaterEqual(out["during"][1], 0.45, "10x the 50 ms service time")

    def test_bad_options_are_rejected(self):
        for args, msg in ((["--freeze-ms", "100"], b"go together"),
                          (["--freeze-ms", "100", "--freeze-every-ms", "100"], b"larger"),
                          (["--slow-ms", "10", "--slow-every-ms", "100"], b"--slow-factor"),
                          (["--concurrency", "x"], b"--concurrency")):
            p = subprocess.run([PGW_BACKEND] + args, capture_output=True, timeout=10)
            self.assertEqual(p.returncode, 2, args)
            self.assertIn(msg, p.stderr, args)


if __name__ == "__main__":
    main()
