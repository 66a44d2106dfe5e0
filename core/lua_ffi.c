/*
 * lua_ffi: the only C functions Lua may call (through LuaJIT's FFI; lua/gw/init.lua declares
 * them with ffi.cdef). They follow lua-resty-core's shape: plain C types, pointer + length in,
 * results through out-parameters, a status code back and `const char **err` for a message; the
 * Lua wrappers turn that into `true` / `nil, err`. Nothing here raises a Lua error or allocates
 * outside the request arena, and every string handed back to Lua is copied by Lua (ffi.string)
 * before C memory can change.
 *
 * The request is the one whose hook is running (gw_ffi_current below): Lua never holds a pointer
 * to it, only its id (the key of req.ctx, lua_bridge.c), so nothing in Lua can outlive it.
 *
 * The binary exports these symbols (CMake ENABLE_EXPORTS); gw_ffi_keep in lua_bridge.c references
 * every one, so the linker keeps this object even though no C code calls them.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "lua_bridge.h"
#include "worker.h"

/* The request whose hook is running, set by lua_bridge.c around each call. Lua passes NULL for
 * `p` and the functions use this: casting a lightuserdata to a pointer is not JIT-compilable, so
 * passing no pointer at all keeps the whole hook on a trace (lua-resty-core does the same). */
__thread gw_conn_t *gw_ffi_current;
#define GW_FFI_CONN(p) ((gw_conn_t *)((p) ? (p) : gw_ffi_current))

enum { GW_REQ_METHOD = 0, GW_REQ_PATH, GW_REQ_ORIG_PATH, GW_REQ_QUERY, GW_REQ_HOST, GW_REQ_CLIENT_IP,
       GW_REQ_ID };

/* ---- header edits ---- */

static bool ffi_valid_value(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
            return false;
    return true;
}

/* Records an edit; a SET or CLEAR drops earlier edits of the same name. */
static int ffi_edit(gw_conn_t *c, gw_header_edits_t *e, int op, const char *name, size_t nlen,
                    const char *value, size_t vlen, const char **err)
{
    if (op < GW_EDIT_SET || op > GW_EDIT_CLEAR) {
        *err = "bad operation";
        return -1;
    }
    if (!gw_http1_is_token(GW_SLICE(name, nlen))) {
        *err = "invalid header name";
        return -1;
    }
    if (op != GW_EDIT_CLEAR && !ffi_valid_value(value, vlen)) {
        *err = "invalid header value (CR, LF or NUL)";
        return -1;
    }
    if (gw_slice_ieq(GW_SLICE(name, nlen), "content-length") ||
        gw_slice_ieq(GW_SLICE(name, nlen), "transfer-encoding") || gw_http1_is_hop_by_hop(GW_SLICE(name, nlen))) {
        *err = "framing and hop-by-hop headers are managed by the gateway";
        return -1;
    }
    if (op != GW_EDIT_ADD) {
        uint32_t k = 0;
        for (uint32_t i = 0; i < e->n; i++)
            if (!(e->e[i].name.len == nlen && strncasecmp(e->e[i].name.p, name, nlen) == 0))
                e->e[k++] = e->e[i];
        e->n = k;
    }
    if (e->n == e->cap) {
        uint32_t cap = e->cap ? e->cap * 2 : 8;
        gw_header_edit_t *ne = gw_arena_alloc(&c->arena, cap * sizeof *ne);
        if (!ne) {
            *err = "out of memory";
            return -1;
        }
        if (e->n)
            memcpy(ne, e->e, e->n * sizeof *ne);
        e->e = ne;
        e->cap = cap;
    }
    char *nc = gw_arena_dup(&c->arena, name, nlen);
    char *vc = op == GW_EDIT_CLEAR ? NULL : gw_arena_dup(&c->arena, value, vlen);
    if (!nc || (op != GW_EDIT_CLEAR && !vc)) {
        *err = "out of memory";
        return -1;
    }
    e->e[e->n++] = (gw_header_edit_t){(uint8_t)op, GW_SLICE(nc, nlen), GW_SLICE(vc, vc ? vlen : 0)};
    return 0;
}

/* The effective headers: the originals not overridden by an edit, then the SET/ADD edits.
 * Index i walks that sequence. */
static bool ffi_header_at(const gw_header_t *orig, uint32_t norig, const gw_header_edits_t *e,
                          uint32_t i, gw_slice_t *name, gw_slice_t *value)
{
    for (uint32_t k = 0; k < norig; k++) {
        if (gw_edits_override(e, orig[k].name))
            continue;
        if (i-- == 0) {
            *name = orig[k].name;
            *value = orig[k].value;
            return true;
        }
    }
    for (uint32_t k = 0; k < e->n; k++) {
        if (e->e[k].op == GW_EDIT_CLEAR)
            continue;
        if (i-- == 0) {
            *name = e->e[k].name;
            *value = e->e[k].value;
            return true;
        }
    }
    return false;
}

static int ffi_header_find(const gw_header_t *orig, uint32_t norig, const gw_header_edits_t *e,
                           const char *name, size_t nlen, const char **out, size_t *len)
{
    gw_slice_t n, v;
    for (uint32_t i = 0; ffi_header_at(orig, norig, e, i, &n, &v); i++) {
        if (n.len == nlen && strncasecmp(n.p, name, nlen) == 0) {
            *out = v.p;
            *len = v.len;
            return 1;
        }
    }
    return 0;
}

/* ---- request ---- */

int gw_ffi_req_get(void *p, int what, const char **out, size_t *len);
int gw_ffi_req_get(void *p, int what, const char **out, size_t *len)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    gw_request_t *r = &c->req;
    gw_slice_t s = GW_SLICE("", 0);
    switch (what) {
    case GW_REQ_METHOD:
        s = r->method_name;
        break;
    case GW_REQ_PATH:
        s = r->lua_path.p ? r->lua_path : r->up_path;
        break;
    case GW_REQ_ORIG_PATH:
        s = r->raw_path;
        break;
    case GW_REQ_QUERY:
        s = r->query;
        break;
    case GW_REQ_HOST:
        s = r->host;
        break;
    case GW_REQ_CLIENT_IP:
        s = GW_SLICE(c->client_ip, strlen(c->client_ip));
        break;
    case GW_REQ_ID:
        s = r->request_id;
        break;
    default:
        return -1;
    }
    *out = s.p ? s.p : "";
    *len = s.len;
    return 0;
}

int gw_ffi_req_header(void *p, const char *name, size_t nlen, const char **out, size_t *len);
int gw_ffi_req_header(void *p, const char *name, size_t nlen, const char **out, size_t *len)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    return ffi_header_find(c->req.headers, c->req.nheaders, &c->req.req_edits, name, nlen, out, len);
}

int gw_ffi_req_header_at(void *p, uint32_t i, const char **name, size_t *nlen, const char **value,
                         size_t *vlen);
int gw_ffi_req_header_at(void *p, uint32_t i, const char **name, size_t *nlen, const char **value,
                         size_t *vlen)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    gw_slice_t n, v;
    if (!ffi_header_at(c->req.headers, c->req.nheaders, &c->req.req_edits, i, &n, &v))
        return 0;
    *name = n.p;
    *nlen = n.len;
    *value = v.p ? v.p : "";
    *vlen = v.len;
    return 1;
}

int gw_ffi_req_edit(void *p, int op, const char *name, size_t nlen, const char *value, size_t vlen,
                    const char **err);
int gw_ffi_req_edit(void *p, int op, const char *name, size_t nlen, const char *value, size_t vlen,
                    const char **err)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    if (gw_slice_ieq(GW_SLICE(name, nlen), "host")) {
        if (op == GW_EDIT_CLEAR || !ffi_valid_value(value, vlen) || vlen == 0) {
            *err = "Host can only be set to a valid value";
            return -1;
        }
        char *h = gw_arena_dup(&c->arena, value, vlen);
        if (!h) {
            *err = "out of memory";
            return -1;
        }
        c->req.lua_host = GW_SLICE(h, vlen);
        /* Also as an edit, so req:header("Host") and req:headers() show it; the upstream head
         * takes Host from lua_host only (gw_edits_append skips it). */
        return ffi_edit(c, &c->req.req_edits, GW_EDIT_SET, name, nlen, value, vlen, err);
    }
    return ffi_edit(c, &c->req.req_edits, op, name, nlen, value, vlen, err);
}

int gw_ffi_req_set_path(void *p, const char *path, size_t len, const char **err);
int gw_ffi_req_set_path(void *p, const char *path, size_t len, const char **err)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    if (len == 0 || path[0] != '/') {
        *err = "the path must start with \"/\"";
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)path[i];
        if (ch <= 0x20 || ch == 0x7f || ch == '?' || ch == '#') {
            *err = "the path must not contain spaces, control characters, '?' or '#'";
            return -1;
        }
    }
    char *d = gw_arena_dup(&c->arena, path, len);
    if (!d) {
        *err = "out of memory";
        return -1;
    }
    c->req.lua_path = GW_SLICE(d, len);
    return 0;
}

int gw_ffi_req_tried(void *p, uint32_t index);
int gw_ffi_req_tried(void *p, uint32_t index)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    return index < 64 * GW_ARRAY_LEN(c->req.tried) && ((c->req.tried[index / 64] >> (index % 64)) & 1);
}

int gw_ffi_respond(void *p, int status, const char *body, size_t len, const char **err);
int gw_ffi_respond(void *p, int status, const char *body, size_t len, const char **err)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    if (status < 200 || status > 599) {
        *err = "status must be between 200 and 599";
        return -1;
    }
    char *b = gw_arena_dup(&c->arena, body ? body : "", len);
    if (!b) {
        *err = "out of memory";
        return -1;
    }
    c->req.lua_respond = status;
    c->req.lua_body = GW_SLICE(b, len);
    return 0;
}

/* ---- response ---- */

int gw_ffi_res_status(void *p);
int gw_ffi_res_status(void *p)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    if (c->req.lua_status)
        return c->req.lua_status;
    if (c->req.resp_up)
        return c->req.resp_up->parser.status_code;
    return c->req.status;
}

int gw_ffi_res_set_status(void *p, int status, const char **err);
int gw_ffi_res_set_status(void *p, int status, const char **err)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    if (status < 200 || status > 599) {
        *err = "status must be between 200 and 599";
        return -1;
    }
    c->req.lua_status = status;
    return 0;
}

static void ffi_res_orig(gw_conn_t *c, const gw_header_t **h, uint32_t *n)
{
    gw_upconn_t *u = c->req.resp_up;
    *h = u ? u->headers : NULL;
    *n = u ? u->nheaders : 0;
}

int gw_ffi_res_header(void *p, const char *name, size_t nlen, const char **out, size_t *len);
int gw_ffi_res_header(void *p, const char *name, size_t nlen, const char **out, size_t *len)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    const gw_header_t *h;
    uint32_t n;
    ffi_res_orig(c, &h, &n);
    return ffi_header_find(h, n, &c->req.resp_edits, name, nlen, out, len);
}

int gw_ffi_res_header_at(void *p, uint32_t i, const char **name, size_t *nlen, const char **value,
                         size_t *vlen);
int gw_ffi_res_header_at(void *p, uint32_t i, const char **name, size_t *nlen, const char **value,
                         size_t *vlen)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    const gw_header_t *h;
    uint32_t n;
    gw_slice_t hn, hv;
    ffi_res_orig(c, &h, &n);
    if (!ffi_header_at(h, n, &c->req.resp_edits, i, &hn, &hv))
        return 0;
    *name = hn.p;
    *nlen = hn.len;
    *value = hv.p ? hv.p : "";
    *vlen = hv.len;
    return 1;
}

int gw_ffi_res_edit(void *p, int op, const char *name, size_t nlen, const char *value, size_t vlen,
                    const char **err);
int gw_ffi_res_edit(void *p, int op, const char *name, size_t nlen, const char *value, size_t vlen,
                    const char **err)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    return ffi_edit(c, &c->req.resp_edits, op, name, nlen, value, vlen, err);
}

int gw_ffi_res_info(void *p, int what, const char **out, size_t *len);
int gw_ffi_res_info(void *p, int what, const char **out, size_t *len)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    gw_slice_t s = GW_SLICE("", 0);
    if (what == 0) { /* backend */
        if (!c->req.backend)
            return 0;
        s = GW_SLICE(c->req.backend->cfg->url, strlen(c->req.backend->cfg->url));
    } else { /* source */
        s = c->req.resp_up ? GW_SLICE_LIT("upstream") : GW_SLICE_LIT("gateway");
    }
    *out = s.p;
    *len = s.len;
    return 1;
}

int gw_ffi_res_body(void *p, const char **out, size_t *len);
int gw_ffi_res_body(void *p, const char **out, size_t *len)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    if (!c->req.resp_buffered)
        return 0;
    *out = c->req.resp_body.p ? c->req.resp_body.p : "";
    *len = c->req.resp_body.len;
    return 1;
}

int gw_ffi_res_set_body(void *p, const char *body, size_t len, const char **err);
int gw_ffi_res_set_body(void *p, const char *body, size_t len, const char **err)
{
    gw_conn_t *c = GW_FFI_CONN(p);
    if (!c->req.resp_buffered) {
        *err = "not buffered: set buffer_response on the route";
        return -1;
    }
    gw_buf_t b;
    gw_buf_init(&b, &c->arena, len + 1);
    gw_buf_append(&b, body, len);
    if (b.oom) {
        *err = "out of memory";
        return -1;
    }
    c->req.resp_body = b;
    return 0;
}

/* ---- gw ---- */

double gw_ffi_now(void);
double gw_ffi_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void gw_ffi_log(int level, const char *msg, size_t len);
void gw_ffi_log(int level, const char *msg, size_t len)
{
    if (level < GW_LOG_DEBUG || level > GW_LOG_ERR || level < gw_log_get_level())
        return;
    gw_log(level, "[lua] %.*s", (int)GW_MIN(len, 8192), msg);
}

/* Referenced from lua_bridge.c so the linker keeps this object file (see the comment on top). */
void *const gw_ffi_keep[] = {
    (void *)gw_ffi_req_get,     (void *)gw_ffi_req_header,     (void *)gw_ffi_req_header_at,
    (void *)gw_ffi_req_edit,    (void *)gw_ffi_req_set_path,   (void *)gw_ffi_req_tried,
    (void *)gw_ffi_respond,     (void *)gw_ffi_res_status,     (void *)gw_ffi_res_set_status,
    (void *)gw_ffi_res_header,  (void *)gw_ffi_res_header_at,  (void *)gw_ffi_res_edit,
    (void *)gw_ffi_res_info,    (void *)gw_ffi_now,            (void *)gw_ffi_log,
    (void *)gw_ffi_res_body,    (void *)gw_ffi_res_set_body,
};
