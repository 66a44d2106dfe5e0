/*
 * Unit tests for core/lua_guard.c: a chunk that loops or grows without end is stopped at its
 * limit with a message that says which, including loops LuaJIT would compile and a chunk that
 * catches the error and carries on; the state stays usable afterwards, with its own allocator,
 * no hook and the JIT compiler back on; the sandbox refuses os.exit and friends with the
 * caller's position.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lua_guard.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();
    assert_non_null(L);
    luaL_openlibs(L);
    return L;
}

/* Runs `src` as chunk "cfg.lua" under `limits`; returns lua_pcall's code and copies the first
 * line of the message (or "") into msg. */
static int run(lua_State *L, const char *src, gw_lua_limits_t limits, char *msg, size_t cap)
{
    assert_int_equal(luaL_loadbuffer(L, src, strlen(src), "@cfg.lua"), 0);
    int rc = gw_lua_guard_pcall(L, 0, 0, 0, &limits, "cfg.lua");
    const char *m = rc != 0 ? lua_tostring(L, -1) : "";
    snprintf(msg, cap, "%.*s", (int)strcspn(m, "\n"), m);
    if (rc != 0)
        lua_pop(L, 1);
    return rc;
}

/* Asserts the state still works normally: a hot loop runs (and is compiled) after the call. */
static void assert_usable(lua_State *L)
{
    void *ud;
    lua_Alloc before = lua_getallocf(L, &ud);
    assert_null(lua_gethook(L));
    assert_int_equal(luaL_dostring(L, "local s = 0 for i = 1, 1e6 do s = s + i end\n"
                                      "return s, (jit.status())"),
                     0);
    assert_true(lua_toboolean(L, -1)); /* the JIT compiler is on */
    assert_true(lua_tonumber(L, -2) == 500000500000.0);
    lua_pop(L, 2);
    assert_true(lua_getallocf(L, &ud) == before);
}

static void test_endless_loops_stop_at_the_time_limit(void **state)
{
    (void)state;
    static const char *const loops[] = {
        "while true do end",
        "local x = 0\nwhile true do x = x + 1 end",
        /* Catching the error does not help: the next instruction outside the pcall fails. */
        "while true do pcall(function() while true do end end) end",
        "local function f() return f() end\nf()",
    };
    for (size_t i = 0; i < sizeof loops / sizeof loops[0]; i++) {
        lua_State *L = new_state();
        char msg[256];
        double t0 = now_s();
        assert_int_not_equal(run(L, loops[i], (gw_lua_limits_t){200, 0}, msg, sizeof msg), 0);
        double took = now_s() - t0;
        assert_true(took >= 0.19);
        assert_true(took < 3.0);
        if (strstr(msg, "evaluation exceeded the time limit (200 ms, --config-timeout-ms)") ==
                NULL ||
            strncmp(msg, "cfg.lua", 7) != 0)
            fail_msg("loop %zu: %s", i, msg);
        assert_usable(L);
        lua_close(L);
    }
}

static void test_time_message_names_the_line(void **state)
{
    (void)state;
    lua_State *L = new_state();
    char msg[256];
    assert_int_not_equal(
        run(L, "local n = 0\nfor i = 1, 10 do n = n + i end\nwhile true do n = n + 1 end",
            (gw_lua_limits_t){100, 0}, msg, sizeof msg),
        0);
    assert_string_equal(msg, "cfg.lua:3: evaluation exceeded the time limit (100 ms, "
                             "--config-timeout-ms)");
    lua_close(L);
}

static void test_growth_stops_at_the_memory_limit(void **state)
{
    (void)state;
    static const char *const hogs[] = {
        "local t = {} for i = 1, 3e8 do t[i] = i end",
        "local s = string.rep('x', 1e9)",
        "local t = {} for i = 1, 1e8 do t[#t + 1] = tostring(i) .. 'padding-padding' end",
    };
    for (size_t i = 0; i < sizeof hogs / sizeof hogs[0]; i++) {
        lua_State *L = new_state();
        char msg[256];
        assert_int_equal(run(L, hogs[i], (gw_lua_limits_t){0, 32}, msg, sizeof msg), LUA_ERRMEM);
        assert_string_equal(msg, "cfg.lua: evaluation exceeded the memory limit (32 MiB, "
                                 "--config-memory-mb)");
        lua_gc(L, LUA_GCCOLLECT, 0);
        assert_usable(L);
        /* The limit was for that call only. */
        assert_int_equal(luaL_dostring(L, "local s = string.rep('x', 64 * 1024 * 1024)"), 0);
        lua_close(L);
    }
}

static void test_within_limits_runs_normally(void **state)
{
    (void)state;
    lua_State *L = new_state();
    char msg[256];
    assert_int_equal(run(L,
                         "local t = {} for i = 1, 1e5 do t[i] = { name = 'r' .. i } end\n"
                         "result = #t",
                         (gw_lua_limits_t){5000, 64}, msg, sizeof msg),
                     0);
    lua_getglobal(L, "result");
    assert_int_equal(lua_tointeger(L, -1), 100000);
    lua_pop(L, 1);
    /* An ordinary error keeps its own message. */
    assert_int_equal(run(L, "error('boom')", (gw_lua_limits_t){5000, 64}, msg, sizeof msg),
                     LUA_ERRRUN);
    assert_string_equal(msg, "cfg.lua:1: boom");
    /* No limits at all. */
    assert_int_equal(run(L, "x = 1", (gw_lua_limits_t){0, 0}, msg, sizeof msg), 0);
    assert_usable(L);
    lua_close(L);
}

static void test_sandbox(void **state)
{
    (void)state;
    lua_State *L = new_state();
    gw_lua_guard_sandbox(L);
    static const struct {
        const char *src, *msg;
    } cases[] = {
        {"local x = 1\nos.exit(0)", "cfg.lua:2: os.exit is not available in gateway.lua"},
        {"os.execute('true')", "cfg.lua:1: os.execute is not available in gateway.lua"},
        {"\n\nlocal f = io.popen('ls')", "cfg.lua:3: io.popen is not available in gateway.lua"},
        {"os.remove('/tmp/x')", "cfg.lua:1: os.remove is not available in gateway.lua"},
        {"os.rename('/tmp/x', '/tmp/y')", "cfg.lua:1: os.rename is not available in gateway.lua"},
        {"os.tmpname()", "cfg.lua:1: os.tmpname is not available in gateway.lua"},
    };
    char msg[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(run(L, cases[i].src, GW_LUA_LIMITS_DEFAULT, msg, sizeof msg), LUA_ERRRUN);
        assert_string_equal(msg, cases[i].msg);
    }
    /* What a config needs stays. */
    assert_int_equal(run(L, "assert(os.getenv('PATH')) assert(os.time()) assert(require('string'))",
                         GW_LUA_LIMITS_DEFAULT, msg, sizeof msg),
                     0);
    lua_close(L);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endless_loops_stop_at_the_time_limit),
        cmocka_unit_test(test_time_message_names_the_line),
        cmocka_unit_test(test_growth_stops_at_the_memory_limit),
        cmocka_unit_test(test_within_limits_runs_normally),
        cmocka_unit_test(test_sandbox),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
