/*
 * sql_build.h — the filter AST (model/md_query.h) and item operations →
 * parameterised SQL, for PostgreSQL and MySQL/MariaDB.
 *
 * Identifiers (table, columns) come only from the config and are quoted
 * ("…" for PostgreSQL, `…` for MySQL, the quote doubled inside).  Every
 * client value — filter values, dotted-path segments, item fields, keys,
 * versions, LIMIT — is a parameter ($n / ?), passed as text; NULL entries
 * are SQL NULL.  Values are the gateway's normalised JSON: decimals keep
 * their exact text, timestamps are RFC 3339 UTC (for MySQL rewritten as
 * 'YYYY-MM-DD HH:MM:SS[.ffffff]'), documents are JSON text (jsonb / JSON).
 *
 * Semantics shared by every SQL store (and the Mongo adapter should match):
 *   ne / nin also match rows where the field is NULL ("not equal to");
 *   NULL sorts after every value (NULLS LAST ascending, FIRST descending);
 *   prefix → LIKE 'p%' with %, _ and \ escaped, ESCAPE '\'.
 * A keyset cursor becomes a row-value bound `(a, id) > ($1, $2)` when every
 * sort column goes the same way and cannot be NULL, otherwise the equivalent
 * OR-chain with explicit NULL handling.
 *
 * Item writes: PostgreSQL uses one statement with RETURNING.  MySQL 8 has
 * no RETURNING, so a MySQL write is a short script run in one round trip
 * (CLIENT_MULTI_STATEMENTS) inside one transaction:
 *   START TRANSACTION; <write>; SELECT <item> WHERE key = ?; COMMIT
 * (a delete reads the version FOR UPDATE first).  `affected_at` names the
 * statement whose affected-row count decides (0 rows: 404 or 412, told
 * apart by the SELECT in the same transaction), `rows_at` the statement
 * whose rows are the result.  If-Match stays atomic: `WHERE version = ?`.
 * After an error in a script with `txn` set the adapter sends ROLLBACK.
 *
 * MySQL parameters: `?` placeholders, every one a quoted string literal once
 * the adapter escapes it; where the column type matters for exactness the
 * builder casts (ints: CAST(? AS SIGNED), decimals: CAST(? AS DECIMAL(65,s)))
 * — a bare string compared with a number would be compared as a double;
 * whole documents compare with JSON_EQUALS (MariaDB).  LIMIT is written as an
 * integer the builder formats itself (MySQL refuses a quoted LIMIT).
 *
 * Dotted paths into object/json fields and into arrays of objects (and
 * in/nin on array fields) match when some value at the path matches, typed
 * (strings with strings, numbers numerically, booleans): PostgreSQL through
 * jsonb_path_exists with a parameterised jsonpath and vars, MariaDB through
 * EXISTS over JSON_TABLE (see sql_build.c, "paths into documents").
 *
 * Sharded domains (shard_key set) carry an indexed `_slot` column, written
 * from st->slot on insert/upsert (-1: NULL).
 *
 * The write fence (st->fence; docs/rebalancing.md, "The fence at the
 * shard"): every shard of a rebalanceable backend lists the slots it owns in
 * a table per sharded table (SQL_SLOTS_PREFIX), and a fenced write runs only
 * if its slot is listed there,
 * checked in the write statement itself with a shared lock on the slot's row
 * (PostgreSQL FOR SHARE, InnoDB LOCK IN SHARE MODE), which the mover's revoke
 * (a DELETE of that row) waits for:
 *   insert / upsert: INSERT … SELECT <values> [FROM DUAL] WHERE EXISTS
 *                    (SELECT 1 FROM _polygate_slots_t WHERE slot = <st->slot> <lock>)
 *   update / delete: … AND (t._slot IS NULL OR EXISTS (SELECT 1 FROM
 *                    _polygate_slots_t WHERE slot = t._slot <lock>))
 * (the row's own slot: a write by id without the shard key is fenced too).
 * A fenced write that is refused changes no row; sql_build_fence_probe tells
 * that apart from "not found" / "version mismatch" on that path only.
 */
#ifndef SQL_BUILD_H
#define SQL_BUILD_H

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

struct cf_domain;
struct cf_field;
struct md_query;
struct md_qaggregate;

enum sql_dialect { SQL_PG, SQL_MYSQL };

/* What a result column holds, in select-list order. */
enum sql_col_kind {
    SQL_COL_FIELD,   /* a field of the domain */
    SQL_COL_VERSION, /* the gateway-managed version */
    SQL_COL_AGG,     /* an aggregate (agg points to it) */
    SQL_COL_CREATED, /* upsert: true when the row was inserted */
};

struct sql_col {
    enum sql_col_kind kind;
    const struct cf_field *field;    /* FIELD; AGG over a field (NULL: count(*)) */
    const struct md_qaggregate *agg; /* AGG */
    int hidden;                      /* selected for the cursor only: not returned */
};

struct sql_stmt {
    enum sql_dialect dialect;
    char *text;
    size_t len, cap;
    char **params; /* NUL-terminated text; NULL = SQL NULL */
    size_t nparams, pcap;
    struct sql_col *cols;
    size_t ncols, ccap;
    int oom;
    /* set by the caller before building a write: the row's shard-key slot
     * (sharded domains), -1 = none / unknown */
    int32_t slot;
    /* set by the caller before building a write: 1 when the domain's writes
     * are fenced at the shard (a sharded domain of a backend with a shard
     * map file, which the rebalancer may move) */
    int fence;
    /* set by the caller before building a query / aggregate: slots to leave
     * out (ad_req.scope: a shard's rows of slots it does not own while
     * they move), written as integers the builder formats */
    const int32_t *excl_slots;
    int nexcl;
    /* scripts (MySQL writes): see above.  Single statements: nstmts 1,
     * rows_at 0, affected_at -1, txn 0. */
    int nstmts;
    int rows_at;
    int affected_at;
    int txn;
};

/* The slots a shard owns, per sharded table: `_polygate_slots_<table>`
 * (one column `slot`, the primary key).  Per table, not per database: a
 * database may hold the tables of several backends, each with its own map. */
#define SQL_SLOTS_PREFIX "_polygate_slots_"
/* Its name for a table (out: room for strlen(table) + sizeof(SQL_SLOTS_PREFIX)). */
void sql_slots_table(const char *table, char *out, size_t outlen);

void sql_stmt_init(struct sql_stmt *st, enum sql_dialect dialect);

/* The one identifier quoting of our SQL (the builders here, the slot movers
 * of rebalance/): `name` as a quoted identifier of the dialect ("…" for
 * PostgreSQL, `…` for MySQL, the quote doubled inside), written to out,
 * which has room for 2 * strlen(name) + 3 bytes; returns its length (the
 * NUL not counted). */
size_t sql_quote_ident(enum sql_dialect dialect, const char *name, char *out);
void sql_stmt_free(struct sql_stmt *st);

/* Each builder fills an initialised statement; 0, or -1 with err. */
int sql_build_get(struct sql_stmt *st, const struct cf_domain *d, const char *key, char *err,
                  size_t errlen) __attribute__((warn_unused_result));
int sql_build_insert(struct sql_stmt *st, const struct cf_domain *d, struct json_object *item,
                     char *err, size_t errlen) __attribute__((warn_unused_result));
/* PUT: upsert (if_match < 0; an extra SQL_COL_CREATED column) or a
 * conditional replace of an existing row (if_match >= 0). */
int sql_build_put(struct sql_stmt *st, const struct cf_domain *d, const char *key,
                  struct json_object *item, int64_t if_match, char *err, size_t errlen)
    __attribute__((warn_unused_result));
int sql_build_patch(struct sql_stmt *st, const struct cf_domain *d, const char *key,
                    struct json_object *patch, int64_t if_match, char *err, size_t errlen)
    __attribute__((warn_unused_result));
int sql_build_delete(struct sql_stmt *st, const struct cf_domain *d, const char *key,
                     int64_t if_match, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* SELECT version … WHERE key: tells 404 from 412 after a failed conditional write. */
int sql_build_version(struct sql_stmt *st, const struct cf_domain *d, const char *key, char *err,
                      size_t errlen) __attribute__((warn_unused_result));
/* After a fenced write changed no row: one row (its one column the slot)
 * when the shard does not own the write's slot — st->slot, or when that is
 * unknown (-1: a write by id alone) the slot of the row with that key —
 * else no row. */
int sql_build_fence_probe(struct sql_stmt *st, const struct cf_domain *d, const char *key,
                          char *err, size_t errlen) __attribute__((warn_unused_result));
/* _query: fetches q->limit + 1 rows (the extra one says whether a next page exists). */
int sql_build_query(struct sql_stmt *st, const struct cf_domain *d, const struct md_query *q,
                    char *err, size_t errlen) __attribute__((warn_unused_result));
int sql_build_aggregate(struct sql_stmt *st, const struct cf_domain *d, const struct md_query *q,
                        char *err, size_t errlen) __attribute__((warn_unused_result));
/* auto_migrate: idempotent DDL without parameters.  PostgreSQL: one
 * multi-statement script serialised between processes with an advisory
 * lock.  MySQL: one CREATE TABLE IF NOT EXISTS (InnoDB, utf8mb4_bin) with
 * every index inside it (MySQL 8 has no CREATE INDEX IF NOT EXISTS), which
 * is atomic on its own. */
int sql_build_migrate(struct sql_stmt *st, const struct cf_domain *d, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* MySQL: the VARCHAR length of a string/enum column, 0 for MEDIUMTEXT
 * (keys and indexed strings: max_len, else 191 characters). */
size_t sql_mysql_varchar_len(const struct cf_domain *d, const struct cf_field *f);

/* The field a unique-violation constraint name refers to (as created by
 * sql_build_migrate: <table>_pkey, <table>_<field>_key; MySQL's PRIMARY and
 * <table>.<name> forms too), or NULL. */
const char *sql_constraint_field(const struct cf_domain *d, const char *constraint);

#endif
