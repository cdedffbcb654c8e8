"""Every limit answers with its status and a clear message, and the gateway
stays healthy for other clients."""
import re
import socket
import threading
import time

import pytest

from conftest import PORT as BASE
from conftest import CONFIG, Client, Gateway, assert_error

PORT, ADMIN = BASE + 4, BASE + 1014


class BlackHole:
    """A Redis look-alike that answers the connection's handshake (the PING a
    Redis connection must answer before it serves) and nothing after it: a
    backend that hangs mid-life, so requests wait for their deadline."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stop = False
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
                threading.Thread(target=self.handshake, args=(c,), daemon=True).start()
            except OSError:
                pass

    def handshake(self, c):
        """+OK to the AUTH and SELECT the handshake may start with, +PONG to
        its PING, then silence (what comes later is read and never
        answered)."""
        seen = b""
        answered = False
        try:
            while not self.stop:
                data = c.recv(4096)
                if not data:
                    return
                seen += data
                if not answered and b"PING" in seen.upper():
                    head = seen.upper().split(b"PING", 1)[0]
                    c.sendall(b"+OK\r\n" * (head.count(b"SELECT") + head.count(b"AUTH")) + b"+PONG\r\n")
                    answered = True
        except OSError:
            pass

    def close(self):
        self.stop = True
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture(scope="module")
def hole():
    h = BlackHole()
    yield h
    h.close()


@pytest.fixture(scope="module")
def limgw(hole):
    with open(CONFIG) as f:
        text = f.read()
    text = text.replace("18080", str(PORT)).replace("19090", str(ADMIN))
    text = re.sub(r"\nlimits:\n", """
limits:
  max_url_bytes: 256
  max_header_count: 12
  request_read_timeout_s: 2
  max_inflight: 3
  max_batch_items: 3
  max_in_items: 3
  max_limit: 10
  max_string_bytes: 100
""", text, count=1)
    # drop the limits the test config already sets that we override
    for k in ("max_body_bytes", "max_header_bytes", "max_json_depth", "request_timeout_ms", "idle_timeout_s"):
        pass
    text += """
  hung:
    backend: hole
    kind: value
    key: id
    fields: {id: string, v: string}
"""
    text = text.replace("\nbackends:\n", """
backends:
  hole:
    type: redis
    shards: [{name: hole-0, dsn: "redis://127.0.0.1:%d/0"}]
    pool: {max: 1, queue_max: 100}
""" % hole.port, 1)
    gw = Gateway(text, port=PORT)
    yield gw
    assert gw.stop() == 0


def test_url_too_long_is_414(limgw):
    c = Client(PORT)
    st, body, _ = c.request("GET", "/v1/sessions/" + "x" * 400)
    assert st == 414
    assert_error(body, "uri_too_long")


def test_too_many_headers_is_431(limgw):
    c = Client(PORT)
    st, body, _ = c.request("GET", "/health", headers={"X-H%d" % i: "v" for i in range(20)})
    assert st == 431
    assert_error(body, "headers_too_large")
    st, _, _ = Client(PORT).request("GET", "/health")
    assert st == 200


def test_limits_on_lists_sizes_and_strings(limgw):
    c = Client(PORT)
    env = {"op": "get", "domain": "sessions", "id": "x"}
    st, body, _ = c.request("POST", "/v1/_batch", [env] * 4)
    assert st == 413 and "1 to 3" in assert_error(body, "payload_too_large")["message"]
    st, body, _ = c.request("POST", "/v1/users/_query", {"where": {"id": {"in": ["a", "b", "c", "d"]}}})
    assert st == 400
    st, body, _ = c.request("POST", "/v1/users/_query", {"limit": 11})
    assert st == 400 and "limit" in assert_error(body, "bad_request")["message"]
    st, body, _ = c.request("PUT", "/v1/sessions/long", {"user_id": "u" * 101})
    assert st == 400 and assert_error(body, "bad_request")["field"] == "user_id"


def test_slow_client_is_dropped_others_unaffected(limgw):
    slow = socket.create_connection(("127.0.0.1", PORT), timeout=10)
    t0 = time.time()
    answer = b""
    for ch in b"GET /health HTTP/1.1\r\nX-Slow: abcdefghijklmnop\r\n":
        try:
            slow.sendall(bytes([ch]))
        except OSError:
            break
        # meanwhile, other clients are served
        if ch == ord("X"):
            st, _, _ = Client(PORT).request("GET", "/health")
            assert st == 200
        slow.settimeout(0.25)
        try:
            chunk = slow.recv(4096)
            if chunk:
                answer += chunk
                break
        except socket.timeout:
            pass
    slow.close()
    elapsed = time.time() - t0
    # the whole head takes ~13 s at this pace: the 408 came before it was sent,
    # and not before request_read_timeout_s (2) had passed since the connect
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"request_timeout"' in answer
    assert elapsed >= 1.9, elapsed


def test_inflight_limit_503_and_deadline_504(limgw):
    results = []

    def hang(i):
        results.append(Client(PORT).request("GET", "/v1/hung/k%d" % i)[:2])

    threads = [threading.Thread(target=hang, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # three requests now wait on a backend that never answers
    st, body, resp = Client(PORT).request("GET", "/v1/sessions/x")
    assert st == 503, (results, body)
    assert "in flight" in assert_error(body, "backend_unavailable")["message"]
    assert resp.getheader("Retry-After") == "1"
    for t in threads:
        t.join(10)
    # each hung request ended at its deadline with a 504 naming the shard
    assert [r[0] for r in results] == [504, 504, 504]
    assert all(r[1]["error"]["shard"] == "hole-0" for r in results)
    st, _, _ = Client(PORT).request("GET", "/health")
    assert st == 200
