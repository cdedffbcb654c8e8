/*
 * gw_auth.c — API keys, grants, rate limits.
 */
#include "gateway/gw_auth.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "config/cf_config.h"
#include "gateway/gw_http.h"
#include "gateway/gw_shared.h"
#include "lib/lb_log.h"
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

/* A cost above the burst can never fit: waiting would not help. */
static int over_burst(const struct cf_key *key, double cost, struct md_error *e,
                      int64_t *retry_after_s)
{
    if (cost <= key->burst) {
        return 0;
    }
    *retry_after_s = (int64_t)(key->burst / key->rate_per_s) + 1;
    md_error_set(e, MD_E_RATE_LIMITED, NULL,
                 "this request costs %.6g rate-limit tokens (one per operation), more than "
                 "the burst of %.6g of '%s': split it",
                 cost, key->burst, key->name);
    return 1;
}

/* The 429 of a bucket that has the tokens only in `ms` milliseconds. */
static void rate_refused(const struct cf_key *key, double cost, int64_t ms, struct md_error *e,
                         int64_t *retry_after_s)
{
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
}

int gw_auth_charge(const struct cf_key *key, double cost, struct md_error *e,
                   int64_t *retry_after_s)
{
    if (key == NULL || key->rate_per_s <= 0) {
        return 0;
    }
    if (over_burst(key, cost, e, retry_after_s)) {
        return -1;
    }
    int64_t ms;
    if (gw_ratelimit_take(key->name, key->rate_per_s, key->burst, cost, &ms) < 0) {
        rate_refused(key, cost, ms, e, retry_after_s);
        return -1;
    }
    return 0;
}

/* ---- the fleet's buckets, in its shared Redis -------------------------------------- */

/* Take ARGV[3] tokens of the bucket KEYS[1] (ARGV: rate per second, burst,
 * cost), all or nothing, on the Redis server's clock (one clock for every
 * instance): 0, or the milliseconds until they would be there.  The bucket
 * expires once it would be full again anyway. */
static struct gw_shared_script script_take = GW_SHARED_SCRIPT(
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000\n"
    "local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')\n"
    "local tokens, ts = tonumber(b[1]), tonumber(b[2])\n"
    "if not tokens or not ts then tokens = burst; ts = now end\n"
    "if now > ts then tokens = tokens + (now - ts) / 1000 * rate; ts = now end\n"
    "if tokens > burst then tokens = burst end\n"
    "local wait = 0\n"
    "if tokens >= cost then tokens = tokens - cost\n"
    "else wait = math.floor((cost - tokens) / rate * 1000) + 1 end\n"
    "redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))\n"
    "redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)\n"
    "return wait\n");

struct charge {
    const struct cf_key *key; /* the caller's config reference keeps it */
    double cost;
    gw_auth_charged_cb done;
    void *arg;
};

static int fallback_warned; /* atomic: the local buckets decide, and it was logged */

/* The shared store cannot decide: the instance's own bucket does (fail
 * open, docs/protocol.md "Rate limits in a fleet"). */
static int charge_local(const struct cf_key *key, double cost, struct md_error *e,
                        int64_t *retry_after_s)
{
    if (!__atomic_exchange_n(&fallback_warned, 1, __ATOMIC_RELAXED)) {
        lb_warn("rate limits: the shared store (control.redis) is unavailable; each instance "
                "applies its own buckets until it is back");
    }
    return gw_auth_charge(key, cost, e, retry_after_s);
}

static void charged(void *arg, enum gw_shared_status st, const struct redisReply *rep)
{
    struct charge *c = arg;
    struct md_error e = {0};
    int64_t retry = 0;
    int rc;
    enum gw_rate_source src = GW_RATE_SHARED;
    if (st == GW_SHARED_OK && rep->type == REDIS_REPLY_INTEGER) {
        if (__atomic_load_n(&fallback_warned, __ATOMIC_RELAXED) &&
            __atomic_exchange_n(&fallback_warned, 0, __ATOMIC_RELAXED)) {
            lb_info("rate limits: the shared store (control.redis) decides again");
        }
        rc = rep->integer > 0 ? -1 : 0;
        if (rc < 0) {
            rate_refused(c->key, c->cost, rep->integer, &e, &retry);
        }
    } else {
        src = GW_RATE_LOCAL;
        rc = charge_local(c->key, c->cost, &e, &retry);
    }
    gw_auth_charged_cb done = c->done;
    void *darg = c->arg;
    free(c);
    done(darg, rc, &e, retry, src);
}

int gw_auth_charge_shared(struct gw_shared *sh, const struct cf_key *key, double cost,
                          int64_t wait_ms, gw_auth_charged_cb done, void *arg, struct md_error *e,
                          int64_t *retry_after_s, enum gw_rate_source *src)
{
    *src = GW_RATE_NONE;
    if (key == NULL || key->rate_per_s <= 0 || cost <= 0) {
        return 0;
    }
    *src = GW_RATE_SHARED;
    if (over_burst(key, cost, e, retry_after_s)) {
        return -1;
    }
    struct charge *c = malloc(sizeof(*c));
    size_t pl, nl = strlen(key->name);
    const char *prefix = gw_shared_prefix(sh, &pl);
    char *bkey = malloc(pl + 5 + nl + 1);
    int rc = -1;
    if (c != NULL && bkey != NULL) {
        char *p = lb_put_mem(bkey, prefix, pl);
        p = LB_PUT_LIT(p, "rate:");
        p = lb_put_mem(p, key->name, nl);
        char rate[32], burst[32], cst[32];
        snprintf(rate, sizeof(rate), "%.17g", key->rate_per_s);
        snprintf(burst, sizeof(burst), "%.17g", key->burst);
        snprintf(cst, sizeof(cst), "%.17g", cost);
        const char *argv[3] = {rate, burst, cst};
        size_t argl[3] = {strlen(rate), strlen(burst), strlen(cst)};
        *c = (struct charge){key, cost, done, arg};
        rc = gw_shared_eval(sh, &script_take, bkey, (size_t)(p - bkey), 3, argv, argl, wait_ms,
                            charged, c);
    }
    free(bkey);
    if (rc == 0) {
        return 1;
    }
    free(c);
    *src = GW_RATE_LOCAL;
    return charge_local(key, cost, e, retry_after_s);
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
