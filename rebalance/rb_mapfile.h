/*
 * rb_mapfile.h — shard map files and the rebalance state file on disk.
 *
 * Every write is atomic (temp file, fsync, rename, fsync of the directory):
 * a crash leaves the old file or the new one, never a mix.  Used by the
 * mover (the final map, the state file) and by the gateway (the map a PUT
 * /admin/shardmap applied).
 */
#ifndef RB_MAPFILE_H
#define RB_MAPFILE_H

#include <stddef.h>

#include <json-c/json.h>

struct rt_shardmap;

/* 1 when the two maps are the same document in effect (shards, DSNs,
 * weights, vnodes, owner of every slot; the version is not compared). */
int rb_mapfile_same(const struct rt_shardmap *a, const struct rt_shardmap *b);

/* The document of a built map (version, slots, vnodes, shards, overrides). */
struct json_object *rb_mapfile_doc(const struct rt_shardmap *m);

/* Write a JSON document to path atomically: the rebalance state file.
 * 0, or -1 with err. */
int rb_mapfile_write_json(const char *path, struct json_object *doc, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* A map document as readable YAML: `header` (may hold several lines) as
 * comment lines (bytes outside printable ASCII shown as '?'), then
 * version/slots/vnodes, one line per shard, and the overrides as a flow
 * mapping a few ranges per line; strings in printable ASCII with escapes.
 * Malloc'd text and *len, or NULL when out of memory. */
char *rb_mapfile_yaml(struct json_object *doc, const char *header, size_t *len);

/* Replace the map file at path with doc as rb_mapfile_yaml() text (checked
 * to read back as the same map; JSON if it ever did not), keeping the
 * file's previous content as "<path>.prev" (both written atomically, the
 * .prev first).  0, or -1 with err (the map file is then unchanged). */
int rb_mapfile_replace(const char *path, struct json_object *doc, const char *header, char *err,
                       size_t errlen) __attribute__((warn_unused_result));

#endif
