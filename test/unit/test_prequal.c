/*
 * Unit tests for core/prequal.c, the pure Prequal module (docs/PREQUAL.md §3): the hot-cold rule
 * and its edges, the quantile, Eq. 1 and its random rounding, the fractional-rate accumulator, the
 * pool's expiry, reuse, capacity, one-entry-per-backend and alternating removal rules,
 * the effective RIF, fallback, tried backends, probe target sampling, purges and membership,
 * passive / piggyback modes with synthetic entries, and an end-to-end simulation against round
 * robin. Time and randomness are injected, so every expected value is exact.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common.h"
#include "prequal.h"

#define SEED 0x9E3779B97F4A7C15ull

static gw_prequal_params_t defaults(void)
{
    gw_prequal_params_t pp;
    gw_prequal_params_default(&pp);
    return pp;
}

/* The gateway's side of the effective RIF: what tests have "sent" and not completed per backend.
 * pick() sends to what it picked, as the gateway does; mk() resets it. */
static gw_prequal_load_t g_load[1024];

static gw_prequal_t *mk(const gw_prequal_params_t *pp, size_t n)
{
    memset(g_load, 0, sizeof(g_load));
    gw_prequal_t *p = gw_prequal_new(pp, n);
    assert_non_null(p);
    return p;
}

/* A probe with a small healthy count, so the reuse budget is max_reuse and never interferes. */
static void probe(gw_prequal_t *p, uint32_t b, uint32_t rif, uint64_t lat, uint64_t t)
{
    uint64_t rng = SEED;
    gw_prequal_probe_sent(p, b, t, g_load[b].inflight);
    gw_prequal_on_probe(p, b, rif, lat, t, 5, &rng);
}

/* A pick, and the request sent to the backend picked. */
static int pick(gw_prequal_t *p, uint64_t now, const uint64_t *tried, gw_prequal_branch_t *br)
{
    static uint64_t rng = SEED;
    int b = gw_prequal_pick(p, now, tried, g_load, &rng, br);
    if (b >= 0)
        g_load[b].inflight++;
    return b;
}

/* A request to b completes. */
static void done(uint32_t b)
{
    assert_true(g_load[b].inflight > 0);
    g_load[b].inflight--;
}

static uint64_t thr(gw_prequal_t *p, uint64_t now)
{
    return gw_prequal_rif_threshold(p, now, g_load);
}

static const gw_prequal_stats_t *st(const gw_prequal_t *p)
{
    return gw_prequal_stats(p);
}

/* The pool entry of backend b, if any. */
static bool entry_of(const gw_prequal_t *p, uint32_t b, uint64_t now, gw_prequal_entry_info_t *out)
{
    gw_prequal_entry_info_t e[1024];
    size_t n = gw_prequal_pool_snapshot(p, now, e, GW_ARRAY_LEN(e));
    for (size_t i = 0; i < n; i++) {
        if (e[i].backend == b) {
            *out = e[i];
            return true;
        }
    }
    return false;
}

static bool in_pool(const gw_prequal_t *p, uint32_t b)
{
    gw_prequal_entry_info_t e;
    return entry_of(p, b, 0, &e);
}

/* ---- parameters ---- */

static void test_params_default(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    assert_int_equal(pp.pool_size, 0); /* one entry per backend */
    assert_int_equal(pp.max_age_ms, 1000);
    assert_true(pp.probes_per_request == 3.0);
    assert_true(pp.removes_per_request == 1.0);
    assert_true(pp.delta == 1.0);
    assert_int_equal(pp.max_reuse, 16);
    assert_true(fabs(pp.q_rif - 0.84) < 1e-12);
    assert_int_equal(pp.rif_history, 64);
    assert_int_equal(pp.probe_timeout_ms, 50);
    assert_int_equal(pp.idle_probe_ms, 250);
    assert_int_equal(pp.max_probes_in_flight, 64);
    assert_int_equal(pp.probe_rate, 1000);
    assert_int_equal(pp.latency_smoothing_ms, 100);
    assert_null(gw_prequal_params_check(&pp));
}

static void expect_bad(const gw_prequal_params_t *pp, const char *field)
{
    const char *msg = gw_prequal_params_check(pp);
    assert_non_null(msg);
    assert_non_null(strstr(msg, field));
    assert_non_null(strstr(msg, "["));
    assert_null(gw_prequal_new(pp, 4));
}

static void test_params_check(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp;
#define BAD(field, value)                                                                          \
    do {                                                                                           \
        pp = defaults();                                                                           \
        pp.field = value;                                                                          \
        expect_bad(&pp, #field);                                                                   \
    } while (0)
    BAD(pool_size, 1025);
    BAD(max_age_ms, 0);
    BAD(probes_per_request, -0.5);
    BAD(probes_per_request, 16.5);
    BAD(probes_per_request, NAN);
    BAD(removes_per_request, 17);
    BAD(removes_per_request, -1);
    BAD(delta, -0.1);
    BAD(delta, NAN);
    BAD(max_reuse, 0);
    BAD(q_rif, -0.01);
    BAD(q_rif, 1.01);
    BAD(q_rif, NAN);
    BAD(rif_history, 0);
    BAD(rif_history, 4097);
    BAD(probe_timeout_ms, 0);
    BAD(idle_probe_ms, 0);
    BAD(max_probes_in_flight, 0);
    BAD(probe_rate, 0);
    BAD(probe_rate, 1000001);
    BAD(latency_smoothing_ms, 0);
    BAD(latency_smoothing_ms, 60001);
#undef BAD
    /* The edges are valid. */
    pp = defaults();
    pp.q_rif = 0.0;
    pp.probes_per_request = 0.0;
    pp.pool_size = 0;
    pp.rif_history = 4096;
    assert_null(gw_prequal_params_check(&pp));
    pp.q_rif = 1.0;
    pp.probes_per_request = 16.0;
    pp.pool_size = 1024;
    pp.rif_history = 1;
    assert_null(gw_prequal_params_check(&pp));
    gw_prequal_t *p = mk(&pp, 0); /* an empty upstream is allowed */
    assert_int_equal(gw_prequal_params(p)->pool_size, 1024);
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 0, NULL, &br), -1);
    gw_prequal_free(p);
    gw_prequal_free(NULL);
}

/* ---- hot-cold lexicographic rule ---- */

static void test_hcl_cold_beats_hot(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.removes_per_request = 0;
    gw_prequal_t *p = mk(&pp, 3);
    probe(p, 0, 10, 100, 1000); /* fastest, but hot */
    probe(p, 1, 1, 500, 1000);
    probe(p, 2, 2, 300, 1000);
    /* RIFs sorted [1, 2, 10]; rank floor(0.84 * 2) = 1 -> thr 2: backend 0 is hot. */
    assert_int_equal(thr(p, 1000), 2);
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 1000, NULL, &br), 2);
    assert_int_equal(br, GW_PREQUAL_COLD);
    assert_int_equal(st(p)->rif_threshold, 2);
    /* Another worker sends 10 to backend 2 (effective 13): thr is now 10, and the cold ones are
     * 0 (10, the fastest) and 1. */
    g_load[2].inflight += 10;
    assert_int_equal(thr(p, 1000), 10);
    assert_int_equal(pick(p, 1000, NULL, &br), 0);
    assert_int_equal(br, GW_PREQUAL_COLD);
    assert_int_equal(st(p)->picks[GW_PREQUAL_COLD], 2);
    assert_int_equal(st(p)->picks[GW_PREQUAL_HOT], 0);
    assert_int_equal(st(p)->picks[GW_PREQUAL_FALLBACK], 0);
    gw_prequal_free(p);

    /* Every usable entry hot: the lowest RIF wins, whatever its latency. */
    pp.q_rif = 0.5;
    p = mk(&pp, 4);
    probe(p, 0, 10, 100, 1000);
    probe(p, 1, 8, 900, 1000);
    probe(p, 2, 1, 50, 1000);
    probe(p, 3, 2, 50, 1000);
    assert_int_equal(thr(p, 1000), 2); /* [1, 2, 8, 10][floor(0.5 * 3)] */
    uint64_t tried[1] = {(1u << 2) | (1u << 3)};
    assert_int_equal(pick(p, 1000, tried, &br), 1);
    assert_int_equal(br, GW_PREQUAL_HOT);
    assert_int_equal(st(p)->picks[GW_PREQUAL_HOT], 1);
    gw_prequal_free(p);
}
static void test_hcl_all_hot_min_rif(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.q_rif = 0.0;
    pp.removes_per_request = 0;
    gw_prequal_t *p = mk(&pp, 4);
    probe(p, 0, 0, 1, 1000); /* replaced by the next report: no longer counts */
    probe(p, 0, 5, 1, 1000);
    probe(p, 1, 3, 900, 1000); /* the slowest, but the least loaded */
    probe(p, 2, 4, 50, 1000);
    /* One value per backend, and a purged entry's report still counts: min of [5, 3, 4, 0]. */
    probe(p, 3, 0, 1, 1000);
    assert_true(gw_prequal_purge(p, 3, GW_PREQUAL_RM_FAILURE));
    assert_int_equal(thr(p, 1000), 0);
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 1000, NULL, &br), 1);
    assert_int_equal(br, GW_PREQUAL_HOT);
    gw_prequal_free(p);
}

static void test_hcl_cold_ties(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.q_rif = 1.0; /* everything cold: predicted latency, then RIF, then index */
    pp.removes_per_request = 0;
    gw_prequal_t *p = mk(&pp, 3);
    /* The same cost per queued request (100 µs), so the prediction 100 × (RIF + 1) ties with
     * the RIF. */
    probe(p, 2, 3, 400, 1000); /* inserted first, so pool order does not decide */
    probe(p, 0, 5, 600, 1000);
    probe(p, 1, 3, 400, 1000);
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 1000, NULL, &br), 1); /* rif 3 beats 5; index 1 beats 2 */
    assert_int_equal(br, GW_PREQUAL_COLD);
    assert_int_equal(pick(p, 1000, NULL, &br), 2); /* 1 is at rif 4 now */
    assert_int_equal(pick(p, 1000, NULL, &br), 1); /* 4, 4: lower index */
    assert_int_equal(pick(p, 1000, NULL, &br), 2);
    assert_int_equal(pick(p, 1000, NULL, &br), 0); /* 5, 5, 5: lower index */
    gw_prequal_free(p);
}

static void test_hcl_hot_ties(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.q_rif = 0.0;
    pp.removes_per_request = 0;
    gw_prequal_t *p = mk(&pp, 4);
    probe(p, 3, 0, 1, 1000); /* its report (0) stays after the purge: thr 0 */
    assert_true(gw_prequal_purge(p, 3, GW_PREQUAL_RM_FAILURE));
    probe(p, 2, 2, 200, 1000);
    probe(p, 0, 2, 300, 1000);
    probe(p, 1, 2, 200, 1000);
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 1000, NULL, &br), 1); /* rif tie, latency tie 200, index 1 < 2 */
    assert_int_equal(br, GW_PREQUAL_HOT);
    assert_int_equal(pick(p, 1000, NULL, &br), 2); /* 1 is at rif 3 */
    assert_int_equal(pick(p, 1000, NULL, &br), 0); /* rif 2 is the minimum left */
    assert_int_equal(pick(p, 1000, NULL, &br), 1); /* 3, 3, 3: latency 200, index 1 */
    gw_prequal_free(p);
}

static void hcl_edge_setup(gw_prequal_t *p)
{
    probe(p, 0, 1, 900, 1000);
    probe(p, 1, 2, 100, 1000);
    probe(p, 2, 3, 50, 1000);
}

static void test_hcl_q0_q1(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.removes_per_request = 0;
    gw_prequal_branch_t br;

    /* q = 0: the threshold is the minimum RIF, so only the least loaded are cold (RIF first). */
    pp.q_rif = 0.0;
    gw_prequal_t *p = mk(&pp, 3);
    hcl_edge_setup(p);
    assert_int_equal(pick(p, 1000, NULL, &br), 0);
    assert_int_equal(br, GW_PREQUAL_COLD);
    assert_int_equal(st(p)->rif_threshold, 1);
    gw_prequal_free(p);

    /* q = 1: threshold +Inf, nothing is hot, latency alone decides. */
    pp.q_rif = 1.0;
    p = mk(&pp, 3);
    hcl_edge_setup(p);
    assert_true(thr(p, 1000) == GW_PREQUAL_THR_INF);
    assert_int_equal(pick(p, 1000, NULL, &br), 2);
    assert_int_equal(br, GW_PREQUAL_COLD);
    assert_true(st(p)->rif_threshold == GW_PREQUAL_THR_INF);
    /* Even a huge RIF stays cold. */
    probe(p, 0, UINT32_MAX, 1, 1000);
    assert_int_equal(pick(p, 1000, NULL, &br), 0);
    assert_int_equal(br, GW_PREQUAL_COLD);
    gw_prequal_free(p);
}

static void test_quantile_nearest_rank(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    gw_prequal_t *p = mk(&pp, 5);
    assert_true(thr(p, 0) == GW_PREQUAL_THR_INF); /* no report yet */
    probe(p, 0, 7, 1, 0);
    assert_int_equal(thr(p, 0), 7); /* one backend */
    const uint32_t v[] = {50, 10, 40, 20, 30};
    for (uint32_t i = 0; i < GW_ARRAY_LEN(v); i++)
        probe(p, i, v[i], 1, 0);
    /* sorted [10, 20, 30, 40, 50]; floor(0.84 * 4) = 3 -> 40 */
    assert_int_equal(thr(p, 0), 40);
    /* A backend's new report replaces its old one: [1, 10, 20, 30, 40] -> 30. However often one
     * backend reports, it has one voice. */
    for (int i = 0; i < 100; i++)
        probe(p, 0, 1, 1, 0);
    assert_int_equal(thr(p, 0), 30);
    /* Reports are corrected like entries: 100 more in flight to backend 1 -> [1, 20, 30, 40, 110].
     */
    g_load[1].inflight = 100;
    assert_int_equal(thr(p, 0), 40);
    /* Reports older than max_age_ms do not count. */
    probe(p, 2, 5, 1, 900);
    assert_int_equal(thr(p, 1001), 5);
    assert_true(thr(p, 1901) == GW_PREQUAL_THR_INF);
    gw_prequal_free(p);
}
static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* The incrementally sorted history agrees with sorting a copy, duplicates and wraparound
 * included, for several quantiles. */
/* The quickselect agrees with sorting the latest report of each backend, duplicates included,
 * for several quantiles. */
static void test_quantile_matches_sort(void **state)
{
    GW_UNUSED(state);
    const double qs[] = {0.0, 0.3, 0.5, 0.84, 0.99};
    enum { NB = 9 };
    for (size_t qi = 0; qi < GW_ARRAY_LEN(qs); qi++) {
        gw_prequal_params_t pp = defaults();
        pp.q_rif = qs[qi];
        gw_prequal_t *p = mk(&pp, NB);
        uint32_t latest[NB];
        bool have[NB] = {false};
        uint64_t rng = SEED + qi;
        for (size_t i = 0; i < 3000; i++) {
            uint32_t b = gw_rand_below(&rng, NB);
            latest[b] = gw_rand_below(&rng, i < 1500 ? 4 : 1000);
            have[b] = true;
            probe(p, b, latest[b], 1, 0);
            uint32_t copy[NB], k = 0;
            for (uint32_t j = 0; j < NB; j++)
                if (have[j])
                    copy[k++] = latest[j];
            qsort(copy, k, sizeof(uint32_t), cmp_u32);
            assert_int_equal(thr(p, 0), copy[(size_t)floor(qs[qi] * (double)(k - 1))]);
        }
        gw_prequal_free(p);
    }
}
static void test_reuse_budget_eq1(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults(); /* m=16, r_probe=3, r_remove=1, δ=1 */
    double b = gw_prequal_reuse_budget(&pp, 100);
    assert_true(fabs(b - 1.316) < 0.0005);
    assert_true(fabs(b - 2.0 / 1.52) < 1e-12);
    /* The wrong grouping 1 + δ/(…) would give 1.658. */
    double wrong = 1.0 + 1.0 / ((1.0 - 16.0 / 100.0) * 3.0 - 1.0);
    assert_true(fabs(wrong - 1.658) < 0.0005);
    assert_true(fabs(b - wrong) > 0.3);
    /* n = 30: (1 − 16/30)·3 − 1 = 0.4 -> 5. */
    assert_true(fabs(gw_prequal_reuse_budget(&pp, 30) - 5.0) < 1e-9);
    /* n = 25: 2 / 0.08 = 25, capped at max_reuse. */
    assert_true(gw_prequal_reuse_budget(&pp, 25) == 16.0);
    /* max{1, …}: many probes per request make the quotient tiny. */
    pp.probes_per_request = 16;
    pp.delta = 0;
    assert_true(gw_prequal_reuse_budget(&pp, 1000) == 1.0);
}

static void test_reuse_budget_nonpositive_denominator(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    /* With defaults the denominator is (1 − 16/n)·3 − 1 <= 0 for every n <= 24. */
    for (size_t n = 0; n <= 24; n++)
        assert_true(gw_prequal_reuse_budget(&pp, n) == 16.0);
    pp.max_reuse = 7;
    assert_true(gw_prequal_reuse_budget(&pp, 24) == 7.0);
    pp.probes_per_request = 0; /* no probing at all: the denominator is −r_remove */
    assert_true(gw_prequal_reuse_budget(&pp, 1000) == 7.0);
}

static void test_random_rounding_mean(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    gw_prequal_t *p = mk(&pp, 1);
    uint64_t rng = SEED;
    const double b = gw_prequal_reuse_budget(&pp, 100);
    const int draws = 100000;
    uint64_t sum = 0, ones = 0;
    for (int i = 0; i < draws; i++) {
        gw_prequal_on_probe(p, 0, 1, 1, 0, 100, &rng);
        gw_prequal_entry_info_t e;
        assert_true(entry_of(p, 0, 0, &e));
        assert_true(e.uses_left == 1 || e.uses_left == 2); /* floor or ceil only */
        sum += e.uses_left;
        ones += e.uses_left == 1;
    }
    double mean = (double)sum / draws;
    assert_true(fabs(mean - b) / b < 0.005);
    assert_true(ones > 0 && ones < (uint64_t)draws);
    assert_int_equal(st(p)->probes[GW_PREQUAL_PROBE_STAT_OK], draws);
    gw_prequal_free(p);
}

/* ---- fractional rates ---- */

static void test_fractional_rates(void **state)
{
    GW_UNUSED(state);
    const struct {
        double rate;
        uint32_t expect[6];
    } cases[] = {
        {0.5, {0, 1, 0, 1, 0, 1}}, {1.5, {1, 2, 1, 2, 1, 2}},  {3.0, {3, 3, 3, 3, 3, 3}},
        {0.0, {0, 0, 0, 0, 0, 0}}, {0.25, {0, 0, 0, 1, 0, 0}},
    };
    for (size_t c = 0; c < GW_ARRAY_LEN(cases); c++) {
        gw_prequal_params_t pp = defaults();
        pp.probes_per_request = cases[c].rate;
        gw_prequal_t *p = mk(&pp, 4);
        for (size_t i = 0; i < 6; i++)
            assert_int_equal(gw_prequal_probes_for_request(p), cases[c].expect[i]);
        gw_prequal_free(p);
    }
    /* The long-run mean is exact. */
    gw_prequal_params_t pp = defaults();
    pp.probes_per_request = 0.25;
    gw_prequal_t *p = mk(&pp, 4);
    uint32_t total = 0;
    for (int i = 0; i < 1000; i++)
        total += gw_prequal_probes_for_request(p);
    assert_int_equal(total, 250);
    gw_prequal_free(p);
}

static void test_fractional_removal_rate(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.removes_per_request = 0.5;
    pp.q_rif = 1.0;
    gw_prequal_t *p = mk(&pp, 16);
    for (uint32_t b = 0; b < 8; b++)
        probe(p, b, 0, 100 + b, 1000 + b);
    gw_prequal_branch_t br;
    const uint64_t expect_removed[] = {0, 1, 1, 2, 2, 3};
    for (size_t i = 0; i < GW_ARRAY_LEN(expect_removed); i++) {
        probe(p, 8 + (uint32_t)i, 0, 900, 1000); /* inflow: a new entry before every pick */
        assert_true(pick(p, 1010, NULL, &br) >= 0);
        uint64_t removed =
            st(p)->removals[GW_PREQUAL_RM_OLDEST] + st(p)->removals[GW_PREQUAL_RM_WORST];
        assert_int_equal(removed, expect_removed[i]);
    }
    gw_prequal_free(p);
}

/* ---- pool maintenance ---- */

static void test_alternating_removal(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.q_rif = 1.0; /* all cold: worst = highest latency */
    /* Each request completes before the next (done()), and the cost estimates do not decay
     * over these 400 ms, so the predicted latencies keep the reported order. */
    pp.latency_smoothing_ms = 60000;
    gw_prequal_t *p = mk(&pp, 8);
    probe(p, 0, 0, 400, 100);
    probe(p, 1, 0, 100, 200);
    probe(p, 2, 0, 300, 300);
    probe(p, 3, 0, 200, 400);
    probe(p, 4, 0, 500, 500);
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 500, NULL, &br), 1); /* then the oldest goes: 0 */
    done(1);
    assert_false(in_pool(p, 0));
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_OLDEST], 1);
    probe(p, 5, 0, 150, 500); /* each removal needs a new entry since the last one */
    assert_int_equal(pick(p, 500, NULL, &br), 1); /* then the worst goes: 4 (500 µs) */
    done(1);
    assert_false(in_pool(p, 4));
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_WORST], 1);
    probe(p, 6, 0, 150, 500);
    assert_int_equal(pick(p, 500, NULL, &br), 1); /* then the oldest: 1 itself (t=200) */
    done(1);
    assert_false(in_pool(p, 1));
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_OLDEST], 2);
    probe(p, 7, 0, 150, 500);
    assert_int_equal(pick(p, 500, NULL, &br), 5); /* then the worst: 2 (300 µs) */
    done(5);
    assert_false(in_pool(p, 2));
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_WORST], 2);
    assert_int_equal(st(p)->pool_entries, 4); /* 3, 5, 6, 7 */
    gw_prequal_free(p);
}

/* With n <= pool_size, requests without new replies do not drain the pool: removals are bounded
 * by the inflow of new entries (and a reply that replaces an entry is no inflow). */
static void test_removal_bounded_by_inflow(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults(); /* r_remove = 1 */
    pp.q_rif = 1.0;
    gw_prequal_t *p = mk(&pp, 5);
    for (uint32_t b = 0; b < 5; b++)
        probe(p, b, 0, 100 * (b + 1), 100);
    gw_prequal_branch_t br;
    for (int i = 0; i < 10; i++) { /* fewer than max_reuse: no entry wears out */
        assert_true(pick(p, 100, NULL, &br) >= 0);
        probe(p, 2, 0, 300, 100); /* replaces: no inflow */
    }
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_OLDEST] + st(p)->removals[GW_PREQUAL_RM_WORST],
                     1); /* credit for one: the cap, ceil(r_remove) */
    assert_int_equal(st(p)->pool_entries, 4);
    assert_int_equal(st(p)->picks[GW_PREQUAL_FALLBACK], 0);
    /* The removed backend answers again: one more removal may run. */
    probe(p, 0, 0, 100, 100);
    assert_true(pick(p, 100, NULL, &br) >= 0);
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_OLDEST] + st(p)->removals[GW_PREQUAL_RM_WORST],
                     2);
    assert_int_equal(st(p)->pool_entries, 4);
    gw_prequal_free(p);
}

static void test_worst_prefers_hot(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.q_rif = 0.0;
    pp.removes_per_request = 2; /* oldest then worst in the same request */
    gw_prequal_t *p = mk(&pp, 4);
    probe(p, 3, 0, 1, 100);
    probe(p, 0, 5, 10, 200);
    probe(p, 1, 7, 20, 300);
    probe(p, 2, 0, 999, 400); /* cold but slowest */
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 400, NULL, &br), 3);
    /* Oldest: 3. Worst: a hot entry exists, so the hot one with the highest RIF (1), not the
     * slowest (2). */
    assert_false(in_pool(p, 3));
    assert_false(in_pool(p, 1));
    assert_true(in_pool(p, 0));
    assert_true(in_pool(p, 2));
    gw_prequal_free(p);
}

static void test_expiry(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.removes_per_request = 0;
    pp.q_rif = 1.0;
    gw_prequal_t *p = mk(&pp, 3);
    probe(p, 0, 0, 10, 1000);
    probe(p, 1, 0, 20, 1500);
    probe(p, 2, 0, 30, 1500);
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 2000, NULL, &br), 0); /* age 1000 is not older than max_age */
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_AGE], 0);
    assert_int_equal(pick(p, 2001, NULL, &br), 1); /* age 1001: dropped */
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_AGE], 1);
    assert_false(in_pool(p, 0));
    assert_int_equal(pick(p, 2501, NULL, &br), 2); /* empty: fewest in flight (0 and 1 sent) */
    assert_int_equal(br, GW_PREQUAL_FALLBACK);
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_AGE], 3);
    assert_int_equal(st(p)->pool_entries, 0);
    gw_prequal_free(p);
}

static void test_fallback_under_two(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    gw_prequal_t *p = mk(&pp, 3);
    gw_prequal_branch_t br = GW_PREQUAL_COLD;
    /* Empty pool: the fewest in flight (the gateway's own count, every worker). */
    g_load[0].inflight = 2;
    g_load[1].inflight = 1;
    g_load[2].inflight = 3;
    assert_int_equal(pick(p, 0, NULL, &br), 1);
    assert_int_equal(br, GW_PREQUAL_FALLBACK);
    /* A lone entry is not a choice, even a cold one, and is not consumed. */
    probe(p, 2, 0, 10, 0);
    br = GW_PREQUAL_COLD;
    g_load[0].inflight = 1;
    assert_int_equal(pick(p, 0, NULL, &br), 0); /* 0 at 1, 1 at 2, 2 at 3 */
    assert_int_equal(br, GW_PREQUAL_FALLBACK);
    assert_true(in_pool(p, 2));
    probe(p, 1, 0, 20, 0);
    assert_int_equal(pick(p, 0, NULL, &br), 2); /* the pool decides again */
    assert_int_equal(br, GW_PREQUAL_COLD);
    assert_int_equal(st(p)->picks[GW_PREQUAL_FALLBACK], 2);
    assert_int_equal(st(p)->picks[GW_PREQUAL_COLD], 1);
    /* Every backend tried: -1. */
    uint64_t tried[1] = {7};
    assert_int_equal(pick(p, 0, tried, &br), -1);
    assert_int_equal(br, GW_PREQUAL_FALLBACK);
    gw_prequal_free(p);
}

/* The fallback's ties go uniformly at random. */
static void test_fallback_ties_random(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    gw_prequal_t *p = mk(&pp, 4);
    uint64_t rng = SEED;
    unsigned count[4] = {0};
    gw_prequal_load_t load[4] = {
        {.inflight = 1}, {.inflight = 0}, {.inflight = 0}, {.inflight = 0}};
    uint64_t tried[1] = {1u << 3};
    gw_prequal_branch_t br;
    for (int i = 0; i < 3000; i++)
        count[gw_prequal_pick(p, 0, tried, load, &rng, &br)]++;
    assert_int_equal(count[0] + count[3], 0);
    assert_in_range(count[1], 1350, 1650); /* 1500 ± 5.5 sd */
    assert_in_range(count[2], 1350, 1650);
    gw_prequal_free(p);
}

static void test_tried_excluded(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.removes_per_request = 0;
    pp.q_rif = 1.0;
    gw_prequal_t *p = mk(&pp, 70); /* more than 64: the bitset has two words */
    probe(p, 3, 0, 10, 0);
    probe(p, 69, 0, 5, 0);
    probe(p, 40, 0, 20, 0);
    uint64_t tried[2] = {0, 0};
    gw_prequal_branch_t br;
    tried[69 / 64] |= (uint64_t)1 << (69 % 64);
    assert_int_equal(pick(p, 0, tried, &br), 3);
    tried[0] |= (uint64_t)1 << 3;
    int b = pick(p, 0, tried, &br); /* only 40 usable: the fallback, never a tried one */
    assert_int_equal(br, GW_PREQUAL_FALLBACK);
    assert_true(b >= 0 && b != 3 && b != 69);
    assert_int_equal(pick(p, 0, NULL, &br), 69);
    gw_prequal_free(p);
}

/* Effective RIF: probed RIF + requests sent since the probe went out − requests completed since,
 * by every worker, at least 0. */
static void test_effective_rif(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.q_rif = 0.0;
    pp.removes_per_request = 0;
    gw_prequal_t *p = mk(&pp, 2);
    probe(p, 0, 1, 100, 0);
    probe(p, 1, 1, 200, 0);
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 0, NULL, &br), 0);
    gw_prequal_entry_info_t e;
    assert_true(entry_of(p, 0, 0, &e));
    assert_int_equal(e.rif, 1);        /* the probed RIF is kept as reported */
    assert_int_equal(e.uses_left, 15); /* budget 16 (n <= 24) minus one */
    /* Backend 0 is now at 2 > thr 1 (hot), so the slower but cold backend 1 wins. */
    assert_int_equal(pick(p, 0, NULL, &br), 1);
    assert_int_equal(br, GW_PREQUAL_COLD);
    /* Both at 2; 0 completes one (back to 1): cold again, and faster. */
    done(0);
    assert_int_equal(pick(p, 0, NULL, &br), 0);
    assert_int_equal(br, GW_PREQUAL_COLD);
    /* Another worker sends two requests to backend 0: it counts too (the counters are shared). */
    g_load[0].inflight += 2;
    assert_int_equal(pick(p, 0, NULL, &br), 1); /* 0 at 4, 1 at 2 */
    /* Completions of requests that were in flight before the probe went out are in the probed
     * RIF; the effective RIF never goes below 0. */
    g_load[1].inflight = 5;
    probe(p, 1, 2, 200, 0); /* base 5 */
    g_load[1].inflight = 0;
    g_load[0].inflight = 0;
    probe(p, 0, 3, 100, 0);                     /* base 0: hot at 3 */
    assert_int_equal(pick(p, 0, NULL, &br), 1); /* cold at max(0, 2 + 0 − 5) = 0 */
    assert_int_equal(br, GW_PREQUAL_COLD);
    gw_prequal_free(p);
}

/* The latency compared is a prediction for a request sent now: the backend's cost per queued
 * request × (effective RIF + 1). The cost is the ratio of its decayed sums of reported latency
 * and (RIF + 1), with the median backend's cost as a prior worth one report at RIF 0
 * (docs/PREQUAL.md §3.5). */
static void test_predicted_latency(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.q_rif = 1.0;
    pp.removes_per_request = 0;
    gw_prequal_t *p = mk(&pp, 3);
    probe(p, 0, 0, 1000, 0); /* ratio 1000 */
    probe(p, 1, 4, 2500, 0); /* ratio 500; the prior is the median of 500 and 1000: 1000 */
    /* cost 0 = (1000 + 1000) / (1 + 1) = 1000; cost 1 = (2500 + 1000) / (5 + 1) = 583 */
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 0, NULL, &br), 0); /* 1000 < 583 × 5 = 2916 */
    assert_int_equal(pick(p, 0, NULL, &br), 0); /* 2000 < 2916 */
    assert_int_equal(pick(p, 0, NULL, &br), 1); /* 3000 > 2916: the reported 1000 no longer holds */
    assert_int_equal(pick(p, 0, NULL, &br), 0); /* 3000 < 583 × 6 = 3498 */
    done(0);
    done(0);
    done(0);
    assert_int_equal(pick(p, 0, NULL, &br), 0); /* completions lower it again */
    /* A reported latency of 0 (no recent sample at that RIF) teaches nothing: the backend is
     * valued at the prior, the median backend's cost (1000), not as free. */
    probe(p, 2, 3, 0, 0); /* eff 3: 1000 × 4 = 4000 */
    assert_int_equal(pick(p, 0, NULL, &br), 0); /* 0 at eff 1: 2000 */
    probe(p, 2, 0, 0, 0); /* eff 0: 1000, while 0 predicts 3000 and 1 3498 */
    assert_int_equal(pick(p, 0, NULL, &br), 2);
    gw_prequal_free(p);
}

/* The bias that per-report costs had (docs/PREQUAL.md §3.5): a backend's latency estimate at
 * RIF r is a median over r-1..r+1, so at RIF 0 it includes requests that queued behind one
 * and a one-at-a-time backend reports ~3 ms at RIF 0 and ~3.2 ms at RIF 1. Dividing the latest
 * report by (RIF + 1) made an idle backend that last reported RIF 0 look twice as costly as a
 * busy one that reported RIF 1, and a quarter of the picks went to a backend with a request in
 * flight while another was idle. Summed over reports, equal backends get equal costs. */
static void test_cost_summed_over_reports(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.removes_per_request = 0;
    gw_prequal_t *p = mk(&pp, 2);
    for (uint64_t t = 0; t < 100; t += 2) {
        probe(p, 0, 0, 3000, t);
        probe(p, 1, 1, 3200, t);
        probe(p, 0, 1, 3200, t + 1);
        probe(p, 1, 0, 3000, t + 1);
    }
    /* The latest reports: backend 0 at RIF 1 (3200 / 2 per report), backend 1 at RIF 0 (3000 /
     * 1), both with base 0. A request to backend 0 completes since its probe (eff 0), one is in
     * flight to backend 1 (eff 1). Per report 0 predicted 1600 and 1 6000; summed, one cost
     * against two of the same size. */
    probe(p, 0, 1, 3200, 100);
    probe(p, 1, 0, 3000, 100);
    g_load[1].inflight = 1;
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 100, NULL, &br), 0);
    /* The other way round: 0 now at eff 2, 1 at eff 1. Per report 0 predicted 1600 × 3 = 4800
     * against 1's 6000, and queued a second request behind 0's; summed, 1 is the lower. */
    assert_int_equal(pick(p, 100, NULL, &br), 1);
    gw_prequal_free(p);
}

/* A slower backend keeps its cost while it reports, and goes back to the median backend's cost
 * when it stops reporting latencies (it gets no requests, so its samples age out and it reports
 * 0): without that it would keep the cost of its slow phase and never get a request to show
 * that it recovered. */
static void test_stale_cost_returns_to_prior(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.removes_per_request = 0;
    pp.q_rif = 1.0;
    gw_prequal_t *p = mk(&pp, 3);
    for (uint64_t t = 0; t <= 100; t++) {
        probe(p, 0, 0, 2000, t);
        probe(p, 1, 0, 2000, t);
        probe(p, 2, 0, 20000, t); /* 10× slower */
    }
    g_load[0].inflight = 3; /* eff 3: 8000 */
    g_load[1].inflight = 3;
    gw_prequal_branch_t br;
    assert_int_not_equal(pick(p, 100, NULL, &br), 2); /* 2 predicts ~20000 at eff 0 */
    for (uint64_t t = 101; t <= 900; t++) {
        probe(p, 0, 3, 8000, t);
        probe(p, 1, 3, 8000, t);
        probe(p, 2, 0, 0, t); /* no samples any more */
    }
    g_load[0].inflight = 3;
    g_load[1].inflight = 3;
    assert_int_equal(pick(p, 900, NULL, &br), 2); /* back at ~2000: the idle one wins */
    gw_prequal_free(p);
}

/* A probe timeout drops the backend's entry (reason silence): a backend that stopped answering
 * is not chosen from what it said before. It does not count against the mode machine. */
static void test_probe_timeout_drops_entry(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.q_rif = 1.0;
    pp.removes_per_request = 0;
    gw_prequal_t *p = mk(&pp, 3);
    probe(p, 0, 0, 100, 0); /* the fastest */
    probe(p, 1, 0, 1000, 0);
    probe(p, 2, 0, 2000, 0);
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 0, NULL, &br), 0);
    done(0);
    gw_prequal_probe_sent(p, 0, 10, g_load[0].inflight);
    gw_prequal_on_probe_result(p, 0, GW_PREQUAL_PROBE_TIMED_OUT, 60);
    assert_false(in_pool(p, 0));
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_SILENCE], 1);
    assert_int_equal(gw_prequal_mode(p, 0), GW_PREQUAL_MODE_PROBE);
    assert_int_equal(pick(p, 60, NULL, &br), 1);
    assert_int_equal(br, GW_PREQUAL_COLD);
    /* A timeout without an entry drops nothing more. */
    gw_prequal_on_probe_result(p, 0, GW_PREQUAL_PROBE_TIMED_OUT, 70);
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_SILENCE], 1);
    /* It answers again: back in the pool. */
    uint64_t rng = SEED;
    gw_prequal_on_probe(p, 0, 0, 100, 80, 5, &rng);
    assert_int_equal(pick(p, 80, NULL, &br), 0);
    gw_prequal_free(p);
}

static void test_one_entry_per_backend(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.q_rif = 0.5;
    gw_prequal_t *p = mk(&pp, 2);
    probe(p, 0, 1, 100, 10);
    probe(p, 0, 9, 300, 20);
    probe(p, 0, 4, 200, 30);
    assert_int_equal(st(p)->pool_entries, 1);
    gw_prequal_entry_info_t e;
    assert_true(entry_of(p, 0, 40, &e));
    assert_int_equal(e.rif, 4);
    assert_int_equal(e.latency_us, 200);
    assert_int_equal(e.age_ms, 10);
    /* Only the latest report of a backend counts. */
    assert_int_equal(thr(p, 40), 4);
    for (int r = 0; r < GW_PREQUAL_REASON_COUNT; r++)
        assert_int_equal(st(p)->removals[r], 0);
    gw_prequal_free(p);
}

static void test_uses_never_exceed_budget(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.removes_per_request = 0;
    pp.q_rif = 1.0;
    gw_prequal_t *p = mk(&pp, 3);
    uint64_t rng = SEED;
    uint64_t reuse_removals = 0;
    for (int round = 0; round < 2000; round++) {
        uint32_t uses[3], picks[3] = {0, 0, 0};
        for (uint32_t b = 0; b < 3; b++) {
            gw_prequal_on_probe(p, b, 0, 100, 0, 100, &rng); /* budget 1.316 */
            gw_prequal_entry_info_t e;
            assert_true(entry_of(p, b, 0, &e));
            uses[b] = e.uses_left;
            assert_true(uses[b] >= 1 && uses[b] <= 2);
        }
        gw_prequal_branch_t br;
        int got;
        while ((got = pick(p, 0, NULL, &br)) >= 0 && br != GW_PREQUAL_FALLBACK)
            picks[got]++;
        for (uint32_t b = 0; b < 3; b++) {
            assert_true(picks[b] <= uses[b]);
            if (!in_pool(p, b)) {
                assert_int_equal(picks[b], uses[b]);
                reuse_removals++;
            }
        }
        assert_int_equal(st(p)->removals[GW_PREQUAL_RM_REUSE], reuse_removals);
    }
    gw_prequal_free(p);

    /* A budget of exactly max_reuse: 16 uses, then removal (reason reuse). */
    p = mk(&pp, 2);
    probe(p, 0, 0, 10, 0);
    probe(p, 1, 0, 20, 0);
    gw_prequal_branch_t br;
    for (int i = 0; i < 16; i++) {
        assert_int_equal(pick(p, 0, NULL, &br), 0);
        done(0);
    }
    assert_false(in_pool(p, 0));
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_REUSE], 1);
    pick(p, 0, NULL, &br);
    assert_int_equal(br, GW_PREQUAL_FALLBACK);
    gw_prequal_free(p);
}

static void test_capacity_evicts_oldest(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.pool_size = 3;
    gw_prequal_t *p = mk(&pp, 5);
    probe(p, 0, 0, 1, 10);
    probe(p, 1, 0, 1, 20);
    probe(p, 2, 0, 1, 30);
    probe(p, 1, 0, 1, 35); /* full, but a replacement evicts nothing */
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_CAPACITY], 0);
    probe(p, 3, 0, 1, 40);
    assert_false(in_pool(p, 0));
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_CAPACITY], 1);
    probe(p, 4, 0, 1, 40); /* 2 (t=30) is now the oldest, not 1 (re-probed at 35) */
    assert_false(in_pool(p, 2));
    assert_true(in_pool(p, 1));
    assert_true(in_pool(p, 3));
    assert_true(in_pool(p, 4));
    assert_int_equal(st(p)->pool_entries, 3);
    gw_prequal_free(p);

    /* Equal receipt times: the earliest inserted goes. */
    pp.pool_size = 2;
    p = mk(&pp, 3);
    probe(p, 1, 0, 1, 10);
    probe(p, 0, 0, 1, 10);
    probe(p, 2, 0, 1, 10);
    assert_false(in_pool(p, 1));
    assert_true(in_pool(p, 0));
    gw_prequal_free(p);
}

/* The default pool has room for every backend, and follows membership changes; an explicit
 * pool_size is the paper's cap. */
static void test_pool_holds_every_backend(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    gw_prequal_t *p = mk(&pp, 32);
    for (uint32_t b = 0; b < 32; b++)
        probe(p, b, 0, 100, 10);
    assert_int_equal(st(p)->pool_entries, 32);
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_CAPACITY], 0);
    assert_int_equal(gw_prequal_resize(p, 40), 0); /* the pool grows with the upstream ... */
    for (uint32_t b = 32; b < 40; b++)
        probe(p, b, 0, 100, 20);
    assert_int_equal(st(p)->pool_entries, 40);
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_CAPACITY], 0);
    assert_int_equal(gw_prequal_resize(p, 20), 0); /* ... and shrinks with it, keeping entries */
    assert_int_equal(st(p)->pool_entries, 20);
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_MEMBERSHIP], 20);
    for (uint32_t b = 0; b < 20; b++)
        assert_true(in_pool(p, b));
    probe(p, 19, 0, 100, 30);
    assert_int_equal(st(p)->pool_entries, 20);
    gw_prequal_free(p);

    /* One backend's entry, in O(1) and without a cap: a Lua view of 100 backends reads each
     * one's, where /status's copy of the pool stops at GW_PQ_SNAPSHOT_MAX (64). */
    p = mk(&pp, 100);
    for (uint32_t b = 0; b < 99; b++)
        probe(p, b, b % 7, 100 + b, 10);
    gw_prequal_entry_info_t e;
    assert_true(gw_prequal_entry_info(p, 98, 25, &e));
    assert_int_equal(e.backend, 98);
    assert_int_equal(e.rif, 98 % 7);
    assert_int_equal(e.latency_us, 198);
    assert_int_equal(e.age_ms, 15);
    assert_false(gw_prequal_entry_info(p, 99, 25, &e));  /* never probed */
    assert_false(gw_prequal_entry_info(p, 100, 25, &e)); /* out of range */
    gw_prequal_free(p);

    pp.pool_size = 16;
    p = mk(&pp, 32);
    for (uint32_t b = 0; b < 32; b++)
        probe(p, b, 0, 100, 10 + b);
    assert_int_equal(st(p)->pool_entries, 16);
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_CAPACITY], 16);
    assert_false(in_pool(p, 15)); /* the oldest went */
    assert_true(in_pool(p, 16));
    gw_prequal_free(p);

    /* Eq. 1 is sized for the paper's pool of 16 when pool_size is 0. */
    pp = defaults();
    double auto_b = gw_prequal_reuse_budget(&pp, 32);
    pp.pool_size = 16;
    assert_true(gw_prequal_reuse_budget(&pp, 32) == auto_b);
    assert_true(fabs(auto_b - 4.0) < 1e-9); /* 2 / ((1 − 16/32)·3 − 1) */
    pp.pool_size = 24;
    assert_true(gw_prequal_reuse_budget(&pp, 32) == 16.0); /* 2 / (0.75 − 1) < 0: the cap */
}

/* ---- probing ---- */

static void test_probe_targets_distinct(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    gw_prequal_t *p = mk(&pp, 10);
    bool elig[10];
    for (int i = 0; i < 10; i++)
        elig[i] = i != 3 && i != 7;
    uint64_t rng = SEED;
    uint32_t out[16];
    for (int round = 0; round < 1000; round++) {
        size_t got = gw_prequal_choose_probe_targets(p, elig, 10, 5, &rng, out);
        assert_int_equal(got, 5);
        for (size_t i = 0; i < got; i++) {
            assert_true(out[i] < 10 && elig[out[i]]);
            for (size_t j = 0; j < i; j++)
                assert_int_not_equal(out[i], out[j]);
        }
    }
    /* More wanted than eligible: each eligible once. */
    size_t got = gw_prequal_choose_probe_targets(p, elig, 10, 16, &rng, out);
    assert_int_equal(got, 8);
    uint32_t seen = 0;
    for (size_t i = 0; i < got; i++)
        seen |= 1u << out[i];
    assert_int_equal(seen, 0x3FFu & ~((1u << 3) | (1u << 7)));
    assert_int_equal(gw_prequal_choose_probe_targets(p, elig, 10, 0, &rng, out), 0);
    bool none[10] = {false};
    assert_int_equal(gw_prequal_choose_probe_targets(p, none, 10, 3, &rng, out), 0);
    /* n beyond the upstream's size is clamped. */
    bool big[20];
    for (int i = 0; i < 20; i++)
        big[i] = i >= 10;
    assert_int_equal(gw_prequal_choose_probe_targets(p, big, 20, 3, &rng, out), 0);
    gw_prequal_free(p);
}

static void test_probe_targets_uniform(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    gw_prequal_t *p = mk(&pp, 10);
    bool elig[10];
    for (int i = 0; i < 10; i++)
        elig[i] = i != 3 && i != 7;
    uint64_t rng = SEED;
    uint32_t out[3];
    uint64_t count[10] = {0}, first[10] = {0};
    const int draws = 200000;
    for (int d = 0; d < draws; d++) {
        size_t got = gw_prequal_choose_probe_targets(p, elig, 10, 3, &rng, out);
        assert_int_equal(got, 3);
        for (size_t i = 0; i < got; i++)
            count[out[i]]++;
        first[out[0]]++;
    }
    for (int i = 0; i < 10; i++) {
        if (!elig[i]) {
            assert_int_equal(count[i], 0);
            continue;
        }
        double f = (double)count[i] / draws;
        assert_true(fabs(f - 3.0 / 8.0) / (3.0 / 8.0) < 0.02);
        double f1 = (double)first[i] / draws; /* every position is uniform too */
        assert_true(fabs(f1 - 1.0 / 8.0) / (1.0 / 8.0) < 0.03);
    }
    gw_prequal_free(p);
}

/* The probe budget: a token bucket per backend, probe_rate per second, GW_PREQUAL_PROBE_BURST
 * deep; explicit probes and piggybacked signals spend it. */
static void test_probe_budget(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.probe_rate = 100; /* one token per 10 ms */
    gw_prequal_t *p = mk(&pp, 2);
    assert_true(gw_prequal_probe_allowed(p, 0, 1000)); /* starts full: 2 */
    gw_prequal_probe_sent(p, 0, 1000, 0);
    assert_true(gw_prequal_probe_allowed(p, 0, 1000));
    gw_prequal_probe_sent(p, 0, 1000, 0);
    assert_false(gw_prequal_probe_allowed(p, 0, 1000)); /* spent */
    assert_false(gw_prequal_probe_allowed(p, 0, 1009));
    assert_true(gw_prequal_probe_allowed(p, 0, 1010)); /* 1 token after 10 ms */
    assert_true(gw_prequal_probe_allowed(p, 1, 1010)); /* per backend */
    /* Piggybacked signals spend the same budget. */
    uint64_t rng = SEED;
    gw_prequal_on_piggyback(p, 0, 1, 100, 1010, 0, 2, &rng);
    assert_false(gw_prequal_probe_allowed(p, 0, 1010));
    /* The bucket holds at most 2 tokens, however long it was idle. */
    assert_true(gw_prequal_probe_allowed(p, 0, 60000));
    gw_prequal_probe_sent(p, 0, 60000, 0);
    gw_prequal_probe_sent(p, 0, 60000, 0);
    assert_false(gw_prequal_probe_allowed(p, 0, 60000));
    assert_false(gw_prequal_probe_allowed(p, 7, 60000)); /* out of range */
    gw_prequal_free(p);
}

/* Probing with spare time (docs/PREQUAL.md §3.1): a request's probes scale with the idle
 * fraction of the worker's loop, measured over windows of GW_PREQUAL_SPARE_WINDOW_MS. */
static uint32_t probes_for(gw_prequal_t *p, int requests)
{
    uint32_t total = 0;
    for (int i = 0; i < requests; i++)
        total += gw_prequal_probes_for_request(p);
    return total;
}

static void test_spare_scales_probes(void **state)
{
    GW_UNUSED(state);
    const uint64_t ms = 1000000;         /* ns */
    gw_prequal_params_t pp = defaults(); /* r_probe = 3 */
    gw_prequal_t *p = mk(&pp, 8);
    assert_true(gw_prequal_spare(p) == 1.0); /* full rate until measured */
    assert_int_equal(probes_for(p, 100), 300);
    gw_prequal_loop_idle(p, 1000, 7 * ms); /* starts the first window */
    assert_true(gw_prequal_spare(p) == 1.0);
    gw_prequal_loop_idle(p, 1099, 7 * ms); /* busy, but the window is not over */
    assert_true(gw_prequal_spare(p) == 1.0);
    gw_prequal_loop_idle(p, 1100, 57 * ms); /* 50 ms idle of 100: still the full rate */
    assert_true(fabs(gw_prequal_spare(p) - 0.5) < 1e-9);
    assert_int_equal(probes_for(p, 100), 300);
    gw_prequal_loop_idle(p, 1200, 82 * ms); /* 25 ms idle of 100: half the rate */
    assert_true(fabs(gw_prequal_spare(p) - 0.25) < 1e-9);
    assert_int_equal(probes_for(p, 100), 150);
    gw_prequal_loop_idle(p, 1300, 182 * ms); /* idle the whole 100 ms */
    assert_true(gw_prequal_spare(p) == 1.0);
    assert_int_equal(probes_for(p, 100), 300);
    gw_prequal_loop_idle(p, 1400, 182 * ms); /* no idle time at all: no request-driven probes */
    assert_true(gw_prequal_spare(p) == 0.0);
    assert_int_equal(probes_for(p, 100), 0);
    gw_prequal_loop_idle(p, 1500, 400 * ms); /* more idle than wall time (clock steps): 1 */
    assert_true(gw_prequal_spare(p) == 1.0);
    gw_prequal_loop_idle(p, 1600, 100 * ms); /* a counter that went back: kept, new window */
    assert_true(gw_prequal_spare(p) == 1.0);
    gw_prequal_loop_idle(p, 1700, 140 * ms); /* 40 ms idle of 100 */
    assert_true(fabs(gw_prequal_spare(p) - 0.4) < 1e-9);
    assert_int_equal(probes_for(p, 1000), 2400);
    /* The idle tick's probes do not depend on it. */
    assert_int_equal(gw_prequal_idle_probes(p), 3);
    gw_prequal_free(p);
}

static void test_idle_probe(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.removes_per_request = 0;
    gw_prequal_t *p = mk(&pp, 3);
    assert_int_equal(gw_prequal_idle_probes(p), 3);
    assert_true(gw_prequal_idle_probe_due(p, 0)); /* empty pool, no request yet */
    probe(p, 0, 0, 1, 0);
    probe(p, 1, 0, 1, 0);
    probe(p, 2, 0, 1, 0);
    assert_true(gw_prequal_idle_probe_due(p, 10)); /* no request ever */
    gw_prequal_branch_t br;
    assert_true(pick(p, 100, NULL, &br) >= 0);
    assert_false(gw_prequal_idle_probe_due(p, 100));
    assert_false(gw_prequal_idle_probe_due(p, 349));
    assert_true(gw_prequal_idle_probe_due(p, 350)); /* idle for 250 ms */
    assert_true(pick(p, 400, NULL, &br) >= 0);
    assert_false(gw_prequal_idle_probe_due(p, 401));
    /* A pool under 2 entries. */
    assert_true(gw_prequal_purge(p, 0, GW_PREQUAL_RM_FAILURE));
    assert_false(gw_prequal_idle_probe_due(p, 402));
    assert_true(gw_prequal_purge(p, 1, GW_PREQUAL_RM_FAILURE));
    assert_true(gw_prequal_idle_probe_due(p, 402));
    /* Expired entries do not count. */
    probe(p, 0, 0, 1, 402);
    probe(p, 1, 0, 1, 402);
    assert_true(pick(p, 1402, NULL, &br) >= 0);
    assert_true(gw_prequal_idle_probe_due(p, 1403));
    gw_prequal_free(p);

    pp.probes_per_request = 0.5;
    p = mk(&pp, 3);
    assert_int_equal(gw_prequal_idle_probes(p), 1);
    gw_prequal_free(p);
    pp.probes_per_request = 2.2;
    p = mk(&pp, 3);
    assert_int_equal(gw_prequal_idle_probes(p), 3);
    gw_prequal_free(p);
}

/* ---- failures and membership ---- */

static void test_purge(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.removes_per_request = 0;
    pp.q_rif = 1.0;
    gw_prequal_t *p = mk(&pp, 3);
    probe(p, 0, 0, 1, 0); /* the fast one fails: purged, never picked */
    probe(p, 1, 0, 5, 0);
    probe(p, 2, 0, 9, 0);
    assert_true(gw_prequal_purge(p, 0, GW_PREQUAL_RM_FAILURE));
    assert_false(gw_prequal_purge(p, 0, GW_PREQUAL_RM_FAILURE));
    assert_false(gw_prequal_purge(p, 99, GW_PREQUAL_RM_FAILURE));
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_FAILURE], 1);
    assert_int_equal(st(p)->pool_entries, 2);
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 0, NULL, &br), 1);
    assert_true(gw_prequal_purge(p, 2, GW_PREQUAL_RM_MEMBERSHIP));
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_MEMBERSHIP], 1);
    assert_false(in_pool(p, 2));
    gw_prequal_free(p);
}

static void test_resize_membership(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    gw_prequal_t *p = mk(&pp, 5);
    for (uint32_t b = 0; b < 5; b++)
        probe(p, b, b, 10, 0);
    for (int i = 0; i < 3; i++)
        gw_prequal_on_probe_result(p, 1, GW_PREQUAL_PROBE_NO_SIGNALS, 0);
    assert_int_equal(gw_prequal_mode(p, 1), GW_PREQUAL_MODE_PASSIVE);
    assert_int_equal(gw_prequal_resize(p, 3), 0);
    assert_int_equal(st(p)->removals[GW_PREQUAL_RM_MEMBERSHIP], 2);
    assert_int_equal(st(p)->pool_entries, 3);
    assert_true(in_pool(p, 0) && in_pool(p, 1) && in_pool(p, 2));
    assert_int_equal(gw_prequal_mode(p, 1), GW_PREQUAL_MODE_PASSIVE); /* kept */
    assert_int_equal(gw_prequal_resize(p, 6), 0);
    assert_int_equal(st(p)->pool_entries, 3);
    assert_int_equal(gw_prequal_mode(p, 5), GW_PREQUAL_MODE_PROBE);
    probe(p, 5, 0, 1, 0);
    assert_true(in_pool(p, 5));
    /* A replaced index: purge the entry and forget the per-backend state. */
    assert_true(gw_prequal_purge(p, 1, GW_PREQUAL_RM_MEMBERSHIP));
    gw_prequal_forget(p, 1);
    assert_int_equal(gw_prequal_mode(p, 1), GW_PREQUAL_MODE_PROBE);
    /* Out-of-range inputs are ignored. */
    probe(p, 6, 0, 1, 0);
    assert_int_equal(st(p)->pool_entries, 3);
    gw_prequal_record_latency(p, 6, 0, 1, 0);
    assert_int_equal(gw_prequal_synthetic_latency(p, 6, 0, 0), 0);
    assert_int_equal(gw_prequal_mode(p, 6), GW_PREQUAL_MODE_PROBE);
    assert_int_equal(gw_prequal_resize(p, 0), 0);
    assert_int_equal(st(p)->pool_entries, 0);
    gw_prequal_free(p);
}

/* ---- passive and piggyback modes ---- */

static void test_passive_detection(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    gw_prequal_t *p = mk(&pp, 2);
    const uint32_t b = 1;
    assert_int_equal(gw_prequal_mode(p, b), GW_PREQUAL_MODE_PROBE);
    assert_int_equal(gw_prequal_probe_action(p, b, 0), GW_PREQUAL_SEND_PROBE);
    /* An OK reply resets the count. */
    gw_prequal_on_probe_result(p, b, GW_PREQUAL_PROBE_NO_SIGNALS, 0);
    gw_prequal_on_probe_result(p, b, GW_PREQUAL_PROBE_NO_SIGNALS, 0);
    gw_prequal_on_probe_result(p, b, GW_PREQUAL_PROBE_OK_WITH_SIGNALS, 0);
    gw_prequal_on_probe_result(p, b, GW_PREQUAL_PROBE_NO_SIGNALS, 0);
    gw_prequal_on_probe_result(p, b, GW_PREQUAL_PROBE_NO_SIGNALS, 0);
    assert_int_equal(gw_prequal_mode(p, b), GW_PREQUAL_MODE_PROBE);
    /* A failure is not a reply: neither counts nor resets. */
    gw_prequal_on_probe_result(p, b, GW_PREQUAL_PROBE_FAILED, 0);
    assert_int_equal(gw_prequal_mode(p, b), GW_PREQUAL_MODE_PROBE);
    gw_prequal_on_probe_result(p, b, GW_PREQUAL_PROBE_NO_SIGNALS, 5000); /* the third */
    assert_int_equal(gw_prequal_mode(p, b), GW_PREQUAL_MODE_PASSIVE);
    assert_int_equal(gw_prequal_mode(p, 0), GW_PREQUAL_MODE_PROBE);
    /* Synthesised until the retry at +60 s, which is sent once. */
    assert_int_equal(gw_prequal_probe_action(p, b, 5000), GW_PREQUAL_SYNTHESIZE);
    assert_int_equal(gw_prequal_probe_action(p, b, 64999), GW_PREQUAL_SYNTHESIZE);
    assert_int_equal(gw_prequal_probe_action(p, b, 65000), GW_PREQUAL_SEND_PROBE);
    assert_int_equal(gw_prequal_probe_action(p, b, 65001), GW_PREQUAL_SYNTHESIZE);
    /* The retry says no signals again: stay passive, next retry 60 s after that reply. */
    gw_prequal_on_probe_result(p, b, GW_PREQUAL_PROBE_NO_SIGNALS, 65010);
    assert_int_equal(gw_prequal_mode(p, b), GW_PREQUAL_MODE_PASSIVE);
    assert_int_equal(gw_prequal_probe_action(p, b, 125009), GW_PREQUAL_SYNTHESIZE);
    assert_int_equal(gw_prequal_probe_action(p, b, 125010), GW_PREQUAL_SEND_PROBE);
    /* The backend learnt the endpoint: back to probe mode. */
    gw_prequal_on_probe_result(p, b, GW_PREQUAL_PROBE_OK_WITH_SIGNALS, 125020);
    assert_int_equal(gw_prequal_mode(p, b), GW_PREQUAL_MODE_PROBE);
    assert_int_equal(gw_prequal_probe_action(p, b, 125030), GW_PREQUAL_SEND_PROBE);
    /* And needs three fresh no-signal replies to go passive again. */
    gw_prequal_on_probe_result(p, b, GW_PREQUAL_PROBE_NO_SIGNALS, 125040);
    gw_prequal_on_probe_result(p, b, GW_PREQUAL_PROBE_NO_SIGNALS, 125050);
    assert_int_equal(gw_prequal_mode(p, b), GW_PREQUAL_MODE_PROBE);
    gw_prequal_on_probe_result(p, b, GW_PREQUAL_PROBE_NO_SIGNALS, 125060);
    assert_int_equal(gw_prequal_mode(p, b), GW_PREQUAL_MODE_PASSIVE);
    gw_prequal_free(p);
}

static void test_piggyback_switch(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    gw_prequal_t *p = mk(&pp, 2);
    uint64_t rng = SEED;
    /* Piggybacked headers from a probe-mode backend feed the pool but keep the mode. */
    gw_prequal_on_piggyback(p, 0, 2, 300, 10, 0, 2, &rng);
    assert_int_equal(gw_prequal_mode(p, 0), GW_PREQUAL_MODE_PROBE);
    for (int i = 0; i < 3; i++)
        gw_prequal_on_probe_result(p, 1, GW_PREQUAL_PROBE_NO_SIGNALS, 0);
    assert_int_equal(gw_prequal_mode(p, 1), GW_PREQUAL_MODE_PASSIVE);
    gw_prequal_on_piggyback(p, 1, 4, 700, 20, 0, 2, &rng);
    assert_int_equal(gw_prequal_mode(p, 1), GW_PREQUAL_MODE_PIGGYBACK);
    gw_prequal_entry_info_t e;
    assert_true(entry_of(p, 1, 20, &e));
    assert_int_equal(e.rif, 4);
    assert_int_equal(e.latency_us, 700);
    assert_int_equal(st(p)->probes[GW_PREQUAL_PROBE_STAT_PIGGYBACK], 2);
    assert_int_equal(st(p)->probes[GW_PREQUAL_PROBE_STAT_OK], 0);
    assert_int_equal(gw_prequal_probe_action(p, 1, 30), GW_PREQUAL_SYNTHESIZE);
    /* A retry that finds the endpoint returns to probe mode. */
    assert_int_equal(gw_prequal_probe_action(p, 1, 60000), GW_PREQUAL_SEND_PROBE);
    gw_prequal_on_probe_result(p, 1, GW_PREQUAL_PROBE_OK_WITH_SIGNALS, 60005);
    assert_int_equal(gw_prequal_mode(p, 1), GW_PREQUAL_MODE_PROBE);
    gw_prequal_free(p);
}

static void test_synthetic_latency_median(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    gw_prequal_t *p = mk(&pp, 3);
    const uint32_t b = 1;
    const uint64_t now = 10000;
    assert_int_equal(gw_prequal_synthetic_latency(p, b, 5, now), 0); /* no samples */
    gw_prequal_record_latency(p, b, 4, 100, 9500);
    gw_prequal_record_latency(p, b, 5, 300, 9800);
    gw_prequal_record_latency(p, b, 6, 200, 9990);
    gw_prequal_record_latency(p, b, 7, 5000, 9990);
    gw_prequal_record_latency(p, b, 5, 7000, 8999); /* 1001 ms old at `now` */
    gw_prequal_record_latency(p, b, 5, 400, 9000);  /* exactly 1000 ms: still in */
    /* rif 5 -> samples at 4..6: 100, 200, 300, 400 -> (200 + 300) / 2 */
    assert_int_equal(gw_prequal_synthetic_latency(p, b, 5, now), 250);
    /* rif 4 -> 3..5: 100, 300, 400 -> 300 */
    assert_int_equal(gw_prequal_synthetic_latency(p, b, 4, now), 300);
    /* rif 6 -> 5..7: 200, 300, 400, 5000 -> 350 */
    assert_int_equal(gw_prequal_synthetic_latency(p, b, 6, now), 350);
    /* rif 0 -> 0..1: none */
    assert_int_equal(gw_prequal_synthetic_latency(p, b, 0, now), 0);
    /* another backend's samples are its own */
    assert_int_equal(gw_prequal_synthetic_latency(p, 0, 5, now), 0);
    /* one second later everything is stale */
    assert_int_equal(gw_prequal_synthetic_latency(p, b, 5, now + 1000), 0);

    /* The ring keeps the last GW_PREQUAL_LAT_SAMPLES: 40 samples 0..39 leave 8..39, whose
     * median is (23 + 24) / 2 rounded down. */
    for (uint64_t i = 0; i < 40; i++)
        gw_prequal_record_latency(p, 2, 1, i, now);
    assert_int_equal(gw_prequal_synthetic_latency(p, 2, 1, now), 23);
    /* Latencies saturate rather than wrap. */
    gw_prequal_record_latency(p, 0, 0, UINT64_MAX, now);
    assert_int_equal(gw_prequal_synthetic_latency(p, 0, 0, now), UINT32_MAX);
    gw_prequal_free(p);
}

static void test_synthesize_entry(void **state)
{
    GW_UNUSED(state);
    gw_prequal_params_t pp = defaults();
    pp.removes_per_request = 0;
    pp.q_rif = 1.0;
    gw_prequal_t *p = mk(&pp, 3);
    uint64_t rng = SEED;
    for (int i = 0; i < 3; i++)
        gw_prequal_on_probe_result(p, 1, GW_PREQUAL_PROBE_NO_SIGNALS, 0);
    assert_int_equal(gw_prequal_probe_action(p, 1, 100), GW_PREQUAL_SYNTHESIZE);
    gw_prequal_record_latency(p, 1, 4, 100, 900);
    gw_prequal_record_latency(p, 1, 5, 400, 950);
    gw_prequal_record_latency(p, 1, 9, 999, 950);
    gw_prequal_synthesize(p, 1, 5, 1000, 3, &rng);
    gw_prequal_entry_info_t e;
    assert_true(entry_of(p, 1, 1000, &e));
    assert_int_equal(e.rif, 5);
    assert_int_equal(e.latency_us, 250); /* median of 100, 400 */
    assert_int_equal(e.age_ms, 0);
    assert_int_equal(e.uses_left, 16);
    assert_int_equal(thr(p, 1000), GW_PREQUAL_THR_INF); /* q_rif = 1 */
    assert_int_equal(st(p)->probes[GW_PREQUAL_PROBE_STAT_SYNTHETIC], 1);
    /* No samples yet: latency 0, which makes an idle passive backend attractive, as it should. */
    gw_prequal_synthesize(p, 2, 0, 1000, 3, &rng);
    assert_true(entry_of(p, 2, 1000, &e));
    assert_int_equal(e.latency_us, 0);
    /* It is valued at the median backend's cost (backend 1's), so it wins once backend 1 has a
     * request in flight. */
    g_load[1].inflight = 6; /* synthesized at 5: eff 6 */
    gw_prequal_branch_t br;
    assert_int_equal(pick(p, 1000, NULL, &br), 2);
    gw_prequal_free(p);
}

/* ---- observability ---- */

static void test_stats_and_names(void **state)
{
    GW_UNUSED(state);
    assert_string_equal(gw_prequal_branch_name(GW_PREQUAL_COLD), "cold");
    assert_string_equal(gw_prequal_branch_name(GW_PREQUAL_HOT), "hot");
    assert_string_equal(gw_prequal_branch_name(GW_PREQUAL_FALLBACK), "fallback");
    const char *reasons[] = {"age",   "reuse",   "capacity",   "oldest",
                             "worst", "failure", "membership", "silence"};
    for (int r = 0; r < GW_PREQUAL_REASON_COUNT; r++)
        assert_string_equal(gw_prequal_reason_name((gw_prequal_reason_t)r), reasons[r]);
    const char *probes[] = {"ok", "fail", "timeout", "skipped", "synthetic", "piggyback"};
    for (int s = 0; s < GW_PREQUAL_PROBE_STAT_COUNT; s++)
        assert_string_equal(gw_prequal_probe_stat_name((gw_prequal_probe_stat_t)s), probes[s]);
    assert_string_equal(gw_prequal_mode_name(GW_PREQUAL_MODE_PROBE), "probe");
    assert_string_equal(gw_prequal_mode_name(GW_PREQUAL_MODE_PASSIVE), "passive");
    assert_string_equal(gw_prequal_mode_name(GW_PREQUAL_MODE_PIGGYBACK), "piggyback");
    assert_string_equal(gw_prequal_mode_name(GW_PREQUAL_MODE_COUNT), "?");
    assert_string_equal(gw_prequal_reason_name(GW_PREQUAL_REASON_COUNT), "?");

    gw_prequal_params_t pp = defaults();
    gw_prequal_t *p = mk(&pp, 4);
    gw_prequal_count_probe(p, GW_PREQUAL_PROBE_STAT_TIMEOUT);
    gw_prequal_count_probe(p, GW_PREQUAL_PROBE_STAT_SKIPPED);
    gw_prequal_count_probe(p, GW_PREQUAL_PROBE_STAT_SKIPPED);
    gw_prequal_count_probe(p, GW_PREQUAL_PROBE_STAT_COUNT); /* ignored */
    assert_int_equal(st(p)->probes[GW_PREQUAL_PROBE_STAT_TIMEOUT], 1);
    assert_int_equal(st(p)->probes[GW_PREQUAL_PROBE_STAT_SKIPPED], 2);
    probe(p, 0, 1, 11, 100);
    probe(p, 1, 2, 22, 200);
    probe(p, 2, 3, 33, 300);
    gw_prequal_entry_info_t e[2];
    assert_int_equal(gw_prequal_pool_snapshot(p, 350, e, 2), 3); /* total, 2 copied */
    gw_prequal_entry_info_t one;
    assert_true(entry_of(p, 1, 350, &one));
    assert_int_equal(one.rif, 2);
    assert_int_equal(one.latency_us, 22);
    assert_int_equal(one.age_ms, 150);
    assert_int_equal(one.uses_left, 16);
    assert_int_equal(GW_RELAXED_LOAD(gw_prequal_stats(p)->pool_entries), 3);
    gw_prequal_free(p);
}

/* ---- end to end: one backend 5x slower than four others ---- */

#define SIM_B 5
#define SIM_SERVERS 4
#define SIM_MAXQ 4096
#define SIM_MS 20000

typedef struct sim_backend {
    uint64_t service_ms;
    uint64_t free_at[SIM_SERVERS];
    uint64_t arr[SIM_MAXQ], fin[SIM_MAXQ];
    uint32_t rif_start[SIM_MAXQ];
    size_t n; /* requests in flight: the backend's RIF */
} sim_backend_t;

typedef struct sim_result {
    uint64_t sent[SIM_B];
    uint64_t total;
    uint64_t p99_ms;
} sim_result_t;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Backends are FIFO queues in front of SIM_SERVERS servers; each reports its RIF and the median
 * latency of its recent requests at RIF r-1..r+1 (the same estimator as passive mode, so a
 * separate gw_prequal_t records them). Probes are answered at once and used from the next request
 * on (async mode). Arrivals: Bernoulli(0.35) per ms, about 350 requests/s against a capacity of
 * 4 x 400 + 80 per second; round robin gives the slow backend 70/s (utilisation 0.875). */
static void simulate(bool use_prequal, sim_result_t *res)
{
    static sim_backend_t be[SIM_B];
    memset(be, 0, sizeof(be));
    for (int b = 0; b < SIM_B; b++)
        be[b].service_ms = b == 0 ? 50 : 10;
    gw_prequal_params_t pp = defaults();
    gw_prequal_t *p = mk(&pp, SIM_B);
    gw_prequal_t *meter = mk(&pp, SIM_B);
    uint64_t rng = SEED, lat_rng = SEED ^ 0x5555;
    uint64_t *lat = calloc(SIM_MS, sizeof(uint64_t));
    assert_non_null(lat);
    size_t nlat = 0, rr = 0;
    memset(res, 0, sizeof(*res));
    bool eligible[SIM_B];
    for (uint64_t now = 0; now < SIM_MS; now++) {
        for (int b = 0; b < SIM_B; b++) {
            sim_backend_t *s = &be[b];
            for (size_t i = 0; i < s->n;) {
                if (s->fin[i] <= now) {
                    gw_prequal_record_latency(meter, (uint32_t)b, s->rif_start[i],
                                              (s->fin[i] - s->arr[i]) * 1000, s->fin[i]);
                    lat[nlat++] = s->fin[i] - s->arr[i];
                    s->n--;
                    s->arr[i] = s->arr[s->n];
                    s->fin[i] = s->fin[s->n];
                    s->rif_start[i] = s->rif_start[s->n];
                } else {
                    i++;
                }
            }
        }
        if (gw_rand_below(&lat_rng, 100) >= 35)
            continue;
        int b;
        if (use_prequal) {
            gw_prequal_branch_t br;
            gw_prequal_load_t load[SIM_B];
            for (int i = 0; i < SIM_B; i++)
                load[i] = (gw_prequal_load_t){.inflight = (uint32_t)be[i].n};
            b = gw_prequal_pick(p, now, NULL, load, &rng, &br);
            uint32_t k = gw_prequal_probes_for_request(p), out[SIM_B];
            for (int i = 0; i < SIM_B; i++)
                eligible[i] = true;
            size_t got = gw_prequal_choose_probe_targets(p, eligible, SIM_B, k, &rng, out);
            for (size_t i = 0; i < got; i++) {
                uint32_t rif = (uint32_t)be[out[i]].n;
                gw_prequal_probe_sent(p, out[i], now, rif);
                gw_prequal_on_probe(p, out[i], rif,
                                    gw_prequal_synthetic_latency(meter, out[i], rif, now), now,
                                    SIM_B, &rng);
            }
        } else {
            b = (int)(rr++ % SIM_B);
        }
        sim_backend_t *s = &be[b];
        assert_true(s->n < SIM_MAXQ);
        size_t srv = 0;
        for (size_t i = 1; i < SIM_SERVERS; i++) {
            if (s->free_at[i] < s->free_at[srv])
                srv = i;
        }
        uint64_t start = GW_MAX(now, s->free_at[srv]);
        s->free_at[srv] = start + s->service_ms;
        s->arr[s->n] = now;
        s->fin[s->n] = s->free_at[srv];
        s->rif_start[s->n] = (uint32_t)s->n;
        s->n++;
        res->sent[b]++;
        res->total++;
    }
    qsort(lat, nlat, sizeof(uint64_t), cmp_u64);
    res->p99_ms = lat[(size_t)(0.99 * (double)(nlat - 1))];
    free(lat);
    gw_prequal_free(meter);
    gw_prequal_free(p);
}

static void test_end_to_end_slow_backend(void **state)
{
    GW_UNUSED(state);
    sim_result_t rr, pq;
    simulate(false, &rr);
    simulate(true, &pq);
    double rr_share = (double)rr.sent[0] / (double)rr.total;
    double pq_share = (double)pq.sent[0] / (double)pq.total;
    print_message("slow backend share: round robin %.3f, prequal %.3f; p99: %llu ms vs %llu ms\n",
                  rr_share, pq_share, (unsigned long long)rr.p99_ms, (unsigned long long)pq.p99_ms);
    assert_true(fabs(rr_share - 0.2) < 0.001);
    assert_true(pq_share < rr_share / 2); /* clearly less traffic */
    assert_true(pq.p99_ms < rr.p99_ms);   /* and a lower tail */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params_default),
        cmocka_unit_test(test_params_check),
        cmocka_unit_test(test_hcl_cold_beats_hot),
        cmocka_unit_test(test_hcl_all_hot_min_rif),
        cmocka_unit_test(test_hcl_cold_ties),
        cmocka_unit_test(test_hcl_hot_ties),
        cmocka_unit_test(test_hcl_q0_q1),
        cmocka_unit_test(test_quantile_nearest_rank),
        cmocka_unit_test(test_quantile_matches_sort),
        cmocka_unit_test(test_reuse_budget_eq1),
        cmocka_unit_test(test_reuse_budget_nonpositive_denominator),
        cmocka_unit_test(test_random_rounding_mean),
        cmocka_unit_test(test_fractional_rates),
        cmocka_unit_test(test_fractional_removal_rate),
        cmocka_unit_test(test_alternating_removal),
        cmocka_unit_test(test_removal_bounded_by_inflow),
        cmocka_unit_test(test_worst_prefers_hot),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_fallback_under_two),
        cmocka_unit_test(test_fallback_ties_random),
        cmocka_unit_test(test_tried_excluded),
        cmocka_unit_test(test_effective_rif),
        cmocka_unit_test(test_predicted_latency),
        cmocka_unit_test(test_cost_summed_over_reports),
        cmocka_unit_test(test_stale_cost_returns_to_prior),
        cmocka_unit_test(test_probe_timeout_drops_entry),
        cmocka_unit_test(test_one_entry_per_backend),
        cmocka_unit_test(test_uses_never_exceed_budget),
        cmocka_unit_test(test_capacity_evicts_oldest),
        cmocka_unit_test(test_pool_holds_every_backend),
        cmocka_unit_test(test_probe_targets_distinct),
        cmocka_unit_test(test_probe_targets_uniform),
        cmocka_unit_test(test_probe_budget),
        cmocka_unit_test(test_spare_scales_probes),
        cmocka_unit_test(test_idle_probe),
        cmocka_unit_test(test_purge),
        cmocka_unit_test(test_resize_membership),
        cmocka_unit_test(test_passive_detection),
        cmocka_unit_test(test_piggyback_switch),
        cmocka_unit_test(test_synthetic_latency_median),
        cmocka_unit_test(test_synthesize_entry),
        cmocka_unit_test(test_stats_and_names),
        cmocka_unit_test(test_end_to_end_slow_backend),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
