/*
 * lb_round_robin: each worker walks the backend list in order with its own cursor, skipping
 * backends that are unhealthy or already tried for this request. Weight is ignored (weighted
 * strategies are separate).
 *
 * The cursor moves to just after the backend returned, not one step per call, so a skipped
 * backend's turn passes to the next one only once: with A, B (down), C the picks are A, C, A, C,
 * not A, C, C, A. The first pick of each worker starts at a random position (from ctx->rng when
 * there is one) so that N workers do not all send their first request to backend 0.
 *
 * State is owned by one worker and touched only by it; backend health is read with relaxed loads.
 */
#include <errno.h>
#include <stdlib.h>

#include "lb.h"

typedef struct gw_lb_rr {
    size_t cursor; /* index to try first on the next pick (taken modulo n) */
    bool started;
} gw_lb_rr_t;

static int gw_lb_rr_create(const gw_upstream_cfg_t *u, size_t n, void **state)
{
    GW_UNUSED(u);
    GW_UNUSED(n);
    gw_lb_rr_t *rr = calloc(1, sizeof(*rr));
    if (rr == NULL)
        return -ENOMEM;
    *state = rr;
    return 0;
}

static void gw_lb_rr_destroy(void *state)
{
    free(state);
}

/* Index of the first backend from the cursor on (wrapping) that is untried and, when
 * `need_healthy`, healthy; -1 when there is none. */
static int gw_lb_rr_scan(const gw_lb_rr_t *rr, const gw_lb_ctx_t *ctx, bool need_healthy)
{
    size_t start = rr->cursor % ctx->n;
    for (size_t k = 0; k < ctx->n; k++) {
        size_t i = start + k;
        if (i >= ctx->n)
            i -= ctx->n;
        if (gw_lb_tried(ctx, i))
            continue;
        if (need_healthy && GW_RELAXED_LOAD(ctx->backends[i]->healthy) == 0)
            continue;
        return (int)i;
    }
    return -1;
}

/* Picks per the contract in lb.h: a healthy untried backend, else an unhealthy untried one,
 * else -1. No allocation. */
static int gw_lb_rr_pick(void *state, const gw_lb_ctx_t *ctx)
{
    gw_lb_rr_t *rr = state;
    if (ctx->n == 0)
        return -1;
    if (!rr->started) {
        rr->started = true;
        if (ctx->rng != NULL)
            rr->cursor = gw_rand_below(ctx->rng, (uint32_t)GW_MIN(ctx->n, (size_t)UINT32_MAX));
    }
    int i = gw_lb_rr_scan(rr, ctx, true);
    if (i < 0)
        i = gw_lb_rr_scan(rr, ctx, false);
    if (i >= 0)
        rr->cursor = (size_t)i + 1;
    return i;
}

/* The list changed: keep the cursor's position (modulo the new size at the next pick); the
 * rotation stays fair within one cycle of the new list. */
static void gw_lb_rr_backends_changed(void *state, const gw_lb_ctx_t *ctx)
{
    gw_lb_rr_t *rr = state;
    rr->cursor = ctx->n > 0 ? rr->cursor % ctx->n : 0;
}

const gw_lb_ops_t gw_lb_round_robin = {
    .name = "round_robin",
    .create = gw_lb_rr_create,
    .destroy = gw_lb_rr_destroy,
    .pick = gw_lb_rr_pick,
    .on_result = NULL,
    .on_backends_changed = gw_lb_rr_backends_changed,
};
