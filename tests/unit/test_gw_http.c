/*
 * test_gw_http.c — the HTTP server driven through a socketpair: strict
 * framing answers, the output bound for a client that pipelines and never
 * reads, answers to a client that half-closed, the read timer against
 * trickled blank lines, and the count of unanswered requests a drain uses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "gateway/gw_http.h"

#define BIG 65536 /* body of an answer to /big */
#define MAXQ 64   /* answers the test can hold back */

struct rig {
    struct event_base *base;
    struct gw_http_server *srv;
    int fd; /* the client's end */
    int handled;
    struct gw_http_req *held[MAXQ]; /* /async requests not answered yet */
    int nheld;
};

static void answer(struct gw_http_req *req)
{
    struct evbuffer *b = evbuffer_new();
    if (strncmp(req->path, "/big", 4) == 0) {
        static char filler[BIG];
        memset(filler, 'b', sizeof(filler));
        evbuffer_add(b, filler, sizeof(filler));
    } else {
        evbuffer_add(b, req->path, req->path_len);
        size_t alen = 0;
        const char *a = gw_http_header(req, "authorization", &alen);
        if (a != NULL) {
            evbuffer_add(b, "|", 1);
            evbuffer_add(b, a, alen);
            evbuffer_add(b, "|", 1);
        }
    }
    gw_http_respond(req, 200, "text/plain", b, NULL);
    evbuffer_free(b);
}

static void handler(struct gw_http_req *req, void *arg)
{
    struct rig *r = arg;
    r->handled++;
    if (strncmp(req->path, "/async", 6) == 0 && r->nheld < MAXQ) {
        r->held[r->nheld++] = req;
        return;
    }
    answer(req);
}

static void rig_open(struct rig *r, size_t max_output, int64_t read_timeout_s)
{
    memset(r, 0, sizeof(*r));
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    r->base = event_base_new();
    struct gw_http_limits lim = {.max_body = 4096,
                                 .max_headers = 4096,
                                 .max_url = 512,
                                 .max_nheaders = 32,
                                 .idle_timeout_s = 30,
                                 .request_read_timeout_s = read_timeout_s,
                                 .max_output = max_output,
                                 .output_drain_timeout_s = 30};
    r->srv = gw_http_server_new(r->base, NULL, &lim, handler, r);
    assert_non_null(r->srv);
    gw_http_server_adopt(r->srv, sv[0]);
    r->fd = sv[1];
}

static void rig_close(struct rig *r)
{
    for (int i = 0; i < r->nheld; i++) {
        answer(r->held[i]); /* connection gone: freed without an answer */
    }
    gw_http_server_free(r->srv);
    event_base_free(r->base);
    if (r->fd >= 0) {
        close(r->fd);
    }
}

static void pump(struct rig *r, int turns)
{
    for (int i = 0; i < turns; i++) {
        event_base_loop(r->base, EVLOOP_NONBLOCK);
    }
}

static void send_all(struct rig *r, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(r->fd, s, n);
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

/* Read what the server sent, pumping the loop, until EOF (1) or until
 * `turns` loop turns passed without EOF (0). */
static int read_out(struct rig *r, char *buf, size_t cap, size_t *len, int turns)
{
    *len = 0;
    for (int i = 0; i < turns; i++) {
        event_base_loop(r->base, EVLOOP_NONBLOCK);
        for (;;) {
            ssize_t n = recv(r->fd, buf + *len, cap - 1 - *len, MSG_DONTWAIT);
            if (n == 0) {
                buf[*len] = '\0';
                return 1;
            }
            if (n < 0) {
                break;
            }
            *len += (size_t)n;
            assert_true(*len < cap - 1);
        }
    }
    buf[*len] = '\0';
    return 0;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle)) {
        n++;
    }
    return n;
}

/* ---- framing -------------------------------------------------------------- */

static const struct {
    const char *in;
    const char *status; /* the answer begins with it */
    const char *says;   /* and contains it */
} framing[] = {
    {"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length : 2\r\n\r\n{}", "HTTP/1.1 400",
     "'content-length ' is not a token"},
    {"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400",
     "'transfer-encoding ' is not a token"},
    {"GET /a HTTP/1.1\r\nHost: x\r\nX Y: 1\r\n\r\n", "HTTP/1.1 400", "'x y' is not a token"},
    {"GET /a HTTP/1.1\r\nX-A: 1\r\n\r\n", "HTTP/1.1 400", "\"field\":\"host\""},
    {"GET /a HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n", "HTTP/1.1 400", "more than one 'host'"},
    {"GET /a HTTP/1.0\r\nHost: x\r\nHost: x\r\n\r\n", "HTTP/1.1 400", "more than one 'host'"},
    {"GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n", "HTTP/1.1 400",
     "more than one 'authorization'"},
    {"GET /a HTTP/2.0\r\nHost: x\r\n\r\n", "HTTP/1.1 505", "HTTP/2.0 is not supported"},
    {"GET /a HTTP/1.9\r\nHost: x\r\n\r\n", "HTTP/1.1 505", "http_version_not_supported"},
    {"GET /a HTTP/1.0\r\n\r\n", "HTTP/1.1 200", "/a"},
    {"\r\nGET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "HTTP/1.1 200", "/a"},
    {"GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: \t Bearer k \t \r\nConnection: close\r\n\r\n",
     "HTTP/1.1 200", "|Bearer k|"},
    /* obsolete line folding: the line break goes, the spaces stay (RFC 9112 5.2) */
    {"GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\r\n  k\r\nConnection: close\r\n\r\n",
     "HTTP/1.1 200", "|Bearer  k|"},
};

static void test_framing(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(framing) / sizeof(framing[0]); i++) {
        struct rig r;
        rig_open(&r, 1 << 20, 30);
        send_all(&r, framing[i].in, strlen(framing[i].in));
        char buf[4096];
        size_t len;
        /* errors and Connection: close close the connection after the answer */
        if (!read_out(&r, buf, sizeof(buf), &len, 50)) {
            fail_msg("case %zu: connection not closed; got '%s'", i, buf);
        }
        if (strncmp(buf, framing[i].status, strlen(framing[i].status)) != 0 ||
            strstr(buf, framing[i].says) == NULL || count(buf, "Content-Length: ") != 1) {
            fail_msg("case %zu: got '%s'", i, buf);
        }
        rig_close(&r);
    }
}

/* ---- a client that pipelines and never reads -------------------------------- */

static void test_output_bound_stops_reading(void **state)
{
    (void)state;
    struct rig r;
    rig_open(&r, 2 * BIG, 30);
    const char one[] = "GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
    enum { N = 64 };
    char reqs[N * sizeof(one)];
    size_t n = 0;
    for (int i = 0; i < N; i++) {
        memcpy(reqs + n, one, sizeof(one) - 1);
        n += sizeof(one) - 1;
    }
    send_all(&r, reqs, n); /* 2 KB: fits the socket buffer */
    pump(&r, 200);
    int stalled = r.handled;
    /* stopped: the socket buffer and the bound hold a handful of answers */
    assert_true(stalled >= 2);
    assert_true(stalled < N / 2);
    pump(&r, 200);
    assert_int_equal(r.handled, stalled); /* not one more while nothing is read */
    assert_int_equal(gw_http_server_nconns(r.srv), 1);
    /* the client reads: reading resumes and every request is answered */
    char buf[65536];
    for (int i = 0; i < 20000 && r.handled < N; i++) {
        event_base_loop(r.base, EVLOOP_NONBLOCK);
        while (recv(r.fd, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
        }
    }
    assert_int_equal(r.handled, N);
    rig_close(&r);
}

/* ---- half-close ------------------------------------------------------------- */

static void test_half_close_answers_everything_sent(void **state)
{
    (void)state;
    struct rig r;
    rig_open(&r, 1 << 20, 30);
    const char in[] = "PUT /async/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
                      "GET /async/2 HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(&r, in, sizeof(in) - 1);
    shutdown(r.fd, SHUT_WR);
    pump(&r, 20);
    assert_int_equal(r.nheld, 1); /* the first is with the handler */
    assert_int_equal(gw_http_server_nbusy(r.srv), 1);
    assert_int_equal(gw_http_server_nconns(r.srv), 1); /* the FIN did not close it */
    r.nheld = 0;
    answer(r.held[0]);
    pump(&r, 20);
    assert_int_equal(r.nheld, 1); /* the second, after the FIN, is served too */
    r.nheld = 0;
    answer(r.held[0]);
    assert_int_equal(gw_http_server_nbusy(r.srv), 0);
    char buf[4096];
    size_t len;
    assert_true(read_out(&r, buf, sizeof(buf), &len, 50));
    assert_int_equal(count(buf, "HTTP/1.1 200"), 2);
    assert_non_null(strstr(buf, "/async/1"));
    assert_non_null(strstr(buf, "/async/2"));
    assert_int_equal(gw_http_server_nconns(r.srv), 0);
    rig_close(&r);
}

/* ---- blank lines trickled ------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_blank_lines_do_not_stop_the_read_timer(void **state)
{
    (void)state;
    struct rig r;
    rig_open(&r, 1 << 20, 1);
    double t0 = now_s(), next = t0;
    char buf[4096];
    size_t len = 0;
    int closed = 0;
    while (!closed && now_s() - t0 < 3.0) {
        if (now_s() >= next) { /* every 100 ms, well inside the 1 s timer */
            ssize_t w = send(r.fd, "\r\n", 2, MSG_NOSIGNAL);
            (void)w;
            next += 0.1;
        }
        event_base_loop(r.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        ssize_t k = recv(r.fd, buf + len, sizeof(buf) - 1 - len, MSG_DONTWAIT);
        if (k == 0) {
            closed = 1;
        } else if (k > 0) {
            len += (size_t)k;
        } else {
            usleep(2000);
        }
    }
    buf[len] = '\0';
    double elapsed = now_s() - t0;
    assert_true(closed);
    assert_true(elapsed < 2.0);
    assert_non_null(strstr(buf, "HTTP/1.1 408"));
    rig_close(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_framing),
        cmocka_unit_test(test_output_bound_stops_reading),
        cmocka_unit_test(test_half_close_answers_everything_sent),
        cmocka_unit_test(test_blank_lines_do_not_stop_the_read_timer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
