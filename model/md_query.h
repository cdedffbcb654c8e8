/*
 * md_query.h — the filter language, store-neutral.
 *
 * A `_query` body {"where","order_by","limit","cursor","fields"} or an
 * `_aggregate` body {"where","group_by","aggregates"} is parsed and checked
 * against the domain's schema into the AST below.  Every error is a 400
 * naming the field or operator.  The AST holds no SQL and no store syntax:
 * adapters translate it (adapters/sql/sql_build.c for SQL stores; a BSON
 * translator for Mongo).  Identifiers in the AST are cf_field pointers from
 * the config; client strings appear only as values (and as dotted-path
 * segments below object/json fields, which are values too).
 *
 * where:
 *   {"status":"PENDING"}                      implicit eq
 *   {"total":{"gte":100,"lt":500}}            several operators AND-ed
 *   {"sku":{"in":[…]}}  {"x":{"exists":true}}  {"name":{"prefix":"Jo"}}
 *   {"or":[{…},{…}]}  {"and":[{…},{…}]}       members of one object are AND-ed
 *   {"category.id":"c1"}                      dotted paths into object/json fields
 *   {"items.product_id":"P1"}                 … and into arrays: some element matches
 *   {"last_name":null}                        eq null = IS NULL, ne null = IS NOT NULL
 * operators: eq ne gt gte lt lte in nin exists prefix.
 * {"search_tags":{"in":["a","b"]}} on an array field: some element is listed
 * (nin: no element is); the list holds scalars.
 *
 * order_by: ["field", "-field", {"field":"desc"}, …]; the key is always the
 * last sort column (tiebreak), added when absent.  NULL sorts after every
 * value (NULLS LAST ascending, NULLS FIRST descending) in every adapter.
 *
 * cursor: opaque base64url("{"o":<order signature>,"v":[<sort values>]}")
 * + "." + base64url(HMAC-SHA256).  The HMAC key is derived from the config's
 * `cursor_secret` (a documented built-in default when unset), so a cursor
 * survives a restart and works on every worker; a tampered, malformed or
 * foreign (other order_by) cursor is a 400.
 *
 * The gateway parses and validates once, with the config's limits and
 * secret, and hands the parsed query to the adapter in its request
 * (ad_req.query, adapters/ad.h).
 */
#ifndef MD_QUERY_H
#define MD_QUERY_H

#include <stddef.h>

#include <json-c/json.h>

#include "model/md_error.h"

struct cf_domain;
struct cf_field;
struct cf_limits;

#define MD_QUERY_MAX_ORDER 8
#define MD_QUERY_MAX_PATH 8
#define MD_QUERY_MAX_NODES 256 /* default of limits.max_query_conditions */
#define MD_QUERY_MAX_AGGS 32
#define MD_QUERY_DEFAULT_LIMIT 100

enum md_qop {
    MD_QOP_EQ,
    MD_QOP_NE,
    MD_QOP_GT,
    MD_QOP_GTE,
    MD_QOP_LT,
    MD_QOP_LTE,
    MD_QOP_IN,
    MD_QOP_NIN,
    MD_QOP_EXISTS,
    MD_QOP_PREFIX,
    MD_QOP_AND,
    MD_QOP_OR,
};

const char *md_qop_name(enum md_qop op);

/* One node of the where tree. */
struct md_qnode {
    enum md_qop op;
    /* leaves (EQ … PREFIX) */
    const struct cf_field *field; /* from the domain's config */
    char **path;                  /* dotted segments below an object/json field */
    size_t npath;                 /* 0: the whole field */
    /* Normalised value, owned.  NULL is JSON null (EQ → IS NULL, NE → IS NOT
     * NULL).  IN/NIN: a non-empty array.  EXISTS: a boolean.  PREFIX: a
     * non-empty string.  Decimals: a JSON number whose text is exact
     * (json_object_get_string gives the digits).  Timestamps: RFC 3339 UTC. */
    struct json_object *value;
    /* AND / OR */
    struct md_qnode **kids;
    size_t nkids;
};

struct md_qorder {
    const struct cf_field *field;
    int desc;
};

enum md_qagg { MD_QAGG_COUNT, MD_QAGG_SUM, MD_QAGG_MIN, MD_QAGG_MAX, MD_QAGG_AVG };

struct md_qaggregate {
    char *alias; /* client-chosen output name (never an SQL identifier) */
    enum md_qagg fn;
    const struct cf_field *field; /* NULL: count(*) */
};

struct md_query {
    int aggregate;          /* 0: _query, 1: _aggregate */
    struct md_qnode *where; /* NULL: everything */
    /* _query */
    struct md_qorder order[MD_QUERY_MAX_ORDER + 1]; /* ends with the key (tiebreak) */
    size_t norder;
    int limit;
    struct json_object *after;      /* decoded cursor: array of norder values (NULL: first page) */
    const struct cf_field **fields; /* projection; NULL/0: every field (key, version always) */
    size_t nfields;
    /* _aggregate */
    const struct cf_field **group_by; /* the top-level field of each group key */
    /* each group key as asked: the field's name, or a dotted path below an
     * object/json field ("category.id"), which is also its key in the
     * answer.  Stores that cannot group on a path refuse it (400). */
    char **group_names;
    size_t ngroup;
    struct md_qaggregate *aggs;
    size_t naggs;
    /* sharded domains: `"partial": true` returns what the shards that
     * answered gave (plus missing_shards) instead of failing */
    int partial;
    /* cursor signing */
    unsigned char mac_key[32];
};

/* Parse and validate a body.  `secret` signs cursors: the config's
 * `cursor_secret`, or the random one drawn per process when it is unset
 * (there is no built-in constant).
 * 0 with *out (free with md_query_free), or -1 with e (400 naming the
 * field or operator). */
int md_query_parse(const struct cf_domain *d, const struct cf_limits *lim, const char *secret,
                   int aggregate, struct json_object *body, struct md_query **out,
                   struct md_error *e) __attribute__((warn_unused_result));
void md_query_free(struct md_query *q);

/* The cursor continuing after a row whose sort values are `vals` (an array
 * of q->norder JSON values, in order; JSON null allowed).  malloc'd. */
char *md_query_cursor_make(const struct md_query *q, struct json_object *vals);

#endif
