/*
 * registry: see registry.h.
 *
 * Slots. Upstream u has gw_upstream_nslots(u) slots; slot k has gindex gindex0 + k (static ones
 * keep their config's gindex). A registration slot's gw_backend_cfg_t lives here, at a fixed
 * address, with its URL text in fixed buffers, so b->cfg never changes and never dangles.
 *
 * A registration that comes back (after an unregister or an expiry) gets its old slot again, so
 * its id, metrics and health history survive re-registration. A new URL takes a slot that was
 * never used, else the slot that has been free the longest, but only once it is safe to rewrite:
 * every worker has acknowledged the leave (its pools and probe connection to it are closed) and
 * no request is in flight to it. Until then the upstream is "full" for new URLs.
 *
 * Meta. A registered backend's `meta` is kept as JSON text that workers decode into their Lua
 * views. A renewal may change it: the new text is published and the old one is retired, freed
 * once every worker acknowledged the change that replaced it.
 */
#include "registry.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "health.h"
#include "http1.h"
#include "log.h"
#include "lua_bridge.h"
#include "server.h"

#define GW_REG_MAX_TTL_MS (24u * 3600u * 1000u)
#define GW_REG_TICK_MS 100

typedef struct gw_reg_slot {
    gw_backend_cfg_t cfg;
    char url[GW_SLOT_URL_MAX];
    char authority[GW_SLOT_URL_MAX];
    bool has_url;    /* holds a URL (a member now, or one that left) */
    uint32_t ttl_ms; /* 0: never expires */
    uint64_t expires_ms;
    uint64_t left_ms;  /* when it last left (the oldest free slot is reused first) */
    uint64_t left_gen; /* the membership generation that announced the leave */
} gw_reg_slot_t;

typedef struct gw_reg_retired {
    char *p;
    uint64_t gen;
    struct gw_reg_retired *next;
} gw_reg_retired_t;

struct gw_registry {
    const gw_config_t *cfg;
    gw_backend_t *store;
    gw_backend_t **backends;
    gw_reg_slot_t *slots; /* [nbackends_total] by gindex; only registration slots are used */
    uint64_t *events;     /* [nupstreams * GW_REG_EVENT_COUNT] */
    gw_lua_ctl_t *lua;    /* hooks.on_register / on_unregister, or NULL */
    gw_server_t *server;
    uv_timer_t timer;
    bool timer_on;
    gw_reg_retired_t *retired;
    void (*closed)(void *);
    void *closed_arg;
};

static const char *const reg_event_names[GW_REG_EVENT_COUNT] = {
    "registered", "renewed", "unregistered", "expired", "rejected"};

const char *gw_registry_event_name(enum gw_reg_event ev)
{
    return reg_event_names[ev];
}

gw_backend_t *const *gw_registry_backends(const gw_registry_t *r)
{
    return r->backends;
}

uint64_t gw_registry_events(const gw_registry_t *r, size_t u, enum gw_reg_event ev)
{
    return r->events[u * GW_REG_EVENT_COUNT + ev];
}

int64_t gw_registry_expires_in(const gw_registry_t *r, uint32_t g, uint64_t now_ms)
{
    const gw_reg_slot_t *s = &r->slots[g];
    if (!r->backends[g]->registered || s->ttl_ms == 0)
        return -1;
    return s->expires_ms > now_ms ? (int64_t)(s->expires_ms - now_ms) : 0;
}

static void reg_count(gw_registry_t *r, size_t u, enum gw_reg_event ev)
{
    r->events[u * GW_REG_EVENT_COUNT + ev]++;
}

/* Tells the workers; returns the generation that carries the change (0 before start). */
static uint64_t reg_announce(gw_registry_t *r)
{
    return r->server ? gw_server_membership_changed(r->server) : 0;
}

static gw_lua_backend_info_t reg_info(const gw_registry_t *r, const gw_upstream_cfg_t *uc,
                                      uint32_t k)
{
    uint32_t g = gw_upstream_slot_gindex(uc, k);
    const gw_backend_t *b = r->backends[g];
    return (gw_lua_backend_info_t){.id = k + 1,
                                   .url = b->cfg->url,
                                   .weight = GW_RELAXED_LOAD(b->cfg->weight),
                                   .meta_json = b->registered ? r->slots[g].cfg.meta_json : NULL,
                                   .static_index = b->registered ? -1 : (int)k};
}

static void reg_unregister_hook(gw_registry_t *r, size_t u, uint32_t k, const char *reason)
{
    const gw_upstream_cfg_t *uc = &r->cfg->upstreams[u];
    gw_lua_backend_info_t info = reg_info(r, uc, k);
    gw_lua_ctl_on_unregister(r->lua, u, &info, reason);
}

/* ---- construction ---- */

int gw_registry_new(const gw_config_t *cfg, gw_registry_t **out, char **err)
{
    *err = NULL;
    gw_registry_t *r = calloc(1, sizeof *r);
    size_t nb = cfg->nbackends_total ? cfg->nbackends_total : 1;
    if (!r || !(r->store = calloc(nb, sizeof *r->store)) ||
        !(r->backends = calloc(nb, sizeof *r->backends)) ||
        !(r->slots = calloc(nb, sizeof *r->slots)) ||
        !(r->events = calloc((cfg->nupstreams ? cfg->nupstreams : 1) * GW_REG_EVENT_COUNT,
                             sizeof *r->events)))
        abort();
    r->cfg = cfg;
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        const gw_upstream_cfg_t *uc = &cfg->upstreams[u];
        uint32_t n = gw_upstream_nslots(uc);
        for (uint32_t k = 0; k < n; k++) {
            uint32_t g = gw_upstream_slot_gindex(uc, k);
            gw_backend_t *b = &r->store[g];
            b->upstream = (uint32_t)u;
            b->index = k;
            b->healthy = 1;
            if (k < uc->nbackends) {
                b->cfg = &uc->backends[k];
                b->member = 1;
            } else {
                gw_reg_slot_t *s = &r->slots[g];
                s->cfg.url = s->url;
                s->cfg.authority = s->authority;
                s->cfg.weight = 1;
                s->cfg.gindex = g;
                b->cfg = &s->cfg;
                b->registered = 1;
            }
            r->backends[g] = b;
        }
    }
    if (cfg->membership_hooks && gw_lua_ctl_new(cfg, &r->lua, err) != 0) {
        gw_registry_free(r);
        return -1;
    }
    /* Static backends join at load: on_register may keep one out. */
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        const gw_upstream_cfg_t *uc = &cfg->upstreams[u];
        for (uint32_t k = 0; k < uc->nbackends; k++) {
            gw_lua_backend_info_t info = reg_info(r, uc, k);
            char *herr = NULL;
            int rc = gw_lua_ctl_on_register(r->lua, u, &info, &herr);
            if (rc < 0) {
                *err = gw_asprintf(
                    "%s: hooks.on_register failed for upstreams.%s.backends[%u] (%s): %s",
                    cfg->path, uc->name, k + 1, uc->backends[k].url, herr ? herr : "?");
                free(herr);
                gw_registry_free(r);
                return -1;
            }
            if (rc == 0) {
                r->backends[uc->backends[k].gindex]->member = 0;
                reg_count(r, u, GW_REG_REJECTED);
                gw_log_warn("upstream %s: hooks.on_register rejected static backend %s", uc->name,
                            uc->backends[k].url);
            }
        }
    }
    *out = r;
    return 0;
}

/* ---- expiry ---- */

static void reg_gc_retired(gw_registry_t *r)
{
    gw_reg_retired_t **pp = &r->retired;
    while (*pp) {
        gw_reg_retired_t *x = *pp;
        if (!r->server || gw_server_membership_acked(r->server, x->gen)) {
            *pp = x->next;
            free(x->p);
            free(x);
        } else {
            pp = &x->next;
        }
    }
}

static void reg_leave(gw_registry_t *r, size_t u, uint32_t k, uint64_t now_ms, enum gw_reg_event ev)
{
    const gw_upstream_cfg_t *uc = &r->cfg->upstreams[u];
    uint32_t g = gw_upstream_slot_gindex(uc, k);
    gw_reg_slot_t *s = &r->slots[g];
    __atomic_store_n(&r->backends[g]->member, 0, __ATOMIC_RELEASE);
    s->left_ms = now_ms;
    s->left_gen = reg_announce(r);
    reg_count(r, u, ev);
    gw_log_info("upstream %s: backend %s %s", uc->name, s->url, reg_event_names[ev]);
    reg_unregister_hook(r, u, k, ev == GW_REG_EXPIRED ? "expired" : "unregister");
}

static void reg_on_tick(uv_timer_t *t)
{
    gw_registry_t *r = t->data;
    uint64_t now = uv_now(t->loop);
    const gw_config_t *cfg = r->cfg;
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        const gw_upstream_cfg_t *uc = &cfg->upstreams[u];
        uint32_t n = gw_upstream_nslots(uc);
        for (uint32_t k = (uint32_t)uc->nbackends; k < n; k++) {
            uint32_t g = gw_upstream_slot_gindex(uc, k);
            gw_reg_slot_t *s = &r->slots[g];
            if (s->ttl_ms && s->expires_ms <= now &&
                __atomic_load_n(&r->backends[g]->member, __ATOMIC_ACQUIRE))
                reg_leave(r, u, k, now, GW_REG_EXPIRED);
        }
    }
    reg_gc_retired(r);
}

void gw_registry_start(gw_registry_t *r, uv_loop_t *loop, gw_server_t *server)
{
    r->server = server;
    if (!r->cfg->registration.enabled)
        return;
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    uv_timer_start(&r->timer, reg_on_tick, GW_REG_TICK_MS, GW_REG_TICK_MS);
    uv_unref((uv_handle_t *)&r->timer);
    r->timer_on = true;
}

static void reg_on_timer_closed(uv_handle_t *h)
{
    gw_registry_t *r = h->data;
    if (r->closed)
        r->closed(r->closed_arg);
}

void gw_registry_stop(gw_registry_t *r, void (*closed)(void *), void *arg)
{
    r->server = NULL; /* the workers are going away: nothing more to announce */
    r->closed = closed;
    r->closed_arg = arg;
    if (r->timer_on) {
        r->timer_on = false;
        uv_close((uv_handle_t *)&r->timer, reg_on_timer_closed);
    } else if (closed) {
        closed(arg);
    }
}

void gw_registry_free(gw_registry_t *r)
{
    if (!r)
        return;
    gw_lua_ctl_free(r->lua);
    r->server = NULL;
    reg_gc_retired(r);
    for (size_t g = 0; g < r->cfg->nbackends_total; g++)
        free(r->slots[g].cfg.meta_json);
    free(r->slots);
    free(r->store);
    free(r->backends);
    free(r->events);
    free(r);
}

/* ---- the admin API ---- */

static int reg_reply(char **json, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int reg_reply(char **json, int status, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "error", code);
    cJSON_AddStringToObject(o, "message", msg);
    *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return status;
}

/* Parses "http://IP:PORT[/]" (an address literal: registration never resolves names, so a
 * registrant cannot aim the gateway at a name that resolves elsewhere later). Fills the
 * address and the canonical URL and authority. Returns NULL or what is wrong. */
static const char *reg_parse_url(const char *url, struct sockaddr_storage *sa, socklen_t *salen,
                                 char canon[GW_SLOT_URL_MAX], char auth[GW_SLOT_URL_MAX])
{
    gw_http1_url_t u;
    switch (gw_http1_url_split(url, &u)) {
    case GW_URL_OK:
        break;
    case GW_URL_HTTPS:
    case GW_URL_NOT_HTTP:
        return "expected http://ADDRESS:PORT (https upstreams are not supported)";
    case GW_URL_USERINFO:
        return "user info is not allowed";
    case GW_URL_QUERY:
    case GW_URL_PATH:
        return "a backend URL has no path, query or fragment";
    default:
        return "invalid IPv6 address";
    }
    bool v6 = u.bracketed;
    char host[INET6_ADDRSTRLEN + 1];
    if (u.host.len >= sizeof host)
        return v6 ? "invalid IPv6 address" : "the host must be an IP address";
    memcpy(host, u.host.p, u.host.len);
    host[u.host.len] = '\0';
    if (!u.port.p)
        return "the port is required (http://ADDRESS:PORT)";
    long p = gw_http1_parse_port(u.port);
    if (p == 0)
        return "the port must be a number from 1 to 65535";
    memset(sa, 0, sizeof *sa);
    struct sockaddr_in *in = (struct sockaddr_in *)sa;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
    if (v6) {
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            return "invalid IPv6 address";
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            /* [::ffff:a.b.c.d] is a.b.c.d: registered, listed and compared in that form. */
            struct in_addr v4;
            memcpy(&v4, &in6->sin6_addr.s6_addr[12], sizeof v4);
            memset(sa, 0, sizeof *sa);
            in->sin_addr = v4;
            v6 = false;
        }
    } else if (inet_pton(AF_INET, host, &in->sin_addr) != 1) {
        return "the host must be an IP address (registration does not resolve names)";
    }
    char text[INET6_ADDRSTRLEN];
    if (!v6) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)p);
        *salen = sizeof *in;
        inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
        snprintf(auth, GW_SLOT_URL_MAX, "%s:%ld", text, p);
    } else {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)p);
        *salen = sizeof *in6;
        inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
        snprintf(auth, GW_SLOT_URL_MAX, "[%s]:%ld", text, p);
    }
    snprintf(canon, GW_SLOT_URL_MAX, "http://%.60s", auth); /* auth is at most 53 bytes */
    return NULL;
}

typedef struct reg_req {
    int u;
    struct sockaddr_storage sa;
    socklen_t salen;
    char url[GW_SLOT_URL_MAX];
    char authority[GW_SLOT_URL_MAX];
    uint32_t weight;
    bool has_weight;
    char *meta_json; /* malloc'd, or NULL */
    bool has_meta;   /* the body has "meta" (a renewal without it keeps the old one) */
    uint32_t ttl_ms;
} reg_req_t;

/* What cJSON lets through that a registration must not: bytes below 0x20 other than JSON's
 * whitespace outside strings (cJSON skips them all, so a leading NUL passes), raw control bytes
 * inside strings, and \u0000, which cJSON decodes into a C string that then ends early
 * ("http://10.0.0.5:80\u0000x" would read as a valid URL). Returns NULL, or what is wrong with
 * *at set to its offset. */
static const char *reg_json_bytes(const char *p, size_t len, size_t *at)
{
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)p[i];
        *at = i;
        if (!in_string) {
            if (ch == '"')
                in_string = true;
            else if (ch < 0x20 && ch != '\t' && ch != '\n' && ch != '\r')
                return "a control byte outside a string";
        } else if (ch < 0x20) {
            return "an unescaped control byte in a string";
        } else if (ch == '"') {
            in_string = false;
        } else if (ch == '\\') {
            if (i + 5 < len && p[i + 1] == 'u' && memcmp(p + i + 2, "0000", 4) == 0)
                return "\\u0000 (NUL) in a string";
            i++;
        }
    }
    return NULL;
}

static int reg_name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A key that appears twice in one object of `v`, at any depth, or NULL. cJSON keeps both copies
 * and a lookup sees only the first, so such a body says two things and is refused. */
static const char *reg_json_duplicate(const cJSON *v)
{
    size_t n = 0;
    for (const cJSON *c = v->child; c; c = c->next, n++) {
        const char *d = reg_json_duplicate(c);
        if (d)
            return d;
    }
    if (!cJSON_IsObject(v) || n < 2)
        return NULL;
    const char **names = malloc(n * sizeof *names);
    if (!names)
        abort(); /* bounded by the admin body limit: treated like any small allocation */
    n = 0;
    for (const cJSON *c = v->child; c; c = c->next)
        names[n++] = c->string;
    qsort(names, n, sizeof *names, reg_name_cmp);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            dup = names[i];
    free(names);
    return dup;
}

/* Parses `body` as exactly one JSON value, stricter than cJSON alone (reg_json_bytes, nothing but
 * whitespace after the value, no duplicate keys). Returns the document, or NULL with the 400
 * reply in *json. */
static cJSON *reg_json_parse(const char *body, size_t len, char **json)
{
    size_t at = 0;
    const char *why = reg_json_bytes(body, len, &at);
    if (why) {
        reg_reply(json, 400, "bad_request", "the body is not valid JSON: %s at byte %zu", why, at);
        return NULL;
    }
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!doc || !cJSON_IsObject(doc)) {
        reg_reply(json, 400, "bad_request",
                  "the body must be a JSON object such as "
                  "{\"url\": \"http://10.0.0.5:8080\", \"upstream\": \"api\"}");
        cJSON_Delete(doc);
        return NULL;
    }
    at = (size_t)(end - body);
    while (at < len &&
           (body[at] == ' ' || body[at] == '\t' || body[at] == '\r' || body[at] == '\n'))
        at++;
    if (at < len) {
        reg_reply(json, 400, "bad_request",
                  "the body is not valid JSON: bytes after the object at byte %zu", at);
        cJSON_Delete(doc);
        return NULL;
    }
    const char *dup = reg_json_duplicate(doc);
    if (dup) {
        reg_reply(json, 400, "bad_request",
                  "key \"%.200s\" appears twice in one object of the body", dup);
        cJSON_Delete(doc);
        return NULL;
    }
    return doc;
}

/* Reads and checks the body. Returns 0 or an HTTP status with *json set. */
static int reg_parse(gw_registry_t *r, bool reg, const char *body, size_t len, reg_req_t *q,
                     char **json)
{
    const gw_config_t *cfg = r->cfg;
    cJSON *doc = reg_json_parse(body, len, json);
    if (!doc)
        return 400;
    int st = 0;
    const cJSON *url = cJSON_GetObjectItemCaseSensitive(doc, "url");
    const cJSON *up = cJSON_GetObjectItemCaseSensitive(doc, "upstream");
    const cJSON *weight = cJSON_GetObjectItemCaseSensitive(doc, "weight");
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(doc, "meta");
    const cJSON *ttl = cJSON_GetObjectItemCaseSensitive(doc, "ttl_ms");
    if (!cJSON_IsString(url)) {
        st = reg_reply(json, 400, "bad_request", "\"url\" is required (a string)");
        goto done;
    }
    const char *why = reg_parse_url(url->valuestring, &q->sa, &q->salen, q->url, q->authority);
    if (why) {
        st = reg_reply(json, 400, "bad_request", "url \"%.200s\": %s", url->valuestring, why);
        goto done;
    }
    if (up && !cJSON_IsNull(up)) {
        if (!cJSON_IsString(up)) {
            st = reg_reply(json, 400, "bad_request", "\"upstream\" must be a string");
            goto done;
        }
        q->u = gw_config_upstream_index(cfg, up->valuestring);
        if (q->u < 0) {
            st = reg_reply(json, 404, "unknown_upstream", "no upstream is called \"%.200s\"",
                           up->valuestring);
            goto done;
        }
    } else {
        q->u = cfg->registration.upstream;
        if (q->u < 0) {
            st = reg_reply(json, 400, "bad_request",
                           "\"upstream\" is required (there are %zu upstreams "
                           "and no registration.upstream)",
                           cfg->nupstreams);
            goto done;
        }
    }
    q->ttl_ms = cfg->registration.ttl_ms;
    if (reg) {
        if (weight && !cJSON_IsNull(weight)) {
            double d = cJSON_IsNumber(weight) ? weight->valuedouble : -1;
            /* The range first: converting 1e400 (inf) to long is undefined. */
            if (!(d >= 1 && d <= 1000) || d != (double)(long)d) {
                st = reg_reply(json, 400, "bad_request",
                               "\"weight\" must be an integer from 1 to 1000");
                goto done;
            }
            q->weight = (uint32_t)d;
            q->has_weight = true;
        }
        q->has_meta = meta != NULL;
        if (meta && !cJSON_IsNull(meta)) {
            if (!cJSON_IsObject(meta)) {
                st = reg_reply(json, 400, "bad_request", "\"meta\" must be an object");
                goto done;
            }
            q->meta_json = cJSON_PrintUnformatted(meta);
        }
        if (ttl && !cJSON_IsNull(ttl)) {
            double d = cJSON_IsNumber(ttl) ? ttl->valuedouble : -1;
            if (!(d >= 0 && d <= GW_REG_MAX_TTL_MS) || d != (double)(long)d) {
                st = reg_reply(json, 400, "bad_request",
                               "\"ttl_ms\" must be an integer from 0 (never "
                               "expires) to %u",
                               GW_REG_MAX_TTL_MS);
                goto done;
            }
            q->ttl_ms = (uint32_t)d;
        }
    }
    bool allowed = false;
    for (size_t i = 0; i < cfg->registration.nallow && !allowed; i++)
        allowed = gw_cidr_match(&cfg->registration.allow[i], (const struct sockaddr *)&q->sa);
    if (!allowed) {
        st = reg_reply(json, 403, "not_allowed", "%s is outside registration.allow", q->url);
        goto done;
    }
    const gw_upstream_cfg_t *uc = &cfg->upstreams[q->u];
    for (size_t k = 0; k < uc->nbackends; k++)
        if (gw_sockaddr_equal(&uc->backends[k].sa, uc->backends[k].salen, &q->sa, q->salen)) {
            st = reg_reply(json, 409, "static_backend",
                           "%s is static backend %s of upstream %s "
                           "(change gateway.lua instead)",
                           q->url, uc->backends[k].url, uc->name);
            goto done;
        }
done:
    cJSON_Delete(doc);
    return st;
}

static char *reg_ok(const char *status, const gw_upstream_cfg_t *uc, const gw_reg_slot_t *s,
                    uint32_t k)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", status);
    cJSON_AddStringToObject(o, "upstream", uc->name);
    cJSON_AddStringToObject(o, "url", s->url);
    cJSON_AddNumberToObject(o, "id", k + 1);
    cJSON_AddNumberToObject(o, "ttl_ms", s->ttl_ms);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

/* The slot of `sa` in upstream u: a member (*member set), or one that held it before; -1. */
static int reg_find(gw_registry_t *r, const gw_upstream_cfg_t *uc,
                    const struct sockaddr_storage *sa, socklen_t salen, bool *member)
{
    uint32_t n = gw_upstream_nslots(uc);
    for (uint32_t k = (uint32_t)uc->nbackends; k < n; k++) {
        uint32_t g = gw_upstream_slot_gindex(uc, k);
        if (r->slots[g].has_url &&
            gw_sockaddr_equal(&r->slots[g].cfg.sa, r->slots[g].cfg.salen, sa, salen)) {
            *member = __atomic_load_n(&r->backends[g]->member, __ATOMIC_ACQUIRE) != 0;
            return (int)k;
        }
    }
    return -1;
}

/* The slot of upstream `uc` (in registry `r`) that holds address `sa` now: a static backend or a
 * registered member; -1. */
static int reg_slot_of(const gw_registry_t *r, const gw_upstream_cfg_t *uc,
                       const struct sockaddr_storage *sa, socklen_t salen)
{
    for (uint32_t k = 0; k < gw_upstream_nslots(uc); k++) {
        const gw_backend_t *b = r->backends[gw_upstream_slot_gindex(uc, k)];
        if (b->registered && !__atomic_load_n(&b->member, __ATOMIC_ACQUIRE))
            continue;
        if (gw_sockaddr_equal(&b->cfg->sa, b->cfg->salen, sa, salen))
            return (int)k;
    }
    return -1;
}

/* A slot for a new URL: never used, else the one free the longest that is safe to rewrite. */
static int reg_free_slot(gw_registry_t *r, const gw_upstream_cfg_t *uc)
{
    uint32_t n = gw_upstream_nslots(uc);
    int best = -1;
    uint64_t best_ms = UINT64_MAX;
    for (uint32_t k = (uint32_t)uc->nbackends; k < n; k++) {
        uint32_t g = gw_upstream_slot_gindex(uc, k);
        gw_reg_slot_t *s = &r->slots[g];
        gw_backend_t *b = r->backends[g];
        if (!s->has_url)
            return (int)k;
        if (__atomic_load_n(&b->member, __ATOMIC_ACQUIRE) || GW_RELAXED_LOAD(b->inflight) != 0 ||
            (r->server && !gw_server_membership_acked(r->server, s->left_gen)))
            continue;
        if (s->left_ms < best_ms) {
            best_ms = s->left_ms;
            best = (int)k;
        }
    }
    return best;
}

/* Points a slot at a URL (only while no worker can be using it: see the top of this file). */
static void reg_slot_set_address(gw_reg_slot_t *s, const char *url, const char *authority,
                                 const struct sockaddr_storage *sa, socklen_t salen)
{
    snprintf(s->url, sizeof s->url, "%s", url);
    snprintf(s->authority, sizeof s->authority, "%s", authority);
    s->cfg.sa = *sa;
    s->cfg.salen = salen;
    s->has_url = true;
}

static void reg_set_meta(gw_registry_t *r, gw_reg_slot_t *s, char *meta_json, uint64_t gen_hint)
{
    if (s->cfg.meta_json) {
        gw_reg_retired_t *x = malloc(sizeof *x);
        if (!x)
            abort();
        x->p = s->cfg.meta_json;
        x->gen = gen_hint;
        x->next = r->retired;
        r->retired = x;
    }
    __atomic_store_n(&s->cfg.meta_json, meta_json, __ATOMIC_RELEASE);
}

/* Runs hooks.on_register for `q` in slot k (the values it would have once admitted). Returns 0
 * (admitted, or no hook) or an HTTP status with *json set. */
static int reg_admit(gw_registry_t *r, const reg_req_t *q, uint32_t k, uint32_t weight,
                     const char *meta_json, char **json)
{
    const gw_upstream_cfg_t *uc = &r->cfg->upstreams[q->u];
    gw_lua_backend_info_t info = {
        .id = k + 1, .url = q->url, .weight = weight, .meta_json = meta_json, .static_index = -1};
    char *herr = NULL;
    int rc = gw_lua_ctl_on_register(r->lua, (size_t)q->u, &info, &herr);
    if (rc < 0) {
        gw_log_err("lua: hooks.on_register failed for %s (upstream %s): %s", q->url, uc->name,
                   herr ? herr : "?");
        free(herr);
        return reg_reply(json, 500, "hook_error",
                         "hooks.on_register failed (see the gateway's log)");
    }
    if (rc == 0) {
        reg_count(r, (size_t)q->u, GW_REG_REJECTED);
        return reg_reply(json, 403, "rejected", "hooks.on_register rejected %s", q->url);
    }
    return 0;
}

/* A heartbeat from a member: the TTL starts again, and weight and meta may change. A change
 * goes through on_register again (an admission policy cannot be dodged by renewing with other
 * values); if the hook refuses it, nothing changes, the TTL included. */
static int reg_renew(gw_registry_t *r, reg_req_t *q, uint32_t k, uint64_t now_ms, char **json)
{
    const gw_upstream_cfg_t *uc = &r->cfg->upstreams[q->u];
    gw_reg_slot_t *s = &r->slots[gw_upstream_slot_gindex(uc, k)];
    bool weight_changed = q->has_weight && q->weight != s->cfg.weight;
    bool meta_changed =
        q->has_meta && ((q->meta_json == NULL) != (s->cfg.meta_json == NULL) ||
                        (q->meta_json && strcmp(q->meta_json, s->cfg.meta_json) != 0));
    if (weight_changed || meta_changed) {
        int st = reg_admit(r, q, k, weight_changed ? q->weight : s->cfg.weight,
                           meta_changed ? q->meta_json : s->cfg.meta_json, json);
        if (st)
            return st;
    }
    s->ttl_ms = q->ttl_ms;
    s->expires_ms = now_ms + q->ttl_ms;
    if (weight_changed)
        GW_RELAXED_STORE(s->cfg.weight, q->weight);
    if (meta_changed) {
        /* Retired with the generation of the announcement below (the next one). */
        uint64_t next = r->server ? gw_server_membership_gen(r->server) + 1 : 0;
        reg_set_meta(r, s, q->meta_json, next);
        q->meta_json = NULL;
    }
    if (weight_changed || meta_changed) {
        /* Workers see a member flip by themselves; this they learn from the revision. */
        __atomic_add_fetch(&r->backends[gw_upstream_slot_gindex(uc, k)]->revision, 1,
                           __ATOMIC_RELEASE);
        reg_announce(r);
    }
    reg_count(r, (size_t)q->u, GW_REG_RENEWED);
    *json = reg_ok("renewed", uc, s, k);
    return 200;
}

static int reg_register(gw_registry_t *r, reg_req_t *q, uint64_t now_ms, char **json)
{
    const gw_upstream_cfg_t *uc = &r->cfg->upstreams[q->u];
    bool member = false;
    int k = reg_find(r, uc, &q->sa, q->salen, &member);
    if (k >= 0 && member)
        return reg_renew(r, q, (uint32_t)k, now_ms, json);
    bool reuse_same = k >= 0;
    if (!reuse_same)
        k = reg_free_slot(r, uc);
    if (k < 0)
        return reg_reply(json, 503, "full",
                         "upstream %s has no free registration slot "
                         "(registration.max_backends = %u)",
                         uc->name, r->cfg->registration.max_backends);
    uint32_t g = gw_upstream_slot_gindex(uc, (uint32_t)k);
    gw_reg_slot_t *s = &r->slots[g];
    gw_backend_t *b = r->backends[g];
    int st = reg_admit(r, q, (uint32_t)k, q->has_weight ? q->weight : 1, q->meta_json, json);
    if (st)
        return st;
    if (!reuse_same) {
        /* A new URL in this slot: no worker uses it now (reg_free_slot), so it is rewritten in
         * place and starts with clean statistics. */
        if (s->has_url && r->server)
            gw_server_reset_backend(r->server, g);
        reg_slot_set_address(s, q->url, q->authority, &q->sa, q->salen);
        free(s->cfg.meta_json);
        s->cfg.meta_json = NULL;
        gw_health_reset(b);
        GW_RELAXED_STORE(b->latency_ewma_us, 0);
    }
    /* Active checks start over for every registration (hcheck.c compares epochs), from "up":
     * the backend has just said it is ready. */
    GW_RELAXED_STORE(b->epoch, b->epoch + 1);
    gw_health_set_down(b, false);
    GW_RELAXED_STORE(s->cfg.weight, q->has_weight ? q->weight : 1);
    if (reuse_same) {
        uint64_t next = r->server ? gw_server_membership_gen(r->server) + 1 : 0;
        reg_set_meta(r, s, q->meta_json, next);
    } else {
        s->cfg.meta_json = q->meta_json;
    }
    q->meta_json = NULL;
    s->ttl_ms = q->ttl_ms;
    s->expires_ms = now_ms + q->ttl_ms;
    __atomic_store_n(&b->member, 1, __ATOMIC_RELEASE);
    reg_announce(r);
    reg_count(r, (size_t)q->u, GW_REG_REGISTERED);
    gw_log_info("upstream %s: backend %s registered (id %d)", uc->name, s->url, k + 1);
    *json = reg_ok("registered", uc, s, (uint32_t)k);
    return 201;
}

static int reg_unregister(gw_registry_t *r, reg_req_t *q, uint64_t now_ms, char **json)
{
    const gw_upstream_cfg_t *uc = &r->cfg->upstreams[q->u];
    bool member = false;
    int k = reg_find(r, uc, &q->sa, q->salen, &member);
    if (k < 0 || !member)
        return reg_reply(json, 404, "not_registered", "%s is not registered in upstream %s", q->url,
                         uc->name);
    reg_leave(r, (size_t)q->u, (uint32_t)k, now_ms, GW_REG_UNREGISTERED);
    *json = reg_ok("unregistered", uc, &r->slots[gw_upstream_slot_gindex(uc, (uint32_t)k)],
                   (uint32_t)k);
    return 200;
}

int gw_registry_handle(gw_registry_t *r, bool reg, const char *body, size_t len, uint64_t now_ms,
                       char **json)
{
    *json = NULL;
    if (!r->cfg->registration.enabled)
        return reg_reply(json, 403, "registration_disabled",
                         "registration is off (add a `registration` table to gateway.lua)");
    reg_req_t q = {0};
    int st = reg_parse(r, reg, body, len, &q, json);
    if (st == 0)
        st = reg ? reg_register(r, &q, now_ms, json) : reg_unregister(r, &q, now_ms, json);
    free(q.meta_json);
    if (!*json)
        abort(); /* cJSON out of memory: a control path, treated like any small allocation */
    return st;
}

/* ---- reload ---- */

size_t gw_registry_adopt(gw_registry_t *r, const gw_registry_t *old)
{
    const gw_config_t *cfg = r->cfg, *ocfg = old->cfg;
    size_t kept = 0;
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        const gw_upstream_cfg_t *uc = &cfg->upstreams[u];
        int ou = gw_config_upstream_index(ocfg, uc->name);
        if (ou < 0)
            continue;
        const gw_upstream_cfg_t *ouc = &ocfg->upstreams[ou];
        for (int e = 0; e < GW_REG_EVENT_COUNT; e++)
            r->events[u * GW_REG_EVENT_COUNT + (size_t)e] =
                old->events[(size_t)ou * GW_REG_EVENT_COUNT + (size_t)e];
        /* Backends in both configs keep what the gateway learned about them. */
        for (uint32_t k = 0; k < uc->nbackends; k++) {
            int ok = reg_slot_of(old, ouc, &uc->backends[k].sa, uc->backends[k].salen);
            if (ok < 0)
                continue;
            const gw_backend_t *ob = old->backends[gw_upstream_slot_gindex(ouc, (uint32_t)ok)];
            gw_backend_t *b = r->backends[uc->backends[k].gindex];
            b->latency_ewma_us = GW_RELAXED_LOAD(ob->latency_ewma_us);
            gw_health_adopt(b, ob);
        }
        if (!cfg->registration.enabled)
            continue;
        for (uint32_t k = (uint32_t)ouc->nbackends; k < gw_upstream_nslots(ouc); k++) {
            uint32_t og = gw_upstream_slot_gindex(ouc, k);
            const gw_backend_t *ob = old->backends[og];
            const gw_reg_slot_t *os = &old->slots[og];
            if (!__atomic_load_n(&ob->member, __ATOMIC_ACQUIRE))
                continue;
            bool is_static = false;
            for (size_t j = 0; j < uc->nbackends && !is_static; j++)
                is_static = gw_sockaddr_equal(&uc->backends[j].sa, uc->backends[j].salen,
                                              &os->cfg.sa, os->cfg.salen);
            if (is_static)
                continue; /* gateway.lua lists it now */
            int nk = reg_free_slot(r, uc);
            if (nk < 0) {
                gw_log_warn("reload: upstream %s has no free registration slot for %s: dropped",
                            uc->name, os->url);
                continue;
            }
            gw_lua_backend_info_t info = {.id = (uint32_t)nk + 1,
                                          .url = os->url,
                                          .weight = os->cfg.weight,
                                          .meta_json = os->cfg.meta_json,
                                          .static_index = -1};
            char *herr = NULL;
            int rc = gw_lua_ctl_on_register(r->lua, u, &info, &herr);
            if (rc <= 0) {
                gw_log_warn("reload: hooks.on_register %s %s: dropped",
                            rc < 0 ? "failed for" : "refused", os->url);
                if (rc < 0)
                    gw_log_err("lua: %s", herr ? herr : "?");
                free(herr);
                continue;
            }
            uint32_t g = gw_upstream_slot_gindex(uc, (uint32_t)nk);
            gw_reg_slot_t *s = &r->slots[g];
            gw_backend_t *b = r->backends[g];
            reg_slot_set_address(s, os->url, os->authority, &os->cfg.sa, os->cfg.salen);
            s->cfg.weight = os->cfg.weight;
            s->cfg.meta_json = os->cfg.meta_json ? strdup(os->cfg.meta_json) : NULL;
            s->ttl_ms = os->ttl_ms;
            s->expires_ms = os->expires_ms;
            b->latency_ewma_us = GW_RELAXED_LOAD(ob->latency_ewma_us);
            b->epoch++;
            b->member = 1;
            kept++;
        }
    }
    return kept;
}
