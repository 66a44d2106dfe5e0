/*
 * lua_guard: see lua_guard.h.
 *
 * Time. A count hook compares a monotonic clock with the deadline every GW_LUA_GUARD_COUNT
 * instructions. LuaJIT calls hooks only from the interpreter, never from a compiled trace, so the
 * JIT compiler is off (and its traces flushed) while a guarded call runs; the top-level chunk runs
 * once, which the interpreter does well enough. Once the deadline has passed, the hook fires at
 * every instruction, so a chunk that catches the error with pcall and carries on meets it again
 * at the next instruction outside that pcall.
 *
 * Memory. For the length of the call the state's allocator is wrapped by one that counts the
 * bytes allocated minus the bytes freed (garbage not yet collected counts) and refuses to grow
 * past the limit; LuaJIT raises that as a memory error. Frees and shrinks always succeed. The
 * wrapper hands every request to the original allocator, so blocks allocated under it are that
 * allocator's own and are freed by it after the original is put back. The wrapper's user data is
 * also how the hook finds the deadline.
 */
#define _GNU_SOURCE
#include "lua_guard.h"

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>

#define GW_LUA_GUARD_COUNT 1000

enum { GW_LUA_GUARD_OK = 0, GW_LUA_GUARD_TIME, GW_LUA_GUARD_MEMORY };

typedef struct gw_lua_guard {
    lua_Alloc alloc; /* the state's own allocator, and its user data */
    void *alloc_ud;
    ptrdiff_t used;       /* bytes allocated minus bytes freed since the call began */
    ptrdiff_t max;        /* PTRDIFF_MAX: no limit */
    uint64_t deadline_ns; /* 0: no limit */
    const gw_lua_limits_t *limits;
    int hit; /* the first limit reached: GW_LUA_GUARD_TIME or _MEMORY */
} gw_lua_guard_t;

static uint64_t gw_lua_guard_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *gw_lua_guard_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    gw_lua_guard_t *g = ud;
    size_t old = ptr != NULL ? osize : 0;
    if (nsize > old && (ptrdiff_t)(nsize - old) > g->max - g->used) {
        if (g->hit == GW_LUA_GUARD_OK)
            g->hit = GW_LUA_GUARD_MEMORY;
        return NULL;
    }
    void *p = g->alloc(g->alloc_ud, ptr, osize, nsize);
    if (p != NULL || nsize == 0)
        g->used += (ptrdiff_t)nsize - (ptrdiff_t)old;
    return p;
}

static void gw_lua_guard_hook(lua_State *L, lua_Debug *ar)
{
    void *ud;
    lua_getallocf(L, &ud);
    gw_lua_guard_t *g = ud;
    if (g->deadline_ns == 0 || gw_lua_guard_now_ns() < g->deadline_ns)
        return;
    if (g->hit == GW_LUA_GUARD_OK) {
        g->hit = GW_LUA_GUARD_TIME;
        lua_sethook(L, gw_lua_guard_hook, LUA_MASKCOUNT, 1);
    }
    lua_getinfo(L, "Sl", ar);
    lua_pushfstring(L, "%s:%d: evaluation exceeded the time limit (%d ms, --config-timeout-ms)",
                    ar->short_src, ar->currentline, (int)g->limits->time_ms);
    lua_error(L);
}

int gw_lua_guard_pcall(lua_State *L, int nargs, int nresults, int errfunc,
                       const gw_lua_limits_t *limits, const char *name)
{
    gw_lua_guard_t g = {.max = PTRDIFF_MAX, .limits = limits};
    g.alloc = lua_getallocf(L, &g.alloc_ud);
    if (limits->memory_mb > 0)
        g.max = (ptrdiff_t)limits->memory_mb << 20;
    if (limits->time_ms > 0)
        g.deadline_ns = gw_lua_guard_now_ns() + (uint64_t)limits->time_ms * 1000000u;
    lua_Hook old_hook = lua_gethook(L);
    int old_mask = lua_gethookmask(L), old_count = lua_gethookcount(L);

    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_FLUSH);
    lua_setallocf(L, gw_lua_guard_alloc, &g);
    lua_sethook(L, gw_lua_guard_hook, LUA_MASKCOUNT, GW_LUA_GUARD_COUNT);
    int rc = lua_pcall(L, nargs, nresults, errfunc);
    lua_sethook(L, old_hook, old_mask, old_count);
    lua_setallocf(L, g.alloc, g.alloc_ud);
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_ON);

    /* A memory error carries no position and skips errfunc; an error past the deadline that is
     * not the hook's own (an error in the error handler) has lost it. Say which limit it was. */
    if (rc != 0 && g.hit == GW_LUA_GUARD_MEMORY) {
        lua_pop(L, 1);
        lua_pushfstring(L, "%s: evaluation exceeded the memory limit (%d MiB, --config-memory-mb)",
                        name, (int)limits->memory_mb);
    } else if (rc != 0 && rc != LUA_ERRRUN && g.hit == GW_LUA_GUARD_TIME) {
        lua_pop(L, 1);
        lua_pushfstring(L, "%s: evaluation exceeded the time limit (%d ms, --config-timeout-ms)",
                        name, (int)limits->time_ms);
    }
    return rc;
}

static int gw_lua_guard_refuse(lua_State *L)
{
    return luaL_error(L, "%s is not available in gateway.lua",
                      lua_tostring(L, lua_upvalueindex(1)));
}

void gw_lua_guard_sandbox(lua_State *L)
{
    static const struct {
        const char *lib, *fn;
    } drop[] = {{"os", "exit"},   {"os", "execute"}, {"io", "popen"},
                {"os", "remove"}, {"os", "rename"},  {"os", "tmpname"}};
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++) {
        lua_getglobal(L, drop[i].lib);
        if (lua_istable(L, -1)) {
            lua_pushfstring(L, "%s.%s", drop[i].lib, drop[i].fn);
            lua_pushcclosure(L, gw_lua_guard_refuse, 1);
            lua_setfield(L, -2, drop[i].fn);
        }
        lua_pop(L, 1);
    }
}
