/*
 * router: picks the route for a request and computes what goes upstream. Pure functions over the
 * immutable config; no allocation, no I/O. Output is written into caller-owned buffers.
 *
 * path_prefix is a byte prefix of the normalized path, like nginx's `location /api`: "/api"
 * matches "/api", "/api/users" and also "/apix"; write "/api/" to mean only the directory.
 */
#ifndef GW_ROUTER_H
#define GW_ROUTER_H

#include <sys/types.h>

#include "common.h"
#include "config.h"

/**
 * Returns the index of the first route (declaration order) whose match accepts the request, or -1.
 * `method` is an llhttp_method_t value; `host` is the Host header as received (a port suffix and
 * a trailing dot are ignored, comparison is case-insensitive; may be empty); `path` is the
 * normalized path without the query (see gw_router_normalize_path).
 */
int gw_router_match(const gw_config_t *cfg, int method, gw_slice_t host, gw_slice_t path);

/**
 * Normalizes a request target's path for matching and forwarding: resolves "." and ".." segments
 * (RFC 3986 §5.2.4; ".." never climbs above "/"; a trailing "/." or "/.." leaves a trailing "/";
 * "//" is kept). A segment written with percent-encoded dots ("%2e", "%2E%2e") counts as "." or
 * ".." (RFC 3986 §6.2.2.2), so a backend that decodes it cannot resolve a ".." the router never
 * saw; other bytes, including the rest of the percent-encoding, are kept as they are.
 * The query ('?' and after) is copied unchanged.
 * Accepts origin-form targets only ("/..."); returns -1 for anything else (absolute-form is
 * reduced by the caller first), and -1 when the result does not fit `cap`. The result is never
 * longer than `target`, so cap >= target.len always suffices; with a smaller cap, -1 may also mean
 * that a segment a later ".." removes did not fit (the output buffer is the working space).
 * Returns the length written to `out` (not NUL-terminated). `*path_len` receives the length of
 * the path part (before '?').
 */
ssize_t gw_router_normalize_path(gw_slice_t target, char *out, size_t cap, size_t *path_len);

/**
 * Writes the target sent upstream for `route`: strip_prefix removes the route's path_prefix from
 * the front of the path (leaving at least "/"), then add_prefix is prepended (without doubling a
 * '/' at the join). The query is kept. `target` is the normalized target (path + query).
 * Returns the length written, or -1 when it does not fit `cap`.
 */
ssize_t gw_router_rewrite(const gw_route_cfg_t *route, gw_slice_t target, char *out, size_t cap);

/**
 * True when `host` (as in gw_router_match) matches the route host pattern `pattern`
 * (lower-case; exact, or "*.example.com" for any name ending in ".example.com").
 */
bool gw_router_host_matches(const char *pattern, gw_slice_t host);

#endif
