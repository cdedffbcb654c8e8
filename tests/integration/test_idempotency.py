"""Idempotency-Key on writes (gateway/gw_idempotency.h): a retried create is
answered with the first answer, never applied twice; a reused key with a
different request is a clear 422; failures leave no trace."""
import threading
import time
import uuid

from conftest import ADMIN_PORT, Client, assert_error


def key():
    return "idem-" + uuid.uuid4().hex


def metric(name):
    c = Client(ADMIN_PORT)
    try:
        c.conn.request("GET", "/metrics")
        text = c.conn.getresponse().read().decode()
    finally:
        c.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_retried_create_is_replayed_not_applied_twice(client):
    k = key()
    body = {"customer_id": "idem-" + uuid.uuid4().hex[:8], "status": "PENDING", "total_amount": "10.00",
            "items": [], "payment_method": "card"}
    replays = metric("polygate_idempotency_replays_total")
    st, first, resp = client.request("POST", "/v1/orders", body, headers={"Idempotency-Key": k})
    assert st == 201, first
    assert resp.getheader("Idempotent-Replayed") is None
    # the id was derived from the key, not random: a retry cannot create a second order
    oid = first["order_id"]
    st, again, resp = client.request("POST", "/v1/orders", body, headers={"Idempotency-Key": k})
    assert st == 201 and again == first
    assert resp.getheader("Idempotent-Replayed") == "true"
    assert resp.getheader("ETag") == '"1"'
    assert metric("polygate_idempotency_replays_total") == replays + 1
    # exactly one order exists with that id (and the customer has one order)
    st, res, _ = client.request("POST", "/v1/orders/_query",
                                {"where": {"customer_id": body["customer_id"]}, "limit": 10})
    assert st == 200 and [o["order_id"] for o in res["items"]] == [oid]


def test_same_key_different_body_is_422(client):
    k = key()
    st, _, _ = client.request("PUT", "/v1/sessions/idem-a", {"user_id": "u1"}, headers={"Idempotency-Key": k})
    assert st in (200, 201)
    st, body, resp = client.request("PUT", "/v1/sessions/idem-a", {"user_id": "u2"},
                                    headers={"Idempotency-Key": k})
    assert st == 422
    err = assert_error(body, "idempotency_key_reused", resp=resp)
    assert k in err["message"]
    # and on another path
    st, body, _ = client.request("PUT", "/v1/sessions/idem-b", {"user_id": "u1"}, headers={"Idempotency-Key": k})
    assert st == 422
    # the first write stands, the second was not applied
    st, item, _ = client.request("GET", "/v1/sessions/idem-a")
    assert st == 200 and item["user_id"] == "u1"


def test_patch_increment_applied_once(client):
    cart = "idem-cart-" + uuid.uuid4().hex[:8]
    k = key()
    for _ in range(3):
        st, doc, _ = client.request("PATCH", "/v1/carts/" + cart, {"inc": {"items.P-1": 2}},
                                    headers={"Idempotency-Key": k})
        assert st == 200, doc
    st, doc, _ = client.request("GET", "/v1/carts/" + cart)
    assert st == 200 and doc["items"]["P-1"] == 2


def test_failure_releases_the_key(client):
    k = key()
    # a 400 changed nothing and is not stored: the key is free for the corrected request
    st, body, _ = client.request("PUT", "/v1/sessions/idem-c", {"user_id": 5}, headers={"Idempotency-Key": k})
    assert st == 400
    st, item, resp = client.request("PUT", "/v1/sessions/idem-c", {"user_id": "u"}, headers={"Idempotency-Key": k})
    assert st in (200, 201) and resp.getheader("Idempotent-Replayed") is None


def test_bad_key_is_400(client):
    st, body, _ = client.request("PUT", "/v1/sessions/idem-d", {"user_id": "u"},
                                 headers={"Idempotency-Key": "x" * 256})
    assert st == 400
    assert "Idempotency-Key" in assert_error(body, "bad_request")["message"]


def test_concurrent_same_key_one_runs(client):
    """Two requests with one key at once: one runs, the other is a replay or
    a 409 idempotency_in_progress — never a second write."""
    cart = "idem-cc-" + uuid.uuid4().hex[:8]
    k = key()
    out = []
    def go():
        c = Client()
        out.append(c.request("PATCH", "/v1/carts/" + cart, {"inc": {"items.P-1": 1}},
                             headers={"Idempotency-Key": k}))
        c.close()
    ts = [threading.Thread(target=go) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    sts = sorted(o[0] for o in out)
    assert len(sts) == 8 and 200 in sts, sts  # every request was answered, one ran
    assert all(s in (200, 409) for s in sts), sts
    for s, b, r in out:
        if s == 409:
            assert_error(b, "idempotency_in_progress")
            assert r.getheader("Retry-After") == "1"
    st, doc, _ = client.request("GET", "/v1/carts/" + cart)
    assert doc["items"]["P-1"] == 1
