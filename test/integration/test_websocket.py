#!/usr/bin/env python3
"""WebSocket upgrade through the gateway: 101 relayed, then bytes tunnelled both ways."""

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403


def ws_frame(payload, opcode=1, mask=True):
    hdr = bytes([0x80 | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr += bytes([mbit | n])
    elif n < 65536:
        hdr += bytes([mbit | 126]) + struct.pack(">H", n)
    else:
        hdr += bytes([mbit | 127]) + struct.pack(">Q", n)
    if not mask:
        return hdr + payload
    key = os.urandom(4)
    return hdr + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_read_frame(bs):
    """Read one frame from a BufferedSock; returns (opcode, payload) unmasked."""
    b0, b1 = bs.read_exact(2)
    opcode = b0 & 0x0F
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", bs.read_exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", bs.read_exact(8))[0]
    key = bs.read_exact(4) if b1 & 0x80 else None
    data = bs.read_exact(n)
    if key:
        data = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    return opcode, data


def ws_echo_backend(conn):
    req = conn.read_request()
    if req.headers.get("upgrade", "").lower() != "websocket" or \
            "upgrade" not in req.headers.tokens("connection"):
        conn.respond(400, "not an upgrade: %r" % list(req.headers))
        return
    conn.send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Accept: %s\r\n\r\n" % ws_accept(req.headers.get("sec-websocket-key")))
    while True:
        opcode, data = ws_read_frame(conn)
        if opcode == 8:
            conn.send(ws_frame(data, 8, mask=False))
            return
        conn.send(ws_frame(data, opcode, mask=False))


class WebSocketTest(GwTestCase):

    def setUp(self):
        super().setUp()
        self.ws = self.raw_server(ws_echo_backend)
        self.gw = self.gateway(basic_config(
            upstreams={"ws": upstream_cfg(self.ws.url, timeouts={"read_ms": 5000})},
            routes=[{"match": {"path_prefix": "/"}, "upstream": "ws"}]))

    def handshake(self, c):
        key = base64.b64encode(os.urandom(16)).decode()
        c.request("GET", "/chat", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                           ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")])
        r = c.read_response()
        self.assertEqual(r.status, 101, r)
        self.assertEqual(r.header("sec-websocket-accept"), ws_accept(key))
        self.assertEqual(r.header("upgrade", "").lower(), "websocket")
        self.assertIn("upgrade", r.headers.tokens("connection"))
        return r

    def test_echo_text_frame(self):
        with self.gw.client() as c:
            self.handshake(c)
            c.send(ws_frame(b"hello through the gateway"))
            opcode, data = ws_read_frame(c)
            self.assertEqual((opcode, data), (1, b"hello through the gateway"))
            big = os.urandom(100000)
            c.send(ws_frame(big, opcode=2))
            opcode, data = ws_read_frame(c)
            self.assertEqual(opcode, 2)
            self.assertEqual(data, big)
            c.send(ws_frame(struct.pack(">H", 1000), opcode=8))
            opcode, data = ws_read_frame(c)
            self.assertEqual(opcode, 8)
        req = self.ws.requests[0]
        self.assertEqual(req.headers.get("upgrade", "").lower(), "websocket")
        self.assertTrue(req.headers.get("sec-websocket-key"))

    def test_backend_close_closes_client(self):
        with self.gw.client() as c:
            self.handshake(c)
            c.send(ws_frame(b"bye", opcode=8))
            opcode, _ = ws_read_frame(c)
            self.assertEqual(opcode, 8)
            self.assertTrue(c.wait_closed(3), "tunnel not closed after the backend closed")


if __name__ == "__main__":
    main()
