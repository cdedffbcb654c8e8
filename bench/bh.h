/*
 * bh.h — polygate-bench: shared types of the load generator.
 *
 * One event loop drives N concurrent clients.  A client runs one operation at
 * a time: it issues it through a driver (HTTP to polygate, or a store's
 * native async client), the driver calls bh_complete() on the loop thread
 * when the answer is in, and the client issues its next operation until the
 * run ends.  Latency is measured per operation from issue to completion.
 */
#ifndef BH_H
#define BH_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "bench/bh_hist.h"

enum bh_mode { BH_GW, BH_DIRECT };

/* Options of a run (bh_main.c fills them from the command line). */
struct bh_opts {
    const char *gw_host;
    int gw_port;
    const char *redis_host;
    int redis_port;
    const char *pg_dsn;
    const char *mongo_uri;
    const char *mongo_db;
    int conns;       /* concurrent clients */
    double duration; /* seconds measured (0 = use count) */
    double warmup;   /* seconds before measuring */
    uint64_t count;  /* operations to complete (0 = use duration) */
    uint64_t keys;   /* key space: s0.., u0.. */
    uint64_t pkeys;  /* products SKU-0.. (fewer: FerretDB writes are slow) */
    int pid;         /* gateway pid for CPU / memory figures (0 = none) */
    uint64_t okeys;  /* seeded orders o0.. over customers c0..c(customers-1) */
    uint64_t customers;
    const char *shardmap; /* the orders shard map polygate runs with */
};

struct bh_client;
struct bh_http_conn;
struct bh_pg_conn;
struct bh_mongo_pool;
struct bh_my_conn;
struct redisAsyncContext;

/* One operation.  `http` appends the request (without Host/Content-Length
 * framing, see bh_http_send) for key k; `direct` issues the equivalent store
 * operation.  Both end in exactly one bh_complete(). */
struct bh_op {
    const char *name;
    const char *what; /* one line for the report */
    unsigned needs;   /* BH_NEED_* of the direct mode */
    void (*gw)(struct bh_client *c, uint64_t k);
    void (*direct)(struct bh_client *c, uint64_t k);
};

#define BH_NEED_REDIS 1u
#define BH_NEED_PG 2u
#define BH_NEED_MONGO 4u
#define BH_NEED_MYSQL 8u

/* The whole run (one operation or mix in one mode). */
struct bh_run {
    struct event_base *base;
    const struct bh_opts *o;
    enum bh_mode mode;
    const struct bh_op *op;         /* NULL for the mix */
    const struct bh_op *const *mix; /* weighted table of 100 entries for the mix */
    int sequential;                 /* keys 0,1,2,… (seeding) instead of random */
    uint64_t next_seq;
    int measuring, stopping;
    uint64_t t_measure_start, t_measure_end; /* ns, CLOCK_MONOTONIC */
    uint64_t issued, done_measured, errors, errors_total;
    int inflight;
    int reconnects;
    struct bh_hist hist;
    struct bh_mongo_pool *mongo;
    struct bh_client *clients;
    char last_error[256];
};

struct bh_client {
    struct bh_run *run;
    int idx;
    uint64_t rng;
    uint64_t t_start;
    int busy;
    int issuing, sync_done; /* a driver completed inside the issue call */
    struct bh_http_conn *http;
    struct redisAsyncContext *redis;
    struct bh_pg_conn *pg;
    struct bh_my_conn **my; /* one per shard of the orders map */
    int my_pending, my_failed;
    char my_why[160];
    /* scatter-gather: the sort keys of the rows every shard returned */
    char (*rows)[48];
    int nrows;
};

uint64_t bh_now_ns(void);
uint64_t bh_rand(struct bh_client *c);
/* The operation issued by c has finished (ok = the expected answer). */
void bh_complete(struct bh_client *c, int ok, const char *why);

/* ---- drivers ---------------------------------------------------------------- */

/* HTTP/1.1 keep-alive client to polygate (bh_http.c). */
int bh_http_open(struct bh_client *c);
void bh_http_close(struct bh_client *c);
/* Send METHOD PATH with an optional JSON body (NULL = none). */
void bh_http_send(struct bh_client *c, const char *method, const char *path, const char *body,
                  size_t bodylen);
/* Idle-connection test: open n keep-alive connections, hold them, measure the
 * gateway's resident memory and check a sample still answers. */
int bh_http_idle(const struct bh_opts *o, int n, double hold_s, int sample);

/* Redis through hiredis async + its libevent adapter (bh_redis.c). */
int bh_redis_open(struct bh_client *c);
void bh_redis_close(struct bh_client *c);
/* Load the adapter's Lua scripts (blocking, once before a run). */
int bh_redis_load_scripts(const struct bh_opts *o);
enum { BH_SC_PUT, BH_SC_COUNTERS, BH_SC_N };
const char *bh_redis_sha(int script);
void bh_redis_send(struct bh_client *c, int argc, const char **argv, const size_t *argl);

/* PostgreSQL through libpq, non-blocking on the loop (bh_pg.c). */
int bh_pg_open(struct bh_client *c);
void bh_pg_close(struct bh_client *c);
void bh_pg_send(struct bh_client *c, const char *sql, int nparams, const char *const *params);

/* MongoDB wire through mongo-c-driver: one client per thread, one thread per
 * concurrent bench client, completions posted back to the loop (bh_mongo.c). */
struct bh_mongo_pool *bh_mongo_start(struct bh_run *run, int nthreads);
void bh_mongo_stop(struct bh_mongo_pool *p);
/* find {field: value} limit 1 in collection coll. */
void bh_mongo_find(struct bh_client *c, const char *coll, const char *field, const char *value);

/* MariaDB/MySQL through Connector/C's non-blocking API on the loop: one
 * connection per bench client and shard, routed with the gateway's own shard
 * map code (routing/rt_shardmap.c) (bh_mysql.c). */
int bh_mysql_load_map(const char *path);
size_t bh_mysql_nshards(void);
/* The shard of a customer and the slot its rows store. */
int bh_mysql_route(const char *customer, uint32_t *slot);
int bh_mysql_open(struct bh_client *c);
void bh_mysql_close(struct bh_client *c);
/* Send sql (one or more statements) to each listed shard at once; the
 * operation completes when all have answered.  Rows whose first column is
 * selected are kept in c->rows (at most 64 per shard) for a merge. */
void bh_mysql_send(struct bh_client *c, const int *shards, int nshards, const char *sql);
/* Append s escaped for a quoted literal (keys here are plain ASCII). */
size_t bh_mysql_escape(char *out, size_t outlen, const char *s);

/* ---- operations (bh_ops.c) --------------------------------------------------- */

const struct bh_op *bh_op_find(const char *name);
extern const struct bh_op *const bh_ops_all[];
extern const struct bh_op *const bh_mix_storefront[100];
extern const struct bh_op *const bh_seed_ops[];

#endif
