/*
 * gw_shared.c — one worker's client of the fleet's shared Redis (see
 * gw_shared.h).
 *
 * One connection per worker carries every call, pipelined (Redis answers
 * in order).  States: no connection (ac NULL: calls are refused until the
 * backoff timer opens a new one), being set up (calls wait in `waitq`, not
 * sent: a command behind a SELECT that fails would run in the wrong
 * database), up.
 */
#include "gateway/gw_shared.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>

#include "config/cf_config.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"

/* Set-up deadline (TCP, SELECT, PING) and reconnect backoff. */
#define CONNECT_TIMEOUT_MS 1000
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000

struct call;

struct gw_shared {
    struct event_base *base;
    int worker;
    char *host;
    int port;
    int db;
    char *prefix; /* "polygate:<control.prefix>:" */
    size_t prefixlen;
    redisAsyncContext *ac; /* NULL: no connection */
    int up;                /* its set-up was answered */
    int was_up;            /* for the log: up and down are logged on change */
    int closing;
    int64_t backoff_ms;
    struct event *retry_timer;
    struct event *connect_timer;
    struct event *stall_timer; /* a call timed out: is the peer silent? */
    uint64_t stall_since;
    uint64_t progress_ms;     /* the last reply */
    TAILQ_HEAD(, call) waitq; /* calls made while the connection is set up */
};

/* One command in flight.  argv / argl are kept for a NOSCRIPT resend. */
struct call {
    TAILQ_ENTRY(call) wlink;
    int waiting; /* in sh->waitq, not sent yet */
    struct gw_shared *sh;
    struct gw_shared_script *script;
    gw_shared_cb cb; /* NULL once answered (timeout) or when nobody waits */
    void *arg;
    struct event timer;
    int timer_set;
    int resent;
    uint64_t sent_ms;
    int argc;
    const char **argv;
    size_t *argl;
};

static int nclients, nup; /* atomic: metrics */

void gw_shared_stats(int *clients, int *up)
{
    *clients = __atomic_load_n(&nclients, __ATOMIC_RELAXED);
    *up = __atomic_load_n(&nup, __ATOMIC_RELAXED);
}

static void set_up(struct gw_shared *sh, int up)
{
    if (sh->up != up) {
        __atomic_add_fetch(&nup, up ? 1 : -1, __ATOMIC_RELAXED);
        sh->up = up;
    }
}

static const char *script_sha(struct gw_shared_script *s)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    if (!__atomic_load_n(&s->ready, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&mu);
        if (!s->ready) {
            unsigned char md[SHA_DIGEST_LENGTH];
            SHA1((const unsigned char *)s->text, strlen(s->text), md);
            for (int j = 0; j < SHA_DIGEST_LENGTH; j++) {
                snprintf(s->sha + j * 2, 3, "%02x", md[j]);
            }
            __atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&mu);
    }
    return s->sha;
}

/* ---- the connection ---------------------------------------------------------- */

static void conn_start(struct gw_shared *sh);
static void call_finish(struct call *c, enum gw_shared_status st, const redisReply *rep);
static void on_reply(redisAsyncContext *ac, void *r, void *priv);

/* The calls that waited for the set-up: sent (up), or failed (no
 * connection).  Their callbacks may make new calls: each is taken off the
 * queue first. */
static void waitq_flush(struct gw_shared *sh)
{
    struct call *c;
    while ((c = TAILQ_FIRST(&sh->waitq)) != NULL) {
        TAILQ_REMOVE(&sh->waitq, c, wlink);
        c->waiting = 0;
        c->sent_ms = lb_now_ms();
        if (sh->ac == NULL || !sh->up ||
            redisAsyncCommandArgv(sh->ac, on_reply, c, c->argc, c->argv, c->argl) != REDIS_OK) {
            call_finish(c, GW_SHARED_DOWN, NULL);
            free(c);
        }
    }
}

static void note_down(struct gw_shared *sh, const char *why)
{
    set_up(sh, 0);
    if (sh->was_up && !sh->closing) {
        lb_warn("worker %d: the shared store (control.redis %s:%d) is down: %s", sh->worker,
                sh->host, sh->port, why);
    }
    sh->was_up = 0;
}

static void schedule_retry(struct gw_shared *sh)
{
    if (sh->closing) {
        return;
    }
    struct timeval tv = lb_tv_ms(lb_backoff_next(&sh->backoff_ms, BACKOFF_MIN_MS, BACKOFF_MAX_MS));
    evtimer_add(sh->retry_timer, &tv);
}

/* The connection ac is gone (refused, lost, set-up failed): once per
 * connection, whichever of hiredis' callbacks tells first. */
static void lost(struct gw_shared *sh, const redisAsyncContext *ac, const char *why)
{
    if (sh->ac != ac || ac == NULL) {
        return;
    }
    sh->ac = NULL;
    evtimer_del(sh->connect_timer);
    note_down(sh, why);
    schedule_retry(sh);
    waitq_flush(sh);
}

/* Close the connection from our side (set-up deadline, a silent peer,
 * shutdown): its calls complete with DOWN from inside this call. */
static void drop(struct gw_shared *sh, const char *why)
{
    redisAsyncContext *ac = sh->ac;
    if (ac != NULL) {
        lost(sh, ac, why);
        redisAsyncFree(ac);
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct gw_shared *sh = ac->data;
    if (sh != NULL && status != REDIS_OK) {
        lost(sh, ac, ac->errstr);
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct gw_shared *sh = ac->data;
    if (sh != NULL) {
        lost(sh, ac, status == REDIS_OK ? "connection closed" : ac->errstr);
    }
}

/* The replies to SELECT and the closing PING (priv = sh) of conn_start. */
static void on_setup(redisAsyncContext *ac, void *r, void *priv)
{
    struct gw_shared *sh = ac->data;
    redisReply *rep = r;
    if (sh == NULL || rep == NULL || sh->ac != ac) {
        return; /* lost (on_connect / on_disconnect tell), or given up already */
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        lb_warn("worker %d: the shared store (control.redis %s:%d) refused the connection "
                "set-up: %s",
                sh->worker, sh->host, sh->port, rep->str);
        lost(sh, ac, "set-up refused");
        redisAsyncDisconnect(ac);
        return;
    }
    if (priv == NULL) {
        return; /* SELECT answered; the PING ends the set-up */
    }
    evtimer_del(sh->connect_timer);
    sh->backoff_ms = 0;
    set_up(sh, 1);
    if (!sh->was_up) {
        lb_info("worker %d: the shared store (control.redis %s:%d) is up", sh->worker, sh->host,
                sh->port);
        sh->was_up = 1;
    }
    waitq_flush(sh);
}

static void connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct gw_shared *sh = arg;
    if (sh->ac != NULL && !sh->up) {
        drop(sh, "no answer to the connection set-up");
    }
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_start(arg);
}

static void conn_start(struct gw_shared *sh)
{
    if (sh->closing || sh->ac != NULL) {
        return;
    }
    redisAsyncContext *ac = redisAsyncConnect(sh->host, sh->port);
    if (ac == NULL || ac->err) {
        if (ac != NULL) {
            redisAsyncFree(ac);
        }
        note_down(sh, "cannot open a connection");
        schedule_retry(sh);
        return;
    }
    ac->data = sh;
    sh->ac = ac;
    sh->progress_ms = lb_now_ms();
    redisLibeventAttach(ac, sh->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (sh->db != 0) {
        (void)redisAsyncCommand(ac, on_setup, NULL, "SELECT %d", sh->db);
    }
    (void)redisAsyncCommand(ac, on_setup, sh, "PING");
    struct timeval tv = lb_tv_ms(CONNECT_TIMEOUT_MS);
    evtimer_add(sh->connect_timer, &tv);
}

/* ---- calls --------------------------------------------------------------------- */

static void call_finish(struct call *c, enum gw_shared_status st, const redisReply *rep)
{
    if (c->timer_set) {
        event_del(&c->timer);
        c->timer_set = 0;
    }
    gw_shared_cb cb = c->cb;
    c->cb = NULL;
    if (cb != NULL) {
        cb(c->arg, st, rep);
    }
}

static void on_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct call *c = priv;
    struct gw_shared *sh = c->sh;
    redisReply *rep = r;
    if (rep == NULL) {
        lost(sh, ac, "connection lost");
        call_finish(c, GW_SHARED_DOWN, NULL);
        free(c);
        return;
    }
    sh->progress_ms = lb_now_ms();
    if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0 && !c->resent) {
        /* the server lost its script cache (a restart, SCRIPT FLUSH): the
         * script again as EVAL, which caches it for the next EVALSHA */
        c->resent = 1;
        c->argv[0] = "EVAL";
        c->argl[0] = 4;
        c->argv[1] = c->script->text;
        c->argl[1] = strlen(c->script->text);
        if (redisAsyncCommandArgv(ac, on_reply, c, c->argc, c->argv, c->argl) == REDIS_OK) {
            return;
        }
        call_finish(c, GW_SHARED_DOWN, NULL);
        free(c);
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        lb_warn("worker %d: the shared store (control.redis %s:%d) answered an error: %s",
                sh->worker, sh->host, sh->port, rep->str);
        call_finish(c, GW_SHARED_ERROR, NULL);
    } else {
        call_finish(c, GW_SHARED_OK, rep);
    }
    free(c);
}

/* CONNECT_TIMEOUT_MS after a call timed out, still not one reply on the
 * connection since that call was sent: the peer is gone without a FIN (TCP
 * would take minutes to tell), and every call on it will time out.  The
 * connection is dropped and opened again. */
static void stall_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct gw_shared *sh = arg;
    if (sh->ac != NULL && sh->up && sh->progress_ms < sh->stall_since) {
        lb_warn("worker %d: the shared store (control.redis %s:%d) did not answer for %llu ms; "
                "reconnecting",
                sh->worker, sh->host, sh->port,
                (unsigned long long)(lb_now_ms() - sh->stall_since));
        drop(sh, "no reply");
    }
}

static void call_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct call *c = arg;
    struct gw_shared *sh = c->sh;
    c->timer_set = 0;
    if (c->waiting) { /* never sent: nothing will come for it */
        TAILQ_REMOVE(&sh->waitq, c, wlink);
        call_finish(c, GW_SHARED_TIMEOUT, NULL);
        free(c);
        return;
    }
    if (sh->ac != NULL && sh->up && sh->progress_ms < c->sent_ms &&
        !evtimer_pending(sh->stall_timer, NULL)) {
        sh->stall_since = c->sent_ms;
        struct timeval tv = lb_tv_ms(CONNECT_TIMEOUT_MS);
        evtimer_add(sh->stall_timer, &tv);
    }
    /* answered now; the reply, if it comes, frees the call */
    call_finish(c, GW_SHARED_TIMEOUT, NULL);
}

int gw_shared_eval(struct gw_shared *sh, struct gw_shared_script *script, const char *key,
                   size_t keylen, int argc, const char *const *argv, const size_t *argl,
                   int64_t timeout_ms, gw_shared_cb cb, void *arg)
{
    if (sh == NULL || sh->closing || sh->ac == NULL) {
        return -1;
    }
    /* the call, its argument vector and its copies of the arguments in one
     * block: the NOSCRIPT resend needs them after the caller returned */
    int n = 4 + argc;
    size_t bytes = keylen;
    for (int i = 0; i < argc; i++) {
        bytes += argl[i];
    }
    size_t vec = sizeof(struct call) + (size_t)n * (sizeof(char *) + sizeof(size_t));
    struct call *c = calloc(1, vec + bytes + 1);
    if (c == NULL) {
        return -1; /* refused: the caller answers as for a store that is down */
    }
    c->sh = sh;
    c->script = script;
    c->cb = cb;
    c->arg = arg;
    c->argc = n;
    c->argv = (const char **)(c + 1);
    c->argl = (size_t *)(c->argv + n);
    char *p = (char *)(c->argl + n);
    static const char nkeys[] = "1";
    c->argv[0] = "EVALSHA";
    c->argl[0] = 7;
    c->argv[1] = script_sha(script);
    c->argl[1] = 40;
    c->argv[2] = nkeys;
    c->argl[2] = 1;
    c->argv[3] = p;
    c->argl[3] = keylen;
    memcpy(p, key, keylen);
    p += keylen;
    for (int i = 0; i < argc; i++) {
        c->argv[4 + i] = p;
        c->argl[4 + i] = argl[i];
        if (argl[i] > 0) {
            memcpy(p, argv[i], argl[i]);
        }
        p += argl[i];
    }
    c->sent_ms = lb_now_ms();
    if (!sh->up) {
        TAILQ_INSERT_TAIL(&sh->waitq, c, wlink);
        c->waiting = 1;
    } else if (redisAsyncCommandArgv(sh->ac, on_reply, c, c->argc, c->argv, c->argl) != REDIS_OK) {
        free(c);
        return -1;
    }
    if (cb != NULL && timeout_ms > 0) {
        event_assign(&c->timer, sh->base, -1, 0, call_timeout_cb, c);
        struct timeval tv = lb_tv_ms(timeout_ms);
        event_add(&c->timer, &tv);
        c->timer_set = 1;
    }
    return 0;
}

/* ---- set-up ----------------------------------------------------------------------- */

/* redis://host[:port][/db] */
static int url_parse(struct gw_shared *sh, const char *url, char *err, size_t errlen)
{
    const char *p = url + 8;
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "control.redis: '%s' must be redis://host:port[/db]", url);
        return -1;
    }
    const char *end = p + strcspn(p, ":/");
    if (end == p || memchr(p, '@', (size_t)(end - p)) != NULL) {
        snprintf(err, errlen, "control.redis: '%s' must be redis://host:port[/db]", url);
        return -1;
    }
    sh->host = lb_xstrndup(p, (size_t)(end - p));
    sh->port = 6379;
    if (*end == ':') {
        char *e2;
        long port = strtol(end + 1, &e2, 10);
        if (e2 == end + 1 || port <= 0 || port > 65535) {
            snprintf(err, errlen, "control.redis: '%s': bad port", url);
            return -1;
        }
        sh->port = (int)port;
        end = e2;
    }
    if (*end == '/') {
        char *e2;
        long db = strtol(end + 1, &e2, 10);
        if (e2 == end + 1 || db < 0 || db > 15 || *e2 != '\0') {
            snprintf(err, errlen, "control.redis: '%s': bad database number (0-15)", url);
            return -1;
        }
        sh->db = (int)db;
    } else if (*end != '\0') {
        snprintf(err, errlen, "control.redis: '%s' must be redis://host:port[/db]", url);
        return -1;
    }
    return 0;
}

struct gw_shared *gw_shared_new(struct event_base *base, const struct cf_config *cf, int worker,
                                char *err, size_t errlen)
{
    struct gw_shared *sh = lb_xcalloc(1, sizeof(*sh));
    sh->base = base;
    sh->worker = worker;
    sh->was_up = 1; /* the first failure is logged */
    TAILQ_INIT(&sh->waitq);
    if (url_parse(sh, cf->control.redis, err, errlen) < 0) {
        free(sh->host);
        free(sh);
        return NULL;
    }
    size_t pl = strlen(cf->control.prefix);
    sh->prefixlen = sizeof("polygate:") - 1 + pl + 1;
    sh->prefix = lb_xmalloc(sh->prefixlen + 1);
    snprintf(sh->prefix, sh->prefixlen + 1, "polygate:%s:", cf->control.prefix);
    sh->retry_timer = evtimer_new(base, retry_cb, sh);
    sh->connect_timer = evtimer_new(base, connect_timeout_cb, sh);
    sh->stall_timer = evtimer_new(base, stall_cb, sh);
    __atomic_add_fetch(&nclients, 1, __ATOMIC_RELAXED);
    conn_start(sh);
    return sh;
}

const char *gw_shared_prefix(const struct gw_shared *sh, size_t *len)
{
    *len = sh->prefixlen;
    return sh->prefix;
}

void gw_shared_close(struct gw_shared *sh)
{
    if (sh == NULL || sh->closing) {
        return;
    }
    sh->closing = 1;
    evtimer_del(sh->retry_timer);
    evtimer_del(sh->stall_timer);
    drop(sh, "shutting down");
}

void gw_shared_free(struct gw_shared *sh)
{
    if (sh == NULL) {
        return;
    }
    gw_shared_close(sh);
    event_free(sh->retry_timer);
    event_free(sh->connect_timer);
    event_free(sh->stall_timer);
    __atomic_sub_fetch(&nclients, 1, __ATOMIC_RELAXED);
    free(sh->host);
    free(sh->prefix);
    free(sh);
}
