/*
 * gw_shard.c — (backend, shard) name pairs interned as small ids.
 */
#include "gateway/gw_shard.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Append-only, published with a release store of the count.  Copied whole
 * (the config does not bound name lengths, and a cut name would never match
 * its lookup); kept for the life of the process. */
static pthread_mutex_t shard_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    const char *backend;
    const char *shard;
} shard_names[GW_MAX_SHARDS];
static int nshard;

int gw_shard_id(const char *backend, const char *shard)
{
    pthread_mutex_lock(&shard_mu);
    int id = -1;
    for (int i = 0; i < nshard; i++) {
        if (strcmp(shard_names[i].backend, backend) == 0 &&
            strcmp(shard_names[i].shard, shard) == 0) {
            id = i;
            break;
        }
    }
    if (id < 0 && nshard < GW_MAX_SHARDS) {
        char *b = strdup(backend), *s = strdup(shard);
        if (b != NULL && s != NULL) {
            shard_names[nshard].backend = b;
            shard_names[nshard].shard = s;
            id = nshard;
            __atomic_store_n(&nshard, nshard + 1, __ATOMIC_RELEASE);
        } else {
            free(b);
            free(s);
        }
    }
    pthread_mutex_unlock(&shard_mu);
    return id;
}

int gw_shard_count(void)
{
    return __atomic_load_n(&nshard, __ATOMIC_ACQUIRE);
}

const char *gw_shard_backend(int id)
{
    return id >= 0 && id < gw_shard_count() ? shard_names[id].backend : "?";
}

const char *gw_shard_name(int id)
{
    return id >= 0 && id < gw_shard_count() ? shard_names[id].shard : "?";
}
