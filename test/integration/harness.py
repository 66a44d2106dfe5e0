"""Black-box integration harness for prequal-gw.

Everything here talks to real processes over 127.0.0.1 only:

- free_port(): a free loopback TCP port.
- PgwBackend: the example backend (`pgw-backend`, path in $PGW_BACKEND).
- RawServer: a small threaded raw-socket backend written in the test; the test
  supplies a handler that gets a BackendConn (socket + buffered HTTP reader),
  so it can answer with anything: malformed heads, slow bodies, WebSocket
  upgrades, accept-then-silence, close mid-response, extra bytes...
- Gateway: writes gateway.lua into a temp dir, starts `prequal-gw <file>`
  ($PGW_BIN), waits for its ports, captures stderr to a file, and stops it with
  SIGTERM checking the exit status and the absence of sanitizer reports.
- Client: a raw-socket HTTP/1.1 client with correct response framing
  (Content-Length, chunked, close-delimited, HEAD/1xx/204/304), plus
  http.client based helpers for the simple cases.
- GwTestCase: unittest.TestCase with a per-test watchdog (every test has a
  timeout) and cleanup of everything it started.

Every child process is registered and killed at exit (atexit + finally).
"""

import atexit
import base64
import hashlib
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest
import zlib

HOST = "127.0.0.1"
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("PGW_SOURCE_DIR") or os.path.abspath(os.path.join(HERE, "..", ".."))
PGW_BIN = os.environ.get("PGW_BIN") or os.path.join(SOURCE_DIR, "build", "prequal-gw")
PGW_BACKEND = os.environ.get("PGW_BACKEND") or os.path.join(SOURCE_DIR, "build", "pgw-backend")

# Default socket timeout so that no blocking call in a test can hang forever.
socket.setdefaulttimeout(15)

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error", "UndefinedBehaviorSanitizer",
                     "ThreadSanitizer")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Process bookkeeping
# ---------------------------------------------------------------------------

_children = []
_children_lock = threading.Lock()


def _register(proc):
    with _children_lock:
        _children.append(proc)
    return proc


def kill_all_children():
    with _children_lock:
        procs = list(_children)
    for p in procs:
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    for p in procs:
        try:
            p.wait(timeout=5)
        except Exception:
            pass


atexit.register(kill_all_children)


def _sigterm_exit(signum, frame):
    kill_all_children()
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, _sigterm_exit)


def binary_has_asan(path):
    """True if the binary looks ASan-instrumented (RSS bounds are meaningless then)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        return b"__asan_init" in data or b"AddressSanitizer" in data
    except OSError:
        return False


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


# ---------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------

_used_ports = set()
_port_lock = threading.Lock()


def free_port():
    """A free loopback TCP port, never handed out twice in this process."""
    with _port_lock:
        for _ in range(100):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            port = s.getsockname()[1]
            s.close()
            if port not in _used_ports:
                _used_ports.add(port)
                return port
    raise RuntimeError("no free port")


def port_open(port, host=HOST, timeout=0.2):
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return False
    s.close()
    return True


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.03)
    return False


# ---------------------------------------------------------------------------
# pgw-backend
# ---------------------------------------------------------------------------

class PgwBackend:
    """The example backend. `name` is reported in its JSON echo as "backend". `host` is the
    address it binds (0.0.0.0: every loopback address, for many backends in one process)."""

    def __init__(self, name="b1", extra_args=(), port=0, host=HOST):
        if not os.path.exists(PGW_BACKEND):
            if "PGW_BACKEND" in os.environ:
                raise AssertionError("PGW_BACKEND=%s does not exist" % PGW_BACKEND)
            raise unittest.SkipTest("pgw-backend not found at %s" % PGW_BACKEND)
        self.name = name
        self.proc = _register(subprocess.Popen(
            [PGW_BACKEND, "--listen", "%s:%d" % (host, port), "--quiet", "--name", name]
            + list(extra_args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL))
        self.port = None
        self._lines = []
        line = self._readline(10.0)
        m = re.search(r"listening on %s:(\d+)" % re.escape(host), line or "")
        if not m:
            self.stop()
            raise RuntimeError("pgw-backend %s did not report its port; got %r; stderr: %s"
                               % (name, line, self.proc.stderr.read().decode("latin-1")[-2000:]))
        self.port = int(m.group(1))
        # Keep draining both pipes so the backend never blocks on a full pipe.
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()

    def _readline(self, timeout):
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
        return buf.decode("latin-1")

    def _drain(self, pipe):
        try:
            for line in pipe:
                self._lines.append(line)
        except Exception:
            pass

    @property
    def url(self):
        return "http://%s:%d" % (HOST, self.port)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------
# Small HTTP parsing helpers shared by the Python backends and the client
# ---------------------------------------------------------------------------

class ConnectionClosed(Exception):
    """The peer closed (or reset) before a complete message arrived."""

    def __init__(self, msg, partial=b""):
        super().__init__(msg)
        self.partial = partial


class Headers(list):
    """A list of (name, value) str pairs with case-insensitive lookup."""

    def get(self, name, default=None):
        n = name.lower()
        for k, v in self:
            if k.lower() == n:
                return v
        return default

    def get_all(self, name):
        n = name.lower()
        return [v for k, v in self if k.lower() == n]

    def has(self, name):
        return self.get(name) is not None

    def tokens(self, name):
        out = []
        for v in self.get_all(name):
            out += [t.strip().lower() for t in v.split(",") if t.strip()]
        return out


def parse_head_lines(lines):
    hs = Headers()
    for line in lines:
        if not line:
            continue
        k, _, v = line.partition(b":")
        hs.append((k.decode("latin-1").strip(), v.decode("latin-1").strip()))
    return hs


class BufferedSock:
    """A socket with an input buffer and message-level reads."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False
        self.eof_event = threading.Event()  # set once EOF/reset has been read

    fill_delay = 0.0  # seconds to sleep after each recv (slow readers)

    def _recv(self, timeout=None):
        """One recv of up to 64 KiB; b"" on EOF or reset."""
        if self.eof:
            return b""
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            self.eof_event.set()
        elif self.fill_delay:
            time.sleep(self.fill_delay)
        return data

    def _fill(self, timeout=None):
        data = self._recv(timeout)
        if not data:
            return False
        self.buf += data
        return True

    def read_until(self, delim, limit=1 << 20):
        while True:
            i = self.buf.find(delim)
            if i >= 0:
                out = self.buf[:i + len(delim)]
                self.buf = self.buf[i + len(delim):]
                return out
            if len(self.buf) > limit:
                raise ValueError("line too long")
            if not self._fill():
                raise ConnectionClosed("closed while waiting for %r" % delim, self.buf)

    def read_exact(self, n):
        if len(self.buf) >= n:
            out = self.buf[:n]
            self.buf = self.buf[n:]
            return out
        parts = [self.buf]
        have = len(self.buf)
        self.buf = b""
        while have < n:
            data = self._recv()
            if not data:
                self.buf = b"".join(parts)
                raise ConnectionClosed("closed after %d of %d bytes" % (have, n), self.buf)
            parts.append(data)
            have += len(data)
        data = b"".join(parts)
        self.buf = data[n:]
        return data[:n]

    def read_all(self):
        parts = [self.buf]
        self.buf = b""
        while True:
            data = self._recv()
            if not data:
                return b"".join(parts)
            parts.append(data)

    def read_chunked(self):
        """Decode a chunked body; returns (body, trailers, raw)."""
        body = []
        raw = []
        while True:
            line = self.read_until(b"\r\n")
            raw.append(line)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                trailers = []
                while True:
                    t = self.read_until(b"\r\n")
                    raw.append(t)
                    if t == b"\r\n":
                        break
                    trailers.append(t[:-2])
                return b"".join(body), parse_head_lines(trailers), b"".join(raw)
            data = self.read_exact(size)
            crlf = self.read_exact(2)
            if crlf != b"\r\n":
                raise ValueError("bad chunk terminator %r" % crlf)
            body.append(data)
            raw.append(data + crlf)


# ---------------------------------------------------------------------------
# Python raw-socket backends
# ---------------------------------------------------------------------------

class Request:
    def __init__(self, method, target, version, headers, body, raw_head, raw):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
        self.raw_head = raw_head
        self.raw = raw

    def __repr__(self):
        return "<Request %s %s %s>" % (self.method, self.target, self.version)


class BackendConn(BufferedSock):
    """One accepted connection as seen by a RawServer handler."""

    def __init__(self, sock, server, index):
        super().__init__(sock)
        self.server = server
        self.index = index  # 1-based accept order

    def read_request(self, read_body=True):
        """Read one request (head and, by default, body). Raises ConnectionClosed on EOF.

        The request is recorded in server.requests before the body is read, so a
        test can see that a request head reached the backend even if the body
        never completes."""
        while self.buf.startswith(b"\r\n"):
            self.buf = self.buf[2:]
        head = self.read_until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        method, target, version = (p.decode("latin-1") for p in (parts + [b"", b""])[:3])
        hs = parse_head_lines(lines[1:])
        req = Request(method, target, version, hs, b"", head, head)
        self.server._record(req, self)
        if read_body:
            if "chunked" in hs.tokens("transfer-encoding"):
                req.body, _, raw = self.read_chunked()
                req.raw = head + raw
            elif hs.get("content-length") is not None:
                req.body = self.read_exact(int(hs.get("content-length")))
                req.raw = head + req.body
        return req

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def respond(self, status=200, body=b"", headers=None, reason=None):
        self.send(build_response(status, body, headers, reason))

    def wait_eof(self, timeout=10.0):
        """Wait for the peer to close; returns True on EOF/reset, False on timeout.
        Data received meanwhile is kept in the buffer."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                if not self._fill(timeout=left):
                    return True
            except socket.timeout:
                return False
            except OSError:
                return True


REASONS = {100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
           301: "Moved Permanently", 304: "Not Modified", 400: "Bad Request", 404: "Not Found",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def build_response(status=200, body=b"", headers=None, reason=None, content_length=True):
    if isinstance(body, str):
        body = body.encode()
    reason = reason if reason is not None else REASONS.get(status, "Status")
    out = ["HTTP/1.1 %d %s" % (status, reason)]
    hs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if content_length and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hs):
        hs.append(("Content-Length", str(len(body))))
    for k, v in hs:
        out.append("%s: %s" % (k, v))
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body


class RawServer:
    """A threaded raw-socket server on 127.0.0.1. `handler(conn)` runs in its own
    thread per accepted connection (conn is a BackendConn); the socket is closed
    when it returns. Counters: `accepted`, `requests` (every request read through
    conn.read_request), `eofs` (connections whose handler saw EOF)."""

    def __init__(self, handler, backlog=64):
        self.handler = handler
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((HOST, 0))
        self.lsock.listen(backlog)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.accepted = 0
        self.requests = []
        self.conns = []
        self.errors = []
        self.cond = threading.Condition(self.lock)
        self.closed = False
        self.state = {}  # free for handlers
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def url(self):
        return "http://%s:%d" % (HOST, self.port)

    def _record(self, req, conn):
        with self.cond:
            req.conn_index = conn.index
            self.requests.append(req)
            self.cond.notify_all()

    def _accept_loop(self):
        while not self.closed:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.cond:
                self.accepted += 1
                conn = BackendConn(s, self, self.accepted)
                self.conns.append(conn)
                self.cond.notify_all()
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            conn.sock.settimeout(30)
            self.handler(conn)
        except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
            pass
        except Exception as e:  # a bug in a test handler: keep it visible
            if not self.closed:
                self.errors.append(e)
                traceback.print_exc()
        finally:
            try:
                conn.sock.close()
            except OSError:
                pass

    def wait_for(self, pred, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def wait_requests(self, n, timeout=5.0):
        return self.wait_for(lambda: len(self.requests) >= n, timeout)

    def close(self):
        self.closed = True
        try:
            self.lsock.close()
        except OSError:
            pass
        for c in list(self.conns):
            try:
                c.sock.close()
            except OSError:
                pass


def keepalive_handler(respond):
    """Handler factory: loop reading requests; respond(conn, req) writes the answer.
    Returns when the peer closes."""

    def handler(conn):
        while True:
            req = conn.read_request()
            respond(conn, req)
            if "close" in req.headers.tokens("connection"):
                return

    return handler


def json_echo(conn, req, name="py"):
    body = json.dumps({"backend": name, "method": req.method, "path": req.target,
                       "headers": {k.lower(): v for k, v in req.headers},
                       "body_bytes": len(req.body), "body_crc32": zlib.crc32(req.body)}).encode()
    data = build_response(200, body, {"Content-Type": "application/json"})
    if req.method == "HEAD":
        data = data[:data.index(b"\r\n\r\n") + 4]
    conn.send(data)


def crc_of(j):
    """body_crc32 from a JSON echo as an int (pgw-backend reports 8 hex digits)."""
    v = j["body_crc32"]
    return int(v, 16) if isinstance(v, str) else int(v)


def ws_accept(key):
    return base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode())
                            .digest()).decode()


def pattern_bytes(n):
    """The pgw-backend body pattern: byte i is 'a' + i % 26."""
    alphabet = bytes(range(ord("a"), ord("a") + 26))
    reps = n // 26 + 1
    return (alphabet * reps)[:n]


# ---------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------

class Response:
    def __init__(self):
        self.version = None
        self.status = None
        self.reason = None
        self.headers = Headers()
        self.body = b""
        self.trailers = Headers()
        self.framing = None  # "length" | "chunked" | "close" | "none"
        self.interim = []    # 1xx responses (as Response objects) before this one
        self.raw_head = b""

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %s %s %r body=%r>" % (self.status, self.reason, list(self.headers),
                                                self.body[:300])


class Client(BufferedSock):
    """A raw HTTP/1.x client connection to 127.0.0.1:port."""

    def __init__(self, port, timeout=10.0, rcvbuf=None):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout)
        s.connect((HOST, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(s)
        self.timeout = timeout

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def request(self, method="GET", target="/", headers=None, body=None, version="HTTP/1.1",
                host="localhost"):
        """Send one request (adds Host unless given / host=None, and
        Content-Length when body is bytes and no framing header is given)."""
        hs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        names = [k.lower() for k, _ in hs]
        if host is not None and "host" not in names:
            hs.insert(0, ("Host", host))
        if body is not None and "content-length" not in names and "transfer-encoding" not in names:
            hs.append(("Content-Length", str(len(body))))
        self.send(build_request(method, target, hs, body or b"", version))

    def read_response(self, method="GET", timeout=None):
        """Read one final response (1xx interim responses are collected in .interim)."""
        self.sock.settimeout(timeout or self.timeout)
        interim = []
        while True:
            r = self._read_one(method)
            if r.status is not None and 100 <= r.status < 200 and r.status != 101:
                interim.append(r)
                continue
            r.interim = interim
            return r

    def read_interim_or_final(self, method="GET", timeout=None):
        """Read exactly one response, interim (1xx) or final."""
        self.sock.settimeout(timeout or self.timeout)
        return self._read_one(method)

    def _read_one(self, method):
        r = Response()
        try:
            head = self.read_until(b"\r\n\r\n")
        except ConnectionClosed as e:
            raise ConnectionClosed("connection closed before a response head (got %r)" % e.partial,
                                   e.partial)
        r.raw_head = head
        lines = head[:-4].split(b"\r\n")
        m = re.match(rb"(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise ValueError("bad status line %r" % lines[0])
        r.version = m.group(1).decode()
        r.status = int(m.group(2))
        r.reason = (m.group(3) or b"").decode("latin-1")
        r.headers = parse_head_lines(lines[1:])
        if method == "HEAD" or 100 <= r.status < 200 or r.status in (204, 304):
            r.framing = "none"
            return r
        te = r.headers.tokens("transfer-encoding")
        if te and te[-1] == "chunked":
            r.framing = "chunked"
            r.body, r.trailers, _ = self.read_chunked()
        elif r.headers.get("content-length") is not None:
            r.framing = "length"
            r.body = self.read_exact(int(r.headers.get("content-length")))
        else:
            r.framing = "close"
            r.body = self.read_all()
        return r

    def read_until_close(self, timeout=5.0):
        """Everything until the peer closes; raises socket.timeout if it doesn't."""
        deadline = time.monotonic() + timeout
        out = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no close within %.1fs (got %d bytes)" % (timeout, len(out)))
            if not self._fill(timeout=left):
                out, self.buf = self.buf, b""
                return out

    def wait_closed(self, timeout=3.0):
        """True if the peer closes (EOF or reset) within timeout with no further data.
        Returns False on timeout; raises AssertionError if unexpected bytes arrive."""
        try:
            rest = self.read_until_close(timeout)
        except socket.timeout:
            return False
        except OSError:
            return True
        if rest:
            raise AssertionError("unexpected bytes before close: %r" % rest[:300])
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def build_request(method="GET", target="/", headers=(), body=b"", version="HTTP/1.1"):
    if isinstance(body, str):
        body = body.encode()
    lines = ["%s %s %s" % (method, target, version)] + ["%s: %s" % (k, v) for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body, size=1000):
    out = b""
    for i in range(0, len(body), size):
        part = body[i:i + size]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return out + b"0\r\n\r\n"


def http_request(port, method="GET", path="/", headers=None, body=None, timeout=10.0):
    """One request on a fresh http.client connection. Returns (status, Headers, body)."""
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, Headers(r.getheaders()), data
    finally:
        c.close()


def get(port, path="/", headers=None, timeout=10.0):
    return http_request(port, "GET", path, headers, None, timeout)


def wait_until(pred, timeout, step=0.02):
    """Polls pred() until it returns something true or `timeout` seconds pass; returns its last
    value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)


class Load:
    """GET load on a gateway from background threads until stop(): `keepalive` clients that keep
    one connection (a new one when the gateway answers Connection: close) and `fresh` clients that
    open a connection per request. Every failure (an exception, or a status other than 200) is
    appended to `errors` saying which client saw it; `counts` has the successes per kind and
    `backends` the JSON "backend" of each 200 (pgw-backend's name). A context manager."""

    def __init__(self, port, path="/x", keepalive=2, fresh=1, timeout=5.0):
        self.port, self.path, self.timeout = port, path, timeout
        self.errors = []
        self.counts = {"keepalive": 0, "fresh": 0}
        self.backends = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._keepalive, daemon=True) for _ in range(keepalive)]
        self._threads += [threading.Thread(target=self._fresh, daemon=True) for _ in range(fresh)]

    def _ok(self, kind, status, body):
        if status != 200:
            self.errors.append("%s: status %d %r" % (kind, status, body[:200]))
            return
        self.counts[kind] += 1
        try:
            name = json.loads(body).get("backend")
        except ValueError:
            name = None
        self.backends[name] = self.backends.get(name, 0) + 1

    def _keepalive(self):
        c = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        while not self._stop.is_set():
            try:
                c.request("GET", self.path)
                r = c.getresponse()
                self._ok("keepalive", r.status, r.read())
                if r.getheader("connection", "").lower() == "close":
                    c.close()
            except Exception as e:  # noqa: BLE001
                self.errors.append("keepalive: %r" % e)
                c.close()
        c.close()

    def _fresh(self):
        while not self._stop.is_set():
            try:
                st, _, body = get(self.port, self.path, timeout=self.timeout)
                self._ok("fresh", st, body)
            except Exception as e:  # noqa: BLE001
                self.errors.append("fresh: %r" % e)

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def get_json(port, path="/", headers=None):
    status, hs, body = get(port, path, headers)
    return status, hs, json.loads(body)


# ---------------------------------------------------------------------------
# Lua config writer
# ---------------------------------------------------------------------------

class Lua:
    """A raw Lua expression inside a config dict."""

    def __init__(self, text):
        self.text = text


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LUA_KEYWORDS = {"and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto",
                 "if", "in", "local", "nil", "not", "or", "repeat", "return", "then", "true",
                 "until", "while"}


def lua_str(s):
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif o < 32 or o == 127:
            out.append("\\%03d" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def to_lua(v, indent=0):
    pad = "  " * (indent + 1)
    if isinstance(v, Lua):
        return v.text
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "nil"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return lua_str(v)
    if isinstance(v, (list, tuple)):
        if not v:
            return "{}"
        return "{\n" + "".join(pad + to_lua(x, indent + 1) + ",\n" for x in v) + "  " * indent + "}"
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = []
        for k, x in v.items():
            if isinstance(k, str) and _IDENT.match(k) and k not in _LUA_KEYWORDS:
                key = k
            else:
                key = "[" + to_lua(k) + "]"
            items.append(pad + key + " = " + to_lua(x, indent + 1) + ",\n")
        return "{\n" + "".join(items) + "  " * indent + "}"
    raise TypeError("cannot write %r as Lua" % (v,))


# ---------------------------------------------------------------------------
# Gateway
# ---------------------------------------------------------------------------

def have_gateway():
    return os.path.exists(PGW_BIN)


def require_gateway():
    """Skip when no gateway was built yet, but fail when $PGW_BIN names a missing file (CTest)."""
    if not have_gateway():
        if "PGW_BIN" in os.environ:
            raise AssertionError("PGW_BIN=%s does not exist" % PGW_BIN)
        raise unittest.SkipTest("prequal-gw not found at %s" % PGW_BIN)


class Gateway:
    """A running prequal-gw. `config` is a dict (written as Lua; `listen`, `admin`
    and `access_log` are filled in when missing) or a complete Lua source string
    (then pass port/admin_port used in it). `args`: command-line options before the file."""

    def __init__(self, config, port=None, admin_port=None, start=True, wait=True, name="gw",
                 tmpdir=None, prelude="", args=()):
        require_gateway()
        self.args = list(args)
        self.own_tmpdir = tmpdir is None
        self.tmpdir = tmpdir or tempfile.mkdtemp(prefix="pgw-it-")
        self.path = os.path.join(self.tmpdir, "gateway.lua")
        self.stderr_path = os.path.join(self.tmpdir, name + ".stderr")
        self.stdout_path = os.path.join(self.tmpdir, name + ".stdout")
        self.access_log = os.path.join(self.tmpdir, "access.log")
        if isinstance(config, dict):
            config = dict(config)
            self.port = port or free_port()
            config.setdefault("listen", "%s:%d" % (HOST, self.port))
            if "admin" not in config:
                self.admin_port = admin_port or free_port()
                config["admin"] = {"listen": "%s:%d" % (HOST, self.admin_port)}
            else:
                self.admin_port = admin_port
                if config["admin"] and not admin_port:
                    m = re.search(r":(\d+)$", config["admin"]["listen"])
                    self.admin_port = int(m.group(1))
            if "access_log" in config:
                if config["access_log"] not in ("stdout", "stderr"):
                    self.access_log = config["access_log"]
            else:
                config["access_log"] = self.access_log
            config.setdefault("workers", 1)
            self.config = config
            text = prelude + "return " + to_lua(config) + "\n"
        else:
            self.port = port
            self.admin_port = admin_port
            self.config = None
            text = config
        with open(self.path, "w") as f:
            f.write(text)
        self.text = text
        self.proc = None
        self.stopped = False
        if start:
            self.start(wait)

    def start(self, wait=True):
        self._err = open(self.stderr_path, "wb")
        self._out = open(self.stdout_path, "wb")
        env = dict(os.environ)
        self.proc = _register(subprocess.Popen([PGW_BIN] + self.args + [self.path], stdout=self._out,
                                               stderr=self._err, stdin=subprocess.DEVNULL,
                                               cwd=self.tmpdir, env=env))
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=10.0):
        ports = [p for p in (self.port, self.admin_port) if p]
        deadline = time.monotonic() + timeout
        for p in ports:
            if not wait_port(p, max(0.1, deadline - time.monotonic()), self.proc):
                rc = self.proc.poll()
                self.kill()
                raise AssertionError("gateway did not start listening on %d (exit=%s)\n--- config:\n%s\n"
                                     "--- stderr:\n%s" % (p, rc, self.text, self.stderr()[-4000:]))

    @property
    def pid(self):
        return self.proc.pid

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stdout(self):
        try:
            with open(self.stdout_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def rss_kb(self):
        return rss_kb(self.proc.pid)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def sanitizer_report(self):
        err = self.stderr()
        for m in SANITIZER_MARKERS:
            if m in err:
                return err
        return None

    def stop(self, timeout=15.0, check=True):
        """SIGTERM and wait; asserts exit status 0 and no sanitizer report."""
        if self.stopped or self.proc is None:
            return self.proc.returncode if self.proc else None
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._close_files()
            if check:
                raise AssertionError("gateway did not exit within %.1fs of SIGTERM; stderr tail:\n%s"
                                     % (timeout, self.stderr()[-3000:]))
            return None
        self._close_files()
        if check:
            self.check_exit(rc)
        return rc

    def check_exit(self, rc):
        rep = self.sanitizer_report()
        if rep:
            raise AssertionError("sanitizer report in gateway stderr:\n%s" % rep[-6000:])
        if rc != 0:
            raise AssertionError("gateway exited with %s after SIGTERM; stderr tail:\n%s"
                                 % (rc, self.stderr()[-3000:]))

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stopped = True
        self._close_files()

    def remove_tmpdir(self):
        """Removes the directory the harness made for this gateway (config, logs), unless
        PGW_KEEP_TMP is set to keep it for a post-mortem. Called after the final stop."""
        if self.own_tmpdir and not os.environ.get("PGW_KEEP_TMP"):
            shutil.rmtree(self.tmpdir, True)

    def _close_files(self):
        for f in (getattr(self, "_err", None), getattr(self, "_out", None)):
            if f:
                try:
                    f.close()
                except OSError:
                    pass

    # convenience
    def client(self, timeout=10.0):
        return Client(self.port, timeout)

    def get(self, path="/", headers=None):
        return get(self.port, path, headers)

    def metrics(self):
        status, _, body = get(self.admin_port, "/metrics")
        assert status == 200, "GET /metrics -> %s" % status
        return body.decode()

    def metric(self, name, **labels):
        """Sum of samples of `name` whose labels include `labels` (0.0 if none)."""
        return metric_value(self.metrics(), name, **labels)

    def access_log_lines(self):
        try:
            with open(self.access_log) as f:
                return [l for l in f.read().splitlines() if l.strip()]
        except FileNotFoundError:
            return []


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """[(name, {labels}, value)] from Prometheus text format."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise AssertionError("unparseable metrics line: %r" % line)
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def metric_value(text, name, **labels):
    total = 0.0
    for n, ls, v in parse_metrics(text):
        if n == name and all(ls.get(k) == str(val) for k, val in labels.items()):
            total += v
    return total


def upstream_cfg(*urls, **kw):
    cfg = {"backends": list(urls), "strategy": "round_robin"}
    cfg.update(kw)
    return cfg


def basic_config(upstreams, routes, **kw):
    cfg = {"workers": 1, "log_level": "info", "upstreams": upstreams, "routes": routes}
    cfg.update(kw)
    return cfg


# ---------------------------------------------------------------------------
# Test case base
# ---------------------------------------------------------------------------

class _Watchdog:
    def __init__(self, seconds, name):
        self.name = name
        self.timer = threading.Timer(seconds, self._fire, args=(seconds,))
        self.timer.daemon = True
        self.timer.start()

    def _fire(self, seconds):
        log("\n*** TIMEOUT: %s exceeded %ss; stacks:" % (self.name, seconds))
        for tid, frame in sys._current_frames().items():
            log("--- thread %s" % tid)
            log("".join(traceback.format_stack(frame)))
        kill_all_children()
        os._exit(3)

    def cancel(self):
        self.timer.cancel()


def stop_shared(gw, *closers):
    """tearDownClass of a class whose tests share one gateway: stops it (which checks its exit
    status and the sanitizers' reports), then runs each of `closers` (a server's close, a
    backend's stop) whatever happened."""
    try:
        gw.stop()
    finally:
        gw.kill()
        gw.remove_tmpdir()
        for close in closers:
            close()


class GwTestCase(unittest.TestCase):
    """Base class: per-test watchdog and cleanup helpers."""

    TEST_TIMEOUT = 60

    def setUp(self):
        self._wd = _Watchdog(self.TEST_TIMEOUT, self.id())
        self.addCleanup(self._wd.cancel)

    def backend(self, name="b1", extra_args=(), port=0, host=HOST):
        b = PgwBackend(name, extra_args, port, host)
        self.addCleanup(b.stop)
        return b

    def raw_server(self, handler):
        s = RawServer(handler)
        self.addCleanup(s.close)
        return s

    def gateway(self, config, **kw):
        gw = Gateway(config, **kw)
        # Registered first => runs after the servers' cleanups registered later?
        # No: cleanups run LIFO, so the gateway is stopped before backends added
        # earlier, and after those added later. stop() checks exit 0 + sanitizers.
        self.addCleanup(self._stop_gateway, gw)
        return gw

    def _stop_gateway(self, gw):
        try:
            gw.stop()
        finally:
            gw.kill()
            gw.remove_tmpdir()

    # assertions
    def assertJsonError(self, resp, status, code=None):
        self.assertEqual(resp.status, status, resp)
        ctype = resp.header("content-type", "")
        self.assertIn("json", ctype.lower(), "error response Content-Type %r" % ctype)
        try:
            j = json.loads(resp.body)
        except ValueError:
            self.fail("error body is not JSON: %r" % resp.body[:300])
        for k in ("error", "message", "request_id"):
            self.assertIn(k, j, "key %r missing in error body %r" % (k, j))
        if code is not None:
            self.assertEqual(j["error"], code, j)
        rid = resp.header("x-request-id")
        self.assertTrue(rid, "no X-Request-Id on error response")
        self.assertEqual(j["request_id"], rid)
        return j


class RawBackendTestCase(GwTestCase):
    """Tests that share one gateway in front of one RawServer, the upstream "py". A subclass
    sets HANDLER (the server's handler), GW_OPTIONS (basic_config's other keys: timeouts,
    limits, ...) and may override upstream() and routes() (default: every path to "py").
    setUp notes how many requests the server has seen: self.py.requests[self.before:] are the
    test's own."""

    HANDLER = staticmethod(keepalive_handler(json_echo))
    GW_OPTIONS = {}

    @classmethod
    def upstream(cls):
        return upstream_cfg(cls.py.url)

    @classmethod
    def routes(cls):
        return [{"match": {"path_prefix": "/"}, "upstream": "py"}]

    @classmethod
    def setUpClass(cls):
        cls.py = RawServer(cls.HANDLER)
        try:
            cls.gw = Gateway(basic_config(upstreams={"py": cls.upstream()}, routes=cls.routes(),
                                          **cls.GW_OPTIONS))
        except BaseException:
            cls.py.close()
            raise

    @classmethod
    def tearDownClass(cls):
        stop_shared(cls.gw, cls.py.close)

    def setUp(self):
        super().setUp()
        self.before = len(self.py.requests)


def main():
    """unittest.main that kills children on the way out and exits non-zero on failure."""
    try:
        unittest.main(verbosity=2)
    finally:
        kill_all_children()
