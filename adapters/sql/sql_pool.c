/*
 * sql_pool.c — the pool shared by the SQL adapters (see sql_pool.h).
 */
#include "adapters/sql/sql_pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/cf_config.h"
#include "lib/lb_json.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "model/md_query.h"

/* ---- small helpers ------------------------------------------------------------------ */

void sql_one_line(char *s)
{
    for (char *p = s; *p != '\0'; p++) {
        if (*p == '\n' || *p == '\r' || *p == '\t') {
            *p = (p[1] == '\0') ? '\0' : ' ';
        }
    }
}

static void copy_line(char *dst, size_t n, const char *src, const char *dflt)
{
    snprintf(dst, n, "%s", src != NULL && src[0] != '\0' ? src : dflt);
    sql_one_line(dst);
}

struct json_object *sql_pool_json(const char *v, size_t len)
{
    char msg[8];
    if (lb_json_validate(v, len, 1000, msg, sizeof(msg)) == LB_JSON_OK) {
        return lb_json_raw(v, len);
    }
    return json_object_new_string_len(v, (int)len); /* not JSON (a hand-edited row) */
}

/* ---- completing ----------------------------------------------------------------- */

static void call_free(struct sql_call *call)
{
    struct sql_pool *p = call->sh->pool;
    if (p->drv->call_clear != NULL) {
        p->drv->call_clear(call);
    }
    sql_stmt_free(&call->st);
    free(call);
}

void sql_pool_complete(struct sql_call *call, struct ad_res *res)
{
    if (res->shard == NULL) {
        res->shard = call->sh->cfs->name;
    }
    call->sh->pending--;
    if (call->cb != NULL) {
        call->cb(res, call->arg);
    }
    call_free(call);
}

/* Complete later, from the loop (never inside submit/cancel). */
static void defer(struct sql_call *call)
{
    TAILQ_INSERT_TAIL(&call->sh->pool->done, call, link);
    event_active(call->sh->pool->kick, EV_TIMEOUT, 0);
}

void sql_pool_fail(struct sql_call *call, enum ad_status status, const char *what,
                   const char *detail)
{
    struct ad_res res;
    ad_res_init(&res);
    struct sql_shard *sh = call->sh;
    ad_res_error(&res, status, sh->cfs->name, "backend '%s' (%s shard '%s') %s: %s",
                 sh->pool->be->name, sh->pool->drv->store, sh->cfs->name, what, detail);
    sql_pool_complete(call, &res);
}

enum sql_fence_miss sql_pool_fence_miss(const struct sql_call *call, int upsert_can_miss)
{
    const struct ad_req *req = call->req;
    if (!call->st.fence || req == NULL || req->domain->shard_key == NULL) {
        return SQL_MISS_PLAIN;
    }
    switch (req->op) {
    case AD_INSERT: /* a duplicate key is an error, never "no row" */
        return req->slot >= 0 ? SQL_MISS_MOVED : SQL_MISS_PLAIN;
    case AD_PUT:
        if (req->if_match < 0 && !upsert_can_miss) {
            return req->slot >= 0 ? SQL_MISS_MOVED : SQL_MISS_PLAIN;
        }
        return SQL_MISS_PROBE;
    case AD_PATCH:
    case AD_DELETE:
        return SQL_MISS_PROBE;
    default:
        return SQL_MISS_PLAIN;
    }
}

void sql_pool_slot_moved(const struct sql_call *call, struct ad_res *res, const char *slot)
{
    const struct sql_shard *sh = call->sh;
    ad_res_error(res, AD_SLOT_MOVED, sh->cfs->name,
                 "slot %s of backend '%s' is not owned by shard '%s' (it moved or is moving to "
                 "another shard); nothing was written, retry",
                 slot, sh->pool->be->name, sh->cfs->name);
}

static void fail_unavailable(struct sql_call *call, const char *detail)
{
    sql_pool_fail(call, AD_UNAVAILABLE, "is unavailable", detail);
}

/* Migration mig of sh ended without success (next: NONE when it was lost
 * with its connection, FAILED when the server refused it): the requests
 * waiting for it fail. */
static void mig_failed(struct sql_shard *sh, int mig, enum sql_mig_state next, const char *why)
{
    sh->migs[mig] = next;
    struct sql_call *c = TAILQ_FIRST(&sh->queue);
    while (c != NULL) {
        struct sql_call *nx = TAILQ_NEXT(c, link);
        if (c->mig == mig && !c->is_migration) {
            TAILQ_REMOVE(&sh->queue, c, link);
            sql_pool_fail(c, AD_UNAVAILABLE, "cannot serve the domain: auto_migrate failed", why);
        }
        c = nx;
    }
}

void sql_pool_migrated(struct sql_call *call, const char *error)
{
    struct sql_shard *sh = call->sh;
    struct sql_pool *p = sh->pool;
    const char *table = p->migs[call->mig].table;
    if (error == NULL) {
        sh->migs[call->mig] = SQL_MIG_DONE;
        lb_info("%s backend '%s' shard '%s': table '%s' migrated", p->drv->name, p->be->name,
                sh->cfs->name, table);
    } else {
        char msg[200];
        copy_line(msg, sizeof(msg), error, "no result");
        lb_error("%s backend '%s' shard '%s': auto_migrate of '%s' failed: %s", p->drv->name,
                 p->be->name, sh->cfs->name, table, msg);
        mig_failed(sh, call->mig, SQL_MIG_FAILED, msg);
    }
    struct ad_res res;
    ad_res_init(&res);
    sql_pool_complete(call, &res);
}

static void fail_queue(struct sql_shard *sh, const char *why)
{
    while (!TAILQ_EMPTY(&sh->queue)) {
        struct sql_call *c = TAILQ_FIRST(&sh->queue);
        TAILQ_REMOVE(&sh->queue, c, link);
        if (c->is_migration) {
            sh->migs[c->mig] = SQL_MIG_NONE; /* run again when the shard is back */
        }
        fail_unavailable(c, why);
    }
}

/* ---- connections ------------------------------------------------------------------ */

static int live(const struct sql_shard *sh)
{
    int n = 0;
    for (int i = 0; i < sh->nconns; i++) {
        enum sql_conn_state s = sql_shard_conn(sh, i)->state;
        n += s == SQL_C_IDLE || s == SQL_C_BUSY;
    }
    return n;
}

static void schedule_retry(struct sql_conn *c)
{
    struct sql_shard *sh = c->sh;
    const struct cf_pool *cp = &sh->pool->be->pool;
    int keep = cp->min > 0 ? cp->min : 1;
    if (sh->pool->closing || (c->idx >= keep && !sh->down)) {
        return; /* grown on demand: reopened on demand */
    }
    struct timeval tv =
        lb_tv_ms(lb_backoff_next(&c->backoff_ms, cp->backoff_min_ms, cp->backoff_max_ms));
    evtimer_add(c->timer, &tv);
}

static void shard_lost(struct sql_shard *sh, const char *why)
{
    struct sql_pool *p = sh->pool;
    if (live(sh) > 0 || p->closing) {
        return;
    }
    if (sh->was_up) {
        lb_warn("%s backend '%s' shard '%s' is down: %s", p->drv->name, p->be->name, sh->cfs->name,
                why);
        sh->was_up = 0;
    }
    sh->down = 1;
    fail_queue(sh, why);
}

static void conn_close(struct sql_conn *c)
{
    evtimer_del(c->timer);
    c->sh->pool->drv->conn_close(c);
    c->state = SQL_C_DOWN;
}

static void conn_start(struct sql_conn *c)
{
    struct timeval tv = lb_tv_ms(c->sh->pool->be->pool.connect_timeout_ms);
    c->state = SQL_C_CONNECTING;
    evtimer_add(c->timer, &tv);
    c->sh->pool->drv->conn_start(c);
}

void sql_pool_connected(struct sql_conn *c, const char *server_info)
{
    struct sql_shard *sh = c->sh;
    struct sql_pool *p = sh->pool;
    evtimer_del(c->timer);
    c->state = SQL_C_IDLE;
    c->backoff_ms = 0;
    sh->down = 0;
    if (!sh->was_up) {
        lb_info("%s backend '%s' shard '%s' is up%s%s%s", p->drv->name, p->be->name, sh->cfs->name,
                server_info != NULL ? " (" : "", server_info != NULL ? server_info : "",
                server_info != NULL ? ")" : "");
        sh->was_up = 1;
    }
    sql_pool_dispatch(sh);
}

void sql_pool_connect_failed(struct sql_conn *c, const char *why)
{
    char msg[200];
    copy_line(msg, sizeof(msg), why, "connect failed");
    lb_debug("%s shard '%s': connect failed: %s", c->sh->pool->drv->name, c->sh->cfs->name, msg);
    conn_close(c);
    shard_lost(c->sh, msg);
    schedule_retry(c);
}

void sql_pool_conn_broken(struct sql_conn *c, const char *why)
{
    char msg[200];
    copy_line(msg, sizeof(msg), why, "connection lost");
    struct sql_call *call = c->call;
    c->call = NULL;
    conn_close(c);
    if (call != NULL) {
        if (call->is_migration) {
            mig_failed(c->sh, call->mig, SQL_MIG_NONE, msg);
        }
        fail_unavailable(call, msg);
    }
    shard_lost(c->sh, msg);
    schedule_retry(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct sql_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->state == SQL_C_CONNECTING) {
        sql_pool_connect_failed(c, "connect timeout");
    } else if (c->state == SQL_C_DOWN) {
        conn_start(c);
    }
}

/* ---- dispatching ------------------------------------------------------------------ */

/* Queue migration m on shard sh, ahead of everything queued. */
static void mig_start(struct sql_shard *sh, int m)
{
    struct sql_pool *p = sh->pool;
    struct sql_call *mc = calloc(1, p->drv->call_size);
    if (mc == NULL) {
        return;
    }
    mc->sh = sh;
    mc->mig = m;
    mc->is_migration = 1;
    sql_stmt_init(&mc->st, p->drv->dialect);
    mc->st.text = strdup(p->migs[m].sql);
    if (mc->st.text == NULL) {
        free(mc);
        return;
    }
    mc->st.len = strlen(mc->st.text);
    mc->st.rows_at = -1;
    sh->migs[m] = SQL_MIG_RUNNING;
    sh->pending++;
    TAILQ_INSERT_HEAD(&sh->queue, mc, link);
}

/* Ready: not waiting for its domain's migration on this shard. */
static int call_ready(struct sql_shard *sh, struct sql_call *call)
{
    if (call->is_migration || call->mig < 0) {
        return 1;
    }
    enum sql_mig_state m = sh->migs[call->mig];
    if (m == SQL_MIG_DONE) {
        return 1;
    }
    if (m == SQL_MIG_NONE || m == SQL_MIG_FAILED) { /* a request retries a failed one */
        mig_start(sh, call->mig);
    }
    return 0;
}

/* The next call to send: queued migrations first (they sit at the head). */
static struct sql_call *next_ready(struct sql_shard *sh)
{
    struct sql_call *it;
    TAILQ_FOREACH(it, &sh->queue, link)
    {
        (void)call_ready(sh, it); /* starts the migrations calls wait for */
    }
    TAILQ_FOREACH(it, &sh->queue, link)
    {
        if (call_ready(sh, it)) {
            return it;
        }
    }
    return NULL;
}

void sql_pool_dispatch(struct sql_shard *sh)
{
    struct sql_pool *p = sh->pool;
    if (p->closing) {
        return;
    }
    if (!sh->down) { /* migrations of known domains not yet run here */
        for (size_t m = 0; m < p->nmigs; m++) {
            if (sh->migs[m] == SQL_MIG_NONE) {
                mig_start(sh, (int)m);
            }
        }
    }
    for (;;) {
        struct sql_call *call = next_ready(sh);
        if (call == NULL) {
            return;
        }
        struct sql_conn *idle = NULL, *spare = NULL;
        int connecting = 0;
        for (int i = 0; i < sh->nconns; i++) {
            struct sql_conn *c = sql_shard_conn(sh, i);
            if (c->state == SQL_C_IDLE && idle == NULL) {
                idle = c;
            } else if (c->state == SQL_C_CONNECTING) {
                connecting++;
            } else if (c->state == SQL_C_DOWN && spare == NULL &&
                       !evtimer_pending(c->timer, NULL)) {
                spare = c;
            }
        }
        if (idle == NULL) {
            if (spare != NULL && connecting == 0 && !sh->down) {
                conn_start(spare); /* grow the pool on demand */
            }
            return;
        }
        TAILQ_REMOVE(&sh->queue, call, link);
        idle->call = call;
        idle->state = SQL_C_BUSY;
        (void)p->drv->send(idle, call); /* on failure the call is already failed */
    }
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sql_pool *p = arg;
    (void)fd;
    (void)what;
    while (!TAILQ_EMPTY(&p->done)) {
        struct sql_call *call = TAILQ_FIRST(&p->done);
        TAILQ_REMOVE(&p->done, call, link);
        sql_pool_complete(call, &call->res);
    }
    for (int i = 0; i < p->nshards; i++) {
        sql_pool_dispatch(&p->shards[i]);
    }
}

/* ---- the interface -------------------------------------------------------------------- */

/* The migration index of d (registered on every shard at first sight), or -1. */
static int mig_index(struct sql_pool *p, const struct cf_domain *d)
{
    if (d == NULL || !d->auto_migrate) {
        return -1;
    }
    for (size_t i = 0; i < p->nmigs; i++) {
        if (strcmp(p->migs[i].table, d->table) == 0) {
            return (int)i;
        }
    }
    struct sql_stmt ddl;
    char err[128];
    sql_stmt_init(&ddl, p->drv->dialect);
    if (sql_build_migrate(&ddl, d, err, sizeof(err)) < 0) {
        lb_error("%s: cannot build the migration of '%s': %s", p->drv->name, d->table, err);
        sql_stmt_free(&ddl);
        return -1;
    }
    struct sql_mig *migs = realloc(p->migs, (p->nmigs + 1) * sizeof(*migs));
    if (migs == NULL) {
        sql_stmt_free(&ddl);
        return -1;
    }
    p->migs = migs;
    for (int i = 0; i < p->nshards; i++) {
        struct sql_shard *sh = &p->shards[i];
        enum sql_mig_state *ms = realloc(sh->migs, (p->nmigs + 1) * sizeof(*ms));
        if (ms == NULL) {
            sql_stmt_free(&ddl);
            return -1;
        }
        ms[p->nmigs] = SQL_MIG_NONE; /* dispatch starts it on every shard that is up */
        sh->migs = ms;
    }
    p->migs[p->nmigs].table = strdup(d->table);
    p->migs[p->nmigs].sql = ddl.text; /* taken over */
    ddl.text = NULL;
    sql_stmt_free(&ddl);
    return (int)p->nmigs++;
}

static int build(struct sql_call *call, char *err, size_t errlen)
{
    const struct ad_req *req = call->req;
    const struct cf_domain *d = req->domain;
    struct sql_stmt *st = &call->st;
    switch (req->op) {
    case AD_GET:
        return sql_build_get(st, d, req->key, err, errlen);
    case AD_INSERT:
        return sql_build_insert(st, d, req->body, err, errlen);
    case AD_PUT:
        return sql_build_put(st, d, req->key, req->body, req->if_match, err, errlen);
    case AD_PATCH:
        return sql_build_patch(st, d, req->key, req->body, req->if_match, err, errlen);
    case AD_DELETE:
        return sql_build_delete(st, d, req->key, req->if_match, err, errlen);
    case AD_QUERY:
    case AD_AGGREGATE: {
        const struct md_query *q = req->query;
        if (q == NULL || q->aggregate != (req->op == AD_AGGREGATE)) {
            snprintf(err, errlen, "the query was not parsed by the gateway");
            return -1;
        }
        return q->aggregate ? sql_build_aggregate(st, d, q, err, errlen)
                            : sql_build_query(st, d, q, err, errlen);
    }
    case AD_PING:
        st->text = strdup("SELECT 1");
        if (st->text == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        st->len = strlen(st->text);
        return 0;
    default:
        snprintf(err, errlen, "unsupported operation");
        return -1;
    }
}

int sql_pool_submit(void *state, const struct ad_req *req, ad_done_cb cb, void *arg)
{
    struct sql_pool *p = state;
    if (p->closing) {
        return AD_EDOWN;
    }
    if (req->shard < 0 || req->shard >= p->nshards) {
        return AD_EINVAL;
    }
    struct sql_shard *sh = &p->shards[req->shard];
    if (sh->down) {
        return AD_EDOWN;
    }
    if (sh->pending >= p->be->pool.queue_max) {
        return AD_EFULL;
    }
    struct sql_call *call = calloc(1, p->drv->call_size);
    if (call == NULL) {
        return AD_EFULL;
    }
    call->sh = sh;
    call->req = req;
    call->cb = cb;
    call->arg = arg;
    call->mig = req->op == AD_PING ? -1 : mig_index(p, req->domain);
    sql_stmt_init(&call->st, p->drv->dialect);
    call->st.slot = req->slot;
    call->st.fence = req->domain != NULL && req->domain->shard_key != NULL &&
                     p->be->shard_map_path != NULL; /* a backend the rebalancer may move */
    if (req->scope != NULL) {
        call->st.excl_slots = req->scope->excl_slots;
        call->st.nexcl = req->scope->nexcl;
    }
    sh->pending++;
    char err[200];
    if (build(call, err, sizeof(err)) < 0) {
        ad_res_init(&call->res);
        ad_res_error(&call->res, AD_BAD_REQUEST, NULL, "%s", err);
        defer(call);
        return 0;
    }
    TAILQ_INSERT_TAIL(&sh->queue, call, link);
    event_active(p->kick, EV_TIMEOUT, 0);
    return 0;
}

void sql_pool_cancel(void *state, uint64_t req_id)
{
    struct sql_pool *p = state;
    for (int i = 0; i < p->nshards; i++) {
        struct sql_shard *sh = &p->shards[i];
        struct sql_call *c;
        TAILQ_FOREACH(c, &sh->queue, link)
        {
            if (c->req != NULL && c->req->id == req_id) {
                TAILQ_REMOVE(&sh->queue, c, link);
                ad_res_init(&c->res);
                ad_res_error(&c->res, AD_CANCELED, sh->cfs->name, "canceled");
                defer(c);
                return;
            }
        }
    }
}

void sql_pool_stats(void *state, int shard, struct ad_pool_stats *out)
{
    struct sql_pool *p = state;
    memset(out, 0, sizeof(*out));
    if (shard < 0 || shard >= p->nshards) {
        return;
    }
    struct sql_shard *sh = &p->shards[shard];
    out->conns = sh->nconns;
    for (int i = 0; i < sh->nconns; i++) {
        const struct sql_conn *c = sql_shard_conn(sh, i);
        out->up += c->state == SQL_C_IDLE || c->state == SQL_C_BUSY;
        out->busy += c->call != NULL;
    }
    out->queued = sh->pending > out->busy ? sh->pending - out->busy : 0;
}

int sql_pool_supports(const struct cf_domain *d, enum ad_op op)
{
    (void)d;
    return op <= AD_PING;
}

struct sql_pool *sql_pool_new(struct event_base *base, const struct cf_backend *be,
                              const struct sql_driver *drv, void *drv_data)
{
    struct sql_pool *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return NULL;
    }
    p->base = base;
    p->be = be;
    p->drv = drv;
    p->drv_data = drv_data;
    p->nshards = (int)be->nshards;
    p->shards = calloc(be->nshards, sizeof(*p->shards));
    p->kick = event_new(base, -1, 0, kick_cb, p);
    TAILQ_INIT(&p->done);
    int nconns = be->pool.max > 0 ? be->pool.max : 1;
    if (p->shards == NULL || p->kick == NULL) {
        goto oom;
    }
    for (int i = 0; i < p->nshards; i++) {
        struct sql_shard *sh = &p->shards[i];
        sh->pool = p;
        sh->idx = i;
        sh->cfs = &be->shards[i];
        sh->was_up = 1; /* a first failure is logged */
        TAILQ_INIT(&sh->queue);
        sh->conns = calloc((size_t)nconns, drv->conn_size);
        if (sh->conns == NULL) {
            goto oom;
        }
        sh->nconns = nconns;
        for (int k = 0; k < nconns; k++) {
            struct sql_conn *c = sql_shard_conn(sh, k);
            c->sh = sh;
            c->idx = k;
            c->timer = evtimer_new(base, on_timer, c);
            drv->conn_init(c, base);
        }
    }
    for (int i = 0; i < p->nshards; i++) {
        struct sql_shard *sh = &p->shards[i];
        int start = be->pool.min > 0 ? be->pool.min : 1;
        for (int k = 0; k < start && k < sh->nconns; k++) {
            conn_start(sql_shard_conn(sh, k));
        }
    }
    return p;
oom:
    sql_pool_free(p);
    return NULL;
}

void sql_pool_free(struct sql_pool *p)
{
    if (p == NULL) {
        return;
    }
    p->closing = 1;
    while (!TAILQ_EMPTY(&p->done)) {
        struct sql_call *call = TAILQ_FIRST(&p->done);
        TAILQ_REMOVE(&p->done, call, link);
        sql_pool_complete(call, &call->res);
    }
    for (int i = 0; p->shards != NULL && i < p->nshards; i++) {
        struct sql_shard *sh = &p->shards[i];
        fail_queue(sh, "polygate is shutting down");
        for (int k = 0; k < sh->nconns; k++) {
            struct sql_conn *c = sql_shard_conn(sh, k);
            struct sql_call *call = c->call;
            c->call = NULL;
            conn_close(c);
            if (call != NULL) {
                fail_unavailable(call, "polygate is shutting down");
            }
            p->drv->conn_fini(c);
            event_free(c->timer);
        }
        free(sh->conns);
        free(sh->migs);
    }
    for (size_t m = 0; m < p->nmigs; m++) {
        free(p->migs[m].table);
        free(p->migs[m].sql);
    }
    free(p->migs);
    if (p->kick != NULL) {
        event_free(p->kick);
    }
    free(p->shards);
    free(p);
}
