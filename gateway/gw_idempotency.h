/*
 * gw_idempotency.h — the `Idempotency-Key` header on writes.
 *
 * A client that retries a write (after a timeout, a lost connection, a 503)
 * sends the same Idempotency-Key; the gateway answers the retry with the
 * first attempt's success instead of applying the write twice:
 *
 *   - key unknown              → the request runs; its key is held (in progress)
 *   - same key, same request   → the stored answer is replayed (same status,
 *                                body, ETag), with `Idempotent-Replayed: true`
 *   - same key, other request  → 422 idempotency_key_reused (method, path,
 *     (method, path or body)     query and body are fingerprinted)
 *   - same key, still running  → 409 idempotency_in_progress + Retry-After: 1
 *
 * Only successes (2xx) are stored.  Any other answer releases the key: a
 * 4xx changed nothing, a 503 refused before the store was asked, and a
 * retry after a 504 / lost connection runs again.  A create (POST) without
 * an id gets an id derived from (caller, domain, key) rather than a random
 * one, so a retry of a create whose first attempt landed in spite of a 504
 * cannot insert a second item: it gets 409 conflict on that id.
 *
 * Scope: keys are per caller (API key name; one shared scope with auth off).
 * The store is in-process and shared by all workers (a client's retry may
 * arrive on another connection, hence another worker), behind one mutex
 * that only requests carrying the header take.  Entries expire after
 * ttl_s; the store holds at most max_entries and max_bytes of stored
 * answers, evicting the oldest completed entries first (docs/observability.md
 * states the trade-off against a Redis-backed store).
 *
 * A fleet (config `control`) keeps the keys in its shared Redis instead
 * (gw_shared.h), so that a retry landing on another instance finds the
 * first answer: gw_idem_begin_shared() claims a key atomically with one
 * script, and gw_idem_complete() / gw_idem_release() of the handle it gives
 * store the answer (kept ttl_s) or free the claim there.  Same answers, one
 * more: GW_IDEM_UNAVAILABLE when the shared store cannot be asked — the
 * write is then refused (503), never run without the guarantee.
 */
#ifndef GW_IDEMPOTENCY_H
#define GW_IDEMPOTENCY_H

#include <stddef.h>
#include <stdint.h>

struct gw_idem; /* a held key (in progress) */

enum gw_idem_rc {
    GW_IDEM_NEW,         /* run the request; *held is the key to complete or release */
    GW_IDEM_REPLAY,      /* *replay filled: answer with it */
    GW_IDEM_MISMATCH,    /* the key was used with another request */
    GW_IDEM_BUSY,        /* the first request with this key is still running */
    GW_IDEM_FULL,        /* the store is full of requests in progress */
    GW_IDEM_UNAVAILABLE, /* the shared store is down or did not answer in time */
};

/* Header lines kept with an answer, NUL included.  An answer whose lines
 * are longer is not kept (the key is released, a warning logged): a replay
 * never carries a cut header line. */
#define GW_IDEM_MAX_HEADERS 160

struct gw_idem_replay {
    int status;
    char *body; /* malloc'd; the caller frees */
    size_t bodylen;
    char headers[GW_IDEM_MAX_HEADERS]; /* ETag / X-Shards-Queried lines as first sent */
};

void gw_idem_configure(int64_t ttl_s, size_t max_entries, size_t max_bytes);

/* Check a key: 0 if it is acceptable (1..255 visible ASCII characters). */
int gw_idem_key_valid(const char *key, size_t len);

/* fp: fingerprint of the request (gw_idem_fingerprint). */
enum gw_idem_rc gw_idem_begin(const char *scope, const char *key, size_t keylen,
                              const uint64_t fp[2], uint64_t now_ms, struct gw_idem **held,
                              struct gw_idem_replay *replay);
/* Store the answer of a held key (2xx), or release it (anything else). */
void gw_idem_complete(struct gw_idem *h, int status, const void *body, size_t bodylen,
                      const char *headers, uint64_t now_ms);
void gw_idem_release(struct gw_idem *h);

/* The fleet's shared store (gw_shared.h).  The answer comes to done() once,
 * later, on the loop: `held` is the claimed key for GW_IDEM_NEW (complete or
 * release it as above), NULL otherwise; a replay's body is malloc'd and
 * done() frees it.  wait_ms bounds the wait for Redis (then
 * GW_IDEM_UNAVAILABLE); claim_ms is how long a claim in progress lives if
 * its instance never completes it (a crash).  0, or -1 when the store is
 * down now (done() is not called). */
struct gw_shared;
typedef void (*gw_idem_done_cb)(void *arg, enum gw_idem_rc rc, struct gw_idem *held,
                                struct gw_idem_replay *replay);
int gw_idem_begin_shared(struct gw_shared *sh, const char *scope, const char *key, size_t keylen,
                         const uint64_t fp[2], int64_t wait_ms, int64_t claim_ms,
                         gw_idem_done_cb done, void *arg) __attribute__((warn_unused_result));

void gw_idem_fingerprint(const char *method, const char *path, const char *query, const void *body,
                         size_t bodylen, uint64_t fp[2]);
/* 32 hex characters + NUL derived from (scope, domain, key): the id of a
 * create that carries none. */
void gw_idem_derive_id(const char *scope, const char *domain, const char *key, size_t keylen,
                       char out[33]);

/* Metrics: entries held / stored now, bytes stored, replays served. */
void gw_idem_stats(size_t *entries, size_t *bytes, uint64_t *replays);

#endif
