/*
 * gw_worker.h — a worker thread: one event_base, one SO_REUSEPORT listener,
 * its own adapter states (connection pools), and the requests in flight.
 *
 * Nothing on the request path is shared between workers except the
 * read-only, reference-counted config snapshot.  The main thread talks to a
 * worker only through gw_worker_post_config() / gw_worker_post_drain(),
 * which hand over under a mutex and wake the loop with event_active().
 */
#ifndef GW_WORKER_H
#define GW_WORKER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/event.h>

struct cf_config;
struct cf_backend;
struct ad_ops;
struct gw_http_req;
struct gw_http_server;
struct gw_req;
struct gw_shared;
struct gw_worker;

/* What a worker calls on the requests it serves (gw_request_hooks of
 * gw_request.h, passed in by the server): the worker runs the loop and owns
 * the backends, the request module owns the requests. */
struct gw_worker_hooks {
    void (*handle)(struct gw_http_req *hr, void *worker); /* the client listener */
    void (*admin)(struct gw_http_req *hr, void *worker);  /* the admin listener */
    void (*abandon)(struct gw_worker *w);                 /* shutdown: no more responses */
    void (*free_all)(struct gw_worker *w);
    void (*check_drained)(struct gw_worker *w); /* a request started before join_id ended */
};

/* One adapter state for one backend on this worker.  Reference counted: the
 * worker's table holds one reference, each request in flight another, so a
 * reload that replaces a backend frees the old state only once its last
 * request completed. */
struct gw_backend_rt {
    const struct ad_ops *ops;
    void *state;
    struct cf_config *cf; /* the config whose cf_backend the state points to */
    const struct cf_backend *be;
    int refs;
    int *mids; /* per shard: interned id for metrics and circuit breakers (gw_metrics.h) */
    size_t nmids;
};

struct gw_worker {
    int id;
    pthread_t thread;
    const struct gw_worker_hooks *hooks;
    struct event_base *base;
    struct gw_http_server *http;
    struct gw_http_server *admin; /* worker 0 also serves the admin listener */
    void *tls;                    /* shared SSL_CTX of the client listener, or NULL */
    struct cf_config *cf;
    struct gw_backend_rt **rt; /* parallel to cf->backends */
    const struct ad_ops **ops; /* parallel to cf->backends: each one's adapter */
    uint64_t next_req_id;
    TAILQ_HEAD(, gw_req) inflight;
    size_t ninflight;

    struct event *ctl_ev;
    pthread_mutex_t ctl_mu;
    struct cf_config *pending_cf;
    int pending_drain;

    int draining;
    int finishing;             /* finish() runs: completions must not re-enter it */
    struct event *drain_timer; /* shutdown_timeout_ms: stop even with requests unanswered */
    struct event *flush_timer; /* all answered: last responses get a moment to flush */
    int exit_code;
    struct event *stats_timer; /* samples the pools for /metrics (gw_metrics.h) */
    struct gw_shared *shared;  /* the fleet's shared store (config `control`), or NULL */

    /* rebalancing: the live slot table of a rebalance this worker runs on, and
     * whether requests it started before (routed without a ticket) are still
     * in flight: ids below join_id (gw_requests_check_drained). */
    struct rt_live *join_live;
    uint64_t join_id;
    int join_pending;
};

int gw_worker_init(struct gw_worker *w, int id, struct cf_config *cf, void *tls,
                   const struct gw_worker_hooks *hooks, char *err, size_t errlen);
void *gw_worker_main(void *arg);
void gw_worker_destroy(struct gw_worker *w);

/* From another thread. */
void gw_worker_post_config(struct gw_worker *w, struct cf_config *cf);
void gw_worker_post_drain(struct gw_worker *w);

/* Runtime of the backend a domain uses (NULL if it failed to start). */
struct gw_backend_rt *gw_worker_backend(struct gw_worker *w, const struct cf_backend *be);
/* The adapter serving a backend of the current config (resolved when the
 * config was applied; there even when the backend failed to start). */
const struct ad_ops *gw_worker_adapter(struct gw_worker *w, const struct cf_backend *be);
void gw_backend_rt_unref(struct gw_backend_rt *rt);
/* Same, but a last reference shuts the adapter down on the next loop turn
 * (for requests, which are freed from inside adapter callbacks). */
void gw_backend_rt_unref_later(struct gw_worker *w, struct gw_backend_rt *rt);

/* After a config swap: note a live slot table the new config carries. */
void gw_worker_note_live(struct gw_worker *w);

/* Called by the request layer when a request finished (drain bookkeeping). */
void gw_worker_request_done(struct gw_worker *w);

#endif
