/*
 * test_gw_req_state.c — the states of a request (gateway/gw_req_private.h):
 * every change req_set_state() allows, that it aborts on every other, and
 * the changes the lifecycle's events make (answer, completion, shutdown).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gateway/gw_req_private.h"

#define NSTATES 6

/* The transitions drawn in gw_req_private.h, and no other. */
/* clang-format off */
static const int legal[NSTATES][NSTATES] = {
    /*                          OPEN SUBM LATE ANSW ABSU ABAN */
    [REQ_OPEN]                = {0,   1,   0,   1,   0,   1},
    [REQ_SUBMITTED]           = {1,   0,   1,   0,   1,   0},
    [REQ_LATE]                = {0,   0,   0,   1,   0,   0},
    [REQ_ANSWERED]            = {0,   0,   0,   0,   0,   0},
    [REQ_ABANDONED_SUBMITTED] = {0,   0,   1,   0,   0,   1},
    [REQ_ABANDONED]           = {0,   0,   0,   1,   0,   0},
};
/* clang-format on */

static struct gw_req *req_in(enum req_state s)
{
    struct gw_req *r = calloc(1, sizeof(*r));
    snprintf(r->rid, sizeof(r->rid), "test");
    r->state = s;
    return r;
}

/* 1 when req_set_state(from → to) aborts the process (in a child). */
static int aborts(enum req_state from, enum req_state to)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stderr); /* the illegal change is logged */
        struct gw_req *r = req_in(from);
        req_set_state(r, to);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
}

static void test_only_drawn_transitions_are_legal(void **state)
{
    (void)state;
    for (int from = 0; from < NSTATES; from++) {
        for (int to = 0; to < NSTATES; to++) {
            if (legal[from][to]) {
                struct gw_req *r = req_in((enum req_state)from);
                req_set_state(r, (enum req_state)to);
                assert_int_equal(r->state, to);
                free(r);
            } else {
                if (!aborts((enum req_state)from, (enum req_state)to)) {
                    fail_msg("%s -> %s was allowed", req_state_name((enum req_state)from),
                             req_state_name((enum req_state)to));
                }
            }
        }
    }
}

static void test_answered_before_the_adapter(void **state)
{
    (void)state;
    struct gw_req *r = req_in(REQ_OPEN); /* calloc: a new request is OPEN */
    assert_true(req_is_open(r));
    req_mark_answered(r); /* refused, or failed before the adapter */
    assert_int_equal(r->state, REQ_ANSWERED);
    assert_true(req_is_answered(r));
    assert_false(req_is_owed(r));
    free(r);
}

static void test_completion_then_answer(void **state)
{
    (void)state;
    struct gw_req *r = req_in(REQ_OPEN);
    req_set_state(r, REQ_SUBMITTED);
    assert_true(req_is_owed(r));
    assert_false(req_is_answered(r));
    req_mark_completed(r); /* on_done: the answer comes from the completion */
    assert_int_equal(r->state, REQ_OPEN);
    req_mark_answered(r);
    assert_int_equal(r->state, REQ_ANSWERED);
    free(r);
}

static void test_deadline_then_late_completion(void **state)
{
    (void)state;
    struct gw_req *r = req_in(REQ_SUBMITTED);
    req_mark_answered(r); /* on_deadline: 504 while the adapter owes */
    assert_int_equal(r->state, REQ_LATE);
    assert_true(req_is_answered(r));
    assert_true(req_is_owed(r));
    req_mark_completed(r); /* dropped */
    assert_int_equal(r->state, REQ_ANSWERED);
    assert_false(req_is_owed(r));
    free(r);
}

static void test_shutdown(void **state)
{
    (void)state;
    struct gw_req *r = req_in(REQ_OPEN);
    req_mark_abandoned(r);
    assert_int_equal(r->state, REQ_ABANDONED);
    assert_true(req_is_abandoned(r));
    free(r);

    r = req_in(REQ_SUBMITTED);
    req_mark_abandoned(r);
    assert_int_equal(r->state, REQ_ABANDONED_SUBMITTED);
    assert_true(req_is_owed(r));
    req_mark_completed(r);
    assert_int_equal(r->state, REQ_ABANDONED);
    assert_false(req_is_owed(r));
    free(r);

    /* an answered request stays answered; a deadline still answers */
    r = req_in(REQ_LATE);
    req_mark_abandoned(r);
    assert_int_equal(r->state, REQ_LATE);
    free(r);
    r = req_in(REQ_ABANDONED_SUBMITTED);
    req_mark_answered(r);
    assert_int_equal(r->state, REQ_LATE);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_only_drawn_transitions_are_legal),
        cmocka_unit_test(test_answered_before_the_adapter),
        cmocka_unit_test(test_completion_then_answer),
        cmocka_unit_test(test_deadline_then_late_completion),
        cmocka_unit_test(test_shutdown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
