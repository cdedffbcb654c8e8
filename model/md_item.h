/*
 * md_item.h — items and patches checked against the domain's schema.
 *
 * Everything a client sends is validated here before any adapter sees it:
 * unknown fields, wrong types, missing required fields, a key in the body
 * that contradicts the path — each is a 400 naming the field.  Values are
 * normalised where the schema says how (timestamps → RFC 3339 UTC,
 * decimals given as strings → exact JSON numbers).
 */
#ifndef MD_ITEM_H
#define MD_ITEM_H

#include <stdint.h>

#include <json-c/json.h>

#include "model/md_error.h"

struct cf_domain;
struct cf_field;
struct cf_limits;

/* The most members a counters field takes in one PUT, and the most
 * set / inc / unset entries in one patch.  A store applies one write at
 * once (Redis: one script, which holds the server while it runs): 1 000
 * members take about 3 ms of Redis time, 10 000 about 19 ms, during which
 * every other client of that Redis waits.  Over it → 400. */
#define MD_MAX_COUNTER_OPS 1000

enum md_item_mode {
    MD_ITEM_PUT,    /* whole item; the key comes from the path */
    MD_ITEM_INSERT, /* whole item; the key from the body or generated */
};

/* Validate (and normalise in place) a whole item.  `key` is the path's id
 * for PUT (NULL for INSERT).  On INSERT a missing key is generated when the
 * domain allows it; `auto: created` timestamps are filled.  0 or -1 with e. */
int md_item_check(const struct cf_domain *d, const struct cf_limits *lim, enum md_item_mode mode,
                  const char *key, struct json_object *item, struct md_error *e);

/* Validate a patch document {"set":{…}, "inc":{…}, "unset":[…]}. */
int md_patch_check(const struct cf_domain *d, const struct cf_limits *lim,
                   struct json_object *patch, struct md_error *e);

/* Apply a validated patch to an item (stores that cannot patch natively).
 * 0, or -1 with e (e.g. an inc on a value that is not a number). */
int md_patch_apply(const struct cf_domain *d, struct json_object *item, struct json_object *patch,
                   struct md_error *e);

/* Check (and normalise) one value of field f, stored in the object `parent`
 * under `key` (the normalised value replaces it there).  Used for filter
 * values by md_query.c.  JSON null passes unless the field is required. */
int md_value_check(const struct cf_field *f, const struct cf_limits *lim,
                   struct json_object *parent, const char *key, struct json_object *v,
                   struct md_error *e);

/* An RFC 3339 timestamp (any offset, any fraction) → UTC with exactly six
 * fraction digits, "2026-01-31T12:00:00.500000Z" (the one width of every
 * timestamp in items: its text sorts in time order).  0, or -1 when s is
 * not such a timestamp. */
int md_ts_normalise(const char *s, char *out, size_t outlen);

/* A valid key (path id, envelope id): non-empty, ≤ 512 bytes, no control
 * characters, valid UTF-8 (as a string in a body must be). */
int md_key_check(const char *key, size_t len, struct md_error *e);

/* Exact decimal arithmetic on text: a + b with `scale` digits after the
 * point; out gets the canonical text.  -1 on overflow (beyond 36 digits). */
int md_decimal_add(const char *a, const char *b, int scale, char *out, size_t outlen);

#endif
