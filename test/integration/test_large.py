#!/usr/bin/env python3
"""Large bodies with slow peers: the gateway must stream with backpressure, so
its RSS stays bounded while 50 MB flows through, and the bytes are exact.

Under AddressSanitizer the RSS bound is not checked (ASan's quarantine and
shadow memory make RSS meaningless); the bytes still are."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403

SIZE = 50 * 1024 * 1024
RSS_GROWTH_LIMIT_KB = 32 * 1024
ASAN = binary_has_asan(PGW_BIN)


class RssWatcher:
    def __init__(self, pid):
        self.pid = pid
        self.max_kb = rss_kb(pid)
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop_ev.wait(0.02):
            try:
                self.max_kb = max(self.max_kb, rss_kb(self.pid))
            except (OSError, RuntimeError):
                return

    def stop(self):
        self.stop_ev.set()
        self.t.join()
        return self.max_kb


def slow_upload_sink(conn):
    """Reads the request body slowly (64 KiB, then a nap) and answers with its size and CRC."""
    while True:
        req = conn.read_request(read_body=False)
        n = int(req.headers.get("content-length", "0"))
        crc = 0
        got = 0
        if conn.buf:
            take = conn.buf[:n]
            conn.buf = conn.buf[len(take):]
            crc = zlib.crc32(take, crc)
            got += len(take)
        while got < n:
            data = conn.sock.recv(min(65536, n - got))
            if not data:
                return
            crc = zlib.crc32(data, crc)
            got += len(data)
            time.sleep(0.003)
        conn.respond(200, json.dumps({"body_bytes": got, "body_crc32": crc}),
                     {"Content-Type": "application/json"})


class LargeTest(GwTestCase):
    TEST_TIMEOUT = 120

    def idle_rss(self, gw, path):
        # Warm up: one small request through the same route, then let it settle.
        status, _, _ = gw.get(path)
        self.assertEqual(status, 200)
        time.sleep(0.3)
        return gw.rss_kb()

    def check_rss(self, idle, peak, what):
        log("%s: gateway VmRSS idle %d KiB, peak %d KiB (growth %d KiB)%s"
            % (what, idle, peak, peak - idle, " [ASan: bound not checked]" if ASAN else ""))
        if not ASAN:
            self.assertLess(peak - idle, RSS_GROWTH_LIMIT_KB,
                            "%s: gateway RSS grew by %d KiB (idle %d, peak %d): not streaming with backpressure?"
                            % (what, peak - idle, idle, peak))

    def test_50mb_response_to_slow_reader(self):
        b = self.backend("big")
        gw = self.gateway(basic_config(upstreams={"b": upstream_cfg(b.url)},
                                       routes=[{"match": {"path_prefix": "/"}, "upstream": "b"}]))
        idle = self.idle_rss(gw, "/bytes/1000")
        expected = pattern_bytes(SIZE)
        watcher = RssWatcher(gw.pid)
        try:
            c = Client(gw.port, timeout=30, rcvbuf=65536)
            c.fill_delay = 0.004
            with c:
                c.request("GET", "/bytes/%d" % SIZE)
                r = c.read_response(timeout=30)
        finally:
            peak = watcher.stop()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.body), SIZE)
        self.assertTrue(r.body == expected, "50 MB body differs from the pattern")
        self.check_rss(idle, peak, "50 MB download")

    def test_50mb_upload_to_slow_backend(self):
        sink = self.raw_server(slow_upload_sink)
        gw = self.gateway(basic_config(
            upstreams={"s": upstream_cfg(sink.url)},
            routes=[{"match": {"path_prefix": "/"}, "upstream": "s"}],
            limits={"body_bytes": 64 * 1024 * 1024}))
        status, _, body = http_request(gw.port, "POST", "/warm", body=b"x" * 1000)
        self.assertEqual(status, 200)
        time.sleep(0.3)
        idle = gw.rss_kb()
        body = os.urandom(1 << 20) * 50
        crc = zlib.crc32(body)
        watcher = RssWatcher(gw.pid)
        err = []
        try:
            with Client(gw.port, timeout=30) as c:
                c.request("POST", "/up", headers={"Content-Length": str(len(body))})

                def sender():
                    try:
                        mv = memoryview(body)
                        for i in range(0, len(body), 1 << 20):
                            c.sock.sendall(mv[i:i + (1 << 20)])
                    except OSError as e:
                        err.append(e)

                t = threading.Thread(target=sender, daemon=True)
                t.start()
                r = c.read_response(timeout=60)
                t.join(30)
        finally:
            peak = watcher.stop()
        self.assertEqual(err, [])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"body_bytes": len(body), "body_crc32": crc})
        self.check_rss(idle, peak, "50 MB upload")


if __name__ == "__main__":
    main()
