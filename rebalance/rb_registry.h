/*
 * rb_registry.h — which stores can be rebalanced online: the slot movers
 * (rebalance/rb_mover.h) by backend type.
 */
#ifndef RB_REGISTRY_H
#define RB_REGISTRY_H

struct rb_mover_ops;

/* The backend types that have a mover (for messages). */
#define RB_MOVER_TYPES "mysql, pg"

/* The mover for a backend type, or NULL: the type cannot be rebalanced
 * online (a map that moves its slots is refused). */
const struct rb_mover_ops *rb_mover_for(const char *type);

#endif
