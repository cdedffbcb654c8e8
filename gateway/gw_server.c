/*
 * gw_server.c — the main thread: load the config, start the workers, turn
 * signals into actions (SIGHUP reload, SIGTERM/SIGINT drain) and join.
 *
 * Signals are received through evsignal on the main thread's own loop; the
 * workers block them.  A reload parses and validates the new file into a
 * fresh snapshot; if anything is wrong, the old one stays and the reason is
 * logged.  Listen addresses and the worker count need a restart.
 *
 * With a control store (config `control:`, gateway/gw_control.h) the shard
 * maps come from etcd: the first read runs before the workers start, a map
 * change another instance made arrives through the watch and is installed
 * here (control_install), and PUT /admin/shardmap writes to etcd with a
 * compare-and-swap before this instance serves the map (docs/fleet.md).
 */
#include "gateway/gw_server.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <http_parser.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "gateway/gw_accesslog.h"
#include "gateway/gw_breaker.h"
#include "gateway/gw_control.h"
#include "gateway/gw_http.h"
#include "gateway/gw_idempotency.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_request.h"
#include "gateway/gw_shardmap.h"
#include "gateway/gw_worker.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "rebalance/rb_rebalance.h"

struct server {
    struct event_base *base;
    char *path;
    struct cf_config *cf;
    struct gw_worker *workers;
    int nworkers;
    int stopping;
    struct event *ev_map;   /* a PUT /admin/shardmap job is waiting */
    struct event *ev_rb;    /* the rebalance ended (rebalance/rb_rebalance.h) */
    struct gw_control *ctl; /* the control store; NULL: maps in files only */
};

/* Settings of gw_accesslog / gw_breaker / gw_metrics; a log file that cannot
 * be opened keeps the previous destination. */
static int observability_apply(const struct cf_config *cf)
{
    char err[512];
    gw_metrics_register_config(cf);
    gw_breaker_configure(cf->breaker.failures, cf->breaker.open_ms);
    gw_idem_configure(cf->idempotency.ttl_s, cf->idempotency.max_entries,
                      cf->idempotency.max_bytes);
    if (gw_accesslog_configure(cf->access_log, err, sizeof(err)) < 0) {
        lb_error("%s (the access log keeps its previous destination)", err);
        return -1;
    }
    return 0;
}

/* ---- PUT /admin/shardmap: a worker hands the map to the main thread -------- */

struct gw_map_job {
    char *backend;
    struct json_object *doc;
    struct event *done_ev; /* on the caller's loop */
    gw_map_done_cb done;
    void *arg;
    int failed;
    int rebalancing;      /* the map moves slots: a rebalance started */
    struct cf_config *cf; /* control mode: checked, waiting for the store's answer */
    struct md_error e;
    char shard[128]; /* e.shard points here */
};

static pthread_mutex_t map_mu = PTHREAD_MUTEX_INITIALIZER;
static struct server *map_server;  /* the running server (one per process) */
static struct gw_map_job *map_job; /* waiting for the main thread */
static int map_busy;               /* a job is queued or running */

/* Swap a validated config in on every worker (each applies it on its loop). */
static void apply(struct server *s, struct cf_config *cf)
{
    if (strcmp(cf->listen_host, s->cf->listen_host) != 0 || cf->listen_port != s->cf->listen_port ||
        strcmp(cf->admin_host, s->cf->admin_host) != 0 || cf->admin_port != s->cf->admin_port ||
        (cf->workers != s->cf->workers) || (cf->tls_cert == NULL) != (s->cf->tls_cert == NULL) ||
        (cf->tls_cert != NULL && (strcmp(cf->tls_cert, s->cf->tls_cert) != 0 ||
                                  strcmp(cf->tls_key, s->cf->tls_key) != 0))) {
        lb_warn("reload: listen addresses, workers and tls change only with a restart; "
                "the running ones stay");
    }
    lb_log_set_level(cf->log_level);
    observability_apply(cf); /* access log (reopened), breakers, metric labels */
    if (!cf->auth.enabled && s->cf->auth.enabled) {
        lb_warn("reload turns authentication OFF (auth.enabled: false)");
    }
    rb_rebalance_fence(cf); /* the shards' slot ownership follows a map changed without moves */
    for (int i = 0; i < s->nworkers; i++) {
        gw_worker_post_config(&s->workers[i], cf);
    }
    cf_config_unref(s->cf);
    s->cf = cf;
}

/* A config with a new map in force: swapped in directly while the workers
 * do not run yet (the control store's first read), else posted to them. */
static void install_config(struct server *s, struct cf_config *cf)
{
    if (s->workers == NULL) {
        cf_config_unref(s->cf);
        s->cf = cf;
        return;
    }
    apply(s, cf);
}

/* The control store's map of backend (gw_control_hooks.install): loaded with
 * the config, checked like a reload (startup: the store wins over the file,
 * no version check), the map file rewritten as the cache, swapped in. */
static int control_install(void *arg, const char *backend, struct json_object *doc, int startup,
                           char *err, size_t errlen)
{
    struct server *s = arg;
    char lerr[1024];
    struct cf_config *cf = cf_config_load_with_map(s->path, backend, doc, lerr, sizeof(lerr));
    if (cf == NULL) {
        snprintf(err, errlen, "%s", lerr);
        return -1;
    }
    if (!startup) {
        struct md_error e = {0};
        const char *moving = NULL;
        if (gw_shardmap_check(s->cf, cf, NULL, &moving, &e) < 0 || moving != NULL) {
            snprintf(err, errlen, "%s",
                     moving != NULL ? "the map moves slots, and online rebalancing across a fleet "
                                      "is not available yet"
                                    : e.message);
            cf_config_unref(cf);
            return -1;
        }
    }
    if (gw_shardmap_changed(s->cf, cf) == NULL) {
        cf_config_unref(cf); /* the map served already (this instance's own write) */
        return 0;
    }
    const char *path = gw_shardmap_path(cf, backend);
    if (path == NULL ||
        gw_shardmap_write(path, doc, "from the control store (etcd)", lerr, sizeof(lerr)) < 0) {
        lb_warn("backend '%s': the map file (the cache of the control store's map) was not "
                "rewritten: %s",
                backend, path == NULL ? "the backend has no map file" : lerr);
    }
    install_config(s, cf);
    return 0;
}

static const struct cf_config *control_config(void *arg)
{
    return ((struct server *)arg)->cf;
}

/* Mover thread: the rebalance ended; the main thread activates the new map. */
static void rb_done(void *arg)
{
    struct server *s = arg;
    event_active(s->ev_rb, EV_READ, 0);
}

static void on_rb_done(evutil_socket_t fd, short what, void *arg)
{
    struct server *s = arg;
    (void)fd;
    (void)what;
    char err[1024];
    struct cf_config *cf = rb_rebalance_finish(s->path, err, sizeof(err));
    if (cf == NULL) {
        lb_error("rebalance ended but the config does not load (%s): routing stays on the live "
                 "slot table until a reload",
                 err);
        return;
    }
    apply(s, cf);
    lb_info("rebalance ended: the new shard map is active");
}

static void on_reload(evutil_socket_t sig, short what, void *arg)
{
    struct server *s = arg;
    (void)sig;
    (void)what;
    char err[1024];
    struct cf_config *cf = cf_config_load(s->path, err, sizeof(err));
    if (cf == NULL) {
        lb_error("reload rejected, keeping the running config: %s", err);
        return;
    }
    if (rb_rebalance_active()) { /* the union map and the live table stay */
        cf_config_unref(cf);
        cf = rb_rebalance_reload(s->path, err, sizeof(err));
        if (cf == NULL) {
            lb_error("reload rejected, keeping the running config: %s", err);
            return;
        }
        lb_warn("reload during a rebalance: shard maps stay as they are until it ends");
        apply(s, cf);
        return;
    }
    struct md_error e = {0};
    const char *moving = NULL;
    const char *changed = s->ctl != NULL ? gw_shardmap_changed(s->cf, cf) : NULL;
    if (changed != NULL) {
        lb_error("reload rejected, keeping the running config: the shard map file of backend "
                 "'%s' changed, but with a control store the maps change through PUT "
                 "/admin/shardmap (the file is a cache of the store's map; docs/fleet.md)",
                 changed);
        cf_config_unref(cf);
        return;
    }
    if (gw_shardmap_check(s->cf, cf, NULL, &moving, &e) < 0) {
        lb_error("reload rejected, keeping the running config: %s", e.message);
        cf_config_unref(cf);
        return;
    }
    if (moving != NULL) {
        struct cf_config *ucf =
            rb_rebalance_begin(s->path, s->cf, cf, moving, s->nworkers, rb_done, s, &e);
        cf_config_unref(cf);
        if (ucf == NULL) {
            lb_error("reload rejected, keeping the running config: %s", e.message);
            return;
        }
        cf = ucf;
    }
    apply(s, cf);
    lb_info("reloaded %s (%zu domains, %zu backends)", s->path, cf->ndomains, cf->nbackends);
}

static void map_job_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct gw_map_job *job = arg;
    (void)fd;
    (void)what;
    job->done(job->failed ? &job->e : NULL, job->rebalancing, job->arg);
    event_free(job->done_ev);
    json_object_put(job->doc);
    free(job->backend);
    free(job);
}

static void map_job_end(struct gw_map_job *job);

/* Control mode: the store took the map (or refused it). */
static void on_map_stored(const struct md_error *e, int64_t rev, void *arg)
{
    struct gw_map_job *job = arg;
    struct server *s = map_server;
    if (e != NULL) {
        job->e = *e;
        job->e.shard = NULL;
        job->failed = 1;
        cf_config_unref(job->cf);
    } else if (gw_control_served(s->ctl, job->backend) < rev) {
        const char *path = gw_shardmap_path(job->cf, job->backend);
        char err[512];
        if (path == NULL || gw_shardmap_write(path, job->doc, "applied by PUT /admin/shardmap", err,
                                              sizeof(err)) < 0) {
            lb_warn("backend '%s': the map file (the cache of the control store's map) was not "
                    "rewritten: %s",
                    job->backend, path == NULL ? "the backend has no map file" : err);
        }
        apply(s, job->cf);
        gw_control_set_served(s->ctl, job->backend, rev);
        lb_info("shard map of backend '%s' is now version %lld (PUT /admin/shardmap, control "
                "store revision %lld)",
                job->backend,
                (long long)json_object_get_int64(json_object_object_get(job->doc, "version")),
                (long long)rev);
    } else {
        cf_config_unref(job->cf); /* the watch installed it first */
    }
    job->cf = NULL;
    map_job_end(job);
}

/* Main thread: load the config with the new map, check, persist, swap.
 * 1 when the job waits for the control store (on_map_stored ends it). */
static int run_map_job(struct server *s, struct gw_map_job *job)
{
    char err[1024];
    struct md_error *e = &job->e;
    struct cf_config *cf =
        cf_config_load_with_map(s->path, job->backend, job->doc, err, sizeof(err));
    if (cf == NULL) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "shard map rejected: %s", err);
        job->failed = 1;
        return 0;
    }
    if (rb_rebalance_active()) {
        md_error_set(e, MD_E_CONFLICT, NULL,
                     "a rebalance is running (GET /admin/rebalance): the shard map changes "
                     "again once it has finished or was aborted");
        job->failed = 1;
        cf_config_unref(cf);
        return 0;
    }
    const char *moving = NULL;
    if (gw_shardmap_check(s->cf, cf, job->backend, &moving, e) < 0) {
        if (e->shard != NULL) {
            snprintf(job->shard, sizeof(job->shard), "%s", e->shard);
            e->shard = job->shard;
        }
        job->failed = 1;
        cf_config_unref(cf);
        return 0;
    }
    if (moving != NULL && s->ctl != NULL) { /* never the single-instance mover in a fleet */
        md_error_set(e, MD_E_CONFLICT, "shards",
                     "online rebalancing across a fleet is not available yet: the map of backend "
                     "'%s' moves slots, and with a control store only map changes that move no "
                     "slot (a new version, a shard's DSN) apply; the fleet-wide mover with "
                     "fencing at the shards is to come (docs/fleet.md)",
                     moving);
        job->failed = 1;
        cf_config_unref(cf);
        return 0;
    }
    if (s->ctl != NULL) { /* the store first; every instance (this one too) follows */
        job->cf = cf;
        gw_control_put_map(s->ctl, job->backend, job->doc, on_map_stored, job);
        return 1;
    }
    if (moving != NULL) { /* the mover writes the map file once every slot moved */
        struct cf_config *ucf =
            rb_rebalance_begin(s->path, s->cf, cf, moving, s->nworkers, rb_done, s, e);
        cf_config_unref(cf);
        if (ucf == NULL) {
            job->failed = 1;
            return 0;
        }
        job->rebalancing = 1;
        apply(s, ucf);
        lb_info("shard map of backend '%s': rebalancing to version %lld", job->backend,
                (long long)json_object_get_int64(json_object_object_get(job->doc, "version")));
        return 0;
    }
    const char *path = gw_shardmap_path(cf, job->backend);
    /* persisted first: a restart (or a SIGHUP) finds the map that is active */
    if (path == NULL ||
        gw_shardmap_write(path, job->doc, "applied by PUT /admin/shardmap", err, sizeof(err)) < 0) {
        md_error_set(e, MD_E_INTERNAL, NULL, "shard map not applied: %s",
                     path == NULL ? "the backend is gone from the config file" : err);
        job->failed = 1;
        cf_config_unref(cf);
        return 0;
    }
    apply(s, cf);
    lb_info("shard map of backend '%s' is now version %lld (PUT /admin/shardmap)", job->backend,
            (long long)json_object_get_int64(json_object_object_get(job->doc, "version")));
    return 0;
}

static void map_job_end(struct gw_map_job *job)
{
    if (job->failed) {
        lb_warn("shard map of backend '%s' rejected, the active one stays: %s", job->backend,
                job->e.message);
    }
    pthread_mutex_lock(&map_mu);
    map_busy = 0;
    pthread_mutex_unlock(&map_mu);
    event_active(job->done_ev, EV_READ, 0); /* the job belongs to the caller's loop now */
}

static void on_map_job(evutil_socket_t fd, short what, void *arg)
{
    struct server *s = arg;
    (void)fd;
    (void)what;
    pthread_mutex_lock(&map_mu);
    struct gw_map_job *job = map_job;
    map_job = NULL;
    pthread_mutex_unlock(&map_mu);
    if (job == NULL) {
        return;
    }
    if (run_map_job(s, job) == 0) {
        map_job_end(job);
    }
}

int gw_server_put_map(const char *backend, struct json_object *doc, struct event_base *base,
                      gw_map_done_cb done, void *arg)
{
    pthread_mutex_lock(&map_mu);
    if (map_server == NULL || map_busy) {
        pthread_mutex_unlock(&map_mu);
        return -1;
    }
    struct gw_map_job *job = lb_xcalloc(1, sizeof(*job));
    job->backend = lb_xstrdup(backend);
    job->doc = json_object_get(doc);
    job->done = done;
    job->arg = arg;
    job->done_ev = event_new(base, -1, 0, map_job_done_cb, job);
    map_job = job;
    map_busy = 1;
    event_active(map_server->ev_map, EV_READ, 0);
    pthread_mutex_unlock(&map_mu);
    return 0;
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
    struct server *s = arg;
    (void)what;
    if (s->stopping) {
        lb_warn("second stop signal: exiting now");
        _exit(1);
    }
    s->stopping = 1;
    lb_info("signal %d: draining (up to %lld ms)", (int)sig, (long long)s->cf->shutdown_timeout_ms);
    for (int i = 0; i < s->nworkers; i++) {
        gw_worker_post_drain(&s->workers[i]);
    }
    event_base_loopbreak(s->base);
}

int gw_server_run(const char *path)
{
    evthread_use_pthreads();
    signal(SIGPIPE, SIG_IGN);
    ad_register_builtin();
    gw_request_set_put_map(gw_server_put_map);
    char err[1024];
    struct server s = {0};
    s.path = lb_xstrdup(path);
    s.cf = cf_config_load(path, err, sizeof(err));
    if (s.cf == NULL) {
        lb_error("cannot start: %s", err);
        free(s.path);
        return 2;
    }
    lb_log_set_level(s.cf->log_level);
    if (observability_apply(s.cf) < 0) {
        cf_config_unref(s.cf);
        free(s.path);
        return 2;
    }
    s.base = event_base_new();
    s.ev_rb = event_new(s.base, -1, 0, on_rb_done, &s);
    s.nworkers = s.cf->workers > 0 ? s.cf->workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (s.nworkers < 1) {
        s.nworkers = 1;
    }
    /* a rebalance a crash interrupted: roll back / finish its slot, resume */
    s.cf = rb_rebalance_recover(path, s.cf, s.nworkers, rb_done, &s, err, sizeof(err));
    if (s.cf == NULL) {
        lb_error("cannot start: %s", err);
        event_free(s.ev_rb);
        event_base_free(s.base);
        free(s.path);
        return 2;
    }
    gw_control_process_init(s.cf);
    const struct gw_control_hooks hooks = {&s, control_install, control_config};
    s.ctl = gw_control_new(s.base, s.cf, &hooks);
    while (!gw_control_synced(s.ctl)) { /* the store's maps before the first request */
        event_base_loop(s.base, EVLOOP_ONCE);
    }
    if (!s.cf->auth.enabled) {
        lb_warn("authentication is OFF (auth.enabled: false in %s): every caller may use every "
                "domain and the admin API",
                path);
    }
    if (s.cf->cursor_secret_generated) {
        lb_warn("cursor_secret is not set in %s: _query cursors are signed with a random secret "
                "of this process; gateways behind one load balancer need a shared cursor_secret",
                path);
    }
    http_parser_set_max_header_size((uint32_t)s.cf->limits.max_headers);
    gw_metrics_set_workers(s.nworkers);
    void *tls = NULL;
    if (s.cf->tls_cert != NULL) {
        tls = gw_http_tls_context(s.cf->tls_cert, s.cf->tls_key, err, sizeof(err));
        if (tls == NULL) {
            lb_error("cannot start: %s", err);
            gw_control_stop(s.ctl);
            rb_rebalance_shutdown();
            cf_config_unref(s.cf);
            event_free(s.ev_rb);
            event_base_free(s.base);
            free(s.path);
            return 2;
        }
    }
    struct gw_worker *workers = lb_xcalloc((size_t)s.nworkers, sizeof(*workers));
    for (int i = 0; i < s.nworkers; i++) {
        if (gw_worker_init(&workers[i], i, s.cf, tls, &gw_request_hooks, err, sizeof(err)) < 0) {
            lb_error("cannot start worker %d: %s", i, err);
            gw_control_stop(s.ctl);
            rb_rebalance_shutdown();
            event_free(s.ev_rb);
            for (int j = 0; j <= i; j++) {
                gw_worker_destroy(&workers[j]);
            }
            free(workers);
            gw_http_tls_context_free(tls);
            cf_config_unref(s.cf);
            event_base_free(s.base);
            free(s.path);
            return 2;
        }
    }
    s.workers = workers; /* from here on a new config goes to the workers (apply) */
    struct event *ev_hup = evsignal_new(s.base, SIGHUP, on_reload, &s);
    struct event *ev_term = evsignal_new(s.base, SIGTERM, on_stop, &s);
    struct event *ev_int = evsignal_new(s.base, SIGINT, on_stop, &s);
    s.ev_map = event_new(s.base, -1, 0, on_map_job, &s);
    pthread_mutex_lock(&map_mu);
    map_server = &s;
    pthread_mutex_unlock(&map_mu);
    evsignal_add(ev_hup, NULL);
    evsignal_add(ev_term, NULL);
    evsignal_add(ev_int, NULL);
    for (int i = 0; i < s.nworkers; i++) {
        pthread_create(&s.workers[i].thread, NULL, gw_worker_main, &s.workers[i]);
    }
    lb_info("polygate listening on %s://%s:%d (admin http://%s:%d), %d workers, %zu domains",
            tls != NULL ? "https" : "http", s.cf->listen_host, s.cf->listen_port, s.cf->admin_host,
            s.cf->admin_port, s.nworkers, s.cf->ndomains);
    event_base_dispatch(s.base);
    rb_rebalance_shutdown(); /* stops where it is: a restart resumes */
    for (int i = 0; i < s.nworkers; i++) {
        pthread_join(s.workers[i].thread, NULL);
    }
    for (int i = 0; i < s.nworkers; i++) {
        gw_worker_destroy(&s.workers[i]);
    }
    gw_control_stop(s.ctl); /* the lease revoked: this instance leaves the fleet now */
    lb_info("stopped");
    pthread_mutex_lock(&map_mu);
    map_server = NULL;
    pthread_mutex_unlock(&map_mu);
    event_free(s.ev_map);
    event_free(s.ev_rb);
    event_free(ev_hup);
    event_free(ev_term);
    event_free(ev_int);
    free(s.workers);
    gw_http_tls_context_free(tls);
    cf_config_unref(s.cf);
    event_base_free(s.base);
    free(s.path);
    libevent_global_shutdown();
    return 0;
}
