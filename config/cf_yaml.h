/*
 * cf_yaml.h — YAML (and JSON, which YAML 1.2 reads) documents as json-c
 * trees, so that configs and shard maps have one loader.
 *
 * Plain (unquoted) scalars become integers, reals, booleans (true/false) or
 * null (null, ~, empty) when they look like one; every other scalar, and
 * every quoted one, is a string.  ${NAME} in a scalar is replaced by the
 * environment variable NAME (an unset variable is an error).
 */
#ifndef CF_YAML_H
#define CF_YAML_H

#include <stddef.h>

#include <json-c/json.h>

struct json_object *cf_yaml_load_file(const char *path, char *err, size_t errlen);
struct json_object *cf_yaml_load_string(const char *text, size_t len, char *err, size_t errlen);

#endif
