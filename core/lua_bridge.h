/*
 * lua_bridge: one lua_State per worker (DESIGN §3, §6). Each worker evaluates gateway.lua in its
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

/** Runs the on_log hooks after the response, then drops the request's Lua state (ctx). */
void gw_lua_on_log(gw_lua_t *lua, gw_conn_t *c);

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

/** Binds upstream `u`'s Lua strategy in this worker: a read-only view over `raw` (n entries)
 * and a state table, then strategy.init(upstream_name, view) if it has one. Returns 0, or -1
 * (logged) when init failed. */
int gw_lua_strategy_bind(gw_lua_t *lua, uint32_t u, gw_ffi_backend_t *raw, size_t n, int *view_ref,
                         int *state_ref);
/** strategy.pick(view, req, state): the backend's index, or -1 after an error or an invalid
 * return (logged and counted; the caller falls back). */
int gw_lua_strategy_pick(gw_lua_t *lua, uint32_t u, int view_ref, int state_ref, gw_conn_t *c);
/** strategy.on_result(backend, result, state) if the strategy has it. */
void gw_lua_strategy_result(gw_lua_t *lua, uint32_t u, int view_ref, int state_ref, size_t idx,
                            int status, double latency_ms, bool ok);

/** True if the request's route (or the global table) has hook `h`. */
bool gw_lua_has_hook(const gw_conn_t *c, int h);

#endif
