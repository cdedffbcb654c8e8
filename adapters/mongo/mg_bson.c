/*
 * mg_bson.c — JSON ↔ BSON for the MongoDB adapter (see mg_bson.h).
 */
#include "adapters/mongo/mg_bson.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/cf_config.h"
#include "lib/lb_util.h"
#include "model/md_item.h"

/* ---- decimals: scaled 64-bit integers --------------------------------------------- */

int mg_dec_to_scaled(const char *text, int scale, int64_t *out)
{
    char canon[96];
    if (scale < 0 || md_decimal_add(text, "0", scale, canon, sizeof(canon)) < 0) {
        return -1;
    }
    char digits[96];
    size_t n = 0;
    for (const char *p = canon; *p != '\0' && n + 1 < sizeof(digits); p++) {
        if (*p != '.') {
            digits[n++] = *p;
        }
    }
    digits[n] = '\0';
    errno = 0;
    char *end;
    long long v = strtoll(digits, &end, 10);
    if (errno != 0 || *end != '\0') {
        return -1;
    }
    *out = v;
    return 0;
}

void mg_scaled_to_text(int64_t v, int scale, char *out, size_t outlen)
{
    char tmp[32];
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    int n = 0;
    do {
        tmp[n++] = (char)('0' + (int)(u % 10));
        u /= 10;
    } while (u != 0 || n <= scale);
    size_t o = 0;
    if (v < 0 && o + 1 < outlen) {
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

struct json_object *mg_scaled_to_json(int64_t v, int scale)
{
    char text[48];
    mg_scaled_to_text(v, scale, text, sizeof(text));
    return json_object_new_double_s(strtod(text, NULL), text);
}

/* ---- JSON → BSON (loop thread) ------------------------------------------------------ */

int mg_key_ok(const char *k, const char *where, struct mg_xerr *x)
{
    if (k[0] == '\0' || k[0] == '$' || strchr(k, '.') != NULL) {
        snprintf(x->msg, sizeof(x->msg),
                 "field '%s' contains the key '%.64s': keys of stored objects must not be empty, "
                 "start with '$' or contain '.'",
                 where, k);
        return -1;
    }
    return 0;
}

static int append_object(bson_t *b, const char *k, struct json_object *v, const char *top,
                         struct mg_xerr *x)
{
    bson_t child;
    bson_append_document_begin(b, k, -1, &child);
    json_object_object_foreach(v, ck, cv)
    {
        if (mg_key_ok(ck, top, x) < 0 || mg_append_any(&child, ck, cv, top, x) < 0) {
            bson_append_document_end(b, &child);
            return -1;
        }
    }
    bson_append_document_end(b, &child);
    return 0;
}

int mg_append_any(bson_t *b, const char *k, struct json_object *v, const char *top,
                  struct mg_xerr *x)
{
    switch (json_object_get_type(v)) {
    case json_type_null:
        bson_append_null(b, k, -1);
        return 0;
    case json_type_boolean:
        bson_append_bool(b, k, -1, json_object_get_boolean(v));
        return 0;
    case json_type_int:
        bson_append_int64(b, k, -1, json_object_get_int64(v));
        return 0;
    case json_type_double:
        bson_append_double(b, k, -1, json_object_get_double(v));
        return 0;
    case json_type_string:
        bson_append_utf8(b, k, -1, json_object_get_string(v), json_object_get_string_len(v));
        return 0;
    case json_type_object:
        return append_object(b, k, v, top, x);
    case json_type_array: {
        bson_t child;
        bson_append_array_begin(b, k, -1, &child);
        size_t n = json_object_array_length(v);
        for (size_t i = 0; i < n; i++) {
            char idx[24];
            snprintf(idx, sizeof(idx), "%zu", i);
            if (mg_append_any(&child, idx, json_object_array_get_idx(v, i), top, x) < 0) {
                bson_append_array_end(b, &child);
                return -1;
            }
        }
        bson_append_array_end(b, &child);
        return 0;
    }
    }
    return 0;
}

/* A top-level field's value, typed by the schema. */
int mg_append_field(bson_t *b, const char *k, const struct cf_field *f, struct json_object *v,
                    struct mg_xerr *x)
{
    x->field = f->name;
    if (f->type == CF_T_DECIMAL && !json_object_is_type(v, json_type_null)) {
        int64_t n;
        if (mg_dec_to_scaled(json_object_get_string(v), f->scale, &n) < 0) {
            snprintf(x->msg, sizeof(x->msg),
                     "field '%s' must be a decimal with at most %d decimal places that fits in "
                     "18 digits",
                     f->name, f->scale);
            return -1;
        }
        bson_append_int64(b, k, -1, n);
        return 0;
    }
    return mg_append_any(b, k, v, f->name, x);
}

/* ---- BSON → JSON (loop thread) ---------------------------------------------------------- */

static struct json_object *doc_to_json(bson_iter_t *it, int array)
{
    struct json_object *o = array ? json_object_new_array() : json_object_new_object();
    while (bson_iter_next(it)) {
        struct json_object *v = mg_iter_to_json(it);
        if (array) {
            json_object_array_add(o, v);
        } else {
            json_object_object_add(o, bson_iter_key(it), v);
        }
    }
    return o;
}

struct json_object *mg_iter_to_json(bson_iter_t *it)
{
    bson_iter_t child;
    switch (bson_iter_type(it)) {
    case BSON_TYPE_DOUBLE:
        return json_object_new_double(bson_iter_double(it));
    case BSON_TYPE_UTF8: {
        uint32_t len;
        const char *s = bson_iter_utf8(it, &len);
        return json_object_new_string_len(s, (int)len);
    }
    case BSON_TYPE_DOCUMENT:
        bson_iter_recurse(it, &child);
        return doc_to_json(&child, 0);
    case BSON_TYPE_ARRAY:
        bson_iter_recurse(it, &child);
        return doc_to_json(&child, 1);
    case BSON_TYPE_OID: {
        char hex[25];
        bson_oid_to_string(bson_iter_oid(it), hex);
        return json_object_new_string(hex);
    }
    case BSON_TYPE_BOOL:
        return json_object_new_boolean(bson_iter_bool(it));
    case BSON_TYPE_DATE_TIME: { /* milliseconds, in the gateway's width of six digits */
        int64_t ms = bson_iter_date_time(it);
        int64_t sec = ms / 1000, rem = ms % 1000;
        if (rem < 0) { /* before 1970: floor, the fraction counts forward */
            sec--;
            rem += 1000;
        }
        time_t t = (time_t)sec;
        struct tm tm;
        char buf[48], out[64];
        gmtime_r(&t, &tm);
        strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(out, sizeof(out), "%s.%03d000Z", buf, (int)rem);
        return json_object_new_string(out);
    }
    case BSON_TYPE_INT32:
        return json_object_new_int(bson_iter_int32(it));
    case BSON_TYPE_INT64:
        return json_object_new_int64(bson_iter_int64(it));
    case BSON_TYPE_DECIMAL128: {
        bson_decimal128_t dec;
        char s[BSON_DECIMAL128_STRING];
        bson_iter_decimal128(it, &dec);
        bson_decimal128_to_string(&dec, s);
        return json_object_new_double_s(strtod(s, NULL), s);
    }
    default:
        return NULL; /* binary, regex, …: not produced by polygate */
    }
}

struct json_object *mg_field_to_json(bson_iter_t *it, const struct cf_field *f)
{
    if (f != NULL && f->type == CF_T_DECIMAL && BSON_ITER_HOLDS_INT(it)) {
        return mg_scaled_to_json(bson_iter_as_int64(it), f->scale);
    }
    if (f != NULL && f->type == CF_T_DECIMAL && BSON_ITER_HOLDS_UTF8(it)) {
        const char *s = bson_iter_utf8(it, NULL);
        return json_object_new_double_s(strtod(s, NULL), s);
    }
    if (f != NULL && f->type == CF_T_TIMESTAMP && BSON_ITER_HOLDS_UTF8(it)) {
        /* stored as the gateway wrote it; a value written before timestamps
         * had one width ("…:02.3Z") is answered in today's width */
        char norm[48];
        const char *s = bson_iter_utf8(it, NULL);
        if (md_ts_normalise(s, norm, sizeof(norm)) == 0 && strcmp(norm, s) != 0) {
            return json_object_new_string(norm);
        }
    }
    return mg_iter_to_json(it);
}

struct json_object *mg_item_of(const bson_t *doc, const struct cf_domain *d, int64_t *version)
{
    struct json_object *o = json_object_new_object();
    bson_iter_t it;
    *version = -1;
    if (!bson_iter_init(&it, doc)) {
        return o;
    }
    while (bson_iter_next(&it)) {
        const char *k = bson_iter_key(&it);
        if (strcmp(k, "_id") == 0) {
            continue;
        }
        if (strcmp(k, "version") == 0 && BSON_ITER_HOLDS_INT(&it)) {
            *version = bson_iter_as_int64(&it);
        }
        json_object_object_add(o, k, mg_field_to_json(&it, d != NULL ? cf_field_find(d, k) : NULL));
    }
    return o;
}
