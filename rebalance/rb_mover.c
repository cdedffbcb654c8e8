/*
 * rb_mover.c — helpers shared by the slot movers.
 */
#include "rebalance/rb_mover.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int rb_cols_copy(unsigned n, const char *(*name)(void *res, unsigned i), void *res, char ***cols,
                 unsigned *ncols)
{
    char **v = calloc(n + 1, sizeof(*v));
    int ok = v != NULL;
    for (unsigned i = 0; ok && i < n; i++) {
        ok = (v[i] = strdup(name(res, i))) != NULL;
    }
    if (!ok) {
        rb_cols_free(v, n);
        return -1;
    }
    *cols = v;
    *ncols = n;
    return 0;
}

struct rb_rowsum *
rb_rowsums_copy(size_t n, void (*row)(void *res, size_t i, const char **key, const char **sum),
                void *res)
{
    struct rb_rowsum *rs = calloc(n + 1, sizeof(*rs));
    for (size_t i = 0; rs != NULL && i < n; i++) {
        const char *key = NULL, *sum = NULL;
        row(res, i, &key, &sum);
        rs[i].key = strdup(key != NULL ? key : "");
        if (rs[i].key == NULL) {
            rb_rowsums_free(rs, i);
            return NULL;
        }
        snprintf(rs[i].sum, sizeof(rs[i].sum), "%s", sum != NULL ? sum : "");
    }
    return rs;
}

int rb_slots_copy(size_t n, const char *(*val)(void *res, size_t i), void *res, uint32_t **slots,
                  size_t *nslots)
{
    uint32_t *v = calloc(n + 1, sizeof(*v));
    if (v == NULL) {
        return -1;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *t = val(res, i);
        if (t != NULL) {
            v[k++] = (uint32_t)strtoul(t, NULL, 10);
        }
    }
    *slots = v;
    *nslots = k;
    return 0;
}
