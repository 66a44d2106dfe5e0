/*
 * config: runs gateway.lua under LuaJIT, validates the table it returns and builds an immutable
 * gw_config_t from it. After gw_config_load returns, nothing in the config changes and no
 * lua_State is kept: workers share it read-only. All strings are NUL-terminated and owned by the
 * config; gw_config_free releases everything.
 *
 * Errors name the key path and the place in the file, e.g.
 *   gateway.lua:12: routes[2].match.path_prefix: expected string, got number
 */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "cidr.h"
#include "lua_guard.h"
#include "prequal.h"

typedef struct gw_addr {
    char *text; /* as written in the config, e.g. "0.0.0.0:8080" */
    struct sockaddr_storage sa;
    socklen_t salen;
} gw_addr_t;

/* Lua hooks (ARCHITECTURE.md §6). A route or the global `hooks` table has a bit set for each it defines;
 * the functions themselves live in each worker's lua_State (lua_bridge), not here. */
enum {
    GW_HOOK_ON_REQUEST = 0,
    GW_HOOK_REWRITE_PATH,
    GW_HOOK_ON_RESPONSE,
    GW_HOOK_ON_LOG,
    GW_HOOK_COUNT
};
#define GW_HOOK_BIT(h) (1u << (h))

/* The membership hooks of the top-level `hooks` table. They run on the main thread, in a
 * lua_State of its own (registry.c), when a backend joins or leaves an upstream. */
enum { GW_MHOOK_ON_REGISTER = 1, GW_MHOOK_ON_UNREGISTER = 2 };

/* Most backends (static and registered) one upstream can have: a request's tried set is a
 * 256-bit set. */
#define GW_MAX_UPSTREAM_BACKENDS 256

typedef struct gw_header_kv {
    char *name;
    char *value;
} gw_header_kv_t;

/* Header edits for one direction: every `set` header replaces all headers of that name (or is
 * added), every `remove` name is dropped. Names are stored lower-case. `set` is sorted by name. */
typedef struct gw_header_ops {
    gw_header_kv_t *set;
    size_t nset;
    char **remove;
    size_t nremove;
} gw_header_ops_t;

typedef struct gw_backend_cfg {
    char *url;       /* "http://127.0.0.1:9001" as written */
    char *authority; /* "127.0.0.1:9001": the Host header sent when preserve_host is off */
    uint32_t weight; /* default 1 */
    uint32_t gindex; /* index among all backends of all upstreams (metrics, shared state) */
    struct sockaddr_storage sa;
    socklen_t salen;
    char *meta_json; /* a registered backend's `meta` as JSON (registry.c), else NULL */
} gw_backend_cfg_t;

/* Health checking: passive ejection (health.h) and active checks (hcheck.h). */
typedef struct gw_health_cfg {
    uint32_t max_fails;           /* health.max_fails, default 3; 0 disables ejection */
    uint32_t eject_ms;            /* health.eject_ms, default 1000; doubles per ejection in a row */
    uint32_t max_eject_ms;        /* health.max_eject_ms, default 30000 */
    uint32_t max_ejected_percent; /* health.max_ejected_percent, default 50 */
    char *path;                   /* health.path: active checks GET it; NULL: passive only */
    uint32_t interval_ms;         /* health.interval_ms, default 2000 */
    uint32_t timeout_ms;          /* health.timeout_ms, default 500 */
    uint32_t healthy_threshold;   /* health.healthy_threshold, default 2: passes to come back */
    uint32_t unhealthy_threshold; /* health.unhealthy_threshold, default 3: failures to go down */
} gw_health_cfg_t;

/* `upstreams.X.hedge = {...}` (hedge.h); `enabled` false when the key is absent (the default). */
typedef struct gw_hedge_cfg {
    bool enabled;
    uint32_t after_ms;       /* fixed delay in ms, 0 when after_quantile is used */
    double after_quantile;   /* 0 < q < 1, or 0 when after_ms is used */
    uint32_t max;            /* hedges per request, 1 */
    uint32_t budget_percent; /* 1..100, default 10 */
} gw_hedge_cfg_t;

typedef struct gw_upstream_cfg {
    char *name;
    char *strategy; /* `strategy`, default "prequal"; see gw_lb_names() */
    gw_backend_cfg_t *backends;
    size_t nbackends;
    uint32_t connect_timeout_ms; /* timeouts.connect_ms, default 1000 */
    uint32_t read_timeout_ms;    /* timeouts.read_ms, default 30000: response head and between reads */
    uint32_t send_timeout_ms;    /* timeouts.send_ms, default 30000: a write to the backend */
    uint32_t retries_max;        /* retries.max, default 2 */
    uint32_t retry_backoff_ms;   /* retries.backoff_ms, default 0 */
    uint32_t keepalive_max_idle; /* keepalive.max_idle, default 64 (per backend per worker) */
    uint32_t keepalive_idle_ms;  /* keepalive.idle_timeout_ms, default 60000 */
    gw_health_cfg_t health;
    gw_prequal_params_t prequal; /* `prequal = {...}`: docs/PREQUAL.md §2, with the paper's defaults */
    char *probe_path;            /* prequal.probe_path, default "/probe" */
    gw_hedge_cfg_t hedge;        /* `hedge = {...}`: off unless given (hedge.h) */
    bool lua_strategy;           /* `strategy` is a Lua table; `strategy` holds its name */
    char *fallback_strategy;     /* native strategy when the Lua one fails; default round_robin */
    /* Slots: backends[0..nbackends) are the static backends; with registration on, the slots
     * nbackends..nslots-1 are reserved for registered ones. Slot k has gindex gindex0 + k. */
    uint32_t nslots;
    uint32_t gindex0;
} gw_upstream_cfg_t;

/* `registration = {...}`: backends joining and leaving through the admin API (ARCHITECTURE.md §8). */
typedef struct gw_registration_cfg {
    bool enabled;
    gw_cidr_t *allow;      /* registration.allow: a registered URL's address must be in one */
    size_t nallow;
    uint32_t ttl_ms;       /* registration.ttl_ms, default 30000; 0: registrations never expire */
    uint32_t max_backends; /* registration.max_backends per upstream, default 64 */
    int upstream;          /* registration.upstream (or the only upstream): for bodies without one; -1 */
} gw_registration_cfg_t;

typedef struct gw_respond_cfg {
    int status; /* 100..599 */
    char *body; /* may contain NULs; body_len is authoritative */
    size_t body_len;
    gw_header_kv_t *headers; /* names lower-case, sorted */
    size_t nheaders;
} gw_respond_cfg_t;

typedef struct gw_route_cfg {
    char *name;          /* `name`, or "routes[N]" (1-based) */
    char *path_prefix;   /* match.path_prefix; NULL matches every path */
    char *host;          /* match.host, lower-case; "*.example.com" matches any subdomain; NULL: any */
    uint64_t methods;    /* match.methods as a bit mask of llhttp_method_t values; 0: any method */
    int upstream;        /* index into gw_config_t.upstreams, or -1 for a respond route */
    bool strip_prefix;   /* remove path_prefix from the path sent upstream */
    char *add_prefix;    /* prepended after stripping; NULL: none */
    bool preserve_host;  /* send the client's Host instead of the backend's authority */
    bool merge_slashes;  /* default true: "//" counts as "/" in the canonical path */
    bool decode_slash;   /* encoded_slash = "decode": %2F, %5C and '\' are "/"; else a 400 */
    bool normalize_path; /* send the canonical path upstream, not the client's */
    gw_header_ops_t request_headers;
    gw_header_ops_t response_headers;
    bool has_respond;
    gw_respond_cfg_t respond;
    int line; /* line of the route in gateway.lua, 0 if unknown */
    uint8_t hooks;      /* GW_HOOK_BIT()s of the hooks this route defines */
    uint64_t buffer_response; /* buffer_response: max body bytes to buffer (true = 1 MiB), 0: stream */
    bool lua_fail_open; /* lua.on_error = "continue": a hook error lets the request go on */
} gw_route_cfg_t;

typedef struct gw_limits {
    uint32_t max_header_bytes; /* limits.header_bytes, default 32768: request line + headers -> 431 */
    uint32_t max_uri_bytes;    /* limits.uri_bytes, default 8192 -> 414 */
    uint32_t max_headers;      /* limits.headers, default 100 -> 431 */
    uint64_t max_body_bytes;   /* limits.body_bytes, default 16 MiB, 0 = unlimited -> 413 */
    uint32_t max_connections;  /* limits.connections, default 16384 per worker */
} gw_limits_t;

typedef struct gw_client_timeouts {
    uint32_t header_ms;    /* timeouts.header_ms, default 10000: whole request head -> 408 */
    uint32_t body_ms;      /* timeouts.body_ms, default 60000: whole request body, total -> 408 */
    uint32_t keepalive_ms; /* timeouts.keepalive_ms, default 75000: idle between requests */
    uint32_t send_ms;      /* timeouts.send_ms, default 60000: a write to the client stalls */
    uint32_t drain_ms;     /* timeouts.drain_ms, default 10000: graceful shutdown limit */
} gw_client_timeouts_t;

/* The longest `via` pseudonym (http1.c formats Via's element into a small stack buffer). */
#define GW_VIA_MAX 64

typedef struct gw_config {
    char *path; /* the file it was loaded from */
    gw_addr_t *listen;
    size_t nlisten;
    uint32_t workers; /* resolved: "auto" is the number of CPUs */
    bool admin_enabled;
    gw_addr_t admin_listen; /* admin.listen, default 127.0.0.1:9901; admin = false disables */
    char *admin_token;      /* admin.token, NULL: none */
    bool admin_insecure;    /* admin.insecure let it listen beyond loopback without a token */
    gw_limits_t limits;
    gw_client_timeouts_t timeouts;
    char *access_log; /* "stdout", "stderr", a path, or NULL (off, the default) */
    int log_level;    /* log_level: "debug" | "info" (default) | "warn" | "error" -> GW_LOG_* */
    char *via;        /* the pseudonym added to Via (default "prequal-gw"); NULL: via = false */
    gw_upstream_cfg_t *upstreams; /* sorted by name */
    size_t nupstreams;
    gw_route_cfg_t *routes;
    size_t nroutes;
    size_t nbackends_total; /* sum of nslots over upstreams: every gindex is below it */
    uint8_t global_hooks;   /* GW_HOOK_BIT()s defined in the top-level `hooks` table */
    uint8_t membership_hooks; /* GW_MHOOK_* defined in the top-level `hooks` table */
    gw_registration_cfg_t registration;
    bool uses_lua;          /* any hook or Lua strategy: workers need a lua_State */
    gw_lua_limits_t lua_limits; /* it was evaluated under; so are the workers' evaluations */
} gw_config_t;

/**
 * Runs the Lua file at `path`, validates the table it returns and builds a config.
 * `lua_dir` is added to package.path (with the file's own directory); it may be NULL.
 * The file runs sandboxed and under `limits` (lua_guard.h; NULL: GW_LUA_LIMITS_DEFAULT), so it
 * blocks the caller for at most limits->time_ms plus the validation.
 * Returns the config (free with gw_config_free), or NULL with *err set to a malloc'd message that
 * the caller frees. Blocking: resolves backend host names with getaddrinfo.
 */
gw_config_t *gw_config_load_limited(const char *path, const char *lua_dir,
                                    const gw_lua_limits_t *limits, char **err);

/** gw_config_load_limited with the default limits. */
gw_config_t *gw_config_load(const char *path, const char *lua_dir, char **err);

/**
 * Same as gw_config_load but runs `source` as if it were the file `chunkname` (tests use this).
 */
gw_config_t *gw_config_load_string(const char *chunkname, const char *source, const char *lua_dir,
                                   char **err);

void gw_config_free(gw_config_t *cfg);

/** The number of backend slots of `u` (static and registration slots). */
static inline uint32_t gw_upstream_nslots(const gw_upstream_cfg_t *u)
{
    return u->nslots > u->nbackends ? u->nslots : (uint32_t)u->nbackends;
}

/** The gindex of slot `k` of `u`. */
static inline uint32_t gw_upstream_slot_gindex(const gw_upstream_cfg_t *u, uint32_t k)
{
    return k < u->nbackends ? u->backends[k].gindex : u->gindex0 + k;
}

/** Index of the upstream called `name`, or -1. */
int gw_config_upstream_index(const gw_config_t *cfg, const char *name);

#endif
