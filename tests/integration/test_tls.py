"""TLS on the client listener, with a real TLS client."""
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import tempfile

import pytest

from conftest import PORT as BASE
from conftest import BIN, CONFIG, Gateway

PORT = BASE + 3


@pytest.fixture(scope="module")
def certs():
    d = tempfile.mkdtemp(prefix="polygate-tls-")
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def tls_config(cert, key):
    with open(CONFIG) as f:
        text = f.read()
    text = text.replace("18080", str(PORT)).replace("19090", str(BASE + 1013))
    return text + "\ntls:\n  cert: %s\n  key: %s\n" % (cert, key)


@pytest.fixture(scope="module")
def tlsgw(certs):
    gw = Gateway(tls_config(*certs), port=PORT)
    yield gw
    assert gw.stop() == 0


def test_tls_round_trip(tlsgw, certs):
    ctx = ssl.create_default_context(cafile=certs[0])
    conn = http.client.HTTPSConnection("127.0.0.1", PORT, context=ctx, timeout=10)
    conn.request("PUT", "/v1/sessions/tls-1", body=json.dumps({"user_id": "t"}))
    resp = conn.getresponse()
    assert resp.status in (200, 201)
    item = json.loads(resp.read())
    assert item["user_id"] == "t"
    conn.request("GET", "/v1/sessions/tls-1")  # same connection: keep-alive over TLS
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read()) == item
    assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    conn.close()
    assert "https://127.0.0.1:%d" % PORT in tlsgw.logtext()


def test_plain_http_to_tls_port_is_closed_without_an_answer(tlsgw, certs):
    """A plain-HTTP request on the TLS listener is not a TLS record: the
    handshake fails and the gateway closes the connection at once, without a
    single byte of answer (no HTTP response in clear text, and no connection
    left open until the read timeout)."""
    s = socket.create_connection(("127.0.0.1", PORT), timeout=5)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    try:
        while True:
            chunk = s.recv(4096)  # socket.timeout (an OSError) fails the test: still open
            if not chunk:
                break  # closed by the gateway
            received += chunk
    except ConnectionResetError:
        pass  # closed with the unread request still queued: a reset
    finally:
        s.close()
    assert received == b"", received
    # the listener still serves TLS clients
    ctx = ssl.create_default_context(cafile=certs[0])
    conn = http.client.HTTPSConnection("127.0.0.1", PORT, context=ctx, timeout=10)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read()) == {"status": "ok"}
    conn.close()


def test_bad_certificate_path_refuses_to_start(certs):
    d = tempfile.mkdtemp(prefix="polygate-tlsbad-")
    cfg = os.path.join(d, "p.yaml")
    with open(cfg, "w") as f:
        f.write(tls_config("/nonexistent/cert.pem", certs[1]))
    p = subprocess.run([BIN, "-c", cfg], capture_output=True, text=True, timeout=10)
    assert p.returncode == 2
    assert "tls.cert" in p.stderr and "/nonexistent/cert.pem" in p.stderr
