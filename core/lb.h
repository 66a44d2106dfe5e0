/*
 * lb: the strategy interface and the native strategies. A strategy is an ops table (one file per
 * strategy, like HAProxy's backend algorithms) with per-worker state, so `pick` needs no lock.
 * It is pure: time and randomness come in through gw_lb_ctx_t, so tests are exact.
 *
 * Contract of `pick`: return the index (within ctx->backends) of a healthy backend that is not in
 * ctx->tried; when no healthy backend is left untried, an unhealthy untried one may be returned
 * (better than failing when every health signal is wrong); return -1 only when every backend has
 * been tried. The caller sets the tried bit of what it got before asking again (retries).
 */
#ifndef GW_LB_H
#define GW_LB_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "common.h"
#include "config.h"

typedef struct gw_lb_ctx {
    gw_backend_t *const *backends; /* the upstream's backends */
    size_t n;
    const uint64_t *tried; /* bit i set: backends[i] already tried for this request; may be NULL */
    uint64_t *rng;         /* the worker's generator */
    uint64_t now_ms;
    void *worker;          /* the gw_worker_t calling (for strategies that do I/O, e.g. probes) */
    uint32_t upstream;     /* the upstream's index in the config */
    void *conn;            /* the gw_conn_t whose request is being routed (Lua strategies) */
} gw_lb_ctx_t;

enum gw_lb_outcome {
    GW_LB_OK = 0,         /* a response head arrived (any status) */
    GW_LB_CONNECT_ERROR,  /* could not connect */
    GW_LB_TIMEOUT,        /* connect or read timeout */
    GW_LB_PROTOCOL_ERROR, /* malformed response, reset mid-response */
    GW_LB_CANCELLED,      /* the gateway gave up waiting (a hedge race was lost, or the client
                           * left before the response head): latency_ms is how long it had
                           * waited, a lower bound of the real latency */
};

typedef struct gw_lb_result {
    enum gw_lb_outcome outcome;
    int status;            /* HTTP status when outcome is GW_LB_OK */
    double latency_ms;     /* time to the response head (0 for a failure) */
    uint32_t rif_at_start; /* the backend's in-flight count (all workers) when it was sent */
    bool has_signals;      /* the response carried X-Prequal-RIF / X-Prequal-Latency-Us */
    uint32_t sig_rif;
    uint64_t sig_latency_us;
} gw_lb_result_t;

typedef struct gw_lb_ops {
    const char *name;
    /** Creates per-worker state for an upstream with `n` backends. Returns 0 or negative. */
    int (*create)(const gw_upstream_cfg_t *u, size_t n, void **state);
    void (*destroy)(void *state);
    /** See the contract above. */
    int (*pick)(void *state, const gw_lb_ctx_t *ctx);
    /** Optional: learns from the outcome of a request sent to backends[idx]. */
    void (*on_result)(void *state, const gw_lb_ctx_t *ctx, size_t idx, const gw_lb_result_t *r);
    /** Optional: the backend list changed (size or order, a member joined or left, or a
     * member's weight or meta changed); ctx describes the new list, with the slots that are
     * not members in ctx->tried. */
    void (*on_backends_changed)(void *state, const gw_lb_ctx_t *ctx);
    /** Optional: the worker's loop is about to run; called once, in the worker's thread (per-
     * worker binding: a Lua strategy's view and init). ctx is as for on_backends_changed. */
    void (*start)(void *state, const gw_lb_ctx_t *ctx);
    /** Optional: the worker is shutting down; close any handle the state holds (the loop must
     * be able to end). `destroy` follows after the loop ended. */
    void (*stop)(void *state);
    /** The strategy wants piggybacked load signals in gw_lb_result_t (the proxy parses the
     * response headers for them only then). */
    bool wants_signals;
} gw_lb_ops_t;

/** The native strategy called `name`, or NULL. */
const gw_lb_ops_t *gw_lb_find(const char *name);

/** Names of all native strategies, NULL-terminated (for config validation messages). */
const char *const *gw_lb_names(void);

static inline bool gw_lb_tried(const gw_lb_ctx_t *ctx, size_t i)
{
    return ctx->tried && (ctx->tried[i / 64] >> (i % 64)) & 1;
}

static inline void gw_lb_set_tried(uint64_t *tried, size_t i)
{
    tried[i / 64] |= (uint64_t)1 << (i % 64);
}

extern const gw_lb_ops_t gw_lb_round_robin;
extern const gw_lb_ops_t gw_lb_prequal;
/* The adapter for an upstream whose strategy is a Lua table (lb_lua.c); not in the registry. */
extern const gw_lb_ops_t gw_lb_lua;

/* Prequal's pool for Lua strategies' backend views: backend's entry in a prequal state's pool,
 * false when it has none (lb_prequal.c). */
bool gw_lb_prequal_entry(void *state, uint32_t backend, uint64_t now_ms,
                         gw_prequal_entry_info_t *out);
extern const gw_lb_ops_t gw_lb_weighted_round_robin;
extern const gw_lb_ops_t gw_lb_random;
extern const gw_lb_ops_t gw_lb_weighted_random;
extern const gw_lb_ops_t gw_lb_least_conn;
extern const gw_lb_ops_t gw_lb_p2c;
extern const gw_lb_ops_t gw_lb_ewma;
extern const gw_lb_ops_t gw_lb_least_score;

#endif
