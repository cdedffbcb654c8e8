/*
 * gw_request.h — from an HTTP request to an adapter call and back.
 *
 * gw_request_handle() maps the REST routes of the uniform protocol onto an
 * envelope {op, domain, key, body, If-Match}, validates it against the
 * domain's schema, submits it to the domain's adapter with a deadline, and
 * writes the response (or the one JSON error shape).
 */
#ifndef GW_REQUEST_H
#define GW_REQUEST_H

struct event_base;
struct gw_http_req;
struct gw_worker;
struct gw_worker_hooks;
struct json_object;
struct md_error;

void gw_request_handle(struct gw_http_req *hr, void *worker);
void gw_admin_handle(struct gw_http_req *hr, void *worker);

/* The functions above and below as the hooks a worker calls (gw_worker.h);
 * the server passes them to gw_worker_init, so the worker, which the
 * requests use, does not include this header. */
extern const struct gw_worker_hooks gw_request_hooks;

/* PUT /admin/shardmap hands the map to the main thread through put_map
 * (gw_server_put_map, gw_server.h), installed by the server before its
 * workers start; without one the request is refused as a conflict. */
typedef void (*gw_map_done_cb)(const struct md_error *e, int rebalancing, void *arg);
typedef int (*gw_put_map_fn)(const char *backend, struct json_object *doc, struct event_base *base,
                             gw_map_done_cb done, void *arg);
void gw_request_set_put_map(gw_put_map_fn put_map);

/* Shutdown: requests still in flight will get no response. */
void gw_requests_abandon(struct gw_worker *w);
void gw_requests_free_all(struct gw_worker *w);

/* Rebalancing: once no request started before w->join_id is in flight, tell the
 * live slot table (rt_live_worker_drained). */
void gw_requests_check_drained(struct gw_worker *w);

#endif
