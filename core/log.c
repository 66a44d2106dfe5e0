/*
 * log: the error log on stderr and the JSON access log.
 *
 * Every line is formatted into a buffer on the caller's stack and handed to a single write(2), so
 * lines from different threads never interleave and logging never allocates (a request that
 * fails for lack of memory must still be loggable). Fields too long for the buffer are truncated,
 * never split inside an escape, so each access line stays one valid JSON object. A write that
 * fails or comes up short is not retried (retrying could interleave with another thread's line);
 * only EINTR is.
 *
 * Ownership and threads: the level is a relaxed atomic anyone may set; the worker id is a
 * thread-local. The access log's fd is an atomic int written by the main thread only
 * (gw_access_log_open / _reopen / _close) and read by every writer. Rotation (reopen) opens the
 * new file and dup3()s it onto the existing fd number, which the kernel does atomically: a writer
 * racing with it lands in either the old or the new file, never in a closed or reused fd.
 * gw_access_log_open and _close change the fd itself and must run while no other thread logs.
 */
#define _GNU_SOURCE
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define GW_LOG_LINE_MAX 4096
#define GW_ACCESS_LINE_MAX 8192

static int gw_log_level = GW_LOG_INFO;
static __thread int gw_log_thread_id = -1;

static int gw_access_fd = -1;
static bool gw_access_is_file;
static char gw_access_path[PATH_MAX];

static const char *const gw_log_level_names[] = {"debug", "info", "warn", "error"};

void gw_log_set_level(int level)
{
    GW_RELAXED_STORE(gw_log_level, level);
}

int gw_log_get_level(void)
{
    return GW_RELAXED_LOAD(gw_log_level);
}

int gw_log_level_parse(const char *name)
{
    if (name == NULL)
        return -1;
    for (size_t i = 0; i < GW_ARRAY_LEN(gw_log_level_names); i++) {
        if (strcmp(name, gw_log_level_names[i]) == 0)
            return (int)i;
    }
    return -1;
}

void gw_log_set_thread_id(int id)
{
    gw_log_thread_id = id;
}

/* Writes "YYYY-MM-DDTHH:MM:SS.mmmZ" (24 bytes and a NUL for any year up to 9999) for `ms` since
 * the epoch. */
static void gw_log_format_time(uint64_t ms, char out[80])
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    if (gmtime_r(&secs, &tm) == NULL)
        memset(&tm, 0, sizeof(tm));
    snprintf(out, 80, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(ms % 1000));
}

static uint64_t gw_log_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One write(2) of the whole line; see the module comment for why nothing more is attempted. */
static void gw_log_write_all(int fd, const char *buf, size_t len)
{
    ssize_t r;
    do {
        r = write(fd, buf, len);
    } while (r < 0 && errno == EINTR);
}

void gw_log(int level, const char *fmt, ...)
{
    if (level < gw_log_get_level())
        return;
    if (level < GW_LOG_DEBUG)
        level = GW_LOG_DEBUG;
    if (level > GW_LOG_ERR)
        level = GW_LOG_ERR;

    char msg[GW_LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    size_t mlen = GW_MIN((size_t)n, sizeof(msg) - 1);
    bool truncated = (size_t)n > mlen;

    char line[GW_LOG_LINE_MAX];
    char ts[80];
    gw_log_format_time(gw_log_now_ms(), ts);
    int tid = gw_log_thread_id;
    int p = tid < 0 ? snprintf(line, sizeof(line), "%s [%s] [main] ", ts, gw_log_level_names[level])
                    : snprintf(line, sizeof(line), "%s [%s] [w%d] ", ts, gw_log_level_names[level],
                               tid);
    size_t len = (size_t)p;

    /* A message may carry peer bytes (a header value, a Lua error): control bytes are escaped so
     * that a message is always exactly one line and cannot forge another. 5 bytes stay free for
     * "...\n" plus one. */
    const size_t limit = sizeof(line) - 5;
    for (size_t i = 0; i < mlen; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c >= 0x20 && c != 0x7f) {
            if (len + 1 > limit) {
                truncated = true;
                break;
            }
            line[len++] = (char)c;
        } else if (c == '\n' || c == '\r' || c == '\t') {
            if (len + 2 > limit) {
                truncated = true;
                break;
            }
            line[len++] = '\\';
            line[len++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
        } else {
            if (len + 4 > limit) {
                truncated = true;
                break;
            }
            static const char hex[] = "0123456789abcdef";
            line[len++] = '\\';
            line[len++] = 'x';
            line[len++] = hex[c >> 4];
            line[len++] = hex[c & 15];
        }
    }
    if (truncated) {
        memcpy(line + len, "...", 3);
        len += 3;
    }
    line[len++] = '\n';
    gw_log_write_all(STDERR_FILENO, line, len);
}

size_t gw_json_escape(gw_slice_t s, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (c == '"' || c == '\\') {
            if (cap - o < 2)
                break;
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            if (cap - o < 6)
                break;
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[c >> 4];
            out[o + 5] = hex[c & 15];
            o += 6;
        } else {
            if (cap - o < 1)
                break;
            out[o++] = (char)c;
        }
    }
    return o;
}

void gw_access_log_close(void)
{
    int fd = __atomic_exchange_n(&gw_access_fd, -1, __ATOMIC_SEQ_CST);
    if (fd >= 0 && gw_access_is_file)
        close(fd);
    gw_access_is_file = false;
    gw_access_path[0] = '\0';
}

static int gw_access_log_open_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    return fd < 0 ? -errno : fd;
}

int gw_access_log_open(const char *target)
{
    gw_access_log_close();
    if (target == NULL)
        return 0;

    int fd;
    if (strcmp(target, "stdout") == 0) {
        fd = STDOUT_FILENO;
    } else if (strcmp(target, "stderr") == 0) {
        fd = STDERR_FILENO;
    } else {
        size_t n = strlen(target);
        if (n == 0)
            return -EINVAL;
        if (n >= sizeof(gw_access_path))
            return -ENAMETOOLONG;
        fd = gw_access_log_open_file(target);
        if (fd < 0)
            return fd;
        memcpy(gw_access_path, target, n + 1);
        gw_access_is_file = true;
    }
    __atomic_store_n(&gw_access_fd, fd, __ATOMIC_SEQ_CST);
    return 0;
}

int gw_access_log_reopen(void)
{
    int cur = __atomic_load_n(&gw_access_fd, __ATOMIC_SEQ_CST);
    if (cur < 0 || !gw_access_is_file)
        return 0;
    int fd = gw_access_log_open_file(gw_access_path);
    if (fd < 0)
        return fd; /* keep writing to the old file rather than lose lines */
    int rc = 0;
    /* dup3 replaces `cur` atomically and, unlike dup2, keeps it close-on-exec. */
    if (dup3(fd, cur, O_CLOEXEC) < 0)
        rc = -errno;
    close(fd);
    return rc;
}

bool gw_access_log_enabled(void)
{
    return __atomic_load_n(&gw_access_fd, __ATOMIC_RELAXED) >= 0;
}

/* A line under construction; appends that do not fit are dropped (the field caps below make
 * that unreachable, but the buffer is never overrun either way). */
typedef struct gw_line {
    char *p;
    size_t len;
    size_t cap;
} gw_line_t;

static void gw_line_raw(gw_line_t *l, const char *s, size_t n)
{
    if (n > l->cap - l->len)
        return;
    memcpy(l->p + l->len, s, n);
    l->len += n;
}

#define GW_LINE_LIT(l, s) gw_line_raw((l), (s), sizeof(s) - 1)

/* Appends `s` JSON-escaped and quoted, keeping at most `max` escaped bytes. */
static void gw_line_str(gw_line_t *l, gw_slice_t s, size_t max)
{
    if (l->cap - l->len < 2)
        return;
    l->p[l->len++] = '"';
    size_t room = GW_MIN(max, l->cap - l->len - 1);
    l->len += gw_json_escape(s, l->p + l->len, room);
    l->p[l->len++] = '"';
}

static void gw_line_fmt(gw_line_t *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void gw_line_fmt(gw_line_t *l, const char *fmt, ...)
{
    char tmp[192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        gw_line_raw(l, tmp, GW_MIN((size_t)n, sizeof(tmp) - 1));
}

/* Milliseconds with three decimals, or null for a negative or non-finite value (JSON has no NaN)
 * and for absurd ones that would not print in a few bytes. */
static void gw_line_ms(gw_line_t *l, double v)
{
    if (!isfinite(v) || v < 0 || v >= 1e15)
        GW_LINE_LIT(l, "null");
    else
        gw_line_fmt(l, "%.3f", v);
}

void gw_access_log_write(const gw_access_entry_t *e)
{
    int fd = __atomic_load_n(&gw_access_fd, __ATOMIC_RELAXED);
    if (fd < 0)
        return;

    /* Field caps (escaped bytes) add up to well under the buffer with every fixed part. */
    char buf[GW_ACCESS_LINE_MAX];
    gw_line_t l = {buf, 0, sizeof(buf)};
    char ts[80];
    gw_log_format_time(e->time_ms, ts);

    GW_LINE_LIT(&l, "{\"time\":\"");
    gw_line_raw(&l, ts, strlen(ts));
    GW_LINE_LIT(&l, "\",\"request_id\":");
    gw_line_str(&l, e->request_id, 128);
    GW_LINE_LIT(&l, ",\"client\":");
    gw_line_str(&l, e->client_ip, 128);
    GW_LINE_LIT(&l, ",\"method\":");
    gw_line_str(&l, e->method, 64);
    GW_LINE_LIT(&l, ",\"target\":");
    gw_line_str(&l, e->target, 4096);
    GW_LINE_LIT(&l, ",\"host\":");
    gw_line_str(&l, e->host, 512);
    gw_line_fmt(&l,
                ",\"status\":%d,\"bytes_in\":%llu,\"bytes_out\":%llu,\"duration_ms\":", e->status,
                (unsigned long long)e->bytes_in, (unsigned long long)e->bytes_out);
    gw_line_ms(&l, e->duration_ms);
    GW_LINE_LIT(&l, ",\"route\":");
    gw_line_str(&l, e->route, 256);
    GW_LINE_LIT(&l, ",\"upstream\":");
    gw_line_str(&l, e->upstream, 512);
    GW_LINE_LIT(&l, ",\"backend\":");
    gw_line_str(&l, e->backend, 512);
    GW_LINE_LIT(&l, ",\"upstream_ms\":");
    gw_line_ms(&l, e->upstream_ms);
    gw_line_fmt(&l, ",\"worker\":%d}\n", e->worker);

    gw_log_write_all(fd, buf, l.len);
}

char *gw_asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *m = NULL;
    if (vasprintf(&m, fmt, ap) < 0)
        m = NULL;
    va_end(ap);
    return m;
}
