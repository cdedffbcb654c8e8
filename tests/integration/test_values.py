"""Values on every store, through HTTP: ids in paths, envelopes and query
strings are checked like strings in a body; int fields take the whole int64
range exactly; bodies that are JSON null or hold a NUL in a member name are
refused clearly; timestamps come back with one width everywhere."""
import datetime
import re
import time
import uuid

import pytest
from pymongo import MongoClient

from conftest import ADMIN_PORT, MONGO_DB, Client, assert_error

MONGO_URI = "mongodb://127.0.0.1:57017/?serverSelectionTimeoutMS=3000"
INT64_MAX = 2 ** 63 - 1
INT64_MIN = -2 ** 63
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def uid(prefix):
    return prefix + uuid.uuid4().hex[:16]


@pytest.fixture(scope="module")
def products():
    mc = MongoClient(MONGO_URI)
    coll = mc[MONGO_DB]["products"]
    made = []
    yield coll, made
    coll.delete_many({"sku": {"$in": made}})
    mc.close()


def user_body():
    return {"email": uid("v-") + "@example.com"}

# A body for a PUT on each domain.

DOMAINS = {
    "users": lambda: {"email": uid("v-") + "@example.com"},
    "catalog": lambda: {"name": "thing"},
    "orders": lambda: {"customer_id": "c-1", "status": "PENDING"},
    "shorders": lambda: {"customer_id": "c-1", "status": "PENDING"},
    "sessions": lambda: {"user_id": "u1"},
    "carts": lambda: {"items": {"P": 1}},
}

BAD_IDS = ["id-%ff", "%C3", "a%C0%AFb", "%ED%A0%80", "%F4%90%80%80"]


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_path_ids_must_be_utf8_on_every_store(client, domain):
    # "%ff" was stored as U+FFFD by the catalog (then unreachable), answered
    # with the database's own error text by users and orders, and sent back
    # as raw bytes inside JSON by sessions and carts
    suffix = "?customer_id=c-1" if domain in ("orders", "shorders") else ""
    for bad in BAD_IDS:
        for method in ("PUT", "GET", "PATCH", "DELETE"):
            body = DOMAINS[domain]() if method == "PUT" else {"set": {}} if method == "PATCH" else None
            st, err, _ = client.request(method, "/v1/%s/%s%s" % (domain, bad, suffix), body)
            assert st == 400, (method, domain, bad, err)
            msg = assert_error(err, "bad_request")["message"]
            assert "item key is not valid UTF-8" in msg, (method, domain, bad, msg)
    # a valid multi-byte id is fine, and comes back as it went in
    quoted = uid("id-%C3%A9%F0%9F%90%8E-")
    st, item, _ = client.request("PUT", "/v1/%s/%s%s" % (domain, quoted, suffix), DOMAINS[domain]())
    assert st == (200 if domain == "carts" else 201), item
    assert item[{"users": "id", "catalog": "sku", "orders": "order_id", "shorders": "order_id",
                 "sessions": "session_id", "carts": "user_id"}[domain]].startswith("id-\u00e9\U0001F40E-")
    st, _, _ = client.request("DELETE", "/v1/%s/%s%s" % (domain, quoted, suffix))
    assert st == 204


def test_catalog_stores_no_replacement_character(client, products):
    coll, made = products
    sku = uid("v-")
    made.append(sku + "\ufffd")
    st, err, _ = client.request("PUT", "/v1/catalog/%s%%ff" % sku, {"name": "x"})
    assert st == 400, err
    assert coll.count_documents({"sku": {"$regex": "^" + sku}}) == 0


def test_ids_in_envelopes_and_query_strings(client):
    # a batch envelope's id is checked like a path id
    st, body, _ = client.request("POST", "/v1/_batch", [
        {"op": "get", "domain": "sessions", "id": "a\u0000b"},
        {"op": "put", "domain": "users", "id": "x\u0001", "body": user_body()},
    ])
    assert st == 200
    assert [r["status"] for r in body["results"]] == [400, 400]
    assert all("control character" in r["error"]["message"] for r in body["results"])
    # and its shard_key like the body's value: a NUL no longer cuts it short
    st, body, _ = client.request("POST", "/v1/_batch", [
        {"op": "get", "domain": "orders", "id": "o-1", "shard_key": "c-1\u0000x"},
        {"op": "get", "domain": "orders", "id": "o-1", "shard_key": "c-\u00e9"},
    ])
    assert st == 200
    assert [r["status"] for r in body["results"]] == [400, 404], body
    err = body["results"][0]["error"]
    assert err["field"] == "customer_id" and "NUL" in err["message"], err
    # the shard key in the query string is checked like the body's value
    for q in ("%ff", "a%C0%AF", "%ED%A0%80"):
        for method, body in (("GET", None), ("DELETE", None), ("PATCH", {"set": {"status": "PENDING"}}),
                             ("PUT", {"customer_id": "c-1"})):
            st, err, _ = client.request(method, "/v1/orders/o-1?customer_id=" + q, body)
            assert st == 400, (method, q, err)
            e = assert_error(err, "bad_request")
            assert e["field"] == "customer_id" and "not valid UTF-8" in e["message"], e
    admin = Client(port=ADMIN_PORT)
    try:
        st, err, _ = admin.request("GET", "/admin/route/orders?customer_id=%ff")
        assert st == 400 and assert_error(err, "bad_request")["field"] == "customer_id"
    finally:
        admin.close()


# ---- int64 bounds --------------------------------------------------------------

def write_int(client, domain, field, value):
    """PUT one item whose int field is value; (status, body, path)."""
    if domain == "users":
        path, body = "/v1/users/" + uid("v-"), user_body()
    elif domain == "catalog":
        path, body = "/v1/catalog/" + uid("v-"), {"name": "n"}
    else:  # dorders on MariaDB
        cust = uid("cust-")
        path, body = "/v1/dorders/%s?customer_id=%s" % (uid("o-"), cust), {"customer_id": cust}
    body[field] = value
    st, item, _ = client.request("PUT", path, body)
    return st, item, path


INT_FIELDS = [("users", "age"), ("catalog", "stock"), ("dorders", "quantity")]


@pytest.mark.parametrize("domain,field", INT_FIELDS)
def test_int_fields_take_the_int64_bounds_exactly(client, products, domain, field):
    for value in (INT64_MAX, INT64_MIN, 0, -1):
        st, item, path = write_int(client, domain, field, value)
        if domain == "catalog":
            products[1].append(path.rsplit("/", 1)[1])
        assert st == 201, (value, item)
        assert item[field] == value
        st, got, _ = client.request("GET", path)
        assert st == 200 and got[field] == value, got
        # and a filter finds it by the bound
        key = {"users": "id", "catalog": "sku", "dorders": "order_id"}[domain]
        where = {key: got[key], field: value}
        if domain == "dorders":
            where["customer_id"] = got["customer_id"]
        st, res, _ = client.request("POST", "/v1/%s/_query" % domain, {"where": where})
        assert st == 200 and [i[key] for i in res["items"]] == [got[key]], res
        st, _, _ = client.request("DELETE", path)
        assert st == 204


@pytest.mark.parametrize("domain,field", INT_FIELDS)
def test_int_fields_refuse_one_past_the_bounds(client, domain, field):
    for value in (INT64_MAX + 1, INT64_MIN - 1, 2 ** 64, -(10 ** 30)):
        st, err, _ = write_int(client, domain, field, value)
        assert st == 400, (value, err)
        msg = assert_error(err, "bad_request")["message"]
        assert "'%s'" % field in msg and "out of the 64-bit range" in msg, msg
        assert str(value) in msg
    # in a patch and in a filter too
    st, item, path = write_int(client, domain, field, 5)
    assert st == 201
    st, err, _ = client.request("PATCH", path, {"set": {field: INT64_MIN - 1}})
    assert st == 400 and "'set.%s'" % field in assert_error(err, "bad_request")["message"]
    st, err, _ = client.request("POST", "/v1/%s/_query" % domain, {"where": {field: {"gt": INT64_MAX + 1}}})
    assert st == 400 and "'where.%s.gt'" % field in assert_error(err, "bad_request")["message"]
    client.request("DELETE", path)


# ---- bodies: null, NUL in a member name ------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("PUT", "/v1/users/x-null"), ("POST", "/v1/users"), ("PATCH", "/v1/users/x-null"),
    ("PUT", "/v1/sessions/x-null"), ("PATCH", "/v1/carts/x-null"), ("PUT", "/v1/catalog/x-null"),
    ("POST", "/v1/orders"), ("POST", "/v1/users/_query"), ("POST", "/v1/orders/_aggregate"),
    ("POST", "/v1/_batch"),
])
def test_null_body_is_a_clear_400(client, method, path):
    # it was "malformed JSON: continue"
    for raw in (b"null", b" null\n"):
        st, err, _ = client.request(method, path, raw=raw, headers={"Content-Type": "application/json"})
        assert st == 400, err
        msg = assert_error(err, "bad_request")["message"]
        assert "JSON null" in msg and "continue" not in msg, msg


def test_scalar_bodies_are_read_whole(client):
    # top-level numbers and literals were "malformed JSON: continue" too
    for raw, want in ((b"5", "must be a JSON object"), (b"true", "must be a JSON object"),
                      (b"1.5", "must be a JSON object")):
        st, err, _ = client.request("PUT", "/v1/sessions/" + uid("s-"), raw=raw,
                                    headers={"Content-Type": "application/json"})
        assert st == 400 and want in assert_error(err, "bad_request")["message"], err
    st, err, _ = client.request("POST", "/v1/_batch", raw=b"7", headers={"Content-Type": "application/json"})
    assert st == 400 and "array" in assert_error(err, "bad_request")["message"]


def test_nul_in_a_member_name_is_refused(client, rdb):
    # {"a\u0000b": 1} was stored as {"a": 1}
    key = uid("s-")
    st, err, _ = client.request("PUT", "/v1/sessions/" + key, {"user_id": "u", "data": {"ab\u0000cd": 1}})
    assert st == 400, err
    msg = assert_error(err, "bad_request")["message"]
    assert 'member name "ab\\u0000' in msg and "NUL" in msg, msg
    assert rdb.exists("session:" + key) == 0
    st, err, _ = client.request("PATCH", "/v1/carts/" + uid("u-"), {"inc": {"items.P\u0000Q": 1}})
    assert st == 400 and "NUL" in assert_error(err, "bad_request")["message"]
    st, err, _ = client.request("POST", "/v1/users/_query", {"where": {"prefs.a\u0000": 1}})
    assert st == 400 and "NUL" in assert_error(err, "bad_request")["message"]


# ---- timestamps: one width -----------------------------------------------------------

@pytest.mark.parametrize("domain", ["users", "orders", "shorders", "sessions"])
def test_timestamps_have_six_fraction_digits(client, domain):
    # PostgreSQL and MariaDB printed "…:02.3Z" beside "…:02.212Z" (trailing
    # zeros trimmed), gateway-made stamps had three digits: the text did not
    # sort in time order
    made = []
    for given, want in (("2026-01-31T00:08:02.3Z", "2026-01-31T00:08:02.300000Z"),
                        ("2026-01-31T00:08:02.212Z", "2026-01-31T00:08:02.212000Z"),
                        ("2026-01-31T01:08:02+01:00", "2026-01-31T00:08:02.000000Z"),
                        ("2026-01-31T00:08:02.1234567Z", "2026-01-31T00:08:02.123456Z")):
        body = DOMAINS[domain]()
        body["created_at"] = given
        suffix = "?customer_id=c-1" if domain in ("orders", "shorders") else ""
        path = "/v1/%s/%s%s" % (domain, uid("t-"), suffix)
        st, item, _ = client.request("PUT", path, body)
        assert st == 201, item
        assert item["created_at"] == want, (given, item)
        st, got, _ = client.request("GET", path)
        assert got["created_at"] == want, got
        made.append((path, got["created_at"]))
    texts = [t for _, t in made]
    assert sorted(texts) == ["2026-01-31T00:08:02.000000Z", "2026-01-31T00:08:02.123456Z",
                             "2026-01-31T00:08:02.212000Z", "2026-01-31T00:08:02.300000Z"]
    # a stamp the gateway makes has the same width
    body = DOMAINS[domain]()
    suffix = "?customer_id=c-1" if domain in ("orders", "shorders") else ""
    path = "/v1/%s/%s%s" % (domain, uid("t-"), suffix)
    st, item, _ = client.request("PUT", path, body)
    assert st == 201 and TS.fullmatch(item["created_at"]), item
    made.append((path, None))
    if domain in ("users", "orders", "shorders"):
        # in query answers too (the SQL stores' rows are written by one function)
        key = {"users": "id", "orders": "order_id", "shorders": "order_id"}[domain]
        where = {key: {"in": [p.split("/")[3].split("?")[0] for p, _ in made]}}
        if domain != "users":
            where["customer_id"] = "c-1"
        st, res, _ = client.request("POST", "/v1/%s/_query" % domain,
                                    {"where": where, "order_by": ["created_at"]})
        assert st == 200, res
        got = [i["created_at"] for i in res["items"]]
        assert len(got) == 5 and all(TS.fullmatch(t) for t in got) and got == sorted(got), got
    for path, _ in made:
        client.request("DELETE", path)


def test_catalog_dates_have_six_fraction_digits(client, products):
    # a BSON date (written by another client) was printed with three digits,
    # and one before 1970 lost its fraction and went a second forward
    coll, made = products
    sku = uid("v-")
    made.append(sku)
    utc = datetime.timezone.utc
    coll.insert_one({"sku": sku, "name": "dated", "version": 1, "specifications": {
        "released": datetime.datetime(2026, 1, 31, 0, 8, 2, 300000, tzinfo=utc),
        "designed": datetime.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=utc),
        "first": datetime.datetime(2026, 1, 31, 0, 8, 2, 212000, tzinfo=utc)}})
    st, got, _ = client.request("GET", "/v1/catalog/" + sku)
    assert st == 200, got
    spec = got["specifications"]
    assert spec == {"released": "2026-01-31T00:08:02.300000Z",
                    "designed": "1969-12-31T23:59:59.500000Z",
                    "first": "2026-01-31T00:08:02.212000Z"}, spec
    assert spec["first"] < spec["released"]


# ---- increments past the int64 bounds ------------------------------------------

import json  # noqa: E402  (this part reads answers as raw bytes)

# The gateway's own words for an inc whose result leaves the range: the same on
# every store, and those the stores it increments itself (Redis) answer.
INC_RANGE = "cannot increment '%s': the result is out of range"


@pytest.mark.parametrize("domain,field", INT_FIELDS)
def test_inc_past_the_int64_bounds_is_a_clean_conflict(client, products, domain, field):
    # users answered 400 with PostgreSQL's "bigint out of range", dorders 400
    # with MariaDB's SQL expression, the catalog 400 with FerretDB's text and
    # the raw bytes of the document's _id
    for start, step in ((INT64_MAX, 1), (INT64_MIN, -1), (INT64_MAX, INT64_MAX),
                        (INT64_MIN, INT64_MIN), (1, INT64_MAX)):
        st, item, path = write_int(client, domain, field, start)
        if domain == "catalog":
            products[1].append(path.rsplit("/", 1)[1])
        assert st == 201, item
        st, err, _ = client.request("PATCH", path, {"inc": {field: step}})
        assert st == 409, (start, step, err)
        e = assert_error(err, "conflict")
        assert e["field"] == field and e["message"] == INC_RANGE % field, e
        # nothing was written: the value and the version are what they were
        st, got, _ = client.request("GET", path)
        assert st == 200 and got[field] == start and got["version"] == item["version"], got
        # up to the bound itself is in range, both ways
        sign = 1 if step > 0 else -1
        st, got, _ = client.request("PATCH", path, {"inc": {field: -sign}})
        assert st == 200 and got[field] == start - sign, got
        st, got, _ = client.request("PATCH", path, {"inc": {field: sign}})
        assert st == 200 and got[field] == start, got
        st, _, _ = client.request("DELETE", path)
        assert st == 204


def gateway_log(gateway):
    """The log's lines; bytes other tests had logged that are not UTF-8 are
    replaced (the lines looked for here are text)."""
    gateway.log.flush()
    with open(gateway.log.name, "rb") as f:
        return f.read().decode("utf-8", "replace").splitlines()


def raw_patch(client, path, body):
    """PATCH; (status, the answer's bytes undecoded)."""
    client.conn.request("PATCH", path, body=json.dumps(body).encode(),
                        headers={"Content-Type": "application/json"})
    resp = client.conn.getresponse()
    return resp.status, resp.read()


def test_catalog_inc_errors_are_utf8_without_store_text(gateway, client, products):
    coll, made = products
    st, item, path = write_int(client, "catalog", "stock", INT64_MAX)
    made.append(item["sku"])
    assert st == 201, item
    st, raw = raw_patch(client, path, {"inc": {"stock": 1}})
    text = raw.decode("utf-8")  # strict: FerretDB's text carried raw _id bytes
    assert st == 409, text
    for store_text in ("Failed to apply", "NumberLong", "{_id", "document", "BadValue"):
        assert store_text not in text, text
    assert assert_error(json.loads(text), "conflict")["message"] == INC_RANGE % "stock"
    # a stored value the store cannot increment (written by another client):
    # the store's refusal, which quotes the document, stays in the log too
    coll.update_one({"sku": item["sku"]}, {"$set": {"stock": "many"}})
    st, raw = raw_patch(client, path, {"inc": {"stock": 1}})
    text = raw.decode("utf-8")
    assert st == 400, text
    for store_text in ("non-numeric", "{_id", "TypeMismatch", "Cannot apply", "$inc"):
        assert store_text not in text, text
    msg = assert_error(json.loads(text), "bad_request")["message"]
    assert "shard 'catalog-mongo'" in msg and "logged as call" in msg, msg
    assert coll.find_one({"sku": item["sku"]})["stock"] == "many"
    # the store's words are in the log, under the call id the client was given
    call = re.search(r"logged as call (\d+)", msg).group(1)
    log = [ln for ln in gateway_log(gateway) if " call %s (patch): " % call in ln]
    assert log and "code 14" in log[0], log


def test_a_value_the_store_refuses_is_answered_without_its_words(gateway, client):
    # PostgreSQL refuses a NUL inside a JSON value ("unsupported Unicode escape
    # sequence", SQLSTATE 22P05), which the answer repeated as "PostgreSQL
    # refused the value: …"; a check of the gateway's own would name the field
    st, err, _ = client.request("PUT", "/v1/users/" + uid("v-"), dict(user_body(), prefs={"a": "x\u0000"}))
    assert st == 400, err
    e = assert_error(err, "bad_request")
    assert "Unicode" not in e["message"] and "PostgreSQL" not in e["message"], e
    if e.get("field") != "prefs":
        m = re.fullmatch(r"backend 'users-pg' shard 'users-pg' refused a value of the put "
                         r"\(the store's error is logged as call (\d+)\)", e["message"])
        assert m, e
        log = [ln for ln in gateway_log(gateway) if " call %s (put): " % m.group(1) in ln]
        assert log and "SQLSTATE 22" in log[0], log


@pytest.mark.parametrize("domain,field,backend", [("users", "balance", "users-pg"),
                                                  ("dorders", "total_amount", "orders-mysql")])
def test_a_decimal_inc_past_its_digits_is_answered_without_the_stores_words(
        gateway, client, domain, field, backend):
    # PostgreSQL "numeric field overflow", MariaDB "Out of range value for
    # column …" were repeated in the answer; the value is refused (400), not
    # a range conflict of the int kind, and the store's words are logged
    digits = {"balance": "9999999999999999.9999", "total_amount": "9999999999999999.99"}[field]
    if domain == "users":
        path, body = "/v1/users/" + uid("v-"), '{"email":"%s"' % user_body()["email"]
    else:
        cust = uid("cust-")
        path, body = "/v1/dorders/%s?customer_id=%s" % (uid("o-"), cust), '{"customer_id":"%s"' % cust
    st, item, _ = client.request("PUT", path, raw=(body + ',"%s":%s}' % (field, digits)).encode(),
                                 headers={"Content-Type": "application/json"})
    assert st == 201, item
    st, err, _ = client.request("PATCH", path, {"inc": {field: 1}})
    assert st == 400, err
    msg = assert_error(err, "bad_request")["message"]
    m = re.fullmatch(r"backend '%s' shard '[^']+' refused a value of the patch "
                     r"\(the store's error is logged as call (\d+)\)" % backend, msg)
    assert m, msg
    log = [ln for ln in gateway_log(gateway) if " call %s (patch): " % m.group(1) in ln]
    assert log and "SQLSTATE 22003" in log[0], log
    st, got, _ = client.request("GET", path)
    assert st == 200 and got["version"] == item["version"], got
    assert client.request("DELETE", path)[0] == 204


def test_access_log_lines_stay_utf8_json_with_bad_bytes_in_the_path(gateway, client):
    """A path whose id decodes to bytes that are not UTF-8 is answered 400 and
    logged: the access-log line must still be valid UTF-8 and valid JSON (it
    held the raw byte before), with the byte written as the text \\xNN and
    whole multi-byte characters kept as they are."""
    marker = uid("alog-")
    st, _, _ = client.request("GET", "/v1/users/%s-%%ff-%%C3%%A9" % marker)
    assert st == 400

    def line():
        with open(gateway.log.name, "rb") as f:
            for raw in f:
                if marker.encode() in raw and b'"type":"access"' in raw:
                    return raw
        return None

    deadline = time.time() + 10
    while line() is None and time.time() < deadline:
        time.sleep(0.05)
    raw = line()
    assert raw is not None, "no access-log line for the request"
    doc = json.loads(raw.decode("utf-8"))  # strict: raises on invalid UTF-8
    assert doc["path"].endswith("%s-\\xff-\u00e9" % marker), doc["path"]


def test_catalog_decimal_inc_past_its_digits_is_refused(client, products):
    """The catalog keeps decimals as scaled integers; an `inc` that would take
    one past its 18 digits was stored.  It is refused with a 400 naming the
    field, as the SQL stores refuse it for their DECIMAL columns, the item is
    unchanged, and increments within the digits (and `where` guards beside
    them) still work on both sides of zero."""
    coll, made = products
    sku = uid("dec-")
    made.append(sku)
    path = "/v1/catalog/" + sku
    st, item, _ = client.request("PUT", path, {"name": "x", "price": "9999999999999999.98", "stock": 5})
    assert st == 201, item
    st, got, _ = client.request("PATCH", path, {"inc": {"price": "0.01"}})
    assert st == 200, got
    top = 999999999999999999  # 9999999999999999.99 as the catalog stores it (cents)
    assert coll.find_one({"sku": sku})["price"] == top
    for body in ({"inc": {"price": "0.01"}}, {"inc": {"price": 1}},
                 {"inc": {"price": "0.01"}, "where": {"stock": {"gte": 1}}}):
        st, err, _ = client.request("PATCH", path, body)
        assert st == 400, (body, err)
        e = assert_error(err, "bad_request")
        assert "'price'" in e["message"] and "18 digits" in e["message"], e
    st, got, _ = client.request("GET", path)
    assert st == 200 and got["version"] == 2, got
    assert coll.find_one({"sku": sku})["price"] == top
    # the guard beside it still decides when the sum fits
    st, err, _ = client.request("PATCH", path, {"inc": {"price": "-0.01"}, "where": {"stock": {"gte": 9}}})
    assert st == 409 and "where" in assert_error(err, "conflict")["message"], err
    # the negative bound, and a field absent before the inc
    st, got, _ = client.request("PATCH", path, {"set": {"price": "-9999999999999999.99"}})
    assert st == 200, got
    st, err, _ = client.request("PATCH", path, {"inc": {"price": "-0.01"}})
    assert st == 400 and "'price'" in assert_error(err, "bad_request")["message"], err
    st, got, _ = client.request("PATCH", path, {"unset": ["price"]})
    assert st == 200 and "price" not in got, got
    st, got, _ = client.request("PATCH", path, {"inc": {"price": "2.50"}})
    assert st == 200, got
    assert coll.find_one({"sku": sku})["price"] == 250
