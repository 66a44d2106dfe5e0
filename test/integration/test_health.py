#!/usr/bin/env python3
"""Active health checks (upstream `health.path`): a backend whose check fails
`unhealthy_threshold` times in a row is taken out (no traffic, `down` in /status,
a log line), and comes back after `healthy_threshold` passes. Failing checks by
status, by refused connection and by timeout; registered backends are checked
too; the counters in /metrics."""

import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403



def who(gw):
    status, _, body = get(gw.port, "/")
    return json.loads(body)["backend"] if status == 200 else status


def status_of(gw, url):
    _, _, doc = get_json(gw.admin_port, "/status")
    for b in doc["upstreams"][0]["backends"]:
        if b["url"] == url:
            return b
    return None


def hold_forever(conn):
    """Accepts a check and never answers it."""
    conn.read_request()
    conn.wait_eof(30)


CHECKS = {"path": "/health", "interval_ms": 100, "timeout_ms": 80,
          "healthy_threshold": 2, "unhealthy_threshold": 3}


class HealthCheckTest(GwTestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="pgw-hc-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def flag(self, name):
        return os.path.join(self.dir, name)

    def test_down_by_status_and_back(self):
        b1 = self.backend("b1", ["--health-file", self.flag("b1-fails")])
        b2 = self.backend("b2")
        gw = self.gateway(basic_config(
            upstreams={"u": upstream_cfg(b1.url, b2.url, health=dict(CHECKS))},
            routes=[{"match": {"path_prefix": "/"}, "upstream": "u"}], workers=2))
        self.assertEqual({who(gw) for _ in range(8)}, {"b1", "b2"})

        open(self.flag("b1-fails"), "w").close()
        self.assertTrue(wait_until(lambda: status_of(gw, b1.url)["down"], 2.0),
                        gw.stderr()[-2000:])
        st = status_of(gw, b1.url)
        self.assertEqual((st["healthy"], st["down"], st["ejected"]), (False, True, False), st)
        self.assertEqual([who(gw) for _ in range(12)], ["b2"] * 12)
        self.assertRegex(gw.stderr(), r"backend %s is down: 3 health checks in a row failed "
                                      r"\(status 503\)" % re.escape(b1.url))

        os.unlink(self.flag("b1-fails"))
        self.assertTrue(wait_until(lambda: not status_of(gw, b1.url)["down"], 2.0),
                        gw.stderr()[-2000:])
        self.assertTrue(status_of(gw, b1.url)["healthy"])
        self.assertEqual({who(gw) for _ in range(8)}, {"b1", "b2"})
        self.assertRegex(gw.stderr(), r"backend %s is up: 2 health checks in a row passed"
                         % re.escape(b1.url))
        text = gw.metrics()
        self.assertGreaterEqual(metric_value(text, "gw_health_checks_total", upstream="u",
                                             result="fail"), 3, text)
        self.assertGreater(metric_value(text, "gw_health_checks_total", upstream="u",
                                        result="pass"), 4, text)
        self.assertEqual(metric_value(text, "gw_upstream_healthy", upstream="u", backend=b1.url),
                         1, text)

    def test_down_by_refused_connection_and_timeout(self):
        b1 = self.backend("b1")
        hang = self.raw_server(hold_forever)
        gw = self.gateway(basic_config(
            upstreams={"u": upstream_cfg(b1.url, hang.url, health=dict(CHECKS))},
            routes=[{"match": {"path_prefix": "/"}, "upstream": "u"}]))
        # The silent backend: every check times out (80 ms), so it goes down in about 0.4 s.
        self.assertTrue(wait_until(lambda: status_of(gw, hang.url)["down"], 2.0),
                        gw.stderr()[-2000:])
        self.assertIn("(timed out)", gw.stderr())
        self.assertFalse(status_of(gw, b1.url)["down"])
        self.assertEqual([who(gw) for _ in range(6)], ["b1"] * 6)
        # b1 stops: refused connections take it down too.
        b1.stop()
        self.assertTrue(wait_until(lambda: status_of(gw, b1.url)["down"], 2.0),
                        gw.stderr()[-2000:])
        self.assertRegex(gw.stderr(), r"backend %s is down: 3 health checks in a row failed "
                                      r"\(connection refused\)" % re.escape(b1.url))

    def test_registered_backends_are_checked(self):
        s1 = self.backend("s1")
        r1 = self.backend("r1", ["--health-file", self.flag("r1-fails")])
        open(self.flag("r1-fails"), "w").close()
        gw = self.gateway(basic_config(
            upstreams={"u": upstream_cfg(s1.url, health=dict(CHECKS))},
            routes=[{"match": {"path_prefix": "/"}, "upstream": "u"}],
            registration={"allow": ["127.0.0.0/8"]}))
        st, _, _ = http_request(gw.admin_port, "POST", "/register",
                                body=json.dumps({"url": r1.url}))
        self.assertEqual(st, 201)
        # A registration starts up, and its failing checks take it down.
        self.assertTrue(wait_until(lambda: (status_of(gw, r1.url) or {}).get("down"), 2.0),
                        gw.stderr()[-2000:])
        self.assertEqual([who(gw) for _ in range(6)], ["s1"] * 6)
        os.unlink(self.flag("r1-fails"))
        self.assertTrue(wait_until(lambda: who(gw) == "r1", 2.0), gw.stderr()[-2000:])
        # Unregistered: no longer checked (the counters stop moving for it).
        http_request(gw.admin_port, "POST", "/unregister", body=json.dumps({"url": r1.url}))
        self.assertTrue(wait_until(lambda: status_of(gw, r1.url) is None, 1.0))

    def test_no_checks_without_path(self):
        b1 = self.backend("b1", ["--health-file", self.flag("b1-fails")])
        open(self.flag("b1-fails"), "w").close()
        gw = self.gateway(basic_config(
            upstreams={"u": upstream_cfg(b1.url)},
            routes=[{"match": {"path_prefix": "/"}, "upstream": "u"}]))
        time.sleep(0.3)
        self.assertEqual(who(gw), "b1")
        self.assertFalse(status_of(gw, b1.url)["down"])
        self.assertNotIn("gw_health_checks_total", gw.metrics())


if __name__ == "__main__":
    main()
