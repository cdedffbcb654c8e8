/*
 * cf_auth.c — parsing the `auth:` section.
 */
#include "config/cf_auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#define AERR(...)                                                                                  \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        return -1;                                                                                 \
    } while (0)

static int hexval(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int parse_perms(struct json_object *list, unsigned *out, const char *ctx, char *err,
                       size_t errlen)
{
    if (!json_object_is_type(list, json_type_array) || json_object_array_length(list) == 0) {
        AERR("%s: must be a non-empty list of read, write, admin", ctx);
    }
    *out = 0;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        struct json_object *p = json_object_array_get_idx(list, i);
        const char *s = json_object_is_type(p, json_type_string) ? json_object_get_string(p) : "";
        if (strcmp(s, "read") == 0) {
            *out |= CF_PERM_READ;
        } else if (strcmp(s, "write") == 0) {
            *out |= CF_PERM_WRITE;
        } else if (strcmp(s, "admin") == 0) {
            *out |= CF_PERM_ADMIN;
        } else {
            AERR("%s[%zu]: '%s' is not one of read, write, admin", ctx, i, s);
        }
    }
    return 0;
}

static int parse_key(struct cf_key *k, size_t idx, struct json_object *spec, char *err,
                     size_t errlen)
{
    char ctx[160];
    snprintf(ctx, sizeof(ctx), "auth.keys[%zu]", idx);
    if (!json_object_is_type(spec, json_type_object)) {
        AERR("%s: must be a mapping {name, key or key_sha256, grants, rate, max_inflight}", ctx);
    }
    json_object_object_foreach(spec, name, v)
    {
        (void)v;
        if (strcmp(name, "name") != 0 && strcmp(name, "key") != 0 &&
            strcmp(name, "key_sha256") != 0 && strcmp(name, "grants") != 0 &&
            strcmp(name, "rate") != 0 && strcmp(name, "max_inflight") != 0) {
            AERR("%s.%s: unknown setting", ctx, name);
        }
    }
    struct json_object *nm = NULL;
    if (!json_object_object_get_ex(spec, "name", &nm) ||
        !json_object_is_type(nm, json_type_string) || json_object_get_string_len(nm) == 0) {
        AERR("%s.name: required", ctx);
    }
    k->name = strdup(json_object_get_string(nm));
    struct json_object *plain = NULL, *hash = NULL;
    json_object_object_get_ex(spec, "key", &plain);
    json_object_object_get_ex(spec, "key_sha256", &hash);
    if ((plain == NULL) == (hash == NULL)) {
        AERR("%s (%s): give exactly one of `key` and `key_sha256`", ctx, k->name);
    }
    if (plain != NULL) {
        if (!json_object_is_type(plain, json_type_string) ||
            json_object_get_string_len(plain) < 16) {
            AERR("%s.key (%s): must be a string of at least 16 characters", ctx, k->name);
        }
        SHA256((const unsigned char *)json_object_get_string(plain),
               (size_t)json_object_get_string_len(plain), k->sha256);
    } else {
        const char *h =
            json_object_is_type(hash, json_type_string) ? json_object_get_string(hash) : "";
        if (strlen(h) != 64) {
            AERR("%s.key_sha256 (%s): must be 64 hex characters", ctx, k->name);
        }
        for (int i = 0; i < 32; i++) {
            int a = hexval((unsigned char)h[2 * i]), b = hexval((unsigned char)h[2 * i + 1]);
            if (a < 0 || b < 0) {
                AERR("%s.key_sha256 (%s): must be 64 hex characters", ctx, k->name);
            }
            k->sha256[i] = (unsigned char)(a * 16 + b);
        }
    }
    struct json_object *grants = NULL;
    if (!json_object_object_get_ex(spec, "grants", &grants) ||
        !json_object_is_type(grants, json_type_object) || json_object_object_length(grants) == 0) {
        AERR("%s.grants (%s): a mapping of domain (or \"*\") → [read, write, admin] is required",
             ctx, k->name);
    }
    k->ngrants = (size_t)json_object_object_length(grants);
    k->grants = calloc(k->ngrants, sizeof(*k->grants));
    size_t i = 0;
    json_object_object_foreach(grants, dom, perms)
    {
        char gctx[320];
        snprintf(gctx, sizeof(gctx), "%s.grants.%s", ctx, dom);
        k->grants[i].domain = strdup(dom);
        if (parse_perms(perms, &k->grants[i].perms, gctx, err, errlen) < 0) {
            return -1;
        }
        i++;
    }
    struct json_object *mi = NULL;
    k->max_inflight = -1;
    if (json_object_object_get_ex(spec, "max_inflight", &mi)) {
        if (!json_object_is_type(mi, json_type_int) || json_object_get_int64(mi) < 0 ||
            json_object_get_int64(mi) > 10000000) {
            AERR("%s.max_inflight (%s): must be an integer from 0 (no limit) to 10000000", ctx,
                 k->name);
        }
        k->max_inflight = (int)json_object_get_int64(mi);
    }
    struct json_object *rate = NULL;
    if (json_object_object_get_ex(spec, "rate", &rate)) {
        struct json_object *ps = NULL, *b = NULL;
        if (!json_object_is_type(rate, json_type_object) ||
            !json_object_object_get_ex(rate, "per_second", &ps) ||
            !(json_object_is_type(ps, json_type_int) ||
              json_object_is_type(ps, json_type_double)) ||
            json_object_get_double(ps) <= 0) {
            AERR("%s.rate (%s): {per_second: > 0, burst: ≥ 1} expected", ctx, k->name);
        }
        k->rate_per_s = json_object_get_double(ps);
        k->burst = k->rate_per_s;
        if (json_object_object_get_ex(rate, "burst", &b)) {
            if (!(json_object_is_type(b, json_type_int) ||
                  json_object_is_type(b, json_type_double)) ||
                json_object_get_double(b) < 1) {
                AERR("%s.rate.burst (%s): must be a number ≥ 1", ctx, k->name);
            }
            k->burst = json_object_get_double(b);
        }
        if (k->burst < 1) {
            k->burst = 1;
        }
    }
    return 0;
}

int cf_auth_parse(struct cf_auth *a, struct json_object *doc, char *err, size_t errlen)
{
    memset(a, 0, sizeof(*a));
    a->enabled = 1;
    if (doc == NULL) {
        return 0;
    }
    if (!json_object_is_type(doc, json_type_object)) {
        AERR("auth: must be a mapping {enabled, keys}");
    }
    json_object_object_foreach(doc, name, v)
    {
        (void)v;
        if (strcmp(name, "enabled") != 0 && strcmp(name, "keys") != 0) {
            AERR("auth.%s: unknown setting", name);
        }
    }
    struct json_object *en = NULL, *keys = NULL;
    if (json_object_object_get_ex(doc, "enabled", &en)) {
        if (!json_object_is_type(en, json_type_boolean)) {
            AERR("auth.enabled: must be true or false");
        }
        a->enabled = json_object_get_boolean(en);
    }
    if (json_object_object_get_ex(doc, "keys", &keys) && keys != NULL) {
        if (!json_object_is_type(keys, json_type_array)) {
            AERR("auth.keys: must be a list");
        }
        a->nkeys = json_object_array_length(keys);
        a->keys = calloc(a->nkeys ? a->nkeys : 1, sizeof(*a->keys));
        for (size_t i = 0; i < a->nkeys; i++) {
            if (parse_key(&a->keys[i], i, json_object_array_get_idx(keys, i), err, errlen) < 0) {
                return -1;
            }
            for (size_t j = 0; j < i; j++) {
                if (strcmp(a->keys[j].name, a->keys[i].name) == 0) {
                    AERR("auth.keys[%zu].name: duplicate key name '%s'", i, a->keys[i].name);
                }
                if (memcmp(a->keys[j].sha256, a->keys[i].sha256, 32) == 0) {
                    AERR("auth.keys[%zu] (%s): the same key as '%s'", i, a->keys[i].name,
                         a->keys[j].name);
                }
            }
        }
    }
    return 0;
}

void cf_auth_free(struct cf_auth *a)
{
    for (size_t i = 0; i < a->nkeys; i++) {
        struct cf_key *k = &a->keys[i];
        free(k->name);
        for (size_t j = 0; j < k->ngrants; j++) {
            free(k->grants[j].domain);
        }
        free(k->grants);
    }
    free(a->keys);
    memset(a, 0, sizeof(*a));
}

unsigned cf_auth_perms(const struct cf_key *k, const char *domain)
{
    unsigned p = 0;
    for (size_t i = 0; i < k->ngrants; i++) {
        if (strcmp(k->grants[i].domain, "*") == 0 || strcmp(k->grants[i].domain, domain) == 0) {
            p |= k->grants[i].perms;
        }
    }
    return p;
}
