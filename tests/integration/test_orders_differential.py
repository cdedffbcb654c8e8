"""Differential test of sharded orders on the DEFAULT orders schema: the
`orders` domain exactly as config/polygate.yaml declares it (JSON `items`
and `shipping_address`, an exact decimal, an enum, NULLs, timestamps), on a
private gateway over the 4 MariaDB shards (table orders_dflt).  3,000
orders of 300 customers (fixed seed) are written through polygate, then a
few hundred random queries, pages and aggregates — with dotted paths into
shipping_address and through the items array — are asked of polygate and
of a reference computed here in Python from the rows written; the answers
must be identical, whole rows compared (every field, the documents
included), order included (order_by is total: polygate adds the key as the
last tiebreak).

The reference is written from the semantics in docs/protocol.md: `ne`/`nin`
keep NULLs, comparisons drop them, NULLs sort last ascending and first
descending; a dotted path matches when some value at it matches (typed), on
MariaDB walking the array field's elements; ne/nin/null/exists false are the
negations."""
import datetime
import decimal
import http.client
import json
import os
import random
import shutil
import tempfile
import time
import urllib.parse

import pymysql
import pytest
import yaml

from conftest import ADMIN_PORT, MYSQL_SHARDS, PORT, ROOT, Gateway, proxied_shardmap, wait_port

SEED = 20261207
N_CUSTOMERS = 300
N_ORDERS = 3000
TABLE = "orders_dflt"
GW_PORT, GW_ADMIN = PORT + 22, ADMIN_PORT + 22
SHARDS = {name: MYSQL_SHARDS[name] for name in ("orders-0", "orders-1", "orders-2", "orders-3")}
STATUSES = ["PENDING", "PROCESSING", "SHIPPED", "DELIVERED", "CANCELLED"]
METHODS = ["card", "paypal", "invoice", "Card", None]
# mixed case, non-ASCII and LIKE metacharacters: code-point order and
# literal prefixes are part of what is compared
CITIES = ["Paris", "paris", "Berlin", "M\u00fcnchen", "west_1", "west%2", "we", None]
PRODUCTS = ["SKU-%d" % i for i in range(1, 31)] + ["sku-1", "SKU_1"]
D = decimal.Decimal


def default_orders_domain():
    """The orders domain of the shipped config, on table orders_dflt."""
    with open(os.path.join(ROOT, "config", "polygate.yaml")) as f:
        dom = yaml.safe_load(f)["domains"]["orders"]
    dom = dict(dom, table=TABLE, backend="orders-mysql")
    return dom


DOMAIN = default_orders_domain()
FIELDS = list(DOMAIN["fields"])
SCALARS = [f for f in FIELDS if f not in ("items", "shipping_address")]


def my(port, db):
    return pymysql.connect(host="127.0.0.1", port=port, user="root", password="", database=db,
                           charset="utf8mb4", autocommit=True)


class Http:
    """Keep-alive JSON client that keeps decimals exact (parse_float=Decimal)."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body, default=float).encode()
        try:
            self.conn.request(method, path, body=data,
                              headers={"Content-Type": "application/json"} if data else {})
            resp = self.conn.getresponse()
            raw = resp.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()  # no silent re-send: the caller decides
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            raise
        return resp.status, json.loads(raw, parse_float=D) if raw else None

    def close(self):
        self.conn.close()


def ts_text(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_ts(s):
    s = s[:-1] if s.endswith("Z") else s
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in s else "%Y-%m-%dT%H:%M:%S"
    return datetime.datetime.strptime(s, fmt)


def generate():
    rnd = random.Random(SEED)
    amounts = [D(rnd.randint(0, 99999)) / 100 for _ in range(300)]
    prices = [D(rnd.randint(1, 5000)) / 100 for _ in range(60)] + [D(3), D("0.5")]
    base = datetime.datetime(2025, 1, 1)
    orders = []
    for i in range(N_ORDERS):
        cust = "c%04d" % (i % N_CUSTOMERS if i < N_CUSTOMERS else rnd.randrange(N_CUSTOMERS))
        o = {"order_id": "o%05d-%04x" % (i, rnd.randrange(65536)), "customer_id": cust,
             "status": rnd.choice(STATUSES),
             "total_amount": rnd.choice(amounts + [None]),
             # milliseconds (what the gateway keeps), often whole seconds: ties
             "created_at": base + datetime.timedelta(
                 seconds=rnd.randrange(86400 * 60),
                 milliseconds=rnd.choice([0, 0, 0, rnd.randrange(1000)]))}
        method = rnd.choice(METHODS)
        if method is not None:
            o["payment_method"] = method
        roll = rnd.random()
        if roll < 0.8:
            items = []
            for _ in range(rnd.choice([0, 1, 1, 2, 3, 4])):
                it = {"product_id": rnd.choice(PRODUCTS), "quantity": rnd.randint(1, 12)}
                if rnd.random() < 0.9:
                    it["unit_price"] = rnd.choice(prices)
                if rnd.random() < 0.1:
                    it["gift"] = rnd.random() < 0.5
                items.append(it)
            o["items"] = items
        elif roll < 0.9:
            o["items"] = None  # an explicit null: stored as NULL, like absent
        roll = rnd.random()
        if roll < 0.85:
            addr = {"city": rnd.choice(CITIES)}
            zroll = rnd.random()
            if zroll < 0.6:
                addr["zip"] = rnd.randint(1000, 1020)
            elif zroll < 0.8:
                addr["zip"] = str(rnd.randint(1000, 1020))  # a string: never equal to a number
            if rnd.random() < 0.3:
                addr["express"] = rnd.random() < 0.5
            o["shipping_address"] = addr
        orders.append(o)
    return orders


def wire(o):
    """An order as the JSON body sent to polygate."""
    body = dict(o)
    body["created_at"] = ts_text(o["created_at"])
    return body


def norm(item):
    """A row (polygate's answer or the reference) in comparable form: every
    field of the schema, absent = None; decimals exact, timestamps parsed."""
    out = {}
    for f in FIELDS:
        v = item.get(f)
        if f == "created_at" and isinstance(v, str):
            v = parse_ts(v)
        elif f == "total_amount" and v is not None:
            v = D(v)
        out[f] = v
    return out


# ---- the reference: the filter language in Python -------------------------------------------

def is_num(v):
    return isinstance(v, (int, float, D)) and not isinstance(v, bool)


def same_kind(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if is_num(a) or is_num(b):
        return is_num(a) and is_num(b)
    return isinstance(a, str) and isinstance(b, str)


def scalar_of(field, v):
    """A filter value in the stored value's Python type."""
    if v is None:
        return None
    if field == "created_at":
        return parse_ts(v)
    if field == "total_amount":
        return D(str(v))
    return v


def cmp(op, a, b):
    if is_num(a):
        a, b = D(str(a)), D(str(b))
    return {"eq": a == b, "gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]


def path_values(o, field, segs):
    top = o.get(field)
    if top is None:
        return []
    found = []
    for el in (top if isinstance(top, list) else [top]):  # MariaDB: the array field's elements
        v = el
        for seg in segs:
            v = v.get(seg, None) if isinstance(v, dict) else None
            if v is None:
                break
        if v is not None:
            found.append(v)
    return found


def leaf(o, name, op, v):
    field, *segs = name.split(".")
    if segs:
        vals = path_values(o, field, segs)
        if op == "exists":
            return bool(vals) == v
        if op in ("eq", "ne") and v is None:
            return (not vals) == (op == "eq")
        if op == "ne":
            return not leaf(o, name, "eq", v)
        if op == "nin":
            return not leaf(o, name, "in", v)
        if op == "in":
            return any(same_kind(x, y) and cmp("eq", x, y) for x in vals for y in v)
        if op == "prefix":
            return any(isinstance(x, str) and x.startswith(v) for x in vals)
        return any(same_kind(x, v) and cmp(op, x, v) for x in vals)
    x = o.get(field)
    if op == "exists":
        return (x is not None) == v
    if op in ("eq", "ne"):
        eq = x is None if v is None else (x is not None and x == scalar_of(field, v))
        return eq if op == "eq" else not eq
    if op == "in":
        return x is not None and x in [scalar_of(field, y) for y in v]
    if op == "nin":
        return x is None or x not in [scalar_of(field, y) for y in v]
    if op == "prefix":
        return x is not None and x.startswith(v)
    return x is not None and cmp(op, x, scalar_of(field, v))


def matches(o, w):
    for k, cond in w.items():
        if k == "and":
            if not all(matches(o, x) for x in cond):
                return False
        elif k == "or":
            if not any(matches(o, x) for x in cond):
                return False
        else:
            if not isinstance(cond, dict):
                cond = {"eq": cond}
            if not all(leaf(o, k, op, v) for op, v in cond.items()):
                return False
    return True


def ref_sorted(rows, order_by):
    out = sorted(rows, key=lambda r: r["order_id"])
    for spec in reversed(order_by):
        desc = spec.startswith("-")
        f = spec.lstrip("-")
        nulls = [r for r in out if r.get(f) is None]
        vals = sorted([r for r in out if r.get(f) is not None], key=lambda r: r[f], reverse=desc)
        out = nulls + vals if desc else vals + nulls
    return out


def ref_rows(data, where, order_by, limit):
    return [norm(o) for o in ref_sorted([o for o in data if matches(o, where)], order_by)[:limit]]


# ---- random queries ------------------------------------------------------------------------

PATHS = ["shipping_address.city", "shipping_address.zip", "shipping_address.express",
         "items.product_id", "items.quantity", "items.unit_price", "items.gift"]


def rand_cond(rnd, orders):
    f = rnd.choice(["customer_id", "status", "total_amount", "payment_method", "created_at",
                    "order_id"] + PATHS * 1)
    sample = rnd.sample(orders, 6)
    if "." in f:
        field, seg = f.split(".")
        present = [v for o in sample for v in path_values(o, field, [seg])]
    else:
        present = [o.get(f) for o in sample if o.get(f) is not None]

    def val(v):
        if isinstance(v, datetime.datetime):
            return ts_text(v)
        return v

    if f == "status":
        op = rnd.choice(["eq", "ne", "in", "nin", "gt", "lte"])
        vals = rnd.sample(STATUSES, rnd.randint(1, 3))
        return {f: vals[0] if op == "eq" and rnd.random() < 0.5 else
                {op: vals if op in ("in", "nin") else vals[0]}}
    ops = ["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists"]
    if f in ("customer_id", "payment_method", "order_id", "shipping_address.city",
             "items.product_id"):
        ops.append("prefix")
    op = rnd.choice(ops)
    if not present or op == "exists":
        return {f: {"exists": rnd.random() < 0.5}}
    if isinstance(present[0], bool) and op in ("gt", "gte", "lt", "lte", "prefix"):
        op = "eq"
    if op in ("in", "nin"):
        return {f: {op: [val(v) for v in present[:rnd.randint(1, len(present))]]}}
    if op == "prefix":
        s = next((v for v in present if isinstance(v, str)), None)
        if s is None:
            return {f: {"exists": True}}
        return {f: {"prefix": s[:rnd.randint(1, min(len(s), 4))]}}
    if op in ("eq", "ne") and rnd.random() < 0.15:
        return {f: {op: None}}
    return {f: {op: val(present[0])}}


def rand_where(rnd, orders):
    roll = rnd.random()
    if roll < 0.08:
        return {}
    conds = [rand_cond(rnd, orders) for _ in range(rnd.randint(1, 3))]
    if roll < 0.3:
        return {"or": conds}
    if roll < 0.4 and len(conds) > 1:
        return {"and": [conds[0], {"or": conds[1:]}]}
    w = {}
    for c in conds:
        for k, v in c.items():
            if k in w:  # one member per field in an object: nest the rest
                w.setdefault("and", []).append({k: v})
            else:
                w[k] = v
    return w


SORTABLE = ["customer_id", "status", "total_amount", "payment_method", "created_at", "order_id"]


def rand_order(rnd):
    fields = rnd.sample(SORTABLE, rnd.randint(0, 2))
    return [("-" if rnd.random() < 0.5 else "") + f for f in fields]


# ---- fixtures --------------------------------------------------------------------------------

def gateway_config(map_path):
    cfg = {
        "listen": "127.0.0.1:%d" % GW_PORT, "admin_listen": "127.0.0.1:%d" % GW_ADMIN,
        "workers": 2, "shutdown_timeout_ms": 5000, "auth": {"enabled": False},
        "limits": {"request_timeout_ms": 5000},
        "backends": {"orders-mysql": {
            "type": "mysql",
            "shard_map": map_path,
            "pool": {"min": 1, "max": 4, "connect_timeout_ms": 1000, "queue_max": 1024,
                     "backoff_min_ms": 20, "backoff_max_ms": 300}}},
        "domains": {"orders": DOMAIN},
    }
    return json.dumps(cfg)  # JSON is YAML


def drop_tables():
    for port, db in SHARDS.values():
        conn = my(port, db)
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS " + TABLE)
        conn.close()


@pytest.fixture(scope="module")
def gw(toxiproxy):
    """The module's gateway; the shards of mysql-b (orders-2, orders-3) are
    reached through this run's proxy, which the server-down test disables
    (the shared server keeps running for everyone else)."""
    drop_tables()  # the schema is the shipped config's: recreated by auto_migrate
    toxiproxy["mysql-b"].reset()
    tmp = tempfile.mkdtemp(prefix="polygate-diff-")
    g = Gateway(config_text=gateway_config(proxied_shardmap(tmp, via=("orders-2", "orders-3"))),
                port=GW_PORT)
    try:
        assert wait_port(GW_ADMIN)
        yield g
    finally:
        rc = g.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        drop_tables()
        assert rc == 0


@pytest.fixture(scope="module")
def api(gw):
    c = Http(GW_PORT)
    yield c
    c.close()


@pytest.fixture(scope="module")
def orders(api):
    data = generate()
    for i in range(0, len(data), 100):
        chunk = data[i:i + 100]
        batch = [{"op": "insert", "domain": "orders", "body": wire(o)} for o in chunk]
        st, doc = api.call("POST", "/v1/_batch", batch)
        assert st == 200, doc
        assert [r["status"] for r in doc["results"]] == [201] * len(batch), doc
        # what was stored (read back in the insert's transaction) is what was sent
        for o, r in zip(chunk, doc["results"]):
            assert norm(r["item"]) == norm(o), (o, r["item"])
            assert r["item"]["version"] == 1
    yield data


def route(cust):
    admin = Http(GW_ADMIN)
    try:
        st, doc = admin.call("GET", "/admin/route/orders?customer_id=" + urllib.parse.quote(cust))
    finally:
        admin.close()
    assert st == 200, doc
    return doc


# ---- the tests ----------------------------------------------------------------------------------

def test_default_schema_is_the_shipped_one(orders):
    """The table on every shard (made by auto_migrate) has the shipped config's columns, the
    documents as JSON columns (MariaDB: LONGTEXT with json_valid)."""
    for port, db in SHARDS.values():
        conn = my(port, db)
        with conn.cursor() as cur:
            cur.execute("SELECT COLUMN_NAME, DATA_TYPE, CHECK_CONSTRAINTS.CHECK_CLAUSE FROM "
                        "information_schema.COLUMNS LEFT JOIN information_schema.CHECK_CONSTRAINTS "
                        "ON CHECK_CONSTRAINTS.CONSTRAINT_SCHEMA = COLUMNS.TABLE_SCHEMA AND "
                        "CHECK_CONSTRAINTS.TABLE_NAME = COLUMNS.TABLE_NAME AND "
                        "CHECK_CONSTRAINTS.CONSTRAINT_NAME = COLUMNS.COLUMN_NAME "
                        "WHERE TABLE_SCHEMA = %s AND COLUMNS.TABLE_NAME = %s", (db, TABLE))
            cols = {name: (typ, chk) for name, typ, chk in cur.fetchall()}
        conn.close()
        assert set(FIELDS) <= set(cols), (db, cols)
        assert cols["total_amount"][0] == "decimal"
        for f in ("items", "shipping_address"):
            assert cols[f][0] == "longtext" and "json_valid" in (cols[f][1] or ""), (db, f, cols[f])


def test_rows_spread_over_all_shards_each_on_its_routed_shard(api, orders):
    where = {cust: route(cust) for cust in sorted({o["customer_id"] for o in orders})}
    total = 0
    for name, (port, db) in SHARDS.items():
        conn = my(port, db)
        with conn.cursor() as cur:
            cur.execute("SELECT customer_id, _slot FROM " + TABLE)
            rows = cur.fetchall()
        conn.close()
        share = len(rows) / N_ORDERS
        assert 0.15 <= share <= 0.35, (name, share)
        for cust, slot in rows:
            assert (where[cust]["shard"], where[cust]["slot"]) == (name, slot), (cust, name, slot)
        total += len(rows)
    assert total == N_ORDERS  # each order exactly once


def test_random_queries_match_the_reference(api, orders):
    rnd = random.Random(SEED + 1)
    checked = nonempty = with_paths = 0
    for i in range(220):
        where, order_by = rand_where(rnd, orders), rand_order(rnd)
        limit = rnd.choice([1, 5, 20, 100, 500])
        body = {"where": where, "order_by": order_by, "limit": limit}
        st, doc = api.call("POST", "/v1/orders/_query", body)
        assert st == 200, json.dumps([body, doc], default=str)
        got = [norm(x) for x in doc["items"]]
        want = ref_rows(orders, where, order_by, limit)
        assert got == want, (i, body)
        n = doc["shards_queried"]
        if "customer_id" not in json.dumps(where, default=str):
            assert n == 4, (body, n)
        elif not isinstance(where.get("customer_id", {}), dict):
            assert n == 1, (body, n)
        else:
            assert 1 <= n <= 4, (body, n)
        checked += 1
        nonempty += bool(want)
        with_paths += "." in json.dumps(list(where)) or any(p in json.dumps(where, default=str) for p in PATHS)
    # the queries were not all trivially empty, and many reached into documents
    assert checked == 220 and nonempty > 110 and with_paths > 60, (nonempty, with_paths)


def test_orders_containing_a_product(api, orders):
    """The access pattern the array paths exist for, on every product."""
    for p in PRODUCTS:
        st, doc = api.call("POST", "/v1/orders/_query",
                           {"where": {"items.product_id": p}, "limit": 1000, "order_by": ["order_id"]})
        assert st == 200, doc
        want = [o["order_id"] for o in sorted(orders, key=lambda o: o["order_id"])
                if any(it.get("product_id") == p for it in (o.get("items") or []))]
        assert [x["order_id"] for x in doc["items"]] == want, p


def test_pages_match_the_reference(api, orders):
    rnd = random.Random(SEED + 2)
    for i in range(40):
        where, order_by = rand_where(rnd, orders), rand_order(rnd)
        limit = rnd.choice([7, 50, 130])
        want = ref_rows(orders, where, order_by, limit * 4)
        got, cursor = [], None
        for page in range(4):
            body = {"where": where, "order_by": order_by, "limit": limit}
            if cursor:
                body["cursor"] = cursor
            st, doc = api.call("POST", "/v1/orders/_query", body)
            assert st == 200, json.dumps([body, doc], default=str)
            assert len(doc["items"]) <= limit
            got += [norm(x) for x in doc["items"]]
            cursor = doc["cursor"]
            if cursor is None:
                break
        assert got == want, (i, body, len(got), len(want))


def test_walking_every_page_returns_each_order_once(api, orders):
    seen, cursor, pages = [], None, 0
    while True:
        body = {"order_by": ["-created_at"], "limit": 331}
        if cursor:
            body["cursor"] = cursor
        st, doc = api.call("POST", "/v1/orders/_query", body)
        assert st == 200, doc
        seen += [norm(x) for x in doc["items"]]
        pages += 1
        cursor = doc["cursor"]
        if cursor is None:
            break
        assert pages <= N_ORDERS // 331 + 2
    assert seen == [norm(o) for o in ref_sorted(orders, ["-created_at"])]


def ref_aggregate(data, where, group_by, aggs):
    groups = {}
    for o in data:
        if matches(o, where):
            groups.setdefault(tuple(o.get(g) for g in group_by), []).append(o)
    out = {}
    for key, rows in groups.items():
        vals = {}
        for name, spec in aggs.items():
            (fn, f), = spec.items()
            xs = rows if f == "*" else [o[f] for o in rows if o.get(f) is not None]
            if fn == "count":
                vals[name] = len(xs)
            elif not xs:
                vals[name] = None
            elif fn == "sum":
                vals[name] = sum(xs)
            elif fn == "min":
                vals[name] = min(xs)
            elif fn == "max":
                vals[name] = max(xs)
            else:
                vals[name] = (D(sum(xs)) / len(xs)).quantize(D(1).scaleb(-16),
                                                            rounding=decimal.ROUND_HALF_UP)
        out[key] = vals
    return out


def test_random_aggregates_match_the_reference(api, orders):
    rnd = random.Random(SEED + 3)
    for i in range(60):
        where = rand_where(rnd, orders)
        # at most 1,000 groups (limits.max_limit): customer_id (300) alone
        group_by = (["customer_id"] if rnd.random() < 0.15 else
                    rnd.sample(["status", "payment_method"], rnd.choice([0, 1, 1, 2])))
        aggs = {"n": {"count": "*"}}
        for name, spec in [("total", {"sum": "total_amount"}), ("lo", {"min": "total_amount"}),
                           ("hi", {"max": "total_amount"}), ("mean", {"avg": "total_amount"}),
                           ("first", {"min": "created_at"}), ("last", {"max": "created_at"}),
                           ("nt", {"count": "total_amount"})]:
            if rnd.random() < 0.5:
                aggs[name] = spec
        body = {"where": where, "group_by": group_by, "aggregates": aggs}
        st, doc = api.call("POST", "/v1/orders/_aggregate", body)
        assert st == 200, json.dumps([body, doc], default=str)
        want = ref_aggregate(orders, where, group_by, aggs)
        got = {}
        for item in doc["items"]:
            key = tuple(item.get(g) for g in group_by)
            vals = {}
            for name in aggs:
                v = item.get(name)
                if name in ("first", "last") and v is not None:
                    v = parse_ts(v)
                vals[name] = v
            got[key] = vals
        if not group_by and not want:
            # no row matched: one all-empty group, as SQL answers
            empty = {k: (0 if k in ("n", "nt") else None) for k in aggs}
            assert got in ({}, {(): empty}), (i, body, doc)
            continue
        assert got == want, (i, body)


def test_shard_server_stopped_other_shards_serve_scatter_503_or_partial(api, orders, toxics):
    """mysql-b unreachable (its proxy disabled: open connections closed, new
    ones refused, as when the server stops): single-shard requests on mysql-a
    still answer, orders-2 is a 503 naming it, a scatter query is a 503/504
    naming a shard of mysql-b, or with `partial` the rows of mysql-a's shards
    exactly; once mysql-b is reachable again the full answer comes back."""
    by_shard = {}
    for o in orders[:N_CUSTOMERS]:
        by_shard.setdefault(route(o["customer_id"])["shard"], o)
    assert set(by_shard) == set(SHARDS)
    where = {"status": "PENDING", "items.product_id": {"prefix": "SKU-1"}}
    body = {"where": where, "order_by": ["order_id"], "limit": 1000}
    toxics["mysql-b"].down()  # orders-2 and orders-3
    try:
        for name in ("orders-0", "orders-1"):  # single-shard requests on mysql-a still work
            o = by_shard[name]
            st, doc = api.call("GET", "/v1/orders/%s?customer_id=%s" % (o["order_id"], o["customer_id"]))
            assert st == 200 and norm(doc) == norm(o), doc
        o = by_shard["orders-2"]
        st, doc = api.call("GET", "/v1/orders/%s?customer_id=%s" % (o["order_id"], o["customer_id"]))
        assert st == 503 and doc["error"]["shard"] == "orders-2", doc
        st, doc = api.call("POST", "/v1/orders/_query", body)
        assert st in (503, 504), doc
        assert doc["error"]["shard"] in ("orders-2", "orders-3"), doc
        assert doc["error"]["shard"] in doc["error"]["message"], doc
        st, doc = api.call("POST", "/v1/orders/_query", dict(body, partial=True))
        assert st == 200, doc
        assert doc["partial"] is True and sorted(doc["missing_shards"]) == ["orders-2", "orders-3"]
        on_a = [o for o in orders if route_cache(o["customer_id"]) in ("orders-0", "orders-1")]
        assert [norm(x) for x in doc["items"]] == ref_rows(on_a, where, ["order_id"], 1000)
    finally:
        toxics["mysql-b"].up()
    # healed without restarting polygate (each worker reconnects after backoff)
    deadline = time.time() + 20
    while True:
        st, doc = api.call("POST", "/v1/orders/_query", body)
        if st == 200:
            break
        assert time.time() < deadline, doc
        time.sleep(0.2)
    assert [norm(x) for x in doc["items"]] == ref_rows(orders, where, ["order_id"], 1000)
    assert doc["shards_queried"] == 4


_ROUTES = {}


def route_cache(cust):
    if cust not in _ROUTES:
        _ROUTES[cust] = route(cust)["shard"]
    return _ROUTES[cust]
