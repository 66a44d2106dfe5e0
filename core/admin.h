/*
 * admin: the admin listener on the main thread's loop (ARCHITECTURE.md §8): GET /metrics, /status and
 * /healthz, POST /register and /unregister. It is a small HTTP/1.1 server of its own (llhttp, keep-alive, request size
 * limits); nothing on it touches the workers' loops. Shards and backends are read with relaxed
 * atomics while the workers run.
 */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include <uv.h>

#include "backend.h"
#include "config.h"
#include "metrics.h"

typedef struct gw_admin gw_admin_t;

typedef struct gw_admin_source {
    const gw_config_t *cfg;
    gw_metrics_shard_t *const *shards;
    size_t nshards;
    gw_backend_t *const *backends; /* cfg->nbackends_total, by gindex */
    struct gw_registry *registry;  /* POST /register, /unregister; NULL: registration is off */
    const struct gw_hcheck *hcheck; /* active health checks (metrics), or NULL */
    /* POST /reload: reloads gateway.lua (it may change every field above); returns the status
     * and a malloc'd JSON answer. NULL: no reloads. */
    int (*reload)(void *arg, char **json);
    void *reload_arg;
} gw_admin_source_t;

/**
 * Binds cfg->admin_listen on `loop` and starts serving. `src` must outlive the admin.
 * Returns 0 and *out, or a negative libuv error; *out is untouched then and the listener handle is
 * already closing (the loop must run once more before uv_loop_close can succeed).
 */
int gw_admin_start(uv_loop_t *loop, const gw_admin_source_t *src, gw_admin_t **out);

/**
 * Stops listening and closes every admin connection; frees the admin once every handle's close
 * callback has run, then calls done(arg) if done is not NULL.
 */
void gw_admin_close(gw_admin_t *a, void (*done)(void *arg), void *arg);

/** The port the admin listens on (useful after binding port 0), or a negative libuv error. */
int gw_admin_port(const gw_admin_t *a);

#endif
