/*
 * lb_least_score: the backend with the least latency x (in flight + 1), which is the whole of
 * Finagle's PeakEwma load metric (finagle-core loadbalancer/PeakEwma.scala; linkerd2-proxy
 * scores endpoints the same way). Latency alone (lb_ewma) sends every request to the fastest
 * backend until its estimate moves; multiplying by the work already queued there makes a fast
 * backend absorb load only until it is as loaded as its speed deserves, and a backend that is
 * slow because it is overloaded sheds load twice over.
 *
 * latency is this worker's peak-EWMA estimate, kept exactly as in lb_ewma.c (see the comment
 * there; the two must change together): a sample above the estimate replaces it, one below is
 * blended in with time constant tau = 10 s, the estimate decays toward 0 by exp(-dt / tau) when
 * read, and a failure counts as the sample max(2 x estimate, 1 s, latency_ms), all capped at
 * GW_LB_SCORE_MAX_MS. in_flight is backend->inflight, shared by every worker.
 *
 * A backend with no sample yet scores 0 while nothing is in flight to it, so a new backend gets
 * a request at once; while requests to it are in flight it scores a penalty above any measured
 * score (plus its in-flight count), so it is probed one request at a time rather than flooded
 * before the first answer says how fast it is. This is Finagle's rule for unprobed endpoints;
 * with a plain 0 x (in_flight + 1) every pick would go to it until its first response.
 *
 * The pick is the minimum score among the candidates of the lb.h contract (the healthy untried
 * backends, else the unhealthy untried ones); ties go to a uniformly random one of them. O(n),
 * no allocation. The module is pure: time is ctx->now_ms and randomness ctx->rng (a generator in
 * the state stands in when a caller passes none). State is one worker's, sized by `create`; a
 * list that later grows past that size is handled without allocating, the extra backends being
 * picked only when no tracked one qualifies (the owner should create new state for it).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "lb.h"

#define GW_LB_SCORE_TAU_MS 10000.0
#define GW_LB_SCORE_PENALTY_MIN_MS 1000.0
#define GW_LB_SCORE_MAX_MS 600000.0
/* Score of an unprobed backend with requests in flight: above any latency x (in_flight + 1)
 * (at most 6e5 x 2^32 = 2.6e15). */
#define GW_LB_SCORE_UNPROBED_BUSY 1e18

typedef struct gw_lb_score_peer {
    double cost;    /* latency estimate in ms as of `stamp` */
    uint64_t stamp; /* ctx->now_ms of the last update */
    bool probed;    /* has had at least one sample */
} gw_lb_score_peer_t;

typedef struct gw_lb_score {
    uint64_t rng; /* used only when ctx->rng is NULL */
    size_t cap;   /* entries in peers: the n that create saw */
    gw_lb_score_peer_t peers[];
} gw_lb_score_t;

static void gw_lb_score_reset(gw_lb_score_t *s)
{
    for (size_t i = 0; i < s->cap; i++)
        s->peers[i] = (gw_lb_score_peer_t){.cost = 0, .stamp = 0, .probed = false};
}

static int gw_lb_score_create(const gw_upstream_cfg_t *u, size_t n, void **state)
{
    GW_UNUSED(u);
    gw_lb_score_t *s = malloc(sizeof(*s) + n * sizeof(s->peers[0]));
    if (s == NULL)
        return -ENOMEM;
    s->rng = 0x9E3779B97F4A7C15ull;
    s->cap = n;
    gw_lb_score_reset(s);
    *state = s;
    return 0;
}

static void gw_lb_score_destroy(void *state)
{
    free(state);
}

/* exp(-dt / tau) for the time since `stamp`; a clock that went backwards decays nothing. */
static double gw_lb_score_decay(const gw_lb_score_peer_t *p, uint64_t now_ms)
{
    uint64_t dt = now_ms > p->stamp ? now_ms - p->stamp : 0;
    return exp(-(double)dt / GW_LB_SCORE_TAU_MS);
}

/* The latency estimate as of now_ms; 0 for an unprobed backend. */
static double gw_lb_score_latency(const gw_lb_score_peer_t *p, uint64_t now_ms)
{
    return p->probed ? p->cost * gw_lb_score_decay(p, now_ms) : 0.0;
}

static void gw_lb_score_observe(gw_lb_score_peer_t *p, uint64_t now_ms, double sample)
{
    if (!(sample >= 0)) /* negative or NaN from a confused caller */
        sample = 0;
    sample = GW_MIN(sample, GW_LB_SCORE_MAX_MS);
    double w = gw_lb_score_decay(p, now_ms);
    double cur = p->probed ? p->cost * w : 0.0;
    p->cost = !p->probed || sample > cur ? sample : cur + sample * (1.0 - w);
    p->stamp = now_ms;
    p->probed = true;
}

static double gw_lb_score_of(const gw_lb_score_peer_t *p, const gw_backend_t *b, uint64_t now_ms)
{
    uint32_t inflight = GW_RELAXED_LOAD(b->inflight);
    if (!p->probed)
        return inflight == 0 ? 0.0 : GW_LB_SCORE_UNPROBED_BUSY + inflight;
    return gw_lb_score_latency(p, now_ms) * ((double)inflight + 1.0);
}

static bool gw_lb_score_candidate(const gw_lb_ctx_t *ctx, size_t i, bool need_healthy)
{
    if (gw_lb_tried(ctx, i))
        return false;
    return !need_healthy || GW_RELAXED_LOAD(ctx->backends[i]->healthy) != 0;
}

/* Picks per the contract in lb.h. */
static int gw_lb_score_pick(void *state, const gw_lb_ctx_t *ctx)
{
    gw_lb_score_t *s = state;
    uint64_t *rng = ctx->rng != NULL ? ctx->rng : &s->rng;
    size_t tracked = GW_MIN(ctx->n, s->cap);
    for (int pass = 0; pass < 2; pass++) {
        bool need_healthy = pass == 0;
        int best = -1;
        double best_score = 0;
        uint32_t ties = 0;
        for (size_t i = 0; i < tracked; i++) {
            if (!gw_lb_score_candidate(ctx, i, need_healthy))
                continue;
            double score = gw_lb_score_of(&s->peers[i], ctx->backends[i], ctx->now_ms);
            if (best < 0 || score < best_score) {
                best = (int)i;
                best_score = score;
                ties = 1;
            } else if (score == best_score && gw_rand_below(rng, ++ties) == 0) {
                best = (int)i;
            }
        }
        for (size_t i = tracked; i < ctx->n && best < 0; i++) {
            if (gw_lb_score_candidate(ctx, i, need_healthy))
                best = (int)i;
        }
        if (best >= 0)
            return best;
    }
    return -1;
}

static void gw_lb_score_on_result(void *state, const gw_lb_ctx_t *ctx, size_t idx,
                                  const gw_lb_result_t *r)
{
    gw_lb_score_t *s = state;
    if (idx >= s->cap || idx >= ctx->n)
        return;
    gw_lb_score_peer_t *p = &s->peers[idx];
    double sample = r->latency_ms;
    if (r->outcome != GW_LB_OK) {
        double penalty =
            GW_MAX(2.0 * gw_lb_score_latency(p, ctx->now_ms), GW_LB_SCORE_PENALTY_MIN_MS);
        sample = r->latency_ms > penalty ? r->latency_ms : penalty; /* false when NaN */
    }
    gw_lb_score_observe(p, ctx->now_ms, sample);
}

/* The list changed (size or order): per-index estimates may belong to other backends now, so
 * every backend starts unprobed again. */
static void gw_lb_score_backends_changed(void *state, const gw_lb_ctx_t *ctx)
{
    GW_UNUSED(ctx);
    gw_lb_score_reset(state);
}

const gw_lb_ops_t gw_lb_least_score = {
    .name = "least_score",
    .create = gw_lb_score_create,
    .destroy = gw_lb_score_destroy,
    .pick = gw_lb_score_pick,
    .on_result = gw_lb_score_on_result,
    .on_backends_changed = gw_lb_score_backends_changed,
};
