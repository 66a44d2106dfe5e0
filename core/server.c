/*
 * server: workers and their lifecycle (see server.h and worker.h).
 *
 * Threads: the main thread initialises each worker's loop, binds its listeners (or takes over
 * those of the server it replaces, on a reload) and creates its handles before the thread
 * starts; from then on only the worker touches them. The main thread talks to a worker only
 * through `wakeup` (uv_async_send) and two atomics: `command` (drain, stop) and
 * `membership_gen` (the registry changed some backend's `member` flag; the worker rebuilds its
 * view and acknowledges in its own `membership_acked`). A worker reports that it finished
 * through the server's `done` async on the main loop.
 *
 * Shutdown of a worker: close the listeners, give idle keep-alive connections a short grace
 * (gw_conn_drain_all), let the others finish their current response (they close after it),
 * force-close whatever is left when timeouts.drain_ms expires, then close every remaining handle
 * so the loop ends and uv_loop_close succeeds.
 *
 * Memory after a burst. A worker keeps up to GW_FREE_BUFS_MAX input buffers and its arena cache's
 * blocks for the next connections, and the allocator keeps freed memory in its per-thread heaps,
 * where live allocations of the survivors pin it: after thousands of connections closed, RSS
 * stays near its peak although nothing uses it. So when the connections a worker holds have
 * fallen GW_TRIM_DROP below their peak, a one-shot timer (GW_TRIM_DELAY_MS later, once the burst
 * is over) cuts the caches back to a few entries and asks the allocator to return its free pages.
 * That runs once per burst, never per request.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "health.h"
#include "lb.h"
#include "log.h"
#include "lua_bridge.h"
#include "probe.h"
#include "worker.h"

enum { GW_CMD_NONE = 0, GW_CMD_DRAIN = 1, GW_CMD_STOP = 2 };

#define GW_FREE_BUFS_MAX 64
/* See "Memory after a burst" above. */
#define GW_TRIM_DROP 256
#define GW_TRIM_DELAY_MS 1000
#define GW_TRIM_KEEP_BUFS 8
#define GW_TRIM_KEEP_BLOCKS 32

struct gw_server {
    const gw_config_t *cfg;
    const gw_server_t *inherit; /* during start only: the running server of a reload */
    uv_loop_t *main_loop;
    uv_async_t done;
    uv_timer_t health_timer; /* re-admits ejected backends */
    void (*on_stopped)(void *);
    void *arg;
    gw_backend_t *const *backends; /* the registry's table, by gindex */
    uint64_t membership_gen;       /* the last announced membership change (atomic) */
    gw_metrics_shard_t **shards;
    gw_worker_t *workers;
    size_t nworkers;
    size_t nstarted;
    int command;
    int finished; /* workers whose loop ended */
    bool stopped_reported;
    int pending_closes; /* main-loop handles still closing after the workers finished */
};

uint64_t gw_now_ns(void)
{
    return uv_hrtime();
}

size_t gw_worker_buf_size(const gw_worker_t *w)
{
    size_t need = (size_t)w->cfg->limits.max_header_bytes + 16384;
    return need < 65536 ? 65536 : need;
}

char *gw_worker_buf_get(gw_worker_t *w)
{
    if (w->nfree_bufs)
        return w->free_bufs[--w->nfree_bufs];
    char *b = malloc(gw_worker_buf_size(w));
    if (!b)
        abort(); /* a fixed-size control buffer: treated like any small allocation */
    return b;
}

void gw_worker_buf_put(gw_worker_t *w, char *buf)
{
    if (w->nfree_bufs < GW_FREE_BUFS_MAX && !w->draining)
        w->free_bufs[w->nfree_bufs++] = buf;
    else
        free(buf);
}

static void worker_on_handle_closed(uv_handle_t *h)
{
    GW_UNUSED(h);
}

static void worker_close_listeners(gw_worker_t *w)
{
    for (size_t i = 0; i < w->nlisteners; i++)
        if (!uv_is_closing((uv_handle_t *)&w->listeners[i]))
            uv_close((uv_handle_t *)&w->listeners[i], worker_on_handle_closed);
}

/* Closes the worker's remaining handles once no connection is left; the loop then ends. */
static void worker_maybe_finish(gw_worker_t *w)
{
    if (!w->draining || w->nconns > 0 || w->finishing)
        return;
    w->finishing = true;
    for (size_t u = 0; u < w->cfg->nupstreams; u++)
        if (w->ups[u].lb->stop)
            w->ups[u].lb->stop(w->ups[u].lb_state);
    worker_close_listeners(w);
    gw_upconn_close_all(w);
    gw_probe_close_all(w);
    uv_close((uv_handle_t *)&w->drain_timer, worker_on_handle_closed);
    uv_close((uv_handle_t *)&w->trim_timer, worker_on_handle_closed);
    uv_close((uv_handle_t *)&w->wakeup, worker_on_handle_closed);
}

/* A burst of connections is over: give back what only it needed. */
static void worker_on_trim(uv_timer_t *t)
{
    gw_worker_t *w = t->data;
    while (w->nfree_bufs > GW_TRIM_KEEP_BUFS)
        free(w->free_bufs[--w->nfree_bufs]);
    gw_arena_cache_trim(&w->arena_cache, GW_TRIM_KEEP_BLOCKS);
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    w->conns_peak = w->nconns;
}

void gw_worker_conn_closed(gw_worker_t *w)
{
    /* nconns only grows at accept, so the largest count seen here before a close is the peak. */
    if (w->nconns + 1 > w->conns_peak)
        w->conns_peak = w->nconns + 1;
    if (w->conns_peak - w->nconns >= GW_TRIM_DROP && !w->draining &&
        !uv_is_active((uv_handle_t *)&w->trim_timer))
        uv_timer_start(&w->trim_timer, worker_on_trim, GW_TRIM_DELAY_MS, 0);
    worker_maybe_finish(w);
}

static void worker_on_drain_timeout(uv_timer_t *t)
{
    gw_worker_t *w = t->data;
    if (w->nconns)
        gw_log_warn("drain timeout: closing %u connection(s)", w->nconns);
    gw_conn_close_all(w);
}

/* Closes what this worker keeps open to a backend that left: idle pooled connections and the
 * probe connection. Leased connections finish their request. */
static void worker_drop_backend(gw_worker_t *w, gw_backend_t *b)
{
    gw_pool_t *pool = &w->pools[b->cfg->gindex];
    while (!gw_list_empty(&pool->idle))
        gw_upconn_close(GW_CONTAINER_OF(pool->idle.next, gw_upconn_t, link));
    gw_probe_close_backend(w, b);
}

/* Recomputes an upstream's absent set from the backends' member flags. Returns true when it
 * changed, or when a member's weight or meta did. */
static bool worker_upstream_membership(gw_worker_t *w, gw_worker_upstream_t *wu)
{
    bool changed = false;
    uint32_t members = 0;
    uint64_t revisions = 0;
    wu->n_active = 0;
    for (size_t k = 0; k < wu->n; k++) {
        gw_backend_t *b = wu->backends[k];
        bool member = __atomic_load_n(&b->member, __ATOMIC_ACQUIRE) != 0;
        revisions += __atomic_load_n(&b->revision, __ATOMIC_ACQUIRE);
        bool was = !((wu->absent[k / 64] >> (k % 64)) & 1);
        members += member;
        if (member)
            wu->n_active = k + 1;
        if (member == was)
            continue;
        changed = true;
        wu->absent[k / 64] ^= (uint64_t)1 << (k % 64);
        if (!member && w->loop_ready)
            worker_drop_backend(w, b);
    }
    wu->nmembers = members;
    changed |= revisions != wu->revisions;
    wu->revisions = revisions;
    return changed;
}

/* The context of a membership call to upstream u's strategy: every slot, the absent ones in
 * ctx.tried. */
static gw_lb_ctx_t worker_lb_ctx(gw_worker_t *w, size_t u)
{
    gw_worker_upstream_t *wu = &w->ups[u];
    return (gw_lb_ctx_t){.backends = wu->backends,
                         .n = wu->n,
                         .tried = wu->absent,
                         .rng = &w->rng,
                         .now_ms = uv_now(&w->loop),
                         .worker = w,
                         .upstream = (uint32_t)u};
}

/* Applies the latest membership announcement, then acknowledges it. */
static void worker_apply_membership(gw_worker_t *w)
{
    uint64_t gen = __atomic_load_n(&w->server->membership_gen, __ATOMIC_ACQUIRE);
    if (gen == __atomic_load_n(&w->membership_acked, __ATOMIC_RELAXED))
        return;
    for (size_t u = 0; u < w->cfg->nupstreams; u++) {
        gw_worker_upstream_t *wu = &w->ups[u];
        if (worker_upstream_membership(w, wu) && wu->lb->on_backends_changed) {
            gw_lb_ctx_t ctx = worker_lb_ctx(w, u);
            wu->lb->on_backends_changed(wu->lb_state, &ctx);
        }
    }
    __atomic_store_n(&w->membership_acked, gen, __ATOMIC_RELEASE);
}

static void worker_on_wakeup(uv_async_t *a)
{
    gw_worker_t *w = a->data;
    if (!w->finishing)
        worker_apply_membership(w);
    int cmd = __atomic_load_n(&w->server->command, __ATOMIC_ACQUIRE);
    if (cmd == GW_CMD_NONE || w->finishing)
        return;
    if (!w->draining) {
        w->draining = true;
        w->drain_since_ms = uv_now(&w->loop);
        worker_close_listeners(w);
        gw_conn_drain_all(w);
        uv_timer_start(&w->drain_timer, worker_on_drain_timeout, w->cfg->timeouts.drain_ms, 0);
    }
    if (cmd == GW_CMD_STOP)
        gw_conn_close_all(w);
    worker_maybe_finish(w);
}

static void worker_on_connection(uv_stream_t *server, int status)
{
    gw_worker_t *w = server->data;
    if (status < 0) {
        gw_log_warn("accept: %s", uv_strerror(status));
        return;
    }
    gw_conn_accept(w, server);
}

static void worker_thread(void *arg)
{
    gw_worker_t *w = arg;
    gw_server_t *s = w->server;
    gw_log_set_thread_id(w->id);
    /* Strategies that bind to the worker (Lua strategies run their init) do it in this thread,
     * before the first request. */
    for (size_t u = 0; u < w->cfg->nupstreams; u++)
        if (w->ups[u].lb->start) {
            gw_lb_ctx_t ctx = worker_lb_ctx(w, u);
            w->ups[u].lb->start(w->ups[u].lb_state, &ctx);
        }
    worker_apply_membership(w);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    __atomic_store_n(&w->loop_done, true, __ATOMIC_RELEASE);
    int rc = uv_loop_close(&w->loop);
    if (rc != 0)
        gw_log_err("worker %d: loop closed with handles open: %s", w->id, uv_strerror(rc));
    __atomic_add_fetch(&s->finished, 1, __ATOMIC_ACQ_REL);
    uv_async_send(&s->done);
}

static void server_on_health_tick(uv_timer_t *t)
{
    gw_server_t *s = t->data;
    size_t k = gw_health_tick(s->backends, s->cfg->nbackends_total, uv_now(t->loop));
    if (k)
        gw_log_info("%zu ejected backend(s) re-admitted", k);
}

/* The server's handles on the main loop are closed: it may be freed from on_stopped. */
static void server_on_closed(uv_handle_t *h)
{
    gw_server_t *s = h->data;
    if (--s->pending_closes == 0 && s->on_stopped)
        s->on_stopped(s->arg);
}

static void server_on_done(uv_async_t *a)
{
    gw_server_t *s = a->data;
    if (s->stopped_reported ||
        (size_t)__atomic_load_n(&s->finished, __ATOMIC_ACQUIRE) < s->nstarted)
        return;
    s->stopped_reported = true;
    s->pending_closes = 2;
    uv_close((uv_handle_t *)&s->done, server_on_closed);
    uv_close((uv_handle_t *)&s->health_timer, server_on_closed);
}

/* Creates a listening socket with SO_REUSEPORT so every worker gets its own accept queue and the
 * kernel spreads connections over them. */
static int server_bind(const gw_addr_t *a, int *fd_out)
{
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (a->sa.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&a->sa, a->salen) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    *fd_out = fd;
    return 0;
}

/* Duplicates of the listening sockets for `addr` that worker `id` of a server with `n` workers
 * takes over from `old`: those of old workers id, id + n, id + 2n, ... so that every old socket
 * of an address the new config still serves stays open (closing one would reset the connections
 * waiting in its accept queue). With fds NULL, only counts them. Read on the main thread while
 * those workers run: a handle's fd does not change until it is closed, and `old` is told to
 * drain only after the new server started. */
static size_t server_inherit(const gw_server_t *old, size_t id, size_t n, const gw_addr_t *addr,
                             int *fds)
{
    size_t k = 0;
    for (size_t j = id; old && j < old->nworkers; j += n) {
        const gw_worker_t *ow = &old->workers[j];
        if (!ow->thread_started)
            continue;
        for (size_t l = 0; l < ow->nlisteners; l++) {
            uv_os_fd_t ofd;
            if (!gw_sockaddr_equal(&old->cfg->listen[ow->listener_addr[l]].sa,
                                   old->cfg->listen[ow->listener_addr[l]].salen, &addr->sa, addr->salen) ||
                uv_fileno((const uv_handle_t *)&ow->listeners[l], &ofd) != 0)
                continue;
            if (fds) {
                fds[k] = fcntl(ofd, F_DUPFD_CLOEXEC, 0);
                if (fds[k] < 0)
                    continue;
            }
            k++;
        }
    }
    return k;
}

/* Opens fd as worker w's next listener for cfg->listen[i]. Returns 0 or a libuv error. */
static int worker_listen(gw_worker_t *w, size_t i, int fd)
{
    uv_tcp_t *l = &w->listeners[w->nlisteners];
    uv_tcp_init(&w->loop, l);
    l->data = w;
    w->listener_addr[w->nlisteners++] = (uint32_t)i;
    int rc = uv_tcp_open(l, fd);
    if (rc != 0)
        close(fd); /* the handle does not own it yet */
    else
        rc = uv_listen((uv_stream_t *)l, 511, worker_on_connection);
    return rc;
}

static int worker_init(gw_server_t *s, gw_worker_t *w, int id, char **err)
{
    const gw_config_t *cfg = s->cfg;
    w->id = id;
    w->server = s;
    w->cfg = cfg;
    w->metrics = s->shards[id];
    w->rng = (uv_hrtime() ^ ((uint64_t)(id + 1) * 0x9E3779B97F4A7C15ULL)) | 1;
    gw_list_init(&w->conns);
    gw_list_init(&w->upconns);
    w->free_bufs = calloc(GW_FREE_BUFS_MAX, sizeof(char *));
    w->arena_cache.max = GW_FREE_BUFS_MAX * 4;
    w->pools = calloc(cfg->nbackends_total ? cfg->nbackends_total : 1, sizeof(gw_pool_t));
    w->ups = calloc(cfg->nupstreams ? cfg->nupstreams : 1, sizeof(gw_worker_upstream_t));
    w->probe_conns = calloc(cfg->nbackends_total ? cfg->nbackends_total : 1, sizeof *w->probe_conns);
    if (!w->free_bufs || !w->pools || !w->ups || !w->probe_conns)
        abort();
    for (size_t i = 0; i < cfg->nbackends_total; i++) {
        gw_pool_t *p = &w->pools[i];
        p->backend = s->backends[i];
        p->ucfg = &cfg->upstreams[p->backend->upstream];
        gw_list_init(&p->idle);
    }
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        gw_worker_upstream_t *wu = &w->ups[u];
        wu->cfg = &cfg->upstreams[u];
        wu->n = gw_upstream_nslots(wu->cfg);
        wu->backends = calloc(wu->n ? wu->n : 1, sizeof(gw_backend_t *));
        if (!wu->backends)
            abort();
        for (size_t k = 0; k < wu->n; k++)
            wu->backends[k] = s->backends[gw_upstream_slot_gindex(wu->cfg, (uint32_t)k)];
        worker_upstream_membership(w, wu);
        wu->lb = wu->cfg->lua_strategy ? &gw_lb_lua : gw_lb_find(wu->cfg->strategy);
        if (!wu->lb) {
            *err = gw_asprintf("upstreams.%s.strategy: unknown strategy \"%s\"", wu->cfg->name, wu->cfg->strategy);
            return -EINVAL;
        }
        if (wu->lb->create(wu->cfg, wu->n, &wu->lb_state) != 0)
            abort();
        if (wu->cfg->hedge.enabled && gw_hedge_init(&wu->hedge, &wu->cfg->hedge) != 0)
            abort();
    }
    if (cfg->uses_lua && gw_lua_new(w, &w->lua, err) != 0)
        return -EINVAL;
    int rc = uv_loop_init(&w->loop);
    if (rc != 0) {
        *err = gw_asprintf("event loop: %s", uv_strerror(rc));
        return rc;
    }
    w->loop_ready = true;
    /* Prequal scales its probing by the loop's idle time (docs/PREQUAL.md §3.1). */
    uv_loop_configure(&w->loop, UV_METRICS_IDLE_TIME);
    uv_async_init(&w->loop, &w->wakeup, worker_on_wakeup);
    w->wakeup.data = w;
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    uv_timer_init(&w->loop, &w->trim_timer);
    w->trim_timer.data = w;
    size_t cap = 0;
    for (size_t i = 0; i < cfg->nlisten; i++) {
        size_t k = server_inherit(s->inherit, (size_t)id, s->nworkers, &cfg->listen[i], NULL);
        cap += k ? k : 1;
    }
    w->listeners = calloc(cap ? cap : 1, sizeof(uv_tcp_t));
    w->listener_addr = calloc(cap ? cap : 1, sizeof *w->listener_addr);
    int *fds = calloc(cap ? cap : 1, sizeof *fds);
    if (!w->listeners || !w->listener_addr || !fds)
        abort();
    for (size_t i = 0; i < cfg->nlisten && rc == 0; i++) {
        size_t k = server_inherit(s->inherit, (size_t)id, s->nworkers, &cfg->listen[i], fds);
        if (k == 0) {
            rc = server_bind(&cfg->listen[i], &fds[0]);
            k = rc == 0 ? 1 : 0;
        }
        for (size_t j = 0; j < k; j++) {
            if (rc == 0)
                rc = worker_listen(w, i, fds[j]);
            else
                close(fds[j]);
        }
        if (rc != 0)
            *err = gw_asprintf("listen %s: %s", cfg->listen[i].text, uv_strerror(rc));
    }
    free(fds);
    return rc;
}

/* Releases what worker_init built; the loop must have no running handle left. */
static void worker_free(gw_worker_t *w)
{
    if (w->loop_ready && !w->thread_started) {
        /* Never ran: close its handles by running the loop once. */
        worker_close_listeners(w);
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
        uv_close((uv_handle_t *)&w->trim_timer, NULL);
        uv_close((uv_handle_t *)&w->wakeup, NULL);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        uv_loop_close(&w->loop);
    }
    for (size_t u = 0; w->ups && u < w->cfg->nupstreams; u++) {
        if (w->ups[u].lb && w->ups[u].lb_state)
            w->ups[u].lb->destroy(w->ups[u].lb_state);
        free(w->ups[u].backends);
        gw_hedge_free(&w->ups[u].hedge);
    }
    for (uint32_t i = 0; i < w->nfree_bufs; i++)
        free(w->free_bufs[i]);
    gw_arena_cache_trim(&w->arena_cache, 0);
    free(w->free_bufs);
    free(w->ups);
    free(w->pools);
    free(w->listeners);
    free(w->listener_addr);
    free(w->probe_conns);
    gw_lua_free(w->lua);
}

int gw_server_start(const gw_config_t *cfg, gw_backend_t *const *backends, uv_loop_t *main_loop,
                    void (*on_stopped)(void *), void *arg, gw_server_t **out, char **err)
{
    return gw_server_start_from(cfg, backends, main_loop, on_stopped, arg, NULL, out, err);
}

int gw_server_start_from(const gw_config_t *cfg, gw_backend_t *const *backends, uv_loop_t *main_loop,
                         void (*on_stopped)(void *), void *arg, const gw_server_t *running,
                         gw_server_t **out, char **err)
{
    *err = NULL;
    gw_server_t *s = calloc(1, sizeof *s);
    if (!s)
        abort();
    s->cfg = cfg;
    s->main_loop = main_loop;
    s->on_stopped = on_stopped;
    s->arg = arg;
    s->nworkers = cfg->workers;
    s->backends = backends;
    s->inherit = running;
    s->shards = calloc(s->nworkers, sizeof(gw_metrics_shard_t *));
    s->workers = calloc(s->nworkers, sizeof(gw_worker_t));
    if (!s->shards || !s->workers)
        abort();
    for (size_t i = 0; i < s->nworkers; i++)
        s->shards[i] = gw_metrics_shard_new(cfg);
    int rc = 0;
    for (size_t i = 0; i < s->nworkers && rc == 0; i++)
        rc = worker_init(s, &s->workers[i], (int)i, err);
    s->inherit = NULL;
    if (rc != 0) {
        gw_server_free(s); /* no thread started: it only releases what worker_init built */
        return rc;
    }
    uv_async_init(main_loop, &s->done, server_on_done);
    s->done.data = s;
    uv_timer_init(main_loop, &s->health_timer);
    s->health_timer.data = s;
    uv_timer_start(&s->health_timer, server_on_health_tick, 100, 100);
    for (size_t i = 0; i < s->nworkers; i++) {
        gw_worker_t *w = &s->workers[i];
        if (uv_thread_create(&w->thread, worker_thread, w) != 0)
            abort();
        w->thread_started = true;
        s->nstarted++;
    }
    *out = s;
    return 0;
}

static void server_command(gw_server_t *s, int cmd)
{
    int cur = __atomic_load_n(&s->command, __ATOMIC_ACQUIRE);
    if (cmd > cur)
        __atomic_store_n(&s->command, cmd, __ATOMIC_RELEASE);
    for (size_t i = 0; i < s->nworkers; i++)
        uv_async_send(&s->workers[i].wakeup);
}

void gw_server_drain(gw_server_t *s)
{
    server_command(s, GW_CMD_DRAIN);
}

void gw_server_stop(gw_server_t *s)
{
    server_command(s, GW_CMD_STOP);
}

void gw_server_free(gw_server_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nworkers; i++)
        if (s->workers[i].thread_started)
            uv_thread_join(&s->workers[i].thread);
    for (size_t i = 0; i < s->nworkers; i++)
        if (s->workers[i].cfg) /* worker_init reached it */
            worker_free(&s->workers[i]);
    for (size_t i = 0; i < s->nworkers; i++)
        gw_metrics_shard_free(s->shards[i]);
    free(s->workers);
    free(s->shards);
    free(s);
}

gw_metrics_shard_t *const *gw_server_shards(const gw_server_t *s, size_t *n)
{
    *n = s->nworkers;
    return s->shards;
}

uint64_t gw_server_membership_changed(gw_server_t *s)
{
    uint64_t gen = __atomic_add_fetch(&s->membership_gen, 1, __ATOMIC_ACQ_REL);
    for (size_t i = 0; i < s->nworkers; i++)
        uv_async_send(&s->workers[i].wakeup);
    return gen;
}

uint64_t gw_server_membership_gen(const gw_server_t *s)
{
    return __atomic_load_n(&s->membership_gen, __ATOMIC_ACQUIRE);
}

bool gw_server_membership_acked(const gw_server_t *s, uint64_t gen)
{
    for (size_t i = 0; i < s->nworkers; i++) {
        const gw_worker_t *w = &s->workers[i];
        /* A worker whose loop ended holds nothing any more. */
        if (__atomic_load_n(&w->loop_done, __ATOMIC_ACQUIRE))
            continue;
        if (__atomic_load_n(&w->membership_acked, __ATOMIC_ACQUIRE) < gen)
            return false;
    }
    return true;
}

void gw_server_reset_backend(gw_server_t *s, uint32_t g)
{
    for (size_t i = 0; i < s->nworkers; i++)
        gw_metrics_shard_reset_backend(s->shards[i], g);
}
