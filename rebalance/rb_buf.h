/*
 * rb_buf.h — a growing statement text for the slot movers.
 *
 * A statement is never cut short: when memory runs out the buffer is
 * dropped (p = NULL, failed = 1), every later put is a no-op, and the movers
 * refuse a NULL statement with an error.  Identifiers go in through
 * rb_buf_ident(), which quotes them as the SQL builders do
 * (sql_quote_ident); values never go in as text: they travel as parameters
 * (PostgreSQL) or escaped on the connection (MySQL, rb_mysql.c).
 */
#ifndef RB_BUF_H
#define RB_BUF_H

#include <stddef.h>

#include "adapters/sql/sql_build.h"
#include "rebalance/rb_mover.h"

struct rb_buf {
    char *p;
    size_t len, cap;
    int failed;
};

/* Room for `need` bytes in all (the NUL included): 0, or -1 (dropped). */
int rb_buf_grow(struct rb_buf *b, size_t need);
/* Drop the statement: it could not be built whole. */
void rb_buf_fail(struct rb_buf *b);
void rb_buf_put(struct rb_buf *b, const char *s, size_t n);
/* A string literal. */
#define RB_PUTS(b, lit) rb_buf_put((b), "" lit, sizeof(lit) - 1)
void rb_buf_putf(struct rb_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A quoted identifier of the dialect (from the config or the store's own
 * column names, never from a client). */
void rb_buf_ident(struct rb_buf *b, enum sql_dialect dialect, const char *name);

/* Pieces of statements both SQL movers write alike. */
/* The table's columns, comma-separated, each as pre<column>post (pre, post:
 * NULL for none). */
void rb_buf_cols(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                 const char *pre, const char *post);
/* " FROM <table> WHERE _slot = <slot>" */
void rb_buf_from_slot(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                      uint32_t slot);
/* Writes a value into a statement: MySQL an escaped literal, PostgreSQL a
 * parameter and its placeholder. */
typedef void (*rb_buf_value_fn)(struct rb_buf *b, void *ctx, const char *v);
/* "SELECT <columns> FROM <table> WHERE _slot = <slot>" */
void rb_buf_select_slot(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                        uint32_t slot);
/* A copy batch: rb_buf_select_slot() [" AND <key> > <after>"]
 * " ORDER BY <key> LIMIT <limit>" */
void rb_buf_select_batch(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                         uint32_t slot, const char *after, int limit, rb_buf_value_fn val,
                         void *ctx);
/* " AND <key> IN (<keys>)" */
void rb_buf_key_in(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                   char *const *keys, size_t n, rb_buf_value_fn val, void *ctx);
/* "DELETE FROM <table> WHERE _slot IN (<slots>)" */
void rb_buf_delete_slots(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                         const uint32_t *slots, size_t n);

/* The slot ownership table of t (sql_slots_table; rb_slots_* in
 * rb_mover.h): create it if missing; grant (insert, existing ones kept) and
 * revoke (delete) slots; list the slots owned, in order. */
void rb_buf_slots_ddl(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t);
void rb_buf_slots_grant(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                        const uint32_t *slots, size_t n);
void rb_buf_slots_revoke(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                         const uint32_t *slots, size_t n);
void rb_buf_slots_owned(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t);
/* "SELECT DISTINCT _slot FROM <table> WHERE _slot IN (<slots>)": which of
 * the slots the table holds rows of. */
void rb_buf_slots_held(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                       const uint32_t *slots, size_t n);

#endif
