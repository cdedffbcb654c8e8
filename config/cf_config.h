/*
 * cf_config.h — the gateway's configuration, parsed from YAML (or JSON).
 *
 * A config is an immutable, reference-counted snapshot: workers hold a
 * reference while they use it; a reload builds a new one and swaps it in.
 */
#ifndef CF_CONFIG_H
#define CF_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "config/cf_auth.h"

struct rt_shardmap;
struct rt_live;

enum cf_type {
    CF_T_STRING,
    CF_T_INT,
    CF_T_DECIMAL, /* exact; digits kept as text, JSON number on the wire */
    CF_T_BOOL,
    CF_T_TIMESTAMP, /* RFC 3339, stored and returned in UTC */
    CF_T_OBJECT,
    CF_T_ARRAY,
    CF_T_JSON,     /* any JSON value */
    CF_T_ENUM,     /* a string out of `values` */
    CF_T_COUNTERS, /* object of name -> non-negative int (carts' items) */
};

struct cf_field {
    char *name;
    enum cf_type type;
    int required;
    int unique;
    int indexed;
    int scale;      /* decimals: digits after the point (-1 = free) */
    int precision;  /* decimals: total digits */
    size_t max_len; /* strings: maximum length in bytes (0 = limits.max_string) */
    char **values;  /* enums */
    size_t nvalues;
    struct json_object *item_schema; /* arrays/objects: optional nested field list (as JSON) */
    int auto_created;                /* timestamps: set to now on create when absent */
};

enum cf_store_kind {
    CF_KIND_RECORD, /* a row / document with typed fields (pg, mysql, mongo) */
    CF_KIND_VALUE,  /* redis: the item stored as one JSON value under its key */
    CF_KIND_HASH,   /* redis: a hash of counters per key (carts) */
};

struct cf_domain {
    char *name;
    char *backend_name;
    struct cf_backend *backend;
    enum cf_store_kind kind;
    char *table;          /* table / collection / key prefix */
    char *key;            /* key field name */
    int key_generated;    /* generate the key when absent on insert */
    char *shard_key;      /* NULL: not sharded */
    char *counters_field; /* CF_KIND_HASH: the field holding the counters ("items") */
    int64_t ttl_s;        /* redis: expiry in seconds (0 = none) */
    int sliding_ttl;      /* redis value: a GET refreshes the TTL */
    int versioned;        /* items carry a `version` */
    int auto_migrate;
    int64_t timeout_ms; /* per-request deadline (0 = limits.request_timeout_ms) */
    struct cf_field *fields;
    size_t nfields;
};

struct cf_shard {
    char *name;
    char *dsn;
    int weight;
};

struct cf_pool {
    int min;
    int max;
    int64_t connect_timeout_ms;
    int queue_max;          /* bounded wait queue per shard: beyond it → 503 */
    int64_t backoff_min_ms; /* reconnect backoff */
    int64_t backoff_max_ms;
};

struct cf_backend {
    char *name;
    char *type; /* adapter name */
    struct cf_shard *shards;
    size_t nshards;
    struct cf_pool pool;
    char *shard_map_path; /* sharded backends: the shard map file (resolved path) */
    /* The shard map (routing/rt_shardmap.h), one reference owned by the
     * config: loaded from shard_map_path, or built from a one-shard `shards`
     * list when a sharded domain lives there; NULL otherwise.  `shards` is
     * filled from it, in the map's order (a shard's index is the same in
     * both). */
    struct rt_shardmap *map;
    /* While a rebalance moves this backend's slots (docs/rebalancing.md): the
     * live slot table routing reads instead of the map (one reference, set
     * by the server before the config is posted to workers); NULL otherwise.
     * `map` then lists the union of the old and new maps' shards. */
    struct rt_live *live;
    struct json_object *options; /* adapter-specific, borrowed by adapters */
    char *signature;             /* equal signatures: the same backend (reuse across reload) */
};

struct cf_limits {
    size_t max_body;    /* → 413 */
    size_t max_headers; /* → 431/400 (libevent answers 400) */
    int max_json_depth; /* → 400 */
    size_t max_string;  /* longest string value accepted */
    int max_batch;      /* items in one _batch */
    int max_in;         /* items in one in/nin list */
    int max_limit;      /* largest `limit` */
    int64_t request_timeout_ms;
    int64_t idle_timeout_s;         /* keep-alive idle connections are closed after it */
    int64_t request_read_timeout_s; /* a request must arrive whole within it → 408 */
    size_t max_url;                 /* → 414 */
    int max_header_count;           /* → 431 */
    int max_inflight;               /* requests in flight in the process → 503 */
    int max_connections;            /* client connections in the process → 503 + close */
    /* query complexity (_query / _aggregate filters), each → 400 naming it */
    int max_query_conditions;       /* leaf conditions in one where */
    int max_query_depth;            /* and/or nesting levels */
    size_t max_filter_bytes;        /* names and values of one where, summed */
    int max_prefix_conditions;      /* prefix conditions in one where */
    size_t max_prefix_bytes;        /* the longest prefix value */
    size_t max_output;              /* unsent response bytes of a connection: reading stops */
    int64_t output_drain_timeout_s; /* output above max_output longer than this → close */
    size_t max_response_bytes;      /* one answer's body → 400 response_too_large */
    int max_inflight_per_key;       /* requests in flight per API key → 429 (0 = no limit) */
};

/* circuit_breaker: per backend shard (gateway/gw_breaker.h) */
struct cf_breaker {
    int failures;    /* consecutive failures that open the circuit (0 = off) */
    int64_t open_ms; /* how long it fails fast before a half-open probe */
};

/* idempotency: the Idempotency-Key store (gateway/gw_idempotency.h) */
struct cf_idempotency {
    int64_t ttl_s;
    size_t max_entries;
    size_t max_bytes;
};

/* control: the fleet's control store (docs/fleet.md).  Without `etcd` the
 * gateway runs alone: shard maps and rebalance state in local files, the
 * Idempotency-Key store and rate limits in the process. */
struct cf_control {
    char *etcd_host; /* etcd's v3 HTTP/JSON gateway; NULL: no control store */
    int etcd_port;
    char *prefix;        /* every key under it; default "/polygate/default" */
    char *instance;      /* this instance's id; default "<hostname>:<listen port>" */
    int64_t lease_ttl_s; /* registration lease: a silent instance leaves after it */
    char *redis;         /* "redis://host:port[/db]": the fleet's shared Idempotency-Key
                          * store and rate limits; required with etcd */
};

struct cf_config {
    int refcount; /* atomic */
    char *path;
    char *listen_host;
    int listen_port;
    char *admin_host;
    int admin_port;
    int workers;
    int64_t shutdown_timeout_ms;
    char *log_level;
    char *access_log; /* "stderr", "off" or a file path (gateway/gw_accesslog.h) */
    struct cf_breaker breaker;
    struct cf_idempotency idempotency;
    struct cf_control control;
    char *tls_cert; /* client listener TLS (both set or both NULL; restart to change) */
    char *tls_key;
    char *cursor_secret;         /* HMAC key material for _query cursors (md_query.h) */
    int cursor_secret_generated; /* not configured: random, drawn once per process */
    struct cf_limits limits;
    struct cf_auth auth;
    struct cf_backend *backends;
    size_t nbackends;
    struct cf_domain *domains;
    size_t ndomains;
};

/* What only the adapters know, asked while a config loads: is `type` a store
 * built into this binary, and can that store serve domain d (key kinds, field
 * types, …; 0, or -1 with err filled).  The adapter registry installs them
 * when an adapter registers (adapters/ad_registry.c), so the config never
 * includes adapters/; until then no backend type is known and every load
 * fails on its first backend. */
struct cf_adapter_checks {
    int (*type_known)(const char *type);
    int (*check_domain)(const struct cf_backend *be, const struct cf_domain *d, char *err,
                        size_t errlen);
};
void cf_config_set_adapter_checks(const struct cf_adapter_checks *checks);

/* Load and validate a config file; NULL with err filled on failure. */
struct cf_config *cf_config_load(const char *path, char *err, size_t errlen);
/* Same, with the shard map of backend `backend` taken from map_doc (only
 * read) instead of its shard_map file (PUT /admin/shardmap validates a map
 * this way before it writes the file). */
struct cf_config *cf_config_load_with_map(const char *path, const char *backend,
                                          struct json_object *map_doc, char *err, size_t errlen);
/* Same, from an already parsed JSON tree (tests). */
struct cf_config *cf_config_from_json(struct json_object *root, const char *path, char *err,
                                      size_t errlen);

struct cf_config *cf_config_ref(struct cf_config *cf);
void cf_config_unref(struct cf_config *cf);

const struct cf_domain *cf_domain_find(const struct cf_config *cf, const char *name, size_t len);
const struct cf_field *cf_field_find(const struct cf_domain *d, const char *name);
const char *cf_type_name(enum cf_type t);

#endif
