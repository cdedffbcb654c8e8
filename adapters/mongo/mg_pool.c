/*
 * mg_pool.c — thread pool with completions handed back to a libevent loop.
 *
 * Two FIFO lists under one mutex: `wait` (submitted, not yet taken by a
 * thread) and `done` (finished, not yet delivered).  A thread that appends to
 * an empty `done` list wakes the loop with event_active() on `ev`; the loop's
 * callback then pops and delivers jobs one by one until `done` is empty.
 * Popping one at a time (instead of stealing the whole list) lets
 * mg_pool_free() run from inside a done() callback and still deliver every
 * remaining job exactly once.
 */
#include "adapters/mongo/mg_pool.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lb_util.h"

struct mg_list {
    struct mg_job *head;
    struct mg_job *tail;
};

struct mg_pool {
    struct event_base *base;
    struct event *ev; /* activated by threads: "done has jobs" */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct mg_list wait;
    struct mg_list done;
    int nwait;
    int queue_max;
    int stopping;
    pthread_t *threads;
    int nthreads;
    /* loop-thread only */
    int dispatching; /* depth of dispatch_cb / mg_pool_free delivering */
    int freed;       /* mg_pool_free ran; destroy when dispatching drops to 0 */
};

static void list_push(struct mg_list *l, struct mg_job *j)
{
    j->next = NULL;
    if (l->tail != NULL) {
        l->tail->next = j;
    } else {
        l->head = j;
    }
    l->tail = j;
}

static struct mg_job *list_pop(struct mg_list *l)
{
    struct mg_job *j = l->head;
    if (j != NULL) {
        l->head = j->next;
        if (l->head == NULL) {
            l->tail = NULL;
        }
        j->next = NULL;
    }
    return j;
}

/* Append to `done` (mutex held); returns 1 when the loop must be woken. */
static int push_done_locked(struct mg_pool *p, struct mg_job *j)
{
    int was_empty = p->done.head == NULL;
    list_push(&p->done, j);
    return was_empty;
}

static void *thread_main(void *arg)
{
    struct mg_pool *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->stopping && p->wait.head == NULL) {
            pthread_cond_wait(&p->cv, &p->mu);
        }
        if (p->stopping) {
            pthread_mutex_unlock(&p->mu); /* queued jobs are delivered by mg_pool_free */
            return NULL;
        }
        struct mg_job *j = list_pop(&p->wait);
        p->nwait--;
        pthread_mutex_unlock(&p->mu);

        if (j->deadline_ms != 0 && lb_now_ms() >= j->deadline_ms) {
            j->outcome = MG_EXPIRED; /* nobody waits for the answer any more */
        } else {
            j->work(j);
            j->outcome = MG_RAN;
        }

        pthread_mutex_lock(&p->mu);
        int wake = push_done_locked(p, j); /* j belongs to the loop from here on */
        pthread_mutex_unlock(&p->mu);
        if (wake) {
            event_active(p->ev, EV_READ, 0);
        }
    }
}

static void destroy(struct mg_pool *p)
{
    event_free(p->ev);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}

/* Deliver completed jobs until none is left or the pool was freed. */
static void deliver_all(struct mg_pool *p)
{
    p->dispatching++;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        struct mg_job *j = list_pop(&p->done);
        pthread_mutex_unlock(&p->mu);
        if (j == NULL) {
            break;
        }
        j->done(j);
    }
    p->dispatching--;
}

static void dispatch_cb(evutil_socket_t fd, short what, void *arg)
{
    struct mg_pool *p = arg;
    (void)fd;
    (void)what;
    if (p->freed) {
        return;
    }
    deliver_all(p);
    if (p->freed && p->dispatching == 0) {
        destroy(p); /* a done() freed the pool; mg_pool_free left this to us */
    }
}

struct mg_pool *mg_pool_new(struct event_base *base, int nthreads, int queue_max, char *err,
                            size_t errlen)
{
    if (nthreads < 1 || queue_max < 0) {
        snprintf(err, errlen, "thread pool: needs at least 1 thread and queue_max >= 0");
        return NULL;
    }
    struct mg_pool *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->base = base;
    p->queue_max = queue_max;
    p->ev = event_new(base, -1, 0, dispatch_cb, p);
    p->threads = calloc((size_t)nthreads, sizeof(*p->threads));
    if (p->ev == NULL || p->threads == NULL) {
        snprintf(err, errlen, "out of memory");
        if (p->ev != NULL) {
            event_free(p->ev);
        }
        free(p->threads);
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (int i = 0; i < nthreads; i++) {
        int rc = pthread_create(&p->threads[i], NULL, thread_main, p);
        if (rc != 0) {
            snprintf(err, errlen, "thread pool: cannot start a thread: %s", strerror(rc));
            mg_pool_free(p); /* joins the ones already started */
            return NULL;
        }
        p->nthreads++;
    }
    return p;
}

int mg_pool_submit(struct mg_pool *p, struct mg_job *job)
{
    pthread_mutex_lock(&p->mu);
    if (p->stopping) {
        pthread_mutex_unlock(&p->mu);
        return MG_ESTOPPED;
    }
    if (p->nwait >= p->queue_max) {
        pthread_mutex_unlock(&p->mu);
        return MG_EFULL;
    }
    job->outcome = MG_RAN;
    list_push(&p->wait, job);
    p->nwait++;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

void mg_pool_defer(struct mg_pool *p, struct mg_job *job)
{
    job->outcome = MG_RAN;
    pthread_mutex_lock(&p->mu);
    int wake = push_done_locked(p, job);
    pthread_mutex_unlock(&p->mu);
    if (wake) {
        event_active(p->ev, EV_READ, 0);
    }
}

int mg_pool_cancel(struct mg_pool *p, uint64_t id)
{
    int found = 0, wake = 0;
    pthread_mutex_lock(&p->mu);
    struct mg_job *prev = NULL;
    for (struct mg_job *j = p->wait.head; j != NULL; prev = j, j = j->next) {
        if (j->id != id) {
            continue;
        }
        if (prev != NULL) {
            prev->next = j->next;
        } else {
            p->wait.head = j->next;
        }
        if (p->wait.tail == j) {
            p->wait.tail = prev;
        }
        p->nwait--;
        j->outcome = MG_CANCELED;
        wake = push_done_locked(p, j);
        found = 1;
        break;
    }
    pthread_mutex_unlock(&p->mu);
    if (wake) {
        event_active(p->ev, EV_READ, 0);
    }
    return found;
}

int mg_pool_waiting(struct mg_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int n = p->nwait;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void mg_pool_free(struct mg_pool *p)
{
    if (p == NULL) {
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++) {
        pthread_join(p->threads[i], NULL); /* a running job finishes first */
    }
    /* no thread left: what still waits will never run */
    pthread_mutex_lock(&p->mu);
    struct mg_job *j;
    while ((j = list_pop(&p->wait)) != NULL) {
        j->outcome = MG_STOPPED;
        list_push(&p->done, j);
    }
    p->nwait = 0;
    pthread_mutex_unlock(&p->mu);
    deliver_all(p);
    p->freed = 1;
    if (p->dispatching == 0) {
        destroy(p);
    }
}
