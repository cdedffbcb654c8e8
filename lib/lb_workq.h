/*
 * lb_workq.h — a work queue run by a small thread pool whose completions
 * come back to one libevent loop.
 *
 * Blocking client libraries (the MongoDB adapter's mongo-c-driver has no
 * async API) run their calls here: the loop thread submits a job, a pool thread runs job->work(),
 * and job->done() is then called ON THE LOOP THREAD of the event_base given to lb_workq_new() —
 * exactly once per accepted job, never from inside submit. The hand-off is a mutex-protected list
 * plus event_active() on an event of that loop, so libevent must have threading enabled
 * (evthread_use_pthreads() before the event_base was created).
 *
 * Jobs are owned by the caller (usually embedded in a larger struct); the
 * pool only links them.  work() must not touch loop-thread data; done() may
 * submit new jobs, cancel, and even free the pool.
 */
#ifndef LB_WORKQ_H
#define LB_WORKQ_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

struct lb_workq;

/* How a job ended, as seen by done(). */
enum lb_job_outcome {
    LB_JOB_RAN = 0,  /* work() ran (or the job was completed with lb_workq_defer) */
    LB_JOB_EXPIRED,  /* its deadline passed before a thread took it: work() did not run */
    LB_JOB_CANCELED, /* lb_workq_cancel() took it off the queue: work() did not run */
    LB_JOB_STOPPED,  /* the pool was freed before it ran: work() did not run */
};

struct lb_job {
    /* set by the caller */
    uint64_t id;                      /* for lb_workq_cancel(); need not be unique for others */
    uint64_t deadline_ms;             /* lb_now_ms() clock; 0 = none */
    void (*work)(struct lb_job *job); /* on a pool thread */
    void (*done)(struct lb_job *job); /* on the loop thread, exactly once */
    /* set by the pool */
    enum lb_job_outcome outcome;
    struct lb_job *next;
};

/* Refusals of lb_workq_submit(). */
#define LB_WORKQ_EFULL (-2)    /* `queue_max` jobs are already waiting */
#define LB_WORKQ_ESTOPPED (-3) /* the pool is being freed */

/* Start `nthreads` threads.  NULL with err filled on failure. */
struct lb_workq *lb_workq_new(struct event_base *base, int nthreads, int queue_max, char *err,
                              size_t errlen) __attribute__((warn_unused_result));

/* Queue a job: 0, LB_WORKQ_EFULL or LB_WORKQ_ESTOPPED (then done() will never be called). */
int lb_workq_submit(struct lb_workq *p, struct lb_job *job) __attribute__((warn_unused_result));

/* Complete a job without running it (outcome LB_JOB_RAN): done() is called later
 * on the loop, never from inside this call.  Not counted against queue_max.
 * For requests refused after they were accepted (e.g. invalid input found
 * while translating) so that they still complete asynchronously. */
void lb_workq_defer(struct lb_workq *p, struct lb_job *job);

/* Take a job off the wait queue if no thread has started it yet; it then
 * completes with LB_JOB_CANCELED.  Returns 1 if it was found waiting, else 0 (a
 * running job cannot be interrupted; it completes normally). */
int lb_workq_cancel(struct lb_workq *p, uint64_t id);

/* Jobs waiting for a thread (not running, not completed). */
int lb_workq_waiting(struct lb_workq *p);

/* Stop: waits for the running jobs to finish, joins the threads, then calls
 * done() of every job not yet delivered (queued ones with LB_JOB_STOPPED) on the
 * calling thread, which must be the loop thread.  No done() after it returns.
 * May be called from inside a done() callback. */
void lb_workq_free(struct lb_workq *p);

#endif
