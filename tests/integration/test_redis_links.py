"""Redis connections that are open but do not answer.

A Redis connection serves only once its handshake (AUTH, SELECT, PING) has
been answered, within the pool's connect timeout: a server that accepts TCP
but never answers is a shard that is down (503 at once), not a request
deadline (504) on every request.  A connection that stops answering later (a
peer that vanished without a FIN or RST) is dropped once no reply came for
longer than the deadline of every command waiting on it, and the pool opens a
new one: requests recover without a restart.

Both faults come from a small TCP relay in this file between the gateway and
the stack's Redis; nothing shared is stopped."""
import socket
import threading
import time
import uuid

from conftest import ADMIN_PORT, CONFIG, PORT, Client, Gateway, assert_error, poll

GW_PORT, GW_ADMIN = PORT + 77, ADMIN_PORT + 77
RELAY_PORT = PORT + 78
DEADLINE_MS = 1000
REDIS_PORT = 56379


class Relay:
    """Accepts on RELAY_PORT and relays to Redis.  `mute()` makes every
    connection open so far a black hole for good (nothing is read, written
    or closed: a peer that vanished); connections accepted later are relayed
    normally.  With `upstream=False` nothing is relayed at all: connections
    are accepted and never answered."""

    def __init__(self, upstream=True, hold_s=0.0):
        self.upstream = upstream
        self.hold_s = hold_s  # each connection's first answer is held this long
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", RELAY_PORT))
        self.lsock.listen(64)
        self.lsock.settimeout(0.2)
        self.generation = 0
        self.accepted = 0
        self.socks = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.accept_loop, daemon=True)
        self.thread.start()

    def mute(self):
        self.generation += 1

    def accept_loop(self):
        while not self.stop.is_set():
            try:
                client, _ = self.lsock.accept()
            except OSError:
                continue
            self.accepted += 1
            self.socks.append(client)
            if not self.upstream:
                continue  # accepted, never answered
            server = socket.create_connection(("127.0.0.1", REDIS_PORT))
            self.socks.append(server)
            gen = self.generation
            for a, b, hold in ((client, server, 0.0), (server, client, self.hold_s)):
                threading.Thread(target=self.pump, args=(a, b, gen, hold), daemon=True).start()

    def pump(self, src, dst, gen, hold=0.0):
        src.settimeout(0.1)
        while not self.stop.is_set() and gen == self.generation:
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            if gen != self.generation:
                return  # muted while this was in flight: it is lost
            if hold:
                time.sleep(hold)
                hold = 0.0
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        for s in self.socks + [self.lsock]:
            try:
                s.close()
            except OSError:
                pass


def gateway(connect_timeout_ms=None):
    with open(CONFIG) as f:
        text = f.read()
    if connect_timeout_ms is not None:
        line = "pool: {max: 2, connect_timeout_ms: 500, queue_max: 1024"
        assert line in text  # the redis pool of the test config
        text = text.replace(line, line.replace("500", str(connect_timeout_ms)), 1)
    text = text.replace("18080", str(GW_PORT)).replace("19090", str(GW_ADMIN))
    text = text.replace("request_timeout_ms: 1500", "request_timeout_ms: %d" % DEADLINE_MS)
    text = text.replace("redis://127.0.0.1:%d/" % REDIS_PORT, "redis://127.0.0.1:%d/" % RELAY_PORT)
    assert "127.0.0.1:%d/" % RELAY_PORT in text
    return Gateway(text + "\ncircuit_breaker: {failures: 0}\n", port=GW_PORT)


def session_get(sid, timeout=30):
    c = Client(GW_PORT, timeout=timeout)
    t0 = time.time()
    try:
        st, body, resp = c.request("GET", "/v1/sessions/" + sid)
    finally:
        c.close()
    return st, body, resp, time.time() - t0


def test_redis_that_accepts_but_never_answers_is_down_not_a_timeout():
    relay = Relay(upstream=False)
    g = gateway()
    try:
        # the pool's connect timeout (500 ms in the test config) covers the
        # handshake: once it has passed, the shard is down
        assert poll(lambda: "shard 'redis-main'" in g.logtext() and "connect timeout" in g.logtext(), 10), \
            g.logtext()[-3000:]
        st, body, resp, took = session_get("never-" + uuid.uuid4().hex)
        assert st == 503, (st, body)
        err = assert_error(body, "backend_unavailable", resp=resp)
        assert err["shard"] == "redis-main", body
        assert took < DEADLINE_MS / 1000.0, took  # at once, not at the deadline
        assert relay.accepted >= 1  # TCP was accepted: only the handshake hung
    finally:
        rc = g.stop()
        relay.close()
    assert rc == 0


def test_redis_connection_that_stops_answering_is_replaced():
    relay = Relay()
    g = gateway()
    try:
        sid = "mute-" + uuid.uuid4().hex
        c = Client(GW_PORT)
        assert poll(lambda: c.request("PUT", "/v1/sessions/" + sid, {"user_id": "u1"})[0] == 200, 15), \
            g.logtext()[-3000:]
        c.close()
        relay.mute()  # every open connection now swallows what it is sent
        st, body, resp, _ = session_get(sid)
        assert st == 504, (st, body)
        assert_error(body, "timeout", resp=resp)
        # the dead connections are dropped and new ones opened (relayed again):
        # the session is served without restarting the gateway
        assert poll(lambda: session_get(sid)[0] == 200, 20), g.logtext()[-3000:]
        assert "no reply for" in g.logtext() and "reconnecting" in g.logtext(), g.logtext()[-3000:]
    finally:
        rc = g.stop()
        relay.close()
    assert rc == 0


def test_requests_wait_for_a_connection_being_opened():
    """A request that arrives while the pool's connections are still being
    opened (the gateway just started; here each handshake answer is held
    0.5 s) waits for them, within the connect timeout, as the SQL pools do:
    it is served, not answered 503 "no connection"."""
    relay = Relay(hold_s=0.5)
    g = gateway(connect_timeout_ms=3000)  # the held handshake stays well inside it
    try:
        # every connection of both workers is accepted: their handshakes are
        # now held for half a second, and the request arrives within it
        assert poll(lambda: relay.accepted >= 4, 10), relay.accepted
        sid = "wait-" + uuid.uuid4().hex
        st, body, _, took = session_get(sid)
        assert st == 404, (st, body, g.logtext()[-2000:])  # served by Redis: no such session
        assert took < DEADLINE_MS / 1000.0, took
    finally:
        rc = g.stop()
        relay.close()
    assert rc == 0
