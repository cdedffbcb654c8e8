/*
 * lb_etcd.c — etcd v3 over its HTTP/JSON gateway, on evhttp.
 *
 * Each unary call has a connection of its own (loopback connects are cheap
 * and a slow answer then holds up no other call); the connection's timeout
 * is the call's deadline.  A finished call's connection is freed by the
 * client from its own event (the reaper), outside evhttp's callbacks: evhttp's
 * free_on_completion misses connections that failed or went idle.  A watch
 * keeps one connection as
 * long as its stream lasts; it is closed and reopened from a timer, never
 * from inside evhttp's own callbacks.
 */
#include "lib/lb_etcd.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>

#include "lib/lb_base64.h"
#include "lib/lb_util.h"

#define WATCH_BACKOFF_MIN_MS 100
#define WATCH_BACKOFF_MAX_MS 2000
#define WATCH_IDLE_TIMEOUT_S 3600 /* a watch may be quiet for long */
#define WATCH_LINE_MAX (64u << 20)

struct call;

struct lb_etcd {
    struct event_base *base;
    char *host;
    int port;
    int64_t timeout_ms;
    struct call *calls; /* in flight */
    size_t ncalls;
    struct lb_etcd_watch *watches;
    struct evhttp_connection **dead; /* finished calls' connections, for the reaper */
    size_t ndead, capdead;
    struct event *reaper;
};

struct call {
    struct lb_etcd *c;
    struct call *prev, *next;
    enum lb_etcd_call kind;
    struct evhttp_connection *conn; /* freed by evhttp once the call completed */
    struct event *defer;            /* a call that could not start fails from here */
    enum evhttp_request_error error;
    int errored;
    lb_etcd_cb cb;
    void *arg;
};

struct lb_etcd_watch {
    struct lb_etcd *c;
    struct lb_etcd_watch *prev, *next;
    char *key;
    int prefix;
    int64_t next_rev; /* where the next stream starts (0: now) */
    lb_etcd_watch_cb cb;
    void *arg;
    struct evhttp_connection *conn;
    struct evbuffer *acc; /* stream bytes not yet a whole line */
    struct event *timer;  /* (re)connect */
    int64_t backoff;
    int up;
    int dead;    /* the current stream is abandoned: its chunks are ignored */
    int waiting; /* compacted: only lb_etcd_watch_resume restarts it */
};

/* ---- encoding ------------------------------------------------------------------ */

static struct json_object *b64(const char *s, size_t n)
{
    char *buf = lb_xmalloc(lb_base64_len(n) + 1);
    size_t len = lb_base64_encode(s, n, buf);
    struct json_object *o = json_object_new_string_len(buf, (int)len);
    free(buf);
    return o;
}

static struct json_object *i64s(int64_t v)
{
    char buf[24];
    snprintf(buf, sizeof(buf), "%" PRId64, v);
    return json_object_new_string(buf);
}

static char *finish(struct json_object *o)
{
    char *s = lb_xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    return s;
}

char *lb_etcd_prefix_end(const char *key)
{
    char *end = lb_xstrdup(key);
    size_t n = strlen(end);
    while (n > 0) {
        unsigned char c = (unsigned char)end[n - 1];
        if (c < 0xff) {
            end[n - 1] = (char)(c + 1);
            end[n] = '\0';
            return end;
        }
        n--;
    }
    end[0] = '\0'; /* "\0": every key */
    return end;
}

static void add_key(struct json_object *o, const char *key, int prefix)
{
    json_object_object_add(o, "key", b64(key, strlen(key)));
    if (prefix) {
        char *end = lb_etcd_prefix_end(key);
        json_object_object_add(o, "range_end",
                               end[0] != '\0' ? b64(end, strlen(end)) : b64("\0", 1));
        free(end);
    }
}

static struct json_object *put_obj(const char *key, const char *value, size_t len, int64_t lease)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "key", b64(key, strlen(key)));
    json_object_object_add(o, "value", b64(value, len));
    if (lease != 0) {
        json_object_object_add(o, "lease", i64s(lease));
    }
    return o;
}

char *lb_etcd_encode_range(const char *key, int prefix)
{
    struct json_object *o = json_object_new_object();
    add_key(o, key, prefix);
    return finish(o);
}

char *lb_etcd_encode_put(const char *key, const char *value, size_t len, int64_t lease)
{
    return finish(put_obj(key, value, len, lease));
}

static struct json_object *ops_arr(const struct lb_etcd_op *ops, size_t n)
{
    struct json_object *a = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        struct json_object *op = json_object_new_object();
        if (ops[i].type == LB_ETCD_OP_PUT) {
            json_object_object_add(op, "request_put",
                                   put_obj(ops[i].key, ops[i].value, ops[i].len, ops[i].lease));
        } else {
            struct json_object *r = json_object_new_object();
            add_key(r, ops[i].key, 0);
            json_object_object_add(
                op, ops[i].type == LB_ETCD_OP_RANGE ? "request_range" : "request_delete_range", r);
        }
        json_object_array_add(a, op);
    }
    return a;
}

char *lb_etcd_encode_txn(const struct lb_etcd_cmp *cmp, size_t ncmp,
                         const struct lb_etcd_op *success, size_t nsuccess,
                         const struct lb_etcd_op *failure, size_t nfailure)
{
    static const char *const targets[] = {"VERSION", "CREATE", "MOD"};
    static const char *const fields[] = {"version", "create_revision", "mod_revision"};
    static const char *const results[] = {"EQUAL", "GREATER", "LESS", "NOT_EQUAL"};
    struct json_object *o = json_object_new_object();
    struct json_object *ca = json_object_new_array();
    for (size_t i = 0; i < ncmp; i++) {
        struct json_object *c = json_object_new_object();
        json_object_object_add(c, "key", b64(cmp[i].key, strlen(cmp[i].key)));
        json_object_object_add(c, "target", json_object_new_string(targets[cmp[i].target]));
        json_object_object_add(c, "result", json_object_new_string(results[cmp[i].op]));
        json_object_object_add(c, fields[cmp[i].target], i64s(cmp[i].value));
        json_object_array_add(ca, c);
    }
    json_object_object_add(o, "compare", ca);
    json_object_object_add(o, "success", ops_arr(success, nsuccess));
    json_object_object_add(o, "failure", ops_arr(failure, nfailure));
    return finish(o);
}

char *lb_etcd_encode_lease(const char *field, int64_t value)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, field, i64s(value));
    return finish(o);
}

char *lb_etcd_encode_watch(const char *key, int prefix, int64_t start_revision)
{
    struct json_object *cr = json_object_new_object();
    add_key(cr, key, prefix);
    if (start_revision > 0) {
        json_object_object_add(cr, "start_revision", i64s(start_revision));
    }
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "create_request", cr);
    return finish(o);
}

/* ---- decoding ------------------------------------------------------------------ */

/* An int64 field: etcd's gateway writes them as strings ("42"); a number is
 * taken too; absent is 0 (the gateway leaves zero values out). */
static int64_t get_i64(struct json_object *o, const char *name)
{
    struct json_object *v = NULL;
    if (o == NULL || !json_object_object_get_ex(o, name, &v) || v == NULL) {
        return 0;
    }
    if (json_object_is_type(v, json_type_string)) {
        return strtoll(json_object_get_string(v), NULL, 10);
    }
    return json_object_get_int64(v);
}

static char *unb64(struct json_object *v, size_t *len)
{
    const char *s =
        v != NULL && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
    size_t n = strlen(s);
    unsigned char *out = lb_xmalloc(n / 4 * 3 + 4);
    size_t outlen = 0;
    if (lb_base64_decode(s, n, out, &outlen) < 0) {
        free(out);
        return NULL;
    }
    if (len != NULL) {
        *len = outlen;
    }
    return (char *)out;
}

static int decode_kv(struct json_object *o, struct lb_etcd_kv *kv)
{
    memset(kv, 0, sizeof(*kv));
    kv->key = unb64(json_object_object_get(o, "key"), NULL);
    kv->value = unb64(json_object_object_get(o, "value"), &kv->value_len);
    if (kv->key == NULL || kv->value == NULL) {
        free(kv->key);
        free(kv->value);
        kv->key = kv->value = NULL;
        return -1;
    }
    kv->create_revision = get_i64(o, "create_revision");
    kv->mod_revision = get_i64(o, "mod_revision");
    kv->version = get_i64(o, "version");
    kv->lease = get_i64(o, "lease");
    return 0;
}

static int decode_kvs(struct json_object *arr, struct lb_etcd_result *r)
{
    size_t n = arr != NULL && json_object_is_type(arr, json_type_array)
                   ? json_object_array_length(arr)
                   : 0;
    if (n == 0) {
        return 0;
    }
    r->kvs = realloc(r->kvs, (r->nkvs + n) * sizeof(*r->kvs));
    if (r->kvs == NULL) {
        r->nkvs = 0;
        snprintf(r->err, sizeof(r->err), "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (decode_kv(json_object_array_get_idx(arr, i), &r->kvs[r->nkvs]) < 0) {
            snprintf(r->err, sizeof(r->err), "a key or value is not base64");
            return -1;
        }
        r->nkvs++;
    }
    return 0;
}

static void kv_free(struct lb_etcd_kv *kv)
{
    free(kv->key);
    free(kv->value);
}

void lb_etcd_result_clear(struct lb_etcd_result *r)
{
    for (size_t i = 0; i < r->nkvs; i++) {
        kv_free(&r->kvs[i]);
    }
    free(r->kvs);
    memset(r, 0, sizeof(*r));
}

/* The gateway's error shape: {"error": "...", "code": n, "message": "..."}
 * (unary) or {"error": {"grpc_code", "http_code", "message"}} (streams). */
static const char *error_message(struct json_object *doc)
{
    struct json_object *e = NULL, *m = NULL;
    if (doc == NULL) {
        return NULL;
    }
    if (json_object_object_get_ex(doc, "message", &m) && json_object_is_type(m, json_type_string)) {
        return json_object_get_string(m);
    }
    if (json_object_object_get_ex(doc, "error", &e)) {
        if (json_object_is_type(e, json_type_string)) {
            return json_object_get_string(e);
        }
        if (json_object_object_get_ex(e, "message", &m) &&
            json_object_is_type(m, json_type_string)) {
            return json_object_get_string(m);
        }
        return "error";
    }
    return NULL;
}

static struct json_object *parse_line(const char *body, size_t len)
{
    const char *nl = memchr(body, '\n', len); /* a stream's first message */
    size_t n = nl != NULL ? (size_t)(nl - body) : len;
    struct json_tokener *tok = json_tokener_new();
    struct json_object *doc = json_tokener_parse_ex(tok, body, (int)n);
    if (doc == NULL && json_tokener_get_error(tok) == json_tokener_continue) {
        doc = json_tokener_parse_ex(tok, "", -1);
    }
    json_tokener_free(tok);
    return doc;
}

int lb_etcd_decode(enum lb_etcd_call kind, int status, const char *body, size_t len,
                   struct lb_etcd_result *r)
{
    lb_etcd_result_clear(r);
    struct json_object *doc = len > 0 ? parse_line(body, len) : NULL;
    if (doc == NULL || !json_object_is_type(doc, json_type_object)) {
        snprintf(r->err, sizeof(r->err), "etcd answered %d with %s", status,
                 len == 0 ? "no body" : "a body that is not a JSON object");
        json_object_put(doc);
        return -1;
    }
    struct json_object *res = NULL;
    if (json_object_object_get_ex(doc, "result", &res) &&
        json_object_is_type(res, json_type_object)) {
        res = json_object_get(res); /* a stream's message (keepalive) */
        json_object_put(doc);
        doc = res;
    }
    const char *em = error_message(doc);
    if (status != 200 || (em != NULL && kind != LB_ETCD_CALL_GRANT)) {
        snprintf(r->err, sizeof(r->err), "etcd answered %d: %s", status,
                 em != NULL ? em : "(no message)");
        json_object_put(doc);
        return -1;
    }
    struct json_object *header = json_object_object_get(doc, "header");
    r->revision = get_i64(header, "revision");
    int rc = 0;
    switch (kind) {
    case LB_ETCD_CALL_RANGE:
        rc = decode_kvs(json_object_object_get(doc, "kvs"), r);
        break;
    case LB_ETCD_CALL_TXN: {
        struct json_object *s = json_object_object_get(doc, "succeeded");
        r->succeeded = s != NULL && json_object_get_boolean(s);
        struct json_object *rs = json_object_object_get(doc, "responses");
        size_t n = rs != NULL && json_object_is_type(rs, json_type_array)
                       ? json_object_array_length(rs)
                       : 0;
        for (size_t i = 0; i < n && rc == 0; i++) {
            struct json_object *rr = NULL;
            if (json_object_object_get_ex(json_object_array_get_idx(rs, i), "response_range",
                                          &rr)) {
                rc = decode_kvs(json_object_object_get(rr, "kvs"), r);
            }
        }
        break;
    }
    case LB_ETCD_CALL_GRANT:
        if (em != NULL && *em != '\0') { /* LeaseGrantResponse.error */
            snprintf(r->err, sizeof(r->err), "lease grant refused: %s", em);
            rc = -1;
            break;
        }
        /* fallthrough */
    case LB_ETCD_CALL_KEEPALIVE:
        r->lease_id = get_i64(doc, "ID");
        r->ttl = get_i64(doc, "TTL");
        if (kind == LB_ETCD_CALL_GRANT && (r->lease_id == 0 || r->ttl <= 0)) {
            snprintf(r->err, sizeof(r->err), "lease grant answered without an ID and a TTL");
            rc = -1;
        }
        break;
    case LB_ETCD_CALL_PUT:
    case LB_ETCD_CALL_REVOKE:
    default:
        break;
    }
    json_object_put(doc);
    r->ok = rc == 0;
    return rc;
}

void lb_etcd_watch_msg_clear(struct lb_etcd_watch_msg *m)
{
    for (size_t i = 0; i < m->nevents; i++) {
        kv_free(&m->events[i].kv);
    }
    free(m->events);
    memset(m, 0, sizeof(*m));
}

int lb_etcd_decode_watch(const char *line, size_t len, struct lb_etcd_watch_msg *m)
{
    lb_etcd_watch_msg_clear(m);
    struct json_object *doc = parse_line(line, len);
    struct json_object *res = NULL;
    if (doc == NULL || !json_object_is_type(doc, json_type_object)) {
        snprintf(m->err, sizeof(m->err), "a watch message that is not a JSON object");
        json_object_put(doc);
        return -1;
    }
    if (!json_object_object_get_ex(doc, "result", &res) ||
        !json_object_is_type(res, json_type_object)) {
        const char *em = error_message(doc);
        snprintf(m->err, sizeof(m->err), "watch: %s", em != NULL ? em : "a message without result");
        json_object_put(doc);
        return -1;
    }
    m->revision = get_i64(json_object_object_get(res, "header"), "revision");
    struct json_object *v = NULL;
    m->created = json_object_object_get_ex(res, "created", &v) && json_object_get_boolean(v);
    m->canceled = json_object_object_get_ex(res, "canceled", &v) && json_object_get_boolean(v);
    m->compact_revision = get_i64(res, "compact_revision");
    if (m->canceled) {
        const char *why = NULL;
        if (json_object_object_get_ex(res, "cancel_reason", &v)) {
            why = json_object_get_string(v);
        }
        snprintf(m->err, sizeof(m->err), "watch canceled by etcd%s%s", why != NULL ? ": " : "",
                 why != NULL ? why : "");
    }
    struct json_object *evs = json_object_object_get(res, "events");
    size_t n = evs != NULL && json_object_is_type(evs, json_type_array)
                   ? json_object_array_length(evs)
                   : 0;
    if (n > 0) {
        m->events = lb_xcalloc(n, sizeof(*m->events));
    }
    for (size_t i = 0; i < n; i++) {
        struct json_object *ev = json_object_array_get_idx(evs, i);
        struct json_object *t = json_object_object_get(ev, "type");
        struct lb_etcd_event *e = &m->events[m->nevents];
        e->type = t != NULL && strcmp(json_object_get_string(t), "DELETE") == 0 ? LB_ETCD_DELETE
                                                                                : LB_ETCD_PUT;
        if (decode_kv(json_object_object_get(ev, "kv"), &e->kv) < 0) {
            snprintf(m->err, sizeof(m->err), "watch: an event whose key or value is not base64");
            json_object_put(doc);
            return -1;
        }
        m->nevents++;
    }
    json_object_put(doc);
    return 0;
}

/* ---- unary calls ------------------------------------------------------------------ */

static const char *http_error_name(enum evhttp_request_error e)
{
    switch (e) {
    case EVREQ_HTTP_TIMEOUT:
        return "timed out";
    case EVREQ_HTTP_EOF:
        return "connection closed (refused or reset)";
    case EVREQ_HTTP_INVALID_HEADER:
        return "an invalid answer";
    case EVREQ_HTTP_BUFFER_ERROR:
        return "connection error";
    case EVREQ_HTTP_REQUEST_CANCEL:
        return "canceled";
    case EVREQ_HTTP_DATA_TOO_LONG:
        return "answer too long";
    default:
        return "no answer";
    }
}

static void call_unlink(struct call *k)
{
    struct lb_etcd *c = k->c;
    if (k->prev != NULL) {
        k->prev->next = k->next;
    } else {
        c->calls = k->next;
    }
    if (k->next != NULL) {
        k->next->prev = k->prev;
    }
    c->ncalls--;
}

static void reap(struct lb_etcd *c)
{
    for (size_t i = 0; i < c->ndead; i++) {
        evhttp_connection_free(c->dead[i]); /* idle or failed: no request left */
    }
    c->ndead = 0;
}

static void on_reaper(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    reap(arg);
}

static void call_finish(struct call *k, struct lb_etcd_result *r)
{
    struct lb_etcd *c = k->c;
    call_unlink(k);
    if (k->defer != NULL) {
        event_free(k->defer);
    }
    if (k->conn != NULL) { /* freed after evhttp's callback has returned */
        if (c->ndead == c->capdead) {
            c->capdead = c->capdead ? c->capdead * 2 : 8;
            c->dead = realloc(c->dead, c->capdead * sizeof(*c->dead));
            if (c->dead == NULL) {
                abort(); /* a few pointers: the out-of-memory policy of lb_xmalloc */
            }
        }
        c->dead[c->ndead++] = k->conn;
        event_active(c->reaper, EV_TIMEOUT, 0);
    }
    lb_etcd_cb cb = k->cb;
    void *arg = k->arg;
    free(k);
    cb(r, arg);
    lb_etcd_result_clear(r);
}

static const char *const call_paths[] = {
    [LB_ETCD_CALL_RANGE] = "/v3/kv/range",
    [LB_ETCD_CALL_PUT] = "/v3/kv/put",
    [LB_ETCD_CALL_TXN] = "/v3/kv/txn",
    [LB_ETCD_CALL_GRANT] = "/v3/lease/grant",
    [LB_ETCD_CALL_KEEPALIVE] = "/v3/lease/keepalive",
    [LB_ETCD_CALL_REVOKE] = "/v3/lease/revoke",
};

static void on_call_error(enum evhttp_request_error e, void *arg)
{
    struct call *k = arg;
    k->error = e;
    k->errored = 1;
}

static void on_call_done(struct evhttp_request *req, void *arg)
{
    struct call *k = arg;
    struct lb_etcd_result r = {0};
    int status = req != NULL ? evhttp_request_get_response_code(req) : 0;
    if (status == 0) {
        r.unreachable = 1;
        snprintf(r.err, sizeof(r.err), "etcd at %s:%d: %s (%s)", k->c->host, k->c->port,
                 k->errored ? http_error_name(k->error) : "no answer", call_paths[k->kind]);
    } else {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        const char *body = len > 0 ? (const char *)evbuffer_pullup(in, -1) : "";
        lb_etcd_decode(k->kind, status, body, len, &r);
    }
    call_finish(k, &r);
}

static void on_call_defer(evutil_socket_t fd, short what, void *arg)
{
    struct call *k = arg;
    (void)fd;
    (void)what;
    struct lb_etcd_result r = {0};
    r.unreachable = 1;
    snprintf(r.err, sizeof(r.err), "etcd at %s:%d: the request could not be sent (%s)", k->c->host,
             k->c->port, call_paths[k->kind]);
    call_finish(k, &r);
}

/* Send body (taken) to the call's path on a connection of its own. */
static void call_start(struct lb_etcd *c, enum lb_etcd_call kind, char *body, lb_etcd_cb cb,
                       void *arg)
{
    struct call *k = lb_xcalloc(1, sizeof(*k));
    k->c = c;
    k->kind = kind;
    k->cb = cb;
    k->arg = arg;
    k->next = c->calls;
    if (c->calls != NULL) {
        c->calls->prev = k;
    }
    c->calls = k;
    c->ncalls++;
    k->conn = evhttp_connection_base_new(c->base, NULL, c->host, (unsigned short)c->port);
    struct evhttp_request *req = k->conn != NULL ? evhttp_request_new(on_call_done, k) : NULL;
    if (req != NULL) {
        struct timeval tv = lb_tv_ms(c->timeout_ms);
        evhttp_connection_set_timeout_tv(k->conn, &tv);
        evhttp_request_set_error_cb(req, on_call_error);
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        char host[300];
        snprintf(host, sizeof(host), "%s:%d", c->host, c->port);
        evhttp_add_header(h, "Host", host);
        evhttp_add_header(h, "Content-Type", "application/json");
        evhttp_add_header(h, "Connection", "close"); /* one call per connection */
        evbuffer_add(evhttp_request_get_output_buffer(req), body, strlen(body));
        if (evhttp_make_request(k->conn, req, EVHTTP_REQ_POST, call_paths[kind]) == 0) {
            free(body);
            return;
        }
        req = NULL; /* evhttp_make_request frees it on failure */
    }
    if (k->conn != NULL) {
        evhttp_connection_free(k->conn);
        k->conn = NULL;
    }
    free(body);
    k->defer = event_new(c->base, -1, 0, on_call_defer, k);
    event_active(k->defer, EV_TIMEOUT, 0);
}

void lb_etcd_range(struct lb_etcd *c, const char *key, int prefix, lb_etcd_cb cb, void *arg)
{
    call_start(c, LB_ETCD_CALL_RANGE, lb_etcd_encode_range(key, prefix), cb, arg);
}

void lb_etcd_put(struct lb_etcd *c, const char *key, const char *value, size_t len, int64_t lease,
                 lb_etcd_cb cb, void *arg)
{
    call_start(c, LB_ETCD_CALL_PUT, lb_etcd_encode_put(key, value, len, lease), cb, arg);
}

void lb_etcd_txn(struct lb_etcd *c, const struct lb_etcd_cmp *cmp, size_t ncmp,
                 const struct lb_etcd_op *success, size_t nsuccess,
                 const struct lb_etcd_op *failure, size_t nfailure, lb_etcd_cb cb, void *arg)
{
    call_start(c, LB_ETCD_CALL_TXN,
               lb_etcd_encode_txn(cmp, ncmp, success, nsuccess, failure, nfailure), cb, arg);
}

void lb_etcd_lease_grant(struct lb_etcd *c, int64_t ttl_s, lb_etcd_cb cb, void *arg)
{
    call_start(c, LB_ETCD_CALL_GRANT, lb_etcd_encode_lease("TTL", ttl_s), cb, arg);
}

void lb_etcd_lease_keepalive(struct lb_etcd *c, int64_t id, lb_etcd_cb cb, void *arg)
{
    call_start(c, LB_ETCD_CALL_KEEPALIVE, lb_etcd_encode_lease("ID", id), cb, arg);
}

void lb_etcd_lease_revoke(struct lb_etcd *c, int64_t id, lb_etcd_cb cb, void *arg)
{
    call_start(c, LB_ETCD_CALL_REVOKE, lb_etcd_encode_lease("ID", id), cb, arg);
}

/* ---- watch ---------------------------------------------------------------------- */

static void watch_notify(struct lb_etcd_watch *w, enum lb_etcd_watch_state st, const char *err)
{
    struct lb_etcd_watch_update u = {.state = st, .err = err};
    w->cb(&u, w->arg);
}

/* Drop the current stream and connect again after delay_ms. */
static void watch_again(struct lb_etcd_watch *w, int64_t delay_ms, const char *err)
{
    w->dead = 1;
    int was_up = w->up;
    w->up = 0;
    struct timeval tv = lb_tv_ms(delay_ms);
    event_add(w->timer, &tv);
    if (err != NULL && (was_up || delay_ms > 0)) {
        watch_notify(w, LB_ETCD_WATCH_DOWN, err);
    }
}

static void watch_line(struct lb_etcd_watch *w, const char *line, size_t len)
{
    struct lb_etcd_watch_msg m = {0};
    if (lb_etcd_decode_watch(line, len, &m) < 0) {
        watch_again(w, lb_backoff_next(&w->backoff, WATCH_BACKOFF_MIN_MS, WATCH_BACKOFF_MAX_MS),
                    m.err);
        lb_etcd_watch_msg_clear(&m);
        return;
    }
    if (m.canceled && m.compact_revision > 0) {
        w->dead = 1;
        w->up = 0;
        w->waiting = 1;
        struct lb_etcd_watch_update u = {.state = LB_ETCD_WATCH_COMPACTED,
                                         .revision = m.compact_revision};
        event_active(w->timer, EV_TIMEOUT, 0); /* closes the stream; waits for resume */
        w->cb(&u, w->arg);
    } else if (m.canceled) {
        watch_again(w, lb_backoff_next(&w->backoff, WATCH_BACKOFF_MIN_MS, WATCH_BACKOFF_MAX_MS),
                    m.err);
    } else {
        if (m.created && !w->up) {
            w->up = 1;
            w->backoff = 0;
            if (w->next_rev == 0) {
                w->next_rev = m.revision + 1; /* "from now": resume after what it saw */
            }
            watch_notify(w, LB_ETCD_WATCH_UP, NULL);
        }
        if (m.nevents > 0) {
            int64_t last = m.events[m.nevents - 1].kv.mod_revision;
            if (last + 1 > w->next_rev) {
                w->next_rev = last + 1;
            }
            struct lb_etcd_watch_update u = {.state = LB_ETCD_WATCH_EVENTS,
                                             .revision = last,
                                             .events = m.events,
                                             .nevents = m.nevents};
            w->cb(&u, w->arg);
        }
    }
    lb_etcd_watch_msg_clear(&m);
}

static void on_watch_chunk(struct evhttp_request *req, void *arg)
{
    struct lb_etcd_watch *w = arg;
    if (w->dead) {
        return;
    }
    evbuffer_add_buffer(w->acc, evhttp_request_get_input_buffer(req));
    for (;;) {
        struct evbuffer_ptr nl = evbuffer_search(w->acc, "\n", 1, NULL);
        if (nl.pos < 0) {
            if (evbuffer_get_length(w->acc) > WATCH_LINE_MAX) {
                watch_again(w, WATCH_BACKOFF_MIN_MS, "watch: a message above 64 MiB");
            }
            return;
        }
        size_t n = (size_t)nl.pos;
        char *line = lb_xmalloc(n + 1);
        evbuffer_remove(w->acc, line, n);
        evbuffer_drain(w->acc, 1);
        line[n] = '\0';
        if (n > 0) {
            watch_line(w, line, n);
        }
        free(line);
        if (w->dead) {
            return;
        }
    }
}

static void on_watch_done(struct evhttp_request *req, void *arg)
{
    struct lb_etcd_watch *w = arg;
    if (w->dead) {
        return;
    }
    char err[160];
    int status = req != NULL ? evhttp_request_get_response_code(req) : 0;
    if (status == 0) {
        snprintf(err, sizeof(err), "watch: etcd at %s:%d does not answer", w->c->host, w->c->port);
    } else {
        snprintf(err, sizeof(err), "watch: the stream ended (HTTP %d)", status);
    }
    /* once up, the first retry is quick: the stream just ended */
    watch_again(w, lb_backoff_next(&w->backoff, WATCH_BACKOFF_MIN_MS, WATCH_BACKOFF_MAX_MS), err);
}

static void watch_close(struct lb_etcd_watch *w)
{
    if (w->conn != NULL) {
        evhttp_connection_free(w->conn); /* its request goes without a callback */
        w->conn = NULL;
    }
    evbuffer_drain(w->acc, evbuffer_get_length(w->acc));
}

static void on_watch_timer(evutil_socket_t fd, short what, void *arg)
{
    struct lb_etcd_watch *w = arg;
    (void)fd;
    (void)what;
    watch_close(w);
    if (w->waiting) {
        return;
    }
    w->dead = 0;
    struct lb_etcd *c = w->c;
    w->conn = evhttp_connection_base_new(c->base, NULL, c->host, (unsigned short)c->port);
    struct evhttp_request *req = w->conn != NULL ? evhttp_request_new(on_watch_done, w) : NULL;
    if (req == NULL) {
        watch_again(w, lb_backoff_next(&w->backoff, WATCH_BACKOFF_MIN_MS, WATCH_BACKOFF_MAX_MS),
                    "watch: out of memory");
        return;
    }
    evhttp_connection_set_timeout(w->conn, WATCH_IDLE_TIMEOUT_S);
    evhttp_request_set_chunked_cb(req, on_watch_chunk);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char host[300];
    snprintf(host, sizeof(host), "%s:%d", c->host, c->port);
    evhttp_add_header(h, "Host", host);
    evhttp_add_header(h, "Content-Type", "application/json");
    char *body = lb_etcd_encode_watch(w->key, w->prefix, w->next_rev);
    evbuffer_add(evhttp_request_get_output_buffer(req), body, strlen(body));
    free(body);
    if (evhttp_make_request(w->conn, req, EVHTTP_REQ_POST, "/v3/watch") < 0) {
        watch_again(w, lb_backoff_next(&w->backoff, WATCH_BACKOFF_MIN_MS, WATCH_BACKOFF_MAX_MS),
                    "watch: the request could not be sent");
    }
}

struct lb_etcd_watch *lb_etcd_watch_start(struct lb_etcd *c, const char *key, int prefix,
                                          int64_t start_revision, lb_etcd_watch_cb cb, void *arg)
{
    struct lb_etcd_watch *w = lb_xcalloc(1, sizeof(*w));
    w->c = c;
    w->key = lb_xstrdup(key);
    w->prefix = prefix;
    w->next_rev = start_revision;
    w->cb = cb;
    w->arg = arg;
    w->acc = evbuffer_new();
    w->timer = evtimer_new(c->base, on_watch_timer, w);
    w->next = c->watches;
    if (c->watches != NULL) {
        c->watches->prev = w;
    }
    c->watches = w;
    event_active(w->timer, EV_TIMEOUT, 0);
    return w;
}

void lb_etcd_watch_resume(struct lb_etcd_watch *w, int64_t start_revision)
{
    w->next_rev = start_revision;
    w->waiting = 0;
    w->dead = 1;
    w->up = 0;
    event_del(w->timer);
    event_active(w->timer, EV_TIMEOUT, 0);
}

int lb_etcd_watch_up(const struct lb_etcd_watch *w)
{
    return w != NULL && w->up;
}

void lb_etcd_watch_stop(struct lb_etcd_watch *w)
{
    if (w == NULL) {
        return;
    }
    struct lb_etcd *c = w->c;
    if (w->prev != NULL) {
        w->prev->next = w->next;
    } else {
        c->watches = w->next;
    }
    if (w->next != NULL) {
        w->next->prev = w->prev;
    }
    watch_close(w);
    event_free(w->timer);
    evbuffer_free(w->acc);
    free(w->key);
    free(w);
}

/* ---- the client ------------------------------------------------------------------ */

struct lb_etcd *lb_etcd_new(struct event_base *base, const char *host, int port, int64_t timeout_ms)
{
    struct lb_etcd *c = lb_xcalloc(1, sizeof(*c));
    c->base = base;
    c->reaper = event_new(base, -1, 0, on_reaper, c);
    c->host = lb_xstrdup(host);
    c->port = port;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 2000;
    return c;
}

size_t lb_etcd_pending(const struct lb_etcd *c)
{
    return c->ncalls;
}

void lb_etcd_free(struct lb_etcd *c)
{
    if (c == NULL) {
        return;
    }
    while (c->watches != NULL) {
        lb_etcd_watch_stop(c->watches);
    }
    while (c->calls != NULL) {
        struct call *k = c->calls;
        call_unlink(k);
        if (k->conn != NULL && k->defer == NULL) {
            evhttp_connection_free(k->conn); /* its request goes without a callback */
        }
        if (k->defer != NULL) {
            event_free(k->defer);
        }
        free(k);
    }
    reap(c);
    free(c->dead);
    event_free(c->reaper);
    free(c->host);
    free(c);
}
