/*
 * Unit tests for core/config.c: the values and defaults of a loaded config, and the exact
 * `<file>:<line>: <key path>: <problem>` message of every kind of error.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <llhttp.h>

#include "config.h"
#include "log.h"

static gw_config_t *load_ok(const char *src)
{
    char *err = NULL;
    gw_config_t *cfg = gw_config_load_string("gw.lua", src, NULL, &err);
    if (cfg == NULL)
        fail_msg("unexpected error: %s", err);
    assert_null(err);
    return cfg;
}

static void check_err(const char *src, const char *expected)
{
    char *err = NULL;
    gw_config_t *cfg = gw_config_load_string("gw.lua", src, NULL, &err);
    if (cfg != NULL) {
        gw_config_free(cfg);
        fail_msg("expected error \"%s\", got a config", expected);
    }
    assert_non_null(err);
    assert_string_equal(err, expected);
    free(err);
}

/* Checks only the first line (Lua errors carry a traceback after it). */
static void check_err_line1(const char *src, const char *expected)
{
    char *err = NULL;
    gw_config_t *cfg = gw_config_load_string("gw.lua", src, NULL, &err);
    assert_null(cfg);
    assert_non_null(err);
    size_t n = strcspn(err, "\n");
    err[n] = '\0';
    assert_string_equal(err, expected);
    free(err);
}

static uint16_t port_of(const struct sockaddr_storage *sa)
{
    if (sa->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
}

static char *addr_of(const struct sockaddr_storage *sa, char *buf, size_t cap)
{
    if (sa->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)cap);
    else
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, (socklen_t)cap);
    return buf;
}

#define MINIMAL_UPSTREAMS "upstreams = { api = { backends = { 'http://127.0.0.1:9001' } } },\n"
#define MINIMAL_ROUTES "routes = { { upstream = 'api' } },\n"

static const char full_src[] =
    "local port = 9001\n"                                                  /* 1 */
    "return {\n"                                                           /* 2 */
    "  listen = { '127.0.0.1:8080', '[::1]:8081', ':8082' },\n"            /* 3 */
    "  workers = 4,\n"                                                     /* 4 */
    "  admin = { listen = '127.0.0.1:9999', token = 'sekret' },\n"         /* 5 */
    "  limits = { header_bytes = 16384, uri_bytes = 4096, headers = 50,\n" /* 6 */
    "             body_bytes = 0, connections = 1000 },\n"                 /* 7 */
    "  timeouts = { header_ms = 1, body_ms = 2, keepalive_ms = 3, send_ms = 4, drain_ms = 5 },\n"
    "  access_log = 'stdout',\n"                                                 /* 9 */
    "  log_level = 'warn',\n"                                                    /* 10 */
    "  upstreams = {\n"                                                          /* 11 */
    "    web = { backends = { 'http://127.0.0.1:' .. port .. '/' } },\n"         /* 12 */
    "    api = {\n"                                                              /* 13 */
    "      strategy = 'round_robin',\n"                                          /* 14 */
    "      backends = { { url = 'http://127.0.0.1:9101', weight = 5 },\n"        /* 15 */
    "                   'http://[::1]:9102', 'http://localhost' },\n"            /* 16 */
    "      timeouts = { connect_ms = 100, read_ms = 200, send_ms = 300 },\n"     /* 17 */
    "      retries = { max = 3, backoff_ms = 25 },\n"                            /* 18 */
    "      keepalive = { max_idle = 0, idle_timeout_ms = 5000 },\n"              /* 19 */
    "    },\n"                                                                   /* 20 */
    "  },\n"                                                                     /* 21 */
    "  routes = {\n"                                                             /* 22 */
    "    { name = 'api',\n"                                                      /* 23 */
    "      match = { path_prefix = '/api/', host = 'API.Example.COM',\n"         /* 24 */
    "                methods = { 'GET', 'POST', 'M-SEARCH' } },\n"               /* 25 */
    "      upstream = 'api', strip_prefix = true, add_prefix = '/v1',\n"         /* 26 */
    "      preserve_host = true,\n"                                              /* 27 */
    "      request_headers = { set = { ['X-Zeta'] = 'z', ['X-Alpha'] = 'a' },\n" /* 28 */
    "                          remove = { 'Cookie', 'X-Debug' } },\n"            /* 29 */
    "      response_headers = { set = { Server = 'gw' } } },\n"                  /* 30 */
    "    { match = { host = '*.example.com.' }, respond = { status = 404,\n"     /* 31 */
    "      body = 'nope\\0!', headers = { ['Content-Type'] = 'text/plain', B = '1' } } },\n"
    "    { upstream = 'web' },\n" /* 33 */
    "  },\n"                      /* 34 */
    "}\n";

static void test_full_config(void **state)
{
    (void)state;
    gw_config_t *cfg = load_ok(full_src);
    char buf[64];

    assert_string_equal(cfg->path, "gw.lua");
    assert_int_equal(cfg->nlisten, 3);
    assert_string_equal(cfg->listen[0].text, "127.0.0.1:8080");
    assert_int_equal(cfg->listen[0].sa.ss_family, AF_INET);
    assert_int_equal(cfg->listen[0].salen, sizeof(struct sockaddr_in));
    assert_string_equal(addr_of(&cfg->listen[0].sa, buf, sizeof(buf)), "127.0.0.1");
    assert_int_equal(port_of(&cfg->listen[0].sa), 8080);
    assert_string_equal(cfg->listen[1].text, "[::1]:8081");
    assert_int_equal(cfg->listen[1].sa.ss_family, AF_INET6);
    assert_string_equal(addr_of(&cfg->listen[1].sa, buf, sizeof(buf)), "::1");
    assert_int_equal(port_of(&cfg->listen[1].sa), 8081);
    assert_string_equal(cfg->listen[2].text, ":8082");
    assert_string_equal(addr_of(&cfg->listen[2].sa, buf, sizeof(buf)), "0.0.0.0");
    assert_int_equal(port_of(&cfg->listen[2].sa), 8082);

    assert_int_equal(cfg->workers, 4);
    assert_true(cfg->admin_enabled);
    assert_string_equal(cfg->admin_listen.text, "127.0.0.1:9999");
    assert_int_equal(port_of(&cfg->admin_listen.sa), 9999);
    assert_string_equal(cfg->admin_token, "sekret");

    assert_int_equal(cfg->limits.max_header_bytes, 16384);
    assert_int_equal(cfg->limits.max_uri_bytes, 4096);
    assert_int_equal(cfg->limits.max_headers, 50);
    assert_int_equal(cfg->limits.max_body_bytes, 0);
    assert_int_equal(cfg->limits.max_connections, 1000);
    assert_int_equal(cfg->timeouts.header_ms, 1);
    assert_int_equal(cfg->timeouts.body_ms, 2);
    assert_int_equal(cfg->timeouts.keepalive_ms, 3);
    assert_int_equal(cfg->timeouts.send_ms, 4);
    assert_int_equal(cfg->timeouts.drain_ms, 5);
    assert_string_equal(cfg->access_log, "stdout");
    assert_int_equal(cfg->log_level, GW_LOG_WARN);

    /* Upstreams are sorted by name; gindex follows that order. */
    assert_int_equal(cfg->nupstreams, 2);
    assert_int_equal(cfg->nbackends_total, 4);
    gw_upstream_cfg_t *api = &cfg->upstreams[0];
    assert_string_equal(api->name, "api");
    assert_string_equal(api->strategy, "round_robin");
    assert_int_equal(api->nbackends, 3);
    assert_string_equal(api->backends[0].url, "http://127.0.0.1:9101");
    assert_string_equal(api->backends[0].authority, "127.0.0.1:9101");
    assert_int_equal(api->backends[0].weight, 5);
    assert_int_equal(api->backends[0].gindex, 0);
    assert_int_equal(port_of(&api->backends[0].sa), 9101);
    assert_int_equal(api->backends[0].salen, sizeof(struct sockaddr_in));
    assert_string_equal(api->backends[1].url, "http://[::1]:9102");
    assert_string_equal(api->backends[1].authority, "[::1]:9102");
    assert_int_equal(api->backends[1].sa.ss_family, AF_INET6);
    assert_int_equal(api->backends[1].weight, 1);
    assert_int_equal(api->backends[1].gindex, 1);
    assert_string_equal(api->backends[2].url, "http://localhost");
    assert_string_equal(api->backends[2].authority, "localhost");
    assert_int_equal(port_of(&api->backends[2].sa), 80);
    assert_int_equal(api->backends[2].gindex, 2);
    assert_int_equal(api->connect_timeout_ms, 100);
    assert_int_equal(api->read_timeout_ms, 200);
    assert_int_equal(api->send_timeout_ms, 300);
    assert_int_equal(api->retries_max, 3);
    assert_int_equal(api->retry_backoff_ms, 25);
    assert_int_equal(api->keepalive_max_idle, 0);
    assert_int_equal(api->keepalive_idle_ms, 5000);
    gw_upstream_cfg_t *web = &cfg->upstreams[1];
    assert_string_equal(web->name, "web");
    assert_string_equal(web->backends[0].url, "http://127.0.0.1:9001/");
    assert_string_equal(web->backends[0].authority, "127.0.0.1:9001");
    assert_int_equal(web->backends[0].gindex, 3);
    assert_int_equal(gw_config_upstream_index(cfg, "api"), 0);
    assert_int_equal(gw_config_upstream_index(cfg, "web"), 1);
    assert_int_equal(gw_config_upstream_index(cfg, "nope"), -1);

    assert_int_equal(cfg->nroutes, 3);
    gw_route_cfg_t *r = &cfg->routes[0];
    assert_string_equal(r->name, "api");
    assert_int_equal(r->line, 23);
    assert_string_equal(r->path_prefix, "/api/");
    assert_string_equal(r->host, "api.example.com");
    assert_int_equal(r->methods, (1ull << HTTP_GET) | (1ull << HTTP_POST) | (1ull << HTTP_MSEARCH));
    assert_int_equal(r->upstream, 0);
    assert_true(r->strip_prefix);
    assert_string_equal(r->add_prefix, "/v1");
    assert_true(r->preserve_host);
    assert_false(r->has_respond);
    assert_int_equal(r->request_headers.nset, 2);
    assert_string_equal(r->request_headers.set[0].name, "x-alpha");
    assert_string_equal(r->request_headers.set[0].value, "a");
    assert_string_equal(r->request_headers.set[1].name, "x-zeta");
    assert_string_equal(r->request_headers.set[1].value, "z");
    assert_int_equal(r->request_headers.nremove, 2);
    assert_string_equal(r->request_headers.remove[0], "cookie");
    assert_string_equal(r->request_headers.remove[1], "x-debug");
    assert_int_equal(r->response_headers.nset, 1);
    assert_string_equal(r->response_headers.set[0].name, "server");
    assert_string_equal(r->response_headers.set[0].value, "gw");
    assert_int_equal(r->response_headers.nremove, 0);

    r = &cfg->routes[1];
    assert_string_equal(r->name, "routes[2]");
    assert_int_equal(r->line, 31);
    assert_null(r->path_prefix);
    assert_string_equal(r->host, "*.example.com");
    assert_int_equal(r->methods, 0);
    assert_int_equal(r->upstream, -1);
    assert_true(r->has_respond);
    assert_int_equal(r->respond.status, 404);
    assert_int_equal(r->respond.body_len, 6);
    assert_memory_equal(r->respond.body, "nope\0!", 6);
    assert_int_equal(r->respond.nheaders, 2);
    assert_string_equal(r->respond.headers[0].name, "b");
    assert_string_equal(r->respond.headers[0].value, "1");
    assert_string_equal(r->respond.headers[1].name, "content-type");
    assert_string_equal(r->respond.headers[1].value, "text/plain");

    r = &cfg->routes[2];
    assert_string_equal(r->name, "routes[3]");
    assert_int_equal(r->line, 33);
    assert_int_equal(r->upstream, 1);
    assert_false(r->strip_prefix);
    assert_null(r->add_prefix);
    assert_false(r->preserve_host);
    assert_null(r->request_headers.set);
    assert_int_equal(r->request_headers.nremove, 0);
    /* Path handling defaults: merge "//", refuse encoded slashes, forward the client's bytes. */
    assert_true(r->merge_slashes);
    assert_false(r->decode_slash);
    assert_false(r->normalize_path);
    gw_config_free(cfg);
}

static void test_route_path_options(void **state)
{
    (void)state;
    gw_config_t *cfg = load_ok("return {\n" MINIMAL_UPSTREAMS
                               "routes = { { upstream = 'api', merge_slashes = false,\n"
                               "  encoded_slash = 'decode', normalize_path = true,\n"
                               "  match = { path_prefix = '//a/' } },\n"
                               " { upstream = 'api', encoded_slash = 'reject',\n"
                               "  match = { path_prefix = '/b/' } } } }");
    assert_false(cfg->routes[0].merge_slashes);
    assert_true(cfg->routes[0].decode_slash);
    assert_true(cfg->routes[0].normalize_path);
    assert_true(cfg->routes[1].merge_slashes);
    assert_false(cfg->routes[1].decode_slash);
    assert_false(cfg->routes[1].normalize_path);
    gw_config_free(cfg);

#define PROUTE(x) "return {\n" MINIMAL_UPSTREAMS "routes = {\n { upstream = 'api',\n" x " } } }"
    check_err(PROUTE("merge_slashes = 'no'"),
              "gw.lua:5: routes[1].merge_slashes: expected boolean, got string");
    check_err(PROUTE("normalize_path = 1"),
              "gw.lua:5: routes[1].normalize_path: expected boolean, got number");
    check_err(
        PROUTE("encoded_slash = 'allow'"),
        "gw.lua:5: routes[1].encoded_slash: expected \"reject\" or \"decode\", got \"allow\"");
    check_err(PROUTE("encoded_slash = true"),
              "gw.lua:5: routes[1].encoded_slash: expected string, got boolean");
    /* A prefix that is not in canonical form could never match: say which one would. */
    check_err(PROUTE("match = { path_prefix = '/%61pi/' }"),
              "gw.lua:5: routes[1].match.path_prefix: \"/%61pi/\" never matches: requests are "
              "matched on their canonical path; write \"/api/\"");
    check_err(PROUTE("match = { path_prefix = '//api/' }"),
              "gw.lua:5: routes[1].match.path_prefix: \"//api/\" never matches: requests are "
              "matched on their canonical path; write \"/api/\"");
    check_err(PROUTE("match = { path_prefix = '/a/../b' }"),
              "gw.lua:5: routes[1].match.path_prefix: \"/a/../b\" never matches: requests are "
              "matched on their canonical path; write \"/b\"");
    check_err(PROUTE("match = { path_prefix = '/api;v=1/' }"),
              "gw.lua:5: routes[1].match.path_prefix: \"/api;v=1/\" never matches: requests are "
              "matched on their canonical path; write \"/api/\"");
    check_err(PROUTE("match = { path_prefix = '/a%2fb' }"),
              "gw.lua:5: routes[1].match.path_prefix: \"/a%2fb\" is not a valid path (a bad "
              "%-escape, %00, or an encoded slash or backslash where encoded_slash is \"reject\")");
    check_err(PROUTE("match = { path_prefix = '/a%zz' }"),
              "gw.lua:5: routes[1].match.path_prefix: \"/a%zz\" is not a valid path (a bad "
              "%-escape, %00, or an encoded slash or backslash where encoded_slash is \"reject\")");
    check_err(PROUTE("encoded_slash = 'decode', match = { path_prefix = '/a%2fb' }"),
              "gw.lua:5: routes[1].match.path_prefix: \"/a%2fb\" never matches: requests are "
              "matched on their canonical path; write \"/a/b\"");
#undef PROUTE
    check_err("return {\n" MINIMAL_UPSTREAMS
              "routes = {\n { respond = {}, normalize_path = true } } }",
              "gw.lua:4: routes[1].normalize_path: only allowed on routes with an upstream");
}

static void test_defaults(void **state)
{
    (void)state;
    gw_config_t *cfg = load_ok("return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "}\n");
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    char buf[64];

    assert_int_equal(cfg->nlisten, 1);
    assert_string_equal(cfg->listen[0].text, "0.0.0.0:8080");
    assert_string_equal(addr_of(&cfg->listen[0].sa, buf, sizeof(buf)), "0.0.0.0");
    assert_int_equal(port_of(&cfg->listen[0].sa), 8080);
    assert_int_equal(cfg->workers, ncpu > 256 ? 256 : ncpu);
    assert_true(cfg->admin_enabled);
    assert_string_equal(cfg->admin_listen.text, "127.0.0.1:9901");
    assert_int_equal(port_of(&cfg->admin_listen.sa), 9901);
    assert_null(cfg->admin_token);
    assert_int_equal(cfg->limits.max_header_bytes, 32768);
    assert_int_equal(cfg->limits.max_uri_bytes, 8192);
    assert_int_equal(cfg->limits.max_headers, 100);
    assert_int_equal(cfg->limits.max_body_bytes, 16 * 1024 * 1024);
    assert_int_equal(cfg->limits.max_connections, 16384);
    assert_int_equal(cfg->timeouts.header_ms, 10000);
    assert_int_equal(cfg->timeouts.body_ms, 60000);
    assert_int_equal(cfg->timeouts.keepalive_ms, 75000);
    assert_int_equal(cfg->timeouts.send_ms, 60000);
    assert_int_equal(cfg->timeouts.drain_ms, 10000);
    assert_null(cfg->access_log);
    assert_int_equal(cfg->log_level, GW_LOG_INFO);

    gw_upstream_cfg_t *u = &cfg->upstreams[0];
    assert_string_equal(u->strategy, "prequal"); /* the default of every upstream */
    assert_string_equal(u->probe_path, "/probe");
    /* The paper's parameters (docs/PREQUAL.md §2), but a pool with room for every backend. */
    assert_int_equal(u->prequal.pool_size, 0);
    assert_int_equal(u->prequal.max_age_ms, 1000);
    assert_true(u->prequal.probes_per_request == 3.0);
    assert_true(u->prequal.removes_per_request == 1.0);
    assert_true(u->prequal.delta == 1.0);
    assert_int_equal(u->prequal.max_reuse, 16);
    assert_true(u->prequal.q_rif == 0.84); /* 2^-0.25, rounded as docs/PREQUAL.md gives it */
    assert_int_equal(u->prequal.rif_history, 64);
    assert_int_equal(u->prequal.probe_timeout_ms, 50);
    assert_int_equal(u->prequal.idle_probe_ms, 250);
    assert_int_equal(u->prequal.max_probes_in_flight, 64);
    assert_int_equal(u->prequal.probe_rate, 1000);
    assert_int_equal(u->prequal.latency_smoothing_ms, 100);
    assert_int_equal(u->connect_timeout_ms, 1000);
    assert_int_equal(u->read_timeout_ms, 30000);
    assert_int_equal(u->send_timeout_ms, 30000);
    assert_int_equal(u->retries_max, 2);
    assert_int_equal(u->retry_backoff_ms, 0);
    assert_int_equal(u->keepalive_max_idle, 64);
    assert_int_equal(u->keepalive_idle_ms, 60000);
    assert_int_equal(u->backends[0].weight, 1);

    gw_route_cfg_t *r = &cfg->routes[0];
    assert_string_equal(r->name, "routes[1]");
    assert_int_equal(r->line, 3);
    assert_null(r->path_prefix);
    assert_null(r->host);
    assert_int_equal(r->methods, 0);
    assert_int_equal(r->upstream, 0);
    gw_config_free(cfg);
}

static void test_workers_auto_and_misc_values(void **state)
{
    (void)state;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    gw_config_t *cfg =
        load_ok("return { workers = 'auto', admin = false, access_log = false,\n"
                "  listen = '9000', log_level = 'debug',\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "}");
    assert_int_equal(cfg->workers, ncpu > 256 ? 256 : ncpu);
    assert_false(cfg->admin_enabled);
    assert_null(cfg->admin_listen.text);
    assert_null(cfg->access_log);
    assert_string_equal(cfg->listen[0].text, "9000");
    assert_int_equal(port_of(&cfg->listen[0].sa), 9000);
    assert_int_equal(cfg->log_level, GW_LOG_DEBUG);
    assert_string_equal(cfg->via, "prequal-gw"); /* the default pseudonym */
    gw_config_free(cfg);

    cfg = load_ok("return { via = false,\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "}");
    assert_null(cfg->via);
    gw_config_free(cfg);
    cfg = load_ok("return { via = 'edge-1.example',\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "}");
    assert_string_equal(cfg->via, "edge-1.example");
    gw_config_free(cfg);

    cfg = load_ok("return { workers = 256, log_level = 'error', access_log = '/tmp/a.log',\n"
                  "  admin = { token = 't' },\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "}");
    assert_int_equal(cfg->workers, 256);
    assert_int_equal(cfg->log_level, GW_LOG_ERR);
    assert_string_equal(cfg->access_log, "/tmp/a.log");
    assert_string_equal(cfg->admin_listen.text, "127.0.0.1:9901");
    assert_string_equal(cfg->admin_token, "t");
    gw_config_free(cfg);
}

static void test_respond_only_config(void **state)
{
    (void)state;
    gw_config_t *cfg = load_ok("return { routes = {\n"
                               "  { match = { path_prefix = '/health' }, respond = { status = 200,"
                               " body = 'ok' },\n"
                               "    response_headers = { remove = { 'Server' } } },\n"
                               "  { respond = { status = 204 } },\n"
                               "} }");
    assert_int_equal(cfg->nupstreams, 0);
    assert_null(cfg->upstreams);
    assert_int_equal(cfg->nbackends_total, 0);
    assert_int_equal(cfg->nroutes, 2);
    assert_true(cfg->routes[0].has_respond);
    assert_int_equal(cfg->routes[0].respond.status, 200);
    assert_string_equal(cfg->routes[0].respond.body, "ok");
    assert_int_equal(cfg->routes[0].respond.body_len, 2);
    assert_int_equal(cfg->routes[0].response_headers.nremove, 1);
    assert_string_equal(cfg->routes[0].response_headers.remove[0], "server");
    assert_int_equal(cfg->routes[1].respond.status, 204);
    assert_string_equal(cfg->routes[1].respond.body, "");
    assert_int_equal(cfg->routes[1].respond.body_len, 0);
    assert_int_equal(cfg->routes[1].respond.nheaders, 0);
    gw_config_free(cfg);

    /* status defaults to 200. */
    cfg = load_ok("return { routes = { { respond = { body = 'x' } } } }");
    assert_int_equal(cfg->routes[0].respond.status, 200);
    gw_config_free(cfg);
}

static void test_method_masks(void **state)
{
    (void)state;
    gw_config_t *cfg = load_ok("return {\n" MINIMAL_UPSTREAMS "routes = {\n"
                               "  { match = { methods = { 'DELETE' } }, upstream = 'api' },\n"
                               "  { match = { methods = { 'GET', 'HEAD', 'GET' } }, upstream = "
                               "'api' },\n"
                               "  { match = { methods = { 'PATCH', 'SOURCE', 'OPTIONS', 'PUT' } "
                               "}, upstream = 'api' },\n"
                               "} }");
    assert_int_equal(cfg->routes[0].methods, 1ull << HTTP_DELETE);
    assert_int_equal(cfg->routes[0].methods, 1);
    assert_int_equal(cfg->routes[1].methods, (1ull << HTTP_GET) | (1ull << HTTP_HEAD));
    assert_int_equal(cfg->routes[2].methods, (1ull << HTTP_PATCH) | (1ull << HTTP_SOURCE) |
                                                 (1ull << HTTP_OPTIONS) | (1ull << HTTP_PUT));
    gw_config_free(cfg);

    check_err("return {\n" MINIMAL_UPSTREAMS "routes = { { upstream = 'api',\n"
              "  match = { methods = {\n"
              "    'GET',\n"
              "    'get' } } } } }",
              "gw.lua:6: routes[1].match.methods[2]: unknown method \"get\"");
    check_err("return {\n" MINIMAL_UPSTREAMS
              "routes = { { upstream = 'api', match = { methods = { 'BREW' } } } } }",
              "gw.lua:3: routes[1].match.methods[1]: unknown method \"BREW\"");
    check_err("return {\n" MINIMAL_UPSTREAMS
              "routes = { { upstream = 'api', match = { methods = { 1 } } } } }",
              "gw.lua:3: routes[1].match.methods[1]: expected string, got number");
    check_err("return {\n" MINIMAL_UPSTREAMS
              "routes = { { upstream = 'api', match = { methods = {} } } } }",
              "gw.lua:3: routes[1].match.methods: must not be empty (leave it out to match "
              "every method)");
    check_err("return {\n" MINIMAL_UPSTREAMS
              "routes = { { upstream = 'api', match = { methods = 'GET' } } } }",
              "gw.lua:3: routes[1].match.methods: expected a list (table), got string");
}

static void test_header_ops(void **state)
{
    (void)state;
    gw_config_t *cfg = load_ok("return {\n" MINIMAL_UPSTREAMS "routes = { { upstream = 'api',\n"
                               "  request_headers = { set = { ['X-B'] = 'b', ['x-c'] = 'c',"
                               " ['X-A'] = 'a', Host = 'h' },\n"
                               "                      remove = { 'X-Forwarded-For', 'Accept' } "
                               "} } } }");
    gw_header_ops_t *ops = &cfg->routes[0].request_headers;
    assert_int_equal(ops->nset, 4);
    assert_string_equal(ops->set[0].name, "host");
    assert_string_equal(ops->set[1].name, "x-a");
    assert_string_equal(ops->set[1].value, "a");
    assert_string_equal(ops->set[2].name, "x-b");
    assert_string_equal(ops->set[3].name, "x-c");
    assert_int_equal(ops->nremove, 2);
    assert_string_equal(ops->remove[0], "x-forwarded-for");
    assert_string_equal(ops->remove[1], "accept");
    gw_config_free(cfg);

#define HROUTE(x) "return {\n" MINIMAL_UPSTREAMS "routes = { { upstream = 'api',\n" x " } } }"
    check_err(HROUTE("  request_headers = { set = { ['Bad Name'] = 'x' } }"),
              "gw.lua:4: routes[1].request_headers.set[\"Bad Name\"]: invalid header name \"Bad "
              "Name\"");
    check_err(HROUTE("  request_headers = { set = { X = 'a\\r\\nb' } }"),
              "gw.lua:4: routes[1].request_headers.set.X: header values must not contain CR, LF "
              "or NUL");
    check_err(HROUTE("  request_headers = { set = { X = 'a\\0b' } }"),
              "gw.lua:4: routes[1].request_headers.set.X: header values must not contain CR, LF "
              "or NUL");
    check_err(HROUTE("  response_headers = { set = { X = 1 } }"),
              "gw.lua:4: routes[1].response_headers.set.X: expected string, got number");
    check_err(HROUTE("  response_headers = { set = { ['Content-Length'] = '1' } }"),
              "gw.lua:4: routes[1].response_headers.set[\"Content-Length\"]: Content-Length is "
              "managed by the gateway and cannot be changed");
    check_err(HROUTE("  response_headers = { remove = { 'a', 'B', 'b' } }"),
              "gw.lua:4: routes[1].response_headers.remove[3]: duplicate header \"b\"");
    check_err(HROUTE("  response_headers = { set = { X = '1' }, remove = { 'x' } }"),
              "gw.lua:4: routes[1].response_headers.remove[1]: \"x\" is both set and removed");
    check_err(HROUTE("  response_headers = { set = { X = '1', x = '2' } }"),
              "gw.lua:4: routes[1].response_headers.set: duplicate header \"x\" (names are "
              "case-insensitive)");
    check_err(HROUTE("  response_headers = { set = { 'x' } }"),
              "gw.lua:4: routes[1].response_headers.set: header names must be strings");
    check_err(HROUTE("  response_headers = { remove = 'x' }"),
              "gw.lua:4: routes[1].response_headers.remove: expected a list (table), got string");
    check_err(HROUTE("  response_headers = { add = {} }"),
              "gw.lua:4: routes[1].response_headers.add: unknown key");
    check_err(HROUTE("  response_headers = 5"),
              "gw.lua:4: routes[1].response_headers: expected table, got number");
}

static void test_unknown_keys(void **state)
{
    (void)state;
    check_err("return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "  plugins = {},\n}",
              "gw.lua:4: plugins: unknown key");
    check_err("return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "  hooks = { on_connect = print },\n}",
              "gw.lua:4: hooks.on_connect: unknown key");
    check_err("return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "  [1] = 'x',\n}",
              "gw.lua:4: [1]: unknown key");
    check_err("return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "  admin = { port = 1 },\n}",
              "gw.lua:4: admin.port: unknown key");
    check_err("return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "  limits = { body = 1 },\n}",
              "gw.lua:4: limits.body: unknown key");
    check_err("return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "  timeouts = {\n  read_ms = 1 },\n}",
              "gw.lua:5: timeouts.read_ms: unknown key");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  health = { fails = 1 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.health.fails: unknown key");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  timeouts = { idle_ms = 1 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.timeouts.idle_ms: unknown key");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  retries = { count = 1 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.retries.count: unknown key");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  keepalive = { max = 1 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.keepalive.max: unknown key");
    check_err("return {\n upstreams = { api = { backends = {\n"
              "  { url = 'http://127.0.0.1:1', wieght = 2 } } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.backends[1].wieght: unknown key");
    check_err("return {\n" MINIMAL_UPSTREAMS "routes = {\n { upstream = 'api',\n"
              "  on_requets = function(req) local a, b = 1, 2 return { a } end } } }",
              "gw.lua:5: routes[1].on_requets: unknown key");
    check_err("return {\n" MINIMAL_UPSTREAMS "routes = {\n { upstream = 'api',\n"
              "  match = { path = '/' } } } }",
              "gw.lua:5: routes[1].match.path: unknown key");
    check_err("return {\n routes = {\n { respond = {\n code = 200 } } } }",
              "gw.lua:4: routes[1].respond.code: unknown key");
}

static void test_type_and_integer_errors(void **state)
{
    (void)state;
#define TOP(x) "return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES x "\n}"
    check_err(TOP("limits = { body_bytes = -1 }"),
              "gw.lua:4: limits.body_bytes: expected a non-negative integer, got -1");
    check_err(TOP("limits = { header_bytes = 0 }"),
              "gw.lua:4: limits.header_bytes: expected a positive integer, got 0");
    check_err(TOP("limits = { headers = 1.5 }"),
              "gw.lua:4: limits.headers: expected a positive integer, got 1.5");
    check_err(TOP("limits = { connections = 2^32 }"),
              "gw.lua:4: limits.connections: expected a positive integer, got 4294967296 "
              "(maximum 4294967295)");
    check_err(TOP("limits = { connections = '10' }"),
              "gw.lua:4: limits.connections: expected a positive integer, got string");
    check_err(TOP("limits = { connections = 0/0 }"),
              "gw.lua:4: limits.connections: expected a positive integer, got nan");
    check_err(TOP("limits = { uri_bytes = 40000 }"),
              "gw.lua:4: limits.uri_bytes: must not exceed limits.header_bytes (32768)");
    check_err(TOP("limits = 5"), "gw.lua:4: limits: expected table, got number");
    check_err(TOP("timeouts = { header_ms = 0 }"),
              "gw.lua:4: timeouts.header_ms: expected a positive integer, got 0");
    check_err(TOP("workers = 0"),
              "gw.lua:4: workers: expected an integer between 1 and 256, got 0");
    check_err(TOP("workers = 257"),
              "gw.lua:4: workers: expected an integer between 1 and 256, got 257");
    check_err(TOP("workers = 'many'"),
              "gw.lua:4: workers: expected an integer between 1 and 256 or \"auto\", got \"many\"");
    check_err(TOP("workers = true"),
              "gw.lua:4: workers: expected an integer between 1 and 256 or \"auto\", got boolean");
    check_err(TOP("log_level = 'verbose'"),
              "gw.lua:4: log_level: expected \"debug\", \"info\", \"warn\" or \"error\", got "
              "\"verbose\"");
    check_err(TOP("log_level = 1"), "gw.lua:4: log_level: expected string, got number");
    check_err(TOP("access_log = true"), "gw.lua:4: access_log: expected string or false, got true");
    check_err(TOP("access_log = ''"), "gw.lua:4: access_log: must not be empty");
    check_err(TOP("via = true"), "gw.lua:4: via: expected string or false, got true");
    check_err(TOP("via = 5"), "gw.lua:4: via: expected string or false, got number");
    check_err(TOP("via = ''"), "gw.lua:4: via: must be 1 to 64 characters");
    check_err(TOP("via = string.rep('v', 65)"), "gw.lua:4: via: must be 1 to 64 characters");
    check_err(TOP("via = 'my proxy'"),
              "gw.lua:4: via: must be a token: letters, digits and !#$%&'*+-.^_`|~");
    check_err(TOP("via = 'gw\\r\\nX: y'"),
              "gw.lua:4: via: must be a token: letters, digits and !#$%&'*+-.^_`|~");
    check_err(TOP("admin = true"), "gw.lua:4: admin: expected table or false, got true");
    check_err(TOP("admin = { token = 5 }"), "gw.lua:4: admin.token: expected string, got number");
    check_err(TOP("admin = { token = '' }"), "gw.lua:4: admin.token: must not be empty");
    check_err(TOP("listen = 8080"),
              "gw.lua:4: listen: expected string or list of strings, got number");
    check_err(TOP("listen = {}"), "gw.lua:4: listen: must not be empty");
    check_err(TOP("listen = { a = '1' }"), "gw.lua:4: listen: expected a list, found key \"a\"");
    check_err(TOP("listen = { '127.0.0.1:1', 2 }"),
              "gw.lua:4: listen[2]: expected string, got number");

    /* Upstream-level integers. */
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  retries = {\n max = 11 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:4: upstreams.api.retries.max: expected an integer between 0 and 10, got 11");
    check_err("return {\n upstreams = { api = { backends = {\n"
              "  { url = 'http://127.0.0.1:1', weight = 1001 } } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.backends[1].weight: expected an integer between 1 and "
              "1000, got 1001");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  timeouts = { connect_ms = -5 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.timeouts.connect_ms: expected a positive integer, got -5");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  keepalive = { max_idle = -1 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.keepalive.max_idle: expected a non-negative integer, got "
              "-1");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  strategy = 'prequal2' } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.strategy: unknown strategy \"prequal2\" (known: "
              "prequal, round_robin, weighted_round_robin, random, weighted_random, least_conn, p2c, "
              "ewma, least_score)");
    check_err("return {\n upstreams = { api = 'http://127.0.0.1:1' },\n" MINIMAL_ROUTES "}",
              "gw.lua:2: upstreams.api: expected table, got string");
    check_err("return {\n upstreams = { 'http://127.0.0.1:1' },\n" MINIMAL_ROUTES "}",
              "gw.lua:2: upstreams[1]: upstream names must be strings");
    check_err("return {\n upstreams = { ['a b'] = { backends = { 'http://127.0.0.1:1' } } "
              "},\n" MINIMAL_ROUTES "}",
              "gw.lua:2: upstreams[\"a b\"]: upstream names may contain only letters, digits, "
              "'_', '-' and '.'");
}

static void test_prequal_params(void **state)
{
    gw_config_t *cfg = load_ok("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
                               "  prequal = { probe_path = '/load', q_rif = 0.6, probes_per_request = 1.5,\n"
                               "              pool_size = 8, latency_smoothing_ms = 250 } } },\n"
                               MINIMAL_ROUTES "}");
    const gw_upstream_cfg_t *u = &cfg->upstreams[0];
    assert_string_equal(u->probe_path, "/load");
    assert_true(u->prequal.q_rif == 0.6);
    assert_true(u->prequal.probes_per_request == 1.5);
    assert_int_equal(u->prequal.pool_size, 8);
    assert_int_equal(u->prequal.latency_smoothing_ms, 250);
    assert_int_equal(u->prequal.max_reuse, 16); /* untouched keys keep their defaults */
    gw_config_free(cfg);
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  prequal = {\n q_rif = 1.5 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:4: upstreams.api.prequal.q_rif: must be in [0, 1]");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  prequal = { pool_size = 1025 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.prequal.pool_size: must be in [0, 1024]");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  prequal = { latency_smoothing_ms = 0 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.prequal.latency_smoothing_ms: must be in [1, 60000]");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  prequal = { probe_path = 'probe' } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.prequal.probe_path: must start with \"/\"");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  prequal = { q = 1 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.prequal.q: unknown key");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  prequal = { delta = 'x' } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.prequal.delta: expected number, got string");
}

static void test_hedge(void **state)
{
    gw_config_t *cfg =
        load_ok("return {\n upstreams = {\n"
                "  api = { backends = { 'http://127.0.0.1:1' }, hedge = { after_ms = 25 } },\n"
                "  web = { backends = { 'http://127.0.0.1:2' },\n"
                "          hedge = { after_quantile = 0.95, max = 1, budget_percent = 5 } },\n"
                "  off = { backends = { 'http://127.0.0.1:3' } } },\n" MINIMAL_ROUTES "}");
    const gw_hedge_cfg_t *h = &cfg->upstreams[0].hedge;
    assert_true(h->enabled);
    assert_int_equal(h->after_ms, 25);
    assert_true(h->after_quantile == 0);
    assert_int_equal(h->max, 1);
    assert_int_equal(h->budget_percent, 10); /* the default */
    h = &cfg->upstreams[2].hedge;            /* upstreams are sorted by name: api, off, web */
    assert_true(h->enabled);
    assert_int_equal(h->after_ms, 0);
    assert_true(h->after_quantile == 0.95);
    assert_int_equal(h->budget_percent, 5);
    assert_false(cfg->upstreams[1].hedge.enabled); /* off unless given */
    gw_config_free(cfg);
#define HEDGE_UP "return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n  hedge = "
    check_err(HEDGE_UP "{} } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.hedge: needs after_ms or after_quantile");
    check_err(
        HEDGE_UP "{ after_ms = 25,\n after_quantile = 0.9 } } },\n" MINIMAL_ROUTES "}",
        "gw.lua:4: upstreams.api.hedge.after_quantile: give after_ms or after_quantile, not both");
    check_err(
        HEDGE_UP "{ after_ms = 0 } } },\n" MINIMAL_ROUTES "}",
        "gw.lua:3: upstreams.api.hedge.after_ms: expected an integer between 1 and 60000, got 0");
    check_err(HEDGE_UP "{ after_quantile = 1 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.hedge.after_quantile: expected a number above 0 and below "
              "1, got 1");
    check_err(
        HEDGE_UP "{ after_quantile = '0.9' } } },\n" MINIMAL_ROUTES "}",
        "gw.lua:3: upstreams.api.hedge.after_quantile: expected a number above 0 and below 1, got "
        "string");
    check_err(
        HEDGE_UP "{ after_ms = 25, max = 2 } } },\n" MINIMAL_ROUTES "}",
        "gw.lua:3: upstreams.api.hedge.max: only 1 is supported (one hedge per request), got 2");
    check_err(
        HEDGE_UP "{ after_ms = 25, budget_percent = 101 } } },\n" MINIMAL_ROUTES "}",
        "gw.lua:3: upstreams.api.hedge.budget_percent: expected an integer between 1 and 100, "
        "got 101");
    check_err(HEDGE_UP "{ after_ms = 25, delay = 1 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.hedge.delay: unknown key");
    check_err(HEDGE_UP "{ after_ms = 500 },\n timeouts = { read_ms = 500 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.hedge.after_ms: must be below timeouts.read_ms (500)");
    check_err(HEDGE_UP "true } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.hedge: expected table, got boolean");
#undef HEDGE_UP
}

static void test_lua_hooks_and_strategies(void **state)
{
    gw_config_t *cfg = load_ok(
        "local function h() end\n"
        "return {\n"
        " upstreams = { api = { backends = { { url = 'http://127.0.0.1:1', meta = { zone = 'a' } } },\n"
        "   strategy = { name = 'mine', pick = function(b) return b[1] end },\n"
        "   fallback_strategy = 'least_conn' } },\n"
        " hooks = { on_request = h, on_log = h },\n"
        " routes = { { upstream = 'api', on_response = h, rewrite_path = h,\n"
        "              lua = { on_error = 'continue' } },\n"
        "            { upstream = 'api' } },\n"
        "}");
    assert_true(cfg->uses_lua);
    assert_int_equal(cfg->global_hooks, GW_HOOK_BIT(GW_HOOK_ON_REQUEST) | GW_HOOK_BIT(GW_HOOK_ON_LOG));
    assert_int_equal(cfg->routes[0].hooks,
                     GW_HOOK_BIT(GW_HOOK_ON_RESPONSE) | GW_HOOK_BIT(GW_HOOK_REWRITE_PATH));
    assert_true(cfg->routes[0].lua_fail_open);
    assert_int_equal(cfg->routes[0].buffer_response, 0);
    assert_int_equal(cfg->routes[1].hooks, 0);
    assert_false(cfg->routes[1].lua_fail_open);
    assert_true(cfg->upstreams[0].lua_strategy);
    assert_string_equal(cfg->upstreams[0].strategy, "mine");
    assert_string_equal(cfg->upstreams[0].fallback_strategy, "least_conn");
    gw_config_free(cfg);
    cfg = load_ok("return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "}\n");
    assert_false(cfg->uses_lua); /* no Lua: workers never create a lua_State */
    assert_string_equal(cfg->upstreams[0].fallback_strategy, "round_robin");
    gw_config_free(cfg);
    check_err("return {\n" MINIMAL_UPSTREAMS "routes = { { upstream = 'api',\n on_request = 'x' } },\n}",
              "gw.lua:4: routes[1].on_request: expected function, got string");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  strategy = { name = 'x' } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.strategy.pick: required (a Lua strategy needs a pick function)");
    check_err("return {\n" MINIMAL_UPSTREAMS "routes = { { upstream = 'api',\n lua = { on_error = 'x' } } },\n}",
              "gw.lua:4: routes[1].lua.on_error: expected \"fail\" or \"continue\", got \"x\"");
}

static void test_health(void **state)
{
    gw_config_t *cfg = load_ok("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
                               "  health = { max_fails = 5, eject_ms = 200, max_eject_ms = 800,\n"
                               "             max_ejected_percent = 30 } } },\n" MINIMAL_ROUTES "}");
    assert_int_equal(cfg->upstreams[0].health.max_fails, 5);
    assert_int_equal(cfg->upstreams[0].health.eject_ms, 200);
    assert_int_equal(cfg->upstreams[0].health.max_eject_ms, 800);
    assert_int_equal(cfg->upstreams[0].health.max_ejected_percent, 30);
    gw_config_free(cfg);
    cfg = load_ok("return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "}\n");
    assert_int_equal(cfg->upstreams[0].health.max_fails, 3);
    assert_int_equal(cfg->upstreams[0].health.eject_ms, 1000);
    assert_int_equal(cfg->upstreams[0].health.max_eject_ms, 30000);
    assert_int_equal(cfg->upstreams[0].health.max_ejected_percent, 50);
    gw_config_free(cfg);
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  health = { max_ejected_percent = 101 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.health.max_ejected_percent: expected an integer between 0 and "
              "100, got 101");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  health = { eject_ms = 500,\n max_eject_ms = 100 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:4: upstreams.api.health.max_eject_ms: must not be less than eject_ms (500)");

    /* Active checks. */
    cfg = load_ok("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
                  "  health = { path = '/healthz?deep=1', interval_ms = 1000, timeout_ms = 300,\n"
                  "             healthy_threshold = 1, unhealthy_threshold = 5 } } },\n" MINIMAL_ROUTES "}");
    assert_string_equal(cfg->upstreams[0].health.path, "/healthz?deep=1");
    assert_int_equal(cfg->upstreams[0].health.interval_ms, 1000);
    assert_int_equal(cfg->upstreams[0].health.timeout_ms, 300);
    assert_int_equal(cfg->upstreams[0].health.healthy_threshold, 1);
    assert_int_equal(cfg->upstreams[0].health.unhealthy_threshold, 5);
    gw_config_free(cfg);
    cfg = load_ok("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
                  "  health = { path = '/health' } } },\n" MINIMAL_ROUTES "}");
    assert_int_equal(cfg->upstreams[0].health.interval_ms, 2000);
    assert_int_equal(cfg->upstreams[0].health.timeout_ms, 500);
    assert_int_equal(cfg->upstreams[0].health.healthy_threshold, 2);
    assert_int_equal(cfg->upstreams[0].health.unhealthy_threshold, 3);
    gw_config_free(cfg);
    cfg = load_ok("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
                  "  health = { path = '/health', interval_ms = 200 } } },\n" MINIMAL_ROUTES "}");
    assert_int_equal(cfg->upstreams[0].health.timeout_ms, 200);
    gw_config_free(cfg);
    cfg = load_ok("return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "}\n");
    assert_null(cfg->upstreams[0].health.path);
    gw_config_free(cfg);
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  health = { path = 'health' } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.health.path: must start with \"/\"");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  health = { path = '/a b' } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.health.path: must not contain spaces or '#'");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  health = { path = '/h', interval_ms = 100,\n timeout_ms = 200 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:4: upstreams.api.health.timeout_ms: must not be more than interval_ms (100)");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  health = { path = '/h', unhealthy_threshold = 0 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.health.unhealthy_threshold: expected a positive integer, got 0");
    check_err("return {\n upstreams = { api = { backends = { 'http://127.0.0.1:1' },\n"
              "  health = { interval_ms = 1000 } } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.health.interval_ms: active checks need health.path");
}

static void test_required(void **state)
{
    (void)state;
    check_err(
        "return {\n upstreams = {\n   api = {\n strategy = 'round_robin' } },\n" MINIMAL_ROUTES "}",
        "gw.lua:3: upstreams.api.backends: required (or turn on `registration` to add backends at run time)");
    check_err("return {\n upstreams = { api = {\n backends = {} } },\n" MINIMAL_ROUTES "}",
              "gw.lua:3: upstreams.api.backends: must not be empty (or turn on `registration` to add backends at run time)");
    check_err(
        "return {\n upstreams = { api = { backends = {\n { weight = 2 } } } },\n" MINIMAL_ROUTES
        "}",
        "gw.lua:3: upstreams.api.backends[1].url: required");
    check_err("return {\n" MINIMAL_UPSTREAMS "}", "gw.lua:1: routes: required");
    check_err("return {\n" MINIMAL_UPSTREAMS "routes = {} }",
              "gw.lua:3: routes: must not be empty");
    check_err("return {\n" MINIMAL_UPSTREAMS "routes = {\n {\n match = {} } } }",
              "gw.lua:4: routes[1]: one of upstream or respond is required");
    check_err("return {\n" MINIMAL_UPSTREAMS
              "routes = {\n {\n upstream = 'api', respond = { status = 200 } } } }",
              "gw.lua:4: routes[1]: upstream and respond are mutually exclusive");
    check_err("return {\n" MINIMAL_UPSTREAMS "routes = {\n 'api' } }",
              "gw.lua:4: routes[1]: expected table, got string");
}

static void test_bad_urls(void **state)
{
    (void)state;
#define URL(u) "return {\n upstreams = { api = { backends = {\n" u " } } },\n" MINIMAL_ROUTES "}"
    check_err(URL("'https://127.0.0.1:443'"),
              "gw.lua:3: upstreams.api.backends[1]: \"https://127.0.0.1:443\": https upstreams "
              "are not supported yet");
    check_err(URL("'127.0.0.1:80'"),
              "gw.lua:3: upstreams.api.backends[1]: \"127.0.0.1:80\": expected a URL of the form "
              "http://host[:port]");
    check_err(URL("'ftp://x'"), "gw.lua:3: upstreams.api.backends[1]: \"ftp://x\": expected a URL "
                                "of the form http://host[:port]");
    check_err(URL("'http://127.0.0.1:80/api'"),
              "gw.lua:3: upstreams.api.backends[1]: \"http://127.0.0.1:80/api\": upstream URLs "
              "cannot have a path (use add_prefix on the route)");
    check_err(URL("'http://user:pw@127.0.0.1'"),
              "gw.lua:3: upstreams.api.backends[1]: \"http://user:pw@127.0.0.1\": user info is not "
              "allowed in upstream URLs");
    check_err(URL("'http://127.0.0.1/?a=b'"),
              "gw.lua:3: upstreams.api.backends[1]: \"http://127.0.0.1/?a=b\": queries and "
              "fragments are not allowed in upstream URLs");
    check_err(URL("'http://127.0.0.1:0'"),
              "gw.lua:3: upstreams.api.backends[1]: \"http://127.0.0.1:0\": the port must be a "
              "number from 1 to 65535");
    check_err(URL("'http://127.0.0.1:'"),
              "gw.lua:3: upstreams.api.backends[1]: \"http://127.0.0.1:\": the port must be a "
              "number from 1 to 65535");
    check_err(URL("'http://127.0.0.1:65536'"),
              "gw.lua:3: upstreams.api.backends[1]: \"http://127.0.0.1:65536\": the port must be "
              "a number from 1 to 65535");
    check_err(URL("'http://:80'"),
              "gw.lua:3: upstreams.api.backends[1]: \"http://:80\": missing host");
    check_err(URL("'http://[::1:80'"),
              "gw.lua:3: upstreams.api.backends[1]: \"http://[::1:80\": unterminated IPv6 address");
    check_err(URL("'http://a b'"), "gw.lua:3: upstreams.api.backends[1]: \"http://a b\": invalid "
                                   "host");
    check_err(URL("{ url = 'https://x' }"),
              "gw.lua:3: upstreams.api.backends[1].url: \"https://x\": https upstreams are not "
              "supported yet");
    check_err(URL("true"), "gw.lua:3: upstreams.api.backends[1]: expected a URL string or a "
                           "table, got boolean");
    check_err(URL("'http://127.0.0.1:1', 'http://127.0.0.1:1'"),
              "gw.lua:3: upstreams.api.backends[2]: duplicate backend \"http://127.0.0.1:1\" "
              "(same as backends[1])");
}

static void test_bad_addresses(void **state)
{
    (void)state;
#define LISTEN(x) "return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES x "\n}"
    check_err(LISTEN("listen = '127.0.0.1'"),
              "gw.lua:4: listen: invalid address \"127.0.0.1\": the port must be a number from 1 "
              "to 65535");
    check_err(LISTEN("listen = '127.0.0.1:0'"),
              "gw.lua:4: listen: invalid address \"127.0.0.1:0\": the port must be a number from "
              "1 to 65535");
    check_err(LISTEN("listen = ':99999'"),
              "gw.lua:4: listen: invalid address \":99999\": the port must be a number from 1 to "
              "65535");
    check_err(LISTEN("listen = '::1:80'"),
              "gw.lua:4: listen: invalid address \"::1:80\": write IPv6 addresses as "
              "\"[v6]:port\"");
    check_err(LISTEN("listen = '[::1]80'"),
              "gw.lua:4: listen: invalid address \"[::1]80\": expected \"[v6]:port\"");
    check_err(LISTEN("listen = {\n '127.0.0.1:80',\n '127.0.0.1:81',\n '127.0.0.1:80' }"),
              "gw.lua:7: listen[3]: duplicate address (same as listen[1])");
    check_err(LISTEN("listen = '127.0.0.1:9901'"),
              "gw.lua:4: listen: same address as the admin listener (admin.listen defaults to "
              "127.0.0.1:9901; set it or admin = false)");
    check_err(LISTEN("listen = { '127.0.0.1:1',\n '127.0.0.1:9901' }"),
              "gw.lua:5: listen[2]: same address as the admin listener (admin.listen defaults to "
              "127.0.0.1:9901; set it or admin = false)");
    check_err(LISTEN("listen = '127.0.0.1:3',\nadmin = {\n listen = '127.0.0.1:3' }"),
              "gw.lua:6: admin.listen: same address as listen");
    check_err(LISTEN("listen = { '127.0.0.1:1', '127.0.0.1:2' },\n"
                     "admin = {\n listen = '127.0.0.1:2' }"),
              "gw.lua:6: admin.listen: same address as listen[2]");
    check_err(LISTEN("admin = { listen = 'x:y' }"),
              "gw.lua:4: admin.listen: invalid address \"x:y\": the port must be a number from 1 "
              "to 65535");
}

static void test_route_errors(void **state)
{
    (void)state;
#define ROUTE(x) "return {\n" MINIMAL_UPSTREAMS "routes = {\n { upstream = 'api' },\n" x " } }"
    check_err(ROUTE("{ upstream = 'apx' }"), "gw.lua:5: routes[2].upstream: unknown upstream "
                                             "\"apx\"");
    check_err("return { routes = {\n { upstream = 'api' } } }",
              "gw.lua:2: routes[1].upstream: unknown upstream \"api\"");
    check_err(ROUTE("{ upstream = 'api',\n match = {\n path_prefix = 5 } }"),
              "gw.lua:7: routes[2].match.path_prefix: expected string, got number");
    check_err(ROUTE("{ upstream = 'api', match = { path_prefix = 'api/' } }"),
              "gw.lua:5: routes[2].match.path_prefix: must start with \"/\"");
    check_err(ROUTE("{ upstream = 'api', match = { path_prefix = '/a b' } }"),
              "gw.lua:5: routes[2].match.path_prefix: must not contain spaces, control "
              "characters, '?' or '#'");
    check_err(ROUTE("{ upstream = 'api', match = { host = 'a.com:80' } }"),
              "gw.lua:5: routes[2].match.host: invalid host \"a.com:80\" (expected a host name "
              "without a port, optionally starting with \"*.\")");
    check_err(ROUTE("{ upstream = 'api', strip_prefix = true }"),
              "gw.lua:5: routes[2].strip_prefix: requires match.path_prefix");
    check_err(ROUTE("{ upstream = 'api', strip_prefix = 'yes' }"),
              "gw.lua:5: routes[2].strip_prefix: expected boolean, got string");
    check_err(ROUTE("{ upstream = 'api', add_prefix = 'v1' }"),
              "gw.lua:5: routes[2].add_prefix: must start with \"/\"");
    check_err(ROUTE("{ upstream = 'api', name = 'routes[1]' }"),
              "gw.lua:5: routes[2].name: duplicate route name \"routes[1]\" (same as routes[1])");
    check_err(ROUTE("{ upstream = 'api', name = 7 }"),
              "gw.lua:5: routes[2].name: expected string, got number");
    check_err(ROUTE("{ upstream = 'api', match = 1 }"),
              "gw.lua:5: routes[2].match: expected table, got number");
    check_err(ROUTE("{ respond = { status = 99 } }"),
              "gw.lua:5: routes[2].respond.status: expected an integer between 100 and 599, got "
              "99");
    check_err(ROUTE("{ respond = { status = 600 } }"),
              "gw.lua:5: routes[2].respond.status: expected an integer between 100 and 599, got "
              "600");
    check_err(ROUTE("{ respond = { status = 204, body = 'x' } }"),
              "gw.lua:5: routes[2].respond.body: a 204 response cannot have a body");
    check_err(ROUTE("{ respond = { body = {} } }"),
              "gw.lua:5: routes[2].respond.body: expected string, got table");
    check_err(ROUTE("{ respond = { headers = { ['Transfer-Encoding'] = 'chunked' } } }"),
              "gw.lua:5: routes[2].respond.headers[\"Transfer-Encoding\"]: Transfer-Encoding is "
              "managed by the gateway and cannot be changed");
    check_err(ROUTE("{ respond = {}, strip_prefix = false }"),
              "gw.lua:5: routes[2].strip_prefix: only allowed on routes with an upstream");
    check_err(ROUTE("{ respond = {}, request_headers = {} }"),
              "gw.lua:5: routes[2].request_headers: only allowed on routes with an upstream");
    check_err(ROUTE("{ respond = 'ok' }"),
              "gw.lua:5: routes[2].respond: expected table, got string");
    check_err("return {\n" MINIMAL_UPSTREAMS "routes = { a = {} } }",
              "gw.lua:3: routes: expected a list, found key \"a\"");
}

static void test_lua_errors(void **state)
{
    (void)state;
    check_err_line1("return {\n  listen = ,\n}", "gw.lua:2: unexpected symbol near ','");
    check_err_line1("local x = 1\nerror('boom')\nreturn {}", "gw.lua:2: boom");
    check_err_line1("error({})", "(error object is a table value)");
    check_err_line1("local t = nil\nreturn { x = t.y }",
                    "gw.lua:2: attempt to index local 't' (a nil value)");
    check_err("return 5", "gw.lua:1: the config must return a table, got number");
    check_err("local x = 1\n", "gw.lua:1: the config must return a table, got nil");
    check_err_line1("return require('no_such_module_xyz')",
                    "module 'no_such_module_xyz' not found:");
}

static void test_line_mapping(void **state)
{
    (void)state;
    /* Pieces built in locals: errors inside them fall back to the key that refers to them. */
    check_err("local ups = {\n  api = { backends = { 'https://x' } },\n}\n"
              "return {\n  upstreams = ups,\n" MINIMAL_ROUTES "}",
              "gw.lua:5: upstreams.api.backends[1]: \"https://x\": https upstreams are not "
              "supported yet");
    /* No mapping at all: the line of the return. */
    check_err("local t = { routes = { { upstream = 'nope' } } }\n\nreturn t",
              "gw.lua:1: routes[1].upstream: unknown upstream \"nope\"");
    /* Comments, long strings and functions do not confuse the scanner. */
    check_err("-- return { a = 1 }\n"
              "--[==[ { ]] }\n ]==]\n"
              "local function f() return { routes = 1 } end\n"
              "return {\n"
              "  --[[ routes = { ]]\n"
              "  upstreams = { [ [[api]] ] = { backends = { [[http://127.0.0.1:1]] } } },\n"
              "  routes = { { name = \"a\\\"}\", upstream = \"api\" },\n"
              "     { upstream = 'api', match = { path_prefix = [=[\n"
              "x]=] } } },\n"
              "}",
              "gw.lua:9: routes[2].match.path_prefix: must start with \"/\"");
    /* ["quoted"] keys and explicit indices are mapped. */
    check_err("return {\n upstreams = {\n ['my-api'] = {\n backends = {\n [1] =\n 'https://x' "
              "} } },\n" MINIMAL_ROUTES "}",
              "gw.lua:5: upstreams[\"my-api\"].backends[1]: \"https://x\": https upstreams are not "
              "supported yet");
    /* Deterministic gindex: names are sorted no matter the order in the file. */
    gw_config_t *cfg = load_ok("return {\n upstreams = {\n"
                               "  zz = { backends = { 'http://127.0.0.1:3' } },\n"
                               "  aa = { backends = { 'http://127.0.0.1:1', 'http://127.0.0.1:2' "
                               "} },\n"
                               "  mm = { backends = { 'http://127.0.0.1:4' } },\n },\n"
                               " routes = { { upstream = 'zz' }, { upstream = 'aa' } } }");
    assert_string_equal(cfg->upstreams[0].name, "aa");
    assert_string_equal(cfg->upstreams[1].name, "mm");
    assert_string_equal(cfg->upstreams[2].name, "zz");
    assert_int_equal(cfg->upstreams[0].backends[1].gindex, 1);
    assert_int_equal(cfg->upstreams[1].backends[0].gindex, 2);
    assert_int_equal(cfg->upstreams[2].backends[0].gindex, 3);
    assert_int_equal(port_of(&cfg->upstreams[2].backends[0].sa), 3);
    assert_int_equal(cfg->nbackends_total, 4);
    assert_int_equal(cfg->routes[0].upstream, 2);
    assert_int_equal(cfg->routes[1].upstream, 0);
    gw_config_free(cfg);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_load_file_with_require(void **state)
{
    (void)state;
    char dir[] = "/tmp/gw_config_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char libdir[128], cfgpath[128], modpath[128], libmod[128], badpath[128];
    snprintf(libdir, sizeof(libdir), "%s/lib", dir);
    snprintf(cfgpath, sizeof(cfgpath), "%s/gateway.lua", dir);
    snprintf(modpath, sizeof(modpath), "%s/backends.lua", dir);
    snprintf(libmod, sizeof(libmod), "%s/lib/names.lua", dir);
    snprintf(badpath, sizeof(badpath), "%s/bad.lua", dir);
    assert_int_equal(mkdir(libdir, 0700), 0);
    write_file(modpath, "return { 'http://127.0.0.1:7001', 'http://127.0.0.1:7002' }\n");
    write_file(libmod, "return { route = 'from-lib' }\n");
    write_file(cfgpath, "#!/usr/bin/env prequal-gw\n"
                        "local backends = require('backends')\n"
                        "local names = require('names')\n"
                        "return {\n"
                        "  upstreams = { api = { backends = backends } },\n"
                        "  routes = {\n"
                        "    { name = names.route, upstream = 'api' },\n"
                        "  },\n"
                        "}\n");
    char *err = NULL;
    gw_config_t *cfg = gw_config_load(cfgpath, libdir, &err);
    if (cfg == NULL)
        fail_msg("unexpected error: %s", err);
    assert_string_equal(cfg->path, cfgpath);
    assert_int_equal(cfg->upstreams[0].nbackends, 2);
    assert_string_equal(cfg->upstreams[0].backends[1].url, "http://127.0.0.1:7002");
    assert_string_equal(cfg->routes[0].name, "from-lib");
    assert_int_equal(cfg->routes[0].line, 7);
    gw_config_free(cfg);

    /* Without lua_dir the second module is not found. */
    cfg = gw_config_load(cfgpath, NULL, &err);
    assert_null(cfg);
    assert_non_null(strstr(err, "module 'names' not found"));
    free(err);

    /* An error in a file names the file and the line. */
    write_file(badpath, "return {\n"
                        "  upstreams = { api = { backends = require('backends') } },\n"
                        "  routes = {\n"
                        "    { upstream = 'api',\n"
                        "      match = { methods = { 'GET', 'FETCH' } } },\n"
                        "  },\n"
                        "}\n");
    cfg = gw_config_load(badpath, NULL, &err);
    assert_null(cfg);
    char expected[256];
    snprintf(expected, sizeof(expected),
             "%s:5: routes[1].match.methods[2]: unknown method \"FETCH\"", badpath);
    assert_string_equal(err, expected);
    free(err);

    /* A missing file. */
    snprintf(expected, sizeof(expected), "%s/missing.lua", dir);
    cfg = gw_config_load(expected, NULL, &err);
    assert_null(cfg);
    assert_non_null(strstr(err, "missing.lua: cannot open: No such file or directory"));
    free(err);

    unlink(cfgpath);
    unlink(modpath);
    unlink(libmod);
    unlink(badpath);
    rmdir(libdir);
    rmdir(dir);
}

static void test_free_null_and_err_null(void **state)
{
    (void)state;
    gw_config_free(NULL);
    /* err may be NULL: the message is dropped, nothing leaks. */
    assert_null(gw_config_load_string("gw.lua", "return 1", NULL, NULL));
    /* "@name" chunk names are accepted too. */
    char *err = NULL;
    assert_null(gw_config_load_string("@x.lua", "return {}", NULL, &err));
    assert_string_equal(err, "x.lua:1: routes: required");
    free(err);
}

/* gateway.lua cannot end or fork the process; require and os.getenv still work. */
static void test_sandbox(void **state)
{
    (void)state;
    check_err_line1("local x = 1\nos.exit(0)\nreturn {}",
                    "gw.lua:2: os.exit is not available in gateway.lua");
    check_err_line1("os.execute('true')", "gw.lua:1: os.execute is not available in gateway.lua");
    check_err_line1("return { routes = io.popen('ls') }",
                    "gw.lua:1: io.popen is not available in gateway.lua");
    gw_config_t *cfg = load_ok("local s = require('string')\n"
                               "return { listen = os.getenv('PGW_NO_SUCH_VAR') or s.format('%d', "
                               "9000),\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "}");
    assert_string_equal(cfg->listen[0].text, "9000");
    gw_config_free(cfg);
}

/* The file runs under the limits it was loaded with, and the config keeps them for the other
 * evaluations (workers, membership hooks). */
static void test_evaluation_limits(void **state)
{
    (void)state;
    char dir[] = "/tmp/gw_config_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], expected[256];
    snprintf(path, sizeof path, "%s/gateway.lua", dir);
    const gw_lua_limits_t limits = {300, 32};
    char *err = NULL;

    write_file(path, "local n = 0\nwhile true do n = n + 1 end\n");
    assert_null(gw_config_load_limited(path, NULL, &limits, &err));
    snprintf(expected, sizeof expected,
             "%s:2: evaluation exceeded the time limit (300 ms, --config-timeout-ms)", path);
    err[strcspn(err, "\n")] = '\0';
    assert_string_equal(err, expected);
    free(err);

    /* No time limit here, so that only the memory limit can stop it on a loaded machine. */
    const gw_lua_limits_t memory_only = {0, 32};
    write_file(path, "local t = {}\nfor i = 1, 3e8 do t[i] = i end\nreturn {}\n");
    assert_null(gw_config_load_limited(path, NULL, &memory_only, &err));
    snprintf(expected, sizeof expected,
             "%s: evaluation exceeded the memory limit (32 MiB, --config-memory-mb)", path);
    assert_string_equal(err, expected);
    free(err);

    write_file(path, "return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "}\n");
    gw_config_t *cfg = gw_config_load_limited(path, NULL, &limits, &err);
    assert_non_null(cfg);
    assert_int_equal(cfg->lua_limits.time_ms, 300);
    assert_int_equal(cfg->lua_limits.memory_mb, 32);
    gw_config_free(cfg);
    cfg = gw_config_load(path, NULL, &err);
    assert_non_null(cfg);
    assert_int_equal(cfg->lua_limits.time_ms, GW_LUA_TIME_MS_DEFAULT);
    assert_int_equal(cfg->lua_limits.memory_mb, GW_LUA_MEMORY_MB_DEFAULT);
    gw_config_free(cfg);
    unlink(path);
    rmdir(dir);
}

/* 100,000 routes load (checking names is linear, not quadratic); a duplicate is still found and
 * names the route it repeats. */
static void test_many_routes(void **state)
{
    (void)state;
    static const char many[] =
        "local routes = {}\n"
        "for i = 1, 100000 do\n"
        "  routes[i] = { name = 'r' .. i, match = { path_prefix = '/p' .. i }, upstream = 'api' }\n"
        "end\n"
        "%s\n"
        "return {\n" MINIMAL_UPSTREAMS "routes = routes }";
    char src[1024];
    snprintf(src, sizeof src, many, "");
    gw_config_t *cfg = load_ok(src);
    assert_int_equal(cfg->nroutes, 100000);
    assert_string_equal(cfg->routes[99999].name, "r100000");
    assert_string_equal(cfg->routes[99999].path_prefix, "/p100000");
    gw_config_free(cfg);
    snprintf(src, sizeof src, many, "routes[100001] = { name = 'r7', upstream = 'api' }");
    check_err(src, "gw.lua:8: routes[100001].name: duplicate route name \"r7\" (same as "
                   "routes[7])");
    /* An unnamed route's default name counts too. */
    check_err("return {\n" MINIMAL_UPSTREAMS
              "routes = { { upstream = 'api' }, { name = 'routes[1]', upstream = 'api' } } }",
              "gw.lua:3: routes[2].name: duplicate route name \"routes[1]\" (same as routes[1])");
    /* The line map is searched, not scanned: a key written twice counts where it was written
     * last, as Lua takes its last value. */
    check_err("return {\n  workers = 1,\n  workers = 'many',\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES
              "}",
              "gw.lua:3: workers: expected an integer between 1 and 256 or \"auto\", got \"many\"");
}

/* An admin listener other hosts can reach needs a token, or insecure = true. */
static void test_admin_exposure(void **state)
{
    (void)state;
    static const char *const exposed[] = {":9901", "0.0.0.0:9901", "9901", "[::]:9901",
                                          "192.0.2.1:9901"};
    for (size_t i = 0; i < GW_ARRAY_LEN(exposed); i++) {
        char src[512], expected[512];
        snprintf(src, sizeof src,
                 "return {\n" MINIMAL_UPSTREAMS MINIMAL_ROUTES "admin = {\n  listen = '%s' },\n}",
                 exposed[i]);
        snprintf(expected, sizeof expected,
                 "gw.lua:5: admin.listen: \"%s\" is reachable from other hosts and admin.token is "
                 "not set (set a token, listen on 127.0.0.1, or set admin.insecure = true)",
                 exposed[i]);
        check_err(src, expected);
    }
    gw_config_t *cfg = load_ok(TOP("admin = { listen = ':9901', token = 't' }"));
    assert_false(cfg->admin_insecure);
    gw_config_free(cfg);
    cfg = load_ok(TOP("admin = { listen = '0.0.0.0:9901', insecure = true }"));
    assert_true(cfg->admin_insecure);
    assert_null(cfg->admin_token);
    gw_config_free(cfg);
    static const char *const loopback[] = {"127.0.0.1:9901", "127.1.2.3:9901", "[::1]:9901",
                                           "[::ffff:127.0.0.1]:9901", "localhost:9901"};
    for (size_t i = 0; i < GW_ARRAY_LEN(loopback); i++) {
        char src[512];
        snprintf(src, sizeof src, TOP("admin = { listen = '%s' }"), loopback[i]);
        cfg = load_ok(src);
        assert_false(cfg->admin_insecure);
        gw_config_free(cfg);
    }
    check_err(TOP("admin = { listen = ':9901', insecure = 'yes' }"),
              "gw.lua:4: admin.insecure: expected boolean, got string");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_config),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_workers_auto_and_misc_values),
        cmocka_unit_test(test_respond_only_config),
        cmocka_unit_test(test_method_masks),
        cmocka_unit_test(test_header_ops),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_type_and_integer_errors),
        cmocka_unit_test(test_required),
        cmocka_unit_test(test_health),
        cmocka_unit_test(test_lua_hooks_and_strategies),
        cmocka_unit_test(test_prequal_params),
        cmocka_unit_test(test_hedge),
        cmocka_unit_test(test_bad_urls),
        cmocka_unit_test(test_bad_addresses),
        cmocka_unit_test(test_route_errors),
        cmocka_unit_test(test_route_path_options),
        cmocka_unit_test(test_lua_errors),
        cmocka_unit_test(test_line_mapping),
        cmocka_unit_test(test_load_file_with_require),
        cmocka_unit_test(test_free_null_and_err_null),
        cmocka_unit_test(test_sandbox),
        cmocka_unit_test(test_evaluation_limits),
        cmocka_unit_test(test_many_routes),
        cmocka_unit_test(test_admin_exposure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
