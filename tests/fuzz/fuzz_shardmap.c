/*
 * fuzz_shardmap.c — shard map documents (YAML/JSON) → validation, the ring,
 * the slot table, and a diff against a fixed map; then every valid map is
 * written as the YAML polygate writes map files in (rb_mapfile_yaml, with
 * the input's first bytes as the header) and read back: it must give the
 * same shards, DSNs, weights and owner of every slot.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/cf_yaml.h"
#include "rebalance/rb_mapfile.h"
#include "routing/rt_shardmap.h"

/* The map written as a map file and read back is the same map. */
static void round_trip(const struct rt_shardmap *m, const uint8_t *data, size_t size)
{
    char header[65], err[512];
    size_t hl = size < sizeof(header) - 1 ? size : sizeof(header) - 1;
    memcpy(header, data, hl);
    header[hl] = '\0';
    struct json_object *doc = rb_mapfile_doc(m);
    size_t len = 0;
    char *text = rb_mapfile_yaml(doc, header, &len);
    json_object_put(doc);
    if (text == NULL) {
        abort(); /* out of memory only */
    }
    struct json_object *back = cf_yaml_load_string(text, len, err, sizeof(err));
    struct rt_shardmap *r = back != NULL ? rt_shardmap_from_json(back, err, sizeof(err)) : NULL;
    json_object_put(back);
    if (r == NULL || rt_shardmap_version(r) != rt_shardmap_version(m) ||
        rt_shardmap_nslots(r) != rt_shardmap_nslots(m) ||
        rt_shardmap_nshards(r) != rt_shardmap_nshards(m)) {
        abort();
    }
    for (size_t i = 0; i < rt_shardmap_nshards(m); i++) {
        if (strcmp(rt_shardmap_shard_name(r, i), rt_shardmap_shard_name(m, i)) != 0 ||
            strcmp(rt_shardmap_shard_dsn(r, i), rt_shardmap_shard_dsn(m, i)) != 0 ||
            rt_shardmap_shard_weight(r, i) != rt_shardmap_shard_weight(m, i)) {
            abort();
        }
    }
    for (uint32_t s = 0; s < rt_shardmap_nslots(m); s++) {
        if (rt_shardmap_slot_owner(r, s) != rt_shardmap_slot_owner(m, s)) {
            abort();
        }
    }
    rt_shardmap_unref(r);
    free(text);
}

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
    round_trip(m, data, size);
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
