/*
 * pgw-loadgen: an open-loop HTTP/1.1 load generator (libuv + llhttp) for benchmarking balancers.
 *
 * Open loop: requests ARRIVE as a Poisson process at --rate R per second, whether or not earlier
 * ones have been answered. Each arrival goes out on an idle keep-alive connection from a pool of at
 * most --connections N (opened on demand, or --open N of them at start; idle ones are reused
 * longest-idle first); when none is idle it waits in a FIFO queue. Latency is
 * measured from the INTENDED arrival time (not from when a connection became free), so queueing
 * anywhere -- in the target, in its backends, or in our own pool -- shows up in the numbers instead
 * of being hidden by coordinated omission (a closed-loop client simply stops sending while the
 * server is slow, and so never records the requests that would have waited).
 *
 * Arrival times are computed in ns (uv_hrtime). libuv timers are millisecond-granular, so a 1 ms
 * repeating timer (plus a check handle after every loop iteration) sends every arrival whose time
 * has come; on Linux a timerfd armed at the next due time (same clock as uv_hrtime) wakes the loop
 * with sub-ms precision too. The send lag left over is reported in the summary.
 *
 * Accounting (only for arrivals after --warmup; later arrivals up to --duration are "sent"):
 *   ok        a 2xx response, completely read;
 *   errors    connect failures, resets/EOF mid-response, parse errors, non-2xx statuses;
 *   timeouts  no complete response by intended time + --timeout-ms (a request that waited that
 *             long in our own queue is never sent). The connection of a timed-out in-flight
 *             request is closed.
 * Percentiles are exact (every latency is kept) over ok responses AND timeouts, the latter counted
 * at --timeout-ms: a target that times out 1 % of requests cannot have a good p99. Errors are not
 * in the percentiles (a fast 502 is not a fast answer); they are counted separately.
 * The X-Backend response header of every ok response is counted per value (each backend's share).
 *
 *   pgw-loadgen --url http://127.0.0.1:PORT/path --rate R [--duration S] [--warmup S]
 *               [--connections N] [--open N] [--timeout-ms MS] [--seed N] [--save FILE] [--quiet]
 *   pgw-loadgen --calibrate --url URL [--connections N] [--duration S] [--warmup S]
 *   pgw-loadgen --merge FILE...
 *
 * --calibrate is closed-loop on purpose: N connections each send the next request as soon as the
 * previous answer arrives, for --duration seconds (default 3, after --warmup default 1); it prints
 * `CAPACITY rps=...`. --save writes the raw outcome of a run; --merge combines such files (rounds
 * of an interleaved benchmark) and prints the summary of the union.
 *
 * The last line of output is machine-readable:
 *   RESULT rate=R sent=N ok=N errors=N timeouts=N p50_ms=X p90_ms=X p99_ms=X p999_ms=X max_ms=X
 *          share=NAME:FRACTION,...
 *
 * Build: gcc -std=gnu11 -O2 -Wall -Wextra -I/usr/share/include/llhttp bench/loadgen.c
 *        /usr/share/llhttp/[*].c $(pkg-config --cflags --libs libuv) -lm -o pgw-loadgen
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#ifdef __linux__
#include <sys/timerfd.h>
#endif
#include <time.h>
#include <unistd.h>

#include <llhttp.h>
#include <uv.h>

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
#define MAX_NAMES 64
#define NAME_LEN 64
#define FIELD_LEN 32
#define SAVE_MAGIC "pgw-loadgen-save-v1"

/* ---------------------------------------------------------------------------------------------- */
/* options and state                                                                              */

static struct {
    const char *url;
    double rate;
    double duration_s, warmup_s;
    int duration_set, warmup_set;
    unsigned connections;
    unsigned open; /* connections opened at start (--open) */
    uint64_t timeout_ms;
    uint64_t seed;
    int calibrate;
    int quiet;
    int coarse;          /* --coarse-timer: no timerfd, only the 1 ms tick and the check handle */
    uint64_t quantum_us; /* --timer-us: wake-ups for arrivals at most this often (timerfd) */
    const char *save;
} opt = {
    .duration_s = 10, .warmup_s = 1, .connections = 256, .timeout_ms = 5000, .quantum_us = 200};

static char host[256];
static int port = 80;
static char path[2048] = "/";
static struct sockaddr_in addr;
static char *request_buf;
static size_t request_len;

typedef struct {
    char name[NAME_LEN];
    uint64_t count;
} share_t;

/* Outcome of a run (or of merged runs). */
typedef struct {
    double rate, duration_s;
    uint64_t sent, ok, errors, timeouts;
    uint64_t err_connect, err_reset, err_status, err_parse;
    uint64_t nolabel; /* ok responses without X-Backend */
    share_t names[MAX_NAMES];
    size_t nnames;
    uint64_t *lat; /* ns */
    size_t nlat, caplat;
} stats_t;

static stats_t st;

/* send lag (actual send - intended) of measured requests */
static uint64_t lag_sum, lag_max, lag_n, lag_over_1ms;

typedef enum { C_CONNECTING, C_IDLE, C_BUSY, C_CLOSING } cstate_t;

typedef struct conn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    llhttp_t parser;
    cstate_t state;
    unsigned slot;
    int has_req, measured, done, ever_connected;
    uint64_t intended, sent;
    int status;
    char field[FIELD_LEN];
    size_t flen;
    char value[NAME_LEN];
    size_t vlen;
    char backend[NAME_LEN];
    size_t blen;
} conn_t;

typedef struct {
    uint64_t intended;
    int measured;
} arrival_t;

static uv_loop_t *loop;
static uv_timer_t tick;
static uv_check_t check;
static uv_poll_t tfd_poll; /* Linux: a timerfd armed at the next arrival, for sub-ms precision */
static int tfd = -1;
static uv_signal_t sigint_h, sigterm_h;
static conn_t **pool; /* slots, NULL = free */
static unsigned nopen, nconnecting;
/* Idle connections, a FIFO ring: the one idle longest is reused first, so every open connection
 * carries about the same share of the requests (a connection-level balancer in front of several
 * targets then splits the load evenly instead of by how recently each connection was used). */
static conn_t **idle;
static uint64_t conns_opened;
static unsigned nidle, idle_head;

static arrival_t *q; /* FIFO ring of waiting arrivals */
static size_t qcap, qhead, qlen;

static uint64_t t_start, t_measure, t_end, next_due;
static int generating = 1, finished = 0, interrupted = 0;
static uint64_t rng_state;
static uint64_t calib_done_ok, consecutive_connect_fail;
static llhttp_settings_t psettings;
static char rbuf[65536];

/* ---------------------------------------------------------------------------------------------- */
/* helpers                                                                                        */

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("pgw-loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xrealloc(void *p, size_t n)
{
    void *r = realloc(p, n ? n : 1);
    if (!r)
        die("out of memory");
    return r;
}

static uint64_t rng_next(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t exp_gap_ns(void)
{
    double u = (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0); /* [0,1) */
    double g = -log1p(-u) / opt.rate * 1e9;
    if (g < 1)
        g = 1;
    return (uint64_t)g;
}

static void lat_push(stats_t *s, uint64_t ns)
{
    if (s->nlat == s->caplat) {
        s->caplat = s->caplat ? s->caplat * 2 : 65536;
        s->lat = xrealloc(s->lat, s->caplat * sizeof(*s->lat));
    }
    s->lat[s->nlat++] = ns;
}

static int same_name(const char *stored, const char *name)
{
    for (; *stored && *name; stored++, name++) {
        unsigned char c = (unsigned char)*name;
        char want = (c <= ' ' || c == ',' || c == ':' || c == 127) ? '_' : (char)c;
        if (*stored != want)
            return 0;
    }
    return *stored == *name;
}

static void share_add(stats_t *s, const char *name, uint64_t n)
{
    for (size_t i = 0; i < s->nnames; i++)
        if (same_name(s->names[i].name, name)) {
            s->names[i].count += n;
            return;
        }
    if (s->nnames == MAX_NAMES) {
        share_add(s, "(other)", n);
        return;
    }
    char *d = s->names[s->nnames].name;
    snprintf(d, NAME_LEN, "%s", name);
    for (; *d; d++) /* keep RESULT's share=NAME:F,... and save files parseable */
        if ((unsigned char)*d <= ' ' || *d == ',' || *d == ':' || *d == 127)
            *d = '_';
    s->names[s->nnames++].count = n;
}

/* ---------------------------------------------------------------------------------------------- */
/* outcomes                                                                                       */

enum { RES_OK, RES_TIMEOUT, RES_CONNECT, RES_RESET, RES_STATUS, RES_PARSE };

static void record(int measured, int result, uint64_t intended, const char *backend)
{
    uint64_t now = uv_hrtime();
    if (opt.calibrate && result == RES_OK && now >= t_measure && now < t_end)
        calib_done_ok++;
    if (!measured)
        return;
    switch (result) {
    case RES_OK:
        st.ok++;
        lat_push(&st, now - intended);
        if (backend && *backend)
            share_add(&st, backend, 1);
        else
            st.nolabel++;
        break;
    case RES_TIMEOUT:
        st.timeouts++;
        lat_push(&st, opt.timeout_ms * NS_PER_MS);
        break;
    default:
        st.errors++;
        if (result == RES_CONNECT)
            st.err_connect++;
        else if (result == RES_RESET)
            st.err_reset++;
        else if (result == RES_STATUS)
            st.err_status++;
        else
            st.err_parse++;
        break;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* queue                                                                                          */

static void q_push(uint64_t intended, int measured)
{
    if (qlen == qcap) {
        size_t ncap = qcap ? qcap * 2 : 4096;
        arrival_t *n = xrealloc(NULL, ncap * sizeof(*n));
        for (size_t i = 0; i < qlen; i++)
            n[i] = q[(qhead + i) % qcap];
        free(q);
        q = n;
        qcap = ncap;
        qhead = 0;
    }
    q[(qhead + qlen) % qcap] = (arrival_t){intended, measured};
    qlen++;
}

static arrival_t q_pop(void)
{
    arrival_t a = q[qhead];
    qhead = (qhead + 1) % qcap;
    qlen--;
    return a;
}

/* ---------------------------------------------------------------------------------------------- */
/* connections                                                                                    */

static void dispatch(void);
static void maybe_finish(void);

static conn_t *idle_pop(void)
{
    conn_t *c = idle[idle_head];
    idle_head = (idle_head + 1) % opt.connections;
    nidle--;
    return c;
}

/* Rare (an idle connection closed by its peer): O(n) keeps the ring simple. */
static void idle_remove(conn_t *c)
{
    for (unsigned i = 0; i < nidle; i++)
        if (idle[(idle_head + i) % opt.connections] == c) {
            for (unsigned k = i; k + 1 < nidle; k++)
                idle[(idle_head + k) % opt.connections] =
                    idle[(idle_head + k + 1) % opt.connections];
            nidle--;
            return;
        }
}

static void on_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    pool[c->slot] = NULL;
    nopen--;
    free(c);
    dispatch();
    maybe_finish();
}

static void conn_close(conn_t *c)
{
    if (c->state == C_CLOSING)
        return;
    if (c->state == C_CONNECTING)
        nconnecting--;
    if (c->state == C_IDLE)
        idle_remove(c);
    c->state = C_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

/* Fails the in-flight request of c (if any) with `result` and closes c. */
static void conn_fail(conn_t *c, int result)
{
    if (c->has_req) {
        c->has_req = 0;
        record(c->measured, result, c->intended, NULL);
    }
    conn_close(c);
}

static void conn_make_idle(conn_t *c)
{
    c->state = C_IDLE;
    idle[(idle_head + nidle++) % opt.connections] = c;
}

static void on_written(uv_write_t *w, int status)
{
    conn_t *c = w->data;
    free(w);
    if (status < 0 && status != UV_ECANCELED && c->state != C_CLOSING)
        conn_fail(c, RES_RESET);
}

static void conn_send(conn_t *c, uint64_t intended, int measured)
{
    uint64_t now = uv_hrtime();
    c->state = C_BUSY;
    c->has_req = 1;
    c->done = 0;
    c->intended = intended;
    c->measured = measured;
    c->sent = now;
    c->blen = 0;
    c->backend[0] = 0;
    if (measured) {
        uint64_t lag = now > intended ? now - intended : 0;
        lag_sum += lag;
        lag_n++;
        if (lag > lag_max)
            lag_max = lag;
        if (lag > NS_PER_MS)
            lag_over_1ms++;
    }
    uv_write_t *w = xrealloc(NULL, sizeof(*w));
    w->data = c;
    uv_buf_t b = uv_buf_init(request_buf, (unsigned)request_len);
    int rc = uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc < 0) {
        free(w);
        conn_fail(c, RES_RESET);
    }
}

static void on_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    (void)sz;
    *b = uv_buf_init(rbuf, sizeof(rbuf));
}

/* A complete response arrived on c (parser paused at its end). */
static void conn_response_done(conn_t *c)
{
    int keep = llhttp_should_keep_alive(&c->parser);
    c->done = 0;
    if (c->has_req) {
        c->has_req = 0;
        int ok = c->status >= 200 && c->status < 300;
        c->backend[c->blen] = 0;
        record(c->measured, ok ? RES_OK : RES_STATUS, c->intended, c->backend);
    }
    if (!keep) {
        conn_close(c);
        return;
    }
    conn_make_idle(c);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    conn_t *c = s->data;
    if (c->state == C_CLOSING)
        return;
    if (n == 0)
        return;
    if (n < 0) {
        if (n == UV_EOF && c->has_req) {
            /* a close-delimited body ends here */
            llhttp_errno_t e = llhttp_finish(&c->parser);
            if ((e == HPE_OK || e == HPE_PAUSED) && c->done) {
                conn_response_done(c);
                conn_close(c);
                dispatch();
                return;
            }
        }
        conn_fail(c, RES_RESET); /* EOF while idle: no request is charged */
        dispatch();
        return;
    }
    if (!c->has_req) { /* bytes nobody asked for */
        conn_close(c);
        dispatch();
        return;
    }
    llhttp_errno_t e = llhttp_execute(&c->parser, b->base, (size_t)n);
    if (e == HPE_PAUSED) {
        const char *stop = llhttp_get_error_pos(&c->parser);
        size_t used = stop ? (size_t)(stop - b->base) : (size_t)n;
        llhttp_resume(&c->parser);
        conn_response_done(c);
        if (used < (size_t)n && c->state != C_CLOSING)
            conn_close(c); /* trailing garbage after the response: don't trust this connection */
        dispatch();
        return;
    }
    if (e != HPE_OK) {
        conn_fail(c, RES_PARSE);
        dispatch();
    }
}

static void on_connected(uv_connect_t *r, int status)
{
    conn_t *c = r->data;
    if (c->state == C_CLOSING)
        return;
    if (status < 0) {
        consecutive_connect_fail++;
        if (!opt.quiet && consecutive_connect_fail == 1)
            fprintf(stderr, "pgw-loadgen: connect: %s\n", uv_strerror(status));
        /* charge the oldest waiting request so a dead target cannot make us loop forever */
        nconnecting--;
        c->state = C_BUSY;
        if (qlen > 0) {
            arrival_t a = q_pop();
            record(a.measured, RES_CONNECT, a.intended, NULL);
        } else if (opt.calibrate) {
            record(uv_hrtime() >= t_measure, RES_CONNECT, uv_hrtime(), NULL);
        }
        conn_close(c);
        return;
    }
    consecutive_connect_fail = 0;
    nconnecting--;
    c->ever_connected = 1;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    conn_make_idle(c);
    dispatch();
}

static int hdr_field(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    size_t room = FIELD_LEN - 1 - c->flen;
    size_t k = len < room ? len : room;
    memcpy(c->field + c->flen, at, k);
    c->flen += k;
    if (len > room)
        c->flen = FIELD_LEN - 1; /* too long to be X-Backend; keeps comparison failing */
    return 0;
}

static int hdr_value(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    size_t room = NAME_LEN - 1 - c->vlen;
    size_t k = len < room ? len : room;
    memcpy(c->value + c->vlen, at, k);
    c->vlen += k;
    return 0;
}

static int hdr_value_done(llhttp_t *p)
{
    conn_t *c = p->data;
    if (c->flen == 9 && strncasecmp(c->field, "x-backend", 9) == 0) {
        memcpy(c->backend, c->value, c->vlen);
        c->blen = c->vlen;
    }
    c->flen = c->vlen = 0;
    return 0;
}

static int msg_begin(llhttp_t *p)
{
    conn_t *c = p->data;
    c->flen = c->vlen = c->blen = 0;
    return 0;
}

static int headers_done(llhttp_t *p)
{
    conn_t *c = p->data;
    c->status = p->status_code;
    return 0;
}

static int msg_done(llhttp_t *p)
{
    conn_t *c = p->data;
    if (c->status >= 100 && c->status < 200)
        return 0; /* interim response: keep reading */
    c->done = 1;
    return HPE_PAUSED;
}

static void conn_open(void)
{
    unsigned slot = 0;
    while (slot < opt.connections && pool[slot])
        slot++;
    if (slot == opt.connections)
        return;
    conn_t *c = xrealloc(NULL, sizeof(*c));
    memset(c, 0, sizeof(*c));
    c->slot = slot;
    c->state = C_CONNECTING;
    c->tcp.data = c;
    c->creq.data = c;
    llhttp_init(&c->parser, HTTP_RESPONSE, &psettings);
    c->parser.data = c;
    if (uv_tcp_init(loop, &c->tcp) < 0)
        die("uv_tcp_init failed");
    pool[slot] = c;
    nopen++;
    conns_opened++;
    nconnecting++;
    uv_tcp_nodelay(&c->tcp, 1);
    int rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&addr, on_connected);
    if (rc < 0) {
        /* e.g. EMFILE / EADDRNOTAVAIL: fail like a refused connect, from the next tick */
        if (!opt.quiet && ++consecutive_connect_fail == 1)
            fprintf(stderr, "pgw-loadgen: connect: %s\n", uv_strerror(rc));
        nconnecting--;
        c->state = C_BUSY;
        if (qlen > 0) {
            arrival_t a = q_pop();
            record(a.measured, RES_CONNECT, a.intended, NULL);
        }
        conn_close(c);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* scheduling                                                                                     */

static void expire(uint64_t now)
{
    uint64_t to = opt.timeout_ms * NS_PER_MS;
    while (qlen > 0 && q[qhead].intended + to <= now) {
        arrival_t a = q_pop();
        record(a.measured, RES_TIMEOUT, a.intended, NULL);
    }
    for (unsigned i = 0; i < opt.connections; i++) {
        conn_t *c = pool[i];
        if (c && c->state == C_BUSY && c->has_req && c->intended + to <= now)
            conn_fail(c, RES_TIMEOUT);
    }
}

static void dispatch(void)
{
    if (finished)
        return;
    if (opt.calibrate) {
        uint64_t now = uv_hrtime();
        if (now >= t_end)
            return;
        while (nidle > 0)
            conn_send(idle_pop(), now, now >= t_measure && now < t_end);
        if (consecutive_connect_fail > 100)
            die("cannot connect to %s:%d", host, port);
        while (nopen < opt.connections)
            conn_open();
        return;
    }
    while (qlen > 0 && nidle > 0) {
        arrival_t a = q_pop();
        conn_send(idle_pop(), a.intended, a.measured);
    }
    /* each attempt either adds a connecting connection or fails (charging a queued request) */
    while (qlen > nconnecting && nopen < opt.connections)
        conn_open();
}

static void arrivals(uint64_t now)
{
    if (!opt.calibrate && generating) {
        while (next_due <= now && next_due < t_end) {
            q_push(next_due, next_due >= t_measure);
            if (next_due >= t_measure)
                st.sent++;
            next_due += exp_gap_ns();
        }
        if (next_due >= t_end)
            generating = 0;
    }
}

/* Arms the timerfd at the next arrival's due time (absolute CLOCK_MONOTONIC, as uv_hrtime). */
static void tfd_arm(void)
{
#ifdef __linux__
    if (tfd < 0 || !generating)
        return;
    /* batching arrivals that are closer than the quantum saves wake-ups (syscalls) at high rates */
    uint64_t due = uv_hrtime() + opt.quantum_us * 1000;
    if (due < next_due)
        due = next_due;
    struct itimerspec its = {{0, 0}, {(time_t)(due / NS_PER_S), (long)(due % NS_PER_S)}};
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
#endif
}

static void on_tfd(uv_poll_t *h, int status, int events)
{
    (void)h;
    (void)status;
    (void)events;
    uint64_t expirations;
    if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
        return;
    if (finished)
        return;
    arrivals(uv_hrtime());
    dispatch();
    tfd_arm();
}

static void pump(void)
{
    if (finished)
        return;
    uint64_t now = uv_hrtime();
    arrivals(now);
    if (opt.calibrate && now >= t_end)
        generating = 0;
    expire(now);
    dispatch();
    maybe_finish();
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
    pump();
}

static void on_check(uv_check_t *h)
{
    (void)h;
    /* cheap path after every loop iteration: no timeout scan */
    if (!finished && !opt.calibrate && generating && next_due <= uv_hrtime()) {
        arrivals(uv_hrtime());
        dispatch();
        tfd_arm();
    }
}

static void shutdown_all(void)
{
    finished = 1;
    uv_timer_stop(&tick);
    uv_check_stop(&check);
    if (tfd >= 0)
        uv_close((uv_handle_t *)&tfd_poll, NULL);
    uv_close((uv_handle_t *)&sigint_h, NULL);
    uv_close((uv_handle_t *)&sigterm_h, NULL);
    for (unsigned i = 0; i < opt.connections; i++)
        if (pool[i] && pool[i]->state != C_CLOSING) {
            pool[i]->has_req = 0;
            conn_close(pool[i]);
        }
}

static void maybe_finish(void)
{
    if (finished || generating)
        return;
    int busy = qlen > 0;
    for (unsigned i = 0; !busy && i < opt.connections; i++)
        if (pool[i] && pool[i]->has_req)
            busy = 1;
    if (!busy || opt.calibrate)
        shutdown_all();
}

static void on_signal(uv_signal_t *h, int sig)
{
    (void)h;
    (void)sig;
    interrupted = 1;
    generating = 0;
    /* whatever is still outstanding is reported as not answered */
    while (qlen > 0) {
        arrival_t a = q_pop();
        if (a.measured)
            st.sent--;
    }
    for (unsigned i = 0; i < opt.connections; i++)
        if (pool[i] && pool[i]->has_req) {
            if (pool[i]->measured)
                st.sent--;
            pool[i]->has_req = 0;
        }
    if (!finished)
        shutdown_all();
}

/* ---------------------------------------------------------------------------------------------- */
/* report, save, merge                                                                            */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* nearest-rank percentile of a sorted array, in ms */
static double pct(const stats_t *s, double p)
{
    if (s->nlat == 0)
        return 0;
    size_t k = (size_t)ceil(p * (double)s->nlat);
    if (k < 1)
        k = 1;
    if (k > s->nlat)
        k = s->nlat;
    return (double)s->lat[k - 1] / 1e6;
}

static int cmp_share(const void *a, const void *b)
{
    return strcmp(((const share_t *)a)->name, ((const share_t *)b)->name);
}

static void report(stats_t *s, const char *what)
{
    qsort(s->lat, s->nlat, sizeof(*s->lat), cmp_u64);
    qsort(s->names, s->nnames, sizeof(*s->names), cmp_share);
    uint64_t labelled = 0;
    for (size_t i = 0; i < s->nnames; i++)
        labelled += s->names[i].count;
    double mean = 0;
    for (size_t i = 0; i < s->nlat; i++)
        mean += (double)s->lat[i];
    mean = s->nlat ? mean / (double)s->nlat / 1e6 : 0;
    if (!opt.quiet) {
        printf("%s: target %.1f req/s over %.1f s: %" PRIu64 " sent (%.1f req/s)\n", what, s->rate,
               s->duration_s, s->sent, s->duration_s > 0 ? (double)s->sent / s->duration_s : 0);
        printf("  ok %" PRIu64 "  errors %" PRIu64 " (connect %" PRIu64 ", reset %" PRIu64
               ", non-2xx %" PRIu64 ", parse %" PRIu64 ")  timeouts %" PRIu64 " (>%" PRIu64
               " ms)\n",
               s->ok, s->errors, s->err_connect, s->err_reset, s->err_status, s->err_parse,
               s->timeouts, opt.timeout_ms);
        printf("  latency from intended send time (ok + timeouts), ms:\n");
        printf("    mean %.3f  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n", mean,
               pct(s, .50), pct(s, .90), pct(s, .99), pct(s, .999), pct(s, 1.0));
        if (lag_n)
            printf("  send lag (intended -> written; loadgen queue + timer): mean %.3f ms, max "
                   "%.3f ms, %.2f%% > 1 ms\n",
                   (double)lag_sum / (double)lag_n / 1e6, (double)lag_max / 1e6,
                   100.0 * (double)lag_over_1ms / (double)lag_n);
        if (s->nnames) {
            printf("  X-Backend share of ok responses:");
            for (size_t i = 0; i < s->nnames; i++)
                printf(" %s %.1f%%", s->names[i].name,
                       100.0 * (double)s->names[i].count / (double)labelled);
            printf("\n");
        }
        if (conns_opened)
            printf("  connections opened: %" PRIu64 " (max %u)\n", conns_opened, opt.connections);
        if (s->nolabel)
            printf("  %" PRIu64 " ok responses had no X-Backend header\n", s->nolabel);
    }
    printf("RESULT rate=%.1f sent=%" PRIu64 " ok=%" PRIu64 " errors=%" PRIu64 " timeouts=%" PRIu64
           " p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f share=",
           s->rate, s->sent, s->ok, s->errors, s->timeouts, pct(s, .50), pct(s, .90), pct(s, .99),
           pct(s, .999), pct(s, 1.0));
    for (size_t i = 0; i < s->nnames; i++)
        printf("%s%s:%.4f", i ? "," : "", s->names[i].name,
               (double)s->names[i].count / (double)labelled);
    printf("\n");
    fflush(stdout);
}

static void save(const stats_t *s, const char *file)
{
    FILE *f = fopen(file, "w");
    if (!f)
        die("%s: %s", file, strerror(errno));
    fprintf(f, "%s\n", SAVE_MAGIC);
    fprintf(f, "rate %.6f duration %.6f\n", s->rate, s->duration_s);
    fprintf(f,
            "counts %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
            " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n",
            s->sent, s->ok, s->errors, s->timeouts, s->err_connect, s->err_reset, s->err_status,
            s->err_parse, s->nolabel);
    fprintf(f, "names %zu\n", s->nnames);
    for (size_t i = 0; i < s->nnames; i++)
        fprintf(f, "%" PRIu64 " %s\n", s->names[i].count, s->names[i].name);
    fprintf(f, "lat %zu\n", s->nlat);
    for (size_t i = 0; i < s->nlat; i++)
        fprintf(f, "%" PRIu64 "\n", s->lat[i]);
    if (fclose(f) != 0)
        die("%s: write failed", file);
}

static void merge_one(stats_t *s, const char *file)
{
    FILE *f = fopen(file, "r");
    if (!f)
        die("%s: %s", file, strerror(errno));
    char line[256];
    double rate, dur;
    uint64_t v[9];
    size_t n;
    if (!fgets(line, sizeof line, f) || strncmp(line, SAVE_MAGIC, strlen(SAVE_MAGIC)) != 0)
        die("%s: not a pgw-loadgen save file", file);
    if (fscanf(f, "rate %lf duration %lf\n", &rate, &dur) != 2 ||
        fscanf(f,
               "counts %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
               " %" SCNu64 " %" SCNu64 " %" SCNu64 "\n",
               &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8]) != 9 ||
        fscanf(f, "names %zu\n", &n) != 1)
        die("%s: corrupt header", file);
    s->rate = rate; /* rounds of one benchmark share the rate */
    s->duration_s += dur;
    s->sent += v[0], s->ok += v[1], s->errors += v[2], s->timeouts += v[3];
    s->err_connect += v[4], s->err_reset += v[5], s->err_status += v[6], s->err_parse += v[7];
    s->nolabel += v[8];
    for (size_t i = 0; i < n; i++) {
        uint64_t cnt;
        char name[NAME_LEN];
        if (fscanf(f, "%" SCNu64 " %63s\n", &cnt, name) != 2)
            die("%s: corrupt names", file);
        share_add(s, name, cnt);
    }
    if (fscanf(f, "lat %zu\n", &n) != 1)
        die("%s: corrupt latencies", file);
    for (size_t i = 0; i < n; i++) {
        uint64_t x;
        if (fscanf(f, "%" SCNu64, &x) != 1)
            die("%s: truncated", file);
        lat_push(s, x);
    }
    fclose(f);
}

/* ---------------------------------------------------------------------------------------------- */
/* main                                                                                           */

static void usage(int code)
{
    fprintf(
        code ? stderr : stdout,
        "usage: pgw-loadgen --url http://127.0.0.1:PORT/path --rate R [--duration S] [--warmup S]\n"
        "                   [--connections N] [--open N] [--timeout-ms MS] [--seed N]\n"
        "                   [--save FILE] [--quiet]\n"
        "       pgw-loadgen --calibrate --url URL [--connections N] [--duration S] [--warmup S]\n"
        "       pgw-loadgen --merge FILE...\n"
        "Open loop: Poisson arrivals at R req/s; latency counts from each request's intended\n"
        "send time. Defaults: --duration 10 (3 with --calibrate), --warmup 1, --connections 256,\n"
        "--timeout-ms 5000. Last line: RESULT rate= sent= ok= errors= timeouts= p50_ms= p90_ms=\n"
        "p99_ms= p999_ms= max_ms= share=NAME:FRACTION,... (or CAPACITY rps= with --calibrate).\n");
    exit(code);
}

static double arg_num(const char *v, const char *name, double lo, double hi)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !(d >= lo && d <= hi))
        die("%s: bad value \"%s\"", name, v);
    return d;
}

static void parse_url(const char *u)
{
    if (strncmp(u, "http://", 7) != 0)
        die("--url must start with http://");
    const char *h = u + 7, *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    if (hl == 0 || hl >= sizeof(host))
        die("--url: bad host");
    memcpy(host, h, hl);
    host[hl] = 0;
    char *colon = strrchr(host, ':');
    if (colon) {
        *colon = 0;
        port = (int)arg_num(colon + 1, "--url port", 1, 65535);
    }
    if (slash) {
        if (strlen(slash) >= sizeof(path))
            die("--url: path too long");
        snprintf(path, sizeof(path), "%s", slash);
    }
    const char *ip = strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
    if (uv_ip4_addr(ip, port, &addr) != 0)
        die("--url: host must be a numeric IPv4 address (got \"%s\")", host);
}

int main(int argc, char **argv)
{
    const char **merge = NULL;
    int nmerge = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define NEXT() (i + 1 < argc ? argv[++i] : (die("%s needs a value", a), ""))
        if (!strcmp(a, "--url"))
            opt.url = NEXT();
        else if (!strcmp(a, "--rate"))
            opt.rate = arg_num(NEXT(), a, 0.001, 1e7);
        else if (!strcmp(a, "--duration"))
            opt.duration_s = arg_num(NEXT(), a, 0.01, 86400), opt.duration_set = 1;
        else if (!strcmp(a, "--warmup"))
            opt.warmup_s = arg_num(NEXT(), a, 0, 86400), opt.warmup_set = 1;
        else if (!strcmp(a, "--connections"))
            opt.connections = (unsigned)arg_num(NEXT(), a, 1, 1000000);
        else if (!strcmp(a, "--open"))
            opt.open = (unsigned)arg_num(NEXT(), a, 0, 1000000);
        else if (!strcmp(a, "--timeout-ms"))
            opt.timeout_ms = (uint64_t)arg_num(NEXT(), a, 1, 3600000);
        else if (!strcmp(a, "--seed"))
            opt.seed = (uint64_t)arg_num(NEXT(), a, 0, 1e18);
        else if (!strcmp(a, "--save"))
            opt.save = NEXT();
        else if (!strcmp(a, "--calibrate"))
            opt.calibrate = 1;
        else if (!strcmp(a, "--quiet"))
            opt.quiet = 1;
        else if (!strcmp(a, "--coarse-timer"))
            opt.coarse = 1;
        else if (!strcmp(a, "--timer-us"))
            opt.quantum_us = (uint64_t)arg_num(NEXT(), a, 0, 1000);
        else if (!strcmp(a, "--merge")) {
            merge = (const char **)&argv[i + 1];
            nmerge = argc - i - 1;
            break;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            usage(0);
        else {
            fprintf(stderr, "pgw-loadgen: unknown argument \"%s\"\n", a);
            usage(2);
        }
#undef NEXT
    }
    if (merge) {
        if (nmerge == 0)
            die("--merge needs files");
        for (int i = 0; i < nmerge; i++)
            merge_one(&st, merge[i]);
        report(&st, "merged");
        return 0;
    }
    if (!opt.url)
        usage(2);
    if (!opt.calibrate && opt.rate <= 0)
        die("--rate is required (or --calibrate)");
    if (opt.calibrate && !opt.duration_set)
        opt.duration_s = 3;
    parse_url(opt.url);

    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        opt.connections + 64 > rl.rlim_cur)
        die("--connections %u exceeds the open-file limit %llu", opt.connections,
            (unsigned long long)rl.rlim_cur);

    int rl_len =
        snprintf(NULL, 0, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: pgw-loadgen\r\n\r\n", path,
                 host, port);
    request_buf = xrealloc(NULL, (size_t)rl_len + 1);
    snprintf(request_buf, (size_t)rl_len + 1,
             "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: pgw-loadgen\r\n\r\n", path, host, port);
    request_len = (size_t)rl_len;

    llhttp_settings_init(&psettings);
    psettings.on_message_begin = msg_begin;
    psettings.on_header_field = hdr_field;
    psettings.on_header_value = hdr_value;
    psettings.on_header_value_complete = hdr_value_done;
    psettings.on_headers_complete = headers_done;
    psettings.on_message_complete = msg_done;

    pool = xrealloc(NULL, opt.connections * sizeof(*pool));
    memset(pool, 0, opt.connections * sizeof(*pool));
    idle = xrealloc(NULL, opt.connections * sizeof(*idle));

    rng_state = opt.seed ? opt.seed : (uv_hrtime() ^ ((uint64_t)getpid() << 32));
    st.rate = opt.rate;
    st.duration_s = opt.duration_s;

    loop = uv_default_loop();
    uv_timer_init(loop, &tick);
    uv_check_init(loop, &check);
    uv_signal_init(loop, &sigint_h);
    uv_signal_init(loop, &sigterm_h);
    uv_signal_start(&sigint_h, on_signal, SIGINT);
    uv_signal_start(&sigterm_h, on_signal, SIGTERM);

    t_start = uv_hrtime();
    t_measure = t_start + (uint64_t)(opt.warmup_s * 1e9);
    t_end = t_measure + (uint64_t)(opt.duration_s * 1e9);
    next_due = t_start + (opt.calibrate ? 0 : exp_gap_ns());
    uv_timer_start(&tick, on_tick, 1, 1);
    uv_check_start(&check, on_check);
#ifdef __linux__
    if (!opt.calibrate && !opt.coarse) {
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (tfd >= 0 && uv_poll_init(loop, &tfd_poll, tfd) == 0) {
            uv_poll_start(&tfd_poll, UV_READABLE, on_tfd);
            tfd_arm();
        } else if (tfd >= 0) {
            close(tfd);
            tfd = -1;
        }
    }
#endif
    if (opt.calibrate)
        dispatch();
    else
        for (unsigned i = 0; i < opt.open && i < opt.connections; i++)
            conn_open();
    uv_run(loop, UV_RUN_DEFAULT);

    if (opt.calibrate) {
        double rps = (double)calib_done_ok / opt.duration_s;
        st.sent = st.ok + st.errors + st.timeouts;
        if (!opt.quiet) {
            qsort(st.lat, st.nlat, sizeof(*st.lat), cmp_u64);
            printf("calibrate: closed loop, %u connections, %.1f s: %" PRIu64 " ok, %" PRIu64
                   " errors, p50 %.3f ms, p99 %.3f ms\n",
                   opt.connections, opt.duration_s, calib_done_ok, st.errors, pct(&st, .5),
                   pct(&st, .99));
        }
        printf("CAPACITY rps=%.0f\n", rps);
        return calib_done_ok ? 0 : 1;
    }
    if (interrupted) {
        double elapsed = (double)(uv_hrtime() - t_measure) / 1e9;
        st.duration_s = elapsed > 0 ? elapsed : 0;
    }
    if (tfd >= 0)
        close(tfd);
    if (opt.save)
        save(&st, opt.save);
    report(&st, interrupted ? "interrupted" : "open loop");
    uv_loop_close(loop);
    return 0;
}
