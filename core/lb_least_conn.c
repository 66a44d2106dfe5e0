/*
 * lb_least_conn: the backend with the fewest requests in flight per unit of weight, like nginx's
 * least_conn (ngx_http_upstream_least_conn_module.c), which compares conns / weight by cross
 * multiplication. The in-flight count is backend->inflight, shared by every worker, so workers
 * steer around a backend that is busy because of the others' traffic too.
 *
 * Ties are the common case (every count is 0 on an idle gateway), and always taking the first
 * of them would send all light traffic to backend 0. nginx breaks ties with weighted round robin
 * among the tied peers; here a tie goes to a weighted random choice among them (reservoir
 * sampling in the same pass), which needs no per-backend state and so keeps working when the
 * list changes.
 *
 * Candidates follow the lb.h contract: the healthy untried backends, or when there is none the
 * unhealthy untried ones. O(n), no allocation. Randomness comes from ctx->rng; when a caller
 * passes none, a generator in the state stands in.
 */
#include <errno.h>
#include <stdlib.h>

#include "lb.h"

typedef struct gw_lb_lc {
    uint64_t rng; /* used only when ctx->rng is NULL */
} gw_lb_lc_t;

static int gw_lb_lc_create(const gw_upstream_cfg_t *u, size_t n, void **state)
{
    GW_UNUSED(u);
    GW_UNUSED(n);
    gw_lb_lc_t *s = malloc(sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->rng = 0x9E3779B97F4A7C15ull;
    *state = s;
    return 0;
}

static void gw_lb_lc_destroy(void *state)
{
    free(state);
}

/* Picks per the contract in lb.h. */
static int gw_lb_lc_pick(void *state, const gw_lb_ctx_t *ctx)
{
    gw_lb_lc_t *s = state;
    uint64_t *rng = ctx->rng != NULL ? ctx->rng : &s->rng;
    for (int pass = 0; pass < 2; pass++) {
        bool need_healthy = pass == 0;
        int best = -1;
        uint64_t best_conns = 0, best_weight = 1;
        uint64_t tie_weight = 0; /* total weight of the backends tied with best so far */
        for (size_t i = 0; i < ctx->n; i++) {
            const gw_backend_t *b = ctx->backends[i];
            if (gw_lb_tried(ctx, i))
                continue;
            if (need_healthy && GW_RELAXED_LOAD(b->healthy) == 0)
                continue;
            uint64_t conns = GW_RELAXED_LOAD(b->inflight);
            uint64_t weight = b->cfg != NULL && GW_RELAXED_LOAD(b->cfg->weight) > 0 ? GW_RELAXED_LOAD(b->cfg->weight) : 1;
            /* conns / weight against best_conns / best_weight, without division. */
            uint64_t lhs = conns * best_weight, rhs = best_conns * weight;
            if (best < 0 || lhs < rhs) {
                best = (int)i;
                best_conns = conns;
                best_weight = weight;
                tie_weight = weight;
            } else if (lhs == rhs) {
                /* Weighted reservoir: i ends up chosen with probability weight / tie total. */
                tie_weight += weight;
                if (gw_rand_below(rng, (uint32_t)GW_MIN(tie_weight, (uint64_t)UINT32_MAX)) <
                    weight) {
                    best = (int)i;
                    best_conns = conns;
                    best_weight = weight;
                }
            }
        }
        if (best >= 0)
            return best;
    }
    return -1;
}

const gw_lb_ops_t gw_lb_least_conn = {
    .name = "least_conn",
    .create = gw_lb_lc_create,
    .destroy = gw_lb_lc_destroy,
    .pick = gw_lb_lc_pick,
    .on_result = NULL,
    .on_backends_changed = NULL,
};
