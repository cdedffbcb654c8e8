/*
 * test_gw_resilience.c — the circuit breaker's state machine (gw_breaker.h),
 * the Idempotency-Key store (gw_idempotency.h) and the metrics text
 * (gw_metrics.h), on a fake clock; no server.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "gateway/gw_breaker.h"
#include "gateway/gw_idempotency.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_shard.h"

/* ---- circuit breaker ------------------------------------------------------- */

static void test_breaker_opens_after_n_failures(void **state)
{
    (void)state;
    int id = gw_shard_id("be-open", "s0");
    gw_breaker_configure(3, 1000);
    uint64_t retry = 0;
    assert_int_equal(gw_breaker_state(id), GW_BRK_CLOSED);
    gw_breaker_record(id, 0, 100, "timeout");
    gw_breaker_record(id, 0, 100, "timeout");
    assert_int_equal(gw_breaker_state(id), GW_BRK_CLOSED);
    assert_int_equal(gw_breaker_failures(id), 2);
    assert_true(gw_breaker_allow(id, 100, &retry));
    gw_breaker_record(id, 0, 200, "timeout");
    assert_int_equal(gw_breaker_state(id), GW_BRK_OPEN);
    assert_int_equal(gw_breaker_opens(id), 1);
    /* open: refused, with the time to the probe */
    assert_false(gw_breaker_allow(id, 700, &retry));
    assert_int_equal(retry, 500);
    /* further failures while open do not move the probe time */
    gw_breaker_record(id, 0, 900, "late timeout");
    assert_false(gw_breaker_allow(id, 1100, &retry));
    assert_int_equal(retry, 100);
    assert_int_equal(gw_breaker_opens(id), 1);
}

static void test_breaker_success_resets_the_count(void **state)
{
    (void)state;
    int id = gw_shard_id("be-reset", "s0");
    gw_breaker_configure(3, 1000);
    gw_breaker_record(id, 0, 0, "x");
    gw_breaker_record(id, 0, 0, "x");
    gw_breaker_record(id, 1, 0, NULL); /* consecutive: one success starts over */
    gw_breaker_record(id, 0, 0, "x");
    gw_breaker_record(id, 0, 0, "x");
    assert_int_equal(gw_breaker_state(id), GW_BRK_CLOSED);
}

static void test_breaker_half_open_probe(void **state)
{
    (void)state;
    int id = gw_shard_id("be-probe", "s0");
    gw_breaker_configure(1, 1000);
    uint64_t retry = 0;
    gw_breaker_record(id, 0, 0, "down");
    assert_int_equal(gw_breaker_state(id), GW_BRK_OPEN);
    /* after open_ms exactly one request goes through as the probe */
    assert_true(gw_breaker_allow(id, 1000, &retry));
    assert_int_equal(gw_breaker_state(id), GW_BRK_HALF_OPEN);
    assert_false(gw_breaker_allow(id, 1001, &retry));
    /* the probe fails: open again for another open_ms */
    gw_breaker_record(id, 0, 1500, "still down");
    assert_int_equal(gw_breaker_state(id), GW_BRK_OPEN);
    assert_int_equal(gw_breaker_opens(id), 2);
    assert_false(gw_breaker_allow(id, 2400, &retry));
    assert_true(gw_breaker_allow(id, 2500, &retry));
    /* the next probe succeeds: closed, everything goes */
    gw_breaker_record(id, 1, 2600, NULL);
    assert_int_equal(gw_breaker_state(id), GW_BRK_CLOSED);
    assert_true(gw_breaker_allow(id, 2601, &retry));
    assert_true(gw_breaker_allow(id, 2602, &retry));
}

static void test_breaker_disabled(void **state)
{
    (void)state;
    int id = gw_shard_id("be-off", "s0");
    gw_breaker_configure(0, 1000);
    uint64_t retry = 0;
    for (int i = 0; i < 100; i++) {
        gw_breaker_record(id, 0, 0, "x");
    }
    assert_int_equal(gw_breaker_state(id), GW_BRK_CLOSED);
    assert_true(gw_breaker_allow(id, 1, &retry));
    gw_breaker_configure(5, 2000);
}

/* What /ready and the failure rule of gw_request.c read: when the shard
 * last answered, and whether its last outcome was a success. */
static void test_breaker_known_state(void **state)
{
    (void)state;
    int id = gw_shard_id("be-known", "s0");
    gw_breaker_configure(3, 1000);
    assert_false(gw_breaker_healthy(id)); /* nothing known yet: not proven healthy */
    assert_false(gw_breaker_known(id));
    assert_false(gw_breaker_answered_since(id, 0));
    gw_breaker_record(id, 1, 500, NULL);
    assert_true(gw_breaker_known(id));
    assert_true(gw_breaker_healthy(id));
    assert_true(gw_breaker_answered_since(id, 499));  /* sent before: others were answered */
    assert_false(gw_breaker_answered_since(id, 500)); /* sent after: nothing answered since */
    gw_breaker_record(id, 0, 600, "connection refused");
    assert_false(gw_breaker_healthy(id)); /* the last outcome failed */
    gw_breaker_record(id, 1, 700, NULL);
    assert_true(gw_breaker_healthy(id));
    gw_breaker_record(id, 0, 800, "x");
    gw_breaker_record(id, 0, 800, "x");
    gw_breaker_record(id, 0, 800, "x");
    assert_int_equal(gw_breaker_state(id), GW_BRK_OPEN);
    assert_false(gw_breaker_healthy(id));
    assert_false(gw_breaker_healthy(-1));
    gw_breaker_configure(5, 2000);
}

/* ---- Idempotency-Key store --------------------------------------------------- */

static void fp_of(const char *body, uint64_t fp[2])
{
    gw_idem_fingerprint("POST", "/v1/orders", NULL, body, strlen(body), fp);
}

static void test_idem_replay_mismatch_busy(void **state)
{
    (void)state;
    gw_idem_configure(60, 1000, 1 << 20);
    uint64_t a[2], b[2];
    fp_of("{\"x\":1}", a);
    fp_of("{\"x\":2}", b);
    assert_false(a[0] == b[0] && a[1] == b[1]);
    struct gw_idem *h = NULL;
    struct gw_idem_replay rp = {0};
    assert_int_equal(gw_idem_begin("svc", "k1", 2, a, 0, &h, &rp), GW_IDEM_NEW);
    assert_non_null(h);
    struct gw_idem *h2 = NULL;
    assert_int_equal(gw_idem_begin("svc", "k1", 2, a, 1, &h2, &rp), GW_IDEM_BUSY);
    assert_int_equal(gw_idem_begin("svc", "k1", 2, b, 1, &h2, &rp), GW_IDEM_MISMATCH);
    gw_idem_complete(h, 201, "{\"id\":\"o1\"}", 11, "ETag: \"1\"\r\n", 2);
    assert_int_equal(gw_idem_begin("svc", "k1", 2, a, 3, &h2, &rp), GW_IDEM_REPLAY);
    assert_int_equal(rp.status, 201);
    assert_int_equal(rp.bodylen, 11);
    assert_memory_equal(rp.body, "{\"id\":\"o1\"}", 11);
    assert_string_equal(rp.headers, "ETag: \"1\"\r\n");
    free(rp.body);
    /* another caller's key of the same name is another key */
    assert_int_equal(gw_idem_begin("other", "k1", 2, b, 3, &h2, &rp), GW_IDEM_NEW);
    gw_idem_release(h2);
}

static void test_idem_failure_releases_and_ttl_expires(void **state)
{
    (void)state;
    gw_idem_configure(10, 1000, 1 << 20);
    uint64_t a[2];
    fp_of("{}", a);
    struct gw_idem *h = NULL;
    struct gw_idem_replay rp = {0};
    assert_int_equal(gw_idem_begin("svc", "k2", 2, a, 0, &h, &rp), GW_IDEM_NEW);
    gw_idem_complete(h, 503, "{}", 2, NULL, 1); /* not kept */
    assert_int_equal(gw_idem_begin("svc", "k2", 2, a, 2, &h, &rp), GW_IDEM_NEW);
    gw_idem_complete(h, 200, "{}", 2, NULL, 2);
    assert_int_equal(gw_idem_begin("svc", "k2", 2, a, 3, &h, &rp), GW_IDEM_REPLAY);
    free(rp.body);
    /* ttl 10 s after completion (at 2 ms): gone at 10002 ms */
    assert_int_equal(gw_idem_begin("svc", "k2", 2, a, 10002, &h, &rp), GW_IDEM_NEW);
    gw_idem_release(h);
}

static void test_idem_bounded_entries(void **state)
{
    (void)state;
    gw_idem_configure(600, 4, 1 << 20);
    uint64_t a[2];
    fp_of("{}", a);
    struct gw_idem_replay rp = {0};
    char key[16];
    for (int i = 0; i < 10; i++) {
        struct gw_idem *h = NULL;
        snprintf(key, sizeof(key), "b%d", i);
        assert_int_equal(gw_idem_begin("svc", key, strlen(key), a, (uint64_t)i, &h, &rp),
                         GW_IDEM_NEW);
        gw_idem_complete(h, 201, "{}", 2, NULL, (uint64_t)i);
    }
    size_t n, bytes;
    uint64_t replays;
    gw_idem_stats(&n, &bytes, &replays);
    assert_true(n <= 4);
    /* the newest is kept, the oldest was evicted */
    struct gw_idem *h = NULL;
    assert_int_equal(gw_idem_begin("svc", "b9", 2, a, 20, &h, &rp), GW_IDEM_REPLAY);
    free(rp.body);
    assert_int_equal(gw_idem_begin("svc", "b0", 2, a, 20, &h, &rp), GW_IDEM_NEW);
    gw_idem_release(h);
    /* completed entries make room; requests in progress are never evicted:
     * a store full of them refuses */
    gw_idem_configure(600, 2, 1 << 20);
    struct gw_idem *p1 = NULL, *p2 = NULL, *p3 = NULL;
    assert_int_equal(gw_idem_begin("svc", "p1", 2, a, 100000, &p1, &rp), GW_IDEM_NEW);
    assert_int_equal(gw_idem_begin("svc", "p2", 2, a, 100000, &p2, &rp), GW_IDEM_NEW);
    assert_int_equal(gw_idem_begin("svc", "p3", 2, a, 100000, &p3, &rp), GW_IDEM_FULL);
    gw_idem_release(p1);
    gw_idem_release(p2);
}

static void test_idem_key_rules_and_derived_id(void **state)
{
    (void)state;
    assert_int_equal(gw_idem_key_valid("abc-123", 7), 0);
    assert_int_equal(gw_idem_key_valid("", 0), -1);
    assert_int_equal(gw_idem_key_valid("a b", 3), -1);
    char big[300];
    memset(big, 'x', sizeof(big));
    assert_int_equal(gw_idem_key_valid(big, 255), 0);
    assert_int_equal(gw_idem_key_valid(big, 256), -1);
    char id1[33], id2[33], id3[33];
    gw_idem_derive_id("svc", "orders", "k", 1, id1);
    gw_idem_derive_id("svc", "orders", "k", 1, id2);
    gw_idem_derive_id("svc", "users", "k", 1, id3);
    assert_int_equal(strlen(id1), 32);
    assert_string_equal(id1, id2);
    assert_string_not_equal(id1, id3);
}

/* ---- metrics text ---------------------------------------------------------------- */

static void test_metrics_render_counts(void **state)
{
    (void)state;
    char err[256];
    ad_register_builtin();
    struct cf_config *cf = cf_config_load("config/polygate.yaml", err, sizeof(err));
    if (cf == NULL) {
        /* the unit tests run from the repository root */
        fail_msg("cannot load config/polygate.yaml: %s", err);
    }
    gw_metrics_register_config(cf);
    gw_metrics_set_workers(2);
    int d = gw_metrics_domain_id("sessions");
    gw_metrics_request(0, d, GW_MOP_GET, 200, 300);     /* 0.3 ms */
    gw_metrics_request(1, d, GW_MOP_GET, 200, 3000000); /* 3 s, on the other worker */
    gw_metrics_request(1, d, GW_MOP_GET, 404, 800);
    struct evbuffer *b = evbuffer_new();
    gw_metrics_render(b, cf, 7);
    size_t len = evbuffer_get_length(b);
    char *text = malloc(len + 1);
    evbuffer_remove(b, text, len);
    text[len] = '\0';
    evbuffer_free(b);
    assert_non_null(
        strstr(text, "polygate_requests_total{domain=\"sessions\",op=\"get\",status=\"200\"} 2\n"));
    assert_non_null(
        strstr(text, "polygate_requests_total{domain=\"sessions\",op=\"get\",status=\"404\"} 1\n"));
    assert_non_null(strstr(text, "polygate_request_duration_seconds_bucket{domain=\"sessions\","
                                 "op=\"get\",le=\"0.0005\"} 1\n"));
    assert_non_null(strstr(text, "polygate_request_duration_seconds_bucket{domain=\"sessions\","
                                 "op=\"get\",le=\"0.001\"} 2\n"));
    assert_non_null(strstr(text, "polygate_request_duration_seconds_bucket{domain=\"sessions\","
                                 "op=\"get\",le=\"2.5\"} 2\n"));
    assert_non_null(strstr(text, "polygate_request_duration_seconds_bucket{domain=\"sessions\","
                                 "op=\"get\",le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(
        text, "polygate_request_duration_seconds_count{domain=\"sessions\",op=\"get\"} 3\n"));
    assert_non_null(strstr(text, "polygate_inflight_requests 7\n"));
    assert_non_null(strstr(text, "# TYPE polygate_circuit_state gauge\n"));
    free(text);
    cf_config_unref(cf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_breaker_opens_after_n_failures),
        cmocka_unit_test(test_breaker_success_resets_the_count),
        cmocka_unit_test(test_breaker_half_open_probe),
        cmocka_unit_test(test_breaker_disabled),
        cmocka_unit_test(test_breaker_known_state),
        cmocka_unit_test(test_idem_replay_mismatch_busy),
        cmocka_unit_test(test_idem_failure_releases_and_ttl_expires),
        cmocka_unit_test(test_idem_bounded_entries),
        cmocka_unit_test(test_idem_key_rules_and_derived_id),
        cmocka_unit_test(test_metrics_render_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
