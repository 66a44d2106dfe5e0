#!/usr/bin/env python3
"""RSS of prequal-gw holding N idle keep-alive client connections (default 10,000).

Starts one example backend and the gateway (1 worker), opens N connections, sends one request
on each and reads the response (so each connection has been through a full request and is now
idle in keep-alive), then reads VmRSS of the gateway. Usage: bench/idle_conns.py [N]
Needs build/prequal-gw and build/pgw-backend."""
import os, resource, selectors, socket, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
BATCH = int(sys.argv[2]) if len(sys.argv) > 2 else 64  # requests in flight at once
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
resource.setrlimit(resource.RLIMIT_NOFILE, (N + 1024, N + 1024))

def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

tmp = tempfile.mkdtemp()
be = subprocess.Popen([os.path.join(ROOT, "build/pgw-backend"), "--listen", "127.0.0.1:0", "--quiet"],
                      stdout=subprocess.PIPE, text=True)
port = int(be.stdout.readline().strip().rsplit(":", 1)[1])
cfg = os.path.join(tmp, "gw.lua")
with open(cfg, "w") as f:
    f.write('return { listen = "127.0.0.1:19280", workers = 1, admin = false,\n'
            ' limits = { connections = %d },\n'
            ' timeouts = { keepalive_ms = 600000 },\n'
            ' upstreams = { b = { backends = { "http://127.0.0.1:%d" } } },\n'
            ' routes = { { match = { path_prefix = "/" }, upstream = "b" } } }\n' % (N + 100, port))
gw = subprocess.Popen([os.path.join(ROOT, "build/prequal-gw"), cfg], stderr=subprocess.DEVNULL,
                      preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (N + 1024, N + 1024)))
try:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", 19280)).close()
            break
        except OSError:
            time.sleep(0.05)
    base = rss_kb(gw.pid)
    socks = []
    req = b"GET /headers HTTP/1.1\r\nHost: x\r\n\r\n"
    for i in range(N):
        s = socket.create_connection(("127.0.0.1", 19280))
        socks.append(s)
    # Send one request on each and read its response, in batches.
    for i in range(0, N, BATCH):
        batch = socks[i:i + BATCH]
        for s in batch:
            s.sendall(req)
        for s in batch:
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            clen = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
            while len(rest) < clen:
                rest += s.recv(65536)
    time.sleep(1.0)
    held = rss_kb(gw.pid)
    print("idle keep-alive connections: %d" % N)
    print("gateway RSS: %.1f MiB before, %.1f MiB with them (%.2f KiB per connection)"
          % (base / 1024, held / 1024, (held - base) / N))
    for s in socks:
        s.close()
finally:
    gw.terminate(); be.terminate()
    gw.wait(10); be.wait(10)
