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
 * The pool (adapters/sql/sql_pool.c, shared with the PostgreSQL adapter):
 * per shard pool.min..pool.max connections, one script in flight per
 * connection, a bounded FIFO, reconnect with backoff and jitter,
 * auto_migrate on every shard of the backend at first use, cancel of
 * waiting requests (one already sent runs to its end).
 */
#include "adapters/mysql/ad_mysql.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <mysql.h>

#include "adapters/sql/sql_build.h"
#include "adapters/sql/sql_pool.h"
#include "adapters/sql/sql_row.h"
#include "config/cf_config.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "model/md_query.h"

#define MY_INIT_COMMAND                                                                            \
    "SET time_zone = '+00:00', sql_mode = "                                                        \
    "'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'"

/* the connector call in progress on a connection */
enum conn_op { OP_NONE, OP_CONNECT, OP_QUERY, OP_STORE, OP_NEXT };

struct my_dsn {
    char *host, *user, *pass, *db;
    unsigned port;
};

struct my_call {
    struct sql_call b; /* first: the pool's part */
    int rolling_back;  /* the script failed: ROLLBACK sent, b.res holds the error */
    MYSQL_RES *rows;   /* result of statement st.rows_at */
    uint64_t affected; /* affected rows of statement st.affected_at */
    int probing;       /* the fence probe (sql_build_fence_probe) was sent */
    MYSQL_RES *probe;  /* its result */
};

struct my_conn {
    struct sql_conn b; /* first: the pool's part */
    MYSQL *my;
    enum conn_op op;
    struct event *ev; /* socket waits of the call in progress; idle: EV_READ */
    int stmt;         /* index of the statement whose result is being read */
    char *text;
};

static struct my_conn *my_conn_of(struct sql_conn *c)
{
    return (struct my_conn *)(void *)c;
}

static struct my_call *my_call_of(struct sql_call *c)
{
    return (struct my_call *)(void *)c;
}

static void step(struct my_conn *c, int status);
static int send_text(struct my_conn *c, const char *text, size_t len);

/* ---- connections ------------------------------------------------------------------ */

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
    event_assign(c->ev, c->b.sh->pool->base, mysql_get_socket(c->my), what, on_io, c);
    if (status & MYSQL_WAIT_TIMEOUT) {
        struct timeval tv = lb_tv_ms((int64_t)mysql_get_timeout_value_ms(c->my));
        event_add(c->ev, &tv);
    } else {
        event_add(c->ev, NULL);
    }
}

/* Idle: watch the socket; readable means the server closed the connection. */
static void watch_idle(struct my_conn *c)
{
    event_del(c->ev);
    event_assign(c->ev, c->b.sh->pool->base, mysql_get_socket(c->my), EV_READ | EV_PERSIST, on_io,
                 c);
    event_add(c->ev, NULL);
}

/* Back to idle after a script (or a migration) ended. */
static void conn_idle(struct my_conn *c)
{
    c->b.call = NULL;
    c->b.state = SQL_C_IDLE;
    c->op = OP_NONE;
    free(c->text);
    c->text = NULL;
    watch_idle(c);
}

static void connected(struct my_conn *c)
{
    c->op = OP_NONE;
    watch_idle(c);
    sql_pool_connected(&c->b, mysql_get_server_info(c->my));
}

static void my_conn_start(struct sql_conn *sc)
{
    struct my_conn *c = my_conn_of(sc);
    const struct my_dsn *dsn = (const struct my_dsn *)sc->sh->pool->drv_data + sc->sh->idx;
    const struct cf_pool *p = &sc->sh->pool->be->pool;
    c->my = mysql_init(NULL);
    if (c->my == NULL) {
        sql_pool_connect_failed(sc, "out of memory");
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
    c->op = OP_CONNECT;
    MYSQL *ret = NULL;
    int status = mysql_real_connect_start(&ret, c->my, dsn->host, dsn->user, dsn->pass, dsn->db,
                                          dsn->port, NULL, CLIENT_MULTI_STATEMENTS);
    if (status != 0) {
        wait_for(c, status);
        return;
    }
    if (ret == NULL) {
        sql_pool_connect_failed(sc, mysql_error(c->my));
        return;
    }
    connected(c);
}

static void my_conn_close(struct sql_conn *sc)
{
    struct my_conn *c = my_conn_of(sc);
    event_del(c->ev);
    if (c->my != NULL) {
        /* may write COM_QUIT: a few bytes into an empty socket buffer */
        mysql_close(c->my);
        c->my = NULL;
    }
    free(c->text);
    c->text = NULL;
    c->op = OP_NONE;
}

static void my_conn_init(struct sql_conn *sc, struct event_base *base)
{
    struct my_conn *c = my_conn_of(sc);
    c->ev = event_new(base, -1, 0, on_io, c);
}

static void my_conn_fini(struct sql_conn *sc)
{
    event_free(my_conn_of(sc)->ev);
}

static void my_call_clear(struct sql_call *call)
{
    struct my_call *mc = my_call_of(call);
    if (mc->rows != NULL) {
        mysql_free_result(mc->rows);
        mc->rows = NULL;
    }
    if (mc->probe != NULL) {
        mysql_free_result(mc->probe);
        mc->probe = NULL;
    }
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
    case CF_T_DECIMAL: /* DECIMAL(p,s) comes as its exact text: "123.40" */
        return json_object_new_double_s(strtod(v, NULL), v);
    case CF_T_BOOL:
        return json_object_new_boolean(v[0] != '0');
    case CF_T_TIMESTAMP: { /* "2026-01-31 10:00:00.500000" */
        char buf[64];
        return json_object_new_string_len(buf, (int)sql_ts_rfc3339(v, len, buf, sizeof(buf)));
    }
    case CF_T_OBJECT:
    case CF_T_ARRAY:
    case CF_T_JSON:
    case CF_T_COUNTERS: /* JSON (MySQL) / LONGTEXT (MariaDB): a document, not a string */
        return sql_pool_json(v, len);
    default:
        return json_object_new_string_len(v, (int)len);
    }
}

/* An item from one row; *version gets the version column. */
static struct json_object *row_item(const struct my_call *call, MYSQL_ROW row,
                                    const unsigned long *lens, unsigned nf, int64_t *version)
{
    struct json_object *item = json_object_new_object();
    const struct sql_stmt *st = &call->b.st;
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

/* The rows of a _query / _aggregate (res->rows) and, when the store had one
 * row more than the page, the sort values of the last row shown (res->last):
 * both new references, put by the caller after the completion. */
static void finish_query(struct my_call *call, struct ad_res *res)
{
    const struct md_query *q = call->b.req->query;
    MYSQL_RES *r = call->rows;
    int n = r != NULL ? (int)mysql_num_rows(r) : 0;
    unsigned nf = r != NULL ? mysql_num_fields(r) : 0;
    int shown = q->aggregate || n <= q->limit ? n : q->limit;
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
    res->rows = items;
    if (!q->aggregate && n > q->limit && last != NULL) {
        struct json_object *vals = json_object_new_array();
        for (size_t k = 0; k < q->norder; k++) {
            struct json_object *v = NULL;
            for (size_t i = 0; i < call->b.st.ncols && i < nf; i++) {
                const struct sql_col *sc = &call->b.st.cols[i];
                if (sc->kind == SQL_COL_FIELD && sc->field == q->order[k].field) {
                    v = cell(last, lastlens, i, sc);
                    break;
                }
            }
            json_object_array_add(vals, v);
        }
        res->last = vals;
    }
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

/* Does the store's message quote column name (`name` or 'name')? */
static int quotes_column(const char *msg, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = msg; (p = strstr(p, name)) != NULL; p += n) {
        if (p > msg && (p[-1] == '`' || p[-1] == '\'') && p[n] == p[-1]) {
            return 1;
        }
    }
    return 0;
}

/* A PATCH whose inc took an int column past its range (MariaDB says so with
 * the SQL expression, or "Out of range value for column"): the gateway's own
 * 409 naming the field — the one the message quotes, else every incremented
 * int field — the answer of the stores the gateway increments itself.  A
 * decimal past its digits (the message quotes it) stays a 400.  1 when res
 * holds it. */
static int inc_out_of_range(const struct ad_req *req, const char *msg, struct ad_res *res)
{
    struct json_object *inc;
    if (req == NULL || req->op != AD_PATCH || req->body == NULL ||
        !json_object_object_get_ex(req->body, "inc", &inc)) {
        return 0;
    }
    const struct cf_field *quoted = NULL, *first = NULL;
    char names[160];
    size_t len = 0;
    int n = 0;
    names[0] = '\0';
    json_object_object_foreach(inc, k, v)
    {
        (void)v;
        const struct cf_field *f = cf_field_find(req->domain, k);
        if (f == NULL) {
            continue;
        }
        if (quoted == NULL && quotes_column(msg, f->name)) {
            quoted = f;
        }
        if (f->type != CF_T_INT) {
            continue;
        }
        int w = snprintf(names + len, sizeof(names) - len, "%s'%s'", n > 0 ? ", " : "", f->name);
        if (w < 0 || (size_t)w >= sizeof(names) - len) {
            names[len] = '\0'; /* the first ones are named; the field is in the log */
            break;
        }
        len += (size_t)w;
        first = n++ == 0 ? f : first;
    }
    if (quoted != NULL) {
        if (quoted->type != CF_T_INT) {
            return 0;
        }
        snprintf(names, sizeof(names), "'%s'", quoted->name);
        first = quoted;
        n = 1;
    }
    if (n == 0) {
        return 0;
    }
    ad_res_error(res, AD_CONFLICT, NULL, "cannot increment %s: the result is out of range", names);
    res->field = n == 1 ? first->name : NULL;
    return 1;
}

/* A store error → status.  1062 names the unique field, an out-of-range
 * error on an inc is the range conflict; any other text of the store goes to
 * the log only, and the client learns the backend, shard and the call id to
 * find it by. */
static void error_result(struct my_call *call, unsigned int no, const char *sqlstate,
                         const char *text, struct ad_res *res)
{
    char msg[200];
    snprintf(msg, sizeof(msg), "%s", text);
    sql_one_line(msg);
    const struct ad_req *req = call->b.req;
    const struct cf_domain *d = req != NULL ? req->domain : NULL;
    const struct sql_shard *sh = call->b.sh;
    const char *be = sh->pool->be->name, *shn = sh->cfs->name;
    const char *op = req != NULL ? ad_op_name(req->op) : "request";
    unsigned long long id = req != NULL ? (unsigned long long)req->id : 0;
    int dup = no == 1062 /* ER_DUP_ENTRY */ || no == 1586 /* ER_DUP_ENTRY_WITH_KEY_NAME */;
    if (dup && d != NULL) {
        char kb[128];
        const char *f = sql_constraint_field(d, dup_key_name(msg, kb, sizeof(kb)));
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
    int range = (no == 1690 /* BIGINT out of range */ || no == 1264 /* out of range */) &&
                inc_out_of_range(req, msg, res);
    lb_log(range ? LB_LOG_INFO : LB_LOG_WARN,
           "mysql backend '%s' shard '%s' call %llu (%s): %s (error %u, SQLSTATE %s)", be, shn, id,
           op, msg, no, sqlstate);
    if (range) {
        return;
    }
    switch (no) {
    case 1062:
    case 1586:
        ad_res_error(res, AD_CONFLICT, NULL,
                     "backend '%s' shard '%s': a unique value of this item is taken (the "
                     "store's error is logged as call %llu)",
                     be, shn, id);
        return;
    case 1213: /* ER_LOCK_DEADLOCK */
    case 1205: /* ER_LOCK_WAIT_TIMEOUT */
        ad_res_error(res, AD_CONFLICT, NULL, "concurrent write on the same item, retry");
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
        break;
    default:
        if (strncmp(sqlstate, "22", 2) != 0) {
            ad_res_error(res, AD_INTERNAL, shn,
                         "backend '%s' shard '%s' failed the %s (the store's error is logged as "
                         "call %llu)",
                         be, shn, op, id);
            return;
        }
    }
    ad_res_error(res, AD_BAD_REQUEST, NULL,
                 "backend '%s' shard '%s' refused a value of the %s (the store's error is logged "
                 "as call %llu)",
                 be, shn, op, id);
}

/* ---- a script's results ------------------------------------------------------------ */

static char *interpolate(MYSQL *my, const struct sql_stmt *st, size_t *outlen);

/* A fenced write changed no row (its transaction has ended): ask on the
 * same connection whether the shard owns the slot; the answer comes back to
 * script_done.  0 sent (or failed through the call), -1 not sent. */
static int send_probe(struct my_conn *c, struct my_call *call)
{
    const struct ad_req *req = call->b.req;
    struct sql_stmt st;
    char err[128];
    size_t len = 0;
    char *text = NULL;
    sql_stmt_init(&st, SQL_MYSQL);
    st.slot = req->slot;
    if (sql_build_fence_probe(&st, req->domain, req->key, err, sizeof(err)) == 0) {
        text = interpolate(c->my, &st, &len);
    }
    sql_stmt_free(&st);
    if (text == NULL) {
        return -1;
    }
    free(c->text);
    c->text = text;
    call->probing = 1;
    (void)send_text(c, text, len);
    return 0;
}

/* The script of c's call ran to its end; build the response. */
static void script_done(struct my_conn *c)
{
    struct my_call *call = my_call_of(c->b.call);
    struct sql_shard *sh = c->b.sh;
    int missed = call->b.st.affected_at >= 0 && call->affected == 0;
    if (missed && !call->rolling_back && !call->b.is_migration && !call->probing &&
        sql_pool_fence_miss(&call->b, 1) == SQL_MISS_PROBE && send_probe(c, call) == 0) {
        return;
    }
    conn_idle(c);
    struct ad_res res;
    ad_res_init(&res);
    if (call->rolling_back) { /* the error the ROLLBACK followed */
        sql_pool_complete(&call->b, &call->b.res);
        sql_pool_dispatch(sh);
        return;
    }
    if (call->b.is_migration) {
        sql_pool_migrated(&call->b, NULL);
        sql_pool_dispatch(sh);
        return;
    }
    const struct ad_req *req = call->b.req;
    const struct cf_domain *d = req->domain;
    const struct sql_stmt *st = &call->b.st;
    struct evbuffer *raw = NULL;
    MYSQL_RES *r = call->rows;
    unsigned nf = r != NULL ? mysql_num_fields(r) : 0;
    MYSQL_ROW row = r != NULL ? mysql_fetch_row(r) : NULL;
    unsigned long *lens = row != NULL ? mysql_fetch_lengths(r) : NULL;
    /* a write that matched nothing: not owned (the fence), else the SELECT
     * of the same transaction tells 404 (no row) from 412 (a row at another
     * version) */
    MYSQL_ROW moved = call->probe != NULL ? mysql_fetch_row(call->probe) : NULL;
    char slot[16];
    if (moved != NULL) {
        sql_pool_slot_moved(&call->b, &res, moved[0] != NULL ? moved[0] : "?");
    } else if (missed && !call->probing && sql_pool_fence_miss(&call->b, 1) == SQL_MISS_MOVED) {
        snprintf(slot, sizeof(slot), "%d", (int)req->slot);
        sql_pool_slot_moved(&call->b, &res, slot);
    }
    enum ad_op op = res.status == AD_DONE ? req->op : AD_PING; /* AD_PING: answered already */
    switch (op) {
    case AD_PING:
        break;
    case AD_QUERY:
    case AD_AGGREGATE:
        if (r != NULL) {
            mysql_data_seek(r, 0);
        }
        finish_query(call, &res);
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
                             row[st->ncols - 1] != NULL ? row[st->ncols - 1] : "?",
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
        raw = evbuffer_new(); /* the item as JSON text, straight from the row */
        if (raw != NULL) {
            sql_row_write(raw, st, (const char *const *)row, lens, nf, &res.version);
            res.rawlen = evbuffer_get_length(raw);
            res.raw = (const char *)evbuffer_pullup(raw, -1);
        }
        if (req->op == AD_PUT && req->if_match < 0) {
            res.created = call->affected == 1; /* 1 inserted, 2 updated */
        }
        break;
    default:
        ad_res_error(&res, AD_INTERNAL, NULL, "unexpected operation");
    }
    sql_pool_complete(&call->b, &res);
    json_object_put(res.rows);
    json_object_put(res.last);
    if (raw != NULL) {
        evbuffer_free(raw);
    }
    sql_pool_dispatch(sh);
}

/* A statement of the script failed (the server runs none after it). */
static void script_failed(struct my_conn *c)
{
    unsigned int no = mysql_errno(c->my);
    if (conn_error(no)) {
        sql_pool_conn_broken(&c->b, mysql_error(c->my));
        return;
    }
    struct my_call *call = my_call_of(c->b.call);
    struct sql_shard *sh = c->b.sh;
    if (call->rolling_back) { /* ROLLBACK itself failed: the session is suspect */
        sql_pool_conn_broken(&c->b, mysql_error(c->my));
        return;
    }
    if (call->b.is_migration) {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s", mysql_error(c->my));
        conn_idle(c);
        sql_pool_migrated(&call->b, msg);
        sql_pool_dispatch(sh);
        return;
    }
    ad_res_init(&call->b.res);
    error_result(call, no, mysql_sqlstate(c->my), mysql_error(c->my), &call->b.res);
    if (call->b.st.txn) { /* the transaction is still open on this session */
        call->rolling_back = 1;
        static const char rb[] = "ROLLBACK";
        (void)send_text(c, rb, sizeof(rb) - 1);
        return;
    }
    call->rolling_back = 1; /* i.e. "complete with b.res" */
    script_done(c);
}

/* Keep result res if it is the statement whose rows the call wants. */
static void keep_rows(struct my_conn *c, MYSQL_RES *res)
{
    struct my_call *call = my_call_of(c->b.call);
    if (call->probing) { /* the fence probe: one statement */
        if (call->probe == NULL && !call->rolling_back) {
            call->probe = res;
        } else {
            mysql_free_result(res);
        }
        return;
    }
    if (c->stmt == call->b.st.rows_at && call->rows == NULL && !call->rolling_back) {
        call->rows = res;
    } else {
        mysql_free_result(res);
    }
}

static void next_result(struct my_conn *c);

/* The current statement's result is available (query or next_result done). */
static void have_result(struct my_conn *c)
{
    struct my_call *call = my_call_of(c->b.call);
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
        keep_rows(c, res);
    } else if (c->stmt == call->b.st.affected_at) {
        call->affected = mysql_affected_rows(c->my);
    }
    next_result(c);
}

/* mysql_next_result said err: > 0 failed, 0 a result, < 0 no more. */
static void after_next(struct my_conn *c, int err)
{
    if (err > 0) {
        script_failed(c);
    } else if (err == 0) {
        have_result(c);
    } else {
        script_done(c);
    }
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
    after_next(c, err);
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
            sql_pool_connect_failed(&c->b, mysql_error(c->my));
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
        keep_rows(c, res);
        next_result(c);
        return;
    }
    case OP_NEXT: {
        int err = 0;
        int s = mysql_next_result_cont(&err, c->my, status);
        if (s != 0) {
            wait_for(c, s);
        } else {
            after_next(c, err);
        }
        return;
    }
    case OP_NONE:
        break;
    }
    /* idle and readable: the server closed the connection (or sent an
     * error packet before closing it) */
    if (c->b.state == SQL_C_IDLE) {
        sql_pool_conn_broken(&c->b, "the server closed the connection");
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

/* Start sending text on c (its call set).  0, or -1 after failing the call. */
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

/* Send call on idle connection sc (call and BUSY set).  0, or -1 after
 * failing the call. */
static int my_send(struct sql_conn *sc, struct sql_call *call)
{
    struct my_conn *c = my_conn_of(sc);
    size_t len = 0;
    char *text = interpolate(c->my, &call->st, &len);
    if (text == NULL) {
        struct ad_res res;
        ad_res_init(&res);
        ad_res_error(&res, AD_INTERNAL, NULL, "cannot build the SQL text for shard '%s'",
                     sc->sh->cfs->name);
        sc->call = NULL;
        sc->state = SQL_C_IDLE;
        sql_pool_complete(call, &res);
        return -1;
    }
    event_del(c->ev);
    c->text = text; /* the connector reads it while the query is being sent */
    return send_text(c, text, len);
}

/* ---- the interface -------------------------------------------------------------------- */

static const struct sql_driver my_driver = {
    .name = "mysql",
    .store = "MySQL",
    .dialect = SQL_MYSQL,
    .conn_size = sizeof(struct my_conn),
    .call_size = sizeof(struct my_call),
    .conn_init = my_conn_init,
    .conn_fini = my_conn_fini,
    .conn_start = my_conn_start,
    .conn_close = my_conn_close,
    .send = my_send,
    .call_clear = my_call_clear,
};

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
    struct my_dsn *dsns = calloc(be->nshards, sizeof(*dsns));
    if (dsns == NULL) {
        snprintf(err, errlen, "backend '%s': out of memory", be->name);
        return -1;
    }
    for (size_t i = 0; i < be->nshards; i++) {
        char derr[128];
        if (dsn_parse(be->shards[i].dsn, &dsns[i], derr, sizeof(derr)) < 0) {
            snprintf(err, errlen, "shard '%s': bad dsn: %s", be->shards[i].name, derr);
            for (size_t k = 0; k < i; k++) {
                dsn_free(&dsns[k]);
            }
            free(dsns);
            return -1;
        }
    }
    struct sql_pool *p = sql_pool_new(base, be, &my_driver, dsns);
    if (p == NULL) {
        snprintf(err, errlen, "backend '%s': out of memory", be->name);
        for (size_t k = 0; k < be->nshards; k++) {
            dsn_free(&dsns[k]);
        }
        free(dsns);
        return -1;
    }
    *state = p;
    return 0;
}

static void my_shutdown(void *state)
{
    struct sql_pool *p = state;
    struct my_dsn *dsns = p->drv_data;
    size_t n = (size_t)p->nshards;
    sql_pool_free(p);
    for (size_t k = 0; k < n; k++) {
        dsn_free(&dsns[k]);
    }
    free(dsns);
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
    .supports = sql_pool_supports,
    .submit = sql_pool_submit,
    .cancel = sql_pool_cancel,
    .shutdown = my_shutdown,
    .stats = sql_pool_stats, /* for /metrics */
    .probe = my_probe,
};
