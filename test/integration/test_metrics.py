#!/usr/bin/env python3
"""Admin listener: /healthz, and /metrics counts after known traffic (summed over workers)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403


class MetricsTest(GwTestCase):

    def setUp(self):
        super().setUp()
        self.b1 = self.backend("b1")
        self.b2 = self.backend("b2")
        self.gw = self.gateway(basic_config(
            upstreams={"u": upstream_cfg(self.b1.url, self.b2.url)},
            routes=[{"name": "hello", "match": {"path_prefix": "/hello"},
                     "respond": {"status": 200, "body": "hi\n"}},
                    {"name": "m", "match": {"path_prefix": "/m"}, "upstream": "u", "strip_prefix": True}],
            workers=2))

    def test_healthz(self):
        status, _, body = get(self.gw.admin_port, "/healthz")
        self.assertEqual(status, 200)

    def test_metrics_counts(self):
        for i in range(5):
            self.assertEqual(self.gw.get("/m/ok%d" % i)[0], 200)
        for i in range(3):
            self.assertEqual(self.gw.get("/m/status/404")[0], 404)
        for i in range(2):
            self.assertEqual(self.gw.get("/hello")[0], 200)
        self.assertEqual(self.gw.get("/nope")[0], 404)
        time.sleep(0.2)
        text = self.gw.metrics()
        mv = lambda name, **l: metric_value(text, name, **l)  # noqa: E731
        self.assertEqual(mv("gw_requests_total", route="m", code="2xx"), 5, text)
        self.assertEqual(mv("gw_requests_total", route="m", code="4xx"), 3, text)
        self.assertEqual(mv("gw_requests_total", route="hello", code="2xx"), 2, text)
        self.assertEqual(mv("gw_requests_total", route="m", code="5xx"), 0, text)
        self.assertEqual(mv("gw_requests_total"), 11, text)
        self.assertEqual(mv("gw_upstream_requests_total", upstream="u"), 8, text)
        self.assertEqual(mv("gw_upstream_requests_total", upstream="u", backend=self.b1.url) +
                         mv("gw_upstream_requests_total", upstream="u", backend=self.b2.url), 8,
                         "backend label should be the backend URL:\n" + text)
        self.assertEqual(mv("gw_request_duration_seconds_count"), 11, text)
        self.assertEqual(mv("gw_upstream_latency_seconds_count", upstream="u"), 8, text)
        self.assertEqual(mv("gw_upstream_in_flight", upstream="u"), 0, text)
        self.assertEqual(mv("gw_retries_total", upstream="u"), 0, text)
        self.assertGreaterEqual(mv("gw_connections_total"), 11, text)
        self.assertEqual(mv("gw_upstream_errors_total"), 0, text)
        for name in ("gw_requests_total", "gw_request_duration_seconds", "gw_upstream_requests_total",
                     "gw_upstream_latency_seconds", "gw_upstream_in_flight", "gw_connections_active",
                     "gw_connections_total"):
            self.assertRegex(text, r"(?m)^# TYPE %s " % name)
        # Histogram buckets are cumulative and end with +Inf == count.
        inf = metric_value(text, "gw_request_duration_seconds_bucket", le="+Inf")
        self.assertEqual(inf, 11, text)

    def test_connections_active(self):
        c = self.gw.client()
        c.request("GET", "/hello")
        self.assertEqual(c.read_response().status, 200)
        self.assertGreaterEqual(self.gw.metric("gw_connections_active"), 1)
        c.close()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and self.gw.metric("gw_connections_active") != 0:
            time.sleep(0.05)
        self.assertEqual(self.gw.metric("gw_connections_active"), 0)

    def test_unknown_admin_path_404(self):
        status, _, _ = get(self.gw.admin_port, "/no-such-admin-endpoint")
        self.assertEqual(status, 404)


if __name__ == "__main__":
    main()
