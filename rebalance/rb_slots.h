/*
 * rb_slots.h — the slot ownership tables of a sharded SQL backend's shards
 * (`_polygate_slots_<table>`, sql_slots_table; docs/rebalancing.md, "The
 * fence at the shard"), on a slot mover's blocking connection.
 */
#ifndef RB_SLOTS_H
#define RB_SLOTS_H

#include <stddef.h>
#include <stdint.h>

#include "rebalance/rb_mover.h"

/* Per sharded table t, the slots of t the shard owns, which every fenced
 * write to t checks in its own statement (adapters/sql/sql_build.h).  The
 * same statements for every SQL store but for the dialect, run through the
 * mover's exec_ddl and slot_query (rb_mover.h).  0, or -1 with err naming
 * the shard.
 *   ensure: create the table when missing;
 *   grant:  the shard owns slots[0..n) (idempotent);
 *   revoke: it no longer does (idempotent) — a DELETE of the slots' rows,
 *           which waits for the fenced writes in flight holding their shared
 *           lock; once it returns, no write of those slots runs there;
 *   owned:  the slots it owns, ascending (*slots malloc'd, NULL when none);
 *   held:   which of slots[0..n) t holds rows of (*held malloc'd). */
int rb_slots_ensure(const struct rb_mover_ops *ops, struct rb_conn *c, const struct rb_table *t,
                    char *err, size_t errlen) __attribute__((warn_unused_result));
int rb_slots_grant(const struct rb_mover_ops *ops, struct rb_conn *c, const struct rb_table *t,
                   const uint32_t *slots, size_t n, char *err, size_t errlen)
    __attribute__((warn_unused_result));
int rb_slots_revoke(const struct rb_mover_ops *ops, struct rb_conn *c, const struct rb_table *t,
                    const uint32_t *slots, size_t n, char *err, size_t errlen)
    __attribute__((warn_unused_result));
int rb_slots_owned(const struct rb_mover_ops *ops, struct rb_conn *c, const struct rb_table *t,
                   uint32_t **slots, size_t *n, char *err, size_t errlen)
    __attribute__((warn_unused_result));
int rb_slots_held(const struct rb_mover_ops *ops, struct rb_conn *c, const struct rb_table *t,
                  const uint32_t *slots, size_t n, uint32_t **held, size_t *nheld, char *err,
                  size_t errlen) __attribute__((warn_unused_result));

#endif
