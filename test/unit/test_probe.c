/* Unit tests for Prequal probe replies in the three wire formats (core/probe.c, pure part). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

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
    gw_header_t huge[] = {{S("X-Prequal-RIF"), S("99999999999")},
                          {S("X-Prequal-Latency-Us"), S("5")}};
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

/* Found by fuzz_probe: a latency of 1e14 s overflowed the microsecond count (UBSan). */
static void test_openprequal_latency_too_large(void **state)
{
    gw_probe_signals_t s;
    assert_false(gw_probe_parse_signals(
        NULL, 0, S("{\"in_flight_requests\": 1, \"rif_avg_latency\": 1e14}"), &s));
    assert_true(gw_probe_parse_signals(
        NULL, 0, S("{\"in_flight_requests\": 1, \"rif_avg_latency\": 1e12}"), &s));
    assert_true(s.latency_us == 1000000000000000000ULL);
}

/* Found by fuzz_probe: the fields past the ones a reply keeps were added to the value of the
 * last one kept, so its signal no longer parsed. */
static void test_reply_extra_fields_ignored(void **state)
{
    char reply[4096];
    int n = snprintf(reply, sizeof reply, "HTTP/1.1 200 OK\r\nX-Prequal-Latency-Us: 40\r\n");
    for (int i = 0; i < GW_PROBE_HEADERS_MAX - 2; i++)
        n += snprintf(reply + n, sizeof reply - (size_t)n, "X-Pad-%d: p\r\n", i);
    n += snprintf(reply + n, sizeof reply - (size_t)n,
                  "X-Prequal-RIF: 4\r\nX-After: 1\r\nX-After-2: 2\r\nContent-Length: 0\r\n\r\n");
    gw_probe_reply_t r;
    gw_probe_reply_init(&r);
    assert_int_equal(gw_probe_reply_feed(&r, reply, (size_t)n), GW_PROBE_REPLY_DONE);
    assert_int_equal(r.nheaders, GW_PROBE_HEADERS_MAX);
    assert_true(gw_slice_eq(r.headers[GW_PROBE_HEADERS_MAX - 1].value, S("4")));
    gw_probe_signals_t s;
    assert_true(gw_probe_reply_signals(&r, &s));
    assert_int_equal(s.rif, 4);
    assert_int_equal(s.latency_us, 40);
    assert_true(r.keep);
}

/* A reply split across reads, a non-2xx one, and one with bytes after it. */
static void test_reply_feed(void **state)
{
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 29\r\n\r\n"
                             "{\"rif\": 5, \"latency_ms\": 0.5}";
    gw_probe_reply_t r;
    gw_probe_reply_init(&r);
    assert_int_equal(gw_probe_reply_feed(&r, ok, 20), GW_PROBE_REPLY_MORE);
    assert_int_equal(gw_probe_reply_feed(&r, ok + 20, sizeof ok - 21), GW_PROBE_REPLY_DONE);
    gw_probe_signals_t s;
    assert_true(gw_probe_reply_signals(&r, &s));
    assert_int_equal(s.rif, 5);
    assert_int_equal(s.latency_us, 500);
    assert_true(r.keep);

    static const char err[] = "HTTP/1.1 503 Busy\r\nX-Prequal-RIF: 1\r\n"
                              "X-Prequal-Latency-Us: 1\r\nContent-Length: 0\r\n\r\nX";
    gw_probe_reply_init(&r);
    assert_int_equal(gw_probe_reply_feed(&r, err, sizeof err - 1), GW_PROBE_REPLY_DONE);
    assert_false(gw_probe_reply_signals(&r, &s));
    assert_false(r.keep); /* a byte after the reply: out of step */

    gw_probe_reply_init(&r);
    assert_int_equal(gw_probe_reply_feed(&r, "HTTP/1.1 2x", 11), GW_PROBE_REPLY_BAD);
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
        cmocka_unit_test(test_headers_format),
        cmocka_unit_test(test_headers_need_both),
        cmocka_unit_test(test_json_format),
        cmocka_unit_test(test_openprequal_format),
        cmocka_unit_test(test_headers_win_over_json),
        cmocka_unit_test(test_no_signals),
        cmocka_unit_test(test_openprequal_latency_too_large),
        cmocka_unit_test(test_reply_extra_fields_ignored),
        cmocka_unit_test(test_reply_feed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
