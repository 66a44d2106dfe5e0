/*
 * lb_prequal: the Prequal strategy (docs/PREQUAL.md), the default of every upstream. The algorithm
 * itself (probe pool, hot-cold selection, reuse budget, removals, passive mode) is the pure
 * module core/prequal.c; this file connects it to a worker: it sends the probes each request
 * asks for over the worker's probe connections (core/probe.c), feeds replies, piggybacked
 * headers and the gateway's own latency samples back into the pool, purges a backend's entries
 * when a request to it fails, and probes on a timer when traffic is idle.
 *
 * One instance per upstream per worker, so nothing here is shared or locked. The instance learns
 * its worker from the first pick (strategies are created before the loop runs); from then on it
 * owns an idle timer on that loop, which is unref'd so it never keeps the loop alive, and which
 * `stop` closes at shutdown.
 *
 * Probes are never on the request's critical path (the paper's async mode): the request is
 * routed with the pool as it is, and the probes it triggers serve later requests.
 */
#include <stdlib.h>

#include "lb.h"
#include "log.h"
#include "prequal.h"
#include "probe.h"
#include "worker.h"

typedef struct lb_pq {
    gw_prequal_t *pq;
    const gw_upstream_cfg_t *ucfg;
    size_t n;
    gw_worker_t *w; /* bound at the first pick */
    uint32_t upstream;
    gw_backend_t *const *backends;
    uv_timer_t idle_timer;
    bool timer_on;
    bool stopping;
    size_t n_healthy;        /* counted at the last pick (Eq. 1's n), used until the next */
    size_t n_active;         /* ctx->n of the last pick: slots past it are not members */
    bool *eligible;          /* [n] scratch */
    uint32_t *targets;       /* [n] scratch */
    uint64_t *excluded;      /* [(n+63)/64] scratch: tried or unhealthy */
    gw_prequal_load_t *load; /* [n] scratch: the backends' shared counters at this pick */
} lb_pq_t;

static int lb_pq_create(const gw_upstream_cfg_t *u, size_t n, void **state)
{
    lb_pq_t *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    s->ucfg = u;
    s->n = n;
    s->n_active = n;
    s->n_healthy = n;
    s->pq = gw_prequal_new(&u->prequal, n);
    s->eligible = calloc(n ? n : 1, sizeof *s->eligible);
    s->targets = calloc(n ? n : 1, sizeof *s->targets);
    s->excluded = calloc((n + 63) / 64 + 1, sizeof *s->excluded);
    s->load = calloc(n ? n : 1, sizeof *s->load);
    if (!s->pq || !s->eligible || !s->targets || !s->excluded || !s->load) {
        gw_prequal_free(s->pq);
        free(s->eligible);
        free(s->targets);
        free(s->excluded);
        free(s->load);
        free(s);
        return -1;
    }
    *state = s;
    return 0;
}

static void lb_pq_destroy(void *state)
{
    lb_pq_t *s = state;
    gw_prequal_free(s->pq);
    free(s->eligible);
    free(s->targets);
    free(s->excluded);
    free(s->load);
    free(s);
}

static void lb_pq_publish_mode(lb_pq_t *s, uint32_t i)
{
    GW_RELAXED_STORE(s->w->metrics->prequal_mode[s->backends[i]->cfg->gindex],
                     (uint8_t)gw_prequal_mode(s->pq, i));
}

static void lb_pq_on_probe(void *arg, gw_backend_t *b, const gw_probe_result_t *r)
{
    lb_pq_t *s = arg;
    if (s->stopping)
        return;
    uint32_t i = b->index;
    uint64_t now = r->recv_ms;
    switch (r->status) {
    case GW_PROBE_OK:
        gw_histogram_observe(&s->w->metrics->prequal_probe_rtt[s->upstream], r->rtt_ns / 1000);
        gw_prequal_on_probe_result(s->pq, i, GW_PREQUAL_PROBE_OK_WITH_SIGNALS, now);
        /* A reply from a backend that left since the probe went out adds no entry. */
        if (GW_RELAXED_LOAD(b->healthy) && GW_RELAXED_LOAD(b->member))
            gw_prequal_on_probe(s->pq, i, r->sig.rif, r->sig.latency_us, now, s->n_healthy,
                                &s->w->rng);
        break;
    case GW_PROBE_NO_SIGNALS:
        gw_histogram_observe(&s->w->metrics->prequal_probe_rtt[s->upstream], r->rtt_ns / 1000);
        gw_prequal_on_probe_result(s->pq, i, GW_PREQUAL_PROBE_NO_SIGNALS, now);
        gw_prequal_count_probe(s->pq, GW_PREQUAL_PROBE_STAT_FAIL);
        break;
    case GW_PROBE_TIMEOUT:
        gw_prequal_on_probe_result(s->pq, i, GW_PREQUAL_PROBE_TIMED_OUT, now);
        gw_prequal_count_probe(s->pq, GW_PREQUAL_PROBE_STAT_TIMEOUT);
        break;
    default:
        gw_prequal_on_probe_result(s->pq, i, GW_PREQUAL_PROBE_FAILED, now);
        gw_prequal_count_probe(s->pq, GW_PREQUAL_PROBE_STAT_FAIL);
        break;
    }
    lb_pq_publish_mode(s, i);
}

/* Sends (or synthesises) probes to `k` distinct random backends that are healthy and have no
 * probe in flight from this worker. */
static void lb_pq_probe(lb_pq_t *s, uint32_t k, uint64_t now)
{
    gw_worker_t *w = s->w;
    if (k == 0 || s->stopping)
        return;
    size_t neligible = 0, n = s->n_active;
    for (size_t i = 0; i < n; i++) {
        gw_backend_t *b = s->backends[i];
        /* The probe budget limits explicit probes; synthetic ones cost nothing. */
        s->eligible[i] = GW_RELAXED_LOAD(b->healthy) && GW_RELAXED_LOAD(b->member) &&
                         !gw_probe_busy(w, b) &&
                         (gw_prequal_mode(s->pq, (uint32_t)i) != GW_PREQUAL_MODE_PROBE ||
                          gw_prequal_probe_allowed(s->pq, (uint32_t)i, now));
        neligible += s->eligible[i];
    }
    if (neligible == 0)
        return;
    size_t m = gw_prequal_choose_probe_targets(s->pq, s->eligible, n, k, &w->rng, s->targets);
    size_t n_healthy = s->n_healthy;
    for (size_t j = 0; j < m; j++) {
        uint32_t i = s->targets[j];
        gw_backend_t *b = s->backends[i];
        if (gw_prequal_probe_action(s->pq, i, now) == GW_PREQUAL_SYNTHESIZE) {
            /* Passive mode: the gateway's own view of the backend, at no network cost. */
            gw_prequal_synthesize(s->pq, i, GW_RELAXED_LOAD(b->inflight), now, n_healthy, &w->rng);
            continue;
        }
        if (w->probes_in_flight >= s->ucfg->prequal.max_probes_in_flight) {
            gw_prequal_count_probe(s->pq, GW_PREQUAL_PROBE_STAT_SKIPPED);
            continue;
        }
        uint32_t inflight = GW_RELAXED_LOAD(b->inflight);
        if (gw_probe_send(w, b, s->ucfg->probe_path, s->ucfg->prequal.probe_timeout_ms,
                          lb_pq_on_probe, s) != 0)
            gw_prequal_count_probe(s->pq, GW_PREQUAL_PROBE_STAT_SKIPPED);
        else
            gw_prequal_probe_sent(s->pq, i, now, inflight);
    }
}

/* Worker 0 publishes its pool for /status (the admin thread reads it under the lock). */
static void lb_pq_snapshot(lb_pq_t *s, uint64_t now)
{
    gw_pq_snapshot_t *snap = &s->w->metrics->prequal_snap[s->upstream];
    uv_mutex_lock(&snap->lock);
    /* The pool may hold more entries than the copy: n is what was copied. */
    snap->total = gw_prequal_pool_snapshot(s->pq, now, snap->entries, GW_PQ_SNAPSHOT_MAX);
    snap->n = GW_MIN(snap->total, (size_t)GW_PQ_SNAPSHOT_MAX);
    snap->rif_threshold = gw_prequal_rif_threshold(s->pq, now, s->load);
    snap->taken_ms = now;
    uv_mutex_unlock(&snap->lock);
}

static void lb_pq_on_idle(uv_timer_t *t)
{
    lb_pq_t *s = t->data;
    uint64_t now = uv_now(t->loop);
    if (s->w->id == 0)
        lb_pq_snapshot(s, now);
    if (!s->stopping && gw_prequal_idle_probe_due(s->pq, now))
        lb_pq_probe(s, gw_prequal_idle_probes(s->pq), now);
}

static void lb_pq_bind(lb_pq_t *s, const gw_lb_ctx_t *ctx)
{
    s->w = ctx->worker;
    s->upstream = ctx->upstream;
    s->backends = ctx->backends;
    GW_RELAXED_STORE(s->w->metrics->prequal[s->upstream], gw_prequal_stats(s->pq));
    uv_timer_init(&s->w->loop, &s->idle_timer);
    s->idle_timer.data = s;
    uint32_t every = s->ucfg->prequal.idle_probe_ms;
    uv_timer_start(&s->idle_timer, lb_pq_on_idle, every, every);
    uv_unref((uv_handle_t *)&s->idle_timer);
    s->timer_on = true;
}

/* When every healthy backend is excluded: any untried member (lb.h's contract). */
static int lb_pq_last_resort(lb_pq_t *s, const gw_lb_ctx_t *ctx)
{
    for (size_t i = 0; i < s->n_active; i++)
        if (!gw_lb_tried(ctx, i) && GW_RELAXED_LOAD(ctx->backends[i]->member))
            return (int)i;
    return -1;
}

static int lb_pq_pick(void *state, const gw_lb_ctx_t *ctx)
{
    lb_pq_t *s = state;
    if (!s->w && ctx->worker)
        lb_pq_bind(s, ctx);
    s->n_active = GW_MIN(ctx->n, s->n);
    if (s->n_active == 0)
        return -1;
    /* Entries of ejected backends stay in the pool (other workers eject them); they are
     * excluded here like the backends this request already tried, and so are slots that are
     * not members (the worker passes them in ctx->tried too). */
    size_t words = (s->n + 63) / 64;
    for (size_t i = 0; i < words; i++)
        s->excluded[i] = ctx->tried ? ctx->tried[i] : 0;
    size_t healthy = 0;
    for (size_t i = 0; i < s->n_active; i++) {
        const gw_backend_t *b = ctx->backends[i];
        s->load[i].inflight = GW_RELAXED_LOAD(b->inflight);
        if (GW_RELAXED_LOAD(b->member) && GW_RELAXED_LOAD(b->healthy))
            healthy++;
        else
            s->excluded[i / 64] |= (uint64_t)1 << (i % 64);
    }
    for (size_t i = s->n_active; i < s->n; i++)
        s->excluded[i / 64] |= (uint64_t)1 << (i % 64);
    s->n_healthy = healthy;
    gw_prequal_branch_t branch;
    int idx = gw_prequal_pick(s->pq, ctx->now_ms, s->excluded, s->load, ctx->rng, &branch);
    if (idx < 0)
        idx = lb_pq_last_resort(s, ctx);
    if (s->w) {
        gw_prequal_loop_idle(s->pq, ctx->now_ms, uv_metrics_idle_time(&s->w->loop));
        lb_pq_probe(s, gw_prequal_probes_for_request(s->pq), ctx->now_ms);
    }
    return idx;
}

static void lb_pq_on_result(void *state, const gw_lb_ctx_t *ctx, size_t idx,
                            const gw_lb_result_t *r)
{
    lb_pq_t *s = state;
    if (idx >= s->n)
        return;
    uint32_t i = (uint32_t)idx;
    /* A lost hedge race says only "slower than the winner", not "failing": its request stays
     * counted in flight until the backend answers, which the effective RIF already sees. */
    if (r->outcome == GW_LB_CANCELLED)
        return;
    if (r->outcome != GW_LB_OK || r->status >= 500) {
        /* A fast-failing backend looks idle and would attract traffic (docs/PREQUAL.md §3.8). */
        gw_prequal_purge(s->pq, i, GW_PREQUAL_RM_FAILURE);
        return;
    }
    gw_prequal_record_latency(s->pq, i, r->rif_at_start, (uint64_t)(r->latency_ms * 1000.0),
                              ctx->now_ms);
    if (r->has_signals && s->w) {
        gw_prequal_on_piggyback(s->pq, i, r->sig_rif, r->sig_latency_us, ctx->now_ms,
                                GW_RELAXED_LOAD(ctx->backends[i]->inflight), s->n_healthy,
                                ctx->rng);
        lb_pq_publish_mode(s, i);
    }
}

/* Membership changed (ctx->tried holds the slots that are not in the upstream): their pool
 * entries go (docs/PREQUAL.md §3.8) and their
 * per-backend history is forgotten, since a free slot may next hold a different URL. */
static void lb_pq_backends_changed(void *state, const gw_lb_ctx_t *ctx)
{
    lb_pq_t *s = state;
    for (uint32_t i = 0; i < s->n && i < ctx->n; i++) {
        if (!gw_lb_tried(ctx, i))
            continue;
        gw_prequal_purge(s->pq, i, GW_PREQUAL_RM_MEMBERSHIP);
        gw_prequal_forget(s->pq, i);
        if (s->w)
            lb_pq_publish_mode(s, i);
    }
}

static void lb_pq_stop(void *state)
{
    lb_pq_t *s = state;
    s->stopping = true;
    if (s->timer_on) {
        s->timer_on = false;
        uv_close((uv_handle_t *)&s->idle_timer, NULL);
    }
}

bool gw_lb_prequal_entry(void *state, uint32_t backend, uint64_t now_ms,
                         gw_prequal_entry_info_t *out)
{
    lb_pq_t *s = state;
    return gw_prequal_entry_info(s->pq, backend, now_ms, out);
}

const gw_lb_ops_t gw_lb_prequal = {
    .name = "prequal",
    .create = lb_pq_create,
    .destroy = lb_pq_destroy,
    .pick = lb_pq_pick,
    .on_result = lb_pq_on_result,
    .on_backends_changed = lb_pq_backends_changed,
    .stop = lb_pq_stop,
    .wants_signals = true,
};
