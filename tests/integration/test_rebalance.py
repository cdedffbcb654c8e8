"""Online rebalancing (docs/rebalancing.md): a writer inserts,
updates and deletes orders through polygate the whole time and records every
acknowledged operation, while a new shard map adds a 5th shard / removes one
(/ and polygate is killed in the middle of the move and restarted).  Then,
straight from the shards: every acknowledged order is present exactly once with
its last acknowledged content, every acknowledged delete is absent, every
row is on the shard the new map names.  Meanwhile scatter queries never see
an order twice or miss one.  These core cases run on a MariaDB-sharded
backend and on a PostgreSQL-sharded one (the `store` parameter: conftest's
MYSQL_SHARDS and PG_SHARDS, the same shard names).

Private gateway on PORT + 8 / ADMIN_PORT + 8, table orders_rb (dropped on
the 5 databases before each run), map file in a temp dir.  The tests of the
default configuration run polygate on a copy of config/polygate.yaml and its
shard map (tables orders_rbdef / orders_rbflow); the failure tests put a
trigger or a narrower table on the new shard to make the mover fail."""
import http.client
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import uuid

import subprocess

import psycopg2
import psycopg2.extras
import pymysql
import pytest

import conftest

from conftest import (ADMIN_PORT, MYSQL_SHARDS, PG_SHARDS, PORT, map_gateway_config, mysql_shard,
                      pg_shard, wait_port)


GW_PORT = PORT + 8
GW_ADMIN = ADMIN_PORT + 8
TABLE = "orders_rb"

DBS = MYSQL_SHARDS
shard = mysql_shard


def my(name):
    port, db = DBS[name]
    return pymysql.connect(host="127.0.0.1", port=port, user="root", password="", database=db,
                           autocommit=True)


def pg(name):
    c = psycopg2.connect(host="127.0.0.1", port=55432, user="postgres", dbname=PG_SHARDS[name])
    c.autocommit = True
    return c


# the stores the core cases run on: shard map entry and a direct connection
STORES = {"mysql": (mysql_shard, my), "pg": (pg_shard, pg)}
BOTH = pytest.mark.parametrize("store", ["mysql", "pg"])


def connect(store, name):
    return STORES[store][1](name)


def drop_tables(store="mysql"):
    for name in DBS:
        c = connect(store, name)
        with c.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS " + TABLE)
        c.close()


class Http:
    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None):
        """(status, json) — status None when the outcome is unknown (the
        connection broke after the request may have been sent)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = json.dumps(body).encode() if body is not None else None
        try:
            self.conn.request(method, path, body=data,
                              headers={"Content-Type": "application/json"} if data else {})
        except (ConnectionRefusedError, OSError) as e:
            self.close()
            if isinstance(e, ConnectionRefusedError):
                return 0, None  # never reached polygate: not executed
            return None, None
        try:
            resp = self.conn.getresponse()
            payload = resp.read()
        except (http.client.HTTPException, OSError):
            self.close()
            return None, None
        return resp.status, (json.loads(payload) if payload else None)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Writer:
    """Inserts / updates / deletes orders through polygate and records the
    acknowledged outcome of each (uncertain outcomes are remembered too)."""

    def __init__(self, customers):
        self.customers = customers
        self.state = {}        # order_id -> (customer, {status,total}) | None (deleted)
        self.uncertain = set()  # outcome unknown: present or absent, at most once
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ops = 0
        self.rejected = 0

    def run(self, seed):
        rnd = random.Random(seed)
        h = Http(GW_PORT)
        while not self.stop.is_set():
            with self.lock:
                # each thread touches only the orders it created: two threads
                # racing on one order would ack in an order the log cannot tell
                live = [o for o, v in self.state.items()
                        if v is not None and o.startswith("rb-%d-" % seed) and o not in self.uncertain]
            op = rnd.random()
            if op < 0.5 or len(live) < 20:
                cust = rnd.choice(self.customers)
                oid = "rb-%d-%s" % (seed, uuid.uuid4().hex[:16])
                content = {"status": "PENDING", "total_amount": "%d.%02d" % (rnd.randint(1, 999), rnd.randint(0, 99))}
                body = dict(content, order_id=oid, customer_id=cust, payment_method="writer")
                st, _ = h.request("POST", "/v1/orders", body)
                self.record(oid, cust, st, 201, content)
            elif op < 0.8:
                oid = rnd.choice(live)
                cust = self.state[oid][0]
                content = {"status": rnd.choice(["PROCESSING", "SHIPPED", "DELIVERED"]),
                           "total_amount": "%d.%02d" % (rnd.randint(1, 999), rnd.randint(0, 99))}
                st, _ = h.request("PATCH", "/v1/orders/%s?customer_id=%s" % (oid, cust), {"set": content})
                self.record(oid, cust, st, 200, content)
            else:
                oid = rnd.choice(live)
                cust = self.state[oid][0]
                st, _ = h.request("DELETE", "/v1/orders/%s?customer_id=%s" % (oid, cust))
                self.record(oid, cust, st, 204, None)
            self.ops += 1
        h.close()

    def record(self, oid, cust, st, ok, content):
        with self.lock:
            if st == ok:
                self.state[oid] = (cust, content) if content is not None else None
            elif st is None or st >= 500:
                self.uncertain.add(oid)  # may or may not have been applied
                self.state.setdefault(oid, (cust, content))
            else:
                self.rejected += 1  # refused before it ran (0: refused connection, 503 held)


class Scatter:
    """Scatter queries during the move: the stable orders (never written
    after they were created) are seen exactly once every time."""

    def __init__(self, stable):
        self.stable = set(stable)
        self.stop = threading.Event()
        self.checks = 0
        self.failures = []

    def run(self):
        h = Http(GW_PORT)
        while not self.stop.is_set():
            st, body = h.request("POST", "/v1/orders/_query",
                                 {"where": {"payment_method": "stable"}, "limit": 1000,
                                  "fields": ["order_id"]})
            if st == 200:
                ids = [i["order_id"] for i in body["items"]]
                if len(ids) != len(set(ids)) or set(ids) != self.stable:
                    dup = len(ids) - len(set(ids))
                    self.failures.append("query: %d duplicate(s), %d missing, %d extra" % (
                        dup, len(self.stable - set(ids)), len(set(ids) - self.stable)))
            st, body = h.request("POST", "/v1/orders/_aggregate",
                                 {"where": {"payment_method": "stable"}, "aggregates": {"n": {"count": "*"}}})
            if st == 200:
                n = body["items"][0]["n"]
                if n != len(self.stable):
                    self.failures.append("aggregate count %s != %d" % (n, len(self.stable)))
            self.checks += 1
            time.sleep(0.01)
        h.close()


class Run:
    def __init__(self, shards, store="mysql"):
        self.store = store
        self.shard = STORES[store][0]
        drop_tables(store)
        self.tmp = tempfile.mkdtemp(prefix="polygate-rb-")
        self.map = os.path.join(self.tmp, "orders.shardmap.yaml")
        with open(self.map, "w") as f:
            json.dump({"version": 1, "slots": 4096, "shards": [self.shard(s) for s in shards]}, f)
        self.proc = None
        self.start()

    def config_text(self):
        return map_gateway_config(GW_PORT, GW_ADMIN, self.map, TABLE, 4000,
                                  ["payment_method: string"], store=self.store)

    def start(self):
        """polygate on the run's config (same map file across restarts).
        The port base lies in the ephemeral range: another process's client
        socket (or its TIME_WAIT) may hold our port; then the next pair of
        ports derived from PORT is tried."""
        global GW_PORT, GW_ADMIN
        cfg = os.path.join(self.tmp, "polygate.yaml")
        self.logf = open(os.path.join(self.tmp, "polygate.log"), "a+")
        for attempt in range(6):
            with open(cfg, "w") as f:
                f.write(self.config_text())
            self.proc = subprocess.Popen([conftest.BIN, "-c", cfg], stdout=self.logf,
                                         stderr=subprocess.STDOUT)
            deadline = time.time() + 20
            while self.proc.poll() is None and time.time() < deadline:
                if wait_port(GW_PORT, timeout=0.5) and wait_port(GW_ADMIN, timeout=0.5):
                    # every shard reachable from every worker before the test
                    # writes (pools connect in the background; under valgrind
                    # five PostgreSQL shards take seconds)
                    if not conftest.wait_ready(timeout=60, streak=4, port=GW_PORT):
                        raise RuntimeError("polygate is not ready: " + self.logtext())
                    return
            self.proc.kill()
            self.proc.wait()
            if "Address already in use" not in self.logtext() or attempt == 5:
                raise RuntimeError("polygate did not start: " + self.logtext())
            GW_PORT += 10
            GW_ADMIN += 10

    def logtext(self):
        if not self.logf.closed:
            self.logf.flush()
        with open(self.logf.name) as f:
            return f.read()

    def admin(self, method, path, body=None):
        h = Http(GW_ADMIN)
        try:
            return h.request(method, path, body)
        finally:
            h.close()

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=20)
        self.logf.close()
        if rc != 0 and sig != signal.SIGKILL:
            print("polygate exited with %s:\n%s" % (rc, self.logtext()[-6000:]))
        return rc

    def stop(self):
        rc = 0
        if self.proc is not None and self.proc.poll() is None:
            rc = conftest.terminate(self.proc, timeout=15)
        self.proc = None
        if rc != 0:
            print("polygate exited with %s:\n%s" % (rc, self.logtext()[-6000:]))
        shutil.rmtree(self.tmp, ignore_errors=True)
        return rc

    def wait_map_active(self, version, deadline):
        """The mover reports its end, then the main thread activates the
        map it wrote and posts it to every worker: wait until three reads
        of /admin/shardmap in a row (fresh connections, any worker) show it
        with no migration."""
        good = 0
        while time.time() < deadline and good < 3:
            st, sm = self.admin("GET", "/admin/shardmap")
            b = sm["backends"][0] if st == 200 and sm.get("backends") else None
            ok = b is not None and b["migration"] is None and (version is None or b["version"] == version)
            good = good + 1 if ok else 0
            if good < 3:
                time.sleep(0.05)
        assert good == 3, "the map of the ended rebalance is not active: %s" % (sm,)

    def wait_done(self, timeout=240, max_errors=None):
        """The final status; max_errors: fail as soon as the mover has
        reported more errors than that (a slot retried forever)."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            st, body = self.admin("GET", "/admin/rebalance")
            if st == 200:
                last = body
                if body["state"] in ("done", "aborted"):
                    self.wait_map_active(body.get("to_version"), deadline)
                    return body
                if max_errors is not None and body.get("error_count", 0) > max_errors:
                    break
            time.sleep(0.2)
        raise AssertionError("rebalance did not finish: %s\n%s" % (last, self.logtext()[-3000:]))


def wait_ops(writer, n, timeout=30):
    """Poll until the writer has done n operations."""
    deadline = time.time() + timeout
    while writer.ops < n and time.time() < deadline:
        time.sleep(0.02)
    assert writer.ops >= n, "the writer did %d of %d operations in %d s" % (writer.ops, n, timeout)


def owners(run, customers):
    h = Http(GW_ADMIN)
    out = {}
    for c in customers:
        st, body = h.request("GET", "/admin/route/orders?customer_id=" + c)
        assert st == 200, body
        out[c] = body["shard"]
    h.close()
    return out


def check_data(run, writer, shards):
    rows = {}
    for name in shards:
        c = connect(run.store, name)
        with c.cursor() as cur:
            cur.execute("SELECT order_id, customer_id, status, total_amount FROM " + TABLE)
            for oid, cust, status, total in cur.fetchall():
                rows.setdefault(oid, []).append((name, cust, status, "%s" % total))
        c.close()
    where = owners(run, writer.customers)
    dups = {o: v for o, v in rows.items() if len(v) > 1}
    assert not dups, "orders on more than one shard: %s" % list(dups.items())[:5]
    misplaced = [(o, v[0][0], where[v[0][1]]) for o, v in rows.items() if v[0][0] != where[v[0][1]]]
    assert not misplaced, "rows not on the shard the map names: %s" % misplaced[:5]
    lost, wrong, resurrected = [], [], []
    for oid, v in writer.state.items():
        if oid in writer.uncertain:
            continue
        if v is None:
            if oid in rows:
                resurrected.append(oid)
            continue
        if oid not in rows:
            lost.append(oid)
            continue
        _, cust, status, total = rows[oid][0]
        if (status, total) != (v[1]["status"], v[1]["total_amount"]):
            wrong.append((oid, (status, total), v[1]))
    assert not lost, "acknowledged orders lost: %s" % lost[:10]
    assert not resurrected, "acknowledged deletes resurrected: %s" % resurrected[:10]
    assert not wrong, "orders without their last acknowledged content: %s" % wrong[:10]
    return rows


def scenario(before, after, kill_at=None, sig=signal.SIGKILL, store="mysql"):
    run = Run(before, store)
    try:
        customers = ["cust-%03d" % i for i in range(150)]
        h = Http(GW_PORT)
        stable = []
        for i in range(300):
            cust = customers[i % len(customers)]
            oid = "stable-%04d" % i
            st, body = h.request("POST", "/v1/orders", {"order_id": oid, "customer_id": cust,
                                                         "status": "PENDING", "total_amount": "10.00",
                                                         "payment_method": "stable"})
            assert st == 201, body
            stable.append(oid)
        h.close()
        writer = Writer(customers)
        for oid in stable:
            writer.state[oid] = (customers[int(oid[-4:]) % len(customers)],
                                 {"status": "PENDING", "total_amount": "10.00"})
        scatter = Scatter(stable)
        threads = [threading.Thread(target=writer.run, args=(s,)) for s in (1, 2)]
        threads.append(threading.Thread(target=scatter.run))
        for t in threads:
            t.start()
        try:
            wait_ops(writer, 50)  # the move starts under traffic
            doc = {"version": 2, "slots": 4096, "shards": [run.shard(s) for s in after]}
            st, body = run.admin("PUT", "/admin/shardmap", doc)
            assert st == 202, body
            assert body["rebalance"]["state"] == "running" and body["rebalance"]["slots_total"] > 0
            if kill_at is not None:
                deadline = time.time() + 60
                while time.time() < deadline:
                    st, body = run.admin("GET", "/admin/rebalance")
                    if st == 200 and body["slots_done"] >= kill_at:
                        break
                    time.sleep(0.05)
                assert body["slots_done"] >= kill_at, body
                assert os.path.exists(run.map + ".rebalance")
                rc = run.kill(sig)
                if sig == signal.SIGTERM:  # a drain: the mover stops where it is
                    assert rc == 0
                    assert os.path.exists(run.map + ".rebalance")
                run.start()
            status = run.wait_done()
            assert status["state"] == "done", status
            assert status["slots_done"] == status["slots_total"]
            wait_ops(writer, writer.ops + 50)  # traffic on the new map
        finally:
            writer.stop.set()
            scatter.stop.set()
            for t in threads:
                t.join(timeout=30)
        assert scatter.checks > 5
        assert not scatter.failures, scatter.failures[:5]
        assert writer.ops > 100
        st, sm = run.admin("GET", "/admin/shardmap")
        (b,) = sm["backends"]
        assert b["version"] == 2 and b["migration"] is None, b
        assert [s["name"] for s in b["shards"]] == after
        assert not os.path.exists(run.map + ".rebalance")
        check_data(run, writer, sorted(set(before) | set(after)))
        return run, b, writer
    except BaseException:
        try:
            print(run.logtext()[-4000:])
        except Exception:
            pass
        run.stop()
        raise


@BOTH
def test_add_a_fifth_shard_under_writes(store):
    run, b, writer = scenario(["orders-0", "orders-1", "orders-2", "orders-3"],
                              ["orders-0", "orders-1", "orders-2", "orders-3", "orders-4"],
                              store=store)
    try:
        fifth = [s for s in b["shards"] if s["name"] == "orders-4"][0]
        assert 4096 / 5 * 0.8 < fifth["slots"] < 4096 / 5 * 1.2, b
    finally:
        assert run.stop() == 0


@BOTH
def test_remove_a_shard_under_writes(store):
    run, b, writer = scenario(["orders-0", "orders-1", "orders-2", "orders-3", "orders-4"],
                              ["orders-0", "orders-1", "orders-2", "orders-3"], store=store)
    try:
        c = connect(store, "orders-4")
        with c.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM " + TABLE)
            assert cur.fetchone()[0] == 0
        c.close()
    finally:
        assert run.stop() == 0


@BOTH
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_mid_move_resumes_on_restart(sig, store):
    run, b, writer = scenario(["orders-0", "orders-1", "orders-2", "orders-3"],
                              ["orders-0", "orders-1", "orders-2", "orders-3", "orders-4"],
                              kill_at=100, sig=sig, store=store)
    try:
        fifth = [s for s in b["shards"] if s["name"] == "orders-4"][0]
        assert 4096 / 5 * 0.8 < fifth["slots"] < 4096 / 5 * 1.2, b
        # the log of the resumed mover counts the slots still to move, not all
        import re
        log = run.logtext()
        resumed = re.search(r"resuming the rebalance of 'orders-%s' \(version 1 . 2\): " % store +
                            r"(\d+) of (\d+) slot\(s\) were moved", log)
        assert resumed, log[-3000:]
        done, total = int(resumed.group(1)), int(resumed.group(2))
        assert done >= 100, resumed.group(0)
        todo = re.search(r"rebalance of 'orders-%s': (\d+) of (\d+) slot\(s\) to move" % store,
                         log[resumed.end():])
        assert todo, log[resumed.end():][:3000]
        assert (int(todo.group(1)), int(todo.group(2))) == (total - done, total), todo.group(0)
    finally:
        assert run.stop() == 0


def test_progress_pause_throttle_abort_then_finish():
    """Pause stops the moves, the throttle is adjustable, abort keeps the
    slots moved so far (the map becomes the materialized one) and a later
    map moves the rest."""
    four = ["orders-0", "orders-1", "orders-2", "orders-3"]
    five = four + ["orders-4"]
    run = Run(four)
    try:
        st, body = run.admin("POST", "/admin/rebalance/pause")
        assert st == 409 and body["error"]["code"] == "conflict", body
        customers = ["cust-%03d" % i for i in range(150)]
        writer = Writer(customers)
        h = Http(GW_PORT)
        for i in range(300):
            cust = customers[i % len(customers)]
            oid = "stable-%04d" % i
            st, body = h.request("POST", "/v1/orders", {"order_id": oid, "customer_id": cust,
                                                         "status": "PENDING", "total_amount": "10.00",
                                                         "payment_method": "stable"})
            assert st == 201, body
            writer.state[oid] = (cust, {"status": "PENDING", "total_amount": "10.00"})
        h.close()
        st, body = run.admin("PUT", "/admin/shardmap",
                             {"version": 2, "slots": 4096, "shards": [shard(s) for s in five]})
        assert st == 202, body
        st, body = run.admin("POST", "/admin/rebalance/pause")
        assert st == 200 and body["state"] == "paused", body
        deadline = time.time() + 10  # the mover stops after the batch or slot it is on
        while time.time() < deadline:
            _, a = run.admin("GET", "/admin/rebalance")
            if a["phase"] == "paused":
                break
            time.sleep(0.02)
        assert a["phase"] == "paused", a
        time.sleep(0.5)  # an observation window: nothing may move while paused
        _, b = run.admin("GET", "/admin/rebalance")
        assert b["state"] == "paused" and b["phase"] == "paused", b
        assert (b["slots_done"], b["rows_moved"]) == (a["slots_done"], a["rows_moved"]), (a, b)
        ctl = os.path.join(conftest.ROOT, "polygatectl")
        p = subprocess.run([ctl, "-a", "127.0.0.1:%d" % GW_ADMIN, "rebalance", "status"],
                           capture_output=True, text=True, timeout=5)
        assert p.returncode == 0 and p.stdout.startswith("rebalance paused: backend orders-mysql"), p
        # a map change waits for the rebalance
        st, body = run.admin("PUT", "/admin/shardmap",
                             {"version": 3, "slots": 4096, "shards": [shard(s) for s in five]})
        assert st == 409 and "rebalance is running" in body["error"]["message"], body
        st, body = run.admin("PUT", "/admin/rebalance", {"throttle_rows_per_s": -1})
        assert st == 400 and body["error"]["field"] == "throttle_rows_per_s", body
        st, body = run.admin("PUT", "/admin/rebalance", {"throttle_rows_per_s": 100})
        assert st == 200 and body["throttle_rows_per_s"] == 100, body
        st, body = run.admin("POST", "/admin/rebalance/bogus")
        assert st == 404, body
        p = subprocess.run([ctl, "-a", "127.0.0.1:%d" % GW_ADMIN, "rebalance", "resume"],
                           capture_output=True, text=True, timeout=5)
        assert p.returncode == 0 and p.stdout.startswith("rebalance running"), p
        deadline = time.time() + 30
        while time.time() < deadline:
            _, body = run.admin("GET", "/admin/rebalance")
            if body["slots_done"] >= 30:
                break
            time.sleep(0.05)
        assert body["slots_done"] >= 30, body
        assert body["slots_total"] > 600 and body["backend"] == "orders-mysql", body
        assert body["from_version"] == 1 and body["to_version"] == 2
        assert isinstance(body["eta_s"], int) and body["rate_rows_per_s"] >= 0
        _, sm = run.admin("GET", "/admin/shardmap")
        assert sm["backends"][0]["migration"]["state"] == "running", sm
        live = sm["backends"][0]["shards"]
        assert sum(x["slots"] for x in live) == 4096, live
        assert [x for x in live if x["name"] == "orders-4"][0]["slots"] >= 30, live
        st, body = run.admin("POST", "/admin/rebalance/abort")
        assert st == 200, body
        status = run.wait_done()
        assert status["state"] == "aborted", status
        moved = status["slots_done"]
        assert 30 <= moved < status["slots_total"], status
        _, sm = run.admin("GET", "/admin/shardmap")
        (m,) = sm["backends"]
        assert m["version"] == 2 and m["migration"] is None, m
        assert [s["name"] for s in m["shards"]] == five and m["overrides"], m
        assert [s for s in m["shards"] if s["name"] == "orders-4"][0]["slots"] == moved, m
        check_data(run, writer, five)
        # the intended map, again, with a higher version: the rest moves
        st, body = run.admin("PUT", "/admin/shardmap",
                             {"version": 3, "slots": 4096, "shards": [shard(s) for s in five]})
        assert st == 202, body
        assert body["rebalance"]["slots_total"] == status["slots_total"] - moved, body
        st, body = run.admin("PUT", "/admin/rebalance", {"throttle_rows_per_s": 0})
        assert st == 200 or st == 409, body
        status = run.wait_done()
        assert status["state"] == "done", status
        _, sm = run.admin("GET", "/admin/shardmap")
        (m,) = sm["backends"]
        fifth = [s for s in m["shards"] if s["name"] == "orders-4"][0]
        assert m["version"] == 3 and 4096 / 5 * 0.8 < fifth["slots"] < 4096 / 5 * 1.2, m
        check_data(run, writer, five)
    except BaseException:
        try:
            print(run.logtext()[-4000:])
        except Exception:
            pass
        raise
    finally:
        assert run.stop() == 0


# ---- the default configuration's orders domain -------------------------------------------

DEFAULT_CONFIG = os.path.join(conftest.ROOT, "config", "polygate.yaml")
DEFAULT_MAP = os.path.join(conftest.ROOT, "config", "orders.shardmap.yaml")
STATUSES = ["PENDING", "PROCESSING", "SHIPPED", "DELIVERED", "CANCELLED"]


def drop_table(table, store="mysql"):
    for name in DBS:
        c = connect(store, name)
        with c.cursor() as cur:
            cur.execute(("DROP TABLE IF EXISTS `%s`" if store == "mysql" else
                         'DROP TABLE IF EXISTS "%s"') % table)
        c.close()


class DefaultRun(Run):
    """polygate on a copy of config/polygate.yaml and of its shard map
    config/orders.shardmap.yaml (in a temp dir), every field and backend as
    shipped; only the ports move to the test's, and the orders table gets a
    private name (`table`) so that no other test's rows take part.  With
    store "pg" the orders backend is of type pg on PG_SHARDS (the same map
    but for the DSNs), the orders domain as shipped."""

    def __init__(self, table, store="mysql"):
        self.table = table
        self.store = store
        self.shard = STORES[store][0]
        drop_table(table, store)
        self.tmp = tempfile.mkdtemp(prefix="polygate-rbdef-")
        self.map = os.path.join(self.tmp, "orders.shardmap.yaml")
        with open(DEFAULT_MAP) as f:
            text = f.read()
        with open(self.map, "w") as f:
            if store == "mysql":
                f.write(conftest.namespaced(text))  # this run's databases
            else:
                json.dump(default_map_doc(store), f)
        self.proc = None
        self.start()

    def config_text(self):
        import re
        with open(DEFAULT_CONFIG) as f:
            text = f.read()
        subs = [(r"(?m)^listen: 127\.0\.0\.1:\d+", "listen: 127.0.0.1:%d" % GW_PORT),
                (r"(?m)^admin_listen: 127\.0\.0\.1:\d+", "admin_listen: 127.0.0.1:%d" % GW_ADMIN),
                (r"(?m)^    table: orders$", "    table: %s" % self.table)]
        for pat, rep in subs:
            text, n = re.subn(pat, rep, text)
            assert n == 1, "config/polygate.yaml no longer has one line matching %r" % pat
        if self.store == "pg":
            text, n = re.subn(r"(?m)^    type: mysql\b.*$", "    type: pg", text)
            assert n == 1, "config/polygate.yaml no longer has one mysql backend"
            text, n = re.subn(r"\borders-mysql:?", lambda m: m.group(0).replace("mysql", "pg"), text)
            assert n == 2, "config/polygate.yaml: the orders backend is no longer orders-mysql"
        assert "shard_map: orders.shardmap.yaml" in text  # relative: the copy beside it
        return conftest.namespaced(text)  # this run's databases

    def ctl(self, *args, timeout=30):
        p = subprocess.run([os.path.join(conftest.ROOT, "polygatectl"), "-a",
                            "127.0.0.1:%d" % GW_ADMIN, *args], capture_output=True, text=True,
                           timeout=timeout)
        return p.returncode, p.stdout, p.stderr

    def apply(self, doc):
        """`polygatectl shardmap apply FILE --yes` of a YAML map file."""
        path = os.path.join(self.tmp, "next.shardmap.yaml")
        lines = ["# the next orders map", "version: %d" % doc["version"],
                 "slots: %d" % doc["slots"], "vnodes: %d" % doc["vnodes"], "shards:"]
        lines += ['  - {name: %s, dsn: "%s", weight: 1}' % (s["name"], s["dsn"])
                  for s in doc["shards"]]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        rc, out, err = self.ctl("shardmap", "apply", path, "--yes")
        assert rc == 0 and "rebalance started" in out, (rc, out, err)
        return out


def default_map_doc(store="mysql"):
    """config/orders.shardmap.yaml with this run's databases (of the store)."""
    import yaml
    with open(DEFAULT_MAP) as f:
        doc = yaml.safe_load(conftest.namespaced(f.read()))
    for s in doc["shards"]:
        s["dsn"] = STORES[store][0](s["name"])["dsn"]
    return doc


def full_order(i, cust):
    """An order of the default shape: JSON items and shipping_address,
    decimals, quotes and backslashes, non-ASCII text, long values; every
    third one leaves the optional fields out (NULL columns)."""
    o = {"order_id": "full-%04d" % i, "customer_id": cust, "status": STATUSES[i % 5],
         "total_amount": "%d.%02d" % (i * 37 % 100000, i % 100)}
    if i % 3:
        o["items"] = [{"product_id": "SKU-%d-%d" % (i, k), "quantity": k + 1,
                       "unit_price": "%d.99" % (k + 3), "note": "n\u00e4 \"q\" \\ ' %d" % k}
                      for k in range(i % 4 + 1)]
        o["shipping_address"] = {"street": "Bahnhofstra\u00dfe %d" % i, "city": "Z\u00fcrich",
                                 "zip": "80%03d" % i, "geo": {"lat": 47.37, "lon": 8.54},
                                 "lines": ["c/o 'x'", "\u65e5\u672c"],
                                 "note": "long " * (i % 7 * 60)}
        o["payment_method"] = "card'); DROP TABLE x; --" if i % 2 else "invoice"
    return o


def rows_by_id(table, shards, store="mysql"):
    """Every row of the table on the given shards, whole: order_id →
    [(shard, {column: value})]."""
    out = {}
    for name in shards:
        c = connect(store, name)
        with (c.cursor(pymysql.cursors.DictCursor) if store == "mysql" else
              c.cursor(cursor_factory=psycopg2.extras.RealDictCursor)) as cur:
            cur.execute(("SELECT * FROM `%s`" if store == "mysql" else 'SELECT * FROM "%s"') % table)
            for row in cur.fetchall():
                out.setdefault(row["order_id"], []).append((name, row))
        c.close()
    return out


@BOTH
def test_default_schema_rows_move_whole(store):
    """The default config's orders table (every column of config/polygate.yaml):
    a 5th shard takes its slots, the rows it took are byte for byte the rows
    that were on the old shards (every column, read from the store), nothing
    stays behind, and every order reads back through polygate as stored."""
    table = "orders_rbdef"
    run = DefaultRun(table, store)
    try:
        h = Http(GW_PORT)
        stored = {}
        for i in range(240):
            o = full_order(i, "fc-%03d" % (i % 80))
            st, body = h.request("POST", "/v1/orders", o)
            assert st == 201, body
            stored[o["order_id"]] = body
        h.close()
        four = [s["name"] for s in default_map_doc(store)["shards"]]
        before = rows_by_id(table, four, store)
        assert sorted(before) == sorted(stored)
        assert any(v[0][1]["items"] is None for v in before.values())  # NULLs are in the test
        doc = default_map_doc(store)
        doc["version"] += 1
        doc["shards"].append(run.shard("orders-4"))
        run.apply(doc)
        status = run.wait_done(timeout=180, max_errors=0)
        assert status["state"] == "done" and status["error_count"] == 0, status
        assert status["slots_done"] == status["slots_total"] > 0, status
        after = rows_by_id(table, four + ["orders-4"], store)
        assert sorted(after) == sorted(before)
        dups = {o: v for o, v in after.items() if len(v) > 1}
        assert not dups, list(dups.items())[:3]
        moved = [o for o in after if after[o][0][0] == "orders-4"]
        assert len(moved) > 10, "too few orders moved to prove anything: %d" % len(moved)
        changed = [(o, before[o][0][1], after[o][0][1]) for o in after
                   if after[o][0][1] != before[o][0][1]]
        assert not changed, "rows changed by the move: %s" % changed[:2]
        where = owners(run, sorted({v[0][1]["customer_id"] for v in after.values()}))
        misplaced = [o for o, v in after.items() if v[0][0] != where[v[0][1]["customer_id"]]]
        assert not misplaced, misplaced[:5]
        h = Http(GW_PORT)
        for oid, body in stored.items():
            st, got = h.request("GET", "/v1/orders/%s?customer_id=%s" % (oid, body["customer_id"]))
            assert st == 200 and got == body, (oid, got, body)
        h.close()
    except BaseException:
        print(run.logtext()[-4000:])
        raise
    finally:
        assert run.stop() == 0
        drop_table(table, store)


class FullWriter:
    """Creates, patches and deletes orders of the default shape through
    polygate and keeps the last acknowledged body of each (None: deleted);
    outcomes it cannot know (a broken connection, a 5xx) are set aside."""

    def __init__(self, tag):
        self.tag = tag
        self.acked = {}
        self.uncertain = set()
        self.stop = threading.Event()
        self.ops = 0

    def run(self, seed):
        rnd = random.Random(seed)
        h = Http(GW_PORT)
        mine = []
        n = 0
        while not self.stop.is_set():
            live = [o for o in mine if self.acked.get(o) is not None and o not in self.uncertain]
            op = rnd.random()
            if op < 0.5 or len(live) < 10:
                n += 1
                o = full_order(n, "dw-%s-%03d" % (self.tag, rnd.randrange(60)))
                o["order_id"] = "dw-%s-%d-%05d" % (self.tag, seed, n)
                st, body = h.request("POST", "/v1/orders", o)
                self.record(o["order_id"], st, 201, body)
                mine.append(o["order_id"])
            elif op < 0.85:
                oid = rnd.choice(live)
                cust = self.acked[oid]["customer_id"]
                change = {"status": rnd.choice(STATUSES),
                          "items": [{"product_id": "P-%d" % rnd.randrange(99), "quantity": 1}],
                          "total_amount": "%d.%02d" % (rnd.randrange(9999), rnd.randrange(100))}
                st, body = h.request("PATCH", "/v1/orders/%s?customer_id=%s" % (oid, cust),
                                     {"set": change})
                self.record(oid, st, 200, body)
            else:
                oid = rnd.choice(live)
                cust = self.acked[oid]["customer_id"]
                st, _ = h.request("DELETE", "/v1/orders/%s?customer_id=%s" % (oid, cust))
                self.record(oid, st, 204, None)
            self.ops += 1
        h.close()

    def record(self, oid, st, ok, body):
        if st == ok:
            self.acked[oid] = body
        elif st is None or st >= 500:
            self.uncertain.add(oid)


class Reader:
    """GETs orders nobody writes during the move: each must answer 200 with
    the body it was created with, every time."""

    def __init__(self, orders):
        self.orders = orders
        self.stop = threading.Event()
        self.reads = 0
        self.failures = []

    def run(self):
        h = Http(GW_PORT)
        ids = sorted(self.orders)
        i = 0
        while not self.stop.is_set():
            oid = ids[i % len(ids)]
            body = self.orders[oid]
            st, got = h.request("GET", "/v1/orders/%s?customer_id=%s" % (oid, body["customer_id"]))
            if st != 200 or got != body:
                self.failures.append((oid, st, got))
            self.reads += 1
            i += 1
        h.close()


def check_readable(orders):
    """Every order (order_id → body, None: deleted) reads back whole."""
    h = Http(GW_PORT)
    bad = []
    for oid, body in orders.items():
        if body is None:
            continue
        st, got = h.request("GET", "/v1/orders/%s?customer_id=%s" % (oid, body["customer_id"]))
        if st != 200 or got != body:
            bad.append((oid, st, got, body))
    h.close()
    assert not bad, "orders not readable as acknowledged: %s" % bad[:3]


def test_default_config_adds_and_removes_the_spare_shard_under_traffic():
    """The README's flow on the default config: `polygatectl shardmap apply`
    of a map adding orders-4 while orders are written and read; the
    rebalance completes and every order reads back whole; the map without
    orders-4 is applied the same way and completes too."""
    table = "orders_rbflow"
    run = DefaultRun(table)
    writer, reader, threads = FullWriter("a"), None, []

    def stop_traffic():
        writer.stop.set()
        if reader is not None:
            reader.stop.set()
        for t in threads:
            t.join(timeout=30)

    try:
        h = Http(GW_PORT)
        quiet = {}
        for i in range(200):
            o = full_order(i, "dq-%03d" % (i % 70))
            o["order_id"] = "dq-%04d" % i
            st, body = h.request("POST", "/v1/orders", o)
            assert st == 201, body
            quiet[o["order_id"]] = body
        h.close()
        reader = Reader(quiet)
        threads = [threading.Thread(target=writer.run, args=(s,)) for s in (1, 2)]
        threads.append(threading.Thread(target=reader.run))
        for t in threads:
            t.start()
        doc = default_map_doc()
        four = doc["shards"]
        for step, shards in ((1, four + [shard("orders-4")]), (2, four)):
            wait_ops(writer, writer.ops + 50)  # the map is applied under traffic
            ops_before = writer.ops
            doc = dict(doc, version=doc["version"] + 1, shards=shards)
            run.apply(doc)
            status = run.wait_done(timeout=240)
            during = writer.ops - ops_before
            assert status["state"] == "done", status
            assert status["slots_done"] == status["slots_total"] > 600, status
            _, sm = run.admin("GET", "/admin/shardmap")
            (b,) = sm["backends"]
            assert b["version"] == doc["version"] and b["migration"] is None, b
            assert [s["name"] for s in b["shards"]] == [s["name"] for s in shards], b
            assert during >= 20, "only %d write(s) during the move" % during
        stop_traffic()
        assert reader.reads > 100 and not reader.failures, (reader.reads, reader.failures[:3])
        assert len(writer.acked) > 50, len(writer.acked)
        check_readable(quiet)
        check_readable({o: b for o, b in writer.acked.items() if o not in writer.uncertain})
        c = my("orders-4")
        with c.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM `%s`" % table)
            assert cur.fetchone()[0] == 0, "rows left on the removed shard"
        c.close()
    except BaseException:
        print(run.logtext()[-4000:])
        raise
    finally:
        stop_traffic()
        assert run.stop() == 0
        drop_table(table)


def test_abort_writes_a_readable_map_and_keeps_the_previous_file():
    """After an abort the map file is one an operator can read: a header
    saying what happened and when, one line per shard, the overrides as
    ranges several to a line (only the slots the ring of its shards would
    give elsewhere), and the file as it was beside it as <map>.prev.  A
    restart on it keeps every slot where the abort left it."""
    import yaml
    four = ["orders-0", "orders-1", "orders-2", "orders-3"]
    run = Run(four)
    try:
        with open(run.map) as f:
            original = f.read()
        h = Http(GW_PORT)
        orders = {}
        for i in range(120):
            body = {"order_id": "ab-%04d" % i, "customer_id": "ab-c%03d" % (i % 60),
                    "status": "PENDING", "total_amount": "%d.50" % i, "payment_method": "x"}
            st, got = h.request("POST", "/v1/orders", body)
            assert st == 201, got
            orders[body["order_id"]] = got
        h.close()
        st, body = run.admin("PUT", "/admin/shardmap",
                             {"version": 2, "slots": 4096, "shards": [shard(s) for s in four + ["orders-4"]]})
        assert st == 202, body
        deadline = time.time() + 30
        while time.time() < deadline:
            _, status = run.admin("GET", "/admin/rebalance")
            if status["slots_done"] >= 20:
                break
            time.sleep(0.02)
        st, body = run.admin("POST", "/admin/rebalance/abort")
        assert st == 200, body
        status = run.wait_done()
        assert status["state"] == "aborted", status
        moved = status["slots_done"]
        assert 20 <= moved < status["slots_total"], status
        _, sm = run.admin("GET", "/admin/shardmap")
        slots_before = {s["name"]: s["slots"] for s in sm["backends"][0]["shards"]}
        assert slots_before["orders-4"] == moved, sm
        with open(run.map) as f:
            text = f.read()
        lines = text.splitlines()
        assert lines[0].startswith("# Written by polygate at 20"), lines[:3]
        head = " ".join(l for l in lines if l.startswith("#"))
        assert "'orders-mysql'" in head and "version 1 to 2 was ABORTED" in head, head
        assert "after %d of %d slot move(s)" % (moved, status["slots_total"]) in head, head
        assert "orders.shardmap.yaml.prev" in head, head
        assert len(lines) < 300, "%d lines" % len(lines)
        assert sum(1 for l in lines if l.startswith("  - {name: ")) == 5, text[:2000]
        doc = yaml.safe_load(text)
        assert doc["version"] == 2 and doc["slots"] == 4096 and len(doc["shards"]) == 5, doc
        pinned = 0
        for rng, owner in doc["overrides"].items():
            a, _, b = str(rng).partition("-")
            pinned += int(b or a) - int(a) + 1
            assert owner in slots_before, (rng, owner)
        # only the slots not moved yet need pinning (adding a shard), not every slot
        assert pinned < 4096 / 2, pinned
        with open(run.map + ".prev") as f:
            assert f.read() == original
        # the file is the active map: a restart serves the same owners
        assert run.kill(signal.SIGTERM) == 0
        run.start()
        _, sm = run.admin("GET", "/admin/shardmap")
        (b,) = sm["backends"]
        assert b["version"] == 2 and b["migration"] is None, b
        assert {s["name"]: s["slots"] for s in b["shards"]} == slots_before, b
        h = Http(GW_PORT)
        for oid, body in orders.items():
            st, got = h.request("GET", "/v1/orders/%s?customer_id=%s" % (oid, body["customer_id"]))
            assert st == 200 and got == body, (oid, st, got)
        h.close()
    except BaseException:
        print(run.logtext()[-4000:])
        raise
    finally:
        assert run.stop() == 0


@pytest.mark.parametrize("content,words", [
    ("{version: [1, ", "is unreadable"),
    ('{"backend": "orders-mysql", "to": {"version": 2}, "done": []}', "rebalance state"),
    ("", "rebalance state"),
], ids=["not-yaml", "no-from-map", "empty"])
def test_unreadable_state_file_refuses_to_start(content, words):
    """A rebalance state file polygate cannot use stops the start-up with a
    message naming it: serving without it could show stale or partial
    copies of moved slots."""
    tmp = tempfile.mkdtemp(prefix="polygate-rbst-")
    try:
        mp = os.path.join(tmp, "orders.shardmap.yaml")
        with open(mp, "w") as f:
            json.dump({"version": 1, "slots": 4096, "shards": [shard("orders-%d" % i) for i in range(4)]}, f)
        with open(mp + ".rebalance", "w") as f:
            f.write(content)
        cfg = os.path.join(tmp, "polygate.yaml")
        with open(cfg, "w") as f:
            f.write(map_gateway_config(GW_PORT, GW_ADMIN, mp, TABLE, 4000))
        p = subprocess.run([conftest.BIN, "-c", cfg], capture_output=True, text=True, timeout=30)
        out = p.stdout + p.stderr
        assert p.returncode != 0, out
        assert "cannot start" in out and words in out and mp + ".rebalance" in out, out
        assert os.path.exists(mp + ".rebalance")  # left for the operator to look at
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("then", ["fixed", "abort"])
def test_verify_failure_keeps_the_slot_on_its_source(then):
    """A copy that does not verify (a trigger on the new shard changes the
    orders marked 'poison' as they are written there) is never switched:
    the slot stays on its source, readable and writable there, and is
    retried.  Once the copy can verify (trigger dropped) the rebalance
    completes; an abort instead rolls the partial copy back."""
    four = ["orders-0", "orders-1", "orders-2", "orders-3"]
    run = Run(four)
    c4 = None
    try:
        customers = ["px-%03d" % i for i in range(40)]
        writer = Writer(customers)
        h = Http(GW_PORT)
        for i, cust in enumerate(customers * 2):
            oid = "px-%04d" % i
            st, body = h.request("POST", "/v1/orders", {"order_id": oid, "customer_id": cust,
                                                         "status": "PENDING", "total_amount": "7.25",
                                                         "payment_method": "poison"})
            assert st == 201, body
            writer.state[oid] = (cust, {"status": "PENDING", "total_amount": "7.25"})
        # the new shard's table, as the gateway created it, with the trigger
        c0 = my("orders-0")
        with c0.cursor() as cur:
            cur.execute("SHOW CREATE TABLE " + TABLE)
            ddl = cur.fetchone()[1]
        c0.close()
        c4 = my("orders-4")
        with c4.cursor() as cur:
            cur.execute(ddl)
            cur.execute("CREATE TRIGGER %s_poison BEFORE INSERT ON %s FOR EACH ROW SET "
                        "NEW.total_amount = IF(NEW.payment_method = 'poison', "
                        "NEW.total_amount + 1, NEW.total_amount)" % (TABLE, TABLE))
        st, body = run.admin("PUT", "/admin/shardmap",
                             {"version": 2, "slots": 4096, "shards": [shard(s) for s in four + ["orders-4"]]})
        assert st == 202, body
        deadline = time.time() + 60
        while time.time() < deadline:
            _, status = run.admin("GET", "/admin/rebalance")
            failed = [e for e in status["errors"] if "verify of slot" in e]
            if failed or status["state"] != "running":
                break
            time.sleep(0.05)
        assert failed, status
        slot = int(failed[0].split("verify of slot ")[1].split(" ")[0])
        assert "(table %s) failed" % TABLE in failed[0] and "'orders-4' has" in failed[0], failed
        assert status["state"] == "running" and status["slots_done"] < status["slots_total"], status
        # the slot stays on its source: its orders read and write there
        where = {c: None for c in customers}
        hr = Http(GW_ADMIN)
        for c in customers:
            st, r = hr.request("GET", "/admin/route/orders?customer_id=" + c)
            assert st == 200, r
            where[c] = (r["slot"], r["shard"])
        hr.close()
        stuck = [c for c in customers if where[c][0] == slot]
        assert stuck and all(where[c][1] != "orders-4" for c in stuck), (slot, where)
        for oid, (cust, content) in sorted(writer.state.items()):
            if cust in stuck:
                st, got = h.request("GET", "/v1/orders/%s?customer_id=%s" % (oid, cust))
                assert st == 200 and got["total_amount"] == 7.25, got
                st, got = h.request("PATCH", "/v1/orders/%s?customer_id=%s" % (oid, cust),
                                    {"set": {"status": "SHIPPED"}})
                assert st == 200, got
                writer.state[oid] = (cust, {"status": "SHIPPED", "total_amount": "7.25"})
        st, body = h.request("POST", "/v1/orders/_aggregate",
                             {"where": {"payment_method": "poison"}, "aggregates": {"n": {"count": "*"}}})
        assert st == 200 and body["items"][0]["n"] == 80, body  # the copy on orders-4 is not counted
        h.close()
        if then == "fixed":
            with c4.cursor() as cur:
                cur.execute("DROP TRIGGER %s_poison" % TABLE)
            status = run.wait_done(timeout=120)
            assert status["state"] == "done" and status["slots_done"] == status["slots_total"], status
        else:
            st, body = run.admin("POST", "/admin/rebalance/abort")
            assert st == 200, body
            status = run.wait_done(timeout=60)
            assert status["state"] == "aborted", status
            with c4.cursor() as cur:  # the partial copy is rolled back
                cur.execute("SELECT COUNT(*) FROM %s WHERE _slot = %%s" % TABLE, (slot,))
                assert cur.fetchone()[0] == 0
            _, sm = run.admin("GET", "/admin/shardmap")
            assert sm["backends"][0]["migration"] is None, sm
            with c4.cursor() as cur:
                cur.execute("DROP TRIGGER %s_poison" % TABLE)
        rows = check_data(run, writer, four + ["orders-4"])
        assert all(rows[o][0][3] == "7.25" for o in writer.state), "a total changed"
    except BaseException:
        print(run.logtext()[-4000:])
        raise
    finally:
        if c4 is not None:
            c4.close()
        assert run.stop() == 0


def test_target_table_that_cannot_take_the_rows_is_retried():
    """The new shard's table lacks a column (created by hand, so the mover's
    CREATE TABLE IF NOT EXISTS keeps it): every attempt at the first slot
    fails on the target and is retried, the slot stays on its source and
    nothing is frozen for good; once the column is back the rebalance
    completes with every order in place."""
    four = ["orders-0", "orders-1", "orders-2", "orders-3"]
    run = Run(four)
    c4 = None
    try:
        customers = ["tc-%03d" % i for i in range(60)]
        writer = Writer(customers)
        h = Http(GW_PORT)
        for i, cust in enumerate(customers * 2):
            oid = "tc-%04d" % i
            st, body = h.request("POST", "/v1/orders", {"order_id": oid, "customer_id": cust,
                                                         "status": "PENDING", "total_amount": "3.10",
                                                         "payment_method": "card"})
            assert st == 201, body
            writer.state[oid] = (cust, {"status": "PENDING", "total_amount": "3.10"})
        c0 = my("orders-0")
        with c0.cursor() as cur:
            cur.execute("SHOW CREATE TABLE " + TABLE)
            ddl = cur.fetchone()[1]
            cur.execute("SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE "
                        "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = "
                        "'payment_method'", (TABLE,))
            ptype = cur.fetchone()[0]
        c0.close()
        c4 = my("orders-4")
        with c4.cursor() as cur:
            cur.execute(ddl)
            cur.execute("ALTER TABLE %s DROP COLUMN payment_method" % TABLE)
        st, body = run.admin("PUT", "/admin/shardmap",
                             {"version": 2, "slots": 4096, "shards": [shard(s) for s in four + ["orders-4"]]})
        assert st == 202, body
        deadline = time.time() + 60
        while time.time() < deadline:
            _, status = run.admin("GET", "/admin/rebalance")
            if status["error_count"] >= 2 or status["state"] != "running":
                break
            time.sleep(0.05)
        assert status["state"] == "running" and status["error_count"] >= 2, status
        assert status["slots_done"] == 0, status  # the first slot is retried, never skipped
        assert all("payment_method" in e and "'orders-4'" in e and "retrying" in e
                   for e in status["errors"]), status["errors"]
        # nothing stays frozen: every order can be written meanwhile
        for oid, (cust, content) in sorted(writer.state.items())[:40]:
            st, got = h.request("PATCH", "/v1/orders/%s?customer_id=%s" % (oid, cust),
                                {"set": {"status": "DELIVERED"}})
            assert st == 200, (oid, got)
            writer.state[oid] = (cust, {"status": "DELIVERED", "total_amount": "3.10"})
        h.close()
        with c4.cursor() as cur:
            cur.execute("ALTER TABLE %s ADD COLUMN payment_method %s" % (TABLE, ptype))
        status = run.wait_done(timeout=120)
        assert status["state"] == "done" and status["slots_done"] == status["slots_total"], status
        check_data(run, writer, four + ["orders-4"])
    except BaseException:
        print(run.logtext()[-4000:])
        raise
    finally:
        if c4 is not None:
            c4.close()
        assert run.stop() == 0


def test_long_store_errors_stay_valid_utf8_in_the_status():
    """A store error longer than the status keeps is cut on a whole UTF-8
    character and marked '…' (the new shard refuses every row with a long
    non-ASCII message), so GET /admin/rebalance stays valid JSON text."""
    four = ["orders-0", "orders-1", "orders-2", "orders-3"]
    run = Run(four)
    c4 = None
    try:
        h = Http(GW_PORT)
        for i in range(100):
            st, body = h.request("POST", "/v1/orders", {"order_id": "u8-%04d" % i,
                                                         "customer_id": "u8-%03d" % i,
                                                         "status": "PENDING", "total_amount": "1.00"})
            assert st == 201, body
        h.close()
        c0 = my("orders-0")
        with c0.cursor() as cur:
            cur.execute("SHOW CREATE TABLE " + TABLE)
            ddl = cur.fetchone()[1]
        c0.close()
        c4 = my("orders-4")
        with c4.cursor() as cur:
            cur.execute(ddl)
            cur.execute("CREATE TRIGGER %s_refuse BEFORE INSERT ON %s FOR EACH ROW SIGNAL SQLSTATE "
                        "'45000' SET MESSAGE_TEXT = '%s'" % (TABLE, TABLE, "\u20ac" * 120))
        st, body = run.admin("PUT", "/admin/shardmap",
                             {"version": 2, "slots": 4096, "shards": [shard(s) for s in four + ["orders-4"]]})
        assert st == 202, body
        deadline = time.time() + 60
        errors = []
        while time.time() < deadline and not errors:
            conn = http.client.HTTPConnection("127.0.0.1", GW_ADMIN, timeout=10)
            conn.request("GET", "/admin/rebalance")
            raw = conn.getresponse().read()
            conn.close()
            status = json.loads(raw.decode("utf-8"))  # strict: fails on a cut character
            errors = [e for e in status["errors"] if "\u20ac" in e]
            time.sleep(0.05)
        assert errors, status
        assert errors[0].endswith("\u20ac\u2026") and len(errors[0].encode()) <= 255, errors[0]
        st, body = run.admin("POST", "/admin/rebalance/abort")
        assert st == 200, body
        assert run.wait_done(timeout=60)["state"] == "aborted"
    except BaseException:
        print(run.logtext()[-4000:])
        raise
    finally:
        if c4 is not None:
            with c4.cursor() as cur:
                cur.execute("DROP TRIGGER IF EXISTS %s_refuse" % TABLE)
            c4.close()
        assert run.stop() == 0
