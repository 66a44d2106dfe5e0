/*
 * router: route selection and the native path rewrites.
 *
 * Everything here is a pure function of the immutable config and the request's bytes: no
 * allocation, no I/O, no global state, so any worker may call it at any time. Output goes into
 * buffers the caller owns and sizes; a result that does not fit is an error (-1), never a silent
 * truncation, because a truncated path would send the request somewhere else.
 *
 * Matching is on the normalized path (dot segments removed) so that "/public/../admin" cannot
 * reach a route meant for "/admin" while being matched as "/public". path_prefix is a byte prefix,
 * like nginx's `location /api`: "/api" also matches "/apix"; write "/api/" to mean the directory.
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
    if (n > 0 && host.p[0] == '[') {
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

int gw_router_match(const gw_config_t *cfg, int method, gw_slice_t host, gw_slice_t path)
{
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const gw_route_cfg_t *r = &cfg->routes[i];

        if (r->methods != 0) {
            if (method < 0 || method >= 64 || !((r->methods >> method) & 1))
                continue;
        }
        if (r->path_prefix != NULL) {
            size_t plen = strlen(r->path_prefix);
            if (path.len < plen || memcmp(path.p, r->path_prefix, plen) != 0)
                continue;
        }
        if (!gw_router_host_matches(r->host, host))
            continue;
        return (int)i;
    }
    return -1;
}

/* True when the segment p[0..n) is "." or "..", written plainly or with a percent-encoded dot
 * ("%2e", either case): RFC 3986 §6.2.2.2 makes "%2e" the same character as ".", and a backend
 * that decodes it would otherwise resolve a ".." the router never saw. Returns the dot count
 * (1 or 2), or 0 for any other segment. */
static int gw_router_dot_segment(const char *p, size_t n)
{
    int dots = 0;
    size_t i = 0;
    while (i < n) {
        if (p[i] == '.') {
            i++;
        } else if (n - i >= 3 && p[i] == '%' && p[i + 1] == '2' &&
                   (p[i + 2] == 'e' || p[i + 2] == 'E')) {
            i += 3;
        } else {
            return 0;
        }
        if (++dots > 2)
            return 0;
    }
    return dots;
}

ssize_t gw_router_normalize_path(gw_slice_t target, char *out, size_t cap, size_t *path_len)
{
    if (target.len == 0 || target.p[0] != '/')
        return -1;

    const char *q = memchr(target.p, '?', target.len);
    size_t plen = q != NULL ? (size_t)(q - target.p) : target.len;
    size_t o = 0; /* bytes in the output buffer */
    size_t i = 0; /* the input buffer is target.p[i..plen); it always starts with '/' */

    /* RFC 3986 §5.2.4, steps B, C and E; steps A and D cannot apply because the input always
     * starts with "/". A "." or ".." that ends the input leaves the input as "/", which is
     * then moved to the output: that is the trailing "/" of "/a/." and "/a/b/..". */
    while (i < plen) {
        size_t j = i + 1;
        while (j < plen && target.p[j] != '/')
            j++;

        int dots = gw_router_dot_segment(target.p + i + 1, j - i - 1);
        if (dots == 0) {
            if (j - i > cap - o)
                return -1;
            memcpy(out + o, target.p + i, j - i);
            o += j - i;
        } else {
            if (dots == 2) {
                /* Remove the last output segment and its "/"; at the root there is nothing to
                 * remove, which is what keeps ".." from climbing above "/". */
                while (o > 0 && out[o - 1] != '/')
                    o--;
                if (o > 0)
                    o--;
            }
            if (j == plen) {
                if (o >= cap)
                    return -1;
                out[o++] = '/';
            }
        }
        i = j;
    }

    if (path_len != NULL)
        *path_len = o;
    size_t qlen = target.len - plen;
    if (qlen > cap - o)
        return -1;
    memcpy(out + o, target.p + plen, qlen);
    return (ssize_t)(o + qlen);
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
