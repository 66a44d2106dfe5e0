-- prequal-gw's default configuration. `./scripts/run` starts four example backends on
-- 127.0.0.1:9001-9004 and then the gateway on this file. `prequal-gw -t gateway.lua` checks it.
-- Every key is described in README.md ("gateway.lua reference").
return {
  listen  = "0.0.0.0:8080",
  workers = "auto",                        -- one worker thread per CPU
  -- GET /metrics, /status, /healthz; POST /register, /unregister, /reload (set `token` to
  -- require `Authorization: Bearer <token>` on those, e.g. token = os.getenv("PGW_ADMIN_TOKEN")).
  -- Edit this file and `kill -HUP` the gateway (or POST /reload) to apply it without a restart.
  admin   = { listen = "127.0.0.1:9901" },
  -- Backends may join at run time. Try it with a fifth example backend:
  --   build/pgw-backend --port 9005 &
  --   curl -s localhost:9901/register -d '{"url": "http://127.0.0.1:9005"}'
  -- A registration lasts ttl_ms unless renewed by the same call (a heartbeat).
  registration = { allow = { "127.0.0.0/8", "::1" }, ttl_ms = 30000 },
  access_log = "stdout",                   -- JSON lines; a file path works too (SIGUSR1 reopens)
  log_level  = "info",

  limits = {
    header_bytes = 32768,                  -- request line + headers, else 431
    body_bytes   = 16 * 1024 * 1024,       -- else 413 (0 = unlimited)
  },

  upstreams = {
    app = {
      -- Prequal (the default): probes backends for requests in flight and latency and sends each
      -- request to a cold replica with the lowest latency. `./scripts/run` makes backend 4 five
      -- times slower: watch prequal_picks_total and gw_upstream_requests_total on /metrics, and
      -- the probe pool on http://127.0.0.1:9901/status.
      strategy = "prequal",
      prequal  = { probe_path = "/probe", q_rif = 0.84, probes_per_request = 3 },
      backends = {
        "http://127.0.0.1:9001",
        "http://127.0.0.1:9002",
        "http://127.0.0.1:9003",
        "http://127.0.0.1:9004",
      },
      timeouts = { connect_ms = 1000, read_ms = 30000 },
      retries  = { max = 2 },
      -- Hedging (off by default): a GET or HEAD still without a response head after 25 ms goes
      -- once more to another backend, at most 10 % extra requests (README, "Hedging").
      -- hedge    = { after_ms = 25 },
      -- Passive ejection after 3 transport failures in a row, and active checks of /health.
      health   = { max_fails = 3, eject_ms = 1000, path = "/health", interval_ms = 2000 },
    },
  },

  routes = {                               -- first match wins, in this order
    { name = "hello", match = { path_prefix = "/hello", methods = { "GET", "HEAD" } },
      respond = { status = 200, body = "hello from prequal-gw\n" } },
    { name = "api", match = { path_prefix = "/api/" }, upstream = "app", strip_prefix = true,
      response_headers = { set = { ["X-Served-By"] = "prequal-gw" } } },
    { name = "default", match = { path_prefix = "/" }, upstream = "app" },
  },
}
