/*
 * rt_merge.h — scatter-gather merging: per-shard results → one result.
 *
 * Pure functions over json-c values (no I/O, no config): the gateway's
 * scatter layer (gateway/gw_scatter.c) fans a _query/_aggregate out to the
 * shards and hands their item arrays here.
 *
 *  - rt_merge_sorted: k-way heap merge of per-shard item lists, each already
 *    sorted by the same keys (the query's order_by, ending with the item key
 *    as the tiebreak), keeping the first `limit`.  O(n log k).
 *  - rt_merge_aggregates: per-shard partial aggregates (count, sum, min, max;
 *    avg as a sum and a count) combined per group, groups in ascending
 *    group-key order.  Decimal sums are exact (128-bit fixed point on the
 *    digits' text, never a binary float).
 *
 * Value order (must match what every shard's store does, or a merge of
 * sorted lists is not sorted): numbers and decimals numerically, timestamps
 * chronologically (RFC 3339 UTC text, fraction optional), strings and enums
 * by bytes — i.e. code points for UTF-8 (PostgreSQL "C" collation, MySQL
 * utf8mb4_bin), false < true, and NULL (JSON null or an absent member) after
 * every value: NULLS LAST ascending, NULLS FIRST descending.
 */
#ifndef RT_MERGE_H
#define RT_MERGE_H

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

enum rt_vtype {
    RT_V_STRING, /* also enums */
    RT_V_INT,
    RT_V_DECIMAL,
    RT_V_TIMESTAMP,
    RT_V_BOOL,
};

/* <0, 0, >0 as a sorts before, with, after b ascending (NULL = largest). */
int rt_value_cmp(enum rt_vtype t, struct json_object *a, struct json_object *b);

struct rt_sort_key {
    const char *field; /* member name in the items */
    enum rt_vtype type;
    int desc;
};

/* Merge `nlists` arrays of items (NULL entries are skipped: shards that
 * failed), appending the first `limit` items in merged order to `out` (a
 * JSON array; references are taken).  *more (may be NULL) is set to 1 when
 * items remained unconsumed after the limit.  Returns the number appended. */
size_t rt_merge_sorted(struct json_object *const *lists, size_t nlists,
                       const struct rt_sort_key *keys, size_t nkeys, size_t limit,
                       struct json_object *out, int *more);

enum rt_agg_fn { RT_AGG_COUNT, RT_AGG_SUM, RT_AGG_MIN, RT_AGG_MAX, RT_AGG_AVG };

struct rt_agg {
    const char *alias; /* output member */
    enum rt_agg_fn fn;
    enum rt_vtype type;    /* of the aggregated field (min/max order; sum/avg: INT or DECIMAL) */
    const char *col;       /* per-shard member: the count / sum / min / max (avg: the sum) */
    const char *count_col; /* avg only: the per-shard count of non-null values */
};

struct rt_group_key {
    const char *field;
    enum rt_vtype type;
};

/* Digits after the point of a merged avg before trailing zeros are trimmed
 * (never below the sum's own scale).  Rounding: half away from zero. */
#define RT_AVG_SCALE 16

/* Merge per-shard aggregate rows (each row: the group fields and the
 * per-shard columns of `aggs`).  Appends to `out` the merged rows — group
 * fields plus one member per alias — in ascending group order (NULL last),
 * at most `limit` of them (0: all).  Without group keys there is exactly one
 * row, also when no shard answered (count 0, other aggregates null).
 * Returns the number of rows, or -1 with err (a sum beyond 36 digits, a
 * malformed number from a store). */
long rt_merge_aggregates(struct json_object *const *lists, size_t nlists,
                         const struct rt_group_key *groups, size_t ngroups,
                         const struct rt_agg *aggs, size_t naggs, size_t limit,
                         struct json_object *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Exact decimal text arithmetic (exposed for tests): a + b, and a / n
 * rounded half away from zero to `scale` digits (trailing zeros trimmed down
 * to min_scale).  0, or -1 on malformed input or overflow (38 digits). */
int rt_dec_add(const char *a, const char *b, char *out, size_t outlen)
    __attribute__((warn_unused_result));
int rt_dec_div(const char *a, int64_t n, int scale, int min_scale, char *out, size_t outlen)
    __attribute__((warn_unused_result));

#endif
