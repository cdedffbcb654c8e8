/*
 * gw_auth.h — who is calling, what they may do, and how fast.
 *
 * Callers present `Authorization: Bearer <key>`.  The key's SHA-256 is
 * compared with every configured digest in constant time (no early exit, so
 * timing does not tell which key nearly matched).  Each key has grants per
 * domain (read / write / admin) and an optional token-bucket rate limit
 * shared by all workers — and, in a fleet (config `control`), by every
 * instance: the bucket then lives in the fleet's Redis (gw_shared.h).
 */
#ifndef GW_AUTH_H
#define GW_AUTH_H

#include <stdint.h>

#include "config/cf_auth.h"
#include "model/md_error.h"

struct cf_config;
struct gw_http_req;

/* Authenticate one request and take `cost` rate-limit tokens (0: none now,
 * the caller charges later with gw_auth_charge — a _batch, one token per
 * operation).  0 with *key set (NULL when auth is disabled), or -1 with e
 * filled (401 / 429; *retry_after_s set for 429). */
int gw_auth_check(const struct cf_config *cf, const struct gw_http_req *hr, double cost,
                  const struct cf_key **key, struct md_error *e, int64_t *retry_after_s);

/* Take `cost` tokens of key's rate limit, all or nothing.  0, or -1 with a
 * 429 in e and *retry_after_s (a cost above the burst can never fit: the
 * message says to split the request). */
int gw_auth_charge(const struct cf_key *key, double cost, struct md_error *e,
                   int64_t *retry_after_s);

/* Which bucket decided a charge (metrics). */
enum gw_rate_source {
    GW_RATE_NONE,   /* no rate limit applies: nothing was taken */
    GW_RATE_SHARED, /* the fleet's bucket, in its shared Redis */
    GW_RATE_LOCAL,  /* this instance's bucket: the shared store could not decide */
};
/* The decision of a charge sent to the shared store: rc 0, or -1 with the
 * 429 in e (borrowed for the call) and retry_after_s. */
typedef void (*gw_auth_charged_cb)(void *arg, int rc, const struct md_error *e,
                                   int64_t retry_after_s, enum gw_rate_source src);

/* gw_auth_charge in the fleet's bucket of the key (sh: the worker's client
 * of the shared store).  1: asked; done() follows once, later, on the loop,
 * within wait_ms.  Otherwise decided now, 0 or -1 as gw_auth_charge: no
 * rate limit (*src GW_RATE_NONE), a cost above the burst, or the store
 * down.  Whenever the shared store cannot decide (down, an error, no answer
 * within wait_ms) the instance's own bucket does (GW_RATE_LOCAL: fail open,
 * logged once per outage). */
struct gw_shared;
int gw_auth_charge_shared(struct gw_shared *sh, const struct cf_key *key, double cost,
                          int64_t wait_ms, gw_auth_charged_cb done, void *arg, struct md_error *e,
                          int64_t *retry_after_s, enum gw_rate_source *src);

/* May `key` know whether `domain` exists?  Yes with a grant on it or any
 * "*" grant; otherwise 0 with a 403 that reads the same for a configured
 * domain as for an unknown one (no "domain" member, no hint of which). */
int gw_auth_sees(const struct cf_key *key, const char *domain, int exists, struct md_error *e);

/* May `key` (NULL = auth disabled: yes) use `perm` on `domain`?  `exists`
 * says whether the domain is configured; a caller that may not see every
 * domain gets the same answer for an unknown domain as for a forbidden one
 * (gw_auth_sees). */
int gw_auth_allows(const struct cf_key *key, const char *domain, unsigned perm, int exists,
                   struct md_error *e);

/* Token bucket: take `cost` tokens for `name`, all or nothing.  0 or -1
 * with *retry_after_ms (when that many tokens will be there). */
int gw_ratelimit_take(const char *name, double rate_per_s, double burst, double cost,
                      int64_t *retry_after_ms);

/* Operations in flight per API key (limits.max_inflight_per_key, or the
 * key's own max_inflight; 0 = no limit), shared by all workers: a request
 * counts one, a _batch one per operation.  Acquire `count`, all or nothing:
 * 0 with *held set (NULL when nothing is counted), or -1 with a 429 in e
 * when they do not fit (a count above the limit never fits: "split it").
 * Every *held is released once, with the same count. */
struct gw_inflight;
int gw_auth_inflight_acquire(const struct cf_key *key, int limit, int count,
                             struct gw_inflight **held, struct md_error *e);
void gw_auth_inflight_release(struct gw_inflight *held, int count);

#endif
