/*
 * health: passive health checking (outlier ejection). Workers report each request's outcome; a
 * backend with `max_fails` consecutive transport failures (connect error, timeout, reset,
 * malformed response) is ejected: strategies skip it and Prequal neither probes nor picks it.
 * The ejection lasts eject_ms, doubled for every ejection in a row up to max_eject_ms, and the
 * main thread re-admits it when the time is up (gw_health_tick). At most max_ejected_percent of
 * an upstream is ejected at once, so a fault on the gateway's side (or a bad deploy everywhere)
 * never empties an upstream. A 5xx is not a transport failure and does not count: the backend
 * answered, and the retry and Prequal logic deal with it.
 *
 * Every function is safe to call from any thread: the state lives in the shared gw_backend_t
 * and changes with atomic operations only.
 */
#ifndef GW_HEALTH_H
#define GW_HEALTH_H

#include <stdint.h>

#include "backend.h"
#include "config.h"

/** A request to `b` failed at the transport level. `peers` are all backends of its upstream
 * (for the ejection cap). Returns true when this call ejected the backend. */
bool gw_health_on_failure(gw_backend_t *b, gw_backend_t *const *peers, size_t npeers,
                          const gw_health_cfg_t *h, uint64_t now_ms);

/** A request to `b` got a response: its failure streak (and backoff) start over. */
void gw_health_on_success(gw_backend_t *b);

/** Active checks (hcheck.c) found `b` down (true) or up again (false). `healthy` becomes
 * "not down and not ejected". Returns true when `down` changed. Main thread. */
bool gw_health_set_down(gw_backend_t *b, bool down);

/** Forgets everything about `b`'s health: up, not ejected, no failures (a slot that now holds
 * another backend; no worker is using it). */
void gw_health_reset(gw_backend_t *b);

/** `b` (not yet used by any worker) takes over `from`'s passive ejection: a reload's new
 * backend table. Active checks start over (`down` stays as it is). */
void gw_health_adopt(gw_backend_t *b, const gw_backend_t *from);

/** Re-admits every ejected backend whose time is up (it stays unhealthy while active checks
 * hold it down). Returns how many it re-admitted. */
size_t gw_health_tick(gw_backend_t *const *all, size_t n, uint64_t now_ms);

#endif
