"""Fixtures for the integration tests: a real polygate process on loopback,
backed by the real servers of the local stack (scripts/stack.sh)."""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import redis as redislib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("POLYGATE_BIN", os.path.join(ROOT, "polygate"))
CONFIG = os.path.join(os.path.dirname(__file__), "polygate.test.yaml")
# polygate.test.yaml names its shard maps as ${POLYGATE_TEST_DIR}/…, so that
# every copy of it (tests write variants into temp dirs) finds them.
os.environ["POLYGATE_TEST_DIR"] = os.path.abspath(os.path.dirname(__file__))
# POLYGATE_TEST_PORT_BASE moves every gateway port of the suite, so that two
# checkouts can run it side by side on one stack.  The config files name
# 18080/19090; Gateway rewrites them.
PORT = int(os.environ.get("POLYGATE_TEST_PORT_BASE", "18080"))
ADMIN_PORT = PORT + 1010
REDIS_PORT = 56379

# The run's own databases, named after the port base (suffix NS), so that two
# runs never share a table: Gateway rewrites the database names of the DSNs in
# every config and shard map it is given (namespaced()), conftest creates them
# (ensure_namespace()), and tests that connect directly use these names.
NS = "_p%d" % PORT
PG_DB = "polygate" + NS                # users (polygate.test.yaml: polygate)
MONGO_DB = "polygate_test" + NS        # catalog (polygate.test.yaml: polygate_test)
MYSQL_REF_DB = "orders_ref" + NS       # mysql-a: reference tables of the differential test
# Redis has numbered databases, not names: the run claims one of 1..15 (a key
# naming the port base in it) and every Redis DSN is pointed at it.
REDIS_OWNER_KEY = "polygate-test:owner"


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                # Ports in the ephemeral range (a POLYGATE_TEST_PORT_BASE of
                # 32768+) can connect to THEMSELVES when nothing listens (TCP
                # simultaneous open): that is no server, and it holds the port
                # the server is about to bind.
                if sock.getsockname() != sock.getpeername():
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


SCATTER_DBS = ["scatter_%d%s" % (i, NS) for i in range(4)]

# The MariaDB shard databases of this run, for tests that write their own
# shard maps: name → (port, database).  orders-0/1/4 on mysql-a, 2/3 on
# mysql-b, as in the stack's own orders_0…orders_4.
MYSQL_SHARDS = {
    "orders-0": (53306, "orders_0" + NS),
    "orders-1": (53306, "orders_1" + NS),
    "orders-2": (53307, "orders_2" + NS),
    "orders-3": (53307, "orders_3" + NS),
    "orders-4": (53306, "orders_4" + NS),
}

# The PostgreSQL shard databases of this run for the rebalancing tests
# (test_rebalance.py runs its core cases on both stores): the same shard
# names as MYSQL_SHARDS, name → database.
PG_SHARDS = {"orders-%d" % i: "pgorders_%d%s" % (i, NS) for i in range(5)}

_namespace_ready = False
REDIS_DB = None  # set by ensure_namespace()


def claim_redis_db():
    """The first Redis database of 1..15 that is free or already this run's
    (a crashed run's claim expires after a day)."""
    r = redislib.Redis(host="127.0.0.1", port=REDIS_PORT, decode_responses=True)
    try:
        for db in range(1, 16):
            r.execute_command("SELECT", db)
            if r.set(REDIS_OWNER_KEY, NS, nx=True, ex=86400) or r.get(REDIS_OWNER_KEY) == NS:
                r.expire(REDIS_OWNER_KEY, 86400)
                return db
    finally:
        r.close()
    raise RuntimeError("every Redis database 1..15 is claimed by another test run (key %s)" % REDIS_OWNER_KEY)


def ensure_namespace():
    """Create this run's databases (idempotent): PostgreSQL PG_DB,
    SCATTER_DBS and PG_SHARDS, the MariaDB databases of MYSQL_SHARDS and MYSQL_REF_DB, and
    claim a Redis database.  FerretDB creates MONGO_DB on first use."""
    global _namespace_ready, REDIS_DB
    if _namespace_ready:
        return
    import psycopg2
    import pymysql
    conn = psycopg2.connect(host="127.0.0.1", port=55432, user="postgres", dbname="postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    with conn.cursor() as cur:
        for db in [PG_DB] + SCATTER_DBS + list(PG_SHARDS.values()):
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                # code-point order for text: the gateway's merge assumes it
                cur.execute("CREATE DATABASE %s TEMPLATE template0 ENCODING 'UTF8' "
                            "LC_COLLATE 'C' LC_CTYPE 'C'" % db)
    conn.close()
    per_server = {}
    for port, db in list(MYSQL_SHARDS.values()) + [(53306, MYSQL_REF_DB)]:
        per_server.setdefault(port, []).append(db)
    for port, dbs in per_server.items():
        my = pymysql.connect(host="127.0.0.1", port=port, user="root", password="", autocommit=True)
        with my.cursor() as cur:
            for db in dbs:
                cur.execute("CREATE DATABASE IF NOT EXISTS `%s` CHARACTER SET utf8mb4 "
                            "COLLATE utf8mb4_general_ci" % db)
        my.close()
    REDIS_DB = claim_redis_db()
    _namespace_ready = True


def redis_db():
    """This run's Redis database number."""
    ensure_namespace()
    return REDIS_DB


@pytest.fixture(scope="session", autouse=True)
def namespace():
    """The run's databases exist before any test; its Redis claim is
    released at the end."""
    try:
        ensure_namespace()
    except Exception as exc:  # psycopg2, pymysql and redis errors alike
        pytest.fail("cannot create this run's databases; is the local stack up (scripts/stack.sh "
                    "status)? %s: %s" % (type(exc).__name__, exc))
    yield
    r = redislib.Redis(host="127.0.0.1", port=REDIS_PORT, db=REDIS_DB, decode_responses=True)
    try:
        if r.get(REDIS_OWNER_KEY) == NS:
            r.delete(REDIS_OWNER_KEY)
    except redislib.RedisError:
        pass  # Redis unreachable at the end: the claim expires by itself
    finally:
        r.close()


def ensure_scatter_dbs():
    """The databases of this run (the 4 of scatter.shardmap.yaml among them);
    created before any gateway starts so that /ready sees them."""
    ensure_namespace()


# database names in DSNs → this run's (only names without the suffix match)
_NS_RULES = [
    (re.compile(r"(dbname=)(polygate|scatter_\d+)(?=[\s\"',}]|$)", re.M), r"\g<1>\g<2>" + NS),
    (re.compile(r"(mysql://[^/\s\"']+/)(orders_\d+|orders_ref)(?=[\s\"',}?]|$)", re.M), r"\g<1>\g<2>" + NS),
    (re.compile(r"(mongodb://[^/\s\"']+/)(polygate_test|polygate)(?=[\s\"',}?]|$)", re.M), r"\g<1>\g<2>" + NS),
]
_REDIS_DSN = re.compile(r"(redis://[^/\s\"']+)(/\d+)?(?=[\s\"',}]|$)", re.M)
# `shard_map: PATH` in YAML, `"shard_map": "PATH"` in a config written as JSON
_SHARD_MAP = re.compile(r"^(\s*shard_map:\s*)(\S+)\s*$|(\"shard_map\":\s*\")([^\"]+)(?=\")", re.M)


def namespaced(text, directory=None):
    """text (a config or shard map) with its databases renamed to this run's
    and its Redis DSNs on the run's Redis database.  In a config, a shard_map
    file that names databases is copied, renamed, into `directory`."""
    ensure_namespace()
    for rx, repl in _NS_RULES:
        text = rx.sub(repl, text)
    text = _REDIS_DSN.sub(lambda m: "%s/%d" % (m.group(1), REDIS_DB), text)
    if directory is None:
        return text

    def shard_map(m):
        lead, path = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
        path = path.strip("\"'").replace("${POLYGATE_TEST_DIR}", os.environ["POLYGATE_TEST_DIR"])
        try:
            with open(path) as f:
                orig = f.read()
        except OSError:
            return m.group(0)  # a test about a missing map: leave it
        text = namespaced(orig)
        if text == orig:
            return m.group(0)  # already this run's (a test may rewrite it in place)
        copy = os.path.join(directory, "ns-%d-%s" % (len(os.listdir(directory)), os.path.basename(path)))
        with open(copy, "w") as f:
            f.write(text)
        return lead + copy
    return _SHARD_MAP.sub(shard_map, text)


def mysql_shard(name):
    """A shard map entry for one of MYSQL_SHARDS."""
    port, db = MYSQL_SHARDS[name]
    return {"name": name, "dsn": "mysql://root@127.0.0.1:%d/%s" % (port, db)}


def pg_shard(name):
    """A shard map entry for one of PG_SHARDS."""
    return {"name": name, "dsn": "host=127.0.0.1 port=55432 dbname=%s user=postgres connect_timeout=2"
            % PG_SHARDS[name]}


def map_gateway_config(port, admin, map_path, table, request_timeout_ms, extra_fields=(),
                       store="mysql"):
    """A gateway config with one sharded `orders` domain stored in `table`
    on a backend `orders-<store>` of type store (mysql or pg), whose shard
    map is the file map_path (tests of shard maps and rebalancing);
    extra_fields: more "name: type" lines."""
    return """
listen: 127.0.0.1:%(port)d
admin_listen: 127.0.0.1:%(admin)d
workers: 2
shutdown_timeout_ms: 5000
limits: {request_timeout_ms: %(timeout)d}
auth: {enabled: false}
backends:
  orders-%(store)s:
    type: %(store)s
    shard_map: %(map)s
    pool: {min: 1, max: 4, connect_timeout_ms: 3000, queue_max: 1024, backoff_min_ms: 20, backoff_max_ms: 300}
domains:
  orders:
    backend: orders-%(store)s
    table: %(table)s
    key: order_id
    shard_key: customer_id
    auto_migrate: true
    fields:
      order_id: string
      customer_id: {type: string, required: true}
      status: {type: enum, values: [PENDING, PROCESSING, SHIPPED, DELIVERED, CANCELLED]}
      total_amount: {type: decimal, scale: 2, precision: 18}
""" % {"port": port, "admin": admin, "map": map_path, "table": table,
       "timeout": request_timeout_ms, "store": store} + "".join("      %s\n" % f for f in extra_fields)


class Gateway:
    """A polygate process started on a private copy of the test config."""

    def __init__(self, config_text=None, port=PORT):
        ensure_namespace()
        self.dir = tempfile.mkdtemp(prefix="polygate-test-")
        self.config = os.path.join(self.dir, "polygate.yaml")
        if config_text is None:
            with open(CONFIG) as f:
                config_text = f.read()
        config_text = config_text.replace("18080", str(PORT)).replace("19090", str(ADMIN_PORT))
        config_text = namespaced(config_text, self.dir)
        with open(self.config, "w") as f:
            f.write(config_text)
        self.log = open(os.path.join(self.dir, "polygate.log"), "w+")
        self.proc = subprocess.Popen([BIN, "-c", self.config], stdout=self.log, stderr=subprocess.STDOUT)
        # the port answering is not enough: another process (another run on
        # the same port base) may hold it while ours failed to bind
        # (the line is logged at info: a quieter config is only port-checked)
        deadline = time.time() + (0 if re.search(r"^log_level:\s*(warn|error)", config_text, re.M) else 30)
        while (self.proc.poll() is None and "polygate listening on" not in self.logtext()
               and time.time() < deadline):
            time.sleep(0.02)
        if self.proc.poll() is not None or not wait_port(port):
            text = self.logtext()  # before stop() closes and removes it
            rc = self.stop()
            raise RuntimeError("polygate did not listen on %d (rc=%s): %s" % (port, rc, text))

    def logtext(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        rc = terminate(self.proc, timeout=10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc


class Client:
    """One keep-alive HTTP/1.1 connection to the gateway.

    A request is sent once, never again: a connection the gateway drops or
    resets raises (a ConnectionError, or the http.client error that says
    what broke), so a test sees every dropped connection and a POST is never
    applied twice by the test client itself.  After that the Client refuses
    further requests until the test calls reconnect(): a test that means to
    go on after a drop says so.  (A response that announced
    `Connection: close` is not a drop: the next request opens a new
    connection, as HTTP/1.1 intends.)"""

    def __init__(self, port=PORT, timeout=10):
        self.port = port
        self.timeout = timeout
        self.dropped = None
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def reconnect(self):
        """A new connection, after a drop the test expected."""
        self.conn.close()
        self.dropped = None
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def request(self, method, path, body=None, headers=None, raw=None):
        if self.dropped is not None:
            raise ConnectionError("connection to port %d was dropped earlier (%r); call reconnect()"
                                  % (self.port, self.dropped))
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        try:
            self.conn.request(method, path, body=data, headers=hdrs)
            resp = self.conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            self.dropped = exc
            if isinstance(exc, OSError):
                raise
            # RemoteDisconnected is both; the others (a truncated answer,
            # a bad status line) become a ConnectionError that tests catching
            # OSError see as a failed request too
            raise ConnectionError("%s %s on port %d: %r" % (method, path, self.port, exc)) from exc
        parsed = None
        if payload:
            parsed = json.loads(payload)
        return resp.status, parsed, resp

    def close(self):
        self.conn.close()


@pytest.fixture(scope="session")
def gateway():
    if not os.path.exists(BIN):
        pytest.fail("polygate binary not found at %s (run make)" % BIN)
    if not wait_port(REDIS_PORT, timeout=5):
        pytest.fail("Redis of the local stack is not running on %d (scripts/stack.sh up)" % REDIS_PORT)
    gw = Gateway()
    yield gw
    rc = gw.stop()
    assert rc == 0, "polygate did not exit cleanly on SIGTERM (rc=%s)" % rc


@pytest.fixture
def client(gateway):
    c = Client()
    yield c
    c.close()


@pytest.fixture
def rdb():
    ensure_namespace()
    r = redislib.Redis(host="127.0.0.1", port=REDIS_PORT, db=REDIS_DB, decode_responses=True)
    yield r
    r.close()


def terminate(proc, timeout):
    """SIGTERM a gateway process and wait up to `timeout` s for its exit
    (SIGKILL after that); its exit code. A process already gone: its code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_ready(timeout=15.0, streak=20, port=PORT):
    """Wait until /ready answers 200 `streak` times in a row on fresh
    connections (fresh connections land on every worker, and each worker
    has its own pools that reconnect on their own backoff)."""
    deadline = time.time() + timeout
    ok = 0
    while time.time() < deadline:
        c = Client(port)
        try:
            st, _, _ = c.request("GET", "/ready")
        except OSError:
            st = 0
        c.close()
        ok = ok + 1 if st == 200 else 0
        if ok >= streak:
            return True
        if st != 200:
            time.sleep(0.05)
    return False


def assert_error(body, code, status=None, resp=None):
    """The one error shape: {"error":{"code","message","request_id",…}}."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert err["code"] == code, body
    assert isinstance(err["message"], str) and err["message"], body
    assert err["request_id"], body
    if resp is not None:
        assert resp.getheader("Content-Type") == "application/json"
        assert resp.getheader("X-Request-Id") == err["request_id"]
    return err


# ---- fault injection: Toxiproxy ------------------------------------------------------
#
# scripts/stack.sh runs a Toxiproxy server (HTTP API on POLYGATE_TOXIPROXY_PORT,
# 8474).  Fault tests never stop or freeze the shared servers: they point a
# gateway at this run's proxies and fault the proxy (latency, resets, dropped
# data, a proxy that is down), which touches no other client of the stack.
# Proxies are named after the port base, so two runs never share one.

TOXIPROXY_PORT = int(os.environ.get("POLYGATE_TOXIPROXY_PORT", "8474"))
# the servers of the local stack (scripts/stack.sh)
STORE_PORTS = {"pg": 55432, "mysql-a": 53306, "mysql-b": 53307, "redis": REDIS_PORT, "ferretdb": 57017}
# this run's proxy listen ports: PORT + 61, 63, … (odd: Linux hands even
# ephemeral ports to connect(), and a client socket on a port stops a listen)
PROXY_PORTS = {name: PORT + 61 + 2 * i for i, name in enumerate(STORE_PORTS)}


def toxiproxy_api(method, path, body=None):
    """One call of Toxiproxy's HTTP API: (status, parsed JSON or None)."""
    conn = http.client.HTTPConnection("127.0.0.1", TOXIPROXY_PORT, timeout=10)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if not data.strip():
        return resp.status, None
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data.decode()  # /version answers plain text


class Proxy:
    """One Toxiproxy proxy: 127.0.0.1:port → a store of the local stack."""

    def __init__(self, store):
        self.store = store
        self.name = "polygate-p%d-%s" % (PORT, store)
        self.port = PROXY_PORTS[store]
        self.upstream = STORE_PORTS[store]

    def _call(self, method, path="", body=None, ok=(200, 201, 204)):
        st, doc = toxiproxy_api(method, "/proxies/" + self.name + path, body)
        assert st in ok, "toxiproxy %s %s%s: %s %s" % (method, self.name, path, st, doc)
        return doc

    def create(self):
        toxiproxy_api("DELETE", "/proxies/" + self.name)  # left over by a killed run
        st, doc = toxiproxy_api("POST", "/proxies", {
            "name": self.name, "listen": "127.0.0.1:%d" % self.port,
            "upstream": "127.0.0.1:%d" % self.upstream, "enabled": True})
        assert st == 201, "toxiproxy: cannot create %s on port %d: %s %s" % (self.name, self.port, st, doc)

    def delete(self):
        self._call("DELETE", ok=(204, 404))

    def toxic(self, kind, stream="downstream", toxicity=1.0, **attributes):
        """Add a toxic (latency, reset_peer, timeout, …); its name."""
        name = "%s_%s_%d" % (kind, stream, len(self.toxics()))
        self._call("POST", "/toxics", {"name": name, "type": kind, "stream": stream,
                                       "toxicity": toxicity, "attributes": attributes})
        return name

    def toxics(self):
        return self._call("GET", "/toxics")

    def remove(self, name):
        self._call("DELETE", "/toxics/" + name)

    def clear(self):
        for t in self.toxics():
            self.remove(t["name"])

    def down(self):
        """Disable: every connection through the proxy is closed, new ones
        are refused (a stopped server, seen from the network)."""
        self._call("POST", "", {"enabled": False})

    def up(self):
        self._call("POST", "", {"enabled": True})

    def reset(self):
        self.clear()
        self.up()


@pytest.fixture(scope="session")
def toxiproxy():
    """This run's proxies, one per server of the stack, deleted at the end."""
    try:
        st, version = toxiproxy_api("GET", "/version")
    except OSError as exc:
        pytest.fail("Toxiproxy is not running on port %d (scripts/stack.sh up): %s" % (TOXIPROXY_PORT, exc))
    assert st == 200, version
    proxies = {store: Proxy(store) for store in STORE_PORTS}
    for p in proxies.values():
        p.create()
    yield proxies
    for p in proxies.values():
        p.delete()


@pytest.fixture
def toxics(toxiproxy):
    """The proxies, clean (no toxics, enabled) before and after the test."""
    for p in toxiproxy.values():
        p.reset()
    yield toxiproxy
    for p in toxiproxy.values():
        p.reset()


def via_proxies(config_text, stores=("pg", "redis", "ferretdb")):
    """config_text with the DSNs of `stores` (pg, redis, ferretdb) pointing at
    this run's proxies.  Shard map files are rewritten by proxied_shardmap()."""
    if "pg" in stores:
        config_text = config_text.replace("port=%d " % STORE_PORTS["pg"], "port=%d " % PROXY_PORTS["pg"])
    for store in ("redis", "ferretdb"):
        if store in stores:
            config_text = config_text.replace("127.0.0.1:%d" % STORE_PORTS[store],
                                              "127.0.0.1:%d" % PROXY_PORTS[store])
    return config_text


def proxied_shardmap(directory, via=("orders-0",)):
    """A copy of orders.shardmap.yaml in `directory` whose shards named in
    `via` reach their MariaDB server through this run's proxy; its path."""
    with open(os.path.join(os.path.dirname(__file__), "orders.shardmap.yaml")) as f:
        text = f.read()
    lines = []
    for line in text.splitlines():
        for shard in via:
            if "name: %s," % shard in line:
                for server in ("mysql-a", "mysql-b"):
                    line = line.replace("127.0.0.1:%d/" % STORE_PORTS[server],
                                        "127.0.0.1:%d/" % PROXY_PORTS[server])
        lines.append(line)
    path = os.path.join(directory, "orders.shardmap.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def poll(pred, timeout=15.0, step=0.05):
    """pred() until it is true (True) or the deadline passes (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False
