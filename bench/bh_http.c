/*
 * bh_http.c — the load generator's HTTP/1.1 client to polygate: one
 * keep-alive connection per bench client on a bufferevent, TCP_NODELAY, one
 * request at a time, responses framed by Content-Length (all polygate sends).
 * Also the idle-connection test (bh_http_idle).
 */
#include "bench/bh.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

struct bh_http_conn {
    struct bufferevent *bev;
    struct bh_client *client; /* NULL in the idle test */
    void (*on_response)(struct bh_http_conn *, int status);
    void (*on_error)(struct bh_http_conn *);
    int hdr_done;
    size_t body_left;
    int status;
    int idle_state; /* idle test: 0 connecting, 1 served, 2 closed, 3 sample ok, 4 sample bad */
    void *arg;
};

static const char *g_host = "127.0.0.1";
static int g_port = 18180;

/* Parse as many complete responses as the buffer holds. */
static void read_cb(struct bufferevent *bev, void *arg)
{
    struct bh_http_conn *h = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        if (!h->hdr_done) {
            struct evbuffer_ptr p = evbuffer_search(in, "\r\n\r\n", 4, NULL);
            if (p.pos < 0) {
                if (evbuffer_get_length(in) > 65536) {
                    h->on_error(h);
                }
                return;
            }
            size_t hlen = (size_t)p.pos + 4;
            char *hd = (char *)evbuffer_pullup(in, (ev_ssize_t)hlen);
            h->status = hlen > 12 && strncmp(hd, "HTTP/1.", 7) == 0 ? atoi(hd + 9) : 0;
            h->body_left = 0;
            for (char *line = memchr(hd, '\n', hlen); line != NULL && line < hd + hlen;
                 line = memchr(line, '\n', (size_t)(hd + hlen - line))) {
                line++;
                if ((size_t)(hd + hlen - line) > 15 &&
                    strncasecmp(line, "content-length:", 15) == 0) {
                    h->body_left = strtoul(line + 15, NULL, 10);
                }
            }
            evbuffer_drain(in, hlen);
            h->hdr_done = 1;
        }
        if (evbuffer_get_length(in) < h->body_left) {
            return;
        }
        evbuffer_drain(in, h->body_left);
        h->hdr_done = 0;
        h->on_response(h, h->status);
        if (evbuffer_get_length(in) == 0) {
            return;
        }
    }
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct bh_http_conn *h = arg;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        h->on_error(h);
    }
}

static struct bh_http_conn *conn_new(struct event_base *base)
{
    struct bh_http_conn *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        return NULL;
    }
    h->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (h->bev == NULL) {
        free(h);
        return NULL;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    inet_pton(AF_INET, g_host, &sa.sin_addr);
    bufferevent_setcb(h->bev, read_cb, NULL, event_cb, h);
    if (bufferevent_socket_connect(h->bev, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        bufferevent_free(h->bev);
        free(h);
        return NULL;
    }
    bufferevent_enable(h->bev, EV_READ | EV_WRITE);
    return h;
}

static void conn_free(struct bh_http_conn *h)
{
    if (h != NULL) {
        bufferevent_free(h->bev);
        free(h);
    }
}

static void write_request(struct bh_http_conn *h, const char *method, const char *path,
                          const char *body, size_t bodylen)
{
    struct evbuffer *out = bufferevent_get_output(h->bev);
    evbuffer_add_printf(out, "%s %s HTTP/1.1\r\nHost: %s:%d\r\n", method, path, g_host, g_port);
    if (body != NULL) {
        evbuffer_add_printf(out, "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                            bodylen);
        evbuffer_add(out, body, bodylen);
    } else {
        evbuffer_add(out, "\r\n", 2);
    }
}

/* ---- load runs ---------------------------------------------------------------- */

static void run_response(struct bh_http_conn *h, int status)
{
    char why[64];
    snprintf(why, sizeof(why), "HTTP status %d", status);
    bh_complete(h->client, status >= 200 && status < 300, why);
}

/* The connection broke: fail the operation in flight and reconnect (bounded). */
static void run_error(struct bh_http_conn *h)
{
    struct bh_client *c = h->client;
    struct bh_run *run = c->run;
    conn_free(h);
    c->http = NULL;
    if (run->reconnects++ < 1000 && bh_http_open(c) == 0) {
        if (c->busy) {
            bh_complete(c, 0, "connection to polygate lost");
        }
        return;
    }
    if (c->busy) {
        c->busy = 0;
        run->inflight--;
        run->errors_total++;
        snprintf(run->last_error, sizeof(run->last_error), "cannot reconnect to polygate");
        if (run->inflight == 0) {
            event_base_loopexit(run->base, NULL);
        }
    }
}

int bh_http_open(struct bh_client *c)
{
    g_host = c->run->o->gw_host;
    g_port = c->run->o->gw_port;
    c->http = conn_new(c->run->base);
    if (c->http == NULL) {
        return -1;
    }
    c->http->client = c;
    c->http->on_response = run_response;
    c->http->on_error = run_error;
    return 0;
}

void bh_http_close(struct bh_client *c)
{
    conn_free(c->http);
    c->http = NULL;
}

void bh_http_send(struct bh_client *c, const char *method, const char *path, const char *body,
                  size_t bodylen)
{
    if (c->http == NULL) {
        bh_complete(c, 0, "no connection to polygate");
        return;
    }
    write_request(c->http, method, path, body, bodylen);
}

/* ---- idle connections ------------------------------------------------------------ */

struct idle {
    struct event_base *base;
    struct bh_http_conn **conns;
    int n, opened, served, failed, pending_connects;
    int sample_wait, sample_ok, sample_bad;
    int phase; /* 0 opening, 1 holding, 2 sampling */
};

static long rss_kib(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    if (f == NULL) {
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
        }
    }
    fclose(f);
    return kib;
}

static void idle_open_more(struct idle *s);

static void idle_response(struct bh_http_conn *h, int status)
{
    struct idle *s = h->arg;
    if (h->idle_state == 0) {
        h->idle_state = status == 200 ? 1 : 2;
        if (status == 200) {
            s->served++;
        } else {
            s->failed++;
        }
        s->pending_connects--;
        idle_open_more(s);
        if (s->served + s->failed == s->n) {
            event_base_loopexit(s->base, NULL);
        }
    } else if (h->idle_state == 5) {
        h->idle_state = status == 200 ? 3 : 4;
        *(status == 200 ? &s->sample_ok : &s->sample_bad) += 1;
        if (--s->sample_wait == 0) {
            event_base_loopexit(s->base, NULL);
        }
    }
}

static void idle_error(struct bh_http_conn *h)
{
    struct idle *s = h->arg;
    bufferevent_disable(h->bev, EV_READ | EV_WRITE);
    if (h->idle_state == 0) {
        s->failed++;
        s->pending_connects--;
        idle_open_more(s);
        if (s->served + s->failed == s->n) {
            event_base_loopexit(s->base, NULL);
        }
    } else if (h->idle_state == 5) {
        s->sample_bad++;
        if (--s->sample_wait == 0) {
            event_base_loopexit(s->base, NULL);
        }
    }
    h->idle_state = 2;
}

/* Keep at most 256 connections being set up at once (the listen backlog). */
static void idle_open_more(struct idle *s)
{
    while (s->opened < s->n && s->pending_connects < 256) {
        struct bh_http_conn *h = conn_new(s->base);
        if (h == NULL) {
            s->failed++;
            s->opened++;
            continue;
        }
        h->arg = s;
        h->on_response = idle_response;
        h->on_error = idle_error;
        write_request(h, "GET", "/health", NULL, 0);
        s->conns[s->opened++] = h;
        s->pending_connects++;
    }
}

int bh_http_idle(const struct bh_opts *o, int n, double hold_s, int sample)
{
    g_host = o->gw_host;
    g_port = o->gw_port;
    struct idle s = {.n = n};
    s.base = event_base_new();
    s.conns = calloc((size_t)n, sizeof(*s.conns));
    if (s.base == NULL || s.conns == NULL) {
        return -1;
    }
    long rss0 = o->pid ? rss_kib(o->pid) : -1;
    uint64_t t0 = bh_now_ns();
    struct timeval limit = {120, 0};
    event_base_loopexit(s.base, &limit);
    idle_open_more(&s);
    event_base_dispatch(s.base);
    double open_s = (double)(bh_now_ns() - t0) / 1e9;
    long rss1 = o->pid ? rss_kib(o->pid) : -1;

    /* hold: nothing sent, the loop only notices connections the gateway closes */
    struct timeval hold = {(time_t)hold_s, (suseconds_t)((hold_s - (double)(time_t)hold_s) * 1e6)};
    event_base_loopexit(s.base, &hold);
    event_base_dispatch(s.base);
    long rss2 = o->pid ? rss_kib(o->pid) : -1;
    int held = 0;
    for (int i = 0; i < n; i++) {
        held += s.conns[i] != NULL && s.conns[i]->idle_state == 1;
    }

    /* sample: one request on every (n/sample)-th connection */
    if (sample > n) {
        sample = n;
    }
    int asked = 0;
    for (int j = 0; j < sample; j++) {
        struct bh_http_conn *h = s.conns[(size_t)j * (size_t)n / (size_t)sample];
        if (h == NULL || h->idle_state != 1) {
            s.sample_bad++;
            continue;
        }
        h->idle_state = 5;
        write_request(h, "GET", "/health", NULL, 0);
        asked++;
    }
    s.sample_wait = asked;
    if (asked > 0) {
        struct timeval lim2 = {30, 0};
        event_base_loopexit(s.base, &lim2);
        event_base_dispatch(s.base);
    }

    printf("IDLE conns=%d served=%d failed=%d open_s=%.2f held_after_hold=%d hold_s=%.1f "
           "rss_before_kib=%ld rss_open_kib=%ld rss_held_kib=%ld sample=%d sample_ok=%d\n",
           n, s.served, s.failed, open_s, held, hold_s, rss0, rss1, rss2, sample, s.sample_ok);
    if (rss0 > 0 && rss2 > 0 && held > 0) {
        printf("IDLE per_conn_kib=%.2f\n", (double)(rss2 - rss0) / (double)held);
    }
    for (int i = 0; i < n; i++) {
        conn_free(s.conns[i]);
    }
    free(s.conns);
    event_base_free(s.base);
    return 0;
}
