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
 *    are combined per group (routing/rt_merge.h, exact decimals);
 *  - failure policy: any failed shard fails the request with its error
 *    (503/504 naming the shard) unless the body said `"partial": true`; then
 *    the answer carries what arrived plus `"partial": true` and
 *    `"missing_shards": [names]`.  A shard answering 400 fails the request
 *    either way (the query itself is wrong).
 *
 * Every answer says `"shards_queried": n`.
 */
#ifndef GW_SCATTER_H
#define GW_SCATTER_H

#include <stddef.h>

#include <json-c/json.h>

#include "model/md_error.h"

struct cf_domain;
struct gw_scatter;

/* Plan a fan-out of `body` (a _query/_aggregate body with its parsed query
 * attached) to `nqueried` of the domain's shards. */
struct gw_scatter *gw_scatter_new(const struct cf_domain *d, struct json_object *body,
                                  size_t nqueried);
void gw_scatter_free(struct gw_scatter *s);

/* The body to submit to every shard (borrowed; a child takes its own
 * reference, which keeps everything the per-shard query points to alive). */
struct json_object *gw_scatter_body(const struct gw_scatter *s);

/* One shard's answer: its result document {"items":[…], "cursor":…}
 * (a reference is taken), or its error (copied). */
void gw_scatter_add(struct gw_scatter *s, size_t shard, struct json_object *doc);
void gw_scatter_fail(struct gw_scatter *s, size_t shard, const struct md_error *e);

/* The answer once every shard answered: 0 with *doc (owned by the caller),
 * or -1 with e (the failure policy above). */
int gw_scatter_finish(struct gw_scatter *s, struct json_object **doc, struct md_error *e);

#endif
