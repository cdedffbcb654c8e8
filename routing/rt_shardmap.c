/*
 * rt_shardmap.c — parse, validate and materialise a versioned shard map.
 *
 * Validation is complete before anything is built, and every message names
 * the field, the shard (shards[i] "name") or the override range concerned,
 * so that an operator can fix a rejected map from the message alone; a
 * rejected map never replaces the running one (the caller keeps its old
 * reference).
 *
 * Shard names are restricted to letters, digits and - _ . : (1 to
 * RT_SHARD_NAME_MAX bytes): they travel in error bodies, headers, metric
 * labels and log lines unquoted.
 */
#include "routing/rt_shardmap.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routing/rt_hash.h"
#include "routing/rt_ring.h"

#define RT_SHARD_NAME_MAX 128

struct rt_shard {
    char *name;
    char *dsn;
    uint32_t weight;
    uint32_t nslots; /* slots owned, ring + overrides */
};

struct rt_override {
    uint32_t first, last; /* inclusive */
    uint32_t shard;
    const char *key; /* while parsing only: the document's key, for messages */
};

struct rt_shardmap {
    atomic_uint refs;
    int64_t version;
    uint32_t nslots;
    uint32_t vnodes;
    size_t nshards;
    struct rt_shard *shards;
    uint32_t *byname; /* shard indices sorted by name */
    size_t noverrides;
    struct rt_override *overrides; /* ascending first, disjoint */
    uint32_t *owner;               /* nslots entries: slot → shard index */
};

__attribute__((format(printf, 3, 4))) static void seterr(char *err, size_t errlen, const char *fmt,
                                                         ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void map_free(struct rt_shardmap *m)
{
    size_t i;

    if (m == NULL)
        return;
    for (i = 0; i < m->nshards; i++) {
        free(m->shards[i].name);
        free(m->shards[i].dsn);
    }
    free(m->shards);
    free(m->byname);
    free(m->overrides);
    free(m->owner);
    free(m);
}

/* ---- field helpers ---------------------------------------------------- */

/* A member of an object, or NULL when it is missing or an explicit JSON null
 * (json-c represents null as a NULL pointer; both mean "not given" here). */
static const struct json_object *member(const struct json_object *obj, const char *field)
{
    struct json_object *v = NULL;

    if (!json_object_object_get_ex(obj, field, &v))
        return NULL;
    return v;
}

static int is_string(const struct json_object *v)
{
    return json_object_is_type(v, json_type_string);
}

/* A string value's bytes (json_object_get_string() only reads its argument
 * but is not declared const). */
static const char *str_value(const struct json_object *v)
{
    return json_object_get_string((struct json_object *)v);
}

/* The name of a non-null, non-integer value's type, for messages. */
static const char *type_name(const struct json_object *v)
{
    return json_object_is_type(v, json_type_string)    ? "string"
           : json_object_is_type(v, json_type_double)  ? "real number"
           : json_object_is_type(v, json_type_boolean) ? "boolean"
           : json_object_is_type(v, json_type_array)   ? "array"
                                                       : "object";
}

static int check_keys(const struct json_object *obj, const char *const *allowed, const char *where,
                      const char *expected, char *err, size_t errlen)
{
    json_object_object_foreach(obj, key, val)
    {
        size_t i;
        int ok = 0;

        (void)val;
        for (i = 0; allowed[i] != NULL; i++)
            if (strcmp(key, allowed[i]) == 0)
                ok = 1;
        if (!ok) {
            seterr(err, errlen, "%sunknown field \"%s\" (expected %s)", where, key, expected);
            return -1;
        }
    }
    return 0;
}

/* An optional integer field within [min, max]; -1 with err on a bad value. */
static int get_int(const struct json_object *obj, const char *field, int required, int64_t def,
                   int64_t min, int64_t max, const char *where, const char *rule, int64_t *out,
                   char *err, size_t errlen)
{
    const struct json_object *v = member(obj, field);

    if (v == NULL) {
        if (required) {
            seterr(err, errlen, "%smissing required field \"%s\"", where, field);
            return -1;
        }
        *out = def;
        return 0;
    }
    if (!json_object_is_type(v, json_type_int)) {
        seterr(err, errlen, "%s\"%s\" must be %s (got a %s)", where, field, rule, type_name(v));
        return -1;
    }
    *out = json_object_get_int64(v);
    /* json-c clamps integers beyond 64 bits to these: never take them at face
     * value */
    if (*out == INT64_MAX || *out == INT64_MIN) {
        seterr(err, errlen, "%s\"%s\" must be %s (got an integer out of the 64-bit range)", where,
               field, rule);
        return -1;
    }
    if (*out < min || *out > max) {
        seterr(err, errlen, "%s\"%s\" must be %s (got %" PRId64 ")", where, field, rule, *out);
        return -1;
    }
    return 0;
}

static int name_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == ':';
}

/* ---- shards ----------------------------------------------------------- */

struct name_sort {
    const char *name;
    uint32_t ix;
};

static int cmp_name_sort(const void *a, const void *b)
{
    const struct name_sort *x = a, *y = b;
    int c = strcmp(x->name, y->name);

    if (c)
        return c;
    return x->ix < y->ix ? -1 : x->ix > y->ix;
}

static int parse_shard(struct rt_shardmap *m, size_t i, const struct json_object *js, char *err,
                       size_t errlen)
{
    static const char *const keys[] = {"name", "dsn", "weight", NULL};
    struct rt_shard *sh = &m->shards[i];
    const struct json_object *jname, *jdsn;
    const char *name;
    char where[RT_SHARD_NAME_MAX + 48];
    int64_t w;
    size_t len, k;

    snprintf(where, sizeof where, "shards[%zu]: ", i);
    if (!json_object_is_type(js, json_type_object)) {
        seterr(err, errlen, "%sexpected an object {name, dsn, weight}", where);
        return -1;
    }
    jname = member(js, "name");
    if (jname == NULL) {
        seterr(err, errlen, "%smissing required field \"name\"", where);
        return -1;
    }
    if (!is_string(jname) || json_object_get_string_len(jname) == 0) {
        seterr(err, errlen, "%s\"name\" must be a non-empty string", where);
        return -1;
    }
    name = str_value(jname);
    len = (size_t)json_object_get_string_len(jname);
    if (len > RT_SHARD_NAME_MAX) {
        seterr(err, errlen, "%s\"name\" is longer than %d bytes", where, RT_SHARD_NAME_MAX);
        return -1;
    }
    for (k = 0; k < len; k++) {
        if (!name_char_ok(name[k])) {
            seterr(err, errlen,
                   "%s\"name\" \"%.*s\" may only contain letters, digits and - _ . : "
                   "(invalid character at offset %zu)",
                   where, (int)strnlen(name, len), name, k);
            return -1;
        }
    }
    snprintf(where, sizeof where, "shards[%zu] \"%s\": ", i, name);
    if (check_keys(js, keys, where, "name, dsn, weight", err, errlen) < 0)
        return -1;

    jdsn = member(js, "dsn");
    if (jdsn == NULL) {
        seterr(err, errlen, "%smissing required field \"dsn\"", where);
        return -1;
    }
    if (!is_string(jdsn) || json_object_get_string_len(jdsn) == 0) {
        seterr(err, errlen, "%s\"dsn\" must be a non-empty string", where);
        return -1;
    }
    if (strlen(str_value(jdsn)) != (size_t)json_object_get_string_len(jdsn)) {
        seterr(err, errlen, "%s\"dsn\" contains a NUL character", where);
        return -1;
    }
    if (get_int(js, "weight", 0, 1, 1, UINT32_MAX, where, "an integer >= 1", &w, err, errlen) < 0)
        return -1;

    sh->name = strdup(name);
    sh->dsn = strdup(str_value(jdsn));
    if (sh->name == NULL || sh->dsn == NULL) {
        seterr(err, errlen, "out of memory");
        return -1;
    }
    sh->weight = (uint32_t)w;
    return 0;
}

static int parse_shards(struct rt_shardmap *m, const struct json_object *doc, char *err,
                        size_t errlen)
{
    const struct json_object *arr = member(doc, "shards");
    struct name_sort *ns;
    size_t i, n;

    if (arr == NULL) {
        seterr(err, errlen, "missing required field \"shards\"");
        return -1;
    }
    if (!json_object_is_type(arr, json_type_array)) {
        seterr(err, errlen, "\"shards\" must be an array of {name, dsn, weight}");
        return -1;
    }
    n = json_object_array_length(arr);
    if (n == 0) {
        seterr(err, errlen, "\"shards\" is empty: a shard map needs at least one shard");
        return -1;
    }
    if (n > RT_RING_MAX_POINTS) {
        seterr(err, errlen, "\"shards\" has too many entries (%zu > %u)", n, RT_RING_MAX_POINTS);
        return -1;
    }
    m->shards = calloc(n, sizeof *m->shards);
    m->byname = calloc(n, sizeof *m->byname);
    ns = calloc(n, sizeof *ns);
    if (m->shards == NULL || m->byname == NULL || ns == NULL) {
        free(ns);
        seterr(err, errlen, "out of memory");
        return -1;
    }
    for (i = 0; i < n; i++) {
        /* count as we go so that map_free() frees what was allocated */
        m->nshards = i + 1;
        if (parse_shard(m, i, json_object_array_get_idx(arr, i), err, errlen) < 0) {
            free(ns);
            return -1;
        }
        ns[i].name = m->shards[i].name;
        ns[i].ix = (uint32_t)i;
    }
    qsort(ns, n, sizeof *ns, cmp_name_sort);
    for (i = 0; i < n; i++) {
        if (i > 0 && strcmp(ns[i - 1].name, ns[i].name) == 0) {
            seterr(err, errlen, "shards[%u] \"%s\": duplicate shard name (also shards[%u])",
                   ns[i].ix, ns[i].name, ns[i - 1].ix);
            free(ns);
            return -1;
        }
        m->byname[i] = ns[i].ix;
    }
    free(ns);
    return 0;
}

int rt_shardmap_shard_index(const struct rt_shardmap *map, const char *name)
{
    size_t lo = 0, hi = map->nshards;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(map->shards[map->byname[mid]].name, name);

        if (c == 0)
            return (int)map->byname[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* ---- overrides -------------------------------------------------------- */

/* Decimal digits at *p (at least one) into *out, saturating at UINT32_MAX
 * (far beyond any slot: reported as out of range, not as malformed). */
static int parse_num(const char **p, uint32_t *out)
{
    const char *s = *p;
    uint64_t v = 0;

    if (*s < '0' || *s > '9')
        return -1;
    for (; *s >= '0' && *s <= '9'; s++) {
        v = v * 10 + (uint64_t)(*s - '0');
        if (v > UINT32_MAX)
            v = UINT32_MAX;
    }
    *p = s;
    *out = (uint32_t)v;
    return 0;
}

static int cmp_override(const void *a, const void *b)
{
    const struct rt_override *x = a, *y = b;

    if (x->first != y->first)
        return x->first < y->first ? -1 : 1;
    return x->last < y->last ? -1 : x->last > y->last;
}

static int parse_overrides(struct rt_shardmap *m, const struct json_object *doc, char *err,
                           size_t errlen)
{
    const struct json_object *obj = member(doc, "overrides");
    size_t i, n;

    if (obj == NULL)
        return 0;
    if (!json_object_is_type(obj, json_type_object)) {
        seterr(err, errlen,
               "\"overrides\" must be an object of slot ranges to shard names, e.g. "
               "{\"0-99\": \"orders-1\"}");
        return -1;
    }
    n = (size_t)json_object_object_length(obj);
    if (n == 0)
        return 0;
    m->overrides = calloc(n, sizeof *m->overrides);
    if (m->overrides == NULL) {
        seterr(err, errlen, "out of memory");
        return -1;
    }
    i = 0;
    json_object_object_foreach(obj, key, val)
    {
        struct rt_override *o = &m->overrides[i++];
        const char *p = key;
        int shard;

        o->key = key;
        if (parse_num(&p, &o->first) < 0)
            goto malformed;
        o->last = o->first;
        if (*p == '-') {
            p++;
            if (parse_num(&p, &o->last) < 0)
                goto malformed;
        }
        if (*p != '\0')
            goto malformed;
        if (o->first > o->last) {
            seterr(err, errlen, "overrides \"%s\": range start is after its end", key);
            return -1;
        }
        if (o->last >= m->nslots) {
            seterr(err, errlen, "overrides \"%s\": slot out of range (slots are 0-%u)", key,
                   m->nslots - 1);
            return -1;
        }
        if (!is_string(val)) {
            seterr(err, errlen, "overrides \"%s\": value must be a shard name (a string)", key);
            return -1;
        }
        shard = rt_shardmap_shard_index(m, str_value(val));
        if (shard < 0) {
            seterr(err, errlen, "overrides \"%s\": unknown shard \"%s\"", key, str_value(val));
            return -1;
        }
        o->shard = (uint32_t)shard;
        continue;
    malformed:
        seterr(err, errlen,
               "overrides \"%s\": malformed slot range (expected \"N\" or \"N-M\", "
               "decimal slot numbers)",
               key);
        return -1;
    }
    m->noverrides = n;
    qsort(m->overrides, n, sizeof *m->overrides, cmp_override);
    for (i = 1; i < n; i++) {
        if (m->overrides[i].first <= m->overrides[i - 1].last) {
            seterr(err, errlen, "overrides \"%s\" overlaps \"%s\"", m->overrides[i].key,
                   m->overrides[i - 1].key);
            return -1;
        }
    }
    for (i = 0; i < n; i++)
        m->overrides[i].key = NULL; /* borrowed from doc: do not keep */
    return 0;
}

/* ---- build ------------------------------------------------------------ */

static int build_table(struct rt_shardmap *m, char *err, size_t errlen)
{
    struct rt_ring_node *nodes;
    struct rt_ring *ring;
    char rerr[256];
    size_t i;
    uint32_t s;
    int rc;

    nodes = calloc(m->nshards, sizeof *nodes);
    m->owner = calloc(m->nslots, sizeof *m->owner);
    if (nodes == NULL || m->owner == NULL) {
        free(nodes);
        seterr(err, errlen, "out of memory");
        return -1;
    }
    for (i = 0; i < m->nshards; i++) {
        nodes[i].name = m->shards[i].name;
        nodes[i].weight = m->shards[i].weight;
    }
    ring = rt_ring_new(nodes, m->nshards, m->vnodes, rerr, sizeof rerr);
    free(nodes);
    if (ring == NULL) {
        seterr(err, errlen, "%s", rerr);
        return -1;
    }
    rc = rt_ring_slots(ring, m->nslots, m->owner, rerr, sizeof rerr);
    rt_ring_free(ring);
    if (rc < 0) {
        seterr(err, errlen, "%s", rerr);
        return -1;
    }
    for (i = 0; i < m->noverrides; i++)
        for (s = m->overrides[i].first; s <= m->overrides[i].last; s++)
            m->owner[s] = m->overrides[i].shard;
    for (s = 0; s < m->nslots; s++)
        m->shards[m->owner[s]].nslots++;
    return 0;
}

struct rt_shardmap *rt_shardmap_from_json(const struct json_object *doc, char *err, size_t errlen)
{
    static const char *const keys[] = {"version", "slots", "vnodes", "shards", "overrides", NULL};
    struct rt_shardmap *m;
    int64_t v;
    uint64_t total_weight = 0;
    size_t i;

    if (doc == NULL || !json_object_is_type(doc, json_type_object)) {
        seterr(err, errlen,
               "shard map must be an object {version, slots, vnodes, shards, "
               "overrides}");
        return NULL;
    }
    if (check_keys(doc, keys, "", "version, slots, vnodes, shards, overrides", err, errlen) < 0)
        return NULL;
    m = calloc(1, sizeof *m);
    if (m == NULL) {
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&m->refs, 1);

    if (get_int(doc, "version", 1, 0, 1, INT64_MAX, "", "an integer >= 1", &v, err, errlen) < 0)
        goto fail;
    m->version = (int64_t)v;
    if (get_int(doc, "slots", 0, RT_SLOTS_DEFAULT, 1, RT_SLOTS_MAX, "",
                "a power of two in [1, 65536]", &v, err, errlen) < 0)
        goto fail;
    if (!rt_slots_valid((uint64_t)v)) {
        seterr(err, errlen, "\"slots\" must be a power of two in [1, 65536] (got %" PRId64 ")", v);
        goto fail;
    }
    m->nslots = (uint32_t)v;
    if (get_int(doc, "vnodes", 0, RT_RING_DEFAULT_VNODES, 1, RT_RING_MAX_VNODES, "",
                "an integer in [1, 65536]", &v, err, errlen) < 0)
        goto fail;
    m->vnodes = (uint32_t)v;

    if (parse_shards(m, doc, err, errlen) < 0)
        goto fail;
    /* total weight < 2^21 shards x 2^32: no overflow; compare without
     * multiplying it by vnodes */
    for (i = 0; i < m->nshards; i++)
        total_weight += m->shards[i].weight;
    if (total_weight > RT_RING_MAX_POINTS / m->vnodes) {
        seterr(err, errlen,
               "too many ring points: vnodes (%u) x total weight (%llu) exceeds %u; lower "
               "\"vnodes\" or the weights",
               m->vnodes, (unsigned long long)total_weight, RT_RING_MAX_POINTS);
        goto fail;
    }
    if (parse_overrides(m, doc, err, errlen) < 0)
        goto fail;
    if (build_table(m, err, errlen) < 0)
        goto fail;
    return m;

fail:
    map_free(m);
    return NULL;
}

/* ---- references and accessors ------------------------------------------ */

struct rt_shardmap *rt_shardmap_ref(struct rt_shardmap *map)
{
    if (map)
        atomic_fetch_add_explicit(&map->refs, 1, memory_order_relaxed);
    return map;
}

void rt_shardmap_unref(struct rt_shardmap *map)
{
    if (map == NULL)
        return;
    /* acq_rel: every reader's accesses happen before the free */
    if (atomic_fetch_sub_explicit(&map->refs, 1, memory_order_acq_rel) == 1)
        map_free(map);
}

int64_t rt_shardmap_version(const struct rt_shardmap *map)
{
    return map->version;
}

uint32_t rt_shardmap_nslots(const struct rt_shardmap *map)
{
    return map->nslots;
}

uint32_t rt_shardmap_vnodes(const struct rt_shardmap *map)
{
    return map->vnodes;
}

size_t rt_shardmap_nshards(const struct rt_shardmap *map)
{
    return map->nshards;
}

const char *rt_shardmap_shard_name(const struct rt_shardmap *map, size_t shard)
{
    return shard < map->nshards ? map->shards[shard].name : NULL;
}

const char *rt_shardmap_shard_dsn(const struct rt_shardmap *map, size_t shard)
{
    return shard < map->nshards ? map->shards[shard].dsn : NULL;
}

uint32_t rt_shardmap_shard_weight(const struct rt_shardmap *map, size_t shard)
{
    return shard < map->nshards ? map->shards[shard].weight : 0;
}

uint32_t rt_shardmap_shard_nslots(const struct rt_shardmap *map, size_t shard)
{
    return shard < map->nshards ? map->shards[shard].nslots : 0;
}

size_t rt_shardmap_noverrides(const struct rt_shardmap *map)
{
    return map->noverrides;
}

int rt_shardmap_override(const struct rt_shardmap *map, size_t i, uint32_t *first, uint32_t *last)
{
    if (i >= map->noverrides)
        return -1;
    if (first)
        *first = map->overrides[i].first;
    if (last)
        *last = map->overrides[i].last;
    return (int)map->overrides[i].shard;
}

int rt_shardmap_slot_owner(const struct rt_shardmap *map, uint32_t slot)
{
    return slot < map->nslots ? (int)map->owner[slot] : -1;
}

int rt_shardmap_route(const struct rt_shardmap *map, const void *key, size_t keylen, uint64_t *hash,
                      uint32_t *slot)
{
    uint64_t h = rt_hash(key, keylen);
    uint32_t s = rt_slot(h, map->nslots);

    if (hash)
        *hash = h;
    if (slot)
        *slot = s;
    return (int)map->owner[s];
}

int rt_shardmap_diff(const struct rt_shardmap *old, const struct rt_shardmap *next,
                     struct rt_slot_move **moves, size_t *nmoves, char *err, size_t errlen)
{
    struct rt_slot_move *out = NULL;
    int64_t *old_to_next;
    size_t i, n = 0, cap = 0;
    uint32_t s;

    *moves = NULL;
    *nmoves = 0;
    if (old->nslots != next->nslots) {
        seterr(err, errlen,
               "slot count changed (%u -> %u): every row must be re-slotted, which is not a "
               "list of slot moves",
               old->nslots, next->nslots);
        return -1;
    }
    /* A shard is its name: map old indices to new ones once. */
    old_to_next = calloc(old->nshards, sizeof *old_to_next);
    if (old_to_next == NULL) {
        seterr(err, errlen, "out of memory");
        return -1;
    }
    for (i = 0; i < old->nshards; i++)
        old_to_next[i] = rt_shardmap_shard_index(next, old->shards[i].name);

    for (s = 0; s < old->nslots; s++) {
        uint32_t from = old->owner[s], to = next->owner[s];

        if (old_to_next[from] == (int64_t)to)
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            struct rt_slot_move *tmp = realloc(out, ncap * sizeof *out);

            if (tmp == NULL) {
                free(out);
                free(old_to_next);
                seterr(err, errlen, "out of memory");
                return -1;
            }
            out = tmp;
            cap = ncap;
        }
        out[n].slot = s;
        out[n].from = old->shards[from].name;
        out[n].to = next->shards[to].name;
        n++;
    }
    free(old_to_next);
    *moves = out;
    *nmoves = n;
    return 0;
}
