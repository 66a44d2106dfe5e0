#!/usr/bin/env python3
"""Run-time backend registration through the admin API (ARCHITECTURE.md §8) and the Lua membership hooks.

- POST /register adds a backend to an upstream (201), a repeat is a heartbeat (200 "renewed", same
  id); a registration expires after its TTL unless renewed; POST /unregister removes it. A URL that
  was registered before gets its old id back.
- Every worker uses a new registration within about a second; a removed backend gets no new
  requests.
- Validation (400), the admin token (401), registration.allow (403 not_allowed), on_register
  (403 rejected / 500 hook_error), unknown upstreams (404), static URLs (409), max_backends (503).
- on_register / on_unregister hooks (also for static backends at load), a Lua strategy's
  on_backends_changed, /status membership and the registration metrics.
"""

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403

TOKEN = "s3cret"
ALLOW = ["127.0.0.0/8", "::1/128"]


class Reply:
    """An admin response: status, Headers, raw body and the parsed JSON (None if not JSON)."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def __repr__(self):
        return "<Reply %s %r %r>" % (self.status, list(self.headers), self.body[:400])


def admin(gw, method, path, body=None, token=None, raw=None):
    """One admin request on a fresh connection. `body` is sent as JSON, `raw` as is."""
    headers = {}
    data = None
    if raw is not None:
        data = raw.encode() if isinstance(raw, str) else raw
    elif body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    return Reply(*http_request(gw.admin_port, method, path, headers=headers, body=data))


def register(gw, url, token=None, **fields):
    body = {"url": url}
    body.update(fields)
    return admin(gw, "POST", "/register", body, token=token)


def unregister(gw, url, token=None, **fields):
    body = {"url": url}
    body.update(fields)
    return admin(gw, "POST", "/unregister", body, token=token)



def who(gw, path="/"):
    """(status, backend name or None) of one request on a fresh connection."""
    st, _, body = get(gw.port, path)
    name = None
    if st == 200:
        try:
            name = json.loads(body).get("backend")
        except ValueError:
            pass
    return st, name


def status_backends(gw, upstream="api"):
    st, _, body = get(gw.admin_port, "/status")
    assert st == 200, "GET /status -> %s" % st
    doc = json.loads(body)
    for u in doc["upstreams"]:
        if u["name"] == upstream:
            return u["backends"]
    raise AssertionError("upstream %r not in /status: %r" % (upstream, doc))


def status_entry(gw, url, upstream="api"):
    for b in status_backends(gw, upstream):
        if b["url"] == url:
            return b
    return None


class RegistrationTest(GwTestCase):

    def start(self, static=(), workers=1, token=None, hooks=None, upstreams=None, routes=None,
              strategy="round_robin", **registration):
        """A gateway with registration on: upstream "api" (static backends `static`, may be empty)
        routed at "/", unless `upstreams`/`routes` are given. `registration` adds to the
        registration table (allow defaults to loopback v4 + v6)."""
        reg = {"allow": list(ALLOW)}
        reg.update(registration)
        if upstreams is None:
            upstreams = {"api": {"strategy": strategy, "backends": list(static)}}
        if routes is None:
            routes = [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "api"}]
        extra = {"registration": reg, "workers": workers}
        if token is not None:
            extra["admin"] = {"listen": "%s:%d" % (HOST, free_port()), "token": token}
        if hooks is not None:
            extra["hooks"] = hooks
        return self.gateway(basic_config(upstreams=upstreams, routes=routes, **extra))

    # assertions ---------------------------------------------------------------------------------

    def assertAdminError(self, r, status, code):
        self.assertEqual(r.status, status, r)
        ctype = r.headers.get("content-type", "")
        self.assertIn("json", ctype.lower(), "error Content-Type %r: %r" % (ctype, r))
        self.assertIsInstance(r.json, dict, "error body is not a JSON object: %r" % r)
        self.assertIn("message", r.json, r)
        self.assertEqual(r.json.get("error"), code, r)

    def assertRegistered(self, r, url, upstream="api", status="registered", ttl_ms=None):
        self.assertEqual(r.status, 201 if status == "registered" else 200, r)
        self.assertIsInstance(r.json, dict, r)
        self.assertEqual(r.json.get("status"), status, r)
        self.assertEqual(r.json.get("upstream"), upstream, r)
        self.assertEqual(r.json.get("url"), url, r)
        self.assertIsInstance(r.json.get("id"), int, r)
        self.assertIsInstance(r.json.get("ttl_ms"), int, r)
        if ttl_ms is not None:
            self.assertEqual(r.json["ttl_ms"], ttl_ms, r)
        return r.json["id"]

    def wait_served_by(self, gw, names, timeout=1.0):
        """Poll until requests have reached every backend in `names`; returns the set seen."""
        seen = set()

        def pred():
            st, name = who(gw)
            if st == 200:
                seen.add(name)
            return set(names) <= seen

        wait_until(pred, timeout)
        return seen

    def wait_log(self, gw, needle, timeout=1.5):
        return wait_until(lambda: needle in gw.stderr(), timeout)

    # 1 ------------------------------------------------------------------------------------------

    def test_register_into_empty_upstream(self):
        b1 = self.backend("b1")
        gw = self.start()
        st, _ = who(gw)
        self.assertEqual(st, 503, "no backends yet")
        self.assertEqual(status_backends(gw), [])
        r = register(gw, b1.url)
        self.assertIn("json", r.headers.get("content-type", "").lower(), r)
        self.assertRegistered(r, b1.url, ttl_ms=30000)       # registration.ttl_ms default
        seen = self.wait_served_by(gw, {"b1"}, timeout=1.0)
        self.assertEqual(seen, {"b1"}, "the registered backend did not get traffic within 1 s")
        for _ in range(5):
            self.assertEqual(who(gw), (200, "b1"))
        e = status_entry(gw, b1.url)
        self.assertIsNotNone(e, status_backends(gw))
        self.assertEqual(e["source"], "registered", e)
        self.assertIs(e["member"], True, e)
        self.assertEqual(e["id"], r.json["id"], e)
        self.assertIsInstance(e["expires_in_ms"], (int, float), e)
        self.assertGreater(e["expires_in_ms"], 25000, e)
        self.assertLessEqual(e["expires_in_ms"], 30000, e)

    # 2 ------------------------------------------------------------------------------------------

    def test_heartbeat_and_ttl(self):
        b1 = self.backend("b1")
        gw = self.start()
        r = register(gw, b1.url, ttl_ms=400)
        rid = self.assertRegistered(r, b1.url, ttl_ms=400)
        r2 = register(gw, b1.url, ttl_ms=400)
        self.assertRegistered(r2, b1.url, status="renewed", ttl_ms=400)
        self.assertEqual(r2.json["id"], rid, "a heartbeat keeps the id")
        t_last = time.monotonic()
        e = status_entry(gw, b1.url)
        self.assertIsNotNone(e)
        self.assertIsInstance(e["expires_in_ms"], (int, float), e)
        self.assertGreater(e["expires_in_ms"], 0, e)
        self.assertLessEqual(e["expires_in_ms"], 400, e)
        self.assertEqual(self.wait_served_by(gw, {"b1"}, 1.0), {"b1"})

        # No heartbeat: it expires, requests get 503 and /status stops listing it.
        gone = wait_until(lambda: who(gw)[0] == 503 and status_entry(gw, b1.url) is None, 2.0)
        waited = time.monotonic() - t_last
        self.assertTrue(gone, "still registered %.2fs after its last register (ttl 400 ms): %r"
                        % (waited, status_backends(gw)))
        self.assertLess(waited, 1.5, "expired only after %.2fs (ttl 400 ms)" % waited)
        self.assertGreater(waited, 0.25, "expired after %.2fs, before its ttl of 400 ms" % waited)

        # Re-registered after expiry: new registration, same id. Heartbeats every 150 ms keep it.
        r = register(gw, b1.url, ttl_ms=400)
        self.assertRegistered(r, b1.url, ttl_ms=400)
        self.assertEqual(r.json["id"], rid, "re-registering after expiry keeps the id")
        self.assertEqual(self.wait_served_by(gw, {"b1"}, 1.0), {"b1"})
        t0 = time.monotonic()
        next_beat = t0 + 0.15
        statuses = []
        while time.monotonic() - t0 < 1.3:
            if time.monotonic() >= next_beat:
                hb = register(gw, b1.url, ttl_ms=400)
                self.assertRegistered(hb, b1.url, status="renewed", ttl_ms=400)
                self.assertEqual(hb.json["id"], rid)
                next_beat += 0.15
            statuses.append(who(gw)[0])
            time.sleep(0.02)
        self.assertEqual(set(statuses), {200}, "requests failed while heartbeating: %r" % statuses)
        self.assertIsNotNone(status_entry(gw, b1.url), "heartbeats did not keep it registered")
        self.assertTrue(wait_until(lambda: gw.metric("gw_registrations_total", upstream="api",
                                                     event="expired") == 1, 1.0),
                        gw.metrics())

    # 3 ------------------------------------------------------------------------------------------

    def test_unregister_stops_traffic(self):
        b1, b2 = self.backend("b1"), self.backend("b2")
        gw = self.start()
        id1 = self.assertRegistered(register(gw, b1.url), b1.url)
        id2 = self.assertRegistered(register(gw, b2.url), b2.url)
        self.assertNotEqual(id1, id2)
        self.assertEqual(self.wait_served_by(gw, {"b1", "b2"}, 1.0), {"b1", "b2"})
        r = unregister(gw, b1.url)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json.get("status"), "unregistered", r)
        # Give the workers a moment to learn (4 consecutive answers from b2), then none to b1.
        run = []

        def settled():
            run.append(who(gw))
            return run[-4:] == [(200, "b2")] * 4

        self.assertTrue(wait_until(settled, 1.0), run)
        names = [who(gw) for _ in range(20)]
        self.assertEqual(names, [(200, "b2")] * 20)
        self.assertIsNone(status_entry(gw, b1.url), status_backends(gw))
        self.assertIsNotNone(status_entry(gw, b2.url))
        # Unregistering it again, or a URL never registered: 404 not_registered.
        self.assertAdminError(unregister(gw, b1.url), 404, "not_registered")
        self.assertAdminError(unregister(gw, "http://127.0.0.1:1"), 404, "not_registered")
        # Re-registration: a new registration (201) with the old id, and traffic again.
        r = register(gw, b1.url)
        self.assertRegistered(r, b1.url)
        self.assertEqual(r.json["id"], id1, "re-registering keeps the id")
        self.assertEqual(self.wait_served_by(gw, {"b1", "b2"}, 1.0), {"b1", "b2"})

    # 4 ------------------------------------------------------------------------------------------

    def test_validation(self):
        s = self.backend("s")
        r1, r2 = self.backend("r1"), self.backend("r2")
        gw = self.start(
            upstreams={"api": {"strategy": "round_robin", "backends": [s.url]},
                       "v6": {"strategy": "round_robin", "backends": []}},
            routes=[{"name": "v6", "match": {"path_prefix": "/v6"}, "upstream": "v6"},
                    {"name": "all", "match": {"path_prefix": "/"}, "upstream": "api"}],
            max_backends=1, upstream="api")
        bad = [
            ("invalid JSON", dict(raw='{"url": "http://127.0.0.1:9"'), 400, "bad_request"),
            ("not an object", dict(raw='["http://127.0.0.1:9"]'), 400, "bad_request"),
            ("empty body", dict(raw=""), 400, "bad_request"),
            ("missing url", dict(body={"upstream": "api"}), 400, "bad_request"),
            ("url not a string", dict(body={"url": 9}), 400, "bad_request"),
            ("host name", dict(body={"url": "http://localhost:9000"}), 400, "bad_request"),
            ("https", dict(body={"url": "https://127.0.0.1:9000"}), 400, "bad_request"),
            ("no port", dict(body={"url": "http://127.0.0.1"}), 400, "bad_request"),
            ("not a URL", dict(body={"url": "127.0.0.1:9000"}), 400, "bad_request"),
            ("weight 0", dict(body={"url": r1.url, "weight": 0}), 400, "bad_request"),
            ("weight 1001", dict(body={"url": r1.url, "weight": 1001}), 400, "bad_request"),
            ("weight 1.5", dict(body={"url": r1.url, "weight": 1.5}), 400, "bad_request"),
            ("weight string", dict(body={"url": r1.url, "weight": "2"}), 400, "bad_request"),
            ("meta not object", dict(body={"url": r1.url, "meta": "zone=b"}), 400, "bad_request"),
            ("meta array", dict(body={"url": r1.url, "meta": ["b"]}), 400, "bad_request"),
            ("ttl negative", dict(body={"url": r1.url, "ttl_ms": -1}), 400, "bad_request"),
            ("ttl string", dict(body={"url": r1.url, "ttl_ms": "5s"}), 400, "bad_request"),
            ("outside allow", dict(body={"url": "http://10.1.2.3:80"}), 403, "not_allowed"),
            ("v6 outside allow", dict(body={"url": "http://[::2]:80", "upstream": "v6"}), 403,
             "not_allowed"),
            ("unknown upstream", dict(body={"url": r1.url, "upstream": "nope"}), 404,
             "unknown_upstream"),
            ("static URL", dict(body={"url": s.url}), 409, "static_backend"),
            # IPv4-mapped IPv6 is the same address as its IPv4 form.
            ("static URL, IPv4-mapped", dict(body={"url": "http://[::ffff:127.0.0.1]:%d" % s.port}),
             409, "static_backend"),
            # What a lenient JSON parser lets through.
            ("NUL after the port", dict(raw='{"url": "%s\\u0000x"}' % r1.url), 400, "bad_request"),
            ("raw NUL in a string", dict(raw=b'{"url": "' + r1.url.encode() + b'\0x"}'), 400,
             "bad_request"),
            ("leading NUL", dict(raw=b'\0{"url": "' + r1.url.encode() + b'"}'), 400, "bad_request"),
            ("bytes after the object", dict(raw='{"url": "%s"} x' % r1.url), 400, "bad_request"),
            ("two objects", dict(raw='{"url": "%s"}{"url": "%s"}' % (r1.url, r2.url)), 400,
             "bad_request"),
            ("duplicate key", dict(raw='{"url": "%s", "url": "%s"}' % (r1.url, r2.url)), 400,
             "bad_request"),
            ("duplicate key in meta", dict(raw='{"url": "%s", "meta": {"z": "a", "z": "b"}}' % r1.url),
             400, "bad_request"),
        ]
        for what, kw, status, code in bad:
            with self.subTest(what):
                self.assertAdminError(admin(gw, "POST", "/register", **kw), status, code)
        # Nothing of that was registered.
        self.assertEqual([b["url"] for b in status_backends(gw)], [s.url])
        self.assertEqual(status_backends(gw, "v6"), [])
        self.assertAdminError(unregister(gw, s.url), 409, "static_backend")
        r = admin(gw, "GET", "/register")
        self.assertEqual(r.status, 405, r)
        self.assertEqual(r.headers.get("allow"), "POST", r)
        # An IPv6 literal inside allow is fine.
        self.assertRegistered(register(gw, "http://[::1]:9", upstream="v6"), "http://[::1]:9",
                              upstream="v6")
        # max_backends = 1: the first takes the slot, a second gets 503 full, a renew still works.
        id1 = self.assertRegistered(register(gw, r1.url, weight=3, meta={"zone": "b"}, ttl_ms=5000),
                                    r1.url, ttl_ms=5000)
        self.assertAdminError(register(gw, r2.url), 503, "full")
        r = register(gw, r1.url)
        self.assertRegistered(r, r1.url, status="renewed")
        self.assertEqual(r.json["id"], id1)
        e = status_entry(gw, r1.url)
        self.assertIsNotNone(e)
        self.assertIsNone(status_entry(gw, r2.url))
        # A renew updates weight and ttl.
        r = register(gw, r1.url, weight=7, ttl_ms=6000)
        self.assertRegistered(r, r1.url, status="renewed", ttl_ms=6000)
        e = status_entry(gw, r1.url)
        self.assertEqual(e["weight"], 7, e)
        self.assertGreater(e["expires_in_ms"], 5000, e)
        self.assertLessEqual(e["expires_in_ms"], 6000, e)
        # The gateway keeps serving through all of it.
        self.assertEqual(self.wait_served_by(gw, {"s", "r1"}, 1.0), {"s", "r1"})

    # 5 ------------------------------------------------------------------------------------------

    def test_token(self):
        b1 = self.backend("b1")
        gw = self.start(token=TOKEN)
        r = register(gw, b1.url)
        self.assertAdminError(r, 401, "unauthorized")
        self.assertTrue(r.headers.get("www-authenticate", "").startswith("Bearer"), r)
        r = register(gw, b1.url, token="wrong")
        self.assertAdminError(r, 401, "unauthorized")
        self.assertTrue(r.headers.get("www-authenticate", "").startswith("Bearer"), r)
        r = admin(gw, "POST", "/register", {"url": b1.url}, token=TOKEN + "x")
        self.assertAdminError(r, 401, "unauthorized")
        # Basic auth with the token as the password is not a bearer token.
        st, hs, body = http_request(gw.admin_port, "POST", "/register",
                                    headers={"Authorization": "Basic " + base64.b64encode(
                                        (":" + TOKEN).encode()).decode(),
                                        "Content-Type": "application/json"},
                                    body=json.dumps({"url": b1.url}).encode())
        self.assertEqual(st, 401, body)
        self.assertIsNone(status_entry(gw, b1.url), "an unauthorized request registered it")
        self.assertRegistered(register(gw, b1.url, token=TOKEN), b1.url)
        self.assertEqual(self.wait_served_by(gw, {"b1"}, 1.0), {"b1"})
        for path in ("/metrics", "/status", "/healthz"):
            self.assertEqual(get(gw.admin_port, path)[0], 200, path)
        self.assertAdminError(unregister(gw, b1.url), 401, "unauthorized")
        self.assertAdminError(unregister(gw, b1.url, token="nope"), 401, "unauthorized")
        self.assertIsNotNone(status_entry(gw, b1.url))
        r = unregister(gw, b1.url, token=TOKEN)
        self.assertEqual((r.status, r.json.get("status")), (200, "unregistered"), r)

    # 6 ------------------------------------------------------------------------------------------

    def test_openprequal_body_and_default_upstream(self):
        b1 = self.backend("b1")
        gw = self.start()
        r = admin(gw, "POST", "/register", raw=json.dumps({"url": b1.url}))
        self.assertRegistered(r, b1.url, upstream="api")
        self.assertEqual(self.wait_served_by(gw, {"b1"}, 1.0), {"b1"})
        r = admin(gw, "POST", "/unregister", raw=json.dumps({"url": b1.url}))
        self.assertEqual((r.status, r.json.get("status")), (200, "unregistered"), r)

        two = {"a": {"strategy": "round_robin", "backends": []},
               "b": {"strategy": "round_robin", "backends": []}}
        routes = [{"name": "a", "match": {"path_prefix": "/a"}, "upstream": "a"},
                  {"name": "b", "match": {"path_prefix": "/b"}, "upstream": "b"}]
        gw2 = self.start(upstreams=two, routes=routes)
        self.assertAdminError(register(gw2, b1.url), 400, "bad_request")
        self.assertAdminError(unregister(gw2, b1.url), 400, "bad_request")
        self.assertRegistered(register(gw2, b1.url, upstream="b"), b1.url, upstream="b")
        self.assertEqual(status_backends(gw2, "a"), [])
        self.assertTrue(wait_until(lambda: who(gw2, "/b") == (200, "b1"), 1.0))
        self.assertEqual(who(gw2, "/a")[0], 503)

        gw3 = self.start(upstreams=two, routes=routes, upstream="b")   # registration.upstream
        self.assertRegistered(register(gw3, b1.url), b1.url, upstream="b")
        self.assertEqual(status_backends(gw3, "a"), [])
        self.assertIsNotNone(status_entry(gw3, b1.url, "b"))

    # 7 ------------------------------------------------------------------------------------------

    def test_every_worker_learns(self):
        b1 = self.backend("b1")
        gw = self.start(workers=2)
        self.assertEqual(who(gw)[0], 503)
        r = register(gw, b1.url)
        t0 = time.monotonic()
        self.assertRegistered(r, b1.url)
        self.assertTrue(wait_until(lambda: who(gw) == (200, "b1"), 1.0))
        left = 1.0 - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)
        results = [who(gw) for _ in range(40)]   # fresh connections: spread over both workers
        self.assertEqual(results, [(200, "b1")] * 40)
        self.assertEqual(get_json(gw.admin_port, "/status")[2]["workers"], 2)
        # A gauge of members, not a sum over workers.
        self.assertEqual(gw.metric("gw_upstream_backends", upstream="api"), 1, gw.metrics())

    # 8 ------------------------------------------------------------------------------------------

    def test_hooks(self):
        s1, s2 = self.backend("s1"), self.backend("s2")
        r1, r2, r3 = self.backend("r1"), self.backend("r2"), self.backend("r3")
        on_register = Lua(r'''function(b, u)
    local zone = type(b.meta) == "table" and b.meta.zone or nil
    gw.log.info("REG url=" .. tostring(b.url) .. " up=" .. tostring(u) .. " static=" ..
                tostring(b.static) .. " weight=" .. tostring(b.weight) .. " zone=" ..
                tostring(zone) .. " idtype=" .. type(b.id) .. " metatype=" .. type(b.meta))
    if type(b.meta) == "table" and b.meta.boom then error("boom from on_register") end
    if b.url == %s then return false end
    if zone == "bad" then return false end
    return true
end''' % lua_str(s2.url))
        on_unregister = Lua(r'''function(b, u, reason)
    gw.log.info("UNREG url=" .. tostring(b.url) .. " up=" .. tostring(u) .. " reason=" ..
                tostring(reason) .. " static=" .. tostring(b.static))
end''')
        gw = self.start(static=[s1.url, s2.url], workers=2,
                        hooks={"on_register": on_register, "on_unregister": on_unregister})
        # At load, on_register saw both static backends and rejected s2: it never gets traffic.
        for s in (s1, s2):
            self.assertTrue(self.wait_log(gw, "REG url=%s up=api static=true" % s.url),
                            gw.stderr()[-3000:])
        self.assertIn("metatype=table", gw.stderr())
        self.assertIn("idtype=number", gw.stderr())
        self.assertEqual([who(gw) for _ in range(12)], [(200, "s1")] * 12)
        e1, e2 = status_entry(gw, s1.url), status_entry(gw, s2.url)
        self.assertIsNotNone(e2, "a rejected static backend is still listed")
        self.assertEqual((e1["source"], e1["member"]), ("static", True), e1)
        self.assertEqual((e2["source"], e2["member"]), ("static", False), e2)
        self.assertIsNone(e1["expires_in_ms"], e1)

        # At run time: rejected by meta, accepted otherwise (the hook sees weight and meta).
        self.assertAdminError(register(gw, r1.url, meta={"zone": "bad"}), 403, "rejected")
        self.assertTrue(self.wait_log(gw, "REG url=%s up=api static=false weight=1 zone=bad"
                                      % r1.url, 1.0), gw.stderr()[-3000:])
        self.assertIsNone(status_entry(gw, r1.url))
        self.assertRegistered(register(gw, r1.url, weight=3, meta={"zone": "good"}), r1.url)
        self.assertTrue(self.wait_log(gw, "REG url=%s up=api static=false weight=3 zone=good"
                                      % r1.url, 1.0), gw.stderr()[-3000:])
        self.assertEqual(self.wait_served_by(gw, {"s1", "r1"}, 1.0), {"s1", "r1"})

        # A hook error: 500 hook_error, not registered, and the gateway keeps serving.
        self.assertAdminError(register(gw, r3.url, meta={"boom": True}), 500, "hook_error")
        self.assertIsNone(status_entry(gw, r3.url))
        self.assertTrue(self.wait_log(gw, "boom from on_register", 1.0), gw.stderr()[-3000:])
        names = {who(gw) for _ in range(8)}
        self.assertEqual(names, {(200, "s1"), (200, "r1")})
        self.assertEqual(get(gw.admin_port, "/healthz")[0], 200)

        # on_unregister: reason "unregister", then "expired".
        self.assertEqual(unregister(gw, r1.url).status, 200)
        self.assertTrue(self.wait_log(gw, "UNREG url=%s up=api reason=unregister static=false"
                                      % r1.url, 1.0), gw.stderr()[-3000:])
        self.assertRegistered(register(gw, r2.url, ttl_ms=300), r2.url, ttl_ms=300)
        self.assertTrue(self.wait_log(gw, "UNREG url=%s up=api reason=expired" % r2.url, 1.5),
                        gw.stderr()[-3000:])
        run = []

        def settled():
            run.append(who(gw))
            return run[-4:] == [(200, "s1")] * 4

        self.assertTrue(wait_until(settled, 1.0), run)
        self.assertEqual([who(gw) for _ in range(6)], [(200, "s1")] * 6)
        self.assertEqual({b["url"] for b in status_backends(gw)}, {s1.url, s2.url})

    def test_endless_on_register_is_stopped(self):
        """A membership hook runs on the main thread, under gateway.lua's time limit: one that
        never returns fails the registration instead of hanging the admin API."""
        b1 = self.backend("b1")
        hooks = {"on_register": Lua('function(b) if b.static == false then while true do end end '
                                    'return true end')}
        reg = {"allow": list(ALLOW)}
        gw = self.gateway(basic_config(
            upstreams={"api": {"strategy": "round_robin", "backends": []}},
            routes=[{"name": "all", "match": {"path_prefix": "/"}, "upstream": "api"}],
            registration=reg, hooks=hooks), args=["--config-timeout-ms", "300"])
        t0 = time.monotonic()
        self.assertAdminError(register(gw, b1.url), 500, "hook_error")
        self.assertLess(time.monotonic() - t0, 3.0)
        self.assertTrue(self.wait_log(gw, "time limit", 1.0), gw.stderr()[-3000:])
        self.assertEqual(get(gw.admin_port, "/healthz")[0], 200)
        self.assertIsNone(status_entry(gw, b1.url))

    def test_hook_errors(self):
        """on_unregister and on_backends_changed raising: logged (and, for the strategy, counted);
        the leave and the new view happen anyway. on_register raising for a static backend at
        load stops the start, with -t too, naming the backend."""
        s1, r1, r2 = self.backend("s1"), self.backend("r1"), self.backend("r2")
        strategy = Lua(r'''{
    name = "last",
    pick = function(backends) return backends[#backends] end,
    on_backends_changed = function(backends) error("boom from on_backends_changed") end,
}''')
        on_unregister = Lua('function(b, u, reason) error("boom from on_unregister") end')
        gw = self.start(static=[s1.url], strategy=strategy, hooks={"on_unregister": on_unregister})
        self.assertRegistered(register(gw, r1.url), r1.url)
        # The view was rebuilt although on_backends_changed raised: pick sees r1.
        self.assertTrue(wait_until(lambda: who(gw) == (200, "r1"), 1.0), gw.stderr()[-3000:])
        self.assertTrue(self.wait_log(gw, "boom from on_backends_changed", 1.0))
        self.assertGreaterEqual(gw.metric("gw_lua_strategy_errors_total", upstream="api"), 1)
        self.assertEqual(unregister(gw, r1.url).status, 200)
        self.assertTrue(self.wait_log(gw, "boom from on_unregister", 1.0), gw.stderr()[-3000:])
        self.assertTrue(wait_until(lambda: who(gw) == (200, "s1"), 1.0), gw.stderr()[-3000:])
        self.assertIsNone(status_entry(gw, r1.url))
        self.assertRegistered(register(gw, r2.url), r2.url)
        self.assertTrue(wait_until(lambda: who(gw) == (200, "r2"), 1.0))

        cfg = basic_config(
            upstreams={"api": {"strategy": "round_robin", "backends": [s1.url]}},
            routes=[{"match": {"path_prefix": "/"}, "upstream": "api"}],
            registration={"allow": list(ALLOW)},
            hooks={"on_register": Lua('function(b) error("boom from on_register at load") end')})
        tmp = tempfile.mkdtemp(prefix="pgw-reg-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "bad-hook.lua")
        with open(path, "w") as f:
            f.write("return " + to_lua(cfg) + "\n")
        for args in ([PGW_BIN, "-t", path], [PGW_BIN, path]):
            p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, timeout=15)
            err = p.stderr.decode(errors="replace")
            self.assertEqual(p.returncode, 1, err)
            self.assertIn("hooks.on_register failed for upstreams.api.backends[1] (%s)" % s1.url, err)
            self.assertIn("boom from on_register at load", err)

    # 9 ------------------------------------------------------------------------------------------

    def test_lua_strategy_sees_membership(self):
        b1, b2 = self.backend("b1"), self.backend("b2")
        strategy = Lua(r'''{
    name = "t",
    pick = function(backends) return backends[1] end,
    on_backends_changed = function(backends, state)
        gw.log.info("CHANGED " .. #backends)
        for _, b in ipairs(backends) do
            gw.log.info("MEMBER " .. tostring(b.url) .. " weight=" .. tostring(b.weight))
        end
    end,
}''')
        gw = self.start(strategy=strategy)

        def changed():
            return re.findall(r"CHANGED (\d+)", gw.stderr())

        def step(action, expect):
            before = len(changed())
            action()
            ok = wait_until(lambda: len(changed()) > before and changed()[-1] == str(expect), 5.0)
            self.assertTrue(ok, "expected CHANGED %d after %d lines, got %r\n%s"
                            % (expect, before, changed(), gw.stderr()[-3000:]))

        step(lambda: self.assertRegistered(register(gw, b1.url), b1.url), 1)
        self.assertTrue(wait_until(lambda: who(gw) == (200, "b1"), 1.0))
        step(lambda: self.assertRegistered(register(gw, b2.url, weight=2), b2.url), 2)
        # The hook logs CHANGED, then a MEMBER line per backend: separate writes.
        self.assertTrue(wait_until(lambda: "MEMBER %s weight=2" % b2.url in gw.stderr(), 5.0),
                        gw.stderr()[-3000:])
        statuses = [who(gw) for _ in range(6)]
        self.assertEqual({s for s, _ in statuses}, {200}, statuses)
        step(lambda: self.assertEqual(unregister(gw, b1.url).status, 200), 1)
        self.assertTrue(wait_until(lambda: who(gw) == (200, "b2"), 1.0))
        self.assertEqual([who(gw) for _ in range(6)], [(200, "b2")] * 6)   # backends[1] is b2 now
        self.assertEqual(gw.metric("gw_lua_strategy_errors_total", upstream="api"), 0, gw.metrics())
        step(lambda: self.assertEqual(unregister(gw, b2.url).status, 200), 0)
        self.assertEqual(who(gw)[0], 503)

    def test_on_backends_changed_only_for_its_own_upstream(self):
        """A change in another upstream does not call a strategy's on_backends_changed; a
        heartbeat that changes a member's weight does, and one that changes nothing does not."""
        b1, b2 = self.backend("b1"), self.backend("b2")
        strategy = Lua(r'''{
    name = "t",
    pick = function(backends) return backends[1] end,
    on_backends_changed = function(backends)
        gw.log.info("CHANGED " .. #backends .. " weight=" .. tostring(backends[1] and backends[1].weight))
    end,
}''')
        gw = self.start(upstreams={"api": {"strategy": strategy, "backends": []},
                                   "other": {"strategy": "round_robin", "backends": []}},
                        upstream="api")

        def changed():
            return re.findall(r"CHANGED (\d+ weight=\w+)", gw.stderr())

        self.assertRegistered(register(gw, b1.url), b1.url)
        self.assertTrue(wait_until(lambda: changed() == ["1 weight=1"], 1.0), changed())
        self.assertEqual(register(gw, b2.url, upstream="other").status, 201)
        self.assertEqual(unregister(gw, b2.url, upstream="other").status, 200)
        self.assertRegistered(register(gw, b1.url), b1.url, status="renewed")  # no change
        self.assertRegistered(register(gw, b1.url, weight=4), b1.url, status="renewed")
        self.assertTrue(wait_until(lambda: len(changed()) == 2, 1.0), changed())
        time.sleep(0.2)
        self.assertEqual(changed(), ["1 weight=1", "1 weight=4"])

    # 10 -----------------------------------------------------------------------------------------

    def test_metrics_and_status(self):
        s = self.backend("s")
        a, b, c = self.backend("a"), self.backend("b"), self.backend("c")
        on_register = Lua('function(b, u) if b.meta.zone == "bad" then return false end end')
        gw = self.start(static=[s.url], hooks={"on_register": on_register})
        text = gw.metrics()
        self.assertRegex(text, r"(?m)^# TYPE gw_upstream_backends gauge$")
        self.assertRegex(text, r"(?m)^# TYPE gw_registrations_total counter$")
        self.assertEqual(metric_value(text, "gw_upstream_backends", upstream="api"), 1, text)

        id_a = self.assertRegistered(register(gw, a.url), a.url)
        self.assertRegistered(register(gw, a.url), a.url, status="renewed")
        self.assertRegistered(register(gw, a.url, weight=2), a.url, status="renewed")
        self.assertRegistered(register(gw, b.url, meta={"zone": "x"}), b.url)
        self.assertAdminError(register(gw, c.url, meta={"zone": "bad"}), 403, "rejected")
        self.assertEqual(unregister(gw, a.url).status, 200)
        self.assertRegistered(register(gw, c.url, ttl_ms=300), c.url, ttl_ms=300)

        def expected():
            t = gw.metrics()
            mv = lambda ev: metric_value(t, "gw_registrations_total", upstream="api", event=ev)  # noqa
            return (mv("registered"), mv("renewed"), mv("unregistered"), mv("expired"),
                    mv("rejected"), metric_value(t, "gw_upstream_backends", upstream="api"))

        # c expires after 300 ms: static s + registered b remain.
        want = (3, 2, 1, 1, 1, 2)
        wait_until(lambda: expected() == want, 1.5)
        self.assertEqual(expected(), want, "(registered, renewed, unregistered, expired, rejected, "
                         "members)\n" + gw.metrics())

        st, _, doc = get_json(gw.admin_port, "/status")
        self.assertEqual(st, 200)
        self.assertEqual(doc["workers"], 1)
        api = [u for u in doc["upstreams"] if u["name"] == "api"][0]
        self.assertEqual(api["strategy"], "round_robin")
        by_url = {e["url"]: e for e in api["backends"]}
        self.assertEqual(set(by_url), {s.url, b.url}, api)        # not a (unregistered), c (expired)
        es, eb = by_url[s.url], by_url[b.url]
        self.assertEqual((es["source"], es["member"], es["expires_in_ms"]), ("static", True, None), es)
        self.assertEqual((eb["source"], eb["member"]), ("registered", True), eb)
        self.assertGreater(eb["expires_in_ms"], 25000, eb)
        for e in (es, eb):
            self.assertIsInstance(e["id"], int, e)
            self.assertIn("weight", e)
            self.assertIn("healthy", e)
        self.assertNotEqual(es["id"], eb["id"])
        self.assertNotIn(id_a, [es["id"], eb["id"]])
        self.assertEqual(self.wait_served_by(gw, {"s", "b"}, 1.0), {"s", "b"})

    # spec extras ----------------------------------------------------------------------------------

    def test_registration_disabled(self):
        b1 = self.backend("b1")
        gw = self.gateway(basic_config(
            upstreams={"api": upstream_cfg(b1.url)},
            routes=[{"name": "all", "match": {"path_prefix": "/"}, "upstream": "api"}]))
        self.assertAdminError(register(gw, "http://127.0.0.1:9"), 403, "registration_disabled")
        self.assertAdminError(unregister(gw, b1.url), 403, "registration_disabled")
        self.assertEqual([b["url"] for b in status_backends(gw)], [b1.url])
        self.assertEqual(who(gw), (200, "b1"))

    def test_in_flight_request_survives_unregister(self):
        b1, b2 = self.backend("b1"), self.backend("b2")
        gw = self.start()
        self.assertRegistered(register(gw, b1.url), b1.url)
        self.assertTrue(wait_until(lambda: who(gw) == (200, "b1"), 1.0))
        out = {}

        def slow():
            out["r"] = http_request(gw.port, "GET", "/delay/600")

        t = threading.Thread(target=slow)
        t.start()
        self.assertTrue(wait_until(lambda: gw.metric("gw_upstream_in_flight", upstream="api") == 1,
                                   1.0), gw.metrics())
        self.assertEqual(unregister(gw, b1.url).status, 200)
        # Another backend takes over (maybe in the freed slot) while the old request runs.
        self.assertRegistered(register(gw, b2.url), b2.url)
        self.assertTrue(wait_until(lambda: who(gw) == (200, "b2"), 1.0))
        t.join(5)
        self.assertFalse(t.is_alive())
        st, _, body = out["r"]
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["backend"], "b1")
        self.assertTrue(wait_until(lambda: gw.metric("gw_upstream_in_flight", upstream="api") == 0,
                                   1.0), gw.metrics())
        self.assertEqual([who(gw) for _ in range(6)], [(200, "b2")] * 6)
        self.assertTrue(all(v >= 0 for n, _, v in parse_metrics(gw.metrics())
                            if n == "gw_upstream_in_flight"), gw.metrics())


if __name__ == "__main__":
    main()
