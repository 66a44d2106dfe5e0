/*
 * Fuzzes a client's request head as the gateway reads and checks it (core/conn.c on top of
 * llhttp, core/router.c, core/http1.c): the input is the bytes a client sends, read in two
 * pieces split where the first byte says by gw_conn_read_head (conn.c's llhttp callbacks: field
 * names, obs-fold, Expect, limits), then checked and routed by gw_conn_check_head (version, Host
 * count and syntax, Transfer-Encoding and Content-Length, the target's form, the canonical path,
 * the route), and when it goes upstream its head is built by gw_conn_build_upstream_head. The
 * config's routes cover host patterns, methods, strip/add prefix, merge_slashes, encoded_slash
 * "decode" and "reject", normalize_path and a static response; its limits are small, so 414, 431
 * and 413 are reached too.
 *
 * Checks: a refused request gets one of the statuses the gateway documents for a bad head (never
 * a 500); an accepted one has a valid Host and a path that is its own canonical form, with no
 * dot segment; the head sent upstream has a clean request line, "name: value" lines with no bare
 * CR or LF and no obs-fold, at most one framing header, and no hop-by-hop field but the ones
 * the gateway writes itself. Besides, the path of every input is canonicalised under all four
 * option sets, and canonicalising a canonical path must change nothing.
 */
#include <string.h>

#include "fuzz.h"
#include "log.h"
#include "router.h"
#include "worker.h"

static gw_config_t *cfg;
static gw_worker_t worker;

static const char config_src[] =
    "return {\n"
    "  listen = '127.0.0.1:18080',\n"
    "  limits = { header_bytes = 4096, uri_bytes = 1024, headers = 24, body_bytes = 1000 },\n"
    "  upstreams = { api = { backends = { 'http://127.0.0.1:9001' } } },\n"
    "  routes = {\n"
    "    { match = { host = 'api.example.com', path_prefix = '/api/' }, upstream = 'api',\n"
    "      strip_prefix = true, add_prefix = '/v1' },\n"
    "    { match = { path_prefix = '/files/' }, upstream = 'api', merge_slashes = true,\n"
    "      encoded_slash = 'decode', normalize_path = true },\n"
    "    { match = { path_prefix = '/static/', methods = { 'GET', 'HEAD' } },\n"
    "      respond = { status = 200, body = 'ok' } },\n"
    "    { match = { host = '*.example.org' }, upstream = 'api', preserve_host = true,\n"
    "      request_headers = { set = { ['X-Gw'] = '1' }, remove = { 'cookie' } } },\n"
    "    { match = { path_prefix = '/app' }, upstream = 'api', merge_slashes = true },\n"
    "  },\n"
    "}\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    gw_log_set_level(GW_LOG_ERR);
    char *err = NULL;
    cfg = gw_config_load_string("fuzz_request_head.lua", config_src, NULL, &err);
    if (!cfg) {
        fprintf(stderr, "fuzz_request_head: %s\n", err);
        abort();
    }
    worker.cfg = cfg;
    worker.rng = 1;
    return 0;
}

/* A dot segment ("." or "..") anywhere in `p`. */
static bool has_dot_segment(gw_slice_t p)
{
    size_t i = 0;
    while (i < p.len) {
        size_t start = ++i; /* just past a '/' */
        while (i < p.len && p.p[i] != '/')
            i++;
        size_t n = i - start;
        if ((n == 1 && p.p[start] == '.') || (n == 2 && p.p[start] == '.' && p.p[start + 1] == '.'))
            return true;
    }
    return false;
}

/* Canonicalising is idempotent, never longer, and leaves no dot segment. */
static void check_canonical(gw_slice_t path)
{
    if (path.len == 0 || path.p[0] != '/')
        return;
    char *a = malloc(path.len), *b = malloc(path.len);
    for (int opts = 0; opts < 4; opts++) {
        bool merge = opts & 1, decode = opts & 2;
        ssize_t n = gw_router_canonical_path(path, merge, decode, a, path.len);
        if (n < 0) {
            GW_FUZZ_CHECK(n == GW_ROUTER_EESCAPE || n == GW_ROUTER_ESLASH);
            continue;
        }
        GW_FUZZ_CHECK((size_t)n <= path.len && n > 0 && a[0] == '/');
        GW_FUZZ_CHECK(!has_dot_segment(GW_SLICE(a, (size_t)n)));
        ssize_t m = gw_router_canonical_path(GW_SLICE(a, (size_t)n), merge, decode, b, (size_t)n);
        GW_FUZZ_CHECK(m == n && memcmp(a, b, (size_t)n) == 0);
    }
    free(a);
    free(b);
}

static bool line_is(gw_slice_t line, const char *name)
{
    size_t n = strlen(name);
    return line.len > n && line.p[n] == ':' && gw_slice_ieq(GW_SLICE(line.p, n), name);
}

static void check_upstream_head(const gw_request_t *r)
{
    const gw_buf_t *b = &r->up_head;
    for (size_t i = 0; i < b->len; i++) {
        if (b->p[i] == '\r')
            GW_FUZZ_CHECK(i + 1 < b->len && b->p[i + 1] == '\n');
        if (b->p[i] == '\n')
            GW_FUZZ_CHECK(i > 0 && b->p[i - 1] == '\r');
    }
    GW_FUZZ_CHECK(b->len >= 2 && memcmp(b->p + b->len - 2, "\r\n", 2) == 0);
    int cl = 0, te = 0, conn = 0, upgrade = 0;
    size_t off = 0;
    bool first = true;
    while (off < b->len) {
        const char *eol = memchr(b->p + off, '\r', b->len - off);
        gw_slice_t line = GW_SLICE(b->p + off, (size_t)(eol - (b->p + off)));
        off += line.len + 2;
        if (first) {
            /* METHOD SP target SP HTTP/1.1, the target without spaces */
            first = false;
            const char *sp1 = memchr(line.p, ' ', line.len);
            GW_FUZZ_CHECK(sp1 && line.len > 9);
            GW_FUZZ_CHECK(memcmp(line.p + line.len - 9, " HTTP/1.1", 9) == 0);
            gw_slice_t target = GW_SLICE(sp1 + 1, (size_t)(line.p + line.len - 9 - (sp1 + 1)));
            GW_FUZZ_CHECK(target.len > 0 && target.p[0] == '/');
            GW_FUZZ_CHECK(!memchr(target.p, ' ', target.len));
            continue;
        }
        GW_FUZZ_CHECK(line.len > 0 && line.p[0] != ' ' && line.p[0] != '\t');
        const char *colon = memchr(line.p, ':', line.len);
        GW_FUZZ_CHECK(colon != NULL);
        gw_slice_t name = GW_SLICE(line.p, (size_t)(colon - line.p));
        GW_FUZZ_CHECK(gw_http1_is_token(name));
        cl += line_is(line, "content-length");
        te += line_is(line, "transfer-encoding");
        conn += line_is(line, "connection");
        upgrade += line_is(line, "upgrade");
        if (gw_http1_is_hop_by_hop(name))
            GW_FUZZ_CHECK(gw_slice_ieq(name, "transfer-encoding") ||
                          gw_slice_ieq(name, "connection") || gw_slice_ieq(name, "upgrade"));
        GW_FUZZ_CHECK(!gw_slice_ieq(name, "host"));
    }
    GW_FUZZ_CHECK(cl <= 1 && te <= 1 && !(cl && te));
    GW_FUZZ_CHECK(te == (r->chunked ? 1 : 0));
    GW_FUZZ_CHECK(conn == (r->is_upgrade ? 1 : 0) && upgrade == conn);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t split = data[0];
    data++;
    size--;
    if (size > gw_worker_buf_size(&worker) - 1)
        size = gw_worker_buf_size(&worker) - 1;

    /* The path alone, whatever llhttp would say of it. */
    const char *sp = memchr(data, ' ', size);
    if (sp) {
        const char *end = memchr(sp + 1, ' ', size - (size_t)(sp + 1 - (const char *)data));
        if (end)
            check_canonical(GW_SLICE(sp + 1, (size_t)(end - (sp + 1))));
    }

    gw_conn_t *c = calloc(1, sizeof *c);
    char *in = malloc(size ? size : 1);
    memcpy(in, data, size);
    c->w = &worker;
    gw_arena_init(&c->arena, 8192, 0, NULL);
    gw_conn_prepare(c);
    c->in = in;
    c->state = GW_CS_HEAD;
    c->in_len = size ? split * size / 255 : 0;
    gw_conn_verdict_t v;
    int rc = gw_conn_read_head(c, &v);
    if (rc == 0) {
        c->in_len = size;
        rc = gw_conn_read_head(c, &v);
    }
    GW_FUZZ_CHECK(c->parsed <= c->in_len);
    if (rc < 0) {
        GW_FUZZ_CHECK(v.status == 400 || v.status == 413 || v.status == 414 || v.status == 417 ||
                      v.status == 431 || v.status == 505);
        GW_FUZZ_CHECK(v.code && v.message);
    }
    if (rc > 0) {
        gw_request_t *r = &c->req;
        GW_FUZZ_CHECK(c->head_end == c->parsed && c->parsed <= size);
        for (uint32_t i = 0; i < r->nheaders; i++) {
            gw_slice_t n = r->headers[i].name, val = r->headers[i].value;
            GW_FUZZ_CHECK(gw_http1_is_token(n));
            GW_FUZZ_CHECK(n.p >= in && n.p + n.len <= in + c->head_end);
            GW_FUZZ_CHECK(val.len == 0 || (val.p >= in && val.p + val.len <= in + c->head_end));
            GW_FUZZ_CHECK(!memchr(val.p, '\n', val.len) && !memchr(val.p, '\r', val.len));
        }
        r->request_id = GW_SLICE_LIT("fuzz");
        if (gw_conn_check_head(c, &v)) {
            GW_FUZZ_CHECK(r->route >= 0 && (size_t)r->route < cfg->nroutes);
            GW_FUZZ_CHECK(gw_http1_authority_valid(r->host));
            GW_FUZZ_CHECK(r->raw_path.len > 0 && r->raw_path.p[0] == '/');
            GW_FUZZ_CHECK(r->up_path.len > 0 && r->up_path.p[0] == '/');
            GW_FUZZ_CHECK(!has_dot_segment(r->up_path));
            const gw_route_cfg_t *route = &cfg->routes[r->route];
            if (!route->has_respond) {
                GW_FUZZ_CHECK(gw_conn_build_upstream_head(c, route));
                check_upstream_head(r);
            }
        } else {
            GW_FUZZ_CHECK(v.status == 400 || v.status == 404 || v.status == 405 ||
                          v.status == 413 || v.status == 417 || v.status == 505);
        }
    }
    gw_arena_free(&c->arena);
    free(in);
    free(c);
    return 0;
}
