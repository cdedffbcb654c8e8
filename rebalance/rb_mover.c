/*
 * rb_mover.c — helpers shared by the slot movers.
 */
#include "rebalance/rb_mover.h"

#include <stdlib.h>

void rb_rowsums_free(struct rb_rowsum *rs, size_t n)
{
    for (size_t i = 0; rs != NULL && i < n; i++) {
        free(rs[i].key);
    }
    free(rs);
}

void rb_cols_free(char **cols, unsigned n)
{
    for (unsigned i = 0; cols != NULL && i < n; i++) {
        free(cols[i]);
    }
    free(cols);
}
