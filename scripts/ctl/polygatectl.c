/*
 * polygatectl — the admin CLI: talks to polygate's admin API over HTTP.
 *
 *   polygatectl [-a HOST:PORT] [-k KEY] shardmap show
 *   polygatectl ... shardmap apply FILE [--backend NAME] [--yes]
 *   polygatectl ... rebalance status [--watch]
 *   polygatectl ... rebalance pause | resume | abort
 *   polygatectl ... rebalance throttle ROWS_PER_S
 *   polygatectl ... route DOMAIN KEY
 *   polygatectl ... fleet
 *
 * -a defaults to $POLYGATE_ADMIN or 127.0.0.1:9090; -k to $POLYGATE_ADMIN_KEY
 * (sent as Authorization: Bearer).  `shardmap apply` reads a YAML or JSON map,
 * prints the slot moves it implies against the active map, and applies it
 * only with --yes.  `rebalance status --watch` draws a progress bar on a
 * terminal, plain lines otherwise.  `fleet` prints the instances registered in
 * the control store (GET /admin/fleet; docs/fleet.md) as a table.  Exit status: 0 ok, 1 refused /
 * failed, 2 usage.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "config/cf_yaml.h"

/* json_object_array_length asserts on non-arrays (a missing member). */
static size_t alen(struct json_object *a)
{
    return json_object_is_type(a, json_type_array) ? json_object_array_length(a) : 0;
}
#include "routing/rt_shardmap.h"

static const char *admin_addr = "127.0.0.1:9090";
static const char *admin_key;

static void usage(void)
{
    fprintf(stderr, "usage: polygatectl [-a HOST:PORT] [-k KEY] COMMAND\n"
                    "  shardmap show\n"
                    "  shardmap apply FILE [--backend NAME] [--yes]\n"
                    "  rebalance status [--watch]\n"
                    "  rebalance pause | resume | abort\n"
                    "  rebalance throttle ROWS_PER_S\n"
                    "  route DOMAIN KEY\n"
                    "  fleet\n");
    exit(2);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* s percent-encoded for a URL path segment or query value (malloc'd). */
static char *url_encode(const char *s)
{
    char *out = malloc(strlen(s) * 3 + 1);
    if (out == NULL) {
        fprintf(stderr, "polygatectl: out of memory\n");
        exit(1);
    }
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-_.~", *p) != NULL) {
            out[o++] = (char)*p;
        } else {
            static const char hex[] = "0123456789ABCDEF";
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
    return out;
}

/* A malloc'd path; exits when out of memory. */
static char *__attribute__((format(printf, 1, 2))) pathf(const char *fmt, ...)
{
    char *p = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&p, fmt, ap);
    va_end(ap);
    if (n < 0) {
        fprintf(stderr, "polygatectl: out of memory\n");
        exit(1);
    }
    return p;
}

/* One HTTP/1.1 exchange (Connection: close).  Returns the status (-1 when
 * polygate cannot be reached) and *doc the parsed JSON body (or NULL). */
static int http(const char *method, const char *path, const char *body, struct json_object **doc)
{
    *doc = NULL;
    char *host = strdup(admin_addr);
    char *colon = host != NULL ? strrchr(host, ':') : NULL;
    if (colon == NULL) {
        fprintf(stderr, "polygatectl: -a wants HOST:PORT, not '%s'\n", admin_addr);
        exit(2);
    }
    *colon = '\0';
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(host, colon + 1, &hints, &ai);
    free(host);
    if (gai != 0 || ai == NULL) {
        fprintf(stderr, "polygatectl: cannot resolve '%s'\n", admin_addr);
        return -1;
    }
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        fprintf(stderr, "polygatectl: cannot reach polygate's admin API at %s: %s\n", admin_addr,
                strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    size_t blen = body != NULL ? strlen(body) : 0;
    char *head = NULL;
    int n = asprintf(&head,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n%s%s%s\r\n",
                     method, path, admin_addr, blen, admin_key ? "Authorization: Bearer " : "",
                     admin_key ? admin_key : "", admin_key ? "\r\n" : "");
    if (n < 0) {
        fprintf(stderr, "polygatectl: out of memory\n");
        close(fd);
        return -1;
    }
    int wrote = write_all(fd, head, (size_t)n) == 0 && write_all(fd, body, blen) == 0;
    free(head);
    if (!wrote) {
        fprintf(stderr, "polygatectl: write: %s\n", strerror(errno));
        close(fd);
        return -1;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (buf != NULL && len + 4096 > cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (nb == NULL) {
                free(buf);
            }
            buf = nb;
        }
        if (buf == NULL) {
            fprintf(stderr, "polygatectl: out of memory\n");
            close(fd);
            return -1;
        }
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r <= 0) {
            break;
        }
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    int status = -1;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) {
        fprintf(stderr, "polygatectl: not an HTTP answer from %s\n", admin_addr);
        free(buf);
        return -1;
    }
    char *b = strstr(buf, "\r\n\r\n");
    if (b != NULL && b[4] != '\0') {
        *doc = json_tokener_parse(b + 4);
    }
    free(buf);
    return status;
}

/* Print the error shape and return 1. */
static int failed(int status, struct json_object *doc)
{
    struct json_object *e = NULL, *m = NULL;
    if (doc != NULL && json_object_object_get_ex(doc, "error", &e) &&
        json_object_object_get_ex(e, "message", &m)) {
        fprintf(stderr, "polygatectl: %d %s: %s\n", status,
                json_object_get_string(json_object_object_get(e, "code")),
                json_object_get_string(m));
    } else if (status >= 0) {
        fprintf(stderr, "polygatectl: HTTP %d\n", status);
    }
    json_object_put(doc);
    return 1;
}

static const char *str(struct json_object *o, const char *k)
{
    struct json_object *v = json_object_object_get(o, k);
    return v != NULL ? json_object_get_string(v) : "-";
}

static int64_t num(struct json_object *o, const char *k)
{
    return json_object_get_int64(json_object_object_get(o, k));
}

static void print_rebalance_line(struct json_object *rb)
{
    printf("rebalance %s: backend %s, version %lld -> %lld, slots %lld/%lld, rows %lld, "
           "%lld rows/s, eta %s s, slot %s (%s), throttle %lld rows/s, errors %lld\n",
           str(rb, "state"), str(rb, "backend"), (long long)num(rb, "from_version"),
           (long long)num(rb, "to_version"), (long long)num(rb, "slots_done"),
           (long long)num(rb, "slots_total"), (long long)num(rb, "rows_moved"),
           (long long)num(rb, "rate_rows_per_s"), str(rb, "eta_s"), str(rb, "current_slot"),
           str(rb, "phase"), (long long)num(rb, "throttle_rows_per_s"),
           (long long)num(rb, "error_count"));
}

static int shardmap_show(void)
{
    struct json_object *doc;
    int st = http("GET", "/admin/shardmap", NULL, &doc);
    if (st != 200) {
        return failed(st, doc);
    }
    struct json_object *arr = json_object_object_get(doc, "backends");
    for (size_t i = 0; i < alen(arr); i++) {
        struct json_object *b = json_object_array_get_idx(arr, i);
        printf("backend %s: version %lld, %lld slots, vnodes %lld (%s)\n", str(b, "backend"),
               (long long)num(b, "version"), (long long)num(b, "slots"),
               (long long)num(b, "vnodes"), str(b, "path"));
        printf("  %-16s %6s %6s  %s\n", "SHARD", "WEIGHT", "SLOTS", "DSN");
        struct json_object *sh = json_object_object_get(b, "shards");
        for (size_t s = 0; s < alen(sh); s++) {
            struct json_object *o = json_object_array_get_idx(sh, s);
            printf("  %-16s %6lld %6lld  %s\n", str(o, "name"), (long long)num(o, "weight"),
                   (long long)num(o, "slots"), str(o, "dsn"));
        }
        struct json_object *ov = json_object_object_get(b, "overrides");
        if (ov != NULL && json_object_object_length(ov) > 0) {
            printf("  overrides: %d range(s)\n", json_object_object_length(ov));
        }
        struct json_object *mig = json_object_object_get(b, "migration");
        if (mig != NULL) {
            printf("  ");
            print_rebalance_line(mig);
        }
    }
    json_object_put(doc);
    return 0;
}

/* The active map of one backend as a map document (from GET /admin/shardmap). */
static struct json_object *active_doc(struct json_object *b)
{
    struct json_object *d = json_object_new_object();
    static const char *const keys[] = {"version", "slots", "vnodes", "overrides", NULL};
    for (int i = 0; keys[i] != NULL; i++) {
        struct json_object *v = json_object_object_get(b, keys[i]);
        if (v != NULL) {
            json_object_object_add(d, keys[i], json_object_get(v));
        }
    }
    struct json_object *sh = json_object_new_array();
    struct json_object *src = json_object_object_get(b, "shards");
    for (size_t s = 0; s < alen(src); s++) {
        struct json_object *o = json_object_array_get_idx(src, s), *n = json_object_new_object();
        json_object_object_add(n, "name", json_object_get(json_object_object_get(o, "name")));
        json_object_object_add(n, "dsn", json_object_get(json_object_object_get(o, "dsn")));
        json_object_object_add(n, "weight", json_object_get(json_object_object_get(o, "weight")));
        json_object_array_add(sh, n);
    }
    json_object_object_add(d, "shards", sh);
    return d;
}

static int shardmap_apply(const char *file, const char *backend, int yes)
{
    char err[512];
    struct json_object *next = cf_yaml_load_file(file, err, sizeof(err));
    if (next == NULL) {
        fprintf(stderr, "polygatectl: %s\n", err);
        return 1;
    }
    struct rt_shardmap *nm = rt_shardmap_from_json(next, err, sizeof(err));
    if (nm == NULL) {
        fprintf(stderr, "polygatectl: %s: %s\n", file, err);
        json_object_put(next);
        return 1;
    }
    struct json_object *doc;
    int st = http("GET", "/admin/shardmap", NULL, &doc);
    if (st != 200) {
        rt_shardmap_unref(nm);
        json_object_put(next);
        return failed(st, doc);
    }
    struct json_object *arr = json_object_object_get(doc, "backends"), *b = NULL;
    for (size_t i = 0; i < alen(arr); i++) {
        struct json_object *o = json_object_array_get_idx(arr, i);
        if (backend == NULL ? alen(arr) == 1 : strcmp(str(o, "backend"), backend) == 0) {
            b = o;
        }
    }
    if (b == NULL) {
        fprintf(stderr, "polygatectl: %s\n",
                backend == NULL ? "several sharded backends: name one with --backend"
                                : "no such sharded backend");
        rt_shardmap_unref(nm);
        json_object_put(next);
        json_object_put(doc);
        return 1;
    }
    struct json_object *ad = active_doc(b);
    struct rt_shardmap *am = rt_shardmap_from_json(ad, err, sizeof(err));
    json_object_put(ad);
    struct rt_slot_move *moves = NULL;
    size_t nmoves = 0;
    if (am == NULL || rt_shardmap_diff(am, nm, &moves, &nmoves, err, sizeof(err)) < 0) {
        fprintf(stderr, "polygatectl: %s\n", err);
        rt_shardmap_unref(am);
        rt_shardmap_unref(nm);
        json_object_put(next);
        json_object_put(doc);
        return 1;
    }
    printf("backend %s: version %lld -> %lld, %zu of %u slot(s) move\n", str(b, "backend"),
           (long long)rt_shardmap_version(am), (long long)rt_shardmap_version(nm), nmoves,
           rt_shardmap_nslots(nm));
    /* per (from, to) pair */
    for (size_t i = 0; i < nmoves; i++) {
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++) {
            seen =
                strcmp(moves[j].from, moves[i].from) == 0 && strcmp(moves[j].to, moves[i].to) == 0;
        }
        if (seen) {
            continue;
        }
        size_t k = 0;
        for (size_t j = i; j < nmoves; j++) {
            k += strcmp(moves[j].from, moves[i].from) == 0 && strcmp(moves[j].to, moves[i].to) == 0;
        }
        printf("  %-16s -> %-16s %6zu slot(s)\n", moves[i].from, moves[i].to, k);
    }
    free(moves);
    rt_shardmap_unref(am);
    rt_shardmap_unref(nm);
    char *be = url_encode(str(b, "backend"));
    char *path = pathf("/admin/shardmap/%s", be);
    free(be);
    json_object_put(doc);
    if (!yes) {
        printf("not applied: run again with --yes to apply it\n");
        json_object_put(next);
        free(path);
        return 0;
    }
    st = http("PUT", path, json_object_to_json_string_ext(next, JSON_C_TO_STRING_PLAIN), &doc);
    json_object_put(next);
    free(path);
    if (st != 200 && st != 202) {
        return failed(st, doc);
    }
    printf(st == 200
               ? "applied\n"
               : "rebalance started: follow it with `polygatectl rebalance status --watch`\n");
    json_object_put(doc);
    return 0;
}

static int rebalance_status(int watch)
{
    int tty = isatty(STDOUT_FILENO);
    for (;;) {
        struct json_object *doc;
        int st = http("GET", "/admin/rebalance", NULL, &doc);
        if (st != 200) {
            return failed(st, doc);
        }
        const char *state = str(doc, "state");
        int running = strcmp(state, "running") == 0 || strcmp(state, "paused") == 0;
        if (watch && tty && running) {
            long long done = num(doc, "slots_done"), total = num(doc, "slots_total");
            int width = 40, fill = total > 0 ? (int)(done * width / total) : 0;
            char bar[64];
            memset(bar, '#', (size_t)fill);
            memset(bar + fill, '.', (size_t)(width - fill));
            bar[width] = '\0';
            printf("\r[%s] %lld/%lld slots, %lld rows, %lld rows/s, eta %s s, %s   ", bar, done,
                   total, (long long)num(doc, "rows_moved"), (long long)num(doc, "rate_rows_per_s"),
                   str(doc, "eta_s"), state);
            fflush(stdout);
        } else {
            if (watch && tty) {
                printf("\n");
            }
            print_rebalance_line(doc);
            struct json_object *errs = json_object_object_get(doc, "errors");
            for (size_t i = 0; !watch && i < alen(errs); i++) {
                printf("  error: %s\n", json_object_get_string(json_object_array_get_idx(errs, i)));
            }
        }
        json_object_put(doc);
        if (!watch || !running) {
            return 0;
        }
        struct timespec ts = {tty ? 0 : 1, tty ? 500000000L : 0};
        nanosleep(&ts, NULL);
    }
}

static int rebalance_action(const char *method, const char *path, const char *body)
{
    struct json_object *doc;
    int st = http(method, path, body, &doc);
    if (st != 200) {
        return failed(st, doc);
    }
    print_rebalance_line(doc);
    json_object_put(doc);
    return 0;
}

static int route(const char *domain, const char *key)
{
    char *dom = url_encode(domain), *enc = url_encode(key);
    char *path = pathf("/admin/route/%s?key=%s", dom, enc);
    free(dom);
    free(enc);
    struct json_object *doc;
    int st = http("GET", path, NULL, &doc);
    free(path);
    if (st != 200) {
        return failed(st, doc);
    }
    printf("%s %s -> slot %s, shard %s (map version %s, hash %s)\n", domain, key, str(doc, "slot"),
           str(doc, "shard"), str(doc, "map_version"), str(doc, "hash"));
    json_object_put(doc);
    return 0;
}

/* GET /admin/fleet as a table: one line per instance, '*' marks the one asked. */
static int fleet(void)
{
    struct json_object *doc;
    int st = http("GET", "/admin/fleet", NULL, &doc);
    if (st != 200) {
        return failed(st, doc);
    }
    struct json_object *store = json_object_object_get(doc, "store");
    if (store != NULL) {
        printf("control store: etcd %s, prefix %s, %s, revision %lld, watch %s\n",
               str(store, "etcd"), str(store, "prefix"),
               json_object_get_boolean(json_object_object_get(store, "reachable")) ? "reachable"
                                                                                   : "UNREACHABLE",
               (long long)num(store, "revision"),
               json_object_get_boolean(json_object_object_get(store, "watch")) ? "up" : "DOWN");
    } else {
        printf("control: %s (no control store: this instance alone)\n", str(doc, "control"));
    }
    printf("  %-28s %-21s %-21s %8s  %-24s %s\n", "INSTANCE", "LISTEN", "ADMIN", "PID", "STARTED",
           "MAP VERSIONS");
    struct json_object *arr = json_object_object_get(doc, "instances");
    for (size_t i = 0; i < alen(arr); i++) {
        struct json_object *o = json_object_array_get_idx(arr, i);
        char maps[256] = "";
        size_t off = 0;
        struct json_object *mv = json_object_object_get(o, "map_versions");
        if (mv != NULL && json_object_is_type(mv, json_type_object)) {
            json_object_object_foreach(mv, be, ver)
            {
                int w = snprintf(maps + off, sizeof(maps) - off, "%s%s=%lld", off ? " " : "", be,
                                 (long long)json_object_get_int64(ver));
                if (w < 0 || (size_t)w >= sizeof(maps) - off) {
                    break;
                }
                off += (size_t)w;
            }
        }
        int self = json_object_get_boolean(json_object_object_get(o, "self"));
        printf("%c %-28s %-21s %-21s %8lld  %-24s %s\n", self ? '*' : ' ', str(o, "id"),
               str(o, "listen"), str(o, "admin"), (long long)num(o, "pid"), str(o, "started"),
               maps);
    }
    json_object_put(doc);
    return 0;
}

int main(int argc, char **argv)
{
    if (getenv("POLYGATE_ADMIN") != NULL) {
        admin_addr = getenv("POLYGATE_ADMIN");
    }
    admin_key = getenv("POLYGATE_ADMIN_KEY");
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "-a") == 0 && i + 1 < argc) {
            admin_addr = argv[++i];
        } else if (strcmp(argv[i], "-k") == 0 && i + 1 < argc) {
            admin_key = argv[++i];
        } else {
            usage();
        }
    }
    int n = argc - i;
    char **a = argv + i;
    if (n == 2 && strcmp(a[0], "shardmap") == 0 && strcmp(a[1], "show") == 0) {
        return shardmap_show();
    }
    if (n >= 3 && strcmp(a[0], "shardmap") == 0 && strcmp(a[1], "apply") == 0) {
        const char *backend = NULL;
        int yes = 0;
        for (int k = 3; k < n; k++) {
            if (strcmp(a[k], "--yes") == 0) {
                yes = 1;
            } else if (strcmp(a[k], "--backend") == 0 && k + 1 < n) {
                backend = a[++k];
            } else {
                usage();
            }
        }
        return shardmap_apply(a[2], backend, yes);
    }
    if (n >= 2 && strcmp(a[0], "rebalance") == 0) {
        if (strcmp(a[1], "status") == 0 && (n == 2 || (n == 3 && strcmp(a[2], "--watch") == 0))) {
            return rebalance_status(n == 3);
        }
        if (n == 2 && (strcmp(a[1], "pause") == 0 || strcmp(a[1], "resume") == 0 ||
                       strcmp(a[1], "abort") == 0)) {
            char path[64];
            snprintf(path, sizeof(path), "/admin/rebalance/%s", a[1]);
            return rebalance_action("POST", path, "");
        }
        if (n == 3 && strcmp(a[1], "throttle") == 0) {
            char *end;
            long long v = strtoll(a[2], &end, 10);
            if (*end != '\0' || v < 0) {
                usage();
            }
            char body[64];
            snprintf(body, sizeof(body), "{\"throttle_rows_per_s\":%lld}", v);
            return rebalance_action("PUT", "/admin/rebalance", body);
        }
    }
    if (n == 3 && strcmp(a[0], "route") == 0) {
        return route(a[1], a[2]);
    }
    if (n == 1 && strcmp(a[0], "fleet") == 0) {
        return fleet();
    }
    usage();
    return 2;
}
