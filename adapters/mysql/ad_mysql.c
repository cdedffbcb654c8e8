/*
 * ad_mysql.c — MySQL / MariaDB adapter: MariaDB Connector/C, fully
 * non-blocking on the worker loop.  Works against MariaDB 10.11 and MySQL 8.
 *
 * Non-blocking driver: every connector call is a `*_start` / `*_cont` pair
 * (mysql_real_connect, mysql_real_query, mysql_store_result,
 * mysql_next_result).  A call that would block returns wait flags
 * (MYSQL_WAIT_READ / WRITE / EXCEPT / TIMEOUT); we arm one event on
 * mysql_get_socket() for them, with mysql_get_timeout_value_ms() as the
 * event's timeout when MYSQL_WAIT_TIMEOUT is asked, and call `*_cont` with
 * what happened.  Connecting also has our own connect timer
 * (pool.connect_timeout_ms).  A ready, idle connection keeps an EV_READ
 * event: the MySQL protocol never sends unasked, so readable-while-idle
 * means the server closed it (restart, kill) — noticed at once, not at the
 * next request.
 *
 * Session: charset utf8mb4 (MYSQL_SET_CHARSET_NAME), and an init command
 * run inside the non-blocking connect: time_zone '+00:00' (DATETIME(6)
 * columns hold UTC) and a fixed sql_mode (strict: a bad value is an error,
 * never silently truncated; without NO_BACKSLASH_ESCAPES and ANSI_QUOTES,
 * which the generated SQL relies on).  LOAD DATA LOCAL is off.  Host
 * `localhost` would mean the Unix socket to the connector: DSNs use
 * 127.0.0.1.
 *
 * VALUES: ESCAPING, NOT PREPARED STATEMENTS.  sql_build emits `?`
 * placeholders and a parameter list; at send time each parameter becomes a
 * quoted literal escaped by mysql_real_escape_string() on THE connection
 * that runs it, whose character set is utf8mb4 (set at connect, so client
 * and server agree; utf8mb4 has no multi-byte sequence containing the byte
 * of `'` or `\`, the GBK/SJIS escaping hazard), and which also honours a
 * server in NO_BACKSLASH_ESCAPES mode.  The scan that replaces `?` skips
 * quoted identifiers and literals, so a `?` in a config identifier is never
 * mistaken for a placeholder.  Why not prepared statements: a write here is
 * a small script (START TRANSACTION; write; SELECT; COMMIT — MySQL has no
 * RETURNING) sent as ONE round trip with CLIENT_MULTI_STATEMENTS; prepared
 * statements cannot be multi-statement, so each write would cost 4+
 * round trips plus a prepare (or a per-connection statement cache), and
 * result binding needs fixed buffers per column.  Type exactness does not
 * depend on the binary protocol either: sql_build casts where a quoted
 * literal would change a comparison (CAST(? AS SIGNED / DECIMAL / JSON)),
 * and LIMIT is an integer it formats itself.
 *
 * Pool per shard (as the PostgreSQL pool): pool.min connections opened at
 * start, more on demand up to pool.max; one script in flight per
 * connection.  Requests wait in a FIFO bounded by pool.queue_max (beyond →
 * AD_EFULL, 503).  A lost connection fails its in-flight request with
 * AD_UNAVAILABLE naming the shard; when no connection of a shard is left the
 * waiting requests fail too and submit refuses (AD_EDOWN) until a reconnect
 * — exponential backoff with jitter — succeeds.
 *
 * auto_migrate: the first request for a domain starts its CREATE TABLE IF
 * NOT EXISTS on EVERY shard of the backend (the table must exist wherever
 * the router may send a row), and again on a shard that comes back up
 * after a failed attempt.  Requests wait for their shard's migration.
 *
 * cancel(): a request still waiting in the queue completes with
 * AD_CANCELED; one already sent runs to its end (the gateway has answered
 * 504 and ignores the completion).
 */
#include "adapters/mysql/ad_mysql.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <mysql.h>

#include "adapters/sql/sql_build.h"
#include "config/cf_config.h"
#include "gateway/gw_log.h"
#include "gateway/gw_query.h"
#include "gateway/gw_util.h"

#define MY_INIT_COMMAND                                                                            \
    "SET time_zone = '+00:00', sql_mode = "                                                        \
    "'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'"

struct my_state;
struct my_shard;

enum conn_state { C_DOWN, C_CONNECTING, C_IDLE, C_BUSY };
/* the connector call in progress on a connection */
enum conn_op { OP_NONE, OP_CONNECT, OP_QUERY, OP_STORE, OP_NEXT };
enum mig_state { MIG_NONE, MIG_RUNNING, MIG_DONE, MIG_FAILED };

struct my_dsn {
    char *host, *user, *pass, *db;
    unsigned port;
};

/* A domain to migrate: known to every shard (same index everywhere). */
struct my_mig {
    char *table;
    char *sql;
};

struct my_call {
    TAILQ_ENTRY(my_call) link;
    struct my_shard *sh;
    const struct ad_req *req;
    ad_done_cb cb; /* NULL: an internal call (migration) */
    void *arg;
    struct sql_stmt st;
    int mig; /* index into st->migs, or -1 */
    int is_migration;
    int rolling_back;  /* the script failed: ROLLBACK sent, res holds the error */
    MYSQL_RES *rows;   /* result of statement st.rows_at */
    uint64_t affected; /* affected rows of statement st.affected_at */
    struct ad_res res; /* a deferred completion / the error behind a ROLLBACK */
};
TAILQ_HEAD(my_callq, my_call);

struct my_conn {
    struct my_shard *sh;
    MYSQL *my;
    enum conn_state state;
    enum conn_op op;
    struct event *ev;    /* socket waits of the call in progress; idle: EV_READ */
    struct event *timer; /* connect deadline, or reconnect after backoff */
    int64_t backoff_ms;
    struct my_call *call;
    int stmt; /* index of the statement whose result is being read */
    char *text;
};

struct my_shard {
    struct my_state *st;
    const struct cf_shard *cfs;
    struct my_dsn dsn;
    struct my_conn *conns;
    int nconns;
    struct my_callq queue;
    int pending; /* queued + in flight */
    int down;    /* known down: refuse new requests */
    int was_up;
    enum mig_state *migs; /* per st->migs */
    char lasterr[200];
};

struct my_state {
    struct event_base *base;
    const struct cf_backend *be;
    struct my_shard *shards;
    int nshards;
    struct my_mig *migs;
    size_t nmigs;
    struct event *kick; /* deferred completions, then dispatch */
    struct my_callq done;
    int closing;
};

static void conn_start(struct my_conn *c);
static void dispatch(struct my_shard *sh);
static void step(struct my_conn *c, int status);
static int send_text(struct my_conn *c, const char *text, size_t len);

/* ---- completing ----------------------------------------------------------------- */

static void call_free(struct my_call *call)
{
    sql_stmt_free(&call->st);
    if (call->rows != NULL) {
        mysql_free_result(call->rows);
    }
    free(call);
}

static void complete(struct my_call *call, struct ad_res *res)
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
static void defer(struct my_call *call)
{
    TAILQ_INSERT_TAIL(&call->sh->st->done, call, link);
    event_active(call->sh->st->kick, EV_TIMEOUT, 0);
}

/* "backend 'b' (MySQL shard 's') <what>: <detail>" */
static void fail(struct my_call *call, enum ad_status status, const char *what, const char *detail)
{
    struct ad_res res;
    ad_res_init(&res);
    struct my_shard *sh = call->sh;
    ad_res_error(&res, status, sh->cfs->name, "backend '%s' (MySQL shard '%s') %s: %s",
                 sh->st->be->name, sh->cfs->name, what, detail);
    complete(call, &res);
}

static void fail_unavailable(struct my_call *call, const char *detail)
{
    fail(call, AD_UNAVAILABLE, "is unavailable", detail);
}

/* A migration ended without success: the calls waiting for it fail. */
static void mig_failed(struct my_shard *sh, int mig, enum mig_state next, const char *why)
{
    sh->migs[mig] = next;
    struct my_call *c = TAILQ_FIRST(&sh->queue);
    while (c != NULL) {
        struct my_call *nx = TAILQ_NEXT(c, link);
        if (c->mig == mig && !c->is_migration) {
            TAILQ_REMOVE(&sh->queue, c, link);
            fail(c, AD_UNAVAILABLE, "cannot serve the domain: auto_migrate failed", why);
        }
        c = nx;
    }
}

static void fail_queue(struct my_shard *sh, const char *why)
{
    while (!TAILQ_EMPTY(&sh->queue)) {
        struct my_call *c = TAILQ_FIRST(&sh->queue);
        TAILQ_REMOVE(&sh->queue, c, link);
        if (c->is_migration) {
            sh->migs[c->mig] = MIG_NONE; /* retried when the shard is back */
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

static int live(const struct my_shard *sh)
{
    int n = 0;
    for (int i = 0; i < sh->nconns; i++) {
        n += sh->conns[i].state == C_IDLE || sh->conns[i].state == C_BUSY;
    }
    return n;
}

static void schedule_retry(struct my_conn *c)
{
    struct my_shard *sh = c->sh;
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

static void shard_lost(struct my_shard *sh, const char *why)
{
    snprintf(sh->lasterr, sizeof(sh->lasterr), "%s", why);
    if (live(sh) > 0 || sh->st->closing) {
        return;
    }
    if (sh->was_up) {
        gw_warn("mysql backend '%s' shard '%s' is down: %s", sh->st->be->name, sh->cfs->name, why);
        sh->was_up = 0;
    }
    sh->down = 1;
    fail_queue(sh, why);
}

static void one_line(char *s)
{
    for (char *p = s; *p != '\0'; p++) {
        if (*p == '\n' || *p == '\r') {
            *p = ' ';
        }
    }
}

static void conn_close(struct my_conn *c)
{
    event_del(c->ev);
    evtimer_del(c->timer);
    if (c->my != NULL) {
        /* may write COM_QUIT: a few bytes into an empty socket buffer */
        mysql_close(c->my);
        c->my = NULL;
    }
    free(c->text);
    c->text = NULL;
    c->op = OP_NONE;
    c->state = C_DOWN;
}

static void conn_broken(struct my_conn *c, const char *why)
{
    char msg[200];
    snprintf(msg, sizeof(msg), "%s", why != NULL && why[0] ? why : "connection lost");
    one_line(msg);
    struct my_call *call = c->call;
    c->call = NULL;
    conn_close(c);
    if (call != NULL) {
        if (call->is_migration) {
            mig_failed(c->sh, call->mig, MIG_NONE, msg);
        }
        fail_unavailable(call, msg);
    }
    shard_lost(c->sh, msg);
    schedule_retry(c);
}

static void on_io(evutil_socket_t fd, short what, void *arg);

/* Wait for what the connector asked (status: MYSQL_WAIT_* flags). */
static void wait_for(struct my_conn *c, int status)
{
    short what = 0;
    if (status & (MYSQL_WAIT_READ | MYSQL_WAIT_EXCEPT)) {
        what |= EV_READ;
    }
    if (status & MYSQL_WAIT_WRITE) {
        what |= EV_WRITE;
    }
    event_del(c->ev);
    event_assign(c->ev, c->sh->st->base, mysql_get_socket(c->my), what, on_io, c);
    if (status & MYSQL_WAIT_TIMEOUT) {
        struct timeval tv;
        tv_ms(&tv, (int64_t)mysql_get_timeout_value_ms(c->my));
        event_add(c->ev, &tv);
    } else {
        event_add(c->ev, NULL);
    }
}

/* Idle: watch the socket; readable means the server closed the connection. */
static void watch_idle(struct my_conn *c)
{
    event_del(c->ev);
    event_assign(c->ev, c->sh->st->base, mysql_get_socket(c->my), EV_READ | EV_PERSIST, on_io, c);
    event_add(c->ev, NULL);
}

static void connected(struct my_conn *c)
{
    struct my_shard *sh = c->sh;
    evtimer_del(c->timer);
    c->op = OP_NONE;
    c->state = C_IDLE;
    c->backoff_ms = 0;
    sh->down = 0;
    watch_idle(c);
    if (!sh->was_up) {
        gw_info("mysql backend '%s' shard '%s' is up (%s)", sh->st->be->name, sh->cfs->name,
                mysql_get_server_info(c->my));
        sh->was_up = 1;
    }
    dispatch(sh);
}

static void connect_failed(struct my_conn *c, const char *why)
{
    char msg[200];
    snprintf(msg, sizeof(msg), "%s", why);
    one_line(msg);
    gw_debug("mysql shard '%s': connect failed: %s", c->sh->cfs->name, msg);
    conn_close(c);
    shard_lost(c->sh, msg);
    schedule_retry(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct my_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->state == C_CONNECTING) {
        connect_failed(c, "connect timeout");
    } else if (c->state == C_DOWN) {
        conn_start(c);
    }
}

static void conn_start(struct my_conn *c)
{
    struct my_shard *sh = c->sh;
    const struct cf_pool *p = &sh->st->be->pool;
    c->my = mysql_init(NULL);
    if (c->my == NULL) {
        c->state = C_CONNECTING;
        connect_failed(c, "out of memory");
        return;
    }
    unsigned int tmo = (unsigned int)((p->connect_timeout_ms + 999) / 1000);
    unsigned int off = 0;
    mysql_options(c->my, MYSQL_OPT_NONBLOCK, 0);
    mysql_options(c->my, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    mysql_options(c->my, MYSQL_INIT_COMMAND, MY_INIT_COMMAND);
    mysql_options(c->my, MYSQL_OPT_CONNECT_TIMEOUT, &tmo);
    mysql_options(c->my, MYSQL_OPT_LOCAL_INFILE, &off);
    mysql_optionsv(c->my, MYSQL_OPT_CONNECT_ATTR_ADD, "program_name", "polygate");
    c->state = C_CONNECTING;
    c->op = OP_CONNECT;
    struct timeval tv;
    tv_ms(&tv, p->connect_timeout_ms);
    evtimer_add(c->timer, &tv);
    MYSQL *ret = NULL;
    int status = mysql_real_connect_start(&ret, c->my, sh->dsn.host, sh->dsn.user, sh->dsn.pass,
                                          sh->dsn.db, sh->dsn.port, NULL, CLIENT_MULTI_STATEMENTS);
    if (status != 0) {
        wait_for(c, status);
        return;
    }
    if (ret == NULL) {
        connect_failed(c, mysql_error(c->my));
        return;
    }
    connected(c);
}

/* ---- results → JSON ---------------------------------------------------------------- */

/* "2026-01-31 10:00:00.500000" → "2026-01-31T10:00:00.5Z" (as gw_item writes them) */
static struct json_object *ts_json(const char *v, unsigned long len)
{
    char buf[64];
    snprintf(buf, sizeof(buf), "%.*s", (int)(len < 40 ? len : 40), v);
    size_t n = strlen(buf);
    if (n > 10 && buf[10] == ' ') {
        buf[10] = 'T';
    }
    char *dot = strchr(buf, '.');
    if (dot != NULL) {
        while (n > 0 && buf[n - 1] == '0') {
            buf[--n] = '\0';
        }
        if (buf + n - 1 == dot) {
            buf[--n] = '\0';
        }
    }
    snprintf(buf + n, sizeof(buf) - n, "Z");
    return json_object_new_string(buf);
}

static struct json_object *cell(MYSQL_ROW row, const unsigned long *lens, size_t i,
                                const struct sql_col *sc)
{
    const char *v = row[i];
    if (v == NULL) {
        return NULL;
    }
    unsigned long len = lens[i];
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
    case CF_T_DECIMAL: /* DECIMAL(p,s) comes as its exact text: "123.40" */
        return json_object_new_double_s(strtod(v, NULL), v);
    case CF_T_BOOL:
        return json_object_new_boolean(v[0] != '0');
    case CF_T_TIMESTAMP:
        return ts_json(v, len);
    case CF_T_OBJECT:
    case CF_T_ARRAY:
    case CF_T_JSON:
    case CF_T_COUNTERS: { /* JSON (MySQL) / LONGTEXT (MariaDB): a document, not a string */
        /* the row's NUL terminator ends a top-level number or literal
         * (`null`, `12`) that the tokener would otherwise wait to continue */
        struct json_tokener *tok = json_tokener_new_ex(1000);
        struct json_object *o = json_tokener_parse_ex(tok, v, (int)len + 1);
        if (json_tokener_get_error(tok) != json_tokener_success) {
            json_object_put(o);
            o = json_object_new_string_len(v, (int)len);
        }
        json_tokener_free(tok);
        return o;
    }
    default:
        return json_object_new_string_len(v, (int)len);
    }
}

/* An item from one row; *version gets the version column. */
static struct json_object *row_item(const struct my_call *call, MYSQL_ROW row,
                                    const unsigned long *lens, unsigned nf, int64_t *version)
{
    struct json_object *item = json_object_new_object();
    const struct sql_stmt *st = &call->st;
    for (size_t i = 0; i < st->ncols && i < nf; i++) {
        const struct sql_col *sc = &st->cols[i];
        if (sc->hidden) {
            continue;
        }
        if (sc->kind == SQL_COL_VERSION) {
            *version = row[i] != NULL ? strtoll(row[i], NULL, 10) : -1;
            json_object_object_add(item, "version", json_object_new_int64(*version));
            continue;
        }
        if (sc->kind == SQL_COL_AGG) {
            json_object_object_add(item, sc->agg->alias, cell(row, lens, i, sc));
            continue;
        }
        if (row[i] == NULL) {
            continue; /* SQL NULL: the field is absent */
        }
        json_object_object_add(item, sc->field->name, cell(row, lens, i, sc));
    }
    return item;
}

static void finish_query(struct my_call *call, struct ad_res *res)
{
    const struct gw_query *q = gw_query_of(call->req->body);
    MYSQL_RES *r = call->rows;
    int n = r != NULL ? (int)mysql_num_rows(r) : 0;
    unsigned nf = r != NULL ? mysql_num_fields(r) : 0;
    int shown = q->aggregate || n <= q->limit ? n : q->limit;
    struct json_object *doc = json_object_new_object();
    struct json_object *items = json_object_new_array_ext(shown);
    int64_t ver;
    MYSQL_ROW last = NULL;
    unsigned long *lastlens = NULL;
    for (int i = 0; i < shown; i++) {
        MYSQL_ROW row = mysql_fetch_row(r);
        unsigned long *lens = mysql_fetch_lengths(r);
        json_object_array_add(items, row_item(call, row, lens, nf, &ver));
        last = row;
        lastlens = lens;
    }
    json_object_object_add(doc, "items", items);
    struct json_object *cursor = NULL;
    if (!q->aggregate && n > q->limit && last != NULL) {
        struct json_object *vals = json_object_new_array();
        for (size_t k = 0; k < q->norder; k++) {
            struct json_object *v = NULL;
            for (size_t i = 0; i < call->st.ncols && i < nf; i++) {
                const struct sql_col *sc = &call->st.cols[i];
                if (sc->kind == SQL_COL_FIELD && sc->field == q->order[k].field) {
                    v = cell(last, lastlens, i, sc);
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

/* "Duplicate entry 'x' for key 'orders_email_key'" (MariaDB) or
 * "… for key 'orders.orders_email_key'" (MySQL 8) → the key name. */
static const char *dup_key_name(const char *msg, char *buf, size_t buflen)
{
    const char *p = strstr(msg, "for key '");
    if (p == NULL) {
        return NULL;
    }
    p += strlen("for key '");
    const char *e = strrchr(p, '\'');
    if (e == NULL) {
        return NULL;
    }
    snprintf(buf, buflen, "%.*s", (int)(e - p), p);
    return buf;
}

/* Errors that mean the connection is gone (client errors 2000–2999, the
 * server shutting down or killing it). */
static int conn_error(unsigned int no)
{
    return (no >= 2000 && no < 3000) || no == 1053 /* ER_SERVER_SHUTDOWN */ ||
           no == 1927 /* ER_CONNECTION_KILLED */ || no == 1040 /* too many connections */;
}

/* A store error → status.  1062 names the unique field. */
static void error_result(struct my_call *call, unsigned int no, const char *sqlstate,
                         const char *text, struct ad_res *res)
{
    char msg[200];
    snprintf(msg, sizeof(msg), "%s", text);
    one_line(msg);
    const struct cf_domain *d = call->req != NULL ? call->req->domain : NULL;
    struct my_shard *sh = call->sh;
    switch (no) {
    case 1062: /* ER_DUP_ENTRY */
    case 1586: /* ER_DUP_ENTRY_WITH_KEY_NAME */ {
        char kb[128];
        const char *f =
            d != NULL ? sql_constraint_field(d, dup_key_name(msg, kb, sizeof(kb))) : NULL;
        if (f != NULL && strcmp(f, d->key) == 0) {
            ad_res_error(res, AD_CONFLICT, NULL, "an item with %s '%s' already exists", d->key,
                         call->req->key != NULL ? call->req->key : "?");
        } else if (f != NULL) {
            ad_res_error(res, AD_CONFLICT, NULL, "another item already has this '%s'", f);
        } else {
            ad_res_error(res, AD_CONFLICT, NULL, "unique constraint violated: %s", msg);
        }
        res->field = f;
        return;
    }
    case 1213: /* ER_LOCK_DEADLOCK */
    case 1205: /* ER_LOCK_WAIT_TIMEOUT */
        ad_res_error(res, AD_CONFLICT, NULL, "concurrent write on the same item, retry: %s", msg);
        return;
    case 1048: /* column cannot be null */
    case 1264: /* out of range */
    case 1265: /* data truncated */
    case 1292: /* incorrect datetime */
    case 1366: /* incorrect value */
    case 1406: /* data too long */
    case 1690: /* BIGINT out of range */
    case 3140: /* MySQL: invalid JSON */
    case 3819: /* MySQL: CHECK constraint */
    case 4025: /* MariaDB: CHECK constraint (JSON columns) */
        ad_res_error(res, AD_BAD_REQUEST, NULL, "MySQL refused the value: %s", msg);
        return;
    default:
        break;
    }
    if (strncmp(sqlstate, "22", 2) == 0) {
        ad_res_error(res, AD_BAD_REQUEST, NULL, "MySQL refused the value: %s", msg);
        return;
    }
    gw_warn("mysql shard '%s': %s (error %u, SQLSTATE %s)", sh->cfs->name, msg, no, sqlstate);
    ad_res_error(res, AD_INTERNAL, sh->cfs->name, "MySQL error on shard '%s': %s", sh->cfs->name,
                 msg);
}

/* ---- a script's results ------------------------------------------------------------ */

/* The script of c->call ran to its end; build the response. */
static void script_done(struct my_conn *c)
{
    struct my_call *call = c->call;
    struct my_shard *sh = c->sh;
    c->call = NULL;
    c->op = OP_NONE;
    c->state = C_IDLE;
    free(c->text);
    c->text = NULL;
    watch_idle(c);
    struct ad_res res;
    ad_res_init(&res);
    if (call->rolling_back) { /* the error the ROLLBACK followed */
        complete(call, &call->res);
        dispatch(sh);
        return;
    }
    if (call->is_migration) {
        sh->migs[call->mig] = MIG_DONE;
        gw_info("mysql backend '%s' shard '%s': table '%s' migrated", sh->st->be->name,
                sh->cfs->name, sh->st->migs[call->mig].table);
        complete(call, &res);
        dispatch(sh);
        return;
    }
    const struct ad_req *req = call->req;
    const struct cf_domain *d = req->domain;
    struct json_object *item = NULL;
    MYSQL_RES *r = call->rows;
    unsigned nf = r != NULL ? mysql_num_fields(r) : 0;
    MYSQL_ROW row = r != NULL ? mysql_fetch_row(r) : NULL;
    unsigned long *lens = row != NULL ? mysql_fetch_lengths(r) : NULL;
    /* a write that matched nothing: the SELECT of the same transaction
     * tells 404 (no row) from 412 (a row at another version) */
    int missed = call->st.affected_at >= 0 && call->affected == 0;
    switch (req->op) {
    case AD_PING:
        break;
    case AD_QUERY:
    case AD_AGGREGATE:
        if (r != NULL) {
            mysql_data_seek(r, 0);
        }
        finish_query(call, &res);
        item = res.item;
        break;
    case AD_PUT:
        if (missed && req->if_match < 0) { /* upsert stopped by another row's unique value */
            ad_res_error(&res, AD_CONFLICT, NULL,
                         "another item already has a value of a unique field of this item");
            break;
        }
        /* fall through */
    case AD_GET:
    case AD_INSERT:
    case AD_PATCH:
    case AD_DELETE:
        if (missed || row == NULL) {
            if (row != NULL && req->if_match >= 0) {
                ad_res_error(&res, AD_PRECONDITION, NULL,
                             "version mismatch: the item is at version %s, If-Match said %lld",
                             row[call->st.ncols - 1] != NULL ? row[call->st.ncols - 1] : "?",
                             (long long)req->if_match);
            } else {
                ad_res_error(&res, AD_NOT_FOUND, NULL, "no %s item with %s '%s'", d->name, d->key,
                             req->key != NULL ? req->key : "?");
            }
            break;
        }
        if (req->op == AD_DELETE) {
            res.version = strtoll(row[0], NULL, 10);
            break;
        }
        item = row_item(call, row, lens, nf, &res.version);
        res.item = item;
        if (req->op == AD_PUT && req->if_match < 0) {
            res.created = call->affected == 1; /* 1 inserted, 2 updated */
        }
        break;
    default:
        ad_res_error(&res, AD_INTERNAL, NULL, "unexpected operation");
    }
    complete(call, &res);
    json_object_put(item);
    dispatch(sh);
}

/* A statement of the script failed (the server runs none after it). */
static void script_failed(struct my_conn *c)
{
    unsigned int no = mysql_errno(c->my);
    if (conn_error(no)) {
        conn_broken(c, mysql_error(c->my));
        return;
    }
    struct my_call *call = c->call;
    struct my_shard *sh = c->sh;
    if (call->rolling_back) { /* ROLLBACK itself failed: the session is suspect */
        conn_broken(c, mysql_error(c->my));
        return;
    }
    if (call->is_migration) {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s", mysql_error(c->my));
        one_line(msg);
        gw_error("mysql backend '%s' shard '%s': auto_migrate of '%s' failed: %s", sh->st->be->name,
                 sh->cfs->name, sh->st->migs[call->mig].table, msg);
        mig_failed(sh, call->mig, MIG_FAILED, msg);
        c->call = NULL;
        c->op = OP_NONE;
        c->state = C_IDLE;
        watch_idle(c);
        struct ad_res res;
        ad_res_init(&res);
        complete(call, &res);
        dispatch(sh);
        return;
    }
    ad_res_init(&call->res);
    error_result(call, no, mysql_sqlstate(c->my), mysql_error(c->my), &call->res);
    if (call->st.txn) { /* the transaction is still open on this session */
        call->rolling_back = 1;
        static const char rb[] = "ROLLBACK";
        (void)send_text(c, rb, sizeof(rb) - 1);
        return;
    }
    call->rolling_back = 1; /* i.e. "complete with call->res" */
    script_done(c);
}

static void next_result(struct my_conn *c);

/* The current statement's result is available (query or next_result done). */
static void have_result(struct my_conn *c)
{
    struct my_call *call = c->call;
    if (mysql_field_count(c->my) > 0) {
        c->op = OP_STORE;
        MYSQL_RES *res = NULL;
        int status = mysql_store_result_start(&res, c->my);
        if (status != 0) {
            wait_for(c, status);
            return;
        }
        if (res == NULL) {
            script_failed(c);
            return;
        }
        if (c->stmt == call->st.rows_at && call->rows == NULL && !call->rolling_back) {
            call->rows = res;
        } else {
            mysql_free_result(res);
        }
    } else if (c->stmt == call->st.affected_at) {
        call->affected = mysql_affected_rows(c->my);
    }
    next_result(c);
}

static void next_result(struct my_conn *c)
{
    if (!mysql_more_results(c->my)) {
        script_done(c);
        return;
    }
    c->stmt++;
    c->op = OP_NEXT;
    int err = 0;
    int status = mysql_next_result_start(&err, c->my);
    if (status != 0) {
        wait_for(c, status);
        return;
    }
    if (err > 0) {
        script_failed(c);
    } else if (err == 0) {
        have_result(c);
    } else {
        script_done(c);
    }
}

/* The connector's call in progress can go on (status: what happened). */
static void step(struct my_conn *c, int status)
{
    switch (c->op) {
    case OP_CONNECT: {
        MYSQL *ret = NULL;
        int s = mysql_real_connect_cont(&ret, c->my, status);
        if (s != 0) {
            wait_for(c, s);
        } else if (ret == NULL) {
            connect_failed(c, mysql_error(c->my));
        } else {
            connected(c);
        }
        return;
    }
    case OP_QUERY: {
        int err = 0;
        int s = mysql_real_query_cont(&err, c->my, status);
        if (s != 0) {
            wait_for(c, s);
        } else if (err != 0) {
            script_failed(c);
        } else {
            have_result(c);
        }
        return;
    }
    case OP_STORE: {
        MYSQL_RES *res = NULL;
        int s = mysql_store_result_cont(&res, c->my, status);
        if (s != 0) {
            wait_for(c, s);
            return;
        }
        if (res == NULL) {
            script_failed(c);
            return;
        }
        struct my_call *call = c->call;
        if (c->stmt == call->st.rows_at && call->rows == NULL && !call->rolling_back) {
            call->rows = res;
        } else {
            mysql_free_result(res);
        }
        next_result(c);
        return;
    }
    case OP_NEXT: {
        int err = 0;
        int s = mysql_next_result_cont(&err, c->my, status);
        if (s != 0) {
            wait_for(c, s);
        } else if (err > 0) {
            script_failed(c);
        } else if (err == 0) {
            have_result(c);
        } else {
            script_done(c);
        }
        return;
    }
    case OP_NONE:
        break;
    }
    /* idle and readable: the server closed the connection (or sent an
     * error packet before closing it) */
    if (c->state == C_IDLE) {
        conn_broken(c, "the server closed the connection");
    }
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    struct my_conn *c = arg;
    (void)fd;
    int status = 0;
    if (what & EV_READ) {
        status |= MYSQL_WAIT_READ;
    }
    if (what & EV_WRITE) {
        status |= MYSQL_WAIT_WRITE;
    }
    if (what & EV_TIMEOUT) {
        status |= MYSQL_WAIT_TIMEOUT;
    }
    step(c, status);
}

/* ---- sending ------------------------------------------------------------------------ */

/* st's text with every `?` replaced by its parameter as an escaped, quoted
 * literal ('…', or NULL).  `?` inside `identifiers` and '…' literals is left
 * alone.  NULL if the placeholders and parameters do not match. */
static char *interpolate(MYSQL *my, const struct sql_stmt *st, size_t *outlen)
{
    size_t cap = st->len + 1;
    for (size_t i = 0; i < st->nparams; i++) {
        cap += st->params[i] != NULL ? strlen(st->params[i]) * 2 + 3 : 5;
    }
    char *out = malloc(cap), *o = out;
    if (out == NULL) {
        return NULL;
    }
    size_t k = 0;
    const char *s = st->text;
    char quote = 0; /* '`' or '\'' while inside one */
    for (size_t i = 0; i < st->len; i++) {
        char ch = s[i];
        if (quote != 0) {
            *o++ = ch;
            if (quote == '\'' && ch == '\\' && i + 1 < st->len) {
                *o++ = s[++i];
            } else if (ch == quote) {
                if (i + 1 < st->len && s[i + 1] == quote) {
                    *o++ = s[++i]; /* doubled quote */
                } else {
                    quote = 0;
                }
            }
            continue;
        }
        if (ch == '`' || ch == '\'') {
            quote = ch;
            *o++ = ch;
            continue;
        }
        if (ch != '?') {
            *o++ = ch;
            continue;
        }
        if (k == st->nparams) {
            free(out);
            return NULL;
        }
        const char *p = st->params[k++];
        if (p == NULL) {
            memcpy(o, "NULL", 4);
            o += 4;
            continue;
        }
        *o++ = '\'';
        unsigned long n = mysql_real_escape_string(my, o, p, (unsigned long)strlen(p));
        if (n == (unsigned long)-1) {
            free(out);
            return NULL;
        }
        o += n;
        *o++ = '\'';
    }
    if (k != st->nparams) {
        free(out);
        return NULL;
    }
    *o = '\0';
    *outlen = (size_t)(o - out);
    return out;
}

/* Start sending text on c (c->call set).  0, or -1 after failing the call. */
static int send_text(struct my_conn *c, const char *text, size_t len)
{
    c->stmt = 0;
    c->op = OP_QUERY;
    int err = 0;
    int status = mysql_real_query_start(&err, c->my, text, (unsigned long)len);
    if (status != 0) {
        wait_for(c, status);
        return 0;
    }
    if (err != 0) {
        int broken = conn_error(mysql_errno(c->my));
        script_failed(c);
        return broken ? -1 : 0;
    }
    have_result(c);
    return 0;
}

static int send_call(struct my_conn *c, struct my_call *call)
{
    size_t len = 0;
    char *text = interpolate(c->my, &call->st, &len);
    if (text == NULL) {
        struct ad_res res;
        ad_res_init(&res);
        ad_res_error(&res, AD_INTERNAL, NULL, "cannot build the SQL text for shard '%s'",
                     c->sh->cfs->name);
        complete(call, &res);
        return -1;
    }
    event_del(c->ev);
    c->call = call;
    c->state = C_BUSY;
    c->text = text; /* the connector reads it while the query is being sent */
    return send_text(c, text, len);
}

/* Start the migration m on shard sh (ahead of everything queued). */
static void mig_start(struct my_shard *sh, int m)
{
    struct my_call *mc = calloc(1, sizeof(*mc));
    if (mc == NULL) {
        return;
    }
    mc->sh = sh;
    mc->mig = m;
    mc->is_migration = 1;
    sql_stmt_init(&mc->st, SQL_MYSQL);
    mc->st.text = strdup(sh->st->migs[m].sql);
    mc->st.len = strlen(mc->st.text);
    mc->st.rows_at = -1;
    sh->migs[m] = MIG_RUNNING;
    sh->pending++;
    TAILQ_INSERT_HEAD(&sh->queue, mc, link);
}

/* Ready: not waiting for its domain's migration on this shard. */
static int call_ready(struct my_shard *sh, struct my_call *call)
{
    if (call->is_migration || call->mig < 0) {
        return 1;
    }
    enum mig_state m = sh->migs[call->mig];
    if (m == MIG_DONE) {
        return 1;
    }
    if (m == MIG_NONE || m == MIG_FAILED) { /* a request retries a failed one */
        mig_start(sh, call->mig);
    }
    return 0;
}

/* The next call to send: queued migrations first (they sit at the head). */
static struct my_call *next_ready(struct my_shard *sh)
{
    struct my_call *it;
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

static void dispatch(struct my_shard *sh)
{
    if (sh->st->closing) {
        return;
    }
    if (!sh->down) { /* migrations of known domains not yet run here */
        for (size_t m = 0; m < sh->st->nmigs; m++) {
            if (sh->migs[m] == MIG_NONE) {
                mig_start(sh, (int)m);
            }
        }
    }
    for (;;) {
        struct my_call *call = next_ready(sh);
        if (call == NULL) {
            return;
        }
        struct my_conn *idle = NULL, *spare = NULL;
        int connecting = 0;
        for (int i = 0; i < sh->nconns; i++) {
            struct my_conn *c = &sh->conns[i];
            if (c->state == C_IDLE && idle == NULL) {
                idle = c;
            } else if (c->state == C_CONNECTING) {
                connecting++;
            } else if (c->state == C_DOWN && spare == NULL && !evtimer_pending(c->timer, NULL)) {
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
        (void)send_call(idle, call); /* on failure the call is already failed */
    }
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct my_state *st = arg;
    (void)fd;
    (void)what;
    while (!TAILQ_EMPTY(&st->done)) {
        struct my_call *call = TAILQ_FIRST(&st->done);
        TAILQ_REMOVE(&st->done, call, link);
        complete(call, &call->res);
    }
    for (int i = 0; i < st->nshards; i++) {
        dispatch(&st->shards[i]);
    }
}

/* ---- the interface -------------------------------------------------------------------- */

/* The migration index of d (registered on every shard at first sight), or -1. */
static int mig_index(struct my_state *st, const struct cf_domain *d)
{
    if (d == NULL || !d->auto_migrate) {
        return -1;
    }
    for (size_t i = 0; i < st->nmigs; i++) {
        if (strcmp(st->migs[i].table, d->table) == 0) {
            return (int)i;
        }
    }
    struct sql_stmt ddl;
    char err[128];
    sql_stmt_init(&ddl, SQL_MYSQL);
    if (sql_build_migrate(&ddl, d, err, sizeof(err)) < 0) {
        gw_error("mysql: cannot build the migration of '%s': %s", d->table, err);
        sql_stmt_free(&ddl);
        return -1;
    }
    struct my_mig *migs = realloc(st->migs, (st->nmigs + 1) * sizeof(*migs));
    if (migs == NULL) {
        sql_stmt_free(&ddl);
        return -1;
    }
    st->migs = migs;
    for (int i = 0; i < st->nshards; i++) {
        enum mig_state *ms =
            realloc(st->shards[i].migs, (st->nmigs + 1) * sizeof(*st->shards[i].migs));
        if (ms == NULL) {
            sql_stmt_free(&ddl);
            return -1;
        }
        ms[st->nmigs] = MIG_NONE; /* dispatch starts it on every shard that is up */
        st->shards[i].migs = ms;
    }
    st->migs[st->nmigs].table = strdup(d->table);
    st->migs[st->nmigs].sql = strdup(ddl.text);
    sql_stmt_free(&ddl);
    return (int)st->nmigs++;
}

static int build(struct my_call *call, char *err, size_t errlen)
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

static int my_submit(void *state, const struct ad_req *req, ad_done_cb cb, void *arg)
{
    struct my_state *st = state;
    if (st->closing) {
        return AD_EDOWN;
    }
    if (req->shard < 0 || req->shard >= st->nshards) {
        return AD_EINVAL;
    }
    struct my_shard *sh = &st->shards[req->shard];
    if (sh->down) {
        return AD_EDOWN;
    }
    if (sh->pending >= st->be->pool.queue_max) {
        return AD_EFULL;
    }
    struct my_call *call = calloc(1, sizeof(*call));
    if (call == NULL) {
        return AD_EFULL;
    }
    call->sh = sh;
    call->req = req;
    call->cb = cb;
    call->arg = arg;
    call->mig = req->op == AD_PING ? -1 : mig_index(st, req->domain);
    sql_stmt_init(&call->st, SQL_MYSQL);
    call->st.slot = req->slot;
    call->st.excl_slots = req->excl_slots;
    call->st.nexcl = req->nexcl;
    sh->pending++;
    char err[200];
    int rc = 0;
    if (req->op == AD_PING) {
        call->st.text = strdup("SELECT 1");
        call->st.len = strlen(call->st.text);
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

static void my_cancel(void *state, uint64_t req_id)
{
    struct my_state *st = state;
    for (int i = 0; i < st->nshards; i++) {
        struct my_shard *sh = &st->shards[i];
        struct my_call *c;
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

static int my_supports(const struct cf_domain *d, enum ad_op op)
{
    (void)d;
    return op <= AD_PING;
}

static int my_check_domain(const struct cf_backend *be, const struct cf_domain *d, char *err,
                           size_t errlen)
{
    (void)be;
    if (d->kind != CF_KIND_RECORD) {
        snprintf(err, errlen, "kind: mysql serves `record` domains only");
        return -1;
    }
    if (!d->versioned) {
        snprintf(err, errlen, "versioned: mysql domains always carry a version");
        return -1;
    }
    if (strlen(d->table) > 40) {
        snprintf(err, errlen, "table: at most 40 bytes (index names derive from it)");
        return -1;
    }
    for (size_t i = 0; i < d->nfields; i++) {
        const struct cf_field *f = &d->fields[i];
        if (f->type == CF_T_COUNTERS) {
            snprintf(err, errlen, "fields.%s: counters are for redis hash domains", f->name);
            return -1;
        }
        if (strlen(d->table) + strlen(f->name) + 5 > 64 && (f->unique || f->indexed)) {
            snprintf(err, errlen, "fields.%s: index name <table>_<field>_idx exceeds 64 bytes",
                     f->name);
            return -1;
        }
        /* InnoDB keys hold at most 3072 bytes = 768 utf8mb4 characters */
        if (sql_mysql_varchar_len(d, f) > 768 &&
            (f->unique || f->indexed || strcmp(f->name, d->key) == 0)) {
            snprintf(err, errlen,
                     "fields.%s: max_len %zu is too long for a MySQL index (768 at most)", f->name,
                     f->max_len);
            return -1;
        }
    }
    return 0;
}

/* mysql://user[:password]@host[:port]/database  (%XX escapes decoded) */
static char *pct_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
            isxdigit((unsigned char)s[i + 2])) {
            char hex[3] = {s[i + 1], s[i + 2], 0};
            *o++ = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

static void dsn_free(struct my_dsn *d)
{
    free(d->host);
    free(d->user);
    free(d->pass);
    free(d->db);
    memset(d, 0, sizeof(*d));
}

static int dsn_parse(const char *dsn, struct my_dsn *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    const char *p;
    if (strncmp(dsn, "mysql://", 8) == 0) {
        p = dsn + 8;
    } else if (strncmp(dsn, "mariadb://", 10) == 0) {
        p = dsn + 10;
    } else {
        snprintf(err, errlen, "must look like mysql://user[:password]@host[:port]/database");
        return -1;
    }
    const char *slash = strchr(p, '/');
    const char *at = strrchr(p, '@');
    if (at != NULL && slash != NULL && at > slash) {
        at = NULL;
    }
    const char *hp = p;
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon != NULL) {
            out->user = pct_decode(p, (size_t)(colon - p));
            out->pass = pct_decode(colon + 1, (size_t)(at - colon - 1));
        } else {
            out->user = pct_decode(p, (size_t)(at - p));
        }
        hp = at + 1;
    } else {
        out->user = strdup("root");
    }
    const char *hend = slash != NULL ? slash : hp + strlen(hp);
    const char *colon = memchr(hp, ':', (size_t)(hend - hp));
    out->port = 3306;
    if (colon != NULL) {
        char *e;
        long port = strtol(colon + 1, &e, 10);
        if (e != hend || port <= 0 || port > 65535) {
            snprintf(err, errlen, "bad port");
            dsn_free(out);
            return -1;
        }
        out->port = (unsigned)port;
    } else {
        colon = hend;
    }
    if (colon == hp) {
        snprintf(err, errlen, "no host");
        dsn_free(out);
        return -1;
    }
    out->host = strndup(hp, (size_t)(colon - hp));
    if (strcmp(out->host, "localhost") == 0) { /* the connector would take the Unix socket */
        free(out->host);
        out->host = strdup("127.0.0.1");
    }
    if (slash == NULL || slash[1] == '\0' || strchr(slash + 1, '?') != NULL ||
        strchr(slash + 1, '/') != NULL) {
        snprintf(err, errlen, "needs a database name (and takes no ?options)");
        dsn_free(out);
        return -1;
    }
    out->db = pct_decode(slash + 1, strlen(slash + 1));
    return 0;
}

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

static void lib_init(void)
{
    /* not thread-safe: once, before any worker calls mysql_init() */
    (void)mysql_library_init(0, NULL, NULL);
}

static int my_init(struct event_base *base, const struct cf_backend *be, void **state, char *err,
                   size_t errlen)
{
    if (be->nshards == 0) {
        snprintf(err, errlen, "backend '%s': mysql needs `shards`", be->name);
        return -1;
    }
    pthread_once(&lib_once, lib_init);
    struct my_state *st = calloc(1, sizeof(*st));
    st->base = base;
    st->be = be;
    st->nshards = (int)be->nshards;
    st->shards = calloc(be->nshards, sizeof(*st->shards));
    for (int i = 0; i < st->nshards; i++) {
        char derr[128];
        if (dsn_parse(be->shards[i].dsn, &st->shards[i].dsn, derr, sizeof(derr)) < 0) {
            snprintf(err, errlen, "shard '%s': bad dsn: %s", be->shards[i].name, derr);
            for (int k = 0; k < i; k++) {
                dsn_free(&st->shards[k].dsn);
            }
            free(st->shards);
            free(st);
            return -1;
        }
    }
    st->kick = event_new(base, -1, 0, kick_cb, st);
    TAILQ_INIT(&st->done);
    for (int i = 0; i < st->nshards; i++) {
        struct my_shard *sh = &st->shards[i];
        sh->st = st;
        sh->cfs = &be->shards[i];
        sh->was_up = 1; /* a first failure is logged */
        TAILQ_INIT(&sh->queue);
        sh->nconns = be->pool.max;
        sh->conns = calloc((size_t)sh->nconns, sizeof(*sh->conns));
        for (int k = 0; k < sh->nconns; k++) {
            struct my_conn *c = &sh->conns[k];
            c->sh = sh;
            c->ev = event_new(base, -1, 0, on_io, c);
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

static void my_shutdown(void *state)
{
    struct my_state *st = state;
    st->closing = 1;
    while (!TAILQ_EMPTY(&st->done)) {
        struct my_call *call = TAILQ_FIRST(&st->done);
        TAILQ_REMOVE(&st->done, call, link);
        complete(call, &call->res);
    }
    for (int i = 0; i < st->nshards; i++) {
        struct my_shard *sh = &st->shards[i];
        fail_queue(sh, "polygate is shutting down");
        for (int k = 0; k < sh->nconns; k++) {
            struct my_conn *c = &sh->conns[k];
            struct my_call *call = c->call;
            c->call = NULL;
            conn_close(c);
            if (call != NULL) {
                fail_unavailable(call, "polygate is shutting down");
            }
            event_free(c->ev);
            event_free(c->timer);
        }
        free(sh->conns);
        free(sh->migs);
        dsn_free(&sh->dsn);
    }
    for (size_t m = 0; m < st->nmigs; m++) {
        free(st->migs[m].table);
        free(st->migs[m].sql);
    }
    free(st->migs);
    event_free(st->kick);
    free(st->shards);
    free(st);
}

/* ad_ops.stats: the pool of one shard (for /metrics). */
static void my_stats(void *state, int shard, struct ad_pool_stats *out)
{
    struct my_state *st = state;
    memset(out, 0, sizeof(*out));
    if (shard < 0 || shard >= st->nshards) {
        return;
    }
    struct my_shard *sh = &st->shards[shard];
    out->conns = sh->nconns;
    for (int i = 0; i < sh->nconns; i++) {
        out->up += sh->conns[i].state == C_IDLE || sh->conns[i].state == C_BUSY;
        out->busy += sh->conns[i].call != NULL;
    }
    out->queued = sh->pending > out->busy ? sh->pending - out->busy : 0;
}

MYSQL *ad_mysql_connect_dsn(const char *dsn, int64_t timeout_ms, char *err, size_t errlen)
{
    struct my_dsn d;
    char derr[128];
    if (dsn_parse(dsn, &d, derr, sizeof(derr)) < 0) {
        snprintf(err, errlen, "bad dsn: %s", derr);
        return NULL;
    }
    pthread_once(&lib_once, lib_init);
    MYSQL *my = mysql_init(NULL);
    if (my == NULL) {
        snprintf(err, errlen, "out of memory");
        dsn_free(&d);
        return NULL;
    }
    unsigned int tmo = (unsigned int)((timeout_ms + 999) / 1000);
    unsigned int off = 0;
    mysql_options(my, MYSQL_OPT_CONNECT_TIMEOUT, &tmo);
    mysql_options(my, MYSQL_OPT_READ_TIMEOUT, &tmo);
    mysql_options(my, MYSQL_OPT_WRITE_TIMEOUT, &tmo);
    mysql_options(my, MYSQL_OPT_LOCAL_INFILE, &off);
    mysql_options(my, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    mysql_options(my, MYSQL_INIT_COMMAND, MY_INIT_COMMAND);
    if (mysql_real_connect(my, d.host, d.user, d.pass, d.db, d.port, NULL, 0) == NULL) {
        snprintf(err, errlen, "cannot connect to %s:%u/%s: %s", d.host, d.port, d.db,
                 mysql_error(my));
        mysql_close(my);
        my = NULL;
    }
    dsn_free(&d);
    return my;
}

static int my_probe(const char *dsn, int64_t timeout_ms, char *err, size_t errlen)
{
    MYSQL *my = ad_mysql_connect_dsn(dsn, timeout_ms, err, errlen);
    if (my == NULL) {
        return -1;
    }
    mysql_close(my);
    return 0;
}

const struct ad_ops ad_mysql_ops = {
    .name = "mysql",
    .abi = AD_ABI,
    .init = my_init,
    .check_domain = my_check_domain,
    .supports = my_supports,
    .submit = my_submit,
    .cancel = my_cancel,
    .shutdown = my_shutdown,
    .stats = my_stats,
    .probe = my_probe,
};
