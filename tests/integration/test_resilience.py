"""Faults under load: a hung MariaDB server, Redis gone, PostgreSQL down at
start-up — while a load loop runs on the other domains — and /metrics scraped
and parsed to check that the counters move as the requests and faults dictate.

The faults are made in this run's Toxiproxy proxies (conftest), which the
gateways of this module go through for PostgreSQL (users), Redis and the
MariaDB server of orders-2 and orders-3: the shared servers are never
stopped or frozen, and every fault is undone in a `finally`.  Ports: PORT + 9 / ADMIN_PORT + 9 (the module's
gateway) and PORT + 7 / ADMIN_PORT + 7 (the one started with PostgreSQL down):
odd, because Linux hands out even ephemeral ports to connect(), and a client
socket on a port makes a later listen() on it fail.
"""
import http.client
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import urllib.parse
import uuid

import pytest

from conftest import (ADMIN_PORT, BIN, CONFIG, PORT, Client, Gateway, assert_error, ensure_scatter_dbs,
                      proxied_shardmap, via_proxies)

GW_PORT, GW_ADMIN = PORT + 9, ADMIN_PORT + 9
TIMEOUT_MS = 1000       # request deadline of this module's gateway
BREAKER_FAILURES = 3
BREAKER_OPEN_MS = 1000
MAX_CONNECTIONS = 24     # limits.max_connections of this module's gateway
FLOOD_THREADS, FLOOD_EACH = 4, 25  # requests on a shard whose circuit is open

MAP_DIR = tempfile.mkdtemp(prefix="polygate-resilience-")


def config_text(port, admin):
    """The test config through the proxies: users (PostgreSQL), Redis, and
    the orders shards of the MariaDB server mysql-b (orders-2, orders-3)."""
    with open(CONFIG) as f:
        text = f.read()
    text = text.replace("18080", str(port)).replace("19090", str(admin))
    text = text.replace("${POLYGATE_TEST_DIR}/orders.shardmap.yaml",
                        proxied_shardmap(MAP_DIR, via=("orders-2", "orders-3")))
    text = via_proxies(text, ("pg", "redis"))
    text = text.replace("request_timeout_ms: 1500", "request_timeout_ms: %d\n  max_connections: %d"
                        % (TIMEOUT_MS, MAX_CONNECTIONS))
    text += "\ncircuit_breaker: {failures: %d, open_ms: %d}\n" % (BREAKER_FAILURES, BREAKER_OPEN_MS)
    return text


def wait_until(pred, timeout=15.0, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


# ---- /metrics ----------------------------------------------------------------------

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


# One keep-alive admin connection for all scrapes: every fresh client
# connection leaves its ephemeral port in TIME-WAIT for a minute, and the
# suite's own listeners live inside the ephemeral port range.
_admin = {}


def scrape(admin=GW_ADMIN):
    """Parse the Prometheus text format into {(name, ((label, value), …)): float};
    also checks that every sample belongs to a declared metric family."""
    c = _admin.get(admin)
    if c is None:
        c = _admin[admin] = Client(admin)
    try:
        c.conn.request("GET", "/metrics")
        resp = c.conn.getresponse()
    except (OSError, http.client.HTTPException):
        c.close()
        c = _admin[admin] = Client(admin)
        c.conn.request("GET", "/metrics")
        resp = c.conn.getresponse()
    text = resp.read().decode()
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    types, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, "not a sample line: %r" % line
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, "sample of an undeclared family: %s" % line
        samples[(name, tuple(sorted(LABEL.findall(labels))))] = float(value)
    return samples


def val(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name, **labels):
    """Sum over the series of `name` whose labels include `labels`."""
    n = 0.0
    for (nm, lb), v in samples.items():
        d = dict(lb)
        if nm == name and all(d.get(k) == x for k, x in labels.items()):
            n += v
    return n


# ---- fixtures and helpers ------------------------------------------------------------

@pytest.fixture(scope="module")
def gw(toxiproxy):
    for p in toxiproxy.values():
        p.reset()
    g = Gateway(config_text(GW_PORT, GW_ADMIN), port=GW_PORT)
    yield g
    for c in _admin.values():
        c.close()
    _admin.clear()
    rc = g.stop()
    shutil.rmtree(MAP_DIR, ignore_errors=True)
    assert rc == 0


def admin_client(port=GW_ADMIN):
    if port not in _admin:
        _admin[port] = Client(port)
    return _admin[port]


def route(customer):
    st, doc, _ = admin_client().request("GET", "/admin/route/orders?customer_id=" +
                                        urllib.parse.quote(customer))
    assert st == 200, doc
    return doc["shard"]


def customer_on(shard):
    for _ in range(2000):
        cust = "res-" + uuid.uuid4().hex[:12]
        if route(cust) == shard:
            return cust
    raise AssertionError("no customer routes to " + shard)


def new_order(customer):
    return {"customer_id": customer, "status": "PENDING", "total_amount": "12.50",
            "items": [{"product_id": "P-1", "quantity": 1, "unit_price": "12.50"}],
            "payment_method": "card"}


class LoadLoop:
    """Requests on named targets in a loop, one thread and one keep-alive
    connection per target."""

    def __init__(self, targets):
        self.targets = targets  # name -> (method, path)
        self.stop_ev = threading.Event()
        self.results = {name: [] for name in targets}  # (t, status, seconds)
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in targets]

    def run(self, name):
        method, path = self.targets[name]
        c = Client(GW_PORT)
        while not self.stop_ev.is_set():
            t0 = time.time()
            try:
                st, _, _ = c.request(method, path)
            except OSError:
                st = 0  # recorded as a failed request; go on on a new connection
                c.reconnect()
            self.results[name].append((t0, st, time.time() - t0))
            time.sleep(0.01)
        c.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        for t in self.threads:
            t.join(15)

    def running(self):
        """Every target has been answered 200 a few times."""
        return all(sum(1 for r in res if r[1] == 200) >= 3 for res in self.results.values())

    def between(self, name, t0, t1):
        return [r for r in self.results[name] if t0 <= r[0] <= t1]


def stack_ready(timeout=30.0):
    """The shared stack may be mid-restart (another run on the same stack):
    start from a gateway whose every shard answers."""
    def ready():
        try:
            return admin_client().request("GET", "/ready")[0] == 200
        except OSError:
            _admin.pop(GW_ADMIN, None)
            return False
    assert wait_until(ready, timeout, 0.2), "the stack is not up: scripts/stack.sh status"


def seed(client):
    """One item per domain for the load loop to read."""
    stack_ready()
    uid = "res-user-" + uuid.uuid4().hex[:8]
    st, doc, _ = client.request("PUT", "/v1/users/" + uid,
                                {"email": uid + "@example.com", "first_name": "R"})
    assert st in (200, 201), doc
    st, doc, _ = client.request("PUT", "/v1/sessions/res-sess", {"user_id": uid})
    assert st in (200, 201), doc
    sku = "RES-" + uuid.uuid4().hex[:8]
    st, doc, _ = client.request("PUT", "/v1/catalog/" + sku, {"name": "resilience", "price": "1.00", "stock": 1})
    assert st in (200, 201), doc
    cust_a = customer_on("orders-0")
    st, order, _ = client.request("POST", "/v1/orders", new_order(cust_a))
    assert st == 201, order
    return {
        "users": ("GET", "/v1/users/" + uid),
        "sessions": ("GET", "/v1/sessions/res-sess"),
        "catalog": ("GET", "/v1/catalog/" + sku),
        "orders-0": ("GET", "/v1/orders/%s?customer_id=%s" % (order["order_id"], cust_a)),
    }


# ---- tests ---------------------------------------------------------------------------

def test_metrics_count_requests_and_access_log(gw):
    c = Client(GW_PORT)
    c.request("PUT", "/v1/sessions/metrics-1", {"user_id": "u"})
    before = scrape()
    rid = "metrics-" + uuid.uuid4().hex[:8]
    for i in range(7):
        st, _, _ = c.request("GET", "/v1/sessions/metrics-1", headers={"X-Request-Id": "%s-%d" % (rid, i)})
        assert st == 200
    st, _, _ = c.request("GET", "/v1/sessions/metrics-missing")
    assert st == 404
    st, _, _ = c.request("GET", "/v1/nosuchdomain/x")
    assert st == 404
    c.close()
    after = scrape()
    ok = dict(domain="sessions", op="get", status="200")
    assert val(after, "polygate_requests_total", **ok) - val(before, "polygate_requests_total", **ok) == 7
    nf = dict(domain="sessions", op="get", status="404")
    assert val(after, "polygate_requests_total", **nf) - val(before, "polygate_requests_total", **nf) == 1
    un = dict(domain="_none", op="other", status="404")
    assert val(after, "polygate_requests_total", **un) - val(before, "polygate_requests_total", **un) == 1
    # the latency histogram counted the same 8 gets, and its buckets are cumulative
    cnt = dict(domain="sessions", op="get")
    assert val(after, "polygate_request_duration_seconds_count", **cnt) - \
        val(before, "polygate_request_duration_seconds_count", **cnt) == 8
    buckets = sorted((float(dict(lb)["le"].replace("+Inf", "inf")), v) for (n, lb), v in after.items()
                     if n == "polygate_request_duration_seconds_bucket" and dict(lb)["domain"] == "sessions"
                     and dict(lb)["op"] == "get")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1][1] == val(after, "polygate_request_duration_seconds_count", **cnt)
    # the backend saw 8 calls that the store answered, none failed
    be = dict(backend="redis", shard="redis-main", outcome="ok")
    assert val(after, "polygate_backend_requests_total", **be) - \
        val(before, "polygate_backend_requests_total", **be) >= 8
    assert val(after, "polygate_circuit_state", backend="redis", shard="redis-main") == 0
    assert val(after, "polygate_shardmap_version", backend="orders-mysql") >= 1
    # pool gauges sampled from the adapters (once a second per worker)
    assert wait_until(lambda: val(scrape(), "polygate_backend_pool_connected", backend="redis",
                                  shard="redis-main") >= 1, 3)
    m = scrape()
    assert val(m, "polygate_backend_pool_size", backend="redis", shard="redis-main") >= \
        val(m, "polygate_backend_pool_connected", backend="redis", shard="redis-main")
    assert val(after, "process_resident_memory_bytes") > 1e6
    assert val(after, "process_open_fds") > 3
    # one JSON access log line per request, with the request id
    def logged():
        lines = [json.loads(l) for l in gw.logtext().splitlines()
                 if l.startswith("{") and ('"%s-' % rid) in l]
        return lines if len(lines) == 7 else None
    assert wait_until(lambda: logged() is not None, 5)
    line = logged()[0]
    assert line["type"] == "access" and line["domain"] == "sessions" and line["op"] == "get"
    assert line["status"] == 200 and line["shard"] == "redis-main" and line["shards"] == 1
    assert line["method"] == "GET" and line["path"] == "/v1/sessions/metrics-1"
    assert isinstance(line["latency_ms"], float) and line["error"] is None


def test_scatter_metrics_count_fanout(gw):
    c = Client(GW_PORT)
    before = scrape()
    st, doc, _ = c.request("POST", "/v1/orders/_query", {"where": {"status": "PENDING"}, "limit": 5})
    assert st == 200, doc
    c.close()
    after = scrape()
    d = dict(domain="orders")
    assert val(after, "polygate_scatter_requests_total", **d) - val(before, "polygate_scatter_requests_total", **d) == 1
    assert val(after, "polygate_scatter_shards_total", **d) - val(before, "polygate_scatter_shards_total", **d) \
        == doc["shards_queried"] == 4


def test_hung_mysql_shard_times_out_opens_circuit_and_heals(gw, toxics):
    """mysql-b (orders-2 and orders-3) hangs (its answers held back in the
    proxy): requests on it time out within the deadline, the circuit opens
    (fast 503s), the other shards and domains keep answering, memory stays
    bounded; once the answers flow again it heals."""
    c = Client(GW_PORT)
    targets = seed(c)
    cust_b = customer_on("orders-2")
    st, order_b, _ = c.request("POST", "/v1/orders", new_order(cust_b))
    assert st == 201, order_b
    url_b = "/v1/orders/%s?customer_id=%s" % (order_b["order_id"], cust_b)
    before = scrape()
    rss0 = val(before, "process_resident_memory_bytes")
    flood_answers = []

    def flood():
        fc = Client(GW_PORT)
        for _ in range(FLOOD_EACH):
            try:
                s, b, _ = fc.request("GET", url_b)
                flood_answers.append((s, b["error"]["message"] if s >= 400 else ""))
            except OSError:
                flood_answers.append((0, "dropped"))
                fc.reconnect()
        fc.close()

    with LoadLoop(targets) as load:
        assert wait_until(load.running, 10), "the load loop did not get going"
        t_stop = time.time()
        toxics["mysql-b"].toxic("latency", latency=120000)
        try:
            # the first requests wait for the deadline: 504 naming the shard
            t0 = time.time()
            st, body, _ = c.request("GET", url_b)
            elapsed = time.time() - t0
            assert st == 504, body
            err = assert_error(body, "timeout")
            assert err["shard"] == "orders-2" and "within %d ms" % TIMEOUT_MS in err["message"], err
            assert elapsed >= TIMEOUT_MS / 1000 * 0.9, elapsed  # not before the deadline
            # … until the circuit opens: then 503 at once, with Retry-After
            refused = {}
            def fast_503():
                s, b, r = c.request("GET", url_b)
                refused.update(status=s, body=b, resp=r)
                return s == 503 and "circuit open" in b["error"]["message"] \
                    and r.getheader("Retry-After") is not None
            assert wait_until(fast_503, BREAKER_FAILURES * 2 * TIMEOUT_MS / 1000 + 3)
            err = assert_error(refused["body"], "backend_unavailable", resp=refused["resp"])
            assert err["shard"] == "orders-2" and "orders-mysql" in err["message"], err
            # a flood on the hung shard: refused by the open circuit, not queued
            # for the deadline (only a half-open probe, one per worker and
            # open_ms, goes through and meets the deadline)
            floods = [threading.Thread(target=flood, daemon=True) for _ in range(FLOOD_THREADS)]
            for t in floods:
                t.start()
            for t in floods:
                t.join(60)
            assert len(flood_answers) == FLOOD_THREADS * FLOOD_EACH
            refusals = [a for a in flood_answers if a[0] == 503 and "circuit open" in a[1]]
            probes = [a for a in flood_answers if a[0] == 504]
            assert len(refusals) + len(probes) == len(flood_answers), flood_answers
            assert len(probes) <= 4, probes
            mid = scrape()
            assert val(mid, "polygate_circuit_state", backend="orders-mysql", shard="orders-2") in (1, 2)
            assert val(mid, "polygate_circuit_opens_total", backend="orders-mysql", shard="orders-2") >= 1
            to = dict(backend="orders-mysql", shard="orders-2", outcome="timeout")
            assert val(mid, "polygate_backend_requests_total", **to) - \
                val(before, "polygate_backend_requests_total", **to) >= BREAKER_FAILURES
            co = dict(backend="orders-mysql", shard="orders-2", outcome="circuit_open")
            assert val(mid, "polygate_backend_requests_total", **co) - \
                val(before, "polygate_backend_requests_total", **co) >= len(refusals)
            assert val(mid, "polygate_requests_total", domain="orders", op="get", status="504") > \
                val(before, "polygate_requests_total", domain="orders", op="get", status="504")
            assert val(mid, "polygate_circuit_state", backend="orders-mysql", shard="orders-0") == 0
            # the adapter's view: connections of orders-2 stuck on the hung server
            assert wait_until(lambda: val(scrape(), "polygate_backend_pool_in_use",
                                          backend="orders-mysql", shard="orders-2") >= 1, 3)
            # bounded: what waits on the hung shard is what went through before the
            # circuit opened (and probes), not the flood
            pend = val(mid, "polygate_backend_pending", backend="orders-mysql", shard="orders-2")
            assert pend <= 4 * (BREAKER_FAILURES + 2), pend
            rss1 = val(mid, "process_resident_memory_bytes")
            if "san-" not in os.path.realpath(BIN):  # ASan's quarantine keeps freed memory resident on purpose
                assert rss1 - rss0 < 64 * 1024 * 1024, (rss0, rss1)
            # /ready names the hung shards
            st, ready, _ = admin_client().request("GET", "/ready")
            assert st == 503 and ready["ready"] is False
            bad = {b["shard"] for b in ready["backends"] if not b["ok"]}
            assert "orders-2" in bad and "orders-0" not in bad and "redis-main" not in bad
            t_cont = time.time()
        finally:
            toxics["mysql-b"].clear()  # the held answers are delivered
        # heals without a restart: the half-open probe goes through
        def healed():
            s, b, _ = c.request("GET", url_b)
            return s == 200 and b["order_id"] == order_b["order_id"]
        assert wait_until(healed, 15, 0.2), gw.logtext()[-2000:]
    # the other shard and the other domains kept answering during the hang
    for name in targets:
        during = load.between(name, t_stop + 0.1, t_cont)
        assert len(during) >= 10, (name, len(during))
        bad = [r for r in during if r[1] != 200]
        assert not bad, (name, bad[:5])
    assert wait_until(lambda: val(scrape(), "polygate_circuit_state", backend="orders-mysql",
                                  shard="orders-2") == 0, 10)
    assert "circuit of shard 'orders-2' (backend 'orders-mysql') OPEN" in gw.logtext()
    c.close()


def test_redis_gone_sessions_recover(gw, toxics):
    """Redis disappears (every connection closed, new ones refused): sessions
    are refused at once naming the shard, the other domains keep answering,
    and sessions work again once Redis is back."""
    c = Client(GW_PORT)
    targets = seed(c)
    sess_targets = {k: v for k, v in targets.items() if k != "sessions"}
    with LoadLoop(sess_targets) as load:
        assert wait_until(load.running, 10), "the load loop did not get going"
        t_kill = time.time()
        try:
            toxics["redis"].down()
            def refused_fast():
                t = time.time()
                s, b, _ = c.request("GET", "/v1/sessions/res-sess")
                return s == 503 and time.time() - t < 0.5 and b["error"]["shard"] == "redis-main"
            assert wait_until(refused_fast, 10)
            t_up = time.time()
        finally:
            toxics["redis"].up()
        # sessions recover: write, then read
        def recovered():
            s, _, _ = c.request("PUT", "/v1/sessions/res-sess-2", {"user_id": "u"})
            if s not in (200, 201):
                return False
            s, b, _ = c.request("GET", "/v1/sessions/res-sess-2")
            return s == 200 and b["user_id"] == "u"
        assert wait_until(recovered, 20, 0.2), gw.logtext()[-2000:]
    for name in sess_targets:
        during = load.between(name, t_kill + 0.1, t_up)
        bad = [r for r in during if r[1] != 200]
        assert not bad, (name, bad[:5])
    m = scrape()
    un = total(m, "polygate_backend_requests_total", backend="redis", shard="redis-main", outcome="unavailable") + \
        total(m, "polygate_backend_requests_total", backend="redis", shard="redis-main", outcome="no_connection")
    assert un >= 1
    c.close()


def test_connection_limit_refuses_with_503_and_recovers(gw):
    """limits.max_connections: the connection over the cap gets the one error
    shape with 503 + Retry-After and is closed; admin still answers; once
    connections close, new ones are served again."""
    import socket
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", GW_PORT), timeout=5)
            held.append(s)
        # every worker has accepted its share (each has its own listener queue)
        assert wait_until(lambda: val(scrape(), "polygate_client_connections") == MAX_CONNECTIONS, 5)
        def refused():
            # the 503 is sent at accept time, before any request: read it
            # without sending one (a request racing the close could turn the
            # FIN into a reset that discards the answer: "best effort")
            with socket.create_connection(("127.0.0.1", GW_PORT), timeout=5) as s:
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            head, _, payload = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 503 "):
                return False
            headers = dict(l.split(": ", 1) for l in head.decode().split("\r\n")[1:])
            assert headers["Retry-After"] == "1" and headers["Connection"] == "close"
            err = assert_error(json.loads(payload), "backend_unavailable")
            assert headers["X-Request-Id"] == err["request_id"]
            return "%d client connections" % MAX_CONNECTIONS in err["message"]
        assert refused()
        m = scrape()  # the admin listener is not capped
        assert val(m, "polygate_client_connections") == MAX_CONNECTIONS
        assert val(m, "polygate_client_connections_refused_total") >= 1
    finally:
        for s in held:
            s.close()
    def served():
        c = Client(GW_PORT)
        try:
            return c.request("GET", "/health")[0] == 200
        finally:
            c.close()
    assert wait_until(served, 5)


def test_postgres_down_at_startup_then_heals(toxics):
    """polygate starts with PostgreSQL stopped: the users domain answers 503
    naming its backend, /ready names it, the rest works; it heals when
    PostgreSQL starts."""
    port, admin = PORT + 7, ADMIN_PORT + 7
    ensure_scatter_dbs()
    toxics["pg"].down()  # users-pg only: the scatter shards are reached directly
    g = None
    try:
        g = Gateway(config_text(port, admin), port=port)
        c = Client(port)
        st, body, resp = c.request("GET", "/v1/users/nobody")
        err = assert_error(body, "backend_unavailable", resp=resp)
        assert st == 503 and "users-pg" in err["message"]
        st, _, _ = c.request("PUT", "/v1/sessions/pgdown", {"user_id": "u"})
        assert st in (200, 201)
        st, ready, _ = admin_client(admin).request("GET", "/ready")
        assert st == 503
        bad = {b["backend"] for b in ready["backends"] if not b["ok"]}
        assert "users-pg" in bad and "redis" not in bad
        info = [b for b in ready["backends"] if b["backend"] == "users-pg"][0]
        assert info["error"]
    finally:
        toxics["pg"].up()
    try:
        uid = "pgheal-" + uuid.uuid4().hex[:8]
        def healed():
            s, _, _ = c.request("PUT", "/v1/users/" + uid, {"email": uid + "@example.com"})
            return s in (200, 201)
        assert wait_until(healed, 30, 0.2), g.logtext()[-2000:]
        st, item, _ = c.request("GET", "/v1/users/" + uid)
        assert st == 200 and item["id"] == uid
        def ready():
            s, _, _ = admin_client(admin).request("GET", "/ready")
            return s == 200
        assert wait_until(ready, 20, 0.2)
        c.close()
    finally:
        if admin in _admin:
            _admin.pop(admin).close()
        assert g.stop() == 0


def test_sighup_reloads_log_level_and_reopens_the_access_log(gw, tmp_path):
    """log_level and access_log are reloadable: SIGHUP applies the level at
    once and reopens the access log file (rename + HUP rotates it)."""
    with open(gw.config) as f:
        original = f.read()
    access = tmp_path / "access.log"
    c = Client(GW_PORT)
    def reloads():
        return gw.logtext().count("info reloaded ")
    try:
        n = reloads()
        with open(gw.config, "w") as f:
            f.write(original.replace("log_level: info", "log_level: warn") +
                    "access_log: %s\n" % access)
        gw.signal(signal.SIGHUP)
        assert wait_until(lambda: access.exists(), 5), gw.logtext()[-1000:]
        assert reloads() == n  # at warn, the reload's own info line is not written
        rid = "rotate-" + uuid.uuid4().hex[:8]
        c.request("GET", "/v1/sessions/res-sess", headers={"X-Request-Id": rid + "-a"})
        assert wait_until(lambda: rid + "-a" in access.read_text(), 5)
        assert rid + "-a" not in gw.logtext()  # not on stderr any more
        # rotation: rename, HUP, the next line goes to a new file
        rotated = tmp_path / "access.log.1"
        access.rename(rotated)
        with open(gw.config, "w") as f:
            f.write(original + "access_log: %s\n" % access)  # and back to info
        gw.signal(signal.SIGHUP)
        assert wait_until(lambda: reloads() == n + 1, 5)
        c.request("GET", "/v1/sessions/res-sess", headers={"X-Request-Id": rid + "-b"})
        assert wait_until(lambda: access.exists() and rid + "-b" in access.read_text(), 5)
        assert rid + "-b" not in rotated.read_text()
        line = [json.loads(l) for l in access.read_text().splitlines() if rid + "-b" in l][0]
        assert line["type"] == "access" and line["path"] == "/v1/sessions/res-sess"
    finally:
        with open(gw.config, "w") as f:
            f.write(original)
        gw.signal(signal.SIGHUP)
        c.close()
    assert wait_until(lambda: reloads() >= 2, 5)
