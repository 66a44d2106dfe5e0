/*
 * status: the JSON document behind the admin's GET /status (ARCHITECTURE.md §8): per upstream and backend,
 * in-flight requests, latency, health and ejection, Prequal probe mode, and worker 0's current
 * probe pool. Read on the main thread with relaxed loads; the pool comes from the snapshot worker
 * 0 refreshes every idle_probe_ms.
 */
#ifndef GW_STATUS_H
#define GW_STATUS_H

#include <stddef.h>

#include "admin.h"

/** Renders the status document. Returns a malloc'd NUL-terminated buffer (caller frees) and its
 * length in *len, or NULL on OOM. */
char *gw_status_render(const gw_admin_source_t *src, uint64_t now_ms, size_t *len);

#endif
