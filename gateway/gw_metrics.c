/*
 * gw_metrics.c — per-worker counters, summed into Prometheus text at scrape.
 */
#include "gateway/gw_metrics.h"

#include <dirent.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "gateway/gw_breaker.h"
#include "gateway/gw_http.h"
#include "gateway/gw_idempotency.h"
#include "gateway/gw_shard.h"
#include "gateway/gw_shared.h"
#include "lib/lb_util.h"
#include "routing/rt_shardmap.h"

/* ---- label tables --------------------------------------------------------------- */

static const int statuses[] = {200, 201, 204, 400, 401, 403, 404, 405, 408, 409,
                               412, 413, 414, 422, 429, 431, 500, 503, 504, 0 /* other */};
#define NSTATUS (sizeof(statuses) / sizeof(statuses[0]))

/* seconds; +Inf is implicit */
static const double bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                0.1,    0.25,  0.5,    1,     2.5,  5,     10};
static const uint64_t bounds_us[] = {500,    1000,   2500,   5000,    10000,   25000,   50000,
                                     100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};
#define NBUCKET (sizeof(bounds) / sizeof(bounds[0]))

static const char *const mop_names[GW_MOP_N] = {"get",     "put",       "insert", "patch", "delete",
                                                "query",   "aggregate", "batch",  "ready", "health",
                                                "metrics", "admin",     "other"};

static const char *const mbe_names[GW_MBE_N] = {
    "ok", "timeout", "unavailable", "queue_full", "no_connection", "circuit_open", "internal"};

const char *gw_mop_name(enum gw_mop op)
{
    return (unsigned)op < GW_MOP_N ? mop_names[op] : "other";
}

/* Interned names: append-only, published with a release store of the count.
 * Copied whole (the config does not bound name lengths, and a cut name
 * would never match its lookup); kept for the life of the process. */
static pthread_mutex_t intern_mu = PTHREAD_MUTEX_INITIALIZER;
static const char *dom_names[GW_M_MAX_DOMAINS] = {"_none"};
static int ndom = 1;

/* ---- per-worker counters ----------------------------------------------------------- */

struct wslot {
    uint64_t req[GW_M_MAX_DOMAINS][GW_MOP_N][NSTATUS];
    uint64_t hist[GW_M_MAX_DOMAINS][GW_MOP_N][NBUCKET + 1]; /* non-cumulative */
    uint64_t sum_us[GW_M_MAX_DOMAINS][GW_MOP_N];
    uint64_t be_submit[GW_MAX_SHARDS];
    uint64_t be_done[GW_MAX_SHARDS];
    uint64_t be_out[GW_MAX_SHARDS][GW_MBE_N];
    uint64_t sc_req[GW_M_MAX_DOMAINS];
    uint64_t sc_shards[GW_M_MAX_DOMAINS];
    uint64_t sc_partial[GW_M_MAX_DOMAINS];
    /* gauges sampled from the adapters (gw_metrics_sample_pools) */
    uint64_t pool_known[GW_MAX_SHARDS];
    uint64_t pool[GW_MAX_SHARDS][4]; /* size, connected, in use, waiting */
    uint64_t sh_idem[GW_MSI_N];
    uint64_t sh_rate[2][2]; /* [local][allowed] */
};

/* Static: pages a worker never touches cost no memory. */
static struct wslot slots[GW_M_MAX_WORKERS];

static inline void bump(uint64_t *p, uint64_t v)
{
    /* single writer (the owning worker): no read-modify-write needed */
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}

static inline uint64_t rd(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static int wvalid(int w)
{
    return w >= 0 && w < GW_M_MAX_WORKERS;
}

/* ---- interning ----------------------------------------------------------------------- */

int gw_metrics_domain_lookup(const char *name)
{
    int n = __atomic_load_n(&ndom, __ATOMIC_ACQUIRE);
    if (name == NULL) {
        return 0;
    }
    for (int i = 1; i < n; i++) {
        if (strcmp(dom_names[i], name) == 0) {
            return i;
        }
    }
    return 0;
}

int gw_metrics_domain_id(const char *name)
{
    int id = gw_metrics_domain_lookup(name);
    if (id != 0 || name == NULL) {
        return id;
    }
    pthread_mutex_lock(&intern_mu);
    id = gw_metrics_domain_lookup(name);
    if (id == 0 && ndom < GW_M_MAX_DOMAINS && (dom_names[ndom] = strdup(name)) != NULL) {
        id = ndom;
        __atomic_store_n(&ndom, ndom + 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&intern_mu);
    return id;
}

void gw_metrics_register_config(const struct cf_config *cf)
{
    for (size_t i = 0; i < cf->ndomains; i++) {
        gw_metrics_domain_id(cf->domains[i].name);
    }
    for (size_t i = 0; i < cf->nbackends; i++) {
        for (size_t s = 0; s < cf->backends[i].nshards; s++) {
            gw_shard_id(cf->backends[i].name, cf->backends[i].shards[s].name);
        }
    }
}

/* ---- request path ------------------------------------------------------------------- */

uint64_t gw_metrics_now_us(void)
{
    return lb_now_us();
}

static size_t status_index(int status)
{
    for (size_t i = 0; i + 1 < NSTATUS; i++) {
        if (statuses[i] == status) {
            return i;
        }
    }
    return NSTATUS - 1;
}

void gw_metrics_request(int worker, int domain, enum gw_mop op, int status, uint64_t usec)
{
    if (!wvalid(worker) || domain < 0 || domain >= GW_M_MAX_DOMAINS || (unsigned)op >= GW_MOP_N) {
        return;
    }
    struct wslot *s = &slots[worker];
    bump(&s->req[domain][op][status_index(status)], 1);
    size_t b = 0;
    while (b < NBUCKET && usec > bounds_us[b]) {
        b++;
    }
    bump(&s->hist[domain][op][b], 1);
    bump(&s->sum_us[domain][op], usec);
}

void gw_metrics_backend_submit(int worker, int shard)
{
    if (wvalid(worker) && shard >= 0 && shard < GW_MAX_SHARDS) {
        bump(&slots[worker].be_submit[shard], 1);
    }
}

void gw_metrics_backend_done(int worker, int shard)
{
    if (wvalid(worker) && shard >= 0 && shard < GW_MAX_SHARDS) {
        bump(&slots[worker].be_done[shard], 1);
    }
}

void gw_metrics_backend_outcome(int worker, int shard, enum gw_mbe what)
{
    if (wvalid(worker) && shard >= 0 && shard < GW_MAX_SHARDS && (unsigned)what < GW_MBE_N) {
        bump(&slots[worker].be_out[shard][what], 1);
    }
}

void gw_metrics_scatter(int worker, int domain, int nshards, int partial)
{
    if (!wvalid(worker) || domain < 0 || domain >= GW_M_MAX_DOMAINS) {
        return;
    }
    bump(&slots[worker].sc_req[domain], 1);
    bump(&slots[worker].sc_shards[domain], (uint64_t)(nshards > 0 ? nshards : 0));
    if (partial) {
        bump(&slots[worker].sc_partial[domain], 1);
    }
}

void gw_metrics_shared_idem(int worker, enum gw_msi what)
{
    if (wvalid(worker) && (unsigned)what < GW_MSI_N) {
        bump(&slots[worker].sh_idem[what], 1);
    }
}

void gw_metrics_shared_rate(int worker, int local, int allowed)
{
    if (wvalid(worker)) {
        bump(&slots[worker].sh_rate[local != 0][allowed != 0], 1);
    }
}

int gw_metrics_pools_begin(int worker)
{
    if (!wvalid(worker)) {
        return -1;
    }
    struct wslot *sl = &slots[worker];
    for (int i = 0; i < GW_MAX_SHARDS; i++) {
        if (rd(&sl->pool_known[i])) {
            __atomic_store_n(&sl->pool_known[i], 0, __ATOMIC_RELAXED);
        }
    }
    return 0;
}

void gw_metrics_pool(int worker, int shard, const struct ad_pool_stats *ps)
{
    if (!wvalid(worker) || shard < 0 || shard >= GW_MAX_SHARDS) {
        return;
    }
    struct wslot *sl = &slots[worker];
    int v[4] = {ps->conns, ps->up, ps->busy, ps->queued};
    for (int k = 0; k < 4; k++) {
        __atomic_store_n(&sl->pool[shard][k], (uint64_t)(v[k] > 0 ? v[k] : 0), __ATOMIC_RELAXED);
    }
    __atomic_store_n(&sl->pool_known[shard], 1, __ATOMIC_RELAXED);
}

/* ---- scrape ----------------------------------------------------------------------------- */

static void help(struct evbuffer *o, const char *name, const char *type, const char *text)
{
    evbuffer_add_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

static long long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long long size = 0, res = -1;
    if (f != NULL) {
        if (fscanf(f, "%lld %lld", &size, &res) != 2) {
            res = -1;
        }
        fclose(f);
    }
    return res < 0 ? -1 : res * sysconf(_SC_PAGESIZE);
}

static long long open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    long long n = 0;
    if (d == NULL) {
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    closedir(d);
    return n - 1; /* the directory stream's own fd */
}

/* The fleet's shared store (only with a `control` section). */
static void render_shared(struct evbuffer *o, int nw)
{
    int clients, up;
    gw_shared_stats(&clients, &up);
    help(o, "polygate_shared_store_up", "gauge",
         "1 when every worker's connection to the fleet's shared Redis (control.redis) is up.");
    evbuffer_add_printf(o, "polygate_shared_store_up %d\n", clients > 0 && up == clients);
    static const char *const idem[GW_MSI_N] = {"claimed", "replayed", "mismatch", "busy",
                                               "unavailable"};
    help(o, "polygate_shared_idempotency_total", "counter",
         "Idempotency-Key claims in the shared store, by result.");
    for (int k = 0; k < GW_MSI_N; k++) {
        uint64_t n = 0;
        for (int w = 0; w < nw; w++) {
            n += rd(&slots[w].sh_idem[k]);
        }
        evbuffer_add_printf(o, "polygate_shared_idempotency_total{result=\"%s\"} %" PRIu64 "\n",
                            idem[k], n);
    }
    help(o, "polygate_ratelimit_decisions_total", "counter",
         "Rate-limit decisions by bucket: the fleet's (shared) or, while the shared store "
         "cannot decide, the instance's own (local).");
    for (int local = 0; local < 2; local++) {
        for (int ok = 0; ok < 2; ok++) {
            uint64_t n = 0;
            for (int w = 0; w < nw; w++) {
                n += rd(&slots[w].sh_rate[local][ok]);
            }
            evbuffer_add_printf(o,
                                "polygate_ratelimit_decisions_total{source=\"%s\",decision=\"%s\"}"
                                " %" PRIu64 "\n",
                                local ? "local" : "shared", ok ? "allowed" : "limited", n);
        }
    }
}

static int nworkers_set = 1;

void gw_metrics_set_workers(int n)
{
    __atomic_store_n(&nworkers_set, n, __ATOMIC_RELAXED);
}

void gw_metrics_render(struct evbuffer *o, const struct cf_config *cf, int64_t inflight)
{
    int nworkers = __atomic_load_n(&nworkers_set, __ATOMIC_RELAXED);
    int nw = nworkers < GW_M_MAX_WORKERS ? nworkers : GW_M_MAX_WORKERS;
    int nd = __atomic_load_n(&ndom, __ATOMIC_ACQUIRE);
    int ns = gw_shard_count();

    help(o, "polygate_requests_total", "counter",
         "Client requests answered, by domain, operation and HTTP status.");
    for (int d = 0; d < nd; d++) {
        for (int op = 0; op < GW_MOP_N; op++) {
            for (size_t st = 0; st < NSTATUS; st++) {
                uint64_t n = 0;
                for (int w = 0; w < nw; w++) {
                    n += rd(&slots[w].req[d][op][st]);
                }
                if (n == 0) {
                    continue;
                }
                char code[8];
                if (statuses[st] != 0) {
                    snprintf(code, sizeof(code), "%d", statuses[st]);
                } else {
                    snprintf(code, sizeof(code), "other");
                }
                evbuffer_add_printf(o,
                                    "polygate_requests_total{domain=\"%s\",op=\"%s\",status=\"%s\"}"
                                    " %" PRIu64 "\n",
                                    dom_names[d], mop_names[op], code, n);
            }
        }
    }

    help(o, "polygate_request_duration_seconds", "histogram",
         "Time from the parsed request to the response handed to the connection.");
    for (int d = 0; d < nd; d++) {
        for (int op = 0; op < GW_MOP_N; op++) {
            uint64_t b[NBUCKET + 1] = {0}, sum = 0, total = 0;
            for (int w = 0; w < nw; w++) {
                for (size_t k = 0; k <= NBUCKET; k++) {
                    b[k] += rd(&slots[w].hist[d][op][k]);
                }
                sum += rd(&slots[w].sum_us[d][op]);
            }
            for (size_t k = 0; k <= NBUCKET; k++) {
                total += b[k];
            }
            if (total == 0) {
                continue;
            }
            uint64_t cum = 0;
            for (size_t k = 0; k < NBUCKET; k++) {
                cum += b[k];
                evbuffer_add_printf(o,
                                    "polygate_request_duration_seconds_bucket{domain=\"%s\","
                                    "op=\"%s\",le=\"%g\"} %" PRIu64 "\n",
                                    dom_names[d], mop_names[op], bounds[k], cum);
            }
            evbuffer_add_printf(o,
                                "polygate_request_duration_seconds_bucket{domain=\"%s\",op=\"%s\","
                                "le=\"+Inf\"} %" PRIu64 "\n",
                                dom_names[d], mop_names[op], total);
            evbuffer_add_printf(o,
                                "polygate_request_duration_seconds_sum{domain=\"%s\",op=\"%s\"} "
                                "%.6f\n",
                                dom_names[d], mop_names[op], (double)sum / 1e6);
            evbuffer_add_printf(o,
                                "polygate_request_duration_seconds_count{domain=\"%s\",op=\"%s\"} "
                                "%" PRIu64 "\n",
                                dom_names[d], mop_names[op], total);
        }
    }

    help(o, "polygate_inflight_requests", "gauge",
         "Client requests in flight in the process (limits.max_inflight caps it).");
    evbuffer_add_printf(o, "polygate_inflight_requests %lld\n", (long long)inflight);
    help(o, "polygate_inflight_limit", "gauge", "limits.max_inflight.");
    evbuffer_add_printf(o, "polygate_inflight_limit %d\n", cf->limits.max_inflight);

    int64_t copen;
    uint64_t crefused;
    gw_http_conn_stats(&copen, &crefused);
    help(o, "polygate_client_connections", "gauge", "Client connections open (all workers).");
    evbuffer_add_printf(o, "polygate_client_connections %lld\n", (long long)copen);
    help(o, "polygate_client_connections_refused_total", "counter",
         "Client connections refused at limits.max_connections.");
    evbuffer_add_printf(o, "polygate_client_connections_refused_total %" PRIu64 "\n", crefused);
    help(o, "polygate_client_connections_limit", "gauge", "limits.max_connections.");
    evbuffer_add_printf(o, "polygate_client_connections_limit %d\n", cf->limits.max_connections);

    help(o, "polygate_backend_requests_total", "counter",
         "Calls to a backend shard by outcome (circuit_open and queue_full never reached the "
         "store).");
    for (int i = 0; i < ns; i++) {
        for (int k = 0; k < GW_MBE_N; k++) {
            uint64_t n = 0;
            for (int w = 0; w < nw; w++) {
                n += rd(&slots[w].be_out[i][k]);
            }
            evbuffer_add_printf(o,
                                "polygate_backend_requests_total{backend=\"%s\",shard=\"%s\","
                                "outcome=\"%s\"} %" PRIu64 "\n",
                                gw_shard_backend(i), gw_shard_name(i), mbe_names[k], n);
        }
    }
    help(o, "polygate_backend_errors_total", "counter",
         "Backend calls that failed (timeout, unavailable, queue_full, no_connection, "
         "circuit_open, internal).");
    for (int i = 0; i < ns; i++) {
        uint64_t n = 0;
        for (int w = 0; w < nw; w++) {
            for (int k = 1; k < GW_MBE_N; k++) {
                n += rd(&slots[w].be_out[i][k]);
            }
        }
        evbuffer_add_printf(
            o, "polygate_backend_errors_total{backend=\"%s\",shard=\"%s\"} %" PRIu64 "\n",
            gw_shard_backend(i), gw_shard_name(i), n);
    }
    help(o, "polygate_backend_pending", "gauge",
         "Requests handed to the shard's adapter and not yet completed by it: on a connection "
         "or waiting in its bounded queue (pool.queue_max).");
    for (int i = 0; i < ns; i++) {
        uint64_t sub = 0, done = 0;
        for (int w = 0; w < nw; w++) {
            sub += rd(&slots[w].be_submit[i]);
            done += rd(&slots[w].be_done[i]);
        }
        evbuffer_add_printf(o, "polygate_backend_pending{backend=\"%s\",shard=\"%s\"} %lld\n",
                            gw_shard_backend(i), gw_shard_name(i),
                            (long long)(sub >= done ? sub - done : 0));
    }
    static const char *const pool_names[4][2] = {
        {"polygate_backend_pool_size", "Connection slots of the shard's pools, all workers."},
        {"polygate_backend_pool_connected", "Connections of the shard's pools that are up."},
        {"polygate_backend_pool_in_use",
         "Connections running a request (Redis: requests pipelined on its connections)."},
        {"polygate_backend_pool_waiting",
         "Requests waiting in the pools' queues for a connection."},
    };
    for (int k = 0; k < 4; k++) {
        help(o, pool_names[k][0], "gauge", pool_names[k][1]);
        for (int i = 0; i < ns; i++) {
            uint64_t n = 0;
            int known = 0;
            for (int w = 0; w < nw; w++) {
                if (rd(&slots[w].pool_known[i])) {
                    known = 1;
                    n += rd(&slots[w].pool[i][k]);
                }
            }
            if (known) {
                evbuffer_add_printf(o, "%s{backend=\"%s\",shard=\"%s\"} %" PRIu64 "\n",
                                    pool_names[k][0], gw_shard_backend(i), gw_shard_name(i), n);
            }
        }
    }
    help(o, "polygate_backend_pool_max", "gauge",
         "Configured connections per worker to the shard (pool.max) times the workers.");
    for (size_t b = 0; b < cf->nbackends; b++) {
        const struct cf_backend *be = &cf->backends[b];
        for (size_t s = 0; s < be->nshards; s++) {
            evbuffer_add_printf(o, "polygate_backend_pool_max{backend=\"%s\",shard=\"%s\"} %lld\n",
                                be->name, be->shards[s].name,
                                (long long)be->pool.max * (long long)nworkers);
        }
    }

    help(o, "polygate_circuit_state", "gauge",
         "Circuit breaker of the shard: 0 closed, 1 open (failing fast), 2 half-open (probing).");
    for (int i = 0; i < ns; i++) {
        evbuffer_add_printf(o, "polygate_circuit_state{backend=\"%s\",shard=\"%s\"} %d\n",
                            gw_shard_backend(i), gw_shard_name(i), (int)gw_breaker_state(i));
    }
    help(o, "polygate_circuit_opens_total", "counter", "Times the shard's circuit opened.");
    for (int i = 0; i < ns; i++) {
        evbuffer_add_printf(
            o, "polygate_circuit_opens_total{backend=\"%s\",shard=\"%s\"} %" PRIu64 "\n",
            gw_shard_backend(i), gw_shard_name(i), gw_breaker_opens(i));
    }

    help(o, "polygate_scatter_requests_total", "counter",
         "Requests on a sharded domain fanned out to several shards.");
    help(o, "polygate_scatter_shards_total", "counter",
         "Shards asked by fan-outs (divide by polygate_scatter_requests_total: mean fan-out).");
    help(o, "polygate_scatter_partial_total", "counter",
         "Fan-outs answered with \"partial\": true (some shards missing).");
    for (int d = 1; d < nd; d++) {
        uint64_t r = 0, sh = 0, p = 0;
        for (int w = 0; w < nw; w++) {
            r += rd(&slots[w].sc_req[d]);
            sh += rd(&slots[w].sc_shards[d]);
            p += rd(&slots[w].sc_partial[d]);
        }
        if (r == 0) {
            continue;
        }
        evbuffer_add_printf(o, "polygate_scatter_requests_total{domain=\"%s\"} %" PRIu64 "\n",
                            dom_names[d], r);
        evbuffer_add_printf(o, "polygate_scatter_shards_total{domain=\"%s\"} %" PRIu64 "\n",
                            dom_names[d], sh);
        evbuffer_add_printf(o, "polygate_scatter_partial_total{domain=\"%s\"} %" PRIu64 "\n",
                            dom_names[d], p);
    }

    help(o, "polygate_shardmap_version", "gauge",
         "Version of the shard map in use by the backend (sharded backends).");
    for (size_t b = 0; b < cf->nbackends; b++) {
        if (cf->backends[b].map != NULL) {
            evbuffer_add_printf(o, "polygate_shardmap_version{backend=\"%s\"} %lld\n",
                                cf->backends[b].name,
                                (long long)rt_shardmap_version(cf->backends[b].map));
        }
    }

    size_t ientries, ibytes;
    uint64_t ireplays;
    gw_idem_stats(&ientries, &ibytes, &ireplays);
    help(o, "polygate_idempotency_keys", "gauge",
         "Idempotency-Key entries held (in progress) or stored (answers kept for replay).");
    evbuffer_add_printf(o, "polygate_idempotency_keys %zu\n", ientries);
    help(o, "polygate_idempotency_bytes", "gauge",
         "Memory accounted to the Idempotency-Key store (idempotency.max_bytes caps it).");
    evbuffer_add_printf(o, "polygate_idempotency_bytes %zu\n", ibytes);
    help(o, "polygate_idempotency_replays_total", "counter",
         "Requests answered with the stored answer of an earlier request with the same key.");
    evbuffer_add_printf(o, "polygate_idempotency_replays_total %" PRIu64 "\n", ireplays);

    if (cf->control.redis != NULL) {
        render_shared(o, nw);
    }

    help(o, "polygate_workers", "gauge", "Worker threads (one event loop each).");
    evbuffer_add_printf(o, "polygate_workers %d\n", nworkers);
    help(o, "process_resident_memory_bytes", "gauge", "Resident set size (/proc/self/statm).");
    evbuffer_add_printf(o, "process_resident_memory_bytes %lld\n", rss_bytes());
    help(o, "process_open_fds", "gauge", "Open file descriptors (/proc/self/fd).");
    evbuffer_add_printf(o, "process_open_fds %lld\n", open_fds());
}
