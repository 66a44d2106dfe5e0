/*
 * probe: see probe.h.
 *
 * Ownership: a gw_probe_conn_t belongs to its worker (w->probe_conns[gindex]) until both of its
 * handles closed; the slot is cleared when the close begins, so the next probe to that backend
 * opens a fresh connection. A connection carries one probe at a time. Its reply is parsed into
 * the connection's own fixed buffers (a probe reply is small: a head and at most a short JSON
 * body), and a reply that does not fit is a failed probe. After a timeout the connection is closed,
 * since the late reply would otherwise be taken for the next probe's.
 */
#include "probe.h"

#include <cjson/cJSON.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "worker.h"

#define GW_PROBE_IN_MAX 4096
#define GW_PROBE_CONNECT_EXTRA_MS 1000

enum gw_probe_conn_state { PC_CONNECTING, PC_IDLE, PC_BUSY, PC_CLOSING };

typedef struct gw_probe_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t creq;
    uv_write_t wreq;
    gw_worker_t *w;
    gw_backend_t *b;
    enum gw_probe_conn_state state;
    bool send_on_connect;
    bool write_pending; /* wreq is with libuv until probe_on_write runs */
    uint32_t pending_closes;
    gw_probe_cb cb;
    void *arg;
    uint64_t sent_ns;
    uint32_t timeout_ms;
    char req[512];
    size_t req_len;
    char in[GW_PROBE_IN_MAX];
    size_t in_len;
    gw_probe_reply_t reply; /* its slices point into `in` */
} gw_probe_conn_t;

static llhttp_settings_t probe_settings;
static uv_once_t probe_once = UV_ONCE_INIT;

/* ---- signal parsing (pure) ---- */

static bool parse_u64(gw_slice_t s, uint64_t *out)
{
    int64_t v = gw_http1_parse_u64(s);
    if (v < 0)
        return false;
    *out = (uint64_t)v;
    return true;
}

bool gw_probe_parse_headers(const gw_header_t *h, size_t n, gw_probe_signals_t *out)
{
    bool have_rif = false, have_lat = false;
    uint64_t rif = 0, lat = 0;
    for (size_t i = 0; i < n; i++) {
        if (h[i].name.len == 13 && gw_slice_ieq(h[i].name, "x-prequal-rif"))
            have_rif = parse_u64(h[i].value, &rif) && rif <= UINT32_MAX;
        else if (h[i].name.len == 20 && gw_slice_ieq(h[i].name, "x-prequal-latency-us"))
            have_lat = parse_u64(h[i].value, &lat);
    }
    if (!have_rif || !have_lat)
        return false;
    out->found = true;
    out->rif = (uint32_t)rif;
    out->latency_us = lat;
    return true;
}

/* Reads a non-negative JSON number field; false when it is missing or not a finite number. */
static bool json_number(const cJSON *obj, const char *name, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > 1e15)
        return false;
    *out = v->valuedouble;
    return true;
}

bool gw_probe_parse_signals(const gw_header_t *headers, size_t nheaders, gw_slice_t body,
                            gw_probe_signals_t *out)
{
    out->found = false;
    if (gw_probe_parse_headers(headers, nheaders, out))
        return true;
    if (body.len == 0)
        return false;
    cJSON *root = cJSON_ParseWithLength(body.p, body.len);
    if (!root)
        return false;
    double rif, lat;
    bool ok = false;
    if (cJSON_IsObject(root)) {
        if (json_number(root, "rif", &rif) && json_number(root, "latency_ms", &lat)) {
            out->rif = rif > UINT32_MAX ? UINT32_MAX : (uint32_t)rif;
            out->latency_us = (uint64_t)(lat * 1000.0 + 0.5);
            ok = true;
        } else if (json_number(root, "in_flight_requests", &rif) &&
                   json_number(root, "rif_avg_latency", &lat) && lat <= 1e12) {
            /* Seconds, bounded like the other forms (at most 1e18 us): a larger figure would
             * not fit the microsecond count. */
            out->rif = rif > UINT32_MAX ? UINT32_MAX : (uint32_t)rif;
            out->latency_us = (uint64_t)(lat * 1e6 + 0.5);
            ok = true;
        }
    }
    cJSON_Delete(root);
    out->found = ok;
    return ok;
}

/* ---- the connection ---- */

static void probe_on_close(uv_handle_t *h)
{
    gw_probe_conn_t *pc = h->data;
    if (--pc->pending_closes == 0)
        free(pc);
}

/* Ends the current probe (if any) with `status`, then keeps or closes the connection. The
 * callback runs last, so it may send the next probe on this backend right away. */
static void probe_finish(gw_probe_conn_t *pc, enum gw_probe_status status, bool keep)
{
    gw_probe_cb cb = pc->cb;
    void *arg = pc->arg;
    gw_probe_result_t r = {.status = status};
    gw_worker_t *w = pc->w;
    gw_backend_t *b = pc->b;
    pc->cb = NULL;
    if (cb) {
        r.rtt_ns = gw_now_ns() - pc->sent_ns;
        r.recv_ms = uv_now(&w->loop);
        if (status == GW_PROBE_OK || status == GW_PROBE_NO_SIGNALS) {
            gw_probe_signals_t sig;
            if (gw_probe_reply_signals(&pc->reply, &sig)) {
                r.status = GW_PROBE_OK;
                r.sig = sig;
            } else {
                r.status = GW_PROBE_NO_SIGNALS;
            }
        }
        w->probes_in_flight--;
    }
    if (keep && pc->state != PC_CLOSING) {
        pc->state = PC_IDLE;
        uv_timer_stop(&pc->timer);
    } else if (pc->state != PC_CLOSING) {
        pc->state = PC_CLOSING;
        if (w->probe_conns[b->cfg->gindex] == pc)
            w->probe_conns[b->cfg->gindex] = NULL;
        pc->pending_closes = 2;
        uv_close((uv_handle_t *)&pc->tcp, probe_on_close);
        uv_close((uv_handle_t *)&pc->timer, probe_on_close);
    }
    if (cb)
        cb(arg, b, &r);
}

/* ---- reading a reply (pure) ---- */

static int on_p_header_field(llhttp_t *p, const char *at, size_t n)
{
    gw_probe_reply_t *r = p->data;
    if (r->in_field) {
        r->headers[r->nheaders - 1].name.len += n;
        return 0;
    }
    if (r->nheaders == GW_PROBE_HEADERS_MAX) {
        r->skip_field = true; /* ignore the rest: signals come early in practice */
        return 0;
    }
    r->headers[r->nheaders].name = GW_SLICE(at, n);
    r->headers[r->nheaders].value = GW_SLICE(NULL, 0);
    r->nheaders++;
    r->in_field = true;
    return 0;
}

static int on_p_header_value(llhttp_t *p, const char *at, size_t n)
{
    gw_probe_reply_t *r = p->data;
    r->in_field = false;
    if (r->nheaders == 0 || r->skip_field)
        return 0;
    gw_header_t *h = &r->headers[r->nheaders - 1];
    if (!h->value.p)
        h->value.p = at;
    h->value.len += n;
    return 0;
}

static int on_p_header_value_complete(llhttp_t *p)
{
    gw_probe_reply_t *r = p->data;
    r->in_field = false;
    return 0;
}

static int on_p_body(llhttp_t *p, const char *at, size_t n)
{
    gw_probe_reply_t *r = p->data;
    if (r->body_len + n > sizeof r->body) {
        r->body_overflow = true;
        return 0;
    }
    memcpy(r->body + r->body_len, at, n);
    r->body_len += n;
    return 0;
}

static int on_p_message_complete(llhttp_t *p)
{
    gw_probe_reply_t *r = p->data;
    r->message_done = true;
    return HPE_PAUSED;
}

static void probe_settings_init(void)
{
    llhttp_settings_init(&probe_settings);
    probe_settings.on_header_field = on_p_header_field;
    probe_settings.on_header_value = on_p_header_value;
    probe_settings.on_header_value_complete = on_p_header_value_complete;
    probe_settings.on_body = on_p_body;
    probe_settings.on_message_complete = on_p_message_complete;
}

void gw_probe_reply_init(gw_probe_reply_t *r)
{
    uv_once(&probe_once, probe_settings_init);
    r->message_done = r->in_field = r->skip_field = r->body_overflow = r->keep = false;
    r->nheaders = 0;
    r->body_len = 0;
    llhttp_init(&r->parser, HTTP_RESPONSE, &probe_settings);
    r->parser.data = r;
}

int gw_probe_reply_feed(gw_probe_reply_t *r, const char *p, size_t n)
{
    llhttp_errno_t e = llhttp_execute(&r->parser, p, n);
    if (e == HPE_PAUSED && r->message_done) {
        r->keep = llhttp_get_error_pos(&r->parser) == p + n && llhttp_should_keep_alive(&r->parser);
        return GW_PROBE_REPLY_DONE;
    }
    return e == HPE_OK ? GW_PROBE_REPLY_MORE : GW_PROBE_REPLY_BAD;
}

bool gw_probe_reply_signals(const gw_probe_reply_t *r, gw_probe_signals_t *out)
{
    gw_slice_t body = GW_SLICE(r->body, r->body_overflow ? 0 : r->body_len);
    return gw_probe_parse_signals(r->headers, r->nheaders, body, out) &&
           r->parser.status_code < 300;
}

/* ---- the connection's I/O ---- */

static void probe_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    gw_probe_conn_t *pc = h->data;
    *buf = uv_buf_init(pc->in + pc->in_len, (unsigned)(sizeof pc->in - pc->in_len));
}

static void probe_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    gw_probe_conn_t *pc = s->data;
    if (nread == 0 || pc->state == PC_CLOSING)
        return;
    if (nread < 0 || pc->state != PC_BUSY) {
        /* EOF or an error; or bytes nobody asked for (out of step): either way it is done. */
        probe_finish(pc, GW_PROBE_FAILED, false);
        return;
    }
    size_t start = pc->in_len;
    pc->in_len += (size_t)nread;
    int rc = gw_probe_reply_feed(&pc->reply, pc->in + start, (size_t)nread);
    if (rc == GW_PROBE_REPLY_DONE) {
        /* NO_SIGNALS is refined from the reply in probe_finish. */
        probe_finish(pc, GW_PROBE_NO_SIGNALS, pc->reply.keep);
        return;
    }
    if (rc == GW_PROBE_REPLY_BAD || pc->in_len == sizeof pc->in) {
        probe_finish(pc, GW_PROBE_FAILED, false);
        return;
    }
}

static void probe_on_timer(uv_timer_t *t)
{
    gw_probe_conn_t *pc = t->data;
    probe_finish(pc, GW_PROBE_TIMEOUT, false);
}

static void probe_on_write(uv_write_t *req, int status)
{
    gw_probe_conn_t *pc = req->data;
    pc->write_pending = false;
    if (status < 0 && pc->state == PC_BUSY)
        probe_finish(pc, GW_PROBE_FAILED, false);
}

/* Writes the probe request on a connected, idle connection. */
static int probe_write(gw_probe_conn_t *pc)
{
    pc->state = PC_BUSY;
    pc->in_len = 0;
    gw_probe_reply_init(&pc->reply);
    uv_buf_t b = uv_buf_init(pc->req, (unsigned)pc->req_len);
    int rc = uv_write(&pc->wreq, (uv_stream_t *)&pc->tcp, &b, 1, probe_on_write);
    pc->write_pending = rc == 0;
    return rc;
}

static void probe_on_connect(uv_connect_t *req, int status)
{
    gw_probe_conn_t *pc = req->data;
    if (pc->state == PC_CLOSING)
        return;
    if (status < 0) {
        probe_finish(pc, GW_PROBE_FAILED, false);
        return;
    }
    uv_tcp_nodelay(&pc->tcp, 1);
    if (uv_read_start((uv_stream_t *)&pc->tcp, probe_alloc, probe_on_read) != 0 ||
        probe_write(pc) != 0) {
        probe_finish(pc, GW_PROBE_FAILED, false);
        return;
    }
    /* The connect is done: the probe itself now gets the ordinary timeout. */
    uv_timer_start(&pc->timer, probe_on_timer, pc->timeout_ms, 0);
}

bool gw_probe_busy(const gw_worker_t *w, const gw_backend_t *b)
{
    const gw_probe_conn_t *pc = w->probe_conns[b->cfg->gindex];
    /* The reply may be read before libuv ran the write callback of its request: under load
     * uv__io_poll drains several epoll batches in one loop iteration, and write callbacks only
     * run in the next one. Reusing the uv_write_t then would corrupt libuv's queue of completed
     * writes, so such a connection stays busy until its callback ran. */
    return pc && (pc->state == PC_BUSY || pc->state == PC_CONNECTING || pc->write_pending);
}

int gw_probe_send(gw_worker_t *w, gw_backend_t *b, const char *path, uint32_t timeout_ms,
                  gw_probe_cb cb, void *arg)
{
    gw_probe_conn_t *pc = w->probe_conns[b->cfg->gindex];
    if (pc && (pc->state != PC_IDLE || pc->write_pending))
        return UV_EBUSY;
    bool fresh = pc == NULL;
    if (fresh) {
        pc = calloc(1, sizeof *pc);
        if (!pc)
            return UV_ENOMEM;
        pc->w = w;
        pc->b = b;
        uv_tcp_init(&w->loop, &pc->tcp);
        uv_timer_init(&w->loop, &pc->timer);
        pc->tcp.data = pc->timer.data = pc->creq.data = pc->wreq.data = pc;
        int n = snprintf(pc->req, sizeof pc->req,
                         "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: prequal-gw\r\n\r\n", path,
                         b->cfg->authority);
        if (n < 0 || (size_t)n >= sizeof pc->req) {
            pc->pending_closes = 2;
            uv_close((uv_handle_t *)&pc->tcp, probe_on_close);
            uv_close((uv_handle_t *)&pc->timer, probe_on_close);
            return UV_EINVAL;
        }
        pc->req_len = (size_t)n;
        pc->state = PC_CONNECTING;
        int rc = uv_tcp_connect(&pc->creq, &pc->tcp, (const struct sockaddr *)&b->cfg->sa, probe_on_connect);
        if (rc != 0) {
            pc->state = PC_CLOSING;
            pc->pending_closes = 2;
            uv_close((uv_handle_t *)&pc->tcp, probe_on_close);
            uv_close((uv_handle_t *)&pc->timer, probe_on_close);
            return rc;
        }
        w->probe_conns[b->cfg->gindex] = pc;
    }
    pc->cb = cb;
    pc->arg = arg;
    pc->timeout_ms = timeout_ms;
    pc->sent_ns = gw_now_ns();
    w->probes_in_flight++;
    if (fresh) {
        uv_timer_start(&pc->timer, probe_on_timer, timeout_ms + GW_PROBE_CONNECT_EXTRA_MS, 0);
        return 0;
    }
    int rc = probe_write(pc);
    if (rc != 0) {
        /* The callback must not run: undo and drop the connection. */
        pc->cb = NULL;
        w->probes_in_flight--;
        probe_finish(pc, GW_PROBE_FAILED, false);
        return rc;
    }
    uv_timer_start(&pc->timer, probe_on_timer, timeout_ms, 0);
    return 0;
}

void gw_probe_close_backend(gw_worker_t *w, const gw_backend_t *b)
{
    gw_probe_conn_t *pc = w->probe_conns[b->cfg->gindex];
    if (pc)
        probe_finish(pc, GW_PROBE_FAILED, false);
}

void gw_probe_close_all(gw_worker_t *w)
{
    for (size_t i = 0; i < w->cfg->nbackends_total; i++) {
        gw_probe_conn_t *pc = w->probe_conns[i];
        if (pc)
            probe_finish(pc, GW_PROBE_FAILED, false);
    }
}
