/*
 * gw_http.h — the HTTP/1.1 server: connections, parsing, responses.
 *
 * One connection = one bufferevent.  Requests are parsed with Debian's
 * http-parser (nodejs' parser) and handled one at a time per connection:
 * pipelined requests wait in the input buffer, so responses go out in order.
 * Every error this layer produces itself (malformed request, too large,
 * too many headers, header timeout) uses the gateway's JSON error shape.
 */
#ifndef GW_HTTP_H
#define GW_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/listener.h>

struct evbuffer;
struct gw_conn;
struct gw_http_server;

enum gw_method { GW_GET, GW_PUT, GW_POST, GW_PATCH, GW_DELETE, GW_HEAD, GW_OPTIONS, GW_OTHER };

#define GW_MAX_HEADERS 128 /* hard cap; limits.max_header_count may be lower */

struct gw_header {
    const char *name; /* lower-cased, NUL-terminated, in the request's arena */
    const char *value;
    size_t value_len;
};

struct gw_http_req {
    struct gw_conn *conn; /* NULL once the client went away */
    enum gw_method method;
    const char *method_name;
    char *path; /* percent-decoded path, NUL-terminated */
    size_t path_len;
    char *query;  /* raw query string (after '?'), or NULL */
    char *hblock; /* owns path, query and header strings */
    int nheaders;
    struct evbuffer *body;
    int keep_alive;
    int http10; /* an HTTP/1.0 request: keep-alive is announced */
    uint64_t start_ms;
    void *data; /* the handler's */
    /* last: only the first nheaders entries are ever read, so a new request
     * zeroes the members above and not these 3 KiB (see req_new) */
    struct gw_header headers[GW_MAX_HEADERS];
};

/* Handler: must eventually call gw_http_respond() exactly once per request.
 * It may respond synchronously or later (from any callback on the same loop). */
typedef void (*gw_http_handler)(struct gw_http_req *req, void *arg);

struct gw_http_limits {
    size_t max_body;
    size_t max_headers; /* bytes of the request line + headers */
    size_t max_url;
    int max_nheaders;
    int64_t idle_timeout_s;         /* keep-alive idle connections are closed */
    int64_t request_read_timeout_s; /* a request must arrive whole within it (slowloris) */
    size_t max_output;              /* unsent response bytes above which reading stops (0: none) */
    int64_t output_drain_timeout_s; /* output above max_output must drain within it, or close */
};

struct gw_http_server *gw_http_server_new(struct event_base *base, struct evconnlistener *lis,
                                          const struct gw_http_limits *lim, gw_http_handler h,
                                          void *arg);
/* Serve TLS on this server's connections (ssl_ctx is an SSL_CTX*, shared,
 * owned by the caller and alive as long as the server). */
void gw_http_server_set_tls(struct gw_http_server *s, void *ssl_ctx);
/* Build a server SSL_CTX from PEM files; NULL with err filled. */
void *gw_http_tls_context(const char *cert, const char *key, char *err, size_t errlen);
void gw_http_tls_context_free(void *ssl_ctx);
/* Serve an already connected socket (the listener's accept path; tests and
 * fuzzers hand in one end of a socketpair).  Takes ownership of fd. */
void gw_http_server_adopt(struct gw_http_server *s, evutil_socket_t fd);
/* Stop accepting (frees the listener); existing connections go on. */
void gw_http_server_stop_accepting(struct gw_http_server *s);
/* Close idle connections now; busy ones close after their response. */
void gw_http_server_close_idle(struct gw_http_server *s);
void gw_http_server_set_limits(struct gw_http_server *s, const struct gw_http_limits *lim);
size_t gw_http_server_nconns(const struct gw_http_server *s);
/* Requests handed to the handler and not answered yet. */
size_t gw_http_server_nbusy(const struct gw_http_server *s);
/* Called (on the loop) while the server is closing, each time a request was
 * answered or a connection closed: a drain checks whether it is done. */
void gw_http_server_set_progress_cb(struct gw_http_server *s, void (*cb)(void *), void *arg);
/* Cap the connections of every server given the same cap, process-wide
 * (limits.max_connections, client listener): beyond it a connection gets a
 * 503 and is closed at once.  0: no cap. */
void gw_http_server_set_max_conns(struct gw_http_server *s, int max);
/* Capped connections open now, and refused so far. */
void gw_http_conn_stats(int64_t *open, uint64_t *refused);
void gw_http_server_free(struct gw_http_server *s);

const char *gw_http_header(const struct gw_http_req *req, const char *lname, size_t *len);

/* Send a response.  `body` (may be NULL) is moved into the connection's
 * output buffer without copying.  `extra` holds whole header lines, each
 * ending in "\r\n" (may be NULL).  Frees the request. */
void gw_http_respond(struct gw_http_req *req, int status, const char *ctype, struct evbuffer *body,
                     const char *extra);

const char *gw_http_reason(int status);

/* Create a listening socket bound with SO_REUSEPORT (one per worker). */
struct evconnlistener *gw_http_listen(struct event_base *base, const char *host, int port,
                                      int reuseport, char *err, size_t errlen);

#endif
