/*
 * server: the set of workers serving one config. The main thread creates it (binding every
 * listening socket itself, so an unusable address is reported before anything runs), then each
 * worker thread runs its own loop. The backend table and the metrics shards live here and outlive
 * the workers; the admin listener reads them.
 */
#ifndef GW_SERVER_H
#define GW_SERVER_H

#include <uv.h>

#include "backend.h"
#include "config.h"
#include "metrics.h"

typedef struct gw_server gw_server_t;

/**
 * Binds the listeners and starts cfg->workers threads. `main_loop` is the main thread's loop:
 * `on_stopped(arg)` runs there once every worker has finished after gw_server_drain/stop.
 * Returns 0, or a negative error with *err set to a malloc'd message (nothing is left running).
 * `cfg` must outlive the server.
 */
int gw_server_start(const gw_config_t *cfg, uv_loop_t *main_loop, void (*on_stopped)(void *),
                    void *arg, gw_server_t **out, char **err);

/** Graceful stop: listeners close, in-flight requests finish (up to timeouts.drain_ms). */
void gw_server_drain(gw_server_t *s);
/** Immediate stop: every connection closes now. */
void gw_server_stop(gw_server_t *s);
/** Joins the threads and frees everything; call after on_stopped ran. */
void gw_server_free(gw_server_t *s);

gw_metrics_shard_t *const *gw_server_shards(const gw_server_t *s, size_t *n);
gw_backend_t *const *gw_server_backends(const gw_server_t *s);

#endif
