/*
 * gw_http.c — HTTP/1.1 server over bufferevents and http-parser.
 *
 * Per connection: read → http_parser_execute over the input buffer's
 * contiguous chunks → on message complete the parser pauses and the request
 * is handed to the handler outside the parser → the response is written →
 * parsing resumes with whatever the client pipelined.  Reading is disabled
 * while a request is in flight (backpressure: a client cannot queue an
 * unbounded amount of work on one connection), and neither reading nor
 * parsing goes on while the unsent output is above limits.max_output (a
 * client that pipelines and never reads cannot grow the output buffer
 * without bound); output that stays above it for output_drain_timeout_s
 * closes the connection.  The request read timer runs from the first byte
 * of a request (blank lines before a request line included) to its end.
 */
#include "gateway/gw_http.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <http_parser.h>

#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "model/md_error.h"

struct gw_http_server {
    struct event_base *base;
    struct evconnlistener *lis;
    struct gw_http_limits lim;
    gw_http_handler handler;
    void *arg;
    TAILQ_HEAD(, gw_conn) conns;
    size_t nconns;
    int closing;
    size_t nbusy;              /* connections whose request is with the handler */
    struct event *progress_ev; /* runs progress_cb on the next loop turn */
    void (*progress_cb)(void *);
    void *progress_arg;
    SSL_CTX *tls;  /* NULL: plain TCP */
    int max_conns; /* process-wide cap on this kind of connection (0: none) */
};

/* Client connections of the whole process (servers with a max_conns) and
 * the connections refused at that cap. */
static int64_t conns_total;
static uint64_t conns_refused;

struct hdr_off {
    uint32_t name, name_len, val, val_len;
};

struct gw_conn {
    TAILQ_ENTRY(gw_conn) link;
    struct gw_http_server *srv;
    struct bufferevent *bev;
    http_parser parser;
    struct event *read_timer;  /* whole-request read deadline (slow clients) */
    struct event *drain_timer; /* output above max_output must drain by then */

    /* the request being parsed */
    struct gw_http_req *req;
    char *hbuf; /* url + header names/values, offsets below */
    size_t hlen, hcap;
    size_t url_off, url_len;
    struct hdr_off hoff[GW_MAX_HEADERS];
    int nh;
    int last_was_value;
    int error; /* a response to an unparsable request is pending */
    struct md_error err;

    struct gw_http_req *ready; /* parsed, to hand to the handler */
    struct gw_http_req *busy;  /* with the handler */
    int in_dispatch;
    int close_after; /* close once the output is flushed */
    int peer_eof;    /* the client half-closed: answer what it sent, then close */
    int out_blocked; /* output above max_output: not reading or parsing */
    int dead;
    int counted; /* counts in conns_total */
};

static http_parser_settings settings;
static void conn_process(struct gw_conn *c);
static void conn_free(struct gw_conn *c);

/* ---- request objects ---------------------------------------------------- */

static struct gw_http_req *req_new(struct gw_conn *c)
{
    struct gw_http_req *r = malloc(sizeof(*r));
    if (r == NULL) {
        return NULL;
    }
    memset(r, 0, offsetof(struct gw_http_req, headers));
    r->conn = c;
    r->body = evbuffer_new();
    r->start_ms = lb_now_ms();
    return r;
}

const char *gw_http_header(const struct gw_http_req *req, const char *lname, size_t *len)
{
    for (int i = 0; i < req->nheaders; i++) {
        if (strcmp(req->headers[i].name, lname) == 0) {
            if (len != NULL) {
                *len = req->headers[i].value_len;
            }
            return req->headers[i].value;
        }
    }
    return NULL;
}

/* ---- parser callbacks ---------------------------------------------------- */

static int hbuf_add(struct gw_conn *c, const char *at, size_t len)
{
    if (c->hlen + len + 1 > c->hcap) {
        size_t cap = c->hcap ? c->hcap : 512;
        while (cap < c->hlen + len + 1) {
            cap *= 2;
        }
        char *nb = realloc(c->hbuf, cap);
        if (nb == NULL) {
            return -1;
        }
        c->hbuf = nb;
        c->hcap = cap;
    }
    memcpy(c->hbuf + c->hlen, at, len);
    c->hlen += len;
    return 0;
}

static void set_error(struct gw_conn *c, enum md_err e, const char *msg)
{
    if (!c->error) {
        c->error = 1;
        md_error_set(&c->err, e, NULL, "%s", msg);
    }
}

static void read_timer_start(struct gw_conn *c)
{
    struct timeval tv = {(time_t)c->srv->lim.request_read_timeout_s, 0};
    evtimer_add(c->read_timer, &tv);
}

static int on_message_begin(http_parser *p)
{
    struct gw_conn *c = p->data;
    if (c->req != NULL) {
        return -1;
    }
    c->req = req_new(c);
    if (c->req == NULL) {
        return -1;
    }
    c->hlen = 0;
    c->url_off = c->url_len = 0;
    c->nh = 0;
    c->last_was_value = 0;
    /* running already when blank lines came first (read_cb): they count */
    if (!evtimer_pending(c->read_timer, NULL)) {
        read_timer_start(c);
    }
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct gw_conn *c = p->data;
    if (c->url_len + len > c->srv->lim.max_url) {
        set_error(c, MD_E_URI_TOO_LONG, "the request URL is longer than the limit");
        return -1;
    }
    if (c->url_len == 0) {
        c->url_off = c->hlen;
    }
    c->url_len += len;
    return hbuf_add(c, at, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct gw_conn *c = p->data;
    if (c->nh == 0 || c->last_was_value) {
        if (c->nh == GW_MAX_HEADERS || c->nh >= c->srv->lim.max_nheaders) {
            set_error(c, MD_E_HEADERS_TOO_LARGE, "too many request headers");
            return -1;
        }
        /* terminate the url (first header) or the previous value */
        if (hbuf_add(c, "", 1) < 0) {
            return -1;
        }
        c->hoff[c->nh].name = (uint32_t)c->hlen;
        c->hoff[c->nh].name_len = 0;
        c->nh++;
        c->last_was_value = 0;
    }
    c->hoff[c->nh - 1].name_len += (uint32_t)len;
    return hbuf_add(c, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct gw_conn *c = p->data;
    struct hdr_off *h = &c->hoff[c->nh - 1];
    if (!c->last_was_value) {
        if (hbuf_add(c, "", 1) < 0) { /* terminate the name */
            return -1;
        }
        h->val = (uint32_t)c->hlen;
        h->val_len = 0;
        c->last_was_value = 1;
    }
    h->val_len += (uint32_t)len;
    return hbuf_add(c, at, len);
}

static int hex(int ch)
{
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    ch |= 0x20;
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* Percent-decode in place; a "%00" or a bad escape is refused. */
static int decode_path(char *s, size_t *len)
{
    size_t o = 0;
    for (size_t i = 0; i < *len; i++) {
        if (s[i] == '%') {
            if (i + 2 >= *len) {
                return -1;
            }
            int a = hex((unsigned char)s[i + 1]), b = hex((unsigned char)s[i + 2]);
            if (a < 0 || b < 0 || (a == 0 && b == 0)) {
                return -1;
            }
            s[o++] = (char)(a * 16 + b);
            i += 2;
        } else {
            s[o++] = s[i];
        }
    }
    s[o] = '\0';
    *len = o;
    return 0;
}

static enum gw_method method_of(unsigned m)
{
    switch (m) {
    case HTTP_GET:
        return GW_GET;
    case HTTP_PUT:
        return GW_PUT;
    case HTTP_POST:
        return GW_POST;
    case HTTP_PATCH:
        return GW_PATCH;
    case HTTP_DELETE:
        return GW_DELETE;
    case HTTP_HEAD:
        return GW_HEAD;
    case HTTP_OPTIONS:
        return GW_OPTIONS;
    default:
        return GW_OTHER;
    }
}

/* RFC 9110 5.6.2: a header name is a token */
static int is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')) {
        return 1;
    }
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* Headers the gateway reads as one value: a second line would be ignored
 * (first wins), so a request carrying two is refused instead. */
static const char *const single_headers[] = {"host", "authorization", "content-type",
                                             "idempotency-key", "if-match"};

/* A header name for an error message: printable ASCII, at most 48 bytes. */
static void shown_name(char *out, size_t cap, const char *name, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < cap && i < 48; i++) {
        unsigned char ch = (unsigned char)name[i];
        out[o++] = ch >= 0x20 && ch < 0x7f && ch != '\'' ? (char)ch : '?';
    }
    out[o] = '\0';
}

/* RFC 9112 framing checks on the parsed head (names lower-cased, values
 * trimmed already): 0, or -1 with the error set. */
static int check_head(struct gw_conn *c, const struct gw_http_req *r)
{
    int nsingle[sizeof(single_headers) / sizeof(single_headers[0])] = {0};
    for (int i = 0; i < r->nheaders; i++) {
        const char *name = r->headers[i].name;
        size_t nlen = strlen(name);
        int ok = nlen > 0;
        for (size_t k = 0; k < nlen && ok; k++) {
            ok = is_tchar((unsigned char)name[k]);
        }
        if (!ok) {
            char shown[64], msg[200];
            shown_name(shown, sizeof(shown), name, nlen);
            snprintf(msg, sizeof(msg),
                     "malformed HTTP request: header name '%s' is not a token (no whitespace "
                     "inside a name or before its colon)",
                     shown);
            set_error(c, MD_E_BAD_REQUEST, msg);
            return -1;
        }
        for (size_t k = 0; k < sizeof(single_headers) / sizeof(single_headers[0]); k++) {
            if (strcmp(name, single_headers[k]) == 0 && ++nsingle[k] > 1) {
                char msg[160];
                snprintf(msg, sizeof(msg),
                         "malformed HTTP request: more than one '%s' header (it may appear once)",
                         single_headers[k]);
                set_error(c, MD_E_BAD_REQUEST, msg);
                c->err.field = single_headers[k];
                return -1;
            }
        }
    }
    if (nsingle[0] == 0 && c->parser.http_minor == 1) {
        set_error(c, MD_E_BAD_REQUEST,
                  "malformed HTTP request: an HTTP/1.1 request needs a 'host' header");
        c->err.field = single_headers[0];
        return -1;
    }
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct gw_conn *c = p->data;
    struct gw_http_req *r = c->req;
    if (p->http_major != 1 || p->http_minor > 1) {
        char msg[120];
        snprintf(msg, sizeof(msg), "HTTP/%u.%u is not supported: polygate serves HTTP/1.1 and 1.0",
                 p->http_major, p->http_minor);
        set_error(c, MD_E_HTTP_VERSION, msg);
        return -1;
    }
    /* terminate the last value (or the url when there were no headers) */
    if (hbuf_add(c, "", 1) < 0) {
        return -1;
    }
    if (c->nh > 0 && !c->last_was_value) { /* a name without a value */
        c->hoff[c->nh - 1].val = (uint32_t)c->hlen - 1;
        c->hoff[c->nh - 1].val_len = 0;
    }
    /* one block per request: url (path NUL query NUL), then the headers */
    r->hblock = malloc(c->hlen);
    if (r->hblock == NULL) {
        return -1;
    }
    memcpy(r->hblock, c->hbuf, c->hlen);
    char *url = r->hblock + c->url_off;
    url[c->url_len] = '\0';
    char *frag = memchr(url, '#', c->url_len);
    if (frag != NULL) {
        *frag = '\0';
    }
    char *q = strchr(url, '?');
    if (q != NULL) {
        *q = '\0';
        r->query = q + 1;
    }
    r->path = url;
    r->path_len = strlen(url);
    if (decode_path(url, &r->path_len) < 0) {
        set_error(c, MD_E_BAD_REQUEST, "the request path has a malformed or NUL percent-escape");
    }
    r->nheaders = c->nh;
    for (int i = 0; i < c->nh; i++) {
        char *name = r->hblock + c->hoff[i].name;
        for (char *s = name; *s != '\0'; s++) {
            if (*s >= 'A' && *s <= 'Z') {
                *s = (char)(*s + 32);
            }
        }
        /* a value without the whitespace around it (RFC 9110 5.5: OWS) */
        char *v = r->hblock + c->hoff[i].val;
        size_t vlen = c->hoff[i].val_len;
        while (vlen > 0 && (*v == ' ' || *v == '\t')) {
            v++;
            vlen--;
        }
        while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) {
            vlen--;
        }
        v[vlen] = '\0';
        r->headers[i].name = name;
        r->headers[i].value = v;
        r->headers[i].value_len = vlen;
    }
    if (check_head(c, r) < 0) {
        return -1;
    }
    r->method = method_of(p->method);
    r->method_name = http_method_str((enum http_method)p->method);
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->srv->lim.max_body) {
        set_error(c, MD_E_TOO_LARGE, "the request body is larger than the limit");
        return -1;
    }
    const char *expect = gw_http_header(r, "expect", NULL);
    if (expect != NULL && strcasecmp(expect, "100-continue") == 0 && !c->error) {
        bufferevent_write(c->bev, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct gw_conn *c = p->data;
    if (evbuffer_get_length(c->req->body) + len > c->srv->lim.max_body) {
        set_error(c, MD_E_TOO_LARGE, "the request body is larger than the limit");
        return -1;
    }
    return evbuffer_add(c->req->body, at, len);
}

static int on_message_complete(http_parser *p)
{
    struct gw_conn *c = p->data;
    evtimer_del(c->read_timer);
    c->req->keep_alive = http_should_keep_alive(p);
    /* HTTP/1.0 keep-alive is opt-in on both sides: say it is kept */
    c->req->http10 = p->http_major == 1 && p->http_minor == 0;
    c->ready = c->req;
    c->req = NULL;
    http_parser_pause(p, 1);
    return 0;
}

static void req_destroy(struct gw_http_req *r)
{
    if (r != NULL) {
        evbuffer_free(r->body);
        free(r->hblock);
        free(r);
    }
}

/* ---- responses ----------------------------------------------------------- */

const char *gw_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* The head is assembled in one stack buffer and added with one
 * evbuffer_add: this runs once per response, and snprintf here was 5 % of
 * the gateway's instructions in the callgrind profile (docs/performance.md). */
/* keep_alive: 1 kept, 0 closed (says so), -1 kept and says so (HTTP/1.0) */
static void write_response(struct gw_conn *c, int status, const char *ctype, struct evbuffer *body,
                           const char *extra, int keep_alive, int head)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t blen = body != NULL ? evbuffer_get_length(body) : 0;
    const char *reason = gw_http_reason(status);
    size_t rlen = strlen(reason);
    size_t clen = ctype != NULL ? strlen(ctype) : 16;
    size_t xlen = extra != NULL ? strlen(extra) : 0;
    char buf[512];
    size_t need = 32 + rlen + 48 + clen + 20 + 24 + xlen;
    char *hdr = need <= sizeof(buf) ? buf : malloc(need);
    if (hdr == NULL) {
        c->close_after = 1;
        return;
    }
    char *p = LB_PUT_LIT(hdr, "HTTP/1.1 ");
    p = lb_put_u64(p, (uint64_t)(status > 0 ? status : 0));
    *p++ = ' ';
    p = lb_put_mem(p, reason, rlen);
    p = LB_PUT_LIT(p, "\r\n");
    if (status != 204) {
        p = LB_PUT_LIT(p, "Content-Type: ");
        p = ctype != NULL ? lb_put_mem(p, ctype, clen) : LB_PUT_LIT(p, "application/json");
        p = LB_PUT_LIT(p, "\r\nContent-Length: ");
        p = lb_put_u64(p, blen);
        p = LB_PUT_LIT(p, "\r\n");
    }
    if (keep_alive < 0) {
        p = LB_PUT_LIT(p, "Connection: keep-alive\r\n");
    } else if (keep_alive == 0) {
        p = LB_PUT_LIT(p, "Connection: close\r\n");
    }
    p = lb_put_mem(p, extra != NULL ? extra : "", xlen);
    p = LB_PUT_LIT(p, "\r\n");
    evbuffer_add(out, hdr, (size_t)(p - hdr));
    if (hdr != buf) {
        free(hdr);
    }
    if (body != NULL && status != 204 && !head) {
        evbuffer_add_buffer(out, body);
    }
}

/* The request at the handler changes; the server counts connections that
 * wait for an answer (a drain waits for those only). */
static void set_busy(struct gw_conn *c, struct gw_http_req *r)
{
    if (c->busy == NULL && r != NULL) {
        c->srv->nbusy++;
    } else if (c->busy != NULL && r == NULL) {
        c->srv->nbusy--;
        if (c->srv->closing && c->srv->progress_ev != NULL) {
            /* on the next loop turn: the drain may free this server */
            event_active(c->srv->progress_ev, EV_READ, 0);
        }
    }
    c->busy = r;
}

void gw_http_respond(struct gw_http_req *req, int status, const char *ctype, struct evbuffer *body,
                     const char *extra)
{
    struct gw_conn *c = req->conn;
    if (c == NULL) { /* the client went away while we worked */
        req_destroy(req);
        return;
    }
    int keep = req->keep_alive && !c->srv->closing;
    write_response(c, status, ctype, body, extra, keep && req->http10 ? -1 : keep,
                   req->method == GW_HEAD);
    set_busy(c, NULL);
    req_destroy(req);
    if (!keep) {
        c->close_after = 1;
        bufferevent_disable(c->bev, EV_READ);
        return; /* the write callback closes once flushed */
    }
    if (!c->in_dispatch) {
        conn_process(c); /* may free c */
    }
}

static void respond_error(struct gw_conn *c, const struct md_error *e)
{
    struct evbuffer *b = evbuffer_new();
    char rid[33];
    lb_gen_id(rid);
    md_error_write(b, e, rid);
    char extra[64];
    snprintf(extra, sizeof(extra), "X-Request-Id: %s\r\n", rid);
    write_response(c, md_err_status(e->err), "application/json", b, extra, 0, 0);
    evbuffer_free(b);
    c->close_after = 1;
    bufferevent_disable(c->bev, EV_READ);
}

/* ---- connection I/O ------------------------------------------------------ */

/* Whether the unsent output is above limits.max_output.  If so, reading and
 * parsing stop until the write callback sees it at or below the bound again
 * (the write low watermark), and the drain timer closes the connection if
 * that takes longer than output_drain_timeout_s. */
static int out_full(struct gw_conn *c)
{
    size_t max = c->srv->lim.max_output;
    if (max == 0 || evbuffer_get_length(bufferevent_get_output(c->bev)) <= max) {
        return 0;
    }
    if (!c->out_blocked) {
        c->out_blocked = 1;
        bufferevent_setwatermark(c->bev, EV_WRITE, max, 0);
        struct timeval tv = {(time_t)c->srv->lim.output_drain_timeout_s, 0};
        evtimer_add(c->drain_timer, &tv);
    }
    bufferevent_disable(c->bev, EV_READ);
    return 1;
}

/* Parse and dispatch what the input buffer holds, one request at a time.
 * Reading is enabled again only when the connection waits for more bytes.
 * Frees c when the client half-closed and everything it sent is answered:
 * callers must not touch c afterwards. */
static void conn_process(struct gw_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    while (!c->close_after && c->busy == NULL) {
        if (c->ready == NULL) {
            if (c->req == NULL && out_full(c)) {
                return; /* between requests: the next waits for the output to drain */
            }
            size_t avail = evbuffer_get_length(in);
            if (avail == 0) {
                break;
            }
            struct evbuffer_iovec v;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) {
                break;
            }
            http_parser_pause(&c->parser, 0);
            size_t used = http_parser_execute(&c->parser, &settings, v.iov_base, v.iov_len);
            enum http_errno he = HTTP_PARSER_ERRNO(&c->parser);
            evbuffer_drain(in, used);
            if (he != HPE_OK && he != HPE_PAUSED) {
                if (!c->error) {
                    if (he == HPE_HEADER_OVERFLOW) {
                        set_error(c, MD_E_HEADERS_TOO_LARGE,
                                  "the request headers are larger than the limit");
                    } else {
                        char msg[200];
                        snprintf(msg, sizeof(msg), "malformed HTTP request: %s",
                                 http_errno_description(he));
                        set_error(c, MD_E_BAD_REQUEST, msg);
                    }
                }
                respond_error(c, &c->err);
                return;
            }
            if (c->ready == NULL) {
                if (used < v.iov_len) {
                    break; /* should not happen without an error */
                }
                continue;
            }
        }
        struct gw_http_req *r = c->ready;
        c->ready = NULL;
        if (c->error) {
            req_destroy(r);
            respond_error(c, &c->err);
            return;
        }
        set_busy(c, r);
        bufferevent_disable(c->bev, EV_READ);
        c->in_dispatch = 1;
        c->srv->handler(r, c->srv->arg);
        c->in_dispatch = 0;
    }
    if (c->busy != NULL || c->close_after) {
        return;
    }
    if (c->peer_eof) {
        /* every request that arrived before the client's FIN is answered (a
         * request cut short by the FIN can never complete): close once the
         * answers are out */
        c->close_after = 1;
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
            conn_free(c);
        }
        return;
    }
    bufferevent_enable(c->bev, EV_READ);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct gw_conn *c = arg;
    (void)bev;
    /* The request read timer runs from the first byte after the previous
     * request, not from the request line: blank lines before a request line
     * (which the parser skips silently) cannot keep a connection open. */
    if (c->req == NULL && c->busy == NULL && c->ready == NULL &&
        !evtimer_pending(c->read_timer, NULL)) {
        read_timer_start(c);
    }
    conn_process(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct gw_conn *c = arg;
    size_t left = evbuffer_get_length(bufferevent_get_output(bev));
    if (c->close_after) {
        if (left == 0) {
            conn_free(c);
        }
        return;
    }
    if (c->out_blocked && left <= c->srv->lim.max_output) {
        c->out_blocked = 0;
        evtimer_del(c->drain_timer);
        bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
        if (c->busy == NULL) {
            conn_process(c); /* may free c */
        }
    }
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct gw_conn *c = arg;
    (void)bev;
    if (what & BEV_EVENT_TIMEOUT) {
        /* idle keep-alive connection, or output the client does not read:
         * close quietly */
        conn_free(c);
        return;
    }
    if (what & BEV_EVENT_ERROR) {
        /* a request at the handler answers into the void (conn_free) */
        conn_free(c);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        /* The client closed its side.  It may still read (a half-close after
         * its last request, like `nc -N`): answer every request that arrived
         * before the FIN, in order, then close.  A client that is really gone
         * makes the writes fail, which closes the connection as above. */
        c->peer_eof = 1;
        if (c->busy == NULL) {
            conn_process(c); /* may free c */
        }
    }
}

static void read_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct gw_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->busy == NULL && c->ready == NULL && !c->close_after) {
        struct md_error e = {0};
        md_error_set(&e, MD_E_REQ_TIMEOUT, NULL, "the request was not received in time");
        respond_error(c, &e);
    }
}

static void drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct gw_conn *c = arg;
    (void)fd;
    (void)what;
    lb_debug("closing a connection whose unsent output (%zu bytes) did not drain below "
             "max_output_bytes (%zu) within %lld s",
             evbuffer_get_length(bufferevent_get_output(c->bev)), c->srv->lim.max_output,
             (long long)c->srv->lim.output_drain_timeout_s);
    conn_free(c);
}

static void conn_free(struct gw_conn *c)
{
    if (c->dead) {
        return;
    }
    c->dead = 1;
    if (c->busy != NULL) {
        c->busy->conn = NULL;
        set_busy(c, NULL);
    }
    TAILQ_REMOVE(&c->srv->conns, c, link);
    c->srv->nconns--;
    if (c->srv->closing && c->srv->progress_ev != NULL) {
        event_active(c->srv->progress_ev, EV_READ, 0);
    }
    if (c->counted) {
        __atomic_sub_fetch(&conns_total, 1, __ATOMIC_RELAXED);
    }
    bufferevent_free(c->bev);
    event_free(c->read_timer);
    event_free(c->drain_timer);
    req_destroy(c->req);
    req_destroy(c->ready);
    free(c->hbuf);
    free(c);
}

static void accept_cb(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)lis;
    (void)sa;
    (void)salen;
    gw_http_server_adopt(arg, fd);
}

/* Over limits.max_connections: a best-effort 503 in the one error shape
 * (plain HTTP only; a new socket's send buffer takes it whole), then close.
 * Costs no allocation, so a connection flood cannot grow memory. */
static void refuse_conn(struct gw_http_server *s, evutil_socket_t fd)
{
    __atomic_sub_fetch(&conns_total, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&conns_refused, 1, __ATOMIC_RELAXED);
    if (s->tls == NULL) {
        char rid[33], body[320], msg[512];
        lb_gen_id(rid);
        int bl = snprintf(body, sizeof(body),
                          "{\"error\":{\"code\":\"%s\",\"message\":\"polygate is at its limit "
                          "of %d client connections; retry shortly\",\"request_id\":\"%s\"}}",
                          md_err_code(MD_E_UNAVAILABLE), s->max_conns, rid);
        int ml = snprintf(msg, sizeof(msg),
                          "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                          "Content-Length: %d\r\nRetry-After: 1\r\nX-Request-Id: %s\r\n"
                          "Connection: close\r\n\r\n%s",
                          bl, rid, body);
        if (ml > 0 && ml < (int)sizeof(msg)) {
            ssize_t n = send(fd, msg, (size_t)ml, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)n;
        }
        /* FIN after the answer; drop what the client already sent, so that
         * close() does not turn into a reset that could discard the 503 */
        shutdown(fd, SHUT_WR);
        char scratch[4096];
        while (recv(fd, scratch, sizeof(scratch), MSG_DONTWAIT) > 0) {
        }
    }
    evutil_closesocket(fd);
}

void gw_http_server_set_max_conns(struct gw_http_server *s, int max)
{
    s->max_conns = max;
}

void gw_http_conn_stats(int64_t *open, uint64_t *refused)
{
    *open = __atomic_load_n(&conns_total, __ATOMIC_RELAXED);
    *refused = __atomic_load_n(&conns_refused, __ATOMIC_RELAXED);
}

void gw_http_server_adopt(struct gw_http_server *s, evutil_socket_t fd)
{
    evutil_make_socket_nonblocking(fd);
    if (s->closing) {
        evutil_closesocket(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (s->max_conns > 0 &&
        __atomic_add_fetch(&conns_total, 1, __ATOMIC_RELAXED) > (int64_t)s->max_conns) {
        refuse_conn(s, fd);
        return;
    }
    struct gw_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        if (s->max_conns > 0) {
            __atomic_sub_fetch(&conns_total, 1, __ATOMIC_RELAXED);
        }
        evutil_closesocket(fd);
        return;
    }
    c->counted = s->max_conns > 0;
    c->srv = s;
    if (s->tls != NULL) {
        SSL *ssl = SSL_new(s->tls);
        c->bev = ssl == NULL
                     ? NULL
                     : bufferevent_openssl_socket_new(s->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                      BEV_OPT_CLOSE_ON_FREE);
        if (c->bev != NULL) {
            /* a client that drops the connection without close_notify is fine */
            bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
        } else if (ssl != NULL) {
            SSL_free(ssl);
        }
    } else {
        c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    c->read_timer = evtimer_new(s->base, read_timeout_cb, c);
    c->drain_timer = evtimer_new(s->base, drain_timeout_cb, c);
    if (c->bev == NULL || c->read_timer == NULL || c->drain_timer == NULL) {
        if (c->bev != NULL) {
            bufferevent_free(c->bev);
        } else {
            evutil_closesocket(fd);
        }
        if (c->read_timer != NULL) {
            event_free(c->read_timer);
        }
        if (c->drain_timer != NULL) {
            event_free(c->drain_timer);
        }
        if (c->counted) {
            __atomic_sub_fetch(&conns_total, 1, __ATOMIC_RELAXED);
        }
        free(c);
        return;
    }
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    /* read: an idle keep-alive connection; write: output that makes no
     * progress at all (also below max_output, e.g. a last answer before
     * closing that the client never reads) */
    struct timeval idle = {(time_t)s->lim.idle_timeout_s, 0};
    struct timeval stuck = {(time_t)s->lim.output_drain_timeout_s, 0};
    bufferevent_set_timeouts(c->bev, &idle, s->lim.output_drain_timeout_s > 0 ? &stuck : NULL);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    TAILQ_INSERT_TAIL(&s->conns, c, link);
    s->nconns++;
}

static void accept_error_cb(struct evconnlistener *lis, void *arg)
{
    (void)lis;
    (void)arg;
    int e = EVUTIL_SOCKET_ERROR();
    lb_warn("accept failed: %s", evutil_socket_error_to_string(e));
}

static void progress_ev_cb(evutil_socket_t fd, short what, void *arg)
{
    struct gw_http_server *s = arg;
    (void)fd;
    (void)what;
    if (s->progress_cb != NULL) {
        s->progress_cb(s->progress_arg);
    }
}

struct gw_http_server *gw_http_server_new(struct event_base *base, struct evconnlistener *lis,
                                          const struct gw_http_limits *lim, gw_http_handler h,
                                          void *arg)
{
    static int settings_done;
    if (!settings_done) {
        settings.on_message_begin = on_message_begin;
        settings.on_url = on_url;
        settings.on_header_field = on_header_field;
        settings.on_header_value = on_header_value;
        settings.on_headers_complete = on_headers_complete;
        settings.on_body = on_body;
        settings.on_message_complete = on_message_complete;
        settings_done = 1;
    }
    struct gw_http_server *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NULL;
    }
    s->base = base;
    s->lis = lis;
    s->lim = *lim;
    s->handler = h;
    s->arg = arg;
    s->progress_ev = event_new(base, -1, 0, progress_ev_cb, s);
    if (s->progress_ev == NULL) {
        free(s);
        return NULL;
    }
    TAILQ_INIT(&s->conns);
    if (lis != NULL) {
        evconnlistener_set_cb(lis, accept_cb, s);
        evconnlistener_set_error_cb(lis, accept_error_cb);
    }
    return s;
}

void gw_http_server_set_tls(struct gw_http_server *s, void *ssl_ctx)
{
    s->tls = ssl_ctx;
}

void *gw_http_tls_context(const char *cert, const char *key, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        snprintf(err, errlen, "tls.cert: cannot load %s: %s", cert,
                 ERR_reason_error_string(ERR_get_error()));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "tls.key: cannot load %s or it does not match the certificate: %s",
                 key, ERR_reason_error_string(ERR_get_error()));
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

void gw_http_tls_context_free(void *ssl_ctx)
{
    SSL_CTX_free(ssl_ctx);
}

void gw_http_server_set_limits(struct gw_http_server *s, const struct gw_http_limits *lim)
{
    s->lim = *lim;
}

void gw_http_server_stop_accepting(struct gw_http_server *s)
{
    s->closing = 1;
    if (s->lis != NULL) {
        evconnlistener_free(s->lis);
        s->lis = NULL;
    }
}

void gw_http_server_close_idle(struct gw_http_server *s)
{
    s->closing = 1;
    struct gw_conn *c, *next;
    for (c = TAILQ_FIRST(&s->conns); c != NULL; c = next) {
        next = TAILQ_NEXT(c, link);
        if (c->busy != NULL || c->ready != NULL) {
            continue; /* answered later, then closed (keep-alive is off now) */
        }
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
            c->close_after = 1; /* flush the last response first */
            bufferevent_disable(c->bev, EV_READ);
        } else {
            conn_free(c);
        }
    }
}

size_t gw_http_server_nconns(const struct gw_http_server *s)
{
    return s->nconns;
}

size_t gw_http_server_nbusy(const struct gw_http_server *s)
{
    return s->nbusy;
}

void gw_http_server_set_progress_cb(struct gw_http_server *s, void (*cb)(void *), void *arg)
{
    s->progress_cb = cb;
    s->progress_arg = arg;
}

void gw_http_server_free(struct gw_http_server *s)
{
    if (s == NULL) {
        return;
    }
    gw_http_server_stop_accepting(s);
    s->progress_cb = NULL;
    while (!TAILQ_EMPTY(&s->conns)) {
        conn_free(TAILQ_FIRST(&s->conns));
    }
    event_free(s->progress_ev);
    free(s);
}

struct evconnlistener *gw_http_listen(struct event_base *base, const char *host, int port,
                                      int reuseport, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    char addr[300];
    if (strchr(host, ':') != NULL) {
        snprintf(addr, sizeof(addr), "[%s]:%d", host, port);
    } else {
        snprintf(addr, sizeof(addr), "%s:%d", host, port);
    }
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) < 0) {
        snprintf(err, errlen, "cannot parse listen address %s", addr);
        return NULL;
    }
    unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;
    if (reuseport) {
        flags |= LEV_OPT_REUSEABLE_PORT;
    }
    struct evconnlistener *l =
        evconnlistener_new_bind(base, NULL, NULL, flags, 1024, (struct sockaddr *)&ss, sslen);
    if (l == NULL) {
        snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
    }
    return l;
}
