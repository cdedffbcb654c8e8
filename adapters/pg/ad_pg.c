/*
 * ad_pg.c — PostgreSQL adapter: libpq, fully non-blocking on the worker loop.
 *
 * Connections: PQconnectStartParams + PQconnectPoll, the event re-armed on
 * PQsocket at every poll step (the socket can change), with our own connect
 * timer (libpq ignores connect_timeout in PQconnectPoll).  The session runs
 * with TimeZone=UTC and client_encoding=UTF8 (connection options, no extra
 * round trip).  A ready connection keeps one EV_READ|EV_PERSIST event: it
 * reads results (PQconsumeInput/PQisBusy/PQgetResult) and notices a server
 * that went away while the connection was idle.
 *
 * Pool per shard: pool.min connections opened at start, more on demand up
 * to pool.max; one request in flight per connection (no pipelining: each
 * request is one statement, and pipelining would tie requests' fates to one
 * another's errors).  Requests wait in a FIFO bounded by pool.queue_max
 * (beyond → AD_EFULL, 503).  A lost connection fails its in-flight request
 * with AD_UNAVAILABLE naming the shard; when no connection of a shard is
 * left the waiting requests fail too and submit refuses (AD_EDOWN) until a
 * reconnect — with exponential backoff and jitter — succeeds.
 *
 * auto_migrate: the first request for a domain on a shard runs the domain's
 * idempotent DDL script (sql_build_migrate) first; requests for that domain
 * wait until it is done.  (init() receives only the backend, not the
 * domains that use it, hence "first use" rather than "at init".)
 *
 * cancel(): a request still waiting in the queue completes with
 * AD_CANCELED; one already sent runs to its end (PQcancel is blocking, and
 * the gateway has already answered 504 and ignores the completion).
 */
#include "adapters/pg/ad_pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <libpq-fe.h>

#include "adapters/sql/sql_build.h"
#include "config/cf_config.h"
#include "gateway/gw_json.h"
#include "gateway/gw_log.h"
#include "gateway/gw_query.h"
#include "gateway/gw_util.h"

struct pg_state;
struct pg_shard;

enum conn_state { C_DOWN, C_CONNECTING, C_IDLE, C_BUSY };
enum mig_state { MIG_NONE, MIG_RUNNING, MIG_DONE };

struct pg_mig {
    char *table;
    enum mig_state state;
};

struct pg_call {
    TAILQ_ENTRY(pg_call) link;
    struct pg_shard *sh;
    const struct ad_req *req;
    ad_done_cb cb; /* NULL: an internal call (migration) */
    void *arg;
    struct sql_stmt st;
    int stage; /* 1: the version probe after a failed conditional write */
    int mig;   /* index into sh->migs, or -1 */
    int is_migration;
    PGresult *result;  /* first error, else last result */
    struct ad_res res; /* a deferred completion */
};
TAILQ_HEAD(pg_callq, pg_call);

struct pg_conn {
    struct pg_shard *sh;
    PGconn *pg;
    enum conn_state state;
    struct event *ev;    /* socket: connect steps, then EV_READ|EV_PERSIST */
    struct event *wev;   /* flushing a large query */
    struct event *timer; /* connect deadline, or reconnect after backoff */
    int64_t backoff_ms;
    struct pg_call *call;
};

struct pg_shard {
    struct pg_state *st;
    const struct cf_shard *cfs;
    struct pg_conn *conns;
    int nconns;
    struct pg_callq queue;
    int pending; /* queued + in flight */
    int down;    /* known down: refuse new requests */
    int was_up;
    struct pg_mig *migs;
    size_t nmigs;
    char lasterr[200];
};

struct pg_state {
    struct event_base *base;
    const struct cf_backend *be;
    struct pg_shard *shards;
    int nshards;
    struct event *kick; /* deferred completions, then dispatch */
    struct pg_callq done;
    int closing;
};

static void conn_start(struct pg_conn *c);
static void dispatch(struct pg_shard *sh);

/* ---- completing ----------------------------------------------------------------- */

static void call_free(struct pg_call *call)
{
    sql_stmt_free(&call->st);
    if (call->result != NULL) {
        PQclear(call->result);
    }
    free(call);
}

static void complete(struct pg_call *call, struct ad_res *res)
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
static void defer(struct pg_call *call)
{
    TAILQ_INSERT_TAIL(&call->sh->st->done, call, link);
    event_active(call->sh->st->kick, EV_TIMEOUT, 0);
}

/* "backend 'b' (PostgreSQL shard 's') <what>: <detail>" */
static void fail(struct pg_call *call, enum ad_status status, const char *what, const char *detail)
{
    struct ad_res res;
    ad_res_init(&res);
    struct pg_shard *sh = call->sh;
    ad_res_error(&res, status, sh->cfs->name, "backend '%s' (PostgreSQL shard '%s') %s: %s",
                 sh->st->be->name, sh->cfs->name, what, detail);
    complete(call, &res);
}

static void fail_unavailable(struct pg_call *call, const char *detail)
{
    fail(call, AD_UNAVAILABLE, "is unavailable", detail);
}

static void mig_failed(struct pg_shard *sh, int mig, const char *why)
{
    sh->migs[mig].state = MIG_NONE;
    struct pg_call *c = TAILQ_FIRST(&sh->queue);
    while (c != NULL) {
        struct pg_call *next = TAILQ_NEXT(c, link);
        if (c->mig == mig) {
            TAILQ_REMOVE(&sh->queue, c, link);
            fail(c, AD_UNAVAILABLE, "cannot serve the domain: auto_migrate failed", why);
        }
        c = next;
    }
}

static void fail_queue(struct pg_shard *sh, const char *why)
{
    while (!TAILQ_EMPTY(&sh->queue)) {
        struct pg_call *c = TAILQ_FIRST(&sh->queue);
        TAILQ_REMOVE(&sh->queue, c, link);
        if (c->is_migration) {
            sh->migs[c->mig].state = MIG_NONE;
        }
        fail_unavailable(c, why);
    }
}

/* ---- connections ------------------------------------------------------------------ */

static void tv_ms(struct timeval *tv, int64_t ms)
{
    tv->tv_sec = (time_t)(ms / 1000);
    tv->tv_usec = (suseconds_t)((ms % 1000) * 1000);
}

static int live(const struct pg_shard *sh)
{
    int n = 0;
    for (int i = 0; i < sh->nconns; i++) {
        n += sh->conns[i].state == C_IDLE || sh->conns[i].state == C_BUSY;
    }
    return n;
}

static void schedule_retry(struct pg_conn *c)
{
    struct pg_shard *sh = c->sh;
    int idx = (int)(c - sh->conns);
    int keep = sh->st->be->pool.min > 0 ? sh->st->be->pool.min : 1;
    if (sh->st->closing || (idx >= keep && !sh->down)) {
        return; /* grown on demand: reopened on demand */
    }
    const struct cf_pool *p = &sh->st->be->pool;
    c->backoff_ms = c->backoff_ms == 0 ? p->backoff_min_ms : c->backoff_ms * 2;
    if (c->backoff_ms > p->backoff_max_ms) {
        c->backoff_ms = p->backoff_max_ms;
    }
    /* jitter in [backoff/2, backoff]: workers do not reconnect in step */
    int64_t ms = c->backoff_ms / 2 + (int64_t)(gw_rand64() % (uint64_t)(c->backoff_ms / 2 + 1));
    struct timeval tv;
    tv_ms(&tv, ms);
    evtimer_add(c->timer, &tv);
}

static void shard_lost(struct pg_shard *sh, const char *why)
{
    snprintf(sh->lasterr, sizeof(sh->lasterr), "%s", why);
    if (live(sh) > 0 || sh->st->closing) {
        return;
    }
    if (sh->was_up) {
        gw_warn("pg backend '%s' shard '%s' is down: %s", sh->st->be->name, sh->cfs->name, why);
        sh->was_up = 0;
    }
    sh->down = 1;
    fail_queue(sh, why);
}

static void one_line(char *s)
{
    for (char *p = s; *p != '\0'; p++) {
        if (*p == '\n' || *p == '\r') {
            *p = (p[1] == '\0') ? '\0' : ' ';
        }
    }
}

static void conn_close(struct pg_conn *c)
{
    event_del(c->ev);
    event_del(c->wev);
    evtimer_del(c->timer);
    if (c->pg != NULL) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    c->state = C_DOWN;
}

static void conn_broken(struct pg_conn *c, const char *why)
{
    char msg[200];
    snprintf(msg, sizeof(msg), "%s", why[0] ? why : "connection lost");
    one_line(msg);
    struct pg_call *call = c->call;
    c->call = NULL;
    conn_close(c);
    if (call != NULL) {
        if (call->is_migration) {
            mig_failed(c->sh, call->mig, msg);
        }
        fail_unavailable(call, msg);
    }
    shard_lost(c->sh, msg);
    schedule_retry(c);
}

static void arm(struct pg_conn *c, short what, event_callback_fn fn)
{
    event_del(c->ev);
    event_assign(c->ev, c->sh->st->base, PQsocket(c->pg), what, fn, c);
    event_add(c->ev, NULL);
}

static void on_read(evutil_socket_t fd, short what, void *arg);

static void connect_step(evutil_socket_t fd, short what, void *arg)
{
    struct pg_conn *c = arg;
    (void)fd;
    (void)what;
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        arm(c, EV_READ, connect_step);
        return;
    case PGRES_POLLING_WRITING:
        arm(c, EV_WRITE, connect_step);
        return;
    case PGRES_POLLING_OK:
        break;
    default: {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c->pg));
        one_line(msg);
        gw_debug("pg shard '%s': connect failed: %s", c->sh->cfs->name, msg);
        conn_close(c);
        shard_lost(c->sh, msg);
        schedule_retry(c);
        return;
    }
    }
    struct pg_shard *sh = c->sh;
    evtimer_del(c->timer);
    PQsetnonblocking(c->pg, 1);
    arm(c, EV_READ | EV_PERSIST, on_read);
    c->state = C_IDLE;
    c->backoff_ms = 0;
    sh->down = 0;
    if (!sh->was_up) {
        gw_info("pg backend '%s' shard '%s' is up", sh->st->be->name, sh->cfs->name);
        sh->was_up = 1;
    }
    dispatch(sh);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct pg_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->state == C_CONNECTING) {
        conn_close(c);
        shard_lost(c->sh, "connect timeout");
        schedule_retry(c);
    } else if (c->state == C_DOWN) {
        conn_start(c);
    }
}

static void on_notice(void *arg, const char *message)
{
    (void)arg;
    gw_debug("pg notice: %s", message); /* e.g. "relation … already exists, skipping" */
}

static void conn_start(struct pg_conn *c)
{
    struct pg_shard *sh = c->sh;
    static const char *const keys[] = {"dbname", "options", "client_encoding", "application_name",
                                       NULL};
    const char *vals[] = {sh->cfs->dsn, "-c TimeZone=UTC", "UTF8", "polygate", NULL};
    c->pg = PQconnectStartParams(keys, vals, 1);
    c->state = C_CONNECTING;
    if (c->pg != NULL) {
        PQsetNoticeProcessor(c->pg, on_notice, NULL);
    }
    if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD || PQsocket(c->pg) < 0) {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s", c->pg != NULL ? PQerrorMessage(c->pg) : "out of memory");
        one_line(msg);
        conn_close(c);
        shard_lost(sh, msg);
        schedule_retry(c);
        return;
    }
    struct timeval tv;
    tv_ms(&tv, sh->st->be->pool.connect_timeout_ms);
    evtimer_add(c->timer, &tv);
    arm(c, EV_WRITE, connect_step); /* as if PQconnectPoll said WRITING */
}

/* ---- results → JSON ---------------------------------------------------------------- */

static struct json_object *cell(const PGresult *r, int row, int colno, const struct sql_col *sc)
{
    if (PQgetisnull(r, row, colno)) {
        return NULL;
    }
    const char *v = PQgetvalue(r, row, colno);
    int len = PQgetlength(r, row, colno);
    if (sc->kind == SQL_COL_VERSION) {
        return json_object_new_int64(strtoll(v, NULL, 10));
    }
    if (sc->kind == SQL_COL_AGG) {
        if (sc->agg->fn == GW_QAGG_COUNT) {
            return json_object_new_int64(strtoll(v, NULL, 10));
        }
        if (sc->agg->fn == GW_QAGG_SUM || sc->agg->fn == GW_QAGG_AVG) {
            return json_object_new_double_s(strtod(v, NULL), v); /* exact digits */
        }
    }
    switch (sc->field->type) {
    case CF_T_INT:
        return json_object_new_int64(strtoll(v, NULL, 10));
    case CF_T_DECIMAL:
        return json_object_new_double_s(strtod(v, NULL), v);
    case CF_T_BOOL:
        return json_object_new_boolean(v[0] == 't');
    case CF_T_TIMESTAMP: {
        /* "2026-01-31 12:00:00.123+00" (TimeZone=UTC) → "2026-01-31T12:00:00.123Z" */
        char buf[64];
        snprintf(buf, sizeof(buf), "%s", v);
        size_t n = strlen(buf);
        if (n > 10 && buf[10] == ' ') {
            buf[10] = 'T';
        }
        if (n > 3 && strcmp(buf + n - 3, "+00") == 0) {
            strcpy(buf + n - 3, "Z");
        }
        return json_object_new_string(buf);
    }
    case CF_T_OBJECT:
    case CF_T_ARRAY:
    case CF_T_JSON:
    case CF_T_COUNTERS: {
        struct json_tokener *tok = json_tokener_new_ex(1000);
        struct json_object *o = json_tokener_parse_ex(tok, v, len);
        json_tokener_free(tok);
        return o;
    }
    default:
        return json_object_new_string_len(v, len);
    }
}

/* An item from one row; *version gets the version column. */
static struct json_object *row_item(const struct pg_call *call, const PGresult *r, int row,
                                    int64_t *version)
{
    struct json_object *item = json_object_new_object();
    const struct sql_stmt *st = &call->st;
    for (size_t i = 0; i < st->ncols && (int)i < PQnfields(r); i++) {
        const struct sql_col *sc = &st->cols[i];
        if (sc->hidden) {
            continue;
        }
        if (sc->kind == SQL_COL_VERSION) {
            *version = strtoll(PQgetvalue(r, row, (int)i), NULL, 10);
            json_object_object_add(item, "version", json_object_new_int64(*version));
            continue;
        }
        if (sc->kind == SQL_COL_AGG) {
            json_object_object_add(item, sc->agg->alias, cell(r, row, (int)i, sc));
            continue;
        }
        if (PQgetisnull(r, row, (int)i)) {
            continue; /* SQL NULL: the field is absent */
        }
        json_object_object_add(item, sc->field->name, cell(r, row, (int)i, sc));
    }
    return item;
}

/* The same item as row_item, written as JSON text straight from the row:
 * single-item answers skip the json-c tree and its serialisation (the
 * PostgreSQL text forms are already JSON for ints, numerics and jsonb). */
static void row_raw(const struct pg_call *call, const PGresult *r, int row, int64_t *version,
                    struct evbuffer *out)
{
    const struct sql_stmt *st = &call->st;
    int first = 1;
    evbuffer_add(out, "{", 1);
    for (size_t i = 0; i < st->ncols && (int)i < PQnfields(r); i++) {
        const struct sql_col *sc = &st->cols[i];
        if (sc->hidden || PQgetisnull(r, row, (int)i) ||
            (sc->kind != SQL_COL_VERSION && sc->kind != SQL_COL_FIELD)) {
            continue; /* SQL NULL: the field is absent */
        }
        const char *v = PQgetvalue(r, row, (int)i);
        size_t len = (size_t)PQgetlength(r, row, (int)i);
        if (!first) {
            evbuffer_add(out, ",", 1);
        }
        first = 0;
        if (sc->kind == SQL_COL_VERSION) {
            *version = strtoll(v, NULL, 10);
            evbuffer_add(out, "\"version\":", 10);
            evbuffer_add(out, v, len);
            continue;
        }
        gw_json_write_string(out, sc->field->name, strlen(sc->field->name));
        evbuffer_add(out, ":", 1);
        switch (sc->field->type) {
        case CF_T_INT:
        case CF_T_DECIMAL:
        case CF_T_OBJECT:
        case CF_T_ARRAY:
        case CF_T_JSON:
        case CF_T_COUNTERS:
            evbuffer_add(out, v, len); /* canonical text: exact digits, valid JSON */
            break;
        case CF_T_BOOL:
            evbuffer_add(out, v[0] == 't' ? "true" : "false", v[0] == 't' ? 4 : 5);
            break;
        case CF_T_TIMESTAMP: {
            /* "2026-01-31 12:00:00.123+00" (TimeZone=UTC) → "2026-01-31T12:00:00.123Z" */
            char buf[64];
            size_t n = len < sizeof(buf) - 1 ? len : sizeof(buf) - 1;
            memcpy(buf, v, n);
            if (n > 10 && buf[10] == ' ') {
                buf[10] = 'T';
            }
            if (n > 3 && memcmp(buf + n - 3, "+00", 3) == 0) {
                buf[n - 3] = 'Z';
                n -= 2;
            }
            gw_json_write_string(out, buf, n);
            break;
        }
        default:
            gw_json_write_string(out, v, len);
        }
    }
    evbuffer_add(out, "}", 1);
}

static void finish_query(struct pg_call *call, const PGresult *r, struct ad_res *res)
{
    const struct gw_query *q = gw_query_of(call->req->body);
    int n = PQntuples(r);
    int shown = q->aggregate || n <= q->limit ? n : q->limit;
    struct json_object *doc = json_object_new_object();
    struct json_object *items = json_object_new_array_ext(shown);
    int64_t ver;
    for (int i = 0; i < shown; i++) {
        json_object_array_add(items, row_item(call, r, i, &ver));
    }
    json_object_object_add(doc, "items", items);
    struct json_object *cursor = NULL;
    if (!q->aggregate && n > q->limit) {
        struct json_object *vals = json_object_new_array();
        for (size_t k = 0; k < q->norder; k++) {
            struct json_object *v = NULL;
            for (size_t i = 0; i < call->st.ncols; i++) {
                const struct sql_col *sc = &call->st.cols[i];
                if (sc->kind == SQL_COL_FIELD && sc->field == q->order[k].field) {
                    v = cell(r, shown - 1, (int)i, sc);
                    break;
                }
            }
            json_object_array_add(vals, v);
        }
        char *c = gw_query_cursor_make(q, vals);
        cursor = json_object_new_string(c);
        free(c);
        json_object_put(vals);
    }
    json_object_object_add(doc, "cursor", cursor);
    json_object_object_add(doc, "shards_queried", json_object_new_int(1));
    json_object_object_add(doc, "partial", json_object_new_boolean(0));
    res->item = doc;
}

static int send_call(struct pg_conn *c, struct pg_call *call);

/* A store error → status.  23505 names the unique field. */
static void error_result(struct pg_call *call, const PGresult *r, struct ad_res *res)
{
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *prim = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    char msg[200];
    snprintf(msg, sizeof(msg), "%s", prim != NULL ? prim : PQresultErrorMessage(r));
    one_line(msg);
    const struct cf_domain *d = call->req != NULL ? call->req->domain : NULL;
    if (state == NULL) {
        state = "";
    }
    if (strcmp(state, "23505") == 0 && d != NULL) {
        const char *f = sql_constraint_field(d, PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME));
        if (f != NULL && strcmp(f, d->key) == 0) {
            ad_res_error(res, AD_CONFLICT, NULL, "an item with %s '%s' already exists", d->key,
                         call->req->key != NULL ? call->req->key : "?");
        } else if (f != NULL) {
            ad_res_error(res, AD_CONFLICT, NULL, "another item already has this '%s'", f);
        } else {
            ad_res_error(res, AD_CONFLICT, NULL, "unique constraint violated: %s", msg);
        }
        res->field = f;
    } else if (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0) {
        ad_res_error(res, AD_BAD_REQUEST, NULL, "PostgreSQL refused the value: %s", msg);
    } else if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0 ||
               strncmp(state, "53", 2) == 0) {
        ad_res_error(res, AD_UNAVAILABLE, call->sh->cfs->name,
                     "backend '%s' (PostgreSQL shard '%s') is unavailable: %s",
                     call->sh->st->be->name, call->sh->cfs->name, msg);
    } else {
        gw_warn("pg shard '%s': %s (SQLSTATE %s)", call->sh->cfs->name, msg, state);
        ad_res_error(res, AD_INTERNAL, call->sh->cfs->name, "PostgreSQL error on shard '%s': %s",
                     call->sh->cfs->name, msg);
    }
}

/* The statement of call finished on c.  Returns 1 if c stays busy (a follow-up). */
static int on_result(struct pg_conn *c, struct pg_call *call)
{
    PGresult *r = call->result;
    struct pg_shard *sh = c->sh;
    ExecStatusType rs = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    struct ad_res res;
    ad_res_init(&res);
    if (call->is_migration) {
        if (rs == PGRES_COMMAND_OK || rs == PGRES_TUPLES_OK) {
            sh->migs[call->mig].state = MIG_DONE;
            gw_info("pg backend '%s' shard '%s': table '%s' migrated", sh->st->be->name,
                    sh->cfs->name, sh->migs[call->mig].table);
        } else {
            char msg[200];
            snprintf(msg, sizeof(msg), "%s", r != NULL ? PQresultErrorMessage(r) : "no result");
            one_line(msg);
            gw_error("pg backend '%s' shard '%s': auto_migrate of '%s' failed: %s",
                     sh->st->be->name, sh->cfs->name, sh->migs[call->mig].table, msg);
            /* the script is one implicit transaction: already rolled back */
            mig_failed(sh, call->mig, msg);
        }
        complete(call, &res);
        return 0;
    }
    if (rs != PGRES_TUPLES_OK && rs != PGRES_COMMAND_OK) {
        if (r == NULL) {
            ad_res_error(&res, AD_INTERNAL, NULL, "no result from PostgreSQL");
        } else {
            error_result(call, r, &res);
        }
        complete(call, &res);
        return 0;
    }
    const struct ad_req *req = call->req;
    const struct cf_domain *d = req->domain;
    int n = PQntuples(r);
    struct json_object *item = NULL;
    struct evbuffer *raw = NULL;
    if (call->stage == 1) { /* version probe after a conditional write matched nothing */
        if (n == 0) {
            ad_res_error(&res, AD_NOT_FOUND, NULL, "no %s item with %s '%s'", d->name, d->key,
                         req->key);
        } else {
            ad_res_error(&res, AD_PRECONDITION, NULL,
                         "version mismatch: the item is at version %s, If-Match said %lld",
                         PQgetvalue(r, 0, 0), (long long)req->if_match);
        }
        complete(call, &res);
        return 0;
    }
    switch (req->op) {
    case AD_PING:
        break;
    case AD_QUERY:
    case AD_AGGREGATE:
        finish_query(call, r, &res);
        item = res.item;
        break;
    case AD_GET:
    case AD_INSERT:
    case AD_PUT:
    case AD_PATCH:
    case AD_DELETE:
        if (n == 0) {
            if (req->if_match >= 0 && (req->op == AD_PATCH || req->op == AD_DELETE)) {
                /* 404 or 412? ask for the version, on the same connection */
                char err[128];
                sql_stmt_free(&call->st);
                sql_stmt_init(&call->st, SQL_PG);
                if (sql_build_version(&call->st, d, req->key, err, sizeof(err)) == 0) {
                    call->stage = 1;
                    PQclear(call->result);
                    call->result = NULL;
                    if (send_call(c, call) == 0) {
                        return 1;
                    }
                    return 0; /* send_call failed the call */
                }
            }
            if (req->if_match >= 0) {
                ad_res_error(&res, AD_PRECONDITION, NULL,
                             "If-Match %lld: no %s item with %s '%s' at that version",
                             (long long)req->if_match, d->name, d->key, req->key);
            } else {
                ad_res_error(&res, AD_NOT_FOUND, NULL, "no %s item with %s '%s'", d->name, d->key,
                             req->key);
            }
            break;
        }
        if (req->op == AD_DELETE) {
            res.version = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
            break;
        }
        raw = evbuffer_new();
        row_raw(call, r, 0, &res.version, raw);
        res.rawlen = evbuffer_get_length(raw);
        res.raw = (const char *)evbuffer_pullup(raw, -1);
        if (req->op == AD_PUT && call->st.ncols > 0 &&
            call->st.cols[call->st.ncols - 1].kind == SQL_COL_CREATED) {
            res.created = PQgetvalue(r, 0, (int)call->st.ncols - 1)[0] == 't';
        }
        break;
    default:
        ad_res_error(&res, AD_INTERNAL, NULL, "unexpected operation");
    }
    complete(call, &res);
    json_object_put(item);
    if (raw != NULL) {
        evbuffer_free(raw);
    }
    return 0;
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    struct pg_conn *c = arg;
    (void)fd;
    (void)what;
    int rc = PQflush(c->pg);
    if (rc == 1) {
        event_add(c->wev, NULL);
    } else if (rc < 0) {
        conn_broken(c, PQerrorMessage(c->pg));
    }
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    struct pg_conn *c = arg;
    (void)fd;
    (void)what;
    if (!PQconsumeInput(c->pg) || PQstatus(c->pg) == CONNECTION_BAD) {
        conn_broken(c, PQerrorMessage(c->pg));
        return;
    }
    while (!PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        struct pg_call *call = c->call;
        if (r == NULL) {
            if (call == NULL) {
                break; /* idle: nothing to read (notices, a stray ROLLBACK's end) */
            }
            c->call = NULL;
            c->state = C_IDLE;
            if (on_result(c, call)) {
                c->state = C_BUSY;
                c->call = call;
                return;
            }
            break;
        }
        if (call == NULL) {
            PQclear(r); /* a result nobody waits for */
            continue;
        }
        ExecStatusType rs = PQresultStatus(r);
        if (call->result != NULL && PQresultStatus(call->result) == PGRES_FATAL_ERROR) {
            PQclear(r); /* keep the first error */
        } else {
            if (call->result != NULL) {
                PQclear(call->result);
            }
            call->result = r;
        }
        (void)rs;
    }
    if (c->state == C_IDLE && c->call == NULL && c->pg != NULL) {
        dispatch(c->sh);
    }
}

/* Send call on idle connection c.  0, or -1 after failing the call. */
static int send_call(struct pg_conn *c, struct pg_call *call)
{
    int ok;
    if (call->is_migration) {
        ok = PQsendQuery(c->pg, call->st.text);
    } else {
        ok = PQsendQueryParams(c->pg, call->st.text, (int)call->st.nparams, NULL,
                               (const char *const *)call->st.params, NULL, NULL, 0);
    }
    c->call = call;
    c->state = C_BUSY;
    if (!ok) {
        conn_broken(c, PQerrorMessage(c->pg));
        return -1;
    }
    int rc = PQflush(c->pg);
    if (rc < 0) {
        conn_broken(c, PQerrorMessage(c->pg));
        return -1;
    }
    if (rc == 1) {
        event_assign(c->wev, c->sh->st->base, PQsocket(c->pg), EV_WRITE, on_write, c);
        event_add(c->wev, NULL);
    }
    return 0;
}

/* Ready: not waiting for its domain's migration. */
static int call_ready(struct pg_shard *sh, struct pg_call *call)
{
    if (call->is_migration || call->mig < 0) {
        return 1;
    }
    struct pg_mig *m = &sh->migs[call->mig];
    if (m->state == MIG_DONE) {
        return 1;
    }
    if (m->state == MIG_NONE) { /* start it, ahead of everything */
        struct pg_call *mc = calloc(1, sizeof(*mc));
        char err[128];
        mc->sh = sh;
        mc->mig = call->mig;
        mc->is_migration = 1;
        mc->req = NULL;
        sql_stmt_init(&mc->st, SQL_PG);
        if (sql_build_migrate(&mc->st, call->req->domain, err, sizeof(err)) < 0) {
            gw_error("pg: cannot build the migration of '%s': %s", m->table, err);
            call_free(mc);
            return 1;
        }
        m->state = MIG_RUNNING;
        sh->pending++;
        TAILQ_INSERT_HEAD(&sh->queue, mc, link);
    }
    return 0;
}

/* The next call to send: queued migrations first (they sit at the head). */
static struct pg_call *next_ready(struct pg_shard *sh)
{
    struct pg_call *it;
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

static void dispatch(struct pg_shard *sh)
{
    if (sh->st->closing) {
        return;
    }
    for (;;) {
        struct pg_call *call = next_ready(sh);
        if (call == NULL) {
            return;
        }
        struct pg_conn *idle = NULL, *spare = NULL;
        int connecting = 0;
        for (int i = 0; i < sh->nconns; i++) {
            struct pg_conn *c = &sh->conns[i];
            if (c->state == C_IDLE && idle == NULL) {
                idle = c;
            } else if (c->state == C_CONNECTING) {
                connecting++;
            } else if (c->state == C_DOWN && spare == NULL && !evtimer_pending(c->timer, NULL)) {
                spare = c;
            }
        }
        if (idle == NULL) {
            if (spare != NULL && connecting == 0) {
                conn_start(spare); /* grow the pool on demand */
            }
            return;
        }
        TAILQ_REMOVE(&sh->queue, call, link);
        (void)send_call(idle, call); /* on failure the call is already failed */
    }
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pg_state *st = arg;
    (void)fd;
    (void)what;
    while (!TAILQ_EMPTY(&st->done)) {
        struct pg_call *call = TAILQ_FIRST(&st->done);
        TAILQ_REMOVE(&st->done, call, link);
        complete(call, &call->res);
    }
    for (int i = 0; i < st->nshards; i++) {
        dispatch(&st->shards[i]);
    }
}

/* ---- the interface -------------------------------------------------------------------- */

static int mig_index(struct pg_shard *sh, const struct cf_domain *d)
{
    if (d == NULL || !d->auto_migrate) {
        return -1;
    }
    for (size_t i = 0; i < sh->nmigs; i++) {
        if (strcmp(sh->migs[i].table, d->table) == 0) {
            return (int)i;
        }
    }
    sh->migs = realloc(sh->migs, (sh->nmigs + 1) * sizeof(*sh->migs));
    sh->migs[sh->nmigs].table = strdup(d->table);
    sh->migs[sh->nmigs].state = MIG_NONE;
    return (int)sh->nmigs++;
}

static int build(struct pg_call *call, char *err, size_t errlen)
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
        const struct gw_query *q = gw_query_of(req->body);
        if (q == NULL || q->aggregate != (req->op == AD_AGGREGATE)) {
            snprintf(err, errlen, "the query was not parsed by the gateway");
            return -1;
        }
        return q->aggregate ? sql_build_aggregate(st, d, q, err, errlen)
                            : sql_build_query(st, d, q, err, errlen);
    }
    default:
        snprintf(err, errlen, "unsupported operation");
        return -1;
    }
}

static int pg_submit(void *state, const struct ad_req *req, ad_done_cb cb, void *arg)
{
    struct pg_state *st = state;
    if (st->closing) {
        return AD_EDOWN;
    }
    if (req->shard < 0 || req->shard >= st->nshards) {
        return AD_EINVAL;
    }
    struct pg_shard *sh = &st->shards[req->shard];
    if (sh->down) {
        return AD_EDOWN;
    }
    if (sh->pending >= st->be->pool.queue_max) {
        return AD_EFULL;
    }
    struct pg_call *call = calloc(1, sizeof(*call));
    if (call == NULL) {
        return AD_EFULL;
    }
    call->sh = sh;
    call->req = req;
    call->cb = cb;
    call->arg = arg;
    call->mig = mig_index(sh, req->domain);
    sql_stmt_init(&call->st, SQL_PG);
    call->st.slot = req->slot;
    call->st.excl_slots = req->excl_slots;
    call->st.nexcl = req->nexcl;
    sh->pending++;
    char err[200];
    int rc;
    if (req->op == AD_PING) {
        rc = 0;
        call->mig = -1;
        call->st.text = strdup("SELECT 1");
    } else {
        rc = build(call, err, sizeof(err));
    }
    if (rc < 0) {
        ad_res_init(&call->res);
        ad_res_error(&call->res, AD_BAD_REQUEST, NULL, "%s", err);
        defer(call);
        return 0;
    }
    TAILQ_INSERT_TAIL(&sh->queue, call, link);
    event_active(st->kick, EV_TIMEOUT, 0);
    return 0;
}

static void pg_cancel(void *state, uint64_t req_id)
{
    struct pg_state *st = state;
    for (int i = 0; i < st->nshards; i++) {
        struct pg_shard *sh = &st->shards[i];
        struct pg_call *c;
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

static int pg_supports(const struct cf_domain *d, enum ad_op op)
{
    (void)d;
    return op <= AD_PING;
}

static int pg_check_domain(const struct cf_backend *be, const struct cf_domain *d, char *err,
                           size_t errlen)
{
    (void)be;
    if (d->kind != CF_KIND_RECORD) {
        snprintf(err, errlen, "kind: pg serves `record` domains only");
        return -1;
    }
    if (!d->versioned) {
        snprintf(err, errlen, "versioned: pg domains always carry a version");
        return -1;
    }
    if (strlen(d->table) > 40) {
        snprintf(err, errlen, "table: at most 40 bytes (constraint names derive from it)");
        return -1;
    }
    for (size_t i = 0; i < d->nfields; i++) {
        if (d->fields[i].type == CF_T_COUNTERS) {
            snprintf(err, errlen, "fields.%s: counters are for redis hash domains",
                     d->fields[i].name);
            return -1;
        }
    }
    return 0;
}

static int pg_init(struct event_base *base, const struct cf_backend *be, void **state, char *err,
                   size_t errlen)
{
    if (be->nshards == 0) {
        snprintf(err, errlen, "backend '%s': pg needs `shards`", be->name);
        return -1;
    }
    for (size_t i = 0; i < be->nshards; i++) {
        char *perr = NULL;
        PQconninfoOption *o = PQconninfoParse(be->shards[i].dsn, &perr);
        if (o == NULL) {
            snprintf(err, errlen, "shard '%s': bad dsn: %s", be->shards[i].name,
                     perr != NULL ? perr : "out of memory");
            PQfreemem(perr);
            return -1;
        }
        PQconninfoFree(o);
    }
    struct pg_state *st = calloc(1, sizeof(*st));
    st->base = base;
    st->be = be;
    st->nshards = (int)be->nshards;
    st->shards = calloc(be->nshards, sizeof(*st->shards));
    st->kick = event_new(base, -1, 0, kick_cb, st);
    TAILQ_INIT(&st->done);
    for (int i = 0; i < st->nshards; i++) {
        struct pg_shard *sh = &st->shards[i];
        sh->st = st;
        sh->cfs = &be->shards[i];
        sh->was_up = 1; /* a first failure is logged */
        TAILQ_INIT(&sh->queue);
        sh->nconns = be->pool.max;
        sh->conns = calloc((size_t)sh->nconns, sizeof(*sh->conns));
        for (int k = 0; k < sh->nconns; k++) {
            struct pg_conn *c = &sh->conns[k];
            c->sh = sh;
            c->ev = event_new(base, -1, 0, on_read, c);
            c->wev = event_new(base, -1, 0, on_write, c);
            c->timer = evtimer_new(base, on_timer, c);
        }
        int start = be->pool.min > 0 ? be->pool.min : 1;
        for (int k = 0; k < start && k < sh->nconns; k++) {
            conn_start(&sh->conns[k]);
        }
    }
    *state = st;
    return 0;
}

static void pg_shutdown(void *state)
{
    struct pg_state *st = state;
    st->closing = 1;
    while (!TAILQ_EMPTY(&st->done)) {
        struct pg_call *call = TAILQ_FIRST(&st->done);
        TAILQ_REMOVE(&st->done, call, link);
        complete(call, &call->res);
    }
    for (int i = 0; i < st->nshards; i++) {
        struct pg_shard *sh = &st->shards[i];
        fail_queue(sh, "polygate is shutting down");
        for (int k = 0; k < sh->nconns; k++) {
            struct pg_conn *c = &sh->conns[k];
            struct pg_call *call = c->call;
            c->call = NULL;
            conn_close(c);
            if (call != NULL) {
                fail_unavailable(call, "polygate is shutting down");
            }
            event_free(c->ev);
            event_free(c->wev);
            event_free(c->timer);
        }
        free(sh->conns);
        for (size_t m = 0; m < sh->nmigs; m++) {
            free(sh->migs[m].table);
        }
        free(sh->migs);
    }
    event_free(st->kick);
    free(st->shards);
    free(st);
}

/* ad_ops.stats: the pool of one shard (for /metrics). */
static void pg_stats(void *state, int shard, struct ad_pool_stats *out)
{
    struct pg_state *st = state;
    memset(out, 0, sizeof(*out));
    if (shard < 0 || shard >= st->nshards) {
        return;
    }
    struct pg_shard *sh = &st->shards[shard];
    out->conns = sh->nconns;
    for (int i = 0; i < sh->nconns; i++) {
        out->up += sh->conns[i].state == C_IDLE || sh->conns[i].state == C_BUSY;
        out->busy += sh->conns[i].call != NULL;
    }
    out->queued = sh->pending > out->busy ? sh->pending - out->busy : 0;
}

const struct ad_ops ad_pg_ops = {
    .name = "pg",
    .abi = AD_ABI,
    .init = pg_init,
    .check_domain = pg_check_domain,
    .supports = pg_supports,
    .submit = pg_submit,
    .cancel = pg_cancel,
    .shutdown = pg_shutdown,
    .stats = pg_stats,
};
