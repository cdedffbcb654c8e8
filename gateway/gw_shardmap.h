/*
 * gw_shardmap.h — live shard map changes: what a reload (SIGHUP) or a
 * `PUT /admin/shardmap` may change, and what `GET /admin/shardmap` shows.
 *
 * A new map is swapped in only when the WHOLE check passes (the old one stays
 * active otherwise, and the reason is logged / returned):
 *   - it parses and is a valid map (rt_shardmap_from_json: every slot owned,
 *     overrides ascending and non-overlapping, known fields only, …);
 *   - same slot count as the active map (rows store their slot);
 *   - version: higher than the active one when the map differs from it (a
 *     SIGHUP with the map unchanged keeps the same version; a PUT must always
 *     raise it);
 *   - it does not add a shard and remove another in the same change;
 *   - every added shard, and every shard whose DSN changed, is reachable
 *     (the adapter's probe: a real connect within the pool's timeout);
 *   - if it moves slots (a shard added, removed, reweighted): the backend's
 *     store has a slot mover (rebalance/rb_mover.h: mysql, pg) and no
 *     rebalance is running — the caller then starts one
 *     (rebalance/rb_rebalance.h) instead of swapping the map in, since a
 *     map that gives a slot to a shard that does not hold its rows would
 *     hide them.
 *
 * The checks run on the main thread (probes block), never on a worker loop.
 */
#ifndef GW_SHARDMAP_H
#define GW_SHARDMAP_H

#include <stddef.h>

#include <json-c/json.h>

#include "model/md_error.h"

struct cf_config;

/* Check the shard maps of `next` against those of `active` (backends matched
 * by name).  put_backend: the backend a PUT targets (its version must be
 * strictly higher), or NULL for a SIGHUP reload.  moving: NULL refuses maps
 * that move slots; otherwise *moving is set to the one backend (borrowed
 * from next) whose map moves slots and must be rebalanced, or NULL.  0, or
 * -1 with e filled (code, message naming the backend / shard / slot). */
int gw_shardmap_check(const struct cf_config *active, const struct cf_config *next,
                      const char *put_backend, const char **moving, struct md_error *e)
    __attribute__((warn_unused_result));

/* The backend a PUT /admin/shardmap[/{backend}] means: `name` when given
 * (it must have a shard_map file), else the only backend with one.  NULL with
 * e filled (404 / 400) otherwise. */
const char *gw_shardmap_backend(const struct cf_config *cf, const char *name, size_t len,
                                struct md_error *e);

/* GET /admin/shardmap: {"backends":[{backend, path, version, slots, vnodes,
 * shards:[{name, dsn (password hidden), weight, slots}], overrides, migration}]}.
 * migration_of(backend) gives each backend's "migration" object (the
 * rebalancer's status, rb_rebalance_status_of): passed in, so that the shard
 * map and the rebalancer, which writes maps, do not include each other. */
struct json_object *gw_shardmap_json(const struct cf_config *cf,
                                     struct json_object *(*migration_of)(const char *backend));

/* Write a map that became active to the map file: readable YAML
 * (rb_mapfile_replace) with a header naming the version, the time and how
 * it came (`how`: "applied by PUT /admin/shardmap", "from the control store
 * (etcd)"), the previous file kept as "<path>.prev".  0, or -1 with err. */
int gw_shardmap_write(const char *path, struct json_object *doc, const char *how, char *err,
                      size_t errlen) __attribute__((warn_unused_result));

/* The first backend whose shard map in `next` differs from the one in
 * `active` (another version, or another map in effect), or NULL. */
const char *gw_shardmap_changed(const struct cf_config *active, const struct cf_config *next);

/* The map file of backend in cf (borrowed), or NULL. */
const char *gw_shardmap_path(const struct cf_config *cf, const char *backend);

#endif
