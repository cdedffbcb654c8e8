/*
 * bh_redis.c — direct mode for Redis: one hiredis async connection per bench
 * client, attached to the loop with hiredis' libevent adapter.  The Lua
 * scripts are the Redis adapter's own (adapters/redis/ad_redis.c), so the
 * direct mode asks the server for exactly the work the gateway asks for.
 */
#include "bench/bh.h"

#include <stdio.h>
#include <string.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

/* Same text as adapters/redis/ad_redis.c script_put: write a value item,
 * KEYS[1]; ARGV mode, expected version, item JSON without its closing brace, ttl. */
static const char script_put[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "local v = 0\n"
    "if cur then v = tonumber(string.match(cur, '\"version\":(%d+)}$')) or 0 end\n"
    "if ARGV[1] == 'insert' and cur then return {-409, v} end\n"
    "if ARGV[2] ~= '' and (not cur or tonumber(ARGV[2]) ~= v) then return {-412, v} end\n"
    "v = v + 1\n"
    "local sep = ','\n"
    "if ARGV[3] == '{' then sep = '' end\n"
    "local doc = ARGV[3] .. sep .. '\"version\":' .. v .. '}'\n"
    "if ARGV[4] ~= '0' then redis.call('SET', KEYS[1], doc, 'EX', ARGV[4])\n"
    "else redis.call('SET', KEYS[1], doc) end\n"
    "local created = 0\n"
    "if not cur then created = 1 end\n"
    "return {v, created, doc}\n";

/* Same text as ad_redis.c script_counters. */
static const char script_counters[] =
    "local k = KEYS[1]\n"
    "local vals, cleared = {}, false\n"
    "local function get(f)\n"
    "  if vals[f] ~= nil then return vals[f] end\n"
    "  if cleared then return 0 end\n"
    "  return tonumber(redis.call('HGET', k, f) or '0')\n"
    "end\n"
    "for i = 2, #ARGV, 3 do\n"
    "  local op, f, n = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2])\n"
    "  if op == 'c' then vals = {}; cleared = true\n"
    "  elseif op == 'd' then vals[f] = 0\n"
    "  elseif op == 's' then vals[f] = n\n"
    "  else\n"
    "    local r = get(f) + n\n"
    "    if r < 0 then return {-409, f, get(f)} end\n"
    "    vals[f] = r\n"
    "  end\n"
    "end\n"
    "if cleared then redis.call('DEL', k) end\n"
    "for f, n in pairs(vals) do\n"
    "  if n == 0 then redis.call('HDEL', k, f) else redis.call('HSET', k, f, n) end\n"
    "end\n"
    "if tonumber(ARGV[1]) > 0 and redis.call('EXISTS', k) == 1 then\n"
    "  redis.call('EXPIRE', k, ARGV[1])\n"
    "end\n"
    "return redis.call('HGETALL', k)\n";

static char g_sha[BH_SC_N][41];

int bh_redis_load_scripts(const struct bh_opts *o)
{
    struct timeval tv = {2, 0};
    redisContext *rc = redisConnectWithTimeout(o->redis_host, o->redis_port, tv);
    if (rc == NULL || rc->err) {
        fprintf(stderr, "bench: redis %s:%d: %s\n", o->redis_host, o->redis_port,
                rc ? rc->errstr : "out of memory");
        redisFree(rc);
        return -1;
    }
    const char *src[BH_SC_N] = {script_put, script_counters};
    int rcode = 0;
    for (int i = 0; i < BH_SC_N; i++) {
        redisReply *r = redisCommand(rc, "SCRIPT LOAD %s", src[i]);
        if (r == NULL || r->type != REDIS_REPLY_STRING || r->len != 40) {
            fprintf(stderr, "bench: redis SCRIPT LOAD failed\n");
            rcode = -1;
        } else {
            memcpy(g_sha[i], r->str, 41);
        }
        if (r != NULL) {
            freeReplyObject(r);
        }
    }
    redisFree(rc);
    return rcode;
}

const char *bh_redis_sha(int script)
{
    return g_sha[script];
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK) {
        fprintf(stderr, "bench: redis connect: %s\n", ac->errstr);
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct bh_client *c = ac->data;
    if (c != NULL) {
        c->redis = NULL;
    }
}

int bh_redis_open(struct bh_client *c)
{
    const struct bh_opts *o = c->run->o;
    redisAsyncContext *ac = redisAsyncConnect(o->redis_host, o->redis_port);
    if (ac == NULL || ac->err) {
        fprintf(stderr, "bench: redis: %s\n", ac ? ac->errstr : "out of memory");
        if (ac != NULL) {
            redisAsyncFree(ac);
        }
        return -1;
    }
    ac->data = c;
    redisLibeventAttach(ac, c->run->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->redis = ac;
    return 0;
}

void bh_redis_close(struct bh_client *c)
{
    if (c->redis != NULL) {
        redisAsyncContext *ac = c->redis;
        ac->data = NULL;
        c->redis = NULL;
        redisAsyncFree(ac);
    }
}

static void on_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct bh_client *c = priv;
    redisReply *rep = r;
    if (rep == NULL) {
        bh_complete(c, 0, "redis: connection lost");
    } else if (rep->type == REDIS_REPLY_ERROR) {
        char why[160];
        snprintf(why, sizeof(why), "redis: %.140s", rep->str);
        bh_complete(c, 0, why);
    } else if (rep->type == REDIS_REPLY_NIL) {
        bh_complete(c, 0, "redis: key not found");
    } else {
        bh_complete(c, 1, NULL);
    }
}

void bh_redis_send(struct bh_client *c, int argc, const char **argv, const size_t *argl)
{
    if (c->redis == NULL ||
        redisAsyncCommandArgv(c->redis, on_reply, c, argc, argv, argl) != REDIS_OK) {
        bh_complete(c, 0, "redis: no connection");
    }
}
