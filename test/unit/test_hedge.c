/*
 * Unit tests for core/hedge.c: the hedge budget (a token bucket earned per request) and the
 * delay (fixed, or a quantile of the latest latencies, cold until enough are known).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "hedge.h"

static gw_hedge_cfg_t cfg_ms(uint32_t ms, uint32_t percent)
{
    return (gw_hedge_cfg_t){.enabled = true, .after_ms = ms, .max = 1, .budget_percent = percent};
}

static gw_hedge_cfg_t cfg_q(double q)
{
    return (gw_hedge_cfg_t){.enabled = true, .after_quantile = q, .max = 1, .budget_percent = 10};
}

/* Hedges granted when `n` requests each earn and then ask for one. */
static int run_requests(gw_hedge_t *h, int n)
{
    int granted = 0;
    for (int i = 0; i < n; i++) {
        gw_hedge_earn(h);
        granted += gw_hedge_take(h);
    }
    return granted;
}

static void test_budget_starts_empty_and_earns_per_request(void **state)
{
    gw_hedge_cfg_t cfg = cfg_ms(25, 10);
    gw_hedge_t h;
    assert_int_equal(gw_hedge_init(&h, &cfg), 0);
    assert_false(gw_hedge_take(&h));
    for (int i = 0; i < 9; i++)
        gw_hedge_earn(&h);
    assert_false(gw_hedge_take(&h)); /* 9 requests at 10 %: 0.9 of a hedge */
    gw_hedge_earn(&h);
    assert_true(gw_hedge_take(&h));
    assert_false(gw_hedge_take(&h));
    gw_hedge_free(&h);
}

static void test_budget_caps_a_slow_upstream(void **state)
{
    /* Every request wants a hedge (the whole upstream is slow): 10 % of them get one. */
    gw_hedge_cfg_t cfg = cfg_ms(25, 10);
    gw_hedge_t h;
    assert_int_equal(gw_hedge_init(&h, &cfg), 0);
    assert_int_equal(run_requests(&h, 1000), 100);
    gw_hedge_free(&h);
    /* 100 %: every request may be hedged once, never more. */
    cfg = cfg_ms(25, 100);
    assert_int_equal(gw_hedge_init(&h, &cfg), 0);
    assert_int_equal(run_requests(&h, 50), 50);
    assert_false(gw_hedge_take(&h));
    gw_hedge_free(&h);
    /* An odd percentage stays exact: 7 % of 1000. */
    cfg = cfg_ms(25, 7);
    assert_int_equal(gw_hedge_init(&h, &cfg), 0);
    assert_int_equal(run_requests(&h, 1000), 70);
    gw_hedge_free(&h);
}

static void test_budget_burst_is_bounded(void **state)
{
    /* A long quiet stretch (requests that needed no hedge) saves up GW_HEDGE_BURST at most. */
    gw_hedge_cfg_t cfg = cfg_ms(25, 50);
    gw_hedge_t h;
    assert_int_equal(gw_hedge_init(&h, &cfg), 0);
    for (int i = 0; i < 10000; i++)
        gw_hedge_earn(&h);
    int burst = 0;
    while (gw_hedge_take(&h))
        burst++;
    assert_int_equal(burst, GW_HEDGE_BURST);
    /* A refund (no backend left to hedge to) gives the token back, within the cap. */
    gw_hedge_refund(&h);
    assert_true(gw_hedge_take(&h));
    assert_false(gw_hedge_take(&h));
    for (int i = 0; i < 3 * GW_HEDGE_BURST; i++)
        gw_hedge_refund(&h);
    burst = 0;
    while (gw_hedge_take(&h))
        burst++;
    assert_int_equal(burst, GW_HEDGE_BURST);
    gw_hedge_free(&h);
}

static void test_fixed_delay(void **state)
{
    gw_hedge_cfg_t cfg = cfg_ms(25, 10);
    gw_hedge_t h;
    assert_int_equal(gw_hedge_init(&h, &cfg), 0);
    assert_int_equal(gw_hedge_delay_ms(&h), 25);
    for (int i = 0; i < 100; i++)
        gw_hedge_observe(&h, 900000); /* latencies do not move a fixed delay */
    assert_int_equal(gw_hedge_delay_ms(&h), 25);
    gw_hedge_free(&h);
}

static void test_quantile_cold_then_learned(void **state)
{
    gw_hedge_cfg_t cfg = cfg_q(0.9);
    gw_hedge_t h;
    assert_int_equal(gw_hedge_init(&h, &cfg), 0);
    assert_int_equal(gw_hedge_delay_ms(&h), GW_HEDGE_COLD_MS);
    /* Latencies 1..GW_HEDGE_MIN_SAMPLES-1 ms: not enough yet. */
    for (uint32_t i = 1; i < GW_HEDGE_MIN_SAMPLES; i++)
        gw_hedge_observe(&h, i * 1000);
    assert_int_equal(gw_hedge_delay_ms(&h), GW_HEDGE_COLD_MS);
    /* The 16th: 1..16 ms known, the 0.9 quantile (nearest rank 15 of 16) is 15 ms. */
    gw_hedge_observe(&h, 16000);
    assert_int_equal(gw_hedge_delay_ms(&h), 15);
    gw_hedge_free(&h);
}

static void test_quantile_follows_recent_latencies(void **state)
{
    gw_hedge_cfg_t cfg = cfg_q(0.5);
    gw_hedge_t h;
    assert_int_equal(gw_hedge_init(&h, &cfg), 0);
    for (int i = 0; i < GW_HEDGE_WINDOW; i++)
        gw_hedge_observe(&h, 2000);
    assert_int_equal(gw_hedge_delay_ms(&h), 2);
    /* The upstream slows down to 40 ms: once the new latencies fill more than half of the
     * window, the median is theirs; the old ones age out of the window entirely. */
    int i = 0;
    while (gw_hedge_delay_ms(&h) == 2 && i < GW_HEDGE_WINDOW) {
        gw_hedge_observe(&h, 40000);
        i++;
    }
    assert_int_equal(gw_hedge_delay_ms(&h), 40);
    /* Recomputed every GW_HEDGE_RECOMPUTE samples: at most that many after the half. */
    assert_true(i > GW_HEDGE_WINDOW / 2 && i <= GW_HEDGE_WINDOW / 2 + GW_HEDGE_RECOMPUTE);
    gw_hedge_free(&h);
}

static void test_quantile_rounds_up_and_floors(void **state)
{
    gw_hedge_cfg_t cfg = cfg_q(0.99);
    gw_hedge_t h;
    assert_int_equal(gw_hedge_init(&h, &cfg), 0);
    for (int i = 0; i < GW_HEDGE_MIN_SAMPLES; i++)
        gw_hedge_observe(&h, 10); /* 10 µs: a hedge is never sent at once */
    assert_int_equal(gw_hedge_delay_ms(&h), GW_HEDGE_MIN_MS);
    for (int i = 0; i < GW_HEDGE_WINDOW; i++)
        gw_hedge_observe(&h, 2001); /* 2.001 ms waits 3 ms, not 2 */
    assert_int_equal(gw_hedge_delay_ms(&h), 3);
    gw_hedge_observe(&h, UINT64_MAX); /* clamped, not wrapped */
    gw_hedge_free(&h);
    gw_hedge_free(&h); /* idempotent */
}

static void test_outcome_names(void **state)
{
    assert_string_equal(gw_hedge_outcome_name(GW_HEDGE_SENT), "sent");
    assert_string_equal(gw_hedge_outcome_name(GW_HEDGE_WON), "won");
    assert_string_equal(gw_hedge_outcome_name(GW_HEDGE_LOST), "lost");
    assert_string_equal(gw_hedge_outcome_name(GW_HEDGE_FAILED), "failed");
    assert_string_equal(gw_hedge_outcome_name(GW_HEDGE_SKIPPED_BUDGET), "skipped_budget");
    assert_string_equal(gw_hedge_outcome_name(GW_HEDGE_SKIPPED_NO_BACKEND), "skipped_no_backend");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_starts_empty_and_earns_per_request),
        cmocka_unit_test(test_budget_caps_a_slow_upstream),
        cmocka_unit_test(test_budget_burst_is_bounded),
        cmocka_unit_test(test_fixed_delay),
        cmocka_unit_test(test_quantile_cold_then_learned),
        cmocka_unit_test(test_quantile_follows_recent_latencies),
        cmocka_unit_test(test_quantile_rounds_up_and_floors),
        cmocka_unit_test(test_outcome_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
