/*
 * gw_scatter.c — per-shard query plan and the merge of the shards' answers.
 */
#include "gateway/gw_scatter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/cf_config.h"
#include "gateway/gw_page.h"
#include "lib/lb_util.h"
#include "model/md_query.h"
#include "routing/rt_merge.h"

#define ALIAS_MAX 40

/* The query every shard runs.  A shallow copy of the client's query: the
 * where tree, order and cursor values are the client query's own, which the
 * plan owns too. */
struct shard_query {
    struct md_query q;
    const struct cf_field **fields;
    struct md_qaggregate *aggs;
    char (*alias)[ALIAS_MAX];
};

struct part {
    struct json_object *rows;
    int more;
    int failed;
    struct md_error e;
};

struct gw_scatter {
    int refs;
    const struct cf_domain *d;
    struct md_query *q; /* the client's (owned) */
    struct shard_query sq;
    size_t nqueried;
    size_t nshards;
    struct part *parts; /* by shard index */
    /* _query: sort fields added to the projection, removed from the answer */
    const char *strip[MD_QUERY_MAX_ORDER + 1];
    size_t nstrip;
    struct rt_sort_key keys[MD_QUERY_MAX_ORDER + 1];
    /* _aggregate */
    struct rt_group_key groups[MD_QUERY_MAX_ORDER];
    struct rt_agg *aggs;
    size_t naggs;
};

static enum rt_vtype vtype(const struct cf_field *f)
{
    switch (f != NULL ? f->type : CF_T_INT) {
    case CF_T_INT:
        return RT_V_INT;
    case CF_T_DECIMAL:
        return RT_V_DECIMAL;
    case CF_T_TIMESTAMP:
        return RT_V_TIMESTAMP;
    case CF_T_BOOL:
        return RT_V_BOOL;
    default:
        return RT_V_STRING;
    }
}

/* _query: widen a projection by the sort fields it leaves out. */
static void plan_query(struct gw_scatter *s, struct shard_query *sq)
{
    const struct md_query *q = s->q;
    for (size_t i = 0; i < q->norder; i++) {
        s->keys[i].field = q->order[i].field->name;
        s->keys[i].type = vtype(q->order[i].field);
        s->keys[i].desc = q->order[i].desc;
    }
    if (q->nfields == 0) {
        return;
    }
    sq->fields = lb_xcalloc(q->nfields + q->norder, sizeof(*sq->fields));
    memcpy(sq->fields, q->fields, q->nfields * sizeof(*q->fields));
    size_t n = q->nfields;
    for (size_t i = 0; i < q->norder; i++) {
        const struct cf_field *f = q->order[i].field;
        int have = strcmp(f->name, s->d->key) == 0;
        for (size_t j = 0; !have && j < n; j++) {
            have = sq->fields[j] == f;
        }
        if (!have) {
            sq->fields[n++] = f;
            s->strip[s->nstrip++] = f->name;
        }
    }
    sq->q.fields = sq->fields;
    sq->q.nfields = n;
}

static int alias_taken(const struct md_query *q, const char *prefix)
{
    size_t pl = strlen(prefix);
    for (size_t i = 0; i < q->ngroup; i++) {
        if (strncmp(q->group_names[i], prefix, pl) == 0) {
            return 1;
        }
    }
    return 0;
}

/* _aggregate: count/sum/min/max as they are, avg as a sum and a count. */
static void plan_aggregate(struct gw_scatter *s, struct shard_query *sq)
{
    const struct md_query *q = s->q;
    for (size_t i = 0; i < q->ngroup; i++) {
        s->groups[i].field = q->group_names[i];
        s->groups[i].type = vtype(q->group_by[i]);
    }
    char prefix[16] = "_p";
    while (alias_taken(q, prefix) && strlen(prefix) < 10) { /* never a group field's name */
        memmove(prefix + 1, prefix, strlen(prefix) + 1);
        prefix[0] = '_';
    }
    size_t n = 0;
    sq->aggs = lb_xcalloc(2 * q->naggs + 1, sizeof(*sq->aggs));
    sq->alias = lb_xcalloc(2 * q->naggs + 1, sizeof(*sq->alias));
    s->aggs = lb_xcalloc(q->naggs + 1, sizeof(*s->aggs));
    for (size_t i = 0; i < q->naggs; i++) {
        const struct md_qaggregate *a = &q->aggs[i];
        struct rt_agg *m = &s->aggs[i];
        m->alias = a->alias;
        m->type = vtype(a->field);
        m->fn = a->fn == MD_QAGG_COUNT ? RT_AGG_COUNT
                : a->fn == MD_QAGG_SUM ? RT_AGG_SUM
                : a->fn == MD_QAGG_MIN ? RT_AGG_MIN
                : a->fn == MD_QAGG_MAX ? RT_AGG_MAX
                                       : RT_AGG_AVG;
        snprintf(sq->alias[n], ALIAS_MAX, "%s%zu", prefix, n);
        sq->aggs[n] = (struct md_qaggregate){sq->alias[n], a->fn, a->field};
        m->col = sq->alias[n];
        if (a->fn == MD_QAGG_AVG) {
            sq->aggs[n].fn = MD_QAGG_SUM;
            n++;
            snprintf(sq->alias[n], ALIAS_MAX, "%s%zu", prefix, n);
            sq->aggs[n] = (struct md_qaggregate){sq->alias[n], MD_QAGG_COUNT, a->field};
            m->count_col = sq->alias[n];
        }
        n++;
    }
    sq->q.aggs = sq->aggs;
    sq->q.naggs = n;
    s->naggs = q->naggs;
}

struct gw_scatter *gw_scatter_new(const struct cf_domain *d, struct md_query *q, size_t nqueried)
{
    struct gw_scatter *s = lb_xcalloc(1, sizeof(*s));
    s->refs = 1;
    s->d = d;
    s->q = q;
    s->nqueried = nqueried;
    s->nshards = d->backend->nshards;
    s->parts = lb_xcalloc(s->nshards + 1, sizeof(*s->parts));
    s->sq.q = *q;
    if (q->aggregate) {
        plan_aggregate(s, &s->sq);
    } else {
        plan_query(s, &s->sq);
    }
    return s;
}

struct gw_scatter *gw_scatter_ref(struct gw_scatter *s)
{
    s->refs++;
    return s;
}

void gw_scatter_unref(struct gw_scatter *s)
{
    if (s == NULL || --s->refs > 0) {
        return;
    }
    for (size_t i = 0; i < s->nshards; i++) {
        json_object_put(s->parts[i].rows);
    }
    free(s->parts);
    free(s->aggs);
    free(s->sq.fields);
    free(s->sq.aggs);
    free(s->sq.alias);
    md_query_free(s->q);
    free(s);
}

const struct md_query *gw_scatter_query(const struct gw_scatter *s)
{
    return &s->sq.q;
}

void gw_scatter_add(struct gw_scatter *s, size_t shard, struct json_object *rows, int more)
{
    if (shard < s->nshards) {
        json_object_put(s->parts[shard].rows);
        s->parts[shard].rows = rows != NULL ? json_object_get(rows) : json_object_new_array();
        s->parts[shard].more = more;
    }
}

void gw_scatter_fail(struct gw_scatter *s, size_t shard, const struct md_error *e)
{
    if (shard < s->nshards) {
        s->parts[shard].failed = 1;
        s->parts[shard].e = *e;
    }
}

/* The merged rows (*items) and, when more follow, the sort values of the
 * last one (*last, else NULL): new references. */
static void merge_query(struct gw_scatter *s, struct json_object **lists, int more,
                        struct json_object **items, struct json_object **last)
{
    const struct md_query *q = s->q;
    *items = json_object_new_array();
    *last = NULL;
    int m = 0;
    size_t got =
        rt_merge_sorted(lists, s->nshards, s->keys, q->norder, (size_t)q->limit, *items, &m);
    if ((more || m) && got > 0) {
        struct json_object *row = json_object_array_get_idx(*items, got - 1);
        *last = json_object_new_array();
        for (size_t k = 0; k < q->norder; k++) {
            json_object_array_add(*last,
                                  json_object_get(json_object_object_get(row, s->keys[k].field)));
        }
    }
    for (size_t i = 0; s->nstrip > 0 && i < got; i++) {
        struct json_object *it = json_object_array_get_idx(*items, i);
        for (size_t k = 0; k < s->nstrip; k++) {
            json_object_object_del(it, s->strip[k]);
        }
    }
}

int gw_scatter_finish(struct gw_scatter *s, struct json_object **doc, struct md_error *e)
{
    *doc = NULL;
    const struct cf_backend *be = s->d->backend;
    const struct part *first_fail = NULL;
    size_t nmissing = 0;
    for (size_t i = 0; i < s->nshards; i++) {
        const struct part *p = &s->parts[i];
        if (!p->failed) {
            continue;
        }
        nmissing++;
        int client_error = md_err_status(p->e.err) < 500;
        if (first_fail == NULL || (client_error && md_err_status(first_fail->e.err) >= 500)) {
            first_fail = p;
        }
    }
    if (first_fail != NULL &&
        (!s->q->partial || md_err_status(first_fail->e.err) < 500 || nmissing == s->nqueried)) {
        *e = first_fail->e;
        if (nmissing > 1 && md_err_status(e->err) >= 500) {
            size_t ml = strlen(e->message);
            snprintf(e->message + ml, sizeof(e->message) - ml,
                     " (%zu of %zu shards failed; \"partial\": true returns what the others "
                     "have)",
                     nmissing, s->nqueried);
        }
        return -1;
    }
    struct json_object **lists = lb_xcalloc(s->nshards + 1, sizeof(*lists));
    int more = 0;
    for (size_t i = 0; i < s->nshards; i++) {
        lists[i] = s->parts[i].rows;
        more |= s->parts[i].rows != NULL && s->parts[i].more;
    }
    struct json_object *items = NULL, *last = NULL;
    if (s->q->aggregate) {
        items = json_object_new_array();
        char err[256];
        long n = rt_merge_aggregates(lists, s->nshards, s->groups, s->q->ngroup, s->aggs, s->naggs,
                                     (size_t)s->q->limit, items, err, sizeof(err));
        if (n < 0) {
            json_object_put(items);
            free(lists);
            md_error_set(e, MD_E_INTERNAL, NULL, "merging the shards' aggregates: %s", err);
            return -1;
        }
    } else {
        merge_query(s, lists, more, &items, &last);
    }
    free(lists);
    struct json_object *out = gw_page_new(s->q, items, last, (int)s->nqueried, nmissing > 0);
    json_object_put(items);
    json_object_put(last);
    if (nmissing > 0) {
        struct json_object *names = json_object_new_array();
        for (size_t i = 0; i < s->nshards; i++) {
            if (s->parts[i].failed) {
                json_object_array_add(names, json_object_new_string(be->shards[i].name));
            }
        }
        json_object_object_add(out, "missing_shards", names);
    }
    *doc = out;
    return 0;
}
