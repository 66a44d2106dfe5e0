/*
 * main: the command line, signals and exit codes; wiring only.
 *
 *   prequal-gw [-t] [-h] [-V] [gateway.lua]
 *
 * Exit codes: 0 after a clean (graceful) stop or a successful -t; 1 for a bad config or a
 * failure to start; 2 for bad usage.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "config.h"
#include "hcheck.h"
#include "log.h"
#include "registry.h"
#include "server.h"

typedef struct gw_main {
    uv_loop_t *loop;
    gw_config_t *cfg;
    gw_registry_t *registry;
    gw_hcheck_t *hcheck;
    gw_server_t *server;
    gw_admin_t *admin;
    gw_admin_source_t admin_src;
    uv_signal_t sigterm, sigint, sigusr1;
    int signals_seen;
} gw_main_t;

static void usage(FILE *f)
{
    fprintf(f, "usage: prequal-gw [-t] [-h] [-V] [gateway.lua]\n"
               "  -t  validate the configuration and exit\n"
               "  -h  show this help\n"
               "  -V  show the version\n"
               "The configuration defaults to ./gateway.lua.\n");
}

static void main_close_signals(gw_main_t *m)
{
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
    uv_close((uv_handle_t *)&m->sigusr1, NULL);
}

static void main_on_stopped(void *arg)
{
    gw_main_t *m = arg;
    gw_registry_stop(m->registry);
    gw_hcheck_stop(m->hcheck);
    m->hcheck = NULL;
    m->admin_src.hcheck = NULL;
    if (m->admin) {
        gw_admin_close(m->admin, NULL, NULL);
        m->admin = NULL;
    }
    main_close_signals(m);
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
    if (m->signals_seen++ == 0) {
        gw_log_info("%s: draining (up to %u ms)", signum == SIGTERM ? "SIGTERM" : "SIGINT",
                    m->cfg->timeouts.drain_ms);
        gw_server_drain(m->server);
    } else {
        gw_log_warn("second signal: stopping now");
        gw_server_stop(m->server);
    }
}

int main(int argc, char **argv)
{
    bool test_only = false;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0) {
            test_only = true;
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

    char *err = NULL;
    const char *lua_dir = getenv("PGW_LUA_DIR");
    gw_config_t *cfg = gw_config_load(path, lua_dir ? lua_dir : PGW_LUA_DIR, &err);
    if (!cfg) {
        fprintf(stderr, "prequal-gw: %s\n", err ? err : "invalid configuration");
        free(err);
        return 1;
    }
    /* The registry admits the static backends: hooks.on_register runs here, in -t too. */
    gw_registry_t *registry = NULL;
    if (gw_registry_new(cfg, &registry, &err) != 0) {
        fprintf(stderr, "prequal-gw: %s\n", err ? err : "hooks.on_register failed");
        free(err);
        gw_config_free(cfg);
        return 1;
    }
    if (test_only) {
        printf("prequal-gw: configuration %s is valid (%zu upstream(s), %zu route(s))\n", path,
               cfg->nupstreams, cfg->nroutes);
        gw_registry_free(registry);
        gw_config_free(cfg);
        return 0;
    }
    gw_log_set_level(cfg->log_level);
    signal(SIGPIPE, SIG_IGN);
    int rc = gw_access_log_open(cfg->access_log);
    if (rc < 0) {
        fprintf(stderr, "prequal-gw: access_log %s: %s\n", cfg->access_log, strerror(-rc));
        gw_registry_free(registry);
        gw_config_free(cfg);
        return 1;
    }

    gw_main_t m = {0};
    m.loop = uv_default_loop();
    m.cfg = cfg;
    m.registry = registry;
    rc = gw_server_start(cfg, gw_registry_backends(registry), m.loop, main_on_stopped, &m, &m.server,
                         &err);
    if (rc != 0) {
        fprintf(stderr, "prequal-gw: %s\n", err ? err : uv_strerror(rc));
        free(err);
        gw_access_log_close();
        gw_registry_free(registry);
        gw_config_free(cfg);
        uv_loop_close(m.loop);
        return 1;
    }
    gw_registry_start(registry, m.loop, m.server);
    gw_hcheck_start(m.loop, cfg, gw_registry_backends(registry), &m.hcheck);
    uv_signal_init(m.loop, &m.sigterm);
    uv_signal_init(m.loop, &m.sigint);
    uv_signal_init(m.loop, &m.sigusr1);
    m.sigterm.data = m.sigint.data = m.sigusr1.data = &m;
    uv_signal_start(&m.sigterm, main_on_signal, SIGTERM);
    uv_signal_start(&m.sigint, main_on_signal, SIGINT);
    uv_signal_start(&m.sigusr1, main_on_signal, SIGUSR1);

    int exit_code = 0;
    if (cfg->admin_enabled) {
        size_t nshards;
        m.admin_src.cfg = cfg;
        m.admin_src.shards = gw_server_shards(m.server, &nshards);
        m.admin_src.nshards = nshards;
        m.admin_src.backends = gw_registry_backends(registry);
        m.admin_src.registry = cfg->registration.enabled ? registry : NULL;
        m.admin_src.hcheck = m.hcheck;
        rc = gw_admin_start(m.loop, &m.admin_src, &m.admin);
        if (rc != 0) {
            gw_log_err("admin listen %s: %s", cfg->admin_listen.text, uv_strerror(rc));
            exit_code = 1;
            gw_server_stop(m.server);
        }
    }
    if (exit_code == 0) {
        for (size_t i = 0; i < cfg->nlisten; i++)
            gw_log_info("listening on %s (%u worker%s)", cfg->listen[i].text, cfg->workers,
                        cfg->workers == 1 ? "" : "s");
        if (cfg->admin_enabled)
            gw_log_info("admin on %s", cfg->admin_listen.text);
    }
    uv_run(m.loop, UV_RUN_DEFAULT);
    gw_server_free(m.server);
    rc = uv_loop_close(m.loop);
    gw_registry_free(registry);
    if (rc != 0)
        gw_log_err("main loop closed with handles open: %s", uv_strerror(rc));
    gw_log_info("stopped");
    gw_access_log_close();
    gw_config_free(cfg);
    return exit_code;
}
