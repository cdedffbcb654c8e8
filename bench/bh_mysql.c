/*
 * bh_mysql.c — direct mode for the sharded orders: MariaDB Connector/C's
 * non-blocking API (mysql_real_query_start/_cont, mysql_store_result_start/
 * _cont, mysql_next_result_start/_cont) driven by the wait flags it returns,
 * one connection per bench client and shard.  Shards are chosen with the
 * gateway's own shard map code, so a direct request lands where polygate's
 * would.  Values are escaped literals (mysql_real_escape_string on the
 * connection), as the gateway's MySQL adapter sends them.
 */
#include "bench/bh.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <mysql.h>

#include "config/cf_yaml.h"
#include "routing/rt_shardmap.h"

#define ROWS_PER_SHARD 64

struct bh_my_conn {
    MYSQL *my;
    struct event *ev;
    struct bh_client *client;
    int state; /* 1 query, 2 store result, 3 next result */
    int shard;
};

static struct rt_shardmap *g_map;

int bh_mysql_load_map(const char *path)
{
    char err[256];
    struct json_object *doc = cf_yaml_load_file(path, err, sizeof(err));
    if (doc == NULL) {
        fprintf(stderr, "bench: %s: %s\n", path, err);
        return -1;
    }
    g_map = rt_shardmap_from_json(doc, err, sizeof(err));
    json_object_put(doc);
    if (g_map == NULL) {
        fprintf(stderr, "bench: %s: %s\n", path, err);
        return -1;
    }
    return 0;
}

size_t bh_mysql_nshards(void)
{
    return g_map != NULL ? rt_shardmap_nshards(g_map) : 0;
}

int bh_mysql_route(const char *customer, uint32_t *slot)
{
    return rt_shardmap_route(g_map, customer, strlen(customer), NULL, slot);
}

size_t bh_mysql_escape(char *out, size_t outlen, const char *s)
{
    size_t n = 0;
    for (; *s != '\0' && n + 2 < outlen; s++) {
        if (*s == '\'' || *s == '\\') {
            out[n++] = '\\';
        }
        out[n++] = *s;
    }
    out[n] = '\0';
    return n;
}

/* mysql://user[:password]@host:port/db */
static MYSQL *connect_dsn(const char *dsn)
{
    char user[64] = "root", pass[64] = "", host[64] = "127.0.0.1", db[64] = "";
    int port = 3306;
    const char *p = strncmp(dsn, "mysql://", 8) == 0 ? dsn + 8 : dsn;
    const char *at = strchr(p, '@');
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ul = (size_t)((colon ? colon : at) - p);
        snprintf(user, sizeof(user), "%.*s", (int)ul, p);
        if (colon != NULL) {
            snprintf(pass, sizeof(pass), "%.*s", (int)(at - colon - 1), colon + 1);
        }
        p = at + 1;
    }
    const char *slash = strchr(p, '/');
    const char *colon = strchr(p, ':');
    size_t hl = (size_t)((colon && (!slash || colon < slash) ? colon
                          : slash                            ? slash
                                                             : p + strlen(p)) -
                         p);
    snprintf(host, sizeof(host), "%.*s", (int)hl, p);
    if (colon != NULL && (!slash || colon < slash)) {
        port = atoi(colon + 1);
    }
    if (slash != NULL) {
        snprintf(db, sizeof(db), "%s", slash + 1);
        char *q = strchr(db, '?');
        if (q != NULL) {
            *q = '\0';
        }
    }
    MYSQL *my = mysql_init(NULL);
    if (my == NULL) {
        return NULL;
    }
    mysql_options(my, MYSQL_OPT_NONBLOCK, 0);
    mysql_options(my, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    unsigned int timeout = 2;
    mysql_options(my, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    /* connected blocking before the run; the queries are non-blocking */
    if (mysql_real_connect(my, host, user, pass, db, (unsigned)port, NULL,
                           CLIENT_MULTI_STATEMENTS) == NULL) {
        fprintf(stderr, "bench: mysql %s: %s\n", dsn, mysql_error(my));
        mysql_close(my);
        return NULL;
    }
    return my;
}

static void shard_done(struct bh_my_conn *m, int ok, const char *why)
{
    struct bh_client *c = m->client;
    m->state = 0;
    if (!ok) {
        c->my_failed = 1;
        snprintf(c->my_why, sizeof(c->my_why), "mysql shard %d: %.120s", m->shard,
                 why ? why : mysql_error(m->my));
    }
    if (--c->my_pending == 0) {
        bh_complete(c, !c->my_failed, c->my_why);
    }
}

static void step(struct bh_my_conn *m, int status);
static void on_event(evutil_socket_t fd, short what, void *arg);

static void wait_for(struct bh_my_conn *m, int status)
{
    short what = 0;
    if (status & MYSQL_WAIT_READ) {
        what |= EV_READ;
    }
    if (status & MYSQL_WAIT_WRITE) {
        what |= EV_WRITE;
    }
    struct timeval tv = {0, 0}, *tvp = NULL;
    if (status & MYSQL_WAIT_TIMEOUT) {
        unsigned ms = mysql_get_timeout_value_ms(m->my);
        tv.tv_sec = ms / 1000;
        tv.tv_usec = (ms % 1000) * 1000;
        tvp = &tv;
    }
    event_del(m->ev);
    event_assign(m->ev, event_get_base(m->ev), mysql_get_socket(m->my), what, on_event, m);
    event_add(m->ev, tvp);
}

static void keep_rows(struct bh_my_conn *m, MYSQL_RES *res)
{
    struct bh_client *c = m->client;
    MYSQL_ROW row;
    int kept = 0;
    /* rows of a stored result are in memory: fetching does no I/O */
    while ((row = mysql_fetch_row(res)) != NULL) {
        if (c->rows != NULL && kept < ROWS_PER_SHARD && row[0] != NULL) {
            /* the sort key the merge needs: created_at (column 8), then the id */
            unsigned int nf = mysql_num_fields(res);
            snprintf(c->rows[c->nrows], sizeof(c->rows[0]), "%s|%s", nf > 7 && row[7] ? row[7] : "",
                     row[0]);
            c->nrows++;
            kept++;
        }
    }
}

/* Drive the statement(s) on one shard until it waits or is over. */
static void step(struct bh_my_conn *m, int status)
{
    for (;;) {
        if (status != 0) {
            wait_for(m, status);
            return;
        }
        if (m->state == 1 || m->state == 3) {
            /* the query (or next result) finished: its error code is in the handle */
            if (mysql_errno(m->my) != 0) {
                shard_done(m, 0, NULL);
                return;
            }
            MYSQL_RES *res = NULL;
            m->state = 2;
            status = mysql_store_result_start(&res, m->my);
            if (status == 0) {
                if (res != NULL) {
                    keep_rows(m, res);
                    mysql_free_result(res);
                } else if (mysql_errno(m->my) != 0) {
                    shard_done(m, 0, NULL);
                    return;
                }
                goto next;
            }
            continue;
        }
        /* state 2 after a _cont: handled in on_event */
    next:
        if (!mysql_more_results(m->my)) {
            shard_done(m, 1, NULL);
            return;
        }
        int err = 0;
        m->state = 3;
        status = mysql_next_result_start(&err, m->my);
        if (status == 0 && err != 0) {
            shard_done(m, 0, NULL);
            return;
        }
    }
}

static void on_event(evutil_socket_t fd, short what, void *arg)
{
    struct bh_my_conn *m = arg;
    int ready = 0;
    if (what & EV_READ) {
        ready |= MYSQL_WAIT_READ;
    }
    if (what & EV_WRITE) {
        ready |= MYSQL_WAIT_WRITE;
    }
    if (what & EV_TIMEOUT) {
        ready |= MYSQL_WAIT_TIMEOUT;
    }
    int status, err = 0;
    switch (m->state) {
    case 1:
        status = mysql_real_query_cont(&err, m->my, ready);
        break;
    case 3:
        status = mysql_next_result_cont(&err, m->my, ready);
        break;
    case 2: {
        MYSQL_RES *res = NULL;
        status = mysql_store_result_cont(&res, m->my, ready);
        if (status != 0) {
            wait_for(m, status);
            return;
        }
        if (res != NULL) {
            keep_rows(m, res);
            mysql_free_result(res);
        } else if (mysql_errno(m->my) != 0) {
            shard_done(m, 0, NULL);
            return;
        }
        if (!mysql_more_results(m->my)) {
            shard_done(m, 1, NULL);
            return;
        }
        m->state = 3;
        status = mysql_next_result_start(&err, m->my);
        break;
    }
    default:
        return;
    }
    if (status == 0 && err != 0) {
        shard_done(m, 0, NULL);
        return;
    }
    step(m, status);
}

int bh_mysql_open(struct bh_client *c)
{
    size_t n = bh_mysql_nshards();
    if (n == 0) {
        return -1;
    }
    c->my = calloc(n, sizeof(*c->my));
    c->rows = calloc(n * ROWS_PER_SHARD, sizeof(*c->rows));
    if (c->my == NULL || c->rows == NULL) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        struct bh_my_conn *m = calloc(1, sizeof(*m));
        if (m == NULL) {
            return -1;
        }
        c->my[i] = m;
        m->client = c;
        m->shard = (int)i;
        m->my = connect_dsn(rt_shardmap_shard_dsn(g_map, i));
        if (m->my == NULL) {
            return -1;
        }
        m->ev = event_new(c->run->base, mysql_get_socket(m->my), EV_READ, on_event, m);
    }
    return 0;
}

void bh_mysql_close(struct bh_client *c)
{
    if (c->my == NULL) {
        return;
    }
    for (size_t i = 0; i < bh_mysql_nshards(); i++) {
        struct bh_my_conn *m = c->my[i];
        if (m != NULL) {
            if (m->ev != NULL) {
                event_free(m->ev);
            }
            if (m->my != NULL) {
                mysql_close(m->my);
            }
            free(m);
        }
    }
    free(c->my);
    free(c->rows);
    c->my = NULL;
    c->rows = NULL;
}

void bh_mysql_send(struct bh_client *c, const int *shards, int nshards, const char *sql)
{
    if (c->my == NULL || nshards == 0) {
        bh_complete(c, 0, "mysql: no connection");
        return;
    }
    c->my_pending = nshards;
    c->my_failed = 0;
    c->nrows = 0;
    size_t len = strlen(sql);
    for (int i = 0; i < nshards; i++) {
        struct bh_my_conn *m = c->my[shards[i]];
        int err = 0;
        m->state = 1;
        int status = mysql_real_query_start(&err, m->my, sql, (unsigned long)len);
        if (status == 0 && err != 0) {
            shard_done(m, 0, NULL);
            continue;
        }
        step(m, status);
    }
}
