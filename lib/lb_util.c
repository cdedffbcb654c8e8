/*
 * lb_util.c — clocks, ids, random numbers.
 */
#include "lib/lb_util.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

uint64_t lb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
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
