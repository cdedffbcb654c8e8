/*
 * test_gw_shared.c — the fleet's shared-store client (gw_shared.h) against
 * a fake Redis on loopback, on the client's own loop: calls made while the
 * connection is set up wait for it and fail with it, a server that lost its
 * script cache gets the script again as EVAL, a call that waits its whole
 * timeout is answered TIMEOUT and its silent connection replaced, and a
 * close completes what waits.  The integration tests run it against the
 * stack's Redis (tests/integration/test_shared_state.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <hiredis/hiredis.h>

#include "config/cf_config.h"
#include "gateway/gw_shared.h"
#include "lib/lb_util.h"

/* ---- a fake Redis ---------------------------------------------------------------- */

enum fake_mode {
    FAKE_SILENT,   /* accepts, never answers (not even the PING) */
    FAKE_NOSCRIPT, /* PING; EVALSHA → NOSCRIPT; EVAL → :7 */
    FAKE_STALL,    /* PING; nothing after it */
};

struct fake {
    struct event_base *base;
    struct evconnlistener *lis;
    int port;
    enum fake_mode mode;
    int accepted;
    int closed;
    int nevalsha, neval;
    char eval_arg1[64]; /* EVAL's script text, cut */
    char eval_key[64];
    struct bufferevent *bevs[8];
    int nbevs;
};

/* One command of RESP bulk strings from in: its argv (up to 8 kept, each
 * cut to 63 bytes) and 1, or 0 when it is not whole yet. */
static int resp_command(struct evbuffer *in, char argv[8][64], int *argc)
{
    size_t len = evbuffer_get_length(in);
    const char *p = (const char *)evbuffer_pullup(in, -1);
    const char *end = p + len, *q = p;
    if (len == 0 || *q != '*') {
        return 0;
    }
    char *nl;
    long n = strtol(q + 1, &nl, 10);
    if (nl + 2 > end) {
        return 0;
    }
    q = nl + 2;
    for (long i = 0; i < n; i++) {
        if (q >= end || *q != '$') {
            return 0;
        }
        long bl = strtol(q + 1, &nl, 10);
        if (nl + 2 + bl + 2 > end) {
            return 0;
        }
        if (i < 8) {
            size_t keep = bl < 63 ? (size_t)bl : 63;
            memcpy(argv[i], nl + 2, keep);
            argv[i][keep] = '\0';
        }
        q = nl + 2 + bl + 2;
    }
    *argc = (int)n;
    evbuffer_drain(in, (size_t)(q - p));
    return 1;
}

static void fake_read(struct bufferevent *bev, void *arg)
{
    struct fake *f = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    char argv[8][64];
    int argc;
    while (resp_command(in, argv, &argc)) {
        const char *reply = NULL;
        if (f->mode == FAKE_SILENT) {
            continue;
        }
        if (strcmp(argv[0], "PING") == 0) {
            reply = "+PONG\r\n";
        } else if (f->mode == FAKE_STALL) {
            reply = NULL;
        } else if (strcmp(argv[0], "EVALSHA") == 0) {
            f->nevalsha++;
            reply = "-NOSCRIPT No matching script. Please use EVAL.\r\n";
        } else if (strcmp(argv[0], "EVAL") == 0) {
            f->neval++;
            snprintf(f->eval_arg1, sizeof(f->eval_arg1), "%s", argv[1]);
            snprintf(f->eval_key, sizeof(f->eval_key), "%s", argc > 3 ? argv[3] : "");
            reply = ":7\r\n";
        }
        if (reply != NULL) {
            bufferevent_write(bev, reply, strlen(reply));
        }
    }
}

static void fake_event(struct bufferevent *bev, short what, void *arg)
{
    struct fake *f = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        f->closed++;
        for (int i = 0; i < f->nbevs; i++) {
            if (f->bevs[i] == bev) {
                f->bevs[i] = NULL;
            }
        }
        bufferevent_free(bev);
    }
}

static void fake_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                        int salen, void *arg)
{
    (void)lis;
    (void)sa;
    (void)salen;
    struct fake *f = arg;
    struct bufferevent *bev = bufferevent_socket_new(f->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(bev, fake_read, NULL, fake_event, f);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    f->accepted++;
    if (f->nbevs < 8) {
        f->bevs[f->nbevs++] = bev;
    }
}

static void fake_start(struct fake *f, struct event_base *base, enum fake_mode mode)
{
    memset(f, 0, sizeof(*f));
    f->base = base;
    f->mode = mode;
    struct sockaddr_in sin = {0};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    f->lis =
        evconnlistener_new_bind(base, fake_accept, f, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
                                (struct sockaddr *)&sin, sizeof(sin));
    assert_non_null(f->lis);
    struct sockaddr_in got;
    socklen_t gl = sizeof(got);
    getsockname(evconnlistener_get_fd(f->lis), (struct sockaddr *)&got, &gl);
    f->port = ntohs(got.sin_port);
}

static void fake_stop(struct fake *f)
{
    for (int i = 0; i < f->nbevs; i++) {
        if (f->bevs[i] != NULL) {
            bufferevent_free(f->bevs[i]);
        }
    }
    evconnlistener_free(f->lis);
}

/* ---- the client ------------------------------------------------------------------- */

struct rig {
    struct event_base *base;
    struct fake fake;
    struct gw_shared *sh;
    char url[64];
    char prefix[16];
    struct cf_config cf;
};

struct result {
    int calls;
    enum gw_shared_status st;
    long long integer;
};

static void on_result(void *arg, enum gw_shared_status st, const struct redisReply *rep)
{
    struct result *r = arg;
    r->calls++;
    r->st = st;
    if (st == GW_SHARED_OK && rep->type == REDIS_REPLY_INTEGER) {
        r->integer = rep->integer;
    }
}

static void rig_start(struct rig *g, enum fake_mode mode)
{
    memset(g, 0, sizeof(*g));
    g->base = event_base_new();
    fake_start(&g->fake, g->base, mode);
    snprintf(g->url, sizeof(g->url), "redis://127.0.0.1:%d", g->fake.port);
    snprintf(g->prefix, sizeof(g->prefix), "/unit");
    g->cf.control.redis = g->url;
    g->cf.control.prefix = g->prefix;
    char err[128];
    g->sh = gw_shared_new(g->base, &g->cf, 0, err, sizeof(err));
    assert_non_null(g->sh);
}

static void rig_stop(struct rig *g)
{
    gw_shared_free(g->sh);
    fake_stop(&g->fake);
    event_base_loop(g->base, EVLOOP_NONBLOCK);
    event_base_free(g->base);
}

/* Run the loop until *flag is set or ms have passed. */
static void run_until(struct rig *g, const int *flag, uint64_t ms)
{
    uint64_t end = lb_now_ms() + ms;
    while (!*flag && lb_now_ms() < end) {
        struct timeval tick = {0, 5000};
        event_base_loopexit(g->base, &tick);
        event_base_loop(g->base, EVLOOP_ONCE);
    }
}

static struct gw_shared_script script = GW_SHARED_SCRIPT("return 7\n");

static int eval(struct rig *g, int64_t timeout_ms, struct result *r)
{
    const char *argv[1] = {"arg"};
    size_t argl[1] = {3};
    return gw_shared_eval(g->sh, &script, "k1", 2, 1, argv, argl, timeout_ms, on_result, r);
}

static void test_noscript_is_sent_again_as_eval(void **state)
{
    (void)state;
    struct rig g;
    rig_start(&g, FAKE_NOSCRIPT);
    struct result r = {0};
    /* made while the connection is set up: it waits for the PING */
    assert_int_equal(eval(&g, 2000, &r), 0);
    assert_int_equal(r.calls, 0); /* never from inside the call */
    run_until(&g, &r.calls, 2000);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.st, GW_SHARED_OK);
    assert_int_equal(r.integer, 7);
    assert_int_equal(g.fake.nevalsha, 1);
    assert_int_equal(g.fake.neval, 1);
    assert_string_equal(g.fake.eval_arg1, "return 7\n");
    assert_string_equal(g.fake.eval_key, "k1");
    /* the prefix of every key of the fleet */
    size_t pl;
    const char *p = gw_shared_prefix(g.sh, &pl);
    assert_int_equal(pl, strlen("polygate:/unit:"));
    assert_memory_equal(p, "polygate:/unit:", pl);
    rig_stop(&g);
}

static void test_calls_fail_with_an_unanswered_setup(void **state)
{
    (void)state;
    struct rig g;
    rig_start(&g, FAKE_SILENT);
    struct result r = {0};
    assert_int_equal(eval(&g, 5000, &r), 0);
    /* the PING is never answered: after the 1 s set-up deadline the call
     * fails with the connection, long before its own timeout */
    uint64_t t0 = lb_now_ms();
    run_until(&g, &r.calls, 3000);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.st, GW_SHARED_DOWN);
    assert_true(lb_now_ms() - t0 < 2500);
    /* no connection now (waiting out the backoff): refused at once */
    struct result r2 = {0};
    assert_int_equal(eval(&g, 1000, &r2), -1);
    assert_int_equal(r2.calls, 0);
    int clients, up;
    gw_shared_stats(&clients, &up);
    assert_int_equal(clients, 1);
    assert_int_equal(up, 0);
    rig_stop(&g);
}

static void test_timeout_answers_and_replaces_a_silent_connection(void **state)
{
    (void)state;
    struct rig g;
    rig_start(&g, FAKE_STALL);
    int up = 0, clients = 0;
    for (int i = 0; i < 200 && up == 0; i++) {
        int flag = 0;
        run_until(&g, &flag, 10);
        gw_shared_stats(&clients, &up);
    }
    assert_int_equal(up, 1);
    struct result r = {0};
    assert_int_equal(eval(&g, 100, &r), 0);
    uint64_t t0 = lb_now_ms();
    run_until(&g, &r.calls, 2000);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.st, GW_SHARED_TIMEOUT);
    assert_true(lb_now_ms() - t0 < 1000);
    /* not one reply for the call's timeout and a second more: dropped,
     * and opened again */
    run_until(&g, &g.fake.closed, 2500);
    assert_int_equal(g.fake.closed, 1);
    int two = 0;
    for (int i = 0; i < 300 && !two; i++) {
        int flag = 0;
        run_until(&g, &flag, 10);
        two = g.fake.accepted >= 2;
    }
    assert_true(two);
    assert_int_equal(r.calls, 1); /* answered once */
    rig_stop(&g);
}

static void test_close_completes_what_waits(void **state)
{
    (void)state;
    struct rig g;
    rig_start(&g, FAKE_SILENT);
    struct result r = {0};
    assert_int_equal(eval(&g, 5000, &r), 0);
    gw_shared_close(g.sh);
    assert_int_equal(r.calls, 1); /* from inside the close */
    assert_int_equal(r.st, GW_SHARED_DOWN);
    struct result r2 = {0};
    assert_int_equal(eval(&g, 1000, &r2), -1);
    rig_stop(&g);
}

static void test_bad_url_is_refused(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    struct cf_config cf = {0};
    char url[] = "redis://host:99999", prefix[] = "/p";
    cf.control.redis = url;
    cf.control.prefix = prefix;
    char err[128];
    assert_null(gw_shared_new(base, &cf, 0, err, sizeof(err)));
    assert_non_null(strstr(err, "bad port"));
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_noscript_is_sent_again_as_eval),
        cmocka_unit_test(test_calls_fail_with_an_unanswered_setup),
        cmocka_unit_test(test_timeout_answers_and_replaces_a_silent_connection),
        cmocka_unit_test(test_close_completes_what_waits),
        cmocka_unit_test(test_bad_url_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
