/*
 * lb_util.h — small helpers: clocks, ids, random numbers, printf-free formatting.
 */
#ifndef GW_UTIL_H
#define GW_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Monotonic milliseconds. */
uint64_t gw_now_ms(void);
/* Wall-clock time as RFC 3339 UTC with milliseconds ("2026-11-23T10:00:00.123Z"). */
void gw_now_rfc3339(char *buf, size_t len);

/* The same with microseconds ("2026-11-23T10:00:00.123456Z"): the one
 * width of every timestamp in items (md_item.c). */
void gw_now_ts(char *buf, size_t len);

/* Per-thread xoshiro256** seeded from getrandom(). */
uint64_t gw_rand64(void);
/* A random 128-bit id as 32 lowercase hex characters + NUL (buf >= 33). */
void gw_gen_id(char *buf);

/* Formatting on the hot path without printf: each writes at p (the caller
 * has room: 20 bytes for a number) and returns the end.  Not NUL-terminated. */
char *gw_put_u64(char *p, uint64_t v);
static inline char *gw_put_mem(char *p, const void *s, size_t len)
{
    memcpy(p, s, len);
    return p + len;
}
#define GW_PUT_LIT(p, lit) gw_put_mem((p), (lit), sizeof(lit) - 1)

#endif
