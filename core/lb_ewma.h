/*
 * lb_ewma.h: the peak-EWMA latency estimate shared by lb_ewma.c and lb_least_score.c (internal to
 * those two; not part of lb.h). It is the latency half of Finagle's PeakEwma balancer
 * (finagle-core loadbalancer/PeakEwma.scala; linkerd2-proxy's PeakEwma is the same). Each worker
 * keeps, per backend, a latency estimate and the time it was last updated:
 *
 *   - A sample above the current estimate replaces it at once (the "peak"): a backend that turns
 *     slow is avoided from its first slow response, not after an average catches up.
 *   - A sample at or below it is blended in with weight 1 - exp(-dt / tau), dt being the time
 *     since the last update and tau = 10 s, so the estimate follows time rather than request
 *     counts.
 *   - When read, the estimate has decayed toward 0 by exp(-dt / tau) since its last update. A
 *     backend that was slow and so stopped getting traffic therefore looks better and better
 *     until it is tried again and reports its current latency; that is how it recovers.
 *
 * A GW_LB_OK result is a sample of its latency_ms (any HTTP status: the response head arrived).
 * A connect error, timeout or protocol error counts as the penalty sample
 * max(2 x current estimate, 1 s, latency_ms), which replaces the estimate at once and doubles
 * on every further failure. Estimates are capped at GW_LB_EWMA_MAX_MS so repeated failures stay
 * finite and decay back within minutes. A backend with no sample yet has estimate 0.
 *
 * The pick is the minimum of a strategy-given cost among the candidates of the lb.h contract
 * (the healthy untried backends, else the unhealthy untried ones); ties go to a uniformly random
 * one of them (reservoir sampling in the same pass). O(n), no allocation.
 *
 * Everything is pure: time is ctx->now_ms and randomness ctx->rng (a generator in the state
 * stands in when a caller passes none). State is one worker's, sized by `create`; a list that
 * later grows past that size is handled without allocating, the extra backends being picked
 * only when no tracked one qualifies (the owner should create new state for a bigger list).
 * Both strategies use this one estimate, so a change to the rules here changes both.
 */
#ifndef GW_LB_EWMA_H
#define GW_LB_EWMA_H

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "lb.h"

#define GW_LB_EWMA_TAU_MS 10000.0
#define GW_LB_EWMA_PENALTY_MIN_MS 1000.0
#define GW_LB_EWMA_MAX_MS 600000.0

typedef struct gw_lb_ewma_peer {
    double cost;    /* latency estimate in ms as of `stamp` */
    uint64_t stamp; /* ctx->now_ms of the last update */
    bool probed;    /* has had at least one sample */
} gw_lb_ewma_peer_t;

typedef struct gw_lb_ewma {
    uint64_t rng; /* used only when ctx->rng is NULL */
    size_t cap;   /* entries in peers: the n that create saw */
    gw_lb_ewma_peer_t peers[];
} gw_lb_ewma_t;

/* What a strategy minimises: the cost of backend i (whose estimate is p) as of ctx->now_ms. */
typedef double (*gw_lb_ewma_cost_fn)(const gw_lb_ewma_peer_t *p, const gw_lb_ctx_t *ctx, size_t i);

static inline void gw_lb_ewma_reset(gw_lb_ewma_t *e)
{
    for (size_t i = 0; i < e->cap; i++)
        e->peers[i] = (gw_lb_ewma_peer_t){.cost = 0, .stamp = 0, .probed = false};
}

static inline int gw_lb_ewma_create(const gw_upstream_cfg_t *u, size_t n, void **state)
{
    GW_UNUSED(u);
    gw_lb_ewma_t *e = malloc(sizeof(*e) + n * sizeof(e->peers[0]));
    if (e == NULL)
        return -ENOMEM;
    e->rng = 0x9E3779B97F4A7C15ull;
    e->cap = n;
    gw_lb_ewma_reset(e);
    *state = e;
    return 0;
}

static inline void gw_lb_ewma_destroy(void *state)
{
    free(state);
}

/* exp(-dt / tau) for the time since `stamp`; a clock that went backwards decays nothing. */
static inline double gw_lb_ewma_decay(const gw_lb_ewma_peer_t *p, uint64_t now_ms)
{
    uint64_t dt = now_ms > p->stamp ? now_ms - p->stamp : 0;
    return exp(-(double)dt / GW_LB_EWMA_TAU_MS);
}

/* The latency estimate as of now_ms; 0 for an unprobed backend. */
static inline double gw_lb_ewma_latency(const gw_lb_ewma_peer_t *p, uint64_t now_ms)
{
    return p->probed ? p->cost * gw_lb_ewma_decay(p, now_ms) : 0.0;
}

static inline void gw_lb_ewma_observe(gw_lb_ewma_peer_t *p, uint64_t now_ms, double sample)
{
    if (!(sample >= 0)) /* negative or NaN from a confused caller */
        sample = 0;
    sample = GW_MIN(sample, GW_LB_EWMA_MAX_MS);
    double w = gw_lb_ewma_decay(p, now_ms);
    double cur = p->probed ? p->cost * w : 0.0;
    p->cost = !p->probed || sample > cur ? sample : cur + sample * (1.0 - w);
    p->stamp = now_ms;
    p->probed = true;
}

static inline bool gw_lb_ewma_candidate(const gw_lb_ctx_t *ctx, size_t i, bool need_healthy)
{
    if (gw_lb_tried(ctx, i))
        return false;
    return !need_healthy || GW_RELAXED_LOAD(ctx->backends[i]->healthy) != 0;
}

/* Picks per the contract in lb.h: the candidate of least cost(), ties broken at random. */
static inline int gw_lb_ewma_pick_min(gw_lb_ewma_t *e, const gw_lb_ctx_t *ctx,
                                      gw_lb_ewma_cost_fn cost_of)
{
    uint64_t *rng = ctx->rng != NULL ? ctx->rng : &e->rng;
    size_t tracked = GW_MIN(ctx->n, e->cap);
    for (int pass = 0; pass < 2; pass++) {
        bool need_healthy = pass == 0;
        int best = -1;
        double best_cost = 0;
        uint32_t ties = 0;
        for (size_t i = 0; i < tracked; i++) {
            if (!gw_lb_ewma_candidate(ctx, i, need_healthy))
                continue;
            double cost = cost_of(&e->peers[i], ctx, i);
            if (best < 0 || cost < best_cost) {
                best = (int)i;
                best_cost = cost;
                ties = 1;
            } else if (cost == best_cost && gw_rand_below(rng, ++ties) == 0) {
                best = (int)i;
            }
        }
        for (size_t i = tracked; i < ctx->n && best < 0; i++) {
            if (gw_lb_ewma_candidate(ctx, i, need_healthy))
                best = (int)i;
        }
        if (best >= 0)
            return best;
    }
    return -1;
}

/* on_result of the lb.h contract: a sample, or the penalty sample on failure. A cancelled
 * attempt's wait is a lower bound of its latency: it counts only when above the estimate. */
static inline void gw_lb_ewma_on_result(void *state, const gw_lb_ctx_t *ctx, size_t idx,
                                        const gw_lb_result_t *r)
{
    gw_lb_ewma_t *e = state;
    if (idx >= e->cap || idx >= ctx->n)
        return;
    gw_lb_ewma_peer_t *p = &e->peers[idx];
    double sample = r->latency_ms;
    if (r->outcome == GW_LB_CANCELLED) {
        if (sample > gw_lb_ewma_latency(p, ctx->now_ms))
            gw_lb_ewma_observe(p, ctx->now_ms, sample);
        return;
    }
    if (r->outcome != GW_LB_OK) {
        double penalty =
            GW_MAX(2.0 * gw_lb_ewma_latency(p, ctx->now_ms), GW_LB_EWMA_PENALTY_MIN_MS);
        sample = r->latency_ms > penalty ? r->latency_ms : penalty; /* false when NaN */
    }
    gw_lb_ewma_observe(p, ctx->now_ms, sample);
}

/* The list changed (size or order): per-index estimates may belong to other backends now, so
 * every backend starts unprobed again. */
static inline void gw_lb_ewma_backends_changed(void *state, const gw_lb_ctx_t *ctx)
{
    GW_UNUSED(ctx);
    gw_lb_ewma_reset(state);
}

#endif
