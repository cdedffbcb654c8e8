/*
 * rt_merge.c — k-way heap merge of sorted per-shard results, and merging of
 * per-shard partial aggregates with exact decimal arithmetic.
 */
#include "routing/rt_merge.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- exact decimals: 128-bit fixed point on the digits' text --------------------------- */

#define DEC_MAX_DIGITS 38

struct dec {
    __int128 v;
    int scale; /* digits after the point */
};

static const __int128 DEC_LIMIT = (__int128)1e19 * (__int128)10000000000000000000ULL; /* 1e38 */

/* "-123.4500" → {-1234500, 4}.  -1 on anything else (exponents included). */
static int dec_parse(const char *s, struct dec *d)
{
    int neg = 0, digits = 0, scale = -1;
    __int128 v = 0;
    if (*s == '-' || *s == '+') {
        neg = *s == '-';
        s++;
    }
    if (*s == '\0') {
        return -1;
    }
    for (; *s != '\0'; s++) {
        if (*s == '.') {
            if (scale >= 0) {
                return -1;
            }
            scale = 0;
            continue;
        }
        if (*s < '0' || *s > '9') {
            return -1;
        }
        if (++digits > DEC_MAX_DIGITS - 1) {
            return -1;
        }
        v = v * 10 + (*s - '0');
        if (scale >= 0) {
            scale++;
        }
    }
    if (digits == 0) {
        return -1;
    }
    d->v = neg ? -v : v;
    d->scale = scale < 0 ? 0 : scale;
    return 0;
}

static int dec_rescale(struct dec *d, int scale)
{
    while (d->scale < scale) {
        if (d->v >= DEC_LIMIT / 10 || d->v <= -DEC_LIMIT / 10) {
            return -1;
        }
        d->v *= 10;
        d->scale++;
    }
    return 0;
}

static void dec_format(const struct dec *d, char *out, size_t outlen)
{
    char tmp[64];
    int n = 0, neg = d->v < 0;
    unsigned __int128 u = neg ? (unsigned __int128)(-d->v) : (unsigned __int128)d->v;
    do {
        tmp[n++] = (char)('0' + (int)(u % 10));
        u /= 10;
    } while (u != 0 || n <= d->scale);
    size_t o = 0;
    if (neg && o + 1 < outlen) {
        out[o++] = '-';
    }
    for (int i = n - 1; i >= 0 && o + 2 < outlen; i--) {
        out[o++] = tmp[i];
        if (i == d->scale && d->scale > 0) {
            out[o++] = '.';
        }
    }
    out[o] = '\0';
}

static int dec_add(struct dec *acc, const struct dec *x)
{
    struct dec b = *x;
    int s = acc->scale > b.scale ? acc->scale : b.scale;
    if (dec_rescale(acc, s) < 0 || dec_rescale(&b, s) < 0) {
        return -1;
    }
    acc->v += b.v;
    return acc->v >= DEC_LIMIT || acc->v <= -DEC_LIMIT ? -1 : 0;
}

int rt_dec_add(const char *a, const char *b, char *out, size_t outlen)
{
    struct dec x, y;
    if (dec_parse(a, &x) < 0 || dec_parse(b, &y) < 0 || dec_add(&x, &y) < 0) {
        return -1;
    }
    dec_format(&x, out, outlen);
    return 0;
}

static int dec_div(const struct dec *a, int64_t n, int scale, int min_scale, struct dec *q)
{
    if (n <= 0) {
        return -1;
    }
    struct dec x = *a;
    if (scale < x.scale) {
        scale = x.scale;
    }
    /* as many digits as fit (never fewer than the dividend has) */
    while (scale > x.scale && dec_rescale(&x, scale) < 0) {
        x = *a;
        scale--;
    }
    __int128 quo = x.v / n, rem = x.v % n;
    if (rem < 0) {
        rem = -rem;
    }
    if (2 * rem >= (__int128)n) {
        quo += x.v < 0 ? -1 : 1;
    }
    q->v = quo;
    q->scale = x.scale;
    if (min_scale < 0) {
        min_scale = 0;
    }
    while (q->scale > min_scale && q->v % 10 == 0) {
        q->v /= 10;
        q->scale--;
    }
    return 0;
}

int rt_dec_div(const char *a, int64_t n, int scale, int min_scale, char *out, size_t outlen)
{
    struct dec x, q;
    if (dec_parse(a, &x) < 0 || dec_div(&x, n, scale, min_scale, &q) < 0) {
        return -1;
    }
    dec_format(&q, out, outlen);
    return 0;
}

/* The digits of a JSON number (ints and exact-text doubles alike). */
static const char *num_text(struct json_object *v, char *buf, size_t len)
{
    if (json_object_is_type(v, json_type_int)) {
        snprintf(buf, len, "%" PRId64, json_object_get_int64(v));
        return buf;
    }
    return json_object_get_string(v);
}

/* ---- value order ---------------------------------------------------------------- */

static int is_null(struct json_object *v)
{
    return v == NULL || json_object_is_type(v, json_type_null);
}

static int cmp_bytes(struct json_object *a, struct json_object *b)
{
    const char *x = json_object_get_string(a), *y = json_object_get_string(b);
    size_t lx = json_object_is_type(a, json_type_string) ? (size_t)json_object_get_string_len(a)
                                                         : strlen(x);
    size_t ly = json_object_is_type(b, json_type_string) ? (size_t)json_object_get_string_len(b)
                                                         : strlen(y);
    int c = memcmp(x, y, lx < ly ? lx : ly);
    if (c != 0) {
        return c < 0 ? -1 : 1;
    }
    return lx < ly ? -1 : lx > ly;
}

/* RFC 3339 UTC: "YYYY-MM-DDTHH:MM:SS[.frac]Z"; the fraction may be absent
 * or of any length, so compare the seconds, then the fraction digit by
 * digit with missing digits as 0. */
static int cmp_timestamp(struct json_object *a, struct json_object *b)
{
    const char *x = json_object_get_string(a), *y = json_object_get_string(b);
    if (strlen(x) < 20 || strlen(y) < 20) {
        return cmp_bytes(a, b);
    }
    int c = memcmp(x, y, 19);
    if (c != 0) {
        return c < 0 ? -1 : 1;
    }
    const char *fx = x[19] == '.' ? x + 20 : "", *fy = y[19] == '.' ? y + 20 : "";
    for (;;) {
        char dx = *fx >= '0' && *fx <= '9' ? *fx++ : '0';
        char dy = *fy >= '0' && *fy <= '9' ? *fy++ : '0';
        if (dx != dy) {
            return dx < dy ? -1 : 1;
        }
        if (!(*fx >= '0' && *fx <= '9') && !(*fy >= '0' && *fy <= '9')) {
            return 0;
        }
    }
}

static int cmp_decimal(struct json_object *a, struct json_object *b)
{
    char ba[32], bb[32];
    struct dec x, y;
    if (dec_parse(num_text(a, ba, sizeof(ba)), &x) < 0 ||
        dec_parse(num_text(b, bb, sizeof(bb)), &y) < 0) {
        return cmp_bytes(a, b);
    }
    int s = x.scale > y.scale ? x.scale : y.scale;
    if (dec_rescale(&x, s) < 0 || dec_rescale(&y, s) < 0) {
        return cmp_bytes(a, b);
    }
    return x.v < y.v ? -1 : x.v > y.v;
}

int rt_value_cmp(enum rt_vtype t, struct json_object *a, struct json_object *b)
{
    if (is_null(a) || is_null(b)) {
        return is_null(a) - is_null(b); /* NULL after every value */
    }
    switch (t) {
    case RT_V_INT:
        if (json_object_is_type(a, json_type_int) && json_object_is_type(b, json_type_int)) {
            int64_t x = json_object_get_int64(a), y = json_object_get_int64(b);
            return x < y ? -1 : x > y;
        }
        return cmp_decimal(a, b);
    case RT_V_DECIMAL:
        return cmp_decimal(a, b);
    case RT_V_TIMESTAMP:
        return cmp_timestamp(a, b);
    case RT_V_BOOL:
        return json_object_get_boolean(a) - json_object_get_boolean(b);
    default:
        return cmp_bytes(a, b);
    }
}

/* ---- k-way merge -------------------------------------------------------------------- */

struct head {
    struct json_object *list;
    size_t list_no;
    size_t pos;
};

static int item_cmp(struct json_object *a, struct json_object *b, const struct rt_sort_key *keys,
                    size_t nkeys)
{
    for (size_t i = 0; i < nkeys; i++) {
        int c = rt_value_cmp(keys[i].type, json_object_object_get(a, keys[i].field),
                             json_object_object_get(b, keys[i].field));
        if (c != 0) {
            return keys[i].desc ? -c : c;
        }
    }
    return 0;
}

static int head_less(const struct head *x, const struct head *y, const struct rt_sort_key *keys,
                     size_t nkeys)
{
    int c = item_cmp(json_object_array_get_idx(x->list, x->pos),
                     json_object_array_get_idx(y->list, y->pos), keys, nkeys);
    return c != 0 ? c < 0 : x->list_no < y->list_no; /* ties: by list, deterministic */
}

static void sift_down(struct head *h, size_t n, size_t i, const struct rt_sort_key *keys,
                      size_t nkeys)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && head_less(&h[l], &h[m], keys, nkeys)) {
            m = l;
        }
        if (r < n && head_less(&h[r], &h[m], keys, nkeys)) {
            m = r;
        }
        if (m == i) {
            return;
        }
        struct head t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

size_t rt_merge_sorted(struct json_object *const *lists, size_t nlists,
                       const struct rt_sort_key *keys, size_t nkeys, size_t limit,
                       struct json_object *out, int *more)
{
    struct head *h = calloc(nlists + 1, sizeof(*h));
    size_t n = 0, taken = 0;
    for (size_t i = 0; i < nlists; i++) {
        if (json_object_is_type(lists[i], json_type_array) &&
            json_object_array_length(lists[i]) > 0) {
            h[n++] = (struct head){lists[i], i, 0};
        }
    }
    for (size_t i = n / 2; i-- > 0;) {
        sift_down(h, n, i, keys, nkeys);
    }
    while (n > 0 && taken < limit) {
        json_object_array_add(out, json_object_get(json_object_array_get_idx(h[0].list, h[0].pos)));
        taken++;
        if (++h[0].pos == json_object_array_length(h[0].list)) {
            h[0] = h[--n];
        }
        sift_down(h, n, 0, keys, nkeys);
    }
    if (more != NULL) {
        *more = n > 0;
    }
    free(h);
    return taken;
}

/* ---- aggregates ---------------------------------------------------------------------- */

struct gctx {
    const struct rt_group_key *groups;
    size_t ngroups;
};

static int group_cmp(const void *pa, const void *pb, void *arg)
{
    const struct gctx *g = arg;
    struct json_object *a = *(struct json_object *const *)pa;
    struct json_object *b = *(struct json_object *const *)pb;
    for (size_t i = 0; i < g->ngroups; i++) {
        int c = rt_value_cmp(g->groups[i].type, json_object_object_get(a, g->groups[i].field),
                             json_object_object_get(b, g->groups[i].field));
        if (c != 0) {
            return c;
        }
    }
    return 0;
}

/* Sum of the non-null `col` values of rows[0..n): into *acc; *any set when
 * one was not null. */
static int sum_col(struct json_object **rows, size_t n, const char *col, struct dec *acc, int *any,
                   char *err, size_t errlen)
{
    acc->v = 0;
    acc->scale = 0;
    *any = 0;
    for (size_t i = 0; i < n; i++) {
        struct json_object *v = json_object_object_get(rows[i], col);
        if (is_null(v)) {
            continue;
        }
        char buf[32];
        const char *t = num_text(v, buf, sizeof(buf));
        struct dec x;
        if (dec_parse(t, &x) < 0) {
            snprintf(err, errlen, "a shard returned '%.40s' for '%s', not a decimal number", t,
                     col);
            return -1;
        }
        if (dec_add(acc, &x) < 0) {
            snprintf(err, errlen, "the sum '%s' exceeds %d digits", col, DEC_MAX_DIGITS - 1);
            return -1;
        }
        *any = 1;
    }
    return 0;
}

static struct json_object *dec_json(const struct dec *d)
{
    char buf[64];
    dec_format(d, buf, sizeof(buf));
    if (d->scale == 0 && d->v <= INT64_MAX && d->v >= INT64_MIN) {
        return json_object_new_int64((int64_t)d->v);
    }
    return json_object_new_double_s(strtod(buf, NULL), buf);
}

static int merge_group(struct json_object **rows, size_t n, const struct rt_group_key *groups,
                       size_t ngroups, const struct rt_agg *aggs, size_t naggs,
                       struct json_object *out, char *err, size_t errlen)
{
    struct json_object *row = json_object_new_object();
    for (size_t g = 0; n > 0 && g < ngroups; g++) {
        struct json_object *v = json_object_object_get(rows[0], groups[g].field);
        if (!is_null(v)) {
            json_object_object_add(row, groups[g].field, json_object_get(v));
        }
    }
    for (size_t a = 0; a < naggs; a++) {
        const struct rt_agg *ag = &aggs[a];
        struct json_object *val = NULL;
        struct dec s, c;
        int any, anyc;
        switch (ag->fn) {
        case RT_AGG_COUNT:
            if (sum_col(rows, n, ag->col, &s, &any, err, errlen) < 0) {
                goto fail;
            }
            val = dec_json(&s);
            break;
        case RT_AGG_SUM:
            if (sum_col(rows, n, ag->col, &s, &any, err, errlen) < 0) {
                goto fail;
            }
            val = any ? dec_json(&s) : NULL;
            break;
        case RT_AGG_AVG:
            if (sum_col(rows, n, ag->col, &s, &any, err, errlen) < 0 ||
                sum_col(rows, n, ag->count_col, &c, &anyc, err, errlen) < 0) {
                goto fail;
            }
            if (any && c.scale == 0 && c.v > 0 && c.v <= INT64_MAX) {
                struct dec q;
                if (dec_div(&s, (int64_t)c.v, RT_AVG_SCALE, s.scale, &q) < 0) {
                    snprintf(err, errlen, "avg '%s' cannot be computed", ag->alias);
                    goto fail;
                }
                char buf[64];
                dec_format(&q, buf, sizeof(buf));
                val = json_object_new_double_s(strtod(buf, NULL), buf);
            }
            break;
        case RT_AGG_MIN:
        case RT_AGG_MAX: {
            struct json_object *best = NULL;
            for (size_t i = 0; i < n; i++) {
                struct json_object *v = json_object_object_get(rows[i], ag->col);
                if (is_null(v)) {
                    continue;
                }
                int cmp = best == NULL ? 0 : rt_value_cmp(ag->type, v, best);
                if (best == NULL || (ag->fn == RT_AGG_MIN ? cmp < 0 : cmp > 0)) {
                    best = v;
                }
            }
            val = json_object_get(best);
            break;
        }
        }
        json_object_object_add(row, ag->alias, val);
    }
    json_object_array_add(out, row);
    return 0;
fail:
    json_object_put(row);
    return -1;
}

long rt_merge_aggregates(struct json_object *const *lists, size_t nlists,
                         const struct rt_group_key *groups, size_t ngroups,
                         const struct rt_agg *aggs, size_t naggs, size_t limit,
                         struct json_object *out, char *err, size_t errlen)
{
    size_t total = 0;
    for (size_t i = 0; i < nlists; i++) {
        if (json_object_is_type(lists[i], json_type_array)) {
            total += json_object_array_length(lists[i]);
        }
    }
    struct json_object **rows = calloc(total + 1, sizeof(*rows));
    size_t n = 0;
    for (size_t i = 0; i < nlists; i++) {
        if (!json_object_is_type(lists[i], json_type_array)) {
            continue;
        }
        for (size_t k = 0; k < json_object_array_length(lists[i]); k++) {
            struct json_object *r = json_object_array_get_idx(lists[i], k);
            if (json_object_is_type(r, json_type_object)) {
                rows[n++] = r;
            }
        }
    }
    long nout = 0;
    if (ngroups == 0) { /* one row, whatever arrived */
        nout = merge_group(rows, n, groups, 0, aggs, naggs, out, err, errlen) < 0 ? -1 : 1;
        free(rows);
        return nout;
    }
    struct gctx g = {groups, ngroups};
    qsort_r(rows, n, sizeof(*rows), group_cmp, &g);
    for (size_t i = 0; i < n && (limit == 0 || (size_t)nout < limit);) {
        size_t j = i + 1;
        while (j < n && group_cmp(&rows[i], &rows[j], &g) == 0) {
            j++;
        }
        if (merge_group(rows + i, j - i, groups, ngroups, aggs, naggs, out, err, errlen) < 0) {
            free(rows);
            return -1;
        }
        nout++;
        i = j;
    }
    free(rows);
    return nout;
}
