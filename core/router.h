/*
 * router: picks the route for a request and computes what goes upstream. Pure functions over the
 * immutable config; no allocation, no I/O. Output is written into caller-owned buffers.
 *
 * path_prefix is a byte prefix of the canonical path (gw_router_canonical_path), like nginx's
 * `location /api`: "/api" matches "/api", "/api/users" and also "/apix"; write "/api/" to mean
 * only the directory.
 */
#ifndef GW_ROUTER_H
#define GW_ROUTER_H

#include <sys/types.h>

#include "common.h"
#include "config.h"

/* What gw_router_match and gw_router_canonical_path return when they do not give a route or a
 * length. Every error but GW_ROUTER_NO_ROUTE and GW_ROUTER_ENOSPC means a 400. */
enum {
    GW_ROUTER_NO_ROUTE = -1, /* no route matches */
    GW_ROUTER_EPATH = -2,    /* not an origin-form path ("/...") */
    GW_ROUTER_EESCAPE = -3,  /* '%' not followed by two hex digits, or "%00" */
    GW_ROUTER_ESLASH = -4,   /* "%2F", "%5C" or '\\' where encoded_slash is "reject" */
    GW_ROUTER_ENOSPC = -5,   /* the output buffer is smaller than the input path */
};

/**
 * Writes the canonical form of `path` (a request path without its query) to `out`, the form
 * routes match on and hooks see. In order, per segment:
 * - "%XY" escapes are checked: a '%' without two hex digits, or "%00", is GW_ROUTER_EESCAPE.
 *   An escape of an unreserved character (RFC 3986 §2.3: letters, digits, "-._~") is decoded;
 *   any other stays encoded, hex upper-cased ("%3f" -> "%3F"), so it stays data and never becomes
 *   a delimiter. "%25" is one of those, so "%252e" stays "%252e": double encoding is not undone.
 * - A raw '\\', "%5C" and "%2F" (either case) are GW_ROUTER_ESLASH, unless `decode_slash`:
 *   then each is a "/" (splits segments, takes part in dot segments and merging).
 * - Path parameters are removed: a segment ends for matching at its first raw ';'
 *   ("/admin;x/s" -> "/admin/s", "/a/..;/b" -> "/b"), as servers that strip them see it.
 * - "." and ".." segments are resolved after decoding (RFC 3986 §5.2.4: ".." never climbs above
 *   "/"; a final "." or ".." leaves a trailing "/"), so "%2e%2E" is "..".
 * - With `merge_slashes`, empty segments inside the path are dropped ("//a///b" -> "/a/b"); a
 *   trailing "/" is kept.
 * Returns the length written (not NUL-terminated; never more than path.len), GW_ROUTER_EPATH
 * for a path that does not start with '/', or GW_ROUTER_ENOSPC when cap < path.len.
 */
ssize_t gw_router_canonical_path(gw_slice_t path, bool merge_slashes, bool decode_slash, char *out,
                                 size_t cap);

/* A request path and its canonical forms, computed on demand: routes with different
 * merge_slashes / encoded_slash settings see different forms of the same path. */
typedef struct gw_router_path {
    gw_slice_t raw;     /* the path as received, without the query */
    char *scratch;      /* gw_router_scratch_size() bytes, owned by the caller */
    size_t nforms;      /* forms computed so far (each takes raw.len bytes of scratch) */
    gw_slice_t form[4]; /* by (merge_slashes, decode) combination; .p NULL: not computed yet */
} gw_router_path_t;

/** Bytes of scratch a gw_router_path_t needs for a path of `path_len` bytes under `cfg`. */
size_t gw_router_scratch_size(const gw_config_t *cfg, size_t path_len);

/** Prepares `rp` for `raw` (a path starting with '/', no query) with `scratch` as its space. */
void gw_router_path_init(gw_router_path_t *rp, gw_slice_t raw, char *scratch);

/**
 * Sets `*out` to the canonical form of rp's path under `route`'s options (a slice of the
 * scratch, valid as long as it). Returns its length, or a GW_ROUTER_E* error.
 */
ssize_t gw_router_path_for(gw_router_path_t *rp, const gw_route_cfg_t *route, gw_slice_t *out);

/**
 * Returns the index of the first route (declaration order) whose match accepts the request,
 * GW_ROUTER_NO_ROUTE, or a GW_ROUTER_E* error (a 400): GW_ROUTER_EESCAPE for a bad escape
 * (whatever the route), GW_ROUTER_ESLASH when the first route that would take the path with its
 * encoded slashes decoded refuses them (encoded_slash = "reject"; a route without path_prefix
 * takes every path). `method` is an llhttp_method_t value; `host` is the Host header as received
 * (a port suffix and a trailing dot are ignored, comparison is case-insensitive; may be empty).
 * path_prefix is compared with the path's canonical form under that route's options.
 */
int gw_router_match(const gw_config_t *cfg, int method, gw_slice_t host, gw_router_path_t *rp);

/**
 * Writes the target sent upstream for `route`: strip_prefix removes the route's path_prefix from
 * the front of the path (leaving at least "/"), then add_prefix is prepended (without doubling a
 * '/' at the join). The query is kept. `target` is the canonical path, plus the query if any.
 * Returns the length written, or -1 when it does not fit `cap`.
 */
ssize_t gw_router_rewrite(const gw_route_cfg_t *route, gw_slice_t target, char *out, size_t cap);

/**
 * True when `host` (as in gw_router_match) matches the route host pattern `pattern`
 * (lower-case; exact, or "*.example.com" for any name ending in ".example.com").
 */
bool gw_router_host_matches(const char *pattern, gw_slice_t host);

#endif
