/*
 * gw_auth.h — who is calling, what they may do, and how fast.
 *
 * Callers present `Authorization: Bearer <key>`.  The key's SHA-256 is
 * compared with every configured digest in constant time (no early exit, so
 * timing does not tell which key nearly matched).  Each key has grants per
 * domain (read / write / admin) and an optional token-bucket rate limit
 * shared by all workers.
 */
#ifndef GW_AUTH_H
#define GW_AUTH_H

#include <stdint.h>

#include "config/cf_auth.h"
#include "gateway/gw_error.h"

struct cf_config;
struct gw_http_req;

/* Authenticate and rate-limit one request.  0 with *key set (NULL when auth
 * is disabled), or -1 with e filled (401 / 429; *retry_after_s set for 429). */
int gw_auth_check(const struct cf_config *cf, const struct gw_http_req *hr,
                  const struct cf_key **key, struct gw_error *e, int64_t *retry_after_s);

/* May `key` (NULL = auth disabled: yes) use `perm` on `domain`?  `exists`
 * says whether the domain is configured; a caller that may not see every
 * domain gets the same answer for an unknown domain as for a forbidden one. */
int gw_auth_allows(const struct cf_key *key, const char *domain, unsigned perm, int exists,
                   struct gw_error *e);

/* Token bucket: take one token for `name`.  0 or -1 with *retry_after_ms. */
int gw_ratelimit_take(const char *name, double rate_per_s, double burst, int64_t *retry_after_ms);

#endif
