/*
 * test_rb_mover.c — the pieces of the rebalancer that need no store: the one
 * identifier quoting (sql_quote_ident), the statement pieces the SQL movers
 * share (values only through the mover's callback), the registry of movers
 * and the state file round trip.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapters/sql/sql_build.h"
#include "rebalance/rb_buf.h"
#include "rebalance/rb_mover.h"
#include "rebalance/rb_registry.h"
#include "rebalance/rb_state.h"

static void test_quote_ident(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(sql_quote_ident(SQL_PG, "orders", out), 8);
    assert_string_equal(out, "\"orders\"");
    assert_int_equal(sql_quote_ident(SQL_MYSQL, "orders", out), 8);
    assert_string_equal(out, "`orders`");
    /* the dialect's quote doubled inside; the other one left alone */
    sql_quote_ident(SQL_PG, "a\"b`c", out);
    assert_string_equal(out, "\"a\"\"b`c\"");
    sql_quote_ident(SQL_MYSQL, "a\"b`c", out);
    assert_string_equal(out, "`a\"b``c`");
    /* the worst case fits 2 * strlen + 3 */
    assert_int_equal(sql_quote_ident(SQL_MYSQL, "``", out), 6);
    assert_string_equal(out, "``````");
}

/* the value callback of a test: a placeholder per value, the values kept */
struct vals {
    const char *v[8];
    int n;
};

static void value(struct rb_buf *b, void *ctx, const char *v)
{
    struct vals *vs = ctx;
    vs->v[vs->n++] = v;
    rb_buf_putf(b, "$%d", vs->n);
}

static void test_statement_pieces(void **state)
{
    (void)state;
    char c0[] = "order_id", c1[] = "customer_id", c2[] = "_slot", name[] = "or\"ders";
    char *cols[] = {c0, c1, c2};
    struct rb_table t = {.name = name, .key = c0, .cols = cols, .ncols = 3};
    struct vals vs = {0};
    struct rb_buf b = {0};
    rb_buf_select_batch(&b, SQL_PG, &t, 42, "k'1", 50, value, &vs);
    assert_string_equal(b.p, "SELECT \"order_id\", \"customer_id\", \"_slot\" FROM \"or\"\"ders\" "
                             "WHERE \"_slot\" = 42 AND \"order_id\" > $1 ORDER BY \"order_id\" "
                             "LIMIT 50");
    assert_int_equal(vs.n, 1);
    assert_string_equal(vs.v[0], "k'1"); /* the value went to the callback, not the text */
    free(b.p);

    b = (struct rb_buf){0};
    vs.n = 0;
    char k0[] = "a", k1[] = "b'); DROP TABLE x; --";
    char *keys[] = {k0, k1};
    RB_PUTS(&b, "DELETE");
    rb_buf_from_slot(&b, SQL_MYSQL, &t, 7);
    rb_buf_key_in(&b, SQL_MYSQL, &t, keys, 2, value, &vs);
    assert_string_equal(b.p, "DELETE FROM `or\"ders` WHERE `_slot` = 7 AND `order_id` IN ($1, $2)");
    assert_int_equal(vs.n, 2);
    assert_string_equal(vs.v[1], keys[1]);
    free(b.p);

    b = (struct rb_buf){0};
    uint32_t slots[] = {3, 4096, 9};
    rb_buf_delete_slots(&b, SQL_PG, &t, slots, 3);
    assert_string_equal(b.p, "DELETE FROM \"or\"\"ders\" WHERE \"_slot\" IN (3, 4096, 9)");
    free(b.p);
}

/* The slot ownership table's statements (rb_slots_* in rb_mover.h): one
 * table per sharded table, `_polygate_slots_<table>`. */
static void test_slot_ownership_statements(void **state)
{
    (void)state;
    uint32_t slots[] = {3, 4095};
    char name[] = "orders", key[] = "order_id";
    struct rb_table t = {.name = name, .key = key};
    struct {
        enum sql_dialect d;
        void (*build)(struct rb_buf *, enum sql_dialect, const struct rb_table *, const uint32_t *,
                      size_t);
        const char *want;
    } cases[] = {
        {SQL_MYSQL, rb_buf_slots_grant,
         "INSERT IGNORE INTO `_polygate_slots_orders` (`slot`) VALUES (3), (4095)"},
        {SQL_PG, rb_buf_slots_grant,
         "INSERT INTO \"_polygate_slots_orders\" (\"slot\") VALUES (3), (4095) ON CONFLICT DO "
         "NOTHING"},
        {SQL_MYSQL, rb_buf_slots_revoke,
         "DELETE FROM `_polygate_slots_orders` WHERE `slot` IN (3, 4095)"},
        {SQL_PG, rb_buf_slots_revoke,
         "DELETE FROM \"_polygate_slots_orders\" WHERE \"slot\" IN (3, 4095)"},
        {SQL_MYSQL, rb_buf_slots_held,
         "SELECT DISTINCT `_slot` FROM `orders` WHERE `_slot` IN (3, 4095)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct rb_buf b = {0};
        cases[i].build(&b, cases[i].d, &t, slots, 2);
        assert_string_equal(b.p, cases[i].want);
        free(b.p);
    }
    struct rb_buf b = {0};
    rb_buf_slots_ddl(&b, SQL_MYSQL, &t);
    assert_string_equal(b.p, "CREATE TABLE IF NOT EXISTS `_polygate_slots_orders` (`slot` INT NOT "
                             "NULL PRIMARY KEY) ENGINE=InnoDB");
    free(b.p);
    b = (struct rb_buf){0};
    rb_buf_slots_ddl(&b, SQL_PG, &t); /* serialised between processes */
    assert_string_equal(b.p, "SELECT pg_advisory_xact_lock(7370153842196624); CREATE TABLE IF NOT "
                             "EXISTS \"_polygate_slots_orders\" (\"slot\" integer PRIMARY KEY)");
    free(b.p);
    b = (struct rb_buf){0};
    rb_buf_slots_owned(&b, SQL_PG, &t);
    assert_string_equal(b.p, "SELECT \"slot\" FROM \"_polygate_slots_orders\" ORDER BY \"slot\"");
    free(b.p);
}

/* rb_slots_copy: a slot_query() result, NULL cells skipped. */
static const char *slot_text(void *res, size_t i)
{
    return ((const char *const *)res)[i];
}

static void test_slots_copy(void **state)
{
    (void)state;
    const char *rows[] = {"0", NULL, "4095"};
    uint32_t *slots = NULL;
    size_t n = 0;
    assert_int_equal(rb_slots_copy(3, slot_text, rows, &slots, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(slots[0], 0);
    assert_int_equal(slots[1], 4095);
    free(slots);
}

static void test_registry(void **state)
{
    (void)state;
    const struct rb_mover_ops *my = rb_mover_for("mysql"), *pg = rb_mover_for("pg");
    assert_non_null(my);
    assert_non_null(pg);
    assert_string_equal(my->type, "mysql");
    assert_string_equal(pg->type, "pg");
    assert_int_equal(my->dialect, SQL_MYSQL);
    assert_int_equal(pg->dialect, SQL_PG);
    assert_null(rb_mover_for("redis"));
    assert_null(rb_mover_for("mongo"));
    assert_null(rb_mover_for(NULL));
}

static void test_state_round_trip(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_rb_state_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char map[128];
    snprintf(map, sizeof(map), "%s/orders.shardmap.yaml", dir);
    char *path = rb_state_path(map);
    assert_non_null(path);
    assert_true(strlen(path) > strlen(map) && strcmp(path + strlen(map), ".rebalance") == 0);

    char err[512];
    struct rb_state st;
    assert_int_equal(rb_state_load(path, &st, err, sizeof(err)), 0); /* no file: nothing */

    struct json_object *from = json_tokener_parse("{\"version\": 1, \"slots\": 8}");
    struct json_object *to = json_tokener_parse("{\"version\": 2, \"slots\": 8}");
    uint32_t done[] = {5, 0, 7};
    struct rb_state w = {.backend = "orders-pg",
                         .from = from,
                         .to = to,
                         .done = done,
                         .ndone = 3,
                         .rows_moved = 12345};
    assert_int_equal(rb_state_save(path, &w, err, sizeof(err)), 0);
    assert_int_equal(rb_state_load(path, &st, err, sizeof(err)), 1);
    assert_true(json_object_equal(st.from, from));
    assert_true(json_object_equal(st.to, to));
    assert_int_equal(st.ndone, 3);
    assert_int_equal(st.done[0], 5);
    assert_int_equal(st.done[1], 0);
    assert_int_equal(st.done[2], 7);
    assert_int_equal(st.rows_moved, 12345);
    rb_state_clear(&st);

    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{version: [1, ", f);
    fclose(f);
    assert_int_equal(rb_state_load(path, &st, err, sizeof(err)), -1);
    assert_non_null(strstr(err, path)); /* the message names the file */
    assert_non_null(strstr(err, "unreadable"));

    json_object_put(from);
    json_object_put(to);
    unlink(path);
    free(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quote_ident),
        cmocka_unit_test(test_statement_pieces),
        cmocka_unit_test(test_slot_ownership_statements),
        cmocka_unit_test(test_slots_copy),
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_state_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
