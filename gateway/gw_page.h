/*
 * gw_page.h — the answer of a _query / _aggregate, built in one place.
 *
 * Adapters answer rows, not pages (ad_res.rows, and ad_res.last: the sort
 * values of the last row when a further page exists); the scatter merge
 * (gw_scatter.h) ends with rows of the same kind.  Both become
 *
 *   {"items": [...], "cursor": "<signed keyset cursor>" | null,
 *    "shards_queried": n, "partial": true | false}
 *
 * here; a scatter adds "missing_shards" after it.  The cursor is
 * md_query_cursor_make() of the last row's sort values.
 */
#ifndef GW_PAGE_H
#define GW_PAGE_H

#include <json-c/json.h>

struct md_query;

/* A new page document (the caller's reference).  items: an array (a
 * reference is taken; NULL gives an empty page); last: q->norder sort values
 * (borrowed) or NULL for the last page. */
struct json_object *gw_page_new(const struct md_query *q, struct json_object *items,
                                struct json_object *last, int shards_queried, int partial);

#endif
