/*
 * ad.h — the adapter interface: how the gateway talks to a store.
 *
 * An adapter serves domain-level operations (get/put/insert/patch/delete,
 * query, aggregate, ping) for one backend cluster on one worker's event loop.
 * Each worker calls init() once per backend it uses and owns the state.  The
 * worker resolves the adapter of each backend once, when it applies a config
 * (gw_worker_adapter, gateway/gw_worker.h); nothing looks an adapter up by
 * name on the request path.
 *
 * Contract (every adapter honours it; tests/unit/test_adapter_contract.c
 * drives the gateway's request code with a fake adapter and checks the
 * gateway's side of each point: a callback exactly once and on the loop
 * thread, a refusal that never calls back, a canceled request that still
 * completes, a deadline answered once with the late completion ignored, and
 * a scatter with a failing shard answered `partial`):
 *
 *  - submit() either refuses the request synchronously (returns a negative
 *    AD_E* code and never calls the callback), or accepts it (returns 0) and
 *    then calls the callback EXACTLY ONCE, later, ON THE LOOP THREAD of the
 *    event_base given to init().  It never completes from inside submit():
 *    a request that fails immediately is deferred with event_active().
 *  - On connection loss, every pending request on that connection completes
 *    with an error (AD_UNAVAILABLE), naming the shard.
 *  - cancel() is a hint: the adapter may drop the request from its queue; it
 *    still completes it (with AD_CANCELED).  An adapter that cannot take a
 *    request back has no cancel hook.  The gateway handles deadlines
 *    itself and ignores completions of requests it already answered.
 *  - The result passed to the callback is borrowed: it is valid only for the
 *    duration of the callback.  Whoever wants to keep a json_t increfs it.
 *  - The request (struct ad_req and everything it points to: query, scope,
 *    body) is owned by the caller and must stay valid until the completion
 *    callback ran.
 *  - AD_QUERY / AD_AGGREGATE answer rows (ad_res.rows, ad_res.last), never a
 *    page: the gateway builds {items, cursor, shards_queried, partial} once
 *    (gateway/gw_page.h), for one shard and for a scatter alike.
 *  - shutdown() completes every pending request with AD_UNAVAILABLE and frees
 *    the state; no callback fires after it returns.
 */
#ifndef AD_H
#define AD_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <json-c/json.h>

struct cf_backend;
struct cf_domain;
struct md_query;

/* Synchronous refusal codes from submit(). */
#define AD_OK 0
#define AD_EINVAL (-1) /* the adapter cannot serve this op on this domain */
#define AD_EFULL (-2)  /* wait queue full */
#define AD_EDOWN (-3)  /* backend known down (circuit open, no connection) */

enum ad_op {
    AD_GET,       /* read one item by key */
    AD_PUT,       /* upsert the whole item */
    AD_INSERT,    /* create; conflict if the key exists */
    AD_PATCH,     /* partial update: {"set":{}, "inc":{}, "unset":[]} */
    AD_DELETE,    /* delete by key */
    AD_QUERY,     /* {"where", "order_by", "limit", "cursor", "fields"} */
    AD_AGGREGATE, /* {"where", "group_by", "aggregates"} */
    AD_PING,      /* readiness probe of one shard */
};

/* Capabilities (ad_ops.caps): what an adapter can do beyond the plain ops,
 * the same on every domain it serves.  The gateway refuses a request that
 * needs a capability the backend's adapter lacks with 400
 * unsupported_operation, so nothing is silently ignored. */
#define AD_CAP_PATCH_GUARDED (1u << 0) /* a PATCH with a `where` guard, applied atomically */
#define AD_CAP_GROUP_BY_PATH (1u << 1) /* _aggregate group_by a dotted path ("category.id") */

const char *ad_op_name(enum ad_op op);

/* Outcome of a completed request; maps 1:1 onto the gateway's error codes. */
enum ad_status {
    AD_DONE = 0,     /* success; see ad_res.created / item / raw / rows */
    AD_NOT_FOUND,    /* 404 */
    AD_CONFLICT,     /* 409: key exists, unique violation, guard failed */
    AD_PRECONDITION, /* 412: If-Match mismatch */
    AD_BAD_REQUEST,  /* 400: the store rejected the request as invalid */
    AD_UNAVAILABLE,  /* 503: backend down / connection lost / queue full */
    AD_SLOT_MOVED,   /* 503 slot_moved: the shard does not own the write's slot (it moved or
                        is moving to another shard, docs/rebalancing.md); nothing was written */
    AD_TIMEOUT,      /* 504 */
    AD_CANCELED,     /* cancel() was called */
    AD_INTERNAL,     /* 500: the backend said something we did not expect */
};

/* A query on a sharded SQL domain being rebalanced: slots this shard holds
 * rows of but does not own (routing/rt_live.h); the store leaves them out
 * (`_slot NOT IN (…)`). */
struct ad_scope {
    const int32_t *excl_slots;
    int nexcl;
};

struct ad_req {
    uint64_t id; /* unique per worker; used by cancel() */
    enum ad_op op;
    const struct cf_domain *domain;
    const char *key; /* item key (id), NUL-terminated; NULL for query */
    size_t keylen;
    int shard;    /* index into the backend's shards */
    int32_t slot; /* shard-key slot for sharded domains (stored in the row's
                     _slot column by SQL stores), -1 otherwise */
    /* AD_QUERY / AD_AGGREGATE: the query the gateway parsed and validated
     * (limits, cursor); NULL for every other op. */
    const struct md_query *query;
    /* NULL except while the domain's slots move (rebalancing). */
    const struct ad_scope *scope;
    struct json_object *body; /* validated item (PUT/INSERT), patch doc, query doc */
    int64_t if_match;         /* expected version, or -1 for none */
    uint64_t deadline_ms;     /* absolute, monotonic clock (lb_now_ms) */
};

struct ad_res {
    enum ad_status status;
    int created;              /* PUT that created the item: 201 instead of 200 */
    struct json_object *item; /* borrowed: the item of an item op */
    const char *raw;          /* alternative to item: a JSON text to send as is */
    size_t rawlen;
    /* AD_QUERY / AD_AGGREGATE, borrowed: the rows of the page (a JSON array
     * of items), and the sort values of the last row (an array of
     * query->norder values, JSON null allowed) when a further page exists,
     * else NULL.  The gateway builds the page and its cursor. */
    struct json_object *rows;
    struct json_object *last;
    int64_t version;   /* version of the item after a write, -1 if none */
    const char *field; /* field named by a 400/409, or NULL */
    const char *shard; /* shard / backend name the error concerns */
    char message[256]; /* human readable, for errors */
};

typedef void (*ad_done_cb)(const struct ad_res *res, void *arg);

/* A shard's connection pool on one worker (ad_ops.stats). */
struct ad_pool_stats {
    int conns;  /* connection slots (pool.max; Redis: its pipelined connections) */
    int up;     /* connected */
    int busy;   /* running a request (Redis: requests pipelined on the wire) */
    int queued; /* requests waiting for a connection */
};

struct ad_ops {
    const char *name; /* "redis", "pg", "mysql", "mongo" */
    int abi;          /* AD_ABI */
    unsigned caps;    /* AD_CAP_* */

    /* Create the state for one backend on one loop.  Connecting happens in
     * the background; init fails only on a configuration the adapter cannot
     * use (err gets the reason). */
    int (*init)(struct event_base *base, const struct cf_backend *be, void **state, char *err,
                size_t errlen);
    /* Check at config-load time that this adapter can serve the domain
     * (key kinds, field types, …). 0 or -1 with err filled. */
    int (*check_domain)(const struct cf_backend *be, const struct cf_domain *d, char *err,
                        size_t errlen);
    /* Can this adapter serve `op` on domain d at all?  (The gateway answers
     * 405 / 400 unsupported_operation when not.) */
    int (*supports)(const struct cf_domain *d, enum ad_op op);
    int (*submit)(void *state, const struct ad_req *req, ad_done_cb cb, void *arg);
    /* Optional (NULL: a request once sent cannot be taken back; it completes
     * in its own time and the gateway ignores the late answer). */
    void (*cancel)(void *state, uint64_t req_id);
    void (*shutdown)(void *state);
    /* Optional (NULL: not reported): the pool of one shard right now, for
     * /metrics.  Called on the loop thread, about once a second. */
    void (*stats)(void *state, int shard, struct ad_pool_stats *out);
    /* Optional (NULL: not checked): can a NEW shard DSN be reached?  A
     * blocking connect + disconnect within timeout_ms, run off the request
     * path (the main thread, when a shard map is validated).  0, or -1 with
     * err naming what failed. */
    int (*probe)(const char *dsn, int64_t timeout_ms, char *err, size_t errlen);
};

#define AD_ABI 2

/* The one way to call an optional hook (cancel, stats, probe): the hook's
 * result, or `none` when the adapter has no such hook, e.g.
 *   AD_OPTIONAL(ops, cancel, (void)0, state, id);
 *   if (AD_OPTIONAL(ops, probe, 0, dsn, tmo, err, len) < 0) { … }
 */
#define AD_OPTIONAL(ops, hook, none, ...) ((ops)->hook != NULL ? (ops)->hook(__VA_ARGS__) : (none))

/* Does the adapter have every capability in cap (AD_CAP_* bits)? */
static inline int ad_has_cap(const struct ad_ops *ops, unsigned cap)
{
    return (ops->caps & cap) == cap;
}

/* Registry: adapters register once at start-up, by name (the built-in ones
 * in ad_register_builtin).  ad_lookup is for set-up — a worker applying a
 * config, a shard map being validated — never per request. */
int ad_register(const struct ad_ops *ops);
const struct ad_ops *ad_lookup(const char *name);
void ad_register_builtin(void);

/* Helpers shared by adapters. */
void ad_res_init(struct ad_res *res);
void ad_res_error(struct ad_res *res, enum ad_status st, const char *shard, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
