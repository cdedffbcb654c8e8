/*
 * gw_accesslog.h — one JSON line per answered client request.
 *
 *   {"ts":"2026-11-23T12:00:00.123Z","type":"access","request_id":"…",
 *    "caller":"svc-a","method":"GET","path":"/v1/orders/o1","domain":"orders",
 *    "op":"get","status":200,"latency_ms":1.234,"shards":1,"shard":"orders-2",
 *    "error":"timeout"}
 *
 * caller is null with auth off; shard is named when exactly one was asked;
 * error is the error code of non-2xx answers.  Destination (config
 * `access_log`): "stderr" (default), "off", or a file opened O_APPEND —
 * reopened on SIGHUP, so logrotate's rename + HUP works.  Each line is one
 * write(2), so lines of different workers never interleave.
 */
#ifndef GW_ACCESSLOG_H
#define GW_ACCESSLOG_H

#include <stddef.h>
#include <stdint.h>

struct gw_access {
    const char *request_id;
    const char *caller; /* NULL: anonymous */
    const char *method;
    const char *path;
    const char *domain; /* NULL: none */
    const char *op;
    int status;
    uint64_t usec;
    int shards;        /* shards asked (0: none) */
    const char *shard; /* the one shard, or NULL */
    const char *error; /* error code, or NULL */
};

/* Main thread (start-up, SIGHUP): 0, or -1 with err filled (the old
 * destination stays). */
int gw_accesslog_configure(const char *spec, char *err, size_t errlen);
int gw_accesslog_enabled(void);
void gw_accesslog_write(const struct gw_access *a);

#endif
