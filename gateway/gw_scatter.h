/*
 * gw_scatter.h — scatter-gather of _query / _aggregate over the shards of a
 * sharded domain: what each shard is asked, and how the answers become one.
 *
 * The request layer (gw_request.c) runs the fan-out: one child request per
 * target shard (gw_route_where picks them), all submitted at once on the
 * worker's loop, each with its own deadline; the parent answers when the
 * last child did.  This module only plans and merges:
 *
 *  - plan: every shard gets the same query — the same `where`, `order_by`,
 *    `limit` and keyset cursor bound (a page costs each shard what page 1
 *    costs) — except that
 *      * a `fields` projection is widened by the sort fields it leaves out
 *        (the merge needs them; they are removed from the answer), and
 *      * aggregates are rewritten into mergeable parts: count/sum/min/max as
 *        they are, avg → sum + count of the field;
 *  - gather: _query items are heap-merged by order_by + key (limit kept) and
 *    the next cursor is made from the last item returned; _aggregate parts
 *    are combined per group (routing/rt_merge.h, exact decimals); the page
 *    is built by gw_page.h, as for a single shard;
 *  - failure policy: any failed shard fails the request with its error
 *    (503/504 naming the shard) unless the body said `"partial": true`; then
 *    the answer carries what arrived plus `"partial": true` and
 *    `"missing_shards": [names]`.  A shard answering 400 fails the request
 *    either way (the query itself is wrong).
 *
 * Every answer says `"shards_queried": n`.
 *
 * A plan is reference counted: the parent request holds one reference and
 * every child another, since a child answered by its deadline may still be
 * running in its adapter, which reads the per-shard query until it
 * completes (adapters/ad.h).
 */
#ifndef GW_SCATTER_H
#define GW_SCATTER_H

#include <stddef.h>

#include <json-c/json.h>

#include "model/md_error.h"

struct cf_domain;
struct gw_scatter;
struct md_query;

/* Plan a fan-out of the client's query q (taken over: freed with the plan)
 * to `nqueried` of the domain's shards.  One reference, the caller's. */
struct gw_scatter *gw_scatter_new(const struct cf_domain *d, struct md_query *q, size_t nqueried);
struct gw_scatter *gw_scatter_ref(struct gw_scatter *s);
void gw_scatter_unref(struct gw_scatter *s); /* NULL is fine */

/* The query to submit to every shard (ad_req.query), valid while the plan
 * is referenced. */
const struct md_query *gw_scatter_query(const struct gw_scatter *s);

/* One shard's answer: its rows (ad_res.rows; a reference is taken) and
 * whether it had more (ad_res.last != NULL), or its error (copied). */
void gw_scatter_add(struct gw_scatter *s, size_t shard, struct json_object *rows, int more);
void gw_scatter_fail(struct gw_scatter *s, size_t shard, const struct md_error *e);

/* The answer once every shard answered: 0 with *doc (owned by the caller),
 * or -1 with e (the failure policy above). */
int gw_scatter_finish(struct gw_scatter *s, struct json_object **doc, struct md_error *e);

#endif
