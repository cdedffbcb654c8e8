/*
 * rt_live.c — the live slot table of a backend being rebalanced.
 */
#include "routing/rt_live.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/lb_util.h"

struct rt_live {
    int refs; /* atomic */
    uint32_t nslots;
    pthread_mutex_t mu;
    int32_t *owner;  /* atomic loads outside mu, stores under mu */
    uint8_t *frozen; /* under mu */
    int32_t *writes; /* under mu; read by the mover under mu */
    int nfrozen;     /* under mu */
    int fanout_writes;
    unsigned epoch;
    int active[2];
    int ndrained; /* atomic */
    struct rt_live_excl excl[RT_LIVE_MAX_EXCL];
    size_t nexcl;
};

struct rt_live *rt_live_new(uint32_t nslots, const int32_t *owner)
{
    struct rt_live *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        return NULL;
    }
    l->owner = calloc(nslots, sizeof(*l->owner));
    l->frozen = calloc(nslots, 1);
    l->writes = calloc(nslots, sizeof(*l->writes));
    if (l->owner == NULL || l->frozen == NULL || l->writes == NULL) {
        free(l->owner);
        free(l->frozen);
        free(l->writes);
        free(l);
        return NULL;
    }
    memcpy(l->owner, owner, nslots * sizeof(*owner));
    l->nslots = nslots;
    l->refs = 1;
    pthread_mutex_init(&l->mu, NULL);
    return l;
}

struct rt_live *rt_live_ref(struct rt_live *l)
{
    if (l != NULL) {
        __atomic_add_fetch(&l->refs, 1, __ATOMIC_RELAXED);
    }
    return l;
}

void rt_live_unref(struct rt_live *l)
{
    if (l == NULL || __atomic_sub_fetch(&l->refs, 1, __ATOMIC_ACQ_REL) != 0) {
        return;
    }
    pthread_mutex_destroy(&l->mu);
    free(l->owner);
    free(l->frozen);
    free(l->writes);
    free(l);
}

uint32_t rt_live_nslots(const struct rt_live *l)
{
    return l->nslots;
}

int rt_live_owner(const struct rt_live *l, uint32_t slot)
{
    return slot < l->nslots ? __atomic_load_n(&l->owner[slot], __ATOMIC_ACQUIRE) : -1;
}

int rt_live_begin(struct rt_live *l, int32_t slot, int write, int *shard, struct rt_live_excl *excl,
                  size_t *nexcl, struct rt_live_ticket *t)
{
    memset(t, 0, sizeof(*t));
    t->wslot = -1;
    if (slot >= (int32_t)l->nslots) {
        slot = -1;
    }
    pthread_mutex_lock(&l->mu);
    if (write && ((slot >= 0 && l->frozen[slot]) || (slot < 0 && l->nfrozen > 0))) {
        pthread_mutex_unlock(&l->mu);
        return 1;
    }
    if (write && slot >= 0) {
        l->writes[slot]++;
        t->wslot = slot;
    } else if (write) {
        l->fanout_writes++;
        t->fanout_write = 1;
    }
    if (slot >= 0 && shard != NULL) {
        *shard = l->owner[slot];
    }
    t->bucket = (int)(l->epoch & 1u);
    l->active[t->bucket]++;
    if (excl != NULL) {
        memcpy(excl, l->excl, l->nexcl * sizeof(*excl));
    }
    if (nexcl != NULL) {
        *nexcl = l->nexcl;
    }
    t->active = 1;
    pthread_mutex_unlock(&l->mu);
    return 0;
}

void rt_live_end(struct rt_live *l, struct rt_live_ticket *t)
{
    if (!t->active) {
        return;
    }
    pthread_mutex_lock(&l->mu);
    if (t->wslot >= 0) {
        l->writes[t->wslot]--;
    }
    if (t->fanout_write) {
        l->fanout_writes--;
    }
    l->active[t->bucket]--;
    pthread_mutex_unlock(&l->mu);
    t->active = 0;
}

void rt_live_worker_drained(struct rt_live *l)
{
    __atomic_add_fetch(&l->ndrained, 1, __ATOMIC_SEQ_CST);
}

int rt_live_ndrained(struct rt_live *l)
{
    return __atomic_load_n(&l->ndrained, __ATOMIC_SEQ_CST);
}

int rt_live_excluded(const struct rt_live_excl *excl, size_t n, int shard, int32_t slot)
{
    for (size_t i = 0; i < n; i++) {
        if (excl[i].shard == shard && excl[i].slot == slot) {
            return 1;
        }
    }
    return 0;
}

static void nap_ms(long ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

int rt_live_freeze(struct rt_live *l, uint32_t slot, int64_t timeout_ms)
{
    int64_t deadline = (int64_t)lb_now_ms() + timeout_ms;
    pthread_mutex_lock(&l->mu);
    l->frozen[slot] = 1;
    l->nfrozen++;
    for (;;) {
        int busy = l->writes[slot] > 0 || l->fanout_writes > 0;
        if (!busy) {
            pthread_mutex_unlock(&l->mu);
            return 0;
        }
        pthread_mutex_unlock(&l->mu);
        if ((int64_t)lb_now_ms() > deadline) {
            rt_live_unfreeze(l, slot);
            return -1;
        }
        nap_ms(1);
        pthread_mutex_lock(&l->mu);
    }
}

void rt_live_unfreeze(struct rt_live *l, uint32_t slot)
{
    pthread_mutex_lock(&l->mu);
    if (l->frozen[slot]) {
        l->frozen[slot] = 0;
        l->nfrozen--;
    }
    pthread_mutex_unlock(&l->mu);
}

static int exclude_locked(struct rt_live *l, int shard, uint32_t slot)
{
    if (rt_live_excluded(l->excl, l->nexcl, shard, (int32_t)slot)) {
        return 0;
    }
    if (l->nexcl >= RT_LIVE_MAX_EXCL) {
        return -1;
    }
    l->excl[l->nexcl].shard = shard;
    l->excl[l->nexcl].slot = (int32_t)slot;
    l->nexcl++;
    return 0;
}

static void unexclude_locked(struct rt_live *l, int shard, uint32_t slot)
{
    for (size_t i = 0; i < l->nexcl; i++) {
        if (l->excl[i].shard == shard && l->excl[i].slot == (int32_t)slot) {
            l->excl[i] = l->excl[--l->nexcl];
            return;
        }
    }
}

int rt_live_exclude(struct rt_live *l, int shard, uint32_t slot)
{
    pthread_mutex_lock(&l->mu);
    int rc = exclude_locked(l, shard, slot);
    if (rc == 0) {
        rc = (int)(l->epoch & 1u);
        l->epoch++;
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

void rt_live_unexclude(struct rt_live *l, int shard, uint32_t slot)
{
    pthread_mutex_lock(&l->mu);
    unexclude_locked(l, shard, slot);
    pthread_mutex_unlock(&l->mu);
}

int rt_live_switch(struct rt_live *l, uint32_t slot, int from, int to)
{
    pthread_mutex_lock(&l->mu);
    __atomic_store_n(&l->owner[slot], to, __ATOMIC_RELEASE);
    unexclude_locked(l, to, slot);
    (void)exclude_locked(l, from, slot); /* room: `to`'s entry was just freed */
    int old = (int)(l->epoch & 1u);
    l->epoch++;
    if (l->frozen[slot]) {
        l->frozen[slot] = 0;
        l->nfrozen--;
    }
    pthread_mutex_unlock(&l->mu);
    return old;
}

int rt_live_wait_epoch(struct rt_live *l, int bucket, int64_t timeout_ms)
{
    int64_t deadline = (int64_t)lb_now_ms() + timeout_ms;
    for (;;) {
        pthread_mutex_lock(&l->mu);
        int n = l->active[bucket];
        pthread_mutex_unlock(&l->mu);
        if (n == 0) {
            return 0;
        }
        if ((int64_t)lb_now_ms() > deadline) {
            return -1;
        }
        nap_ms(1);
    }
}
