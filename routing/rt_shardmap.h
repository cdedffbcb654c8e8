/*
 * rt_shardmap.h — the versioned shard map: which shard owns which slot.
 *
 * A shard map is a document (YAML or JSON; the config loader turns either
 * into a json-c tree):
 *
 *   version:   integer >= 1 (required)
 *   slots:     power of two in [1, 65536]             (default 4096)
 *   vnodes:    ring points per unit of weight, [1, 65536] (default 2048)
 *   shards:    [{name, dsn, weight (>= 1, default 1)}, …] (required, non-empty)
 *   overrides: {"0-99": "orders-1", "4095": "orders-2"}  (optional)
 *
 * vnodes × (sum of weights) may not exceed RT_RING_MAX_POINTS (2^21: a total
 * weight of 1024 at the default vnodes).  Unknown fields are rejected (a typo
 * never silently falls back to a default).
 *
 * The slot table is the weighted ring (rt_ring.h) evaluated over the slots,
 * then the override ranges pinned on top.  A shard is identified by its NAME:
 * the ring places a shard by name, so reordering the list moves nothing and
 * renaming a shard moves all its slots.
 *
 * A map is immutable once built and reference counted (atomically): workers
 * share one snapshot read-only, and a reload swaps in a new one while
 * in-flight requests keep the map they started with.
 */
#ifndef RT_SHARDMAP_H
#define RT_SHARDMAP_H

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

struct rt_shardmap;

/* Parse and fully validate a shard map document and build its slot table.
 * Returns a map holding one reference, or NULL with err filled with a message
 * naming the offending field / shard / override. doc is only read (no
 * reference is taken or dropped); NULL (JSON null) is rejected.
 *
 * json-c clamps integers beyond 64 bits to INT64_MAX / INT64_MIN, so those two
 * values are always rejected as out of range (they cannot be told apart from
 * a clamped larger number). */
struct rt_shardmap *rt_shardmap_from_json(const struct json_object *doc, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Take / drop a reference (thread-safe).  The last unref frees the map.
 * ref returns its argument; unref(NULL) is a no-op. */
struct rt_shardmap *rt_shardmap_ref(struct rt_shardmap *map);
void rt_shardmap_unref(struct rt_shardmap *map);

int64_t rt_shardmap_version(const struct rt_shardmap *map);
uint32_t rt_shardmap_nslots(const struct rt_shardmap *map);
uint32_t rt_shardmap_vnodes(const struct rt_shardmap *map);

/* Shards are indexed 0..nshards-1 in document order. */
size_t rt_shardmap_nshards(const struct rt_shardmap *map);
const char *rt_shardmap_shard_name(const struct rt_shardmap *map, size_t shard);
const char *rt_shardmap_shard_dsn(const struct rt_shardmap *map, size_t shard);
uint32_t rt_shardmap_shard_weight(const struct rt_shardmap *map, size_t shard);
/* How many slots the shard owns (ring + overrides). */
uint32_t rt_shardmap_shard_nslots(const struct rt_shardmap *map, size_t shard);
/* Index of the shard called name, or -1. */
int rt_shardmap_shard_index(const struct rt_shardmap *map, const char *name);

/* Override ranges, ascending and non-overlapping: slots first..last (inclusive)
 * pinned to the returned shard index; -1 if i is out of range. */
size_t rt_shardmap_noverrides(const struct rt_shardmap *map);
int rt_shardmap_override(const struct rt_shardmap *map, size_t i, uint32_t *first, uint32_t *last);

/* The shard index owning a slot, or -1 if slot >= nslots (e.g. a row's
 * stored slot under a map with fewer slots). */
int rt_shardmap_slot_owner(const struct rt_shardmap *map, uint32_t slot);

/* Route a shard key: hash it, take its slot, return the owning shard index
 * (never fails: always in [0, nshards)).
 * hash and slot (either may be NULL) receive the intermediate values; the
 * slot is what a sharded row stores. */
int rt_shardmap_route(const struct rt_shardmap *map, const void *key, size_t keylen, uint64_t *hash,
                      uint32_t *slot);

/* One slot changing owner between two maps.  The names are borrowed from the
 * maps (from: old, to: next): valid while both maps are referenced. */
struct rt_slot_move {
    uint32_t slot;
    const char *from;
    const char *to;
};

/* The slots whose owning shard (by name) differs between old and next, in
 * ascending slot order.  *moves is malloc'ed (NULL when there are none; free()
 * it) and *nmoves set.  -1 with err filled when the maps do not have the same
 * slot count (slot numbers then mean different key ranges: that is a
 * re-slotting of every row, not a list of moves) or out of memory. */
int rt_shardmap_diff(const struct rt_shardmap *old, const struct rt_shardmap *next,
                     struct rt_slot_move **moves, size_t *nmoves, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
