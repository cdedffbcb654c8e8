"""Live shard map changes: GET / PUT /admin/shardmap and SIGHUP.

A private gateway (ports PORT + 7 / ADMIN_PORT + 7) with one sharded MySQL
domain (table orders_sm) whose shard map is a copy in the gateway's temp dir,
so that a PUT (which writes the map file) never touches the repository."""
import json
import os
import signal
import time

import pytest

import conftest

from conftest import (ADMIN_PORT, PORT, Client, Gateway, assert_error, map_gateway_config,
                      mysql_shard, wait_port)

GW_PORT = PORT + 7
GW_ADMIN = ADMIN_PORT + 7

SHARDS = [mysql_shard("orders-%d" % i) for i in range(4)]


def map_doc(version, shards=None, **extra):
    d = {"version": version, "slots": 4096, "shards": shards or SHARDS}
    d.update(extra)
    return d


class MapGateway:
    def __init__(self):
        import tempfile
        self.tmp = tempfile.mkdtemp(prefix="polygate-sm-")
        self.map = os.path.join(self.tmp, "orders.shardmap.yaml")
        with open(self.map, "w") as f:
            json.dump(map_doc(1), f)
        text = map_gateway_config(GW_PORT, GW_ADMIN, self.map, "orders_sm", 3000)
        # Gateway rewrites 18080/19090 only: our ports are already final
        self.gw = Gateway(config_text=text, port=GW_PORT)

    def admin(self, method, path, body=None):
        c = Client(port=GW_ADMIN)
        try:
            return c.request(method, path, body=body)
        finally:
            c.close()

    def stop(self):
        rc = self.gw.stop()
        import shutil
        shutil.rmtree(self.tmp, ignore_errors=True)
        return rc


@pytest.fixture(scope="module")
def mgw():
    g = MapGateway()
    assert wait_port(GW_ADMIN)
    yield g
    assert g.stop() == 0


def wait_log(g, cond, what, timeout=10):
    """Poll the gateway's log until cond(text) holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond(g.gw.logtext()):
            return
        time.sleep(0.02)
    raise AssertionError("%s did not show in the log within %d s:\n%s" % (
        what, timeout, g.gw.logtext()[-2000:]))


def active(g):
    st, body, _ = g.admin("GET", "/admin/shardmap")
    assert st == 200, body
    (b,) = body["backends"]
    return b


def test_get_shows_version_shards_and_slot_counts(mgw):
    b = active(mgw)
    assert b["backend"] == "orders-mysql" and b["version"] == 1 and b["slots"] == 4096
    assert [s["name"] for s in b["shards"]] == [s["name"] for s in SHARDS]
    assert sum(s["slots"] for s in b["shards"]) == 4096
    assert all(s["weight"] == 1 and 800 < s["slots"] < 1250 for s in b["shards"])
    assert b["migration"] is None and b["overrides"] == {}


@pytest.mark.parametrize("doc,code,words", [
    (map_doc(1), "conflict", "not higher than the active version 1"),
    (map_doc(0), "bad_request", "version"),
    (map_doc(5, slots=1024), "bad_request", "slot count cannot change"),
    (map_doc(5, overrides={"0-99": "orders-1", "50-60": "orders-2"}), "bad_request", "overlap"),
    (map_doc(5, overrides={"0-9": "orders-9"}), "bad_request", "orders-9"),
    (map_doc(5, shards=SHARDS + [{"name": "orders-4", "dsn": "mysql://root@127.0.0.1:1/orders_4"}]),
     "backend_unavailable", "shard 'orders-4' is not reachable"),
    (map_doc(5, shards=SHARDS[:3] + [{"name": "orders-4",
                                      "dsn": mysql_shard("orders-4")["dsn"]}]),
     "bad_request", "adds shard(s) 'orders-4' and removes 'orders-3'"),
    (map_doc(5, bogus=1), "bad_request", "bogus"),
    ({"version": 5}, "bad_request", "shards"),
    ([1, 2], "bad_request", "shard map object"),
])
def test_bad_maps_are_rejected_and_change_nothing(mgw, doc, code, words):
    with open(mgw.map) as f:
        before = f.read()
    st, body, resp = mgw.admin("PUT", "/admin/shardmap", body=doc)
    err = assert_error(body, code, resp=resp)
    assert words in err["message"], err
    assert active(mgw)["version"] == 1
    with open(mgw.map) as f:
        assert f.read() == before


def test_unparsable_body_is_rejected(mgw):
    c = Client(port=GW_ADMIN)
    try:
        st, body, resp = c.request("PUT", "/admin/shardmap", raw=b"version: [", headers={})
    finally:
        c.close()
    assert st == 400
    assert_error(body, "bad_request", resp=resp)
    assert active(mgw)["version"] == 1


def test_unknown_backend_and_method(mgw):
    st, body, resp = mgw.admin("PUT", "/admin/shardmap/nope", body=map_doc(9))
    assert st == 404 and "nope" in body["error"]["message"]
    st, body, resp = mgw.admin("DELETE", "/admin/shardmap")
    assert st == 405


def test_good_map_is_applied_persisted_and_traffic_continues(mgw):
    c = Client(port=GW_PORT)
    try:
        st, item, _ = c.request("POST", "/v1/orders", body={"customer_id": "sm-c1", "status": "PENDING",
                                                            "total_amount": "1.50"})
        assert st == 201, item
        # same owners, new version, overrides that pin slots to their owner
        with open(mgw.map) as f:
            previous = f.read()
        st, body, _ = mgw.admin("PUT", "/admin/shardmap", body=map_doc(2))
        assert st == 200, body
        deadline = time.time() + 5
        while active(mgw)["version"] != 2 and time.time() < deadline:
            time.sleep(0.05)
        assert active(mgw)["version"] == 2
        with open(mgw.map) as f:
            text = f.read()
        # readable YAML with a header, the file as it was kept beside it
        import yaml
        assert text.startswith("# Written by polygate at 20"), text[:300]
        assert "map version 2 applied by PUT /admin/shardmap" in text, text[:300]
        assert "orders.shardmap.yaml.prev" in text.splitlines()[1], text[:300]
        written = yaml.safe_load(text)
        assert written["version"] == 2 and written["slots"] == 4096, written
        assert [(x["name"], x["dsn"]) for x in written["shards"]] == \
            [(x["name"], x["dsn"]) for x in SHARDS], written
        with open(mgw.map + ".prev") as f:
            assert f.read() == previous
        st, got, _ = c.request("GET", "/v1/orders/%s?customer_id=sm-c1" % item["order_id"])
        assert st == 200, got
        assert got["total_amount"] == 1.5 and got["customer_id"] == "sm-c1", got
        # a SIGHUP re-reads the written file: unchanged map, same version, accepted
        reloads = mgw.gw.logtext().count(" reloaded ")
        mgw.gw.signal(signal.SIGHUP)
        wait_log(mgw, lambda t: t.count(" reloaded ") > reloads, "the reload")
        assert "reload rejected" not in mgw.gw.logtext()
        assert active(mgw)["version"] == 2
        # a map file edited to a lower version is refused on SIGHUP, the active one stays
        with open(mgw.map, "w") as f:
            json.dump(map_doc(1, shards=SHARDS[:2] + [dict(SHARDS[2], dsn=SHARDS[3]["dsn"]),
                                                       SHARDS[3]]), f)
        mgw.gw.signal(signal.SIGHUP)
        wait_log(mgw, lambda t: "reload rejected" in t, "the refused reload")
        assert active(mgw)["version"] == 2
        st, got, _ = c.request("DELETE", "/v1/orders/%s?customer_id=sm-c1" % item["order_id"])
        assert st == 204
    finally:
        c.close()


CTL = os.path.join(conftest.ROOT, "polygatectl")


def ctl(*args):
    import subprocess
    p = subprocess.run([CTL, "-a", "127.0.0.1:%d" % GW_ADMIN, *args], capture_output=True,
                       text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


def test_polygatectl(mgw, tmp_path):
    if not os.path.exists(CTL):
        pytest.fail("polygatectl not built (make)")
    rc, out, err = ctl("shardmap", "show")
    assert rc == 0, err
    assert "backend orders-mysql: version" in out and "orders-3" in out and "SLOTS" in out
    rc, out, err = ctl("route", "orders", "cust-42")
    assert rc == 0 and "orders cust-42 -> slot " in out and "shard orders-" in out, (out, err)
    rc, out, err = ctl("route", "nope", "x")
    assert rc == 1 and "unknown_domain" in err
    # a map adding a shard: the diff of slot moves, not applied without --yes
    f = tmp_path / "five.yaml"
    shards = "".join('  - {name: %s, dsn: "%s"}\n' % (s["name"], s["dsn"]) for s in SHARDS)
    f.write_text("version: 50\nslots: 4096\nshards:\n" + shards +
                 '  - {name: orders-4, dsn: "%s"}\n' % mysql_shard("orders-4")["dsn"])
    rc, out, err = ctl("shardmap", "apply", str(f))
    assert rc == 0, err
    assert "slot(s) move" in out and "-> orders-4" in out and "not applied" in out, out
    before = active(mgw)["version"]
    # a bad one is refused with polygate's message
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nslots: 4096\nshards:\n" + shards)
    rc, out, err = ctl("shardmap", "apply", str(bad), "--yes")
    assert rc == 1 and "not higher than the active version" in err, (out, err)
    assert active(mgw)["version"] == before
    rc, out, err = ctl("rebalance", "status")
    assert rc == 0 and out.startswith("rebalance "), (rc, out, err)
    rc, out, err = ctl("rebalance", "pause")
    assert rc == 1 and "no rebalance is running" in err
    rc, out, err = ctl("bogus")
    assert rc == 2


def test_polygatectl_routes_long_keys_whole(mgw):
    """A key of any length is sent whole (it was cut at a fixed buffer and
    another key's slot printed)."""
    import urllib.parse
    for key in ["k" + "\u00e9" * 300 + "-tail", "x" * 3000, "a b/c?d&e=%f#g"]:
        rc, out, err = ctl("route", "orders", key)
        assert rc == 0, (out, err)
        st, want, _ = mgw.admin("GET", "/admin/route/orders?key=" + urllib.parse.quote(key, safe=""))
        assert st == 200, want
        assert out.startswith("orders %s -> slot %d, shard %s " % (key, want["slot"], want["shard"])), (
            out[-200:], want)


def test_sighup_with_a_map_that_moves_slots_rebalances(mgw):
    """Editing the map file and SIGHUP: the same checks, then a rebalance."""
    import pymysql
    c = pymysql.connect(host="127.0.0.1", port=53306, user="root", password="",
                        database=conftest.MYSQL_SHARDS["orders-4"][1],
                        autocommit=True)
    with c.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS orders_sm")  # a new shard holds no rows
    c.close()
    cl = Client(port=GW_PORT)
    ids = []
    run = "hup-%d-" % int(time.time() * 1000)  # the table outlives runs
    try:
        for i in range(40):
            st, item, _ = cl.request("POST", "/v1/orders", body={"customer_id": run + str(i),
                                                                 "status": "PENDING",
                                                                 "total_amount": "2.00"})
            assert st == 201, item
            ids.append((item["order_id"], run + str(i)))
        five = SHARDS + [mysql_shard("orders-4")]
        with open(mgw.map, "w") as f:
            f.write("# edited by hand\n")
            json.dump(map_doc(10, shards=five), f)
        mgw.gw.signal(signal.SIGHUP)
        deadline = time.time() + 60
        while time.time() < deadline:
            st, rb, _ = mgw.admin("GET", "/admin/rebalance")
            if rb.get("state") == "done" and rb.get("to_version") == 10:
                break
            time.sleep(0.1)
        assert rb["state"] == "done", rb
        # "done" comes as the main thread starts loading the new map; the
        # workers serve it a moment later (docs/rebalancing.md section 4)
        deadline = time.time() + 20
        while active(mgw)["version"] != 10 and time.time() < deadline:
            time.sleep(0.05)
        b = active(mgw)
        assert b["version"] == 10 and len(b["shards"]) == 5, b
        assert 4096 / 5 * 0.8 < b["shards"][4]["slots"] < 4096 / 5 * 1.2, b
        for oid, cust in ids:
            st, got, _ = cl.request("GET", "/v1/orders/%s?customer_id=%s" % (oid, cust))
            assert st == 200, got
        st, body, _ = cl.request("POST", "/v1/orders/_aggregate",
                                 body={"where": {"customer_id": {"prefix": run}},
                                       "aggregates": {"n": {"count": "*"}}})
        assert st == 200 and body["items"][0]["n"] == 40, body
    finally:
        cl.close()
