/*
 * gw_request.c — request lifecycle: route, validate, submit, deadline, respond.
 *
 * A struct gw_req lives from routing until both (a) the client has its
 * answer and (b) the adapter has completed the submit (the adapter contract
 * guarantees exactly one completion).  A deadline answers 504 and leaves the
 * request waiting for its completion, which is then dropped.
 */
#include "gateway/gw_request.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "gateway/gw_accesslog.h"
#include "gateway/gw_auth.h"
#include "gateway/gw_breaker.h"
#include "gateway/gw_http.h"
#include "gateway/gw_idempotency.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_rebalance.h"
#include "gateway/gw_route.h"
#include "gateway/gw_scatter.h"
#include "gateway/gw_shard.h"
#include "gateway/gw_shardmap.h"
#include "gateway/gw_worker.h"
#include "lib/lb_json.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "model/md_error.h"
#include "model/md_item.h"
#include "model/md_query.h"
#include "routing/rt_live.h"
#include "routing/rt_shardmap.h"

/* REQ_SCATTER: a request on a sharded domain fanned out to several shards
 * (one child per shard, gw_scatter.c merges); see scatter_start().
 * REQ_GUARD: the uniqueness check run before a write that names its own key
 * on a sharded domain (one GET child per other shard); see guard_start(). */
enum req_kind { REQ_ONE, REQ_BATCH, REQ_READY, REQ_SCATTER, REQ_GUARD };

struct gw_req {
    TAILQ_ENTRY(gw_req) link;
    struct gw_worker *w;
    enum req_kind kind;
    struct gw_http_req *http; /* top-level requests only */
    struct gw_req *parent;    /* batch item / readiness probe */
    int index;
    struct cf_config *cf;
    const struct cf_key *caller; /* authenticated API key (NULL: auth off) */
    struct gw_backend_rt *rt;
    struct ad_req ad;
    char *key;
    struct json_object *body;
    struct event timer;
    int timer_set;
    int answered;
    int pending; /* the adapter owes a completion */
    int abandoned;
    int counted; /* counts in inflight_total */
    char rid[132];
    /* parents: batch results / readiness */
    struct json_object *results;
    int nchild, ndone, nfail;
    /* sharded domains */
    char *skey; /* the shard key value from ?<shard_key>= / the envelope */
    size_t skeylen;
    int fanout;                /* not routable to one shard: scatter_start() */
    int nqueried;              /* shards a scatter parent asked */
    struct gw_scatter *sg;     /* _query / _aggregate fan-out */
    struct json_object *found; /* item fan-out: the item that was found */
    int nfound, found_status;
    int64_t found_version;
    int have_ferr;
    struct md_error ferr; /* item fan-out: the most telling failure */
    /* a write naming its own key on a sharded domain: checked on the other
     * shards first (guard); the guard parent points back to the write */
    int guard;
    struct gw_req *guarded;
    int found_shard;
    /* observability (gw_metrics.h, gw_breaker.h, gw_accesslog.h) */
    uint64_t t0_us;           /* top-level: when the request was parsed */
    int mop;                  /* enum gw_mop of the top-level request */
    int mid;                  /* interned shard id once submitted, else -1 */
    int submitted;            /* handed to the adapter (counts as a shard touched) */
    uint64_t sub_ms;          /* when it was handed to the adapter */
    int retry_after_s;        /* > 0: a Retry-After header with the error */
    const char *errcode;      /* code of the error answered, for the access log */
    struct gw_idem *idem;     /* Idempotency-Key held by this request */
    struct gw_inflight *held; /* counts in its API key's operations in flight */
    int nheld;                /* how many: 1, a _batch's operations */
    int detailed;             /* /ready on the admin listener: every shard's state */
    int ready_late;           /* /ready past READY_WAIT_MS, waiting for unknown shards */
    size_t resp_bytes;        /* batch: bytes of the answers collected so far */
    /* a backend being rebalanced (routing/rt_live.h, live_gate()) */
    struct rt_live *live;
    struct rt_live_ticket ticket;
    struct rt_live_excl excl[RT_LIVE_MAX_EXCL]; /* the exclusions of the ticket */
    size_t nexcl;
    int32_t excl_slots[RT_LIVE_MAX_EXCL]; /* a scatter child: its shard's */
    struct event *hold_ev;                /* a write waiting for a frozen slot */
    uint64_t hold_deadline_ms;
    int64_t timeout_ms; /* the store's deadline, for the 504 message */
};

static void req_release(struct gw_req *r);

/* Top-level requests in flight in the whole process (limits.max_inflight). */
static int inflight_total;

/* ---- helpers ------------------------------------------------------------------ */

static struct gw_req *req_new(struct gw_worker *w, enum req_kind kind)
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

static void req_free(struct gw_req *r)
{
    struct gw_worker *w = r->w;
    if (r->counted) {
        __atomic_sub_fetch(&inflight_total, 1, __ATOMIC_RELAXED);
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
    gw_scatter_free(r->sg);
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

static void set_request_id(struct gw_req *r, const struct gw_http_req *hr)
{
    size_t len = 0;
    const char *v = gw_http_header(hr, "x-request-id", &len);
    if (v != NULL && len > 0 && len <= 128) {
        size_t i;
        for (i = 0; i < len; i++) {
            unsigned char c = (unsigned char)v[i];
            if (!isalnum(c) && c != '-' && c != '_' && c != '.' && c != ':') {
                break;
            }
        }
        if (i == len) {
            memcpy(r->rid, v, len);
            r->rid[len] = '\0';
            return;
        }
    }
    lb_gen_id(r->rid);
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

static void respond_ct(struct gw_req *r, int status, const char *ctype, struct evbuffer *body,
                       const char *more_headers)
{
    if (r->counted) { /* answered: no longer in flight for the client */
        __atomic_sub_fetch(&inflight_total, 1, __ATOMIC_RELAXED);
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

static void respond(struct gw_req *r, int status, struct evbuffer *body, const char *more_headers)
{
    respond_ct(r, status, "application/json", body, more_headers);
}

static void respond_error(struct gw_req *r, const struct md_error *e, const char *more_headers)
{
    struct evbuffer *b = evbuffer_new();
    md_error_write(b, e, r->rid);
    r->errcode = md_err_code(e->err);
    char ra[32];
    if (more_headers == NULL && r->retry_after_s > 0) { /* circuit open: when to come back */
        snprintf(ra, sizeof(ra), "Retry-After: %d\r\n", r->retry_after_s);
        more_headers = ra;
    }
    respond(r, md_err_status(e->err), b, more_headers);
    evbuffer_free(b);
}

/* Answer a top-level request that never reached an adapter, and free it. */
static void fail_now(struct gw_req *r, const struct md_error *e, const char *more_headers)
{
    respond_error(r, e, more_headers);
    r->answered = 1;
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
    default:
        return MD_E_INTERNAL;
    }
}

static int ok_status(const struct gw_req *r, const struct ad_res *res)
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
static void res_error(const struct gw_req *r, const struct ad_res *res, const char *field,
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
static int response_too_large(struct gw_req *r, struct evbuffer *b)
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
    respond_error(r, &e, NULL);
    return 1;
}

/* ---- completing --------------------------------------------------------------- */

static void parent_child_done(struct gw_req *child, int status, struct json_object *entry);
static void scatter_child_done(struct gw_req *c, const struct ad_res *res,
                               const struct md_error *ge);
static void guard_child_done(struct gw_req *c, const struct ad_res *res, const struct md_error *ge);

static void deliver(struct gw_req *r, const struct ad_res *res, const struct md_error *ge)
{
    r->answered = 1;
    if (r->timer_set) {
        event_del(&r->timer);
    }
    if (r->parent != NULL && r->parent->kind == REQ_SCATTER) {
        scatter_child_done(r, res, ge);
        return;
    }
    if (r->parent != NULL && r->parent->kind == REQ_GUARD) {
        guard_child_done(r, res, ge);
        return;
    }
    if (r->parent != NULL) {
        struct json_object *entry = json_object_new_object();
        int status;
        if (ge == NULL && res->status == AD_DONE) {
            status = ok_status(r, res);
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
                res_error(r, res, res->field, &e);
                e.shard = res->shard;
            }
            e.domain = r->ad.domain != NULL ? r->ad.domain->name : NULL;
            status = md_err_status(e.err);
            json_object_object_add(entry, "error", md_error_json(&e, r->parent->rid));
        }
        parent_child_done(r, status, entry);
        return;
    }
    if (ge != NULL) {
        respond_error(r, ge, NULL);
        return;
    }
    if (res->status != AD_DONE) {
        struct md_error e = {0};
        res_error(r, res, res->field, &e);
        e.domain = r->ad.domain != NULL ? r->ad.domain->name : NULL;
        e.shard =
            res->status == AD_UNAVAILABLE || res->status == AD_TIMEOUT || res->status == AD_INTERNAL
                ? res->shard
                : NULL;
        respond_error(r, &e, NULL);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    int status = ok_status(r, res);
    if (status != 204) {
        if (res->raw != NULL) {
            evbuffer_add(b, res->raw, res->rawlen);
        } else if (res->item != NULL) {
            lb_json_write(b, res->item);
        } else {
            evbuffer_add(b, "{}", 2);
        }
    }
    if (response_too_large(r, b)) {
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
    respond(r, status, b, etag);
    evbuffer_free(b);
}

/* The request id a log line names: a child's is its top-level request's. */
static const char *top_rid(const struct gw_req *r)
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
                   "request %s: %s %s failed on shard '%s' of backend '%s': %s", top_rid(r),
                   r->ad.domain != NULL ? r->ad.domain->name : "-", ad_op_name(r->ad.op),
                   gw_shard_name(r->mid), be != NULL ? be->name : "?", message);
        }
    }
}

static void on_done(const struct ad_res *res, void *arg)
{
    struct gw_req *r = arg;
    r->pending = 0;
    gw_metrics_backend_done(r->w->id, r->mid);
    if (!r->answered && !r->abandoned) {
        backend_outcome(r, res->status, res->message);
        deliver(r, res, NULL);
    }
    req_release(r);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct gw_req *r = arg;
    (void)fd;
    (void)what;
    r->timer_set = 0;
    if (r->answered) {
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
    deliver(r, NULL, &e);
    r->rt->ops->cancel(r->rt->state, r->ad.id);
    req_release(r);
}

/* Free the request once it is answered and the adapter is done with it. */
static void req_release(struct gw_req *r)
{
    if (r->pending || (!r->answered && !r->abandoned)) {
        return;
    }
    if (r->nchild > r->ndone) {
        return; /* a parent waits for its children */
    }
    if (r->http != NULL) { /* abandoned before it was answered */
        struct md_error e = {0};
        md_error_set(&e, MD_E_SHUTTING_DOWN, NULL, "polygate is shutting down");
        respond_error(r, &e, NULL);
    }
    struct gw_worker *w = r->w;
    req_free(r);
    gw_worker_request_done(w);
}

/* Submit r->ad to the domain's adapter with a deadline. */
static void req_submit(struct gw_req *r)
{
    const struct cf_domain *d = r->ad.domain;
    struct md_error e = {0};
    e.domain = d != NULL ? d->name : NULL;
    if (r->rt == NULL) {
        md_error_set(&e, MD_E_UNAVAILABLE, NULL, "backend '%s' failed to start (see the log)",
                     d != NULL ? d->backend_name : "?");
        deliver(r, NULL, &e);
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
        deliver(r, NULL, &e);
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
        deliver(r, NULL, &e);
        req_release(r);
        return;
    }
    r->pending = 1;
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

/* ---- envelopes ---------------------------------------------------------------- */

static int parse_if_match(const char *v, size_t len, int64_t *out)
{
    if (len >= 2 && v[0] == 'W' && v[1] == '/') {
        v += 2;
        len -= 2;
    }
    if (len >= 2 && v[0] == '"' && v[len - 1] == '"') {
        v++;
        len -= 2;
    }
    if (len == 0 || len > 18) {
        return -1;
    }
    int64_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)v[i])) {
            return -1;
        }
        n = n * 10 + (v[i] - '0');
    }
    *out = n;
    return 0;
}

/* Sharded domains: choose the shard (gw_route.h), or mark the request for a
 * fan-out to several. */
static int route(struct gw_req *r, enum ad_op op, struct md_error *e)
{
    const struct cf_domain *d = r->ad.domain;
    struct gw_route rt;
    switch (op) {
    case AD_INSERT:
    case AD_PUT:
        if (gw_route_item(d, r->body, &rt, e) < 0) {
            return -1;
        }
        if (r->skey != NULL) { /* ?<shard_key>= must agree with the item */
            struct gw_route q;
            if (gw_route_text(d, r->skey, r->skeylen, &q, e) < 0) {
                return -1;
            }
            if (q.hash != rt.hash) {
                md_error_set(e, MD_E_BAD_REQUEST, d->shard_key,
                             "'%s' in the query string differs from the item's", d->shard_key);
                return -1;
            }
        }
        break;
    case AD_GET:
    case AD_PATCH:
    case AD_DELETE:
        if (r->skey == NULL) {
            r->fanout = 1; /* a lookup by id alone: every shard is asked */
            return 0;
        }
        if (gw_route_text(d, r->skey, r->skeylen, &rt, e) < 0) {
            return -1;
        }
        break;
    case AD_QUERY:
    case AD_AGGREGATE:
        r->fanout = 1; /* scatter_start() picks the shards the filter pins */
        return 0;
    default:
        return 0;
    }
    r->ad.shard = rt.shard;
    r->ad.slot = (int32_t)rt.slot;
    return 0;
}

/* Fill r->ad from an envelope and validate it.  Takes the body reference. */
static int env_prepare(struct gw_req *r, enum ad_op op, const struct cf_domain *d, const char *key,
                       size_t keylen, struct json_object *body, struct md_error *e)
{
    r->body = body;
    r->ad.op = op;
    r->mop = (int)op; /* enum gw_mop starts with the adapter ops */
    r->ad.domain = d;
    r->ad.shard = 0;
    e->domain = d->name;
    const struct cf_limits *lim = &r->cf->limits;
    if (key != NULL) {
        if (md_key_check(key, keylen, e) < 0) {
            return -1;
        }
        r->key = strndup(key, keylen);
        r->ad.key = r->key;
        r->ad.keylen = keylen;
    }
    if (r->ad.if_match >= 0 && !d->versioned) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL,
                     "domain '%s' has no versions: If-Match cannot apply", d->name);
        return -1;
    }
    if (r->ad.if_match >= 0 && (op == AD_GET || op == AD_INSERT)) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "If-Match applies to PUT, PATCH and DELETE only");
        return -1;
    }
    switch (op) {
    case AD_PUT:
    case AD_INSERT:
        if (body == NULL) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL, "a JSON item is required");
            return -1;
        }
        /* the key is unique in the domain, but each shard only knows its
         * own rows: a key the client chose is checked on every shard first
         * (guard_start; a generated one cannot collide) */
        r->guard =
            d->shard_key != NULL && (op == AD_PUT || json_object_object_get_ex(body, d->key, NULL));
        if (md_item_check(d, lim, op == AD_PUT ? MD_ITEM_PUT : MD_ITEM_INSERT, r->key, body, e) <
            0) {
            return -1;
        }
        if (op == AD_INSERT) {
            struct json_object *kv = json_object_object_get(body, d->key);
            r->key = strdup(json_object_get_string(kv));
            r->ad.key = r->key;
            r->ad.keylen = (size_t)json_object_get_string_len(kv);
        }
        break;
    case AD_PATCH:
        if (body == NULL) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL, "a JSON patch is required");
            return -1;
        }
        if (md_patch_check(d, lim, body, e) < 0) {
            return -1;
        }
        if (json_object_object_get_ex(body, "where", NULL) &&
            !ad_lookup(d->backend->type)->supports(d, AD_PATCH_GUARDED)) {
            md_error_set(e, MD_E_UNSUPPORTED, NULL,
                         "domain '%s' is stored in %s, which cannot apply a guarded patch "
                         "('where')",
                         d->name, d->backend->type);
            return -1;
        }
        break;
    case AD_QUERY:
    case AD_AGGREGATE: {
        /* parsed and checked once here (limits, cursor secret); the AST rides
         * on the body to the adapter (md_query_of) */
        struct md_query *q;
        if (md_query_parse(d, lim, r->cf->cursor_secret, op == AD_AGGREGATE, body, &q, e) < 0) {
            return -1;
        }
        for (size_t i = 0; i < q->ngroup; i++) {
            if (strchr(q->group_names[i], '.') != NULL &&
                !ad_lookup(d->backend->type)->supports(d, AD_GROUP_BY_PATH)) {
                md_error_set(e, MD_E_UNSUPPORTED, q->group_by[i]->name,
                             "group_by '%.128s': domain '%s' is stored in %s, which groups by "
                             "top-level fields only",
                             q->group_names[i], d->name, d->backend->type);
                md_query_free(q);
                return -1;
            }
        }
        if (r->body == NULL) {
            r->body = json_object_new_object();
        }
        md_query_attach(r->body, q);
        break;
    }
    default:
        break;
    }
    r->ad.slot = -1;
    if (d->shard_key != NULL && route(r, op, e) < 0) {
        return -1;
    }
    r->ad.body = r->body;
    r->rt = gw_worker_backend(r->w, d->backend);
    if (r->rt != NULL) {
        r->rt->refs++;
    }
    return 0;
}

/* The methods a route allows, into the caller's buf (each worker thread
 * answers on its own: no shared buffer). */
#define ALLOW_MAX 40 /* "GET, PUT, PATCH, DELETE" and a NUL */
static const char *allow_for(const struct ad_ops *ops, const struct cf_domain *d, int item,
                             char buf[ALLOW_MAX])
{
    buf[0] = '\0';
    if (item) {
        if (ops->supports(d, AD_GET)) {
            strcat(buf, "GET, ");
        }
        if (ops->supports(d, AD_PUT)) {
            strcat(buf, "PUT, ");
        }
        if (ops->supports(d, AD_PATCH)) {
            strcat(buf, "PATCH, ");
        }
        if (ops->supports(d, AD_DELETE)) {
            strcat(buf, "DELETE, ");
        }
    } else if (ops->supports(d, AD_INSERT)) {
        strcat(buf, "POST, ");
    }
    size_t n = strlen(buf);
    if (n >= 2) {
        buf[n - 2] = '\0';
    }
    return buf;
}

static int method_allowed(struct gw_req *r, const struct cf_domain *d, enum ad_op op, int item,
                          struct md_error *e, char *hdr, size_t hdrlen)
{
    const struct ad_ops *ops = ad_lookup(d->backend->type);
    if (ops->supports(d, op)) {
        return 1;
    }
    (void)r;
    e->domain = d->name;
    if (op == AD_QUERY || op == AD_AGGREGATE) {
        md_error_set(e, MD_E_UNSUPPORTED, NULL,
                     "domain '%s' is stored in %s, which cannot serve %s: read items by key "
                     "with GET /v1/%s/{%s}",
                     d->name, d->backend->type, op == AD_QUERY ? "_query" : "_aggregate", d->name,
                     d->key);
        return 0;
    }
    char abuf[ALLOW_MAX];
    const char *allow = allow_for(ops, d, item, abuf);
    if (!item && ops->supports(d, AD_PUT)) {
        md_error_set(e, MD_E_METHOD, NULL,
                     "domain '%s' has no insert; create or replace with PUT /v1/%s/{%s}", d->name,
                     d->name, d->key);
    } else {
        md_error_set(e, MD_E_METHOD, NULL, "%s is not supported on domain '%s'%s%s", ad_op_name(op),
                     d->name, allow[0] ? "; allowed: " : "", allow);
    }
    snprintf(hdr, hdrlen, "Allow: %s\r\n", allow);
    return 0;
}

/* ---- batch -------------------------------------------------------------------- */

static void scatter_finish(struct gw_req *p);
static void guard_finish(struct gw_req *g);

/* /ready waits this long for the shards' pings; a shard that has not
 * answered by then is judged from what is known (gw_breaker_healthy), so a
 * backend that is down (a connect that hangs, a server selection that waits)
 * cannot hold the answer.  Only a shard nothing is known about yet (no
 * outcome since start) is waited for, up to its ping's deadline. */
#define READY_WAIT_MS 100

static void parent_finish(struct gw_req *p);

/* Judge the shards whose pings are still out from their known state. */
static void ready_verdict(struct gw_req *p)
{
    size_t n = json_object_array_length(p->results);
    for (size_t i = 0; i < n; i++) {
        struct json_object *slot = json_object_array_get_idx(p->results, i);
        if (json_object_object_get_ex(slot, "ok", NULL)) {
            continue;
        }
        struct json_object *mid = json_object_object_get(slot, "_mid");
        int id = mid != NULL ? json_object_get_int(mid) : -1;
        int ok = gw_breaker_healthy(id);
        json_object_object_add(slot, "ok", json_object_new_boolean(ok));
        if (!ok) {
            char msg[128];
            snprintf(msg, sizeof(msg), "no answer to a ping within %d ms, and %s", READY_WAIT_MS,
                     gw_breaker_state(id) == GW_BRK_OPEN ? "its circuit is open"
                     : gw_breaker_failures(id) > 0       ? "its last request failed"
                                                         : "no earlier success is known");
            json_object_object_add(slot, "error", json_object_new_string(msg));
            p->nfail++;
        }
    }
    for (size_t i = 0; i < n; i++) {
        json_object_object_del(json_object_array_get_idx(p->results, i), "_mid");
    }
}

/* 1 when a shard whose ping is still out has no known state. */
static int ready_unknown_pending(struct gw_req *p)
{
    size_t n = json_object_array_length(p->results);
    for (size_t i = 0; i < n; i++) {
        struct json_object *slot = json_object_array_get_idx(p->results, i);
        struct json_object *mid = json_object_object_get(slot, "_mid");
        if (!json_object_object_get_ex(slot, "ok", NULL) &&
            !gw_breaker_known(mid != NULL ? json_object_get_int(mid) : -1)) {
            return 1;
        }
    }
    return 0;
}

static void ready_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct gw_req *p = arg;
    (void)fd;
    (void)what;
    p->timer_set = 0;
    if (p->answered || p->abandoned) {
        return;
    }
    if (ready_unknown_pending(p)) {
        p->ready_late = 1; /* parent_child_done() answers once every such shard is known */
        return;
    }
    parent_finish(p); /* the pings still out complete later, unanswered */
}

static void parent_finish(struct gw_req *p)
{
    if (p->kind == REQ_SCATTER) {
        scatter_finish(p);
        return;
    }
    if (p->kind == REQ_GUARD) {
        guard_finish(p);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (p->kind == REQ_BATCH) {
        struct json_object *doc = json_object_new_object();
        json_object_object_add(doc, "results", json_object_get(p->results));
        lb_json_write(b, doc);
        json_object_put(doc);
        respond(p, 200, b, NULL);
    } else {
        ready_verdict(p);
        struct json_object *doc = json_object_new_object();
        json_object_object_add(doc, "ready", json_object_new_boolean(p->nfail == 0));
        if (p->detailed) { /* backends, shards, errors: the admin listener only */
            json_object_object_add(doc, "backends", json_object_get(p->results));
        }
        lb_json_write(b, doc);
        json_object_put(doc);
        respond(p, p->nfail == 0 ? 200 : 503, b, NULL);
    }
    evbuffer_free(b);
    p->answered = 1;
}

/* A parent counts one more child than it has while it starts them, so that
 * children completing synchronously cannot finish (and free) it mid-loop;
 * the starter then takes that extra step itself. */
static void parent_step(struct gw_req *p)
{
    p->ndone++;
    if (p->ndone == p->nchild) {
        /* a /ready answered at READY_WAIT_MS is done; a guard always hands
         * its write back */
        int answered_ready = p->kind == REQ_READY && p->answered;
        if (!answered_ready && (!p->abandoned || p->kind == REQ_GUARD)) {
            parent_finish(p);
        }
        req_release(p);
    }
}

/* A batch keeps each item's answer as the JSON text it will send, counted
 * against limits.max_response_bytes as it arrives: a read whose answer
 * would carry the batch past the bound is answered response_too_large in
 * its slot instead, so the batch never holds more than the bound (plus the
 * short answers of writes, which are always reported: they were applied). */
static void batch_entry(struct gw_req *p, struct gw_req *child, int status,
                        struct json_object *entry)
{
    json_object_object_add(entry, "status", json_object_new_int(status));
    struct evbuffer *tmp = evbuffer_new();
    lb_json_write(tmp, entry);
    size_t len = evbuffer_get_length(tmp);
    size_t max = p->cf->limits.max_response_bytes;
    enum ad_op op = child->ad.op;
    int read = op == AD_GET || op == AD_QUERY || op == AD_AGGREGATE;
    if (read && p->resp_bytes + len > max) {
        struct md_error e = {0};
        md_error_set(&e, MD_E_RESPONSE_TOO_LARGE, NULL,
                     "batch item %d: its answer (%zu bytes) would carry the batch past "
                     "limits.max_response_bytes (%zu); ask for it in another request",
                     child->index, len, max);
        e.domain = child->ad.domain != NULL ? child->ad.domain->name : NULL;
        json_object_put(entry);
        entry = json_object_new_object();
        json_object_object_add(entry, "error", md_error_json(&e, p->rid));
        json_object_object_add(entry, "status", json_object_new_int(md_err_status(e.err)));
        evbuffer_drain(tmp, len);
        lb_json_write(tmp, entry);
        len = evbuffer_get_length(tmp);
    }
    p->resp_bytes += len;
    json_object_put(entry);
    json_object_array_put_idx(p->results, (size_t)child->index,
                              lb_json_raw((const char *)evbuffer_pullup(tmp, -1), len));
    evbuffer_free(tmp);
}

static void parent_child_done(struct gw_req *child, int status, struct json_object *entry)
{
    struct gw_req *p = child->parent;
    if (p->kind == REQ_READY) {
        if (p->answered) { /* judged already; this outcome updated the breaker */
            json_object_put(entry);
            parent_step(p);
            return;
        }
        struct json_object *slot = json_object_array_get_idx(p->results, (size_t)child->index);
        json_object_object_add(slot, "ok", json_object_new_boolean(status < 300));
        struct json_object *err = NULL;
        if (status >= 300 && json_object_object_get_ex(entry, "error", &err)) {
            struct json_object *m = NULL;
            json_object_object_get_ex(err, "message", &m);
            json_object_object_add(slot, "error", json_object_get(m));
        }
        json_object_put(entry);
        if (status >= 300) {
            p->nfail++;
        }
        if (p->ready_late && p->ndone + 1 < p->nchild && !p->abandoned &&
            !ready_unknown_pending(p)) {
            parent_finish(p); /* the rest is known: do not wait for their pings */
        }
    } else {
        batch_entry(p, child, status, entry);
    }
    parent_step(p);
}

/* ---- fan-out over the shards of a sharded domain --------------------------------- */

/* A request on a sharded domain that no single shard can serve: a _query /
 * _aggregate (scatter-gather, merged by gw_scatter.c), or a get / patch /
 * delete by id without the shard key.  The latter asks every shard in
 * parallel — N round trips, the latency of the slowest shard — and the shard
 * holding the id answers; pass ?<shard_key>= to make it one round trip.
 * Each child is an ordinary request on one shard with its own deadline. */
static void scatter_start(struct gw_req *p)
{
    const struct cf_domain *d = p->ad.domain;
    size_t n = d->backend->nshards;
    unsigned char *mask = malloc(n + 1);
    struct json_object *body = p->body;
    size_t k = n;
    if (p->ad.op == AD_QUERY || p->ad.op == AD_AGGREGATE) {
        k = gw_route_where(d, md_query_of(p->body)->where, mask);
        p->sg = gw_scatter_new(d, p->body, k);
        body = gw_scatter_body(p->sg);
    } else {
        memset(mask, 1, n);
    }
    p->kind = REQ_SCATTER;
    p->nqueried = (int)k;
    p->nchild = (int)k + 1;
    for (size_t i = 0; i < n; i++) {
        if (!mask[i]) {
            continue;
        }
        struct gw_req *c = req_new(p->w, REQ_ONE);
        c->parent = p;
        c->index = (int)i;
        c->caller = p->caller;
        c->ad.op = p->ad.op;
        c->ad.domain = d;
        c->ad.shard = (int)i;
        c->ad.slot = -1;
        c->ad.if_match = p->ad.if_match;
        if (p->key != NULL) {
            c->key = strdup(p->key);
            c->ad.key = c->key;
            c->ad.keylen = p->ad.keylen;
        }
        c->body = json_object_get(body);
        c->ad.body = c->body;
        for (size_t x = 0; x < p->nexcl; x++) { /* rows this shard holds but does not own */
            if (p->excl[x].shard == (int32_t)i) {
                c->excl_slots[c->ad.nexcl++] = p->excl[x].slot;
            }
        }
        c->ad.excl_slots = c->ad.nexcl > 0 ? c->excl_slots : NULL;
        c->rt = p->rt;
        if (c->rt != NULL) {
            c->rt->refs++;
        }
        req_submit(c);
    }
    free(mask);
    parent_step(p);
}

/* A child's answer as a tree (a reference to release), or NULL. */
static struct json_object *res_doc(const struct ad_res *res)
{
    struct json_object *doc = NULL;
    char msg[64];
    if (res->raw == NULL) {
        return json_object_get(res->item);
    }
    if (lb_json_parse_stored(res->raw, res->rawlen, 1000, &doc, msg, sizeof(msg)) != LB_JSON_OK) {
        return NULL;
    }
    return doc;
}

/* ---- a key the client chose, on a sharded domain ------------------------------ */

/* A PUT, or a create naming its key, on a sharded domain goes to the shard
 * of its shard key — but the key must be unique in the whole domain, and
 * another shard may hold it under another shard key (a PUT that changes an
 * order's customer_id, or a client reusing an id).  Before the write, every
 * shard is asked for the key (in parallel, by primary key; the write's own
 * shard too, since a shard holds several shard keys): found under a
 * different shard key → 409 naming the shard (a write never changes an
 * item's shard key, as a PATCH cannot); found under the same shard key →
 * the same item (on another shard: a copy while its slot moves, rt_live.h),
 * not a conflict; a shard that cannot answer → its 503/504, since the key
 * cannot be proven unused.  Two writers racing with the same new key on two
 * shards can both pass (no cross-shard lock); keys generated by polygate
 * never collide, which is why a create without a key skips all this. */
static void guard_start(struct gw_req *r)
{
    const struct cf_domain *d = r->ad.domain;
    size_t n = d->backend->nshards;
    struct gw_req *g = req_new(r->w, REQ_GUARD);
    if (g == NULL) {
        req_submit(r);
        return;
    }
    snprintf(g->rid, sizeof(g->rid), "%s", top_rid(r));
    g->guarded = r;
    g->ad.domain = d;
    g->found_shard = -1;
    r->pending = 1;         /* r waits for its guard */
    g->nchild = (int)n + 1; /* n children, + 1 while starting them (parent_step) */
    for (size_t i = 0; i < n; i++) {
        struct gw_req *c = req_new(r->w, REQ_ONE);
        c->parent = g;
        c->index = (int)i;
        c->caller = r->caller;
        c->ad.op = AD_GET;
        c->ad.domain = d;
        c->ad.shard = (int)i;
        c->ad.slot = -1;
        c->key = strdup(r->key);
        c->ad.key = c->key;
        c->ad.keylen = r->ad.keylen;
        c->rt = r->rt;
        if (c->rt != NULL) {
            c->rt->refs++;
        }
        req_submit(c);
    }
    parent_step(g);
}

static int same_value(struct json_object *a, struct json_object *b)
{
    return a != NULL && b != NULL &&
           strcmp(json_object_get_string(a), json_object_get_string(b)) == 0;
}

static void guard_child_done(struct gw_req *c, const struct ad_res *res, const struct md_error *ge)
{
    struct gw_req *g = c->parent;
    const struct cf_domain *d = g->ad.domain;
    if (ge == NULL && res->status == AD_DONE) {
        struct json_object *doc = res_doc(res);
        struct json_object *theirs = doc != NULL ? json_object_object_get(doc, d->shard_key) : NULL;
        struct json_object *mine = json_object_object_get(g->guarded->body, d->shard_key);
        if (!same_value(theirs, mine) && g->found == NULL) {
            g->found = theirs != NULL ? json_object_get(theirs) : json_object_new_null();
            g->found_shard = c->index;
        }
        json_object_put(doc);
    } else if (ge != NULL || res->status != AD_NOT_FOUND) {
        struct md_error e = {0};
        if (ge != NULL) {
            e = *ge;
        } else {
            res_error(c, res, NULL, &e);
        }
        if (!g->have_ferr) {
            g->ferr = e;
            g->ferr.shard = d->backend->shards[c->index].name;
            g->have_ferr = 1;
            g->retry_after_s = c->retry_after_s;
        }
    }
    parent_step(g);
}

static void guard_finish(struct gw_req *g)
{
    struct gw_req *r = g->guarded;
    const struct cf_domain *d = r->ad.domain;
    g->answered = 1;
    r->pending = 0;
    if (r->abandoned || r->answered) {
        req_release(r);
        return;
    }
    struct md_error e = {0};
    e.domain = d->name;
    if (g->found != NULL) {
        md_error_set(&e, MD_E_CONFLICT, d->key,
                     "%s '%.128s' already exists on shard '%s' under %s '%.128s': a write cannot "
                     "change an item's %s (delete it and create it again)",
                     d->key, r->key, d->backend->shards[g->found_shard].name, d->shard_key,
                     json_object_get_string(g->found), d->shard_key);
    } else if (g->have_ferr) {
        md_error_set(&e, g->ferr.err, NULL,
                     "cannot check that %s '%.128s' is not used on shard '%s': %s", d->key, r->key,
                     g->ferr.shard, g->ferr.message);
        e.shard = g->ferr.shard;
        r->retry_after_s = g->retry_after_s;
    } else {
        req_submit(r);
        return;
    }
    deliver(r, NULL, &e);
    req_release(r);
}

/* ---- requests on a backend whose slots are being moved ------------------------- */

static void req_start(struct gw_req *r);

static void hold_cb(evutil_socket_t fd, short what, void *arg)
{
    struct gw_req *r = arg;
    (void)fd;
    (void)what;
    if (r->abandoned) {
        req_release(r);
        return;
    }
    req_start(r);
}

/* Take the request's ticket on the live slot table (rt_live.h): the owner of
 * its slot now, the exclusions for a fan-out, the epoch.  A write to a frozen
 * slot waits (re-tried every 2 ms) up to the request deadline, then 503.
 * 0: go on; -1: held or answered. */
static int live_gate(struct gw_req *r)
{
    const struct cf_domain *d = r->ad.domain;
    struct rt_live *l = d != NULL && d->backend != NULL ? d->backend->live : NULL;
    if (l == NULL || r->ticket.active) {
        return 0;
    }
    enum ad_op op = r->ad.op;
    int write = op == AD_PUT || op == AD_INSERT || op == AD_PATCH || op == AD_DELETE;
    int32_t slot = r->fanout ? -1 : r->ad.slot;
    int shard = r->ad.shard;
    if (rt_live_begin(l, slot, write, &shard, r->excl, &r->nexcl, &r->ticket) == 0) {
        r->live = rt_live_ref(l);
        r->ad.shard = shard;
        return 0;
    }
    uint64_t now = lb_now_ms();
    if (r->hold_ev == NULL) {
        int64_t tmo = d->timeout_ms > 0 ? d->timeout_ms : r->cf->limits.request_timeout_ms;
        r->hold_deadline_ms = now + (uint64_t)tmo;
        r->hold_ev = evtimer_new(r->w->base, hold_cb, r);
    }
    if (now >= r->hold_deadline_ms) {
        struct md_error e = {0};
        md_error_set(&e, MD_E_UNAVAILABLE, NULL,
                     "slot %d of domain '%s' is being moved to another shard; retry", (int)slot,
                     d->name);
        e.domain = d->name;
        deliver(r, NULL, &e);
        req_release(r);
        return -1;
    }
    struct timeval tv = {0, 2000};
    evtimer_add(r->hold_ev, &tv);
    return -1;
}

/* ---- end of the rebalance gate ------------------------------------------------- */

/* Start a prepared request: one shard, or a fan-out. */
static void req_start(struct gw_req *r)
{
    if (live_gate(r) < 0) {
        return;
    }
    if (r->fanout) {
        scatter_start(r);
    } else if (r->guard) {
        guard_start(r);
    } else {
        req_submit(r);
    }
}

static int is_server_error(enum md_err e)
{
    return md_err_status(e) >= 500;
}

static void scatter_child_done(struct gw_req *c, const struct ad_res *res,
                               const struct md_error *ge)
{
    struct gw_req *p = c->parent;
    const struct cf_domain *d = p->ad.domain;
    const char *shard = d->backend->shards[c->index].name; /* alive with p's config */
    if (ge == NULL && res->status == AD_DONE) {
        struct json_object *doc = res_doc(res);
        struct gw_route rt;
        struct md_error ignored = {0};
        if (p->sg == NULL && p->nexcl > 0 && doc != NULL &&
            gw_route_item(d, doc, &rt, &ignored) == 0 &&
            rt_live_excluded(p->excl, p->nexcl, c->index, (int32_t)rt.slot)) {
            /* a copy on a shard that does not own its slot (rt_live.h): not the item */
        } else if (p->sg != NULL) {
            gw_scatter_add(p->sg, (size_t)c->index, doc);
        } else if (p->nfound++ == 0) {
            p->found = json_object_get(doc);
            p->found_status = ok_status(c, res);
            p->found_version = res->version;
        } else {
            lb_warn("request %s: %s '%s' exists on more than one shard of '%s'", p->rid, d->key,
                    p->key != NULL ? p->key : "?", d->name);
        }
        json_object_put(doc);
    } else {
        struct md_error e = {0};
        if (ge != NULL) {
            e = *ge;
        } else {
            const struct cf_field *f = res->field != NULL ? cf_field_find(d, res->field) : NULL;
            res_error(c, res, f != NULL ? f->name : NULL, &e);
        }
        e.domain = d->name;
        e.shard = is_server_error(e.err) ? shard : NULL;
        if (p->sg != NULL) {
            gw_scatter_fail(p->sg, (size_t)c->index, &e);
        } else if (e.err != MD_E_NOT_FOUND &&
                   (!p->have_ferr || (is_server_error(p->ferr.err) && !is_server_error(e.err)))) {
            p->ferr = e; /* a 412/409 of the shard holding the id beats a 503 */
            p->have_ferr = 1;
        }
    }
    parent_step(p);
}

static void scatter_finish(struct gw_req *p)
{
    const struct cf_domain *d = p->ad.domain;
    char hdr[96];
    snprintf(hdr, sizeof(hdr), "X-Shards-Queried: %d\r\n", p->nqueried);
    struct json_object *doc = NULL;
    struct md_error e = {0};
    int failed = 0, status = 200;
    int64_t version = -1;
    if (p->sg == NULL) { /* an item looked up on every shard */
        gw_metrics_scatter(p->w->id, gw_metrics_domain_lookup(d->name), p->nqueried, 0);
    }
    if (p->sg != NULL) {
        failed = gw_scatter_finish(p->sg, &doc, &e) < 0;
        struct json_object *pv = NULL;
        gw_metrics_scatter(p->w->id, gw_metrics_domain_lookup(d->name), p->nqueried,
                           !failed && json_object_object_get_ex(doc, "partial", &pv) &&
                               json_object_get_boolean(pv));
    } else if (p->nfound > 0) {
        status = p->found_status;
        doc = json_object_get(p->found);
        version = p->found_version;
    } else if (p->have_ferr) {
        failed = 1;
        e = p->ferr;
    } else {
        failed = 1;
        md_error_set(&e, MD_E_NOT_FOUND, NULL, "no %s item with %s '%s' (on any of %d shards)",
                     d->name, d->key, p->key != NULL ? p->key : "?", p->nqueried);
    }
    e.domain = d->name;
    p->answered = 1;
    if (p->parent != NULL) { /* a batch item */
        struct json_object *entry = json_object_new_object();
        if (failed) {
            status = md_err_status(e.err);
            json_object_object_add(entry, "error", md_error_json(&e, p->parent->rid));
        } else if (doc != NULL && status != 204) {
            json_object_object_add(entry, "item", json_object_get(doc));
        }
        json_object_put(doc);
        parent_child_done(p, status, entry);
        return;
    }
    if (failed) {
        respond_error(p, &e, hdr);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (status != 204) {
        if (doc != NULL) {
            lb_json_write(b, doc);
        } else {
            evbuffer_add(b, "{}", 2);
        }
    }
    json_object_put(doc);
    if (response_too_large(p, b)) {
        evbuffer_free(b);
        return;
    }
    if (version >= 0) {
        size_t l = strlen(hdr);
        snprintf(hdr + l, sizeof(hdr) - l, "ETag: \"%" PRId64 "\"\r\n", version);
    }
    respond(p, status, b, hdr);
    evbuffer_free(b);
}

static enum ad_op op_by_name(const char *s, int *ok)
{
    static const struct {
        const char *name;
        enum ad_op op;
    } ops[] = {
        {"get", AD_GET},       {"put", AD_PUT},     {"insert", AD_INSERT},      {"patch", AD_PATCH},
        {"delete", AD_DELETE}, {"query", AD_QUERY}, {"aggregate", AD_AGGREGATE}};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        if (strcmp(ops[i].name, s) == 0) {
            *ok = 1;
            return ops[i].op;
        }
    }
    *ok = 0;
    return AD_GET;
}

static void batch_child(struct gw_req *p, int index, struct json_object *env)
{
    struct gw_req *c = req_new(p->w, REQ_ONE);
    c->parent = p;
    c->index = index;
    c->caller = p->caller;
    struct md_error e = {0};
    struct json_object *v;
    const char *opname = NULL, *dname = NULL, *id = NULL;
    size_t idlen = 0;
    if (!json_object_is_type(env, json_type_object)) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL, "batch item %d must be an object", index);
        goto fail;
    }
    json_object_object_foreach(env, k, val)
    {
        (void)val;
        if (strcmp(k, "op") != 0 && strcmp(k, "domain") != 0 && strcmp(k, "id") != 0 &&
            strcmp(k, "body") != 0 && strcmp(k, "if_match") != 0 && strcmp(k, "shard_key") != 0) {
            md_error_set(&e, MD_E_BAD_REQUEST, NULL,
                         "batch item %d: unknown member '%s' (op, domain, id, body, if_match, "
                         "shard_key)",
                         index, k);
            goto fail;
        }
    }
    if (json_object_object_get_ex(env, "op", &v) && json_object_is_type(v, json_type_string)) {
        opname = json_object_get_string(v);
    }
    if (json_object_object_get_ex(env, "domain", &v) && json_object_is_type(v, json_type_string)) {
        dname = json_object_get_string(v);
    }
    if (json_object_object_get_ex(env, "id", &v)) {
        if (!json_object_is_type(v, json_type_string)) {
            md_error_set(&e, MD_E_BAD_REQUEST, NULL, "batch item %d: 'id' must be a string", index);
            goto fail;
        }
        id = json_object_get_string(v);
        idlen = (size_t)json_object_get_string_len(v);
    }
    if (json_object_object_get_ex(env, "shard_key", &v)) {
        if (!json_object_is_type(v, json_type_string) && !json_object_is_type(v, json_type_int)) {
            md_error_set(&e, MD_E_BAD_REQUEST, NULL,
                         "batch item %d: 'shard_key' must be the shard key's value", index);
            goto fail;
        }
        /* by its length: a string may hold \u0000 (gw_route_text refuses it) */
        const char *sk = json_object_get_string(v);
        c->skeylen = json_object_is_type(v, json_type_string)
                         ? (size_t)json_object_get_string_len(v)
                         : strlen(sk);
        c->skey = malloc(c->skeylen + 1);
        memcpy(c->skey, sk, c->skeylen + 1);
    }
    if (json_object_object_get_ex(env, "if_match", &v)) {
        if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0) {
            md_error_set(&e, MD_E_BAD_REQUEST, NULL,
                         "batch item %d: 'if_match' must be a version number", index);
            goto fail;
        }
        c->ad.if_match = json_object_get_int64(v);
    }
    int ok;
    enum ad_op op = opname != NULL ? op_by_name(opname, &ok) : (ok = 0, AD_GET);
    if (!ok) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL,
                     "batch item %d: 'op' must be one of get, put, insert, patch, delete, query, "
                     "aggregate",
                     index);
        goto fail;
    }
    const struct cf_domain *d = dname != NULL ? cf_domain_find(c->cf, dname, strlen(dname)) : NULL;
    unsigned perm =
        op == AD_GET || op == AD_QUERY || op == AD_AGGREGATE ? CF_PERM_READ : CF_PERM_WRITE;
    if (dname != NULL && !gw_auth_allows(c->caller, dname, perm, d != NULL, &e)) {
        goto fail;
    }
    if (d == NULL) {
        md_error_set(&e, dname == NULL ? MD_E_BAD_REQUEST : MD_E_UNKNOWN_DOMAIN, NULL,
                     dname == NULL ? "batch item %d: 'domain' is required"
                                   : "batch item %d: unknown domain",
                     index);
        goto fail;
    }
    int needs_id = op == AD_GET || op == AD_PUT || op == AD_PATCH || op == AD_DELETE;
    if (needs_id && id == NULL) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL, "batch item %d: 'id' is required for %s", index,
                     opname);
        goto fail;
    }
    char hdr[96];
    if (!method_allowed(c, d, op, needs_id, &e, hdr, sizeof(hdr))) {
        goto fail;
    }
    struct json_object *body = NULL;
    if (json_object_object_get_ex(env, "body", &v)) {
        body = json_object_get(v);
    }
    if (env_prepare(c, op, d, needs_id ? id : NULL, idlen, body, &e) < 0) {
        goto fail;
    }
    req_start(c);
    return;
fail:
    deliver(c, NULL, &e);
    req_release(c);
}

/* A _batch pays its rate-limit tokens here (authenticate() took none): one
 * per operation, or one for a batch refused before it ran.  0, or -1 when
 * answered 429. */
static int batch_charge(struct gw_req *r, size_t cost)
{
    struct md_error e = {0};
    int64_t retry = 0;
    if (gw_auth_charge(r->caller, (double)cost, &e, &retry) == 0) {
        return 0;
    }
    char hdr[48];
    snprintf(hdr, sizeof(hdr), "Retry-After: %lld\r\n", (long long)retry);
    fail_now(r, &e, hdr);
    return -1;
}

static void handle_batch(struct gw_req *r, struct json_object *doc)
{
    struct md_error e = {0};
    size_t n = json_object_is_type(doc, json_type_array) ? json_object_array_length(doc) : 0;
    int valid = n > 0 && n <= (size_t)r->cf->limits.max_batch;
    if (batch_charge(r, valid ? n : 1) < 0) {
        json_object_put(doc);
        return;
    }
    if (!json_object_is_type(doc, json_type_array)) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL, "_batch expects a JSON array of envelopes");
        json_object_put(doc);
        fail_now(r, &e, NULL);
        return;
    }
    if (!valid) {
        md_error_set(&e, n == 0 ? MD_E_BAD_REQUEST : MD_E_TOO_LARGE, NULL,
                     "_batch takes 1 to %d envelopes, got %zu", r->cf->limits.max_batch, n);
        json_object_put(doc);
        fail_now(r, &e, NULL);
        return;
    }
    if (r->held != NULL && n > 1) { /* one operation in flight each, all or nothing */
        struct gw_inflight *more = NULL;
        gw_auth_inflight_release(r->held, r->nheld);
        r->held = NULL;
        r->nheld = 0;
        if (gw_auth_inflight_acquire(r->caller, r->cf->limits.max_inflight_per_key, (int)n, &more,
                                     &e) < 0) {
            json_object_put(doc);
            fail_now(r, &e, "Retry-After: 1\r\n");
            return;
        }
        r->held = more;
        r->nheld = (int)n;
    }
    r->kind = REQ_BATCH;
    r->mop = GW_MOP_BATCH;
    r->results = json_object_new_array_ext((int)n);
    r->nchild = (int)n + 1;
    r->body = doc;
    for (size_t i = 0; i < n; i++) {
        batch_child(r, (int)i, json_object_array_get_idx(doc, i));
    }
    parent_step(r);
}

/* ---- readiness ---------------------------------------------------------------- */

static void handle_ready(struct gw_req *r, int detailed)
{
    r->kind = REQ_READY;
    r->detailed = detailed;
    r->mop = GW_MOP_READY;
    r->results = json_object_new_array();
    int n = 0;
    for (size_t i = 0; i < r->cf->nbackends; i++) {
        n += (int)r->cf->backends[i].nshards;
    }
    r->nchild = n + 1;
    int k = 0;
    for (size_t i = 0; i < r->cf->nbackends; i++) {
        const struct cf_backend *be = &r->cf->backends[i];
        for (size_t s = 0; s < be->nshards; s++) {
            struct json_object *slot = json_object_new_object();
            json_object_object_add(slot, "backend", json_object_new_string(be->name));
            json_object_object_add(slot, "type", json_object_new_string(be->type));
            json_object_object_add(slot, "shard", json_object_new_string(be->shards[s].name));
            int mid = gw_shard_id(be->name, be->shards[s].name);
            json_object_object_add(
                slot, "circuit",
                json_object_new_string(gw_breaker_state_name(gw_breaker_state(mid))));
            json_object_object_add(slot, "_mid", json_object_new_int(mid)); /* ready_verdict */
            json_object_array_add(r->results, slot);
        }
    }
    for (size_t i = 0; i < r->cf->nbackends; i++) {
        const struct cf_backend *be = &r->cf->backends[i];
        for (size_t s = 0; s < be->nshards; s++) {
            struct gw_req *c = req_new(r->w, REQ_ONE);
            c->parent = r;
            c->index = k++;
            c->ad.op = AD_PING;
            c->ad.shard = (int)s;
            c->rt = gw_worker_backend(c->w, be);
            if (c->rt != NULL) {
                c->rt->refs++;
            }
            req_submit(c);
        }
    }
    if (r->ndone + 1 < r->nchild) { /* pings are out: answer by READY_WAIT_MS at the latest */
        event_assign(&r->timer, r->w->base, -1, 0, ready_timeout, r);
        struct timeval tv = {0, READY_WAIT_MS * 1000};
        event_add(&r->timer, &tv);
        r->timer_set = 1;
    }
    parent_step(r);
}

/* ---- routing ------------------------------------------------------------------ */

static void simple_json(struct gw_req *r, int status, const char *json)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, json, strlen(json));
    respond(r, status, b, NULL);
    evbuffer_free(b);
    r->answered = 1;
    req_release(r);
}

static int parse_body(struct gw_req *r, struct gw_http_req *hr, struct json_object **out,
                      struct md_error *e)
{
    size_t len = evbuffer_get_length(hr->body);
    const char *buf = (const char *)evbuffer_pullup(hr->body, -1);
    char msg[200];
    enum lb_json_status st = lb_json_parse(buf != NULL ? buf : "", len,
                                           r->cf->limits.max_json_depth, out, msg, sizeof(msg));
    if (st != LB_JSON_OK) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "%s", msg);
        return -1;
    }
    return 0;
}

/* The value of `name` in a query string, percent-decoded (and '+' as a
 * space) into a new string; NULL when absent. */
static char *query_param(const char *query, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (const char *p = query; p != NULL && *p != '\0';) {
        const char *amp = strchr(p, '&');
        size_t plen = amp != NULL ? (size_t)(amp - p) : strlen(p);
        if (plen > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            const char *v = p + nl + 1;
            size_t vlen = plen - nl - 1, o = 0;
            char *out = malloc(vlen + 1);
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] == '%' && i + 2 < vlen && isxdigit((unsigned char)v[i + 1]) &&
                    isxdigit((unsigned char)v[i + 2])) {
                    char hex[3] = {v[i + 1], v[i + 2], '\0'};
                    out[o++] = (char)strtol(hex, NULL, 16);
                    i += 2;
                } else {
                    out[o++] = v[i] == '+' ? ' ' : v[i];
                }
            }
            out[o] = '\0';
            *len = o;
            return out;
        }
        p = amp != NULL ? amp + 1 : NULL;
    }
    return NULL;
}

/* ?<shard_key>=… on a sharded domain's item routes. */
static int shard_key_param(struct gw_req *r, const struct gw_http_req *hr,
                           const struct cf_domain *d, struct md_error *e)
{
    if (hr->query == NULL) {
        return 0;
    }
    r->skey = query_param(hr->query, d->shard_key, &r->skeylen);
    if (r->skey != NULL && memchr(r->skey, '\0', r->skeylen) != NULL) {
        md_error_set(e, MD_E_BAD_REQUEST, d->shard_key, "'%s' contains a NUL byte", d->shard_key);
        return -1;
    }
    return 0;
}

static const char *idem_scope(const struct gw_req *r)
{
    return r->caller != NULL ? r->caller->name : "";
}

/* Idempotency-Key on a write (gw_idempotency.h): 0 to run the request (the
 * key is held in r->idem, or there is none), -1 when answered here. */
static int idem_begin(struct gw_req *r, struct gw_http_req *hr, const struct cf_domain *d)
{
    size_t klen = 0;
    const char *k = gw_http_header(hr, "idempotency-key", &klen);
    if (k == NULL) {
        return 0;
    }
    struct md_error e = {0};
    e.domain = d->name;
    if (gw_idem_key_valid(k, klen) < 0) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL,
                     "Idempotency-Key must be 1 to 255 visible ASCII characters");
        fail_now(r, &e, NULL);
        return -1;
    }
    uint64_t fp[2];
    size_t blen = evbuffer_get_length(hr->body);
    const char *b = blen > 0 ? (const char *)evbuffer_pullup(hr->body, -1) : "";
    gw_idem_fingerprint(hr->method_name, hr->path, hr->query, b, blen, fp);
    struct gw_idem_replay rp = {0};
    switch (gw_idem_begin(idem_scope(r), k, klen, fp, lb_now_ms(), &r->idem, &rp)) {
    case GW_IDEM_NEW:
        return 0;
    case GW_IDEM_REPLAY: {
        struct evbuffer *out = evbuffer_new();
        evbuffer_add(out, rp.body, rp.bodylen);
        char hdr[256];
        snprintf(hdr, sizeof(hdr), "%sIdempotent-Replayed: true\r\n", rp.headers);
        respond(r, rp.status, out, hdr);
        evbuffer_free(out);
        free(rp.body);
        r->answered = 1;
        req_release(r);
        return -1;
    }
    case GW_IDEM_MISMATCH:
        md_error_set(&e, MD_E_IDEM_REUSED, NULL,
                     "Idempotency-Key '%.*s' was already used with a different request "
                     "(method, path, query or body); use a new key for a new request",
                     (int)(klen > 64 ? 64 : klen), k);
        fail_now(r, &e, NULL);
        return -1;
    case GW_IDEM_BUSY:
        md_error_set(&e, MD_E_IDEM_BUSY, NULL,
                     "a request with Idempotency-Key '%.*s' is still in progress; retry shortly",
                     (int)(klen > 64 ? 64 : klen), k);
        fail_now(r, &e, "Retry-After: 1\r\n");
        return -1;
    default:
        md_error_set(&e, MD_E_UNAVAILABLE, NULL,
                     "the Idempotency-Key store is full of requests in progress "
                     "(idempotency.max_entries); retry shortly");
        fail_now(r, &e, "Retry-After: 1\r\n");
        return -1;
    }
}

/* A create without an id under an Idempotency-Key gets an id derived from
 * the key: a retry of a create that landed cannot create a second item. */
static void idem_derive_key(struct gw_req *r, struct gw_http_req *hr, const struct cf_domain *d,
                            struct json_object *body)
{
    struct json_object *kv = NULL;
    if (!json_object_is_type(body, json_type_object) ||
        (json_object_object_get_ex(body, d->key, &kv) && kv != NULL)) {
        return;
    }
    size_t klen = 0;
    const char *k = gw_http_header(hr, "idempotency-key", &klen);
    char id[33];
    gw_idem_derive_id(idem_scope(r), d->name, k, klen, id);
    json_object_object_add(body, d->key, json_object_new_string(id));
}

static void handle_data(struct gw_req *r, struct gw_http_req *hr)
{
    struct md_error e = {0};
    char hdr[128] = "";
    const char *rest = hr->path + 4; /* after "/v1/" */
    if (strcmp(rest, "_batch") == 0) {
        if (hr->method != GW_POST) {
            if (batch_charge(r, 1) == 0) {
                md_error_set(&e, MD_E_METHOD, NULL, "_batch takes POST");
                fail_now(r, &e, "Allow: POST\r\n");
            }
            return;
        }
        struct json_object *doc;
        if (parse_body(r, hr, &doc, &e) < 0) {
            if (batch_charge(r, 1) == 0) {
                fail_now(r, &e, NULL);
            }
            return;
        }
        handle_batch(r, doc);
        return;
    }
    const char *slash = strchr(rest, '/');
    size_t dlen = slash != NULL ? (size_t)(slash - rest) : strlen(rest);
    const struct cf_domain *d = cf_domain_find(r->cf, rest, dlen);
    if (r->caller != NULL) {
        /* before any check that depends on the domain (methods, routes):
         * a caller without a grant on it learns nothing about it */
        char dn[72]; /* an unknown name, only for the message (cut there anyway) */
        snprintf(dn, sizeof(dn), "%.*s", (int)(dlen > 64 ? 64 : dlen), rest);
        if (!gw_auth_sees(r->caller, d != NULL ? d->name : dn, d != NULL, &e)) {
            fail_now(r, &e, NULL);
            return;
        }
    }
    if (d == NULL) {
        md_error_set(&e, MD_E_UNKNOWN_DOMAIN, NULL, "unknown domain '%.*s'",
                     (int)(dlen > 64 ? 64 : dlen), rest);
        fail_now(r, &e, NULL);
        return;
    }
    e.domain = d->name;
    enum ad_op op;
    const char *key = NULL;
    size_t keylen = 0;
    int item = 0;
    if (slash == NULL) {
        if (hr->method != GW_POST) {
            md_error_set(&e, MD_E_METHOD, NULL,
                         "%s /v1/%s is not a route: use POST to insert, or /v1/%s/{%s}",
                         hr->method_name, d->name, d->name, d->key);
            fail_now(r, &e, "Allow: POST\r\n");
            return;
        }
        op = AD_INSERT;
    } else if (strcmp(slash + 1, "_query") == 0 || strcmp(slash + 1, "_aggregate") == 0) {
        op = slash[2] == 'q' ? AD_QUERY : AD_AGGREGATE;
        if (hr->method != GW_POST) {
            md_error_set(&e, MD_E_METHOD, NULL, "%s takes POST", slash + 1);
            fail_now(r, &e, "Allow: POST\r\n");
            return;
        }
    } else {
        item = 1;
        key = slash + 1;
        keylen = hr->path_len - (size_t)(key - hr->path);
        switch (hr->method) {
        case GW_GET:
        case GW_HEAD:
            op = AD_GET;
            break;
        case GW_PUT:
            op = AD_PUT;
            break;
        case GW_PATCH:
            op = AD_PATCH;
            break;
        case GW_DELETE:
            op = AD_DELETE;
            break;
        default: {
            char abuf[ALLOW_MAX];
            const char *allow = allow_for(ad_lookup(d->backend->type), d, 1, abuf);
            snprintf(hdr, sizeof(hdr), "Allow: %s\r\n", allow);
            md_error_set(&e, MD_E_METHOD, NULL, "%s is not supported on /v1/%s/{%s}; allowed: %s",
                         hr->method_name, d->name, d->key, allow);
            fail_now(r, &e, hdr);
            return;
        }
        }
    }
    unsigned perm =
        op == AD_GET || op == AD_QUERY || op == AD_AGGREGATE ? CF_PERM_READ : CF_PERM_WRITE;
    if (!gw_auth_allows(r->caller, d->name, perm, 1, &e)) {
        fail_now(r, &e, NULL);
        return;
    }
    if (!method_allowed(r, d, op, item, &e, hdr, sizeof(hdr))) {
        fail_now(r, &e, hdr[0] ? hdr : NULL);
        return;
    }
    size_t imlen;
    const char *im = gw_http_header(hr, "if-match", &imlen);
    if (im != NULL && parse_if_match(im, imlen, &r->ad.if_match) < 0) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL,
                     "If-Match must be a version number as returned in ETag (e.g. \"3\")");
        fail_now(r, &e, NULL);
        return;
    }
    if (op != AD_GET && op != AD_QUERY && op != AD_AGGREGATE && idem_begin(r, hr, d) < 0) {
        return; /* answered: replayed, or refused */
    }
    struct json_object *body = NULL;
    if (op == AD_PUT || op == AD_INSERT || op == AD_PATCH || op == AD_QUERY || op == AD_AGGREGATE) {
        if (parse_body(r, hr, &body, &e) < 0) {
            fail_now(r, &e, NULL);
            return;
        }
    }
    if (r->idem != NULL && op == AD_INSERT && d->key_generated) {
        idem_derive_key(r, hr, d, body);
    }
    if (d->shard_key != NULL && shard_key_param(r, hr, d, &e) < 0) {
        json_object_put(body);
        fail_now(r, &e, NULL);
        return;
    }
    if (env_prepare(r, op, d, key, keylen, body, &e) < 0) {
        fail_now(r, &e, NULL);
        return;
    }
    req_start(r);
}

static struct gw_req *begin(struct gw_worker *w, struct gw_http_req *hr)
{
    struct gw_req *r = req_new(w, REQ_ONE);
    if (r == NULL) {
        gw_http_respond(hr, 503, "application/json", NULL, NULL);
        return NULL;
    }
    r->http = hr;
    r->counted = 1;
    r->t0_us = gw_metrics_now_us();
    set_request_id(r, hr);
    int n = __atomic_add_fetch(&inflight_total, 1, __ATOMIC_RELAXED);
    if (n > r->cf->limits.max_inflight) {
        struct md_error e = {0};
        md_error_set(&e, MD_E_UNAVAILABLE, NULL,
                     "polygate is at its limit of %d requests in flight; retry shortly",
                     r->cf->limits.max_inflight);
        fail_now(r, &e, "Retry-After: 1\r\n");
        return NULL;
    }
    if (w->draining) {
        struct md_error e = {0};
        md_error_set(&e, MD_E_SHUTTING_DOWN, NULL, "polygate is shutting down");
        fail_now(r, &e, NULL);
        return NULL;
    }
    return r;
}

/* Authenticate (and rate-limit) the caller; answers and returns -1 when refused. */
static int authenticate(struct gw_req *r, struct gw_http_req *hr, unsigned need_perm)
{
    struct md_error e = {0};
    int64_t retry = 0;
    /* a _batch pays one token per operation once its size is known */
    double cost = need_perm == 0 && strcmp(hr->path, "/v1/_batch") == 0 ? 0 : 1;
    if (gw_auth_check(r->cf, hr, cost, &r->caller, &e, &retry) < 0) {
        char hdr[64];
        if (e.err == MD_E_RATE_LIMITED) {
            snprintf(hdr, sizeof(hdr), "Retry-After: %lld\r\n", (long long)retry);
        } else {
            snprintf(hdr, sizeof(hdr), "WWW-Authenticate: Bearer realm=\"polygate\"\r\n");
        }
        fail_now(r, &e, hdr);
        return -1;
    }
    if (need_perm != 0 && r->caller != NULL && !(cf_auth_perms(r->caller, "*") & need_perm)) {
        md_error_set(&e, MD_E_FORBIDDEN, NULL, "key '%s' is not an admin key", r->caller->name);
        fail_now(r, &e, NULL);
        return -1;
    }
    if (need_perm == 0 && gw_auth_inflight_acquire(r->caller, r->cf->limits.max_inflight_per_key, 1,
                                                   &r->held, &e) < 0) {
        fail_now(r, &e, "Retry-After: 1\r\n");
        return -1;
    }
    r->nheld = 1;
    return 0;
}

static void not_found(struct gw_req *r, struct gw_http_req *hr)
{
    struct md_error e = {0};
    md_error_set(&e, MD_E_NOT_FOUND, NULL, "no route for %s %.200s", hr->method_name, hr->path);
    fail_now(r, &e, NULL);
}

static gw_put_map_fn put_map;

void gw_request_set_put_map(gw_put_map_fn fn)
{
    put_map = fn;
}

void gw_request_handle(struct gw_http_req *hr, void *arg)
{
    struct gw_worker *w = arg;
    struct gw_req *r = begin(w, hr);
    if (r == NULL) {
        return;
    }
    if (strcmp(hr->path, "/health") != 0 && authenticate(r, hr, 0) < 0) {
        return;
    }
    if (strncmp(hr->path, "/v1/", 4) == 0) {
        handle_data(r, hr);
    } else if (strcmp(hr->path, "/health") == 0) {
        r->mop = GW_MOP_HEALTH;
        simple_json(r, 200, "{\"status\":\"ok\"}");
    } else if (strcmp(hr->path, "/ready") == 0) {
        handle_ready(r, 0);
    } else {
        not_found(r, hr);
    }
}

static void send_json(struct gw_req *r, int status, struct json_object *doc)
{
    struct evbuffer *b = evbuffer_new();
    lb_json_write(b, doc);
    json_object_put(doc);
    respond(r, status, b, NULL);
    evbuffer_free(b);
    r->answered = 1;
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
        fail_now(r, &e, NULL);
        return;
    }
    e.domain = d->name;
    if (d->shard_key == NULL) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL, "domain '%s' is not sharded (no shard_key)",
                     d->name);
        fail_now(r, &e, NULL);
        return;
    }
    size_t len = 0;
    char *v = hr->query != NULL ? query_param(hr->query, d->shard_key, &len) : NULL;
    if (v == NULL && hr->query != NULL) { /* ?key=… (polygatectl route) */
        v = query_param(hr->query, "key", &len);
    }
    struct gw_route rt;
    if (v == NULL) {
        md_error_set(&e, MD_E_BAD_REQUEST, d->shard_key, "pass the key as ?%s=…", d->shard_key);
        fail_now(r, &e, NULL);
        return;
    }
    if (gw_route_text(d, v, len, &rt, &e) < 0) {
        free(v);
        fail_now(r, &e, NULL);
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

/* ---- /admin/shardmap (the checks live in gw_shardmap.c) ----------------------- */

static void admin_map_done(const struct md_error *e, int rebalancing, void *arg)
{
    struct gw_req *r = arg;
    r->pending = 0;
    if (!r->abandoned && !r->answered) {
        if (e != NULL) {
            respond_error(r, e, NULL);
        } else if (rebalancing) { /* 202: the slots move now (GET /admin/rebalance) */
            struct json_object *doc = json_object_new_object();
            json_object_object_add(doc, "applied", json_object_new_boolean(0));
            json_object_object_add(doc, "rebalance", gw_rebalance_status());
            send_json(r, 202, doc);
            return;
        } else {
            /* the workers apply the map on their loops right after this */
            simple_json(r, 200, "{\"applied\":true}");
            return;
        }
        r->answered = 1;
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
        send_json(r, 200, gw_rebalance_status());
        return;
    }
    struct json_object *body = NULL;
    if (hr->method == GW_PUT && *action == '\0') {
        if (parse_body(r, hr, &body, &e) < 0) {
            fail_now(r, &e, NULL);
            return;
        }
        action = "/throttle";
    } else if (hr->method != GW_POST || *action != '/') {
        md_error_set(&e, MD_E_METHOD, NULL,
                     "use GET or PUT /admin/rebalance, POST /admin/rebalance/{pause,resume,abort}");
        fail_now(r, &e, NULL);
        return;
    }
    int rc = gw_rebalance_control(action + 1, body, &e);
    json_object_put(body);
    if (rc < 0) {
        fail_now(r, &e, NULL);
        return;
    }
    send_json(r, 200, gw_rebalance_status());
}

/* GET /admin/shardmap: every sharded backend's active map.
 * PUT /admin/shardmap[/{backend}] with a map document (JSON): checked and
 * applied by the main thread (gw_server_put_map). */
static void admin_shardmap(struct gw_req *r, struct gw_http_req *hr)
{
    struct md_error e = {0};
    if (hr->method == GW_GET) {
        send_json(r, 200, gw_shardmap_json(r->cf, gw_rebalance_status_of));
        return;
    }
    if (hr->method != GW_PUT) {
        md_error_set(&e, MD_E_METHOD, NULL, "/admin/shardmap takes GET or PUT");
        fail_now(r, &e, "Allow: GET, PUT\r\n");
        return;
    }
    const char *name = hr->path + strlen("/admin/shardmap");
    name += *name == '/';
    const char *backend = gw_shardmap_backend(r->cf, name, strlen(name), &e);
    struct json_object *doc = NULL;
    if (backend == NULL || parse_body(r, hr, &doc, &e) < 0) {
        fail_now(r, &e, NULL);
        return;
    }
    if (!json_object_is_type(doc, json_type_object)) {
        json_object_put(doc);
        md_error_set(&e, MD_E_BAD_REQUEST, NULL, "the body must be a shard map object");
        fail_now(r, &e, NULL);
        return;
    }
    int rc = put_map != NULL ? put_map(backend, doc, r->w->base, admin_map_done, r) : -1;
    json_object_put(doc);
    if (rc < 0) {
        md_error_set(&e, MD_E_CONFLICT, NULL, "another shard map change is in progress; retry");
        fail_now(r, &e, "Retry-After: 1\r\n");
        return;
    }
    r->pending = 1; /* admin_map_done() answers */
}

/* ---- end of /admin/shardmap ------------------------------------------------------ */

void gw_admin_handle(struct gw_http_req *hr, void *arg)
{
    struct gw_worker *w = arg;
    struct gw_req *r = begin(w, hr);
    if (r == NULL) {
        return;
    }
    if (strcmp(hr->path, "/health") != 0 && authenticate(r, hr, CF_PERM_ADMIN) < 0) {
        return;
    }
    r->mop = GW_MOP_ADMIN;
    if (strcmp(hr->path, "/health") == 0) {
        r->mop = GW_MOP_HEALTH;
        simple_json(r, 200, "{\"status\":\"ok\"}");
    } else if (strcmp(hr->path, "/ready") == 0) {
        handle_ready(r, 1);
    } else if (strcmp(hr->path, "/metrics") == 0 && hr->method == GW_GET) {
        r->mop = GW_MOP_METRICS;
        struct evbuffer *b = evbuffer_new();
        gw_metrics_render(b, r->cf, __atomic_load_n(&inflight_total, __ATOMIC_RELAXED));
        respond_ct(r, 200, "text/plain; version=0.0.4; charset=utf-8", b, NULL);
        evbuffer_free(b);
        r->answered = 1;
        req_release(r);
    } else if (strncmp(hr->path, "/admin/route/", 13) == 0 && hr->method == GW_GET) {
        admin_route(r, hr);
    } else if (strcmp(hr->path, "/admin/shardmap") == 0 ||
               strncmp(hr->path, "/admin/shardmap/", 16) == 0) {
        admin_shardmap(r, hr);
    } else if (strcmp(hr->path, "/admin/rebalance") == 0 ||
               strncmp(hr->path, "/admin/rebalance/", 17) == 0) {
        admin_rebalance(r, hr);
    } else if (strcmp(hr->path, "/admin/config") == 0 && hr->method == GW_GET) {
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
        struct evbuffer *b = evbuffer_new();
        lb_json_write(b, doc);
        json_object_put(doc);
        respond(r, 200, b, NULL);
        evbuffer_free(b);
        r->answered = 1;
        req_release(r);
    } else {
        not_found(r, hr);
    }
}

void gw_requests_abandon(struct gw_worker *w)
{
    /* Mark every request and take its backend reference away, so that the
     * worker's own unref in finish() is the last one and shuts the adapter
     * down: its pending completions then free the abandoned requests.  The
     * references are dropped after the walk, since dropping one may complete
     * (and free) requests. */
    size_t n = 0, cap = w->ninflight;
    struct gw_backend_rt **rts = cap ? calloc(cap, sizeof(*rts)) : NULL;
    struct gw_req *r;
    TAILQ_FOREACH(r, &w->inflight, link)
    {
        r->abandoned = 1;
        if (r->rt != NULL && rts != NULL && n < cap) {
            rts[n++] = r->rt;
            r->rt = NULL;
        }
    }
    for (size_t i = 0; i < n; i++) {
        gw_backend_rt_unref(rts[i]);
    }
    free(rts);
}

void gw_requests_check_drained(struct gw_worker *w)
{
    /* requests are in creation order: the head is the oldest */
    struct gw_req *head = TAILQ_FIRST(&w->inflight);
    if (w->join_pending && (head == NULL || head->ad.id >= w->join_id)) {
        w->join_pending = 0;
        rt_live_worker_drained(w->join_live);
    }
}

void gw_requests_free_all(struct gw_worker *w)
{
    while (!TAILQ_EMPTY(&w->inflight)) {
        struct gw_req *r = TAILQ_FIRST(&w->inflight);
        if (r->http != NULL) {
            gw_http_respond(r->http, 503, "application/json", NULL, NULL);
            r->http = NULL;
        }
        req_free(r);
    }
}

const struct gw_worker_hooks gw_request_hooks = {
    .handle = gw_request_handle,
    .admin = gw_admin_handle,
    .abandon = gw_requests_abandon,
    .free_all = gw_requests_free_all,
    .check_drained = gw_requests_check_drained,
};
