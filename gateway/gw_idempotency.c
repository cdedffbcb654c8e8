/*
 * gw_idempotency.c — the Idempotency-Key store (see gw_idempotency.h).
 *
 * In process: a chained hash table over (scope, key) plus a list in expiry
 * order: a completed entry moves to the tail with expires = now + ttl, so
 * expired entries gather at the head, where every begin() sweeps them.
 * Entries in progress are never evicted.
 *
 * Shared by a fleet: one Redis hash per key (fp, state, token; then status,
 * headers, body), changed only by the three scripts below, each atomic in
 * Redis.  The claim's random token makes complete and release apply only to
 * the claim they were given: a claim that expired (its instance stalled
 * past claim_ms) and was claimed again is not overwritten.
 */
#include "gateway/gw_idempotency.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <hiredis/hiredis.h>
#include <xxhash.h>

#include "gateway/gw_shared.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"

struct gw_idem {
    struct gw_idem *next; /* bucket chain */
    TAILQ_ENTRY(gw_idem) age;
    uint64_t h;
    char *id; /* scope '\0' key */
    size_t idlen;
    uint64_t fp[2];
    int busy;
    uint64_t expires;
    int status;
    char *body;
    size_t bodylen;
    char headers[GW_IDEM_MAX_HEADERS];
    /* a key held in the fleet's shared store: id is its Redis key */
    struct gw_shared *sh;
    char token[33];
    gw_idem_done_cb done; /* begin: who waits for the answer */
    void *done_arg;
};

#define NBUCKETS 65536u

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct gw_idem **buckets;
static TAILQ_HEAD(, gw_idem) ages = TAILQ_HEAD_INITIALIZER(ages);
static size_t nentries, nbytes;
static uint64_t nreplays;
static int64_t ttl_ms = 86400 * 1000LL;
static size_t max_entries = 100000, max_bytes = 64u << 20;

void gw_idem_configure(int64_t ttl_s, size_t entries, size_t bytes)
{
    pthread_mutex_lock(&mu);
    ttl_ms = ttl_s * 1000;
    max_entries = entries;
    max_bytes = bytes;
    pthread_mutex_unlock(&mu);
}

int gw_idem_key_valid(const char *key, size_t len)
{
    if (len == 0 || len > 255) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (key[i] < 0x21 || key[i] > 0x7e) {
            return -1;
        }
    }
    return 0;
}

static size_t cost(const struct gw_idem *e)
{
    return sizeof(*e) + e->idlen + e->bodylen;
}

static void unlink_free(struct gw_idem *e)
{
    struct gw_idem **pp = &buckets[e->h & (NBUCKETS - 1)];
    while (*pp != e) {
        pp = &(*pp)->next;
    }
    *pp = e->next;
    TAILQ_REMOVE(&ages, e, age);
    nentries--;
    nbytes -= cost(e);
    free(e->id);
    free(e->body);
    free(e);
}

/* Drop expired entries, then the oldest completed ones while over a bound.
 * `extra` is the size about to be added. */
static void sweep(uint64_t now, size_t extra)
{
    struct gw_idem *e = TAILQ_FIRST(&ages);
    while (e != NULL) {
        struct gw_idem *nx = TAILQ_NEXT(e, age);
        int over = nentries + 1 > max_entries || nbytes + extra > max_bytes;
        if (!e->busy && (e->expires <= now || over)) {
            unlink_free(e);
        } else if (!over && !e->busy) {
            break; /* the rest expire later (in completion order; after a ttl change
                    * an expired entry further on is dropped when begin() finds it) */
        }
        e = nx;
    }
}

enum gw_idem_rc gw_idem_begin(const char *scope, const char *key, size_t keylen,
                              const uint64_t fp[2], uint64_t now_ms, struct gw_idem **held,
                              struct gw_idem_replay *replay)
{
    size_t sl = strlen(scope), idlen = sl + 1 + keylen;
    char *id = malloc(idlen);
    if (id == NULL) {
        return GW_IDEM_FULL;
    }
    memcpy(id, scope, sl + 1);
    memcpy(id + sl + 1, key, keylen);
    uint64_t h = XXH3_64bits(id, idlen);
    enum gw_idem_rc rc;
    pthread_mutex_lock(&mu);
    if (buckets == NULL) {
        buckets = calloc(NBUCKETS, sizeof(*buckets));
        if (buckets == NULL) {
            pthread_mutex_unlock(&mu);
            free(id);
            return GW_IDEM_FULL;
        }
    }
    sweep(now_ms, sizeof(struct gw_idem) + idlen);
    struct gw_idem *e = buckets[h & (NBUCKETS - 1)];
    while (e != NULL && (e->h != h || e->idlen != idlen || memcmp(e->id, id, idlen) != 0)) {
        e = e->next;
    }
    if (e != NULL && !e->busy && e->expires <= now_ms) {
        unlink_free(e); /* expired, not swept yet (the sweep stops at the first live entry) */
        e = NULL;
    }
    if (e != NULL) {
        free(id);
        if (e->fp[0] != fp[0] || e->fp[1] != fp[1]) {
            rc = GW_IDEM_MISMATCH;
        } else if (e->busy) {
            rc = GW_IDEM_BUSY;
        } else {
            replay->status = e->status;
            replay->body = malloc(e->bodylen + 1);
            if (replay->body == NULL) {
                rc = GW_IDEM_FULL;
            } else {
                memcpy(replay->body, e->body, e->bodylen);
                replay->bodylen = e->bodylen;
                memcpy(replay->headers, e->headers, sizeof(replay->headers));
                nreplays++;
                rc = GW_IDEM_REPLAY;
            }
        }
        pthread_mutex_unlock(&mu);
        return rc;
    }
    if (nentries >= max_entries) { /* every entry is in progress */
        pthread_mutex_unlock(&mu);
        free(id);
        return GW_IDEM_FULL;
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL) {
        pthread_mutex_unlock(&mu);
        free(id);
        return GW_IDEM_FULL;
    }
    e->h = h;
    e->id = id;
    e->idlen = idlen;
    e->fp[0] = fp[0];
    e->fp[1] = fp[1];
    e->busy = 1;
    e->next = buckets[h & (NBUCKETS - 1)];
    buckets[h & (NBUCKETS - 1)] = e;
    TAILQ_INSERT_TAIL(&ages, e, age);
    nentries++;
    nbytes += cost(e);
    pthread_mutex_unlock(&mu);
    *held = e;
    return GW_IDEM_NEW;
}

/* ---- the fleet's shared store ---------------------------------------------------- */

/* Claim KEYS[1] for fingerprint ARGV[1] with token ARGV[2] for ARGV[3] ms,
 * or say why not: {0} claimed, {1} another request, {2} in progress,
 * {3, status, headers, body} the stored answer. */
static struct gw_shared_script script_begin = GW_SHARED_SCRIPT(
    "local v = redis.call('HMGET', KEYS[1], 'fp', 'state', 'status', 'headers', 'body')\n"
    "if not v[1] then\n"
    "  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'busy', 'token', ARGV[2])\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "  return {0}\n"
    "end\n"
    "if v[1] ~= ARGV[1] then return {1} end\n"
    "if v[2] ~= 'done' then return {2} end\n"
    "return {3, tonumber(v[3]), v[4], v[5]}\n");

/* Keep the answer (ARGV: token, status, headers, body, ttl ms) if the claim
 * is still the one of token. */
static struct gw_shared_script script_complete = GW_SHARED_SCRIPT(
    "if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[2], 'headers', ARGV[3], "
    "'body', ARGV[4])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[5])\n"
    "return 1\n");

/* Free the claim of token ARGV[1]. */
static struct gw_shared_script script_release =
    GW_SHARED_SCRIPT("if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end\n"
                     "redis.call('DEL', KEYS[1])\n"
                     "return 1\n");

static void shared_free(struct gw_idem *e)
{
    free(e->id);
    free(e);
}

/* Nobody waits for the replies of complete and release: the client's answer
 * does not depend on them.  A release that cannot be sent leaves the claim
 * to expire after claim_ms. */
static void shared_release(struct gw_idem *e)
{
    const char *argv[1] = {e->token};
    size_t argl[1] = {32};
    if (gw_shared_eval(e->sh, &script_release, e->id, e->idlen, 1, argv, argl, 0, NULL, NULL) < 0) {
        lb_debug("Idempotency-Key claim not released: the shared store is down (it expires by "
                 "itself)");
    }
    shared_free(e);
}

static void shared_complete(struct gw_idem *e, int status, const void *body, size_t bodylen,
                            const char *headers, size_t hl)
{
    char st[24], ttl[24];
    pthread_mutex_lock(&mu); /* a reload may change it */
    int64_t ms = ttl_ms;
    pthread_mutex_unlock(&mu);
    size_t stl = (size_t)(lb_put_u64(st, (uint64_t)status) - st);
    size_t ttll = (size_t)(lb_put_u64(ttl, (uint64_t)ms) - ttl);
    const char *argv[5] = {e->token, st, headers, body, ttl};
    size_t argl[5] = {32, stl, hl, bodylen, ttll};
    if (gw_shared_eval(e->sh, &script_complete, e->id, e->idlen, 5, argv, argl, 0, NULL, NULL) <
        0) {
        lb_warn("Idempotency-Key answer not kept: the shared store is down (the claim expires "
                "by itself)");
    }
    shared_free(e);
}

/* A replay from {3, status, headers, body}; -1 when the reply is not one. */
static int shared_replay(const redisReply *rep, struct gw_idem_replay *rp)
{
    if (rep->elements != 4 || rep->element[1]->type != REDIS_REPLY_INTEGER ||
        rep->element[2]->type != REDIS_REPLY_STRING ||
        rep->element[3]->type != REDIS_REPLY_STRING ||
        rep->element[2]->len >= sizeof(rp->headers)) {
        return -1;
    }
    rp->body = malloc(rep->element[3]->len + 1);
    if (rp->body == NULL) {
        return -1;
    }
    memcpy(rp->body, rep->element[3]->str, rep->element[3]->len);
    rp->bodylen = rep->element[3]->len;
    rp->status = (int)rep->element[1]->integer;
    memcpy(rp->headers, rep->element[2]->str, rep->element[2]->len);
    rp->headers[rep->element[2]->len] = '\0';
    return 0;
}

static void shared_begun(void *arg, enum gw_shared_status st, const struct redisReply *rep)
{
    struct gw_idem *e = arg;
    struct gw_idem_replay rp = {0};
    enum gw_idem_rc rc = GW_IDEM_UNAVAILABLE;
    if (st == GW_SHARED_OK && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER) {
        switch (rep->element[0]->integer) {
        case 0:
            rc = GW_IDEM_NEW;
            break;
        case 1:
            rc = GW_IDEM_MISMATCH;
            break;
        case 2:
            rc = GW_IDEM_BUSY;
            break;
        default:
            rc = shared_replay(rep, &rp) == 0 ? GW_IDEM_REPLAY : GW_IDEM_UNAVAILABLE;
            break;
        }
    } else if (st == GW_SHARED_OK) {
        lb_warn("the shared Idempotency-Key store answered an unexpected reply");
    }
    gw_idem_done_cb done = e->done;
    void *darg = e->done_arg;
    if (rc == GW_IDEM_NEW) {
        done(darg, rc, e, &rp);
        return;
    }
    if (st == GW_SHARED_TIMEOUT) {
        shared_release(e); /* the claim may have landed after all: free it */
    } else {
        shared_free(e);
    }
    done(darg, rc, NULL, &rp);
}

int gw_idem_begin_shared(struct gw_shared *sh, const char *scope, const char *key, size_t keylen,
                         const uint64_t fp[2], int64_t wait_ms, int64_t claim_ms,
                         gw_idem_done_cb done, void *arg)
{
    /* <prefix>idem:<scope length>:<scope>:<key> — the length keeps a scope
     * with ':' in it from reading as another scope's key */
    size_t pl, sl = strlen(scope);
    const char *prefix = gw_shared_prefix(sh, &pl);
    struct gw_idem *e = calloc(1, sizeof(*e));
    char *id = malloc(pl + 5 + 20 + 1 + sl + 1 + keylen + 1);
    if (e == NULL || id == NULL) {
        free(e);
        free(id);
        return -1;
    }
    char *p = lb_put_mem(id, prefix, pl);
    p = LB_PUT_LIT(p, "idem:");
    p = lb_put_u64(p, sl);
    *p++ = ':';
    p = lb_put_mem(p, scope, sl);
    *p++ = ':';
    p = lb_put_mem(p, key, keylen);
    *p = '\0';
    e->id = id;
    e->idlen = (size_t)(p - id);
    e->sh = sh;
    lb_gen_id(e->token);
    e->done = done;
    e->done_arg = arg;
    char fph[33], cl[24];
    snprintf(fph, sizeof(fph), "%016llx%016llx", (unsigned long long)fp[1],
             (unsigned long long)fp[0]);
    size_t cll = (size_t)(lb_put_u64(cl, (uint64_t)claim_ms) - cl);
    const char *argv[3] = {fph, e->token, cl};
    size_t argl[3] = {32, 32, cll};
    if (gw_shared_eval(sh, &script_begin, e->id, e->idlen, 3, argv, argl, wait_ms, shared_begun,
                       e) < 0) {
        shared_free(e);
        return -1;
    }
    return 0;
}

void gw_idem_complete(struct gw_idem *e, int status, const void *body, size_t bodylen,
                      const char *headers, uint64_t now_ms)
{
    if (status < 200 || status >= 300) {
        gw_idem_release(e);
        return;
    }
    size_t hl = headers != NULL ? strlen(headers) : 0;
    if (hl >= sizeof(e->headers)) {
        /* a replay must carry the header lines whole: forget the key (the
         * retry runs again) rather than keep a cut header line */
        lb_warn("Idempotency-Key answer not kept: its header lines (%zu bytes) exceed %d bytes", hl,
                GW_IDEM_MAX_HEADERS - 1);
        gw_idem_release(e);
        return;
    }
    if (e->sh != NULL) {
        shared_complete(e, status, body, bodylen, headers != NULL ? headers : "", hl);
        return;
    }
    char *copy = malloc(bodylen + 1);
    pthread_mutex_lock(&mu);
    if (copy == NULL || nbytes + bodylen > max_bytes) {
        sweep(now_ms, bodylen);
    }
    if (copy == NULL || nbytes + bodylen > max_bytes) {
        /* cannot keep the answer: forget the key rather than replay wrong */
        unlink_free(e);
        pthread_mutex_unlock(&mu);
        free(copy);
        return;
    }
    if (bodylen > 0) {
        memcpy(copy, body, bodylen);
    }
    e->body = copy;
    e->bodylen = bodylen;
    e->status = status;
    memcpy(e->headers, headers != NULL ? headers : "", hl + 1);
    e->busy = 0;
    e->expires = now_ms + (uint64_t)ttl_ms;
    nbytes += bodylen;
    TAILQ_REMOVE(&ages, e, age);
    TAILQ_INSERT_TAIL(&ages, e, age);
    pthread_mutex_unlock(&mu);
}

void gw_idem_release(struct gw_idem *e)
{
    if (e->sh != NULL) {
        shared_release(e);
        return;
    }
    pthread_mutex_lock(&mu);
    unlink_free(e);
    pthread_mutex_unlock(&mu);
}

void gw_idem_fingerprint(const char *method, const char *path, const char *query, const void *body,
                         size_t bodylen, uint64_t fp[2])
{
    XXH3_state_t *st = XXH3_createState();
    XXH3_128bits_reset(st);
    XXH3_128bits_update(st, method, strlen(method) + 1);
    XXH3_128bits_update(st, path, strlen(path) + 1);
    XXH3_128bits_update(st, query != NULL ? query : "", query != NULL ? strlen(query) + 1 : 1);
    XXH3_128bits_update(st, body, bodylen);
    XXH128_hash_t h = XXH3_128bits_digest(st);
    XXH3_freeState(st);
    fp[0] = h.low64;
    fp[1] = h.high64;
}

void gw_idem_derive_id(const char *scope, const char *domain, const char *key, size_t keylen,
                       char out[33])
{
    XXH3_state_t *st = XXH3_createState();
    XXH3_128bits_reset(st);
    XXH3_128bits_update(st, scope, strlen(scope) + 1);
    XXH3_128bits_update(st, domain, strlen(domain) + 1);
    XXH3_128bits_update(st, key, keylen);
    XXH128_hash_t h = XXH3_128bits_digest(st);
    XXH3_freeState(st);
    snprintf(out, 33, "%016llx%016llx", (unsigned long long)h.high64, (unsigned long long)h.low64);
}

void gw_idem_stats(size_t *entries, size_t *bytes, uint64_t *replays)
{
    pthread_mutex_lock(&mu);
    *entries = nentries;
    *bytes = nbytes;
    *replays = nreplays;
    pthread_mutex_unlock(&mu);
}
