/*
 * gw_shared.h — the fleet's shared state: one worker's client of the Redis
 * named by `control.redis` (docs/design.md, "Shared state of a fleet").
 *
 * When the config has a `control` section, several polygate instances run
 * behind one load balancer, and what must hold for the fleet rather than one
 * process lives in that Redis: the Idempotency-Key store
 * (gw_idempotency.h) and the per-key rate-limit buckets (gw_auth.h).  Each
 * worker owns one connection on its own loop (hiredis async, pipelined), set
 * up like a Redis adapter's (SELECT, then a PING that must be answered within
 * the connect deadline) and re-opened with backoff and jitter when it is
 * lost.  Every command is a Lua script run with EVALSHA (atomic in Redis);
 * a server that lost its script cache (NOSCRIPT) gets it again as EVAL.
 *
 * The contract, as an adapter's: an accepted call completes exactly once,
 * later, on the loop (with the reply, or with DOWN / TIMEOUT / ERROR),
 * never from inside gw_shared_eval(); a refused call (the store is known to
 * be down: no connection, waiting out a backoff) returns -1 and never calls
 * back.  A call waits at most its timeout: a reply that comes later is
 * dropped.  A connection on which a call waited its whole timeout without
 * any reply at all is dropped and opened again (a peer gone silent).
 */
#ifndef GW_SHARED_H
#define GW_SHARED_H

#include <stddef.h>
#include <stdint.h>

struct cf_config;
struct event_base;
struct redisReply;
struct gw_shared;

enum gw_shared_status {
    GW_SHARED_OK,      /* the reply is there (an error reply too: ERROR) */
    GW_SHARED_DOWN,    /* no connection, or it was lost before the reply */
    GW_SHARED_TIMEOUT, /* no reply within the call's timeout */
    GW_SHARED_ERROR,   /* Redis answered an error (logged) */
};

/* reply: borrowed for the callback; NULL unless GW_SHARED_OK. */
typedef void (*gw_shared_cb)(void *arg, enum gw_shared_status st, const struct redisReply *reply);

/* A Lua script, defined once by the module that runs it: its SHA-1 is
 * computed on first use. */
struct gw_shared_script {
    const char *text;
    char sha[41];
    int ready; /* atomic */
};
#define GW_SHARED_SCRIPT(src)                                                                      \
    {                                                                                              \
        .text = (src)                                                                              \
    }

/* The worker's client of cf->control.redis (NULL, with err, when the URL is
 * not redis://host[:port][/db]); it starts connecting at once. */
struct gw_shared *gw_shared_new(struct event_base *base, const struct cf_config *cf, int worker,
                                char *err, size_t errlen);
/* Shutting down: the connection is closed, its calls complete with DOWN
 * (now, from inside this call) and later calls are refused. */
void gw_shared_close(struct gw_shared *sh);
void gw_shared_free(struct gw_shared *sh);

/* "polygate:<control.prefix>:" — the start of every key of the fleet. */
const char *gw_shared_prefix(const struct gw_shared *sh, size_t *len);

/* Run `script` on one key with argc arguments.  0: cb follows (cb may be
 * NULL: nobody waits for the reply; timeout_ms <= 0: no timeout), or -1:
 * refused, the store is down now. */
int gw_shared_eval(struct gw_shared *sh, struct gw_shared_script *script, const char *key,
                   size_t keylen, int argc, const char *const *argv, const size_t *argl,
                   int64_t timeout_ms, gw_shared_cb cb, void *arg)
    __attribute__((warn_unused_result));

/* Metrics: workers with a client, and how many of those have their
 * connection up (its set-up answered). */
void gw_shared_stats(int *clients, int *up);

#endif
