/*
 * gw_idempotency.c — the Idempotency-Key store (see gw_idempotency.h).
 *
 * A chained hash table over (scope, key) plus a list in expiry order: a
 * completed entry moves to the tail with expires = now + ttl, so expired
 * entries gather at the head, where every begin() sweeps them.  Entries in
 * progress are never evicted.
 */
#include "gateway/gw_idempotency.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <xxhash.h>

#include "lib/lb_log.h"

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
