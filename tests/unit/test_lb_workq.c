/*
 * test_lb_workq.c — the work queue of lib/lb_workq.h (the MongoDB
 * adapter's thread hand-off), with a fake backend function (no server):
 * every accepted job completes exactly once, on the loop thread, never from
 * inside submit; a full queue refuses; a cancel takes a waiting job off the
 * queue; freeing the pool with work pending delivers everything on the
 * caller's thread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "lib/lb_workq.h"

struct tjob {
    struct lb_job job; /* first */
    int index;
    int value;       /* written by work() */
    int ran;         /* work() calls (atomic) */
    int completions; /* done() calls (loop thread only) */
    pthread_t done_thread;
    int sleep_us;
    pthread_mutex_t *gate; /* work() blocks on it when set */
};

static pthread_t loop_thread;
static int ndone;
static int in_submit;
static int done_during_submit;
static struct event_base *base;

static void fake_work(struct lb_job *j)
{
    struct tjob *t = (struct tjob *)j;
    if (t->gate != NULL) {
        pthread_mutex_lock(t->gate);
        pthread_mutex_unlock(t->gate);
    }
    if (t->sleep_us > 0) {
        usleep((useconds_t)t->sleep_us);
    }
    t->value = t->index * 2 + 1; /* the "backend's answer" */
    __atomic_add_fetch(&t->ran, 1, __ATOMIC_RELAXED);
}

static void fake_done(struct lb_job *j)
{
    struct tjob *t = (struct tjob *)j;
    t->completions++;
    t->done_thread = pthread_self();
    if (in_submit) {
        done_during_submit++;
    }
    ndone++;
}

static void setup_base(void)
{
    evthread_use_pthreads();
    base = event_base_new();
    assert_non_null(base);
    loop_thread = pthread_self();
    ndone = 0;
    done_during_submit = 0;
}

static struct tjob *jobs_new(int n)
{
    struct tjob *t = calloc((size_t)n, sizeof(*t));
    for (int i = 0; i < n; i++) {
        t[i].index = i;
        t[i].job.id = (uint64_t)i + 1;
        t[i].job.work = fake_work;
        t[i].job.done = fake_done;
    }
    return t;
}

static void run_until(int want, int max_ms)
{
    for (int waited = 0; ndone < want && waited < max_ms; waited++) {
        struct timeval tv = {0, 1000};
        event_base_loopexit(base, &tv);
        event_base_loop(base, 0);
    }
}

static void test_many_jobs_complete_once_on_loop(void **state)
{
    (void)state;
    setup_base();
    char err[128];
    struct lb_workq *p = lb_workq_new(base, 4, 10000, err, sizeof(err));
    assert_non_null(p);
    enum { N = 2000 };
    struct tjob *t = jobs_new(N);
    for (int i = 0; i < N; i++) {
        t[i].sleep_us = i % 50 == 0 ? 200 : 0;
        in_submit = 1;
        assert_int_equal(lb_workq_submit(p, &t[i].job), 0);
        in_submit = 0;
    }
    run_until(N, 20000);
    assert_int_equal(ndone, N);
    assert_int_equal(done_during_submit, 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(t[i].completions, 1);
        assert_int_equal(__atomic_load_n(&t[i].ran, __ATOMIC_RELAXED), 1);
        assert_int_equal(t[i].job.outcome, LB_JOB_RAN);
        assert_int_equal(t[i].value, i * 2 + 1);
        assert_true(pthread_equal(t[i].done_thread, loop_thread));
    }
    lb_workq_free(p);
    assert_int_equal(ndone, N); /* nothing delivered twice */
    free(t);
    event_base_free(base);
}

static void test_queue_full_is_refused(void **state)
{
    (void)state;
    setup_base();
    char err[128];
    pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&gate); /* the single thread blocks in the first job */
    struct lb_workq *p = lb_workq_new(base, 1, 3, err, sizeof(err));
    assert_non_null(p);
    struct tjob *t = jobs_new(6);
    for (int i = 0; i < 6; i++) {
        t[i].gate = &gate;
    }
    assert_int_equal(lb_workq_submit(p, &t[0].job), 0);
    while (lb_workq_waiting(p) != 0) { /* the thread took job 0 */
        usleep(1000);
    }
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(lb_workq_submit(p, &t[i].job), 0);
    }
    assert_int_equal(lb_workq_submit(p, &t[4].job), LB_WORKQ_EFULL);
    assert_int_equal(lb_workq_waiting(p), 3);
    /* a waiting job can be canceled; then there is room again */
    assert_int_equal(lb_workq_cancel(p, t[2].job.id), 1);
    assert_int_equal(lb_workq_cancel(p, 999), 0);
    assert_int_equal(lb_workq_submit(p, &t[5].job), 0);
    pthread_mutex_unlock(&gate);
    run_until(5, 5000);
    assert_int_equal(ndone, 5);
    assert_int_equal(t[2].job.outcome, LB_JOB_CANCELED);
    assert_int_equal(__atomic_load_n(&t[2].ran, __ATOMIC_RELAXED), 0);
    assert_int_equal(t[4].completions, 0); /* refused: never completes */
    for (int i = 0; i < 6; i++) {
        if (i != 4) {
            assert_int_equal(t[i].completions, 1);
            assert_true(pthread_equal(t[i].done_thread, loop_thread));
        }
    }
    lb_workq_free(p);
    free(t);
    event_base_free(base);
}

static void test_defer_and_deadline(void **state)
{
    (void)state;
    setup_base();
    char err[128];
    struct lb_workq *p = lb_workq_new(base, 2, 100, err, sizeof(err));
    struct tjob *t = jobs_new(2);
    in_submit = 1;
    lb_workq_defer(p, &t[0].job); /* never completes inside the call */
    in_submit = 0;
    assert_int_equal(ndone, 0);
    t[1].job.deadline_ms = 1; /* long past */
    assert_int_equal(lb_workq_submit(p, &t[1].job), 0);
    run_until(2, 5000);
    assert_int_equal(t[0].completions, 1);
    assert_int_equal(t[0].job.outcome, LB_JOB_RAN);
    assert_int_equal(__atomic_load_n(&t[0].ran, __ATOMIC_RELAXED), 0);
    assert_int_equal(t[1].job.outcome, LB_JOB_EXPIRED);
    assert_int_equal(__atomic_load_n(&t[1].ran, __ATOMIC_RELAXED), 0);
    lb_workq_free(p);
    free(t);
    event_base_free(base);
}

static void test_free_with_pending_work(void **state)
{
    (void)state;
    setup_base();
    char err[128];
    struct lb_workq *p = lb_workq_new(base, 2, 1000, err, sizeof(err));
    enum { N = 200 };
    struct tjob *t = jobs_new(N);
    for (int i = 0; i < N; i++) {
        t[i].sleep_us = 500;
        assert_int_equal(lb_workq_submit(p, &t[i].job), 0);
    }
    usleep(2000);     /* a few run, most still wait */
    lb_workq_free(p); /* joins; delivers every job here, on this thread */
    assert_int_equal(ndone, N);
    int stopped = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(t[i].completions, 1);
        assert_true(pthread_equal(t[i].done_thread, loop_thread));
        if (t[i].job.outcome == LB_JOB_STOPPED) {
            stopped++;
            assert_int_equal(__atomic_load_n(&t[i].ran, __ATOMIC_RELAXED), 0);
        } else {
            assert_int_equal(t[i].job.outcome, LB_JOB_RAN);
        }
    }
    assert_true(stopped > 0);
    /* the loop has nothing left to deliver */
    event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(ndone, N);
    free(t);
    event_base_free(base);
}

/* done() frees the pool (the gateway dropping a backend on its last
 * completion): the remaining jobs are still delivered exactly once. */
static struct lb_workq *self_pool;

static void freeing_done(struct lb_job *j)
{
    fake_done(j);
    if (self_pool != NULL) {
        struct lb_workq *p = self_pool;
        self_pool = NULL;
        lb_workq_free(p);
    }
}

static void test_free_from_inside_done(void **state)
{
    (void)state;
    setup_base();
    char err[128];
    self_pool = lb_workq_new(base, 3, 1000, err, sizeof(err));
    enum { N = 100 };
    struct tjob *t = jobs_new(N);
    for (int i = 0; i < N; i++) {
        t[i].job.done = freeing_done;
        t[i].sleep_us = 100;
        assert_int_equal(lb_workq_submit(self_pool, &t[i].job), 0);
    }
    run_until(N, 5000);
    assert_null(self_pool);
    assert_int_equal(ndone, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(t[i].completions, 1);
    }
    event_base_loop(base, EVLOOP_NONBLOCK);
    free(t);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_jobs_complete_once_on_loop),
        cmocka_unit_test(test_queue_full_is_refused),
        cmocka_unit_test(test_defer_and_deadline),
        cmocka_unit_test(test_free_with_pending_work),
        cmocka_unit_test(test_free_from_inside_done),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
