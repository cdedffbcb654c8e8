/*
 * rb_rebalance.h — online rebalancing of a sharded backend: when a new shard
 * map moves slots, a mover thread moves them one at a time (copy, freeze,
 * catch up, verify, switch, delete), then the new map becomes the active
 * one.  The protocol and why it is safe: docs/rebalancing.md.  The store is
 * reached through its slot mover (rebalance/rb_mover.h; which stores have
 * one: rebalance/rb_registry.h).
 *
 * One rebalance at a time per process.  The main thread starts, reloads and
 * finishes it; the admin endpoints read its status and steer it (pause,
 * resume, abort, throttle) from worker 0.
 *
 * Crash safety: the migration state lives in `<shard_map file>.rebalance`
 * (written atomically at the start and at every slot switch).  At start-up,
 * rb_rebalance_recover() finds it, rolls back the slot that was being copied,
 * finishes deleting the slot that was switched, and resumes.
 */
#ifndef RB_REBALANCE_H
#define RB_REBALANCE_H

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "model/md_error.h"

struct cf_config;

/* Called on the MOVER thread when the rebalance ended (all slots moved, or
 * aborted): the map file then holds the map to activate; the callee must get
 * the main thread to call rb_rebalance_finish(). */
typedef void (*rb_rebalance_done_cb)(void *arg);

/* Main thread: `next` validated by gw_shardmap_check, which named `backend`
 * as moving slots (its type has a mover: rb_mover_for).  Returns the config to apply now (its
 * backend lists the union of both maps' shards and routes through the live slot table), with the
 * mover started; NULL with e filled (nothing changed).  The mover moves nothing before each of the
 * nworkers workers runs on the new config and the requests it started before have finished
 * (rt_live_ndrained): those were routed by the old map, without a ticket on the live table. */
struct cf_config *rb_rebalance_begin(const char *cfg_path, const struct cf_config *active,
                                     const struct cf_config *next, const char *backend,
                                     int nworkers, rb_rebalance_done_cb done, void *arg,
                                     struct md_error *e);

/* Start-up, before the workers: resume a rebalance a crash interrupted.
 * Returns cf itself (nothing to resume; no reference change), a new config
 * to run with (cf's reference is then dropped), or NULL with err (cf's
 * reference dropped too: the caller cannot start). */
struct cf_config *rb_rebalance_recover(const char *cfg_path, struct cf_config *cf, int nworkers,
                                       rb_rebalance_done_cb done, void *arg, char *err,
                                       size_t errlen);

/* Main thread, when a config is applied (a reload, a map change that moves
 * no slot): every shard of each sharded SQL backend of cf that is not being
 * rebalanced lists in its slot ownership table exactly the slots its map
 * gives it (docs/rebalancing.md, "The fence at the shard"; start-up does the
 * same in rb_rebalance_recover, and refuses to start on a conflict).  A
 * shard that owns slots the map gives another while holding their rows, or
 * that cannot be reached, is logged and left as it is. */
void rb_rebalance_fence(const struct cf_config *cf);

/* 1 while a rebalance is running (the map may not change meanwhile). */
int rb_rebalance_active(void);

/* SIGHUP while a rebalance runs: the config file with the union map and the
 * live table kept.  NULL with err. */
struct cf_config *rb_rebalance_reload(const char *cfg_path, char *err, size_t errlen);

/* Main thread, after the done callback: join the mover and load the config
 * with the final map.  NULL with err (the running config stays correct:
 * it still routes through the live table). */
struct cf_config *rb_rebalance_finish(const char *cfg_path, char *err, size_t errlen);

/* Shutdown: stop the mover where it is (the state file lets a restart
 * resume) and join it. */
void rb_rebalance_shutdown(void);

/* GET /admin/rebalance: the status of the current or last rebalance
 * ({"state":"idle"} when there was none). */
struct json_object *rb_rebalance_status(void);
/* The status if `backend` is being rebalanced, else NULL (GET /admin/shardmap). */
struct json_object *rb_rebalance_status_of(const char *backend);

/* POST /admin/rebalance/{pause,resume,abort}, PUT /admin/rebalance
 * {"throttle_rows_per_s": n}.  0, or -1 with e. */
int rb_rebalance_control(const char *action, struct json_object *body, struct md_error *e)
    __attribute__((warn_unused_result));

#endif
