/*
 * fuzz_query.c — the filter language and the cursor decoder.
 *
 * The first byte picks the mode; the rest is JSON:
 *   0  a _query body → md_query_parse → SQL (PostgreSQL and MySQL) and the
 *      MongoDB plan, as the adapters build them;
 *   1  the same for an _aggregate body;
 *   2  an array of sort values → a cursor signed with the real key
 *      (md_query_cursor_make) → parsed back in a body: the decoder past the
 *      MAC check, which random bytes never reach.
 * A cursor in a mode-0 body exercises the decoder's refusals (bad base64,
 * bad MAC, wrong length).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/ad.h"
#include "adapters/mongo/mg_query.h"
#include "adapters/sql/sql_build.h"
#include "config/cf_config.h"
#include "config/cf_yaml.h"
#include "lib/lb_json.h"
#include "model/md_query.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct cf_config *cf;

static const char schema[] =
    "backends: {p: {type: pg, shards: [{name: p, dsn: 'host=127.0.0.1 port=1'}]}}\n"
    "domains:\n"
    "  d:\n"
    "    backend: p\n"
    "    table: t\n"
    "    key: id\n"
    "    fields:\n"
    "      id: string\n"
    "      s: {type: string, max_len: 64}\n"
    "      n: int\n"
    "      p: {type: decimal, scale: 2}\n"
    "      b: bool\n"
    "      t: timestamp\n"
    "      o: object\n"
    "      a: array\n"
    "      j: json\n"
    "      e: {type: enum, values: [A, B]}\n";

static void build_all(const struct cf_domain *d, const struct md_query *q)
{
    static const enum sql_dialect dialects[] = {SQL_PG, SQL_MYSQL};
    char err[256];
    for (size_t i = 0; i < sizeof(dialects) / sizeof(dialects[0]); i++) {
        struct sql_stmt st;
        sql_stmt_init(&st, dialects[i]);
        int rc = q->aggregate ? sql_build_aggregate(&st, d, q, err, sizeof(err))
                              : sql_build_query(&st, d, q, err, sizeof(err));
        (void)rc;
        sql_stmt_free(&st);
    }
    struct mg_plan *plan = NULL;
    struct mg_xerr x;
    memset(&x, 0, sizeof(x));
    if (mg_plan_new(d, q, &plan, &x) == 0) {
        mg_plan_free(plan);
    }
}

static void parse_and_build(const struct cf_domain *d, int aggregate, struct json_object *body)
{
    struct md_error e;
    memset(&e, 0, sizeof(e));
    struct md_query *q = NULL;
    if (md_query_parse(d, &cf->limits, cf->cursor_secret, aggregate, body, &q, &e) == 0) {
        build_all(d, q);
        md_query_free(q);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (cf == NULL) {
        ad_register_builtin();
        char err[256];
        struct json_object *doc = cf_yaml_load_string(schema, sizeof(schema) - 1, err, sizeof(err));
        cf = cf_config_from_json(doc, "fuzz", err, sizeof(err));
        json_object_put(doc);
        if (cf == NULL) {
            abort();
        }
    }
    if (size < 1) {
        return 0;
    }
    const struct cf_domain *d = &cf->domains[0];
    int mode = data[0] % 3;
    char msg[200];
    struct json_object *v = NULL;
    if (lb_json_parse((const char *)data + 1, size - 1, 16, &v, msg, sizeof(msg)) != LB_JSON_OK) {
        return 0;
    }
    if (mode < 2) {
        parse_and_build(d, mode, v);
        json_object_put(v);
        return 0;
    }
    /* mode 2: v is the sort values of the last row of a page ordered by
     * s desc, t, id */
    struct json_object *base = json_tokener_parse("{\"order_by\":[\"-s\",\"t\"],\"limit\":5}");
    struct md_error e;
    memset(&e, 0, sizeof(e));
    struct md_query *q = NULL;
    if (md_query_parse(d, &cf->limits, cf->cursor_secret, 0, base, &q, &e) != 0) {
        abort(); /* the fixed body is valid */
    }
    char *cursor = json_object_is_type(v, json_type_array) ? md_query_cursor_make(q, v) : NULL;
    md_query_free(q);
    if (cursor != NULL) {
        json_object_object_add(base, "cursor", json_object_new_string(cursor));
        free(cursor);
        parse_and_build(d, 0, base);
    }
    json_object_put(base);
    json_object_put(v);
    return 0;
}
