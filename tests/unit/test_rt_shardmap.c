/*
 * test_rt_shardmap.c — shard map parsing, validation, slot table, overrides,
 * diff and reference counting.
 *
 * Valid maps come from tests/unit/data/shardmap_*.json; the invalid cases are
 * a table in tests/unit/data/shardmap_invalid.json: {case, map, error}, where
 * error is a fragment the rejection message must contain.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "routing/rt_hash.h"
#include "routing/rt_ring.h"
#include "routing/rt_shardmap.h"

/* The data folder, next to this file (make compiles it by its repo path and
 * runs the tests from the repo root); RT_TEST_DATA overrides it. */
static const char *data_dir(void)
{
    static char dir[512];
    const char *env = getenv("RT_TEST_DATA");
    const char *slash;

    if (env && *env)
        return env;
    slash = strrchr(__FILE__, '/');
    if (slash == NULL)
        return "data";
    snprintf(dir, sizeof dir, "%.*s/data", (int)(slash - __FILE__), __FILE__);
    return dir;
}

static struct json_object *load_json(const char *file)
{
    char path[1024];
    struct json_object *doc;

    snprintf(path, sizeof path, "%s/%s", data_dir(), file);
    doc = json_object_from_file(path);
    if (doc == NULL)
        fail_msg("%s: %s", path, json_util_get_last_err());
    return doc;
}

/* A member of an object (NULL when missing or JSON null). */
static struct json_object *member(const struct json_object *obj, const char *key)
{
    struct json_object *v = NULL;

    if (!json_object_object_get_ex(obj, key, &v))
        return NULL;
    return v;
}

/* A string member's value, NULL when missing or not a string. */
static const char *member_str(const struct json_object *obj, const char *key)
{
    struct json_object *v = member(obj, key);

    return json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

static struct rt_shardmap *load_map(const char *file)
{
    struct json_object *doc = load_json(file);
    struct rt_shardmap *m;
    char err[512] = "";

    m = rt_shardmap_from_json(doc, err, sizeof err);
    json_object_put(doc);
    if (m == NULL)
        fail_msg("%s: %s", file, err);
    return m;
}

static int shard_of(const struct rt_shardmap *m, uint32_t slot)
{
    int ix = rt_shardmap_slot_owner(m, slot);

    assert_true(ix >= 0 && (size_t)ix < rt_shardmap_nshards(m));
    return ix;
}

static const char *owner_name(const struct rt_shardmap *m, uint32_t slot)
{
    return rt_shardmap_shard_name(m, (size_t)shard_of(m, slot));
}

/* ---- valid maps, table-driven --------------------------------------------- */

static const struct valid_case {
    const char *file;
    int64_t version;
    uint32_t nslots;
    uint32_t vnodes;
    size_t nshards;
    size_t noverrides;
    const char *shard1_name; /* shard index 1 */
    const char *shard1_dsn;
    uint32_t shard0_weight;
} valid_cases[] = {
    {"shardmap_orders.json", 1, 4096, RT_RING_DEFAULT_VNODES, 4, 0, "orders-2",
     "mysql://polygate@127.0.0.1:53306/orders_2", 1},
    {"shardmap_orders_5.json", 2, 4096, 2048, 5, 0, "orders-2",
     "mysql://polygate@127.0.0.1:53306/orders_2", 1},
    {"shardmap_orders_reordered.json", 3, 4096, RT_RING_DEFAULT_VNODES, 4, 0, "orders-1",
     "mysql://polygate@127.0.0.1:53306/orders_1", 1},
    {"shardmap_orders_overrides.json", 4, 4096, RT_RING_DEFAULT_VNODES, 4, 4, "orders-2",
     "mysql://polygate@127.0.0.1:53306/orders_2", 1},
    {"shardmap_weighted.json", 7, 1024, 512, 4, 0, "small-a", "host=10.0.0.2 dbname=a", 2},
    {"shardmap_single.json", 1, 1, 1, 1, 1, NULL, NULL, 1},
};

static void test_valid_maps(void **state)
{
    size_t c;

    (void)state;
    for (c = 0; c < sizeof valid_cases / sizeof valid_cases[0]; c++) {
        const struct valid_case *vc = &valid_cases[c];
        struct rt_shardmap *m = load_map(vc->file);
        uint32_t total = 0, s;
        size_t i;

        print_message("%s\n", vc->file);
        assert_int_equal(rt_shardmap_version(m), vc->version);
        assert_int_equal(rt_shardmap_nslots(m), vc->nslots);
        assert_int_equal(rt_shardmap_vnodes(m), vc->vnodes);
        assert_int_equal(rt_shardmap_nshards(m), vc->nshards);
        assert_int_equal(rt_shardmap_noverrides(m), vc->noverrides);
        assert_int_equal(rt_shardmap_shard_weight(m, 0), vc->shard0_weight);
        if (vc->shard1_name) {
            assert_string_equal(rt_shardmap_shard_name(m, 1), vc->shard1_name);
            assert_string_equal(rt_shardmap_shard_dsn(m, 1), vc->shard1_dsn);
            assert_int_equal(rt_shardmap_shard_index(m, vc->shard1_name), 1);
        }
        /* out-of-range accessors */
        assert_null(rt_shardmap_shard_name(m, vc->nshards));
        assert_null(rt_shardmap_shard_dsn(m, vc->nshards));
        assert_int_equal(rt_shardmap_shard_weight(m, vc->nshards), 0);
        assert_int_equal(rt_shardmap_shard_nslots(m, vc->nshards), 0);
        assert_int_equal(rt_shardmap_shard_index(m, "no-such-shard"), -1);
        assert_int_equal(rt_shardmap_slot_owner(m, vc->nslots), -1);
        assert_int_equal(rt_shardmap_override(m, vc->noverrides, NULL, NULL), -1);

        /* per-shard slot counts agree with the table and add up */
        for (i = 0; i < vc->nshards; i++) {
            uint32_t n = 0;

            for (s = 0; s < vc->nslots; s++)
                n += (uint32_t)(shard_of(m, s) == (int)i);
            assert_int_equal(rt_shardmap_shard_nslots(m, i), n);
            total += n;
        }
        assert_int_equal(total, vc->nslots);
        rt_shardmap_unref(m);
    }
}

/* ---- invalid maps, table-driven from a file --------------------------------- */

static void test_invalid_maps(void **state)
{
    struct json_object *cases = load_json("shardmap_invalid.json");
    size_t i, failed = 0;

    (void)state;
    assert_true(json_object_is_type(cases, json_type_array));
    assert_true(json_object_array_length(cases) > 0);
    for (i = 0; i < json_object_array_length(cases); i++) {
        const struct json_object *c = json_object_array_get_idx(cases, i);
        const char *name = member_str(c, "case");
        const char *want = member_str(c, "error");
        struct rt_shardmap *m;
        char err[512] = "";

        assert_non_null(name);
        assert_non_null(want);
        m = rt_shardmap_from_json(member(c, "map"), err, sizeof err);
        if (m != NULL) {
            print_error("case \"%s\": accepted, expected an error containing: %s\n", name, want);
            rt_shardmap_unref(m);
            failed++;
        } else if (strstr(err, want) == NULL) {
            print_error("case \"%s\":\n   got: %s\n  want: %s\n", name, err, want);
            failed++;
        }
    }
    print_message("%zu invalid cases\n", json_object_array_length(cases));
    json_object_put(cases);
    assert_int_equal(failed, 0);
}

static void test_null_and_errbuf(void **state)
{
    struct json_object *doc = json_object_new_object();
    char tiny[8];

    (void)state;
    assert_non_null(doc);
    assert_int_equal(json_object_object_add(doc, "version", json_object_new_int(1)), 0);
    assert_int_equal(json_object_object_add(doc, "shards", json_object_new_array()), 0);
    assert_null(rt_shardmap_from_json(NULL, NULL, 0));
    assert_null(rt_shardmap_from_json(doc, NULL, 0));
    /* a short buffer is truncated, still terminated */
    memset(tiny, 'x', sizeof tiny);
    assert_null(rt_shardmap_from_json(doc, tiny, sizeof tiny));
    assert_int_equal(strlen(tiny), sizeof tiny - 1);
    json_object_put(doc);
    rt_shardmap_unref(NULL);
}

/* json-c specifics the data file cannot express portably: integers beyond 64
 * bits are clamped to INT64_MAX / INT64_MIN by the parser (so both are
 * rejected), and \u0000 is accepted inside strings. */
static void test_json_c_edges(void **state)
{
    static const struct {
        const char *json;
        const char *error; /* NULL: accepted */
    } cases[] = {
        {"{\"version\": 9223372036854775806, \"shards\": [{\"name\": \"a\", \"dsn\": \"x\"}]}",
         NULL},
        {"{\"version\": 9223372036854775807, \"shards\": [{\"name\": \"a\", \"dsn\": \"x\"}]}",
         "\"version\" must be an integer >= 1 (got an integer out of the 64-bit range)"},
        {"{\"version\": 99999999999999999999, \"shards\": [{\"name\": \"a\", \"dsn\": \"x\"}]}",
         "\"version\" must be an integer >= 1 (got an integer out of the 64-bit range)"},
        {"{\"version\": -99999999999999999999, \"shards\": [{\"name\": \"a\", \"dsn\": \"x\"}]}",
         "\"version\" must be an integer >= 1 (got an integer out of the 64-bit range)"},
        {"{\"version\": 1, \"slots\": 18446744073709551616, \"shards\": [{\"name\": \"a\", "
         "\"dsn\": \"x\"}]}",
         "\"slots\" must be a power of two in [1, 65536] (got an integer out of the 64-bit range)"},
        {"{\"version\": 1, \"shards\": [{\"name\": \"a\", \"dsn\": \"x\", \"weight\": "
         "-9223372036854775809}]}",
         "shards[0] \"a\": \"weight\" must be an integer >= 1 (got an integer out of the 64-bit "
         "range)"},
        {"{\"version\": 1, \"shards\": [{\"name\": \"a\", \"dsn\": \"x\\u0000y\"}]}",
         "shards[0] \"a\": \"dsn\" contains a NUL character"},
        {"{\"version\": 1, \"shards\": [{\"name\": \"a\\u0000b\", \"dsn\": \"x\"}]}",
         "shards[0]: \"name\" \"a\" may only contain letters, digits and - _ . : (invalid "
         "character at offset 1)"},
        {"{\"version\": 1, \"shards\": [null]}",
         "shards[0]: expected an object {name, dsn, weight}"},
        {"{\"version\": 1, \"shards\": null}", "missing required field \"shards\""},
        {"{\"version\": 1, \"shards\": [{\"name\": \"a\", \"dsn\": \"x\", \"weight\": null}], "
         "\"overrides\": null}",
         NULL},
        {"{\"version\": 1, \"shards\": [{\"name\": \"a\", \"dsn\": \"x\"}], \"overrides\": "
         "{\"0\": null}}",
         "overrides \"0\": value must be a shard name (a string)"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct json_object *doc = json_tokener_parse(cases[i].json);
        struct rt_shardmap *m;
        char err[512] = "";

        if (doc == NULL)
            fail_msg("case %zu: does not parse: %s", i, cases[i].json);
        m = rt_shardmap_from_json(doc, err, sizeof err);
        json_object_put(doc);
        if (cases[i].error == NULL) {
            if (m == NULL)
                fail_msg("case %zu: rejected: %s", i, err);
            rt_shardmap_unref(m);
        } else {
            if (m != NULL)
                fail_msg("case %zu: accepted, expected: %s", i, cases[i].error);
            assert_string_equal(err, cases[i].error);
        }
    }
}

/* ---- routing -------------------------------------------------------------- */

/* Same pins as test_rt_ring.c: the shard map is the ring over the slots. */
static void test_route(void **state)
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
        {"customer-9", UINT64_C(0x8af9063cb799040f), 2223, "orders-4"},
    };
    struct rt_shardmap *m = load_map("shardmap_orders.json");
    struct rt_shardmap *r = load_map("shardmap_orders_reordered.json");
    size_t i;

    (void)state;
    for (i = 0; i < sizeof want / sizeof want[0]; i++) {
        uint64_t h = 0;
        uint32_t s = 0;
        int ix = rt_shardmap_route(m, want[i].key, strlen(want[i].key), &h, &s);

        assert_int_equal(h, want[i].hash);
        assert_int_equal(s, want[i].slot);
        assert_string_equal(rt_shardmap_shard_name(m, (size_t)ix), want[i].shard);
        assert_int_equal(ix, rt_shardmap_slot_owner(m, s));
        /* hash and slot outputs are optional */
        assert_int_equal(rt_shardmap_route(m, want[i].key, strlen(want[i].key), NULL, NULL), ix);
        /* the list order does not matter: same shard by name */
        ix = rt_shardmap_route(r, want[i].key, strlen(want[i].key), NULL, NULL);
        assert_string_equal(rt_shardmap_shard_name(r, (size_t)ix), want[i].shard);
    }
    rt_shardmap_unref(m);
    rt_shardmap_unref(r);
}

static void test_single_slot(void **state)
{
    struct rt_shardmap *m = load_map("shardmap_single.json");
    uint32_t s = 99;

    (void)state;
    assert_int_equal(rt_shardmap_route(m, "anything", 8, NULL, &s), 0);
    assert_int_equal(s, 0);
    assert_int_equal(rt_shardmap_route(m, "", 0, NULL, &s), 0);
    assert_int_equal(rt_shardmap_shard_nslots(m, 0), 1);
    rt_shardmap_unref(m);
}

static void test_weighted_shares(void **state)
{
    struct rt_shardmap *m = load_map("shardmap_weighted.json");
    double big = rt_shardmap_shard_nslots(m, 0);
    double small = (rt_shardmap_shard_nslots(m, 1) + rt_shardmap_shard_nslots(m, 2) +
                    rt_shardmap_shard_nslots(m, 3)) /
                   3.0;

    (void)state;
    print_message("weighted: big %u, small %u %u %u slots of 1024\n",
                  rt_shardmap_shard_nslots(m, 0), rt_shardmap_shard_nslots(m, 1),
                  rt_shardmap_shard_nslots(m, 2), rt_shardmap_shard_nslots(m, 3));
    assert_true(big >= 1.7 * small && big <= 2.3 * small);
    rt_shardmap_unref(m);
}

/* ---- overrides ------------------------------------------------------------ */

static void test_overrides(void **state)
{
    static const struct {
        uint32_t first, last;
        const char *shard;
    } want[] = {
        /* listed out of order in the file; reported in slot order */
        {0, 99, "orders-1"},
        {100, 100, "orders-3"},
        {1000, 1999, "orders-4"},
        {4095, 4095, "orders-2"},
    };
    struct rt_shardmap *plain = load_map("shardmap_orders.json");
    struct rt_shardmap *m = load_map("shardmap_orders_overrides.json");
    uint32_t s;
    size_t i;

    (void)state;
    assert_int_equal(rt_shardmap_noverrides(m), 4);
    for (i = 0; i < 4; i++) {
        uint32_t first, last;
        int ix = rt_shardmap_override(m, i, &first, &last);

        assert_int_equal(first, want[i].first);
        assert_int_equal(last, want[i].last);
        assert_string_equal(rt_shardmap_shard_name(m, (size_t)ix), want[i].shard);
    }
    for (s = 0; s < 4096; s++) {
        const char *pinned = NULL;

        for (i = 0; i < 4; i++)
            if (s >= want[i].first && s <= want[i].last)
                pinned = want[i].shard;
        if (pinned)
            assert_string_equal(owner_name(m, s), pinned);
        else /* outside the overrides: the ring decides */
            assert_string_equal(owner_name(m, s), owner_name(plain, s));
    }
    /* a key whose slot is overridden goes to the pinned shard */
    {
        uint32_t slot;
        int ix = rt_shardmap_route(m, "customer-1001", 13, NULL, &slot);

        assert_int_equal(slot, 1884); /* orders-2 on the ring, pinned to orders-4 */
        assert_string_equal(rt_shardmap_shard_name(plain, (size_t)shard_of(plain, slot)),
                            "orders-2");
        assert_string_equal(rt_shardmap_shard_name(m, (size_t)ix), "orders-4");
    }
    rt_shardmap_unref(plain);
    rt_shardmap_unref(m);
}

/* ---- diff ----------------------------------------------------------------- */

static struct rt_slot_move *diff_ok(const struct rt_shardmap *a, const struct rt_shardmap *b,
                                    size_t *n)
{
    struct rt_slot_move *mv = NULL;
    char err[256] = "";

    if (rt_shardmap_diff(a, b, &mv, n, err, sizeof err) != 0)
        fail_msg("diff: %s", err);
    return mv;
}

static void test_diff_identical(void **state)
{
    struct rt_shardmap *a = load_map("shardmap_orders.json");
    struct rt_shardmap *r = load_map("shardmap_orders_reordered.json");
    struct rt_slot_move *mv;
    size_t n = 99;

    (void)state;
    mv = diff_ok(a, a, &n);
    assert_int_equal(n, 0);
    assert_null(mv);
    /* reordering the shard list moves nothing */
    mv = diff_ok(a, r, &n);
    assert_int_equal(n, 0);
    assert_null(mv);
    rt_shardmap_unref(a);
    rt_shardmap_unref(r);
}

static void test_diff_add_shard(void **state)
{
    struct rt_shardmap *a = load_map("shardmap_orders.json");
    struct rt_shardmap *b = load_map("shardmap_orders_5.json");
    struct rt_slot_move *mv;
    size_t n, i;

    (void)state;
    mv = diff_ok(a, b, &n);
    print_message("4 -> 5 shards: %zu of 4096 slots move (ideal %.0f)\n", n, 4096 / 5.0);
    /* exactly the slots the new shard owns, all onto it, from every old one */
    assert_int_equal(n, rt_shardmap_shard_nslots(b, 4));
    assert_true(n >= 0.9 * 4096 / 5 && n <= 1.1 * 4096 / 5);
    {
        size_t from[4] = {0};

        for (i = 0; i < n; i++) {
            int f = rt_shardmap_shard_index(a, mv[i].from);

            assert_string_equal(mv[i].to, "orders-5");
            assert_true(f >= 0 && f < 4);
            from[f]++;
            assert_string_equal(mv[i].from, owner_name(a, mv[i].slot));
            assert_string_equal(mv[i].to, owner_name(b, mv[i].slot));
            if (i > 0)
                assert_true(mv[i].slot > mv[i - 1].slot);
        }
        /* taken evenly: each old shard gives up about a quarter of them */
        for (i = 0; i < 4; i++)
            assert_true(from[i] > n / 8 && from[i] < n / 2);
    }
    free(mv);
    rt_shardmap_unref(a);
    rt_shardmap_unref(b);
}

static void test_diff_remove_shard(void **state)
{
    struct rt_shardmap *a = load_map("shardmap_orders_5.json");
    struct rt_shardmap *b = load_map("shardmap_orders.json");
    struct rt_slot_move *mv;
    size_t n, i;

    (void)state;
    mv = diff_ok(a, b, &n);
    assert_int_equal(n, rt_shardmap_shard_nslots(a, 4));
    for (i = 0; i < n; i++) {
        assert_string_equal(mv[i].from, "orders-5");
        assert_int_not_equal(rt_shardmap_shard_index(b, mv[i].to), -1);
    }
    free(mv);
    rt_shardmap_unref(a);
    rt_shardmap_unref(b);
}

static void test_diff_overrides(void **state)
{
    struct rt_shardmap *a = load_map("shardmap_orders.json");
    struct rt_shardmap *b = load_map("shardmap_orders_overrides.json");
    struct rt_slot_move *mv;
    size_t n, i, expect = 0;
    uint32_t s;

    (void)state;
    for (s = 0; s < 4096; s++)
        expect += strcmp(owner_name(a, s), owner_name(b, s)) != 0;
    mv = diff_ok(a, b, &n);
    assert_int_equal(n, expect);
    assert_true(n > 0);
    for (i = 0; i < n; i++) {
        s = mv[i].slot;
        assert_true(s <= 100 || (s >= 1000 && s <= 1999) || s == 4095);
        assert_string_equal(mv[i].from, owner_name(a, s));
        assert_string_equal(mv[i].to, owner_name(b, s));
        assert_string_not_equal(mv[i].from, mv[i].to);
    }
    free(mv);
    rt_shardmap_unref(a);
    rt_shardmap_unref(b);
}

static void test_diff_slot_count_changed(void **state)
{
    struct rt_shardmap *a = load_map("shardmap_orders.json");
    struct rt_shardmap *b = load_map("shardmap_weighted.json");
    struct rt_slot_move *mv = (struct rt_slot_move *)1;
    size_t n = 99;
    char err[256] = "";

    (void)state;
    assert_int_equal(rt_shardmap_diff(a, b, &mv, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "slot count changed (4096 -> 1024)"));
    assert_null(mv);
    assert_int_equal(n, 0);
    rt_shardmap_unref(a);
    rt_shardmap_unref(b);
}

/* ---- reference counting ----------------------------------------------------- */

#define NTHREADS 4
#define NITER 20000

static void *ref_worker(void *arg)
{
    struct rt_shardmap *m = arg;
    char key[32];
    int i;

    for (i = 0; i < NITER; i++) {
        struct rt_shardmap *mine = rt_shardmap_ref(m);
        int n = snprintf(key, sizeof key, "k%d", i);

        if (rt_shardmap_route(mine, key, (size_t)n, NULL, NULL) < 0)
            return (void *)1;
        rt_shardmap_unref(mine);
    }
    /* drop the reference the main thread took for this worker */
    rt_shardmap_unref(m);
    return NULL;
}

static void test_refcount_threads(void **state)
{
    struct rt_shardmap *m = load_map("shardmap_orders.json");
    pthread_t th[NTHREADS];
    size_t i;

    (void)state;
    assert_ptr_equal(rt_shardmap_ref(m), m);
    rt_shardmap_unref(m);
    for (i = 0; i < NTHREADS; i++) {
        rt_shardmap_ref(m);
        assert_int_equal(pthread_create(&th[i], NULL, ref_worker, m), 0);
    }
    /* the loader's reference goes first, as on a reload swap */
    rt_shardmap_unref(m);
    for (i = 0; i < NTHREADS; i++) {
        void *ret;

        assert_int_equal(pthread_join(th[i], &ret), 0);
        assert_null(ret);
    }
    /* freed by the last worker: ASan / valgrind report a leak or a use after free */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_maps),
        cmocka_unit_test(test_invalid_maps),
        cmocka_unit_test(test_null_and_errbuf),
        cmocka_unit_test(test_json_c_edges),
        cmocka_unit_test(test_route),
        cmocka_unit_test(test_single_slot),
        cmocka_unit_test(test_weighted_shares),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_diff_identical),
        cmocka_unit_test(test_diff_add_shard),
        cmocka_unit_test(test_diff_remove_shard),
        cmocka_unit_test(test_diff_overrides),
        cmocka_unit_test(test_diff_slot_count_changed),
        cmocka_unit_test(test_refcount_threads),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
