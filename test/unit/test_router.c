/*
 * Unit tests for core/router.c: route matching (method, host, path prefix, order, per-route
 * path forms), the canonical path and the strip_prefix/add_prefix rewrite. Configs are built by
 * hand.
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
    char scratch[1024];
    size_t plen = strlen(path);
    assert_true(gw_router_scratch_size(cfg, plen) <= sizeof scratch);
    gw_router_path_t rp;
    gw_router_path_init(&rp, GW_SLICE(path, plen), scratch);
    return gw_router_match(cfg, method, GW_SLICE(host, strlen(host)), &rp);
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

/* Found by fuzz_request_head: an HTTP/1.0 request without Host has a NULL host slice, which
 * went to memchr (undefined behaviour, UBSan's nonnull-attribute). */
static void test_match_without_host(void **state)
{
    GW_UNUSED(state);
    gw_route_cfg_t routes[] = {{.name = "host", .host = "example.com"},
                               {.name = "wild", .host = "*.example.com"},
                               {.name = "all"}};
    gw_config_t cfg = {.routes = routes, .nroutes = GW_ARRAY_LEN(routes)};
    char scratch[64];
    gw_router_path_t rp;
    gw_router_path_init(&rp, S("/x"), scratch);
    assert_int_equal(gw_router_match(&cfg, HTTP_GET, GW_SLICE(NULL, 0), &rp), 2);
    assert_false(gw_router_host_matches("example.com", GW_SLICE(NULL, 0)));
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

/* Canonical form with merge_slashes on (m) / off, encoded_slash reject (d = false) / decode. */
static void check_canon_opts(const char *in, bool m, bool d, const char *want)
{
    char out[256];
    memset(out, '#', sizeof out);
    size_t len = strlen(in);
    ssize_t n = gw_router_canonical_path(GW_SLICE(in, len), m, d, out, len);
    if (n < 0 || (size_t)n != strlen(want) || memcmp(out, want, (size_t)n) != 0)
        fail_msg("canonical(\"%s\", merge %d, decode %d) = \"%.*s\" (%zd), want \"%s\"", in, m, d,
                 n < 0 ? 0 : (int)n, out, n, want);
    /* Nothing is written past the input's length. */
    for (size_t i = len; i < sizeof out; i++)
        assert_int_equal(out[i], '#');
}

static void check_canon(const char *in, const char *want)
{
    check_canon_opts(in, true, false, want);
}

static void check_canon_err(const char *in, bool m, bool d, int want)
{
    char out[256];
    ssize_t n = gw_router_canonical_path(GW_SLICE(in, strlen(in)), m, d, out, sizeof out);
    if (n != want)
        fail_msg("canonical(\"%s\", merge %d, decode %d) = %zd, want error %d", in, m, d, n, want);
}

static void test_canonical_dots(void **state)
{
    GW_UNUSED(state);
    check_canon("/", "/");
    check_canon("/a/b/c", "/a/b/c");
    check_canon("/a/./b", "/a/b");
    check_canon("/a/../b", "/b");
    check_canon("/a/b/../../c", "/c");
    check_canon("/..", "/");
    check_canon("/../..", "/");
    check_canon("/../a", "/a");
    check_canon("/../../../etc/passwd", "/etc/passwd");
    check_canon("/a/.", "/a/");
    check_canon("/a/..", "/");
    check_canon("/a/b/..", "/a/");
    check_canon("/.", "/");
    check_canon("/a/", "/a/");
    check_canon("/a/.b/..c/...", "/a/.b/..c/...");
    check_canon("/mid/content=5/../6", "/mid/6");
    /* Dot segments are resolved after decoding: "%2e" is ".". */
    check_canon("/a/%2e%2E/b", "/b");
    check_canon("/a/%2e/b", "/a/b");
    check_canon("/a/.%2e", "/");
    check_canon("/a/%2e%2e%2e", "/a/...");
    check_canon("/public/%2e%2e/admin/secret.txt", "/admin/secret.txt");
    /* RFC 3986 §5.4.2 style without merging: "//" makes an empty segment that ".." removes. */
    check_canon_opts("/a//../b", false, false, "/a/b");
    check_canon_opts("/a//..", false, false, "/a/");
}

static void test_canonical_escapes(void **state)
{
    GW_UNUSED(state);
    /* Escapes of unreserved characters are decoded, in either case. */
    check_canon("/%61dmin/secret.txt", "/admin/secret.txt");
    check_canon("/%41%5a%30%2D%2e%5F%7E", "/AZ0-._~");
    check_canon("/%7e%7E", "/~~");
    /* Everything else stays encoded, with upper-case hex. */
    check_canon("/a%3fb%3Fc", "/a%3Fb%3Fc");
    check_canon("/a%23b%20c%25d", "/a%23b%20c%25d");
    check_canon("/a%2a%5b", "/a%2A%5B");
    check_canon("/caf%c3%a9", "/caf%C3%A9");
    check_canon("/a%3bb", "/a%3Bb");
    /* Double encoding is not undone: "%25" stays, the "2e" after it is two letters. */
    check_canon("/%252e%252e/admin", "/%252e%252e/admin");
    check_canon("/a/%252F", "/a/%252F");
    /* Raw bytes other than '/', '\\' and ';' are kept as they are. */
    check_canon("/a|b\xc3\xa9", "/a|b\xc3\xa9");
}

static void test_canonical_slashes(void **state)
{
    GW_UNUSED(state);
    check_canon("//admin/secret.txt", "/admin/secret.txt");
    check_canon("/a//b///c", "/a/b/c");
    check_canon("//", "/");
    check_canon("///", "/");
    check_canon("/a//", "/a/");
    check_canon("/a//./..//b", "/b");
    check_canon_opts("//admin/x", false, false, "//admin/x");
    check_canon_opts("/a//b", false, false, "/a//b");
    check_canon_opts("//", false, false, "//");
    /* Encoded slashes and backslashes (raw or encoded): refused by default... */
    check_canon_err("/admin%2fsecret.txt", true, false, GW_ROUTER_ESLASH);
    check_canon_err("/admin%2Fsecret.txt", true, false, GW_ROUTER_ESLASH);
    check_canon_err("/admin%5csecret.txt", true, false, GW_ROUTER_ESLASH);
    check_canon_err("/admin%5Csecret.txt", true, false, GW_ROUTER_ESLASH);
    check_canon_err("/admin\\secret.txt", true, false, GW_ROUTER_ESLASH);
    check_canon_err("/admin;x%2F/s", true, false, GW_ROUTER_ESLASH);
    /* ...or slashes, for matching, with encoded_slash = "decode". */
    check_canon_opts("/admin%2fsecret.txt", true, true, "/admin/secret.txt");
    check_canon_opts("/admin%2Fsecret.txt", true, true, "/admin/secret.txt");
    check_canon_opts("/admin%5Csecret.txt", true, true, "/admin/secret.txt");
    check_canon_opts("/admin\\secret.txt", true, true, "/admin/secret.txt");
    check_canon_opts("/p/a%2Fb/./c/../d", true, true, "/p/a/b/d");
    check_canon_opts("/public/..%2Fadmin", true, true, "/admin");
    check_canon_opts("/a%2F%2Fb", true, true, "/a/b");
    check_canon_opts("/a%2F%2Fb", false, true, "/a//b");
}

static void test_canonical_params(void **state)
{
    GW_UNUSED(state);
    /* Path parameters are dropped from each segment, so "/admin;x/secret" is "/admin/secret"
     * as a parameter-stripping server sees it, and "..;" is "..". */
    check_canon("/admin;x/secret", "/admin/secret");
    check_canon("/admin;/secret", "/admin/secret");
    check_canon("/a;jsessionid=1", "/a");
    check_canon("/public/..;/admin/secret", "/admin/secret");
    check_canon("/;x/admin/", "/admin/");
    check_canon("/a/;x", "/a/");
    check_canon("/a;b;c/d", "/a/d");
    /* An encoded ';' is data, not a delimiter. */
    check_canon("/admin%3Bx/secret", "/admin%3Bx/secret");
    /* Escapes inside parameters are still checked. */
    check_canon_err("/a;%zz/b", true, false, GW_ROUTER_EESCAPE);
}

static void test_canonical_rejects(void **state)
{
    GW_UNUSED(state);
    check_canon_err("", true, false, GW_ROUTER_EPATH);
    check_canon_err("*", true, false, GW_ROUTER_EPATH);
    check_canon_err("a/b", true, false, GW_ROUTER_EPATH);
    check_canon_err("%2F", true, true, GW_ROUTER_EPATH);
    check_canon_err("/a%", true, false, GW_ROUTER_EESCAPE);
    check_canon_err("/a%2", true, false, GW_ROUTER_EESCAPE);
    check_canon_err("/a%g0", true, false, GW_ROUTER_EESCAPE);
    check_canon_err("/a%0g", true, false, GW_ROUTER_EESCAPE);
    check_canon_err("/a% 1", true, false, GW_ROUTER_EESCAPE);
    check_canon_err("/a%00b", true, true, GW_ROUTER_EESCAPE);
    check_canon_err("/a/..%00", false, true, GW_ROUTER_EESCAPE);
    /* The output buffer must hold at least the input. */
    char out[8];
    assert_int_equal(gw_router_canonical_path(S("/abcdefgh"), true, false, out, 8),
                     GW_ROUTER_ENOSPC);
    assert_int_equal(gw_router_canonical_path(S("/abcdefg"), true, false, out, 8), 8);
    assert_int_equal(gw_router_canonical_path(S("/a/.."), true, false, out, 5), 1);
}

/* Routes with different path options match on different forms of the same path; a route whose
 * encoded_slash is "reject" refuses the request when it is reached, even with no path_prefix. */
static void test_match_forms(void **state)
{
    GW_UNUSED(state);
    gw_route_cfg_t routes[] = {
        {.name = "admin", .path_prefix = "/admin/", .merge_slashes = true},
        {.name = "raw", .path_prefix = "//raw/", .merge_slashes = false},
        {.name = "ids", .path_prefix = "/ids/", .merge_slashes = true, .decode_slash = true},
        {.name = "all", .merge_slashes = true},
    };
    gw_config_t cfg = {.routes = routes, .nroutes = GW_ARRAY_LEN(routes)};
    /* Forms: merged, unmerged, merged-decoded (ids), and unmerged-decoded for "raw". */
    assert_int_equal(gw_router_scratch_size(&cfg, 10), 40);
    assert_int_equal(match(&cfg, HTTP_GET, "x", "/admin/s"), 0);
    assert_int_equal(match(&cfg, HTTP_GET, "x", "//admin/s"), 0);
    assert_int_equal(match(&cfg, HTTP_GET, "x", "/%61dmin/s"), 0);
    assert_int_equal(match(&cfg, HTTP_GET, "x", "/admin;x/s"), 0);
    assert_int_equal(match(&cfg, HTTP_GET, "x", "/x/../admin/s"), 0);
    assert_int_equal(match(&cfg, HTTP_GET, "x", "//raw/a"), 1);
    assert_int_equal(match(&cfg, HTTP_GET, "x", "/raw/a"), 3);
    assert_int_equal(match(&cfg, HTTP_GET, "x", "/ids/a%2Fb"), 2);
    /* "admin" would take "/admin/s" (decoded), so it refuses the encoded slash rather than let
     * the request fall through to "all"; "/ids/.." is not its business. */
    assert_int_equal(match(&cfg, HTTP_GET, "x", "/admin%2Fs"), GW_ROUTER_ESLASH);
    assert_int_equal(match(&cfg, HTTP_GET, "x", "/admin%5Cs"), GW_ROUTER_ESLASH);
    assert_int_equal(match(&cfg, HTTP_GET, "x", "/x/..%2Fadmin/s"), GW_ROUTER_ESLASH);
    /* Nothing before "all" wants it, and "all" refuses every encoded slash. */
    assert_int_equal(match(&cfg, HTTP_GET, "x", "/other%2Fs"), GW_ROUTER_ESLASH);
    assert_int_equal(match(&cfg, HTTP_GET, "x", "/a%zz"), GW_ROUTER_EESCAPE);

    /* A method filter is checked before the path: a route that does not apply never refuses. */
    gw_route_cfg_t r2[] = {
        {.name = "post", .methods = M(HTTP_POST), .merge_slashes = true},
        {.name = "get", .merge_slashes = true, .decode_slash = true},
    };
    gw_config_t cfg2 = {.routes = r2, .nroutes = 2};
    assert_int_equal(match(&cfg2, HTTP_GET, "x", "/a%2Fb"), 1);
    assert_int_equal(match(&cfg2, HTTP_POST, "x", "/a%2Fb"), GW_ROUTER_ESLASH);

    /* A route whose prefix the decoded path misses lets it go on to one that decodes. */
    gw_route_cfg_t r3[] = {
        {.name = "admin", .path_prefix = "/admin/", .merge_slashes = true},
        {.name = "ids", .path_prefix = "/ids/", .merge_slashes = true, .decode_slash = true},
    };
    gw_config_t cfg3 = {.routes = r3, .nroutes = 2};
    assert_int_equal(match(&cfg3, HTTP_GET, "x", "/ids/a%2Fb"), 1);
    assert_int_equal(match(&cfg3, HTTP_GET, "x", "/ids/..%2Fadmin/x"), GW_ROUTER_ESLASH);
    assert_int_equal(match(&cfg3, HTTP_GET, "x", "/nope%2Fx"), GW_ROUTER_NO_ROUTE);
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
        cmocka_unit_test(test_host_matches),      cmocka_unit_test(test_canonical_dots),
        cmocka_unit_test(test_canonical_escapes), cmocka_unit_test(test_canonical_slashes),
        cmocka_unit_test(test_canonical_params),  cmocka_unit_test(test_canonical_rejects),
        cmocka_unit_test(test_match_forms),       cmocka_unit_test(test_rewrite),
        cmocka_unit_test(test_rewrite_too_small), cmocka_unit_test(test_match_without_host),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
