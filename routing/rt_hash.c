/*
 * rt_hash.c — key hash, slot and ring point functions (see rt_hash.h).
 *
 * Choice pinned here (part of the on-disk format):
 *   key hash   = XXH3_64bits(key, len)                 (seed 0)
 *   ring point = XXH3_64bits_withSeed(name, len, vnode index)
 * from xxHash 0.8.x (Debian: libxxhash 0.8.1).  XXH3's output is frozen since
 * 0.8.0, it is the fastest xxHash variant on short keys (ids, customer ids),
 * and its 64-bit output is well mixed in the high bits, which is what a slot
 * uses.  Do not change the functions or the seeds: rows store their slot, and
 * tests/unit/test_rt_ring.c pins literal hashes, points and slots.
 */
#include "routing/rt_hash.h"

#include <xxhash.h>

#if XXH_VERSION_NUMBER < 800
#error "xxHash >= 0.8.0 is required: XXH3's output is only stable from 0.8.0"
#endif

uint64_t rt_hash(const void *key, size_t len)
{
    static const char empty[1] = {0};

    return (uint64_t)XXH3_64bits(len ? key : empty, len);
}

uint64_t rt_hash_point(const char *name, size_t len, uint32_t vnode)
{
    static const char empty[1] = {0};

    /* The vnode index is the seed: no concatenation buffer, no length limit,
     * and XXH3's seeded variants are as frozen as the unseeded one. */
    return (uint64_t)XXH3_64bits_withSeed(len ? name : empty, len, (XXH64_hash_t)vnode);
}

int rt_slots_valid(uint64_t n)
{
    return n >= 1 && n <= RT_SLOTS_MAX && (n & (n - 1)) == 0;
}

static unsigned slot_bits(uint32_t nslots)
{
    return nslots > 1 ? (unsigned)__builtin_ctz(nslots) : 0;
}

uint32_t rt_slot(uint64_t hash, uint32_t nslots)
{
    unsigned b = slot_bits(nslots);

    return b ? (uint32_t)(hash >> (64 - b)) : 0;
}

uint64_t rt_slot_midpoint(uint32_t slot, uint32_t nslots)
{
    unsigned b = slot_bits(nslots);
    unsigned shift = 64 - b; /* 48..64 */

    if (b == 0)
        return UINT64_C(1) << 63;
    return ((uint64_t)slot << shift) | (UINT64_C(1) << (shift - 1));
}
