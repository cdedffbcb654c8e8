/*
 * ad_pg.h — PostgreSQL adapter (libpq, fully non-blocking on the worker loop).
 */
#ifndef AD_PG_H
#define AD_PG_H

#include "adapters/ad.h"

extern const struct ad_ops ad_pg_ops;

#endif
