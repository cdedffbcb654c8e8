/*
 * gw_metrics.h — Prometheus metrics: counted per worker, summed at scrape.
 *
 * Every worker thread owns one slot of counters and is its only writer: an
 * increment is a relaxed load + store of a uint64_t (no lock, no atomic
 * read-modify-write, no allocation on the request path).  The scrape (GET
 * /metrics on the admin listener, worker 0's loop) reads every slot with
 * relaxed loads and sums them; a scrape may therefore miss the increments of
 * the last microseconds, never tear a value.
 *
 * Label values that come from the config (domain names, backend/shard names)
 * are interned once into small append-only tables; requests carry the
 * interned index.  The tables survive reloads (a removed domain keeps its
 * counters, as Prometheus expects of a counter).
 */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct cf_config;
struct evbuffer;

#define GW_M_MAX_WORKERS 64
#define GW_M_MAX_DOMAINS 32 /* interned domain names; more share the "_other" row */

/* Operation label: the adapter ops (enum ad_op, GET..AGGREGATE) first. */
enum gw_mop {
    GW_MOP_GET,
    GW_MOP_PUT,
    GW_MOP_INSERT,
    GW_MOP_PATCH,
    GW_MOP_DELETE,
    GW_MOP_QUERY,
    GW_MOP_AGGREGATE,
    GW_MOP_BATCH,
    GW_MOP_READY,
    GW_MOP_HEALTH,
    GW_MOP_METRICS,
    GW_MOP_ADMIN,
    GW_MOP_OTHER, /* no route, refused before the op was known */
    GW_MOP_N
};
const char *gw_mop_name(enum gw_mop op);

/* Outcome of one backend call, for polygate_backend_*_total. */
enum gw_mbe {
    GW_MBE_OK,           /* the store answered (any status but the ones below) */
    GW_MBE_TIMEOUT,      /* the gateway's deadline fired, or the adapter timed out */
    GW_MBE_UNAVAILABLE,  /* connection lost / refused / store down */
    GW_MBE_QUEUE_FULL,   /* the adapter's wait queue was full (AD_EFULL) */
    GW_MBE_NO_CONN,      /* refused synchronously: no connection (AD_EDOWN) */
    GW_MBE_CIRCUIT_OPEN, /* refused by the circuit breaker, never submitted */
    GW_MBE_INTERNAL,     /* the store said something unexpected */
    GW_MBE_N
};

/* A fleet's shared state (gw_shared.h): what a claim of an Idempotency-Key
 * in the shared store gave, and which bucket decided a rate limit. */
enum gw_msi {
    GW_MSI_CLAIMED,     /* a new key: the request ran */
    GW_MSI_REPLAYED,    /* the stored answer */
    GW_MSI_MISMATCH,    /* 422: the key was used with another request */
    GW_MSI_BUSY,        /* 409: the first request is still running */
    GW_MSI_UNAVAILABLE, /* 503: the shared store could not be asked */
    GW_MSI_N
};
void gw_metrics_shared_idem(int worker, enum gw_msi what);
/* local: the instance's own bucket decided (the shared store could not) */
void gw_metrics_shared_rate(int worker, int local, int allowed);

/* Interning (takes a mutex; call at config time, not per request). */
int gw_metrics_domain_id(const char *name); /* 0 = no domain */
/* Intern every domain and shard (gw_shard.h) of a config (start-up and reload). */
void gw_metrics_register_config(const struct cf_config *cf);
/* Look a domain name up without interning (request path, lock-free). */
int gw_metrics_domain_lookup(const char *name);

/* Request path: `worker` is the calling worker's id. */
void gw_metrics_request(int worker, int domain, enum gw_mop op, int status, uint64_t usec);
void gw_metrics_backend_submit(int worker, int shard);
void gw_metrics_backend_done(int worker, int shard); /* the adapter completed it */
void gw_metrics_backend_outcome(int worker, int shard, enum gw_mbe what);
void gw_metrics_scatter(int worker, int domain, int nshards, int partial);

/* Once a second on each worker's loop the worker reads its adapters' pools
 * (ad_ops.stats) into its slot: gw_metrics_pools_begin forgets the last
 * sample (-1: not a worker, nothing to record), then gw_metrics_pool records
 * one shard (an id of gw_shard.h). */
struct ad_pool_stats;
int gw_metrics_pools_begin(int worker);
void gw_metrics_pool(int worker, int shard, const struct ad_pool_stats *ps);

/* Render the Prometheus text exposition (format 0.0.4). */
void gw_metrics_render(struct evbuffer *out, const struct cf_config *cf, int64_t inflight);
/* The number of worker threads (start-up). */
void gw_metrics_set_workers(int n);

/* Microseconds on the monotonic clock (latencies). */
uint64_t gw_metrics_now_us(void);

#endif
