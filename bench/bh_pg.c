/*
 * bh_pg.c — direct mode for PostgreSQL: one libpq connection per bench
 * client, non-blocking on the loop (PQsendQueryParams, PQconsumeInput /
 * PQisBusy / PQgetResult), unprepared text queries as the gateway sends them.
 */
#include "bench/bh.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

struct bh_pg_conn {
    PGconn *pg;
    struct event *rev, *wev;
    struct bh_client *client;
    int ok;
    char why[160];
};

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    struct bh_pg_conn *p = arg;
    if (!PQconsumeInput(p->pg)) {
        event_del(p->rev);
        snprintf(p->why, sizeof(p->why), "pg: %.140s", PQerrorMessage(p->pg));
        bh_complete(p->client, 0, p->why);
        return;
    }
    while (!PQisBusy(p->pg)) {
        PGresult *r = PQgetResult(p->pg);
        if (r == NULL) {
            /* the query is over */
            int ok = p->ok;
            p->ok = 0;
            bh_complete(p->client, ok, ok ? NULL : p->why);
            return;
        }
        if (PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK) {
            p->ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQntuples(r) == 1;
            if (!p->ok) {
                snprintf(p->why, sizeof(p->why), "pg: %d rows", PQntuples(r));
            }
        } else {
            p->ok = 0;
            snprintf(p->why, sizeof(p->why), "pg: %.140s", PQresultErrorMessage(r));
        }
        PQclear(r);
    }
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    struct bh_pg_conn *p = arg;
    if (PQflush(p->pg) == 1) {
        event_add(p->wev, NULL);
    }
}

int bh_pg_open(struct bh_client *c)
{
    struct bh_pg_conn *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return -1;
    }
    p->client = c;
    /* connected blocking before the run starts; the queries are non-blocking */
    p->pg = PQconnectdb(c->run->o->pg_dsn);
    if (PQstatus(p->pg) != CONNECTION_OK || PQsetnonblocking(p->pg, 1) != 0) {
        fprintf(stderr, "bench: pg: %s", PQerrorMessage(p->pg));
        PQfinish(p->pg);
        free(p);
        return -1;
    }
    p->rev = event_new(c->run->base, PQsocket(p->pg), EV_READ | EV_PERSIST, on_read, p);
    p->wev = event_new(c->run->base, PQsocket(p->pg), EV_WRITE, on_write, p);
    event_add(p->rev, NULL);
    c->pg = p;
    return 0;
}

void bh_pg_close(struct bh_client *c)
{
    struct bh_pg_conn *p = c->pg;
    if (p != NULL) {
        event_free(p->rev);
        event_free(p->wev);
        PQfinish(p->pg);
        free(p);
        c->pg = NULL;
    }
}

void bh_pg_send(struct bh_client *c, const char *sql, int nparams, const char *const *params)
{
    struct bh_pg_conn *p = c->pg;
    if (p == NULL || !PQsendQueryParams(p->pg, sql, nparams, NULL, params, NULL, NULL, 0)) {
        bh_complete(c, 0, "pg: cannot send");
        return;
    }
    p->ok = 0;
    snprintf(p->why, sizeof(p->why), "pg: no result");
    if (PQflush(p->pg) == 1) {
        event_add(p->wev, NULL);
    }
}
