/*
 * bh_main.c — polygate-bench: command line, the run loop, the report.
 *
 *   polygate-bench run  [options] [--ops LIST] [--modes gateway,direct] [--md FILE] [--plot FILE]
 *   polygate-bench seed [options]          write the key space through polygate
 *   polygate-bench idle [options] -c 10000 [--hold S] [--sample N]
 *
 * Options: -c CONNS (32), -d SECONDS measured (5), -w SECONDS warm-up (1),
 * -n COUNT (instead of -d), -k KEYS (5000), --product-keys N (500), --gw HOST:PORT
 * (127.0.0.1:18180),
 * --redis HOST:PORT, --pg DSN, --mongo URI, --mongo-db NAME, --pid PID (the
 * gateway, for CPU time per 1,000 requests and resident memory),
 * --product-keys N (500), --order-keys N (5000), --customers N (500),
 * --shardmap FILE (the orders map polygate runs with: direct mode routes and
 * scatters with it), --no-orders (seed: leave the orders out),
 * --skip "op1,op2=reason" (print the operations as skipped, with the reason).
 *
 * The figures are printed; nothing here passes or fails.
 */
#include "bench/bh.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <event2/thread.h>

uint64_t bh_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t bh_rand(struct bh_client *c)
{
    /* xorshift64* */
    uint64_t x = c->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* ---- one run ------------------------------------------------------------------- */

#define MAX_ERRORS 10000 /* a run with this many failed operations stops early */

static void issue(struct bh_client *c);

static void stop_if_idle(struct bh_run *run)
{
    if (run->stopping && run->inflight == 0) {
        event_base_loopexit(run->base, NULL);
    }
}

static int newest_first(const void *a, const void *b)
{
    return -strcmp((const char *)a, (const char *)b);
}

void bh_complete(struct bh_client *c, int ok, const char *why)
{
    struct bh_run *run = c->run;
    if (!c->busy) {
        return; /* closing, or a late answer */
    }
    if (ok && c->nrows > 1 && c->my_pending == 0 && c->rows != NULL) {
        /* scatter-gather in direct mode: the merge the gateway does (newest 50) */
        qsort(c->rows, (size_t)c->nrows, sizeof(c->rows[0]), newest_first);
        c->nrows = c->nrows > 50 ? 50 : c->nrows;
    }
    uint64_t now = bh_now_ns();
    c->busy = 0;
    run->inflight--;
    if (!ok) {
        run->errors_total++;
        if (run->measuring && !run->stopping) {
            run->errors++;
        }
        if (why != NULL) {
            snprintf(run->last_error, sizeof(run->last_error), "%s", why);
        }
        if (run->errors_total >= MAX_ERRORS) {
            run->stopping = 1;
        }
    } else if (run->measuring && !run->stopping && c->t_start >= run->t_measure_start) {
        bh_hist_record(&run->hist, now - c->t_start);
        run->done_measured++;
        if (run->o->count > 0 && run->done_measured >= run->o->count) {
            run->stopping = 1;
            run->t_measure_end = now;
        }
    }
    if (run->stopping) {
        stop_if_idle(run);
        return;
    }
    if (c->issuing) {
        c->sync_done = 1;
        return;
    }
    issue(c);
}

static void issue(struct bh_client *c)
{
    struct bh_run *run = c->run;
    for (;;) {
        if (run->stopping) {
            stop_if_idle(run);
            return;
        }
        uint64_t k;
        if (run->sequential) {
            if (run->next_seq >= run->o->keys) {
                run->stopping = 1;
                run->t_measure_end = bh_now_ns();
                stop_if_idle(run);
                return;
            }
            k = run->next_seq++;
        } else {
            k = bh_rand(c) % run->o->keys;
        }
        const struct bh_op *op = run->op;
        if (run->mix != NULL) {
            op = run->mix[bh_rand(c) % 100];
        }
        c->busy = 1;
        c->issuing = 1;
        c->sync_done = 0;
        run->inflight++;
        run->issued++;
        c->t_start = bh_now_ns();
        if (run->mode == BH_GW) {
            op->gw(c, k);
        } else {
            op->direct(c, k);
        }
        c->issuing = 0;
        if (!c->sync_done) {
            return;
        }
    }
}

static double cpu_seconds(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* fields after the command name, which is in parentheses */
    char *p = strrchr(buf, ')');
    if (p == NULL) {
        return -1;
    }
    unsigned long ut = 0, st = 0;
    /* state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15)
     */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) {
        return -1;
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

struct result {
    const char *op;
    enum bh_mode mode;
    int ran;
    uint64_t ops, errors;
    double secs, rps;
    double p50, p90, p99, p999, max; /* µs */
    double cpu_ms_per_1k;            /* gateway mode with --pid, else < 0 */
    char last_error[256];
};

static double g_cpu0;

static void on_warm(evutil_socket_t fd, short what, void *arg)
{
    struct bh_run *run = arg;
    run->measuring = 1;
    run->t_measure_start = bh_now_ns();
    if (run->o->pid > 0) {
        g_cpu0 = cpu_seconds(run->o->pid);
    }
}

static void on_end(evutil_socket_t fd, short what, void *arg)
{
    struct bh_run *run = arg;
    if (!run->stopping) {
        run->stopping = 1;
        run->t_measure_end = bh_now_ns();
    }
    stop_if_idle(run);
}

static void on_hard_limit(evutil_socket_t fd, short what, void *arg)
{
    struct bh_run *run = arg;
    fprintf(stderr, "bench: %d operations still in flight at the hard time limit\n", run->inflight);
    event_base_loopbreak(run->base);
}

static struct timeval tv_of(double s)
{
    struct timeval tv = {(time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6)};
    return tv;
}

static const char *mode_name(enum bh_mode m)
{
    return m == BH_GW ? "gateway" : "direct";
}

static int run_one(const struct bh_opts *o, const struct bh_op *op, enum bh_mode mode,
                   int sequential, struct result *res)
{
    memset(res, 0, sizeof(*res));
    res->op = op->name;
    res->mode = mode;
    res->cpu_ms_per_1k = -1;
    struct bh_run *run = calloc(1, sizeof(*run));
    if (run == NULL) {
        return -1;
    }
    run->base = event_base_new();
    run->o = o;
    run->mode = mode;
    run->op = op;
    run->mix = op->gw == NULL ? bh_mix_storefront : NULL;
    run->sequential = sequential;
    bh_hist_init(&run->hist);
    run->clients = calloc((size_t)o->conns, sizeof(*run->clients));
    int rc = 0;
    unsigned needs = op->needs;
    if (mode == BH_DIRECT && (needs & BH_NEED_MONGO)) {
        run->mongo = bh_mongo_start(run, o->conns);
    }
    for (int i = 0; i < o->conns && rc == 0; i++) {
        struct bh_client *c = &run->clients[i];
        c->run = run;
        c->idx = i;
        c->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1) ^ (uint64_t)bh_now_ns();
        if (mode == BH_GW) {
            rc = bh_http_open(c);
        } else {
            if (rc == 0 && (needs & BH_NEED_REDIS)) {
                rc = bh_redis_open(c);
            }
            if (rc == 0 && (needs & BH_NEED_PG)) {
                rc = bh_pg_open(c);
            }
            if (rc == 0 && (needs & BH_NEED_MYSQL)) {
                rc = bh_mysql_open(c);
            }
        }
    }
    struct event *warm = NULL, *end = NULL, *hard = NULL;
    if (rc == 0) {
        double warmup = sequential ? 0 : o->warmup;
        struct timeval tw = tv_of(warmup);
        warm = evtimer_new(run->base, on_warm, run);
        evtimer_add(warm, &tw);
        double total = warmup + (o->count > 0 || sequential ? 600 : o->duration);
        if (o->count == 0 && !sequential) {
            struct timeval te = tv_of(warmup + o->duration);
            end = evtimer_new(run->base, on_end, run);
            evtimer_add(end, &te);
        }
        struct timeval th = tv_of(total + 15);
        hard = evtimer_new(run->base, on_hard_limit, run);
        evtimer_add(hard, &th);
        for (int i = 0; i < o->conns; i++) {
            issue(&run->clients[i]);
        }
        event_base_dispatch(run->base);
    }
    double cpu1 = o->pid > 0 && mode == BH_GW ? cpu_seconds(o->pid) : -1;
    /* close: late completions are ignored (busy cleared first) */
    for (int i = 0; i < o->conns; i++) {
        struct bh_client *c = &run->clients[i];
        c->busy = 0;
        bh_http_close(c);
        bh_redis_close(c);
        bh_pg_close(c);
        bh_mysql_close(c);
    }
    bh_mongo_stop(run->mongo);
    if (rc == 0) {
        if (run->t_measure_start == 0) {
            run->t_measure_start = bh_now_ns(); /* stopped before the warm-up ended */
        }
        if (run->t_measure_end == 0 || run->t_measure_end < run->t_measure_start) {
            run->t_measure_end = run->t_measure_start;
        }
        res->ran = 1;
        res->ops = run->done_measured;
        res->errors = run->errors_total;
        res->secs = (double)(run->t_measure_end - run->t_measure_start) / 1e9;
        res->rps = res->secs > 0 ? (double)res->ops / res->secs : 0;
        res->p50 = (double)bh_hist_quantile(&run->hist, 0.50) / 1e3;
        res->p90 = (double)bh_hist_quantile(&run->hist, 0.90) / 1e3;
        res->p99 = (double)bh_hist_quantile(&run->hist, 0.99) / 1e3;
        res->p999 = (double)bh_hist_quantile(&run->hist, 0.999) / 1e3;
        res->max = (double)run->hist.max / 1e3;
        if (cpu1 >= 0 && g_cpu0 >= 0 && res->ops > 0) {
            res->cpu_ms_per_1k = (cpu1 - g_cpu0) * 1e3 / ((double)res->ops / 1000.0);
        }
        snprintf(res->last_error, sizeof(res->last_error), "%s", run->last_error);
    }
    if (warm != NULL) {
        event_free(warm);
    }
    if (end != NULL) {
        event_free(end);
    }
    if (hard != NULL) {
        event_free(hard);
    }
    free(run->clients);
    event_base_free(run->base);
    free(run);
    return rc;
}

static void print_result(FILE *f, const struct result *r)
{
    fprintf(f,
            "RESULT op=%s mode=%s ops=%llu errors=%llu secs=%.2f rps=%.0f p50_us=%.0f "
            "p90_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f",
            r->op, mode_name(r->mode), (unsigned long long)r->ops, (unsigned long long)r->errors,
            r->secs, r->rps, r->p50, r->p90, r->p99, r->p999, r->max);
    if (r->cpu_ms_per_1k >= 0) {
        fprintf(f, " gw_cpu_ms_per_1k=%.1f", r->cpu_ms_per_1k);
    }
    if (r->errors > 0) {
        fprintf(f, " last_error=\"%s\"", r->last_error);
    }
    fputc('\n', f);
    fflush(f);
}

/* ---- the report ------------------------------------------------------------------ */

#define MAX_RESULTS 64

static void report(FILE *f, const struct bh_opts *o, const struct result *rs, int nr,
                   char skipped[][160], int nskipped)
{
    fprintf(f,
            "Each figure: %d concurrent keep-alive clients, %.0f s measured after %.1f s "
            "of warm-up, keys drawn uniformly from %llu (products: %llu).\n\n",
            o->conns, o->duration, o->warmup, (unsigned long long)o->keys,
            (unsigned long long)o->pkeys);
    fprintf(f, "| operation | mode | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | "
               "errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < nr; i++) {
        const struct result *r = &rs[i];
        fprintf(f, "| %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %llu |\n", r->op,
                mode_name(r->mode), r->rps, r->p50, r->p90, r->p99, r->p999, r->max,
                (unsigned long long)r->errors);
    }
    fprintf(f, "\n| operation | gateway req/s | direct req/s | gateway / direct | added p50 µs | "
               "added p99 µs | gateway CPU ms per 1,000 req |\n"
               "|---|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < nr; i++) {
        if (rs[i].mode != BH_GW) {
            continue;
        }
        const struct result *g = &rs[i], *d = NULL;
        for (int j = 0; j < nr; j++) {
            if (rs[j].mode == BH_DIRECT && strcmp(rs[j].op, g->op) == 0) {
                d = &rs[j];
            }
        }
        char cpu[32] = "n/a";
        if (g->cpu_ms_per_1k >= 0) {
            snprintf(cpu, sizeof(cpu), "%.1f", g->cpu_ms_per_1k);
        }
        if (d == NULL || d->rps <= 0) {
            fprintf(f, "| %s | %.0f | n/a | n/a | n/a | n/a | %s |\n", g->op, g->rps, cpu);
            continue;
        }
        fprintf(f, "| %s | %.0f | %.0f | %.0f%% | %+.0f | %+.0f | %s |\n", g->op, g->rps, d->rps,
                100.0 * g->rps / d->rps, g->p50 - d->p50, g->p99 - d->p99, cpu);
    }
    for (int i = 0; i < nskipped; i++) {
        fprintf(f, "| %s |\n", skipped[i]);
    }
    fputc('\n', f);
}

/* gnuplot data: one block per operation, rows "percentile gateway direct" (µs) */
static void plot_data(FILE *f, const struct result *rs, int nr)
{
    for (int i = 0; i < nr; i++) {
        if (rs[i].mode != BH_GW) {
            continue;
        }
        const struct result *g = &rs[i], *d = NULL;
        for (int j = 0; j < nr; j++) {
            if (rs[j].mode == BH_DIRECT && strcmp(rs[j].op, g->op) == 0) {
                d = &rs[j];
            }
        }
        if (d == NULL) {
            continue;
        }
        fprintf(f, "# %s\n", g->op);
        fprintf(f, "p50 %.1f %.1f\np90 %.1f %.1f\np99 %.1f %.1f\np99.9 %.1f %.1f\n\n\n", g->p50,
                d->p50, g->p90, d->p90, g->p99, d->p99, g->p999, d->p999);
    }
}

/* ---- command line ------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr, "usage: polygate-bench run|seed|idle [-c CONNS] [-d SECS] [-w SECS] [-n COUNT] "
                    "[-k KEYS] [--product-keys N]\n"
                    "       [--gw HOST:PORT] [--redis HOST:PORT] [--pg DSN] [--mongo URI] "
                    "[--mongo-db NAME] [--pid PID]\n"
                    "       [--product-keys N] [--order-keys N] [--customers N] [--shardmap FILE] "
                    "[--no-orders]\n"
                    "       run: [--ops a,b] [--modes gateway,direct] [--md FILE] [--plot FILE] "
                    "[--skip 'op,op=reason']\n"
                    "       idle: [--hold SECS] [--sample N]\n");
    exit(2);
}

static int host_port(const char *s, const char **host, int *port)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL) {
        return -1;
    }
    char *h = strndup(s, (size_t)(colon - s));
    *host = h;
    *port = atoi(colon + 1);
    return *port > 0 && *port < 65536 ? 0 : -1;
}

static void raise_nofile(int want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)want) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)want ? rl.rlim_max : (rlim_t)want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            fprintf(stderr, "bench: setrlimit: %s\n", strerror(errno));
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
    }
    const char *cmd = argv[1];
    struct bh_opts o = {.gw_host = "127.0.0.1",
                        .gw_port = 18180,
                        .redis_host = "127.0.0.1",
                        .redis_port = 56379,
                        .pg_dsn = "host=127.0.0.1 port=55432 dbname=polygate user=postgres",
                        .mongo_uri = "mongodb://127.0.0.1:57017/"
                                     "?serverSelectionTimeoutMS=2000&socketTimeoutMS=10000",
                        .mongo_db = "polygate",
                        .conns = 32,
                        .duration = 5,
                        .warmup = 1,
                        .keys = 5000,
                        .pkeys = 500,
                        .okeys = 5000,
                        .customers = 500,
                        .shardmap = "config/orders.shardmap.yaml"};
    const char *ops = "session_get,session_put,cart_inc,user_get,product_get,storefront";
    const char *modes = "gateway,direct", *md = NULL, *plot = NULL;
    char skipped[16][160];
    int nskipped = 0;
    double hold = 5;
    int sample = 500;
    int no_orders = 0;
    static const struct option lo[] = {{"gw", 1, 0, 'G'},
                                       {"redis", 1, 0, 'R'},
                                       {"pg", 1, 0, 'P'},
                                       {"mongo", 1, 0, 'M'},
                                       {"mongo-db", 1, 0, 'D'},
                                       {"pid", 1, 0, 'p'},
                                       {"ops", 1, 0, 'o'},
                                       {"modes", 1, 0, 'm'},
                                       {"md", 1, 0, 'f'},
                                       {"plot", 1, 0, 'g'},
                                       {"skip", 1, 0, 's'},
                                       {"hold", 1, 0, 'h'},
                                       {"sample", 1, 0, 'S'},
                                       {"product-keys", 1, 0, 'K'},
                                       {"order-keys", 1, 0, 'O'},
                                       {"customers", 1, 0, 'C'},
                                       {"shardmap", 1, 0, 'Y'},
                                       {"no-orders", 0, 0, 'N'},
                                       {0, 0, 0, 0}};
    optind = 2;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:d:w:n:k:", lo, NULL)) != -1) {
        switch (ch) {
        case 'c':
            o.conns = atoi(optarg);
            break;
        case 'd':
            o.duration = atof(optarg);
            break;
        case 'w':
            o.warmup = atof(optarg);
            break;
        case 'n':
            o.count = strtoull(optarg, NULL, 10);
            break;
        case 'k':
            o.keys = strtoull(optarg, NULL, 10);
            break;
        case 'K':
            o.pkeys = strtoull(optarg, NULL, 10);
            break;
        case 'O':
            o.okeys = strtoull(optarg, NULL, 10);
            break;
        case 'C':
            o.customers = strtoull(optarg, NULL, 10);
            break;
        case 'Y':
            o.shardmap = optarg;
            break;
        case 'N':
            no_orders = 1;
            break;
        case 'G':
            if (host_port(optarg, &o.gw_host, &o.gw_port) != 0) {
                usage();
            }
            break;
        case 'R':
            if (host_port(optarg, &o.redis_host, &o.redis_port) != 0) {
                usage();
            }
            break;
        case 'P':
            o.pg_dsn = optarg;
            break;
        case 'M':
            o.mongo_uri = optarg;
            break;
        case 'D':
            o.mongo_db = optarg;
            break;
        case 'p':
            o.pid = atoi(optarg);
            break;
        case 'o':
            ops = optarg;
            break;
        case 'm':
            modes = optarg;
            break;
        case 'f':
            md = optarg;
            break;
        case 'g':
            plot = optarg;
            break;
        case 's': {
            /* "a,b=reason": one line per operation */
            const char *eq = strchr(optarg, '=');
            char *names = strndup(optarg, eq ? (size_t)(eq - optarg) : strlen(optarg));
            for (char *save = NULL, *t = strtok_r(names, ",", &save); t != NULL && nskipped < 16;
                 t = strtok_r(NULL, ",", &save)) {
                snprintf(skipped[nskipped++], sizeof(skipped[0]), "%s | skipped: %s", t,
                         eq ? eq + 1 : "not available");
            }
            free(names);
            break;
        }
        case 'h':
            hold = atof(optarg);
            break;
        case 'S':
            sample = atoi(optarg);
            break;
        default:
            usage();
        }
    }
    if (o.conns < 1 || o.conns > 60000 || o.keys < 1 || o.pkeys < 1 || o.okeys < 1 ||
        o.customers < 1 || (o.duration <= 0 && o.count == 0)) {
        usage();
    }
    raise_nofile(o.conns + 256);
    evthread_use_pthreads();

    if (strcmp(cmd, "idle") == 0) {
        return bh_http_idle(&o, o.conns, hold, sample) == 0 ? 0 : 1;
    }
    if (strcmp(cmd, "seed") == 0) {
        int bad = 0;
        for (int i = 0; bh_seed_ops[i] != NULL; i++) {
            struct result r;
            if (no_orders && bh_seed_ops[i] == bh_op_find("seed_orders")) {
                continue;
            }
            uint64_t t0 = bh_now_ns();
            struct bh_opts so = o;
            so.count = 0;
            if (bh_seed_ops[i] == bh_op_find("seed_products")) {
                so.keys = o.pkeys; /* FerretDB on SQLite writes one document at a time */
                so.conns = o.conns < 4 ? o.conns : 4;
            }
            if (bh_seed_ops[i] == bh_op_find("seed_orders")) {
                so.keys = o.okeys;
            }
            if (run_one(&so, bh_seed_ops[i], BH_GW, 1, &r) != 0) {
                return 1;
            }
            printf("SEED %s keys=%llu errors=%llu secs=%.1f%s%s\n", bh_seed_ops[i]->name,
                   (unsigned long long)so.keys, (unsigned long long)r.errors,
                   (double)(bh_now_ns() - t0) / 1e9, r.errors ? " last_error=" : "",
                   r.errors ? r.last_error : "");
            bad |= r.errors > 0;
        }
        return bad;
    }
    if (strcmp(cmd, "run") != 0) {
        usage();
    }
    int want_gw = strstr(modes, "gateway") != NULL, want_direct = strstr(modes, "direct") != NULL;
    struct result rs[MAX_RESULTS];
    int nr = 0;
    int redis_loaded = 0;
    char *list = strdup(ops);
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t != NULL && nr < MAX_RESULTS - 1;
         t = strtok_r(NULL, ",", &save)) {
        const struct bh_op *op = bh_op_find(t);
        if (op == NULL) {
            fprintf(stderr, "bench: unknown operation '%s'\n", t);
            return 2;
        }
        if (want_gw && run_one(&o, op, BH_GW, 0, &rs[nr]) == 0) {
            print_result(stdout, &rs[nr++]);
        }
        if (want_direct && op->needs != 0) {
            if ((op->needs & BH_NEED_MYSQL) && bh_mysql_nshards() == 0 &&
                bh_mysql_load_map(o.shardmap) != 0) {
                return 1;
            }
            if ((op->needs & BH_NEED_REDIS) && !redis_loaded) {
                if (bh_redis_load_scripts(&o) != 0) {
                    return 1;
                }
                redis_loaded = 1;
            }
            if (run_one(&o, op, BH_DIRECT, 0, &rs[nr]) == 0) {
                print_result(stdout, &rs[nr++]);
            } else {
                fprintf(stderr, "bench: %s direct: could not connect\n", op->name);
            }
        }
    }
    free(list);
    for (int i = 0; i < nskipped; i++) {
        printf("SKIPPED %s\n", skipped[i]);
    }
    putchar('\n');
    report(stdout, &o, rs, nr, skipped, nskipped);
    if (md != NULL) {
        FILE *f = fopen(md, "w");
        if (f != NULL) {
            report(f, &o, rs, nr, skipped, nskipped);
            fclose(f);
        }
    }
    if (plot != NULL) {
        FILE *f = fopen(plot, "w");
        if (f != NULL) {
            plot_data(f, rs, nr);
            fclose(f);
        }
    }
    return 0;
}
