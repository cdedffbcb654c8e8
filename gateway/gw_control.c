/*
 * gw_control.c — registration, shard maps and the fleet view in etcd
 * (lib/lb_etcd.h), on the main thread's loop.
 *
 * Start (boot): grant a lease, put the registration under it, read the
 * whole prefix (instances and maps), install the store's maps (seeding a
 * missing one from the map file with a create-only transaction), then watch
 * the prefix from the revision read + 1.  A keepalive runs every ttl/3; when
 * the lease is found gone (the process was stopped, or etcd lost it for
 * longer than the TTL) the boot runs again: a new lease, the registration
 * put again, everything re-read before the view is trusted.  A watch whose
 * start revision was compacted also re-reads before it resumes.
 */
#include "gateway/gw_control.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "config/cf_config.h"
#include "config/cf_yaml.h"
#include "lib/lb_etcd.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "model/md_error.h"
#include "routing/rt_shardmap.h"

#define CALL_TIMEOUT_MAX_MS 2000
#define BOOT_BACKOFF_MIN_MS 200
#define BOOT_BACKOFF_MAX_MS 2000

/* One backend with a shard map file: its key and the revision served. */
struct served {
    char *backend;
    char *key;
    int64_t rev; /* the store revision of the map served; 0: none (the file's) */
    int seeding;
};

struct gw_control {
    struct event_base *base;
    struct lb_etcd *etcd;
    struct lb_etcd_watch *watch;
    struct gw_control_hooks hooks;
    char *prefix;      /* P/ */
    char *inst_prefix; /* P/instances/ */
    char *map_prefix;  /* P/shardmap/ */
    char *inst_key;    /* P/instances/<id> */
    int64_t ttl_s;
    int64_t lease;
    int booting;
    int synced;
    int resume_watch; /* the watch waits for a re-read (compacted) */
    int ka_inflight;
    int republish; /* a registration put failed: the next keepalive tick puts it again */
    int revoked;
    struct event *ka_timer;
    struct event *retry_timer;
    int64_t backoff;
    struct served *maps;
    size_t nmaps;
};

/* What every thread may read (GET /admin/fleet, /ready, /metrics). */
static pthread_mutex_t snap_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char id[160];
    char listen[300];
    char admin[300];
    long pid;
    char started[40];
    int etcd_mode;
    char etcd[300];
    char prefix[256];
    int reachable;
    int watch_up;
    int registered;
    int64_t revision;
    struct json_object *instances; /* id → registration document */
} snap;

void gw_control_process_init(const struct cf_config *cf)
{
    pthread_mutex_lock(&snap_mu);
    if (cf->control.instance != NULL) {
        snprintf(snap.id, sizeof(snap.id), "%s", cf->control.instance);
    } else {
        char host[128] = "localhost";
        if (gethostname(host, sizeof(host) - 1) < 0) {
            snprintf(host, sizeof(host), "localhost");
        }
        host[sizeof(host) - 1] = '\0';
        snprintf(snap.id, sizeof(snap.id), "%s:%d", host, cf->listen_port);
    }
    snprintf(snap.listen, sizeof(snap.listen), "%s:%d", cf->listen_host, cf->listen_port);
    snprintf(snap.admin, sizeof(snap.admin), "%s:%d", cf->admin_host, cf->admin_port);
    snap.pid = (long)getpid();
    lb_now_rfc3339(snap.started, sizeof(snap.started));
    pthread_mutex_unlock(&snap_mu);
}

/* ---- the shared snapshot ----------------------------------------------------------- */

static void note_result(struct gw_control *c, const struct lb_etcd_result *r)
{
    (void)c;
    pthread_mutex_lock(&snap_mu);
    int was = snap.reachable;
    snap.reachable = !r->unreachable;
    if (r->revision > snap.revision) {
        snap.revision = r->revision;
    }
    pthread_mutex_unlock(&snap_mu);
    if (was && r->unreachable) {
        lb_warn("control store unreachable (%s): serving the last shard maps", r->err);
    } else if (!was && !r->unreachable) {
        lb_info("control store %s reachable again", snap.etcd);
    }
}

static struct json_object *parse_doc(const char *s, size_t len)
{
    struct json_tokener *tok = json_tokener_new();
    struct json_object *doc = json_tokener_parse_ex(tok, s, (int)len);
    if (doc == NULL && json_tokener_get_error(tok) == json_tokener_continue) {
        doc = json_tokener_parse_ex(tok, "", -1);
    }
    json_tokener_free(tok);
    if (doc != NULL && !json_object_is_type(doc, json_type_object)) {
        json_object_put(doc);
        doc = NULL;
    }
    return doc;
}

static struct json_object *self_doc(const struct cf_config *cf);

/* The registration: who, where, and which map version it serves. */
static char *registration(struct gw_control *c)
{
    pthread_mutex_lock(&snap_mu);
    struct json_object *o = self_doc(c->hooks.config(c->hooks.srv));
    pthread_mutex_unlock(&snap_mu);
    char *s = lb_xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    return s;
}

static struct served *served_named(const struct gw_control *c, const char *backend)
{
    for (size_t i = 0; i < c->nmaps; i++) {
        if (strcmp(c->maps[i].backend, backend) == 0) {
            return &c->maps[i];
        }
    }
    return NULL;
}

static int64_t version_served(const struct gw_control *c, const char *backend)
{
    const struct cf_config *cf = c->hooks.config(c->hooks.srv);
    for (size_t i = 0; i < cf->nbackends; i++) {
        if (strcmp(cf->backends[i].name, backend) == 0 && cf->backends[i].map != NULL) {
            return rt_shardmap_version(cf->backends[i].map);
        }
    }
    return 0;
}

/* ---- maps ------------------------------------------------------------------------ */

static void publish(struct gw_control *c);

/* Serve the store's map of m (kv) unless it is the one served already. */
static void install_kv(struct gw_control *c, struct served *m, const struct lb_etcd_kv *kv,
                       int startup)
{
    if (kv->mod_revision <= m->rev) {
        return;
    }
    struct json_object *doc = parse_doc(kv->value, kv->value_len);
    char err[1024];
    int64_t before = version_served(c, m->backend);
    if (doc == NULL) {
        lb_error("control store: %s is not a JSON object: not installed; this instance keeps "
                 "serving shard map version %" PRId64 " of backend '%s'",
                 m->key, before, m->backend);
        return;
    }
    int64_t v = json_object_get_int64(json_object_object_get(doc, "version"));
    if (c->hooks.install(c->hooks.srv, m->backend, doc, startup, err, sizeof(err)) < 0) {
        lb_error("control store: shard map version %" PRId64 " of backend '%s' (revision %" PRId64
                 ") not installed: %s; this instance keeps serving version %" PRId64,
                 v, m->backend, kv->mod_revision, err, before);
        json_object_put(doc);
        return;
    }
    json_object_put(doc);
    m->rev = kv->mod_revision;
    if (startup && before != v) {
        lb_info("backend '%s': the control store's shard map (version %" PRId64
                ") replaces the map file's (version %" PRId64 ")",
                m->backend, v, before);
    } else if (startup) {
        lb_info("backend '%s': shard map version %" PRId64 " from the control store (the map "
                "file had the same)",
                m->backend, v);
    } else if (before != v) {
        lb_info("backend '%s': shard map version %" PRId64 " from the control store (revision "
                "%" PRId64 "), was %" PRId64,
                m->backend, v, kv->mod_revision, before);
    }
    publish(c);
}

static void on_seed(const struct lb_etcd_result *r, void *arg);

/* A map the store does not have yet: the map file's, created only if still
 * absent (another instance may seed it at the same time: then its map wins). */
static void seed(struct gw_control *c, struct served *m)
{
    const struct cf_config *cf = c->hooks.config(c->hooks.srv);
    const char *path = NULL;
    for (size_t i = 0; i < cf->nbackends; i++) {
        if (strcmp(cf->backends[i].name, m->backend) == 0) {
            path = cf->backends[i].shard_map_path;
        }
    }
    char err[512];
    struct json_object *doc = path != NULL ? cf_yaml_load_file(path, err, sizeof(err)) : NULL;
    if (doc == NULL) {
        lb_error("control store: cannot seed %s from the map file: %s", m->key,
                 path == NULL ? "the backend has no map file" : err);
        return;
    }
    const char *text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);
    struct lb_etcd_cmp cmp = {m->key, LB_ETCD_CREATE, LB_ETCD_EQUAL, 0};
    struct lb_etcd_op put = {LB_ETCD_OP_PUT, m->key, text, strlen(text), 0};
    struct lb_etcd_op get = {LB_ETCD_OP_RANGE, m->key, NULL, 0, 0};
    m->seeding = 1;
    lb_etcd_txn(c->etcd, &cmp, 1, &put, 1, &get, 1, on_seed, m);
    json_object_put(doc);
}

static struct gw_control *the_control; /* one per process: the seeds' owner */

static void on_seed(const struct lb_etcd_result *r, void *arg)
{
    struct served *m = arg;
    struct gw_control *c = the_control;
    m->seeding = 0;
    note_result(c, r);
    if (!r->ok) {
        lb_warn("control store: %s not seeded (%s); the next read tries again", m->key, r->err);
        return;
    }
    if (r->succeeded) {
        if (r->revision > m->rev) {
            m->rev = r->revision;
        }
        lb_info("control store: %s seeded from the map file (version %" PRId64 ")", m->key,
                version_served(c, m->backend));
        return;
    }
    if (r->nkvs > 0) { /* another instance seeded it first: its map wins */
        install_kv(c, m, &r->kvs[0], 1);
    }
}

/* ---- registration, reads, boot ------------------------------------------------------ */

static void on_publish(const struct lb_etcd_result *r, void *arg)
{
    struct gw_control *c = arg;
    note_result(c, r);
    if (!r->ok) {
        lb_warn("control store: registration %s not updated (%s); trying again", c->inst_key,
                r->err);
        c->republish = 1;
    }
}

static void publish(struct gw_control *c)
{
    if (c->lease == 0 || c->booting) {
        return; /* the boot puts it */
    }
    c->republish = 0;
    char *v = registration(c);
    lb_etcd_put(c->etcd, c->inst_key, v, strlen(v), c->lease, on_publish, c);
    free(v);
}

/* The whole prefix as read: instances replace the view, maps are installed
 * (startup: before the first sync, the store wins over the file). */
static void read_all(struct gw_control *c, const struct lb_etcd_result *r)
{
    struct json_object *inst = json_object_new_object();
    size_t ipl = strlen(c->inst_prefix);
    for (size_t i = 0; i < r->nkvs; i++) {
        const struct lb_etcd_kv *kv = &r->kvs[i];
        if (strncmp(kv->key, c->inst_prefix, ipl) == 0) {
            struct json_object *doc = parse_doc(kv->value, kv->value_len);
            if (doc != NULL) {
                json_object_object_add(inst, kv->key + ipl, doc);
            }
        }
    }
    pthread_mutex_lock(&snap_mu);
    json_object_put(snap.instances);
    snap.instances = inst;
    pthread_mutex_unlock(&snap_mu);
    for (size_t k = 0; k < c->nmaps; k++) {
        struct served *m = &c->maps[k];
        const struct lb_etcd_kv *found = NULL;
        for (size_t i = 0; i < r->nkvs; i++) {
            if (strcmp(r->kvs[i].key, m->key) == 0) {
                found = &r->kvs[i];
            }
        }
        if (found != NULL) {
            install_kv(c, m, found, !c->synced);
        } else if (!m->seeding) {
            seed(c, m);
        }
    }
}

static void boot(struct gw_control *c);

static void boot_failed(struct gw_control *c, const char *what, const char *err)
{
    c->booting = 0;
    if (!c->synced) {
        lb_warn("control store %s: %s failed (%s): starting on the map files as cached; "
                "registering and reading the maps again in the background",
                snap.etcd, what, err);
        c->synced = 1;
    } else {
        lb_warn("control store %s: %s failed (%s); trying again", snap.etcd, what, err);
    }
    struct timeval tv =
        lb_tv_ms(lb_backoff_next(&c->backoff, BOOT_BACKOFF_MIN_MS, BOOT_BACKOFF_MAX_MS));
    evtimer_add(c->retry_timer, &tv);
}

static void on_watch(const struct lb_etcd_watch_update *u, void *arg);

static void on_read(const struct lb_etcd_result *r, void *arg)
{
    struct gw_control *c = arg;
    note_result(c, r);
    if (!r->ok) {
        boot_failed(c, "reading the prefix", r->err);
        return;
    }
    read_all(c, r);
    c->booting = 0;
    c->backoff = 0;
    if (c->watch == NULL) {
        c->watch = lb_etcd_watch_start(c->etcd, c->prefix, 1, r->revision + 1, on_watch, c);
    } else if (c->resume_watch) {
        c->resume_watch = 0;
        lb_etcd_watch_resume(c->watch, r->revision + 1);
    }
    if (!c->synced) {
        lb_info("control store %s: registered as %s, shard maps read at revision %" PRId64,
                snap.etcd, snap.id, r->revision);
    }
    c->synced = 1;
    publish(c); /* map versions may have changed while reading */
}

static void on_register(const struct lb_etcd_result *r, void *arg)
{
    struct gw_control *c = arg;
    note_result(c, r);
    if (!r->ok) {
        boot_failed(c, "registering", r->err);
        return;
    }
    pthread_mutex_lock(&snap_mu);
    snap.registered = 1;
    pthread_mutex_unlock(&snap_mu);
    lb_etcd_range(c->etcd, c->prefix, 1, on_read, c);
}

static void on_grant(const struct lb_etcd_result *r, void *arg)
{
    struct gw_control *c = arg;
    note_result(c, r);
    if (!r->ok) {
        boot_failed(c, "granting a lease", r->err);
        return;
    }
    c->lease = r->lease_id;
    char *v = registration(c);
    lb_etcd_put(c->etcd, c->inst_key, v, strlen(v), c->lease, on_register, c);
    free(v);
}

/* Register (a new lease when there is none) and read everything. */
static void boot(struct gw_control *c)
{
    c->booting = 1;
    if (c->lease == 0) {
        lb_etcd_lease_grant(c->etcd, c->ttl_s, on_grant, c);
    } else {
        lb_etcd_range(c->etcd, c->prefix, 1, on_read, c);
    }
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct gw_control *c = arg;
    if (!c->booting) {
        boot(c);
    }
}

static void on_keepalive(const struct lb_etcd_result *r, void *arg)
{
    struct gw_control *c = arg;
    c->ka_inflight = 0;
    note_result(c, r);
    if (r->unreachable || c->booting) {
        return; /* the lease may still live: the next keepalive tells */
    }
    if (!r->ok || r->ttl <= 0) {
        lb_warn("control store: the registration lease of %s is gone (the process was stopped, "
                "or etcd was unreachable, for longer than lease_ttl_s=%" PRId64
                "): registering again and re-reading the shard maps",
                snap.id, c->ttl_s);
        pthread_mutex_lock(&snap_mu);
        snap.registered = 0;
        pthread_mutex_unlock(&snap_mu);
        c->lease = 0;
        boot(c);
    }
}

static void on_ka_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct gw_control *c = arg;
    if (c->booting || c->lease == 0 || c->ka_inflight) {
        return;
    }
    if (c->republish) {
        publish(c);
    }
    c->ka_inflight = 1;
    lb_etcd_lease_keepalive(c->etcd, c->lease, on_keepalive, c);
}

/* ---- the watch ------------------------------------------------------------------ */

static void on_reread_needed(struct gw_control *c)
{
    c->resume_watch = 1;
    if (!c->booting) {
        boot(c);
    }
}

static void on_event(struct gw_control *c, const struct lb_etcd_event *ev)
{
    const struct lb_etcd_kv *kv = &ev->kv;
    size_t ipl = strlen(c->inst_prefix), mpl = strlen(c->map_prefix);
    if (strncmp(kv->key, c->inst_prefix, ipl) == 0) {
        struct json_object *doc =
            ev->type == LB_ETCD_PUT ? parse_doc(kv->value, kv->value_len) : NULL;
        pthread_mutex_lock(&snap_mu);
        if (snap.instances == NULL) {
            snap.instances = json_object_new_object();
        }
        if (doc != NULL) {
            json_object_object_add(snap.instances, kv->key + ipl, doc);
        } else {
            json_object_object_del(snap.instances, kv->key + ipl);
        }
        pthread_mutex_unlock(&snap_mu);
        if (ev->type == LB_ETCD_DELETE) {
            lb_info("fleet: instance %s left (its lease ended)", kv->key + ipl);
        }
        return;
    }
    if (strncmp(kv->key, c->map_prefix, mpl) != 0) {
        return;
    }
    struct served *m = served_named(c, kv->key + mpl);
    if (m == NULL) {
        return; /* a backend this instance does not have */
    }
    if (ev->type == LB_ETCD_DELETE) {
        lb_warn("control store: %s was deleted; this instance keeps serving shard map version "
                "%" PRId64 " (the next PUT /admin/shardmap creates the key again)",
                m->key, version_served(c, m->backend));
        m->rev = 0;
        return;
    }
    install_kv(c, m, kv, 0);
}

static void on_watch(const struct lb_etcd_watch_update *u, void *arg)
{
    struct gw_control *c = arg;
    switch (u->state) {
    case LB_ETCD_WATCH_UP:
        pthread_mutex_lock(&snap_mu);
        snap.watch_up = 1;
        pthread_mutex_unlock(&snap_mu);
        lb_info("control store: watching %s", c->prefix);
        break;
    case LB_ETCD_WATCH_DOWN: {
        pthread_mutex_lock(&snap_mu);
        int was = snap.watch_up;
        snap.watch_up = 0;
        pthread_mutex_unlock(&snap_mu);
        if (was) {
            lb_warn("control store: the watch on %s broke (%s); reconnecting, resuming after "
                    "the last revision seen",
                    c->prefix, u->err != NULL ? u->err : "?");
        }
        break;
    }
    case LB_ETCD_WATCH_COMPACTED:
        lb_warn("control store: the watch's revision was compacted (at %" PRId64
                "): re-reading %s before watching again",
                u->revision, c->prefix);
        pthread_mutex_lock(&snap_mu);
        snap.watch_up = 0;
        pthread_mutex_unlock(&snap_mu);
        on_reread_needed(c);
        break;
    case LB_ETCD_WATCH_EVENTS:
        pthread_mutex_lock(&snap_mu);
        if (u->revision > snap.revision) {
            snap.revision = u->revision;
        }
        pthread_mutex_unlock(&snap_mu);
        for (size_t i = 0; i < u->nevents; i++) {
            on_event(c, &u->events[i]);
        }
        break;
    }
}

/* ---- PUT /admin/shardmap ------------------------------------------------------------ */

struct put_ctx {
    struct gw_control *c;
    struct served *m;
    gw_control_put_cb done;
    void *arg;
};

static void on_put(const struct lb_etcd_result *r, void *arg)
{
    struct put_ctx *p = arg;
    struct gw_control *c = p->c;
    struct md_error e = {0};
    note_result(c, r);
    if (r->unreachable) {
        md_error_set(&e, MD_E_UNAVAILABLE, NULL,
                     "the control store (etcd %s) is unreachable (%s): the shard map of backend "
                     "'%s' was not changed",
                     snap.etcd, r->err, p->m->backend);
    } else if (!r->ok) {
        md_error_set(&e, MD_E_UNAVAILABLE, NULL,
                     "the control store refused the shard map of backend '%s': %s", p->m->backend,
                     r->err);
    } else if (!r->succeeded) {
        char now[160] = "the key is gone";
        if (r->nkvs > 0) {
            struct json_object *doc = parse_doc(r->kvs[0].value, r->kvs[0].value_len);
            snprintf(now, sizeof(now), "it holds version %" PRId64 " (store revision %" PRId64 ")",
                     doc != NULL ? json_object_get_int64(json_object_object_get(doc, "version"))
                                 : 0,
                     r->kvs[0].mod_revision);
            json_object_put(doc);
        }
        md_error_set(&e, MD_E_CONFLICT, "version",
                     "backend '%s': the shard map in the control store changed meanwhile (%s; "
                     "this instance applied on top of revision %" PRId64
                     "): another apply won; read the map again and retry",
                     p->m->backend, now, p->m->rev);
    }
    p->done(e.message[0] != '\0' ? &e : NULL, r->ok && r->succeeded ? r->revision : 0, p->arg);
    free(p);
}

void gw_control_put_map(struct gw_control *c, const char *backend, struct json_object *doc,
                        gw_control_put_cb done, void *arg)
{
    struct served *m = served_named(c, backend);
    if (m == NULL) {
        struct md_error e = {0};
        md_error_set(&e, MD_E_CONFLICT, NULL,
                     "backend '%s' got its shard_map file after the start: the control store "
                     "keeps its map after a restart",
                     backend);
        done(&e, 0, arg);
        return;
    }
    struct put_ctx *p = lb_xcalloc(1, sizeof(*p));
    p->c = c;
    p->m = m;
    p->done = done;
    p->arg = arg;
    const char *text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);
    struct lb_etcd_cmp cmp = {m->key, LB_ETCD_MOD, LB_ETCD_EQUAL, m->rev};
    struct lb_etcd_op put = {LB_ETCD_OP_PUT, m->key, text, strlen(text), 0};
    struct lb_etcd_op get = {LB_ETCD_OP_RANGE, m->key, NULL, 0, 0};
    lb_etcd_txn(c->etcd, &cmp, 1, &put, 1, &get, 1, on_put, p);
}

int64_t gw_control_served(const struct gw_control *c, const char *backend)
{
    const struct served *m = served_named(c, backend);
    return m != NULL ? m->rev : 0;
}

void gw_control_set_served(struct gw_control *c, const char *backend, int64_t rev)
{
    struct served *m = served_named(c, backend);
    if (m != NULL && rev > m->rev) {
        m->rev = rev;
    }
    publish(c);
}

/* ---- life ------------------------------------------------------------------------ */

static char *joined(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = lb_xmalloc(n);
    snprintf(s, n, "%s%s%s", a, b, c);
    return s;
}

struct gw_control *gw_control_new(struct event_base *base, const struct cf_config *cf,
                                  const struct gw_control_hooks *hooks)
{
    const struct cf_control *cc = &cf->control;
    if (cc->etcd_host == NULL) {
        return NULL;
    }
    struct gw_control *c = lb_xcalloc(1, sizeof(*c));
    c->base = base;
    c->hooks = *hooks;
    c->ttl_s = cc->lease_ttl_s;
    int64_t tmo = c->ttl_s * 1000 / 3;
    c->etcd = lb_etcd_new(base, cc->etcd_host, cc->etcd_port,
                          tmo < CALL_TIMEOUT_MAX_MS ? tmo : CALL_TIMEOUT_MAX_MS);
    c->prefix = joined(cc->prefix, "/", "");
    c->inst_prefix = joined(cc->prefix, "/instances/", "");
    c->map_prefix = joined(cc->prefix, "/shardmap/", "");
    pthread_mutex_lock(&snap_mu);
    snap.etcd_mode = 1;
    snprintf(snap.etcd, sizeof(snap.etcd), "%s:%d", cc->etcd_host, cc->etcd_port);
    snprintf(snap.prefix, sizeof(snap.prefix), "%s", cc->prefix);
    snap.reachable = 1; /* until a call says otherwise (logs the first failure) */
    c->inst_key = joined(c->inst_prefix, snap.id, "");
    pthread_mutex_unlock(&snap_mu);
    for (size_t i = 0; i < cf->nbackends; i++) {
        if (cf->backends[i].map != NULL && cf->backends[i].shard_map_path != NULL) {
            c->maps = realloc(c->maps, (c->nmaps + 1) * sizeof(*c->maps));
            if (c->maps == NULL) {
                lb_error("out of memory");
                abort();
            }
            c->maps[c->nmaps].backend = lb_xstrdup(cf->backends[i].name);
            c->maps[c->nmaps].key = joined(c->map_prefix, cf->backends[i].name, "");
            c->maps[c->nmaps].rev = 0;
            c->maps[c->nmaps].seeding = 0;
            c->nmaps++;
        }
    }
    c->ka_timer = event_new(base, -1, EV_PERSIST, on_ka_timer, c);
    struct timeval tv = lb_tv_ms(c->ttl_s * 1000 / 3);
    event_add(c->ka_timer, &tv);
    c->retry_timer = evtimer_new(base, on_retry, c);
    the_control = c;
    boot(c);
    return c;
}

int gw_control_synced(const struct gw_control *c)
{
    return c == NULL || c->synced;
}

static void on_revoked(const struct lb_etcd_result *r, void *arg)
{
    struct gw_control *c = arg;
    c->revoked = 1;
    if (!r->ok) {
        lb_warn("control store: the lease was not revoked (%s): %s leaves the fleet when it "
                "expires",
                r->err, snap.id);
    }
}

void gw_control_stop(struct gw_control *c)
{
    if (c == NULL) {
        return;
    }
    event_free(c->ka_timer);
    event_free(c->retry_timer);
    lb_etcd_watch_stop(c->watch);
    c->watch = NULL;
    if (c->lease != 0) {
        lb_etcd_lease_revoke(c->etcd, c->lease, on_revoked, c);
        while (!c->revoked) {
            event_base_loop(c->base, EVLOOP_ONCE);
        }
    }
    lb_etcd_free(c->etcd);
    for (size_t i = 0; i < c->nmaps; i++) {
        free(c->maps[i].backend);
        free(c->maps[i].key);
    }
    free(c->maps);
    free(c->prefix);
    free(c->inst_prefix);
    free(c->map_prefix);
    free(c->inst_key);
    the_control = NULL;
    pthread_mutex_lock(&snap_mu);
    json_object_put(snap.instances);
    snap.instances = NULL;
    snap.etcd_mode = 0;
    pthread_mutex_unlock(&snap_mu);
    free(c);
}

/* ---- views (any thread) ------------------------------------------------------------ */

/* {backend: version} of the maps cf serves (backends with a map file). */
static struct json_object *map_versions(const struct cf_config *cf)
{
    struct json_object *mv = json_object_new_object();
    for (size_t i = 0; i < cf->nbackends; i++) {
        if (cf->backends[i].map != NULL && cf->backends[i].shard_map_path != NULL) {
            json_object_object_add(mv, cf->backends[i].name,
                                   json_object_new_int64(rt_shardmap_version(cf->backends[i].map)));
        }
    }
    return mv;
}

/* This instance's registration document (snap_mu held): its identity and
 * the map version it serves per backend with a map file. */
static struct json_object *self_doc(const struct cf_config *cf)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(snap.id));
    json_object_object_add(o, "listen", json_object_new_string(snap.listen));
    json_object_object_add(o, "admin", json_object_new_string(snap.admin));
    json_object_object_add(o, "pid", json_object_new_int64(snap.pid));
    json_object_object_add(o, "started", json_object_new_string(snap.started));
    json_object_object_add(o, "map_versions", map_versions(cf));
    return o;
}

static struct json_object *store_doc(void)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "etcd", json_object_new_string(snap.etcd));
    json_object_object_add(o, "prefix", json_object_new_string(snap.prefix));
    json_object_object_add(o, "reachable", json_object_new_boolean(snap.reachable));
    json_object_object_add(o, "revision", json_object_new_int64(snap.revision));
    json_object_object_add(o, "watch", json_object_new_boolean(snap.watch_up));
    json_object_object_add(o, "registered", json_object_new_boolean(snap.registered));
    return o;
}

struct json_object *gw_control_fleet_json(const struct cf_config *cf)
{
    struct json_object *doc = json_object_new_object();
    struct json_object *arr = json_object_new_array();
    pthread_mutex_lock(&snap_mu);
    json_object_object_add(doc, "control",
                           json_object_new_string(snap.etcd_mode ? "etcd" : "file"));
    int self_seen = 0;
    if (snap.etcd_mode) {
        json_object_object_add(doc, "store", store_doc());
        if (snap.instances != NULL) {
            json_object_object_foreach(snap.instances, id, reg)
            {
                struct json_object *o = NULL;
                if (json_object_deep_copy(reg, &o, NULL) != 0 || o == NULL) {
                    continue;
                }
                int self = strcmp(id, snap.id) == 0;
                self_seen |= self;
                json_object_object_add(o, "self", json_object_new_boolean(self));
                json_object_array_add(arr, o);
            }
        }
    }
    if (!self_seen) { /* file mode, or not (yet) registered */
        struct json_object *o = self_doc(cf);
        json_object_object_add(o, "self", json_object_new_boolean(1));
        if (snap.etcd_mode) {
            json_object_object_add(o, "registered", json_object_new_boolean(0));
        }
        json_object_array_add(arr, o);
    }
    pthread_mutex_unlock(&snap_mu);
    json_object_object_add(doc, "instances", arr);
    return doc;
}

struct json_object *gw_control_status_json(const struct cf_config *cf)
{
    pthread_mutex_lock(&snap_mu);
    struct json_object *o;
    if (snap.etcd_mode) {
        o = store_doc();
        json_object_object_add(o, "mode", json_object_new_string("etcd"));
    } else {
        o = json_object_new_object();
        json_object_object_add(o, "mode", json_object_new_string("file"));
    }
    pthread_mutex_unlock(&snap_mu);
    json_object_object_add(o, "map_versions", map_versions(cf));
    return o;
}

void gw_control_metrics(struct evbuffer *out)
{
    pthread_mutex_lock(&snap_mu);
    int mode = snap.etcd_mode, up = snap.reachable, watch = snap.watch_up;
    pthread_mutex_unlock(&snap_mu);
    if (!mode) {
        return;
    }
    evbuffer_add_printf(out,
                        "# HELP polygate_control_up 1 when the control store (etcd) answered the "
                        "last call, 0 when it did not.\n"
                        "# TYPE polygate_control_up gauge\n"
                        "polygate_control_up %d\n"
                        "# HELP polygate_control_watch_up 1 while the watch on the control "
                        "store's prefix is established.\n"
                        "# TYPE polygate_control_watch_up gauge\n"
                        "polygate_control_watch_up %d\n",
                        up, watch);
}
