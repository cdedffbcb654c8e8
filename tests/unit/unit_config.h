/*
 * unit_config.h — a config from JSON text, for unit tests: the built-in
 * adapters registered (the config checks domains against them), a parse
 * error printed.  NULL on error.
 */
#ifndef UNIT_CONFIG_H
#define UNIT_CONFIG_H

#include <stdio.h>

#include <json-c/json.h>

#include "adapters/ad.h"
#include "config/cf_config.h"

static inline struct cf_config *unit_config(const char *json)
{
    char err[256];
    ad_register_builtin();
    struct json_object *root = json_tokener_parse(json);
    struct cf_config *cf = cf_config_from_json(root, "test", err, sizeof(err));
    json_object_put(root);
    if (cf == NULL) {
        fprintf(stderr, "config: %s\n", err);
    }
    return cf;
}

#endif
