/*
 * main: the command line, signals, reloads and exit codes; wiring only.
 *
 *   prequal-gw [-t] [-h] [-V] [--config-timeout-ms N] [--config-memory-mb N] [gateway.lua]
 *
 * Exit codes: 0 after a clean (graceful) stop or a successful -t; 1 for a bad config or a
 * failure to start; 2 for bad usage.
 *
 * Generations. A configuration and what runs it (its backend registry, its workers, its active
 * health checks) form a generation. A reload (SIGHUP or the admin's POST /reload) loads
 * gateway.lua again; if it is valid, a new generation starts (its workers take over the
 * listening sockets, see gw_server_start_from, and the registrations), the admin listener
 * switches to it, and the old one drains like a graceful stop and is freed when its workers are
 * done. If it is not, nothing changes and the error is reported.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "admin.h"
#include "config.h"
#include "hcheck.h"
#include "log.h"
#include "registry.h"
#include "server.h"

typedef struct gw_main gw_main_t;

typedef struct gw_gen {
    gw_main_t *m;
    unsigned number; /* 1 for the configuration the process started with */
    gw_config_t *cfg;
    gw_registry_t *registry;
    gw_server_t *server;
    gw_hcheck_t *hcheck;
    int pending; /* retiring: the server and the registry's timer still to stop */
    struct gw_gen *next;
} gw_gen_t;

struct gw_main {
    uv_loop_t *loop;
    const char *path;
    const char *lua_dir;
    gw_lua_limits_t limits; /* on every evaluation of gateway.lua */
    gw_gen_t *cur;
    gw_gen_t *retiring; /* draining generations */
    unsigned generations;
    gw_admin_t *admin;
    gw_admin_source_t admin_src;
    uv_signal_t sigterm, sigint, sigusr1, sighup;
    int signals_seen;
    bool stopping;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: prequal-gw [-t] [-h] [-V] [--config-timeout-ms N] [--config-memory-mb N] "
            "[gateway.lua]\n"
            "  -t                      validate the configuration and exit\n"
            "  -h                      show this help\n"
            "  -V                      show the version\n"
            "  --config-timeout-ms N   time gateway.lua may take to evaluate (default %d; 0: no "
            "limit)\n"
            "  --config-memory-mb N    memory it may use while evaluating (default %d; 0: no "
            "limit)\n"
            "The configuration defaults to ./gateway.lua. SIGHUP reloads it.\n",
            GW_LUA_TIME_MS_DEFAULT, GW_LUA_MEMORY_MB_DEFAULT);
}

/* Reads the value of option argv[*i] into *out (0..max). Returns false after printing why. */
static bool main_uint_option(int argc, char **argv, int *i, uint32_t max, uint32_t *out)
{
    const char *opt = argv[*i];
    if (++*i >= argc) {
        fprintf(stderr, "prequal-gw: %s needs a value\n", opt);
        return false;
    }
    const char *s = argv[*i];
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno != 0 || v > max) {
        fprintf(stderr, "prequal-gw: %s: expected an integer from 0 to %u, got \"%s\"\n", opt, max,
                s);
        return false;
    }
    *out = (uint32_t)v;
    return true;
}

/* The number of hook functions `cfg` defines: global, per route, and membership. */
static unsigned main_count_hooks(const gw_config_t *cfg)
{
    unsigned n = (unsigned)__builtin_popcount(cfg->global_hooks) +
                 (unsigned)__builtin_popcount(cfg->membership_hooks);
    for (size_t i = 0; i < cfg->nroutes; i++)
        n += (unsigned)__builtin_popcount(cfg->routes[i].hooks);
    return n;
}

/* -t: what was validated, on stdout. */
static void main_print_valid(const gw_config_t *cfg)
{
    size_t nbackends = 0, nlua = 0;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        nbackends += cfg->upstreams[i].nbackends;
        nlua += cfg->upstreams[i].lua_strategy;
    }
    unsigned nhooks = main_count_hooks(cfg);
    printf("%s: ok: %zu upstream%s (%zu backend%s), %zu route%s, %u hook%s", cfg->path,
           cfg->nupstreams, cfg->nupstreams == 1 ? "" : "s", nbackends, nbackends == 1 ? "" : "s",
           cfg->nroutes, cfg->nroutes == 1 ? "" : "s", nhooks, nhooks == 1 ? "" : "s");
    if (nlua > 0)
        printf(", %zu Lua strateg%s", nlua, nlua == 1 ? "y" : "ies");
    if (cfg->admin_enabled)
        printf(", admin on %s%s", cfg->admin_listen.text, cfg->admin_token ? " (token)" : "");
    printf("\n");
}

static void gen_free(gw_gen_t *g)
{
    gw_server_free(g->server);
    gw_registry_free(g->registry);
    gw_config_free(g->cfg);
    free(g);
}

/* ---- retiring a generation ---- */

static void gen_retired_part(void *arg)
{
    gw_gen_t *g = arg;
    if (--g->pending > 0)
        return;
    gw_main_t *m = g->m;
    for (gw_gen_t **pp = &m->retiring; *pp; pp = &(*pp)->next)
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    gw_log_info("configuration %u: its last worker finished", g->number);
    gen_free(g);
}

/* Drains generation g (not the current one any more); it frees itself when done. */
static void gen_retire(gw_main_t *m, gw_gen_t *g)
{
    g->pending = 2;
    g->next = m->retiring;
    m->retiring = g;
    gw_hcheck_stop(g->hcheck);
    g->hcheck = NULL;
    gw_registry_stop(g->registry, gen_retired_part, g);
    gw_server_drain(g->server);
}

/* ---- the current generation ---- */

static void main_close_signals(gw_main_t *m)
{
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
    uv_close((uv_handle_t *)&m->sigusr1, NULL);
    uv_close((uv_handle_t *)&m->sighup, NULL);
}

/* The current generation's server stopped (a shutdown): close everything else. */
static void main_on_stopped(void *arg)
{
    gw_gen_t *g = arg;
    gw_main_t *m = g->m;
    if (g != m->cur) {
        gen_retired_part(g);
        return;
    }
    gw_registry_stop(g->registry, NULL, NULL);
    gw_hcheck_stop(g->hcheck);
    g->hcheck = NULL;
    m->admin_src.hcheck = NULL;
    if (m->admin) {
        gw_admin_close(m->admin, NULL, NULL);
        m->admin = NULL;
    }
    main_close_signals(m);
}

static void main_point_admin(gw_main_t *m)
{
    gw_gen_t *g = m->cur;
    size_t nshards;
    m->admin_src.cfg = g->cfg;
    m->admin_src.shards = gw_server_shards(g->server, &nshards);
    m->admin_src.nshards = nshards;
    m->admin_src.backends = gw_registry_backends(g->registry);
    m->admin_src.registry = g->cfg->registration.enabled ? g->registry : NULL;
    m->admin_src.hcheck = g->hcheck;
}

/* Loads the configuration into a new generation and starts it (taking over from `running`, or
 * NULL at start-up). Returns it, or NULL with *err set (nothing is left running). */
static gw_gen_t *gen_start(gw_main_t *m, gw_gen_t *running, char **err)
{
    gw_gen_t *g = calloc(1, sizeof *g);
    if (!g)
        abort();
    g->m = m;
    g->cfg = gw_config_load_limited(m->path, m->lua_dir, &m->limits, err);
    if (!g->cfg)
        goto fail;
    if (!running)
        gw_log_set_level(g->cfg->log_level); /* before the workers start logging */
    /* The registry admits the static backends: hooks.on_register runs here. */
    if (gw_registry_new(g->cfg, &g->registry, err) != 0)
        goto fail;
    if (running) {
        size_t kept = gw_registry_adopt(g->registry, running->registry);
        if (kept)
            gw_log_info("reload: %zu registered backend(s) kept", kept);
    }
    int rc =
        gw_server_start_from(g->cfg, gw_registry_backends(g->registry), m->loop, main_on_stopped, g,
                             running ? running->server : NULL, &g->server, err);
    if (rc != 0) {
        if (!*err)
            *err = gw_asprintf("%s", uv_strerror(rc));
        goto fail;
    }
    gw_registry_start(g->registry, m->loop, g->server);
    gw_hcheck_start(m->loop, g->cfg, gw_registry_backends(g->registry), &g->hcheck);
    g->number = ++m->generations;
    return g;
fail:
    gw_registry_free(g->registry);
    gw_config_free(g->cfg);
    free(g);
    return NULL;
}

/* Reloads gateway.lua. Returns an HTTP status and sets *json (malloc'd) to the answer. */
static int main_reload(void *arg, char **json)
{
    gw_main_t *m = arg;
    cJSON *o = cJSON_CreateObject();
    int status;
    char *err = NULL;
    if (m->stopping) {
        status = 503;
        cJSON_AddStringToObject(o, "error", "stopping");
        cJSON_AddStringToObject(o, "message", "the gateway is shutting down");
    } else {
        gw_gen_t *old = m->cur, *g = gen_start(m, old, &err);
        if (!g) {
            status = 400;
            gw_log_err("reload failed, configuration %u stays: %s", old->number, err ? err : "?");
            cJSON_AddStringToObject(o, "error", "reload_failed");
            cJSON_AddStringToObject(o, "message",
                                    err ? err : "the new configuration did not start");
        } else {
            const gw_config_t *a = old->cfg, *b = g->cfg;
            if (a->admin_enabled != b->admin_enabled ||
                (a->admin_enabled && strcmp(a->admin_listen.text, b->admin_listen.text) != 0))
                gw_log_warn("reload: the admin listener stays on %s until a restart",
                            a->admin_enabled ? a->admin_listen.text : "(off)");
            if ((a->access_log == NULL) != (b->access_log == NULL) ||
                (a->access_log && strcmp(a->access_log, b->access_log) != 0))
                gw_log_warn("reload: access_log changes take effect at the next restart");
            gw_log_set_level(b->log_level);
            m->cur = g;
            if (m->admin)
                main_point_admin(m);
            gen_retire(m, old);
            gw_log_info("reloaded %s: configuration %u (%zu upstream(s), %zu route(s)); "
                        "configuration %u drains",
                        m->path, g->number, b->nupstreams, b->nroutes, old->number);
            status = 200;
            cJSON_AddStringToObject(o, "status", "reloaded");
            cJSON_AddNumberToObject(o, "generation", g->number);
        }
    }
    free(err);
    *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!*json)
        abort();
    return status;
}

static void main_on_signal(uv_signal_t *s, int signum)
{
    gw_main_t *m = s->data;
    if (signum == SIGUSR1) {
        int rc = gw_access_log_reopen();
        if (rc < 0)
            gw_log_err("reopening the access log: %s", strerror(-rc));
        else
            gw_log_info("access log reopened");
        return;
    }
    if (signum == SIGHUP) {
        char *json = NULL;
        main_reload(m, &json);
        free(json);
        return;
    }
    if (m->signals_seen++ == 0) {
        gw_log_info("%s: draining (up to %u ms)", signum == SIGTERM ? "SIGTERM" : "SIGINT",
                    m->cur->cfg->timeouts.drain_ms);
        m->stopping = true;
        gw_server_drain(m->cur->server);
    } else {
        gw_log_warn("second signal: stopping now");
        gw_server_stop(m->cur->server);
        for (gw_gen_t *g = m->retiring; g; g = g->next)
            gw_server_stop(g->server);
    }
}

int main(int argc, char **argv)
{
    bool test_only = false;
    const char *path = NULL;
    gw_lua_limits_t limits = GW_LUA_LIMITS_DEFAULT;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0) {
            test_only = true;
        } else if (strcmp(argv[i], "--config-timeout-ms") == 0) {
            if (!main_uint_option(argc, argv, &i, 24 * 3600 * 1000, &limits.time_ms))
                return 2;
        } else if (strcmp(argv[i], "--config-memory-mb") == 0) {
            if (!main_uint_option(argc, argv, &i, 1024 * 1024, &limits.memory_mb))
                return 2;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "-V") == 0 || strcmp(argv[i], "--version") == 0) {
            printf("prequal-gw %s\n", PGW_VERSION);
            return 0;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "prequal-gw: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (!path) {
            path = argv[i];
        } else {
            fprintf(stderr, "prequal-gw: more than one configuration file given\n");
            return 2;
        }
    }
    if (!path)
        path = "gateway.lua";

    gw_main_t m = {0};
    m.path = path;
    m.limits = limits;
    m.lua_dir = getenv("PGW_LUA_DIR") ? getenv("PGW_LUA_DIR") : PGW_LUA_DIR;
    char *err = NULL;
    if (test_only) {
        /* Validation, and hooks.on_register on the static backends, as a start would run them. */
        gw_config_t *cfg = gw_config_load_limited(path, m.lua_dir, &m.limits, &err);
        gw_registry_t *registry = NULL;
        if (cfg && gw_registry_new(cfg, &registry, &err) == 0) {
            main_print_valid(cfg);
            gw_registry_free(registry);
            gw_config_free(cfg);
            return 0;
        }
        fprintf(stderr, "prequal-gw: %s\n", err ? err : "invalid configuration");
        free(err);
        gw_config_free(cfg);
        return 1;
    }

    signal(SIGPIPE, SIG_IGN);
    m.loop = uv_default_loop();
    m.cur = gen_start(&m, NULL, &err);
    if (!m.cur) {
        fprintf(stderr, "prequal-gw: %s\n", err ? err : "failed to start");
        free(err);
        uv_run(m.loop, UV_RUN_NOWAIT); /* handles a failed start left closing */
        uv_loop_close(m.loop);
        return 1;
    }
    const gw_config_t *cfg = m.cur->cfg;
    int rc = gw_access_log_open(cfg->access_log);
    if (rc < 0) {
        fprintf(stderr, "prequal-gw: access_log %s: %s\n", cfg->access_log, strerror(-rc));
        m.stopping = true;
        gw_server_stop(m.cur->server);
    }
    uv_signal_init(m.loop, &m.sigterm);
    uv_signal_init(m.loop, &m.sigint);
    uv_signal_init(m.loop, &m.sigusr1);
    uv_signal_init(m.loop, &m.sighup);
    m.sigterm.data = m.sigint.data = m.sigusr1.data = m.sighup.data = &m;
    uv_signal_start(&m.sigterm, main_on_signal, SIGTERM);
    uv_signal_start(&m.sigint, main_on_signal, SIGINT);
    uv_signal_start(&m.sigusr1, main_on_signal, SIGUSR1);
    uv_signal_start(&m.sighup, main_on_signal, SIGHUP);

    int exit_code = rc < 0 ? 1 : 0;
    if (exit_code == 0 && cfg->admin_enabled) {
        main_point_admin(&m);
        m.admin_src.reload = main_reload;
        m.admin_src.reload_arg = &m;
        rc = gw_admin_start(m.loop, &m.admin_src, &m.admin);
        if (rc != 0) {
            gw_log_err("admin listen %s: %s", cfg->admin_listen.text, uv_strerror(rc));
            exit_code = 1;
            m.stopping = true;
            gw_server_stop(m.cur->server);
        }
    }
    if (exit_code == 0) {
        for (size_t i = 0; i < cfg->nlisten; i++)
            gw_log_info("listening on %s (%u worker%s)", cfg->listen[i].text, cfg->workers,
                        cfg->workers == 1 ? "" : "s");
        if (cfg->admin_insecure)
            gw_log_warn("admin on %s: other hosts can reach it and no token is set "
                        "(admin.insecure = true)",
                        cfg->admin_listen.text);
        else if (cfg->admin_enabled)
            gw_log_info("admin on %s", cfg->admin_listen.text);
    }
    uv_run(m.loop, UV_RUN_DEFAULT);
    while (m.retiring) { /* only after a second signal cut a drain short */
        gw_gen_t *g = m.retiring;
        m.retiring = g->next;
        gen_free(g);
    }
    gen_free(m.cur);
    rc = uv_loop_close(m.loop);
    if (rc != 0)
        gw_log_err("main loop closed with handles open: %s", uv_strerror(rc));
    gw_log_info("stopped");
    gw_access_log_close();
    return exit_code;
}
