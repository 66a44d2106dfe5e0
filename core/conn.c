/*
 * conn: one downstream (client) connection: read, parse with llhttp, validate, route, hand the
 * request to proxy.c, write responses, keep-alive or close, and its timers.
 *
 * Buffer rules. `in` holds the current request's head from head_start to head_end for the whole
 * life of the request: every slice in gw_request_t points there, so nothing of the head is
 * copied. Body bytes are read after head_end and forwarded raw (chunk framing included: llhttp has
 * validated it) straight from `in`; the space is reused only after the upstream write completed,
 * which is also the backpressure: we do not read from the client while a body write to the backend
 * is pending. Bytes that follow the request (pipelining) stay in `in` until the response is done;
 * then they are moved to the front and parsed. Pipelined requests are therefore answered one at a
 * time and in order.
 *
 * Lifetime: gw_conn_close is idempotent and frees the connection only in the last of its three
 * close callbacks. A write callback may run with UV_ECANCELED after close: it checks the state.
 * Nothing calls into a connection after its close began except those callbacks.
 *
 * A request ends exactly once, in conn_request_end, which both ways out go through: its response
 * completed (gw_conn_request_done), or its connection closed under it (gw_conn_close, whoever
 * called it). That is where it is counted, logged and handed to on_log, and where its Lua state
 * goes, so no end path can forget one of them.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "log.h"
#include "lua_bridge.h"
#include "router.h"
#include "worker.h"

static llhttp_settings_t req_settings;
static uv_once_t settings_once = UV_ONCE_INIT;

static void conn_process(gw_conn_t *c);
static void conn_pump_body(gw_conn_t *c);
static void conn_update_reading(gw_conn_t *c);
static void conn_start_request(gw_conn_t *c);
static void conn_error(gw_conn_t *c, int status, const char *code, const char *message);
static void conn_finish_close(gw_conn_t *c);
static void conn_close(gw_conn_t *c, int unanswered);
static void conn_request_end(gw_conn_t *c, int unanswered);

static uint64_t now_ms(gw_conn_t *c)
{
    return uv_now(&c->w->loop);
}

static const gw_config_t *cfg_of(gw_conn_t *c)
{
    return c->w->cfg;
}

/* ---- llhttp callbacks (request side) ---- */

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    gw_conn_t *c = p->data;
    gw_request_t *r = &c->req;
    if (!r->target.p)
        r->target.p = at;
    r->target.len += n;
    if (r->target.len > cfg_of(c)->limits.max_uri_bytes) {
        c->parse_error_status = 414;
        c->parse_error_msg = "request target too long";
        return -1;
    }
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    gw_conn_t *c = p->data;
    gw_request_t *r = &c->req;
    if (c->state != GW_CS_HEAD)
        return 0; /* trailers of a chunked body: forwarded raw, not interpreted */
    if (c->in_field) {
        r->headers[r->nheaders - 1].name.len += n;
        return 0;
    }
    if (r->nheaders >= cfg_of(c)->limits.max_headers) {
        c->parse_error_status = 431;
        c->parse_error_msg = "too many header fields";
        return -1;
    }
    if (r->nheaders == r->cap_headers) {
        uint32_t cap = r->cap_headers ? r->cap_headers * 2 : 32;
        gw_header_t *h = gw_arena_alloc(&c->arena, cap * sizeof *h);
        if (!h) {
            c->parse_error_status = 431;
            c->parse_error_msg = "header fields too large";
            return -1;
        }
        if (r->nheaders)
            memcpy(h, r->headers, r->nheaders * sizeof *h);
        r->headers = h;
        r->cap_headers = cap;
    }
    gw_header_t *h = &r->headers[r->nheaders++];
    h->name = GW_SLICE(at, n);
    h->value = GW_SLICE(NULL, 0);
    c->in_field = true;
    c->header_value_done = false;
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    gw_conn_t *c = p->data;
    if (c->state != GW_CS_HEAD)
        return 0;
    c->in_field = false;
    /* llhttp lets "Name : value" through; RFC 9112 §5.1 says a server must reject it. */
    if (!gw_http1_is_token(c->req.headers[c->req.nheaders - 1].name)) {
        c->parse_error_status = 400;
        c->parse_error_msg = "invalid header field name";
        return -1;
    }
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    gw_conn_t *c = p->data;
    if (c->state != GW_CS_HEAD)
        return 0;
    if (c->header_value_done) {
        /* A second value for the same field without a new name is an obs-fold continuation
         * line, which RFC 9112 §5.2 lets a proxy reject; accepting it invites smuggling. */
        c->parse_error_status = 400;
        c->parse_error_msg = "obsolete line folding is not accepted";
        return -1;
    }
    gw_header_t *h = &c->req.headers[c->req.nheaders - 1];
    if (!h->value.p) {
        h->value.p = at;
    } else if (at != h->value.p + h->value.len) {
        /* A value split across reads is contiguous in `in`; a gap means llhttp went on after
         * a CRLF: an obs-fold continuation without the value-complete callback in between. */
        c->parse_error_status = 400;
        c->parse_error_msg = "obsolete line folding is not accepted";
        return -1;
    }
    h->value.len += n;
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    gw_conn_t *c = p->data;
    if (c->state != GW_CS_HEAD)
        return 0;
    gw_request_t *r = &c->req;
    gw_header_t *h = &r->headers[r->nheaders - 1];
    c->header_value_done = true;
    if (!h->value.p)
        h->value.p = h->name.p + h->name.len;
    while (h->value.len && (h->value.p[h->value.len - 1] == ' ' || h->value.p[h->value.len - 1] == '\t'))
        h->value.len--;
    gw_slice_t n = h->name;
    switch (n.len) {
    case 4:
        if (gw_slice_ieq(n, "host")) {
            r->host = h->value;
            r->nhost++;
        }
        break;
    case 6:
        /* An HTTP/1.0 client cannot take a 1xx: its expectation is ignored (RFC 9110 §10.1.1). */
        if (gw_slice_ieq(n, "expect") && p->http_minor > 0) {
            if (gw_slice_ieq(h->value, "100-continue")) {
                r->expect_continue = true;
            } else {
                c->parse_error_status = 417;
                c->parse_error_msg = "unsupported expectation";
                return -1;
            }
        }
        break;
    case 7:
        if (gw_slice_ieq(n, "upgrade") && h->value.len)
            r->upgrade = h->value; /* any line; conn_forward_upgrade reads them all */
        break;
    case 12:
        if (gw_slice_ieq(n, "x-request-id"))
            r->request_id = h->value;
        break;
    case 17:
        if (gw_slice_ieq(n, "transfer-encoding"))
            r->te = h->value;
        break;
    }
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    gw_conn_t *c = p->data;
    c->req.body_bytes += n;
    uint64_t max = cfg_of(c)->limits.max_body_bytes;
    if (max && c->req.body_bytes > max) {
        c->parse_error_status = 413;
        c->parse_error_msg = "request body too large";
        return -1;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    gw_conn_t *c = p->data;
    c->req.body_done = true;
    return HPE_PAUSED;
}

static void settings_init(void)
{
    llhttp_settings_init(&req_settings);
    req_settings.on_url = on_url;
    req_settings.on_header_field = on_header_field;
    req_settings.on_header_field_complete = on_header_field_complete;
    req_settings.on_header_value = on_header_value;
    req_settings.on_header_value_complete = on_header_value_complete;
    req_settings.on_headers_complete = on_headers_complete;
    req_settings.on_body = on_body;
    req_settings.on_message_complete = on_message_complete;
}

void gw_conn_prepare(gw_conn_t *c)
{
    uv_once(&settings_once, settings_init);
    llhttp_init(&c->parser, HTTP_REQUEST, &req_settings);
    c->parser.data = c;
    conn_start_request(c);
}

/* ---- timers ---- */

static void conn_on_timer(uv_timer_t *t);

void gw_conn_arm_timer(gw_conn_t *c)
{
    const gw_client_timeouts_t *to = &cfg_of(c)->timeouts;
    uint64_t deadline = UINT64_MAX;
    switch (c->state) {
    case GW_CS_IDLE:
        /* keepalive_ms is the wait between requests; the first one's head has header_ms from
         * accept, so a connection that never sends a byte costs no more than a slow head. */
        if (!c->served) {
            deadline = c->accepted_ms + to->header_ms;
            break;
        }
        deadline = c->state_since_ms + to->keepalive_ms;
        if (c->w->draining)
            deadline = GW_MIN(deadline, c->w->drain_since_ms + GW_DRAIN_IDLE_GRACE_MS);
        break;
    case GW_CS_HEAD:
        deadline = (c->served ? c->state_since_ms : c->accepted_ms) + to->header_ms;
        break;
    case GW_CS_PROXY:
        if (!c->req.body_done)
            deadline = c->state_since_ms + to->body_ms;
        break;
    case GW_CS_LINGER:
        deadline = c->state_since_ms + 2000;
        break;
    default:
        break;
    }
    if (c->writes_pending && c->write_since_ms + to->send_ms < deadline)
        deadline = c->write_since_ms + to->send_ms;
    if (deadline == UINT64_MAX) {
        uv_timer_stop(&c->timer);
        return;
    }
    uint64_t now = now_ms(c);
    uv_timer_start(&c->timer, conn_on_timer, deadline > now ? deadline - now : 0, 0);
}

static void conn_set_state(gw_conn_t *c, enum gw_conn_state s)
{
    c->state = s;
    c->state_since_ms = now_ms(c);
    gw_conn_arm_timer(c);
    conn_update_reading(c);
}

static void conn_on_timer(uv_timer_t *t)
{
    gw_conn_t *c = t->data;
    const gw_client_timeouts_t *to = &cfg_of(c)->timeouts;
    uint64_t now = now_ms(c);
    if (c->writes_pending && now >= c->write_since_ms + to->send_ms) {
        gw_log_debug("client %s: send timeout", c->client_ip);
        gw_conn_close(c);
        return;
    }
    switch (c->state) {
    case GW_CS_IDLE:
    case GW_CS_LINGER:
        gw_conn_close(c);
        return;
    case GW_CS_HEAD:
        conn_error(c, 408, "request_timeout", "the request head was not received in time");
        return;
    case GW_CS_PROXY:
        if (!c->req.body_done) {
            if (c->req.response_started) {
                gw_conn_close(c);
            } else {
                gw_proxy_abort(c);
                conn_error(c, 408, "request_timeout", "the request body was not received in time");
            }
            return;
        }
        break;
    default:
        break;
    }
    gw_conn_arm_timer(c);
}

/* ---- reading ---- */

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    gw_conn_t *c = h->data;
    if (!c->in) {
        c->in = gw_worker_buf_get(c->w);
        c->in_len = c->parsed = c->head_start = c->head_end = 0;
    }
    size_t cap = gw_worker_buf_size(c->w);
    if (c->state == GW_CS_LINGER) {
        /* Lingering: reuse the whole buffer, the bytes are discarded. */
        c->in_len = c->parsed = 0;
    }
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(cap - c->in_len));
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    gw_conn_t *c = s->data;
    if (nread == 0 || c->state == GW_CS_CLOSING)
        return;
    if (nread < 0) {
        c->peer_eof = true;
        if (c->state == GW_CS_PROXY) {
            gw_log_debug("client %s closed during a request", c->client_ip);
            gw_proxy_abort(c);
        }
        gw_conn_close(c);
        return;
    }
    if (c->state == GW_CS_LINGER)
        return;
    c->in_len += (size_t)nread;
    switch (c->state) {
    case GW_CS_IDLE:
    case GW_CS_HEAD:
        conn_process(c);
        break;
    case GW_CS_PROXY:
        if (!c->req.body_done && c->body_flowing && !c->body_wait)
            conn_pump_body(c);
        else
            conn_update_reading(c);
        break;
    case GW_CS_TUNNEL:
        gw_proxy_tunnel_client_data(c);
        break;
    default:
        break;
    }
}

static void conn_update_reading(gw_conn_t *c)
{
    bool want;
    bool space = !c->in || c->in_len < gw_worker_buf_size(c->w);
    switch (c->state) {
    case GW_CS_IDLE:
    case GW_CS_HEAD:
    case GW_CS_LINGER:
        want = true;
        break;
    case GW_CS_PROXY:
        /* Before the body may flow we still read (to notice a client that goes away), but only
         * while there is room: what arrives is body or the next pipelined request. */
        if (!c->req.body_done)
            want = c->body_flowing ? !c->body_wait : false;
        else
            want = true;
        want = want && space;
        break;
    case GW_CS_TUNNEL:
        want = !c->body_wait && space;
        break;
    default:
        want = false;
        break;
    }
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read) == 0)
            c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

void gw_conn_pause_reading(gw_conn_t *c)
{
    c->body_wait = true;
    conn_update_reading(c);
}

void gw_conn_resume_reading(gw_conn_t *c)
{
    c->body_wait = false;
    conn_update_reading(c);
}

/* ---- writing ---- */

static void conn_on_write(uv_write_t *req, int status)
{
    gw_conn_t *c = req->data;
    void (*cb)(gw_conn_t *, int) = c->write_cb;
    c->writes_pending--;
    c->write_cb = NULL;
    c->write_since_ms = 0;
    if (c->state == GW_CS_CLOSING)
        return;
    if (status < 0) {
        /* libuv does not say how much of a failed batch went out: none of it counts as sent. */
        c->req.bytes_out -= c->write_queued;
        gw_log_debug("client %s: write failed: %s", c->client_ip, uv_strerror(status));
        gw_proxy_abort(c);
        gw_conn_close(c);
        return;
    }
    gw_conn_arm_timer(c);
    if (cb)
        cb(c, 0);
}

int gw_write_rest(uv_write_t *req, uv_stream_t *s, const uv_buf_t *bufs, unsigned nbufs, size_t done,
                  uv_write_cb cb)
{
    uv_buf_t rest[16];
    unsigned n = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        if (done >= bufs[i].len) {
            done -= bufs[i].len;
            continue;
        }
        if (n == GW_ARRAY_LEN(rest))
            return UV_ENOBUFS;
        rest[n++] = uv_buf_init(bufs[i].base + done, (unsigned)(bufs[i].len - done));
        done = 0;
    }
    return uv_write(req, s, rest, n, cb);
}

int gw_conn_write(gw_conn_t *c, const uv_buf_t *bufs, unsigned nbufs, void (*cb)(gw_conn_t *, int))
{
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++)
        total += bufs[i].len;
    int n = c->writes_pending ? UV_EAGAIN : uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
    if (n >= 0 && (size_t)n == total) {
        c->req.bytes_out += total;
        return 1;
    }
    if (n < 0 && n != UV_EAGAIN)
        return n;
    size_t done = n > 0 ? (size_t)n : 0;
    c->write_cb = cb;
    c->writes_pending++;
    c->write_since_ms = now_ms(c);
    int rc = gw_write_rest(&c->wreq, (uv_stream_t *)&c->tcp, bufs, nbufs, done, conn_on_write);
    if (rc != 0) {
        c->writes_pending--;
        c->write_cb = NULL;
        c->req.bytes_out += done;
        return rc;
    }
    c->req.bytes_out += total;
    c->write_queued = total - done;
    gw_conn_arm_timer(c);
    return 0;
}

static void conn_on_interim_write(uv_write_t *req, int status)
{
    GW_UNUSED(req);
    GW_UNUSED(status);
}

void gw_conn_send_continue(gw_conn_t *c)
{
    static char msg[] = "HTTP/1.1 100 Continue\r\n\r\n";
    uv_buf_t b = uv_buf_init(msg, sizeof msg - 1);
    if (uv_write(&c->wreq_extra, (uv_stream_t *)&c->tcp, &b, 1, conn_on_interim_write) == 0)
        c->req.bytes_out += b.len;
}

/* ---- closing ---- */

static void conn_on_close(uv_handle_t *h)
{
    gw_conn_t *c = h->data;
    if (--c->pending_closes > 0)
        return;
    gw_worker_t *w = c->w;
    if (c->in)
        gw_worker_buf_put(w, c->in);
    gw_arena_free(&c->arena);
    gw_list_remove(&c->link);
    w->nconns--;
    GW_RELAXED_STORE(w->metrics->connections_active, GW_RELAXED_LOAD(w->metrics->connections_active) - 1);
    free(c);
    gw_worker_conn_closed(w);
}

void gw_conn_close(gw_conn_t *c)
{
    conn_close(c, 499);
}

/* Closes the connection; a request still open on it ends as an aborted one, logged with
 * `unanswered` if no response head went out (see conn_request_end). */
static void conn_close(gw_conn_t *c, int unanswered)
{
    if (c->state == GW_CS_CLOSING)
        return;
    if (c->up)
        gw_proxy_abort(c);
    conn_request_end(c, unanswered);
    c->state = GW_CS_CLOSING;
    c->pending_closes = 3;
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
    uv_close((uv_handle_t *)&c->timer, conn_on_close);
    uv_close((uv_handle_t *)&c->aux_timer, conn_on_close);
}

static void conn_on_shutdown(uv_shutdown_t *req, int status)
{
    gw_conn_t *c = req->data;
    if (c->state == GW_CS_CLOSING)
        return;
    if (status < 0)
        gw_conn_close(c);
}

/* Closes after a response when the client may still be sending (an error in the middle of a
 * request, a pipelined request after a bad one): send FIN, then read and discard for a moment so
 * the kernel does not answer the client's late bytes with a reset that would destroy our
 * response before the client read it (nginx's lingering close). */
static void conn_finish_close(gw_conn_t *c)
{
    if (c->peer_eof) {
        gw_conn_close(c);
        return;
    }
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, conn_on_shutdown) != 0) {
        gw_conn_close(c);
        return;
    }
    conn_set_state(c, GW_CS_LINGER);
}

/* ---- request lifecycle ---- */

static void conn_make_request_id(gw_conn_t *c)
{
    gw_request_t *r = &c->req;
    if (r->request_id.len > 0 && r->request_id.len <= 128) {
        bool ok = true;
        for (size_t i = 0; i < r->request_id.len && ok; i++)
            ok = r->request_id.p[i] > 0x20 && r->request_id.p[i] < 0x7f;
        if (ok)
            return;
    }
    char *id = gw_arena_alloc(&c->arena, 33);
    if (!id) {
        r->request_id = GW_SLICE_LIT("-");
        return;
    }
    uint64_t a = gw_rand_next(&c->w->rng), b = ++c->w->request_seq ^ ((uint64_t)c->w->id << 56);
    snprintf(id, 33, "%016llx%016llx", (unsigned long long)a, (unsigned long long)b);
    r->request_id = GW_SLICE(id, 32);
}

/* True when all the current request's bytes so far are CR or LF. */
static bool conn_only_blank_lines(const gw_conn_t *c)
{
    for (size_t i = c->head_start; i < c->in_len; i++)
        if (c->in[i] != '\r' && c->in[i] != '\n')
            return false;
    return true;
}

/* Ends the current request, on every path and exactly once: from gw_conn_request_done when its
 * response is complete (`unanswered` 0), or from conn_close when the connection closes under it
 * (the client went away or stopped reading, a timeout, a backend failing mid-response, a drain
 * running out). It settles the status, counts the request, runs on_log and frees its Lua state
 * (gw_lua_request_end), and writes its access-log line.
 *
 * An aborted request keeps the status it was sent when a response head went out (bytes_out
 * then says how much of the response did); otherwise it is logged with 400 if even its head was
 * incomplete, else with `unanswered` (499 for a client that closed first, as nginx logs it). */
static void conn_request_end(gw_conn_t *c, int unanswered)
{
    gw_request_t *r = &c->req;
    gw_worker_t *w = c->w;
    const gw_config_t *cfg = w->cfg;
    if (!r->open)
        return;
    r->open = false;
    if (c->writes_pending) {
        /* What libuv still holds never reached the client. */
        size_t unsent = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
        r->bytes_out -= GW_MIN(r->bytes_out, unsent);
    }
    if (unanswered && !(r->response_started && r->bytes_out > 0)) {
        if (c->state == GW_CS_HEAD && conn_only_blank_lines(c))
            return; /* no request began: blank lines before one are ignored (RFC 9112 §2.2) */
        r->status = c->state == GW_CS_HEAD ? 400 : unanswered;
        r->lua_status = 0; /* what on_response set was not sent: res:status() says what is logged */
        if (!r->method_name.p)
            r->method_name = GW_SLICE_LIT("-");
        if (!r->request_id.p)
            conn_make_request_id(c);
    }
    uint64_t dur_ns = gw_now_ns() - r->start_ns;
    size_t row = r->route >= 0 ? (size_t)r->route : cfg->nroutes;
    GW_COUNTER_INC(w->metrics->requests[row][gw_status_class(r->status)]);
    gw_histogram_observe(&w->metrics->request_duration[row], dur_ns / 1000);
    if (w->lua && (r->lua_id || gw_lua_has_hook(c, GW_HOOK_ON_LOG)))
        gw_lua_request_end(w->lua, c);
    if (!gw_access_log_enabled())
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    gw_access_entry_t e = {
        .time_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000,
        .request_id = r->request_id,
        .client_ip = GW_SLICE(c->client_ip, strlen(c->client_ip)),
        .method = r->method_name,
        .target = r->target,
        .host = r->host,
        .status = r->status,
        .bytes_in = r->body_bytes,
        .bytes_out = r->bytes_out,
        .duration_ms = (double)dur_ns / 1e6,
        .route = r->route >= 0 ? GW_SLICE(cfg->routes[r->route].name, strlen(cfg->routes[r->route].name))
                               : GW_SLICE("", 0),
        .upstream = r->upstream >= 0 ? GW_SLICE(cfg->upstreams[r->upstream].name,
                                                 strlen(cfg->upstreams[r->upstream].name))
                                     : GW_SLICE("", 0),
        .backend = r->backend ? GW_SLICE(r->backend->cfg->url, strlen(r->backend->cfg->url))
                              : GW_SLICE("", 0),
        .upstream_ms = r->upstream_head_ns ? (double)(r->upstream_head_ns - r->upstream_start_ns) / 1e6
                                           : -1.0,
        .worker = w->id,
    };
    gw_access_log_write(&e);
}

/* Moves the bytes that follow the finished request to the front of the buffer and starts the
 * next request (or goes idle, giving the buffer back to the worker when it is empty). */
static void conn_next_request(gw_conn_t *c)
{
    size_t left = c->in_len - c->parsed;
    if (left == 0) {
        /* Going idle: an idle keep-alive connection holds neither buffer nor arena block. */
        if (c->in) {
            gw_worker_buf_put(c->w, c->in);
            c->in = NULL;
        }
        gw_arena_free(&c->arena);
        c->in_len = c->parsed = 0;
    } else {
        memmove(c->in, c->in + c->parsed, left);
        c->in_len = left;
        c->parsed = 0;
    }
    c->head_start = c->head_end = 0;
    conn_start_request(c);
    conn_set_state(c, GW_CS_IDLE);
    if (left)
        conn_process(c);
}

void gw_conn_request_done(gw_conn_t *c)
{
    gw_request_t *r = &c->req;
    conn_request_end(c, 0);
    c->served = true;
    bool reusable = !r->close_after && r->keep_alive && r->body_done && !r->is_upgrade &&
                    !c->w->draining && c->up == NULL;
    if (!reusable) {
        conn_finish_close(c);
        return;
    }
    /* An upgrade the gateway did not forward (h2c, HTTP/1.0) leaves the connection in HTTP/1.1,
     * but llhttp stops after any upgrade request: it starts afresh. */
    if (c->parser.upgrade)
        llhttp_reset(&c->parser);
    else
        llhttp_resume(&c->parser);
    conn_next_request(c);
}

/* Resets the per-request state; the arena keeps its first block. */
static void conn_start_request(gw_conn_t *c)
{
    gw_arena_reset(&c->arena);
    memset(&c->req, 0, sizeof c->req);
    c->req.route = -1;
    c->req.upstream = -1;
    c->in_field = false;
    c->header_value_done = false;
    c->parse_error_status = 0;
    c->parse_error_msg = NULL;
    c->body_flowing = false;
    c->body_wait = false;
}

static void conn_after_response_write(gw_conn_t *c, int status)
{
    gw_conn_request_done(c);
}

/* Sends a complete gateway-generated response. `close` asks for the connection to be closed
 * after it. Headers in `extra` are written as they are. */
static void conn_send(gw_conn_t *c, int status, const char *content_type, gw_slice_t body,
                      const gw_header_kv_t *extra, size_t nextra, bool close)
{
    gw_request_t *r = &c->req;
    if (c->writes_pending) {
        /* A relayed 1xx is still being written (proxy.c): a response cannot follow it on the
         * one write request, and the client must not wait for one. The log says what it would
         * have been. */
        conn_close(c, status);
        return;
    }
    if (!r->request_id.p)
        conn_make_request_id(c);
    if (close || c->w->draining || !r->keep_alive)
        r->close_after = true;
    r->status = status;
    if (c->w->lua && !r->lua_response_ran && gw_lua_has_hook(c, GW_HOOK_ON_RESPONSE)) {
        /* The response is the gateway's own (an error, a static or a Lua answer): hooks see it
         * with res:source() == "gateway"; a failing hook does not change it. */
        r->lua_response_ran = true;
        r->resp_up = NULL;
        gw_lua_on_response(c->w->lua, c);
        if (r->lua_status)
            r->status = status = r->lua_status;
    }
    if (content_type && gw_edits_override(&r->resp_edits, GW_SLICE_LIT("content-type")))
        content_type = NULL;
    r->response_started = true;
    gw_buf_t h;
    gw_buf_init(&h, &c->arena, 512);
    char line[64];
    int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, gw_http1_reason(status));
    gw_buf_append(&h, line, (size_t)n);
    /* 204 and 304 carry no body and (RFC 9110 §8.6) a 204 no Content-Length. */
    bool no_body = status == 204 || status == 304 || status < 200;
    if (no_body)
        body.len = 0;
    if (content_type && !no_body)
        gw_buf_append_header(&h, GW_SLICE_LIT("Content-Type"), GW_SLICE(content_type, strlen(content_type)));
    if (status != 204 && status >= 200) {
        gw_buf_append_str(&h, "Content-Length: ");
        gw_buf_append_u64(&h, body.len);
        gw_buf_append_str(&h, "\r\n");
    }
    gw_buf_append_header(&h, GW_SLICE_LIT("X-Request-Id"), r->request_id);
    for (size_t i = 0; i < nextra; i++)
        if (!gw_edits_override(&r->resp_edits, GW_SLICE(extra[i].name, strlen(extra[i].name))))
            gw_buf_append_header(&h, GW_SLICE(extra[i].name, strlen(extra[i].name)),
                                 GW_SLICE(extra[i].value, strlen(extra[i].value)));
    gw_edits_append(&h, &r->resp_edits);
    if (r->close_after)
        gw_buf_append_str(&h, "Connection: close\r\n");
    else if (r->http_minor == 0)
        gw_buf_append_str(&h, "Connection: keep-alive\r\n");
    gw_buf_append(&h, "\r\n", 2);
    if (h.oom) {
        conn_close(c, 500); /* out of memory: no answer */
        return;
    }
    uv_buf_t bufs[2] = {uv_buf_init(h.p, (unsigned)h.len), uv_buf_init((char *)body.p, (unsigned)body.len)};
    unsigned nb = (body.len && !r->head_request) ? 2 : 1;
    int rc = gw_conn_write(c, bufs, nb, conn_after_response_write);
    if (rc == 1)
        conn_after_response_write(c, 0);
    else if (rc < 0)
        gw_conn_close(c);
}

void gw_conn_respond_error(gw_conn_t *c, int status, const char *code, const char *message)
{
    gw_request_t *r = &c->req;
    if (!r->request_id.p)
        conn_make_request_id(c);
    gw_buf_t b;
    gw_buf_init(&b, &c->arena, 256);
    char esc[512];
    gw_buf_append_str(&b, "{\"error\":\"");
    gw_buf_append_str(&b, code);
    gw_buf_append_str(&b, "\",\"message\":\"");
    gw_buf_append(&b, esc, gw_json_escape(GW_SLICE(message, strlen(message)), esc, sizeof esc));
    gw_buf_append_str(&b, "\",\"request_id\":\"");
    gw_buf_append(&b, esc, gw_json_escape(r->request_id, esc, sizeof esc));
    gw_buf_append_str(&b, "\"}\n");
    if (b.oom) {
        conn_close(c, 500); /* out of memory: no answer */
        return;
    }
    static const gw_header_kv_t retry_after = {"Retry-After", "1"};
    /* Errors that leave the request body unread, or mean the framing cannot be trusted, close
     * the connection; a 404 or 502 after a complete request keeps it. */
    bool close = !r->body_done || status == 400 || status == 405 || status == 408 ||
                 status == 413 || status == 414 || status == 417 || status == 431 || status == 505;
    conn_send(c, status, "application/json", GW_SLICE(b.p, b.len), status == 503 ? &retry_after : NULL,
              status == 503 ? 1 : 0, close);
}

/* Answers the current request with an error. Framing errors and unread bodies close the
 * connection (gw_conn_respond_error decides), so nothing the client sent after a bad request is
 * ever parsed; a 404 after a complete request keeps the connection. */
static void conn_error(gw_conn_t *c, int status, const char *code, const char *message)
{
    if (c->state != GW_CS_PROXY)
        conn_set_state(c, GW_CS_PROXY);
    gw_conn_respond_error(c, status, code, message);
}

static bool conn_reject(gw_conn_verdict_t *v, int status, const char *code, const char *message)
{
    *v = (gw_conn_verdict_t){status, code, message};
    return false;
}

/* Refuses a request llhttp (or one of our callbacks) stopped; returns false. */
static bool conn_parse_verdict(gw_conn_t *c, llhttp_errno_t e, gw_conn_verdict_t *v)
{
    int status = c->parse_error_status ? c->parse_error_status : 400;
    const char *msg = c->parse_error_msg ? c->parse_error_msg : llhttp_get_error_reason(&c->parser);
    if (!c->parse_error_status && e == HPE_INVALID_VERSION) {
        status = 505;
        msg = "only HTTP/1.0 and HTTP/1.1 are supported";
    }
    if (!msg)
        msg = llhttp_errno_name(e);
    const char *code = "bad_request";
    switch (status) {
    case 413: code = "body_too_large"; break;
    case 414: code = "uri_too_long"; break;
    case 417: code = "expectation_failed"; break;
    case 431: code = "headers_too_large"; break;
    case 505: code = "version_not_supported"; break;
    }
    if (!c->req.method_name.p)
        c->req.method_name = GW_SLICE_LIT("-");
    return conn_reject(v, status, code, msg);
}

static void conn_parse_error(gw_conn_t *c, llhttp_errno_t e)
{
    gw_conn_verdict_t v;
    conn_parse_verdict(c, e, &v);
    conn_error(c, v.status, v.code, v.message);
}

/* Builds the head sent upstream: request line with the rewritten target, Host, the client's
 * end-to-end headers minus hop-by-hop ones and the route's removals, the route's set headers,
 * X-Forwarded-*, X-Request-Id and the framing of the body we forward. */
/* Request headers the gateway writes itself (framing, Host, Expect, X-Forwarded-*, the id). */
static bool conn_reserved_request_header(gw_slice_t n)
{
    switch (n.len) {
    case 4:
        return gw_slice_ieq(n, "host");
    case 6:
        return gw_slice_ieq(n, "expect");
    case 12:
        return gw_slice_ieq(n, "x-request-id");
    case 14:
        return gw_slice_ieq(n, "content-length");
    case 15:
        return gw_slice_ieq(n, "x-forwarded-for");
    case 16:
        return gw_slice_ieq(n, "x-forwarded-host");
    case 17:
        return gw_slice_ieq(n, "x-forwarded-proto");
    default:
        return false;
    }
}

/* Writes the Upgrade the backend is offered: the client's protocols except h2c (the gateway
 * speaks HTTP/1.1 to both sides, so an HTTP/2 upgrade is stripped, as nginx does). HTTP/1.0
 * requests are never upgraded (RFC 9110 §7.8). r->upgrade and r->is_upgrade then describe what
 * was forwarded, which is what a 101 must answer (proxy.c). */
static void conn_forward_upgrade(gw_conn_t *c, gw_buf_t *b)
{
    gw_request_t *r = &c->req;
    r->is_upgrade = false;
    if (r->http_minor == 0)
        return;
    size_t mark = b->len;
    gw_buf_append_str(b, "Connection: upgrade\r\nUpgrade: ");
    size_t start = b->len;
    for (uint32_t i = 0; i < r->nheaders; i++) {
        if (!gw_slice_ieq(r->headers[i].name, "upgrade"))
            continue;
        size_t pos = 0;
        gw_slice_t e;
        while (gw_http1_list_next(r->headers[i].value, &pos, &e)) {
            if (gw_slice_ieq(e, "h2c"))
                continue;
            if (b->len > start)
                gw_buf_append(b, ", ", 2);
            gw_buf_append_slice(b, e);
        }
    }
    if (b->len == start) {
        b->len = mark;
        return;
    }
    size_t end = b->len;
    gw_buf_append(b, "\r\n", 2);
    /* Nothing is appended to up_head after this (proxy.c sends Host separately), so the slice
     * stays valid for the request. */
    r->upgrade = GW_SLICE(b->p + start, end - start);
    r->is_upgrade = !b->oom;
}

bool gw_conn_build_upstream_head(gw_conn_t *c, const gw_route_cfg_t *route)
{
    gw_request_t *r = &c->req;
    gw_buf_t *b = &r->up_head;
    gw_buf_init(b, &c->arena, (c->head_end - c->head_start) + 512);
    gw_buf_append_slice(b, r->method_name);
    gw_buf_append(b, " ", 1);
    /* The client's target goes upstream byte for byte (RFC 9112 §3.2) unless the route or a
     * hook rewrites the path, or normalize_path asks for the canonical one; the query is the
     * client's either way. */
    if (r->lua_path.p)
        gw_buf_append_slice(b, r->lua_path);
    else if (route->strip_prefix || route->add_prefix || route->normalize_path)
        gw_buf_append_slice(b, r->up_path);
    else
        gw_buf_append_slice(b, r->raw_path);
    gw_buf_append_slice(b, r->raw_rest);
    gw_buf_append(b, " HTTP/1.1\r\n", 11);
    /* Host is written by proxy.c per backend unless preserve_host: see proxy_send_head. */
    gw_http1_via_t via = {cfg_of(c)->via, 1, r->http_minor,
                          GW_SLICE(c->client_ip, strlen(c->client_ip))};
    gw_http1_forward_headers(b, r->headers, r->nheaders, conn_reserved_request_header, &route->request_headers, &r->req_edits,
                             &via);
    gw_buf_append_str(b, "X-Forwarded-Proto: http\r\n");
    if (r->host.len)
        gw_buf_append_header(b, GW_SLICE_LIT("X-Forwarded-Host"), r->host);
    gw_buf_append_header(b, GW_SLICE_LIT("X-Request-Id"), r->request_id);
    if (r->chunked) {
        gw_buf_append_header(b, GW_SLICE_LIT("Transfer-Encoding"), r->te);
    } else if (r->has_content_length) {
        gw_buf_append_str(b, "Content-Length: ");
        gw_buf_append_u64(b, r->content_length);
        gw_buf_append(b, "\r\n", 2);
    }
    if (r->is_upgrade)
        conn_forward_upgrade(c, b);
    /* The final CRLF is added by proxy.c after Host. */
    return !b->oom;
}

/* The 400 message for a path the router refused (a GW_ROUTER_E* code). */
static const char *conn_path_error(int rc)
{
    switch (rc) {
    case GW_ROUTER_EESCAPE:
        return "invalid percent-encoding in the request path";
    case GW_ROUTER_ESLASH:
        return "an encoded slash or a backslash in the request path";
    default:
        return "invalid request target";
    }
}

/* Extracts the origin-form path of the target. Absolute-form ("http://host/path") is accepted
 * as RFC 9112 §3.2.2 asks of servers; its authority replaces Host. An absolute-form target with
 * an empty path stands for "/" (RFC 9112 §3.2.1), query included: "http://h?q" is "/?q", written
 * into the arena since the client's bytes have no '/' to point at. */
static bool conn_origin_target(gw_request_t *r, gw_arena_t *arena, gw_slice_t *out)
{
    gw_slice_t t = r->target;
    if (t.len && t.p[0] == '/') {
        *out = t;
        return true;
    }
    if (t.len > 7 && (gw_slice_ieq(GW_SLICE(t.p, 7), "http://"))) {
        const char *auth = t.p + 7, *end = t.p + t.len, *p = auth;
        while (p < end && *p != '/' && *p != '?')
            p++;
        r->host = GW_SLICE(auth, (size_t)(p - auth));
        if (p == end || *p == '/') {
            *out = p < end ? GW_SLICE(p, (size_t)(end - p)) : GW_SLICE_LIT("/");
        } else {
            char *s = gw_arena_alloc(arena, (size_t)(end - p) + 1);
            if (!s)
                return false;
            s[0] = '/';
            memcpy(s + 1, p, (size_t)(end - p));
            *out = GW_SLICE(s, (size_t)(end - p) + 1);
        }
        return r->host.len > 0;
    }
    return false;
}

static void conn_respond_static(gw_conn_t *c, const gw_route_cfg_t *route)
{
    const gw_respond_cfg_t *rs = &route->respond;
    gw_header_kv_t *extra = gw_arena_alloc(&c->arena, (rs->nheaders + 1) * sizeof *extra);
    if (!extra) {
        conn_close(c, 500); /* out of memory: no answer */
        return;
    }
    const char *ctype = "text/plain; charset=utf-8";
    size_t n = 0;
    for (size_t i = 0; i < rs->nheaders; i++) {
        if (strcmp(rs->headers[i].name, "content-type") == 0)
            ctype = rs->headers[i].value;
        else
            extra[n++] = rs->headers[i];
    }
    /* The request body (if any) is not read: close after answering. */
    conn_send(c, rs->status, ctype, GW_SLICE(rs->body, rs->body_len), extra, n, !c->req.body_done);
}

bool gw_conn_check_head(gw_conn_t *c, gw_conn_verdict_t *v)
{
    gw_request_t *r = &c->req;
    llhttp_t *p = &c->parser;
    const gw_config_t *cfg = cfg_of(c);
    r->method = p->method;
    r->method_name = GW_SLICE(llhttp_method_name(p->method), strlen(llhttp_method_name(p->method)));
    r->http_minor = p->http_minor;
    r->head_request = p->method == HTTP_HEAD;
    r->keep_alive = llhttp_should_keep_alive(p);
    r->chunked = (p->flags & F_CHUNKED) != 0;
    r->has_content_length = (p->flags & F_CONTENT_LENGTH) != 0;
    r->content_length = r->has_content_length ? p->content_length : 0;
    r->has_body = r->chunked || r->content_length > 0;

    if (p->http_major != 1)
        return conn_reject(v, 505, "version_not_supported", "only HTTP/1.0 and HTTP/1.1 are supported");
    if (r->http_minor == 1 && r->nhost == 0)
        return conn_reject(v, 400, "bad_request", "missing Host header");
    if (r->nhost > 1)
        return conn_reject(v, 400, "bad_request", "more than one Host header");
    if ((p->flags & F_TRANSFER_ENCODING) && (!r->chunked || r->http_minor == 0))
        return conn_reject(v, 400, "bad_request", "unsupported Transfer-Encoding");
    if (p->method == HTTP_CONNECT)
        return conn_reject(v, 405, "method_not_allowed", "CONNECT is not supported");
    if (cfg->limits.max_body_bytes && r->content_length > cfg->limits.max_body_bytes)
        return conn_reject(v, 413, "body_too_large", "request body too large");
    r->is_upgrade = p->upgrade && r->upgrade.len > 0;

    if (!r->has_body) {
        /* No body: let the parser reach the end of the message now (it pauses there). */
        llhttp_errno_t e = llhttp_execute(p, c->in + c->parsed, 0);
        if (e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE && e != HPE_OK)
            return conn_parse_verdict(c, e, v);
        r->body_done = true;
    }

    gw_slice_t target;
    if (!conn_origin_target(r, &c->arena, &target))
        return conn_reject(v, 400, "bad_request", "invalid request target");
    if (memchr(r->target.p, '#', r->target.len) != NULL)
        return conn_reject(v, 400, "bad_request", "a request target must not have a fragment");
    if (!gw_http1_authority_valid(r->host))
        return conn_reject(v, 400, "bad_request", "invalid Host");
    const char *q = memchr(target.p, '?', target.len);
    r->raw_path = GW_SLICE(target.p, q ? (size_t)(q - target.p) : target.len);
    r->raw_rest = GW_SLICE(target.p + r->raw_path.len, target.len - r->raw_path.len);
    r->query = q ? GW_SLICE(q + 1, r->raw_rest.len - 1) : GW_SLICE("", 0);

    /* Routes match on the canonical path; the client's bytes are what goes upstream unless the
     * route rewrites the path (see gw_conn_build_upstream_head). */
    gw_router_path_t rp;
    char *scratch = gw_arena_alloc(&c->arena, gw_router_scratch_size(cfg, r->raw_path.len));
    if (!scratch)
        return conn_reject(v, 500, "internal", "out of memory for the request path");
    gw_router_path_init(&rp, r->raw_path, scratch);
    int route_ix = gw_router_match(cfg, r->method, r->host, &rp);
    if (route_ix < GW_ROUTER_NO_ROUTE)
        return conn_reject(v, 400, "bad_request", conn_path_error(route_ix));
    if (route_ix == GW_ROUTER_NO_ROUTE)
        return conn_reject(v, 404, "no_route", "no route matches this request");
    r->route = route_ix;
    const gw_route_cfg_t *route = &cfg->routes[r->route];
    /* The form this route matched on: already computed, so this cannot fail. */
    gw_router_path_for(&rp, route, &r->up_path);
    if (!route->has_respond && (route->strip_prefix || route->add_prefix)) {
        size_t tcap = r->up_path.len + (route->add_prefix ? strlen(route->add_prefix) : 0) + 2;
        char *up = gw_arena_alloc(&c->arena, tcap);
        ssize_t tlen = up ? gw_router_rewrite(route, r->up_path, up, tcap) : -1;
        if (tlen < 0)
            return conn_reject(v, 500, "internal", "could not build the upstream request");
        r->up_path = GW_SLICE(up, (size_t)tlen);
    }
    return true;
}

/* The request head is complete and the parser is paused just past it. */
static void conn_on_head(gw_conn_t *c)
{
    gw_request_t *r = &c->req;
    const gw_config_t *cfg = cfg_of(c);
    conn_make_request_id(c);
    c->state = GW_CS_PROXY;
    c->state_since_ms = now_ms(c);
    gw_conn_verdict_t v;
    if (!gw_conn_check_head(c, &v))
        return conn_error(c, v.status, v.code, v.message);
    const gw_route_cfg_t *route = &cfg->routes[r->route];
    conn_update_reading(c);
    gw_conn_arm_timer(c);
    if (c->w->lua && (gw_lua_has_hook(c, GW_HOOK_ON_REQUEST) || gw_lua_has_hook(c, GW_HOOK_REWRITE_PATH))) {
        int rc = gw_lua_on_request(c->w->lua, c);
        if (rc == GW_LUA_FAILED)
            return gw_conn_respond_error(c, 500, "internal", "the request could not be handled");
        if (rc == GW_LUA_RESPONDED)
            return conn_send(c, r->lua_respond, "text/plain; charset=utf-8", r->lua_body, NULL, 0,
                             !r->body_done);
    }
    if (route->has_respond)
        return conn_respond_static(c, route);
    r->upstream = route->upstream;
    if (!gw_conn_build_upstream_head(c, route))
        return conn_error(c, 500, "internal", "could not build the upstream request");
    gw_proxy_start(c);
}

int gw_conn_read_head(gw_conn_t *c, gw_conn_verdict_t *v)
{
    const gw_config_t *cfg = cfg_of(c);
    llhttp_errno_t e = llhttp_execute(&c->parser, c->in + c->parsed, c->in_len - c->parsed);
    if (e == HPE_OK) {
        c->parsed = c->in_len;
        if (c->in_len - c->head_start > cfg->limits.max_header_bytes ||
            c->in_len >= gw_worker_buf_size(c->w)) {
            c->parse_error_status = 431;
            conn_reject(v, 431, "headers_too_large", "request head too large");
            return -1;
        }
        return 0;
    }
    if (e == HPE_PAUSED) {
        c->parsed = (size_t)(llhttp_get_error_pos(&c->parser) - c->in);
        c->head_end = c->parsed;
        llhttp_resume(&c->parser);
        if (c->head_end - c->head_start > cfg->limits.max_header_bytes) {
            conn_reject(v, 431, "headers_too_large", "request head too large");
            return -1;
        }
        return 1;
    }
    conn_parse_verdict(c, e, v);
    return -1;
}

static void conn_process(gw_conn_t *c)
{
    if (c->state != GW_CS_IDLE && c->state != GW_CS_HEAD)
        return;
    if (c->parsed == c->in_len)
        return;
    if (c->state == GW_CS_IDLE) {
        c->head_start = c->parsed;
        c->req.start_ns = gw_now_ns();
        c->req.open = true;
        conn_set_state(c, GW_CS_HEAD);
    }
    gw_conn_verdict_t v;
    int rc = gw_conn_read_head(c, &v);
    if (rc > 0)
        conn_on_head(c);
    else if (rc < 0)
        conn_error(c, v.status, v.code, v.message);
}

/* Parses buffered body bytes and hands the raw range to proxy.c. */
static void conn_pump_body(gw_conn_t *c)
{
    gw_request_t *r = &c->req;
    if (r->body_done || !c->body_flowing || c->body_wait || c->state != GW_CS_PROXY)
        return;
    if (c->parsed == c->in_len) {
        /* Everything forwarded and written: reuse the space after the head. */
        c->in_len = c->parsed = c->head_end;
        conn_update_reading(c);
        return;
    }
    size_t start = c->parsed;
    llhttp_errno_t e = llhttp_execute(&c->parser, c->in + start, c->in_len - start);
    size_t end;
    if (e == HPE_OK) {
        end = c->in_len;
    } else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
        end = (size_t)(llhttp_get_error_pos(&c->parser) - c->in);
    } else {
        gw_proxy_abort(c);
        if (r->response_started) {
            gw_conn_close(c);
            return;
        }
        conn_parse_error(c, e);
        return;
    }
    c->parsed = end;
    c->body_wait = true;
    gw_proxy_body(c, c->in + start, end - start, r->body_done);
    /* Still waiting means the write was queued: stop reading the client until it is done. */
    if (c->body_wait && c->state == GW_CS_PROXY)
        conn_update_reading(c);
}

void gw_conn_resume_body(gw_conn_t *c)
{
    c->body_flowing = true;
    c->body_wait = false;
    if (c->state != GW_CS_PROXY)
        return;
    if (c->req.body_done) {
        conn_update_reading(c);
        gw_conn_arm_timer(c);
        return;
    }
    conn_pump_body(c);
}

void gw_conn_start_tunnel(gw_conn_t *c)
{
    /* Bytes the client sent after its upgrade request are the first tunnel bytes. */
    c->state = GW_CS_TUNNEL;
    c->body_wait = false;
    gw_conn_arm_timer(c);
    if (c->parsed < c->in_len) {
        gw_proxy_tunnel_client_data(c);
        return;
    }
    c->in_len = c->parsed = 0;
    conn_update_reading(c);
}

void gw_conn_tunnel_consumed(gw_conn_t *c)
{
    c->in_len = c->parsed = 0;
    c->body_wait = false;
    conn_update_reading(c);
}

/* ---- accept and shutdown ---- */

void gw_conn_accept(gw_worker_t *w, uv_stream_t *server)
{
    gw_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->w = w;
    uv_tcp_init(&w->loop, &c->tcp);
    uv_timer_init(&w->loop, &c->timer);
    uv_timer_init(&w->loop, &c->aux_timer);
    c->tcp.data = c->timer.data = c->aux_timer.data = c;
    c->wreq.data = c->wreq_extra.data = c;
    gw_list_push(&w->conns, &c->link);
    w->nconns++;
    GW_COUNTER_INC(w->metrics->connections_total);
    GW_RELAXED_STORE(w->metrics->connections_active, GW_RELAXED_LOAD(w->metrics->connections_active) + 1);
    gw_arena_init(&c->arena, 8192, 0, &w->arena_cache);
    gw_conn_prepare(c);
    c->state = GW_CS_IDLE;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        gw_conn_close(c);
        return;
    }
    if (w->nconns > w->cfg->limits.max_connections || w->draining) {
        gw_conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->client_ip, sizeof c->client_ip);
        else
            uv_ip4_name((struct sockaddr_in *)&ss, c->client_ip, sizeof c->client_ip);
    } else {
        strcpy(c->client_ip, "-");
    }
    c->accepted_ms = now_ms(c);
    conn_set_state(c, GW_CS_IDLE);
}

/* A draining worker answers what is already on its way with Connection: close and then closes
 * the connection. An idle keep-alive connection gets GW_DRAIN_IDLE_GRACE_MS for a request the
 * client may have sent before it could know (closing a socket with unread data resets it, and a
 * reload would then cost requests); one whose request is already in the socket, or that has not
 * had its first request yet, is served as usual. Every response on a draining worker says
 * Connection: close, so a busy keep-alive client moves to the new workers after one more. */
void gw_conn_drain_all(gw_worker_t *w)
{
    gw_link_t *l = w->conns.next;
    while (l != &w->conns) {
        gw_link_t *next = l->next;
        gw_conn_t *c = GW_CONTAINER_OF(l, gw_conn_t, link);
        c->req.close_after = true;
        if (c->state == GW_CS_IDLE)
            gw_conn_arm_timer(c);
        l = next;
    }
}

void gw_conn_close_all(gw_worker_t *w)
{
    gw_link_t *l = w->conns.next;
    while (l != &w->conns) {
        gw_link_t *next = l->next;
        /* The gateway gives up on what it had not answered yet (a stop, or the end of a drain):
         * that is a 503 in the log, not the client's doing. */
        conn_close(GW_CONTAINER_OF(l, gw_conn_t, link), 503);
        l = next;
    }
}
