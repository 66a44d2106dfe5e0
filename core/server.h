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
 * `on_stopped(arg)` runs there once every worker has finished after gw_server_drain/stop and the
 * server's own handles are closed (it may call gw_server_free).
 * Returns 0, or a negative error with *err set to a malloc'd message (nothing is left running).
 * `cfg` and `backends` (the registry's table, by gindex) must outlive the server.
 */
int gw_server_start(const gw_config_t *cfg, gw_backend_t *const *backends, uv_loop_t *main_loop,
                    void (*on_stopped)(void *), void *arg, gw_server_t **out, char **err);

/**
 * The same, for a reload: worker i of the new server takes over (a duplicate of) the listening
 * socket of worker i of `running` for every address both configs listen on, so connections
 * waiting in that socket's accept queue are not lost when `running` drains; other addresses and
 * workers bind sockets of their own. `running` must keep running until this returns.
 */
int gw_server_start_from(const gw_config_t *cfg, gw_backend_t *const *backends, uv_loop_t *main_loop,
                         void (*on_stopped)(void *), void *arg, const gw_server_t *running,
                         gw_server_t **out, char **err);

/** Graceful stop: listeners close, in-flight requests finish (up to timeouts.drain_ms). */
void gw_server_drain(gw_server_t *s);
/** Immediate stop: every connection closes now. */
void gw_server_stop(gw_server_t *s);
/** Joins the threads and frees everything; call after on_stopped ran. */
void gw_server_free(gw_server_t *s);

gw_metrics_shard_t *const *gw_server_shards(const gw_server_t *s, size_t *n);

/* Membership (registry.c): the main thread changes backends' `member` flags, then announces the
 * change; every worker applies it on its own loop and acknowledges the generation. */

/** Announces a membership change to every worker. Returns its generation. */
uint64_t gw_server_membership_changed(gw_server_t *s);
/** The generation of the last announcement. */
uint64_t gw_server_membership_gen(const gw_server_t *s);
/** True once every running worker has applied generation `gen` (or a later one). */
bool gw_server_membership_acked(const gw_server_t *s, uint64_t gen);
/** Zeroes gindex `g`'s per-backend metrics in every shard (a slot taken by a new URL; no worker
 * uses it then). */
void gw_server_reset_backend(gw_server_t *s, uint32_t g);

#endif
