/*
 * hedge: the pure parts of request hedging (an upstream's `hedge = {...}`): when to send a second
 * copy of a slow idempotent request, and how many such copies an upstream may cost.
 *
 * One gw_hedge_t belongs to one upstream in one worker. It does no I/O and reads no clock: the
 * proxy feeds it every request that may be hedged (gw_hedge_earn), every latency to a response
 * head it observes (gw_hedge_observe), and asks it for the delay and for a hedge's token. The
 * racing of the two attempts, their cancellation and the counting live in proxy.c.
 *
 * Budget: a token bucket. Each request that may be hedged earns budget_percent/100 of a token, a
 * hedge costs one, and the bucket holds at most GW_HEDGE_BURST tokens; so over any stretch of
 * traffic hedges are at most budget_percent % of the requests plus the burst, and an upstream
 * that is slow for everyone is not sent twice the load. Tokens are counted in thousandths so the
 * arithmetic is exact.
 *
 * Delay: `after_ms`, or `after_quantile` of this upstream's latest GW_HEDGE_WINDOW latencies (in
 * this worker), recomputed every GW_HEDGE_RECOMPUTE new samples so a request costs no sort. Until
 * GW_HEDGE_MIN_SAMPLES latencies were seen the delay is GW_HEDGE_COLD_MS; it is never below
 * GW_HEDGE_MIN_MS (a hedge sent at once would only double the load).
 */
#ifndef GW_HEDGE_H
#define GW_HEDGE_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

#define GW_HEDGE_BURST 10       /* tokens the bucket holds at most */
#define GW_HEDGE_WINDOW 128     /* latencies the quantile is taken over */
#define GW_HEDGE_RECOMPUTE 8    /* new samples between two quantile computations */
#define GW_HEDGE_MIN_SAMPLES 16 /* fewer: the delay is GW_HEDGE_COLD_MS */
#define GW_HEDGE_COLD_MS 100
#define GW_HEDGE_MIN_MS 1

/* gw_hedges_total{outcome}. sent = won + lost + failed + those whose request ended otherwise
 * (the client left, or a hook answered). */
typedef enum gw_hedge_outcome {
    GW_HEDGE_SENT = 0,           /* a hedge went to another backend */
    GW_HEDGE_WON,                /* the hedge's response head came first */
    GW_HEDGE_LOST,               /* the original's response head came first */
    GW_HEDGE_FAILED,             /* the hedge failed (connect, reset, timeout) before a head */
    GW_HEDGE_SKIPPED_BUDGET,     /* due, but the budget was empty */
    GW_HEDGE_SKIPPED_NO_BACKEND, /* due, but every backend was tried already */
    GW_HEDGE_OUTCOMES
} gw_hedge_outcome_t;

/** The outcome's label value ("sent", "won", ...). */
const char *gw_hedge_outcome_name(gw_hedge_outcome_t o);

typedef struct gw_hedge {
    const gw_hedge_cfg_t *cfg;
    uint32_t tokens_milli; /* thousandths of a hedge */
    uint32_t *window;      /* [GW_HEDGE_WINDOW] latencies in µs, a ring; NULL with after_ms */
    uint32_t nsamples;     /* in the window, up to GW_HEDGE_WINDOW */
    uint32_t next;         /* ring position of the next sample */
    uint32_t fresh;        /* samples since delay_ms was computed */
    uint32_t delay_ms;
} gw_hedge_t;

/** Prepares `h` for `cfg` (which must outlive it), with an empty budget. Allocates the latency
 * window when the delay is a quantile. Returns 0 or -ENOMEM. */
int gw_hedge_init(gw_hedge_t *h, const gw_hedge_cfg_t *cfg);
/** Frees what gw_hedge_init allocated (idempotent; a zeroed `h` is fine). */
void gw_hedge_free(gw_hedge_t *h);

/** A request that may be hedged started: the budget earns budget_percent/100 of a hedge. */
void gw_hedge_earn(gw_hedge_t *h);
/** Takes one hedge's token; false (and nothing taken) when there is less than one. */
bool gw_hedge_take(gw_hedge_t *h);
/** Gives back a token taken for a hedge that was not sent after all (no backend left). */
void gw_hedge_refund(gw_hedge_t *h);

/** Records one latency to a response head, in µs (ignored with a fixed delay). */
void gw_hedge_observe(gw_hedge_t *h, uint64_t latency_us);
/** How long a request waits for a response head before it is hedged, in ms (>= 1). */
uint32_t gw_hedge_delay_ms(const gw_hedge_t *h);

#endif
