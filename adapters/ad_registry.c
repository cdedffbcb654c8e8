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
#include "config/cf_config.h"

#define AD_MAX 16

static const struct ad_ops *registry[AD_MAX];
static int nregistry;

/* The config asks the registry, through cf_adapter_checks, which backend
 * types exist and whether a store can serve a domain: config/ stays below
 * adapters/ and never includes them. */
static int type_known(const char *type)
{
    return ad_lookup(type) != NULL;
}

static int check_domain(const struct cf_backend *be, const struct cf_domain *d, char *err,
                        size_t errlen)
{
    const struct ad_ops *ops = ad_lookup(be->type);
    return ops != NULL && ops->check_domain != NULL ? ops->check_domain(be, d, err, errlen) : 0;
}

static const struct cf_adapter_checks config_checks = {type_known, check_domain};

int ad_register(const struct ad_ops *ops)
{
    if (ops->abi != AD_ABI || nregistry == AD_MAX || ad_lookup(ops->name) != NULL) {
        return -1; /* wrong ABI, full, or registered twice */
    }
    registry[nregistry++] = ops;
    cf_config_set_adapter_checks(&config_checks);
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
    static const char *const names[] = {"get",    "put",   "insert",    "patch",
                                        "delete", "query", "aggregate", "ping"};
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
