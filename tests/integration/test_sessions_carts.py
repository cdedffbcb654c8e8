"""Sessions and carts on the real Redis of the local stack, through HTTP."""
import re
import time
import uuid

from conftest import assert_error


def sid():
    return "s-" + uuid.uuid4().hex


def test_session_round_trip(client, rdb):
    key = sid()
    st, item, resp = client.request("PUT", "/v1/sessions/" + key,
                                    {"user_id": "u1", "data": {"theme": "dark", "n": 3}})
    assert st == 201
    assert item["session_id"] == key and item["user_id"] == "u1"
    assert item["data"] == {"theme": "dark", "n": 3}
    assert item["version"] == 1
    assert resp.getheader("ETag") == '"1"'
    # six fraction digits, the width of every timestamp (it was three here
    # and up to six elsewhere, so the text did not sort in time order)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", item["created_at"]), item
    st, got, resp = client.request("GET", "/v1/sessions/" + key)
    assert st == 200 and got == item
    # the stored value is the item itself, in Redis, under the prefix
    assert rdb.get("session:" + key) is not None
    st, item2, _ = client.request("PUT", "/v1/sessions/" + key, {"user_id": "u1", "data": {}})
    assert st == 200 and item2["version"] == 2 and item2["data"] == {}


def test_session_ttl_is_set_in_redis(client, rdb):
    key = sid()
    client.request("PUT", "/v1/sessions/" + key, {"user_id": "u1"})
    ttl = rdb.ttl("session:" + key)
    assert 86390 <= ttl <= 86400


def test_sliding_ttl_refreshed_by_get(client, rdb):
    key = sid()
    client.request("PUT", "/v1/sessions/" + key, {"user_id": "u1"})
    rdb.expire("session:" + key, 100)
    assert rdb.ttl("session:" + key) <= 100
    st, _, _ = client.request("GET", "/v1/sessions/" + key)
    assert st == 200
    assert rdb.ttl("session:" + key) >= 86390


def test_session_post_generates_id_and_conflicts(client):
    st, item, _ = client.request("POST", "/v1/sessions", {"user_id": "u9"})
    assert st == 201 and len(item["session_id"]) == 32
    st, body, _ = client.request("POST", "/v1/sessions", {"user_id": "u9", "session_id": item["session_id"]})
    assert st == 409
    assert assert_error(body, "conflict")["field"] == "session_id"


def test_session_if_match(client):
    key = sid()
    client.request("PUT", "/v1/sessions/" + key, {"user_id": "u1"})
    st, body, _ = client.request("PUT", "/v1/sessions/" + key, {"user_id": "u2"}, headers={"If-Match": '"7"'})
    assert st == 412
    assert_error(body, "precondition_failed")
    st, item, _ = client.request("PUT", "/v1/sessions/" + key, {"user_id": "u2"}, headers={"If-Match": '"1"'})
    assert st == 200 and item["version"] == 2 and item["user_id"] == "u2"
    st, body, _ = client.request("DELETE", "/v1/sessions/" + key, headers={"If-Match": "1"})
    assert st == 412
    st, _, _ = client.request("DELETE", "/v1/sessions/" + key, headers={"If-Match": "2"})
    assert st == 204


def test_session_patch_and_delete(client):
    key = sid()
    client.request("PUT", "/v1/sessions/" + key, {"user_id": "u1", "data": {"a": 1}})
    st, item, _ = client.request("PATCH", "/v1/sessions/" + key, {"set": {"data": {"b": 2}}})
    assert st == 200 and item["data"] == {"b": 2} and item["version"] == 2
    st, item, _ = client.request("PATCH", "/v1/sessions/" + key, {"unset": ["data"]})
    assert st == 200 and "data" not in item and item["version"] == 3
    st, body, _ = client.request("PATCH", "/v1/sessions/" + key, {"unset": ["user_id"]})
    assert st == 400 and assert_error(body, "bad_request")["field"] == "user_id"
    st, _, _ = client.request("DELETE", "/v1/sessions/" + key)
    assert st == 204
    st, body, resp = client.request("GET", "/v1/sessions/" + key)
    assert st == 404
    assert_error(body, "not_found", resp=resp)
    st, body, _ = client.request("DELETE", "/v1/sessions/" + key)
    assert st == 404
    st, body, _ = client.request("PATCH", "/v1/sessions/" + key, {"set": {"data": {}}})
    assert st == 404


def test_session_validation(client):
    key = sid()
    st, body, _ = client.request("PUT", "/v1/sessions/" + key, {"user_id": "u1", "color": "red"})
    assert st == 400 and "color" in assert_error(body, "bad_request")["message"]
    st, body, _ = client.request("PUT", "/v1/sessions/" + key, {"user_id": 5})
    assert st == 400 and assert_error(body, "bad_request")["field"] == "user_id"
    st, body, _ = client.request("PUT", "/v1/sessions/" + key, {"data": {}})
    assert st == 400 and assert_error(body, "bad_request")["field"] == "user_id"
    st, body, _ = client.request("PUT", "/v1/sessions/" + key, {"user_id": "u", "session_id": "other"})
    assert st == 400 and assert_error(body, "bad_request")["field"] == "session_id"
    st, body, _ = client.request("PUT", "/v1/sessions/" + key, {"user_id": "u", "created_at": "yesterday"})
    assert st == 400 and assert_error(body, "bad_request")["field"] == "created_at"
    # nothing was stored by the refused writes
    st, _, _ = client.request("GET", "/v1/sessions/" + key)
    assert st == 404


def test_session_values_round_trip_exactly(client):
    key = sid()
    data = {"quote": "it's \"quoted\"", "sql": "'; DROP TABLE users; --", "uni": "žluťoučký 🐎",
            "ctl": "a\u0001b\nc", "big": 12345678901234, "dec": 12.30, "nested": {"a": [1, {"b": None}]}}
    st, item, _ = client.request("PUT", "/v1/sessions/" + key, {"user_id": "u1", "data": data})
    assert st == 201
    st, got, _ = client.request("GET", "/v1/sessions/" + key)
    assert got["data"] == data


def test_cart_inc_unset_clear(client, rdb):
    user = "u-" + uuid.uuid4().hex
    st, cart, _ = client.request("GET", "/v1/carts/" + user)
    assert st == 200 and cart == {"user_id": user, "items": {}}
    st, cart, _ = client.request("PATCH", "/v1/carts/" + user, {"inc": {"items.PROD-1": 2, "items.PROD-2": 1}})
    assert st == 200 and cart["items"] == {"PROD-1": 2, "PROD-2": 1}
    st, cart, _ = client.request("PATCH", "/v1/carts/" + user, {"inc": {"items.PROD-1": 3}})
    assert cart["items"]["PROD-1"] == 5
    assert rdb.hgetall("cart:" + user) == {"PROD-1": "5", "PROD-2": "1"}
    assert 2591990 <= rdb.ttl("cart:" + user) <= 2592000
    st, cart, _ = client.request("PATCH", "/v1/carts/" + user, {"unset": ["items.PROD-2"]})
    assert st == 200 and cart["items"] == {"PROD-1": 5}
    st, cart, _ = client.request("PATCH", "/v1/carts/" + user, {"inc": {"items.PROD-1": -5}})
    assert st == 200 and cart["items"] == {}
    client.request("PATCH", "/v1/carts/" + user, {"inc": {"items.PROD-3": 1}})
    st, _, _ = client.request("DELETE", "/v1/carts/" + user)
    assert st == 204
    assert rdb.exists("cart:" + user) == 0
    st, cart, _ = client.request("GET", "/v1/carts/" + user)
    assert cart["items"] == {}


def test_cart_never_negative(client, rdb):
    user = "u-" + uuid.uuid4().hex
    client.request("PATCH", "/v1/carts/" + user, {"inc": {"items.P": 1, "items.Q": 4}})
    st, body, _ = client.request("PATCH", "/v1/carts/" + user, {"inc": {"items.P": -2, "items.Q": -1}})
    assert st == 409
    err = assert_error(body, "conflict")
    assert "items.P" in err["message"]
    # all or nothing: Q was not decremented either
    assert rdb.hgetall("cart:" + user) == {"P": "1", "Q": "4"}


def test_cart_put_replaces_and_validates(client, rdb):
    user = "u-" + uuid.uuid4().hex
    client.request("PATCH", "/v1/carts/" + user, {"inc": {"items.OLD": 1}})
    st, cart, _ = client.request("PUT", "/v1/carts/" + user, {"items": {"A": 2, "B": 0}})
    assert st in (200, 201) and cart["items"] == {"A": 2}
    assert rdb.hgetall("cart:" + user) == {"A": "2"}
    st, body, _ = client.request("PUT", "/v1/carts/" + user, {"items": {"A": -1}})
    assert st == 400 and assert_error(body, "bad_request")["field"] == "items"
    st, body, _ = client.request("PATCH", "/v1/carts/" + user, {"inc": {"qty": 1}})
    assert st == 400
    st, body, _ = client.request("PATCH", "/v1/carts/" + user, {"inc": {"items.A": "x"}})
    assert st == 400
    assert rdb.hgetall("cart:" + user) == {"A": "2"}


def test_cart_routes_the_store_cannot_serve(client):
    st, body, resp = client.request("POST", "/v1/carts", {"user_id": "x", "items": {}})
    assert st == 405
    assert "PUT /v1/carts/{user_id}" in assert_error(body, "method_not_allowed")["message"]
    assert resp.getheader("Allow") == ""  # nothing is allowed on the collection itself
    st, body, _ = client.request("POST", "/v1/carts/_query", {"where": {}})
    assert st == 400
    assert_error(body, "unsupported_operation")


def test_batch(client):
    key = sid()
    st, body, _ = client.request("POST", "/v1/_batch", [
        {"op": "put", "domain": "sessions", "id": key, "body": {"user_id": "b1"}},
        {"op": "get", "domain": "sessions", "id": "missing-" + key},
        {"op": "get", "domain": "nope", "id": "x"},
        {"op": "frobnicate", "domain": "sessions"},
    ])
    assert st == 200
    res = body["results"]
    assert [r["status"] for r in res] == [201, 404, 404, 400]
    assert res[0]["item"]["user_id"] == "b1"
    assert res[1]["error"]["code"] == "not_found"
    assert res[2]["error"]["code"] == "unknown_domain"


def test_batch_where_every_item_fails_before_reaching_a_store(client):
    st, body, _ = client.request("POST", "/v1/_batch", [
        {"op": "get", "domain": "nope", "id": "x"},
        {"op": "get", "domain": "sessions"},
    ])
    assert st == 200
    assert [r["status"] for r in body["results"]] == [404, 400]
    st, body, _ = client.request("POST", "/v1/_batch", [])
    assert st == 400
    st, body, _ = client.request("POST", "/v1/_batch", {"op": "get"})
    assert st == 400


def test_session_timestamps_have_one_width(client):
    key = sid()
    st, item, _ = client.request("PUT", "/v1/sessions/" + key,
                                 {"user_id": "u1", "created_at": "2026-01-31T00:08:02.3Z"})
    assert st == 201 and item["created_at"] == "2026-01-31T00:08:02.300000Z"
    st, got, _ = client.request("GET", "/v1/sessions/" + key)
    assert got["created_at"] == "2026-01-31T00:08:02.300000Z"
    st, item, _ = client.request("PATCH", "/v1/sessions/" + key,
                                 {"set": {"created_at": "2026-01-31T01:08:02+01:00"}})
    assert st == 200 and item["created_at"] == "2026-01-31T00:08:02.000000Z"


def test_session_patch_if_match(client):
    key = sid()
    st, item, resp = client.request("PUT", "/v1/sessions/" + key, {"user_id": "u1", "data": {"a": 1}})
    assert st == 201 and resp.getheader("ETag") == '"1"'
    # the current version: applied
    st, item, resp = client.request("PATCH", "/v1/sessions/" + key, {"set": {"data": {"a": 2}}},
                                    headers={"If-Match": '"1"'})
    assert st == 200, item
    assert item["version"] == 2 and item["data"] == {"a": 2}
    assert resp.getheader("ETag") == '"2"'
    # a stale version: 412, nothing written
    st, body, _ = client.request("PATCH", "/v1/sessions/" + key, {"set": {"data": {"a": 3}}},
                                 headers={"If-Match": '"1"'})
    assert st == 412
    assert "version 1" in assert_error(body, "precondition_failed")["message"]
    st, got, _ = client.request("GET", "/v1/sessions/" + key)
    assert got["version"] == 2 and got["data"] == {"a": 2}
    # an item that does not exist: 412, not 404, under If-Match
    st, body, _ = client.request("PATCH", "/v1/sessions/" + sid(), {"set": {"data": {}}},
                                 headers={"If-Match": '"1"'})
    assert st == 412
    assert_error(body, "precondition_failed")


def test_cart_put_and_patch_with_many_items(client, rdb):
    # carts of more than 8 items were refused ("cannot serve this request")
    user = "u-" + uuid.uuid4().hex
    items = {"SKU-%03d" % i: i % 7 + 1 for i in range(200)}
    st, cart, _ = client.request("PUT", "/v1/carts/" + user, {"items": items})
    assert st in (200, 201), cart
    assert cart["items"] == items
    assert rdb.hgetall("cart:" + user) == {k: str(v) for k, v in items.items()}
    # a PATCH setting many members at once, with inc and unset beside it
    patch = {"set": {"items.NEW-%03d" % i: 3 for i in range(150)},
             "inc": {"items.SKU-%03d" % i: 10 for i in range(50)},
             "unset": ["items.SKU-%03d" % i for i in range(150, 200)]}
    st, cart, _ = client.request("PATCH", "/v1/carts/" + user, patch)
    assert st == 200, cart
    want = {k: v for k, v in items.items() if int(k[4:]) < 150}
    for i in range(50):
        want["SKU-%03d" % i] += 10
    want.update({"NEW-%03d" % i: 3 for i in range(150)})
    assert cart["items"] == want
    assert rdb.hgetall("cart:" + user) == {k: str(v) for k, v in want.items()}


def test_ids_must_be_utf8(client, rdb):
    # "%ff" decodes to the byte 0xff: refused like a string in a body, not
    # stored and sent back as invalid JSON
    for path in ("/v1/sessions/s-%ff", "/v1/carts/u-%C3", "/v1/sessions/%ED%A0%80"):
        for method, body in (("GET", None), ("PUT", {"user_id": "u1", "items": {}}), ("DELETE", None)):
            st, err, _ = client.request(method, path, body)
            assert st == 400, (method, path, err)
            assert "not valid UTF-8" in assert_error(err, "bad_request")["message"]
    assert rdb.keys("session:s-*\xff*") == []
    st, item, _ = client.request("PUT", "/v1/sessions/s-%C3%A9-" + uuid.uuid4().hex, {"user_id": "u1"})
    assert st == 201 and item["session_id"].startswith("s-\u00e9-")


def flushed(rdb):
    """SCRIPT FLUSH on the stack's Redis: the next EVALSHA of every client
    answers NOSCRIPT, and the gateway must load the script and send the
    same command again, whole."""
    rdb.script_flush()
    assert rdb.script_exists("0" * 40) == [False]


def test_cart_writes_after_script_flush(client, rdb):
    user = "u-" + uuid.uuid4().hex
    client.request("PATCH", "/v1/carts/" + user, {"inc": {"items.OLD": 1}})
    # a replace: its arguments hold an empty one (the clear's placeholder),
    # where the resend used to stop, dropping every member after it
    flushed(rdb)
    items = {"A": 2, "B": 3, "C": 1}
    st, cart, _ = client.request("PUT", "/v1/carts/" + user, {"items": items})
    assert st in (200, 201), cart
    assert cart["items"] == items
    assert rdb.hgetall("cart:" + user) == {k: str(v) for k, v in items.items()}
    # and a large one (its arguments no longer fit the first buffer)
    flushed(rdb)
    items = {"P%03d" % i: i + 1 for i in range(120)}
    st, cart, _ = client.request("PUT", "/v1/carts/" + user, {"items": items})
    assert st in (200, 201) and cart["items"] == items, cart
    assert rdb.hgetall("cart:" + user) == {k: str(v) for k, v in items.items()}
    # a clear and new members in one patch
    flushed(rdb)
    st, cart, _ = client.request("PATCH", "/v1/carts/" + user,
                                 {"unset": ["items"], "set": {"items.X": 2}, "inc": {"items.Y": 1}})
    assert st == 200, cart
    assert cart["items"] == {"X": 2, "Y": 1}
    assert rdb.hgetall("cart:" + user) == {"X": "2", "Y": "1"}
    # a plain clear
    flushed(rdb)
    st, cart, _ = client.request("PATCH", "/v1/carts/" + user, {"unset": ["items"]})
    assert st == 200 and cart["items"] == {}
    assert rdb.exists("cart:" + user) == 0


def test_session_writes_after_script_flush(client, rdb):
    key = sid()
    flushed(rdb)
    st, item, _ = client.request("PUT", "/v1/sessions/" + key, {"user_id": "u1", "data": {"k": ""}})
    assert st == 201 and item["version"] == 1 and item["data"] == {"k": ""}
    flushed(rdb)
    # a PATCH: read, then compare-and-set with the version read
    st, item, _ = client.request("PATCH", "/v1/sessions/" + key, {"set": {"data": {"k": "v"}}})
    assert st == 200 and item["version"] == 2 and item["data"] == {"k": "v"}
    flushed(rdb)
    # an If-Match write: the expected version travels in the resend
    st, body, _ = client.request("PUT", "/v1/sessions/" + key, {"user_id": "u2"}, headers={"If-Match": '"1"'})
    assert st == 412, body
    flushed(rdb)
    st, item, _ = client.request("PUT", "/v1/sessions/" + key, {"user_id": "u2"}, headers={"If-Match": '"2"'})
    assert st == 200 and item["version"] == 3 and item["user_id"] == "u2"
    st, got, _ = client.request("GET", "/v1/sessions/" + key)
    assert got == item
    flushed(rdb)
    st, _, _ = client.request("DELETE", "/v1/sessions/" + key, headers={"If-Match": '"3"'})
    assert st == 204
    assert rdb.exists("session:" + key) == 0


def test_store_error_text_stays_in_the_log(client, rdb):
    # a key of another type makes Redis answer an error (WRONGTYPE): the
    # client hears of the backend and shard, never Redis' own text
    key = sid()
    rdb.hset("session:" + key, "x", "1")
    try:
        st, body, _ = client.request("GET", "/v1/sessions/" + key)
        assert st == 500, body
        err = assert_error(body, "internal")
        assert "redis-main" in err["message"] and "backend 'redis'" in err["message"]
        assert "WRONGTYPE" not in err["message"] and "wrong kind" not in err["message"]
        assert "56379" not in err["message"] and "127.0.0.1" not in err["message"]
    finally:
        rdb.delete("session:" + key)


def test_cart_write_limit_is_named(client, rdb):
    # one write is one Redis script, which holds the server: 1 000 members
    user = "u-" + uuid.uuid4().hex
    items = {"S%04d" % i: 1 for i in range(1000)}
    st, cart, _ = client.request("PUT", "/v1/carts/" + user, {"items": items})
    assert st in (200, 201) and len(cart["items"]) == 1000
    items["S1000"] = 1
    st, body, _ = client.request("PUT", "/v1/carts/" + user, {"items": items})
    assert st == 400
    err = assert_error(body, "bad_request")
    assert err["field"] == "items" and "at most 1000 in one write" in err["message"], err
    st, body, _ = client.request("PATCH", "/v1/carts/" + user, {"set": {"items.N%04d" % i: 2 for i in range(1001)}})
    assert st == 400 and "at most 1000 in one write" in assert_error(body, "bad_request")["message"]
    assert rdb.hlen("cart:" + user) == 1000  # nothing written by the refused ones
    rdb.delete("cart:" + user)
