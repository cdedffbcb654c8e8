/*
 * md_item.c — schema validation and normalisation of items and patches.
 */
#include "model/md_item.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/cf_config.h"
#include "lib/lb_json.h"
#include "lib/lb_util.h"

int md_key_check(const char *key, size_t len, struct md_error *e)
{
    if (len == 0) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "the item key is empty");
        return -1;
    }
    if (len > 512) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "the item key is longer than 512 bytes");
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)key[i] < 0x20 || key[i] == 0x7f) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL,
                         "the item key contains a control character (byte %zu)", i);
            return -1;
        }
    }
    /* as strings in a body: a key that is not UTF-8 would be changed by one
     * store (U+FFFD), refused by another, or sent back as invalid JSON */
    size_t ok = lb_utf8_check(key, len);
    if (ok != len) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "the item key is not valid UTF-8 (byte %zu)", ok);
        return -1;
    }
    return 0;
}

/* ---- decimals -------------------------------------------------------------- */

/* Parse a decimal in JSON number syntax without exponent
 * (-?(0|[1-9][0-9]*)(.[0-9]+)?) into an integer scaled by 10^scale.
 * Returns 0, -1 (syntax), -2 (more fraction digits than `scale` — they would
 * be lost; trailing zeros are fine) or -3 (more than 36 digits once scaled).
 * *intdigits gets the number of digits before the point. */
static int dec_parse_ex(const char *s, int scale, __int128 *out, int *intdigits)
{
    int neg = 0, idig = 0, frac = -1;
    __int128 v = 0;
    if (*s == '-') {
        neg = 1;
        s++;
    }
    if (!isdigit((unsigned char)*s) || (s[0] == '0' && isdigit((unsigned char)s[1]))) {
        return -1;
    }
    for (; *s != '\0'; s++) {
        if (*s == '.') {
            if (frac >= 0 || !isdigit((unsigned char)s[1])) {
                return -1;
            }
            frac = 0;
            continue;
        }
        if (!isdigit((unsigned char)*s)) {
            return -1;
        }
        if (frac >= 0) {
            if (++frac > scale) {
                if (*s != '0') {
                    return -2;
                }
                continue;
            }
        } else if (idig > 0 || *s != '0') {
            idig++;
        }
        if (idig + scale > 36) {
            return -3;
        }
        v = v * 10 + (*s - '0');
    }
    for (int f = frac < 0 ? 0 : frac; f < scale; f++) {
        v *= 10;
    }
    *out = neg ? -v : v;
    if (intdigits != NULL) {
        *intdigits = idig;
    }
    return 0;
}

static int dec_parse(const char *s, int scale, __int128 *out)
{
    return dec_parse_ex(s, scale, out, NULL);
}

static void dec_format(__int128 v, int scale, char *out, size_t outlen)
{
    char tmp[64];
    int n = 0, neg = v < 0;
    unsigned __int128 u = neg ? (unsigned __int128)(-v) : (unsigned __int128)v;
    do {
        tmp[n++] = (char)('0' + (int)(u % 10));
        u /= 10;
    } while (u != 0 || n <= scale);
    size_t o = 0;
    if (neg && o + 1 < outlen) {
        out[o++] = '-';
    }
    for (int i = n - 1; i >= 0 && o + 2 < outlen; i--) {
        out[o++] = tmp[i];
        if (i == scale && scale > 0) {
            out[o++] = '.';
        }
    }
    out[o] = '\0';
}

int md_decimal_add(const char *a, const char *b, int scale, char *out, size_t outlen)
{
    __int128 x, y;
    if (dec_parse(a, scale, &x) < 0 || dec_parse(b, scale, &y) < 0) {
        return -1;
    }
    __int128 lim = 1;
    for (int i = 0; i < 36; i++) {
        lim *= 10;
    }
    __int128 r = x + y;
    if (r >= lim || r <= -lim) {
        return -1;
    }
    dec_format(r, scale, out, outlen);
    return 0;
}

/* ---- timestamps ------------------------------------------------------------ */

/* n digits at s, exactly; -1 otherwise */
static int digits_at(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* Accepts RFC 3339 (YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)), writes UTC with
 * exactly six fraction digits: YYYY-MM-DDTHH:MM:SS.ffffffZ (digits past
 * the microsecond are dropped).  One width for every timestamp the gateway
 * writes or a store returns, so their text sorts in time order.  Years
 * 0001–9999, before and after the offset is applied. */
int md_ts_normalise(const char *s, char *out, size_t outlen)
{
    if (strlen(s) < 20 || s[4] != '-' || s[7] != '-' || s[13] != ':' || s[16] != ':' ||
        (s[10] != 'T' && s[10] != 't' && s[10] != ' ')) {
        return -1;
    }
    int Y = digits_at(s, 4), M = digits_at(s + 5, 2), D = digits_at(s + 8, 2);
    int h = digits_at(s + 11, 2), m = digits_at(s + 14, 2), sec = digits_at(s + 17, 2);
    if (Y < 1 || M < 1 || M > 12 || D < 1 || h < 0 || h > 23 || m < 0 || m > 59 || sec < 0 ||
        sec > 60) {
        return -1;
    }
    const char *p = s + 19;
    char frac[8] = "000000";
    if (*p == '.') {
        p++;
        int k = 0;
        while (*p >= '0' && *p <= '9') {
            if (k < 6) {
                frac[k++] = *p;
            }
            p++;
        }
        if (k == 0) {
            return -1;
        }
    }
    int off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        /* in order: digits_at stops at the NUL, so nothing past it is read */
        int oh = digits_at(p + 1, 2);
        int om = oh >= 0 && p[3] == ':' ? digits_at(p + 4, 2) : -1;
        if (oh < 0 || om < 0 || oh > 23 || om > 59) {
            return -1;
        }
        off = (oh * 60 + om) * (*p == '+' ? 1 : -1);
        p += 6;
    } else {
        return -1;
    }
    if (*p != '\0') {
        return -1;
    }
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    if (D > mdays[M - 1] || (M == 2 && D == 29 && !leap)) {
        return -1;
    }
    struct tm tm = {.tm_year = Y - 1900,
                    .tm_mon = M - 1,
                    .tm_mday = D,
                    .tm_hour = h,
                    .tm_min = m,
                    .tm_sec = sec > 59 ? 59 : sec};
    time_t t = timegm(&tm) - (time_t)off * 60;
    struct tm u;
    if (gmtime_r(&t, &u) == NULL || u.tm_year + 1900 < 1 || u.tm_year + 1900 > 9999) {
        return -1;
    }
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%sZ", u.tm_year + 1900, u.tm_mon + 1,
             u.tm_mday, u.tm_hour, u.tm_min, u.tm_sec, frac);
    return 0;
}

/* ---- values ---------------------------------------------------------------- */

/* An int object holds its value exactly as an int64 (json-c keeps values
 * above INT64_MAX as uint64, and json_object_get_int64 clamps them). */
static int int64_exact(struct json_object *v)
{
    return json_object_get_int64(v) != INT64_MAX || json_object_get_uint64(v) == INT64_MAX;
}

static int check_value(const struct cf_field *f, const struct cf_limits *lim,
                       struct json_object *parent, const char *key, struct json_object *v,
                       struct md_error *e)
{
    enum json_type t = json_object_get_type(v);
    if (t == json_type_null) {
        if (f->required) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' is required and cannot be null",
                         f->name);
            return -1;
        }
        return 0;
    }
    switch (f->type) {
    case CF_T_STRING:
    case CF_T_ENUM: {
        if (t != json_type_string) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' must be a string", f->name);
            return -1;
        }
        size_t len = (size_t)json_object_get_string_len(v);
        size_t max = f->max_len ? f->max_len : lim->max_string;
        if (len > max) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' is longer than %zu bytes",
                         f->name, max);
            return -1;
        }
        if (memchr(json_object_get_string(v), '\0', len) != NULL) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' contains a NUL character",
                         f->name);
            return -1;
        }
        if (f->type == CF_T_ENUM) {
            const char *s = json_object_get_string(v);
            for (size_t i = 0; i < f->nvalues; i++) {
                if (strcmp(f->values[i], s) == 0) {
                    return 0;
                }
            }
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "field '%s' must be one of the allowed values", f->name);
            return -1;
        }
        return 0;
    }
    case CF_T_INT: {
        if (t != json_type_int) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' must be an integer", f->name);
            return -1;
        }
        /* lb_json_parse refuses integers beyond int64 (json-c would clamp
         * them); one above INT64_MAX built another way is a uint64 here */
        if (!int64_exact(v)) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "field '%s' is out of the 64-bit range (-9223372036854775808 to "
                         "9223372036854775807)",
                         f->name);
            return -1;
        }
        return 0;
    }
    case CF_T_DECIMAL: {
        const char *text;
        if (t == json_type_double || t == json_type_string) {
            text = json_object_get_string(v);
        } else if (t == json_type_int) {
            if (!int64_exact(v)) {
                md_error_set(e, MD_E_BAD_REQUEST, f->name,
                             "field '%s' is too large; send it as a string", f->name);
                return -1;
            }
            text = json_object_get_string(v);
        } else {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' must be a decimal number",
                         f->name);
            return -1;
        }
        __int128 x;
        int scale = f->scale < 0 ? 18 : f->scale, idig = 0;
        int rc = dec_parse_ex(text, scale, &x, &idig);
        if (rc == -2) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' has more than %d decimal places",
                         f->name, scale);
            return -1;
        }
        if (rc == -3 || (rc == 0 && idig + scale > f->precision)) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "field '%s' has more than %d digits before the point", f->name,
                         f->precision - scale > 0 ? f->precision - scale : 0);
            return -1;
        }
        if (rc < 0) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "field '%s' must be a plain decimal number like 12.30", f->name);
            return -1;
        }
        if (t == json_type_string) { /* exact number out, with the same digits */
            json_object_object_add(parent, key, json_object_new_double_s(strtod(text, NULL), text));
        }
        return 0;
    }
    case CF_T_BOOL:
        if (t != json_type_boolean) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' must be true or false", f->name);
            return -1;
        }
        return 0;
    case CF_T_TIMESTAMP: {
        char norm[48];
        if (t != json_type_string ||
            md_ts_normalise(json_object_get_string(v), norm, sizeof(norm)) < 0) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "field '%s' must be an RFC 3339 timestamp like 2026-01-31T12:00:00Z",
                         f->name);
            return -1;
        }
        if (strcmp(norm, json_object_get_string(v)) != 0) {
            json_object_object_add(parent, key, json_object_new_string(norm));
        }
        return 0;
    }
    case CF_T_OBJECT:
        if (t != json_type_object) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' must be an object", f->name);
            return -1;
        }
        return 0;
    case CF_T_ARRAY:
        if (t != json_type_array) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' must be an array", f->name);
            return -1;
        }
        return 0;
    case CF_T_JSON:
        return 0;
    case CF_T_COUNTERS: {
        if (t != json_type_object) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "field '%s' must be an object of name → non-negative integer", f->name);
            return -1;
        }
        if (json_object_object_length(v) > MD_MAX_COUNTER_OPS) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "field '%s' has %d members: at most %d in one write", f->name,
                         json_object_object_length(v), MD_MAX_COUNTER_OPS);
            return -1;
        }
        json_object_object_foreach(v, k, cv)
        {
            if (k[0] == '\0' || strlen(k) > 512) {
                md_error_set(e, MD_E_BAD_REQUEST, f->name,
                             "field '%s' has an empty or too long name", f->name);
                return -1;
            }
            if (json_object_get_type(cv) != json_type_int || json_object_get_int64(cv) < 0 ||
                json_object_get_int64(cv) > 1000000000) {
                md_error_set(e, MD_E_BAD_REQUEST, f->name,
                             "field '%s.%s' must be an integer between 0 and 1000000000", f->name,
                             k);
                return -1;
            }
        }
        return 0;
    }
    }
    return 0;
}

int md_value_check(const struct cf_field *f, const struct cf_limits *lim,
                   struct json_object *parent, const char *key, struct json_object *v,
                   struct md_error *e)
{
    return check_value(f, lim, parent, key, v, e);
}

int md_item_check(const struct cf_domain *d, const struct cf_limits *lim, enum md_item_mode mode,
                  const char *key, struct json_object *item, struct md_error *e)
{
    if (!json_object_is_type(item, json_type_object)) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "the item must be a JSON object");
        return -1;
    }
    json_object_object_foreach(item, name, v)
    {
        if (strcmp(name, "version") == 0) {
            continue; /* echoed back from a read: ignored, If-Match carries versions */
        }
        const struct cf_field *f = cf_field_find(d, name);
        if (f == NULL) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL, "unknown field '%s' for domain '%s'", name,
                         d->name);
            e->field = NULL;
            return -1;
        }
        if (check_value(f, lim, item, name, v, e) < 0) {
            return -1;
        }
    }
    json_object_object_del(item, "version");
    struct json_object *kv = NULL;
    json_object_object_get_ex(item, d->key, &kv);
    if (mode == MD_ITEM_PUT) {
        if (kv != NULL && !json_object_is_type(kv, json_type_null) &&
            strcmp(json_object_get_string(kv), key) != 0) {
            md_error_set(e, MD_E_BAD_REQUEST, cf_field_find(d, d->key)->name,
                         "field '%s' in the body does not match the id in the path", d->key);
            return -1;
        }
        json_object_object_add(item, d->key, json_object_new_string(key));
    } else if (kv == NULL || json_object_is_type(kv, json_type_null)) {
        if (!d->key_generated) {
            md_error_set(e, MD_E_BAD_REQUEST, cf_field_find(d, d->key)->name,
                         "field '%s' is required", d->key);
            return -1;
        }
        char id[33];
        lb_gen_id(id);
        json_object_object_add(item, d->key, json_object_new_string(id));
    } else if (md_key_check(json_object_get_string(kv), (size_t)json_object_get_string_len(kv), e) <
               0) {
        e->field = cf_field_find(d, d->key)->name;
        return -1;
    }
    for (size_t i = 0; i < d->nfields; i++) {
        const struct cf_field *f = &d->fields[i];
        if (json_object_object_get_ex(item, f->name, NULL)) {
            continue;
        }
        if (f->auto_created) {
            char now[40];
            lb_now_ts(now, sizeof(now));
            json_object_object_add(item, f->name, json_object_new_string(now));
        } else if (f->required) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' is required", f->name);
            return -1;
        }
    }
    return 0;
}

/* A patch path is a field name, or for hash domains "<counters>.<member>". */
static const struct cf_field *patch_field(const struct cf_domain *d, const char *path,
                                          const char **member, struct md_error *e)
{
    *member = NULL;
    if (d->kind == CF_KIND_HASH) {
        size_t cl = strlen(d->counters_field);
        if (strncmp(path, d->counters_field, cl) == 0 && path[cl] == '.' && path[cl + 1] != '\0') {
            *member = path + cl + 1;
            if (strlen(*member) > 512) {
                md_error_set(e, MD_E_BAD_REQUEST, NULL, "member name in '%s' is too long",
                             d->counters_field);
                return NULL;
            }
            return cf_field_find(d, d->counters_field);
        }
    }
    const struct cf_field *f = cf_field_find(d, path);
    if (f == NULL) {
        if (d->kind == CF_KIND_HASH) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL,
                         "unknown field '%s' for domain '%s' (use '%s.<name>')", path, d->name,
                         d->counters_field);
        } else {
            md_error_set(e, MD_E_BAD_REQUEST, NULL, "unknown field '%s' for domain '%s'", path,
                         d->name);
        }
        return NULL;
    }
    return f;
}

/* A patch guard {"field": scalar | {"gte": scalar, …}}: schema fields only,
 * scalar values of the field's type, operators eq ne gt gte lt lte.  The
 * adapter puts it into the write's condition (409 when it does not hold). */
static int guard_check(const struct cf_domain *d, const struct cf_limits *lim,
                       struct json_object *where, struct md_error *e)
{
    static const char *const ops[] = {"eq", "ne", "gt", "gte", "lt", "lte", NULL};
    if (!json_object_is_type(where, json_type_object) || json_object_object_length(where) == 0) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL,
                     "patch 'where' must be a non-empty object like {\"stock\":{\"gte\":2}}");
        return -1;
    }
    json_object_object_foreach(where, name, cond)
    {
        const struct cf_field *f = cf_field_find(d, name);
        if (f == NULL) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL, "where: unknown field '%s' for domain '%s'",
                         name, d->name);
            return -1;
        }
        struct json_object *one = NULL;
        if (json_object_is_type(cond, json_type_object)) {
            if (json_object_object_length(cond) == 0) {
                md_error_set(e, MD_E_BAD_REQUEST, f->name, "where.%s: no operator", f->name);
                return -1;
            }
        } else {
            one = json_object_new_object(); /* implicit eq, checked like {"eq": v} */
            json_object_object_add(one, "eq", json_object_get(cond));
            cond = one;
        }
        int rc = 0;
        json_object_object_foreach(cond, opname, v)
        {
            const char *const *o = ops;
            while (*o != NULL && strcmp(*o, opname) != 0) {
                o++;
            }
            enum json_type t = json_object_get_type(v);
            if (*o == NULL) {
                md_error_set(e, MD_E_BAD_REQUEST, f->name,
                             "where.%s: unknown operator '%s' (eq ne gt gte lt lte)", f->name,
                             opname);
                rc = -1;
            } else if (t == json_type_object || t == json_type_array) {
                md_error_set(e, MD_E_BAD_REQUEST, f->name,
                             "where.%s.%s: the value must be a scalar", f->name, opname);
                rc = -1;
            } else if (t != json_type_null && check_value(f, lim, cond, opname, v, e) < 0) {
                rc = -1;
            }
            if (rc < 0) {
                break;
            }
        }
        json_object_put(one);
        if (rc < 0) {
            return -1;
        }
    }
    return 0;
}

int md_patch_check(const struct cf_domain *d, const struct cf_limits *lim,
                   struct json_object *patch, struct md_error *e)
{
    if (!json_object_is_type(patch, json_type_object)) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL,
                     "a patch must be an object {\"set\":{…}, \"inc\":{…}, \"unset\":[…]}");
        return -1;
    }
    int nops = 0;
    json_object_object_foreach(patch, op, body)
    {
        if (strcmp(op, "set") == 0 || strcmp(op, "inc") == 0) {
            int inc = op[0] == 'i';
            if (!json_object_is_type(body, json_type_object)) {
                md_error_set(e, MD_E_BAD_REQUEST, NULL, "patch '%s' must be an object", op);
                return -1;
            }
            json_object_object_foreach(body, path, v)
            {
                const char *member;
                const struct cf_field *f = patch_field(d, path, &member, e);
                if (f == NULL) {
                    return -1;
                }
                nops++;
                if (strcmp(f->name, d->key) == 0 ||
                    (d->shard_key != NULL && strcmp(f->name, d->shard_key) == 0)) {
                    md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' cannot be changed",
                                 f->name);
                    return -1;
                }
                if (member != NULL) { /* counters member */
                    int64_t n = json_object_get_int64(v);
                    if (!json_object_is_type(v, json_type_int) || n < -1000000000 ||
                        n > 1000000000 || (!inc && n < 0)) {
                        md_error_set(e, MD_E_BAD_REQUEST, f->name, "'%s' must be an integer%s",
                                     path,
                                     inc ? " between -1000000000 and 1000000000"
                                         : " between 0 and 1000000000");
                        return -1;
                    }
                    continue;
                }
                if (inc) {
                    if (f->type != CF_T_INT && f->type != CF_T_DECIMAL) {
                        md_error_set(e, MD_E_BAD_REQUEST, f->name,
                                     "field '%s' is not a number and cannot be incremented",
                                     f->name);
                        return -1;
                    }
                    if (json_object_is_type(v, json_type_null)) {
                        md_error_set(e, MD_E_BAD_REQUEST, f->name,
                                     "an increment of '%s' must be a number", f->name);
                        return -1;
                    }
                }
                if (check_value(f, lim, body, path, v, e) < 0) {
                    return -1;
                }
            }
        } else if (strcmp(op, "where") == 0) {
            if (guard_check(d, lim, body, e) < 0) {
                return -1;
            }
        } else if (strcmp(op, "unset") == 0) {
            if (!json_object_is_type(body, json_type_array)) {
                md_error_set(e, MD_E_BAD_REQUEST, NULL, "patch 'unset' must be an array of names");
                return -1;
            }
            for (size_t i = 0; i < json_object_array_length(body); i++) {
                struct json_object *n = json_object_array_get_idx(body, i);
                if (!json_object_is_type(n, json_type_string)) {
                    md_error_set(e, MD_E_BAD_REQUEST, NULL, "patch 'unset' must list field names");
                    return -1;
                }
                const char *member;
                const struct cf_field *f = patch_field(d, json_object_get_string(n), &member, e);
                if (f == NULL) {
                    return -1;
                }
                nops++;
                if (member == NULL && (f->required || strcmp(f->name, d->key) == 0)) {
                    md_error_set(e, MD_E_BAD_REQUEST, f->name,
                                 "field '%s' is required and cannot be unset", f->name);
                    return -1;
                }
            }
        } else {
            md_error_set(e, MD_E_BAD_REQUEST, NULL,
                         "unknown patch operation '%s' (set, inc, unset, where)", op);
            return -1;
        }
    }
    if (nops == 0) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "the patch changes nothing");
        return -1;
    }
    if (nops > MD_MAX_COUNTER_OPS) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL,
                     "the patch has %d operations (set, inc and unset entries): at most %d in "
                     "one write",
                     nops, MD_MAX_COUNTER_OPS);
        return -1;
    }
    return 0;
}

int md_patch_apply(const struct cf_domain *d, struct json_object *item, struct json_object *patch,
                   struct md_error *e)
{
    struct json_object *ops;
    if (json_object_object_get_ex(patch, "unset", &ops)) {
        for (size_t i = 0; i < json_object_array_length(ops); i++) {
            json_object_object_del(item, json_object_get_string(json_object_array_get_idx(ops, i)));
        }
    }
    if (json_object_object_get_ex(patch, "set", &ops)) {
        json_object_object_foreach(ops, k, v)
        {
            json_object_object_add(item, k, json_object_get(v));
        }
    }
    if (json_object_object_get_ex(patch, "inc", &ops)) {
        json_object_object_foreach(ops, k, v)
        {
            const struct cf_field *f = cf_field_find(d, k);
            struct json_object *cur = NULL;
            json_object_object_get_ex(item, k, &cur);
            enum json_type ct = json_object_get_type(cur);
            if (f->type == CF_T_INT) {
                int64_t a = ct == json_type_null ? 0 : json_object_get_int64(cur);
                int64_t b = json_object_get_int64(v), r;
                if ((ct != json_type_null && ct != json_type_int) ||
                    __builtin_add_overflow(a, b, &r)) {
                    md_error_set(e, MD_E_CONFLICT, f->name,
                                 "cannot increment '%s': the result is out of range", k);
                    return -1;
                }
                json_object_object_add(item, k, json_object_new_int64(r));
            } else {
                char out[64];
                const char *a = ct == json_type_null ? "0" : json_object_get_string(cur);
                int scale = f->scale < 0 ? 18 : f->scale;
                if (md_decimal_add(a, json_object_get_string(v), scale, out, sizeof(out)) < 0) {
                    md_error_set(e, MD_E_CONFLICT, f->name, "cannot increment '%s'", k);
                    return -1;
                }
                json_object_object_add(item, k, json_object_new_double_s(strtod(out, NULL), out));
            }
        }
    }
    return 0;
}
