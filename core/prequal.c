/*
 * prequal: the probe pool and the hot-cold lexicographic (HCL) rule of Prequal, "Load is not what
 * you should balance" (Wydrowski, Kleinberg, Rumble, Archer; NSDI 2024), in the asynchronous mode
 * of the paper: a request is routed with probe replies that earlier requests triggered, so probing
 * is never on the request's critical path. docs/PREQUAL.md describes it; a bare § is a section of
 * the paper.
 *
 * Rules implemented here, and why:
 * - Probing rate (§4 "Probing rate"): every request triggers r_probe probes to distinct backends
 *   chosen uniformly at random. Fractional rates go through an accumulator (take()) rather than a
 *   coin flip, so the long-run rate is exact and tests are deterministic.
 * - Probe pool (§4 "The probe pool"): one entry per backend (a newer probe replaces the older;
 *   two entries of one backend would double its chance). By default every backend may have one
 *   (ours): a pool of the paper's 16 in front of 32 backends misses the idle ones whenever few
 *   are idle, which is when it matters. pool_size > 0 caps the pool as in the paper; a full pool
 *   evicts its oldest entry, because the oldest information is the least accurate.
 * - Reuse and removal (§4 "Probe reuse and removal"): an entry may serve b_reuse requests (Eq. 1,
 *   numerator 1+δ, for the paper's pool of 16 unless pool_size is set) so that the pool neither
 *   drains nor fills with stale entries, and one report cannot draw a herd; after each
 *   request r_remove entries are removed, alternating the oldest (staleness) and the worst (a
 *   backend that is bad now should not linger as a last resort), but never more than replies
 *   added (ours: when most backends have an entry replies mostly replace entries, and the pool
 *   drained). Entries
 * older than max_age_ms are dropped lazily when selecting.
 * - Selection (§4 "Replica selection"): RIF is judged against the q_rif quantile of the RIFs
 *   reported by *all* backends (not a backend's own history), one value per backend: its latest
 *   report, corrected like an entry (ours; the paper's history of reports lets the backend that
 *   is herded onto, and so probed most, fill it and lift the threshold above itself). Cold entries
 * (rif <= thr) compete on latency, hot ones on RIF: latency is the better signal until a backend is
 *   overloaded, and then RIF predicts the queue better. The latency compared is a prediction for
 *   a request sent now (ours, gw_prequal_predict), not the reported median of the past.
 * - Effective RIF (ours): an entry's RIF is the probed one corrected by the gateway's own requests
 *   to that backend since the probe went out (sent minus completed, every worker), so a burst does
 *   not land on one backend and a backend that drained its queue is seen as such.
 * - Failures (ours; the paper leaves "sinkholing" open): a failing backend's entry is purged
 *   because a fast failure looks like an idle backend and would attract traffic.
 * - Probe timeouts (ours): a probe timeout drops the backend's entry, so a backend that stopped
 *   answering is not chosen from what it said before.
 * - Passive mode (ours, docs/PREQUAL.md §4): backends without the probe endpoint get synthetic
 * entries from the gateway's own in-flight counts and latency samples.
 *
 * Ownership: one gw_prequal_t per upstream per worker, touched only by that worker. All memory is
 * allocated by gw_prequal_new()/gw_prequal_resize(); every other function runs in bounded time
 * without allocating. The pool is a small unordered array (swap-remove) with a per-backend slot
 * index for O(1) replacement; scans are O(pool entries) <= O(n), and the threshold is a
 * quickselect over one value per backend, O(n) per request like the caller's own health scan.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "prequal.h"

/* A pool entry is its backend's latest report (gw_prequal_backend_t's report_*), which every
 * reply replaces; the entry adds what belongs to its use in the pool. */
typedef struct gw_prequal_entry {
    uint64_t seq; /* insertion order: breaks report_ms ties so "oldest" is deterministic */
    uint32_t backend;
    uint32_t uses_left; /* > 0 while in the pool */
} gw_prequal_entry_t;

typedef struct gw_prequal_sample {
    uint64_t t_ms;
    uint32_t latency_us; /* saturated: an hour-long request is as bad as a longer one */
    uint32_t rif;
} gw_prequal_sample_t;

typedef struct gw_prequal_backend {
    int32_t slot;         /* index in pool, -1 when the backend has no entry */
    uint8_t mode;         /* gw_prequal_mode_t */
    uint8_t nosig;        /* consecutive no-signal probe replies (probe mode) */
    uint8_t sample_next;  /* next write position in samples */
    uint8_t sample_count; /* valid samples, <= GW_PREQUAL_LAT_SAMPLES */
    uint32_t probe_base;  /* gateway in-flight count when the last probe went out */
    double tokens;        /* probe budget: token bucket ... */
    uint64_t tokens_ms;   /* ... last refilled at */
    uint64_t cost_avg_us; /* moving average of latency / (rif_at_start + 1), 0 before one */
    double cost_l;        /* reported latencies, decayed (docs/PREQUAL.md §3.5) ... */
    double cost_r;        /* ... and the (RIF + 1) they were reported at, decayed alike ... */
    uint64_t cost_ms;     /* ... as of this time (0: no report with a latency yet) */
    bool has_report;      /* the latest report (probe, piggyback or synthetic): */
    uint32_t report_rif;  /* the reported RIF */
    uint32_t report_base; /* the gateway's in-flight count to it when the probe went out */
    uint64_t report_ms;   /* the reply's receipt time */
    uint64_t report_latency_us;
    uint64_t retry_at_ms; /* passive/piggyback: when to try an explicit probe again */
    gw_prequal_sample_t samples[GW_PREQUAL_LAT_SAMPLES];
} gw_prequal_backend_t;

struct gw_prequal {
    gw_prequal_params_t params;
    size_t nbackends;
    gw_prequal_backend_t *backends; /* nbackends (at least one allocated) */
    uint32_t *scratch;              /* nbackends: candidates of choose_probe_targets */
    gw_prequal_entry_t *pool;       /* pool_cap */
    uint32_t *eff;                  /* pool_cap: effective RIF of pool[i] during a pick */
    uint64_t *pred;                 /* pool_cap: predicted latency of pool[i], likewise */
    uint32_t pool_cap;              /* params.pool_size, or nbackends (at least 1) when it is 0 */
    uint32_t pool_len;
    double probe_acc;       /* take() accumulators */
    double spare;           /* idle fraction of the worker's loop (gw_prequal_loop_idle) ... */
    uint64_t spare_ms;      /* ... measured since this time (0: not yet) ... */
    uint64_t spare_idle_ns; /* ... when the loop's total idle time was this */
    double remove_acc;
    bool remove_worst_next; /* alternation of the per-request removals; starts with the oldest */
    uint32_t remove_credit; /* new entries not yet matched by a per-request removal (capped) */
    bool any_request;
    uint64_t last_request_ms;
    uint64_t seq;
    uint64_t prior_us; /* the median backend's cost (§3.5) ... */
    uint64_t prior_at; /* ... computed at this time + 1 (0: never) */
    gw_prequal_stats_t stats;
};

void gw_prequal_params_default(gw_prequal_params_t *p)
{
    *p = (gw_prequal_params_t){
        .pool_size = 0,
        .max_age_ms = 1000,
        .probes_per_request = 3.0,
        .removes_per_request = 1.0,
        .delta = 1.0,
        .max_reuse = 16,
        .q_rif = 0.84, /* 2^-0.25 rounded as in the paper's testbed */
        .rif_history = 64,
        .probe_timeout_ms = 50,
        .idle_probe_ms = 250,
        .max_probes_in_flight = 64,
        .probe_rate = 1000,
        .latency_smoothing_ms = 100,
    };
}

/* Written as !(in range) so that NaN fails every check. */
#define GW_PREQUAL_IN(x, lo, hi) ((x) >= (lo) && (x) <= (hi))

const char *gw_prequal_params_check(const gw_prequal_params_t *p)
{
    if (p->pool_size > 1024u)
        return "pool_size must be in [0, 1024]";
    if (!GW_PREQUAL_IN(p->max_age_ms, 1u, 60000u))
        return "max_age_ms must be in [1, 60000]";
    if (!GW_PREQUAL_IN(p->probes_per_request, 0.0, 16.0))
        return "probes_per_request must be in [0, 16]";
    if (!GW_PREQUAL_IN(p->removes_per_request, 0.0, 16.0))
        return "removes_per_request must be in [0, 16]";
    if (!GW_PREQUAL_IN(p->delta, 0.0, 100.0))
        return "delta must be in [0, 100]";
    if (!GW_PREQUAL_IN(p->max_reuse, 1u, 1024u))
        return "max_reuse must be in [1, 1024]";
    if (!GW_PREQUAL_IN(p->q_rif, 0.0, 1.0))
        return "q_rif must be in [0, 1]";
    if (!GW_PREQUAL_IN(p->rif_history, 1u, 4096u))
        return "rif_history must be in [1, 4096]";
    if (!GW_PREQUAL_IN(p->probe_timeout_ms, 1u, 60000u))
        return "probe_timeout_ms must be in [1, 60000]";
    if (!GW_PREQUAL_IN(p->idle_probe_ms, 1u, 60000u))
        return "idle_probe_ms must be in [1, 60000]";
    if (!GW_PREQUAL_IN(p->max_probes_in_flight, 1u, 65536u))
        return "max_probes_in_flight must be in [1, 65536]";
    if (!GW_PREQUAL_IN(p->probe_rate, 1u, 1000000u))
        return "probe_rate must be in [1, 1000000]";
    if (!GW_PREQUAL_IN(p->latency_smoothing_ms, 1u, 60000u))
        return "latency_smoothing_ms must be in [1, 60000]";
    return NULL;
}

static void gw_prequal_backend_init(gw_prequal_backend_t *b)
{
    memset(b, 0, sizeof(*b));
    b->slot = -1;
    b->mode = GW_PREQUAL_MODE_PROBE;
}

gw_prequal_t *gw_prequal_new(const gw_prequal_params_t *params, size_t nbackends)
{
    if (gw_prequal_params_check(params) != NULL || nbackends > INT32_MAX)
        return NULL;
    gw_prequal_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->params = *params;
    p->spare = 1.0;
    if (gw_prequal_resize(p, nbackends) != 0) {
        gw_prequal_free(p);
        return NULL;
    }
    return p;
}

void gw_prequal_free(gw_prequal_t *p)
{
    if (p == NULL)
        return;
    free(p->backends);
    free(p->scratch);
    free(p->pool);
    free(p->eff);
    free(p->pred);
    free(p);
}

const gw_prequal_params_t *gw_prequal_params(const gw_prequal_t *p)
{
    return &p->params;
}

/* Removes pool[slot] by moving the last entry into its place. */
static void gw_prequal_remove_slot(gw_prequal_t *p, uint32_t slot, gw_prequal_reason_t reason)
{
    uint32_t last = p->pool_len - 1;
    p->backends[p->pool[slot].backend].slot = -1;
    if (slot != last) {
        p->pool[slot] = p->pool[last];
        p->eff[slot] = p->eff[last];
        p->pred[slot] = p->pred[last];
        p->backends[p->pool[slot].backend].slot = (int32_t)slot;
    }
    p->pool_len = last;
    GW_COUNTER_INC(p->stats.removals[reason]);
    GW_RELAXED_STORE(p->stats.pool_entries, (uint64_t)p->pool_len);
}

int gw_prequal_resize(gw_prequal_t *p, size_t nbackends)
{
    if (nbackends > INT32_MAX)
        return -EINVAL;
    /* Allocate everything before touching p so a failure leaves it unchanged. */
    size_t alloc = nbackends > 0 ? nbackends : 1;
    uint32_t cap = p->params.pool_size ? p->params.pool_size : (uint32_t)alloc;
    gw_prequal_backend_t *b = malloc(alloc * sizeof(*b));
    uint32_t *scratch = malloc(alloc * sizeof(*scratch));
    gw_prequal_entry_t *pool = NULL;
    uint32_t *eff = NULL;
    uint64_t *pred = NULL;
    if (cap != p->pool_cap) {
        pool = malloc(cap * sizeof(*pool));
        eff = malloc(cap * sizeof(*eff));
        pred = malloc(cap * sizeof(*pred));
    }
    if (b == NULL || scratch == NULL || (cap != p->pool_cap && (!pool || !eff || !pred))) {
        free(b);
        free(scratch);
        free(pool);
        free(eff);
        free(pred);
        return -ENOMEM;
    }
    /* Drop the entries of vanished backends while the old per-backend array is still valid;
     * what is left has one entry per remaining backend, so it fits a pool of nbackends. */
    for (uint32_t i = 0; i < p->pool_len;) {
        if (p->pool[i].backend >= nbackends)
            gw_prequal_remove_slot(p, i, GW_PREQUAL_RM_MEMBERSHIP);
        else
            i++;
    }
    if (pool != NULL) {
        if (p->pool_len > 0)
            memcpy(pool, p->pool, p->pool_len * sizeof(*pool));
        free(p->pool);
        free(p->eff);
        free(p->pred);
        p->pool = pool;
        p->eff = eff; /* eff and pred are scratch of a pick: nothing to keep */
        p->pred = pred;
        p->pool_cap = cap;
    }
    size_t keep = GW_MIN(p->nbackends, nbackends);
    if (keep > 0)
        memcpy(b, p->backends, keep * sizeof(*b));
    for (size_t i = keep; i < nbackends; i++)
        gw_prequal_backend_init(&b[i]);
    free(p->backends);
    free(p->scratch);
    p->backends = b;
    p->scratch = scratch;
    p->nbackends = nbackends;
    return 0;
}

/* take(&acc, rate) of docs/PREQUAL.md §3.1: the integer part of the accumulated rate. */
static uint32_t gw_prequal_take(double *acc, double rate)
{
    *acc += rate;
    double k = floor(*acc);
    *acc -= k;
    return (uint32_t)k;
}

uint32_t gw_prequal_probes_for_request(gw_prequal_t *p)
{
    double scale = GW_MIN(p->spare / GW_PREQUAL_SPARE_KNEE, 1.0);
    return gw_prequal_take(&p->probe_acc, p->params.probes_per_request * scale);
}

/* Probing with spare time (ours, docs/PREQUAL.md §3.1). A probe is a round trip like a request,
 * and per backend a cluster of 5 and one of 32 at the same load per replica want the same
 * probes; what differs is the worker's total, and at r_probe per request that total takes the
 * CPU the requests need (32 one-at-a-time replicas, ~8,000 req/s: ~24,000 probes/s). Probes are
 * the work that can wait: a request's probes run at the full rate while the worker's loop was
 * idle at least GW_PREQUAL_SPARE_KNEE of the last window, and in proportion below that. Under
 * half busy, an event waits for less than one other event's handling on average, so probes
 * cost the requests next to nothing; above it the wait grows without bound. */
void gw_prequal_loop_idle(gw_prequal_t *p, uint64_t now_ms, uint64_t idle_ns)
{
    if (p->spare_ms != 0 && now_ms < p->spare_ms + GW_PREQUAL_SPARE_WINDOW_MS)
        return;
    if (p->spare_ms != 0 && idle_ns >= p->spare_idle_ns) {
        double f = (double)(idle_ns - p->spare_idle_ns) / ((double)(now_ms - p->spare_ms) * 1e6);
        p->spare = GW_MIN(f, 1.0);
    }
    p->spare_ms = GW_MAX(now_ms, 1u); /* 0 marks "no window yet" */
    p->spare_idle_ns = idle_ns;
}

double gw_prequal_spare(const gw_prequal_t *p)
{
    return p->spare;
}

size_t gw_prequal_choose_probe_targets(gw_prequal_t *p, const bool *eligible, size_t n, uint32_t k,
                                       uint64_t *rng, uint32_t *out)
{
    n = GW_MIN(n, p->nbackends);
    uint32_t e = 0;
    for (size_t i = 0; i < n; i++) {
        if (eligible[i])
            p->scratch[e++] = (uint32_t)i;
    }
    /* Partial Fisher-Yates: after step i, scratch[0..i] is a uniform sample without repetition. */
    uint32_t m = GW_MIN(k, e);
    for (uint32_t i = 0; i < m; i++) {
        uint32_t j = i + gw_rand_below(rng, e - i);
        uint32_t t = p->scratch[i];
        p->scratch[i] = p->scratch[j];
        p->scratch[j] = t;
        out[i] = p->scratch[i];
    }
    return m;
}

/* Whether something received at t_ms is older than max_age_ms at now_ms: an entry, a backend's
 * latest report for the threshold, a cost for the prior. */
static bool gw_prequal_too_old(const gw_prequal_t *p, uint64_t t_ms, uint64_t now_ms)
{
    return now_ms > t_ms && now_ms - t_ms > p->params.max_age_ms;
}

/* Drops entries older than max_age_ms (§4: a stale probe misleads more than no probe). */
static void gw_prequal_expire(gw_prequal_t *p, uint64_t now_ms)
{
    for (uint32_t i = 0; i < p->pool_len;) {
        if (gw_prequal_too_old(p, p->backends[p->pool[i].backend].report_ms, now_ms))
            gw_prequal_remove_slot(p, i, GW_PREQUAL_RM_AGE);
        else
            i++;
    }
}

bool gw_prequal_idle_probe_due(gw_prequal_t *p, uint64_t now_ms)
{
    gw_prequal_expire(p, now_ms);
    if (p->pool_len < 2 || !p->any_request)
        return true;
    return now_ms > p->last_request_ms && now_ms - p->last_request_ms >= p->params.idle_probe_ms;
}

uint32_t gw_prequal_idle_probes(const gw_prequal_t *p)
{
    return (uint32_t)ceil(p->params.probes_per_request);
}

double gw_prequal_reuse_budget(const gw_prequal_params_t *params, size_t n_healthy)
{
    double cap = (double)params->max_reuse;
    if (n_healthy == 0)
        return cap;
    double m = (double)(params->pool_size ? params->pool_size : GW_PREQUAL_REUSE_POOL);
    double n = (double)n_healthy;
    /* The pool gains (1 − m/n)·r_probe useful entries per request (a probe of a backend that
     * already has an entry only replaces it) and loses r_remove; reuse must make up the rest. */
    double denom = (1.0 - m / n) * params->probes_per_request - params->removes_per_request;
    if (denom <= 0.0)
        return cap;
    double b = (1.0 + params->delta) / denom;
    return GW_MIN(GW_MAX(b, 1.0), cap);
}

/* floor(x) or ceil(x), ceil with probability frac(x): the expectation is exactly x. */
static uint32_t gw_prequal_random_round(double x, uint64_t *rng)
{
    double fl = floor(x);
    double u = (double)(gw_rand_next(rng) >> 11) * 0x1.0p-53; /* uniform in [0, 1) */
    return (uint32_t)fl + (u < x - fl ? 1u : 0u);
}

/* The effective RIF of an entry: the probed RIF corrected by this gateway's own traffic since the
 * probe went out. The in-flight count now minus the count then is exactly (requests sent since)
 * − (requests completed since), counted by every worker; unlike adding one per pick it also falls
 * when requests complete and sees other workers' requests. A request that was already in flight
 * when the probe went out and completes since is in the probed RIF too, so subtracting it is
 * right; the clamp covers requests the backend had not yet counted when it answered. */
static uint32_t gw_prequal_eff(uint32_t rif, uint32_t base, uint32_t inflight)
{
    int64_t v = (int64_t)rif + (int64_t)inflight - (int64_t)base;
    return v < 0 ? 0 : v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/* The effective RIF of backend i's latest report: what its entry is judged by, and its voice in
 * the threshold. Without `load` (nothing known in flight) the reported RIF. */
static uint32_t gw_prequal_report_eff(const gw_prequal_t *p, uint32_t i,
                                      const gw_prequal_load_t *load)
{
    const gw_prequal_backend_t *b = &p->backends[i];
    return load ? gw_prequal_eff(b->report_rif, b->report_base, load[i].inflight) : b->report_rif;
}

uint64_t gw_prequal_rif_threshold(gw_prequal_t *p, uint64_t now_ms, const gw_prequal_load_t *load)
{
    if (p->params.q_rif >= 1.0)
        return GW_PREQUAL_THR_INF;
    /* One value per backend: its latest report, corrected like an entry. A history of reports
     * would let the backend that gets the most probes (the one being herded onto) set the
     * threshold by itself; here it is one voice among n whatever its load. */
    uint32_t cnt = 0;
    for (uint32_t i = 0; i < p->nbackends; i++) {
        const gw_prequal_backend_t *b = &p->backends[i];
        if (!b->has_report || gw_prequal_too_old(p, b->report_ms, now_ms))
            continue;
        p->scratch[cnt++] = gw_prequal_report_eff(p, i, load);
    }
    if (cnt == 0)
        return GW_PREQUAL_THR_INF;
    uint32_t rank = (uint32_t)floor(p->params.q_rif * (double)(cnt - 1));
    return gw_select_u32(p->scratch, cnt, rank);
}

/* Index of the oldest entry (earliest receipt, then earliest insertion); pool must not be empty. */
static uint32_t gw_prequal_oldest(const gw_prequal_t *p)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < p->pool_len; i++) {
        const gw_prequal_entry_t *e = &p->pool[i], *b = &p->pool[best];
        uint64_t te = p->backends[e->backend].report_ms, tb = p->backends[b->backend].report_ms;
        if (te < tb || (te == tb && e->seq < b->seq))
            best = i;
    }
    return best;
}

/* The weight left to a backend's cost sums at now_ms: exp(-age / latency_smoothing_ms). */
static double gw_prequal_decay(const gw_prequal_t *p, const gw_prequal_backend_t *b,
                               uint64_t now_ms)
{
    if (b->cost_ms == 0 || now_ms <= b->cost_ms)
        return 1.0;
    return exp(-(double)(now_ms - b->cost_ms) / (double)p->params.latency_smoothing_ms);
}

static void gw_prequal_insert(gw_prequal_t *p, uint32_t backend, uint32_t rif, uint64_t latency_us,
                              uint64_t recv_ms, uint32_t base, size_t n_healthy, uint64_t *rng,
                              gw_prequal_probe_stat_t stat)
{
    if (backend >= p->nbackends)
        return;
    gw_prequal_backend_t *rb = &p->backends[backend];
    rb->has_report = true;
    rb->report_rif = rif;
    rb->report_base = base;
    rb->report_ms = recv_ms;
    rb->report_latency_us = latency_us;
    if (latency_us > 0) {
        /* A report of 0 says the backend has no recent sample at that RIF: no cost to learn. */
        double f = gw_prequal_decay(p, rb, recv_ms);
        rb->cost_l = rb->cost_l * f + (double)latency_us;
        rb->cost_r = rb->cost_r * f + (double)rif + 1.0;
        rb->cost_ms = GW_MAX(recv_ms, 1u);
    }
    uint32_t uses = gw_prequal_random_round(gw_prequal_reuse_budget(&p->params, n_healthy), rng);
    uses = GW_MIN(GW_MAX(uses, 1u), p->params.max_reuse);
    int32_t slot = p->backends[backend].slot;
    if (slot < 0) {
        /* Inflow: one more per-request removal may run (see gw_prequal_pick). */
        uint32_t cap = (uint32_t)ceil(p->params.removes_per_request);
        if (p->remove_credit < cap)
            p->remove_credit++;
        if (p->pool_len == p->pool_cap)
            gw_prequal_remove_slot(p, gw_prequal_oldest(p), GW_PREQUAL_RM_CAPACITY);
        slot = (int32_t)p->pool_len++;
        p->backends[backend].slot = slot;
    }
    p->pool[slot] = (gw_prequal_entry_t){.seq = p->seq++, .backend = backend, .uses_left = uses};
    GW_COUNTER_INC(p->stats.probes[stat]);
    GW_RELAXED_STORE(p->stats.pool_entries, (uint64_t)p->pool_len);
}

/* Refills the backend's token bucket up to now. A new backend starts full. */
static gw_prequal_backend_t *gw_prequal_refill(gw_prequal_t *p, uint32_t backend, uint64_t now_ms)
{
    gw_prequal_backend_t *b = &p->backends[backend];
    if (b->tokens_ms == 0 && b->tokens == 0.0) {
        b->tokens = GW_PREQUAL_PROBE_BURST;
    } else if (now_ms > b->tokens_ms) {
        double add = (double)(now_ms - b->tokens_ms) * (double)p->params.probe_rate / 1000.0;
        b->tokens = GW_MIN(b->tokens + add, GW_PREQUAL_PROBE_BURST);
    }
    b->tokens_ms = GW_MAX(now_ms, 1u); /* 0 marks "never refilled" */
    return b;
}

/* Probe budget (ours): at high request rates r_probe probes per request would cost more than
 * the requests (each probe is a request to the backend and two syscalls here), while the
 * effective RIF already follows this gateway's own traffic between probes. What a probe adds is
 * what other clients did, which does not need more than probe_rate looks per second. */
bool gw_prequal_probe_allowed(gw_prequal_t *p, uint32_t backend, uint64_t now_ms)
{
    if (backend >= p->nbackends)
        return false;
    return gw_prequal_refill(p, backend, now_ms)->tokens >= 1.0;
}

static void gw_prequal_spend_token(gw_prequal_t *p, uint32_t backend, uint64_t now_ms)
{
    gw_prequal_backend_t *b = gw_prequal_refill(p, backend, now_ms);
    b->tokens = GW_MAX(b->tokens - 1.0, 0.0);
}

void gw_prequal_probe_sent(gw_prequal_t *p, uint32_t backend, uint64_t now_ms, uint32_t inflight)
{
    if (backend >= p->nbackends)
        return;
    gw_prequal_spend_token(p, backend, now_ms);
    gw_prequal_backend_t *b = &p->backends[backend];
    b->probe_base = inflight;
}

void gw_prequal_on_probe(gw_prequal_t *p, uint32_t backend, uint32_t rif, uint64_t latency_us,
                         uint64_t recv_ms, size_t n_healthy, uint64_t *rng)
{
    if (backend >= p->nbackends)
        return;
    gw_prequal_insert(p, backend, rif, latency_us, recv_ms, p->backends[backend].probe_base,
                      n_healthy, rng, GW_PREQUAL_PROBE_STAT_OK);
}

/* HCL orders. Cold: lower latency, then lower RIF, then lower backend index. Hot: lower RIF, then
 * lower latency, then lower index. The index makes the choice independent of pool order. */
static bool gw_prequal_is_hot(uint32_t eff, uint64_t thr)
{
    return eff > thr;
}

static bool gw_prequal_cold_better(const gw_prequal_t *p, uint32_t i, uint32_t j)
{
    const gw_prequal_entry_t *a = &p->pool[i], *b = &p->pool[j];
    if (p->pred[i] != p->pred[j])
        return p->pred[i] < p->pred[j];
    if (p->eff[i] != p->eff[j])
        return p->eff[i] < p->eff[j];
    return a->backend < b->backend;
}

static bool gw_prequal_hot_better(const gw_prequal_t *p, uint32_t i, uint32_t j)
{
    const gw_prequal_entry_t *a = &p->pool[i], *b = &p->pool[j];
    if (p->eff[i] != p->eff[j])
        return p->eff[i] < p->eff[j];
    if (p->pred[i] != p->pred[j])
        return p->pred[i] < p->pred[j];
    return a->backend < b->backend;
}

/* The worst entry (§4 "Probe reuse and removal"): if any entry is hot, the hot one with the
 * highest RIF (ties: higher latency, then older); else the one with the highest latency (ties:
 * higher RIF, then older). Pool must not be empty. */
static uint32_t gw_prequal_worst(const gw_prequal_t *p, uint64_t thr)
{
    uint32_t best = 0;
    bool best_hot = gw_prequal_is_hot(p->eff[0], thr);
    for (uint32_t i = 1; i < p->pool_len; i++) {
        const gw_prequal_entry_t *e = &p->pool[i], *b = &p->pool[best];
        uint32_t er = p->eff[i], br = p->eff[best];
        bool hot = gw_prequal_is_hot(er, thr);
        bool worse;
        if (hot != best_hot)
            worse = hot;
        else if (hot && er != br)
            worse = er > br;
        else if (p->pred[i] != p->pred[best])
            worse = p->pred[i] > p->pred[best];
        else if (er != br)
            worse = er > br;
        else
            worse = e->seq < b->seq;
        if (worse) {
            best = i;
            best_hot = hot;
        }
    }
    return best;
}

static bool gw_prequal_tried(const uint64_t *tried, uint32_t i)
{
    return tried != NULL && ((tried[i / 64] >> (i % 64)) & 1);
}

/* The fallback: the backend with the fewest requests in flight from this gateway (every worker)
 * among those not in `tried`, ties broken uniformly at random; -1 when every one is tried. */
static int gw_prequal_fewest_in_flight(const gw_prequal_t *p, const uint64_t *tried,
                                       const gw_prequal_load_t *load, uint64_t *rng)
{
    int best = -1;
    uint32_t best_load = 0, ties = 0;
    for (uint32_t i = 0; i < p->nbackends; i++) {
        if (gw_prequal_tried(tried, i))
            continue;
        uint32_t l = load ? load[i].inflight : 0;
        if (best < 0 || l < best_load) {
            best = (int)i;
            best_load = l;
            ties = 1;
        } else if (l == best_load && gw_rand_below(rng, ++ties) == 0) {
            best = (int)i; /* reservoir sampling: each of the ties with probability 1/ties */
        }
    }
    return best;
}

/* The latency a request sent now would see (ours, docs/PREQUAL.md §3.5): the cost per queued
 * request times the queue it would join, cost × (effective RIF + 1). The reported latency is for
 * a request that arrives at the probed RIF; it says nothing about the requests sent since, so
 * ranking cold entries by it sends every request to the entry that looked fastest until the next
 * probe (herding). The cost is learnt over all of the backend's recent reports, not the latest
 * one: a latency at RIF 0 is a median that includes requests that queued behind one, so the
 * latest report's latency / (RIF + 1) made idle backends look costlier than busy ones. The prior
 * (the median backend's cost) brings back a backend whose samples aged out because it got no
 * requests; before any backend reported a latency, the gateway's own average stands in. */
static uint64_t gw_prequal_predict(const gw_prequal_t *p, uint32_t backend, uint32_t eff,
                                   uint64_t now_ms)
{
    const gw_prequal_backend_t *b = &p->backends[backend];
    uint64_t cost = b->cost_avg_us;
    if (b->cost_ms != 0 || p->prior_us != 0) {
        double f = gw_prequal_decay(p, b, now_ms);
        cost = (uint64_t)((b->cost_l * f + (double)p->prior_us) / (b->cost_r * f + 1.0));
    }
    return cost * ((uint64_t)GW_MIN(eff, 1u << 20) + 1);
}

/* The prior of the cost estimates (§3.5): the median of the backends' smoothed costs that had a
 * report with a latency within max_age_ms, 0 when none had. Recomputed once per millisecond. */
static void gw_prequal_update_prior(gw_prequal_t *p, uint64_t now_ms)
{
    if (p->prior_at == now_ms + 1)
        return;
    p->prior_at = now_ms + 1;
    uint32_t cnt = 0;
    for (uint32_t i = 0; i < p->nbackends; i++) {
        const gw_prequal_backend_t *b = &p->backends[i];
        if (b->cost_ms == 0 || gw_prequal_too_old(p, b->cost_ms, now_ms))
            continue;
        p->scratch[cnt++] = (uint32_t)GW_MIN(b->cost_l / b->cost_r, (double)UINT32_MAX);
    }
    p->prior_us = cnt ? gw_select_u32(p->scratch, cnt, cnt / 2) : 0;
}

int gw_prequal_pick(gw_prequal_t *p, uint64_t now_ms, const uint64_t *tried,
                    const gw_prequal_load_t *load, uint64_t *rng, gw_prequal_branch_t *branch)
{
    p->any_request = true;
    p->last_request_ms = now_ms;
    gw_prequal_expire(p, now_ms);

    uint64_t thr = gw_prequal_rif_threshold(p, now_ms, load);
    gw_prequal_update_prior(p, now_ms);
    int32_t cold = -1, hot = -1;
    uint32_t usable = 0;
    for (uint32_t i = 0; i < p->pool_len; i++) {
        p->eff[i] = gw_prequal_report_eff(p, p->pool[i].backend, load);
        p->pred[i] = gw_prequal_predict(p, p->pool[i].backend, p->eff[i], now_ms);
    }
    for (uint32_t i = 0; i < p->pool_len; i++) {
        const gw_prequal_entry_t *e = &p->pool[i];
        if (gw_prequal_tried(tried, e->backend))
            continue;
        usable++;
        if (gw_prequal_is_hot(p->eff[i], thr)) {
            if (hot < 0 || gw_prequal_hot_better(p, i, (uint32_t)hot))
                hot = (int32_t)i;
        } else if (cold < 0 || gw_prequal_cold_better(p, i, (uint32_t)cold)) {
            cold = (int32_t)i;
        }
    }
    /* With one entry there is no choice to make, and always following a lone entry would send
     * every request to whichever backend answered first, hot or not. Without a choice the
     * gateway's own view decides: a random pick (the paper's) ignores load and, with a slow or
     * frozen backend, queues on it. */
    if (usable < 2) {
        *branch = GW_PREQUAL_FALLBACK;
        GW_COUNTER_INC(p->stats.picks[GW_PREQUAL_FALLBACK]);
        return gw_prequal_fewest_in_flight(p, tried, load, rng);
    }
    GW_RELAXED_STORE(p->stats.rif_threshold, thr);
    *branch = cold >= 0 ? GW_PREQUAL_COLD : GW_PREQUAL_HOT;
    GW_COUNTER_INC(p->stats.picks[*branch]);

    uint32_t slot = (uint32_t)(cold >= 0 ? cold : hot);
    gw_prequal_entry_t *e = &p->pool[slot];
    uint32_t backend = e->backend;
    if (--e->uses_left == 0)
        gw_prequal_remove_slot(p, slot, GW_PREQUAL_RM_REUSE);

    /* Per-request removals never outrun the inflow of new entries: each needs a reply that
     * added an entry since the last one. When most backends have an entry (always with few
     * backends) almost every reply only replaces one, so r_remove removals per request would
     * drain the pool whenever replies lag behind requests (they arrive in batches, one loop
     * iteration at a time) and send the next picks to the fallback. When replies keep bringing
     * new backends the paper's rate holds. */
    uint32_t k = gw_prequal_take(&p->remove_acc, p->params.removes_per_request);
    k = GW_MIN(k, p->remove_credit);
    p->remove_credit -= k;
    for (uint32_t j = 0; j < k && p->pool_len > 0; j++) {
        if (p->remove_worst_next)
            gw_prequal_remove_slot(p, gw_prequal_worst(p, thr), GW_PREQUAL_RM_WORST);
        else
            gw_prequal_remove_slot(p, gw_prequal_oldest(p), GW_PREQUAL_RM_OLDEST);
        p->remove_worst_next = !p->remove_worst_next;
    }
    return (int)backend;
}

bool gw_prequal_purge(gw_prequal_t *p, uint32_t backend, gw_prequal_reason_t reason)
{
    if (backend >= p->nbackends || p->backends[backend].slot < 0)
        return false;
    gw_prequal_remove_slot(p, (uint32_t)p->backends[backend].slot, reason);
    return true;
}

void gw_prequal_forget(gw_prequal_t *p, uint32_t backend)
{
    if (backend >= p->nbackends)
        return;
    /* An entry is its backend's report: it cannot outlive the state it reads. */
    gw_prequal_purge(p, backend, GW_PREQUAL_RM_MEMBERSHIP);
    gw_prequal_backend_init(&p->backends[backend]);
}

void gw_prequal_on_probe_result(gw_prequal_t *p, uint32_t backend, gw_prequal_probe_result_t result,
                                uint64_t now_ms)
{
    if (backend >= p->nbackends)
        return;
    gw_prequal_backend_t *b = &p->backends[backend];
    if (result == GW_PREQUAL_PROBE_TIMED_OUT)
        gw_prequal_purge(p, backend, GW_PREQUAL_RM_SILENCE);
    if (b->mode == GW_PREQUAL_MODE_PROBE) {
        if (result == GW_PREQUAL_PROBE_OK_WITH_SIGNALS) {
            b->nosig = 0;
        } else if (result == GW_PREQUAL_PROBE_NO_SIGNALS &&
                   ++b->nosig >= GW_PREQUAL_PASSIVE_AFTER) {
            b->mode = GW_PREQUAL_MODE_PASSIVE;
            b->nosig = 0;
            b->retry_at_ms = now_ms + GW_PREQUAL_PASSIVE_RETRY_MS;
        }
        return;
    }
    /* A retry probe in passive or piggyback mode: one good reply is proof enough; one bad reply
     * keeps the mode, since three were needed to leave probe mode. */
    if (result == GW_PREQUAL_PROBE_OK_WITH_SIGNALS) {
        b->mode = GW_PREQUAL_MODE_PROBE;
        b->nosig = 0;
    } else {
        b->retry_at_ms = now_ms + GW_PREQUAL_PASSIVE_RETRY_MS;
    }
}

gw_prequal_mode_t gw_prequal_mode(const gw_prequal_t *p, uint32_t backend)
{
    if (backend >= p->nbackends)
        return GW_PREQUAL_MODE_PROBE;
    return (gw_prequal_mode_t)p->backends[backend].mode;
}

gw_prequal_probe_action_t gw_prequal_probe_action(gw_prequal_t *p, uint32_t backend,
                                                  uint64_t now_ms)
{
    if (backend >= p->nbackends || p->backends[backend].mode == GW_PREQUAL_MODE_PROBE)
        return GW_PREQUAL_SEND_PROBE;
    gw_prequal_backend_t *b = &p->backends[backend];
    if (now_ms >= b->retry_at_ms) {
        b->retry_at_ms = now_ms + GW_PREQUAL_PASSIVE_RETRY_MS;
        return GW_PREQUAL_SEND_PROBE;
    }
    return GW_PREQUAL_SYNTHESIZE;
}

void gw_prequal_on_piggyback(gw_prequal_t *p, uint32_t backend, uint32_t rif, uint64_t latency_us,
                             uint64_t recv_ms, uint32_t inflight, size_t n_healthy, uint64_t *rng)
{
    if (backend >= p->nbackends)
        return;
    if (p->backends[backend].mode == GW_PREQUAL_MODE_PASSIVE)
        p->backends[backend].mode = GW_PREQUAL_MODE_PIGGYBACK;
    gw_prequal_spend_token(p, backend, recv_ms);
    gw_prequal_insert(p, backend, rif, latency_us, recv_ms, inflight, n_healthy, rng,
                      GW_PREQUAL_PROBE_STAT_PIGGYBACK);
}

void gw_prequal_record_latency(gw_prequal_t *p, uint32_t backend, uint32_t rif_at_start,
                               uint64_t latency_us, uint64_t now_ms)
{
    if (backend >= p->nbackends)
        return;
    gw_prequal_backend_t *b = &p->backends[backend];
    b->samples[b->sample_next] = (gw_prequal_sample_t){
        .t_ms = now_ms,
        .latency_us = (uint32_t)GW_MIN(latency_us, (uint64_t)UINT32_MAX),
        .rif = rif_at_start,
    };
    b->sample_next = (uint8_t)((b->sample_next + 1) % GW_PREQUAL_LAT_SAMPLES);
    uint64_t l = GW_MAX(GW_MIN(latency_us, (uint64_t)UINT32_MAX), 1u);
    uint64_t c = GW_MAX(l / ((uint64_t)rif_at_start + 1), 1u);
    b->cost_avg_us = b->cost_avg_us == 0 ? c : b->cost_avg_us - b->cost_avg_us / 8 + c / 8;
    if (b->sample_count < GW_PREQUAL_LAT_SAMPLES)
        b->sample_count++;
}

uint64_t gw_prequal_synthetic_latency(const gw_prequal_t *p, uint32_t backend, uint32_t rif,
                                      uint64_t now_ms)
{
    if (backend >= p->nbackends)
        return 0;
    const gw_prequal_backend_t *b = &p->backends[backend];
    uint32_t lo = rif > 0 ? rif - 1 : 0, hi = rif < UINT32_MAX ? rif + 1 : rif;
    uint32_t v[GW_PREQUAL_LAT_SAMPLES];
    size_t n = 0;
    for (size_t i = 0; i < b->sample_count; i++) {
        const gw_prequal_sample_t *s = &b->samples[i];
        if (s->rif < lo || s->rif > hi)
            continue;
        if (now_ms > s->t_ms && now_ms - s->t_ms > GW_PREQUAL_LAT_WINDOW_MS)
            continue;
        v[n++] = s->latency_us;
    }
    /* No fresh sample: 0, as a backend does (a stale high value would starve an idle backend). */
    if (n == 0)
        return 0;
    uint32_t hi_mid = gw_select_u32(v, (uint32_t)n, (uint32_t)n / 2);
    if (n % 2 == 1)
        return hi_mid;
    uint32_t lo_mid = gw_select_u32(v, (uint32_t)n, (uint32_t)n / 2 - 1);
    return (uint64_t)lo_mid + (hi_mid - lo_mid) / 2;
}

void gw_prequal_synthesize(gw_prequal_t *p, uint32_t backend, uint32_t inflight, uint64_t now_ms,
                           size_t n_healthy, uint64_t *rng)
{
    uint64_t latency = gw_prequal_synthetic_latency(p, backend, inflight, now_ms);
    gw_prequal_insert(p, backend, inflight, latency, now_ms, inflight, n_healthy, rng,
                      GW_PREQUAL_PROBE_STAT_SYNTHETIC);
}

void gw_prequal_count_probe(gw_prequal_t *p, gw_prequal_probe_stat_t stat)
{
    if ((unsigned)stat < GW_PREQUAL_PROBE_STAT_COUNT)
        GW_COUNTER_INC(p->stats.probes[stat]);
}

const gw_prequal_stats_t *gw_prequal_stats(const gw_prequal_t *p)
{
    return &p->stats;
}

static gw_prequal_entry_info_t gw_prequal_info(const gw_prequal_t *p, const gw_prequal_entry_t *e,
                                                uint64_t now_ms)
{
    const gw_prequal_backend_t *b = &p->backends[e->backend];
    return (gw_prequal_entry_info_t){
        .backend = e->backend,
        .rif = b->report_rif,
        .latency_us = b->report_latency_us,
        .age_ms = now_ms > b->report_ms ? now_ms - b->report_ms : 0,
        .uses_left = e->uses_left,
    };
}

size_t gw_prequal_pool_snapshot(const gw_prequal_t *p, uint64_t now_ms,
                                gw_prequal_entry_info_t *out, size_t cap)
{
    for (uint32_t i = 0; i < p->pool_len && i < cap; i++)
        out[i] = gw_prequal_info(p, &p->pool[i], now_ms);
    return p->pool_len;
}

bool gw_prequal_entry_info(const gw_prequal_t *p, uint32_t backend, uint64_t now_ms,
                           gw_prequal_entry_info_t *out)
{
    if (backend >= p->nbackends || p->backends[backend].slot < 0)
        return false;
    *out = gw_prequal_info(p, &p->pool[p->backends[backend].slot], now_ms);
    return true;
}

const char *gw_prequal_branch_name(gw_prequal_branch_t b)
{
    static const char *const names[] = {"cold", "hot", "fallback"};
    return (unsigned)b < GW_ARRAY_LEN(names) ? names[b] : "?";
}

const char *gw_prequal_reason_name(gw_prequal_reason_t r)
{
    static const char *const names[] = {"age",   "reuse",   "capacity",   "oldest",
                                        "worst", "failure", "membership", "silence"};
    return (unsigned)r < GW_ARRAY_LEN(names) ? names[r] : "?";
}

const char *gw_prequal_probe_stat_name(gw_prequal_probe_stat_t s)
{
    static const char *const names[] = {"ok",      "fail",      "timeout",
                                        "skipped", "synthetic", "piggyback"};
    return (unsigned)s < GW_ARRAY_LEN(names) ? names[s] : "?";
}

const char *gw_prequal_mode_name(gw_prequal_mode_t m)
{
    static const char *const names[] = {"probe", "passive", "piggyback"};
    return (unsigned)m < GW_ARRAY_LEN(names) ? names[m] : "?";
}
