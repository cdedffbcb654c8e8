"""Redis failure and recovery, deadlines, reload and drain — against real
processes.  Redis faults go through this run's Toxiproxy proxy (conftest):
the shared Redis server is never stopped or frozen."""
import http.client
import signal
import socket
import threading

import pytest

from conftest import ADMIN_PORT as BASE_ADMIN
from conftest import CONFIG
from conftest import PORT as BASE
from conftest import Client, Gateway, assert_error, poll, via_proxies

# a gateway whose Redis is reached through the proxy: PORT + 5 / ADMIN_PORT + 5;
# the one that is drained: PORT + 1 / ADMIN_PORT + 1
RGW_PORT, RGW_ADMIN = BASE + 5, BASE_ADMIN + 5
DRAIN_PORT, DRAIN_ADMIN = BASE + 1, BASE_ADMIN + 1


def wait_until(pred, timeout=15.0):
    return poll(pred, timeout, 0.1)


def proxied_config(port, admin, request_timeout_ms=1500):
    with open(CONFIG) as f:
        text = f.read()
    text = text.replace("18080", str(port)).replace("19090", str(admin))
    text = text.replace("request_timeout_ms: 1500", "request_timeout_ms: %d" % request_timeout_ms)
    return via_proxies(text, ("redis",))


@pytest.fixture(scope="module")
def rgw(toxiproxy):
    toxiproxy["redis"].reset()
    g = Gateway(proxied_config(RGW_PORT, RGW_ADMIN), port=RGW_PORT)
    yield g
    assert g.stop() == 0


def ready(admin):
    c = Client(admin)
    try:
        return c.request("GET", "/ready")
    finally:
        c.close()


def test_redis_down_then_recovery(rgw, toxics):
    client = Client(RGW_PORT)
    st, _, _ = client.request("PUT", "/v1/sessions/fault-1", {"user_id": "u"})
    assert st in (200, 201)
    toxics["redis"].down()  # the connections are closed, new ones refused
    try:
        def down():
            st, body, _ = client.request("GET", "/v1/sessions/fault-1")
            return st == 503 and body["error"]["code"] == "backend_unavailable"
        assert wait_until(down, 10)
        st, body, resp = client.request("GET", "/v1/sessions/fault-1")
        err = assert_error(body, "backend_unavailable", resp=resp)
        assert "redis" in err["message"] and err["shard"] == "redis-main"
        st, body, _ = ready(RGW_ADMIN)
        assert st == 503 and body["ready"] is False
    finally:
        toxics["redis"].up()
    def up():
        st, _, _ = client.request("PUT", "/v1/sessions/fault-1", {"user_id": "u2"})
        return st in (200, 201)
    assert wait_until(up, 15), "polygate did not recover after Redis came back"
    st, item, _ = client.request("GET", "/v1/sessions/fault-1")
    assert st == 200 and item["user_id"] == "u2"
    assert wait_until(lambda: all(ready(RGW_ADMIN)[0] == 200 for _ in range(10)), 15), \
        "not every worker reconnected to Redis"
    client.close()


def test_hung_redis_times_out_with_504(rgw, toxics):
    client = Client(RGW_PORT)
    st, _, _ = client.request("PUT", "/v1/sessions/hang-1", {"user_id": "u"})
    assert st in (200, 201)
    toxics["redis"].toxic("latency", latency=60000)  # answers held back: a hung server
    st, body, _ = client.request("GET", "/v1/sessions/hang-1")
    assert st == 504  # request_timeout_ms 1500: the deadline, not the 60 s
    err = assert_error(body, "timeout")
    assert err["shard"] == "redis-main" and "1500 ms" in err["message"]
    toxics["redis"].clear()  # the held answers are delivered, late
    assert wait_until(lambda: client.request("GET", "/v1/sessions/hang-1")[0] == 200, 10)
    client.close()


def test_reload_applies_good_config_and_keeps_old_on_bad(gateway, client, rdb):
    with open(gateway.config) as f:
        original = f.read()
    try:
        with open(gateway.config, "w") as f:
            f.write(original.replace("ttl_s: 86400", "ttl_s: 600"))
        gateway.signal(signal.SIGHUP)
        def applied():
            client.request("PUT", "/v1/sessions/reload-1", {"user_id": "u"})
            return 590 <= rdb.ttl("session:reload-1") <= 600
        assert wait_until(applied, 5), gateway.logtext()
        with open(gateway.config, "w") as f:
            f.write(original.replace("ttl_s: 86400", "ttl_s: -5"))
        rejected = gateway.logtext().count("reload rejected")
        gateway.signal(signal.SIGHUP)
        assert wait_until(lambda: gateway.logtext().count("reload rejected") > rejected, 5)
        client.request("PUT", "/v1/sessions/reload-2", {"user_id": "u"})
        assert 590 <= rdb.ttl("session:reload-2") <= 600  # the previous good config is still active
        assert "ttl_s" in gateway.logtext()
    finally:
        n = gateway.logtext().count("info reloaded ")
        with open(gateway.config, "w") as f:
            f.write(original)
        gateway.signal(signal.SIGHUP)
        # the shared gateway is back on the original config before the next test
        assert wait_until(lambda: gateway.logtext().count("info reloaded ") > n, 10), gateway.logtext()
    client.request("PUT", "/v1/sessions/reload-3", {"user_id": "u"})
    assert rdb.ttl("session:reload-3") > 600


def test_sigterm_drains_in_flight_requests(toxics):
    """SIGTERM with a request in flight at a hung Redis: the gateway stops
    accepting, keeps running until the request is answered, then exits 0."""
    gw = Gateway(proxied_config(DRAIN_PORT, DRAIN_ADMIN, request_timeout_ms=8000), port=DRAIN_PORT)
    try:
        c = Client(DRAIN_PORT)
        st, _, _ = c.request("PUT", "/v1/sessions/drain-1", {"user_id": "u"})
        assert st in (200, 201)
        c.close()
        toxics["redis"].toxic("latency", latency=60000)
        result = {}
        def slow():
            result["r"] = Client(DRAIN_PORT).request("GET", "/v1/sessions/drain-1")
        th = threading.Thread(target=slow)
        th.start()
        def in_flight():
            m = http.client.HTTPConnection("127.0.0.1", DRAIN_ADMIN, timeout=10)
            try:
                m.request("GET", "/metrics")
                text = m.getresponse().read().decode()
            finally:
                m.close()
            # the gauge counts the scrape itself: the GET is the second
            return any(l.startswith("polygate_inflight_requests ") and float(l.split()[1]) >= 2
                       for l in text.splitlines())
        assert wait_until(in_flight, 10), gw.logtext()[-2000:]
        gw.signal(signal.SIGTERM)
        assert wait_until(lambda: "draining" in gw.logtext(), 10), gw.logtext()[-2000:]
        # draining: no new connections, the process waits for the request
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", DRAIN_PORT), timeout=1).recv(1)
        assert gw.proc.poll() is None and th.is_alive(), "polygate exited with a request in flight"
        toxics["redis"].clear()  # the held answer is delivered
        th.join(10)
        assert "r" in result, "no answer (see the thread's exception): " + gw.logtext()[-4000:]
        assert result["r"][0] == 200 and result["r"][1]["user_id"] == "u", result
        assert gw.proc.wait(10) == 0
    finally:
        gw.stop()
