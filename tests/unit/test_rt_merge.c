/*
 * test_rt_merge.c — scatter-gather merging (routing/rt_merge.h).
 *
 * Table-driven: each case is a fake set of shard results (JSON text, one
 * array per shard, null for a shard that failed) and the merged result it
 * must give.  A randomised case checks the heap merge against a plain sort
 * of everything.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "routing/rt_merge.h"

static struct json_object *parse(const char *text)
{
    struct json_object *o = json_tokener_parse(text);
    if (o == NULL && strcmp(text, "null") != 0) {
        fail_msg("bad test JSON: %s", text);
    }
    return o;
}

/* The shards of a case: a JSON array whose members are item arrays or null. */
static size_t shards_of(struct json_object *doc, struct json_object **lists, size_t max)
{
    size_t n = json_object_array_length(doc);
    assert_true(n <= max);
    for (size_t i = 0; i < n; i++) {
        lists[i] = json_object_array_get_idx(doc, i);
    }
    return n;
}

static void assert_json_equal(struct json_object *got, const char *want_text, const char *name)
{
    struct json_object *want = parse(want_text);
    const char *g = json_object_to_json_string_ext(got, JSON_C_TO_STRING_PLAIN);
    const char *w = json_object_to_json_string_ext(want, JSON_C_TO_STRING_PLAIN);
    if (strcmp(g, w) != 0) {
        fail_msg("%s:\n  got  %s\n  want %s", name, g, w);
    }
    json_object_put(want);
}

/* ---- value order ------------------------------------------------------------------ */

static void test_value_cmp(void **state)
{
    (void)state;
    static const struct {
        enum rt_vtype t;
        const char *a, *b; /* JSON texts; "null" = NULL */
        int want;          /* sign */
    } cases[] = {
        {RT_V_INT, "1", "2", -1},
        {RT_V_INT, "-5", "-5", 0},
        {RT_V_INT, "9223372036854775807", "-9223372036854775808", 1},
        {RT_V_INT, "null", "3", 1}, /* NULL after every value */
        {RT_V_INT, "3", "null", -1},
        {RT_V_INT, "null", "null", 0},
        {RT_V_DECIMAL, "10.5", "9.75", 1},  /* numerically, not by text */
        {RT_V_DECIMAL, "12.30", "12.3", 0}, /* scale does not matter */
        {RT_V_DECIMAL, "-0.01", "0", -1},
        {RT_V_DECIMAL, "100", "99.99", 1},
        {RT_V_DECIMAL, "123456789012345678901234567890.12", "123456789012345678901234567890.11", 1},
        {RT_V_TIMESTAMP, "\"2026-01-01T00:00:00Z\"", "\"2026-01-01T00:00:00.5Z\"", -1},
        {RT_V_TIMESTAMP, "\"2026-01-01T00:00:00.5Z\"", "\"2026-01-01T00:00:00.500Z\"", 0},
        {RT_V_TIMESTAMP, "\"2026-01-01T00:00:00.123456Z\"", "\"2026-01-01T00:00:00.12Z\"", 1},
        {RT_V_TIMESTAMP, "\"2025-12-31T23:59:59.999Z\"", "\"2026-01-01T00:00:00Z\"", -1},
        {RT_V_STRING, "\"B\"", "\"a\"", -1}, /* bytes: code points, not a locale */
        {RT_V_STRING, "\"ab\"", "\"abc\"", -1},
        {RT_V_STRING, "\"\\u00e9\"", "\"z\"", 1}, /* é (U+00E9) after z */
        {RT_V_BOOL, "false", "true", -1},
        {RT_V_BOOL, "true", "null", -1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct json_object *a = parse(cases[i].a), *b = parse(cases[i].b);
        int c = rt_value_cmp(cases[i].t, a, b);
        int sign = (c > 0) - (c < 0);
        if (sign != cases[i].want) {
            fail_msg("case %zu: cmp(%s, %s) = %d, want %d", i, cases[i].a, cases[i].b, c,
                     cases[i].want);
        }
        json_object_put(a);
        json_object_put(b);
    }
}

/* ---- exact decimals --------------------------------------------------------------- */

static void test_decimals(void **state)
{
    (void)state;
    static const struct {
        const char *a, *b, *sum;
    } adds[] = {
        {"0.10", "0.20", "0.30"}, /* a double would say 0.30000000000000004 */
        {"12.30", "7", "19.30"},
        {"-5.5", "5.50", "0.00"},
        {"99999999999999999999999999999999.99", "0.01", "100000000000000000000000000000000.00"},
        {"1.005", "-2", "-0.995"},
    };
    char out[80];
    for (size_t i = 0; i < sizeof(adds) / sizeof(adds[0]); i++) {
        assert_int_equal(rt_dec_add(adds[i].a, adds[i].b, out, sizeof(out)), 0);
        if (strcmp(out, adds[i].sum) != 0) {
            fail_msg("%s + %s = %s, want %s", adds[i].a, adds[i].b, out, adds[i].sum);
        }
    }
    assert_int_equal(rt_dec_add("1e5", "1", out, sizeof(out)), -1);
    assert_int_equal(rt_dec_add("abc", "1", out, sizeof(out)), -1);
    /* 37 digits + 2 more after the point: beyond 38 digits */
    assert_int_equal(rt_dec_add("9999999999999999999999999999999999999", "0.01", out, sizeof(out)),
                     -1);

    static const struct {
        const char *a;
        int64_t n;
        int scale, min_scale;
        const char *q;
    } divs[] = {
        {"10", 3, 16, 0, "3.3333333333333333"},
        {"20", 3, 16, 0, "6.6666666666666667"}, /* half away from zero */
        {"-20", 3, 16, 0, "-6.6666666666666667"},
        {"21.00", 2, 16, 2, "10.50"},
        {"10", 4, 16, 0, "2.5"},
        {"12.30", 1, 16, 2, "12.30"},
        {"0.05", 2, 1, 0, "0.03"}, /* never fewer digits than the dividend */
        {"0.15", 2, 2, 0, "0.08"},
    };
    for (size_t i = 0; i < sizeof(divs) / sizeof(divs[0]); i++) {
        assert_int_equal(
            rt_dec_div(divs[i].a, divs[i].n, divs[i].scale, divs[i].min_scale, out, sizeof(out)),
            0);
        if (strcmp(out, divs[i].q) != 0) {
            fail_msg("%s / %lld = %s, want %s", divs[i].a, (long long)divs[i].n, out, divs[i].q);
        }
    }
    assert_int_equal(rt_dec_div("1", 0, 16, 0, out, sizeof(out)), -1);
}

/* ---- k-way merge --------------------------------------------------------------------- */

static const struct rt_sort_key by_created_desc[] = {
    {"created_at", RT_V_TIMESTAMP, 1},
    {"id", RT_V_STRING, 0},
};
static const struct rt_sort_key by_total_asc[] = {
    {"total", RT_V_DECIMAL, 0},
    {"id", RT_V_STRING, 0},
};

static void test_merge_sorted_table(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const struct rt_sort_key *keys;
        size_t nkeys;
        size_t limit;
        const char *shards;
        const char *want_ids; /* JSON array of ids, in order */
        int want_more;
    } cases[] = {
        {"newest first over three shards", by_created_desc, 2, 10,
         "[[{\"id\":\"a\",\"created_at\":\"2026-01-03T00:00:00Z\"},"
         "  {\"id\":\"b\",\"created_at\":\"2026-01-01T00:00:00Z\"}],"
         " [{\"id\":\"c\",\"created_at\":\"2026-01-02T00:00:00.5Z\"}],"
         " [{\"id\":\"d\",\"created_at\":\"2026-01-02T00:00:00Z\"}]]",
         "[\"a\",\"c\",\"d\",\"b\"]", 0},
        {"limit cuts, more reported", by_created_desc, 2, 2,
         "[[{\"id\":\"a\",\"created_at\":\"2026-01-03T00:00:00Z\"},"
         "  {\"id\":\"b\",\"created_at\":\"2026-01-01T00:00:00Z\"}],"
         " [{\"id\":\"c\",\"created_at\":\"2026-01-02T00:00:00Z\"}]]",
         "[\"a\",\"c\"]", 1},
        {"ties broken by the key", by_created_desc, 2, 10,
         "[[{\"id\":\"y\",\"created_at\":\"2026-01-01T00:00:00Z\"}],"
         " [{\"id\":\"x\",\"created_at\":\"2026-01-01T00:00:00Z\"}],"
         " [{\"id\":\"z\",\"created_at\":\"2026-01-01T00:00:00Z\"}]]",
         "[\"x\",\"y\",\"z\"]", 0},
        {"NULL first when descending", by_created_desc, 2, 10,
         "[[{\"id\":\"a\",\"created_at\":\"2026-01-01T00:00:00Z\"}], [{\"id\":\"n\"}]]",
         "[\"n\",\"a\"]", 0},
        {"decimals numerically, NULL last ascending", by_total_asc, 2, 10,
         "[[{\"id\":\"p\",\"total\":9.99},{\"id\":\"q\",\"total\":100.00},{\"id\":\"r\"}],"
         " [{\"id\":\"s\",\"total\":10.5}], [], null]",
         "[\"p\",\"s\",\"q\",\"r\"]", 0},
        {"failed and empty shards only", by_total_asc, 2, 10, "[null, [], null]", "[]", 0},
        {"exact limit is not more", by_total_asc, 2, 2,
         "[[{\"id\":\"a\",\"total\":1}], [{\"id\":\"b\",\"total\":2}]]", "[\"a\",\"b\"]", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct json_object *doc = parse(cases[i].shards);
        struct json_object *lists[8];
        size_t n = shards_of(doc, lists, 8);
        struct json_object *out = json_object_new_array();
        int more = -1;
        size_t got =
            rt_merge_sorted(lists, n, cases[i].keys, cases[i].nkeys, cases[i].limit, out, &more);
        struct json_object *ids = json_object_new_array();
        for (size_t k = 0; k < json_object_array_length(out); k++) {
            json_object_array_add(ids, json_object_get(json_object_object_get(
                                           json_object_array_get_idx(out, k), "id")));
        }
        assert_int_equal(got, json_object_array_length(out));
        assert_json_equal(ids, cases[i].want_ids, cases[i].name);
        if (more != cases[i].want_more) {
            fail_msg("%s: more = %d, want %d", cases[i].name, more, cases[i].want_more);
        }
        json_object_put(ids);
        json_object_put(out);
        json_object_put(doc);
    }
}

static int cmp_ref(const void *a, const void *b)
{
    const int64_t *x = a, *y = b; /* {value, id}: value desc, id asc */
    if (x[0] != y[0]) {
        return x[0] > y[0] ? -1 : 1;
    }
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

static int cmp_shard_item(const void *a, const void *b)
{
    return cmp_ref(a, b);
}

/* Random items on 5 shards: the merge equals one sort of everything, for
 * every limit. */
static void test_merge_sorted_random(void **state)
{
    (void)state;
    static const struct rt_sort_key keys[] = {{"v", RT_V_INT, 1}, {"id", RT_V_STRING, 0}};
    srand(12345);
    for (int round = 0; round < 50; round++) {
        enum { NS = 5, MAXN = 60 };
        int64_t all[NS * MAXN][2];
        size_t nall = 0;
        struct json_object *lists[NS];
        for (int s = 0; s < NS; s++) {
            int n = rand() % MAXN;
            int64_t mine[MAXN][2];
            for (int k = 0; k < n; k++) {
                mine[k][0] = rand() % 20; /* many ties */
                mine[k][1] = (int64_t)(nall + (size_t)k);
            }
            qsort(mine, (size_t)n, sizeof(mine[0]), cmp_shard_item);
            lists[s] = json_object_new_array();
            for (int k = 0; k < n; k++) {
                char id[16];
                snprintf(id, sizeof(id), "%06lld", (long long)mine[k][1]);
                struct json_object *it = json_object_new_object();
                json_object_object_add(it, "v", json_object_new_int64(mine[k][0]));
                json_object_object_add(it, "id", json_object_new_string(id));
                json_object_array_add(lists[s], it);
                all[nall][0] = mine[k][0];
                all[nall][1] = mine[k][1];
                nall++;
            }
        }
        qsort(all, nall, sizeof(all[0]), cmp_ref);
        size_t limit = (size_t)(rand() % (int)(nall + 3)) + 1;
        struct json_object *out = json_object_new_array();
        int more;
        size_t got = rt_merge_sorted(lists, NS, keys, 2, limit, out, &more);
        size_t want = limit < nall ? limit : nall;
        assert_int_equal(got, want);
        assert_int_equal(more, limit < nall);
        for (size_t k = 0; k < got; k++) {
            struct json_object *it = json_object_array_get_idx(out, k);
            assert_int_equal(json_object_get_int64(json_object_object_get(it, "v")), all[k][0]);
            assert_int_equal(atoll(json_object_get_string(json_object_object_get(it, "id"))),
                             all[k][1]);
        }
        json_object_put(out);
        for (int s = 0; s < NS; s++) {
            json_object_put(lists[s]);
        }
    }
}

/* ---- aggregates ------------------------------------------------------------------------ */

static const struct rt_group_key by_status[] = {{"status", RT_V_STRING}};
static const struct rt_agg revenue[] = {
    {"n", RT_AGG_COUNT, RT_V_INT, "p0", NULL},      {"total", RT_AGG_SUM, RT_V_DECIMAL, "p1", NULL},
    {"lo", RT_AGG_MIN, RT_V_DECIMAL, "p2", NULL},   {"hi", RT_AGG_MAX, RT_V_DECIMAL, "p3", NULL},
    {"mean", RT_AGG_AVG, RT_V_DECIMAL, "p4", "p5"},
};
static const struct rt_agg first_last[] = {
    {"first", RT_AGG_MIN, RT_V_TIMESTAMP, "p0", NULL},
    {"last", RT_AGG_MAX, RT_V_TIMESTAMP, "p1", NULL},
    {"n", RT_AGG_COUNT, RT_V_INT, "p2", NULL},
};

static void test_merge_aggregates_table(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const struct rt_group_key *groups;
        size_t ngroups;
        const struct rt_agg *aggs;
        size_t naggs;
        size_t limit;
        const char *shards;
        const char *want;
    } cases[] = {
        {"group_by status, exact sums and avg", by_status, 1, revenue, 5, 0,
         "[[{\"status\":\"PENDING\",\"p0\":2,\"p1\":0.30,\"p2\":0.10,\"p3\":0.20,\"p4\":0.30,"
         "\"p5\":2},"
         "  {\"status\":\"SHIPPED\",\"p0\":1,\"p1\":5.00,\"p2\":5.00,\"p3\":5.00,\"p4\":5.00,"
         "\"p5\":1}],"
         " [{\"status\":\"PENDING\",\"p0\":1,\"p1\":0.10,\"p2\":0.10,\"p3\":0.10,\"p4\":0.10,"
         "\"p5\":1}],"
         " [{\"status\":\"DELIVERED\",\"p0\":3,\"p1\":10.00,\"p2\":1.00,\"p3\":7.00,\"p4\":10.00,"
         "\"p5\":3}]]",
         "[{\"status\":\"DELIVERED\",\"n\":3,\"total\":10.00,\"lo\":1.00,\"hi\":7.00,"
         "\"mean\":3.3333333333333333},"
         " {\"status\":\"PENDING\",\"n\":3,\"total\":0.40,\"lo\":0.10,\"hi\":0.20,\"mean\":0."
         "1333333333333333},"
         " {\"status\":\"SHIPPED\",\"n\":1,\"total\":5.00,\"lo\":5.00,\"hi\":5.00,\"mean\":5.00}]"},
        {"no group_by: one row, empty shards count 0", NULL, 0, revenue, 5, 0,
         "[[{\"p0\":0,\"p1\":null,\"p2\":null,\"p3\":null,\"p4\":null,\"p5\":0}],"
         " [{\"p0\":2,\"p1\":21.00,\"p2\":10.00,\"p3\":11.00,\"p4\":21.00,\"p5\":2}], null]",
         "[{\"n\":2,\"total\":21.00,\"lo\":10.00,\"hi\":11.00,\"mean\":10.50}]"},
        {"no group_by and no shard answered", NULL, 0, revenue, 5, 0, "[null, null]",
         "[{\"n\":0,\"total\":null,\"lo\":null,\"hi\":null,\"mean\":null}]"},
        {"group limit after the merge; NULL group last", by_status, 1, revenue + 0, 1, 2,
         "[[{\"p0\":4},{\"status\":\"B\",\"p0\":1}], [{\"status\":\"A\",\"p0\":2},"
         "{\"status\":\"C\",\"p0\":7}]]",
         "[{\"status\":\"A\",\"n\":2},{\"status\":\"B\",\"n\":1}]"},
        {"NULL group kept as a group", by_status, 1, revenue + 0, 1, 0,
         "[[{\"p0\":4}], [{\"status\":null,\"p0\":2}]]", "[{\"n\":6}]"},
        {"min/max of timestamps by time, not text", NULL, 0, first_last, 3, 0,
         "[[{\"p0\":\"2026-01-01T00:00:00.5Z\",\"p1\":\"2026-01-01T00:00:00.5Z\",\"p2\":1}],"
         " [{\"p0\":\"2026-01-01T00:00:00Z\",\"p1\":\"2026-01-01T00:00:00Z\",\"p2\":1}]]",
         "[{\"first\":\"2026-01-01T00:00:00Z\",\"last\":\"2026-01-01T00:00:00.5Z\",\"n\":2}]"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct json_object *doc = parse(cases[i].shards);
        struct json_object *lists[8];
        size_t n = shards_of(doc, lists, 8);
        struct json_object *out = json_object_new_array();
        char err[200] = "";
        long got = rt_merge_aggregates(lists, n, cases[i].groups, cases[i].ngroups, cases[i].aggs,
                                       cases[i].naggs, cases[i].limit, out, err, sizeof(err));
        if (got < 0) {
            fail_msg("%s: %s", cases[i].name, err);
        }
        assert_int_equal((size_t)got, json_object_array_length(out));
        assert_json_equal(out, cases[i].want, cases[i].name);
        json_object_put(out);
        json_object_put(doc);
    }
}

static void test_merge_aggregates_errors(void **state)
{
    (void)state;
    static const struct rt_agg sum[] = {{"s", RT_AGG_SUM, RT_V_DECIMAL, "p0", NULL}};
    static const char *const bad[] = {
        "[[{\"p0\":\"12,5\"}]]",
        "[[{\"p0\":999999999999999999999999999999999999.9}],[{\"p0\":0.001}]]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct json_object *doc = json_tokener_parse(bad[i]);
        struct json_object *lists[4];
        size_t n = shards_of(doc, lists, 4);
        struct json_object *out = json_object_new_array();
        char err[200] = "";
        assert_int_equal(rt_merge_aggregates(lists, n, NULL, 0, sum, 1, 0, out, err, sizeof(err)),
                         -1);
        assert_true(err[0] != '\0');
        json_object_put(out);
        json_object_put(doc);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_value_cmp),
        cmocka_unit_test(test_decimals),
        cmocka_unit_test(test_merge_sorted_table),
        cmocka_unit_test(test_merge_sorted_random),
        cmocka_unit_test(test_merge_aggregates_table),
        cmocka_unit_test(test_merge_aggregates_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
