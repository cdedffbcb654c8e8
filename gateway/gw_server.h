/*
 * gw_server.h — the process: workers, signals, reload, drain.
 */
#ifndef GW_SERVER_H
#define GW_SERVER_H

#include "gateway/gw_request.h" /* gw_map_done_cb */

/* Run polygate with the config at `path` until SIGTERM/SIGINT; returns the
 * exit code (0 after a clean drain). */
int gw_server_run(const char *path);

struct event_base;
struct md_error;
struct json_object;

/* PUT /admin/shardmap: done(NULL, 0, arg) once the map is checked, written to
 * the backend's shard_map file and posted to every worker; done(NULL, 1,
 * arg) when it moves slots and a rebalance started; done(e, 0, arg) with
 * the reason when it was rejected (the active map stays).  The work runs on
 * the main thread (gw_shardmap.h: its DSN probes block); done runs on `base`.
 * -1 when another map change is in progress (or the server is not running). */
int gw_server_put_map(const char *backend, struct json_object *doc, struct event_base *base,
                      gw_map_done_cb done, void *arg) __attribute__((warn_unused_result));

#endif
