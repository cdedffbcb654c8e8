"""Store faults through Toxiproxy: latency, reset connections, dropped data
and servers that are down, per store, between one gateway and the real servers
of the local stack — without stopping or freezing anything that other clients
of the stack use.

The module's gateway (PORT + 51 / ADMIN_PORT + 51) reaches PostgreSQL (users),
Redis (sessions), FerretDB (catalog) and ONE MariaDB orders shard (orders-0)
through this run's proxies (conftest.toxiproxy); the other orders shards are
direct, so a scatter query shows what one failed shard does to the others.

Each fault must end in the gateway's one JSON error shape with an honest status
(503: the store is unreachable or the connection was lost; 504: the deadline
passed) naming the backend and the shard, never a 500, and the gateway must
recover by itself once the fault is removed.  The circuit
breakers are off here (test_resilience.py tests them): each request meets the
fault itself."""
import select
import shutil
import socket
import tempfile
import time
import urllib.parse
import uuid

import pytest

from conftest import (ADMIN_PORT, CONFIG, PORT, PROXY_PORTS, Client, Gateway, assert_error, poll,
                      proxied_shardmap, via_proxies)

GW_PORT, GW_ADMIN = PORT + 51, ADMIN_PORT + 51
DEADLINE_MS = 2000          # limits.request_timeout_ms
CATALOG_DEADLINE_MS = 5000  # the catalog domain's timeout_ms


def config_text(map_path):
    with open(CONFIG) as f:
        text = f.read()
    text = text.replace("18080", str(GW_PORT)).replace("19090", str(GW_ADMIN))
    text = text.replace("request_timeout_ms: 1500", "request_timeout_ms: %d" % DEADLINE_MS)
    text = text.replace("timeout_ms: 10000", "timeout_ms: %d" % CATALOG_DEADLINE_MS)
    text = text.replace("${POLYGATE_TEST_DIR}/orders.shardmap.yaml", map_path)
    text = via_proxies(text, ("pg", "redis", "ferretdb"))
    return text + "\ncircuit_breaker: {failures: 0}\n"


@pytest.fixture(scope="module")
def fgw(toxiproxy):
    for p in toxiproxy.values():
        p.reset()
    tmp = tempfile.mkdtemp(prefix="polygate-faults-")
    g = Gateway(config_text(proxied_shardmap(tmp, via=("orders-0",))), port=GW_PORT)
    yield g
    rc = g.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    assert rc == 0, "polygate did not exit cleanly on SIGTERM (rc=%s)" % rc


@pytest.fixture
def gw(fgw, toxics):
    """The gateway, ready on every shard before the test (the previous test's
    fault is gone), still running after it."""
    assert wait_ready(), fgw.logtext()[-3000:]
    yield fgw
    assert fgw.proc.poll() is None, "polygate exited: " + fgw.logtext()[-3000:]


def request(method, path, body=None, timeout=30):
    """One request on a fresh connection; (status, body, response, seconds)."""
    c = Client(GW_PORT, timeout=timeout)
    t0 = time.time()
    try:
        st, doc, resp = c.request(method, path, body)
    finally:
        c.close()
    return st, doc, resp, time.time() - t0


def wait_ready(timeout=30):
    """/ready on the admin listener is 200 (every shard answers a ping) on
    fresh connections, which land on every worker."""
    def ready():
        ok = 0
        for _ in range(6):
            c = Client(GW_ADMIN)
            try:
                ok += c.request("GET", "/ready")[0] == 200
            except OSError:
                pass
            finally:
                c.close()
        return ok == 6
    if not poll(ready, timeout, 0.1):
        return False
    # a ping proves one connection per shard; the catalog's driver keeps a
    # client per pool thread, each of which must have rediscovered the
    # server after the previous test's fault: reads of a missing item must
    # be answered by the store (404) several times in a row
    return recovers("GET", "/v1/catalog/READY-PROBE", want=(404,), timeout=timeout)


def recovers(method, path, body=None, want=(200,), timeout=30):
    """The request succeeds again (on every worker: several fresh
    connections in a row) before the deadline."""
    def ok():
        return all(request(method, path, body)[0] in want for _ in range(4))
    return poll(ok, timeout, 0.1)


def assert_store_error(st, body, resp, status, backend, shard):
    """The one error shape, an honest status, naming backend and shard."""
    assert st == status, (st, body)
    err = assert_error(body, "backend_unavailable" if status == 503 else "timeout", resp=resp)
    assert err["shard"] == shard, body
    assert backend in err["message"] or shard in err["message"], body
    return err


def order_for(shard):
    """A customer whose orders live on `shard`, and one of its orders."""
    admin = Client(GW_ADMIN)
    try:
        for _ in range(2000):
            cust = "fp-" + uuid.uuid4().hex[:12]
            st, doc, _ = admin.request("GET", "/admin/route/orders?customer_id=" + urllib.parse.quote(cust))
            assert st == 200, doc
            if doc["shard"] == shard:
                break
        else:
            raise AssertionError("no customer routes to " + shard)
    finally:
        admin.close()
    st, order, _, _ = request("POST", "/v1/orders", {"customer_id": cust, "status": "PENDING",
                                                     "total_amount": "3.25", "items": [],
                                                     "payment_method": "card"})
    assert st == 201, order
    return "/v1/orders/%s?customer_id=%s" % (order["order_id"], cust), order


def new_user():
    uid = "fp-" + uuid.uuid4().hex[:12]
    st, doc, _, _ = request("PUT", "/v1/users/" + uid, {"email": uid + "@example.com", "first_name": "F"})
    assert st in (200, 201), doc
    return "/v1/users/" + uid


def new_session():
    sid = "fp-" + uuid.uuid4().hex[:12]
    st, doc, _, _ = request("PUT", "/v1/sessions/" + sid, {"user_id": "u"})
    assert st in (200, 201), doc
    return "/v1/sessions/" + sid


def new_product():
    sku = "FP-" + uuid.uuid4().hex[:12]
    st, doc, _, _ = request("PUT", "/v1/catalog/" + sku, {"name": "fault", "price": "1.00", "stock": 1})
    assert st in (200, 201), doc
    return "/v1/catalog/" + sku


# ---- PostgreSQL (users) --------------------------------------------------------------

def test_pg_latency_within_then_beyond_the_deadline(gw, toxics):
    path = new_user()
    pg = toxics["pg"]
    t = pg.toxic("latency", latency=DEADLINE_MS // 4)
    st, doc, _, secs = request("GET", path)
    assert st == 200 and doc["first_name"] == "F", doc
    assert secs >= DEADLINE_MS / 4000  # the toxic was in the path
    pg.remove(t)
    pg.toxic("latency", latency=DEADLINE_MS * 3)
    st, body, resp, _ = request("GET", path)
    assert_store_error(st, body, resp, 504, "users-pg", "users-pg")
    pg.clear()
    assert recovers("GET", path), gw.logtext()[-2000:]


def test_pg_connection_reset_mid_query(gw, toxics):
    path = new_user()
    # the query reaches the server; the answer's first bytes reset the connection
    toxics["pg"].toxic("reset_peer", timeout=0)
    st, body, resp, _ = request("GET", path)
    assert_store_error(st, body, resp, 503, "users-pg", "users-pg")
    toxics["pg"].clear()
    assert recovers("GET", path), gw.logtext()[-2000:]


def test_pg_down_then_up(gw, toxics):
    path = new_user()
    toxics["pg"].down()
    st, body, resp, _ = request("GET", path)
    assert_store_error(st, body, resp, 503, "users-pg", "users-pg")
    # the other stores are not affected
    assert request("GET", "/v1/sessions/none-such")[0] == 404
    toxics["pg"].up()
    assert recovers("GET", path), gw.logtext()[-2000:]


# ---- MariaDB (orders-0 of four shards) -----------------------------------------------

def test_mysql_connection_lost_mid_query_on_one_shard(gw, toxics):
    path0, order0 = order_for("orders-0")
    path1, order1 = order_for("orders-1")
    toxics["mysql-a"].toxic("reset_peer", timeout=0)
    st, body, resp, _ = request("GET", path0)
    assert_store_error(st, body, resp, 503, "orders-mysql", "orders-0")
    # orders-1 lives on the same MariaDB server, not through the proxy: untouched
    st, doc, _, _ = request("GET", path1)
    assert st == 200 and doc["order_id"] == order1["order_id"], doc
    toxics["mysql-a"].clear()
    assert recovers("GET", path0), gw.logtext()[-2000:]

    def same():
        st, doc, _, _ = request("GET", path0)
        return st == 200 and doc["order_id"] == order0["order_id"]
    assert poll(same, 10), gw.logtext()[-2000:]


def test_mysql_scatter_with_one_shard_faulted(gw, toxics):
    """A scatter query with orders-0 unreachable: without "partial" a 503/504
    naming orders-0; with it, the other three shards' rows and
    missing_shards == ["orders-0"]."""
    path0, order0 = order_for("orders-0")
    path2, order2 = order_for("orders-2")
    q = {"where": {"customer_id": {"in": [order0["customer_id"], order2["customer_id"]]},
                   "status": "PENDING"}, "limit": 100}
    # the shard-key `in` asks the two shards of those customers only
    st, doc, _, _ = request("POST", "/v1/orders/_query", q)
    assert st == 200 and doc["shards_queried"] == 2, doc
    scatter = {"where": {"status": "PENDING"}, "limit": 1, "order_by": ["-created_at"]}
    for toxic in (dict(kind="reset_peer", timeout=0), dict(kind="timeout", timeout=0)):
        toxics["mysql-a"].toxic(toxic.pop("kind"), **toxic)
        st, body, resp, _ = request("POST", "/v1/orders/_query", scatter)
        assert st in (503, 504), body
        assert_store_error(st, body, resp, st, "orders-mysql", "orders-0")
        st, doc, _, _ = request("POST", "/v1/orders/_query", dict(q, partial=True))
        assert st == 200, doc
        assert doc["partial"] is True and doc["missing_shards"] == ["orders-0"], doc
        assert [o["order_id"] for o in doc["items"]] == [order2["order_id"]]
        toxics["mysql-a"].clear()
        assert recovers("POST", "/v1/orders/_query", q), gw.logtext()[-2000:]
    st, doc, _, _ = request("POST", "/v1/orders/_query", q)
    assert doc["partial"] is False and sorted(o["order_id"] for o in doc["items"]) == \
        sorted([order0["order_id"], order2["order_id"]])


def test_answer_cut_mid_stream_is_an_error_not_a_short_answer(gw, toxics):
    """The connection is closed after the first bytes of a many-row answer
    (limit_data): the gateway must answer 503 for that shard — never 200
    with the rows that had arrived — and with "partial" name it missing."""
    path0, order0 = order_for("orders-0")
    cust = order0["customer_id"]
    for i in range(20):
        st, doc, _, _ = request("POST", "/v1/orders", {"customer_id": cust, "status": "SHIPPED",
                                                       "total_amount": "1.00", "items": [],
                                                       "payment_method": "x" * 200})
        assert st == 201, doc
    q = {"where": {"customer_id": cust}, "limit": 100}
    st, doc, _, _ = request("POST", "/v1/orders/_query", q)
    assert st == 200 and len(doc["items"]) == 21, doc
    toxics["mysql-a"].toxic("limit_data", bytes=600)  # a few rows' worth
    st, body, resp, _ = request("POST", "/v1/orders/_query", q)
    assert_store_error(st, body, resp, 503, "orders-mysql", "orders-0")
    st, doc, _, _ = request("POST", "/v1/orders/_query", {"where": {"status": "SHIPPED"}, "limit": 1000,
                                                          "partial": True})
    assert st == 200 and doc["missing_shards"] == ["orders-0"], doc
    assert not any(o["customer_id"] == cust for o in doc["items"]), "rows of the cut shard were returned"
    toxics["mysql-a"].clear()
    assert recovers("POST", "/v1/orders/_query", q), gw.logtext()[-2000:]
    st, doc, _, _ = request("POST", "/v1/orders/_query", q)
    assert len(doc["items"]) == 21


def test_mysql_latency_beyond_the_deadline_then_heals(gw, toxics):
    path0, order0 = order_for("orders-0")
    toxics["mysql-a"].toxic("latency", latency=DEADLINE_MS * 3)
    st, body, resp, _ = request("GET", path0)
    assert_store_error(st, body, resp, 504, "orders-mysql", "orders-0")
    toxics["mysql-a"].clear()
    assert recovers("GET", path0), gw.logtext()[-2000:]


# ---- Redis (sessions) ----------------------------------------------------------------

def test_redis_reset_then_reconnect(gw, toxics):
    path = new_session()
    toxics["redis"].toxic("reset_peer", timeout=0)
    st, body, resp, _ = request("GET", path)
    assert_store_error(st, body, resp, 503, "redis", "redis-main")
    toxics["redis"].clear()
    # Redis keeps the key (nothing was restarted): readable again once reconnected
    assert recovers("GET", path), gw.logtext()[-2000:]


def test_redis_blackhole_times_out_then_reconnects(gw, toxics):
    path = new_session()
    toxics["redis"].toxic("timeout", timeout=0)  # requests sent, answers dropped
    st, body, resp, _ = request("GET", path)
    assert_store_error(st, body, resp, 504, "redis", "redis-main")
    toxics["redis"].clear()  # closes the connections that lost their answers
    assert recovers("GET", path), gw.logtext()[-2000:]


def test_redis_down_then_up(gw, toxics):
    path = new_session()
    toxics["redis"].down()
    st, body, resp, _ = request("GET", path)
    assert_store_error(st, body, resp, 503, "redis", "redis-main")
    c = Client(GW_ADMIN)
    st, ready, _ = c.request("GET", "/ready")
    c.close()
    assert st == 503 and ready["ready"] is False
    assert {b["shard"] for b in ready["backends"] if not b["ok"]} == {"redis-main"}, ready
    toxics["redis"].up()
    assert recovers("GET", path), gw.logtext()[-2000:]


# ---- FerretDB (catalog) --------------------------------------------------------------

def test_mongo_blackhole_times_out(gw, toxics):
    """Answers dropped: the driver's socket timeout or the catalog's own
    deadline ends the request — a 503/504 naming the shard, not a hang."""
    path = new_product()
    toxics["ferretdb"].toxic("timeout", timeout=0)
    st, body, resp, _ = request("GET", path)
    assert st in (503, 504), body
    err = assert_store_error(st, body, resp, st, "catalog-mongo", "catalog-mongo")
    if st == 504:  # the domain's timeout_ms, not the gateway-wide deadline
        assert "within %d ms" % CATALOG_DEADLINE_MS in err["message"], err
    toxics["ferretdb"].clear()
    assert recovers("GET", path), gw.logtext()[-2000:]


def test_mongo_reset_mid_query(gw, toxics):
    path = new_product()
    toxics["ferretdb"].toxic("reset_peer", timeout=0)
    st, body, resp, _ = request("GET", path)
    assert_store_error(st, body, resp, 503, "catalog-mongo", "catalog-mongo")
    toxics["ferretdb"].clear()
    assert recovers("GET", path), gw.logtext()[-2000:]


def test_mongo_down_then_up(gw, toxics):
    path = new_product()
    toxics["ferretdb"].down()
    st, body, resp, _ = request("GET", path)
    assert_store_error(st, body, resp, 503, "catalog-mongo", "catalog-mongo")
    assert request("GET", "/v1/sessions/none-such")[0] == 404  # others unaffected
    toxics["ferretdb"].up()
    assert recovers("GET", path), gw.logtext()[-2000:]


# ---- every store ----------------------------------------------------------------------

def new_order0():
    return order_for("orders-0")[0]


# store → (its proxy, a path to an item of it, backend, shard)
STORES = {
    "users": ("pg", new_user, "users-pg", "users-pg"),
    "orders-0": ("mysql-a", new_order0, "orders-mysql", "orders-0"),
    "sessions": ("redis", new_session, "redis", "redis-main"),
    "catalog": ("ferretdb", new_product, "catalog-mongo", "catalog-mongo"),
}


@pytest.mark.parametrize("domain", sorted(STORES))
def test_answers_dropped_then_connection_closed(gw, toxics, domain):
    """The store's answers are dropped and the connection closed 300 ms
    later (before any deadline): a lost connection, 503 naming the shard."""
    proxy, make, backend, shard = STORES[domain]
    path = make()
    toxics[proxy].toxic("timeout", timeout=300)
    st, body, resp, _ = request("GET", path)
    assert_store_error(st, body, resp, 503, backend, shard)
    toxics[proxy].clear()
    assert recovers("GET", path), gw.logtext()[-2000:]


@pytest.mark.parametrize("domain", sorted(STORES))
def test_latency_below_the_deadline_is_served(gw, toxics, domain):
    proxy, make, _, _ = STORES[domain]
    path = make()
    toxics[proxy].toxic("latency", latency=DEADLINE_MS // 4)
    st, doc, _, secs = request("GET", path)
    assert st == 200, doc
    assert secs >= DEADLINE_MS / 4000  # the toxic was in the path


def test_mysql_shard_down_then_up(gw, toxics):
    path0, _ = order_for("orders-0")
    path3, _ = order_for("orders-3")
    toxics["mysql-a"].down()
    st, body, resp, _ = request("GET", path0)
    assert_store_error(st, body, resp, 503, "orders-mysql", "orders-0")
    assert request("GET", path3)[0] == 200
    toxics["mysql-a"].up()
    assert recovers("GET", path0), gw.logtext()[-2000:]


# ---- connect timeouts ----------------------------------------------------------------

class SynBlackhole:
    """A port whose accept queue is full and never drained: the SYN of a new
    connection goes unanswered and connect() hangs (a host that drops
    packets).  A TCP proxy cannot do this: it completes every handshake."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fill = []
        for _ in range(8):  # connect until one does not complete: the queue is full
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", self.port))
            self.fill.append(s)
            if not select.select([], [s], [], 0.5)[1]:
                return
        raise AssertionError("the accept queue of port %d did not fill" % self.port)

    def close(self):
        for s in self.fill:
            s.close()
        self.sock.close()


def test_connect_timeouts_are_honoured(toxics):
    """A gateway starts while every store's connection attempt hangs: the
    PostgreSQL and MariaDB servers accept TCP but never answer the startup
    (a dropped-data proxy), Redis never answers the SYN, FerretDB never
    answers its hello.  Each pool gives up at its connect timeout: requests
    are answered 503 naming the shard (the request deadline would be a 504),
    the log says "connect timeout", and the stores that come back are used."""
    port, admin = PORT + 53, ADMIN_PORT + 53
    for store in ("pg", "mysql-a", "ferretdb"):
        toxics[store].toxic("timeout", stream="upstream", timeout=0)
        toxics[store].toxic("timeout", stream="downstream", timeout=0)
    hole = SynBlackhole()
    tmp = tempfile.mkdtemp(prefix="polygate-connect-")
    text = config_text(proxied_shardmap(tmp, via=("orders-0",)))
    text = text.replace(str(GW_PORT), str(port)).replace(str(GW_ADMIN), str(admin))
    text = text.replace("redis://127.0.0.1:%d/" % PROXY_PORTS["redis"], "redis://127.0.0.1:%d/" % hole.port)
    g = Gateway(text, port=port)
    try:
        cust = next("ct-%d" % i for i in range(1000) if route(admin, "ct-%d" % i) == "orders-0")
        # connect_timeout_ms 1000 (pg, mysql), 500 (redis), serverSelectionTimeoutMS
        # 1000 (mongo): all below the request deadline
        cases = [("/v1/users/ct-1", "users-pg", "users-pg"),
                 ("/v1/orders/ct-1?customer_id=" + cust, "orders-mysql", "orders-0"),
                 ("/v1/sessions/ct-1", "redis", "redis-main"),
                 ("/v1/catalog/CT-1", "catalog-mongo", "catalog-mongo")]
        for path, backend, shard in cases:
            cl = Client(port, timeout=30)
            st, body, resp = cl.request("GET", path)
            cl.close()
            assert_store_error(st, body, resp, 503, backend, shard)
        for shard in ("shard 'users-pg' is down: connect timeout", "shard 'orders-0' is down: connect timeout",
                      "shard 'redis-main' (127.0.0.1:%d) is down: connect timeout" % hole.port):
            assert poll(lambda: shard in g.logtext(), 10), g.logtext()[-3000:]
        # the proxied stores come back: the pools connect on their own
        for store in ("pg", "mysql-a", "ferretdb"):
            toxics[store].clear()
        for path, _, shard in cases:
            if shard != "redis-main":
                assert poll(lambda: request_on(port, path)[0] == 404, 30), (path, g.logtext()[-3000:])
    finally:
        rc = g.stop()
        hole.close()
        shutil.rmtree(tmp, ignore_errors=True)
    assert rc == 0


def route(admin, cust):
    c = Client(admin)
    try:
        st, doc, _ = c.request("GET", "/admin/route/orders?customer_id=" + urllib.parse.quote(cust))
    finally:
        c.close()
    assert st == 200, doc
    return doc["shard"]


def request_on(port, path):
    c = Client(port, timeout=30)
    try:
        return c.request("GET", path)
    finally:
        c.close()
