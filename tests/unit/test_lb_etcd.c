/*
 * test_lb_etcd.c — the encoding side of the etcd client (lib/lb_etcd.h,
 * lib/lb_base64.h): base64 both ways (RFC 4648 vectors), prefix range ends,
 * request bodies, and the decoding of etcd 3.4 gateway answers and watch
 * messages as etcd writes them (int64 as strings, zero values left out).
 * The I/O is tested against a real etcd in tests/integration/test_fleet.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "lib/lb_base64.h"
#include "lib/lb_etcd.h"

static void test_base64_vectors(void **state)
{
    (void)state;
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const enc[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        char out[16];
        size_t n = lb_base64_encode(plain[i], strlen(plain[i]), out);
        assert_int_equal(n, lb_base64_len(strlen(plain[i])));
        assert_string_equal(out, enc[i]);
        unsigned char back[16];
        size_t blen = 99;
        assert_int_equal(lb_base64_decode(enc[i], strlen(enc[i]), back, &blen), 0);
        assert_int_equal(blen, strlen(plain[i]));
        assert_memory_equal(back, plain[i], blen);
    }
}

static void test_base64_binary_and_bad_input(void **state)
{
    (void)state;
    unsigned char all[256];
    for (int i = 0; i < 256; i++) {
        all[i] = (unsigned char)i;
    }
    char enc[400];
    size_t n = lb_base64_encode(all, sizeof(all), enc);
    unsigned char back[400];
    size_t blen = 0;
    assert_int_equal(lb_base64_decode(enc, n, back, &blen), 0);
    assert_int_equal(blen, 256);
    assert_memory_equal(back, all, 256);
    assert_int_equal(lb_base64_decode("Zm9v!", 5, back, &blen), -1); /* not the alphabet */
    assert_int_equal(lb_base64_decode("Z", 1, back, &blen), -1);     /* a lone sextet */
    assert_int_equal(lb_base64_decode("Zm 9v", 5, back, &blen), -1); /* no whitespace */
    assert_int_equal(lb_base64_decode("Zm9vYg", 6, back, &blen), 0); /* padding optional */
    assert_int_equal(blen, 4);
}

static void test_prefix_end(void **state)
{
    (void)state;
    char *e = lb_etcd_prefix_end("/polygate/a/");
    assert_string_equal(e, "/polygate/a0"); /* '/' + 1 */
    free(e);
    e = lb_etcd_prefix_end("ab\xff");
    assert_string_equal(e, "ac"); /* trailing 0xff dropped */
    free(e);
    e = lb_etcd_prefix_end("\xff\xff");
    assert_string_equal(e, ""); /* every key */
    free(e);
}

static struct json_object *parsed(char *text)
{
    struct json_object *o = json_tokener_parse(text);
    free(text);
    assert_non_null(o);
    return o;
}

static const char *field(struct json_object *o, const char *path1, const char *path2)
{
    struct json_object *v = json_object_object_get(o, path1);
    if (path2 != NULL) {
        v = json_object_object_get(v, path2);
    }
    return v != NULL ? json_object_get_string(v) : NULL;
}

static void test_encode_requests(void **state)
{
    (void)state;
    struct json_object *o = parsed(lb_etcd_encode_range("/p/", 1));
    assert_string_equal(field(o, "key", NULL), "L3Av");       /* "/p/" */
    assert_string_equal(field(o, "range_end", NULL), "L3Aw"); /* "/p0" */
    json_object_put(o);

    o = parsed(lb_etcd_encode_range("k", 0));
    assert_null(json_object_object_get(o, "range_end"));
    json_object_put(o);

    o = parsed(lb_etcd_encode_put("k", "v", 1, 7587869214812447234LL));
    assert_string_equal(field(o, "value", NULL), "dg==");
    assert_string_equal(field(o, "lease", NULL), "7587869214812447234"); /* beyond 2^53: a string */
    json_object_put(o);

    struct lb_etcd_cmp cmp = {"/p/shardmap/orders", LB_ETCD_MOD, LB_ETCD_EQUAL, 42};
    struct lb_etcd_op put = {LB_ETCD_OP_PUT, "/p/shardmap/orders", "{}", 2, 0};
    struct lb_etcd_op get = {LB_ETCD_OP_RANGE, "/p/shardmap/orders", NULL, 0, 0};
    o = parsed(lb_etcd_encode_txn(&cmp, 1, &put, 1, &get, 1));
    struct json_object *c0 = json_object_array_get_idx(json_object_object_get(o, "compare"), 0);
    assert_string_equal(field(c0, "target", NULL), "MOD");
    assert_string_equal(field(c0, "result", NULL), "EQUAL");
    assert_string_equal(field(c0, "mod_revision", NULL), "42");
    struct json_object *s0 = json_object_array_get_idx(json_object_object_get(o, "success"), 0);
    assert_string_equal(field(s0, "request_put", "value"), "e30=");
    assert_null(json_object_object_get(json_object_object_get(s0, "request_put"), "lease"));
    struct json_object *f0 = json_object_array_get_idx(json_object_object_get(o, "failure"), 0);
    assert_non_null(json_object_object_get(f0, "request_range"));
    json_object_put(o);

    struct lb_etcd_cmp created = {"k", LB_ETCD_CREATE, LB_ETCD_EQUAL, 0};
    o = parsed(lb_etcd_encode_txn(&created, 1, NULL, 0, NULL, 0));
    c0 = json_object_array_get_idx(json_object_object_get(o, "compare"), 0);
    assert_string_equal(field(c0, "target", NULL), "CREATE");
    assert_string_equal(field(c0, "create_revision", NULL), "0");
    json_object_put(o);

    o = parsed(lb_etcd_encode_watch("/p/", 1, 101));
    assert_string_equal(field(o, "create_request", "start_revision"), "101");
    assert_string_equal(field(o, "create_request", "range_end"), "L3Aw");
    json_object_put(o);
    o = parsed(lb_etcd_encode_watch("/p/", 1, 0)); /* from now */
    assert_null(
        json_object_object_get(json_object_object_get(o, "create_request"), "start_revision"));
    json_object_put(o);

    o = parsed(lb_etcd_encode_lease("TTL", 5));
    assert_string_equal(field(o, "TTL", NULL), "5");
    json_object_put(o);
}

static int decode(enum lb_etcd_call kind, int status, const char *body, struct lb_etcd_result *r)
{
    return lb_etcd_decode(kind, status, body, strlen(body), r);
}

static void test_decode_answers(void **state)
{
    (void)state;
    struct lb_etcd_result r = {0};
    /* a range as etcd 3.4's gateway writes it: int64 as strings, base64 */
    assert_int_equal(
        decode(LB_ETCD_CALL_RANGE, 200,
               "{\"header\":{\"cluster_id\":\"1\",\"member_id\":\"2\",\"revision\":\"17\","
               "\"raft_term\":\"3\"},\"kvs\":[{\"key\":\"L3Avaw==\",\"create_revision\":\"5\","
               "\"mod_revision\":\"16\",\"version\":\"4\",\"value\":\"dmFs\",\"lease\":\"99\"}],"
               "\"count\":\"1\"}",
               &r),
        0);
    assert_true(r.ok);
    assert_int_equal(r.revision, 17);
    assert_int_equal(r.nkvs, 1);
    assert_string_equal(r.kvs[0].key, "/p/k");
    assert_string_equal(r.kvs[0].value, "val");
    assert_int_equal(r.kvs[0].value_len, 3);
    assert_int_equal(r.kvs[0].create_revision, 5);
    assert_int_equal(r.kvs[0].mod_revision, 16);
    assert_int_equal(r.kvs[0].version, 4);
    assert_int_equal(r.kvs[0].lease, 99);

    /* nothing found: no kvs at all (zero values are left out) */
    assert_int_equal(decode(LB_ETCD_CALL_RANGE, 200, "{\"header\":{\"revision\":\"3\"}}", &r), 0);
    assert_int_equal(r.nkvs, 0);

    /* a txn whose compare failed: no "succeeded", the failure branch's range */
    assert_int_equal(decode(LB_ETCD_CALL_TXN, 200,
                            "{\"header\":{\"revision\":\"20\"},\"responses\":[{\"response_range\":"
                            "{\"header\":{\"revision\":\"20\"},\"kvs\":[{\"key\":\"aw==\","
                            "\"mod_revision\":\"19\",\"value\":\"e30=\"}],\"count\":\"1\"}}]}",
                            &r),
                     0);
    assert_false(r.succeeded);
    assert_int_equal(r.nkvs, 1);
    assert_int_equal(r.kvs[0].mod_revision, 19);
    assert_string_equal(r.kvs[0].value, "{}");

    assert_int_equal(decode(LB_ETCD_CALL_TXN, 200,
                            "{\"header\":{\"revision\":\"21\"},\"succeeded\":true,\"responses\":"
                            "[{\"response_put\":{\"header\":{\"revision\":\"21\"}}}]}",
                            &r),
                     0);
    assert_true(r.succeeded);
    assert_int_equal(r.revision, 21);

    /* leases: grant, keepalive (a stream message), and a keepalive of an
     * expired lease (TTL left out: 0) */
    assert_int_equal(decode(LB_ETCD_CALL_GRANT, 200,
                            "{\"header\":{\"revision\":\"2\"},\"ID\":\"7587869214812447234\","
                            "\"TTL\":\"5\"}",
                            &r),
                     0);
    assert_int_equal(r.lease_id, 7587869214812447234LL);
    assert_int_equal(r.ttl, 5);
    assert_int_equal(decode(LB_ETCD_CALL_KEEPALIVE, 200,
                            "{\"result\":{\"header\":{\"revision\":\"9\"},\"ID\":\"12\",\"TTL\":"
                            "\"5\"}}\n",
                            &r),
                     0);
    assert_int_equal(r.ttl, 5);
    assert_int_equal(r.revision, 9);
    assert_int_equal(decode(LB_ETCD_CALL_KEEPALIVE, 200,
                            "{\"result\":{\"header\":{\"revision\":\"9\"},\"ID\":\"12\"}}\n", &r),
                     0);
    assert_int_equal(r.ttl, 0);

    /* errors: etcd's error shape, a body that is no JSON, a bad base64 key */
    assert_int_equal(decode(LB_ETCD_CALL_REVOKE, 404,
                            "{\"error\":\"etcdserver: requested lease not found\",\"code\":5,"
                            "\"message\":\"etcdserver: requested lease not found\"}",
                            &r),
                     -1);
    assert_false(r.ok);
    assert_non_null(strstr(r.err, "requested lease not found"));
    assert_int_equal(decode(LB_ETCD_CALL_RANGE, 502, "Bad Gateway", &r), -1);
    assert_non_null(strstr(r.err, "502"));
    assert_int_equal(decode(LB_ETCD_CALL_RANGE, 200, "{\"kvs\":[{\"key\":\"!!\"}]}", &r), -1);
    assert_int_equal(decode(LB_ETCD_CALL_GRANT, 200, "{\"header\":{}}", &r), -1);
    lb_etcd_result_clear(&r);
}

static void test_decode_watch(void **state)
{
    (void)state;
    struct lb_etcd_watch_msg m = {0};
    const char *created = "{\"result\":{\"header\":{\"revision\":\"30\"},\"created\":true}}";
    assert_int_equal(lb_etcd_decode_watch(created, strlen(created), &m), 0);
    assert_true(m.created);
    assert_false(m.canceled);
    assert_int_equal(m.revision, 30);
    assert_int_equal(m.nevents, 0);

    /* a PUT (type left out: the default) and a DELETE */
    const char *evs = "{\"result\":{\"header\":{\"revision\":\"32\"},\"events\":[{\"kv\":{\"key\":"
                      "\"YQ==\",\"create_revision\":\"31\",\"mod_revision\":\"31\",\"version\":"
                      "\"1\",\"value\":\"MQ==\"}},{\"type\":\"DELETE\",\"kv\":{\"key\":\"Yg==\","
                      "\"mod_revision\":\"32\"}}]}}";
    assert_int_equal(lb_etcd_decode_watch(evs, strlen(evs), &m), 0);
    assert_int_equal(m.nevents, 2);
    assert_int_equal(m.events[0].type, LB_ETCD_PUT);
    assert_string_equal(m.events[0].kv.key, "a");
    assert_string_equal(m.events[0].kv.value, "1");
    assert_int_equal(m.events[1].type, LB_ETCD_DELETE);
    assert_string_equal(m.events[1].kv.key, "b");
    assert_int_equal(m.events[1].kv.value_len, 0);
    assert_int_equal(m.events[1].kv.mod_revision, 32);

    const char *compacted = "{\"result\":{\"header\":{\"revision\":\"90\"},\"canceled\":true,"
                            "\"compact_revision\":\"80\"}}";
    assert_int_equal(lb_etcd_decode_watch(compacted, strlen(compacted), &m), 0);
    assert_true(m.canceled);
    assert_int_equal(m.compact_revision, 80);

    const char *err = "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"etcdserver: "
                      "no leader\",\"http_status\":\"Service Unavailable\"}}";
    assert_int_equal(lb_etcd_decode_watch(err, strlen(err), &m), -1);
    assert_non_null(strstr(m.err, "no leader"));
    assert_int_equal(lb_etcd_decode_watch("{\"result\":", 10, &m), -1);
    lb_etcd_watch_msg_clear(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64_vectors), cmocka_unit_test(test_base64_binary_and_bad_input),
        cmocka_unit_test(test_prefix_end),     cmocka_unit_test(test_encode_requests),
        cmocka_unit_test(test_decode_answers), cmocka_unit_test(test_decode_watch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
