/*
 * lb_json.c — JSON parsing with limits, and writing into evbuffers.
 */
#include "lib/lb_json.h"

#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <json-c/printbuf.h>

/*
 * A strict RFC 8259 validator runs before json-c.  json-c's "strict" mode
 * still takes NaN, Infinity, "12.", "007", single quotes, raw control
 * characters and overlong UTF-8, and counts depth by values rather than
 * brackets; since numbers are written back verbatim (to keep decimals
 * exact), anything json-c lets through would reach clients and stores.  The
 * validator is one pass over the bytes and gives precise error positions.
 */
struct jv {
    const unsigned char *p, *end, *start;
    int depth, max_depth;
    enum lb_json_status st;
    char *msg;
    size_t msglen;
    /* lb_json_parse only: integers must fit in int64 (json-c clamps the
     * others to the bounds, silently), and the member names leading to the
     * value being read ("set.stock"), to name a refused one */
    int int64_only;
    char path[128];
    size_t pathlen;
};

static int jv_fail(struct jv *v, enum lb_json_status st, const char *what)
{
    v->st = st;
    snprintf(v->msg, v->msglen, "%s at byte %zu", what, (size_t)(v->p - v->start));
    return -1;
}

static void jv_ws(struct jv *v)
{
    while (v->p < v->end && (*v->p == ' ' || *v->p == '\t' || *v->p == '\r' || *v->p == '\n')) {
        v->p++;
    }
}

/* The length of the well-formed UTF-8 sequence at p (lead byte >= 0x80):
 * shortest form, no surrogates, at most U+10FFFF; 0 when it is not one
 * (*truncated set when the bytes end inside it). */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end, int *truncated)
{
    unsigned c = *p;
    int n;
    unsigned cp, min;
    *truncated = 0;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 1, cp = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 2, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 3, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (end - p <= n) {
        *truncated = 1;
        return 0;
    }
    for (int i = 1; i <= n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return (size_t)n + 1;
}

size_t lb_utf8_check(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        if (*p < 0x80) {
            p++;
            continue;
        }
        int truncated;
        size_t n = utf8_seq(p, end, &truncated);
        if (n == 0) {
            return (size_t)(p - (const unsigned char *)s);
        }
        p += n;
    }
    return len;
}

static int jv_utf8(struct jv *v)
{
    int truncated;
    size_t n = utf8_seq(v->p, v->end, &truncated);
    if (n == 0) {
        if (truncated) {
            return jv_fail(v, LB_JSON_UTF8, "invalid UTF-8 (truncated sequence)");
        }
        unsigned c = *v->p;
        if (c >= 0xc2 && c <= 0xf4) { /* a lead byte: its sequence is bad */
            int cont = 1;
            size_t need = c <= 0xdf ? 1 : c <= 0xef ? 2 : 3;
            for (size_t i = 1; i <= need; i++) {
                cont &= (v->p[i] & 0xc0) == 0x80;
            }
            if (cont) {
                return jv_fail(v, LB_JSON_UTF8,
                               "invalid UTF-8 (overlong, surrogate or out of range)");
            }
        }
        return jv_fail(v, LB_JSON_UTF8, "invalid UTF-8");
    }
    v->p += n;
    return 0;
}

static int jv_hex4(struct jv *v, unsigned *out)
{
    if (v->end - v->p < 4) {
        return jv_fail(v, LB_JSON_SYNTAX, "malformed JSON: bad \\u escape");
    }
    unsigned x = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = v->p[i];
        x <<= 4;
        if (c >= '0' && c <= '9') {
            x |= c - '0';
        } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
            x |= (c | 0x20) - 'a' + 10;
        } else {
            return jv_fail(v, LB_JSON_SYNTAX, "malformed JSON: bad \\u escape");
        }
    }
    v->p += 4;
    *out = x;
    return 0;
}

/* A string; a member name (key != 0) may not contain \u0000: json-c keeps
 * names as C strings and would cut the name at the NUL, silently. */
static int jv_string(struct jv *v, int key)
{
    const unsigned char *open = v->p;
    v->p++; /* the opening quote */
    while (v->p < v->end) {
        unsigned char c = *v->p;
        if (c == '"') {
            v->p++;
            return 0;
        }
        if (c < 0x20) {
            return jv_fail(v, LB_JSON_SYNTAX,
                           "malformed JSON: unescaped control character in a string");
        }
        if (c == '\\') {
            v->p++;
            if (v->p >= v->end) {
                break;
            }
            c = *v->p++;
            if (c == 'u') {
                unsigned u, u2;
                if (jv_hex4(v, &u) < 0) {
                    return -1;
                }
                if (u >= 0xd800 && u <= 0xdbff) { /* a high surrogate needs its low half */
                    if (v->end - v->p < 6 || v->p[0] != '\\' || v->p[1] != 'u') {
                        return jv_fail(v, LB_JSON_UTF8, "unpaired surrogate in a \\u escape");
                    }
                    v->p += 2;
                    if (jv_hex4(v, &u2) < 0) {
                        return -1;
                    }
                    if (u2 < 0xdc00 || u2 > 0xdfff) {
                        return jv_fail(v, LB_JSON_UTF8, "unpaired surrogate in a \\u escape");
                    }
                } else if (u >= 0xdc00 && u <= 0xdfff) {
                    return jv_fail(v, LB_JSON_UTF8, "unpaired surrogate in a \\u escape");
                } else if (u == 0 && key) {
                    /* name it by its text before the NUL (at most 40 bytes,
                     * cut at a character boundary) and its position */
                    const unsigned char *name = open + 1;
                    size_t before = (size_t)(v->p - 6 - name);
                    if (before > 40) {
                        before = 40;
                        while (before > 0 && (name[before] & 0xc0) == 0x80) {
                            before--;
                        }
                    }
                    v->st = LB_JSON_SYNTAX;
                    snprintf(v->msg, v->msglen,
                             "member name \"%.*s\\u0000…\" at byte %zu contains a NUL character",
                             (int)before, (const char *)name, (size_t)(open - v->start));
                    return -1;
                }
            } else if (strchr("\"\\/bfnrt", c) == NULL || c == '\0') {
                v->p--;
                return jv_fail(v, LB_JSON_SYNTAX, "malformed JSON: bad escape in a string");
            }
            continue;
        }
        if (c >= 0x80) {
            if (jv_utf8(v) < 0) {
                return -1;
            }
            continue;
        }
        v->p++;
    }
    return jv_fail(v, LB_JSON_SYNTAX, "malformed JSON: the document ends early");
}

static int jv_digits(struct jv *v)
{
    const unsigned char *s = v->p;
    while (v->p < v->end && *v->p >= '0' && *v->p <= '9') {
        v->p++;
    }
    return v->p > s ? 0 : -1;
}

/* An integer literal s..end (optional '-', digits) within int64? */
static int int64_fits(const unsigned char *s, const unsigned char *end)
{
    static const char max[] = "9223372036854775807", min[] = "9223372036854775808";
    int neg = *s == '-';
    s += neg;
    size_t n = (size_t)(end - s), lim = sizeof(max) - 1;
    if (n != lim) {
        return n < lim;
    }
    return memcmp(s, neg ? min : max, lim) <= 0;
}

static int jv_number(struct jv *v)
{
    const unsigned char *num = v->p;
    if (*v->p == '-') {
        v->p++;
    }
    if (v->p < v->end && *v->p == '0') {
        v->p++;
        if (v->p < v->end && *v->p >= '0' && *v->p <= '9') {
            return jv_fail(v, LB_JSON_SYNTAX, "malformed JSON: a number with a leading zero");
        }
    } else if (jv_digits(v) < 0) {
        return jv_fail(v, LB_JSON_SYNTAX, "malformed JSON: a value is expected");
    }
    if (v->int64_only && (v->p >= v->end || (*v->p != '.' && (*v->p | 0x20) != 'e')) &&
        !int64_fits(num, v->p)) {
        v->st = LB_JSON_SYNTAX;
        snprintf(v->msg, v->msglen,
                 "%s%.*s%sthe integer %.*s at byte %zu is out of the 64-bit range "
                 "(-9223372036854775808 to 9223372036854775807)",
                 v->pathlen ? "'" : "", (int)v->pathlen, v->path, v->pathlen ? "': " : "",
                 (int)(v->p - num > 40 ? 40 : v->p - num), (const char *)num,
                 (size_t)(num - v->start));
        return -1;
    }
    if (v->p < v->end && *v->p == '.') {
        v->p++;
        if (jv_digits(v) < 0) {
            return jv_fail(v, LB_JSON_SYNTAX,
                           "malformed JSON: digits must follow the decimal point");
        }
    }
    if (v->p < v->end && (*v->p == 'e' || *v->p == 'E')) {
        v->p++;
        if (v->p < v->end && (*v->p == '+' || *v->p == '-')) {
            v->p++;
        }
        if (jv_digits(v) < 0) {
            return jv_fail(v, LB_JSON_SYNTAX, "malformed JSON: digits must follow the exponent");
        }
    }
    return 0;
}

static int jv_literal(struct jv *v, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(v->end - v->p) < n || memcmp(v->p, lit, n) != 0) {
        return jv_fail(v, LB_JSON_SYNTAX, "malformed JSON: a value is expected");
    }
    v->p += n;
    return 0;
}

/* path += ".name", as far as it fits, cut at a character boundary */
static void jv_path_push(struct jv *v, const unsigned char *name, size_t len)
{
    size_t room = sizeof(v->path) - 1 - v->pathlen;
    if (v->pathlen > 0 && room > 0) {
        v->path[v->pathlen++] = '.';
        room--;
    }
    if (len > room) {
        len = room;
        while (len > 0 && (name[len] & 0xc0) == 0x80) {
            len--;
        }
    }
    memcpy(v->path + v->pathlen, name, len);
    v->pathlen += len;
}

static int jv_value(struct jv *v)
{
    jv_ws(v);
    if (v->p >= v->end) {
        return jv_fail(v, LB_JSON_SYNTAX, "malformed JSON: the document ends early");
    }
    switch (*v->p) {
    case '{':
    case '[': {
        unsigned char close = *v->p == '{' ? '}' : ']';
        int obj = close == '}';
        if (++v->depth > v->max_depth) {
            v->st = LB_JSON_DEPTH;
            snprintf(v->msg, v->msglen, "JSON nested deeper than %d levels", v->max_depth);
            return -1;
        }
        v->p++;
        jv_ws(v);
        if (v->p < v->end && *v->p == close) {
            v->p++;
            v->depth--;
            return 0;
        }
        for (;;) {
            if (obj) {
                jv_ws(v);
                if (v->p >= v->end || *v->p != '"') {
                    return jv_fail(v, LB_JSON_SYNTAX,
                                   "malformed JSON: a quoted member name is expected");
                }
                const unsigned char *name = v->p + 1;
                if (jv_string(v, 1) < 0) {
                    return -1;
                }
                size_t saved = v->pathlen;
                if (v->int64_only) {
                    jv_path_push(v, name, (size_t)(v->p - 1 - name));
                }
                jv_ws(v);
                if (v->p >= v->end || *v->p != ':') {
                    return jv_fail(v, LB_JSON_SYNTAX, "malformed JSON: ':' is expected");
                }
                v->p++;
                if (jv_value(v) < 0) {
                    return -1;
                }
                v->pathlen = saved;
            } else if (jv_value(v) < 0) {
                return -1;
            }
            jv_ws(v);
            if (v->p < v->end && *v->p == ',') {
                v->p++;
                continue;
            }
            if (v->p < v->end && *v->p == close) {
                v->p++;
                v->depth--;
                return 0;
            }
            return jv_fail(v, LB_JSON_SYNTAX,
                           v->p >= v->end ? "malformed JSON: the document ends early"
                                          : "malformed JSON: ',' or a closing bracket is expected");
        }
    }
    case '"':
        return jv_string(v, 0);
    case 't':
        return jv_literal(v, "true");
    case 'f':
        return jv_literal(v, "false");
    case 'n':
        return jv_literal(v, "null");
    default:
        if (*v->p == '-' || (*v->p >= '0' && *v->p <= '9')) {
            return jv_number(v);
        }
        return jv_fail(v, LB_JSON_SYNTAX, "malformed JSON: a value is expected");
    }
}

static enum lb_json_status validate(const char *buf, size_t len, int max_depth, int int64_only,
                                    char *msg, size_t msglen)
{
    struct jv v = {.p = (const unsigned char *)buf,
                   .end = (const unsigned char *)buf + len,
                   .start = (const unsigned char *)buf,
                   .max_depth = max_depth,
                   .msg = msg,
                   .msglen = msglen,
                   .int64_only = int64_only};
    jv_ws(&v);
    if (v.p == v.end) {
        snprintf(msg, msglen, "the request body is empty; a JSON document is expected");
        return LB_JSON_EMPTY;
    }
    if (jv_value(&v) < 0) {
        return v.st;
    }
    jv_ws(&v);
    if (v.p != v.end) {
        jv_fail(&v, LB_JSON_SYNTAX, "malformed JSON: unexpected data after the document");
        return LB_JSON_SYNTAX;
    }
    return LB_JSON_OK;
}

enum lb_json_status lb_json_validate(const char *buf, size_t len, int max_depth, char *msg,
                                     size_t msglen)
{
    return validate(buf, len, max_depth, 0, msg, msglen);
}

static enum lb_json_status parse(const char *buf, size_t len, int max_depth, int int64_only,
                                 struct json_object **out, char *msg, size_t msglen)
{
    *out = NULL;
    enum lb_json_status st = validate(buf, len, max_depth, int64_only, msg, msglen);
    if (st != LB_JSON_OK) {
        return st;
    }
    /* valid JSON within the depth limit: json-c builds the tree */
    struct json_tokener *tok = json_tokener_new_ex(max_depth + 2);
    if (tok == NULL) {
        snprintf(msg, msglen, "out of memory");
        return LB_JSON_SYNTAX;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    struct json_object *o = json_tokener_parse_ex(tok, buf, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    if (jerr == json_tokener_continue) {
        /* a top-level literal or number ("true", "5") is complete only once
         * json-c sees what follows it: the terminating NUL says "no more" */
        o = json_tokener_parse_ex(tok, "", 1);
        jerr = json_tokener_get_error(tok);
    }
    json_tokener_free(tok);
    if (jerr != json_tokener_success) {
        json_object_put(o);
        snprintf(msg, msglen, "malformed JSON: %s", json_tokener_error_desc(jerr));
        return LB_JSON_SYNTAX;
    }
    if (o == NULL) { /* the document is `null`: json-c's NULL reads as "no document" */
        snprintf(msg, msglen,
                 "the body is JSON null: a JSON object is expected (an array for _batch)");
        return LB_JSON_NULL;
    }
    *out = o;
    return LB_JSON_OK;
}

enum lb_json_status lb_json_parse(const char *buf, size_t len, int max_depth,
                                  struct json_object **out, char *msg, size_t msglen)
{
    return parse(buf, len, max_depth, 1, out, msg, msglen);
}

enum lb_json_status lb_json_parse_stored(const char *buf, size_t len, int max_depth,
                                         struct json_object **out, char *msg, size_t msglen)
{
    return parse(buf, len, max_depth, 0, out, msg, msglen);
}

static int raw_to_json(struct json_object *o, struct printbuf *pb, int level, int flags)
{
    (void)level;
    (void)flags;
    return printbuf_memappend(pb, json_object_get_string(o), json_object_get_string_len(o));
}

struct json_object *lb_json_raw(const char *text, size_t len)
{
    struct json_object *o = json_object_new_string_len(text, (int)len);
    if (o != NULL) {
        json_object_set_serializer(o, raw_to_json, NULL, NULL);
    }
    return o;
}

void lb_json_write_string(struct evbuffer *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    char buf[512];
    size_t n = 0;
    buf[n++] = '"';
    for (size_t i = 0; i < len; i++) {
        if (n > sizeof(buf) - 8) {
            evbuffer_add(out, buf, n);
            n = 0;
        }
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            buf[n++] = '\\';
            buf[n++] = '"';
            break;
        case '\\':
            buf[n++] = '\\';
            buf[n++] = '\\';
            break;
        case '\n':
            buf[n++] = '\\';
            buf[n++] = 'n';
            break;
        case '\r':
            buf[n++] = '\\';
            buf[n++] = 'r';
            break;
        case '\t':
            buf[n++] = '\\';
            buf[n++] = 't';
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                memcpy(buf + n, "\\u00", 4);
                n += 4;
                buf[n++] = hex[c >> 4];
                buf[n++] = hex[c & 15];
            } else {
                buf[n++] = (char)c;
            }
        }
    }
    buf[n++] = '"';
    evbuffer_add(out, buf, n);
}

void lb_json_write(struct evbuffer *out, struct json_object *v)
{
    size_t len;
    const char *s = json_object_to_json_string_length(
        v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
    evbuffer_add(out, s, len);
}
