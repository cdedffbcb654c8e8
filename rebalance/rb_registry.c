/*
 * rb_registry.c — the slot movers by backend type.
 */
#include "rebalance/rb_registry.h"

#include <string.h>

#include "rebalance/rb_mover.h"
#include "rebalance/rb_mysql.h"
#include "rebalance/rb_pg.h"

static const struct rb_mover_ops *const movers[] = {&rb_mysql_ops, &rb_pg_ops};

const struct rb_mover_ops *rb_mover_for(const char *type)
{
    for (size_t i = 0; type != NULL && i < sizeof(movers) / sizeof(movers[0]); i++) {
        if (strcmp(movers[i]->type, type) == 0) {
            return movers[i];
        }
    }
    return NULL;
}
