/*
 * bh_hist.c — log-linear latency histogram (see bh_hist.h).
 */
#include "bench/bh_hist.h"

#include <string.h>

static unsigned bucket_of(uint64_t v)
{
    if (v < 2 * BH_HIST_SUB) {
        return (unsigned)v;
    }
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned e = msb - 6u; /* v >> e is in [64, 128) */
    if (e > BH_HIST_MAXEXP) {
        return BH_HIST_NBUCKETS - 1;
    }
    return e * BH_HIST_SUB + (unsigned)(v >> e);
}

/* The highest value that lands in bucket i. */
static uint64_t bucket_top(unsigned i)
{
    if (i < 2 * BH_HIST_SUB) {
        return i;
    }
    unsigned e = i / BH_HIST_SUB - 1u;
    uint64_t sub = i - e * BH_HIST_SUB;
    return ((sub + 1) << e) - 1;
}

void bh_hist_init(struct bh_hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

void bh_hist_record(struct bh_hist *h, uint64_t ns)
{
    h->buckets[bucket_of(ns)]++;
    h->count++;
    h->sum += (double)ns;
    if (ns < h->min) {
        h->min = ns;
    }
    if (ns > h->max) {
        h->max = ns;
    }
}

void bh_hist_merge(struct bh_hist *into, const struct bh_hist *from)
{
    for (unsigned i = 0; i < BH_HIST_NBUCKETS; i++) {
        into->buckets[i] += from->buckets[i];
    }
    into->count += from->count;
    into->sum += from->sum;
    if (from->min < into->min) {
        into->min = from->min;
    }
    if (from->max > into->max) {
        into->max = from->max;
    }
}

uint64_t bh_hist_quantile(const struct bh_hist *h, double q)
{
    if (h->count == 0) {
        return 0;
    }
    if (q >= 1.0) {
        return h->max;
    }
    /* the rank of the q-quantile, 1-based, at least 1 */
    uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999);
    if (rank == 0) {
        rank = 1;
    }
    uint64_t seen = 0;
    for (unsigned i = 0; i < BH_HIST_NBUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t v = bucket_top(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}
