/*
 * test_sql_row.c — a result row → the item's JSON text (adapters/sql/sql_row.c),
 * for both dialects' text forms: what is already JSON is copied, booleans and
 * timestamps are converted, NULL leaves the field out, a MySQL JSON cell that
 * is not JSON becomes a string.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "adapters/ad.h"
#include "adapters/sql/sql_build.h"
#include "adapters/sql/sql_row.h"
#include "config/cf_config.h"
#include "tests/unit/unit_config.h"

static const char config_json[] =
    "{\"backends\":{\"p\":{\"type\":\"pg\",\"shards\":[{\"name\":\"p\",\"dsn\":\"host=x\"}]}},"
    "\"domains\":{\"d\":{\"backend\":\"p\",\"table\":\"d\",\"key\":\"id\",\"fields\":{"
    "\"id\":\"string\",\"n\":\"int\",\"amt\":{\"type\":\"decimal\",\"scale\":2},"
    "\"ok\":\"bool\",\"at\":\"timestamp\",\"meta\":\"object\",\"tags\":\"array\"}}}}";

static struct cf_config *cf;

static int setup(void **state)
{
    (void)state;
    cf = unit_config(config_json);
    return cf != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    cf_config_unref(cf);
    return 0;
}

/* The row written for the GET statement's columns (id n amt ok at meta tags version). */
static void check(enum sql_dialect dialect, const char *const *vals, const char *want,
                  int64_t want_version)
{
    const struct cf_domain *d = cf_domain_find(cf, "d", 1);
    struct sql_stmt st;
    char err[128];
    sql_stmt_init(&st, dialect);
    assert_int_equal(sql_build_get(&st, d, "k", err, sizeof(err)), 0);
    assert_int_equal(st.ncols, 8);
    unsigned long lens[8];
    for (size_t i = 0; i < 8; i++) {
        lens[i] = vals[i] != NULL ? (unsigned long)strlen(vals[i]) : 0;
    }
    struct evbuffer *out = evbuffer_new();
    int64_t version = -1;
    sql_row_write(out, &st, vals, lens, 8, &version);
    size_t n = evbuffer_get_length(out);
    char *text = (char *)evbuffer_pullup(out, -1);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(text, want, n);
    assert_int_equal(version, want_version);
    /* and it is JSON */
    struct json_object *o = json_tokener_parse(want);
    assert_non_null(o);
    json_object_put(o);
    evbuffer_free(out);
    sql_stmt_free(&st);
}

static void test_postgres_text_forms(void **state)
{
    (void)state;
    const char *const vals[] = {
        "a\"b", "-12", "10.50", "t", "2026-01-31 12:00:00.5+00", "{\"k\": [1, 2]}", "[]", "3"};
    check(SQL_PG, vals,
          "{\"id\":\"a\\\"b\",\"n\":-12,\"amt\":10.50,\"ok\":true,\"at\":\"2026-01-31T12:00:00."
          "500000Z\","
          "\"meta\":{\"k\": [1, 2]},\"tags\":[],\"version\":3}",
          3);
}

static void test_mysql_text_forms(void **state)
{
    (void)state;
    const char *const vals[] = {"x",         "7",        "0.05", "0", "2026-01-31 10:00:00.500000",
                                "{\"k\":1}", "not json", "12"};
    check(SQL_MYSQL, vals,
          "{\"id\":\"x\",\"n\":7,\"amt\":0.05,\"ok\":false,\"at\":\"2026-01-31T10:00:00.500000Z\","
          "\"meta\":{\"k\":1},\"tags\":\"not json\",\"version\":12}",
          12);
}

static void test_null_leaves_the_field_out(void **state)
{
    (void)state;
    const char *const vals[] = {"x",  NULL, NULL, "1", "2026-01-31 10:00:00.000000",
                                NULL, NULL, "1"};
    check(SQL_MYSQL, vals,
          "{\"id\":\"x\",\"ok\":true,\"at\":\"2026-01-31T10:00:00.000000Z\",\"version\":1}", 1);
}

/* Every timestamp comes out with exactly six fraction digits, whatever
 * the store printed: PostgreSQL trims trailing zeros ("….3+00") and drops
 * a zero fraction, MySQL prints the column's precision.  Trimmed text did
 * not sort in time order ("….3Z" after "….212Z"). */
static void test_timestamps(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"2026-01-31 10:00:00.500000", "2026-01-31T10:00:00.500000Z"},
        {"2026-01-31 10:00:00.000000", "2026-01-31T10:00:00.000000Z"},
        {"2026-01-31 10:00:00", "2026-01-31T10:00:00.000000Z"},
        {"2026-01-31 10:00:00.123456+00", "2026-01-31T10:00:00.123456Z"},
        {"2026-01-31 10:00:00+00", "2026-01-31T10:00:00.000000Z"},
        {"2026-01-31 00:08:02.3+00", "2026-01-31T00:08:02.300000Z"},
        {"2026-01-31 00:08:02.212+00", "2026-01-31T00:08:02.212000Z"},
        {"2026-01-31 10:00:00.500", "2026-01-31T10:00:00.500000Z"},     /* DATETIME(3) */
        {"2026-01-31 10:00:00.1234567", "2026-01-31T10:00:00.123456Z"}, /* never wider */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[64];
        size_t n = sql_ts_rfc3339(cases[i][0], strlen(cases[i][0]), buf, sizeof(buf));
        assert_string_equal(buf, cases[i][1]);
        assert_int_equal(n, strlen(cases[i][1]));
    }
    /* the text of one instant sorts before the text of a later one */
    char a[64], b[64];
    sql_ts_rfc3339("2026-01-31 00:08:02.3+00", 24, a, sizeof(a));
    sql_ts_rfc3339("2026-01-31 00:08:02.212+00", 26, b, sizeof(b));
    assert_true(strcmp(b, a) < 0);
    char small[16]; /* never past the buffer */
    assert_int_equal(sql_ts_rfc3339("2026-01-31 10:00:00", 19, small, sizeof(small)), 15);
    assert_string_equal(small, "2026-01.000000Z");
    char tiny[8];
    assert_int_equal(sql_ts_rfc3339("2026-01-31 10:00:00", 19, tiny, sizeof(tiny)), 0);
    assert_string_equal(tiny, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_postgres_text_forms),
        cmocka_unit_test(test_mysql_text_forms),
        cmocka_unit_test(test_null_leaves_the_field_out),
        cmocka_unit_test(test_timestamps),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
