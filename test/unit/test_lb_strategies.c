/*
 * Unit tests for the native strategies other than round_robin (core/lb_*.c): the exact smooth
 * weighted round-robin order, distributions of the random ones over many seeded picks,
 * least_conn and p2c following in-flight counts, ewma and least_score following on_result
 * samples and recovering as time passes, and the lb.h contract (healthy untried first, then
 * unhealthy untried, -1 when all are tried; n = 1, n = 0, 130 backends, list changes) for
 * every strategy.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <cmocka.h>

#include "lb.h"

#define MAXB 200

typedef struct fixture {
    const gw_lb_ops_t *ops;
    gw_backend_cfg_t cfg[MAXB];
    gw_backend_t b[MAXB];
    gw_backend_t *ptrs[MAXB];
    uint64_t tried[(MAXB + 63) / 64];
    uint64_t rng;
    gw_lb_ctx_t ctx;
    void *state;
} fixture_t;

static const gw_lb_ops_t *const all_ops[] = {
    &gw_lb_weighted_round_robin, &gw_lb_random, &gw_lb_weighted_random,
    &gw_lb_least_conn,           &gw_lb_p2c,    &gw_lb_ewma,
    &gw_lb_least_score,
};

/* n backends, all healthy, weight 1 unless `weights` says otherwise. Backends n..MAXB-1 are
 * set up too, so a test can grow ctx.n. */
static fixture_t *fx_new(const gw_lb_ops_t *ops, size_t n, const uint32_t *weights)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->ops = ops;
    for (size_t i = 0; i < MAXB; i++) {
        f->cfg[i].weight = weights != NULL && i < n ? weights[i] : 1;
        f->b[i].cfg = &f->cfg[i];
        f->b[i].index = (uint32_t)i;
        f->b[i].healthy = 1;
        f->ptrs[i] = &f->b[i];
    }
    f->rng = 0x2545F4914F6CDD1Dull;
    f->ctx = (gw_lb_ctx_t){
        .backends = f->ptrs, .n = n, .tried = f->tried, .rng = &f->rng, .now_ms = 1000000};
    /* Prequal reads its parameters from the upstream; the others need none. */
    static gw_upstream_cfg_t pq_upstream;
    gw_prequal_params_default(&pq_upstream.prequal);
    assert_int_equal(ops->create(ops == &gw_lb_prequal ? &pq_upstream : NULL, n, &f->state), 0);
    return f;
}

static void fx_free(fixture_t *f)
{
    f->ops->destroy(f->state);
    free(f);
}

static int pick(fixture_t *f)
{
    int i = f->ops->pick(f->state, &f->ctx);
    assert_true(i >= -1 && i < (int)f->ctx.n);
    return i;
}

static void result(fixture_t *f, size_t idx, enum gw_lb_outcome outcome, double latency_ms)
{
    gw_lb_result_t r = {.outcome = outcome, .status = 200, .latency_ms = latency_ms};
    f->ops->on_result(f->state, &f->ctx, idx, &r);
}

static void clear_tried(fixture_t *f)
{
    memset(f->tried, 0, sizeof(f->tried));
}

/* count[i] = picks of backend i out of `picks`; every pick must be a backend. */
static void tally(fixture_t *f, size_t picks, size_t *count)
{
    memset(count, 0, f->ctx.n * sizeof(*count));
    for (size_t k = 0; k < picks; k++) {
        int i = pick(f);
        assert_true(i >= 0);
        count[i]++;
    }
}

/* |got - want| <= tol * want */
static void assert_near(double got, double want, double tol)
{
    if (got < want * (1 - tol) || got > want * (1 + tol))
        fail_msg("got %.1f, want %.1f within %.0f%%", got, want, tol * 100);
}

/* ---- registry ---- */

static void test_registry(void **state)
{
    GW_UNUSED(state);
    static const char *const names[] = {"weighted_round_robin", "random", "weighted_random",
                                        "least_conn",           "p2c",    "ewma",
                                        "least_score"};
    for (size_t k = 0; k < GW_ARRAY_LEN(names); k++) {
        const gw_lb_ops_t *ops = gw_lb_find(names[k]);
        assert_ptr_equal(ops, all_ops[k]);
        assert_string_equal(ops->name, names[k]);
        bool listed = false;
        for (const char *const *n = gw_lb_names(); *n != NULL; n++)
            listed |= strcmp(*n, names[k]) == 0;
        assert_true(listed);
    }
    assert_ptr_equal(gw_lb_find("round_robin"), &gw_lb_round_robin);
    assert_null(gw_lb_find("weighted"));
    assert_null(gw_lb_find("P2C"));
    /* The strategies that learn from results say so. */
    assert_non_null(gw_lb_weighted_round_robin.on_result);
    assert_non_null(gw_lb_ewma.on_result);
    assert_non_null(gw_lb_least_score.on_result);
}

/* ---- weighted_round_robin ---- */

static void test_wrr_smooth_order(void **state)
{
    GW_UNUSED(state);
    static const uint32_t w[] = {5, 1, 1};
    static const int want[] = {0, 0, 1, 0, 2, 0, 0};
    fixture_t *f = fx_new(&gw_lb_weighted_round_robin, 3, w);
    for (int cycle = 0; cycle < 50; cycle++) {
        for (size_t k = 0; k < GW_ARRAY_LEN(want); k++)
            assert_int_equal(pick(f), want[k]);
    }
    fx_free(f);

    /* Equal weights: plain rotation. Weights 3, 2: a, b, a, b, a. */
    f = fx_new(&gw_lb_weighted_round_robin, 3, NULL);
    for (int k = 0; k < 30; k++)
        assert_int_equal(pick(f), k % 3);
    fx_free(f);
    static const uint32_t w32[] = {3, 2};
    static const int want32[] = {0, 1, 0, 1, 0};
    f = fx_new(&gw_lb_weighted_round_robin, 2, w32);
    for (int cycle = 0; cycle < 10; cycle++) {
        for (size_t k = 0; k < GW_ARRAY_LEN(want32); k++)
            assert_int_equal(pick(f), want32[k]);
    }
    fx_free(f);
}

static void test_wrr_skips_tried_and_unhealthy(void **state)
{
    GW_UNUSED(state);
    static const uint32_t w[] = {5, 1, 1};
    fixture_t *f = fx_new(&gw_lb_weighted_round_robin, 3, w);

    /* b down: the smooth order over a (5) and c (1) alone, as nginx skips down peers. */
    f->b[1].healthy = 0;
    static const int want[] = {0, 0, 0, 2, 0, 0};
    for (int cycle = 0; cycle < 10; cycle++) {
        for (size_t k = 0; k < GW_ARRAY_LEN(want); k++)
            assert_int_equal(pick(f), want[k]);
    }

    /* A request's retries: a, then c, then the unhealthy b, then nothing. */
    assert_int_equal(pick(f), 0);
    gw_lb_set_tried(f->tried, 0);
    assert_int_equal(pick(f), 2);
    gw_lb_set_tried(f->tried, 2);
    assert_int_equal(pick(f), 1);
    gw_lb_set_tried(f->tried, 1);
    assert_int_equal(pick(f), -1);

    /* b back: over a long run the shares are the weights again. */
    clear_tried(f);
    f->b[1].healthy = 1;
    size_t count[3];
    tally(f, 7000, count);
    assert_true(count[0] >= 4995 && count[0] <= 5005);
    assert_true(count[1] >= 995 && count[1] <= 1005);
    assert_true(count[2] >= 995 && count[2] <= 1005);
    fx_free(f);
}

static void test_wrr_failure_lowers_effective_weight(void **state)
{
    GW_UNUSED(state);
    static const uint32_t w[] = {5, 1, 1};
    fixture_t *f = fx_new(&gw_lb_weighted_round_robin, 3, w);
    /* A failure drops a's effective weight to 0; it climbs back one point per round. */
    result(f, 0, GW_LB_CONNECT_ERROR, 5);
    size_t count[3];
    tally(f, 7, count);
    assert_true(count[0] < 5);
    assert_true(count[1] >= 1 && count[2] >= 1);
    /* A success changes nothing; once recovered the shares are 5:1:1 again. */
    result(f, 0, GW_LB_OK, 5);
    tally(f, 70, count);
    tally(f, 7000, count);
    assert_true(count[0] >= 4995 && count[0] <= 5005);
    fx_free(f);
}

/* ---- random, weighted_random ---- */

static void test_random_uniform(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(&gw_lb_random, 5, NULL);
    size_t count[5];
    tally(f, 50000, count);
    for (int i = 0; i < 5; i++)
        assert_near((double)count[i], 10000, 0.04);

    /* Unhealthy and tried backends are left out; the rest stay uniform. */
    f->b[1].healthy = 0;
    gw_lb_set_tried(f->tried, 3);
    tally(f, 30000, count);
    assert_int_equal(count[1], 0);
    assert_int_equal(count[3], 0);
    assert_near((double)count[0], 10000, 0.04);
    assert_near((double)count[2], 10000, 0.04);
    assert_near((double)count[4], 10000, 0.04);
    fx_free(f);
}

static void test_weighted_random_proportional(void **state)
{
    GW_UNUSED(state);
    static const uint32_t w[] = {1, 2, 3, 4};
    fixture_t *f = fx_new(&gw_lb_weighted_random, 4, w);
    size_t count[4];
    tally(f, 100000, count);
    for (int i = 0; i < 4; i++)
        assert_near((double)count[i], 10000.0 * w[i], 0.04);

    /* Without the weight-4 backend the others share 1:2:3. */
    f->b[3].healthy = 0;
    tally(f, 60000, count);
    assert_int_equal(count[3], 0);
    for (int i = 0; i < 3; i++)
        assert_near((double)count[i], 10000.0 * w[i], 0.04);

    /* Only unhealthy ones untried: still by weight among them. */
    for (int i = 0; i < 4; i++)
        f->b[i].healthy = 0;
    gw_lb_set_tried(f->tried, 0);
    tally(f, 90000, count);
    assert_int_equal(count[0], 0);
    for (int i = 1; i < 4; i++)
        assert_near((double)count[i], 10000.0 * w[i], 0.04);
    fx_free(f);
}

/* ---- least_conn, p2c ---- */

static void test_least_conn_prefers_fewest(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(&gw_lb_least_conn, 4, NULL);
    f->b[0].inflight = 5;
    f->b[1].inflight = 2;
    f->b[2].inflight = 7;
    f->b[3].inflight = 3;
    for (int k = 0; k < 20; k++)
        assert_int_equal(pick(f), 1);
    /* The least loaded is tried: the next least loaded. */
    gw_lb_set_tried(f->tried, 1);
    assert_int_equal(pick(f), 3);
    /* ... unless it is down. */
    f->b[3].healthy = 0;
    assert_int_equal(pick(f), 0);
    fx_free(f);
}

static void test_least_conn_weighted_and_ties(void **state)
{
    GW_UNUSED(state);
    /* inflight / weight: 2/1 against 3/3, so the heavier backend despite more in flight. */
    static const uint32_t w[] = {1, 3};
    fixture_t *f = fx_new(&gw_lb_least_conn, 2, w);
    f->b[0].inflight = 2;
    f->b[1].inflight = 3;
    for (int k = 0; k < 10; k++)
        assert_int_equal(pick(f), 1);
    /* Equal ratios (1/1 and 3/3) tie: shared 1:3 by weight. */
    f->b[0].inflight = 1;
    size_t count[4];
    tally(f, 40000, count);
    assert_near((double)count[0], 10000, 0.05);
    assert_near((double)count[1], 30000, 0.05);
    fx_free(f);

    /* Idle equal backends share evenly (not always index 0), with or without ctx->rng. */
    f = fx_new(&gw_lb_least_conn, 4, NULL);
    tally(f, 40000, count);
    for (int i = 0; i < 4; i++)
        assert_near((double)count[i], 10000, 0.05);
    f->ctx.rng = NULL;
    tally(f, 40000, count);
    for (int i = 0; i < 4; i++)
        assert_near((double)count[i], 10000, 0.05);
    fx_free(f);
}

static void test_p2c_prefers_lower(void **state)
{
    GW_UNUSED(state);
    /* Two backends: both are always drawn, so always the lower one. */
    fixture_t *f = fx_new(&gw_lb_p2c, 2, NULL);
    f->b[0].inflight = 4;
    f->b[1].inflight = 1;
    for (int k = 0; k < 50; k++)
        assert_int_equal(pick(f), 1);
    /* Equal: either, at random. */
    f->b[0].inflight = 1;
    size_t count[3];
    tally(f, 20000, count);
    assert_near((double)count[0], 10000, 0.04);
    fx_free(f);

    /* Three backends with loads 10, 0, 5: the busiest is never picked (the two draws are distinct),
     * the idlest wins each pair it is in (2/3), the middle one the pair without it (1/3). */
    f = fx_new(&gw_lb_p2c, 3, NULL);
    f->b[0].inflight = 10;
    f->b[1].inflight = 0;
    f->b[2].inflight = 5;
    tally(f, 30000, count);
    assert_int_equal(count[0], 0);
    assert_near((double)count[1], 20000, 0.04);
    assert_near((double)count[2], 10000, 0.04);

    /* Only one candidate left: that one, whatever its load. */
    gw_lb_set_tried(f->tried, 1);
    gw_lb_set_tried(f->tried, 2);
    assert_int_equal(pick(f), 0);
    fx_free(f);
}

/* ---- ewma ---- */

static void test_ewma_follows_latency(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(&gw_lb_ewma, 3, NULL);
    size_t count[3];
    /* Nothing probed: all cost 0, picks spread. */
    tally(f, 3000, count);
    for (int i = 0; i < 3; i++)
        assert_near((double)count[i], 1000, 0.15);

    /* An unprobed backend goes first. */
    result(f, 0, GW_LB_OK, 100);
    result(f, 1, GW_LB_OK, 10);
    for (int k = 0; k < 10; k++)
        assert_int_equal(pick(f), 2);
    result(f, 2, GW_LB_OK, 10);
    /* 1 and 2 tie at 10 ms and share; the slow 0 gets nothing. */
    tally(f, 2000, count);
    assert_int_equal(count[0], 0);
    assert_near((double)count[1], 1000, 0.1);

    /* Peak: one slow answer from 1 moves it above 0 at once. */
    result(f, 1, GW_LB_OK, 500);
    for (int k = 0; k < 10; k++)
        assert_int_equal(pick(f), 2);
    gw_lb_set_tried(f->tried, 2);
    assert_int_equal(pick(f), 0); /* 100 < 500 */
    fx_free(f);
}

static void test_ewma_blend_below_is_time_weighted(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(&gw_lb_ewma, 2, NULL);
    result(f, 0, GW_LB_OK, 100);
    /* A lower sample at the same instant has weight 1 - e^0 = 0: no change. */
    result(f, 0, GW_LB_OK, 1);
    /* One tau later the estimate has decayed to 100/e and a sample of 1 ms counts 1 - 1/e:
     * 36.79 + 0.63 = 37.42. Backend 1's fresh estimates bracket that value. */
    f->ctx.now_ms += 10000;
    result(f, 0, GW_LB_OK, 1);
    result(f, 1, GW_LB_OK, 37.3);
    assert_int_equal(pick(f), 1);
    result(f, 1, GW_LB_OK, 37.5); /* above: replaces 37.3 at once */
    assert_int_equal(pick(f), 0);
    fx_free(f);
}

static void test_ewma_failure_penalty(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(&gw_lb_ewma, 2, NULL);
    result(f, 0, GW_LB_OK, 1500);
    result(f, 1, GW_LB_OK, 10);
    assert_int_equal(pick(f), 1);
    /* A failure costs max(2 x 10, 1000) = 1000 < 1500: still 1. */
    result(f, 1, GW_LB_TIMEOUT, 0);
    assert_int_equal(pick(f), 1);
    /* The second one doubles it: 2000 > 1500. */
    result(f, 1, GW_LB_CONNECT_ERROR, 0);
    assert_int_equal(pick(f), 0);
    /* A timeout's own latency counts when it is larger. */
    result(f, 0, GW_LB_TIMEOUT, 30000);
    assert_int_equal(pick(f), 1);
    /* Repeated failures stay finite, and odd latencies do not poison the estimate. */
    for (int k = 0; k < 5000; k++)
        result(f, 0, GW_LB_PROTOCOL_ERROR, 0);
    result(f, 1, GW_LB_OK, -5);
    result(f, 1, GW_LB_OK, NAN);
    assert_int_equal(pick(f), 1);
    f->ctx.now_ms += 3600 * 1000;
    result(f, 1, GW_LB_OK, 10);
    assert_int_equal(pick(f), 0); /* decayed from the cap to about 0 */
    fx_free(f);
}

/* Backend 0 answers in `slow_ms` until `fast_after` steps, then in 10 ms like backend 1. One
 * pick per second; returns the step at which 0 was first picked again after turning fast. */
static int simulate_recovery(fixture_t *f, double slow_ms, int steps, size_t *count)
{
    int first = -1;
    result(f, 0, GW_LB_OK, slow_ms);
    result(f, 1, GW_LB_OK, 10);
    memset(count, 0, 2 * sizeof(*count));
    for (int s = 0; s < steps; s++) {
        f->ctx.now_ms += 1000;
        int i = pick(f);
        assert_true(i == 0 || i == 1);
        count[i]++;
        if (i == 0 && first < 0)
            first = s;
        result(f, (size_t)i, GW_LB_OK, 10);
    }
    return first;
}

static void test_ewma_recovers_after_decay(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(&gw_lb_ewma, 2, NULL);
    size_t count[2];
    /* 1000 e^(-t/10 s) falls below 1's refreshed 10 e^(-1 s/10 s) after about 47 s. */
    int first = simulate_recovery(f, 1000, 300, count);
    assert_true(first >= 40 && first <= 55);
    /* Afterwards both answer in 10 ms and share. */
    assert_true(count[0] >= 100);
    fx_free(f);
}

/* ---- least_score ---- */

static void test_least_score_latency_times_load(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(&gw_lb_least_score, 2, NULL);
    result(f, 0, GW_LB_OK, 10);
    result(f, 1, GW_LB_OK, 30);
    assert_int_equal(pick(f), 0); /* 10 x 1 < 30 x 1 */
    f->b[0].inflight = 1;
    assert_int_equal(pick(f), 0); /* 10 x 2 < 30 */
    f->b[0].inflight = 3;
    assert_int_equal(pick(f), 1); /* 10 x 4 > 30 */
    f->b[1].inflight = 1;
    assert_int_equal(pick(f), 0); /* 40 < 60 */
    fx_free(f);
}

static void test_least_score_probes_unprobed_once(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(&gw_lb_least_score, 3, NULL);
    result(f, 0, GW_LB_OK, 10);
    result(f, 1, GW_LB_OK, 20);
    /* Unprobed and idle: scores 0, goes first. */
    assert_int_equal(pick(f), 2);
    /* Unprobed with a request in flight: after every probed backend, however loaded. */
    f->b[2].inflight = 1;
    f->b[0].inflight = 1000;
    assert_int_equal(pick(f), 1);
    gw_lb_set_tried(f->tried, 1);
    assert_int_equal(pick(f), 0);
    gw_lb_set_tried(f->tried, 0);
    assert_int_equal(pick(f), 2);
    /* Its first answer makes it an ordinary backend. */
    clear_tried(f);
    f->b[0].inflight = 0;
    result(f, 2, GW_LB_OK, 4);
    assert_int_equal(pick(f), 2); /* 4 x (1 + 1) < 10 x 1 < 20 x 1 */
    fx_free(f);
}

static void test_least_score_slow_gets_fewer(void **state)
{
    GW_UNUSED(state);
    /* Closed loop: each backend answers in its own time; in flight counts what is pending. */
    fixture_t *f = fx_new(&gw_lb_least_score, 2, NULL);
    const double lat[2] = {10, 100};
    uint64_t done_at[64];
    int done_idx[64];
    size_t pending = 0, count[2] = {0, 0};
    for (int step = 0; step < 5000; step++) {
        f->ctx.now_ms += 2;
        for (size_t k = 0; k < pending;) {
            if (done_at[k] <= f->ctx.now_ms) {
                GW_ATOMIC_ADD(f->b[done_idx[k]].inflight, (uint32_t)-1);
                result(f, (size_t)done_idx[k], GW_LB_OK, lat[done_idx[k]]);
                done_at[k] = done_at[--pending];
                done_idx[k] = done_idx[pending];
            } else {
                k++;
            }
        }
        if (pending == GW_ARRAY_LEN(done_at))
            continue;
        int i = pick(f);
        count[i]++;
        GW_ATOMIC_ADD(f->b[i].inflight, 1);
        done_at[pending] = f->ctx.now_ms + (uint64_t)lat[i];
        done_idx[pending++] = i;
    }
    /* The slow one gets some load (so its estimate stays fresh) but far less. */
    assert_true(count[1] > 0);
    assert_true(count[1] * 5 < count[0]);
    fx_free(f);
}

static void test_least_score_recovers_after_decay(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(&gw_lb_least_score, 2, NULL);
    size_t count[2];
    int first = simulate_recovery(f, 1000, 300, count);
    assert_true(first >= 40 && first <= 55);
    assert_true(count[0] >= 100);
    /* A failure pushes it away again. */
    result(f, 0, GW_LB_TIMEOUT, 0);
    result(f, 1, GW_LB_OK, 10);
    for (int k = 0; k < 10; k++)
        assert_int_equal(pick(f), 1);
    fx_free(f);
}

/* ---- the contract, for every strategy ---- */

/* A strategy's picks for one request's retries: each untried backend once, the healthy ones
 * first, then -1. */
static void check_retry_order(fixture_t *f)
{
    size_t n = f->ctx.n, healthy = 0;
    for (size_t i = 0; i < n; i++)
        healthy += f->b[i].healthy;
    clear_tried(f);
    for (size_t k = 0; k < n; k++) {
        int i = pick(f);
        assert_true(i >= 0);
        assert_false(gw_lb_tried(&f->ctx, (size_t)i));
        assert_int_equal(f->b[i].healthy, k < healthy ? 1 : 0);
        gw_lb_set_tried(f->tried, (size_t)i);
    }
    assert_int_equal(pick(f), -1);
    assert_int_equal(pick(f), -1);
    clear_tried(f);
}

static void test_contract_small(void **state)
{
    GW_UNUSED(state);
    for (size_t s = 0; s < GW_ARRAY_LEN(all_ops); s++) {
        /* n = 1: that backend, healthy or not, until it is tried. */
        fixture_t *f = fx_new(all_ops[s], 1, NULL);
        for (int k = 0; k < 5; k++)
            assert_int_equal(pick(f), 0);
        f->b[0].healthy = 0;
        assert_int_equal(pick(f), 0);
        gw_lb_set_tried(f->tried, 0);
        assert_int_equal(pick(f), -1);
        f->ctx.tried = NULL; /* NULL: nothing tried */
        assert_int_equal(pick(f), 0);
        fx_free(f);

        /* n = 0 */
        f = fx_new(all_ops[s], 0, NULL);
        assert_int_equal(pick(f), -1);
        fx_free(f);

        static const uint32_t w[] = {2, 1, 3, 1, 1};
        f = fx_new(all_ops[s], 5, w);
        f->b[1].inflight = 3;
        check_retry_order(f);
        f->b[0].healthy = 0;
        f->b[3].healthy = 0;
        check_retry_order(f);
        /* Only unhealthy ones left untried: one of them. */
        gw_lb_set_tried(f->tried, 1);
        gw_lb_set_tried(f->tried, 2);
        gw_lb_set_tried(f->tried, 4);
        for (int k = 0; k < 10; k++) {
            int i = pick(f);
            assert_true(i == 0 || i == 3);
        }
        /* Everything down, nothing tried: every backend is still reachable. */
        clear_tried(f);
        for (size_t i = 0; i < 5; i++)
            f->b[i].healthy = 0;
        check_retry_order(f);
        /* Without a generator in ctx. */
        f->ctx.rng = NULL;
        check_retry_order(f);
        fx_free(f);
    }
}

static void test_contract_many_backends(void **state)
{
    GW_UNUSED(state);
    const size_t n = 130; /* three words of tried bits */
    for (size_t s = 0; s < GW_ARRAY_LEN(all_ops); s++) {
        fixture_t *f = fx_new(all_ops[s], n, NULL);
        /* Every backend gets traffic (ewma and least_score: all unprobed, so all tied). */
        size_t count[130];
        tally(f, n * 40, count);
        for (size_t i = 0; i < n; i++)
            assert_true(count[i] > 0);

        /* Everything tried but 63/64 (word boundary) and 129 (third word). */
        for (size_t i = 0; i < n; i++) {
            if (i != 129 && i != 63 && i != 64)
                gw_lb_set_tried(f->tried, i);
        }
        for (int k = 0; k < 20; k++) {
            int i = pick(f);
            assert_true(i == 63 || i == 64 || i == 129);
        }
        f->b[64].healthy = 0;
        f->b[129].healthy = 0;
        assert_int_equal(pick(f), 63);
        gw_lb_set_tried(f->tried, 63);
        int i = pick(f);
        assert_true(i == 64 || i == 129);
        gw_lb_set_tried(f->tried, (size_t)i);
        int j = pick(f);
        assert_true((j == 64 || j == 129) && j != i);
        gw_lb_set_tried(f->tried, (size_t)j);
        assert_int_equal(pick(f), -1);

        f->b[64].healthy = 1;
        f->b[129].healthy = 1;
        f->b[7].healthy = 0;
        f->b[100].healthy = 0;
        check_retry_order(f);
        fx_free(f);
    }
}

static void test_contract_list_changes(void **state)
{
    GW_UNUSED(state);
    for (size_t s = 0; s < GW_ARRAY_LEN(all_ops); s++) {
        fixture_t *f = fx_new(all_ops[s], 6, NULL);
        if (f->ops->on_result != NULL) {
            for (size_t i = 0; i < 6; i++)
                result(f, i, GW_LB_OK, 10.0 * (double)(i + 1));
        }
        for (int k = 0; k < 20; k++)
            pick(f);
        /* Shrink: picks stay in range. */
        f->ctx.n = 2;
        if (f->ops->on_backends_changed != NULL)
            f->ops->on_backends_changed(f->state, &f->ctx);
        size_t count[MAXB];
        tally(f, 200, count);
        check_retry_order(f);
        /* Grow past what create saw: nothing allocated, the extra backends still reachable. */
        f->ctx.n = 9;
        if (f->ops->on_backends_changed != NULL)
            f->ops->on_backends_changed(f->state, &f->ctx);
        if (f->ops->on_result != NULL)
            result(f, 8, GW_LB_OK, 10); /* out of the state's range: ignored */
        tally(f, 200, count);
        check_retry_order(f);
        f->b[0].healthy = 0;
        check_retry_order(f);
        fx_free(f);
    }
}

/* Registration slots (core/registry.h): an upstream has 64 slots of which 3 are members; the
 * worker passes the other 61 in ctx->tried, as it does for every pick. No strategy may return
 * one, every member must be reachable, and after a membership change the new members are. */
static void test_absent_slots(void **state)
{
    GW_UNUSED(state);
    const gw_lb_ops_t *ops[GW_ARRAY_LEN(all_ops) + 2] = {&gw_lb_round_robin, &gw_lb_prequal};
    for (size_t s = 0; s < GW_ARRAY_LEN(all_ops); s++)
        ops[s + 2] = all_ops[s];
    for (size_t s = 0; s < GW_ARRAY_LEN(ops); s++) {
        fixture_t *f = fx_new(ops[s], 64, NULL);
        uint64_t absent[1];
        for (int round = 0; round < 2; round++) {
            const size_t members[2][3] = {{5, 40, 63}, {0, 5, 17}};
            absent[0] = ~(uint64_t)0;
            for (size_t i = 0; i < 64; i++)
                f->b[i].member = 0;
            for (size_t k = 0; k < 3; k++) {
                absent[0] &= ~((uint64_t)1 << members[round][k]);
                f->b[members[round][k]].member = 1;
            }
            f->ctx.tried = absent;
            if (f->ops->on_backends_changed != NULL)
                f->ops->on_backends_changed(f->state, &f->ctx);
            size_t seen[64] = {0};
            /* Picks look at the slots up to the highest member only (worker.h, n_active). */
            f->ctx.n = members[round][2] + 1;
            for (int k = 0; k < 300; k++) {
                memcpy(f->tried, absent, sizeof absent);
                f->ctx.tried = f->tried;
                int i = pick(f);
                if (i < 0 || ((absent[0] >> i) & 1))
                    fail_msg("%s picked %d, not a member", f->ops->name, i);
                seen[i]++;
                /* Spread in-flight counts so least_conn and p2c rotate too. */
                f->b[i].inflight++;
                if (f->ops->on_result != NULL)
                    result(f, (size_t)i, GW_LB_OK, 5.0);
            }
            for (size_t k = 0; k < 3; k++)
                if (seen[members[round][k]] == 0)
                    fail_msg("%s never picked member %zu", f->ops->name, members[round][k]);
            for (size_t i = 0; i < 64; i++)
                f->b[i].inflight = 0;
            f->ctx.n = 64;
        }
        fx_free(f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_wrr_smooth_order),
        cmocka_unit_test(test_wrr_skips_tried_and_unhealthy),
        cmocka_unit_test(test_wrr_failure_lowers_effective_weight),
        cmocka_unit_test(test_random_uniform),
        cmocka_unit_test(test_weighted_random_proportional),
        cmocka_unit_test(test_least_conn_prefers_fewest),
        cmocka_unit_test(test_least_conn_weighted_and_ties),
        cmocka_unit_test(test_p2c_prefers_lower),
        cmocka_unit_test(test_ewma_follows_latency),
        cmocka_unit_test(test_ewma_blend_below_is_time_weighted),
        cmocka_unit_test(test_ewma_failure_penalty),
        cmocka_unit_test(test_ewma_recovers_after_decay),
        cmocka_unit_test(test_least_score_latency_times_load),
        cmocka_unit_test(test_least_score_probes_unprobed_once),
        cmocka_unit_test(test_least_score_slow_gets_fewer),
        cmocka_unit_test(test_least_score_recovers_after_decay),
        cmocka_unit_test(test_contract_small),
        cmocka_unit_test(test_contract_many_backends),
        cmocka_unit_test(test_contract_list_changes),
        cmocka_unit_test(test_absent_slots),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
