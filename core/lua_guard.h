/*
 * lua_guard: runs gateway.lua's top-level chunk so that it cannot take the gateway down with it.
 * The chunk runs under a time limit and a memory limit, and in an environment without the
 * standard library's ways of ending or forking the process (os.exit, os.execute, io.popen).
 *
 * This guards against mistakes (an endless loop, a table that grows without end, an os.exit
 * copied from a script), not against a hostile file: gateway.lua is the operator's code and can
 * still reach any C function through the FFI.
 */
#ifndef GW_LUA_GUARD_H
#define GW_LUA_GUARD_H

#include <stdint.h>

typedef struct lua_State lua_State;

/* Limits on one evaluation of gateway.lua (`--config-timeout-ms`, `--config-memory-mb`). */
typedef struct gw_lua_limits {
    uint32_t time_ms;   /* wall-clock time; 0: no limit */
    uint32_t memory_mb; /* MiB the state may grow by during the evaluation; 0: no limit */
} gw_lua_limits_t;

#define GW_LUA_TIME_MS_DEFAULT 5000
#define GW_LUA_MEMORY_MB_DEFAULT 256
#define GW_LUA_LIMITS_DEFAULT ((gw_lua_limits_t){GW_LUA_TIME_MS_DEFAULT, GW_LUA_MEMORY_MB_DEFAULT})

/**
 * Replaces os.exit, os.execute, io.popen, os.remove, os.rename and os.tmpname in L with functions
 * that raise "<file>:<line>: os.exit is not available in gateway.lua". Call it after opening the
 * standard libraries and before running gateway.lua; `require` and os.getenv keep working.
 */
void gw_lua_guard_sandbox(lua_State *L);

/**
 * lua_pcall(L, nargs, nresults, errfunc) under `limits`; returns what lua_pcall returns, with the
 * error message on the stack as lua_pcall leaves it. Past the time limit the call fails with
 * "<file>:<line>: evaluation exceeded the time limit (N ms, --config-timeout-ms)" (the place it
 * was running, which errfunc sees like any error); past the memory limit with
 * "<name>: evaluation exceeded the memory limit (N MiB, --config-memory-mb)".
 *
 * While the call runs, the JIT compiler is off (LuaJIT does not call hooks from compiled code)
 * and the state's allocator is wrapped; afterwards the allocator and the hook are put back and the
 * JIT compiler is on. Only for code that must finish: a C function that runs long without
 * calling back into Lua (a pathological pattern match) is not interrupted.
 */
int gw_lua_guard_pcall(lua_State *L, int nargs, int nresults, int errfunc,
                       const gw_lua_limits_t *limits, const char *name);

#endif
