/*
 * lb_ewma: the backend with the lowest peak-EWMA latency, the latency half of Finagle's
 * PeakEwma balancer (finagle-core loadbalancer/PeakEwma.scala; linkerd2-proxy's PeakEwma is the
 * same). The estimate (peak replaces, blend with tau = 10 s, decay when read, failure penalty
 * max(2 x estimate, 1 s, latency_ms), cap) is the one in lb_ewma.h, shared with lb_least_score.c;
 * see the comment there.
 *
 * A backend with no sample yet costs 0, so new (or newly listed) backends get traffic at once.
 * The pick is the minimum cost among the candidates of the lb.h contract (the healthy untried
 * backends, else the unhealthy untried ones); ties, such as several unprobed backends, go to a
 * uniformly random one of them (reservoir sampling in the same pass). O(n), no allocation. The
 * module is pure; state, sizing and growth are as described in lb_ewma.h.
 */
#include "lb_ewma.h"

/* The cost is the latency estimate alone. */
static double gw_lb_ewma_cost(const gw_lb_ewma_peer_t *p, const gw_lb_ctx_t *ctx, size_t i)
{
    GW_UNUSED(i);
    return gw_lb_ewma_latency(p, ctx->now_ms);
}

/* Picks per the contract in lb.h. */
static int gw_lb_ewma_pick(void *state, const gw_lb_ctx_t *ctx)
{
    return gw_lb_ewma_pick_min(state, ctx, gw_lb_ewma_cost);
}

const gw_lb_ops_t gw_lb_ewma = {
    .name = "ewma",
    .create = gw_lb_ewma_create,
    .destroy = gw_lb_ewma_destroy,
    .pick = gw_lb_ewma_pick,
    .on_result = gw_lb_ewma_on_result,
    .on_backends_changed = gw_lb_ewma_backends_changed,
};
