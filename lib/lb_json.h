/*
 * lb_json.h — JSON on the data path (json-c: it keeps the exact text of
 * numbers, so decimals keep their digits from client to store and back).
 */
#ifndef LB_JSON_H
#define LB_JSON_H

#include <stddef.h>

#include <json-c/json.h>

struct evbuffer;

enum lb_json_status {
    LB_JSON_OK,
    LB_JSON_SYNTAX,
    LB_JSON_DEPTH,
    LB_JSON_UTF8,
    LB_JSON_EMPTY,
    LB_JSON_NULL, /* lb_json_parse: the document is `null` */
};

/* Parse a whole document (trailing garbage is an error).  On failure `msg`
 * says where and why.  Member names may not contain \u0000 (json-c keeps
 * names as C strings: the name would be cut short).  A document that is
 * just `null` is refused (LB_JSON_NULL): every document the gateway parses
 * is an object or an array, and json-c's NULL would read as "no body". */
enum lb_json_status lb_json_parse(const char *buf, size_t len, int max_depth,
                                  struct json_object **out, char *msg, size_t msglen);

/* The same for a document a store returns: its integers are not checked
 * against int64 (another writer may have stored any number; json-c clamps
 * one beyond int64, as it always did). */
enum lb_json_status lb_json_parse_stored(const char *buf, size_t len, int max_depth,
                                         struct json_object **out, char *msg, size_t msglen);

/* Check that buf is one JSON document within max_depth (as lb_json_parse
 * does, and with its messages; `null` is valid here) without building
 * anything. */
enum lb_json_status lb_json_validate(const char *buf, size_t len, int max_depth, char *msg,
                                     size_t msglen);

/* The length of the longest prefix of s that is well-formed UTF-8 (shortest
 * form, no surrogates, at most U+10FFFF — what lb_json_parse accepts in a
 * string): len when all of s is. */
size_t lb_utf8_check(const char *s, size_t len);

/* A json-c value that serializes as the JSON text given, verbatim: a string
 * object with its own serializer.  Documents a store returns (JSON columns)
 * reach the response without being parsed into a tree and printed again.
 * The caller has validated the text (lb_json_validate).  Only serialization
 * sees a document: to every other json-c call it is a string, so it is only
 * for values the gateway passes through and never looks into. */
struct json_object *lb_json_raw(const char *text, size_t len);

/* Append a JSON string literal (with quotes, escaped) to out. */
void lb_json_write_string(struct evbuffer *out, const char *s, size_t len);
/* Append a compact serialization of v to out. */
void lb_json_write(struct evbuffer *out, struct json_object *v);

#endif
