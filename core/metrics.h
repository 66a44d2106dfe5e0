/*
 * metrics: counters and histograms, one shard per worker (written only by its worker, with
 * relaxed atomics), summed when /metrics is scraped on the main thread. Prometheus text
 * exposition format 0.0.4.
 */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "backend.h"
#include "config.h"
#include "hedge.h"
#include "prequal.h"

/* Upper bounds in seconds: 0.5ms .. 30s, then +Inf. */
#define GW_HIST_NBUCKETS 15

typedef struct gw_histogram {
    uint64_t buckets[GW_HIST_NBUCKETS + 1]; /* non-cumulative; the last is +Inf */
    uint64_t count;
    uint64_t sum_us;
} gw_histogram_t;

enum gw_upstream_error {
    GW_UERR_CONNECT = 0, /* connect refused or failed */
    GW_UERR_TIMEOUT,     /* connect, send or read timeout */
    GW_UERR_PROTOCOL,    /* malformed or ambiguous response */
    GW_UERR_RESET,       /* connection closed or reset before the response ended */
    GW_UERR_MAX
};

/* Status classes: index 1..5 for 1xx..5xx, 0 for anything else. */
#define GW_STATUS_CLASSES 6

/* Worker 0's Prequal pool as /status shows it, refreshed by that worker every idle_probe_ms. */
#define GW_PQ_SNAPSHOT_MAX 64
typedef struct gw_pq_snapshot {
    uv_mutex_t lock;
    gw_prequal_entry_info_t entries[GW_PQ_SNAPSHOT_MAX];
    size_t n;     /* entries copied, <= GW_PQ_SNAPSHOT_MAX */
    size_t total; /* entries in the pool */
    uint64_t rif_threshold; /* GW_PREQUAL_THR_INF: +Inf */
    uint64_t taken_ms;      /* loop time of the snapshot, 0: none yet */
} gw_pq_snapshot_t;

typedef struct gw_metrics_shard {
    size_t nroutes;    /* rows below are nroutes + 1: the last row is "no route" */
    size_t nbackends;  /* by gw_backend_cfg_t.gindex */
    size_t nupstreams;
    uint64_t (*requests)[GW_STATUS_CLASSES]; /* [nroutes + 1][class] */
    gw_histogram_t *request_duration;        /* [nroutes + 1] */
    uint64_t *upstream_requests;             /* [nbackends]: requests sent */
    gw_histogram_t *upstream_latency;        /* [nbackends]: time to response head */
    uint64_t (*upstream_errors)[GW_UERR_MAX]; /* [nbackends][kind] */
    uint64_t *retries;                       /* [nupstreams] */
    uint64_t (*hedges)[GW_HEDGE_OUTCOMES];   /* [nupstreams][outcome] */
    uint64_t connections_active;             /* gauge: the worker increments and decrements */
    uint64_t connections_total;
    /* Prequal (docs/PREQUAL.md §5), for upstreams whose strategy is prequal; NULL elsewhere. The
     * stats belong to the worker's prequal instance, which outlives every scrape. */
    const gw_prequal_stats_t **prequal;      /* [nupstreams] */
    gw_histogram_t *prequal_probe_rtt;       /* [nupstreams] */
    uint8_t *prequal_mode;                   /* [nbackends]: gw_prequal_mode_t in this worker */
    gw_pq_snapshot_t *prequal_snap;          /* [nupstreams] */
    uint64_t *lua_errors;                    /* [(nroutes + 1) * GW_HOOK_COUNT] */
    uint64_t *lua_slow;                      /* [(nroutes + 1) * GW_HOOK_COUNT] */
    uint64_t *lua_strategy_errors;           /* [nupstreams]: errors and invalid picks */
    uint64_t *lua_strategy_slow;             /* [nupstreams]: picks slower than GW_LUA_SLOW_NS */
    uint64_t lua_memory_bytes;               /* gauge: the worker's Lua heap at its last request end */
} gw_metrics_shard_t;

/** Allocates a zeroed shard sized for `cfg`. Aborts on OOM (control structure). */
gw_metrics_shard_t *gw_metrics_shard_new(const gw_config_t *cfg);
void gw_metrics_shard_free(gw_metrics_shard_t *s);
/** Zeroes the per-backend series of gindex `g` (a registration slot taken by a new URL). */
void gw_metrics_shard_reset_backend(gw_metrics_shard_t *s, uint32_t g);

/** Records one observation of `usec` microseconds. Single writer. */
void gw_histogram_observe(gw_histogram_t *h, uint64_t usec);

/** Index 0..5 for a status code (see GW_STATUS_CLASSES). */
static inline int gw_status_class(int status)
{
    return (status >= 100 && status < 600) ? status / 100 : 0;
}

/**
 * Renders every metric in Prometheus text format: the shards summed, plus per-backend gauges read
 * from `backends` (indexed by gindex, cfg->nbackends_total entries) and the registration events
 * of `registry` and the active checks of `hcheck` (either may be NULL). Returns a malloc'd buffer
 * (caller frees) and its length in *len, or NULL on OOM.
 */
typedef struct gw_registry gw_registry_t;
typedef struct gw_hcheck gw_hcheck_t;
char *gw_metrics_render(const gw_config_t *cfg, gw_metrics_shard_t *const *shards, size_t nshards,
                        gw_backend_t *const *backends, const gw_registry_t *registry,
                        const gw_hcheck_t *hcheck, size_t *len);

#endif
