/*
 * lua_bridge: see lua_bridge.h.
 *
 * References: the hook functions of the worker's own evaluation of gateway.lua are kept in the
 * registry (luaL_ref) for the life of the worker: `global[h]` for the top-level `hooks` table and
 * `route[i * GW_HOOK_COUNT + h]` per route, LUA_NOREF where there is none. The runners
 * gw._on_request / gw._rewrite_path / gw._on_response / gw._end (lua/gw/init.lua) are referenced
 * too, so a call is: push traceback handler, runner, hook, request id; lua_pcall.
 *
 * Per-request state: the first Lua call of a request gives it an id from the worker's counter
 * (never reused, unlike the connection's address, which a later connection may get), and Lua
 * keeps req.ctx under that id. gw_lua_request_end drops it; conn.c calls that exactly once per
 * request, however the request ended, so nothing of a request outlives it in the Lua heap.
 *
 * Errors: a hook error is logged with route, hook and traceback and counted in
 * gw_lua_errors_total{route,hook}; the request gets a 500 with a generic body (never the Lua
 * message) unless the route says lua = { on_error = "continue" }.
 */
#include "lua_bridge.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "lua_guard.h"
#include "worker.h"

extern void *const gw_ffi_keep[];
extern __thread gw_conn_t *gw_ffi_current;

struct gw_lua {
    lua_State *L;
    gw_worker_t *w;
    int tb;      /* debug.traceback */
    int run_request, run_path, run_response, run_end;
    int global[GW_HOOK_COUNT];
    int *route;  /* [nroutes * GW_HOOK_COUNT] */
    int *strategy; /* [nupstreams]: the Lua strategy table, or LUA_NOREF */
    int *metas;    /* [nupstreams]: a list of the backends' meta tables */
    int run_make_view, run_pick, run_result, run_changed;
    uint64_t last_id; /* the last request id handed out (gw_request_t.lua_id) */
};

static const char *const hook_names[GW_HOOK_COUNT] = {"on_request", "rewrite_path", "on_response",
                                                      "on_log"};

/* Sets package.path to the config's directory, then the Lua library directory. */
static void lua_set_path(lua_State *L, const char *config_path, const char *lua_dir)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", config_path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        strcpy(dir, ".");
    else if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s/?.lua;%s/?/init.lua;", dir, dir, lua_dir, lua_dir);
    lua_getfield(L, -2, "path");
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

/* Takes t[key] as a registry reference if it is a function. */
static int lua_ref_field(lua_State *L, int t, const char *key)
{
    lua_getfield(L, t, key);
    if (lua_type(L, -1) == LUA_TFUNCTION)
        return luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
    return LUA_NOREF;
}

/* After loading: what a hook must not do at run time (ARCHITECTURE.md §6), beyond
 * gw_lua_guard_sandbox, which applies while loading too. C modules needed by the API (cjson, ffi)
 * are loaded already; no new one can be. */
static void lua_sandbox(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_pushnil(L);
    lua_setfield(L, -2, "loadlib");
    lua_pushstring(L, "");
    lua_setfield(L, -2, "cpath");
    /* Drop the C loaders (package.loaders[3] and [4]). */
    lua_getfield(L, -1, "loaders");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        lua_rawseti(L, -2, 4);
        lua_pushnil(L);
        lua_rawseti(L, -2, 3);
    }
    lua_pop(L, 2);
}

int gw_lua_load_api(lua_State *L, const char *lua_dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/gw/init.lua", lua_dir);
    if (luaL_loadfile(L, path) != 0 || lua_pcall(L, 0, 1, 0) != 0)
        return -1;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "gw");
    lua_pop(L, 2);
    return 0;
}

/* Opens a state with the gw API (gw.worker.id = worker_id) and runs the config file in it,
 * leaving the table it returned on the stack. Returns the state, or NULL with *err set. The
 * traceback handler's reference goes to *tb. */
static lua_State *lua_open_config(const gw_config_t *cfg, int worker_id, int *tb, lua_State **keep,
                                  char **err)
{
    lua_State *L = luaL_newstate();
    if (!L)
        abort();
    *keep = L;
    luaL_openlibs(L);
    gw_lua_guard_sandbox(L);
    const char *lua_dir = getenv("PGW_LUA_DIR") ? getenv("PGW_LUA_DIR") : PGW_LUA_DIR;
    lua_set_path(L, cfg->path, lua_dir);
    lua_getglobal(L, "debug");
    lua_getfield(L, -1, "traceback");
    *tb = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
    /* The gw API first, so that gateway.lua and the modules it requires can use it. It is
     * loaded by its path, not through require, so a config file named gw.lua cannot shadow it. */
    if (gw_lua_load_api(L, lua_dir) != 0) {
        *err = gw_asprintf("loading the gw Lua module: %s", lua_tostring(L, -1));
        return NULL;
    }
    lua_getfield(L, -1, "worker");
    lua_pushinteger(L, worker_id);
    lua_setfield(L, -2, "id");
    lua_pop(L, 1);
    lua_setglobal(L, "gw");
    if (luaL_loadfile(L, cfg->path) != 0 ||
        gw_lua_guard_pcall(L, 0, 1, 0, &cfg->lua_limits, cfg->path) != 0) {
        *err = gw_asprintf("%s evaluation of %s: %s", worker_id < 0 ? "main thread" : "worker",
                           cfg->path, lua_tostring(L, -1));
        return NULL;
    }
    if (!lua_istable(L, -1)) {
        *err = gw_asprintf("%s evaluation of %s: did not return a table",
                           worker_id < 0 ? "main thread" : "worker", cfg->path);
        return NULL;
    }
    return L;
}

/* Pushes the list of the meta tables of the static backends of the upstream table at ut
 * (an empty table for a backend without one). */
static void lua_static_metas(lua_State *L, int ut, size_t nbackends)
{
    lua_newtable(L);
    lua_getfield(L, ut, "backends");
    for (size_t i = 0; i < nbackends && lua_istable(L, -1); i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        if (lua_istable(L, -1))
            lua_getfield(L, -1, "meta");
        else
            lua_pushnil(L);
        if (!lua_istable(L, -1)) {
            lua_pop(L, 1);
            lua_newtable(L);
        }
        lua_rawseti(L, -4, (int)i + 1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Publishes the size of the worker's Lua heap (gw_lua_memory_bytes): two field reads, cheap
 * enough for the end of every request that ran Lua, which is when it can have changed. */
static void bridge_publish_memory(gw_lua_t *lua)
{
    uint64_t bytes =
        (uint64_t)lua_gc(lua->L, LUA_GCCOUNT, 0) * 1024 + (uint64_t)lua_gc(lua->L, LUA_GCCOUNTB, 0);
    GW_RELAXED_STORE(lua->w->metrics->lua_memory_bytes, bytes);
}

/* Pushes the request's id (the key of its ctx), giving it one at its first Lua call. A double
 * holds every id exactly up to 2^53: centuries at a million requests a second. */
static void bridge_push_request(gw_lua_t *lua, gw_conn_t *c)
{
    gw_request_t *r = &c->req;
    if (!r->lua_id)
        r->lua_id = ++lua->last_id;
    lua_pushnumber(lua->L, (lua_Number)r->lua_id);
}

int gw_lua_new(gw_worker_t *w, gw_lua_t **out, char **err)
{
    const gw_config_t *cfg = w->cfg;
    GW_UNUSED(gw_ffi_keep[0]);
    gw_lua_t *lua = calloc(1, sizeof *lua);
    if (!lua)
        abort();
    lua->w = w;
    lua->route = malloc((cfg->nroutes ? cfg->nroutes : 1) * GW_HOOK_COUNT * sizeof(int));
    if (!lua->route)
        abort();
    for (size_t i = 0; i < cfg->nroutes * GW_HOOK_COUNT; i++)
        lua->route[i] = LUA_NOREF;
    for (int h = 0; h < GW_HOOK_COUNT; h++)
        lua->global[h] = LUA_NOREF;
    lua->strategy = malloc((cfg->nupstreams ? cfg->nupstreams : 1) * sizeof(int));
    lua->metas = malloc((cfg->nupstreams ? cfg->nupstreams : 1) * sizeof(int));
    if (!lua->strategy || !lua->metas)
        abort();
    for (size_t u = 0; u < cfg->nupstreams; u++)
        lua->strategy[u] = lua->metas[u] = LUA_NOREF;
    lua_State *L = lua_open_config(cfg, w->id, &lua->tb, &lua->L, err);
    if (!L)
        goto fail;
    int t = lua_gettop(L);
    lua_getglobal(L, "gw");
    lua->run_request = lua_ref_field(L, -1, "_on_request");
    lua->run_path = lua_ref_field(L, -1, "_rewrite_path");
    lua->run_response = lua_ref_field(L, -1, "_on_response");
    lua->run_end = lua_ref_field(L, -1, "_end");
    lua->run_make_view = lua_ref_field(L, -1, "_make_view");
    lua->run_pick = lua_ref_field(L, -1, "_strategy_pick");
    lua->run_result = lua_ref_field(L, -1, "_strategy_result");
    lua->run_changed = lua_ref_field(L, -1, "_backends_changed");
    lua_pop(L, 1);
    lua_getfield(L, t, "hooks");
    if (lua_istable(L, -1))
        for (int h = 0; h < GW_HOOK_COUNT; h++)
            lua->global[h] = lua_ref_field(L, lua_gettop(L), hook_names[h]);
    lua_pop(L, 1);
    /* Upstreams: Lua strategy tables and every backend's meta table (a list per upstream). */
    lua_getfield(L, t, "upstreams");
    for (size_t u = 0; u < cfg->nupstreams && lua_istable(L, -1); u++) {
        lua_getfield(L, -1, cfg->upstreams[u].name);
        int ut = lua_gettop(L);
        lua_getfield(L, ut, "strategy");
        lua->strategy[u] = lua_istable(L, -1) ? luaL_ref(L, LUA_REGISTRYINDEX) : (lua_pop(L, 1), LUA_NOREF);
        lua_static_metas(L, ut, cfg->upstreams[u].nbackends);
        lua->metas[u] = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_settop(L, ut - 1);
    }
    lua_pop(L, 1);
    lua_getfield(L, t, "routes");
    for (size_t i = 0; i < cfg->nroutes && lua_istable(L, -1); i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        if (lua_istable(L, -1))
            for (int h = 0; h < GW_HOOK_COUNT; h++)
                lua->route[i * GW_HOOK_COUNT + h] = lua_ref_field(L, lua_gettop(L), hook_names[h]);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
    /* The evaluation must agree with the validated one: same hooks on the same routes. */
    for (size_t i = 0; i < cfg->nroutes; i++)
        for (int h = 0; h < GW_HOOK_COUNT; h++)
            if ((lua->route[i * GW_HOOK_COUNT + h] != LUA_NOREF) != !!(cfg->routes[i].hooks & GW_HOOK_BIT(h))) {
                *err = gw_asprintf("%s evaluated differently in a worker (route %s): gateway.lua "
                                          "must return the same table every time",
                                          cfg->path, cfg->routes[i].name);
                goto fail;
            }
    lua_sandbox(L);
    lua_gc(L, LUA_GCCOLLECT, 0);
    bridge_publish_memory(lua);
    *out = lua;
    return 0;
fail:
    gw_lua_free(lua);
    return -1;
}

void gw_lua_free(gw_lua_t *lua)
{
    if (!lua)
        return;
    if (lua->L)
        lua_close(lua->L);
    free(lua->route);
    free(lua->strategy);
    free(lua->metas);
    free(lua);
}

/* ---- Lua strategies ---- */

static void lua_strategy_error(gw_lua_t *lua, uint32_t u, const char *what)
{
    GW_COUNTER_INC(lua->w->metrics->lua_strategy_errors[u]);
    gw_log_err("lua: strategy of upstream %s: %s: %s", lua->w->cfg->upstreams[u].name, what,
               lua_tostring(lua->L, -1));
}

int gw_lua_strategy_view(gw_lua_t *lua, uint32_t u, gw_ffi_backend_t *raw,
                         gw_backend_t *const *backends, size_t n, const uint64_t *absent,
                         int *view_ref, int *state_ref)
{
    lua_State *L = lua->L;
    const gw_upstream_cfg_t *uc = &lua->w->cfg->upstreams[u];
    bool first = *state_ref == LUA_NOREF;
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->tb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->run_make_view);
    lua_pushlightuserdata(L, raw);
    lua_newtable(L); /* ids of the members, in slot order */
    lua_newtable(L); /* urls by id */
    lua_newtable(L); /* metas by id: a table (static) or JSON text (registered) */
    int ids = base + 4, urls = base + 5, metas = base + 6, nids = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->metas[u]);
    int statics = base + 7;
    for (size_t k = 0; k < n; k++) {
        if ((absent[k / 64] >> (k % 64)) & 1)
            continue;
        const gw_backend_cfg_t *bc = backends[k]->cfg;
        lua_pushinteger(L, (lua_Integer)k + 1);
        lua_rawseti(L, ids, ++nids);
        lua_pushstring(L, bc->url);
        lua_rawseti(L, urls, (int)k + 1);
        if (k < uc->nbackends)
            lua_rawgeti(L, statics, (int)k + 1);
        else {
            const char *meta = __atomic_load_n(&bc->meta_json, __ATOMIC_ACQUIRE);
            if (meta)
                lua_pushstring(L, meta);
            else
                lua_pushnil(L);
        }
        lua_rawseti(L, metas, (int)k + 1);
    }
    lua_pop(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->strategy[u]);
    lua_pushstring(L, uc->name);
    if (first)
        lua_pushnil(L);
    else
        lua_rawgeti(L, LUA_REGISTRYINDEX, *state_ref);
    /* _make_view(raw, ids, urls, metas, strategy, upstream, state) -> view, state */
    if (lua_pcall(L, 7, 2, base + 1) != 0) {
        lua_strategy_error(lua, u, first ? "init" : "building the backend view");
        lua_settop(L, base);
        return -1;
    }
    int new_state = luaL_ref(L, LUA_REGISTRYINDEX);
    int new_view = luaL_ref(L, LUA_REGISTRYINDEX);
    if (!first) {
        luaL_unref(L, LUA_REGISTRYINDEX, *view_ref);
        luaL_unref(L, LUA_REGISTRYINDEX, new_state); /* the same table as *state_ref */
        new_state = *state_ref;
    }
    *view_ref = new_view;
    *state_ref = new_state;
    lua_settop(L, base);
    if (!first) {
        /* on_backends_changed runs on its own: if it fails, the new view stays. */
        lua_rawgeti(L, LUA_REGISTRYINDEX, lua->tb);
        lua_rawgeti(L, LUA_REGISTRYINDEX, lua->run_changed);
        lua_rawgeti(L, LUA_REGISTRYINDEX, lua->strategy[u]);
        lua_rawgeti(L, LUA_REGISTRYINDEX, *view_ref);
        lua_rawgeti(L, LUA_REGISTRYINDEX, *state_ref);
        if (lua_pcall(L, 3, 0, base + 1) != 0)
            lua_strategy_error(lua, u, "on_backends_changed failed");
        lua_settop(L, base);
    }
    return 0;
}

int gw_lua_strategy_pick(gw_lua_t *lua, uint32_t u, int view_ref, int state_ref, gw_conn_t *c)
{
    lua_State *L = lua->L;
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->tb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->run_pick);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->strategy[u]);
    lua_rawgeti(L, LUA_REGISTRYINDEX, view_ref);
    bridge_push_request(lua, c);
    lua_rawgeti(L, LUA_REGISTRYINDEX, state_ref);
    int idx = -1;
    gw_conn_t *prev = gw_ffi_current;
    gw_ffi_current = c;
    uint64_t t0 = gw_now_ns();
    int rc = lua_pcall(L, 4, 1, base + 1);
    gw_ffi_current = prev;
    if (rc != 0)
        lua_strategy_error(lua, u, "pick failed");
    else if (lua_isnumber(L, -1))
        idx = (int)lua_tointeger(L, -1);
    else {
        lua_pushliteral(L, "(it returned nil)");
        lua_strategy_error(lua, u, "pick returned no backend");
    }
    uint64_t dt = gw_now_ns() - t0;
    if (dt > GW_LUA_SLOW_NS) {
        GW_COUNTER_INC(lua->w->metrics->lua_strategy_slow[u]);
        gw_log_warn("lua: slow pick in the strategy of upstream %s: %.1f ms",
                    lua->w->cfg->upstreams[u].name, (double)dt / 1e6);
    }
    lua_settop(L, base);
    return idx;
}

void gw_lua_strategy_result(gw_lua_t *lua, uint32_t u, int view_ref, int state_ref, size_t idx,
                            int status, double latency_ms, bool ok)
{
    lua_State *L = lua->L;
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->tb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->run_result);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->strategy[u]);
    lua_rawgeti(L, LUA_REGISTRYINDEX, view_ref);
    lua_pushinteger(L, (lua_Integer)idx);
    lua_pushinteger(L, status);
    lua_pushnumber(L, latency_ms);
    lua_pushboolean(L, ok);
    lua_rawgeti(L, LUA_REGISTRYINDEX, state_ref);
    if (lua_pcall(L, 7, 0, base + 1) != 0)
        lua_strategy_error(lua, u, "on_result failed");
    lua_settop(L, base);
}

bool gw_lua_has_hook(const gw_conn_t *c, int h)
{
    const gw_config_t *cfg = c->w->cfg;
    if (cfg->global_hooks & GW_HOOK_BIT(h))
        return true;
    return c->req.route >= 0 && (cfg->routes[c->req.route].hooks & GW_HOOK_BIT(h));
}

/* Calls runner(hook, p). Returns the runner's integer result, or -1 after a Lua error (logged
 * and counted). */
static int bridge_call(gw_lua_t *lua, gw_conn_t *c, int runner, int fn, int h)
{
    lua_State *L = lua->L;
    gw_request_t *r = &c->req;
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->tb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, runner);
    lua_rawgeti(L, LUA_REGISTRYINDEX, fn);
    bridge_push_request(lua, c);
    gw_conn_t *prev = gw_ffi_current;
    gw_ffi_current = c;
    uint64_t t0 = gw_now_ns();
    int rc = lua_pcall(L, 2, 1, base + 1);
    uint64_t dt = gw_now_ns() - t0;
    gw_ffi_current = prev;
    size_t row = r->route >= 0 ? (size_t)r->route : c->w->cfg->nroutes;
    const char *route = r->route >= 0 ? c->w->cfg->routes[r->route].name : "(none)";
    if (dt > GW_LUA_SLOW_NS) {
        GW_COUNTER_INC(c->w->metrics->lua_slow[row * GW_HOOK_COUNT + (size_t)h]);
        gw_log_warn("lua: slow %s hook on route %s: %.1f ms (request %.*s)", hook_names[h], route,
                    (double)dt / 1e6, (int)r->request_id.len, r->request_id.p);
    }
    int result = -1;
    if (rc != 0) {
        GW_COUNTER_INC(c->w->metrics->lua_errors[row * GW_HOOK_COUNT + (size_t)h]);
        gw_log_err("lua: %s hook on route %s failed (request %.*s): %s", hook_names[h], route,
                   (int)r->request_id.len, r->request_id.p, lua_tostring(L, -1));
    } else {
        result = (int)lua_tointeger(L, -1);
    }
    lua_settop(L, base);
    return result;
}

/* Runs hook `h`: the global one, then the route's. A failing hook's partial answer and header
 * edits are dropped (so they cannot leak onto the 500 that replaces it, nor onto the response
 * of a route that fails open). Returns GW_LUA_CONTINUE, GW_LUA_RESPONDED or GW_LUA_FAILED. */
static int bridge_run(gw_lua_t *lua, gw_conn_t *c, int h, int runner)
{
    gw_request_t *r = &c->req;
    int refs[2] = {lua->global[h], r->route >= 0 ? lua->route[r->route * GW_HOOK_COUNT + h] : LUA_NOREF};
    bool fail_open = r->route >= 0 && c->w->cfg->routes[r->route].lua_fail_open;
    for (int g = 0; g < 2; g++) {
        if (refs[g] == LUA_NOREF)
            continue;
        int rc = bridge_call(lua, c, runner, refs[g], h);
        if (rc < 0) {
            r->lua_respond = 0;
            r->lua_status = 0;
            r->resp_edits.n = 0;
            if (fail_open)
                continue;
            return GW_LUA_FAILED;
        }
        if (rc == 1)
            return GW_LUA_RESPONDED;
    }
    return GW_LUA_CONTINUE;
}

int gw_lua_on_request(gw_lua_t *lua, gw_conn_t *c)
{
    int rc = bridge_run(lua, c, GW_HOOK_ON_REQUEST, lua->run_request);
    return rc != GW_LUA_CONTINUE ? rc : bridge_run(lua, c, GW_HOOK_REWRITE_PATH, lua->run_path);
}

int gw_lua_on_response(gw_lua_t *lua, gw_conn_t *c)
{
    return bridge_run(lua, c, GW_HOOK_ON_RESPONSE, lua->run_response);
}

void gw_lua_request_end(gw_lua_t *lua, gw_conn_t *c)
{
    gw_request_t *r = &c->req;
    bridge_run(lua, c, GW_HOOK_ON_LOG, lua->run_response); /* after the fact: errors only count */
    if (!r->lua_id)
        return;
    lua_State *L = lua->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->run_end);
    lua_pushnumber(L, (lua_Number)r->lua_id);
    if (lua_pcall(L, 1, 0, 0) != 0)
        lua_pop(L, 1);
    r->lua_id = 0;
    bridge_publish_memory(lua);
}

/* ---- membership hooks on the main thread ---- */

struct gw_lua_ctl {
    lua_State *L;
    const gw_config_t *cfg;
    int tb;
    int on_register, on_unregister;
    int json_decode;
    int *metas; /* [nupstreams]: the static backends' meta tables */
};

int gw_lua_ctl_new(const gw_config_t *cfg, gw_lua_ctl_t **out, char **err)
{
    gw_lua_ctl_t *ctl = calloc(1, sizeof *ctl);
    if (!ctl || !(ctl->metas = calloc(cfg->nupstreams ? cfg->nupstreams : 1, sizeof(int))))
        abort();
    ctl->cfg = cfg;
    ctl->on_register = ctl->on_unregister = ctl->json_decode = LUA_NOREF;
    lua_State *L = lua_open_config(cfg, -1, &ctl->tb, &ctl->L, err);
    if (!L) {
        gw_lua_ctl_free(ctl);
        return -1;
    }
    int t = lua_gettop(L);
    lua_getfield(L, t, "hooks");
    if (lua_istable(L, -1)) {
        ctl->on_register = lua_ref_field(L, lua_gettop(L), "on_register");
        ctl->on_unregister = lua_ref_field(L, lua_gettop(L), "on_unregister");
    }
    lua_pop(L, 1);
    if ((ctl->on_register != LUA_NOREF) != !!(cfg->membership_hooks & GW_MHOOK_ON_REGISTER) ||
        (ctl->on_unregister != LUA_NOREF) != !!(cfg->membership_hooks & GW_MHOOK_ON_UNREGISTER)) {
        *err = gw_asprintf("%s evaluated differently on the main thread (hooks): gateway.lua must "
                           "return the same table every time", cfg->path);
        gw_lua_ctl_free(ctl);
        return -1;
    }
    lua_getfield(L, t, "upstreams");
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        if (lua_istable(L, -1))
            lua_getfield(L, -1, cfg->upstreams[u].name);
        else
            lua_pushnil(L);
        lua_static_metas(L, lua_gettop(L), lua_istable(L, -1) ? cfg->upstreams[u].nbackends : 0);
        ctl->metas[u] = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_pop(L, 1);
    }
    lua_getglobal(L, "gw");
    lua_getfield(L, -1, "json");
    ctl->json_decode = lua_ref_field(L, lua_gettop(L), "decode");
    lua_settop(L, 0);
    lua_sandbox(L);
    *out = ctl;
    return 0;
}

void gw_lua_ctl_free(gw_lua_ctl_t *ctl)
{
    if (!ctl)
        return;
    if (ctl->L)
        lua_close(ctl->L);
    free(ctl->metas);
    free(ctl);
}

/* Pushes {id, url, weight, meta, static} for a hook. */
static void ctl_push_backend(gw_lua_ctl_t *ctl, size_t u, const gw_lua_backend_info_t *b)
{
    lua_State *L = ctl->L;
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, b->id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, b->url);
    lua_setfield(L, -2, "url");
    lua_pushinteger(L, b->weight);
    lua_setfield(L, -2, "weight");
    lua_pushboolean(L, b->static_index >= 0);
    lua_setfield(L, -2, "static");
    if (b->static_index >= 0) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, ctl->metas[u]);
        lua_rawgeti(L, -1, b->static_index + 1);
        lua_remove(L, -2);
    } else if (b->meta_json) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, ctl->json_decode);
        lua_pushstring(L, b->meta_json);
        if (lua_pcall(L, 1, 1, 0) != 0 || !lua_istable(L, -1)) {
            lua_pop(L, 1);
            lua_newtable(L);
        }
    } else {
        lua_newtable(L);
    }
    lua_setfield(L, -2, "meta");
}

/* Calls hook `fn` with (backend, upstream[, reason]); leaves its first result on the stack
 * above `base`. Returns lua_pcall's result (the message is on the stack on error). The hook runs
 * on the main thread, which also serves the admin API, runs the health checks and handles
 * signals, so it runs under the limits gateway.lua was evaluated with: a hook that never returns
 * fails like one that raises, instead of hanging all of that. */
static int ctl_call(gw_lua_ctl_t *ctl, int fn, size_t u, const gw_lua_backend_info_t *b,
                    const char *reason, const char *what, int base)
{
    lua_State *L = ctl->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctl->tb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, fn);
    ctl_push_backend(ctl, u, b);
    lua_pushstring(L, ctl->cfg->upstreams[u].name);
    if (reason)
        lua_pushstring(L, reason);
    uint64_t t0 = gw_now_ns();
    int rc = gw_lua_guard_pcall(L, reason ? 3 : 2, 1, base + 1, &ctl->cfg->lua_limits,
                                ctl->cfg->path);
    uint64_t dt = gw_now_ns() - t0;
    if (dt > GW_LUA_SLOW_NS)
        gw_log_warn("lua: slow hooks.%s for %s: %.1f ms (it blocks the admin API)", what, b->url,
                    (double)dt / 1e6);
    return rc;
}

int gw_lua_ctl_on_register(gw_lua_ctl_t *ctl, size_t u, const gw_lua_backend_info_t *b, char **err)
{
    if (!ctl || ctl->on_register == LUA_NOREF)
        return 1;
    lua_State *L = ctl->L;
    int base = lua_gettop(L);
    int rc = ctl_call(ctl, ctl->on_register, u, b, NULL, "on_register", base);
    int result;
    if (rc != 0) {
        *err = gw_asprintf("%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error object is not a string)");
        result = -1;
    } else {
        result = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1) ? 0 : 1;
    }
    lua_settop(L, base);
    return result;
}

void gw_lua_ctl_on_unregister(gw_lua_ctl_t *ctl, size_t u, const gw_lua_backend_info_t *b,
                              const char *reason)
{
    if (!ctl || ctl->on_unregister == LUA_NOREF)
        return;
    lua_State *L = ctl->L;
    int base = lua_gettop(L);
    if (ctl_call(ctl, ctl->on_unregister, u, b, reason, "on_unregister", base) != 0)
        gw_log_err("lua: hooks.on_unregister failed for %s (upstream %s): %s", b->url,
                   ctl->cfg->upstreams[u].name, lua_tostring(L, -1));
    lua_settop(L, base);
}
