/*
 * upstream: connections to backends and their per-worker keep-alive pools.
 *
 * Ownership: a gw_upconn_t belongs to its worker (linked in worker->upconns) from creation until
 * both of its handles have closed. While leased, `conn` points at the downstream connection whose
 * request it serves, and that connection's `up` (or `hedge`) points back; gw_proxy_* clears both
 * sides before the upconn is released or closed. An attempt that lost a hedge race stays leased
 * with `conn` NULL, still counted in flight, until its backend's answer, an error or the read
 * timeout reaches proxy.c, which closes it. An idle connection sits in its pool with reading on, so
 * a backend that closes it (or, wrongly, sends bytes) is noticed and the connection discarded
 * instead of being handed to the next request.
 */
#include <stdlib.h>

#include "log.h"
#include "worker.h"

static void upconn_on_close(uv_handle_t *h)
{
    gw_upconn_t *u = h->data;
    if (--u->pending_closes > 0)
        return;
    gw_list_remove(&u->all);
    if (u->in)
        gw_worker_buf_put(u->w, u->in);
    free(u->body_bufs);
    free(u);
}

void gw_upconn_release_inflight(gw_upconn_t *u)
{
    if (u->inflight) {
        GW_ATOMIC_ADD(u->pool->backend->inflight, (uint32_t)-1);
        u->inflight = false;
    }
}

void gw_upconn_close(gw_upconn_t *u)
{
    if (u->state == GW_US_CLOSING)
        return;
    gw_upconn_release_inflight(u);
    if (u->state == GW_US_IDLE) {
        gw_list_remove(&u->link);
        u->pool->nidle--;
    }
    u->state = GW_US_CLOSING;
    u->conn = NULL;
    u->pending_closes = 2;
    uv_close((uv_handle_t *)&u->tcp, upconn_on_close);
    uv_close((uv_handle_t *)&u->timer, upconn_on_close);
}

void gw_upconn_close_all(gw_worker_t *w)
{
    gw_link_t *l = w->upconns.next;
    while (l != &w->upconns) {
        gw_link_t *next = l->next;
        gw_upconn_close(GW_CONTAINER_OF(l, gw_upconn_t, all));
        l = next;
    }
}

static void upconn_on_timer(uv_timer_t *t)
{
    gw_upconn_t *u = t->data;
    if (u->state == GW_US_IDLE) {
        gw_upconn_close(u);
        return;
    }
    gw_proxy_on_timeout(u);
}

void gw_upconn_arm(gw_upconn_t *u, uint32_t ms)
{
    if (u->state == GW_US_CLOSING)
        return;
    if (ms == 0)
        uv_timer_stop(&u->timer);
    else
        uv_timer_start(&u->timer, upconn_on_timer, ms, 0);
}

static void upconn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    gw_upconn_t *u = h->data;
    size_t cap = gw_worker_buf_size(u->w);
    if (!u->in) {
        u->in = gw_worker_buf_get(u->w);
        u->in_len = u->parsed = 0;
    }
    *buf = uv_buf_init(u->in + u->in_len, (unsigned)(cap - u->in_len));
}

static void upconn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    gw_upconn_t *u = s->data;
    if (u->state == GW_US_CLOSING)
        return;
    if (u->state == GW_US_IDLE) {
        /* An idle connection must stay silent: EOF, an error or stray bytes all end it. */
        if (nread != 0)
            gw_upconn_close(u);
        return;
    }
    if (nread == 0)
        return;
    if (nread > 0)
        u->in_len += (size_t)nread;
    gw_proxy_on_read(u, nread);
}

int gw_upconn_read_start(gw_upconn_t *u)
{
    if (u->reading || u->state == GW_US_CLOSING)
        return 0;
    int rc = uv_read_start((uv_stream_t *)&u->tcp, upconn_alloc, upconn_on_read);
    if (rc == 0)
        u->reading = true;
    return rc;
}

void gw_upconn_read_stop(gw_upconn_t *u)
{
    if (!u->reading || u->state == GW_US_CLOSING)
        return;
    uv_read_stop((uv_stream_t *)&u->tcp);
    u->reading = false;
}

static void upconn_on_connect(uv_connect_t *req, int status)
{
    gw_upconn_t *u = req->data;
    if (u->state == GW_US_CLOSING)
        return; /* cancelled by a close; the close callbacks free it */
    gw_proxy_on_connect(u, status);
}

gw_upconn_t *gw_upconn_connect(gw_worker_t *w, gw_pool_t *pool)
{
    gw_upconn_t *u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    u->w = w;
    u->pool = pool;
    u->state = GW_US_CONNECTING;
    u->reusable = true;
    gw_list_init(&u->link);
    uv_tcp_init(&w->loop, &u->tcp);
    uv_timer_init(&w->loop, &u->timer);
    u->tcp.data = u;
    u->timer.data = u;
    u->connect_req.data = u;
    u->wreq.data = u;
    gw_list_push(&w->upconns, &u->all);
    uv_tcp_nodelay(&u->tcp, 1);
    const gw_backend_cfg_t *b = pool->backend->cfg;
    int rc = uv_tcp_connect(&u->connect_req, &u->tcp, (const struct sockaddr *)&b->sa,
                            upconn_on_connect);
    if (rc != 0) {
        gw_log_debug("connect %s: %s", b->url, uv_strerror(rc));
        gw_upconn_close(u);
        return NULL;
    }
    gw_upconn_arm(u, pool->ucfg->connect_timeout_ms);
    return u;
}

gw_upconn_t *gw_pool_lease(gw_pool_t *pool)
{
    if (gw_list_empty(&pool->idle))
        return NULL;
    gw_upconn_t *u = GW_CONTAINER_OF(pool->idle.next, gw_upconn_t, link);
    gw_list_remove(&u->link);
    pool->nidle--;
    uv_timer_stop(&u->timer);
    u->state = GW_US_ACTIVE;
    return u;
}

void gw_pool_release(gw_upconn_t *u)
{
    gw_pool_t *pool = u->pool;
    u->conn = NULL;
    /* A connection whose request write libuv has not called back yet cannot go back to the pool:
     * the next request would reuse its uv_write_t while libuv still holds it (the response can
     * be read in the same loop iteration in which the write completed; write callbacks only run
     * in the next one). The probe connections had this bug; see probe.c. */
    if (!u->reusable || u->state != GW_US_ACTIVE || pool->nidle >= pool->ucfg->keepalive_max_idle ||
        u->w->draining || u->in_len != u->parsed || u->write_pending ||
        !__atomic_load_n(&pool->backend->member, __ATOMIC_ACQUIRE)) {
        gw_upconn_close(u);
        return;
    }
    u->state = GW_US_IDLE;
    u->head_done = u->message_done = u->got_bytes = false;
    u->nbody_bufs = 0;
    if (u->in) {
        gw_worker_buf_put(u->w, u->in);
        u->in = NULL;
    }
    u->in_len = u->parsed = 0;
    gw_list_push(&pool->idle, &u->link);
    pool->nidle++;
    if (gw_upconn_read_start(u) != 0) {
        gw_upconn_close(u);
        return;
    }
    gw_upconn_arm(u, pool->ucfg->keepalive_idle_ms);
}
