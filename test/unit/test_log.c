/*
 * Unit tests for core/log.c: level parsing and filtering, the error line format, JSON escaping
 * (including truncation that never splits an escape), the exact access line for fixed inputs,
 * field truncation, and reopen after rename (log rotation).
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define S(lit) GW_SLICE_LIT(lit)

/* Reads a whole (small) file into buf, NUL-terminated; returns its length. */
static size_t slurp(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    size_t len = 0;
    ssize_t r;
    while (len + 1 < cap && (r = read(fd, buf + len, cap - 1 - len)) > 0)
        len += (size_t)r;
    close(fd);
    buf[len] = '\0';
    return len;
}

static void test_level_parse(void **state)
{
    GW_UNUSED(state);
    assert_int_equal(gw_log_level_parse("debug"), GW_LOG_DEBUG);
    assert_int_equal(gw_log_level_parse("info"), GW_LOG_INFO);
    assert_int_equal(gw_log_level_parse("warn"), GW_LOG_WARN);
    assert_int_equal(gw_log_level_parse("error"), GW_LOG_ERR);
    assert_int_equal(gw_log_level_parse("err"), -1);
    assert_int_equal(gw_log_level_parse("warning"), -1);
    assert_int_equal(gw_log_level_parse("INFO"), -1);
    assert_int_equal(gw_log_level_parse(""), -1);
    assert_int_equal(gw_log_level_parse(NULL), -1);

    gw_log_set_level(GW_LOG_WARN);
    assert_int_equal(gw_log_get_level(), GW_LOG_WARN);
    gw_log_set_level(GW_LOG_INFO);
    assert_int_equal(gw_log_get_level(), GW_LOG_INFO);
}

static void check_escape(gw_slice_t in, size_t cap, const char *want)
{
    char out[256];
    assert_true(cap <= sizeof(out));
    memset(out, 'Z', sizeof(out));
    size_t n = gw_json_escape(in, out, cap);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(out, want, n);
    /* Nothing written past what was reported. */
    if (n < sizeof(out))
        assert_int_equal(out[n], 'Z');
}

static void test_json_escape(void **state)
{
    GW_UNUSED(state);
    check_escape(S("plain text"), 64, "plain text");
    check_escape(S(""), 64, "");
    check_escape(S("a\"b\\c"), 64, "a\\\"b\\\\c");
    check_escape(S("\n\r\t\x01\x1f"), 64, "\\u000a\\u000d\\u0009\\u0001\\u001f");
    check_escape(GW_SLICE("a\0b", 3), 64, "a\\u0000b");
    /* DEL and bytes >= 0x80 are copied as they are. */
    check_escape(S("\x7f\xc3\xa9\xff"), 64, "\x7f\xc3\xa9\xff");
    check_escape(S("</script>"), 64, "</script>");

    /* Truncation stops before an escape that does not fit whole. */
    check_escape(S("ab\"c"), 3, "ab");
    check_escape(S("ab\"c"), 4, "ab\\\"");
    check_escape(S("ab\"c"), 5, "ab\\\"c");
    check_escape(S("a\\"), 2, "a");
    check_escape(S("a\x01z"), 6, "a");
    check_escape(S("a\x01z"), 7, "a\\u0001");
    check_escape(S("a\x01z"), 8, "a\\u0001z");
    check_escape(S("abc"), 2, "ab");
    check_escape(S("abc"), 0, "");
    check_escape(S("\""), 1, "");
}

static const char *tmpdir(void)
{
    static char dir[64];
    if (dir[0] == '\0') {
        strcpy(dir, "/tmp/gw_test_log_XXXXXX");
        assert_non_null(mkdtemp(dir));
    }
    return dir;
}

static gw_access_entry_t fixed_entry(void)
{
    return (gw_access_entry_t){
        .time_ms = 1795362551123ull, /* 2026-11-22T15:49:11.123Z */
        .request_id = S("req-1"),
        .client_ip = S("10.0.0.7"),
        .method = S("GET"),
        .target = S("/api/users?q=\"x\"&y=a\\b"),
        .host = S("example.com"),
        .status = 200,
        .bytes_in = 12,
        .bytes_out = 3456,
        .duration_ms = 12.3456,
        .route = S("api"),
        .upstream = S("api"),
        .backend = S("http://127.0.0.1:9001"),
        .upstream_ms = 10.5,
        .worker = 2,
    };
}

static void test_access_line_exact(void **state)
{
    GW_UNUSED(state);
    char path[128];
    snprintf(path, sizeof(path), "%s/exact.log", tmpdir());
    unlink(path);

    assert_false(gw_access_log_enabled());
    assert_int_equal(gw_access_log_open(path), 0);
    assert_true(gw_access_log_enabled());

    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    mode_t mask = umask(0);
    umask(mask);
    assert_int_equal(st.st_mode & 0777, 0644 & ~mask);

    gw_access_entry_t e = fixed_entry();
    gw_access_log_write(&e);

    /* No upstream: empty strings, null upstream_ms; control bytes escaped. */
    gw_access_entry_t g = {
        .time_ms = 0,
        .method = S("GET"),
        .target = S("/\n"),
        .status = 404,
        .duration_ms = 0.25,
        .upstream_ms = -1,
        .worker = 0,
    };
    gw_access_log_write(&g);
    gw_access_log_close();
    assert_false(gw_access_log_enabled());

    /* Writing while closed is a no-op. */
    gw_access_log_write(&e);

    char buf[4096];
    slurp(path, buf, sizeof(buf));
    const char *want =
        "{\"time\":\"2026-11-22T15:49:11.123Z\",\"request_id\":\"req-1\",\"client\":\"10.0.0.7\","
        "\"method\":\"GET\",\"target\":\"/api/"
        "users?q=\\\"x\\\"&y=a\\\\b\",\"host\":\"example.com\","
        "\"status\":200,\"bytes_in\":12,\"bytes_out\":3456,\"duration_ms\":12.346,\"route\":"
        "\"api\","
        "\"upstream\":\"api\",\"backend\":\"http://127.0.0.1:9001\",\"upstream_ms\":10.500,\"worker\":2}\n"
        "{\"time\":\"1970-01-01T00:00:00.000Z\",\"request_id\":\"\",\"client\":\"\","
        "\"method\":\"GET\",\"target\":\"/\\u000a\",\"host\":\"\",\"status\":404,\"bytes_in\":0,"
        "\"bytes_out\":0,\"duration_ms\":0.250,\"route\":\"\",\"upstream\":\"\","
        "\"backend\":\"\",\"upstream_ms\":null,\"worker\":0}\n";
    assert_string_equal(buf, want);
    unlink(path);
}

static void test_access_truncates_long_fields(void **state)
{
    GW_UNUSED(state);
    char path[128];
    snprintf(path, sizeof(path), "%s/long.log", tmpdir());
    unlink(path);
    assert_int_equal(gw_access_log_open(path), 0);

    /* A 20000-byte target of quotes (each escapes to 2 bytes) and huge other fields. */
    static char big[20000];
    memset(big, '"', sizeof(big));
    static char ctl[20000];
    memset(ctl, '\x01', sizeof(ctl));
    gw_access_entry_t e = fixed_entry();
    e.target = GW_SLICE(big, sizeof(big));
    e.host = GW_SLICE(ctl, sizeof(ctl));
    e.request_id = GW_SLICE(big, sizeof(big));
    e.client_ip = GW_SLICE(big, sizeof(big));
    e.method = GW_SLICE(big, sizeof(big));
    e.route = GW_SLICE(ctl, sizeof(ctl));
    e.upstream = GW_SLICE(big, sizeof(big));
    e.duration_ms = 1.0 / 0.0;
    e.upstream_ms = 0.0 / 0.0;
    gw_access_log_write(&e);
    gw_access_log_close();

    static char buf[16384];
    size_t len = slurp(path, buf, sizeof(buf));
    assert_true(len <= 8192);
    assert_int_equal(buf[len - 1], '\n');
    assert_int_equal(buf[len - 2], '}');
    assert_non_null(strstr(buf, "\"duration_ms\":null,"));
    assert_non_null(strstr(buf, "\"upstream_ms\":null,"));
    assert_non_null(strstr(buf, "\"worker\":2}\n"));

    /* The target holds whole escapes only: an even run of \" pairs, then the closing quote. */
    const char *t = strstr(buf, "\"target\":\"");
    assert_non_null(t);
    t += strlen("\"target\":\"");
    size_t pairs = 0;
    while (t[0] == '\\' && t[1] == '"') {
        t += 2;
        pairs++;
    }
    assert_true(pairs > 100);
    assert_memory_equal(t, "\",\"host\":\"", 10);
    /* The host holds whole \u0001 escapes only. */
    t += 10;
    size_t escapes = 0;
    while (memcmp(t, "\\u0001", 6) == 0) {
        t += 6;
        escapes++;
    }
    assert_true(escapes > 10);
    assert_memory_equal(t, "\",\"status\":200,", 15);
    unlink(path);
}

static void test_access_reopen_after_rename(void **state)
{
    GW_UNUSED(state);
    char path[128], rotated[128];
    snprintf(path, sizeof(path), "%s/access.log", tmpdir());
    snprintf(rotated, sizeof(rotated), "%s/access.log.1", tmpdir());
    unlink(path);
    unlink(rotated);

    assert_int_equal(gw_access_log_open(path), 0);
    gw_access_entry_t e = fixed_entry();
    e.worker = 1;
    gw_access_log_write(&e);
    assert_int_equal(rename(path, rotated), 0);
    /* Until reopen, lines still go to the renamed file. */
    e.worker = 2;
    gw_access_log_write(&e);
    assert_int_equal(gw_access_log_reopen(), 0);
    e.worker = 3;
    gw_access_log_write(&e);
    e.worker = 4;
    gw_access_log_write(&e);

    char buf[4096];
    slurp(rotated, buf, sizeof(buf));
    assert_non_null(strstr(buf, "\"worker\":1}\n"));
    assert_non_null(strstr(buf, "\"worker\":2}\n"));
    assert_null(strstr(buf, "\"worker\":3}"));
    slurp(path, buf, sizeof(buf));
    assert_null(strstr(buf, "\"worker\":2}"));
    assert_non_null(strstr(buf, "\"worker\":3}\n{"));
    assert_non_null(strstr(buf, "\"worker\":4}\n"));

    /* Reopen keeps the fd close-on-exec: find it by its target. */
    bool found = false;
    for (int fd = 3; fd < 1024 && !found; fd++) {
        char link[64], dest[256];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, dest, sizeof(dest) - 1);
        if (n <= 0)
            continue;
        dest[n] = '\0';
        if (strcmp(dest, path) == 0) {
            found = true;
            assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        }
    }
    assert_true(found);

    gw_access_log_close();
    assert_int_equal(gw_access_log_reopen(), 0); /* closed: nothing to do */
    unlink(path);
    unlink(rotated);
}

static void test_access_reopen_failure_keeps_old_file(void **state)
{
    GW_UNUSED(state);
    char dir[128], moved[128], path[160], old[160];
    snprintf(dir, sizeof(dir), "%s/d", tmpdir());
    snprintf(moved, sizeof(moved), "%s/d2", tmpdir());
    snprintf(path, sizeof(path), "%s/access.log", dir);
    snprintf(old, sizeof(old), "%s/access.log", moved);
    assert_int_equal(mkdir(dir, 0755), 0);
    assert_int_equal(gw_access_log_open(path), 0);
    /* The directory disappears: reopen reports -ENOENT and lines keep going to the open file. */
    assert_int_equal(rename(dir, moved), 0);
    assert_int_equal(gw_access_log_reopen(), -ENOENT);
    assert_true(gw_access_log_enabled());
    gw_access_entry_t e = fixed_entry();
    e.worker = 7;
    gw_access_log_write(&e);
    gw_access_log_close();

    char buf[4096];
    slurp(old, buf, sizeof(buf));
    assert_non_null(strstr(buf, "\"worker\":7}\n"));
    unlink(old);
    rmdir(moved);
}

#define ROT_THREADS 4
#define ROT_LINES 2000
#define ROT_FILES 20

static void *rotation_writer(void *arg)
{
    gw_access_entry_t e = fixed_entry();
    e.worker = (int)(intptr_t)arg;
    for (int i = 0; i < ROT_LINES; i++)
        gw_access_log_write(&e);
    return NULL;
}

/* Workers keep writing while the main thread rotates: every line lands whole in exactly one of
 * the files, none is lost, none is torn. */
static void test_access_reopen_while_writing(void **state)
{
    GW_UNUSED(state);
    char path[128], rotated[160];
    snprintf(path, sizeof(path), "%s/busy.log", tmpdir());
    unlink(path);
    assert_int_equal(gw_access_log_open(path), 0);

    pthread_t th[ROT_THREADS];
    for (intptr_t t = 0; t < ROT_THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, rotation_writer, (void *)t), 0);
    for (int r = 0; r < ROT_FILES; r++) {
        snprintf(rotated, sizeof(rotated), "%s.%d", path, r);
        assert_int_equal(rename(path, rotated), 0);
        assert_int_equal(gw_access_log_reopen(), 0);
        usleep(200);
    }
    for (int t = 0; t < ROT_THREADS; t++)
        pthread_join(th[t], NULL);
    gw_access_log_close();

    static char buf[ROT_THREADS * ROT_LINES * 400];
    size_t per_worker[ROT_THREADS] = {0};
    for (int r = 0; r <= ROT_FILES; r++) {
        if (r < ROT_FILES)
            snprintf(rotated, sizeof(rotated), "%s.%d", path, r);
        else
            snprintf(rotated, sizeof(rotated), "%s", path);
        slurp(rotated, buf, sizeof(buf));
        for (char *line = buf, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
            const char *w = strstr(line, "\"worker\":");
            assert_non_null(w);
            assert_true(w < nl);
            int id = atoi(w + 9);
            assert_true(id >= 0 && id < ROT_THREADS);
            assert_memory_equal(nl - 1, "}", 1);
            assert_memory_equal(line, "{\"time\":", 8);
            per_worker[id]++;
        }
        unlink(rotated);
    }
    for (int t = 0; t < ROT_THREADS; t++)
        assert_int_equal(per_worker[t], ROT_LINES);
}

static void test_access_open_errors_and_std(void **state)
{
    GW_UNUSED(state);
    assert_int_equal(gw_access_log_open("/nonexistent-dir-gw/x.log"), -ENOENT);
    assert_false(gw_access_log_enabled());
    assert_int_equal(gw_access_log_open(""), -EINVAL);
    assert_false(gw_access_log_enabled());
    assert_int_equal(gw_access_log_open(NULL), 0);
    assert_false(gw_access_log_enabled());
    assert_int_equal(gw_access_log_open("stderr"), 0);
    assert_true(gw_access_log_enabled());
    /* Reopen of stdout/stderr does nothing; close must not close fd 2. */
    assert_int_equal(gw_access_log_reopen(), 0);
    gw_access_log_close();
    assert_false(gw_access_log_enabled());
    assert_true(fcntl(STDERR_FILENO, F_GETFD) >= 0);
}

/* Runs fn with stderr redirected to a file and returns what it wrote. */
static size_t capture_stderr(void (*fn)(void), char *buf, size_t cap)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/stderr.txt", tmpdir());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    close(fd);
    fn();
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    size_t n = slurp(path, buf, cap);
    unlink(path);
    return n;
}

static void log_some(void)
{
    gw_log_set_level(GW_LOG_WARN);
    gw_log_set_thread_id(1);
    gw_log_info("not shown %d", 1);
    gw_log_debug("not shown %d", 2);
    gw_log_warn("backend %s down", "b1");
    gw_log_set_thread_id(-1);
    gw_log_err("evil\nline\x01");
    gw_log_set_level(GW_LOG_DEBUG);
    gw_log_debug("dbg");
    gw_log_set_level(GW_LOG_INFO);
}

static void log_long(void)
{
    static char big[10000];
    memset(big, 'x', sizeof(big) - 1);
    gw_log_warn("%s", big);
}

static void test_error_log_format(void **state)
{
    GW_UNUSED(state);
    char buf[8192];
    capture_stderr(log_some, buf, sizeof(buf));

    regex_t re;
    const char *pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
                          "\\[warn\\] \\[w1\\] backend b1 down\n"
                          "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{12}Z \\[error\\] \\[main\\] "
                          "evil\\\\nline\\\\x01\n"
                          "[0-9-]{10}T[0-9:.]{12}Z \\[debug\\] \\[main\\] dbg\n$";
    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED), 0);
    if (regexec(&re, buf, 0, NULL, 0) != 0)
        fail_msg("unexpected error log:\n%s", buf);
    regfree(&re);

    size_t n = capture_stderr(log_long, buf, sizeof(buf));
    assert_true(n <= 4096);
    assert_int_equal(buf[n - 1], '\n');
    assert_memory_equal(buf + n - 4, "...\n", 4);
    assert_non_null(strstr(buf, "[warn] [main] xxxx"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_level_parse),
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_access_line_exact),
        cmocka_unit_test(test_access_truncates_long_fields),
        cmocka_unit_test(test_access_reopen_after_rename),
        cmocka_unit_test(test_access_reopen_failure_keeps_old_file),
        cmocka_unit_test(test_access_reopen_while_writing),
        cmocka_unit_test(test_access_open_errors_and_std),
        cmocka_unit_test(test_error_log_format),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(tmpdir());
    return rc;
}
