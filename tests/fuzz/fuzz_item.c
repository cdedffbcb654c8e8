/*
 * fuzz_item.c — a request body → JSON parser (depth limit, UTF-8) → item and
 * patch validation against a schema with every field type.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "config/cf_yaml.h"
#include "lib/lb_json.h"
#include "model/md_item.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct cf_config *cf;

static const char schema[] =
    "backends: {r: {type: redis, shards: [{name: r, dsn: 'redis://127.0.0.1:1/0'}]}}\n"
    "domains:\n"
    "  d:\n"
    "    backend: r\n"
    "    kind: value\n"
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
    "      e: {type: enum, values: [A, B]}\n"
    "      c: {type: timestamp, auto: created}\n";

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
    const struct cf_domain *d = &cf->domains[0];
    char msg[200];
    struct json_object *v = NULL;
    if (lb_json_parse((const char *)data, size, 16, &v, msg, sizeof(msg)) != LB_JSON_OK) {
        return 0;
    }
    struct md_error e;
    memset(&e, 0, sizeof(e));
    struct json_object *copy = NULL;
    json_object_deep_copy(v, &copy, NULL);
    (void)md_item_check(d, &cf->limits, MD_ITEM_INSERT, NULL, v, &e);
    if (md_patch_check(d, &cf->limits, copy, &e) == 0) {
        struct json_object *item = json_object_new_object();
        (void)md_patch_apply(d, item, copy, &e);
        json_object_put(item);
    }
    json_object_put(copy);
    json_object_put(v);
    return 0;
}
