/*
 * fuzz_config.c — YAML/JSON text → config loader and validator.
 */
#include <stdint.h>
#include <stdlib.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "config/cf_yaml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ad_register_builtin();
    char err[512];
    struct json_object *doc = cf_yaml_load_string((const char *)data, size, err, sizeof(err));
    if (doc == NULL) {
        return 0;
    }
    struct cf_config *cf = cf_config_from_json(doc, "fuzz", err, sizeof(err));
    cf_config_unref(cf);
    json_object_put(doc);
    return 0;
}
