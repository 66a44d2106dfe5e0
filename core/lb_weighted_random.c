/*
 * lb_weighted_random: a random backend among the candidates, each with probability proportional
 * to its configured weight. It is the stateless counterpart of weighted_round_robin: no cycle to
 * reset when the list changes and nothing shared between workers, at the price of variance over
 * short runs.
 *
 * Candidates follow the lb.h contract: the healthy untried backends, or when there is none the
 * unhealthy untried ones. A pick sums the candidates' weights, draws a point in [0, total) and
 * walks the cumulative sums to it: O(n), one random number, no allocation. (An alias table would
 * make the draw O(1) but must be rebuilt whenever health or the tried set changes, which is
 * every retry; with a handful of backends the scan is cheaper.)
 *
 * Randomness comes from ctx->rng; when a caller passes none, a generator in the state stands in.
 */
#include <errno.h>
#include <stdlib.h>

#include "lb.h"

typedef struct gw_lb_wrand {
    uint64_t rng; /* used only when ctx->rng is NULL */
} gw_lb_wrand_t;

static int gw_lb_wrand_create(const gw_upstream_cfg_t *u, size_t n, void **state)
{
    GW_UNUSED(u);
    GW_UNUSED(n);
    gw_lb_wrand_t *s = malloc(sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->rng = 0x9E3779B97F4A7C15ull;
    *state = s;
    return 0;
}

static void gw_lb_wrand_destroy(void *state)
{
    free(state);
}

/* The backend's weight if it is a candidate, else 0. Weight 0 (never produced by config
 * validation) counts as 1 so that a candidate can always be picked. */
static uint64_t gw_lb_wrand_weight(const gw_lb_ctx_t *ctx, size_t i, bool need_healthy)
{
    const gw_backend_t *b = ctx->backends[i];
    if (gw_lb_tried(ctx, i))
        return 0;
    if (need_healthy && GW_RELAXED_LOAD(b->healthy) == 0)
        return 0;
    return b->cfg != NULL && GW_RELAXED_LOAD(b->cfg->weight) > 0 ? GW_RELAXED_LOAD(b->cfg->weight) : 1;
}

/* Uniform in [0, n) for any 64-bit n > 0 (multiply-shift, like gw_rand_below). */
static uint64_t gw_lb_wrand_below64(uint64_t *rng, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)gw_rand_next(rng) * n) >> 64);
}

/* Picks per the contract in lb.h. */
static int gw_lb_wrand_pick(void *state, const gw_lb_ctx_t *ctx)
{
    gw_lb_wrand_t *s = state;
    uint64_t *rng = ctx->rng != NULL ? ctx->rng : &s->rng;
    for (int pass = 0; pass < 2; pass++) {
        bool need_healthy = pass == 0;
        uint64_t total = 0;
        for (size_t i = 0; i < ctx->n; i++)
            total += gw_lb_wrand_weight(ctx, i, need_healthy);
        if (total == 0)
            continue;
        uint64_t point = gw_lb_wrand_below64(rng, total);
        int last = -1;
        for (size_t i = 0; i < ctx->n; i++) {
            uint64_t w = gw_lb_wrand_weight(ctx, i, need_healthy);
            if (w == 0)
                continue;
            if (point < w)
                return (int)i;
            point -= w;
            last = (int)i;
        }
        /* Another worker's health update can shrink the set between the two scans. */
        if (last >= 0)
            return last;
    }
    return -1;
}

const gw_lb_ops_t gw_lb_weighted_random = {
    .name = "weighted_random",
    .create = gw_lb_wrand_create,
    .destroy = gw_lb_wrand_destroy,
    .pick = gw_lb_wrand_pick,
    .on_result = NULL,
    .on_backends_changed = NULL,
};
