/*
 * backend: the state of one backend that every worker shares. The table of backends is built by
 * the registry on the main thread (indexed by gindex: one entry per slot of every upstream) and
 * outlives the workers.
 * Fields that change at run time are read and written with relaxed atomics; a worker never takes
 * a lock on the request path.
 */
#ifndef GW_BACKEND_H
#define GW_BACKEND_H

#include <stdint.h>

#include "common.h"
#include "config.h"

/* Room for a registered URL: "http://[" + the longest IPv6 text + "]:65535". */
#define GW_SLOT_URL_MAX 72

/* Slot k of an upstream (see gw_upstream_cfg_t.nslots): static backends point at their config;
 * a registration slot's cfg lives in the registry, at a fixed address, and its text is rewritten
 * only while no worker can be using the slot (registry.c explains when). */
typedef struct gw_backend {
    const gw_backend_cfg_t *cfg;
    uint32_t member;   /* 1 = in its upstream now (static and accepted, or registered); atomic */
    uint32_t registered; /* 1 = a registration slot (not a static backend) */
    uint32_t upstream; /* index of its upstream in the config */
    uint32_t index;    /* index within its upstream */
    uint32_t inflight; /* requests in flight from all workers (GW_ATOMIC_ADD) */
    uint32_t healthy;  /* 1 = may be picked: not ejected and not down (health.c keeps it so) */
    uint32_t down;     /* 1 while active health checks fail it (hcheck.c, main thread) */
    uint32_t epoch;    /* bumped by the registry whenever the slot gets a (new) registration */
    uint32_t revision; /* bumped by the registry when a member's weight or meta changes */
    uint32_t fails;    /* consecutive transport failures seen by any worker (health.c) */
    uint32_t ejected;  /* 1 while ejected by the passive health check */
    uint32_t ejections; /* ejections in a row: the backoff exponent */
    uint64_t ejected_until_ms;
    uint64_t latency_ewma_us; /* time to response head, smoothed (for /status) */
} gw_backend_t;

#endif
