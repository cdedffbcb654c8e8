/*
 * test_rt_live.c — the live slot table of a rebalance (routing/rt_live.h):
 * tickets, freezing, exclusions, the switch and the epoch buckets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <string.h>
#include <time.h>

#include "routing/rt_live.h"

#define NSLOTS 16

static struct rt_live *table(void)
{
    int32_t owner[NSLOTS];
    for (int i = 0; i < NSLOTS; i++) {
        owner[i] = i % 4;
    }
    return rt_live_new(NSLOTS, owner);
}

static void test_ticket_routes_to_owner(void **state)
{
    (void)state;
    struct rt_live *l = table();
    struct rt_live_ticket t;
    struct rt_live_excl ex[RT_LIVE_MAX_EXCL];
    size_t nex = 99;
    int shard = -1;
    assert_int_equal(rt_live_begin(l, 6, 0, &shard, ex, &nex, &t), 0);
    assert_int_equal(shard, 2);
    assert_int_equal(nex, 0);
    assert_true(t.active);
    rt_live_end(l, &t);
    assert_false(t.active);
    rt_live_end(l, &t); /* twice: a no-op */
    assert_int_equal(rt_live_owner(l, 6), 2);
    assert_int_equal(rt_live_owner(l, NSLOTS), -1);
    rt_live_unref(l);
}

static void test_frozen_slot_holds_writes_not_reads(void **state)
{
    (void)state;
    struct rt_live *l = table();
    struct rt_live_ticket t;
    int shard;
    assert_int_equal(rt_live_freeze(l, 5, 100), 0);
    assert_int_equal(rt_live_begin(l, 5, 1, &shard, NULL, NULL, &t), 1); /* held */
    assert_false(t.active);
    assert_int_equal(rt_live_begin(l, 5, 0, &shard, NULL, NULL, &t), 0); /* a read goes */
    rt_live_end(l, &t);
    assert_int_equal(rt_live_begin(l, 6, 1, &shard, NULL, NULL, &t), 0); /* other slot */
    rt_live_end(l, &t);
    assert_int_equal(rt_live_begin(l, -1, 1, &shard, NULL, NULL, &t), 1); /* slot unknown */
    rt_live_unfreeze(l, 5);
    assert_int_equal(rt_live_begin(l, 5, 1, &shard, NULL, NULL, &t), 0);
    rt_live_end(l, &t);
    rt_live_unref(l);
}

static void test_freeze_waits_for_writes_in_flight(void **state)
{
    (void)state;
    struct rt_live *l = table();
    struct rt_live_ticket t;
    int shard;
    assert_int_equal(rt_live_begin(l, 3, 1, &shard, NULL, NULL, &t), 0);
    assert_int_equal(rt_live_freeze(l, 3, 30), -1); /* the write never ends: times out */
    /* and the slot is not left frozen */
    struct rt_live_ticket t2;
    assert_int_equal(rt_live_begin(l, 3, 1, &shard, NULL, NULL, &t2), 0);
    rt_live_end(l, &t2);
    rt_live_end(l, &t);
    assert_int_equal(rt_live_freeze(l, 3, 30), 0);
    rt_live_unfreeze(l, 3);
    /* a fan-out write (slot unknown) blocks every freeze */
    assert_int_equal(rt_live_begin(l, -1, 1, &shard, NULL, NULL, &t), 0);
    assert_int_equal(rt_live_freeze(l, 9, 30), -1);
    rt_live_end(l, &t);
    assert_int_equal(rt_live_freeze(l, 9, 30), 0);
    rt_live_unfreeze(l, 9);
    rt_live_unref(l);
}

static void test_switch_moves_exclusion_and_flips_epoch(void **state)
{
    (void)state;
    struct rt_live *l = table();
    struct rt_live_ticket before, after;
    struct rt_live_excl ex[RT_LIVE_MAX_EXCL];
    size_t nex;
    int shard;
    int b0 = rt_live_exclude(l, 4, 7); /* copying slot 7 (owner 3) to shard 4 */
    assert_true(b0 >= 0);
    assert_int_equal(rt_live_wait_epoch(l, b0, 10), 0);
    assert_int_equal(rt_live_begin(l, -1, 0, NULL, ex, &nex, &before), 0);
    assert_int_equal(nex, 1);
    assert_true(rt_live_excluded(ex, nex, 4, 7));
    assert_false(rt_live_excluded(ex, nex, 3, 7));
    assert_int_equal(rt_live_freeze(l, 7, 10), 0);
    int old = rt_live_switch(l, 7, 3, 4);
    assert_int_equal(old, before.bucket);
    assert_int_equal(rt_live_owner(l, 7), 4);
    assert_int_equal(rt_live_begin(l, 7, 1, &shard, ex, &nex, &after), 0); /* unfrozen */
    assert_int_equal(shard, 4);
    assert_true(rt_live_excluded(ex, nex, 3, 7));
    assert_false(rt_live_excluded(ex, nex, 4, 7));
    assert_int_not_equal(after.bucket, before.bucket);
    /* the request that started before the switch keeps the old bucket busy */
    assert_int_equal(rt_live_wait_epoch(l, old, 20), -1);
    rt_live_end(l, &before);
    assert_int_equal(rt_live_wait_epoch(l, old, 20), 0);
    rt_live_end(l, &after);
    rt_live_unexclude(l, 3, 7);
    assert_int_equal(rt_live_begin(l, -1, 0, NULL, ex, &nex, &after), 0);
    assert_int_equal(nex, 0);
    rt_live_end(l, &after);
    rt_live_unref(l);
}

static void test_exclusions_are_bounded(void **state)
{
    (void)state;
    struct rt_live *l = table();
    for (int i = 0; i < RT_LIVE_MAX_EXCL; i++) {
        assert_true(rt_live_exclude(l, 1, (uint32_t)i) >= 0);
    }
    assert_int_equal(rt_live_exclude(l, 1, 12), -1);
    assert_true(rt_live_exclude(l, 1, 0) >= 0); /* already there */
    rt_live_unref(rt_live_ref(l));
    rt_live_unref(l);
}

/* Writers racing a freeze: once freeze returns, no write to the slot is in
 * flight and none starts until unfreeze. */
struct race {
    struct rt_live *l;
    int stop;
    int violations;
    int frozen_clear; /* set by the main thread while it holds the freeze */
};

static void *writer(void *arg)
{
    struct race *r = arg;
    while (!__atomic_load_n(&r->stop, __ATOMIC_SEQ_CST)) {
        struct rt_live_ticket t;
        int shard;
        if (rt_live_begin(r->l, 2, 1, &shard, NULL, NULL, &t) == 0) {
            if (__atomic_load_n(&r->frozen_clear, __ATOMIC_SEQ_CST)) {
                __atomic_add_fetch(&r->violations, 1, __ATOMIC_SEQ_CST);
            }
            rt_live_end(r->l, &t);
        }
    }
    return NULL;
}

static void test_freeze_race(void **state)
{
    (void)state;
    struct race r = {.l = table()};
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        pthread_create(&th[i], NULL, writer, &r);
    }
    for (int round = 0; round < 200; round++) {
        assert_int_equal(rt_live_freeze(r.l, 2, 1000), 0);
        __atomic_store_n(&r.frozen_clear, 1, __ATOMIC_SEQ_CST);
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
        __atomic_store_n(&r.frozen_clear, 0, __ATOMIC_SEQ_CST);
        rt_live_unfreeze(r.l, 2);
    }
    __atomic_store_n(&r.stop, 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
    }
    assert_int_equal(r.violations, 0);
    rt_live_unref(r.l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ticket_routes_to_owner),
        cmocka_unit_test(test_frozen_slot_holds_writes_not_reads),
        cmocka_unit_test(test_freeze_waits_for_writes_in_flight),
        cmocka_unit_test(test_switch_moves_exclusion_and_flips_epoch),
        cmocka_unit_test(test_exclusions_are_bounded),
        cmocka_unit_test(test_freeze_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
