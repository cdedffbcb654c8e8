/*
 * cf_yaml.c — libyaml event stream → json-c tree.
 *
 * A small recursive-descent builder over libyaml's parser events.  Anchors
 * and aliases are refused (configs do not need them and they make inputs
 * explode); only the first document of a stream is read.
 */
#include "config/cf_yaml.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#define CF_YAML_MAX_DEPTH 64

struct ybuild {
    yaml_parser_t parser;
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 3, 4))) static void yerr(struct ybuild *b, const yaml_mark_t *m,
                                                       const char *fmt, ...)
{
    if (m != NULL) {
        snprintf(b->err, b->errlen, "line %zu column %zu: ", m->line + 1, m->column + 1);
    } else {
        b->err[0] = '\0';
    }
    size_t n = strlen(b->err);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->err + n, b->errlen - n, fmt, ap);
    va_end(ap);
}

/* ${NAME} → getenv(NAME).  Returns a malloc'd string or NULL (err set). */
static char *expand_env(struct ybuild *b, const yaml_mark_t *m, const char *s, size_t len)
{
    size_t cap = len + 1, n = 0;
    char *out = malloc(cap);
    if (out == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < len;) {
        if (s[i] == '$' && i + 1 < len && s[i + 1] == '{') {
            const char *end = memchr(s + i + 2, '}', len - i - 2);
            if (end == NULL) {
                free(out);
                yerr(b, m, "%s", "unterminated ${ in a value");
                return NULL;
            }
            char name[128];
            size_t nl = (size_t)(end - (s + i + 2));
            if (nl == 0 || nl >= sizeof(name)) {
                free(out);
                yerr(b, m, "%s", "bad ${NAME} in a value");
                return NULL;
            }
            memcpy(name, s + i + 2, nl);
            name[nl] = '\0';
            const char *val = getenv(name);
            if (val == NULL) {
                free(out);
                yerr(b, m, "environment variable %s is not set", name);
                return NULL;
            }
            size_t vl = strlen(val);
            if (n + vl + 1 > cap) {
                cap = (n + vl + 1) * 2;
                char *nb = realloc(out, cap);
                if (nb == NULL) {
                    free(out);
                    return NULL;
                }
                out = nb;
            }
            memcpy(out + n, val, vl);
            n += vl;
            i += nl + 3;
            continue;
        }
        if (n + 2 > cap) {
            cap *= 2;
            char *nb = realloc(out, cap);
            if (nb == NULL) {
                free(out);
                return NULL;
            }
            out = nb;
        }
        out[n++] = s[i++];
    }
    out[n] = '\0';
    return out;
}

static struct json_object *plain_scalar(const char *s, int *isnull)
{
    size_t len = strlen(s);
    if (len == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
        strcmp(s, "NULL") == 0) {
        *isnull = 1;
        return NULL;
    }
    if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "TRUE") == 0) {
        return json_object_new_boolean(1);
    }
    if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "FALSE") == 0) {
        return json_object_new_boolean(0);
    }
    char *end;
    errno = 0;
    long long ll = strtoll(s, &end, 10);
    if (*end == '\0' && errno == 0 && (s[0] == '-' || (s[0] >= '0' && s[0] <= '9'))) {
        return json_object_new_int64(ll);
    }
    errno = 0;
    double d = strtod(s, &end);
    if (*end == '\0' && errno == 0 &&
        (s[0] == '-' || s[0] == '.' || (s[0] >= '0' && s[0] <= '9'))) {
        return json_object_new_double(d);
    }
    return json_object_new_string(s);
}

static int build_node(struct ybuild *b, yaml_event_t *ev, int depth, struct json_object **out);

static int next_event(struct ybuild *b, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&b->parser, ev)) {
        yerr(b, &b->parser.problem_mark, "%s",
             b->parser.problem != NULL ? b->parser.problem : "YAML syntax error");
        return -1;
    }
    return 0;
}

static struct json_object *build_mapping(struct ybuild *b, const yaml_mark_t *start, int depth)
{
    struct json_object *obj = json_object_new_object();
    for (;;) {
        yaml_event_t kev;
        if (next_event(b, &kev) < 0) {
            json_object_put(obj);
            return NULL;
        }
        if (kev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&kev);
            return obj;
        }
        if (kev.type != YAML_SCALAR_EVENT) {
            yerr(b, &kev.start_mark, "%s", "mapping keys must be plain strings");
            yaml_event_delete(&kev);
            json_object_put(obj);
            return NULL;
        }
        char *key = strndup((const char *)kev.data.scalar.value, kev.data.scalar.length);
        yaml_mark_t km = kev.start_mark;
        yaml_event_delete(&kev);
        if (key == NULL) {
            json_object_put(obj);
            return NULL;
        }
        if (json_object_object_get_ex(obj, key, NULL)) {
            yerr(b, &km, "duplicate key '%s'", key);
            free(key);
            json_object_put(obj);
            return NULL;
        }
        yaml_event_t vev;
        if (next_event(b, &vev) < 0) {
            free(key);
            json_object_put(obj);
            return NULL;
        }
        struct json_object *v = NULL;
        int rc = build_node(b, &vev, depth + 1, &v);
        yaml_event_delete(&vev);
        if (rc < 0) {
            free(key);
            json_object_put(obj);
            return NULL;
        }
        json_object_object_add(obj, key, v);
        free(key);
    }
    (void)start;
}

static struct json_object *build_sequence(struct ybuild *b, int depth)
{
    struct json_object *arr = json_object_new_array();
    for (;;) {
        yaml_event_t ev;
        if (next_event(b, &ev) < 0) {
            json_object_put(arr);
            return NULL;
        }
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            return arr;
        }
        struct json_object *v = NULL;
        int rc = build_node(b, &ev, depth + 1, &v);
        yaml_event_delete(&ev);
        if (rc < 0) {
            json_object_put(arr);
            return NULL;
        }
        json_object_array_add(arr, v);
    }
}

static int build_node(struct ybuild *b, yaml_event_t *ev, int depth, struct json_object **out)
{
    *out = NULL;
    if (depth > CF_YAML_MAX_DEPTH) {
        yerr(b, &ev->start_mark, "%s", "document nested too deeply");
        return -1;
    }
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        char *s = expand_env(b, &ev->start_mark, (const char *)ev->data.scalar.value,
                             ev->data.scalar.length);
        if (s == NULL) {
            return -1;
        }
        int isnull = 0;
        *out = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? plain_scalar(s, &isnull)
                                                                : json_object_new_string(s);
        free(s);
        return *out != NULL || isnull ? 0 : -1;
    }
    case YAML_MAPPING_START_EVENT:
        *out = build_mapping(b, &ev->start_mark, depth);
        return *out != NULL ? 0 : -1;
    case YAML_SEQUENCE_START_EVENT:
        *out = build_sequence(b, depth);
        return *out != NULL ? 0 : -1;
    case YAML_ALIAS_EVENT:
        yerr(b, &ev->start_mark, "%s", "YAML aliases are not supported");
        return -1;
    default:
        yerr(b, &ev->start_mark, "%s", "unexpected YAML event");
        return -1;
    }
}

static struct json_object *load(struct ybuild *b)
{
    struct json_object *root = NULL;
    yaml_event_t ev;
    /* STREAM-START, DOCUMENT-START (or STREAM-END for an empty input). */
    for (;;) {
        if (next_event(b, &ev) < 0) {
            return NULL;
        }
        yaml_event_type_t t = ev.type;
        if (t == YAML_STREAM_START_EVENT || t == YAML_DOCUMENT_START_EVENT) {
            yaml_event_delete(&ev);
            continue;
        }
        if (t == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            yerr(b, NULL, "%s", "empty document");
            return NULL;
        }
        int rc = build_node(b, &ev, 0, &root);
        yaml_event_delete(&ev);
        if (rc == 0 && root == NULL) {
            yerr(b, NULL, "%s", "the document is null");
        }
        return root;
    }
}

struct json_object *cf_yaml_load_string(const char *text, size_t len, char *err, size_t errlen)
{
    struct ybuild b = {.err = err, .errlen = errlen};
    if (!yaml_parser_initialize(&b.parser)) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    yaml_parser_set_input_string(&b.parser, (const unsigned char *)text, len);
    struct json_object *root = load(&b);
    yaml_parser_delete(&b.parser);
    return root;
}

struct json_object *cf_yaml_load_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct ybuild b = {.err = err, .errlen = errlen};
    if (!yaml_parser_initialize(&b.parser)) {
        fclose(f);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    yaml_parser_set_input_file(&b.parser, f);
    char inner[512];
    b.err = inner;
    b.errlen = sizeof(inner);
    inner[0] = '\0';
    struct json_object *root = load(&b);
    yaml_parser_delete(&b.parser);
    fclose(f);
    if (root == NULL) {
        snprintf(err, errlen, "%s: %s", path, inner);
    }
    return root;
}
