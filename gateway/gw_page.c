/*
 * gw_page.c — {items, cursor, shards_queried, partial} of a _query / _aggregate.
 */
#include "gateway/gw_page.h"

#include <stdlib.h>

#include "model/md_query.h"

struct json_object *gw_page_new(const struct md_query *q, struct json_object *items,
                                struct json_object *last, int shards_queried, int partial)
{
    struct json_object *doc = json_object_new_object();
    json_object_object_add(doc, "items",
                           items != NULL ? json_object_get(items) : json_object_new_array());
    struct json_object *cursor = NULL;
    if (last != NULL && !q->aggregate) {
        char *c = md_query_cursor_make(q, last);
        cursor = c != NULL ? json_object_new_string(c) : NULL;
        free(c);
    }
    json_object_object_add(doc, "cursor", cursor);
    json_object_object_add(doc, "shards_queried", json_object_new_int(shards_queried));
    json_object_object_add(doc, "partial", json_object_new_boolean(partial));
    return doc;
}
