"""A fleet's shared state (config `control`, gateway/gw_shared.h): two gateway
instances share the Idempotency-Key store and the per-key rate limits through
the stack's Redis, so a retry landing on the other instance gets the first
answer and a key's rate holds for the fleet, not per instance.

Ports: instance A PORT + 85 / ADMIN_PORT + 85 (its PostgreSQL through this
run's Toxiproxy proxy, to slow a write down), instance B PORT + 87 /
ADMIN_PORT + 87, and instance C PORT + 89 / ADMIN_PORT + 89, whose shared
Redis is reached through the proxy, to take the shared store away without
touching the stack's Redis.  Every instance keeps its keys under
control.prefix /polygate/_p<PORT>, in this run's Redis database."""
import hashlib
import re
import threading
import time
import uuid

import psycopg2
import pytest

from conftest import (ADMIN_PORT, CONFIG, NS, PG_DB, PORT, PROXY_PORTS, STORE_PORTS, Client,
                      Gateway, assert_error, poll)

A_PORT, A_ADMIN = PORT + 85, ADMIN_PORT + 85
B_PORT, B_ADMIN = PORT + 87, ADMIN_PORT + 87
C_PORT, C_ADMIN = PORT + 89, ADMIN_PORT + 89
PREFIX = "/polygate/" + NS
WRITER_KEY = "fleet-writer-key-0123456789abcdef"
LIMITED_KEY = "fleet-limited-key-0123456789abcde"
OPS_KEY = "fleet-ops-key-0123456789abcdefghij"
RATE, BURST = 10, 5  # the limited key's rate: per second, burst


def fleet_config(port, admin, pg_proxy=False, redis_port=STORE_PORTS["redis"]):
    with open(CONFIG) as f:
        text = f.read()
    text = text.replace("18080", str(port)).replace("19090", str(admin))
    # the slow-write test makes a store round trip take ~1 s: room for it
    text = text.replace("request_timeout_ms: 1500", "request_timeout_ms: 5000")
    if pg_proxy:
        text = text.replace("port=%d " % STORE_PORTS["pg"], "port=%d " % PROXY_PORTS["pg"], 1)
    auth = """
auth:
  keys:
    - name: fleet-writer
      key_sha256: "%s"
      grants: {"*": [read, write]}
    - name: fleet-limited
      key_sha256: "%s"
      grants: {sessions: [read]}
      rate: {per_second: %d, burst: %d}
    - name: fleet-ops
      key_sha256: "%s"
      grants: {"*": [read, admin]}
""" % (hashlib.sha256(WRITER_KEY.encode()).hexdigest(),
       hashlib.sha256(LIMITED_KEY.encode()).hexdigest(), RATE, BURST,
       hashlib.sha256(OPS_KEY.encode()).hexdigest())
    text = re.sub(r"\nauth:\n  enabled: false[^\n]*\n", auth, text)
    assert "fleet-writer" in text
    # etcd is named (the control section requires it) but not contacted here;
    # the Redis database is this run's (conftest's namespaced() points it there)
    text += """
control:
  etcd: 127.0.0.1:52379
  prefix: %s
  redis: redis://127.0.0.1:%d/1
""" % (PREFIX, redis_port)
    return text


def writer(extra=None):
    h = {"Authorization": "Bearer " + WRITER_KEY}
    h.update(extra or {})
    return h


def limited():
    return {"Authorization": "Bearer " + LIMITED_KEY}


def metrics(admin):
    c = Client(admin)
    try:
        c.conn.request("GET", "/metrics", headers={"Authorization": "Bearer " + OPS_KEY})
        resp = c.conn.getresponse()
        text = resp.read().decode()
        assert resp.status == 200, text
        return text
    finally:
        c.close()


def counter(admin, series):
    """The value of one series, e.g. 'x_total{a="b"}' (0 when absent)."""
    for line in metrics(admin).splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


def store_up(admin):
    return counter(admin, "polygate_shared_store_up") == 1


@pytest.fixture(scope="module")
def fleet(toxiproxy):
    for p in toxiproxy.values():
        p.reset()
    a = Gateway(fleet_config(A_PORT, A_ADMIN, pg_proxy=True), port=A_PORT)
    try:
        b = Gateway(fleet_config(B_PORT, B_ADMIN), port=B_PORT)
    except Exception:
        a.stop()
        raise
    try:
        assert poll(lambda: store_up(A_ADMIN) and store_up(B_ADMIN), timeout=10)
        yield a, b
    finally:
        ra, rb = a.stop(), b.stop()
        assert ra == 0 and rb == 0, (ra, rb)


def idem_rkey(k, scope="fleet-writer"):
    return "polygate:%s:idem:%d:%s:%s" % (PREFIX, len(scope), scope, k)


def pg_count(email):
    conn = psycopg2.connect(host="127.0.0.1", port=STORE_PORTS["pg"], user="postgres", dbname=PG_DB)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM users_test WHERE email = %s", (email,))
            return cur.fetchone()[0]
    finally:
        conn.close()


def new_user():
    return {"email": "fleet-%s@example.com" % uuid.uuid4().hex[:12], "first_name": "Fleet"}


def test_retry_on_other_instance_replays_first_answer(fleet, rdb):
    k = "fleet-" + uuid.uuid4().hex
    user = new_user()
    a, b = Client(A_PORT), Client(B_PORT)
    try:
        st, first, resp = a.request("POST", "/v1/users", user, headers=writer({"Idempotency-Key": k}))
        assert st == 201, first
        assert resp.getheader("Idempotent-Replayed") is None
        etag = resp.getheader("ETag")
        # the answer is kept in the shared Redis, under the fleet's prefix
        assert poll(lambda: rdb.hget(idem_rkey(k), "state") == "done", timeout=5)
        assert 0 < rdb.pttl(idem_rkey(k)) <= 86400 * 1000
        st, again, resp = b.request("POST", "/v1/users", user, headers=writer({"Idempotency-Key": k}))
        assert st == 201 and again == first
        assert resp.getheader("Idempotent-Replayed") == "true"
        assert resp.getheader("ETag") == etag
        # the write was applied once: one row in PostgreSQL
        assert pg_count(user["email"]) == 1
        # the same key with another body, on B: refused, nothing written
        other = dict(user, first_name="Other")
        st, body, resp = b.request("POST", "/v1/users", other, headers=writer({"Idempotency-Key": k}))
        assert st == 422
        assert k in assert_error(body, "idempotency_key_reused", resp=resp)["message"]
        assert pg_count(user["email"]) == 1
        assert counter(B_ADMIN, 'polygate_shared_idempotency_total{result="replayed"}') >= 1
        assert counter(A_ADMIN, 'polygate_shared_idempotency_total{result="claimed"}') >= 1
    finally:
        a.close()
        b.close()


def test_retry_while_first_in_flight_is_409(fleet, toxics):
    k = "fleet-" + uuid.uuid4().hex
    user = new_user()
    # A's PostgreSQL answers ~1 s late: its write is in flight for that long
    toxics["pg"].toxic("latency", latency=1000)
    out = []

    def first():
        c = Client(A_PORT)
        try:
            out.append(c.request("POST", "/v1/users", user, headers=writer({"Idempotency-Key": k})))
        finally:
            c.close()

    t = threading.Thread(target=first)
    t.start()
    b = Client(B_PORT)
    try:
        time.sleep(0.4)
        st, body, resp = b.request("POST", "/v1/users", user, headers=writer({"Idempotency-Key": k}))
        t.join(15)
        assert st == 409, body
        assert_error(body, "idempotency_in_progress", resp=resp)
        assert resp.getheader("Retry-After") == "1"
        assert out and out[0][0] == 201, out
        # once A answered, B replays it
        st, again, resp = b.request("POST", "/v1/users", user, headers=writer({"Idempotency-Key": k}))
        assert st == 201 and again == out[0][1]
        assert resp.getheader("Idempotent-Replayed") == "true"
        assert pg_count(user["email"]) == 1
    finally:
        t.join(15)
        b.close()


def hammer(port, seconds, counts):
    """GET as fast as one connection goes for `seconds` with the limited key;
    counts["ok"] / counts["limited"]."""
    c = Client(port)
    end = time.time() + seconds
    try:
        while time.time() < end:
            st, body, _ = c.request("GET", "/v1/sessions/fleet-rate", headers=limited())
            if st == 429:
                assert_error(body, "rate_limited")
                counts["limited"] += 1
            else:
                assert st == 404, body  # admitted (the item does not exist)
                counts["ok"] += 1
            time.sleep(0.003)
    finally:
        c.close()


def test_rate_limit_holds_for_the_fleet(fleet, rdb):
    rdb.delete("polygate:%s:rate:fleet-limited" % PREFIX)  # a full bucket
    seconds = 3.0
    ca, cb = {"ok": 0, "limited": 0}, {"ok": 0, "limited": 0}
    ts = [threading.Thread(target=hammer, args=(A_PORT, seconds, ca)),
          threading.Thread(target=hammer, args=(B_PORT, seconds, cb))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 15)
    accepted = ca["ok"] + cb["ok"]
    expect = BURST + RATE * seconds  # one bucket for both: 35
    # each instance alone would admit `expect`: both together twice that
    assert expect - 6 <= accepted <= expect + 6, (ca, cb)
    assert ca["ok"] > 0 and cb["ok"] > 0 and ca["limited"] > 0 and cb["limited"] > 0, (ca, cb)
    for admin in (A_ADMIN, B_ADMIN):
        assert counter(admin, 'polygate_ratelimit_decisions_total{source="shared",decision="limited"}') > 0


def test_batch_pays_per_operation_in_the_fleet_bucket(fleet, rdb):
    rdb.delete("polygate:%s:rate:fleet-limited" % PREFIX)  # a full bucket: BURST tokens
    ops = [{"op": "get", "domain": "sessions", "id": "fleet-b%d" % i} for i in range(BURST)]
    a, b = Client(A_PORT), Client(B_PORT)
    try:
        st, body, _ = a.request("POST", "/v1/_batch", ops, headers=limited())
        assert st == 200 and [r["status"] for r in body["results"]] == [404] * BURST, body
        # the same cost on B right after: the fleet's bucket is empty (it
        # refills RATE tokens per second, BURST take half a second)
        st, body, resp = b.request("POST", "/v1/_batch", ops, headers=limited())
        assert st == 429, body
        err = assert_error(body, "rate_limited", resp=resp)
        assert "costs %d tokens" % BURST in err["message"]
        assert int(resp.getheader("Retry-After")) >= 1
    finally:
        a.close()
        b.close()


@pytest.fixture
def proxied(toxics):
    """Instance C: its shared Redis through this run's proxy."""
    gw = Gateway(fleet_config(C_PORT, C_ADMIN, redis_port=PROXY_PORTS["redis"]), port=C_PORT)
    try:
        assert poll(lambda: store_up(C_ADMIN), timeout=10)
        yield toxics["redis"]
    finally:
        toxics["redis"].up()
        assert gw.stop() == 0


def test_shared_store_down_refuses_keyed_writes_only(proxied, rdb):
    c = Client(C_PORT)
    try:
        proxied.down()
        assert poll(lambda: not store_up(C_ADMIN), timeout=5)
        k = "fleet-" + uuid.uuid4().hex
        sid = "fleet-down-" + uuid.uuid4().hex[:8]
        st, body, resp = c.request("PUT", "/v1/sessions/" + sid, {"user_id": "u1"},
                                   headers=writer({"Idempotency-Key": k}))
        assert st == 503, body
        err = assert_error(body, "backend_unavailable", resp=resp)
        assert "shared Idempotency-Key store" in err["message"]
        assert resp.getheader("Retry-After") == "1"
        # never run without the guarantee: nothing was written
        st, _, _ = c.request("GET", "/v1/sessions/" + sid, headers=writer())
        assert st == 404
        # a write without the header does not depend on the shared store
        st, item, _ = c.request("PUT", "/v1/sessions/" + sid, {"user_id": "u1"}, headers=writer())
        assert st == 201, item
        # rate limits fail open to the instance's own bucket
        counts = {"ok": 0, "limited": 0}
        hammer(C_PORT, 2.0, counts)
        assert counts["limited"] > 0 and BURST <= counts["ok"] <= BURST + RATE * 2 + 4, counts
        assert counter(C_ADMIN, 'polygate_ratelimit_decisions_total{source="local",decision="allowed"}') \
            >= BURST
        assert counter(C_ADMIN, 'polygate_shared_idempotency_total{result="unavailable"}') >= 1
        # back: keyed writes run again
        proxied.up()
        assert poll(lambda: store_up(C_ADMIN), timeout=10)
        st, item, resp = c.request("PUT", "/v1/sessions/" + sid, {"user_id": "u2"},
                                   headers=writer({"Idempotency-Key": k}))
        assert st == 200 and item["user_id"] == "u2", item
        assert poll(lambda: rdb.hget(idem_rkey(k), "state") == "done", timeout=5)
    finally:
        c.close()
