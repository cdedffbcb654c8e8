/*
 * gw_req_private.h — what the pieces of the request path share; not a public
 * header (gw_request.h is): only gateway/gw_request.c, gateway/gw_req_*.c
 * and gateway/gw_admin.c include it.
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

/* gw_req_life.c: lifecycle and answers */
extern int inflight_total;
struct gw_req *req_new(struct gw_worker *w, enum req_kind kind);
void req_free(struct gw_req *r);
void respond_ct(struct gw_req *r, int status, const char *ctype, struct evbuffer *body,
                const char *more_headers);
void respond(struct gw_req *r, int status, struct evbuffer *body, const char *more_headers);
void respond_error(struct gw_req *r, const struct md_error *e, const char *more_headers);
void fail_now(struct gw_req *r, const struct md_error *e, const char *more_headers);
void simple_json(struct gw_req *r, int status, const char *json);
int ok_status(const struct gw_req *r, const struct ad_res *res);
void res_error(const struct gw_req *r, const struct ad_res *res, const char *field,
               struct md_error *e);
int response_too_large(struct gw_req *r, struct evbuffer *b);
void deliver(struct gw_req *r, const struct ad_res *res, const struct md_error *ge);
const char *top_rid(const struct gw_req *r);
void req_release(struct gw_req *r);
void req_submit(struct gw_req *r);

/* gw_req_rest.c: REST routes and envelopes */
int env_prepare(struct gw_req *r, enum ad_op op, const struct cf_domain *d, const char *key,
                size_t keylen, struct json_object *body, struct md_error *e);
int method_allowed(struct gw_req *r, const struct cf_domain *d, enum ad_op op, int item,
                   struct md_error *e, char *hdr, size_t hdrlen);
int parse_body(struct gw_req *r, struct gw_http_req *hr, struct json_object **out,
               struct md_error *e);
char *query_param(const char *query, const char *name, size_t *len);
void handle_data(struct gw_req *r, struct gw_http_req *hr);

/* gw_req_fanout.c: parents, scatter, guard, the rebalance gate */
void parent_finish(struct gw_req *p);
void parent_step(struct gw_req *p);
void parent_child_done(struct gw_req *child, int status, struct json_object *entry);
void scatter_start(struct gw_req *p);
void scatter_child_done(struct gw_req *c, const struct ad_res *res, const struct md_error *ge);
void guard_start(struct gw_req *r);
void guard_child_done(struct gw_req *c, const struct ad_res *res, const struct md_error *ge);
void req_start(struct gw_req *r);

/* gw_req_batch.c: _batch */
void batch_entry(struct gw_req *p, struct gw_req *child, int status, struct json_object *entry);
int batch_charge(struct gw_req *r, size_t cost);
void handle_batch(struct gw_req *r, struct json_object *doc);

/* gw_req_ready.c: /ready */
void ready_verdict(struct gw_req *p);
int ready_unknown_pending(struct gw_req *p);
void handle_ready(struct gw_req *r, int detailed);

/* gw_request.c: entry: limits, draining, authentication */
struct gw_req *begin(struct gw_worker *w, struct gw_http_req *hr);
int authenticate(struct gw_req *r, struct gw_http_req *hr, unsigned need_perm);
void not_found(struct gw_req *r, struct gw_http_req *hr);

#endif
