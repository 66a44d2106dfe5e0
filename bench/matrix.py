#!/usr/bin/env python3
"""The Prequal benchmark matrix (issue 11): tail latency of prequal-gw's balancers against nginx and
HAProxy, over scenarios x loads x replica counts x client set-ups, under an open-loop Poisson load.

Run it through bench/prequal-matrix.sh (which installs the dependencies and builds); see
bench/README.md. Everything talks to 127.0.0.1 only; every proxy runs in its own session.

One cell = (scenario, backend slots, replicas, clients). Per cell: start the replicas, calibrate
the capacity once per (scenario, slots, replicas) through prequal-gw least_conn (closed loop),
start every target (N instances each, behind one HAProxy TCP front when N > 1), then per load run
ROUNDS rounds, each running every target for SECS/ROUNDS seconds after a warm-up, the target order
rotated per round. The table quotes the median over rounds of each round's p50/p99/p99.9.
"""

import argparse
import datetime
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

HOST = "127.0.0.1"
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# name -> (backend flags of the odd replica, period in s that a measured segment must be a multiple
# of so that every target sees the same share of the bad phase, description)
SCENARIOS = {
    "equal": ([], 0, "all replicas equal"),
    "slow": (["--slowdown", "5"], 0, "one replica 5x slower"),
    "freeze": (["--freeze-ms", "200", "--freeze-every-ms", "1000"], 1,
               "one replica frozen 200 ms every 1 s (probes too)"),
    "flap": (["--slow-factor", "20", "--slow-ms", "2000", "--slow-every-ms", "10000"], 10,
             "one replica 20x slower for 2 s every 10 s"),
    "stall": (["--stall-ms", "200", "--stall-every-ms", "1000"], 1,
              "one replica stalls 200 ms every 1 s (probes still answered)"),
}
# the odd replica's average capacity relative to a normal one (for the theoretical capacity)
ODD_CAPACITY = {"equal": 1.0, "slow": 0.2, "freeze": 0.8, "flap": 0.8 + 0.2 / 20, "stall": 0.8}

PEERS = {  # built-in targets: kind, strategy
    "nginx": ("nginx", "least_conn"),
    "nginx-random2": ("nginx", "random two least_conn"),
    "haproxy": ("haproxy", "leastconn"),
    "least_conn": ("gw", "least_conn"),
    "p2c": ("gw", "p2c"),
    "round_robin": ("gw", "round_robin"),
    "prequal": ("gw", "prequal"),
}
DEFAULT_TARGETS = ["nginx", "nginx-random2", "haproxy", "least_conn", "p2c", "round_robin",
                   "prequal"]

QUICK = dict(scenarios="equal,slow,freeze,flap", loads="65", replicas="5", clients="1x1,3x1",
             slots="1", rounds=2, secs=10)
FULL = dict(scenarios="equal,slow,freeze,flap", loads="50,65,80,90", replicas="5,32",
            clients="1x1,1x2,3x1", slots="1", rounds=4, secs=20)


def log(*a):
    msg = " ".join(str(x) for x in a)
    print(msg, file=sys.stderr, flush=True)
    if LOGF:
        LOGF.write(msg + "\n")
        LOGF.flush()


LOGF = None
_ports = set()


def free_port():
    while True:
        s = socket.socket()
        s.bind((HOST, 0))
        p = s.getsockname()[1]
        s.close()
        if p not in _ports:
            _ports.add(p)
            return p


def http_get(port, path="/", timeout=2.0):
    try:
        with urllib.request.urlopen("http://%s:%d%s" % (HOST, port, path), timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except Exception as e:  # noqa: BLE001 - any failure means "not answering"
        return None, str(e)


class Proc:
    """A child in its own session (setsid): with the kernel's scheduler autogroups a session is a
    scheduling group, and a proxy sharing the script's group with the loadgen and the backends
    would lose CPU for no fault of its own (bench/README.md)."""

    def __init__(self, name, argv, logfile, env=None, stdout=subprocess.DEVNULL):
        self.name = name
        self.log = logfile
        self.p = subprocess.Popen(argv, stdout=stdout, stderr=open(logfile, "ab"),
                                  stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def alive(self):
        return self.p.poll() is None

    def why(self):
        rc = self.p.poll()
        if rc is None:
            return "running"
        if rc < 0:
            try:
                return "killed by %s" % signal.Signals(-rc).name
            except ValueError:
                return "killed by signal %d" % -rc
        return "exit status %d" % rc

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)  # its own group: it and its workers
                self.p.wait()


class Target:
    def __init__(self, name, kind, strategy, params="", binary=None, luadir=None):
        self.name, self.kind, self.strategy, self.params = name, kind, strategy, params
        self.binary, self.luadir = binary, luadir
        self.skip = None  # reason it is not run at all
        self.procs = []  # running instances (and nothing else)
        self.ports, self.admin_ports = [], []
        self.port = None  # what the loadgen talks to (an instance, or the front)
        self.failed = None

    @property
    def is_prequal(self):
        return self.kind == "gw" and self.strategy == "prequal"


# ---------------------------------------------------------------------------------------------
# configs


def gw_config(t, port, admin, workers, backends):
    """`hedge.KEY=V` parameters go to the upstream's hedge table, the others to prequal."""
    kvs = [kv.split("=", 1) for kv in t.params.split(",")] if t.params else []
    pq = ""
    for table in ("prequal", "hedge"):
        fields = ["%s = %s" % (k.split(".")[-1], v) for k, v in kvs
                  if (k.split(".")[0] if "." in k else "prequal") == table]
        if fields:
            pq += ", %s = { %s }" % (table, ", ".join(fields))
    blist = ", ".join('"http://%s:%d"' % (HOST, p) for p in backends)
    return ('return {\n  listen = "%s:%d", workers = %d, admin = { listen = "%s:%d" },\n'
            '  upstreams = { b = { strategy = "%s", backends = { %s }%s } },\n'
            '  routes = { { match = { path_prefix = "/" }, upstream = "b" } },\n}\n'
            % (HOST, port, workers, HOST, admin, t.strategy, blist, pq))


def nginx_config(d, port, workers, balance, backends):
    servers = "".join("    server %s:%d;\n" % (HOST, p) for p in backends)
    return """worker_processes %d;
daemon off;
pid %s/nginx.pid;
error_log %s/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path %s/body; proxy_temp_path %s/proxy; fastcgi_temp_path %s/fastcgi;
  uwsgi_temp_path %s/uwsgi; scgi_temp_path %s/scgi;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  upstream b {
    %s;
%s    keepalive 64;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }
  server {
    listen %s:%d;
    location / {
      proxy_pass http://b;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
""" % (workers, d, d, d, d, d, d, d, balance, servers, HOST, port)


def haproxy_config(port, threads, balance, backends):
    servers = "".join("  server b%d %s:%d\n" % (i + 1, HOST, p) for i, p in enumerate(backends))
    return """global
  nbthread %d
  maxconn 8000
defaults
  mode http
  maxconn 8000
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-request 10s
  timeout http-keep-alive 60s
  timeout queue 10s
frontend fe
  bind %s:%d
  default_backend b
backend b
  balance %s
%s""" % (threads, HOST, port, balance, servers)


def front_config(fronts):
    """One HAProxy in mode tcp: a frontend per multi-instance target, round robin over its
    instances' connections (the loadgen reuses its connections evenly: pgw-loadgen --open)."""
    out = ["global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode tcp\n  maxconn 8000\n"
           "  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n"]
    for i, (port, inst) in enumerate(fronts):
        out.append("frontend f%d\n  bind %s:%d\n  default_backend i%d\nbackend i%d\n"
                   "  balance roundrobin\n" % (i, HOST, port, i, i))
        out += ["  server s%d %s:%d\n" % (k, HOST, p) for k, p in enumerate(inst)]
    return "".join(out)


# ---------------------------------------------------------------------------------------------


def parse_result(text):
    line = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    if not line:
        return None
    r = dict(kv.split("=", 1) for kv in line[-1].split()[1:] if "=" in kv)
    share = {}
    for kv in r.get("share", "").split(","):
        if ":" in kv:
            n, f = kv.rsplit(":", 1)
            share[n] = float(f)
    r["share"] = share
    return r


def scrape(t):
    """Each instance's /metrics text (None where it did not answer): one fetch per instance
    serves the Prequal totals, the request split and the saved copy."""
    out = []
    for ap in t.admin_ports:
        st, body = http_get(ap, "/metrics")
        out.append(body if st == 200 else None)
    return out


def pq_totals(bodies):
    """Sum over a target's instances: picks, fallback picks, ok probes."""
    tot = [0, 0, 0]
    for body in filter(None, bodies):
        for ln in body.splitlines():
            if ln.startswith("prequal_picks_total{"):
                v = float(ln.split()[-1])
                tot[0] += v
                if 'branch="fallback"' in ln:
                    tot[1] += v
            elif ln.startswith("prequal_probes_total{") and 'result="ok"' in ln:
                tot[2] += float(ln.split()[-1])
    return tot


def save_metrics(bodies, save):
    """Each instance's /metrics after a round, beside the round's samples, for diagnosis (the
    counters are cumulative over the cell's rounds)."""
    for i, body in enumerate(bodies):
        if body is not None:
            with open("%s.metrics-%d" % (save, i), "w") as f:
                f.write(body)


def gw_requests(bodies):
    """Requests each instance of a prequal-gw target has answered (gw_requests_total)."""
    return [sum(float(ln.split()[-1]) for ln in body.splitlines()
                if ln.startswith("gw_requests_total")) if body is not None else 0.0
            for body in bodies]


def median(xs):
    return statistics.median(xs) if xs else float("nan")


class Matrix:
    def __init__(self, a):
        self.a = a
        self.out = a.out
        self.work = os.path.join(self.out, "work")
        os.makedirs(self.work, exist_ok=True)
        self.bin = os.path.join(self.work, "bin")
        os.makedirs(self.bin, exist_ok=True)
        # private copies: a rebuild of build/ during the run would otherwise hand a process a
        # half-written executable
        self.backend = self.copy(os.path.join(a.build, "pgw-backend"), "pgw-backend")
        self.loadgen = self.copy(os.path.join(a.build, "pgw-loadgen"), "pgw-loadgen")
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.gws = {}  # binary path -> (private copy, lua dir)
        self.targets = self.make_targets()
        self.rows = []  # result rows
        self.backends = []
        self.front = None

    def copy(self, src, name):
        if not os.access(src, os.X_OK):
            sys.exit("matrix: %s is missing (build first)" % src)
        dst = os.path.join(self.bin, name)
        shutil.copy2(src, dst)
        return dst

    def gw_binary(self, path):
        path = os.path.abspath(path)
        if path not in self.gws:
            i = len(self.gws)
            if not os.access(path, os.X_OK):
                sys.exit("matrix: %s is not an executable (build it first)" % path)
            d = os.path.join(self.bin, "gw%d" % i)
            os.makedirs(d, exist_ok=True)
            b = shutil.copy2(path, os.path.join(d, "prequal-gw"))
            lua = None
            for cand in (os.path.join(os.path.dirname(path), "..", "lua"),
                         os.path.join(ROOT, "lua")):
                if os.path.isdir(cand):
                    lua = shutil.copytree(cand, os.path.join(d, "lua"))
                    break
            self.gws[path] = (b, lua)
        return self.gws[path]

    def make_targets(self):
        a = self.a
        extra = {}
        for spec in a.gw:
            m = re.match(r"^([A-Za-z0-9_.+-]+)=([^:]+)(?::([a-z_]+))?(?::(.*))?$", spec)
            if not m:
                sys.exit("matrix: --gw wants NAME=PATH[:strategy[:key=value,...]], got %r" % spec)
            name, path, strat, params = m.group(1), m.group(2), m.group(3) or "prequal", \
                m.group(4) or ""
            if name in PEERS or name in extra:
                sys.exit("matrix: --gw name %s is taken" % name)
            if params and strat != "prequal" and not all(kv.startswith("hedge.")
                                                         for kv in params.split(",")):
                sys.exit("matrix: --gw %s: key=value parameters other than hedge.* are prequal.* "
                         "parameters; strategy %s takes none" % (name, strat))
            if params and not all(re.match(r"^(hedge\.)?[a-z_]+=[0-9.]+$", kv)
                                  for kv in params.split(",")):
                sys.exit("matrix: --gw %s: parameters are key=number,key=number" % name)
            extra[name] = (path, strat, params)
        names = a.targets.split(",") if a.targets else DEFAULT_TARGETS + list(extra)
        out = []
        for n in names:
            if n in PEERS:
                kind, strat = PEERS[n]
                t = Target(n, kind, strat)
                if kind == "gw":
                    t.binary, t.luadir = self.gw_binary(a.base_gw)
            elif n in extra:
                path, strat, params = extra[n]
                t = Target(n, "gw", strat, params)
                t.binary, t.luadir = self.gw_binary(path)
            else:
                sys.exit("matrix: unknown target %s (built-in: %s; or add one with --gw)"
                         % (n, ", ".join(PEERS)))
            out.append(t)
        if len(out) > 15:
            sys.exit("matrix: at most 15 targets")
        return out

    # ---- processes ------------------------------------------------------------------------

    def start_backends(self, scn, slots, n):
        odd, _, _ = SCENARIOS[scn]
        self.backends = []
        for i in range(1, n + 1):
            args = [self.backend, "--listen", HOST + ":0", "--name", "b%d" % i, "--service-ms",
                    str(self.a.service_ms), "--dist", self.a.dist, "--concurrency", str(slots),
                    "--quiet"]
            if i == n:
                args += odd
            p = Proc("backend-b%d" % i, args, os.path.join(self.work, "backends.log"),
                     stdout=subprocess.PIPE)
            line = p.p.stdout.readline().decode()
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if not m:
                sys.exit("matrix: backend b%d did not start: %r (see %s)" % (i, line, p.log))
            p.port = int(m.group(1))
            p.p.stdout.close()
            self.backends.append(p)

    def bports(self):
        return [b.port for b in self.backends]

    def wait_up(self, port, what, proc=None):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc and not proc.alive():
                return "%s exited at start-up (%s; see %s)" % (what, proc.why(), proc.log)
            st, _ = http_get(port, "/", timeout=2)
            if st == 200:
                return None
            time.sleep(0.1)
        return "%s on port %d did not answer 200" % (what, port)

    def start_instance(self, t, workers, idx, check_only=False):
        """Starts one instance of t (or only checks its config); returns (proc, port, admin)."""
        port, admin = free_port(), None
        tag = "%s-%d" % (t.name, idx)
        d = os.path.join(self.work, tag)
        os.makedirs(d, exist_ok=True)
        if t.kind == "gw":
            admin = free_port()
            f = os.path.join(d, "gateway.lua")
            with open(f, "w") as fh:
                fh.write(gw_config(t, port, admin, workers, self.bports()))
            env = dict(os.environ)
            if t.luadir:
                env["PGW_LUA_DIR"] = t.luadir
            argv = [t.binary, f]
            if check_only:
                r = subprocess.run([t.binary, "-t", f], capture_output=True, env=env)
                return r.returncode == 0, (r.stderr or r.stdout).decode().strip().split("\n")[0]
        elif t.kind == "nginx":
            for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                os.makedirs(os.path.join(d, sub), exist_ok=True)
            f = os.path.join(d, "nginx.conf")
            with open(f, "w") as fh:
                fh.write(nginx_config(d, port, workers, t.strategy, self.bports()))
            env = None
            argv = [self.nginx, "-c", f, "-e", os.path.join(d, "error.log")]
            if check_only:
                r = subprocess.run([self.nginx, "-t", "-c", f, "-e", os.path.join(d, "error.log")],
                                   capture_output=True)
                msg = [ln for ln in r.stderr.decode().splitlines() if "emerg" in ln]
                return r.returncode == 0, (msg or [r.stderr.decode().strip()])[0]
        else:
            f = os.path.join(d, "haproxy.cfg")
            with open(f, "w") as fh:
                fh.write(haproxy_config(port, workers, t.strategy, self.bports()))
            env = None
            argv = [self.haproxy, "-db", "-f", f]
            if check_only:
                r = subprocess.run([self.haproxy, "-c", "-q", "-f", f], capture_output=True)
                return r.returncode == 0, (r.stderr.decode().strip().split("\n") or [""])[0]
        p = Proc(tag, argv, os.path.join(d, "log"), env=env)
        return p, port, admin

    def check_targets(self):
        """A target whose config its program rejects (e.g. a strategy or key that binary does not
        know) is skipped; the others still run."""
        self.start_backends("equal", 1, 2)
        try:
            for t in self.targets:
                ok, msg = self.start_instance(t, 1, 0, check_only=True)
                if not ok:
                    t.skip = "skipped: config rejected (%s)" % msg
                    log("%s: %s" % (t.name, t.skip))
        finally:
            for b in self.backends:
                b.stop()

    def start_targets(self, instances, workers):
        fronts = []
        for t in self.targets:
            t.procs, t.ports, t.admin_ports, t.failed, t.port = [], [], [], None, None
            if t.skip:
                continue
            for i in range(instances):
                p, port, admin = self.start_instance(t, workers, i)
                t.procs.append(p)
                t.ports.append(port)
                if admin:
                    t.admin_ports.append(admin)
            for p, port in zip(t.procs, t.ports):
                err = self.wait_up(port, p.name, p)
                if err:
                    t.failed = "FAILED: " + err
                    log("  " + t.failed)
            if instances == 1:
                t.port = t.ports[0]
            elif not t.failed:
                t.port = free_port()
                fronts.append((t.port, t.ports))
        self.front = None
        if fronts:
            f = os.path.join(self.work, "front.cfg")
            with open(f, "w") as fh:
                fh.write(front_config(fronts))
            self.front = Proc("front", [self.haproxy, "-db", "-f", f],
                              os.path.join(self.work, "front.log"))
            for port, _ in fronts:
                err = self.wait_up(port, "the TCP front", self.front)
                if err:
                    sys.exit("matrix: " + err)

    def stop_targets(self):
        for t in self.targets:
            for p in t.procs:
                p.stop()
            t.procs = []
        if self.front:
            self.front.stop()
            self.front = None

    def stop_all(self):
        self.stop_targets()
        for b in self.backends:
            b.stop()
        self.backends = []

    def drain(self, limit=60.0):
        """Waits until no replica has a request in flight: an overloaded replica (round robin
        into the slow one) keeps its queue after the segment ends, and the next target would
        inherit it. Returns the seconds waited, or None if the replicas did not drain."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            busy = 0
            for b in self.backends:
                st, body = http_get(b.port, "/metrics", timeout=1)
                m = re.search(r"^backend_in_flight (\d+)", body, re.M) if st == 200 else None
                busy += int(m.group(1)) if m else 1  # no answer (frozen): ask again
            if busy == 0:
                return time.monotonic() - t0
            time.sleep(0.05)
        return None

    def dead_backends(self):
        return ["%s (%s)" % (b.name, b.why()) for b in self.backends if not b.alive()]

    def check_target(self, t, rnd):
        for p in t.procs:
            if not p.alive() and not t.failed:
                t.failed = "FAILED: %s died in round %d (%s)" % (p.name, rnd, p.why())
                log("  " + t.failed)
        if self.front and not self.front.alive():
            sys.exit("matrix: the TCP front died (%s)" % self.front.why())

    # ---- measuring ------------------------------------------------------------------------

    def loadgen_run(self, args):
        r = subprocess.run([self.loadgen] + args, capture_output=True, text=True)
        res = parse_result(r.stdout)
        if r.returncode != 0 or res is None:
            log("  loadgen failed (%d): %s" % (r.returncode, (r.stderr or r.stdout)[-300:]))
        return res

    def calibrate(self, scn, slots, n):
        """Capacity through prequal-gw least_conn, closed loop, over whole periods of the
        scenario's bad phase."""
        t = Target("calibrate", "gw", "least_conn")
        t.binary, t.luadir = self.gw_binary(self.a.base_gw)
        p, port, _ = self.start_instance(t, 1, 0)
        try:
            err = self.wait_up(port, "calibration gateway", p)
            if err:
                sys.exit("matrix: " + err)
            period = SCENARIOS[scn][1]
            secs = max(3, period)
            r = subprocess.run([self.loadgen, "--calibrate", "--url", "http://%s:%d/" % (HOST, port),
                                "--connections", str(max(64, 8 * n)), "--duration", str(secs),
                                "--warmup", "1", "--quiet"], capture_output=True, text=True)
            m = re.search(r"CAPACITY rps=([0-9.]+)", r.stdout)
            if not m:
                sys.exit("matrix: calibration failed: %s" % (r.stderr or r.stdout)[-300:])
            return float(m.group(1))
        finally:
            p.stop()

    def segment_secs(self, scn):
        period = SCENARIOS[scn][1]
        seg = self.a.secs / self.a.rounds
        if period:
            seg = max(period, round(seg / period) * period)
        rounds = max(1, int(round(self.a.secs / seg)))
        return seg, rounds

    def run_cell(self, scn, slots, n, clients, cap, theo):
        instances, workers = clients
        cname = "%dx%d" % clients
        log("--- %s, %d replicas (%s slots), clients %s" % (scn, n, slots or "unlimited", cname))
        self.start_targets(instances, workers)
        try:
            seg, rounds = self.segment_secs(scn)
            # --rates: fixed req/s, shown as the load they are of this cell's capacity.
            loads = ([100.0 * r / cap for r in self.a.rates] if self.a.rates else self.a.loads)
            for load in loads:
                rate = cap * load / 100.0
                log("  load %g%%: %.0f req/s; %d round(s) of %g s per target (+%g s warm-up)"
                    % (load, rate, rounds, seg, self.a.warmup))
                per = {t.name: [] for t in self.targets}
                pq = {t.name: [0, 0, 0] for t in self.targets}
                split = {t.name: [0.0] * len(t.admin_ports) for t in self.targets}
                live = [t for t in self.targets if not t.skip]
                invalid = None
                for rnd in range(1, rounds + 1):
                    # rotated each round, and reversed every other round: no target runs first
                    # every time, nor always right after the same other target
                    k = (rnd - 1) % len(live)
                    order = live[k:] + live[:k]
                    if rnd % 2 == 0:
                        order.reverse()
                    for t in order:
                        if t.failed or invalid:
                            continue
                        before = scrape(t)
                        save = os.path.join(self.work, "raw-%s-%s-%d-%s-%g-%s-%d" % (
                            scn, slots, n, cname, load, t.name, rnd))
                        res = self.loadgen_run([
                            "--url", "http://%s:%d/" % (HOST, t.port), "--rate", "%.1f" % rate,
                            "--duration", "%g" % seg, "--warmup", "%g" % self.a.warmup,
                            "--connections", "2048", "--open", str(self.a.open),
                            "--timeout-ms", str(self.a.timeout_ms), "--quiet", "--save", save])
                        after = scrape(t)
                        if t.is_prequal:
                            pq[t.name] = [x + y - z for x, y, z in
                                          zip(pq[t.name], pq_totals(after), pq_totals(before))]
                            save_metrics(after, save)
                        split[t.name] = [x + y - z for x, y, z in
                                         zip(split[t.name], gw_requests(after), gw_requests(before))]
                        if res:
                            res["save"] = save
                            per[t.name].append(res)
                            log("    round %d %-16s p50 %8s  p99 %8s  p99.9 %8s  err %s tmo %s"
                                % (rnd, t.name, res["p50_ms"], res["p99_ms"], res["p999_ms"],
                                   res["errors"], res["timeouts"]))
                        self.check_target(t, rnd)
                        dead = self.dead_backends()
                        if dead:
                            invalid = "INVALID: backend died in round %d: %s" % (rnd, ", ".join(dead))
                            log("  " + invalid)
                        waited = self.drain()
                        if waited is None:
                            log("    warning: the replicas did not drain within 60 s after %s"
                                % t.name)
                        elif waited > 1:
                            log("    (the replicas took %.1f s to drain after %s)"
                                % (waited, t.name))
                for t in self.targets:
                    self.rows.append(self.row(scn, slots, n, cname, load, rate, cap, theo, t,
                                              per[t.name], pq[t.name], split[t.name], invalid))
                self.write_outputs()
                if invalid:
                    sys.exit("matrix: " + invalid)
        finally:
            self.stop_targets()

    def row(self, scn, slots, n, cname, load, rate, cap, theo, t, rounds, pq, split, invalid):
        r = dict(scenario=scn, slots=slots, replicas=n, clients=cname, load=load, rate=rate,
                 capacity=cap, theoretical=theo, target=t.name, rounds=len(rounds), note="")
        if t.skip or (t.failed and not rounds):
            r["note"] = t.skip or t.failed
            return r
        if t.failed:
            r["note"] = t.failed
        if invalid:
            r["note"] = invalid
        for k in ("p50_ms", "p99_ms", "p999_ms"):
            r[k] = median([float(x[k]) for x in rounds])
        r["errors"] = sum(int(x["errors"]) + int(x["timeouts"]) for x in rounds)
        merged = parse_result(subprocess.run([self.loadgen, "--merge"] + [x["save"] for x in rounds],
                                             capture_output=True, text=True).stdout) or {}
        r["p99_merged"] = float(merged.get("p99_ms", "nan"))
        r["p999_merged"] = float(merged.get("p999_ms", "nan"))
        share = merged.get("share", {})
        r["shares"] = ",".join("%s:%.3f" % kv for kv in sorted(share.items(),
                                                                 key=lambda kv: int(kv[0][1:])
                                                                 if kv[0][1:].isdigit() else 0))
        if scn == "equal":
            if share:
                name, f = max(share.items(), key=lambda kv: kv[1])
                r["share"] = "max %.1f%% %s" % (100 * f, name)
        else:
            r["share"] = "%.1f%%" % (100 * share.get("b%d" % n, 0.0))
        if t.is_prequal and pq[0] > 0:
            r["fallback"] = "%.1f%%" % (100 * pq[1] / pq[0])
            r["probes"] = "%.2f" % (pq[2] / pq[0])
        if len(split) > 1 and sum(split) > 0:  # how the front split the load over the instances
            r["split"] = "/".join("%.0f%%" % (100 * x / sum(split)) for x in split)
        if not os.environ.get("MATRIX_KEEP_RAW"):
            for x in rounds:
                os.unlink(x["save"])
        return r

    # ---- output ---------------------------------------------------------------------------

    def write_outputs(self):
        a = self.a
        md = ["# Prequal benchmark matrix, %s" % a.started, "",
              "Command: `%s`" % a.command, "",
              "Open-loop Poisson load (pgw-loadgen), latency from the intended send time; replicas "
              "are pgw-backend with %g ms %s service; the odd replica is the last one "
              "(`b<n>`). p50/p99/p99.9: median over rounds of each round's value. err+tmo: errors "
              "and timeouts (%d ms) over all rounds. share: the odd replica's share of the answers "
              "(`equal`: the largest share). fallback: Prequal picks that went to its fallback "
              "branch; probes/pick: ok probes per pick (prequal_picks_total, "
              "prequal_probes_total over the measured segments). Clients: IxW = I instances "
              "of W workers (3x1: behind one HAProxy TCP front, round robin)." % (
                  a.service_ms, "exponential" if a.dist == "exp" else "fixed", a.timeout_ms), ""]
        for scn_desc in sorted({r["scenario"] for r in self.rows}):
            md.append("- `%s`: %s" % (scn_desc, SCENARIOS[scn_desc][2]))
        md.append("")
        caps = {}
        for r in self.rows:
            caps[(r["scenario"], r["slots"], r["replicas"])] = (r["capacity"], r["theoretical"])
        md.append("Capacity (closed loop through prequal-gw least_conn, 1 worker) vs theoretical "
                  "(replicas / service time, for one-at-a-time replicas):")
        md.append("")
        for (scn, slots, n), (c, th) in caps.items():
            md.append("- %s, %d replicas, %s slots: %.0f req/s measured%s" % (
                scn, n, slots or "unlimited", c, ", %.0f theoretical" % th if th else ""))
        md += ["", "| scenario | load | replicas | clients | target | req/s | p50 ms | p99 ms | "
               "p99.9 ms | err+tmo | share | fallback | probes/pick |",
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            head = "| %s | %g%% | %d%s | %s | %s | %.0f |" % (
                r["scenario"], r["load"], r["replicas"], "" if r["slots"] == 1 else
                " (%s slots)" % (r["slots"] or "∞"), r["clients"], r["target"], r["rate"])
            if "p50_ms" not in r:
                md.append(head + " %s | | | | | | |" % r["note"])
                continue
            md.append(head + " %.2f | %.2f | %.2f | %d | %s | %s | %s |%s" % (
                r["p50_ms"], r["p99_ms"], r["p999_ms"], r["errors"], r.get("share", "-"),
                r.get("fallback", "-"), r.get("probes", "-"),
                " " + r["note"] if r["note"] else ""))
        with open(os.path.join(self.out, "results.md"), "w") as fh:
            fh.write("\n".join(md) + "\n")
        keys = ["scenario", "slots", "replicas", "clients", "load", "rate", "capacity", "target",
                "rounds", "p50_ms", "p99_ms", "p999_ms", "p99_merged", "p999_merged", "errors",
                "share", "shares", "split", "fallback", "probes", "note"]
        with open(os.path.join(self.out, "results.tsv"), "w") as fh:
            fh.write("\t".join(keys) + "\n")
            for r in self.rows:
                fh.write("\t".join(str(r.get(k, "")) for k in keys) + "\n")

    def plot(self):
        """One PNG per (slots, replicas, load): a panel per scenario x clients, bars of
        p50/p99/p99.9 per target on a log scale."""
        gnuplot = shutil.which("gnuplot")
        if not gnuplot:
            log("gnuplot not found: no plot")
            return []
        pngs = []
        groups = sorted({(r["slots"], r["replicas"], r["load"]) for r in self.rows})
        for slots, n, load in groups:
            rows = [r for r in self.rows if (r["slots"], r["replicas"], r["load"]) ==
                    (slots, n, load) and "p50_ms" in r]
            scns = [s for s in SCENARIOS if any(r["scenario"] == s for r in rows)]
            cls = sorted({r["clients"] for r in rows})
            if not rows:
                continue
            name = "plot-%dr-%gpct%s.png" % (n, load, "" if slots == 1 else "-%sslots" % slots)
            png = os.path.join(self.out, name)
            ymax = max(max(r["p999_ms"], r["p99_ms"]) for r in rows) * 5  # room for the key
            ymin = min(r["p50_ms"] for r in rows) / 1.6
            script = ['set terminal pngcairo noenhanced size %d,%d font ",10"' % (
                          max(900, 560 * len(cls)), 300 * len(scns) + 60),
                      'set output "%s"' % png,
                      'set multiplot layout %d,%d title "%s"' % (
                          len(scns), len(cls), "p50 / p99 / p99.9 (ms, log scale), %d replicas "
                          "(%s slots), %g%% load — %s" % (n, slots or "unlimited", load,
                                                          self.a.started)),
                      "set style data histograms", "set style histogram clustered gap 1",
                      "set style fill solid 0.85 border -1", "set boxwidth 0.9",
                      "set logscale y", "set yrange [%g:%g]" % (ymin, ymax),
                      "set grid ytics", "set xtics rotate by -30 left nomirror",
                      "set ytics (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)",
                      "set key top left horizontal"]
            for scn in scns:
                for c in cls:
                    sub = [r for r in rows if r["scenario"] == scn and r["clients"] == c]
                    dat = os.path.join(self.work, "plot-%s-%s-%d-%g-%s.dat" % (scn, c, n, load,
                                                                                   slots))
                    with open(dat, "w") as fh:
                        for r in sub:
                            fh.write('"%s" %g %g %g\n' % (r["target"], r["p50_ms"], r["p99_ms"],
                                                          r["p999_ms"]))
                    script.append('set title "%s, clients %s"' % (scn, c))
                    script.append('plot "%s" using 2:xtic(1) title "p50" lc rgb "#4477aa", '
                                  '"" using 3 title "p99" lc rgb "#ee6677", '
                                  '"" using 4 title "p99.9" lc rgb "#ccbb44"' % dat)
            script.append("unset multiplot")
            r = subprocess.run([gnuplot], input="\n".join(script), capture_output=True, text=True)
            if r.returncode != 0:
                log("gnuplot failed: %s" % r.stderr[-500:])
                continue
            pngs.append(png)
        return pngs

    # ---- the whole run --------------------------------------------------------------------

    def run(self):
        a = self.a
        self.check_targets()
        live = [t.name for t in self.targets if not t.skip]
        if not live:
            sys.exit("matrix: no target available")
        log("targets: %s" % " ".join(live))
        for scn in a.scenarios:
            for slots in a.slots:
                for n in a.replicas:
                    self.start_backends(scn, slots, n)
                    try:
                        for b in self.backends:
                            err = self.wait_up(b.port, b.name, b)
                            if err:
                                sys.exit("matrix: " + err)
                        cap = self.calibrate(scn, slots, n)
                        theo = None
                        if slots:
                            theo = slots * (n - 1 + ODD_CAPACITY[scn]) * 1000.0 / a.service_ms
                        log("=== %s, %d replicas: capacity %.0f req/s measured%s" % (
                            scn, n, cap, " (%.0f theoretical)" % theo if theo else ""))
                        for c in a.clients:
                            self.run_cell(scn, slots, n, c, cap, theo)
                    finally:
                        self.stop_all()
        self.write_outputs()
        for p in self.plot():
            log("plot: %s" % p)
        log("table: %s" % os.path.join(self.out, "results.md"))


def replot(a):
    with open(os.path.join(a.replot, "results.tsv")) as fh:
        keys = fh.readline().rstrip("\n").split("\t")
        rows = [dict(zip(keys, ln.rstrip("\n").split("\t"))) for ln in fh]
    for r in rows:
        for k in ("slots", "replicas"):
            r[k] = int(r[k])
        for k in ("load", "p50_ms", "p99_ms", "p999_ms"):
            if r.get(k):
                r[k] = float(r[k])
            else:
                r.pop(k, None)
    m = Matrix.__new__(Matrix)
    m.a, m.out, m.rows = a, a.replot, rows
    m.work = os.path.join(a.replot, "work")
    os.makedirs(m.work, exist_ok=True)
    with open(os.path.join(a.replot, "results.md")) as fh:
        a.started = fh.readline().split(", ", 1)[-1].strip()
    for p in m.plot():
        log("plot: %s" % p)
    return 0


def parse_list(s, conv, what):
    try:
        return [conv(x) for x in s.split(",") if x]
    except ValueError:
        sys.exit("matrix: bad %s list %r" % (what, s))


def parse_clients(c):
    m = re.match(r"^(\d+)x(\d+)$", c)
    if not m or not (1 <= int(m.group(1)) <= 8 and 1 <= int(m.group(2)) <= 8):
        raise ValueError(c)
    return int(m.group(1)), int(m.group(2))


def main():
    ap = argparse.ArgumentParser(
        prog="bench/prequal-matrix.sh",
        description="Prequal benchmark matrix: prequal-gw's balancers vs nginx and HAProxy under "
                    "an open-loop load. Writes results.md, results.tsv and plot PNGs to --out.")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="the default: 5 one-at-a-time replicas, 65%% load, the four scenarios, "
                           "clients 1x1 and 3x1, 2 rounds of 5 s (about 12 min)")
    mode.add_argument("--full", action="store_true",
                      help="loads 50,65,80,90; 5 and 32 replicas; clients 1x1,1x2,3x1; "
                           "4 rounds of 5 s (hours)")
    ap.add_argument("--scenarios", help="from: %s" % ",".join(SCENARIOS))
    ap.add_argument("--loads", help="percent of the measured capacity, e.g. 50,65,80,90")
    ap.add_argument("--rates", help="fixed offered req/s instead of --loads, e.g. 5000,9000")
    ap.add_argument("--replicas", help="e.g. 5,32")
    ap.add_argument("--clients", help="INSTANCESxWORKERS, e.g. 1x1,1x2,3x1")
    ap.add_argument("--slots", help="backend --concurrency values; 0 = unlimited overlap "
                                    "(e.g. the example backend's own behaviour); default 1")
    ap.add_argument("--targets", help="comma list; default: %s and every --gw" %
                                      ",".join(DEFAULT_TARGETS))
    ap.add_argument("--rounds", type=int, help="interleaved rounds per cell")
    ap.add_argument("--secs", type=float, help="measured seconds per target per cell and load "
                                               "(split over the rounds)")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured s before each segment")
    ap.add_argument("--gw", action="append", default=[], metavar="NAME=PATH[:strategy[:k=v,...]]",
                    help="an extra prequal-gw build or variant as target NAME (strategy prequal "
                         "by default; k=v are prequal.* parameters, hedge.k=v the hedge's); "
                         "repeatable")
    ap.add_argument("--base-gw", default=os.path.join(ROOT, "build", "prequal-gw"),
                    help="the binary of the built-in prequal-gw targets (default build/prequal-gw)")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"),
                    help="where pgw-backend and pgw-loadgen are")
    ap.add_argument("--service-ms", type=float, default=2.0)
    ap.add_argument("--dist", choices=("exp", "fixed"), default="exp",
                    help="service time distribution of the replicas (mean --service-ms)")
    ap.add_argument("--timeout-ms", type=int, default=5000)
    ap.add_argument("--open", type=int, default=48,
                    help="loadgen connections opened at start (a multiple of 3 splits evenly)")
    ap.add_argument("--out", help="results dir (default bench/out/matrix-DATE)")
    ap.add_argument("--replot", metavar="DIR", help="only redraw the plots of DIR/results.tsv")
    a = ap.parse_args()
    if a.replot:
        return replot(a)

    base = FULL if a.full else QUICK
    a.mode = "full" if a.full else "quick"
    a.scenarios = parse_list(a.scenarios or base["scenarios"], str, "scenario")
    for s in a.scenarios:
        if s not in SCENARIOS:
            sys.exit("matrix: unknown scenario %s (from: %s)" % (s, ", ".join(SCENARIOS)))
    a.loads = parse_list(a.loads or base["loads"], float, "load")
    a.rates = parse_list(a.rates, float, "rate") if a.rates else []
    if any(r <= 0 for r in a.rates):
        sys.exit("matrix: rates are req/s above 0")
    a.replicas = parse_list(a.replicas or base["replicas"], int, "replicas")
    a.clients = parse_list(a.clients or base["clients"], parse_clients, "clients")
    a.slots = parse_list(a.slots or base["slots"], int, "slots")
    a.rounds = a.rounds or base["rounds"]
    a.secs = a.secs or base["secs"]
    if any(not 2 <= n <= 200 for n in a.replicas) or any(not 1 <= x <= 200 for x in a.loads):
        sys.exit("matrix: replicas are 2..200, loads 1..200 %")
    a.started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    a.command = "bench/prequal-matrix.sh " + " ".join(sys.argv[1:])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    a.out = os.path.abspath(a.out or os.path.join(ROOT, "bench", "out", "matrix-" + stamp))
    os.makedirs(a.out, exist_ok=True)
    global LOGF
    LOGF = open(os.path.join(a.out, "log.txt"), "a")
    log("matrix (%s): %s; results in %s" % (a.mode, a.command, a.out))

    m = Matrix(a)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        m.run()
    except KeyboardInterrupt:
        log("interrupted: partial results in %s" % a.out)
        m.write_outputs()
        return 130
    finally:
        m.stop_all()
        if not os.environ.get("MATRIX_KEEP_RAW"):
            shutil.rmtree(m.bin, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
