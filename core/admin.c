/*
 * admin: a small HTTP/1.1 server on the main thread's loop, serving GET|HEAD /metrics, /status
 * and /healthz, POST /register and /unregister (ARCHITECTURE.md §8; the registry does the work), and
 * POST /reload (main.c does it). The POSTs need `Authorization: Bearer <admin.token>` when a
 * token is configured.
 *
 * Ownership. The gw_admin_t embeds its listening uv_tcp_t and owns a list of connections. Each
 * gw_admin_conn_t embeds its uv_tcp_t and uv_timer_t; it is freed only in the close callback that
 * brings its count of pending closes to zero, never inside any other callback, so no callback
 * ever runs on freed memory. gw_admin_close closes the listener and every connection; the admin
 * itself is freed when the listener's close callback has run and the last connection is gone.
 *
 * Requests. llhttp parses straight out of the connection's fixed input buffer; nothing of a
 * request is kept but a short copy of its path, its Authorization header and, for a POST, its
 * body (malloc'd up to the 64 KiB limit, freed when the request is answered). Every response is
 * produced synchronously when a request completes and queued with uv_write, so pipelined
 * requests are answered in order. If a
 * client pipelines faster than it reads, the parser is paused (HPE_PAUSED at message end) and
 * reading stops until the write queue drains; the unparsed bytes wait in the input buffer.
 *
 * Connection states (gw_admin_conn_set_state is the only place that changes them, and arms the
 * timer to match):
 *   READING    reading and parsing; idle timer.
 *   BLOCKED    parser paused, reading stopped until queued responses drain; idle timer.
 *   FINISHING  the last response is queued; uv_shutdown sends FIN after it. Input is read and
 *              discarded so that closing does not reset the connection under the response.
 *   LINGERING  FIN sent; input discarded until the client's EOF or a short timer.
 *   CLOSED     both handles are closing.
 * Limits: 8 KiB request head (431), 64 KiB body (413), 30 s idle; anything malformed gets 400.
 * Errors from those limits and from the parser always close the connection after the response.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <netinet/in.h>

#include <llhttp.h>
#include <uv.h>

#include "admin.h"
#include "common.h"
#include "log.h"
#include "metrics.h"
#include "registry.h"
#include "status.h"

#define GW_ADMIN_HEAD_MAX 8192
#define GW_ADMIN_BODY_MAX 65536
#define GW_ADMIN_IDLE_MS 30000
#define GW_ADMIN_LINGER_MS 2000
#define GW_ADMIN_INBUF 16384
#define GW_ADMIN_PATH_MAX 64
#define GW_ADMIN_AUTH_MAX 512
/* Queued response bytes above which pipelined requests wait, and below which they resume. */
#define GW_ADMIN_WRITE_HIGH (1u << 20)
#define GW_ADMIN_WRITE_LOW (1u << 18)

typedef enum gw_admin_state {
    GW_ADMIN_READING = 0,
    GW_ADMIN_BLOCKED,
    GW_ADMIN_FINISHING,
    GW_ADMIN_LINGERING,
    GW_ADMIN_CLOSED,
} gw_admin_state_t;

typedef struct gw_admin_conn gw_admin_conn_t;

struct gw_admin {
    uv_tcp_t tcp;
    const gw_admin_source_t *src;
    gw_admin_conn_t *conns; /* every connection not yet freed, CLOSED ones included */
    bool closing;
    bool listener_closed;
    void (*done)(void *arg);
    void *done_arg;
};

struct gw_admin_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown;
    gw_admin_t *admin;
    gw_admin_conn_t *prev, *next;
    gw_admin_state_t state;
    int pending_closes;
    bool reading; /* uv_read_start is in effect */
    bool eof;     /* the client has shut down its side */
    llhttp_t parser;

    /* The request being parsed. */
    char path[GW_ADMIN_PATH_MAX]; /* up to '?', not NUL-terminated */
    size_t path_len;
    bool path_long;        /* longer than path[]: matches no endpoint */
    bool path_done;        /* '?' seen: the rest of the target is the query */
    bool in_head;          /* between message begin and headers complete */
    const char *head_mark; /* head bytes before this point are counted */
    size_t head_bytes;
    uint64_t body_bytes;
    int error_status;      /* set by a callback that rejects the request (400, 413, 431) */
    char field[16];        /* the current header name, lower-case, if it is short */
    size_t field_len;      /* > sizeof(field): a longer name */
    bool in_auth;          /* the current header is Authorization */
    bool auth_seen;        /* an Authorization header came before it */
    char auth[GW_ADMIN_AUTH_MAX]; /* its value */
    size_t auth_len;       /* > sizeof(auth): too long to be right */
    char *body;            /* a POST's body (malloc'd), or NULL */
    size_t body_len, body_cap;

    /* Input: in[in_off, in_len) is received but not yet parsed (non-empty only when BLOCKED). */
    size_t in_off, in_len;
    char in[GW_ADMIN_INBUF];
};

typedef struct gw_admin_write {
    uv_write_t req;
    gw_admin_conn_t *conn;
    char *body; /* malloc'd body sent after head, or NULL */
    char head[];
} gw_admin_write_t;

static void gw_admin_conn_set_state(gw_admin_conn_t *c, gw_admin_state_t s);
static void gw_admin_conn_parse(gw_admin_conn_t *c);

/* ---- lifetime ---- */

/* Frees the admin once the listener and every connection are closed, then reports done. */
static void gw_admin_maybe_free(gw_admin_t *a)
{
    if (!a->closing || !a->listener_closed || a->conns != NULL)
        return;
    void (*done)(void *) = a->done;
    void *arg = a->done_arg;
    free(a);
    if (done != NULL)
        done(arg);
}

static void gw_admin_on_listener_closed(uv_handle_t *h)
{
    gw_admin_t *a = h->data;
    a->listener_closed = true;
    gw_admin_maybe_free(a);
}

static void gw_admin_conn_on_closed(uv_handle_t *h)
{
    gw_admin_conn_t *c = h->data;
    if (--c->pending_closes > 0)
        return;
    gw_admin_t *a = c->admin;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    free(c->body); /* a POST cut off before its end */
    free(c);
    gw_admin_maybe_free(a);
}

/* Idempotent. Pending writes and the shutdown get UV_ECANCELED before the close callbacks. */
static void gw_admin_conn_close(gw_admin_conn_t *c)
{
    gw_admin_conn_set_state(c, GW_ADMIN_CLOSED);
}

static void gw_admin_conn_on_timer(uv_timer_t *t)
{
    gw_admin_conn_close(t->data);
}

static void gw_admin_conn_on_shutdown(uv_shutdown_t *req, int status)
{
    gw_admin_conn_t *c = req->handle->data;
    if (status < 0 || c->eof)
        gw_admin_conn_close(c);
    else
        gw_admin_conn_set_state(c, GW_ADMIN_LINGERING);
}

static void gw_admin_conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    gw_admin_conn_t *c = h->data;
    GW_UNUSED(suggested);
    /* Only reached while reading, and in READING the buffer has been parsed completely (a
     * partly parsed buffer means BLOCKED, which does not read). Other states discard input. */
    *buf = uv_buf_init(c->in, sizeof(c->in));
}

static void gw_admin_conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    gw_admin_conn_t *c = s->data;
    GW_UNUSED(buf);
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread != UV_EOF || c->state == GW_ADMIN_LINGERING) {
            gw_admin_conn_close(c);
            return;
        }
        uv_read_stop(s);
        c->reading = false;
        c->eof = true;
        /* Answer what was complete, then close: the shutdown callback sees eof. */
        if (c->state == GW_ADMIN_READING)
            gw_admin_conn_set_state(c, GW_ADMIN_FINISHING);
        return;
    }
    if (c->state != GW_ADMIN_READING)
        return;
    c->in_off = 0;
    c->in_len = (size_t)nread;
    gw_admin_conn_set_state(c, GW_ADMIN_READING); /* re-arms the idle timer */
    gw_admin_conn_parse(c);
}

static int gw_admin_conn_read_start(gw_admin_conn_t *c)
{
    if (c->reading || c->eof)
        return 0;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, gw_admin_conn_on_alloc, gw_admin_conn_on_read);
    if (rc == 0)
        c->reading = true;
    return rc;
}

static void gw_admin_conn_read_stop(gw_admin_conn_t *c)
{
    if (c->reading)
        uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
}

/*
 * The one place a connection changes state. Entering a state does what that state needs
 * (reading on or off, shutdown, the timer); entering READING again re-arms the idle timer.
 * Nothing leaves CLOSED.
 */
static void gw_admin_conn_set_state(gw_admin_conn_t *c, gw_admin_state_t s)
{
    if (c->state == GW_ADMIN_CLOSED)
        return;
    gw_admin_state_t from = c->state;
    c->state = s;
    int rc = 0;
    switch (s) {
    case GW_ADMIN_READING:
        rc = gw_admin_conn_read_start(c);
        if (rc == 0)
            uv_timer_start(&c->timer, gw_admin_conn_on_timer, GW_ADMIN_IDLE_MS, 0);
        break;
    case GW_ADMIN_BLOCKED:
        gw_admin_conn_read_stop(c);
        uv_timer_start(&c->timer, gw_admin_conn_on_timer, GW_ADMIN_IDLE_MS, 0);
        break;
    case GW_ADMIN_FINISHING:
        if (from == GW_ADMIN_FINISHING)
            break;
        rc = gw_admin_conn_read_start(c);
        if (rc == 0)
            rc = uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, gw_admin_conn_on_shutdown);
        if (rc == 0)
            uv_timer_start(&c->timer, gw_admin_conn_on_timer, GW_ADMIN_IDLE_MS, 0);
        break;
    case GW_ADMIN_LINGERING:
        uv_timer_start(&c->timer, gw_admin_conn_on_timer, GW_ADMIN_LINGER_MS, 0);
        break;
    case GW_ADMIN_CLOSED:
        c->pending_closes = 2;
        uv_close((uv_handle_t *)&c->timer, gw_admin_conn_on_closed);
        uv_close((uv_handle_t *)&c->tcp, gw_admin_conn_on_closed);
        break;
    }
    if (rc < 0)
        gw_admin_conn_set_state(c, GW_ADMIN_CLOSED);
}

/* ---- responses ---- */

static const char *gw_admin_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 409:
        return "Conflict";
    case 503:
        return "Service Unavailable";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Content Too Large";
    case 431:
        return "Request Header Fields Too Large";
    default:
        return "Internal Server Error";
    }
}

static void gw_admin_conn_on_write(uv_write_t *req, int status)
{
    gw_admin_write_t *w = (gw_admin_write_t *)req;
    gw_admin_conn_t *c = w->conn;
    free(w->body);
    free(w);
    if (status < 0) {
        gw_admin_conn_close(c);
        return;
    }
    switch (c->state) {
    case GW_ADMIN_BLOCKED:
        if (c->tcp.write_queue_size <= GW_ADMIN_WRITE_LOW) {
            llhttp_resume(&c->parser);
            gw_admin_conn_set_state(c, GW_ADMIN_READING);
            gw_admin_conn_parse(c);
        } else {
            gw_admin_conn_set_state(c, GW_ADMIN_BLOCKED);
        }
        return;
    case GW_ADMIN_READING:
    case GW_ADMIN_FINISHING:
        /* A client that keeps reading is not idle. */
        uv_timer_start(&c->timer, gw_admin_conn_on_timer, GW_ADMIN_IDLE_MS, 0);
        return;
    default:
        return;
    }
}

/*
 * Queues one response. `body` is copied unless `owned` is true, in which case it is a malloc'd
 * buffer that this function takes over (and frees on every path). `head_only` sends the head
 * with the body's Content-Length but no body (HEAD). `extra` is more header lines, each ending
 * in CRLF. With `close`, the response says so and the connection goes to FINISHING.
 * On failure the connection is closed.
 */
static void gw_admin_conn_send(gw_admin_conn_t *c, int status, const char *ctype, const char *extra,
                               char *body, size_t body_len, bool owned, bool head_only, bool close)
{
    const char *conn_hdr = "";
    if (close)
        conn_hdr = "Connection: close\r\n";
    else if (c->parser.http_major == 1 && c->parser.http_minor == 0)
        conn_hdr = "Connection: keep-alive\r\n";
    static const char fmt[] = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                              "%s%s\r\n";
    const char *reason = gw_admin_reason(status);
    int hn = snprintf(NULL, 0, fmt, status, reason, ctype, body_len, extra, conn_hdr);
    size_t inline_len = (owned || head_only) ? 0 : body_len;
    gw_admin_write_t *w = NULL;
    if (hn > 0)
        w = malloc(sizeof(*w) + (size_t)hn + 1 + inline_len);
    if (w == NULL) {
        if (owned)
            free(body);
        gw_admin_conn_close(c);
        return;
    }
    snprintf(w->head, (size_t)hn + 1, fmt, status, reason, ctype, body_len, extra, conn_hdr);
    w->conn = c;
    w->body = NULL;
    uv_buf_t bufs[2] = {uv_buf_init(w->head, (unsigned)hn + (unsigned)inline_len)};
    unsigned nbufs = 1;
    if (inline_len > 0)
        memcpy(w->head + hn, body, inline_len);
    if (owned && head_only)
        free(body);
    else if (owned) {
        w->body = body;
        bufs[nbufs++] = uv_buf_init(body, (unsigned)body_len);
    }
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, nbufs, gw_admin_conn_on_write) < 0) {
        /* No callback will come: release here. */
        free(w->body);
        free(w);
        gw_admin_conn_close(c);
        return;
    }
    if (close)
        gw_admin_conn_set_state(c, GW_ADMIN_FINISHING);
}

/* A JSON error body: {"error":"<code>","message":"<message>"}; both are plain ASCII literals. */
static void gw_admin_conn_send_error(gw_admin_conn_t *c, int status, const char *code,
                                     const char *message, const char *extra, bool head_only,
                                     bool close)
{
    char body[256];
    int n = snprintf(body, sizeof(body), "{\"error\":\"%s\",\"message\":\"%s\"}", code, message);
    gw_admin_conn_send(c, status, "application/json", extra, body,
                       (size_t)GW_MIN(n, (int)sizeof(body) - 1), false, head_only, close);
}

static bool gw_admin_path_is(const gw_admin_conn_t *c, const char *path)
{
    return !c->path_long &&
           gw_slice_eq(GW_SLICE(c->path, c->path_len), GW_SLICE(path, strlen(path)));
}

/* The request carries `Authorization: Bearer <token>` (compared in constant time). */
static bool gw_admin_authorized(const gw_admin_conn_t *c, const char *token)
{
    static const char scheme[] = "bearer ";
    size_t n = strlen(token), sl = sizeof(scheme) - 1;
    if (c->auth_len > sizeof(c->auth) || c->auth_len != sl + n || strncasecmp(c->auth, scheme, sl) != 0)
        return false;
    unsigned char diff = 0;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(c->auth[sl + i] ^ token[i]);
    return diff == 0;
}

/* A mutating endpoint: POST, with the token when one is configured. Answers and returns false
 * when the request may not go on. */
static bool gw_admin_may_mutate(gw_admin_conn_t *c, bool keep_alive)
{
    const gw_admin_source_t *src = c->admin->src;
    if (llhttp_get_method(&c->parser) != HTTP_POST) {
        gw_admin_conn_send_error(c, 405, "method_not_allowed", "use POST", "Allow: POST\r\n", false,
                                 !keep_alive);
        return false;
    }
    if (src->cfg->admin_token && !gw_admin_authorized(c, src->cfg->admin_token)) {
        gw_admin_conn_send_error(c, 401, "unauthorized", "send Authorization: Bearer <admin.token>",
                                 "WWW-Authenticate: Bearer realm=\"prequal-gw\"\r\n", false,
                                 !keep_alive);
        return false;
    }
    return true;
}

/* POST /reload. */
static void gw_admin_conn_reload(gw_admin_conn_t *c, bool keep_alive)
{
    const gw_admin_source_t *src = c->admin->src;
    if (!gw_admin_may_mutate(c, keep_alive))
        return;
    char *json = NULL;
    int st = src->reload(src->reload_arg, &json);
    gw_admin_conn_send(c, st, "application/json", "", json, strlen(json), true, false, !keep_alive);
}

/* POST /register and /unregister. */
static void gw_admin_conn_membership(gw_admin_conn_t *c, bool reg, bool keep_alive)
{
    const gw_admin_source_t *src = c->admin->src;
    if (!gw_admin_may_mutate(c, keep_alive))
        return;
    if (src->registry == NULL) {
        gw_admin_conn_send_error(c, 403, "registration_disabled", "registration is off", "", false,
                                 !keep_alive);
        return;
    }
    char *json = NULL;
    int st = gw_registry_handle(src->registry, reg, c->body ? c->body : "", c->body_len,
                                uv_now(c->tcp.loop), &json);
    gw_admin_conn_send(c, st, "application/json", "", json, strlen(json), true, false, !keep_alive);
}

/* Answers the request that just completed. */
static void gw_admin_conn_route(gw_admin_conn_t *c, bool keep_alive)
{
    int method = llhttp_get_method(&c->parser);
    bool get = method == HTTP_GET, head = method == HTTP_HEAD;
    bool metrics = gw_admin_path_is(c, "/metrics"), healthz = gw_admin_path_is(c, "/healthz");
    bool status = gw_admin_path_is(c, "/status");

    if (gw_admin_path_is(c, "/register") || gw_admin_path_is(c, "/unregister")) {
        gw_admin_conn_membership(c, gw_admin_path_is(c, "/register"), keep_alive);
        return;
    }
    if (gw_admin_path_is(c, "/reload") && c->admin->src->reload) {
        gw_admin_conn_reload(c, keep_alive);
        return;
    }
    if (!metrics && !healthz && !status) {
        gw_admin_conn_send_error(c, 404, "not_found", "no such admin endpoint", "", head,
                                 !keep_alive);
        return;
    }
    if (!get && !head) {
        gw_admin_conn_send_error(c, 405, "method_not_allowed", "use GET or HEAD",
                                 "Allow: GET, HEAD\r\n", false, !keep_alive);
        return;
    }
    if (healthz) {
        static const char ok[] = "{\"status\":\"ok\"}";
        gw_admin_conn_send(c, 200, "application/json", "", (char *)ok, sizeof(ok) - 1, false, head,
                           !keep_alive);
        return;
    }
    const gw_admin_source_t *src = c->admin->src;
    size_t len = 0;
    if (status) {
        char *doc = gw_status_render(src, uv_now(c->tcp.loop), &len);
        if (doc == NULL) {
            gw_admin_conn_send_error(c, 500, "internal", "out of memory rendering status", "", head,
                                     true);
            return;
        }
        gw_admin_conn_send(c, 200, "application/json", "", doc, len, true, head, !keep_alive);
        return;
    }
    char *text = gw_metrics_render(src->cfg, src->shards, src->nshards, src->backends, src->registry,
                                   src->hcheck, &len);
    if (text == NULL) {
        gw_admin_conn_send_error(c, 500, "internal", "out of memory rendering metrics", "", head,
                                 true);
        return;
    }
    gw_admin_conn_send(c, 200, "text/plain; version=0.0.4; charset=utf-8", "", text, len, true,
                       head, !keep_alive);
}

/* ---- parser callbacks ---- */

/* Counts request-head bytes up to at + len. The first span of a message starts the count. */
static int gw_admin_head_span(gw_admin_conn_t *c, const char *at, size_t len)
{
    if (c->head_mark == NULL)
        c->head_mark = at;
    c->head_bytes += (size_t)(at + len - c->head_mark);
    c->head_mark = at + len;
    if (c->head_bytes > GW_ADMIN_HEAD_MAX) {
        c->error_status = 431;
        return -1;
    }
    return 0;
}

static int gw_admin_on_message_begin(llhttp_t *p)
{
    gw_admin_conn_t *c = p->data;
    c->path_len = 0;
    c->path_long = false;
    c->path_done = false;
    c->in_head = true;
    c->head_mark = NULL;
    c->head_bytes = 0;
    c->body_bytes = 0;
    c->error_status = 0;
    c->field_len = 0;
    c->in_auth = false;
    c->auth_seen = false;
    c->auth_len = 0;
    c->body_len = 0;
    return 0;
}

static int gw_admin_on_header_field(llhttp_t *p, const char *at, size_t len)
{
    gw_admin_conn_t *c = p->data;
    for (size_t i = 0; i < len; i++, c->field_len++)
        if (c->field_len < sizeof(c->field))
            c->field[c->field_len] = (char)((at[i] >= 'A' && at[i] <= 'Z') ? at[i] + 32 : at[i]);
    return gw_admin_head_span(c, at, len);
}

static int gw_admin_on_header_field_complete(llhttp_t *p)
{
    gw_admin_conn_t *c = p->data;
    c->in_auth = c->field_len == 13 && memcmp(c->field, "authorization", 13) == 0;
    c->field_len = 0;
    if (c->in_auth) {
        /* Two credentials are ambiguous: which one a proxy in front checked is unknowable. */
        if (c->auth_seen) {
            c->error_status = 400;
            return -1;
        }
        c->auth_seen = true;
    }
    return 0;
}

static int gw_admin_on_header_value(llhttp_t *p, const char *at, size_t len)
{
    gw_admin_conn_t *c = p->data;
    if (c->in_auth) {
        if (c->auth_len + len <= sizeof(c->auth))
            memcpy(c->auth + c->auth_len, at, len);
        c->auth_len += len;
    }
    return gw_admin_head_span(c, at, len);
}

static int gw_admin_on_head_data(llhttp_t *p, const char *at, size_t len)
{
    return gw_admin_head_span(p->data, at, len);
}

static int gw_admin_on_url(llhttp_t *p, const char *at, size_t len)
{
    gw_admin_conn_t *c = p->data;
    if (gw_admin_head_span(c, at, len) < 0)
        return -1;
    for (size_t i = 0; i < len && !c->path_done; i++) {
        if (at[i] == '?')
            c->path_done = true;
        else if (c->path_len < sizeof(c->path))
            c->path[c->path_len++] = at[i];
        else
            c->path_long = true;
    }
    return 0;
}

static int gw_admin_on_headers_complete(llhttp_t *p)
{
    gw_admin_conn_t *c = p->data;
    c->in_head = false;
    c->head_mark = NULL;
    /* Refuse a declared body that is too large before reading any of it. */
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > GW_ADMIN_BODY_MAX) {
        c->error_status = 413;
        return -1;
    }
    return 0;
}

static int gw_admin_on_body(llhttp_t *p, const char *at, size_t len)
{
    gw_admin_conn_t *c = p->data;
    c->body_bytes += len;
    if (c->body_bytes > GW_ADMIN_BODY_MAX) {
        c->error_status = 413;
        return -1;
    }
    if (llhttp_get_method(p) != HTTP_POST)
        return 0;
    if (c->body_len + len > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap : 1024;
        while (cap < c->body_len + len)
            cap *= 2;
        char *nb = realloc(c->body, cap);
        if (nb == NULL)
            abort(); /* at most 64 KiB of a control request */
        c->body = nb;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, at, len);
    c->body_len += len;
    return 0;
}

/*
 * Answers the request, then pauses the parser when the connection must stop parsing: it is
 * closing (no keep-alive, an upgrade, an error), or too much output is queued (BLOCKED).
 */
static int gw_admin_on_message_complete(llhttp_t *p)
{
    gw_admin_conn_t *c = p->data;
    bool keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    gw_admin_conn_route(c, keep_alive);
    free(c->body);
    c->body = NULL;
    c->body_len = c->body_cap = 0;
    if (c->state != GW_ADMIN_READING)
        return HPE_PAUSED;
    if (c->tcp.write_queue_size > GW_ADMIN_WRITE_HIGH) {
        gw_admin_conn_set_state(c, GW_ADMIN_BLOCKED);
        return HPE_PAUSED;
    }
    return 0;
}

static const llhttp_settings_t gw_admin_parser_settings = {
    .on_message_begin = gw_admin_on_message_begin,
    .on_method = gw_admin_on_head_data,
    .on_url = gw_admin_on_url,
    .on_version = gw_admin_on_head_data,
    .on_header_field = gw_admin_on_header_field,
    .on_header_field_complete = gw_admin_on_header_field_complete,
    .on_header_value = gw_admin_on_header_value,
    .on_headers_complete = gw_admin_on_headers_complete,
    .on_body = gw_admin_on_body,
    .on_message_complete = gw_admin_on_message_complete,
};

/*
 * Parses in[in_off, in_len) while the connection is READING. Leaves the unparsed rest in place
 * when a callback paused the parser (BLOCKED); answers a parse error or an exceeded limit with
 * its status and closes.
 */
static void gw_admin_conn_parse(gw_admin_conn_t *c)
{
    if (c->state != GW_ADMIN_READING || c->in_off >= c->in_len)
        return;
    const char *start = c->in + c->in_off, *end = c->in + c->in_len;
    if (c->in_head)
        c->head_mark = start;
    llhttp_errno_t err = llhttp_execute(&c->parser, start, (size_t)(end - start));
    if (err == HPE_PAUSED) {
        c->in_off = (size_t)(llhttp_get_error_pos(&c->parser) - c->in);
        return;
    }
    c->in_off = c->in_len;
    if (c->state != GW_ADMIN_READING)
        return;
    if (err == HPE_OK && c->in_head && c->head_mark != NULL) {
        /* The head continues in the next read: count this read's share of it now. */
        c->head_bytes += (size_t)(end - c->head_mark);
        c->head_mark = NULL;
        if (c->head_bytes > GW_ADMIN_HEAD_MAX)
            c->error_status = 431;
        else
            return;
    } else if (err == HPE_OK) {
        return;
    } else if (err == HPE_PAUSED_UPGRADE) {
        gw_admin_conn_set_state(c, GW_ADMIN_FINISHING);
        return;
    }
    switch (c->error_status) {
    case 413:
        gw_admin_conn_send_error(c, 413, "body_too_large", "request body over 64 KiB", "", false,
                                 true);
        break;
    case 431:
        gw_admin_conn_send_error(c, 431, "headers_too_large", "request head over 8 KiB", "", false,
                                 true);
        break;
    case 400:
        gw_admin_conn_send_error(c, 400, "bad_request", "more than one Authorization header", "",
                                 false, true);
        break;
    default:
        gw_admin_conn_send_error(c, 400, "bad_request", "malformed request", "", false, true);
        break;
    }
}

/* ---- listener ---- */

static void gw_admin_on_connection(uv_stream_t *server, int status)
{
    gw_admin_t *a = server->data;
    if (status < 0) {
        gw_log_warn("admin: accept failed: %s", uv_strerror(status));
        return;
    }
    gw_admin_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        /* A control structure: out of memory here is not survivable in any useful way. */
        fputs("prequal-gw: out of memory accepting an admin connection\n", stderr);
        abort();
    }
    c->admin = a;
    /* uv_tcp_init and uv_timer_init cannot fail for an AF_UNSPEC tcp handle and a timer. */
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->next = a->conns;
    if (a->conns != NULL)
        a->conns->prev = c;
    a->conns = c;
    llhttp_init(&c->parser, HTTP_REQUEST, &gw_admin_parser_settings);
    c->parser.data = c;
    c->state = GW_ADMIN_READING;

    int rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc < 0) {
        gw_log_warn("admin: accept failed: %s", uv_strerror(rc));
        gw_admin_conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    gw_admin_conn_set_state(c, GW_ADMIN_READING);
}

int gw_admin_start(uv_loop_t *loop, const gw_admin_source_t *src, gw_admin_t **out)
{
    gw_admin_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return UV_ENOMEM;
    a->src = src;
    int rc = uv_tcp_init(loop, &a->tcp);
    if (rc < 0) {
        free(a);
        return rc;
    }
    a->tcp.data = a;
    /* uv_tcp_bind sets SO_REUSEADDR; a bind error such as EADDRINUSE may surface from listen. */
    rc = uv_tcp_bind(&a->tcp, (const struct sockaddr *)&src->cfg->admin_listen.sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&a->tcp, 128, gw_admin_on_connection);
    if (rc < 0) {
        a->closing = true;
        uv_close((uv_handle_t *)&a->tcp, gw_admin_on_listener_closed);
        return rc;
    }
    *out = a;
    return 0;
}

int gw_admin_port(const gw_admin_t *a)
{
    struct sockaddr_storage ss;
    int len = (int)sizeof(ss);
    int rc = uv_tcp_getsockname(&a->tcp, (struct sockaddr *)&ss, &len);
    if (rc < 0)
        return rc;
    if (ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&ss)->sin6_port);
    return UV_EAFNOSUPPORT;
}

void gw_admin_close(gw_admin_t *a, void (*done)(void *arg), void *arg)
{
    a->closing = true;
    a->done = done;
    a->done_arg = arg;
    uv_close((uv_handle_t *)&a->tcp, gw_admin_on_listener_closed);
    for (gw_admin_conn_t *c = a->conns; c != NULL; c = c->next)
        gw_admin_conn_close(c);
}
