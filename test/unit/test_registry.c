/*
 * Unit tests for core/cidr.c and core/registry.c (without a server: the API's decisions, slot
 * reuse, the `registration` config and its errors). Workers, hooks and the admin listener are
 * covered end to end by test/integration/test_registration.py.
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

#include "cidr.h"
#include "config.h"
#include "registry.h"

/* ---- cidr ---- */

static struct sockaddr_storage addr(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (inet_pton(AF_INET, ip, &((struct sockaddr_in *)&ss)->sin_addr) == 1)
        ss.ss_family = AF_INET;
    else if (inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1)
        ss.ss_family = AF_INET6;
    else
        fail_msg("bad test address %s", ip);
    return ss;
}

static bool in_range(const char *range, const char *ip)
{
    gw_cidr_t c;
    if (!gw_cidr_parse(range, &c))
        fail_msg("range %s did not parse", range);
    struct sockaddr_storage ss = addr(ip);
    return gw_cidr_match(&c, (const struct sockaddr *)&ss);
}

static void test_cidr_parse(void **state)
{
    (void)state;
    gw_cidr_t c;
    assert_true(gw_cidr_parse("10.0.0.0/8", &c));
    assert_int_equal(c.family, AF_INET);
    assert_int_equal(c.prefix, 8);
    assert_true(gw_cidr_parse("127.0.0.1", &c));
    assert_int_equal(c.prefix, 32);
    assert_true(gw_cidr_parse("::1", &c));
    assert_int_equal(c.family, AF_INET6);
    assert_int_equal(c.prefix, 128);
    assert_true(gw_cidr_parse("fd00::/8", &c));
    assert_true(gw_cidr_parse("0.0.0.0/0", &c));

    const char *bad[] = {"",
                         "10.0.0.0/",
                         "/8",
                         "10.0.0.0/33",
                         "::/129",
                         "10.0.0.1/8",
                         "fd00::1/8",
                         "10.0.0/8",
                         "example.com/8",
                         "10.0.0.0/8x",
                         "10.0.0.0/-1",
                         "10.0.0.0/0008"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (gw_cidr_parse(bad[i], &c))
            fail_msg("\"%s\" parsed", bad[i]);
}

static void test_cidr_match(void **state)
{
    (void)state;
    assert_true(in_range("10.0.0.0/8", "10.200.3.4"));
    assert_false(in_range("10.0.0.0/8", "11.0.0.1"));
    assert_true(in_range("192.168.1.0/25", "192.168.1.127"));
    assert_false(in_range("192.168.1.0/25", "192.168.1.128"));
    assert_true(in_range("127.0.0.1", "127.0.0.1"));
    assert_false(in_range("127.0.0.1", "127.0.0.2"));
    assert_true(in_range("0.0.0.0/0", "8.8.8.8"));
    assert_false(in_range("0.0.0.0/0", "::1"));
    assert_true(in_range("fd00::/8", "fd12:3456::1"));
    assert_false(in_range("fd00::/8", "fe80::1"));
    assert_true(in_range("::1/128", "::1"));
    /* An IPv4-mapped IPv6 address is the IPv4 address it carries, whichever way the range and
     * the address are written. */
    assert_true(in_range("10.0.0.0/8", "::ffff:10.1.2.3"));
    assert_false(in_range("10.0.0.0/8", "::ffff:11.1.2.3"));
    assert_true(in_range("::ffff:10.0.0.0/104", "10.1.2.3"));
    assert_true(in_range("::ffff:10.0.0.0/104", "::ffff:10.1.2.3"));
    assert_false(in_range("::ffff:10.0.0.0/104", "11.1.2.3"));
    assert_true(in_range("::ffff:127.0.0.1", "127.0.0.1"));
    assert_true(in_range("::/0", "8.8.8.8"));
    assert_true(in_range("0.0.0.0/0", "::ffff:8.8.8.8"));
    assert_false(in_range("0.0.0.0/0", "::8.8.8.8"));
    assert_false(in_range("::1/128", "127.0.0.1"));
}

static void test_sockaddr_equal(void **state)
{
    (void)state;
    struct sockaddr_storage a = addr("10.0.0.1"), b = addr("10.0.0.1"), c = addr("10.0.0.2");
    struct sockaddr_storage v6 = addr("::1"), v6b = addr("::1");
    ((struct sockaddr_in *)&a)->sin_port = ((struct sockaddr_in *)&b)->sin_port = htons(80);
    ((struct sockaddr_in *)&c)->sin_port = htons(80);
    ((struct sockaddr_in6 *)&v6b)->sin6_flowinfo = 7; /* not part of the address */
    socklen_t l4 = sizeof(struct sockaddr_in), l6 = sizeof(struct sockaddr_in6);
    assert_true(gw_sockaddr_equal(&a, l4, &b, l4));
    assert_false(gw_sockaddr_equal(&a, l4, &c, l4));
    ((struct sockaddr_in *)&b)->sin_port = htons(81);
    assert_false(gw_sockaddr_equal(&a, l4, &b, l4));
    assert_false(gw_sockaddr_equal(&a, l4, &v6, l6));
    assert_true(gw_sockaddr_equal(&v6, l6, &v6b, l6));
    /* [::ffff:10.0.0.1]:80 is 10.0.0.1:80, in either order; another port or address is not. */
    struct sockaddr_storage m = addr("::ffff:10.0.0.1");
    ((struct sockaddr_in6 *)&m)->sin6_port = htons(80);
    assert_true(gw_sockaddr_equal(&m, l6, &a, l4));
    assert_true(gw_sockaddr_equal(&a, l4, &m, l6));
    assert_false(gw_sockaddr_equal(&m, l6, &c, l4));
    assert_false(gw_sockaddr_equal(&m, l6, &b, l4));
    struct sockaddr_storage compat = addr("::10.0.0.1"); /* not mapped: another address */
    ((struct sockaddr_in6 *)&compat)->sin6_port = htons(80);
    assert_false(gw_sockaddr_equal(&compat, l6, &a, l4));
}

/* ---- registry ---- */

typedef struct fixture {
    gw_config_t *cfg;
    gw_registry_t *reg;
    char *json;
} fixture_t;

static gw_config_t *load(const char *src)
{
    char *err = NULL;
    gw_config_t *cfg = gw_config_load_string("gw.lua", src, NULL, &err);
    if (cfg == NULL)
        fail_msg("unexpected config error: %s", err);
    return cfg;
}

static fixture_t *open_registry(const char *src)
{
    fixture_t *f = calloc(1, sizeof *f);
    f->cfg = load(src);
    char *err = NULL;
    assert_int_equal(gw_registry_new(f->cfg, &f->reg, &err), 0);
    return f;
}

static void close_registry(fixture_t *f)
{
    free(f->json);
    gw_registry_free(f->reg);
    gw_config_free(f->cfg);
    free(f);
}

/* POSTs `body` to /register (reg) or /unregister; returns the status, f->json the body. */
static int call(fixture_t *f, bool reg, const char *body, uint64_t now)
{
    free(f->json);
    f->json = NULL;
    return gw_registry_handle(f->reg, reg, body, strlen(body), now, &f->json);
}

/* Like assert_error, for a body of `len` bytes that may hold NULs. */
static void assert_error_len(fixture_t *f, const char *body, size_t len, const char *message)
{
    free(f->json);
    f->json = NULL;
    int st = gw_registry_handle(f->reg, true, body, len, 0, &f->json);
    if (st != 400 || strstr(f->json, "\"error\":\"bad_request\"") == NULL ||
        strstr(f->json, message) == NULL)
        fail_msg("%.*s -> %d %s; expected 400 bad_request saying \"%s\"", (int)len, body, st,
                 f->json, message);
}

static void assert_error(fixture_t *f, bool reg, const char *body, int status, const char *code)
{
    int st = call(f, reg, body, 0);
    char want[64];
    snprintf(want, sizeof want, "\"error\":\"%s\"", code);
    if (st != status || strstr(f->json, want) == NULL)
        fail_msg("%s -> %d %s; expected %d %s", body, st, f->json, status, code);
}

static const gw_backend_t *slot(const fixture_t *f, size_t u, uint32_t k)
{
    return gw_registry_backends(f->reg)[gw_upstream_slot_gindex(&f->cfg->upstreams[u], k)];
}

#define ONE_UPSTREAM(reg)                                                                          \
    "return { listen = '127.0.0.1:18080', registration = " reg ",\n"                               \
    "  upstreams = { api = { backends = { 'http://127.0.0.1:9001' } } },\n"                        \
    "  routes = { { match = { path_prefix = '/' }, upstream = 'api' } } }"

static void test_register_renew_unregister(void **state)
{
    (void)state;
    fixture_t *f = open_registry(ONE_UPSTREAM("{ allow = { '127.0.0.0/8' }, ttl_ms = 500 }"));
    const gw_upstream_cfg_t *uc = &f->cfg->upstreams[0];
    assert_int_equal(gw_upstream_nslots(uc), 1 + 64);
    assert_int_equal(slot(f, 0, 0)->member, 1);
    assert_int_equal(slot(f, 0, 1)->member, 0);

    assert_int_equal(call(f, true, "{\"url\":\"http://127.0.0.1:9005/\",\"weight\":3}", 1000), 201);
    assert_non_null(strstr(f->json, "\"status\":\"registered\""));
    assert_non_null(strstr(f->json, "\"url\":\"http://127.0.0.1:9005\"")); /* canonical */
    assert_non_null(strstr(f->json, "\"id\":2"));
    const gw_backend_t *b = slot(f, 0, 1);
    assert_int_equal(b->member, 1);
    assert_int_equal(b->registered, 1);
    assert_int_equal(b->cfg->weight, 3);
    assert_string_equal(b->cfg->authority, "127.0.0.1:9005");
    assert_int_equal(gw_registry_expires_in(f->reg, b->cfg->gindex, 1100), 400);
    assert_int_equal(gw_registry_expires_in(f->reg, slot(f, 0, 0)->cfg->gindex, 1100), -1);

    /* A heartbeat keeps the id and restarts the TTL; a missing weight keeps the old one. */
    assert_int_equal(
        call(f, true, "{\"url\":\"http://127.0.0.1:9005\",\"upstream\":\"api\"}", 1300), 200);
    assert_non_null(strstr(f->json, "\"status\":\"renewed\""));
    assert_non_null(strstr(f->json, "\"id\":2"));
    assert_int_equal(b->cfg->weight, 3);
    assert_int_equal(gw_registry_expires_in(f->reg, b->cfg->gindex, 1400), 400);

    assert_int_equal(call(f, false, "{\"url\":\"http://127.0.0.1:9005\"}", 1500), 200);
    assert_non_null(strstr(f->json, "\"status\":\"unregistered\""));
    assert_int_equal(b->member, 0);
    assert_error(f, false, "{\"url\":\"http://127.0.0.1:9005\"}", 404, "not_registered");

    /* Another URL takes a fresh slot; the old one comes back to its own. */
    assert_int_equal(call(f, true, "{\"url\":\"http://127.0.0.1:9006\"}", 1600), 201);
    assert_non_null(strstr(f->json, "\"id\":3"));
    assert_int_equal(call(f, true, "{\"url\":\"http://127.0.0.1:9005\"}", 1700), 201);
    assert_non_null(strstr(f->json, "\"id\":2"));

    assert_int_equal(gw_registry_events(f->reg, 0, GW_REG_REGISTERED), 3);
    assert_int_equal(gw_registry_events(f->reg, 0, GW_REG_RENEWED), 1);
    assert_int_equal(gw_registry_events(f->reg, 0, GW_REG_UNREGISTERED), 1);
    close_registry(f);
}

static void test_validation(void **state)
{
    (void)state;
    fixture_t *f = open_registry(ONE_UPSTREAM("{ allow = { '127.0.0.0/8', '::1' } }"));
    assert_error(f, true, "not json", 400, "bad_request");
    assert_error(f, true, "[1]", 400, "bad_request");
    assert_error(f, true, "{}", 400, "bad_request");
    assert_error(f, true, "{\"url\":5}", 400, "bad_request");
    assert_error(f, true, "{\"url\":\"http://localhost:9005\"}", 400, "bad_request");
    assert_error(f, true, "{\"url\":\"https://127.0.0.1:9005\"}", 400, "bad_request");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1\"}", 400, "bad_request");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:0\"}", 400, "bad_request");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:70000\"}", 400, "bad_request");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9005/api\"}", 400, "bad_request");
    assert_error(f, true, "{\"url\":\"http://[::1:9005\"}", 400, "bad_request");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9005\",\"weight\":0}", 400, "bad_request");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9005\",\"weight\":1.5}", 400, "bad_request");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9005\",\"weight\":1001}", 400,
                 "bad_request");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9005\",\"meta\":[1]}", 400, "bad_request");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9005\",\"ttl_ms\":-1}", 400, "bad_request");
    /* Found by fuzz_admin_json: 1e400 is inf, whose conversion to long was undefined (UBSan). */
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9005\",\"weight\":1e400}", 400,
                 "bad_request");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9005\",\"ttl_ms\":1e400}", 400,
                 "bad_request");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9005\",\"ttl_ms\":-1e400}", 400,
                 "bad_request");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9005\",\"upstream\":7}", 400, "bad_request");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9005\",\"upstream\":\"web\"}", 404,
                 "unknown_upstream");
    assert_error(f, true, "{\"url\":\"http://10.1.2.3:80\"}", 403, "not_allowed");
    assert_error(f, true, "{\"url\":\"http://[::2]:80\"}", 403, "not_allowed");
    /* The static backend, however it is spelled. */
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9001/\"}", 409, "static_backend");
    assert_error(f, false, "{\"url\":\"http://127.0.0.1:9001\"}", 409, "static_backend");
    assert_int_equal(call(f, true, "{\"url\":\"http://[::1]:9005\",\"meta\":{\"zone\":\"a\"}}", 0),
                     201);
    assert_non_null(strstr(f->json, "\"url\":\"http://[::1]:9005\""));
    assert_string_equal(slot(f, 0, 1)->cfg->meta_json, "{\"zone\":\"a\"}");
    close_registry(f);
}

/* What cJSON alone would accept: each is refused with a message, and nothing is registered. */
static void test_strict_body(void **state)
{
    (void)state;
    fixture_t *f = open_registry(ONE_UPSTREAM("{ allow = { '127.0.0.0/8', '::1' } }"));
#define BAD(lit, msg) assert_error_len(f, lit, sizeof(lit) - 1, msg)
    /* \u0000 would end the C string right after the port. */
    BAD("{\"url\":\"http://127.0.0.1:9005\\u0000x\"}", "\\\\u0000 (NUL) in a string at byte 29");
    BAD("{\"url\":\"http://127.0.0.1:9005\",\"meta\":{\"a\\u0000b\":1}}", "NUL");
    BAD("{\"url\":\"http://127.0.0.1:9005\0x\"}", "unescaped control byte in a string at byte 29");
    BAD("{\"url\":\"http://127.0.0.1:9005\tx\"}", "unescaped control byte");
    BAD("\0{\"url\":\"http://127.0.0.1:9005\"}", "control byte outside a string at byte 0");
    BAD("{\"url\":\x01\"http://127.0.0.1:9005\"}", "control byte outside a string at byte 7");
    BAD("{\"url\":\"http://127.0.0.1:9005\"}x", "bytes after the object at byte 31");
    BAD("{\"url\":\"http://127.0.0.1:9005\"} {}", "bytes after the object at byte 32");
    BAD("{\"url\":\"http://127.0.0.1:9005\"}\0", "control byte outside a string at byte 31");
    BAD("{\"url\":\"http://127.0.0.1:9005\",\"url\":\"http://10.0.0.1:80\"}",
        "key \\\"url\\\" appears twice");
    BAD("{\"url\":\"http://127.0.0.1:9005\",\"meta\":{\"z\":1,\"a\":2,\"z\":3}}",
        "key \\\"z\\\" appears twice");
    BAD("{\"url\":\"http://127.0.0.1:9005\",\"meta\":{\"l\":[{\"k\":1,\"k\":1}]}}",
        "appears twice");
    BAD("{\"url\":\"http://127.0.0.1:9005x\"}", "the port must be a number");
    BAD("{\"url\":\"http://127.0.0.1:9005 \"}", "the port must be a number");
#undef BAD
    assert_int_equal(gw_registry_events(f->reg, 0, GW_REG_REGISTERED), 0);
    /* Whitespace around the object, escapes other than \u0000, and the same key in two
     * different objects are fine. */
    assert_int_equal(
        call(f, true,
             " \r\n\t{\"url\":\"http:\\/\\/127.0.0.1:9005\",\"meta\":{\"url\":\"\\u0001\"}}\n", 0),
        201);
    close_registry(f);
}

/* [::ffff:a.b.c.d] is a.b.c.d: a second spelling of the static backend is refused (409), and a
 * registration in that spelling is listed, renewed and removed as the IPv4 address. */
static void test_ipv4_mapped(void **state)
{
    (void)state;
    fixture_t *f = open_registry(ONE_UPSTREAM("{ allow = { '127.0.0.0/8' } }"));
    assert_error(f, true, "{\"url\":\"http://[::ffff:127.0.0.1]:9001\"}", 409, "static_backend");
    assert_error(f, true, "{\"url\":\"http://[::ffff:7f00:1]:9001\"}", 409, "static_backend");
    assert_error(f, true, "{\"url\":\"http://[::ffff:10.0.0.1]:9001\"}", 403, "not_allowed");
    assert_int_equal(call(f, true, "{\"url\":\"http://[::ffff:127.0.0.2]:9005\"}", 0), 201);
    assert_non_null(strstr(f->json, "\"url\":\"http://127.0.0.2:9005\""));
    assert_string_equal(slot(f, 0, 1)->cfg->authority, "127.0.0.2:9005");
    assert_int_equal(call(f, true, "{\"url\":\"http://127.0.0.2:9005\"}", 0), 200);
    assert_non_null(strstr(f->json, "\"status\":\"renewed\""));
    assert_int_equal(call(f, false, "{\"url\":\"http://[::ffff:127.0.0.2]:9005\"}", 0), 200);
    assert_int_equal(slot(f, 0, 1)->member, 0);
    close_registry(f);
}

static void test_full_and_slot_reuse(void **state)
{
    (void)state;
    fixture_t *f = open_registry(ONE_UPSTREAM("{ allow = { '127.0.0.0/8' }, max_backends = 2 }"));
    assert_int_equal(call(f, true, "{\"url\":\"http://127.0.0.1:9101\"}", 10), 201);
    assert_int_equal(call(f, true, "{\"url\":\"http://127.0.0.1:9102\"}", 20), 201);
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9103\"}", 503, "full");
    assert_int_equal(call(f, false, "{\"url\":\"http://127.0.0.1:9102\"}", 30), 200);
    assert_int_equal(call(f, false, "{\"url\":\"http://127.0.0.1:9101\"}", 40), 200);

    /* A request still in flight to the slot that left first keeps it from being rewritten. */
    gw_backend_t *first = (gw_backend_t *)slot(f, 0, 1);
    first->inflight = 1;
    assert_int_equal(call(f, true, "{\"url\":\"http://127.0.0.1:9103\"}", 50), 201);
    assert_non_null(strstr(f->json, "\"id\":3")); /* the other free slot */
    assert_string_equal(slot(f, 0, 2)->cfg->url, "http://127.0.0.1:9103");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9104\"}", 503, "full");
    first->inflight = 0;
    assert_int_equal(call(f, true, "{\"url\":\"http://127.0.0.1:9104\"}", 60), 201);
    assert_non_null(strstr(f->json, "\"id\":2"));
    assert_string_equal(first->cfg->url, "http://127.0.0.1:9104");
    assert_string_equal(first->cfg->authority, "127.0.0.1:9104");
    /* 9101 lost its slot: it is a new registration now. */
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9101\"}", 503, "full");
    close_registry(f);
}

static void test_disabled_and_default_upstream(void **state)
{
    (void)state;
    fixture_t *f = open_registry(ONE_UPSTREAM("false"));
    assert_int_equal(gw_upstream_nslots(&f->cfg->upstreams[0]), 1);
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9005\"}", 403, "registration_disabled");
    close_registry(f);

    f = open_registry(
        "return { listen = '127.0.0.1:18080', registration = { allow = { '127.0.0.1' } },\n"
        "  upstreams = { a = { backends = {} }, b = { backends = {} } },\n"
        "  routes = { { match = { path_prefix = '/' }, upstream = 'a' } } }");
    assert_error(f, true, "{\"url\":\"http://127.0.0.1:9005\"}", 400, "bad_request");
    assert_int_equal(call(f, true, "{\"url\":\"http://127.0.0.1:9005\",\"upstream\":\"b\"}", 0),
                     201);
    assert_non_null(strstr(f->json, "\"id\":1"));
    /* The same URL in another upstream is another backend. */
    assert_int_equal(call(f, true, "{\"url\":\"http://127.0.0.1:9005\",\"upstream\":\"a\"}", 0),
                     201);
    assert_int_equal(slot(f, 0, 0)->member, 1);
    assert_int_equal(slot(f, 1, 0)->member, 1);
    close_registry(f);
}

/* ---- config ---- */

static void check_err(const char *src, const char *expected)
{
    char *err = NULL;
    gw_config_t *cfg = gw_config_load_string("gw.lua", src, NULL, &err);
    if (cfg != NULL) {
        gw_config_free(cfg);
        fail_msg("expected error \"%s\", got a config", expected);
    }
    assert_string_equal(err, expected);
    free(err);
}

static void test_config(void **state)
{
    (void)state;
    gw_config_t *cfg = load(ONE_UPSTREAM("{ allow = { '10.0.0.0/8', 'fd00::/8' }, ttl_ms = 0,\n"
                                         "  max_backends = 3, upstream = 'api' }"));
    assert_true(cfg->registration.enabled);
    assert_int_equal(cfg->registration.nallow, 2);
    assert_int_equal(cfg->registration.ttl_ms, 0);
    assert_int_equal(cfg->registration.max_backends, 3);
    assert_int_equal(cfg->registration.upstream, 0);
    assert_int_equal(cfg->nbackends_total, 4);
    gw_config_free(cfg);

    cfg = load("return { listen = '127.0.0.1:18080', registration = { allow = { '127.0.0.1' } },\n"
               "  upstreams = { api = {} }, routes = { { match = {}, upstream = 'api' } },\n"
               "  hooks = { on_register = function() end, on_unregister = function() end } }");
    assert_int_equal(cfg->upstreams[0].nbackends, 0);
    assert_int_equal(cfg->upstreams[0].nslots, 64);
    assert_int_equal(cfg->registration.ttl_ms, 30000);
    assert_int_equal(cfg->membership_hooks, GW_MHOOK_ON_REGISTER | GW_MHOOK_ON_UNREGISTER);
    gw_config_free(cfg);

    check_err(ONE_UPSTREAM("{}"),
              "gw.lua:1: registration.allow: required: the address ranges registered backends may "
              "be in, e.g. { \"10.0.0.0/8\" }");
    check_err(ONE_UPSTREAM("{ allow = {} }"), "gw.lua:1: registration.allow: must not be empty");
    check_err(ONE_UPSTREAM("{ allow = { '10.0.0.1/8' } }"),
              "gw.lua:1: registration.allow[1]: \"10.0.0.1/8\": expected an address range such as "
              "\"10.0.0.0/8\" or \"fd00::/8\" (no host bits after the prefix)");
    check_err(ONE_UPSTREAM("{ allow = { '10.0.0.0/8' }, max_backends = 0 }"),
              "gw.lua:1: registration.max_backends: expected an integer between 1 and 256, got 0");
    check_err(ONE_UPSTREAM("{ allow = { '10.0.0.0/8' }, max_backends = 256 }"),
              "gw.lua:2: upstreams.api.backends: at most 256 backends per upstream, "
              "registration.max_backends included");
    check_err(ONE_UPSTREAM("{ allow = { '10.0.0.0/8' }, upstream = 'web' }"),
              "gw.lua:1: registration.upstream: no upstream is called \"web\"");
    check_err(ONE_UPSTREAM("{ allow = { '10.0.0.0/8' }, ttl = 5 }"),
              "gw.lua:1: registration.ttl: unknown key");
    check_err(ONE_UPSTREAM("true"), "gw.lua:1: registration: expected table, got boolean");
    check_err("return { listen = '127.0.0.1:18080', admin = false,\n"
              "  registration = { allow = { '10.0.0.0/8' } },\n"
              "  upstreams = { api = { backends = {} } }, routes = { { match = {}, upstream = "
              "'api' } } }",
              "gw.lua:2: registration: needs the admin listener (admin = false turns it off)");
    check_err("return { listen = '127.0.0.1:18080', upstreams = { api = { backends = { "
              "'http://127.0.0.1:1' } } },\n"
              "  routes = { { match = {}, upstream = 'api' } }, hooks = { on_register = 1 } }",
              "gw.lua:2: hooks.on_register: expected function, got number");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cidr_parse),
        cmocka_unit_test(test_cidr_match),
        cmocka_unit_test(test_sockaddr_equal),
        cmocka_unit_test(test_register_renew_unregister),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_strict_body),
        cmocka_unit_test(test_ipv4_mapped),
        cmocka_unit_test(test_full_and_slot_reuse),
        cmocka_unit_test(test_disabled_and_default_upstream),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
