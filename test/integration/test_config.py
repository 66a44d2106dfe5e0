#!/usr/bin/env python3
"""`prequal-gw -t`: good configs pass and say what was validated, bad ones fail with
`file:LINE: key.path: problem`; a bad config given to a normal start exits non-zero and binds
nothing. gateway.lua runs under a time and a memory limit and cannot end the process, also on
a reload; an admin listener open to other hosts needs a token."""

import json
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import *  # noqa: E402,F401,F403

# Each bad config: (name, lua text with {port}/{aport}, the line the problem is on,
# substrings the message must contain). Lines are 1-based.
GOOD = """return {{
  listen = "127.0.0.1:{port}",
  workers = 1,
  admin = {{ listen = "127.0.0.1:{aport}" }},
  upstreams = {{
    api = {{
      backends = {{ "http://127.0.0.1:9001", {{ url = "http://127.0.0.1:9002", weight = 2 }} }},
      strategy = "round_robin",
      timeouts = {{ connect_ms = 1000, read_ms = 30000 }},
      retries = {{ max = 2, backoff_ms = 0 }},
    }},
  }},
  routes = {{
    {{ name = "hello", match = {{ path_prefix = "/hello" }}, respond = {{ status = 200, body = "hi\\n" }} }},
    {{ match = {{ path_prefix = "/" }}, upstream = "api" }},
  }},
}}
"""

HEAD = """return {{
  listen = "127.0.0.1:{port}",
  admin = {{ listen = "127.0.0.1:{aport}" }},
"""
UPS = """  upstreams = {{
    api = {{ backends = {{ "http://127.0.0.1:9001" }} }},
  }},
"""

BAD = [
    ("unknown_key", HEAD + "  bogus_key = 1,\n" + UPS +
     "  routes = {{ {{ match = {{ path_prefix = \"/\" }}, upstream = \"api\" }} }},\n}}\n",
     4, ["bogus_key"]),
    ("wrong_type", HEAD + UPS +
     "  routes = {{\n"
     "    {{ match = {{ path_prefix = \"/a\" }}, upstream = \"api\" }},\n"
     "    {{ match = {{\n"
     "        path_prefix = 5,\n"
     "      }}, upstream = \"api\" }},\n"
     "  }},\n}}\n",
     10, ["routes[2].match.path_prefix", "string"]),
    ("unknown_upstream", HEAD + UPS +
     "  routes = {{\n"
     "    {{ match = {{ path_prefix = \"/\" }},\n"
     "      upstream = \"nope\" }},\n"
     "  }},\n}}\n",
     9, ["routes[1].upstream", "nope"]),
    ("bad_url", HEAD +
     "  upstreams = {{\n"
     "    api = {{\n"
     "      backends = {{\n"
     "        \"not a url\",\n"
     "      }},\n"
     "    }},\n"
     "  }},\n"
     "  routes = {{ {{ match = {{ path_prefix = \"/\" }}, upstream = \"api\" }} }},\n}}\n",
     7, ["upstreams.api.backends[1]"]),
    ("bad_backend_url_scheme", HEAD +
     "  upstreams = {{\n"
     "    api = {{\n"
     "      backends = {{ \"http://127.0.0.1:9001\",\n"
     "        {{ url = \"ftp://127.0.0.1:21\", weight = 2 }},\n"
     "      }},\n"
     "    }},\n"
     "  }},\n"
     "  routes = {{ {{ match = {{ path_prefix = \"/\" }}, upstream = \"api\" }} }},\n}}\n",
     7, ["upstreams.api.backends[2].url"]),
    ("bad_listen", "return {{\n"
     "  workers = 1,\n"
     "  listen = \"127.0.0.1:99999\",\n"
     "  admin = {{ listen = \"127.0.0.1:{aport}\" }},\n" + UPS +
     "  routes = {{ {{ match = {{ path_prefix = \"/\" }}, upstream = \"api\" }} }},\n}}\n",
     3, ["listen"]),
    ("bad_listen_host", "return {{\n"
     "  listen = \"not-an-address\",\n"
     "  admin = {{ listen = \"127.0.0.1:{aport}\" }},\n" + UPS +
     "  routes = {{ {{ match = {{ path_prefix = \"/\" }}, upstream = \"api\" }} }},\n}}\n",
     2, ["listen"]),
    ("nested_unknown_key", HEAD + UPS +
     "  routes = {{\n"
     "    {{ match = {{ path_prefix = \"/\",\n"
     "                path_prefx = \"/x\" }}, upstream = \"api\" }},\n"
     "  }},\n}}\n",
     9, ["routes[1].match.path_prefx"]),
    ("bad_workers", HEAD +
     "  workers = \"many\",\n" + UPS +
     "  routes = {{ {{ match = {{ path_prefix = \"/\" }}, upstream = \"api\" }} }},\n}}\n",
     4, ["workers"]),
    ("bad_timeout_type", HEAD + UPS +
     "  timeouts = {{\n"
     "    header_ms = \"soon\",\n"
     "  }},\n"
     "  routes = {{ {{ match = {{ path_prefix = \"/\" }}, upstream = \"api\" }} }},\n}}\n",
     8, ["timeouts.header_ms"]),
    ("syntax_error", "return {{\n"
     "  listen = \"127.0.0.1:{port}\",\n"
     "  workers = = 1,\n"
     "}}\n",
     3, []),
    ("runtime_error", "local x = nil\n"
     "return {{\n"
     "  listen = x.y,\n"
     "}}\n",
     3, []),
    ("not_a_table", "return 42\n", None, []),
]


def run_t(path, timeout=30, args=()):
    return subprocess.run([PGW_BIN, "-t"] + list(args) + [path], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=timeout)


class ConfigFileCase(GwTestCase):
    """Tests that write gateway.lua files into a directory of their own."""

    def setUp(self):
        super().setUp()
        require_gateway()
        self.dir = tempfile.mkdtemp(prefix="pgw-cfg-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name, text):
        path = os.path.join(self.dir, name + ".lua")
        with open(path, "w") as f:
            f.write(text)
        return path


class ConfigTest(ConfigFileCase):


    def test_good_config(self):
        port, aport = free_port(), free_port()
        path = self.write("gateway", GOOD.format(port=port, aport=aport))
        p = run_t(path)
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))
        self.assertFalse(port_open(port), "-t left something listening")
        self.assertNotIn(b"AddressSanitizer", p.stderr)
        # -t says what it validated.
        self.assertEqual(p.stdout.decode(),
                         "%s: ok: 1 upstream (2 backends), 2 routes, 0 hooks, admin on 127.0.0.1:%d\n"
                         % (path, aport))

    def test_unused_key_warns_at_its_place(self):
        # prequal.rif_history does nothing any more: the config loads, and says so where it is.
        port, aport = free_port(), free_port()
        text = GOOD.format(port=port, aport=aport).replace(
            'strategy = "round_robin",',
            'strategy = "prequal",\n      prequal = { pool_size = 0,\n        rif_history = 64 },')
        path = self.write("gateway", text)
        p = run_t(path)
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 0, err)
        line = text.splitlines().index("        rif_history = 64 },") + 1
        self.assertIn("[warn]", err)
        self.assertIn("gateway.lua:%d: upstreams.api.prequal.rif_history: no longer used" % line,
                      err)
        p = run_t(self.write("quiet", GOOD.format(port=port, aport=aport)))
        self.assertNotIn("warn", p.stderr.decode(errors="replace"))

    def test_example_config_from_issue(self):
        port, aport = free_port(), free_port()
        text = """return {
  listen = "127.0.0.1:%d",
  workers = 2,
  admin = { listen = "127.0.0.1:%d" },
  access_log = "%s/access.log",
  log_level = "info",
  limits = { header_bytes = 32768, uri_bytes = 8192, headers = 100, body_bytes = 16777216, connections = 16384 },
  timeouts = { header_ms = 10000, body_ms = 60000, keepalive_ms = 75000, send_ms = 60000, drain_ms = 10000 },
  upstreams = {
    api = {
      backends = { "http://127.0.0.1:9001", { url = "http://127.0.0.1:9002", weight = 2 } },
      strategy = "round_robin",
      timeouts = { connect_ms = 1000, read_ms = 30000, send_ms = 30000 },
      retries = { max = 2, backoff_ms = 0 },
      keepalive = { max_idle = 64, idle_timeout_ms = 60000 },
    },
  },
  routes = {
    { name = "api", match = { path_prefix = "/api/", host = "example.com", methods = { "GET", "POST" } },
      upstream = "api", strip_prefix = true, add_prefix = "/v1", preserve_host = false,
      request_headers = { set = { ["X-From"] = "gw" }, remove = { "X-Secret" } },
      response_headers = { set = { ["X-Served-By"] = "pgw" }, remove = { "Server" } } },
    { name = "hello", match = { path_prefix = "/hello" }, respond = { status = 200, body = "hi\\n", headers = { ["Content-Type"] = "text/plain" } } },
    { match = { path_prefix = "/" }, upstream = "api" },
  },
}
""" % (port, aport, self.dir)
        p = run_t(self.write("issue", text))
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))

    def check_bad(self, name, text, line, needles):
        port, aport = free_port(), free_port()
        path = self.write(name, text.format(port=port, aport=aport))
        p = run_t(path)
        err = p.stderr.decode(errors="replace")
        self.assertNotEqual(p.returncode, 0, "%s: -t accepted a bad config" % name)
        self.assertGreater(p.returncode, 0, "%s: killed by a signal (%d): %s" % (name, p.returncode, err))
        self.assertNotIn("AddressSanitizer", err)
        self.assertNotIn("runtime error:", err)
        if line is not None:
            self.assertRegex(err, re.escape(os.path.basename(path)) + ":%d:" % line,
                             "%s: message lacks `%s.lua:%d:`: %r" % (name, name, line, err))
        for n in needles:
            self.assertIn(n, err, "%s: message lacks %r: %r" % (name, n, err))

    def test_bad_configs(self):
        for name, text, line, needles in BAD:
            with self.subTest(name):
                self.check_bad(name, text, line, needles)

    def test_missing_file(self):
        p = run_t(os.path.join(self.dir, "does-not-exist.lua"))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("does-not-exist.lua", p.stderr.decode(errors="replace"))

    def test_bad_config_normal_start_binds_nothing(self):
        port, aport = free_port(), free_port()
        text = (HEAD + UPS + "  routes = {{\n    {{ match = {{ path_prefix = \"/\" }}, upstream = \"nope\" }},\n"
                "  }},\n}}\n").format(port=port, aport=aport)
        path = self.write("badstart", text)
        proc = subprocess.Popen([PGW_BIN, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        try:
            bound = False
            deadline = time.monotonic() + 5
            while proc.poll() is None and time.monotonic() < deadline:
                if port_open(port, timeout=0.05) or port_open(aport, timeout=0.05):
                    bound = True
                time.sleep(0.01)
            rc = proc.poll()
            out, err = proc.communicate(timeout=5) if rc is not None else (b"", b"")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.assertIsNotNone(rc, "gateway kept running with a bad config")
        self.assertNotEqual(rc, 0)
        self.assertGreater(rc, 0, "killed by a signal: %r" % err)
        self.assertFalse(bound, "gateway bound a port with a bad config")
        self.assertIn("routes[1].upstream", err.decode(errors="replace"))


HOOKED = """local function tag(req) req:set_header("x-tag", "1") end
return {{
  listen = "127.0.0.1:{port}",
  admin = {{ listen = "127.0.0.1:{aport}", token = "t" }},
  upstreams = {{
    api = {{ backends = {{ "http://127.0.0.1:9001" }} }},
    web = {{ backends = {{ "http://127.0.0.1:9002", "http://127.0.0.1:9003" }},
            strategy = {{ pick = function(backends) return 1 end }} }},
  }},
  hooks = {{ on_request = tag, on_log = function() end }},
  routes = {{
    {{ match = {{ path_prefix = "/w" }}, upstream = "web", on_response = function() end }},
    {{ match = {{ path_prefix = "/" }}, upstream = "api" }},
  }},
}}
"""

SERVING = """return {{
  listen = "127.0.0.1:{port}",
  workers = 1,
  admin = {{ listen = "127.0.0.1:{aport}" }},
  routes = {{ {{ match = {{ path_prefix = "/" }}, respond = {{ status = 200, body = "old" }} }} }},
}}
"""


class EvaluationLimitsTest(ConfigFileCase):
    """gateway.lua that never finishes, grows without end or calls os.exit fails like any bad
    config, at -t, at start and on a reload (where the running configuration stays)."""

    TEST_TIMEOUT = 120


    def check_fails(self, p, needle):
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 1, err)
        self.assertIn(needle, err)
        self.assertNotIn("AddressSanitizer", err)
        self.assertNotIn("runtime error:", err)
        self.assertEqual(p.stdout, b"")

    def test_endless_loop_stops_at_the_time_limit(self):
        path = self.write("loop", "local n = 0\nwhile true do n = n + 1 end\n")
        t0 = time.monotonic()
        p = run_t(path, args=["--config-timeout-ms", "500"])
        took = time.monotonic() - t0
        self.check_fails(p, path + ":2: evaluation exceeded the time limit (500 ms, --config-timeout-ms)")
        self.assertLess(took, 10.0)
        # The default limit: 5 s.
        t0 = time.monotonic()
        p = run_t(path)
        took = time.monotonic() - t0
        self.check_fails(p, "evaluation exceeded the time limit (5000 ms")
        self.assertGreaterEqual(took, 5.0)
        self.assertLess(took, 20.0)

    def test_huge_table_stops_at_the_memory_limit(self):
        path = self.write("big", "local t = {}\nfor i = 1, 3e8 do t[i] = i end\nreturn t\n")
        # No time limit: only the memory limit can stop it, however loaded the machine is.
        p = run_t(path, args=["--config-timeout-ms", "0"])
        self.check_fails(p, path + ": evaluation exceeded the memory limit (256 MiB, --config-memory-mb)")
        p = run_t(path, args=["--config-memory-mb", "16"])
        self.check_fails(p, path + ": evaluation exceeded the memory limit (16 MiB")

    def test_bad_limit_options(self):
        path = self.write("any", "return {}\n")
        for args in (["--config-timeout-ms"], ["--config-timeout-ms", "-1"],
                     ["--config-memory-mb", "lots"], ["--config-memory-mb", "99999999999"]):
            with self.subTest(args):
                p = subprocess.run([PGW_BIN, "-t"] + args + [path], capture_output=True, timeout=10)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertIn(args[0], p.stderr.decode())

    def test_os_exit_is_an_error(self):
        for fn, call in (("os.exit", "os.exit(0)"), ("os.execute", "os.execute('true')"),
                         ("io.popen", "io.popen('true')")):
            with self.subTest(fn):
                path = self.write("exit", "local x = 1\n%s\nreturn {}\n" % call)
                p = run_t(path)
                self.check_fails(p, path + ":2: %s is not available in gateway.lua" % fn)
        # os.getenv still works.
        port, aport = free_port(), free_port()
        path = self.write("env", GOOD.format(port=port, aport=aport).replace(
            "workers = 1,", "workers = os.getenv('PGW_TEST_WORKERS') and 1 or 2,"))
        p = run_t(path)
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_t_counts_hooks_and_strategies(self):
        port, aport = free_port(), free_port()
        path = self.write("hooked", HOOKED.format(port=port, aport=aport))
        p = run_t(path)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.decode(),
                         "%s: ok: 2 upstreams (3 backends), 2 routes, 3 hooks, 1 Lua strategy, "
                         "admin on 127.0.0.1:%d (token)\n" % (path, aport))

    def test_100k_routes(self):
        path = self.write("many", """local routes = {}
for i = 1, 100000 do
  routes[i] = { name = "r" .. i, match = { path_prefix = "/p" .. i .. "/" }, upstream = "api" }
end
return { listen = "127.0.0.1:%d", admin = false,
  upstreams = { api = { backends = { "http://127.0.0.1:9001" } } }, routes = routes }
""" % free_port())
        t0 = time.monotonic()
        p = run_t(path, timeout=60)
        log("\n  -t with 100000 routes: %.2f s" % (time.monotonic() - t0))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"100000 routes", p.stdout)

    def test_reload_with_an_endless_loop(self):
        port, aport = free_port(), free_port()
        gw = self.gateway(SERVING.format(port=port, aport=aport), port=port, admin_port=aport,
                          args=["--config-timeout-ms", "1500"])
        self.assertEqual(get(port, "/")[2], b"old")
        good = gw.text
        with open(gw.path, "w") as f:
            f.write("while true do end\n")
        result = {}

        def reload():
            t0 = time.monotonic()
            result["answer"] = http_request(aport, "POST", "/reload", timeout=30)
            result["took"] = time.monotonic() - t0

        t = threading.Thread(target=reload)
        t.start()
        # The workers keep serving while the main thread evaluates the file.
        time.sleep(0.3)
        served = [get(port, "/")[2] for _ in range(5)]
        t.join(30)
        self.assertFalse(t.is_alive(), "POST /reload did not answer")
        st, _, body = result["answer"]
        self.assertEqual(st, 400, body)
        doc = json.loads(body)
        self.assertEqual(doc["error"], "reload_failed")
        self.assertIn("gateway.lua:1: evaluation exceeded the time limit (1500 ms", doc["message"])
        self.assertGreaterEqual(result["took"], 1.4)
        self.assertLess(result["took"], 15.0)
        self.assertEqual(served, [b"old"] * 5)
        # The old configuration runs on; the admin listener answers again.
        self.assertEqual(http_request(aport, "GET", "/healthz")[0], 200)
        self.assertEqual(get(port, "/")[2], b"old")
        self.assertIn("reload failed, configuration 1 stays", gw.stderr())
        # A memory hog fails the same way (one allocation past the limit: no race with the clock).
        with open(gw.path, "w") as f:
            f.write("local s = string.rep('x', 2^30)\n")
        st, _, body = http_request(aport, "POST", "/reload", timeout=30)
        self.assertEqual(st, 400, body)
        self.assertIn("evaluation exceeded the memory limit (256 MiB", json.loads(body)["message"])
        # And a good file still reloads.
        with open(gw.path, "w") as f:
            f.write(good.replace('"old"', '"new"'))
        st, _, body = http_request(aport, "POST", "/reload", timeout=30)
        self.assertEqual(st, 200, body)
        self.assertEqual(get(port, "/")[2], b"new")

    def test_sigterm_during_an_endless_reload(self):
        port, aport = free_port(), free_port()
        gw = self.gateway(SERVING.format(port=port, aport=aport), port=port, admin_port=aport,
                          args=["--config-timeout-ms", "1500"])
        with open(gw.path, "w") as f:
            f.write("while true do end\n")
        gw.signal(signal.SIGHUP)
        time.sleep(0.3)
        t0 = time.monotonic()
        rc = gw.stop(timeout=20)  # SIGTERM, while the main thread evaluates the file
        self.assertEqual(rc, 0)
        self.assertLess(time.monotonic() - t0, 15.0)
        self.assertIn("evaluation exceeded the time limit", gw.stderr())


class AdminExposureTest(ConfigFileCase):
    """An admin listener other hosts can reach needs a token or admin.insecure = true; a request
    with two Authorization headers is refused."""

    def config(self, admin):
        return ('return {\n  listen = "127.0.0.1:%d",\n  admin = %s,\n'
                '  routes = { { respond = { status = 200 } } },\n}\n' % (free_port(), admin))

    def test_exposed_admin_is_refused(self):
        aport = free_port()
        for listen in (":%d" % aport, "0.0.0.0:%d" % aport, "[::]:%d" % aport):
            with self.subTest(listen):
                path = self.write("exposed", self.config('{\n    listen = "%s" }' % listen))
                p = run_t(path)
                err = p.stderr.decode()
                self.assertEqual(p.returncode, 1, err)
                self.assertIn(os.path.basename(path) + ":4: admin.listen: \"%s\" is reachable from "
                              "other hosts and admin.token is not set" % listen, err)
                # A normal start refuses too, and binds nothing.
                proc = subprocess.run([PGW_BIN, path], capture_output=True, timeout=20)
                self.assertEqual(proc.returncode, 1, proc.stderr)
                self.assertIn("admin.listen", proc.stderr.decode())
                self.assertFalse(port_open(aport))
        for admin in ('{ listen = ":%d", token = "t" }' % aport,
                      '{ listen = "0.0.0.0:%d", insecure = true }' % aport):
            with self.subTest(admin):
                p = run_t(self.write("allowed", self.config(admin)))
                self.assertEqual(p.returncode, 0, p.stderr)

    def test_insecure_admin_starts_with_a_warning(self):
        aport = free_port()
        port = free_port()
        text = ('return {\n  listen = "127.0.0.1:%d",\n'
                '  admin = { listen = "0.0.0.0:%d", insecure = true },\n'
                '  routes = { { respond = { status = 200 } } },\n}\n' % (port, aport))
        gw = self.gateway(text, port=port, admin_port=aport)
        self.assertEqual(http_request(aport, "GET", "/healthz")[0], 200)
        self.assertIn("other hosts can reach it and no token is set (admin.insecure = true)",
                      gw.stderr())

    def test_two_authorization_headers(self):
        port, aport = free_port(), free_port()
        text = ('return {\n  listen = "127.0.0.1:%d",\n'
                '  admin = { listen = "127.0.0.1:%d", token = "t0k" },\n'
                '  routes = { { respond = { status = 200 } } },\n}\n' % (port, aport))
        self.gateway(text, port=port, admin_port=aport)
        for path, method in (("/reload", "POST"), ("/healthz", "GET")):
            with self.subTest(path):
                with Client(aport) as c:
                    c.send(build_request(method, path, headers=[
                        ("Host", "x"), ("Authorization", "Bearer t0k"),
                        ("Authorization", "Bearer t0k"), ("Content-Length", "0")]))
                    r = c.read_response(method)
                    self.assertEqual(r.status, 400, r)
                    self.assertIn(b"more than one Authorization header", r.body)
                    self.assertTrue(c.wait_closed())
        # One header with the token is accepted.
        st, _, body = http_request(aport, "POST", "/reload", headers={"Authorization": "Bearer t0k"})
        self.assertEqual(st, 200, body)


if __name__ == "__main__":
    main()
