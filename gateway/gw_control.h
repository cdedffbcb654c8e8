/*
 * gw_control.h — the fleet's control store (etcd, config `control:`): this
 * instance's registration under a lease, the shard maps every instance
 * serves, and the view of the fleet (docs/fleet.md).
 *
 * Keys under the configured prefix P:
 *   P/instances/<id>      this instance's registration (JSON), under its lease
 *   P/shardmap/<backend>  the backend's shard map document (the JSON that
 *                         PUT /admin/shardmap takes)
 *
 * Everything runs on the main thread's loop (gw_server.c owns it); the
 * *_json and metrics functions read a snapshot under a mutex and may be
 * called from any thread (the admin listener runs on the workers).  Without
 * `control` there is no gw_control object and the gateway runs on its files
 * as before; gw_control_fleet_json then shows this instance alone.
 */
#ifndef GW_CONTROL_H
#define GW_CONTROL_H

#include <stddef.h>
#include <stdint.h>

struct cf_config;
struct evbuffer;
struct event_base;
struct json_object;
struct md_error;
struct gw_control;

/* What the control needs of the server (gw_server.c fills it). */
struct gw_control_hooks {
    void *srv;
    /* Serve `doc` as backend's shard map (the checks of a map change, the
     * map file rewritten as a cache, the workers given the new config).
     * startup: the store's map replaces the file's without the version
     * check (the store wins).  0, or -1 with err (the active map stays). */
    int (*install)(void *srv, const char *backend, struct json_object *doc, int startup, char *err,
                   size_t errlen);
    /* The config in force (borrowed, main thread). */
    const struct cf_config *(*config)(void *srv);
};

/* This process's identity (id, listen addresses, pid, start time), for the
 * registration and GET /admin/fleet; called once at start in both modes. */
void gw_control_process_init(const struct cf_config *cf);

/* Register and read the maps (asynchronously, on base); NULL when the
 * config has no control store. */
struct gw_control *gw_control_new(struct event_base *base, const struct cf_config *cf,
                                  const struct gw_control_hooks *hooks);
/* 1 once the first read of the store is done, or has failed (the gateway
 * then starts on its cached map files; docs/fleet.md). */
int gw_control_synced(const struct gw_control *c);
/* Revoke the lease (the instance leaves the fleet at once; bounded by the
 * call timeout, running base) and free. */
void gw_control_stop(struct gw_control *c);

/* PUT /admin/shardmap in control mode: write the checked map doc for
 * backend to the store with a compare-and-swap on the revision this
 * instance serves.  done(NULL, rev) once the store took it (rev: its
 * revision), done(e, 0) with 409 when the map changed meanwhile, 503 when
 * the store cannot be reached. */
typedef void (*gw_control_put_cb)(const struct md_error *e, int64_t revision, void *arg);
void gw_control_put_map(struct gw_control *c, const char *backend, struct json_object *doc,
                        gw_control_put_cb done, void *arg);
/* The store revision of the map this instance serves for backend (0: none). */
int64_t gw_control_served(const struct gw_control *c, const char *backend);
/* The map of backend at revision rev is served now (the registration's
 * map_versions are published again). */
void gw_control_set_served(struct gw_control *c, const char *backend, int64_t rev);

/* Any thread. */
/* GET /admin/fleet. cf: the caller's config snapshot (this instance's map
 * versions in file mode). */
struct json_object *gw_control_fleet_json(const struct cf_config *cf);
/* The control store's state for /ready's detailed view: {"mode": "file"} or
 * {"mode": "etcd", "etcd", "prefix", "reachable", "revision", "watch",
 * "registered"}, with "map_versions": {backend: version} served (cf: the
 * caller's config snapshot). */
struct json_object *gw_control_status_json(const struct cf_config *cf);
/* polygate_control_up and polygate_control_watch_up (control mode only). */
void gw_control_metrics(struct evbuffer *out);

#endif
