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

struct gw_http_req;
struct gw_worker;

void gw_request_handle(struct gw_http_req *hr, void *worker);
void gw_admin_handle(struct gw_http_req *hr, void *worker);

/* Shutdown: requests still in flight will get no response. */
void gw_requests_abandon(struct gw_worker *w);
void gw_requests_free_all(struct gw_worker *w);

/* Issue 6: once no request started before w->join_id is in flight, tell the
 * live slot table (rt_live_worker_drained). */
void gw_requests_check_drained(struct gw_worker *w);

#endif
