/*
 * ad_registry.c — adapters register by name once at start-up.
 */
#include "adapters/ad.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "adapters/mongo/ad_mongo.h"
#include "adapters/mysql/ad_mysql.h"
#include "adapters/pg/ad_pg.h"
#include "adapters/redis/ad_redis.h"

#define AD_MAX 16

static const struct ad_ops *registry[AD_MAX];
static int nregistry;

int ad_register(const struct ad_ops *ops)
{
    if (ops->abi != AD_ABI || nregistry == AD_MAX || ad_lookup(ops->name) != NULL) {
        return -1; /* wrong ABI, full, or registered twice */
    }
    registry[nregistry++] = ops;
    return 0;
}

const struct ad_ops *ad_lookup(const char *name)
{
    for (int i = 0; i < nregistry; i++) {
        if (strcmp(registry[i]->name, name) == 0) {
            return registry[i];
        }
    }
    return NULL;
}

void ad_register_builtin(void)
{
    static int done;
    if (done) {
        return;
    }
    done = 1;
    (void)ad_register(&ad_redis_ops);
    (void)ad_register(&ad_pg_ops);
    (void)ad_register(&ad_mongo_ops);
    (void)ad_register(&ad_mysql_ops);
}

const char *ad_op_name(enum ad_op op)
{
    static const char *const names[] = {"get",   "put",       "insert", "patch",        "delete",
                                        "query", "aggregate", "ping",   "patch_guarded"};
    return (unsigned)op < sizeof(names) / sizeof(names[0]) ? names[op] : "?";
}

void ad_res_init(struct ad_res *res)
{
    memset(res, 0, sizeof(*res));
    res->version = -1;
}

void ad_res_error(struct ad_res *res, enum ad_status st, const char *shard, const char *fmt, ...)
{
    res->status = st;
    res->shard = shard;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof(res->message), fmt, ap);
    va_end(ap);
}
