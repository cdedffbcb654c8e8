/*
 * mg_query.h — `_query` and `_aggregate` on MongoDB.
 *
 * The store-neutral AST of model/md_query.h becomes a plan of BSON
 * commands on the loop thread (mg_plan_new), runs with the blocking driver
 * on a pool thread (mg_plan_run, BSON only), and its BSON result becomes the
 * rows of the answer on the loop thread again (mg_plan_result); the gateway
 * makes the page of them (ad_res.rows / ad_res.last, adapters/ad.h).
 *
 * Filters are built here, from the AST, with an allow-list of operators
 * ($eq $ne $gt $gte $lt $lte $in $nin $regex $and $or); client strings are
 * only ever values, or path segments below object fields (a segment that
 * starts with '$' is refused).  See mg_query.c for the semantics chosen to
 * match the SQL adapters (NULLs, prefix, keyset pages, aggregates).
 */
#ifndef MG_QUERY_H
#define MG_QUERY_H

#include <stdint.h>

#include <json-c/json.h>
#include <mongoc/mongoc.h>

#include "adapters/mongo/mg_bson.h"

struct cf_domain;
struct md_query;
struct mg_plan;

/* mg_plan_run() outcomes. */
#define MG_PLAN_OK 0
#define MG_PLAN_DRIVER (-1)  /* a driver/server error: see err */
#define MG_PLAN_BAD (-2)     /* the request cannot be answered (400): see msg */
#define MG_PLAN_TIMEOUT (-3) /* the deadline passed between two commands */

/* Loop thread.  0 with *out, or -1 with x filled (400).  q and d must stay
 * valid until the request completes (the gateway owns q); mg_plan_free
 * does not read them. */
int mg_plan_new(const struct cf_domain *d, const struct md_query *q, struct mg_plan **out,
                struct mg_xerr *x) __attribute__((warn_unused_result));

/* Pool thread: run the plan on coll; *result gets a BSON document to hand
 * to mg_plan_result.  deadline_ms: lb_now_ms() clock, 0 = none. */
int mg_plan_run(const struct mg_plan *p, mongoc_collection_t *coll, uint64_t deadline_ms,
                bson_t **result, bson_error_t *err, char *msg, size_t msglen)
    __attribute__((warn_unused_result));

/* Loop thread: the rows (*items, a new array) and, when a further page
 * exists, the sort values of the last row (*last, a new array; else NULL). */
void mg_plan_result(const struct mg_plan *p, const bson_t *result, struct json_object **items,
                    struct json_object **last);

void mg_plan_free(struct mg_plan *p);

#endif
