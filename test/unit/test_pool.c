/*
 * Unit tests for the upstream keep-alive pool (core/upstream.c) on a real loop with real loopback
 * sockets: a small test server accepts the connections, and the tests lease, release, expire and
 * break them. Every test ends with the loop closing with no handle left.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "worker.h"

typedef struct test_env {
    uv_loop_t *loop;
    uv_tcp_t server;
    uv_tcp_t peers[8]; /* the server side of accepted connections */
    int npeers;
    gw_config_t cfg;
    gw_upstream_cfg_t ucfg;
    gw_backend_cfg_t bcfg;
    gw_backend_t backend;
    gw_worker_t w;
    gw_pool_t pool;
} test_env_t;

static void on_peer_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    free(b->base);
}

static void peer_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    *b = uv_buf_init(malloc(s), (unsigned)s);
}

static void on_accept(uv_stream_t *server, int status)
{
    test_env_t *e = server->data;
    assert_int_equal(status, 0);
    uv_tcp_t *p = &e->peers[e->npeers++];
    uv_tcp_init(e->loop, p);
    assert_int_equal(uv_accept(server, (uv_stream_t *)p), 0);
    uv_read_start((uv_stream_t *)p, peer_alloc, on_peer_read);
}

static void run_until(test_env_t *e, bool (*cond)(test_env_t *), int max_ms)
{
    uint64_t end = uv_hrtime() + (uint64_t)max_ms * 1000000;
    while (!cond(e) && uv_hrtime() < end)
        uv_run(e->loop, UV_RUN_NOWAIT);
    assert_true(cond(e));
}

static int setup(void **state)
{
    test_env_t *e = calloc(1, sizeof *e);
    e->loop = &e->w.loop;
    uv_loop_init(e->loop);
    uv_tcp_init(e->loop, &e->server);
    e->server.data = e;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_bind(&e->server, (struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&e->server, 16, on_accept), 0);
    int len = sizeof e->bcfg.sa;
    uv_tcp_getsockname(&e->server, (struct sockaddr *)&e->bcfg.sa, &len);
    e->bcfg.salen = (socklen_t)len;
    e->bcfg.url = "http://127.0.0.1";
    e->ucfg.connect_timeout_ms = 1000;
    e->ucfg.keepalive_max_idle = 2;
    e->ucfg.keepalive_idle_ms = 60000;
    e->cfg.limits.max_header_bytes = 8192;
    e->backend.cfg = &e->bcfg;
    e->w.cfg = &e->cfg;
    e->w.free_bufs = calloc(64, sizeof(char *));
    gw_list_init(&e->w.conns);
    gw_list_init(&e->w.upconns);
    e->pool.backend = &e->backend;
    e->backend.member = 1;
    e->pool.ucfg = &e->ucfg;
    gw_list_init(&e->pool.idle);
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    test_env_t *e = *state;
    gw_upconn_close_all(&e->w);
    for (int i = 0; i < e->npeers; i++)
        if (!uv_is_closing((uv_handle_t *)&e->peers[i]))
            uv_close((uv_handle_t *)&e->peers[i], NULL);
    uv_close((uv_handle_t *)&e->server, NULL);
    uv_run(e->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(e->loop), 0); /* every handle closed */
    for (uint32_t i = 0; i < e->w.nfree_bufs; i++)
        free(e->w.free_bufs[i]);
    free(e->w.free_bufs);
    free(e);
    return 0;
}

/* A connected upstream connection, built the way proxy.c gets one: connect, then lease state. */
static void on_test_connect(uv_connect_t *req, int status)
{
    gw_upconn_t *u = req->data;
    assert_int_equal(status, 0);
    u->state = GW_US_ACTIVE;
}

static bool is_active(test_env_t *e)
{
    gw_upconn_t *u = GW_CONTAINER_OF(e->w.upconns.next, gw_upconn_t, all);
    return !gw_list_empty(&e->w.upconns) && u->state == GW_US_ACTIVE && e->npeers > 0;
}

static gw_upconn_t *connect_one(test_env_t *e)
{
    gw_upconn_t *u = calloc(1, sizeof *u);
    u->w = &e->w;
    u->pool = &e->pool;
    u->state = GW_US_CONNECTING;
    u->reusable = true;
    gw_list_init(&u->link);
    uv_tcp_init(e->loop, &u->tcp);
    uv_timer_init(e->loop, &u->timer);
    u->tcp.data = u->timer.data = u->connect_req.data = u;
    gw_list_push(&e->w.upconns, &u->all);
    int before = e->npeers;
    assert_int_equal(uv_tcp_connect(&u->connect_req, &u->tcp, (struct sockaddr *)&e->bcfg.sa, on_test_connect), 0);
    uint64_t end = uv_hrtime() + 2000000000ULL;
    while ((u->state != GW_US_ACTIVE || e->npeers == before) && uv_hrtime() < end)
        uv_run(e->loop, UV_RUN_NOWAIT);
    assert_int_equal(u->state, GW_US_ACTIVE);
    return u;
}

static size_t count_upconns(test_env_t *e)
{
    size_t n = 0;
    for (gw_link_t *l = e->w.upconns.next; l != &e->w.upconns; l = l->next)
        n++;
    return n;
}

static bool pool_empty(test_env_t *e)
{
    return e->pool.nidle == 0;
}

static bool no_upconns(test_env_t *e)
{
    return gw_list_empty(&e->w.upconns);
}

static void test_release_then_lease_reuses(void **state)
{
    test_env_t *e = *state;
    assert_null(gw_pool_lease(&e->pool));
    gw_upconn_t *u = connect_one(e);
    gw_pool_release(u);
    assert_int_equal(e->pool.nidle, 1);
    assert_int_equal(u->state, GW_US_IDLE);
    assert_true(u->reading); /* idle connections watch for the backend closing */
    gw_upconn_t *again = gw_pool_lease(&e->pool);
    assert_ptr_equal(again, u);
    assert_int_equal(again->state, GW_US_ACTIVE);
    assert_int_equal(e->pool.nidle, 0);
    assert_null(gw_pool_lease(&e->pool));
    gw_pool_release(again);
    assert_int_equal(e->pool.nidle, 1);
    GW_UNUSED(is_active);
}

static void test_not_reusable_is_closed(void **state)
{
    test_env_t *e = *state;
    gw_upconn_t *u = connect_one(e);
    u->reusable = false;
    gw_pool_release(u);
    assert_int_equal(e->pool.nidle, 0);
    run_until(e, no_upconns, 2000); /* freed after its close callbacks */
}

static void test_unparsed_bytes_make_it_unusable(void **state)
{
    test_env_t *e = *state;
    gw_upconn_t *u = connect_one(e);
    u->in = gw_worker_buf_get(&e->w);
    u->in_len = 10;
    u->parsed = 4; /* the backend sent more than its response */
    gw_pool_release(u);
    assert_int_equal(e->pool.nidle, 0);
    run_until(e, no_upconns, 2000);
}

/* The response was read before libuv ran the callback of the request's write: pooling it would
 * let the next request reuse a uv_write_t libuv still holds. */
static void test_pending_write_is_not_pooled(void **state)
{
    test_env_t *e = *state;
    gw_upconn_t *u = connect_one(e);
    u->write_pending = true;
    gw_pool_release(u);
    assert_int_equal(e->pool.nidle, 0);
    run_until(e, no_upconns, 2000);
}

static void test_max_idle(void **state)
{
    test_env_t *e = *state;
    gw_upconn_t *a = connect_one(e), *b = connect_one(e), *c = connect_one(e);
    gw_pool_release(a);
    gw_pool_release(b);
    gw_pool_release(c); /* max_idle = 2: the third is closed */
    assert_int_equal(e->pool.nidle, 2);
    uv_run(e->loop, UV_RUN_NOWAIT);
    uv_run(e->loop, UV_RUN_NOWAIT);
    assert_int_equal(count_upconns(e), 2);
    /* Most recently used first. */
    assert_ptr_equal(gw_pool_lease(&e->pool), b);
    assert_ptr_equal(gw_pool_lease(&e->pool), a);
    gw_pool_release(a);
    gw_pool_release(b);
}

static void test_backend_close_removes_idle(void **state)
{
    test_env_t *e = *state;
    gw_upconn_t *u = connect_one(e);
    gw_pool_release(u);
    assert_int_equal(e->pool.nidle, 1);
    uv_close((uv_handle_t *)&e->peers[e->npeers - 1], NULL); /* the backend closes it */
    run_until(e, pool_empty, 2000);
    run_until(e, no_upconns, 2000);
}

static void write_done(uv_write_t *req, int status)
{
    free(req);
}

static void test_stray_bytes_close_idle(void **state)
{
    test_env_t *e = *state;
    gw_upconn_t *u = connect_one(e);
    gw_pool_release(u);
    uv_write_t *req = malloc(sizeof *req);
    uv_buf_t b = uv_buf_init("HTTP/1.1 200 OK\r\n\r\n", 19);
    uv_write(req, (uv_stream_t *)&e->peers[e->npeers - 1], &b, 1, write_done);
    run_until(e, pool_empty, 2000);
    run_until(e, no_upconns, 2000);
}

static void test_idle_timeout(void **state)
{
    test_env_t *e = *state;
    e->ucfg.keepalive_idle_ms = 30;
    gw_upconn_t *u = connect_one(e);
    gw_pool_release(u);
    assert_int_equal(e->pool.nidle, 1);
    run_until(e, pool_empty, 2000);
    run_until(e, no_upconns, 2000);
}

static void test_draining_worker_keeps_nothing(void **state)
{
    test_env_t *e = *state;
    gw_upconn_t *u = connect_one(e);
    e->w.draining = true;
    gw_pool_release(u);
    assert_int_equal(e->pool.nidle, 0);
    run_until(e, no_upconns, 2000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_release_then_lease_reuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_write_is_not_pooled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_reusable_is_closed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unparsed_bytes_make_it_unusable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backend_close_removes_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stray_bytes_close_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_draining_worker_keeps_nothing, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
