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
 * The pool (adapters/sql/sql_pool.c, shared with the MySQL adapter): per
 * shard pool.min..pool.max connections, one request in flight per
 * connection (no pipelining: each request is one statement, and pipelining
 * would tie requests' fates to one another's errors), a bounded FIFO,
 * reconnect with backoff and jitter, auto_migrate on first use, cancel of
 * waiting requests (one already sent runs to its end: PQcancel is
 * blocking, and the gateway has already answered 504).
 */
#include "adapters/pg/ad_pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <libpq-fe.h>

#include "adapters/sql/sql_build.h"
#include "adapters/sql/sql_pool.h"
#include "adapters/sql/sql_row.h"
#include "config/cf_config.h"
#include "lib/lb_json.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "model/md_query.h"

/* Prepared statements.  The item statements of a domain (get, insert, put,
 * patch, delete, the version probe) come in few shapes, and PostgreSQL
 * parses and plans every text it is sent.  A connection prepares a shape the
 * first time it runs it (PQsendPrepare: one more round trip, once per
 * connection) and from then on sends only its name and the parameters
 * (PQsendQueryPrepared).  At most PG_PREPARED shapes per connection; queries
 * and aggregates (as many shapes as there are filters), migrations and pings
 * stay unnamed.  The statements live as long as the session: a reconnect
 * starts with none.  (Behind a transaction-pooling PgBouncer older than
 * 1.21, named statements do not survive: connect polygate to PostgreSQL.) */
#define PG_PREPARED 32

struct pg_call {
    struct sql_call b; /* first: the pool's part */
    int stage;         /* 1: the version probe after a failed conditional write;
                          2: the fence probe after a fenced write changed no row */
    int preparing;     /* 1 + the index of the statement being prepared, or 0 */
    PGresult *result;  /* first error, else last result */
};

struct pg_conn {
    struct sql_conn b; /* first: the pool's part */
    PGconn *pg;
    struct event *ev;            /* socket: connect steps, then EV_READ|EV_PERSIST */
    struct event *wev;           /* flushing a large query */
    char *prepared[PG_PREPARED]; /* the text of statement "pg<i>" */
    size_t prepared_len[PG_PREPARED];
    int nprepared;
};

static struct pg_conn *pg_conn_of(struct sql_conn *c)
{
    return (struct pg_conn *)(void *)c;
}

static struct pg_call *pg_call_of(struct sql_call *c)
{
    return (struct pg_call *)(void *)c;
}

/* ---- connections ------------------------------------------------------------------ */

static void arm(struct pg_conn *c, short what, event_callback_fn fn)
{
    event_del(c->ev);
    event_assign(c->ev, c->b.sh->pool->base, PQsocket(c->pg), what, fn, c);
    event_add(c->ev, NULL);
}

static void on_read(evutil_socket_t fd, short what, void *arg);
static void on_write(evutil_socket_t fd, short what, void *arg);

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
    default:
        sql_pool_connect_failed(&c->b, PQerrorMessage(c->pg));
        return;
    }
    PQsetnonblocking(c->pg, 1);
    arm(c, EV_READ | EV_PERSIST, on_read);
    sql_pool_connected(&c->b, NULL);
}

static void on_notice(void *arg, const char *message)
{
    (void)arg;
    lb_debug("pg notice: %s", message); /* e.g. "relation … already exists, skipping" */
}

static void pg_conn_start(struct sql_conn *sc)
{
    struct pg_conn *c = pg_conn_of(sc);
    static const char *const keys[] = {"dbname", "options", "client_encoding", "application_name",
                                       NULL};
    const char *vals[] = {sc->sh->cfs->dsn, "-c TimeZone=UTC", "UTF8", "polygate", NULL};
    c->pg = PQconnectStartParams(keys, vals, 1);
    if (c->pg != NULL) {
        PQsetNoticeProcessor(c->pg, on_notice, NULL);
    }
    if (c->pg == NULL || PQstatus(c->pg) == CONNECTION_BAD || PQsocket(c->pg) < 0) {
        sql_pool_connect_failed(sc, c->pg != NULL ? PQerrorMessage(c->pg) : "out of memory");
        return;
    }
    arm(c, EV_WRITE, connect_step); /* as if PQconnectPoll said WRITING */
}

static void pg_conn_close(struct sql_conn *sc)
{
    struct pg_conn *c = pg_conn_of(sc);
    event_del(c->ev);
    event_del(c->wev);
    if (c->pg != NULL) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    for (int i = 0; i < c->nprepared; i++) { /* they died with the session */
        free(c->prepared[i]);
        c->prepared[i] = NULL;
    }
    c->nprepared = 0;
}

static void pg_conn_init(struct sql_conn *sc, struct event_base *base)
{
    struct pg_conn *c = pg_conn_of(sc);
    c->ev = event_new(base, -1, 0, on_read, c);
    c->wev = event_new(base, -1, 0, on_write, c);
}

static void pg_conn_fini(struct sql_conn *sc)
{
    struct pg_conn *c = pg_conn_of(sc);
    event_free(c->ev);
    event_free(c->wev);
}

static void pg_call_clear(struct sql_call *call)
{
    struct pg_call *pc = pg_call_of(call);
    if (pc->result != NULL) {
        PQclear(pc->result);
        pc->result = NULL;
    }
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
        if (sc->agg->fn == MD_QAGG_COUNT) {
            return json_object_new_int64(strtoll(v, NULL, 10));
        }
        if (sc->agg->fn == MD_QAGG_SUM || sc->agg->fn == MD_QAGG_AVG) {
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
    case CF_T_TIMESTAMP: { /* "2026-01-31 12:00:00.123+00" (TimeZone=UTC) */
        char buf[64];
        return json_object_new_string_len(buf,
                                          (int)sql_ts_rfc3339(v, (size_t)len, buf, sizeof(buf)));
    }
    case CF_T_OBJECT:
    case CF_T_ARRAY:
    case CF_T_JSON:
    case CF_T_COUNTERS: {
        return sql_pool_json(v, (size_t)len);
    }
    default:
        return json_object_new_string_len(v, len);
    }
}

/* An item from one row; *version gets the version column. */
static struct json_object *row_item(const struct pg_call *pc, const PGresult *r, int row,
                                    int64_t *version)
{
    struct json_object *item = json_object_new_object();
    const struct sql_stmt *st = &pc->b.st;
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

/* The same item as row_item, written as JSON text straight from the row
 * (sql_row_write): single-item answers skip the json-c tree. */
static void row_raw(const struct pg_call *pc, const PGresult *r, int row, int64_t *version,
                    struct evbuffer *out)
{
    enum { MAXC = 64 };
    const char *vals[MAXC];
    unsigned long lens[MAXC];
    size_t n = (size_t)PQnfields(r);
    if (n > MAXC) { /* wider than any domain we have seen: the tree */
        struct json_object *item = row_item(pc, r, row, version);
        lb_json_write(out, item);
        json_object_put(item);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        vals[i] = PQgetisnull(r, row, (int)i) ? NULL : PQgetvalue(r, row, (int)i);
        lens[i] = (unsigned long)PQgetlength(r, row, (int)i);
    }
    sql_row_write(out, &pc->b.st, vals, lens, n, version);
}

/* The rows of a _query / _aggregate (res->rows) and, when the store had one
 * row more than the page, the sort values of the last row shown (res->last):
 * both new references, put by the caller after the completion. */
static void finish_query(struct pg_call *pc, const PGresult *r, struct ad_res *res)
{
    const struct md_query *q = pc->b.req->query;
    int n = PQntuples(r);
    int shown = q->aggregate || n <= q->limit ? n : q->limit;
    struct json_object *items = json_object_new_array_ext(shown);
    int64_t ver;
    for (int i = 0; i < shown; i++) {
        json_object_array_add(items, row_item(pc, r, i, &ver));
    }
    res->rows = items;
    if (!q->aggregate && n > q->limit) {
        struct json_object *vals = json_object_new_array();
        for (size_t k = 0; k < q->norder; k++) {
            struct json_object *v = NULL;
            for (size_t i = 0; i < pc->b.st.ncols; i++) {
                const struct sql_col *sc = &pc->b.st.cols[i];
                if (sc->kind == SQL_COL_FIELD && sc->field == q->order[k].field) {
                    v = cell(r, shown - 1, (int)i, sc);
                    break;
                }
            }
            json_object_array_add(vals, v);
        }
        res->last = vals;
    }
}

static int pg_send(struct sql_conn *sc, struct sql_call *call);

/* A PATCH whose inc took an int column past its range (PostgreSQL says
 * "bigint out of range", naming no column): the gateway's own 409 naming the
 * field, the answer of the stores the gateway increments itself.  A decimal
 * past its digits has the same SQLSTATE: with no int field incremented it
 * stays a 400; with both, every incremented field is named (the store does
 * not say which one).  1 when res holds it. */
static int inc_out_of_range(const struct ad_req *req, struct ad_res *res)
{
    struct json_object *inc;
    if (req == NULL || req->op != AD_PATCH || req->body == NULL ||
        !json_object_object_get_ex(req->body, "inc", &inc)) {
        return 0;
    }
    const struct cf_field *first = NULL;
    char names[160];
    size_t len = 0;
    int n = 0, nint = 0;
    names[0] = '\0';
    json_object_object_foreach(inc, k, v)
    {
        (void)v;
        const struct cf_field *f = cf_field_find(req->domain, k);
        if (f == NULL) {
            continue;
        }
        nint += f->type == CF_T_INT;
        int w = snprintf(names + len, sizeof(names) - len, "%s'%s'", n > 0 ? ", " : "", f->name);
        if (w < 0 || (size_t)w >= sizeof(names) - len) {
            names[len] = '\0'; /* the first ones are named; the field is in the log */
            continue;
        }
        len += (size_t)w;
        first = n++ == 0 ? f : first;
    }
    if (nint == 0 || n == 0) {
        return 0;
    }
    ad_res_error(res, AD_CONFLICT, NULL, "cannot increment %s: the result is out of range", names);
    res->field = n == 1 ? first->name : NULL;
    return 1;
}

/* A store error → status.  23505 names the unique field, 22003 on an inc is
 * the range conflict; any other text of the store goes to the log only, and
 * the client learns the backend, shard and the call id to find it by. */
static void error_result(struct pg_call *pc, const PGresult *r, struct ad_res *res)
{
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *prim = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    const struct sql_shard *sh = pc->b.sh;
    char msg[200];
    snprintf(msg, sizeof(msg), "%s", prim != NULL ? prim : PQresultErrorMessage(r));
    sql_one_line(msg);
    const struct ad_req *req = pc->b.req;
    const struct cf_domain *d = req != NULL ? req->domain : NULL;
    const char *be = sh->pool->be->name, *shn = sh->cfs->name;
    const char *op = req != NULL ? ad_op_name(req->op) : "request";
    unsigned long long id = req != NULL ? (unsigned long long)req->id : 0;
    if (state == NULL) {
        state = "";
    }
    if (strcmp(state, "23505") == 0 && d != NULL) {
        const char *f = sql_constraint_field(d, PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME));
        if (f != NULL && strcmp(f, d->key) == 0) {
            ad_res_error(res, AD_CONFLICT, NULL, "an item with %s '%s' already exists", d->key,
                         req->key != NULL ? req->key : "?");
            res->field = f;
            return;
        }
        if (f != NULL) {
            ad_res_error(res, AD_CONFLICT, NULL, "another item already has this '%s'", f);
            res->field = f;
            return;
        }
    }
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0 ||
        strncmp(state, "53", 2) == 0) {
        /* the gateway answers this one in its own words (backend, shard) */
        ad_res_error(res, AD_UNAVAILABLE, shn,
                     "backend '%s' (PostgreSQL shard '%s') is unavailable: %s", be, shn, msg);
        return;
    }
    int range = strcmp(state, "22003") == 0 && inc_out_of_range(req, res);
    lb_log(range ? LB_LOG_INFO : LB_LOG_WARN,
           "pg backend '%s' shard '%s' call %llu (%s): %s (SQLSTATE %s)", be, shn, id, op, msg,
           state);
    if (range) {
        return;
    }
    if (strcmp(state, "23505") == 0) {
        ad_res_error(res, AD_CONFLICT, NULL,
                     "backend '%s' shard '%s': a unique value of this item is taken (the "
                     "store's error is logged as call %llu)",
                     be, shn, id);
    } else if (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0) {
        ad_res_error(res, AD_BAD_REQUEST, NULL,
                     "backend '%s' shard '%s' refused a value of the %s (the store's error is "
                     "logged as call %llu)",
                     be, shn, op, id);
    } else {
        ad_res_error(res, AD_INTERNAL, shn,
                     "backend '%s' shard '%s' failed the %s (the store's error is logged as "
                     "call %llu)",
                     be, shn, op, id);
    }
}

/* The statement of pc failed (r NULL: no result at all): complete with the
 * store's error. */
static void fail_result(struct pg_call *pc, const PGresult *r)
{
    struct ad_res res;
    ad_res_init(&res);
    if (r == NULL) {
        ad_res_error(&res, AD_INTERNAL, NULL, "no result from PostgreSQL");
    } else {
        error_result(pc, r, &res);
    }
    sql_pool_complete(&pc->b, &res);
}

/* Send pc's (next) statement on c, which just finished the previous one.
 * 1: c is busy with it; 0: the call failed (already completed). */
static int follow_up(struct pg_conn *c, struct pg_call *pc)
{
    PQclear(pc->result);
    pc->result = NULL;
    c->b.call = &pc->b;
    c->b.state = SQL_C_BUSY;
    return pg_send(&c->b, &pc->b) == 0;
}

/* The statement of pc finished on c (now idle).  Returns 1 if c is busy
 * again with a follow-up statement of the same call. */
static int on_result(struct pg_conn *c, struct pg_call *pc)
{
    PGresult *r = pc->result;
    ExecStatusType rs = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    struct ad_res res;
    ad_res_init(&res);
    if (pc->preparing) { /* the statement is prepared: now run it */
        int idx = pc->preparing - 1;
        pc->preparing = 0;
        if (rs != PGRES_COMMAND_OK) {
            fail_result(pc, r);
            return 0;
        }
        c->prepared[idx] = strndup(pc->b.st.text, pc->b.st.len);
        c->prepared_len[idx] = pc->b.st.len;
        c->nprepared = c->prepared[idx] != NULL ? idx + 1 : idx;
        return follow_up(c, pc);
    }
    if (pc->b.is_migration) {
        /* the script is one implicit transaction: a failure rolled it back */
        int ok = rs == PGRES_COMMAND_OK || rs == PGRES_TUPLES_OK;
        sql_pool_migrated(&pc->b, ok ? NULL : r != NULL ? PQresultErrorMessage(r) : NULL);
        return 0;
    }
    if (rs != PGRES_TUPLES_OK && rs != PGRES_COMMAND_OK) {
        fail_result(pc, r);
        return 0;
    }
    const struct ad_req *req = pc->b.req;
    const struct cf_domain *d = req->domain;
    int n = PQntuples(r);
    struct evbuffer *raw = NULL;
    if (pc->stage == 1) { /* version probe after a conditional write matched nothing */
        if (n == 0) {
            ad_res_error(&res, AD_NOT_FOUND, NULL, "no %s item with %s '%s'", d->name, d->key,
                         req->key);
        } else {
            ad_res_error(&res, AD_PRECONDITION, NULL,
                         "version mismatch: the item is at version %s, If-Match said %lld",
                         PQgetvalue(r, 0, 0), (long long)req->if_match);
        }
        sql_pool_complete(&pc->b, &res);
        return 0;
    }
    switch (req->op) {
    case AD_PING:
        break;
    case AD_QUERY:
    case AD_AGGREGATE:
        finish_query(pc, r, &res);
        break;
    case AD_GET:
    case AD_INSERT:
    case AD_PUT:
    case AD_PATCH:
    case AD_DELETE:
        if (pc->stage == 2 && n > 0) { /* the shard does not own the slot */
            sql_pool_slot_moved(&pc->b, &res, PQgetvalue(r, 0, 0));
            break;
        }
        if (n == 0 && pc->stage == 0) {
            enum sql_fence_miss fm = sql_pool_fence_miss(&pc->b, 0);
            if (fm == SQL_MISS_MOVED) {
                char slot[16];
                snprintf(slot, sizeof(slot), "%d", (int)req->slot);
                sql_pool_slot_moved(&pc->b, &res, slot);
                break;
            }
            if (fm == SQL_MISS_PROBE) { /* not owned, or not there: ask */
                char err[128];
                sql_stmt_free(&pc->b.st);
                sql_stmt_init(&pc->b.st, SQL_PG);
                pc->b.st.slot = req->slot;
                if (sql_build_fence_probe(&pc->b.st, d, req->key, err, sizeof(err)) == 0) {
                    pc->stage = 2;
                    return follow_up(c, pc);
                }
            }
        }
        if (n == 0) {
            if (req->if_match >= 0 && (req->op == AD_PATCH || req->op == AD_DELETE)) {
                /* 404 or 412? ask for the version, on the same connection */
                char err[128];
                sql_stmt_free(&pc->b.st);
                sql_stmt_init(&pc->b.st, SQL_PG);
                if (sql_build_version(&pc->b.st, d, req->key, err, sizeof(err)) == 0) {
                    pc->stage = 1;
                    return follow_up(c, pc);
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
        row_raw(pc, r, 0, &res.version, raw);
        res.rawlen = evbuffer_get_length(raw);
        res.raw = (const char *)evbuffer_pullup(raw, -1);
        if (req->op == AD_PUT && pc->b.st.ncols > 0 &&
            pc->b.st.cols[pc->b.st.ncols - 1].kind == SQL_COL_CREATED) {
            res.created = PQgetvalue(r, 0, (int)pc->b.st.ncols - 1)[0] == 't';
        }
        break;
    default:
        ad_res_error(&res, AD_INTERNAL, NULL, "unexpected operation");
    }
    sql_pool_complete(&pc->b, &res);
    json_object_put(res.rows);
    json_object_put(res.last);
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
        sql_pool_conn_broken(&c->b, PQerrorMessage(c->pg));
    }
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    struct pg_conn *c = arg;
    (void)fd;
    (void)what;
    if (!PQconsumeInput(c->pg) || PQstatus(c->pg) == CONNECTION_BAD) {
        sql_pool_conn_broken(&c->b, PQerrorMessage(c->pg));
        return;
    }
    while (!PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        struct pg_call *pc = c->b.call != NULL ? pg_call_of(c->b.call) : NULL;
        if (r == NULL) {
            if (pc == NULL) {
                break; /* idle: nothing to read (notices, a stray ROLLBACK's end) */
            }
            c->b.call = NULL;
            c->b.state = SQL_C_IDLE;
            if (on_result(c, pc)) {
                return; /* a follow-up statement is on its way */
            }
            break;
        }
        if (pc == NULL) {
            PQclear(r); /* a result nobody waits for */
            continue;
        }
        if (pc->result != NULL && PQresultStatus(pc->result) == PGRES_FATAL_ERROR) {
            PQclear(r); /* keep the first error */
        } else {
            if (pc->result != NULL) {
                PQclear(pc->result);
            }
            pc->result = r;
        }
    }
    if (c->b.state == SQL_C_IDLE && c->b.call == NULL && c->pg != NULL) {
        sql_pool_dispatch(c->b.sh);
    }
}

/* Send call on idle connection sc (call and BUSY set).  0, or -1 after
 * failing the call. */
static int pg_send(struct sql_conn *sc, struct sql_call *call)
{
    struct pg_conn *c = pg_conn_of(sc);
    const struct sql_stmt *st = &call->st;
    const char *const *params = (const char *const *)st->params;
    int ok;
    int named = call->req != NULL && call->req->op != AD_QUERY && call->req->op != AD_AGGREGATE &&
                call->req->op != AD_PING;
    int idx = -1;
    for (int i = 0; named && i < c->nprepared; i++) {
        if (c->prepared_len[i] == st->len && memcmp(c->prepared[i], st->text, st->len) == 0) {
            idx = i;
            break;
        }
    }
    char name[16];
    if (call->is_migration) {
        ok = PQsendQuery(c->pg, st->text);
    } else if (idx >= 0) {
        snprintf(name, sizeof(name), "pg%d", idx);
        ok = PQsendQueryPrepared(c->pg, name, (int)st->nparams, params, NULL, NULL, 0);
    } else if (named && c->nprepared < PG_PREPARED) {
        snprintf(name, sizeof(name), "pg%d", c->nprepared);
        ok = PQsendPrepare(c->pg, name, st->text, (int)st->nparams, NULL);
        pg_call_of(call)->preparing = c->nprepared + 1;
    } else {
        ok = PQsendQueryParams(c->pg, st->text, (int)st->nparams, NULL, params, NULL, NULL, 0);
    }
    if (!ok) {
        sql_pool_conn_broken(sc, PQerrorMessage(c->pg));
        return -1;
    }
    int rc = PQflush(c->pg);
    if (rc < 0) {
        sql_pool_conn_broken(sc, PQerrorMessage(c->pg));
        return -1;
    }
    if (rc == 1) {
        event_assign(c->wev, sc->sh->pool->base, PQsocket(c->pg), EV_WRITE, on_write, c);
        event_add(c->wev, NULL);
    }
    return 0;
}

/* ---- the interface -------------------------------------------------------------------- */

static const struct sql_driver pg_driver = {
    .name = "pg",
    .store = "PostgreSQL",
    .dialect = SQL_PG,
    .conn_size = sizeof(struct pg_conn),
    .call_size = sizeof(struct pg_call),
    .conn_init = pg_conn_init,
    .conn_fini = pg_conn_fini,
    .conn_start = pg_conn_start,
    .conn_close = pg_conn_close,
    .send = pg_send,
    .call_clear = pg_call_clear,
};

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
        const struct cf_field *f = &d->fields[i];
        if (f->type == CF_T_COUNTERS) {
            snprintf(err, errlen, "fields.%s: counters are for redis hash domains", f->name);
            return -1;
        }
        /* PostgreSQL cuts identifiers at 63 bytes without a word: two long
         * names would become one column or one index */
        if (strlen(f->name) > 63) {
            snprintf(err, errlen, "fields.%.64s…: a PostgreSQL column name has at most 63 bytes",
                     f->name);
            return -1;
        }
        if (strlen(d->table) + strlen(f->name) + 5 > 63 && (f->unique || f->indexed)) {
            snprintf(err, errlen, "fields.%s: index name <table>_<field>_idx exceeds 63 bytes",
                     f->name);
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
    struct sql_pool *p = sql_pool_new(base, be, &pg_driver, NULL);
    if (p == NULL) {
        snprintf(err, errlen, "backend '%s': out of memory", be->name);
        return -1;
    }
    *state = p;
    return 0;
}

static void pg_shutdown(void *state)
{
    sql_pool_free(state);
}

const struct ad_ops ad_pg_ops = {
    .name = "pg",
    .abi = AD_ABI,
    .init = pg_init,
    .check_domain = pg_check_domain,
    .supports = sql_pool_supports,
    .submit = sql_pool_submit,
    .cancel = sql_pool_cancel,
    .shutdown = pg_shutdown,
    .stats = sql_pool_stats, /* for /metrics */
};
