#!/usr/bin/env python3
"""Request targets, end to end: routes match on the canonical path, so no spelling of
"/admin/secret.txt" gets past a route that guards "/admin/" (escaped letters, "//", dot segments,
";" parameters, encoded slashes and backslashes), while the backend gets the target exactly as
the client sent it unless the route rewrites the path. Bad escapes, %00, fragments and Hosts
that are not an authority get a 400 and never reach the backend; an HTTP/1.0 client never gets
a 100 Continue. Every case sends raw bytes and checks both the client's answer and the request
line the backend read."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403

NEED_KEY = Lua('function(req) if req:header("X-Api-Key") ~= "k" then '
               'return 401, "api key required\\n" end end')
SHOW_PATHS = Lua('function(req) return 200, "path=" .. req:path() .. " orig=" .. req:orig_path() '
                 '.. " query=" .. req:query() end')


def echo_target(conn, req):
    conn.respond(200, req.target.encode("latin-1"), {"Content-Type": "text/plain"})


class CanonicalTest(RawBackendTestCase):
    HANDLER = staticmethod(keepalive_handler(echo_target))

    @classmethod
    def routes(cls):
        return [
            {"name": "admin", "match": {"path_prefix": "/admin/"}, "upstream": "py",
             "on_request": NEED_KEY},
            {"name": "ids", "match": {"path_prefix": "/ids/"}, "upstream": "py",
             "encoded_slash": "decode"},
            {"name": "p", "match": {"path_prefix": "/p/"}, "upstream": "py",
             "encoded_slash": "decode"},
            {"name": "raw", "match": {"path_prefix": "//raw/"}, "upstream": "py",
             "merge_slashes": False},
            {"name": "norm", "match": {"path_prefix": "/norm/"}, "upstream": "py",
             "normalize_path": True},
            {"name": "strip", "match": {"path_prefix": "/strip/"}, "upstream": "py",
             "strip_prefix": True, "add_prefix": "/v2"},
            {"name": "lua", "match": {"path_prefix": "/lua/"}, "upstream": "py",
             "on_request": SHOW_PATHS},
            {"name": "files", "match": {"path_prefix": "/"}, "upstream": "py"},
        ]

    def exchange(self, raw):
        """Sends raw bytes on a fresh connection; returns the response and the request lines the
        backend read meanwhile."""
        if isinstance(raw, str):
            raw = raw.encode("latin-1")
        with self.gw.client() as c:
            c.send(raw)
            r = c.read_response()
        time.sleep(0.05)
        lines = [q.raw_head.split(b"\r\n", 1)[0] for q in self.py.requests[self.before:]]
        self.before = len(self.py.requests)
        return r, lines

    def get(self, target, headers=b""):
        if isinstance(target, str):
            target = target.encode("latin-1")
        return self.exchange(b"GET " + target + b" HTTP/1.1\r\nHost: files.test\r\n" + headers +
                             b"\r\n")

    def assertForwarded(self, target, sent=None, headers=b""):
        """`target` reaches the backend as `sent` (default: byte for byte) and its answer comes
        back."""
        sent = target if sent is None else sent
        r, lines = self.get(target, headers)
        self.assertEqual(r.status, 200, (target, r))
        self.assertEqual(lines, [b"GET " + sent.encode("latin-1") + b" HTTP/1.1"], target)
        self.assertEqual(r.body, sent.encode("latin-1"))

    def assertRefused(self, target, status, message=None, host=b"files.test"):
        if isinstance(target, str):
            target = target.encode("latin-1")
        r, lines = self.exchange(b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        self.assertEqual(r.status, status, (target, host, r))
        if status == 400:
            self.assertJsonError(r, 400, "bad_request")
            if message:
                self.assertEqual(r.json()["message"], message, (target, host))
        self.assertEqual(lines, [], "the backend saw %r for %r" % (lines, target))
        return r

    # --- every spelling of a guarded path is guarded --------------------------------------------

    BYPASSES = [
        "/admin/secret.txt",
        "/%61dmin/secret.txt",
        "/%61%64%6D%69%6e/secret.txt",
        "/admin/%73ecret.txt",
        "//admin/secret.txt",
        "///admin//secret.txt",
        "/./admin/secret.txt",
        "/public/../admin/secret.txt",
        "/public/%2e%2e/admin/secret.txt",
        "/public/.%2E/admin/secret.txt",
        "/public/%2e%2e//admin/secret.txt",
        "/admin;x/secret.txt",
        "/admin;/secret.txt",
        "/public/..;/admin/secret.txt",
        "/;x/admin/secret.txt",
        "/admin/secret.txt?x=1",
    ]

    def test_bypass_forms_need_the_key(self):
        for t in self.BYPASSES:
            r, lines = self.get(t)
            self.assertEqual((r.status, r.body), (401, b"api key required\n"), t)
            self.assertEqual(lines, [], t)

    def test_bypass_forms_with_the_key_go_upstream_as_sent(self):
        for t in self.BYPASSES:
            self.assertForwarded(t, headers=b"X-Api-Key: k\r\n")

    def test_encoded_slash_and_backslash_refused(self):
        msg = "an encoded slash or a backslash in the request path"
        for t in ["/admin%2fsecret.txt", "/admin%2Fsecret.txt", "/admin%5csecret.txt",
                  "/admin%5Csecret.txt", "/admin\\secret.txt", "/%61dmin%2Fsecret.txt",
                  "/public/..%2Fadmin/secret.txt", "/other%2Fx", "/a/b%2f", "/x\\..\\admin"]:
            self.assertRefused(t, 400, msg)

    def test_encoded_slash_decoded_on_routes_that_ask(self):
        # Decoded for matching only: the backend gets the client's bytes.
        self.assertForwarded("/ids/group%2Fproject")
        self.assertForwarded("/ids/group%2fproject%5Cx")
        self.assertForwarded("/p/a%2Fb/./c/../d?x=%2e&y=/../z")
        # Decoded, this one is "/admin/secret.txt": the admin route refuses it rather than let
        # it through to a route that decodes.
        self.assertRefused("/ids/a%2F..%2F..%2Fadmin/secret.txt", 400,
                           "an encoded slash or a backslash in the request path")

    def test_bad_escapes_and_nul_refused(self):
        msg = "invalid percent-encoding in the request path"
        for t in ["/a%zz", "/a%2", "/a%", "/a%%41", "/a%g1", "/a%00b", "/admin%00/secret.txt",
                  "/ids/%00", "/a;%zz/b"]:
            self.assertRefused(t, 400, msg)

    def test_double_encoding_stays_literal(self):
        # "%252e%252e" is not "..": it routes to the catch-all and goes upstream unchanged.
        self.assertForwarded("/%252e%252e/admin/secret.txt")
        self.assertForwarded("/%252561dmin/secret.txt")
        self.assertForwarded("/a/%252F")

    # --- what goes upstream -------------------------------------------------------------------

    def test_target_forwarded_as_sent(self):
        for t in ["/x/./y/../z//w?q=1", "/x/%7euser/%41", "/files;v=1/a", "/a%3fb%3Bc",
                  "/caf%c3%a9", "/x?", "/x?a=/../b&c=%2F", "/?q", "/.."]:
            self.assertForwarded(t)

    def test_absolute_form_goes_upstream_in_origin_form(self):
        # RFC 9112 §3.2.2: the authority replaces Host; an empty path stands for "/", and the
        # query stays with it.
        for target, sent in [(b"http://files.test/x?q=1", b"/x?q=1"), (b"http://files.test", b"/"),
                             (b"http://files.test?q=1", b"/?q=1"),
                             (b"HTTP://files.test:80?a=/b", b"/?a=/b")]:
            r, lines = self.exchange(b"GET " + target + b" HTTP/1.1\r\nHost: other\r\n\r\n")
            self.assertEqual(r.status, 200, (target, r))
            self.assertEqual(lines, [b"GET " + sent + b" HTTP/1.1"], target)

    def test_merge_slashes_off(self):
        self.assertForwarded("//raw//x")
        # With merging on (the catch-all), "/raw/x" is an ordinary path.
        self.assertForwarded("/raw/x")

    def test_normalize_path_forwards_the_canonical_path(self):
        self.assertForwarded("/norm//a/./b/../%63;p=1?q=%2e&r=/../", "/norm/a/c?q=%2e&r=/../")
        self.assertForwarded("/norm/%7E/%3f", "/norm/~/%3F")

    def test_strip_prefix_rewrites_the_canonical_path(self):
        self.assertForwarded("/strip//x/%61b?k=v", "/v2/x/ab?k=v")
        self.assertForwarded("/%73trip/", "/v2/")

    def test_hooks_see_the_canonical_path(self):
        r, lines = self.get("/lua//a/%62/../c;p?q=%2e")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"path=/lua/a/c orig=/lua//a/%62/../c;p query=q=%2e")
        self.assertEqual(lines, [])
        r, lines = self.exchange(b"GET http://files.test/%6cua/x HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(r.body, b"path=/lua/x orig=/%6cua/x query=")

    # --- fragments and Host -------------------------------------------------------------------

    def test_fragment_refused(self):
        msg = "a request target must not have a fragment"
        for t in ["/a#f", "/admin/secret.txt#", "/x?q#f", "/#", "/a%2F#f", "http://files.test/a#f"]:
            self.assertRefused(t, 400, msg)

    def test_invalid_host_refused(self):
        for host in [b"u@h", b"user:pw@h:80", b"h/x", b"h?x", b"h:80x", b"h:80:80", b"h:65536",
                     b"[::1", b"[::1]x", b"[::1]:80:80", b"[zz::1]", b"::1", b"h x", b"h\tx",
                     b":80", b"h%zz", b"h,x\\"]:
            self.assertRefused("/x", 400, "invalid Host", host=host)
        for t in [b"http://u@h/x", b"http://h:80x/x", b"http://[::1/x"]:
            self.assertRefused(t, 400, "invalid Host")

    def test_valid_hosts_accepted(self):
        for host in [b"h", b"H.Example.COM.", b"h:8080", b"h:", b"127.0.0.1:1", b"[::1]",
                     b"[::1]:8080", b"[2001:db8::1]:", b"[v1.x:y]", b"a-b_c~d!$&'()*+,;=", b"ex%41mple"]:
            r, lines = self.exchange(b"GET /ok HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            self.assertEqual(r.status, 200, (host, r))
            self.assertEqual(lines, [b"GET /ok HTTP/1.1"], host)
            self.assertEqual(self.py.requests[-1].headers.get("x-forwarded-host"),
                             host.decode("latin-1"))
        # HTTP/1.0 may leave Host out; an empty Host is what RFC 9112 asks for without one.
        r, lines = self.exchange(b"GET /ok HTTP/1.0\r\n\r\n")
        self.assertEqual((r.status, lines), (200, [b"GET /ok HTTP/1.1"]))
        r, lines = self.exchange(b"GET /ok HTTP/1.1\r\nHost:\r\n\r\n")
        self.assertEqual((r.status, lines), (200, [b"GET /ok HTTP/1.1"]))

    # --- Expect on HTTP/1.0 -------------------------------------------------------------------

    def expect_exchange(self, version, expect):
        with self.gw.client() as c:
            c.send(b"POST /upload " + version + b"\r\nHost: files.test\r\nContent-Length: 5\r\n"
                   b"Expect: " + expect + b"\r\n\r\n")
            self.assertTrue(self.py.wait_requests(self.before + 1), "the head never reached the backend")
            time.sleep(0.3)  # time for a 100 Continue to arrive, if one were sent
            early = c.buf
            try:
                c.sock.settimeout(0.01)
                early += c.sock.recv(4096)
            except (socket.timeout, BlockingIOError):
                pass
            c.buf = early
            c.send(b"hello")
            r = c.read_response("POST")
        q = self.py.requests[self.before]
        self.before = len(self.py.requests)
        return early, r, q

    def test_http10_expect_is_ignored(self):
        for expect in [b"100-continue", b"something-else"]:
            early, r, q = self.expect_exchange(b"HTTP/1.0", expect)
            self.assertFalse(early.startswith(b"HTTP/1.1 100"), early)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.interim, [])
            self.assertEqual(q.raw_head.split(b"\r\n", 1)[0], b"POST /upload HTTP/1.1")
            self.assertIsNone(q.headers.get("expect"))
            self.assertEqual(q.body, b"hello")

    def test_http11_expect_still_gets_100(self):
        early, r, q = self.expect_exchange(b"HTTP/1.1", b"100-continue")
        self.assertTrue(early.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), early)
        self.assertEqual(r.status, 200)
        self.assertEqual(q.body, b"hello")


if __name__ == "__main__":
    unittest.main()
