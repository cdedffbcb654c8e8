"""The injection suite: SQL and NoSQL injection text in values, field names,
order_by, where, cursors and ids, for every domain.  Each request is answered
400 (or 404 for an id that names nothing) or its text is stored verbatim —
and afterwards every store's schema and data are exactly as expected."""
import json
import urllib.parse
import uuid

import psycopg2
import pymongo
import pymysql
import pytest
import redis as redislib

from conftest import MONGO_DB, MYSQL_SHARDS, PG_DB, REDIS_PORT, Client, redis_db

EVIL = [
    "'; DROP TABLE users_test; --",
    "\" OR \"1\"=\"1",
    "1; DELETE FROM orders_test WHERE 1=1; --",
    "`orders_test`",
    "\\'; SELECT SLEEP(5); -- \\",
    "$where",
    "{\"$gt\": \"\"}",
    "'); db.products.drop(); ('",
    "*\r\nFLUSHALL\r\n",
    "EVAL \"redis.call('flushall')\" 0",
    "%' OR 1=1 --",
    "ü\u2028\u0001\u007f",
]
FIELD_EVIL = ["email'; DROP TABLE users_test; --", "$where", "a.$gt", "id`", "x\" OR 1=1"]

# domain → (an item body with {v} where the evil text goes, the field it lands in,
#           the shard key query string or "")
DOMAINS = {
    "users": ({"email": "{u}@example.com", "last_name": "{v}"}, "last_name", ""),
    "orders": ({"customer_id": "inj-cust", "status": "PENDING", "payment_method": "{v}"},
               "payment_method", "?customer_id=inj-cust"),
    "catalog": ({"name": "{v}", "stock": 1}, "name", ""),
    "sessions": ({"user_id": "{v}"}, "user_id", ""),
}
SORTABLE_DOMAINS = ["users", "orders", "catalog"]


def fill(template, v):
    u = uuid.uuid4().hex[:10]
    return {k: (x.replace("{v}", v).replace("{u}", u) if isinstance(x, str) else x)
            for k, x in template.items()}


def snapshot():
    """Every store's schema and a fingerprint of its data."""
    out = {}
    pg = psycopg2.connect(host="127.0.0.1", port=55432, user="postgres", dbname=PG_DB)
    with pg.cursor() as cur:
        cur.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public' ORDER BY 1, 2")
        out["pg_schema"] = cur.fetchall()
    pg.close()
    for port, db in (MYSQL_SHARDS["orders-%d" % i] for i in range(4)):
        conn = pymysql.connect(host="127.0.0.1", port=port, user="root", password="", database=db)
        with conn.cursor() as cur:
            cur.execute("SELECT table_name, column_name, column_type FROM information_schema.columns "
                        "WHERE table_schema = %s ORDER BY 1, 2", (db,))
            out["my_schema_" + db] = cur.fetchall()
        conn.close()
    mc = pymongo.MongoClient("mongodb://127.0.0.1:57017/?serverSelectionTimeoutMS=3000")
    out["mongo_collections"] = sorted(mc[MONGO_DB].list_collection_names())
    mc.close()
    return out


@pytest.fixture(scope="module")
def before(gateway):
    c = Client()
    # every domain's table exists before the snapshot (auto_migrate on first use)
    for d, (tpl, _, q) in DOMAINS.items():
        st, _, _ = c.request("GET", "/v1/%s/none%s" % (d, q))
        assert st == 404
    c.close()
    return snapshot()


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_values_are_stored_verbatim(client, before, domain):
    tpl, field, q = DOMAINS[domain]
    for v in EVIL:
        body = fill(tpl, v)
        st, item, _ = client.request("POST", "/v1/%s%s" % (domain, q), body) if domain != "catalog" else \
            client.request("PUT", "/v1/catalog/inj-%s%s" % (uuid.uuid4().hex[:8], q), body)
        assert st in (200, 201), (v, item)
        key = {"users": "id", "orders": "order_id", "catalog": "sku", "sessions": "session_id"}[domain]
        path = "/v1/%s/%s%s" % (domain, urllib.parse.quote(item[key], safe=""), q)
        st, got, _ = client.request("GET", path)
        assert st == 200 and got[field] == v, (v, got)
        st, _, _ = client.request("DELETE", path)
        assert st in (200, 204)


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_evil_ids_are_plain_keys(client, before, domain):
    _, _, q = DOMAINS[domain]
    for v in EVIL:
        if "\r" in v or "\n" in v or "\u2028" in v or "\u0001" in v:
            continue  # not a key the schema allows in a path; tested as values
        st, body, _ = client.request("GET", "/v1/%s/%s%s" % (domain, urllib.parse.quote(v, safe=""), q))
        assert st in (400, 404), (v, body)
        assert body["error"]["code"] in ("not_found", "bad_request"), body


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_evil_field_names_are_400(client, before, domain):
    tpl, _, q = DOMAINS[domain]
    for f in FIELD_EVIL:
        body = fill(tpl, "x")
        body[f] = "x"
        method, path = ("PUT", "/v1/catalog/inj-f%s" % q) if domain == "catalog" else \
            ("POST", "/v1/%s%s" % (domain, q))
        st, doc, _ = client.request(method, path, body)
        assert st == 400, (f, doc)
        assert doc["error"]["code"] == "bad_request"


@pytest.mark.parametrize("domain", SORTABLE_DOMAINS)
def test_evil_where_order_by_and_cursors_are_400(client, before, domain):
    qpath = "/v1/%s/_query" % domain
    for f in FIELD_EVIL + EVIL:
        for body in ({"where": {f: "x"}}, {"order_by": [f]}, {"order_by": ["-" + f]},
                     {"fields": [f]}, {"where": {"or": [{f: {"eq": 1}}]}}):
            st, doc, _ = client.request("POST", qpath, body)
            assert st == 400, (body, doc)
        st, doc, _ = client.request("POST", "/v1/%s/_aggregate" % domain,
                                    {"group_by": [f], "aggregates": {"n": {"count": "*"}}})
        assert st == 400, (f, doc)
    for v in EVIL + ["A" * 300 + "." + "B" * 43]:
        st, doc, _ = client.request("POST", qpath, {"cursor": v, "limit": 1})
        assert st == 400 and "cursor" in doc["error"]["message"], (v, doc)


def test_operator_objects_in_values_are_refused_or_plain(client, before):
    # an operator object where a string belongs is a type error, not a filter
    for domain in SORTABLE_DOMAINS:
        field = DOMAINS[domain][1]
        for evil in ({"$gt": ""}, {"$where": "1"}, {"$ne": None}):
            st, doc, _ = client.request("POST", "/v1/%s/_query" % domain, {"where": {field: evil}})
            assert st == 400, (domain, evil, doc)


def test_stores_intact_afterwards(client, before):
    after = snapshot()
    assert after == before
    r = redislib.Redis(host="127.0.0.1", port=REDIS_PORT, db=redis_db())
    assert r.ping()  # no FLUSHALL/EVAL ran: the suite's own keys survive
    r.set("inj-canary", "1")
    st, _, _ = client.request("POST", "/v1/sessions", {"user_id": "\r\nFLUSHALL\r\n"})
    assert st == 201
    assert r.get("inj-canary") == b"1"
    r.delete("inj-canary")
    r.close()
