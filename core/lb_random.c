/*
 * lb_random: a uniformly random backend among the candidates. With no state to go stale and no
 * coordination between workers it spreads load evenly in expectation, and it is the baseline the
 * smarter strategies are measured against.
 *
 * Candidates follow the lb.h contract: the healthy untried backends, or when there is none the
 * unhealthy untried ones. A pick counts the candidates, draws one index and walks to it: O(n),
 * one random number, no allocation. Health is read with relaxed loads and may change between
 * the two scans; the walk then settles for the last candidate it saw.
 *
 * Randomness comes from ctx->rng (the worker's generator). When a caller passes none, a
 * generator in the state stands in, so picks stay random and tests stay reproducible.
 */
#include <errno.h>
#include <stdlib.h>

#include "lb.h"

typedef struct gw_lb_random {
    uint64_t rng; /* used only when ctx->rng is NULL */
} gw_lb_random_t;

static int gw_lb_random_create(const gw_upstream_cfg_t *u, size_t n, void **state)
{
    GW_UNUSED(u);
    GW_UNUSED(n);
    gw_lb_random_t *s = malloc(sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->rng = 0x9E3779B97F4A7C15ull;
    *state = s;
    return 0;
}

static void gw_lb_random_destroy(void *state)
{
    free(state);
}

static bool gw_lb_random_candidate(const gw_lb_ctx_t *ctx, size_t i, bool need_healthy)
{
    if (gw_lb_tried(ctx, i))
        return false;
    return !need_healthy || GW_RELAXED_LOAD(ctx->backends[i]->healthy) != 0;
}

/* Picks per the contract in lb.h. */
static int gw_lb_random_pick(void *state, const gw_lb_ctx_t *ctx)
{
    gw_lb_random_t *s = state;
    uint64_t *rng = ctx->rng != NULL ? ctx->rng : &s->rng;
    for (int pass = 0; pass < 2; pass++) {
        bool need_healthy = pass == 0;
        size_t count = 0;
        for (size_t i = 0; i < ctx->n; i++)
            count += gw_lb_random_candidate(ctx, i, need_healthy);
        if (count == 0)
            continue;
        size_t k = gw_rand_below(rng, (uint32_t)GW_MIN(count, (size_t)UINT32_MAX));
        int last = -1;
        for (size_t i = 0; i < ctx->n; i++) {
            if (!gw_lb_random_candidate(ctx, i, need_healthy))
                continue;
            if (k-- == 0)
                return (int)i;
            last = (int)i;
        }
        /* Another worker's health update can shrink the set between the two scans. */
        if (last >= 0)
            return last;
    }
    return -1;
}

const gw_lb_ops_t gw_lb_random = {
    .name = "random",
    .create = gw_lb_random_create,
    .destroy = gw_lb_random_destroy,
    .pick = gw_lb_random_pick,
    .on_result = NULL,
    .on_backends_changed = NULL,
};
