/*
 * test_sql_pool.c — the SQL adapters' shared pool (adapters/sql/sql_pool.c)
 * driven by a fake driver: the test decides when a connection comes up,
 * fails or answers.  Queue bound, "shard down", reconnect, growth on demand,
 * cancel, and the auto_migrate gate (every shard, retried after a failure).
 * The real drivers run against real servers in the integration suite.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "adapters/ad.h"
#include "adapters/sql/sql_pool.h"
#include "config/cf_config.h"
#include "tests/unit/unit_config.h"

static const char config_json[] =
    "{\"backends\":{\"p\":{\"type\":\"pg\",\"pool\":{\"min\":1,\"max\":2,\"queue_max\":3,"
    "\"backoff_min_ms\":50,\"backoff_max_ms\":100},\"shards\":["
    "{\"name\":\"s0\",\"dsn\":\"host=x\"},{\"name\":\"s1\",\"dsn\":\"host=y\"}]}},"
    "\"domains\":{"
    "\"plain\":{\"backend\":\"p\",\"table\":\"plain\",\"key\":\"id\",\"fields\":{\"id\":\"string\"}"
    "},"
    "\"mig\":{\"backend\":\"p\",\"table\":\"mig\",\"key\":\"id\",\"auto_migrate\":true,"
    "\"fields\":{\"id\":\"string\"}}}}";

/* ---- the fake driver ------------------------------------------------------------ */

struct fake_conn {
    struct sql_conn b;
    int starts; /* conn_start calls */
    int closes;
};

struct fake_call {
    struct sql_call b;
    int cleared;
};

#define MAX_SENT 32
static struct sql_call *sent[MAX_SENT];
static struct sql_conn *sent_on[MAX_SENT];
static int nsent;
static int cleared;

static void fake_conn_init(struct sql_conn *c, struct event_base *base)
{
    (void)c;
    (void)base;
}

static void fake_conn_fini(struct sql_conn *c)
{
    (void)c;
}

static void fake_conn_start(struct sql_conn *c)
{
    ((struct fake_conn *)(void *)c)->starts++; /* the test says how it ends */
}

static void fake_conn_close(struct sql_conn *c)
{
    ((struct fake_conn *)(void *)c)->closes++;
}

static int fake_send(struct sql_conn *c, struct sql_call *call)
{
    assert_ptr_equal(c->call, call);
    assert_int_equal(c->state, SQL_C_BUSY);
    assert_true(nsent < MAX_SENT);
    sent[nsent] = call;
    sent_on[nsent] = c;
    nsent++;
    return 0;
}

static void fake_call_clear(struct sql_call *call)
{
    ((struct fake_call *)(void *)call)->cleared = 1;
    cleared++;
}

static const struct sql_driver fake = {
    .name = "fake",
    .store = "Fake",
    .dialect = SQL_PG,
    .conn_size = sizeof(struct fake_conn),
    .call_size = sizeof(struct fake_call),
    .conn_init = fake_conn_init,
    .conn_fini = fake_conn_fini,
    .conn_start = fake_conn_start,
    .conn_close = fake_conn_close,
    .send = fake_send,
    .call_clear = fake_call_clear,
};

/* ---- fixtures ---------------------------------------------------------------------- */

static struct cf_config *cf;

struct done {
    int n;
    enum ad_status status;
    char message[256];
    const char *shard;
};

static void on_done(const struct ad_res *res, void *arg)
{
    struct done *d = arg;
    d->n++;
    d->status = res->status;
    d->shard = res->shard;
    snprintf(d->message, sizeof(d->message), "%s", res->message);
}

struct fx {
    struct event_base *base;
    struct sql_pool *p;
};

static int setup(void **state)
{
    cf = unit_config(config_json);
    if (cf == NULL) {
        return -1;
    }
    struct fx *fx = calloc(1, sizeof(*fx));
    fx->base = event_base_new();
    nsent = 0;
    cleared = 0;
    fx->p = sql_pool_new(fx->base, &cf->backends[0], &fake, NULL);
    *state = fx;
    return fx->p == NULL ? -1 : 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    sql_pool_free(fx->p);
    event_base_free(fx->base);
    free(fx);
    cf_config_unref(cf);
    return 0;
}

static void run(struct fx *fx)
{
    event_base_loop(fx->base, EVLOOP_NONBLOCK);
}

static struct ad_req req_get(const char *domain, int shard, uint64_t id)
{
    struct ad_req r;
    memset(&r, 0, sizeof(r));
    r.id = id;
    r.op = AD_GET;
    r.domain = cf_domain_find(cf, domain, strlen(domain));
    r.key = "k1";
    r.keylen = 2;
    r.shard = shard;
    r.slot = -1;
    r.if_match = -1;
    return r;
}

/* The in-flight call of c ends: its answer is res, the connection is idle. */
static void answer(struct fx *fx, int i, enum ad_status status)
{
    struct sql_call *call = sent[i];
    struct sql_conn *c = sent_on[i];
    c->call = NULL;
    c->state = SQL_C_IDLE;
    if (call->is_migration) {
        sql_pool_migrated(call, status == AD_OK ? NULL : "relation is broken");
    } else {
        struct ad_res res;
        ad_res_init(&res);
        res.status = status;
        sql_pool_complete(call, &res);
    }
    sql_pool_dispatch(c->sh);
    run(fx);
}

/* ---- tests --------------------------------------------------------------------------- */

static void test_min_connections_start_and_requests_wait_for_one(void **state)
{
    struct fx *fx = *state;
    struct sql_shard *s0 = &fx->p->shards[0];
    struct fake_conn *c0 = (struct fake_conn *)(void *)sql_shard_conn(s0, 0);
    struct fake_conn *c1 = (struct fake_conn *)(void *)sql_shard_conn(s0, 1);
    assert_int_equal(c0->starts, 1); /* pool.min = 1 */
    assert_int_equal(c1->starts, 0);
    assert_int_equal(c0->b.state, SQL_C_CONNECTING);

    struct ad_req r = req_get("plain", 0, 1);
    struct done d = {0};
    assert_int_equal(sql_pool_submit(fx->p, &r, on_done, &d), 0);
    run(fx);
    assert_int_equal(nsent, 0); /* nothing is up yet */
    assert_int_equal(d.n, 0);

    sql_pool_connected(&c0->b, "fake 1.0");
    assert_int_equal(nsent, 1);
    assert_ptr_equal(sent_on[0], &c0->b);
    assert_string_equal(sent[0]->st.text,
                        "SELECT \"id\", \"version\" FROM \"plain\" WHERE \"id\" = $1");
    answer(fx, 0, AD_OK);
    assert_int_equal(d.n, 1);
    assert_int_equal(d.status, AD_OK);
    assert_string_equal(d.shard, "s0");
    assert_int_equal(cleared, 1); /* the driver freed its part of the call */
}

static void test_queue_bound_is_503_and_pool_grows_on_demand(void **state)
{
    struct fx *fx = *state;
    struct sql_shard *s0 = &fx->p->shards[0];
    struct fake_conn *c0 = (struct fake_conn *)(void *)sql_shard_conn(s0, 0);
    struct fake_conn *c1 = (struct fake_conn *)(void *)sql_shard_conn(s0, 1);
    sql_pool_connected(&c0->b, NULL);
    struct ad_req r[4];
    struct done d[4];
    memset(d, 0, sizeof(d));
    for (int i = 0; i < 3; i++) {
        r[i] = req_get("plain", 0, (uint64_t)i + 1);
        assert_int_equal(sql_pool_submit(fx->p, &r[i], on_done, &d[i]), 0);
    }
    r[3] = req_get("plain", 0, 4);
    assert_int_equal(sql_pool_submit(fx->p, &r[3], on_done, &d[3]), AD_EFULL); /* queue_max 3 */
    run(fx);
    assert_int_equal(nsent, 1);       /* one connection up: one in flight */
    assert_int_equal(c1->starts, 1);  /* the second one is opened for the waiting requests */
    sql_pool_connected(&c1->b, NULL); /* …and takes the next one */
    assert_int_equal(nsent, 2);
    assert_ptr_equal(sent_on[1], &c1->b);

    struct ad_pool_stats st;
    sql_pool_stats(fx->p, 0, &st);
    assert_int_equal(st.conns, 2);
    assert_int_equal(st.up, 2);
    assert_int_equal(st.busy, 2);
    assert_int_equal(st.queued, 1);

    answer(fx, 0, AD_OK);
    assert_int_equal(nsent, 3); /* the third goes on the connection freed */
    answer(fx, 1, AD_OK);
    answer(fx, 2, AD_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(d[i].n, 1);
    }
    assert_int_equal(d[3].n, 0);
}

static void test_cancel_completes_a_waiting_request_later(void **state)
{
    struct fx *fx = *state;
    struct ad_req r = req_get("plain", 0, 7);
    struct done d = {0};
    assert_int_equal(sql_pool_submit(fx->p, &r, on_done, &d), 0);
    run(fx);
    sql_pool_cancel(fx->p, 7);
    assert_int_equal(d.n, 0); /* never inside cancel() */
    run(fx);
    assert_int_equal(d.n, 1);
    assert_int_equal(d.status, AD_CANCELED);
    sql_pool_cancel(fx->p, 7); /* unknown by now: nothing */
    run(fx);
    assert_int_equal(d.n, 1);
}

static void test_shard_down_refuses_then_reconnects(void **state)
{
    struct fx *fx = *state;
    struct sql_shard *s0 = &fx->p->shards[0];
    struct fake_conn *c0 = (struct fake_conn *)(void *)sql_shard_conn(s0, 0);
    struct ad_req r = req_get("plain", 0, 1);
    struct done d = {0};
    assert_int_equal(sql_pool_submit(fx->p, &r, on_done, &d), 0);
    run(fx);
    sql_pool_connect_failed(&c0->b, "connection refused\n");
    /* the last connection failed: what waited fails, naming the shard */
    assert_int_equal(d.n, 1);
    assert_int_equal(d.status, AD_UNAVAILABLE);
    assert_string_equal(d.shard, "s0");
    assert_non_null(strstr(d.message, "backend 'p' (Fake shard 's0') is unavailable"));
    assert_non_null(strstr(d.message, "connection refused"));
    assert_null(strchr(d.message, '\n'));
    assert_int_equal(c0->b.state, SQL_C_DOWN);
    assert_true(evtimer_pending(c0->b.timer, NULL)); /* reconnect after the backoff */
    struct ad_req r2 = req_get("plain", 0, 2);
    assert_int_equal(sql_pool_submit(fx->p, &r2, on_done, &d), AD_EDOWN);
    /* the backoff timer fires (≤ 100 ms): a new attempt */
    event_base_loop(fx->base, EVLOOP_ONCE);
    assert_int_equal(c0->starts, 2);
    sql_pool_connected(&c0->b, NULL);
    assert_int_equal(sql_pool_submit(fx->p, &r2, on_done, &d), 0);
    run(fx);
    assert_int_equal(nsent, 1);
    answer(fx, 0, AD_OK);
    assert_int_equal(d.n, 2);
    assert_int_equal(d.status, AD_OK);
}

static void test_lost_connection_fails_its_request(void **state)
{
    struct fx *fx = *state;
    struct sql_shard *s1 = &fx->p->shards[1];
    struct fake_conn *c = (struct fake_conn *)(void *)sql_shard_conn(s1, 0);
    sql_pool_connected(&c->b, NULL);
    struct ad_req r = req_get("plain", 1, 1);
    struct done d = {0};
    assert_int_equal(sql_pool_submit(fx->p, &r, on_done, &d), 0);
    run(fx);
    assert_int_equal(nsent, 1);
    int closes = c->closes;
    sql_pool_conn_broken(&c->b, "server closed the connection unexpectedly");
    assert_int_equal(d.n, 1);
    assert_int_equal(d.status, AD_UNAVAILABLE);
    assert_string_equal(d.shard, "s1");
    assert_int_equal(c->closes, closes + 1);
    assert_true(s1->down);
    assert_false(fx->p->shards[0].down); /* the other shard is not concerned */
}

static void test_auto_migrate_runs_first_on_every_shard(void **state)
{
    struct fx *fx = *state;
    struct sql_conn *c0 = sql_shard_conn(&fx->p->shards[0], 0);
    struct sql_conn *c1 = sql_shard_conn(&fx->p->shards[1], 0);
    sql_pool_connected(c0, NULL);
    sql_pool_connected(c1, NULL);
    struct ad_req r = req_get("mig", 0, 1);
    struct done d = {0};
    assert_int_equal(sql_pool_submit(fx->p, &r, on_done, &d), 0);
    run(fx);
    /* the DDL goes to both shards; the request waits for shard 0's */
    assert_int_equal(nsent, 2);
    assert_true(sent[0]->is_migration);
    assert_true(sent[1]->is_migration);
    assert_ptr_not_equal(sent[0]->sh, sent[1]->sh);
    assert_non_null(strstr(sent[0]->st.text, "CREATE TABLE IF NOT EXISTS \"mig\""));
    int on0 = sent[0]->sh == &fx->p->shards[0] ? 0 : 1;
    answer(fx, 1 - on0, AD_OK); /* shard 1 done: nothing for shard 0 yet */
    assert_int_equal(nsent, 2);
    answer(fx, on0, AD_OK);
    assert_int_equal(nsent, 3);
    assert_false(sent[2]->is_migration);
    answer(fx, 2, AD_OK);
    assert_int_equal(d.status, AD_OK);
    /* a second request does not migrate again */
    struct ad_req r2 = req_get("mig", 1, 2);
    assert_int_equal(sql_pool_submit(fx->p, &r2, on_done, &d), 0);
    run(fx);
    assert_int_equal(nsent, 4);
    assert_false(sent[3]->is_migration);
    answer(fx, 3, AD_OK);
    assert_int_equal(d.n, 2);
}

static void test_failed_migration_fails_waiters_and_is_retried_on_demand(void **state)
{
    struct fx *fx = *state;
    struct sql_conn *c0 = sql_shard_conn(&fx->p->shards[0], 0);
    sql_pool_connected(c0, NULL);
    struct ad_req r = req_get("mig", 0, 1);
    struct done d = {0};
    assert_int_equal(sql_pool_submit(fx->p, &r, on_done, &d), 0);
    run(fx);
    assert_int_equal(nsent, 1);
    assert_true(sent[0]->is_migration);
    answer(fx, 0, AD_INTERNAL); /* the server refused the DDL */
    assert_int_equal(d.n, 1);
    assert_int_equal(d.status, AD_UNAVAILABLE);
    assert_non_null(strstr(d.message, "auto_migrate failed"));
    assert_non_null(strstr(d.message, "relation is broken"));
    run(fx);
    assert_int_equal(nsent, 1); /* not retried in a loop */
    struct ad_req r2 = req_get("mig", 0, 2);
    assert_int_equal(sql_pool_submit(fx->p, &r2, on_done, &d), 0);
    run(fx);
    assert_int_equal(nsent, 2); /* the next request retries it */
    assert_true(sent[1]->is_migration);
    answer(fx, 1, AD_OK);
    assert_int_equal(nsent, 3);
    assert_false(sent[2]->is_migration);
    answer(fx, 2, AD_OK);
    assert_int_equal(d.n, 2);
    assert_int_equal(d.status, AD_OK);
}

static void test_shutdown_fails_what_is_pending(void **state)
{
    struct fx *fx = *state;
    struct sql_conn *c0 = sql_shard_conn(&fx->p->shards[0], 0);
    sql_pool_connected(c0, NULL);
    struct ad_req r[2] = {req_get("plain", 0, 1), req_get("plain", 0, 2)};
    struct done d[2];
    memset(d, 0, sizeof(d));
    assert_int_equal(sql_pool_submit(fx->p, &r[0], on_done, &d[0]), 0);
    assert_int_equal(sql_pool_submit(fx->p, &r[1], on_done, &d[1]), 0);
    run(fx);
    assert_int_equal(nsent, 1);
    sql_pool_free(fx->p);
    fx->p = NULL;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(d[i].n, 1);
        assert_int_equal(d[i].status, AD_UNAVAILABLE);
        assert_non_null(strstr(d[i].message, "shutting down"));
    }
}

static void test_json_cells_pass_through_verbatim(void **state)
{
    (void)state;
    /* documents: as they are (even with the store's spacing); not JSON: a string */
    static const char *const in[] = {
        "12", "null", "{\"a\": [1, {\"b\": \"x\"}]}", "[true]", "not json", "{\"cut\":", "[1] 2",
    };
    static const char *const out[] = {
        "12",        "null",         "{\"a\": [1, {\"b\": \"x\"}]}",
        "[true]",    "\"not json\"", "\"{\\\"cut\\\":\"",
        "\"[1] 2\"",
    };
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        struct json_object *o = sql_pool_json(in[i], strlen(in[i]));
        assert_string_equal(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN), out[i]);
        /* …and inside a document */
        struct json_object *doc = json_object_new_object();
        json_object_object_add(doc, "v", o);
        char want[128];
        snprintf(want, sizeof(want), "{\"v\":%s}", out[i]);
        assert_string_equal(json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN), want);
        json_object_put(doc);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_min_connections_start_and_requests_wait_for_one, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_queue_bound_is_503_and_pool_grows_on_demand, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_completes_a_waiting_request_later, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_shard_down_refuses_then_reconnects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_connection_fails_its_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auto_migrate_runs_first_on_every_shard, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_failed_migration_fails_waiters_and_is_retried_on_demand, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_fails_what_is_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_cells_pass_through_verbatim, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
