/*
 * hcheck: active health checks (ARCHITECTURE.md §3: the main thread runs them). For every upstream with
 * `health.path`, each member backend gets `GET <path>` every `interval_ms` on a new connection
 * (`Connection: close`, like HAProxy's and nginx's checks: a check also proves that the backend
 * still accepts connections). A 2xx or 3xx within `timeout_ms` passes; anything else (another
 * status, a refused or reset connection, a timeout, a malformed reply) fails.
 * `unhealthy_threshold` failures in a row take the backend down, `healthy_threshold` passes in a
 * row bring it back (gw_health_set_down: down backends are neither picked nor probed). Backends
 * start up; a registration starts over from up.
 *
 * One check per backend at a time; the upstream's timer skips a backend whose last check has not
 * finished. Results of a check that began before the backend's registration changed (its epoch)
 * are dropped.
 */
#ifndef GW_HCHECK_H
#define GW_HCHECK_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "backend.h"
#include "config.h"

typedef struct gw_hcheck gw_hcheck_t;

/* The pure part: a backend's streak and the decision it leads to. */
typedef struct gw_hcheck_streak {
    uint32_t passes; /* in a row */
    uint32_t fails;  /* in a row */
} gw_hcheck_streak_t;

enum { GW_HCHECK_SAME = 0, GW_HCHECK_GO_DOWN, GW_HCHECK_GO_UP };

/** Records one check result for a backend that is `down` now. Returns GW_HCHECK_GO_DOWN or
 * GW_HCHECK_GO_UP when the backend crosses a threshold, else GW_HCHECK_SAME. */
int gw_hcheck_record(gw_hcheck_streak_t *s, const gw_health_cfg_t *h, bool down, bool passed);

/** Starts the checks of every upstream that has health.path (none: *out = NULL, returns 0).
 * `backends` is the registry's table; `cfg` and it must outlive the checker. */
int gw_hcheck_start(uv_loop_t *loop, const gw_config_t *cfg, gw_backend_t *const *backends,
                    gw_hcheck_t **out);

/** Stops checking and closes every handle; the checker frees itself once they are closed (the
 * loop must run). NULL is fine. */
void gw_hcheck_stop(gw_hcheck_t *hc);

/** Checks run so far by upstream u: passed, and failed (for /metrics). */
uint64_t gw_hcheck_count(const gw_hcheck_t *hc, size_t u, bool passed);

#endif
