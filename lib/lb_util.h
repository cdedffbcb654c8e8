/*
 * lb_util.h — small helpers: clocks, ids, random numbers, printf-free formatting.
 */
#ifndef LB_UTIL_H
#define LB_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Monotonic milliseconds. */
uint64_t lb_now_ms(void);
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
