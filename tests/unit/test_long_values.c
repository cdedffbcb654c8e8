/*
 * test_long_values.c — values longer than the fixed buffers that once held
 * them survive whole or are refused, never cut: metrics label names
 * (gw_metrics.h) and the header lines an Idempotency-Key answer keeps
 * (gw_idempotency.h).  No server.
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
#include "gateway/gw_idempotency.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_shard.h"
#include "lib/lb_log.h"
#include "tests/unit/unit_config.h"

static char *repeat(char c, size_t n, const char *suffix)
{
    size_t sl = strlen(suffix);
    char *s = malloc(n + sl + 1);
    memset(s, c, n);
    memcpy(s + n, suffix, sl + 1);
    return s;
}

/* ---- metrics labels ----------------------------------------------------------- */

/* Two domains whose names share their first 63 bytes are two labels, and
 * each is found again by its whole name (names were cut at 63 bytes: the
 * lookup of the whole name then failed and requests counted under _none). */
static void test_metrics_long_domain_names(void **state)
{
    (void)state;
    char *a = repeat('d', 100, "-a"), *b = repeat('d', 100, "-b");
    int ia = gw_metrics_domain_id(a), ib = gw_metrics_domain_id(b);
    assert_true(ia > 0);
    assert_true(ib > 0);
    assert_int_not_equal(ia, ib);
    assert_int_equal(gw_metrics_domain_lookup(a), ia);
    assert_int_equal(gw_metrics_domain_lookup(b), ib);
    free(a);
    free(b);
}

static void test_metrics_long_shard_names(void **state)
{
    (void)state;
    char *be = repeat('b', 200, ""), *sh = repeat('s', 300, "-0");
    int id = gw_shard_id(be, sh);
    assert_true(id >= 0);
    assert_int_equal(gw_shard_id(be, sh), id); /* found again, not added twice */
    assert_string_equal(gw_shard_backend(id), be);
    assert_string_equal(gw_shard_name(id), sh);
    free(be);
    free(sh);
}

/* The rendered text carries the whole domain name as the label. */
static void test_metrics_render_long_domain(void **state)
{
    (void)state;
    char *name = repeat('x', 150, "");
    char json[1024];
    snprintf(json, sizeof(json),
             "{\"backends\":{\"r\":{\"type\":\"redis\",\"shards\":[{\"name\":\"r\",\"dsn\":"
             "\"redis://127.0.0.1:1/0\"}]}},\"domains\":{\"%s\":{\"backend\":\"r\",\"kind\":"
             "\"value\",\"prefix\":\"x:\",\"key\":\"id\",\"fields\":{\"id\":\"string\"}}}}",
             name);
    struct cf_config *cf = unit_config(json);
    assert_non_null(cf);
    gw_metrics_register_config(cf);
    gw_metrics_set_workers(1);
    gw_metrics_request(0, gw_metrics_domain_lookup(name), GW_MOP_GET, 200, 100);
    struct evbuffer *b = evbuffer_new();
    gw_metrics_render(b, cf, 0);
    size_t len = evbuffer_get_length(b);
    char *text = malloc(len + 1);
    evbuffer_remove(b, text, len);
    text[len] = '\0';
    evbuffer_free(b);
    char want[512];
    snprintf(want, sizeof(want),
             "polygate_requests_total{domain=\"%s\",op=\"get\",status=\"200\"} 1\n", name);
    assert_non_null(strstr(text, want));
    free(text);
    free(name);
    cf_config_unref(cf);
}

/* ---- Idempotency-Key answers ----------------------------------------------------- */

static void fp_of(const char *body, uint64_t fp[2])
{
    gw_idem_fingerprint("PUT", "/v1/users/u1", NULL, body, strlen(body), fp);
}

/* Header lines up to the cap are replayed whole. */
static void test_idem_headers_at_cap_replayed_whole(void **state)
{
    (void)state;
    gw_idem_configure(600, 1000, 1 << 20);
    uint64_t fp[2];
    fp_of("{}", fp);
    char *hdr = repeat('h', GW_IDEM_MAX_HEADERS - 3, "\r\n"); /* 159 bytes + NUL */
    struct gw_idem *h = NULL;
    struct gw_idem_replay rp = {0};
    assert_int_equal(gw_idem_begin("svc", "cap", 3, fp, 0, &h, &rp), GW_IDEM_NEW);
    gw_idem_complete(h, 200, "{}", 2, hdr, 1);
    assert_int_equal(gw_idem_begin("svc", "cap", 3, fp, 2, &h, &rp), GW_IDEM_REPLAY);
    assert_string_equal(rp.headers, hdr);
    free(rp.body);
    free(hdr);
}

/* Longer header lines: the answer is not kept (the retry runs again), never
 * replayed with a cut header line (it was cut at 159 bytes, mid-line). */
static void test_idem_long_headers_never_replayed_cut(void **state)
{
    (void)state;
    gw_idem_configure(600, 1000, 1 << 20);
    uint64_t fp[2];
    fp_of("{}", fp);
    char *hdr = repeat('h', 300, "\r\n");
    struct gw_idem *h = NULL;
    struct gw_idem_replay rp = {0};
    assert_int_equal(gw_idem_begin("svc", "long", 4, fp, 0, &h, &rp), GW_IDEM_NEW);
    gw_idem_complete(h, 200, "{}", 2, hdr, 1);
    assert_int_equal(gw_idem_begin("svc", "long", 4, fp, 2, &h, &rp), GW_IDEM_NEW);
    gw_idem_release(h);
    free(hdr);
}

static int setup(void **state)
{
    (void)state;
    lb_log_set_level("error"); /* the refused answer's warning is expected */
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_long_domain_names),
        cmocka_unit_test(test_metrics_long_shard_names),
        cmocka_unit_test(test_metrics_render_long_domain),
        cmocka_unit_test(test_idem_headers_at_cap_replayed_whole),
        cmocka_unit_test(test_idem_long_headers_never_replayed_cut),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
