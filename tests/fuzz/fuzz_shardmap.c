/*
 * fuzz_shardmap.c — shard map documents (YAML/JSON) → validation, the ring,
 * the slot table, and a diff against a fixed map.
 */
#include <stdint.h>
#include <stdlib.h>

#include "config/cf_yaml.h"
#include "routing/rt_shardmap.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    struct json_object *doc = cf_yaml_load_string((const char *)data, size, err, sizeof(err));
    if (doc == NULL) {
        return 0;
    }
    struct rt_shardmap *m = rt_shardmap_from_json(doc, err, sizeof(err));
    json_object_put(doc);
    if (m == NULL) {
        return 0;
    }
    static const char base_text[] =
        "{\"version\":1,\"slots\":64,\"vnodes\":16,\"shards\":[{\"name\":\"a\",\"dsn\":\"x\"},"
        "{\"name\":\"b\",\"dsn\":\"y\"}]}";
    struct json_object *bd =
        cf_yaml_load_string(base_text, sizeof(base_text) - 1, err, sizeof(err));
    struct rt_shardmap *b = bd != NULL ? rt_shardmap_from_json(bd, err, sizeof(err)) : NULL;
    json_object_put(bd);
    uint32_t slot;
    uint64_t hash;
    (void)rt_shardmap_route(m, data, size, &hash, &slot);
    if (b != NULL) {
        struct rt_slot_move *moves = NULL;
        size_t n = 0;
        if (rt_shardmap_diff(b, m, &moves, &n, err, sizeof(err)) == 0) {
            free(moves);
        }
        rt_shardmap_unref(b);
    }
    rt_shardmap_unref(m);
    return 0;
}
