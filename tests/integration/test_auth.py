"""Authentication, per-domain grants and rate limits, through HTTP."""
import hashlib
import os
import re
import time

import pytest

from conftest import PORT as BASE
from conftest import CONFIG, Client, Gateway, assert_error

PORT, ADMIN = BASE + 2, BASE + 1012
CART_KEY = "cart-service-key-0123456789"
OPS_KEY = "ops-admin-key-abcdefghijklmn"
SLOW_KEY = "slow-client-key-zyxwvutsrqpo"


@pytest.fixture(scope="module")
def authgw():
    with open(CONFIG) as f:
        text = f.read()
    text = text.replace("18080", str(PORT)).replace("19090", str(ADMIN))
    auth = """
auth:
  keys:
    - name: cart-service
      key_sha256: "%s"
      grants: {carts: [read, write], sessions: [read]}
    - name: ops
      key: "${POLYGATE_TEST_OPS_KEY}"
      grants: {"*": [read, write, admin]}
    - name: slow-client
      key: "%s"
      grants: {sessions: [read]}
      rate: {per_second: 2, burst: 3}
""" % (hashlib.sha256(CART_KEY.encode()).hexdigest(), SLOW_KEY)
    text = re.sub(r"\nauth:\n  enabled: false[^\n]*\n", auth, text)
    os.environ["POLYGATE_TEST_OPS_KEY"] = OPS_KEY
    gw = Gateway(text, port=PORT)
    yield gw
    assert gw.stop() == 0


def bearer(k):
    return {"Authorization": "Bearer " + k}


def test_missing_or_bad_key_is_401(authgw):
    c = Client(PORT)
    st, body, resp = c.request("GET", "/v1/carts/u1")
    assert st == 401
    assert_error(body, "unauthorized", resp=resp)
    assert resp.getheader("WWW-Authenticate").startswith("Bearer")
    st, body, _ = c.request("GET", "/v1/carts/u1", headers=bearer("not-a-key"))
    assert st == 401
    st, body, _ = c.request("GET", "/v1/carts/u1", headers={"Authorization": "Basic " + CART_KEY})
    assert st == 401
    st, body, _ = c.request("GET", "/health")
    assert st == 200  # liveness needs no key


def test_grants_per_domain_and_operation(authgw):
    c = Client(PORT)
    st, cart, _ = c.request("PATCH", "/v1/carts/auth-u1", {"inc": {"items.P": 1}}, headers=bearer(CART_KEY))
    assert st == 200
    st, body, _ = c.request("GET", "/v1/sessions/nope", headers=bearer(CART_KEY))
    assert st == 404  # read on sessions is granted
    st, body, _ = c.request("PUT", "/v1/sessions/s", {"user_id": "u"}, headers=bearer(CART_KEY))
    assert st == 403
    err = assert_error(body, "forbidden")
    assert "cart-service" in err["message"] and "write" in err["message"]
    # a domain it may not see answers like a domain that does not exist
    st1, b1, _ = c.request("GET", "/v1/orders/1", headers=bearer(CART_KEY))
    st2, b2, _ = c.request("GET", "/v1/nosuchdomain/1", headers=bearer(CART_KEY))
    assert st1 == st2 == 403
    assert b1["error"]["message"].replace("orders", "X") == b2["error"]["message"].replace("nosuchdomain", "X")
    # the admin key sees everything, so an unknown domain is a plain 404
    st, body, _ = c.request("GET", "/v1/nosuchdomain/1", headers=bearer(OPS_KEY))
    assert st == 404
    # batch items are checked one by one
    st, body, _ = c.request("POST", "/v1/_batch", [
        {"op": "get", "domain": "carts", "id": "auth-u1"},
        {"op": "delete", "domain": "sessions", "id": "x"},
    ], headers=bearer(CART_KEY))
    assert st == 200 and [r["status"] for r in body["results"]] == [200, 403]


def test_admin_listener_needs_an_admin_key(authgw):
    a = Client(ADMIN)
    st, body, _ = a.request("GET", "/admin/config")
    assert st == 401
    st, body, _ = a.request("GET", "/admin/config", headers=bearer(CART_KEY))
    assert st == 403
    assert_error(body, "forbidden")
    st, body, _ = a.request("GET", "/admin/config", headers=bearer(OPS_KEY))
    assert st == 200


def test_rate_limit_is_429_with_retry_after(authgw):
    c = Client(PORT)
    statuses = []
    retry = None
    for _ in range(6):
        st, body, resp = c.request("GET", "/v1/sessions/rl", headers=bearer(SLOW_KEY))
        statuses.append(st)
        if st == 429:
            retry = resp.getheader("Retry-After")
            assert_error(body, "rate_limited")
    assert statuses[:3] == [404, 404, 404]  # the burst
    assert 429 in statuses[3:]
    assert retry is not None and int(retry) >= 1
    # other keys are not limited by it
    st, _, _ = c.request("GET", "/v1/carts/x", headers=bearer(CART_KEY))
    assert st == 200
    time.sleep(1.1)  # 2 tokens per second refill
    st, _, _ = c.request("GET", "/v1/sessions/rl", headers=bearer(SLOW_KEY))
    assert st == 404


def test_disabled_auth_is_logged(gateway):
    assert "authentication is OFF" in gateway.logtext()
