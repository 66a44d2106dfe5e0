/*
 * Unit tests for core/lb.c (the strategy registry) and core/lb_round_robin.c: even distribution,
 * skipping tried and unhealthy backends, the unhealthy fallback, -1 when all are tried, more than
 * 64 backends, and backend list changes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "lb.h"

#define MAXB 200

typedef struct fixture {
    gw_backend_t b[MAXB];
    gw_backend_t *ptrs[MAXB];
    uint64_t tried[(MAXB + 63) / 64];
    uint64_t rng;
    gw_lb_ctx_t ctx;
    void *state;
} fixture_t;

static fixture_t *fx_new(size_t n, bool with_rng)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    for (size_t i = 0; i < n; i++) {
        f->b[i].index = (uint32_t)i;
        f->b[i].healthy = 1;
        f->ptrs[i] = &f->b[i];
    }
    f->rng = 0x9E3779B97F4A7C15ull;
    f->ctx = (gw_lb_ctx_t){.backends = f->ptrs,
                           .n = n,
                           .tried = f->tried,
                           .rng = with_rng ? &f->rng : NULL,
                           .now_ms = 1000};
    assert_int_equal(gw_lb_round_robin.create(NULL, n, &f->state), 0);
    return f;
}

static void fx_free(fixture_t *f)
{
    gw_lb_round_robin.destroy(f->state);
    free(f);
}

static int pick(fixture_t *f)
{
    return gw_lb_round_robin.pick(f->state, &f->ctx);
}

static void test_registry(void **state)
{
    GW_UNUSED(state);
    assert_ptr_equal(gw_lb_find("round_robin"), &gw_lb_round_robin);
    assert_string_equal(gw_lb_round_robin.name, "round_robin");
    assert_null(gw_lb_find("no_such_strategy"));
    assert_null(gw_lb_find(""));
    assert_null(gw_lb_find("ROUND_ROBIN"));
    assert_null(gw_lb_find(NULL));

    const char *const *names = gw_lb_names();
    size_t count = 0;
    bool seen_rr = false;
    for (; names[count] != NULL; count++) {
        /* Every listed name resolves to a strategy of that name. */
        const gw_lb_ops_t *ops = gw_lb_find(names[count]);
        assert_non_null(ops);
        assert_string_equal(ops->name, names[count]);
        assert_non_null(ops->create);
        assert_non_null(ops->destroy);
        assert_non_null(ops->pick);
        seen_rr |= strcmp(names[count], "round_robin") == 0;
    }
    assert_true(count >= 1);
    assert_true(seen_rr);
}

static void test_order_without_rng(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(3, false);
    for (int round = 0; round < 4; round++) {
        assert_int_equal(pick(f), 0);
        assert_int_equal(pick(f), 1);
        assert_int_equal(pick(f), 2);
    }
    fx_free(f);
}

static void test_even_distribution(void **state)
{
    GW_UNUSED(state);
    const size_t n = 7, rounds = 1000;
    fixture_t *f = fx_new(n, true);
    size_t count[7] = {0};
    int prev = -1;
    for (size_t k = 0; k < n * rounds; k++) {
        int i = pick(f);
        assert_true(i >= 0 && (size_t)i < n);
        /* Strict rotation, from wherever it started. */
        if (prev >= 0)
            assert_int_equal(i, (prev + 1) % (int)n);
        prev = i;
        count[i]++;
    }
    for (size_t i = 0; i < n; i++)
        assert_int_equal(count[i], rounds);
    fx_free(f);
}

static void test_random_start(void **state)
{
    GW_UNUSED(state);
    /* Different workers (different generator states) should not all start at backend 0. */
    bool seen[16] = {false};
    size_t distinct = 0;
    for (uint64_t seed = 1; seed <= 64; seed++) {
        fixture_t *f = fx_new(16, true);
        f->rng = seed * 0x9E3779B97F4A7C15ull;
        int i = pick(f);
        assert_true(i >= 0 && i < 16);
        if (!seen[i]) {
            seen[i] = true;
            distinct++;
        }
        fx_free(f);
    }
    assert_true(distinct >= 8);
}

static void test_skips_unhealthy_evenly(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(5, true);
    f->b[1].healthy = 0;
    f->b[3].healthy = 0;
    size_t count[5] = {0};
    for (int k = 0; k < 300; k++)
        count[pick(f)]++;
    assert_int_equal(count[0], 100);
    assert_int_equal(count[1], 0);
    assert_int_equal(count[2], 100);
    assert_int_equal(count[3], 0);
    assert_int_equal(count[4], 100);

    /* Back to healthy: back in the rotation. */
    f->b[1].healthy = 1;
    f->b[3].healthy = 1;
    memset(count, 0, sizeof(count));
    for (int k = 0; k < 500; k++)
        count[pick(f)]++;
    for (int i = 0; i < 5; i++)
        assert_int_equal(count[i], 100);
    fx_free(f);
}

static void test_skips_tried_and_retries(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(4, false);
    /* One request with retries: each pick is untried, then -1. */
    bool got[4] = {false};
    for (int k = 0; k < 4; k++) {
        int i = pick(f);
        assert_true(i >= 0 && i < 4);
        assert_false(got[i]);
        got[i] = true;
        gw_lb_set_tried(f->tried, (size_t)i);
    }
    assert_int_equal(pick(f), -1);
    assert_int_equal(pick(f), -1);

    /* tried may be NULL: nothing is tried. */
    f->ctx.tried = NULL;
    assert_true(pick(f) >= 0);

    /* Tried backends are skipped regardless of the cursor. */
    f->ctx.tried = f->tried;
    memset(f->tried, 0, sizeof(f->tried));
    gw_lb_set_tried(f->tried, 0);
    gw_lb_set_tried(f->tried, 2);
    for (int k = 0; k < 10; k++) {
        int i = pick(f);
        assert_true(i == 1 || i == 3);
    }
    fx_free(f);
}

static void test_unhealthy_fallback(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(4, false);
    f->b[0].healthy = 0;
    f->b[1].healthy = 0;
    f->b[3].healthy = 0;
    /* Only 2 is healthy: always 2 while it is untried. */
    for (int k = 0; k < 5; k++)
        assert_int_equal(pick(f), 2);
    /* 2 tried: fall back to unhealthy untried ones, each once, then -1. */
    gw_lb_set_tried(f->tried, 2);
    bool got[4] = {false};
    for (int k = 0; k < 3; k++) {
        int i = pick(f);
        assert_true(i == 0 || i == 1 || i == 3);
        assert_false(got[i]);
        got[i] = true;
        gw_lb_set_tried(f->tried, (size_t)i);
    }
    assert_int_equal(pick(f), -1);

    /* Every backend unhealthy and none tried: still rotates over all of them. */
    memset(f->tried, 0, sizeof(f->tried));
    for (int i = 0; i < 4; i++)
        f->b[i].healthy = 0;
    size_t count[4] = {0};
    for (int k = 0; k < 40; k++)
        count[pick(f)]++;
    for (int i = 0; i < 4; i++)
        assert_int_equal(count[i], 10);
    fx_free(f);
}

static void test_many_backends(void **state)
{
    GW_UNUSED(state);
    const size_t n = 130; /* three words of tried bits */
    fixture_t *f = fx_new(n, true);
    size_t count[130] = {0};
    for (size_t k = 0; k < n * 10; k++)
        count[pick(f)]++;
    for (size_t i = 0; i < n; i++)
        assert_int_equal(count[i], 10);

    /* Try everything but 129 (in the third word) and 63/64 (word boundary). */
    for (size_t i = 0; i < n; i++) {
        if (i != 129 && i != 63 && i != 64)
            gw_lb_set_tried(f->tried, i);
    }
    for (int k = 0; k < 9; k++) {
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
    i = pick(f);
    assert_true(i == 64 || i == 129);
    gw_lb_set_tried(f->tried, (size_t)i);
    assert_int_equal(pick(f), -1);
    fx_free(f);
}

static void test_empty_and_changes(void **state)
{
    GW_UNUSED(state);
    fixture_t *f = fx_new(5, false);
    for (int k = 0; k < 4; k++)
        pick(f); /* cursor now at 4 */

    /* Shrink to 2 backends, then grow back to 5: picks stay in range and rotate. */
    f->ctx.n = 2;
    gw_lb_round_robin.on_backends_changed(f->state, &f->ctx);
    size_t count[5] = {0};
    for (int k = 0; k < 10; k++) {
        int i = pick(f);
        assert_true(i == 0 || i == 1);
        count[i]++;
    }
    assert_int_equal(count[0], 5);
    assert_int_equal(count[1], 5);

    f->ctx.n = 0;
    gw_lb_round_robin.on_backends_changed(f->state, &f->ctx);
    assert_int_equal(pick(f), -1);

    f->ctx.n = 5;
    gw_lb_round_robin.on_backends_changed(f->state, &f->ctx);
    memset(count, 0, sizeof(count));
    for (int k = 0; k < 50; k++)
        count[pick(f)]++;
    for (int i = 0; i < 5; i++)
        assert_int_equal(count[i], 10);
    fx_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_order_without_rng),
        cmocka_unit_test(test_even_distribution),
        cmocka_unit_test(test_random_start),
        cmocka_unit_test(test_skips_unhealthy_evenly),
        cmocka_unit_test(test_skips_tried_and_retries),
        cmocka_unit_test(test_unhealthy_fallback),
        cmocka_unit_test(test_many_backends),
        cmocka_unit_test(test_empty_and_changes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
