/*
 * probe: asynchronous Prequal probes (docs/PREQUAL.md §3.1). Each worker keeps at most one
 * probe connection per backend: persistent, keep-alive, separate from the request pool so a probe
 * never waits behind a slow request on the same connection (HTTP/1.1 answers in order). A probe
 * is `GET <probe_path>`; its reply carries the backend's requests in flight and latency estimate
 * in one of the wire formats of docs/PREQUAL.md §1. Probes are never on a request's critical path:
 * the caller fires them and learns the result in a callback later.
 */
#ifndef GW_PROBE_H
#define GW_PROBE_H

#include <llhttp.h>
#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "common.h"
#include "http1.h"

typedef struct gw_worker gw_worker_t;

enum gw_probe_status {
    GW_PROBE_OK = 0,     /* a reply with load signals */
    GW_PROBE_NO_SIGNALS, /* a reply without them (404/405, or neither headers nor JSON) */
    GW_PROBE_FAILED,     /* connect error, reset, malformed reply */
    GW_PROBE_TIMEOUT,    /* no reply within the probe timeout */
};

typedef struct gw_probe_signals {
    bool found;
    uint32_t rif;
    uint64_t latency_us;
} gw_probe_signals_t;

typedef struct gw_probe_result {
    enum gw_probe_status status;
    gw_probe_signals_t sig;
    uint64_t rtt_ns;  /* from send to reply */
    uint64_t recv_ms; /* loop time when the reply arrived (its receipt time) */
} gw_probe_result_t;

typedef void (*gw_probe_cb)(void *arg, gw_backend_t *b, const gw_probe_result_t *r);

/**
 * Sends a probe to `b` on the worker's probe connection to it (connecting first if needed).
 * `cb(arg, b, result)` runs exactly once, later, from the loop, unless this returns an error
 * (then it never runs: libuv's rule). Returns 0, UV_EBUSY when a probe to `b` is already in
 * flight from this worker, or another negative error.
 */
int gw_probe_send(gw_worker_t *w, gw_backend_t *b, const char *path, uint32_t timeout_ms,
                  gw_probe_cb cb, void *arg);

/** True while a probe from this worker to `b` has not been answered. */
bool gw_probe_busy(const gw_worker_t *w, const gw_backend_t *b);

/** Closes the worker's probe connection to `b` (it left its upstream); a pending callback runs
 * with GW_PROBE_FAILED. */
void gw_probe_close_backend(gw_worker_t *w, const gw_backend_t *b);

/** Closes every probe connection of the worker; pending callbacks run with GW_PROBE_FAILED. */
void gw_probe_close_all(gw_worker_t *w);

/**
 * Reads load signals from a reply (pure). Headers win: `X-Prequal-RIF` and
 * `X-Prequal-Latency-Us`. Else the JSON body: {"rif": N, "latency_ms": X} or OpenPrequal's
 * {"in_flight_requests": N, "rif_avg_latency": X seconds}. Returns true and fills `out` when
 * both signals were found and valid.
 */
bool gw_probe_parse_signals(const gw_header_t *headers, size_t nheaders, gw_slice_t body,
                            gw_probe_signals_t *out);

/** The header part of gw_probe_parse_signals, for piggybacked signals on normal responses. */
bool gw_probe_parse_headers(const gw_header_t *headers, size_t nheaders, gw_probe_signals_t *out);

#define GW_PROBE_BODY_MAX 1024
#define GW_PROBE_HEADERS_MAX 32

/* A probe reply being read: llhttp in response mode, the head's fields as slices of the bytes
 * fed (the caller keeps them), and the body copied aside up to GW_PROBE_BODY_MAX. A reply is
 * small; fields past GW_PROBE_HEADERS_MAX are ignored and a longer body counts as none. */
typedef struct gw_probe_reply {
    llhttp_t parser;
    bool message_done;
    bool in_field;
    bool skip_field; /* the current field is one past GW_PROBE_HEADERS_MAX */
    bool body_overflow;
    bool keep; /* complete, nothing after it, and the connection may carry another probe */
    uint32_t nheaders;
    gw_header_t headers[GW_PROBE_HEADERS_MAX];
    size_t body_len;
    char body[GW_PROBE_BODY_MAX];
} gw_probe_reply_t;

enum { GW_PROBE_REPLY_MORE = 0, GW_PROBE_REPLY_DONE = 1, GW_PROBE_REPLY_BAD = -1 };

/** Prepares `r` for a new reply. */
void gw_probe_reply_init(gw_probe_reply_t *r);

/**
 * Parses the next `n` bytes of the reply; they must directly follow the bytes fed before in
 * the same buffer, which stays valid while `r` is read. Returns GW_PROBE_REPLY_DONE when the
 * reply is complete (r->keep set), GW_PROBE_REPLY_MORE when it needs more bytes, or
 * GW_PROBE_REPLY_BAD when it is not valid HTTP/1.1.
 */
int gw_probe_reply_feed(gw_probe_reply_t *r, const char *p, size_t n);

/** The load signals of a complete reply: a 2xx whose head or body has them (as in
 * gw_probe_parse_signals). */
bool gw_probe_reply_signals(const gw_probe_reply_t *r, gw_probe_signals_t *out);

#endif
