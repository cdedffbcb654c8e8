/*
 * cf_config.c — config tree → struct cf_config, with full validation.
 *
 * The scalar settings are table-driven ({name, type, offset, default, range});
 * backends and domains are parsed by hand because they are nested.  Every
 * error names the offending key path, e.g. "domains.sessions.ttl_s: …".
 */
#include "config/cf_config.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>
#include <stdatomic.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "config/cf_yaml.h"
#include "lib/lb_util.h"
#include "routing/rt_live.h"
#include "routing/rt_shardmap.h"

#define JIS_OBJ(v) json_object_is_type((v), json_type_object)
#define JIS_ARR(v) json_object_is_type((v), json_type_array)
#define JIS_STR(v) json_object_is_type((v), json_type_string)
#define JIS_INT(v) json_object_is_type((v), json_type_int)
#define JIS_BOOL(v) json_object_is_type((v), json_type_boolean)
#define JIS_NULL(v) ((v) == NULL)

#define CERR(...)                                                                                  \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        return -1;                                                                                 \
    } while (0)

/* ---- what the adapters check ------------------------------------------ */

static const struct cf_adapter_checks *_Atomic adapter_checks;

void cf_config_set_adapter_checks(const struct cf_adapter_checks *checks)
{
    atomic_store(&adapter_checks, checks);
}

/* ---- scalar settings table ------------------------------------------- */

enum opt_kind { OPT_INT, OPT_I64, OPT_SIZE, OPT_STR };

struct opt {
    const char *name;
    enum opt_kind kind;
    size_t offset;
    const char *def; /* textual default */
    long long min, max;
};

#define OFF(f) offsetof(struct cf_config, f)
static const struct opt top_opts[] = {
    {"workers", OPT_INT, OFF(workers), "0", 0, 64},
    {"shutdown_timeout_ms", OPT_I64, OFF(shutdown_timeout_ms), "10000", 0, 3600000},
    {"log_level", OPT_STR, OFF(log_level), "info", 0, 0},
    {"access_log", OPT_STR, OFF(access_log), "stderr", 0, 0},
    /* "" (unset): a random secret of this process (process_cursor_secret) */
    {"cursor_secret", OPT_STR, OFF(cursor_secret), "", 0, 0},
    {NULL, 0, 0, NULL, 0, 0},
};
#undef OFF
#define OFF(f) offsetof(struct cf_limits, f)
static const struct opt limit_opts[] = {
    {"max_body_bytes", OPT_SIZE, OFF(max_body), "1048576", 64, 1LL << 30},
    {"max_header_bytes", OPT_SIZE, OFF(max_headers), "16384", 256, 1 << 20},
    {"max_json_depth", OPT_INT, OFF(max_json_depth), "32", 2, 1000},
    {"max_string_bytes", OPT_SIZE, OFF(max_string), "262144", 16, 1LL << 30},
    {"max_batch_items", OPT_INT, OFF(max_batch), "100", 1, 100000},
    {"max_in_items", OPT_INT, OFF(max_in), "1000", 1, 1000000},
    {"max_limit", OPT_INT, OFF(max_limit), "1000", 1, 1000000},
    {"request_timeout_ms", OPT_I64, OFF(request_timeout_ms), "5000", 1, 3600000},
    {"idle_timeout_s", OPT_I64, OFF(idle_timeout_s), "60", 1, 86400},
    {"request_read_timeout_s", OPT_I64, OFF(request_read_timeout_s), "30", 1, 3600},
    {"max_url_bytes", OPT_SIZE, OFF(max_url), "8192", 64, 1 << 20},
    {"max_header_count", OPT_INT, OFF(max_header_count), "64", 8, 128},
    {"max_inflight", OPT_INT, OFF(max_inflight), "10000", 1, 10000000},
    {"max_connections", OPT_INT, OFF(max_connections), "10000", 1, 10000000},
    {"max_query_conditions", OPT_INT, OFF(max_query_conditions), "256", 1, 100000},
    {"max_query_depth", OPT_INT, OFF(max_query_depth), "8", 1, 64},
    {"max_filter_bytes", OPT_SIZE, OFF(max_filter_bytes), "65536", 64, 1LL << 30},
    {"max_prefix_conditions", OPT_INT, OFF(max_prefix_conditions), "16", 1, 100000},
    {"max_prefix_bytes", OPT_SIZE, OFF(max_prefix_bytes), "256", 1, 1 << 20},
    {"max_output_bytes", OPT_SIZE, OFF(max_output), "1048576", 4096, 1LL << 30},
    {"output_drain_timeout_s", OPT_I64, OFF(output_drain_timeout_s), "30", 1, 3600},
    /* one answer's size, and requests in flight per API key (0 = no limit) */
    {"max_response_bytes", OPT_SIZE, OFF(max_response_bytes), "8388608", 1024, 1LL << 32},
    {"max_inflight_per_key", OPT_INT, OFF(max_inflight_per_key), "256", 0, 10000000},
    {NULL, 0, 0, NULL, 0, 0},
};
#undef OFF
#define OFF(f) offsetof(struct cf_breaker, f)
static const struct opt breaker_opts[] = {
    {"failures", OPT_INT, OFF(failures), "5", 0, 1000000},
    {"open_ms", OPT_I64, OFF(open_ms), "2000", 10, 3600000},
    {NULL, 0, 0, NULL, 0, 0},
};
#undef OFF
#define OFF(f) offsetof(struct cf_idempotency, f)
static const struct opt idempotency_opts[] = {
    {"ttl_s", OPT_I64, OFF(ttl_s), "86400", 1, 30LL * 86400},
    {"max_entries", OPT_SIZE, OFF(max_entries), "100000", 1, 100000000},
    {"max_bytes", OPT_SIZE, OFF(max_bytes), "67108864", 4096, 1LL << 36},
    {NULL, 0, 0, NULL, 0, 0},
};
#undef OFF

static int apply_opts(const struct opt *opts, void *base, struct json_object *obj, const char *ctx,
                      char *err, size_t errlen)
{
    if (obj != NULL && !JIS_OBJ(obj)) {
        CERR("%s: must be a mapping", ctx);
    }
    /* unknown keys are errors: a typo must not silently become a default */
    if (obj == NULL) {
        goto apply;
    }
    json_object_object_foreach(obj, k, v)
    {
        (void)v;
        const struct opt *o = opts;
        while (o->name != NULL && strcmp(o->name, k) != 0) {
            o++;
        }
        if (o->name == NULL && strcmp(ctx, "") == 0) {
            continue; /* top level: the other sections are parsed elsewhere */
        }
        if (o->name == NULL) {
            CERR("%s.%s: unknown setting", ctx, k);
        }
    }
apply:
    for (const struct opt *o = opts; o->name != NULL; o++) {
        struct json_object *val = obj != NULL ? json_object_object_get(obj, o->name) : NULL;
        char *p = (char *)base + o->offset;
        const char *sep = ctx[0] != '\0' ? "." : "";
        if (o->kind == OPT_STR) {
            const char *s = o->def;
            if (val != NULL) {
                if (!JIS_STR(val)) {
                    CERR("%s%s%s: must be a string", ctx, sep, o->name);
                }
                s = json_object_get_string(val);
            }
            *(char **)p = lb_xstrdup(s);
            continue;
        }
        long long n = strtoll(o->def, NULL, 10);
        if (val != NULL) {
            if (!JIS_INT(val)) {
                CERR("%s%s%s: must be an integer", ctx, sep, o->name);
            }
            n = json_object_get_int64(val);
        }
        if (n < o->min || n > o->max) {
            CERR("%s%s%s: %lld is out of range [%lld, %lld]", ctx, sep, o->name, n, o->min, o->max);
        }
        switch (o->kind) {
        case OPT_SIZE:
            *(size_t *)p = (size_t)n;
            break;
        case OPT_I64:
            *(int64_t *)p = n;
            break;
        case OPT_INT:
            *(int *)p = (int)n;
            break;
        case OPT_STR:
            break;
        }
    }
    return 0;
}

/* ---- helpers ----------------------------------------------------------- */

static int get_str(struct json_object *obj, const char *name, const char *def, char **out,
                   const char *ctx, char *err, size_t errlen)
{
    struct json_object *v = json_object_object_get(obj, name);
    if (v == NULL || JIS_NULL(v)) {
        if (def == NULL) {
            CERR("%s.%s: required", ctx, name);
        }
        *out = lb_xstrdup(def);
        return 0;
    }
    if (!JIS_STR(v) || json_object_get_string_len(v) == 0) {
        CERR("%s.%s: must be a non-empty string", ctx, name);
    }
    *out = lb_xstrdup(json_object_get_string(v));
    return 0;
}

static int get_int(struct json_object *obj, const char *name, long long def, long long min,
                   long long max, long long *out, const char *ctx, char *err, size_t errlen)
{
    struct json_object *v = json_object_object_get(obj, name);
    if (v == NULL) {
        *out = def;
        return 0;
    }
    if (!JIS_INT(v)) {
        CERR("%s.%s: must be an integer", ctx, name);
    }
    long long n = json_object_get_int64(v);
    if (n < min || n > max) {
        CERR("%s.%s: %lld is out of range [%lld, %lld]", ctx, name, n, min, max);
    }
    *out = n;
    return 0;
}

static int get_bool(struct json_object *obj, const char *name, int def, int *out, const char *ctx,
                    char *err, size_t errlen)
{
    struct json_object *v = json_object_object_get(obj, name);
    if (v == NULL) {
        *out = def;
        return 0;
    }
    if (!JIS_BOOL(v)) {
        CERR("%s.%s: must be true or false", ctx, name);
    }
    *out = json_object_get_boolean(v);
    return 0;
}

static int check_keys(struct json_object *obj, const char *const *allowed, const char *ctx,
                      char *err, size_t errlen)
{
    json_object_object_foreach(obj, k, v)
    {
        (void)v;
        const char *const *a = allowed;
        while (*a != NULL && strcmp(*a, k) != 0) {
            a++;
        }
        if (*a == NULL) {
            CERR("%s.%s: unknown setting", ctx, k);
        }
    }
    return 0;
}

static int parse_hostport(const char *s, const char *ctx, char **host, int *port, char *err,
                          size_t errlen)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s) {
        CERR("%s: '%s' must be host:port", ctx, s);
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || p < 0 || p > 65535 || colon[1] < '0' || colon[1] > '9') {
        CERR("%s: bad port in '%s'", ctx, s);
    }
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (h[0] == '[') { /* [::1]:9090 */
        if (hl < 3 || h[hl - 1] != ']') {
            CERR("%s: bad IPv6 address in '%s'", ctx, s);
        }
        h++;
        hl -= 2;
    }
    *host = lb_xstrndup(h, hl);
    *port = (int)p;
    return 0;
}

/* A name made of printable ASCII without spaces (etcd key parts). */
static int plain_name(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] <= ' ' || s[i] > '~') {
            return 0;
        }
    }
    return 1;
}

/* control: {etcd: host:port, prefix, instance, lease_ttl_s, redis}. */
static int parse_control(struct cf_config *cf, struct json_object *obj, char *err, size_t errlen)
{
    struct cf_control *c = &cf->control;
    c->lease_ttl_s = 5;
    if (obj == NULL || JIS_NULL(obj)) {
        return 0;
    }
    if (!JIS_OBJ(obj)) {
        CERR("control: must be a mapping");
    }
    static const char *const allowed[] = {"etcd",        "prefix", "instance",
                                          "lease_ttl_s", "redis",  NULL};
    if (check_keys(obj, allowed, "control", err, errlen) < 0) {
        return -1;
    }
    char *s;
    if (get_str(obj, "etcd", NULL, &s, "control", err, errlen) < 0) {
        return -1;
    }
    int rc = parse_hostport(s, "control.etcd", &c->etcd_host, &c->etcd_port, err, errlen);
    free(s);
    if (rc < 0) {
        return -1;
    }
    if (get_str(obj, "prefix", "/polygate/default", &c->prefix, "control", err, errlen) < 0) {
        return -1;
    }
    size_t pl = strlen(c->prefix);
    if (c->prefix[0] != '/' || pl < 2 || c->prefix[pl - 1] == '/' || !plain_name(c->prefix, 200)) {
        CERR("control.prefix: '%s' must start with '/', not end with '/', and hold at most 200 "
             "printable characters without spaces",
             c->prefix);
    }
    if (json_object_object_get(obj, "instance") != NULL) {
        if (get_str(obj, "instance", NULL, &c->instance, "control", err, errlen) < 0) {
            return -1;
        }
        if (!plain_name(c->instance, 128) || strchr(c->instance, '/') != NULL) {
            CERR("control.instance: '%s' must be 1-128 printable characters without spaces or '/'",
                 c->instance);
        }
    }
    long long ttl;
    if (get_int(obj, "lease_ttl_s", 5, 2, 3600, &ttl, "control", err, errlen) < 0) {
        return -1;
    }
    c->lease_ttl_s = ttl;
    if (get_str(obj, "redis", NULL, &c->redis, "control", err, errlen) < 0) {
        return -1;
    }
    if (strncmp(c->redis, "redis://", 8) != 0 || c->redis[8] == '\0') {
        CERR("control.redis: '%s' must be redis://host:port[/db]", c->redis);
    }
    return 0;
}

/* ---- types ------------------------------------------------------------- */

static const struct {
    const char *name;
    enum cf_type type;
} type_names[] = {
    {"string", CF_T_STRING},       {"int", CF_T_INT},
    {"decimal", CF_T_DECIMAL},     {"bool", CF_T_BOOL},
    {"timestamp", CF_T_TIMESTAMP}, {"object", CF_T_OBJECT},
    {"array", CF_T_ARRAY},         {"json", CF_T_JSON},
    {"enum", CF_T_ENUM},           {"counters", CF_T_COUNTERS},
};

const char *cf_type_name(enum cf_type t)
{
    for (size_t i = 0; i < sizeof(type_names) / sizeof(type_names[0]); i++) {
        if (type_names[i].type == t) {
            return type_names[i].name;
        }
    }
    return "?";
}

static int parse_field(struct cf_field *f, const char *name, struct json_object *spec,
                       const char *dctx, char *err, size_t errlen)
{
    char ctx[256];
    snprintf(ctx, sizeof(ctx), "%s.fields.%s", dctx, name);
    f->name = lb_xstrdup(name);
    f->scale = -1;
    if (name[0] == '\0' || name[0] == '$' || strchr(name, '.') != NULL) {
        CERR("%s: field names must not be empty, start with '$' or contain '.'", ctx);
    }
    if (JIS_STR(spec)) { /* shorthand: `email: string` */
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "type", json_object_get(spec));
        free(f->name); /* parse_field sets it again */
        int rc = parse_field(f, name, o, dctx, err, errlen);
        json_object_put(o);
        return rc;
    }
    if (!JIS_OBJ(spec)) {
        CERR("%s: must be a type name or a mapping", ctx);
    }
    static const char *const allowed[] = {"type",  "required",  "unique",  "index",
                                          "scale", "precision", "max_len", "values",
                                          "items", "auto",      NULL};
    if (check_keys(spec, allowed, ctx, err, errlen) < 0) {
        return -1;
    }
    char *tname;
    if (get_str(spec, "type", NULL, &tname, ctx, err, errlen) < 0) {
        return -1;
    }
    size_t i;
    for (i = 0; i < sizeof(type_names) / sizeof(type_names[0]); i++) {
        if (strcmp(type_names[i].name, tname) == 0) {
            break;
        }
    }
    if (i == sizeof(type_names) / sizeof(type_names[0])) {
        snprintf(err, errlen,
                 "%s.type: unknown type '%s' (string, int, decimal, bool, timestamp, object, "
                 "array, json, enum, counters)",
                 ctx, tname);
        free(tname);
        return -1;
    }
    free(tname);
    f->type = type_names[i].type;
    long long n;
    if (get_bool(spec, "required", 0, &f->required, ctx, err, errlen) < 0 ||
        get_bool(spec, "unique", 0, &f->unique, ctx, err, errlen) < 0 ||
        get_bool(spec, "index", 0, &f->indexed, ctx, err, errlen) < 0) {
        return -1;
    }
    if (get_int(spec, "scale", f->type == CF_T_DECIMAL ? 2 : -1, -1, 30, &n, ctx, err, errlen) <
        0) {
        return -1;
    }
    f->scale = (int)n;
    if (get_int(spec, "precision", 18, 1, 65, &n, ctx, err, errlen) < 0) {
        return -1;
    }
    f->precision = (int)n;
    if (get_int(spec, "max_len", 0, 0, 1LL << 30, &n, ctx, err, errlen) < 0) {
        return -1;
    }
    f->max_len = (size_t)n;
    struct json_object *vals = json_object_object_get(spec, "values");
    if (f->type == CF_T_ENUM) {
        if (!JIS_ARR(vals) || json_object_array_length(vals) == 0) {
            CERR("%s.values: an enum needs a non-empty list of strings", ctx);
        }
        f->nvalues = json_object_array_length(vals);
        f->values = lb_xcalloc(f->nvalues, sizeof(char *));
        for (size_t k = 0; k < f->nvalues; k++) {
            struct json_object *s = json_object_array_get_idx(vals, k);
            if (!JIS_STR(s)) {
                CERR("%s.values[%zu]: must be a string", ctx, k);
            }
            f->values[k] = lb_xstrdup(json_object_get_string(s));
        }
    } else if (vals != NULL) {
        CERR("%s.values: only enums take values", ctx);
    }
    struct json_object *aut = json_object_object_get(spec, "auto");
    if (aut != NULL) {
        if (!JIS_STR(aut) || strcmp(json_object_get_string(aut), "created") != 0 ||
            f->type != CF_T_TIMESTAMP) {
            CERR("%s.auto: only `auto: created` on a timestamp field is supported", ctx);
        }
        f->auto_created = 1;
    }
    struct json_object *items = json_object_object_get(spec, "items");
    if (items != NULL) {
        f->item_schema = json_object_get(items);
    }
    return 0;
}

/* ---- backends ----------------------------------------------------------- */

#define SHARD_MAP_MAX_BYTES (16u << 20)

/* cf_config_load_with_map(): the shard map document that replaces one
 * backend's shard_map file for this load (thread-local: loads on different
 * threads do not see each other's). */
static __thread struct {
    const char *backend;
    struct json_object *doc;
} map_override;

/* `shard_map: path`: relative to the config file's directory.  The file is
 * read with the config's loader (YAML or JSON), validated fully by
 * rt_shardmap_from_json, and its shards become the backend's shard list. */
static int load_shard_map(struct cf_backend *be, const char *path, const char *cfg_path,
                          const char *ctx, char *err, size_t errlen)
{
    const char *slash = cfg_path != NULL ? strrchr(cfg_path, '/') : NULL;
    size_t dirlen = path[0] == '/' || slash == NULL ? 0 : (size_t)(slash - cfg_path) + 1;
    size_t plen = strlen(path);
    char *full = malloc(dirlen + plen + 1); /* joined whole, whatever the lengths */
    if (full == NULL) {
        CERR("%s.shard_map: out of memory", ctx);
    }
    if (dirlen > 0) {
        memcpy(full, cfg_path, dirlen); /* the directory with its '/' */
    }
    memcpy(full + dirlen, path, plen + 1);
    be->shard_map_path = full; /* freed with the backend */
    char lerr[400];
    struct json_object *doc = NULL;
    if (map_override.backend != NULL && strcmp(map_override.backend, be->name) == 0) {
        doc = json_object_get(map_override.doc); /* PUT /admin/shardmap: not read from the file */
    } else {
        struct stat sb;
        if (stat(full, &sb) < 0) {
            CERR("%s.shard_map: cannot read '%s': %s", ctx, full, strerror(errno));
        }
        if (!S_ISREG(sb.st_mode) || sb.st_size > (off_t)SHARD_MAP_MAX_BYTES) {
            CERR("%s.shard_map: '%s' is not a regular file of at most %u bytes", ctx, full,
                 SHARD_MAP_MAX_BYTES);
        }
        doc = cf_yaml_load_file(full, lerr, sizeof(lerr));
        if (doc == NULL) {
            CERR("%s.shard_map: %s", ctx, lerr);
        }
    }
    be->map = rt_shardmap_from_json(doc, lerr, sizeof(lerr));
    json_object_put(doc);
    if (be->map == NULL) {
        CERR("%s.shard_map: '%s': %s", ctx, full, lerr);
    }
    be->nshards = rt_shardmap_nshards(be->map);
    be->shards = lb_xcalloc(be->nshards, sizeof(*be->shards));
    for (size_t i = 0; i < be->nshards; i++) {
        be->shards[i].name = lb_xstrdup(rt_shardmap_shard_name(be->map, i));
        be->shards[i].dsn = lb_xstrdup(rt_shardmap_shard_dsn(be->map, i));
        be->shards[i].weight = (int)rt_shardmap_shard_weight(be->map, i);
    }
    return 0;
}

/* A one-shard backend hosting a sharded domain: the trivial map over its
 * shard, so that every sharded domain routes (and stores slots) the same way. */
static int implicit_shard_map(struct cf_backend *be, char *err, size_t errlen)
{
    struct json_object *doc = json_object_new_object();
    struct json_object *shards = json_object_new_array();
    struct json_object *s = json_object_new_object();
    json_object_object_add(s, "name", json_object_new_string(be->shards[0].name));
    json_object_object_add(s, "dsn", json_object_new_string(be->shards[0].dsn));
    json_object_array_add(shards, s);
    json_object_object_add(doc, "version", json_object_new_int(1));
    json_object_object_add(doc, "vnodes", json_object_new_int(1));
    json_object_object_add(doc, "shards", shards);
    char lerr[256];
    be->map = rt_shardmap_from_json(doc, lerr, sizeof(lerr));
    json_object_put(doc);
    if (be->map == NULL) {
        CERR("backends.%s: %s", be->name, lerr);
    }
    return 0;
}

static int parse_backend(struct cf_backend *be, const char *name, struct json_object *spec,
                         const char *cfg_path, char *err, size_t errlen)
{
    char ctx[256];
    snprintf(ctx, sizeof(ctx), "backends.%s", name);
    be->name = lb_xstrdup(name);
    if (!JIS_OBJ(spec)) {
        CERR("%s: must be a mapping", ctx);
    }
    static const char *const allowed[] = {"type", "shards", "pool", "shard_map", "options", NULL};
    if (check_keys(spec, allowed, ctx, err, errlen) < 0) {
        return -1;
    }
    if (get_str(spec, "type", NULL, &be->type, ctx, err, errlen) < 0) {
        return -1;
    }
    const struct cf_adapter_checks *ac = atomic_load(&adapter_checks);
    if (ac == NULL || !ac->type_known(be->type)) {
        CERR("%s.type: no adapter named '%s' is built in", ctx, be->type);
    }
    struct json_object *shards = json_object_object_get(spec, "shards");
    struct json_object *map = json_object_object_get(spec, "shard_map");
    if (map != NULL) {
        if (!JIS_STR(map)) {
            CERR("%s.shard_map: must be a file path", ctx);
        }
        if (shards != NULL) {
            CERR("%s: give `shards` or a `shard_map` file, not both", ctx);
        }
        if (load_shard_map(be, json_object_get_string(map), cfg_path, ctx, err, errlen) < 0) {
            return -1;
        }
    }
    if (shards == NULL && map == NULL) {
        CERR("%s: needs `shards` (a list of {name, dsn}) or a `shard_map` file", ctx);
    }
    if (shards != NULL) {
        if (!JIS_ARR(shards) || json_object_array_length(shards) == 0) {
            CERR("%s.shards: must be a non-empty list", ctx);
        }
        be->nshards = json_object_array_length(shards);
        be->shards = lb_xcalloc(be->nshards, sizeof(*be->shards));
        for (size_t i = 0; i < be->nshards; i++) {
            struct json_object *s = json_object_array_get_idx(shards, i);
            char sctx[300];
            snprintf(sctx, sizeof(sctx), "%s.shards[%zu]", ctx, i);
            if (!JIS_OBJ(s)) {
                CERR("%s: must be a mapping {name, dsn}", sctx);
            }
            static const char *const sallowed[] = {"name", "dsn", "weight", NULL};
            long long w;
            if (check_keys(s, sallowed, sctx, err, errlen) < 0 ||
                get_str(s, "name", NULL, &be->shards[i].name, sctx, err, errlen) < 0 ||
                get_str(s, "dsn", NULL, &be->shards[i].dsn, sctx, err, errlen) < 0 ||
                get_int(s, "weight", 1, 1, 1000, &w, sctx, err, errlen) < 0) {
                return -1;
            }
            be->shards[i].weight = (int)w;
            for (size_t j = 0; j < i; j++) {
                if (strcmp(be->shards[j].name, be->shards[i].name) == 0) {
                    CERR("%s.name: duplicate shard name '%s'", sctx, be->shards[i].name);
                }
            }
        }
    }
    struct json_object *pool = json_object_object_get(spec, "pool");
    char pctx[300];
    snprintf(pctx, sizeof(pctx), "%s.pool", ctx);
    if (pool != NULL && !JIS_OBJ(pool)) {
        CERR("%s: must be a mapping", pctx);
    }
    static const char *const pallowed[] = {
        "min", "max", "connect_timeout_ms", "queue_max", "backoff_min_ms", "backoff_max_ms", NULL};
    long long n;
    if (pool != NULL && check_keys(pool, pallowed, pctx, err, errlen) < 0) {
        return -1;
    }
    if (get_int(pool, "min", 1, 0, 1000, &n, pctx, err, errlen) < 0) {
        return -1;
    }
    be->pool.min = (int)n;
    if (get_int(pool, "max", 4, 1, 1000, &n, pctx, err, errlen) < 0) {
        return -1;
    }
    be->pool.max = (int)n;
    if (be->pool.min > be->pool.max) {
        CERR("%s.min: %d is larger than max %d", pctx, be->pool.min, be->pool.max);
    }
    if (get_int(pool, "connect_timeout_ms", 2000, 1, 600000, &n, pctx, err, errlen) < 0) {
        return -1;
    }
    be->pool.connect_timeout_ms = n;
    if (get_int(pool, "queue_max", 1024, 0, 1000000, &n, pctx, err, errlen) < 0) {
        return -1;
    }
    be->pool.queue_max = (int)n;
    if (get_int(pool, "backoff_min_ms", 100, 1, 600000, &n, pctx, err, errlen) < 0) {
        return -1;
    }
    be->pool.backoff_min_ms = n;
    if (get_int(pool, "backoff_max_ms", 5000, 1, 3600000, &n, pctx, err, errlen) < 0) {
        return -1;
    }
    be->pool.backoff_max_ms = n;
    struct json_object *opts = json_object_object_get(spec, "options");
    be->options = opts != NULL ? json_object_get(opts) : json_object_new_object();
    /* the signature: everything that makes two backends the same one */
    struct json_object *sig = json_object_new_object();
    json_object_object_add(sig, "spec", json_object_get(spec));
    struct json_object *sl = json_object_new_array();
    for (size_t i = 0; i < be->nshards; i++) { /* a shard map's shards count too */
        struct json_object *s = json_object_new_object();
        json_object_object_add(s, "name", json_object_new_string(be->shards[i].name));
        json_object_object_add(s, "dsn", json_object_new_string(be->shards[i].dsn));
        json_object_array_add(sl, s);
    }
    json_object_object_add(sig, "shards", sl);
    be->signature = lb_xstrdup(json_object_to_json_string_ext(sig, JSON_C_TO_STRING_PLAIN));
    json_object_put(sig);
    return 0;
}

/* ---- domains ----------------------------------------------------------- */

static int parse_domain(struct cf_config *cf, struct cf_domain *d, const char *name,
                        struct json_object *spec, char *err, size_t errlen)
{
    char ctx[256];
    snprintf(ctx, sizeof(ctx), "domains.%s", name);
    d->name = lb_xstrdup(name);
    if (name[0] == '_' || strchr(name, '/') != NULL) {
        CERR("%s: domain names must not start with '_' or contain '/'", ctx);
    }
    if (!JIS_OBJ(spec)) {
        CERR("%s: must be a mapping", ctx);
    }
    static const char *const allowed[] = {"backend",    "kind",         "table",     "prefix",
                                          "key",        "generate_key", "shard_key", "counters",
                                          "ttl_s",      "sliding_ttl",  "versioned", "auto_migrate",
                                          "timeout_ms", "fields",       NULL};
    if (check_keys(spec, allowed, ctx, err, errlen) < 0) {
        return -1;
    }
    if (get_str(spec, "backend", NULL, &d->backend_name, ctx, err, errlen) < 0) {
        return -1;
    }
    for (size_t i = 0; i < cf->nbackends; i++) {
        if (strcmp(cf->backends[i].name, d->backend_name) == 0) {
            d->backend = &cf->backends[i];
        }
    }
    if (d->backend == NULL) {
        CERR("%s.backend: no backend named '%s'", ctx, d->backend_name);
    }
    char *kind;
    if (get_str(spec, "kind", "record", &kind, ctx, err, errlen) < 0) {
        return -1;
    }
    if (strcmp(kind, "record") == 0) {
        d->kind = CF_KIND_RECORD;
    } else if (strcmp(kind, "value") == 0) {
        d->kind = CF_KIND_VALUE;
    } else if (strcmp(kind, "hash") == 0) {
        d->kind = CF_KIND_HASH;
    } else {
        snprintf(err, errlen, "%s.kind: '%s' is not one of record, value, hash", ctx, kind);
        free(kind);
        return -1;
    }
    free(kind);
    struct json_object *t = json_object_object_get(spec, "table");
    if (t == NULL) {
        t = json_object_object_get(spec, "prefix");
    }
    if (t != NULL && !JIS_STR(t)) {
        CERR("%s.table: must be a string", ctx);
    }
    d->table = lb_xstrdup(t != NULL ? json_object_get_string(t) : name);
    if (get_str(spec, "key", NULL, &d->key, ctx, err, errlen) < 0) {
        return -1;
    }
    struct json_object *sk = json_object_object_get(spec, "shard_key");
    if (sk != NULL) {
        if (!JIS_STR(sk)) {
            CERR("%s.shard_key: must be a field name", ctx);
        }
        d->shard_key = lb_xstrdup(json_object_get_string(sk));
    }
    struct json_object *ct = json_object_object_get(spec, "counters");
    if (ct != NULL) {
        if (!JIS_STR(ct)) {
            CERR("%s.counters: must be a field name", ctx);
        }
        d->counters_field = lb_xstrdup(json_object_get_string(ct));
    }
    long long n;
    if (get_bool(spec, "generate_key", 1, &d->key_generated, ctx, err, errlen) < 0 ||
        get_bool(spec, "sliding_ttl", 0, &d->sliding_ttl, ctx, err, errlen) < 0 ||
        get_bool(spec, "versioned", d->kind != CF_KIND_HASH, &d->versioned, ctx, err, errlen) < 0 ||
        get_bool(spec, "auto_migrate", 0, &d->auto_migrate, ctx, err, errlen) < 0) {
        return -1;
    }
    if (get_int(spec, "ttl_s", 0, 0, 10LL * 365 * 86400, &n, ctx, err, errlen) < 0) {
        return -1;
    }
    d->ttl_s = n;
    if (get_int(spec, "timeout_ms", 0, 0, 3600000, &n, ctx, err, errlen) < 0) {
        return -1;
    }
    d->timeout_ms = n;
    struct json_object *fields = json_object_object_get(spec, "fields");
    if (!JIS_OBJ(fields) || json_object_object_length(fields) == 0) {
        CERR("%s.fields: a non-empty mapping of field name → type is required", ctx);
    }
    d->nfields = json_object_object_length(fields);
    d->fields = lb_xcalloc(d->nfields, sizeof(*d->fields));
    size_t i = 0;
    json_object_object_foreach(fields, fname, fspec)
    {
        if (strcmp(fname, "version") == 0) {
            CERR("%s.fields.version: `version` is managed by the gateway; do not declare it", ctx);
        }
        if (parse_field(&d->fields[i++], fname, fspec, ctx, err, errlen) < 0) {
            return -1;
        }
    }
    const struct cf_field *kf = cf_field_find(d, d->key);
    if (kf == NULL) {
        CERR("%s.key: key field '%s' is not among the fields", ctx, d->key);
    }
    if (kf->type != CF_T_STRING) {
        CERR("%s.key: key field '%s' must be a string", ctx, d->key);
    }
    if (d->shard_key != NULL) {
        const struct cf_field *sf = cf_field_find(d, d->shard_key);
        if (sf == NULL) {
            CERR("%s.shard_key: shard key '%s' is not among the fields", ctx, d->shard_key);
        }
        if (sf->type != CF_T_STRING && sf->type != CF_T_INT) {
            CERR("%s.shard_key: shard key '%s' must be a string or int field", ctx, d->shard_key);
        }
        if (d->backend->map == NULL && d->backend->nshards != 1) {
            CERR("%s.shard_key: backend '%s' has %zu shards but no `shard_map`: a sharded domain "
                 "needs a shard map (or exactly one shard)",
                 ctx, d->backend->name, d->backend->nshards);
        }
        if (d->backend->map == NULL && implicit_shard_map(d->backend, err, errlen) < 0) {
            return -1;
        }
    }
    if (d->kind == CF_KIND_HASH) {
        if (d->counters_field == NULL) {
            CERR("%s.counters: a hash domain names the field holding its counters", ctx);
        }
        const struct cf_field *cfld = cf_field_find(d, d->counters_field);
        if (cfld == NULL || cfld->type != CF_T_COUNTERS) {
            CERR("%s.counters: '%s' must be a field of type counters", ctx, d->counters_field);
        }
        if (d->nfields != 2) {
            CERR("%s.fields: a hash domain has exactly its key and its counters field", ctx);
        }
    }
    const struct cf_adapter_checks *ac = atomic_load(&adapter_checks);
    if (ac != NULL && ac->check_domain != NULL) {
        char aerr[256];
        if (ac->check_domain(d->backend, d, aerr, sizeof(aerr)) < 0) {
            CERR("%s: %s", ctx, aerr);
        }
    }
    return 0;
}

/* ---- top level ---------------------------------------------------------- */

static void free_field(struct cf_field *f)
{
    free(f->name);
    for (size_t i = 0; i < f->nvalues; i++) {
        free(f->values[i]);
    }
    free(f->values);
    json_object_put(f->item_schema);
}

static void config_free(struct cf_config *cf)
{
    for (size_t i = 0; i < cf->ndomains; i++) {
        struct cf_domain *d = &cf->domains[i];
        free(d->name);
        free(d->backend_name);
        free(d->table);
        free(d->key);
        free(d->shard_key);
        free(d->counters_field);
        for (size_t j = 0; j < d->nfields; j++) {
            free_field(&d->fields[j]);
        }
        free(d->fields);
    }
    free(cf->domains);
    for (size_t i = 0; i < cf->nbackends; i++) {
        struct cf_backend *be = &cf->backends[i];
        free(be->name);
        free(be->type);
        for (size_t j = 0; j < be->nshards; j++) {
            free(be->shards[j].name);
            free(be->shards[j].dsn);
        }
        free(be->shards);
        free(be->shard_map_path);
        rt_shardmap_unref(be->map);
        rt_live_unref(be->live);
        json_object_put(be->options);
        free(be->signature);
    }
    free(cf->backends);
    free(cf->path);
    free(cf->listen_host);
    free(cf->admin_host);
    free(cf->log_level);
    free(cf->access_log);
    cf_auth_free(&cf->auth);
    free(cf->tls_cert);
    free(cf->tls_key);
    free(cf->cursor_secret);
    free(cf->control.etcd_host);
    free(cf->control.prefix);
    free(cf->control.instance);
    free(cf->control.redis);
    free(cf);
}

/* The cursor secret of a config that sets none: 32 random bytes (hex) drawn
 * once per process, so that reloads keep cursors valid while no two
 * processes (nor anyone reading the source) share it.  NULL when the kernel
 * gave no randomness. */
static char proc_secret[65];
static int proc_secret_state; /* 0: not drawn, 1: drawn, -1: failed */
static pthread_once_t proc_secret_once = PTHREAD_ONCE_INIT;

static void draw_secret(void)
{
    unsigned char raw[32];
    size_t got = 0;
    while (got < sizeof(raw)) {
        ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            proc_secret_state = -1;
            return;
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof(raw); i++) {
        snprintf(proc_secret + 2 * i, 3, "%02x", raw[i]);
    }
    proc_secret_state = 1;
}

static const char *process_cursor_secret(void)
{
    pthread_once(&proc_secret_once, draw_secret);
    return proc_secret_state == 1 ? proc_secret : NULL;
}

static int parse_root(struct cf_config *cf, struct json_object *root, char *err, size_t errlen)
{
    if (!JIS_OBJ(root)) {
        CERR("the config must be a mapping");
    }
    static const char *const allowed[] = {
        "listen",          "admin_listen", "workers",  "shutdown_timeout_ms",
        "log_level",       "limits",       "backends", "domains",
        "cursor_secret",   "auth",         "tls",      "access_log",
        "circuit_breaker", "idempotency",  "control",  NULL};
    if (check_keys(root, allowed, "config", err, errlen) < 0) {
        return -1;
    }
    if (apply_opts(top_opts, cf, root, "", err, errlen) < 0) {
        return -1;
    }
    if (apply_opts(limit_opts, &cf->limits, json_object_object_get(root, "limits"), "limits", err,
                   errlen) < 0) {
        return -1;
    }
    if (apply_opts(breaker_opts, &cf->breaker, json_object_object_get(root, "circuit_breaker"),
                   "circuit_breaker", err, errlen) < 0) {
        return -1;
    }
    if (apply_opts(idempotency_opts, &cf->idempotency, json_object_object_get(root, "idempotency"),
                   "idempotency", err, errlen) < 0) {
        return -1;
    }
    if (parse_control(cf, json_object_object_get(root, "control"), err, errlen) < 0) {
        return -1;
    }
    if (cf->access_log[0] == '\0') {
        CERR("access_log: give \"stderr\", \"off\" or a file path");
    }
    if (cf->cursor_secret[0] == '\0') {
        const char *sec = process_cursor_secret();
        if (sec == NULL) {
            CERR("cursor_secret: not set, and no random secret could be generated (getrandom: "
                 "%s); set one",
                 strerror(errno));
        }
        free(cf->cursor_secret);
        cf->cursor_secret = lb_xstrdup(sec);
        cf->cursor_secret_generated = 1;
    }
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    const char *const *lv = levels;
    while (*lv != NULL && strcmp(*lv, cf->log_level) != 0) {
        lv++;
    }
    if (*lv == NULL) {
        CERR("log_level: '%s' is not one of debug, info, warn, error", cf->log_level);
    }
    char *s;
    if (get_str(root, "listen", "127.0.0.1:8080", &s, "config", err, errlen) < 0) {
        return -1;
    }
    int rc = parse_hostport(s, "listen", &cf->listen_host, &cf->listen_port, err, errlen);
    free(s);
    if (rc < 0) {
        return -1;
    }
    if (get_str(root, "admin_listen", "127.0.0.1:9090", &s, "config", err, errlen) < 0) {
        return -1;
    }
    rc = parse_hostport(s, "admin_listen", &cf->admin_host, &cf->admin_port, err, errlen);
    free(s);
    if (rc < 0) {
        return -1;
    }
    if (cf_auth_parse(&cf->auth, json_object_object_get(root, "auth"), err, errlen) < 0) {
        return -1;
    }
    struct json_object *tls = json_object_object_get(root, "tls");
    if (tls != NULL) {
        static const char *const tallowed[] = {"cert", "key", NULL};
        if (!JIS_OBJ(tls) || check_keys(tls, tallowed, "tls", err, errlen) < 0 ||
            get_str(tls, "cert", NULL, &cf->tls_cert, "tls", err, errlen) < 0 ||
            get_str(tls, "key", NULL, &cf->tls_key, "tls", err, errlen) < 0) {
            if (!JIS_OBJ(tls)) {
                CERR("tls: must be a mapping {cert, key}");
            }
            return -1;
        }
    }
    struct json_object *backends = json_object_object_get(root, "backends");
    if (!JIS_OBJ(backends) || json_object_object_length(backends) == 0) {
        CERR("backends: a non-empty mapping of backend name → {type, shards} is required");
    }
    cf->nbackends = json_object_object_length(backends);
    cf->backends = lb_xcalloc(cf->nbackends, sizeof(*cf->backends));
    size_t i = 0;
    json_object_object_foreach(backends, bname, bspec)
    {
        if (parse_backend(&cf->backends[i++], bname, bspec, cf->path, err, errlen) < 0) {
            return -1;
        }
    }
    struct json_object *domains = json_object_object_get(root, "domains");
    if (!JIS_OBJ(domains) || json_object_object_length(domains) == 0) {
        CERR("domains: a non-empty mapping of domain name → settings is required");
    }
    cf->ndomains = json_object_object_length(domains);
    cf->domains = lb_xcalloc(cf->ndomains, sizeof(*cf->domains));
    i = 0;
    json_object_object_foreach(domains, dname, dspec)
    {
        if (parse_domain(cf, &cf->domains[i++], dname, dspec, err, errlen) < 0) {
            return -1;
        }
    }
    return 0;
}

struct cf_config *cf_config_from_json(struct json_object *root, const char *path, char *err,
                                      size_t errlen)
{
    struct cf_config *cf = calloc(1, sizeof(*cf));
    if (cf == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    cf->refcount = 1;
    cf->path = lb_xstrdup(path != NULL ? path : "-");
    if (parse_root(cf, root, err, errlen) < 0) {
        config_free(cf);
        return NULL;
    }
    return cf;
}

struct cf_config *cf_config_load(const char *path, char *err, size_t errlen)
{
    struct json_object *root = cf_yaml_load_file(path, err, errlen);
    if (root == NULL) {
        return NULL;
    }
    char inner[512];
    struct cf_config *cf = cf_config_from_json(root, path, inner, sizeof(inner));
    json_object_put(root);
    if (cf == NULL) {
        snprintf(err, errlen, "%s: %s", path, inner);
    }
    return cf;
}

struct cf_config *cf_config_load_with_map(const char *path, const char *backend,
                                          struct json_object *map_doc, char *err, size_t errlen)
{
    map_override.backend = backend;
    map_override.doc = map_doc;
    struct cf_config *cf = cf_config_load(path, err, errlen);
    map_override.backend = NULL;
    map_override.doc = NULL;
    return cf;
}

struct cf_config *cf_config_ref(struct cf_config *cf)
{
    __atomic_add_fetch(&cf->refcount, 1, __ATOMIC_RELAXED);
    return cf;
}

void cf_config_unref(struct cf_config *cf)
{
    if (cf != NULL && __atomic_sub_fetch(&cf->refcount, 1, __ATOMIC_ACQ_REL) == 0) {
        config_free(cf);
    }
}

const struct cf_domain *cf_domain_find(const struct cf_config *cf, const char *name, size_t len)
{
    for (size_t i = 0; i < cf->ndomains; i++) {
        const char *n = cf->domains[i].name;
        if (strncmp(n, name, len) == 0 && n[len] == '\0') {
            return &cf->domains[i];
        }
    }
    return NULL;
}

const struct cf_field *cf_field_find(const struct cf_domain *d, const char *name)
{
    for (size_t i = 0; i < d->nfields; i++) {
        if (strcmp(d->fields[i].name, name) == 0) {
            return &d->fields[i];
        }
    }
    return NULL;
}
