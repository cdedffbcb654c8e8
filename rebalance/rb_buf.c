/*
 * rb_buf.c — a growing statement text for the slot movers.
 */
#include "rebalance/rb_buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rb_buf_fail(struct rb_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->failed = 1;
}

int rb_buf_grow(struct rb_buf *b, size_t need)
{
    if (b->failed) {
        return -1;
    }
    if (need <= b->cap) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < need) {
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        rb_buf_fail(b);
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void rb_buf_put(struct rb_buf *b, const char *s, size_t n)
{
    if (rb_buf_grow(b, b->len + n + 1) < 0) {
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void rb_buf_putf(struct rb_buf *b, const char *fmt, ...)
{
    if (b->failed) {
        return;
    }
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    size_t room = b->cap - b->len;
    int n = vsnprintf(b->p != NULL ? b->p + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n >= room) { /* did not fit: grow to the exact size, format again */
        if (rb_buf_grow(b, b->len + (size_t)n + 1) == 0) {
            n = vsnprintf(b->p + b->len, (size_t)n + 1, fmt, again);
        }
    }
    va_end(again);
    if (b->failed) {
        return;
    }
    if (n < 0) { /* an encoding error: no statement rather than a wrong one */
        rb_buf_fail(b);
        return;
    }
    b->len += (size_t)n;
}

void rb_buf_ident(struct rb_buf *b, enum sql_dialect dialect, const char *name)
{
    if (rb_buf_grow(b, b->len + 2 * strlen(name) + 3) < 0) {
        return;
    }
    b->len += sql_quote_ident(dialect, name, b->p + b->len);
}

void rb_buf_cols(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                 const char *pre, const char *post)
{
    for (unsigned i = 0; i < t->ncols; i++) {
        rb_buf_putf(b, "%s%s", i ? ", " : "", pre != NULL ? pre : "");
        rb_buf_ident(b, dialect, t->cols[i]);
        rb_buf_putf(b, "%s", post != NULL ? post : "");
    }
}

void rb_buf_from_slot(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                      uint32_t slot)
{
    RB_PUTS(b, " FROM ");
    rb_buf_ident(b, dialect, t->name);
    RB_PUTS(b, " WHERE ");
    rb_buf_ident(b, dialect, "_slot");
    rb_buf_putf(b, " = %u", slot);
}

/* " WHERE <col> IN (<slots>)" */
static void slots_in(struct rb_buf *b, enum sql_dialect dialect, const char *col,
                     const uint32_t *slots, size_t n)
{
    RB_PUTS(b, " WHERE ");
    rb_buf_ident(b, dialect, col);
    RB_PUTS(b, " IN (");
    for (size_t i = 0; i < n; i++) {
        rb_buf_putf(b, "%s%u", i ? ", " : "", slots[i]);
    }
    RB_PUTS(b, ")");
}

void rb_buf_delete_slots(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                         const uint32_t *slots, size_t n)
{
    RB_PUTS(b, "DELETE FROM ");
    rb_buf_ident(b, dialect, t->name);
    slots_in(b, dialect, "_slot", slots, n);
}

/* The ownership table of t (sql_slots_table), quoted. */
static void slots_ident(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t)
{
    size_t n = strlen(t->name) + sizeof(SQL_SLOTS_PREFIX);
    char *name = malloc(n);
    if (name == NULL) {
        rb_buf_fail(b);
        return;
    }
    sql_slots_table(t->name, name, n);
    rb_buf_ident(b, dialect, name);
    free(name);
}

void rb_buf_slots_ddl(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t)
{
    if (dialect == SQL_PG) { /* serialised between processes, as sql_build_migrate does */
        RB_PUTS(b, "SELECT pg_advisory_xact_lock(7370153842196624); ");
    }
    RB_PUTS(b, "CREATE TABLE IF NOT EXISTS ");
    slots_ident(b, dialect, t);
    RB_PUTS(b, " (");
    rb_buf_ident(b, dialect, "slot");
    if (dialect == SQL_PG) {
        RB_PUTS(b, " integer PRIMARY KEY)");
    } else {
        RB_PUTS(b, " INT NOT NULL PRIMARY KEY) ENGINE=InnoDB");
    }
}

void rb_buf_slots_grant(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                        const uint32_t *slots, size_t n)
{
    if (dialect == SQL_MYSQL) {
        RB_PUTS(b, "INSERT IGNORE INTO ");
    } else {
        RB_PUTS(b, "INSERT INTO ");
    }
    slots_ident(b, dialect, t);
    RB_PUTS(b, " (");
    rb_buf_ident(b, dialect, "slot");
    RB_PUTS(b, ") VALUES ");
    for (size_t i = 0; i < n; i++) {
        rb_buf_putf(b, "%s(%u)", i ? ", " : "", slots[i]);
    }
    if (dialect == SQL_PG) {
        RB_PUTS(b, " ON CONFLICT DO NOTHING");
    }
}

void rb_buf_slots_revoke(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                         const uint32_t *slots, size_t n)
{
    RB_PUTS(b, "DELETE FROM ");
    slots_ident(b, dialect, t);
    slots_in(b, dialect, "slot", slots, n);
}

void rb_buf_slots_owned(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t)
{
    RB_PUTS(b, "SELECT ");
    rb_buf_ident(b, dialect, "slot");
    RB_PUTS(b, " FROM ");
    slots_ident(b, dialect, t);
    RB_PUTS(b, " ORDER BY ");
    rb_buf_ident(b, dialect, "slot");
}

void rb_buf_slots_held(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                       const uint32_t *slots, size_t n)
{
    RB_PUTS(b, "SELECT DISTINCT ");
    rb_buf_ident(b, dialect, "_slot");
    RB_PUTS(b, " FROM ");
    rb_buf_ident(b, dialect, t->name);
    slots_in(b, dialect, "_slot", slots, n);
}

void rb_buf_select_slot(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                        uint32_t slot)
{
    RB_PUTS(b, "SELECT ");
    rb_buf_cols(b, dialect, t, NULL, NULL);
    rb_buf_from_slot(b, dialect, t, slot);
}

void rb_buf_select_batch(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                         uint32_t slot, const char *after, int limit, rb_buf_value_fn val,
                         void *ctx)
{
    rb_buf_select_slot(b, dialect, t, slot);
    if (after != NULL) {
        RB_PUTS(b, " AND ");
        rb_buf_ident(b, dialect, t->key);
        RB_PUTS(b, " > ");
        val(b, ctx, after);
    }
    RB_PUTS(b, " ORDER BY ");
    rb_buf_ident(b, dialect, t->key);
    rb_buf_putf(b, " LIMIT %d", limit);
}

void rb_buf_key_in(struct rb_buf *b, enum sql_dialect dialect, const struct rb_table *t,
                   char *const *keys, size_t n, rb_buf_value_fn val, void *ctx)
{
    RB_PUTS(b, " AND ");
    rb_buf_ident(b, dialect, t->key);
    RB_PUTS(b, " IN (");
    for (size_t i = 0; i < n; i++) {
        if (i) {
            RB_PUTS(b, ", ");
        }
        val(b, ctx, keys[i]);
    }
    RB_PUTS(b, ")");
}
