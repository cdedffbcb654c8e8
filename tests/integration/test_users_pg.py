"""Users on the real PostgreSQL of the local stack (table users_test), through HTTP."""
import decimal
import time
import uuid

import psycopg2
import pytest

from conftest import ADMIN_PORT, CONFIG, PG_DB, PORT, Client, Gateway, assert_error, via_proxies

PG_DSN = "host=127.0.0.1 port=55432 dbname=%s user=postgres" % PG_DB
TABLE = "users_test"
# the gateway of the PostgreSQL-down test: users through this run's proxy
DOWN_PORT, DOWN_ADMIN = PORT + 71, ADMIN_PORT + 71


@pytest.fixture
def pg():
    conn = psycopg2.connect(PG_DSN)
    conn.autocommit = True
    yield conn
    conn.close()


def email():
    return "u-%s@example.com" % uuid.uuid4().hex


def create(client, **fields):
    body = {"email": email()}
    body.update(fields)
    st, item, _ = client.request("POST", "/v1/users", body)
    assert st == 201, item
    return item


def test_crud_generated_id_created_at_and_versions(client, pg):
    st, item, resp = client.request("POST", "/v1/users", {"email": email(), "first_name": "Ada"})
    assert st == 201, item
    assert len(item["id"]) == 32 and item["version"] == 1
    assert item["created_at"].endswith("Z") and "T" in item["created_at"]
    assert resp.getheader("ETag") == '"1"'
    uid = item["id"]
    st, got, _ = client.request("GET", "/v1/users/" + uid)
    assert st == 200 and got == item
    with pg.cursor() as cur:
        cur.execute("SELECT first_name, version FROM " + TABLE + " WHERE id = %s", (uid,))
        assert cur.fetchone() == ("Ada", 1)
    st, got, _ = client.request("PATCH", "/v1/users/" + uid, {"set": {"last_name": "L"}, "unset": ["first_name"]})
    assert st == 200 and got["version"] == 2 and got["last_name"] == "L" and "first_name" not in got
    st, got, _ = client.request("PUT", "/v1/users/" + uid, {"email": item["email"], "first_name": "B"})
    assert st == 200 and got["version"] == 3 and got["first_name"] == "B" and "last_name" not in got
    assert got["created_at"] == item["created_at"]  # kept by a replace
    st, _, _ = client.request("DELETE", "/v1/users/" + uid)
    assert st == 204
    st, body, _ = client.request("GET", "/v1/users/" + uid)
    assert st == 404
    assert_error(body, "not_found")


def test_put_creates_then_updates(client):
    uid = "put-" + uuid.uuid4().hex
    st, item, _ = client.request("PUT", "/v1/users/" + uid, {"email": email()})
    assert st == 201 and item["id"] == uid and item["version"] == 1
    st, item, _ = client.request("PUT", "/v1/users/" + uid, {"email": email()})
    assert st == 200 and item["version"] == 2


def test_duplicate_email_is_409_naming_the_field(client):
    e = email()
    create(client, email=e)
    st, body, _ = client.request("POST", "/v1/users", {"email": e})
    assert st == 409
    assert assert_error(body, "conflict")["field"] == "email"
    other = create(client)
    st, body, _ = client.request("PATCH", "/v1/users/" + other["id"], {"set": {"email": e}})
    assert st == 409 and body["error"]["field"] == "email"
    st, body, _ = client.request("POST", "/v1/users", {"email": email(), "id": other["id"]})
    assert st == 409 and body["error"]["field"] == "id"


def test_if_match(client):
    item = create(client)
    uid = item["id"]
    for method, body in (("PUT", {"email": item["email"]}), ("PATCH", {"set": {"first_name": "x"}}),
                         ("DELETE", None)):
        st, err, _ = client.request(method, "/v1/users/" + uid, body, headers={"If-Match": '"9"'})
        assert st == 412, (method, err)
        assert_error(err, "precondition_failed")
    st, got, _ = client.request("PATCH", "/v1/users/" + uid, {"set": {"first_name": "x"}}, headers={"If-Match": '"1"'})
    assert st == 200 and got["version"] == 2
    st, got, _ = client.request("PUT", "/v1/users/" + uid, {"email": item["email"]}, headers={"If-Match": '"2"'})
    assert st == 200 and got["version"] == 3
    st, _, _ = client.request("DELETE", "/v1/users/" + uid, headers={"If-Match": '"3"'})
    assert st == 204
    st, err, _ = client.request("PATCH", "/v1/users/" + uid, {"set": {"first_name": "x"}}, headers={"If-Match": '"3"'})
    assert st == 404


INJECTION = [
    "O'Brien", '"double"', "'; DROP TABLE users_test; --", "Robert'); DROP TABLE users_test;--",
    "back\\slash\\\\", "%_%\\%", "tab\tnew\nline\r", "ünïcödé ✓ 𝄞 中文 🙂", "\u202e\u200b",
    "".join(chr(c) for c in range(1, 32)) + "\x7f",
    "$1 $2 ? ?? :name", "x" * 30000,
]


def test_injection_corpus_round_trips(client, pg):
    ids = []
    for i, s in enumerate(INJECTION):
        short = s if len(s) < 1000 else s[:100]
        st, item, _ = client.request("POST", "/v1/users", {"email": email(), "first_name": s, "last_name": short,
                                                           "prefs": {"k": short, short[:50]: [short]}})
        assert st == 201, (i, item)
        ids.append(item["id"])
        st, got, _ = client.request("GET", "/v1/users/" + item["id"])
        assert got["first_name"] == s and got["last_name"] == short and got["prefs"]["k"] == short
        assert got["prefs"][short[:50]] == [short]
        # filters with the same strings are values too
        st, res, _ = client.request("POST", "/v1/users/_query", {"where": {"first_name": s, "id": item["id"]}})
        assert st == 200 and [x["id"] for x in res["items"]] == [item["id"]]
        # (a prefix is at most limits.max_prefix_bytes, 256 by default)
        p = s.encode()[:256].decode(errors="ignore")
        st, res, _ = client.request("POST", "/v1/users/_query", {"where": {"first_name": {"prefix": p}, "id": item["id"]}})
        assert st == 200 and len(res["items"]) == 1
        if len(s.encode()) > 256:
            st, res, _ = client.request("POST", "/v1/users/_query", {"where": {"first_name": {"prefix": s}}})
            assert st == 400 and "limits.max_prefix_bytes (256)" in res["error"]["message"], res
    with pg.cursor() as cur:
        cur.execute("SELECT first_name FROM " + TABLE + " WHERE id = ANY(%s) ORDER BY array_position(%s, id)",
                    (ids, ids))
        assert [r[0] for r in cur.fetchall()] == INJECTION
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,))
        assert cur.fetchone()[0]


def test_huge_string_near_the_body_limit(client):
    import json
    s = "é" * 30000  # 60000 bytes of a 65536-byte body limit
    raw = json.dumps({"email": email(), "first_name": s}, ensure_ascii=False).encode()
    st, item, _ = client.request("POST", "/v1/users", raw=raw, headers={"Content-Type": "application/json"})
    assert st == 201, item
    st, got, _ = client.request("GET", "/v1/users/" + item["id"])
    assert got["first_name"] == s


def test_prefix_escapes_like_metacharacters(client):
    tag = uuid.uuid4().hex[:8]
    a = create(client, first_name=tag + "%x")
    create(client, first_name=tag + "Ax")
    st, res, _ = client.request("POST", "/v1/users/_query", {"where": {"first_name": {"prefix": tag + "%"}}})
    assert st == 200 and [x["id"] for x in res["items"]] == [a["id"]]
    st, res, _ = client.request("POST", "/v1/users/_query", {"where": {"first_name": {"prefix": tag + "_"}}})
    assert st == 200 and res["items"] == []


def test_invalid_utf8_is_400(client):
    st, body, _ = client.request("POST", "/v1/users", raw=b'{"email":"a@b.c","first_name":"\xff\xfe"}',
                                 headers={"Content-Type": "application/json"})
    assert st == 400
    assert_error(body, "bad_request")


def test_decimals_exact_and_null_vs_absent(client, pg):
    item = create(client, balance="12345678901234.5678", prefs=None)
    st, raw, _ = client.request("GET", "/v1/users/" + item["id"])
    with pg.cursor() as cur:
        cur.execute("SELECT balance::text, prefs IS NULL, prefs::text, last_name IS NULL FROM " + TABLE + " WHERE id = %s",
                    (item["id"],))
        assert cur.fetchone() == ("12345678901234.5678", False, "null", True)
    # json null is kept as null; an absent field stays absent
    assert "prefs" in raw and raw["prefs"] is None and "last_name" not in raw
    st, got, _ = client.request("PATCH", "/v1/users/" + item["id"], {"inc": {"balance": "0.0001"}})
    assert st == 200
    with pg.cursor() as cur:
        cur.execute("SELECT balance::text FROM " + TABLE + " WHERE id = %s", (item["id"],))
        assert cur.fetchone()[0] == "12345678901234.5679"


def test_decimal_digits_on_the_wire(client):
    import http.client
    item = create(client, balance="0.1000")
    for bal in ("0.1000", "12345678901234.5678", "-0.0001"):
        client.request("PATCH", "/v1/users/" + item["id"], {"set": {"balance": bal}})
        conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
        conn.request("GET", "/v1/users/" + item["id"])
        text = conn.getresponse().read().decode()
        conn.close()
        assert '"balance":%s' % bal in text


def test_timestamps_rfc3339_utc(client):
    item = create(client, created_at="2026-01-31T12:00:00.5+02:00")
    assert item["created_at"] == "2026-01-31T10:00:00.500000Z"
    st, res, _ = client.request("POST", "/v1/users/_query",
                                {"where": {"id": item["id"], "created_at": {"lt": "2026-01-31T10:00:01Z"}}})
    assert st == 200 and len(res["items"]) == 1


def test_keyset_pagination_over_1000_users(client, pg):
    tag = "page-" + uuid.uuid4().hex[:8]
    with pg.cursor() as cur:
        for i in range(1000):
            cur.execute("INSERT INTO " + TABLE + " (id, email, last_name, age, version) VALUES (%s, %s, %s, %s, 1)",
                        ("%s-%04d" % (tag, i), "%s-%d@x.io" % (tag, i), tag, i % 7))
    seen = []
    cursor = None
    pages = 0
    while True:
        body = {"where": {"last_name": tag}, "order_by": ["-age", "id"], "limit": 37,
                "fields": ["email"]}
        if cursor:
            body["cursor"] = cursor
        st, res, _ = client.request("POST", "/v1/users/_query", body)
        assert st == 200, res
        pages += 1
        for it in res["items"]:
            assert set(it) == {"id", "email", "version"}
        seen += [it["id"] for it in res["items"]]
        cursor = res["cursor"]
        if cursor is None:
            break
        assert len(res["items"]) == 37
    with pg.cursor() as cur:
        cur.execute("SELECT id FROM " + TABLE + " WHERE last_name = %s ORDER BY age DESC, id", (tag,))
        expected = [r[0] for r in cur.fetchall()]
    assert len(seen) == 1000 and len(set(seen)) == 1000
    assert seen == expected
    assert pages == 28


def test_cursor_tampered_or_foreign_is_400(client):
    tag = "cur-" + uuid.uuid4().hex[:8]
    for _ in range(3):
        create(client, last_name=tag)
    st, res, _ = client.request("POST", "/v1/users/_query", {"where": {"last_name": tag}, "limit": 1})
    cur = res["cursor"]
    assert cur
    payload, sig = cur.split(".")
    bad = [payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + sig, "garbage", cur + "x", 12,
           payload + "." + "A" * 4000]  # a MAC part far longer than a MAC
    for c in bad:
        st, body, _ = client.request("POST", "/v1/users/_query", {"where": {"last_name": tag}, "limit": 1, "cursor": c})
        assert st == 400, c
        assert "cursor" in assert_error(body, "bad_request")["message"]
    st, body, _ = client.request("POST", "/v1/users/_query", {"where": {"last_name": tag}, "order_by": ["-id"], "cursor": cur})
    assert st == 400


def test_aggregates_equal_direct_sql(client, pg):
    tag = "agg-" + uuid.uuid4().hex[:8]
    for i in range(40):
        create(client, last_name=tag, first_name="g%d" % (i % 3), age=i, balance="%d.%04d" % (i, i * 37 % 10000))
    body = {"where": {"last_name": tag}, "group_by": ["first_name"],
            "aggregates": {"n": {"count": "*"}, "total": {"sum": "balance"}, "lo": {"min": "age"},
                           "hi": {"max": "balance"}, "mean": {"avg": "balance"}}}
    import http.client, json
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
    conn.request("POST", "/v1/users/_aggregate", json.dumps(body))
    resp = conn.getresponse()
    res = json.loads(resp.read(), parse_float=decimal.Decimal)
    conn.close()
    assert resp.status == 200 and res["cursor"] is None and res["shards_queried"] == 1
    with pg.cursor() as cur:
        cur.execute("SELECT first_name, count(*), sum(balance), min(age), max(balance), avg(balance) FROM " + TABLE +
                    " WHERE last_name = %s GROUP BY first_name ORDER BY first_name", (tag,))
        rows = cur.fetchall()
    got = [(x["first_name"], x["n"], x["total"], x["lo"], x["hi"], x["mean"]) for x in res["items"]]
    assert got == [tuple(r) for r in rows]


@pytest.mark.parametrize("body,needle", [
    ({"where": {"nope": 1}}, "nope"),
    ({"where": {"age": {"between": [1, 2]}}}, "between"),
    ({"where": {"age": "x"}}, "age"),
    ({"where": {"age": {"in": list(range(1001))}}}, "age"),
    ({"where": {"first_name.x": "a"}}, "first_name"),
    ({"where": {"age": {"prefix": "1"}}}, "prefix"),
    ({"order_by": ["nope"]}, "nope"),
    ({"fields": ["nope"]}, "nope"),
    ({"limit": 0}, "limit"),
    ({"limit": 100000}, "limit"),
    ({"where": {"or": []}}, "or"),
    ({"bogus": 1}, "bogus"),
])
def test_filter_errors_are_400_naming_it(client, body, needle):
    st, res, _ = client.request("POST", "/v1/users/_query", body)
    assert st == 400, res
    err = assert_error(res, "bad_request")
    assert needle in err["message"] or err.get("field") == needle


def test_aggregate_errors_are_400(client):
    for body, needle in (({"aggregates": {"x": {"sum": "email"}}}, "email"),
                         ({"aggregates": {"x": {"median": "age"}}}, "median"),
                         ({"aggregates": {"x": {"count": "*"}}, "group_by": ["nope"]}, "nope")):
        st, res, _ = client.request("POST", "/v1/users/_aggregate", body)
        assert st == 400 and needle in assert_error(res, "bad_request")["message"]
    # a path inside a json field: the document store groups on it, SQL does not
    st, res, _ = client.request("POST", "/v1/users/_aggregate",
                                {"aggregates": {"n": {"count": "*"}}, "group_by": ["prefs.lang"]})
    assert st == 400
    err = assert_error(res, "unsupported_operation")
    assert "prefs.lang" in err["message"] and "pg" in err["message"]


@pytest.fixture
def pg_proxied_client(toxics):
    """A client of a private gateway whose users-pg reaches PostgreSQL through
    this run's proxy (toxics: enabled, clean before and after), so that the
    test faults the proxy, never the server other runs share."""
    with open(CONFIG) as f:
        text = f.read()
    text = text.replace("18080", str(DOWN_PORT)).replace("19090", str(DOWN_ADMIN))
    g = Gateway(via_proxies(text, ("pg",)), port=DOWN_PORT)
    c = Client(DOWN_PORT)
    yield c, toxics["pg"]
    c.close()
    rc = g.stop()
    assert rc == 0, "polygate did not exit cleanly on SIGTERM (rc=%s)" % rc


def test_pg_down_is_503_then_recovers(pg_proxied_client):
    """PostgreSQL unreachable (its proxy disabled: open connections closed,
    new ones refused, as when the server stops) is a 503 naming users-pg;
    once it is reachable again the same gateway serves without a restart."""
    client, proxy = pg_proxied_client
    item = create(client)
    proxy.down()
    try:
        deadline = time.time() + 10
        while True:
            st, body, _ = client.request("GET", "/v1/users/" + item["id"])
            if st == 503:
                break
            assert time.time() < deadline, (st, body)
            time.sleep(0.1)
        err = assert_error(body, "backend_unavailable")
        assert "users-pg" in err["message"]
    finally:
        proxy.up()
    deadline = time.time() + 15
    while True:
        st, got, _ = client.request("GET", "/v1/users/" + item["id"])
        if st == 200:
            break
        assert time.time() < deadline, (st, got)
        time.sleep(0.1)
    assert got["id"] == item["id"]
    st, _, _ = client.request("POST", "/v1/users", {"email": email()})
    assert st == 201
