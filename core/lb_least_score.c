/*
 * lb_least_score: the backend with the least latency x (in flight + 1), which is the whole of
 * Finagle's PeakEwma load metric (finagle-core loadbalancer/PeakEwma.scala; linkerd2-proxy
 * scores endpoints the same way). Latency alone (lb_ewma) sends every request to the fastest
 * backend until its estimate moves; multiplying by the work already queued there makes a fast
 * backend absorb load only until it is as loaded as its speed deserves, and a backend that is
 * slow because it is overloaded sheds load twice over.
 *
 * latency is this worker's peak-EWMA estimate from lb_ewma.h, the same one lb_ewma.c uses (see
 * the comment there): a sample above the estimate replaces it, one below is blended in with time
 * constant tau = 10 s, the estimate decays toward 0 by exp(-dt / tau) when read, and a failure
 * counts as the sample max(2 x estimate, 1 s, latency_ms), all capped at GW_LB_EWMA_MAX_MS.
 * in_flight is backend->inflight, shared by every worker.
 *
 * A backend with no sample yet scores 0 while nothing is in flight to it, so a new backend gets
 * a request at once; while requests to it are in flight it scores a penalty above any measured
 * score (plus its in-flight count), so it is probed one request at a time rather than flooded
 * before the first answer says how fast it is. This is Finagle's rule for unprobed endpoints;
 * with a plain 0 x (in_flight + 1) every pick would go to it until its first response.
 *
 * The pick is the minimum score among the candidates of the lb.h contract (the healthy untried
 * backends, else the unhealthy untried ones); ties go to a uniformly random one of them. O(n),
 * no allocation. The module is pure; state, sizing and growth are as described in lb_ewma.h.
 */
#include "lb_ewma.h"

/* Score of an unprobed backend with requests in flight: above any latency x (in_flight + 1)
 * (at most 6e5 x 2^32 = 2.6e15). */
#define GW_LB_SCORE_UNPROBED_BUSY 1e18

static double gw_lb_score_of(const gw_lb_ewma_peer_t *p, const gw_lb_ctx_t *ctx, size_t i)
{
    uint32_t inflight = GW_RELAXED_LOAD(ctx->backends[i]->inflight);
    if (!p->probed)
        return inflight == 0 ? 0.0 : GW_LB_SCORE_UNPROBED_BUSY + inflight;
    return gw_lb_ewma_latency(p, ctx->now_ms) * ((double)inflight + 1.0);
}

/* Picks per the contract in lb.h. */
static int gw_lb_score_pick(void *state, const gw_lb_ctx_t *ctx)
{
    return gw_lb_ewma_pick_min(state, ctx, gw_lb_score_of);
}

const gw_lb_ops_t gw_lb_least_score = {
    .name = "least_score",
    .create = gw_lb_ewma_create,
    .destroy = gw_lb_ewma_destroy,
    .pick = gw_lb_score_pick,
    .on_result = gw_lb_ewma_on_result,
    .on_backends_changed = gw_lb_ewma_backends_changed,
};
