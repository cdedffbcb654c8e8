/*
 * gw_admin.c — the admin listener: /health, /ready (detailed), /metrics and
 * the /admin/ API, dispatched through a route table (admin_routes).
 */
#include "gateway/gw_req_private.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "config/cf_config.h"
#include "gateway/gw_control.h"
#include "gateway/gw_http.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_request.h"
#include "gateway/gw_route.h"
#include "gateway/gw_shardmap.h"
#include "gateway/gw_worker.h"
#include "lib/lb_json.h"
#include "model/md_error.h"
#include "rebalance/rb_rebalance.h"
#include "routing/rt_shardmap.h"

static gw_put_map_fn put_map;

void gw_request_set_put_map(gw_put_map_fn fn)
{
    put_map = fn;
}

static void send_json(struct gw_req *r, int status, struct json_object *doc)
{
    struct evbuffer *b = evbuffer_new();
    lb_json_write(b, doc);
    json_object_put(doc);
    req_respond(r, status, b, NULL);
    evbuffer_free(b);
    req_mark_answered(r);
    req_release(r);
}

/* GET /admin/route/{domain}?{shard_key}=… → where that key lives. */
static void admin_route(struct gw_req *r, struct gw_http_req *hr)
{
    struct md_error e = {0};
    const char *dn = hr->path + strlen("/admin/route/");
    const struct cf_domain *d = cf_domain_find(r->cf, dn, strlen(dn));
    if (d == NULL) {
        md_error_set(&e, MD_E_UNKNOWN_DOMAIN, NULL, "unknown domain '%.64s'", dn);
        req_fail_now(r, &e, NULL);
        return;
    }
    e.domain = d->name;
    if (d->shard_key == NULL) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL, "domain '%s' is not sharded (no shard_key)",
                     d->name);
        req_fail_now(r, &e, NULL);
        return;
    }
    size_t len = 0;
    char *v = hr->query != NULL ? req_query_param(hr->query, d->shard_key, &len) : NULL;
    if (v == NULL && hr->query != NULL) { /* ?key=… (polygatectl route) */
        v = req_query_param(hr->query, "key", &len);
    }
    struct gw_route rt;
    if (v == NULL) {
        md_error_set(&e, MD_E_BAD_REQUEST, d->shard_key, "pass the key as ?%s=…", d->shard_key);
        req_fail_now(r, &e, NULL);
        return;
    }
    if (gw_route_text(d, v, len, &rt, &e) < 0) {
        free(v);
        req_fail_now(r, &e, NULL);
        return;
    }
    char hash[24];
    snprintf(hash, sizeof(hash), "0x%016" PRIx64, rt.hash);
    struct json_object *doc = json_object_new_object();
    json_object_object_add(doc, "domain", json_object_new_string(d->name));
    json_object_object_add(doc, "key", json_object_new_string_len(v, (int)len));
    json_object_object_add(doc, "hash", json_object_new_string(hash));
    json_object_object_add(doc, "slot", json_object_new_int64(rt.slot));
    json_object_object_add(doc, "shard", json_object_new_string(d->backend->shards[rt.shard].name));
    json_object_object_add(doc, "map_version",
                           json_object_new_int64(rt_shardmap_version(d->backend->map)));
    free(v);
    send_json(r, 200, doc);
}

static void admin_map_done(const struct md_error *e, int rebalancing, void *arg)
{
    struct gw_req *r = arg;
    req_mark_completed(r);
    if (req_is_open(r)) {
        if (e != NULL) {
            req_respond_error(r, e, NULL);
        } else if (rebalancing) { /* 202: the slots move now (GET /admin/rebalance) */
            struct json_object *doc = json_object_new_object();
            json_object_object_add(doc, "applied", json_object_new_boolean(0));
            json_object_object_add(doc, "rebalance", rb_rebalance_status());
            send_json(r, 202, doc);
            return;
        } else {
            /* the workers apply the map on their loops right after this (in
             * control mode: the store took it, every instance follows) */
            req_simple_json(r, 200, "{\"applied\":true}");
            return;
        }
        req_mark_answered(r);
    }
    req_release(r);
}

/* GET /admin/rebalance; POST /admin/rebalance/{pause,resume,abort};
 * PUT /admin/rebalance {"throttle_rows_per_s": n}. */
static void admin_rebalance(struct gw_req *r, struct gw_http_req *hr)
{
    struct md_error e = {0};
    const char *action = hr->path + strlen("/admin/rebalance");
    if (hr->method == GW_GET && *action == '\0') {
        send_json(r, 200, rb_rebalance_status());
        return;
    }
    struct json_object *body = NULL;
    if (hr->method == GW_PUT && *action == '\0') {
        if (req_parse_body(r, hr, &body, &e) < 0) {
            req_fail_now(r, &e, NULL);
            return;
        }
        action = "/throttle";
    } else if (hr->method != GW_POST || *action != '/') {
        md_error_set(&e, MD_E_METHOD, NULL,
                     "use GET or PUT /admin/rebalance, POST /admin/rebalance/{pause,resume,abort}");
        req_fail_now(r, &e, NULL);
        return;
    }
    int rc = rb_rebalance_control(action + 1, body, &e);
    json_object_put(body);
    if (rc < 0) {
        req_fail_now(r, &e, NULL);
        return;
    }
    send_json(r, 200, rb_rebalance_status());
}

/* GET /admin/shardmap: every sharded backend's active map.
 * PUT /admin/shardmap[/{backend}] with a map document (JSON): checked and
 * applied by the main thread (gw_server_put_map). */
static void admin_shardmap(struct gw_req *r, struct gw_http_req *hr)
{
    struct md_error e = {0};
    if (hr->method == GW_GET) {
        send_json(r, 200, gw_shardmap_json(r->cf, rb_rebalance_status_of));
        return;
    }
    if (hr->method != GW_PUT) {
        md_error_set(&e, MD_E_METHOD, NULL, "/admin/shardmap takes GET or PUT");
        req_fail_now(r, &e, "Allow: GET, PUT\r\n");
        return;
    }
    const char *name = hr->path + strlen("/admin/shardmap");
    name += *name == '/';
    const char *backend = gw_shardmap_backend(r->cf, name, strlen(name), &e);
    struct json_object *doc = NULL;
    if (backend == NULL || req_parse_body(r, hr, &doc, &e) < 0) {
        req_fail_now(r, &e, NULL);
        return;
    }
    if (!json_object_is_type(doc, json_type_object)) {
        json_object_put(doc);
        md_error_set(&e, MD_E_BAD_REQUEST, NULL, "the body must be a shard map object");
        req_fail_now(r, &e, NULL);
        return;
    }
    int rc = put_map != NULL ? put_map(backend, doc, r->w->base, admin_map_done, r) : -1;
    json_object_put(doc);
    if (rc < 0) {
        md_error_set(&e, MD_E_CONFLICT, NULL, "another shard map change is in progress; retry");
        req_fail_now(r, &e, "Retry-After: 1\r\n");
        return;
    }
    req_set_state(r, REQ_SUBMITTED); /* admin_map_done() answers */
}

static void admin_health(struct gw_req *r, struct gw_http_req *hr)
{
    (void)hr;
    req_simple_json(r, 200, "{\"status\":\"ok\"}");
}

/* /ready on the admin listener: every shard's state, errors included. */
static void admin_ready(struct gw_req *r, struct gw_http_req *hr)
{
    (void)hr;
    req_handle_ready(r, 1);
}

static void admin_metrics(struct gw_req *r, struct gw_http_req *hr)
{
    (void)hr;
    struct evbuffer *b = evbuffer_new();
    gw_metrics_render(b, r->cf, __atomic_load_n(&req_inflight_total, __ATOMIC_RELAXED));
    gw_control_metrics(b);
    req_respond_ct(r, 200, "text/plain; version=0.0.4; charset=utf-8", b, NULL);
    evbuffer_free(b);
    req_mark_answered(r);
    req_release(r);
}

/* GET /admin/fleet: the registered instances (self: this one) and the
 * control store's state; without a control store, this instance alone with
 * "control": "file" (gateway/gw_control.h). */
static void admin_fleet(struct gw_req *r, struct gw_http_req *hr)
{
    (void)hr;
    send_json(r, 200, gw_control_fleet_json(r->cf));
}

/* GET /admin/config: the config file and its domains. */
static void admin_config(struct gw_req *r, struct gw_http_req *hr)
{
    (void)hr;
    struct json_object *doc = json_object_new_object();
    json_object_object_add(doc, "path", json_object_new_string(r->cf->path));
    json_object_object_add(doc, "workers", json_object_new_int(r->cf->workers));
    struct json_object *ds = json_object_new_array();
    for (size_t i = 0; i < r->cf->ndomains; i++) {
        const struct cf_domain *d = &r->cf->domains[i];
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(d->name));
        json_object_object_add(o, "backend", json_object_new_string(d->backend_name));
        json_object_object_add(o, "store", json_object_new_string(d->backend->type));
        json_object_array_add(ds, o);
    }
    json_object_object_add(doc, "domains", ds);
    send_json(r, 200, doc);
}

/* ---- the route table ----------------------------------------------------------- */

/* How a route's path matches the request's. */
enum admin_match {
    ADM_EXACT,  /* the path itself */
    ADM_PREFIX, /* anything below it (the path ends in '/') */
    ADM_TREE,   /* the path itself or anything below path + '/' */
};

#define ADM_ANY 0u /* methods: every one; the handler answers 405 itself */
#define ADM_M(m) (1u << (m))

/* One admin route, in the shape of PgBouncer's admin command table: the
 * first route whose path and method both match serves the request.  No
 * match is 404 — also for a known path under a method it does not take
 * (POST /metrics), as before the table; /admin/shardmap and
 * /admin/rebalance take every method and answer 405 themselves. */
struct admin_route {
    const char *path;
    enum admin_match match;
    unsigned methods; /* ADM_M() bits, or ADM_ANY */
    unsigned perm;    /* the permission the caller's key needs; 0: no authentication */
    int mop;          /* enum gw_mop, for the metrics and the access log */
    void (*handle)(struct gw_req *r, struct gw_http_req *hr);
};

static const struct admin_route admin_routes[] = {
    {"/health", ADM_EXACT, ADM_ANY, 0, GW_MOP_HEALTH, admin_health},
    {"/ready", ADM_EXACT, ADM_ANY, CF_PERM_ADMIN, GW_MOP_ADMIN, admin_ready},
    {"/metrics", ADM_EXACT, ADM_M(GW_GET), CF_PERM_ADMIN, GW_MOP_METRICS, admin_metrics},
    {"/admin/route/", ADM_PREFIX, ADM_M(GW_GET), CF_PERM_ADMIN, GW_MOP_ADMIN, admin_route},
    {"/admin/shardmap", ADM_TREE, ADM_ANY, CF_PERM_ADMIN, GW_MOP_ADMIN, admin_shardmap},
    {"/admin/rebalance", ADM_TREE, ADM_ANY, CF_PERM_ADMIN, GW_MOP_ADMIN, admin_rebalance},
    {"/admin/config", ADM_EXACT, ADM_M(GW_GET), CF_PERM_ADMIN, GW_MOP_ADMIN, admin_config},
    {"/admin/fleet", ADM_EXACT, ADM_M(GW_GET), CF_PERM_ADMIN, GW_MOP_ADMIN, admin_fleet},
};

static int admin_path_matches(const struct admin_route *ar, const char *path)
{
    size_t n = strlen(ar->path);
    switch (ar->match) {
    case ADM_EXACT:
        return strcmp(path, ar->path) == 0;
    case ADM_PREFIX:
        return strncmp(path, ar->path, n) == 0;
    case ADM_TREE:
    default:
        return strncmp(path, ar->path, n) == 0 && (path[n] == '\0' || path[n] == '/');
    }
}

static const struct admin_route *admin_lookup(const struct gw_http_req *hr)
{
    for (size_t i = 0; i < sizeof(admin_routes) / sizeof(admin_routes[0]); i++) {
        const struct admin_route *ar = &admin_routes[i];
        if (admin_path_matches(ar, hr->path) &&
            (ar->methods == ADM_ANY || (ar->methods & ADM_M(hr->method)) != 0)) {
            return ar;
        }
    }
    return NULL;
}

void gw_admin_handle(struct gw_http_req *hr, void *arg)
{
    struct gw_worker *w = arg;
    struct gw_req *r = req_begin(w, hr);
    if (r == NULL) {
        return;
    }
    const struct admin_route *ar = admin_lookup(hr);
    unsigned perm = ar != NULL ? ar->perm : CF_PERM_ADMIN; /* a 404 only to an admin key */
    if (perm != 0 && req_authenticate(r, hr, perm) < 0) {
        return;
    }
    if (ar == NULL) {
        r->mop = GW_MOP_ADMIN;
        req_not_found(r, hr);
        return;
    }
    r->mop = ar->mop;
    ar->handle(r, hr);
}
