/*
 * lb_util.h — small helpers: clocks, timer values, backoff, allocation that
 * aborts on out-of-memory, ids, random numbers, printf-free formatting.
 */
#ifndef LB_UTIL_H
#define LB_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/time.h>

/* The one monotonic clock (CLOCK_MONOTONIC) of deadlines, timers, rate
 * limits and latencies, in three units. */
uint64_t lb_now_ms(void);
uint64_t lb_now_us(void);
uint64_t lb_now_ns(void);

/* `ms` milliseconds (>= 0) as a struct timeval, for event_add(). */
static inline struct timeval lb_tv_ms(int64_t ms)
{
    return (struct timeval){(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
}

/* Exponential backoff with jitter for reconnects.  *cur is the caller's
 * state (0 = no failure yet; set it back to 0 on success): it becomes
 * min_ms, then doubles up to max_ms.  Returns the wait, drawn from
 * [*cur/2, *cur] so that workers do not reconnect in step. */
int64_t lb_backoff_next(int64_t *cur, int64_t min_ms, int64_t max_ms);

/* Allocation for objects of a fixed or configuration-bounded size
 * (docs/design.md, "Out of memory"): on failure they log and abort(). */
void *lb_xmalloc(size_t size) __attribute__((malloc, returns_nonnull));
void *lb_xcalloc(size_t n, size_t size) __attribute__((malloc, returns_nonnull));
char *lb_xstrdup(const char *s) __attribute__((malloc, returns_nonnull));
char *lb_xstrndup(const char *s, size_t n) __attribute__((malloc, returns_nonnull));
/* Wall-clock time as RFC 3339 UTC with milliseconds ("2026-11-23T10:00:00.123Z"). */
void lb_now_rfc3339(char *buf, size_t len);

/* The same with microseconds ("2026-11-23T10:00:00.123456Z"): the one
 * width of every timestamp in items (md_item.c). */
void lb_now_ts(char *buf, size_t len);

/* Per-thread xoshiro256** seeded from getrandom(). */
uint64_t lb_rand64(void);
/* A random 128-bit id as 32 lowercase hex characters + NUL (buf >= 33). */
void lb_gen_id(char *buf);

/* Formatting on the hot path without printf: each writes at p (the caller
 * has room: 20 bytes for a number) and returns the end.  Not NUL-terminated. */
char *lb_put_u64(char *p, uint64_t v);
static inline char *lb_put_mem(char *p, const void *s, size_t len)
{
    memcpy(p, s, len);
    return p + len;
}
#define LB_PUT_LIT(p, lit) lb_put_mem((p), (lit), sizeof(lit) - 1)

#endif
