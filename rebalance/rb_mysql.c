/*
 * rb_mysql.c — the slot mover of MySQL / MariaDB backends: one BLOCKING
 * Connector/C connection per shard, on the mover thread.
 *
 * Values read from the source go back to the target as string literals
 * escaped on the target's connection (mysql_real_escape_string: the
 * connection's character set); REPLACE INTO upserts a row whole.
 * Identifiers are quoted by sql_quote_ident().
 */
#include "rebalance/rb_mysql.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mysql.h>

#include "adapters/mysql/ad_mysql.h"
#include "rebalance/rb_buf.h"

#define ID(b, name) rb_buf_ident((b), SQL_MYSQL, (name))

struct rb_conn {
    MYSQL *my;
    char *shard;
};

static struct rb_conn *my_connect(const char *shard, const char *dsn, int timeout_ms, char *err,
                                  size_t errlen)
{
    struct rb_conn *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->shard = strdup(shard)) == NULL) {
        free(c);
        snprintf(err, errlen, "shard '%s': out of memory", shard);
        return NULL;
    }
    c->my = ad_mysql_connect_dsn(dsn, timeout_ms, err, errlen);
    if (c->my == NULL) {
        free(c->shard);
        free(c);
        return NULL;
    }
    return c;
}

static int my_alive(struct rb_conn *c)
{
    return mysql_ping(c->my) == 0;
}

static void my_close(struct rb_conn *c)
{
    if (c == NULL) {
        return;
    }
    mysql_close(c->my);
    free(c->shard);
    free(c);
}

static int exec(struct rb_conn *c, const struct rb_buf *q, char *err, size_t errlen)
{
    if (q->p == NULL) {
        snprintf(err, errlen, "shard '%s': out of memory building a statement", c->shard);
        return -1;
    }
    if (mysql_real_query(c->my, q->p, (unsigned long)q->len) != 0) {
        snprintf(err, errlen, "shard '%s': %s", c->shard, mysql_error(c->my));
        return -1;
    }
    MYSQL_RES *res = mysql_store_result(c->my);
    if (res != NULL) {
        mysql_free_result(res);
    } else if (mysql_field_count(c->my) != 0) {
        snprintf(err, errlen, "shard '%s': %s", c->shard, mysql_error(c->my));
        return -1;
    }
    return 0;
}

static MYSQL_RES *query(struct rb_conn *c, const struct rb_buf *q, char *err, size_t errlen)
{
    if (q->p == NULL) {
        snprintf(err, errlen, "shard '%s': out of memory building a statement", c->shard);
        return NULL;
    }
    if (mysql_real_query(c->my, q->p, (unsigned long)q->len) != 0) {
        snprintf(err, errlen, "shard '%s': %s", c->shard, mysql_error(c->my));
        return NULL;
    }
    MYSQL_RES *res = mysql_store_result(c->my);
    if (res == NULL) {
        snprintf(err, errlen, "shard '%s': %s", c->shard, mysql_error(c->my));
    }
    return res;
}

/* A value as a quoted literal, escaped on that connection. */
static void lit(struct rb_buf *b, MYSQL *my, const char *v, unsigned long len)
{
    if (v == NULL) {
        RB_PUTS(b, "NULL");
        return;
    }
    if (rb_buf_grow(b, b->len + (size_t)len * 2 + 3) < 0) {
        return;
    }
    char *at = b->p + b->len;
    at[0] = '\'';
    unsigned long n = mysql_real_escape_string(my, at + 1, v, len);
    if (n == (unsigned long)-1) { /* cannot escape: no statement rather than a wrong one */
        rb_buf_fail(b);
        return;
    }
    at[n + 1] = '\'';
    b->len += n + 2;
    b->p[b->len] = '\0';
}

static int my_exec_ddl(struct rb_conn *c, const char *sql, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    rb_buf_put(&q, sql, strlen(sql));
    int rc = exec(c, &q, err, errlen);
    free(q.p);
    return rc;
}

static const char *field_name(void *res, unsigned i)
{
    return mysql_fetch_fields(res)[i].name;
}

static int my_columns(struct rb_conn *c, const char *table, char ***cols, unsigned *ncols,
                      char *err, size_t errlen)
{
    struct rb_buf q = {0};
    RB_PUTS(&q, "SELECT * FROM ");
    ID(&q, table);
    RB_PUTS(&q, " LIMIT 0");
    MYSQL_RES *res = query(c, &q, err, errlen);
    free(q.p);
    if (res == NULL) {
        return -1;
    }
    int rc = rb_cols_copy(mysql_num_fields(res), field_name, res, cols, ncols);
    mysql_free_result(res);
    if (rc < 0) {
        snprintf(err, errlen, "shard '%s': out of memory reading the columns of '%s'", c->shard,
                 table);
    }
    return rc;
}

static int my_has_rows(struct rb_conn *c, const char *table, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    rb_buf_putf(&q, "SELECT COUNT(*) FROM information_schema.tables t WHERE t.table_schema = "
                    "DATABASE() AND t.table_name = ");
    lit(&q, c->my, table, strlen(table));
    MYSQL_RES *res = query(c, &q, err, errlen);
    free(q.p);
    if (res == NULL) {
        return -1;
    }
    MYSQL_ROW row = mysql_fetch_row(res);
    int exists = row != NULL && row[0] != NULL && strcmp(row[0], "0") != 0;
    mysql_free_result(res);
    if (!exists) {
        return 0;
    }
    q = (struct rb_buf){0};
    RB_PUTS(&q, "SELECT 1 FROM ");
    ID(&q, table);
    RB_PUTS(&q, " LIMIT 1");
    res = query(c, &q, err, errlen);
    free(q.p);
    if (res == NULL) {
        return -1;
    }
    int rows = mysql_num_rows(res) > 0;
    mysql_free_result(res);
    return rows;
}

/* REPLACE the rows of res into the target; returns rows written or -1. */
static long replace_rows(const struct rb_table *t, MYSQL_RES *res, struct rb_conn *dst,
                         char **lastkey, char *err, size_t errlen)
{
    struct rb_buf b = {0};
    long n = 0;
    MYSQL_ROW row;
    RB_PUTS(&b, "REPLACE INTO ");
    ID(&b, t->name);
    RB_PUTS(&b, " (");
    rb_buf_cols(&b, SQL_MYSQL, t, NULL, NULL);
    RB_PUTS(&b, ") VALUES ");
    while ((row = mysql_fetch_row(res)) != NULL) {
        unsigned long *lens = mysql_fetch_lengths(res);
        rb_buf_put(&b, n ? ", (" : "(", n ? 3 : 1);
        for (unsigned i = 0; i < t->ncols; i++) {
            if (i) {
                RB_PUTS(&b, ", ");
            }
            lit(&b, dst->my, row[i], lens[i]);
        }
        RB_PUTS(&b, ")");
        if (lastkey != NULL) {
            free(*lastkey);
            *lastkey = strndup(row[t->keycol], lens[t->keycol]);
            if (*lastkey == NULL) { /* no key to go on from: fail the batch */
                free(b.p);
                snprintf(err, errlen, "shard '%s': out of memory", dst->shard);
                return -1;
            }
        }
        n++;
    }
    int rc = n > 0 ? exec(dst, &b, err, errlen) : 0;
    free(b.p);
    return rc < 0 ? -1 : n;
}

/* rb_buf_value_fn: a literal escaped on the connection ctx */
static void lit_value(struct rb_buf *b, void *ctx, const char *v)
{
    lit(b, ctx, v, strlen(v));
}

static long my_copy_batch(struct rb_conn *src, struct rb_conn *dst, const struct rb_table *t,
                          uint32_t slot, char **after, int limit, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    rb_buf_select_batch(&q, SQL_MYSQL, t, slot, *after, limit, lit_value, src->my);
    MYSQL_RES *res = query(src, &q, err, errlen);
    free(q.p);
    if (res == NULL) {
        return -1;
    }
    long n = replace_rows(t, res, dst, after, err, errlen);
    mysql_free_result(res);
    return n;
}

static long my_copy_keys(struct rb_conn *src, struct rb_conn *dst, const struct rb_table *t,
                         uint32_t slot, char *const *keys, size_t n, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    rb_buf_select_slot(&q, SQL_MYSQL, t, slot);
    rb_buf_key_in(&q, SQL_MYSQL, t, keys, n, lit_value, src->my);
    MYSQL_RES *res = query(src, &q, err, errlen);
    free(q.p);
    if (res == NULL) {
        return -1;
    }
    long moved = replace_rows(t, res, dst, NULL, err, errlen);
    mysql_free_result(res);
    return moved;
}

static int my_delete_keys(struct rb_conn *c, const struct rb_table *t, uint32_t slot,
                          char *const *keys, size_t n, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    RB_PUTS(&q, "DELETE");
    rb_buf_from_slot(&q, SQL_MYSQL, t, slot);
    rb_buf_key_in(&q, SQL_MYSQL, t, keys, n, lit_value, c->my);
    int rc = exec(c, &q, err, errlen);
    free(q.p);
    return rc;
}

/* rb_rowsums_copy: the rows of a stored result, in order */
static void next_row(void *res, size_t i, const char **key, const char **sum)
{
    MYSQL_ROW row = mysql_fetch_row(res);
    *key = row != NULL ? row[0] : NULL;
    *sum = row != NULL ? row[1] : NULL;
}

static struct rb_rowsum *my_rowsums(struct rb_conn *c, const struct rb_table *t, uint32_t slot,
                                    size_t *n, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    RB_PUTS(&q, "SELECT ");
    ID(&q, t->key);
    RB_PUTS(&q, ", MD5(CONCAT_WS(',', ");
    rb_buf_cols(&q, SQL_MYSQL, t, "QUOTE(", ")");
    RB_PUTS(&q, "))");
    rb_buf_from_slot(&q, SQL_MYSQL, t, slot);
    MYSQL_RES *res = query(c, &q, err, errlen);
    free(q.p);
    if (res == NULL) {
        return NULL;
    }
    size_t rows = (size_t)mysql_num_rows(res);
    struct rb_rowsum *rs = rb_rowsums_copy(rows, next_row, res);
    mysql_free_result(res);
    if (rs == NULL) {
        snprintf(err, errlen, "shard '%s': out of memory reading the rows of slot %u", c->shard,
                 slot);
        return NULL;
    }
    *n = rows;
    return rs;
}

static int my_digest(struct rb_conn *c, const struct rb_table *t, uint32_t slot, char *out,
                     size_t outlen, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    RB_PUTS(&q, "SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS(',', ");
    rb_buf_cols(&q, SQL_MYSQL, t, "QUOTE(", ")");
    RB_PUTS(&q, "))), 0), COALESCE(BIT_XOR(CRC32(CONCAT_WS(',', ");
    rb_buf_cols(&q, SQL_MYSQL, t, "QUOTE(", ")");
    RB_PUTS(&q, "))), 0)");
    rb_buf_from_slot(&q, SQL_MYSQL, t, slot);
    MYSQL_RES *res = query(c, &q, err, errlen);
    free(q.p);
    if (res == NULL) {
        return -1;
    }
    MYSQL_ROW row = mysql_fetch_row(res);
    snprintf(out, outlen, "%s/%s/%s", row != NULL && row[0] ? row[0] : "?",
             row != NULL && row[1] ? row[1] : "?", row != NULL && row[2] ? row[2] : "?");
    mysql_free_result(res);
    return 0;
}

static long my_delete_slot(struct rb_conn *c, const struct rb_table *t, uint32_t slot, long limit,
                           char *err, size_t errlen)
{
    struct rb_buf q = {0};
    RB_PUTS(&q, "DELETE");
    rb_buf_from_slot(&q, SQL_MYSQL, t, slot);
    rb_buf_putf(&q, " LIMIT %ld", limit);
    int rc = exec(c, &q, err, errlen);
    free(q.p);
    return rc < 0 ? -1 : (long)mysql_affected_rows(c->my);
}

static int my_delete_slots(struct rb_conn *c, const struct rb_table *t, const uint32_t *slots,
                           size_t n, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    rb_buf_delete_slots(&q, SQL_MYSQL, t, slots, n);
    int rc = exec(c, &q, err, errlen);
    free(q.p);
    return rc;
}

/* rb_slots_copy: the next row's first column of a stored result */
static const char *next_slot(void *res, size_t i)
{
    (void)i;
    MYSQL_ROW row = mysql_fetch_row(res);
    return row != NULL ? row[0] : NULL;
}

static int my_slot_query(struct rb_conn *c, const char *sql, uint32_t **slots, size_t *n, char *err,
                         size_t errlen)
{
    struct rb_buf q = {0};
    rb_buf_put(&q, sql, strlen(sql));
    MYSQL_RES *res = query(c, &q, err, errlen);
    free(q.p);
    if (res == NULL) {
        return -1;
    }
    int rc = rb_slots_copy((size_t)mysql_num_rows(res), next_slot, res, slots, n);
    mysql_free_result(res);
    if (rc < 0) {
        snprintf(err, errlen, "shard '%s': out of memory reading slots", c->shard);
    }
    return rc;
}

const struct rb_mover_ops rb_mysql_ops = {
    .type = "mysql",
    .dialect = SQL_MYSQL,
    .connect = my_connect,
    .alive = my_alive,
    .close = my_close,
    .exec_ddl = my_exec_ddl,
    .columns = my_columns,
    .has_rows = my_has_rows,
    .copy_batch = my_copy_batch,
    .copy_keys = my_copy_keys,
    .delete_keys = my_delete_keys,
    .rowsums = my_rowsums,
    .digest = my_digest,
    .delete_slot = my_delete_slot,
    .delete_slots = my_delete_slots,
    .slot_query = my_slot_query,
};
