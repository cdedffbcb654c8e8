/*
 * ad_redis.h — the Redis adapter (hiredis async on the worker's loop).
 *
 * Serves `value` domains (the item is one JSON string under prefix+key, the
 * gateway-managed version its last member) and `hash` domains (a Redis hash
 * of counters per key, e.g. carts).  Writes that must be atomic run as Lua
 * scripts (EVALSHA, EVAL on NOSCRIPT).
 */
#ifndef AD_REDIS_H
#define AD_REDIS_H

#include "adapters/ad.h"

extern const struct ad_ops ad_redis_ops;

#endif
