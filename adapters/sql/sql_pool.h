/*
 * sql_pool.h — the connection pool, wait queue and auto_migrate gate that
 * the SQL adapters (PostgreSQL, MySQL) share.  A driver (ad_pg.c,
 * ad_mysql.c) knows its client library: how to connect, send a statement
 * and read its results.  The pool knows everything else, once:
 *
 *  - Per shard: pool.min connections opened at start, more on demand up to
 *    pool.max; one request in flight per connection.  Requests wait in a
 *    FIFO bounded by pool.queue_max (beyond → AD_EFULL, 503).
 *  - A lost connection fails its in-flight request with AD_UNAVAILABLE
 *    naming the shard; when no connection of a shard is left the waiting
 *    requests fail too and submit refuses (AD_EDOWN) until a reconnect —
 *    exponential backoff with jitter in [b/2, b], so workers do not
 *    reconnect in step — succeeds.
 *  - auto_migrate: the first request for a domain registers its idempotent
 *    DDL (sql_build_migrate) for EVERY shard of the backend (the table must
 *    exist wherever the router may send a row); each shard runs it ahead of
 *    everything queued as soon as it is up, and requests for that domain
 *    wait for it.  A failed migration fails the requests waiting for it and
 *    is retried by the next request that needs it (not in a loop); a
 *    migration lost with its connection is retried when the shard is back.
 *  - cancel(): a request still waiting completes with AD_CANCELED; one
 *    already sent runs to its end (the gateway has answered 504 and
 *    ignores the completion).
 *  - Completions never run inside submit() or cancel(): they are deferred
 *    to the loop (the `kick` event), as the adapter contract requires.
 *
 * Drivers embed struct sql_conn / struct sql_call as the FIRST member of
 * their own connection / call structs (conn_size / call_size say how big)
 * and cast back.
 */
#ifndef SQL_POOL_H
#define SQL_POOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "adapters/ad.h"
#include "adapters/sql/sql_build.h"

struct cf_backend;
struct cf_domain;
struct cf_shard;
struct sql_pool;
struct sql_shard;

enum sql_conn_state { SQL_C_DOWN, SQL_C_CONNECTING, SQL_C_IDLE, SQL_C_BUSY };
enum sql_mig_state { SQL_MIG_NONE, SQL_MIG_RUNNING, SQL_MIG_DONE, SQL_MIG_FAILED };

struct sql_call {
    TAILQ_ENTRY(sql_call) link;
    struct sql_shard *sh;
    const struct ad_req *req; /* NULL: a migration */
    ad_done_cb cb;            /* NULL: an internal call (migration) */
    void *arg;
    struct sql_stmt st;
    int mig; /* index into pool->migs, or -1 */
    int is_migration;
    struct ad_res res; /* a deferred completion */
};
TAILQ_HEAD(sql_callq, sql_call);

struct sql_conn {
    struct sql_shard *sh;
    int idx; /* in sh's connections */
    enum sql_conn_state state;
    struct event *timer; /* connect deadline, or reconnect after backoff */
    int64_t backoff_ms;
    struct sql_call *call; /* in flight */
};

struct sql_shard {
    struct sql_pool *pool;
    int idx;
    const struct cf_shard *cfs;
    char *conns; /* nconns × driver conn_size */
    int nconns;
    struct sql_callq queue;
    int pending; /* queued + in flight */
    int down;    /* known down: refuse new requests */
    int was_up;
    enum sql_mig_state *migs; /* per pool->migs */
};

struct sql_mig {
    char *table;
    char *sql;
};

struct sql_driver {
    const char *name;  /* "pg": log lines */
    const char *store; /* "PostgreSQL": messages to clients */
    enum sql_dialect dialect;
    size_t conn_size, call_size;
    /* the connection's own events (called once at init / shutdown) */
    void (*conn_init)(struct sql_conn *c, struct event_base *base);
    void (*conn_fini)(struct sql_conn *c);
    /* start connecting (state is CONNECTING, the connect timer armed); the
     * driver reports sql_pool_connected() or sql_pool_connect_failed() */
    void (*conn_start)(struct sql_conn *c);
    /* drop the library's connection and the driver's events (not the timer) */
    void (*conn_close)(struct sql_conn *c);
    /* send call on idle connection c (c->call and BUSY already set): 0, or
     * -1 after the call has been failed / completed */
    int (*send)(struct sql_conn *c, struct sql_call *call);
    /* free what the driver keeps in its part of a call (results) */
    void (*call_clear)(struct sql_call *call);
};

struct sql_pool {
    struct event_base *base;
    const struct cf_backend *be;
    const struct sql_driver *drv;
    void *drv_data; /* the driver's, e.g. parsed DSNs */
    struct sql_shard *shards;
    int nshards;
    struct sql_mig *migs;
    size_t nmigs;
    struct event *kick; /* deferred completions, then dispatch */
    struct sql_callq done;
    int closing;
};

/* ---- the adapter interface, shared (ad_ops members; state: the pool) ---------- */

/* Opens pool.min connections per shard.  NULL on out of memory. */
struct sql_pool *sql_pool_new(struct event_base *base, const struct cf_backend *be,
                              const struct sql_driver *drv, void *drv_data);
/* Fails everything pending with AD_UNAVAILABLE "shutting down", closes and
 * frees (drv_data is the caller's). */
void sql_pool_free(struct sql_pool *p);
int sql_pool_submit(void *state, const struct ad_req *req, ad_done_cb cb, void *arg);
void sql_pool_cancel(void *state, uint64_t req_id);
void sql_pool_stats(void *state, int shard, struct ad_pool_stats *out);
/* Every operation but the capabilities (guarded patch, group by path). */
int sql_pool_supports(const struct cf_domain *d, enum ad_op op);

/* ---- for drivers ----------------------------------------------------------------- */

static inline struct sql_conn *sql_shard_conn(const struct sql_shard *sh, int i)
{
    return (struct sql_conn *)(void *)(sh->conns + (size_t)i * sh->pool->drv->conn_size);
}

/* Connecting finished (server_info may be NULL): the connection is idle. */
void sql_pool_connected(struct sql_conn *c, const char *server_info);
void sql_pool_connect_failed(struct sql_conn *c, const char *why);
/* The connection is gone: its call fails, the shard may be down, reconnect. */
void sql_pool_conn_broken(struct sql_conn *c, const char *why);
/* Send the next waiting calls on idle connections. */
void sql_pool_dispatch(struct sql_shard *sh);

/* Complete call with res (res->shard defaults to the call's shard) and free it. */
void sql_pool_complete(struct sql_call *call, struct ad_res *res);
/* "backend 'b' (<store> shard 's') <what>: <detail>" */
void sql_pool_fail(struct sql_call *call, enum ad_status status, const char *what,
                   const char *detail);
/* A migration call ended: error NULL on success.  Completes the call. */
void sql_pool_migrated(struct sql_call *call, const char *error);

/* A write that changed no row (docs/rebalancing.md, "The fence at the
 * shard"): PLAIN — not fenced, the usual "not found" / "version mismatch";
 * MOVED — fenced and nothing else explains it (an insert, a PostgreSQL
 * upsert): the shard does not own req->slot; PROBE — fenced, or not found:
 * ask sql_build_fence_probe before answering.  upsert_can_miss: the
 * store's upsert changes no row when another row holds a unique value of
 * the item (MySQL). */
enum sql_fence_miss { SQL_MISS_PLAIN, SQL_MISS_MOVED, SQL_MISS_PROBE };
enum sql_fence_miss sql_pool_fence_miss(const struct sql_call *call, int upsert_can_miss);
/* res := AD_SLOT_MOVED naming the slot (its text), the backend and the shard. */
void sql_pool_slot_moved(const struct sql_call *call, struct ad_res *res, const char *slot);

/* A JSON column's text → a value that serializes as that document,
 * verbatim (lb_json_raw), after a check that it is JSON: the gateway never
 * looks into a JSON column (order_by and cursors take scalar fields only),
 * so parsing it into a tree and printing it again was pure cost (≈ half of
 * a 4-shard orders page).  Text that is not JSON comes back as a string. */
struct json_object *sql_pool_json(const char *v, size_t len);

/* Newlines of a library's error text → spaces (one-line logs and messages). */
void sql_one_line(char *s);

#endif
