/*
 * ad_redis.c — Redis adapter: hiredis async on the worker's libevent loop.
 *
 * Pool: `pool.max` connections per shard, each pipelining many commands
 * (Redis answers in order, so one connection carries many requests).  A
 * request goes to the connected connection with the fewest pending replies;
 * the shard's total of pending requests is bounded by `pool.queue_max`
 * (beyond it → refused, the gateway answers 503).  A lost connection fails
 * its pending requests (hiredis calls each callback with a NULL reply) and
 * is re-established with exponential backoff plus jitter.  hiredis 0.14 has
 * no command timeouts: deadlines are the gateway's.
 *
 * Storage layout:
 *   value domains: key = prefix + id, value = the item as JSON text whose
 *                  last member is "version":N (so GET is served as is).
 *   hash domains:  key = prefix + id, a hash member → integer count.
 */
#include "adapters/redis/ad_redis.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>

#include "config/cf_config.h"
#include "lib/lb_json.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "model/md_item.h"

/* ---- scripts ------------------------------------------------------------- */

/* Write a value item.  KEYS[1]; ARGV: mode (put|insert|cas), expected
 * version ("" = none), the item's JSON without its closing brace, ttl. */
static const char script_put[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "local v = 0\n"
    "if cur then v = tonumber(string.match(cur, '\"version\":(%d+)}$')) or 0 end\n"
    "if ARGV[1] == 'insert' and cur then return {-409, v} end\n"
    "if ARGV[2] ~= '' and (not cur or tonumber(ARGV[2]) ~= v) then return {-412, v} end\n"
    "v = v + 1\n"
    "local sep = ','\n"
    "if ARGV[3] == '{' then sep = '' end\n"
    "local doc = ARGV[3] .. sep .. '\"version\":' .. v .. '}'\n"
    "if ARGV[4] ~= '0' then redis.call('SET', KEYS[1], doc, 'EX', ARGV[4])\n"
    "else redis.call('SET', KEYS[1], doc) end\n"
    "local created = 0\n"
    "if not cur then created = 1 end\n"
    "return {v, created, doc}\n";

/* Delete a value item.  ARGV: expected version ("" = none). */
static const char script_del[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if not cur then return -404 end\n"
    "if ARGV[1] ~= '' then\n"
    "  local v = tonumber(string.match(cur, '\"version\":(%d+)}$')) or 0\n"
    "  if v ~= tonumber(ARGV[1]) then return -412 end\n"
    "end\n"
    "redis.call('DEL', KEYS[1])\n"
    "return 1\n";

/* Change counters atomically.  ARGV: ttl, then (op, member, n) triples with
 * op c (clear all), d (delete member), s (set), i (increment).  Every result
 * is checked first: nothing is written when one would drop below 0. */
static const char script_counters[] =
    "local k = KEYS[1]\n"
    "local vals, cleared = {}, false\n"
    "local function get(f)\n"
    "  if vals[f] ~= nil then return vals[f] end\n"
    "  if cleared then return 0 end\n"
    "  return tonumber(redis.call('HGET', k, f) or '0')\n"
    "end\n"
    "for i = 2, #ARGV, 3 do\n"
    "  local op, f, n = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2])\n"
    "  if op == 'c' then vals = {}; cleared = true\n"
    "  elseif op == 'd' then vals[f] = 0\n"
    "  elseif op == 's' then vals[f] = n\n"
    "  else\n"
    "    local r = get(f) + n\n"
    "    if r < 0 then return {-409, f, get(f)} end\n"
    "    vals[f] = r\n"
    "  end\n"
    "end\n"
    "if cleared then redis.call('DEL', k) end\n"
    "for f, n in pairs(vals) do\n"
    "  if n == 0 then redis.call('HDEL', k, f) else redis.call('HSET', k, f, n) end\n"
    "end\n"
    "if tonumber(ARGV[1]) > 0 and redis.call('EXISTS', k) == 1 then\n"
    "  redis.call('EXPIRE', k, ARGV[1])\n"
    "end\n"
    "return redis.call('HGETALL', k)\n";

enum { SC_PUT, SC_DEL, SC_COUNTERS, SC_N };
static const char *const scripts[SC_N] = {script_put, script_del, script_counters};
static char script_sha[SC_N][41];

static void scripts_init(void)
{
    static int done;
    if (done) {
        return;
    }
    for (int i = 0; i < SC_N; i++) {
        unsigned char md[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)scripts[i], strlen(scripts[i]), md);
        for (int j = 0; j < SHA_DIGEST_LENGTH; j++) {
            snprintf(script_sha[i] + j * 2, 3, "%02x", md[j]);
        }
    }
    done = 1;
}

/* ---- state ---------------------------------------------------------------- */

struct rd_shard;

struct rd_conn {
    struct rd_shard *sh;
    redisAsyncContext *ac;
    int connected; /* the handshake (AUTH, SELECT, PING) was answered */
    int pending;
    int64_t backoff_ms;
    struct event *retry_timer;   /* reconnect after backoff */
    struct event *connect_timer; /* connect deadline: TCP and the handshake */
    /* A connection that stops answering: Redis answers in order, so when no
     * reply came for longer than the deadline of every command waiting on
     * it, each of those requests has been answered 504 already and the
     * connection is dead weight: it is dropped and opened again. */
    struct event *stall_timer;
    uint64_t progress_ms; /* last reply, or when it became busy */
    uint64_t stall_ms;    /* the longest deadline among the waiting commands */
};

struct rd_shard {
    struct rd_state *st;
    const struct cf_shard *cfs;
    char *host; /* from the dsn, whole (malloc'd) */
    int port;
    int db;
    char *password; /* NULL: no AUTH */
    struct rd_conn *conns;
    int nconns;
    int pending;
    int was_up;
    /* Calls that arrived while no connection was ready but one was being
     * opened: they wait for its handshake (within the connect deadline),
     * as the SQL pools queue for a connection, instead of failing at once
     * while a gateway starts or a connection is replaced. */
    struct rd_call *wait_head, *wait_tail;
};

struct rd_state {
    struct event_base *base;
    const struct cf_backend *be;
    struct rd_shard *shards;
    int nshards;
    int closing;
};

/* One request in flight.  Several stages for read-modify-write patches. */
struct rd_call {
    struct rd_state *st;
    struct rd_shard *sh;
    struct rd_conn *conn;
    const struct ad_req *req;
    ad_done_cb cb;
    void *arg;
    int stage;   /* PATCH of a value item: 0 = read, 1 = compare-and-set */
    int retries; /* CAS retries left */
    int script;  /* script of the last EVALSHA, for the NOSCRIPT fallback */
    char key[600];
    size_t keylen;
    /* The last EVALSHA, kept whole for a NOSCRIPT resend: argv[i] / argl[i]
     * (lengths, never terminators: arguments may be empty).  The strings
     * are static, or live in the call: key, ver, ttl, argbuf. */
    const char **argv;
    size_t *argl;
    int argc, argcap;
    const char *argv_in[8]; /* argv / argl when argcap <= 8 (nearly always) */
    size_t argl_in[8];
    char ver[24], ttl[24];
    char *argbuf; /* owned script arguments (item text, counter ops) */
    /* while waiting for a connection (rd_shard.wait_head): the command,
     * formatted, and its reply callback */
    struct rd_call *wait_next;
    redisCallbackFn *wait_fn;
    char *wait_cmd;
    size_t wait_len;
};

static int dsn_parse(struct rd_shard *sh, const char *dsn, char *err, size_t errlen)
{
    /* redis://[:password@]host[:port][/db] */
    const char *p = dsn;
    if (strncmp(p, "redis://", 8) != 0) {
        snprintf(err, errlen, "shard '%s': dsn must look like redis://host:port/db", sh->cfs->name);
        return -1;
    }
    p += 8;
    const char *at = strchr(p, '@');
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon != NULL ? colon + 1 : p;
        sh->password = strndup(pw, (size_t)(at - pw));
        if (sh->password == NULL) {
            snprintf(err, errlen, "shard '%s': out of memory", sh->cfs->name);
            return -1;
        }
        p = at + 1;
    }
    const char *end = p + strcspn(p, ":/");
    sh->host = strndup(p, (size_t)(end - p));
    if (sh->host == NULL) {
        snprintf(err, errlen, "shard '%s': out of memory", sh->cfs->name);
        return -1;
    }
    sh->port = 6379;
    if (*end == ':') {
        char *e2;
        long port = strtol(end + 1, &e2, 10);
        if (port <= 0 || port > 65535) {
            snprintf(err, errlen, "shard '%s': bad port in dsn", sh->cfs->name);
            return -1;
        }
        sh->port = (int)port;
        end = e2;
    }
    if (*end == '/') {
        char *e2;
        long db = strtol(end + 1, &e2, 10);
        if (db < 0 || db > 15 || (*e2 != '\0')) {
            snprintf(err, errlen, "shard '%s': bad database number in dsn", sh->cfs->name);
            return -1;
        }
        sh->db = (int)db;
    } else if (*end != '\0') {
        snprintf(err, errlen, "shard '%s': cannot parse dsn", sh->cfs->name);
        return -1;
    }
    if (sh->host[0] == '\0') {
        snprintf(err, errlen, "shard '%s': dsn has no host", sh->cfs->name);
        return -1;
    }
    return 0;
}

/* ---- connections ------------------------------------------------------------ */

static void conn_start(struct rd_conn *c);

static void waiters_check(struct rd_shard *sh, const char *why);

static void schedule_retry(struct rd_conn *c)
{
    if (c->sh->st->closing) {
        return;
    }
    const struct cf_pool *p = &c->sh->st->be->pool;
    struct timeval tv =
        lb_tv_ms(lb_backoff_next(&c->backoff_ms, p->backoff_min_ms, p->backoff_max_ms));
    evtimer_add(c->retry_timer, &tv);
}

static void shard_note_down(struct rd_shard *sh, const char *why)
{
    if (sh->st->closing) {
        return;
    }
    int up = 0;
    for (int i = 0; i < sh->nconns; i++) {
        up |= sh->conns[i].connected;
    }
    if (!up && sh->was_up) {
        lb_warn("redis shard '%s' (%s:%d) is down: %s", sh->cfs->name, sh->host, sh->port, why);
        sh->was_up = 0;
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct rd_conn *c = ac->data;
    if (c == NULL) {
        return;
    }
    if (status != REDIS_OK) {
        evtimer_del(c->connect_timer);
        /* hiredis frees the context after this callback; no disconnect cb */
        lb_debug("redis shard '%s': connect failed: %s", c->sh->cfs->name, ac->c.errstr);
        c->ac = NULL;
        c->connected = 0;
        shard_note_down(c->sh, ac->c.errstr);
        schedule_retry(c);
        waiters_check(c->sh, "is unavailable: no connection");
        return;
    }
    /* TCP is up; the connection serves once the handshake is answered
     * (on_handshake), within the same connect deadline */
}

static void call_fail(struct rd_call *call, enum ad_status st, const char *what);
static void conn_took(struct rd_conn *c, struct rd_call *call);

/* The calls waiting for a connection: sent on c once it is ready, failed
 * when no connection of the shard is being opened any more. */
static void waiters_send(struct rd_shard *sh, struct rd_conn *c)
{
    while (sh->wait_head != NULL && c->ac != NULL && c->connected) {
        struct rd_call *call = sh->wait_head;
        sh->wait_head = call->wait_next;
        if (sh->wait_head == NULL) {
            sh->wait_tail = NULL;
        }
        int rc =
            redisAsyncFormattedCommand(c->ac, call->wait_fn, call, call->wait_cmd, call->wait_len);
        free(call->wait_cmd);
        call->wait_cmd = NULL;
        if (rc != REDIS_OK) {
            call_fail(call, AD_UNAVAILABLE, "is unavailable: the connection was lost");
            continue;
        }
        conn_took(c, call);
    }
}

static void waiters_check(struct rd_shard *sh, const char *why)
{
    for (int i = 0; i < sh->nconns && sh->wait_head != NULL; i++) {
        if (sh->conns[i].ac != NULL && sh->conns[i].connected) {
            waiters_send(sh, &sh->conns[i]);
        }
    }
    for (int i = 0; i < sh->nconns && sh->wait_head != NULL; i++) {
        if (sh->conns[i].ac != NULL && !sh->conns[i].connected && !sh->st->closing) {
            return; /* one is still being opened: they wait for it */
        }
    }
    while (sh->wait_head != NULL) {
        struct rd_call *call = sh->wait_head;
        sh->wait_head = call->wait_next;
        if (sh->wait_head == NULL) {
            sh->wait_tail = NULL;
        }
        free(call->wait_cmd);
        call->wait_cmd = NULL;
        call_fail(call, AD_UNAVAILABLE, why);
    }
}

/* The replies to AUTH, SELECT and the closing PING of conn_start.  An error
 * (a wrong password, a database that does not exist) or a lost connection
 * fails the connect: it is retried after backoff, never used half set up. */
static void on_handshake(redisAsyncContext *ac, void *r, void *priv)
{
    struct rd_conn *c = ac->data;
    redisReply *rep = r;
    if (c == NULL || rep == NULL) {
        return; /* freed (connect timeout, shutdown) or lost: handled there */
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        lb_warn("redis shard '%s' (%s:%d): connection set-up refused: %s", c->sh->cfs->name,
                c->sh->host, c->sh->port, rep->str);
        redisAsyncDisconnect(ac); /* → on_disconnect → retry after backoff */
        return;
    }
    if (priv == NULL) {
        return; /* AUTH or SELECT answered; the PING (priv = c) ends it */
    }
    evtimer_del(c->connect_timer);
    c->connected = 1;
    c->backoff_ms = 0;
    if (!c->sh->was_up) {
        lb_info("redis shard '%s' (%s:%d) is up", c->sh->cfs->name, c->sh->host, c->sh->port);
        c->sh->was_up = 1;
    }
    waiters_send(c->sh, c);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct rd_conn *c = ac->data;
    if (c == NULL) {
        return;
    }
    evtimer_del(c->connect_timer);
    evtimer_del(c->stall_timer);
    c->ac = NULL;
    c->connected = 0;
    if (status != REDIS_OK) {
        shard_note_down(c->sh, ac->errstr);
    } else {
        shard_note_down(c->sh, "connection closed");
    }
    schedule_retry(c);
    waiters_check(c->sh, "is unavailable: no connection");
}

static void connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct rd_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->ac != NULL && !c->connected) {
        redisAsyncContext *ac = c->ac;
        ac->data = NULL; /* its callbacks must not find us any more */
        c->ac = NULL;
        redisAsyncFree(ac);
        shard_note_down(c->sh, "connect timeout");
        schedule_retry(c);
        waiters_check(c->sh, "is unavailable: no connection");
    }
}

static void stall_arm(struct rd_conn *c, uint64_t ms)
{
    struct timeval tv = lb_tv_ms((int64_t)ms);
    evtimer_add(c->stall_timer, &tv);
}

static void stall_cb(evutil_socket_t fd, short what, void *arg)
{
    struct rd_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->ac == NULL || c->pending == 0) {
        return;
    }
    /* a round trip's allowance on top of the longest deadline */
    uint64_t bound = c->stall_ms + (uint64_t)c->sh->st->be->pool.connect_timeout_ms;
    uint64_t idle = lb_now_ms() - c->progress_ms;
    if (idle < bound) {
        stall_arm(c, bound - idle);
        return;
    }
    lb_warn("redis shard '%s' (%s:%d): no reply for %llu ms with %d command(s) waiting; "
            "reconnecting",
            c->sh->cfs->name, c->sh->host, c->sh->port, (unsigned long long)idle, c->pending);
    redisAsyncContext *ac = c->ac;
    ac->data = NULL; /* its callbacks must not find us any more */
    c->ac = NULL;
    c->connected = 0;
    redisAsyncFree(ac); /* the waiting calls complete now: connection lost */
    c->pending = 0;
    shard_note_down(c->sh, "no reply");
    schedule_retry(c);
    waiters_check(c->sh, "is unavailable: no connection");
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_start(arg);
}

static void conn_start(struct rd_conn *c)
{
    struct rd_shard *sh = c->sh;
    redisAsyncContext *ac = redisAsyncConnect(sh->host, sh->port);
    if (ac == NULL || ac->err) {
        if (ac != NULL) {
            redisAsyncFree(ac);
        }
        schedule_retry(c);
        waiters_check(c->sh, "is unavailable: no connection");
        return;
    }
    ac->data = c;
    c->ac = ac;
    redisLibeventAttach(ac, sh->st->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* the handshake, sent once connected; requests wait for its PING */
    if (sh->password != NULL && sh->password[0] != '\0') {
        const char *argv[2] = {"AUTH", sh->password};
        size_t argl[2] = {4, strlen(sh->password)};
        redisAsyncCommandArgv(ac, on_handshake, NULL, 2, argv, argl);
    }
    if (sh->db != 0) {
        redisAsyncCommand(ac, on_handshake, NULL, "SELECT %d", sh->db);
    }
    redisAsyncCommand(ac, on_handshake, c, "PING");
    struct timeval tv = lb_tv_ms(sh->st->be->pool.connect_timeout_ms);
    evtimer_add(c->connect_timer, &tv);
}

/* ---- completing requests ---------------------------------------------------- */

static void call_free(struct rd_call *call)
{
    free(call->wait_cmd);
    if (call->argv != call->argv_in) {
        free(call->argv);
        free(call->argl);
    }
    free(call->argbuf);
    free(call);
}

static void call_done(struct rd_call *call, struct ad_res *res)
{
    if (res->shard == NULL) {
        res->shard = call->sh->cfs->name;
    }
    call->sh->pending--;
    call->cb(res, call->arg);
    call_free(call);
}

/* A failure the client hears of by backend and shard names only: the
 * store's address and its own error text go to the log. */
static void call_fail(struct rd_call *call, enum ad_status st, const char *what)
{
    struct ad_res res;
    ad_res_init(&res);
    ad_res_error(&res, st, call->sh->cfs->name, "backend '%s' (redis shard '%s') %s",
                 call->st->be->name, call->sh->cfs->name, what);
    call_done(call, &res);
}

/* Error replies that say the server cannot serve now (it will again). */
static int error_is_transient(const char *msg)
{
    static const char *const prefixes[] = {"LOADING",  "BUSY",     "MASTERDOWN",  "READONLY",
                                           "TRYAGAIN", "OOM",      "CLUSTERDOWN", "NOREPLICAS",
                                           "NOAUTH",   "WRONGPASS"};
    for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
        if (strncmp(msg, prefixes[i], strlen(prefixes[i])) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The version is the item's last member: ..."version":N} */
static int64_t version_of(const char *s, size_t len)
{
    if (len < 12 || s[len - 1] != '}') {
        return -1;
    }
    size_t i = len - 1;
    while (i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9') {
        i--;
    }
    if (i < 10 || memcmp(s + i - 10, "\"version\":", 10) != 0) {
        return -1;
    }
    return strtoll(s + i, NULL, 10);
}

/* Send a command on the least-loaded live connection of the call's shard. */
static int call_send(struct rd_call *call, redisCallbackFn *fn, int argc, const char **argv,
                     const size_t *argvlen);

static void reply_value_get(redisAsyncContext *ac, void *r, void *priv);
static void reply_put(redisAsyncContext *ac, void *r, void *priv);
static void reply_del(redisAsyncContext *ac, void *r, void *priv);
static void reply_counters(redisAsyncContext *ac, void *r, void *priv);
static void reply_ping(redisAsyncContext *ac, void *r, void *priv);
static void patch_read_reply(redisAsyncContext *ac, void *r, void *priv);

/* Common reply checks: NULL (connection lost) and error replies.  Returns 1
 * when the call was completed here. */
static int reply_failed(struct rd_call *call, redisReply *rep)
{
    if (call->conn != NULL) {
        call->conn->pending--;
        call->conn->progress_ms = lb_now_ms();
    }
    if (rep == NULL) { /* shard_note_down logged the outage */
        call_fail(call, AD_UNAVAILABLE, "is unavailable: the connection was lost");
        return 1;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        lb_warn("redis shard '%s' (%s:%d) answered an error: %s", call->sh->cfs->name,
                call->sh->host, call->sh->port, rep->str);
        if (error_is_transient(rep->str)) {
            call_fail(call, AD_UNAVAILABLE, "cannot serve the request now (details in the log)");
        } else {
            call_fail(call, AD_INTERNAL, "answered an error (details in the log)");
        }
        return 1;
    }
    return 0;
}

/* Start the call's EVALSHA of `script` on its key with room for nargs
 * script arguments (argv_push); -1 when out of memory. */
static int eval_begin(struct rd_call *call, int script, int nargs)
{
    int need = 4 + nargs;
    if (call->argv != call->argv_in) {
        free(call->argv);
        free(call->argl);
    }
    call->argv = call->argv_in;
    call->argl = call->argl_in;
    call->argcap = (int)(sizeof(call->argv_in) / sizeof(call->argv_in[0]));
    if (need > call->argcap) {
        call->argv = malloc((size_t)need * sizeof(*call->argv));
        call->argl = malloc((size_t)need * sizeof(*call->argl));
        if (call->argv == NULL || call->argl == NULL) {
            free(call->argv);
            free(call->argl);
            call->argv = call->argv_in;
            call->argl = call->argl_in;
            return -1;
        }
        call->argcap = need;
    }
    call->script = script;
    call->argc = 0;
    static const char nkeys[] = "1";
    const char *head[4] = {"EVALSHA", script_sha[script], nkeys, call->key};
    size_t headl[4] = {7, 40, 1, call->keylen};
    for (int i = 0; i < 4; i++) {
        call->argv[call->argc] = head[i];
        call->argl[call->argc++] = headl[i];
    }
    return 0;
}

static void argv_push(struct rd_call *call, const char *arg, size_t len)
{
    call->argv[call->argc] = arg;
    call->argl[call->argc++] = len;
}

/* Send the EVALSHA built by eval_begin / argv_push. */
static int eval_send(struct rd_call *call, redisCallbackFn *fn)
{
    return call_send(call, fn, call->argc, call->argv, call->argl);
}

/* NOSCRIPT: the server lost its script cache (restart, SCRIPT FLUSH).  Load
 * the script and resend; the reply then goes to the original callback. */
static int noscript(redisReply *rep)
{
    return rep != NULL && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0;
}

static void script_loaded(redisAsyncContext *ac, void *r, void *priv)
{
    (void)ac;
    (void)r;
    (void)priv;
}

static int send_argv(redisAsyncContext *ac, redisCallbackFn *fn, void *priv, int argc,
                     const char **argv, const size_t *argvlen);

/* SCRIPT LOAD, then the call's last EVALSHA again, every argument as it was
 * sent, pipelined on the same connection. */
static int resend_after_load(struct rd_call *call, redisAsyncContext *ac, redisCallbackFn *fn)
{
    const char *load[3] = {"SCRIPT", "LOAD", scripts[call->script]};
    size_t loadl[3] = {6, 4, strlen(scripts[call->script])};
    if (send_argv(ac, script_loaded, NULL, 3, load, loadl) != REDIS_OK) {
        return -1;
    }
    if (send_argv(ac, fn, call, call->argc, call->argv, call->argl) != REDIS_OK) {
        return -1;
    }
    call->conn->pending++;
    return 0;
}

/* ---- value domains ------------------------------------------------------------ */

static void reply_value_get(redisAsyncContext *ac, void *r, void *priv)
{
    (void)ac;
    struct rd_call *call = priv;
    redisReply *rep = r;
    if (reply_failed(call, rep)) {
        return;
    }
    struct ad_res res;
    ad_res_init(&res);
    if (rep->type == REDIS_REPLY_NIL) {
        ad_res_error(&res, AD_NOT_FOUND, NULL, "no %s item with this key", call->req->domain->name);
    } else if (rep->type == REDIS_REPLY_STRING) {
        res.raw = rep->str;
        res.rawlen = rep->len;
        res.version = version_of(rep->str, rep->len);
    } else {
        ad_res_error(&res, AD_INTERNAL, NULL, "redis shard '%s': unexpected reply to GET",
                     call->sh->cfs->name);
    }
    call_done(call, &res);
}

/* Serialise the item without its closing brace (the script appends the
 * version and the brace). */
static char *item_prefix(struct json_object *item, size_t *len)
{
    size_t n;
    const char *s = json_object_to_json_string_length(
        item, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
    char *out = malloc(n);
    if (out == NULL) {
        return NULL;
    }
    memcpy(out, s, n - 1); /* drop the '}' */
    out[n - 1] = '\0';
    *len = n - 1;
    return out;
}

static int value_put(struct rd_call *call, struct json_object *item, const char *mode,
                     int64_t expect)
{
    size_t plen;
    free(call->argbuf);
    call->argbuf = item_prefix(item, &plen);
    if (call->argbuf == NULL) {
        return -1;
    }
    call->ver[0] = '\0';
    if (expect >= 0) {
        snprintf(call->ver, sizeof(call->ver), "%lld", (long long)expect);
    }
    snprintf(call->ttl, sizeof(call->ttl), "%lld", (long long)call->req->domain->ttl_s);
    if (eval_begin(call, SC_PUT, 4) < 0) {
        return -1;
    }
    argv_push(call, mode, strlen(mode));
    argv_push(call, call->ver, strlen(call->ver));
    argv_push(call, call->argbuf, plen);
    argv_push(call, call->ttl, strlen(call->ttl));
    return eval_send(call, reply_put);
}

static void reply_put(redisAsyncContext *ac, void *r, void *priv)
{
    struct rd_call *call = priv;
    redisReply *rep = r;
    if (noscript(rep)) {
        call->conn->pending--;
        if (resend_after_load(call, ac, reply_put) == 0) {
            return;
        }
        call->conn->pending++;
        rep = NULL;
    }
    if (reply_failed(call, rep)) {
        return;
    }
    struct ad_res res;
    ad_res_init(&res);
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 2 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER) {
        ad_res_error(&res, AD_INTERNAL, NULL, "redis shard '%s': unexpected script reply",
                     call->sh->cfs->name);
        call_done(call, &res);
        return;
    }
    long long v = rep->element[0]->integer;
    if (v == -409) {
        ad_res_error(&res, AD_CONFLICT, NULL, "a %s item with this key already exists",
                     call->req->domain->name);
        res.field = call->req->domain->key;
    } else if (v == -412) {
        if (call->stage == 1 && call->retries-- > 0) {
            /* a concurrent writer won the race between our read and write: read again */
            call->stage = 0;
            const char *argv[2] = {"GET", call->key};
            size_t argl[2] = {3, call->keylen};
            if (call_send(call, patch_read_reply, 2, argv, argl) == 0) {
                return;
            }
            ad_res_error(&res, AD_UNAVAILABLE, NULL, "redis shard '%s' is unavailable",
                         call->sh->cfs->name);
        } else if (call->stage == 1) {
            ad_res_error(&res, AD_CONFLICT, NULL,
                         "the item kept changing while it was patched; retry");
        } else if (rep->element[1]->integer == 0) {
            ad_res_error(&res, AD_PRECONDITION, NULL, "If-Match: the %s item does not exist",
                         call->req->domain->name);
        } else {
            ad_res_error(&res, AD_PRECONDITION, NULL,
                         "If-Match: version %lld does not match the current version %lld",
                         (long long)call->req->if_match, rep->element[1]->integer);
        }
    } else if (rep->elements >= 3 && rep->element[2]->type == REDIS_REPLY_STRING) {
        res.version = v;
        res.created = rep->element[1]->integer == 1;
        res.raw = rep->element[2]->str;
        res.rawlen = rep->element[2]->len;
    } else {
        ad_res_error(&res, AD_INTERNAL, NULL, "redis shard '%s': unexpected script reply",
                     call->sh->cfs->name);
    }
    call_done(call, &res);
}

static void patch_read_reply(redisAsyncContext *ac, void *r, void *priv)
{
    (void)ac;
    struct rd_call *call = priv;
    redisReply *rep = r;
    if (reply_failed(call, rep)) {
        return;
    }
    struct ad_res res;
    ad_res_init(&res);
    if (rep->type == REDIS_REPLY_NIL) {
        ad_res_error(&res, call->req->if_match >= 0 ? AD_PRECONDITION : AD_NOT_FOUND, NULL,
                     "no %s item with this key", call->req->domain->name);
        call_done(call, &res);
        return;
    }
    struct json_object *item = NULL;
    char msg[128];
    if (rep->type != REDIS_REPLY_STRING ||
        lb_json_parse_stored(rep->str, rep->len, 1000, &item, msg, sizeof(msg)) != LB_JSON_OK ||
        !json_object_is_type(item, json_type_object)) {
        json_object_put(item);
        ad_res_error(&res, AD_INTERNAL, NULL, "redis shard '%s': stored item is not a JSON object",
                     call->sh->cfs->name);
        call_done(call, &res);
        return;
    }
    int64_t cur = version_of(rep->str, rep->len);
    if (call->req->if_match >= 0 && call->req->if_match != cur) {
        json_object_put(item);
        ad_res_error(&res, AD_PRECONDITION, NULL,
                     "If-Match: version %lld does not match the current version %lld",
                     (long long)call->req->if_match, (long long)cur);
        call_done(call, &res);
        return;
    }
    struct md_error e = {0};
    if (md_patch_apply(call->req->domain, item, call->req->body, &e) < 0) {
        json_object_put(item);
        ad_res_error(&res, e.err == MD_E_CONFLICT ? AD_CONFLICT : AD_BAD_REQUEST, NULL, "%s",
                     e.message);
        res.field = e.field;
        call_done(call, &res);
        return;
    }
    json_object_object_del(item, "version");
    call->stage = 1;
    /* value_put keeps the item's text and the version read (a NOSCRIPT
     * resend sends them again) */
    int rc = value_put(call, item, "cas", cur);
    json_object_put(item);
    if (rc < 0) {
        ad_res_error(&res, AD_UNAVAILABLE, NULL, "redis shard '%s' is unavailable",
                     call->sh->cfs->name);
        call_done(call, &res);
    }
}

static void reply_del(redisAsyncContext *ac, void *r, void *priv)
{
    struct rd_call *call = priv;
    redisReply *rep = r;
    if (noscript(rep)) {
        call->conn->pending--;
        if (resend_after_load(call, ac, reply_del) == 0) {
            return;
        }
        call->conn->pending++;
        rep = NULL;
    }
    if (reply_failed(call, rep)) {
        return;
    }
    struct ad_res res;
    ad_res_init(&res);
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer == -404) {
        ad_res_error(&res, AD_NOT_FOUND, NULL, "no %s item with this key", call->req->domain->name);
    } else if (rep->type == REDIS_REPLY_INTEGER && rep->integer == -412) {
        ad_res_error(&res, AD_PRECONDITION, NULL,
                     "If-Match: version %lld does not match the current version",
                     (long long)call->req->if_match);
    } else if (rep->type == REDIS_REPLY_INTEGER && rep->integer >= 0) {
        /* deleted (hash domains: DEL answers how many keys it removed) */
    } else {
        ad_res_error(&res, AD_INTERNAL, NULL, "redis shard '%s': unexpected reply to delete",
                     call->sh->cfs->name);
    }
    call_done(call, &res);
}

/* ---- hash (counter) domains ---------------------------------------------------- */

static void reply_counters(redisAsyncContext *ac, void *r, void *priv)
{
    struct rd_call *call = priv;
    redisReply *rep = r;
    if (noscript(rep)) {
        call->conn->pending--;
        if (resend_after_load(call, ac, reply_counters) == 0) {
            return;
        }
        call->conn->pending++;
        rep = NULL;
    }
    if (reply_failed(call, rep)) {
        return;
    }
    struct ad_res res;
    ad_res_init(&res);
    const struct cf_domain *d = call->req->domain;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER && rep->element[0]->integer == -409) {
        ad_res_error(&res, AD_CONFLICT, NULL, "'%s.%s' would drop below 0 (it is %lld)",
                     d->counters_field, rep->element[1]->str, rep->element[2]->integer);
        res.field = d->counters_field;
        call_done(call, &res);
        return;
    }
    if (rep->type != REDIS_REPLY_ARRAY) {
        ad_res_error(&res, AD_INTERNAL, NULL, "redis shard '%s': unexpected reply",
                     call->sh->cfs->name);
        call_done(call, &res);
        return;
    }
    struct json_object *item = json_object_new_object();
    struct json_object *members = json_object_new_object();
    json_object_object_add(item, d->key,
                           json_object_new_string_len(call->req->key, (int)call->req->keylen));
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        redisReply *k = rep->element[i], *v = rep->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING) {
            char *kz = lb_xstrndup(k->str, k->len);
            json_object_object_add(members, kz, json_object_new_int64(strtoll(v->str, NULL, 10)));
            free(kz);
        }
    }
    json_object_object_add(item, d->counters_field, members);
    res.item = item;
    call_done(call, &res);
    json_object_put(item);
}

/* The counters script's arguments, as an EVALSHA ready to send
 * (eval_begin / argv_push): ttl, then (op, member, n) triples.  The texts
 * live in call->argbuf, one after the other, each with its length (a
 * member or an op's placeholder may be empty).  Their number has no cap of
 * its own: md_item.c bounds the members of one write (MD_MAX_COUNTER_OPS). */
struct ops_buf {
    char *buf;
    size_t len, cap;
    size_t *off; /* off[2i] = offset, off[2i+1] = length of argument i */
    int n, ncap;
};

static int ops_push(struct ops_buf *b, const char *s, size_t len)
{
    if (b->len + len > b->cap) {
        size_t cap = b->cap != 0 ? b->cap : 256;
        while (b->len + len > cap) {
            cap *= 2;
        }
        char *nb = realloc(b->buf, cap);
        if (nb == NULL) {
            return -1;
        }
        b->buf = nb;
        b->cap = cap;
    }
    if (b->n == b->ncap) {
        int ncap = b->ncap != 0 ? b->ncap * 2 : 32;
        size_t *no = realloc(b->off, (size_t)ncap * 2 * sizeof(*no));
        if (no == NULL) {
            return -1;
        }
        b->off = no;
        b->ncap = ncap;
    }
    memcpy(b->buf + b->len, s, len);
    b->off[2 * b->n] = b->len;
    b->off[2 * b->n + 1] = len;
    b->n++;
    b->len += len;
    return 0;
}

static int ops_triple(struct ops_buf *b, const char *op, const char *member, size_t mlen, int64_t n)
{
    char num[24];
    int nl = snprintf(num, sizeof(num), "%lld", (long long)n);
    if (ops_push(b, op, 1) < 0 || ops_push(b, member, mlen) < 0) {
        return -1;
    }
    return ops_push(b, num, (size_t)nl);
}

static int counters_args(struct rd_call *call, struct json_object *patch, int replace)
{
    const struct cf_domain *d = call->req->domain;
    size_t cl = strlen(d->counters_field);
    struct ops_buf b = {0};
    int rc = 0;
    char num[24];
    int nl = snprintf(num, sizeof(num), "%lld", (long long)d->ttl_s);
    rc |= ops_push(&b, num, (size_t)nl);
    struct json_object *ops;
    if (replace) {
        rc |= ops_triple(&b, "c", "", 0, 0);
        struct json_object *members = NULL;
        json_object_object_get_ex(patch, d->counters_field, &members);
        json_object_object_foreach(members, k, v)
        {
            rc |= ops_triple(&b, "s", k, strlen(k), json_object_get_int64(v));
        }
    } else {
        if (json_object_object_get_ex(patch, "unset", &ops)) {
            for (size_t i = 0; i < json_object_array_length(ops); i++) {
                struct json_object *fo = json_object_array_get_idx(ops, i);
                const char *f = json_object_get_string(fo);
                size_t fl = (size_t)json_object_get_string_len(fo);
                if (strcmp(f, d->counters_field) == 0) {
                    rc |= ops_triple(&b, "c", "", 0, 0);
                } else {
                    rc |= ops_triple(&b, "d", f + cl + 1, fl - cl - 1, 0);
                }
            }
        }
        static const char *const kinds[2] = {"set", "inc"};
        for (int kind = 0; kind < 2; kind++) {
            if (!json_object_object_get_ex(patch, kinds[kind], &ops)) {
                continue;
            }
            json_object_object_foreach(ops, k, v)
            {
                rc |= ops_triple(&b, kind == 0 ? "s" : "i", k + cl + 1, strlen(k + cl + 1),
                                 json_object_get_int64(v));
            }
        }
    }
    if (rc == 0) {
        rc = eval_begin(call, SC_COUNTERS, b.n);
    }
    if (rc == 0) {
        free(call->argbuf);
        call->argbuf = b.buf; /* the arguments point into it from here on */
        b.buf = NULL;
        for (int i = 0; i < b.n; i++) {
            argv_push(call, call->argbuf + b.off[2 * i], b.off[2 * i + 1]);
        }
    }
    free(b.buf);
    free(b.off);
    return rc < 0 ? -1 : 0;
}

/* ---- submit ---------------------------------------------------------------------- */

/* Send one command in RESP, formatted here: hiredis' argv formatter goes
 * through sdscatfmt for every argument, 4 % of the instructions of a
 * session GET in the callgrind profile (docs/performance.md).  The text is
 * built on the stack when it fits (it nearly always does). */
/* The command as RESP into buf (room for resp_size() bytes); its length.
 * hiredis scans the text for the command name with strchr: it ends in a
 * NUL although the length is given. */
static size_t resp_size(int argc, const size_t *argvlen)
{
    size_t need = 16;
    for (int i = 0; i < argc; i++) {
        need += argvlen[i] + 32;
    }
    return need;
}

static size_t resp_format(char *buf, int argc, const char **argv, const size_t *argvlen)
{
    char *p = buf;
    *p++ = '*';
    p = lb_put_u64(p, (size_t)argc);
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        *p++ = '$';
        p = lb_put_u64(p, argvlen[i]);
        *p++ = '\r';
        *p++ = '\n';
        memcpy(p, argv[i], argvlen[i]);
        p += argvlen[i];
        *p++ = '\r';
        *p++ = '\n';
    }
    *p = '\0';
    return (size_t)(p - buf);
}

static int send_argv(redisAsyncContext *ac, redisCallbackFn *fn, void *priv, int argc,
                     const char **argv, const size_t *argvlen)
{
    size_t need = resp_size(argc, argvlen);
    char stack[4096];
    char *buf = need <= sizeof(stack) ? stack : malloc(need);
    if (buf == NULL) {
        return REDIS_ERR;
    }
    size_t len = resp_format(buf, argc, argv, argvlen);
    int rc = redisAsyncFormattedCommand(ac, fn, priv, buf, len);
    if (buf != stack) {
        free(buf);
    }
    return rc;
}

/* A call now sent on c: it counts as waiting there, and c's stall watch
 * covers its deadline. */
static void conn_took(struct rd_conn *c, struct rd_call *call)
{
    c->pending++;
    call->conn = c;
    uint64_t now = lb_now_ms();
    if (c->pending == 1) {
        c->progress_ms = now;
        c->stall_ms = 0;
    }
    uint64_t span = call->req->deadline_ms == 0    ? 60000 /* no deadline: a minute */
                    : call->req->deadline_ms > now ? call->req->deadline_ms - now
                                                   : 0;
    if (span > c->stall_ms) {
        c->stall_ms = span;
    }
    if (!evtimer_pending(c->stall_timer, NULL)) {
        stall_arm(c, c->stall_ms + (uint64_t)call->st->be->pool.connect_timeout_ms);
    }
}

/* No connection is ready: wait for one being opened, or AD_EDOWN when none
 * is (the shard is down: fail fast). */
static int wait_for_conn(struct rd_call *call, redisCallbackFn *fn, int argc, const char **argv,
                         const size_t *argvlen)
{
    struct rd_shard *sh = call->sh;
    int opening = 0;
    for (int i = 0; i < sh->nconns; i++) {
        opening |= sh->conns[i].ac != NULL && !sh->conns[i].connected;
    }
    if (!opening || sh->st->closing) {
        return AD_EDOWN;
    }
    call->wait_cmd = malloc(resp_size(argc, argvlen));
    if (call->wait_cmd == NULL) {
        return AD_EFULL;
    }
    call->wait_len = resp_format(call->wait_cmd, argc, argv, argvlen);
    call->wait_fn = fn;
    call->wait_next = NULL;
    if (sh->wait_tail != NULL) {
        sh->wait_tail->wait_next = call;
    } else {
        sh->wait_head = call;
    }
    sh->wait_tail = call;
    return 0;
}

static int call_send(struct rd_call *call, redisCallbackFn *fn, int argc, const char **argv,
                     const size_t *argvlen)
{
    struct rd_shard *sh = call->sh;
    struct rd_conn *best = NULL;
    for (int i = 0; i < sh->nconns; i++) {
        struct rd_conn *c = &sh->conns[i];
        if (c->connected && c->ac != NULL && (best == NULL || c->pending < best->pending)) {
            best = c;
        }
    }
    if (best == NULL) {
        return wait_for_conn(call, fn, argc, argv, argvlen);
    }
    if (send_argv(best->ac, fn, call, argc, argv, argvlen) != REDIS_OK) {
        return AD_EDOWN;
    }
    conn_took(best, call);
    return 0;
}

static void reply_ping(redisAsyncContext *ac, void *r, void *priv)
{
    (void)ac;
    struct rd_call *call = priv;
    if (reply_failed(call, r)) {
        return;
    }
    struct ad_res res;
    ad_res_init(&res);
    call_done(call, &res);
}

static int rd_submit(void *state, const struct ad_req *req, ad_done_cb cb, void *arg)
{
    struct rd_state *st = state;
    if (st->closing) {
        return AD_EDOWN;
    }
    if (req->shard < 0 || req->shard >= st->nshards) {
        return AD_EINVAL;
    }
    struct rd_shard *sh = &st->shards[req->shard];
    if (sh->pending >= st->be->pool.queue_max) {
        return AD_EFULL;
    }
    const struct cf_domain *d = req->domain;
    struct rd_call *call = calloc(1, sizeof(*call));
    if (call == NULL) {
        return AD_EFULL;
    }
    call->st = st;
    call->sh = sh;
    call->req = req;
    call->cb = cb;
    call->arg = arg;
    call->retries = 5;
    if (d != NULL && req->key != NULL) {
        int n = snprintf(call->key, sizeof(call->key), "%s", d->table);
        if ((size_t)n + req->keylen >= sizeof(call->key)) {
            free(call);
            return AD_EINVAL;
        }
        memcpy(call->key + n, req->key, req->keylen);
        call->keylen = (size_t)n + req->keylen;
        call->key[call->keylen] = '\0';
    }
    int rc = AD_EINVAL;
    char ttl[24];
    switch (req->op) {
    case AD_PING: {
        const char *argv[1] = {"PING"};
        size_t argl[1] = {4};
        rc = call_send(call, reply_ping, 1, argv, argl);
        break;
    }
    case AD_GET:
        if (d->kind == CF_KIND_HASH) {
            const char *argv[2] = {"HGETALL", call->key};
            size_t argl[2] = {7, call->keylen};
            rc = call_send(call, reply_counters, 2, argv, argl);
        } else if (d->sliding_ttl && d->ttl_s > 0) {
            snprintf(ttl, sizeof(ttl), "%lld", (long long)d->ttl_s);
            const char *argv[4] = {"GETEX", call->key, "EX", ttl};
            size_t argl[4] = {5, call->keylen, 2, strlen(ttl)};
            rc = call_send(call, reply_value_get, 4, argv, argl);
        } else {
            const char *argv[2] = {"GET", call->key};
            size_t argl[2] = {3, call->keylen};
            rc = call_send(call, reply_value_get, 2, argv, argl);
        }
        break;
    case AD_PUT:
    case AD_INSERT:
        if (d->kind == CF_KIND_HASH) {
            rc = counters_args(call, req->body, 1) < 0 ? AD_EFULL : eval_send(call, reply_counters);
        } else {
            rc = value_put(call, req->body, req->op == AD_INSERT ? "insert" : "put", req->if_match);
        }
        break;
    case AD_PATCH:
        if (d->kind == CF_KIND_HASH) {
            rc = counters_args(call, req->body, 0) < 0 ? AD_EFULL : eval_send(call, reply_counters);
        } else {
            const char *argv[2] = {"GET", call->key};
            size_t argl[2] = {3, call->keylen};
            rc = call_send(call, patch_read_reply, 2, argv, argl);
        }
        break;
    case AD_DELETE:
        if (d->kind == CF_KIND_HASH) {
            const char *argv[2] = {"DEL", call->key};
            size_t argl[2] = {3, call->keylen};
            rc = call_send(call, reply_del, 2, argv, argl);
        } else {
            if (req->if_match >= 0) {
                snprintf(call->ver, sizeof(call->ver), "%lld", (long long)req->if_match);
            }
            if (eval_begin(call, SC_DEL, 1) < 0) {
                rc = AD_EFULL;
            } else {
                argv_push(call, call->ver, strlen(call->ver));
                rc = eval_send(call, reply_del);
            }
        }
        break;
    default:
        rc = AD_EINVAL;
    }
    if (rc != 0) {
        call_free(call);
        return rc;
    }
    sh->pending++;
    return 0;
}

static int rd_supports(const struct cf_domain *d, enum ad_op op)
{
    switch (op) {
    case AD_GET:
    case AD_PUT:
    case AD_PATCH:
    case AD_DELETE:
    case AD_PING:
        return 1;
    case AD_INSERT:
        return d->kind == CF_KIND_VALUE;
    default:
        return 0;
    }
}

static int rd_check_domain(const struct cf_backend *be, const struct cf_domain *d, char *err,
                           size_t errlen)
{
    (void)be;
    if (d->kind == CF_KIND_RECORD) {
        snprintf(err, errlen, "kind: redis serves `value` and `hash` domains, not `record`");
        return -1;
    }
    if (d->shard_key != NULL) {
        snprintf(err, errlen, "shard_key: redis domains are not sharded by a field");
        return -1;
    }
    if (strlen(d->table) > 64) {
        snprintf(err, errlen, "prefix: at most 64 bytes");
        return -1;
    }
    return 0;
}

static int rd_init(struct event_base *base, const struct cf_backend *be, void **state, char *err,
                   size_t errlen)
{
    scripts_init();
    if (be->nshards == 0) {
        snprintf(err, errlen, "backend '%s': redis needs `shards`", be->name);
        return -1;
    }
    struct rd_state *st = lb_xcalloc(1, sizeof(*st));
    st->base = base;
    st->be = be;
    st->nshards = (int)be->nshards;
    st->shards = lb_xcalloc(be->nshards, sizeof(*st->shards));
    for (int i = 0; i < st->nshards; i++) {
        struct rd_shard *sh = &st->shards[i];
        sh->st = st;
        sh->cfs = &be->shards[i];
        sh->was_up = 1; /* so that a first failure is logged */
        if (dsn_parse(sh, sh->cfs->dsn, err, errlen) < 0) {
            for (int j = 0; j <= i; j++) {
                free(st->shards[j].conns);
                free(st->shards[j].host);
                free(st->shards[j].password);
            }
            free(st->shards);
            free(st);
            return -1;
        }
        sh->nconns = be->pool.max;
        sh->conns = lb_xcalloc((size_t)sh->nconns, sizeof(*sh->conns));
        for (int k = 0; k < sh->nconns; k++) {
            struct rd_conn *c = &sh->conns[k];
            c->sh = sh;
            c->retry_timer = evtimer_new(base, retry_cb, c);
            c->connect_timer = evtimer_new(base, connect_timeout_cb, c);
            c->stall_timer = evtimer_new(base, stall_cb, c);
            conn_start(c);
        }
    }
    *state = st;
    return 0;
}

static void rd_shutdown(void *state)
{
    struct rd_state *st = state;
    st->closing = 1;
    for (int i = 0; i < st->nshards; i++) {
        struct rd_shard *sh = &st->shards[i];
        for (int k = 0; k < sh->nconns; k++) {
            struct rd_conn *c = &sh->conns[k];
            evtimer_del(c->retry_timer);
            evtimer_del(c->connect_timer);
            evtimer_del(c->stall_timer);
            if (c->ac != NULL) {
                redisAsyncContext *ac = c->ac;
                c->ac = NULL;
                c->connected = 0;
                /* pending callbacks run now with a NULL reply (→ unavailable) */
                redisAsyncFree(ac);
            }
            event_free(c->retry_timer);
            event_free(c->connect_timer);
            event_free(c->stall_timer);
        }
        waiters_check(sh, "is unavailable: polygate is shutting down");
        free(sh->conns);
        free(sh->host);
        free(sh->password);
    }
    free(st->shards);
    free(st);
}

/* ad_ops.stats: the connections of one shard (for /metrics). */
static void rd_stats(void *state, int shard, struct ad_pool_stats *out)
{
    struct rd_state *st = state;
    memset(out, 0, sizeof(*out));
    if (shard < 0 || shard >= st->nshards) {
        return;
    }
    struct rd_shard *sh = &st->shards[shard];
    out->conns = sh->nconns;
    for (int i = 0; i < sh->nconns; i++) {
        out->up += sh->conns[i].connected != 0;
        out->busy += sh->conns[i].pending;
    }
}

const struct ad_ops ad_redis_ops = {
    .name = "redis",
    .abi = AD_ABI,
    .init = rd_init,
    .check_domain = rd_check_domain,
    .supports = rd_supports,
    .submit = rd_submit,
    /* no cancel: Redis answers in order on a pipelined connection, a sent
     * command cannot be taken back; the gateway ignores the late completion */
    .shutdown = rd_shutdown,
    .stats = rd_stats,
};
