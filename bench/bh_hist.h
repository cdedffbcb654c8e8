/*
 * bh_hist.h — a small HdrHistogram-style log-linear latency histogram.
 *
 * Values (nanoseconds) below 128 have their own bucket; above, every power of
 * two is split into 64 linear sub-buckets, so any recorded value is reported
 * within 1/64 (1.6 %) of itself.  Fixed size (no allocation), values up to
 * 2^40 ns (about 18 minutes); the exact minimum and maximum are kept aside.
 */
#ifndef BH_HIST_H
#define BH_HIST_H

#include <stdint.h>

#define BH_HIST_SUB 64    /* linear sub-buckets per power of two */
#define BH_HIST_MAXEXP 34 /* 2^(34+6) ns ≈ 18 min */
#define BH_HIST_NBUCKETS ((BH_HIST_MAXEXP + 2) * BH_HIST_SUB)

struct bh_hist {
    uint64_t count;
    uint64_t min, max; /* exact */
    double sum;
    uint64_t buckets[BH_HIST_NBUCKETS];
};

void bh_hist_init(struct bh_hist *h);
void bh_hist_record(struct bh_hist *h, uint64_t ns);
void bh_hist_merge(struct bh_hist *into, const struct bh_hist *from);
/* The value at quantile q (0..1): the highest value equivalent to the bucket
 * holding it (as HdrHistogram reports), clamped to the exact maximum; 0 when
 * empty. */
uint64_t bh_hist_quantile(const struct bh_hist *h, double q);

#endif
