/*
 * proxy: forwarding one request. Picks a backend through the upstream's strategy, leases a
 * keep-alive connection (or connects), writes the head and streams the body, parses the response
 * with llhttp, rewrites its head for the client and streams its body back, then returns the
 * connection to the pool if it is still trustworthy.
 *
 * Retries: a request is tried again on another backend (the tried bit set keeps the strategy
 * from picking the same one) when nothing reached the failed backend (connect refused or timed
 * out), or when a reused keep-alive connection turned out to be closed before answering and the
 * request is idempotent and has no body (the classic stale-connection race). Anything else that
 * fails after bytes were sent is answered with 502/504 and not retried.
 *
 * Backpressure: while a write to the client is pending we do not read from the backend, and
 * while a body write to the backend is pending we do not read from the client, so at most one
 * buffer of each direction is in memory whatever the peers' speeds.
 *
 * Response framing to the client: Content-Length is kept; chunked passes through raw to HTTP/1.1
 * clients and is de-chunked for HTTP/1.0 clients; a close-delimited body is passed through and
 * the client connection closed after it.
 */
#include <stdio.h>
#include <stdlib.h>

#include "health.h"
#include "log.h"
#include "lua_bridge.h"
#include "probe.h"
#include "worker.h"

static llhttp_settings_t resp_settings;
static uv_once_t resp_once = UV_ONCE_INIT;

static void proxy_attempt(gw_conn_t *c);
static void proxy_hedge_arm(gw_conn_t *c);
static void proxy_fail(gw_conn_t *c, gw_upconn_t *u, enum gw_upstream_error kind, bool connect_phase);
static void proxy_process_response(gw_conn_t *c, gw_upconn_t *u);

/* ---- response parser callbacks ---- */

static int on_resp_status(llhttp_t *p, const char *at, size_t n)
{
    gw_upconn_t *u = p->data;
    if (!u->reason.p)
        u->reason.p = at;
    u->reason.len += n;
    return 0;
}

static int on_resp_header_field(llhttp_t *p, const char *at, size_t n)
{
    gw_upconn_t *u = p->data;
    if (u->head_done || !u->conn)
        return 0; /* trailers pass through raw */
    if (u->in_field) {
        u->headers[u->nheaders - 1].name.len += n;
        return 0;
    }
    if (u->nheaders == u->cap_headers) {
        if (u->cap_headers >= 256)
            return -1;
        uint32_t cap = u->cap_headers ? u->cap_headers * 2 : 32;
        gw_header_t *h = gw_arena_alloc(&u->conn->arena, cap * sizeof *h);
        if (!h)
            return -1;
        if (u->nheaders)
            memcpy(h, u->headers, u->nheaders * sizeof *h);
        u->headers = h;
        u->cap_headers = cap;
    }
    gw_header_t *h = &u->headers[u->nheaders++];
    h->name = GW_SLICE(at, n);
    h->value = GW_SLICE(NULL, 0);
    u->in_field = true;
    u->value_done = false;
    return 0;
}

/* llhttp lets some malformed response heads through (a space in or before the colon of a field
 * name, obs-fold); forwarding them would hand the client a head it may read differently, so they
 * fail the response as llhttp's own errors do (RFC 9112 §5.1, §5.2). */
static int on_resp_header_field_complete(llhttp_t *p)
{
    gw_upconn_t *u = p->data;
    u->in_field = false;
    if (!u->head_done && u->conn && !gw_http1_is_token(u->headers[u->nheaders - 1].name)) {
        u->head_error = "invalid header field name";
        return -1;
    }
    return 0;
}

static int on_resp_header_value(llhttp_t *p, const char *at, size_t n)
{
    gw_upconn_t *u = p->data;
    if (u->head_done || !u->conn || u->nheaders == 0)
        return 0;
    gw_header_t *h = &u->headers[u->nheaders - 1];
    /* A value going on after its end, or with a gap (llhttp skipped a CRLF): obs-fold. */
    if (u->value_done || (h->value.p && at != h->value.p + h->value.len)) {
        u->head_error = "obsolete line folding";
        return -1;
    }
    if (!h->value.p)
        h->value.p = at;
    h->value.len += n;
    return 0;
}

static int on_resp_header_value_complete(llhttp_t *p)
{
    gw_upconn_t *u = p->data;
    if (u->head_done || !u->conn || u->nheaders == 0)
        return 0;
    gw_header_t *h = &u->headers[u->nheaders - 1];
    u->value_done = true;
    if (!h->value.p)
        h->value.p = h->name.p + h->name.len;
    while (h->value.len && (h->value.p[h->value.len - 1] == ' ' || h->value.p[h->value.len - 1] == '\t'))
        h->value.len--;
    return 0;
}

static int on_resp_headers_complete(llhttp_t *p)
{
    gw_upconn_t *u = p->data;
    /* llhttp reads any number of status digits and any version digit. */
    if (p->http_major != 1 || p->status_code < 100 || p->status_code > 599) {
        u->head_error = "invalid status line";
        return -1;
    }
    /* A response to HEAD, a 1xx, 204 or 304 has no body whatever its Content-Length says
     * (RFC 9112 §6.3); llhttp reads the flag after this callback returns (it is what returning 1
     * would set), and would otherwise wait for a 304's Content-Length bytes. */
    if (gw_http1_response_bodyless(p->status_code, u->conn && u->conn->req.head_request))
        p->flags |= F_SKIPBODY;
    return HPE_PAUSED;
}

static int on_resp_body(llhttp_t *p, const char *at, size_t n)
{
    gw_upconn_t *u = p->data;
    if (u->buffering && u->conn) {
        /* buffer_response: the decoded body is copied aside, up to the route's limit. */
        gw_request_t *r = &u->conn->req;
        uint64_t max = u->conn->w->cfg->routes[r->route].buffer_response;
        if (r->resp_body.len + n > max) {
            u->too_large = true;
            return -1;
        }
        gw_buf_append(&r->resp_body, at, n);
        if (r->resp_body.oom) {
            u->too_large = true;
            return -1;
        }
        return 0;
    }
    if (!u->dechunk)
        return 0;
    if (u->nbody_bufs == u->cap_body_bufs) {
        uint32_t cap = u->cap_body_bufs ? u->cap_body_bufs * 2 : 16;
        uv_buf_t *b = realloc(u->body_bufs, cap * sizeof *b);
        if (!b)
            return -1;
        u->body_bufs = b;
        u->cap_body_bufs = cap;
    }
    u->body_bufs[u->nbody_bufs++] = uv_buf_init((char *)at, (unsigned)n);
    return 0;
}

static int on_resp_message_complete(llhttp_t *p)
{
    gw_upconn_t *u = p->data;
    u->message_done = true;
    return HPE_PAUSED;
}

static void resp_settings_init(void)
{
    llhttp_settings_init(&resp_settings);
    resp_settings.on_status = on_resp_status;
    resp_settings.on_header_field = on_resp_header_field;
    resp_settings.on_header_field_complete = on_resp_header_field_complete;
    resp_settings.on_header_value = on_resp_header_value;
    resp_settings.on_header_value_complete = on_resp_header_value_complete;
    resp_settings.on_headers_complete = on_resp_headers_complete;
    resp_settings.on_body = on_resp_body;
    resp_settings.on_message_complete = on_resp_message_complete;
}

/* ---- attaching and detaching ---- */

void gw_proxy_attach(gw_conn_t *c, gw_upconn_t *u, bool hedge)
{
    uv_once(&resp_once, resp_settings_init);
    if (hedge)
        c->hedge = u;
    else
        c->up = u;
    u->conn = c;
    u->is_hedge = hedge;
    u->inflight = false;
    u->start_ns = 0;
    u->head_done = u->message_done = u->got_bytes = false;
    u->dechunk = u->close_delimited = u->rechunk = false;
    u->buffering = u->too_large = false;
    u->nbody_bufs = 0;
    u->headers = NULL;
    u->nheaders = u->cap_headers = 0;
    u->in_field = u->value_done = false;
    u->head_error = NULL;
    u->reason = GW_SLICE(NULL, 0);
    llhttp_init(&u->parser, HTTP_RESPONSE, &resp_settings);
    u->parser.data = u;
}

/* Detaches attempt `u` from its request and closes its connection (it cannot be reused); the
 * close releases its in-flight count. */
static void proxy_detach(gw_conn_t *c, gw_upconn_t *u)
{
    if (c->up == u)
        c->up = NULL;
    if (c->hedge == u)
        c->hedge = NULL;
    u->conn = NULL;
}

static void proxy_drop_attempt(gw_conn_t *c, gw_upconn_t *u)
{
    proxy_detach(c, u);
    gw_upconn_close(u);
}

/* One more upstream error of `kind` for backend `b` (gw_upstream_errors_total). */
static void proxy_count_error(gw_worker_t *w, const gw_backend_t *b, enum gw_upstream_error kind)
{
    GW_COUNTER_INC(w->metrics->upstream_errors[b->cfg->gindex][kind]);
}

/* Detaches and closes the request's upstream connections, a hedge's included, and forgets a
 * hedge that was due. */
static void proxy_drop_upstream(gw_conn_t *c)
{
    uv_timer_stop(&c->aux_timer);
    if (c->hedge)
        proxy_drop_attempt(c, c->hedge);
    if (c->up)
        proxy_drop_attempt(c, c->up);
}

static gw_lb_ctx_t proxy_lb_ctx(gw_conn_t *c)
{
    gw_request_t *r = &c->req;
    gw_worker_upstream_t *wu = &c->w->ups[r->upstream];
    return (gw_lb_ctx_t){.backends = wu->backends,
                         .n = wu->n_active,
                         .tried = r->tried,
                         .rng = &c->w->rng,
                         .now_ms = uv_now(&c->w->loop),
                         .worker = c->w,
                         .upstream = (uint32_t)r->upstream,
                         .conn = c};
}

/* Tells the strategy how an attempt to backend `b` went, `latency_ns` after it was sent (0 for
 * a failure). `u` (may be NULL) is the attempt's connection: the in-flight count when it was sent
 * comes from it, and, with a response head, the piggybacked load signals. */
static void proxy_report(gw_conn_t *c, gw_backend_t *b, gw_upconn_t *u, enum gw_lb_outcome outcome,
                         int status, uint64_t latency_ns)
{
    gw_worker_upstream_t *wu = &c->w->ups[c->req.upstream];
    if (!wu->lb->on_result || !b)
        return;
    gw_lb_ctx_t ctx = proxy_lb_ctx(c);
    gw_lb_result_t res = {
        .outcome = outcome,
        .status = status,
        .latency_ms = (double)latency_ns / 1e6,
        .rif_at_start = u ? u->rif_at_start : 0,
    };
    gw_probe_signals_t sig;
    if (u && outcome == GW_LB_OK && wu->lb->wants_signals &&
        gw_probe_parse_headers(u->headers, u->nheaders, &sig)) {
        res.has_signals = true;
        res.sig_rif = sig.rif;
        res.sig_latency_us = sig.latency_us;
    }
    wu->lb->on_result(wu->lb_state, &ctx, b->index, &res);
}

/* Tells the strategy that attempt `u` was given up before its response head (lb.h: cancelled,
 * with how long it had waited); returns that wait in ns. */
static uint64_t proxy_report_cancelled(gw_conn_t *c, gw_upconn_t *u)
{
    uint64_t waited = u->start_ns ? gw_now_ns() - u->start_ns : 0;
    proxy_report(c, u->pool->backend, u, GW_LB_CANCELLED, 0, waited);
    return waited;
}

void gw_proxy_abort(gw_conn_t *c)
{
    /* The client left before a response head: every attempt still waiting for one ends, for
     * the strategy, as cancelled, as a lost hedge race does. Without it a strategy that counts
     * what it sent until it hears back (a Lua least-connections, say) would count these for
     * ever. */
    if (c->req.upstream_head_ns == 0) {
        if (c->hedge)
            proxy_report_cancelled(c, c->hedge);
        if (c->up)
            proxy_report_cancelled(c, c->up);
    }
    proxy_drop_upstream(c);
}

/* ---- sending the request ---- */

static void proxy_up_written(gw_upconn_t *u, int status);

static void proxy_on_up_write(uv_write_t *req, int status)
{
    gw_upconn_t *u = req->data;
    u->write_pending = false;
    if (u->state == GW_US_CLOSING)
        return;
    proxy_up_written(u, status);
}

/* A write to the backend finished (at once or from its callback). */
static void proxy_up_written(gw_upconn_t *u, int status)
{
    gw_conn_t *c = u->conn;
    if (!c) {
        /* A cancelled attempt (proxy_cancel) waits for its response head to close. */
        if (status < 0 || !u->inflight)
            gw_upconn_close(u);
        else
            gw_upconn_arm(u, u->pool->ucfg->read_timeout_ms);
        return;
    }
    if (status < 0) {
        if (u->state == GW_US_TUNNEL) {
            gw_conn_close(c);
            return;
        }
        /* The backend went away while we were sending. If it already answered, the reader will
         * see that; otherwise this is a reset. */
        if (!u->head_done)
            proxy_fail(c, u, GW_UERR_RESET, false);
        return;
    }
    if (u->state == GW_US_TUNNEL) {
        gw_conn_tunnel_consumed(c);
        return;
    }
    if (!u->head_done)
        gw_upconn_arm(u, u->pool->ucfg->read_timeout_ms);
    if (u != c->up)
        return; /* a hedge: no body, no 100 Continue */
    if (u->write_kind == GW_UW_HEAD && c->req.expect_continue && !c->req.body_done &&
        !c->req.response_started)
        gw_conn_send_continue(c);
    gw_conn_resume_body(c);
}

/* Writes to the backend, at once when the kernel takes it all (then the completion runs
 * before this returns), else queued. Returns 0 or a negative error. */
static int proxy_up_write(gw_upconn_t *u, const uv_buf_t *bufs, unsigned n, int kind)
{
    u->write_kind = kind;
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    int w = u->write_pending ? UV_EAGAIN : uv_try_write((uv_stream_t *)&u->tcp, bufs, n);
    if (w >= 0 && (size_t)w == total) {
        proxy_up_written(u, 0);
        return 0;
    }
    if (w < 0 && w != UV_EAGAIN)
        return w;
    u->write_pending = true;
    int rc = gw_write_rest(&u->wreq, (uv_stream_t *)&u->tcp, bufs, n, w > 0 ? (size_t)w : 0,
                           proxy_on_up_write);
    if (rc != 0)
        u->write_pending = false;
    return rc;
}

static void proxy_send_head(gw_conn_t *c, gw_upconn_t *u)
{
    gw_request_t *r = &c->req;
    const gw_route_cfg_t *route = &c->w->cfg->routes[r->route];
    u->state = GW_US_ACTIVE;
    gw_slice_t host = r->lua_host.p                        ? r->lua_host
                      : route->preserve_host && r->host.len ? r->host
                      : GW_SLICE(u->pool->backend->cfg->authority, strlen(u->pool->backend->cfg->authority));
    gw_buf_t tail;
    gw_buf_init(&tail, &c->arena, host.len + 16);
    gw_buf_append_header(&tail, GW_SLICE_LIT("Host"), host);
    gw_buf_append(&tail, "\r\n", 2);
    if (tail.oom) {
        proxy_drop_upstream(c);
        gw_conn_close(c);
        return;
    }
    uv_buf_t bufs[2] = {uv_buf_init(r->up_head.p, (unsigned)r->up_head.len), uv_buf_init(tail.p, (unsigned)tail.len)};
    gw_backend_t *b = u->pool->backend;
    r->upstream_sent = true;
    u->start_ns = gw_now_ns();
    u->rif_at_start = GW_ATOMIC_ADD(b->inflight, 1) - 1;
    u->inflight = true;
    GW_COUNTER_INC(c->w->metrics->upstream_requests[b->cfg->gindex]);
    if (gw_upconn_read_start(u) != 0) {
        proxy_fail(c, u, GW_UERR_RESET, false);
        return;
    }
    gw_upconn_arm(u, u->pool->ucfg->send_timeout_ms);
    if (proxy_up_write(u, bufs, 2, GW_UW_HEAD) != 0)
        proxy_fail(c, u, GW_UERR_RESET, false);
}

void gw_proxy_body(gw_conn_t *c, const char *p, size_t n, bool last)
{
    gw_upconn_t *u = c->up;
    if (!u || u->state != GW_US_ACTIVE || n == 0) {
        /* Nothing to send, or the backend already answered and left: the bytes are dropped
         * (the client connection closes after the response since the body was not used). */
        if (u || !c->req.response_started || n == 0) {
            if (!u)
                c->req.close_after = true;
        }
        gw_conn_resume_body(c);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    if (!u->head_done)
        gw_upconn_arm(u, u->pool->ucfg->send_timeout_ms);
    if (proxy_up_write(u, &b, 1, GW_UW_BODY) != 0)
        proxy_fail(c, u, GW_UERR_RESET, false);
}

/* ---- picking and connecting ---- */

static void proxy_on_backoff(uv_timer_t *t)
{
    gw_conn_t *c = t->data;
    if (c->state == GW_CS_CLOSING)
        return;
    proxy_attempt(c);
}

/* Asks the upstream's strategy for a backend this request has not tried (retries and hedges
 * share the tried set) and marks it tried. NULL when none is left, and, with `healthy_only`,
 * when only an unhealthy one is: a strategy offers one as a last resort (lb.h), which is right
 * for a request that has nowhere else to go but not for a hedge, an extra the request can do
 * without. */
static gw_backend_t *proxy_pick(gw_conn_t *c, bool healthy_only)
{
    gw_request_t *r = &c->req;
    gw_worker_upstream_t *wu = &c->w->ups[r->upstream];
    if (wu->nmembers < wu->n)
        for (size_t i = 0; i < GW_ARRAY_LEN(r->tried); i++)
            r->tried[i] |= wu->absent[i];
    gw_lb_ctx_t ctx = proxy_lb_ctx(c);
    int idx = wu->lb->pick(wu->lb_state, &ctx);
    if (idx < 0 || (size_t)idx >= wu->n || gw_lb_tried(&ctx, (size_t)idx))
        return NULL;
    if (healthy_only && !GW_RELAXED_LOAD(wu->backends[idx]->healthy))
        return NULL;
    gw_lb_set_tried(r->tried, (size_t)idx);
    return wu->backends[idx];
}

/* Starts an attempt on backend `b`: on a pooled connection the head goes out at once, on a new
 * one when it connects. Returns false when not even a connection could be started. */
static bool proxy_launch(gw_conn_t *c, gw_backend_t *b, bool hedge)
{
    gw_pool_t *pool = &c->w->pools[b->cfg->gindex];
    gw_upconn_t *u = gw_pool_lease(pool);
    bool reused = u != NULL;
    if (!u && !(u = gw_upconn_connect(c->w, pool)))
        return false;
    gw_proxy_attach(c, u, hedge);
    u->reused = reused;
    if (!hedge)
        proxy_hedge_arm(c);
    if (reused)
        proxy_send_head(c, u);
    return true;
}

/* The answer to a request whose last attempt failed with `kind` and that gets no other. */
static void proxy_respond_failure(gw_conn_t *c, enum gw_upstream_error kind)
{
    switch (kind) {
    case GW_UERR_TIMEOUT:
        gw_conn_respond_error(c, 504, "upstream_timeout", "the upstream did not answer in time");
        break;
    case GW_UERR_CONNECT:
        gw_conn_respond_error(c, 502, "upstream_unavailable", "no upstream could be reached");
        break;
    case GW_UERR_PROTOCOL:
        gw_conn_respond_error(c, 502, "upstream_protocol_error", "the upstream sent an invalid response");
        break;
    default:
        gw_conn_respond_error(c, 502, "upstream_reset", "the upstream closed the connection");
        break;
    }
}

static void proxy_attempt(gw_conn_t *c)
{
    gw_request_t *r = &c->req;
    gw_worker_upstream_t *wu = &c->w->ups[r->upstream];
    if (wu->nmembers == 0) {
        gw_conn_respond_error(c, 503, "no_backend", "the upstream has no backends");
        return;
    }
    gw_backend_t *b = proxy_pick(c, false);
    if (!b) {
        /* Every backend was tried (or the rest are down): the last failure is the answer. */
        if (r->attempts == 0)
            gw_conn_respond_error(c, 503, "no_healthy_backend", "no backend is available");
        else
            proxy_respond_failure(c, r->last_error);
        return;
    }
    if (r->retry_due) {
        /* Counted here, not when decided: a retry that finds no backend left did not happen. */
        GW_COUNTER_INC(c->w->metrics->retries[r->upstream]);
        r->retry_due = false;
    }
    r->backend = b;
    r->attempts++;
    if (!proxy_launch(c, b, false))
        proxy_fail(c, NULL, GW_UERR_CONNECT, true);
}

/* ---- hedging (hedge.h has the budget and the delay) ---- */

static void proxy_hedge_count(gw_conn_t *c, gw_hedge_outcome_t o)
{
    GW_COUNTER_INC(c->w->metrics->hedges[c->req.upstream][o]);
}

/* The hedge delay runs on the aux timer, which is free: a retry's backoff waits only while no
 * attempt is in flight, and the delay only while one is. */
static void proxy_on_hedge_due(uv_timer_t *t)
{
    gw_conn_t *c = t->data;
    gw_request_t *r = &c->req;
    gw_upconn_t *orig = c->up;
    /* Never once a backend began to answer, nor after anything (a relayed 1xx before a retry)
     * went to the client: a hedge must not follow response bytes. */
    if (c->state != GW_CS_PROXY || !orig || orig->got_bytes || c->hedge || r->response_started ||
        r->bytes_out)
        return;
    gw_worker_upstream_t *wu = &c->w->ups[r->upstream];
    r->hedges++;
    if (!gw_hedge_take(&wu->hedge)) {
        proxy_hedge_count(c, GW_HEDGE_SKIPPED_BUDGET);
        return;
    }
    gw_backend_t *b = proxy_pick(c, true);
    if (!b) {
        gw_hedge_refund(&wu->hedge);
        proxy_hedge_count(c, GW_HEDGE_SKIPPED_NO_BACKEND);
        return;
    }
    proxy_hedge_count(c, GW_HEDGE_SENT);
    if (!proxy_launch(c, b, true)) {
        proxy_count_error(c->w, b, GW_UERR_CONNECT);
        proxy_report(c, b, NULL, GW_LB_CONNECT_ERROR, 0, 0);
        proxy_hedge_count(c, GW_HEDGE_FAILED);
    }
}

/* An attempt started: a request that may be hedged gets its hedge delay (again, after a retry). */
static void proxy_hedge_arm(gw_conn_t *c)
{
    gw_request_t *r = &c->req;
    gw_worker_upstream_t *wu = &c->w->ups[r->upstream];
    if (r->hedgeable && r->hedges < wu->cfg->hedge.max)
        uv_timer_start(&c->aux_timer, proxy_on_hedge_due, gw_hedge_delay_ms(&wu->hedge), 0);
}

/* A racing attempt lost: the strategy hears it was cancelled and how long it had waited, and it
 * leaves the request. Its connection is never pooled, so the response it may still send never
 * reaches another request; it is closed when that response begins (or fails, or read_ms runs
 * out), and until then it stays counted in flight. The backend is still busy with the request:
 * a count that dropped at once would make a stuck backend, whose every request is being
 * hedged away, look idle to the strategies that balance on it, and draw new requests into it.
 * An attempt that was not sent yet is closed at once. */
static void proxy_cancel(gw_conn_t *c, gw_upconn_t *u)
{
    gw_worker_upstream_t *wu = &c->w->ups[c->req.upstream];
    uint64_t waited = proxy_report_cancelled(c, u);
    /* An original that lost took at least this long: leaving it out of the latencies would pull
     * the hedge quantile down, below the delays that made hedges win. */
    if (!u->is_hedge && waited)
        gw_hedge_observe(&wu->hedge, waited / 1000);
    if (!u->inflight) {
        proxy_drop_attempt(c, u);
        return;
    }
    proxy_detach(c, u);
    u->reusable = false;
}

/* The request's first response head (a 1xx included) arrived, on `u`: that attempt answers the
 * request, the one racing it is cancelled, and no hedge starts any more. */
static void proxy_settle(gw_conn_t *c, gw_upconn_t *u)
{
    uv_timer_stop(&c->aux_timer);
    gw_upconn_t *loser = !c->hedge ? NULL : u == c->hedge ? c->up : c->hedge;
    if (u->is_hedge)
        proxy_hedge_count(c, GW_HEDGE_WON);
    else if (loser)
        proxy_hedge_count(c, GW_HEDGE_LOST);
    if (loser)
        proxy_cancel(c, loser);
    u->is_hedge = false; /* from here on it is the request's attempt: counted once */
    c->up = u;
    c->hedge = NULL;
    c->req.backend = u->pool->backend;
}

void gw_proxy_start(gw_conn_t *c)
{
    gw_request_t *r = &c->req;
    gw_worker_upstream_t *wu = &c->w->ups[r->upstream];
    r->attempts = 0;
    /* Only what can be sent twice without harm, and only before anything was streamed: a body
     * is read once, an upgrade or an expectation binds the client to one backend. */
    r->hedgeable = wu->cfg->hedge.enabled && (r->method == HTTP_GET || r->method == HTTP_HEAD) &&
                   !r->has_body && !r->is_upgrade && !r->expect_continue;
    if (r->hedgeable)
        gw_hedge_earn(&wu->hedge);
    proxy_attempt(c);
}

void gw_proxy_on_connect(gw_upconn_t *u, int status)
{
    gw_conn_t *c = u->conn;
    if (!c) {
        gw_upconn_close(u);
        return;
    }
    if (status < 0) {
        gw_log_debug("connect %s: %s", u->pool->backend->cfg->url, uv_strerror(status));
        proxy_fail(c, u, GW_UERR_CONNECT, true);
        return;
    }
    uv_timer_stop(&u->timer);
    proxy_send_head(c, u);
}

/* Passive health: one more transport failure of `b` in a row, which may eject it. */
static void proxy_health_failure(gw_worker_t *w, gw_backend_t *b)
{
    gw_worker_upstream_t *wu = &w->ups[b->upstream];
    const gw_upstream_cfg_t *ucfg = wu->cfg;
    if (gw_health_on_failure(b, wu->backends, wu->n, &ucfg->health, uv_now(&w->loop)))
        gw_log_warn("upstream %s: backend %s ejected after %u failures in a row", ucfg->name,
                    b->cfg->url, ucfg->health.max_fails);
}

/* A backend failed this request. Counts it, then retries or answers with an error. */
static void proxy_fail(gw_conn_t *c, gw_upconn_t *u, enum gw_upstream_error kind, bool connect_phase)
{
    gw_request_t *r = &c->req;
    gw_worker_t *w = c->w;
    const gw_upstream_cfg_t *ucfg = w->ups[r->upstream].cfg;
    gw_backend_t *b = u ? u->pool->backend : r->backend;
    if (b)
        proxy_count_error(w, b, kind);
    proxy_report(c, b, u,
                 kind == GW_UERR_TIMEOUT   ? GW_LB_TIMEOUT
                 : kind == GW_UERR_CONNECT ? GW_LB_CONNECT_ERROR
                                           : GW_LB_PROTOCOL_ERROR,
                 0, 0);
    bool stale = u && u->reused && !u->got_bytes && kind == GW_UERR_RESET;
    bool replayable = gw_http1_method_idempotent(r->method) && !r->has_body;
    if (b && !stale)
        proxy_health_failure(w, b);
    if (u) {
        bool racing = c->hedge != NULL;
        if (u->is_hedge)
            proxy_hedge_count(c, GW_HEDGE_FAILED);
        u->reusable = false;
        proxy_drop_attempt(c, u);
        if (racing) {
            /* The other attempt goes on alone: a failed original hands the request to its hedge
             * (neither is retried while the other may still answer). */
            if (!c->up) {
                c->up = c->hedge;
                c->hedge = NULL;
                r->backend = c->up->pool->backend;
            }
            return;
        }
    }
    uv_timer_stop(&c->aux_timer); /* a hedge due for the failed attempt has nothing to race */
    r->last_error = kind;
    if (r->response_started) {
        gw_conn_close(c);
        return;
    }
    /* A reused connection that the backend had already closed is not the backend's fault and
     * not a real attempt: try the same backend again on a fresh connection. */
    /* What reached a backend is sent again only when the method is idempotent, and only
     * without a body (it was streamed and is gone). Read timeouts are not retried: the backend
     * may still be working on it, and a retry doubles the load exactly when it hurts. */
    bool safe = connect_phase || (kind != GW_UERR_TIMEOUT && replayable);
    if (safe && stale && r->stale_retries < 2) {
        r->stale_retries++;
        r->attempts--;
        if (r->backend)
            r->tried[r->backend->index / 64] &= ~((uint64_t)1 << (r->backend->index % 64));
        proxy_attempt(c);
        return;
    }
    if (safe && r->attempts <= ucfg->retries_max) {
        r->retry_due = true;
        if (ucfg->retry_backoff_ms) {
            uv_timer_start(&c->aux_timer, proxy_on_backoff, ucfg->retry_backoff_ms, 0);
            return;
        }
        proxy_attempt(c);
        return;
    }
    proxy_respond_failure(c, kind);
}

void gw_proxy_on_timeout(gw_upconn_t *u)
{
    gw_conn_t *c = u->conn;
    if (!c) {
        /* A cancelled attempt that never got an answer is still the backend's timeout: without
         * it, a backend that answers nothing but whose every request is hedged away would never
         * be ejected. */
        if (u->inflight) {
            proxy_count_error(u->w, u->pool->backend, GW_UERR_TIMEOUT);
            proxy_health_failure(u->w, u->pool->backend);
        }
        gw_upconn_close(u);
        return;
    }
    if (u->state == GW_US_CONNECTING) {
        proxy_fail(c, u, GW_UERR_TIMEOUT, true);
        return;
    }
    if (c->req.response_started) {
        proxy_count_error(c->w, u->pool->backend, GW_UERR_TIMEOUT);
        gw_conn_close(c);
        return;
    }
    proxy_fail(c, u, GW_UERR_TIMEOUT, false);
}

/* ---- the response ---- */

/* The response is complete and everything was written to the client. */
static void proxy_finish(gw_conn_t *c, gw_upconn_t *u)
{
    gw_request_t *r = &c->req;
    gw_upconn_release_inflight(u);
    c->up = NULL;
    u->conn = NULL;
    if (!r->body_done || u->close_delimited || !llhttp_should_keep_alive(&u->parser))
        u->reusable = false;
    if (!r->body_done)
        r->close_after = true;
    gw_pool_release(u);
    gw_conn_request_done(c);
}

/* Everything read so far was handled (written to the client or copied aside): reuse the input
 * buffer from its start and wait for more of the response. */
static void proxy_read_more(gw_upconn_t *u)
{
    if (u->parsed == u->in_len)
        u->in_len = u->parsed = 0;
    gw_upconn_arm(u, u->pool->ucfg->read_timeout_ms);
    gw_upconn_read_start(u);
}

static void proxy_on_client_written(gw_conn_t *c, int status)
{
    gw_proxy_client_drained(c);
}

void gw_proxy_client_drained(gw_conn_t *c)
{
    gw_upconn_t *u = c->up;
    if (!u)
        return;
    u->nbody_bufs = 0;
    if (u->state == GW_US_TUNNEL) {
        u->in_len = u->parsed = 0;
        gw_upconn_read_start(u);
        return;
    }
    if (u->message_done) {
        proxy_finish(c, u);
        return;
    }
    if (u->parsed < u->in_len) {
        gw_upconn_arm(u, u->pool->ucfg->read_timeout_ms);
        proxy_process_response(c, u);
        return;
    }
    proxy_read_more(u);
}

/* The value of the response header `name` (the last line of it), or an empty slice. */
static gw_slice_t proxy_response_header(const gw_upconn_t *u, const char *name)
{
    for (uint32_t i = u->nheaders; i-- > 0;)
        if (gw_slice_ieq(u->headers[i].name, name))
            return u->headers[i].value;
    return GW_SLICE(NULL, 0);
}

/* Response headers the gateway writes itself: the framing and the request id. */
static bool proxy_reserved_response_header(gw_slice_t n)
{
    return (n.len == 14 && gw_slice_ieq(n, "content-length")) ||
           (n.len == 12 && gw_slice_ieq(n, "x-request-id"));
}

int gw_proxy_build_client_head(gw_conn_t *c, gw_upconn_t *u, gw_buf_t *b)
{
    gw_request_t *r = &c->req;
    llhttp_t *p = &u->parser;
    const gw_route_cfg_t *route = &c->w->cfg->routes[r->route];
    const gw_header_ops_t *ops = &route->response_headers;
    int status = p->status_code;
    if (c->w->lua && status != 101 && gw_lua_has_hook(c, GW_HOOK_ON_RESPONSE)) {
        r->lua_response_ran = true;
        r->resp_up = u;
        int rc = gw_lua_on_response(c->w->lua, c);
        r->resp_up = NULL;
        if (rc == GW_LUA_FAILED)
            return -1;
    }
    bool status_changed = r->lua_status && r->lua_status != status;
    if (status_changed)
        status = r->lua_status;
    bool bodyless = gw_http1_response_bodyless(status, r->head_request);
    bool upgrade = status == 101;
    gw_slice_t upgrade_value = proxy_response_header(u, "upgrade");
    if (!bodyless && !upgrade && !r->resp_buffered) {
        if (p->flags & F_CHUNKED) {
            if (r->http_minor == 0) {
                u->dechunk = true;
                r->close_after = true;
            }
        } else if (!(p->flags & F_CONTENT_LENGTH)) {
            /* The backend ends the body by closing. An HTTP/1.1 client gets it chunked and keeps
             * its connection (as nginx does); an HTTP/1.0 client gets it as it came. */
            u->close_delimited = true;
            if (r->http_minor == 0)
                r->close_after = true;
            else
                u->rechunk = true;
        }
    }
    if (c->w->draining || !r->keep_alive)
        r->close_after = true;
    gw_buf_init(b, &c->arena, 256 + (u->parsed));
    char line[48];
    int n = snprintf(line, sizeof line, "HTTP/1.1 %d ", status);
    gw_buf_append(b, line, (size_t)n);
    if (u->reason.len && !status_changed)
        gw_buf_append_slice(b, u->reason);
    else
        gw_buf_append_str(b, gw_http1_reason(status));
    gw_buf_append(b, "\r\n", 2);
    gw_http1_via_t via = {.name = c->w->cfg->via, .major = p->http_major, .minor = p->http_minor};
    gw_http1_forward_headers(b, u->headers, u->nheaders, proxy_reserved_response_header,
                             ops, &r->resp_edits, &via);
    if (r->resp_buffered) {
        /* The whole body is known (and may have been replaced by a hook). */
        gw_buf_append_str(b, "Content-Length: ");
        gw_buf_append_u64(b, r->resp_body.len);
        gw_buf_append(b, "\r\n", 2);
    } else if ((p->flags & F_CONTENT_LENGTH) && status != 204 && !(status >= 100 && status < 200)) {
        /* Kept for HEAD and 304 too: there it describes the representation. */
        gw_buf_append_str(b, "Content-Length: ");
        gw_buf_append_u64(b, p->content_length);
        gw_buf_append(b, "\r\n", 2);
    } else if (!bodyless && !upgrade && (((p->flags & F_CHUNKED) && !u->dechunk) || u->rechunk)) {
        gw_buf_append_str(b, "Transfer-Encoding: chunked\r\n");
    }
    gw_buf_append_header(b, GW_SLICE_LIT("X-Request-Id"), r->request_id);
    if (upgrade) {
        gw_buf_append_str(b, "Connection: upgrade\r\n");
        if (upgrade_value.len)
            gw_buf_append_header(b, GW_SLICE_LIT("Upgrade"), upgrade_value);
    } else if (r->close_after) {
        gw_buf_append_str(b, "Connection: close\r\n");
    } else if (r->http_minor == 0) {
        gw_buf_append_str(b, "Connection: keep-alive\r\n");
    }
    gw_buf_append(b, "\r\n", 2);
    r->status = status;
    return !b->oom;
}

/* A 101 may only answer an upgrade the gateway forwarded, and only to protocols offered
 * (RFC 9110 §7.8): anything else would turn the connection into a tunnel the client never
 * asked for. */
static bool proxy_upgrade_matches(gw_conn_t *c, gw_upconn_t *u)
{
    gw_request_t *r = &c->req;
    gw_slice_t chosen = proxy_response_header(u, "upgrade"), e;
    size_t pos = 0, n = 0;
    if (!r->is_upgrade)
        return false;
    while (gw_http1_list_next(chosen, &pos, &e)) {
        if (!gw_http1_list_has(r->upgrade, e))
            return false;
        n++;
    }
    return n > 0;
}

/* A 1xx other than 101 (RFC 9110 §15.2): an HTTP/1.1 client gets it with the head rules of any
 * forwarded response (hop-by-hop fields removed, Via added), but without the route's header
 * operations or the hooks, which are for the final response. An HTTP/1.0 client cannot receive
 * one (RFC 9110 §15.2), so it is dropped; so is a 100 when the client sent `Expect:
 * 100-continue`, which the gateway answers itself. Returns 1 when done (written or dropped), 0
 * when the write is pending (gw_proxy_client_drained follows), -1 when the client is gone. */
static int proxy_relay_interim(gw_conn_t *c, gw_upconn_t *u)
{
    static const gw_header_ops_t no_ops;
    static const gw_header_edits_t no_edits;
    gw_request_t *r = &c->req;
    llhttp_t *p = &u->parser;
    if (r->http_minor == 0 || (p->status_code == 100 && r->expect_continue))
        return 1;
    /* One buffer for all of a request's interim heads: one is written at a time. */
    gw_buf_t *b = &r->interim_head;
    if (b->p)
        b->len = 0;
    else
        gw_buf_init(b, &c->arena, 256);
    char line[24];
    int n = snprintf(line, sizeof line, "HTTP/1.1 %d ", p->status_code);
    gw_buf_append(b, line, (size_t)n);
    if (u->reason.len)
        gw_buf_append_slice(b, u->reason);
    else
        gw_buf_append_str(b, gw_http1_reason(p->status_code));
    gw_buf_append(b, "\r\n", 2);
    gw_http1_via_t via = {.name = c->w->cfg->via, .major = p->http_major, .minor = p->http_minor};
    gw_http1_forward_headers(b, u->headers, u->nheaders, proxy_reserved_response_header, &no_ops, &no_edits, &via);
    gw_buf_append(b, "\r\n", 2);
    if (b->oom)
        return -1;
    uv_buf_t buf = uv_buf_init(b->p, (unsigned)b->len);
    int rc = gw_conn_write(c, &buf, 1, proxy_on_client_written);
    return rc < 0 ? -1 : rc;
}

/* An on_response hook failed: the backend's response is dropped and the client gets a 500. */
static void proxy_hook_failed(gw_conn_t *c)
{
    proxy_drop_upstream(c);
    gw_conn_respond_error(c, 500, "internal", "the response could not be handled");
}

static void proxy_on_client_written(gw_conn_t *c, int status);

/* buffer_response: the whole body is in r->resp_body. The on_response hooks run now (they can
 * read and replace it), then the head and the body go out as one Content-Length response. */
static void proxy_buffered_send(gw_conn_t *c, gw_upconn_t *u)
{
    gw_request_t *r = &c->req;
    r->resp_buffered = true;
    if (u->parsed < u->in_len)
        u->reusable = false;
    gw_buf_t head;
    int hb = gw_proxy_build_client_head(c, u, &head);
    if (hb < 0) {
        proxy_hook_failed(c);
        return;
    }
    if (hb == 0) {
        proxy_fail(c, u, GW_UERR_PROTOCOL, false);
        return;
    }
    r->response_started = true;
    uv_buf_t bufs[2] = {uv_buf_init(head.p, (unsigned)head.len),
                        uv_buf_init(r->resp_body.p, (unsigned)r->resp_body.len)};
    unsigned nb = (r->resp_body.len && !r->head_request) ? 2 : 1;
    gw_upconn_read_stop(u);
    uv_timer_stop(&u->timer);
    int rc = gw_conn_write(c, bufs, nb, proxy_on_client_written);
    if (rc == 1) {
        gw_proxy_client_drained(c);
    } else if (rc < 0) {
        proxy_drop_upstream(c);
        gw_conn_close(c);
    }
}

/* The response head's slices point into u->in, which buffering reuses for the body: copy them
 * into the request arena first. Returns false on OOM. */
static bool proxy_pin_head(gw_conn_t *c, gw_upconn_t *u)
{
    gw_arena_t *a = &c->arena;
    for (uint32_t i = 0; i < u->nheaders; i++) {
        gw_header_t *h = &u->headers[i];
        char *n = gw_arena_dup(a, h->name.p, h->name.len);
        char *v = gw_arena_dup(a, h->value.p ? h->value.p : "", h->value.len);
        if (!n || !v)
            return false;
        h->name.p = n;
        h->value.p = v;
    }
    if (u->reason.len) {
        char *rs = gw_arena_dup(a, u->reason.p, u->reason.len);
        if (!rs)
            return false;
        u->reason.p = rs;
    }
    return true;
}

/* buffer_response: parses what arrived into r->resp_body; sends when the body is complete. */
static void proxy_buffer_more(gw_conn_t *c, gw_upconn_t *u)
{
    if (!u->message_done && u->parsed < u->in_len) {
        llhttp_errno_t e = llhttp_execute(&u->parser, u->in + u->parsed, u->in_len - u->parsed);
        if (e == HPE_OK) {
            u->parsed = u->in_len;
        } else if (e == HPE_PAUSED) {
            u->parsed = (size_t)(llhttp_get_error_pos(&u->parser) - u->in);
        } else if (u->too_large) {
            gw_log_warn("upstream %s: response body over buffer_response's limit on route %s",
                        u->pool->backend->cfg->url, c->w->cfg->routes[c->req.route].name);
            proxy_drop_upstream(c);
            gw_conn_respond_error(c, 502, "upstream_response_too_large",
                                  "the upstream response is larger than this route buffers");
            return;
        } else {
            proxy_fail(c, u, GW_UERR_PROTOCOL, false);
            return;
        }
    } else if (!u->message_done) {
        /* A body that ends here (no byte left): let the parser see that. */
        llhttp_errno_t e = llhttp_execute(&u->parser, u->in + u->parsed, 0);
        if (e != HPE_OK && e != HPE_PAUSED) {
            proxy_fail(c, u, GW_UERR_PROTOCOL, false);
            return;
        }
    }
    if (u->message_done) {
        proxy_buffered_send(c, u);
        return;
    }
    proxy_read_more(u);
}

static void proxy_on_head(gw_conn_t *c, gw_upconn_t *u)
{
    gw_request_t *r = &c->req;
    gw_worker_t *w = c->w;
    gw_worker_upstream_t *wu = &w->ups[r->upstream];
    r->upstream_start_ns = u->start_ns;
    r->upstream_head_ns = gw_now_ns();
    uint64_t latency_ns = r->upstream_head_ns - r->upstream_start_ns;
    gw_histogram_observe(&w->metrics->upstream_latency[r->backend->cfg->gindex], latency_ns / 1000);
    gw_health_on_success(r->backend);
    proxy_report(c, r->backend, u, GW_LB_OK, u->parser.status_code, latency_ns);
    if (wu->cfg->hedge.enabled)
        gw_hedge_observe(&wu->hedge, latency_ns / 1000);
    /* A rough latency figure per backend for /status (last writer wins across workers). */
    uint64_t us = (r->upstream_head_ns - r->upstream_start_ns) / 1000;
    uint64_t old = GW_RELAXED_LOAD(r->backend->latency_ewma_us);
    GW_RELAXED_STORE(r->backend->latency_ewma_us, old ? (old * 7 + us) / 8 : us);
}

int gw_proxy_read_head(gw_upconn_t *u)
{
    for (;;) {
        llhttp_errno_t e = llhttp_execute(&u->parser, u->in + u->parsed, u->in_len - u->parsed);
        if (e == HPE_OK) {
            u->parsed = u->in_len;
            return GW_PROXY_HEAD_MORE;
        }
        if (e != HPE_PAUSED)
            return GW_PROXY_HEAD_BAD;
        u->parsed = (size_t)(llhttp_get_error_pos(&u->parser) - u->in);
        llhttp_resume(&u->parser);
        if (u->message_done) {
            /* The end of a 1xx interim response: go on with the final one. Its head was
             * relayed (or dropped) by the caller, so its fields and bytes are dropped and the
             * buffer is freed for what follows, however many 1xx come first. */
            u->message_done = false;
            u->nheaders = 0;
            u->reason = GW_SLICE(NULL, 0);
            memmove(u->in, u->in + u->parsed, u->in_len - u->parsed);
            u->in_len -= u->parsed;
            u->parsed = 0;
            continue;
        }
        int status = u->parser.status_code;
        return status >= 100 && status < 200 && status != 101 ? GW_PROXY_HEAD_INTERIM
                                                              : GW_PROXY_HEAD_FINAL;
    }
}

static void proxy_process_response(gw_conn_t *c, gw_upconn_t *u)
{
    gw_request_t *r = &c->req;
    gw_buf_t head = {0};
    bool send_head = false;
    while (!u->head_done) {
        int rh = gw_proxy_read_head(u);
        if (rh == GW_PROXY_HEAD_MORE) {
            if (u->in_len >= gw_worker_buf_size(c->w))
                proxy_fail(c, u, GW_UERR_PROTOCOL, false);
            else
                gw_upconn_read_start(u); /* it stops while a 1xx waits for the client */
            return;
        }
        if (rh == GW_PROXY_HEAD_BAD) {
            gw_log_warn("upstream %s: invalid response: %s", u->pool->backend->cfg->url,
                        u->head_error ? u->head_error : llhttp_get_error_reason(&u->parser));
            proxy_fail(c, u, GW_UERR_PROTOCOL, false);
            return;
        }
        proxy_settle(c, u);
        int status = u->parser.status_code;
        if (rh == GW_PROXY_HEAD_INTERIM) {
            int rc = proxy_relay_interim(c, u);
            if (rc < 0) {
                proxy_drop_upstream(c);
                gw_conn_close(c);
                return;
            }
            if (rc == 0) {
                /* The client is slow: gw_proxy_client_drained goes on with the rest. */
                gw_upconn_read_stop(u);
                uv_timer_stop(&u->timer);
                return;
            }
            /* Waiting for the final response starts again. */
            gw_upconn_arm(u, u->pool->ucfg->read_timeout_ms);
            continue;
        }
        if (status == 101 && !proxy_upgrade_matches(c, u)) {
            gw_log_warn("upstream %s: 101 for an upgrade the request did not offer",
                        u->pool->backend->cfg->url);
            proxy_fail(c, u, GW_UERR_PROTOCOL, false);
            return;
        }
        u->head_done = true;
        proxy_on_head(c, u);
        const gw_route_cfg_t *route = &c->w->cfg->routes[r->route];
        if (route->buffer_response && status != 101 &&
            !gw_http1_response_bodyless(status, r->head_request)) {
            u->buffering = true;
            u->close_delimited = !(u->parser.flags & (F_CHUNKED | F_CONTENT_LENGTH));
            gw_buf_init(&r->resp_body, &c->arena, 4096);
            if (!proxy_pin_head(c, u)) {
                proxy_fail(c, u, GW_UERR_PROTOCOL, false);
                return;
            }
            proxy_buffer_more(c, u);
            return;
        }
        int hb = gw_proxy_build_client_head(c, u, &head);
        if (hb < 0) {
            proxy_hook_failed(c);
            return;
        }
        if (hb == 0) {
            proxy_fail(c, u, GW_UERR_PROTOCOL, false);
            return;
        }
        send_head = true;
        r->response_started = true;
        if (status == 101) {
            u->state = GW_US_TUNNEL;
            uv_timer_stop(&u->timer);
        }
    }

    uv_buf_t bufs[4];
    unsigned nb = 0;
    if (send_head)
        bufs[nb++] = uv_buf_init(head.p, (unsigned)head.len);

    if (u->state == GW_US_TUNNEL) {
        if (u->parsed < u->in_len)
            bufs[nb++] = uv_buf_init(u->in + u->parsed, (unsigned)(u->in_len - u->parsed));
        u->parsed = u->in_len;
        gw_upconn_read_stop(u);
        int rc = gw_conn_write(c, bufs, nb, proxy_on_client_written);
        if (rc < 0) {
            gw_conn_close(c);
            return;
        }
        /* The tunnel starts with the 101; bytes the client already sent follow it. */
        gw_conn_start_tunnel(c);
        if (rc == 1 && c->state == GW_CS_TUNNEL)
            gw_proxy_client_drained(c);
        return;
    }

    uv_buf_t *body = NULL;
    unsigned nbody = 0;
    if (!u->message_done) {
        /* Runs even with no byte left: a bodyless response (HEAD, 204, 304) completes here. */
        size_t start = u->parsed;
        llhttp_errno_t e = llhttp_execute(&u->parser, u->in + start, u->in_len - start);
        size_t end;
        if (e == HPE_OK) {
            end = u->in_len;
        } else if (e == HPE_PAUSED) {
            end = (size_t)(llhttp_get_error_pos(&u->parser) - u->in);
        } else {
            gw_log_warn("upstream %s: invalid response body: %s", u->pool->backend->cfg->url,
                        llhttp_get_error_reason(&u->parser));
            proxy_count_error(c->w, r->backend, GW_UERR_PROTOCOL);
            proxy_drop_upstream(c);
            gw_conn_close(c);
            return;
        }
        u->parsed = end;
        if (u->rechunk && end > start) {
            int n = snprintf(u->chunk_line, sizeof u->chunk_line, "%zx\r\n", end - start);
            bufs[nb++] = uv_buf_init(u->chunk_line, (unsigned)n);
            bufs[nb++] = uv_buf_init(u->in + start, (unsigned)(end - start));
            bufs[nb++] = uv_buf_init((char *)"\r\n", 2);
        } else if (!u->dechunk && end > start) {
            bufs[nb++] = uv_buf_init(u->in + start, (unsigned)(end - start));
        }
    }
    if (u->message_done && u->parsed < u->in_len) {
        /* Bytes after the end of the response: the connection is out of step. */
        u->reusable = false;
        u->parsed = u->in_len;
    }
    if (u->dechunk && u->nbody_bufs) {
        /* Head (if any) then the de-chunked spans. */
        uint32_t total = u->nbody_bufs + nb;
        if (total > u->cap_body_bufs) {
            uv_buf_t *nbufs = realloc(u->body_bufs, total * sizeof *nbufs);
            if (!nbufs) {
                proxy_drop_upstream(c);
                gw_conn_close(c);
                return;
            }
            u->body_bufs = nbufs;
            u->cap_body_bufs = total;
        }
        memmove(u->body_bufs + nb, u->body_bufs, u->nbody_bufs * sizeof(uv_buf_t));
        for (unsigned i = 0; i < nb; i++)
            u->body_bufs[i] = bufs[i];
        body = u->body_bufs;
        nbody = total;
    } else {
        body = bufs;
        nbody = nb;
    }
    if (nbody == 0) {
        if (u->message_done) {
            proxy_finish(c, u);
            return;
        }
        gw_upconn_read_start(u);
        return;
    }
    int rc = gw_conn_write(c, body, nbody, proxy_on_client_written);
    if (rc == 1) {
        gw_proxy_client_drained(c);
    } else if (rc == 0) {
        /* The client is slower than the backend: stop reading it until the write is done. */
        gw_upconn_read_stop(u);
        uv_timer_stop(&u->timer);
    } else {
        proxy_drop_upstream(c);
        gw_conn_close(c);
    }
}

static void proxy_on_last_chunk_written(gw_conn_t *c, int status)
{
    GW_UNUSED(status);
    if (c->up)
        proxy_finish(c, c->up);
}

/* A re-chunked body ended (the backend closed): the last chunk, then the request is done. No
 * other client write is in flight: the backend is read only when the client has drained. */
static void proxy_last_chunk(gw_conn_t *c, gw_upconn_t *u)
{
    uv_buf_t last = uv_buf_init((char *)"0\r\n\r\n", 5);
    int rc = gw_conn_write(c, &last, 1, proxy_on_last_chunk_written);
    if (rc == 1) {
        proxy_finish(c, u);
    } else if (rc < 0) {
        proxy_drop_upstream(c);
        gw_conn_close(c);
    }
}

void gw_proxy_on_read(gw_upconn_t *u, ssize_t nread)
{
    gw_conn_t *c = u->conn;
    if (!c) {
        gw_upconn_close(u);
        return;
    }
    if (u->state == GW_US_TUNNEL) {
        if (nread < 0) {
            gw_conn_close(c);
            return;
        }
        uv_buf_t b = uv_buf_init(u->in, (unsigned)u->in_len);
        u->parsed = u->in_len;
        int rc = gw_conn_write(c, &b, 1, proxy_on_client_written);
        if (rc == 1)
            gw_proxy_client_drained(c);
        else if (rc == 0)
            gw_upconn_read_stop(u);
        else
            gw_conn_close(c);
        return;
    }
    if (nread < 0) {
        u->reusable = false;
        if (!u->head_done) {
            proxy_fail(c, u, u->got_bytes ? GW_UERR_PROTOCOL : GW_UERR_RESET, false);
            return;
        }
        if (u->close_delimited && nread == UV_EOF) {
            llhttp_finish(&u->parser);
            u->message_done = true;
            if (u->buffering)
                proxy_buffered_send(c, u);
            else if (u->rechunk)
                proxy_last_chunk(c, u);
            else
                proxy_finish(c, u);
            return;
        }
        /* The response was cut short: the client must not mistake it for a complete one. */
        proxy_count_error(c->w, c->req.backend, GW_UERR_RESET);
        proxy_drop_upstream(c);
        gw_conn_close(c);
        return;
    }
    u->got_bytes = true;
    if (!u->head_done)
        gw_upconn_arm(u, u->pool->ucfg->read_timeout_ms);
    if (u->buffering) {
        proxy_buffer_more(c, u);
        return;
    }
    proxy_process_response(c, u);
}

/* ---- tunnel (after 101) ---- */

void gw_proxy_tunnel_client_data(gw_conn_t *c)
{
    gw_upconn_t *u = c->up;
    if (!u || u->state != GW_US_TUNNEL) {
        gw_conn_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init(c->in + c->parsed, (unsigned)(c->in_len - c->parsed));
    c->parsed = c->in_len;
    c->body_wait = true;
    if (proxy_up_write(u, &b, 1, GW_UW_TUNNEL) != 0) {
        gw_conn_close(c);
        return;
    }
    if (c->body_wait && c->state == GW_CS_TUNNEL)
        gw_conn_pause_reading(c); /* the backend is slower than the client */
}
