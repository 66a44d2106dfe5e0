#!/usr/bin/env python3
"""Hedging (an upstream's `hedge = {...}`): a GET or HEAD still without a response
head after the delay is sent once more to another backend; the first head wins
and the other attempt's connection is closed; POSTs, bodies and requests whose
response already began are never hedged; the budget caps the extra requests;
gw_hedges_total counts every outcome."""

import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403

OUTCOMES = ("sent", "won", "lost", "failed", "skipped_budget", "skipped_no_backend")


def frozen(conn):
    """A replica that reads a request and never answers; it notes when the gateway
    closes the connection (a cancelled attempt)."""
    conn.read_request()
    if conn.wait_eof(30):
        with conn.server.cond:
            conn.server.state["eofs"] = conn.server.state.get("eofs", 0) + 1
            conn.server.cond.notify_all()


def slow(delay):
    """A keep-alive replica that answers each request after `delay` seconds."""
    def respond(conn, req):
        time.sleep(delay)
        conn.respond(200, b"slow", {"X-Backend": "slow"})
    return keepalive_handler(respond)


def head_then_slow_body(conn):
    """Sends the response head at once and its body 500 ms later."""
    while True:
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Backend: trickle\r\n\r\n")
        time.sleep(0.5)
        conn.send(b"body")


def early_hints_then_slow(conn):
    """Sends a 103 at once and the final response 500 ms later."""
    while True:
        conn.read_request()
        conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        time.sleep(0.5)
        conn.respond(200, b"late", {"X-Backend": "early"})


class HedgeTest(GwTestCase):

    def gw_for(self, urls, hedge, **kw):
        up = upstream_cfg(*urls, hedge=hedge, timeouts={"connect_ms": 1000, "read_ms": 1500},
                          health={"max_fails": 0})
        up.update(kw)
        return self.gateway(basic_config(upstreams={"u": up},
                                         routes=[{"match": {"path_prefix": "/"}, "upstream": "u"}]))

    def hedges(self, gw):
        text = gw.metrics()
        return {o: metric_value(text, "gw_hedges_total", upstream="u", outcome=o) for o in OUTCOMES}

    def timed_get(self, gw, method="GET", path="/x", headers=None, body=None):
        t0 = time.monotonic()
        with gw.client() as c:
            c.request(method, path, headers=headers, body=body)
            r = c.read_response(method=method)
        return r, time.monotonic() - t0

    def test_frozen_replica_hedged_gets_answered_fast(self):
        a, b = self.backend("a"), self.backend("b")
        f = self.raw_server(frozen)
        gw = self.gw_for([f.url, a.url, b.url], {"after_ms": 25, "budget_percent": 100})
        slowest = 0.0
        t0 = time.monotonic()
        for i in range(24):
            method = "HEAD" if i % 4 == 3 else "GET"
            r, took = self.timed_get(gw, method, "/r%d" % i)
            self.assertEqual(r.status, 200, r)
            self.assertIn(r.header("x-backend"), ("a", "b"))
            slowest = max(slowest, took)
        # Without the hedge a third of them would wait for the 1.5 s read timeout.
        self.assertLess(slowest, 1.0)
        # Every original on the frozen replica was hedged, and its hedge won. (A fast replica
        # answers before its hedge is due, unless the machine stalls it for 25 ms: then its
        # hedge may go to the frozen one and lose.)
        frozen_picks = len(f.requests)
        self.assertGreaterEqual(frozen_picks, 6)
        h = self.hedges(gw)
        self.assertEqual(h["won"] + h["lost"], h["sent"], h)
        self.assertGreaterEqual(h["sent"], frozen_picks, h)
        self.assertGreaterEqual(h["won"], frozen_picks - h["lost"], h)
        self.assertEqual(h["failed"] + h["skipped_budget"] + h["skipped_no_backend"], 0, h)
        # The cancelled originals stay counted in flight while the frozen replica holds them
        # (so it does not look idle), on connections that are never pooled for another request;
        # read_ms closes them.
        self.assertEqual(f.accepted, frozen_picks)
        inflight = gw.metric("gw_upstream_in_flight", upstream="u", backend=f.url)
        if time.monotonic() - t0 < 1.2:  # none has reached read_ms yet
            self.assertEqual(inflight, frozen_picks)
        self.assertTrue(f.wait_for(lambda: f.state.get("eofs", 0) == frozen_picks, 5), f.state)
        self.assertTrue(wait_until(lambda: gw.metric("gw_upstream_in_flight", upstream="u",
                                                     backend=f.url) == 0, 5))
        promtool = shutil.which("promtool")
        if promtool:
            p = subprocess.run([promtool, "check", "metrics"], input=gw.metrics().encode(),
                               capture_output=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stdout.decode() + p.stderr.decode())

    def test_cancelled_attempts_still_count_for_passive_health(self):
        # A replica that answers nothing, every request of which is hedged away: the cancelled
        # attempts' read timeouts still eject it.
        a = self.backend("a")
        f = self.raw_server(frozen)
        gw = self.gw_for([f.url, a.url], {"after_ms": 20, "budget_percent": 100},
                         timeouts={"connect_ms": 1000, "read_ms": 600},
                         health={"max_fails": 2, "eject_ms": 10000})
        for i in range(6):
            r, took = self.timed_get(gw, path="/h%d" % i)
            self.assertEqual(r.status, 200, r)
            self.assertLess(took, 0.5)  # answered by the hedge, not after read_ms
        self.assertGreaterEqual(len(f.requests), 2)
        self.assertTrue(wait_until(lambda: gw.metric("gw_upstream_healthy", upstream="u",
                                                     backend=f.url) == 0, 5))
        self.assertGreaterEqual(gw.metric("gw_upstream_errors_total", upstream="u",
                                          backend=f.url, kind="timeout"), 2)
        picked = len(f.requests)
        for i in range(4):
            r, _ = self.timed_get(gw, path="/after%d" % i)
            self.assertEqual(r.status, 200, r)
        self.assertEqual(len(f.requests), picked)  # ejected: no longer picked

    def test_no_hedge_to_an_unhealthy_replica(self):
        # Once the frozen replica is ejected, a slow original's hedge has only it left: a
        # strategy offers an unhealthy backend as a last resort, but a hedge does without.
        a = self.raw_server(slow(0.08))
        f = self.raw_server(frozen)
        gw = self.gw_for([f.url, a.url], {"after_ms": 20, "budget_percent": 100},
                         timeouts={"connect_ms": 1000, "read_ms": 300},
                         health={"max_fails": 1, "eject_ms": 30000})
        self.assertTrue(wait_until(lambda: self.timed_get(gw, path="/e")[0].status == 200 and
                                   gw.metric("gw_upstream_healthy", upstream="u",
                                             backend=f.url) == 0, 10))
        picked, before = len(f.requests), self.hedges(gw)
        for i in range(4):
            r, _ = self.timed_get(gw, path="/slow%d" % i)
            self.assertEqual((r.status, r.body), (200, b"slow"))
        after = self.hedges(gw)
        self.assertEqual(len(f.requests), picked)
        self.assertEqual(after["sent"], before["sent"], after)
        self.assertEqual(after["skipped_no_backend"] - before["skipped_no_backend"], 4, after)

    def test_first_head_wins_either_way(self):
        s0, s2 = self.raw_server(slow(0.15)), self.raw_server(slow(0.15))
        f = self.raw_server(frozen)
        gw = self.gw_for([s0.url, f.url, s2.url], {"after_ms": 25, "budget_percent": 100})
        for i in range(6):
            r, took = self.timed_get(gw, path="/w%d" % i)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.body, b"slow")
        h = self.hedges(gw)
        # Every request is hedged, and the original and its hedge take the next two turns of
        # the round robin: (s0, f) the original wins, (f, s2) the hedge wins, (s2, s0) the
        # original answers 25 ms before its hedge would. Twice round, wherever it starts.
        self.assertEqual(h["sent"], 6, h)
        self.assertEqual(h["won"] + h["lost"], 6, h)
        self.assertGreaterEqual(h["won"], 2, h)
        self.assertGreaterEqual(h["lost"], 2, h)
        self.assertEqual(len(f.requests), 4)
        # A losing attempt's connection closes when its backend answers (the slow replicas), or
        # at read_ms (the frozen one); nothing stays counted in flight.
        self.assertTrue(f.wait_for(lambda: f.state.get("eofs", 0) == 4, 5), f.state)
        self.assertTrue(wait_until(lambda: all(
            gw.metric("gw_upstream_in_flight", upstream="u", backend=b.url) == 0
            for b in (s0, f, s2)), 5))

    def test_only_idempotent_bodyless_requests_are_hedged(self):
        a = self.backend("a")
        f = self.raw_server(frozen)
        gw = self.gw_for([f.url, a.url], {"after_ms": 25, "budget_percent": 100},
                         timeouts={"connect_ms": 1000, "read_ms": 400})
        cases = [("POST", None, b"x"), ("POST", None, b"y"), ("GET", None, b"body!"),
                 ("GET", None, b"body?"), ("DELETE", None, None), ("DELETE", None, None)]
        statuses = []
        for method, headers, body in cases:
            r, _ = self.timed_get(gw, method, "/n", headers=headers, body=body)
            statuses.append(r.status)
        # Round robin: one of each pair reached the frozen replica and timed out there.
        self.assertEqual(sorted(statuses), [200, 200, 200, 504, 504, 504], statuses)
        h = self.hedges(gw)
        self.assertEqual(sum(h.values()), 0, h)

    def test_no_hedge_once_the_response_began(self):
        t = self.raw_server(head_then_slow_body)
        a = self.backend("a")
        gw = self.gw_for([t.url, a.url], {"after_ms": 150, "budget_percent": 100})
        for i in range(4):
            r, _ = self.timed_get(gw, path="/t%d" % i)
            self.assertEqual(r.status, 200, r)
        h = self.hedges(gw)
        self.assertEqual(sum(h.values()), 0, h)
        self.assertEqual(len(t.requests), 2)
        # A relayed 1xx is a response head too: the attempt that sent it answers the request.
        e = self.raw_server(early_hints_then_slow)
        gw2 = self.gw_for([e.url, a.url], {"after_ms": 150, "budget_percent": 100})
        answered = set()
        for i in range(4):
            r, _ = self.timed_get(gw2, path="/e%d" % i)
            self.assertEqual(r.status, 200, r)
            if r.interim:
                self.assertEqual([x.status for x in r.interim], [103])
            answered.add(r.header("x-backend"))
        self.assertEqual(answered, {"early", "a"})
        h = self.hedges(gw2)
        self.assertEqual(sum(h.values()), 0, h)
        self.assertEqual(len(e.requests), 2)

    def test_budget_caps_hedges(self):
        a = self.backend("a")
        f = self.raw_server(frozen)
        gw = self.gw_for([f.url, a.url], {"after_ms": 10, "budget_percent": 10},
                         timeouts={"connect_ms": 1000, "read_ms": 250})
        n = 30
        statuses = []
        lock = threading.Lock()

        def worker(k):
            for i in range(k, n, 3):
                r, _ = self.timed_get(gw, path="/b%d" % i)
                with lock:
                    statuses.append(r.status)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        h = self.hedges(gw)
        self.assertEqual(len(statuses), n)
        # 30 requests earn 3 hedges at 10 %, though half of them, on the frozen replica, each
        # wanted one: the others waited for their read timeout.
        self.assertLessEqual(h["sent"], 3, h)
        self.assertGreaterEqual(statuses.count(504), 10, statuses)
        self.assertGreaterEqual(h["skipped_budget"], statuses.count(504), (statuses, h))
        self.assertEqual(h["won"] + h["lost"], h["sent"], h)

    def test_after_quantile_and_no_backend_left(self):
        f = self.raw_server(frozen)
        a = self.backend("a")
        gw = self.gw_for([f.url, a.url], {"after_quantile": 0.5, "budget_percent": 100})
        took = []
        for i in range(40):
            r, t = self.timed_get(gw, path="/q%d" % i)
            self.assertEqual(r.status, 200, r)
            took.append(t)
        h = self.hedges(gw)
        # The originals on the frozen replica all won by their hedge; at the median, some on
        # the fast one may be hedged too (to the frozen one, and lose).
        self.assertGreaterEqual(h["sent"], 20, h)
        self.assertGreaterEqual(h["won"], 15, h)
        self.assertEqual(h["won"] + h["lost"], h["sent"], h)
        # Until 16 latencies are known the delay is 100 ms; then it is their median (about a
        # millisecond here), so the later requests no longer wait 100 ms for their hedge.
        later = sorted(took[24:])
        self.assertLess(later[len(later) // 2], 0.09, later)
        # A lone replica: the hedge finds no other backend to go to.
        f2 = self.raw_server(frozen)
        gw2 = self.gw_for([f2.url], {"after_ms": 20, "budget_percent": 100},
                          timeouts={"connect_ms": 1000, "read_ms": 300})
        r, _ = self.timed_get(gw2, path="/alone")
        self.assertEqual(r.status, 504, r)
        h2 = self.hedges(gw2)
        self.assertEqual(h2["skipped_no_backend"], 1, h2)
        self.assertEqual(h2["sent"], 0, h2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
