/*
 * Unit tests for core/metrics.c: shard sizing, histogram bucketing, and the exact Prometheus text
 * rendered from two shards over a hand-built config (2 upstreams, 3 backends, 2 routes).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"

typedef struct fixture {
    gw_backend_cfg_t api_backends[2];
    gw_backend_cfg_t static_backends[1];
    gw_upstream_cfg_t upstreams[2];
    gw_route_cfg_t routes[2];
    gw_config_t cfg;
    gw_backend_t backend_state[3];
    gw_backend_t *backends[3];
    gw_metrics_shard_t *shards[2];
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->api_backends[0] = (gw_backend_cfg_t){.url = "http://127.0.0.1:9001", .gindex = 0};
    f->api_backends[1] = (gw_backend_cfg_t){.url = "http://127.0.0.1:9002", .gindex = 1};
    f->static_backends[0] = (gw_backend_cfg_t){.url = "http://127.0.0.1:9003", .gindex = 2};
    f->upstreams[0] =
        (gw_upstream_cfg_t){.name = "api", .backends = f->api_backends, .nbackends = 2};
    f->upstreams[1] =
        (gw_upstream_cfg_t){.name = "static", .backends = f->static_backends, .nbackends = 1};
    f->routes[0] = (gw_route_cfg_t){.name = "api", .upstream = 0};
    f->routes[1] = (gw_route_cfg_t){.name = "we\"ird\\name\n", .upstream = 1};
    f->cfg.upstreams = f->upstreams;
    f->cfg.nupstreams = 2;
    f->cfg.routes = f->routes;
    f->cfg.nroutes = 2;
    f->cfg.nbackends_total = 3;
    for (size_t i = 0; i < 3; i++) {
        const gw_backend_cfg_t *bc = i < 2 ? &f->api_backends[i] : &f->static_backends[0];
        f->backend_state[i] = (gw_backend_t){
            .cfg = bc, .upstream = i < 2 ? 0 : 1, .index = i < 2 ? (uint32_t)i : 0, .healthy = 1, .member = 1};
        f->backends[i] = &f->backend_state[i];
    }
    f->shards[0] = gw_metrics_shard_new(&f->cfg);
    f->shards[1] = gw_metrics_shard_new(&f->cfg);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    gw_metrics_shard_free(f->shards[0]);
    gw_metrics_shard_free(f->shards[1]);
    free(f);
    return 0;
}

/* Asserts that `text` holds `line` as a whole line. */
static void assert_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return;
    }
    fail_msg("line not found: %s\n--- rendered ---\n%s", line, text);
}

static void assert_no_line_prefix(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = text; *p;) {
        if (strncmp(p, prefix, n) == 0)
            fail_msg("unexpected line starting with: %s", prefix);
        const char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : p + strlen(p);
    }
}

static char *render(fixture_t *f, gw_backend_t *const *backends)
{
    size_t len = 0;
    char *text = gw_metrics_render(&f->cfg, f->shards, 2, backends, NULL, NULL, &len);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    assert_true(len > 0 && text[len - 1] == '\n');
    return text;
}

static void test_shard_sizes(void **state)
{
    fixture_t *f = *state;
    gw_metrics_shard_t *s = f->shards[0];
    assert_int_equal(s->nroutes, 2);
    assert_int_equal(s->nbackends, 3);
    assert_int_equal(s->nupstreams, 2);
    for (size_t r = 0; r <= s->nroutes; r++) {
        for (size_t c = 0; c < GW_STATUS_CLASSES; c++)
            assert_int_equal(s->requests[r][c], 0);
        assert_int_equal(s->request_duration[r].count, 0);
    }
    for (size_t b = 0; b < s->nbackends; b++) {
        assert_int_equal(s->upstream_requests[b], 0);
        for (size_t e = 0; e < GW_UERR_MAX; e++)
            assert_int_equal(s->upstream_errors[b][e], 0);
    }
    assert_int_equal(s->retries[1], 0);
    assert_int_equal(s->connections_total, 0);
}

static void test_status_class(void **state)
{
    (void)state;
    assert_int_equal(gw_status_class(101), 1);
    assert_int_equal(gw_status_class(200), 2);
    assert_int_equal(gw_status_class(404), 4);
    assert_int_equal(gw_status_class(599), 5);
    assert_int_equal(gw_status_class(600), 0);
    assert_int_equal(gw_status_class(99), 0);
}

static void test_histogram_observe(void **state)
{
    (void)state;
    gw_histogram_t h = {.count = 0};
    gw_histogram_observe(&h, 0);        /* le 0.0005 */
    gw_histogram_observe(&h, 500);      /* le 0.0005: bounds are inclusive */
    gw_histogram_observe(&h, 501);      /* le 0.001 */
    gw_histogram_observe(&h, 10000000); /* le 10 */
    gw_histogram_observe(&h, 30000000); /* le 30 */
    gw_histogram_observe(&h, 30000001); /* +Inf */
    assert_int_equal(h.buckets[0], 2);
    assert_int_equal(h.buckets[1], 1);
    assert_int_equal(h.buckets[13], 1);
    assert_int_equal(h.buckets[14], 1);
    assert_int_equal(h.buckets[GW_HIST_NBUCKETS], 1);
    assert_int_equal(h.count, 6);
    assert_int_equal(h.sum_us, 0 + 500 + 501 + 10000000 + 30000000 + 30000001);
}

static void test_render_requests(void **state)
{
    fixture_t *f = *state;
    gw_metrics_shard_t *a = f->shards[0], *b = f->shards[1];
    a->requests[0][2] = 2;
    b->requests[0][2] = 1;
    b->requests[0][5] = 4;
    a->requests[2][4] = 7; /* no route */
    a->requests[1][1] = 1; /* a 1xx on the oddly named route */

    char *text = render(f, f->backends);
    assert_line(text, "# HELP gw_requests_total Requests answered, by route and status class.");
    assert_line(text, "# TYPE gw_requests_total counter");
    assert_line(text, "gw_requests_total{route=\"api\",code=\"2xx\"} 3");
    assert_line(text, "gw_requests_total{route=\"api\",code=\"3xx\"} 0");
    assert_line(text, "gw_requests_total{route=\"api\",code=\"4xx\"} 0");
    assert_line(text, "gw_requests_total{route=\"api\",code=\"5xx\"} 4");
    assert_line(text, "gw_requests_total{route=\"(none)\",code=\"4xx\"} 7");
    assert_line(text, "gw_requests_total{route=\"(none)\",code=\"2xx\"} 0");
    /* The route name is `we"ird\name<newline>`. */
    assert_line(text, "gw_requests_total{route=\"we\\\"ird\\\\name\\n\",code=\"1xx\"} 1");
    assert_line(text, "gw_requests_total{route=\"we\\\"ird\\\\name\\n\",code=\"2xx\"} 0");
    /* 1xx and "other" appear only when non-zero. */
    assert_no_line_prefix(text, "gw_requests_total{route=\"api\",code=\"1xx\"}");
    assert_no_line_prefix(text, "gw_requests_total{route=\"api\",code=\"other\"}");
    free(text);

    b->requests[0][0] = 2;
    text = render(f, f->backends);
    assert_line(text, "gw_requests_total{route=\"api\",code=\"other\"} 2");
    free(text);
}

static void test_render_histogram(void **state)
{
    fixture_t *f = *state;
    gw_histogram_observe(&f->shards[0]->request_duration[0], 400);      /* 0.0004 s */
    gw_histogram_observe(&f->shards[1]->request_duration[0], 1000);     /* 0.001 s */
    gw_histogram_observe(&f->shards[1]->request_duration[0], 30000000); /* 30 s */
    gw_histogram_observe(&f->shards[0]->request_duration[0], 31000000); /* +Inf */

    char *text = render(f, f->backends);
    assert_line(text, "# TYPE gw_request_duration_seconds histogram");
    assert_line(text, "gw_request_duration_seconds_bucket{route=\"api\",le=\"0.0005\"} 1");
    assert_line(text, "gw_request_duration_seconds_bucket{route=\"api\",le=\"0.001\"} 2");
    assert_line(text, "gw_request_duration_seconds_bucket{route=\"api\",le=\"0.0025\"} 2");
    assert_line(text, "gw_request_duration_seconds_bucket{route=\"api\",le=\"10\"} 2");
    assert_line(text, "gw_request_duration_seconds_bucket{route=\"api\",le=\"30\"} 3");
    assert_line(text, "gw_request_duration_seconds_bucket{route=\"api\",le=\"+Inf\"} 4");
    assert_line(text, "gw_request_duration_seconds_sum{route=\"api\"} 61.0014");
    assert_line(text, "gw_request_duration_seconds_count{route=\"api\"} 4");
    /* Every route row, the unmatched one included, has a full (zero) series. */
    assert_line(text, "gw_request_duration_seconds_bucket{route=\"(none)\",le=\"+Inf\"} 0");
    assert_line(text, "gw_request_duration_seconds_sum{route=\"(none)\"} 0");
    assert_line(text, "gw_request_duration_seconds_count{route=\"(none)\"} 0");
    assert_line(text, "gw_request_duration_seconds_count{route=\"we\\\"ird\\\\name\\n\"} 0");
    free(text);
}

static void test_render_upstreams(void **state)
{
    fixture_t *f = *state;
    gw_metrics_shard_t *a = f->shards[0], *b = f->shards[1];
    a->upstream_requests[1] = 5;
    b->upstream_requests[1] = 6;
    b->upstream_requests[2] = 1;
    gw_histogram_observe(&a->upstream_latency[2], 2500);
    gw_histogram_observe(&b->upstream_latency[2], 7);
    a->upstream_errors[0][GW_UERR_TIMEOUT] = 2;
    b->upstream_errors[0][GW_UERR_TIMEOUT] = 1;
    b->upstream_errors[2][GW_UERR_RESET] = 9;
    a->retries[0] = 3;
    f->backend_state[1].inflight = 12;
    f->backend_state[2].healthy = 0;

    char *text = render(f, f->backends);
    assert_line(text, "# TYPE gw_upstream_requests_total counter");
    assert_line(text, "gw_upstream_requests_total{upstream=\"api\","
                      "backend=\"http://127.0.0.1:9001\"} 0");
    assert_line(text, "gw_upstream_requests_total{upstream=\"api\","
                      "backend=\"http://127.0.0.1:9002\"} 11");
    assert_line(text, "gw_upstream_requests_total{upstream=\"static\","
                      "backend=\"http://127.0.0.1:9003\"} 1");
    assert_line(text, "gw_upstream_latency_seconds_bucket{upstream=\"static\","
                      "backend=\"http://127.0.0.1:9003\",le=\"0.0005\"} 1");
    assert_line(text, "gw_upstream_latency_seconds_bucket{upstream=\"static\","
                      "backend=\"http://127.0.0.1:9003\",le=\"0.0025\"} 2");
    assert_line(text, "gw_upstream_latency_seconds_sum{upstream=\"static\","
                      "backend=\"http://127.0.0.1:9003\"} 0.002507");
    assert_line(text, "gw_upstream_latency_seconds_count{upstream=\"static\","
                      "backend=\"http://127.0.0.1:9003\"} 2");
    assert_line(text, "# TYPE gw_upstream_in_flight gauge");
    assert_line(text, "gw_upstream_in_flight{upstream=\"api\","
                      "backend=\"http://127.0.0.1:9002\"} 12");
    assert_line(text, "# TYPE gw_upstream_healthy gauge");
    assert_line(text, "gw_upstream_healthy{upstream=\"api\","
                      "backend=\"http://127.0.0.1:9001\"} 1");
    assert_line(text, "gw_upstream_healthy{upstream=\"static\","
                      "backend=\"http://127.0.0.1:9003\"} 0");
    assert_line(text, "gw_upstream_errors_total{upstream=\"api\","
                      "backend=\"http://127.0.0.1:9001\",kind=\"timeout\"} 3");
    assert_line(text, "gw_upstream_errors_total{upstream=\"api\","
                      "backend=\"http://127.0.0.1:9001\",kind=\"connect\"} 0");
    assert_line(text, "gw_upstream_errors_total{upstream=\"api\","
                      "backend=\"http://127.0.0.1:9001\",kind=\"protocol\"} 0");
    assert_line(text, "gw_upstream_errors_total{upstream=\"static\","
                      "backend=\"http://127.0.0.1:9003\",kind=\"reset\"} 9");
    assert_line(text, "gw_retries_total{upstream=\"api\"} 3");
    assert_line(text, "gw_retries_total{upstream=\"static\"} 0");
    free(text);

    /* Without a backend table the per-backend gauges are left out, counters stay. */
    text = render(f, NULL);
    assert_no_line_prefix(text, "gw_upstream_in_flight");
    assert_no_line_prefix(text, "gw_upstream_healthy");
    assert_line(text, "gw_retries_total{upstream=\"api\"} 3");
    free(text);
}

static void test_render_process(void **state)
{
    fixture_t *f = *state;
    f->shards[0]->connections_active = 2;
    f->shards[1]->connections_active = 1;
    f->shards[0]->connections_total = 10;
    f->shards[1]->connections_total = 32;

    char *text = render(f, f->backends);
    assert_line(text, "# TYPE gw_connections_active gauge");
    assert_line(text, "gw_connections_active 3");
    assert_line(text, "# TYPE gw_connections_total counter");
    assert_line(text, "gw_connections_total 42");
    assert_line(text, "# TYPE gw_workers gauge");
    assert_line(text, "gw_workers 2");
    assert_line(text, "# TYPE gw_build_info gauge");
    assert_true(strstr(text, "\ngw_build_info{version=\"") != NULL);
    free(text);
}

/* The Lua heap gauge: one sample per worker (a leak shows in one state, a sum would hide where),
 * and nothing at all in a config without Lua. */
static void test_render_lua_memory(void **state)
{
    fixture_t *f = *state;
    f->shards[0]->lua_memory_bytes = 120 * 1024;
    f->shards[1]->lua_memory_bytes = 98765;
    char *text = render(f, f->backends);
    assert_no_line_prefix(text, "gw_lua_memory_bytes");
    free(text);
    f->cfg.uses_lua = true;
    text = render(f, f->backends);
    assert_line(text, "# TYPE gw_lua_memory_bytes gauge");
    assert_line(text, "gw_lua_memory_bytes{worker=\"0\"} 122880");
    assert_line(text, "gw_lua_memory_bytes{worker=\"1\"} 98765");
    free(text);
}

/* gw_hedges_total: every outcome of each upstream with `hedge`, summed over the workers, and no
 * family at all when no upstream hedges. */
static void test_render_hedges(void **state)
{
    fixture_t *f = *state;
    f->shards[0]->hedges[1][GW_HEDGE_SENT] = 4;
    f->shards[1]->hedges[1][GW_HEDGE_SENT] = 3;
    f->shards[1]->hedges[1][GW_HEDGE_WON] = 5;
    f->shards[0]->hedges[1][GW_HEDGE_SKIPPED_BUDGET] = 2;
    char *text = render(f, f->backends);
    assert_no_line_prefix(text, "# HELP gw_hedges_total");
    assert_no_line_prefix(text, "gw_hedges_total");
    free(text);
    f->upstreams[1].hedge =
        (gw_hedge_cfg_t){.enabled = true, .after_ms = 25, .max = 1, .budget_percent = 10};
    text = render(f, f->backends);
    assert_line(text, "# TYPE gw_hedges_total counter");
    assert_line(text, "gw_hedges_total{upstream=\"static\",outcome=\"sent\"} 7");
    assert_line(text, "gw_hedges_total{upstream=\"static\",outcome=\"won\"} 5");
    assert_line(text, "gw_hedges_total{upstream=\"static\",outcome=\"lost\"} 0");
    assert_line(text, "gw_hedges_total{upstream=\"static\",outcome=\"failed\"} 0");
    assert_line(text, "gw_hedges_total{upstream=\"static\",outcome=\"skipped_budget\"} 2");
    assert_line(text, "gw_hedges_total{upstream=\"static\",outcome=\"skipped_no_backend\"} 0");
    assert_no_line_prefix(text, "gw_hedges_total{upstream=\"api\"");
    free(text);
}

/* Every sample line belongs to the family announced by the closest # TYPE line above it. */
static void test_render_families(void **state)
{
    fixture_t *f = *state;
    char *text = render(f, f->backends);
    char family[128] = "";
    char *save = NULL;
    int types = 0;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "# TYPE ", 7) == 0) {
            assert_true(sscanf(line + 7, "%127s", family) == 1);
            types++;
            continue;
        }
        if (line[0] == '#')
            continue;
        assert_true(family[0] != '\0');
        assert_memory_equal(line, family, strlen(family));
    }
    assert_int_equal(types, 13); /* gw_upstream_backends included */
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_shard_sizes, setup, teardown),
        cmocka_unit_test(test_status_class),
        cmocka_unit_test(test_histogram_observe),
        cmocka_unit_test_setup_teardown(test_render_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_histogram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_upstreams, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_process, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_lua_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_hedges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_families, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
