/*
 * lua_bridge: one lua_State per worker (ARCHITECTURE.md §3, §6). Each worker evaluates gateway.lua in its
 * own state and keeps references to the hook functions it returned (the main thread's evaluation
 * is the one that was validated; the file must be deterministic). Hooks run synchronously with
 * lua_pcall and a traceback handler, so no Lua error ever unwinds through C; Lua calls back into
 * the request through the gw_ffi_* functions (lua_ffi.c) declared with ffi.cdef in lua/gw/init.lua.
 *
 * A worker whose config has no Lua never creates a state, and a route without hooks never calls
 * into this module: the hot path stays Lua-free.
 */
#ifndef GW_LUA_BRIDGE_H
#define GW_LUA_BRIDGE_H

#include "backend.h"
#include "config.h"
#include "http1.h"

typedef struct gw_worker gw_worker_t;
typedef struct gw_conn gw_conn_t;
typedef struct gw_lua gw_lua_t;

/* Hook calls slower than this are logged and counted (count hooks cannot interrupt JIT code, so
 * a runaway hook is measured rather than stopped). */
#define GW_LUA_SLOW_NS (10 * 1000 * 1000ULL)

typedef struct lua_State lua_State;

/** Loads lua_dir/gw/init.lua, registers it as package.loaded.gw and leaves it on the stack.
 * Returns 0, or -1 with the error message on the stack. */
int gw_lua_load_api(lua_State *L, const char *lua_dir);

/** Creates the worker's state: runs the config file, takes its hooks, applies the sandbox
 * (no os.execute, os.exit, io.popen, package.loadlib, C modules). Returns 0, or -1 with *err
 * set to a malloc'd message. */
int gw_lua_new(gw_worker_t *w, gw_lua_t **out, char **err);
void gw_lua_free(gw_lua_t *lua);

enum { GW_LUA_CONTINUE = 0, GW_LUA_RESPONDED = 1, GW_LUA_FAILED = -1 };

/** Runs the global and route on_request hooks, then rewrite_path. Returns GW_LUA_CONTINUE,
 * GW_LUA_RESPONDED (the request's lua_respond/lua_body/resp_edits say what to answer), or
 * GW_LUA_FAILED (a hook failed and the route does not fail open: answer 500). */
int gw_lua_on_request(gw_lua_t *lua, gw_conn_t *c);

/** Runs the on_response hooks on the response about to be sent (status and headers may
 * change). Returns GW_LUA_CONTINUE or GW_LUA_FAILED. */
int gw_lua_on_response(gw_lua_t *lua, gw_conn_t *c);

/** The request ended, answered or not (its status is final: 499 when the client went away
 * first): runs the on_log hooks, drops the request's Lua state (req.ctx) and publishes the
 * worker's Lua heap size. conn.c calls it exactly once per request that ran Lua or has an on_log
 * hook, on every end path. */
void gw_lua_request_end(gw_lua_t *lua, gw_conn_t *c);

/* One backend as a Lua strategy's view reads it (lua/gw/init.lua declares the same struct).
 * The C side refreshes the array before each pick; Lua reads fields straight from it. */
typedef struct gw_ffi_backend {
    uint32_t id;     /* 1-based index in the upstream */
    uint32_t weight;
    int32_t healthy;
    uint32_t rif;    /* the gateway's in-flight count to it (all workers) */
    uint32_t fails;
    int32_t probe_rif; /* -1: no probe entry */
    double latency_ms;
    double probe_latency_ms;
    double probe_age_ms;
} gw_ffi_backend_t;

/** Builds upstream `u`'s Lua strategy view in this worker: read-only backends over `raw` (one
 * entry per slot, `n` slots) for the slots not in `absent`. The first time (*state_ref is
 * LUA_NOREF) it creates the state table and runs strategy.init(upstream_name, view, state);
 * later (membership changed) it replaces the view and runs strategy.on_backends_changed(view,
 * state). Returns 0, or -1 (logged, counted) when init failed: the strategy is unusable then. */
int gw_lua_strategy_view(gw_lua_t *lua, uint32_t u, gw_ffi_backend_t *raw,
                         gw_backend_t *const *backends, size_t n, const uint64_t *absent,
                         int *view_ref, int *state_ref);
/** strategy.pick(view, req, state): the backend's index, or -1 after an error or an invalid
 * return (logged and counted; the caller falls back). */
int gw_lua_strategy_pick(gw_lua_t *lua, uint32_t u, int view_ref, int state_ref, gw_conn_t *c);
/** strategy.on_result(backend, result, state) if the strategy has it. */
void gw_lua_strategy_result(gw_lua_t *lua, uint32_t u, int view_ref, int state_ref, size_t idx,
                            int status, double latency_ms, bool ok);

/* ---- membership hooks (main thread) ---- */

typedef struct gw_lua_ctl gw_lua_ctl_t;

/* A backend as hooks.on_register / on_unregister see it: {id, url, weight, meta, static}. */
typedef struct gw_lua_backend_info {
    uint32_t id;           /* slot + 1 in its upstream */
    const char *url;
    uint32_t weight;
    const char *meta_json; /* a registered backend's meta, or NULL */
    int static_index;      /* index among the upstream's static backends, or -1 */
} gw_lua_backend_info_t;

/** The main thread's own evaluation of gateway.lua, for the membership hooks (gw.worker.id is
 * -1 there). Returns 0, or -1 with *err set. */
int gw_lua_ctl_new(const gw_config_t *cfg, gw_lua_ctl_t **out, char **err);
void gw_lua_ctl_free(gw_lua_ctl_t *ctl);
/** hooks.on_register(backend, upstream_name): 1 admits (also without the hook, or with ctl
 * NULL), 0 rejects (it returned false), -1 when it raised (*err: the message with traceback,
 * malloc'd). */
int gw_lua_ctl_on_register(gw_lua_ctl_t *ctl, size_t u, const gw_lua_backend_info_t *b, char **err);
/** hooks.on_unregister(backend, upstream_name, reason); errors are logged. No hook or ctl NULL:
 * nothing. */
void gw_lua_ctl_on_unregister(gw_lua_ctl_t *ctl, size_t u, const gw_lua_backend_info_t *b,
                              const char *reason);

/** True if the request's route (or the global table) has hook `h`. */
bool gw_lua_has_hook(const gw_conn_t *c, int h);

#endif
