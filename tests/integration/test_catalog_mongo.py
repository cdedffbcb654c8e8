"""The catalog on the MongoDB adapter, against the FerretDB of the local stack,
through HTTP; direct checks with pymongo (Debian's python3-pymongo)."""
import http.client
import json
import threading
import time
import uuid
from decimal import Decimal

import pytest
from bson.int64 import Int64
from pymongo import MongoClient

from conftest import ADMIN_PORT, CONFIG, MONGO_DB, PORT, Client, Gateway, assert_error, via_proxies

MONGO_URI = "mongodb://127.0.0.1:57017/?serverSelectionTimeoutMS=3000"
DB = MONGO_DB  # polygate_test of tests/integration/polygate.test.yaml, this run's


@pytest.fixture(scope="module")
def products():
    mc = MongoClient(MONGO_URI)
    yield mc[DB]["products"]
    # this module's products go again: a growing collection slows FerretDB
    # (SQLite) down for every later run
    mc[DB]["products"].delete_many({"sku": {"$in": CREATED}})
    mc.close()


CREATED = []  # every sku handed out by sku()


def sku():
    s = "t-" + uuid.uuid4().hex[:16]
    CREATED.append(s)
    return s


def product(**over):
    p = {
        "name": "Phone X",
        "category": {"id": "c-phones", "name": "Phones", "path": "/electronics/phones"},
        "price": 1234.56,
        "stock": 7,
        "specifications": {"ram": {"gb": 8, "type": "LPDDR5"}, "colors": ["black", "blue"],
                           "weight_g": 187.5, "dual_sim": True, "notes": None},
        "search_tags": ["phone", "5g", "android"],
    }
    p.update(over)
    return p


def raw(method, path, body=None, headers=None):
    """The response body as bytes, to check the exact digits of numbers."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def test_crud_nested_round_trip(client, products):
    k = sku()
    body = product()
    st, item, resp = client.request("PUT", "/v1/catalog/" + k, body)
    assert st == 201, item
    assert item["version"] == 1 and resp.getheader("ETag") == '"1"'
    expected = dict(body, sku=k, version=1)
    assert item == expected
    st, got, _ = client.request("GET", "/v1/catalog/" + k)
    assert st == 200 and got == expected
    # stored as a plain document: nested objects and arrays as sent, no _id leak
    doc = products.find_one({"sku": k})
    assert doc["specifications"] == body["specifications"]
    assert doc["search_tags"] == body["search_tags"] and doc["category"] == body["category"]
    assert "_id" not in got
    # replace: fields absent from the new item are gone, version increments
    st, item, _ = client.request("PUT", "/v1/catalog/" + k, {"name": "Phone Y", "stock": 1})
    assert st == 200 and item == {"sku": k, "name": "Phone Y", "stock": 1, "version": 2}
    # patch set / inc / unset
    st, item, _ = client.request("PATCH", "/v1/catalog/" + k,
                                 {"set": {"category": {"id": "c2", "name": "N", "path": "/n"}},
                                  "inc": {"stock": 4}, "unset": ["name"]})
    assert st == 400  # name is required: cannot be unset
    st, item, _ = client.request("PATCH", "/v1/catalog/" + k,
                                 {"set": {"category": {"id": "c2", "name": "N", "path": "/n"}},
                                  "inc": {"stock": 4}})
    assert st == 200 and item["stock"] == 5 and item["version"] == 3
    assert item["category"] == {"id": "c2", "name": "N", "path": "/n"}
    st, _, _ = client.request("DELETE", "/v1/catalog/" + k)
    assert st == 204
    st, body, _ = client.request("GET", "/v1/catalog/" + k)
    assert st == 404 and assert_error(body, "not_found")
    st, body, _ = client.request("DELETE", "/v1/catalog/" + k)
    assert st == 404


def test_price_is_exact(client, products):
    k = sku()
    st, data = raw("PUT", "/v1/catalog/" + k, None)
    assert st == 400
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    # digits beyond a binary double's precision, sent as text
    conn.request("PUT", "/v1/catalog/" + k,
                 body='{"name":"n","price":"12345678901234.56"}')
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    assert resp.status == 201, data
    assert b'"price":12345678901234.56' in data
    st, data = raw("GET", "/v1/catalog/" + k)
    assert st == 200 and b'"price":12345678901234.56' in data
    assert json.loads(data, parse_float=Decimal)["price"] == Decimal("12345678901234.56")
    # stored exactly: an integer number of cents (FerretDB 1.x has no Decimal128)
    assert products.find_one({"sku": k})["price"] == 1234567890123456
    st, data = raw("PATCH", "/v1/catalog/" + k, {"inc": {"price": "0.01"}})
    assert st == 200 and b'"price":12345678901234.57' in data
    st, data = raw("PUT", "/v1/catalog/" + k, {"name": "n", "price": "0.001"})
    assert st == 400  # more decimal places than the scale


def test_insert_duplicate_sku_is_409(client):
    k = sku()
    st, item, _ = client.request("POST", "/v1/catalog", dict(product(), sku=k))
    assert st == 201 and item["version"] == 1 and item["sku"] == k
    st, body, resp = client.request("POST", "/v1/catalog", dict(product(name="other"), sku=k))
    assert st == 409
    assert assert_error(body, "conflict", resp=resp)["field"] == "sku"
    st, item, _ = client.request("GET", "/v1/catalog/" + k)
    assert item["name"] == "Phone X"
    st, body, _ = client.request("POST", "/v1/catalog", product())
    assert st == 400  # no generated skus: the key is required


def test_unique_index_created_by_auto_migrate(client, products):
    client.request("PUT", "/v1/catalog/" + sku(), product())
    idx = products.index_information()
    assert any(v["key"] == [("sku", 1)] and v.get("unique") for v in idx.values()), idx


def test_if_match(client):
    k = sku()
    client.request("PUT", "/v1/catalog/" + k, product())
    st, body, _ = client.request("PUT", "/v1/catalog/" + k, product(), headers={"If-Match": '"5"'})
    assert st == 412 and assert_error(body, "precondition_failed")
    st, body, _ = client.request("PATCH", "/v1/catalog/" + k, {"inc": {"stock": 1}},
                                 headers={"If-Match": '"5"'})
    assert st == 412
    st, body, _ = client.request("DELETE", "/v1/catalog/" + k, headers={"If-Match": '"5"'})
    assert st == 412
    st, item, _ = client.request("PATCH", "/v1/catalog/" + k, {"inc": {"stock": 1}},
                                 headers={"If-Match": '"1"'})
    assert st == 200 and item["version"] == 2 and item["stock"] == 8
    st, item, _ = client.request("PUT", "/v1/catalog/" + k, product(), headers={"If-Match": '"2"'})
    assert st == 200 and item["version"] == 3
    # If-Match on an item that does not exist: nothing is created
    st, body, _ = client.request("PUT", "/v1/catalog/" + sku(), product(), headers={"If-Match": '"1"'})
    assert st == 412
    st, _, _ = client.request("DELETE", "/v1/catalog/" + k, headers={"If-Match": '"3"'})
    assert st == 204


def test_guarded_stock_change(client, products):
    k = sku()
    client.request("PUT", "/v1/catalog/" + k, product(stock=3))
    guard = {"inc": {"stock": -2}, "where": {"stock": {"gte": 2}}}
    st, item, _ = client.request("PATCH", "/v1/catalog/" + k, guard)
    assert st == 200 and item["stock"] == 1 and item["version"] == 2
    st, body, _ = client.request("PATCH", "/v1/catalog/" + k, guard)
    assert st == 409 and assert_error(body, "conflict")
    assert products.find_one({"sku": k})["stock"] == 1
    st, body, _ = client.request("PATCH", "/v1/catalog/" + sku(), guard)
    assert st == 404
    # guards are validated against the schema
    for bad in ({"stock": {"gte": "2"}}, {"nope": 1}, {"stock": {"$gte": 2}},
                {"stock": {"gte": {"$gt": 1}}}, {"specifications": {"eq": {"a": 1}}}, []):
        st, body, _ = client.request("PATCH", "/v1/catalog/" + k,
                                     {"inc": {"stock": -1}, "where": bad})
        assert st == 400, (bad, body)
    assert products.find_one({"sku": k})["stock"] == 1


def test_guarded_patch_refused_where_unsupported(client):
    st, body, _ = client.request("PATCH", "/v1/sessions/s-guard",
                                 {"set": {"user_id": "u"}, "where": {"user_id": "u"}})
    assert st == 400 and assert_error(body, "unsupported_operation")


def test_concurrent_buyers_never_oversell(client, products):
    k = sku()
    st, _, _ = client.request("PUT", "/v1/catalog/" + k, product(stock=20))
    assert st == 201
    results = []
    lock = threading.Lock()
    start = threading.Barrier(50)

    def buyer():
        c = Client()
        start.wait()
        st, body, _ = c.request("PATCH", "/v1/catalog/" + k,
                                {"inc": {"stock": -1}, "where": {"stock": {"gte": 1}}})
        c.close()
        with lock:
            results.append(st)

    threads = [threading.Thread(target=buyer) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(results)) == [200, 409], results
    assert results.count(200) == 20 and results.count(409) == 30
    assert products.find_one({"sku": k})["stock"] == 0
    st, item, _ = client.request("GET", "/v1/catalog/" + k)
    assert item["stock"] == 0 and item["version"] == 21


INJECTIONS = [
    {"$where": "sleep(1000)"},
    {"name": "n", "$where": "1"},
    {"name": "n", "specifications": {"$where": "this.a"}},
    {"name": "n", "specifications": {"deep": {"deeper": {"$function": {"body": "x"}}}}},
    {"name": "n", "specifications": {"list": [{"ok": 1}, {"$expr": {"$eq": [1, 1]}}]}},
    {"name": "n", "specifications": {"a.b": 1}},
    {"name": "n", "category": {"id": {"$ne": None}}},
    {"name": "n", "specifications": {"\u0000hidden": 1}},
    {"name": {"$gt": ""}},
    {"name": "n", "stock": {"$inc": 5}},
    {"name": "n", "price": {"$numberDecimal": "1"}},
    {"name": "n", "search_tags": {"$in": ["a"]}},
]


@pytest.mark.parametrize("doc", INJECTIONS)
def test_injection_corpus(client, products, doc):
    k = sku()
    for method, path, body in (("PUT", "/v1/catalog/" + k, doc),
                               ("POST", "/v1/catalog", dict(doc, sku=k)),
                               ("PATCH", "/v1/catalog/" + k, {"set": doc})):
        st, resp, _ = client.request(method, path, body)
        assert st == 400, (method, doc, resp)
        assert_error(resp, "bad_request")
    assert products.find_one({"sku": k}) is None


def test_operator_text_in_values_is_plain_data(client, products):
    k = sku()
    odd = {"name": "$where", "search_tags": ["$gt", "{$ne: 1}"],
           "specifications": {"q": "{\"$where\": \"1\"}", "n": "$inc"}}
    st, item, _ = client.request("PUT", "/v1/catalog/" + k, odd)
    assert st == 201
    st, got, _ = client.request("GET", "/v1/catalog/" + k)
    assert got == dict(odd, sku=k, version=1)
    assert products.find_one({"sku": k})["name"] == "$where"
    # a key from the URL is a value too
    st, _, _ = client.request("GET", "/v1/catalog/%24where")
    assert st == 404


def mongo_ready(body):
    """The readiness of catalog-mongo alone (other backends are not ours)."""
    return [b["ok"] for b in body["backends"] if b["backend"] == "catalog-mongo"] == [True]


# the gateway of the FerretDB-down test: the catalog through this run's proxy
DOWN_PORT, DOWN_ADMIN = PORT + 73, ADMIN_PORT + 73


@pytest.fixture
def mongo_proxied(toxics):
    """A private gateway whose catalog-mongo reaches FerretDB through this
    run's proxy (toxics: enabled, clean before and after), so that the test
    faults the proxy, never the server other runs share; (client, proxy)."""
    with open(CONFIG) as f:
        text = f.read()
    text = text.replace("18080", str(DOWN_PORT)).replace("19090", str(DOWN_ADMIN))
    g = Gateway(via_proxies(text, ("ferretdb",)), port=DOWN_PORT)
    c = Client(DOWN_PORT)
    yield c, toxics["ferretdb"]
    c.close()
    rc = g.stop()
    assert rc == 0, "polygate did not exit cleanly on SIGTERM (rc=%s)" % rc


def test_ferretdb_down_then_recovery(mongo_proxied):
    """FerretDB unreachable (its proxy disabled: open connections closed, new
    ones refused, as when the server stops) is a 503 naming catalog-mongo
    within the deadline and /ready says so; once it is reachable again every
    worker serves without a restart."""
    client, proxy = mongo_proxied
    k = sku()
    st, _, _ = client.request("PUT", "/v1/catalog/" + k, product())
    assert st == 201
    proxy.down()
    try:
        t0 = time.time()
        st, body, resp = client.request("GET", "/v1/catalog/" + k)
        elapsed = time.time() - t0
        assert st == 503, body
        err = assert_error(body, "backend_unavailable", resp=resp)
        assert "catalog-mongo" in err["message"] and err["shard"] == "catalog-mongo"
        assert elapsed < 1.5 + 0.5  # within the request deadline (1500 ms)
        st, body, _ = Client(DOWN_ADMIN).request("GET", "/ready")  # details: admin listener
        assert st == 503 and body["ready"] is False and mongo_ready(body) is False
    finally:
        proxy.up()
    deadline = time.time() + 20
    while time.time() < deadline:
        st, item, _ = client.request("GET", "/v1/catalog/" + k)
        if st == 200:
            break
        time.sleep(0.2)
    assert st == 200 and item["name"] == "Phone X", "polygate did not recover after FerretDB came back"
    # every worker's client pool reconnects on its own (the probe may hit another worker)
    deadline = time.time() + 20
    admin = Client(DOWN_ADMIN)
    while time.time() < deadline and not mongo_ready(admin.request("GET", "/ready")[1]):
        time.sleep(0.2)
    assert mongo_ready(admin.request("GET", "/ready")[1])


# ---- _query / _aggregate -----------------------------------------------------------

def post_exact(path, body):
    """POST, the answer parsed with decimals kept exact."""
    st, data = raw("POST", path, body)
    return st, json.loads(data, parse_float=Decimal)


def query(body):
    return post_exact("/v1/catalog/_query", body)


def all_pages(body, page):
    """Every item of a query, page by page; the number of pages."""
    items, cursor, pages = [], None, 0
    while True:
        st, res = query(dict(body, limit=page, cursor=cursor))
        assert st == 200, res
        assert res["shards_queried"] == 1 and res["partial"] is False
        assert len(res["items"]) <= page
        items += res["items"]
        pages += 1
        cursor = res["cursor"]
        if cursor is None:
            return items, pages
        assert pages < 1000


@pytest.fixture(scope="module")
def run_set(gateway, products):
    """A fresh set of products for this run (skus q-<run>-…), removed afterwards."""
    run = uuid.uuid4().hex[:10]
    cats = ["c-phones", "c-laptops", "c-cases", "c-misc"]
    items = []
    for i in range(230):
        k = "q-%s-%03d" % (run, i)
        p = {
            "name": "P %s %d" % (cats[i % 4], i % 7),
            "category": {"id": cats[i % 4], "name": cats[i % 4][2:], "path": "/x/" + cats[i % 4]},
            "stock": i % 13,
            "search_tags": ["tag%d" % (i % 5), "run-" + run] + (["even"] if i % 2 == 0 else []),
            "specifications": {"weight_g": i, "rating": {"stars": i % 5}},
        }
        if i % 10 != 3:  # some products have no price (NULL)
            p["price"] = "%d.%02d" % (i * 7 % 500, i * 37 % 100)
        items.append(dict(p, sku=k))
    # one bulk insert in the adapter's stored format (price: an integer number
    # of cents, version 1): 230 HTTP writes take ~30 s on FerretDB/SQLite and
    # time out under a loaded stack; writes through HTTP are tested above
    docs = []
    for p in items:
        d = dict(p, version=1)
        if "price" in d:
            d["price"] = Int64(int(Decimal(d["price"]) * 100))
        docs.append(d)
    try:
        products.insert_many(docs)
        st, got, _ = Client().request("GET", "/v1/catalog/" + items[0]["sku"])
        assert st == 200 and got == dict(items[0], version=1, price=float(items[0]["price"])), got
        yield {"run": run, "items": items, "cats": cats, "tag": "run-" + run}
    finally:  # a big collection slows FerretDB down for every other test
        products.delete_many({"sku": {"$regex": "^q-" + run}})


def price(p):
    return Decimal(p["price"]) if "price" in p else None


def skus(items):
    return sorted(i["sku"] for i in items)


def test_query_dotted_path_and_in_on_arrays(run_set):
    tag = run_set["tag"]
    st, res = query({"where": {"search_tags": {"in": [tag]}, "category.id": "c-cases"}, "limit": 1000})
    assert st == 200, res
    want = [p for p in run_set["items"] if p["category"]["id"] == "c-cases"]
    assert skus(res["items"]) == skus(want) and len(want) > 0
    assert res["cursor"] is None
    # nested two levels, numbers below a path
    st, res = query({"where": {"search_tags": {"in": [tag]}, "specifications.rating.stars": {"gte": 3}},
                     "limit": 1000})
    assert st == 200
    assert skus(res["items"]) == skus(p for p in run_set["items"]
                                      if p["specifications"]["rating"]["stars"] >= 3)
    # in: any element; nin: no element
    st, res = query({"where": {"search_tags": {"in": [tag]}, "and": [{"search_tags": {"in": ["tag1", "tag2"]}}]},
                     "limit": 1000})
    assert skus(res["items"]) == skus(p for p in run_set["items"]
                                      if {"tag1", "tag2"} & set(p["search_tags"]))
    st, res = query({"where": {"search_tags": {"in": [tag]}, "and": [{"search_tags": {"nin": ["even", "tag0"]}}]},
                     "limit": 1000})
    assert skus(res["items"]) == skus(p for p in run_set["items"]
                                      if not {"even", "tag0"} & set(p["search_tags"]))
    # or, ne, exists
    st, res = query({"where": {"search_tags": {"in": [tag]},
                               "or": [{"category.id": "c-misc"}, {"price": None}]}, "limit": 1000})
    assert skus(res["items"]) == skus(p for p in run_set["items"]
                                      if p["category"]["id"] == "c-misc" or "price" not in p)
    st, res = query({"where": {"search_tags": {"in": [tag]}, "price": {"exists": False}}, "limit": 1000})
    assert skus(res["items"]) == skus(p for p in run_set["items"] if "price" not in p)
    st, res = query({"where": {"search_tags": {"in": [tag]}, "category.id": {"ne": "c-misc"},
                               "stock": {"in": [1, 2]}}, "limit": 1000})
    assert skus(res["items"]) == skus(p for p in run_set["items"]
                                      if p["category"]["id"] != "c-misc" and p["stock"] in (1, 2))


def test_query_price_ranges_exact(run_set):
    tag = run_set["tag"]
    priced = [p for p in run_set["items"] if "price" in p]
    lo, hi = sorted({price(p) for p in priced})[10], sorted({price(p) for p in priced})[-10]
    for ops, pred in (({"gte": str(lo), "lte": str(hi)}, lambda x: lo <= x <= hi),
                      ({"gt": str(lo), "lt": str(hi)}, lambda x: lo < x < hi),
                      ({"gt": float(lo)}, lambda x: x > lo),
                      ({"eq": str(lo)}, lambda x: x == lo),
                      ({"in": [str(lo), str(hi)]}, lambda x: x in (lo, hi))):
        st, res = query({"where": {"search_tags": {"in": [tag]}, "price": ops}, "limit": 1000})
        assert st == 200, res
        want = [p for p in priced if pred(price(p))]
        assert skus(res["items"]) == skus(want), ops
        for it in res["items"]:  # exact digits, scale 2
            assert it["price"] == price(next(p for p in priced if p["sku"] == it["sku"]))
    # a boundary one cent away
    st, res = query({"where": {"search_tags": {"in": [tag]},
                               "price": {"gt": str(lo - Decimal("0.01")), "lt": str(lo + Decimal("0.01"))}}})
    assert skus(res["items"]) == skus(p for p in priced if price(p) == lo)
    st, res = query({"where": {"price": {"gte": "1.001"}}})
    assert st == 400 and res["error"]["field"] == "price"


def test_query_sort_limit_cursor_pages(run_set):
    tag = run_set["tag"]
    items = run_set["items"]

    def key_price(p, desc):
        # NULLS LAST ascending, NULLS FIRST descending; sku asc as the tiebreak
        x = price(p)
        if desc:
            return (x is not None, -(x or 0), p["sku"])
        return (x is None, x or 0, p["sku"])

    for order, expect in ((["price"], sorted(items, key=lambda p: key_price(p, False))),
                          (["-price"], sorted(items, key=lambda p: key_price(p, True))),
                          ([{"stock": "desc"}, "-sku"], sorted(items, key=lambda p: (-p["stock"], [-ord(ch) for ch in p["sku"]]))),
                          ([], sorted(items, key=lambda p: p["sku"]))):
        got, pages = all_pages({"where": {"search_tags": {"in": [tag]}}, "order_by": order}, 17)
        assert [g["sku"] for g in got] == [p["sku"] for p in expect], order
        assert len(got) == len(set(g["sku"] for g in got)) == 230
        assert pages == 14
    # the cursor is bound to its order_by
    st, res = query({"where": {"search_tags": {"in": [tag]}}, "order_by": ["price"], "limit": 5})
    cur = res["cursor"]
    st, res = query({"where": {"search_tags": {"in": [tag]}}, "order_by": ["-price"], "cursor": cur})
    assert st == 400
    st, res = query({"where": {"search_tags": {"in": [tag]}}, "order_by": ["price"],
                     "cursor": cur[:-3] + ("AAA" if cur[-3:] != "AAA" else "BBB")})
    assert st == 400


def test_query_fields_projection(run_set):
    tag = run_set["tag"]
    st, res = query({"where": {"search_tags": {"in": [tag]}}, "fields": ["name", "price"],
                     "order_by": ["-stock"], "limit": 50})
    assert st == 200 and len(res["items"]) == 50 and res["cursor"] is not None
    by_sku = {p["sku"]: p for p in run_set["items"]}
    for it in res["items"]:
        p = by_sku[it["sku"]]
        want = {"sku", "version", "name"} | ({"price"} if "price" in p else set())
        assert set(it) == want, it  # stock was read for the cursor only
        assert it["name"] == p["name"] and it["version"] == 1
    # the next page still follows
    st, res2 = query({"where": {"search_tags": {"in": [tag]}}, "fields": ["name", "price"],
                      "order_by": ["-stock"], "limit": 50, "cursor": res["cursor"]})
    assert st == 200 and not set(skus(res["items"])) & set(skus(res2["items"]))


def test_query_prefix_is_literal(client, products):
    run = uuid.uuid4().hex[:8]
    names = ["a.b*c(" + run, "aXb*c(" + run, "a.b*c[" + run, "^$|?+\\" + run, "(x" + run]
    ks = []
    for n in names:
        k = sku()
        ks.append(k)
        assert client.request("PUT", "/v1/catalog/" + k, {"name": n})[0] == 201
    try:
        for pre, want in (("a.b*c(", {names[0]}), ("a.", {names[0], names[2]}),
                          ("^$|?+\\", {names[3]}), ("(x" + run, {names[4]}), (".*", set())):
            st, res = query({"where": {"name": {"prefix": pre}, "sku": {"in": ks}}})
            assert st == 200, res
            assert {i["name"] for i in res["items"]} == want, pre
    finally:
        products.delete_many({"sku": {"$in": ks}})


def test_aggregates_equal_independent_values(run_set):
    tag = run_set["tag"]
    items = run_set["items"]
    from decimal import ROUND_HALF_UP
    # per category: one _aggregate each, on the dotted path
    for cat in run_set["cats"]:
        mine = [p for p in items if p["category"]["id"] == cat]
        prices = [price(p) for p in mine if "price" in p]
        st, res = post_exact("/v1/catalog/_aggregate", {
            "where": {"search_tags": {"in": [tag]}, "category.id": cat},
            "aggregates": {"n": {"count": "*"}, "priced": {"count": "price"}, "total": {"sum": "price"},
                           "avg_price": {"avg": "price"}, "lo": {"min": "price"}, "hi": {"max": "price"},
                           "stock": {"sum": "stock"}, "avg_stock": {"avg": "stock"}}})
        assert st == 200, res
        assert res["cursor"] is None and res["shards_queried"] == 1 and len(res["items"]) == 1
        row = res["items"][0]
        assert row["n"] == len(mine) and row["priced"] == len(prices)
        assert row["total"] == sum(prices)
        exp_avg = (sum(prices) / len(prices)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        assert row["avg_price"] == exp_avg and str(row["avg_price"]) == str(exp_avg)
        assert row["lo"] == min(prices) and row["hi"] == max(prices)
        assert row["stock"] == sum(p["stock"] for p in mine)
        exp_s = (Decimal(sum(p["stock"] for p in mine)) / len(mine)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
        assert row["avg_stock"] == exp_s
    # the same in one request: group_by the dotted path, one row per category
    st, res = post_exact("/v1/catalog/_aggregate", {
        "where": {"search_tags": {"in": [tag]}}, "group_by": ["category.id"],
        "aggregates": {"n": {"count": "*"}, "avg_price": {"avg": "price"}}})
    assert st == 200, res
    want = []
    for cat in sorted(run_set["cats"]):
        mine = [p for p in items if p["category"]["id"] == cat]
        prices = [price(p) for p in mine if "price" in p]
        want.append({"category.id": cat, "n": len(mine),
                     "avg_price": (sum(prices) / len(prices)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)})
    assert res["items"] == want
    # a deeper path, numbers as keys
    st, res = post_exact("/v1/catalog/_aggregate", {
        "where": {"search_tags": {"in": [tag]}}, "group_by": ["specifications.rating.stars"],
        "aggregates": {"n": {"count": "*"}}})
    assert st == 200, res
    stars = {}
    for p in items:
        k = p["specifications"]["rating"]["stars"]
        stars[k] = stars.get(k, 0) + 1
    assert res["items"] == [{"specifications.rating.stars": k, "n": stars[k]} for k in sorted(stars)]
    # paths are checked like filter paths
    for bad in (["category.$where"], ["category."], ["stock.x"], ["nope.x"]):
        st, res = post_exact("/v1/catalog/_aggregate", {"group_by": bad, "aggregates": {"n": {"count": "*"}}})
        assert st == 400, (bad, res)
    # group_by a plain field; groups sorted, NULLs last
    st, res = post_exact("/v1/catalog/_aggregate", {
        "where": {"search_tags": {"in": [tag]}}, "group_by": ["name"],
        "aggregates": {"n": {"count": "*"}, "avg_price": {"avg": "price"}, "top": {"max": "stock"}}})
    assert st == 200, res
    groups = {}
    for p in items:
        groups.setdefault(p["name"], []).append(p)
    want = []
    for name in sorted(groups):
        ps = [price(p) for p in groups[name] if "price" in p]
        avg = (sum(ps) / len(ps)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP) if ps else None
        want.append({"name": name, "n": len(groups[name]), "avg_price": avg,
                     "top": max(p["stock"] for p in groups[name])})
    assert res["items"] == want
    # limit cuts the sorted groups; group by a nullable field puts NULL last
    st, res = post_exact("/v1/catalog/_aggregate", {
        "where": {"search_tags": {"in": [tag]}, "stock": {"lt": 3}}, "group_by": ["price"],
        "aggregates": {"n": {"count": "*"}}, "limit": 1000})
    assert st == 200
    mine = [p for p in items if p["stock"] < 3]
    keys = sorted({price(p) for p in mine if "price" in p}) + ([None] if any("price" not in p for p in mine) else [])
    assert [r["price"] for r in res["items"]] == keys
    assert sum(r["n"] for r in res["items"]) == len(mine)
    # nothing matches: one row, count 0, the others null
    st, res = post_exact("/v1/catalog/_aggregate", {
        "where": {"sku": "none-" + tag},
        "aggregates": {"n": {"count": "*"}, "s": {"sum": "price"}, "a": {"avg": "price"}, "m": {"min": "name"}}})
    assert st == 200 and res["items"] == [{"n": 0, "s": None, "a": None, "m": None}]


QUERY_INJECTIONS = [
    {"$where": "sleep(1000)"},
    {"$expr": {"$eq": [1, 1]}},
    {"name": {"$ne": None}},
    {"name": {"$gt": ""}},
    {"name": {"$regex": ".*"}},
    {"category.$where": "1"},
    {"category.id": {"$ne": None}},
    {"specifications.$function": {"body": "x"}},
    {"name": {"eq": {"$ne": None}}},
    {"name": {"in": [{"$gt": ""}]}},
    {"category": {"eq": {"$where": "1"}}},
    {"category": {"eq": {"id": {"$ne": None}}}},
    {"search_tags": {"in": [{"$ne": None}]}},
    {"or": [{"$where": "1"}]},
    {"price": {"gt": {"$numberDecimal": "1"}}},
    {"specifications.a": {"eq": {"$gt": 1}}},
    {"category.\u0000x": "1"},
]


@pytest.mark.parametrize("where", QUERY_INJECTIONS)
def test_query_injection_corpus(gateway, where):
    for path, body in (("/v1/catalog/_query", {"where": where}),
                       ("/v1/catalog/_aggregate", {"where": where, "aggregates": {"n": {"count": "*"}}})):
        st, res = post_exact(path, body)
        assert st == 400, (where, res)
        assert res["error"]["code"] == "bad_request"


def test_query_operator_text_is_plain_data(client, products):
    k = sku()
    odd = {"name": "{\"$ne\": null}", "search_tags": ["$where", "$gt"],
           "specifications": {"q": "$where"}}
    assert client.request("PUT", "/v1/catalog/" + k, odd)[0] == 201
    try:
        for where in ({"name": "{\"$ne\": null}"}, {"search_tags": {"in": ["$where"]}},
                      {"specifications.q": "$where"}, {"name": {"prefix": "{\"$"}}):
            st, res = query({"where": dict(where, sku=k)})
            assert st == 200 and [i["sku"] for i in res["items"]] == [k], where
        # an operator-looking string never matches what it would select as an operator
        st, res = query({"where": {"name": "$ne", "sku": {"in": [k]}}})
        assert st == 200 and res["items"] == []
        st, res = query({"where": {"specifications.q": {"ne": "$where"}, "sku": k}})
        assert st == 200 and res["items"] == []
    finally:
        products.delete_one({"sku": k})


def test_query_errors_are_400(gateway):
    for body in ({"where": {"nope": 1}}, {"where": {"stock": {"prefix": "1"}}},
                 {"where": {"name.x": "a"}}, {"order_by": ["category"]}, {"fields": ["nope"]},
                 {"where": {"search_tags": {"in": [["a"]]}}}, {"cursor": "garbage"}):
        st, res = query(body)
        assert st == 400, (body, res)
    st, res = post_exact("/v1/catalog/_aggregate", {"aggregates": {"x": {"sum": "name"}}})
    assert st == 400
