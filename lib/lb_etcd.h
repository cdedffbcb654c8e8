/*
 * lb_etcd.h — an etcd v3 client on a libevent loop, through etcd's HTTP/JSON
 * gateway (etcd 3.4): range, put, txn, leases and watches, each one POST of
 * a JSON document to /v3/... with keys and values in base64.
 *
 * Why evhttp and not libcurl: evhttp is linked already (no new dependency),
 * it runs on the caller's event loop like everything else of the process,
 * and it hands a chunked response over chunk by chunk, which is what a
 * watch is (one JSON document per line, as long as the stream lasts).
 *
 * Contract (the adapters' one): every call completes exactly once, on the
 * loop, never from inside the function that started it; a call has a
 * deadline (the client's timeout_ms: connect, send and answer); errors are
 * reported in the result (`unreachable` when etcd did not answer), never by
 * aborting.  Results are borrowed for the duration of the callback.
 *
 * The encoding and decoding functions below the client are pure, for the
 * unit tests (tests/unit/test_lb_etcd.c); the I/O is tested against a real
 * etcd by tests/integration/test_fleet.py.
 */
#ifndef LB_ETCD_H
#define LB_ETCD_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct lb_etcd;
struct lb_etcd_watch;

struct lb_etcd_kv {
    char *key; /* NUL-terminated */
    char *value;
    size_t value_len; /* value is NUL-terminated past it */
    int64_t create_revision, mod_revision, version, lease;
};

struct lb_etcd_result {
    int ok;                 /* etcd answered and the call succeeded */
    int unreachable;        /* no answer: refused, timed out, connection lost */
    char err[256];          /* why not ok */
    int64_t revision;       /* the store's revision (the answer's header) */
    struct lb_etcd_kv *kvs; /* range; a txn's range operations, in order */
    size_t nkvs;
    int succeeded;         /* txn: every compare held (the success ops ran) */
    int64_t lease_id, ttl; /* lease grant / keepalive (ttl 0: the lease is gone) */
};

typedef void (*lb_etcd_cb)(const struct lb_etcd_result *r, void *arg);

/* A client of the etcd at host:port; each call gets timeout_ms. */
struct lb_etcd *lb_etcd_new(struct event_base *base, const char *host, int port,
                            int64_t timeout_ms);
/* Calls still in flight are dropped without their callbacks, watches
 * stopped; never from inside a callback of this client. */
void lb_etcd_free(struct lb_etcd *c);
/* Calls in flight (a shutdown waits for its lease revoke). */
size_t lb_etcd_pending(const struct lb_etcd *c);

/* One key, or every key under it when prefix is set. */
void lb_etcd_range(struct lb_etcd *c, const char *key, int prefix, lb_etcd_cb cb, void *arg);
/* lease 0: none. */
void lb_etcd_put(struct lb_etcd *c, const char *key, const char *value, size_t len, int64_t lease,
                 lb_etcd_cb cb, void *arg);

enum lb_etcd_target { LB_ETCD_VERSION, LB_ETCD_CREATE, LB_ETCD_MOD };
enum lb_etcd_cmp_op { LB_ETCD_EQUAL, LB_ETCD_GREATER, LB_ETCD_LESS, LB_ETCD_NOT_EQUAL };

struct lb_etcd_cmp {
    const char *key;
    enum lb_etcd_target target;
    enum lb_etcd_cmp_op op;
    int64_t value; /* the revision / version compared with */
};

enum lb_etcd_op_type { LB_ETCD_OP_PUT, LB_ETCD_OP_RANGE, LB_ETCD_OP_DELETE };

struct lb_etcd_op {
    enum lb_etcd_op_type type;
    const char *key;
    const char *value; /* put */
    size_t len;
    int64_t lease; /* put; 0: none */
};

/* If every compare holds, the success ops run, else the failure ops. */
void lb_etcd_txn(struct lb_etcd *c, const struct lb_etcd_cmp *cmp, size_t ncmp,
                 const struct lb_etcd_op *success, size_t nsuccess,
                 const struct lb_etcd_op *failure, size_t nfailure, lb_etcd_cb cb, void *arg);

void lb_etcd_lease_grant(struct lb_etcd *c, int64_t ttl_s, lb_etcd_cb cb, void *arg);
/* One keepalive; r->ttl is 0 when the lease has expired. */
void lb_etcd_lease_keepalive(struct lb_etcd *c, int64_t id, lb_etcd_cb cb, void *arg);
void lb_etcd_lease_revoke(struct lb_etcd *c, int64_t id, lb_etcd_cb cb, void *arg);

/* ---- watch ------------------------------------------------------------------ */

enum lb_etcd_event_type { LB_ETCD_PUT, LB_ETCD_DELETE };

struct lb_etcd_event {
    enum lb_etcd_event_type type;
    struct lb_etcd_kv kv; /* a delete: key and mod_revision only */
};

enum lb_etcd_watch_state {
    LB_ETCD_WATCH_UP,        /* the stream is established (again) */
    LB_ETCD_WATCH_DOWN,      /* it broke (err): a reconnect follows, resuming after the
                              * last revision seen */
    LB_ETCD_WATCH_EVENTS,    /* events (in revision order) */
    LB_ETCD_WATCH_COMPACTED, /* the revision to resume from was compacted away
                              * (revision: the compaction's): the watch waits for
                              * lb_etcd_watch_resume after the caller re-read */
};

struct lb_etcd_watch_update {
    enum lb_etcd_watch_state state;
    int64_t revision; /* EVENTS: the last event's; COMPACTED: the compact revision */
    const struct lb_etcd_event *events;
    size_t nevents;
    const char *err; /* DOWN */
};

typedef void (*lb_etcd_watch_cb)(const struct lb_etcd_watch_update *u, void *arg);

/* Watch key (or everything under it) from start_revision (0: from now).  A
 * broken stream reconnects with backoff and resumes from the last revision
 * seen + 1. */
struct lb_etcd_watch *lb_etcd_watch_start(struct lb_etcd *c, const char *key, int prefix,
                                          int64_t start_revision, lb_etcd_watch_cb cb, void *arg);
/* Restart the stream from start_revision (after COMPACTED and a re-read, or
 * to reconnect now). */
void lb_etcd_watch_resume(struct lb_etcd_watch *w, int64_t start_revision);
/* 1 while the stream is established. */
int lb_etcd_watch_up(const struct lb_etcd_watch *w);
void lb_etcd_watch_stop(struct lb_etcd_watch *w);

/* ---- encoding and decoding (pure) ------------------------------------------- */

enum lb_etcd_call {
    LB_ETCD_CALL_RANGE,
    LB_ETCD_CALL_PUT,
    LB_ETCD_CALL_TXN,
    LB_ETCD_CALL_GRANT,
    LB_ETCD_CALL_KEEPALIVE,
    LB_ETCD_CALL_REVOKE,
};

/* The end of the range of every key that starts with key (malloc'd): key
 * with its last byte below 0xff incremented, the bytes after it dropped;
 * "\0" (every key) when there is none. */
char *lb_etcd_prefix_end(const char *key);

/* Request bodies (malloc'd JSON text). */
char *lb_etcd_encode_range(const char *key, int prefix);
char *lb_etcd_encode_put(const char *key, const char *value, size_t len, int64_t lease);
char *lb_etcd_encode_txn(const struct lb_etcd_cmp *cmp, size_t ncmp,
                         const struct lb_etcd_op *success, size_t nsuccess,
                         const struct lb_etcd_op *failure, size_t nfailure);
char *lb_etcd_encode_lease(const char *field, int64_t value); /* {"TTL":n} / {"ID":"n"} */
char *lb_etcd_encode_watch(const char *key, int prefix, int64_t start_revision);

/* Decode an answer of etcd (HTTP status, body) to a call of `kind` into r
 * (cleared first).  0 when r->ok, -1 with r->err otherwise. */
int lb_etcd_decode(enum lb_etcd_call kind, int status, const char *body, size_t len,
                   struct lb_etcd_result *r);
void lb_etcd_result_clear(struct lb_etcd_result *r);

/* One message of a watch stream (one line). */
struct lb_etcd_watch_msg {
    int created, canceled;
    int64_t revision, compact_revision;
    struct lb_etcd_event *events;
    size_t nevents;
    char err[256]; /* an error message of the stream, or a line that does not decode */
};

/* 0, or -1 with m->err (the stream is then to be dropped). */
int lb_etcd_decode_watch(const char *line, size_t len, struct lb_etcd_watch_msg *m);
void lb_etcd_watch_msg_clear(struct lb_etcd_watch_msg *m);

#endif
