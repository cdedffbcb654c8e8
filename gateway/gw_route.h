/*
 * gw_route.h — where is the shard chosen?  Shard-key routing of requests on
 * sharded domains (a domain with `shard_key`, on a backend with a shard map).
 *
 *   insert / put              the shard key member of the item (missing → 400)
 *   get / patch / delete      ?<shard_key>=… (the REST query string, or the
 *                             batch envelope's "shard_key") → one shard;
 *                             without it: fanned out to every shard (see
 *                             gw_request.c: N round trips in parallel, latency
 *                             of the slowest shard; the one shard holding the
 *                             id answers)
 *   _query / _aggregate       the shards the `where` pins (eq / in on the shard
 *                             key, through and/or); every shard otherwise —
 *                             scatter-gather (gateway/gw_scatter.c)
 *
 * The key → slot → shard step itself is routing/rt_shardmap.h: hash =
 * XXH3-64 of the key's text (ints: their decimal text), slot = the hash's
 * high bits, shard = the map's owner of the slot.  The slot travels in
 * ad_req.slot so that SQL stores keep it in the row.
 */
#ifndef GW_ROUTE_H
#define GW_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "model/md_error.h"

struct cf_domain;
struct md_qnode;

struct gw_route {
    uint64_t hash;
    uint32_t slot;
    int shard; /* index into the backend's shards (= the map's) */
};

/* Route a shard-key value given as text (query string).  Ints are checked
 * and canonicalised ("007" → "7"); strings must be what a body's string
 * may be (valid UTF-8, no NUL).  -1 with a 400 naming the field. */
int gw_route_text(const struct cf_domain *d, const char *v, size_t len, struct gw_route *out,
                  struct md_error *e) __attribute__((warn_unused_result));

/* Route an item by its shard-key member; -1 with a 400 naming the field when
 * it is missing, null or of the wrong type. */
int gw_route_item(const struct cf_domain *d, struct json_object *item, struct gw_route *out,
                  struct md_error *e) __attribute__((warn_unused_result));

/* (A patch may not touch the shard key: md_patch_check refuses it.) */

/* The shards a filter can match: mask[0..nshards) set to 1 for each; returns
 * how many.  A filter that does not pin the shard key gives every shard. */
size_t gw_route_where(const struct cf_domain *d, const struct md_qnode *where, unsigned char *mask);

#endif
