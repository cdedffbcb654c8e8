/*
 * gw_json.h — JSON on the data path (json-c: it keeps the exact text of
 * numbers, so decimals keep their digits from client to store and back).
 */
#ifndef GW_JSON_H
#define GW_JSON_H

#include <stddef.h>

#include <json-c/json.h>

struct evbuffer;

enum gw_json_status { GW_JSON_OK, GW_JSON_SYNTAX, GW_JSON_DEPTH, GW_JSON_UTF8, GW_JSON_EMPTY };

/* Parse a whole document (trailing garbage is an error).  On failure `msg`
 * says where and why. */
enum gw_json_status gw_json_parse(const char *buf, size_t len, int max_depth,
                                  struct json_object **out, char *msg, size_t msglen);

/* Append a JSON string literal (with quotes, escaped) to out. */
void gw_json_write_string(struct evbuffer *out, const char *s, size_t len);
/* Append a compact serialization of v to out. */
void gw_json_write(struct evbuffer *out, struct json_object *v);

#endif
