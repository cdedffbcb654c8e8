"""The gateway's own behaviour: routes, errors, limits, request ids, health."""
import socket

from conftest import PORT, ADMIN_PORT, Client, assert_error, wait_ready


def test_health_and_ready(client):
    st, body, _ = client.request("GET", "/health")
    assert st == 200 and body == {"status": "ok"}
    # a gateway that just started may still be connecting its pools
    assert wait_ready(timeout=60), "/ready did not turn 200"
    st, body, _ = client.request("GET", "/ready")
    assert st == 200 and body == {"ready": True}  # the client listener tells no more
    admin = Client(ADMIN_PORT)
    st, body, _ = admin.request("GET", "/ready")
    assert st == 200 and body["ready"] is True
    assert {"backend": "redis", "type": "redis", "shard": "redis-main", "circuit": "closed",
            "ok": True} in body["backends"]
    st, body, _ = admin.request("GET", "/health")
    assert st == 200
    st, body, _ = admin.request("GET", "/admin/config")
    assert st == 200 and {"sessions", "carts", "users"} <= {d["name"] for d in body["domains"]}
    admin.close()


def test_malformed_json_is_a_400(client):
    st, body, resp = client.request("PUT", "/v1/sessions/x", raw=b'{"user_id": "u1",')
    assert st == 400
    assert_error(body, "bad_request", resp=resp)
    st, body, _ = client.request("PUT", "/v1/sessions/x", raw=b'{"user_id": "u1"} trailing')
    assert st == 400
    st, body, _ = client.request("PUT", "/v1/sessions/x", raw=b'')
    assert st == 400
    st, body, _ = client.request("PUT", "/v1/sessions/x", raw=b'{"user_id": "\xff\xfe"}')
    assert st == 400 and "UTF-8" in body["error"]["message"]


def test_json_depth_limit(client):
    deep = b'{"user_id":"u","data":' + b'{"a":' * 20 + b'1' + b'}' * 20 + b'}'
    st, body, _ = client.request("PUT", "/v1/sessions/deep", raw=deep)
    assert st == 400 and "deeper" in assert_error(body, "bad_request")["message"]


def test_unknown_domain_and_route(client):
    st, body, resp = client.request("GET", "/v1/nosuch/1")
    assert st == 404
    assert assert_error(body, "unknown_domain", resp=resp)["message"].find("nosuch") >= 0
    st, body, _ = client.request("GET", "/elsewhere")
    assert st == 404
    assert_error(body, "not_found")
    st, body, resp = client.request("GET", "/v1/sessions")
    assert st == 405 and resp.getheader("Allow") == "POST"


def test_oversize_body_is_413(client):
    big = b'{"user_id":"' + b"x" * 70000 + b'"}'
    st, body, resp = client.request("PUT", "/v1/sessions/big", raw=big)
    assert st == 413
    assert_error(body, "payload_too_large", resp=resp)
    # the gateway still serves others
    c2 = Client()
    st, _, _ = c2.request("GET", "/health")
    assert st == 200
    c2.close()


def test_header_limit(client):
    st, body, _ = client.request("GET", "/health", headers={"X-Big": "y" * 9000})
    assert st == 431
    assert_error(body, "headers_too_large")


def test_request_id_accepted_or_generated(client):
    st, body, resp = client.request("GET", "/v1/sessions/none-such", headers={"X-Request-Id": "abc-123"})
    assert resp.getheader("X-Request-Id") == "abc-123"
    assert body["error"]["request_id"] == "abc-123"
    st, body, resp = client.request("GET", "/health", headers={"X-Request-Id": "bad id with spaces"})
    rid = resp.getheader("X-Request-Id")
    assert rid and rid != "bad id with spaces" and len(rid) == 32


def test_if_match_must_be_a_version(client):
    st, body, _ = client.request("PUT", "/v1/sessions/x", {"user_id": "u"}, headers={"If-Match": "abc"})
    assert st == 400
    assert "If-Match" in assert_error(body, "bad_request")["message"]


def test_pipelined_requests_answered_in_order():
    s = socket.create_connection(("127.0.0.1", PORT), timeout=5)
    reqs = b"".join(b"GET /v1/sessions/pipe-%d HTTP/1.1\r\nHost: x\r\nX-Request-Id: r%d\r\n\r\n" % (i, i)
                    for i in range(5))
    s.sendall(reqs)
    data = b""
    while data.count(b"HTTP/1.1 ") < 5 or not data.endswith(b"}"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    ids = [line.split(b": ")[1] for line in data.split(b"\r\n") if line.startswith(b"X-Request-Id")]
    assert ids == [b"r0", b"r1", b"r2", b"r3", b"r4"]


def test_garbage_request_line_gets_json_400():
    s = socket.create_connection(("127.0.0.1", PORT), timeout=5)
    s.sendall(b"HELLO\x01 WORLD\r\n\r\n")
    data = s.recv(65536)
    s.close()
    assert data.startswith(b"HTTP/1.1 400")
    assert b'"code":"bad_request"' in data


def test_http10_keep_alive_is_announced_and_kept(gateway):
    s = socket.create_connection(("127.0.0.1", PORT), timeout=5)
    for _ in range(2):  # the same connection serves both
        s.sendall(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        data = b""
        while b'{"status":"ok"}' not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        head = data.split(b"\r\n\r\n")[0].lower()
        assert b"connection: keep-alive" in head, head
    s.close()
    # without it, HTTP/1.0 closes after the answer
    s = socket.create_connection(("127.0.0.1", PORT), timeout=5)
    s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"connection: close" in data.lower()
    s.close()


def test_the_run_uses_its_own_databases(gateway):
    """Every database the suite's gateway uses is this run's (named after
    POLYGATE_TEST_PORT_BASE; a Redis database the run claimed), in the config
    and in the shard maps it names: two runs never share a table."""
    import re
    import conftest
    with open(gateway.config) as f:
        text = f.read()
    maps = re.findall(r"^\s*shard_map:\s*(\S+)\s*$", text, re.M)
    assert len(maps) == 2
    for path in maps:
        with open(path) as f:
            text += f.read()
    names = re.findall(r"dbname=(\w+)", text) + re.findall(r"(?:mysql|mongodb)://[^/\s\"]+/(\w+)", text)
    assert len(names) == 1 + 4 + 4 + 1, names  # users, scatter-0…3, orders-0…3, catalog
    assert all(n.endswith(conftest.NS) for n in names), names
    assert set(re.findall(r"redis://[^/\s\"]+/(\d+)", text)) == {str(conftest.redis_db())}
    r = conftest.redislib.Redis(host="127.0.0.1", port=conftest.REDIS_PORT, db=conftest.redis_db(),
                                decode_responses=True)
    assert r.get(conftest.REDIS_OWNER_KEY) == conftest.NS
    r.close()
