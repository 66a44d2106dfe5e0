#!/usr/bin/env python3
"""What a proxy must do with what the backend answers, and with the headers it forwards
(RFC 9110 §7.6, §7.8, §15.2; RFC 9112 §5): 1xx interim responses, Via, X-Forwarded-For with
several lines, Upgrade/101, and malformed response heads.

The backend is a raw socket that records the exact bytes it receives and answers with scripted
bytes, so every test checks both what the client gets and what the backend was sent."""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403

RID = "test-rid-0001"  # sent by the client, so the forwarded head is exact


def scripted(conn):
    """Handler: each request is answered by server.state["answer"](conn, req), which returns
    "again" to read the next request on this connection, or "eof" to wait for the gateway to
    close it (recorded in server.state["eof"] with the seconds it took)."""
    while True:
        req = conn.read_request()
        what = conn.server.state["answer"](conn, req)
        if what == "eof":
            t = time.monotonic()
            closed = conn.wait_eof(5)
            conn.server.state.setdefault("eof", []).append(
                time.monotonic() - t if closed else None)
            return
        if what != "again":
            return


def forwarded_head(request_line, headers, backend_port, client_host="a", via="1.1 prequal-gw",
                   xff="127.0.0.1", tail=()):
    """The exact head the gateway sends upstream for a request with `headers` (end-to-end ones,
    in order) from 127.0.0.1 with `X-Request-Id: RID`."""
    lines = [request_line] + ["%s: %s" % kv for kv in headers]
    if via:
        lines.append("Via: " + via)
    lines += ["X-Forwarded-For: " + xff, "X-Forwarded-Proto: http"]
    if client_host:
        lines.append("X-Forwarded-Host: " + client_host)
    lines.append("X-Request-Id: " + RID)
    lines += list(tail)
    lines.append("Host: 127.0.0.1:%d" % backend_port)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class UpstreamResponseCase(RawBackendTestCase):
    HANDLER = staticmethod(scripted)
    READ_MS = 1000

    @classmethod
    def upstream(cls):
        return upstream_cfg(cls.py.url, retries={"max": 0}, timeouts={"read_ms": cls.READ_MS})

    def setUp(self):
        super().setUp()
        self.py.state.pop("eof", None)

    def fetch(self, method, path, body=None):
        """One request with X-Request-Id: RID and Host: a on a fresh connection; its response."""
        with self.gw.client() as c:
            c.request(method, path, headers={"X-Request-Id": RID}, body=body, host="a")
            return c.read_response()

    def answer(self, fn):
        self.py.state["answer"] = fn

    def seen(self):
        self.assertTrue(self.py.wait_requests(self.before + 1), "the backend saw no request")
        return self.py.requests[self.before:]

    def assertForwarded(self, i, want):
        got = self.seen()[i].raw_head
        self.assertEqual(got, want, "\nbackend got:  %r\nexpected:     %r" % (got, want))

    def assertUpstreamClosed(self, within=2.0):
        ok = wait_until(lambda: self.py.state.get("eof"), 6)
        self.assertTrue(ok, "the backend's connection was not closed")
        self.assertIsNotNone(ok[0], "the backend's connection was not closed")
        self.assertLess(ok[0], within)


class InterimTest(UpstreamResponseCase):
    """1xx responses: relayed to HTTP/1.1 clients, dropped for HTTP/1.0 clients."""
    READ_MS = 1500

    def test_103_relayed_then_final(self):
        def answer(conn, req):
            conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n"
                      b"Keep-Alive: timeout=5\r\n\r\n")
            conn.respond(200, b"final", {"Content-Type": "text/plain"})
            return "again"
        self.answer(answer)
        with self.gw.client() as c:
            c.request("GET", "/hints", headers={"X-Request-Id": RID}, host="a")
            r = c.read_response()
            self.assertEqual(len(r.interim), 1, r.interim)
            # Hop-by-hop fields go, Via is added: the same rules as for a final response.
            self.assertEqual(r.interim[0].raw_head,
                             b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n"
                             b"Via: 1.1 prequal-gw\r\n\r\n")
            self.assertEqual((r.status, r.body), (200, b"final"))
            self.assertEqual(r.header("via"), "1.1 prequal-gw")
            # The connection goes on as usual.
            c.request("GET", "/again", headers={"X-Request-Id": RID}, host="a")
            r2 = c.read_response()
            self.assertEqual((r2.status, len(r2.interim)), (200, 1))
        self.assertForwarded(0, forwarded_head("GET /hints HTTP/1.1", [], self.py.port))
        self.assertForwarded(1, forwarded_head("GET /again HTTP/1.1", [], self.py.port))

    def test_several_interim_responses_in_one_read(self):
        def answer(conn, req):
            conn.send(b"HTTP/1.1 100 Continue\r\n\r\n"
                      b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>\r\n\r\n"
                      b"HTTP/1.1 102 Processing\r\n\r\n"
                      + build_response(201, b"made"))
            return "again"
        self.answer(answer)
        r = self.fetch("POST", "/make", body=b"abc")
        self.assertEqual([i.status for i in r.interim], [100, 103, 102])
        self.assertEqual([i.header("link") for i in r.interim], [None, "</a.js>", None])
        self.assertEqual((r.status, r.body), (201, b"made"))
        self.assertForwarded(0, forwarded_head("POST /make HTTP/1.1", [], self.py.port,
                                               tail=["Content-Length: 3"]))
        self.assertEqual(self.seen()[0].body, b"abc")

    def test_failure_after_an_interim_response_is_answered(self):
        def answer(conn, req):
            conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </f>\r\n\r\nHTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n")
            return "eof"
        self.answer(answer)
        r = self.fetch("GET", "/f")
        self.assertEqual([i.status for i in r.interim], [103])
        self.assertJsonError(r, 502, "upstream_protocol_error")
        self.assertUpstreamClosed()
        self.assertForwarded(0, forwarded_head("GET /f HTTP/1.1", [], self.py.port))

    def test_interim_responses_to_a_slow_client(self):
        # More 1xx bytes than the sockets buffer, to a client that does not read for longer than
        # read_ms: the gateway stops reading the backend while a 1xx waits for the client (the
        # read timeout does not run then), and relays them all in order once it reads.
        link = "</%s>; rel=preload" % ("p" * 20000)
        n = 150

        def answer(conn, req):
            for i in range(n):
                conn.send(b"HTTP/1.1 103 Early Hints\r\nX-N: %d\r\nLink: %s\r\n\r\n"
                          % (i, link.encode()))
            conn.respond(200, b"after the hints")
            return "again"
        self.answer(answer)
        c = Client(self.gw.port, timeout=20, rcvbuf=4096)
        try:
            c.request("GET", "/many", headers={"X-Request-Id": RID}, host="a")
            time.sleep(2.0)
            r = c.read_response()
        finally:
            c.close()
        self.assertEqual((r.status, r.body), (200, b"after the hints"))
        self.assertEqual([i.header("x-n") for i in r.interim], [str(i) for i in range(n)])
        self.assertTrue(all(i.header("link") == link for i in r.interim))
        self.assertForwarded(0, forwarded_head("GET /many HTTP/1.1", [], self.py.port))

    def test_each_interim_restarts_the_read_timeout(self):
        # read_ms is 1500; the final response comes 2.7 s after the request, 0.9 s after the
        # last interim one.
        def answer(conn, req):
            for _ in range(2):
                time.sleep(0.9)
                conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
            time.sleep(0.9)
            conn.respond(200, b"late")
            return "again"
        self.answer(answer)
        r = self.fetch("GET", "/slow")
        self.assertEqual((r.status, r.body, len(r.interim)), (200, b"late", 2))
        self.assertForwarded(0, forwarded_head("GET /slow HTTP/1.1", [], self.py.port))

    def test_read_timeout_without_interim_responses(self):
        # The control for the test above: the same delay with no 1xx is a 504.
        def answer(conn, req):
            time.sleep(2.7)
            conn.respond(200, b"late")
            return "again"
        self.answer(answer)
        r = self.fetch("GET", "/slow")
        self.assertJsonError(r, 504, "upstream_timeout")

    def test_http10_client_never_sees_a_1xx(self):
        def answer(conn, req):
            conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
                      b"HTTP/1.1 100 Continue\r\n\r\n")
            conn.respond(200, b"for 1.0")
            return "again"
        self.answer(answer)
        with self.gw.client() as c:
            c.send(b"GET /old HTTP/1.0\r\nX-Request-Id: " + RID.encode() + b"\r\n\r\n")
            raw = c.read_until_close(5)
        self.assertTrue(raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw)
        self.assertNotIn(b" 103 ", raw)
        self.assertNotIn(b" 100 ", raw)
        self.assertTrue(raw.endswith(b"\r\n\r\nfor 1.0"), raw)
        self.assertForwarded(0, forwarded_head("GET /old HTTP/1.1", [], self.py.port,
                                               client_host=None, via="1.0 prequal-gw"))

    def test_backend_100_not_repeated_after_the_gateways_own(self):
        # The gateway answers Expect itself (and does not forward it): the backend's 100 would
        # be a second one.
        def answer(conn, req):
            conn.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </e>\r\n\r\n")
            conn.respond(200, b"got %d" % len(req.body))
            return "again"
        self.answer(answer)
        with self.gw.client() as c:
            c.request("POST", "/up", headers={"X-Request-Id": RID, "Expect": "100-continue",
                                              "Content-Length": "4"}, host="a")
            first = c.read_interim_or_final(timeout=5)
            self.assertEqual(first.status, 100, first)
            c.send(b"body")
            r = c.read_response()
        self.assertEqual([i.status for i in r.interim], [103])
        self.assertEqual((r.status, r.body), (200, b"got 4"))
        self.assertForwarded(0, forwarded_head("POST /up HTTP/1.1", [], self.py.port,
                                               tail=["Content-Length: 4"]))


class InterimThenFailureTest(GwTestCase):
    """An error the gateway must answer while a relayed 1xx still waits for a slow client."""

    def test_body_timeout_while_a_1xx_waits_for_the_client(self):
        link = "</%s>" % ("q" * 20000)

        def backend(conn):
            conn.read_request(read_body=False)
            for i in range(150):
                conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: %s\r\n\r\n" % link.encode())
            conn.wait_eof(10)
        py = self.raw_server(backend)
        gw = self.gateway(basic_config(
            upstreams={"py": upstream_cfg(py.url, retries={"max": 0}, timeouts={"read_ms": 10000})},
            routes=[{"match": {"path_prefix": "/"}, "upstream": "py"}],
            timeouts={"body_ms": 1000}))
        c = Client(gw.port, timeout=20, rcvbuf=4096)
        try:
            # Half the body, then nothing: body_ms runs out while 1xx bytes are still queued
            # for this client, which reads nothing until then.
            c.request("POST", "/up", headers={"X-Request-Id": RID, "Content-Length": "10"},
                      body=None, host="a")
            c.send(b"12345")
            time.sleep(2.5)
            raw = c.read_until_close(10)
        finally:
            c.close()
        # The 408 cannot follow a half-written 1xx: the connection is closed instead, and what
        # did arrive is only 103s.
        self.assertTrue(raw.startswith(b"HTTP/1.1 103 Early Hints\r\n"), raw[:100])
        self.assertNotIn(b"HTTP/1.1 408", raw)
        self.assertNotIn(b"request_timeout", raw)
        self.assertEqual(raw.count(b"HTTP/1.1 "), raw.count(b"HTTP/1.1 103 Early Hints\r\n"))
        self.assertTrue(py.wait_requests(1))
        self.assertEqual(py.requests[0].raw_head, forwarded_head(
            "POST /up HTTP/1.1", [], py.port, tail=["Content-Length: 10"]))
        # The log says what the gateway would have answered.
        lines = wait_until(gw.access_log_lines, 5)
        self.assertEqual([json.loads(l)["status"] for l in lines], [408])


class ViaAndForwardedForTest(UpstreamResponseCase):

    def test_via_appended_both_ways(self):
        def answer(conn, req):
            conn.respond(200, b"ok", [("Via", "1.1 cache-a"), ("Via", "1.0 cache-b")])
            return "again"
        self.answer(answer)
        with self.gw.client() as c:
            c.request("GET", "/v", host="a", headers=[
                ("Via", "1.0 fred, 1.1 p.example.net"), ("X-Request-Id", RID), ("Via", "1.1 x")])
            r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers.get_all("via"), ["1.1 cache-a, 1.0 cache-b, 1.1 prequal-gw"])
        self.assertForwarded(0, forwarded_head(
            "GET /v HTTP/1.1", [], self.py.port,
            via="1.0 fred, 1.1 p.example.net, 1.1 x, 1.1 prequal-gw"))

    def test_via_names_the_version_received(self):
        # An HTTP/1.0 response from the backend, an HTTP/1.1 client.
        def answer(conn, req):
            conn.send(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return "eof"
        self.answer(answer)
        r = self.fetch("GET", "/v10")
        self.assertEqual((r.status, r.header("via")), (200, "1.0 prequal-gw"))
        self.assertForwarded(0, forwarded_head("GET /v10 HTTP/1.1", [], self.py.port))

    def test_x_forwarded_for_lines_combined_in_order(self):
        self.answer(lambda conn, req: conn.respond(200, b"ok") or "again")
        with self.gw.client() as c:
            c.request("GET", "/xff", host="a", headers=[
                ("X-Forwarded-For", "203.0.113.9"), ("X-Request-Id", RID),
                ("x-forwarded-for", "198.51.100.7, 10.1.1.1"), ("X-Keep", "1")])
            r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertForwarded(0, forwarded_head(
            "GET /xff HTTP/1.1", [("X-Keep", "1")], self.py.port,
            xff="203.0.113.9, 198.51.100.7, 10.1.1.1, 127.0.0.1"))


    def test_connection_lines_are_one_list_both_ways(self):
        # A name on any Connection line is hop-by-hop (RFC 9110 §7.6.1), not only the last line's.
        def answer(conn, req):
            conn.respond(200, b"ok", [("Connection", "x-up-secret"), ("X-Up-Secret", "s"),
                                      ("X-Up-Keep", "k"), ("Connection", "keep-alive")])
            return "again"
        self.answer(answer)
        with self.gw.client() as c:
            c.request("GET", "/conn", host="a", headers=[
                ("Connection", "X-Secret"), ("X-Secret", "1"), ("X-Request-Id", RID),
                ("X-Keep", "2"), ("Connection", "keep-alive")])
            r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertIsNone(r.header("x-up-secret"))
        self.assertEqual(r.header("x-up-keep"), "k")
        self.assertForwarded(0, forwarded_head("GET /conn HTTP/1.1", [("X-Keep", "2")],
                                               self.py.port))

class ViaConfigTest(GwTestCase):
    """`via` names the gateway in Via, or (false) leaves Via alone."""

    def run_one(self, via):
        py = self.raw_server(scripted)
        py.state["answer"] = lambda conn, req: conn.respond(200, b"ok", {"Via": "1.1 origin"}) or "again"
        gw = self.gateway(basic_config(upstreams={"py": upstream_cfg(py.url)},
                                       routes=[{"match": {"path_prefix": "/"}, "upstream": "py"}],
                                       via=via))
        with gw.client() as c:
            c.request("GET", "/", host="a", headers=[("Via", "1.1 client-proxy"), ("X-Request-Id", RID)])
            r = c.read_response()
        self.assertTrue(py.wait_requests(1))
        return r, py

    def test_custom_pseudonym(self):
        r, py = self.run_one("edge-7")
        self.assertEqual(r.headers.get_all("via"), ["1.1 origin, 1.1 edge-7"])
        self.assertEqual(py.requests[0].raw_head, forwarded_head(
            "GET / HTTP/1.1", [], py.port, via="1.1 client-proxy, 1.1 edge-7"))

    def test_via_false_leaves_via_alone(self):
        r, py = self.run_one(False)
        self.assertEqual(r.headers.get_all("via"), ["1.1 origin"])
        self.assertEqual(py.requests[0].raw_head, forwarded_head(
            "GET / HTTP/1.1", [("Via", "1.1 client-proxy")], py.port, via=None))


class UpgradeTest(UpstreamResponseCase):
    READ_MS = 5000

    def test_h2c_is_not_offered_upstream(self):
        self.answer(lambda conn, req: conn.respond(200, b"http/1.1 it is") or "again")
        with self.gw.client() as c:
            c.request("GET", "/h2c", host="a", headers=[
                ("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"), ("X-Request-Id", RID)])
            r = c.read_response()
            self.assertEqual((r.status, r.body), (200, b"http/1.1 it is"))
            # The upgrade did not happen, so the connection goes on in HTTP/1.1.
            c.request("GET", "/next", host="a", headers={"X-Request-Id": RID})
            self.assertEqual(c.read_response().status, 200)
        self.assertForwarded(0, forwarded_head("GET /h2c HTTP/1.1", [], self.py.port))
        self.assertForwarded(1, forwarded_head("GET /next HTTP/1.1", [], self.py.port))

    def test_http2_settings_never_forwarded(self):
        # Even when the client forgot to list it in Connection.
        self.answer(lambda conn, req: conn.respond(200, b"ok") or "again")
        with self.gw.client() as c:
            c.request("GET", "/s", host="a", headers=[
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"), ("X-Request-Id", RID)])
            self.assertEqual(c.read_response().status, 200)
        self.assertForwarded(0, forwarded_head("GET /s HTTP/1.1", [], self.py.port))

    def test_h2c_dropped_from_a_list(self):
        self.answer(lambda conn, req: conn.respond(200, b"no switch") or "again")
        with self.gw.client() as c:
            c.request("GET", "/both", host="a", headers=[
                ("Connection", "Upgrade"), ("Upgrade", "h2c, websocket"), ("X-Request-Id", RID)])
            self.assertEqual(c.read_response().status, 200)
        self.assertForwarded(0, forwarded_head("GET /both HTTP/1.1", [], self.py.port,
                                               tail=["Connection: upgrade", "Upgrade: websocket"]))

    def test_upgrade_lines_are_one_list(self):
        self.answer(lambda conn, req: conn.respond(200, b"no switch") or "again")
        with self.gw.client() as c:
            c.request("GET", "/lines", host="a", headers=[
                ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("X-Request-Id", RID),
                ("Upgrade", "h2c, foo/2")])
            self.assertEqual(c.read_response().status, 200)
        self.assertForwarded(0, forwarded_head("GET /lines HTTP/1.1", [], self.py.port,
                                               tail=["Connection: upgrade",
                                                     "Upgrade: websocket, foo/2"]))

    def test_101_without_an_upgrade_request_is_a_502(self):
        def answer(conn, req):
            conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\n\r\nbackend-tunnel-bytes")
            return "eof"
        self.answer(answer)
        with self.gw.client() as c:
            c.request("GET", "/plain", host="a", headers={"X-Request-Id": RID})
            r = c.read_response()
            self.assertJsonError(r, 502, "upstream_protocol_error")
            # No tunnel: what the client sends next is a request again.
            self.answer(lambda conn, req: conn.respond(200, b"fine") or "again")
            c.request("GET", "/after", host="a", headers={"X-Request-Id": RID})
            r2 = c.read_response()
            self.assertEqual((r2.status, r2.body), (200, b"fine"))
        self.assertNotIn(b"backend-tunnel-bytes", r.body)
        self.assertUpstreamClosed()
        self.assertForwarded(0, forwarded_head("GET /plain HTTP/1.1", [], self.py.port))
        self.assertForwarded(1, forwarded_head("GET /after HTTP/1.1", [], self.py.port))

    def test_101_to_a_stripped_h2c_upgrade_is_a_502(self):
        def answer(conn, req):
            conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
            return "eof"
        self.answer(answer)
        with self.gw.client() as c:
            c.request("GET", "/h2c", host="a", headers=[
                ("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"), ("X-Request-Id", RID)])
            self.assertJsonError(c.read_response(), 502, "upstream_protocol_error")
        self.assertUpstreamClosed()
        self.assertForwarded(0, forwarded_head("GET /h2c HTTP/1.1", [], self.py.port))

    def test_101_that_does_not_answer_the_offer_is_a_502(self):
        # The offer is websocket: a 101 to another protocol, or naming none, opens no tunnel.
        for upgrade in [b"Upgrade: mqtt\r\n", b""]:
            with self.subTest(upgrade=upgrade):
                self.py.state.pop("eof", None)
                self.before = len(self.py.requests)

                def answer(conn, req):
                    conn.send(b"HTTP/1.1 101 Switching Protocols\r\n" + upgrade +
                              b"Connection: Upgrade\r\n\r\n")
                    return "eof"
                self.answer(answer)
                with self.gw.client() as c:
                    c.request("GET", "/ws", host="a", headers=[
                        ("Connection", "Upgrade"), ("Upgrade", "websocket"),
                        ("X-Request-Id", RID)])
                    self.assertJsonError(c.read_response(), 502, "upstream_protocol_error")
                self.assertUpstreamClosed()
                self.assertForwarded(0, forwarded_head(
                    "GET /ws HTTP/1.1", [], self.py.port,
                    tail=["Connection: upgrade", "Upgrade: websocket"]))

    def test_http10_upgrade_not_forwarded(self):
        def answer(conn, req):
            conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
            return "eof"
        self.answer(answer)
        with self.gw.client() as c:
            c.send(b"GET /old HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                   b"X-Request-Id: " + RID.encode() + b"\r\n\r\n")
            self.assertJsonError(c.read_response(), 502, "upstream_protocol_error")
        self.assertUpstreamClosed()
        self.assertForwarded(0, forwarded_head("GET /old HTTP/1.1", [], self.py.port,
                                               client_host=None, via="1.0 prequal-gw"))

    def test_101_answering_the_offer_tunnels(self):
        def answer(conn, req):
            conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n"
                      b"Connection: Upgrade\r\n\r\nfrom-backend")
            data = conn.read_exact(len(b"from-client"))
            conn.send(b"echo:" + data)
            return "eof"
        self.answer(answer)
        with self.gw.client() as c:
            c.request("GET", "/ws", host="a", headers=[
                ("Connection", "keep-alive, Upgrade"), ("Upgrade", "h2c, websocket"),
                ("X-Request-Id", RID)])
            r = c.read_interim_or_final()
            self.assertEqual(r.status, 101, r)
            self.assertEqual(r.header("upgrade"), "WebSocket")
            self.assertEqual(c.read_exact(len(b"from-backend")), b"from-backend")
            c.send(b"from-client")
            self.assertEqual(c.read_exact(len(b"echo:from-client")), b"echo:from-client")
        self.assertForwarded(0, forwarded_head("GET /ws HTTP/1.1", [], self.py.port,
                                               tail=["Connection: upgrade", "Upgrade: websocket"]))


# Response heads llhttp rejects itself, and those it lets through that the gateway must not
# forward (RFC 9112 §5.1, §5.2, §4).
MALFORMED = [
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nok"),
    ("obs-fold-tab", b"HTTP/1.1 200 OK\r\nX-A: a\r\n\tfolded\r\nContent-Length: 2\r\n\r\nok"),
    ("space-in-name", b"HTTP/1.1 200 OK\r\nX A: a\r\nContent-Length: 2\r\n\r\nok"),
    ("space-before-colon", b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 2\r\n\r\nok"),
    ("nul-in-value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok"),
    ("bare-cr", b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok"),
    ("two-digit-status", b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("four-digit-status", b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("status-600", b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok"),
    ("http-2-version", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("not-http", b"HTTQ/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
    ("malformed-interim", b"HTTP/1.1 103 Early Hints\r\nLink : </a>\r\n\r\n"
                          b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
]


class MalformedHeadTest(UpstreamResponseCase):
    READ_MS = 5000  # a hang would show as a 504 after 5 s

    def test_malformed_heads_get_a_502_at_once(self):
        for name, data in MALFORMED:
            with self.subTest(name):
                self.before = len(self.py.requests)
                self.py.state.pop("eof", None)
                self.answer(lambda conn, req, data=data: conn.send(data) or "eof")
                t = time.monotonic()
                with self.gw.client() as c:
                    c.request("GET", "/m", host="a", headers={"X-Request-Id": RID})
                    r = c.read_response()
                self.assertJsonError(r, 502, "upstream_protocol_error")
                self.assertEqual(r.interim, [])
                self.assertLess(time.monotonic() - t, 2.0)
                self.assertNotIn(b"ok", r.body)
                self.assertUpstreamClosed()
                self.assertForwarded(0, forwarded_head("GET /m HTTP/1.1", [], self.py.port))



class EveryBackendFailsTest(GwTestCase):
    """When the retries run out of backends, the answer is the last failure's, not a generic
    "unreachable": here every backend sends a malformed head, so the 502 says so."""

    def test_last_failure_is_the_answer(self):
        def junk(conn):
            conn.read_request()
            conn.send(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n")
        a, b = self.raw_server(junk), self.raw_server(junk)
        gw = self.gateway(basic_config(
            upstreams={"u": upstream_cfg(a.url, b.url, retries={"max": 2})},
            routes=[{"match": {"path_prefix": "/"}, "upstream": "u"}]))
        with gw.client() as c:
            c.request("GET", "/both", host="a")
            r = c.read_response()
        self.assertJsonError(r, 502, "upstream_protocol_error")
        # Both were tried (an idempotent request without a body is retried), once each.
        self.assertTrue(a.wait_requests(1) and b.wait_requests(1))
        self.assertEqual((len(a.requests), len(b.requests)), (1, 1))
        self.assertEqual(gw.metric("gw_retries_total"), 1)


if __name__ == "__main__":
    main()
