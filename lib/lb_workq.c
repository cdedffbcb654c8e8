/*
 * lb_workq.c — a work queue run by a thread pool, with completions handed
 * back to a libevent loop (see lb_workq.h).
 *
 * Two FIFO lists under one mutex: `wait` (submitted, not yet taken by a
 * thread) and `done` (finished, not yet delivered).  A thread that appends to
 * an empty `done` list wakes the loop with event_active() on `ev`; the loop's
 * callback then pops and delivers jobs one by one until `done` is empty.
 * Popping one at a time (instead of stealing the whole list) lets
 * lb_workq_free() run from inside a done() callback and still deliver every
 * remaining job exactly once.
 */
#include "lib/lb_workq.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lb_util.h"

struct job_list {
    struct lb_job *head;
    struct lb_job *tail;
};

struct lb_workq {
    struct event_base *base;
    struct event *ev; /* activated by threads: "done has jobs" */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job_list wait;
    struct job_list done;
    int nwait;
    int queue_max;
    int stopping;
    pthread_t *threads;
    int nthreads;
    /* loop-thread only */
    int dispatching; /* depth of dispatch_cb / lb_workq_free delivering */
    int freed;       /* lb_workq_free ran; destroy when dispatching drops to 0 */
};

static void list_push(struct job_list *l, struct lb_job *j)
{
    j->next = NULL;
    if (l->tail != NULL) {
        l->tail->next = j;
    } else {
        l->head = j;
    }
    l->tail = j;
}

static struct lb_job *list_pop(struct job_list *l)
{
    struct lb_job *j = l->head;
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
static int push_done_locked(struct lb_workq *p, struct lb_job *j)
{
    int was_empty = p->done.head == NULL;
    list_push(&p->done, j);
    return was_empty;
}

static void *thread_main(void *arg)
{
    struct lb_workq *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->stopping && p->wait.head == NULL) {
            pthread_cond_wait(&p->cv, &p->mu);
        }
        if (p->stopping) {
            pthread_mutex_unlock(&p->mu); /* queued jobs are delivered by lb_workq_free */
            return NULL;
        }
        struct lb_job *j = list_pop(&p->wait);
        p->nwait--;
        pthread_mutex_unlock(&p->mu);

        if (j->deadline_ms != 0 && lb_now_ms() >= j->deadline_ms) {
            j->outcome = LB_JOB_EXPIRED; /* nobody waits for the answer any more */
        } else {
            j->work(j);
            j->outcome = LB_JOB_RAN;
        }

        pthread_mutex_lock(&p->mu);
        int wake = push_done_locked(p, j); /* j belongs to the loop from here on */
        pthread_mutex_unlock(&p->mu);
        if (wake) {
            event_active(p->ev, EV_READ, 0);
        }
    }
}

static void destroy(struct lb_workq *p)
{
    event_free(p->ev);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}

/* Deliver completed jobs until none is left or the pool was freed. */
static void deliver_all(struct lb_workq *p)
{
    p->dispatching++;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        struct lb_job *j = list_pop(&p->done);
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
    struct lb_workq *p = arg;
    (void)fd;
    (void)what;
    if (p->freed) {
        return;
    }
    deliver_all(p);
    if (p->freed && p->dispatching == 0) {
        destroy(p); /* a done() freed the pool; lb_workq_free left this to us */
    }
}

struct lb_workq *lb_workq_new(struct event_base *base, int nthreads, int queue_max, char *err,
                              size_t errlen)
{
    if (nthreads < 1 || queue_max < 0) {
        snprintf(err, errlen, "thread pool: needs at least 1 thread and queue_max >= 0");
        return NULL;
    }
    struct lb_workq *p = calloc(1, sizeof(*p));
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
            lb_workq_free(p); /* joins the ones already started */
            return NULL;
        }
        p->nthreads++;
    }
    return p;
}

int lb_workq_submit(struct lb_workq *p, struct lb_job *job)
{
    pthread_mutex_lock(&p->mu);
    if (p->stopping) {
        pthread_mutex_unlock(&p->mu);
        return LB_WORKQ_ESTOPPED;
    }
    if (p->nwait >= p->queue_max) {
        pthread_mutex_unlock(&p->mu);
        return LB_WORKQ_EFULL;
    }
    job->outcome = LB_JOB_RAN;
    list_push(&p->wait, job);
    p->nwait++;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

void lb_workq_defer(struct lb_workq *p, struct lb_job *job)
{
    job->outcome = LB_JOB_RAN;
    pthread_mutex_lock(&p->mu);
    int wake = push_done_locked(p, job);
    pthread_mutex_unlock(&p->mu);
    if (wake) {
        event_active(p->ev, EV_READ, 0);
    }
}

int lb_workq_cancel(struct lb_workq *p, uint64_t id)
{
    int found = 0, wake = 0;
    pthread_mutex_lock(&p->mu);
    struct lb_job *prev = NULL;
    for (struct lb_job *j = p->wait.head; j != NULL; prev = j, j = j->next) {
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
        j->outcome = LB_JOB_CANCELED;
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

int lb_workq_waiting(struct lb_workq *p)
{
    pthread_mutex_lock(&p->mu);
    int n = p->nwait;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void lb_workq_free(struct lb_workq *p)
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
    struct lb_job *j;
    while ((j = list_pop(&p->wait)) != NULL) {
        j->outcome = LB_JOB_STOPPED;
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
