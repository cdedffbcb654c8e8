"""One caller cannot take a shared store away from the others: its own slow
requests do not open the store's circuit, it holds a bounded number of
requests in flight, a _batch pays one rate-limit token per operation, and
one answer is bounded in size."""
import json
import re
import threading
import time

import pytest

from conftest import PORT as BASE
from conftest import CONFIG, Client, Gateway, assert_error

PORT, ADMIN = BASE + 91, BASE + 1101
FLOOD_KEY = "flood-key-0123456789abcdef"
VICTIM_KEY = "victim-key-0123456789abcdef"
BATCH_KEY = "batch-key-0123456789abcdef"
OPS_KEY = "ops-key-0123456789abcdefgh"
NARROW_KEY = "narrow-key-0123456789abcdef"
NDOCS = 1000  # fair_products: enough that a prefix query costs FerretDB well over 60 ms


@pytest.fixture(scope="module")
def fairgw():
    with open(CONFIG) as f:
        text = f.read()
    text = text.replace("18080", str(PORT)).replace("19090", str(ADMIN))
    text = re.sub(r"\nlimits:\n", "\nlimits:\n  max_response_bytes: 20000\n", text, count=1)
    text = re.sub(r"\nauth:\n  enabled: false[^\n]*\n", """
circuit_breaker: {failures: 3, open_ms: 3000}
auth:
  keys:
    - name: flood
      key: "%s"
      grants: {fairslow: [read, write]}
      max_inflight: 2
    - name: victim
      key: "%s"
      grants: {catalog: [read, write], sessions: [read, write]}
    - name: batcher
      key: "%s"
      grants: {sessions: [read, write]}
      rate: {per_second: 0.5, burst: 5}
    - name: ops
      key: "%s"
      grants: {"*": [read, write, admin]}
    - name: narrow
      key: "%s"
      grants: {sessions: [read]}
      max_inflight: 2
""" % (FLOOD_KEY, VICTIM_KEY, BATCH_KEY, OPS_KEY, NARROW_KEY), text)
    # a domain on the catalog's own store (FerretDB), with a short deadline:
    # the flood's queries run into it
    text += """
  fairslow:
    backend: catalog-mongo
    table: fair_products
    key: sku
    generate_key: false
    auto_migrate: true
    timeout_ms: 60
    fields:
      sku: string
      name: {type: string, required: true}
      tags: array
"""
    gw = Gateway(text, port=PORT)
    yield gw
    assert gw.stop() == 0


def bearer(k):
    return {"Authorization": "Bearer " + k}


def metric(name, **labels):
    c = Client(ADMIN)
    c.conn.request("GET", "/metrics", headers=bearer(OPS_KEY))
    text = c.conn.getresponse().read().decode()
    c.close()
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r'(\w+)\{([^}]*)\} (\S+)$', line)
        if m and m.group(1) == name and ",".join(sorted(m.group(2).split(","))) == want:
            return float(m.group(3))
    return None


@pytest.fixture(scope="module")
def seeded(fairgw):
    """fair_products holds NDOCS products (written with a generous deadline
    by a second gateway: the module's gateway gives this domain 60 ms)."""
    with open(CONFIG) as f:
        text = f.read()
    port, admin = BASE + 92, BASE + 1102
    text = text.replace("18080", str(port)).replace("19090", str(admin))
    text += """
  fairslow:
    backend: catalog-mongo
    table: fair_products
    key: sku
    generate_key: false
    auto_migrate: true
    timeout_ms: 30000
    fields:
      sku: string
      name: {type: string, required: true}
      tags: array
"""
    gw = Gateway(text, port=port)
    try:
        c = Client(port)
        st, body, _ = c.request("POST", "/v1/fairslow/_aggregate", {"aggregates": {"n": {"count": "*"}}})
        assert st == 200, body
        if body["items"] and body["items"][0]["n"] >= NDOCS:
            return
        for i in range(0, NDOCS, 100):
            ops = [{"op": "put", "domain": "fairslow", "id": "fs-%05d" % j,
                    "body": {"name": "product number %05d with a longish name" % j,
                             "tags": ["t%d" % (j % 7), "fair"]}}
                   for j in range(i, i + 100)]
            st, body, _ = c.request("POST", "/v1/_batch", ops)
            assert st == 200 and all(r["status"] in (200, 201) for r in body["results"]), body
    finally:
        gw.stop()


def test_slow_query_flood_leaves_other_callers_at_zero_errors(fairgw, seeded):
    v = Client(PORT)
    st, _, _ = v.request("PUT", "/v1/catalog/FAIR-1", {"name": "fair", "price": "1.00", "stock": 1},
                         headers=bearer(VICTIM_KEY))
    assert st in (200, 201)
    opens0 = metric("polygate_circuit_opens_total", backend="catalog-mongo", shard="catalog-mongo")
    assert opens0 is not None
    where = {"or": [{"name": {"prefix": "product number %05dx" % k}} for k in range(3)]}
    stop = threading.Event()
    flood, victim = [], []

    def flooder():
        c = Client(PORT)
        while not stop.is_set():
            st, body, resp = c.request("POST", "/v1/fairslow/_query", {"where": where, "limit": 1000},
                                       headers=bearer(FLOOD_KEY))
            flood.append((st, body, resp.getheader("Retry-After")))
        c.close()

    def reader():
        c = Client(PORT)
        while not stop.is_set():
            st, body, _ = c.request("GET", "/v1/catalog/FAIR-1", headers=bearer(VICTIM_KEY))
            victim.append((st, body))
        c.close()

    threads = [threading.Thread(target=flooder) for _ in range(6)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    # the flood runs until its queries have hit their deadline many times
    # over (more than enough consecutive failures to open a circuit)
    deadline = time.time() + 30
    while time.time() < deadline and sum(1 for f in flood if f[0] == 504) < 12:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(30)
    timeouts = [f for f in flood if f[0] == 504]
    assert len(timeouts) >= 12, [f[0] for f in flood]
    assert_error(timeouts[0][1], "timeout")
    # the other key's reads on the same store: every one answered
    assert victim and all(st == 200 for st, _ in victim), [b for st, b in victim if st != 200][:3]
    # the store's circuit never opened
    assert metric("polygate_circuit_opens_total", backend="catalog-mongo",
                  shard="catalog-mongo") == opens0
    assert metric("polygate_circuit_state", backend="catalog-mongo", shard="catalog-mongo") == 0
    # the flooding key held at most 2 requests in flight: the rest were 429
    limited = [f for f in flood if f[0] == 429]
    assert limited, [f[0] for f in flood]
    err = assert_error(limited[0][1], "rate_limited")
    assert "in flight" in err["message"] and "flood" in err["message"]
    assert limited[0][2] == "1"
    assert {f[0] for f in flood} <= {200, 429, 504}


def test_batch_pays_one_token_per_operation(fairgw):
    c = Client(PORT)
    ops = [{"op": "put", "domain": "sessions", "id": "fair-b%d" % i, "body": {"user_id": "u"}}
           for i in range(4)]
    st, body, _ = c.request("POST", "/v1/_batch", ops, headers=bearer(BATCH_KEY))
    assert st == 200 and {r["status"] for r in body["results"]} <= {200, 201}, body
    # 1 token is left (burst 5, 0.5/s): a batch of 4 does not fit and does not run
    ops2 = [{"op": "delete", "domain": "sessions", "id": "fair-b%d" % i} for i in range(4)]
    st, body, resp = c.request("POST", "/v1/_batch", ops2, headers=bearer(BATCH_KEY))
    assert st == 429, body
    err = assert_error(body, "rate_limited", resp=resp)
    assert "4 tokens" in err["message"]
    assert int(resp.getheader("Retry-After")) >= 2
    for i in range(4):  # nothing of it ran
        st, _, _ = c.request("GET", "/v1/sessions/fair-b%d" % i, headers=bearer(VICTIM_KEY))
        assert st == 200
    # more operations than the burst can never fit: told to split
    ops3 = [{"op": "get", "domain": "sessions", "id": "x"}] * 6
    st, body, resp = c.request("POST", "/v1/_batch", ops3, headers=bearer(BATCH_KEY))
    assert st == 429 and "split" in assert_error(body, "rate_limited")["message"]
    # a batch refused before it runs is not free: it costs one token
    st, body, _ = c.request("GET", "/v1/_batch", headers=bearer(BATCH_KEY))
    assert st == 405, body  # the last token
    st, body, _ = c.request("GET", "/v1/_batch", headers=bearer(BATCH_KEY))
    assert st == 429, body


def test_one_answer_is_bounded_by_max_response_bytes(fairgw):
    c = Client(PORT)
    h = bearer(VICTIM_KEY)
    st, _, _ = c.request("PUT", "/v1/sessions/fair-big", {"user_id": "u", "data": {"blob": "x" * 30000}},
                         headers=h)
    assert st in (200, 201)
    st, _, _ = c.request("PUT", "/v1/sessions/fair-mid", {"user_id": "u", "data": {"blob": "y" * 12000}},
                         headers=h)
    assert st in (200, 201)
    # one answer above the bound (20000 bytes in this config)
    st, body, resp = c.request("GET", "/v1/sessions/fair-big", headers=h)
    assert st == 400, (st, str(body)[:200])
    err = assert_error(body, "response_too_large", resp=resp)
    assert "max_response_bytes" in err["message"] and "20000" in err["message"]
    st, body, _ = c.request("GET", "/v1/sessions/fair-mid", headers=h)
    assert st == 200 and len(body["data"]["blob"]) == 12000
    # a batch whose answers add up past it: the reads that do not fit are
    # answered response_too_large in their slots, the write is reported,
    # and the whole answer stays within the bound
    ops = [{"op": "get", "domain": "sessions", "id": "fair-mid"} for _ in range(5)]
    ops.append({"op": "put", "domain": "sessions", "id": "fair-w", "body": {"user_id": "w"}})
    c.conn.request("POST", "/v1/_batch", body=json.dumps(ops), headers=dict(h, **{"Content-Type": "application/json"}))
    resp = c.conn.getresponse()
    raw = resp.read()
    assert resp.status == 200
    assert len(raw) <= 20000 + 2000, len(raw)
    results = json.loads(raw)["results"]
    statuses = [r["status"] for r in results]
    # one 12000-byte answer fits in 20000, a second does not
    assert sorted(statuses[:5]) == [200, 400, 400, 400, 400] and statuses[5] in (200, 201), statuses
    cut = [r for r in results if r["status"] == 400]
    assert cut[0]["error"]["code"] == "response_too_large"
    assert "max_response_bytes" in cut[0]["error"]["message"]


def test_batch_holds_one_operation_in_flight_each(fairgw):
    c = Client(PORT)
    ops = [{"op": "get", "domain": "sessions", "id": "fair-n%d" % i} for i in range(3)]
    st, body, resp = c.request("POST", "/v1/_batch", ops, headers=bearer(NARROW_KEY))
    assert st == 429, body  # 3 operations can never fit in the key's 2
    err = assert_error(body, "rate_limited", resp=resp)
    assert "split" in err["message"] and "max_inflight" in err["message"]
    st, body, _ = c.request("POST", "/v1/_batch", ops[:2], headers=bearer(NARROW_KEY))
    assert st == 200 and [r["status"] for r in body["results"]] == [404, 404], body
