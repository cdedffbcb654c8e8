/*
 * gw_shard.h — (backend, shard) name pairs interned as small ids.
 *
 * Metrics and circuit breakers keep per-shard state in arrays indexed by
 * these ids; both read the names back for labels and log lines.  Interning
 * takes a mutex (config time, not per request); the table is append-only and
 * lives for the process, so ids stay valid across reloads.
 */
#ifndef GW_SHARD_H
#define GW_SHARD_H

#define GW_MAX_SHARDS 128 /* interned (backend, shard) pairs */

int gw_shard_id(const char *backend, const char *shard); /* -1 when the table is full */
const char *gw_shard_backend(int id);                    /* "?" for an unknown id */
const char *gw_shard_name(int id);
int gw_shard_count(void);

#endif
