/*
 * http1: what the proxy needs to know about HTTP/1.1 beyond llhttp's parsing: header storage as
 * slices, token and field-value rules, hop-by-hop headers, reason phrases, and an output buffer
 * that grows in a request arena for serialising heads.
 */
#ifndef GW_HTTP1_H
#define GW_HTTP1_H

#include <stdbool.h>
#include <stdint.h>

#include "arena.h"
#include "common.h"
#include "config.h"

typedef struct gw_header {
    gw_slice_t name;
    gw_slice_t value;
} gw_header_t;

/* An append-only byte buffer whose storage lives in an arena. A failed growth sets `oom` and
 * makes further appends no-ops, so a serialiser checks once at the end. */
typedef struct gw_buf {
    char *p;
    size_t len;
    size_t cap;
    gw_arena_t *arena;
    bool oom;
} gw_buf_t;

void gw_buf_init(gw_buf_t *b, gw_arena_t *a, size_t initial);
void gw_buf_append(gw_buf_t *b, const char *p, size_t n);
static inline void gw_buf_append_slice(gw_buf_t *b, gw_slice_t s)
{
    gw_buf_append(b, s.p, s.len);
}
static inline void gw_buf_append_str(gw_buf_t *b, const char *s)
{
    gw_buf_append(b, s, strlen(s));
}
void gw_buf_append_u64(gw_buf_t *b, uint64_t v);
/** Appends "name: value\r\n". */
void gw_buf_append_header(gw_buf_t *b, gw_slice_t name, gw_slice_t value);

/* A header change made by a Lua hook, applied when the head is serialised. */
enum { GW_EDIT_SET = 0, GW_EDIT_ADD, GW_EDIT_CLEAR };
typedef struct gw_header_edit {
    uint8_t op;
    gw_slice_t name; /* in the arena */
    gw_slice_t value;
} gw_header_edit_t;

typedef struct gw_header_edits {
    gw_header_edit_t *e;
    uint32_t n;
    uint32_t cap;
} gw_header_edits_t;

/** True when an edit replaces or removes header `name` (so the original is not forwarded). */
bool gw_edits_override(const gw_header_edits_t *e, gw_slice_t name);
/** Appends the SET and ADD edits as header lines (Host excepted: the proxy writes it). */
void gw_edits_append(gw_buf_t *b, const gw_header_edits_t *e);

/* What a forwarding gateway appends to list headers: its element of Via (RFC 9110 §7.6.3), the
 * protocol version the message was received with and the gateway's pseudonym; and, on requests,
 * the client address it appends to X-Forwarded-For. */
typedef struct gw_http1_via {
    const char *name; /* NULL: no Via is added, and the message's own passes unchanged */
    uint8_t major;
    uint8_t minor;
    gw_slice_t forwarded_for; /* empty: X-Forwarded-For passes unchanged (responses) */
} gw_http1_via_t;

/**
 * Appends the end-to-end headers of a message being forwarded: `h` without hop-by-hop fields,
 * without those named in any of its Connection lines, without the names `reserved` says the caller writes
 * itself, and without those the route's `ops` or the hooks' `edits` replace or remove; then the
 * ops' set headers (unless an edit overrides them) and the edits. When `via->name` is set, the
 * message's Via lines become one, with the gateway's element appended, and likewise its
 * X-Forwarded-For lines with `via->forwarded_for`, unless the ops or edits take that header over
 * (as nginx's proxy_set_header does). One function for both directions, so a rule cannot apply to requests and not
 * to responses.
 */
void gw_http1_forward_headers(gw_buf_t *b, const gw_header_t *h, uint32_t n,
                              bool (*reserved)(gw_slice_t name), const gw_header_ops_t *ops,
                              const gw_header_edits_t *edits, const gw_http1_via_t *via);

/**
 * Appends "Name: v1, v2, ..., last\r\n": the values of every line of the list header `name` in
 * `h` combined in order (RFC 9110 §5.3; empty ones skipped), then `last`.
 */
void gw_http1_append_list_header(gw_buf_t *b, const gw_header_t *h, uint32_t n, gw_slice_t name,
                                 gw_slice_t last);

/** True if `s` is a non-empty RFC 9110 token (field names, methods). */
bool gw_http1_is_token(gw_slice_t s);

/** True for the hop-by-hop fields a proxy must not forward (RFC 9110 §7.6.1, HTTP2-Settings
 * of an h2c upgrade, plus the legacy Keep-Alive and Proxy-Connection). */
bool gw_http1_is_hop_by_hop(gw_slice_t name);

/** True if the comma-separated token list `list` contains `token` (case-insensitive, OWS
 * around elements ignored). */
bool gw_http1_list_has(gw_slice_t list, gw_slice_t token);

/** True if any line of the list header `field` in `h` contains `token` (case-insensitive): a
 * list split over several lines is one list (RFC 9110 §5.3). */
bool gw_http1_field_has(const gw_header_t *h, uint32_t n, gw_slice_t field, gw_slice_t token);

/** Iterates over the non-empty elements of a comma-separated list, OWS trimmed: start with
 * *pos = 0; returns false when there is none left. */
bool gw_http1_list_next(gw_slice_t list, size_t *pos, gw_slice_t *elem);

/** The reason phrase for `status` ("Unknown" for codes without one). */
const char *gw_http1_reason(int status);

/** True for methods RFC 9110 calls idempotent (a retry after the request reached a backend is
 * allowed only for these). `method` is an llhttp_method_t. */
bool gw_http1_method_idempotent(int method);

/** True when a response with this status to a request with this method carries no body. */
bool gw_http1_response_bodyless(int status, bool head_request);

/** Parses a non-negative decimal integer that fills the whole slice; -1 otherwise. */
int64_t gw_http1_parse_u64(gw_slice_t s);

/* An upstream URL, "http://host[:port][/]", split into slices of the string (config.c for the
 * static backends, registry.c for registered ones: one grammar for both). */
typedef struct gw_http1_url {
    gw_slice_t authority; /* host[:port] as written */
    gw_slice_t host;      /* without the brackets of an IPv6 address; may be empty */
    gw_slice_t port;      /* .p NULL: none given; .p set and .len 0: "host:" */
    bool bracketed;       /* the host was written in brackets ("[::1]") */
} gw_http1_url_t;

enum gw_http1_url_error {
    GW_URL_OK = 0,
    GW_URL_HTTPS,           /* https:// (not supported) */
    GW_URL_NOT_HTTP,        /* no http:// */
    GW_URL_USERINFO,        /* user@host */
    GW_URL_QUERY,           /* a query or fragment */
    GW_URL_PATH,            /* a path other than "/" */
    GW_URL_UNTERMINATED_V6, /* "[" without "]" */
    GW_URL_AFTER_V6,        /* something other than ":port" after "]" */
};

/** Splits `url`. Returns GW_URL_OK and fills *out, or the first thing that is wrong. The host's
 * characters and the port's value are the caller's to check (gw_http1_parse_port). `url` ends at
 * its first NUL: a caller whose text may hold one (a Lua or JSON string) must refuse it first,
 * or "http://h:80\0x" would pass as "http://h:80". */
int gw_http1_url_split(const char *url, gw_http1_url_t *out);

/**
 * True when `a` (a Host header value, or the authority of an absolute-form target) is an
 * authority without userinfo (RFC 9110 §7.2, RFC 3986 §3.2): a reg-name (unreserved characters,
 * sub-delims and valid %-escapes), an IPv4 address or a bracketed IPv6 or IPvFuture literal,
 * then optionally ':' and a port of digits up to 65535 (which may be empty: "h:"). An empty
 * value is valid (RFC 9112 §3.2); an empty host with a port (":80") is not.
 */
bool gw_http1_authority_valid(gw_slice_t a);

/** A port: 1..65535, digits only, at most 5 of them. Returns it, or 0 when invalid. */
uint16_t gw_http1_parse_port(gw_slice_t s);

#endif
