/*
 * config: runs gateway.lua in a private LuaJIT state, validates the table it returns and copies
 * it into a gw_config_t that owns every byte it points to. The Lua state is closed before
 * gw_config_load returns, so the config can be shared read-only by every worker.
 *
 * Validation is strict: unknown keys, wrong types and out-of-range values are errors, and nothing
 * half-valid is ever returned. Every message has the form `<file>:<line>: <key path>: <problem>`.
 * Once a table has been evaluated Lua no longer knows where its keys were written, so a small
 * scanner (gw_cfgscan_*) reads the source text, follows the table constructor after the chunk's
 * top-level `return` and records the line of every key path it sees; an error is reported at the
 * line of the longest recorded prefix of its path.
 *
 * Ownership while building: the config under construction is reachable from the build context at
 * all times, arrays are allocated zeroed with their final count before they are filled, so on any
 * error (ours, or a Lua error caught by lua_cpcall) gw_config_free releases exactly what was made.
 * Lua values are read with raw accesses only (no metamethods run), and the whole walk runs inside
 * lua_cpcall, so a Lua error (out of memory) can never unwind through C code that owns memory
 * other than through the context.
 */
#define _GNU_SOURCE
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <llhttp.h>

#include "lb.h"
#include "log.h"
#include "lua_bridge.h"
#include "lua_guard.h"
#include "router.h"

#define GW_CFG_PATH_MAX 512
#define GW_CFG_MAX_WORKERS 256

/* ------------------------------------------------------------------------------------------ */
/* Small helpers. The config is a control structure: running out of memory while building it is
 * not recoverable in any useful way, so these abort. */

static void *gw_cfg_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (p == NULL)
        abort();
    return p;
}

static void *gw_cfg_xrealloc(void *p, size_t size)
{
    p = realloc(p, size ? size : 1);
    if (p == NULL)
        abort();
    return p;
}

static char *gw_cfg_xstrndup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d == NULL)
        abort();
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static char *gw_cfg_xstrdup(const char *s)
{
    return gw_cfg_xstrndup(s, strlen(s));
}

static char *gw_cfg_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *gw_cfg_xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    return s;
}

static void gw_cfg_lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

static bool gw_cfg_is_keyword(const char *s, size_t n)
{
    static const char *const kw[] = {"and",   "break", "do",       "else", "elseif", "end",
                                     "false", "for",   "function", "goto", "if",     "in",
                                     "local", "nil",   "not",      "or",   "repeat", "return",
                                     "then",  "true",  "until",    "while"};
    for (size_t i = 0; i < GW_ARRAY_LEN(kw); i++) {
        if (strlen(kw[i]) == n && memcmp(kw[i], s, n) == 0)
            return true;
    }
    return false;
}

/* A key that can be written as `name = ...` in Lua. */
static bool gw_cfg_is_identifier(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++) {
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return false;
    }
    return !gw_cfg_is_keyword(s, n);
}

/* Appends one string-key segment to a key path in its canonical spelling: `name` at the root,
 * `.name` below it, `["any key"]` when the key is not an identifier. The scanner and the
 * validator both use this, so their paths compare equal. Truncates silently at `cap`. */
static size_t gw_cfg_path_append_key(char *buf, size_t len, size_t cap, const char *key,
                                     size_t klen)
{
    int n;
    if (gw_cfg_is_identifier(key, klen))
        n = snprintf(buf + len, cap - len, "%s%.*s", len ? "." : "", (int)klen, key);
    else
        n = snprintf(buf + len, cap - len, "[\"%.*s\"]", (int)klen, key);
    if (n < 0)
        return len;
    return GW_MIN(len + (size_t)n, cap - 1);
}

static size_t gw_cfg_path_append_index(char *buf, size_t len, size_t cap, long long idx)
{
    int n = snprintf(buf + len, cap - len, "[%lld]", idx);
    if (n < 0)
        return len;
    return GW_MIN(len + (size_t)n, cap - 1);
}

/* ------------------------------------------------------------------------------------------ */
/* Line map: a scanner over the source text that records `key path -> line` for the table
 * constructor returned by the chunk. It understands just enough Lua to skip comments, strings and
 * expressions; anything it cannot follow (a table built by a function call, a local) simply has no
 * entry, and errors inside it fall back to the nearest recorded ancestor. Once scanned, the map is
 * sorted by path, so a look-up is a binary search (every route looks its own line up). */

typedef struct gw_linemap_entry {
    char *path;
    int line;
    size_t seq; /* order of recording: a key written twice counts where it was written last */
} gw_linemap_entry_t;

typedef struct gw_linemap {
    gw_linemap_entry_t *v;
    size_t n, cap;
    int return_line; /* line of the top-level `return`, 0 if not found */
} gw_linemap_t;

enum gw_tok_kind { GW_TOK_EOF, GW_TOK_NAME, GW_TOK_STRING, GW_TOK_NUMBER, GW_TOK_OP };

typedef struct gw_tok {
    enum gw_tok_kind kind;
    const char *p; /* for NAME/NUMBER/OP: the text; for STRING: the raw literal */
    size_t len;
    int line;
} gw_tok_t;

typedef struct gw_lexer {
    const char *s;
    size_t len, pos;
    int line;
} gw_lexer_t;

/* If s[pos] starts a long bracket `[==[`, returns its level (number of '='), else -1. */
static int gw_lex_long_open(const gw_lexer_t *lx, size_t pos)
{
    if (pos >= lx->len || lx->s[pos] != '[')
        return -1;
    size_t i = pos + 1;
    int level = 0;
    while (i < lx->len && lx->s[i] == '=') {
        level++;
        i++;
    }
    return (i < lx->len && lx->s[i] == '[') ? level : -1;
}

/* Skips a long bracket of `level` whose opening starts at lx->pos, counting lines. */
static void gw_lex_skip_long(gw_lexer_t *lx, int level)
{
    lx->pos += (size_t)level + 2;
    while (lx->pos < lx->len) {
        char c = lx->s[lx->pos];
        if (c == '\n')
            lx->line++;
        if (c == ']') {
            size_t i = lx->pos + 1;
            int l = 0;
            while (i < lx->len && lx->s[i] == '=') {
                l++;
                i++;
            }
            if (l == level && i < lx->len && lx->s[i] == ']') {
                lx->pos = i + 1;
                return;
            }
        }
        lx->pos++;
    }
}

static gw_tok_t gw_lex_next(gw_lexer_t *lx)
{
    for (;;) {
        while (lx->pos < lx->len && isspace((unsigned char)lx->s[lx->pos])) {
            if (lx->s[lx->pos] == '\n')
                lx->line++;
            lx->pos++;
        }
        if (lx->pos + 1 < lx->len && lx->s[lx->pos] == '-' && lx->s[lx->pos + 1] == '-') {
            lx->pos += 2;
            int level = gw_lex_long_open(lx, lx->pos);
            if (level >= 0) {
                gw_lex_skip_long(lx, level);
            } else {
                while (lx->pos < lx->len && lx->s[lx->pos] != '\n')
                    lx->pos++;
            }
            continue;
        }
        break;
    }
    gw_tok_t t = {GW_TOK_EOF, lx->s + lx->pos, 0, lx->line};
    if (lx->pos >= lx->len)
        return t;
    size_t start = lx->pos;
    unsigned char c = (unsigned char)lx->s[start];
    int level = gw_lex_long_open(lx, start);
    if (level >= 0) {
        gw_lex_skip_long(lx, level);
        t.kind = GW_TOK_STRING;
    } else if (c == '"' || c == '\'') {
        lx->pos++;
        while (lx->pos < lx->len && lx->s[lx->pos] != (char)c && lx->s[lx->pos] != '\n') {
            if (lx->s[lx->pos] == '\\' && lx->pos + 1 < lx->len) {
                lx->pos++;
                if (lx->s[lx->pos] == '\n')
                    lx->line++;
            }
            lx->pos++;
        }
        if (lx->pos < lx->len && lx->s[lx->pos] == (char)c)
            lx->pos++;
        t.kind = GW_TOK_STRING;
    } else if (isalpha(c) || c == '_') {
        while (lx->pos < lx->len &&
               (isalnum((unsigned char)lx->s[lx->pos]) || lx->s[lx->pos] == '_'))
            lx->pos++;
        t.kind = GW_TOK_NAME;
    } else if (isdigit(c) ||
               (c == '.' && start + 1 < lx->len && isdigit((unsigned char)lx->s[start + 1]))) {
        while (lx->pos < lx->len) {
            char d = lx->s[lx->pos];
            if ((d == '+' || d == '-') && strchr("eEpP", lx->s[lx->pos - 1]) != NULL &&
                !(lx->pos - start == 1 && lx->s[start] == '0')) {
                lx->pos++;
            } else if (isalnum((unsigned char)d) || d == '.' || d == '_') {
                lx->pos++;
            } else {
                break;
            }
        }
        t.kind = GW_TOK_NUMBER;
    } else {
        static const char *const ops3[] = {"..."};
        static const char *const ops2[] = {"==", "~=", "<=", ">=", "..", "::", "<<", ">>", "//"};
        size_t n = 1;
        for (size_t i = 0; i < GW_ARRAY_LEN(ops3) && n == 1; i++) {
            if (start + 3 <= lx->len && memcmp(lx->s + start, ops3[i], 3) == 0)
                n = 3;
        }
        for (size_t i = 0; i < GW_ARRAY_LEN(ops2) && n == 1; i++) {
            if (start + 2 <= lx->len && memcmp(lx->s + start, ops2[i], 2) == 0)
                n = 2;
        }
        lx->pos += n;
        t.kind = GW_TOK_OP;
    }
    t.p = lx->s + start;
    t.len = lx->pos - start;
    return t;
}

static gw_tok_t gw_lex_peek(const gw_lexer_t *lx)
{
    gw_lexer_t copy = *lx;
    return gw_lex_next(&copy);
}

static bool gw_tok_is(const gw_tok_t *t, enum gw_tok_kind kind, const char *text)
{
    return t->kind == kind && t->len == strlen(text) && memcmp(t->p, text, t->len) == 0;
}

/* Change in block depth (function/do/if/repeat ... end/until) caused by a token. */
static int gw_tok_block_delta(const gw_tok_t *t)
{
    if (t->kind != GW_TOK_NAME)
        return 0;
    if (gw_tok_is(t, GW_TOK_NAME, "function") || gw_tok_is(t, GW_TOK_NAME, "do") ||
        gw_tok_is(t, GW_TOK_NAME, "if") || gw_tok_is(t, GW_TOK_NAME, "repeat"))
        return 1;
    if (gw_tok_is(t, GW_TOK_NAME, "end") || gw_tok_is(t, GW_TOK_NAME, "until"))
        return -1;
    return 0;
}

/* Decodes a short string literal (with its quotes) into buf; returns false for long strings or
 * escapes it does not know, in which case the key is simply not recorded. */
static bool gw_cfgscan_decode(const gw_tok_t *t, char *buf, size_t cap, size_t *out_len)
{
    if (t->len < 2 || (t->p[0] != '"' && t->p[0] != '\''))
        return false;
    size_t n = 0;
    for (size_t i = 1; i + 1 < t->len; i++) {
        char c = t->p[i];
        if (c == '\\') {
            if (++i + 1 > t->len - 1)
                return false;
            switch (t->p[i]) {
            case 'n':
                c = '\n';
                break;
            case 't':
                c = '\t';
                break;
            case 'r':
                c = '\r';
                break;
            case '\\':
                c = '\\';
                break;
            case '"':
                c = '"';
                break;
            case '\'':
                c = '\'';
                break;
            default:
                return false;
            }
        }
        if (n + 1 >= cap)
            return false;
        buf[n++] = c;
    }
    buf[n] = '\0';
    *out_len = n;
    return true;
}

static void gw_linemap_add(gw_linemap_t *m, const char *path, int line)
{
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 64;
        m->v = gw_cfg_xrealloc(m->v, m->cap * sizeof(*m->v));
    }
    m->v[m->n].path = gw_cfg_xstrdup(path);
    m->v[m->n].line = line;
    m->v[m->n].seq = m->n;
    m->n++;
}

static void gw_linemap_free(gw_linemap_t *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->v[i].path);
    free(m->v);
    memset(m, 0, sizeof(*m));
}

static void gw_cfgscan_table(gw_lexer_t *lx, gw_linemap_t *m, char *path, size_t plen, bool record,
                             int depth);

/* Reads one field value. If it starts with a table constructor, descends into it (recording under
 * `path` when `record`); then skips whatever else belongs to the expression, up to the `,`, `;` or
 * `}` that ends the field (not consumed). */
static void gw_cfgscan_value(gw_lexer_t *lx, gw_linemap_t *m, char *path, size_t plen, bool record,
                             int depth)
{
    gw_tok_t t = gw_lex_peek(lx);
    if (gw_tok_is(&t, GW_TOK_OP, "{") && depth < 32) {
        /* Deeper tables are skipped below like any expression: no config is nested that far,
         * and the recursion must stay bounded whatever the file contains. */
        gw_lex_next(lx);
        gw_cfgscan_table(lx, m, path, plen, record, depth + 1);
    }
    int nest = 0, block = 0;
    for (;;) {
        t = gw_lex_peek(lx);
        if (t.kind == GW_TOK_EOF)
            return;
        if (nest == 0 && block == 0 &&
            (gw_tok_is(&t, GW_TOK_OP, ",") || gw_tok_is(&t, GW_TOK_OP, ";") ||
             gw_tok_is(&t, GW_TOK_OP, "}")))
            return;
        gw_lex_next(lx);
        if (t.kind == GW_TOK_OP && t.len == 1 && strchr("([{", t.p[0]) != NULL)
            nest++;
        else if (t.kind == GW_TOK_OP && t.len == 1 && strchr(")]}", t.p[0]) != NULL)
            nest--;
        else
            block += gw_tok_block_delta(&t);
        if (nest < 0)
            return;
    }
}

/* Scans the fields of a table constructor whose `{` has just been consumed, through its `}`. */
static void gw_cfgscan_table(gw_lexer_t *lx, gw_linemap_t *m, char *path, size_t plen, bool record,
                             int depth)
{
    long long idx = 0;
    for (;;) {
        gw_tok_t t = gw_lex_next(lx);
        if (t.kind == GW_TOK_EOF || gw_tok_is(&t, GW_TOK_OP, "}"))
            return;
        if (gw_tok_is(&t, GW_TOK_OP, ",") || gw_tok_is(&t, GW_TOK_OP, ";"))
            continue;
        size_t sublen = plen;
        bool subrecord = record;
        gw_tok_t eq = gw_lex_peek(lx);
        if (t.kind == GW_TOK_NAME && gw_tok_is(&eq, GW_TOK_OP, "=")) {
            gw_lex_next(lx);
            sublen = gw_cfg_path_append_key(path, plen, GW_CFG_PATH_MAX, t.p, t.len);
        } else if (gw_tok_is(&t, GW_TOK_OP, "[")) {
            /* `[key] = value`: only literal string and integer keys are understood. */
            gw_tok_t k = gw_lex_next(lx);
            gw_tok_t close = gw_lex_peek(lx);
            char key[256];
            size_t klen;
            subrecord = false;
            if (gw_tok_is(&close, GW_TOK_OP, "]")) {
                if (k.kind == GW_TOK_STRING && gw_cfgscan_decode(&k, key, sizeof(key), &klen)) {
                    sublen = gw_cfg_path_append_key(path, plen, GW_CFG_PATH_MAX, key, klen);
                    subrecord = record;
                } else if (k.kind == GW_TOK_NUMBER && k.len < 20) {
                    memcpy(key, k.p, k.len);
                    key[k.len] = '\0';
                    char *end;
                    long long v = strtoll(key, &end, 10);
                    if (*end == '\0') {
                        sublen = gw_cfg_path_append_index(path, plen, GW_CFG_PATH_MAX, v);
                        subrecord = record;
                    }
                }
            }
            /* Skip to the matching `]`, then the `=`. */
            int nest = gw_tok_is(&k, GW_TOK_OP, "[") ? 2 : 1;
            if (gw_tok_is(&k, GW_TOK_OP, "]"))
                nest = 0;
            while (nest > 0) {
                gw_tok_t s = gw_lex_next(lx);
                if (s.kind == GW_TOK_EOF)
                    return;
                if (gw_tok_is(&s, GW_TOK_OP, "["))
                    nest++;
                else if (gw_tok_is(&s, GW_TOK_OP, "]"))
                    nest--;
            }
            gw_tok_t e = gw_lex_next(lx);
            if (!gw_tok_is(&e, GW_TOK_OP, "="))
                return;
        } else {
            /* A positional item: it starts with the token just read, so put it back. */
            idx++;
            sublen = gw_cfg_path_append_index(path, plen, GW_CFG_PATH_MAX, idx);
            lx->pos = (size_t)(t.p - lx->s);
            lx->line = t.line;
        }
        if (subrecord)
            gw_linemap_add(m, path, t.line);
        gw_cfgscan_value(lx, m, path, sublen, subrecord, depth);
        path[plen] = '\0';
    }
}

/* Finds the first `return {` outside any block in `src` and scans it into the map. */
static void gw_cfgscan_return(const char *src, size_t len, gw_linemap_t *m)
{
    gw_lexer_t lx = {src, len, 0, 1};
    if (len > 0 && src[0] == '#') {
        /* A shebang line, skipped by Lua as well. */
        while (lx.pos < len && src[lx.pos] != '\n')
            lx.pos++;
    }
    int block = 0;
    for (;;) {
        gw_tok_t t = gw_lex_next(&lx);
        if (t.kind == GW_TOK_EOF)
            return;
        block += gw_tok_block_delta(&t);
        if (block == 0 && gw_tok_is(&t, GW_TOK_NAME, "return")) {
            gw_tok_t open = gw_lex_peek(&lx);
            if (gw_tok_is(&open, GW_TOK_OP, "{")) {
                char path[GW_CFG_PATH_MAX] = "";
                m->return_line = t.line;
                gw_lex_next(&lx);
                gw_cfgscan_table(&lx, m, path, 0, true, 0);
                return;
            }
        }
    }
}

static int gw_linemap_entry_cmp(const void *a, const void *b)
{
    const gw_linemap_entry_t *x = a, *y = b;
    int rc = strcmp(x->path, y->path);
    return rc != 0 ? rc : x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Builds the sorted line map of `src`. */
static void gw_cfgscan(const char *src, size_t len, gw_linemap_t *m)
{
    gw_cfgscan_return(src, len, m);
    if (m->n > 1) /* an empty map has no array: qsort must not see NULL */
        qsort(m->v, m->n, sizeof(*m->v), gw_linemap_entry_cmp);
}

/* strcmp(entry, key) for a key of `len` bytes that is not NUL-terminated. */
static int gw_linemap_key_cmp(const char *entry, const char *key, size_t len)
{
    int rc = strncmp(entry, key, len);
    return rc != 0 ? rc : entry[len] != '\0';
}

/* The entry of `path` recorded last, or NULL. */
static const gw_linemap_entry_t *gw_linemap_find(const gw_linemap_t *m, const char *path,
                                                 size_t len)
{
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (gw_linemap_key_cmp(m->v[mid].path, path, len) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0 && gw_linemap_key_cmp(m->v[lo - 1].path, path, len) == 0)
        return &m->v[lo - 1];
    return NULL;
}

/* The line of the longest recorded prefix of `path` (cut at segment boundaries), else the line of
 * the `return`, else 1. */
static int gw_linemap_line(const gw_linemap_t *m, const char *path)
{
    size_t cuts[GW_CFG_PATH_MAX];
    size_t ncuts = 0, len = strlen(path);
    for (size_t i = 0; i < len; i++) {
        if (path[i] == '.' && i > 0) {
            cuts[ncuts++] = i;
        } else if (path[i] == '[') {
            if (i > 0)
                cuts[ncuts++] = i;
            if (i + 1 < len && path[i + 1] == '"') {
                const char *end = strstr(path + i + 2, "\"]");
                if (end == NULL)
                    break;
                i = (size_t)(end - path) + 1;
            }
        }
    }
    if (len > 0) {
        const gw_linemap_entry_t *e = gw_linemap_find(m, path, len);
        if (e != NULL)
            return e->line;
    }
    while (ncuts > 0) {
        const gw_linemap_entry_t *e = gw_linemap_find(m, path, cuts[--ncuts]);
        if (e != NULL)
            return e->line;
    }
    return m->return_line > 0 ? m->return_line : 1;
}

/* ------------------------------------------------------------------------------------------ */
/* The build context and error reporting. */

typedef struct gw_cfg_ctx {
    lua_State *L;
    const char *chunk; /* file name used in messages */
    const char *src;   /* the source text */
    size_t srclen;
    const char *lua_dir;
    gw_lua_limits_t limits; /* on running the chunk */
    gw_linemap_t lines;
    gw_config_t *cfg; /* under construction */
    int route_names;  /* while reading routes: stack index of a table name -> route index */
    char *err;        /* first error, malloc'd */
    char path[GW_CFG_PATH_MAX];
    size_t plen;
} gw_cfg_ctx_t;

/* Records an error about the current key path (the first error wins). Returns -1. */
static int gw_cfg_fail(gw_cfg_ctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int gw_cfg_fail(gw_cfg_ctx_t *c, const char *fmt, ...)
{
    if (c->err != NULL)
        return -1;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    int line = gw_linemap_line(&c->lines, c->path);
    if (c->plen > 0)
        c->err = gw_cfg_xasprintf("%s:%d: %s: %s", c->chunk, line, c->path, msg);
    else
        c->err = gw_cfg_xasprintf("%s:%d: %s", c->chunk, line, msg);
    return -1;
}

/* A key that loads but does nothing: logged as a warning at its place (file, line, key path),
 * like an error but without failing the load, so existing configurations keep working. */
static void gw_cfg_warn(gw_cfg_ctx_t *c, const char *msg)
{
    gw_log_warn("%s:%d: %s: %s", c->chunk, gw_linemap_line(&c->lines, c->path), c->path, msg);
}

static size_t gw_cfg_push_key(gw_cfg_ctx_t *c, const char *key)
{
    size_t old = c->plen;
    c->plen = gw_cfg_path_append_key(c->path, c->plen, sizeof(c->path), key, strlen(key));
    return old;
}

static size_t gw_cfg_push_index(gw_cfg_ctx_t *c, long long idx)
{
    size_t old = c->plen;
    c->plen = gw_cfg_path_append_index(c->path, c->plen, sizeof(c->path), idx);
    return old;
}

/* Extends the path with a key that is not a string (a number, a boolean, a table...). */
static size_t gw_cfg_push_other_key(gw_cfg_ctx_t *c, int idx)
{
    size_t old = c->plen;
    double d = lua_type(c->L, idx) == LUA_TNUMBER ? lua_tonumber(c->L, idx) : 0.5;
    if (d == floor(d) && fabs(d) < 1e15) {
        gw_cfg_push_index(c, (long long)d);
    } else {
        int n = snprintf(c->path + c->plen, sizeof(c->path) - c->plen, "[<%s>]",
                         luaL_typename(c->L, idx));
        if (n > 0)
            c->plen = GW_MIN(c->plen + (size_t)n, sizeof(c->path) - 1);
    }
    return old;
}

static void gw_cfg_pop(gw_cfg_ctx_t *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

/* Pushes t[key] (raw) and extends the path with key. Undo with gw_cfg_field_done. */
static size_t gw_cfg_field(gw_cfg_ctx_t *c, int t, const char *key)
{
    lua_pushstring(c->L, key);
    lua_rawget(c->L, t);
    return gw_cfg_push_key(c, key);
}

static void gw_cfg_field_done(gw_cfg_ctx_t *c, size_t old)
{
    lua_pop(c->L, 1);
    gw_cfg_pop(c, old);
}

static const char *gw_cfg_typename(gw_cfg_ctx_t *c, int idx)
{
    return lua_typename(c->L, lua_type(c->L, idx));
}

/* Checks that every key of the table at `t` is one of `allowed` (NULL-terminated). */
static int gw_cfg_check_keys(gw_cfg_ctx_t *c, int t, const char *const *allowed)
{
    lua_State *L = c->L;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        bool ok = false;
        size_t old = c->plen;
        if (lua_type(L, -2) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -2);
            for (size_t i = 0; allowed[i] != NULL && !ok; i++)
                ok = strcmp(k, allowed[i]) == 0;
            if (!ok)
                gw_cfg_push_key(c, k);
        } else {
            gw_cfg_push_other_key(c, -2);
        }
        if (!ok) {
            lua_pop(L, 2);
            gw_cfg_fail(c, "unknown key");
            gw_cfg_pop(c, old);
            return -1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* Checks that the value at `t` is a table used as a list (keys exactly 1..n); returns n or -1. */
static long gw_cfg_check_array(gw_cfg_ctx_t *c, int t)
{
    lua_State *L = c->L;
    if (lua_type(L, t) != LUA_TTABLE) {
        gw_cfg_fail(c, "expected a list (table), got %s", gw_cfg_typename(c, t));
        return -1;
    }
    long n = (long)lua_objlen(L, t);
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        bool ok = false;
        if (lua_type(L, -2) == LUA_TNUMBER) {
            double d = lua_tonumber(L, -2);
            ok = d >= 1 && d <= (double)n && d == floor(d);
        }
        lua_pop(L, 1);
        if (!ok) {
            const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            lua_pop(L, 1);
            if (k != NULL)
                return gw_cfg_fail(c, "expected a list, found key \"%s\"", k);
            return gw_cfg_fail(c, "expected a list without holes");
        }
    }
    return n;
}

/* Reads the value at the top of the stack as an integer in [lo, hi]. nil leaves *out unchanged. */
static int gw_cfg_uint(gw_cfg_ctx_t *c, uint64_t lo, uint64_t hi, uint64_t *out)
{
    lua_State *L = c->L;
    const char *what;
    char buf[96];
    if (lo == 0 && hi >= UINT32_MAX)
        what = "a non-negative integer";
    else if (lo == 1 && hi >= UINT32_MAX)
        what = "a positive integer";
    else {
        snprintf(buf, sizeof(buf), "an integer between %llu and %llu", (unsigned long long)lo,
                 (unsigned long long)hi);
        what = buf;
    }
    int type = lua_type(L, -1);
    if (type == LUA_TNIL)
        return 0;
    if (type != LUA_TNUMBER)
        return gw_cfg_fail(c, "expected %s, got %s", what, lua_typename(L, type));
    double d = lua_tonumber(L, -1);
    if (isnan(d))
        return gw_cfg_fail(c, "expected %s, got nan", what);
    if (!(d == floor(d)) || d < (double)lo || d > (double)hi) {
        if (d == floor(d) && d > (double)hi && hi >= UINT32_MAX)
            return gw_cfg_fail(c, "expected %s, got %.14g (maximum %llu)", what, d,
                               (unsigned long long)hi);
        return gw_cfg_fail(c, "expected %s, got %.14g", what, d);
    }
    *out = (uint64_t)d;
    return 0;
}

static int gw_cfg_u32_field(gw_cfg_ctx_t *c, int t, const char *key, uint32_t lo, uint32_t *out)
{
    size_t old = gw_cfg_field(c, t, key);
    uint64_t v = *out;
    int rc = gw_cfg_uint(c, lo, UINT32_MAX, &v);
    *out = (uint32_t)v;
    gw_cfg_field_done(c, old);
    return rc;
}

/* Reads the top of the stack as a string; nil leaves *out unchanged. Returns the length. */
static int gw_cfg_string(gw_cfg_ctx_t *c, const char **out, size_t *len)
{
    int type = lua_type(c->L, -1);
    if (type == LUA_TNIL)
        return 0;
    if (type != LUA_TSTRING)
        return gw_cfg_fail(c, "expected string, got %s", lua_typename(c->L, type));
    *out = lua_tolstring(c->L, -1, len);
    return 0;
}

/* A string without NUL, CR, LF or other control bytes, and not empty. */
static int gw_cfg_plain_string(gw_cfg_ctx_t *c, const char **out)
{
    const char *s = NULL;
    size_t len = 0;
    if (gw_cfg_string(c, &s, &len) < 0)
        return -1;
    if (s == NULL)
        return 0;
    if (len == 0)
        return gw_cfg_fail(c, "must not be empty");
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return gw_cfg_fail(c, "must not contain control characters");
    }
    *out = s;
    return 0;
}

static int gw_cfg_bool_field(gw_cfg_ctx_t *c, int t, const char *key, bool *out)
{
    size_t old = gw_cfg_field(c, t, key);
    int rc = 0, type = lua_type(c->L, -1);
    if (type == LUA_TBOOLEAN)
        *out = lua_toboolean(c->L, -1);
    else if (type != LUA_TNIL)
        rc = gw_cfg_fail(c, "expected boolean, got %s", lua_typename(c->L, type));
    gw_cfg_field_done(c, old);
    return rc;
}

/* For nested records: the value at the top must be nil or a table. Returns 1 for a table. */
static int gw_cfg_record(gw_cfg_ctx_t *c, const char *const *allowed)
{
    int type = lua_type(c->L, -1);
    if (type == LUA_TNIL)
        return 0;
    if (type != LUA_TTABLE)
        return gw_cfg_fail(c, "expected table, got %s", lua_typename(c->L, type));
    if (gw_cfg_check_keys(c, lua_gettop(c->L), allowed) < 0)
        return -1;
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Addresses and URLs. */

/* Resolves host:port into sa. Numeric hosts are tried first so that they never touch DNS. */
static int gw_cfg_resolve(gw_cfg_ctx_t *c, const char *host, const char *port, bool passive,
                          struct sockaddr_storage *sa, socklen_t *salen)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        hints.ai_flags &= ~AI_NUMERICHOST;
        rc = getaddrinfo(host, port, &hints, &res);
    }
    if (rc != 0 || res == NULL)
        return gw_cfg_fail(c, "cannot resolve \"%s\": %s", host,
                           rc != 0 ? gai_strerror(rc) : "no address");
    memcpy(sa, res->ai_addr, res->ai_addrlen);
    *salen = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static bool gw_cfg_parse_port(const char *s, size_t n, char out[8])
{
    uint16_t v = gw_http1_parse_port(GW_SLICE(s, n));
    if (v == 0)
        return false;
    snprintf(out, 8, "%u", v);
    return true;
}

/* Splits "host:port" / "[v6]:port" / ":port" / "port" into host (NULL: any) and port. */
static int gw_cfg_parse_listen(gw_cfg_ctx_t *c, const char *text, gw_addr_t *out)
{
    char host[256] = "", port[8];
    const char *p = text, *ps;
    size_t n = strlen(text);
    if (p[0] == '[') {
        const char *end = strchr(p, ']');
        if (end == NULL || end[1] != ':')
            return gw_cfg_fail(c, "invalid address \"%s\": expected \"[v6]:port\"", text);
        if ((size_t)(end - p - 1) >= sizeof(host) || end == p + 1)
            return gw_cfg_fail(c, "invalid address \"%s\"", text);
        memcpy(host, p + 1, (size_t)(end - p - 1));
        ps = end + 2;
    } else {
        const char *colon = strrchr(p, ':');
        if (colon == NULL) {
            ps = p;
        } else {
            if (memchr(p, ':', (size_t)(colon - p)) != NULL)
                return gw_cfg_fail(
                    c, "invalid address \"%s\": write IPv6 addresses as \"[v6]:port\"", text);
            if ((size_t)(colon - p) >= sizeof(host))
                return gw_cfg_fail(c, "invalid address \"%s\"", text);
            memcpy(host, p, (size_t)(colon - p));
            ps = colon + 1;
        }
    }
    if (!gw_cfg_parse_port(ps, (size_t)(text + n - ps), port))
        return gw_cfg_fail(c, "invalid address \"%s\": the port must be a number from 1 to 65535",
                           text);
    if (gw_cfg_resolve(c, host[0] ? host : "0.0.0.0", port, true, &out->sa, &out->salen) < 0)
        return -1;
    out->text = gw_cfg_xstrdup(text);
    return 0;
}

/* Accepts only "http://host[:port][/]" (gw_http1_url_split); fills url, authority and the
 * resolved address. */
static int gw_cfg_parse_url(gw_cfg_ctx_t *c, const char *url, gw_backend_cfg_t *b)
{
    static const char *const why[] = {
        [GW_URL_HTTPS] = "https upstreams are not supported yet",
        [GW_URL_NOT_HTTP] = "expected a URL of the form http://host[:port]",
        [GW_URL_USERINFO] = "user info is not allowed in upstream URLs",
        [GW_URL_QUERY] = "queries and fragments are not allowed in upstream URLs",
        [GW_URL_PATH] = "upstream URLs cannot have a path (use add_prefix on the route)",
        [GW_URL_UNTERMINATED_V6] = "unterminated IPv6 address",
        [GW_URL_AFTER_V6] = "invalid host",
    };
    gw_http1_url_t u;
    int e = gw_http1_url_split(url, &u);
    if (e != GW_URL_OK)
        return gw_cfg_fail(c, "\"%s\": %s", url, why[e]);
    char host[256], port[8] = "80";
    if (u.host.len == 0)
        return gw_cfg_fail(c, "\"%s\": missing host", url);
    if (u.host.len >= sizeof(host))
        return gw_cfg_fail(c, "\"%s\": host name too long", url);
    for (size_t i = 0; i < u.host.len; i++) {
        unsigned char ch = (unsigned char)u.host.p[i];
        if (!(isalnum(ch) || ch == '.' || ch == '-' || ch == '_' || (u.bracketed && ch == ':')))
            return gw_cfg_fail(c, "\"%s\": invalid host", url);
    }
    memcpy(host, u.host.p, u.host.len);
    host[u.host.len] = '\0';
    if (u.port.p != NULL && !gw_cfg_parse_port(u.port.p, u.port.len, port))
        return gw_cfg_fail(c, "\"%s\": the port must be a number from 1 to 65535", url);
    if (gw_cfg_resolve(c, host, port, false, &b->sa, &b->salen) < 0)
        return -1;
    b->url = gw_cfg_xstrdup(url);
    b->authority = gw_cfg_xstrndup(u.authority.p, u.authority.len);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Headers. */

static bool gw_cfg_is_tchar(unsigned char ch)
{
    return isalnum(ch) || (ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

static int gw_cfg_header_name(gw_cfg_ctx_t *c, const char *name, size_t len, char **out)
{
    if (len == 0)
        return gw_cfg_fail(c, "empty header name");
    for (size_t i = 0; i < len; i++) {
        if (!gw_cfg_is_tchar((unsigned char)name[i]))
            return gw_cfg_fail(c, "invalid header name \"%.*s\"", (int)len, name);
    }
    char *lower = gw_cfg_xstrndup(name, len);
    gw_cfg_lower(lower);
    /* The gateway owns message framing; letting a config rewrite it would desynchronise the
     * connection. */
    if (strcmp(lower, "content-length") == 0 || strcmp(lower, "transfer-encoding") == 0) {
        free(lower);
        return gw_cfg_fail(c, "%.*s is managed by the gateway and cannot be changed", (int)len,
                           name);
    }
    *out = lower;
    return 0;
}

static int gw_cfg_kv_cmp(const void *a, const void *b)
{
    return strcmp(((const gw_header_kv_t *)a)->name, ((const gw_header_kv_t *)b)->name);
}

/* Reads {Name = "value", ...} at the top of the stack into a sorted, lower-cased array. */
static int gw_cfg_header_map(gw_cfg_ctx_t *c, gw_header_kv_t **out, size_t *nout)
{
    lua_State *L = c->L;
    int t = lua_gettop(L);
    if (lua_type(L, t) == LUA_TNIL)
        return 0;
    if (lua_type(L, t) != LUA_TTABLE)
        return gw_cfg_fail(c, "expected a table of header names to values, got %s",
                           gw_cfg_typename(c, t));
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        n++;
        lua_pop(L, 1);
    }
    *out = gw_cfg_xcalloc(n, sizeof(**out));
    *nout = 0;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_pop(L, 2);
            return gw_cfg_fail(c, "header names must be strings");
        }
        size_t klen, vlen;
        const char *k = lua_tolstring(L, -2, &klen);
        size_t old = gw_cfg_push_key(c, k);
        gw_header_kv_t *kv = &(*out)[*nout];
        int rc = gw_cfg_header_name(c, k, klen, &kv->name);
        if (rc == 0) {
            (*nout)++;
            /* Reported on the table: which spelling lua_next meets first is not stable. */
            for (size_t i = 0; i + 1 < *nout && rc == 0; i++) {
                if (strcmp((*out)[i].name, kv->name) == 0) {
                    gw_cfg_pop(c, old);
                    rc = gw_cfg_fail(c, "duplicate header \"%s\" (names are case-insensitive)",
                                     kv->name);
                }
            }
        }
        if (rc == 0 && lua_type(L, -1) != LUA_TSTRING)
            rc = gw_cfg_fail(c, "expected string, got %s", gw_cfg_typename(c, -1));
        if (rc == 0) {
            const char *v = lua_tolstring(L, -1, &vlen);
            if (strcspn(v, "\r\n") != vlen)
                rc = gw_cfg_fail(c, "header values must not contain CR, LF or NUL");
            else
                kv->value = gw_cfg_xstrndup(v, vlen);
        }
        gw_cfg_pop(c, old);
        if (rc < 0) {
            lua_pop(L, 2);
            return -1;
        }
        lua_pop(L, 1);
    }
    qsort(*out, *nout, sizeof(**out), gw_cfg_kv_cmp);
    return 0;
}

static int gw_cfg_header_ops(gw_cfg_ctx_t *c, int t, const char *key, gw_header_ops_t *ops)
{
    static const char *const keys[] = {"set", "remove", NULL};
    lua_State *L = c->L;
    size_t old = gw_cfg_field(c, t, key);
    int rc = gw_cfg_record(c, keys);
    if (rc <= 0)
        goto done;
    int ht = lua_gettop(L);
    size_t o2 = gw_cfg_field(c, ht, "set");
    rc = gw_cfg_header_map(c, &ops->set, &ops->nset);
    gw_cfg_field_done(c, o2);
    if (rc < 0)
        goto done;

    o2 = gw_cfg_field(c, ht, "remove");
    if (lua_type(L, -1) != LUA_TNIL) {
        int rt = lua_gettop(L);
        long n = gw_cfg_check_array(c, rt);
        if (n < 0) {
            rc = -1;
        } else {
            ops->remove = gw_cfg_xcalloc((size_t)n, sizeof(char *));
            for (long i = 1; i <= n && rc == 0; i++) {
                lua_rawgeti(L, rt, (int)i);
                size_t o3 = gw_cfg_push_index(c, i);
                size_t len = 0;
                char *name = NULL;
                if (lua_type(L, -1) != LUA_TSTRING) {
                    rc = gw_cfg_fail(c, "expected string, got %s", gw_cfg_typename(c, -1));
                } else {
                    const char *s = lua_tolstring(L, -1, &len);
                    rc = gw_cfg_header_name(c, s, len, &name);
                }
                for (size_t j = 0; rc == 0 && j < ops->nremove; j++) {
                    if (strcmp(ops->remove[j], name) == 0)
                        rc = gw_cfg_fail(c, "duplicate header \"%s\"", name);
                }
                for (size_t j = 0; rc == 0 && j < ops->nset; j++) {
                    if (strcmp(ops->set[j].name, name) == 0)
                        rc = gw_cfg_fail(c, "\"%s\" is both set and removed", name);
                }
                if (rc == 0)
                    ops->remove[ops->nremove++] = name;
                else
                    free(name);
                gw_cfg_pop(c, o3);
                lua_pop(L, 1);
            }
        }
    }
    gw_cfg_field_done(c, o2);
done:
    gw_cfg_field_done(c, old);
    return rc < 0 ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Top-level sections. */

static int gw_cfg_listen(gw_cfg_ctx_t *c, int t)
{
    lua_State *L = c->L;
    gw_config_t *cfg = c->cfg;
    size_t old = gw_cfg_field(c, t, "listen");
    int rc = 0, type = lua_type(L, -1);
    if (type == LUA_TNIL) {
        cfg->listen = gw_cfg_xcalloc(1, sizeof(gw_addr_t));
        cfg->nlisten = 1;
        rc = gw_cfg_parse_listen(c, "0.0.0.0:8080", &cfg->listen[0]);
    } else if (type == LUA_TSTRING) {
        cfg->listen = gw_cfg_xcalloc(1, sizeof(gw_addr_t));
        cfg->nlisten = 1;
        rc = gw_cfg_parse_listen(c, lua_tostring(L, -1), &cfg->listen[0]);
    } else if (type == LUA_TTABLE) {
        int lt = lua_gettop(L);
        long n = gw_cfg_check_array(c, lt);
        if (n == 0)
            rc = gw_cfg_fail(c, "must not be empty");
        if (n <= 0) {
            rc = -1;
            goto done;
        }
        cfg->listen = gw_cfg_xcalloc((size_t)n, sizeof(gw_addr_t));
        cfg->nlisten = (size_t)n;
        for (long i = 1; i <= n && rc == 0; i++) {
            size_t o2 = gw_cfg_push_index(c, i);
            lua_rawgeti(L, lt, (int)i);
            if (lua_type(L, -1) != LUA_TSTRING)
                rc = gw_cfg_fail(c, "expected string, got %s", gw_cfg_typename(c, -1));
            else
                rc = gw_cfg_parse_listen(c, lua_tostring(L, -1), &cfg->listen[i - 1]);
            for (long j = 1; j < i && rc == 0; j++) {
                if (gw_sockaddr_equal(&cfg->listen[j - 1].sa, cfg->listen[j - 1].salen,
                                         &cfg->listen[i - 1].sa, cfg->listen[i - 1].salen))
                    rc = gw_cfg_fail(c, "duplicate address (same as listen[%ld])", j);
            }
            lua_pop(L, 1);
            gw_cfg_pop(c, o2);
        }
    } else {
        rc = gw_cfg_fail(c, "expected string or list of strings, got %s", lua_typename(L, type));
    }
done:
    gw_cfg_field_done(c, old);
    return rc;
}

static int gw_cfg_workers(gw_cfg_ctx_t *c, int t)
{
    lua_State *L = c->L;
    size_t old = gw_cfg_field(c, t, "workers");
    int rc = 0, type = lua_type(L, -1);
    if (type == LUA_TNIL || (type == LUA_TSTRING && strcmp(lua_tostring(L, -1), "auto") == 0)) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->cfg->workers = (uint32_t)(n < 1 ? 1 : n > GW_CFG_MAX_WORKERS ? GW_CFG_MAX_WORKERS : n);
    } else if (type == LUA_TNUMBER) {
        uint64_t v = 0;
        rc = gw_cfg_uint(c, 1, GW_CFG_MAX_WORKERS, &v);
        c->cfg->workers = (uint32_t)v;
    } else if (type == LUA_TSTRING) {
        rc = gw_cfg_fail(c, "expected an integer between 1 and %d or \"auto\", got \"%s\"",
                         GW_CFG_MAX_WORKERS, lua_tostring(L, -1));
    } else {
        rc = gw_cfg_fail(c, "expected an integer between 1 and %d or \"auto\", got %s",
                         GW_CFG_MAX_WORKERS, lua_typename(L, type));
    }
    gw_cfg_field_done(c, old);
    return rc;
}

/* An address only this host can reach: 127.0.0.0/8 or ::1 (IPv4-mapped ones too). */
static bool gw_cfg_is_loopback(const struct sockaddr_storage *sa)
{
    static const char *const nets[] = {"127.0.0.0/8", "::1"};
    for (size_t i = 0; i < GW_ARRAY_LEN(nets); i++) {
        gw_cidr_t net;
        if (gw_cidr_parse(nets[i], &net) && gw_cidr_match(&net, (const struct sockaddr *)sa))
            return true;
    }
    return false;
}

static int gw_cfg_admin(gw_cfg_ctx_t *c, int t)
{
    static const char *const keys[] = {"listen", "token", "insecure", NULL};
    lua_State *L = c->L;
    gw_config_t *cfg = c->cfg;
    const char *listen = "127.0.0.1:9901", *token = NULL;
    bool insecure = false;
    size_t old = gw_cfg_field(c, t, "admin");
    int rc = 0, type = lua_type(L, -1);
    if (type == LUA_TBOOLEAN && !lua_toboolean(L, -1))
        goto done;
    if (type == LUA_TBOOLEAN) {
        rc = gw_cfg_fail(c, "expected table or false, got true");
        goto done;
    }
    if (type != LUA_TNIL && type != LUA_TTABLE) {
        rc = gw_cfg_fail(c, "expected table or false, got %s", lua_typename(L, type));
        goto done;
    }
    size_t o2 = old;
    if (type == LUA_TTABLE) {
        int at = lua_gettop(L);
        if ((rc = gw_cfg_check_keys(c, at, keys)) < 0 ||
            (rc = gw_cfg_bool_field(c, at, "insecure", &insecure)) < 0)
            goto done;
        o2 = gw_cfg_field(c, at, "token");
        rc = gw_cfg_plain_string(c, &token);
        if (rc == 0 && token != NULL)
            cfg->admin_token = gw_cfg_xstrdup(token);
        gw_cfg_field_done(c, o2);
        if (rc < 0)
            goto done;
        o2 = gw_cfg_field(c, at, "listen");
        rc = gw_cfg_plain_string(c, &listen);
    } else {
        lua_pushnil(L);
    }
    /* Parsed while the key path still names admin.listen (when it was written). */
    if (rc == 0)
        rc = gw_cfg_parse_listen(c, listen, &cfg->admin_listen);
    /* The admin API reloads the configuration and (with registration) points upstreams at new
     * addresses: open to other hosts, it needs a token, or an explicit insecure = true. */
    if (rc == 0 && token == NULL && !gw_cfg_is_loopback(&cfg->admin_listen.sa)) {
        if (insecure)
            cfg->admin_insecure = true;
        else
            rc = gw_cfg_fail(c,
                             "\"%s\" is reachable from other hosts and admin.token is not set "
                             "(set a token, listen on 127.0.0.1, or set admin.insecure = true)",
                             listen);
    }
    for (size_t i = 0; i < cfg->nlisten && rc == 0; i++) {
        if (!gw_sockaddr_equal(&cfg->listen[i].sa, cfg->listen[i].salen, &cfg->admin_listen.sa,
                                  cfg->admin_listen.salen))
            continue;
        if (type == LUA_TTABLE) {
            rc = cfg->nlisten > 1 ? gw_cfg_fail(c, "same address as listen[%zu]", i + 1)
                                  : gw_cfg_fail(c, "same address as listen");
        } else {
            /* The admin listener was not written: blame the listen address instead. */
            gw_cfg_pop(c, 0);
            gw_cfg_push_key(c, "listen");
            if (cfg->nlisten > 1)
                gw_cfg_push_index(c, (long long)i + 1);
            rc = gw_cfg_fail(c,
                             "same address as the admin listener (admin.listen defaults to "
                             "%s; set it or admin = false)",
                             listen);
        }
    }
    gw_cfg_field_done(c, o2);
    if (rc < 0)
        goto done;
    cfg->admin_enabled = true;
done:
    gw_cfg_field_done(c, old);
    return rc;
}

static int gw_cfg_limits(gw_cfg_ctx_t *c, int t)
{
    static const char *const keys[] = {"header_bytes", "uri_bytes",   "headers",
                                       "body_bytes",   "connections", NULL};
    gw_limits_t *l = &c->cfg->limits;
    size_t old = gw_cfg_field(c, t, "limits");
    int rc = gw_cfg_record(c, keys);
    if (rc > 0) {
        int lt = lua_gettop(c->L);
        rc = gw_cfg_u32_field(c, lt, "header_bytes", 1, &l->max_header_bytes);
        if (rc == 0)
            rc = gw_cfg_u32_field(c, lt, "uri_bytes", 1, &l->max_uri_bytes);
        if (rc == 0)
            rc = gw_cfg_u32_field(c, lt, "headers", 1, &l->max_headers);
        if (rc == 0) {
            size_t o2 = gw_cfg_field(c, lt, "body_bytes");
            rc = gw_cfg_uint(c, 0, (1ull << 53), &l->max_body_bytes);
            gw_cfg_field_done(c, o2);
        }
        if (rc == 0)
            rc = gw_cfg_u32_field(c, lt, "connections", 1, &l->max_connections);
        if (rc == 0 && l->max_uri_bytes > l->max_header_bytes) {
            size_t o2 = gw_cfg_push_key(c, "uri_bytes");
            rc = gw_cfg_fail(c, "must not exceed limits.header_bytes (%u)", l->max_header_bytes);
            gw_cfg_pop(c, o2);
        }
    }
    gw_cfg_field_done(c, old);
    return rc < 0 ? -1 : 0;
}

static int gw_cfg_timeouts(gw_cfg_ctx_t *c, int t)
{
    static const char *const keys[] = {"header_ms", "body_ms",  "keepalive_ms",
                                       "send_ms",   "drain_ms", NULL};
    gw_client_timeouts_t *to = &c->cfg->timeouts;
    size_t old = gw_cfg_field(c, t, "timeouts");
    int rc = gw_cfg_record(c, keys);
    if (rc > 0) {
        int tt = lua_gettop(c->L);
        rc = gw_cfg_u32_field(c, tt, "header_ms", 1, &to->header_ms);
        if (rc == 0)
            rc = gw_cfg_u32_field(c, tt, "body_ms", 1, &to->body_ms);
        if (rc == 0)
            rc = gw_cfg_u32_field(c, tt, "keepalive_ms", 1, &to->keepalive_ms);
        if (rc == 0)
            rc = gw_cfg_u32_field(c, tt, "send_ms", 1, &to->send_ms);
        if (rc == 0)
            rc = gw_cfg_u32_field(c, tt, "drain_ms", 1, &to->drain_ms);
    }
    gw_cfg_field_done(c, old);
    return rc < 0 ? -1 : 0;
}

static int gw_cfg_access_log(gw_cfg_ctx_t *c, int t)
{
    lua_State *L = c->L;
    size_t old = gw_cfg_field(c, t, "access_log");
    int rc = 0, type = lua_type(L, -1);
    if (type == LUA_TSTRING) {
        const char *s = NULL;
        rc = gw_cfg_plain_string(c, &s);
        if (rc == 0)
            c->cfg->access_log = gw_cfg_xstrdup(s);
    } else if (type != LUA_TNIL && !(type == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
        rc = gw_cfg_fail(c, "expected string or false, got %s",
                         type == LUA_TBOOLEAN ? "true" : lua_typename(L, type));
    }
    gw_cfg_field_done(c, old);
    return rc;
}

/* `via`: the pseudonym the gateway adds to Via (RFC 9110 §7.6.3 allows a pseudonym in place of
 * a host name). A token, so it cannot break the header it is written into. */
static int gw_cfg_via(gw_cfg_ctx_t *c, int t)
{
    lua_State *L = c->L;
    size_t old = gw_cfg_field(c, t, "via");
    int rc = 0, type = lua_type(L, -1);
    if (type == LUA_TNIL) {
        c->cfg->via = gw_cfg_xstrdup("prequal-gw");
    } else if (type == LUA_TSTRING) {
        size_t len = 0;
        const char *s = lua_tolstring(L, -1, &len);
        if (len == 0 || len > GW_VIA_MAX)
            rc = gw_cfg_fail(c, "must be 1 to %d characters", GW_VIA_MAX);
        for (size_t i = 0; rc == 0 && i < len; i++)
            if (!gw_cfg_is_tchar((unsigned char)s[i]))
                rc = gw_cfg_fail(c, "must be a token: letters, digits and !#$%%&'*+-.^_`|~");
        if (rc == 0)
            c->cfg->via = gw_cfg_xstrdup(s);
    } else if (!(type == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
        rc = gw_cfg_fail(c, "expected string or false, got %s",
                         type == LUA_TBOOLEAN ? "true" : lua_typename(L, type));
    }
    gw_cfg_field_done(c, old);
    return rc;
}

static int gw_cfg_log_level(gw_cfg_ctx_t *c, int t)
{
    size_t old = gw_cfg_field(c, t, "log_level");
    const char *s = NULL;
    size_t len;
    int rc = gw_cfg_string(c, &s, &len);
    if (rc == 0 && s != NULL) {
        int level = gw_log_level_parse(s);
        if (level < 0)
            rc = gw_cfg_fail(c, "expected \"debug\", \"info\", \"warn\" or \"error\", got \"%s\"",
                             s);
        else
            c->cfg->log_level = level;
    }
    gw_cfg_field_done(c, old);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Upstreams. */

/* A Lua strategy: a table with a `pick` function (ARCHITECTURE.md §6), and optionally `name`, `init`,
 * `on_result`, `on_backends_changed`. */
static int gw_cfg_lua_strategy(gw_cfg_ctx_t *c, gw_upstream_cfg_t *u)
{
    lua_State *L = c->L;
    int st = lua_gettop(L);
    static const char *const fns[] = {"pick", "init", "on_result", "on_backends_changed"};
    for (size_t i = 0; i < GW_ARRAY_LEN(fns); i++) {
        size_t o2 = gw_cfg_field(c, st, fns[i]);
        int type = lua_type(L, -1), rc = 0;
        if (type == LUA_TNIL && i == 0)
            rc = gw_cfg_fail(c, "required (a Lua strategy needs a pick function)");
        else if (type != LUA_TNIL && type != LUA_TFUNCTION)
            rc = gw_cfg_fail(c, "expected function, got %s", lua_typename(L, type));
        gw_cfg_field_done(c, o2);
        if (rc < 0)
            return -1;
    }
    size_t o2 = gw_cfg_field(c, st, "name");
    const char *name = "lua";
    int rc = gw_cfg_plain_string(c, &name);
    gw_cfg_field_done(c, o2);
    if (rc < 0)
        return -1;
    u->lua_strategy = true;
    u->strategy = gw_cfg_xstrdup(name);
    c->cfg->uses_lua = true;
    return 0;
}

static int gw_cfg_strategy(gw_cfg_ctx_t *c, int ut, gw_upstream_cfg_t *u)
{
    size_t old = gw_cfg_field(c, ut, "fallback_strategy");
    const char *fb = "round_robin";
    int rc = gw_cfg_plain_string(c, &fb);
    if (rc == 0 && gw_lb_find(fb) == NULL)
        rc = gw_cfg_fail(c, "unknown native strategy \"%s\"", fb);
    gw_cfg_field_done(c, old);
    if (rc < 0)
        return -1;
    u->fallback_strategy = gw_cfg_xstrdup(fb);
    old = gw_cfg_field(c, ut, "strategy");
    if (lua_type(c->L, -1) == LUA_TTABLE) {
        rc = gw_cfg_lua_strategy(c, u);
        gw_cfg_field_done(c, old);
        return rc;
    }
    const char *s = "prequal";
    rc = gw_cfg_plain_string(c, &s);
    if (rc == 0 && gw_lb_find(s) == NULL) {
        char known[256] = "";
        size_t n = 0;
        const char *const *names = gw_lb_names();
        for (size_t i = 0; names[i] != NULL; i++) {
            int w = snprintf(known + n, sizeof(known) - n, "%s%s", i ? ", " : "", names[i]);
            if (w > 0)
                n = GW_MIN(n + (size_t)w, sizeof(known) - 1);
        }
        rc = gw_cfg_fail(c, "unknown strategy \"%s\" (known: %s)", s, known);
    }
    if (rc == 0)
        u->strategy = gw_cfg_xstrdup(s);
    gw_cfg_field_done(c, old);
    return rc;
}

/* Reads a number field (nil keeps *out). */
static int gw_cfg_number_field(gw_cfg_ctx_t *c, int t, const char *key, double *out)
{
    size_t old = gw_cfg_field(c, t, key);
    int rc = 0, type = lua_type(c->L, -1);
    if (type == LUA_TNUMBER) {
        double d = lua_tonumber(c->L, -1);
        if (isnan(d) || isinf(d))
            rc = gw_cfg_fail(c, "expected a finite number");
        else
            *out = d;
    } else if (type != LUA_TNIL) {
        rc = gw_cfg_fail(c, "expected number, got %s", lua_typename(c->L, type));
    }
    gw_cfg_field_done(c, old);
    return rc;
}

/* `prequal = {...}`: docs/PREQUAL.md §2. Ranges are the prequal module's own (one place). */
static int gw_cfg_prequal(gw_cfg_ctx_t *c, int ut, gw_upstream_cfg_t *u)
{
    static const char *const keys[] = {
        "probe_path", "pool_size",     "max_age_ms",    "probes_per_request", "removes_per_request",
        "delta",      "max_reuse",     "q_rif",         "rif_history",        "probe_timeout_ms",
        "idle_probe_ms", "max_probes_in_flight", "probe_rate", "latency_smoothing_ms", NULL};
    gw_prequal_params_t *p = &u->prequal;
    gw_prequal_params_default(p);
    const char *path = "/probe";
    size_t old = gw_cfg_field(c, ut, "prequal");
    int rc = gw_cfg_record(c, keys);
    if (rc > 0) {
        int pt = lua_gettop(c->L);
        size_t o2 = gw_cfg_field(c, pt, "probe_path");
        rc = gw_cfg_plain_string(c, &path);
        if (rc == 0 && path[0] != '/')
            rc = gw_cfg_fail(c, "must start with \"/\"");
        gw_cfg_field_done(c, o2);
        struct {
            const char *key;
            uint32_t *u32;
            double *dbl;
        } fields[] = {
            {"pool_size", &p->pool_size, NULL},
            {"max_age_ms", &p->max_age_ms, NULL},
            {"probes_per_request", NULL, &p->probes_per_request},
            {"removes_per_request", NULL, &p->removes_per_request},
            {"delta", NULL, &p->delta},
            {"max_reuse", &p->max_reuse, NULL},
            {"q_rif", NULL, &p->q_rif},
            {"rif_history", &p->rif_history, NULL},
            {"probe_timeout_ms", &p->probe_timeout_ms, NULL},
            {"idle_probe_ms", &p->idle_probe_ms, NULL},
            {"max_probes_in_flight", &p->max_probes_in_flight, NULL},
            {"probe_rate", &p->probe_rate, NULL},
            {"latency_smoothing_ms", &p->latency_smoothing_ms, NULL},
        };
        for (size_t i = 0; i < GW_ARRAY_LEN(fields) && rc == 0; i++)
            rc = fields[i].u32 ? gw_cfg_u32_field(c, pt, fields[i].key, 0, fields[i].u32)
                               : gw_cfg_number_field(c, pt, fields[i].key, fields[i].dbl);
        o2 = gw_cfg_field(c, pt, "rif_history");
        if (rc == 0 && !lua_isnil(c->L, -1))
            gw_cfg_warn(c, "no longer used (the hot threshold takes one value per backend, "
                           "docs/PREQUAL.md §3.4); ignored");
        gw_cfg_field_done(c, o2);
        const char *bad = rc == 0 ? gw_prequal_params_check(p) : NULL;
        if (bad) {
            /* The message starts with the field's name: report it at that key. */
            char key[32];
            size_t n = strcspn(bad, " ");
            snprintf(key, sizeof key, "%.*s", (int)GW_MIN(n, sizeof key - 1), bad);
            o2 = gw_cfg_field(c, pt, key);
            rc = gw_cfg_fail(c, "%s", bad + n + (bad[n] == ' '));
            gw_cfg_field_done(c, o2);
        }
    }
    gw_cfg_field_done(c, old);
    if (rc < 0)
        return -1;
    u->probe_path = gw_cfg_xstrdup(path);
    return 0;
}

/* `hedge = {...}` (hedge.h): exactly one of after_ms and after_quantile; absent means off. */
static int gw_cfg_hedge(gw_cfg_ctx_t *c, int ut, gw_upstream_cfg_t *u)
{
    static const char *const keys[] = {"after_ms", "after_quantile", "max", "budget_percent", NULL};
    gw_hedge_cfg_t *h = &u->hedge;
    memset(h, 0, sizeof *h);
    h->max = 1;
    h->budget_percent = 10;
    size_t old = gw_cfg_field(c, ut, "hedge");
    int rc = gw_cfg_record(c, keys);
    if (rc > 0) {
        int ht = lua_gettop(c->L);
        h->enabled = true;
        uint64_t v = 0;
        size_t o2 = gw_cfg_field(c, ht, "after_ms");
        bool has_ms = lua_type(c->L, -1) != LUA_TNIL;
        rc = gw_cfg_uint(c, 1, 60000, &v);
        h->after_ms = (uint32_t)v;
        gw_cfg_field_done(c, o2);
        if (rc == 0) {
            o2 = gw_cfg_field(c, ht, "after_quantile");
            int type = lua_type(c->L, -1);
            double q = type == LUA_TNUMBER ? lua_tonumber(c->L, -1) : 0;
            if (type != LUA_TNIL && (type != LUA_TNUMBER || !(q > 0 && q < 1)))
                rc = gw_cfg_fail(c, "expected a number above 0 and below 1, got %s",
                                 type == LUA_TNUMBER ? lua_tostring(c->L, -1)
                                                     : lua_typename(c->L, type));
            else if (type != LUA_TNIL && has_ms)
                rc = gw_cfg_fail(c, "give after_ms or after_quantile, not both");
            h->after_quantile = type == LUA_TNIL ? 0 : q;
            gw_cfg_field_done(c, o2);
        }
        if (rc == 0 && !has_ms && h->after_quantile == 0)
            rc = gw_cfg_fail(c, "needs after_ms or after_quantile");
        if (rc == 0) {
            o2 = gw_cfg_field(c, ht, "max");
            v = h->max;
            rc = gw_cfg_uint(c, 0, UINT32_MAX, &v);
            if (rc == 0 && v != 1)
                rc = gw_cfg_fail(c, "only 1 is supported (one hedge per request), got %llu",
                                 (unsigned long long)v);
            gw_cfg_field_done(c, o2);
        }
        if (rc == 0) {
            o2 = gw_cfg_field(c, ht, "budget_percent");
            v = h->budget_percent;
            rc = gw_cfg_uint(c, 1, 100, &v);
            h->budget_percent = (uint32_t)v;
            gw_cfg_field_done(c, o2);
        }
    }
    gw_cfg_field_done(c, old);
    return rc < 0 ? -1 : 0;
}

static int gw_cfg_backend(gw_cfg_ctx_t *c, int bt, gw_backend_cfg_t *b)
{
    static const char *const keys[] = {"url", "weight", "meta", NULL};
    lua_State *L = c->L;
    const char *url = NULL;
    int rc, type = lua_type(L, bt);
    b->weight = 1;
    if (type == LUA_TSTRING) {
        rc = gw_cfg_plain_string(c, &url);
        return rc < 0 ? rc : gw_cfg_parse_url(c, url, b);
    }
    if (type != LUA_TTABLE)
        return gw_cfg_fail(c, "expected a URL string or a table, got %s", lua_typename(L, type));
    if (gw_cfg_check_keys(c, bt, keys) < 0)
        return -1;
    size_t old = gw_cfg_field(c, bt, "url");
    rc = gw_cfg_plain_string(c, &url);
    if (rc == 0 && url == NULL)
        rc = gw_cfg_fail(c, "required");
    if (rc == 0)
        rc = gw_cfg_parse_url(c, url, b);
    gw_cfg_field_done(c, old);
    if (rc < 0)
        return -1;
    old = gw_cfg_field(c, bt, "weight");
    uint64_t w = 1;
    rc = gw_cfg_uint(c, 1, 1000, &w);
    b->weight = (uint32_t)w;
    gw_cfg_field_done(c, old);
    if (rc < 0)
        return -1;
    /* `meta`: free-form labels for Lua strategies (zone, canary, ...); each worker reads them
     * from its own evaluation of the file, so only the type is checked here. */
    old = gw_cfg_field(c, bt, "meta");
    type = lua_type(L, -1);
    if (type != LUA_TNIL && type != LUA_TTABLE)
        rc = gw_cfg_fail(c, "expected table, got %s", lua_typename(L, type));
    gw_cfg_field_done(c, old);
    return rc;
}

static int gw_cfg_backends(gw_cfg_ctx_t *c, int ut, gw_upstream_cfg_t *u)
{
    lua_State *L = c->L;
    size_t old = gw_cfg_field(c, ut, "backends");
    int rc = 0;
    bool registration = c->cfg->registration.enabled;
    if (lua_type(L, -1) == LUA_TNIL) {
        if (!registration)
            rc = gw_cfg_fail(c, "required (or turn on `registration` to add backends at run time)");
        goto done;
    }
    int bt = lua_gettop(L);
    long n = gw_cfg_check_array(c, bt);
    if (n == 0 && !registration)
        gw_cfg_fail(c, "must not be empty (or turn on `registration` to add backends at run time)");
    if (n < 0 || (n == 0 && !registration)) {
        rc = -1;
        goto done;
    }
    if ((uint64_t)n + c->cfg->registration.max_backends > GW_MAX_UPSTREAM_BACKENDS) {
        rc = gw_cfg_fail(c, "at most %d backends per upstream, registration.max_backends included",
                         GW_MAX_UPSTREAM_BACKENDS);
        goto done;
    }
    u->backends = gw_cfg_xcalloc((size_t)n ? (size_t)n : 1, sizeof(gw_backend_cfg_t));
    u->nbackends = (size_t)n;
    for (long i = 1; i <= n && rc == 0; i++) {
        size_t o2 = gw_cfg_push_index(c, i);
        lua_rawgeti(L, bt, (int)i);
        rc = gw_cfg_backend(c, lua_gettop(L), &u->backends[i - 1]);
        for (long j = 1; j < i && rc == 0; j++) {
            if (strcmp(u->backends[j - 1].url, u->backends[i - 1].url) == 0)
                rc = gw_cfg_fail(c, "duplicate backend \"%s\" (same as backends[%ld])",
                                 u->backends[i - 1].url, j);
        }
        lua_pop(L, 1);
        gw_cfg_pop(c, o2);
    }
done:
    gw_cfg_field_done(c, old);
    return rc;
}

/* The active-check keys of an upstream's `health` table (at ht). */
static int gw_cfg_health_checks(gw_cfg_ctx_t *c, int ht, gw_health_cfg_t *h)
{
    size_t old = gw_cfg_field(c, ht, "path");
    const char *path = NULL;
    int rc = gw_cfg_plain_string(c, &path);
    if (rc == 0 && path != NULL && path[0] != '/')
        rc = gw_cfg_fail(c, "must start with \"/\"");
    for (size_t i = 0; rc == 0 && path != NULL && path[i]; i++)
        if (path[i] == ' ' || path[i] == '#')
            rc = gw_cfg_fail(c, "must not contain spaces or '#'");
    if (rc == 0 && path != NULL)
        h->path = gw_cfg_xstrdup(path);
    gw_cfg_field_done(c, old);
    if (rc == 0)
        rc = gw_cfg_u32_field(c, ht, "interval_ms", 10, &h->interval_ms);
    if (rc == 0 && h->timeout_ms > h->interval_ms)
        h->timeout_ms = h->interval_ms; /* the default follows a short interval */
    if (rc == 0)
        rc = gw_cfg_u32_field(c, ht, "timeout_ms", 1, &h->timeout_ms);
    if (rc == 0)
        rc = gw_cfg_u32_field(c, ht, "healthy_threshold", 1, &h->healthy_threshold);
    if (rc == 0)
        rc = gw_cfg_u32_field(c, ht, "unhealthy_threshold", 1, &h->unhealthy_threshold);
    if (rc == 0 && h->timeout_ms > h->interval_ms) {
        old = gw_cfg_field(c, ht, "timeout_ms");
        rc = gw_cfg_fail(c, "must not be more than interval_ms (%u)", h->interval_ms);
        gw_cfg_field_done(c, old);
    }
    if (rc == 0 && h->path == NULL) {
        /* The check keys mean nothing without a path: say so rather than ignore them. */
        static const char *const needs_path[] = {"interval_ms", "timeout_ms", "healthy_threshold",
                                                 "unhealthy_threshold"};
        for (size_t i = 0; rc == 0 && i < GW_ARRAY_LEN(needs_path); i++) {
            old = gw_cfg_field(c, ht, needs_path[i]);
            if (lua_type(c->L, -1) != LUA_TNIL)
                rc = gw_cfg_fail(c, "active checks need health.path");
            gw_cfg_field_done(c, old);
        }
    }
    return rc;
}

static int gw_cfg_upstream(gw_cfg_ctx_t *c, int ut, gw_upstream_cfg_t *u)
{
    static const char *const keys[] = {
        "backends",  "strategy", "fallback_strategy", "timeouts", "retries",
        "keepalive", "health",   "prequal",           "hedge",    NULL};
    static const char *const hkeys[] = {"max_fails",   "eject_ms",          "max_eject_ms",
                                        "max_ejected_percent", "path",  "interval_ms",
                                        "timeout_ms",  "healthy_threshold", "unhealthy_threshold",
                                        NULL};
    static const char *const tkeys[] = {"connect_ms", "read_ms", "send_ms", NULL};
    static const char *const rkeys[] = {"max", "backoff_ms", NULL};
    static const char *const kkeys[] = {"max_idle", "idle_timeout_ms", NULL};
    lua_State *L = c->L;
    if (lua_type(L, ut) != LUA_TTABLE)
        return gw_cfg_fail(c, "expected table, got %s", gw_cfg_typename(c, ut));
    if (gw_cfg_check_keys(c, ut, keys) < 0)
        return -1;
    u->connect_timeout_ms = 1000;
    u->read_timeout_ms = 30000;
    u->send_timeout_ms = 30000;
    u->retries_max = 2;
    u->retry_backoff_ms = 0;
    u->keepalive_max_idle = 64;
    u->keepalive_idle_ms = 60000;
    u->health.max_fails = 3;
    u->health.eject_ms = 1000;
    u->health.max_eject_ms = 30000;
    u->health.max_ejected_percent = 50;
    u->health.interval_ms = 2000;
    u->health.timeout_ms = 500;
    u->health.healthy_threshold = 2;
    u->health.unhealthy_threshold = 3;
    if (gw_cfg_backends(c, ut, u) < 0 || gw_cfg_strategy(c, ut, u) < 0 ||
        gw_cfg_prequal(c, ut, u) < 0 || gw_cfg_hedge(c, ut, u) < 0)
        return -1;

    size_t old = gw_cfg_field(c, ut, "timeouts");
    int rc = gw_cfg_record(c, tkeys);
    if (rc > 0) {
        int tt = lua_gettop(L);
        rc = gw_cfg_u32_field(c, tt, "connect_ms", 1, &u->connect_timeout_ms);
        if (rc == 0)
            rc = gw_cfg_u32_field(c, tt, "read_ms", 1, &u->read_timeout_ms);
        if (rc == 0)
            rc = gw_cfg_u32_field(c, tt, "send_ms", 1, &u->send_timeout_ms);
    }
    gw_cfg_field_done(c, old);
    if (rc < 0)
        return -1;
    if (u->hedge.after_ms >= u->read_timeout_ms) {
        /* The read timeout would always come first: the hedge could never be sent. */
        old = gw_cfg_field(c, ut, "hedge");
        size_t o2 = gw_cfg_field(c, lua_gettop(L), "after_ms");
        gw_cfg_fail(c, "must be below timeouts.read_ms (%u)", u->read_timeout_ms);
        gw_cfg_field_done(c, o2);
        gw_cfg_field_done(c, old);
        return -1;
    }

    old = gw_cfg_field(c, ut, "retries");
    rc = gw_cfg_record(c, rkeys);
    if (rc > 0) {
        int rt = lua_gettop(L);
        size_t o2 = gw_cfg_field(c, rt, "max");
        uint64_t v = u->retries_max;
        rc = gw_cfg_uint(c, 0, 10, &v);
        u->retries_max = (uint32_t)v;
        gw_cfg_field_done(c, o2);
        if (rc == 0)
            rc = gw_cfg_u32_field(c, rt, "backoff_ms", 0, &u->retry_backoff_ms);
    }
    gw_cfg_field_done(c, old);
    if (rc < 0)
        return -1;

    old = gw_cfg_field(c, ut, "keepalive");
    rc = gw_cfg_record(c, kkeys);
    if (rc > 0) {
        int kt = lua_gettop(L);
        rc = gw_cfg_u32_field(c, kt, "max_idle", 0, &u->keepalive_max_idle);
        if (rc == 0)
            rc = gw_cfg_u32_field(c, kt, "idle_timeout_ms", 1, &u->keepalive_idle_ms);
    }
    gw_cfg_field_done(c, old);
    if (rc < 0)
        return -1;

    old = gw_cfg_field(c, ut, "health");
    rc = gw_cfg_record(c, hkeys);
    if (rc > 0) {
        int ht = lua_gettop(L);
        rc = gw_cfg_u32_field(c, ht, "max_fails", 0, &u->health.max_fails);
        if (rc == 0)
            rc = gw_cfg_u32_field(c, ht, "eject_ms", 1, &u->health.eject_ms);
        if (rc == 0)
            rc = gw_cfg_u32_field(c, ht, "max_eject_ms", 1, &u->health.max_eject_ms);
        if (rc == 0) {
            size_t o2 = gw_cfg_field(c, ht, "max_ejected_percent");
            uint64_t v = u->health.max_ejected_percent;
            rc = gw_cfg_uint(c, 0, 100, &v);
            u->health.max_ejected_percent = (uint32_t)v;
            gw_cfg_field_done(c, o2);
        }
        if (rc == 0 && u->health.max_eject_ms < u->health.eject_ms) {
            size_t o2 = gw_cfg_field(c, ht, "max_eject_ms");
            rc = gw_cfg_fail(c, "must not be less than eject_ms (%u)", u->health.eject_ms);
            gw_cfg_field_done(c, o2);
        }
        if (rc == 0)
            rc = gw_cfg_health_checks(c, ht, &u->health);
    }
    gw_cfg_field_done(c, old);
    return rc < 0 ? -1 : 0;
}

static int gw_cfg_upstream_cmp(const void *a, const void *b)
{
    return strcmp(((const gw_upstream_cfg_t *)a)->name, ((const gw_upstream_cfg_t *)b)->name);
}

static bool gw_cfg_valid_upstream_name(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++) {
        if (!(isalnum((unsigned char)*s) || *s == '_' || *s == '-' || *s == '.'))
            return false;
    }
    return true;
}

static int gw_cfg_upstreams(gw_cfg_ctx_t *c, int t)
{
    lua_State *L = c->L;
    gw_config_t *cfg = c->cfg;
    size_t old = gw_cfg_field(c, t, "upstreams");
    int rc = 0, type = lua_type(L, -1);
    if (type == LUA_TNIL)
        goto done;
    if (type != LUA_TTABLE) {
        rc = gw_cfg_fail(c, "expected table, got %s", lua_typename(L, type));
        goto done;
    }
    int ut = lua_gettop(L);
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, ut) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            size_t o2 = gw_cfg_push_other_key(c, -1);
            lua_pop(L, 1);
            rc = gw_cfg_fail(c, "upstream names must be strings");
            gw_cfg_pop(c, o2);
            goto done;
        }
        n++;
    }
    /* Iterate in name order so that the array and every gindex are deterministic. */
    cfg->upstreams = gw_cfg_xcalloc(n, sizeof(gw_upstream_cfg_t));
    cfg->nupstreams = n;
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, ut) != 0) {
        lua_pop(L, 1);
        cfg->upstreams[i++].name = gw_cfg_xstrdup(lua_tostring(L, -1));
    }
    qsort(cfg->upstreams, n, sizeof(gw_upstream_cfg_t), gw_cfg_upstream_cmp);
    uint32_t gindex = 0;
    for (i = 0; i < n && rc == 0; i++) {
        gw_upstream_cfg_t *u = &cfg->upstreams[i];
        size_t o2 = gw_cfg_field(c, ut, u->name);
        if (!gw_cfg_valid_upstream_name(u->name))
            rc = gw_cfg_fail(c, "upstream names may contain only letters, digits, '_', '-' and "
                                "'.'");
        else
            rc = gw_cfg_upstream(c, lua_gettop(L), u);
        u->gindex0 = gindex;
        u->nslots = (uint32_t)u->nbackends + cfg->registration.max_backends;
        for (size_t b = 0; rc == 0 && b < u->nbackends; b++)
            u->backends[b].gindex = gindex + (uint32_t)b;
        gindex += u->nslots;
        gw_cfg_field_done(c, o2);
    }
    cfg->nbackends_total = gindex;
done:
    gw_cfg_field_done(c, old);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Routes. */

static int gw_cfg_method_id(const char *name)
{
    static const struct {
        const char *name;
        int id;
    } methods[] = {
#define GW_CFG_METHOD(num, name, string) {#string, num},
        HTTP_METHOD_MAP(GW_CFG_METHOD)
#undef GW_CFG_METHOD
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(methods); i++) {
        if (strcmp(methods[i].name, name) == 0)
            return methods[i].id;
    }
    return -1;
}

/* A path for prefix matching or prepending: starts with '/', no spaces, controls, '?' or '#'. */
static int gw_cfg_path_string(gw_cfg_ctx_t *c, int t, const char *key, char **out)
{
    size_t old = gw_cfg_field(c, t, key);
    const char *s = NULL;
    size_t len = 0;
    int rc = gw_cfg_string(c, &s, &len);
    if (rc == 0 && s != NULL) {
        if (s[0] != '/')
            rc = gw_cfg_fail(c, "must start with \"/\"");
        for (size_t i = 0; i < len && rc == 0; i++) {
            unsigned char ch = (unsigned char)s[i];
            if (ch <= 0x20 || ch == 0x7f || ch == '?' || ch == '#')
                rc = gw_cfg_fail(c, "must not contain spaces, control characters, '?' or '#'");
        }
        if (rc == 0)
            *out = gw_cfg_xstrndup(s, len);
    }
    gw_cfg_field_done(c, old);
    return rc;
}

/* match.host: a bare host name (no port), optionally "*.suffix"; stored lower-case without a
 * trailing dot, which is how the router normalises the request's Host. */
static int gw_cfg_match_host(gw_cfg_ctx_t *c, int mt, gw_route_cfg_t *r)
{
    size_t old = gw_cfg_field(c, mt, "host");
    const char *s = NULL;
    int rc = gw_cfg_plain_string(c, &s);
    if (rc == 0 && s != NULL) {
        size_t len = strlen(s);
        const char *name = s;
        if (len >= 2 && s[0] == '*' && s[1] == '.')
            name = s + 2;
        if (len > 0 && s[len - 1] == '.')
            len--;
        bool ok = name < s + len;
        if (ok && name[0] == '[') {
            ok = s[len - 1] == ']' && name == s;
            for (const char *p = name + 1; ok && p < s + len - 1; p++)
                ok = isxdigit((unsigned char)*p) || *p == ':' || *p == '.';
        } else {
            for (const char *p = name; ok && p < s + len; p++)
                ok = isalnum((unsigned char)*p) || *p == '-' || *p == '.' || *p == '_';
        }
        if (!ok)
            rc = gw_cfg_fail(c,
                             "invalid host \"%s\" (expected a host name without a port, "
                             "optionally starting with \"*.\")",
                             s);
        else {
            r->host = gw_cfg_xstrndup(s, len);
            gw_cfg_lower(r->host);
        }
    }
    gw_cfg_field_done(c, old);
    return rc;
}

static int gw_cfg_match_methods(gw_cfg_ctx_t *c, int mt, gw_route_cfg_t *r)
{
    lua_State *L = c->L;
    size_t old = gw_cfg_field(c, mt, "methods");
    int rc = 0;
    if (lua_type(L, -1) == LUA_TNIL)
        goto done;
    int at = lua_gettop(L);
    long n = gw_cfg_check_array(c, at);
    if (n == 0)
        gw_cfg_fail(c, "must not be empty (leave it out to match every method)");
    if (n <= 0) {
        rc = -1;
        goto done;
    }
    for (long i = 1; i <= n && rc == 0; i++) {
        size_t o2 = gw_cfg_push_index(c, i);
        lua_rawgeti(L, at, (int)i);
        if (lua_type(L, -1) != LUA_TSTRING) {
            rc = gw_cfg_fail(c, "expected string, got %s", gw_cfg_typename(c, -1));
        } else {
            const char *m = lua_tostring(L, -1);
            int id = gw_cfg_method_id(m);
            if (id < 0 || id >= 64)
                rc = gw_cfg_fail(c, "unknown method \"%s\"", m);
            else
                r->methods |= 1ull << id;
        }
        lua_pop(L, 1);
        gw_cfg_pop(c, o2);
    }
done:
    gw_cfg_field_done(c, old);
    return rc;
}

static int gw_cfg_match(gw_cfg_ctx_t *c, int rt, gw_route_cfg_t *r)
{
    static const char *const keys[] = {"path_prefix", "host", "methods", NULL};
    size_t old = gw_cfg_field(c, rt, "match");
    int rc = gw_cfg_record(c, keys);
    if (rc > 0) {
        int mt = lua_gettop(c->L);
        rc = gw_cfg_path_string(c, mt, "path_prefix", &r->path_prefix);
        if (rc == 0)
            rc = gw_cfg_match_host(c, mt, r);
        if (rc == 0)
            rc = gw_cfg_match_methods(c, mt, r);
    }
    gw_cfg_field_done(c, old);
    return rc < 0 ? -1 : 0;
}

static int gw_cfg_respond(gw_cfg_ctx_t *c, int rt, gw_route_cfg_t *r)
{
    static const char *const keys[] = {"status", "body", "headers", NULL};
    lua_State *L = c->L;
    size_t old = gw_cfg_field(c, rt, "respond");
    int rc = gw_cfg_record(c, keys);
    if (rc <= 0)
        goto done;
    int pt = lua_gettop(L);
    gw_respond_cfg_t *resp = &r->respond;
    r->has_respond = true;

    size_t o2 = gw_cfg_field(c, pt, "status");
    uint64_t status = 200;
    rc = gw_cfg_uint(c, 100, 599, &status);
    resp->status = (int)status;
    gw_cfg_field_done(c, o2);
    if (rc < 0)
        goto done;

    o2 = gw_cfg_field(c, pt, "body");
    const char *body = "";
    size_t blen = 0;
    rc = gw_cfg_string(c, &body, &blen);
    /* These statuses never carry a body on the wire; refusing it here beats dropping it silently.
     */
    if (rc == 0 && blen > 0 && (resp->status < 200 || resp->status == 204 || resp->status == 304))
        rc = gw_cfg_fail(c, "a %d response cannot have a body", resp->status);
    if (rc == 0) {
        resp->body = gw_cfg_xstrndup(body, blen);
        resp->body_len = blen;
    }
    gw_cfg_field_done(c, o2);
    if (rc < 0)
        goto done;

    o2 = gw_cfg_field(c, pt, "headers");
    rc = gw_cfg_header_map(c, &resp->headers, &resp->nheaders);
    gw_cfg_field_done(c, o2);
done:
    gw_cfg_field_done(c, old);
    return rc < 0 ? -1 : 0;
}

/* Fails when key `key` of the route is set (non-nil): used for options meaningless on a
 * respond route. */
static int gw_cfg_upstream_only(gw_cfg_ctx_t *c, int rt, const char *key)
{
    size_t old = gw_cfg_field(c, rt, key);
    int rc = 0;
    if (lua_type(c->L, -1) != LUA_TNIL)
        rc = gw_cfg_fail(c, "only allowed on routes with an upstream");
    gw_cfg_field_done(c, old);
    return rc;
}

static const char *const gw_hook_names[GW_HOOK_COUNT] = {"on_request", "rewrite_path",
                                                         "on_response", "on_log"};

/* Reads the hook functions of table t (a route, or the global `hooks`) into a bit set. */
static int gw_cfg_hooks(gw_cfg_ctx_t *c, int t, uint8_t *mask)
{
    for (int h = 0; h < GW_HOOK_COUNT; h++) {
        size_t old = gw_cfg_field(c, t, gw_hook_names[h]);
        int type = lua_type(c->L, -1), rc = 0;
        if (type == LUA_TFUNCTION)
            *mask |= (uint8_t)GW_HOOK_BIT(h);
        else if (type != LUA_TNIL)
            rc = gw_cfg_fail(c, "expected function, got %s", lua_typename(c->L, type));
        gw_cfg_field_done(c, old);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* `lua = { on_error = "fail" | "continue" }` on a route. */
static int gw_cfg_route_lua(gw_cfg_ctx_t *c, int rt, gw_route_cfg_t *r)
{
    static const char *const keys[] = {"on_error", NULL};
    size_t old = gw_cfg_field(c, rt, "lua");
    int rc = gw_cfg_record(c, keys);
    if (rc > 0) {
        size_t o2 = gw_cfg_field(c, lua_gettop(c->L), "on_error");
        const char *v = NULL;
        rc = gw_cfg_plain_string(c, &v);
        if (rc == 0 && v) {
            if (strcmp(v, "continue") == 0)
                r->lua_fail_open = true;
            else if (strcmp(v, "fail") != 0)
                rc = gw_cfg_fail(c, "expected \"fail\" or \"continue\", got \"%s\"", v);
        }
        gw_cfg_field_done(c, o2);
    }
    gw_cfg_field_done(c, old);
    return rc < 0 ? -1 : 0;
}

/* `buffer_response = true` (1 MiB) or `{ max_bytes = N }`: on_response sees the whole body. */
static int gw_cfg_buffer_response(gw_cfg_ctx_t *c, int rt, gw_route_cfg_t *r)
{
    static const char *const keys[] = {"max_bytes", NULL};
    size_t old = gw_cfg_field(c, rt, "buffer_response");
    int rc = 0, type = lua_type(c->L, -1);
    if (type == LUA_TBOOLEAN) {
        r->buffer_response = lua_toboolean(c->L, -1) ? 1u << 20 : 0;
    } else if (type == LUA_TTABLE) {
        rc = gw_cfg_record(c, keys);
        if (rc > 0) {
            size_t o2 = gw_cfg_field(c, lua_gettop(c->L), "max_bytes");
            uint64_t v = 1u << 20;
            rc = gw_cfg_uint(c, 1, 256u << 20, &v);
            r->buffer_response = v;
            gw_cfg_field_done(c, o2);
        }
    } else if (type != LUA_TNIL) {
        rc = gw_cfg_fail(c, "expected boolean or table, got %s", lua_typename(c->L, type));
    }
    gw_cfg_field_done(c, old);
    return rc < 0 ? -1 : 0;
}

/* merge_slashes, encoded_slash and normalize_path: how the route reads the request path. A
 * path_prefix must already be in the canonical form those options give, or it could never
 * match ("/%61pi/", "//api/" or "/api;v=1/" would silently be dead routes). */
static int gw_cfg_route_paths(gw_cfg_ctx_t *c, int rt, gw_route_cfg_t *r)
{
    if (gw_cfg_bool_field(c, rt, "merge_slashes", &r->merge_slashes) < 0 ||
        gw_cfg_bool_field(c, rt, "normalize_path", &r->normalize_path) < 0)
        return -1;
    size_t old = gw_cfg_field(c, rt, "encoded_slash");
    const char *v = NULL;
    int rc = gw_cfg_plain_string(c, &v);
    if (rc == 0 && v) {
        if (strcmp(v, "decode") == 0)
            r->decode_slash = true;
        else if (strcmp(v, "reject") != 0)
            rc = gw_cfg_fail(c, "expected \"reject\" or \"decode\", got \"%s\"", v);
    }
    gw_cfg_field_done(c, old);
    if (rc < 0 || r->path_prefix == NULL)
        return rc < 0 ? -1 : 0;

    size_t plen = strlen(r->path_prefix);
    char *canon = gw_cfg_xcalloc(1, plen + 1);
    ssize_t n = gw_router_canonical_path(GW_SLICE(r->path_prefix, plen), r->merge_slashes,
                                         r->decode_slash, canon, plen);
    if (n != (ssize_t)plen || memcmp(canon, r->path_prefix, plen) != 0) {
        old = gw_cfg_push_key(c, "match");
        size_t o2 = gw_cfg_push_key(c, "path_prefix");
        if (n < 0)
            rc = gw_cfg_fail(c,
                             "\"%s\" is not a valid path (a bad %%-escape, %%00, or an encoded "
                             "slash or backslash where encoded_slash is \"reject\")",
                             r->path_prefix);
        else
            rc = gw_cfg_fail(c,
                             "\"%s\" never matches: requests are matched on their canonical "
                             "path; write \"%.*s\"",
                             r->path_prefix, (int)n, canon);
        gw_cfg_pop(c, o2);
        gw_cfg_pop(c, old);
    }
    free(canon);
    return rc < 0 ? -1 : 0;
}

static int gw_cfg_route(gw_cfg_ctx_t *c, int rt, gw_route_cfg_t *r, long index)
{
    static const char *const keys[] = {
        "name",       "match",         "upstream",        "respond",          "strip_prefix",
        "add_prefix", "preserve_host", "request_headers", "response_headers", "on_request",
        "rewrite_path", "on_response", "on_log",          "lua",              "buffer_response",
        "merge_slashes", "encoded_slash", "normalize_path", NULL};
    lua_State *L = c->L;
    const gw_linemap_entry_t *e = gw_linemap_find(&c->lines, c->path, c->plen);
    r->line = e != NULL ? e->line : 0;
    r->upstream = -1;
    r->merge_slashes = true;
    if (lua_type(L, rt) != LUA_TTABLE)
        return gw_cfg_fail(c, "expected table, got %s", gw_cfg_typename(c, rt));
    if (gw_cfg_check_keys(c, rt, keys) < 0)
        return -1;

    size_t old = gw_cfg_field(c, rt, "name");
    const char *name = NULL;
    int rc = gw_cfg_plain_string(c, &name);
    if (rc == 0) {
        /* A table of the names so far keeps the check linear in the number of routes. */
        r->name = name ? gw_cfg_xstrdup(name) : gw_cfg_xasprintf("routes[%ld]", index);
        lua_pushstring(L, r->name);
        lua_rawget(L, c->route_names);
        if (lua_type(L, -1) == LUA_TNUMBER)
            rc = gw_cfg_fail(c, "duplicate route name \"%s\" (same as routes[%ld])", r->name,
                             (long)lua_tointeger(L, -1));
        lua_pop(L, 1);
        lua_pushstring(L, r->name);
        lua_pushinteger(L, index);
        lua_rawset(L, c->route_names);
    }
    gw_cfg_field_done(c, old);
    if (rc < 0 || gw_cfg_match(c, rt, r) < 0)
        return -1;

    lua_pushstring(L, "upstream");
    lua_rawget(L, rt);
    lua_pushstring(L, "respond");
    lua_rawget(L, rt);
    bool has_upstream = !lua_isnil(L, -2), has_respond = !lua_isnil(L, -1);
    lua_pop(L, 2);
    if (has_upstream && has_respond)
        return gw_cfg_fail(c, "upstream and respond are mutually exclusive");
    if (!has_upstream && !has_respond)
        return gw_cfg_fail(c, "one of upstream or respond is required");

    if (has_upstream) {
        old = gw_cfg_field(c, rt, "upstream");
        const char *u = NULL;
        rc = gw_cfg_plain_string(c, &u);
        if (rc == 0) {
            r->upstream = gw_config_upstream_index(c->cfg, u);
            if (r->upstream < 0)
                rc = gw_cfg_fail(c, "unknown upstream \"%s\"", u);
        }
        gw_cfg_field_done(c, old);
        if (rc < 0)
            return -1;
    } else {
        if (gw_cfg_respond(c, rt, r) < 0)
            return -1;
        static const char *const upstream_only[] = {"strip_prefix", "add_prefix", "preserve_host",
                                                    "request_headers", "normalize_path"};
        for (size_t i = 0; i < GW_ARRAY_LEN(upstream_only); i++) {
            if (gw_cfg_upstream_only(c, rt, upstream_only[i]) < 0)
                return -1;
        }
    }

    if (gw_cfg_route_paths(c, rt, r) < 0 ||
        gw_cfg_bool_field(c, rt, "strip_prefix", &r->strip_prefix) < 0)
        return -1;
    if (r->strip_prefix && r->path_prefix == NULL) {
        old = gw_cfg_push_key(c, "strip_prefix");
        gw_cfg_fail(c, "requires match.path_prefix");
        gw_cfg_pop(c, old);
        return -1;
    }
    if (gw_cfg_path_string(c, rt, "add_prefix", &r->add_prefix) < 0 ||
        gw_cfg_bool_field(c, rt, "preserve_host", &r->preserve_host) < 0 ||
        gw_cfg_header_ops(c, rt, "request_headers", &r->request_headers) < 0 ||
        gw_cfg_header_ops(c, rt, "response_headers", &r->response_headers) < 0 ||
        gw_cfg_hooks(c, rt, &r->hooks) < 0 || gw_cfg_route_lua(c, rt, r) < 0 ||
        gw_cfg_buffer_response(c, rt, r) < 0)
        return -1;
    if (r->hooks)
        c->cfg->uses_lua = true;
    return 0;
}

static int gw_cfg_routes(gw_cfg_ctx_t *c, int t)
{
    lua_State *L = c->L;
    size_t old = gw_cfg_field(c, t, "routes");
    int rc = 0;
    if (lua_type(L, -1) == LUA_TNIL) {
        rc = gw_cfg_fail(c, "required");
        goto done;
    }
    int at = lua_gettop(L);
    long n = gw_cfg_check_array(c, at);
    if (n == 0)
        gw_cfg_fail(c, "must not be empty");
    if (n <= 0) {
        rc = -1;
        goto done;
    }
    c->cfg->routes = gw_cfg_xcalloc((size_t)n, sizeof(gw_route_cfg_t));
    c->cfg->nroutes = (size_t)n;
    lua_createtable(L, 0, (int)GW_MIN(n, 1L << 20));
    c->route_names = lua_gettop(L);
    for (long i = 1; i <= n && rc == 0; i++) {
        size_t o2 = gw_cfg_push_index(c, i);
        lua_rawgeti(L, at, (int)i);
        rc = gw_cfg_route(c, lua_gettop(L), &c->cfg->routes[i - 1], i);
        lua_pop(L, 1);
        gw_cfg_pop(c, o2);
    }
    lua_pop(L, 1);
done:
    gw_cfg_field_done(c, old);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Running the file. */

static int gw_cfg_traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static void gw_cfg_add_path(luaL_Buffer *b, const char *dir)
{
    luaL_addstring(b, dir);
    luaL_addstring(b, "/?.lua;");
    luaL_addstring(b, dir);
    luaL_addstring(b, "/?/init.lua;");
}

/* `registration = { allow, ttl_ms, max_backends, upstream }` (ARCHITECTURE.md §8). Read before the
 * upstreams (it decides whether they may start empty); `upstream` is checked after them. */
static int gw_cfg_registration(gw_cfg_ctx_t *c, int t)
{
    static const char *const keys[] = {"allow", "ttl_ms", "max_backends", "upstream", NULL};
    lua_State *L = c->L;
    gw_registration_cfg_t *r = &c->cfg->registration;
    r->upstream = -1;
    size_t old = gw_cfg_field(c, t, "registration");
    int type = lua_type(L, -1);
    int rc = 0;
    if (type == LUA_TBOOLEAN && !lua_toboolean(L, -1))
        goto done;
    rc = gw_cfg_record(c, keys);
    if (rc <= 0)
        goto done;
    rc = 0;
    int rt = lua_gettop(L);
    r->enabled = true;
    r->ttl_ms = 30000;
    r->max_backends = 64;
    size_t o2 = gw_cfg_field(c, rt, "allow");
    if (lua_type(L, -1) == LUA_TNIL) {
        rc = gw_cfg_fail(c, "required: the address ranges registered backends may be in, e.g. "
                            "{ \"10.0.0.0/8\" }");
    } else {
        int at = lua_gettop(L);
        long n = gw_cfg_check_array(c, at);
        if (n == 0)
            rc = gw_cfg_fail(c, "must not be empty");
        else if (n < 0)
            rc = -1;
        else
            r->allow = gw_cfg_xcalloc((size_t)n, sizeof(gw_cidr_t));
        for (long i = 1; rc == 0 && i <= n; i++) {
            size_t o3 = gw_cfg_push_index(c, i);
            lua_rawgeti(L, at, (int)i);
            const char *text = NULL;
            rc = gw_cfg_plain_string(c, &text);
            if (rc == 0 && text == NULL)
                rc = gw_cfg_fail(c, "expected string, got nil");
            if (rc == 0 && !gw_cidr_parse(text, &r->allow[i - 1]))
                rc = gw_cfg_fail(c, "\"%s\": expected an address range such as \"10.0.0.0/8\" or "
                                    "\"fd00::/8\" (no host bits after the prefix)", text);
            if (rc == 0)
                r->nallow++;
            lua_pop(L, 1);
            gw_cfg_pop(c, o3);
        }
    }
    gw_cfg_field_done(c, o2);
    if (rc == 0)
        rc = gw_cfg_u32_field(c, rt, "ttl_ms", 0, &r->ttl_ms);
    if (rc == 0) {
        o2 = gw_cfg_field(c, rt, "max_backends");
        uint64_t v = r->max_backends;
        rc = gw_cfg_uint(c, 1, GW_MAX_UPSTREAM_BACKENDS, &v);
        r->max_backends = (uint32_t)v;
        gw_cfg_field_done(c, o2);
    }
done:
    gw_cfg_field_done(c, old);
    return rc < 0 ? -1 : 0;
}

/* registration.upstream names an upstream; without it, a single upstream is the default. */
static int gw_cfg_registration_upstream(gw_cfg_ctx_t *c, int t)
{
    gw_config_t *cfg = c->cfg;
    if (!cfg->registration.enabled)
        return 0;
    size_t old = gw_cfg_field(c, t, "registration");
    if (!cfg->admin_enabled) {
        int rc = gw_cfg_fail(c, "needs the admin listener (admin = false turns it off)");
        gw_cfg_field_done(c, old);
        return rc;
    }
    size_t o2 = gw_cfg_field(c, lua_gettop(c->L), "upstream");
    const char *name = NULL;
    int rc = gw_cfg_plain_string(c, &name);
    if (rc == 0 && name != NULL) {
        cfg->registration.upstream = gw_config_upstream_index(cfg, name);
        if (cfg->registration.upstream < 0)
            rc = gw_cfg_fail(c, "no upstream is called \"%s\"", name);
    } else if (rc == 0 && cfg->nupstreams == 1) {
        cfg->registration.upstream = 0;
    }
    gw_cfg_field_done(c, o2);
    gw_cfg_field_done(c, old);
    return rc;
}

static int gw_cfg_build(gw_cfg_ctx_t *c, int t)
{
    gw_config_t *cfg = c->cfg;
    static const char *const keys[] = {
        "listen",    "workers", "admin", "limits",       "timeouts", "access_log", "log_level",
        "upstreams", "routes",  "hooks", "registration", "via",      NULL};
    cfg->limits = (gw_limits_t){32768, 8192, 100, 16u << 20, 16384};
    cfg->timeouts = (gw_client_timeouts_t){10000, 60000, 75000, 60000, 10000};
    cfg->log_level = GW_LOG_INFO;
    if (gw_cfg_check_keys(c, t, keys) < 0 || gw_cfg_listen(c, t) < 0 || gw_cfg_workers(c, t) < 0 ||
        gw_cfg_admin(c, t) < 0 || gw_cfg_limits(c, t) < 0 || gw_cfg_timeouts(c, t) < 0 ||
        gw_cfg_access_log(c, t) < 0 || gw_cfg_log_level(c, t) < 0 || gw_cfg_via(c, t) < 0 ||
        gw_cfg_registration(c, t) < 0 || gw_cfg_upstreams(c, t) < 0 ||
        gw_cfg_registration_upstream(c, t) < 0 || gw_cfg_routes(c, t) < 0)
        return -1;
    static const char *const hkeys[] = {"on_request",  "rewrite_path", "on_response", "on_log",
                                        "on_register", "on_unregister", NULL};
    size_t old = gw_cfg_field(c, t, "hooks");
    int rc = gw_cfg_record(c, hkeys);
    if (rc > 0)
        rc = gw_cfg_hooks(c, lua_gettop(c->L), &cfg->global_hooks);
    if (rc == 0 && lua_type(c->L, -1) == LUA_TTABLE) {
        static const char *const mnames[] = {"on_register", "on_unregister"};
        int ht = lua_gettop(c->L);
        for (int i = 0; i < 2 && rc == 0; i++) {
            size_t o2 = gw_cfg_field(c, ht, mnames[i]);
            int type = lua_type(c->L, -1);
            if (type == LUA_TFUNCTION)
                cfg->membership_hooks |= (uint8_t)(i == 0 ? GW_MHOOK_ON_REGISTER : GW_MHOOK_ON_UNREGISTER);
            else if (type != LUA_TNIL)
                rc = gw_cfg_fail(c, "expected function, got %s", lua_typename(c->L, type));
            gw_cfg_field_done(c, o2);
        }
    }
    gw_cfg_field_done(c, old);
    if (rc < 0)
        return -1;
    if (cfg->global_hooks)
        cfg->uses_lua = true;
    return 0;
}

/* Runs inside lua_cpcall: any Lua error raised here (only out-of-memory is possible, since every
 * table access is raw) is caught by the caller. */
static int gw_cfg_run(lua_State *L)
{
    gw_cfg_ctx_t *c = lua_touserdata(L, 1);
    lua_settop(L, 0);
    luaL_checkstack(L, 64, "config validation");
    luaL_openlibs(L);
    gw_lua_guard_sandbox(L);

    /* package.path: the config's own directory, then lua_dir, then the default. */
    char *dir = gw_cfg_xstrdup(c->chunk);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        strcpy(dir, ".");
    else if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    lua_getglobal(L, "package");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    gw_cfg_add_path(&b, strcmp(dir, "/") == 0 ? "" : dir);
    free(dir);
    if (c->lua_dir != NULL)
        gw_cfg_add_path(&b, c->lua_dir);
    lua_getfield(L, 1, "path");
    luaL_addvalue(&b);
    luaL_pushresult(&b);
    lua_setfield(L, 1, "path");
    lua_settop(L, 0);

    /* The gw API, as the workers have it, so a config (or a module it requires) may refer to
     * it while loading. Its FFI functions are only resolved when called, which validation never
     * does; without lua_dir (unit tests) there is no gw. */
    if (c->lua_dir != NULL) {
        if (gw_lua_load_api(L, c->lua_dir) == 0)
            lua_setglobal(L, "gw");
        lua_settop(L, 0);
    }

    lua_pushcfunction(L, gw_cfg_traceback);
    char *chunkname = gw_cfg_xasprintf("@%s", c->chunk);
    const char *src = c->src;
    size_t len = c->srclen;
    if (len > 0 && src[0] == '#') {
        /* Like luaL_loadfile: drop a shebang line but keep its newline for line numbers. */
        size_t skip = strcspn(src, "\n");
        src += skip;
        len -= skip;
    }
    int rc = luaL_loadbuffer(L, src, len, chunkname);
    free(chunkname);
    if (rc == 0)
        rc = gw_lua_guard_pcall(L, 0, 1, 1, &c->limits, c->chunk);
    if (rc != 0) {
        const char *msg = lua_tostring(L, -1);
        c->err = gw_cfg_xstrdup(msg ? msg : "unknown Lua error");
        return 0;
    }
    if (lua_type(L, -1) != LUA_TTABLE) {
        gw_cfg_fail(c, "the config must return a table, got %s", gw_cfg_typename(c, -1));
        return 0;
    }
    gw_cfg_build(c, lua_gettop(L));
    return 0;
}

static gw_config_t *gw_cfg_load(const char *chunk, const char *src, size_t len, const char *lua_dir,
                                const gw_lua_limits_t *limits, char **err)
{
    gw_cfg_ctx_t c;
    memset(&c, 0, sizeof(c));
    c.chunk = chunk;
    c.src = src;
    c.srclen = len;
    c.lua_dir = lua_dir;
    c.limits = limits != NULL ? *limits : GW_LUA_LIMITS_DEFAULT;
    c.cfg = gw_cfg_xcalloc(1, sizeof(gw_config_t));
    c.cfg->path = gw_cfg_xstrdup(chunk);
    c.cfg->lua_limits = c.limits;
    gw_cfgscan(src, len, &c.lines);

    c.L = luaL_newstate();
    if (c.L == NULL) {
        c.err = gw_cfg_xstrdup("cannot create a Lua state (out of memory)");
        goto out;
    }
    if (lua_cpcall(c.L, gw_cfg_run, &c) != 0 && c.err == NULL) {
        const char *msg = lua_tostring(c.L, -1);
        c.err = gw_cfg_xasprintf("%s: %s", chunk, msg ? msg : "Lua error");
    }
out:
    if (c.L != NULL)
        lua_close(c.L);
    gw_linemap_free(&c.lines);
    if (c.err != NULL) {
        gw_config_free(c.cfg);
        if (err != NULL)
            *err = c.err;
        else
            free(c.err);
        return NULL;
    }
    return c.cfg;
}

gw_config_t *gw_config_load(const char *path, const char *lua_dir, char **err)
{
    return gw_config_load_limited(path, lua_dir, NULL, err);
}

gw_config_t *gw_config_load_limited(const char *path, const char *lua_dir,
                                    const gw_lua_limits_t *limits, char **err)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    gw_config_t *cfg = NULL;
    if (f == NULL) {
        if (err != NULL)
            *err = gw_cfg_xasprintf("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 65536;
            buf = gw_cfg_xrealloc(buf, cap);
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        if (err != NULL)
            *err = gw_cfg_xasprintf("%s: cannot read: %s", path, strerror(errno));
        goto cleanup;
    }
    cfg = gw_cfg_load(path, buf, len, lua_dir, limits, err);
cleanup:
    fclose(f);
    free(buf);
    return cfg;
}

gw_config_t *gw_config_load_string(const char *chunkname, const char *source, const char *lua_dir,
                                   char **err)
{
    if (chunkname[0] == '@' || chunkname[0] == '=')
        chunkname++;
    return gw_cfg_load(chunkname, source, strlen(source), lua_dir, NULL, err);
}

static void gw_cfg_free_header_ops(gw_header_ops_t *ops)
{
    for (size_t i = 0; i < ops->nset; i++) {
        free(ops->set[i].name);
        free(ops->set[i].value);
    }
    free(ops->set);
    for (size_t i = 0; i < ops->nremove; i++)
        free(ops->remove[i]);
    free(ops->remove);
}

void gw_config_free(gw_config_t *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->path);
    for (size_t i = 0; i < cfg->nlisten; i++)
        free(cfg->listen[i].text);
    free(cfg->listen);
    free(cfg->admin_listen.text);
    free(cfg->admin_token);
    free(cfg->registration.allow);
    free(cfg->access_log);
    free(cfg->via);
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        gw_upstream_cfg_t *u = &cfg->upstreams[i];
        free(u->name);
        free(u->strategy);
        free(u->probe_path);
        free(u->health.path);
        free(u->fallback_strategy);
        for (size_t b = 0; b < u->nbackends; b++) {
            free(u->backends[b].url);
            free(u->backends[b].authority);
        }
        free(u->backends);
    }
    free(cfg->upstreams);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        gw_route_cfg_t *r = &cfg->routes[i];
        free(r->name);
        free(r->path_prefix);
        free(r->host);
        free(r->add_prefix);
        gw_cfg_free_header_ops(&r->request_headers);
        gw_cfg_free_header_ops(&r->response_headers);
        free(r->respond.body);
        for (size_t h = 0; h < r->respond.nheaders; h++) {
            free(r->respond.headers[h].name);
            free(r->respond.headers[h].value);
        }
        free(r->respond.headers);
    }
    free(cfg->routes);
    free(cfg);
}

int gw_config_upstream_index(const gw_config_t *cfg, const char *name)
{
    /* The upstreams are sorted by name (gw_cfg_upstreams): every route looks its upstream up. */
    size_t lo = 0, hi = cfg->nupstreams;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int rc = strcmp(cfg->upstreams[mid].name, name);
        if (rc == 0)
            return (int)mid;
        if (rc < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}
