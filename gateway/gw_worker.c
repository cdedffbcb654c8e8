/*
 * gw_worker.c — worker lifecycle: start, config swap, drain, stop.
 */
#include "gateway/gw_worker.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "gateway/gw_http.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_shard.h"
#include "gateway/gw_shared.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "routing/rt_live.h"

static void limits_of(const struct cf_config *cf, struct gw_http_limits *l)
{
    l->max_body = cf->limits.max_body;
    l->max_headers = cf->limits.max_headers;
    l->max_url = cf->limits.max_url;
    l->max_nheaders = cf->limits.max_header_count;
    l->idle_timeout_s = cf->limits.idle_timeout_s;
    l->request_read_timeout_s = cf->limits.request_read_timeout_s;
    l->max_output = cf->limits.max_output;
    l->output_drain_timeout_s = cf->limits.output_drain_timeout_s;
}

/* The last reference went: shut the adapter down and free the runtime. */
static void rt_free(struct gw_backend_rt *rt)
{
    rt->ops->shutdown(rt->state);
    cf_config_unref(rt->cf);
    free(rt->mids);
    free(rt);
}

void gw_backend_rt_unref(struct gw_backend_rt *rt)
{
    if (rt != NULL && --rt->refs == 0) {
        rt_free(rt);
    }
}

static void rt_shutdown_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rt_free(arg);
}

void gw_backend_rt_unref_later(struct gw_worker *w, struct gw_backend_rt *rt)
{
    if (rt == NULL || --rt->refs > 0) {
        return;
    }
    /* The last reference of a runtime a config swap replaced, dropped by a
     * request freed from inside the adapter's completion callback: shutting
     * the adapter down now would free the state the adapter is still running
     * in (use after free in ad_mysql dispatch()).  Next loop turn instead. */
    if (event_base_once(w->base, -1, EV_TIMEOUT, rt_shutdown_cb, rt, NULL) < 0) {
        rt_shutdown_cb(-1, 0, rt);
    }
}

void gw_worker_note_live(struct gw_worker *w)
{
    for (size_t i = 0; i < w->cf->nbackends; i++) {
        struct rt_live *l = w->cf->backends[i].live;
        if (l == NULL || l == w->join_live) {
            continue;
        }
        /* a rebalance began: requests from now on take tickets; the mover
         * waits until the ones started before have finished */
        rt_live_unref(w->join_live);
        w->join_live = rt_live_ref(l);
        w->join_id = w->next_req_id + 1;
        w->join_pending = 1;
        w->hooks->check_drained(w);
    }
}

static struct gw_backend_rt *rt_new(struct gw_worker *w, struct cf_config *cf,
                                    const struct cf_backend *be, const struct ad_ops *ops)
{
    char err[256];
    struct gw_backend_rt *rt = calloc(1, sizeof(*rt));
    if (rt == NULL || ops == NULL) {
        free(rt);
        return NULL;
    }
    if (ops->init(w->base, be, &rt->state, err, sizeof(err)) < 0) {
        lb_error("worker %d: backend '%s' cannot start: %s", w->id, be->name, err);
        free(rt);
        return NULL;
    }
    rt->ops = ops;
    rt->cf = cf_config_ref(cf);
    rt->be = be;
    rt->refs = 1;
    rt->mids = calloc(be->nshards, sizeof(*rt->mids));
    rt->nmids = rt->mids != NULL ? be->nshards : 0;
    for (size_t s = 0; s < rt->nmids; s++) {
        rt->mids[s] = gw_shard_id(be->name, be->shards[s].name);
    }
    return rt;
}

/* Build the runtime table for `cf`, reusing states of unchanged backends,
 * and the adapter table: each backend's adapter, looked up by type here,
 * once per config, never on the request path. */
static void sync_backends(struct gw_worker *w, struct cf_config *cf)
{
    struct gw_backend_rt **nrt = calloc(cf->nbackends, sizeof(*nrt));
    const struct ad_ops **nops = lb_xcalloc(cf->nbackends + 1, sizeof(*nops));
    for (size_t i = 0; i < cf->nbackends; i++) {
        const struct cf_backend *be = &cf->backends[i];
        nops[i] = ad_lookup(be->type); /* a known type: the config checked it */
        for (size_t j = 0; w->cf != NULL && j < w->cf->nbackends; j++) {
            struct gw_backend_rt *old = w->rt[j];
            if (old != NULL && strcmp(old->be->signature, be->signature) == 0 &&
                strcmp(old->be->name, be->name) == 0) {
                nrt[i] = old;
                old->refs++;
                break;
            }
        }
        if (nrt[i] == NULL && nops[i] != NULL) {
            nrt[i] = rt_new(w, cf, be, nops[i]);
        }
    }
    for (size_t j = 0; w->cf != NULL && j < w->cf->nbackends; j++) {
        gw_backend_rt_unref(w->rt[j]);
    }
    free(w->rt);
    w->rt = nrt;
    free(w->ops);
    w->ops = nops;
}

struct gw_backend_rt *gw_worker_backend(struct gw_worker *w, const struct cf_backend *be)
{
    size_t i = (size_t)(be - w->cf->backends);
    return i < w->cf->nbackends ? w->rt[i] : NULL;
}

const struct ad_ops *gw_worker_adapter(struct gw_worker *w, const struct cf_backend *be)
{
    size_t i = (size_t)(be - w->cf->backends);
    return i < w->cf->nbackends ? w->ops[i] : NULL;
}

static void apply_config(struct gw_worker *w, struct cf_config *cf)
{
    sync_backends(w, cf);
    struct cf_config *old = w->cf;
    w->cf = cf; /* the reference handed over by the poster */
    struct gw_http_limits lim;
    limits_of(cf, &lim);
    if (w->http != NULL) {
        gw_http_server_set_limits(w->http, &lim);
        gw_http_server_set_max_conns(w->http, cf->limits.max_connections);
    }
    if (w->admin != NULL) {
        gw_http_server_set_limits(w->admin, &lim);
    }
    cf_config_unref(old); /* requests in flight hold their own reference */
    gw_worker_note_live(w);
}

static void finish(struct gw_worker *w)
{
    if (w->finishing) {
        return;
    }
    /* Shutting an adapter down completes its pending requests, and the last
     * completion would call back into finish() through
     * gw_worker_request_done(): the flag makes that a no-op. */
    w->finishing = 1;
    evtimer_del(w->drain_timer);
    evtimer_del(w->flush_timer);
    if (w->stats_timer != NULL) {
        event_del(w->stats_timer); /* it reads w->rt, which goes away now */
    }
    w->hooks->abandon(w);       /* late completions are dropped from now on */
    gw_shared_close(w->shared); /* requests waiting for it complete now */
    for (size_t i = 0; w->cf != NULL && w->rt != NULL && i < w->cf->nbackends; i++) {
        struct gw_backend_rt *rt = w->rt[i];
        w->rt[i] = NULL;
        gw_backend_rt_unref(rt);
    }
    gw_http_server_free(w->http);
    w->http = NULL;
    gw_http_server_free(w->admin);
    w->admin = NULL;
    event_base_loopbreak(w->base);
}

/* Requests received and not answered yet: only these hold a drain (a request
 * answered 504 whose store never replied is not waited for). */
static size_t unanswered(const struct gw_worker *w)
{
    return gw_http_server_nbusy(w->http) + (w->admin != NULL ? gw_http_server_nbusy(w->admin) : 0);
}

static size_t open_conns(const struct gw_worker *w)
{
    return gw_http_server_nconns(w->http) +
           (w->admin != NULL ? gw_http_server_nconns(w->admin) : 0);
}

static void drain_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct gw_worker *w = arg;
    (void)fd;
    (void)what;
    lb_warn("worker %d: drain deadline (shutdown_timeout_ms) reached with %zu request(s) "
            "unanswered; they get no answer",
            w->id, unanswered(w));
    finish(w);
}

static void drain_flush_cb(evutil_socket_t fd, short what, void *arg)
{
    struct gw_worker *w = arg;
    (void)fd;
    (void)what;
    size_t n = open_conns(w);
    if (n > 0) {
        lb_info("worker %d: every request answered; closing %zu connection(s) whose client has "
                "not read its last response",
                w->id, n);
    }
    finish(w);
}

/* While draining: once every request received is answered, close the
 * connections (each after its last response is flushed, for at most
 * GW_DRAIN_FLUSH_MS) and stop. */
#define GW_DRAIN_FLUSH_MS 250

static void drain_check(struct gw_worker *w)
{
    if (!w->draining || w->finishing || unanswered(w) > 0) {
        return;
    }
    gw_http_server_close_idle(w->http);
    if (w->admin != NULL) {
        gw_http_server_close_idle(w->admin);
    }
    if (open_conns(w) == 0) {
        finish(w);
    } else if (!evtimer_pending(w->flush_timer, NULL)) {
        struct timeval tv = {0, GW_DRAIN_FLUSH_MS * 1000};
        evtimer_add(w->flush_timer, &tv);
    }
}

static void drain_progress(void *arg)
{
    drain_check(arg);
}

void gw_worker_request_done(struct gw_worker *w)
{
    drain_check(w);
}

static void start_drain(struct gw_worker *w)
{
    if (w->draining) {
        return;
    }
    w->draining = 1;
    gw_http_server_stop_accepting(w->http);
    if (w->admin != NULL) {
        gw_http_server_stop_accepting(w->admin);
    }
    gw_http_server_close_idle(w->http);
    if (w->admin != NULL) {
        gw_http_server_close_idle(w->admin);
    }
    int64_t ms = w->cf->shutdown_timeout_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(w->drain_timer, &tv);
    drain_check(w);
}

/* Once a second: this worker's adapters' pools (ad_ops.stats) for /metrics. */
static void stats_cb(evutil_socket_t fd, short what, void *arg)
{
    struct gw_worker *w = arg;
    (void)fd;
    (void)what;
    if (gw_metrics_pools_begin(w->id) < 0) {
        return;
    }
    for (size_t b = 0; w->cf != NULL && w->rt != NULL && b < w->cf->nbackends; b++) {
        struct gw_backend_rt *rt = w->rt[b];
        for (size_t s = 0; rt != NULL && s < rt->nmids; s++) {
            int id = rt->mids[s];
            struct ad_pool_stats ps = {.conns = -1}; /* stays so when there is no stats hook */
            AD_OPTIONAL(rt->ops, stats, (void)0, rt->state, (int)s, &ps);
            if (id < 0 || id >= GW_MAX_SHARDS || ps.conns < 0) {
                continue;
            }
            gw_metrics_pool(w->id, id, &ps);
        }
    }
}

static void ctl_cb(evutil_socket_t fd, short what, void *arg)
{
    struct gw_worker *w = arg;
    (void)fd;
    (void)what;
    pthread_mutex_lock(&w->ctl_mu);
    struct cf_config *cf = w->pending_cf;
    int drain = w->pending_drain;
    w->pending_cf = NULL;
    w->pending_drain = 0;
    pthread_mutex_unlock(&w->ctl_mu);
    if (cf != NULL) {
        if (w->draining) {
            cf_config_unref(cf);
        } else {
            apply_config(w, cf);
        }
    }
    if (drain) {
        start_drain(w);
    }
}

void gw_worker_post_config(struct gw_worker *w, struct cf_config *cf)
{
    pthread_mutex_lock(&w->ctl_mu);
    if (w->pending_cf != NULL) {
        cf_config_unref(w->pending_cf);
    }
    w->pending_cf = cf_config_ref(cf);
    pthread_mutex_unlock(&w->ctl_mu);
    event_active(w->ctl_ev, EV_READ, 0);
}

void gw_worker_post_drain(struct gw_worker *w)
{
    pthread_mutex_lock(&w->ctl_mu);
    w->pending_drain = 1;
    pthread_mutex_unlock(&w->ctl_mu);
    event_active(w->ctl_ev, EV_READ, 0);
}

int gw_worker_init(struct gw_worker *w, int id, struct cf_config *cf, void *tls,
                   const struct gw_worker_hooks *hooks, char *err, size_t errlen)
{
    memset(w, 0, sizeof(*w));
    w->tls = tls;
    w->id = id;
    w->hooks = hooks;
    TAILQ_INIT(&w->inflight);
    pthread_mutex_init(&w->ctl_mu, NULL);
    w->base = event_base_new();
    if (w->base == NULL) {
        snprintf(err, errlen, "cannot create an event base");
        return -1;
    }
    w->ctl_ev = event_new(w->base, -1, 0, ctl_cb, w);
    w->drain_timer = evtimer_new(w->base, drain_deadline_cb, w);
    w->flush_timer = evtimer_new(w->base, drain_flush_cb, w);
    w->stats_timer = event_new(w->base, -1, EV_PERSIST, stats_cb, w);
    struct timeval second = {1, 0};
    event_add(w->stats_timer, &second);
    /* read at start: a reload does not change the shared store */
    if (cf->control.redis != NULL &&
        (w->shared = gw_shared_new(w->base, cf, id, err, errlen)) == NULL) {
        return -1;
    }
    struct evconnlistener *lis =
        gw_http_listen(w->base, cf->listen_host, cf->listen_port, 1, err, errlen);
    if (lis == NULL) {
        return -1;
    }
    struct gw_http_limits lim;
    limits_of(cf, &lim);
    w->http = gw_http_server_new(w->base, lis, &lim, w->hooks->handle, w);
    if (w->http == NULL) {
        evconnlistener_free(lis);
        snprintf(err, errlen, "cannot create the HTTP server");
        return -1;
    }
    gw_http_server_set_progress_cb(w->http, drain_progress, w);
    if (w->tls != NULL) {
        gw_http_server_set_tls(w->http, w->tls);
    }
    gw_http_server_set_max_conns(w->http, cf->limits.max_connections);
    if (id == 0) {
        struct evconnlistener *alis =
            gw_http_listen(w->base, cf->admin_host, cf->admin_port, 0, err, errlen);
        if (alis == NULL) {
            return -1;
        }
        w->admin = gw_http_server_new(w->base, alis, &lim, w->hooks->admin, w);
        if (w->admin == NULL) {
            evconnlistener_free(alis);
            snprintf(err, errlen, "cannot create the admin HTTP server");
            return -1;
        }
        gw_http_server_set_progress_cb(w->admin, drain_progress, w);
    }
    w->cf = NULL;
    sync_backends(w, cf);
    w->cf = cf_config_ref(cf);
    gw_worker_note_live(w);
    return 0;
}

void *gw_worker_main(void *arg)
{
    struct gw_worker *w = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals go to the main thread */
    event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

void gw_worker_destroy(struct gw_worker *w)
{
    if (w->http != NULL || w->admin != NULL) {
        finish(w);
    }
    if (w->stats_timer != NULL) {
        event_del(w->stats_timer);
    }
    if (w->rt != NULL) {
        for (size_t i = 0; w->cf != NULL && i < w->cf->nbackends; i++) {
            gw_backend_rt_unref(w->rt[i]);
        }
        free(w->rt);
    }
    free(w->ops);
    w->ops = NULL;
    /* run the loop once more so that deferred callbacks of adapters finish */
    event_base_loop(w->base, EVLOOP_NONBLOCK);
    w->hooks->free_all(w);
    gw_shared_free(w->shared); /* after the requests: their keys point to it */
    w->shared = NULL;
    if (w->pending_cf != NULL) {
        cf_config_unref(w->pending_cf);
    }
    cf_config_unref(w->cf);
    if (w->ctl_ev != NULL) {
        event_free(w->ctl_ev);
    }
    if (w->drain_timer != NULL) {
        event_free(w->drain_timer);
    }
    if (w->flush_timer != NULL) {
        event_free(w->flush_timer);
    }
    if (w->stats_timer != NULL) {
        event_free(w->stats_timer);
    }
    if (w->base != NULL) {
        event_base_free(w->base);
    }
    rt_live_unref(w->join_live);
    pthread_mutex_destroy(&w->ctl_mu);
}
