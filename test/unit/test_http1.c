/* Unit tests for core/http1 (header rules) and core/arena (the request allocator). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <llhttp.h>

#include "arena.h"
#include "http1.h"

#define S(lit) GW_SLICE_LIT(lit)

static void test_tokens(void **state)
{
    assert_true(gw_http1_is_token(S("X-Request-Id")));
    assert_true(gw_http1_is_token(S("a!#$%&'*+-.^_`|~z")));
    assert_false(gw_http1_is_token(S("")));
    assert_false(gw_http1_is_token(S("X ")));
    assert_false(gw_http1_is_token(S("X(y)")));
    assert_false(gw_http1_is_token(S("a:b")));
    assert_false(gw_http1_is_token(GW_SLICE("a\0b", 3)));
}

static void test_hop_by_hop(void **state)
{
    const char *hop[] = {"Connection", "keep-alive",        "Proxy-Connection", "TE",
                         "Trailer",    "Transfer-Encoding", "UPGRADE",          "HTTP2-Settings"};
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
        assert_true(gw_http1_is_hop_by_hop(GW_SLICE(hop[i], strlen(hop[i]))));
    assert_false(gw_http1_is_hop_by_hop(S("Content-Length")));
    assert_false(gw_http1_is_hop_by_hop(S("Host")));
    assert_false(gw_http1_is_hop_by_hop(S("Trailers")));
    assert_false(gw_http1_is_hop_by_hop(S("T")));
}

static void test_list_has(void **state)
{
    assert_true(gw_http1_list_has(S("close"), S("Close")));
    assert_true(gw_http1_list_has(S("keep-alive, X-Secret"), S("x-secret")));
    assert_true(gw_http1_list_has(S(" ,, Upgrade ,\t"), S("upgrade")));
    assert_false(gw_http1_list_has(S("upgraded"), S("upgrade")));
    assert_false(gw_http1_list_has(S("x-secretive"), S("x-secret")));
    assert_false(gw_http1_list_has(S(""), S("close")));
}

static void test_list_next(void **state)
{
    (void)state;
    gw_slice_t list = S(" ,websocket , h2c,,\tfoo/2 ,"), e;
    const char *want[] = {"websocket", "h2c", "foo/2"};
    size_t pos = 0, n = 0;
    while (gw_http1_list_next(list, &pos, &e)) {
        assert_true(n < 3);
        assert_int_equal(e.len, strlen(want[n]));
        assert_memory_equal(e.p, want[n], e.len);
        n++;
    }
    assert_int_equal(n, 3);
    pos = 0;
    assert_false(gw_http1_list_next(S(" , ,\t"), &pos, &e));
}

static gw_header_t hdr(const char *name, const char *value)
{
    return (gw_header_t){GW_SLICE(name, strlen(name)), GW_SLICE(value, strlen(value))};
}

static bool reserve_none(gw_slice_t name)
{
    (void)name;
    return false;
}

/* Runs the forwarding filter over `h` into a NUL-terminated string in `a`. */
static const char *forward(gw_arena_t *a, const gw_header_t *h, uint32_t n,
                           const gw_header_ops_t *ops, const gw_http1_via_t *via)
{
    static const gw_header_edits_t no_edits;
    gw_buf_t b;
    gw_buf_init(&b, a, 64);
    gw_http1_forward_headers(&b, h, n, reserve_none, ops, &no_edits, via);
    gw_buf_append(&b, "", 1);
    assert_false(b.oom);
    return b.p;
}

static void test_list_header_combines_lines(void **state)
{
    (void)state;
    gw_arena_t a;
    gw_arena_init(&a, 1024, 0, NULL);
    gw_header_t h[] = {hdr("X-Forwarded-For", "203.0.113.1"), hdr("X-Other", "x"),
                       hdr("x-forwarded-for", ""),
                       hdr("X-FORWARDED-FOR", "198.51.100.2, 10.0.0.1")};
    gw_buf_t b;
    gw_buf_init(&b, &a, 8);
    gw_http1_append_list_header(&b, h, 4, S("X-Forwarded-For"), S("127.0.0.1"));
    gw_http1_append_list_header(&b, h, 4, S("Via"), S("1.1 gw"));
    gw_buf_append(&b, "", 1);
    assert_string_equal(b.p, "X-Forwarded-For: 203.0.113.1, 198.51.100.2, 10.0.0.1, 127.0.0.1\r\n"
                             "Via: 1.1 gw\r\n");
    gw_arena_free(&a);
}

static void test_forward_via(void **state)
{
    (void)state;
    gw_arena_t a;
    gw_arena_init(&a, 4096, 0, NULL);
    gw_header_t h[] = {hdr("Via", "1.0 fred"), hdr("X-A", "1"), hdr("VIA", "1.1 p.example:8080"),
                       hdr("Connection", "close"), hdr("Connection", "via")};
    gw_header_ops_t none = {0};
    gw_http1_via_t gw11 = {.name = "prequal-gw", .major = 1, .minor = 1},
                   gw10 = {.name = "edge", .major = 1, .minor = 0}, off = {.major = 1, .minor = 1};
    /* Lines combined in order, the gateway's element last, after the other headers. */
    assert_string_equal(forward(&a, h, 4, &none, &gw11),
                        "X-A: 1\r\nVia: 1.0 fred, 1.1 p.example:8080, 1.1 prequal-gw\r\n");
    /* The version is the one the message was received with. */
    assert_string_equal(forward(&a, h + 1, 1, &none, &gw10), "X-A: 1\r\nVia: 1.0 edge\r\n");
    /* via = false: Via passes like any other header. */
    assert_string_equal(forward(&a, h, 4, &none, &off),
                        "Via: 1.0 fred\r\nX-A: 1\r\nVIA: 1.1 p.example:8080\r\n");
    /* A Via the sender marked hop-by-hop is not forwarded; the gateway's own still is. */
    assert_string_equal(forward(&a, h, 5, &none, &gw11), "X-A: 1\r\nVia: 1.1 prequal-gw\r\n");
    /* A route that sets or removes Via decides it alone. */
    char *rm[] = {"via"};
    gw_header_ops_t remove = {.remove = rm, .nremove = 1};
    assert_string_equal(forward(&a, h, 4, &remove, &gw11), "X-A: 1\r\n");
    gw_header_kv_t kv = {"via", "1.1 front"};
    gw_header_ops_t set = {.set = &kv, .nset = 1};
    assert_string_equal(forward(&a, h, 4, &set, &gw11), "X-A: 1\r\nvia: 1.1 front\r\n");
    gw_arena_free(&a);
}

/* X-Forwarded-For: lines combined, the client appended; a route that sets or removes it decides
 * it alone, as nginx's proxy_set_header does. */
static void test_forward_x_forwarded_for(void **state)
{
    (void)state;
    gw_arena_t a;
    gw_arena_init(&a, 4096, 0, NULL);
    gw_header_t h[] = {hdr("X-Forwarded-For", "203.0.113.1"), hdr("X-A", "1"),
                       hdr("x-forwarded-for", "10.0.0.1")};
    gw_header_ops_t none = {0};
    gw_http1_via_t client = {.major = 1, .minor = 1, .forwarded_for = S("127.0.0.1")};
    assert_string_equal(forward(&a, h, 3, &none, &client),
                        "X-A: 1\r\nX-Forwarded-For: 203.0.113.1, 10.0.0.1, 127.0.0.1\r\n");
    char *rm[] = {"X-Forwarded-For"};
    gw_header_ops_t remove = {.remove = rm, .nremove = 1};
    assert_string_equal(forward(&a, h, 3, &remove, &client), "X-A: 1\r\n");
    gw_header_kv_t kv = {"x-forwarded-for", "198.51.100.1"};
    gw_header_ops_t set = {.set = &kv, .nset = 1};
    assert_string_equal(forward(&a, h, 3, &set, &client),
                        "X-A: 1\r\nx-forwarded-for: 198.51.100.1\r\n");
    gw_arena_free(&a);
}

/* A Connection list split over several lines is one list: a name on any line is hop-by-hop. */
static void test_forward_connection_lines(void **state)
{
    (void)state;
    gw_arena_t a;
    gw_arena_init(&a, 4096, 0, NULL);
    gw_header_t h[] = {hdr("Connection", "x-secret"), hdr("X-Secret", "1"), hdr("X-Other", "2"),
                       hdr("X-Hop", "3"), hdr("CONNECTION", "keep-alive, X-HOP")};
    gw_header_ops_t none = {0};
    gw_http1_via_t off = {.major = 1, .minor = 1};
    assert_string_equal(forward(&a, h, 5, &none, &off), "X-Other: 2\r\n");
    assert_true(gw_http1_field_has(h, 5, S("connection"), S("x-hop")));
    assert_false(gw_http1_field_has(h, 5, S("connection"), S("x-other")));
    gw_arena_free(&a);
}

static void test_reason_and_methods(void **state)
{
    assert_string_equal(gw_http1_reason(431), "Request Header Fields Too Large");
    assert_string_equal(gw_http1_reason(799), "Unknown");
    assert_string_equal(gw_http1_reason(103), "Early Hints");
    assert_true(gw_http1_method_idempotent(HTTP_GET));
    assert_true(gw_http1_method_idempotent(HTTP_PUT));
    assert_true(gw_http1_method_idempotent(HTTP_DELETE));
    assert_false(gw_http1_method_idempotent(HTTP_POST));
    assert_false(gw_http1_method_idempotent(HTTP_PATCH));
    assert_true(gw_http1_response_bodyless(200, true));
    assert_true(gw_http1_response_bodyless(204, false));
    assert_true(gw_http1_response_bodyless(304, false));
    assert_true(gw_http1_response_bodyless(103, false));
    assert_false(gw_http1_response_bodyless(200, false));
    assert_false(gw_http1_response_bodyless(404, false));
}

static void test_parse_u64(void **state)
{
    assert_int_equal(gw_http1_parse_u64(S("0")), 0);
    assert_int_equal(gw_http1_parse_u64(S("1234567890")), 1234567890);
    assert_int_equal(gw_http1_parse_u64(S("")), -1);
    assert_int_equal(gw_http1_parse_u64(S("-1")), -1);
    assert_int_equal(gw_http1_parse_u64(S("12a")), -1);
    assert_int_equal(gw_http1_parse_u64(S("1234567890123456789")), -1);
}

static void test_buf_grows_in_arena(void **state)
{
    gw_arena_t a;
    gw_arena_init(&a, 1024, 0, NULL);
    gw_buf_t b;
    gw_buf_init(&b, &a, 8);
    for (int i = 0; i < 100; i++)
        gw_buf_append_header(&b, S("X-N"), S("value"));
    gw_buf_append_u64(&b, 18446744073709551615ULL);
    assert_false(b.oom);
    assert_int_equal(b.len, 100 * strlen("X-N: value\r\n") + 20);
    assert_memory_equal(b.p, "X-N: value\r\nX-N:", 16);
    assert_memory_equal(b.p + b.len - 20, "18446744073709551615", 20);
    gw_arena_free(&a);
}

static void test_buf_oom_is_sticky(void **state)
{
    gw_arena_t a;
    gw_arena_init(&a, 256, 512, NULL); /* at most 512 bytes in blocks */
    gw_buf_t b;
    gw_buf_init(&b, &a, 64);
    char big[600];
    memset(big, 'x', sizeof big);
    gw_buf_append(&b, big, sizeof big);
    assert_true(b.oom);
    size_t len = b.len;
    gw_buf_append(&b, "y", 1);
    assert_int_equal(b.len, len);
    gw_arena_free(&a);
}

static void test_arena_reset_keeps_first_block(void **state)
{
    gw_arena_t a;
    gw_arena_init(&a, 4096, 0, NULL);
    char *p1 = gw_arena_alloc(&a, 100);
    assert_non_null(p1);
    assert_int_equal((uintptr_t)p1 % 16, 0);
    void *big = gw_arena_alloc(&a, 10000); /* its own block */
    assert_non_null(big);
    assert_int_equal(a.total, 4096 + 10000);
    char *p2 = gw_arena_alloc(&a, 100); /* still from the first block */
    assert_ptr_equal(p2, p1 + 112);
    gw_arena_reset(&a);
    assert_int_equal(a.total, 4096);
    char *p3 = gw_arena_alloc(&a, 10);
    assert_ptr_equal(p3, p1); /* the kept block is reused from its start: no malloc */
    char *d = gw_arena_dup(&a, "abc", 3);
    assert_string_equal(d, "abc");
    gw_arena_free(&a);
    assert_null(a.head);
}

static void test_arena_limit(void **state)
{
    gw_arena_t a;
    gw_arena_init(&a, 1024, 2048, NULL);
    assert_non_null(gw_arena_alloc(&a, 1000));
    assert_non_null(gw_arena_alloc(&a, 1000));
    assert_null(gw_arena_alloc(&a, 1000));
    gw_arena_free(&a);
}

static void test_arena_cache_reuses_blocks(void **state)
{
    gw_arena_cache_t cache = {.max = 1};
    gw_arena_t a, b;
    gw_arena_init(&a, 1024, 0, &cache);
    gw_arena_init(&b, 1024, 0, &cache);
    char *pa = gw_arena_alloc(&a, 10);
    assert_non_null(gw_arena_alloc(&b, 10));
    gw_arena_free(&a); /* parked in the cache */
    assert_int_equal(cache.n, 1);
    gw_arena_free(&b); /* cache full: freed */
    assert_int_equal(cache.n, 1);
    char *pb = gw_arena_alloc(&b, 10);
    assert_ptr_equal(pb, pa); /* the parked block came back */
    assert_int_equal(cache.n, 0);
    assert_int_equal(b.total, 1024);
    gw_arena_free(&b);
    gw_arena_cache_trim(&cache, 0);
    assert_int_equal(cache.n, 0);
    assert_null(cache.free);
}

static void assert_slice(gw_slice_t s, const char *want)
{
    if (want == NULL) {
        assert_null(s.p);
        return;
    }
    assert_non_null(s.p);
    assert_int_equal(s.len, strlen(want));
    assert_memory_equal(s.p, want, s.len);
}

static void test_url_split(void **state)
{
    (void)state;
    gw_http1_url_t u;
    assert_int_equal(gw_http1_url_split("http://example.com:8080/", &u), GW_URL_OK);
    assert_slice(u.authority, "example.com:8080");
    assert_slice(u.host, "example.com");
    assert_slice(u.port, "8080");
    assert_false(u.bracketed);
    assert_int_equal(gw_http1_url_split("HTTP://[::1]:9", &u), GW_URL_OK);
    assert_slice(u.host, "::1");
    assert_slice(u.port, "9");
    assert_true(u.bracketed);
    assert_int_equal(gw_http1_url_split("http://h", &u), GW_URL_OK);
    assert_slice(u.port, NULL);
    assert_int_equal(gw_http1_url_split("http://h:", &u), GW_URL_OK);
    assert_int_equal(u.port.len, 0);
    assert_non_null(u.port.p);
    assert_int_equal(gw_http1_url_split("http://", &u), GW_URL_OK);
    assert_int_equal(u.host.len, 0);

    assert_int_equal(gw_http1_url_split("https://h", &u), GW_URL_HTTPS);
    assert_int_equal(gw_http1_url_split("ftp://h", &u), GW_URL_NOT_HTTP);
    assert_int_equal(gw_http1_url_split("http://u@h", &u), GW_URL_USERINFO);
    assert_int_equal(gw_http1_url_split("http://h/?x", &u), GW_URL_QUERY);
    assert_int_equal(gw_http1_url_split("http://h#f", &u), GW_URL_QUERY);
    assert_int_equal(gw_http1_url_split("http://h/api", &u), GW_URL_PATH);
    assert_int_equal(gw_http1_url_split("http://[::1", &u), GW_URL_UNTERMINATED_V6);
    assert_int_equal(gw_http1_url_split("http://[::1]x", &u), GW_URL_AFTER_V6);

    assert_int_equal(gw_http1_parse_port(GW_SLICE_LIT("65535")), 65535);
    assert_int_equal(gw_http1_parse_port(GW_SLICE_LIT("1")), 1);
    assert_int_equal(gw_http1_parse_port(GW_SLICE_LIT("0")), 0);
    assert_int_equal(gw_http1_parse_port(GW_SLICE_LIT("65536")), 0);
    assert_int_equal(gw_http1_parse_port(GW_SLICE_LIT("008080")), 0);
    assert_int_equal(gw_http1_parse_port(GW_SLICE_LIT("8a")), 0);
    assert_int_equal(gw_http1_parse_port(GW_SLICE_LIT("")), 0);
    /* Anything after the digits makes the port invalid (static and registered URLs alike). */
    assert_int_equal(gw_http1_url_split("http://h:80x", &u), GW_URL_OK);
    assert_slice(u.port, "80x");
    assert_int_equal(gw_http1_parse_port(u.port), 0);
    assert_int_equal(gw_http1_url_split("http://[::1]:80 ", &u), GW_URL_OK);
    assert_int_equal(gw_http1_parse_port(u.port), 0);
    assert_int_equal(gw_http1_parse_port(GW_SLICE("80\0x", 4)), 0);
    assert_int_equal(gw_http1_parse_port(GW_SLICE("80\0", 3)), 0);
    assert_int_equal(gw_http1_parse_port(GW_SLICE("\00180", 3)), 0); /* \001 then "80" */
}

static bool authority(const char *s)
{
    return gw_http1_authority_valid(GW_SLICE(s, strlen(s)));
}

static void test_authority(void **state)
{
    (void)state;
    /* What RFC 3986 §3.2 allows: reg-names, IPv4, IP literals, a port that may be empty. */
    static const char *const good[] = {
        "",
        "example.com",
        "EXAMPLE.com.",
        "a-b_c~d.e",
        "h:80",
        "h:",
        "h:0",
        "h:65535",
        "h:00080",
        "127.0.0.1",
        "10.0.0.1:8080",
        "[::1]",
        "[::1]:8080",
        "[::1]:",
        "[2001:db8::7]",
        "[::ffff:1.2.3.4]",
        "[v1.fe:80]",
        "[V7.a!$]",
        "ex%41mple.com",
        "a!$&'()*+,;=b",
        "999.999.999.999",
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(good); i++) {
        if (!authority(good[i]))
            fail_msg("authority \"%s\" should be valid", good[i]);
    }
    static const char *const bad[] = {
        "u@h",     "user:pw@h:80", "h/x",       "h?x",   "h#x",    "h:80x",       "h:80:80",
        "h:65536", "h:-1",         "h: 80",     "[::1",  "[::1]x", "[::1]:80:80", "[::1]80",
        "[]",      "[::g]",        "[1.2.3.4]", "[v.x]", "[v1.]",  "[vx.y]",      "[::1%25eth0]",
        "::1",     "a b",          "a\tb",      " h",    "h ",     "h\\x",        "h%",
        "h%4",     "h%zz",         ":80",       "h\"",   "[::1]]", "h[",
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++) {
        if (authority(bad[i]))
            fail_msg("authority \"%s\" should be invalid", bad[i]);
    }
    assert_false(gw_http1_authority_valid(GW_SLICE("h\0x", 3)));
    /* Found by fuzz_http1: inet_pton read the literal only up to a NUL. */
    assert_false(gw_http1_authority_valid(GW_SLICE("[::98\0v1B\0\0]", 14)));
    assert_false(gw_http1_authority_valid(GW_SLICE("[::1\0]:80", 9)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_hop_by_hop),
        cmocka_unit_test(test_list_has),
        cmocka_unit_test(test_list_next),
        cmocka_unit_test(test_list_header_combines_lines),
        cmocka_unit_test(test_forward_via),
        cmocka_unit_test(test_forward_connection_lines),
        cmocka_unit_test(test_forward_x_forwarded_for),
        cmocka_unit_test(test_reason_and_methods),
        cmocka_unit_test(test_parse_u64),
        cmocka_unit_test(test_buf_grows_in_arena),
        cmocka_unit_test(test_buf_oom_is_sticky),
        cmocka_unit_test(test_arena_reset_keeps_first_block),
        cmocka_unit_test(test_arena_limit),
        cmocka_unit_test(test_arena_cache_reuses_blocks),
        cmocka_unit_test(test_url_split),
        cmocka_unit_test(test_authority),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
