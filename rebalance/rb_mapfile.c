/*
 * rb_mapfile.c — shard map files and the rebalance state file on disk:
 * atomic writes, the readable YAML form of a map, the map document of a
 * built map.
 */
#include "rebalance/rb_mapfile.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/cf_yaml.h"
#include "lib/lb_file.h"
#include "lib/lb_log.h"
#include "routing/rt_shardmap.h"

/* 1 when the two maps are the same document in effect (shards, DSNs,
 * weights, vnodes, owner of every slot). */
int rb_mapfile_same(const struct rt_shardmap *a, const struct rt_shardmap *b)
{
    size_t n = rt_shardmap_nshards(a);
    if (n != rt_shardmap_nshards(b) || rt_shardmap_nslots(a) != rt_shardmap_nslots(b) ||
        rt_shardmap_vnodes(a) != rt_shardmap_vnodes(b)) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(rt_shardmap_shard_name(a, i), rt_shardmap_shard_name(b, i)) != 0 ||
            strcmp(rt_shardmap_shard_dsn(a, i), rt_shardmap_shard_dsn(b, i)) != 0 ||
            rt_shardmap_shard_weight(a, i) != rt_shardmap_shard_weight(b, i)) {
            return 0;
        }
    }
    for (uint32_t s = 0; s < rt_shardmap_nslots(a); s++) {
        if (rt_shardmap_slot_owner(a, s) != rt_shardmap_slot_owner(b, s)) {
            return 0;
        }
    }
    return 1;
}

int rb_mapfile_write_json(const char *path, struct json_object *doc, char *err, size_t errlen)
{
    const char *head = "# written by polygate; JSON is YAML\n";
    const char *body = json_object_to_json_string_ext(
        doc, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t hl = strlen(head), bl = strlen(body);
    char *text = malloc(hl + bl + 2);
    if (text == NULL) {
        snprintf(err, errlen, "cannot write '%s': out of memory", path);
        return -1;
    }
    memcpy(text, head, hl);
    memcpy(text + hl, body, bl);
    text[hl + bl] = '\n';
    int rc = lb_write_file_atomic(path, text, hl + bl + 1, err, errlen);
    free(text);
    return rc;
}

/* A string as a YAML double-quoted scalar in printable ASCII: quote and
 * backslash escaped, every other byte outside 0x20-0x7e as an escape (a
 * UTF-8 sequence as its code point, \uXXXX or \UXXXXXXXX; a byte that is not
 * valid UTF-8 as \xXX), so that no character YAML refuses (C0/C1 controls,
 * DEL, a byte-order mark) reaches the file. */
static void yaml_quoted(FILE *f, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        if (c >= 0x20 && c < 0x7f) {
            if (c == '"' || c == '\\') {
                fputc('\\', f);
            }
            fputc((int)c, f);
            i++;
            continue;
        }
        size_t len = c >= 0xf0 && c < 0xf5   ? 4
                     : c >= 0xe0 && c < 0xf0 ? 3
                     : c >= 0xc2 && c < 0xe0 ? 2
                                             : 1;
        uint32_t cp = len == 4 ? c & 0x07 : len == 3 ? c & 0x0f : c & 0x1f;
        int ok = len > 1 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++) {
            ok = (p[i + k] & 0xc0) == 0x80;
            cp = cp << 6 | (p[i + k] & 0x3f);
        }
        ok = ok && !(len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) &&
             !(len == 4 && (cp < 0x10000 || cp > 0x10ffff));
        if (!ok) {
            fprintf(f, "\\x%02x", c);
            i++;
        } else if (cp > 0xffff) {
            fprintf(f, "\\U%08x", (unsigned)cp);
            i += len;
        } else {
            fprintf(f, "\\u%04x", (unsigned)cp);
            i += len;
        }
    }
    fputc('"', f);
}

static void yaml_string(FILE *f, struct json_object *o)
{
    const char *s = json_object_get_string(o);
    yaml_quoted(f, s != NULL ? s : "", s != NULL ? (size_t)json_object_get_string_len(o) : 0);
}

#define RANGES_PER_LINE 6

char *rb_mapfile_yaml(struct json_object *doc, const char *header, size_t *len)
{
    char *text = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&text, &n);
    if (f == NULL) {
        return NULL;
    }
    /* every line of the header is a comment */
    for (const char *p = header; p != NULL && *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t l = nl != NULL ? (size_t)(nl - p) : strlen(p);
        fputs("# ", f);
        for (size_t i = 0; i < l; i++) { /* nothing YAML could take for a line break */
            fputc(p[i] >= 0x20 && p[i] < 0x7f ? p[i] : '?', f);
        }
        fputc('\n', f);
        p = nl != NULL ? nl + 1 : p + l;
    }
    static const char *const scalars[] = {"version", "slots", "vnodes"};
    for (size_t i = 0; i < sizeof(scalars) / sizeof(scalars[0]); i++) {
        struct json_object *v = json_object_object_get(doc, scalars[i]);
        if (v != NULL) {
            fprintf(f, "%s: %" PRId64 "\n", scalars[i], json_object_get_int64(v));
        }
    }
    struct json_object *sh = json_object_object_get(doc, "shards");
    fprintf(f, "shards:\n");
    for (size_t i = 0; i < json_object_array_length(sh); i++) {
        struct json_object *so = json_object_array_get_idx(sh, i);
        fputs("  - {name: ", f);
        yaml_string(f, json_object_object_get(so, "name"));
        fputs(", dsn: ", f);
        yaml_string(f, json_object_object_get(so, "dsn"));
        struct json_object *w = json_object_object_get(so, "weight");
        if (w != NULL) {
            fprintf(f, ", weight: %" PRId64, json_object_get_int64(w));
        }
        fputs("}\n", f);
    }
    struct json_object *ov = json_object_object_get(doc, "overrides");
    if (ov != NULL && json_object_object_length(ov) > 0) {
        /* a flow mapping over several lines: a few ranges per line */
        fprintf(f, "overrides: {");
        size_t k = 0;
        json_object_object_foreach(ov, range, owner)
        {
            fputs(k == 0 ? "\n  " : k % RANGES_PER_LINE == 0 ? ",\n  " : ", ", f);
            yaml_quoted(f, range, strlen(range));
            fputs(": ", f);
            yaml_string(f, owner);
            k++;
        }
        fprintf(f, "\n}\n");
    }
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        free(text);
        return NULL;
    }
    *len = n;
    return text;
}

/* The whole content of a file, or NULL (errno set). */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            if (nb == NULL) {
                free(buf);
                fclose(f);
                errno = ENOMEM;
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            break;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    *len = n;
    return buf;
}

/* 1 when the two maps are the same: version, shards, DSNs, weights, vnodes
 * and the owner of every slot. */
static int same_doc(const struct rt_shardmap *a, const struct rt_shardmap *b)
{
    if (a == NULL || b == NULL || rt_shardmap_version(a) != rt_shardmap_version(b)) {
        return 0;
    }
    return rb_mapfile_same(a, b);
}

/* The text read back as a map equals doc (a guard: the file must load as
 * the map that is active). */
static int reads_back(const char *text, size_t len, struct json_object *doc)
{
    char err[256];
    struct json_object *back = cf_yaml_load_string(text, len, err, sizeof(err));
    struct rt_shardmap *b = back != NULL ? rt_shardmap_from_json(back, err, sizeof(err)) : NULL;
    struct rt_shardmap *a = rt_shardmap_from_json(doc, err, sizeof(err));
    int ok = same_doc(a, b);
    json_object_put(back);
    rt_shardmap_unref(a);
    rt_shardmap_unref(b);
    return ok;
}

int rb_mapfile_replace(const char *path, struct json_object *doc, const char *header, char *err,
                       size_t errlen)
{
    size_t len = 0, olen = 0;
    char *text = rb_mapfile_yaml(doc, header, &len);
    if (text == NULL) {
        snprintf(err, errlen, "cannot write '%s': out of memory", path);
        return -1;
    }
    if (!reads_back(text, len, doc)) { /* never expected: JSON, which is YAML too */
        lb_warn("shard map '%s': the YAML form does not read back as the map; writing JSON", path);
        free(text);
        const char *body =
            json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                    JSON_C_TO_STRING_NOSLASHESCAPE);
        size_t bl = strlen(body);
        text = malloc(bl + 2);
        if (text == NULL) {
            snprintf(err, errlen, "cannot write '%s': out of memory", path);
            return -1;
        }
        memcpy(text, body, bl);
        text[bl] = '\n';
        len = bl + 1;
    }
    char *old = slurp(path, &olen);
    if (old != NULL) {
        size_t pl = strlen(path) + 8;
        char *prev = malloc(pl);
        int rc = -1;
        if (prev != NULL) {
            snprintf(prev, pl, "%s.prev", path);
            rc = lb_write_file_atomic(prev, old, olen, err, errlen);
        } else {
            snprintf(err, errlen, "cannot write '%s.prev': out of memory", path);
        }
        free(prev);
        free(old);
        if (rc < 0) {
            free(text);
            return -1;
        }
    } else if (errno != ENOENT) {
        snprintf(err, errlen, "cannot read '%s' to keep it as '%s.prev': %s", path, path,
                 strerror(errno));
        free(text);
        return -1;
    }
    int rc = lb_write_file_atomic(path, text, len, err, errlen);
    free(text);
    return rc;
}

struct json_object *rb_mapfile_doc(const struct rt_shardmap *m)
{
    struct json_object *doc = json_object_new_object();
    json_object_object_add(doc, "version", json_object_new_int64(rt_shardmap_version(m)));
    json_object_object_add(doc, "slots", json_object_new_int64(rt_shardmap_nslots(m)));
    json_object_object_add(doc, "vnodes", json_object_new_int64(rt_shardmap_vnodes(m)));
    struct json_object *sh = json_object_new_array();
    for (size_t s = 0; s < rt_shardmap_nshards(m); s++) {
        struct json_object *so = json_object_new_object();
        json_object_object_add(so, "name", json_object_new_string(rt_shardmap_shard_name(m, s)));
        json_object_object_add(so, "dsn", json_object_new_string(rt_shardmap_shard_dsn(m, s)));
        json_object_object_add(so, "weight", json_object_new_int64(rt_shardmap_shard_weight(m, s)));
        json_object_array_add(sh, so);
    }
    json_object_object_add(doc, "shards", sh);
    if (rt_shardmap_noverrides(m) > 0) {
        struct json_object *ov = json_object_new_object();
        for (size_t k = 0; k < rt_shardmap_noverrides(m); k++) {
            uint32_t first, last;
            int owner = rt_shardmap_override(m, k, &first, &last);
            char range[32];
            snprintf(range, sizeof(range), "%u-%u", first, last);
            json_object_object_add(
                ov, range, json_object_new_string(rt_shardmap_shard_name(m, (size_t)owner)));
        }
        json_object_object_add(doc, "overrides", ov);
    }
    return doc;
}
