/*
 * test_lb_util.c — lib/ helpers: the monotonic clock in its three units,
 * ms → timeval, the reconnect backoff, the allocators that abort on
 * out-of-memory, and the atomic file write (lib/lb_file.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/lb_file.h"
#include "lib/lb_util.h"

static void test_clock_units_agree(void **state)
{
    (void)state;
    uint64_t ms = lb_now_ms(), us = lb_now_us(), ns = lb_now_ns();
    assert_true(us / 1000 >= ms && us / 1000 - ms <= 1000);
    assert_true(ns / 1000 >= us && ns / 1000 - us <= 1000000);
    uint64_t a = lb_now_ns(), b = lb_now_ns();
    assert_true(b >= a); /* monotonic */
}

static void test_tv_ms(void **state)
{
    (void)state;
    struct timeval tv = lb_tv_ms(0);
    assert_int_equal(tv.tv_sec, 0);
    assert_int_equal(tv.tv_usec, 0);
    tv = lb_tv_ms(1500);
    assert_int_equal(tv.tv_sec, 1);
    assert_int_equal(tv.tv_usec, 500000);
    tv = lb_tv_ms(999);
    assert_int_equal(tv.tv_sec, 0);
    assert_int_equal(tv.tv_usec, 999000);
    tv = lb_tv_ms(3600000);
    assert_int_equal(tv.tv_sec, 3600);
    assert_int_equal(tv.tv_usec, 0);
}

static void test_backoff_doubles_to_max_with_jitter(void **state)
{
    (void)state;
    int64_t cur = 0;
    const int64_t want[] = {100, 200, 400, 800, 1000, 1000};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        int64_t wait = lb_backoff_next(&cur, 100, 1000);
        assert_int_equal(cur, want[i]);
        assert_true(wait >= cur / 2 && wait <= cur);
    }
    cur = 0; /* success resets it */
    assert_true(lb_backoff_next(&cur, 100, 1000) <= 100);
    assert_int_equal(cur, 100);
    /* the jitter spreads: 200 draws at 1000 ms are not all equal */
    int64_t lo = INT64_MAX, hi = 0;
    for (int i = 0; i < 200; i++) {
        cur = 1000;
        int64_t w = lb_backoff_next(&cur, 100, 1000);
        lo = w < lo ? w : lo;
        hi = w > hi ? w : hi;
    }
    assert_true(lo >= 500 && hi <= 1000 && hi > lo);
    cur = 0;
    assert_int_equal(lb_backoff_next(&cur, 1, 1) >= 0, 1); /* 1 ms: no division by zero */
}

static void test_x_allocators(void **state)
{
    (void)state;
    char *s = lb_xstrdup("abc");
    assert_string_equal(s, "abc");
    free(s);
    s = lb_xstrndup("abcdef", 2);
    assert_string_equal(s, "ab");
    free(s);
    int *z = lb_xcalloc(4, sizeof(int));
    assert_int_equal(z[0] | z[1] | z[2] | z[3], 0);
    free(z);
    free(lb_xmalloc(0)); /* never NULL, even for 0 bytes */
}

/* Under ASan/TSan an impossible allocation is a sanitizer report unless the
 * allocator may return NULL as libc's does (read by the runtime at start). */
const char *__asan_default_options(void);
const char *__tsan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}
const char *__tsan_default_options(void)
{
    return "allocator_may_return_null=1";
}

/* An allocation that cannot succeed logs and aborts the process. */
static void test_x_allocator_aborts_on_out_of_memory(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 2); /* the log line */
        }
        volatile size_t huge = SIZE_MAX / 2;
        void *p = lb_xcalloc(huge, 4); /* overflows: calloc refuses */
        _exit(p != NULL ? 3 : 4);      /* not reached */
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    static char buf[256];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        n += e->d_name[0] != '.';
    }
    closedir(d);
    return n;
}

static void test_write_file_atomic(void **state)
{
    (void)state;
    char dir[] = "/tmp/lb_file_test.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], err[256];
    snprintf(path, sizeof(path), "%s/map.yaml", dir);

    assert_int_equal(lb_write_file_atomic(path, "first\n", 6, err, sizeof(err)), 0);
    assert_string_equal(slurp(path), "first\n");
    assert_int_equal(lb_write_file_atomic(path, "second", 6, err, sizeof(err)), 0);
    assert_string_equal(slurp(path), "second"); /* replaced whole */
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    assert_int_equal(entries(dir), 1); /* no temporary file left */
    assert_int_equal(lb_write_file_atomic(path, "", 0, err, sizeof(err)), 0);
    assert_string_equal(slurp(path), "");

    /* the target is a directory: rename fails, the old content stays and
     * the temporary file is removed */
    char sub[160];
    snprintf(sub, sizeof(sub), "%s/sub", dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    assert_int_equal(lb_write_file_atomic(sub, "x", 1, err, sizeof(err)), -1);
    assert_non_null(strstr(err, sub));
    assert_int_equal(entries(dir), 2);

    /* a directory that does not exist: refused, naming the file */
    char missing[160];
    snprintf(missing, sizeof(missing), "%s/none/map.yaml", dir);
    assert_int_equal(lb_write_file_atomic(missing, "x", 1, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "none/map.yaml"));

    rmdir(sub);
    unlink(path);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clock_units_agree),
        cmocka_unit_test(test_tv_ms),
        cmocka_unit_test(test_backoff_doubles_to_max_with_jitter),
        cmocka_unit_test(test_x_allocators),
        cmocka_unit_test(test_x_allocator_aborts_on_out_of_memory),
        cmocka_unit_test(test_write_file_atomic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
