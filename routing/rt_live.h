/*
 * rt_live.h — the live slot table of a backend whose slots are being moved
 * (docs/rebalancing.md).
 *
 * While a rebalance runs, the owner of a slot changes one slot at a time, far
 * more often than a config swap could follow, so the backend's config carries
 * this table (shared by every worker and the mover thread) and routing reads
 * slot → shard here instead of in the map.  Shard indices are those of the
 * backend's shard list during the move: the UNION of the old and new maps'
 * shards, so every worker's pools reach sources and targets.
 *
 * Per slot: the owner, a `frozen` flag (the mover catches up and switches the
 * slot: new writes to it wait) and the number of writes in flight to it.  A
 * request takes a ticket when it starts (rt_live_begin) and gives it back when
 * it has finished (rt_live_end).  Everything rt_live_begin decides — the
 * owner, the frozen check, the write count, the epoch bucket, the excluded
 * slots — is taken under one mutex, so it is one consistent snapshot; the
 * mover changes them under the same mutex.  (Only backends being rebalanced
 * have a table: the ordinary request path never takes the lock.)
 *
 *   exclusions   (shard, slot) pairs: a slot that shard holds rows of but does
 *                not own (the copy in progress on the target; the switched
 *                slot not yet deleted at the source).  A scatter query adds
 *                `_slot NOT IN (…)` for them, so no row is seen twice or lost.
 *   epochs       two buckets of requests in flight; the mover flips the epoch
 *                at a switch and waits until the old bucket is empty before it
 *                deletes the source rows (nobody still reads them).
 */
#ifndef RT_LIVE_H
#define RT_LIVE_H

#include <stddef.h>
#include <stdint.h>

#define RT_LIVE_MAX_EXCL 4

struct rt_live;

struct rt_live_excl {
    int32_t shard;
    int32_t slot;
};

/* What a request holds between begin and end. */
struct rt_live_ticket {
    int active;       /* 1 between a successful begin and end */
    int bucket;       /* epoch bucket */
    int32_t wslot;    /* slot of a single-slot write, -1 none */
    int fanout_write; /* a write by id without the shard key (slot unknown) */
};

/* A table of nslots slots owned as owner[] says (copied). One reference. */
struct rt_live *rt_live_new(uint32_t nslots, const int32_t *owner);
struct rt_live *rt_live_ref(struct rt_live *l);
void rt_live_unref(struct rt_live *l);

uint32_t rt_live_nslots(const struct rt_live *l);
/* Current owner (one atomic load; use the ticket's view for decisions). */
int rt_live_owner(const struct rt_live *l, uint32_t slot);

/* Start a request.  slot: the routed slot, or -1 (scatter / fan-out).
 * write: it modifies data.  On success (0): t filled, *shard = the owner of
 * slot (slot >= 0), excl/nexcl = the current exclusions (excl may be NULL).
 * 1: the write must wait (its slot, or for a fan-out write any slot, is
 * frozen); nothing was taken — try again later. */
int rt_live_begin(struct rt_live *l, int32_t slot, int write, int *shard, struct rt_live_excl *excl,
                  size_t *nexcl, struct rt_live_ticket *t);
void rt_live_end(struct rt_live *l, struct rt_live_ticket *t);

/* 1 when (shard, slot) is in the exclusions excl[0..n). */
int rt_live_excluded(const struct rt_live_excl *excl, size_t n, int shard, int32_t slot);

/* A worker runs on a config with this table and every request it had
 * started before has finished (gw_worker.c): counted once per worker. */
void rt_live_worker_drained(struct rt_live *l);
int rt_live_ndrained(struct rt_live *l);

/* ---- the mover's side ---- */

/* Freeze a slot for writes; returns once no write to it (and no fan-out
 * write) is in flight, or -1 after timeout_ms (the slot is unfrozen again). */
int rt_live_freeze(struct rt_live *l, uint32_t slot, int64_t timeout_ms);
void rt_live_unfreeze(struct rt_live *l, uint32_t slot);
/* Add an exclusion and flip the epoch: returns the old bucket (wait for it
 * before writing rows of that slot to that shard: requests that started
 * before do not exclude them), or -1 when the list is full. */
int rt_live_exclude(struct rt_live *l, int shard, uint32_t slot);
void rt_live_unexclude(struct rt_live *l, int shard, uint32_t slot);
/* Switch the owner of a frozen slot: owner := to, exclusion (to, slot) → (from,
 * slot), the epoch flips, the slot is unfrozen — all in one step.  Returns the
 * old epoch bucket to pass to rt_live_wait_epoch. */
int rt_live_switch(struct rt_live *l, uint32_t slot, int from, int to);
/* Wait until no request of that bucket is in flight (-1 after timeout_ms). */
int rt_live_wait_epoch(struct rt_live *l, int bucket, int64_t timeout_ms);

#endif
