/*
 * gw_breaker.c — circuit breakers per backend shard (see gw_breaker.h).
 */
#include "gateway/gw_breaker.h"

#include <stddef.h>

#include "gateway/gw_shard.h"
#include "lib/lb_log.h"

struct breaker {
    int state;          /* enum gw_breaker_state, atomic */
    int fails;          /* consecutive failures, atomic */
    uint64_t opened_at; /* ms: when it (re)opened, or when the probe went */
    uint64_t opens;
    uint64_t last_ok;   /* ms: the last success, atomic (gw_breaker_answered_since) */
    uint64_t last_fail; /* ms: the last failure that counted, atomic */
};

static struct breaker brk[GW_MAX_SHARDS];
static int cfg_failures = 5;
static int64_t cfg_open_ms = 2000;

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

void gw_breaker_configure(int failures, int64_t open_ms)
{
    STORE(&cfg_failures, failures);
    STORE(&cfg_open_ms, open_ms);
}

static int valid(int id)
{
    return id >= 0 && id < GW_MAX_SHARDS;
}

int gw_breaker_allow(int id, uint64_t now_ms, uint64_t *retry_ms)
{
    if (!valid(id)) {
        return 1;
    }
    struct breaker *b = &brk[id];
    int st = LOAD(&b->state);
    if (st == GW_BRK_CLOSED || LOAD(&cfg_failures) == 0) {
        return 1;
    }
    uint64_t open_ms = (uint64_t)LOAD(&cfg_open_ms);
    uint64_t at = LOAD(&b->opened_at);
    /* half-open: one probe is out; should it never report (it always does:
     * completion or deadline), another goes after a long grace */
    uint64_t wait = st == GW_BRK_OPEN ? open_ms : open_ms + 60000;
    if (now_ms >= at + wait) {
        if (__atomic_compare_exchange_n(&b->state, &st, GW_BRK_HALF_OPEN, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            STORE(&b->opened_at, now_ms);
            lb_info("circuit of shard '%s' (backend '%s') half-open: sending a probe",
                    gw_shard_name(id), gw_shard_backend(id));
            return 1;
        }
    }
    *retry_ms = now_ms < at + open_ms ? at + open_ms - now_ms : open_ms;
    return 0;
}

void gw_breaker_record(int id, int ok, uint64_t now_ms, const char *why)
{
    if (!valid(id)) {
        return;
    }
    struct breaker *b = &brk[id];
    if (ok) {
        if (LOAD(&b->last_ok) < now_ms) {
            STORE(&b->last_ok, now_ms);
        }
        if (LOAD(&b->fails) != 0) {
            STORE(&b->fails, 0);
        }
        int st = LOAD(&b->state);
        if (st != GW_BRK_CLOSED &&
            __atomic_compare_exchange_n(&b->state, &st, GW_BRK_CLOSED, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            lb_info("circuit of shard '%s' (backend '%s') closed: the shard answers again",
                    gw_shard_name(id), gw_shard_backend(id));
        }
        return;
    }
    STORE(&b->last_fail, now_ms);
    int n = __atomic_add_fetch(&b->fails, 1, __ATOMIC_ACQ_REL);
    int threshold = LOAD(&cfg_failures);
    int st = LOAD(&b->state);
    if (threshold == 0 || st == GW_BRK_OPEN) {
        return;
    }
    if (st == GW_BRK_CLOSED && n < threshold) {
        return;
    }
    STORE(&b->opened_at, now_ms);
    if (__atomic_compare_exchange_n(&b->state, &st, GW_BRK_OPEN, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        __atomic_add_fetch(&b->opens, 1, __ATOMIC_RELAXED);
        lb_warn("circuit of shard '%s' (backend '%s') OPEN after %d consecutive failure(s), "
                "last: %s; failing fast for %lld ms",
                gw_shard_name(id), gw_shard_backend(id), n, why != NULL ? why : "?",
                (long long)LOAD(&cfg_open_ms));
    }
}

int gw_breaker_answered_since(int id, uint64_t since_ms)
{
    return valid(id) && LOAD(&brk[id].last_ok) > since_ms;
}

int gw_breaker_healthy(int id)
{
    if (!valid(id)) {
        return 0;
    }
    uint64_t ok = LOAD(&brk[id].last_ok);
    return ok != 0 && ok >= LOAD(&brk[id].last_fail) && LOAD(&brk[id].state) == GW_BRK_CLOSED;
}

int gw_breaker_known(int id)
{
    return valid(id) && (LOAD(&brk[id].last_ok) != 0 || LOAD(&brk[id].last_fail) != 0 ||
                         LOAD(&brk[id].state) != GW_BRK_CLOSED);
}

enum gw_breaker_state gw_breaker_state(int id)
{
    return valid(id) ? (enum gw_breaker_state)LOAD(&brk[id].state) : GW_BRK_CLOSED;
}

const char *gw_breaker_state_name(enum gw_breaker_state s)
{
    switch (s) {
    case GW_BRK_OPEN:
        return "open";
    case GW_BRK_HALF_OPEN:
        return "half_open";
    default:
        return "closed";
    }
}

int gw_breaker_failures(int id)
{
    return valid(id) ? LOAD(&brk[id].fails) : 0;
}

uint64_t gw_breaker_opens(int id)
{
    return valid(id) ? __atomic_load_n(&brk[id].opens, __ATOMIC_RELAXED) : 0;
}
