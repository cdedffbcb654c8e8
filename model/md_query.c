/*
 * md_query.c — parse and validate _query/_aggregate bodies into the AST of
 * md_query.h; sign and check keyset cursors.
 */
#include "model/md_query.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "config/cf_config.h"
#include "model/md_item.h"

static const char *const qop_names[] = {"eq", "ne",  "gt",     "gte",    "lt",  "lte",
                                        "in", "nin", "exists", "prefix", "and", "or"};

const char *md_qop_name(enum md_qop op)
{
    return (unsigned)op < sizeof(qop_names) / sizeof(qop_names[0]) ? qop_names[op] : "?";
}

struct pctx {
    const struct cf_domain *d;
    const struct cf_limits *lim;
    struct md_error *e;
    int nodes;     /* leaf conditions so far (limits.max_query_conditions) */
    int nprefix;   /* prefix conditions so far (limits.max_prefix_conditions) */
    size_t nbytes; /* names and values so far (limits.max_filter_bytes) */
};

/* Query complexity: a limit of 0 (a cf_limits not filled by the config
 * loader) means the documented default. */
#define LIM(c, name, def) ((c)->lim->name > 0 ? (c)->lim->name : (def))

/* Count n bytes of names/values of the filter against max_filter_bytes. */
static int charge(struct pctx *c, size_t n)
{
    size_t max = LIM(c, max_filter_bytes, (size_t)65536);
    c->nbytes += n;
    if (c->nbytes > max) {
        md_error_set(c->e, MD_E_BAD_REQUEST, NULL,
                     "the filter is larger than limits.max_filter_bytes (%zu bytes of names and "
                     "values)",
                     max);
        return -1;
    }
    return 0;
}

/* What a value costs against max_filter_bytes: a string its bytes, any
 * other scalar 8, a list the sum of its members. */
static size_t value_cost(struct json_object *v)
{
    switch (json_object_get_type(v)) {
    case json_type_string:
        return (size_t)json_object_get_string_len(v);
    case json_type_array: {
        size_t n = 0, len = json_object_array_length(v);
        for (size_t i = 0; i < len; i++) {
            n += value_cost(json_object_array_get_idx(v, i));
        }
        return n;
    }
    default:
        return 8;
    }
}

/* One segment of a dotted path (below the top-level field): not empty, no
 * leading '$' (an operator to MongoDB), no leading or trailing space (stores
 * disagree on them), no control character or NUL.  `whole` is the path as
 * given, for the message. */
static int check_segment(struct pctx *c, const struct cf_field *f, const char *whole,
                         const char *seg, size_t len, const char *what)
{
    const char *why = NULL;
    if (len == 0) {
        why = "an empty segment";
    } else if (seg[0] == '$') {
        why = "a segment that starts with '$'";
    } else if (isspace((unsigned char)seg[0]) || isspace((unsigned char)seg[len - 1])) {
        why = "a segment with a leading or trailing space";
    } else {
        for (size_t i = 0; i < len; i++) {
            unsigned char ch = (unsigned char)seg[i];
            if (ch < 0x20 || ch == 0x7f) {
                why = "a control character or NUL";
                break;
            }
        }
    }
    if (why != NULL) {
        md_error_set(c->e, MD_E_BAD_REQUEST, f->name, "%s'%.128s': the path has %s", what, whole,
                     why);
        return -1;
    }
    return 0;
}

/* ---- freeing ------------------------------------------------------------------ */

static void node_free(struct md_qnode *n)
{
    if (n == NULL) {
        return;
    }
    for (size_t i = 0; i < n->npath; i++) {
        free(n->path[i]);
    }
    free(n->path);
    json_object_put(n->value);
    for (size_t i = 0; i < n->nkids; i++) {
        node_free(n->kids[i]);
    }
    free(n->kids);
    free(n);
}

void md_query_free(struct md_query *q)
{
    if (q == NULL) {
        return;
    }
    node_free(q->where);
    json_object_put(q->after);
    free(q->fields);
    free(q->group_by);
    for (size_t i = 0; q->group_names != NULL && i < q->ngroup; i++) {
        free(q->group_names[i]);
    }
    free(q->group_names);
    for (size_t i = 0; i < q->naggs; i++) {
        free(q->aggs[i].alias);
    }
    free(q->aggs);
    free(q);
}

/* ---- values ------------------------------------------------------------------- */

static int is_ordered_type(enum cf_type t)
{
    return t == CF_T_STRING || t == CF_T_INT || t == CF_T_DECIMAL || t == CF_T_TIMESTAMP ||
           t == CF_T_ENUM;
}

static int is_doc_type(enum cf_type t)
{
    return t == CF_T_OBJECT || t == CF_T_JSON;
}

/* Normalise one comparison value for a leaf; *out gets a new reference
 * (NULL for JSON null). */
static int norm_value(struct pctx *c, const struct md_qnode *n, const char *opname,
                      struct json_object *v, struct json_object **out)
{
    const struct cf_field *f = n->field;
    struct md_error *e = c->e;
    if (n->npath > 0) { /* below an object/json field: any scalar */
        enum json_type t = json_object_get_type(v);
        if (t == json_type_object || t == json_type_array) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "operator '%s' on '%s.…' takes a scalar value", opname, f->name);
            return -1;
        }
        *out = json_object_get(v);
        return 0;
    }
    if (v == NULL) {
        *out = NULL;
        return 0;
    }
    if (f->type == CF_T_COUNTERS) {
        md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' cannot be filtered on", f->name);
        return -1;
    }
    struct json_object *tmp = json_object_new_object();
    json_object_object_add(tmp, "v", json_object_get(v));
    struct cf_field relaxed = *f;
    relaxed.required = 0;
    if (md_value_check(&relaxed, c->lim, tmp, "v", v, e) < 0) {
        json_object_put(tmp);
        /* the message names the field; say which operator too */
        size_t ml = strlen(e->message);
        if (ml + strlen(opname) + 16 < sizeof(e->message)) {
            snprintf(e->message + ml, sizeof(e->message) - ml, " (operator '%.16s')", opname);
        }
        e->field = f->name;
        return -1;
    }
    *out = json_object_get(json_object_object_get(tmp, "v"));
    json_object_put(tmp);
    return 0;
}

static int op_by_name(const char *s, enum md_qop *op)
{
    for (int i = 0; i <= MD_QOP_PREFIX; i++) {
        if (strcmp(qop_names[i], s) == 0) {
            *op = (enum md_qop)i;
            return 0;
        }
    }
    return -1;
}

static struct md_qnode *leaf(struct pctx *c, const struct cf_field *f, char **path, size_t npath,
                             const char *opname, struct json_object *v)
{
    struct md_error *e = c->e;
    enum md_qop op;
    if (op_by_name(opname, &op) < 0) {
        md_error_set(e, MD_E_BAD_REQUEST, f->name,
                     "unknown operator '%s' on field '%s' (eq ne gt gte lt lte in nin exists "
                     "prefix)",
                     opname, f->name);
        return NULL;
    }
    int maxc = LIM(c, max_query_conditions, MD_QUERY_MAX_NODES);
    if (++c->nodes > maxc) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL,
                     "the filter has more than limits.max_query_conditions (%d) conditions", maxc);
        return NULL;
    }
    if (charge(c, value_cost(v)) < 0) {
        return NULL;
    }
    struct md_qnode *n = calloc(1, sizeof(*n));
    n->op = op;
    n->field = f;
    n->npath = npath;
    n->path = calloc(npath + 1, sizeof(char *));
    for (size_t i = 0; i < npath; i++) {
        n->path[i] = strdup(path[i]);
    }
    int whole_doc = npath == 0 && (f->type == CF_T_OBJECT || f->type == CF_T_ARRAY ||
                                   f->type == CF_T_JSON || f->type == CF_T_COUNTERS);
    switch (op) {
    case MD_QOP_EQ:
    case MD_QOP_NE:
        if (whole_doc) {
            if (f->type == CF_T_COUNTERS) {
                md_error_set(e, MD_E_BAD_REQUEST, f->name, "field '%s' cannot be filtered on",
                             f->name);
                goto fail;
            }
            n->value = json_object_get(v); /* any JSON; null = IS NULL */
            break;
        }
        if (norm_value(c, n, opname, v, &n->value) < 0) {
            goto fail;
        }
        break;
    case MD_QOP_GT:
    case MD_QOP_GTE:
    case MD_QOP_LT:
    case MD_QOP_LTE:
        if (npath == 0 && !is_ordered_type(f->type)) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "operator '%s' does not apply to field '%s' of type %s", opname, f->name,
                         cf_type_name(f->type));
            goto fail;
        }
        if (v == NULL) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "operator '%s' on field '%s' needs a value, not null", opname, f->name);
            goto fail;
        }
        if (norm_value(c, n, opname, v, &n->value) < 0) {
            goto fail;
        }
        break;
    case MD_QOP_IN:
    case MD_QOP_NIN: {
        /* on an array field: some element is in the list / none is */
        int elems = npath == 0 && f->type == CF_T_ARRAY;
        if (whole_doc && !elems) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "operator '%s' does not apply to field '%s' of type %s", opname, f->name,
                         cf_type_name(f->type));
            goto fail;
        }
        size_t len = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 0;
        if (len == 0 || len > (size_t)c->lim->max_in) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "operator '%s' on field '%s' takes a list of 1 to %d values "
                         "(limits.max_in_items)",
                         opname, f->name, c->lim->max_in);
            goto fail;
        }
        n->value = json_object_new_array_ext((int)len);
        for (size_t i = 0; i < len; i++) {
            struct json_object *x = json_object_array_get_idx(v, i), *nx = NULL;
            if (x == NULL) {
                md_error_set(e, MD_E_BAD_REQUEST, f->name,
                             "operator '%s' on field '%s': null is not a list value (use "
                             "exists)",
                             opname, f->name);
                goto fail;
            }
            if (elems && (json_object_is_type(x, json_type_object) ||
                          json_object_is_type(x, json_type_array))) {
                md_error_set(e, MD_E_BAD_REQUEST, f->name,
                             "operator '%s' on array field '%s' takes a list of scalars", opname,
                             f->name);
                goto fail;
            }
            if (elems) {
                nx = json_object_get(x);
            } else if (norm_value(c, n, opname, x, &nx) < 0) {
                goto fail;
            }
            json_object_array_add(n->value, nx);
        }
        break;
    }
    case MD_QOP_EXISTS:
        if (!json_object_is_type(v, json_type_boolean)) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "operator 'exists' on field '%s' takes true or false", f->name);
            goto fail;
        }
        n->value = json_object_get(v);
        break;
    case MD_QOP_PREFIX:
        if (npath == 0 && f->type != CF_T_STRING && f->type != CF_T_ENUM) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "operator 'prefix' does not apply to field '%s' of type %s", f->name,
                         cf_type_name(f->type));
            goto fail;
        }
        if (!json_object_is_type(v, json_type_string) || json_object_get_string_len(v) == 0 ||
            memchr(json_object_get_string(v), '\0', (size_t)json_object_get_string_len(v)) !=
                NULL) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "operator 'prefix' on field '%s' takes a non-empty string", f->name);
            goto fail;
        }
        /* a prefix is a scan over an index range (or a regex on MongoDB):
         * bound how many and how long */
        size_t maxp = LIM(c, max_prefix_bytes, (size_t)256);
        if ((size_t)json_object_get_string_len(v) > maxp) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "operator 'prefix' on field '%s': the prefix is longer than "
                         "limits.max_prefix_bytes (%zu)",
                         f->name, maxp);
            goto fail;
        }
        int maxn = LIM(c, max_prefix_conditions, 16);
        if (++c->nprefix > maxn) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "the filter has more than limits.max_prefix_conditions (%d) prefix "
                         "conditions",
                         maxn);
            goto fail;
        }
        n->value = json_object_get(v);
        break;
    default:
        goto fail;
    }
    return n;
fail:
    node_free(n);
    return NULL;
}

static struct md_qnode *parse_where(struct pctx *c, struct json_object *w, int depth);

static struct md_qnode *group(enum md_qop op)
{
    struct md_qnode *n = calloc(1, sizeof(*n));
    n->op = op;
    return n;
}

static void add_kid(struct md_qnode *g, struct md_qnode *k)
{
    g->kids = realloc(g->kids, (g->nkids + 1) * sizeof(*g->kids));
    g->kids[g->nkids++] = k;
}

/* One member of a where object: "and"/"or" or a field path. */
/* An AND group of one condition is that condition. */
static struct md_qnode *unwrap(struct md_qnode *g)
{
    if (g->nkids != 1) {
        return g;
    }
    struct md_qnode *k = g->kids[0];
    g->nkids = 0;
    node_free(g);
    return k;
}

static struct md_qnode *parse_member(struct pctx *c, const char *name, struct json_object *v,
                                     int depth)
{
    struct md_error *e = c->e;
    if (strcmp(name, "and") == 0 || strcmp(name, "or") == 0) {
        size_t len = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 0;
        if (len == 0) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL,
                         "operator '%s' takes a non-empty list of filter objects", name);
            return NULL;
        }
        struct md_qnode *g = group(name[0] == 'a' ? MD_QOP_AND : MD_QOP_OR);
        for (size_t i = 0; i < len; i++) {
            struct md_qnode *k = parse_where(c, json_object_array_get_idx(v, i), depth + 1);
            if (k == NULL) {
                node_free(g);
                return NULL;
            }
            add_kid(g, k);
        }
        return g;
    }
    /* field[.path…] */
    if (charge(c, strlen(name)) < 0) {
        return NULL;
    }
    char buf[512];
    if (strlen(name) >= sizeof(buf)) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "field path too long");
        return NULL;
    }
    strcpy(buf, name);
    char *segs[MD_QUERY_MAX_PATH + 1];
    size_t nseg = 0;
    char *p = buf;
    for (;;) {
        char *dot = strchr(p, '.');
        if (nseg == MD_QUERY_MAX_PATH + 1) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL, "field path '%.64s' is too deep", name);
            return NULL;
        }
        segs[nseg++] = p;
        if (dot == NULL) {
            break;
        }
        *dot = '\0';
        p = dot + 1;
    }
    const struct cf_field *f = cf_field_find(c->d, segs[0]);
    if (f == NULL) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "unknown field '%.128s' for domain '%s'", segs[0],
                     c->d->name);
        return NULL;
    }
    if (nseg > 1) {
        /* arrays: the path reaches into their elements (an element matches) */
        if (!is_doc_type(f->type) && f->type != CF_T_ARRAY) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name,
                         "'%.128s': dotted paths apply only to object, json or array fields, and "
                         "'%s' is a %s",
                         name, f->name, cf_type_name(f->type));
            return NULL;
        }
        for (size_t i = 1; i < nseg; i++) {
            if (check_segment(c, f, name, segs[i], strlen(segs[i]), "") < 0) {
                return NULL;
            }
        }
    }
    if (json_object_is_type(v, json_type_object)) {
        if (json_object_object_length(v) == 0) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "no operator given for field '%s'", f->name);
            return NULL;
        }
        struct md_qnode *g = group(MD_QOP_AND);
        json_object_object_foreach(v, opname, ov)
        {
            struct md_qnode *k = leaf(c, f, segs + 1, nseg - 1, opname, ov);
            if (k == NULL) {
                node_free(g);
                return NULL;
            }
            add_kid(g, k);
        }
        return unwrap(g);
    }
    if (json_object_is_type(v, json_type_array) &&
        !(nseg == 1 && (f->type == CF_T_ARRAY || f->type == CF_T_JSON))) {
        md_error_set(e, MD_E_BAD_REQUEST, f->name,
                     "field '%s': a list is not a value here; use {\"in\":[…]}", f->name);
        return NULL;
    }
    return leaf(c, f, segs + 1, nseg - 1, "eq", v);
}

static struct md_qnode *parse_where(struct pctx *c, struct json_object *w, int depth)
{
    if (!json_object_is_type(w, json_type_object)) {
        md_error_set(c->e, MD_E_BAD_REQUEST, NULL, "'where' must be an object of conditions");
        return NULL;
    }
    int maxd = LIM(c, max_query_depth, 8);
    if (depth > maxd) {
        md_error_set(c->e, MD_E_BAD_REQUEST, NULL,
                     "'where' nests and/or deeper than limits.max_query_depth (%d)", maxd);
        return NULL;
    }
    struct md_qnode *g = group(MD_QOP_AND);
    json_object_object_foreach(w, name, v)
    {
        struct md_qnode *k = parse_member(c, name, v, depth);
        if (k == NULL) {
            node_free(g);
            return NULL;
        }
        add_kid(g, k);
    }
    return unwrap(g);
}

/* ---- field lists --------------------------------------------------------------- */

static const struct cf_field *plain_field(struct pctx *c, struct json_object *v, const char *what,
                                          int sortable)
{
    if (!json_object_is_type(v, json_type_string)) {
        md_error_set(c->e, MD_E_BAD_REQUEST, NULL, "'%s' must list field names", what);
        return NULL;
    }
    const char *name = json_object_get_string(v);
    const struct cf_field *f = cf_field_find(c->d, name);
    if (f == NULL) {
        md_error_set(c->e, MD_E_BAD_REQUEST, NULL, "%s: unknown field '%.128s' for domain '%s'",
                     what, name, c->d->name);
        return NULL;
    }
    if (sortable && !(is_ordered_type(f->type) || f->type == CF_T_BOOL)) {
        md_error_set(c->e, MD_E_BAD_REQUEST, f->name,
                     "%s: field '%s' of type %s cannot be used here", what, f->name,
                     cf_type_name(f->type));
        return NULL;
    }
    return f;
}

/* A group_by entry: a sortable field, or a dotted path below an object or
 * json field ("category.id"; segments non-empty, no `$`).  *name gets a
 * copy of the text as given. */
static const struct cf_field *group_key(struct pctx *c, struct json_object *v, char **name)
{
    const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
    const char *dot = s != NULL ? strchr(s, '.') : NULL;
    if (dot == NULL) {
        const struct cf_field *f = plain_field(c, v, "group_by", 1);
        *name = f != NULL ? strdup(f->name) : NULL;
        return f;
    }
    char top[128];
    if ((size_t)(dot - s) >= sizeof(top) || strlen(s) > 512) {
        md_error_set(c->e, MD_E_BAD_REQUEST, NULL, "group_by: path '%.64s…' is too long", s);
        return NULL;
    }
    memcpy(top, s, (size_t)(dot - s));
    top[dot - s] = '\0';
    const struct cf_field *f = cf_field_find(c->d, top);
    if (f == NULL) {
        md_error_set(c->e, MD_E_BAD_REQUEST, NULL,
                     "group_by: unknown field '%.128s' for domain '%s'", top, c->d->name);
        return NULL;
    }
    if (!is_doc_type(f->type)) {
        md_error_set(c->e, MD_E_BAD_REQUEST, f->name,
                     "group_by: '%.128s': dotted paths apply only to object or json fields, and "
                     "'%s' is a %s",
                     s, f->name, cf_type_name(f->type));
        return NULL;
    }
    if (strlen(s) != (size_t)json_object_get_string_len(v)) {
        md_error_set(c->e, MD_E_BAD_REQUEST, f->name, "group_by: '%.128s': the path has a NUL", s);
        return NULL;
    }
    size_t nseg = 1;
    for (const char *p = dot;; nseg++) { /* p: the dot before a segment */
        const char *seg = p + 1, *next = strchr(seg, '.');
        size_t len = next != NULL ? (size_t)(next - seg) : strlen(seg);
        if (check_segment(c, f, s, seg, len, "group_by: ") < 0) {
            return NULL;
        }
        if (next == NULL) {
            break;
        }
        p = next;
    }
    if (nseg > MD_QUERY_MAX_PATH) {
        md_error_set(c->e, MD_E_BAD_REQUEST, f->name, "group_by: path '%.64s' is too deep", s);
        return NULL;
    }
    *name = strdup(s);
    return f;
}

static int parse_order(struct pctx *c, struct md_query *q, struct json_object *ob)
{
    if (ob != NULL) {
        if (!json_object_is_type(ob, json_type_array)) {
            md_error_set(c->e, MD_E_BAD_REQUEST, NULL,
                         "'order_by' must be a list like [\"-created_at\", \"id\"]");
            return -1;
        }
        size_t n = json_object_array_length(ob);
        if (n > MD_QUERY_MAX_ORDER) {
            md_error_set(c->e, MD_E_BAD_REQUEST, NULL, "'order_by' takes at most %d fields",
                         MD_QUERY_MAX_ORDER);
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            struct json_object *it = json_object_array_get_idx(ob, i);
            int desc = 0;
            struct json_object *name = NULL;
            if (json_object_is_type(it, json_type_string)) {
                const char *s = json_object_get_string(it);
                desc = s[0] == '-';
                name = json_object_new_string(s + (s[0] == '-' || s[0] == '+'));
            } else if (json_object_is_type(it, json_type_object) &&
                       json_object_object_length(it) == 1) {
                json_object_object_foreach(it, k, dir)
                {
                    const char *ds = json_object_is_type(dir, json_type_string)
                                         ? json_object_get_string(dir)
                                         : "";
                    if (strcmp(ds, "asc") != 0 && strcmp(ds, "desc") != 0) {
                        md_error_set(c->e, MD_E_BAD_REQUEST, NULL,
                                     "order_by: direction of '%.128s' must be \"asc\" or \"desc\"",
                                     k);
                        return -1;
                    }
                    desc = ds[0] == 'd';
                    name = json_object_new_string(k);
                }
            } else {
                md_error_set(
                    c->e, MD_E_BAD_REQUEST, NULL,
                    "order_by: each entry is \"field\", \"-field\" or {\"field\":\"desc\"}");
                return -1;
            }
            const struct cf_field *f = plain_field(c, name, "order_by", 1);
            json_object_put(name);
            if (f == NULL) {
                return -1;
            }
            for (size_t j = 0; j < q->norder; j++) {
                if (q->order[j].field == f) {
                    md_error_set(c->e, MD_E_BAD_REQUEST, f->name,
                                 "order_by: field '%s' appears twice", f->name);
                    return -1;
                }
            }
            q->order[q->norder].field = f;
            q->order[q->norder].desc = desc;
            q->norder++;
            if (strcmp(f->name, c->d->key) == 0) {
                return 0; /* the key is unique: later columns never matter */
            }
        }
    }
    q->order[q->norder].field = cf_field_find(c->d, c->d->key);
    q->order[q->norder].desc = 0;
    q->norder++;
    return 0;
}

/* ---- cursors ------------------------------------------------------------------- */

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void b64_encode(const unsigned char *in, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < len) {
            v |= (unsigned)in[i + 1] << 8;
        }
        if (i + 2 < len) {
            v |= in[i + 2];
        }
        out[o++] = b64url[(v >> 18) & 63];
        out[o++] = b64url[(v >> 12) & 63];
        if (i + 1 < len) {
            out[o++] = b64url[(v >> 6) & 63];
        }
        if (i + 2 < len) {
            out[o++] = b64url[v & 63];
        }
    }
    out[o] = '\0';
}

/* -1 on a character outside the alphabet or a bad length. */
static long b64_decode(const char *in, size_t len, unsigned char *out)
{
    size_t o = 0;
    unsigned v = 0;
    int bits = 0;
    if (len % 4 == 1) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        const char *p = memchr(b64url, in[i], 64);
        if (p == NULL || in[i] == '\0') {
            return -1;
        }
        v = (v << 6) | (unsigned)(p - b64url);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)((v >> bits) & 0xff);
        }
    }
    return (long)o;
}

/* "f1,-f2,…": the order a cursor belongs to, whole (a cut signature would
 * let a cursor of one order pass for another that shares its prefix).  In
 * buf when it fits, else malloc'd: the caller frees a result other than
 * buf.  NULL when out of memory. */
static char *order_signature(const struct md_query *q, char *buf, size_t cap)
{
    size_t need = 1;
    for (size_t i = 0; i < q->norder; i++) {
        need += 2 + strlen(q->order[i].field->name);
    }
    char *out = need <= cap ? buf : malloc(need);
    if (out == NULL) {
        return NULL;
    }
    char *p = out;
    for (size_t i = 0; i < q->norder; i++) {
        if (i > 0) {
            *p++ = ',';
        }
        if (q->order[i].desc) {
            *p++ = '-';
        }
        size_t n = strlen(q->order[i].field->name);
        memcpy(p, q->order[i].field->name, n);
        p += n;
    }
    *p = '\0';
    return out;
}

static void mac(const struct md_query *q, const char *data, size_t len, unsigned char md[32])
{
    unsigned int mdlen = 32;
    HMAC(EVP_sha256(), q->mac_key, sizeof(q->mac_key), (const unsigned char *)data, len, md,
         &mdlen);
}

char *md_query_cursor_make(const struct md_query *q, struct json_object *vals)
{
    char buf[256];
    char *sig = order_signature(q, buf, sizeof(buf));
    if (sig == NULL) {
        return NULL;
    }
    struct json_object *doc = json_object_new_object();
    json_object_object_add(doc, "o", json_object_new_string(sig));
    if (sig != buf) {
        free(sig);
    }
    json_object_object_add(doc, "v", json_object_get(vals));
    const char *txt = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);
    size_t len = strlen(txt);
    unsigned char md[32];
    mac(q, txt, len, md);
    char *out = malloc((len + 2) / 3 * 4 + 1 + 44 + 1);
    if (out == NULL) {
        json_object_put(doc);
        return NULL;
    }
    b64_encode((const unsigned char *)txt, len, out);
    size_t o = strlen(out);
    out[o++] = '.';
    b64_encode(md, sizeof(md), out + o);
    json_object_put(doc);
    return out;
}

static int bad_cursor(struct md_error *e, const char *why)
{
    md_error_set(e, MD_E_BAD_REQUEST, NULL, "invalid 'cursor': %s", why);
    return -1;
}

static int parse_cursor(struct pctx *c, struct md_query *q, struct json_object *cv)
{
    if (cv == NULL) {
        return 0;
    }
    if (!json_object_is_type(cv, json_type_string)) {
        return bad_cursor(c->e, "it must be the string returned by a previous page, or null");
    }
    const char *s = json_object_get_string(cv);
    size_t len = (size_t)json_object_get_string_len(cv);
    const char *dot = memchr(s, '.', len);
    if (len > 16384 || dot == NULL) {
        return bad_cursor(c->e, "malformed");
    }
    size_t plen = (size_t)(dot - s);
    if (len - plen - 1 > 44) { /* the MAC: 32 bytes are 43 base64 characters (44 padded) */
        return bad_cursor(c->e, "malformed");
    }
    unsigned char *payload = malloc(plen + 4);
    unsigned char md[64], want[32];
    long n = b64_decode(s, plen, payload);
    long m = b64_decode(dot + 1, len - plen - 1, md);
    if (n <= 0 || m != 32) {
        free(payload);
        return bad_cursor(c->e, "malformed");
    }
    mac(q, (const char *)payload, (size_t)n, want);
    if (CRYPTO_memcmp(want, md, 32) != 0) {
        free(payload);
        return bad_cursor(c->e, "signature mismatch (tampered, or from another configuration)");
    }
    struct json_tokener *tok = json_tokener_new();
    struct json_object *doc = json_tokener_parse_ex(tok, (const char *)payload, (int)n);
    json_tokener_free(tok);
    free(payload);
    struct json_object *o = NULL, *v = NULL;
    if (!json_object_object_get_ex(doc, "o", &o) || !json_object_object_get_ex(doc, "v", &v) ||
        !json_object_is_type(v, json_type_array) || json_object_array_length(v) != q->norder) {
        json_object_put(doc);
        return bad_cursor(c->e, "malformed");
    }
    char buf[256];
    char *sig = order_signature(q, buf, sizeof(buf));
    if (sig == NULL) {
        json_object_put(doc);
        md_error_set(c->e, MD_E_INTERNAL, NULL, "out of memory reading 'cursor'");
        return -1;
    }
    int same = strcmp(json_object_get_string(o), sig) == 0;
    if (sig != buf) {
        free(sig);
    }
    if (!same) {
        json_object_put(doc);
        return bad_cursor(c->e, "it belongs to a query with another order_by");
    }
    /* values are re-checked against the schema like any filter value */
    struct json_object *after = json_object_new_array();
    for (size_t i = 0; i < q->norder; i++) {
        struct json_object *x = json_object_array_get_idx(v, i), *nx = NULL;
        struct md_qnode tmp = {.op = MD_QOP_EQ, .field = q->order[i].field};
        if (x != NULL && norm_value(c, &tmp, "cursor", x, &nx) < 0) {
            json_object_put(after);
            json_object_put(doc);
            return bad_cursor(c->e, "a sort value does not match its field");
        }
        json_object_array_add(after, nx);
    }
    json_object_put(doc);
    q->after = after;
    return 0;
}

/* ---- aggregates ------------------------------------------------------------------ */

static int parse_aggs(struct pctx *c, struct md_query *q, struct json_object *ag)
{
    struct md_error *e = c->e;
    if (!json_object_is_type(ag, json_type_object) || json_object_object_length(ag) == 0 ||
        json_object_object_length(ag) > MD_QUERY_MAX_AGGS) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL,
                     "'aggregates' must be an object of 1 to %d {\"alias\":{\"count\":\"*\"}, …}",
                     MD_QUERY_MAX_AGGS);
        return -1;
    }
    q->aggs = calloc((size_t)json_object_object_length(ag), sizeof(*q->aggs));
    json_object_object_foreach(ag, alias, spec)
    {
        size_t al = strlen(alias);
        int ok = al > 0 && al <= 64 && (isalpha((unsigned char)alias[0]) || alias[0] == '_');
        for (size_t i = 0; ok && i < al; i++) {
            ok = isalnum((unsigned char)alias[i]) || alias[i] == '_';
        }
        if (!ok) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL,
                         "aggregate alias '%.64s' must be a name of letters, digits and _", alias);
            return -1;
        }
        for (size_t i = 0; i < q->ngroup; i++) {
            if (strcmp(q->group_names[i], alias) == 0) {
                md_error_set(e, MD_E_BAD_REQUEST, NULL,
                             "aggregate alias '%s' is also a group_by field", alias);
                return -1;
            }
        }
        if (!json_object_is_type(spec, json_type_object) || json_object_object_length(spec) != 1) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL,
                         "aggregate '%s' must be one {\"count\"|\"sum\"|\"min\"|\"max\"|\"avg\": "
                         "field}",
                         alias);
            return -1;
        }
        struct md_qaggregate *a = &q->aggs[q->naggs];
        json_object_object_foreach(spec, fn, arg)
        {
            static const char *const fns[] = {"count", "sum", "min", "max", "avg"};
            size_t k;
            for (k = 0; k < 5 && strcmp(fns[k], fn) != 0; k++) {
            }
            if (k == 5) {
                md_error_set(e, MD_E_BAD_REQUEST, NULL,
                             "aggregate '%s': unknown function '%.32s' (count sum min max avg)",
                             alias, fn);
                return -1;
            }
            a->fn = (enum md_qagg)k;
            if (a->fn == MD_QAGG_COUNT && json_object_is_type(arg, json_type_string) &&
                strcmp(json_object_get_string(arg), "*") == 0) {
                a->field = NULL;
            } else {
                const struct cf_field *f = plain_field(c, arg, "aggregates", 0);
                if (f == NULL) {
                    return -1;
                }
                enum cf_type t = f->type;
                int okt = a->fn == MD_QAGG_COUNT ||
                          ((a->fn == MD_QAGG_SUM || a->fn == MD_QAGG_AVG) &&
                           (t == CF_T_INT || t == CF_T_DECIMAL)) ||
                          ((a->fn == MD_QAGG_MIN || a->fn == MD_QAGG_MAX) && is_ordered_type(t));
                if (!okt) {
                    md_error_set(e, MD_E_BAD_REQUEST, f->name,
                                 "aggregate '%s': %s does not apply to field '%s' of type %s",
                                 alias, fn, f->name, cf_type_name(t));
                    return -1;
                }
                a->field = f;
            }
        }
        a->alias = strdup(alias);
        q->naggs++;
    }
    return 0;
}

/* ---- top level ------------------------------------------------------------------- */

/* The cursor MAC key: SHA-256 of a fixed label and the whole secret (no
 * length cap: a long secret is hashed whole, never cut). */
static int cursor_key(const char *secret, unsigned char key[32])
{
    static const char label[] = "polygate-cursor-v1:";
    if (secret == NULL || secret[0] == '\0') {
        return -1;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n = 0;
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, label, sizeof(label) - 1) == 1 &&
             EVP_DigestUpdate(ctx, secret, strlen(secret)) == 1 &&
             EVP_DigestFinal_ex(ctx, key, &n) == 1 && n == 32;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : -1;
}

int md_query_parse(const struct cf_domain *d, const struct cf_limits *lim, const char *secret,
                   int aggregate, struct json_object *body, struct md_query **out,
                   struct md_error *e)
{
    struct pctx c = {.d = d, .lim = lim, .e = e};
    *out = NULL;
    if (body == NULL) {
        body = json_object_new_object();
    } else {
        json_object_get(body);
    }
    if (!json_object_is_type(body, json_type_object)) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "the %s body must be a JSON object",
                     aggregate ? "_aggregate" : "_query");
        json_object_put(body);
        return -1;
    }
    static const char *const qkeys[] = {"where",  "order_by", "limit", "cursor",
                                        "fields", "partial",  NULL};
    static const char *const akeys[] = {"where", "group_by", "aggregates",
                                        "limit", "partial",  NULL};
    const char *const *allowed = aggregate ? akeys : qkeys;
    json_object_object_foreach(body, k, kv)
    {
        (void)kv;
        const char *const *a = allowed;
        while (*a != NULL && strcmp(*a, k) != 0) {
            a++;
        }
        if (*a == NULL) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL, "unknown member '%.64s' in the %s body (%s)", k,
                         aggregate ? "_aggregate" : "_query",
                         aggregate ? "where, group_by, aggregates, limit, partial"
                                   : "where, order_by, limit, cursor, fields, partial");
            json_object_put(body);
            return -1;
        }
    }
    struct md_query *q = calloc(1, sizeof(*q));
    q->aggregate = aggregate;
    if (cursor_key(secret, q->mac_key) < 0) {
        md_error_set(e, MD_E_INTERNAL, NULL, "cannot derive the cursor key");
        goto fail;
    }
    struct json_object *v;
    if (json_object_object_get_ex(body, "partial", &v)) {
        if (!json_object_is_type(v, json_type_boolean)) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL, "'partial' must be true or false");
            goto fail;
        }
        q->partial = json_object_get_boolean(v);
    }
    if (json_object_object_get_ex(body, "where", &v) && v != NULL) {
        q->where = parse_where(&c, v, 0);
        if (q->where == NULL) {
            goto fail;
        }
    }
    q->limit = aggregate ? lim->max_limit : MD_QUERY_DEFAULT_LIMIT;
    if (q->limit > lim->max_limit) {
        q->limit = lim->max_limit;
    }
    if (json_object_object_get_ex(body, "limit", &v) && v != NULL) {
        int64_t n = json_object_get_int64(v);
        if (!json_object_is_type(v, json_type_int) || n < 1 || n > lim->max_limit) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL, "'limit' must be an integer from 1 to %d",
                         lim->max_limit);
            goto fail;
        }
        q->limit = (int)n;
    }
    if (!aggregate) {
        if (parse_order(&c, q, json_object_object_get(body, "order_by")) < 0) {
            goto fail;
        }
        if (json_object_object_get_ex(body, "fields", &v) && v != NULL) {
            size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 0;
            if (n == 0) {
                md_error_set(e, MD_E_BAD_REQUEST, NULL,
                             "'fields' must be a non-empty list of field names");
                goto fail;
            }
            q->fields = calloc(n, sizeof(*q->fields));
            for (size_t i = 0; i < n; i++) {
                const struct cf_field *f =
                    plain_field(&c, json_object_array_get_idx(v, i), "fields", 0);
                if (f == NULL) {
                    goto fail;
                }
                q->fields[q->nfields++] = f;
            }
        }
        if (parse_cursor(&c, q, json_object_object_get(body, "cursor")) < 0) {
            goto fail;
        }
    } else {
        if (json_object_object_get_ex(body, "group_by", &v) && v != NULL) {
            size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 0;
            if (!json_object_is_type(v, json_type_array) || n > MD_QUERY_MAX_ORDER) {
                md_error_set(e, MD_E_BAD_REQUEST, NULL,
                             "'group_by' must be a list of at most %d field names",
                             MD_QUERY_MAX_ORDER);
                goto fail;
            }
            q->group_by = calloc(n + 1, sizeof(*q->group_by));
            q->group_names = calloc(n + 1, sizeof(*q->group_names));
            for (size_t i = 0; i < n; i++) {
                char *name = NULL;
                const struct cf_field *f = group_key(&c, json_object_array_get_idx(v, i), &name);
                if (f == NULL) {
                    goto fail;
                }
                q->group_names[q->ngroup] = name;
                q->group_by[q->ngroup++] = f;
            }
        }
        if (parse_aggs(&c, q, json_object_object_get(body, "aggregates")) < 0) {
            goto fail;
        }
    }
    json_object_put(body);
    *out = q;
    return 0;
fail:
    json_object_put(body);
    md_query_free(q);
    return -1;
}
