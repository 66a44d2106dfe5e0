/*
 * Fuzzes the HTTP/1 helpers of core/http1.c and the JSON escaping of core/log.c: the input is
 * lines; each line goes through the token, hop-by-hop, number, port, authority, list and escape
 * functions, the first line is also an upstream URL, and the lines that look like "name: value"
 * are a header list forwarded with gw_http1_forward_headers under route operations and hook edits
 * taken from the other lines ("-name" removes, "+name: value" sets, "!name: value" is an edit).
 * Besides memory errors it checks what the helpers promise: the URL's slices lie inside the URL,
 * numbers read back as their digits, an escaped string stays inside its quotes, no hop-by-hop
 * field is ever forwarded, and the gateway's Via and X-Forwarded-For leave one line each.
 */
#include <cjson/cJSON.h>
#include <string.h>

#include "fuzz.h"
#include "http1.h"
#include "log.h"

#define MAX_LINES 64

typedef struct line {
    const char *p;
    size_t len;
} line_t;

static bool within(gw_slice_t inner, const char *p, size_t len)
{
    return inner.len == 0 || (inner.p >= p && inner.p + inner.len <= p + len);
}

static void check_url(const char *p, size_t len)
{
    char url[512];
    if (len >= sizeof url)
        len = sizeof url - 1;
    memcpy(url, p, len);
    url[len] = '\0';
    size_t n = strlen(url); /* the URL ends at a NUL, as it does for its callers */
    gw_http1_url_t u;
    if (gw_http1_url_split(url, &u) != GW_URL_OK)
        return;
    GW_FUZZ_CHECK(within(u.authority, url, n));
    GW_FUZZ_CHECK(within(u.host, u.authority.p, u.authority.len));
    if (u.port.p)
        GW_FUZZ_CHECK(within(u.port, u.authority.p, u.authority.len));
    if (u.bracketed)
        GW_FUZZ_CHECK(u.host.p[-1] == '[' && u.host.p[u.host.len] == ']');
    uint16_t port = gw_http1_parse_port(u.port);
    GW_FUZZ_CHECK(port == 0 || (u.port.len >= 1 && u.port.len <= 5));
}

static void check_line(gw_slice_t s, uint8_t cap_byte)
{
    bool token = gw_http1_is_token(s);
    GW_FUZZ_CHECK(!token || s.len > 0);
    if (gw_http1_is_hop_by_hop(s))
        GW_FUZZ_CHECK(token);
    int64_t v = gw_http1_parse_u64(s);
    if (v >= 0) {
        /* It reads back as the digits it was parsed from. */
        char d[24];
        int dn = snprintf(d, sizeof d, "%lld", (long long)v);
        size_t z = 0;
        while (z + 1 < s.len && s.p[z] == '0')
            z++;
        GW_FUZZ_CHECK((size_t)dn == s.len - z && memcmp(d, s.p + z, s.len - z) == 0);
    }
    uint16_t port = gw_http1_parse_port(s);
    GW_FUZZ_CHECK(port == 0 || (v >= 1 && v <= 65535));
    /* A valid authority (Host) is printable ASCII without userinfo, path, query or spaces. */
    if (gw_http1_authority_valid(s))
        for (size_t i = 0; i < s.len; i++)
            GW_FUZZ_CHECK(s.p[i] > 0x20 && s.p[i] < 0x7f && !strchr("@/?#\\", s.p[i]));
    /* An element with no comma and no surrounding whitespace is found in a list of itself. */
    bool plain = s.len > 0 && !memchr(s.p, ',', s.len) && s.p[0] != ' ' && s.p[0] != '\t' &&
                 s.p[s.len - 1] != ' ' && s.p[s.len - 1] != '\t';
    GW_FUZZ_CHECK(gw_http1_list_has(s, s) == plain);
    GW_FUZZ_CHECK(strlen(gw_http1_reason((int)(v > 999 ? 999 : v))) > 0);

    /* Escaping: never more than cap; the result contains no raw control byte and no quote or
     * backslash that is not part of an escape; when all of it fit and it is ASCII, a JSON
     * parser reads back the original. */
    char out[1024];
    size_t cap = (size_t)cap_byte * 4 + 1;
    if (cap > sizeof out)
        cap = sizeof out;
    size_t n = gw_json_escape(s, out, cap);
    GW_FUZZ_CHECK(n <= cap);
    bool ascii = true;
    for (size_t i = 0; i < s.len; i++)
        ascii = ascii && (unsigned char)s.p[i] < 0x80 && s.p[i] != 0;
    for (size_t i = 0; i < n; i++) {
        GW_FUZZ_CHECK((unsigned char)out[i] >= 0x20);
        if (out[i] == '\\') {
            GW_FUZZ_CHECK(i + 1 < n);
            i++;
            if (out[i] == 'u')
                i += 4;
        } else {
            GW_FUZZ_CHECK(out[i] != '"');
        }
    }
    if (ascii && n + 3 <= sizeof out && s.len * 6 < cap) {
        char quoted[1024 + 3];
        quoted[0] = '"';
        memcpy(quoted + 1, out, n);
        quoted[n + 1] = '"';
        cJSON *j = cJSON_ParseWithLength(quoted, n + 2);
        GW_FUZZ_CHECK(j && cJSON_IsString(j));
        GW_FUZZ_CHECK(strlen(j->valuestring) == s.len && memcmp(j->valuestring, s.p, s.len) == 0);
        cJSON_Delete(j);
    }
}

static bool split_header(gw_slice_t s, gw_slice_t *name, gw_slice_t *value)
{
    const char *colon = memchr(s.p, ':', s.len);
    if (!colon)
        return false;
    *name = GW_SLICE(s.p, (size_t)(colon - s.p));
    const char *v = colon + 1, *end = s.p + s.len;
    while (v < end && *v == ' ')
        v++;
    *value = GW_SLICE(v, (size_t)(end - v));
    return true;
}

static bool never_reserved(gw_slice_t n)
{
    return n.len == 4 && gw_slice_ieq(n, "host");
}

static char *dup_z(gw_slice_t s)
{
    char *p = malloc(s.len + 1);
    memcpy(p, s.p, s.len);
    p[s.len] = '\0';
    return p;
}

static void check_forward(const line_t *lines, size_t nlines)
{
    gw_header_t h[MAX_LINES];
    gw_header_kv_t set[MAX_LINES];
    char *remove[MAX_LINES];
    gw_header_edit_t edit[MAX_LINES];
    uint32_t nh = 0, nedit = 0;
    bool via_removed = false, xff_removed = false;
    size_t nset = 0, nremove = 0;
    for (size_t i = 0; i < nlines; i++) {
        gw_slice_t s = GW_SLICE(lines[i].p, lines[i].len), name, value;
        char kind = s.len ? s.p[0] : 0;
        if (kind == '-' || kind == '+' || kind == '!') {
            s = GW_SLICE(s.p + 1, s.len - 1);
            if (kind == '-') {
                if (gw_http1_is_token(s) && !memchr(s.p, 0, s.len)) {
                    remove[nremove++] = dup_z(s);
                    via_removed = via_removed || gw_slice_ieq(s, "via");
                    xff_removed = xff_removed || gw_slice_ieq(s, "x-forwarded-for");
                }
                continue;
            }
            /* Route operations and hook edits name end-to-end fields (config.c and the Lua
             * bridge refuse the rest), so what they add is never hop-by-hop; they do not set
             * Via or X-Forwarded-For here, so the checks below know how many of those to see. */
            if (!split_header(s, &name, &value) || !gw_http1_is_token(name) ||
                gw_http1_is_hop_by_hop(name) || gw_slice_ieq(name, "via") ||
                gw_slice_ieq(name, "x-forwarded-for") || memchr(value.p, 0, value.len))
                continue;
            if (kind == '+') {
                set[nset].name = dup_z(name);
                set[nset].value = dup_z(value);
                nset++;
            } else {
                edit[nedit++] = (gw_header_edit_t){
                    .op = (uint8_t)(value.len % 3), .name = name, .value = value};
            }
            continue;
        }
        if (split_header(s, &name, &value))
            h[nh++] = (gw_header_t){name, value};
    }
    gw_header_ops_t ops = {.set = set, .nset = nset, .remove = remove, .nremove = nremove};
    gw_header_edits_t edits = {.e = edit, .n = nedit, .cap = nedit};
    gw_arena_t arena;
    gw_arena_init(&arena, 4096, 1 << 20, NULL);
    gw_buf_t b;
    gw_buf_init(&b, &arena, 64);
    /* The gateway's Via element and X-Forwarded-For address, as for a request, or none. */
    gw_http1_via_t via = {.name = nlines & 1 ? "gw" : NULL,
                          .major = 1,
                          .minor = (uint8_t)(nlines & 2 ? 1 : 0),
                          .forwarded_for = nlines & 4 ? GW_SLICE_LIT("10.0.0.1") : GW_SLICE("", 0)};
    gw_http1_forward_headers(&b, h, nh, never_reserved, &ops, &edits, &via);
    GW_FUZZ_CHECK(!b.oom);
    /* Every line written is "name: value\r\n" and none names a hop-by-hop field. */
    size_t off = 0, out_lines = 0, nvia = 0, nxff = 0;
    while (off < b.len) {
        const char *eol = NULL;
        for (size_t k = off; k + 1 < b.len && !eol; k++)
            if (b.p[k] == '\r' && b.p[k + 1] == '\n')
                eol = b.p + k;
        GW_FUZZ_CHECK(eol != NULL);
        const char *colon = memchr(b.p + off, ':', (size_t)(eol - (b.p + off)));
        /* A forwarded name may itself hold a CR LF only if the input line did; the lines are
         * split on LF and the names came from before a colon, so the first colon ends it. */
        GW_FUZZ_CHECK(colon != NULL);
        gw_slice_t name = GW_SLICE(b.p + off, (size_t)(colon - (b.p + off)));
        GW_FUZZ_CHECK(!gw_http1_is_hop_by_hop(name));
        nvia += gw_slice_ieq(name, "via");
        nxff += gw_slice_ieq(name, "x-forwarded-for");
        off = (size_t)(eol - b.p) + 2;
        out_lines++;
    }
    GW_FUZZ_CHECK(out_lines <= nh + nset + nedit + 2);
    /* The gateway's Via and X-Forwarded-For turn the message's lines into one each, unless the
     * route removes the header (it then decides it alone). */
    if (via.name || via_removed)
        GW_FUZZ_CHECK(nvia == (via_removed ? 0 : 1));
    if (via.forwarded_for.len || xff_removed)
        GW_FUZZ_CHECK(nxff == (xff_removed ? 0 : 1));
    gw_arena_free(&arena);
    for (size_t i = 0; i < nset; i++) {
        free(set[i].name);
        free(set[i].value);
    }
    for (size_t i = 0; i < nremove; i++)
        free(remove[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    line_t lines[MAX_LINES];
    size_t nlines = 0, start = 0;
    const char *p = (const char *)data;
    for (size_t i = 0; i <= size && nlines < MAX_LINES; i++) {
        if (i == size || p[i] == '\n') {
            size_t end = i;
            if (end > start && p[end - 1] == '\r')
                end--;
            lines[nlines++] = (line_t){p + start, end - start};
            start = i + 1;
        }
    }
    if (nlines > 0)
        check_url(lines[0].p, lines[0].len);
    for (size_t i = 0; i < nlines; i++)
        check_line(GW_SLICE(lines[i].p, lines[i].len), (uint8_t)(size + i));
    check_forward(lines, nlines);
    return 0;
}
