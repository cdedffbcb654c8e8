"""Values longer than the fixed buffers that once held them, seen from
outside: a Redis password over 255 bytes in the DSN is used whole, a domain
name over 63 bytes keeps its own metrics label, and a catalog field name
over 158 bytes is summed by `_aggregate` (each was cut silently before)."""
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest
import redis as redislib

import conftest
from conftest import ADMIN_PORT, PORT, Client, Gateway, wait_port

# A private Redis that requires a long password (the stack's Redis has none).
AUTH_REDIS_PORT = PORT + 57
# the module's gateway, beside the suite's own on PORT
LV_PORT, LV_ADMIN = PORT + 56, ADMIN_PORT + 56
PASSWORD = "p" * 150 + "W" * 150  # 300 bytes: the old buffer kept the first 255
LONG_DOMAIN = "catalog_" + "l" * 92  # 100 bytes: the old label kept 63
LONG_FIELD = "quantity_" + "q" * 191  # 200 bytes: the old "$field" kept 158
TABLE = "long_values"

CONFIG = """
listen: 127.0.0.1:18080
admin_listen: 127.0.0.1:19090
workers: 2
shutdown_timeout_ms: 5000
limits: {request_timeout_ms: 5000}
auth: {enabled: false}
backends:
  redis-auth:
    type: redis
    shards:
      - name: redis-auth
        dsn: redis://:%(password)s@127.0.0.1:%(rport)d/0
    pool: {max: 2, connect_timeout_ms: 500, queue_max: 64, backoff_min_ms: 20, backoff_max_ms: 200}
  catalog-mongo:
    type: mongo
    shards:
      - name: catalog-mongo
        dsn: mongodb://127.0.0.1:57017/polygate_test?serverSelectionTimeoutMS=2000
    pool: {max: 2, connect_timeout_ms: 1000, queue_max: 64}
domains:
  lvsess:
    backend: redis-auth
    kind: value
    prefix: "lv:"
    key: session_id
    ttl_s: 600
    fields:
      session_id: string
      user_id: {type: string, required: true}
  %(domain)s:
    backend: catalog-mongo
    table: %(table)s
    key: sku
    generate_key: false
    auto_migrate: true
    timeout_ms: 10000
    fields:
      sku: string
      tag: string
      %(field)s: int
""" % {"password": PASSWORD, "rport": AUTH_REDIS_PORT, "domain": LONG_DOMAIN, "table": TABLE,
       "field": LONG_FIELD}


@pytest.fixture(scope="module")
def auth_redis():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (the stack's package provides it)")
    d = tempfile.mkdtemp(prefix="polygate-lv-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(AUTH_REDIS_PORT), "--bind", "127.0.0.1", "--dir", d,
         "--save", "", "--appendonly", "no", "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_port(AUTH_REDIS_PORT):
            pytest.fail("private redis-server did not listen on %d" % AUTH_REDIS_PORT)
        yield redislib.Redis(host="127.0.0.1", port=AUTH_REDIS_PORT, password=PASSWORD)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def gw(auth_redis):
    g = Gateway(CONFIG.replace("18080", str(LV_PORT)).replace("19090", str(LV_ADMIN)), port=LV_PORT)
    try:
        yield g
    finally:
        log = g.logtext()
        assert g.stop() == 0, log[-3000:]  # a clean exit (valgrind: no errors, no leaks)


def poll(fn, timeout=10.0):
    """fn() until it returns a true value or the deadline passes; the last value."""
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v or time.time() > deadline:
            return v
        time.sleep(0.05)


def test_redis_password_longer_than_255_is_used_whole(gw, auth_redis):
    c = Client(LV_PORT)
    sid = "s-" + uuid.uuid4().hex
    last = []

    def put():
        last[:] = c.request("PUT", "/v1/lvsess/%s" % sid, {"user_id": "u1"})[:2]
        return last[0] == 200

    # the pool may still be connecting and authenticating: poll for the write
    assert poll(put), (last, gw.logtext()[-2000:])
    # stored in the password-protected Redis, under the domain's prefix (on
    # this run's database number: conftest.namespaced rewrites every DSN)
    r = redislib.Redis(host="127.0.0.1", port=AUTH_REDIS_PORT, password=PASSWORD, db=conftest.REDIS_DB)
    assert r.exists("lv:" + sid) == 1
    st, body, _ = c.request("GET", "/v1/lvsess/%s" % sid)
    assert st == 200 and body["user_id"] == "u1", body
    c.close()


def metrics_text():
    c = Client(LV_ADMIN)
    try:
        c.conn.request("GET", "/metrics")
        return c.conn.getresponse().read().decode()
    finally:
        c.close()


def counter(text, prefix):
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_long_domain_name_keeps_its_metrics_label(gw):
    label = 'polygate_requests_total{domain="%s",op="get",status="404"} ' % LONG_DOMAIN
    before = counter(metrics_text(), label)
    c = Client(LV_PORT)
    st, body, _ = c.request("GET", "/v1/%s/%s" % (LONG_DOMAIN, "missing-" + uuid.uuid4().hex))
    c.close()
    assert st == 404, body
    # the counter is bumped once the answer is sent: poll for it
    assert poll(lambda: counter(metrics_text(), label) == before + 1), metrics_text()[-3000:]


def test_aggregate_sums_a_field_with_a_long_name(gw):
    c = Client(LV_PORT)
    tag = "lv-" + uuid.uuid4().hex
    skus = ["%s-%d" % (tag, i) for i in range(3)]
    try:
        for i, sku in enumerate(skus):
            st, body, _ = c.request("PUT", "/v1/%s/%s" % (LONG_DOMAIN, sku), {"tag": tag, LONG_FIELD: 10 * (i + 1)})
            assert st in (200, 201), body
        st, res, _ = c.request("POST", "/v1/%s/_aggregate" % LONG_DOMAIN, {
            "where": {"tag": tag}, "aggregates": {"n": {"count": "*"}, "total": {"sum": LONG_FIELD}}})
        assert st == 200, res
        assert res["items"] == [{"n": 3, "total": 60}], res
    finally:
        for sku in skus:
            c.request("DELETE", "/v1/%s/%s" % (LONG_DOMAIN, sku))
        c.close()


def test_key_granted_a_long_domain_name_may_use_it(auth_redis):
    """A grant names the domain whole: a key granted a domain whose name is
    longer than 64 bytes reaches it (the name was cut before the grant was
    looked up, so the key got 403), and a key without the grant does not."""
    text = CONFIG.replace("auth: {enabled: false}", """auth:
  enabled: true
  keys:
    - name: long-ok
      key: "lv-key-granted-0123456789"
      grants: {%s: [read, write]}
    - name: other
      key: "lv-key-other-0123456789"
      grants: {lvsess: [read]}""" % LONG_DOMAIN)
    port, admin = PORT + 58, ADMIN_PORT + 58  # beside the module's gateway
    text = text.replace("18080", str(port)).replace("19090", str(admin))
    g = Gateway(text, port=port)
    c = Client(port)
    try:
        path = "/v1/%s/%s" % (LONG_DOMAIN, "missing-" + uuid.uuid4().hex)
        st, body, _ = c.request("GET", path, headers={"Authorization": "Bearer lv-key-granted-0123456789"})
        assert st == 404 and body["error"]["code"] == "not_found", body
        st, body, _ = c.request("GET", path, headers={"Authorization": "Bearer lv-key-other-0123456789"})
        assert st == 403 and body["error"]["code"] == "forbidden", body
    finally:
        c.close()
        log = g.logtext()
        assert g.stop() == 0, log[-3000:]
