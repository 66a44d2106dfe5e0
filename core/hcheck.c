/*
 * hcheck: see hcheck.h.
 *
 * Ownership. The checker owns one timer per checked upstream and at most one gw_hc_probe_t per
 * backend (slot). A probe embeds its tcp handle and timer; it is freed in the close callback
 * that brings its pending closes to zero, and it detaches itself from the checker when it
 * finishes, so a stopped checker only has to close the probes still running. The checker is
 * freed when its last handle is closed.
 */
#include "hcheck.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "health.h"
#include "log.h"

#define GW_HC_REQ_MAX 1024

typedef struct gw_hc_probe gw_hc_probe_t;

typedef struct gw_hc_slot {
    gw_hcheck_streak_t streak;
    uint32_t epoch;       /* the registration the streak belongs to */
    gw_hc_probe_t *probe; /* the check running now, or NULL */
} gw_hc_slot_t;

typedef struct gw_hc_upstream {
    gw_hcheck_t *hc;
    size_t u;
    uv_timer_t timer;
    uint64_t passed, failed;
} gw_hc_upstream_t;

struct gw_hcheck {
    const gw_config_t *cfg;
    gw_backend_t *const *backends;
    gw_hc_slot_t *slots;   /* [nbackends_total] by gindex */
    gw_hc_upstream_t *ups; /* [nupstreams]; timers only where health.path is set */
    size_t handles;        /* open timers and probes; freed at 0 once stopped */
    bool stopping;
};

struct gw_hc_probe {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect;
    uv_write_t write;
    gw_hc_upstream_t *up;
    uint32_t g; /* the backend's gindex */
    uint32_t epoch;
    int pending_closes;
    bool done;
    llhttp_t parser;
    int status; /* the reply's status, 0 until its head is parsed */
    char req[GW_HC_REQ_MAX];
    char in[4096];
    const char *why; /* what failed, for the log */
    char whybuf[32];
};

int gw_hcheck_record(gw_hcheck_streak_t *s, const gw_health_cfg_t *h, bool down, bool passed)
{
    if (passed) {
        s->fails = 0;
        if (s->passes < UINT32_MAX)
            s->passes++;
        return down && s->passes >= h->healthy_threshold ? GW_HCHECK_GO_UP : GW_HCHECK_SAME;
    }
    s->passes = 0;
    if (s->fails < UINT32_MAX)
        s->fails++;
    return !down && s->fails >= h->unhealthy_threshold ? GW_HCHECK_GO_DOWN : GW_HCHECK_SAME;
}

uint64_t gw_hcheck_count(const gw_hcheck_t *hc, size_t u, bool passed)
{
    if (!hc)
        return 0;
    return passed ? hc->ups[u].passed : hc->ups[u].failed;
}

static void hc_maybe_free(gw_hcheck_t *hc)
{
    if (!hc->stopping || hc->handles > 0)
        return;
    free(hc->slots);
    free(hc->ups);
    free(hc);
}

static void hc_on_handle_closed(uv_handle_t *h)
{
    gw_hcheck_t *hc = h->data;
    hc->handles--;
    hc_maybe_free(hc);
}

static void hc_probe_on_closed(uv_handle_t *h)
{
    gw_hc_probe_t *p = h->data;
    if (--p->pending_closes > 0)
        return;
    gw_hcheck_t *hc = p->up->hc;
    free(p);
    hc->handles--;
    hc_maybe_free(hc);
}

/* Ends a check: applies its result (unless the checker stops or the backend's registration
 * changed meanwhile), then closes the probe. */
static void hc_probe_finish(gw_hc_probe_t *p, bool passed)
{
    if (p->done)
        return;
    p->done = true;
    gw_hc_upstream_t *up = p->up;
    gw_hcheck_t *hc = up->hc;
    gw_hc_slot_t *slot = &hc->slots[p->g];
    slot->probe = NULL;
    gw_backend_t *b = hc->backends[p->g];
    const gw_upstream_cfg_t *uc = &hc->cfg->upstreams[up->u];
    if (!hc->stopping && __atomic_load_n(&b->member, __ATOMIC_ACQUIRE) &&
        GW_RELAXED_LOAD(b->epoch) == p->epoch) {
        if (slot->epoch != p->epoch) {
            slot->epoch = p->epoch;
            slot->streak = (gw_hcheck_streak_t){0};
        }
        passed ? up->passed++ : up->failed++;
        bool down = __atomic_load_n(&b->down, __ATOMIC_ACQUIRE) != 0;
        switch (gw_hcheck_record(&slot->streak, &uc->health, down, passed)) {
        case GW_HCHECK_GO_DOWN:
            gw_health_set_down(b, true);
            gw_log_warn("upstream %s: backend %s is down: %u health checks in a row failed (%s)",
                        uc->name, b->cfg->url, slot->streak.fails, p->why ? p->why : "?");
            break;
        case GW_HCHECK_GO_UP:
            gw_health_set_down(b, false);
            gw_log_info("upstream %s: backend %s is up: %u health checks in a row passed", uc->name,
                        b->cfg->url, slot->streak.passes);
            break;
        default:
            break;
        }
    }
    p->pending_closes = 2;
    uv_close((uv_handle_t *)&p->timer, hc_probe_on_closed);
    uv_close((uv_handle_t *)&p->tcp, hc_probe_on_closed);
}

static void hc_probe_fail(gw_hc_probe_t *p, const char *why)
{
    if (!p->why)
        p->why = why;
    hc_probe_finish(p, false);
}

static int hc_on_headers_complete(llhttp_t *parser)
{
    gw_hc_probe_t *p = parser->data;
    p->status = parser->status_code;
    return HPE_PAUSED; /* the status is all a check needs */
}

static const llhttp_settings_t hc_parser_settings = {
    .on_headers_complete = hc_on_headers_complete,
};

static void hc_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    gw_hc_probe_t *p = h->data;
    (void)suggested;
    *buf = uv_buf_init(p->in, sizeof p->in);
}

static void hc_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    gw_hc_probe_t *p = s->data;
    if (p->done)
        return;
    if (nread < 0) {
        hc_probe_fail(p, nread == UV_EOF ? "closed before a reply" : uv_strerror((int)nread));
        return;
    }
    llhttp_errno_t err = llhttp_execute(&p->parser, buf->base, (size_t)nread);
    if (p->status) {
        bool passed = p->status >= 200 && p->status < 400;
        if (!passed) {
            snprintf(p->whybuf, sizeof p->whybuf, "status %d", p->status);
            p->why = p->whybuf;
        }
        hc_probe_finish(p, passed);
    } else if (err != HPE_OK) {
        hc_probe_fail(p, "malformed reply");
    }
}

static void hc_on_write(uv_write_t *w, int status)
{
    gw_hc_probe_t *p = w->data;
    if (status < 0 && !p->done)
        hc_probe_fail(p, uv_strerror(status));
}

static void hc_on_connect(uv_connect_t *c, int status)
{
    gw_hc_probe_t *p = c->data;
    if (p->done)
        return;
    if (status < 0) {
        hc_probe_fail(p, uv_strerror(status));
        return;
    }
    uv_buf_t buf = uv_buf_init(p->req, (unsigned)strlen(p->req));
    int rc = uv_write(&p->write, (uv_stream_t *)&p->tcp, &buf, 1, hc_on_write);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&p->tcp, hc_on_alloc, hc_on_read);
    if (rc < 0)
        hc_probe_fail(p, uv_strerror(rc));
}

static void hc_on_probe_timeout(uv_timer_t *t)
{
    hc_probe_fail(t->data, "timed out");
}

static void hc_check(gw_hc_upstream_t *up, uint32_t g)
{
    gw_hcheck_t *hc = up->hc;
    gw_backend_t *b = hc->backends[g];
    const gw_upstream_cfg_t *uc = &hc->cfg->upstreams[up->u];
    gw_hc_probe_t *p = calloc(1, sizeof *p);
    if (!p)
        abort();
    p->up = up;
    p->g = g;
    p->epoch = GW_RELAXED_LOAD(b->epoch);
    int n = snprintf(p->req, sizeof p->req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: prequal-gw-health\r\n"
                     "Connection: close\r\n\r\n",
                     uc->health.path, b->cfg->authority);
    if (n < 0 || (size_t)n >= sizeof p->req) {
        free(p);
        return;
    }
    llhttp_init(&p->parser, HTTP_RESPONSE, &hc_parser_settings);
    p->parser.data = p;
    uv_loop_t *loop = up->timer.loop;
    uv_tcp_init(loop, &p->tcp);
    uv_timer_init(loop, &p->timer);
    p->tcp.data = p->timer.data = p->connect.data = p->write.data = p;
    hc->handles++;
    hc->slots[g].probe = p;
    uv_timer_start(&p->timer, hc_on_probe_timeout, uc->health.timeout_ms, 0);
    int rc =
        uv_tcp_connect(&p->connect, &p->tcp, (const struct sockaddr *)&b->cfg->sa, hc_on_connect);
    if (rc < 0)
        hc_probe_fail(p, uv_strerror(rc));
}

static void hc_on_tick(uv_timer_t *t)
{
    gw_hc_upstream_t *up = t->data;
    gw_hcheck_t *hc = up->hc;
    const gw_upstream_cfg_t *uc = &hc->cfg->upstreams[up->u];
    for (uint32_t k = 0; k < gw_upstream_nslots(uc); k++) {
        uint32_t g = gw_upstream_slot_gindex(uc, k);
        if (__atomic_load_n(&hc->backends[g]->member, __ATOMIC_ACQUIRE) && !hc->slots[g].probe)
            hc_check(up, g);
    }
}

int gw_hcheck_start(uv_loop_t *loop, const gw_config_t *cfg, gw_backend_t *const *backends,
                    gw_hcheck_t **out)
{
    *out = NULL;
    bool any = false;
    for (size_t u = 0; u < cfg->nupstreams; u++)
        any |= cfg->upstreams[u].health.path != NULL;
    if (!any)
        return 0;
    gw_hcheck_t *hc = calloc(1, sizeof *hc);
    if (!hc ||
        !(hc->slots = calloc(cfg->nbackends_total ? cfg->nbackends_total : 1, sizeof *hc->slots)) ||
        !(hc->ups = calloc(cfg->nupstreams, sizeof *hc->ups)))
        abort();
    hc->cfg = cfg;
    hc->backends = backends;
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        gw_hc_upstream_t *up = &hc->ups[u];
        up->hc = hc;
        up->u = u;
        if (!cfg->upstreams[u].health.path)
            continue;
        uv_timer_init(loop, &up->timer);
        up->timer.data = up;
        hc->handles++;
        /* The first round soon after start, then every interval. */
        uint32_t every = cfg->upstreams[u].health.interval_ms;
        uv_timer_start(&up->timer, hc_on_tick, every < 100 ? every : 100, every);
    }
    *out = hc;
    return 0;
}

void gw_hcheck_stop(gw_hcheck_t *hc)
{
    if (!hc || hc->stopping)
        return;
    hc->stopping = true;
    for (size_t u = 0; u < hc->cfg->nupstreams; u++) {
        gw_hc_upstream_t *up = &hc->ups[u];
        if (hc->cfg->upstreams[u].health.path) {
            up->timer.data = hc;
            uv_close((uv_handle_t *)&up->timer, hc_on_handle_closed);
        }
    }
    for (size_t g = 0; g < hc->cfg->nbackends_total; g++)
        if (hc->slots[g].probe)
            hc_probe_finish(hc->slots[g].probe, false);
    hc_maybe_free(hc);
}
