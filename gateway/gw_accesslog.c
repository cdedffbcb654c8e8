/*
 * gw_accesslog.c — JSON access log lines (see gw_accesslog.h).
 */
#include "gateway/gw_accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lib/lb_json.h"
#include "lib/lb_util.h"

/* -1: off; 2: stderr; else our file.  A file's descriptor number never
 * changes once opened: a reopen dup2()s the new file onto it, so a worker
 * writing concurrently writes to the old or the new file, never to a closed
 * or recycled descriptor. */
static int log_fd = 2;
static int own_fd = -1;

int gw_accesslog_configure(const char *spec, char *err, size_t errlen)
{
    if (strcmp(spec, "off") == 0) {
        __atomic_store_n(&log_fd, -1, __ATOMIC_RELEASE);
        return 0;
    }
    if (strcmp(spec, "stderr") == 0) {
        __atomic_store_n(&log_fd, 2, __ATOMIC_RELEASE);
        return 0;
    }
    int fd = open(spec, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(err, errlen, "access_log: cannot open '%s': %s", spec, strerror(errno));
        return -1;
    }
    if (own_fd < 0) {
        own_fd = fd;
    } else {
        dup2(fd, own_fd);
        close(fd);
    }
    __atomic_store_n(&log_fd, own_fd, __ATOMIC_RELEASE);
    return 0;
}

int gw_accesslog_enabled(void)
{
    return __atomic_load_n(&log_fd, __ATOMIC_ACQUIRE) >= 0;
}

/* snprintf at buf+n that never moves n past cap (truncation is silent). */
static size_t put_fmt(char *buf, size_t n, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static size_t put_fmt(char *buf, size_t n, size_t cap, const char *fmt, ...)
{
    if (n >= cap) {
        return cap;
    }
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, cap - n, fmt, ap);
    va_end(ap);
    if (m < 0) {
        return n;
    }
    return n + (size_t)m < cap ? n + (size_t)m : cap - 1;
}

/* Append s as a JSON string (quoted, escaped, at most max bytes of input). */
static size_t put_str(char *buf, size_t n, size_t cap, const char *s, size_t max)
{
    if (s == NULL) {
        return put_fmt(buf, n, cap, "null");
    }
    if (n + 1 < cap) {
        buf[n++] = '"';
    }
    for (size_t i = 0; s[i] != '\0' && i < max && n + 8 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            n = put_fmt(buf, n, cap, "\\u%04x", c);
        } else if (c < 0x80) {
            buf[n++] = (char)c;
        } else {
            /* whole UTF-8 sequences pass through; a byte that starts none
             * (or one cut at `max`) is written as the text \xNN, so that
             * every line stays valid JSON in valid UTF-8 */
            size_t want = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
            size_t have = strnlen(s + i, want);
            if (have == want && i + want <= max && lb_utf8_check(s + i, want) == want) {
                memcpy(buf + n, s + i, want);
                n += want;
                i += want - 1;
            } else {
                n = put_fmt(buf, n, cap, "\\\\x%02x", c);
            }
        }
    }
    if (n + 1 < cap) {
        buf[n++] = '"';
    }
    return n;
}

void gw_accesslog_write(const struct gw_access *a)
{
    int fd = __atomic_load_n(&log_fd, __ATOMIC_ACQUIRE);
    if (fd < 0) {
        return;
    }
    char line[1536], ts[40];
    size_t cap = sizeof(line) - 2, n = 0;
    lb_now_rfc3339(ts, sizeof(ts));
    n = put_fmt(line, n, cap, "{\"ts\":\"%s\",\"type\":\"access\",\"request_id\":", ts);
    n = put_str(line, n, cap, a->request_id, 128);
    n = put_fmt(line, n, cap, ",\"caller\":");
    n = put_str(line, n, cap, a->caller, 64);
    n = put_fmt(line, n, cap, ",\"method\":");
    n = put_str(line, n, cap, a->method, 16);
    n = put_fmt(line, n, cap, ",\"path\":");
    n = put_str(line, n, cap, a->path, 256);
    n = put_fmt(line, n, cap, ",\"domain\":");
    n = put_str(line, n, cap, a->domain, 64);
    n = put_fmt(line, n, cap, ",\"op\":");
    n = put_str(line, n, cap, a->op, 16);
    n = put_fmt(line, n, cap,
                ",\"status\":%d,\"latency_ms\":%.3f,\"shards\":%d,\"shard\":", a->status,
                (double)a->usec / 1000.0, a->shards);
    n = put_str(line, n, cap, a->shard, 64);
    n = put_fmt(line, n, cap, ",\"error\":");
    n = put_str(line, n, cap, a->error, 64);
    if (n > cap - 1) {
        n = cap - 1;
    }
    line[n++] = '}';
    line[n++] = '\n';
    ssize_t w = write(fd, line, n);
    (void)w; /* a log line that cannot be written is dropped, not retried */
}
