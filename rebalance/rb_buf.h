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

#endif
