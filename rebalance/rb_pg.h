/*
 * rb_pg.h — the slot mover of PostgreSQL backends (libpq, blocking)
 * (rebalance/rb_mover.h).
 */
#ifndef RB_PG_H
#define RB_PG_H

#include "rebalance/rb_mover.h"

extern const struct rb_mover_ops rb_pg_ops;

#endif
