"""Sharding and scatter-gather on a sharded domain (`shorders`: 4 PostgreSQL
databases scatter_0..3 through tests/integration/scatter.shardmap.yaml),
checked against the same computation in Python over all rows.  The MySQL
`orders` domain is meant to pass the same checks."""
import datetime
import decimal
import random
import threading
import time
import urllib.parse

import psycopg2
import pytest

from conftest import ADMIN_PORT, Client, SCATTER_DBS, assert_error

SHARDS = ["scatter-%d" % i for i in range(4)]
STATUSES = ["PENDING", "PROCESSING", "SHIPPED", "DELIVERED", "CANCELLED"]
N_ORDERS = 400
N_CUSTOMERS = 60


def pg(db, autocommit=True):
    conn = psycopg2.connect(host="127.0.0.1", port=55432, user="postgres", dbname=db)
    conn.autocommit = autocommit
    return conn


def q(client, body, path="_query"):
    st, doc, resp = client.request("POST", "/v1/shorders/" + path, body)
    return st, doc, resp


def q_exact(body, path="_aggregate"):
    """Like q(), with JSON numbers parsed as exact decimals."""
    import json
    c = Client()
    try:
        c.conn.request("POST", "/v1/shorders/" + path, body=json.dumps(body).encode(),
                       headers={"Content-Type": "application/json"})
        resp = c.conn.getresponse()
        raw = resp.read().decode()
    finally:
        c.close()
    return resp.status, json.loads(raw, parse_float=decimal.Decimal), resp, raw


def route(customer):
    admin = Client(port=ADMIN_PORT)
    try:
        st, doc, _ = admin.request("GET", "/admin/route/shorders?customer_id=" +
                                   urllib.parse.quote(customer))
    finally:
        admin.close()
    assert st == 200, doc
    return doc


def newest_first(rows):
    rows = sorted(rows, key=lambda o: o["order_id"])
    return sorted(rows, key=lambda o: parse_ts(o["created_at"]), reverse=True)


def parse_ts(s):
    s = s.rstrip("Z")
    if "." in s:
        base, frac = s.split(".")
        return datetime.datetime.fromisoformat(base) + datetime.timedelta(
            microseconds=int(frac.ljust(6, "0")))
    return datetime.datetime.fromisoformat(s)


@pytest.fixture(scope="module")
def orders(gateway):
    """N_ORDERS orders of N_CUSTOMERS customers (fixed seed), written through
    polygate into emptied shards; the list of items as stored."""
    c = Client()
    # first use runs auto_migrate on every shard
    st, doc, _ = q(c, {"limit": 1})
    assert st == 200, doc
    for db in SCATTER_DBS:
        conn = pg(db)
        with conn.cursor() as cur:
            cur.execute("TRUNCATE shorders")
        conn.close()
    rnd = random.Random(20261123)
    base = datetime.datetime(2026, 1, 1)
    rows = []
    for i in range(N_ORDERS):
        # coarse timestamps: many ties, broken by order_id
        ts = base + datetime.timedelta(minutes=rnd.randrange(0, 2000) * 7,
                                       microseconds=rnd.choice([0, 0, 500000, 123456]))
        body = {
            "order_id": "o-%05d" % i,
            "customer_id": "cust-%03d" % rnd.randrange(N_CUSTOMERS),
            "status": rnd.choice(STATUSES),
            "total_amount": "%d.%02d" % (rnd.randrange(0, 2000), rnd.randrange(100)),
            "created_at": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        st, item, _ = c.request("POST", "/v1/shorders", body)
        assert st == 201, item
        rows.append(item)
    c.close()
    return rows


def test_rows_spread_and_on_the_routed_shard(orders):
    seen = 0
    for i, db in enumerate(SCATTER_DBS):
        conn = pg(db)
        with conn.cursor() as cur:
            cur.execute("SELECT order_id, customer_id, _slot FROM shorders")
            got = cur.fetchall()
        conn.close()
        share = len(got) / N_ORDERS
        assert 0.10 <= share <= 0.40, (db, share)
        for oid, cust, slot in got:
            r = route(cust)
            assert r["shard"] == SHARDS[i], (oid, cust, r)
            assert r["slot"] == slot and r["map_version"] == 1
            assert r["hash"].startswith("0x") and len(r["hash"]) == 18
        seen += len(got)
    assert seen == N_ORDERS


def test_admin_route_errors(gateway):
    admin = Client(port=ADMIN_PORT)
    st, body, _ = admin.request("GET", "/admin/route/shorders")
    assert st == 400 and assert_error(body, "bad_request")["field"] == "customer_id"
    st, body, _ = admin.request("GET", "/admin/route/users?id=1")
    assert st == 400
    st, body, _ = admin.request("GET", "/admin/route/nope?customer_id=1")
    assert st == 404
    admin.close()


def test_single_shard_item_ops(client, gateway):
    st, item, _ = client.request("POST", "/v1/shorders",
                                 {"customer_id": "solo-1", "status": "PENDING", "total_amount": "10.10"})
    assert st == 201, item
    oid = item["order_id"]
    path = "/v1/shorders/%s?customer_id=solo-1" % oid
    st, got, resp = client.request("GET", path)
    assert st == 200 and got == item
    assert resp.getheader("X-Shards-Queried") == "1"
    st, got, _ = client.request("PATCH", path, {"set": {"status": "SHIPPED"}}, headers={"If-Match": '"1"'})
    assert st == 200 and got["status"] == "SHIPPED" and got["version"] == 2
    st, body, _ = client.request("PATCH", path, {"set": {"customer_id": "other"}})
    assert st == 400 and assert_error(body, "bad_request")["field"] == "customer_id"
    # a wrong customer_id routes to a shard that (most likely) lacks the id
    other = next(c for c in ("x-%d" % i for i in range(100))
                 if route(c)["shard"] != route("solo-1")["shard"])
    st, body, _ = client.request("GET", "/v1/shorders/%s?customer_id=%s" % (oid, other))
    assert st == 404
    # by id alone: asked on every shard
    st, got, resp = client.request("GET", "/v1/shorders/" + oid)
    assert st == 200 and got["version"] == 2
    assert resp.getheader("X-Shards-Queried") == "4" and resp.getheader("ETag") == '"2"'
    st, _, _ = client.request("DELETE", path)
    assert st == 204
    st, body, resp = client.request("GET", "/v1/shorders/" + oid)
    assert st == 404 and assert_error(body, "not_found")
    # the shard key is required on writes
    st, body, _ = client.request("POST", "/v1/shorders", {"status": "PENDING"})
    assert st == 400 and assert_error(body, "bad_request")["field"] == "customer_id"


def test_customer_orders_newest_first_from_one_shard(client, orders):
    cust = orders[0]["customer_id"]
    want = newest_first([o for o in orders if o["customer_id"] == cust])
    st, doc, resp = q(client, {"where": {"customer_id": cust}, "order_by": ["-created_at"], "limit": 1000})
    assert st == 200, doc
    assert doc["shards_queried"] == 1 and resp.getheader("X-Shards-Queried") == "1"
    assert [o["order_id"] for o in doc["items"]] == [o["order_id"] for o in want]
    # `in` on the shard key: only the shards of those customers
    custs = sorted({o["customer_id"] for o in orders})[:3]
    shards = {route(c)["shard"] for c in custs}
    st, doc, _ = q(client, {"where": {"customer_id": {"in": custs}}, "order_by": ["-created_at"], "limit": 1000})
    assert st == 200 and doc["shards_queried"] == len(shards)
    want = newest_first([o for o in orders if o["customer_id"] in custs])
    assert [o["order_id"] for o in doc["items"]] == [o["order_id"] for o in want]


def test_orders_by_status_across_shards(client, orders):
    for status in STATUSES:
        for limit in (1, 7, 30):
            st, doc, resp = q(client, {"where": {"status": status}, "order_by": ["-created_at"], "limit": limit})
            assert st == 200, doc
            assert doc["shards_queried"] == 4 and resp.getheader("X-Shards-Queried") == "4"
            assert doc["partial"] is False
            want = newest_first([o for o in orders if o["status"] == status])[:limit]
            assert doc["items"] == want
    # by amount, with a projection that leaves the sort field out
    st, doc, _ = q(client, {"where": {"total_amount": {"gte": 500}}, "order_by": ["total_amount"],
                            "fields": ["customer_id"], "limit": 25})
    assert st == 200
    want = sorted((o for o in orders if D(o["total_amount"]) >= 500),
                  key=lambda o: (D(o["total_amount"]), o["order_id"]))[:25]
    assert [o["order_id"] for o in doc["items"]] == [o["order_id"] for o in want]
    assert all(set(o) == {"order_id", "customer_id", "version"} for o in doc["items"])


def test_pagination_walks_every_order_once(client, orders):
    want = [o["order_id"] for o in newest_first(orders)]
    got, cursor, pages = [], None, 0
    while True:
        body = {"order_by": ["-created_at", "order_id"], "limit": 37}
        if cursor:
            body["cursor"] = cursor
        st, doc, _ = q(client, body)
        assert st == 200, doc
        assert doc["shards_queried"] == 4
        got += [o["order_id"] for o in doc["items"]]
        pages += 1
        cursor = doc["cursor"]
        if cursor is None:
            break
        assert pages < 100
    assert got == want and len(set(got)) == N_ORDERS


def D(x):
    """An exact decimal from a JSON number (json.loads made it a float; its
    repr is the shortest text that round-trips, i.e. the digits sent)."""
    return decimal.Decimal(repr(x)) if isinstance(x, float) else decimal.Decimal(x)


def py_avg(total, n):
    d = (decimal.Decimal(total) / n).quantize(decimal.Decimal(1).scaleb(-16), rounding=decimal.ROUND_HALF_UP)
    return d


def test_aggregates_group_by_exact(client, orders):
    aggs = {"n": {"count": "*"}, "total": {"sum": "total_amount"}, "lo": {"min": "total_amount"},
            "hi": {"max": "total_amount"}, "mean": {"avg": "total_amount"},
            "first": {"min": "created_at"}, "last": {"max": "created_at"}}
    st, doc, resp, _ = q_exact({"group_by": ["status"], "aggregates": aggs})
    assert st == 200, doc
    assert doc["shards_queried"] == 4 and resp.getheader("X-Shards-Queried") == "4"
    groups = {}
    for o in orders:
        groups.setdefault(o["status"], []).append(o)
    assert [g["status"] for g in doc["items"]] == sorted(groups)
    for g in doc["items"]:
        rows = groups[g["status"]]
        amounts = [D(o["total_amount"]) for o in rows]
        assert g["n"] == len(rows)
        total = sum(amounts)
        assert D(g["total"]) == total
        assert D(g["lo"]) == min(amounts)
        assert D(g["hi"]) == max(amounts)
        assert D(g["mean"]) == py_avg(total, len(rows))
        assert parse_ts(g["first"]) == min(parse_ts(o["created_at"]) for o in rows)
        assert parse_ts(g["last"]) == max(parse_ts(o["created_at"]) for o in rows)
    # exact digits on the wire: the raw JSON keeps the 2 decimal places
    _, _, _, raw = q_exact({"aggregates": {"t": {"sum": "total_amount"}}})
    want = sum(D(o["total_amount"]) for o in orders)
    assert '"t":%s' % want in raw, raw
    # pinned to one customer: one shard, same answer as Python
    cust = orders[0]["customer_id"]
    st, doc, _ = q(client, {"where": {"customer_id": cust}, "aggregates": {"n": {"count": "*"}}}, "_aggregate")
    assert st == 200 and doc["shards_queried"] == 1
    assert doc["items"] == [{"n": sum(1 for o in orders if o["customer_id"] == cust)}]


class ShardGate:
    """Hold an ACCESS EXCLUSIVE lock on shorders of some shards until
    release(): a query of the gateway on such a shard waits on the lock, and
    pg_stat_activity shows it waiting.  No clock is involved: the tests below
    assert which shards were asked before any of them answered."""

    def __init__(self, dbs):
        self.dbs = list(dbs)
        self.conns = []
        for db in self.dbs:
            conn = pg(db, autocommit=False)
            with conn.cursor() as cur:
                cur.execute("LOCK TABLE shorders IN ACCESS EXCLUSIVE MODE")
            self.conns.append(conn)
        self.mon = pg("postgres")

    def waiting(self, db):
        """Does a session of `db` wait on a lock (the gateway's query)?"""
        with self.mon.cursor() as m:
            m.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                      "AND wait_event_type = 'Lock'", (db,))
            return m.fetchone()[0] > 0

    def running(self, db):
        """Does any session of `db` other than ours run a statement?"""
        with self.mon.cursor() as m:
            m.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
                      "AND pid <> ALL(%s)", (db, [c.get_backend_pid() for c in self.conns]))
            return m.fetchone()[0] > 0

    def release(self):
        for conn in self.conns:
            conn.rollback()
            conn.close()
        self.conns = []
        self.mon.close()


def poll(pred, timeout=10.0, step=0.005):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


class InThread:
    """A request in a thread; .result once join() returned."""

    def __init__(self, fn, *args):
        self.result = self.error = None
        self.thread = threading.Thread(target=self.run, args=(fn,) + args, daemon=True)
        self.thread.start()

    def run(self, fn, *args):
        try:
            self.result = fn(*args)
        except Exception as exc:  # re-raised by join()
            self.error = exc

    def done(self):
        return not self.thread.is_alive()

    def join(self, timeout=15):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the request did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def test_scatter_asks_every_shard_before_any_answers(orders):
    """Scatter-gather is parallel: with every shard held, the query waits on
    all four at once (one after the other, the second shard would be asked
    only after the first answered, and the first never answers while held).
    The answer comes only after the shards are released, and is complete."""
    c = Client()
    q(c, {"limit": 1})  # warm connections
    gate = ShardGate(SCATTER_DBS)
    try:
        req = InThread(q, c, {"where": {"status": "SHIPPED"}, "order_by": ["-created_at"], "limit": 5})
        asked = poll(lambda: all(gate.waiting(db) for db in SCATTER_DBS))
        answered_early = req.done()
    finally:
        gate.release()
    st, doc, _ = req.join()
    assert asked, "not every shard was asked while all were held: %s" % (doc,)
    assert not answered_early
    assert st == 200 and doc["shards_queried"] == 4, doc
    assert doc["items"] == newest_first([o for o in orders if o["status"] == "SHIPPED"])[:5]
    c.close()


def test_scatter_waits_for_the_slow_shard_only(orders):
    """One shard held: the others answer (their statements finish) while the
    aggregate still waits for the held one, which it does not answer without."""
    c = Client()
    q(c, {"limit": 1})
    held = SCATTER_DBS[2]
    gate = ShardGate([held])
    try:
        req = InThread(q, c, {"group_by": ["status"], "aggregates": {"n": {"count": "*"}}}, "_aggregate")
        assert poll(lambda: gate.waiting(held)), "the held shard was not asked"
        others_done = poll(lambda: not any(gate.running(db) for db in SCATTER_DBS if db != held))
        still_waiting = not req.done() and gate.waiting(held)
    finally:
        gate.release()
    st, doc, _ = req.join()
    assert others_done, "the other shards' statements did not finish while one shard was held"
    assert still_waiting, "the aggregate answered without the held shard: %s" % (doc,)
    assert st == 200 and doc["partial"] is False, doc
    assert sum(g["n"] for g in doc["items"]) >= N_ORDERS
    c.close()


def wait_all_shards(client, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st, doc, _ = q(client, {"limit": 1})
        if st == 200:
            return True
        time.sleep(0.1)
    return False


def test_failed_shard_503_or_partial(client, orders):
    down_db, down = SCATTER_DBS[3], SHARDS[3]
    admin = pg("postgres")
    with admin.cursor() as cur:
        cur.execute("ALTER DATABASE %s ALLOW_CONNECTIONS false" % down_db)
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (down_db,))
    def gone():
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (down_db,))
            return cur.fetchone()[0] == 0
    try:
        assert poll(gone, 10, 0.05), "sessions of %s were not terminated" % down_db
        body = {"where": {"status": "PENDING"}, "order_by": ["-created_at"], "limit": 1000}
        for _ in range(3):  # each worker learns on its own
            st, err, resp = q(client, body)
            assert st in (503, 504), err
            e = assert_error(err, "backend_unavailable" if st == 503 else "timeout")
            assert e["shard"] == down and down in e["message"] and e["domain"] == "shorders"
        st, doc, resp = q(client, dict(body, partial=True))
        assert st == 200, doc
        assert doc["partial"] is True and doc["missing_shards"] == [down]
        assert doc["shards_queried"] == 4
        alive = [o for o in orders if o["status"] == "PENDING" and route(o["customer_id"])["shard"] != down]
        assert doc["items"] == newest_first(alive)
        st, doc, _ = q(client, {"group_by": ["status"], "aggregates": {"n": {"count": "*"}}, "partial": True},
                       "_aggregate")
        assert st == 200 and doc["missing_shards"] == [down]
        # single-shard requests to the other shards still work
        o = next(o for o in orders if route(o["customer_id"])["shard"] != down)
        st, got, _ = client.request("GET", "/v1/shorders/%s?customer_id=%s" % (o["order_id"], o["customer_id"]))
        assert st == 200 and got["order_id"] == o["order_id"]
    finally:
        with admin.cursor() as cur:
            cur.execute("ALTER DATABASE %s ALLOW_CONNECTIONS true" % down_db)
        admin.close()
    assert wait_all_shards(client)
    for _ in range(4):
        st, doc, _ = q(client, {"aggregates": {"n": {"count": "*"}}}, "_aggregate")
        assert st == 200 and doc["partial"] is False and doc["items"][0]["n"] >= N_ORDERS


def test_batch_items_on_a_sharded_domain(client, orders):
    o = orders[3]
    envs = [
        {"op": "get", "domain": "shorders", "id": o["order_id"], "shard_key": o["customer_id"]},
        {"op": "get", "domain": "shorders", "id": o["order_id"]},  # fan-out inside a batch
        {"op": "get", "domain": "shorders", "id": "no-such-order"},
        {"op": "query", "domain": "shorders",
         "body": {"where": {"status": o["status"]}, "order_by": ["-created_at"], "limit": 3}},
        {"op": "aggregate", "domain": "shorders", "body": {"aggregates": {"n": {"count": "*"}}}},
    ]
    st, doc, _ = client.request("POST", "/v1/_batch", envs)
    assert st == 200, doc
    r = doc["results"]
    assert r[0]["status"] == 200 and r[0]["item"]["order_id"] == o["order_id"]
    assert r[1]["status"] == 200 and r[1]["item"]["order_id"] == o["order_id"]
    assert r[2]["status"] == 404
    want = newest_first([x for x in orders if x["status"] == o["status"]])[:3]
    assert r[3]["status"] == 200 and r[3]["item"]["items"] == want
    assert r[3]["item"]["shards_queried"] == 4
    assert r[4]["status"] == 200 and r[4]["item"]["items"][0]["n"] >= N_ORDERS
