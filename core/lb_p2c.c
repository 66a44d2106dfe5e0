/*
 * lb_p2c: the power of two choices (Mitzenmacher, "The Power of Two Choices in Randomized Load
 * Balancing"; the default of Finagle's and Envoy's least-request balancers). Draw two distinct
 * candidates at random and send the request to the one with fewer requests in flight
 * (backend->inflight, shared by every worker); a tie goes to either at random. Compared with
 * least_conn it needs no full comparison and, more to the point, it does not herd: many workers
 * reading the same slightly stale counts do not all pile onto the one backend that looked
 * emptiest, yet the maximum load stays exponentially better than a single random choice.
 * Weight is not used.
 *
 * Candidates follow the lb.h contract: the healthy untried backends, or when there is none the
 * unhealthy untried ones; a single candidate is returned as is. A pick counts the candidates,
 * draws two distinct ranks and walks to them: O(n), three random numbers at most, no
 * allocation. Randomness comes from ctx->rng; when a caller passes none, a generator in the
 * state stands in.
 */
#include <errno.h>
#include <stdlib.h>

#include "lb.h"

typedef struct gw_lb_p2c {
    uint64_t rng; /* used only when ctx->rng is NULL */
} gw_lb_p2c_t;

static int gw_lb_p2c_create(const gw_upstream_cfg_t *u, size_t n, void **state)
{
    GW_UNUSED(u);
    GW_UNUSED(n);
    gw_lb_p2c_t *s = malloc(sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->rng = 0x9E3779B97F4A7C15ull;
    *state = s;
    return 0;
}

static void gw_lb_p2c_destroy(void *state)
{
    free(state);
}

static bool gw_lb_p2c_candidate(const gw_lb_ctx_t *ctx, size_t i, bool need_healthy)
{
    if (gw_lb_tried(ctx, i))
        return false;
    return !need_healthy || GW_RELAXED_LOAD(ctx->backends[i]->healthy) != 0;
}

/* Picks per the contract in lb.h. */
static int gw_lb_p2c_pick(void *state, const gw_lb_ctx_t *ctx)
{
    gw_lb_p2c_t *s = state;
    uint64_t *rng = ctx->rng != NULL ? ctx->rng : &s->rng;
    for (int pass = 0; pass < 2; pass++) {
        bool need_healthy = pass == 0;
        size_t count = 0;
        for (size_t i = 0; i < ctx->n; i++)
            count += gw_lb_p2c_candidate(ctx, i, need_healthy);
        if (count == 0)
            continue;
        uint32_t c = (uint32_t)GW_MIN(count, (size_t)UINT32_MAX);
        /* Two distinct ranks; with one candidate both name it. */
        size_t ra = gw_rand_below(rng, c), rb = ra;
        if (c > 1) {
            rb = gw_rand_below(rng, c - 1);
            if (rb >= ra)
                rb++;
        }
        int a = -1, b = -1, last = -1;
        size_t rank = 0;
        for (size_t i = 0; i < ctx->n && (a < 0 || b < 0); i++) {
            if (!gw_lb_p2c_candidate(ctx, i, need_healthy))
                continue;
            if (rank == ra)
                a = (int)i;
            if (rank == rb)
                b = (int)i;
            last = (int)i;
            rank++;
        }
        /* Another worker's health update can shrink the set between the two scans. */
        if (a < 0)
            a = last;
        if (b < 0)
            b = last;
        if (a < 0)
            continue;
        uint32_t la = GW_RELAXED_LOAD(ctx->backends[a]->inflight);
        uint32_t lb = GW_RELAXED_LOAD(ctx->backends[b]->inflight);
        if (la != lb)
            return la < lb ? a : b;
        if (a == b)
            return a;
        return gw_rand_below(rng, 2) == 0 ? a : b;
    }
    return -1;
}

const gw_lb_ops_t gw_lb_p2c = {
    .name = "p2c",
    .create = gw_lb_p2c_create,
    .destroy = gw_lb_p2c_destroy,
    .pick = gw_lb_p2c_pick,
    .on_result = NULL,
    .on_backends_changed = NULL,
};
