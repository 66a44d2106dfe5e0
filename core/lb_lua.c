/*
 * lb_lua: the strategy adapter for an upstream whose `strategy` is a Lua table (ARCHITECTURE.md §6).
 *
 * Per worker it owns an array of gw_ffi_backend_t that it refreshes from the shared backend table
 * before every pick; the Lua view reads those fields through the FFI, so a pick builds no table.
 * `gw.strategy.<name>(backends, req)` lands in gw_ffi_native_pick below: the native strategy runs
 * over the full backend list with every backend not in the given view marked as tried, so a
 * filtered view (canary, zone, subset) restricts the native choice. Native states are created on
 * first use and all of them learn from every result (Prequal needs that for its pool), which
 * also makes the probe statistics of a delegated Prequal visible in the view.
 *
 * A pick that raises, returns nothing, returns something that is not a backend of the view, or
 * returns a backend already tried, is answered by `fallback_strategy` (round_robin unless set),
 * logged and counted in gw_lua_strategy_errors_total.
 */
#include <lauxlib.h>
#include <stdlib.h>

#include "lb.h"
#include "log.h"
#include "lua_bridge.h"
#include "worker.h"

#define LB_LUA_NATIVE_MAX 16

typedef struct lb_lua {
    const gw_upstream_cfg_t *u;
    size_t n;
    const gw_lb_ops_t *fallback;
    void *fallback_state;
    const gw_lb_ops_t *native[LB_LUA_NATIVE_MAX];
    void *native_state[LB_LUA_NATIVE_MAX];
    gw_worker_t *w;
    uint32_t upstream;
    bool bound, broken;
    int view_ref, state_ref;
    gw_ffi_backend_t *raw;
    uint64_t *mask;             /* scratch for native picks over a view */
    const gw_lb_ctx_t *ctx;     /* the pick in progress */
} lb_lua_t;

static int lb_lua_create(const gw_upstream_cfg_t *u, size_t n, void **state)
{
    lb_lua_t *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    s->u = u;
    s->n = n;
    s->fallback = gw_lb_find(u->fallback_strategy);
    s->raw = calloc(n ? n : 1, sizeof *s->raw);
    s->mask = calloc((n + 63) / 64 + 1, sizeof *s->mask);
    if (!s->fallback || !s->raw || !s->mask || s->fallback->create(u, n, &s->fallback_state) != 0) {
        free(s->raw);
        free(s->mask);
        free(s);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        s->raw[i].id = (uint32_t)i + 1;
    s->view_ref = s->state_ref = LUA_NOREF;
    *state = s;
    return 0;
}

static void lb_lua_destroy(void *state)
{
    lb_lua_t *s = state;
    s->fallback->destroy(s->fallback_state);
    for (int k = 0; k < LB_LUA_NATIVE_MAX; k++)
        if (s->native[k])
            s->native[k]->destroy(s->native_state[k]);
    free(s->raw);
    free(s->mask);
    free(s);
}

static int lb_lua_native_index(const char *name)
{
    const char *const *names = gw_lb_names();
    for (int k = 0; names[k] && k < LB_LUA_NATIVE_MAX; k++)
        if (strcmp(names[k], name) == 0)
            return k;
    return -1;
}

/* Refreshes the view's fields from the shared backend table (and a delegated Prequal's pool). */
static void lb_lua_refresh(lb_lua_t *s, const gw_lb_ctx_t *ctx)
{
    size_t n = GW_MIN(s->n, ctx->n); /* the view holds no slot past ctx->n */
    for (size_t i = 0; i < n; i++) {
        const gw_backend_t *b = ctx->backends[i];
        gw_ffi_backend_t *r = &s->raw[i];
        r->weight = GW_RELAXED_LOAD(b->cfg->weight);
        r->healthy = GW_RELAXED_LOAD(b->healthy) != 0;
        r->rif = GW_RELAXED_LOAD(b->inflight);
        r->fails = GW_RELAXED_LOAD(b->fails);
        r->latency_ms = (double)GW_RELAXED_LOAD(b->latency_ewma_us) / 1000.0;
        r->probe_rif = -1;
    }
    /* Every backend's own entry: the pool holds one per backend, more than /status's snapshot
     * shows, so a copy of the pool capped at GW_PQ_SNAPSHOT_MAX would miss some. */
    int pq = lb_lua_native_index("prequal");
    if (pq >= 0 && s->native_state[pq]) {
        gw_prequal_entry_info_t e;
        for (size_t i = 0; i < n; i++) {
            if (!gw_lb_prequal_entry(s->native_state[pq], (uint32_t)i, ctx->now_ms, &e))
                continue;
            gw_ffi_backend_t *r = &s->raw[i];
            r->probe_rif = (int32_t)e.rif;
            r->probe_latency_ms = (double)e.latency_us / 1000.0;
            r->probe_age_ms = (double)e.age_ms;
        }
    }
}

/* Builds the view and runs strategy.init, once, in the worker's own thread (at its start, or at
 * the first pick when called without a worker before). */
static void lb_lua_bind(lb_lua_t *s, const gw_lb_ctx_t *ctx)
{
    gw_worker_t *w = ctx->worker;
    if (s->bound || !w || !w->lua)
        return;
    s->bound = true;
    s->w = w;
    s->upstream = ctx->upstream;
    lb_lua_refresh(s, ctx);
    gw_worker_upstream_t *wu = &w->ups[ctx->upstream];
    s->broken = gw_lua_strategy_view(w->lua, ctx->upstream, s->raw, ctx->backends, s->n, wu->absent,
                                     &s->view_ref, &s->state_ref) != 0;
}

/* The worker starts: init sees the members of now. */
static void lb_lua_start(void *state, const gw_lb_ctx_t *ctx)
{
    lb_lua_bind(state, ctx);
}

static int lb_lua_pick(void *state, const gw_lb_ctx_t *ctx)
{
    lb_lua_t *s = state;
    gw_worker_t *w = ctx->worker;
    lb_lua_bind(s, ctx);
    if (s->bound && !s->broken && ctx->conn) {
        lb_lua_refresh(s, ctx);
        s->ctx = ctx;
        int idx = gw_lua_strategy_pick(w->lua, s->upstream, s->view_ref, s->state_ref, ctx->conn);
        s->ctx = NULL;
        if (idx >= 0 && (size_t)idx < s->n && !gw_lb_tried(ctx, (size_t)idx))
            return idx;
        if (idx >= 0) {
            GW_COUNTER_INC(w->metrics->lua_strategy_errors[s->upstream]);
            gw_log_warn("lua: the strategy of upstream %s picked a backend already tried or out of "
                        "range; using %s", s->u->name, s->u->fallback_strategy);
        }
    }
    return s->fallback->pick(s->fallback_state, ctx);
}

static void lb_lua_on_result(void *state, const gw_lb_ctx_t *ctx, size_t idx, const gw_lb_result_t *r)
{
    lb_lua_t *s = state;
    if (s->fallback->on_result)
        s->fallback->on_result(s->fallback_state, ctx, idx, r);
    for (int k = 0; k < LB_LUA_NATIVE_MAX; k++)
        if (s->native[k] && s->native[k]->on_result)
            s->native[k]->on_result(s->native_state[k], ctx, idx, r);
    if (s->bound && !s->broken && idx < s->n)
        gw_lua_strategy_result(s->w->lua, s->upstream, s->view_ref, s->state_ref, idx, r->status,
                               r->latency_ms, r->outcome == GW_LB_OK && r->status < 500);
}

/* Membership changed (ctx->tried holds the absent slots): the native states learn it, and a
 * bound Lua strategy gets a new view and its on_backends_changed. */
static void lb_lua_backends_changed(void *state, const gw_lb_ctx_t *ctx)
{
    lb_lua_t *s = state;
    if (s->fallback->on_backends_changed)
        s->fallback->on_backends_changed(s->fallback_state, ctx);
    for (int k = 0; k < LB_LUA_NATIVE_MAX; k++)
        if (s->native[k] && s->native[k]->on_backends_changed)
            s->native[k]->on_backends_changed(s->native_state[k], ctx);
    if (s->bound && !s->broken) {
        lb_lua_refresh(s, ctx);
        gw_lua_strategy_view(s->w->lua, s->upstream, s->raw, ctx->backends, s->n, ctx->tried,
                             &s->view_ref, &s->state_ref);
    }
}

static void lb_lua_stop(void *state)
{
    lb_lua_t *s = state;
    if (s->fallback->stop)
        s->fallback->stop(s->fallback_state);
    for (int k = 0; k < LB_LUA_NATIVE_MAX; k++)
        if (s->native[k] && s->native[k]->stop)
            s->native[k]->stop(s->native_state[k]);
}

const gw_lb_ops_t gw_lb_lua = {
    .name = "lua",
    .create = lb_lua_create,
    .destroy = lb_lua_destroy,
    .pick = lb_lua_pick,
    .on_result = lb_lua_on_result,
    .on_backends_changed = lb_lua_backends_changed,
    .start = lb_lua_start,
    .stop = lb_lua_stop,
    .wants_signals = true,
};

/* ---- FFI: gw.strategy.<name>(view, req) ---- */

int gw_ffi_native_index(const char *name);
int gw_ffi_native_index(const char *name)
{
    return lb_lua_native_index(name);
}

/* Runs native strategy `which` for the request `p` over the backends whose ids (0-based) are in
 * `ids`. Returns the chosen index or -1. Only valid during a Lua pick. */
int gw_ffi_native_pick(void *p, int which, const uint32_t *ids, uint32_t nids);
int gw_ffi_native_pick(void *p, int which, const uint32_t *ids, uint32_t nids)
{
    extern __thread gw_conn_t *gw_ffi_current;
    gw_conn_t *c = p ? p : gw_ffi_current;
    if (!c || c->req.upstream < 0 || which < 0 || which >= LB_LUA_NATIVE_MAX)
        return -1;
    gw_worker_upstream_t *wu = &c->w->ups[c->req.upstream];
    if (wu->lb != &gw_lb_lua)
        return -1;
    lb_lua_t *s = wu->lb_state;
    if (!s->ctx)
        return -1;
    if (!s->native[which]) {
        const gw_lb_ops_t *ops = gw_lb_find(gw_lb_names()[which]);
        if (!ops || ops->create(s->u, s->n, &s->native_state[which]) != 0)
            return -1;
        s->native[which] = ops;
    }
    size_t words = (s->n + 63) / 64;
    for (size_t i = 0; i < words; i++)
        s->mask[i] = ~(uint64_t)0;
    for (uint32_t k = 0; k < nids; k++)
        if (ids[k] < s->n)
            s->mask[ids[k] / 64] &= ~((uint64_t)1 << (ids[k] % 64));
    if (s->ctx->tried)
        for (size_t i = 0; i < words; i++)
            s->mask[i] |= s->ctx->tried[i];
    gw_lb_ctx_t ctx = *s->ctx;
    ctx.tried = s->mask;
    return s->native[which]->pick(s->native_state[which], &ctx);
}
