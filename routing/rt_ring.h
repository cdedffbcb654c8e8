/*
 * rt_ring.h — a consistent-hash ring of weighted virtual nodes (ketama-style),
 * materialised over a fixed number of slots.
 *
 * Node i gets vnodes × weight[i] points; point k of a node sits at
 * rt_hash_point(name, k).  A point's position depends only on the node's NAME
 * and k — never on the node's place in the list — so adding a node only adds
 * points (every slot that moves, moves onto the new node) and removing one
 * only removes its points (only its slots move).  Points at the same position
 * are ordered by node name, so the list order never matters.
 *
 * A slot is owned by the node of the first point at or after the slot's
 * midpoint (rt_slot_midpoint), wrapping around.
 */
#ifndef RT_RING_H
#define RT_RING_H

#include <stddef.h>
#include <stdint.h>

#define RT_RING_DEFAULT_VNODES 2048u
#define RT_RING_MAX_VNODES 65536u
/* Upper bound on vnodes × Σ weight (memory: 16 bytes a point, build time). */
#define RT_RING_MAX_POINTS (1u << 21)

struct rt_ring;

struct rt_ring_node {
    const char *name; /* NUL-terminated, non-empty, unique within the ring */
    uint32_t weight;  /* >= 1 */
};

/* Build a ring.  The names are only read during the call.  NULL with err
 * filled on invalid input (no nodes, empty or duplicate name, weight 0, too
 * many points) or out of memory. */
struct rt_ring *rt_ring_new(const struct rt_ring_node *nodes, size_t nnodes, uint32_t vnodes,
                            char *err, size_t errlen) __attribute__((warn_unused_result));
void rt_ring_free(struct rt_ring *ring);

size_t rt_ring_nnodes(const struct rt_ring *ring);
size_t rt_ring_npoints(const struct rt_ring *ring);

/* The i-th point in ring order (ascending position): its position and node
 * index.  -1 if i is out of range. */
int rt_ring_point(const struct rt_ring *ring, size_t i, uint64_t *pos, size_t *node)
    __attribute__((warn_unused_result));

/* The node owning ring position pos: that of the first point >= pos
 * (wrapping to the first point). O(log points). */
size_t rt_ring_owner(const struct rt_ring *ring, uint64_t pos);

/* Materialise slot → node index for nslots slots (rt_slots_valid) into
 * owner[0..nslots-1]. O(points + slots).  -1 with err if nslots is invalid. */
int rt_ring_slots(const struct rt_ring *ring, uint32_t nslots, uint32_t *owner, char *err,
                  size_t errlen) __attribute__((warn_unused_result));

#endif
