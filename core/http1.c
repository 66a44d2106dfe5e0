/*
 * http1: helpers for HTTP/1.1 heads. Nothing here allocates except gw_buf_*, which grows inside
 * the request arena.
 */
#include "http1.h"

#include <arpa/inet.h>
#include <llhttp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

void gw_buf_init(gw_buf_t *b, gw_arena_t *a, size_t initial)
{
    b->arena = a;
    b->len = 0;
    b->oom = false;
    b->p = gw_arena_alloc(a, initial);
    b->cap = b->p ? initial : 0;
    if (!b->p)
        b->oom = true;
}

void gw_buf_append(gw_buf_t *b, const char *p, size_t n)
{
    if (b->oom || n == 0)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n)
            cap *= 2;
        char *np = gw_arena_alloc(b->arena, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        if (b->len)
            memcpy(np, b->p, b->len);
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

void gw_buf_append_u64(gw_buf_t *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    gw_buf_append(b, tmp, (size_t)n);
}

void gw_buf_append_header(gw_buf_t *b, gw_slice_t name, gw_slice_t value)
{
    gw_buf_append_slice(b, name);
    gw_buf_append(b, ": ", 2);
    gw_buf_append_slice(b, value);
    gw_buf_append(b, "\r\n", 2);
}

static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

bool gw_http1_is_token(gw_slice_t s)
{
    if (s.len == 0)
        return false;
    for (size_t i = 0; i < s.len; i++)
        if (!is_tchar((unsigned char)s.p[i]))
            return false;
    return true;
}

bool gw_http1_is_hop_by_hop(gw_slice_t n)
{
    /* Dispatch on length first: this runs for every header of every request. */
    switch (n.len) {
    case 2:
        return gw_slice_ieq(n, "te");
    case 7:
        return gw_slice_ieq(n, "upgrade") || gw_slice_ieq(n, "trailer");
    case 10:
        return gw_slice_ieq(n, "connection") || gw_slice_ieq(n, "keep-alive");
    case 14:
        return gw_slice_ieq(n, "http2-settings");
    case 16:
        return gw_slice_ieq(n, "proxy-connection");
    case 17:
        return gw_slice_ieq(n, "transfer-encoding");
    default:
        return false;
    }
}

bool gw_http1_list_next(gw_slice_t list, size_t *pos, gw_slice_t *elem)
{
    size_t i = *pos;
    while (i < list.len) {
        while (i < list.len && (list.p[i] == ' ' || list.p[i] == '\t' || list.p[i] == ','))
            i++;
        size_t start = i;
        while (i < list.len && list.p[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (list.p[end - 1] == ' ' || list.p[end - 1] == '\t'))
            end--;
        if (end > start) {
            *pos = i;
            *elem = GW_SLICE(list.p + start, end - start);
            return true;
        }
    }
    *pos = i;
    return false;
}

bool gw_http1_list_has(gw_slice_t list, gw_slice_t token)
{
    size_t pos = 0;
    gw_slice_t e;
    while (gw_http1_list_next(list, &pos, &e))
        if (e.len == token.len && strncasecmp(e.p, token.p, token.len) == 0)
            return true;
    return false;
}

bool gw_http1_field_has(const gw_header_t *h, uint32_t n, gw_slice_t field, gw_slice_t token)
{
    for (uint32_t i = 0; i < n; i++)
        if (h[i].name.len == field.len && strncasecmp(h[i].name.p, field.p, field.len) == 0 &&
            gw_http1_list_has(h[i].value, token))
            return true;
    return false;
}

const char *gw_http1_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 102: return "Processing";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

bool gw_http1_method_idempotent(int method)
{
    switch (method) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_OPTIONS:
    case HTTP_TRACE:
    case HTTP_PUT:
    case HTTP_DELETE:
        return true;
    default:
        return false;
    }
}

bool gw_http1_response_bodyless(int status, bool head_request)
{
    return head_request || (status >= 100 && status < 200) || status == 204 || status == 304;
}

int64_t gw_http1_parse_u64(gw_slice_t s)
{
    if (s.len == 0 || s.len > 18)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return -1;
        v = v * 10 + (s.p[i] - '0');
    }
    return v;
}

/* ---- forwarding headers ---- */

bool gw_edits_override(const gw_header_edits_t *e, gw_slice_t name)
{
    for (uint32_t i = 0; i < e->n; i++)
        if (e->e[i].op != GW_EDIT_ADD && e->e[i].name.len == name.len &&
            strncasecmp(e->e[i].name.p, name.p, name.len) == 0)
            return true;
    return false;
}

void gw_edits_append(gw_buf_t *b, const gw_header_edits_t *e)
{
    for (uint32_t i = 0; i < e->n; i++) {
        /* Host is written by the proxy (from req.lua_host when a hook set it). */
        if (e->e[i].op == GW_EDIT_CLEAR || gw_slice_ieq(e->e[i].name, "host"))
            continue;
        /* A later SET of the same name wins over this one. */
        bool superseded = false;
        for (uint32_t k = i + 1; k < e->n && !superseded; k++)
            superseded = e->e[k].op != GW_EDIT_ADD && e->e[k].name.len == e->e[i].name.len &&
                         strncasecmp(e->e[k].name.p, e->e[i].name.p, e->e[i].name.len) == 0;
        if (!superseded)
            gw_buf_append_header(b, e->e[i].name, e->e[i].value);
    }
}

/* The route's header operations name headers in lower case (config.c). */
static bool http1_ops_drop(const gw_header_ops_t *ops, gw_slice_t n)
{
    for (size_t k = 0; k < ops->nremove; k++)
        if (gw_slice_ieq(n, ops->remove[k]))
            return true;
    for (size_t k = 0; k < ops->nset; k++)
        if (gw_slice_ieq(n, ops->set[k].name))
            return true;
    return false;
}

void gw_http1_append_list_header(gw_buf_t *b, const gw_header_t *h, uint32_t n, gw_slice_t name,
                                 gw_slice_t last)
{
    gw_buf_append_slice(b, name);
    gw_buf_append(b, ": ", 2);
    for (uint32_t i = 0; i < n; i++) {
        if (h[i].value.len && h[i].name.len == name.len &&
            strncasecmp(h[i].name.p, name.p, name.len) == 0) {
            gw_buf_append_slice(b, h[i].value);
            gw_buf_append(b, ", ", 2);
        }
    }
    gw_buf_append_slice(b, last);
    gw_buf_append(b, "\r\n", 2);
}

void gw_http1_forward_headers(gw_buf_t *b, const gw_header_t *h, uint32_t n,
                              bool (*reserved)(gw_slice_t name), const gw_header_ops_t *ops,
                              const gw_header_edits_t *edits, const gw_http1_via_t *via)
{
    static const gw_slice_t via_name = GW_SLICE_LIT("Via"), connection = GW_SLICE_LIT("Connection"),
                            xff_name = GW_SLICE_LIT("X-Forwarded-For");
    /* Every Connection line counts (RFC 9110 §7.6.1: a list header may be split over lines), so
     * a name listed on an earlier line cannot slip through. Most messages have none. */
    bool has_connection = false;
    for (uint32_t i = 0; i < n && !has_connection; i++)
        has_connection = h[i].name.len == 10 && gw_slice_ieq(h[i].name, "connection");
    /* A route or a hook that sets or removes Via (or X-Forwarded-For) decides it alone;
     * otherwise the gateway writes the one combined line below. */
    bool add_via = via->name && !http1_ops_drop(ops, via_name) &&
                   !(edits->n && gw_edits_override(edits, via_name));
    bool add_xff = via->forwarded_for.len && !http1_ops_drop(ops, xff_name) &&
                   !(edits->n && gw_edits_override(edits, xff_name));
    for (uint32_t i = 0; i < n; i++) {
        gw_slice_t name = h[i].name;
        if (gw_http1_is_hop_by_hop(name) || reserved(name))
            continue;
        if (has_connection && gw_http1_field_has(h, n, connection, name))
            continue;
        if (http1_ops_drop(ops, name) || (edits->n && gw_edits_override(edits, name)))
            continue;
        if (add_via && name.len == 3 && gw_slice_ieq(name, "via"))
            continue;
        if (add_xff && name.len == 15 && gw_slice_ieq(name, "x-forwarded-for"))
            continue;
        gw_buf_append_header(b, name, h[i].value);
    }
    if (add_via) {
        char own[80];
        int len = snprintf(own, sizeof own, "%u.%u %s", via->major, via->minor, via->name);
        if (len < 0 || (size_t)len >= sizeof own)
            b->oom = true; /* config.c bounds the pseudonym: not reached */
        else if (has_connection && gw_http1_field_has(h, n, connection, via_name))
            gw_http1_append_list_header(b, h, 0, via_name, GW_SLICE(own, (size_t)len));
        else
            gw_http1_append_list_header(b, h, n, via_name, GW_SLICE(own, (size_t)len));
    }
    if (add_xff) {
        bool hop = has_connection && gw_http1_field_has(h, n, connection, xff_name);
        gw_http1_append_list_header(b, h, hop ? 0 : n, xff_name, via->forwarded_for);
    }
    for (size_t k = 0; k < ops->nset; k++) {
        gw_slice_t sn = GW_SLICE(ops->set[k].name, strlen(ops->set[k].name));
        if (!edits->n || !gw_edits_override(edits, sn))
            gw_buf_append_header(b, sn, GW_SLICE(ops->set[k].value, strlen(ops->set[k].value)));
    }
    gw_edits_append(b, edits);
}

int gw_http1_url_split(const char *url, gw_http1_url_t *out)
{
    if (strncasecmp(url, "https://", 8) == 0)
        return GW_URL_HTTPS;
    if (strncasecmp(url, "http://", 7) != 0)
        return GW_URL_NOT_HTTP;
    const char *auth = url + 7;
    size_t alen = strcspn(auth, "/?#");
    const char *rest = auth + alen;
    if (memchr(auth, '@', alen) != NULL)
        return GW_URL_USERINFO;
    if (strpbrk(rest, "?#") != NULL)
        return GW_URL_QUERY;
    if (rest[0] != '\0' && strcmp(rest, "/") != 0)
        return GW_URL_PATH;
    *out = (gw_http1_url_t){.authority = GW_SLICE(auth, alen)};
    const char *end = auth + alen, *hend;
    if (alen > 0 && auth[0] == '[') {
        const char *close = memchr(auth, ']', alen);
        if (close == NULL)
            return GW_URL_UNTERMINATED_V6;
        if (close + 1 < end && close[1] != ':')
            return GW_URL_AFTER_V6;
        out->bracketed = true;
        out->host = GW_SLICE(auth + 1, (size_t)(close - auth - 1));
        if (close + 1 < end)
            out->port = GW_SLICE(close + 2, (size_t)(end - close - 2));
        return GW_URL_OK;
    }
    const char *colon = memchr(auth, ':', alen);
    hend = colon ? colon : end;
    out->host = GW_SLICE(auth, (size_t)(hend - auth));
    if (colon)
        out->port = GW_SLICE(colon + 1, (size_t)(end - colon - 1));
    return GW_URL_OK;
}

/* RFC 3986 §2.2 and §2.3: the bytes a reg-name may hold besides %-escapes. */
static bool http1_regname_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("-._~!$&'()*+,;=", c) != NULL);
}

static bool http1_hexdig(unsigned char c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

/* The inside of "[...]": an IPv6 address (no zone), or "v" HEXDIG+ "." followed by unreserved,
 * sub-delims or ':' (IPvFuture). */
static bool http1_ip_literal(gw_slice_t s)
{
    if (s.len > 0 && (s.p[0] == 'v' || s.p[0] == 'V')) {
        size_t i = 1;
        while (i < s.len && http1_hexdig((unsigned char)s.p[i]))
            i++;
        if (i == 1 || i >= s.len || s.p[i] != '.' || i + 1 == s.len)
            return false;
        for (i++; i < s.len; i++) {
            if (!http1_regname_char((unsigned char)s.p[i]) && s.p[i] != ':')
                return false;
        }
        return true;
    }
    char buf[INET6_ADDRSTRLEN];
    struct in6_addr addr;
    /* inet_pton stops at a NUL: "[::1\0junk]" must not pass for "[::1]". */
    if (s.len == 0 || s.len >= sizeof buf || memchr(s.p, '\0', s.len) != NULL)
        return false;
    memcpy(buf, s.p, s.len);
    buf[s.len] = '\0';
    return inet_pton(AF_INET6, buf, &addr) == 1;
}

bool gw_http1_authority_valid(gw_slice_t a)
{
    if (a.len == 0)
        return true;
    size_t i;
    if (a.p[0] == '[') {
        const char *close = memchr(a.p, ']', a.len);
        if (close == NULL || !http1_ip_literal(GW_SLICE(a.p + 1, (size_t)(close - a.p - 1))))
            return false;
        i = (size_t)(close - a.p) + 1;
    } else {
        for (i = 0; i < a.len && a.p[i] != ':'; i++) {
            unsigned char c = (unsigned char)a.p[i];
            if (c == '%') {
                if (i + 2 >= a.len || !http1_hexdig((unsigned char)a.p[i + 1]) ||
                    !http1_hexdig((unsigned char)a.p[i + 2]))
                    return false;
                i += 2;
            } else if (!http1_regname_char(c)) {
                return false;
            }
        }
        if (i == 0)
            return false;
    }
    if (i == a.len)
        return true;
    if (a.p[i] != ':')
        return false;
    gw_slice_t port = GW_SLICE(a.p + i + 1, a.len - i - 1);
    if (port.len == 0)
        return true;
    int64_t v = gw_http1_parse_u64(port);
    return v >= 0 && v <= 65535;
}

uint16_t gw_http1_parse_port(gw_slice_t s)
{
    if (s.len == 0 || s.len > 5)
        return 0;
    int64_t v = gw_http1_parse_u64(s);
    return v >= 1 && v <= 65535 ? (uint16_t)v : 0;
}
