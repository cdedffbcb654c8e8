"""Redis failure and recovery, deadlines, reload and drain — against real processes."""
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import PORT as BASE
from conftest import ROOT, Client, Gateway, assert_error, stack, wait_ready

REDIS_PID = os.path.join(ROOT, ".stack", "redis", "redis.pid")


def redis_pid():
    with open(REDIS_PID) as f:
        return int(f.read().strip())


def wait_until(pred, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_redis_down_then_recovery(client):
    st, _, _ = client.request("PUT", "/v1/sessions/fault-1", {"user_id": "u"})
    assert st in (200, 201)
    stack("stop", "redis")
    try:
        def down():
            st, body, _ = client.request("GET", "/v1/sessions/fault-1")
            return st == 503 and body["error"]["code"] == "backend_unavailable"
        assert wait_until(down, 10)
        st, body, resp = client.request("GET", "/v1/sessions/fault-1")
        err = assert_error(body, "backend_unavailable", resp=resp)
        assert "redis" in err["message"] and err["shard"] == "redis-main"
        st, body, _ = client.request("GET", "/ready")
        assert st == 503 and body["ready"] is False
    finally:
        stack("start", "redis")
    # the data set lives in memory only: write again once Redis is back
    def up():
        st, _, _ = client.request("PUT", "/v1/sessions/fault-1", {"user_id": "u"})
        return st in (200, 201)
    assert wait_until(up, 15), "polygate did not recover after Redis came back"
    st, item, _ = client.request("GET", "/v1/sessions/fault-1")
    assert st == 200 and item["user_id"] == "u"
    assert wait_ready(), "not every worker reconnected to Redis"


def test_hung_redis_times_out_with_504(client):
    assert wait_ready()
    client.request("PUT", "/v1/sessions/hang-1", {"user_id": "u"})
    pid = redis_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.time()
        st, body, _ = client.request("GET", "/v1/sessions/hang-1")
        elapsed = time.time() - t0
        assert st == 504
        err = assert_error(body, "timeout")
        assert err["shard"] == "redis-main"
        assert 1.0 <= elapsed < 4.0  # request_timeout_ms is 1500 in the test config
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_until(lambda: client.request("GET", "/v1/sessions/hang-1")[0] == 200, 10)


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
        gateway.signal(signal.SIGHUP)
        assert wait_until(lambda: "reload rejected" in gateway.logtext(), 5)
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


def test_sigterm_drains_in_flight_requests(gateway):
    # a second gateway would collide on the ports: use a config on others
    with open(gateway.config) as f:
        text = f.read().replace(str(BASE), str(BASE + 1)).replace(str(BASE + 1010), str(BASE + 1011)).replace(
            "request_timeout_ms: 1500", "request_timeout_ms: 8000")
    gw = Gateway.__new__(Gateway)
    import tempfile, shutil
    gw.dir = tempfile.mkdtemp(prefix="polygate-drain-")
    gw.config = os.path.join(gw.dir, "polygate.yaml")
    with open(gw.config, "w") as f:
        f.write(text)
    gw.log = open(os.path.join(gw.dir, "polygate.log"), "w+")
    gw.proc = subprocess.Popen([os.environ.get("POLYGATE_BIN", os.path.join(ROOT, "polygate")), "-c", gw.config],
                               stdout=gw.log, stderr=subprocess.STDOUT)
    from conftest import wait_port
    assert wait_port(BASE + 1)
    c = Client(BASE + 1)
    c.request("PUT", "/v1/sessions/drain-1", {"user_id": "u"})
    pid = redis_pid()
    result = {}
    def slow():
        result["r"] = Client(BASE + 1).request("GET", "/v1/sessions/drain-1")
    os.kill(pid, signal.SIGSTOP)
    try:
        th = threading.Thread(target=slow)
        th.start()
        time.sleep(0.5)
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert gw.proc.poll() is None, "polygate exited with a request in flight"
        # no new connections are accepted while draining
        with pytest.raises(OSError):
            import socket
            socket.create_connection(("127.0.0.1", BASE + 1), timeout=1).recv(1)
    finally:
        os.kill(pid, signal.SIGCONT)
    th.join(10)
    assert result["r"][0] == 200 and result["r"][1]["user_id"] == "u"
    assert gw.proc.wait(10) == 0
    gw.log.close()
    shutil.rmtree(gw.dir, ignore_errors=True)
