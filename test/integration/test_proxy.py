#!/usr/bin/env python3
"""Proxying basics: forwarding, round robin, rewrites, matching, respond routes,
header set/remove, preserve_host, X-Forwarded-*, X-Request-Id, hop-by-hop
removal in both directions, 404 for no route."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403


HOP_REQ = [
    ("Connection", "keep-alive, X-Custom-Hop"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"),
    ("TE", "trailers"),
    ("Trailer", "X-Some-Trailer"),
    ("X-Custom-Hop", "must-not-pass"),
    ("X-Normal", "passes"),
]


def py_respond(conn, req):
    """Python backend for response-header tests: answers with hop-by-hop and
    removable headers, and echoes the request as JSON."""
    body = json.dumps({"path": req.target, "headers": {k.lower(): v for k, v in req.headers}}).encode()
    conn.respond(200, body, [
        ("Content-Type", "application/json"),
        ("Server", "py-backend"),
        ("X-Internal", "secret"),
        ("X-Keep", "yes"),
        ("Connection", "X-Resp-Hop"),
        ("X-Resp-Hop", "must-not-pass"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("Proxy-Connection", "keep-alive"),
        ("Trailer", "X-Some-Trailer"),
        ("Upgrade", "h2c"),
    ])


class ProxyTest(GwTestCase):

    @classmethod
    def setUpClass(cls):
        cls.b1 = PgwBackend("b1")
        cls.b2 = PgwBackend("b2")
        cls.py = RawServer(keepalive_handler(py_respond))
        cfg = basic_config(
            upstreams={
                "pair": upstream_cfg(cls.b1.url, cls.b2.url),
                "one": upstream_cfg(cls.b1.url),
                "py": upstream_cfg(cls.py.url),
            },
            routes=[
                {"name": "api", "match": {"path_prefix": "/api/", "host": "example.com",
                                          "methods": ["GET", "POST"]},
                 "upstream": "one", "strip_prefix": True, "add_prefix": "/v1", "preserve_host": False,
                 "request_headers": {"set": {"X-From": "gw"}, "remove": ["X-Secret"]}},
                {"name": "hello", "match": {"path_prefix": "/hello"},
                 "respond": {"status": 200, "body": "hi\n", "headers": {"Content-Type": "text/plain"}}},
                {"name": "teapot", "match": {"path_prefix": "/teapot"},
                 "respond": {"status": 418, "body": "short and stout"}},
                {"name": "ph", "match": {"path_prefix": "/ph/"}, "upstream": "one", "preserve_host": True},
                {"name": "rr", "match": {"path_prefix": "/rr/"}, "upstream": "pair"},
                {"name": "strip", "match": {"path_prefix": "/s/"}, "upstream": "one", "strip_prefix": True},
                {"name": "pyr", "match": {"path_prefix": "/py/"}, "upstream": "py",
                 "response_headers": {"set": {"X-Served-By": "pgw"}, "remove": ["Server", "X-Internal"]}},
                {"name": "keep", "match": {"path_prefix": "/keep/"}, "upstream": "one"},
            ])
        cls.gw = Gateway(cfg)

    @classmethod
    def tearDownClass(cls):
        stop_shared(cls.gw, cls.py.close, cls.b1.stop, cls.b2.stop)

    def echo(self, path, headers=None, method="GET", body=None, host="localhost"):
        with self.gw.client() as c:
            c.request(method, path, headers=headers, body=body, host=host)
            r = c.read_response(method)
        self.assertEqual(r.status, 200, r)
        return r, r.json()

    # --- forwarding ---------------------------------------------------------

    def test_get_forwarded(self):
        r, j = self.echo("/keep/a/b?x=1&y=2")
        self.assertEqual(j["backend"], "b1")
        self.assertEqual(j["method"], "GET")
        self.assertEqual(j["path"], "/keep/a/b?x=1&y=2")
        self.assertEqual(j["body_bytes"], 0)

    def test_post_forwarded(self):
        body = os.urandom(5000)
        r, j = self.echo("/keep/post", method="POST", body=body,
                         headers={"Content-Type": "application/octet-stream"})
        self.assertEqual(j["method"], "POST")
        self.assertEqual(j["body_bytes"], 5000)
        self.assertEqual(crc_of(j), zlib.crc32(body))
        self.assertEqual(j["headers"].get("content-type"), "application/octet-stream")

    def test_post_echo_body(self):
        body = b"hello through the gateway" * 100
        with self.gw.client() as c:
            c.request("POST", "/s/echo", body=body)
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, body)

    def test_round_robin_spreads(self):
        counts = {}
        for i in range(20):
            status, _, body = self.gw.get("/rr/x%d" % i)
            self.assertEqual(status, 200)
            name = json.loads(body)["backend"]
            counts[name] = counts.get(name, 0) + 1
        self.assertEqual(counts, {"b1": 10, "b2": 10})

    def test_round_robin_on_one_connection(self):
        counts = {}
        with self.gw.client() as c:
            for i in range(10):
                c.request("GET", "/rr/ka%d" % i)
                r = c.read_response()
                self.assertEqual(r.status, 200, r)
                counts[r.json()["backend"]] = counts.get(r.json()["backend"], 0) + 1
        self.assertEqual(counts, {"b1": 5, "b2": 5})

    # --- rewrites and matching ---------------------------------------------

    def test_strip_and_add_prefix(self):
        r, j = self.echo("/api/users/42?q=z", host="example.com")
        self.assertEqual(j["path"], "/v1/users/42?q=z")

    def test_strip_prefix_only(self):
        r, j = self.echo("/s/deep/path")
        self.assertEqual(j["path"], "/deep/path")

    def test_host_mismatch_falls_through_to_404(self):
        with self.gw.client() as c:
            c.request("GET", "/api/users", host="other.com")
            r = c.read_response()
        self.assertJsonError(r, 404)

    def test_method_mismatch_falls_through_to_404(self):
        with self.gw.client() as c:
            c.request("PUT", "/api/users", host="example.com", body=b"x")
            r = c.read_response()
        self.assertJsonError(r, 404)

    def test_method_post_matches(self):
        r, j = self.echo("/api/p", method="POST", body=b"abc", host="example.com")
        self.assertEqual(j["method"], "POST")
        self.assertEqual(j["path"], "/v1/p")
        self.assertEqual(j["body_bytes"], 3)

    def test_no_route_404_json(self):
        with self.gw.client() as c:
            c.request("GET", "/nothing/here")
            r = c.read_response()
            self.assertJsonError(r, 404)
            # The connection stays usable after a gateway-generated 404.
            c.request("GET", "/hello")
            r2 = c.read_response()
        self.assertEqual(r2.status, 200)
        self.assertEqual(r2.body, b"hi\n")

    # --- respond routes -------------------------------------------------------

    def test_respond_route(self):
        with self.gw.client() as c:
            c.request("GET", "/hello")
            r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"hi\n")
        self.assertEqual(r.header("content-type"), "text/plain")
        self.assertTrue(r.header("x-request-id"))

    def test_respond_route_head(self):
        with self.gw.client() as c:
            c.request("HEAD", "/hello")
            r = c.read_response("HEAD")
            self.assertEqual(r.status, 200)
            cl = r.header("content-length")
            self.assertIn(cl, (None, "3"))
            # No body bytes may follow a HEAD response: the next response parses.
            c.request("GET", "/hello")
            r2 = c.read_response()
        self.assertEqual(r2.status, 200)
        self.assertEqual(r2.body, b"hi\n")

    def test_respond_route_other_status(self):
        with self.gw.client() as c:
            c.request("GET", "/teapot")
            r = c.read_response()
        self.assertEqual(r.status, 418)
        self.assertEqual(r.body, b"short and stout")

    # --- request/response header rewriting -----------------------------------

    def test_request_headers_set_remove(self):
        r, j = self.echo("/api/h", host="example.com",
                         headers={"X-Secret": "s3cr3t", "X-From": "client", "X-Other": "o"})
        h = j["headers"]
        self.assertEqual(h.get("x-from"), "gw")
        self.assertNotIn("x-secret", h)
        self.assertEqual(h.get("x-other"), "o")

    def test_response_headers_set_remove(self):
        with self.gw.client() as c:
            c.request("GET", "/py/resp")
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("x-served-by"), "pgw")
        self.assertIsNone(r.header("x-internal"))
        self.assertNotIn("py-backend", r.headers.get_all("server"))
        self.assertEqual(r.header("x-keep"), "yes")

    def test_preserve_host_false(self):
        r, j = self.echo("/keep/h", host="client.example")
        self.assertEqual(j["headers"].get("host"), "127.0.0.1:%d" % self.b1.port)

    def test_preserve_host_true(self):
        r, j = self.echo("/ph/h", host="client.example:8443")
        self.assertEqual(j["headers"].get("host"), "client.example:8443")

    def test_x_forwarded(self):
        r, j = self.echo("/keep/xf", host="front.example")
        h = j["headers"]
        self.assertEqual(h.get("x-forwarded-for"), "127.0.0.1")
        self.assertEqual(h.get("x-forwarded-proto"), "http")
        self.assertEqual(h.get("x-forwarded-host"), "front.example")

    def test_x_forwarded_for_appended(self):
        r, j = self.echo("/keep/xff", headers={"X-Forwarded-For": "203.0.113.9"})
        xff = [p.strip() for p in j["headers"].get("x-forwarded-for", "").split(",")]
        self.assertEqual(xff, ["203.0.113.9", "127.0.0.1"])

    def test_request_id_kept(self):
        r, j = self.echo("/keep/rid", headers={"X-Request-Id": "abc-123-client"})
        self.assertEqual(r.header("x-request-id"), "abc-123-client")
        self.assertEqual(j["headers"].get("x-request-id"), "abc-123-client")

    def test_request_id_generated(self):
        r1, j1 = self.echo("/keep/rid1")
        r2, j2 = self.echo("/keep/rid2")
        id1, id2 = r1.header("x-request-id"), r2.header("x-request-id")
        self.assertTrue(id1)
        self.assertTrue(id2)
        self.assertNotEqual(id1, id2)
        self.assertEqual(j1["headers"].get("x-request-id"), id1)
        self.assertEqual(len(r1.headers.get_all("x-request-id")), 1)

    # --- hop-by-hop ---------------------------------------------------------

    def test_hop_by_hop_removed_upstream(self):
        r, j = self.echo("/keep/hop", headers=HOP_REQ)
        h = j["headers"]
        for name in ("keep-alive", "proxy-connection", "te", "trailer", "x-custom-hop", "transfer-encoding",
                     "upgrade"):
            self.assertNotIn(name, h, "hop-by-hop %r reached the backend: %r" % (name, h))
        # The gateway may send its own Connection header upstream, never the client's.
        self.assertIn(h.get("connection", "keep-alive").lower(), ("keep-alive", "close"), h)
        self.assertEqual(h.get("x-normal"), "passes")

    def test_hop_by_hop_removed_downstream(self):
        with self.gw.client() as c:
            c.request("GET", "/py/hop")
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            for name in ("x-resp-hop", "keep-alive", "proxy-connection", "trailer", "upgrade"):
                self.assertIsNone(r.header(name), "hop-by-hop %r reached the client: %r" % (name, r.headers))
            for v in r.headers.tokens("connection"):
                self.assertIn(v, ("keep-alive", "close"), r.headers)
            # The response was framed so the connection is still usable.
            c.request("GET", "/hello")
            self.assertEqual(c.read_response().body, b"hi\n")


if __name__ == "__main__":
    main()
