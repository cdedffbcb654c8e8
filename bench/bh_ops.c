/*
 * bh_ops.c — the benchmark's operations: each one as an HTTP request to
 * polygate and as the equivalent direct store operation, doing the same
 * store-side work the gateway's adapter does (same Lua scripts, same SQL,
 * same find), so the difference between the two modes is the gateway hop.
 */
#include "bench/bh.h"

#include <stdio.h>
#include <string.h>

#define TTL_SESSION "86400" /* config/polygate.yaml sessions.ttl_s */
#define TTL_CART "2592000"  /* carts.ttl_s */
#define CART_MEMBERS 8      /* products per cart: keeps carts small */

/* ---- sessions (Redis value) ---------------------------------------------------- */

static void session_get_gw(struct bh_client *c, uint64_t k)
{
    char path[64];
    snprintf(path, sizeof(path), "/v1/sessions/s%llu", (unsigned long long)k);
    bh_http_send(c, "GET", path, NULL, 0);
}

/* sliding TTL: the adapter's GET is GETEX key EX ttl */
static void session_get_direct(struct bh_client *c, uint64_t k)
{
    char key[48];
    int n = snprintf(key, sizeof(key), "session:s%llu", (unsigned long long)k);
    const char *argv[4] = {"GETEX", key, "EX", TTL_SESSION};
    size_t argl[4] = {5, (size_t)n, 2, sizeof(TTL_SESSION) - 1};
    bh_redis_send(c, 4, argv, argl);
}

static int session_body(char *buf, size_t len, uint64_t k, uint64_t r)
{
    return snprintf(buf, len,
                    "{\"user_id\":\"u%llu\",\"data\":{\"theme\":\"dark\",\"locale\":\"en-GB\","
                    "\"currency\":\"EUR\",\"last_page\":\"/catalog/SKU-%llu\"}}",
                    (unsigned long long)k, (unsigned long long)(r % 100000));
}

static void session_put_gw(struct bh_client *c, uint64_t k)
{
    char path[64], body[256];
    snprintf(path, sizeof(path), "/v1/sessions/s%llu", (unsigned long long)k);
    int n = session_body(body, sizeof(body), k, bh_rand(c));
    bh_http_send(c, "PUT", path, body, (size_t)n);
}

/* The item the adapter stores: key and created_at added, then the script
 * appends the version. */
static void session_put_direct(struct bh_client *c, uint64_t k)
{
    char key[48], doc[384];
    int kn = snprintf(key, sizeof(key), "session:s%llu", (unsigned long long)k);
    int dn = snprintf(doc, sizeof(doc),
                      "{\"session_id\":\"s%llu\",\"user_id\":\"u%llu\",\"data\":{\"theme\":"
                      "\"dark\",\"locale\":\"en-GB\",\"currency\":\"EUR\",\"last_page\":"
                      "\"/catalog/SKU-%llu\"},\"created_at\":\"2025-01-01T00:00:00.000Z\"",
                      (unsigned long long)k, (unsigned long long)k,
                      (unsigned long long)(bh_rand(c) % 100000));
    const char *argv[8] = {"EVALSHA",  bh_redis_sha(BH_SC_PUT), "1", key, "put", "", doc,
                           TTL_SESSION};
    size_t argl[8] = {7, 40, 1, (size_t)kn, 3, 0, (size_t)dn, sizeof(TTL_SESSION) - 1};
    bh_redis_send(c, 8, argv, argl);
}

/* ---- carts (Redis hash) ----------------------------------------------------------- */

static void cart_inc_gw(struct bh_client *c, uint64_t k)
{
    char path[64], body[96];
    snprintf(path, sizeof(path), "/v1/carts/u%llu", (unsigned long long)k);
    int n = snprintf(body, sizeof(body), "{\"inc\":{\"items.SKU-%llu\":1}}",
                     (unsigned long long)(bh_rand(c) % CART_MEMBERS));
    bh_http_send(c, "PATCH", path, body, (size_t)n);
}

static void cart_inc_direct(struct bh_client *c, uint64_t k)
{
    char key[48], member[32];
    int kn = snprintf(key, sizeof(key), "cart:u%llu", (unsigned long long)k);
    int mn = snprintf(member, sizeof(member), "SKU-%llu",
                      (unsigned long long)(bh_rand(c) % CART_MEMBERS));
    const char *argv[8] = {"EVALSHA", bh_redis_sha(BH_SC_COUNTERS), "1", key, TTL_CART, "i", member,
                           "1"};
    size_t argl[8] = {7, 40, 1, (size_t)kn, sizeof(TTL_CART) - 1, 1, (size_t)mn, 1};
    bh_redis_send(c, 8, argv, argl);
}

static void cart_get_gw(struct bh_client *c, uint64_t k)
{
    char path[64];
    snprintf(path, sizeof(path), "/v1/carts/u%llu", (unsigned long long)k);
    bh_http_send(c, "GET", path, NULL, 0);
}

static void cart_get_direct(struct bh_client *c, uint64_t k)
{
    char key[48];
    int kn = snprintf(key, sizeof(key), "cart:u%llu", (unsigned long long)k);
    const char *argv[2] = {"HGETALL", key};
    size_t argl[2] = {7, (size_t)kn};
    bh_redis_send(c, 2, argv, argl);
}

/* ---- users (PostgreSQL) -------------------------------------------------------------- */

static void user_get_gw(struct bh_client *c, uint64_t k)
{
    char path[64];
    snprintf(path, sizeof(path), "/v1/users/u%llu", (unsigned long long)k);
    bh_http_send(c, "GET", path, NULL, 0);
}

/* the statement adapters/sql/sql_build.c builds for a GET on users */
static void user_get_direct(struct bh_client *c, uint64_t k)
{
    char id[32];
    snprintf(id, sizeof(id), "u%llu", (unsigned long long)k);
    const char *params[1] = {id};
    bh_pg_send(c,
               "SELECT \"id\", \"email\", \"first_name\", \"last_name\", \"created_at\", "
               "\"version\" FROM \"users\" WHERE \"id\" = $1",
               1, params);
}

/* ---- catalog (MongoDB wire) ------------------------------------------------------------ */

static void product_get_gw(struct bh_client *c, uint64_t k)
{
    char path[64];
    snprintf(path, sizeof(path), "/v1/catalog/SKU-%llu",
             (unsigned long long)(k % c->run->o->pkeys));
    bh_http_send(c, "GET", path, NULL, 0);
}

static void product_get_direct(struct bh_client *c, uint64_t k)
{
    char sku[32];
    snprintf(sku, sizeof(sku), "SKU-%llu", (unsigned long long)(k % c->run->o->pkeys));
    bh_mongo_find(c, "products", "sku", sku);
}

/* ---- orders (MariaDB, 4 shards by customer_id) ------------------------------------------ */

static const char *const statuses[5] = {"PENDING", "PROCESSING", "SHIPPED", "DELIVERED",
                                        "CANCELLED"};

#define ORDER_COLS                                                                                 \
    "`order_id`, `customer_id`, `status`, `total_amount`, `items`, `shipping_address`, "           \
    "`payment_method`, `created_at`, `version`"

static int order_body(char *buf, size_t len, const char *customer, const char *status, uint64_t r)
{
    unsigned cents = (unsigned)(r % 50000) + 100;
    return snprintf(buf, len,
                    "{\"customer_id\":\"%s\",\"status\":\"%s\",\"total_amount\":\"%u.%02u\","
                    "\"items\":[{\"product_id\":\"SKU-%u\",\"quantity\":1,\"unit_price\":"
                    "\"%u.%02u\"}],\"shipping_address\":{\"street\":\"1 Main St\",\"city\":"
                    "\"Lyon\",\"zip\":\"69001\"},\"payment_method\":\"card\"}",
                    customer, status, cents / 100, cents % 100, (unsigned)(r % 500), cents / 100,
                    cents % 100);
}

static void order_get_gw(struct bh_client *c, uint64_t k)
{
    const struct bh_opts *o = c->run->o;
    char path[96];
    uint64_t id = k % o->okeys;
    snprintf(path, sizeof(path), "/v1/orders/o%llu?customer_id=c%llu", (unsigned long long)id,
             (unsigned long long)(id % o->customers));
    bh_http_send(c, "GET", path, NULL, 0);
}

static void order_get_direct(struct bh_client *c, uint64_t k)
{
    const struct bh_opts *o = c->run->o;
    char cust[32], sql[384];
    uint64_t id = k % o->okeys;
    snprintf(cust, sizeof(cust), "c%llu", (unsigned long long)(id % o->customers));
    int shard = bh_mysql_route(cust, NULL);
    snprintf(sql, sizeof(sql), "SELECT " ORDER_COLS " FROM `orders` WHERE `order_id` = 'o%llu'",
             (unsigned long long)id);
    bh_mysql_send(c, &shard, 1, sql);
}

/* new orders go to customers nc0.. so the seeded ones stay as they are */
static void order_create_gw(struct bh_client *c, uint64_t k)
{
    char cust[32], body[512];
    uint64_t r = bh_rand(c);
    snprintf(cust, sizeof(cust), "nc%llu", (unsigned long long)(r % 100000));
    int n = order_body(body, sizeof(body), cust, "PENDING", r);
    bh_http_send(c, "POST", "/v1/orders", body, (size_t)n);
}

/* What the gateway's adapter runs for an insert: the INSERT and a re-read of
 * the row in one transaction (one round trip, multi-statement). */
static void order_create_direct(struct bh_client *c, uint64_t k)
{
    char cust[32], id[40], sql[1536];
    uint64_t r = bh_rand(c);
    snprintf(cust, sizeof(cust), "nc%llu", (unsigned long long)(r % 100000));
    snprintf(id, sizeof(id), "%016llx%016llx", (unsigned long long)bh_rand(c),
             (unsigned long long)bh_rand(c));
    uint32_t slot = 0;
    int shard = bh_mysql_route(cust, &slot);
    unsigned cents = (unsigned)(r % 50000) + 100;
    snprintf(sql, sizeof(sql),
             "START TRANSACTION; INSERT INTO `orders` (`order_id`, `customer_id`, `status`, "
             "`total_amount`, `items`, `shipping_address`, `payment_method`, `created_at`, "
             "`version`, `_slot`) VALUES ('%s', '%s', 'PENDING', '%u.%02u', "
             "'[{\"product_id\":\"SKU-%u\",\"quantity\":1,\"unit_price\":\"%u.%02u\"}]', "
             "'{\"street\":\"1 Main St\",\"city\":\"Lyon\",\"zip\":\"69001\"}', 'card', "
             "UTC_TIMESTAMP(6), 1, %u); SELECT " ORDER_COLS
             " FROM `orders` WHERE `order_id` = '%s'; COMMIT",
             id, cust, cents / 100, cents % 100, (unsigned)(r % 500), cents / 100, cents % 100,
             slot, id);
    bh_mysql_send(c, &shard, 1, sql);
}

static void order_last10_gw(struct bh_client *c, uint64_t k)
{
    char body[160];
    int n = snprintf(body, sizeof(body),
                     "{\"where\":{\"customer_id\":\"c%llu\"},\"order_by\":[\"-created_at\"],"
                     "\"limit\":10}",
                     (unsigned long long)(k % c->run->o->customers));
    bh_http_send(c, "POST", "/v1/orders/_query", body, (size_t)n);
}

static void order_last10_direct(struct bh_client *c, uint64_t k)
{
    char cust[32], sql[384];
    snprintf(cust, sizeof(cust), "c%llu", (unsigned long long)(k % c->run->o->customers));
    int shard = bh_mysql_route(cust, NULL);
    snprintf(sql, sizeof(sql),
             "SELECT " ORDER_COLS " FROM `orders` WHERE `customer_id` = '%s' "
             "ORDER BY `created_at` DESC, `order_id` LIMIT 11",
             cust);
    bh_mysql_send(c, &shard, 1, sql);
}

static void order_by_status_gw(struct bh_client *c, uint64_t k)
{
    char body[160];
    int n = snprintf(body, sizeof(body),
                     "{\"where\":{\"status\":\"%s\"},\"order_by\":[\"-created_at\"],"
                     "\"limit\":50}",
                     statuses[k % 5]);
    bh_http_send(c, "POST", "/v1/orders/_query", body, (size_t)n);
}

/* every shard of the map at once; bh_mysql keeps each row's created_at|id
 * and bh_orders_merge (below) takes the newest 50, as the gateway's merge does */
static void order_by_status_direct(struct bh_client *c, uint64_t k)
{
    char sql[384];
    int shards[16];
    int n = (int)bh_mysql_nshards();
    for (int i = 0; i < n && i < 16; i++) {
        shards[i] = i;
    }
    snprintf(sql, sizeof(sql),
             "SELECT " ORDER_COLS " FROM `orders` WHERE `status` = '%s' "
             "ORDER BY `created_at` DESC, `order_id` LIMIT 51",
             statuses[k % 5]);
    bh_mysql_send(c, shards, n < 16 ? n : 16, sql);
}

static void seed_order(struct bh_client *c, uint64_t k)
{
    const struct bh_opts *o = c->run->o;
    char cust[32], path[96], body[512];
    snprintf(cust, sizeof(cust), "c%llu", (unsigned long long)(k % o->customers));
    snprintf(path, sizeof(path), "/v1/orders/o%llu", (unsigned long long)k);
    int n = order_body(body, sizeof(body), cust, statuses[k % 5], k * 7919);
    bh_http_send(c, "PUT", path, body, (size_t)n);
}

/* ---- seeding (through polygate, keys in order) ------------------------------------------ */

static void seed_user(struct bh_client *c, uint64_t k)
{
    char path[64], body[192];
    snprintf(path, sizeof(path), "/v1/users/u%llu", (unsigned long long)k);
    int n = snprintf(body, sizeof(body),
                     "{\"email\":\"u%llu@example.com\",\"first_name\":\"Ada\","
                     "\"last_name\":\"Lovelace\"}",
                     (unsigned long long)k);
    bh_http_send(c, "PUT", path, body, (size_t)n);
}

static void seed_product(struct bh_client *c, uint64_t k)
{
    char path[64], body[512];
    snprintf(path, sizeof(path), "/v1/catalog/SKU-%llu", (unsigned long long)k);
    int n = snprintf(body, sizeof(body),
                     "{\"name\":\"Lamp %llu\",\"price\":\"%llu.90\",\"stock\":1000,"
                     "\"category\":{\"id\":\"c%llu\",\"name\":\"Lights\",\"path\":\"/home/"
                     "lights\"},\"specifications\":{\"watts\":40,\"colour\":\"white\"},"
                     "\"search_tags\":[\"lamp\",\"light\",\"home\"]}",
                     (unsigned long long)k, (unsigned long long)(k % 200 + 5),
                     (unsigned long long)(k % 20));
    bh_http_send(c, "PUT", path, body, (size_t)n);
}

/* ---- the table -------------------------------------------------------------------------- */

static const struct bh_op op_session_get = {"session_get", "GET /v1/sessions/{id} | GETEX",
                                            BH_NEED_REDIS, session_get_gw, session_get_direct};
static const struct bh_op op_session_put = {"session_put",
                                            "PUT /v1/sessions/{id} | EVALSHA put script",
                                            BH_NEED_REDIS, session_put_gw, session_put_direct};
static const struct bh_op op_cart_inc = {"cart_inc",
                                         "PATCH /v1/carts/{id} inc | EVALSHA counters script",
                                         BH_NEED_REDIS, cart_inc_gw, cart_inc_direct};
static const struct bh_op op_cart_get = {"cart_get", "GET /v1/carts/{id} | HGETALL", BH_NEED_REDIS,
                                         cart_get_gw, cart_get_direct};
static const struct bh_op op_user_get = {"user_get", "GET /v1/users/{id} | SELECT … WHERE id = $1",
                                         BH_NEED_PG, user_get_gw, user_get_direct};
static const struct bh_op op_product_get = {"product_get",
                                            "GET /v1/catalog/{sku} | find {sku} limit 1",
                                            BH_NEED_MONGO, product_get_gw, product_get_direct};
static const struct bh_op op_storefront = {"storefront",
                                           "mix: 35% product, 25% session get, 15% user, "
                                           "10% cart get, 10% cart inc, 5% session put",
                                           BH_NEED_REDIS | BH_NEED_PG | BH_NEED_MONGO, NULL, NULL};
static const struct bh_op op_order_get = {
    "order_get", "GET /v1/orders/{id}?customer_id= | SELECT by id, 1 shard", BH_NEED_MYSQL,
    order_get_gw, order_get_direct};
static const struct bh_op op_order_create = {
    "order_create", "POST /v1/orders | START TRANSACTION; INSERT; SELECT; COMMIT, 1 shard",
    BH_NEED_MYSQL, order_create_gw, order_create_direct};
static const struct bh_op op_order_last10 = {
    "order_last10", "_query customer_id, -created_at, limit 10 | SELECT … LIMIT 11, 1 shard",
    BH_NEED_MYSQL, order_last10_gw, order_last10_direct};
static const struct bh_op op_order_by_status = {
    "order_by_status", "_query status, -created_at, limit 50 | SELECT … LIMIT 51 on every shard",
    BH_NEED_MYSQL, order_by_status_gw, order_by_status_direct};
static const struct bh_op op_seed_orders = {"seed_orders", "PUT /v1/orders/o{k}", 0, seed_order,
                                            NULL};
static const struct bh_op op_seed_users = {"seed_users", "PUT /v1/users/u{k}", 0, seed_user, NULL};
static const struct bh_op op_seed_products = {"seed_products", "PUT /v1/catalog/SKU-{k}", 0,
                                              seed_product, NULL};
static const struct bh_op op_seed_sessions = {"seed_sessions", "PUT /v1/sessions/s{k}", 0,
                                              session_put_gw, NULL};
static const struct bh_op op_seed_carts = {"seed_carts", "PATCH /v1/carts/u{k}", 0, cart_inc_gw,
                                           NULL};

const struct bh_op *const bh_ops_all[] = {&op_session_get,
                                          &op_session_put,
                                          &op_cart_inc,
                                          &op_cart_get,
                                          &op_user_get,
                                          &op_product_get,
                                          &op_storefront,
                                          &op_seed_sessions,
                                          &op_seed_carts,
                                          &op_seed_users,
                                          &op_seed_products,
                                          &op_order_get,
                                          &op_order_create,
                                          &op_order_last10,
                                          &op_order_by_status,
                                          &op_seed_orders,
                                          NULL};

const struct bh_op *const bh_seed_ops[] = {&op_seed_sessions, &op_seed_carts,  &op_seed_users,
                                           &op_seed_products, &op_seed_orders, NULL};

#define X5(o) o, o, o, o, o
const struct bh_op *const bh_mix_storefront[100] = {
    X5(&op_product_get), X5(&op_product_get), X5(&op_product_get), X5(&op_product_get),
    X5(&op_product_get), X5(&op_product_get), X5(&op_product_get), /* 35 */
    X5(&op_session_get), X5(&op_session_get), X5(&op_session_get), X5(&op_session_get),
    X5(&op_session_get),                                        /* 25 */
    X5(&op_user_get),    X5(&op_user_get),    X5(&op_user_get), /* 15 */
    X5(&op_cart_get),    X5(&op_cart_get),                      /* 10 */
    X5(&op_cart_inc),    X5(&op_cart_inc),                      /* 10 */
    X5(&op_session_put),                                        /* 5 */
};

const struct bh_op *bh_op_find(const char *name)
{
    for (int i = 0; bh_ops_all[i] != NULL; i++) {
        if (strcmp(bh_ops_all[i]->name, name) == 0) {
            return bh_ops_all[i];
        }
    }
    return NULL;
}
