#!/usr/bin/env python3
"""Reloading gateway.lua (POST /reload on the admin listener, or SIGHUP): the new
configuration takes over without losing a request, a bad one changes nothing and
says why, registrations and requests in flight survive, and the process still
stops cleanly afterwards."""

import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403



def post(port, path, body=None, headers=None):
    return http_request(port, "POST", path, headers=headers,
                        body=json.dumps(body) if body is not None else None)


class ReloadTest(GwTestCase):

    def config(self, version, backends, **kw):
        cfg = basic_config(
            upstreams={"u": upstream_cfg(*backends)},
            routes=[{"name": "version", "match": {"path_prefix": "/version"},
                     "respond": {"status": 200, "body": "v%s" % version}},
                    {"name": "all", "match": {"path_prefix": "/"}, "upstream": "u"}],
            **kw)
        return cfg

    def rewrite(self, gw, cfg):
        """Writes a new gateway.lua for a running gateway (same ports)."""
        cfg = dict(cfg)
        cfg.setdefault("listen", "%s:%d" % (HOST, gw.port))
        cfg.setdefault("admin", {"listen": "%s:%d" % (HOST, gw.admin_port)})
        cfg.setdefault("access_log", gw.access_log)
        with open(gw.path, "w") as f:
            f.write("return " + to_lua(cfg) + "\n")

    def version(self, gw):
        st, _, body = get(gw.port, "/version")
        return body.decode() if st == 200 else st

    def test_reload_applies_a_new_config(self):
        b1, b2 = self.backend("b1"), self.backend("b2")
        gw = self.gateway(self.config(1, [b1.url]))
        self.assertEqual(self.version(gw), "v1")
        self.rewrite(gw, self.config(2, [b2.url], workers=2))
        st, _, body = post(gw.admin_port, "/reload")
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body), {"status": "reloaded", "generation": 2})
        self.assertEqual(self.version(gw), "v2")
        for _ in range(6):
            st, _, body = get(gw.port, "/x")
            self.assertEqual(json.loads(body)["backend"], "b2")
        self.assertEqual(gw.metric("gw_workers"), 2)
        self.assertTrue(wait_until(lambda: "configuration 1: its last worker finished" in gw.stderr(), 2.0),
                        gw.stderr()[-2000:])
        # GET is not a reload.
        st, hs, _ = get(gw.admin_port, "/reload")
        self.assertEqual((st, hs.get("allow")), (405, "POST"))

    def test_bad_config_changes_nothing(self):
        b1 = self.backend("b1")
        gw = self.gateway(self.config(1, [b1.url]))
        with open(gw.path, "w") as f:
            f.write("return {\n  listen = 5,\n}\n")
        st, _, body = post(gw.admin_port, "/reload")
        self.assertEqual(st, 400, body)
        doc = json.loads(body)
        self.assertEqual(doc["error"], "reload_failed")
        self.assertIn("gateway.lua:2: listen: expected string", doc["message"])
        self.assertEqual(self.version(gw), "v1")
        self.assertIn("reload failed, configuration 1 stays", gw.stderr())
        # A config that loads but cannot start (its listen address is taken) changes nothing
        # either.
        taken = socket.socket()
        taken.bind((HOST, 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        cfg = self.config(3, [b1.url])
        cfg["listen"] = ["%s:%d" % (HOST, gw.port), "%s:%d" % (HOST, taken.getsockname()[1])]
        self.rewrite(gw, cfg)
        st, _, body = post(gw.admin_port, "/reload")
        self.assertEqual(st, 400, body)
        self.assertIn("address already in use", json.loads(body)["message"])
        self.assertEqual(self.version(gw), "v1")
        # Fixed: it goes through, as configuration 2.
        self.rewrite(gw, self.config(4, [b1.url]))
        st, _, body = post(gw.admin_port, "/reload")
        self.assertEqual((st, json.loads(body)["generation"]), (200, 2))
        self.assertEqual(self.version(gw), "v4")

    def test_sighup_and_token(self):
        b1 = self.backend("b1")
        admin_port = free_port()
        admin = {"listen": "%s:%d" % (HOST, admin_port), "token": "t0k"}
        gw = self.gateway(self.config(1, [b1.url], admin=admin))
        st, hs, _ = post(gw.admin_port, "/reload")
        self.assertEqual(st, 401)
        self.assertIn("Bearer", hs.get("www-authenticate"))
        self.rewrite(gw, self.config(2, [b1.url], admin=admin))
        os.kill(gw.pid, signal.SIGHUP)
        self.assertTrue(wait_until(lambda: self.version(gw) == "v2", 2.0), gw.stderr()[-2000:])
        self.rewrite(gw, self.config(3, [b1.url], admin=admin))
        st, _, body = post(gw.admin_port, "/reload", headers={"Authorization": "Bearer t0k"})
        self.assertEqual(st, 200, body)
        self.assertEqual(self.version(gw), "v3")

    def test_registrations_and_requests_in_flight_survive(self):
        b1, r1 = self.backend("b1"), self.backend("r1")
        reg = {"allow": ["127.0.0.0/8"]}
        gw = self.gateway(self.config(1, [b1.url], registration=reg))
        st, _, _ = post(gw.admin_port, "/register", {"url": r1.url, "meta": {"zone": "a"}})
        self.assertEqual(st, 201)
        self.assertTrue(wait_until(lambda: {json.loads(get(gw.port, "/x")[2])["backend"]
                                            for _ in range(6)} == {"b1", "r1"}, 2.0))
        # A slow request to the old configuration's workers, then a reload while it runs.
        result = {}

        def slow():
            c = http.client.HTTPConnection(HOST, gw.port, timeout=10)
            c.request("GET", "/delay/700")
            r = c.getresponse()
            result["status"], result["body"] = r.status, r.read()

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.2)
        self.rewrite(gw, self.config(2, [b1.url], registration=reg))
        st, _, body = post(gw.admin_port, "/reload")
        self.assertEqual(st, 200, body)
        t.join(5)
        self.assertEqual(result.get("status"), 200, result)
        # The registration came along: same id, still served, still in /status.
        _, _, doc = get_json(gw.admin_port, "/status")
        regd = [b for b in doc["upstreams"][0]["backends"] if b["source"] == "registered"]
        self.assertEqual([b["url"] for b in regd], [r1.url])
        self.assertEqual({json.loads(get(gw.port, "/x")[2])["backend"] for _ in range(6)},
                         {"b1", "r1"})
        self.assertIn("reload: 1 registered backend(s) kept", gw.stderr())
        self.assertEqual(gw.metric("gw_registrations_total", event="registered"), 1)

    def test_no_request_lost_across_reloads(self):
        """10 reloads under keep-alive and one-request-per-connection load: not one error."""
        b1, b2 = self.backend("b1"), self.backend("b2")
        gw = self.gateway(self.config(1, [b1.url, b2.url], workers=2))
        with Load(gw.port, keepalive=2, fresh=1) as load:
            for v in range(2, 12):
                time.sleep(0.25)
                self.rewrite(gw, self.config(v, [b1.url, b2.url], workers=1 + v % 2))
                st, _, body = post(gw.admin_port, "/reload")
                self.assertEqual(st, 200, body)
            time.sleep(0.25)
        self.assertEqual(load.errors, [])
        self.assertGreater(load.counts["keepalive"], 100, load.counts)
        self.assertGreater(load.counts["fresh"], 50, load.counts)
        self.assertEqual(self.version(gw), "v11")

if __name__ == "__main__":
    main()
