/*
 * gw_req_private.h — what the pieces of the request path share; not a public
 * header (gw_request.h is): only gateway/gw_request.c, gateway/gw_req_*.c
 * and gateway/gw_admin.c include it (and tests/unit/test_gw_req_state.c).
 *
 * The request path, by file: gw_request.c (where a request enters),
 * gw_req_life.c (a request's life: submit, deadline, answer, free),
 * gw_req_rest.c (REST routes onto envelopes), gw_req_fanout.c (parents and
 * children: scatter, guard, the rebalance gate), gw_req_batch.c (_batch),
 * gw_req_ready.c (/ready), gw_admin.c (the admin listener).
 */
#ifndef GW_REQ_PRIVATE_H
#define GW_REQ_PRIVATE_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event_struct.h>

#include "adapters/ad.h"
#include "gateway/gw_worker.h"
#include "model/md_error.h"
#include "routing/rt_live.h"

struct cf_config;
struct cf_domain;
struct cf_key;
struct evbuffer;
struct gw_http_req;
struct gw_idem;
struct gw_inflight;
struct gw_scatter;
struct json_object;

/* REQ_SCATTER: a request on a sharded domain fanned out to several shards
 * (one child per shard, gw_scatter.c merges); see req_scatter_start().
 * REQ_GUARD: the uniqueness check run before a write that names its own key
 * on a sharded domain (one GET child per other shard); see req_guard_start(). */
enum req_kind { REQ_ONE, REQ_BATCH, REQ_READY, REQ_SCATTER, REQ_GUARD };

/* The life of a request: whether its client has an answer, and whether a
 * completion is still owed to it (the adapter's for a submitted request,
 * its guard's for a write checked on every shard first, the main thread's
 * for PUT /admin/shardmap, the fleet's shared store's for a rate-limit
 * charge or an Idempotency-Key claim, gw_shared.h).  The two are independent — a deadline answers
 * 504 while the adapter still owes its completion — so each pair is a
 * state.  Every change goes through req_set_state(), which asserts that
 * the change is one of these:
 *
 *   OPEN ──submit──▶ SUBMITTED ──completion──▶ OPEN ──answer──▶ ANSWERED
 *   OPEN ──answer (refused, failed before the adapter, a parent done)──▶ ANSWERED
 *   SUBMITTED ──deadline: 504──▶ LATE ──completion (dropped)──▶ ANSWERED
 *   OPEN ──shutdown──▶ ABANDONED;  SUBMITTED ──shutdown──▶ ABANDONED_SUBMITTED
 *   ABANDONED_SUBMITTED ──completion──▶ ABANDONED
 *   ABANDONED_SUBMITTED ──deadline: 504──▶ LATE (the client still gets it)
 *   ABANDONED ──answer──▶ ANSWERED (a guard parent hands its write back)
 *
 * A request is freed (req_release) in ANSWERED or ABANDONED once its
 * children, if any, are done; an abandoned one that still has its client
 * is answered 503 then.  A parent (_batch, /ready, scatter, guard) is never
 * SUBMITTED itself: it counts its children (nchild, ndone). */
enum req_state {
    REQ_OPEN,                /* no answer yet, nothing owed: checked, routed, held, started */
    REQ_SUBMITTED,           /* no answer yet; a completion is owed */
    REQ_LATE,                /* answered at the deadline; the completion is still owed */
    REQ_ANSWERED,            /* answered; nothing owed */
    REQ_ABANDONED_SUBMITTED, /* shutting down; a completion is still owed */
    REQ_ABANDONED,           /* shutting down; nothing owed: no answer will come */
};

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
    /* _query / _aggregate: parsed once, given to the adapter as ad.query
     * (a scatter's plan takes it over, gw_scatter.h) */
    struct md_query *query;
    struct event timer;
    enum req_state state; /* req_set_state() */
    /* Two flags stay beside the state, as they say something it does not:
     * timer_set: r->timer is armed — the deadline of a submitted request, or
     * a /ready parent's READY_WAIT_MS; it is disarmed on the answer, on its
     * own firing and on the free, none of which is one state change.
     * counted: a top-level request counts in req_inflight_total from req_begin()
     * until its answer is written; children and parents made by the gateway
     * never count, whatever their state. */
    int timer_set;
    int counted; /* counts in req_inflight_total */
    char rid[132];
    /* parents: batch results / readiness */
    struct json_object *results;
    int nchild, ndone, nfail;
    /* sharded domains */
    char *skey; /* the shard key value from ?<shard_key>= / the envelope */
    size_t skeylen;
    int fanout;                /* not routable to one shard: req_scatter_start() */
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
    uint64_t ping_ms;         /* /ready: when its pings went out */
    size_t resp_bytes;        /* batch: bytes of the answers collected so far */
    /* a backend being rebalanced (routing/rt_live.h, live_gate()) */
    struct rt_live *live;
    struct rt_live_ticket ticket;
    struct rt_live_excl excl[RT_LIVE_MAX_EXCL]; /* the exclusions of the ticket */
    size_t nexcl;
    int32_t excl_slots[RT_LIVE_MAX_EXCL]; /* a scatter child: its shard's */
    struct ad_scope scope;                /* … given to the adapter as ad.scope */
    struct event *hold_ev;                /* a write waiting for a frozen slot */
    uint64_t hold_deadline_ms;
    int64_t timeout_ms; /* the store's deadline, for the 504 message */
    /* waiting for the fleet's shared store (gw_shared.h: a rate-limit charge,
     * an Idempotency-Key claim): SUBMITTED meanwhile, its answer owed; then
     * `next` goes on where the request stopped (the route's op, domain and
     * item key, kept for it) */
    void (*next)(struct gw_req *r);
    int next_op;
    const struct cf_domain *next_domain;
    const char *next_key; /* in http->path */
    size_t next_keylen;
};

/* gw_req_life.c: lifecycle and answers */
void req_set_state(struct gw_req *r, enum req_state to);
const char *req_state_name(enum req_state s);
/* The change for an event, from wherever the request is (req_set_state
 * asserts it is legal there). */
void req_mark_answered(struct gw_req *r);
void req_mark_completed(struct gw_req *r);
void req_mark_abandoned(struct gw_req *r);
static inline int req_is_open(const struct gw_req *r)
{
    return r->state == REQ_OPEN;
}
static inline int req_is_answered(const struct gw_req *r)
{
    return r->state == REQ_ANSWERED || r->state == REQ_LATE;
}
static inline int req_is_abandoned(const struct gw_req *r)
{
    return r->state == REQ_ABANDONED || r->state == REQ_ABANDONED_SUBMITTED;
}
static inline int req_is_owed(const struct gw_req *r)
{
    return r->state == REQ_SUBMITTED || r->state == REQ_LATE || r->state == REQ_ABANDONED_SUBMITTED;
}
extern int req_inflight_total;
struct gw_req *req_new(struct gw_worker *w, enum req_kind kind);
void req_free(struct gw_req *r);
void req_respond_ct(struct gw_req *r, int status, const char *ctype, struct evbuffer *body,
                    const char *more_headers);
void req_respond(struct gw_req *r, int status, struct evbuffer *body, const char *more_headers);
void req_respond_error(struct gw_req *r, const struct md_error *e, const char *more_headers);
void req_fail_now(struct gw_req *r, const struct md_error *e, const char *more_headers);
void req_simple_json(struct gw_req *r, int status, const char *json);
int req_ok_status(const struct gw_req *r, const struct ad_res *res);
void req_res_error(const struct gw_req *r, const struct ad_res *res, const char *field,
                   struct md_error *e);
int req_response_too_large(struct gw_req *r, struct evbuffer *b);
void req_deliver(struct gw_req *r, const struct ad_res *res, const struct md_error *ge);
const char *req_top_rid(const struct gw_req *r);
void req_release(struct gw_req *r);
void req_submit(struct gw_req *r);

/* gw_req_rest.c: REST routes and envelopes */
int req_env_prepare(struct gw_req *r, enum ad_op op, const struct cf_domain *d, const char *key,
                    size_t keylen, struct json_object *body, struct md_error *e);
int req_method_allowed(struct gw_req *r, const struct cf_domain *d, enum ad_op op, int item,
                       struct md_error *e, char *hdr, size_t hdrlen);
int req_parse_body(struct gw_req *r, struct gw_http_req *hr, struct json_object **out,
                   struct md_error *e);
char *req_query_param(const char *query, const char *name, size_t *len);
void req_handle_data(struct gw_req *r, struct gw_http_req *hr);

/* gw_req_fanout.c: parents, scatter, guard, the rebalance gate */
void req_parent_finish(struct gw_req *p);
void req_parent_step(struct gw_req *p);
void req_parent_child_done(struct gw_req *child, int status, struct json_object *entry);
void req_scatter_start(struct gw_req *p);
void req_scatter_child_done(struct gw_req *c, const struct ad_res *res, const struct md_error *ge);
void req_guard_start(struct gw_req *r);
void req_guard_child_done(struct gw_req *c, const struct ad_res *res, const struct md_error *ge);
void req_start(struct gw_req *r);

/* gw_req_batch.c: _batch */
void req_batch_entry(struct gw_req *p, struct gw_req *child, int status, struct json_object *entry);
void req_handle_batch(struct gw_req *r, struct json_object *doc);

/* gw_req_ready.c: /ready */
void req_ready_verdict(struct gw_req *p);
int req_ready_unknown_pending(struct gw_req *p);
void req_handle_ready(struct gw_req *r, int detailed);

/* gw_request.c: entry: limits, draining, authentication */
struct gw_req *req_begin(struct gw_worker *w, struct gw_http_req *hr);
int req_authenticate(struct gw_req *r, struct gw_http_req *hr, unsigned need_perm);
/* Take `cost` rate-limit tokens of the caller (in the fleet's bucket when
 * the worker has a shared store), then next(r): at once, or once the
 * shared store answered.  A refusal is answered 429 and next never runs. */
void req_charge(struct gw_req *r, double cost, void (*next)(struct gw_req *r));
void req_not_found(struct gw_req *r, struct gw_http_req *hr);

#endif
