"""Online rebalancing (issue 6, docs/rebalancing.md): a writer inserts,
updates and deletes orders through polygate the whole time and records every
acknowledged operation, while a new shard map adds a 5th shard / removes one
(/ and polygate is killed in the middle of the move and restarted).  Then,
straight from MariaDB: every acknowledged order is present exactly once with
its last acknowledged content, every acknowledged delete is absent, every
row is on the shard the new map names.  Meanwhile scatter queries never see
an order twice or miss one.

Private gateway on PORT + 8 / ADMIN_PORT + 8, table orders_rb (dropped on
the 5 databases before each run), map file in a temp dir."""
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

import pymysql
import pytest

import conftest

from conftest import (ADMIN_PORT, MYSQL_SHARDS, PORT, map_gateway_config, mysql_shard,
                      wait_port)


GW_PORT = PORT + 8
GW_ADMIN = ADMIN_PORT + 8
TABLE = "orders_rb"

DBS = MYSQL_SHARDS
shard = mysql_shard


def my(name):
    port, db = DBS[name]
    return pymysql.connect(host="127.0.0.1", port=port, user="root", password="", database=db,
                           autocommit=True)


def drop_tables():
    for name in DBS:
        c = my(name)
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
    def __init__(self, shards):
        drop_tables()
        self.tmp = tempfile.mkdtemp(prefix="polygate-rb-")
        self.map = os.path.join(self.tmp, "orders.shardmap.yaml")
        with open(self.map, "w") as f:
            json.dump({"version": 1, "slots": 4096, "shards": [shard(s) for s in shards]}, f)
        self.proc = None
        self.start()

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
                f.write(map_gateway_config(GW_PORT, GW_ADMIN, self.map, TABLE, 4000,
                                           ["payment_method: string"]))
            self.proc = subprocess.Popen([conftest.BIN, "-c", cfg], stdout=self.logf,
                                         stderr=subprocess.STDOUT)
            deadline = time.time() + 20
            while self.proc.poll() is None and time.time() < deadline:
                if wait_port(GW_PORT, timeout=0.5) and wait_port(GW_ADMIN, timeout=0.5):
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
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        self.proc = None
        if rc != 0:
            print("polygate exited with %s:\n%s" % (rc, self.logtext()[-6000:]))
        shutil.rmtree(self.tmp, ignore_errors=True)
        return rc

    def wait_done(self, timeout=240):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            st, body = self.admin("GET", "/admin/rebalance")
            if st == 200:
                last = body
                if body["state"] in ("done", "aborted"):
                    return body
            time.sleep(0.2)
        raise AssertionError("rebalance did not finish: %s\n%s" % (last, self.logtext()[-3000:]))


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
        c = my(name)
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


def scenario(before, after, kill_at=None, sig=signal.SIGKILL):
    run = Run(before)
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
            time.sleep(1.0)
            doc = {"version": 2, "slots": 4096, "shards": [shard(s) for s in after]}
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
                time.sleep(0.5)
                run.start()
            status = run.wait_done()
            assert status["state"] == "done", status
            assert status["slots_done"] == status["slots_total"]
            time.sleep(1.0)  # traffic on the new map
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


def test_add_a_fifth_shard_under_writes():
    run, b, writer = scenario(["orders-0", "orders-1", "orders-2", "orders-3"],
                              ["orders-0", "orders-1", "orders-2", "orders-3", "orders-4"])
    try:
        fifth = [s for s in b["shards"] if s["name"] == "orders-4"][0]
        assert 4096 / 5 * 0.8 < fifth["slots"] < 4096 / 5 * 1.2, b
    finally:
        assert run.stop() == 0


def test_remove_a_shard_under_writes():
    run, b, writer = scenario(["orders-0", "orders-1", "orders-2", "orders-3", "orders-4"],
                              ["orders-0", "orders-1", "orders-2", "orders-3"])
    try:
        c = my("orders-4")
        with c.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM " + TABLE)
            assert cur.fetchone()[0] == 0
        c.close()
    finally:
        assert run.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_mid_move_resumes_on_restart(sig):
    run, b, writer = scenario(["orders-0", "orders-1", "orders-2", "orders-3"],
                              ["orders-0", "orders-1", "orders-2", "orders-3", "orders-4"],
                              kill_at=100, sig=sig)
    try:
        fifth = [s for s in b["shards"] if s["name"] == "orders-4"][0]
        assert 4096 / 5 * 0.8 < fifth["slots"] < 4096 / 5 * 1.2, b
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
        time.sleep(0.3)
        _, a = run.admin("GET", "/admin/rebalance")
        time.sleep(0.5)
        _, b = run.admin("GET", "/admin/rebalance")
        assert b["state"] == "paused" and b["slots_done"] == a["slots_done"], (a, b)
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
