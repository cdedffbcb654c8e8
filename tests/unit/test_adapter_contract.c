/*
 * test_adapter_contract.c — the adapter contract of adapters/ad.h, driven
 * through the gateway's own request code with a FAKE adapter; no server.
 *
 * The fake registers like a real store (ad_register with an ad_ops), the
 * config names it as a backend type, and a real worker (gw_worker_init with
 * gw_request_hooks) serves HTTP on one end of a socketpair while the test
 * writes requests on the other and runs the loop.  It doubles as the example
 * for adding a store (docs/design.md, "Adding a store"): the fake honours the
 * contract the way an adapter must — completions deferred with
 * event_active, never from inside submit — and counts what it sees.
 *
 * Checked:
 *  - an accepted request completes exactly once, on the loop thread, never
 *    from inside submit, and the client gets exactly one answer;
 *  - a synchronous refusal (AD_EFULL) never calls back and is answered 503;
 *  - a deadline answers 504 once; the gateway cancels, the adapter still
 *    completes (AD_CANCELED), and that completion is ignored; with no cancel
 *    hook (as Redis) a late success is ignored the same way;
 *  - a _query on one shard: rows become the page {items, cursor,
 *    shards_queried: 1, partial: false}, and the cursor comes back to the
 *    adapter as the last row's sort values;
 *  - a scatter with one shard failing: `partial: true` with the right
 *    shards_queried and missing_shards, or 503 naming the shard without it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "config/cf_yaml.h"
#include "gateway/gw_accesslog.h"
#include "gateway/gw_breaker.h"
#include "gateway/gw_http.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_request.h"
#include "gateway/gw_worker.h"
#include "lib/lb_log.h"
#include "model/md_query.h"

/* ---- the fake adapter ------------------------------------------------------ */

enum fake_mode {
    FAKE_ROWS,   /* complete (deferred) with rows / an item */
    FAKE_REFUSE, /* refuse synchronously: AD_EFULL */
    FAKE_HOLD,   /* keep it until cancel() or fake_release() */
    FAKE_FAIL,   /* complete (deferred) with AD_UNAVAILABLE */
};

#define FAKE_MAX_SHARDS 8
#define FAKE_MAX_CALLS 64

struct fake_call {
    struct fake_state *st;
    uint64_t id;
    const struct ad_req *req;
    ad_done_cb cb;
    void *arg;
    struct event *ev;
    enum ad_status status;
    int queued; /* event_active'd, not run yet */
    int done;   /* times the callback was called */
};

struct fake_state {
    struct event_base *base;
    const struct cf_backend *be;
};

/* What the fake saw, over the whole test. */
static struct {
    enum fake_mode mode[FAKE_MAX_SHARDS];
    struct fake_call calls[FAKE_MAX_CALLS];
    int ncalls;
    int refusals;
    int cancels;
    int in_submit;
    int cb_in_submit;  /* callbacks run from inside submit (must stay 0) */
    int cb_off_thread; /* callbacks run on another thread (must stay 0) */
    pthread_t loop_thread;
    struct json_object *last_after; /* the decoded cursor of the last _query */
} fk;

/* Rows of one shard: two items whose keys name the shard. */
static struct json_object *fake_rows(const struct ad_req *req)
{
    struct json_object *rows = json_object_new_array();
    for (int i = 0; i < 2; i++) {
        char id[32];
        snprintf(id, sizeof(id), "s%d-%d", req->shard, i);
        struct json_object *it = json_object_new_object();
        json_object_object_add(it, "id", json_object_new_string(id));
        json_object_object_add(it, "n", json_object_new_int(req->shard * 10 + i));
        json_object_array_add(rows, it);
    }
    return rows;
}

static void fake_complete_cb(evutil_socket_t fd, short what, void *arg)
{
    struct fake_call *c = arg;
    (void)fd;
    (void)what;
    c->queued = 0;
    if (fk.in_submit) {
        fk.cb_in_submit++;
    }
    if (!pthread_equal(pthread_self(), fk.loop_thread)) {
        fk.cb_off_thread++;
    }
    struct ad_res res;
    ad_res_init(&res);
    struct json_object *rows = NULL, *last = NULL, *item = NULL;
    if (c->status != AD_DONE) {
        ad_res_error(&res, c->status, c->st->be->shards[c->req->shard].name, "fake: %s",
                     c->status == AD_CANCELED ? "canceled" : "shard down");
    } else if (c->req->op == AD_QUERY) {
        rows = fake_rows(c->req);
        res.rows = rows;
        /* one row more than the page was there: the sort values of the last
         * row (order_by is the key alone here) */
        last = json_object_new_array();
        json_object_array_add(last, json_object_get(json_object_object_get(
                                        json_object_array_get_idx(rows, 1), "id")));
        res.last = last;
    } else if (c->req->op == AD_GET) {
        item = json_object_new_object();
        json_object_object_add(item, "id", json_object_new_string(c->req->key));
        res.item = item;
    }
    c->done++;
    c->cb(&res, c->arg); /* borrowed: put after the callback */
    json_object_put(rows);
    json_object_put(last);
    json_object_put(item);
}

static void fake_queue(struct fake_call *c, enum ad_status st)
{
    c->status = st;
    c->queued = 1;
    event_active(c->ev, EV_TIMEOUT, 0); /* never complete from inside submit */
}

static int fake_init(struct event_base *base, const struct cf_backend *be, void **state, char *err,
                     size_t errlen)
{
    (void)err;
    (void)errlen;
    struct fake_state *st = calloc(1, sizeof(*st));
    st->base = base;
    st->be = be;
    *state = st;
    return 0;
}

static int fake_supports(const struct cf_domain *d, enum ad_op op)
{
    (void)d;
    return op <= AD_PING;
}

static int fake_submit(void *state, const struct ad_req *req, ad_done_cb cb, void *arg)
{
    struct fake_state *st = state;
    enum fake_mode m = fk.mode[req->shard];
    if (m == FAKE_REFUSE) {
        fk.refusals++;
        return AD_EFULL;
    }
    if (fk.ncalls == FAKE_MAX_CALLS) {
        return AD_EFULL;
    }
    fk.in_submit = 1;
    struct fake_call *c = &fk.calls[fk.ncalls++];
    memset(c, 0, sizeof(*c));
    c->st = st;
    c->id = req->id;
    c->req = req;
    c->cb = cb;
    c->arg = arg;
    c->ev = event_new(st->base, -1, 0, fake_complete_cb, c);
    if (req->op == AD_QUERY && req->query != NULL) {
        json_object_put(fk.last_after);
        fk.last_after = json_object_get(req->query->after);
    }
    if (m == FAKE_ROWS) {
        fake_queue(c, AD_DONE);
    } else if (m == FAKE_FAIL) {
        fake_queue(c, AD_UNAVAILABLE);
    }
    fk.in_submit = 0;
    return 0;
}

static void fake_cancel(void *state, uint64_t req_id)
{
    (void)state;
    fk.cancels++;
    for (int i = 0; i < fk.ncalls; i++) {
        struct fake_call *c = &fk.calls[i];
        if (c->id == req_id && c->done == 0 && !c->queued) {
            fake_queue(c, AD_CANCELED); /* a hint: it still completes */
        }
    }
}

/* Every pending request completes with AD_UNAVAILABLE; none after. */
static void fake_shutdown(void *state)
{
    for (int i = 0; i < fk.ncalls; i++) {
        struct fake_call *c = &fk.calls[i];
        if (c->st != state) {
            continue;
        }
        if (c->done == 0) {
            c->status = AD_UNAVAILABLE;
            fake_complete_cb(-1, 0, c);
        }
        event_free(c->ev);
        c->ev = NULL;
        c->st = NULL;
    }
    free(state);
}

/* The test completes what the fake holds (a late answer). */
static void fake_release(enum ad_status st)
{
    for (int i = 0; i < fk.ncalls; i++) {
        if (fk.calls[i].done == 0 && !fk.calls[i].queued) {
            fake_queue(&fk.calls[i], st);
        }
    }
}

static const struct ad_ops fake_ops = {
    .name = "fake",
    .abi = AD_ABI,
    .init = fake_init,
    .supports = fake_supports,
    .submit = fake_submit,
    .cancel = fake_cancel,
    .shutdown = fake_shutdown,
};

/* The same store without a cancel hook: a sent request cannot be taken back. */
static const struct ad_ops fake_nocancel_ops = {
    .name = "fake-nocancel",
    .abi = AD_ABI,
    .init = fake_init,
    .supports = fake_supports,
    .submit = fake_submit,
    .shutdown = fake_shutdown,
};

/* ---- the rig: a worker serving one end of a socketpair -------------------- */

static const char config_fmt[] =
    "listen: 127.0.0.1:%d\n"
    "admin_listen: 127.0.0.1:%d\n"
    "workers: 1\n"
    "access_log: \"off\"\n"
    "log_level: error\n"
    "auth: {enabled: false}\n"
    "backends:\n"
    "  one: {type: fake, shards: [{name: only, dsn: \"fake://only\"}]}\n"
    "  nc: {type: fake-nocancel, shards: [{name: nc, dsn: \"fake://nc\"}]}\n"
    "  four: {type: fake, shard_map: tests/unit/data/shardmap_orders.json}\n"
    "domains:\n"
    "  items:\n"
    "    backend: one\n"
    "    kind: record\n"
    "    key: id\n"
    "    timeout_ms: 100\n"
    "    fields: {id: string, n: int}\n"
    "  slow:\n"
    "    backend: nc\n"
    "    kind: record\n"
    "    key: id\n"
    "    timeout_ms: 50\n"
    "    fields: {id: string}\n"
    "  spread:\n"
    "    backend: four\n"
    "    kind: record\n"
    "    key: id\n"
    "    shard_key: cust\n"
    "    fields: {id: string, n: int, cust: {type: string, required: true}}\n";

struct rig {
    struct cf_config *cf;
    struct gw_worker w;
    int fd; /* the client's end */
};

static struct rig rig;

/* A port free right now: the worker must listen somewhere (the test's
 * requests come through a socketpair the server adopts, not through it). */
static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static int rig_setup(void **state)
{
    (void)state;
    memset(&fk, 0, sizeof(fk));
    fk.loop_thread = pthread_self();
    static int registered;
    if (!registered) {
        assert_int_equal(ad_register(&fake_ops), 0);
        assert_int_equal(ad_register(&fake_nocancel_ops), 0);
        assert_int_equal(ad_register(&fake_ops), -1); /* twice: refused */
        registered = 1;
    }
    char yaml[4096], err[512];
    /* make runs the unit tests from the repository's root */
    snprintf(yaml, sizeof(yaml), config_fmt, free_port(), free_port());
    struct json_object *root = cf_yaml_load_string(yaml, strlen(yaml), err, sizeof(err));
    assert_non_null(root);
    rig.cf = cf_config_from_json(root, "contract.yaml", err, sizeof(err));
    json_object_put(root);
    if (rig.cf == NULL) {
        fail_msg("config: %s", err);
    }
    lb_log_set_level(rig.cf->log_level);
    gw_metrics_register_config(rig.cf);
    assert_int_equal(gw_accesslog_configure(rig.cf->access_log, err, sizeof(err)), 0);
    gw_breaker_configure(1000, 1000); /* the failing shard must not open its circuit */
    if (gw_worker_init(&rig.w, 0, rig.cf, NULL, &gw_request_hooks, err, sizeof(err)) < 0) {
        fail_msg("worker: %s", err);
    }
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    rig.fd = sv[0];
    gw_http_server_adopt(rig.w.http, sv[1]);
    return 0;
}

static int rig_teardown(void **state)
{
    (void)state;
    close(rig.fd);
    gw_worker_destroy(&rig.w);
    cf_config_unref(rig.cf);
    json_object_put(fk.last_after);
    return 0;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Run the worker's loop for about ms milliseconds. */
static void spin(int ms)
{
    uint64_t end = now_ms() + (uint64_t)ms;
    while (now_ms() < end) {
        event_base_loop(rig.w.base, EVLOOP_NONBLOCK);
        usleep(1000);
    }
}

static void send_req(const char *method, const char *path, const char *body)
{
    char buf[2048];
    int n = snprintf(buf, sizeof(buf),
                     "%s %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     method, path, body != NULL ? strlen(body) : 0, body != NULL ? body : "");
    assert_int_equal(write(rig.fd, buf, (size_t)n), n);
}

struct answer {
    int status;
    char head[2048];
    char body[8192];
};

/* Read one whole answer, running the loop meanwhile (up to 2 s). */
static void read_answer(struct answer *a)
{
    static char in[16384];
    size_t len = 0;
    uint64_t end = now_ms() + 2000;
    memset(a, 0, sizeof(*a));
    while (now_ms() < end) {
        event_base_loop(rig.w.base, EVLOOP_NONBLOCK);
        ssize_t got = read(rig.fd, in + len, sizeof(in) - 1 - len);
        if (got > 0) {
            len += (size_t)got;
            in[len] = '\0';
            const char *eoh = strstr(in, "\r\n\r\n");
            const char *cl = strcasestr(in, "content-length: ");
            if (eoh != NULL && cl != NULL) {
                size_t want = (size_t)strtoul(cl + 16, NULL, 10);
                size_t hl = (size_t)(eoh + 4 - in);
                if (len >= hl + want) {
                    assert_int_equal(len, hl + want); /* nothing more: one answer */
                    a->status = atoi(in + 9);
                    snprintf(a->head, sizeof(a->head), "%.*s", (int)hl, in);
                    snprintf(a->body, sizeof(a->body), "%.*s", (int)want, eoh + 4);
                    return;
                }
            }
        } else if (got < 0 && errno != EAGAIN) {
            break;
        } else {
            usleep(1000);
        }
    }
    fail_msg("no complete answer (%zu bytes read)", len);
}

/* After the answer: run on, and nothing else arrives; every request of the
 * worker is freed (its one completion came). */
static void assert_quiet(int ms)
{
    spin(ms);
    char c;
    assert_int_equal(read(rig.fd, &c, 1), -1);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(rig.w.ninflight, 0);
}

static void assert_each_call_completed_once(void)
{
    for (int i = 0; i < fk.ncalls; i++) {
        assert_int_equal(fk.calls[i].done, 1);
    }
    assert_int_equal(fk.cb_in_submit, 0);
    assert_int_equal(fk.cb_off_thread, 0);
}

/* ---- tests ----------------------------------------------------------------- */

static void test_completes_once_on_the_loop(void **state)
{
    (void)state;
    struct answer a;
    send_req("GET", "/v1/items/k1", NULL);
    read_answer(&a);
    assert_int_equal(a.status, 200);
    assert_string_equal(a.body, "{\"id\":\"k1\"}");
    assert_quiet(20);
    assert_int_equal(fk.ncalls, 1);
    assert_each_call_completed_once();
}

static void test_refusal_never_calls_back(void **state)
{
    (void)state;
    struct answer a;
    fk.mode[0] = FAKE_REFUSE;
    send_req("GET", "/v1/items/k1", NULL);
    read_answer(&a);
    assert_int_equal(a.status, 503);
    assert_non_null(strstr(a.body, "wait queue is full"));
    assert_quiet(20);
    assert_int_equal(fk.refusals, 1);
    assert_int_equal(fk.ncalls, 0); /* nothing accepted, nothing called back */
}

static void test_deadline_cancel_still_completes(void **state)
{
    (void)state;
    struct answer a;
    fk.mode[0] = FAKE_HOLD;
    send_req("GET", "/v1/items/k1", NULL);
    read_answer(&a); /* timeout_ms: 100 */
    assert_int_equal(a.status, 504);
    assert_non_null(strstr(a.body, "shard 'only'"));
    assert_int_equal(fk.cancels, 1);
    assert_quiet(20); /* the AD_CANCELED completion came and was ignored */
    assert_int_equal(fk.ncalls, 1);
    assert_int_equal(fk.calls[0].status, AD_CANCELED);
    assert_each_call_completed_once();
}

static void test_deadline_ignores_a_late_answer(void **state)
{
    (void)state;
    struct answer a;
    fk.mode[0] = FAKE_HOLD;
    send_req("GET", "/v1/slow/k1", NULL);
    read_answer(&a); /* timeout_ms: 50, and no cancel hook */
    assert_int_equal(a.status, 504);
    assert_int_equal(fk.cancels, 0);
    assert_int_equal(rig.w.ninflight, 1); /* answered, still waiting for its completion */
    fake_release(AD_DONE);                /* the late success */
    assert_quiet(20);
    assert_each_call_completed_once();
}

static void test_query_page_and_cursor(void **state)
{
    (void)state;
    struct answer a;
    send_req("POST", "/v1/items/_query", "{\"limit\": 2}");
    read_answer(&a);
    assert_int_equal(a.status, 200);
    assert_null(fk.last_after); /* first page */
    struct json_object *doc = json_tokener_parse(a.body);
    assert_non_null(doc);
    /* the page, built by the gateway from the rows: keys in this order */
    const char *expect_prefix = "{\"items\":[{\"id\":\"s0-0\",\"n\":0},{\"id\":\"s0-1\",\"n\":1}],"
                                "\"cursor\":\"";
    assert_memory_equal(a.body, expect_prefix, strlen(expect_prefix));
    assert_non_null(strstr(a.body, "\",\"shards_queried\":1,\"partial\":false}"));
    const char *cursor = json_object_get_string(json_object_object_get(doc, "cursor"));
    char body[1024];
    snprintf(body, sizeof(body), "{\"limit\": 2, \"cursor\": \"%s\"}", cursor);
    json_object_put(doc);
    send_req("POST", "/v1/items/_query", body);
    read_answer(&a);
    assert_int_equal(a.status, 200);
    /* the cursor came back to the adapter as the last row's sort values */
    assert_non_null(fk.last_after);
    assert_string_equal(json_object_to_json_string(fk.last_after), "[ \"s0-1\" ]");
    assert_quiet(20);
    assert_each_call_completed_once();
}

static void test_scatter_partial(void **state)
{
    (void)state;
    struct answer a;
    fk.mode[1] = FAKE_FAIL; /* shard orders-2 */
    send_req("POST", "/v1/spread/_query", "{\"limit\": 3, \"partial\": true}");
    read_answer(&a);
    assert_int_equal(a.status, 200);
    assert_non_null(strstr(a.head, "X-Shards-Queried: 4\r\n"));
    struct json_object *doc = json_tokener_parse(a.body);
    assert_non_null(doc);
    assert_int_equal(json_object_get_int(json_object_object_get(doc, "shards_queried")), 4);
    assert_true(json_object_get_boolean(json_object_object_get(doc, "partial")));
    assert_string_equal(json_object_to_json_string_ext(
                            json_object_object_get(doc, "missing_shards"), JSON_C_TO_STRING_PLAIN),
                        "[\"orders-2\"]");
    /* merged by key from the shards that answered, limit kept */
    assert_string_equal(
        json_object_to_json_string_ext(json_object_object_get(doc, "items"),
                                       JSON_C_TO_STRING_PLAIN),
        "[{\"id\":\"s0-0\",\"n\":0},{\"id\":\"s0-1\",\"n\":1},{\"id\":\"s2-0\",\"n\":20}]");
    assert_non_null(json_object_get_string(json_object_object_get(doc, "cursor")));
    json_object_put(doc);
    assert_quiet(20);
    assert_int_equal(fk.ncalls, 4);
    assert_each_call_completed_once();

    /* without "partial": the failed shard fails the request, named */
    send_req("POST", "/v1/spread/_query", "{\"limit\": 3}");
    read_answer(&a);
    assert_int_equal(a.status, 503);
    assert_non_null(strstr(a.body, "orders-2"));
    assert_quiet(20);
    assert_each_call_completed_once();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_completes_once_on_the_loop, rig_setup, rig_teardown),
        cmocka_unit_test_setup_teardown(test_refusal_never_calls_back, rig_setup, rig_teardown),
        cmocka_unit_test_setup_teardown(test_deadline_cancel_still_completes, rig_setup,
                                        rig_teardown),
        cmocka_unit_test_setup_teardown(test_deadline_ignores_a_late_answer, rig_setup,
                                        rig_teardown),
        cmocka_unit_test_setup_teardown(test_query_page_and_cursor, rig_setup, rig_teardown),
        cmocka_unit_test_setup_teardown(test_scatter_partial, rig_setup, rig_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
