"""Orders on the real MariaDB servers of the local stack (4 shards, table
orders_test, tests/integration/orders.shardmap.yaml), through HTTP: the MySQL
adapter (adapters/mysql/ad_mysql.c) — CRUD, versions, exact decimals, JSON
documents, auto_migrate on every shard, injection strings, a server that is
down (through this run's Toxiproxy proxy: the shared server keeps running).

Single-item requests name the shard key (?customer_id=…); where a test needs
to know the shard, it asks GET /admin/route/orders on the admin listener."""
import decimal
import http.client
import json
import shutil
import tempfile
import time
import urllib.parse
import uuid

import pymysql
import pytest

from conftest import (ADMIN_PORT, CONFIG, MYSQL_SHARDS, PORT, Client, Gateway, assert_error,
                      proxied_shardmap)

TABLE = "orders_test"
SHARDS = [(name,) + MYSQL_SHARDS[name] for name in ("orders-0", "orders-1", "orders-2", "orders-3")]
SERVER_OF = {"orders-0": "mysql-a", "orders-1": "mysql-a", "orders-2": "mysql-b", "orders-3": "mysql-b"}
# the gateway of the server-down test: mysql-b's shards through this run's proxy
DOWN_PORT, DOWN_ADMIN = PORT + 75, ADMIN_PORT + 75


def my(port, db):
    return pymysql.connect(host="127.0.0.1", port=port, user="root", password="", database=db,
                           charset="utf8mb4", autocommit=True)


def shard_db(name):
    for n, port, db in SHARDS:
        if n == name:
            return port, db
    raise KeyError(name)


def route(customer, admin_port=ADMIN_PORT):
    admin = Client(port=admin_port)
    try:
        st, doc, _ = admin.request("GET", "/admin/route/orders?customer_id=" + urllib.parse.quote(customer))
    finally:
        admin.close()
    assert st == 200, doc
    return doc


def customer_on(shards, admin_port=ADMIN_PORT):
    """A fresh customer id whose orders live on one of `shards`."""
    for _ in range(1000):
        cust = "cust-" + uuid.uuid4().hex[:12]
        if route(cust, admin_port)["shard"] in shards:
            return cust
    raise AssertionError("no customer routes to %s" % (shards,))


def path(order_id, customer):
    return "/v1/orders/%s?customer_id=%s" % (order_id, urllib.parse.quote(customer))


def raw_request(client, method, url, body=None, headers=None):
    """The response text as sent (to check the digits of decimals)."""
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
    try:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        if body is not None and not isinstance(body, str):
            body = json.dumps(body)
        conn.request(method, url, body=body.encode() if body is not None else None, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def new_order(customer, **fields):
    body = {"customer_id": customer, "status": "PENDING", "total_amount": "123.40",
            "items": [{"product_id": "P-1", "quantity": 2, "unit_price": 9.90},
                      {"product_id": "P-2", "quantity": 1, "unit_price": 103.60}],
            "shipping_address": {"name": "Ada", "city": "Zürich", "zip": "8000", "lines": ["a", "b"]},
            "payment_method": "card"}
    body.update(fields)
    return body


def create(client, customer, **fields):
    st, item, _ = client.request("POST", "/v1/orders", new_order(customer, **fields))
    assert st == 201, item
    return item


def test_a_key_is_unique_across_shards(client):
    """A PUT / a create naming its key is checked on the other shards: the
    same order_id under another customer (another shard) is a 409 naming the
    shard that has it, never a second order."""
    cust_a = customer_on({"orders-0"})
    cust_b = customer_on({"orders-3"})
    oid = "uniq-" + uuid.uuid4().hex[:12]
    item = create(client, cust_a, order_id=oid)
    assert item["order_id"] == oid
    for method, url, body in (
            ("PUT", "/v1/orders/" + oid, new_order(cust_b)),
            ("PUT", path(oid, cust_b), new_order(cust_b)),
            ("POST", "/v1/orders", new_order(cust_b, order_id=oid))):
        st, doc, resp = client.request(method, url, body)
        assert st == 409, (method, url, doc)
        err = assert_error(doc, "conflict", resp=resp)
        assert err["field"] == "order_id", err
        assert "orders-0" in err["message"] and cust_a in err["message"], err
    # another customer on the same shard: the item's customer_id cannot change either
    cust_a2 = customer_on({"orders-0"})
    st, doc, resp = client.request("PUT", "/v1/orders/" + oid, new_order(cust_a2))
    assert st == 409, doc
    assert cust_a in assert_error(doc, "conflict", resp=resp)["message"]
    # the same customer: an ordinary replace on its own shard
    st, doc, resp = client.request("PUT", "/v1/orders/" + oid, new_order(cust_a, status="SHIPPED"))
    assert st == 200 and doc["status"] == "SHIPPED" and doc["version"] == 2, doc
    assert resp.getheader("X-Shards-Queried") == "4"  # the key was looked up everywhere
    # a POST of an existing key on its own shard: 409 from the shard itself
    st, doc, resp = client.request("POST", "/v1/orders", new_order(cust_a, order_id=oid))
    assert st == 409
    assert_error(doc, "conflict", resp=resp)
    # one order, found once
    st, doc, _ = client.request("POST", "/v1/orders/_query", {"where": {"order_id": oid}})
    assert st == 200 and [i["customer_id"] for i in doc["items"]] == [cust_a], doc
    st, doc, _ = client.request("GET", "/v1/orders/" + oid)
    assert st == 200 and doc["customer_id"] == cust_a, doc
    # deleted, the key is free for another customer
    st, _, _ = client.request("DELETE", path(oid, cust_a))
    assert st == 204
    st, doc, _ = client.request("PUT", "/v1/orders/" + oid, new_order(cust_b))
    assert st == 201 and doc["customer_id"] == cust_b, doc
    st, _, _ = client.request("DELETE", path(oid, cust_b))
    assert st == 204


def wait_status(client, method, url, want, timeout=15.0, body=None):
    deadline = time.time() + timeout
    while True:
        st, doc, _ = client.request(method, url, body)
        if st == want:
            return doc
        assert time.time() < deadline, (st, doc)
        time.sleep(0.1)


def test_crud_generated_id_created_at_versions(client):
    cust = "cust-" + uuid.uuid4().hex[:12]
    st, item, resp = client.request("POST", "/v1/orders", new_order(cust))
    assert st == 201, item
    assert len(item["order_id"]) == 32 and item["version"] == 1
    assert item["customer_id"] == cust and item["status"] == "PENDING"
    assert item["created_at"].endswith("Z") and "T" in item["created_at"]
    assert resp.getheader("ETag") == '"1"'
    oid = item["order_id"]
    st, got, resp = client.request("GET", path(oid, cust))
    assert st == 200 and got == item and resp.getheader("ETag") == '"1"'
    # set + exact decimal increment
    st, got, _ = client.request("PATCH", path(oid, cust),
                                {"set": {"status": "PROCESSING"}, "inc": {"total_amount": "0.01"}})
    assert st == 200, got
    assert got["version"] == 2 and got["status"] == "PROCESSING"
    st, text = raw_request(client, "GET", path(oid, cust))
    assert st == 200 and '"total_amount":123.41' in text
    st, got, _ = client.request("PATCH", path(oid, cust), {"inc": {"total_amount": "-100.02"}, "unset": ["payment_method"]})
    assert st == 200 and got["version"] == 3 and "payment_method" not in got
    assert str(got["total_amount"]) == "23.39"
    # If-Match
    for method, body in (("PATCH", {"set": {"status": "SHIPPED"}}),
                         ("PUT", new_order(cust)), ("DELETE", None)):
        st, err, _ = client.request(method, path(oid, cust), body, headers={"If-Match": '"9"'})
        assert st == 412, (method, err)
        assert "version 3" in assert_error(err, "precondition_failed")["message"]
    st, got, _ = client.request("PATCH", path(oid, cust), {"set": {"status": "SHIPPED"}}, headers={"If-Match": '"3"'})
    assert st == 200 and got["version"] == 4 and got["status"] == "SHIPPED"
    st, got, _ = client.request("PUT", path(oid, cust), new_order(cust, status="DELIVERED"), headers={"If-Match": '"4"'})
    assert st == 200 and got["version"] == 5 and got["status"] == "DELIVERED"
    assert got["created_at"] == item["created_at"]  # kept by a replace
    st, _, resp = client.request("DELETE", path(oid, cust), headers={"If-Match": '"5"'})
    assert st == 204 and resp.getheader("ETag") == '"5"'
    st, body, _ = client.request("GET", path(oid, cust))
    assert st == 404
    assert_error(body, "not_found")
    st, body, _ = client.request("DELETE", path(oid, cust))
    assert st == 404
    st, body, _ = client.request("PATCH", path(oid, cust), {"set": {"status": "SHIPPED"}}, headers={"If-Match": '"5"'})
    assert st == 404


def test_put_upsert_and_duplicate_insert(client):
    cust = "cust-" + uuid.uuid4().hex[:12]
    oid = "ord-" + uuid.uuid4().hex
    st, item, _ = client.request("PUT", path(oid, cust), new_order(cust, total_amount=5))
    assert st == 201 and item["order_id"] == oid and item["version"] == 1, item
    st, again, _ = client.request("PUT", path(oid, cust), new_order(cust, total_amount="6.5"))
    assert st == 200 and again["version"] == 2 and again["created_at"] == item["created_at"]
    st, text = raw_request(client, "GET", path(oid, cust))
    assert '"total_amount":6.50' in text
    st, body, _ = client.request("POST", "/v1/orders", new_order(cust, order_id=oid))
    assert st == 409
    assert assert_error(body, "conflict")["field"] == "order_id"
    # the failed insert's transaction was rolled back: the connection works on
    st, got, _ = client.request("GET", path(oid, cust))
    assert st == 200 and got["version"] == 2


def test_documents_are_json_and_decimals_exact(client):
    cust = "cust-" + uuid.uuid4().hex[:12]
    item = create(client, cust, total_amount="123.40")
    assert isinstance(item["items"], list) and isinstance(item["shipping_address"], dict)
    assert item["items"][0] == {"product_id": "P-1", "quantity": 2, "unit_price": 9.9}
    assert item["shipping_address"]["lines"] == ["a", "b"]
    st, text = raw_request(client, "GET", path(item["order_id"], cust))
    assert st == 200
    assert '"total_amount":123.40' in text  # same digits as sent
    doc = json.loads(text, parse_float=decimal.Decimal)
    assert doc["total_amount"] == decimal.Decimal("123.40")
    # numbers inside documents keep their text too (MariaDB stores JSON as text;
    # MySQL 8's binary JSON would normalise them to 9.9)
    st, text = raw_request(client, "POST", "/v1/orders",
                           '{"customer_id":"%s","items":[{"product_id":"P","unit_price":9.90}]}' % cust)
    assert st == 201 and '"unit_price":9.90' in text, text
    big = create(client, cust, total_amount="9999999999999999.99")
    st, text = raw_request(client, "GET", path(big["order_id"], cust))
    assert '"total_amount":9999999999999999.99' in text
    st, body, _ = client.request("PATCH", path(big["order_id"], cust), {"inc": {"total_amount": "0.01"}})
    assert st == 400, body  # beyond DECIMAL(18,2): refused, never rounded
    # a JSON null document is kept as null, an absent field stays absent
    st, item, _ = client.request("POST", "/v1/orders", {"customer_id": cust, "items": None})
    assert st == 201 and item["items"] is None and "shipping_address" not in item


def test_timestamps_utc(client):
    cust = "cust-" + uuid.uuid4().hex[:12]
    item = create(client, cust, created_at="2026-01-31T12:00:00.5+02:00")
    assert item["created_at"] == "2026-01-31T10:00:00.500000Z"
    item = create(client, cust, created_at="2026-01-31T12:00:00Z")
    assert item["created_at"] == "2026-01-31T12:00:00.000000Z"


def test_customer_orders_newest_first(client):
    cust = "cust-" + uuid.uuid4().hex[:12]
    ids = [create(client, cust, created_at="2026-02-%02dT10:00:00Z" % (d + 1))["order_id"] for d in range(5)]
    st, res, _ = client.request("POST", "/v1/orders/_query",
                                {"where": {"customer_id": cust}, "order_by": ["-created_at"], "limit": 3})
    assert st == 200, res
    assert [x["order_id"] for x in res["items"]] == ids[::-1][:3]
    assert res["cursor"]
    st, res2, _ = client.request("POST", "/v1/orders/_query",
                                 {"where": {"customer_id": cust}, "order_by": ["-created_at"], "limit": 3,
                                  "cursor": res["cursor"]})
    assert st == 200 and [x["order_id"] for x in res2["items"]] == ids[::-1][3:]
    assert res2["cursor"] is None


def test_auto_migrate_created_the_table_with_slot_on_every_shard(client):
    create(client, "cust-" + uuid.uuid4().hex[:12])  # first use starts it everywhere
    for name, port, db in SHARDS:
        deadline = time.time() + 10
        while True:
            conn = my(port, db)
            with conn.cursor() as cur:
                cur.execute("SELECT column_name, data_type FROM information_schema.columns "
                            "WHERE table_schema = %s AND table_name = %s", (db, TABLE))
                cols = dict(cur.fetchall())
                cur.execute("SELECT index_name FROM information_schema.statistics WHERE table_schema = %s "
                            "AND table_name = %s AND column_name = '_slot' AND seq_in_index = 1", (db, TABLE))
                slot_idx = cur.fetchall()
            conn.close()
            if cols or time.time() > deadline:
                break
            time.sleep(0.1)
        assert cols, "no table %s on shard %s" % (TABLE, name)
        assert cols["_slot"] == "int" and cols["total_amount"] == "decimal", (name, cols)
        assert cols["created_at"] == "datetime" and cols["version"] == "bigint", (name, cols)
        assert cols["items"] in ("json", "longtext"), (name, cols)
        assert slot_idx, "no index on _slot on shard %s" % name


def test_row_on_the_routed_shard_with_its_slot(client):
    cust = "cust-" + uuid.uuid4().hex[:12]
    item = create(client, cust)
    r = route(cust)
    port, db = shard_db(r["shard"])
    conn = my(port, db)
    with conn.cursor() as cur:
        cur.execute("SELECT customer_id, _slot, total_amount, version FROM " + TABLE + " WHERE order_id = %s",
                    (item["order_id"],))
        row = cur.fetchone()
    conn.close()
    assert row == (cust, r["slot"], decimal.Decimal("123.40"), 1)


INJECTION = [
    "O'Brien", '"double"', "'; DROP TABLE orders_test; --", "Robert'); DROP TABLE orders_test;--",
    "back\\slash\\\\", "\\'", "%_%\\%", "tab\tnew\nline\r", "ünïcödé ✓ 𝄞 中文 🙂", "\u202e\u200b",
    "".join(chr(c) for c in range(1, 32)) + "\x7f",
    "$1 $2 ? ?? :name `x` ``", "x" * 30000,
]


def test_injection_strings_stored_verbatim(client):
    cust = "cust-" + uuid.uuid4().hex[:12]
    ids = []
    for i, s in enumerate(INJECTION):
        short = s if len(s) < 1000 else s[:100]
        st, item, _ = client.request("POST", "/v1/orders", {"customer_id": cust, "payment_method": s,
                                                            "shipping_address": {"k": short, short[:50]: [short]}})
        assert st == 201, (i, item)
        ids.append(item["order_id"])
        st, got, _ = client.request("GET", path(item["order_id"], cust))
        assert st == 200 and got["payment_method"] == s, i
        assert got["shipping_address"] == {"k": short, short[:50]: [short]}, i
        st, res, _ = client.request("POST", "/v1/orders/_query",
                                    {"where": {"customer_id": cust, "payment_method": s}})
        assert st == 200 and [x["order_id"] for x in res["items"]] == [item["order_id"]], i
        st, res, _ = client.request("POST", "/v1/orders/_query",
                                    {"where": {"customer_id": cust, "payment_method": {"prefix": short}}})
        assert st == 200 and item["order_id"] in [x["order_id"] for x in res["items"]], i
    port, db = shard_db(route(cust)["shard"])
    conn = my(port, db)
    with conn.cursor() as cur:
        cur.execute("SELECT order_id, payment_method, JSON_UNQUOTE(JSON_EXTRACT(shipping_address, '$.k')) FROM "
                    + TABLE + " WHERE customer_id = %s", (cust,))
        rows = {r[0]: (r[1], r[2]) for r in cur.fetchall()}
        cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
                    (db, TABLE))
        assert cur.fetchone()[0] == 1
    conn.close()
    for oid, s in zip(ids, INJECTION):
        assert rows[oid] == (s, s if len(s) < 1000 else s[:100])


@pytest.fixture
def mysql_b_proxied(toxics):
    """A private gateway whose shards on mysql-b (orders-2, orders-3) reach it
    through this run's proxy (toxics: enabled, clean before and after), so
    that the test faults the proxy, never the server other runs share;
    (client, proxy)."""
    tmp = tempfile.mkdtemp(prefix="polygate-mysql-down-")
    with open(CONFIG) as f:
        text = f.read()
    text = text.replace("18080", str(DOWN_PORT)).replace("19090", str(DOWN_ADMIN))
    text = text.replace("${POLYGATE_TEST_DIR}/orders.shardmap.yaml",
                        proxied_shardmap(tmp, via=("orders-2", "orders-3")))
    g = Gateway(text, port=DOWN_PORT)
    c = Client(DOWN_PORT)
    yield c, toxics["mysql-b"]
    c.close()
    rc = g.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    assert rc == 0, "polygate did not exit cleanly on SIGTERM (rc=%s)" % rc


def test_shard_server_down_is_503_naming_the_shard_then_recovers(mysql_b_proxied):
    """mysql-b unreachable (its proxy disabled: open connections closed, new
    ones refused, as when the server stops) is a 503 naming its shard for
    reads and writes while the shards of mysql-a serve; once it is reachable
    again every worker serves it without a restart."""
    client, proxy = mysql_b_proxied
    cust_b = customer_on({"orders-2", "orders-3"}, DOWN_ADMIN)  # on mysql-b
    cust_a = customer_on({"orders-0", "orders-1"}, DOWN_ADMIN)  # on mysql-a
    shard_b = route(cust_b, DOWN_ADMIN)["shard"]
    item_b = create(client, cust_b)
    item_a = create(client, cust_a)
    proxy.down()
    try:
        body = wait_status(client, "GET", path(item_b["order_id"], cust_b), 503)
        err = assert_error(body, "backend_unavailable")
        assert err["shard"] == shard_b and shard_b in err["message"], err
        for _ in range(10):  # writes too, on every worker
            st, body, _ = client.request("POST", "/v1/orders", new_order(cust_b))
            assert st == 503 and body["error"]["shard"] == shard_b, body
        # the shards on the other server still serve
        st, got, _ = client.request("GET", path(item_a["order_id"], cust_a))
        assert st == 200 and got["order_id"] == item_a["order_id"]
        create(client, cust_a)
        # …but a key the client chose cannot be proven unused: 503 naming a
        # shard of the server that is down
        st, body, resp = client.request("PUT", "/v1/orders/own-" + uuid.uuid4().hex[:8],
                                        new_order(cust_a))
        assert st == 503, body
        err = assert_error(body, "backend_unavailable", resp=resp)
        assert err["shard"] in ("orders-2", "orders-3") and "cannot check" in err["message"], err
    finally:
        proxy.up()
    got = wait_status(client, "GET", path(item_b["order_id"], cust_b), 200)
    assert got["order_id"] == item_b["order_id"]
    for _ in range(10):  # every worker's pool is back, without a restart
        c = Client(DOWN_PORT)
        try:
            st, doc, _ = c.request("POST", "/v1/orders", new_order(cust_b))
            if st == 503:  # a worker still in its reconnect backoff
                doc = wait_status(c, "POST", "/v1/orders", 201, body=new_order(cust_b))
            else:
                assert st == 201, doc
        finally:
            c.close()
