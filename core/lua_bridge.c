/*
 * lua_bridge: see lua_bridge.h.
 *
 * References: the hook functions of the worker's own evaluation of gateway.lua are kept in the
 * registry (luaL_ref) for the life of the worker: `global[h]` for the top-level `hooks` table and
 * `route[i * GW_HOOK_COUNT + h]` per route, LUA_NOREF where there is none. The runners
 * gw._on_request / gw._rewrite_path / gw._on_response / gw._end (lua/gw/init.lua) are referenced
 * too, so a call is: push traceback handler, runner, hook, request pointer; lua_pcall.
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
    int run_make_view, run_pick, run_result;
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

/* After loading: what a hook must not do at run time (DESIGN §6). C modules needed by the API
 * (cjson, ffi) are loaded already; no new one can be. */
static void lua_sandbox(lua_State *L)
{
    static const char *const os_drop[] = {"execute", "exit", "remove", "rename", "tmpname"};
    lua_getglobal(L, "os");
    for (size_t i = 0; i < GW_ARRAY_LEN(os_drop); i++) {
        lua_pushnil(L);
        lua_setfield(L, -2, os_drop[i]);
    }
    lua_pop(L, 1);
    lua_getglobal(L, "io");
    lua_pushnil(L);
    lua_setfield(L, -2, "popen");
    lua_pop(L, 1);
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
    lua_State *L = luaL_newstate();
    if (!L)
        abort();
    lua->L = L;
    luaL_openlibs(L);
    const char *lua_dir = getenv("PGW_LUA_DIR") ? getenv("PGW_LUA_DIR") : PGW_LUA_DIR;
    lua_set_path(L, cfg->path, lua_dir);

    lua_getglobal(L, "debug");
    lua_getfield(L, -1, "traceback");
    lua->tb = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);

    /* The gw API first, so that gateway.lua and the modules it requires can use it. It is
     * loaded by its path, not through require, so a config file named gw.lua cannot shadow it. */
    if (gw_lua_load_api(L, lua_dir) != 0) {
        *err = gw_asprintf("loading the gw Lua module: %s", lua_tostring(L, -1));
        goto fail;
    }
    lua_getfield(L, -1, "worker");
    lua_pushinteger(L, w->id);
    lua_setfield(L, -2, "id");
    lua_pop(L, 1);
    lua->run_request = lua_ref_field(L, -1, "_on_request");
    lua->run_path = lua_ref_field(L, -1, "_rewrite_path");
    lua->run_response = lua_ref_field(L, -1, "_on_response");
    lua->run_end = lua_ref_field(L, -1, "_end");
    lua->run_make_view = lua_ref_field(L, -1, "_make_view");
    lua->run_pick = lua_ref_field(L, -1, "_strategy_pick");
    lua->run_result = lua_ref_field(L, -1, "_strategy_result");
    lua_setglobal(L, "gw");

    if (luaL_loadfile(L, cfg->path) != 0 || lua_pcall(L, 0, 1, 0) != 0) {
        *err = gw_asprintf("worker evaluation of %s: %s", cfg->path, lua_tostring(L, -1));
        goto fail;
    }
    if (!lua_istable(L, -1)) {
        *err = gw_asprintf("worker evaluation of %s: did not return a table", cfg->path);
        goto fail;
    }
    int t = lua_gettop(L);
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
        lua_newtable(L);
        lua_getfield(L, ut, "backends");
        for (size_t i = 0; i < cfg->upstreams[u].nbackends && lua_istable(L, -1); i++) {
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

int gw_lua_strategy_bind(gw_lua_t *lua, uint32_t u, gw_ffi_backend_t *raw, size_t n, int *view_ref,
                         int *state_ref)
{
    lua_State *L = lua->L;
    const gw_upstream_cfg_t *uc = &lua->w->cfg->upstreams[u];
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->tb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->run_make_view);
    lua_pushlightuserdata(L, raw);
    lua_pushinteger(L, (lua_Integer)n);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushstring(L, uc->backends[i].url);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->metas[u]);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->strategy[u]);
    lua_pushstring(L, uc->name);
    /* _make_view(raw, n, urls, metas, strategy, upstream) -> view, state (init has run) */
    if (lua_pcall(L, 6, 2, base + 1) != 0) {
        lua_strategy_error(lua, u, "init");
        lua_settop(L, base);
        return -1;
    }
    *state_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    *view_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, base);
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
    lua_pushlightuserdata(L, c);
    lua_rawgeti(L, LUA_REGISTRYINDEX, state_ref);
    c->req.lua_ran = true;
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
    if (gw_now_ns() - t0 > GW_LUA_SLOW_NS)
        gw_log_warn("lua: slow pick in the strategy of upstream %s: %.1f ms",
                    lua->w->cfg->upstreams[u].name, (double)(gw_now_ns() - t0) / 1e6);
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
    r->lua_ran = true;
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua->tb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, runner);
    lua_rawgeti(L, LUA_REGISTRYINDEX, fn);
    lua_pushlightuserdata(L, c);
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

void gw_lua_on_log(gw_lua_t *lua, gw_conn_t *c)
{
    gw_request_t *r = &c->req;
    bridge_run(lua, c, GW_HOOK_ON_LOG, lua->run_response); /* after the fact: errors only count */
    if (r->lua_ran) {
        lua_State *L = lua->L;
        lua_rawgeti(L, LUA_REGISTRYINDEX, lua->run_end);
        lua_pushlightuserdata(L, c);
        if (lua_pcall(L, 1, 0, 0) != 0)
            lua_pop(L, 1);
    }
}
