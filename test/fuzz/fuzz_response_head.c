/*
 * Fuzzes what the gateway does with a backend's response head (core/proxy.c): the input is the
 * response as the backend sends it, read in two pieces by gw_proxy_read_head (llhttp with the
 * proxy's callbacks; 1xx interim heads are passed over as if relayed), then turned into the
 * client's head by gw_proxy_build_client_head, which also decides the framing towards the client;
 * the rest is fed to the parser as body (de-chunking for HTTP/1.0 clients collects spans). A flag
 * byte sets the request's side: HEAD or not, HTTP/1.0 or 1.1, keep-alive, an Upgrade request, a
 * draining worker, and the route (plain, or with response header operations).
 *
 * PGW_FUZZ_PRINT=1 in the environment prints each head sent to the client.
 *
 * Checks on the head sent to the client: a status line, "name: value" lines with no bare CR or
 * LF and no obs-fold continuation (RFC 9112 §5.2: a proxy must not forward one), at most one
 * framing header and never Transfer-Encoding on a response that has no body, one Connection
 * line at most, and the blank line at the end.
 */
#include <string.h>

#include "fuzz.h"
#include "log.h"
#include "worker.h"

#define IN_MAX (48 * 1024)

static gw_config_t *cfg;
static gw_worker_t worker;

static const char config_src[] =
    "return {\n"
    "  listen = '127.0.0.1:18080',\n"
    "  upstreams = { api = { backends = { 'http://127.0.0.1:9001' } } },\n"
    "  routes = {\n"
    "    { match = { path_prefix = '/plain' }, upstream = 'api' },\n"
    "    { match = { path_prefix = '/ops' }, upstream = 'api',\n"
    "      response_headers = { set = { ['X-Set'] = 'v', Server = 'gw' },\n"
    "                           remove = { 'x-remove', 'etag' } } },\n"
    "  },\n"
    "}\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    gw_log_set_level(GW_LOG_ERR);
    char *err = NULL;
    cfg = gw_config_load_string("fuzz_response_head.lua", config_src, NULL, &err);
    if (!cfg) {
        fprintf(stderr, "fuzz_response_head: %s\n", err);
        abort();
    }
    worker.cfg = cfg;
    return 0;
}

static bool line_is(gw_slice_t line, const char *name)
{
    size_t n = strlen(name);
    return line.len > n && line.p[n] == ':' && gw_slice_ieq(GW_SLICE(line.p, n), name);
}

static void check_head(const gw_buf_t *b, int status, bool bodyless)
{
    GW_FUZZ_CHECK(b->len >= 17 && memcmp(b->p, "HTTP/1.1 ", 9) == 0);
    GW_FUZZ_CHECK(memcmp(b->p + b->len - 4, "\r\n\r\n", 4) == 0);
    for (size_t i = 0; i < b->len; i++) {
        if (b->p[i] == '\r')
            GW_FUZZ_CHECK(i + 1 < b->len && b->p[i + 1] == '\n');
        if (b->p[i] == '\n')
            GW_FUZZ_CHECK(i > 0 && b->p[i - 1] == '\r');
    }
    int cl = 0, te = 0, conn = 0;
    size_t off = 0;
    bool first = true;
    while (off < b->len) {
        const char *eol = memchr(b->p + off, '\r', b->len - off);
        GW_FUZZ_CHECK(eol != NULL);
        gw_slice_t line = GW_SLICE(b->p + off, (size_t)(eol - (b->p + off)));
        off += line.len + 2;
        if (first) {
            first = false;
            continue;
        }
        if (line.len == 0) {
            GW_FUZZ_CHECK(off == b->len); /* the blank line ends the head */
            break;
        }
        GW_FUZZ_CHECK(line.p[0] != ' ' && line.p[0] != '\t'); /* no obs-fold */
        GW_FUZZ_CHECK(memchr(line.p, ':', line.len) != NULL);
        cl += line_is(line, "content-length");
        te += line_is(line, "transfer-encoding");
        conn += line_is(line, "connection");
    }
    GW_FUZZ_CHECK(cl <= 1 && te <= 1 && !(cl && te));
    GW_FUZZ_CHECK(!(bodyless && te));
    GW_FUZZ_CHECK(conn <= 1);
    GW_FUZZ_CHECK(status >= 100 && status <= 999);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t flags = data[0];
    size_t split = data[1];
    data += 2;
    size -= 2;
    if (size > IN_MAX)
        size = IN_MAX;

    gw_conn_t *c = calloc(1, sizeof *c);
    gw_upconn_t *u = calloc(1, sizeof *u);
    char *in = malloc(size ? size : 1);
    memcpy(in, data, size);
    worker.draining = flags & 0x08;
    c->w = &worker;
    gw_arena_init(&c->arena, 4096, 1 << 20, NULL);
    gw_request_t *r = &c->req;
    r->head_request = flags & 0x01;
    r->http_minor = flags & 0x02 ? 1 : 0;
    r->keep_alive = flags & 0x04;
    r->is_upgrade = flags & 0x10;
    r->route = (flags >> 5) % (int)cfg->nroutes;
    r->upstream = 0;
    r->request_id = GW_SLICE_LIT("fuzz");

    u->in = in;
    gw_proxy_attach(c, u, false);
    /* Two reads; 1xx heads are skipped as if relayed (the next call goes on after them). */
    u->in_len = size ? split * size / 255 : 0;
    size_t arrived = u->in_len;
    int rh;
    while ((rh = gw_proxy_read_head(u)) == GW_PROXY_HEAD_INTERIM)
        GW_FUZZ_CHECK(u->nheaders <= 256);
    if (rh == GW_PROXY_HEAD_MORE) {
        /* The second read lands after what is left of the first (1xx bytes were dropped). */
        size_t kept = u->in_len;
        memmove(in + kept, data + arrived, size - arrived);
        u->in_len = kept + (size - arrived);
        while ((rh = gw_proxy_read_head(u)) == GW_PROXY_HEAD_INTERIM)
            ;
    }
    GW_FUZZ_CHECK(u->parsed <= u->in_len);
    if (rh == GW_PROXY_HEAD_FINAL) {
        for (uint32_t i = 0; i < u->nheaders; i++) {
            gw_slice_t n = u->headers[i].name, v = u->headers[i].value;
            GW_FUZZ_CHECK(n.p >= in && n.p + n.len <= in + u->in_len);
            GW_FUZZ_CHECK(v.len == 0 || (v.p >= in && v.p + v.len <= in + u->in_len));
        }
        int status = u->parser.status_code;
        gw_buf_t b;
        GW_FUZZ_CHECK(gw_proxy_build_client_head(c, u, &b) == 1);
        if (getenv("PGW_FUZZ_PRINT"))
            fprintf(stderr, "---\n%.*s---\n", (int)b.len, b.p);
        check_head(&b, status, gw_http1_response_bodyless(status, r->head_request));
        /* The body, through the proxy's body callback (spans kept when de-chunking). */
        if (u->parsed < u->in_len && status != 101)
            llhttp_execute(&u->parser, u->in + u->parsed, u->in_len - u->parsed);
    }
    free(u->body_bufs);
    gw_arena_free(&c->arena);
    free(in);
    free(u);
    free(c);
    return 0;
}
