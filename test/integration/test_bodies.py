#!/usr/bin/env python3
"""Request and response bodies: Content-Length, chunked, close-delimited; HEAD,
204 and 304; Expect: 100-continue and unknown expectations."""

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403


def py_special(conn, req):
    """Python backend: /chunked-trailer, /close-body, /204-with-length, else echo."""
    if req.target == "/close-body":
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + pattern_bytes(100000))
        conn.sock.shutdown(socket.SHUT_WR)
        raise ConnectionClosed("done")
    if req.target == "/close-body-10":
        conn.send(b"HTTP/1.0 200 OK\r\n\r\n" + pattern_bytes(5000))
        conn.sock.shutdown(socket.SHUT_WR)
        raise ConnectionClosed("done")
    if req.target == "/odd-chunks":
        body = pattern_bytes(70000)
        out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        i, n = 0, 1
        while i < len(body):
            part = body[i:i + n]
            out += b"%X;ext=1\r\n" % len(part) + part + b"\r\n"
            i += n
            n = n * 3 + 1
        out += b"0\r\nX-Trailer: t\r\n\r\n"
        conn.send(out)
        return
    if req.target == "/304":
        conn.send(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 1234\r\n\r\n")
        return
    if req.target == "/204":
        conn.send(b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n")
        return
    if req.target == "/head-len":
        if req.method == "HEAD":
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 777\r\n\r\n")
        else:
            conn.respond(200, pattern_bytes(777))
        return
    json_echo(conn, req)


class BodiesTest(GwTestCase):

    @classmethod
    def setUpClass(cls):
        cls.b1 = PgwBackend("b1")
        cls.py = RawServer(keepalive_handler(py_special))
        cls.gw = Gateway(basic_config(
            upstreams={"b": upstream_cfg(cls.b1.url), "py": upstream_cfg(cls.py.url)},
            routes=[{"name": "py", "match": {"path_prefix": "/py"}, "upstream": "py", "strip_prefix": True},
                    {"name": "b", "match": {"path_prefix": "/"}, "upstream": "b"}]))

    @classmethod
    def tearDownClass(cls):
        stop_shared(cls.gw, cls.py.close, cls.b1.stop)

    # --- request bodies -------------------------------------------------------

    def test_content_length_body_intact(self):
        body = os.urandom(1 << 20)
        with self.gw.client() as c:
            c.request("POST", "/upload", body=body)
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        j = r.json()
        self.assertEqual(j["body_bytes"], len(body))
        self.assertEqual(crc_of(j), zlib.crc32(body))

    def test_chunked_body_intact(self):
        rnd = random.Random(7)
        body = os.urandom(300000)
        enc = b""
        i = 0
        while i < len(body):
            n = rnd.randint(1, 20000)
            part = body[i:i + n]
            enc += b"%x\r\n" % len(part) + part + b"\r\n"
            i += n
        enc += b"0\r\n\r\n"
        with self.gw.client() as c:
            c.request("POST", "/upload-chunked", headers={"Transfer-Encoding": "chunked"}, body=enc)
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        j = r.json()
        self.assertEqual(j["body_bytes"], len(body))
        self.assertEqual(crc_of(j), zlib.crc32(body))

    def test_chunked_body_trickled_in_pieces(self):
        body = b"0123456789" * 1000
        enc = chunked(body, 999)
        with self.gw.client() as c:
            c.request("POST", "/trickle", headers={"Transfer-Encoding": "chunked"})
            for i in range(0, len(enc), 1500):
                c.send(enc[i:i + 1500])
                time.sleep(0.002)
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body_bytes"], len(body))
        self.assertEqual(crc_of(r.json()), zlib.crc32(body))

    def test_chunked_body_with_extensions_and_trailers(self):
        enc = b"5;name=val\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
        with self.gw.client() as c:
            c.request("POST", "/ext", headers={"Transfer-Encoding": "chunked"}, body=enc)
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body_bytes"], 11)
        self.assertEqual(crc_of(r.json()), zlib.crc32(b"hello world"))

    def test_echo_roundtrip(self):
        body = os.urandom(200000)
        with self.gw.client() as c:
            c.request("POST", "/echo", body=body)
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, body)

    def test_empty_post(self):
        with self.gw.client() as c:
            c.request("POST", "/empty", body=b"")
            r = c.read_response()
        self.assertEqual(r.json()["body_bytes"], 0)

    # --- response bodies ---------------------------------------------------

    def test_content_length_response(self):
        with self.gw.client() as c:
            c.request("GET", "/bytes/123457")
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, pattern_bytes(123457))

    def test_chunked_response(self):
        with self.gw.client() as c:
            c.request("GET", "/chunked/200001")
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.body, pattern_bytes(200001))
            c.request("GET", "/bytes/10")
            self.assertEqual(c.read_response().body, pattern_bytes(10))

    def test_odd_chunks_with_extensions_and_trailers(self):
        with self.gw.client() as c:
            c.request("GET", "/py/odd-chunks")
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.body, pattern_bytes(70000))
            c.request("GET", "/bytes/10")
            self.assertEqual(c.read_response().body, pattern_bytes(10))

    def test_close_delimited_response_reframed(self):
        # An HTTP/1.1 client gets the close-delimited body chunked and keeps its connection.
        with self.gw.client() as c:
            for _ in range(2):
                c.request("GET", "/close/150000")
                r = c.read_response()
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.framing, "chunked", r)
                self.assertEqual(r.body, pattern_bytes(150000))
            c.request("GET", "/close/0")  # an empty body: just the last chunk
            r = c.read_response()
            self.assertEqual((r.status, r.framing, r.body), (200, "chunked", b""), r)
            c.request("GET", "/bytes/10")
            self.assertEqual(c.read_response().body, pattern_bytes(10))
        # An HTTP/1.0 client cannot take chunks: it gets the body delimited by the close.
        with self.gw.client() as c:
            c.request("GET", "/close/5000", version="HTTP/1.0")
            r = c.read_response()
            self.assertEqual((r.status, r.framing), (200, "close"), r)
            self.assertEqual(r.body, pattern_bytes(5000))

    def test_close_delimited_python_backend(self):
        for path, n in (("/py/close-body", 100000), ("/py/close-body-10", 5000)):
            with self.gw.client() as c:
                c.request("GET", path)
                r = c.read_response()
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.body, pattern_bytes(n), path)

    def test_zero_length_responses(self):
        with self.gw.client() as c:
            c.request("GET", "/bytes/0")
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.body, b"")
            c.request("GET", "/chunked/0")
            r = c.read_response()
            self.assertEqual(r.body, b"")

    # --- HEAD, 204, 304 --------------------------------------------------------

    def test_head_has_no_body(self):
        with self.gw.client() as c:
            c.request("HEAD", "/bytes/5000")
            r = c.read_response("HEAD")
            self.assertEqual(r.status, 200, r)
            self.assertIn(r.header("content-length"), (None, "5000"))
            c.request("GET", "/bytes/7")
            r2 = c.read_response()
            self.assertEqual(r2.status, 200, r2)
            self.assertEqual(r2.body, pattern_bytes(7))

    def test_head_content_length_preserved(self):
        with self.gw.client() as c:
            c.request("HEAD", "/py/head-len")
            r = c.read_response("HEAD")
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.header("content-length"), "777")
            c.request("GET", "/py/head-len")
            r2 = c.read_response()
            self.assertEqual(r2.body, pattern_bytes(777))

    def _no_body_then_next(self, path, status):
        with self.gw.client() as c:
            c.request("GET", path)
            r = c.read_response()
            self.assertEqual(r.status, status, r)
            self.assertNotIn("chunked", r.headers.tokens("transfer-encoding"))
            c.request("GET", "/bytes/11")
            r2 = c.read_response()
            self.assertEqual(r2.status, 200, r2)
            self.assertEqual(r2.body, pattern_bytes(11))

    def test_204_no_body(self):
        self._no_body_then_next("/status/204", 204)

    def test_204_python_backend(self):
        self._no_body_then_next("/py/204", 204)

    def test_304_no_body(self):
        self._no_body_then_next("/status/304", 304)

    def test_304_with_content_length_python_backend(self):
        self._no_body_then_next("/py/304", 304)

    # --- Expect ------------------------------------------------------------------

    def test_expect_100_continue(self):
        body = b"x" * 5000
        with self.gw.client() as c:
            c.request("POST", "/expect", headers={"Expect": "100-continue", "Content-Length": str(len(body))})
            first = c.read_interim_or_final(timeout=5)
            self.assertEqual(first.status, 100, "expected 100 Continue before the body, got %r" % first)
            c.send(body)
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body_bytes"], 5000)
        self.assertEqual(crc_of(r.json()), zlib.crc32(body))

    def test_expect_unknown_417(self):
        with self.gw.client() as c:
            c.request("POST", "/expect", headers={"Expect": "something-else", "Content-Length": "5"})
            r = c.read_interim_or_final(timeout=5)
            self.assertJsonError(r, 417)


if __name__ == "__main__":
    main()
