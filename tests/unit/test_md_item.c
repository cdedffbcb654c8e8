/*
 * test_md_item.c — items and patches checked against a domain's schema,
 * exact decimals, and item keys.
 *
 * The domains are built through the config loader (the same path the
 * gateway takes), then each check is a table row: {case, mode, path id,
 * body, expected rc, field the error names, fragment of its message, and
 * for accepted items the exact JSON text one field must serialise to}.
 *
 * Some tests pin bugs found and fixed (regressions).  Cases that run into undefined behaviour run
 * in a child process, so that a sanitizer abort fails only that test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "config/cf_yaml.h"
#include "model/md_error.h"
#include "model/md_item.h"

/* ---- fixtures ------------------------------------------------------------ */

static const char config_yaml[] =
    "backends:\n"
    "  r: {type: redis, shards: [{name: s1, dsn: \"redis://127.0.0.1:6379/0\"}]}\n"
    "domains:\n"
    "  things:\n"
    "    backend: r\n"
    "    kind: value\n"
    "    key: id\n"
    "    fields:\n"
    "      id: string\n"
    "      email: {type: string, required: true}\n"
    "      n: int\n"
    "      price: {type: decimal, scale: 2}\n"
    "      at: timestamp\n"
    "      status: {type: enum, values: [A, B]}\n"
    "      o: object\n"
    "      a: array\n"
    "      created: {type: timestamp, auto: created}\n"
    "      flag: bool\n"
    "      any: json\n"
    "      nick: {type: string, max_len: 4}\n"
    "      rate: {type: decimal, scale: 6}\n"
    "  fixed:\n" /* the client names the key: no generation */
    "    backend: r\n"
    "    kind: value\n"
    "    key: code\n"
    "    generate_key: false\n"
    "    fields: {code: string, label: string}\n"
    "  carts:\n"
    "    backend: r\n"
    "    kind: hash\n"
    "    key: user_id\n"
    "    counters: items\n"
    "    fields: {user_id: string, items: counters}\n";

static struct cf_config *cf;
static const struct cf_domain *things, *fixed, *carts;

static int setup(void **state)
{
    (void)state;
    char err[512];
    ad_register_builtin();
    struct json_object *root =
        cf_yaml_load_string(config_yaml, strlen(config_yaml), err, sizeof(err));
    if (root == NULL) {
        fprintf(stderr, "test config: %s\n", err);
        return -1;
    }
    cf = cf_config_from_json(root, "test_md_item", err, sizeof(err));
    json_object_put(root);
    if (cf == NULL) {
        fprintf(stderr, "test config: %s\n", err);
        return -1;
    }
    things = cf_domain_find(cf, "things", 6);
    fixed = cf_domain_find(cf, "fixed", 5);
    carts = cf_domain_find(cf, "carts", 5);
    return things != NULL && fixed != NULL && carts != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    cf_config_unref(cf);
    return 0;
}

static struct json_object *parse(const char *text)
{
    struct json_object *v = json_tokener_parse(text);
    if (v == NULL) {
        fail_msg("test input is not JSON: %s", text);
    }
    return v;
}

static const char *plain(struct json_object *v)
{
    return json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN);
}

/* The serialisation of member `name` of obj ("<absent>" if there is none). */
static const char *member_json(struct json_object *obj, const char *name)
{
    struct json_object *v;
    if (!json_object_object_get_ex(obj, name, &v)) {
        return "<absent>";
    }
    return v == NULL ? "null" : plain(v);
}

/* Does the text parse back as one strict JSON document?  (Wrapped in [ ] so
 * that a bare number is terminated.) */
static int is_valid_json(const char *text)
{
    size_t len = strlen(text);
    char *wrapped = malloc(len + 3);
    assert_non_null(wrapped);
    wrapped[0] = '[';
    memcpy(wrapped + 1, text, len);
    wrapped[len + 1] = ']';
    wrapped[len + 2] = '\0';
    struct json_tokener *tok = json_tokener_new();
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    struct json_object *v = json_tokener_parse_ex(tok, wrapped, (int)len + 2);
    int ok = v != NULL && json_tokener_get_error(tok) == json_tokener_success &&
             json_tokener_get_parse_end(tok) == len + 2 && json_object_array_length(v) == 1;
    json_object_put(v);
    json_tokener_free(tok);
    free(wrapped);
    return ok;
}

/* RFC 8259 number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int is_json_number(const char *s)
{
    if (*s == '-') {
        s++;
    }
    if (*s == '0') {
        s++;
    } else if (*s >= '1' && *s <= '9') {
        while (*s >= '0' && *s <= '9') {
            s++;
        }
    } else {
        return 0;
    }
    if (*s == '.') {
        s++;
        if (!(*s >= '0' && *s <= '9')) {
            return 0;
        }
        while (*s >= '0' && *s <= '9') {
            s++;
        }
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-') {
            s++;
        }
        if (!(*s >= '0' && *s <= '9')) {
            return 0;
        }
        while (*s >= '0' && *s <= '9') {
            s++;
        }
    }
    return *s == '\0';
}

static int is_hex32(const char *s)
{
    if (strlen(s) != 32) {
        return 0;
    }
    for (int i = 0; i < 32; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) {
            return 0;
        }
    }
    return 1;
}

/* ---- md_item_check, table-driven ------------------------------------------------ */

#define EM "\"email\":\"a@b.c\"" /* the required field, for rows about something else */

struct item_case {
    const char *name;
    enum md_item_mode mode;
    const char *key; /* path id (PUT) */
    const char *body;
    int rc;
    const char *field;     /* rc -1: the field the error names (NULL: none) */
    const char *msg;       /* rc -1: a fragment of the message */
    const char *out_field; /* rc 0: this member of the checked item … */
    const char *out_json;  /* … serialises exactly so */
};

static const struct item_case item_cases[] = {
    /* shape */
    {"not an object", MD_ITEM_PUT, "k", "[1]", -1, NULL, "must be a JSON object", NULL, NULL},
    {"minimal PUT", MD_ITEM_PUT, "k", "{" EM "}", 0, NULL, NULL, "id", "\"k\""},
    {"unknown field", MD_ITEM_PUT, "k", "{" EM ",\"colour\":1}", -1, NULL,
     "unknown field 'colour' for domain 'things'", NULL, NULL},
    {"version is ignored and dropped", MD_ITEM_PUT, "k", "{" EM ",\"version\":7}", 0, NULL, NULL,
     "version", "<absent>"},
    /* required */
    {"missing required", MD_ITEM_PUT, "k", "{\"n\":1}", -1, "email", "field 'email' is required",
     NULL, NULL},
    {"required null", MD_ITEM_PUT, "k", "{\"email\":null}", -1, "email",
     "'email' is required and cannot be null", NULL, NULL},
    {"optional null kept", MD_ITEM_PUT, "k", "{" EM ",\"n\":null}", 0, NULL, NULL, "n", "null"},
    /* wrong type, per field type */
    {"string given a number", MD_ITEM_PUT, "k", "{\"email\":5}", -1, "email",
     "'email' must be a string", NULL, NULL},
    {"int given a string", MD_ITEM_PUT, "k", "{" EM ",\"n\":\"5\"}", -1, "n",
     "'n' must be an integer", NULL, NULL},
    {"int given a real", MD_ITEM_PUT, "k", "{" EM ",\"n\":1.5}", -1, "n", "'n' must be an integer",
     NULL, NULL},
    {"decimal given a bool", MD_ITEM_PUT, "k", "{" EM ",\"price\":true}", -1, "price",
     "'price' must be a decimal number", NULL, NULL},
    {"decimal given an object", MD_ITEM_PUT, "k", "{" EM ",\"price\":{}}", -1, "price",
     "'price' must be a decimal number", NULL, NULL},
    {"timestamp given a number", MD_ITEM_PUT, "k", "{" EM ",\"at\":1700000000}", -1, "at",
     "'at' must be an RFC 3339 timestamp", NULL, NULL},
    {"enum given a number", MD_ITEM_PUT, "k", "{" EM ",\"status\":1}", -1, "status",
     "'status' must be a string", NULL, NULL},
    {"enum value not allowed", MD_ITEM_PUT, "k", "{" EM ",\"status\":\"C\"}", -1, "status",
     "'status' must be one of the allowed values", NULL, NULL},
    {"enum value allowed", MD_ITEM_PUT, "k", "{" EM ",\"status\":\"B\"}", 0, NULL, NULL, "status",
     "\"B\""},
    {"object given an array", MD_ITEM_PUT, "k", "{" EM ",\"o\":[]}", -1, "o",
     "'o' must be an object", NULL, NULL},
    {"array given an object", MD_ITEM_PUT, "k", "{" EM ",\"a\":{}}", -1, "a",
     "'a' must be an array", NULL, NULL},
    {"bool given a number", MD_ITEM_PUT, "k", "{" EM ",\"flag\":1}", -1, "flag",
     "'flag' must be true or false", NULL, NULL},
    {"json takes anything", MD_ITEM_PUT, "k", "{" EM ",\"any\":[1,{\"x\":null}]}", 0, NULL, NULL,
     "any", "[1,{\"x\":null}]"},
    {"string too long (max_len 4)", MD_ITEM_PUT, "k", "{" EM ",\"nick\":\"abcde\"}", -1, "nick",
     "'nick' is longer than 4 bytes", NULL, NULL},
    {"string at max_len", MD_ITEM_PUT, "k", "{" EM ",\"nick\":\"abcd\"}", 0, NULL, NULL, "nick",
     "\"abcd\""},
    {"string with a NUL", MD_ITEM_PUT, "k", "{\"email\":\"a\\u0000b\"}", -1, "email",
     "contains a NUL character", NULL, NULL},
    /* integers */
    {"int64 max - 1", MD_ITEM_PUT, "k", "{" EM ",\"n\":9223372036854775806}", 0, NULL, NULL, "n",
     "9223372036854775806"},
    {"int64 max exactly", MD_ITEM_PUT, "k", "{" EM ",\"n\":9223372036854775807}", 0, NULL, NULL,
     "n", "9223372036854775807"},
    {"int64 min exactly", MD_ITEM_PUT, "k", "{" EM ",\"n\":-9223372036854775808}", 0, NULL, NULL,
     "n", "-9223372036854775808"},
    {"int64 max + 1 (json-c holds it as a uint64)", MD_ITEM_PUT, "k",
     "{" EM ",\"n\":9223372036854775808}", -1, "n", "'n' is out of the 64-bit range", NULL, NULL},
    {"huge integer", MD_ITEM_PUT, "k", "{" EM ",\"n\":99999999999999999999}", -1, "n",
     "out of the 64-bit range", NULL, NULL},
    {"uint64 range integer", MD_ITEM_PUT, "k", "{" EM ",\"n\":18446744073709551615}", -1, "n",
     "out of the 64-bit range", NULL, NULL},
    /* (below INT64_MIN: json-c clamps to INT64_MIN, so lb_json_parse refuses
     * the text before any tree is built — test_lb_json.c) */
    /* decimals (scale 2) */
    {"decimal string 12.345", MD_ITEM_PUT, "k", "{" EM ",\"price\":\"12.345\"}", -1, "price",
     "more than 2 decimal places", NULL, NULL},
    {"decimal number 12.345", MD_ITEM_PUT, "k", "{" EM ",\"price\":12.345}", -1, "price",
     "more than 2 decimal places", NULL, NULL},
    {"decimal string 12.30 → number", MD_ITEM_PUT, "k", "{" EM ",\"price\":\"12.30\"}", 0, NULL,
     NULL, "price", "12.30"},
    {"decimal number 12.3", MD_ITEM_PUT, "k", "{" EM ",\"price\":12.3}", 0, NULL, NULL, "price",
     "12.3"},
    {"decimal number 12.30 keeps digits", MD_ITEM_PUT, "k", "{" EM ",\"price\":12.30}", 0, NULL,
     NULL, "price", "12.30"},
    {"decimal integer", MD_ITEM_PUT, "k", "{" EM ",\"price\":12}", 0, NULL, NULL, "price", "12"},
    {"decimal negative string", MD_ITEM_PUT, "k", "{" EM ",\"price\":\"-0.50\"}", 0, NULL, NULL,
     "price", "-0.50"},
    {"decimal trailing zeros past the scale", MD_ITEM_PUT, "k", "{" EM ",\"price\":\"1.500\"}", 0,
     NULL, NULL, "price", "1.500"},
    {"decimal exponent", MD_ITEM_PUT, "k", "{" EM ",\"price\":1.2e3}", -1, "price",
     "must be a plain decimal number", NULL, NULL},
    {"decimal string not a number", MD_ITEM_PUT, "k", "{" EM ",\"price\":\"12,30\"}", -1, "price",
     "must be a plain decimal number", NULL, NULL},
    {"decimal string empty", MD_ITEM_PUT, "k", "{" EM ",\"price\":\"\"}", -1, "price",
     "must be a plain decimal number", NULL, NULL},
    /* the field's precision (18) bounds the digits, and 36 is the hard limit */
    {"decimal 16+2 digits", MD_ITEM_PUT, "k", "{" EM ",\"price\":\"9999999999999999.99\"}", 0, NULL,
     NULL, "price", "9999999999999999.99"},
    {"decimal 17+2 digits (precision 18)", MD_ITEM_PUT, "k",
     "{" EM ",\"price\":\"99999999999999999.99\"}", -1, "price", "digits before the point", NULL,
     NULL},
    {"decimal 37 digits", MD_ITEM_PUT, "k",
     "{" EM ",\"price\":\"99999999999999999999999999999999999.99\"}", -1, "price",
     "digits before the point", NULL, NULL},
    {"decimal integer beyond int64", MD_ITEM_PUT, "k", "{" EM ",\"price\":99999999999999999999}",
     -1, "price", "too large; send it as a string", NULL, NULL},
    /* timestamps */
    {"timestamp offset → UTC", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-01-31T12:00:00+02:00\"}", 0,
     NULL, NULL, "at", "\"2026-01-31T10:00:00.000000Z\""},
    {"timestamp negative offset", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-01-31T22:00:00-05:30\"}",
     0, NULL, NULL, "at", "\"2026-02-01T03:30:00.000000Z\""},
    {"timestamp offset crosses the year", MD_ITEM_PUT, "k",
     "{" EM ",\"at\":\"2026-01-01T00:30:00+01:00\"}", 0, NULL, NULL, "at",
     "\"2025-12-31T23:30:00.000000Z\""},
    {"timestamp UTC unchanged", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-01-31T12:00:00Z\"}", 0,
     NULL, NULL, "at", "\"2026-01-31T12:00:00.000000Z\""},
    {"timestamp lower-case t and z", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-01-31t12:00:00z\"}",
     0, NULL, NULL, "at", "\"2026-01-31T12:00:00.000000Z\""},
    {"timestamp fraction kept, six digits", MD_ITEM_PUT, "k",
     "{" EM ",\"at\":\"2026-01-31T12:00:00.123Z\"}", 0, NULL, NULL, "at",
     "\"2026-01-31T12:00:00.123000Z\""},
    {"timestamp fraction of one digit", MD_ITEM_PUT, "k",
     "{" EM ",\"at\":\"2026-01-31T12:00:00.3Z\"}", 0, NULL, NULL, "at",
     "\"2026-01-31T12:00:00.300000Z\""},
    {"timestamp fraction with offset", MD_ITEM_PUT, "k",
     "{" EM ",\"at\":\"2026-01-31T12:00:00.5+01:00\"}", 0, NULL, NULL, "at",
     "\"2026-01-31T11:00:00.500000Z\""},
    {"timestamp fraction cut to microseconds", MD_ITEM_PUT, "k",
     "{" EM ",\"at\":\"2026-01-31T12:00:00.1234567Z\"}", 0, NULL, NULL, "at",
     "\"2026-01-31T12:00:00.123456Z\""},
    {"timestamp offset cut short", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-01-31T12:00:00+\"}", -1,
     "at", "RFC 3339", NULL, NULL},
    {"timestamp offset without minutes", MD_ITEM_PUT, "k",
     "{" EM ",\"at\":\"2026-01-31T12:00:00+01\"}", -1, "at", "RFC 3339", NULL, NULL},
    {"timestamp Feb 30", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-02-30T00:00:00Z\"}", -1, "at",
     "RFC 3339", NULL, NULL},
    {"timestamp Feb 29 of a common year", MD_ITEM_PUT, "k",
     "{" EM ",\"at\":\"2025-02-29T00:00:00Z\"}", -1, "at", "RFC 3339", NULL, NULL},
    {"timestamp Feb 29 of 1900", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"1900-02-29T00:00:00Z\"}", -1,
     "at", "RFC 3339", NULL, NULL},
    {"timestamp Feb 29 of a leap year", MD_ITEM_PUT, "k",
     "{" EM ",\"at\":\"2024-02-29T00:00:00Z\"}", 0, NULL, NULL, "at",
     "\"2024-02-29T00:00:00.000000Z\""},
    {"timestamp Feb 29 of 2000", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2000-02-29T00:00:00Z\"}", 0,
     NULL, NULL, "at", "\"2000-02-29T00:00:00.000000Z\""},
    {"timestamp April 31", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-04-31T00:00:00Z\"}", -1, "at",
     "RFC 3339", NULL, NULL},
    {"timestamp month 13", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-13-01T00:00:00Z\"}", -1, "at",
     "RFC 3339", NULL, NULL},
    {"timestamp hour 24", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-01-31T24:00:00Z\"}", -1, "at",
     "RFC 3339", NULL, NULL},
    {"timestamp without zone", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-01-31T12:00:00\"}", -1,
     "at", "RFC 3339", NULL, NULL},
    {"timestamp date only", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-01-31\"}", -1, "at",
     "RFC 3339", NULL, NULL},
    {"timestamp trailing junk", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-01-31T12:00:00Zx\"}", -1,
     "at", "RFC 3339", NULL, NULL},
    {"timestamp empty fraction", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-01-31T12:00:00.Z\"}", -1,
     "at", "RFC 3339", NULL, NULL},
    {"timestamp bad offset", MD_ITEM_PUT, "k", "{" EM ",\"at\":\"2026-01-31T12:00:00+2:00\"}", -1,
     "at", "RFC 3339", NULL, NULL},
    /* keys */
    {"PUT key from the path", MD_ITEM_PUT, "k1", "{" EM "}", 0, NULL, NULL, "id", "\"k1\""},
    {"PUT key in the body agrees", MD_ITEM_PUT, "k1", "{" EM ",\"id\":\"k1\"}", 0, NULL, NULL, "id",
     "\"k1\""},
    {"PUT key in the body contradicts the path", MD_ITEM_PUT, "k1", "{" EM ",\"id\":\"k2\"}", -1,
     "id", "'id' in the body does not match the id in the path", NULL, NULL},
    {"PUT key null in the body", MD_ITEM_PUT, "k1", "{" EM ",\"id\":null}", 0, NULL, NULL, "id",
     "\"k1\""},
    {"PUT key of the wrong type", MD_ITEM_PUT, "k1", "{" EM ",\"id\":1}", -1, "id",
     "'id' must be a string", NULL, NULL},
    {"INSERT key given", MD_ITEM_INSERT, NULL, "{" EM ",\"id\":\"mine\"}", 0, NULL, NULL, "id",
     "\"mine\""},
    {"INSERT key with a control character", MD_ITEM_INSERT, NULL, "{" EM ",\"id\":\"a\\u0001b\"}",
     -1, "id", "control character", NULL, NULL},
    {"INSERT key empty", MD_ITEM_INSERT, NULL, "{" EM ",\"id\":\"\"}", -1, "id", "key is empty",
     NULL, NULL},
    {"INSERT still checks required", MD_ITEM_INSERT, NULL, "{}", -1, "email",
     "field 'email' is required", NULL, NULL},
    /* auto: created */
    {"auto created kept when given", MD_ITEM_PUT, "k",
     "{" EM ",\"created\":\"2020-01-01T00:00:00+01:00\"}", 0, NULL, NULL, "created",
     "\"2019-12-31T23:00:00.000000Z\""},
};

static void run_item_case(const struct cf_domain *d, const struct item_case *c, int *failed)
{
    struct json_object *item = parse(c->body);
    struct md_error e;
    memset(&e, 0, sizeof(e));
    e.err = MD_E_INTERNAL;
    int rc = md_item_check(d, &cf->limits, c->mode, c->key, item, &e);
    const char *why = NULL;
    char buf[512];
    if (rc != c->rc) {
        snprintf(buf, sizeof(buf), "rc %d, want %d (message: %s)", rc, c->rc,
                 rc < 0 ? e.message : "-");
        why = buf;
    } else if (rc < 0) {
        if (e.err != MD_E_BAD_REQUEST) {
            why = "error is not bad_request";
        } else if (c->field == NULL ? e.field != NULL
                                    : e.field == NULL || strcmp(e.field, c->field) != 0) {
            snprintf(buf, sizeof(buf), "error names field %s, want %s",
                     e.field ? e.field : "(none)", c->field ? c->field : "(none)");
            why = buf;
        } else if (strstr(e.message, c->msg) == NULL) {
            snprintf(buf, sizeof(buf), "message \"%s\" lacks \"%s\"", e.message, c->msg);
            why = buf;
        }
    } else if (c->out_field != NULL && strcmp(member_json(item, c->out_field), c->out_json) != 0) {
        snprintf(buf, sizeof(buf), "%s serialises as %s, want %s", c->out_field,
                 member_json(item, c->out_field), c->out_json);
        why = buf;
    } else if (json_object_is_type(json_object_object_get(item, "price"), json_type_double) &&
               !is_json_number(member_json(item, "price"))) {
        snprintf(buf, sizeof(buf), "price is not a JSON number: %s", member_json(item, "price"));
        why = buf;
    } else if (!is_valid_json(plain(item))) {
        snprintf(buf, sizeof(buf), "the checked item is not valid JSON: %s", plain(item));
        why = buf;
    }
    if (why != NULL) {
        print_error("FAIL [%s] %s: %s\n", c->name, c->body, why);
        (*failed)++;
    }
    json_object_put(item);
}

static void test_item_table(void **state)
{
    (void)state;
    int failed = 0;
    size_t n = sizeof(item_cases) / sizeof(item_cases[0]);
    for (size_t i = 0; i < n; i++) {
        run_item_case(things, &item_cases[i], &failed);
    }
    if (failed > 0) {
        fail_msg("%d of %zu item cases failed", failed, n);
    }
}

static void test_item_generated_key(void **state)
{
    (void)state;
    struct md_error e = {0};
    struct json_object *a = parse("{" EM "}"), *b = parse("{" EM ",\"id\":null}");
    assert_int_equal(md_item_check(things, &cf->limits, MD_ITEM_INSERT, NULL, a, &e), 0);
    assert_int_equal(md_item_check(things, &cf->limits, MD_ITEM_INSERT, NULL, b, &e), 0);
    const char *ka = json_object_get_string(json_object_object_get(a, "id"));
    const char *kb = json_object_get_string(json_object_object_get(b, "id"));
    assert_non_null(ka);
    assert_non_null(kb);
    if (!is_hex32(ka) || !is_hex32(kb)) {
        fail_msg("generated keys are not 32 hex characters: %s, %s", ka, kb);
    }
    assert_string_not_equal(ka, kb);
    json_object_put(a);
    json_object_put(b);

    /* a domain that does not generate keys wants one on insert */
    struct json_object *c = parse("{\"label\":\"x\"}");
    assert_int_equal(md_item_check(fixed, &cf->limits, MD_ITEM_INSERT, NULL, c, &e), -1);
    assert_string_equal(e.field, "code");
    assert_non_null(strstr(e.message, "'code' is required"));
    json_object_put(c);
    c = parse("{\"code\":\"X1\"}");
    assert_int_equal(md_item_check(fixed, &cf->limits, MD_ITEM_INSERT, NULL, c, &e), 0);
    assert_string_equal(member_json(c, "code"), "\"X1\"");
    json_object_put(c);
}

static void test_item_auto_created(void **state)
{
    (void)state;
    struct md_error e = {0};
    struct json_object *item = parse("{" EM "}");
    time_t before = time(NULL);
    assert_int_equal(md_item_check(things, &cf->limits, MD_ITEM_INSERT, NULL, item, &e), 0);
    time_t after = time(NULL);
    const char *s = json_object_get_string(json_object_object_get(item, "created"));
    assert_non_null(s);
    /* YYYY-MM-DDTHH:MM:SS.ffffffZ, UTC, and now: six fraction digits, the
     * width of every timestamp (it had three, beside client values' six) */
    struct tm tm = {0};
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (end == NULL || s[4] != '-' || s[10] != 'T' || s[strlen(s) - 1] != 'Z') {
        fail_msg("created is not RFC 3339 UTC: %s", s);
    }
    assert_int_equal(*end, '.');
    for (int i = 1; i <= 6; i++) {
        assert_true(end[i] >= '0' && end[i] <= '9');
    }
    assert_string_equal(end + 7, "Z");
    time_t t = timegm(&tm);
    if (t < before - 1 || t > after + 1) {
        fail_msg("created %s is not now", s);
    }
    /* the stamp it makes is one the checker accepts unchanged */
    char copy[64];
    snprintf(copy, sizeof(copy), "%s", s);
    struct json_object *again = json_object_new_object();
    json_object_object_add(again, "email", json_object_new_string("x"));
    json_object_object_add(again, "at", json_object_new_string(copy));
    assert_int_equal(md_item_check(things, &cf->limits, MD_ITEM_PUT, "k", again, &e), 0);
    assert_string_equal(json_object_get_string(json_object_object_get(again, "at")), copy);
    json_object_put(again);
    json_object_put(item);
}

static void test_item_counters(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        int rc;
    } cases[] = {
        {"{\"items\":{\"p1\":2,\"p2\":0}}", 0},
        {"{\"items\":{}}", 0},
        {"{\"items\":{\"p1\":-1}}", -1},
        {"{\"items\":{\"p1\":1000000001}}", -1},
        {"{\"items\":{\"p1\":\"2\"}}", -1},
        {"{\"items\":{\"\":1}}", -1},
        {"{\"items\":[1]}", -1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct md_error e = {0};
        struct json_object *item = parse(cases[i].body);
        int rc = md_item_check(carts, &cf->limits, MD_ITEM_PUT, "u1", item, &e);
        if (rc != cases[i].rc) {
            fail_msg("%s: rc %d, want %d (%s)", cases[i].body, rc, cases[i].rc, e.message);
        }
        if (rc < 0) {
            assert_string_equal(e.field, "items");
        } else {
            assert_string_equal(member_json(item, "user_id"), "\"u1\"");
        }
        json_object_put(item);
    }
}

/* regression (model/md_item.c check_value, CF_T_DECIMAL): a decimal given as a
 * string is accepted by dec_parse in forms that are not JSON numbers ("12.",
 * ".5", "+1.5", "007.5", "-.5"), and json_object_new_double_s() then keeps that
 * text, so the item the gateway stores and returns is not valid JSON.  Either
 * reject these strings or write the canonical digits ("12", "0.5", "1.5", …). */
static void test_decimal_string_not_json(void **state)
{
    (void)state;
    static const char *const texts[] = {"12.", ".5", "+1.5", "007.5", "-.5", "00"};
    int failed = 0;
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        char body[128];
        snprintf(body, sizeof(body), "{" EM ",\"price\":\"%s\"}", texts[i]);
        struct json_object *item = parse(body);
        struct md_error e = {0};
        int rc = md_item_check(things, &cf->limits, MD_ITEM_PUT, "k", item, &e);
        if (rc == 0 && !is_json_number(member_json(item, "price"))) {
            print_error("FAIL: price \"%s\" accepted and serialised as %s (not JSON)\n", texts[i],
                        member_json(item, "price"));
            failed++;
        }
        json_object_put(item);
    }
    if (failed > 0) {
        fail_msg("regression (model/md_item.c check_value, decimal strings): %d decimal "
                 "string(s) accepted that serialise as invalid JSON",
                 failed);
    }
}

/* regression (model/md_item.c ts_normalise): the sscanf("%4d-%2d-%2d") /
 * ("%2d:%2d:%2d") parse takes signs and leading blanks inside the fields, only
 * upper bounds are checked (negative hours, minutes and seconds pass and shift
 * the time), and strftime("%Y") does not pad, so years before 1000 (or after
 * 9999 once the offset is applied) come out as something that is not RFC 3339.
 * want NULL: must be rejected. */
static void test_timestamp_lenient(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *want;
    } cases[] = {
        {"2026-01-31T-1:00:00Z", NULL},      /* accepted as 2026-01-30T23:00:00Z */
        {"2026-01-31T12:-5:00Z", NULL},      /* accepted as …T11:55:00Z */
        {"2026-01-31T12:00:-1Z", NULL},      /* accepted as …T11:59:59Z */
        {"2026-+1-31T12:00:00Z", NULL},      /* accepted as 2026-01-31… */
        {"2026-01- 1T12:00:00Z", NULL},      /* accepted as 2026-01-01… */
        {" 202-01-31T12:00:00Z", NULL},      /* accepted as "202-01-31…" */
        {"-001-01-01T00:00:00Z", NULL},      /* accepted as "-1-01-01…" */
        {"9999-12-31T23:59:59-01:00", NULL}, /* accepted as "10000-01-01…" */
        {"0999-01-01T00:00:00Z", "0999-01-01T00:00:00.000000Z"}, /* gave "999-…" */
        {"0001-01-01T00:00:00+01:00", NULL},                     /* year 0: before 0001, refused */
    };
    int failed = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct json_object *item = json_object_new_object();
        json_object_object_add(item, "email", json_object_new_string("x"));
        json_object_object_add(item, "at", json_object_new_string(cases[i].in));
        struct md_error e = {0};
        int rc = md_item_check(things, &cf->limits, MD_ITEM_PUT, "k", item, &e);
        const char *got =
            rc == 0 ? json_object_get_string(json_object_object_get(item, "at")) : NULL;
        if (cases[i].want == NULL ? rc == 0 : got == NULL || strcmp(got, cases[i].want) != 0) {
            print_error("FAIL: at \"%s\" → %s, want %s\n", cases[i].in, got ? got : "rejected",
                        cases[i].want ? cases[i].want : "rejected");
            failed++;
        }
        json_object_put(item);
    }
    if (failed > 0) {
        fail_msg("regression (model/md_item.c ts_normalise): %d malformed timestamp(s) accepted "
                 "or normalised to non-RFC 3339 text",
                 failed);
    }
}

/* ---- running a case that may hit undefined behaviour ------------------------------ */

/* Run fn in a child: 0 = it behaved, anything else (including a sanitizer
 * report and exit, or a crash) = it did not.  The child never returns. */
static int run_isolated(int (*fn)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fail_msg("fork failed");
    }
    if (pid == 0) {
        _exit(fn());
    }
    int st;
    if (waitpid(pid, &st, 0) != pid) {
        fail_msg("waitpid failed");
    }
    if (WIFSIGNALED(st)) {
        return 128 + WTERMSIG(st);
    }
    return WEXITSTATUS(st);
}

#define NINES36 "999999999999999999999999999999999999"

/* 36 digits + 36 digits at scale 2: each operand is ~1e38 as an __int128, so
 * the sum x + y overflows before the range check (md_item.c md_decimal_add). */
static int child_add_overflow(void)
{
    char out[64];
    return md_decimal_add(NINES36, NINES36, 2, out, sizeof(out)) == -1 ? 0 : 2;
}

/* 36 digits padded to scale 3 is ~1e39: dec_parse's `v *= 10` padding loop
 * overflows __int128 (its 36-digit cap counts parsed digits, not the padding). */
static int child_parse_overflow(void)
{
    char out[64];
    return md_decimal_add(NINES36, "0", 3, out, sizeof(out)) == -1 ? 0 : 2;
}

/* Through validation: a decimal field with scale 6 and a 33-digit value. */
static int child_item_overflow(void)
{
    struct json_object *item =
        json_tokener_parse("{" EM ",\"rate\":\"999999999999999999999999999999999\"}");
    struct md_error e = {0};
    int rc = md_item_check(things, &cf->limits, MD_ITEM_PUT, "k", item, &e);
    json_object_put(item);
    return rc == -1 ? 0 : 2;
}

/* regression (model/md_item.c dec_parse / md_decimal_add): signed __int128
 * overflow (undefined behaviour) on operands near the 36-digit limit.  Under
 * -fsanitize=undefined the child dies with "signed integer overflow"; in a
 * plain build the result is whatever the wrap-around gives.  Expected: -1 (or,
 * for md_item_check, a 400) without overflowing. */
static void test_decimal_overflow(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        int (*fn)(void);
    } cases[] = {
        {"md_decimal_add(36 nines, 36 nines, scale 2): x + y overflows", child_add_overflow},
        {"md_decimal_add(36 nines, 0, scale 3): dec_parse padding overflows", child_parse_overflow},
        {"md_item_check rate (scale 6) = 33 nines: dec_parse padding overflows",
         child_item_overflow},
    };
    int failed = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int st = run_isolated(cases[i].fn);
        if (st != 0) {
            print_error("FAIL [%s]: child %s %d\n", cases[i].name,
                        st == 2 ? "returned the wrong result," : "died / sanitizer exit", st);
            failed++;
        }
    }
    if (failed > 0) {
        fail_msg("regression (model/md_item.c dec_parse/md_decimal_add __int128 overflow): "
                 "%d case(s) failed",
                 failed);
    }
}

/* ---- md_patch_check ------------------------------------------------------------------- */

struct patch_case {
    const char *name;
    int which; /* 0 things, 1 carts */
    const char *patch;
    int rc;
    const char *field; /* rc -1: field named (NULL: none) */
    const char *msg;   /* rc -1: message fragment */
};

static const struct patch_case patch_cases[] = {
    {"not an object", 0, "[]", -1, NULL, "a patch must be an object"},
    {"empty patch", 0, "{}", -1, NULL, "the patch changes nothing"},
    {"empty set", 0, "{\"set\":{}}", -1, NULL, "the patch changes nothing"},
    {"empty unset", 0, "{\"unset\":[]}", -1, NULL, "the patch changes nothing"},
    {"unknown op", 0, "{\"add\":{\"n\":1}}", -1, NULL, "unknown patch operation 'add'"},
    {"set not an object", 0, "{\"set\":[1]}", -1, NULL, "patch 'set' must be an object"},
    {"set of an unknown field", 0, "{\"set\":{\"colour\":1}}", -1, NULL,
     "unknown field 'colour' for domain 'things'"},
    {"set of the key", 0, "{\"set\":{\"id\":\"x\"}}", -1, "id", "'id' cannot be changed"},
    {"set of the wrong type", 0, "{\"set\":{\"n\":\"1\"}}", -1, "n", "'n' must be an integer"},
    {"set of a required field to null", 0, "{\"set\":{\"email\":null}}", -1, "email",
     "is required and cannot be null"},
    {"set of version", 0, "{\"set\":{\"version\":3}}", -1, NULL, "unknown field 'version'"},
    {"set of a bad enum", 0, "{\"set\":{\"status\":\"Z\"}}", -1, "status", "allowed values"},
    {"set of a bad timestamp", 0, "{\"set\":{\"at\":\"yesterday\"}}", -1, "at", "RFC 3339"},
    {"set of a decimal with too many places", 0, "{\"set\":{\"price\":\"1.001\"}}", -1, "price",
     "more than 2 decimal places"},
    {"inc of a string field", 0, "{\"inc\":{\"email\":1}}", -1, "email",
     "'email' is not a number and cannot be incremented"},
    {"inc of a timestamp field", 0, "{\"inc\":{\"at\":1}}", -1, "at", "cannot be incremented"},
    {"inc of an unknown field", 0, "{\"inc\":{\"zz\":1}}", -1, NULL, "unknown field 'zz'"},
    {"inc by null", 0, "{\"inc\":{\"n\":null}}", -1, "n", "an increment of 'n' must be a number"},
    {"inc by a string", 0, "{\"inc\":{\"n\":\"1\"}}", -1, "n", "'n' must be an integer"},
    {"inc of a decimal beyond its scale", 0, "{\"inc\":{\"price\":0.001}}", -1, "price",
     "more than 2 decimal places"},
    {"unset not an array", 0, "{\"unset\":\"n\"}", -1, NULL, "patch 'unset' must be an array"},
    {"unset of a non-string", 0, "{\"unset\":[1]}", -1, NULL, "must list field names"},
    {"unset of a required field", 0, "{\"unset\":[\"email\"]}", -1, "email",
     "'email' is required and cannot be unset"},
    {"unset of the key", 0, "{\"unset\":[\"id\"]}", -1, "id", "cannot be unset"},
    {"unset of an unknown field", 0, "{\"unset\":[\"zz\"]}", -1, NULL, "unknown field 'zz'"},
    {"one bad op spoils the patch", 0, "{\"set\":{\"n\":1},\"bogus\":1}", -1, NULL,
     "unknown patch operation 'bogus'"},
    /* valid */
    {"set", 0, "{\"set\":{\"email\":\"x@y\",\"n\":1,\"o\":{\"k\":1}}}", 0, NULL, NULL},
    {"set to null (optional)", 0, "{\"set\":{\"n\":null}}", 0, NULL, NULL},
    {"inc int", 0, "{\"inc\":{\"n\":-2}}", 0, NULL, NULL},
    {"inc decimal string", 0, "{\"inc\":{\"price\":\"0.10\"}}", 0, NULL, NULL},
    {"inc decimal number", 0, "{\"inc\":{\"price\":-1.5}}", 0, NULL, NULL},
    {"unset", 0, "{\"unset\":[\"n\",\"o\"]}", 0, NULL, NULL},
    {"all three", 0, "{\"set\":{\"flag\":true},\"inc\":{\"n\":1},\"unset\":[\"a\"]}", 0, NULL,
     NULL},
    /* hash domain: counters members */
    {"hash inc member", 1, "{\"inc\":{\"items.p1\":2}}", 0, NULL, NULL},
    {"hash inc member negative", 1, "{\"inc\":{\"items.p1\":-2}}", 0, NULL, NULL},
    {"hash set member", 1, "{\"set\":{\"items.p1\":5}}", 0, NULL, NULL},
    {"hash unset member", 1, "{\"unset\":[\"items.p1\"]}", 0, NULL, NULL},
    {"hash set member negative", 1, "{\"set\":{\"items.p1\":-1}}", -1, "items",
     "between 0 and 1000000000"},
    {"hash inc member too large", 1, "{\"inc\":{\"items.p1\":2000000000}}", -1, "items",
     "between -1000000000 and 1000000000"},
    {"hash inc member not an int", 1, "{\"inc\":{\"items.p1\":1.5}}", -1, "items",
     "must be an integer"},
    {"hash member without a name", 1, "{\"inc\":{\"items.\":1}}", -1, NULL, "use 'items.<name>'"},
    {"hash unknown field", 1, "{\"set\":{\"qty\":1}}", -1, NULL,
     "unknown field 'qty' for domain 'carts' (use 'items.<name>')"},
    {"hash set of the key", 1, "{\"set\":{\"user_id\":\"u2\"}}", -1, "user_id",
     "cannot be changed"},
};

static void test_patch_check_table(void **state)
{
    (void)state;
    int failed = 0;
    size_t n = sizeof(patch_cases) / sizeof(patch_cases[0]);
    for (size_t i = 0; i < n; i++) {
        const struct patch_case *c = &patch_cases[i];
        struct json_object *p = parse(c->patch);
        struct md_error e;
        memset(&e, 0, sizeof(e));
        e.err = MD_E_INTERNAL;
        int rc = md_patch_check(c->which == 0 ? things : carts, &cf->limits, p, &e);
        char why[512] = "";
        if (rc != c->rc) {
            snprintf(why, sizeof(why), "rc %d, want %d (%s)", rc, c->rc, rc < 0 ? e.message : "-");
        } else if (rc < 0 && e.err != MD_E_BAD_REQUEST) {
            snprintf(why, sizeof(why), "error is not bad_request");
        } else if (rc < 0 &&
                   (c->field == NULL ? e.field != NULL
                                     : e.field == NULL || strcmp(e.field, c->field) != 0)) {
            snprintf(why, sizeof(why), "names field %s, want %s", e.field ? e.field : "(none)",
                     c->field ? c->field : "(none)");
        } else if (rc < 0 && strstr(e.message, c->msg) == NULL) {
            snprintf(why, sizeof(why), "message \"%s\" lacks \"%s\"", e.message, c->msg);
        }
        if (why[0] != '\0') {
            print_error("FAIL [%s] %s: %s\n", c->name, c->patch, why);
            failed++;
        }
        json_object_put(p);
    }
    if (failed > 0) {
        fail_msg("%d of %zu patch cases failed", failed, n);
    }
}

/* A checked patch is normalised like an item: decimals as numbers,
 * timestamps in UTC. */
static void test_patch_check_normalises(void **state)
{
    (void)state;
    struct md_error e = {0};
    struct json_object *p =
        parse("{\"set\":{\"at\":\"2026-01-31T12:00:00+02:00\",\"price\":\"12.30\"}}");
    assert_int_equal(md_patch_check(things, &cf->limits, p, &e), 0);
    assert_string_equal(plain(p),
                        "{\"set\":{\"at\":\"2026-01-31T10:00:00.000000Z\",\"price\":12.30}}");
    json_object_put(p);
}

/* ---- md_patch_apply ---------------------------------------------------------------------- */

struct apply_case {
    const char *name;
    const char *item;
    const char *patch;
    int rc;
    const char *want; /* rc 0: the item after, compact; rc -1: message fragment */
};

static const struct apply_case apply_cases[] = {
    {"set", "{\"id\":\"k\",\"email\":\"a\"}", "{\"set\":{\"email\":\"b\",\"n\":3}}", 0,
     "{\"id\":\"k\",\"email\":\"b\",\"n\":3}"},
    {"unset", "{\"id\":\"k\",\"email\":\"a\",\"n\":1,\"o\":{}}", "{\"unset\":[\"n\",\"o\"]}", 0,
     "{\"id\":\"k\",\"email\":\"a\"}"},
    {"unset of an absent field", "{\"id\":\"k\"}", "{\"unset\":[\"n\"]}", 0, "{\"id\":\"k\"}"},
    {"inc int", "{\"id\":\"k\",\"n\":5}", "{\"inc\":{\"n\":3}}", 0, "{\"id\":\"k\",\"n\":8}"},
    {"inc int negative", "{\"id\":\"k\",\"n\":5}", "{\"inc\":{\"n\":-7}}", 0,
     "{\"id\":\"k\",\"n\":-2}"},
    {"inc int absent starts at 0", "{\"id\":\"k\"}", "{\"inc\":{\"n\":4}}", 0,
     "{\"id\":\"k\",\"n\":4}"},
    {"inc int null starts at 0", "{\"id\":\"k\",\"n\":null}", "{\"inc\":{\"n\":4}}", 0,
     "{\"id\":\"k\",\"n\":4}"},
    {"inc int overflow", "{\"id\":\"k\",\"n\":9223372036854775806}", "{\"inc\":{\"n\":2}}", -1,
     "out of range"},
    {"inc int on a string", "{\"id\":\"k\",\"n\":\"5\"}", "{\"inc\":{\"n\":1}}", -1,
     "cannot increment 'n'"},
    {"inc decimal exact", "{\"id\":\"k\",\"price\":0.10}", "{\"inc\":{\"price\":\"0.20\"}}", 0,
     "{\"id\":\"k\",\"price\":0.30}"},
    {"inc decimal number operand", "{\"id\":\"k\",\"price\":0.10}", "{\"inc\":{\"price\":0.2}}", 0,
     "{\"id\":\"k\",\"price\":0.30}"},
    {"inc decimal negative result", "{\"id\":\"k\",\"price\":1.00}",
     "{\"inc\":{\"price\":\"-1.50\"}}", 0, "{\"id\":\"k\",\"price\":-0.50}"},
    {"inc decimal absent starts at 0", "{\"id\":\"k\"}", "{\"inc\":{\"price\":\"2.5\"}}", 0,
     "{\"id\":\"k\",\"price\":2.50}"},
    {"inc decimal on an int value", "{\"id\":\"k\",\"price\":7}", "{\"inc\":{\"price\":\"0.01\"}}",
     0, "{\"id\":\"k\",\"price\":7.01}"},
    {"inc decimal on garbage", "{\"id\":\"k\",\"price\":\"abc\"}", "{\"inc\":{\"price\":1}}", -1,
     "cannot increment 'price'"},
    {"set + inc + unset", "{\"id\":\"k\",\"email\":\"a\",\"n\":1,\"a\":[1]}",
     "{\"set\":{\"flag\":true},\"inc\":{\"n\":1},\"unset\":[\"a\"]}", 0,
     "{\"id\":\"k\",\"email\":\"a\",\"n\":2,\"flag\":true}"},
};

static void test_patch_apply_table(void **state)
{
    (void)state;
    int failed = 0;
    size_t n = sizeof(apply_cases) / sizeof(apply_cases[0]);
    for (size_t i = 0; i < n; i++) {
        const struct apply_case *c = &apply_cases[i];
        struct json_object *item = parse(c->item), *p = parse(c->patch);
        struct md_error e = {0};
        char why[512] = "";
        if (md_patch_check(things, &cf->limits, p, &e) != 0) {
            snprintf(why, sizeof(why), "md_patch_check refused it: %s", e.message);
        } else {
            int rc = md_patch_apply(things, item, p, &e);
            if (rc != c->rc) {
                snprintf(why, sizeof(why), "rc %d, want %d (%s)", rc, c->rc,
                         rc < 0 ? e.message : plain(item));
            } else if (rc == 0 && strcmp(plain(item), c->want) != 0) {
                snprintf(why, sizeof(why), "got %s, want %s", plain(item), c->want);
            } else if (rc < 0 && (e.err != MD_E_CONFLICT || strstr(e.message, c->want) == NULL)) {
                snprintf(why, sizeof(why), "error %s \"%s\", want conflict \"%s\"",
                         md_err_code(e.err), e.message, c->want);
            }
        }
        if (why[0] != '\0') {
            print_error("FAIL [%s] %s + %s: %s\n", c->name, c->item, c->patch, why);
            failed++;
        }
        json_object_put(item);
        json_object_put(p);
    }
    if (failed > 0) {
        fail_msg("%d of %zu apply cases failed", failed, n);
    }
}

/* Ten increments of 0.10 make exactly 1.00 (binary doubles would not). */
static void test_patch_apply_exact_sum(void **state)
{
    (void)state;
    struct json_object *item = parse("{\"id\":\"k\",\"price\":0.00}");
    for (int i = 0; i < 10; i++) {
        struct json_object *p = parse("{\"inc\":{\"price\":\"0.10\"}}");
        struct md_error e = {0};
        assert_int_equal(md_patch_check(things, &cf->limits, p, &e), 0);
        assert_int_equal(md_patch_apply(things, item, p, &e), 0);
        json_object_put(p);
    }
    assert_string_equal(member_json(item, "price"), "1.00");
    json_object_put(item);
}

/* ---- md_decimal_add ---------------------------------------------------------------------- */

static void test_decimal_add(void **state)
{
    (void)state;
    static const struct {
        const char *a, *b;
        int scale;
        const char *want; /* NULL: -1 */
    } cases[] = {
        {"0.10", "0.20", 2, "0.30"},
        {"1.5", "2.5", 2, "4.00"},      /* scale padding */
        {"1", "2", 3, "3.000"},         /* integers padded */
        {".5", "1", 1, NULL},           /* not JSON number syntax */
        {"+1", "1", 2, NULL},           /* not JSON number syntax */
        {"9.99", "0.01", 2, "10.00"},   /* carry into a new digit */
        {"99", "1", 0, "100"},          /* scale 0: no point */
        {"-1.25", "1.25", 2, "0.00"},   /* zero has no sign */
        {"-0.10", "0.05", 2, "-0.05"},  /* negative below one */
        {"-1.50", "-2.75", 2, "-4.25"}, /* both negative */
        {"1.00", "-1.50", 2, "-0.50"},  /* sign change */
        {"-0", "0", 2, "0.00"},         /* negative zero */
        {"1.230", "0", 2, "1.23"},      /* zeros past the scale are fine */
        {"0.000001", "0.000002", 6, "0.000003"},
        {"1.234", "0", 2, NULL}, /* a digit past the scale */
        {"1", "0.001", 2, NULL},
        {"", "1", 2, NULL},
        {"abc", "1", 2, NULL},
        {"1.2.3", "1", 2, NULL},
        {"1e2", "1", 2, NULL},
        {"-", "1", 2, NULL},
        {".", "1", 2, NULL},
        {"1", " 1", 2, NULL},
        /* the 36-digit limit (digits at the scale) */
        {"9999999999999999999999999999999999.98", "0.01", 2,
         "9999999999999999999999999999999999.99"},
        {"9999999999999999999999999999999999.99", "0.01", 2, NULL},
        {"-9999999999999999999999999999999999.99", "-0.01", 2, NULL},
        {"-9999999999999999999999999999999999.99", "0.01", 2,
         "-9999999999999999999999999999999999.98"},
        {"1"
         "000000000000000000000000000000000000",
         "0", 0, NULL}, /* 37 digits */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[80];
        memset(out, 'x', sizeof(out));
        int rc = md_decimal_add(cases[i].a, cases[i].b, cases[i].scale, out, sizeof(out));
        if (cases[i].want == NULL) {
            if (rc != -1) {
                fail_msg("%s + %s (scale %d) = %s, want -1", cases[i].a, cases[i].b, cases[i].scale,
                         out);
            }
        } else if (rc != 0 || strcmp(out, cases[i].want) != 0) {
            fail_msg("%s + %s (scale %d): rc %d \"%s\", want \"%s\"", cases[i].a, cases[i].b,
                     cases[i].scale, rc, rc == 0 ? out : "", cases[i].want);
        }
    }
}

/* ---- md_key_check ------------------------------------------------------------------------ */

/* A cart of more than MD_MAX_COUNTER_OPS members, or a patch of more
 * entries, is refused naming the limit; up to it is accepted (the Redis
 * adapter had a fixed argument array: 9 members were refused). */
static void test_counters_limit(void **state)
{
    (void)state;
    for (int n = MD_MAX_COUNTER_OPS; n <= MD_MAX_COUNTER_OPS + 1; n++) {
        struct json_object *members = json_object_new_object();
        struct json_object *set = json_object_new_object();
        for (int i = 0; i < n; i++) {
            char name[32];
            snprintf(name, sizeof(name), "P%d", i);
            json_object_object_add(members, name, json_object_new_int(1));
            snprintf(name, sizeof(name), "items.P%d", i);
            json_object_object_add(set, name, json_object_new_int(2));
        }
        struct json_object *item = json_object_new_object();
        json_object_object_add(item, "items", members);
        struct json_object *patch = json_object_new_object();
        json_object_object_add(patch, "set", set);
        struct md_error e = {0};
        int rc = md_item_check(carts, &cf->limits, MD_ITEM_PUT, "u1", item, &e);
        struct md_error pe = {0};
        int prc = md_patch_check(carts, &cf->limits, patch, &pe);
        if (n <= MD_MAX_COUNTER_OPS) {
            assert_int_equal(rc, 0);
            assert_int_equal(prc, 0);
        } else {
            char want[64];
            snprintf(want, sizeof(want), "at most %d in one write", MD_MAX_COUNTER_OPS);
            assert_int_equal(rc, -1);
            assert_string_equal(e.field, "items");
            assert_non_null(strstr(e.message, want));
            assert_int_equal(prc, -1);
            assert_non_null(strstr(pe.message, want));
        }
        json_object_put(item);
        json_object_put(patch);
    }
}

static void test_key_check(void **state)
{
    (void)state;
    char big[600];
    memset(big, 'k', sizeof(big));
    static const struct {
        const char *key;
        size_t len;
        int rc;
        const char *msg;
    } cases[] = {
        {"", 0, -1, "empty"},
        {"a", 1, 0, NULL},
        {"a\x01"
         "b",
         3, -1, "control character"},
        {"a\nb", 3, -1, "control character"},
        {"a\x7f"
         "b",
         3, -1, "control character"},
        {"a\0b", 3, -1, "control character"},
        {"\xc3\xa9t\xc3\xa9", 5, 0, NULL}, /* UTF-8 is fine */
        {"a/b c:d", 7, 0, NULL},
        /* not UTF-8 (a path id "%ff" decodes to the byte 0xff): checked like a
         * string in a body, or the catalog stored U+FFFD instead */
        {"sku-\xff", 5, -1, "not valid UTF-8 (byte 4)"},
        {"\xc3", 1, -1, "not valid UTF-8 (byte 0)"},      /* truncated */
        {"a\xc0\xaf", 3, -1, "not valid UTF-8 (byte 1)"}, /* overlong '/' */
        {"\xed\xa0\x80", 3, -1, "not valid UTF-8"},       /* a surrogate */
        {"\xf4\x90\x80\x80", 4, -1, "not valid UTF-8"},   /* above U+10FFFF */
        {"\xf0\x9f\x90\x8e", 4, 0, NULL},                 /* U+1F40E */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct md_error e = {0};
        int rc = md_key_check(cases[i].key, cases[i].len, &e);
        if (rc != cases[i].rc) {
            fail_msg("key case %zu: rc %d, want %d", i, rc, cases[i].rc);
        }
        if (rc < 0) {
            assert_int_equal(e.err, MD_E_BAD_REQUEST);
            assert_non_null(strstr(e.message, cases[i].msg));
        }
    }
    struct md_error e = {0};
    assert_int_equal(md_key_check(big, 512, &e), 0);
    assert_int_equal(md_key_check(big, 513, &e), -1);
    assert_non_null(strstr(e.message, "longer than 512 bytes"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_item_table),        cmocka_unit_test(test_item_generated_key),
        cmocka_unit_test(test_item_auto_created), cmocka_unit_test(test_item_counters),
        cmocka_unit_test(test_patch_check_table), cmocka_unit_test(test_patch_check_normalises),
        cmocka_unit_test(test_patch_apply_table), cmocka_unit_test(test_patch_apply_exact_sum),
        cmocka_unit_test(test_decimal_add),       cmocka_unit_test(test_key_check),
        cmocka_unit_test(test_counters_limit),    cmocka_unit_test(test_decimal_string_not_json),
        cmocka_unit_test(test_decimal_overflow),  cmocka_unit_test(test_timestamp_lenient),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
