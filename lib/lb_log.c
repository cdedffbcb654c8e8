/*
 * lb_log.c — one-line logs to stderr.
 */
#include "lib/lb_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static int level = LB_LOG_INFO;

void lb_log_set_level(const char *name)
{
    int lv = LB_LOG_INFO;
    if (strcmp(name, "debug") == 0) {
        lv = LB_LOG_DEBUG;
    } else if (strcmp(name, "warn") == 0) {
        lv = LB_LOG_WARN;
    } else if (strcmp(name, "error") == 0) {
        lv = LB_LOG_ERROR;
    }
    __atomic_store_n(&level, lv, __ATOMIC_RELAXED);
}

int lb_log_enabled(enum lb_log_level lv)
{
    return (int)lv >= __atomic_load_n(&level, __ATOMIC_RELAXED);
}

void lb_log(enum lb_log_level lv, const char *fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    if (!lb_log_enabled(lv)) {
        return;
    }
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ %s ", ts.tv_nsec / 1000000L,
                          names[lv]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    if (m < 0) {
        return;
    }
    n += (size_t)m;
    if (n > sizeof(line) - 2) {
        n = sizeof(line) - 2;
    }
    line[n++] = '\n';
    fwrite(line, 1, n, stderr); /* one write per line: lines of threads do not interleave */
}
