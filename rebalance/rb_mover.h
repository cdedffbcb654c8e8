/*
 * rb_mover.h — the slot-mover interface: what the rebalancer
 * (rebalance/rb_rebalance.c) needs from a store to move the rows of a slot
 * from one shard to another, and the registry of stores that have one.
 *
 * The rebalancer owns the protocol (exclusions, freeze, switch, the state
 * file; docs/rebalancing.md); a mover only reads and writes rows.  Every call
 * is BLOCKING and runs on the mover thread, one connection per shard, never
 * on a worker loop.  Calls return 0 (or a count), or -1 with err filled with
 * a message naming the shard.
 *
 * Rows are addressed by their slot (the `_slot` column every sharded table
 * has, adapters/sql/sql_build.h) and their key (the domain's primary key).
 * Values never become SQL text: a mover passes them as parameters or escapes
 * them on the connection; identifiers (table and column names, from the
 * config and the store's own metadata) are quoted by sql_quote_ident().
 *
 * Adding a mover for a store: fill an rb_mover_ops (rb_mysql.c and rb_pg.c
 * are the two there are), add it to the table in rb_registry.c and to
 * RB_MOVER_TYPES; the gateway then accepts maps that move slots for that
 * backend type.
 */
#ifndef RB_MOVER_H
#define RB_MOVER_H

#include <stddef.h>
#include <stdint.h>

#include "adapters/sql/sql_build.h"

/* One blocking connection to one shard; each mover defines it. */
struct rb_conn;

/* A sharded table the rebalancer moves (one per sharded domain of the
 * backend). */
struct rb_table {
    char *name;  /* table */
    char *key;   /* primary key column */
    char *ddl;   /* idempotent DDL creating it (sql_build_migrate), or NULL */
    char **cols; /* every column, from the source's metadata (NULL until known) */
    unsigned ncols;
    int keycol; /* index of the key among cols */
};

/* A row of a slot, by key: its key as text and a hash of every column. */
struct rb_rowsum {
    char *key;
    char sum[33];
};

struct rb_mover_ops {
    const char *type;         /* the backend type it serves: "mysql", "pg" */
    enum sql_dialect dialect; /* of the DDL (sql_build_migrate) and the identifiers */

    /* Connect to a shard (`shard` names it in messages). */
    struct rb_conn *(*connect)(const char *shard, const char *dsn, int timeout_ms, char *err,
                               size_t errlen);
    /* 1 when the connection still answers (checked before each use). */
    int (*alive)(struct rb_conn *c);
    void (*close)(struct rb_conn *c);

    /* Run parameterless DDL (rb_table.ddl). */
    int (*exec_ddl)(struct rb_conn *c, const char *sql, char *err, size_t errlen);
    /* The table's columns in table order (malloc'd array of malloc'd names). */
    int (*columns)(struct rb_conn *c, const char *table, char ***cols, unsigned *ncols, char *err,
                   size_t errlen);
    /* 1 when the table exists and holds a row, 0 when not, -1 on error. */
    int (*has_rows)(struct rb_conn *c, const char *table, char *err, size_t errlen);

    /* COPY: up to `limit` rows of `slot` with a key above *after (NULL:
     * from the first), in key order, read from src and upserted into dst
     * (a row with the same key replaced whole).  *after becomes the last
     * key copied (malloc'd; the old one freed).  Rows copied (0: none left),
     * or -1. */
    long (*copy_batch)(struct rb_conn *src, struct rb_conn *dst, const struct rb_table *t,
                       uint32_t slot, char **after, int limit, char *err, size_t errlen);
    /* The rows of `slot` whose key is one of keys[0..n) (n small: at most
     * RB_KEYS_PER_CALL), read from src and upserted into dst.  Rows copied, or -1. */
    long (*copy_keys)(struct rb_conn *src, struct rb_conn *dst, const struct rb_table *t,
                      uint32_t slot, char *const *keys, size_t n, char *err, size_t errlen);
    /* Delete the rows of `slot` whose key is one of keys[0..n). */
    int (*delete_keys)(struct rb_conn *c, const struct rb_table *t, uint32_t slot,
                       char *const *keys, size_t n, char *err, size_t errlen);
    /* Every row of `slot`: key and a hash of every column (equal rows give
     * equal hashes on two shards of the store).  Malloc'd array, *n rows, in
     * any order; NULL on error. */
    struct rb_rowsum *(*rowsums)(struct rb_conn *c, const struct rb_table *t, uint32_t slot,
                                 size_t *n, char *err, size_t errlen);
    /* VERIFY: a digest of the slot's rows (count and order-independent
     * checksums of every column) as text; equal rows give equal digests. */
    int (*digest)(struct rb_conn *c, const struct rb_table *t, uint32_t slot, char *out,
                  size_t outlen, char *err, size_t errlen);
    /* Delete up to `limit` rows of `slot`: rows deleted (fewer than limit:
     * none left), or -1. */
    long (*delete_slot)(struct rb_conn *c, const struct rb_table *t, uint32_t slot, long limit,
                        char *err, size_t errlen);
    /* Delete every row of the slots slots[0..n) (the clean-up of a resumed
     * rebalance). */
    int (*delete_slots)(struct rb_conn *c, const struct rb_table *t, const uint32_t *slots,
                        size_t n, char *err, size_t errlen);
    /* Run a parameterless query whose rows are one integer column (slots):
     * a malloc'd array of *n slots (NULL when none).  0, or -1 with err.
     * The slot ownership tables (rb_slots.h) run through it and exec_ddl. */
    int (*slot_query)(struct rb_conn *c, const char *sql, uint32_t **slots, size_t *n, char *err,
                      size_t errlen);
};

/* Keys per copy_keys / delete_keys call. */
#define RB_KEYS_PER_CALL 200

/* A column list for columns(): copies of name(res, i) for i < n.  0, or -1
 * when out of memory (nothing kept). */
int rb_cols_copy(unsigned n, const char *(*name)(void *res, unsigned i), void *res, char ***cols,
                 unsigned *ncols);

/* Free a column list (columns()) of n names. */
void rb_cols_free(char **cols, unsigned n);

/* A rowsums() result from n rows: row(res, i, &key, &sum) gives row i's
 * key and hash (called for i = 0, 1, … in order).  NULL when out of memory. */
struct rb_rowsum *
rb_rowsums_copy(size_t n, void (*row)(void *res, size_t i, const char **key, const char **sum),
                void *res);

/* A slot_query() result from n rows: val(res, i) gives row i's slot as text
 * (called for i = 0, 1, … in order; NULL skipped).  0, or -1 when out of
 * memory. */
int rb_slots_copy(size_t n, const char *(*val)(void *res, size_t i), void *res, uint32_t **slots,
                  size_t *nslots);

/* Free what rowsums() returned. */
void rb_rowsums_free(struct rb_rowsum *rs, size_t n);

#endif
