/*
 * ad_mongo.h — the MongoDB adapter (mongo-c-driver on a thread pool).
 *
 * Serves `record` domains as documents of one collection per domain, keyed
 * by the domain's key field (unique index created by auto_migrate).  The
 * driver is blocking, so every call runs on a small per-worker thread pool
 * (lib/lb_workq.h) over a mongoc_client_pool_t per shard; the
 * completion is handed back to the worker's loop, so the adapter honours the
 * contract of adapters/ad.h like the non-blocking ones.
 *
 * Backend settings:
 *   pool.max         threads per worker, and clients per shard (default 4)
 *   pool.queue_max   requests waiting for a thread; beyond it → 503
 *   pool.connect_timeout_ms   connectTimeoutMS unless the DSN/options set it
 *   options:         serverSelectionTimeoutMS, socketTimeoutMS,
 *                    connectTimeoutMS, heartbeatFrequencyMS (override the DSN)
 *
 * Decimals are stored as 64-bit integers scaled by 10^scale (exact, and they
 * sort and compare numerically, which a string would not); FerretDB 1.x does
 * not accept Decimal128.  They come back as JSON numbers with `scale` digits.
 */
#ifndef AD_MONGO_H
#define AD_MONGO_H

#include "adapters/ad.h"

extern const struct ad_ops ad_mongo_ops;

#endif
