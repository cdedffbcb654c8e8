/*
 * fuzz_route.c — ids and shard keys as they arrive in a path or a query
 * string (bytes, percent-decoded by the HTTP layer) → the item-key check
 * (md_key_check) and shard-key routing (gw_route_text, string and int keys).
 *
 * Besides "no crash", it checks that an id is accepted exactly when a
 * string in a body could carry it: the bytes, written as a JSON string
 * (quote and backslash escaped), parse with lb_json_parse into the same
 * bytes iff md_key_check takes them (length and control characters aside).
 * Input: first byte selects the shard-key domain (bit 0: int key), the rest
 * is the id.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "config/cf_yaml.h"
#include "gateway/gw_route.h"
#include "lib/lb_json.h"
#include "model/md_item.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct cf_config *cf;

static const char schema[] = "backends:\n"
                             "  p: {type: pg, shards: [{name: a, dsn: 'host=x'}]}\n"
                             "domains:\n"
                             "  s:\n"
                             "    backend: p\n"
                             "    table: s\n"
                             "    key: id\n"
                             "    shard_key: cust\n"
                             "    fields: {id: string, cust: {type: string, required: true}}\n"
                             "  i:\n"
                             "    backend: p\n"
                             "    table: i\n"
                             "    key: id\n"
                             "    shard_key: cust\n"
                             "    fields: {id: string, cust: {type: int, required: true}}\n";

/* Does a body's string carry exactly these bytes?  ["<escaped bytes>"] */
static int body_string_carries(const uint8_t *s, size_t n)
{
    char *doc = malloc(2 * n + 5);
    if (doc == NULL) {
        abort();
    }
    size_t o = 0;
    doc[o++] = '[';
    doc[o++] = '"';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            doc[o++] = '\\';
        }
        doc[o++] = (char)s[i];
    }
    doc[o++] = '"';
    doc[o++] = ']';
    char msg[200];
    struct json_object *v = NULL;
    int ok = lb_json_parse(doc, o, 4, &v, msg, sizeof(msg)) == LB_JSON_OK;
    if (ok) {
        struct json_object *str = json_object_array_get_idx(v, 0);
        if ((size_t)json_object_get_string_len(str) != n ||
            memcmp(json_object_get_string(str), s, n) != 0) {
            abort(); /* parsed into other bytes */
        }
    }
    json_object_put(v);
    free(doc);
    return ok;
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
    if (size == 0) {
        return 0;
    }
    const struct cf_domain *d = cf_domain_find(cf, data[0] & 1 ? "i" : "s", 1);
    const uint8_t *id = data + 1;
    size_t n = size - 1;

    struct md_error e;
    memset(&e, 0, sizeof(e));
    int key_ok = md_key_check((const char *)id, n, &e) == 0;
    int ctl = 0;
    for (size_t i = 0; i < n; i++) {
        ctl |= id[i] < 0x20 || id[i] == 0x7f;
    }
    if (n >= 1 && n <= 512 && !ctl && key_ok != body_string_carries(id, n)) {
        abort(); /* an id is taken iff a body's string could carry it */
    }
    if (key_ok && lb_utf8_check((const char *)id, n) != n) {
        abort();
    }

    struct gw_route rt;
    memset(&e, 0, sizeof(e));
    if (gw_route_text(d, (const char *)id, n, &rt, &e) == 0) {
        if (rt.shard < 0 || (size_t)rt.shard >= d->backend->nshards) {
            abort();
        }
        if (!(data[0] & 1) &&
            (memchr(id, '\0', n) != NULL || lb_utf8_check((const char *)id, n) != n)) {
            abort(); /* a string shard key is what a body's string may be */
        }
    } else if (e.field == NULL || strcmp(e.field, "cust") != 0) {
        abort(); /* every refusal names the shard key */
    }
    return 0;
}
