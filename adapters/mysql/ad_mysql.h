/*
 * ad_mysql.h — MySQL / MariaDB adapter (MariaDB Connector/C non-blocking API
 * on the worker loop, a connection pool per shard).
 */
#ifndef AD_MYSQL_H
#define AD_MYSQL_H

#include "adapters/ad.h"

extern const struct ad_ops ad_mysql_ops;

struct st_mysql;

/* A BLOCKING connection to a mysql:// DSN (the rebalance mover thread and
 * map probes; never on a worker loop): connect/read/write timeouts of
 * timeout_ms.  NULL with err naming host, port and database on failure;
 * mysql_close() it. */
struct st_mysql *ad_mysql_connect_dsn(const char *dsn, int64_t timeout_ms, char *err,
                                      size_t errlen);

#endif
