/*
 * gw_shardmap.c — checks of a live shard map change; the admin view.
 */
#include "gateway/gw_shardmap.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "config/cf_yaml.h"
#include "lib/lb_file.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "routing/rt_live.h"
#include "routing/rt_shardmap.h"

#define PROBE_TIMEOUT_MAX_MS 3000

static const struct cf_backend *backend_named(const struct cf_config *cf, const char *name)
{
    for (size_t i = 0; i < cf->nbackends; i++) {
        if (strcmp(cf->backends[i].name, name) == 0) {
            return &cf->backends[i];
        }
    }
    return NULL;
}

/* 1 when the two maps are the same document in effect (shards, DSNs,
 * weights, vnodes, owner of every slot). */
static int same_map(const struct rt_shardmap *a, const struct rt_shardmap *b)
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

/* Shards of `a` that `b` does not name: their count, and *list (malloc'd,
 * "'x', 'y'"; NULL when out of memory) when list is not NULL. */
static size_t missing_names(const struct rt_shardmap *a, const struct rt_shardmap *b, char **list)
{
    size_t k = 0, need = 1;
    for (size_t i = 0; i < rt_shardmap_nshards(a); i++) {
        const char *name = rt_shardmap_shard_name(a, i);
        if (rt_shardmap_shard_index(b, name) < 0) {
            need += strlen(name) + 4;
            k++;
        }
    }
    char *buf = list != NULL ? malloc(need) : NULL;
    if (buf != NULL) {
        size_t off = 0, j = 0;
        buf[0] = '\0';
        for (size_t i = 0; i < rt_shardmap_nshards(a); i++) {
            const char *name = rt_shardmap_shard_name(a, i);
            if (rt_shardmap_shard_index(b, name) < 0) {
                off += (size_t)snprintf(buf + off, need - off, "%s'%s'", j++ ? ", " : "", name);
            }
        }
    }
    if (list != NULL) {
        *list = buf;
    }
    return k;
}

static int check_backend(const struct cf_backend *old, const struct cf_backend *nb, int put,
                         const char **moving, struct md_error *e)
{
    const struct rt_shardmap *a = old->map, *b = nb->map;
    int64_t va = rt_shardmap_version(a), vb = rt_shardmap_version(b);
    int same = rt_shardmap_nslots(a) == rt_shardmap_nslots(b) && same_map(a, b);
    if (!put && same && va == vb) {
        return 0; /* a reload that leaves this map as it is */
    }
    if (vb <= va) {
        md_error_set(e, MD_E_CONFLICT, "version",
                     "backend '%s': shard map version %" PRId64 " is not higher than the active "
                     "version %" PRId64 "%s",
                     nb->name, vb, va, same ? "" : " (a changed map must carry a higher version)");
        return -1;
    }
    if (rt_shardmap_nslots(a) != rt_shardmap_nslots(b)) {
        md_error_set(e, MD_E_BAD_REQUEST, "slots",
                     "backend '%s': the map has %u slots, the active one %u: rows store their "
                     "slot, the slot count cannot change",
                     nb->name, rt_shardmap_nslots(b), rt_shardmap_nslots(a));
        return -1;
    }
    if (missing_names(b, a, NULL) > 0 && missing_names(a, b, NULL) > 0) {
        char *added = NULL, *removed = NULL;
        missing_names(b, a, &added);
        missing_names(a, b, &removed);
        md_error_set(e, MD_E_BAD_REQUEST, "shards",
                     "backend '%s': the map adds shard(s) %s and removes %s in one change; add "
                     "or remove shards in separate maps",
                     nb->name, added != NULL ? added : "(out of memory)",
                     removed != NULL ? removed : "(out of memory)");
        free(added);
        free(removed);
        return -1;
    }
    /* new shards, and shards that moved to another DSN, must answer */
    const struct ad_ops *ops = ad_lookup(nb->type); /* set-up, on the main thread */
    for (size_t i = 0; ops != NULL && i < rt_shardmap_nshards(b); i++) {
        const char *name = rt_shardmap_shard_name(b, i);
        const char *dsn = rt_shardmap_shard_dsn(b, i);
        int j = rt_shardmap_shard_index(a, name);
        if (j >= 0 && strcmp(rt_shardmap_shard_dsn(a, (size_t)j), dsn) == 0) {
            continue;
        }
        int64_t tmo = nb->pool.connect_timeout_ms < PROBE_TIMEOUT_MAX_MS
                          ? nb->pool.connect_timeout_ms
                          : PROBE_TIMEOUT_MAX_MS;
        char perr[240];
        if (AD_OPTIONAL(ops, probe, 0, dsn, tmo, perr, sizeof(perr)) < 0) {
            md_error_set(e, MD_E_UNAVAILABLE, "dsn",
                         "backend '%s': shard '%s' is not reachable: %s", nb->name, name, perr);
            e->shard = name; /* borrowed from the new config, which the caller holds */
            return -1;
        }
    }
    struct rt_slot_move *moves = NULL;
    size_t nmoves = 0;
    char derr[200];
    if (rt_shardmap_diff(a, b, &moves, &nmoves, derr, sizeof(derr)) < 0) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "backend '%s': %s", nb->name, derr);
        return -1;
    }
    if (nmoves > 0 && moving != NULL && *moving == NULL && strcmp(nb->type, "mysql") == 0) {
        *moving = nb->name; /* the caller rebalances (gw_rebalance.h) */
        free(moves);
        return 0;
    }
    if (nmoves > 0 && moving != NULL) {
        md_error_set(e, MD_E_CONFLICT, "shards", "backend '%s': the map moves %zu slot(s); %s",
                     nb->name, nmoves,
                     *moving != NULL ? "only one backend can be rebalanced at a time"
                                     : "online rebalancing is available for mysql backends only");
        free(moves);
        return -1;
    }
    if (nmoves > 0) {
        md_error_set(e, MD_E_CONFLICT, "shards",
                     "backend '%s': the map moves %zu slot(s) (first: slot %u from '%s' to '%s'); "
                     "a rebalance is in progress: wait for it to finish (GET /admin/rebalance) "
                     "before the next map change moves slots (docs/rebalancing.md)",
                     nb->name, nmoves, moves[0].slot, moves[0].from, moves[0].to);
        free(moves);
        return -1;
    }
    free(moves);
    return 0;
}

int gw_shardmap_check(const struct cf_config *active, const struct cf_config *next,
                      const char *put_backend, const char **moving, struct md_error *e)
{
    if (moving != NULL) {
        *moving = NULL;
    }
    for (size_t i = 0; i < next->nbackends; i++) {
        const struct cf_backend *nb = &next->backends[i];
        const struct cf_backend *old = backend_named(active, nb->name);
        if (nb->map == NULL || old == NULL || old->map == NULL) {
            continue; /* a backend added, or not sharded: nothing to compare */
        }
        int put = put_backend != NULL && strcmp(put_backend, nb->name) == 0;
        if (check_backend(old, nb, put, moving, e) < 0) {
            return -1;
        }
    }
    return 0;
}

const char *gw_shardmap_backend(const struct cf_config *cf, const char *name, size_t len,
                                struct md_error *e)
{
    const char *found = NULL;
    size_t n = 0;
    for (size_t i = 0; i < cf->nbackends; i++) {
        const struct cf_backend *be = &cf->backends[i];
        if (name != NULL && len > 0) {
            if (strlen(be->name) == len && memcmp(be->name, name, len) == 0) {
                if (be->shard_map_path == NULL) {
                    md_error_set(e, MD_E_BAD_REQUEST, NULL,
                                 "backend '%s' has no shard_map file: its shards come from the "
                                 "config",
                                 be->name);
                    return NULL;
                }
                return be->name;
            }
        } else if (be->shard_map_path != NULL) {
            found = be->name;
            n++;
        }
    }
    if (name != NULL && len > 0) {
        md_error_set(e, MD_E_NOT_FOUND, NULL, "no backend named '%.*s'", (int)(len > 64 ? 64 : len),
                     name);
        return NULL;
    }
    if (n != 1) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL,
                     n == 0 ? "no backend has a shard_map file"
                            : "several backends have a shard_map file: use "
                              "/admin/shardmap/{backend}");
        return NULL;
    }
    return found;
}

/* A DSN with its password replaced by "***". */
static struct json_object *redacted_dsn(const char *dsn)
{
    const char *scheme = strstr(dsn, "://");
    const char *start = scheme != NULL ? scheme + 3 : dsn;
    const char *slash = strchr(start, '/');
    const char *at = strrchr(start, '@');
    if (at == NULL || (slash != NULL && at > slash)) {
        return json_object_new_string(dsn);
    }
    const char *colon = memchr(start, ':', (size_t)(at - start));
    if (colon == NULL) {
        return json_object_new_string(dsn);
    }
    size_t len = strlen(dsn) + 4;
    char *buf = malloc(len);
    snprintf(buf, len, "%.*s***%s", (int)(colon + 1 - dsn), dsn, at);
    struct json_object *o = json_object_new_string(buf);
    free(buf);
    return o;
}

struct json_object *gw_shardmap_json(const struct cf_config *cf,
                                     struct json_object *(*migration_of)(const char *backend))
{
    struct json_object *doc = json_object_new_object();
    struct json_object *arr = json_object_new_array();
    for (size_t i = 0; i < cf->nbackends; i++) {
        const struct cf_backend *be = &cf->backends[i];
        const struct rt_shardmap *m = be->map;
        if (m == NULL) {
            continue;
        }
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "backend", json_object_new_string(be->name));
        json_object_object_add(
            o, "path",
            be->shard_map_path != NULL ? json_object_new_string(be->shard_map_path) : NULL);
        json_object_object_add(o, "version", json_object_new_int64(rt_shardmap_version(m)));
        json_object_object_add(o, "slots", json_object_new_int64(rt_shardmap_nslots(m)));
        json_object_object_add(o, "vnodes", json_object_new_int64(rt_shardmap_vnodes(m)));
        /* Being rebalanced: the live owners, each slot read once so that a
         * slot switched while this runs is counted for one shard only. */
        uint32_t *live_owned = NULL;
        if (be->live != NULL) {
            live_owned = lb_xcalloc(rt_shardmap_nshards(m) + 1, sizeof(*live_owned));
            for (uint32_t k = 0; k < rt_live_nslots(be->live); k++) {
                int owner = rt_live_owner(be->live, k);
                if (owner >= 0 && (size_t)owner < rt_shardmap_nshards(m)) {
                    live_owned[owner]++;
                }
            }
        }
        struct json_object *sh = json_object_new_array();
        for (size_t s = 0; s < rt_shardmap_nshards(m); s++) {
            struct json_object *so = json_object_new_object();
            json_object_object_add(so, "name",
                                   json_object_new_string(rt_shardmap_shard_name(m, s)));
            json_object_object_add(so, "dsn", redacted_dsn(rt_shardmap_shard_dsn(m, s)));
            json_object_object_add(so, "weight",
                                   json_object_new_int64(rt_shardmap_shard_weight(m, s)));
            uint32_t owned = live_owned != NULL ? live_owned[s] : rt_shardmap_shard_nslots(m, s);
            json_object_object_add(so, "slots", json_object_new_int64(owned));
            json_object_array_add(sh, so);
        }
        free(live_owned);
        json_object_object_add(o, "shards", sh);
        struct json_object *ov = json_object_new_object();
        for (size_t k = 0; k < rt_shardmap_noverrides(m); k++) {
            uint32_t first, last;
            int owner = rt_shardmap_override(m, k, &first, &last);
            char range[32];
            if (first == last) {
                snprintf(range, sizeof(range), "%u", first);
            } else {
                snprintf(range, sizeof(range), "%u-%u", first, last);
            }
            json_object_object_add(
                ov, range, json_object_new_string(rt_shardmap_shard_name(m, (size_t)owner)));
        }
        json_object_object_add(o, "overrides", ov);
        json_object_object_add(o, "migration", migration_of(be->name));
        json_object_array_add(arr, o);
    }
    json_object_object_add(doc, "backends", arr);
    return doc;
}

int gw_shardmap_write_json(const char *path, struct json_object *doc, char *err, size_t errlen)
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

char *gw_shardmap_yaml(struct json_object *doc, const char *header, size_t *len)
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
    return same_map(a, b);
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

int gw_shardmap_replace(const char *path, struct json_object *doc, const char *header, char *err,
                        size_t errlen)
{
    size_t len = 0, olen = 0;
    char *text = gw_shardmap_yaml(doc, header, &len);
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

struct json_object *gw_shardmap_doc(const struct rt_shardmap *m)
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

int gw_shardmap_write(const char *path, struct json_object *doc, char *err, size_t errlen)
{
    char when[32] = "?";
    time_t t = time(NULL);
    struct tm tm;
    if (gmtime_r(&t, &tm) != NULL) {
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    const char *base = strrchr(path, '/');
    base = base != NULL ? base + 1 : path;
    char *head = NULL;
    if (asprintf(&head,
                 "Written by polygate at %s: map version %" PRId64
                 " applied by PUT /admin/shardmap.\n"
                 "This file before: %s.prev",
                 when, json_object_get_int64(json_object_object_get(doc, "version")), base) < 0) {
        snprintf(err, errlen, "cannot write '%s': out of memory", path);
        return -1;
    }
    int rc = gw_shardmap_replace(path, doc, head, err, errlen);
    free(head);
    return rc;
}
