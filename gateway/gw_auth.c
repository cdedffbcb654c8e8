/*
 * gw_auth.c — API keys, grants, rate limits.
 */
#include "gateway/gw_auth.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "config/cf_config.h"
#include "gateway/gw_http.h"
#include "lib/lb_util.h"

int gw_auth_check(const struct cf_config *cf, const struct gw_http_req *hr, double cost,
                  const struct cf_key **key, struct md_error *e, int64_t *retry_after_s)
{
    *key = NULL;
    if (!cf->auth.enabled) {
        return 0;
    }
    size_t len = 0;
    const char *h = gw_http_header(hr, "authorization", &len);
    if (h == NULL || len < 8 || strncasecmp(h, "Bearer ", 7) != 0) {
        md_error_set(e, MD_E_UNAUTHORIZED, NULL,
                     "an API key is required: Authorization: Bearer <key>");
        return -1;
    }
    const char *tok = h + 7;
    size_t tlen = len - 7;
    while (tlen > 0 && *tok == ' ') {
        tok++;
        tlen--;
    }
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)tok, tlen, digest);
    const struct cf_key *found = NULL;
    for (size_t i = 0; i < cf->auth.nkeys; i++) {
        /* every key is compared, in constant time */
        if (CRYPTO_memcmp(digest, cf->auth.keys[i].sha256, SHA256_DIGEST_LENGTH) == 0) {
            found = &cf->auth.keys[i];
        }
    }
    if (found == NULL) {
        md_error_set(e, MD_E_UNAUTHORIZED, NULL, "the API key is not valid");
        return -1;
    }
    if (cost > 0 && gw_auth_charge(found, cost, e, retry_after_s) < 0) {
        return -1;
    }
    *key = found;
    return 0;
}

int gw_auth_charge(const struct cf_key *key, double cost, struct md_error *e,
                   int64_t *retry_after_s)
{
    if (key == NULL || key->rate_per_s <= 0) {
        return 0;
    }
    if (cost > key->burst) { /* can never fit: waiting would not help */
        *retry_after_s = (int64_t)(key->burst / key->rate_per_s) + 1;
        md_error_set(e, MD_E_RATE_LIMITED, NULL,
                     "this request costs %.6g rate-limit tokens (one per operation), more than "
                     "the burst of %.6g of '%s': split it",
                     cost, key->burst, key->name);
        return -1;
    }
    int64_t ms;
    if (gw_ratelimit_take(key->name, key->rate_per_s, key->burst, cost, &ms) < 0) {
        *retry_after_s = (ms + 999) / 1000;
        if (*retry_after_s < 1) {
            *retry_after_s = 1;
        }
        if (cost > 1) {
            md_error_set(e, MD_E_RATE_LIMITED, NULL,
                         "rate limit of %.6g requests/s for '%s' exceeded: this request costs "
                         "%.6g tokens (one per operation); retry after %lld s",
                         key->rate_per_s, key->name, cost, (long long)*retry_after_s);
        } else {
            md_error_set(e, MD_E_RATE_LIMITED, NULL,
                         "rate limit of %.6g requests/s for '%s' exceeded; retry after %lld s",
                         key->rate_per_s, key->name, (long long)*retry_after_s);
        }
        return -1;
    }
    return 0;
}

int gw_auth_sees(const struct cf_key *key, const char *domain, int exists, struct md_error *e)
{
    if (key == NULL || cf_auth_perms(key, "*") != 0 ||
        (exists && cf_auth_perms(key, domain) != 0)) {
        return 1;
    }
    /* the same answer whether the domain exists or not: status, message
     * shape, no "domain" member */
    md_error_set(e, MD_E_FORBIDDEN, NULL, "key '%s' has no access to domain '%.64s'", key->name,
                 domain);
    e->domain = NULL;
    return 0;
}

int gw_auth_allows(const struct cf_key *key, const char *domain, unsigned perm, int exists,
                   struct md_error *e)
{
    if (key == NULL) {
        return 1;
    }
    static const char *const names[] = {"", "read", "write", "", "admin"};
    if (!gw_auth_sees(key, domain, exists, e)) {
        return 0;
    }
    if (!exists) {
        if (cf_auth_perms(key, "*") & perm) {
            return 1; /* it may see every domain: the 404 tells it nothing new */
        }
    } else if (cf_auth_perms(key, domain) & perm) {
        return 1;
    }
    md_error_set(e, MD_E_FORBIDDEN, NULL, "key '%s' may not %s domain '%.64s'", key->name,
                 names[perm & 7], domain);
    return 0;
}

/* ---- token buckets, shared by all workers --------------------------------- */

struct bucket {
    struct bucket *next;
    char *name;
    double tokens;
    uint64_t last_ns;
};

static pthread_mutex_t buckets_mu = PTHREAD_MUTEX_INITIALIZER;
static struct bucket *buckets;

int gw_ratelimit_take(const char *name, double rate_per_s, double burst, double cost,
                      int64_t *retry_after_ms)
{
    uint64_t now = lb_now_ns();
    int rc = 0;
    pthread_mutex_lock(&buckets_mu);
    struct bucket *b = buckets;
    while (b != NULL && strcmp(b->name, name) != 0) {
        b = b->next;
    }
    if (b == NULL) {
        b = lb_xcalloc(1, sizeof(*b)); /* one per key name of the config */
        b->name = lb_xstrdup(name);
        b->tokens = burst;
        b->last_ns = now;
        b->next = buckets;
        buckets = b;
    }
    b->tokens += (double)(now - b->last_ns) / 1e9 * rate_per_s;
    if (b->tokens > burst) {
        b->tokens = burst;
    }
    b->last_ns = now;
    if (b->tokens >= cost) { /* all or nothing */
        b->tokens -= cost;
    } else {
        *retry_after_ms = (int64_t)((cost - b->tokens) / rate_per_s * 1000.0) + 1;
        rc = -1;
    }
    pthread_mutex_unlock(&buckets_mu);
    return rc;
}

/* ---- requests in flight per key, shared by all workers --------------------- */

struct gw_inflight {
    struct gw_inflight *next;
    char *name;
    int n; /* atomic */
};

static pthread_mutex_t inflight_mu = PTHREAD_MUTEX_INITIALIZER;
static struct gw_inflight *inflights; /* never freed: one per key name */

int gw_auth_inflight_acquire(const struct cf_key *key, int limit, int count,
                             struct gw_inflight **held, struct md_error *e)
{
    *held = NULL;
    if (key == NULL || count <= 0) {
        return 0;
    }
    const char *which = key->max_inflight >= 0 ? "max_inflight" : "limits.max_inflight_per_key";
    if (key->max_inflight >= 0) {
        limit = key->max_inflight;
    }
    if (limit <= 0) {
        return 0;
    }
    if (count > limit) { /* can never fit */
        md_error_set(e, MD_E_RATE_LIMITED, NULL,
                     "this request holds %d operations in flight, more than the limit of %d of "
                     "key '%s' (%s): split it",
                     count, limit, key->name, which);
        return -1;
    }
    pthread_mutex_lock(&inflight_mu);
    struct gw_inflight *f = inflights;
    while (f != NULL && strcmp(f->name, key->name) != 0) {
        f = f->next;
    }
    if (f == NULL) {
        f = lb_xcalloc(1, sizeof(*f)); /* one per key name of the config */
        f->name = lb_xstrdup(key->name);
        f->next = inflights;
        inflights = f;
    }
    pthread_mutex_unlock(&inflight_mu);
    int n = __atomic_add_fetch(&f->n, count, __ATOMIC_ACQ_REL);
    if (n > limit) {
        __atomic_sub_fetch(&f->n, count, __ATOMIC_ACQ_REL);
        md_error_set(e, MD_E_RATE_LIMITED, NULL,
                     "key '%s' has %d requests in flight, its limit (%s); retry when one has "
                     "been answered",
                     key->name, n - count, which);
        return -1;
    }
    *held = f;
    return 0;
}

void gw_auth_inflight_release(struct gw_inflight *held, int count)
{
    if (held != NULL) {
        __atomic_sub_fetch(&held->n, count, __ATOMIC_ACQ_REL);
    }
}
