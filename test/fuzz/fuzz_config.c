/*
 * Fuzzes the config validator (core/config.c) with generated gateway.lua files: the input drives
 * a small grammar-driven generator that writes `return { ... }` following the shape of a real
 * config (its key set per table, values of the expected kind: numbers at the edges, addresses,
 * URLs, paths, names, functions) and now and then a value of another type, a key that does not
 * belong, a key made of input bytes or an array item in a record; entries are separated by
 * commas or semicolons, with comments and long strings between them, so the loader's own source
 * scanner (which maps key paths to line numbers) sees them too. Each
 * source is loaded in-process with gw_config_load_string, which opens and closes its Lua state per
 * call (a state left open would show as growing memory, which libFuzzer's -rss_limit_mb turns
 * into a failure). The generated source never loops, so it always finishes.
 *
 * Host names are never resolved: the link wraps getaddrinfo (CMakeLists.txt) so only numeric
 * hosts and "localhost" resolve, and a fuzzer cannot send queries to a DNS server.
 *
 * PGW_FUZZ_PRINT=1 in the environment prints each generated source and its outcome.
 *
 * Checks: a config either loads (and is freed) or fails with a message that names the file and
 * a line of it, as an operator needs.
 */
#include <netdb.h>
#include <string.h>

#include "common.h"
#include "config.h"
#include "fuzz.h"

int __real_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                       struct addrinfo **res);

int __wrap_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                       struct addrinfo **res)
{
    struct addrinfo h = hints ? *hints : (struct addrinfo){0};
    if (node && strcmp(node, "localhost") != 0)
        h.ai_flags |= AI_NUMERICHOST;
    return __real_getaddrinfo(node, service, &h, res);
}

#define SRC_MAX 16384

typedef struct gen {
    gw_fuzz_in_t in;
    char out[SRC_MAX];
    size_t len;
    int nodes; /* values left to write: keeps a config small */
} gen_t;

/* The shapes of gateway.lua (README "Configuration"; config.c checks each): what a table of
 * each kind may hold. The generator mostly follows them, so inputs reach the checks deep inside a
 * config, and sometimes writes a value of another type or a key that does not belong. */
enum kind {
    K_ANY,
    K_NUM,
    K_STR,
    K_BOOL,
    K_FN,
    K_ADDR,
    K_URL,
    K_PATH,
    K_NAME,
    K_STRATEGY_NAME,
    K_HEADER,
    K_CIDR,
    K_METHOD,
    K_LEVEL,
    /* tables */
    K_TOP,
    K_ADMIN,
    K_LIMITS,
    K_TIMEOUTS,
    K_UPSTREAMS,
    K_UPSTREAM,
    K_BACKENDS,
    K_BACKEND,
    K_STRATEGY,
    K_UTIMEOUTS,
    K_RETRIES,
    K_KEEPALIVE,
    K_HEALTH,
    K_PREQUAL,
    K_ROUTES,
    K_ROUTE,
    K_MATCH,
    K_METHODS,
    K_RESPOND,
    K_HMAP,
    K_HOPS,
    K_STRLIST,
    K_HOOKS,
    K_ROUTE_LUA,
    K_BUFFER,
    K_REG,
    K_CIDRS,
    K_LISTEN,
    K_META,
    K_TABLE,
};

typedef struct field {
    const char *key;
    enum kind kind;
} field_t;

static const field_t f_top[] = {
    {"listen", K_LISTEN},   {"workers", K_NUM},         {"admin", K_ADMIN},
    {"limits", K_LIMITS},   {"timeouts", K_TIMEOUTS},   {"access_log", K_STR},
    {"log_level", K_LEVEL}, {"upstreams", K_UPSTREAMS}, {"routes", K_ROUTES},
    {"hooks", K_HOOKS},     {"registration", K_REG},    {NULL, 0}};
static const field_t f_admin[] = {{"listen", K_ADDR}, {"token", K_STR}, {NULL, 0}};
static const field_t f_limits[] = {{"header_bytes", K_NUM}, {"uri_bytes", K_NUM},
                                   {"headers", K_NUM},      {"body_bytes", K_NUM},
                                   {"connections", K_NUM},  {NULL, 0}};
static const field_t f_timeouts[] = {{"header_ms", K_NUM},    {"body_ms", K_NUM},
                                     {"keepalive_ms", K_NUM}, {"send_ms", K_NUM},
                                     {"drain_ms", K_NUM},     {NULL, 0}};
static const field_t f_upstream[] = {
    {"backends", K_BACKENDS},  {"strategy", K_STRATEGY}, {"fallback_strategy", K_STRATEGY_NAME},
    {"timeouts", K_UTIMEOUTS}, {"retries", K_RETRIES},   {"keepalive", K_KEEPALIVE},
    {"health", K_HEALTH},      {"prequal", K_PREQUAL},   {NULL, 0}};
static const field_t f_backend[] = {{"url", K_URL}, {"weight", K_NUM}, {"meta", K_META}, {NULL, 0}};
static const field_t f_strategy[] = {
    {"name", K_STRATEGY_NAME},     {"pick", K_FN}, {"init", K_FN}, {"on_result", K_FN},
    {"on_backends_changed", K_FN}, {NULL, 0}};
static const field_t f_utimeouts[] = {
    {"connect_ms", K_NUM}, {"read_ms", K_NUM}, {"send_ms", K_NUM}, {NULL, 0}};
static const field_t f_retries[] = {{"max", K_NUM}, {"backoff_ms", K_NUM}, {NULL, 0}};
static const field_t f_keepalive[] = {{"max_idle", K_NUM}, {"idle_timeout_ms", K_NUM}, {NULL, 0}};
static const field_t f_health[] = {{"max_fails", K_NUM},
                                   {"eject_ms", K_NUM},
                                   {"max_eject_ms", K_NUM},
                                   {"max_ejected_percent", K_NUM},
                                   {"path", K_PATH},
                                   {"interval_ms", K_NUM},
                                   {"timeout_ms", K_NUM},
                                   {"healthy_threshold", K_NUM},
                                   {"unhealthy_threshold", K_NUM},
                                   {NULL, 0}};
static const field_t f_prequal[] = {{"probe_path", K_PATH},
                                    {"pool_size", K_NUM},
                                    {"max_age_ms", K_NUM},
                                    {"probes_per_request", K_NUM},
                                    {"removes_per_request", K_NUM},
                                    {"delta", K_NUM},
                                    {"max_reuse", K_NUM},
                                    {"q_rif", K_NUM},
                                    {"rif_history", K_NUM},
                                    {"probe_timeout_ms", K_NUM},
                                    {"idle_probe_ms", K_NUM},
                                    {"max_probes_in_flight", K_NUM},
                                    {NULL, 0}};
static const field_t f_route[] = {{"name", K_STR},
                                  {"match", K_MATCH},
                                  {"upstream", K_NAME},
                                  {"respond", K_RESPOND},
                                  {"strip_prefix", K_BOOL},
                                  {"add_prefix", K_PATH},
                                  {"preserve_host", K_BOOL},
                                  {"request_headers", K_HOPS},
                                  {"response_headers", K_HOPS},
                                  {"on_request", K_FN},
                                  {"rewrite_path", K_FN},
                                  {"on_response", K_FN},
                                  {"on_log", K_FN},
                                  {"lua", K_ROUTE_LUA},
                                  {"buffer_response", K_BUFFER},
                                  {NULL, 0}};
static const field_t f_match[] = {
    {"path_prefix", K_PATH}, {"host", K_STR}, {"methods", K_METHODS}, {NULL, 0}};
static const field_t f_respond[] = {
    {"status", K_NUM}, {"body", K_STR}, {"headers", K_HMAP}, {NULL, 0}};
static const field_t f_hops[] = {{"set", K_HMAP}, {"remove", K_STRLIST}, {NULL, 0}};
static const field_t f_hooks[] = {{"on_request", K_FN},
                                  {"rewrite_path", K_FN},
                                  {"on_response", K_FN},
                                  {"on_log", K_FN},
                                  {"on_register", K_FN},
                                  {"on_unregister", K_FN},
                                  {NULL, 0}};
static const field_t f_route_lua[] = {{"on_error", K_STR}, {NULL, 0}};
static const field_t f_buffer[] = {{"max_bytes", K_NUM}, {NULL, 0}};
static const field_t f_reg[] = {{"allow", K_CIDRS},
                                {"ttl_ms", K_NUM},
                                {"max_backends", K_NUM},
                                {"upstream", K_NAME},
                                {NULL, 0}};

static const char *const s_addr[] = {"127.0.0.1:8080", ":0",        "0.0.0.0:1",  "[::1]:9000",
                                     "[::1]",          "127.0.0.1", ":99999",     "8080",
                                     "localhost:80",   "[::1:80",   "127.0.0.1:", "*:80"};
static const char *const s_url[] = {
    "http://127.0.0.1:9001", "http://[::1]:9002/",   "http://localhost:80",
    "http://10.0.0.1",       "http://127.0.0.1:0",   "http://[::ffff:127.0.0.1]:1",
    "https://127.0.0.1",     "http://u@127.0.0.1:1", "http://127.0.0.1:1/x",
    "http://127.0.0.1:1?q",  "http://:80",           "http://[::1",
    "http://127.0.0.1:9001"};
static const char *const s_path[] = {"/",       "/api/",    "/api", "",  "api",
                                     "/a/../b", "/%2e%2e/", "/x?y", "//"};
static const char *const s_name[] = {"a", "b", "api", "nope", ""};
static const char *const s_strategy[] = {
    "prequal",         "round_robin",          "least_conn",  "random", "p2c", "ewma",
    "weighted_random", "weighted_round_robin", "least_score", "lua",    "nope"};
static const char *const s_header[] = {"X-Foo",    "Host", "Connection",   "content-type",
                                       "Bad Name", "",     "x-request-id", "Transfer-Encoding"};
static const char *const s_cidr[] = {"10.0.0.0/8", "::/0", "127.0.0.1/33", "127.0.0.1", "fd00::/8",
                                     "10.0.0.1/8", "x"};
static const char *const s_method[] = {"GET", "POST", "get", "CONNECT", "PURGE", "", "G T"};
static const char *const s_level[] = {"debug", "info", "warn", "error", "loud"};
static const char *const s_any[] = {
    "auto",          "stderr",      "off",          "/dev/null", "secret", "fail",      "continue",
    "*.example.com", "example.com", "EXAMPLE.com.", "\\0",       "\\n",    "\\255\\254"};

#define PICK(g, arr) ((arr)[gw_fuzz_byte(&(g)->in) % GW_ARRAY_LEN(arr)])

static void emit(gen_t *g, const char *s)
{
    size_t n = strlen(s);
    if (g->len + n < SRC_MAX) {
        memcpy(g->out + g->len, s, n);
        g->len += n;
    }
}

/* A string literal of input bytes, every byte escaped as \ddd so any byte is valid Lua. */
static void emit_input_string(gen_t *g)
{
    const uint8_t *p;
    size_t n = gw_fuzz_take(&g->in, gw_fuzz_byte(&g->in) % 24, &p);
    emit(g, "\"");
    for (size_t i = 0; i < n; i++) {
        char e[8];
        snprintf(e, sizeof e, "\\%u", p[i]);
        emit(g, e);
    }
    emit(g, "\"");
}

static void emit_string(gen_t *g, const char *s)
{
    char buf[96];
    snprintf(buf, sizeof buf, gw_fuzz_byte(&g->in) & 1 ? "[[%s]]" : "'%s'", s);
    emit(g, buf);
}

static void emit_number(gen_t *g)
{
    static const char *const edges[] = {"0",          "1",    "-1",   "2",    "65535", "65536",
                                        "2^31",       "2^32", "2^53", "2^64", "1e300", "-0",
                                        "0.5",        "1/0",  "-1/0", "0/0",  "100",   "1000000000",
                                        "0x7fffffff", "3.0",  "200",  "404",  "99",    "1000"};
    uint8_t b = gw_fuzz_byte(&g->in);
    if (b < 128) {
        char num[24];
        snprintf(num, sizeof num, "%u", (unsigned)gw_fuzz_byte(&g->in) * (b % 4 == 0 ? 1000u : 1u));
        emit(g, num);
    } else {
        emit(g, edges[b % GW_ARRAY_LEN(edges)]);
    }
}

static bool is_name(const char *s)
{
    static const char *const kw[] = {"and",   "break", "do",       "else", "elseif", "end",
                                     "false", "for",   "function", "goto", "if",     "in",
                                     "local", "nil",   "not",      "or",   "repeat", "return",
                                     "then",  "true",  "until",    "while"};
    if (!s[0] || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_'))
            return false;
    for (size_t i = 0; i < GW_ARRAY_LEN(kw); i++)
        if (strcmp(s, kw[i]) == 0)
            return false;
    return true;
}

static void emit_key(gen_t *g, const char *k)
{
    char kb[80];
    snprintf(kb, sizeof kb,
             is_name(k) && !(gw_fuzz_byte(&g->in) & 0x80) ? "%s = " : "[\"%s\"] = ", k);
    emit(g, kb);
}

static void emit_sep(gen_t *g)
{
    switch (gw_fuzz_byte(&g->in) % 8) {
    case 0:
        emit(g, ";\n");
        break;
    case 1:
        emit(g, ", -- a comment, { = ]]\n");
        break;
    case 2:
        emit(g, ", --[==[ a long\n comment } ]==]\n");
        break;
    default:
        emit(g, ",\n");
        break;
    }
}

static void emit_value(gen_t *g, enum kind k, int depth);

/* A record: fields of `fields` (sometimes one that does not belong). */
static void emit_record(gen_t *g, const field_t *fields, int depth)
{
    size_t nf = 0;
    while (fields[nf].key)
        nf++;
    emit(g, "{");
    int n = gw_fuzz_byte(&g->in) % 8;
    for (int i = 0; i < n && g->nodes > 0 && g->in.len > 0; i++) {
        uint8_t b = gw_fuzz_byte(&g->in);
        if (b == 0xff) {
            emit(g, "[");
            emit_input_string(g);
            emit(g, "] = ");
            emit_value(g, K_ANY, depth);
        } else if (b == 0xfe) {
            emit_value(g, K_ANY, depth); /* an array item in a record */
        } else {
            const field_t *f = &fields[b % nf];
            emit_key(g, f->key);
            emit_value(g, f->kind, depth);
        }
        emit_sep(g);
    }
    emit(g, "}");
}

/* An array of `item`, or (when `keyed`) a map from names to `item`. */
static void emit_list(gen_t *g, enum kind item, bool keyed, int depth)
{
    emit(g, "{");
    int n = gw_fuzz_byte(&g->in) % 5;
    for (int i = 0; i < n && g->nodes > 0 && g->in.len > 0; i++) {
        if (keyed) {
            uint8_t b = gw_fuzz_byte(&g->in);
            if (b == 0xff) {
                char k[24];
                snprintf(k, sizeof k, "[%d] = ", (int)gw_fuzz_byte(&g->in) - 2);
                emit(g, k);
            } else {
                emit_key(g, item == K_STR ? PICK(g, s_header) : PICK(g, s_name));
            }
        }
        emit_value(g, item, depth);
        emit_sep(g);
    }
    emit(g, "}");
}

static void emit_value(gen_t *g, enum kind k, int depth)
{
    g->nodes--;
    uint8_t b = gw_fuzz_byte(&g->in);
    if (b >= 240 || g->nodes <= 0 || depth > 8) {
        /* Something of another type than asked for. */
        switch (b % 7) {
        case 0:
            emit(g, b & 0x10 ? "true" : "nil");
            break;
        case 1:
            emit_number(g);
            break;
        case 2:
            emit_string(g, PICK(g, s_any));
            break;
        case 3:
            emit_input_string(g);
            break;
        case 4:
            emit(g, "function(...) return nil end");
            break;
        default:
            emit(g, "{}");
            break;
        }
        return;
    }
    switch (k) {
    case K_ANY:
        emit_value(g, (enum kind)(b % (K_TABLE + 1)), depth + 1);
        break;
    case K_NUM:
        emit_number(g);
        break;
    case K_STR:
        if (b & 1)
            emit_input_string(g);
        else
            emit_string(g, PICK(g, s_any));
        break;
    case K_BOOL:
        emit(g, b & 1 ? "true" : "false");
        break;
    case K_FN:
        emit(g, b & 1 ? "function(...) return nil end" : "function(req) return true end");
        break;
    case K_ADDR:
        emit_string(g, PICK(g, s_addr));
        break;
    case K_URL:
        emit_string(g, PICK(g, s_url));
        break;
    case K_PATH:
        emit_string(g, PICK(g, s_path));
        break;
    case K_NAME:
        emit_string(g, PICK(g, s_name));
        break;
    case K_STRATEGY_NAME:
        emit_string(g, PICK(g, s_strategy));
        break;
    case K_HEADER:
        emit_string(g, PICK(g, s_header));
        break;
    case K_CIDR:
        emit_string(g, PICK(g, s_cidr));
        break;
    case K_METHOD:
        emit_string(g, PICK(g, s_method));
        break;
    case K_LEVEL:
        emit_string(g, PICK(g, s_level));
        break;
    case K_TOP:
        emit_record(g, f_top, depth + 1);
        break;
    case K_ADMIN:
        emit_record(g, f_admin, depth + 1);
        break;
    case K_LIMITS:
        emit_record(g, f_limits, depth + 1);
        break;
    case K_TIMEOUTS:
        emit_record(g, f_timeouts, depth + 1);
        break;
    case K_UPSTREAMS:
        emit_list(g, K_UPSTREAM, true, depth + 1);
        break;
    case K_UPSTREAM:
        emit_record(g, f_upstream, depth + 1);
        break;
    case K_BACKENDS:
        emit_list(g, K_BACKEND, false, depth + 1);
        break;
    case K_BACKEND:
        if (b & 1)
            emit_string(g, PICK(g, s_url));
        else
            emit_record(g, f_backend, depth + 1);
        break;
    case K_STRATEGY:
        if (b & 1)
            emit_string(g, PICK(g, s_strategy));
        else
            emit_record(g, f_strategy, depth + 1);
        break;
    case K_UTIMEOUTS:
        emit_record(g, f_utimeouts, depth + 1);
        break;
    case K_RETRIES:
        emit_record(g, f_retries, depth + 1);
        break;
    case K_KEEPALIVE:
        emit_record(g, f_keepalive, depth + 1);
        break;
    case K_HEALTH:
        emit_record(g, f_health, depth + 1);
        break;
    case K_PREQUAL:
        emit_record(g, f_prequal, depth + 1);
        break;
    case K_ROUTES:
        emit_list(g, K_ROUTE, false, depth + 1);
        break;
    case K_ROUTE:
        emit_record(g, f_route, depth + 1);
        break;
    case K_MATCH:
        emit_record(g, f_match, depth + 1);
        break;
    case K_METHODS:
        emit_list(g, K_METHOD, false, depth + 1);
        break;
    case K_RESPOND:
        emit_record(g, f_respond, depth + 1);
        break;
    case K_HMAP:
        emit_list(g, K_STR, true, depth + 1);
        break;
    case K_HOPS:
        emit_record(g, f_hops, depth + 1);
        break;
    case K_STRLIST:
        emit_list(g, K_HEADER, false, depth + 1);
        break;
    case K_HOOKS:
        emit_record(g, f_hooks, depth + 1);
        break;
    case K_ROUTE_LUA:
        emit_record(g, f_route_lua, depth + 1);
        break;
    case K_BUFFER:
        if (b & 1)
            emit(g, b & 2 ? "true" : "false");
        else
            emit_record(g, f_buffer, depth + 1);
        break;
    case K_REG:
        if (b & 1)
            emit(g, b & 2 ? "true" : "false");
        else
            emit_record(g, f_reg, depth + 1);
        break;
    case K_CIDRS:
        emit_list(g, K_CIDR, false, depth + 1);
        break;
    case K_LISTEN:
        if (b & 1)
            emit_string(g, PICK(g, s_addr));
        else
            emit_list(g, K_ADDR, false, depth + 1);
        break;
    case K_META:
        emit_list(g, K_STR, true, depth + 1);
        break;
    case K_TABLE:
        emit_list(g, K_ANY, b & 1, depth + 1);
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static gen_t g;
    g.in = (gw_fuzz_in_t){data, size};
    g.len = 0;
    g.nodes = 200;
    emit(&g, "-- generated\nreturn ");
    emit_record(&g, f_top, 0);
    emit(&g, "\n");
    g.out[g.len] = '\0';

    if (getenv("PGW_FUZZ_PRINT"))
        fprintf(stderr, "---\n%s", g.out);
    size_t lines = 0;
    for (size_t i = 0; i < g.len; i++)
        lines += g.out[i] == '\n';
    char *err = NULL;
    gw_config_t *cfg = gw_config_load_string("fuzz.lua", g.out, NULL, &err);
    if (getenv("PGW_FUZZ_PRINT"))
        fprintf(stderr, "=> %s\n", cfg ? "loaded" : err);
    if (cfg) {
        GW_FUZZ_CHECK(err == NULL);
        gw_config_free(cfg);
        return 0;
    }
    GW_FUZZ_CHECK(err != NULL);
    int line = -1;
    if (sscanf(err, "fuzz.lua:%d:", &line) != 1 || line < 1 || (size_t)line > lines) {
        fprintf(stderr, "source:\n%s\nerror: %s\n", g.out, err);
        GW_FUZZ_CHECK(!"the error names fuzz.lua and a line of it");
    }
    free(err);
    return 0;
}
