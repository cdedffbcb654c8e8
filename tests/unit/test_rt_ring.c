/*
 * test_rt_ring.c — the key hash, slots and the weighted consistent-hash ring.
 *
 * The pinned values are the on-disk format (rows store their slot): if one of
 * them changes, every stored row is misrouted.  Do not "fix" a pin; find out
 * what changed the hash.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routing/rt_hash.h"
#include "routing/rt_ring.h"

#define NKEYS 1000000
#define NSLOTS RT_SLOTS_DEFAULT

/* splitmix64: a fixed-seed PRNG, so the key sets are the same on every run. */
static uint64_t prng_next(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* Slots of NKEYS random customer-id-like keys, computed once. */
static uint32_t *key_slots;

static int setup_keys(void **state)
{
    uint64_t seed = 20240601;
    char key[40];
    size_t i;

    (void)state;
    key_slots = malloc(NKEYS * sizeof *key_slots);
    if (key_slots == NULL)
        return -1;
    for (i = 0; i < NKEYS; i++) {
        int n = snprintf(key, sizeof key, "cust-%016" PRIx64, prng_next(&seed));

        key_slots[i] = rt_slot(rt_hash(key, (size_t)n), NSLOTS);
    }
    return 0;
}

static int teardown_keys(void **state)
{
    (void)state;
    free(key_slots);
    key_slots = NULL;
    return 0;
}

static struct rt_ring *ring_of(const char *const *names, const uint32_t *weights, size_t n,
                               uint32_t vnodes)
{
    struct rt_ring_node nodes[16];
    struct rt_ring *r;
    char err[256] = "";
    size_t i;

    assert_true(n <= 16);
    for (i = 0; i < n; i++) {
        nodes[i].name = names[i];
        nodes[i].weight = weights ? weights[i] : 1;
    }
    r = rt_ring_new(nodes, n, vnodes, err, sizeof err);
    if (r == NULL)
        fail_msg("rt_ring_new: %s", err);
    return r;
}

/* slot → node index table of a ring over NSLOTS slots (caller frees). */
static uint32_t *table_of(const struct rt_ring *r)
{
    uint32_t *t = malloc(NSLOTS * sizeof *t);
    char err[256] = "";

    assert_non_null(t);
    if (rt_ring_slots(r, NSLOTS, t, err, sizeof err) != 0)
        fail_msg("rt_ring_slots: %s", err);
    return t;
}

/* Keys per node over the fixed key set. */
static void count_keys(const uint32_t *table, size_t *counts, size_t n)
{
    size_t i;

    memset(counts, 0, n * sizeof *counts);
    for (i = 0; i < NKEYS; i++)
        counts[table[key_slots[i]]]++;
}

static const char *const orders[] = {"orders-1", "orders-2", "orders-3", "orders-4", "orders-5"};

/* ---- hash and slot: pinned (the on-disk format) ------------------------- */

static void test_hash_pinned(void **state)
{
    (void)state;
    assert_int_equal(rt_hash("", 0), UINT64_C(0x2d06800538d394c2));
    assert_int_equal(rt_hash("customer-42", 11), UINT64_C(0xf40925ac7f7b5e61));
    assert_int_equal(rt_hash("cust-00000001", 13), UINT64_C(0xc6dbc4914a1ceb31));
    /* ring points: name + vnode index, never the position in a list */
    assert_int_equal(rt_hash_point("orders-1", 8, 0), UINT64_C(0xfd7cc18f961fbce4));
    assert_int_equal(rt_hash_point("orders-1", 8, 1), UINT64_C(0xcea5f5591331a58a));
    assert_int_equal(rt_hash_point("orders-2", 8, 0), UINT64_C(0xa5c700d3cc8cc6b5));
}

static void test_slot_bits(void **state)
{
    (void)state;
    /* slot = high bits of the hash */
    assert_int_equal(rt_slot(0, 4096), 0);
    assert_int_equal(rt_slot(UINT64_MAX, 4096), 4095);
    assert_int_equal(rt_slot(UINT64_C(0xabc0000000000000), 4096), 0xabc);
    assert_int_equal(rt_slot(UINT64_C(0xabcfffffffffffff), 4096), 0xabc);
    assert_int_equal(rt_slot(UINT64_C(0xabcdef0123456789), 65536), 0xabcd);
    assert_int_equal(rt_slot(UINT64_C(0x8000000000000000), 2), 1);
    assert_int_equal(rt_slot(UINT64_MAX, 1), 0);
    /* midpoint of a slot's hash range */
    assert_int_equal(rt_slot_midpoint(0, 4096), UINT64_C(0x0008000000000000));
    assert_int_equal(rt_slot_midpoint(4095, 4096), UINT64_C(0xfff8000000000000));
    assert_int_equal(rt_slot_midpoint(0, 1), UINT64_C(0x8000000000000000));
    assert_int_equal(rt_slot_midpoint(1, 2), UINT64_C(0xc000000000000000));
    assert_int_equal(rt_slot(rt_slot_midpoint(1234, 4096), 4096), 1234);

    assert_true(rt_slots_valid(1));
    assert_true(rt_slots_valid(4096));
    assert_true(rt_slots_valid(65536));
    assert_false(rt_slots_valid(0));
    assert_false(rt_slots_valid(1000));
    assert_false(rt_slots_valid(131072));
    assert_false(rt_slots_valid(UINT64_C(1) << 40));
}

/* ---- determinism --------------------------------------------------------- */

/* Like twemproxy's ketama test: the first points of a known ring. */
static void test_ring_points_pinned(void **state)
{
    static const struct {
        uint64_t pos;
        size_t node;
    } want[] = {
        {UINT64_C(0x0001889ed156e536), 1}, /* orders-2 */
        {UINT64_C(0x0008d9e2f9c4f1e8), 3}, /* orders-4 */
        {UINT64_C(0x0019ac48e0f76f08), 1}, /* orders-2 */
    };
    struct rt_ring *r = ring_of(orders, NULL, 4, RT_RING_DEFAULT_VNODES);
    size_t i;

    (void)state;
    assert_int_equal(rt_ring_nnodes(r), 4);
    assert_int_equal(rt_ring_npoints(r), 4 * RT_RING_DEFAULT_VNODES);
    for (i = 0; i < sizeof want / sizeof want[0]; i++) {
        uint64_t pos;
        size_t node;

        assert_int_equal(rt_ring_point(r, i, &pos, &node), 0);
        assert_int_equal(pos, want[i].pos);
        assert_int_equal(node, want[i].node);
    }
    assert_int_equal(rt_ring_point(r, rt_ring_npoints(r), NULL, NULL), -1);
    rt_ring_free(r);
}

/* key → hash → slot → shard, for the default 4-shard orders ring. */
static void test_route_pinned(void **state)
{
    static const struct {
        const char *key;
        uint64_t hash;
        uint32_t slot;
        const char *shard;
    } want[] = {
        {"customer-42", UINT64_C(0xf40925ac7f7b5e61), 3904, "orders-3"},
        {"customer-1001", UINT64_C(0x75cdbe3cec365f8b), 1884, "orders-2"},
        {"c0ffee", UINT64_C(0x915d4eb7a9dca8e6), 2325, "orders-1"},
        {"8f14e45f-ceea-467f-a5c7-2f6e3c6f1b8a", UINT64_C(0xc534e184eaa60b82), 3155, "orders-2"},
        {"customer-9", UINT64_C(0x8af9063cb799040f), 2223, "orders-4"},
    };
    struct rt_ring *r = ring_of(orders, NULL, 4, RT_RING_DEFAULT_VNODES);
    uint32_t *t = table_of(r);
    size_t i;

    (void)state;
    for (i = 0; i < sizeof want / sizeof want[0]; i++) {
        uint64_t h = rt_hash(want[i].key, strlen(want[i].key));
        uint32_t s = rt_slot(h, NSLOTS);

        assert_int_equal(h, want[i].hash);
        assert_int_equal(s, want[i].slot);
        assert_string_equal(orders[t[s]], want[i].shard);
    }
    free(t);
    rt_ring_free(r);
}

/* Building twice gives the same table; rt_ring_owner agrees with it. */
static void test_deterministic(void **state)
{
    struct rt_ring *a = ring_of(orders, NULL, 4, RT_RING_DEFAULT_VNODES);
    struct rt_ring *b = ring_of(orders, NULL, 4, RT_RING_DEFAULT_VNODES);
    uint32_t *ta = table_of(a), *tb = table_of(b);
    uint32_t s;

    (void)state;
    assert_memory_equal(ta, tb, NSLOTS * sizeof *ta);
    for (s = 0; s < NSLOTS; s++)
        assert_int_equal(rt_ring_owner(a, rt_slot_midpoint(s, NSLOTS)), ta[s]);
    /* past the last point wraps to the first */
    {
        uint64_t first;
        size_t node0;

        assert_int_equal(rt_ring_point(a, 0, &first, &node0), 0);
        assert_int_equal(rt_ring_owner(a, UINT64_MAX), node0);
        assert_int_equal(rt_ring_owner(a, 0), node0);
    }
    free(ta);
    free(tb);
    rt_ring_free(a);
    rt_ring_free(b);
}

/* The order of the node list never changes the placement. */
static void test_order_independent(void **state)
{
    static const char *const rev[] = {"orders-4", "orders-3", "orders-2", "orders-1"};
    struct rt_ring *a = ring_of(orders, NULL, 4, RT_RING_DEFAULT_VNODES);
    struct rt_ring *b = ring_of(rev, NULL, 4, RT_RING_DEFAULT_VNODES);
    uint32_t *ta = table_of(a), *tb = table_of(b);
    uint32_t s;

    (void)state;
    for (s = 0; s < NSLOTS; s++)
        assert_string_equal(orders[ta[s]], rev[tb[s]]);
    free(ta);
    free(tb);
    rt_ring_free(a);
    rt_ring_free(b);
}

/* ---- balance, weights, movement ------------------------------------------ */

static void test_balance(void **state)
{
    struct rt_ring *r = ring_of(orders, NULL, 4, RT_RING_DEFAULT_VNODES);
    uint32_t *t = table_of(r);
    size_t counts[4], i, max = 0;
    double mean = NKEYS / 4.0;

    (void)state;
    count_keys(t, counts, 4);
    for (i = 0; i < 4; i++)
        if (counts[i] > max)
            max = counts[i];
    print_message("balance: %zu %zu %zu %zu keys, max/mean %.4f\n", counts[0], counts[1], counts[2],
                  counts[3], max / mean);
    assert_true(max <= 1.10 * mean);
    free(t);
    rt_ring_free(r);
}

static void test_weights(void **state)
{
    static const uint32_t weights[] = {1, 2, 1, 1};
    struct rt_ring *r = ring_of(orders, weights, 4, RT_RING_DEFAULT_VNODES);
    uint32_t *t = table_of(r);
    size_t counts[4], i;
    double w1;

    (void)state;
    assert_int_equal(rt_ring_npoints(r), 5 * RT_RING_DEFAULT_VNODES);
    count_keys(t, counts, 4);
    w1 = (counts[0] + counts[2] + counts[3]) / 3.0;
    print_message("weights 1,2,1,1: %zu %zu %zu %zu keys, weight-2 / weight-1 %.4f\n", counts[0],
                  counts[1], counts[2], counts[3], counts[1] / w1);
    /* against the mean weight-1 share, and against each weight-1 shard */
    assert_true(counts[1] >= 1.8 * w1 && counts[1] <= 2.2 * w1);
    for (i = 0; i < 4; i++) {
        if (i == 1)
            continue;
        assert_true(counts[1] >= 1.8 * counts[i] && counts[1] <= 2.2 * counts[i]);
    }
    free(t);
    rt_ring_free(r);
}

static void test_add_shard(void **state)
{
    struct rt_ring *r4 = ring_of(orders, NULL, 4, RT_RING_DEFAULT_VNODES);
    struct rt_ring *r5 = ring_of(orders, NULL, 5, RT_RING_DEFAULT_VNODES);
    uint32_t *t4 = table_of(r4), *t5 = table_of(r5);
    size_t i, moved = 0;
    double ideal = NKEYS / 5.0;

    (void)state;
    for (i = 0; i < NKEYS; i++) {
        uint32_t s = key_slots[i];

        if (t4[s] != t5[s]) {
            moved++;
            /* every moved key moves ONTO the new shard */
            assert_int_equal(t5[s], 4);
        }
    }
    print_message("add 5th shard: %zu keys moved, %.4f of the ideal 1/5\n", moved, moved / ideal);
    assert_true(moved >= 0.9 * ideal && moved <= 1.1 * ideal);
    free(t4);
    free(t5);
    rt_ring_free(r4);
    rt_ring_free(r5);
}

static void test_remove_shard(void **state)
{
    /* remove orders-2 (index 1): the later ones shift down in the list */
    static const char *const rest[] = {"orders-1", "orders-3", "orders-4"};
    struct rt_ring *r4 = ring_of(orders, NULL, 4, RT_RING_DEFAULT_VNODES);
    struct rt_ring *r3 = ring_of(rest, NULL, 3, RT_RING_DEFAULT_VNODES);
    uint32_t *t4 = table_of(r4), *t3 = table_of(r3);
    size_t i, moved = 0, had = 0;

    (void)state;
    for (i = 0; i < NKEYS; i++) {
        uint32_t s = key_slots[i];
        int was_removed = t4[s] == 1;

        had += (size_t)was_removed;
        if (strcmp(orders[t4[s]], rest[t3[s]]) != 0) {
            moved++;
            /* only the removed shard's keys move */
            assert_true(was_removed);
        }
    }
    print_message("remove a shard of 4: %zu keys moved (its %zu keys)\n", moved, had);
    assert_int_equal(moved, had);
    free(t4);
    free(t3);
    rt_ring_free(r4);
    rt_ring_free(r3);
}

/* Raising a weight only moves keys onto that shard. */
static void test_weight_change(void **state)
{
    static const uint32_t w[] = {1, 1, 3, 1};
    struct rt_ring *a = ring_of(orders, NULL, 4, RT_RING_DEFAULT_VNODES);
    struct rt_ring *b = ring_of(orders, w, 4, RT_RING_DEFAULT_VNODES);
    uint32_t *ta = table_of(a), *tb = table_of(b);
    uint32_t s;

    (void)state;
    for (s = 0; s < NSLOTS; s++)
        if (ta[s] != tb[s])
            assert_int_equal(tb[s], 2);
    free(ta);
    free(tb);
    rt_ring_free(a);
    rt_ring_free(b);
}

/* The largest ring allowed (RT_RING_MAX_POINTS points) builds, its points are
 * in ring order, and its slot table is the owner of every slot's midpoint.
 * How long it takes is a benchmark's business, not a unit test's. */
static void test_build_largest(void **state)
{
    static const uint32_t w[] = {4, 8, 4, 16};
    const uint32_t vnodes = RT_RING_MAX_POINTS / 32; /* Σ w = 32; = RT_RING_MAX_VNODES */
    struct rt_ring *r = ring_of(orders, w, 4, vnodes);
    uint32_t *t = table_of(r);
    uint64_t prev = 0, pos;
    size_t i, node, npoints = rt_ring_npoints(r);
    size_t per_node[4] = {0, 0, 0, 0};
    uint32_t s;

    (void)state;
    assert_int_equal(npoints, RT_RING_MAX_POINTS);
    for (i = 0; i < npoints; i++) {
        assert_int_equal(rt_ring_point(r, i, &pos, &node), 0);
        assert_true(i == 0 || pos >= prev);
        assert_true(node < 4);
        per_node[node]++;
        prev = pos;
    }
    for (i = 0; i < 4; i++)
        assert_int_equal(per_node[i], (size_t)vnodes * w[i]);
    for (s = 0; s < NSLOTS; s++)
        assert_int_equal(rt_ring_owner(r, rt_slot_midpoint(s, NSLOTS)), t[s]);
    free(t);
    rt_ring_free(r);
}

/* ---- invalid input ------------------------------------------------------- */

static void test_ring_errors(void **state)
{
    struct rt_ring_node nodes[2] = {{"a", 1}, {"a", 1}};
    struct rt_ring *r;
    uint32_t t[4];
    char err[256];

    (void)state;
    err[0] = '\0';
    assert_null(rt_ring_new(nodes, 0, 16, err, sizeof err));
    assert_non_null(strstr(err, "no nodes"));
    assert_null(rt_ring_new(nodes, 2, 16, err, sizeof err));
    assert_non_null(strstr(err, "duplicate ring node name \"a\""));
    nodes[1].name = "";
    assert_null(rt_ring_new(nodes, 2, 16, err, sizeof err));
    assert_non_null(strstr(err, "no name"));
    nodes[1].name = "b";
    nodes[1].weight = 0;
    assert_null(rt_ring_new(nodes, 2, 16, err, sizeof err));
    assert_non_null(strstr(err, "\"b\": weight must be >= 1"));
    nodes[1].weight = 1;
    assert_null(rt_ring_new(nodes, 2, 0, err, sizeof err));
    assert_non_null(strstr(err, "vnodes"));
    nodes[1].weight = RT_RING_MAX_POINTS;
    assert_null(rt_ring_new(nodes, 2, 1, err, sizeof err));
    assert_non_null(strstr(err, "too many ring points"));
    /* a NULL error buffer is fine */
    assert_null(rt_ring_new(nodes, 0, 16, NULL, 0));

    nodes[1].weight = 1;
    r = rt_ring_new(nodes, 2, 16, err, sizeof err);
    assert_non_null(r);
    assert_int_equal(rt_ring_slots(r, 3, t, err, sizeof err), -1);
    assert_non_null(strstr(err, "power of two"));
    assert_int_equal(rt_ring_slots(r, 0, t, err, sizeof err), -1);
    /* tiny slot counts work */
    assert_int_equal(rt_ring_slots(r, 1, t, err, sizeof err), 0);
    assert_true(t[0] < 2);
    assert_int_equal(rt_ring_slots(r, 4, t, err, sizeof err), 0);
    rt_ring_free(r);
    rt_ring_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_pinned),
        cmocka_unit_test(test_slot_bits),
        cmocka_unit_test(test_ring_points_pinned),
        cmocka_unit_test(test_route_pinned),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_order_independent),
        cmocka_unit_test(test_balance),
        cmocka_unit_test(test_weights),
        cmocka_unit_test(test_add_shard),
        cmocka_unit_test(test_remove_shard),
        cmocka_unit_test(test_weight_change),
        cmocka_unit_test(test_build_largest),
        cmocka_unit_test(test_ring_errors),
    };

    return cmocka_run_group_tests(tests, setup_keys, teardown_keys);
}
