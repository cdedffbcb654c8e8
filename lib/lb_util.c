/*
 * lb_util.c — clocks, backoff, allocation, ids, random numbers.
 */
#include "lib/lb_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "lib/lb_log.h"

uint64_t lb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t lb_now_us(void)
{
    return lb_now_ns() / 1000u;
}

uint64_t lb_now_ms(void)
{
    return lb_now_ns() / 1000000u;
}

int64_t lb_backoff_next(int64_t *cur, int64_t min_ms, int64_t max_ms)
{
    *cur = *cur <= 0 ? min_ms : *cur * 2;
    if (*cur > max_ms) {
        *cur = max_ms;
    }
    if (*cur < 1) {
        *cur = 1;
    }
    return *cur / 2 + (int64_t)(lb_rand64() % (uint64_t)(*cur / 2 + 1));
}

static void out_of_memory(size_t size)
{
    lb_error("out of memory (%zu bytes): aborting", size);
    abort();
}

void *lb_xmalloc(size_t size)
{
    void *p = malloc(size != 0 ? size : 1);
    if (p == NULL) {
        out_of_memory(size);
    }
    return p;
}

void *lb_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n != 0 ? n : 1, size != 0 ? size : 1);
    if (p == NULL) {
        out_of_memory(n * size);
    }
    return p;
}

char *lb_xstrdup(const char *s)
{
    char *p = strdup(s);
    if (p == NULL) {
        out_of_memory(strlen(s) + 1);
    }
    return p;
}

char *lb_xstrndup(const char *s, size_t n)
{
    char *p = strndup(s, n);
    if (p == NULL) {
        out_of_memory(n + 1);
    }
    return p;
}

/* The wall clock as RFC 3339 UTC with `digits` fraction digits (3 or 6). */
static void now_text(char *buf, size_t len, int digits)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char tmp[32];
    strftime(tmp, sizeof(tmp), "%Y-%m-%dT%H:%M:%S", &tm);
    long frac = digits == 3 ? ts.tv_nsec / 1000000L : ts.tv_nsec / 1000L;
    snprintf(buf, len, "%s.%0*ldZ", tmp, digits, frac);
}

void lb_now_rfc3339(char *buf, size_t len)
{
    now_text(buf, len, 3);
}

void lb_now_ts(char *buf, size_t len)
{
    now_text(buf, len, 6);
}

static _Thread_local uint64_t rng[4];
static _Thread_local int rng_seeded;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t lb_rand64(void)
{
    if (!rng_seeded) {
        if (getrandom(rng, sizeof(rng), 0) != (ssize_t)sizeof(rng)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            rng[0] = (uint64_t)ts.tv_nsec ^ 0x9e3779b97f4a7c15ULL;
            rng[1] = (uint64_t)ts.tv_sec * 0xbf58476d1ce4e5b9ULL;
            rng[2] = (uint64_t)(uintptr_t)&ts;
            rng[3] = 0x94d049bb133111ebULL;
        }
        rng_seeded = 1;
    }
    uint64_t r = rotl(rng[1] * 5, 7) * 9;
    uint64_t t = rng[1] << 17;
    rng[2] ^= rng[0];
    rng[3] ^= rng[1];
    rng[1] ^= rng[2];
    rng[0] ^= rng[3];
    rng[2] ^= t;
    rng[3] = rotl(rng[3], 45);
    return r;
}

void lb_gen_id(char *buf)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t a = lb_rand64(), b = lb_rand64();
    for (int i = 0; i < 16; i++) {
        buf[i] = hex[(a >> (i * 4)) & 15];
        buf[16 + i] = hex[(b >> (i * 4)) & 15];
    }
    buf[32] = '\0';
}

char *lb_put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0) {
        *p++ = tmp[--n];
    }
    return p;
}
