"""The documented query language (docs/protocol.md, "Queries") × every store
it is documented for, as a generated matrix: every `where` operator on every
kind of field (strings, enums, ints, decimals, booleans, dotted paths into
object/json fields, paths through arrays of objects, in/nin on array
fields), and/or, NULLs; every `order_by` form; `group_by` with every
aggregate.  Stores: users on PostgreSQL, orders on MariaDB asked on one
shard (the where pins customer_id) and scattered over the 4 shards, catalog
on the MongoDB wire protocol (FerretDB).

Each store gets a few known rows under a prefix unique to this run; every
case asks the gateway and compares the answer with the set (or order)
computed here, in Python, from the seeded rows and the semantics the
protocol documents:
  - ne / nin keep rows where the field is NULL; comparisons drop them;
  - a dotted path matches when SOME value at it matches (arrays on the way
    match through any element), typed: strings with strings (code-point
    order), numbers numerically, booleans with booleans; ne / nin / eq null /
    exists false are the negations;
  - NULLs sort last ascending and first descending, the key breaks ties.
Where the stores differ (which arrays a path walks), the per-store notes of
docs/protocol.md are modelled in `values_at`.

Also here: `_batch` and `Idempotency-Key` on users and catalog, `partial`
on the MySQL shards (a private gateway whose map has one unreachable
shard), and the clean 500 of an unexpected store error (a private gateway
whose tables lose a column behind its back)."""
import decimal
import http.client
import json
import os
import shutil
import tempfile
import time
import urllib.parse
import uuid

import psycopg2
import pymysql
import pytest

from conftest import ADMIN_PORT, MYSQL_SHARDS, PG_DB, PORT, Gateway, wait_port

D = decimal.Decimal
RUN = "qm" + uuid.uuid4().hex[:10]  # every id of this run starts with it


class Http:
    """Keep-alive JSON client; decimals stay exact (parse_float=Decimal)."""

    def __init__(self, port=PORT):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)

    def call(self, method, path, body=None, headers=None):
        data = None if body is None else json.dumps(body, default=jdefault).encode()
        hdrs = dict(headers or {})
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        try:
            self.conn.request(method, path, body=data, headers=hdrs)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()  # no silent re-send: a write may have landed
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            raise
        return resp.status, (json.loads(raw, parse_float=D) if raw else None), resp

    def close(self):
        self.conn.close()


def jdefault(v):
    if isinstance(v, D):
        return float(v)  # the seeded decimals have short exact reprs
    raise TypeError(v)


# ---- the seeded rows -------------------------------------------------------------
# None = NULL / absent.  Strings mix case and non-ASCII (code-point order).

USERS = [
    {"first_name": "Ann", "last_name": "Lee", "balance": D("10.5"), "age": 30, "active": True,
     "prefs": {"theme": "dark", "size": 3, "beta": True, "tags": ["a", "b"]}},
    {"first_name": "bob", "last_name": None, "balance": D("-2.25"), "age": 41, "active": False,
     "prefs": {"theme": "light", "size": D("1.5")}},
    {"first_name": "\u00c1nna", "last_name": "Lee", "balance": None, "age": None, "active": None,
     "prefs": None},
    {"first_name": "Carl", "last_name": "lee", "balance": D("0"), "age": 30, "active": True,
     "prefs": {"theme": "dark", "size": "3"}},
    {"first_name": "ann", "last_name": "O'Hara", "balance": D("99999.9999"), "age": 17,
     "active": False, "prefs": {"nested": {"k": "v"}, "theme": None}},
    {"first_name": None, "last_name": "Zed", "balance": D("10.5"), "age": 65, "active": True,
     "prefs": {"tags": [{"x": "y"}], "size": 10}},
]

ITEMS = [
    [{"product_id": "SKU-1", "quantity": 2, "unit_price": D("9.99")}],
    [{"product_id": "SKU-2", "quantity": 1, "unit_price": 5},
     {"product_id": "SKU-1", "quantity": 7, "unit_price": D("1.5")}],
    [],
    [{"product_id": "SKU-3", "quantity": 3, "unit_price": D("20")}],
    None,
    [{"product_id": "sku-1", "quantity": 1}],
    [{"product_id": "SKU-2", "quantity": 12, "unit_price": D("0.5"), "gift": True}],
    [{"product_id": "SKU-10", "quantity": 2, "unit_price": 3}],
]
ORDERS = [
    {"status": s, "total_amount": t, "items": it, "shipping_address": sa, "payment_method": pm}
    for s, t, it, sa, pm in [
        ("PENDING", D("19.98"), ITEMS[0], {"city": "Paris", "zip": 75001, "express": True}, "card"),
        ("SHIPPED", D("15.50"), ITEMS[1], {"city": "Berlin", "zip": 10115}, "paypal"),
        ("PENDING", D("0.00"), ITEMS[2], None, None),
        ("DELIVERED", D("60.00"), ITEMS[3], {"city": "paris", "zip": "75002"}, "card"),
        ("CANCELLED", None, ITEMS[4], {"city": "M\u00fcnchen", "express": False}, "Card"),
        ("PENDING", D("1.00"), ITEMS[5], {"city": None, "zip": 1}, "invoice"),
        ("SHIPPED", D("6.00"), ITEMS[6], {"city": "Berlin", "zip": 10117}, "card"),
        ("DELIVERED", D("6.00"), ITEMS[7], {"city": "Bern"}, None),
    ]
]

PRODUCTS = [
    {"name": "Lamp", "category": {"id": "c1", "name": "Home", "rank": 2}, "price": D("19.99"),
     "stock": 5, "specifications": {"color": "red", "watts": 40}, "search_tags": ["light", "home"]},
    {"name": "desk", "category": {"id": "c1", "name": "Home", "rank": 1}, "price": D("120.00"),
     "stock": 0, "specifications": {"color": "Brown"}, "search_tags": ["office"]},
    {"name": "\u00c9clair", "category": {"id": "c2", "name": "Food"}, "price": D("2.50"),
     "stock": 100, "specifications": None, "search_tags": []},
    {"name": "Cable", "category": {"id": "c3", "name": "Tech", "rank": 2}, "price": D("5.00"),
     "stock": None, "specifications": {"color": "black", "watts": D("0.5")},
     "search_tags": ["office", "tech"]},
    {"name": "Lantern", "category": None, "price": None, "stock": 7,
     "specifications": {"color": None, "watts": "40"}, "search_tags": None},
]


class Store:
    """One store of the matrix: domain, key, its rows and what it serves."""

    def __init__(self, name, domain, key, rows, scope, shards=None, lax=True, array_fields=(),
                 path_group=False):
        self.name, self.domain, self.key, self.rows = name, domain, key, rows
        self.scope = scope            # where that keeps this run's rows (and picks shards)
        self.shards = shards          # expected shards_queried
        self.lax = lax                # paths walk arrays at every level (PG jsonpath, MongoDB)
        self.array_fields = array_fields
        self.path_group = path_group  # group_by on a dotted path


def user_rows():
    out = []
    for i, u in enumerate(USERS):
        r = {"id": "%s-u%d" % (RUN, i), "email": "%s-u%d@example.org" % (RUN, i)}
        r.update(u)
        out.append(r)
    return out


CUST0 = RUN + "-c0"


def order_rows():
    out = []
    for i, o in enumerate(ORDERS):
        r = {"order_id": "%s-o%d" % (RUN, i),
             # five orders of one customer (single-shard cases), the rest spread
             "customer_id": CUST0 if i < 5 else "%s-c%d" % (RUN, i)}
        r.update(o)
        out.append(r)
    return out


def product_rows():
    out = []
    for i, p in enumerate(PRODUCTS):
        r = {"sku": "%s-p%d" % (RUN, i)}
        r.update(p)
        out.append(r)
    return out


STORES = {
    "users-pg": Store("users-pg", "users", "id", user_rows(), {"id": {"prefix": RUN}}, shards=1,
                      lax=True),
    "orders-one-shard": Store("orders-one-shard", "orders", "order_id",
                              [r for r in order_rows() if r["customer_id"] == CUST0],
                              {"customer_id": CUST0}, shards=1, lax=False,
                              array_fields=("items",)),
    "orders-scatter": Store("orders-scatter", "orders", "order_id", order_rows(),
                            {"order_id": {"prefix": RUN}}, shards=4, lax=False,
                            array_fields=("items",)),
    "catalog-mongo": Store("catalog-mongo", "catalog", "sku", product_rows(),
                           {"sku": {"prefix": RUN}}, shards=1, lax=True,
                           array_fields=("search_tags",), path_group=True),
}


# ---- the semantics, in Python ---------------------------------------------------------

MISSING = object()


def is_num(v):
    return isinstance(v, (int, float, D)) and not isinstance(v, bool)


def same_kind(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if is_num(a) or is_num(b):
        return is_num(a) and is_num(b)
    return isinstance(a, str) and isinstance(b, str)


def cmp_ok(op, a, b):
    """a (stored) op b (asked), both non-null and of the same kind."""
    if is_num(a):
        a, b = D(str(a)), D(str(b))
    return {"eq": a == b, "gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]


def values_at(store, row, field, segs):
    """Every value found at field.segs of a row (MISSING-free)."""
    top = row.get(field)
    if top is None:
        return []

    def walk(v, rest, may_unwrap):
        if isinstance(v, list) and may_unwrap:
            out = []
            for x in v:
                out += walk(x, rest, store.lax)
            return out
        if not rest:
            return [v]
        if isinstance(v, dict) and rest[0] in v:
            return walk(v[rest[0]], rest[1:], store.lax)
        return []

    vals = walk(top, segs, True)
    if store.lax:  # jsonpath filters / MongoDB compare with the members of a final array
        flat = []
        for v in vals:
            flat += v if isinstance(v, list) else [v]
        vals = flat
    return vals


def leaf_match(store, row, name, op, v):
    field, *segs = name.split(".")
    if segs or (field in store.array_fields and op in ("in", "nin")):
        vals = [x for x in values_at(store, row, field, segs) if x is not None]
        if op == "exists":
            return bool(vals) == v
        if op in ("eq", "ne") and v is None:
            return (not vals) == (op == "eq")
        if op in ("ne", "nin"):
            return not leaf_match(store, row, name, "eq" if op == "ne" else "in", v)
        if op == "in":
            return any(same_kind(x, y) and cmp_ok("eq", x, y) for x in vals for y in v)
        if op == "prefix":
            return any(isinstance(x, str) and x.startswith(v) for x in vals)
        return any(same_kind(x, v) and cmp_ok(op, x, v) for x in vals)
    x = row.get(field)
    if op == "exists":
        return (x is not None) == v
    if op in ("eq", "ne"):
        eq = x is None if v is None else (x is not None and cmp_ok("eq", x, v))
        return eq if op == "eq" else not eq
    if op == "in":
        return x is not None and any(cmp_ok("eq", x, y) for y in v)
    if op == "nin":
        return x is None or not any(cmp_ok("eq", x, y) for y in v)
    if op == "prefix":
        return x is not None and x.startswith(v)
    return x is not None and cmp_ok(op, x, v)


def where_match(store, row, w):
    for k, cond in w.items():
        if k == "and":
            if not all(where_match(store, row, x) for x in cond):
                return False
            continue
        if k == "or":
            if not any(where_match(store, row, x) for x in cond):
                return False
            continue
        if not isinstance(cond, dict):
            cond = {"eq": cond}
        for op, v in cond.items():
            if not leaf_match(store, row, k, op, v):
                return False
    return True


# ---- the generated cases ------------------------------------------------------------------

def scalar_cases(field, present, absent, ordered=True, prefixes=()):
    """Every operator on one field: `present` values some rows hold,
    `absent` one none holds."""
    a, b = present[0], present[-1]
    cases = [
        ("bare eq", {field: a}),
        ("eq", {field: {"eq": b}}),
        ("eq absent", {field: {"eq": absent}}),
        ("ne", {field: {"ne": a}}),
        ("in", {field: {"in": present + [absent]}}),
        ("nin", {field: {"nin": [a]}}),
        ("null", {field: None}),
        ("eq null", {field: {"eq": None}}),
        ("ne null", {field: {"ne": None}}),
        ("exists", {field: {"exists": True}}),
        ("not exists", {field: {"exists": False}}),
    ]
    if ordered:
        cases += [("gt", {field: {"gt": a}}), ("gte", {field: {"gte": a}}),
                  ("lt", {field: {"lt": b}}), ("lte", {field: {"lte": b}}),
                  ("range", {field: {"gt": min(present), "lte": max(present)}})]
    for p in prefixes:
        cases.append(("prefix " + p, {field: {"prefix": p}}))
    return [("%s %s" % (field, n), w) for n, w in cases]


def path_cases(path, present, prefixes=(), ranges=True):
    """A dotted path: values of mixed types, and a value of the wrong type."""
    cases = [("bare eq", {path: present[0]}), ("ne", {path: {"ne": present[0]}}),
             ("in", {path: {"in": present}}), ("nin", {path: {"nin": present[:1]}}),
             ("null", {path: None}), ("ne null", {path: {"ne": None}}),
             ("exists", {path: {"exists": True}}), ("not exists", {path: {"exists": False}})]
    for v in present:
        cases.append(("eq %r" % (v,), {path: {"eq": v}}))
        if ranges and not isinstance(v, bool):
            for op in ("gt", "gte", "lt", "lte"):
                cases.append(("%s %r" % (op, v), {path: {op: v}}))
    for p in prefixes:
        cases.append(("prefix " + p, {path: {"prefix": p}}))
    return [("%s %s" % (path, n), w) for n, w in cases]


def where_cases(store):
    n = store.name
    if n == "users-pg":
        c = (scalar_cases("first_name", ["Ann", "bob", "\u00c1nna"], "Zoe", prefixes=["A", "an", "\u00c1"])
             + scalar_cases("last_name", ["Lee", "O'Hara"], "X", prefixes=["L", "O'"])
             + scalar_cases("age", [17, 30, 65], 99)
             + scalar_cases("balance", [D("-2.25"), D("10.5"), D("99999.9999")], D("1"))
             + [("active " + n, w) for n, w in [
                 ("bare eq", {"active": True}), ("eq", {"active": {"eq": False}}),
                 ("ne", {"active": {"ne": True}}), ("in", {"active": {"in": [False]}}),
                 ("nin", {"active": {"nin": [False]}}), ("null", {"active": None}),
                 ("ne null", {"active": {"ne": None}}), ("exists", {"active": {"exists": False}})]]
             + path_cases("prefs.theme", ["dark", "light"], prefixes=["d", "li"])
             + path_cases("prefs.size", [3, D("1.5"), "3", 10])
             + path_cases("prefs.beta", [True], ranges=False)
             + path_cases("prefs.nested.k", ["v"])
             + path_cases("prefs.tags", ["a"], ranges=False)
             + path_cases("prefs.tags.x", ["y"], ranges=False))
    elif n.startswith("orders"):
        c = (scalar_cases("status", ["PENDING", "SHIPPED"], "PROCESSING", prefixes=["PEN", "S"])
             + scalar_cases("total_amount", [D("0.00"), D("6.00"), D("19.98")], D("3.33"))
             + scalar_cases("payment_method", ["card", "Card", "paypal"], "cash", prefixes=["c", "C", "p"])
             + path_cases("shipping_address.city", ["Paris", "Berlin", "M\u00fcnchen"],
                          prefixes=["Ber", "p", "M\u00fc"])
             + path_cases("shipping_address.zip", [75001, "75002", 1])
             + path_cases("shipping_address.express", [True, False], ranges=False)
             + path_cases("items.product_id", ["SKU-1", "SKU-2", "sku-1"], prefixes=["SKU-1", "sku"])
             + path_cases("items.quantity", [2, 7, 12])
             + path_cases("items.unit_price", [D("1.5"), 5, D("9.99")])
             + path_cases("items.gift", [True], ranges=False))
    else:
        c = (scalar_cases("name", ["Lamp", "desk", "\u00c9clair"], "Sofa", prefixes=["La", "d", "\u00c9"])
             + scalar_cases("price", [D("2.50"), D("19.99"), D("120.00")], D("7.77"))
             + scalar_cases("stock", [0, 5, 100], 42)
             + path_cases("category.id", ["c1", "c2"], prefixes=["c"])
             + path_cases("category.rank", [1, 2])
             + path_cases("specifications.color", ["red", "black", "Brown"], prefixes=["b", "B"])
             + path_cases("specifications.watts", [40, D("0.5"), "40"])
             + [("search_tags in", {"search_tags": {"in": ["office", "nope"]}}),
                ("search_tags in 2", {"search_tags": {"in": ["light"]}}),
                ("search_tags nin", {"search_tags": {"nin": ["office"]}})])
    first = c[0][1]
    second = c[len(c) // 2][1]
    c += [("and", {"and": [first, second]}), ("or", {"or": [first, second]}),
          ("or of and", {"or": [{"and": [first, second]}, c[-3][1]]}),
          ("empty where", {})]
    return c


CASES = [(s, name, w) for s in STORES for name, w in where_cases(STORES[s])]


@pytest.fixture(scope="module")
def api(gateway):
    c = Http()
    yield c
    c.close()


@pytest.fixture(scope="module")
def seeded(api):
    created = []
    try:
        for s in ("users-pg", "orders-scatter", "catalog-mongo"):
            st_ = STORES[s]
            for row in st_.rows:
                body = {k: v for k, v in row.items() if v is not None}
                st, doc, _ = api.call("POST", "/v1/%s" % st_.domain, body)
                assert st == 201, (row, doc)
                created.append((st_, row))
        yield STORES
    finally:
        for st_, row in created:
            path = "/v1/%s/%s" % (st_.domain, urllib.parse.quote(row[st_.key], safe=""))
            if st_.domain == "orders":
                path += "?customer_id=" + urllib.parse.quote(row["customer_id"])
            api.call("DELETE", path)


def ask(api, store, where, **extra):
    body = {"where": {"and": [where, store.scope]} if where else store.scope, "limit": 1000}
    body.update(extra)
    st, doc, resp = api.call("POST", "/v1/%s/_query" % store.domain, body)
    assert st == 200, (body, doc)
    assert doc["shards_queried"] == store.shards, (body, doc["shards_queried"])
    assert doc["partial"] is False
    return doc


@pytest.mark.parametrize("store,case,where", CASES, ids=["%s: %s" % (s, n) for s, n, _ in CASES])
def test_where(api, seeded, store, case, where):
    s = seeded[store]
    doc = ask(api, s, where)
    got = sorted(x[s.key] for x in doc["items"])
    want = sorted(r[s.key] for r in s.rows if where_match(s, r, where))
    assert got == want, (where, got, want)


# ---- order_by ----------------------------------------------------------------------------------

SORTABLE = {"users-pg": ["first_name", "last_name", "age", "balance", "active", "created_at"],
            "orders-one-shard": ["status", "total_amount", "payment_method", "customer_id"],
            "orders-scatter": ["status", "total_amount", "payment_method", "customer_id"],
            "catalog-mongo": ["name", "price", "stock"]}


def order_cases():
    out = []
    for s, fields in SORTABLE.items():
        for f in fields:
            if f == "created_at":
                continue  # set by the gateway: not known here
            for form in (f, "-" + f, {f: "asc"}, {f: "desc"}):
                out.append((s, [form]))
        out.append((s, ["-" + fields[1], fields[0]]))
        out.append((s, [{fields[2]: "desc"}, "-" + fields[0]]))
    return out


ORDER_CASES = order_cases()


def spec_of(form):
    if isinstance(form, dict):
        (f, d), = form.items()
        return f, d == "desc"
    return form.lstrip("+-"), form.startswith("-")


def sort_rows(rows, key, order_by):
    out = sorted(rows, key=lambda r: r[key])  # the key: the last tiebreak
    for form in reversed(order_by):
        f, desc = spec_of(form)
        nulls = [r for r in out if r.get(f) is None]
        vals = sorted([r for r in out if r.get(f) is not None], key=lambda r: r[f], reverse=desc)
        out = nulls + vals if desc else vals + nulls  # NULLS LAST asc, FIRST desc
    return out


@pytest.mark.parametrize("store,order_by", ORDER_CASES,
                         ids=["%s: %s" % (s, json.dumps(o)) for s, o in ORDER_CASES])
def test_order_by(api, seeded, store, order_by):
    s = seeded[store]
    doc = ask(api, s, {}, order_by=order_by)
    got = [x[s.key] for x in doc["items"]]
    want = [r[s.key] for r in sort_rows(s.rows, s.key, order_by)]
    assert got == want, order_by


def test_order_by_pages_with_cursor(api, seeded):
    """limit 2 pages walk the same order as one page (every store)."""
    for s in seeded.values():
        order_by = ["-" + SORTABLE[s.name][1]]
        want = [r[s.key] for r in sort_rows(s.rows, s.key, order_by)]
        got, cursor = [], None
        for _ in range(len(want) + 1):
            doc = ask(api, s, {}, order_by=order_by, limit=2, **({"cursor": cursor} if cursor else {}))
            got += [x[s.key] for x in doc["items"]]
            cursor = doc["cursor"]
            if cursor is None:
                break
        assert got == want, s.name


# ---- group_by and aggregates ----------------------------------------------------------------------

GROUPS = {"users-pg": (["last_name"], ["active"], ["age", "last_name"], []),
          "orders-one-shard": (["status"], ["payment_method"], []),
          "orders-scatter": (["status"], ["payment_method", "status"], []),
          "catalog-mongo": (["stock"], ["category.id"], ["category.name", "stock"], [])}
MEASURE = {"users-pg": ("balance", "age"), "orders-one-shard": ("total_amount", None),
           "orders-scatter": ("total_amount", None), "catalog-mongo": ("price", "stock")}
AGG_CASES = [(s, g) for s, gs in GROUPS.items() for g in gs]


def group_value(row, name):
    field, *segs = name.split(".")
    v = row.get(field)
    for seg in segs:
        v = v.get(seg) if isinstance(v, dict) else None
    return v


@pytest.mark.parametrize("store,group_by", AGG_CASES,
                         ids=["%s: %s" % (s, ",".join(g) or "-") for s, g in AGG_CASES])
def test_aggregate(api, seeded, store, group_by):
    s = seeded[store]
    dec, integer = MEASURE[store]
    aggs = {"n": {"count": "*"}, "nd": {"count": dec}, "total": {"sum": dec}, "lo": {"min": dec},
            "hi": {"max": dec}, "mean": {"avg": dec}}
    if integer:
        aggs.update({"isum": {"sum": integer}, "imin": {"min": integer}, "imax": {"max": integer}})
    body = {"where": s.scope, "group_by": group_by, "aggregates": aggs}
    st, doc, _ = api.call("POST", "/v1/%s/_aggregate" % s.domain, body)
    assert st == 200, (body, doc)
    groups = {}
    for r in s.rows:
        groups.setdefault(tuple(group_value(r, g) for g in group_by), []).append(r)
    want = []
    for key in sorted(groups, key=lambda k: [(v is None, v if v is not None else 0) for v in k]):
        rows = groups[key]
        ds = [r[dec] for r in rows if r.get(dec) is not None]
        item = dict(zip(group_by, key))
        item.update({"n": len(rows), "nd": len(ds), "total": sum(ds) if ds else None,
                     "lo": min(ds) if ds else None, "hi": max(ds) if ds else None,
                     "mean": (sum(ds) / len(ds)) if ds else None})
        if integer:
            xs = [r[integer] for r in rows if r.get(integer) is not None]
            item.update({"isum": sum(xs) if xs else None, "imin": min(xs) if xs else None,
                         "imax": max(xs) if xs else None})
        want.append(item)
    got = doc["items"]
    assert [tuple(x.get(g) for g in group_by) for x in got] == \
        [tuple(x[g] for g in group_by) for x in want], "groups, sorted by key with NULL last"
    for g, w in zip(got, want):
        for name in aggs:
            gv, wv = g.get(name), w[name]
            if name == "mean" and wv is not None and store == "catalog-mongo":
                # MongoDB: rounded half away from zero to the field's scale
                assert D(str(gv)) == wv.quantize(D("0.01"), rounding=decimal.ROUND_HALF_UP), (gv, wv)
            elif name == "mean" and wv is not None:
                # SQL: the store's AVG (MariaDB keeps scale + 4 places)
                assert gv is not None and abs(D(str(gv)) - wv) < D("0.0001"), (name, gv, wv)
            elif wv is None:
                assert gv is None, (name, g, w)
            else:
                assert D(str(gv)) == D(str(wv)), (name, g, w)


@pytest.mark.parametrize("domain,path", [("users", "prefs.theme"),
                                         ("orders", "shipping_address.city")])
def test_group_by_path_is_refused_on_sql_stores(api, domain, path):
    st, doc, _ = api.call("POST", "/v1/%s/_aggregate" % domain,
                          {"group_by": [path], "aggregates": {"n": {"count": "*"}}})
    assert st == 400 and doc["error"]["code"] == "unsupported_operation", doc


# ---- malformed paths and complexity limits: a 400 naming the field or limit, every store --------

BAD_PATHS = ["%s. ", "%s.a ", "%s. a", "%s..a", "%s.$gt", "%s.a\u0001", "%s."]
PATH_FIELD = {"users": "prefs", "orders": "shipping_address", "catalog": "category"}


@pytest.mark.parametrize("domain", sorted(PATH_FIELD))
@pytest.mark.parametrize("pattern", BAD_PATHS)
def test_malformed_path_is_400_naming_the_field(api, domain, pattern):
    f = PATH_FIELD[domain]
    path = pattern % f
    st, doc, _ = api.call("POST", "/v1/%s/_query" % domain, {"where": {path: "x"}})
    assert st == 400 and doc["error"]["code"] == "bad_request", doc
    assert doc["error"]["field"] == f, doc
    st, doc, _ = api.call("POST", "/v1/%s/_aggregate" % domain,
                          {"group_by": [path], "aggregates": {"n": {"count": "*"}}})
    assert st == 400 and doc["error"]["code"] == "bad_request", (path, doc)


@pytest.mark.parametrize("domain,field", [("users", "first_name"), ("orders", "payment_method"),
                                          ("catalog", "name")])
def test_query_complexity_limits(api, domain, field):
    # hundreds of long prefix clauses: refused before any store is asked
    many = {"or": [{field: {"prefix": "x" * 50 + str(i)}} for i in range(100)]}
    st, doc, _ = api.call("POST", "/v1/%s/_query" % domain, {"where": many})
    assert st == 400 and "limits.max_prefix_conditions (16)" in doc["error"]["message"], doc
    long_prefix = {field: {"prefix": "x" * 257}}
    st, doc, _ = api.call("POST", "/v1/%s/_query" % domain, {"where": long_prefix})
    assert st == 400 and "limits.max_prefix_bytes (256)" in doc["error"]["message"], doc
    conds = {"or": [{field: "v%d" % i} for i in range(257)]}
    st, doc, _ = api.call("POST", "/v1/%s/_query" % domain, {"where": conds})
    assert st == 400 and "limits.max_query_conditions (256)" in doc["error"]["message"], doc
    # (limits.max_query_depth: tests/unit/test_sql_build.c; 9 levels of
    # and/or exceed this config's max_json_depth of 16 first)
    # the same shapes within the limits are served
    ok = {"or": [{field: {"prefix": "x" * 256}}] + [{field: {"prefix": "y%d" % i}} for i in range(15)]}
    st, doc, _ = api.call("POST", "/v1/%s/_query" % domain, {"where": ok})
    assert st == 200, doc


# ---- _batch and Idempotency-Key on users and catalog -------------------------------------------------

def new_user(i):
    return {"id": "%s-bu%d" % (RUN, i), "email": "%s-bu%d@example.org" % (RUN, i),
            "first_name": "B%d" % i, "age": 20 + i}


def new_product(i):
    return {"sku": "%s-bp%d" % (RUN, i), "name": "P%d" % i, "stock": 10 + i,
            "price": D("1.25"), "category": {"id": "bc"}}


@pytest.mark.parametrize("domain,key,make", [("users", "id", new_user),
                                             ("catalog", "sku", new_product)])
def test_batch(api, seeded, domain, key, make):
    items = [make(i) for i in range(3)]
    try:
        st, doc, _ = api.call("POST", "/v1/_batch",
                              [{"op": "insert", "domain": domain, "body": it} for it in items])
        assert st == 200, doc
        assert [r["status"] for r in doc["results"]] == [201, 201, 201], doc
        assert [r["item"][key] for r in doc["results"]] == [it[key] for it in items]
        ops = [
            {"op": "get", "domain": domain, "id": items[0][key]},
            {"op": "patch", "domain": domain, "id": items[1][key], "body": {"inc": {
                "age" if domain == "users" else "stock": 5}}, "if_match": 1},
            {"op": "delete", "domain": domain, "id": items[2][key]},
            {"op": "query", "domain": domain,
             "body": {"where": {key: {"in": [items[0][key], items[1][key]]}}, "order_by": [key]}},
            {"op": "aggregate", "domain": domain,
             "body": {"where": {key: {"prefix": RUN + "-b"}}, "aggregates": {"n": {"count": "*"}}}},
            {"op": "get", "domain": domain, "id": RUN + "-none"},
            {"op": "put", "domain": domain, "id": items[0][key], "body": dict(items[0], name="Q") if
             domain == "catalog" else dict(items[0], first_name="Q"), "if_match": 7},
        ]
        st, doc, _ = api.call("POST", "/v1/_batch", ops)
        assert st == 200, doc
        res = doc["results"]
        assert [r["status"] for r in res] == [200, 200, 204, 200, 200, 404, 412], res
        assert res[0]["item"][key] == items[0][key]
        field = "age" if domain == "users" else "stock"
        assert res[1]["item"][field] == items[1][field] + 5 and res[1]["item"]["version"] == 2
        assert [x[key] for x in res[3]["item"]["items"]] == [items[0][key], items[1][key]]
        assert res[4]["item"]["items"][0]["n"] in (2, 3)  # the delete runs beside it
        assert res[5]["error"]["code"] == "not_found" and res[6]["error"]["code"] == "precondition_failed"
        st, _, _ = api.call("GET", "/v1/%s/%s" % (domain, items[2][key]))
        assert st == 404
    finally:
        for it in items:
            api.call("DELETE", "/v1/%s/%s" % (domain, it[key]))


@pytest.mark.parametrize("domain,key,make", [("users", "id", new_user),
                                             ("catalog", "sku", new_product)])
def test_idempotency_key(api, seeded, domain, key, make):
    item = make(9)
    ikey = {"Idempotency-Key": RUN + "-" + domain + "-create"}
    try:
        st1, doc1, r1 = api.call("POST", "/v1/%s" % domain, item, headers=ikey)
        assert st1 == 201, doc1
        st2, doc2, r2 = api.call("POST", "/v1/%s" % domain, item, headers=ikey)
        assert (st2, doc2) == (st1, doc1)
        assert r2.getheader("Idempotent-Replayed") == "true"
        assert r1.getheader("Idempotent-Replayed") is None
        # the same key with another body: 422, nothing written
        other = dict(item, **({"first_name": "other"} if domain == "users" else {"name": "other"}))
        st, doc, _ = api.call("POST", "/v1/%s" % domain, other, headers=ikey)
        assert st == 422 and doc["error"]["code"] == "idempotency_key_reused", doc
        # a PATCH retried with its key is applied once
        field = "age" if domain == "users" else "stock"
        pkey = {"Idempotency-Key": RUN + "-" + domain + "-inc"}
        path = "/v1/%s/%s" % (domain, item[key])
        for _ in range(3):
            st, doc, _ = api.call("PATCH", path, {"inc": {field: 1}}, headers=pkey)
            assert st == 200 and doc[field] == item[field] + 1 and doc["version"] == 2, doc
        st, doc, _ = api.call("GET", path)
        assert st == 200 and doc[field] == item[field] + 1 and doc["version"] == 2, doc
        # a DELETE retried with its key: the replay answers 204 again
        dkey = {"Idempotency-Key": RUN + "-" + domain + "-del"}
        assert api.call("DELETE", path, headers=dkey)[0] == 204
        st, _, resp = api.call("DELETE", path, headers=dkey)
        assert st == 204 and resp.getheader("Idempotent-Replayed") == "true"
    finally:
        api.call("DELETE", "/v1/%s/%s" % (domain, item[key]))


# ---- private gateways: partial results on the MySQL shards, clean store errors -----------------------

PRIV_PORT, PRIV_ADMIN = PORT + 21, ADMIN_PORT + 21


def closed_port():
    """A loopback port nothing listens on (bound, then released)."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


PRIV_TABLE = "orders_qm_" + RUN[2:]
PRIV_USERS = "users_qm_" + RUN[2:]
PRIV_CONFIG = """
listen: 127.0.0.1:%(port)d
admin_listen: 127.0.0.1:%(admin)d
workers: 1
shutdown_timeout_ms: 3000
limits: {request_timeout_ms: 3000}
auth: {enabled: false}
backends:
  users-pg:
    type: pg
    shards:
      - name: users-pg
        dsn: host=127.0.0.1 port=55432 dbname=polygate user=postgres connect_timeout=2
    pool: {min: 1, max: 2, connect_timeout_ms: 1000}
  orders-mysql:
    type: mysql
    shard_map: %(map)s
    pool: {min: 0, max: 2, connect_timeout_ms: 500, backoff_min_ms: 20, backoff_max_ms: 200}
domains:
  users:
    backend: users-pg
    table: %(users)s
    key: id
    auto_migrate: true
    fields:
      id: string
      email: {type: string, required: true}
      nick: string
  orders:
    backend: orders-mysql
    table: %(table)s
    key: order_id
    shard_key: customer_id
    auto_migrate: true
    fields:
      order_id: string
      customer_id: {type: string, required: true}
      status: string
      note: string
"""


@pytest.fixture(scope="module")
def private():
    tmp = tempfile.mkdtemp(prefix="polygate-qm-")
    mp = os.path.join(tmp, "map.yaml")
    with open(mp, "w") as f:
        json.dump({"version": 1, "slots": 4096, "shards": [
            {"name": "orders-0", "dsn": "mysql://root@127.0.0.1:53306/orders_0"},
            {"name": "orders-2", "dsn": "mysql://root@127.0.0.1:53307/orders_2"},
            # nothing listens there: the shard every request to it cannot reach
            {"name": "orders-dead", "dsn": "mysql://root@127.0.0.1:%d/orders_0" % closed_port()}]}, f)
    gw = Gateway(config_text=PRIV_CONFIG % {"port": PRIV_PORT, "admin": PRIV_ADMIN, "map": mp,
                                            "table": PRIV_TABLE, "users": PRIV_USERS},
                 port=PRIV_PORT)
    c = Http(PRIV_PORT)
    try:
        yield gw, c
    finally:
        c.close()
        rc = gw.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        for port, db in (MYSQL_SHARDS["orders-0"], MYSQL_SHARDS["orders-2"]):
            conn = pymysql.connect(host="127.0.0.1", port=port, user="root", database=db,
                                   autocommit=True)
            with conn.cursor() as cur:
                cur.execute("DROP TABLE IF EXISTS " + PRIV_TABLE)
            conn.close()
        conn = psycopg2.connect(host="127.0.0.1", port=55432, user="postgres", dbname=PG_DB)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute('DROP TABLE IF EXISTS "%s"' % PRIV_USERS)
        conn.close()
        assert rc == 0


def private_route(cust):
    a = Http(PRIV_ADMIN)
    try:
        st, doc, _ = a.call("GET", "/admin/route/orders?customer_id=" + urllib.parse.quote(cust))
    finally:
        a.close()
    assert st == 200, doc
    return doc["shard"]


def test_partial_on_mysql_shards(private):
    gw, c = private
    live = {}
    for i in range(200):
        cust = "%s-pc%d" % (RUN, i)
        shard = private_route(cust)
        if shard != "orders-dead" and len(live.get(shard, [])) < 2:
            live.setdefault(shard, []).append(cust)
        if sum(map(len, live.values())) == 4 and len(live) == 2:
            break
    assert sorted(live) == ["orders-0", "orders-2"]
    ids = []
    for shard, custs in sorted(live.items()):
        for cust in custs:
            # no order_id: a client-chosen key is first looked up on every
            # shard, the dead one too
            st, doc, _ = c.call("POST", "/v1/orders", {"customer_id": cust, "status": "NEW"})
            assert st == 201, doc
            ids.append(doc["order_id"])
    body = {"where": {"status": "NEW", "customer_id": {"prefix": RUN}}, "order_by": ["order_id"]}
    st, doc, _ = c.call("POST", "/v1/orders/_query", body)
    assert st in (503, 504) and doc["error"]["shard"] == "orders-dead", doc
    assert "orders-dead" in doc["error"]["message"], doc
    st, doc, _ = c.call("POST", "/v1/orders/_query", dict(body, partial=True))
    assert st == 200, doc
    assert doc["partial"] is True and doc["missing_shards"] == ["orders-dead"], doc
    assert [x["order_id"] for x in doc["items"]] == sorted(ids)
    st, doc, _ = c.call("POST", "/v1/orders/_aggregate",
                        {"where": body["where"], "group_by": ["status"],
                         "aggregates": {"n": {"count": "*"}}, "partial": True})
    assert st == 200 and doc["partial"] is True and doc["missing_shards"] == ["orders-dead"], doc
    assert doc["items"] == [{"status": "NEW", "n": len(ids)}], doc
    # a where pinned to live shards does not need the dead one
    cust = live["orders-0"][0]
    st, doc, _ = c.call("POST", "/v1/orders/_query", {"where": {"customer_id": cust}})
    assert st == 200 and doc["partial"] is False and len(doc["items"]) == 1, doc


STORE_WORDS = ["Unknown column", "column", "does not exist", "SQLSTATE", "42703", "1054"]


def test_unexpected_store_error_is_a_clean_500(private):
    """A table that lost a column behind the gateway's back: the store's
    own error stays in the log (with the call id the answer names); the
    answer names backend and shard only."""
    gw, c = private
    st, doc, _ = c.call("POST", "/v1/users", {"id": RUN + "-e", "email": "e@x", "nick": "n"})
    assert st == 201, doc
    cust = next("%s-ec%d" % (RUN, i) for i in range(200)
                if private_route("%s-ec%d" % (RUN, i)) == "orders-2")
    st, doc, _ = c.call("POST", "/v1/orders", {"customer_id": cust, "status": "X", "note": "n"})
    assert st == 201, doc
    conn = psycopg2.connect(host="127.0.0.1", port=55432, user="postgres", dbname=PG_DB)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute('ALTER TABLE "%s" DROP COLUMN nick' % PRIV_USERS)
    conn.close()
    conn = pymysql.connect(host="127.0.0.1", port=53307, user="root", database=MYSQL_SHARDS["orders-2"][1],
                           autocommit=True)
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE %s DROP COLUMN note" % PRIV_TABLE)
    conn.close()
    for path, body, backend, shard in [
            ("/v1/users/_query", {"where": {"nick": "n"}}, "users-pg", "users-pg"),
            ("/v1/orders/_query", {"where": {"customer_id": cust, "note": "n"}}, "orders-mysql",
             "orders-2")]:
        st, doc, _ = c.call("POST", path, body)
        assert st == 500, doc
        err = doc["error"]
        assert err["shard"] == shard, doc
        msg = err["message"]
        assert "backend '%s' shard '%s' failed the query" % (backend, shard) in msg, doc
        assert not any(w in msg for w in STORE_WORDS), doc
        call = msg.rsplit("call ", 1)[1].rstrip(")")
        # the store's words are in the log, under the call id the answer names
        deadline = time.time() + 5
        while True:
            lines = [ln for ln in gw.logtext().splitlines()
                     if "shard '%s' call %s " % (shard, call) in ln]
            if lines or time.time() > deadline:
                break
            time.sleep(0.05)
        assert lines and ("does not exist" in lines[0] or "Unknown column" in lines[0]), lines
