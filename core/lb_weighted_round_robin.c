/*
 * lb_weighted_round_robin: nginx's smooth weighted round robin (ngx_http_upstream_get_peer in
 * ngx_http_upstream_round_robin.c). On every pick each candidate's current weight grows by its
 * effective weight, the candidate with the largest current weight wins (the first one on a tie),
 * and the winner's current weight drops by the sum of the effective weights added. Weights 5, 1, 1
 * give a, a, b, a, c, a, a: the heavy backend's turns are spread through the cycle instead of
 * coming in a burst of five, which is why nginx prefers it to the classic interleaved WRR.
 *
 * Only candidates take part in a round: backends already tried for this request, and unhealthy
 * ones while a healthy untried one exists, neither gain nor pay weight, exactly as nginx skips
 * tried and down peers. When no healthy backend is left untried the same rule runs over the
 * unhealthy untried ones (the lb.h contract).
 *
 * Effective weight is nginx's too: a failed request (anything but GW_LB_OK) drops the backend's
 * effective weight by its configured weight (nginx with max_fails=1), and every round it takes
 * part in gives one point back, so a backend that just failed gets few turns until it has been
 * picked around `weight` times.
 *
 * State is one worker's: two counters per backend, sized by `create`. A list that later grows
 * past that size is handled without allocating: the extra backends are picked only when no
 * tracked backend qualifies (the owner should create new state for a bigger list).
 */
#include <errno.h>
#include <stdlib.h>

#include "lb.h"

typedef struct gw_lb_wrr_peer {
    int64_t current;   /* nginx's current_weight */
    int64_t effective; /* nginx's effective_weight: 0..weight */
} gw_lb_wrr_peer_t;

typedef struct gw_lb_wrr {
    size_t cap; /* entries in peers: the n that create saw */
    gw_lb_wrr_peer_t peers[];
} gw_lb_wrr_t;

static int64_t gw_lb_wrr_weight(const gw_backend_t *b)
{
    return b->cfg != NULL && GW_RELAXED_LOAD(b->cfg->weight) > 0 ? (int64_t)GW_RELAXED_LOAD(b->cfg->weight) : 1;
}

/* Forgets all history. effective = -1 means "start at the configured weight", which is read
 * from the backend when it is first a candidate (create does not see the backends). */
static void gw_lb_wrr_reset(gw_lb_wrr_t *w)
{
    for (size_t i = 0; i < w->cap; i++)
        w->peers[i] = (gw_lb_wrr_peer_t){.current = 0, .effective = -1};
}

static int gw_lb_wrr_create(const gw_upstream_cfg_t *u, size_t n, void **state)
{
    GW_UNUSED(u);
    gw_lb_wrr_t *w = malloc(sizeof(*w) + n * sizeof(w->peers[0]));
    if (w == NULL)
        return -ENOMEM;
    w->cap = n;
    gw_lb_wrr_reset(w);
    *state = w;
    return 0;
}

static void gw_lb_wrr_destroy(void *state)
{
    free(state);
}

static bool gw_lb_wrr_candidate(const gw_lb_ctx_t *ctx, size_t i, bool need_healthy)
{
    if (gw_lb_tried(ctx, i))
        return false;
    return !need_healthy || GW_RELAXED_LOAD(ctx->backends[i]->healthy) != 0;
}

/* One smooth-WRR round over the candidates among the tracked backends; -1 when there is none. */
static int gw_lb_wrr_round(gw_lb_wrr_t *w, const gw_lb_ctx_t *ctx, bool need_healthy)
{
    size_t n = GW_MIN(ctx->n, w->cap);
    int64_t total = 0;
    gw_lb_wrr_peer_t *best = NULL;
    int best_i = -1;
    for (size_t i = 0; i < n; i++) {
        if (!gw_lb_wrr_candidate(ctx, i, need_healthy))
            continue;
        gw_lb_wrr_peer_t *p = &w->peers[i];
        int64_t weight = gw_lb_wrr_weight(ctx->backends[i]);
        if (p->effective < 0 || p->effective > weight)
            p->effective = weight; /* first sight, or the weight went down */
        p->current += p->effective;
        total += p->effective;
        if (p->effective < weight)
            p->effective++;
        if (best == NULL || p->current > best->current) {
            best = p;
            best_i = (int)i;
        }
    }
    if (best != NULL)
        best->current -= total;
    return best_i;
}

/* First candidate beyond the tracked ones (the list grew after create); -1 when none. */
static int gw_lb_wrr_untracked(const gw_lb_wrr_t *w, const gw_lb_ctx_t *ctx, bool need_healthy)
{
    for (size_t i = w->cap; i < ctx->n; i++) {
        if (gw_lb_wrr_candidate(ctx, i, need_healthy))
            return (int)i;
    }
    return -1;
}

/* Picks per the contract in lb.h. O(n), no allocation, deterministic (no randomness). */
static int gw_lb_wrr_pick(void *state, const gw_lb_ctx_t *ctx)
{
    gw_lb_wrr_t *w = state;
    for (int pass = 0; pass < 2; pass++) {
        bool need_healthy = pass == 0;
        int i = gw_lb_wrr_round(w, ctx, need_healthy);
        if (i < 0)
            i = gw_lb_wrr_untracked(w, ctx, need_healthy);
        if (i >= 0)
            return i;
    }
    return -1;
}

/* A failure costs the backend its configured weight of effective weight (floored at 0). A
 * cancelled attempt (a lost hedge race) is no failure. */
static void gw_lb_wrr_on_result(void *state, const gw_lb_ctx_t *ctx, size_t idx,
                                const gw_lb_result_t *r)
{
    gw_lb_wrr_t *w = state;
    if (r->outcome == GW_LB_OK || r->outcome == GW_LB_CANCELLED || idx >= w->cap || idx >= ctx->n)
        return;
    gw_lb_wrr_peer_t *p = &w->peers[idx];
    int64_t weight = gw_lb_wrr_weight(ctx->backends[idx]);
    if (p->effective < 0 || p->effective > weight)
        p->effective = weight;
    p->effective = GW_MAX(p->effective - weight, (int64_t)0);
}

/* The list changed (size or order): per-index history means nothing any more, so start the
 * cycle afresh, as nginx does when it loads a new configuration. */
static void gw_lb_wrr_backends_changed(void *state, const gw_lb_ctx_t *ctx)
{
    GW_UNUSED(ctx);
    gw_lb_wrr_reset(state);
}

const gw_lb_ops_t gw_lb_weighted_round_robin = {
    .name = "weighted_round_robin",
    .create = gw_lb_wrr_create,
    .destroy = gw_lb_wrr_destroy,
    .pick = gw_lb_wrr_pick,
    .on_result = gw_lb_wrr_on_result,
    .on_backends_changed = gw_lb_wrr_backends_changed,
};
