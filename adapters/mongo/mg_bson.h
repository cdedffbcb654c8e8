/*
 * mg_bson.h — JSON ↔ BSON for the MongoDB adapter.
 *
 * JSON → BSON runs on the loop thread when a request is prepared; BSON →
 * JSON on the loop thread when it completes (json-c never runs on a pool
 * thread).  Decimals are stored as 64-bit integers scaled by 10^scale (see
 * ad_mongo.h).
 *
 * Every key of a client object is checked at any depth (mg_key_ok): a name
 * that is empty (json-c cuts a key at a NUL, so "\u0000…" arrives empty),
 * starts with '$' or contains '.' is refused, so no client value is ever
 * read as an operator or a path.
 */
#ifndef MG_BSON_H
#define MG_BSON_H

#include <stddef.h>
#include <stdint.h>

#include <bson/bson.h>
#include <json-c/json.h>

struct cf_domain;
struct cf_field;

/* Why a translation was refused (→ 400). */
struct mg_xerr {
    const char *field; /* top-level field (config string), or NULL */
    char msg[256];
};

/* "12.5" at scale 2 → 1250; -1 on more places than `scale` or overflow. */
int mg_dec_to_scaled(const char *text, int scale, int64_t *out) __attribute__((warn_unused_result));
/* 1250 at scale 2 → "12.50". */
void mg_scaled_to_text(int64_t v, int scale, char *out, size_t outlen);
/* A JSON number that prints with exactly `scale` places. */
struct json_object *mg_scaled_to_json(int64_t v, int scale);

/* 0, or -1 with x->msg: k is not usable as a key of a stored object. */
int mg_key_ok(const char *k, const char *where, struct mg_xerr *x);
/* Any JSON value under key k (keys of objects checked at any depth). */
int mg_append_any(bson_t *b, const char *k, struct json_object *v, const char *top,
                  struct mg_xerr *x) __attribute__((warn_unused_result));
/* A top-level field's value, typed by the schema (decimals scaled). */
int mg_append_field(bson_t *b, const char *k, const struct cf_field *f, struct json_object *v,
                    struct mg_xerr *x) __attribute__((warn_unused_result));

/* A BSON value as plain JSON (relaxed: numbers as numbers, ObjectId as its
 * hex string); NULL for null and for types polygate never writes. */
struct json_object *mg_iter_to_json(bson_iter_t *it);
/* The same, typed by a field of the schema (decimals unscaled); f may be NULL. */
struct json_object *mg_field_to_json(bson_iter_t *it, const struct cf_field *f);
/* A stored document → the item: no _id, decimals unscaled; *version from it. */
struct json_object *mg_item_of(const bson_t *doc, const struct cf_domain *d, int64_t *version);

#endif
