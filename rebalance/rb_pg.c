/*
 * rb_pg.c — the slot mover of PostgreSQL backends: one BLOCKING libpq
 * connection per shard, on the mover thread.
 *
 * Every value travels as a text parameter (PQexecParams): the rows read
 * from the source (text format) go to the target as parameters of
 * INSERT … ON CONFLICT (key) DO UPDATE, which replaces a row whole; keys to
 * compare or delete go the same way.  Only identifiers (sql_quote_ident)
 * and the mover's own numbers (slots, limits) are written into the text.
 * The session runs in UTC with round-trip float output, so that a row
 * reads as the same text on every shard (the row hashes compare text).
 */
#include "rebalance/rb_pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "rebalance/rb_buf.h"

#define ID(b, name) rb_buf_ident((b), SQL_PG, (name))
#define MAX_PARAMS 65535 /* per statement (the protocol counts them in 16 bits) */

struct rb_conn {
    PGconn *pg;
    char *shard;
};

/* Parameters of one statement: text values (NULL: SQL NULL), borrowed. */
struct params {
    const char **v;
    size_t n, cap;
    int failed;
};

static void param(struct params *p, const char *v)
{
    if (p->failed) {
        return;
    }
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        const char **nv = realloc(p->v, cap * sizeof(*nv));
        if (nv == NULL) {
            p->failed = 1;
            return;
        }
        p->v = nv;
        p->cap = cap;
    }
    p->v[p->n++] = v;
}

/* rb_buf_value_fn: v as the next parameter of ctx (struct params), "$n" in
 * the text */
static void param_value(struct rb_buf *q, void *ctx, const char *v)
{
    struct params *p = ctx;
    param(p, v);
    rb_buf_putf(q, "$%zu", p->n);
}

static struct rb_conn *pg_connect(const char *shard, const char *dsn, int timeout_ms, char *err,
                                  size_t errlen)
{
    struct rb_conn *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->shard = strdup(shard)) == NULL) {
        free(c);
        snprintf(err, errlen, "shard '%s': out of memory", shard);
        return NULL;
    }
    char tmo[16];
    snprintf(tmo, sizeof(tmo), "%d", (timeout_ms + 999) / 1000);
    /* later keys win: the DSN's own connect_timeout over ours */
    static const char *const keys[] = {"connect_timeout", "dbname",           "options",
                                       "client_encoding", "application_name", NULL};
    const char *vals[] = {
        tmo, dsn, "-c TimeZone=UTC -c extra_float_digits=3", "UTF8", "polygate-rebalance", NULL};
    c->pg = PQconnectdbParams(keys, vals, 1);
    if (c->pg == NULL || PQstatus(c->pg) != CONNECTION_OK) {
        const char *msg = c->pg != NULL ? PQerrorMessage(c->pg) : "out of memory";
        int ml = (int)strcspn(msg, "\n");
        snprintf(err, errlen, "shard '%s': cannot connect: %.*s", shard, ml, msg);
        PQfinish(c->pg);
        free(c->shard);
        free(c);
        return NULL;
    }
    return c;
}

static int pg_alive(struct rb_conn *c)
{
    if (PQstatus(c->pg) != CONNECTION_OK) {
        return 0;
    }
    PGresult *r = PQexec(c->pg, "SELECT 1");
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    return ok;
}

static void pg_close(struct rb_conn *c)
{
    if (c == NULL) {
        return;
    }
    PQfinish(c->pg);
    free(c->shard);
    free(c);
}

/* Run q with p's parameters; the result (rows or a command), or NULL with err. */
static PGresult *run(struct rb_conn *c, const struct rb_buf *q, const struct params *p, char *err,
                     size_t errlen)
{
    if (q->p == NULL || (p != NULL && p->failed)) {
        snprintf(err, errlen, "shard '%s': out of memory building a statement", c->shard);
        return NULL;
    }
    PGresult *r = p != NULL && p->n > 0
                      ? PQexecParams(c->pg, q->p, (int)p->n, NULL, p->v, NULL, NULL, 0)
                      : PQexec(c->pg, q->p);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        const char *msg = r != NULL ? PQresultErrorMessage(r) : PQerrorMessage(c->pg);
        int ml = (int)strcspn(msg, "\n");
        snprintf(err, errlen, "shard '%s': %.*s", c->shard, ml, msg);
        PQclear(r);
        return NULL;
    }
    return r;
}

static int run_cmd(struct rb_conn *c, const struct rb_buf *q, const struct params *p, char *err,
                   size_t errlen)
{
    PGresult *r = run(c, q, p, err, errlen);
    PQclear(r);
    return r != NULL ? 0 : -1;
}

/* md5 of the row's columns as text: ROW(a, b, …)::text */
static void row_hash(struct rb_buf *b, const struct rb_table *t)
{
    RB_PUTS(b, "md5(ROW(");
    rb_buf_cols(b, SQL_PG, t, NULL, NULL);
    RB_PUTS(b, ")::text)");
}

static int pg_exec_ddl(struct rb_conn *c, const char *sql, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    rb_buf_put(&q, sql, strlen(sql));
    int rc = run_cmd(c, &q, NULL, err, errlen);
    free(q.p);
    return rc;
}

static const char *field_name(void *res, unsigned i)
{
    return PQfname(res, (int)i);
}

static int pg_columns(struct rb_conn *c, const char *table, char ***cols, unsigned *ncols,
                      char *err, size_t errlen)
{
    struct rb_buf q = {0};
    RB_PUTS(&q, "SELECT * FROM ");
    ID(&q, table);
    RB_PUTS(&q, " LIMIT 0");
    PGresult *r = run(c, &q, NULL, err, errlen);
    free(q.p);
    if (r == NULL) {
        return -1;
    }
    int rc = rb_cols_copy((unsigned)PQnfields(r), field_name, r, cols, ncols);
    PQclear(r);
    if (rc < 0) {
        snprintf(err, errlen, "shard '%s': out of memory reading the columns of '%s'", c->shard,
                 table);
    }
    return rc;
}

static int pg_has_rows(struct rb_conn *c, const char *table, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    struct params p = {0};
    RB_PUTS(&q, "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
                "AND table_name = ");
    param_value(&q, &p, table);
    PGresult *r = run(c, &q, &p, err, errlen);
    free(q.p);
    free(p.v);
    if (r == NULL) {
        return -1;
    }
    int exists = PQntuples(r) > 0;
    PQclear(r);
    if (!exists) {
        return 0;
    }
    q = (struct rb_buf){0};
    RB_PUTS(&q, "SELECT 1 FROM ");
    ID(&q, table);
    RB_PUTS(&q, " LIMIT 1");
    r = run(c, &q, NULL, err, errlen);
    free(q.p);
    if (r == NULL) {
        return -1;
    }
    int rows = PQntuples(r) > 0;
    PQclear(r);
    return rows;
}

/* Upsert rows [from, to) of r (columns as t->cols) into dst: one INSERT …
 * ON CONFLICT (key) DO UPDATE of every other column, the values as
 * parameters.  0, or -1. */
static int upsert_range(const struct rb_table *t, PGresult *r, int from, int to,
                        struct rb_conn *dst, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    struct params p = {0};
    RB_PUTS(&q, "INSERT INTO ");
    ID(&q, t->name);
    RB_PUTS(&q, " (");
    rb_buf_cols(&q, SQL_PG, t, NULL, NULL);
    RB_PUTS(&q, ") VALUES ");
    for (int i = from; i < to; i++) {
        rb_buf_putf(&q, "%s(", i > from ? ", " : "");
        for (unsigned k = 0; k < t->ncols; k++) {
            if (k) {
                RB_PUTS(&q, ", ");
            }
            param_value(&q, &p, PQgetisnull(r, i, (int)k) ? NULL : PQgetvalue(r, i, (int)k));
        }
        RB_PUTS(&q, ")");
    }
    RB_PUTS(&q, " ON CONFLICT (");
    ID(&q, t->key);
    RB_PUTS(&q, ") DO ");
    if (t->ncols < 2) {
        RB_PUTS(&q, "NOTHING");
    } else {
        RB_PUTS(&q, "UPDATE SET ");
        for (unsigned k = 0, n = 0; k < t->ncols; k++) {
            if ((int)k == t->keycol) {
                continue;
            }
            if (n++) {
                RB_PUTS(&q, ", ");
            }
            ID(&q, t->cols[k]);
            RB_PUTS(&q, " = EXCLUDED.");
            ID(&q, t->cols[k]);
        }
    }
    int rc = run_cmd(dst, &q, &p, err, errlen);
    free(q.p);
    free(p.v);
    return rc;
}

/* Upsert every row of r into dst, as many rows per statement as the
 * protocol's parameter limit allows.  Rows written, or -1. */
static long upsert_rows(const struct rb_table *t, PGresult *r, struct rb_conn *dst, char *err,
                        size_t errlen)
{
    int nrows = PQntuples(r);
    if (nrows > 0 && (unsigned)PQnfields(r) != t->ncols) {
        snprintf(err, errlen, "shard '%s': table '%s' changed its columns during the move",
                 dst->shard, t->name);
        return -1;
    }
    int per = (int)(MAX_PARAMS / (t->ncols > 0 ? t->ncols : 1));
    for (int from = 0; from < nrows; from += per) {
        int to = nrows - from < per ? nrows : from + per;
        if (upsert_range(t, r, from, to, dst, err, errlen) < 0) {
            return -1;
        }
    }
    return nrows;
}

static long pg_copy_batch(struct rb_conn *src, struct rb_conn *dst, const struct rb_table *t,
                          uint32_t slot, char **after, int limit, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    struct params p = {0};
    rb_buf_select_batch(&q, SQL_PG, t, slot, *after, limit, param_value, &p);
    PGresult *r = run(src, &q, &p, err, errlen);
    free(q.p);
    free(p.v);
    if (r == NULL) {
        return -1;
    }
    long n = upsert_rows(t, r, dst, err, errlen);
    if (n > 0) {
        char *last = strdup(PQgetvalue(r, (int)n - 1, t->keycol));
        if (last == NULL) { /* no key to go on from: fail the batch */
            snprintf(err, errlen, "shard '%s': out of memory", src->shard);
            n = -1;
        } else {
            free(*after);
            *after = last;
        }
    }
    PQclear(r);
    return n;
}

static long pg_copy_keys(struct rb_conn *src, struct rb_conn *dst, const struct rb_table *t,
                         uint32_t slot, char *const *keys, size_t n, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    struct params p = {0};
    rb_buf_select_slot(&q, SQL_PG, t, slot);
    rb_buf_key_in(&q, SQL_PG, t, keys, n, param_value, &p);
    PGresult *r = run(src, &q, &p, err, errlen);
    free(q.p);
    free(p.v);
    if (r == NULL) {
        return -1;
    }
    long moved = upsert_rows(t, r, dst, err, errlen);
    PQclear(r);
    return moved;
}

static int pg_delete_keys(struct rb_conn *c, const struct rb_table *t, uint32_t slot,
                          char *const *keys, size_t n, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    struct params p = {0};
    RB_PUTS(&q, "DELETE");
    rb_buf_from_slot(&q, SQL_PG, t, slot);
    rb_buf_key_in(&q, SQL_PG, t, keys, n, param_value, &p);
    int rc = run_cmd(c, &q, &p, err, errlen);
    free(q.p);
    free(p.v);
    return rc;
}

/* rb_rowsums_copy: row i of a result */
static void row_at(void *res, size_t i, const char **key, const char **sum)
{
    *key = PQgetvalue(res, (int)i, 0);
    *sum = PQgetvalue(res, (int)i, 1);
}

static struct rb_rowsum *pg_rowsums(struct rb_conn *c, const struct rb_table *t, uint32_t slot,
                                    size_t *n, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    RB_PUTS(&q, "SELECT ");
    ID(&q, t->key);
    RB_PUTS(&q, "::text, ");
    row_hash(&q, t);
    rb_buf_from_slot(&q, SQL_PG, t, slot);
    PGresult *r = run(c, &q, NULL, err, errlen);
    free(q.p);
    if (r == NULL) {
        return NULL;
    }
    size_t rows = (size_t)PQntuples(r);
    struct rb_rowsum *rs = rb_rowsums_copy(rows, row_at, r);
    PQclear(r);
    if (rs == NULL) {
        snprintf(err, errlen, "shard '%s': out of memory reading the rows of slot %u", c->shard,
                 slot);
        return NULL;
    }
    *n = rows;
    return rs;
}

/* count, and two sums of 60-bit slices of each row's md5 (order-independent) */
static int pg_digest(struct rb_conn *c, const struct rb_table *t, uint32_t slot, char *out,
                     size_t outlen, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    RB_PUTS(&q, "SELECT count(*), "
                "coalesce(sum(('x' || substr(h, 1, 15))::bit(60)::bigint), 0), "
                "coalesce(sum(('x' || substr(h, 16, 15))::bit(60)::bigint), 0) FROM (SELECT ");
    row_hash(&q, t);
    RB_PUTS(&q, " AS h");
    rb_buf_from_slot(&q, SQL_PG, t, slot);
    RB_PUTS(&q, ") s");
    PGresult *r = run(c, &q, NULL, err, errlen);
    free(q.p);
    if (r == NULL) {
        return -1;
    }
    int ok = PQntuples(r) == 1;
    snprintf(out, outlen, "%s/%s/%s", ok ? PQgetvalue(r, 0, 0) : "?",
             ok ? PQgetvalue(r, 0, 1) : "?", ok ? PQgetvalue(r, 0, 2) : "?");
    PQclear(r);
    return 0;
}

static long pg_delete_slot(struct rb_conn *c, const struct rb_table *t, uint32_t slot, long limit,
                           char *err, size_t errlen)
{
    struct rb_buf q = {0};
    RB_PUTS(&q, "DELETE FROM ");
    ID(&q, t->name);
    RB_PUTS(&q, " WHERE ctid = ANY (ARRAY(SELECT ctid");
    rb_buf_from_slot(&q, SQL_PG, t, slot);
    rb_buf_putf(&q, " LIMIT %ld))", limit);
    PGresult *r = run(c, &q, NULL, err, errlen);
    free(q.p);
    if (r == NULL) {
        return -1;
    }
    long n = strtol(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return n;
}

static int pg_delete_slots(struct rb_conn *c, const struct rb_table *t, const uint32_t *slots,
                           size_t n, char *err, size_t errlen)
{
    struct rb_buf q = {0};
    rb_buf_delete_slots(&q, SQL_PG, t, slots, n);
    int rc = run_cmd(c, &q, NULL, err, errlen);
    free(q.p);
    return rc;
}

/* rb_slots_copy: row i's first column */
static const char *slot_at(void *res, size_t i)
{
    return PQgetisnull(res, (int)i, 0) ? NULL : PQgetvalue(res, (int)i, 0);
}

static int pg_slot_query(struct rb_conn *c, const char *sql, uint32_t **slots, size_t *n, char *err,
                         size_t errlen)
{
    struct rb_buf q = {0};
    rb_buf_put(&q, sql, strlen(sql));
    PGresult *r = run(c, &q, NULL, err, errlen);
    free(q.p);
    if (r == NULL) {
        return -1;
    }
    int rc = rb_slots_copy((size_t)PQntuples(r), slot_at, r, slots, n);
    PQclear(r);
    if (rc < 0) {
        snprintf(err, errlen, "shard '%s': out of memory reading slots", c->shard);
    }
    return rc;
}

const struct rb_mover_ops rb_pg_ops = {
    .type = "pg",
    .dialect = SQL_PG,
    .connect = pg_connect,
    .alive = pg_alive,
    .close = pg_close,
    .exec_ddl = pg_exec_ddl,
    .columns = pg_columns,
    .has_rows = pg_has_rows,
    .copy_batch = pg_copy_batch,
    .copy_keys = pg_copy_keys,
    .delete_keys = pg_delete_keys,
    .rowsums = pg_rowsums,
    .digest = pg_digest,
    .delete_slot = pg_delete_slot,
    .delete_slots = pg_delete_slots,
    .slot_query = pg_slot_query,
};
