/*
 * registry: backend membership (ARCHITECTURE.md §3, §8). It owns the backend table every worker reads:
 * one gw_backend_t per slot of every upstream (static backends first, then the registration
 * slots reserved by `registration.max_backends`), indexed by gindex. Static backends join at load
 * (hooks.on_register may refuse one); registered ones join and leave through the admin API's
 * POST /register and /unregister, and leave when their TTL passes without a heartbeat.
 *
 * Threads: only the main thread calls this module. A change sets the backend's `member` flag and
 * asks the server to tell every worker (gw_server_membership_changed); each worker then rebuilds
 * its view (strategy state, Lua strategy view, pools). Requests in flight to a leaving backend
 * finish normally.
 */
#ifndef GW_REGISTRY_H
#define GW_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "backend.h"
#include "config.h"

typedef struct gw_registry gw_registry_t;
typedef struct gw_server gw_server_t;

enum gw_reg_event {
    GW_REG_REGISTERED = 0,
    GW_REG_RENEWED,
    GW_REG_UNREGISTERED,
    GW_REG_EXPIRED,
    GW_REG_REJECTED,
    GW_REG_EVENT_COUNT
};

/**
 * Builds the backend table for `cfg` and admits the static backends (running hooks.on_register
 * for each when the config has it). Returns 0, or -1 with *err set to a malloc'd message (a
 * failing on_register at load is a configuration error, reported like one).
 */
int gw_registry_new(const gw_config_t *cfg, gw_registry_t **out, char **err);

/**
 * A reload: `r` (new, not started) takes over from `old` what the new config allows. Registered
 * members of an upstream that still exists, with registration still on, keep their URL, weight,
 * meta and expiry (the new hooks.on_register may refuse them); backends that exist in both keep
 * their latency estimate and passive ejection; the event counters carry over. Returns how many
 * registrations were kept.
 */
size_t gw_registry_adopt(gw_registry_t *r, const gw_registry_t *old);

/** Starts TTL expiry on `loop` and announces changes to `server` from now on. */
void gw_registry_start(gw_registry_t *r, uv_loop_t *loop, gw_server_t *server);

/** Stops announcing and closes the expiry timer; `closed(arg)` runs once it is closed (at once
 * when there is none), after which gw_registry_free may run. `closed` may be NULL. */
void gw_registry_stop(gw_registry_t *r, void (*closed)(void *), void *arg);

void gw_registry_free(gw_registry_t *r);

/** The backend table: cfg->nbackends_total entries by gindex. */
gw_backend_t *const *gw_registry_backends(const gw_registry_t *r);

/**
 * The admin API: POST /register (`reg` true) or POST /unregister with the JSON `body`.
 * Returns the HTTP status and sets *json to a malloc'd JSON response body (success or
 * {"error","message"}).
 */
int gw_registry_handle(gw_registry_t *r, bool reg, const char *body, size_t len, uint64_t now_ms,
                       char **json);

/** Milliseconds until gindex `g`'s registration expires; -1 for static backends and for
 * registrations without a TTL. */
int64_t gw_registry_expires_in(const gw_registry_t *r, uint32_t g, uint64_t now_ms);

/** Registry events of upstream `u` so far (GW_REG_*), for /metrics. */
uint64_t gw_registry_events(const gw_registry_t *r, size_t u, enum gw_reg_event ev);

/** The registry's name of an event (the `event` label). */
const char *gw_registry_event_name(enum gw_reg_event ev);

/** True when slot `g` is listed by /status and /metrics: a static backend, or a member. */
static inline bool gw_backend_listed(const gw_backend_t *b)
{
    return !b->registered || __atomic_load_n(&b->member, __ATOMIC_ACQUIRE);
}

#endif
