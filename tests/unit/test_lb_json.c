/*
 * test_lb_json.c — JSON on the data path: parsing with limits, writing
 * strings and values into evbuffers, and the one JSON error shape.
 *
 * Some tests pin bugs found and fixed (regressions).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <json-c/json.h>

#include "lib/lb_json.h"
#include "model/md_error.h"

/* ---- helpers ------------------------------------------------------------ */

/* The evbuffer's bytes as a malloc'd NUL-terminated string (the buffer is
 * freed); *lenp gets the length (the bytes may contain NULs). */
static char *drain(struct evbuffer *b, size_t *lenp)
{
    size_t len = evbuffer_get_length(b);
    char *s = malloc(len + 1);
    assert_non_null(s);
    evbuffer_remove(b, s, len);
    s[len] = '\0';
    evbuffer_free(b);
    if (lenp != NULL) {
        *lenp = len;
    }
    return s;
}

static char *write_string(const char *s, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    assert_non_null(b);
    lb_json_write_string(b, s, len);
    return drain(b, NULL);
}

static char *write_value(struct json_object *v)
{
    struct evbuffer *b = evbuffer_new();
    assert_non_null(b);
    lb_json_write(b, v);
    return drain(b, NULL);
}

static enum lb_json_status parse_n(const char *buf, size_t len, int depth, struct json_object **out,
                                   char *msg, size_t msglen)
{
    msg[0] = '\0';
    enum lb_json_status st = lb_json_parse(buf, len, depth, out, msg, msglen);
    if (st != LB_JSON_OK) {
        assert_null(*out); /* nothing to free on failure */
        assert_true(msg[0] != '\0');
    } else {
        assert_non_null(*out);
    }
    return st;
}

static enum lb_json_status parse(const char *text, int depth, struct json_object **out, char *msg,
                                 size_t msglen)
{
    return parse_n(text, strlen(text), depth, out, msg, msglen);
}

static const char *status_name(enum lb_json_status st)
{
    static const char *const names[] = {"OK", "SYNTAX", "DEPTH", "UTF8", "EMPTY", "NULL"};
    return (unsigned)st < 6 ? names[st] : "?";
}

struct parse_case {
    const char *name;
    const char *text;
    int depth;
    enum lb_json_status want;
    const char *msg; /* a fragment of the message (failures), or NULL */
};

static int run_parse_cases(const struct parse_case *cases, size_t n)
{
    int failed = 0;
    for (size_t i = 0; i < n; i++) {
        const struct parse_case *c = &cases[i];
        struct json_object *v = NULL;
        char msg[256];
        enum lb_json_status st = parse(c->text, c->depth, &v, msg, sizeof(msg));
        if (st != c->want) {
            print_error("FAIL [%s] %s (max_depth %d): %s, want %s (%s)\n", c->name, c->text,
                        c->depth, status_name(st), status_name(c->want), msg);
            failed++;
        } else if (c->msg != NULL && strstr(msg, c->msg) == NULL) {
            print_error("FAIL [%s]: message \"%s\" lacks \"%s\"\n", c->name, msg, c->msg);
            failed++;
        }
        json_object_put(v);
    }
    return failed;
}

/* ---- lb_json_parse -------------------------------------------------------------- */

static void test_parse_valid(void **state)
{
    (void)state;
    struct json_object *v;
    char msg[256];
    const char *text =
        " \r\n\t{\"a\":1,\"b\":[true,null,\"x\"],\"c\":{\"d\":-2.5},\"e\":\"\\u00e9\"}\n ";
    assert_int_equal(parse(text, 32, &v, msg, sizeof(msg)), LB_JSON_OK);
    assert_true(json_object_is_type(v, json_type_object));
    assert_int_equal(json_object_get_int64(json_object_object_get(v, "a")), 1);
    struct json_object *b = json_object_object_get(v, "b");
    assert_int_equal(json_object_array_length(b), 3);
    assert_true(json_object_get_boolean(json_object_array_get_idx(b, 0)));
    assert_null(json_object_array_get_idx(b, 1));
    assert_string_equal(json_object_get_string(json_object_array_get_idx(b, 2)), "x");
    assert_string_equal(json_object_get_string(json_object_object_get(v, "e")), "\xc3\xa9");
    json_object_put(v);

    /* the length bounds the document: bytes after it are not read */
    const char *buf = "{\"a\":1}GARBAGE";
    assert_int_equal(parse_n(buf, 7, 32, &v, msg, sizeof(msg)), LB_JSON_OK);
    json_object_put(v);
}

static const struct parse_case parse_cases[] = {
    /* trailing garbage and other syntax errors */
    {"trailing word", "{\"a\":1} x", 32, LB_JSON_SYNTAX, NULL},
    {"trailing letter", "{\"a\":1}x", 32, LB_JSON_SYNTAX, NULL},
    {"two documents", "{}{}", 32, LB_JSON_SYNTAX, NULL},
    {"garbage after whitespace", "{} \n x", 32, LB_JSON_SYNTAX, "malformed JSON"},
    {"two documents with a space", "[1] [2]", 32, LB_JSON_SYNTAX, NULL},
    {"stray bracket", "{\"a\":1}]", 32, LB_JSON_SYNTAX, NULL},
    {"trailing vertical tab", "{}\v", 32, LB_JSON_SYNTAX, NULL},
    {"truncated", "{\"a\":", 32, LB_JSON_SYNTAX, "ends early"},
    {"truncated string", "[\"abc", 32, LB_JSON_SYNTAX, "ends early"},
    {"trailing comma", "{\"a\":1,}", 32, LB_JSON_SYNTAX, "malformed JSON"},
    {"single-quoted value", "['a']", 32, LB_JSON_SYNTAX, "malformed JSON"},
    {"unquoted key", "{a:1}", 32, LB_JSON_SYNTAX, "malformed JSON"},
    {"comment", "{/*c*/\"a\":1}", 32, LB_JSON_SYNTAX, "malformed JSON"},
    {"leading zero", "[01]", 32, LB_JSON_SYNTAX, "malformed JSON"},
    {"plus sign", "[+1]", 32, LB_JSON_SYNTAX, "malformed JSON"},
    /* empty */
    {"empty", "", 32, LB_JSON_EMPTY, "empty"},
    {"whitespace", " \t\r\n ", 32, LB_JSON_EMPTY, "empty"},
    /* depth: max_depth 3 */
    {"depth 1", "{}", 3, LB_JSON_OK, NULL},
    {"depth 3 objects", "{\"a\":{\"b\":{\"c\":1}}}", 3, LB_JSON_OK, NULL},
    {"depth 3 arrays", "[[[1]]]", 3, LB_JSON_OK, NULL},
    {"depth 3 empty innermost", "[[[]]]", 3, LB_JSON_OK, NULL},
    {"depth 3, wide", "[[[1,2],[3]],{\"a\":{\"b\":1}}]", 3, LB_JSON_OK, NULL},
    {"depth 4 objects", "{\"a\":{\"b\":{\"c\":{\"d\":1}}}}", 3, LB_JSON_DEPTH,
     "nested deeper than 3 levels"},
    {"depth 4 arrays", "[[[[1]]]]", 3, LB_JSON_DEPTH, "deeper than 3"},
    {"depth 4 mixed", "[{\"a\":[{\"b\":true}]}]", 3, LB_JSON_DEPTH, NULL},
    {"depth 5", "[[[[[1]]]]]", 3, LB_JSON_DEPTH, NULL},
    /* UTF-8 */
    {"invalid byte", "{\"a\":\"\xff\"}", 32, LB_JSON_UTF8, "invalid UTF-8"},
    {"truncated sequence", "{\"a\":\"\xe2\x82\"}", 32, LB_JSON_UTF8, "invalid UTF-8"},
    {"lone continuation byte", "{\"a\":\"x\x80y\"}", 32, LB_JSON_UTF8, "invalid UTF-8"},
    {"invalid UTF-8 in a key", "{\"\xfe\":1}", 32, LB_JSON_UTF8, "invalid UTF-8"},
    {"valid 2-, 3- and 4-byte UTF-8", "[\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"]", 32, LB_JSON_OK,
     NULL},
};

static void test_parse_table(void **state)
{
    (void)state;
    size_t n = sizeof(parse_cases) / sizeof(parse_cases[0]);
    int failed = run_parse_cases(parse_cases, n);
    if (failed > 0) {
        fail_msg("%d of %zu parse cases failed", failed, n);
    }
}

/* Bytes with a NUL: the length, not the NUL, ends the document. */
static void test_parse_nul(void **state)
{
    (void)state;
    struct json_object *v;
    char msg[256];
    assert_int_equal(parse_n("{\"a\":\"x\0y\"}", 11, 32, &v, msg, sizeof(msg)), LB_JSON_SYNTAX);
    assert_int_equal(parse_n("{\"a\":1}\0", 8, 32, &v, msg, sizeof(msg)), LB_JSON_SYNTAX);
    /* an escaped NUL is a character like any other */
    assert_int_equal(parse("{\"a\":\"x\\u0000y\"}", 32, &v, msg, sizeof(msg)), LB_JSON_OK);
    struct json_object *a = json_object_object_get(v, "a");
    assert_int_equal(json_object_get_string_len(a), 3);
    assert_memory_equal(json_object_get_string(a), "x\0y", 3);
    json_object_put(v);
}

/* A body of `null` was answered "malformed JSON: continue" (json-c waits
 * for more input after a top-level literal or number); so were `true` and
 * `5`.  A top-level null is refused with its own message: json-c's NULL
 * would read as "no body" to every caller. */
static void test_parse_top_level_scalars(void **state)
{
    (void)state;
    struct json_object *v = NULL;
    char msg[256];
    assert_int_equal(lb_json_parse("null", 4, 32, &v, msg, sizeof(msg)), LB_JSON_NULL);
    assert_null(v);
    assert_non_null(strstr(msg, "JSON null"));
    assert_null(strstr(msg, "continue"));
    assert_int_equal(lb_json_parse(" null \n", 7, 32, &v, msg, sizeof(msg)), LB_JSON_NULL);
    assert_int_equal(parse("true", 32, &v, msg, sizeof(msg)), LB_JSON_OK);
    assert_true(json_object_get_boolean(v));
    json_object_put(v);
    assert_int_equal(parse("5", 32, &v, msg, sizeof(msg)), LB_JSON_OK);
    assert_int_equal(json_object_get_int64(v), 5);
    json_object_put(v);
    assert_int_equal(parse("-1.25 ", 32, &v, msg, sizeof(msg)), LB_JSON_OK);
    assert_string_equal(json_object_to_json_string(v), "-1.25");
    json_object_put(v);
    /* null inside a document is a value like any other */
    assert_int_equal(parse("[null]", 32, &v, msg, sizeof(msg)), LB_JSON_OK);
    json_object_put(v);
    /* lb_json_validate (documents a store returns) takes a null document */
    assert_int_equal(lb_json_validate("null", 4, 32, msg, sizeof(msg)), LB_JSON_OK);
}

/* A \u0000 in a member name was accepted and json-c cut the name at the
 * NUL: {"a\u0000b":1} became {"a":1}.  Refused, naming the member. */
static void test_parse_nul_in_member_name(void **state)
{
    (void)state;
    struct json_object *v = NULL;
    char msg[256];
    assert_int_equal(parse("{\"a\\u0000b\":1}", 32, &v, msg, sizeof(msg)), LB_JSON_SYNTAX);
    assert_non_null(strstr(msg, "member name \"a\\u0000"));
    assert_non_null(strstr(msg, "NUL"));
    assert_int_equal(parse("{\"o\":{\"x\":[{\"\\u0000\":true}]}}", 32, &v, msg, sizeof(msg)),
                     LB_JSON_SYNTAX);
    assert_non_null(strstr(msg, "at byte 12"));
    /* a long name is named by its first 40 bytes, cut at a character */
    char doc[200];
    snprintf(doc, sizeof(doc), "{\"%s\xc3\xa9\\u0000\":1}",
             "0123456789012345678901234567890123456789");
    assert_int_equal(parse(doc, 32, &v, msg, sizeof(msg)), LB_JSON_SYNTAX);
    assert_non_null(strstr(msg, "0123456789012345678901234567890123456789\\u0000"));
    /* in a value it is a character like any other (test_parse_nul) */
    assert_int_equal(parse("{\"a\":\"\\u0000\"}", 32, &v, msg, sizeof(msg)), LB_JSON_OK);
    json_object_put(v);
    assert_int_equal(parse("{\"a\\u0001\":1}", 32, &v, msg, sizeof(msg)), LB_JSON_OK);
    json_object_put(v);
}

/* json-c clamps integers beyond int64 to its bounds (below INT64_MIN to
 * INT64_MIN, silently; above, to a uint64): the bounds themselves parse
 * exactly, anything past them is refused naming the member path. */
static void test_parse_int64_bounds(void **state)
{
    (void)state;
    struct json_object *v = NULL;
    char msg[256];
    assert_int_equal(
        parse("{\"n\":9223372036854775807,\"m\":-9223372036854775808}", 32, &v, msg, sizeof(msg)),
        LB_JSON_OK);
    assert_int_equal(json_object_get_int64(json_object_object_get(v, "n")), INT64_MAX);
    assert_int_equal(json_object_get_int64(json_object_object_get(v, "m")), INT64_MIN);
    json_object_put(v);
    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"{\"n\":9223372036854775808}", "'n': the integer 9223372036854775808"},
        {"{\"n\":-9223372036854775809}", "'n': the integer -9223372036854775809"},
        {"{\"set\":{\"stock\":-99999999999999999999}}", "'set.stock': the integer"},
        {"{\"a\":[1,{\"b\":2},18446744073709551616]}", "'a': the integer 18446744073709551616"},
        {"[100000000000000000000]", "the integer 100000000000000000000 at byte 1"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(parse(bad[i].text, 32, &v, msg, sizeof(msg)), LB_JSON_SYNTAX);
        if (strstr(msg, bad[i].msg) == NULL) {
            fail_msg("%s: message \"%s\" lacks \"%s\"", bad[i].text, msg, bad[i].msg);
        }
        assert_non_null(strstr(msg, "out of the 64-bit range"));
    }
    /* a fraction or an exponent makes it a number json-c keeps as text */
    assert_int_equal(parse("[9223372036854775808.0,1e400]", 32, &v, msg, sizeof(msg)), LB_JSON_OK);
    json_object_put(v);
    /* documents a store returns are only checked, and may hold any number */
    assert_int_equal(lb_json_validate("[99999999999999999999]", 22, 32, msg, sizeof(msg)),
                     LB_JSON_OK);
    assert_int_equal(
        lb_json_parse_stored("{\"n\":-99999999999999999999}", 27, 32, &v, msg, sizeof(msg)),
        LB_JSON_OK);
    json_object_put(v);
}

static void test_utf8_check(void **state)
{
    (void)state;
    assert_int_equal(lb_utf8_check("abc", 3), 3);
    assert_int_equal(lb_utf8_check("\xc3\xa9t\xc3\xa9", 5), 5);
    assert_int_equal(lb_utf8_check("ab\xff", 3), 2);
    assert_int_equal(lb_utf8_check("a\xe2\x82", 3), 1);        /* truncated */
    assert_int_equal(lb_utf8_check("\xc0\xaf", 2), 0);         /* overlong '/' */
    assert_int_equal(lb_utf8_check("x\xed\xa0\x80", 4), 1);    /* surrogate */
    assert_int_equal(lb_utf8_check("\xf4\x90\x80\x80", 4), 0); /* above U+10FFFF */
    assert_int_equal(lb_utf8_check("\xf0\x9f\x98\x80", 4), 4);
}

/* The configured default depth works at its edge too. */
static void test_parse_depth_32(void **state)
{
    (void)state;
    char doc[200];
    struct json_object *v;
    char msg[256];
    for (int depth = 31; depth <= 33; depth++) {
        int n = 0;
        for (int i = 0; i < depth; i++) {
            doc[n++] = '[';
        }
        doc[n++] = '1';
        for (int i = 0; i < depth; i++) {
            doc[n++] = ']';
        }
        doc[n] = '\0';
        enum lb_json_status st = parse(doc, 32, &v, msg, sizeof(msg));
        assert_int_equal(st, depth <= 32 ? LB_JSON_OK : LB_JSON_DEPTH);
        json_object_put(v);
    }
}

/* Decimals keep their exact digits from the request to the response. */
static void test_parse_decimal_digits(void **state)
{
    (void)state;
    struct json_object *v;
    char msg[256];
    const char *text = "{\"price\":12.30,\"list\":[0.10,100.000,-0.0,1.5e3,1E-2,7]}";
    assert_int_equal(parse(text, 32, &v, msg, sizeof(msg)), LB_JSON_OK);
    char *out = write_value(v);
    assert_string_equal(out, text);
    free(out);
    /* also from a single value */
    out = write_value(json_object_object_get(v, "price"));
    assert_string_equal(out, "12.30");
    free(out);
    json_object_put(v);
}

/* regression (lib/lb_json.c lb_json_parse): json-c's "strict" mode is not
 * RFC 8259.  It accepts numbers JSON does not have (NaN, Infinity, "12.",
 * "007.5", "-.5") and, since json-c keeps the text of numbers, the gateway
 * stores them and writes them back verbatim: clients get invalid JSON.  (It
 * also takes single-quoted object keys, though values are refused.) */
static const struct parse_case bug_number_cases[] = {
    {"NaN", "[NaN]", 32, LB_JSON_SYNTAX, NULL},
    {"-Infinity", "{\"a\":-Infinity}", 32, LB_JSON_SYNTAX, NULL},
    {"trailing point", "{\"price\":12.}", 32, LB_JSON_SYNTAX, NULL},
    {"leading zeros with a fraction", "[007.5]", 32, LB_JSON_SYNTAX, NULL},
    {"minus point", "[-.5]", 32, LB_JSON_SYNTAX, NULL},
    {"single-quoted key", "{'a':1}", 32, LB_JSON_SYNTAX, NULL},
};

static void test_parse_accepts_non_json(void **state)
{
    (void)state;
    size_t n = sizeof(bug_number_cases) / sizeof(bug_number_cases[0]);
    int failed = run_parse_cases(bug_number_cases, n);
    /* show what goes out again */
    struct json_object *v;
    char msg[256];
    if (parse("{\"price\":12.}", 32, &v, msg, sizeof(msg)) == LB_JSON_OK) {
        char *out = write_value(v);
        print_error("  e.g. {\"price\":12.} is written back as %s\n", out);
        free(out);
        json_object_put(v);
    }
    if (failed > 0) {
        fail_msg("regression (lib/lb_json.c lb_json_parse, json-c strict mode): %d of %zu "
                 "non-JSON inputs accepted",
                 failed, n);
    }
}

/* regression (lib/lb_json.c lb_json_parse, JSON_TOKENER_VALIDATE_UTF8):
 * json-c 0.16's check only catches bad lead/continuation structure; it lets
 * through overlong forms ("\xc0\xaf" is '/'), UTF-16 surrogates encoded in
 * UTF-8, and code points above U+10FFFF — none of which is UTF-8 (RFC 3629).
 * They reach the stores (PostgreSQL refuses them: a 500 instead of a 400). */
static const struct parse_case bug_utf8_cases[] = {
    {"overlong '/'", "[\"\xc0\xaf\"]", 32, LB_JSON_UTF8, NULL},
    {"overlong 3-byte NUL", "[\"\xe0\x80\x80\"]", 32, LB_JSON_UTF8, NULL},
    {"encoded surrogate U+D800", "[\"\xed\xa0\x80\"]", 32, LB_JSON_UTF8, NULL},
    {"above U+10FFFF", "[\"\xf4\x90\x80\x80\"]", 32, LB_JSON_UTF8, NULL},
};

static void test_parse_utf8_not_validated(void **state)
{
    (void)state;
    size_t n = sizeof(bug_utf8_cases) / sizeof(bug_utf8_cases[0]);
    int failed = run_parse_cases(bug_utf8_cases, n);
    if (failed > 0) {
        fail_msg("regression (lib/lb_json.c lb_json_parse): %d of %zu invalid UTF-8 "
                 "sequences accepted",
                 failed, n);
    }
}

/* regression (lib/lb_json.c lb_json_parse: json_tokener_new_ex(max_depth + 1)):
 * json-c counts a scalar inside a container as one more level, so the "+ 1"
 * that lets [[[1]]] through at max_depth 3 also lets a 4th (or N+1th) level
 * through when that innermost container is empty. */
static const struct parse_case bug_depth_cases[] = {
    {"depth 4, innermost array empty", "[[[[]]]]", 3, LB_JSON_DEPTH, NULL},
    {"depth 4, innermost object empty", "{\"a\":{\"b\":{\"c\":{}}}}", 3, LB_JSON_DEPTH, NULL},
    {"depth 2 at max_depth 1", "{\"a\":{}}", 1, LB_JSON_DEPTH, NULL},
};

static void test_parse_depth_off_by_one(void **state)
{
    (void)state;
    size_t n = sizeof(bug_depth_cases) / sizeof(bug_depth_cases[0]);
    int failed = run_parse_cases(bug_depth_cases, n);
    if (failed > 0) {
        fail_msg("regression (lib/lb_json.c lb_json_parse depth limit): %d of %zu too-deep "
                 "documents accepted",
                 failed, n);
    }
}

/* ---- lb_json_write_string ------------------------------------------------------------ */

static void test_write_string_escapes(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t len;
        const char *want;
    } cases[] = {
        {"", 0, "\"\""},
        {"plain", 5, "\"plain\""},
        {"a\"b", 3, "\"a\\\"b\""},
        {"a\\b", 3, "\"a\\\\b\""},
        {"\"\\\"", 3, "\"\\\"\\\\\\\"\""},
        {"\x01", 1, "\"\\u0001\""},
        {"\x1f", 1, "\"\\u001f\""},
        {"\x7f", 1, "\"\\u007f\""},
        {"a\0b", 3, "\"a\\u0000b\""},
        {"\0", 1, "\"\\u0000\""},
        {"\n\r\t", 3, "\"\\n\\r\\t\""},
        {"\b\f", 2, "\"\\u0008\\u000c\""},
        {"a/b", 3, "\"a/b\""},
        {"\xc3\xa9\xe2\x82\xac", 5, "\"\xc3\xa9\xe2\x82\xac\""}, /* UTF-8 as is */
        {" ", 1, "\" \""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out = write_string(cases[i].in, cases[i].len);
        if (strcmp(out, cases[i].want) != 0) {
            fail_msg("case %zu: wrote %s, want %s", i, out, cases[i].want);
        }
        free(out);
    }
}

/* Every byte value, many times over (past the writer's 512-byte chunk), comes
 * back unchanged through a JSON parser. */
static void test_write_string_round_trip(void **state)
{
    (void)state;
    size_t len = 4096;
    char *in = malloc(len);
    assert_non_null(in);
    for (size_t i = 0; i < len; i++) {
        in[i] = (char)(i % 128); /* ASCII incl. NUL and every control byte */
    }
    char *out = write_string(in, len);
    assert_true(out[0] == '"');
    struct json_object *v;
    char msg[256];
    if (parse(out, 32, &v, msg, sizeof(msg)) != LB_JSON_OK) {
        fail_msg("written string does not parse: %s", msg);
    }
    assert_true(json_object_is_type(v, json_type_string));
    assert_int_equal(json_object_get_string_len(v), len);
    assert_memory_equal(json_object_get_string(v), in, len);
    json_object_put(v);
    free(out);

    /* a long run of 6-byte escapes across the chunk boundary */
    memset(in, 1, len);
    out = write_string(in, len);
    assert_int_equal(strlen(out), 2 + 6 * len);
    for (size_t i = 0; i < len; i++) {
        if (memcmp(out + 1 + 6 * i, "\\u0001", 6) != 0) {
            fail_msg("escape %zu is wrong", i);
        }
    }
    free(out);
    free(in);
}

static void test_write_value(void **state)
{
    (void)state;
    struct json_object *v = json_object_new_object();
    json_object_object_add(v, "u", json_object_new_string("a/b"));
    json_object_object_add(v, "q", json_object_new_string("say \"hi\""));
    json_object_object_add(v, "n", json_object_new_int64(-5));
    json_object_object_add(v, "d", json_object_new_double_s(12.3, "12.30"));
    json_object_object_add(v, "z", NULL);
    json_object_object_add(v, "a", json_object_new_array());
    char *out = write_value(v);
    /* compact, slashes as is, decimal text kept */
    assert_string_equal(out,
                        "{\"u\":\"a/b\",\"q\":\"say \\\"hi\\\"\",\"n\":-5,\"d\":12.30,\"z\":null,"
                        "\"a\":[]}");
    free(out);
    json_object_put(v);
}

/* ---- md_error_write ----------------------------------------------------------------------- */

/* Parse the error body; fail unless it is {"error":{…}} and nothing else. */
static struct json_object *error_body(const struct md_error *e, const char *request_id,
                                      char **textp)
{
    struct evbuffer *b = evbuffer_new();
    assert_non_null(b);
    md_error_write(b, e, request_id);
    size_t len;
    char *text = drain(b, &len);
    struct json_object *v;
    char msg[256];
    enum lb_json_status st = parse_n(text, len, 32, &v, msg, sizeof(msg));
    if (st != LB_JSON_OK) {
        print_error("error body: %s\n", text);
        free(text);
        fail_msg("the error body is not valid JSON (%s): %s", status_name(st), msg);
    }
    assert_true(json_object_is_type(v, json_type_object));
    assert_int_equal(json_object_object_length(v), 1);
    struct json_object *inner = json_object_object_get(v, "error");
    assert_true(json_object_is_type(inner, json_type_object));
    if (textp != NULL) {
        *textp = text;
    } else {
        free(text);
    }
    return v;
}

static const char *member_str(struct json_object *obj, const char *name)
{
    struct json_object *m;
    if (!json_object_object_get_ex(obj, name, &m)) {
        return NULL;
    }
    assert_true(json_object_is_type(m, json_type_string));
    return json_object_get_string(m);
}

static void test_error_write_full(void **state)
{
    (void)state;
    struct md_error e = {0};
    md_error_set(&e, MD_E_NOT_FOUND, "user_id", "no %s item \"%s\" \\ here\n", "sessions", "s1");
    e.domain = "sessions";
    e.shard = "redis-main";
    char *text;
    struct json_object *v = error_body(&e, "req-42", &text);
    struct json_object *inner = json_object_object_get(v, "error");
    assert_int_equal(json_object_object_length(inner), 6);
    assert_string_equal(member_str(inner, "code"), "not_found");
    assert_string_equal(member_str(inner, "message"), "no sessions item \"s1\" \\ here\n");
    assert_string_equal(member_str(inner, "domain"), "sessions");
    assert_string_equal(member_str(inner, "shard"), "redis-main");
    assert_string_equal(member_str(inner, "field"), "user_id");
    assert_string_equal(member_str(inner, "request_id"), "req-42");
    /* code first, compact */
    static const char head[] = "{\"error\":{\"code\":\"not_found\",\"message\":";
    assert_true(strncmp(text, head, sizeof(head) - 1) == 0);
    free(text);
    json_object_put(v);
}

static void test_error_write_absent(void **state)
{
    (void)state;
    struct md_error e = {0};
    md_error_set(&e, MD_E_BAD_REQUEST, NULL, "%s", "bad");
    char *text;
    struct json_object *v = error_body(&e, NULL, &text);
    assert_string_equal(text, "{\"error\":{\"code\":\"bad_request\",\"message\":\"bad\"}}");
    free(text);
    json_object_put(v);

    /* only some present: exactly those appear */
    e.shard = "pg-2";
    v = error_body(&e, "r1", NULL);
    struct json_object *inner = json_object_object_get(v, "error");
    assert_int_equal(json_object_object_length(inner), 4);
    assert_string_equal(member_str(inner, "shard"), "pg-2");
    assert_string_equal(member_str(inner, "request_id"), "r1");
    assert_null(member_str(inner, "domain"));
    assert_null(member_str(inner, "field"));
    json_object_put(v);

    /* an empty message is still a message */
    struct md_error empty = {0};
    md_error_set(&empty, MD_E_INTERNAL, NULL, "%s", "");
    v = error_body(&empty, NULL, NULL);
    assert_string_equal(member_str(json_object_object_get(v, "error"), "message"), "");
    json_object_put(v);
}

static void test_error_codes(void **state)
{
    (void)state;
    static const struct {
        enum md_err err;
        int status;
        const char *code;
    } codes[] = {
        {MD_E_BAD_REQUEST, 400, "bad_request"},
        {MD_E_UNSUPPORTED, 400, "unsupported_operation"},
        {MD_E_UNKNOWN_DOMAIN, 404, "unknown_domain"},
        {MD_E_NOT_FOUND, 404, "not_found"},
        {MD_E_UNAUTHORIZED, 401, "unauthorized"},
        {MD_E_FORBIDDEN, 403, "forbidden"},
        {MD_E_RATE_LIMITED, 429, "rate_limited"},
        {MD_E_METHOD, 405, "method_not_allowed"},
        {MD_E_REQ_TIMEOUT, 408, "request_timeout"},
        {MD_E_CONFLICT, 409, "conflict"},
        {MD_E_PRECONDITION, 412, "precondition_failed"},
        {MD_E_TOO_LARGE, 413, "payload_too_large"},
        {MD_E_URI_TOO_LONG, 414, "uri_too_long"},
        {MD_E_HEADERS_TOO_LARGE, 431, "headers_too_large"},
        {MD_E_INTERNAL, 500, "internal"},
        {MD_E_UNAVAILABLE, 503, "backend_unavailable"},
        {MD_E_SHUTTING_DOWN, 503, "shutting_down"},
        {MD_E_TIMEOUT, 504, "timeout"},
    };
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        assert_int_equal(md_err_status(codes[i].err), codes[i].status);
        assert_string_equal(md_err_code(codes[i].err), codes[i].code);
        struct md_error e = {0};
        md_error_set(&e, codes[i].err, NULL, "m%zu", i);
        struct json_object *v = error_body(&e, NULL, NULL);
        assert_string_equal(member_str(json_object_object_get(v, "error"), "code"), codes[i].code);
        json_object_put(v);
    }
}

/* A message longer than the buffer is cut, and stays valid JSON. */
static void test_error_message_truncated(void **state)
{
    (void)state;
    char big[1000];
    memset(big, '"', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    struct md_error e = {0};
    md_error_set(&e, MD_E_BAD_REQUEST, NULL, "%s", big);
    assert_int_equal(strlen(e.message), sizeof(e.message) - 1);
    struct json_object *v = error_body(&e, NULL, NULL);
    assert_int_equal(strlen(member_str(json_object_object_get(v, "error"), "message")),
                     sizeof(e.message) - 1);
    json_object_put(v);
}

/* regression (model/md_error.c md_error_set): vsnprintf cuts the message at
 * 319 bytes without regard to UTF-8, so a long message with non-ASCII text
 * (e.g. "unknown field '<300 bytes of é>'" built from a client's field name)
 * ends in half a character, and md_error_write sends invalid UTF-8. */
static void test_error_message_cut_mid_utf8(void **state)
{
    (void)state;
    char name[402];
    name[0] = 'x';
    for (int i = 1; i < 401; i += 2) {
        name[i] = '\xc3'; /* é */
        name[i + 1] = '\xa9';
    }
    name[401] = '\0';
    struct md_error e = {0};
    /* "unknown field 'x" is 16 bytes, then 2-byte characters: 16 + 2k is never 319 */
    md_error_set(&e, MD_E_BAD_REQUEST, NULL, "unknown field '%s' for domain '%s'", name, "d");
    struct evbuffer *b = evbuffer_new();
    assert_non_null(b);
    md_error_write(b, &e, NULL);
    size_t len;
    char *text = drain(b, &len);
    struct json_object *v;
    char msg[256];
    enum lb_json_status st = parse_n(text, len, 32, &v, msg, sizeof(msg));
    json_object_put(v);
    free(text);
    if (st != LB_JSON_OK) {
        fail_msg("regression (model/md_error.c md_error_set): a message cut at %zu bytes "
                 "ends mid-character; the error body is rejected: %s",
                 sizeof(e.message) - 1, msg);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),
        cmocka_unit_test(test_parse_table),
        cmocka_unit_test(test_parse_nul),
        cmocka_unit_test(test_parse_top_level_scalars),
        cmocka_unit_test(test_parse_nul_in_member_name),
        cmocka_unit_test(test_parse_int64_bounds),
        cmocka_unit_test(test_utf8_check),
        cmocka_unit_test(test_parse_depth_32),
        cmocka_unit_test(test_parse_decimal_digits),
        cmocka_unit_test(test_write_string_escapes),
        cmocka_unit_test(test_write_string_round_trip),
        cmocka_unit_test(test_write_value),
        cmocka_unit_test(test_error_write_full),
        cmocka_unit_test(test_error_write_absent),
        cmocka_unit_test(test_error_codes),
        cmocka_unit_test(test_error_message_truncated),
        cmocka_unit_test(test_parse_depth_off_by_one),
        cmocka_unit_test(test_parse_accepts_non_json),
        cmocka_unit_test(test_parse_utf8_not_validated),
        cmocka_unit_test(test_error_message_cut_mid_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
