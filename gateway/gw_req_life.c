/*
 * gw_req_life.c — the life of a request: created, submitted with a deadline,
 * answered once, freed once the adapter is done with it.
 *
 * A struct gw_req lives from routing until both (a) the client has its
 * answer and (b) the adapter has completed the submit (the adapter contract
 * guarantees exactly one completion).  A deadline answers 504 and leaves the
 * request waiting for its completion, which is then dropped.  The states it
 * passes through are in gw_req_private.h (req_set_state).
 */
#include "gateway/gw_req_private.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "gateway/gw_accesslog.h"
#include "gateway/gw_auth.h"
#include "gateway/gw_breaker.h"
#include "gateway/gw_http.h"
#include "gateway/gw_idempotency.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_page.h"
#include "gateway/gw_request.h"
#include "gateway/gw_scatter.h"
#include "gateway/gw_shard.h"
#include "gateway/gw_worker.h"
#include "lib/lb_json.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "model/md_error.h"
#include "model/md_query.h"
#include "routing/rt_live.h"

/* Top-level requests in flight in the whole process (limits.max_inflight). */
int req_inflight_total;

const char *req_state_name(enum req_state s)
{
    static const char *const names[] = {"OPEN",     "SUBMITTED",           "LATE",
                                        "ANSWERED", "ABANDONED_SUBMITTED", "ABANDONED"};
    return (size_t)s < sizeof(names) / sizeof(names[0]) ? names[s] : "?";
}

/* The one place a request changes state: the transitions drawn in
 * gw_req_private.h, and no other. */
static int req_state_legal(enum req_state from, enum req_state to)
{
    switch (from) {
    case REQ_OPEN:
        return to == REQ_SUBMITTED || to == REQ_ANSWERED || to == REQ_ABANDONED;
    case REQ_SUBMITTED:
        return to == REQ_OPEN || to == REQ_LATE || to == REQ_ABANDONED_SUBMITTED;
    case REQ_LATE:
        return to == REQ_ANSWERED;
    case REQ_ABANDONED_SUBMITTED:
        return to == REQ_ABANDONED || to == REQ_LATE;
    case REQ_ABANDONED:
        return to == REQ_ANSWERED;
    case REQ_ANSWERED:
    default:
        return 0;
    }
}

void req_set_state(struct gw_req *r, enum req_state to)
{
    if (!req_state_legal(r->state, to)) {
        lb_error("request %s: illegal state change %s -> %s", r->rid, req_state_name(r->state),
                 req_state_name(to));
    }
    assert(req_state_legal(r->state, to));
    r->state = to;
}

/* Its answer is written (or, for a parent, decided). */
void req_mark_answered(struct gw_req *r)
{
    int owed = r->state == REQ_SUBMITTED || r->state == REQ_ABANDONED_SUBMITTED;
    req_set_state(r, owed ? REQ_LATE : REQ_ANSWERED);
}

/* The completion it was owed has arrived. */
void req_mark_completed(struct gw_req *r)
{
    switch (r->state) {
    case REQ_LATE:
        req_set_state(r, REQ_ANSWERED);
        break;
    case REQ_ABANDONED_SUBMITTED:
        req_set_state(r, REQ_ABANDONED);
        break;
    default:
        req_set_state(r, REQ_OPEN); /* from SUBMITTED; anything else asserts */
        break;
    }
}

/* Shutting down: no answer will come unless it is under way (answered,
 * or answered late at a deadline). */
void req_mark_abandoned(struct gw_req *r)
{
    if (r->state == REQ_OPEN) {
        req_set_state(r, REQ_ABANDONED);
    } else if (r->state == REQ_SUBMITTED) {
        req_set_state(r, REQ_ABANDONED_SUBMITTED);
    }
}

struct gw_req *req_new(struct gw_worker *w, enum req_kind kind)
{
    struct gw_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return NULL;
    }
    r->w = w;
    r->kind = kind;
    r->cf = cf_config_ref(w->cf);
    r->ad.if_match = -1;
    r->ad.id = ++w->next_req_id;
    r->mid = -1;
    r->mop = GW_MOP_OTHER;
    TAILQ_INSERT_TAIL(&w->inflight, r, link);
    w->ninflight++;
    return r;
}

void req_free(struct gw_req *r)
{
    struct gw_worker *w = r->w;
    if (r->counted) {
        __atomic_sub_fetch(&req_inflight_total, 1, __ATOMIC_RELAXED);
    }
    TAILQ_REMOVE(&w->inflight, r, link);
    w->ninflight--;
    if (r->timer_set) {
        event_del(&r->timer);
    }
    if (r->idem != NULL) { /* never answered: the key is free again */
        gw_idem_release(r->idem);
    }
    /* only now: a request answered 504 still holds a store connection */
    gw_auth_inflight_release(r->held, r->nheld);
    json_object_put(r->body);
    json_object_put(r->results);
    json_object_put(r->found);
    gw_scatter_unref(r->sg);
    md_query_free(r->query);
    if (r->live != NULL) {
        rt_live_end(r->live, &r->ticket);
        rt_live_unref(r->live);
    }
    if (r->hold_ev != NULL) {
        event_free(r->hold_ev);
    }
    free(r->skey);
    free(r->key);
    if (r->rt != NULL) {
        gw_backend_rt_unref_later(w, r->rt);
    }
    cf_config_unref(r->cf);
    free(r);
    if (w->join_pending) {
        gw_requests_check_drained(w);
    }
}

/* Count the answer of a top-level request and write its access log line. */
static void observe(struct gw_req *r, int status)
{
    uint64_t us = gw_metrics_now_us() - r->t0_us;
    const struct cf_domain *d = r->ad.domain;
    gw_metrics_request(r->w->id, d != NULL ? gw_metrics_domain_lookup(d->name) : 0,
                       (enum gw_mop)r->mop, status, us);
    if (!gw_accesslog_enabled()) {
        return;
    }
    struct gw_access a = {0};
    a.request_id = r->rid;
    a.caller = r->caller != NULL ? r->caller->name : NULL;
    a.method = r->http->method_name;
    a.path = r->http->path;
    a.domain = d != NULL ? d->name : NULL;
    a.op = gw_mop_name((enum gw_mop)r->mop);
    a.status = status;
    a.usec = us;
    if (r->kind == REQ_SCATTER || r->kind == REQ_READY) {
        a.shards = r->kind == REQ_SCATTER ? r->nqueried : r->nchild - 1;
    } else if (r->submitted && d != NULL && (size_t)r->ad.shard < d->backend->nshards) {
        a.shards = 1;
        a.shard = d->backend->shards[r->ad.shard].name;
    }
    a.error = status >= 300 ? r->errcode : NULL;
    gw_accesslog_write(&a);
}

void req_respond_ct(struct gw_req *r, int status, const char *ctype, struct evbuffer *body,
                    const char *more_headers)
{
    if (r->counted) { /* answered: no longer in flight for the client */
        __atomic_sub_fetch(&req_inflight_total, 1, __ATOMIC_RELAXED);
        r->counted = 0;
    }
    observe(r, status);
    if (r->idem != NULL) { /* keep a success for retries with the same key */
        size_t len = body != NULL ? evbuffer_get_length(body) : 0;
        const void *bytes = len > 0 ? (const void *)evbuffer_pullup(body, -1) : (const void *)"";
        gw_idem_complete(r->idem, status, bytes, len, more_headers, lb_now_ms());
        r->idem = NULL;
    }
    char stack[512];
    size_t ml = more_headers != NULL ? strlen(more_headers) : 0;
    size_t rl = strlen(r->rid);
    size_t need = sizeof("X-Request-Id: \r\n") + rl + ml;
    char *extra = need <= sizeof(stack) ? stack : malloc(need); /* headers are whole, never cut */
    if (extra == NULL) {
        extra = stack;
        ml = 0; /* out of memory: the answer goes without the extra headers */
    }
    char *p = LB_PUT_LIT(extra, "X-Request-Id: ");
    p = lb_put_mem(p, r->rid, rl);
    p = LB_PUT_LIT(p, "\r\n");
    if (ml > 0) { /* memcpy from NULL is undefined even for 0 bytes */
        p = lb_put_mem(p, more_headers, ml);
    }
    *p = '\0';
    gw_http_respond(r->http, status, ctype, body, extra);
    if (extra != stack) {
        free(extra);
    }
    r->http = NULL;
}

void req_respond(struct gw_req *r, int status, struct evbuffer *body, const char *more_headers)
{
    req_respond_ct(r, status, "application/json", body, more_headers);
}

void req_respond_error(struct gw_req *r, const struct md_error *e, const char *more_headers)
{
    struct evbuffer *b = evbuffer_new();
    md_error_write(b, e, r->rid);
    r->errcode = md_err_code(e->err);
    char ra[256];
    if (more_headers == NULL && r->retry_after_s > 0) { /* circuit open: when to come back */
        snprintf(ra, sizeof(ra), "Retry-After: %d\r\n", r->retry_after_s);
        more_headers = ra;
    } else if (e->err == MD_E_SLOT_MOVED) { /* the owner is known again once the map is */
        snprintf(ra, sizeof(ra), "%sRetry-After: 1\r\n", more_headers != NULL ? more_headers : "");
        more_headers = ra;
    }
    req_respond(r, md_err_status(e->err), b, more_headers);
    evbuffer_free(b);
}

/* Answer a top-level request that never reached an adapter, and free it. */
void req_fail_now(struct gw_req *r, const struct md_error *e, const char *more_headers)
{
    req_respond_error(r, e, more_headers);
    req_mark_answered(r);
    req_release(r);
}

void req_simple_json(struct gw_req *r, int status, const char *json)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, json, strlen(json));
    req_respond(r, status, b, NULL);
    evbuffer_free(b);
    req_mark_answered(r);
    req_release(r);
}

static enum md_err err_of(enum ad_status st)
{
    switch (st) {
    case AD_NOT_FOUND:
        return MD_E_NOT_FOUND;
    case AD_CONFLICT:
        return MD_E_CONFLICT;
    case AD_PRECONDITION:
        return MD_E_PRECONDITION;
    case AD_BAD_REQUEST:
        return MD_E_BAD_REQUEST;
    case AD_TIMEOUT:
        return MD_E_TIMEOUT;
    case AD_UNAVAILABLE:
    case AD_CANCELED:
        return MD_E_UNAVAILABLE;
    case AD_SLOT_MOVED:
        return MD_E_SLOT_MOVED;
    default:
        return MD_E_INTERNAL;
    }
}

int req_ok_status(const struct gw_req *r, const struct ad_res *res)
{
    switch (r->ad.op) {
    case AD_INSERT:
        return 201;
    case AD_PUT:
        return res->created ? 201 : 200;
    case AD_DELETE:
        return 204;
    default:
        return 200;
    }
}

/* The error a client sees for a failed adapter result.  A shard that is
 * unavailable is named (backend, shard), never described in the store's or
 * driver's words, which name hosts and ports: those go to the log with the
 * request id (backend_outcome), and to the admin listener's /ready. */
void req_res_error(const struct gw_req *r, const struct ad_res *res, const char *field,
                   struct md_error *e)
{
    int ready = r->parent != NULL && r->parent->kind == REQ_READY;
    if (res->status == AD_UNAVAILABLE && !ready && r->rt != NULL &&
        (size_t)r->ad.shard < r->rt->be->nshards) {
        const struct cf_backend *be = r->rt->be;
        md_error_set(e, MD_E_UNAVAILABLE, NULL,
                     "backend '%s' (shard '%s') is unavailable; the cause is logged under this "
                     "request id",
                     be->name, be->shards[r->ad.shard].name);
        return;
    }
    md_error_set(e, err_of(res->status), field, "%s", res->message);
}

/* A read whose answer body is longer than limits.max_response_bytes:
 * answered with response_too_large instead (1), or 0. */
int req_response_too_large(struct gw_req *r, struct evbuffer *b)
{
    size_t max = r->cf->limits.max_response_bytes, len = evbuffer_get_length(b);
    enum ad_op op = r->ad.op;
    if (len <= max || !(op == AD_GET || op == AD_QUERY || op == AD_AGGREGATE)) {
        return 0; /* a write is answered: it was applied (its echo is bounded by max_body) */
    }
    struct md_error e = {0};
    int q = r->ad.op == AD_QUERY || r->ad.op == AD_AGGREGATE;
    md_error_set(&e, MD_E_RESPONSE_TOO_LARGE, q ? "limit" : NULL,
                 "the answer would be %zu bytes, more than limits.max_response_bytes (%zu)%s", len,
                 max, q ? ": ask for a smaller page (limit) or fewer fields" : "");
    e.domain = r->ad.domain != NULL ? r->ad.domain->name : NULL;
    req_respond_error(r, &e, NULL);
    return 1;
}

void req_deliver(struct gw_req *r, const struct ad_res *res, const struct md_error *ge)
{
    req_mark_answered(r);
    if (r->timer_set) {
        event_del(&r->timer);
    }
    if (r->parent != NULL && r->parent->kind == REQ_SCATTER) {
        req_scatter_child_done(r, res, ge);
        return;
    }
    if (r->parent != NULL && r->parent->kind == REQ_GUARD) {
        req_guard_child_done(r, res, ge);
        return;
    }
    if (r->parent != NULL) {
        struct json_object *entry = json_object_new_object();
        int status;
        if (ge == NULL && res->status == AD_DONE) {
            status = req_ok_status(r, res);
            if (r->kind == REQ_ONE && r->parent->kind == REQ_READY) {
                /* nothing more */
            } else if (res->raw != NULL) {
                /* the adapter's JSON text goes into the batch answer as is */
                json_object_object_add(entry, "item", lb_json_raw(res->raw, res->rawlen));
            } else if (res->item != NULL) {
                json_object_object_add(entry, "item", json_object_get(res->item));
            }
        } else {
            struct md_error e = {0};
            if (ge != NULL) {
                e = *ge;
            } else {
                req_res_error(r, res, res->field, &e);
                e.shard = res->shard;
            }
            e.domain = r->ad.domain != NULL ? r->ad.domain->name : NULL;
            status = md_err_status(e.err);
            json_object_object_add(entry, "error", md_error_json(&e, r->parent->rid));
        }
        req_parent_child_done(r, status, entry);
        return;
    }
    if (ge != NULL) {
        req_respond_error(r, ge, NULL);
        return;
    }
    if (res->status != AD_DONE) {
        struct md_error e = {0};
        req_res_error(r, res, res->field, &e);
        e.domain = r->ad.domain != NULL ? r->ad.domain->name : NULL;
        e.shard = res->status == AD_UNAVAILABLE || res->status == AD_TIMEOUT ||
                          res->status == AD_INTERNAL || res->status == AD_SLOT_MOVED
                      ? res->shard
                      : NULL;
        req_respond_error(r, &e, NULL);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    int status = req_ok_status(r, res);
    if (status != 204) {
        if (res->raw != NULL) {
            evbuffer_add(b, res->raw, res->rawlen);
        } else if (res->item != NULL) {
            lb_json_write(b, res->item);
        } else {
            evbuffer_add(b, "{}", 2);
        }
    }
    if (req_response_too_large(r, b)) {
        evbuffer_free(b);
        return;
    }
    char etag[96];
    char *p = etag;
    if (r->guard) { /* the key was looked up on every shard first */
        p = LB_PUT_LIT(p, "X-Shards-Queried: ");
        p = lb_put_u64(p, (uint64_t)r->ad.domain->backend->nshards);
        p = LB_PUT_LIT(p, "\r\n");
    } else if (r->ad.op == AD_QUERY || r->ad.op == AD_AGGREGATE ||
               (r->ad.domain != NULL && r->ad.domain->shard_key != NULL)) {
        p = LB_PUT_LIT(p, "X-Shards-Queried: 1\r\n");
    }
    if (res->version >= 0) {
        p = LB_PUT_LIT(p, "ETag: \"");
        p = lb_put_u64(p, (uint64_t)res->version);
        p = LB_PUT_LIT(p, "\"\r\n");
    }
    *p = '\0';
    req_respond(r, status, b, etag);
    evbuffer_free(b);
}

/* The request id a log line names: a child's is its top-level request's. */
const char *req_top_rid(const struct gw_req *r)
{
    while (r->parent != NULL) {
        r = r->parent;
    }
    return r->rid;
}

/* What a backend's answer says about the shard: metrics outcome, circuit
 * breaker, and the error log with the store's own words. */
static void backend_outcome(struct gw_req *r, enum ad_status st, const char *message)
{
    enum gw_mbe what = GW_MBE_OK;
    int ok = 1;
    switch (st) {
    case AD_UNAVAILABLE:
        what = GW_MBE_UNAVAILABLE;
        ok = 0;
        break;
    case AD_TIMEOUT:
        what = GW_MBE_TIMEOUT;
        ok = 0;
        break;
    case AD_INTERNAL:
        what = GW_MBE_INTERNAL;
        break;
    case AD_CANCELED:
        return;
    default:
        break;
    }
    gw_metrics_backend_outcome(r->w->id, r->mid, what);
    /* Only what says the shard is unhealthy opens its circuit, never one
     * caller's expensive request (docs/design.md, "Circuit breakers"): a
     * _query / _aggregate that runs out of time is its own cost, and a
     * timeout while the shard answers other requests is load, not an
     * outage.  A refused or lost connection counts, unless it ended an
     * expensive request while the shard kept answering others. */
    int counts = 1;
    if (!ok) {
        int expensive = r->ad.op == AD_QUERY || r->ad.op == AD_AGGREGATE;
        int alive = gw_breaker_answered_since(r->mid, r->sub_ms);
        counts = st == AD_TIMEOUT ? !expensive && !alive : !(expensive && alive);
    }
    if (counts) {
        gw_breaker_record(r->mid, ok, lb_now_ms(), message);
    }
    if (what != GW_MBE_OK) {
        const struct cf_backend *be = r->rt != NULL ? r->rt->be : NULL;
        int lv = r->ad.op == AD_PING ? LB_LOG_DEBUG : LB_LOG_WARN;
        if (lb_log_enabled((enum lb_log_level)lv)) {
            lb_log((enum lb_log_level)lv,
                   "request %s: %s %s failed on shard '%s' of backend '%s': %s", req_top_rid(r),
                   r->ad.domain != NULL ? r->ad.domain->name : "-", ad_op_name(r->ad.op),
                   gw_shard_name(r->mid), be != NULL ? be->name : "?", message);
        }
    }
}

static void on_done(const struct ad_res *res, void *arg)
{
    struct gw_req *r = arg;
    req_mark_completed(r);
    gw_metrics_backend_done(r->w->id, r->mid);
    if (req_is_open(r)) {
        backend_outcome(r, res->status, res->message);
        if (res->status == AD_DONE && r->ad.query != NULL &&
            (r->parent == NULL || r->parent->kind != REQ_SCATTER)) {
            /* one shard's rows: the page (a scatter child's go to the merge) */
            struct ad_res page = *res;
            page.item = gw_page_new(r->ad.query, res->rows, res->last, 1, 0);
            req_deliver(r, &page, NULL);
            json_object_put(page.item);
        } else {
            req_deliver(r, res, NULL);
        }
    }
    req_release(r);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct gw_req *r = arg;
    (void)fd;
    (void)what;
    r->timer_set = 0;
    if (req_is_answered(r)) {
        return;
    }
    struct md_error e = {0};
    const struct cf_backend *be = r->rt->be;
    md_error_set(&e, MD_E_TIMEOUT, NULL,
                 "no answer from backend '%s' (shard '%s') within %" PRIu64 " ms", be->name,
                 be->shards[r->ad.shard].name, (uint64_t)r->timeout_ms);
    e.domain = r->ad.domain != NULL ? r->ad.domain->name : NULL;
    e.shard = be->shards[r->ad.shard].name;
    backend_outcome(r, AD_TIMEOUT, e.message);
    req_deliver(r, NULL, &e);
    AD_OPTIONAL(r->rt->ops, cancel, (void)0, r->rt->state, r->ad.id);
    req_release(r);
}

/* Free the request once it is answered and the adapter is done with it. */
void req_release(struct gw_req *r)
{
    if (req_is_owed(r) || req_is_open(r)) {
        return;
    }
    if (r->nchild > r->ndone) {
        return; /* a parent waits for its children */
    }
    if (r->http != NULL) { /* abandoned before it was answered */
        struct md_error e = {0};
        md_error_set(&e, MD_E_SHUTTING_DOWN, NULL, "polygate is shutting down");
        req_respond_error(r, &e, NULL);
    }
    struct gw_worker *w = r->w;
    req_free(r);
    gw_worker_request_done(w);
}

/* Submit r->ad to the domain's adapter with a deadline. */
void req_submit(struct gw_req *r)
{
    const struct cf_domain *d = r->ad.domain;
    struct md_error e = {0};
    e.domain = d != NULL ? d->name : NULL;
    if (r->rt == NULL) {
        md_error_set(&e, MD_E_UNAVAILABLE, NULL, "backend '%s' failed to start (see the log)",
                     d != NULL ? d->backend_name : "?");
        req_deliver(r, NULL, &e);
        req_release(r);
        return;
    }
    const struct cf_backend *be = r->rt->be;
    int64_t tmo = d != NULL && d->timeout_ms > 0 ? d->timeout_ms : r->cf->limits.request_timeout_ms;
    if (r->ad.op == AD_PING) {
        tmo = tmo < 1000 ? tmo : 1000;
    }
    uint64_t now = lb_now_ms();
    r->timeout_ms = tmo;
    r->ad.deadline_ms = now + (uint64_t)tmo;
    r->mid = (size_t)r->ad.shard < r->rt->nmids ? r->rt->mids[r->ad.shard] : -1;
    uint64_t retry_ms = 0;
    if (r->ad.op != AD_PING && !gw_breaker_allow(r->mid, now, &retry_ms)) {
        /* fail fast: the shard failed repeatedly; a probe goes after open_ms */
        const char *shard = be->shards[r->ad.shard].name;
        e.shard = shard;
        gw_metrics_backend_outcome(r->w->id, r->mid, GW_MBE_CIRCUIT_OPEN);
        md_error_set(&e, MD_E_UNAVAILABLE, NULL,
                     "backend '%s' (shard '%s') is unavailable: circuit open after %d "
                     "consecutive failures; next probe in %" PRIu64 " ms",
                     be->name, shard, gw_breaker_failures(r->mid), retry_ms);
        r->retry_after_s = (int)((retry_ms + 999) / 1000);
        r->mid = -1;
        req_deliver(r, NULL, &e);
        req_release(r);
        return;
    }
    int rc = r->rt->ops->submit(r->rt->state, &r->ad, on_done, r);
    if (rc != 0) {
        const char *shard = be->shards[r->ad.shard].name;
        e.shard = shard;
        if (rc == AD_EDOWN || rc == AD_EFULL) {
            gw_metrics_backend_outcome(r->w->id, r->mid,
                                       rc == AD_EDOWN ? GW_MBE_NO_CONN : GW_MBE_QUEUE_FULL);
        }
        if (rc == AD_EDOWN) {
            gw_breaker_record(r->mid, 0, now, "no connection");
        }
        r->mid = -1;
        if (rc == AD_EFULL) {
            md_error_set(&e, MD_E_UNAVAILABLE, NULL,
                         "backend '%s' (shard '%s') is overloaded: its wait queue is full",
                         be->name, shard);
        } else if (rc == AD_EDOWN) {
            md_error_set(&e, MD_E_UNAVAILABLE, NULL,
                         "backend '%s' (shard '%s') is unavailable: no connection", be->name,
                         shard);
        } else {
            md_error_set(&e, MD_E_UNSUPPORTED, NULL, "backend '%s' cannot serve this request",
                         be->name);
            e.shard = NULL;
        }
        req_deliver(r, NULL, &e);
        req_release(r);
        return;
    }
    req_set_state(r, REQ_SUBMITTED);
    r->submitted = 1;
    r->sub_ms = now;
    if (r->parent != NULL) {
        r->parent->submitted = 1;
    }
    gw_metrics_backend_submit(r->w->id, r->mid);
    event_assign(&r->timer, r->w->base, -1, 0, on_deadline, r);
    struct timeval tv = {(time_t)(tmo / 1000), (suseconds_t)((tmo % 1000) * 1000)};
    event_add(&r->timer, &tv);
    r->timer_set = 1;
}
