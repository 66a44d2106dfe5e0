/*
 * Unit tests for core/admin.c: the admin listener on a real uv loop, bound to 127.0.0.1 port 0,
 * talked to by a non-blocking client socket in the same thread. The client pumps the loop with
 * uv_run(UV_RUN_NOWAIT) while it waits, so every assertion runs on the test's own thread. Every
 * test ends by closing the admin, running the loop dry and checking that uv_loop_close finds no
 * handle left.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "admin.h"
#include "metrics.h"

#define CLIENT_BUF (256 * 1024)
#define DEADLINE_MS 20000 /* generous: valgrind is slow */

typedef struct fixture {
    uv_loop_t loop;
    gw_backend_cfg_t backend_cfg[1];
    gw_upstream_cfg_t upstream[1];
    gw_route_cfg_t route[1];
    gw_config_t cfg;
    gw_backend_t backend_state[1];
    gw_backend_t *backends[1];
    gw_metrics_shard_t *shards[2];
    gw_admin_source_t src;
    gw_admin_t *admin;
    int port;
    int done_calls;
} fixture_t;

typedef struct client {
    int fd;
    bool eof;
    size_t len;
    char buf[CLIENT_BUF];
} client_t;

typedef struct response {
    int status;
    char head[8192]; /* NUL-terminated, status line and headers */
    char *body;      /* malloc'd, NUL-terminated */
    size_t body_len;
} response_t;

static fixture_t *g_fix; /* the loop the client pumps */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void pump(void)
{
    uv_run(&g_fix->loop, UV_RUN_NOWAIT);
    usleep(200);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->backend_cfg[0] = (gw_backend_cfg_t){.url = "http://127.0.0.1:9001", .gindex = 0};
    f->upstream[0] = (gw_upstream_cfg_t){.name = "api", .backends = f->backend_cfg, .nbackends = 1};
    f->route[0] = (gw_route_cfg_t){.name = "api", .upstream = 0};
    f->cfg.upstreams = f->upstream;
    f->cfg.nupstreams = 1;
    f->cfg.routes = f->route;
    f->cfg.nroutes = 1;
    f->cfg.nbackends_total = 1;
    f->cfg.admin_enabled = true;
    struct sockaddr_in sin;
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &sin), 0);
    memcpy(&f->cfg.admin_listen.sa, &sin, sizeof(sin));
    f->cfg.admin_listen.salen = sizeof(sin);
    f->backend_state[0] = (gw_backend_t){.cfg = &f->backend_cfg[0], .healthy = 1};
    f->backends[0] = &f->backend_state[0];
    f->shards[0] = gw_metrics_shard_new(&f->cfg);
    f->shards[1] = gw_metrics_shard_new(&f->cfg);
    f->shards[0]->requests[0][2] = 5;
    f->src = (gw_admin_source_t){
        .cfg = &f->cfg, .shards = f->shards, .nshards = 2, .backends = f->backends};
    assert_int_equal(gw_admin_start(&f->loop, &f->src, &f->admin), 0);
    f->port = gw_admin_port(f->admin);
    assert_true(f->port > 0);
    g_fix = f;
    *state = f;
    return 0;
}

static void on_done(void *arg)
{
    fixture_t *f = arg;
    f->done_calls++;
}

/* Closes the admin (if a test has not), runs the loop dry, and checks no handle is left. */
static int teardown(void **state)
{
    fixture_t *f = *state;
    if (f->admin != NULL)
        gw_admin_close(f->admin, on_done, f);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->done_calls, 1);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    gw_metrics_shard_free(f->shards[0]);
    gw_metrics_shard_free(f->shards[1]);
    free(f);
    g_fix = NULL;
    return 0;
}

/* ---- the client ---- */

/* `rcvbuf` > 0 shrinks the client's receive buffer (before connecting, so the window is small). */
static client_t *client_open_rcvbuf(int port, int rcvbuf)
{
    client_t *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(c->fd >= 0);
    if (rcvbuf > 0)
        assert_int_equal(setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
    struct sockaddr_in sin;
    assert_int_equal(uv_ip4_addr("127.0.0.1", port, &sin), 0);
    int rc = connect(c->fd, (struct sockaddr *)&sin, sizeof(sin));
    assert_true(rc == 0 || errno == EINPROGRESS);
    return c;
}

static client_t *client_open(int port)
{
    return client_open_rcvbuf(port, 0);
}

static void client_close(client_t *c)
{
    close(c->fd);
    free(c);
}

static void client_send(client_t *c, const char *data, size_t len)
{
    uint64_t deadline = now_ms() + DEADLINE_MS;
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(c->fd, data + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        assert_true(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOTCONN ||
                              errno == EINTR));
        assert_true(now_ms() < deadline);
        pump();
    }
}

static void client_send_str(client_t *c, const char *s)
{
    client_send(c, s, strlen(s));
}

/* Reads more bytes (or EOF) while pumping the loop. Returns false at EOF. */
static bool client_fill(client_t *c, uint64_t deadline)
{
    for (;;) {
        assert_true(c->len < sizeof(c->buf));
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
        if (n > 0) {
            c->len += (size_t)n;
            return true;
        }
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            c->eof = true;
            return false;
        }
        assert_true(errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOTCONN || errno == EINTR);
        if (now_ms() >= deadline)
            fail_msg("timed out waiting for the admin server");
        pump();
    }
}

static const char *find_header(const char *head, const char *name, char *out, size_t outsz)
{
    size_t n = strlen(name);
    for (const char *p = strstr(head, "\r\n"); p != NULL; p = strstr(p + 2, "\r\n")) {
        const char *line = p + 2;
        if (strncasecmp(line, name, n) == 0 && line[n] == ':') {
            const char *v = line + n + 1;
            while (*v == ' ')
                v++;
            const char *e = strstr(v, "\r\n");
            size_t len = e ? (size_t)(e - v) : strlen(v);
            assert_true(len < outsz);
            memcpy(out, v, len);
            out[len] = '\0';
            return out;
        }
    }
    return NULL;
}

/* Reads one response; `head_only` for a response to HEAD (Content-Length but no body). */
static void client_response(client_t *c, response_t *r, bool head_only)
{
    uint64_t deadline = now_ms() + DEADLINE_MS;
    char *end;
    for (;;) {
        c->buf[c->len] = '\0';
        end = c->len ? strstr(c->buf, "\r\n\r\n") : NULL;
        if (end != NULL)
            break;
        if (!client_fill(c, deadline))
            fail_msg("connection closed before a response head");
    }
    size_t head_len = (size_t)(end - c->buf) + 4;
    assert_true(head_len < sizeof(r->head));
    memcpy(r->head, c->buf, head_len);
    r->head[head_len] = '\0';
    assert_int_equal(sscanf(r->head, "HTTP/1.1 %d ", &r->status), 1);
    char cl[32];
    assert_non_null(find_header(r->head, "Content-Length", cl, sizeof(cl)));
    r->body_len = head_only ? 0 : strtoul(cl, NULL, 10);
    while (c->len < head_len + r->body_len)
        if (!client_fill(c, deadline))
            fail_msg("connection closed inside a response body");
    r->body = malloc(r->body_len + 1);
    assert_non_null(r->body);
    memcpy(r->body, c->buf + head_len, r->body_len);
    r->body[r->body_len] = '\0';
    size_t used = head_len + r->body_len;
    memmove(c->buf, c->buf + used, c->len - used);
    c->len -= used;
}

static void response_free(response_t *r)
{
    free(r->body);
    r->body = NULL;
}

/* Expects the server to close the connection with nothing more to say. */
static void client_expect_eof(client_t *c)
{
    uint64_t deadline = now_ms() + DEADLINE_MS;
    while (client_fill(c, deadline))
        ;
    assert_int_equal(c->len, 0);
}

static bool has_header(const response_t *r, const char *name, const char *value)
{
    char v[256];
    return find_header(r->head, name, v, sizeof(v)) != NULL && strcmp(v, value) == 0;
}

/* One request on a fresh connection, its response read into *r. */
static void roundtrip(fixture_t *f, const char *req, response_t *r, bool head_only)
{
    client_t *c = client_open(f->port);
    client_send_str(c, req);
    client_response(c, r, head_only);
    client_close(c);
}

/* ---- tests ---- */

static void test_get_metrics(void **state)
{
    fixture_t *f = *state;
    response_t r = {0};
    roundtrip(f, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &r, false);
    assert_int_equal(r.status, 200);
    assert_true(has_header(&r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8"));
    assert_false(has_header(&r, "Connection", "close"));
    assert_non_null(strstr(r.body, "\ngw_workers 2\n"));
    assert_non_null(strstr(r.body, "\ngw_requests_total{route=\"api\",code=\"2xx\"} 5\n"));
    assert_non_null(strstr(r.body, "\ngw_upstream_healthy{upstream=\"api\","
                                   "backend=\"http://127.0.0.1:9001\"} 1\n"));
    size_t get_len = r.body_len;
    response_free(&r);

    /* A query string does not change the endpoint. */
    roundtrip(f, "GET /metrics?name[]=x HTTP/1.1\r\nHost: x\r\n\r\n", &r, false);
    assert_int_equal(r.status, 200);
    response_free(&r);

    /* HEAD: the same Content-Length, no body (the next bytes would be the next response). */
    client_t *c = client_open(f->port);
    client_send_str(c, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    client_response(c, &r, true);
    assert_int_equal(r.status, 200);
    char cl[32];
    assert_non_null(find_header(r.head, "Content-Length", cl, sizeof(cl)));
    assert_int_equal(strtoul(cl, NULL, 10), get_len);
    response_free(&r);
    client_response(c, &r, false);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    response_free(&r);
    client_close(c);
}

static void test_healthz(void **state)
{
    fixture_t *f = *state;
    response_t r = {0};
    roundtrip(f, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", &r, false);
    assert_int_equal(r.status, 200);
    assert_true(has_header(&r, "Content-Type", "application/json"));
    assert_true(has_header(&r, "Content-Length", "15"));
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    response_free(&r);
}

static void test_not_found(void **state)
{
    fixture_t *f = *state;
    static const char *const paths[] = {"/", "/metricsx", "/metric", "/healthz/",
                                        ("/status/this/is/a/rather/long/path/beyond/sixty/four/"
                                         "bytes/long/enough")};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        char req[256];
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", paths[i]);
        response_t r = {0};
        roundtrip(f, req, &r, false);
        assert_int_equal(r.status, 404);
        assert_true(has_header(&r, "Content-Type", "application/json"));
        assert_true(strncmp(r.body, "{\"error\":\"not_found\",\"message\":\"", 32) == 0);
        assert_true(r.body[r.body_len - 1] == '}');
        response_free(&r);
    }
}

static void test_method_not_allowed(void **state)
{
    fixture_t *f = *state;
    response_t r = {0};
    roundtrip(f, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", &r, false);
    assert_int_equal(r.status, 405);
    assert_true(has_header(&r, "Allow", "GET, HEAD"));
    assert_true(strncmp(r.body, "{\"error\":\"method_not_allowed\"", 29) == 0);
    response_free(&r);

    roundtrip(f, "DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n", &r, false);
    assert_int_equal(r.status, 405);
    assert_true(has_header(&r, "Allow", "GET, HEAD"));
    response_free(&r);
}

static void test_pipelining(void **state)
{
    fixture_t *f = *state;
    client_t *c = client_open(f->port);
    client_send_str(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                       "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "3\r\nabc\r\n0\r\n\r\n");
    static const int expect[] = {200, 200, 404, 405};
    response_t r = {0};
    for (size_t i = 0; i < 4; i++) {
        client_response(c, &r, false);
        assert_int_equal(r.status, expect[i]);
        if (i == 1)
            assert_non_null(strstr(r.body, "gw_workers 2"));
        response_free(&r);
    }
    /* Still open: a request split across writes is answered too. */
    client_send_str(c, "GET /hea");
    for (int i = 0; i < 20; i++)
        pump();
    client_send_str(c, "lthz HTTP/1.1\r\nHo");
    for (int i = 0; i < 20; i++)
        pump();
    client_send_str(c, "st: x\r\n\r\n");
    client_response(c, &r, false);
    assert_int_equal(r.status, 200);
    response_free(&r);
    client_close(c);
}

/* More pipelined output than the write high-water mark: parsing pauses and resumes. */
static void test_pipelining_backpressure(void **state)
{
    fixture_t *f = *state;
    enum { N = 1500 };
    client_t *c = client_open_rcvbuf(f->port, 4096);
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    char *all = malloc(N * (sizeof(req) - 1) + 64);
    assert_non_null(all);
    size_t off = 0;
    for (int i = 0; i < N; i++) {
        memcpy(all + off, req, sizeof(req) - 1);
        off += sizeof(req) - 1;
    }
    off += (size_t)sprintf(all + off, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    client_send(c, all, off);
    free(all);
    /* Let the server fill its queue while nobody reads. */
    for (int i = 0; i < 200; i++)
        pump();
    response_t r = {0};
    for (int i = 0; i < N; i++) {
        client_response(c, &r, false);
        assert_int_equal(r.status, 200);
        assert_true(strncmp(r.body, "# HELP gw_requests_total", 24) == 0);
        response_free(&r);
    }
    client_response(c, &r, false);
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    response_free(&r);
    client_close(c);
}

static void test_malformed(void **state)
{
    fixture_t *f = *state;
    static const char *const bad[] = {
        "GARBAGE\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "POST /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "GET /healthz HTTP/9.9\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        client_t *c = client_open(f->port);
        client_send_str(c, bad[i]);
        response_t r = {0};
        client_response(c, &r, false);
        assert_int_equal(r.status, 400);
        assert_true(has_header(&r, "Connection", "close"));
        assert_true(strncmp(r.body, "{\"error\":\"bad_request\"", 22) == 0);
        response_free(&r);
        client_expect_eof(c);
        client_close(c);
    }

    /* A good request before the garbage is answered first. */
    client_t *c = client_open(f->port);
    client_send_str(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\x01\x02junk\r\n\r\n");
    response_t r = {0};
    client_response(c, &r, false);
    assert_int_equal(r.status, 200);
    response_free(&r);
    client_response(c, &r, false);
    assert_int_equal(r.status, 400);
    response_free(&r);
    client_expect_eof(c);
    client_close(c);
}

/* Two Authorization headers are refused whatever the endpoint: which one counts is ambiguous. */
static void test_two_authorizations(void **state)
{
    fixture_t *f = *state;
    static const char *const twice[] = {
        "GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n"
        "Authorization: Bearer b\r\n\r\n",
        "POST /reload HTTP/1.1\r\nHost: x\r\nauthorization: Bearer a\r\nX-Other: 1\r\n"
        "AUTHORIZATION: Bearer a\r\nContent-Length: 0\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(twice) / sizeof(twice[0]); i++) {
        client_t *c = client_open(f->port);
        client_send_str(c, twice[i]);
        response_t r = {0};
        client_response(c, &r, false);
        assert_int_equal(r.status, 400);
        assert_true(has_header(&r, "Connection", "close"));
        assert_non_null(strstr(r.body, "more than one Authorization header"));
        response_free(&r);
        client_expect_eof(c);
        client_close(c);
    }
    /* One is fine, and so is one per request on a keep-alive connection. */
    client_t *c = client_open(f->port);
    for (int i = 0; i < 2; i++) {
        client_send_str(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n\r\n");
        response_t r = {0};
        client_response(c, &r, false);
        assert_int_equal(r.status, 200);
        response_free(&r);
    }
    client_close(c);
}

static void test_http10(void **state)
{
    fixture_t *f = *state;
    client_t *c = client_open(f->port);
    client_send_str(c, "GET /healthz HTTP/1.0\r\n\r\n");
    response_t r = {0};
    client_response(c, &r, false);
    assert_int_equal(r.status, 200);
    assert_true(has_header(&r, "Connection", "close"));
    response_free(&r);
    client_expect_eof(c);
    client_close(c);

    c = client_open(f->port);
    client_send_str(c, "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    client_response(c, &r, false);
    assert_true(has_header(&r, "Connection", "keep-alive"));
    response_free(&r);
    client_send_str(c, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
    client_response(c, &r, false);
    assert_int_equal(r.status, 200);
    assert_true(has_header(&r, "Connection", "close"));
    response_free(&r);
    client_expect_eof(c);
    client_close(c);
}

static void test_limits(void **state)
{
    fixture_t *f = *state;
    response_t r = {0};

    /* A head just under 8 KiB passes, one over it gets 431, even when it arrives in pieces. */
    static char big[12000];
    int n = snprintf(big, sizeof(big), "GET /healthz HTTP/1.1\r\nX-Pad: ");
    memset(big + n, 'a', 8000 - (size_t)n);
    strcpy(big + 8000, "\r\n\r\n");
    roundtrip(f, big, &r, false);
    assert_int_equal(r.status, 200);
    response_free(&r);

    memset(big + n, 'a', 9000 - (size_t)n);
    strcpy(big + 9000, "\r\n\r\n");
    client_t *c = client_open(f->port);
    client_send(c, big, 4000);
    for (int i = 0; i < 20; i++)
        pump();
    client_send(c, big + 4000, 4000);
    for (int i = 0; i < 20; i++)
        pump();
    client_send_str(c, big + 8000);
    client_response(c, &r, false);
    assert_int_equal(r.status, 431);
    assert_true(has_header(&r, "Connection", "close"));
    response_free(&r);
    client_expect_eof(c);
    client_close(c);

    /* Many small headers add up the same way. */
    size_t off = (size_t)snprintf(big, sizeof(big), "GET /healthz HTTP/1.1\r\n");
    while (off < 9000)
        off += (size_t)snprintf(big + off, sizeof(big) - off, "X-H: v\r\n");
    strcpy(big + off, "\r\n");
    roundtrip(f, big, &r, false);
    assert_int_equal(r.status, 431);
    response_free(&r);

    /* A declared body over 64 KiB is refused before it is read. */
    c = client_open(f->port);
    client_send_str(c, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n");
    client_response(c, &r, false);
    assert_int_equal(r.status, 413);
    assert_true(has_header(&r, "Connection", "close"));
    response_free(&r);
    client_close(c);

    /* A chunked body is counted as it arrives. */
    c = client_open(f->port);
    client_send_str(c, "POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    static char chunk[8200];
    n = snprintf(chunk, sizeof(chunk), "2000\r\n");
    memset(chunk + n, 'b', 0x2000);
    memcpy(chunk + n + 0x2000, "\r\n", 2);
    for (int i = 0; i < 9; i++)
        client_send(c, chunk, (size_t)n + 0x2000 + 2);
    client_response(c, &r, false);
    assert_int_equal(r.status, 413);
    response_free(&r);
    client_close(c);

    /* A body within the limit is read and ignored. */
    c = client_open(f->port);
    client_send_str(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n");
    static char body[60000];
    memset(body, 'c', sizeof(body));
    client_send(c, body, sizeof(body));
    client_response(c, &r, false);
    assert_int_equal(r.status, 200);
    response_free(&r);
    client_close(c);
}

/* Closing the admin with connections open (idle, mid-request) closes them all. */
static void test_close_with_connections(void **state)
{
    fixture_t *f = *state;
    client_t *idle = client_open(f->port);
    client_t *partial = client_open(f->port);
    client_t *done = client_open(f->port);
    client_send_str(partial, "GET /metr");
    client_send_str(done, "GET /healthz HTTP/1.1\r\n\r\n");
    response_t r = {0};
    client_response(done, &r, false);
    response_free(&r);
    for (int i = 0; i < 50; i++)
        pump();

    gw_admin_close(f->admin, on_done, f);
    f->admin = NULL;
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->done_calls, 1);
    client_expect_eof(idle);
    client_expect_eof(partial);
    client_expect_eof(done);
    client_close(idle);
    client_close(partial);
    client_close(done);
}

/* A client that closes first: its connection is cleaned up without the admin closing. */
static void test_client_goes_away(void **state)
{
    fixture_t *f = *state;
    client_t *c = client_open(f->port);
    client_send_str(c, "GET /metrics HTTP/1.1\r\n\r\n");
    shutdown(c->fd, SHUT_WR);
    response_t r = {0};
    client_response(c, &r, false);
    assert_int_equal(r.status, 200);
    response_free(&r);
    client_expect_eof(c);
    client_close(c);

    c = client_open(f->port);
    client_send_str(c, "GET /metrics HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n");
    client_close(c); /* with responses unread: the server sees a reset or a failed write */
    for (int i = 0; i < 100; i++)
        pump();
}

static void test_start_error(void **state)
{
    fixture_t *f = *state;
    gw_config_t cfg = f->cfg;
    struct sockaddr_in sin;
    assert_int_equal(uv_ip4_addr("127.0.0.1", f->port, &sin), 0);
    memcpy(&cfg.admin_listen.sa, &sin, sizeof(sin));
    gw_admin_source_t src = f->src;
    src.cfg = &cfg;
    gw_admin_t *second = NULL;
    assert_int_equal(gw_admin_start(&f->loop, &src, &second), UV_EADDRINUSE);
    assert_null(second);
    /* The teardown's loop run finishes closing the failed listener. */
}

int main(void)
{
    /* libuv does not ignore SIGPIPE; the gateway's main does, and so must this test. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_healthz, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_method_not_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelining, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelining_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_authorizations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http10, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_with_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_goes_away, setup, teardown),
        cmocka_unit_test_setup_teardown(test_start_error, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
