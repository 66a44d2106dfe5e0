/*
 * Unit tests for core/router.c: route matching (method, host, path prefix, order), path
 * normalization and the strip_prefix/add_prefix rewrite. Configs are built by hand.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <llhttp.h>

#include "router.h"

#define S(lit) GW_SLICE_LIT(lit)
#define M(m) (1ull << (m))

static int match(const gw_config_t *cfg, int method, const char *host, const char *path)
{
    return gw_router_match(cfg, method, GW_SLICE(host, strlen(host)), GW_SLICE(path, strlen(path)));
}

static void test_match_first_wins(void **state)
{
    GW_UNUSED(state);
    gw_route_cfg_t routes[] = {
        {.name = "api-get", .path_prefix = "/api/", .methods = M(HTTP_GET) | M(HTTP_HEAD)},
        {.name = "api", .path_prefix = "/api"},
        {.name = "host", .path_prefix = "/", .host = "example.com"},
        {.name = "wild", .host = "*.example.com"},
        {.name = "post-any", .methods = M(HTTP_POST)},
    };
    gw_config_t cfg = {.routes = routes, .nroutes = GW_ARRAY_LEN(routes)};

    assert_int_equal(match(&cfg, HTTP_GET, "x", "/api/users"), 0);
    assert_int_equal(match(&cfg, HTTP_HEAD, "x", "/api/"), 0);
    assert_int_equal(match(&cfg, HTTP_POST, "x", "/api/users"), 1);
    /* Byte prefix: "/api" matches "/apix" and "/api" itself; "/api/" does not match "/api". */
    assert_int_equal(match(&cfg, HTTP_GET, "x", "/apix"), 1);
    assert_int_equal(match(&cfg, HTTP_GET, "x", "/api"), 1);
    assert_int_equal(match(&cfg, HTTP_GET, "example.com", "/other"), 2);
    assert_int_equal(match(&cfg, HTTP_GET, "EXAMPLE.com:8080", "/other"), 2);
    assert_int_equal(match(&cfg, HTTP_GET, "example.com.", "/other"), 2);
    assert_int_equal(match(&cfg, HTTP_GET, "a.example.com", "/other"), 3);
    assert_int_equal(match(&cfg, HTTP_GET, "a.b.Example.COM.:443", "/other"), 3);
    assert_int_equal(match(&cfg, HTTP_POST, "other.org", "/other"), 4);
    assert_int_equal(match(&cfg, HTTP_GET, "other.org", "/other"), -1);
    assert_int_equal(match(&cfg, HTTP_GET, "", "/other"), -1);
    /* An out-of-range method only matches routes that accept any method. */
    assert_int_equal(match(&cfg, 200, "x", "/api/users"), 1);
    assert_int_equal(match(&cfg, -1, "x", "/nope"), -1);
}

static void test_match_empty_and_catch_all(void **state)
{
    GW_UNUSED(state);
    gw_config_t empty = {0};
    assert_int_equal(match(&empty, HTTP_GET, "x", "/"), -1);

    gw_route_cfg_t routes[] = {{.name = "all"}};
    gw_config_t cfg = {.routes = routes, .nroutes = 1};
    assert_int_equal(match(&cfg, HTTP_DELETE, "", "/"), 0);
    assert_int_equal(match(&cfg, HTTP_GET, "anything:1", "/x/y"), 0);
}

static void test_host_matches(void **state)
{
    GW_UNUSED(state);
    assert_true(gw_router_host_matches(NULL, S("")));
    assert_true(gw_router_host_matches("example.com", S("example.com")));
    assert_true(gw_router_host_matches("example.com", S("Example.Com")));
    assert_true(gw_router_host_matches("example.com", S("example.com:80")));
    assert_true(gw_router_host_matches("example.com", S("example.com.")));
    assert_true(gw_router_host_matches("example.com", S("example.com.:80")));
    assert_false(gw_router_host_matches("example.com", S("example.co")));
    assert_false(gw_router_host_matches("example.com", S("xexample.com")));
    assert_false(gw_router_host_matches("example.com", S("a.example.com")));
    assert_false(gw_router_host_matches("example.com", S("")));

    assert_true(gw_router_host_matches("*.example.com", S("a.example.com")));
    assert_true(gw_router_host_matches("*.example.com", S("a.b.example.com")));
    assert_true(gw_router_host_matches("*.example.com", S("A.EXAMPLE.COM:8080")));
    assert_true(gw_router_host_matches("*.example.com", S("a.example.com.")));
    assert_false(gw_router_host_matches("*.example.com", S("example.com")));
    assert_false(gw_router_host_matches("*.example.com", S(".example.com")));
    assert_false(gw_router_host_matches("*.example.com", S("aexample.com")));
    assert_false(gw_router_host_matches("*.example.com", S("a.example.org")));
    assert_false(gw_router_host_matches("*.example.com", S("")));

    assert_true(gw_router_host_matches("[::1]", S("[::1]:8080")));
    assert_true(gw_router_host_matches("[::1]", S("[::1]")));
    assert_true(gw_router_host_matches("127.0.0.1", S("127.0.0.1:9")));
}

static void check_norm(const char *in, const char *want, size_t want_path_len)
{
    char out[256];
    size_t plen = 9999;
    ssize_t n = gw_router_normalize_path(GW_SLICE(in, strlen(in)), out, sizeof(out), &plen);
    if (n < 0 || (size_t)n != strlen(want) || memcmp(out, want, (size_t)n) != 0 ||
        plen != want_path_len) {
        fail_msg("normalize(\"%s\") = \"%.*s\" (%zd, path_len %zu), want \"%s\" (path_len %zu)", in,
                 n < 0 ? 0 : (int)n, out, n, plen, want, want_path_len);
    }
}

static void test_normalize(void **state)
{
    GW_UNUSED(state);
    check_norm("/", "/", 1);
    check_norm("/a/b/c", "/a/b/c", 6);
    check_norm("/a/./b", "/a/b", 4);
    check_norm("/a/../b", "/b", 2);
    check_norm("/a/b/../../c", "/c", 2);
    check_norm("/..", "/", 1);
    check_norm("/../..", "/", 1);
    check_norm("/../a", "/a", 2);
    check_norm("/../../../etc/passwd", "/etc/passwd", 11);
    check_norm("/a/.", "/a/", 3);
    check_norm("/a/..", "/", 1);
    check_norm("/a/b/..", "/a/", 3);
    check_norm("/.", "/", 1);
    check_norm("/a//b", "/a//b", 5);
    check_norm("//", "//", 2);
    check_norm("/a/", "/a/", 3);
    check_norm("/a/.b/..c/...", "/a/.b/..c/...", 13);
    check_norm("/mid/content=5/../6", "/mid/6", 6);
    /* RFC 3986 §5.4.2 style: "//" makes an empty segment that ".." removes. */
    check_norm("/a//../b", "/a/b", 4);
    /* The query is kept verbatim, dots and all. */
    check_norm("/a/../b?x=/../y&z=.", "/b?x=/../y&z=.", 2);
    check_norm("/a/..?", "/?", 1);
    check_norm("/?q", "/?q", 1);
    /* Percent-encoded dots are dots. */
    check_norm("/a/%2e%2E/b", "/b", 2);
    check_norm("/a/%2e/b", "/a/b", 4);
    check_norm("/a/.%2e", "/", 1);
    check_norm("/a/%2e%2e%2e", "/a/%2e%2e%2e", 12);
    check_norm("/a/%2f..", "/a/%2f..", 8);
    check_norm("/a/%2", "/a/%2", 5);
}

static void test_normalize_rejects(void **state)
{
    GW_UNUSED(state);
    char out[8];
    size_t plen;
    assert_int_equal(gw_router_normalize_path(S(""), out, sizeof(out), &plen), -1);
    assert_int_equal(gw_router_normalize_path(S("*"), out, sizeof(out), &plen), -1);
    assert_int_equal(gw_router_normalize_path(S("a/b"), out, sizeof(out), &plen), -1);
    assert_int_equal(gw_router_normalize_path(S("?x"), out, sizeof(out), &plen), -1);
    assert_int_equal(gw_router_normalize_path(S("http://h/"), out, sizeof(out), &plen), -1);
    /* Too small: for the path, for the trailing "/", for the query. */
    assert_int_equal(gw_router_normalize_path(S("/abcdefgh"), out, sizeof(out), &plen), -1);
    assert_int_equal(gw_router_normalize_path(S("/abcdefg"), out, sizeof(out), &plen), 8);
    assert_int_equal(gw_router_normalize_path(S("/a/.."), out, 1, &plen), -1);
    assert_int_equal(gw_router_normalize_path(S("/a/.."), out, 2, &plen), 1);
    assert_int_equal(gw_router_normalize_path(S("/.."), out, 0, &plen), -1);
    assert_int_equal(gw_router_normalize_path(S("/.."), out, 1, &plen), 1);
    assert_int_equal(gw_router_normalize_path(S("/abc?defgh"), out, sizeof(out), &plen), -1);
    assert_int_equal(gw_router_normalize_path(S("/abc?def"), out, sizeof(out), &plen), 8);
    /* path_len may be NULL. */
    assert_int_equal(gw_router_normalize_path(S("/a"), out, sizeof(out), NULL), 2);
}

static void check_rewrite(const gw_route_cfg_t *r, const char *in, const char *want)
{
    char out[256];
    ssize_t n = gw_router_rewrite(r, GW_SLICE(in, strlen(in)), out, sizeof(out));
    if (n < 0 || (size_t)n != strlen(want) || memcmp(out, want, (size_t)n) != 0) {
        fail_msg("rewrite(prefix \"%s\", strip %d, add \"%s\", \"%s\") = \"%.*s\" (%zd), want "
                 "\"%s\"",
                 r->path_prefix ? r->path_prefix : "(null)", r->strip_prefix,
                 r->add_prefix ? r->add_prefix : "(null)", in, n < 0 ? 0 : (int)n, out, n, want);
    }
}

static void test_rewrite(void **state)
{
    GW_UNUSED(state);
    gw_route_cfg_t none = {.path_prefix = "/api"};
    check_rewrite(&none, "/api/users?x=1", "/api/users?x=1");

    gw_route_cfg_t strip = {.path_prefix = "/api", .strip_prefix = true};
    check_rewrite(&strip, "/api/users?x=1", "/users?x=1");
    check_rewrite(&strip, "/api", "/");
    check_rewrite(&strip, "/api?x", "/?x");
    check_rewrite(&strip, "/api/", "/");
    check_rewrite(&strip, "/apix", "/x");
    /* Not under the prefix (the caller should not do this): unchanged. */
    check_rewrite(&strip, "/other", "/other");

    gw_route_cfg_t strip_slash = {.path_prefix = "/api/", .strip_prefix = true};
    check_rewrite(&strip_slash, "/api/users", "/users");
    check_rewrite(&strip_slash, "/api/", "/");
    check_rewrite(&strip_slash, "/api/?a=b", "/?a=b");

    gw_route_cfg_t strip_root = {.path_prefix = "/", .strip_prefix = true};
    check_rewrite(&strip_root, "/users", "/users");
    check_rewrite(&strip_root, "/", "/");

    gw_route_cfg_t add = {.path_prefix = "/", .add_prefix = "/v2"};
    check_rewrite(&add, "/users", "/v2/users");
    check_rewrite(&add, "/users?q=1", "/v2/users?q=1");
    check_rewrite(&add, "/", "/v2/");

    gw_route_cfg_t add_slash = {.path_prefix = "/", .add_prefix = "/v2/"};
    check_rewrite(&add_slash, "/users", "/v2/users");
    check_rewrite(&add_slash, "/", "/v2/");

    gw_route_cfg_t both = {.path_prefix = "/api", .strip_prefix = true, .add_prefix = "/v2"};
    check_rewrite(&both, "/api/users?x=1", "/v2/users?x=1");
    check_rewrite(&both, "/api", "/v2/");
    check_rewrite(&both, "/api?x", "/v2/?x");

    gw_route_cfg_t both_slash = {
        .path_prefix = "/api/", .strip_prefix = true, .add_prefix = "/v2/"};
    check_rewrite(&both_slash, "/api/users", "/v2/users");

    gw_route_cfg_t no_prefix = {.strip_prefix = true, .add_prefix = "/x"};
    check_rewrite(&no_prefix, "/a?b", "/x/a?b");
}

static void test_rewrite_too_small(void **state)
{
    GW_UNUSED(state);
    gw_route_cfg_t both = {.path_prefix = "/api", .strip_prefix = true, .add_prefix = "/v2"};
    char out[16];
    /* "/v2/users?x=1" is 13 bytes. */
    assert_int_equal(gw_router_rewrite(&both, S("/api/users?x=1"), out, 13), 13);
    assert_memory_equal(out, "/v2/users?x=1", 13);
    assert_int_equal(gw_router_rewrite(&both, S("/api/users?x=1"), out, 12), -1);
    /* "/v2/" needs the joining slash too. */
    assert_int_equal(gw_router_rewrite(&both, S("/api"), out, 3), -1);
    assert_int_equal(gw_router_rewrite(&both, S("/api"), out, 4), 4);
    gw_route_cfg_t plain = {0};
    assert_int_equal(gw_router_rewrite(&plain, S("/abc"), out, 3), -1);
    assert_int_equal(gw_router_rewrite(&plain, S("/abc"), out, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match_first_wins),  cmocka_unit_test(test_match_empty_and_catch_all),
        cmocka_unit_test(test_host_matches),      cmocka_unit_test(test_normalize),
        cmocka_unit_test(test_normalize_rejects), cmocka_unit_test(test_rewrite),
        cmocka_unit_test(test_rewrite_too_small),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
