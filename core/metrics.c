/*
 * metrics: per-worker metric shards and their Prometheus text exposition (format 0.0.4).
 *
 * Ownership and threading: a shard is allocated by the main thread for one worker and written only
 * by that worker, with single-writer relaxed stores (GW_COUNTER_ADD), so the hot path pays no lock
 * prefix. gw_metrics_render runs on the main thread while the workers keep writing; it reads every
 * field with GW_RELAXED_LOAD, so no value is ever torn, but values read at slightly different
 * moments may disagree by an observation or two. The one place where that would break the format
 * is a histogram whose `_count` differs from its `+Inf` bucket, so `_count` is derived from the
 * buckets rather than read from the `count` field.
 *
 * The rendered text is built in a growable buffer owned by the renderer until it is returned;
 * every growth is checked and an allocation failure makes gw_metrics_render return NULL.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"
#include "metrics.h"
#include "hcheck.h"
#include "registry.h"

#ifndef PGW_VERSION
#define PGW_VERSION "dev"
#endif

/* Bucket upper bounds, inclusive as Prometheus defines `le`, in microseconds and as labels. */
static const uint64_t gw_hist_bounds_us[GW_HIST_NBUCKETS] = {
    500,    1000,   2500,    5000,    10000,   25000,    50000,    100000,
    250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000,
};
static const char *const gw_hist_le[GW_HIST_NBUCKETS + 1] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25",   "0.5",   "1",      "2.5",   "5",    "10",    "30",   "+Inf",
};

static const char *const gw_status_class_label[GW_STATUS_CLASSES] = {
    "other", "1xx", "2xx", "3xx", "4xx", "5xx",
};

static const char *const gw_uerr_label[GW_UERR_MAX] = {
    "connect",
    "timeout",
    "protocol",
    "reset",
};

/* Shards are control structures sized by the config, not by peer input: OOM aborts. calloc(0)
 * may legally return NULL, so every array gets at least one element. */
static void *gw_metrics_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (p == NULL) {
        fputs("prequal-gw: out of memory allocating metric shards\n", stderr);
        abort();
    }
    return p;
}

gw_metrics_shard_t *gw_metrics_shard_new(const gw_config_t *cfg)
{
    gw_metrics_shard_t *s = gw_metrics_xcalloc(1, sizeof(*s));
    s->nroutes = cfg->nroutes;
    s->nbackends = cfg->nbackends_total;
    s->nupstreams = cfg->nupstreams;
    s->requests = gw_metrics_xcalloc(s->nroutes + 1, sizeof(*s->requests));
    s->request_duration = gw_metrics_xcalloc(s->nroutes + 1, sizeof(*s->request_duration));
    s->upstream_requests = gw_metrics_xcalloc(s->nbackends, sizeof(*s->upstream_requests));
    s->upstream_latency = gw_metrics_xcalloc(s->nbackends, sizeof(*s->upstream_latency));
    s->upstream_errors = gw_metrics_xcalloc(s->nbackends, sizeof(*s->upstream_errors));
    s->retries = gw_metrics_xcalloc(s->nupstreams, sizeof(*s->retries));
    s->hedges = gw_metrics_xcalloc(s->nupstreams, sizeof(*s->hedges));
    s->prequal = gw_metrics_xcalloc(s->nupstreams, sizeof(*s->prequal));
    s->prequal_probe_rtt = gw_metrics_xcalloc(s->nupstreams, sizeof(*s->prequal_probe_rtt));
    s->prequal_mode = gw_metrics_xcalloc(s->nbackends, sizeof(*s->prequal_mode));
    s->prequal_snap = gw_metrics_xcalloc(s->nupstreams, sizeof(*s->prequal_snap));
    s->lua_errors = gw_metrics_xcalloc((s->nroutes + 1) * GW_HOOK_COUNT, sizeof(*s->lua_errors));
    s->lua_slow = gw_metrics_xcalloc((s->nroutes + 1) * GW_HOOK_COUNT, sizeof(*s->lua_slow));
    s->lua_strategy_errors = gw_metrics_xcalloc(s->nupstreams, sizeof(*s->lua_strategy_errors));
    s->lua_strategy_slow = gw_metrics_xcalloc(s->nupstreams, sizeof(*s->lua_strategy_slow));
    for (size_t u = 0; u < s->nupstreams; u++)
        if (uv_mutex_init(&s->prequal_snap[u].lock) != 0)
            abort();
    return s;
}

void gw_metrics_shard_reset_backend(gw_metrics_shard_t *s, uint32_t g)
{
    if (g >= s->nbackends)
        return;
    GW_RELAXED_STORE(s->upstream_requests[g], 0);
    gw_histogram_t *h = &s->upstream_latency[g];
    for (size_t i = 0; i <= GW_HIST_NBUCKETS; i++)
        GW_RELAXED_STORE(h->buckets[i], 0);
    GW_RELAXED_STORE(h->count, 0);
    GW_RELAXED_STORE(h->sum_us, 0);
    for (size_t e = 0; e < GW_UERR_MAX; e++)
        GW_RELAXED_STORE(s->upstream_errors[g][e], 0);
    GW_RELAXED_STORE(s->prequal_mode[g], 0);
}

void gw_metrics_shard_free(gw_metrics_shard_t *s)
{
    if (s == NULL)
        return;
    free(s->requests);
    free(s->request_duration);
    free(s->upstream_requests);
    free(s->upstream_latency);
    free(s->upstream_errors);
    free(s->retries);
    free(s->hedges);
    free(s->prequal);
    free(s->prequal_probe_rtt);
    free(s->prequal_mode);
    for (size_t u = 0; u < s->nupstreams; u++)
        uv_mutex_destroy(&s->prequal_snap[u].lock);
    free(s->prequal_snap);
    free(s->lua_errors);
    free(s->lua_slow);
    free(s->lua_strategy_errors);
    free(s->lua_strategy_slow);
    free(s);
}

void gw_histogram_observe(gw_histogram_t *h, uint64_t usec)
{
    size_t i = 0;
    while (i < GW_HIST_NBUCKETS && usec > gw_hist_bounds_us[i])
        i++;
    GW_COUNTER_INC(h->buckets[i]);
    GW_COUNTER_ADD(h->sum_us, usec);
    GW_COUNTER_INC(h->count);
}

/* ---- output buffer ---- */

typedef struct gw_mbuf {
    char *p;
    size_t len;
    size_t cap;
    bool oom; /* sticky: once set, every append is a no-op and render returns NULL */
} gw_mbuf_t;

/* Makes room for `extra` more bytes plus a NUL. Returns false (and sets oom) on failure. */
static bool gw_mbuf_reserve(gw_mbuf_t *b, size_t extra)
{
    if (b->oom)
        return false;
    if (extra > SIZE_MAX - b->len - 1) {
        b->oom = true;
        return false;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

static void gw_mbuf_add(gw_mbuf_t *b, const char *s, size_t n)
{
    if (!gw_mbuf_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void gw_mbuf_puts(gw_mbuf_t *b, const char *s)
{
    gw_mbuf_add(b, s, strlen(s));
}

static void gw_mbuf_printf(gw_mbuf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void gw_mbuf_printf(gw_mbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    if (!gw_mbuf_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* A label value, escaped as the text format requires: backslash, double quote and newline. */
static void gw_mbuf_label_value(gw_mbuf_t *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        switch (*p) {
        case '\\':
            gw_mbuf_add(b, "\\\\", 2);
            break;
        case '"':
            gw_mbuf_add(b, "\\\"", 2);
            break;
        case '\n':
            gw_mbuf_add(b, "\\n", 2);
            break;
        default:
            gw_mbuf_add(b, p, 1);
        }
    }
}

/* `name="value"`, with a leading comma unless it is the first label. */
static void gw_mbuf_label(gw_mbuf_t *b, bool first, const char *name, const char *value)
{
    if (!first)
        gw_mbuf_add(b, ",", 1);
    gw_mbuf_puts(b, name);
    gw_mbuf_add(b, "=\"", 2);
    gw_mbuf_label_value(b, value);
    gw_mbuf_add(b, "\"", 1);
}

static void gw_mbuf_family(gw_mbuf_t *b, const char *name, const char *type, const char *help)
{
    gw_mbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Microseconds as exact decimal seconds, without trailing zeros ("0.0125", "3"). */
static void gw_mbuf_seconds(gw_mbuf_t *b, uint64_t usec)
{
    uint64_t whole = usec / 1000000, frac = usec % 1000000;
    if (frac == 0) {
        gw_mbuf_printf(b, "%" PRIu64, whole);
        return;
    }
    char digits[8];
    snprintf(digits, sizeof(digits), "%06" PRIu64, frac);
    size_t n = 6;
    while (digits[n - 1] == '0')
        n--;
    digits[n] = '\0';
    gw_mbuf_printf(b, "%" PRIu64 ".%s", whole, digits);
}

/* ---- summing shards ---- */

static void gw_hist_accumulate(gw_histogram_t *acc, gw_histogram_t *h)
{
    for (size_t i = 0; i <= GW_HIST_NBUCKETS; i++)
        acc->buckets[i] += GW_RELAXED_LOAD(h->buckets[i]);
    acc->sum_us += GW_RELAXED_LOAD(h->sum_us);
}

/*
 * One histogram series: cumulative buckets, _sum and _count. `labels` is the already escaped
 * label list without braces (may be empty); `le` is appended to it.
 */
static void gw_mbuf_histogram(gw_mbuf_t *b, const char *name, const char *labels,
                              const gw_histogram_t *h)
{
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (size_t i = 0; i <= GW_HIST_NBUCKETS; i++) {
        cum += h->buckets[i];
        gw_mbuf_printf(b, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n", name, labels, sep,
                       gw_hist_le[i], cum);
    }
    gw_mbuf_printf(b, "%s_sum%s%s%s ", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "");
    gw_mbuf_seconds(b, h->sum_us);
    gw_mbuf_printf(b, "\n%s_count%s%s%s %" PRIu64 "\n", name, labels[0] ? "{" : "", labels,
                   labels[0] ? "}" : "", cum);
}

/* Escaped label lists are built in a scratch buffer, reused for every series. */
static const char *gw_labels_route(gw_mbuf_t *tmp, const char *route)
{
    tmp->len = 0;
    gw_mbuf_label(tmp, true, "route", route);
    return tmp->oom ? "" : tmp->p;
}

static const char *gw_labels_backend(gw_mbuf_t *tmp, const char *upstream, const char *backend)
{
    tmp->len = 0;
    gw_mbuf_label(tmp, true, "upstream", upstream);
    gw_mbuf_label(tmp, false, "backend", backend);
    return tmp->oom ? "" : tmp->p;
}

/* Name of route row r: the configured name, or "(none)" for the no-route row. */
static const char *gw_route_label(const gw_config_t *cfg, size_t r)
{
    return r < cfg->nroutes ? cfg->routes[r].name : "(none)";
}

/*
 * Row index inside shard `s` for config row r. The last row of a shard is always "no route";
 * a shard sized for a different config (a reload in progress) contributes only the rows it has.
 * Returns SIZE_MAX when the shard has no such row.
 */
static size_t gw_shard_route_row(const gw_config_t *cfg, const gw_metrics_shard_t *s, size_t r)
{
    if (r == cfg->nroutes)
        return s->nroutes;
    return r < s->nroutes ? r : SIZE_MAX;
}

typedef struct gw_render_ctx {
    gw_mbuf_t *b;
    gw_mbuf_t *tmp;
    const gw_config_t *cfg;
    gw_metrics_shard_t *const *shards;
    size_t nshards;
    gw_backend_t *const *backends; /* may be NULL: the gauges are left out */
    const gw_registry_t *registry; /* may be NULL: the registration series are left out */
    const gw_hcheck_t *hcheck;     /* may be NULL: no active checks */
} gw_render_ctx_t;

/* The backend config of slot k of `up`, or NULL when the slot is not listed (a registration slot
 * that holds no member; see gw_backend_listed). */
static const gw_backend_cfg_t *gw_render_slot(const gw_render_ctx_t *x, const gw_upstream_cfg_t *up,
                                              uint32_t k)
{
    if (k < up->nbackends)
        return &up->backends[k];
    if (x->backends == NULL)
        return NULL;
    const gw_backend_t *b = x->backends[gw_upstream_slot_gindex(up, k)];
    return gw_backend_listed(b) ? b->cfg : NULL;
}

static void gw_render_requests(const gw_render_ctx_t *x)
{
    gw_mbuf_t *b = x->b, *tmp = x->tmp;
    const gw_config_t *cfg = x->cfg;
    gw_metrics_shard_t *const *shards = x->shards;
    size_t nshards = x->nshards;

    gw_mbuf_family(b, "gw_requests_total", "counter",
                   "Requests answered, by route and status class.");
    for (size_t r = 0; r <= cfg->nroutes; r++) {
        uint64_t sum[GW_STATUS_CLASSES] = {0};
        for (size_t k = 0; k < nshards; k++) {
            size_t row = gw_shard_route_row(cfg, shards[k], r);
            if (row == SIZE_MAX)
                continue;
            for (size_t c = 0; c < GW_STATUS_CLASSES; c++)
                sum[c] += GW_RELAXED_LOAD(shards[k]->requests[row][c]);
        }
        const char *labels = gw_labels_route(tmp, gw_route_label(cfg, r));
        /* 1xx..5xx in order, then "other"; 2xx..5xx always so dashboards see zeros. */
        for (size_t i = 1; i <= GW_STATUS_CLASSES; i++) {
            size_t c = i % GW_STATUS_CLASSES;
            if ((c == 0 || c == 1) && sum[c] == 0)
                continue;
            gw_mbuf_printf(b, "gw_requests_total{%s,code=\"%s\"} %" PRIu64 "\n", labels,
                           gw_status_class_label[c], sum[c]);
        }
    }

    gw_mbuf_family(b, "gw_request_duration_seconds", "histogram",
                   "Time from the request head to the end of the response, by route.");
    for (size_t r = 0; r <= cfg->nroutes; r++) {
        gw_histogram_t h = {.count = 0};
        for (size_t k = 0; k < nshards; k++) {
            size_t row = gw_shard_route_row(cfg, shards[k], r);
            if (row != SIZE_MAX)
                gw_hist_accumulate(&h, &shards[k]->request_duration[row]);
        }
        gw_mbuf_histogram(b, "gw_request_duration_seconds",
                          gw_labels_route(tmp, gw_route_label(cfg, r)), &h);
    }
}

/* The per-backend families, each rendered as one series (or group of series) per backend. */
typedef enum gw_backend_family {
    GW_FAM_UPSTREAM_REQUESTS,
    GW_FAM_UPSTREAM_LATENCY,
    GW_FAM_IN_FLIGHT,
    GW_FAM_HEALTHY,
    GW_FAM_UPSTREAM_ERRORS,
} gw_backend_family_t;

static void gw_render_backend_series(const gw_render_ctx_t *x, gw_backend_family_t fam,
                                     const char *upstream, const gw_backend_cfg_t *be)
{
    const char *labels = gw_labels_backend(x->tmp, upstream, be->url);
    uint32_t g = be->gindex;
    uint64_t sum = 0, errs[GW_UERR_MAX] = {0};
    gw_histogram_t h = {.count = 0};
    const gw_backend_t *state = NULL;

    if (fam == GW_FAM_IN_FLIGHT || fam == GW_FAM_HEALTHY) {
        if (g >= x->cfg->nbackends_total || x->backends[g] == NULL)
            return;
        state = x->backends[g];
    }
    for (size_t k = 0; k < x->nshards; k++) {
        gw_metrics_shard_t *s = x->shards[k];
        if (g >= s->nbackends)
            continue;
        if (fam == GW_FAM_UPSTREAM_REQUESTS)
            sum += GW_RELAXED_LOAD(s->upstream_requests[g]);
        else if (fam == GW_FAM_UPSTREAM_LATENCY)
            gw_hist_accumulate(&h, &s->upstream_latency[g]);
        else if (fam == GW_FAM_UPSTREAM_ERRORS)
            for (size_t e = 0; e < GW_UERR_MAX; e++)
                errs[e] += GW_RELAXED_LOAD(s->upstream_errors[g][e]);
    }

    switch (fam) {
    case GW_FAM_UPSTREAM_REQUESTS:
        gw_mbuf_printf(x->b, "gw_upstream_requests_total{%s} %" PRIu64 "\n", labels, sum);
        break;
    case GW_FAM_UPSTREAM_LATENCY:
        gw_mbuf_histogram(x->b, "gw_upstream_latency_seconds", labels, &h);
        break;
    case GW_FAM_IN_FLIGHT:
        gw_mbuf_printf(x->b, "gw_upstream_in_flight{%s} %" PRIu32 "\n", labels,
                       GW_RELAXED_LOAD(state->inflight));
        break;
    case GW_FAM_HEALTHY:
        gw_mbuf_printf(x->b, "gw_upstream_healthy{%s} %d\n", labels,
                       GW_RELAXED_LOAD(state->healthy) ? 1 : 0);
        break;
    case GW_FAM_UPSTREAM_ERRORS:
        for (size_t e = 0; e < GW_UERR_MAX; e++)
            gw_mbuf_printf(x->b, "gw_upstream_errors_total{%s,kind=\"%s\"} %" PRIu64 "\n", labels,
                           gw_uerr_label[e], errs[e]);
        break;
    }
}

/* One family over every backend of every upstream, in config order. */
static void gw_render_backend_family(const gw_render_ctx_t *x, gw_backend_family_t fam,
                                     const char *name, const char *type, const char *help)
{
    gw_mbuf_family(x->b, name, type, help);
    for (size_t u = 0; u < x->cfg->nupstreams; u++) {
        const gw_upstream_cfg_t *up = &x->cfg->upstreams[u];
        for (uint32_t k = 0; k < gw_upstream_nslots(up); k++) {
            const gw_backend_cfg_t *be = gw_render_slot(x, up, k);
            if (be != NULL)
                gw_render_backend_series(x, fam, up->name, be);
        }
    }
}

static void gw_render_upstreams(const gw_render_ctx_t *x)
{
    gw_render_backend_family(x, GW_FAM_UPSTREAM_REQUESTS, "gw_upstream_requests_total", "counter",
                             "Requests sent to a backend.");
    gw_render_backend_family(x, GW_FAM_UPSTREAM_LATENCY, "gw_upstream_latency_seconds", "histogram",
                             "Time from sending a request to a backend to its response head.");
    if (x->backends != NULL) {
        gw_render_backend_family(x, GW_FAM_IN_FLIGHT, "gw_upstream_in_flight", "gauge",
                                 "Requests in flight to a backend, from all workers.");
        gw_render_backend_family(x, GW_FAM_HEALTHY, "gw_upstream_healthy", "gauge",
                                 "1 if the backend may be picked, 0 if it is down or ejected.");
    }
    gw_render_backend_family(x, GW_FAM_UPSTREAM_ERRORS, "gw_upstream_errors_total", "counter",
                             "Failed attempts to a backend, by kind.");

    gw_mbuf_family(x->b, "gw_retries_total", "counter", "Retried upstream attempts.");
    for (size_t u = 0; u < x->cfg->nupstreams; u++) {
        uint64_t sum = 0;
        for (size_t k = 0; k < x->nshards; k++)
            if (u < x->shards[k]->nupstreams)
                sum += GW_RELAXED_LOAD(x->shards[k]->retries[u]);
        x->tmp->len = 0;
        gw_mbuf_label(x->tmp, true, "upstream", x->cfg->upstreams[u].name);
        gw_mbuf_printf(x->b, "gw_retries_total{%s} %" PRIu64 "\n", x->tmp->oom ? "" : x->tmp->p,
                       sum);
    }

    /* Only where some upstream hedges: the family is noise everywhere else. */
    bool hedging = false;
    for (size_t u = 0; u < x->cfg->nupstreams; u++)
        hedging |= x->cfg->upstreams[u].hedge.enabled;
    if (hedging)
        gw_mbuf_family(x->b, "gw_hedges_total", "counter",
                       "Hedged requests of upstreams with hedging on, by outcome.");
    for (size_t u = 0; u < x->cfg->nupstreams; u++) {
        if (!x->cfg->upstreams[u].hedge.enabled)
            continue;
        for (int o = 0; o < GW_HEDGE_OUTCOMES; o++) {
            uint64_t sum = 0;
            for (size_t k = 0; k < x->nshards; k++)
                if (u < x->shards[k]->nupstreams)
                    sum += GW_RELAXED_LOAD(x->shards[k]->hedges[u][o]);
            x->tmp->len = 0;
            gw_mbuf_label(x->tmp, true, "upstream", x->cfg->upstreams[u].name);
            gw_mbuf_label(x->tmp, false, "outcome", gw_hedge_outcome_name((gw_hedge_outcome_t)o));
            gw_mbuf_printf(x->b, "gw_hedges_total{%s} %" PRIu64 "\n", x->tmp->oom ? "" : x->tmp->p,
                           sum);
        }
    }
}

/* Sum of one Prequal counter over the workers that run Prequal for upstream u. */
typedef uint64_t (*gw_pq_field_fn)(const gw_prequal_stats_t *st, size_t i);

static uint64_t gw_pq_picks(const gw_prequal_stats_t *st, size_t i)
{
    return GW_RELAXED_LOAD(st->picks[i]);
}
static uint64_t gw_pq_probes(const gw_prequal_stats_t *st, size_t i)
{
    return GW_RELAXED_LOAD(st->probes[i]);
}
static uint64_t gw_pq_removals(const gw_prequal_stats_t *st, size_t i)
{
    return GW_RELAXED_LOAD(st->removals[i]);
}

static bool gw_pq_used(const gw_render_ctx_t *x, size_t u)
{
    for (size_t k = 0; k < x->nshards; k++)
        if (u < x->shards[k]->nupstreams && GW_RELAXED_LOAD(x->shards[k]->prequal[u]))
            return true;
    return false;
}

static void gw_render_pq_counter(const gw_render_ctx_t *x, const char *name, const char *help,
                                 const char *label, size_t count, const char *(*label_of)(int),
                                 gw_pq_field_fn field)
{
    gw_mbuf_t *b = x->b;
    gw_mbuf_family(b, name, "counter", help);
    for (size_t u = 0; u < x->cfg->nupstreams; u++) {
        if (!gw_pq_used(x, u))
            continue;
        for (size_t i = 0; i < count; i++) {
            uint64_t v = 0;
            for (size_t k = 0; k < x->nshards; k++) {
                const gw_prequal_stats_t *st =
                    u < x->shards[k]->nupstreams ? GW_RELAXED_LOAD(x->shards[k]->prequal[u]) : NULL;
                if (st)
                    v += field(st, i);
            }
            gw_mbuf_printf(b, "%s{", name);
            gw_mbuf_label(b, true, "upstream", x->cfg->upstreams[u].name);
            gw_mbuf_label(b, false, label, label_of((int)i));
            gw_mbuf_printf(b, "} %" PRIu64 "\n", v);
        }
    }
}

static const char *gw_pq_branch_label(int i)
{
    return gw_prequal_branch_name((gw_prequal_branch_t)i);
}
static const char *gw_pq_probe_label(int i)
{
    return gw_prequal_probe_stat_name((gw_prequal_probe_stat_t)i);
}
static const char *gw_pq_reason_label(int i)
{
    return gw_prequal_reason_name((gw_prequal_reason_t)i);
}

static void gw_render_prequal(const gw_render_ctx_t *x)
{
    gw_mbuf_t *b = x->b;
    const gw_config_t *cfg = x->cfg;
    bool any = false;
    for (size_t u = 0; u < cfg->nupstreams && !any; u++)
        any = gw_pq_used(x, u);
    if (!any)
        return;
    gw_render_pq_counter(x, "prequal_picks_total", "Prequal selections, by branch.", "branch",
                         GW_PREQUAL_BRANCH_COUNT, gw_pq_branch_label, gw_pq_picks);
    gw_render_pq_counter(x, "prequal_probes_total", "Prequal probes, by result.", "result",
                         GW_PREQUAL_PROBE_STAT_COUNT, gw_pq_probe_label, gw_pq_probes);
    gw_render_pq_counter(x, "prequal_pool_removals_total", "Prequal pool removals, by reason.",
                         "reason", GW_PREQUAL_REASON_COUNT, gw_pq_reason_label, gw_pq_removals);
    gw_mbuf_family(b, "prequal_pool_entries", "gauge", "Probe pool entries, summed over workers.");
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        if (!gw_pq_used(x, u))
            continue;
        uint64_t v = 0;
        for (size_t k = 0; k < x->nshards; k++) {
            const gw_prequal_stats_t *st = GW_RELAXED_LOAD(x->shards[k]->prequal[u]);
            if (st)
                v += GW_RELAXED_LOAD(st->pool_entries);
        }
        gw_mbuf_puts(b, "prequal_pool_entries{");
        gw_mbuf_label(b, true, "upstream", cfg->upstreams[u].name);
        gw_mbuf_printf(b, "} %" PRIu64 "\n", v);
    }
    gw_mbuf_family(b, "prequal_rif_threshold", "gauge",
                   "Hot/cold RIF threshold of the last selection (worker 0; +Inf: all cold).");
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        if (!gw_pq_used(x, u))
            continue;
        const gw_prequal_stats_t *st = NULL;
        for (size_t k = 0; k < x->nshards && !st; k++)
            st = GW_RELAXED_LOAD(x->shards[k]->prequal[u]);
        uint64_t thr = st ? GW_RELAXED_LOAD(st->rif_threshold) : 0;
        gw_mbuf_puts(b, "prequal_rif_threshold{");
        gw_mbuf_label(b, true, "upstream", cfg->upstreams[u].name);
        if (thr == GW_PREQUAL_THR_INF)
            gw_mbuf_puts(b, "} +Inf\n");
        else
            gw_mbuf_printf(b, "} %" PRIu64 "\n", thr);
    }
    gw_mbuf_family(b, "prequal_probe_rtt_seconds", "histogram", "Probe round-trip time.");
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        if (!gw_pq_used(x, u))
            continue;
        gw_histogram_t acc = {0};
        for (size_t k = 0; k < x->nshards; k++)
            gw_hist_accumulate(&acc, &x->shards[k]->prequal_probe_rtt[u]);
        x->tmp->len = 0;
        gw_mbuf_label(x->tmp, true, "upstream", cfg->upstreams[u].name);
        gw_mbuf_histogram(b, "prequal_probe_rtt_seconds", x->tmp->oom ? "" : x->tmp->p, &acc);
    }
    gw_mbuf_family(b, "prequal_backend_mode", "gauge",
                   "Workers in which the backend is in this probe mode (docs/PREQUAL.md "
                   "section 4).");
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        if (!gw_pq_used(x, u))
            continue;
        const gw_upstream_cfg_t *uc = &cfg->upstreams[u];
        for (uint32_t i = 0; i < gw_upstream_nslots(uc); i++) {
            const gw_backend_cfg_t *be = gw_render_slot(x, uc, i);
            if (be == NULL)
                continue;
            size_t g = be->gindex;
            for (int m = 0; m < GW_PREQUAL_MODE_COUNT; m++) {
                uint64_t v = 0;
                for (size_t k = 0; k < x->nshards; k++)
                    if (x->shards[k]->prequal[u] && g < x->shards[k]->nbackends)
                        v += GW_RELAXED_LOAD(x->shards[k]->prequal_mode[g]) == m;
                gw_mbuf_puts(b, "prequal_backend_mode{");
                gw_mbuf_label(b, true, "upstream", uc->name);
                gw_mbuf_label(b, false, "backend", be->url);
                gw_mbuf_label(b, false, "mode", gw_prequal_mode_name((gw_prequal_mode_t)m));
                gw_mbuf_printf(b, "} %" PRIu64 "\n", v);
            }
        }
    }
}

/* gw_lua_errors_total / gw_lua_slow_total{route,hook}, the strategy counters and
 * gw_lua_memory_bytes{worker}: only when the config has Lua. */
static void gw_render_lua(const gw_render_ctx_t *x)
{
    static const char *const hooks[GW_HOOK_COUNT] = {"on_request", "rewrite_path", "on_response",
                                                     "on_log"};
    const gw_config_t *cfg = x->cfg;
    if (!cfg->uses_lua)
        return;
    for (int f = 0; f < 2; f++) {
        const char *name = f == 0 ? "gw_lua_errors_total" : "gw_lua_slow_total";
        gw_mbuf_family(x->b, name, "counter",
                       f == 0 ? "Lua hook errors, by route and hook."
                              : "Lua hook calls slower than 10 ms, by route and hook.");
        for (size_t r = 0; r <= cfg->nroutes; r++) {
            uint8_t mask = r < cfg->nroutes ? cfg->routes[r].hooks | cfg->global_hooks : cfg->global_hooks;
            for (int h = 0; h < GW_HOOK_COUNT; h++) {
                if (!(mask & GW_HOOK_BIT(h)))
                    continue;
                uint64_t v = 0;
                for (size_t k = 0; k < x->nshards; k++) {
                    size_t row = gw_shard_route_row(cfg, x->shards[k], r);
                    if (row != SIZE_MAX)
                        v += GW_RELAXED_LOAD((f == 0 ? x->shards[k]->lua_errors
                                                     : x->shards[k]->lua_slow)[row * GW_HOOK_COUNT + (size_t)h]);
                }
                gw_mbuf_printf(x->b, "%s{", name);
                gw_mbuf_label(x->b, true, "route", gw_route_label(cfg, r));
                gw_mbuf_label(x->b, false, "hook", hooks[h]);
                gw_mbuf_printf(x->b, "} %" PRIu64 "\n", v);
            }
        }
    }
    for (int f = 0; f < 2; f++) {
        const char *name = f == 0 ? "gw_lua_strategy_errors_total" : "gw_lua_strategy_slow_total";
        gw_mbuf_family(x->b, name, "counter",
                       f == 0 ? "Lua strategy errors and invalid picks (answered by fallback_strategy)."
                              : "Lua strategy picks slower than 10 ms (logged with their duration).");
        for (size_t u = 0; u < cfg->nupstreams; u++) {
            if (!cfg->upstreams[u].lua_strategy)
                continue;
            uint64_t v = 0;
            for (size_t k = 0; k < x->nshards; k++)
                if (u < x->shards[k]->nupstreams)
                    v += GW_RELAXED_LOAD((f == 0 ? x->shards[k]->lua_strategy_errors
                                                 : x->shards[k]->lua_strategy_slow)[u]);
            gw_mbuf_printf(x->b, "%s{", name);
            gw_mbuf_label(x->b, true, "upstream", cfg->upstreams[u].name);
            gw_mbuf_printf(x->b, "} %" PRIu64 "\n", v);
        }
    }
    /* Per worker, not summed: each worker has its own state, and a leak shows in one of them. */
    gw_mbuf_family(x->b, "gw_lua_memory_bytes", "gauge",
                   "Bytes in the worker's Lua heap (collectgarbage count), as of the end of its "
                   "last request that ran Lua.");
    for (size_t k = 0; k < x->nshards; k++)
        gw_mbuf_printf(x->b, "gw_lua_memory_bytes{worker=\"%zu\"} %" PRIu64 "\n", k,
                       GW_RELAXED_LOAD(x->shards[k]->lua_memory_bytes));
}

/* gw_upstream_backends{upstream} and gw_registrations_total{upstream,event}. */
static void gw_render_membership(const gw_render_ctx_t *x)
{
    const gw_config_t *cfg = x->cfg;
    if (x->backends == NULL)
        return;
    gw_mbuf_family(x->b, "gw_upstream_backends", "gauge",
                   "Backends in the upstream now (static and registered).");
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        const gw_upstream_cfg_t *uc = &cfg->upstreams[u];
        uint32_t members = 0;
        for (uint32_t k = 0; k < gw_upstream_nslots(uc); k++)
            members += __atomic_load_n(&x->backends[gw_upstream_slot_gindex(uc, k)]->member,
                                       __ATOMIC_ACQUIRE) != 0;
        gw_mbuf_puts(x->b, "gw_upstream_backends{");
        gw_mbuf_label(x->b, true, "upstream", uc->name);
        gw_mbuf_printf(x->b, "} %" PRIu32 "\n", members);
    }
    if (x->hcheck != NULL) {
        gw_mbuf_family(x->b, "gw_health_checks_total", "counter",
                       "Active health checks by result (health.path).");
        for (size_t u = 0; u < cfg->nupstreams; u++) {
            if (cfg->upstreams[u].health.path == NULL)
                continue;
            for (int passed = 1; passed >= 0; passed--) {
                gw_mbuf_puts(x->b, "gw_health_checks_total{");
                gw_mbuf_label(x->b, true, "upstream", cfg->upstreams[u].name);
                gw_mbuf_label(x->b, false, "result", passed ? "pass" : "fail");
                gw_mbuf_printf(x->b, "} %" PRIu64 "\n", gw_hcheck_count(x->hcheck, u, passed));
            }
        }
    }
    if (x->registry == NULL || !cfg->registration.enabled)
        return;
    gw_mbuf_family(x->b, "gw_registrations_total", "counter",
                   "Backend registration events: registered, renewed (heartbeat), unregistered, "
                   "expired (TTL), rejected (hooks.on_register).");
    for (size_t u = 0; u < cfg->nupstreams; u++)
        for (int e = 0; e < GW_REG_EVENT_COUNT; e++) {
            gw_mbuf_puts(x->b, "gw_registrations_total{");
            gw_mbuf_label(x->b, true, "upstream", cfg->upstreams[u].name);
            gw_mbuf_label(x->b, false, "event", gw_registry_event_name((enum gw_reg_event)e));
            gw_mbuf_printf(x->b, "} %" PRIu64 "\n", gw_registry_events(x->registry, u, (enum gw_reg_event)e));
        }
}

char *gw_metrics_render(const gw_config_t *cfg, gw_metrics_shard_t *const *shards, size_t nshards,
                        gw_backend_t *const *backends, const gw_registry_t *registry,
                        const gw_hcheck_t *hcheck, size_t *len)
{
    gw_mbuf_t b = {0}, tmp = {0};

    gw_render_ctx_t x = {&b, &tmp, cfg, shards, nshards, backends, registry, hcheck};
    gw_render_requests(&x);
    gw_render_upstreams(&x);
    gw_render_membership(&x);
    gw_render_prequal(&x);
    gw_render_lua(&x);

    uint64_t active = 0, total = 0;
    for (size_t k = 0; k < nshards; k++) {
        active += GW_RELAXED_LOAD(shards[k]->connections_active);
        total += GW_RELAXED_LOAD(shards[k]->connections_total);
    }
    gw_mbuf_family(&b, "gw_connections_active", "gauge", "Open client connections.");
    gw_mbuf_printf(&b, "gw_connections_active %" PRIu64 "\n", active);
    gw_mbuf_family(&b, "gw_connections_total", "counter", "Client connections accepted.");
    gw_mbuf_printf(&b, "gw_connections_total %" PRIu64 "\n", total);
    gw_mbuf_family(&b, "gw_workers", "gauge", "Worker threads.");
    gw_mbuf_printf(&b, "gw_workers %zu\n", nshards);
    gw_mbuf_family(&b, "gw_build_info", "gauge", "Build information; the value is always 1.");
    gw_mbuf_puts(&b, "gw_build_info{");
    gw_mbuf_label(&b, true, "version", PGW_VERSION);
    gw_mbuf_puts(&b, "} 1\n");

    bool failed = b.oom || tmp.oom;
    free(tmp.p);
    if (failed) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
