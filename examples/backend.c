/*
 * pgw-backend: the example backend for prequal-gw.
 *
 * A small, single-threaded HTTP/1.1 server (libuv + llhttp) that simulates service time and reports
 * the Prequal load signals (docs/PREQUAL.md §1). Users run N copies of it to watch the gateway
 * balance load; the integration tests use it as a real backend, so it is strict about HTTP framing and
 * never trusts its peer: malformed input gets a 400 and the connection is closed.
 *
 * Usage:
 *   pgw-backend [--listen HOST:PORT] [--port N] [--name NAME] [--service-ms MEAN]
 *               [--dist fixed|exp] [--slowdown F] [--stall-ms MS --stall-every-ms MS]
 *               [--concurrency N] [--freeze-ms MS --freeze-every-ms MS]
 *               [--slow-factor F --slow-ms MS --slow-every-ms MS]
 *               [--piggyback] [--health-file PATH] [--seed N] [--quiet]
 *
 *   --listen HOST:PORT   address to bind (default 127.0.0.1:9001; port 0 picks an ephemeral port;
 *                        IPv6 as [::1]:PORT). Once bound, exactly one line
 *                        "listening on HOST:PORT" is printed to stdout.
 *   --port N             override only the port of --listen.
 *   --name NAME          reported as "backend" in JSON bodies and in X-Backend (default HOST:PORT).
 *   --service-ms MEAN    simulated service time of ordinary requests, in ms (default 0; fractional
 *                        values are fine: timers fire within about +-0.5 ms, right on average).
 *   --dist fixed|exp     service time is MEAN exactly (default) or exponential with mean MEAN.
 *   --slowdown F         multiply every service time by F (default 1), e.g. 5 for a slow replica.
 *   --stall-ms MS --stall-every-ms EVERY
 *                        every EVERY ms (from start-up) the backend "stalls" for MS ms: a timed
 *                        request that would finish inside [k*EVERY, k*EVERY+MS) finishes at the
 *                        window's end. Probes are still answered during a stall.
 *   --concurrency N      N service slots (default 0 = unlimited: every request's service time runs
 *                        at once, overlapping). A timed request (ordinary paths, /delay/MS) holds a
 *                        slot for its service time; with all N busy it waits in one FIFO queue
 *                        shared by all connections. N = 1 serves one request at a time.
 *   --freeze-ms MS --freeze-every-ms EVERY
 *                        the whole process stops for MS ms at EVERY, 2*EVERY, ... ms after start-up
 *                        (like a stop-the-world pause): nothing is read, answered or accepted,
 *                        probes and /health included. Service times keep running; a request due
 *                        during a freeze is answered when it ends.
 *   --slow-factor F --slow-ms MS --slow-every-ms EVERY
 *                        a service time that starts inside [k*EVERY, k*EVERY+MS) after start-up,
 *                        k >= 1, is F times longer (on top of --slowdown): a replica that turns
 *                        slow for a while. Probes stay fast.
 *   --piggyback          every response also carries X-Prequal-RIF and X-Prequal-Latency-Us.
 *   --health-file PATH   /health answers 503 {"status":"failing"} while PATH exists.
 *   --seed N             seed of the service-time RNG (default: from the clock and pid).
 *   --quiet              no log lines on stderr.
 *
 * Paths (any method; a query string is ignored for routing; HEAD gets the same headers, no body):
 *   /probe        Prequal probe, answered at once: X-Prequal-RIF and X-Prequal-Latency-Us headers,
 *                 empty body, or {"rif":N,"latency_ms":X} with "Accept: application/json".
 *   /health       {"status":"ok"}          /metrics   Prometheus text
 *   /headers      the request as JSON, at once        /echo   the request body, back verbatim
 *   /bytes/N      N pattern bytes (byte i = 'a' + i%26) with Content-Length, streamed
 *   /chunked/N    the same, chunked          /close/N   the same, close-delimited, then close
 *   /status/CODE  that status (200..599)     /delay/MS  like any path, waiting MS ms
 *   anything else after the service time: {"backend","method","path","headers","body_bytes",
 *                 "body_crc32"} as JSON.
 *
 * Load signals. RIF counts requests from the arrival of their head until their response (head) is
 * handed to uv_write; /probe, /health and /metrics are control-plane requests and are neither
 * counted nor sampled. Each finished request records (rif_at_arrival, latency) where rif_at_arrival
 * is the RIF it found (itself excluded), so a probe at RIF r predicts what a request sent now would
 * see. With --concurrency, the RIF includes the requests waiting for a slot and the latency their
 * wait. The samples live in one small ring per RIF value; a probe takes the median of those from
 * the last second at r-1..r+1, or 0 when there is none.
 *
 * Ownership. A connection owns its requests (parsed, queued, or being parsed) and frees itself only
 * when both of its handles (the TCP stream and the linger timer) have closed. A request that has a
 * timer is freed in the timer's close callback; nothing else points at it by then. Each uv_write
 * has its own be_write_t that owns the memory it writes and points at the connection, which is
 * alive until the write's callback has run (libuv cancels pending writes before the stream's close
 * callback). The read buffer is one static buffer: it is consumed before the next read, and the
 * rest of a read that is not parsed yet (pipeline back-pressure) is copied into the connection's
 * stash.
 *
 * Memory per connection is bounded whatever the peer does: parsing pauses (and reading stops) while
 * 32 responses are unfinished or 64 MiB of /echo bodies are held; streamed bodies are written one
 * piece at a time, the next queued only from the previous write's callback; the request line and
 * headers are capped (414, 431). Responses are always written in request order.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>
#include <time.h>

#include <llhttp.h>
#include <uv.h>

#define BE_MAX_TEXT (64 * 1024) /* request target + header bytes */
#define BE_MAX_HEADERS 100
#define BE_MAX_ECHO (64u * 1024 * 1024) /* /echo buffers the body, up to this */
#define BE_PIPELINE_MAX 32              /* stop parsing with this many responses unfinished */
#define BE_PIPELINE_RESUME 16           /* ... and resume below this */
#define BE_PIECE (64 * 1024)            /* /bytes and /close write size */
#define BE_CHUNK (16 * 1024)            /* /chunked chunk size */
#define BE_LINGER_MS 2000               /* after our FIN, how long we drain the peer's data */
#define BE_LAT_BUCKETS 1024             /* RIF values with their own sample ring (last: ">=") */
#define BE_LAT_RING 64                  /* samples kept per RIF value */
#define BE_LAT_WINDOW_NS 1000000000ull  /* samples older than this are ignored */
#define BE_MAX_BYTES (1ull << 50)
#define BE_MAX_DELAY_MS 3600000ull

#define BE_CONTAINER_OF(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

/* --- configuration and global state --------------------------------------------------------- */

static struct {
    char host[128];
    int port;
    char name[128];
    double service_ms;
    int dist_exp;
    double slowdown;
    uint64_t stall_ms, stall_every_ms;
    uint32_t concurrency; /* service slots; 0 = unlimited */
    uint64_t freeze_ms, freeze_every_ms;
    double slow_factor;
    uint64_t slow_ms, slow_every_ms;
    int piggyback;
    const char *health_file; /* /health answers 503 while this file exists */
    uint64_t seed;
    int seeded;
    int quiet;
} cfg = {.host = "127.0.0.1", .port = 9001, .slowdown = 1.0, .slow_factor = 1.0};

typedef struct be_conn be_conn_t;
typedef struct be_req be_req_t;

static struct {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_signal_t sigint, sigterm;
    uv_timer_t freeze; /* --freeze-*: fires at the start of each freeze */
    int stopping;
    be_conn_t *conns; /* every open connection, for shutdown */
    uint64_t rng;
    uint64_t start_ns; /* uv_hrtime() at start-up: stall windows count from here */
    uint32_t rif;
    uint64_t requests_total, probes_total, connections_total;
    be_req_t *svc_head, *svc_tail; /* --concurrency: timed requests waiting for a slot, FIFO */
    uint32_t svc_busy;             /* slots in use */
} g;

typedef struct {
    uint64_t t_ns;
    uint32_t lat_us;
} be_sample_t;

static struct {
    be_sample_t s[BE_LAT_RING];
    uint32_t next, n;
} lat[BE_LAT_BUCKETS];

static uint32_t crc_table[256];
static char pattern[BE_PIECE + 26]; /* pattern + (i % 26) is the body from offset i on */
static char read_buf[64 * 1024];

static void logf_(const char *fmt, ...)
{
    if (cfg.quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("pgw-backend: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* --- small utilities ------------------------------------------------------------------------ */

static uint64_t rng_next(void)
{ /* splitmix64 */
    uint64_t z = (g.rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(void)
{
    return (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0);
}

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

/* Running CRC-32 (zlib's): start from 0, feed the pieces in order. */
static uint32_t crc_update(uint32_t crc, const char *p, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = crc_table[(crc ^ (unsigned char)p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* A growable byte buffer. Growth failure sets `failed` and turns later appends into no-ops, so a
 * caller builds a whole message and checks once. */
typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} be_buf_t;

static int buf_reserve(be_buf_t *b, size_t need)
{
    if (b->failed)
        return -1;
    if (b->len + need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + need)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->failed = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void buf_add(be_buf_t *b, const void *d, size_t n)
{
    if (n == 0 || buf_reserve(b, n) < 0)
        return;
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void buf_str(be_buf_t *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_fmt(be_buf_t *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if ((size_t)n < sizeof small) {
        buf_add(b, small, (size_t)n);
        return;
    }
    if (buf_reserve(b, (size_t)n + 1) < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Length of the well-formed UTF-8 sequence at s, or 0 if there is none. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

/* A JSON string literal. Bytes that are not well-formed UTF-8 become U+FFFD, so the output is
 * always valid JSON whatever the peer sent. */
static void buf_json_str(be_buf_t *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    buf_add(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            buf_add(b, e, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            buf_fmt(b, "\\u%04x", c);
            i++;
        } else {
            size_t l = utf8_len(u + i, n - i);
            if (l == 0) {
                buf_str(b, "\\ufffd");
                i++;
            } else {
                buf_add(b, u + i, l);
                i += l;
            }
        }
    }
    buf_add(b, "\"", 1);
}

static int parse_u64(const char *s, size_t n, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > 19)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 203:
        return "Non-Authoritative Information";
    case 204:
        return "No Content";
    case 205:
        return "Reset Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 418:
        return "I'm a teapot";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* --- the latency estimator (docs/PREQUAL.md §1) -------------------------------------------------
 */

static void lat_record(uint32_t rif_at_arrival, uint64_t now_ns, uint64_t lat_us)
{
    uint32_t k = rif_at_arrival < BE_LAT_BUCKETS ? rif_at_arrival : BE_LAT_BUCKETS - 1;
    lat[k].s[lat[k].next] =
        (be_sample_t){now_ns, lat_us > UINT32_MAX ? UINT32_MAX : (uint32_t)lat_us};
    lat[k].next = (lat[k].next + 1) % BE_LAT_RING;
    if (lat[k].n < BE_LAT_RING)
        lat[k].n++;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Median latency (us) of the fresh samples recorded at RIF r-1..r+1; 0 when there is none, because
 * a stale high value would starve an idle replica. */
static uint64_t lat_estimate(uint32_t r)
{
    uint32_t v[3 * BE_LAT_RING];
    size_t n = 0;
    uint64_t now = uv_hrtime();
    uint32_t lo = r > 0 ? r - 1 : 0, hi = r + 1;
    if (lo > BE_LAT_BUCKETS - 1)
        lo = BE_LAT_BUCKETS - 1;
    if (hi > BE_LAT_BUCKETS - 1)
        hi = BE_LAT_BUCKETS - 1;
    for (uint32_t k = lo; k <= hi; k++)
        for (uint32_t i = 0; i < lat[k].n; i++)
            if (now - lat[k].s[i].t_ns <= BE_LAT_WINDOW_NS)
                v[n++] = lat[k].s[i].lat_us;
    if (n == 0)
        return 0;
    qsort(v, n, sizeof v[0], cmp_u32);
    return n % 2 ? v[n / 2] : ((uint64_t)v[n / 2 - 1] + v[n / 2]) / 2;
}

/* --- connections and requests --------------------------------------------------------------------
 */

typedef enum {
    BE_OPEN,     /* reading and parsing requests */
    BE_DRAINING, /* no more requests will be parsed; answering those queued, then closing */
    BE_LINGER,   /* our FIN is sent; discarding input until the peer's EOF or the linger timer */
    BE_CLOSING   /* uv_close called; waiting for the close callbacks */
} be_state_t;

typedef enum {
    R_NORMAL,
    R_DELAY,
    R_HEADERS,
    R_ECHO,
    R_BYTES,
    R_CHUNKED,
    R_CLOSE,
    R_STATUS,
    R_BADARG,
    R_PROBE,
    R_HEALTH,
    R_METRICS, /* control plane: not counted in RIF, not sampled */
    R_ERROR    /* synthetic: answers a malformed request, then the conn closes */
} be_route_t;

typedef struct {
    uint32_t name_off, name_len, val_off, val_len;
} be_hdr_t;

struct be_req {
    be_req_t *next;
    be_conn_t *conn;
    uv_timer_t timer;
    int has_timer;
    enum { SVC_NONE, SVC_QUEUED, SVC_RUNNING } svc; /* --concurrency only */
    be_req_t *svc_prev, *svc_next;                  /* in g.svc_head..svc_tail while queued */
    be_route_t route;
    uint64_t arg; /* N, CODE or MS of the special paths; the status of R_ERROR */
    uint8_t method, http_major, http_minor;
    int head_only, keep_alive, ready, counted, hdr_state, headers_done;
    uint32_t rif_at_arrival;
    uint64_t t_arrival_ns;
    uint32_t probe_rif; /* a probe's answer, taken when it arrived */
    uint64_t probe_lat_us;
    uint64_t body_bytes;
    uint32_t body_crc;
    be_buf_t echo;
    be_buf_t text; /* the target, then lowercased header names and values */
    size_t target_len;
    be_hdr_t hdr[BE_MAX_HEADERS];
    uint32_t nhdr;
};

struct be_conn {
    uv_tcp_t tcp;
    uv_timer_t linger;
    uv_shutdown_t shutdown_req;
    llhttp_t parser;
    be_state_t state;
    int reading, parse_paused, peer_eof, out_busy, pending_closes, err_status;
    unsigned inflight;     /* requests parsed whose last response write has not completed */
    size_t echo_held;      /* /echo bodies among those: parsing pauses over BE_MAX_ECHO */
    be_req_t *cur;         /* being parsed */
    be_req_t *head, *tail; /* parsed, waiting for their turn to be answered (in order) */
    char *stash;           /* input not parsed yet because of pipeline back-pressure */
    size_t stash_len;
    struct {
        uint64_t sent, total;
        int chunked, terminated;
    } st; /* the streaming response in progress (out_busy) */
    be_conn_t *prev, *next;
};

typedef enum { W_PLAIN, W_FINISH, W_STREAM } be_wkind_t;

typedef struct {
    uv_write_t req;
    be_conn_t *conn;
    char *heap[2];
    be_wkind_t kind;
    size_t echo_held; /* given back to conn->echo_held when the write completes */
    char chunk_hdr[24];
} be_write_t;

static llhttp_settings_t parser_settings;

static void conn_close(be_conn_t *c);
static void conn_try_flush(be_conn_t *c);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(read_buf, sizeof read_buf);
}

static void conn_read_start(be_conn_t *c)
{
    if (!c->reading && uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = 1;
}

static void conn_read_stop(be_conn_t *c)
{
    if (c->reading)
        uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
}

static void req_dealloc(be_req_t *r)
{
    free(r->echo.p);
    free(r->text.p);
    free(r);
}

static void on_req_timer_closed(uv_handle_t *h)
{
    req_dealloc(h->data);
}

static void req_free(be_req_t *r)
{
    if (r->has_timer)
        uv_close((uv_handle_t *)&r->timer, on_req_timer_closed);
    else
        req_dealloc(r);
}

static void svc_unlink(be_req_t *r);
static void svc_dispatch(void);

/* Drops a request that will never be answered (its connection is going away). */
static void req_abort(be_req_t *r)
{
    if (r->svc == SVC_QUEUED) {
        svc_unlink(r);
    } else if (r->svc == SVC_RUNNING) {
        r->svc = SVC_NONE;
        g.svc_busy--;
        svc_dispatch();
    }
    if (r->counted) {
        g.rif--;
        r->counted = 0;
    }
    req_free(r);
}

/* The response of `r` is being handed to uv_write: it leaves the RIF and leaves a latency sample.
 */
static void req_release(be_req_t *r)
{
    if (!r->counted)
        return;
    r->counted = 0;
    g.rif--;
    uint64_t now = uv_hrtime();
    lat_record(r->rif_at_arrival, now, (now - r->t_arrival_ns) / 1000);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    be_conn_t *c = h->data;
    if (--c->pending_closes == 0)
        free(c);
}

/* Idempotent: drops every request, closes both handles; the struct is freed by the last close. */
static void conn_close(be_conn_t *c)
{
    if (c->state == BE_CLOSING)
        return;
    c->state = BE_CLOSING;
    if (c->cur) {
        req_abort(c->cur);
        c->cur = NULL;
    }
    while (c->head) {
        be_req_t *r = c->head;
        c->head = r->next;
        req_abort(r);
    }
    c->tail = NULL;
    free(c->stash);
    c->stash = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        g.conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->pending_closes = 2;
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->linger, on_conn_handle_closed);
}

static void on_linger_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    be_conn_t *c = req->data;
    if (c->state == BE_CLOSING)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    /* Closing now could reset the connection over input we never read, and the peer might lose the
     * tail of our response; read and drop until it closes too, for a bounded time. */
    uv_timer_start(&c->linger, on_linger_timeout, BE_LINGER_MS, 0);
    conn_read_start(c);
}

/* Every response is written: close gracefully (or at once if the peer already sent its FIN). */
static void conn_end(be_conn_t *c)
{
    if (c->peer_eof) {
        conn_close(c);
        return;
    }
    c->state = BE_LINGER;
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) < 0)
        conn_close(c);
}

/* --- writing ------------------------------------------------------------------------------------
 */

static void stream_next(be_conn_t *c);
static void conn_maybe_resume(be_conn_t *c);

static be_write_t *write_new(be_conn_t *c, be_wkind_t kind)
{
    be_write_t *w = calloc(1, sizeof *w);
    if (!w)
        abort(); /* a small control structure */
    w->conn = c;
    w->kind = kind;
    return w;
}

static void write_free(be_write_t *w)
{
    free(w->heap[0]);
    free(w->heap[1]);
    free(w);
}

/* The last write of a request's response has completed. */
static void request_done(be_conn_t *c)
{
    c->inflight--;
    if (c->state == BE_DRAINING && c->inflight == 0 && !c->head) {
        conn_end(c);
        return;
    }
    conn_try_flush(c);
    conn_maybe_resume(c);
}

static void on_write(uv_write_t *req, int status)
{
    be_write_t *w = BE_CONTAINER_OF(req, be_write_t, req);
    be_conn_t *c = w->conn;
    be_wkind_t kind = w->kind;
    c->echo_held -= w->echo_held;
    write_free(w);
    if (c->state == BE_CLOSING)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (kind == W_STREAM)
        stream_next(c);
    else if (kind == W_FINISH)
        request_done(c);
}

/* Takes ownership of w (and its heap buffers) whatever happens. */
static void write_send(be_write_t *w, uv_buf_t *bufs, unsigned n)
{
    be_conn_t *c = w->conn;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, on_write) < 0) {
        write_free(w);
        conn_close(c);
    }
}

/* Queues the next piece of the streaming response; only one piece is ever queued, so a slow reader
 * costs no memory. */
static void stream_next(be_conn_t *c)
{
    uint64_t left = c->st.total - c->st.sent;
    if (left > 0) {
        size_t n = c->st.chunked ? BE_CHUNK : BE_PIECE;
        if (left < n)
            n = (size_t)left;
        be_write_t *w = write_new(c, W_STREAM);
        uv_buf_t bufs[3];
        unsigned nb = 0;
        if (c->st.chunked) {
            int hl = snprintf(w->chunk_hdr, sizeof w->chunk_hdr, "%zx\r\n", n);
            bufs[nb++] = uv_buf_init(w->chunk_hdr, (unsigned)hl);
        }
        bufs[nb++] = uv_buf_init(pattern + c->st.sent % 26, (unsigned)n);
        if (c->st.chunked)
            bufs[nb++] = uv_buf_init("\r\n", 2);
        c->st.sent += n;
        write_send(w, bufs, nb);
    } else if (c->st.chunked && !c->st.terminated) {
        c->st.terminated = 1;
        uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);
        write_send(write_new(c, W_STREAM), &b, 1);
    } else {
        c->out_busy = 0;
        request_done(c);
    }
}

static void head_begin(be_buf_t *b, be_req_t *r, int status)
{
    buf_fmt(b, "HTTP/1.1 %d %s\r\nServer: pgw-backend\r\nX-Backend: %s\r\n", status, reason(status),
            cfg.name);
    if (r->route == R_PROBE)
        buf_fmt(b, "X-Prequal-RIF: %" PRIu32 "\r\nX-Prequal-Latency-Us: %" PRIu64 "\r\n",
                r->probe_rif, r->probe_lat_us);
    else if (cfg.piggyback)
        buf_fmt(b, "X-Prequal-RIF: %" PRIu32 "\r\nX-Prequal-Latency-Us: %" PRIu64 "\r\n", g.rif,
                lat_estimate(g.rif));
    if (!r->keep_alive)
        buf_str(b, "Connection: close\r\n");
    else if (r->http_major == 1 && r->http_minor == 0)
        buf_str(b, "Connection: keep-alive\r\n");
}

/* A whole response in one write. `body_heap`, if not NULL, is body's allocation and is freed with
 * the write (or at once when no body is sent). */
static void respond(be_req_t *r, int status, const char *ctype, const char *body, size_t body_len,
                    char *body_heap)
{
    be_conn_t *c = r->conn;
    be_buf_t h = {0};
    int bodyless = status == 204 || status == 304;
    head_begin(&h, r, status);
    if (!bodyless) {
        if (ctype)
            buf_fmt(&h, "Content-Type: %s\r\n", ctype);
        buf_fmt(&h, "Content-Length: %zu\r\n", body_len);
    }
    buf_str(&h, "\r\n");
    if (h.failed) {
        free(h.p);
        free(body_heap);
        conn_close(c);
        return;
    }
    be_write_t *w = write_new(c, W_FINISH);
    uv_buf_t bufs[2];
    unsigned nb = 0;
    w->heap[0] = h.p;
    bufs[nb++] = uv_buf_init(h.p, (unsigned)h.len);
    if (!bodyless && !r->head_only && body_len > 0)
        bufs[nb++] = uv_buf_init((char *)body, (unsigned)body_len);
    w->heap[1] = body_heap;
    if (r->route == R_ECHO)
        w->echo_held = r->echo.len;
    write_send(w, bufs, nb);
}

static void respond_buf(be_req_t *r, int status, const char *ctype, be_buf_t *body)
{
    if (body->failed) {
        free(body->p);
        conn_close(r->conn);
        return;
    }
    respond(r, status, ctype, body->p, body->len, body->p);
}

/* The JSON description of the request that ordinary paths answer with. Repeated header names are
 * joined with ", " (RFC 9110 §5.3) so the object has unique keys. */
static void respond_info(be_req_t *r)
{
    be_buf_t b = {0};
    const char *t = r->text.p;
    buf_str(&b, "{\"backend\":");
    buf_json_str(&b, cfg.name, strlen(cfg.name));
    buf_str(&b, ",\"method\":");
    buf_json_str(&b, llhttp_method_name(r->method), strlen(llhttp_method_name(r->method)));
    buf_str(&b, ",\"path\":");
    buf_json_str(&b, t, r->target_len);
    buf_str(&b, ",\"headers\":{");
    int first = 1;
    for (uint32_t i = 0; i < r->nhdr; i++) {
        const be_hdr_t *h = &r->hdr[i];
        int seen = 0;
        for (uint32_t j = 0; j < i && !seen; j++)
            seen = r->hdr[j].name_len == h->name_len &&
                   memcmp(t + r->hdr[j].name_off, t + h->name_off, h->name_len) == 0;
        if (seen)
            continue;
        be_buf_t v = {0};
        for (uint32_t j = i; j < r->nhdr; j++) {
            const be_hdr_t *k = &r->hdr[j];
            if (k->name_len != h->name_len || memcmp(t + k->name_off, t + h->name_off, h->name_len))
                continue;
            if (j != i)
                buf_add(&v, ", ", 2);
            buf_add(&v, t + k->val_off, k->val_len);
        }
        if (!first)
            buf_add(&b, ",", 1);
        first = 0;
        buf_json_str(&b, t + h->name_off, h->name_len);
        buf_add(&b, ":", 1);
        buf_json_str(&b, v.p, v.len);
        if (v.failed)
            b.failed = 1;
        free(v.p);
    }
    buf_fmt(&b, "},\"body_bytes\":%" PRIu64 ",\"body_crc32\":\"%08" PRIx32 "\"}\n", r->body_bytes,
            r->body_crc);
    respond_buf(r, 200, "application/json", &b);
}

static const be_hdr_t *req_header(const be_req_t *r, const char *name)
{
    size_t n = strlen(name);
    for (uint32_t i = 0; i < r->nhdr; i++)
        if (r->hdr[i].name_len == n && memcmp(r->text.p + r->hdr[i].name_off, name, n) == 0)
            return &r->hdr[i];
    return NULL;
}

static int req_header_has(const be_req_t *r, const char *name, const char *needle)
{
    const be_hdr_t *h = req_header(r, name);
    size_t nl = strlen(needle);
    if (!h)
        return 0;
    const char *v = r->text.p + h->val_off;
    for (size_t i = 0; i + nl <= h->val_len; i++) {
        size_t k = 0;
        while (k < nl && (v[i + k] | 0x20) == (needle[k] | 0x20))
            k++;
        if (k == nl)
            return 1;
    }
    return 0;
}

static void respond_stream(be_req_t *r)
{
    be_conn_t *c = r->conn;
    int chunked =
        r->route == R_CHUNKED && r->keep_alive; /* HTTP/1.0 peers get a close-delimited body */
    be_buf_t h = {0};
    head_begin(&h, r, 200);
    buf_str(&h, "Content-Type: application/octet-stream\r\n");
    if (r->route == R_BYTES)
        buf_fmt(&h, "Content-Length: %" PRIu64 "\r\n", r->arg);
    else if (chunked)
        buf_str(&h, "Transfer-Encoding: chunked\r\n");
    buf_str(&h, "\r\n");
    if (h.failed) {
        free(h.p);
        conn_close(c);
        return;
    }
    be_write_t *w = write_new(c, r->head_only ? W_FINISH : W_STREAM);
    w->heap[0] = h.p;
    uv_buf_t b = uv_buf_init(h.p, (unsigned)h.len);
    if (!r->head_only) {
        c->out_busy = 1;
        c->st.sent = 0;
        c->st.total = r->arg;
        c->st.chunked = chunked;
        c->st.terminated = 0;
    }
    write_send(w, &b, 1);
}

static void respond_metrics(be_req_t *r)
{
    be_buf_t b = {0};
    buf_fmt(
        &b,
        "# HELP backend_requests_total Requests received (probes, /health and /metrics excluded).\n"
        "# TYPE backend_requests_total counter\n"
        "backend_requests_total %" PRIu64 "\n"
        "# HELP backend_in_flight Requests in flight (RIF) as probes report it.\n"
        "# TYPE backend_in_flight gauge\n"
        "backend_in_flight %" PRIu32 "\n"
        "# HELP backend_probes_total Probe requests answered.\n"
        "# TYPE backend_probes_total counter\n"
        "backend_probes_total %" PRIu64 "\n",
        g.requests_total, g.rif, g.probes_total);
    respond_buf(r, 200, "text/plain; version=0.0.4; charset=utf-8", &b);
}

static void req_respond(be_req_t *r)
{
    req_release(r);
    switch (r->route) {
    case R_PROBE:
        if (req_header_has(r, "accept", "application/json")) {
            be_buf_t b = {0};
            buf_fmt(&b, "{\"rif\":%" PRIu32 ",\"latency_ms\":%.3f}\n", r->probe_rif,
                    (double)r->probe_lat_us / 1000.0);
            respond_buf(r, 200, "application/json", &b);
        } else {
            respond(r, 200, NULL, NULL, 0, NULL);
        }
        break;
    case R_HEALTH: {
        static const char ok[] = "{\"status\":\"ok\"}\n", failing[] = "{\"status\":\"failing\"}\n";
        if (cfg.health_file && access(cfg.health_file, F_OK) == 0)
            respond(r, 503, "application/json", failing, sizeof failing - 1, NULL);
        else
            respond(r, 200, "application/json", ok, sizeof ok - 1, NULL);
        break;
    }
    case R_METRICS:
        respond_metrics(r);
        break;
    case R_NORMAL:
    case R_DELAY:
    case R_HEADERS:
        respond_info(r);
        break;
    case R_ECHO: {
        const char *ct = "application/octet-stream";
        const be_hdr_t *h = req_header(r, "content-type");
        be_buf_t ctb = {0};
        if (h) { /* llhttp guarantees a header value has no CR or LF */
            buf_add(&ctb, r->text.p + h->val_off, h->val_len);
            buf_add(&ctb, "", 1);
            if (!ctb.failed)
                ct = ctb.p;
        }
        char *body = r->echo.p;
        r->echo.p = NULL;
        respond(r, 200, ct, body, r->echo.len, body);
        free(ctb.p);
        break;
    }
    case R_BYTES:
    case R_CHUNKED:
    case R_CLOSE:
        respond_stream(r);
        break;
    case R_STATUS: {
        be_buf_t b = {0};
        buf_str(&b, "{\"backend\":");
        buf_json_str(&b, cfg.name, strlen(cfg.name));
        buf_fmt(&b, ",\"status\":%d}\n", (int)r->arg);
        respond_buf(r, (int)r->arg, "application/json", &b);
        break;
    }
    case R_BADARG: {
        static const char msg[] = "bad argument in path\n";
        respond(r, 400, "text/plain", msg, sizeof msg - 1, NULL);
        break;
    }
    case R_ERROR: {
        be_buf_t b = {0};
        buf_fmt(&b, "%s\n", reason((int)r->arg));
        respond_buf(r, (int)r->arg, "text/plain", &b);
        break;
    }
    }
}

/* Answers, in order, every queued request whose service time is over. A streaming response holds
 * the line until its last piece is written. */
static void conn_try_flush(be_conn_t *c)
{
    while ((c->state == BE_OPEN || c->state == BE_DRAINING) && !c->out_busy && c->head &&
           c->head->ready) {
        be_req_t *r = c->head;
        c->head = r->next;
        if (!c->head)
            c->tail = NULL;
        req_respond(r);
        req_free(r);
    }
}

/* --- parsing ------------------------------------------------------------------------------------
 */

static void conn_feed(be_conn_t *c, const char *data, size_t len);

static void conn_queue(be_conn_t *c, be_req_t *r)
{
    r->next = NULL;
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    c->inflight++;
    c->echo_held += r->echo.len;
}

/* Malformed input: answer what is queued, then `status`, then close. */
static void conn_fail(be_conn_t *c, int status)
{
    if (c->cur) {
        req_abort(c->cur);
        c->cur = NULL;
    }
    be_req_t *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    r->conn = c;
    r->route = R_ERROR;
    r->arg = (uint64_t)status;
    r->http_major = 1;
    r->http_minor = 1;
    r->ready = 1;
    conn_queue(c, r);
    c->state = BE_DRAINING;
    conn_read_stop(c);
    conn_try_flush(c);
}

static void conn_maybe_resume(be_conn_t *c)
{
    if (c->state != BE_OPEN || !c->parse_paused || c->inflight >= BE_PIPELINE_RESUME ||
        c->echo_held >= BE_MAX_ECHO)
        return;
    c->parse_paused = 0;
    llhttp_resume(&c->parser);
    char *data = c->stash;
    size_t len = c->stash_len;
    c->stash = NULL;
    c->stash_len = 0;
    if (data)
        conn_feed(c, data, len);
    free(data);
    if (c->state == BE_OPEN && !c->parse_paused)
        conn_read_start(c);
}

static void conn_feed(be_conn_t *c, const char *data, size_t len)
{
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    if (c->state == BE_CLOSING || err == HPE_OK)
        return;
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
        conn_read_stop(c);
        if (c->state != BE_OPEN)
            return; /* the last request is in: whatever follows is dropped */
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t rest = (size_t)(data + len - pos);
        c->parse_paused = 1;
        if (rest) {
            c->stash = malloc(rest);
            if (!c->stash) {
                conn_close(c);
                return;
            }
            memcpy(c->stash, pos, rest);
            c->stash_len = rest;
        }
        return;
    }
    if (c->state == BE_OPEN)
        conn_fail(c, c->err_status ? c->err_status : 400);
}

static be_conn_t *parser_conn(llhttp_t *p)
{
    return p->data;
}

static int on_message_begin(llhttp_t *p)
{
    be_conn_t *c = parser_conn(p);
    if (c->state != BE_OPEN)
        return -1;
    be_req_t *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    r->conn = c;
    c->cur = r;
    return 0;
}

static int text_add(be_conn_t *c, be_req_t *r, const char *at, size_t n, int lower, int status)
{
    if (r->text.len + n > BE_MAX_TEXT) {
        c->err_status = status;
        return -1;
    }
    size_t off = r->text.len;
    buf_add(&r->text, at, n);
    if (r->text.failed) {
        c->err_status = 503;
        return -1;
    }
    if (lower)
        for (size_t i = off; i < off + n; i++)
            if (r->text.p[i] >= 'A' && r->text.p[i] <= 'Z')
                r->text.p[i] |= 0x20;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    be_conn_t *c = parser_conn(p);
    if (c->state != BE_OPEN || text_add(c, c->cur, at, n, 0, 414) < 0)
        return -1;
    c->cur->target_len += n;
    return 0;
}

static int is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Header callbacks may come in pieces; hdr_state says which part of hdr[nhdr] is being built.
 * Trailers (after the body) come through the same callbacks and are ignored. */
static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    be_conn_t *c = parser_conn(p);
    be_req_t *r = c->cur;
    if (c->state != BE_OPEN)
        return -1;
    if (r->headers_done)
        return 0;
    if (r->hdr_state != 1) {
        if (r->nhdr == BE_MAX_HEADERS) {
            c->err_status = 431;
            return -1;
        }
        r->hdr[r->nhdr] = (be_hdr_t){(uint32_t)r->text.len, 0, 0, 0};
        r->hdr_state = 1;
    }
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)at[i]))
            return -1; /* llhttp lets e.g. "Ho st" through; a name is a token (RFC 9110 §5.1) */
    if (text_add(c, r, at, n, 1, 431) < 0)
        return -1;
    r->hdr[r->nhdr].name_len += (uint32_t)n;
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    be_conn_t *c = parser_conn(p);
    be_req_t *r = c->cur;
    if (r->headers_done)
        return 0;
    if (r->hdr_state != 1) { /* an empty name: llhttp rejects those, but do not rely on it */
        if (r->nhdr == BE_MAX_HEADERS) {
            c->err_status = 431;
            return -1;
        }
        r->hdr[r->nhdr] = (be_hdr_t){(uint32_t)r->text.len, 0, 0, 0};
    }
    r->hdr[r->nhdr].val_off = (uint32_t)r->text.len;
    r->hdr_state = 2;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    be_conn_t *c = parser_conn(p);
    be_req_t *r = c->cur;
    if (c->state != BE_OPEN)
        return -1;
    if (r->headers_done)
        return 0;
    if (text_add(c, r, at, n, 0, 431) < 0)
        return -1;
    r->hdr[r->nhdr].val_len += (uint32_t)n;
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    be_req_t *r = parser_conn(p)->cur;
    if (!r->headers_done && r->hdr_state == 2) {
        be_hdr_t *h = &r->hdr[r->nhdr];
        while (h->val_len > 0 && (r->text.p[h->val_off + h->val_len - 1] == ' ' ||
                                  r->text.p[h->val_off + h->val_len - 1] == '\t'))
            h->val_len--; /* llhttp strips leading whitespace only */
        r->nhdr++;
        r->hdr_state = 0;
    }
    return 0;
}

static void classify(be_req_t *r)
{
    const char *t = r->text.p ? r->text.p : "";
    size_t n = r->target_len;
    /* absolute-form (RFC 9112 §3.2.2): route on its path */
    if (n > 7 && (memcmp(t, "http://", 7) == 0 || (n > 8 && memcmp(t, "https://", 8) == 0))) {
        size_t i = t[4] == 's' ? 8 : 7;
        while (i < n && t[i] != '/' && t[i] != '?')
            i++;
        t += i;
        n -= i;
    }
    for (size_t i = 0; i < n; i++)
        if (t[i] == '?' || t[i] == '#') {
            n = i;
            break;
        }
    static const struct {
        const char *prefix;
        be_route_t route;
        uint64_t lo, hi;
    } args[] = {
        {"/bytes/", R_BYTES, 0, BE_MAX_BYTES},    {"/chunked/", R_CHUNKED, 0, BE_MAX_BYTES},
        {"/close/", R_CLOSE, 0, BE_MAX_BYTES},    {"/status/", R_STATUS, 200, 599},
        {"/delay/", R_DELAY, 0, BE_MAX_DELAY_MS},
    };
    static const struct {
        const char *path;
        be_route_t route;
    } fixed[] = {
        {"/probe", R_PROBE},     {"/health", R_HEALTH}, {"/metrics", R_METRICS},
        {"/headers", R_HEADERS}, {"/echo", R_ECHO},
    };
    r->route = R_NORMAL;
    for (size_t k = 0; k < sizeof fixed / sizeof fixed[0]; k++)
        if (n == strlen(fixed[k].path) && memcmp(t, fixed[k].path, n) == 0)
            r->route = fixed[k].route;
    for (size_t k = 0; k < sizeof args / sizeof args[0]; k++) {
        size_t pl = strlen(args[k].prefix);
        if (n >= pl && memcmp(t, args[k].prefix, pl) == 0) {
            uint64_t v;
            if (parse_u64(t + pl, n - pl, args[k].hi, &v) < 0 || v < args[k].lo) {
                r->route = R_BADARG;
            } else {
                r->route = args[k].route;
                r->arg = v;
            }
        }
    }
}

static int on_headers_complete(llhttp_t *p)
{
    be_conn_t *c = parser_conn(p);
    be_req_t *r = c->cur;
    if (c->state != BE_OPEN)
        return -1;
    r->headers_done = 1;
    r->method = (uint8_t)p->method;
    r->head_only = p->method == HTTP_HEAD;
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    classify(r);
    if (r->route == R_ECHO && (p->flags & F_CONTENT_LENGTH) && p->content_length > BE_MAX_ECHO) {
        c->err_status = 413;
        return -1;
    }
    if (r->route == R_PROBE || r->route == R_HEALTH || r->route == R_METRICS) {
        if (r->route == R_PROBE) {
            g.probes_total++;
            r->probe_rif = g.rif;
            r->probe_lat_us = lat_estimate(g.rif);
        }
    } else {
        g.requests_total++;
        r->rif_at_arrival = g.rif++;
        r->counted = 1;
        r->t_arrival_ns = uv_hrtime();
    }
    /* Tell a client that waits for it to send the body, unless that would put this interim response
     * ahead of a final one still owed to an earlier request. */
    if (r->http_major == 1 && r->http_minor >= 1 && !c->head && !c->out_busy &&
        req_header_has(r, "expect", "100-continue")) {
        uv_buf_t b = uv_buf_init("HTTP/1.1 100 Continue\r\n\r\n", 25);
        write_send(write_new(c, W_PLAIN), &b, 1);
        if (c->state == BE_CLOSING)
            return -1;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    be_conn_t *c = parser_conn(p);
    be_req_t *r = c->cur;
    if (c->state != BE_OPEN)
        return -1;
    r->body_bytes += n;
    r->body_crc = crc_update(r->body_crc, at, n);
    if (r->route == R_ECHO) {
        if (r->echo.len + n > BE_MAX_ECHO) {
            c->err_status = 413;
            return -1;
        }
        buf_add(&r->echo, at, n);
        if (r->echo.failed) {
            c->err_status = 503;
            return -1;
        }
    }
    return 0;
}

static void on_service_done(uv_timer_t *t)
{
    be_req_t *r = t->data;
    r->ready = 1;
    if (r->svc == SVC_RUNNING) {
        r->svc = SVC_NONE;
        g.svc_busy--;
        svc_dispatch();
    }
    conn_try_flush(r->conn);
}

/* Whether `t_ns` (uv_hrtime() base) falls in one of the windows [k*every, k*every+len), k >= 1,
 * counted from start-up. */
static int in_periodic_window(uint64_t t_ns, uint64_t len_ms, uint64_t every_ms)
{
    if (len_ms == 0 || t_ns < g.start_ns)
        return 0;
    uint64_t rel = t_ns - g.start_ns, every = every_ms * 1000000;
    return rel >= every && rel % every < len_ms * 1000000;
}

/* When `r`, starting its service now, is done (uv_hrtime() base): after the simulated service time,
 * pushed to the end of a stall window it would otherwise end in. Returns 0 for "at once". */
static uint64_t service_finish_ns(const be_req_t *r)
{
    double ms;
    uint64_t now = uv_hrtime();
    if (r->route == R_DELAY) {
        ms = (double)r->arg;
    } else if (r->route == R_NORMAL) {
        ms = cfg.service_ms;
        if (cfg.dist_exp && ms > 0)
            ms = -ms * log(1.0 - rng_unit());
        ms *= cfg.slowdown;
        if (in_periodic_window(now, cfg.slow_ms, cfg.slow_every_ms))
            ms *= cfg.slow_factor;
        if (ms > (double)BE_MAX_DELAY_MS)
            ms = (double)BE_MAX_DELAY_MS;
    } else {
        return 0;
    }
    uint64_t d = (uint64_t)(ms * 1e6);
    if (d == 0 && cfg.stall_ms == 0)
        return 0;
    uint64_t fin = now + d;
    if (cfg.stall_ms > 0) {
        uint64_t every = cfg.stall_every_ms * 1000000, stall = cfg.stall_ms * 1000000;
        uint64_t rel = fin - g.start_ns;
        uint64_t window = rel / every * every;
        if (rel - window < stall)
            fin = g.start_ns + window + stall;
    }
    return fin;
}

/* Starts r's service timer, due at `fin` (uv_hrtime() base; 0 = at once, in the next loop
 * iteration). Timers have millisecond resolution and the loop's clock is truncated to the
 * millisecond, so the due time is rounded to the nearest millisecond of that clock: a timer then
 * fires within about +-0.5 ms of `fin`, and the mean service time (even a fractional one) comes out
 * right instead of half a millisecond late. */
static void req_timer_start(be_req_t *r, uint64_t fin)
{
    uint64_t due_ms = (fin + 500000) / 1000000, now_ms = uv_now(&g.loop);
    uv_timer_init(&g.loop, &r->timer);
    r->timer.data = r;
    r->has_timer = 1;
    uv_timer_start(&r->timer, on_service_done, due_ms > now_ms ? due_ms - now_ms : 0, 0);
}

static void svc_unlink(be_req_t *r)
{
    if (r->svc_prev)
        r->svc_prev->svc_next = r->svc_next;
    else
        g.svc_head = r->svc_next;
    if (r->svc_next)
        r->svc_next->svc_prev = r->svc_prev;
    else
        g.svc_tail = r->svc_prev;
    r->svc_prev = r->svc_next = NULL;
    r->svc = SVC_NONE;
}

/* Starts the service of queued requests while a slot is free. It only starts timers (a zero
 * service time too): answering happens in on_service_done, so this is safe to call from anywhere,
 * a connection's teardown included. */
static void svc_dispatch(void)
{
    while (g.svc_head && g.svc_busy < cfg.concurrency) {
        be_req_t *r = g.svc_head;
        svc_unlink(r);
        r->svc = SVC_RUNNING;
        g.svc_busy++;
        req_timer_start(r, service_finish_ns(r));
    }
}

/* Starts r's service (or queues it for a slot with --concurrency), or marks it ready. */
static void req_schedule(be_req_t *r)
{
    if (cfg.concurrency > 0 && (r->route == R_NORMAL || r->route == R_DELAY)) {
        r->svc = SVC_QUEUED;
        r->svc_prev = g.svc_tail;
        if (g.svc_tail)
            g.svc_tail->svc_next = r;
        else
            g.svc_head = r;
        g.svc_tail = r;
        svc_dispatch();
        return;
    }
    uint64_t fin = service_finish_ns(r);
    if (fin == 0) {
        r->ready = 1;
        return;
    }
    req_timer_start(r, fin);
}

/* --freeze-*: the process stops, as in a stop-the-world pause. Blocking the only thread is the
 * point: the kernel still queues connections and bytes, and nothing is read or answered until the
 * pause ends, probes included. The pause ends at its scheduled time (not MS after a late timer),
 * so the windows stay where --freeze-every-ms puts them. */
static void on_freeze(uv_timer_t *t)
{
    uint64_t every = cfg.freeze_every_ms * 1000000, now = uv_hrtime();
    /* the nearest window start: the timer may fire a little early (millisecond clock) or late */
    uint64_t k = (now - g.start_ns + every / 2) / every;
    uint64_t end = g.start_ns + k * every + cfg.freeze_ms * 1000000;
    if (k >= 1 && now < end) { /* uv_hrtime() is CLOCK_MONOTONIC */
        struct timespec ts = {(time_t)(end / 1000000000), (long)(end % 1000000000)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ; /* a signal: libuv handles it once the pause is over */
    }
    uv_update_time(&g.loop);
    now = uv_hrtime();
    uint64_t next = g.start_ns + (k + 1) * every;
    uv_timer_start(t, on_freeze, next > now ? (next - now + 999999) / 1000000 : 0, 0);
}

static int on_message_complete(llhttp_t *p)
{
    be_conn_t *c = parser_conn(p);
    be_req_t *r = c->cur;
    if (c->state != BE_OPEN)
        return -1;
    c->cur = NULL;
    r->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade && r->route != R_CLOSE &&
                    !(r->route == R_CHUNKED && r->http_major == 1 && r->http_minor == 0);
    conn_queue(c, r);
    req_schedule(r);
    if (!r->keep_alive)
        c->state = BE_DRAINING;
    conn_try_flush(c);
    if (c->state == BE_CLOSING)
        return -1;
    if (c->state == BE_DRAINING || c->inflight >= BE_PIPELINE_MAX || c->echo_held >= BE_MAX_ECHO)
        return HPE_PAUSED;
    return 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    be_conn_t *c = s->data;
    if (nread == 0 || c->state == BE_CLOSING)
        return;
    if (c->state == BE_LINGER) {
        if (nread < 0)
            conn_close(c);
        return;
    }
    if (nread < 0) {
        if (nread != UV_EOF || c->state != BE_OPEN) {
            conn_close(c);
            return;
        }
        /* The peer is done sending: answer what is complete, drop a partial request, then close. */
        if (c->cur) {
            req_abort(c->cur);
            c->cur = NULL;
        }
        c->peer_eof = 1;
        c->state = BE_DRAINING;
        conn_read_stop(c);
        if (c->inflight == 0)
            conn_close(c);
        return;
    }
    if (c->state == BE_OPEN)
        conn_feed(c, buf->base, (size_t)nread);
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0) {
        logf_("accept: %s", uv_strerror(status));
        return;
    }
    be_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    uv_tcp_init(&g.loop, &c->tcp);
    uv_timer_init(&g.loop, &c->linger);
    c->tcp.data = c;
    c->linger.data = c;
    c->next = g.conns;
    if (g.conns)
        g.conns->prev = c;
    g.conns = c;
    c->state = BE_OPEN;
    int rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc < 0) {
        logf_("accept: %s", uv_strerror(rc));
        conn_close(c);
        return;
    }
    g.connections_total++;
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    conn_read_start(c);
}

/* --- start-up and shutdown ----------------------------------------------------------------------
 */

static void on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    if (g.stopping)
        return;
    g.stopping = 1;
    logf_("signal %d: closing %s connections", signum, g.conns ? "all" : "no");
    uv_close((uv_handle_t *)&g.listener, on_handle_closed);
    uv_close((uv_handle_t *)&g.sigint, on_handle_closed);
    uv_close((uv_handle_t *)&g.sigterm, on_handle_closed);
    uv_close((uv_handle_t *)&g.freeze, on_handle_closed);
    while (g.conns)
        conn_close(g.conns);
}

static const char usage[] =
    "usage: pgw-backend [--listen HOST:PORT] [--port N] [--name NAME] [--service-ms MEAN]\n"
    "                   [--dist fixed|exp] [--slowdown F] [--stall-ms MS --stall-every-ms MS]\n"
    "                   [--concurrency N] [--freeze-ms MS --freeze-every-ms MS]\n"
    "                   [--slow-factor F --slow-ms MS --slow-every-ms MS]\n"
    "                   [--piggyback] [--health-file PATH] [--seed N] [--quiet]\n"
    "\n"
    "An example HTTP/1.1 backend for prequal-gw that simulates service time and reports Prequal\n"
    "load signals. Prints \"listening on HOST:PORT\" on stdout once bound.\n"
    "\n"
    "  --listen HOST:PORT   bind address (default 127.0.0.1:9001; port 0 = ephemeral; [::1]:PORT)\n"
    "  --port N             override the port only\n"
    "  --name NAME          name reported in JSON bodies and X-Backend (default HOST:PORT)\n"
    "  --service-ms MEAN    simulated service time of ordinary requests in ms (default 0)\n"
    "  --dist fixed|exp     fixed MEAN (default) or exponential with mean MEAN\n"
    "  --slowdown F         multiply service times by F (default 1)\n"
    "  --stall-ms MS        with --stall-every-ms EVERY: a timed request that would finish in\n"
    "  --stall-every-ms MS    [k*EVERY, k*EVERY+MS) after start-up finishes at the window's end\n"
    "                       (probes are still answered during a stall)\n"
    "  --concurrency N      N service slots, the rest wait in one FIFO queue (default 0 =\n"
    "                       unlimited overlap; 1 = one request served at a time)\n"
    "  --freeze-ms MS       with --freeze-every-ms EVERY: at EVERY, 2*EVERY, ... ms after\n"
    "  --freeze-every-ms MS   start-up the process stops for MS ms: nothing answers, probes\n"
    "                         and /health included\n"
    "  --slow-factor F      with --slow-ms MS --slow-every-ms EVERY: a service time that\n"
    "  --slow-ms MS           starts in [k*EVERY, k*EVERY+MS) after start-up (k >= 1) is\n"
    "  --slow-every-ms MS     F times longer, e.g. 20, 2000, 10000\n"
    "  --piggyback          add X-Prequal-RIF / X-Prequal-Latency-Us to every response\n"
    "  --health-file PATH   /health answers 503 while PATH exists (to try health checks)\n"
    "  --seed N             RNG seed for service times (default: clock and pid)\n"
    "  --quiet              no log lines on stderr\n"
    "  --help               this text\n"
    "\n"
    "Paths (any method, query ignored; HEAD = same headers, no body):\n"
    "  /probe         X-Prequal-RIF, X-Prequal-Latency-Us; JSON {rif,latency_ms} with\n"
    "                 Accept: application/json. Answered at once; not counted in RIF.\n"
    "  /health        {\"status\":\"ok\"}\n"
    "  /metrics       backend_requests_total, backend_in_flight, backend_probes_total\n"
    "  /headers       the request as JSON, without service time\n"
    "  /echo          the request body back (up to 64 MiB)\n"
    "  /bytes/N       N bytes, byte i = 'a' + i%26, Content-Length\n"
    "  /chunked/N     the same, Transfer-Encoding: chunked\n"
    "  /close/N       the same, close-delimited, then the connection closes\n"
    "  /status/CODE   that status (200..599) with a small JSON body\n"
    "  /delay/MS      like any other path, but waits MS ms instead of the service time\n"
    "  anything else  after the service time: JSON {backend, method, path, headers,\n"
    "                 body_bytes, body_crc32}\n";

static void die_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "pgw-backend: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", usage);
    exit(2);
}

/* The value of option `name` at argv[*i] ("--name V" or "--name=V"), or NULL if it is another one.
 */
static const char *opt(int argc, char **argv, int *i, const char *name)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (a[n] != '\0')
        return NULL;
    if (*i + 1 >= argc)
        die_usage("%s needs a value", name);
    return argv[++*i];
}

static uint64_t arg_u64(const char *v, uint64_t max, const char *name)
{
    uint64_t x;
    if (parse_u64(v, strlen(v), max, &x) < 0)
        die_usage("bad value for %s", name);
    return x;
}

static double arg_double(const char *v, const char *name)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x) || x < 0)
        die_usage("bad value for %s", name);
    return x;
}

static void parse_listen(const char *v)
{
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v)
        die_usage("--listen wants HOST:PORT, got %s", v);
    const char *h = v;
    size_t hl = (size_t)(colon - v);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= sizeof cfg.host)
        die_usage("bad host in --listen %s", v);
    memcpy(cfg.host, h, hl);
    cfg.host[hl] = '\0';
    cfg.port = (int)arg_u64(colon + 1, 65535, "--listen");
}

/* A periodic window option pair: both or neither, and the window shorter than its period. */
static void check_period(int have_len, int have_every, uint64_t len, uint64_t every,
                         const char *what)
{
    char msg[160];
    if (have_len != have_every) {
        snprintf(msg, sizeof msg, "--%s-ms and --%s-every-ms go together", what, what);
        die_usage("%s", msg);
    }
    if (have_len && len > 0 && every <= len) {
        snprintf(msg, sizeof msg, "--%s-every-ms must be larger than --%s-ms", what, what);
        die_usage("%s", msg);
    }
}

static void parse_args(int argc, char **argv)
{
    int have_stall = 0, have_every = 0, have_freeze = 0, have_freeze_every = 0;
    int have_slow = 0, have_slow_every = 0, have_slow_factor = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            exit(0);
        } else if ((v = opt(argc, argv, &i, "--listen"))) {
            parse_listen(v);
        } else if ((v = opt(argc, argv, &i, "--port"))) {
            cfg.port = (int)arg_u64(v, 65535, "--port");
        } else if ((v = opt(argc, argv, &i, "--name"))) {
            size_t n = strlen(v);
            if (n == 0 || n >= sizeof cfg.name)
                die_usage("bad --name %s", v);
            for (size_t k = 0; k < n; k++)
                if ((unsigned char)v[k] < 0x20 || (unsigned char)v[k] > 0x7e)
                    die_usage("--name must be printable ASCII: %s", v);
            strcpy(cfg.name, v);
        } else if ((v = opt(argc, argv, &i, "--service-ms"))) {
            cfg.service_ms = arg_double(v, "--service-ms");
        } else if ((v = opt(argc, argv, &i, "--dist"))) {
            if (!strcmp(v, "exp"))
                cfg.dist_exp = 1;
            else if (!strcmp(v, "fixed"))
                cfg.dist_exp = 0;
            else
                die_usage("--dist is fixed or exp, not %s", v);
        } else if ((v = opt(argc, argv, &i, "--slowdown"))) {
            cfg.slowdown = arg_double(v, "--slowdown");
        } else if ((v = opt(argc, argv, &i, "--stall-ms"))) {
            cfg.stall_ms = arg_u64(v, BE_MAX_DELAY_MS, "--stall-ms");
            have_stall = 1;
        } else if ((v = opt(argc, argv, &i, "--stall-every-ms"))) {
            cfg.stall_every_ms = arg_u64(v, BE_MAX_DELAY_MS, "--stall-every-ms");
            have_every = 1;
        } else if ((v = opt(argc, argv, &i, "--concurrency"))) {
            cfg.concurrency = (uint32_t)arg_u64(v, 1000000, "--concurrency");
        } else if ((v = opt(argc, argv, &i, "--freeze-ms"))) {
            cfg.freeze_ms = arg_u64(v, BE_MAX_DELAY_MS, "--freeze-ms");
            have_freeze = 1;
        } else if ((v = opt(argc, argv, &i, "--freeze-every-ms"))) {
            cfg.freeze_every_ms = arg_u64(v, BE_MAX_DELAY_MS, "--freeze-every-ms");
            have_freeze_every = 1;
        } else if ((v = opt(argc, argv, &i, "--slow-factor"))) {
            cfg.slow_factor = arg_double(v, "--slow-factor");
            have_slow_factor = 1;
        } else if ((v = opt(argc, argv, &i, "--slow-ms"))) {
            cfg.slow_ms = arg_u64(v, BE_MAX_DELAY_MS, "--slow-ms");
            have_slow = 1;
        } else if ((v = opt(argc, argv, &i, "--slow-every-ms"))) {
            cfg.slow_every_ms = arg_u64(v, BE_MAX_DELAY_MS, "--slow-every-ms");
            have_slow_every = 1;
        } else if ((v = opt(argc, argv, &i, "--seed"))) {
            cfg.seed = arg_u64(v, UINT64_MAX, "--seed");
            cfg.seeded = 1;
        } else if ((v = opt(argc, argv, &i, "--health-file"))) {
            cfg.health_file = v;
        } else if (!strcmp(argv[i], "--piggyback")) {
            cfg.piggyback = 1;
        } else if (!strcmp(argv[i], "--quiet")) {
            cfg.quiet = 1;
        } else {
            die_usage("unknown option %s", argv[i]);
        }
    }
    check_period(have_stall, have_every, cfg.stall_ms, cfg.stall_every_ms, "stall");
    check_period(have_freeze, have_freeze_every, cfg.freeze_ms, cfg.freeze_every_ms, "freeze");
    check_period(have_slow, have_slow_every, cfg.slow_ms, cfg.slow_every_ms, "slow");
    if (have_slow_factor != have_slow)
        die_usage("%s", "--slow-factor goes with --slow-ms and --slow-every-ms");
}

static void init_parser_settings(void)
{
    llhttp_settings_init(&parser_settings);
    parser_settings.on_message_begin = on_message_begin;
    parser_settings.on_url = on_url;
    parser_settings.on_header_field = on_header_field;
    parser_settings.on_header_field_complete = on_header_field_complete;
    parser_settings.on_header_value = on_header_value;
    parser_settings.on_header_value_complete = on_header_value_complete;
    parser_settings.on_headers_complete = on_headers_complete;
    parser_settings.on_body = on_body;
    parser_settings.on_message_complete = on_message_complete;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    crc_init();
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (char)('a' + i % 26);
    init_parser_settings();

    int rc = uv_loop_init(&g.loop);
    if (rc < 0) {
        fprintf(stderr, "pgw-backend: uv_loop_init: %s\n", uv_strerror(rc));
        return 1;
    }
    g.start_ns = uv_hrtime();
    g.rng = cfg.seeded ? cfg.seed : uv_hrtime() ^ ((uint64_t)uv_os_getpid() << 32);

    struct sockaddr_storage addr;
    if (uv_ip4_addr(cfg.host, cfg.port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(cfg.host, cfg.port, (struct sockaddr_in6 *)&addr) != 0) {
        fprintf(stderr,
                "pgw-backend: bad listen address %s (want a numeric IPv4 or IPv6 address)\n",
                cfg.host);
        return 2;
    }
    uv_tcp_init(&g.loop, &g.listener);
    rc = uv_tcp_bind(&g.listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&g.listener, 4096, on_connection);
    if (rc < 0) {
        fprintf(stderr, "pgw-backend: listen on %s:%d: %s\n", cfg.host, cfg.port, uv_strerror(rc));
        return 1;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&g.listener, (struct sockaddr *)&bound, &blen);
    char ip[64];
    int port;
    if (bound.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&bound, ip, sizeof ip);
        port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
    } else {
        uv_ip4_name((struct sockaddr_in *)&bound, ip, sizeof ip);
        port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    }
    char where[96];
    snprintf(where, sizeof where, bound.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
    if (!cfg.name[0])
        snprintf(cfg.name, sizeof cfg.name, "%s", where);
    printf("listening on %s\n", where);
    fflush(stdout);
    logf_("%s: service %.3f ms %s x%.2f, concurrency %" PRIu32 ", stall %" PRIu64 "/%" PRIu64
          " ms, freeze %" PRIu64 "/%" PRIu64 " ms, slow x%.2f %" PRIu64 "/%" PRIu64
          " ms, piggyback %s",
          cfg.name, cfg.service_ms, cfg.dist_exp ? "exp" : "fixed", cfg.slowdown, cfg.concurrency,
          cfg.stall_ms, cfg.stall_every_ms, cfg.freeze_ms, cfg.freeze_every_ms, cfg.slow_factor,
          cfg.slow_ms, cfg.slow_every_ms, cfg.piggyback ? "on" : "off");

    uv_timer_init(&g.loop, &g.freeze);
    if (cfg.freeze_ms > 0)
        uv_timer_start(&g.freeze, on_freeze, cfg.freeze_every_ms, 0);

    uv_signal_init(&g.loop, &g.sigint);
    uv_signal_init(&g.loop, &g.sigterm);
    uv_signal_start(&g.sigint, on_signal, SIGINT);
    uv_signal_start(&g.sigterm, on_signal, SIGTERM);

    uv_run(&g.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&g.loop);
    if (rc < 0) {
        fprintf(stderr, "pgw-backend: uv_loop_close: %s\n", uv_strerror(rc));
        return 1;
    }
    logf_("stopped after %" PRIu64 " requests, %" PRIu64 " probes, %" PRIu64 " connections",
          g.requests_total, g.probes_total, g.connections_total);
    return 0;
}
