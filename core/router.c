/*
 * router: route selection and the native path rewrites.
 *
 * Everything here is a pure function of the immutable config and the request's bytes: no
 * allocation, no I/O, no global state, so any worker may call it at any time. Output goes into
 * buffers the caller owns and sizes; a result that does not fit is an error (-1), never a silent
 * truncation, because a truncated path would send the request somewhere else.
 *
 * Matching is on a canonical path (escapes of unreserved characters decoded, dot segments
 * removed, slashes merged, path parameters dropped) so that "/public/../admin", "/%61dmin" or
 * "//admin" cannot reach a backend as "/admin" while being matched as something else. The
 * request still goes upstream as the client wrote it; the canonical form is only what routes
 * and hooks look at (unless the route rewrites the path). path_prefix is a byte prefix, like
 * nginx's `location /api`: "/api" also matches "/apix"; write "/api/" to mean the directory.
 */
#include "router.h"

#include <stdint.h>

static unsigned char gw_router_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* Reduces a Host header value to the bare name: drops a ":port" suffix (keeping an IPv6 literal's
 * brackets intact) and one trailing dot ("example.com." is the same name as "example.com"). */
static gw_slice_t gw_router_host_name(gw_slice_t host)
{
    size_t n = host.len;
    if (n == 0)
        return host; /* no Host (HTTP/1.0): .p may be NULL, which memchr must not get */
    if (host.p[0] == '[') {
        const char *end = memchr(host.p, ']', n);
        if (end != NULL)
            n = (size_t)(end - host.p) + 1;
    } else {
        const char *colon = memchr(host.p, ':', n);
        if (colon != NULL)
            n = (size_t)(colon - host.p);
    }
    if (n > 0 && host.p[n - 1] == '.')
        n--;
    return GW_SLICE(host.p, n);
}

/* Case-insensitive equality of `n` bytes; `pattern` is already lower-case. */
static bool gw_router_ieq(const char *pattern, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)pattern[i] != gw_router_lower((unsigned char)s[i]))
            return false;
    }
    return true;
}

bool gw_router_host_matches(const char *pattern, gw_slice_t host)
{
    if (pattern == NULL)
        return true;
    gw_slice_t name = gw_router_host_name(host);
    size_t plen = strlen(pattern);

    if (plen >= 2 && pattern[0] == '*' && pattern[1] == '.') {
        /* "*.example.com": the name must end in ".example.com" and have at least one byte
         * before it, so the bare "example.com" does not match. */
        const char *suffix = pattern + 1;
        size_t slen = plen - 1;
        if (name.len <= slen)
            return false;
        return gw_router_ieq(suffix, name.p + name.len - slen, slen);
    }
    return name.len == plen && gw_router_ieq(pattern, name.p, plen);
}

/* The unreserved characters of RFC 3986 §2.3: a percent-encoded one is the same character
 * (§6.2.2.2), so it is decoded; anything else keeps its encoding. */
static bool gw_router_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static int gw_router_hex(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = gw_router_lower(c);
    return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}

ssize_t gw_router_canonical_path(gw_slice_t path, bool merge_slashes, bool decode_slash, char *out,
                                 size_t cap)
{
    static const char hexdigits[] = "0123456789ABCDEF";
    if (path.len == 0 || path.p[0] != '/')
        return GW_ROUTER_EPATH;
    /* The output is never longer than the input, and each byte is written only after the input
     * bytes it stands for were read, so path.len bytes of `out` are always enough. */
    if (cap < path.len)
        return GW_ROUTER_ENOSPC;

    size_t o = 0; /* bytes of finished segments in `out`, each with its leading '/' */
    size_t i = 1; /* input position, just past a separator */
    for (;;) {
        /* One segment: decoded into out[o + 1 ..) behind its '/', then judged as a whole. */
        size_t s = o + 1, w = s;
        bool params = false, last = true;
        out[o] = '/';
        while (i < path.len) {
            unsigned char ch = (unsigned char)path.p[i];
            size_t step = 1;
            bool keep_escape = false;
            if (ch == '%') {
                int hi = i + 2 < path.len ? gw_router_hex((unsigned char)path.p[i + 1]) : -1;
                int lo = hi >= 0 ? gw_router_hex((unsigned char)path.p[i + 2]) : -1;
                if (lo < 0)
                    return GW_ROUTER_EESCAPE;
                ch = (unsigned char)(hi * 16 + lo);
                if (ch == 0)
                    return GW_ROUTER_EESCAPE;
                step = 3;
                keep_escape = ch != '/' && ch != '\\' && !gw_router_unreserved(ch);
            } else if (ch == ';') {
                /* A path parameter ("/a;jsessionid=1/b"): servers that strip parameters see
                 * "/a/b", so the canonical path does too. What follows is still checked. */
                params = true;
            }
            if (ch == '/' || ch == '\\') {
                /* A backslash (raw or encoded) and an encoded slash are separators to some
                 * servers and plain bytes to others: refused, or taken as "/" when the route
                 * says encoded_slash = "decode". */
                if ((step == 3 || ch == '\\') && !decode_slash)
                    return GW_ROUTER_ESLASH;
                i += step;
                last = false;
                break;
            }
            if (!params) {
                if (keep_escape) {
                    out[w++] = '%';
                    out[w++] = hexdigits[ch >> 4];
                    out[w++] = hexdigits[ch & 15];
                } else {
                    out[w++] = (char)ch;
                }
            }
            i += step;
        }

        size_t n = w - s;
        if (n == 1 && out[s] == '.') {
            /* "." is dropped; at the end it leaves the trailing "/" (RFC 3986 §5.2.4). */
            if (last)
                o++;
        } else if (n == 2 && out[s] == '.' && out[s + 1] == '.') {
            /* ".." removes the previous segment; at the root there is none, which is what keeps
             * it from climbing above "/". */
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0)
                o--;
            if (last)
                out[o++] = '/';
        } else if (n == 0 && merge_slashes && !last) {
            /* An empty segment inside the path: "//" counts as "/". A final empty segment is
             * the trailing "/" and stays. */
        } else {
            o = w;
        }
        if (last)
            break;
    }
    return (ssize_t)o;
}

/* Which canonical form a route matches on: one per combination of its path options. */
static unsigned gw_router_form(const gw_route_cfg_t *r)
{
    return (r->merge_slashes ? 0u : 1u) | (r->decode_slash ? 2u : 0u);
}

size_t gw_router_scratch_size(const gw_config_t *cfg, size_t path_len)
{
    unsigned used = 0;
    for (size_t i = 0; i < cfg->nroutes; i++)
        used |= 1u << gw_router_form(&cfg->routes[i]);
    /* A route that refuses encoded slashes also looks at the decoded form (gw_router_match). */
    used |= (used & 3u) << 2;
    return (size_t)__builtin_popcount(used) * path_len;
}

void gw_router_path_init(gw_router_path_t *rp, gw_slice_t raw, char *scratch)
{
    memset(rp, 0, sizeof *rp);
    rp->raw = raw;
    rp->scratch = scratch;
}

static ssize_t gw_router_form_get(gw_router_path_t *rp, bool merge, bool decode, gw_slice_t *out)
{
    unsigned f = (merge ? 0u : 1u) | (decode ? 2u : 0u);
    if (rp->form[f].p == NULL) {
        char *dst = rp->scratch + rp->nforms * rp->raw.len;
        ssize_t n = gw_router_canonical_path(rp->raw, merge, decode, dst, rp->raw.len);
        if (n < 0)
            return n;
        rp->form[f] = GW_SLICE(dst, (size_t)n);
        rp->nforms++;
    }
    *out = rp->form[f];
    return (ssize_t)out->len;
}

ssize_t gw_router_path_for(gw_router_path_t *rp, const gw_route_cfg_t *route, gw_slice_t *out)
{
    return gw_router_form_get(rp, route->merge_slashes, route->decode_slash, out);
}

static bool gw_router_prefix_ok(const gw_route_cfg_t *r, gw_slice_t path)
{
    if (r->path_prefix == NULL)
        return true;
    size_t plen = strlen(r->path_prefix);
    return path.len >= plen && memcmp(path.p, r->path_prefix, plen) == 0;
}

int gw_router_match(const gw_config_t *cfg, int method, gw_slice_t host, gw_router_path_t *rp)
{
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const gw_route_cfg_t *r = &cfg->routes[i];

        if (r->methods != 0) {
            if (method < 0 || method >= 64 || !((r->methods >> method) & 1))
                continue;
        }
        if (!gw_router_host_matches(r->host, host))
            continue;
        gw_slice_t path;
        ssize_t rc = gw_router_path_for(rp, r, &path);
        if (rc == GW_ROUTER_ESLASH) {
            /* The route refuses encoded slashes. It refuses this request when the path, with
             * them decoded, is one it would take (a backend that decodes "/admin%2Fx" serves
             * "/admin/x", so falling through to a later route would bypass this one); paths
             * it would not take go on to later routes, which may decode them. */
            rc = gw_router_form_get(rp, r->merge_slashes, true, &path);
            if (rc >= 0 && gw_router_prefix_ok(r, path))
                return GW_ROUTER_ESLASH;
        }
        if (rc < 0)
            return (int)rc;
        if (gw_router_prefix_ok(r, path))
            return (int)i;
    }
    return GW_ROUTER_NO_ROUTE;
}

ssize_t gw_router_rewrite(const gw_route_cfg_t *route, gw_slice_t target, char *out, size_t cap)
{
    const char *q = memchr(target.p, '?', target.len);
    size_t plen = q != NULL ? (size_t)(q - target.p) : target.len;
    gw_slice_t path = GW_SLICE(target.p, plen);
    gw_slice_t query = GW_SLICE(target.p + plen, target.len - plen);

    if (route->strip_prefix && route->path_prefix != NULL) {
        size_t n = strlen(route->path_prefix);
        if (path.len >= n && memcmp(path.p, route->path_prefix, n) == 0) {
            path.p += n;
            path.len -= n;
        }
    }

    const char *add = route->add_prefix != NULL ? route->add_prefix : "";
    size_t alen = strlen(add);
    /* What is left of the path must start with '/' ("/api" stripped from "/api" or "/api?x",
     * or "/api/" stripped from "/api/users"), unless add_prefix already ends with one. */
    bool add_ends_slash = alen > 0 && add[alen - 1] == '/';
    bool path_slash = path.len > 0 && path.p[0] == '/';
    bool need_slash = !path_slash && !add_ends_slash;
    if (path_slash && add_ends_slash) {
        path.p++;
        path.len--;
    }

    size_t total = alen + (need_slash ? 1 : 0) + path.len + query.len;
    if (total > cap)
        return -1;
    size_t o = 0;
    memcpy(out + o, add, alen);
    o += alen;
    if (need_slash)
        out[o++] = '/';
    if (path.len > 0)
        memcpy(out + o, path.p, path.len);
    o += path.len;
    if (query.len > 0)
        memcpy(out + o, query.p, query.len);
    o += query.len;
    return (ssize_t)o;
}
