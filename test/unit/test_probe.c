/* Unit tests for Prequal probe replies in the three wire formats (core/probe.c, pure part). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "probe.h"

#define S(lit) GW_SLICE_LIT(lit)

static void test_headers_format(void **state)
{
    gw_header_t h[] = {{S("Content-Type"), S("text/plain")},
                       {S("x-prequal-rif"), S("7")},
                       {S("X-Prequal-Latency-Us"), S("2150")}};
    gw_probe_signals_t s;
    assert_true(gw_probe_parse_signals(h, 3, S(""), &s));
    assert_true(s.found);
    assert_int_equal(s.rif, 7);
    assert_int_equal(s.latency_us, 2150);
}

static void test_headers_need_both(void **state)
{
    gw_header_t h[] = {{S("X-Prequal-RIF"), S("7")}};
    gw_probe_signals_t s;
    assert_false(gw_probe_parse_headers(h, 1, &s));
    gw_header_t bad[] = {{S("X-Prequal-RIF"), S("-1")}, {S("X-Prequal-Latency-Us"), S("5")}};
    assert_false(gw_probe_parse_headers(bad, 2, &s));
    gw_header_t huge[] = {{S("X-Prequal-RIF"), S("99999999999")}, {S("X-Prequal-Latency-Us"), S("5")}};
    assert_false(gw_probe_parse_headers(huge, 2, &s));
}

static void test_json_format(void **state)
{
    gw_probe_signals_t s;
    assert_true(gw_probe_parse_signals(NULL, 0, S("{\"rif\": 3, \"latency_ms\": 2.5}"), &s));
    assert_int_equal(s.rif, 3);
    assert_int_equal(s.latency_us, 2500);
}

static void test_openprequal_format(void **state)
{
    gw_probe_signals_t s;
    assert_true(gw_probe_parse_signals(
        NULL, 0, S("{\"in_flight_requests\": 12, \"rif_avg_latency\": 0.0125, \"x\": [1]}"), &s));
    assert_int_equal(s.rif, 12);
    assert_int_equal(s.latency_us, 12500); /* seconds, not milliseconds */
}

static void test_headers_win_over_json(void **state)
{
    gw_header_t h[] = {{S("X-Prequal-RIF"), S("1")}, {S("X-Prequal-Latency-Us"), S("10")}};
    gw_probe_signals_t s;
    assert_true(gw_probe_parse_signals(h, 2, S("{\"rif\": 9, \"latency_ms\": 9}"), &s));
    assert_int_equal(s.rif, 1);
    assert_int_equal(s.latency_us, 10);
}

static void test_no_signals(void **state)
{
    gw_probe_signals_t s;
    assert_false(gw_probe_parse_signals(NULL, 0, S(""), &s));
    assert_false(s.found);
    assert_false(gw_probe_parse_signals(NULL, 0, S("not json"), &s));
    assert_false(gw_probe_parse_signals(NULL, 0, S("{\"status\":\"ok\"}"), &s));
    assert_false(gw_probe_parse_signals(NULL, 0, S("{\"rif\": \"3\", \"latency_ms\": 1}"), &s));
    assert_false(gw_probe_parse_signals(NULL, 0, S("{\"rif\": -3, \"latency_ms\": 1}"), &s));
    assert_false(gw_probe_parse_signals(NULL, 0, S("[1,2]"), &s));
    assert_false(s.found);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers_format),     cmocka_unit_test(test_headers_need_both),
        cmocka_unit_test(test_json_format),        cmocka_unit_test(test_openprequal_format),
        cmocka_unit_test(test_headers_win_over_json), cmocka_unit_test(test_no_signals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
