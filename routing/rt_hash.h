/*
 * rt_hash.h — shard key → 64-bit hash → slot, and the ring point positions.
 *
 * Everything in this header is part of the ON-DISK FORMAT: sharded rows store
 * their slot in an indexed column, so a change here silently misroutes every
 * stored row.  tests/unit/test_rt_ring.c pins literal values; if they ever
 * change, the format changed.
 *
 *   hash  = XXH3_64bits(key)                   (xxHash >= 0.8.0, seed 0)
 *   slot  = hash >> (64 - log2(nslots))        (the high bits; nslots = 2^b)
 *   point = XXH3_64bits_withSeed(name, vnode)  (ring point `vnode` of shard `name`)
 *
 * Ring positions and key hashes share one 64-bit space; slot s covers the
 * hashes [s << (64-b), (s+1) << (64-b)) and is placed on the ring at its
 * midpoint (rt_slot_midpoint).
 */
#ifndef RT_HASH_H
#define RT_HASH_H

#include <stddef.h>
#include <stdint.h>

#define RT_SLOTS_DEFAULT 4096u
#define RT_SLOTS_MAX 65536u

/* The 64-bit hash of a shard key (any bytes; len 0 is allowed). */
uint64_t rt_hash(const void *key, size_t len);

/* The position of virtual node `vnode` of the shard called `name` (len bytes). */
uint64_t rt_hash_point(const char *name, size_t len, uint32_t vnode);

/* 1 if n is a valid slot count: a power of two in [1, RT_SLOTS_MAX]. */
int rt_slots_valid(uint64_t n);

/* The slot of a hash: its high log2(nslots) bits.  nslots must satisfy
 * rt_slots_valid (not checked on this hot path). */
uint32_t rt_slot(uint64_t hash, uint32_t nslots);

/* The ring position a slot is evaluated at: the middle of its hash range. */
uint64_t rt_slot_midpoint(uint32_t slot, uint32_t nslots);

#endif
