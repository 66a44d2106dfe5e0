/*
 * log: the error log (levels, one line per message, on stderr) and the access log (one JSON
 * object per line, to a file, stdout or stderr). Both are safe to call from any thread: every
 * line is formatted into a local buffer and written with a single write(2), so lines from
 * different workers never interleave. The access log file is opened with O_APPEND and reopened
 * by gw_access_log_reopen (SIGUSR1, for log rotation).
 */
#ifndef GW_LOG_H
#define GW_LOG_H

#include <stdint.h>

#include "common.h"

enum { GW_LOG_DEBUG = 0, GW_LOG_INFO = 1, GW_LOG_WARN = 2, GW_LOG_ERR = 3 };

void gw_log_set_level(int level);
int gw_log_get_level(void);
/** Parses "debug" | "info" | "warn" | "error"; returns -1 for anything else. */
int gw_log_level_parse(const char *name);
/** The worker id shown in log lines of the calling thread (-1: main thread). */
void gw_log_set_thread_id(int id);

/**
 * Writes one line to stderr when `level` passes the filter:
 *   2026-11-22T15:49:11.123Z [warn] [w1] message
 * Control bytes in the message are escaped (\n, \r, \t, \xNN) so a message is always one line;
 * a message longer than about 4 KiB is cut and ends in "...".
 */
void gw_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** A malloc'd formatted message (for error strings handed to a caller), or NULL on OOM. */
char *gw_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define gw_log_debug(...)                                                                          \
    do {                                                                                           \
        if (gw_log_get_level() <= GW_LOG_DEBUG)                                                    \
            gw_log(GW_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)
#define gw_log_info(...) gw_log(GW_LOG_INFO, __VA_ARGS__)
#define gw_log_warn(...) gw_log(GW_LOG_WARN, __VA_ARGS__)
#define gw_log_err(...) gw_log(GW_LOG_ERR, __VA_ARGS__)

typedef struct gw_access_entry {
    uint64_t time_ms;   /* wall clock, ms since the epoch */
    gw_slice_t request_id;
    gw_slice_t client_ip;
    gw_slice_t method;
    gw_slice_t target;  /* as received from the client */
    gw_slice_t host;
    int status;
    uint64_t bytes_in;  /* request body bytes read */
    uint64_t bytes_out; /* response bytes written, head included */
    double duration_ms;
    gw_slice_t route;    /* route name, empty if none */
    gw_slice_t upstream; /* upstream name, empty if none */
    gw_slice_t backend;  /* URL of the last backend tried, empty if none */
    double upstream_ms;  /* time to the backend's response head, -1 if none */
    int worker;
} gw_access_entry_t;

/**
 * Opens the access log: "stdout", "stderr", or a file path (created 0644, appended to).
 * NULL disables it. Returns 0 or a negative errno. Call from the main thread before workers start.
 */
int gw_access_log_open(const char *target);
/** Reopens a file target (after rotation). Safe while workers write. Returns 0 or -errno. */
int gw_access_log_reopen(void);
/** Closes the access log (a file only; stdout/stderr stay open). Call when no thread writes. */
void gw_access_log_close(void);
bool gw_access_log_enabled(void);
/** Writes one JSON line; strings are JSON-escaped. */
void gw_access_log_write(const gw_access_entry_t *e);

/**
 * JSON-escapes `s` into out (without quotes). Returns the number of bytes written; stops early
 * (without splitting an escape) when out is full. Control bytes become \u00XX; bytes >= 0x80 are
 * copied as they are.
 */
size_t gw_json_escape(gw_slice_t s, char *out, size_t cap);

#endif
