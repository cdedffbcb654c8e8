/*
 * mg_query.c — `_query` / `_aggregate` for the MongoDB adapter (see
 * mg_query.h).
 *
 * Semantics, chosen to answer like the SQL adapters:
 *   eq/ne null     {$eq: null} / {$ne: null}: null and absent are both NULL
 *   ne, nin        match NULL/absent too (SQL: IS DISTINCT FROM, NOT IN … OR NULL)
 *   exists         true: {$ne: null}, false: {$eq: null} (IS NOT NULL / IS NULL)
 *   prefix         {$regex: "^…"} with every ASCII punctuation character
 *                  escaped (literal in PCRE and in the RE2 syntax of FerretDB)
 *   in/nin on an array field: some element listed / no element listed
 *   decimals       filter and cursor values scaled like the stored integers
 *   eq on a whole object compares it as MongoDB does (member order matters)
 *
 * Keyset pages: MongoDB sorts NULL/absent first; the contract says NULLS
 * LAST ascending, FIRST descending.  So a page runs as a sequence of
 * partitions, one per combination of NULL / not NULL of the nullable sort
 * columns, in contract order: inside a partition those columns are either
 * all NULL or all set, so MongoDB's order is the contract's.  The cursor's
 * own partition gets the bound as an $or chain over its non-NULL columns
 * ((a > va) OR (a = va AND b > vb) …); earlier partitions are skipped, later
 * ones read from their start.  Without nullable sort columns it is a single
 * find; each partition costs one find otherwise (2^k for k nullable columns).
 *
 * Aggregates: FerretDB 1.24 implements the $group accumulators $sum and
 * $count only ($avg, $min, $max, $first, $last and $cond answer
 * NotImplemented).  So:
 *   groups and count(*)  a pipeline  $match, $group {_id, v: {$sum: 1}}
 *   count(f), sum, avg   per field, with {f: {$ne: null}} added to $match:
 *                        a pipeline for the non-NULL count, one for the
 *                        $sum (scaled integers: exact; an overflowing sum
 *                        comes back as a double → 400).  One accumulator per
 *                        $group: FerretDB 1.24 answers 0 for every
 *                        accumulator after the first of a $group stage.
 *   avg                  computed here: exact division of the pushed-down
 *                        sum by the count, rounded half away from zero to
 *                        the field's scale (int fields: 4 places, as MySQL)
 *   min, max             one find over the matching documents projected on
 *                        the group and min/max fields, reduced here
 * Groups are sorted here (NULLS LAST like the SQL adapters' ORDER BY, with
 * NULL and absent one group) and cut at `limit`; at most MG_MAX_GROUPS.
 */
#include "adapters/mongo/mg_query.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/cf_config.h"
#include "lib/lb_util.h"
#include "model/md_query.h"

#define MG_MAX_GROUPS 100000
#define MG_MAX_STEPS 512
#define MG_INT_AVG_PLACES 4

struct mg_afield { /* a field some aggregate reads */
    const struct cf_field *f;
    int minmax;       /* min or max asked */
    bson_t *count_pl; /* its non-NULL values per group, or NULL */
    bson_t *sum_pl;   /* their sum per group, or NULL */
};

struct mg_plan {
    const struct cf_domain *d;
    const struct md_query *q;
    /* _query: one find per partition, in order */
    bson_t *opts; /* sort + projection */
    bson_t **steps;
    size_t nsteps;
    /* _aggregate */
    bson_t *groups; /* pipeline: the groups and count(*) */
    struct mg_afield *af;
    size_t naf;
    int *agg_af;       /* per aggregate: index into af, or -1 */
    bson_t *scan;      /* min/max: filter */
    bson_t *scan_opts; /* min/max: projection */
};

/* ---- filters (loop thread) ------------------------------------------------------ */

static int path_of(const struct md_qnode *n, char *out, size_t outlen, struct mg_xerr *x)
{
    size_t o = (size_t)snprintf(out, outlen, "%s", n->field->name);
    for (size_t i = 0; i < n->npath; i++) {
        const char *s = n->path[i];
        if (s[0] == '\0' || s[0] == '$') {
            x->field = n->field->name;
            snprintf(x->msg, sizeof(x->msg),
                     "field '%s': a path segment must not be empty or start with '$'",
                     n->field->name);
            return -1;
        }
        if (o < outlen) {
            o += (size_t)snprintf(out + o, outlen - o, ".%s", s);
        }
    }
    if (o >= outlen) {
        x->field = n->field->name;
        snprintf(x->msg, sizeof(x->msg), "field '%s': path too long", n->field->name);
        return -1;
    }
    return 0;
}

/* One comparison value: typed by the schema on a whole field (decimals
 * scaled), any scalar below a path. */
static int leaf_value(bson_t *b, const char *k, const struct md_qnode *n, struct json_object *v,
                      struct mg_xerr *x)
{
    x->field = n->field->name;
    if (v == NULL) {
        bson_append_null(b, k, -1);
        return 0;
    }
    if (n->npath > 0) {
        return mg_append_any(b, k, v, n->field->name, x);
    }
    return mg_append_field(b, k, n->field, v, x);
}

static void append_prefix_regex(bson_t *b, const char *s, size_t len)
{
    char *re = malloc(len * 2 + 2), *o = re;
    *o++ = '^';
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x80 && strchr("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", ch) != NULL && ch != 0) {
            *o++ = '\\';
        }
        *o++ = (char)ch;
    }
    bson_append_utf8(b, "$regex", -1, re, (int)(o - re));
    bson_append_utf8(b, "$options", -1, "", 0);
    free(re);
}

static int leaf_ops(bson_t *cond, const struct md_qnode *n, struct mg_xerr *x)
{
    static const char *const cmp[] = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"};
    switch (n->op) {
    case MD_QOP_EQ:
    case MD_QOP_NE:
    case MD_QOP_GT:
    case MD_QOP_GTE:
    case MD_QOP_LT:
    case MD_QOP_LTE:
        return leaf_value(cond, cmp[n->op], n, n->value, x);
    case MD_QOP_IN:
    case MD_QOP_NIN: {
        bson_t arr;
        bson_append_array_begin(cond, n->op == MD_QOP_IN ? "$in" : "$nin", -1, &arr);
        size_t len = json_object_array_length(n->value);
        int rc = 0;
        for (size_t i = 0; i < len && rc == 0; i++) {
            char idx[24];
            snprintf(idx, sizeof(idx), "%zu", i);
            rc = leaf_value(&arr, idx, n, json_object_array_get_idx(n->value, i), x);
        }
        bson_append_array_end(cond, &arr);
        return rc;
    }
    case MD_QOP_EXISTS:
        bson_append_null(cond, json_object_get_boolean(n->value) ? "$ne" : "$eq", -1);
        return 0;
    case MD_QOP_PREFIX:
        append_prefix_regex(cond, json_object_get_string(n->value),
                            (size_t)json_object_get_string_len(n->value));
        return 0;
    default:
        snprintf(x->msg, sizeof(x->msg), "unsupported operator '%s'", md_qop_name(n->op));
        return -1;
    }
}

/* The node's condition, appended to the filter document doc. */
static int node_bson(bson_t *doc, const struct md_qnode *n, struct mg_xerr *x)
{
    if (n->op == MD_QOP_AND && n->nkids == 0) {
        return 0; /* `{}`: no condition (MongoDB refuses an empty $and) */
    }
    if (n->op == MD_QOP_AND || n->op == MD_QOP_OR) {
        bson_t arr;
        int rc = 0;
        bson_append_array_begin(doc, n->op == MD_QOP_AND ? "$and" : "$or", -1, &arr);
        for (size_t i = 0; i < n->nkids && rc == 0; i++) {
            char idx[24];
            bson_t kid;
            snprintf(idx, sizeof(idx), "%zu", i);
            bson_append_document_begin(&arr, idx, -1, &kid);
            rc = node_bson(&kid, n->kids[i], x);
            bson_append_document_end(&arr, &kid);
        }
        bson_append_array_end(doc, &arr);
        return rc;
    }
    char path[640];
    if (path_of(n, path, sizeof(path), x) < 0) {
        return -1;
    }
    bson_t cond;
    bson_append_document_begin(doc, path, -1, &cond);
    int rc = leaf_ops(&cond, n, x);
    bson_append_document_end(doc, &cond);
    return rc;
}

/* A list of conditions AND-ed into one filter: {$and: [c0, c1, …]} or {}. */
struct conj {
    bson_t doc;
    bson_t arr;
    int n;
};

static void conj_begin(struct conj *c)
{
    bson_init(&c->doc);
    bson_append_array_begin(&c->doc, "$and", -1, &c->arr);
    c->n = 0;
}

static void conj_next(struct conj *c, bson_t *child)
{
    char idx[24];
    snprintf(idx, sizeof(idx), "%d", c->n++);
    bson_append_document_begin(&c->arr, idx, -1, child);
}

static bson_t *conj_end(struct conj *c)
{
    bson_append_array_end(&c->doc, &c->arr);
    bson_t *out = c->n > 0 ? bson_copy(&c->doc) : bson_new();
    bson_destroy(&c->doc);
    return out;
}

static int add_where(struct conj *c, const struct md_query *q, struct mg_xerr *x)
{
    if (q->where == NULL) {
        return 0;
    }
    bson_t child;
    conj_next(c, &child);
    int rc = node_bson(&child, q->where, x);
    bson_append_document_end(&c->arr, &child);
    return rc;
}

static void add_null_test(struct conj *c, const char *name, int isnull)
{
    bson_t child, cond;
    conj_next(c, &child);
    bson_append_document_begin(&child, name, -1, &cond);
    bson_append_null(&cond, isnull ? "$eq" : "$ne", -1);
    bson_append_document_end(&child, &cond);
    bson_append_document_end(&c->arr, &child);
}

/* ---- _query (loop thread) ---------------------------------------------------------- */

static int is_nullable(const struct cf_domain *d, const struct md_query *q, size_t i)
{
    const struct cf_field *f = q->order[i].field;
    return (!f->required && strcmp(f->name, d->key) != 0) ||
           (q->after != NULL && json_object_array_get_idx(q->after, i) == NULL);
}

/* After the cursor's row inside its partition: an $or chain over the
 * columns whose cursor value is not NULL. */
static int add_bound(struct conj *c, const struct md_query *q, struct mg_xerr *x)
{
    bson_t child, ors;
    int rc = 0, terms = 0;
    conj_next(c, &child);
    bson_append_array_begin(&child, "$or", -1, &ors);
    for (size_t i = 0; i < q->norder && rc == 0; i++) {
        struct json_object *vi = json_object_array_get_idx(q->after, i);
        if (vi == NULL) {
            continue;
        }
        char idx[24];
        bson_t term, ands;
        int nand = 0;
        snprintf(idx, sizeof(idx), "%d", terms++);
        bson_append_document_begin(&ors, idx, -1, &term);
        bson_append_array_begin(&term, "$and", -1, &ands);
        for (size_t j = 0; j <= i && rc == 0; j++) {
            struct json_object *vj = json_object_array_get_idx(q->after, j);
            if (vj == NULL) {
                continue; /* NULL in the whole partition: equal */
            }
            const struct cf_field *f = q->order[j].field;
            const char *op = j < i ? "$eq" : q->order[j].desc ? "$lt" : "$gt";
            char k[24];
            bson_t one, cmp;
            snprintf(k, sizeof(k), "%d", nand++);
            bson_append_document_begin(&ands, k, -1, &one);
            bson_append_document_begin(&one, f->name, -1, &cmp);
            x->field = f->name;
            rc = mg_append_field(&cmp, op, f, vj, x);
            bson_append_document_end(&one, &cmp);
            bson_append_document_end(&ands, &one);
        }
        bson_append_array_end(&term, &ands);
        bson_append_document_end(&ors, &term);
    }
    if (terms == 0 && rc == 0) { /* every sort value NULL: nothing follows inside */
        bson_t never, cond;
        bson_append_document_begin(&ors, "0", -1, &never);
        bson_append_document_begin(&never, q->order[0].field->name, -1, &cond);
        bson_append_null(&cond, "$eq", -1);
        bson_append_null(&cond, "$ne", -1);
        bson_append_document_end(&never, &cond);
        bson_append_document_end(&ors, &never);
    }
    bson_append_array_end(&child, &ors);
    bson_append_document_end(&c->arr, &child);
    return rc;
}

static void project(bson_t *proj, const char *name)
{
    if (!bson_has_field(proj, name)) {
        bson_append_int32(proj, name, -1, 1);
    }
}

static int plan_query(struct mg_plan *p, struct mg_xerr *x)
{
    const struct md_query *q = p->q;
    const struct cf_domain *d = p->d;
    /* sort and projection */
    p->opts = bson_new();
    bson_t sort, proj;
    bson_append_document_begin(p->opts, "sort", -1, &sort);
    for (size_t i = 0; i < q->norder; i++) {
        bson_append_int32(&sort, q->order[i].field->name, -1, q->order[i].desc ? -1 : 1);
    }
    bson_append_document_end(p->opts, &sort);
    bson_append_document_begin(p->opts, "projection", -1, &proj);
    bson_append_int32(&proj, "_id", -1, 0);
    if (q->nfields > 0) {
        project(&proj, d->key);
        project(&proj, "version");
        for (size_t i = 0; i < q->nfields; i++) {
            project(&proj, q->fields[i]->name);
        }
        for (size_t i = 0; i < q->norder; i++) { /* for the next cursor */
            project(&proj, q->order[i].field->name);
        }
    }
    bson_append_document_end(p->opts, &proj);

    /* partitions of the nullable sort columns, in the contract's order */
    size_t cols[MD_QUERY_MAX_ORDER + 1], k = 0;
    for (size_t i = 0; i < q->norder; i++) {
        if (is_nullable(d, q, i)) {
            cols[k++] = i;
        }
    }
    /* bit (k-1-j) set: column cols[j] in its second state (NULL ascending,
     * not NULL descending) */
    size_t first = 0, count = (size_t)1 << k;
    if (q->after != NULL) {
        for (size_t j = 0; j < k; j++) {
            int isnull = json_object_array_get_idx(q->after, cols[j]) == NULL;
            int second = q->order[cols[j]].desc ? !isnull : isnull;
            first |= (size_t)second << (k - 1 - j);
        }
    }
    if (count - first > MG_MAX_STEPS) {
        snprintf(x->msg, sizeof(x->msg),
                 "order_by: too many optional fields for the mongo adapter");
        return -1;
    }
    p->steps = calloc(count - first, sizeof(*p->steps));
    for (size_t m = first; m < count; m++) {
        struct conj c;
        conj_begin(&c);
        int rc = add_where(&c, q, x);
        for (size_t j = 0; j < k && rc == 0; j++) {
            int second = (int)((m >> (k - 1 - j)) & 1);
            int isnull = q->order[cols[j]].desc ? !second : second;
            add_null_test(&c, q->order[cols[j]].field->name, isnull);
        }
        if (rc == 0 && q->after != NULL && m == first) {
            rc = add_bound(&c, q, x);
        }
        p->steps[p->nsteps++] = conj_end(&c);
        if (rc < 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- _aggregate (loop thread) -------------------------------------------------------- */

/* A "$field.path" reference, whole: in `buf` when it fits, else from
 * bson_malloc (which aborts when out of memory, like every bson_t built
 * here); the caller bson_free()s a result other than buf. */
static char *field_ref(char *buf, size_t cap, const char *name)
{
    size_t n = strlen(name) + 2;
    char *out = n <= cap ? buf : bson_malloc(n);
    out[0] = '$';
    memcpy(out + 1, name, n - 1);
    return out;
}

static void group_id(bson_t *stage, const struct md_query *q)
{
    if (q->ngroup == 0) {
        bson_append_null(stage, "_id", -1);
        return;
    }
    bson_t id;
    bson_append_document_begin(stage, "_id", -1, &id);
    for (size_t i = 0; i < q->ngroup; i++) {
        char k[24], buf[160];
        snprintf(k, sizeof(k), "k%zu", i);
        char *ref = field_ref(buf, sizeof(buf), q->group_names[i]);
        bson_append_utf8(&id, k, -1, ref, -1);
        if (ref != buf) {
            bson_free(ref);
        }
    }
    bson_append_document_end(stage, &id);
}

/* [{$match: filter}, {$group: {_id, v: {$sum: 1 | "$f"}}}]: one accumulator
 * per $group, because FerretDB 1.24 answers 0 for every accumulator after
 * the first one of a $group stage. */
static bson_t *group_pipeline(const struct md_query *q, bson_t *filter, const struct cf_field *f)
{
    bson_t *pl = bson_new();
    bson_t arr, st, grp, acc;
    bson_append_array_begin(pl, "pipeline", -1, &arr);
    bson_append_document_begin(&arr, "0", -1, &st);
    bson_append_document(&st, "$match", -1, filter);
    bson_append_document_end(&arr, &st);
    bson_append_document_begin(&arr, "1", -1, &st);
    bson_append_document_begin(&st, "$group", -1, &grp);
    group_id(&grp, q);
    bson_append_document_begin(&grp, "v", -1, &acc);
    if (f == NULL) {
        bson_append_int32(&acc, "$sum", -1, 1);
    } else {
        char buf[160];
        char *ref = field_ref(buf, sizeof(buf), f->name);
        bson_append_utf8(&acc, "$sum", -1, ref, -1);
        if (ref != buf) {
            bson_free(ref);
        }
    }
    bson_append_document_end(&grp, &acc);
    bson_append_document_end(&st, &grp);
    bson_append_document_end(&arr, &st);
    bson_append_array_end(pl, &arr);
    return pl;
}

static int plan_aggregate(struct mg_plan *p, struct mg_xerr *x)
{
    const struct md_query *q = p->q;
    struct conj c;
    conj_begin(&c);
    int rc = add_where(&c, q, x);
    bson_t *where = conj_end(&c);
    if (rc < 0) {
        bson_destroy(where);
        return -1;
    }
    p->groups = group_pipeline(q, where, NULL);
    p->af = calloc(q->naggs + 1, sizeof(*p->af));
    p->agg_af = calloc(q->naggs + 1, sizeof(*p->agg_af));
    int any_minmax = 0;
    for (size_t i = 0; i < q->naggs; i++) {
        const struct md_qaggregate *a = &q->aggs[i];
        p->agg_af[i] = -1;
        if (a->field == NULL) {
            continue;
        }
        size_t j;
        for (j = 0; j < p->naf && p->af[j].f != a->field; j++) {
        }
        if (j == p->naf) {
            p->af[p->naf++].f = a->field;
        }
        p->agg_af[i] = (int)j;
        struct mg_afield *af = &p->af[j];
        if (a->fn == MD_QAGG_MIN || a->fn == MD_QAGG_MAX) {
            af->minmax = 1;
            any_minmax = 1;
        } else {
            int want_sum = a->fn != MD_QAGG_COUNT;
            if (af->count_pl != NULL && (!want_sum || af->sum_pl != NULL)) {
                continue;
            }
            conj_begin(&c);
            rc = add_where(&c, q, x);
            add_null_test(&c, af->f->name, 0);
            bson_t *flt = conj_end(&c);
            if (af->count_pl == NULL) {
                af->count_pl = group_pipeline(q, flt, NULL);
            }
            if (want_sum && af->sum_pl == NULL) {
                af->sum_pl = group_pipeline(q, flt, af->f);
            }
            bson_destroy(flt);
            if (rc < 0) {
                break;
            }
        }
    }
    if (rc == 0 && any_minmax) {
        p->scan = bson_copy(where);
        p->scan_opts = bson_new();
        bson_t proj;
        bson_append_document_begin(p->scan_opts, "projection", -1, &proj);
        bson_append_int32(&proj, "_id", -1, 0);
        for (size_t i = 0; i < q->ngroup; i++) {
            project(&proj, q->group_by[i]->name); /* the whole field: paths below it too */
        }
        for (size_t j = 0; j < p->naf; j++) {
            if (p->af[j].minmax) {
                project(&proj, p->af[j].f->name);
            }
        }
        bson_append_document_end(p->scan_opts, &proj);
    }
    bson_destroy(where);
    return rc;
}

int mg_plan_new(const struct cf_domain *d, const struct md_query *q, struct mg_plan **out,
                struct mg_xerr *x)
{
    struct mg_plan *p = calloc(1, sizeof(*p));
    p->d = d;
    p->q = q;
    int rc = q->aggregate ? plan_aggregate(p, x) : plan_query(p, x);
    if (rc < 0) {
        mg_plan_free(p);
        *out = NULL;
        return -1;
    }
    *out = p;
    return 0;
}

void mg_plan_free(struct mg_plan *p)
{
    if (p == NULL) {
        return;
    }
    bson_destroy(p->opts); /* bson_destroy(NULL) is a no-op */
    for (size_t i = 0; i < p->nsteps; i++) {
        bson_destroy(p->steps[i]);
    }
    free(p->steps);
    bson_destroy(p->groups);
    for (size_t j = 0; j < p->naf; j++) {
        bson_destroy(p->af[j].count_pl);
        bson_destroy(p->af[j].sum_pl);
    }
    free(p->af);
    free(p->agg_af);
    bson_destroy(p->scan);
    bson_destroy(p->scan_opts);
    free(p);
}

/* ---- running (pool thread: BSON only) ----------------------------------------------- */

/* maxTimeMS for the next command; -1 when the deadline has passed. */
static int add_max_time(bson_t *opts, uint64_t deadline_ms)
{
    if (deadline_ms == 0) {
        return 0;
    }
    uint64_t now = lb_now_ms();
    if (now >= deadline_ms) {
        return -1;
    }
    bson_append_int64(opts, "maxTimeMS", -1, (int64_t)(deadline_ms - now));
    return 0;
}

static int run_query(const struct mg_plan *p, mongoc_collection_t *coll, uint64_t deadline_ms,
                     bson_t **result, bson_error_t *err)
{
    bson_t *res = bson_new(), rows;
    int64_t want = (int64_t)p->q->limit + 1, got = 0;
    int rc = MG_PLAN_OK;
    bson_append_array_begin(res, "rows", -1, &rows);
    for (size_t s = 0; s < p->nsteps && got < want && rc == MG_PLAN_OK; s++) {
        bson_t opts;
        bson_copy_to(p->opts, &opts);
        bson_append_int64(&opts, "limit", -1, want - got);
        if (add_max_time(&opts, deadline_ms) < 0) {
            bson_destroy(&opts);
            rc = MG_PLAN_TIMEOUT;
            break;
        }
        mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, p->steps[s], &opts, NULL);
        const bson_t *doc;
        while (got < want && mongoc_cursor_next(cur, &doc)) {
            char idx[24];
            snprintf(idx, sizeof(idx), "%" PRId64, got++);
            bson_append_document(&rows, idx, -1, doc);
        }
        if (mongoc_cursor_error(cur, err)) {
            rc = MG_PLAN_DRIVER;
        }
        mongoc_cursor_destroy(cur);
        bson_destroy(&opts);
    }
    bson_append_array_end(res, &rows);
    if (rc != MG_PLAN_OK) {
        bson_destroy(res);
        return rc;
    }
    *result = res;
    return MG_PLAN_OK;
}

/* Values in the order of SQL's ORDER BY … NULLS LAST: numbers < strings <
 * objects < arrays < … (MongoDB's order of types), NULL/absent last. */
static int type_rank(bson_type_t t)
{
    switch (t) {
    case BSON_TYPE_EOD:
    case BSON_TYPE_NULL:
    case BSON_TYPE_UNDEFINED:
        return 100;
    case BSON_TYPE_INT32:
    case BSON_TYPE_INT64:
    case BSON_TYPE_DOUBLE:
        return 1;
    case BSON_TYPE_UTF8:
        return 2;
    case BSON_TYPE_DOCUMENT:
        return 3;
    case BSON_TYPE_ARRAY:
        return 4;
    case BSON_TYPE_BOOL:
        return 7;
    case BSON_TYPE_DATE_TIME:
        return 8;
    default:
        return 50;
    }
}

static int is_int(const bson_value_t *v)
{
    return v->value_type == BSON_TYPE_INT32 || v->value_type == BSON_TYPE_INT64;
}

static int64_t as_int(const bson_value_t *v)
{
    return v->value_type == BSON_TYPE_INT32 ? v->value.v_int32 : v->value.v_int64;
}

static long double as_num(const bson_value_t *v)
{
    return is_int(v) ? (long double)as_int(v) : (long double)v->value.v_double;
}

static int cmp_bytes(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c != 0 ? c : (al > bl) - (al < bl);
}

static int cmp_value(const bson_value_t *a, const bson_value_t *b)
{
    int ra = type_rank(a->value_type), rb = type_rank(b->value_type);
    if (ra != rb) {
        return ra < rb ? -1 : 1;
    }
    switch (ra) {
    case 100:
        return 0;
    case 1:
        if (is_int(a) && is_int(b)) {
            return (as_int(a) > as_int(b)) - (as_int(a) < as_int(b));
        }
        return (as_num(a) > as_num(b)) - (as_num(a) < as_num(b));
    case 2:
        return cmp_bytes((const uint8_t *)a->value.v_utf8.str, a->value.v_utf8.len,
                         (const uint8_t *)b->value.v_utf8.str, b->value.v_utf8.len);
    case 7:
        return (int)a->value.v_bool - (int)b->value.v_bool;
    case 8:
        return (a->value.v_datetime > b->value.v_datetime) -
               (a->value.v_datetime < b->value.v_datetime);
    case 3:
    case 4:
        return cmp_bytes(a->value.v_doc.data, a->value.v_doc.data_len, b->value.v_doc.data,
                         b->value.v_doc.data_len);
    default:
        return (int)a->value_type - (int)b->value_type;
    }
}

struct acc {
    int64_t nn;  /* non-NULL values */
    int64_t sum; /* their sum (scaled for decimals) */
    int has_min, has_max;
    bson_value_t min, max;
};

struct grp {
    bson_value_t *key; /* ngroup values; NULL as BSON_TYPE_NULL */
    int64_t n;         /* count(*) */
    struct acc *acc;   /* per mg_afield */
};

struct groups {
    struct grp *g;
    size_t n, cap;
    size_t nkey;
};

static int cmp_keys(const bson_value_t *a, const bson_value_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int c = cmp_value(&a[i], &b[i]);
        if (c != 0) {
            return c;
        }
    }
    return 0;
}

static int cmp_grp(const void *a, const void *b, void *nkey)
{
    return cmp_keys(((const struct grp *)a)->key, ((const struct grp *)b)->key,
                    *(const size_t *)nkey);
}

static void key_free(bson_value_t *key, size_t n)
{
    for (size_t i = 0; key != NULL && i < n; i++) {
        bson_value_destroy(&key[i]);
    }
    free(key);
}

/* A document's value at a field name or a dotted path ("category.id"). */
static int key_find(const bson_t *doc, const char *name, bson_iter_t *out)
{
    bson_iter_t it;
    if (strchr(name, '.') == NULL) {
        return bson_iter_init_find(out, doc, name);
    }
    return bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, name, out);
}

/* The group key of a $group row (_id: {k0, k1, …} or null) or, without
 * from_id, of a document's top-level fields.  Absent = NULL. */
static bson_value_t *key_of(const bson_t *doc, size_t nkey, const struct md_query *q, int from_id)
{
    bson_value_t *key = calloc(nkey + 1, sizeof(*key));
    bson_iter_t id;
    int have_id = from_id && bson_iter_init_find(&id, doc, "_id") && BSON_ITER_HOLDS_DOCUMENT(&id);
    for (size_t i = 0; i < nkey; i++) {
        bson_iter_t sub;
        char k[24];
        snprintf(k, sizeof(k), "k%zu", i);
        int found = from_id ? have_id && bson_iter_recurse(&id, &sub) && bson_iter_find(&sub, k)
                            : key_find(doc, q->group_names[i], &sub);
        if (found && type_rank(bson_iter_type(&sub)) != 100) {
            bson_value_copy(bson_iter_value(&sub), &key[i]);
        } else {
            key[i].value_type = BSON_TYPE_NULL;
        }
    }
    return key;
}

static struct grp *find_grp(struct groups *gs, const bson_value_t *key)
{
    size_t lo = 0, hi = gs->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_keys(gs->g[mid].key, key, gs->nkey);
        if (c == 0) {
            return &gs->g[mid];
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

static void groups_free(struct groups *gs, size_t naf)
{
    for (size_t i = 0; i < gs->n; i++) {
        key_free(gs->g[i].key, gs->nkey);
        for (size_t j = 0; j < naf; j++) {
            struct acc *a = &gs->g[i].acc[j];
            if (a->has_min) {
                bson_value_destroy(&a->min);
            }
            if (a->has_max) {
                bson_value_destroy(&a->max);
            }
        }
        free(gs->g[i].acc);
    }
    free(gs->g);
}

static mongoc_cursor_t *aggregate(mongoc_collection_t *coll, const bson_t *pipeline,
                                  uint64_t deadline_ms, int *timeout)
{
    bson_t opts = BSON_INITIALIZER;
    *timeout = add_max_time(&opts, deadline_ms) < 0;
    mongoc_cursor_t *cur =
        *timeout ? NULL
                 : mongoc_collection_aggregate(coll, MONGOC_QUERY_NONE, pipeline, &opts, NULL);
    bson_destroy(&opts);
    return cur;
}

/* Reads the groups and count(*). */
static int read_groups(const struct mg_plan *p, mongoc_collection_t *coll, uint64_t deadline_ms,
                       struct groups *gs, bson_error_t *err, char *msg, size_t msglen)
{
    int timeout;
    mongoc_cursor_t *cur = aggregate(coll, p->groups, deadline_ms, &timeout);
    if (timeout) {
        return MG_PLAN_TIMEOUT;
    }
    const bson_t *doc;
    int rc = MG_PLAN_OK;
    while (rc == MG_PLAN_OK && mongoc_cursor_next(cur, &doc)) {
        if (gs->n == MG_MAX_GROUPS) {
            snprintf(msg, msglen,
                     "the aggregate has more than %d groups; narrow 'where' or 'group_by'",
                     MG_MAX_GROUPS);
            rc = MG_PLAN_BAD;
            break;
        }
        if (gs->n == gs->cap) {
            gs->cap = gs->cap ? gs->cap * 2 : 16;
            gs->g = realloc(gs->g, gs->cap * sizeof(*gs->g));
        }
        struct grp *g = &gs->g[gs->n++];
        bson_iter_t it;
        g->key = key_of(doc, gs->nkey, p->q, 1);
        g->n = bson_iter_init_find(&it, doc, "v") ? bson_iter_as_int64(&it) : 0;
        g->acc = calloc(p->naf + 1, sizeof(*g->acc));
    }
    if (rc == MG_PLAN_OK && mongoc_cursor_error(cur, err)) {
        rc = MG_PLAN_DRIVER;
    }
    mongoc_cursor_destroy(cur);
    if (rc != MG_PLAN_OK) {
        return rc;
    }
    /* sort, and merge what MongoDB kept apart (null and absent) */
    if (gs->n > 1) {
        qsort_r(gs->g, gs->n, sizeof(*gs->g), cmp_grp, &gs->nkey);
    }
    size_t o = 0;
    for (size_t i = 0; i < gs->n; i++) {
        if (o > 0 && cmp_keys(gs->g[o - 1].key, gs->g[i].key, gs->nkey) == 0) {
            gs->g[o - 1].n += gs->g[i].n;
            key_free(gs->g[i].key, gs->nkey);
            free(gs->g[i].acc);
            continue;
        }
        gs->g[o++] = gs->g[i];
    }
    gs->n = o;
    return MG_PLAN_OK;
}

/* Non-NULL counts (sum = 0) or sums (sum = 1) of one field. */
static int read_sums(const struct mg_plan *p, size_t j, int sum, mongoc_collection_t *coll,
                     uint64_t deadline_ms, struct groups *gs, bson_error_t *err, char *msg,
                     size_t msglen)
{
    int timeout;
    mongoc_cursor_t *cur =
        aggregate(coll, sum ? p->af[j].sum_pl : p->af[j].count_pl, deadline_ms, &timeout);
    if (timeout) {
        return MG_PLAN_TIMEOUT;
    }
    const bson_t *doc;
    int rc = MG_PLAN_OK;
    while (rc == MG_PLAN_OK && mongoc_cursor_next(cur, &doc)) {
        bson_value_t *key = key_of(doc, gs->nkey, p->q, 1);
        struct grp *g = find_grp(gs, key);
        key_free(key, gs->nkey);
        if (g == NULL) {
            continue; /* written between the two pipelines */
        }
        struct acc *a = &g->acc[j];
        bson_iter_t it;
        if (!bson_iter_init_find(&it, doc, "v")) {
            continue;
        }
        if (!sum) {
            a->nn += bson_iter_as_int64(&it);
        } else {
            if (!BSON_ITER_HOLDS_INT(&it) ||
                __builtin_add_overflow(a->sum, bson_iter_as_int64(&it), &a->sum)) {
                snprintf(msg, msglen,
                         "the sum of '%s' does not fit in 64 bits (or the stored values are not "
                         "integers)",
                         p->af[j].f->name);
                rc = MG_PLAN_BAD;
            }
        }
    }
    if (rc == MG_PLAN_OK && mongoc_cursor_error(cur, err)) {
        rc = MG_PLAN_DRIVER;
    }
    mongoc_cursor_destroy(cur);
    return rc;
}

/* min/max: one pass over the matching documents. */
static int read_minmax(const struct mg_plan *p, mongoc_collection_t *coll, uint64_t deadline_ms,
                       struct groups *gs, bson_error_t *err)
{
    bson_t opts;
    bson_copy_to(p->scan_opts, &opts);
    if (add_max_time(&opts, deadline_ms) < 0) {
        bson_destroy(&opts);
        return MG_PLAN_TIMEOUT;
    }
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, p->scan, &opts, NULL);
    const bson_t *doc;
    while (mongoc_cursor_next(cur, &doc)) {
        bson_value_t *key = key_of(doc, gs->nkey, p->q, 0);
        struct grp *g = find_grp(gs, key);
        key_free(key, gs->nkey);
        for (size_t j = 0; g != NULL && j < p->naf; j++) {
            bson_iter_t it;
            if (!p->af[j].minmax || !bson_iter_init_find(&it, doc, p->af[j].f->name) ||
                type_rank(bson_iter_type(&it)) == 100) {
                continue;
            }
            const bson_value_t *v = bson_iter_value(&it);
            struct acc *a = &g->acc[j];
            if (!a->has_min || cmp_value(v, &a->min) < 0) {
                if (a->has_min) {
                    bson_value_destroy(&a->min);
                }
                bson_value_copy(v, &a->min);
                a->has_min = 1;
            }
            if (!a->has_max || cmp_value(v, &a->max) > 0) {
                if (a->has_max) {
                    bson_value_destroy(&a->max);
                }
                bson_value_copy(v, &a->max);
                a->has_max = 1;
            }
        }
    }
    int rc = mongoc_cursor_error(cur, err) ? MG_PLAN_DRIVER : MG_PLAN_OK;
    mongoc_cursor_destroy(cur);
    bson_destroy(&opts);
    return rc;
}

/* sum / n exactly, with `places` decimal places of which the last `scale`
 * are already in sum (a scaled decimal), rounded half away from zero. */
static void avg_text(int64_t sum, int64_t n, int scale, int extra, char *out, size_t outlen)
{
    uint64_t u = sum < 0 ? (uint64_t)0 - (uint64_t)sum : (uint64_t)sum, un = (uint64_t)n;
    uint64_t r = u % un;
    char dig[96];
    int nd = snprintf(dig, sizeof(dig) - (size_t)extra - 2, "%" PRIu64, u / un);
    for (int i = 0; i < extra; i++) {
        r *= 10;
        dig[nd++] = (char)('0' + (int)(r / un));
        r %= un;
    }
    dig[nd] = '\0';
    if (r >= un - r) { /* 2r >= n: round up */
        int i = nd - 1;
        while (i >= 0 && dig[i] == '9') {
            dig[i--] = '0';
        }
        if (i < 0) {
            memmove(dig + 1, dig, (size_t)nd + 1);
            dig[0] = '1';
            nd++;
        } else {
            dig[i]++;
        }
    }
    int places = scale + extra;
    while (nd <= places) { /* at least one digit before the point */
        memmove(dig + 1, dig, (size_t)nd + 1);
        dig[0] = '0';
        nd++;
    }
    int nonzero = strspn(dig, "0") != (size_t)nd;
    snprintf(out, outlen, "%s%.*s%s%s", sum < 0 && nonzero ? "-" : "", nd - places, dig,
             places > 0 ? "." : "", dig + nd - places);
}

static void append_bvalue(bson_t *b, const char *k, const bson_value_t *v)
{
    if (v->value_type == BSON_TYPE_NULL) {
        bson_append_null(b, k, -1);
    } else {
        bson_append_value(b, k, -1, v);
    }
}

static void agg_row(const struct mg_plan *p, bson_t *row, const struct grp *g)
{
    const struct md_query *q = p->q;
    for (size_t i = 0; i < q->ngroup; i++) {
        append_bvalue(row, q->group_names[i], &g->key[i]);
    }
    for (size_t i = 0; i < q->naggs; i++) {
        const struct md_qaggregate *a = &q->aggs[i];
        const struct acc *ac = p->agg_af[i] >= 0 && g->acc != NULL ? &g->acc[p->agg_af[i]] : NULL;
        static const struct acc none;
        if (ac == NULL) {
            ac = &none;
        }
        switch (a->fn) {
        case MD_QAGG_COUNT:
            bson_append_int64(row, a->alias, -1, a->field == NULL ? g->n : ac->nn);
            break;
        case MD_QAGG_SUM:
            if (ac->nn == 0) {
                bson_append_null(row, a->alias, -1);
            } else {
                bson_append_int64(row, a->alias, -1, ac->sum);
            }
            break;
        case MD_QAGG_AVG:
            if (ac->nn == 0) {
                bson_append_null(row, a->alias, -1);
            } else {
                char text[128];
                int dec = a->field->type == CF_T_DECIMAL;
                avg_text(ac->sum, ac->nn, dec ? a->field->scale : 0, dec ? 0 : MG_INT_AVG_PLACES,
                         text, sizeof(text));
                bson_append_utf8(row, a->alias, -1, text, -1);
            }
            break;
        case MD_QAGG_MIN:
        case MD_QAGG_MAX: {
            int has = a->fn == MD_QAGG_MIN ? ac->has_min : ac->has_max;
            if (!has) {
                bson_append_null(row, a->alias, -1);
            } else {
                bson_append_value(row, a->alias, -1, a->fn == MD_QAGG_MIN ? &ac->min : &ac->max);
            }
            break;
        }
        }
    }
}

static int run_aggregate(const struct mg_plan *p, mongoc_collection_t *coll, uint64_t deadline_ms,
                         bson_t **result, bson_error_t *err, char *msg, size_t msglen)
{
    struct groups gs = {.nkey = p->q->ngroup};
    int rc = read_groups(p, coll, deadline_ms, &gs, err, msg, msglen);
    for (size_t j = 0; j < p->naf && rc == MG_PLAN_OK; j++) {
        if (p->af[j].count_pl != NULL) {
            rc = read_sums(p, j, 0, coll, deadline_ms, &gs, err, msg, msglen);
        }
        if (rc == MG_PLAN_OK && p->af[j].sum_pl != NULL) {
            rc = read_sums(p, j, 1, coll, deadline_ms, &gs, err, msg, msglen);
        }
    }
    if (rc == MG_PLAN_OK && p->scan != NULL) {
        rc = read_minmax(p, coll, deadline_ms, &gs, err);
    }
    if (rc != MG_PLAN_OK) {
        groups_free(&gs, p->naf);
        return rc;
    }
    bson_t *res = bson_new(), rows;
    bson_append_array_begin(res, "rows", -1, &rows);
    size_t shown = gs.n < (size_t)p->q->limit ? gs.n : (size_t)p->q->limit;
    if (p->q->ngroup == 0) {
        shown = 1; /* one row, also over nothing (count 0, the others NULL) */
    }
    for (size_t i = 0; i < shown; i++) {
        struct grp empty = {0};
        char idx[24];
        bson_t row;
        snprintf(idx, sizeof(idx), "%zu", i);
        bson_append_document_begin(&rows, idx, -1, &row);
        agg_row(p, &row, i < gs.n ? &gs.g[i] : &empty);
        bson_append_document_end(&rows, &row);
    }
    bson_append_array_end(res, &rows);
    groups_free(&gs, p->naf);
    *result = res;
    return MG_PLAN_OK;
}

int mg_plan_run(const struct mg_plan *p, mongoc_collection_t *coll, uint64_t deadline_ms,
                bson_t **result, bson_error_t *err, char *msg, size_t msglen)
{
    *result = NULL;
    return p->q->aggregate ? run_aggregate(p, coll, deadline_ms, result, err, msg, msglen)
                           : run_query(p, coll, deadline_ms, result, err);
}

/* ---- the answer (loop thread) -------------------------------------------------------- */

static struct json_object *query_item(const struct mg_plan *p, const bson_t *doc)
{
    const struct md_query *q = p->q;
    int64_t ver;
    struct json_object *item = mg_item_of(doc, p->d, &ver);
    if (q->nfields == 0) {
        return item;
    }
    /* sort fields were read for the cursor only */
    struct json_object *out = json_object_new_object(), *v;
    const char *keep[2] = {p->d->key, "version"};
    for (size_t i = 0; i < 2; i++) {
        if (json_object_object_get_ex(item, keep[i], &v)) {
            json_object_object_add(out, keep[i], json_object_get(v));
        }
    }
    for (size_t i = 0; i < q->nfields; i++) {
        if (json_object_object_get_ex(item, q->fields[i]->name, &v)) {
            json_object_object_add(out, q->fields[i]->name, json_object_get(v));
        }
    }
    json_object_put(item);
    return out;
}

static struct json_object *agg_item(const struct mg_plan *p, const bson_t *doc)
{
    const struct md_query *q = p->q;
    struct json_object *item = json_object_new_object();
    bson_iter_t it;
    for (size_t i = 0; i < q->ngroup; i++) {
        const struct cf_field *f = q->group_by[i];
        const char *name = q->group_names[i];
        json_object_object_add(
            item, name, bson_iter_init_find(&it, doc, name) ? mg_field_to_json(&it, f) : NULL);
    }
    for (size_t i = 0; i < q->naggs; i++) {
        const struct md_qaggregate *a = &q->aggs[i];
        struct json_object *v = NULL;
        if (bson_iter_init_find(&it, doc, a->alias) && !BSON_ITER_HOLDS_NULL(&it)) {
            if (a->fn == MD_QAGG_COUNT) {
                v = json_object_new_int64(bson_iter_as_int64(&it));
            } else if (a->fn == MD_QAGG_AVG && BSON_ITER_HOLDS_UTF8(&it)) {
                const char *s = bson_iter_utf8(&it, NULL);
                v = json_object_new_double_s(strtod(s, NULL), s);
            } else {
                v = mg_field_to_json(&it, a->field);
            }
        }
        json_object_object_add(item, a->alias, v);
    }
    return item;
}

void mg_plan_result(const struct mg_plan *p, const bson_t *result, struct json_object **items_out,
                    struct json_object **last_out)
{
    const struct md_query *q = p->q;
    struct json_object *items = json_object_new_array();
    struct json_object *vals = NULL;
    bson_iter_t it, rows;
    const uint8_t *last_data = NULL; /* a static bson_t must not be copied */
    uint32_t last_len = 0;
    int n = 0;
    if (bson_iter_init_find(&it, result, "rows") && BSON_ITER_HOLDS_ARRAY(&it) &&
        bson_iter_recurse(&it, &rows)) {
        while (bson_iter_next(&rows)) {
            uint32_t len;
            const uint8_t *data;
            bson_t row;
            if (!BSON_ITER_HOLDS_DOCUMENT(&rows)) {
                continue;
            }
            bson_iter_document(&rows, &len, &data);
            if (!bson_init_static(&row, data, len)) {
                continue;
            }
            if (!q->aggregate && n == q->limit) {
                n++; /* the extra row: there is a next page */
                break;
            }
            json_object_array_add(items, q->aggregate ? agg_item(p, &row) : query_item(p, &row));
            last_data = data;
            last_len = len;
            n++;
        }
    }
    bson_t last;
    if (!q->aggregate && n > q->limit && last_data != NULL &&
        bson_init_static(&last, last_data, last_len)) {
        vals = json_object_new_array();
        for (size_t k = 0; k < q->norder; k++) {
            const struct cf_field *f = q->order[k].field;
            struct json_object *v = NULL;
            if (bson_iter_init_find(&it, &last, f->name)) {
                v = mg_field_to_json(&it, f);
            }
            json_object_array_add(vals, v);
        }
    }
    *items_out = items;
    *last_out = vals;
}
