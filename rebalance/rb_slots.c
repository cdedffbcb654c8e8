/*
 * rb_slots.c — the slot ownership tables of the shards (rb_slots.h).
 */
#include "rebalance/rb_slots.h"

#include <stdio.h>
#include <stdlib.h>

#include "rebalance/rb_buf.h"

/* Run a statement without rows; the buffer is freed. */
static int slots_exec(const struct rb_mover_ops *ops, struct rb_conn *c, struct rb_buf *q,
                      char *err, size_t errlen)
{
    if (q->p == NULL) {
        snprintf(err, errlen, "out of memory building a statement");
        return -1;
    }
    int rc = ops->exec_ddl(c, q->p, err, errlen);
    free(q->p);
    return rc;
}

/* Run a query of slots; the buffer is freed. */
static int slots_query(const struct rb_mover_ops *ops, struct rb_conn *c, struct rb_buf *q,
                       uint32_t **slots, size_t *n, char *err, size_t errlen)
{
    *slots = NULL;
    *n = 0;
    if (q->p == NULL) {
        snprintf(err, errlen, "out of memory building a statement");
        return -1;
    }
    int rc = ops->slot_query(c, q->p, slots, n, err, errlen);
    free(q->p);
    return rc;
}

int rb_slots_ensure(const struct rb_mover_ops *ops, struct rb_conn *c, const struct rb_table *t,
                    char *err, size_t errlen)
{
    struct rb_buf q = {0};
    rb_buf_slots_ddl(&q, ops->dialect, t);
    return slots_exec(ops, c, &q, err, errlen);
}

int rb_slots_grant(const struct rb_mover_ops *ops, struct rb_conn *c, const struct rb_table *t,
                   const uint32_t *slots, size_t n, char *err, size_t errlen)
{
    if (n == 0) {
        return 0;
    }
    struct rb_buf q = {0};
    rb_buf_slots_grant(&q, ops->dialect, t, slots, n);
    return slots_exec(ops, c, &q, err, errlen);
}

int rb_slots_revoke(const struct rb_mover_ops *ops, struct rb_conn *c, const struct rb_table *t,
                    const uint32_t *slots, size_t n, char *err, size_t errlen)
{
    if (n == 0) {
        return 0;
    }
    struct rb_buf q = {0};
    rb_buf_slots_revoke(&q, ops->dialect, t, slots, n);
    return slots_exec(ops, c, &q, err, errlen);
}

int rb_slots_owned(const struct rb_mover_ops *ops, struct rb_conn *c, const struct rb_table *t,
                   uint32_t **slots, size_t *n, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    rb_buf_slots_owned(&q, ops->dialect, t);
    return slots_query(ops, c, &q, slots, n, err, errlen);
}

int rb_slots_held(const struct rb_mover_ops *ops, struct rb_conn *c, const struct rb_table *t,
                  const uint32_t *slots, size_t n, uint32_t **held, size_t *nheld, char *err,
                  size_t errlen)
{
    *held = NULL;
    *nheld = 0;
    if (n == 0) {
        return 0;
    }
    struct rb_buf q = {0};
    rb_buf_slots_held(&q, ops->dialect, t, slots, n);
    return slots_query(ops, c, &q, held, nheld, err, errlen);
}
