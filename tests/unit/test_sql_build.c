/*
 * test_sql_build.c — the filter AST → parameterised SQL, table-driven.
 *
 * Each row: a _query/_aggregate body, the dialect, the exact SQL text and
 * the parameters joined by '|' (NULL shown as ~).  The domain comes through
 * the config loader, the body through md_query_parse — the gateway's path.
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

#include "adapters/ad.h"
#include "adapters/sql/sql_build.h"
#include "config/cf_config.h"
#include "model/md_query.h"
#include "tests/unit/unit_config.h"

static const char config_json[] =
    "{\"backends\":{\"p\":{\"type\":\"pg\",\"shards\":[{\"name\":\"p\",\"dsn\":\"host=x\"}]},"
    "\"m\":{\"type\":\"mysql\",\"shards\":[{\"name\":\"m\",\"dsn\":\"mysql://root@127.0.0.1/"
    "d\"}]}},"
    "\"domains\":{\"users\":{\"backend\":\"p\",\"table\":\"users\",\"key\":\"id\",\"fields\":{"
    "\"id\":\"string\",\"email\":{\"type\":\"string\",\"required\":true,\"unique\":true},"
    "\"name\":\"string\",\"age\":\"int\",\"bal\":{\"type\":\"decimal\",\"scale\":2},"
    "\"at\":\"timestamp\",\"ok\":\"bool\",\"meta\":\"object\"}},"
    /* domains[1]: a sharded MySQL domain (the `_slot` column) */
    "\"orders\":{\"backend\":\"m\",\"table\":\"orders\",\"key\":\"order_id\","
    "\"shard_key\":\"customer_id\",\"fields\":{\"order_id\":\"string\","
    "\"customer_id\":{\"type\":\"string\",\"required\":true,\"index\":true},"
    "\"status\":{\"type\":\"enum\",\"values\":[\"PENDING\",\"CANCELLED\"]},"
    "\"total\":{\"type\":\"decimal\",\"scale\":2},\"n\":\"int\",\"items\":\"array\","
    "\"note\":\"string\",\"code\":{\"type\":\"string\",\"unique\":true,\"max_len\":40},"
    "\"created_at\":{\"type\":\"timestamp\",\"auto\":\"created\"}}}}}";

static struct cf_config *cf;

struct row {
    const char *name;
    enum sql_dialect dialect;
    int aggregate;
    const char *body;
    const char *sql;
    const char *params;
};

#define SEL_ALL                                                                                    \
    "SELECT \"id\", \"email\", \"name\", \"age\", \"bal\", \"at\", \"ok\", \"meta\", \"version\" " \
    "FROM \"users\""

static const struct row rows[] = {
    {"empty", SQL_PG, 0, "{}", SEL_ALL " ORDER BY \"id\" ASC NULLS LAST LIMIT $1", "101"},
    {"empty where", SQL_PG, 0, "{\"where\":{}}",
     SEL_ALL " WHERE 1=1 ORDER BY \"id\" ASC NULLS LAST LIMIT $1", "101"},
    {"implicit eq", SQL_PG, 0, "{\"where\":{\"email\":\"a@b\"},\"limit\":5}",
     SEL_ALL " WHERE \"email\" = $1 ORDER BY \"id\" ASC NULLS LAST LIMIT $2", "a@b|6"},
    {"ops and", SQL_PG, 0, "{\"where\":{\"age\":{\"gte\":18,\"lt\":65}}}",
     SEL_ALL " WHERE (\"age\" >= $1 AND \"age\" < $2) ORDER BY \"id\" ASC NULLS LAST LIMIT $3",
     "18|65|101"},
    {"or in nin", SQL_PG, 0,
     "{\"where\":{\"or\":[{\"name\":{\"in\":[\"a\",\"b\"]}},{\"name\":{\"nin\":[\"c\"]}}]}}",
     SEL_ALL " WHERE (\"name\" IN ($1, $2) OR (\"name\" IS NULL OR \"name\" NOT IN ($3))) ORDER "
             "BY \"id\" ASC NULLS LAST LIMIT $4",
     "a|b|c|101"},
    {"ne null exists", SQL_PG, 0,
     "{\"where\":{\"name\":{\"ne\":\"x\"},\"age\":null,\"bal\":{\"exists\":true}}}",
     SEL_ALL " WHERE (\"name\" IS DISTINCT FROM $1 AND \"age\" IS NULL AND \"bal\" IS NOT NULL) "
             "ORDER BY \"id\" ASC NULLS LAST LIMIT $2",
     "x|101"},
    {"prefix escapes", SQL_PG, 0, "{\"where\":{\"name\":{\"prefix\":\"a%_\\\\b\"}}}",
     SEL_ALL " WHERE \"name\" LIKE $1 ESCAPE '\\' ORDER BY \"id\" ASC NULLS LAST LIMIT $2",
     "a\\%\\_\\\\b%|101"},
    {"injection is a value", SQL_PG, 0, "{\"where\":{\"name\":\"'; DROP TABLE users; --\"}}",
     SEL_ALL " WHERE \"name\" = $1 ORDER BY \"id\" ASC NULLS LAST LIMIT $2",
     "'; DROP TABLE users; --|101"},
    {"decimal timestamp bool", SQL_PG, 0,
     "{\"where\":{\"bal\":{\"gt\":\"10.50\"},\"at\":{\"lt\":\"2026-01-01T01:00:00+01:00\"},"
     "\"ok\":true}}",
     SEL_ALL " WHERE (\"bal\" > $1 AND \"at\" < $2 AND \"ok\" = $3) ORDER BY \"id\" ASC NULLS "
             "LAST LIMIT $4",
     "10.50|2026-01-01T00:00:00.000000Z|true|101"},
    /* a path into a document: a jsonpath and vars, both parameters */
    {"dotted path", SQL_PG, 0, "{\"where\":{\"meta.a.b\":7}}",
     SEL_ALL " WHERE COALESCE(jsonb_path_exists(\"meta\", $1::jsonpath, $2::jsonb), false) "
             "ORDER BY \"id\" ASC NULLS LAST LIMIT $3",
     "$.\"a\".\"b\" ? (@ == $v)|{\"v\":7}|101"},
    {"dotted ne null quote", SQL_PG, 0,
     "{\"where\":{\"meta.k\\\"\":{\"ne\":\"v\"},\"meta.z\":null}}",
     SEL_ALL " WHERE (NOT COALESCE(jsonb_path_exists(\"meta\", $1::jsonpath, $2::jsonb), false) "
             "AND NOT COALESCE(jsonb_path_exists(\"meta\", $3::jsonpath), false)) ORDER BY "
             "\"id\" ASC NULLS LAST LIMIT $4",
     "$.\"k\\\"\" ? (@ == $v)|{\"v\":\"v\"}|$.\"z\" ? (@ != null)|101"},
    {"order projection", SQL_PG, 0, "{\"order_by\":[\"-age\"],\"fields\":[\"email\"]}",
     "SELECT \"email\", \"id\", \"version\", \"age\" FROM \"users\" ORDER BY \"age\" DESC NULLS "
     "FIRST, \"id\" ASC NULLS LAST LIMIT $1",
     "101"},
    {"mysql", SQL_MYSQL, 0,
     "{\"where\":{\"name\":{\"prefix\":\"a\"},\"at\":{\"gte\":\"2026-01-01T00:00:00.5Z\"}},"
     "\"order_by\":[\"-age\"],\"fields\":[\"id\"]}",
     "SELECT `id`, `version`, `age` FROM `users` WHERE (`name` LIKE ? ESCAPE '\\\\' AND `at` >= "
     "?) ORDER BY `age` IS NULL DESC, `age` DESC, `id` IS NULL, `id` ASC LIMIT 101",
     "a%|2026-01-01 00:00:00.500000"},
    /* MariaDB: EXISTS over JSON_TABLE, typed comparisons, paths as parameters */
    {"mysql dotted ne", SQL_MYSQL, 0, "{\"where\":{\"meta.k\\\"\":{\"ne\":\"v\"}}}",
     "SELECT `id`, `email`, `name`, `age`, `bal`, `at`, `ok`, `meta`, `version` FROM `users` "
     "WHERE NOT EXISTS (SELECT 1 FROM JSON_TABLE(`meta`, ? COLUMNS (`_pgv` JSON PATH ?)) AS "
     "`_pgjt` WHERE (JSON_TYPE(`_pgjt`.`_pgv`) = 'STRING' AND CAST(JSON_UNQUOTE(`_pgjt`.`_pgv`) "
     "AS BINARY) = CAST(? AS BINARY))) ORDER BY `id` IS NULL, `id` ASC LIMIT 101",
     "$|$.\"k\\\"\"|v"},
    /* numbers are cast: a quoted literal would be compared as a double */
    {"mysql exact numbers", SQL_MYSQL, 0,
     "{\"where\":{\"age\":{\"in\":[1,2]},\"bal\":{\"gte\":\"10.05\"},\"ok\":false},\"limit\":5,"
     "\"fields\":[\"id\"]}",
     "SELECT `id`, `version` FROM `users` WHERE (`age` IN (CAST(? AS SIGNED), CAST(? AS SIGNED)) "
     "AND "
     "`bal` >= CAST(? AS DECIMAL(65,29)) AND `ok` = ?) ORDER BY `id` IS NULL, `id` ASC LIMIT 6",
     "1|2|10.05|0"},
    {"mysql aggregate", SQL_MYSQL, 1,
     "{\"where\":{\"name\":{\"ne\":\"x\"}},\"group_by\":[\"name\"],\"aggregates\":{\"s\":{"
     "\"sum\":\"bal\"}},\"limit\":10}",
     "SELECT `name`, SUM(`bal`) FROM `users` WHERE NOT (`name` <=> ?) GROUP BY `name` ORDER BY "
     "`name` IS NULL, `name` ASC LIMIT 10",
     "x"},
    {"aggregate", SQL_PG, 1,
     "{\"where\":{\"age\":{\"gt\":1}},\"group_by\":[\"name\"],\"aggregates\":{\"n\":{\"count\":"
     "\"*\"},\"s\":{\"sum\":\"bal\"},\"m\":{\"avg\":\"age\"}}}",
     "SELECT \"name\", COUNT(*), SUM(\"bal\"), AVG(\"age\") FROM \"users\" WHERE \"age\" > $1 "
     "GROUP BY \"name\" ORDER BY \"name\" ASC NULLS LAST LIMIT $2",
     "1|1000"},
    {"aggregate no group", SQL_MYSQL, 1, "{\"aggregates\":{\"lo\":{\"min\":\"at\"}}}",
     "SELECT MIN(`at`) FROM `users`", ""},
};

/* domains[1]: orders on MariaDB / PostgreSQL, with the array field `items` */
static const struct row orders_rows[] = {
    {"mysql array path", SQL_MYSQL, 0,
     "{\"where\":{\"items.p\":{\"in\":[\"a\",2]},\"items.q\":{\"gte\":1.5}},"
     "\"fields\":[\"order_id\"]}",
     "SELECT `order_id`, `version` FROM `orders` WHERE (EXISTS (SELECT 1 FROM JSON_TABLE("
     "`items`, ? COLUMNS (`_pgv` JSON PATH ?)) AS `_pgjt` WHERE ((JSON_TYPE(`_pgjt`.`_pgv`) = "
     "'STRING' AND CAST(JSON_UNQUOTE(`_pgjt`.`_pgv`) AS BINARY) = CAST(? AS BINARY)) OR "
     "(JSON_TYPE(`_pgjt`.`_pgv`) IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL') AND "
     "CAST(`_pgjt`.`_pgv` AS DECIMAL(65,30)) = CAST(? AS DECIMAL(65,30))))) AND EXISTS (SELECT "
     "1 FROM JSON_TABLE(`items`, ? COLUMNS (`_pgv` JSON PATH ?)) AS `_pgjt` WHERE "
     "(JSON_TYPE(`_pgjt`.`_pgv`) IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL') AND "
     "CAST(`_pgjt`.`_pgv` AS DECIMAL(65,30)) >= CAST(? AS DECIMAL(65,30))))) ORDER BY "
     "`order_id` IS NULL, `order_id` ASC LIMIT 101",
     "$[*]|$.\"p\"|a|2|$[*]|$.\"q\"|1.5"},
    {"mysql whole document", SQL_MYSQL, 0,
     "{\"where\":{\"items\":[1],\"or\":[{\"items\":{\"ne\":[]}}]},\"fields\":[\"order_id\"]}",
     "SELECT `order_id`, `version` FROM `orders` WHERE (COALESCE(JSON_EQUALS(`items`, ?), 0) = 1 "
     "AND (COALESCE(JSON_EQUALS(`items`, ?), 0) = 0)) ORDER BY `order_id` IS NULL, `order_id` ASC "
     "LIMIT 101",
     "[1]|[]"},
    {"pg array in", SQL_PG, 0,
     "{\"where\":{\"items\":{\"nin\":[\"x\"]},\"items.p\":{\"prefix\":\"S\"}},"
     "\"fields\":[\"order_id\"]}",
     "SELECT \"order_id\", \"version\" FROM \"orders\" WHERE (NOT COALESCE(jsonb_path_exists("
     "\"items\", $1::jsonpath, $2::jsonb), false) AND COALESCE(jsonb_path_exists(\"items\", "
     "$3::jsonpath, $4::jsonb), false)) ORDER BY \"order_id\" ASC NULLS LAST LIMIT $5",
     "$ ? (@ == $v)|{\"v\":[\"x\"]}|$.\"p\" ? (@ starts with $v)|{\"v\":\"S\"}|101"},
};

static char *join_params(const struct sql_stmt *st)
{
    static char buf[4096];
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < st->nparams; i++) {
        o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%s", i ? "|" : "",
                              st->params[i] != NULL ? st->params[i] : "~");
    }
    return buf;
}

static struct md_query *parse_in(int dom, const char *body, int aggregate, struct md_error *e)
{
    struct json_object *b = json_tokener_parse(body);
    assert_non_null(b);
    struct md_query *q = NULL;
    int rc = md_query_parse(&cf->domains[dom], &cf->limits, cf->cursor_secret, aggregate, b, &q, e);
    json_object_put(b);
    return rc == 0 ? q : NULL;
}

static struct md_query *parse(const char *body, int aggregate, struct md_error *e)
{
    return parse_in(0, body, aggregate, e);
}

static void run_rows(const struct row *table, size_t n, int dom)
{
    for (size_t i = 0; i < n; i++) {
        const struct row *r = &table[i];
        struct md_error e = {0};
        struct md_query *q = parse_in(dom, r->body, r->aggregate, &e);
        if (q == NULL) {
            fail_msg("%s: parse failed: %s", r->name, e.message);
        }
        struct sql_stmt st;
        char err[128];
        sql_stmt_init(&st, r->dialect);
        const struct cf_domain *d = &cf->domains[dom];
        int rc = r->aggregate ? sql_build_aggregate(&st, d, q, err, sizeof(err))
                              : sql_build_query(&st, d, q, err, sizeof(err));
        assert_int_equal(rc, 0);
        if (strcmp(st.text, r->sql) != 0) {
            fail_msg("%s:\n got  %s\n want %s", r->name, st.text, r->sql);
        }
        if (strcmp(join_params(&st), r->params) != 0) {
            fail_msg("%s: params\n got  %s\n want %s", r->name, join_params(&st), r->params);
        }
        sql_stmt_free(&st);
        md_query_free(q);
    }
}

static void test_rows(void **state)
{
    (void)state;
    run_rows(rows, sizeof(rows) / sizeof(rows[0]), 0);
    run_rows(orders_rows, sizeof(orders_rows) / sizeof(orders_rows[0]), 1);
}

/* Bad filters: 400 naming the field or operator. */
static void test_errors(void **state)
{
    (void)state;
    static const struct {
        int aggregate;
        const char *body, *needle;
    } bad[] = {
        {0, "{\"where\":{\"nope\":1}}", "nope"},
        {0, "{\"where\":{\"age\":{\"like\":1}}}", "like"},
        {0, "{\"where\":{\"age\":\"x\"}}", "age"},
        {0, "{\"where\":{\"ok\":{\"gt\":true}}}", "gt"},
        {0, "{\"where\":{\"name.x\":1}}", "dotted"},
        {0, "{\"where\":{\"name\":{\"in\":[]}}}", "in"},
        {0, "{\"order_by\":[\"meta\"]}", "meta"},
        {0, "{\"limit\":0}", "limit"},
        {0, "{\"cursor\":\"abc.def\"}", "cursor"},
        {0, "{\"extra\":1}", "extra"},
        {1, "{\"aggregates\":{\"x\":{\"sum\":\"name\"}}}", "sum"},
        {1, "{\"aggregates\":{\"1x\":{\"count\":\"*\"}}}", "1x"},
        /* path segments every store would read differently (or fail on) */
        {0, "{\"where\":{\"meta. \":1}}", "leading or trailing space"},
        {0, "{\"where\":{\"meta.a \":1}}", "'meta.a '"},
        {0, "{\"where\":{\"meta.$gt\":1}}", "'$'"},
        {0, "{\"where\":{\"meta..a\":1}}", "empty segment"},
        {0, "{\"where\":{\"meta.a\\u0001\":1}}", "control character"},
        {1, "{\"group_by\":[\"meta.id \"],\"aggregates\":{\"n\":{\"count\":\"*\"}}}",
         "leading or trailing space"},
        {1, "{\"group_by\":[\"meta. id\"],\"aggregates\":{\"n\":{\"count\":\"*\"}}}", "group_by"},
        {1, "{\"group_by\":[\"meta.a\\u0000b\"],\"aggregates\":{\"n\":{\"count\":\"*\"}}}", "NUL"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct md_error e = {0};
        struct md_query *q = parse(bad[i].body, bad[i].aggregate, &e);
        if (q != NULL) {
            fail_msg("%s: accepted", bad[i].body);
        }
        assert_int_equal(e.err, MD_E_BAD_REQUEST);
        if (strstr(e.message, bad[i].needle) == NULL) {
            fail_msg("%s: message '%s' does not name '%s'", bad[i].body, e.message, bad[i].needle);
        }
    }
}

/* A cursor round-trips into a keyset bound; a tampered one is refused. */
static void test_cursor(void **state)
{
    (void)state;
    struct md_error e = {0};
    struct md_query *q = parse("{\"order_by\":[\"-age\",\"email\"]}", 0, &e);
    assert_non_null(q);
    struct json_object *vals = json_tokener_parse("[30,\"a@b\",\"id-1\"]");
    char *c = md_query_cursor_make(q, vals);
    json_object_put(vals);
    char body[2048];
    snprintf(body, sizeof(body), "{\"order_by\":[\"-age\",\"email\"],\"cursor\":\"%s\"}", c);
    struct md_query *q2 = parse(body, 0, &e);
    assert_non_null(q2);
    struct sql_stmt st;
    char err[128];
    sql_stmt_init(&st, SQL_PG);
    assert_int_equal(sql_build_query(&st, &cf->domains[0], q2, err, sizeof(err)), 0);
    /* mixed directions and a nullable column: the OR-chain */
    assert_string_equal(st.text, SEL_ALL
                        " WHERE ((\"age\" < $1) OR (\"age\" = $2 AND \"email\" > $3) OR (\"age\" = "
                        "$4 AND \"email\" = $5 AND \"id\" > $6)) ORDER BY \"age\" DESC NULLS "
                        "FIRST, \"email\" ASC NULLS LAST, \"id\" ASC NULLS LAST LIMIT $7");
    assert_string_equal(join_params(&st), "30|30|a@b|30|a@b|id-1|101");
    sql_stmt_free(&st);
    md_query_free(q2);
    /* same direction, non-null columns: a row-value bound */
    struct md_query *q3 = parse("{\"order_by\":[\"email\"]}", 0, &e);
    vals = json_tokener_parse("[\"a@b\",\"id-1\"]");
    char *c3 = md_query_cursor_make(q3, vals);
    json_object_put(vals);
    snprintf(body, sizeof(body), "{\"order_by\":[\"email\"],\"cursor\":\"%s\"}", c3);
    struct md_query *q4 = parse(body, 0, &e);
    assert_non_null(q4);
    sql_stmt_init(&st, SQL_PG);
    assert_int_equal(sql_build_query(&st, &cf->domains[0], q4, err, sizeof(err)), 0);
    assert_non_null(strstr(st.text, "WHERE (\"email\", \"id\") > ($1, $2)"));
    sql_stmt_free(&st);
    md_query_free(q3);
    md_query_free(q4);
    /* tampering: flip one payload character */
    c[3] = c[3] == 'A' ? 'B' : 'A';
    snprintf(body, sizeof(body), "{\"order_by\":[\"-age\",\"email\"],\"cursor\":\"%s\"}", c);
    assert_null(parse(body, 0, &e));
    assert_non_null(strstr(e.message, "cursor"));
    free(c);
    free(c3);
    md_query_free(q);
}

static void test_writes_and_migration(void **state)
{
    (void)state;
    const struct cf_domain *d = &cf->domains[0];
    struct sql_stmt st;
    char err[128];
    struct json_object *patch =
        json_tokener_parse("{\"set\":{\"name\":\"x\"},\"inc\":{\"age\":1},\"unset\":[\"bal\"]}");
    sql_stmt_init(&st, SQL_PG);
    assert_int_equal(sql_build_patch(&st, d, "k1", patch, 4, err, sizeof(err)), 0);
    assert_string_equal(st.text,
                        "UPDATE \"users\" SET \"name\" = $1, \"age\" = COALESCE(\"age\", 0) + "
                        "$2::bigint, \"bal\" = NULL, \"version\" = \"version\" + 1 WHERE \"id\" = "
                        "$3 AND \"version\" = $4 RETURNING \"id\", \"email\", \"name\", \"age\", "
                        "\"bal\", \"at\", \"ok\", \"meta\", \"version\"");
    assert_string_equal(join_params(&st), "x|1|k1|4");
    sql_stmt_free(&st);
    json_object_put(patch);
    sql_stmt_init(&st, SQL_PG);
    assert_int_equal(sql_build_migrate(&st, d, err, sizeof(err)), 0);
    assert_non_null(strstr(st.text, "CREATE TABLE IF NOT EXISTS \"users\""));
    assert_non_null(
        strstr(st.text, "CREATE UNIQUE INDEX IF NOT EXISTS \"users_email_key\" ON \"users\""));
    assert_non_null(strstr(st.text, "\"bal\" numeric(18,2)"));
    assert_int_equal(st.nparams, 0);
    sql_stmt_free(&st);
    assert_string_equal(sql_constraint_field(d, "users_email_key"), "email");
    assert_string_equal(sql_constraint_field(d, "users_pkey"), "id");
    assert_null(sql_constraint_field(d, "other_email_key"));
    assert_string_equal(sql_constraint_field(d, "PRIMARY"), "id");                  /* MySQL */
    assert_string_equal(sql_constraint_field(d, "users.users_email_key"), "email"); /* MySQL 8 */
}

#define MY_SEL                                                                                     \
    "SELECT `order_id`, `customer_id`, `status`, `total`, `n`, `items`, `note`, `code`, "          \
    "`created_at`, `version` FROM `orders` WHERE `order_id` = ?"

/* MySQL writes: one script, one transaction, the item re-read in it. */
static void test_mysql_writes(void **state)
{
    (void)state;
    const struct cf_domain *d = &cf->domains[1];
    struct sql_stmt st;
    char err[128];
    struct json_object *item = json_tokener_parse(
        "{\"order_id\":\"o1\",\"customer_id\":\"c'1\",\"total\":12.30,\"items\":[{\"a\":1}],"
        "\"created_at\":\"2026-01-31T10:00:00.5Z\"}");
    /* insert: the slot from the router */
    sql_stmt_init(&st, SQL_MYSQL);
    st.slot = 2282;
    assert_int_equal(sql_build_insert(&st, d, item, err, sizeof(err)), 0);
    assert_string_equal(st.text,
                        "START TRANSACTION; INSERT INTO `orders` (`order_id`, "
                        "`customer_id`, `total`, `items`, `created_at`, `version`, `_slot`) "
                        "VALUES (?, ?, CAST(? AS DECIMAL(65,29)), ?, ?, 1, ?); " MY_SEL "; COMMIT");
    assert_string_equal(join_params(&st), "o1|c'1|12.30|[{\"a\":1}]|2026-01-31 10:00:00.5|2282|o1");
    assert_int_equal(st.nstmts, 4);
    assert_int_equal(st.affected_at, 1);
    assert_int_equal(st.rows_at, 2);
    assert_int_equal(st.txn, 1);
    assert_int_equal(st.ncols, 10);
    sql_stmt_free(&st);
    /* unknown slot: NULL */
    sql_stmt_init(&st, SQL_MYSQL);
    assert_int_equal(sql_build_insert(&st, d, item, err, sizeof(err)), 0);
    assert_non_null(strstr(st.text, "?, ?, 1, NULL); SELECT"));
    sql_stmt_free(&st);
    /* upsert: guarded by key = VALUES(key); created_at keeps its first value */
    sql_stmt_init(&st, SQL_MYSQL);
    st.slot = 7;
    assert_int_equal(sql_build_put(&st, d, "o1", item, -1, err, sizeof(err)), 0);
    assert_string_equal(
        st.text,
        "START TRANSACTION; INSERT INTO `orders` (`order_id`, `customer_id`, `status`, `total`, "
        "`n`, `items`, `note`, `code`, `created_at`, `version`, `_slot`) VALUES (?, ?, NULL, "
        "CAST(? AS DECIMAL(65,29)), NULL, ?, NULL, NULL, ?, 1, ?) ON DUPLICATE KEY UPDATE "
        "`customer_id` = IF(`order_id` = VALUES(`order_id`), VALUES(`customer_id`), "
        "`customer_id`), "
        "`status` = IF(`order_id` = VALUES(`order_id`), VALUES(`status`), `status`), "
        "`total` = IF(`order_id` = VALUES(`order_id`), VALUES(`total`), `total`), "
        "`n` = IF(`order_id` = VALUES(`order_id`), VALUES(`n`), `n`), "
        "`items` = IF(`order_id` = VALUES(`order_id`), VALUES(`items`), `items`), "
        "`note` = IF(`order_id` = VALUES(`order_id`), VALUES(`note`), `note`), "
        "`code` = IF(`order_id` = VALUES(`order_id`), VALUES(`code`), `code`), "
        "`created_at` = IF(`order_id` = VALUES(`order_id`), COALESCE(`created_at`, "
        "VALUES(`created_at`)), `created_at`), `_slot` = IF(`order_id` = VALUES(`order_id`), "
        "COALESCE(VALUES(`_slot`), `_slot`), `_slot`), `version` = IF(`order_id` = "
        "VALUES(`order_id`), `version` + 1, `version`); " MY_SEL "; COMMIT");
    assert_string_equal(join_params(&st), "o1|c'1|12.30|[{\"a\":1}]|2026-01-31 10:00:00.5|7|o1");
    sql_stmt_free(&st);
    /* conditional replace */
    sql_stmt_init(&st, SQL_MYSQL);
    assert_int_equal(sql_build_put(&st, d, "o1", item, 3, err, sizeof(err)), 0);
    assert_non_null(strstr(st.text, "START TRANSACTION; UPDATE `orders` SET `customer_id` = ?, "
                                    "`status` = NULL, "));
    assert_non_null(strstr(st.text, "`created_at` = COALESCE(`created_at`, ?), `_slot` = "
                                    "COALESCE(NULL, `_slot`), `version` = `version` + 1 WHERE "
                                    "`order_id` = ? AND `version` = ?; " MY_SEL "; COMMIT"));
    sql_stmt_free(&st);
    json_object_put(item);
    /* patch: exact increments, If-Match in the WHERE */
    struct json_object *patch = json_tokener_parse(
        "{\"set\":{\"status\":\"CANCELLED\"},\"inc\":{\"total\":\"-0.01\",\"n\":2},"
        "\"unset\":[\"note\"]}");
    sql_stmt_init(&st, SQL_MYSQL);
    assert_int_equal(sql_build_patch(&st, d, "o1", patch, 4, err, sizeof(err)), 0);
    assert_string_equal(st.text,
                        "START TRANSACTION; UPDATE `orders` SET `status` = ?, `total` = "
                        "COALESCE(`total`, 0) + CAST(? AS DECIMAL(65,29)), `n` = COALESCE(`n`, 0) "
                        "+ CAST(? AS SIGNED), `note` = NULL, `version` = `version` + 1 WHERE "
                        "`order_id` = ? AND `version` = ?; " MY_SEL "; COMMIT");
    assert_string_equal(join_params(&st), "CANCELLED|-0.01|2|o1|4|o1");
    assert_int_equal(st.affected_at, 1);
    assert_int_equal(st.rows_at, 2);
    sql_stmt_free(&st);
    json_object_put(patch);
    /* delete: the version FOR UPDATE, then the conditional delete */
    sql_stmt_init(&st, SQL_MYSQL);
    assert_int_equal(sql_build_delete(&st, d, "o1", 2, err, sizeof(err)), 0);
    assert_string_equal(st.text, "START TRANSACTION; SELECT `version` FROM `orders` WHERE "
                                 "`order_id` = ? FOR UPDATE; DELETE FROM `orders` WHERE "
                                 "`order_id` = ? AND `version` = ?; COMMIT");
    assert_string_equal(join_params(&st), "o1|o1|2");
    assert_int_equal(st.rows_at, 1);
    assert_int_equal(st.affected_at, 2);
    sql_stmt_free(&st);
    /* a get is one statement */
    sql_stmt_init(&st, SQL_MYSQL);
    assert_int_equal(sql_build_get(&st, d, "o1", err, sizeof(err)), 0);
    assert_string_equal(st.text, MY_SEL);
    assert_int_equal(st.nstmts, 1);
    assert_int_equal(st.rows_at, 0);
    assert_int_equal(st.affected_at, -1);
    assert_int_equal(st.txn, 0);
    sql_stmt_free(&st);
}

static void test_mysql_migration(void **state)
{
    (void)state;
    struct sql_stmt st;
    char err[128];
    sql_stmt_init(&st, SQL_MYSQL);
    assert_int_equal(sql_build_migrate(&st, &cf->domains[1], err, sizeof(err)), 0);
    assert_string_equal(
        st.text,
        "CREATE TABLE IF NOT EXISTS `orders` (`order_id` VARCHAR(191) NOT NULL, `customer_id` "
        "VARCHAR(191) NOT NULL, `status` VARCHAR(9), `total` DECIMAL(18,2), `n` BIGINT, `items` "
        "JSON, `note` MEDIUMTEXT, `code` VARCHAR(40), `created_at` DATETIME(6), `version` BIGINT "
        "NOT NULL DEFAULT 1, `_slot` INT NULL, PRIMARY KEY (`order_id`), KEY "
        "`orders_customer_id_idx` (`customer_id`), UNIQUE KEY `orders_code_key` (`code`), KEY "
        "`orders__slot_idx` (`_slot`)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin");
    assert_int_equal(st.nparams, 0);
    assert_int_equal(st.rows_at, -1);
    sql_stmt_free(&st);
    /* the same domain on PostgreSQL also gets its indexed _slot */
    sql_stmt_init(&st, SQL_PG);
    assert_int_equal(sql_build_migrate(&st, &cf->domains[1], err, sizeof(err)), 0);
    assert_non_null(strstr(st.text, "\"version\" bigint NOT NULL DEFAULT 1, \"_slot\" integer, "));
    assert_non_null(strstr(st.text, "CREATE INDEX IF NOT EXISTS \"orders__slot_idx\" ON "
                                    "\"orders\" (\"_slot\")"));
    sql_stmt_free(&st);
    /* the users domain is not sharded: no _slot anywhere */
    sql_stmt_init(&st, SQL_MYSQL);
    assert_int_equal(sql_build_migrate(&st, &cf->domains[0], err, sizeof(err)), 0);
    assert_null(strstr(st.text, "_slot"));
    assert_non_null(strstr(st.text, "UNIQUE KEY `users_email_key` (`email`)"));
    assert_non_null(strstr(st.text, "`ok` TINYINT(1), `meta` JSON"));
    sql_stmt_free(&st);
}

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

/* A where of n copies of `cond` (JSON text) under "and", nested `depth`
 * levels deep: {"and":[{"and":[… {"and":[cond, cond, …]}]}]}. */
static struct md_query *parse_shape(int n, const char *cond, int depth, struct md_error *e)
{
    size_t cap = (size_t)n * (strlen(cond) + 1) + (size_t)depth * 16 + 64;
    char *body = malloc(cap), *o = body;
    o += sprintf(o, "{\"where\":");
    for (int i = 0; i < depth; i++) {
        o += sprintf(o, "{\"and\":[");
    }
    o += sprintf(o, "{\"and\":[");
    for (int i = 0; i < n; i++) {
        o += sprintf(o, "%s%s", i ? "," : "", cond);
    }
    o += sprintf(o, "]}");
    for (int i = 0; i < depth; i++) {
        o += sprintf(o, "]}");
    }
    sprintf(o, "}");
    struct md_query *q = parse(body, 0, e);
    free(body);
    return q;
}

static void accepted(struct md_query *q, const struct md_error *e)
{
    if (q == NULL) {
        fail_msg("refused: %s", e->message);
    }
    md_query_free(q);
}

static void expect_limit(struct md_query *q, const struct md_error *e, const char *needle)
{
    if (q != NULL) {
        fail_msg("accepted beyond %s", needle);
    }
    assert_int_equal(e->err, MD_E_BAD_REQUEST);
    if (strstr(e->message, needle) == NULL) {
        fail_msg("message '%s' does not name '%s'", e->message, needle);
    }
}

/* Query complexity: each limit is accepted at its value and refused (400
 * naming the limit and its value) one above it; defaults from the config
 * loader. */
static void test_complexity_limits(void **state)
{
    (void)state;
    struct md_error e = {0};
    assert_int_equal(cf->limits.max_query_conditions, 256);
    assert_int_equal(cf->limits.max_query_depth, 8);
    assert_int_equal(cf->limits.max_prefix_conditions, 16);
    assert_int_equal((int)cf->limits.max_prefix_bytes, 256);
    assert_int_equal((int)cf->limits.max_filter_bytes, 65536);

    accepted(parse_shape(256, "{\"age\":1}", 0, &e), &e);
    expect_limit(parse_shape(257, "{\"age\":1}", 0, &e), &e, "max_query_conditions (256)");

    accepted(parse_shape(1, "{\"age\":1}", 7, &e), &e);
    assert_null(parse_shape(1, "{\"age\":1}", 8, &e));
    expect_limit(NULL, &e, "max_query_depth (8)");

    accepted(parse_shape(16, "{\"name\":{\"prefix\":\"ab\"}}", 0, &e), &e);
    expect_limit(parse_shape(17, "{\"name\":{\"prefix\":\"ab\"}}", 0, &e), &e,
                 "max_prefix_conditions (16)");

    char cond[400];
    snprintf(cond, sizeof(cond), "{\"name\":{\"prefix\":\"%0256d\"}}", 0);
    struct md_query *q = parse_shape(1, cond, 0, &e);
    assert_non_null(q);
    md_query_free(q);
    snprintf(cond, sizeof(cond), "{\"name\":{\"prefix\":\"%0257d\"}}", 0);
    expect_limit(parse_shape(1, cond, 0, &e), &e, "max_prefix_bytes (256)");

    /* 200 values of 400 bytes: 80,000 bytes > 65,536 */
    char big[420];
    snprintf(big, sizeof(big), "{\"name\":\"%0400d\"}", 0);
    expect_limit(parse_shape(200, big, 0, &e), &e, "max_filter_bytes (65536");
    accepted(parse_shape(150, big, 0, &e), &e); /* 60,000 bytes */
}

/* Index names are <table>_<field>_idx: PostgreSQL cuts identifiers at 63
 * bytes without a word, so two long names could become one index.  The pg
 * adapter refuses such a domain at load time; at the limit, the name is
 * built whole. */
#define LONG_ID_CONFIG                                                                             \
    "{\"backends\":{\"p\":{\"type\":\"pg\",\"shards\":[{\"name\":\"p\",\"dsn\":\"host=x\"}]}},"    \
    "\"domains\":{\"a\":{\"backend\":\"p\",\"table\":\"%s\",\"key\":\"id\",\"fields\":{"           \
    "\"id\":\"string\",\"%s\":{\"type\":\"string\",\"index\":true}}}}}"

static void test_long_identifiers(void **state)
{
    (void)state;
    char table[41], field[64];
    memset(table, 't', 40);
    table[40] = '\0';
    char json[1024];
    /* one byte too long: refused */
    memset(field, 'f', 19);
    field[19] = '\0';
    snprintf(json, sizeof(json), LONG_ID_CONFIG, table, field);
    assert_null(unit_config(json));
    /* 40 + 1 + 18 + 4 = 63 bytes: accepted and built whole */
    field[18] = '\0';
    snprintf(json, sizeof(json), LONG_ID_CONFIG, table, field);
    struct cf_config *lc = unit_config(json);
    assert_non_null(lc);
    char want[256];
    char err[128];
    struct sql_stmt st;
    sql_stmt_init(&st, SQL_PG);
    assert_int_equal(sql_build_migrate(&st, cf_domain_find(lc, "a", 1), err, sizeof(err)), 0);
    snprintf(want, sizeof(want), "INDEX IF NOT EXISTS \"%s_%s_idx\" ON \"%s\"", table, field,
             table);
    assert_non_null(strstr(st.text, want));
    sql_stmt_free(&st);
    cf_config_unref(lc);
}

/* A cursor is bound to its whole order_by: two orders whose signatures
 * share their first 1,023 bytes (long field names) are told apart (the
 * signature was cut there, so a cursor passed for the other order). */
static int parse_on(const struct cf_config *c, const struct cf_domain *d, const char *body,
                    struct md_query **q, struct md_error *e)
{
    struct json_object *b = json_tokener_parse(body);
    assert_non_null(b);
    int rc = md_query_parse(d, &c->limits, c->cursor_secret, 0, b, q, e);
    json_object_put(b);
    return rc;
}

static void test_cursor_long_order(void **state)
{
    (void)state;
    char names[7][201];
    for (int i = 0; i < 7; i++) {
        memset(names[i], 'n', 199);
        names[i][199] = (char)('0' + i); /* differ only in the last byte */
        names[i][200] = '\0';
    }
    char *json = malloc(8192), *body = malloc(16384), *order1 = malloc(2048),
         *order2 = malloc(2048);
    int o =
        snprintf(json, 8192,
                 /* a document store: it takes field names of 200 bytes */
                 "{\"backends\":{\"p\":{\"type\":\"mongo\",\"shards\":[{\"name\":\"p\","
                 "\"dsn\":\"mongodb://x/db\"}]}},\"domains\":{\"a\":{\"backend\":\"p\",\"table\":"
                 "\"a\",\"key\":\"id\",\"fields\":{\"id\":\"string\"");
    for (int i = 0; i < 7; i++) {
        o += snprintf(json + o, 8192 - (size_t)o, ",\"%s\":\"string\"", names[i]);
    }
    snprintf(json + o, 8192 - (size_t)o, "}}}}");
    struct cf_config *lc = unit_config(json);
    assert_non_null(lc);
    const struct cf_domain *d = cf_domain_find(lc, "a", 1);
    int o1 = 0, o2 = 0;
    for (int i = 0; i < 5; i++) {
        o1 += snprintf(order1 + o1, 2048 - (size_t)o1, "\"%s\",", names[i]);
        o2 += snprintf(order2 + o2, 2048 - (size_t)o2, "\"%s\",", names[i]);
    }
    snprintf(order1 + o1, 2048 - (size_t)o1, "\"%s\"", names[5]);
    snprintf(order2 + o2, 2048 - (size_t)o2, "\"%s\"", names[6]);
    struct md_error e = {0};
    struct md_query *q = NULL;
    snprintf(body, 16384, "{\"order_by\":[%s]}", order1);
    assert_int_equal(parse_on(lc, d, body, &q, &e), 0);
    struct json_object *vals = json_tokener_parse("[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\"]");
    char *c = md_query_cursor_make(q, vals);
    assert_non_null(c);
    json_object_put(vals);
    md_query_free(q);
    /* the same order takes it back */
    snprintf(body, 16384, "{\"order_by\":[%s],\"cursor\":\"%s\"}", order1, c);
    q = NULL;
    assert_int_equal(parse_on(lc, d, body, &q, &e), 0);
    md_query_free(q);
    /* the other order refuses it */
    snprintf(body, 16384, "{\"order_by\":[%s],\"cursor\":\"%s\"}", order2, c);
    q = NULL;
    assert_int_equal(parse_on(lc, d, body, &q, &e), -1);
    assert_non_null(strstr(e.message, "another order_by"));
    free(c);
    free(json);
    free(body);
    free(order1);
    free(order2);
    cf_config_unref(lc);
}

#define MY_FENCE "EXISTS (SELECT 1 FROM `_polygate_slots_orders` WHERE `slot` = "
#define MY_ROW_FENCE                                                                               \
    " AND (`orders`.`_slot` IS NULL OR " MY_FENCE "`orders`.`_slot` LOCK IN SHARE MODE))"
#define PG_FENCE "EXISTS (SELECT 1 FROM \"_polygate_slots_orders\" WHERE \"slot\" = "
#define PG_ROW_FENCE                                                                               \
    " AND (\"orders\".\"_slot\" IS NULL OR " PG_FENCE "\"orders\".\"_slot\" FOR SHARE))"

/* A fenced write on a sharded domain (st.fence): the slot is checked in the
 * write itself, with a shared lock on its ownership row (sql_build.h). */
static void test_fenced_writes(void **state)
{
    (void)state;
    const struct cf_domain *d = &cf->domains[1];
    struct sql_stmt st;
    char err[128];
    struct json_object *item =
        json_tokener_parse("{\"order_id\":\"o1\",\"customer_id\":\"c1\",\"total\":12.30,\"n\":3}");
    struct json_object *patch = json_tokener_parse("{\"set\":{\"status\":\"CANCELLED\"}}");

    /* MySQL insert: INSERT … SELECT … FROM DUAL WHERE EXISTS (… LOCK IN SHARE MODE) */
    sql_stmt_init(&st, SQL_MYSQL);
    st.slot = 2282;
    st.fence = 1;
    assert_int_equal(sql_build_insert(&st, d, item, err, sizeof(err)), 0);
    assert_string_equal(st.text, "START TRANSACTION; INSERT INTO `orders` (`order_id`, "
                                 "`customer_id`, `total`, `n`, `version`, `_slot`) SELECT ?, ?, "
                                 "CAST(? AS DECIMAL(65,29)), CAST(? AS SIGNED), 1, ? FROM DUAL "
                                 "WHERE " MY_FENCE "2282 LOCK IN SHARE MODE); " MY_SEL "; COMMIT");
    assert_string_equal(join_params(&st), "o1|c1|12.30|3|2282|o1");
    assert_int_equal(st.affected_at, 1); /* 0 rows: the fence */
    sql_stmt_free(&st);
    /* MySQL upsert: the same WHERE before ON DUPLICATE KEY UPDATE */
    sql_stmt_init(&st, SQL_MYSQL);
    st.slot = 7;
    st.fence = 1;
    assert_int_equal(sql_build_put(&st, d, "o1", item, -1, err, sizeof(err)), 0);
    assert_non_null(strstr(st.text, ", 1, ? FROM DUAL WHERE " MY_FENCE
                                    "7 LOCK IN SHARE MODE) ON DUPLICATE KEY UPDATE `customer_id`"));
    assert_null(strstr(st.text, "VALUES (?"));
    sql_stmt_free(&st);
    /* MySQL conditional replace, patch, delete: the row's own slot */
    sql_stmt_init(&st, SQL_MYSQL);
    st.fence = 1;
    assert_int_equal(sql_build_put(&st, d, "o1", item, 3, err, sizeof(err)), 0);
    assert_non_null(
        strstr(st.text, "WHERE `order_id` = ? AND `version` = ?" MY_ROW_FENCE "; " MY_SEL));
    sql_stmt_free(&st);
    sql_stmt_init(&st, SQL_MYSQL);
    st.fence = 1;
    assert_int_equal(sql_build_patch(&st, d, "o1", patch, -1, err, sizeof(err)), 0);
    assert_string_equal(st.text,
                        "START TRANSACTION; UPDATE `orders` SET `status` = ?, `version` "
                        "= `version` + 1 WHERE `order_id` = ?" MY_ROW_FENCE "; " MY_SEL "; COMMIT");
    assert_string_equal(join_params(&st), "CANCELLED|o1|o1");
    sql_stmt_free(&st);
    sql_stmt_init(&st, SQL_MYSQL);
    st.fence = 1;
    assert_int_equal(sql_build_delete(&st, d, "o1", 2, err, sizeof(err)), 0);
    assert_string_equal(st.text, "START TRANSACTION; SELECT `version` FROM `orders` WHERE "
                                 "`order_id` = ? FOR UPDATE; DELETE FROM `orders` WHERE "
                                 "`order_id` = ? AND `version` = ?" MY_ROW_FENCE "; COMMIT");
    sql_stmt_free(&st);

    /* PostgreSQL insert: the slot's parameter serves the value and the fence */
    sql_stmt_init(&st, SQL_PG);
    st.slot = 2282;
    st.fence = 1;
    assert_int_equal(sql_build_insert(&st, d, item, err, sizeof(err)), 0);
    assert_non_null(strstr(st.text, "INSERT INTO \"orders\" (\"order_id\", \"customer_id\", "
                                    "\"total\", \"n\", \"version\", \"_slot\") SELECT $1, $2, "
                                    "$3, $4, 1, $5 WHERE " PG_FENCE "$5 FOR SHARE) RETURNING "));
    assert_string_equal(join_params(&st), "o1|c1|12.30|3|2282");
    sql_stmt_free(&st);
    /* PostgreSQL upsert: WHERE, then ON CONFLICT */
    sql_stmt_init(&st, SQL_PG);
    st.slot = 7;
    st.fence = 1;
    assert_int_equal(sql_build_put(&st, d, "o1", item, -1, err, sizeof(err)), 0);
    assert_non_null(strstr(st.text, ") SELECT $1, $2, NULL, $3, $4, NULL, NULL, NULL, NULL, 1, $5 "
                                    "WHERE " PG_FENCE "$5 FOR SHARE) ON CONFLICT (\"order_id\") DO "
                                    "UPDATE SET "));
    sql_stmt_free(&st);
    /* PostgreSQL patch and delete */
    sql_stmt_init(&st, SQL_PG);
    st.fence = 1;
    assert_int_equal(sql_build_patch(&st, d, "o1", patch, 4, err, sizeof(err)), 0);
    assert_non_null(strstr(st.text, "UPDATE \"orders\" SET \"status\" = $1, \"version\" = "
                                    "\"version\" + 1 WHERE \"order_id\" = $2 AND \"version\" = "
                                    "$3" PG_ROW_FENCE " RETURNING "));
    sql_stmt_free(&st);
    sql_stmt_init(&st, SQL_PG);
    st.fence = 1;
    assert_int_equal(sql_build_delete(&st, d, "o1", -1, err, sizeof(err)), 0);
    assert_string_equal(st.text, "DELETE FROM \"orders\" WHERE \"order_id\" = $1" PG_ROW_FENCE
                                 " RETURNING \"version\"");
    sql_stmt_free(&st);

    /* an unsharded domain has no fence, whatever the caller says */
    sql_stmt_init(&st, SQL_PG);
    st.fence = 1;
    assert_int_equal(sql_build_delete(&st, &cf->domains[0], "k", -1, err, sizeof(err)), 0);
    assert_string_equal(st.text, "DELETE FROM \"users\" WHERE \"id\" = $1 RETURNING \"version\"");
    sql_stmt_free(&st);
    json_object_put(item);
    json_object_put(patch);
}

/* After a fenced write changed no row: a row (the slot) when not owned. */
static void test_fence_probe(void **state)
{
    (void)state;
    const struct cf_domain *d = &cf->domains[1];
    struct sql_stmt st;
    char err[128];
    sql_stmt_init(&st, SQL_PG); /* the slot known: a parameter (one prepared shape) */
    st.slot = 17;
    assert_int_equal(sql_build_fence_probe(&st, d, "o1", err, sizeof(err)), 0);
    assert_string_equal(st.text,
                        "SELECT p.s FROM (SELECT $1::integer AS s) p WHERE NOT " PG_FENCE "p.s)");
    assert_string_equal(join_params(&st), "17");
    sql_stmt_free(&st);
    sql_stmt_init(&st, SQL_MYSQL);
    st.slot = 17;
    assert_int_equal(sql_build_fence_probe(&st, d, "o1", err, sizeof(err)), 0);
    assert_string_equal(st.text, "SELECT p.s FROM (SELECT 17 AS s) p WHERE NOT " MY_FENCE "p.s)");
    assert_int_equal(st.nparams, 0);
    sql_stmt_free(&st);
    /* a write by id alone: the slot of the row with that key */
    sql_stmt_init(&st, SQL_MYSQL);
    assert_int_equal(sql_build_fence_probe(&st, d, "o'1", err, sizeof(err)), 0);
    assert_string_equal(st.text,
                        "SELECT `orders`.`_slot` FROM `orders` WHERE `order_id` = ? AND "
                        "`orders`.`_slot` IS NOT NULL AND NOT " MY_FENCE "`orders`.`_slot`)");
    assert_string_equal(join_params(&st), "o'1");
    sql_stmt_free(&st);
    sql_stmt_init(&st, SQL_PG);
    assert_int_equal(sql_build_fence_probe(&st, d, "o1", err, sizeof(err)), 0);
    assert_string_equal(st.text, "SELECT \"orders\".\"_slot\" FROM \"orders\" WHERE "
                                 "\"order_id\" = $1 AND \"orders\".\"_slot\" IS NOT NULL AND "
                                 "NOT " PG_FENCE "\"orders\".\"_slot\")");
    sql_stmt_free(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_cursor),
        cmocka_unit_test(test_writes_and_migration),
        cmocka_unit_test(test_mysql_writes),
        cmocka_unit_test(test_mysql_migration),
        cmocka_unit_test(test_complexity_limits),
        cmocka_unit_test(test_long_identifiers),
        cmocka_unit_test(test_cursor_long_order),
        cmocka_unit_test(test_fenced_writes),
        cmocka_unit_test(test_fence_probe),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
