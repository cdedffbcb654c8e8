/*
 * bh_mongo.c — direct mode for the MongoDB wire protocol: mongo-c-driver has
 * no async API, so each concurrent bench client gets a thread with its own
 * mongoc_client_t.  Jobs go to the threads through a mutex + condition
 * variable; completions come back to the loop through a mutex-protected list
 * and event_active(), as the gateway's adapter does.
 */
#include "bench/bh.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mongoc/mongoc.h>

struct job {
    struct job *next;
    struct bh_client *client;
    char coll[64], field[32], value[128];
    int ok;
    char why[160];
};

struct bh_mongo_pool {
    struct bh_run *run;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *todo, *todo_tail, *done;
    int quit;
    int nthreads;
    pthread_t *threads;
    struct event *done_ev;
};

static void mongo_log(mongoc_log_level_t level, const char *domain, const char *message, void *u)
{
    /* FerretDB 1.x has no endSessions: the driver warns at every client close */
    if (level <= MONGOC_LOG_LEVEL_WARNING && strstr(message, "endSessions") == NULL) {
        fprintf(stderr, "bench: mongoc %s: %s\n", domain, message);
    }
}

static void run_job(mongoc_client_t *cl, const char *db, struct job *j)
{
    mongoc_collection_t *coll = mongoc_client_get_collection(cl, db, j->coll);
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER;
    bson_append_utf8(&filter, j->field, -1, j->value, -1);
    bson_append_int64(&opts, "limit", -1, 1);
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, &filter, &opts, NULL);
    const bson_t *doc;
    bson_error_t err;
    if (mongoc_cursor_next(cur, &doc)) {
        j->ok = 1;
    } else if (mongoc_cursor_error(cur, &err)) {
        snprintf(j->why, sizeof(j->why), "mongo: %.140s", err.message);
    } else {
        snprintf(j->why, sizeof(j->why), "mongo: not found");
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(&filter);
    bson_destroy(&opts);
    mongoc_collection_destroy(coll);
}

static void *thread_main(void *arg)
{
    struct bh_mongo_pool *p = arg;
    mongoc_client_t *cl = mongoc_client_new(p->run->o->mongo_uri);
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->todo == NULL && !p->quit) {
            pthread_cond_wait(&p->cv, &p->mu);
        }
        struct job *j = p->todo;
        if (j == NULL) {
            pthread_mutex_unlock(&p->mu);
            break;
        }
        p->todo = j->next;
        if (p->todo == NULL) {
            p->todo_tail = NULL;
        }
        pthread_mutex_unlock(&p->mu);
        if (cl != NULL) {
            run_job(cl, p->run->o->mongo_db, j);
        } else {
            snprintf(j->why, sizeof(j->why), "mongo: bad URI");
        }
        pthread_mutex_lock(&p->mu);
        j->next = p->done;
        p->done = j;
        pthread_mutex_unlock(&p->mu);
        event_active(p->done_ev, EV_READ, 0);
    }
    if (cl != NULL) {
        mongoc_client_destroy(cl);
    }
    return NULL;
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    struct bh_mongo_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    struct job *j = p->done;
    p->done = NULL;
    pthread_mutex_unlock(&p->mu);
    while (j != NULL) {
        struct job *next = j->next;
        bh_complete(j->client, j->ok, j->ok ? NULL : j->why);
        free(j);
        j = next;
    }
}

struct bh_mongo_pool *bh_mongo_start(struct bh_run *run, int nthreads)
{
    static int inited;
    if (!inited) {
        mongoc_init();
        mongoc_log_set_handler(mongo_log, NULL);
        inited = 1;
    }
    struct bh_mongo_pool *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return NULL;
    }
    p->run = run;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->done_ev = event_new(run->base, -1, 0, on_done, p);
    p->threads = calloc((size_t)nthreads, sizeof(*p->threads));
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&p->threads[i], NULL, thread_main, p) != 0) {
            break;
        }
        p->nthreads++;
    }
    return p;
}

void bh_mongo_stop(struct bh_mongo_pool *p)
{
    if (p == NULL) {
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++) {
        pthread_join(p->threads[i], NULL);
    }
    /* jobs finished after the loop ended are dropped */
    for (struct job *j = p->done; j != NULL;) {
        struct job *next = j->next;
        free(j);
        j = next;
    }
    for (struct job *j = p->todo; j != NULL;) {
        struct job *next = j->next;
        free(j);
        j = next;
    }
    event_free(p->done_ev);
    free(p->threads);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}

void bh_mongo_find(struct bh_client *c, const char *coll, const char *field, const char *value)
{
    struct bh_mongo_pool *p = c->run->mongo;
    struct job *j = p != NULL ? calloc(1, sizeof(*j)) : NULL;
    if (j == NULL) {
        bh_complete(c, 0, "mongo: no pool");
        return;
    }
    j->client = c;
    snprintf(j->coll, sizeof(j->coll), "%s", coll);
    snprintf(j->field, sizeof(j->field), "%s", field);
    snprintf(j->value, sizeof(j->value), "%s", value);
    pthread_mutex_lock(&p->mu);
    if (p->todo_tail != NULL) {
        p->todo_tail->next = j;
    } else {
        p->todo = j;
    }
    p->todo_tail = j;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}
