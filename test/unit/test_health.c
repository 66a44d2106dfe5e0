/* Unit tests for health checking: passive ejection (core/health.c), its interplay with active
 * checks, and the active checks' streak rule (core/hcheck.c). Pure, with explicit times. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "hcheck.h"
#include "health.h"

static gw_backend_t b[4];
static gw_backend_t *peers[4] = {&b[0], &b[1], &b[2], &b[3]};
static const gw_health_cfg_t h = {.max_fails = 3, .eject_ms = 100, .max_eject_ms = 350,
                                  .max_ejected_percent = 50};

static int reset(void **state)
{
    memset(b, 0, sizeof b);
    for (int i = 0; i < 4; i++)
        b[i].healthy = b[i].member = 1;
    return 0;
}

static void test_ejects_after_max_fails_in_a_row(void **state)
{
    assert_false(gw_health_on_failure(&b[0], peers, 4, &h, 1000));
    assert_false(gw_health_on_failure(&b[0], peers, 4, &h, 1000));
    gw_health_on_success(&b[0]); /* the streak starts over */
    assert_false(gw_health_on_failure(&b[0], peers, 4, &h, 1000));
    assert_false(gw_health_on_failure(&b[0], peers, 4, &h, 1000));
    assert_int_equal(b[0].healthy, 1);
    assert_true(gw_health_on_failure(&b[0], peers, 4, &h, 1000));
    assert_int_equal(b[0].healthy, 0);
    assert_int_equal(b[0].ejected, 1);
    assert_int_equal(b[0].ejected_until_ms, 1100);
}

static void test_readmitted_when_time_is_up(void **state)
{
    for (int i = 0; i < 3; i++)
        gw_health_on_failure(&b[1], peers, 4, &h, 0);
    assert_int_equal(gw_health_tick(peers, 4, 99), 0);
    assert_int_equal(b[1].healthy, 0);
    assert_int_equal(gw_health_tick(peers, 4, 100), 1);
    assert_int_equal(b[1].healthy, 1);
    assert_int_equal(b[1].ejected, 0);
}

static void test_backoff_doubles_up_to_max(void **state)
{
    uint64_t now = 0, expect[] = {100, 200, 350, 350};
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < 3; i++)
            gw_health_on_failure(&b[2], peers, 4, &h, now);
        assert_int_equal(b[2].ejected_until_ms - now, expect[k]);
        now = b[2].ejected_until_ms;
        gw_health_tick(peers, 4, now); /* re-admitted, but no success yet */
    }
    gw_health_on_success(&b[2]);
    for (int i = 0; i < 3; i++)
        gw_health_on_failure(&b[2], peers, 4, &h, now);
    assert_int_equal(b[2].ejected_until_ms - now, 100); /* a success reset the backoff */
}

static void test_never_more_than_half(void **state)
{
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < 3; i++)
            gw_health_on_failure(&b[k], peers, 4, &h, 0);
    assert_int_equal(b[0].ejected + b[1].ejected + b[2].ejected + b[3].ejected, 2);
    assert_int_equal(b[2].healthy, 1);
    assert_int_equal(b[3].healthy, 1);
}

static void test_disabled(void **state)
{
    gw_health_cfg_t off = h;
    off.max_fails = 0;
    for (int i = 0; i < 10; i++)
        assert_false(gw_health_on_failure(&b[0], peers, 4, &off, 0));
    assert_int_equal(b[0].healthy, 1);
}

/* Non-members (free registration slots) count for neither side of the ejection cap. */
static void test_cap_counts_members_only(void **state)
{
    b[2].member = b[3].member = 0;
    for (int i = 0; i < 3; i++)
        gw_health_on_failure(&b[0], peers, 4, &h, 0);
    assert_int_equal(b[0].ejected, 1); /* 1 of 2 members: at the cap */
    for (int i = 0; i < 3; i++)
        gw_health_on_failure(&b[1], peers, 4, &h, 0);
    assert_int_equal(b[1].ejected, 0); /* 2 of 2 would be over it */
    assert_int_equal(b[1].healthy, 1);
}

/* Active checks and ejection together: healthy is "not down and not ejected", whichever ends
 * last. */
static void test_down_and_ejected(void **state)
{
    assert_true(gw_health_set_down(&b[0], true));
    assert_false(gw_health_set_down(&b[0], true)); /* no change */
    assert_int_equal(b[0].healthy, 0);
    for (int i = 0; i < 3; i++)
        gw_health_on_failure(&b[0], peers, 4, &h, 0);
    assert_int_equal(b[0].ejected, 1);
    /* The ejection ends while the checks still fail: it stays out. */
    assert_int_equal(gw_health_tick(peers, 4, 100), 1);
    assert_int_equal(b[0].ejected, 0);
    assert_int_equal(b[0].healthy, 0);
    assert_true(gw_health_set_down(&b[0], false));
    assert_int_equal(b[0].healthy, 1);

    /* The checks pass while it is ejected: it stays out until the ejection ends. */
    for (int i = 0; i < 3; i++)
        gw_health_on_failure(&b[1], peers, 4, &h, 1000);
    assert_true(gw_health_set_down(&b[1], true));
    assert_true(gw_health_set_down(&b[1], false));
    assert_int_equal(b[1].healthy, 0);
    assert_int_equal(gw_health_tick(peers, 4, 1100), 1);
    assert_int_equal(b[1].healthy, 1);
}

/* A slot that now holds another backend starts clean; a reload's table keeps ejections. */
static void test_reset_and_adopt(void **state)
{
    for (int i = 0; i < 3; i++)
        gw_health_on_failure(&b[0], peers, 4, &h, 1000);
    gw_health_set_down(&b[0], true);
    gw_backend_t fresh = {.healthy = 1, .member = 1};
    gw_health_adopt(&fresh, &b[0]);
    assert_int_equal(fresh.ejected, 1);
    assert_int_equal(fresh.ejected_until_ms, 1100);
    assert_int_equal(fresh.ejections, 1);
    assert_int_equal(fresh.down, 0); /* active checks start over */
    assert_int_equal(fresh.healthy, 0);
    gw_health_reset(&b[0]);
    assert_int_equal(b[0].ejected + b[0].ejections + b[0].down + b[0].fails, 0);
    assert_int_equal(b[0].ejected_until_ms, 0);
    assert_int_equal(b[0].healthy, 1);
}

/* The streak rule of active checks (hcheck.c). */
static void test_check_thresholds(void **state)
{
    const gw_health_cfg_t hc = {.healthy_threshold = 2, .unhealthy_threshold = 3};
    gw_hcheck_streak_t st = {0};
    assert_int_equal(gw_hcheck_record(&st, &hc, false, false), GW_HCHECK_SAME);
    assert_int_equal(gw_hcheck_record(&st, &hc, false, false), GW_HCHECK_SAME);
    assert_int_equal(gw_hcheck_record(&st, &hc, false, true), GW_HCHECK_SAME); /* streak broken */
    assert_int_equal(gw_hcheck_record(&st, &hc, false, false), GW_HCHECK_SAME);
    assert_int_equal(gw_hcheck_record(&st, &hc, false, false), GW_HCHECK_SAME);
    assert_int_equal(gw_hcheck_record(&st, &hc, false, false), GW_HCHECK_GO_DOWN);
    assert_int_equal(st.fails, 3);
    /* Down: more failures change nothing; two passes in a row bring it up. */
    assert_int_equal(gw_hcheck_record(&st, &hc, true, false), GW_HCHECK_SAME);
    assert_int_equal(gw_hcheck_record(&st, &hc, true, true), GW_HCHECK_SAME);
    assert_int_equal(gw_hcheck_record(&st, &hc, true, false), GW_HCHECK_SAME);
    assert_int_equal(gw_hcheck_record(&st, &hc, true, true), GW_HCHECK_SAME);
    assert_int_equal(gw_hcheck_record(&st, &hc, true, true), GW_HCHECK_GO_UP);
    /* Up: passes change nothing. */
    assert_int_equal(gw_hcheck_record(&st, &hc, false, true), GW_HCHECK_SAME);
    const gw_health_cfg_t one = {.healthy_threshold = 1, .unhealthy_threshold = 1};
    st = (gw_hcheck_streak_t){0};
    assert_int_equal(gw_hcheck_record(&st, &one, false, false), GW_HCHECK_GO_DOWN);
    assert_int_equal(gw_hcheck_record(&st, &one, true, true), GW_HCHECK_GO_UP);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_ejects_after_max_fails_in_a_row, reset),
        cmocka_unit_test_setup(test_readmitted_when_time_is_up, reset),
        cmocka_unit_test_setup(test_backoff_doubles_up_to_max, reset),
        cmocka_unit_test_setup(test_never_more_than_half, reset),
        cmocka_unit_test_setup(test_disabled, reset),
        cmocka_unit_test_setup(test_cap_counts_members_only, reset),
        cmocka_unit_test_setup(test_down_and_ejected, reset),
        cmocka_unit_test_setup(test_reset_and_adopt, reset),
        cmocka_unit_test_setup(test_check_thresholds, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
