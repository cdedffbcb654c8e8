/*
 * rb_rebalance.c — the rebalancer: moves the slots of a sharded backend to
 * the owners a new shard map names, one slot at a time (docs/rebalancing.md).
 *
 * The mover is one thread with BLOCKING connections (one per shard, through
 * the store's slot mover, rebalance/rb_mover.h), off every worker loop.
 * Workers see the move only through the live slot table (routing/rt_live.h)
 * that the backend's config carries.
 */
#include "rebalance/rb_rebalance.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "adapters/sql/sql_build.h"
#include "config/cf_config.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "rebalance/rb_mapfile.h"
#include "rebalance/rb_mover.h"
#include "rebalance/rb_registry.h"
#include "rebalance/rb_slots.h"
#include "rebalance/rb_state.h"
#include "routing/rt_live.h"
#include "routing/rt_shardmap.h"

#define CONNECT_TIMEOUT_MS 3000
#define FREEZE_TIMEOUT_MS 5000
#define BATCH_MAX 500
#define DELETE_BATCH 1000
#define DEFAULT_THROTTLE 20000 /* rows per second */
#define NERRORS 5

struct rb_move {
    uint32_t slot;
    int from, to; /* union shard indices */
};

struct rb {
    /* fixed at begin */
    char *backend;
    char *state_path;
    char *map_path;
    struct json_object *from_doc, *to_doc, *union_doc;
    int64_t from_version, to_version;
    struct rt_live *live;
    size_t nshards;
    char **names, **dsns; /* union shards */
    struct rb_table *tables;
    size_t ntables;
    struct rb_move *moves;
    size_t nmoves;
    unsigned char *done; /* per move: switched (persisted) */
    rb_rebalance_done_cb cb;
    void *cb_arg;
    int nworkers; /* the mover waits until each has drained (rt_live_ndrained) */
    pthread_t thread;
    int thread_started;
    const struct rb_mover_ops *ops; /* the store's slot mover */
    /* mover thread only */
    struct rb_conn **conns;
    double tokens;
    int64_t tokens_at;
    /* under g_mu */
    const char *state; /* running, paused, done, aborted, stopped */
    int pause_req, abort_req, stop_req;
    int64_t throttle;
    size_t slots_done, done_at_start;
    uint64_t rows_moved, rows_at_start;
    int64_t started_ms;
    int64_t current_slot;
    const char *phase;
    char errors[NERRORS][256];
    unsigned nerrors; /* total; the last NERRORS kept */
    int finished;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct rb *cur; /* the running or last rebalance */

static int64_t now_ms(void)
{
    return (int64_t)lb_now_ms();
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void set_phase(struct rb *rb, int64_t slot, const char *phase)
{
    pthread_mutex_lock(&g_mu);
    rb->current_slot = slot;
    rb->phase = phase;
    pthread_mutex_unlock(&g_mu);
}

/* A message cut to its buffer ends on a whole UTF-8 character (it goes out
 * in the JSON status), with "…" where it was cut. */
static void cut_utf8(char *msg, size_t size)
{
    static const char more[] = "\xe2\x80\xa6"; /* … */
    size_t end = size - sizeof(more);          /* room for "…" and the NUL */
    while (end > 0 && ((unsigned char)msg[end] & 0xc0) == 0x80) {
        end--; /* msg[end] starts a character: cut before it */
    }
    memcpy(msg + end, more, sizeof(more));
}

static void __attribute__((format(printf, 2, 3))) rb_error(struct rb *rb, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof(msg)) {
        cut_utf8(msg, sizeof(msg));
    }
    lb_warn("rebalance of '%s': %s", rb->backend, msg);
    pthread_mutex_lock(&g_mu);
    snprintf(rb->errors[rb->nerrors % NERRORS], sizeof(rb->errors[0]), "%s", msg);
    rb->nerrors++;
    pthread_mutex_unlock(&g_mu);
}

static int flag(struct rb *rb, int *f)
{
    pthread_mutex_lock(&g_mu);
    int v = *f;
    pthread_mutex_unlock(&g_mu);
    return v;
}

/* While paused (and not stopping): phase "paused" — the mover holds no slot
 * frozen and writes nothing — then `phase` again (NULL: leave it to the next
 * step). */
static void wait_paused(struct rb *rb, int64_t slot, const char *phase)
{
    int paused = 0;
    while (flag(rb, &rb->pause_req) && !flag(rb, &rb->stop_req) && !flag(rb, &rb->abort_req)) {
        if (!paused) {
            set_phase(rb, slot, "paused");
            paused = 1;
        }
        nap_ms(50);
    }
    if (paused && phase != NULL) {
        set_phase(rb, slot, phase);
    }
}

static void rb_free(struct rb *rb)
{
    if (rb == NULL) {
        return;
    }
    for (size_t i = 0; i < rb->nshards; i++) {
        free(rb->names[i]);
        free(rb->dsns[i]);
        if (rb->conns != NULL && rb->conns[i] != NULL) {
            rb->ops->close(rb->conns[i]);
        }
    }
    free(rb->names);
    free(rb->dsns);
    free(rb->conns);
    for (size_t i = 0; i < rb->ntables; i++) {
        free(rb->tables[i].name);
        free(rb->tables[i].key);
        free(rb->tables[i].ddl);
        rb_cols_free(rb->tables[i].cols, rb->tables[i].ncols);
    }
    free(rb->tables);
    free(rb->moves);
    free(rb->done);
    json_object_put(rb->from_doc);
    json_object_put(rb->to_doc);
    json_object_put(rb->union_doc);
    rt_live_unref(rb->live);
    free(rb->backend);
    free(rb->state_path);
    free(rb->map_path);
    free(rb);
}

/* ---- shards (mover thread) ----------------------------------------------------------- */

/* The shard's connection, (re)connected when it no longer answers. */
static struct rb_conn *conn(struct rb *rb, int shard, char *err, size_t errlen)
{
    if (rb->conns[shard] != NULL && rb->ops->alive(rb->conns[shard])) {
        return rb->conns[shard];
    }
    rb->ops->close(rb->conns[shard]);
    rb->conns[shard] =
        rb->ops->connect(rb->names[shard], rb->dsns[shard], CONNECT_TIMEOUT_MS, err, errlen);
    return rb->conns[shard];
}

/* Column list of a table, from the source's metadata. */
static int table_cols(struct rb *rb, struct rb_table *t, struct rb_conn *src, char *err,
                      size_t errlen)
{
    if (t->cols != NULL) {
        return 0;
    }
    char **cols = NULL;
    unsigned n = 0;
    if (rb->ops->columns(src, t->name, &cols, &n, err, errlen) < 0) {
        return -1;
    }
    int keycol = -1;
    for (unsigned i = 0; i < n; i++) {
        if (strcmp(cols[i], t->key) == 0) {
            keycol = (int)i;
        }
    }
    if (keycol < 0) {
        rb_cols_free(cols, n);
        snprintf(err, errlen, "table '%s' has no column '%s'", t->name, t->key);
        return -1;
    }
    t->cols = cols;
    t->ncols = n;
    t->keycol = keycol;
    return 0;
}

static void throttle(struct rb *rb, long rows)
{
    pthread_mutex_lock(&g_mu);
    int64_t rate = rb->throttle;
    pthread_mutex_unlock(&g_mu);
    if (rate <= 0) {
        return;
    }
    int64_t now = now_ms();
    rb->tokens += (double)(now - rb->tokens_at) * (double)rate / 1000.0;
    rb->tokens_at = now;
    if (rb->tokens > (double)rate) {
        rb->tokens = (double)rate; /* at most one second of burst */
    }
    rb->tokens -= (double)rows;
    if (rb->tokens < 0) {
        nap_ms((long)(-rb->tokens * 1000.0 / (double)rate) + 1);
    }
}

static void add_rows(struct rb *rb, long n)
{
    pthread_mutex_lock(&g_mu);
    rb->rows_moved += (uint64_t)n;
    pthread_mutex_unlock(&g_mu);
}

static int batch_size(struct rb *rb)
{
    pthread_mutex_lock(&g_mu);
    int64_t rate = rb->throttle;
    pthread_mutex_unlock(&g_mu);
    int64_t n = rate > 0 ? rate / 10 : BATCH_MAX;
    return (int)(n < 1 ? 1 : n > BATCH_MAX ? BATCH_MAX : n);
}

/* COPY: the slot's rows in key order, in batches, source → target. */
static int copy_slot(struct rb *rb, struct rb_table *t, uint32_t slot, struct rb_conn *a,
                     struct rb_conn *b, char *err, size_t errlen)
{
    char *last = NULL;
    for (;;) {
        if (flag(rb, &rb->stop_req) || flag(rb, &rb->abort_req)) {
            free(last);
            snprintf(err, errlen, "stopped");
            return -1;
        }
        wait_paused(rb, (int64_t)slot, "copy");
        long n = rb->ops->copy_batch(a, b, t, slot, &last, batch_size(rb), err, errlen);
        if (n < 0) {
            free(last);
            return -1;
        }
        if (n == 0) {
            break;
        }
        add_rows(rb, n);
        throttle(rb, n);
    }
    free(last);
    return 0;
}

static int rowsum_cmp(const void *x, const void *y)
{
    return strcmp(((const struct rb_rowsum *)x)->key, ((const struct rb_rowsum *)y)->key);
}

/* The slot's (key, row hash) pairs at a shard, sorted by key. */
static struct rb_rowsum *rowsums(struct rb *rb, struct rb_table *t, uint32_t slot,
                                 struct rb_conn *c, size_t *n, char *err, size_t errlen)
{
    *n = 0;
    struct rb_rowsum *rs = rb->ops->rowsums(c, t, slot, n, err, errlen);
    if (rs != NULL) {
        qsort(rs, *n, sizeof(*rs), rowsum_cmp);
    }
    return rs;
}

/* Copy (keys given) rows from the source, or delete them at the target. */
static int apply_keys(struct rb *rb, struct rb_table *t, uint32_t slot, char **keys, size_t nkeys,
                      int del, struct rb_conn *a, struct rb_conn *b, long *moved, char *err,
                      size_t errlen)
{
    for (size_t off = 0; off < nkeys; off += RB_KEYS_PER_CALL) {
        size_t n = nkeys - off < RB_KEYS_PER_CALL ? nkeys - off : RB_KEYS_PER_CALL;
        if (del) {
            if (rb->ops->delete_keys(b, t, slot, keys + off, n, err, errlen) < 0) {
                return -1;
            }
            continue;
        }
        long c = rb->ops->copy_keys(a, b, t, slot, keys + off, n, err, errlen);
        if (c < 0) {
            return -1;
        }
        *moved += c;
    }
    return 0;
}

/* CATCH-UP (slot frozen): make the target's rows of the slot equal to the
 * source's — copy rows missing or different (by a hash of every column),
 * delete rows the source no longer has. */
static int catch_up(struct rb *rb, struct rb_table *t, uint32_t slot, struct rb_conn *a,
                    struct rb_conn *b, char *err, size_t errlen)
{
    size_t na = 0, nb = 0;
    struct rb_rowsum *ra = rowsums(rb, t, slot, a, &na, err, errlen);
    if (ra == NULL) {
        return -1;
    }
    struct rb_rowsum *rb_ = rowsums(rb, t, slot, b, &nb, err, errlen);
    if (rb_ == NULL) {
        rb_rowsums_free(ra, na);
        return -1;
    }
    char **cp = calloc(na + 1, sizeof(*cp)), **del = calloc(nb + 1, sizeof(*del));
    if (cp == NULL || del == NULL) {
        free(cp);
        free(del);
        rb_rowsums_free(ra, na);
        rb_rowsums_free(rb_, nb);
        snprintf(err, errlen, "out of memory comparing the rows of slot %u", slot);
        return -1;
    }
    size_t ncp = 0, ndel = 0, i = 0, j = 0;
    while (i < na || j < nb) {
        int c = i >= na ? 1 : j >= nb ? -1 : strcmp(ra[i].key, rb_[j].key);
        if (c < 0) {
            cp[ncp++] = ra[i++].key;
        } else if (c > 0) {
            del[ndel++] = rb_[j++].key;
        } else {
            if (strcmp(ra[i].sum, rb_[j].sum) != 0) {
                cp[ncp++] = ra[i].key;
            }
            i++;
            j++;
        }
    }
    long moved = 0;
    int rc = apply_keys(rb, t, slot, cp, ncp, 0, a, b, &moved, err, errlen);
    if (rc == 0) {
        rc = apply_keys(rb, t, slot, del, ndel, 1, a, b, &moved, err, errlen);
    }
    add_rows(rb, moved);
    free(cp);
    free(del);
    rb_rowsums_free(ra, na);
    rb_rowsums_free(rb_, nb);
    return rc;
}

/* VERIFY: row count and checksums of every column, both sides. */
static int verify(struct rb *rb, struct rb_table *t, uint32_t slot, struct rb_conn *a,
                  struct rb_conn *b, const char *an, const char *bn, char *err, size_t errlen)
{
    char got[2][96];
    struct rb_conn *side[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        if (rb->ops->digest(side[k], t, slot, got[k], sizeof(got[k]), err, errlen) < 0) {
            return -1;
        }
    }
    if (strcmp(got[0], got[1]) != 0) {
        snprintf(err, errlen,
                 "verify of slot %u (table %s) failed: '%s' has count/checksums %s, '%s' has %s",
                 slot, t->name, an, got[0], bn, got[1]);
        return -1;
    }
    return 0;
}

/* DELETE the slot's rows at a shard, in batches. */
static int delete_slot_rows(struct rb *rb, struct rb_table *t, uint32_t slot, struct rb_conn *c,
                            char *err, size_t errlen)
{
    for (;;) {
        long n = rb->ops->delete_slot(c, t, slot, DELETE_BATCH, err, errlen);
        if (n < 0) {
            return -1;
        }
        if (n < DELETE_BATCH) {
            return 0;
        }
    }
}

/* ---- the slot ownership tables (docs/rebalancing.md, "The fence at the shard") ------ */

/* GRANT / REVOKE one slot on a connection, in every table of the backend. */
static int own(struct rb *rb, struct rb_conn *c, uint32_t slot, int grant, char *err, size_t errlen)
{
    for (size_t k = 0; k < rb->ntables; k++) {
        const struct rb_table *t = &rb->tables[k];
        if ((grant ? rb_slots_grant(rb->ops, c, t, &slot, 1, err, errlen)
                   : rb_slots_revoke(rb->ops, c, t, &slot, 1, err, errlen)) < 0) {
            return -1;
        }
    }
    return 0;
}

/* GRANT / REVOKE one slot at a shard. */
static int slot_own(struct rb *rb, int shard, uint32_t slot, int grant, char *err, size_t errlen)
{
    struct rb_conn *c = conn(rb, shard, err, errlen);
    return c != NULL ? own(rb, c, slot, grant, err, errlen) : -1;
}

/* A slot not switched goes back to its source (the move revoked it there):
 * retried until it holds or the mover stops (a restart grants it then). */
static void regrant_source(struct rb *rb, const struct rb_move *m)
{
    char err[256];
    while (slot_own(rb, m->from, m->slot, 1, err, sizeof(err)) < 0) {
        rb_error(rb, "slot %u: giving it back to '%s': %s (retrying)", m->slot, rb->names[m->from],
                 err);
        if (flag(rb, &rb->stop_req)) {
            return;
        }
        nap_ms(1000);
    }
}

/* Per shard: the slots to grant, to revoke, and claims to check. */
struct fence_plan {
    uint32_t **grant, **revoke, **check;
    size_t *ngrant, *nrevoke, *ncheck;
};

static void plan_add(uint32_t **lists, size_t *n, size_t shard, uint32_t slot)
{
    lists[shard][n[shard]++] = slot;
}

/* Append "slot S of T on 'X' (the map gives it to 'Y')" to the conflict list. */
static void conflict_add(char *out, size_t outlen, size_t *nconf, uint32_t slot, const char *table,
                         const char *on, const char *owner)
{
    size_t len = strlen(out);
    if (*nconf < 6 && len < outlen) {
        snprintf(out + len, outlen - len, "%sslot %u of %s on '%s' (the map gives it to '%s')",
                 *nconf ? ", " : "", slot, table, on, owner);
    }
    (*nconf)++;
}

/* The claims of shard i that the live table gives another shard: taken from
 * it when it holds no row of the slot in any table of the backend (a
 * left-over claim: its rows went with a dropped table, or the map moved
 * the slot while it held nothing), else a conflict. */
static int check_claims(struct rb *rb, const struct rb_table *t, struct fence_plan *fp, size_t i,
                        unsigned char *held, char *conf, size_t conflen, size_t *nconf, char *err,
                        size_t errlen)
{
    if (fp->ncheck[i] == 0) {
        return 0;
    }
    struct rb_conn *c = conn(rb, (int)i, err, errlen);
    uint32_t *h = NULL;
    size_t nh = 0;
    int rows = c != NULL ? rb->ops->has_rows(c, t->name, err, errlen) : -1; /* 0: no table */
    if (rows < 0 || (rows > 0 && rb_slots_held(rb->ops, c, t, fp->check[i], fp->ncheck[i], &h, &nh,
                                               err, errlen) < 0)) {
        return -1;
    }
    for (size_t j = 0; j < nh; j++) {
        if (h[j] < rt_live_nslots(rb->live)) {
            held[h[j]] = 1;
        }
    }
    free(h);
    for (size_t j = 0; j < fp->ncheck[i]; j++) {
        uint32_t s = fp->check[i][j];
        if (held[s]) {
            conflict_add(conf, conflen, nconf, s, t->name, rb->names[i],
                         rb->names[rt_live_owner(rb->live, s)]);
            held[s] = 0;
        } else {
            plan_add(fp->revoke, fp->nrevoke, i, s);
        }
    }
    return 0;
}

/* Make every shard's ownership table list exactly the slots the live table
 * gives it (at start-up: the map, or a resumed rebalance's owners).  A slot
 * this rebalance moves is set as the state file says (recovery); a claim on
 * any other slot by a shard the map does not give it is dropped only when
 * that shard holds none of its rows (check_claims), else nothing changes
 * and -2 names the slots and shards.  An unreachable shard: -1 naming it. */
static int fence_sync_table(struct rb *rb, const struct rb_table *t, char *err, size_t errlen)
{
    uint32_t nslots = rt_live_nslots(rb->live);
    size_t ns = rb->nshards;
    unsigned char *claim = lb_xcalloc((size_t)nslots * ns + 1, 1); /* [slot * ns + shard] */
    unsigned char *moving = lb_xcalloc((size_t)nslots + 1, 1);
    unsigned char *held = lb_xcalloc((size_t)nslots + 1, 1);
    struct fence_plan fp;
    uint32_t ***lists[] = {&fp.grant, &fp.revoke, &fp.check};
    size_t **counts[] = {&fp.ngrant, &fp.nrevoke, &fp.ncheck};
    for (size_t l = 0; l < 3; l++) {
        *lists[l] = lb_xcalloc(ns + 1, sizeof(uint32_t *));
        *counts[l] = lb_xcalloc(ns + 1, sizeof(size_t));
        for (size_t i = 0; i < ns; i++) {
            (*lists[l])[i] = lb_xcalloc((size_t)nslots + 1, sizeof(uint32_t));
        }
    }
    for (size_t i = 0; i < rb->nmoves; i++) {
        moving[rb->moves[i].slot] = 1;
    }
    /* a shard that cannot be reached is left out (its claims unknown): the
     * others are set all the same, and -1 names it at the end */
    unsigned char *down = lb_xcalloc(ns + 1, 1);
    char derr[256] = "", downerr[256] = "";
    for (size_t i = 0; i < ns; i++) {
        struct rb_conn *c = conn(rb, (int)i, derr, sizeof(derr));
        uint32_t *owned = NULL;
        size_t n = 0;
        down[i] = c == NULL || rb_slots_ensure(rb->ops, c, t, derr, sizeof(derr)) < 0 ||
                  rb_slots_owned(rb->ops, c, t, &owned, &n, derr, sizeof(derr)) < 0;
        if (down[i]) {
            snprintf(downerr, sizeof(downerr), "%s", derr);
        }
        for (size_t j = 0; j < n; j++) {
            if (owned[j] < nslots) {
                claim[(size_t)owned[j] * ns + i] = 1;
            }
        }
        free(owned);
    }
    for (uint32_t s = 0; s < nslots; s++) {
        size_t o = (size_t)rt_live_owner(rb->live, s);
        if (!claim[(size_t)s * ns + o] && !down[o]) {
            plan_add(fp.grant, fp.ngrant, o, s);
        }
        for (size_t i = 0; i < ns; i++) {
            if (i != o && claim[(size_t)s * ns + i]) {
                plan_add(moving[s] ? fp.revoke : fp.check, moving[s] ? fp.nrevoke : fp.ncheck, i,
                         s);
            }
        }
    }
    int rc = 0;
    char conf[400] = "";
    size_t nconf = 0;
    for (size_t i = 0; rc == 0 && i < ns; i++) {
        rc = down[i] ? 0
                     : check_claims(rb, t, &fp, i, held, conf, sizeof(conf), &nconf, err, errlen);
    }
    if (rc == 0 && nconf > 0) {
        snprintf(err, errlen,
                 "the slot ownership of backend '%s' disagrees with its shard map: %zu slot(s) "
                 "owned by a shard that holds their rows but that the map does not give them to: "
                 "%s%s.  Was the map changed without a rebalance?  Restore the map the data "
                 "follows (docs/rebalancing.md)",
                 rb->backend, nconf, conf, nconf > 6 ? ", …" : "");
        rc = -2;
    }
    size_t ngranted = 0, nrevoked = 0;
    for (size_t i = 0; rc == 0 && i < ns; i++) { /* revokes first: never two owners */
        if (down[i]) {
            continue;
        }
        struct rb_conn *c = conn(rb, (int)i, err, errlen);
        rc = c != NULL ? rb_slots_revoke(rb->ops, c, t, fp.revoke[i], fp.nrevoke[i], err, errlen)
                       : -1;
        nrevoked += fp.nrevoke[i];
    }
    for (size_t i = 0; rc == 0 && i < ns; i++) {
        if (down[i]) {
            continue;
        }
        struct rb_conn *c = conn(rb, (int)i, err, errlen);
        rc = c != NULL ? rb_slots_grant(rb->ops, c, t, fp.grant[i], fp.ngrant[i], err, errlen) : -1;
        ngranted += fp.ngrant[i];
    }
    if (rc == 0 && ngranted + nrevoked > 0) {
        lb_info("slot ownership of backend '%s', table %s: %zu slot(s) granted, %zu revoked to "
                "match its map",
                rb->backend, t->name, ngranted, nrevoked);
    }
    if (rc == 0 && downerr[0] != '\0') {
        snprintf(err, errlen, "%s", downerr);
        rc = -1;
    }
    free(down);
    for (size_t l = 0; l < 3; l++) {
        for (size_t i = 0; i < ns; i++) {
            free((*lists[l])[i]);
        }
        free(*lists[l]);
        free(*counts[l]);
    }
    free(claim);
    free(moving);
    free(held);
    return rc;
}

/* fence_sync_table for every sharded table of the backend: -2 (a conflict)
 * before -1 (a shard unreachable) before 0. */
static int fence_sync(struct rb *rb, char *err, size_t errlen)
{
    int rc = 0;
    char terr[512];
    for (size_t k = 0; k < rb->ntables && rc > -2; k++) {
        int r = fence_sync_table(rb, &rb->tables[k], terr, sizeof(terr));
        if (r < rc) {
            rc = r;
            snprintf(err, errlen, "%s", terr);
        }
    }
    return rc;
}

/* ---- state file ---------------------------------------------------------------------- */

static int save_state(struct rb *rb, char *err, size_t errlen)
{
    uint32_t *done = calloc(rb->nmoves + 1, sizeof(*done));
    if (done == NULL) {
        snprintf(err, errlen, "cannot write '%s': out of memory", rb->state_path);
        return -1;
    }
    struct rb_state st = {
        .backend = rb->backend, .from = rb->from_doc, .to = rb->to_doc, .done = done};
    for (size_t i = 0; i < rb->nmoves; i++) {
        if (rb->done[i]) {
            done[st.ndone++] = rb->moves[i].slot;
        }
    }
    pthread_mutex_lock(&g_mu);
    st.rows_moved = rb->rows_moved;
    pthread_mutex_unlock(&g_mu);
    int rc = rb_state_save(rb->state_path, &st, err, errlen);
    free(done);
    return rc;
}

/* ---- one slot ------------------------------------------------------------------------ */

static int wait_epoch(struct rb *rb, int bucket)
{
    while (rt_live_wait_epoch(rb->live, bucket, 1000) < 0) {
        if (flag(rb, &rb->stop_req)) {
            return -1;
        }
    }
    return 0;
}

/* Move one slot.  0 moved; -1 with the slot still owned by its source (its
 * target's rows of it stay excluded until a retry or the abort clean them). */
static int move_slot(struct rb *rb, size_t mi, char *err, size_t errlen)
{
    const struct rb_move *m = &rb->moves[mi];
    const char *an = rb->names[m->from], *bn = rb->names[m->to];
    struct rb_conn *a = conn(rb, m->from, err, errlen);
    if (a == NULL) {
        return -1;
    }
    struct rb_conn *b = conn(rb, m->to, err, errlen);
    if (b == NULL) {
        return -1;
    }
    set_phase(rb, m->slot, "copy");
    int bucket = rt_live_exclude(rb->live, m->to, m->slot);
    if (bucket < 0) {
        snprintf(err, errlen, "too many slots excluded at once");
        return -1;
    }
    if (wait_epoch(rb, bucket) < 0) {
        snprintf(err, errlen, "stopped");
        return -1;
    }
    for (size_t k = 0; k < rb->ntables; k++) {
        struct rb_table *t = &rb->tables[k];
        if (table_cols(rb, t, a, err, errlen) < 0 ||
            delete_slot_rows(rb, t, m->slot, b, err, errlen) < 0 ||
            copy_slot(rb, t, m->slot, a, b, err, errlen) < 0) {
            return -1;
        }
    }
    set_phase(rb, m->slot, "freeze");
    if (rt_live_freeze(rb->live, m->slot, FREEZE_TIMEOUT_MS) < 0) {
        snprintf(err, errlen, "slot %u: writes in flight did not finish within %d ms", m->slot,
                 FREEZE_TIMEOUT_MS);
        return -1;
    }
    /* REVOKE at the source: waits for the fenced writes in flight there (any
     * process's); once it returns, no write of the slot runs on A, so the
     * catch-up below sees A's final rows */
    if (own(rb, a, m->slot, 0, err, errlen) < 0) {
        regrant_source(rb, m); /* the revoke may have committed before the error */
        rt_live_unfreeze(rb->live, m->slot);
        return -1;
    }
    set_phase(rb, m->slot, "catch-up");
    int ok = 1;
    for (size_t k = 0; ok && k < rb->ntables; k++) {
        ok = catch_up(rb, &rb->tables[k], m->slot, a, b, err, errlen) == 0;
    }
    if (ok) {
        set_phase(rb, m->slot, "verify");
    }
    for (size_t k = 0; ok && k < rb->ntables; k++) {
        ok = verify(rb, &rb->tables[k], m->slot, a, b, an, bn, err, errlen) == 0;
    }
    if (ok) { /* GRANT at the target, before the switch lets anyone write there */
        set_phase(rb, m->slot, "switch");
        ok = own(rb, b, m->slot, 1, err, errlen) == 0;
    }
    if (ok) {
        rb->done[mi] = 1;
        ok = save_state(rb, err, errlen) == 0; /* durable before anyone writes to the target */
        rb->done[mi] = ok;
    }
    if (!ok) { /* not switched: A owns the slot again, B not */
        char rerr[256];
        if (slot_own(rb, m->to, m->slot, 0, rerr, sizeof(rerr)) < 0) {
            rb_error(rb, "slot %u: %s", m->slot, rerr); /* a restart revokes it */
        }
        regrant_source(rb, m);
        rt_live_unfreeze(rb->live, m->slot);
        return -1;
    }
    bucket = rt_live_switch(rb->live, m->slot, m->from, m->to);
    pthread_mutex_lock(&g_mu);
    rb->slots_done++;
    pthread_mutex_unlock(&g_mu);
    set_phase(rb, m->slot, "cleanup");
    if (wait_epoch(rb, bucket) < 0) {
        return 0; /* stopping: a restart deletes the source rows */
    }
    for (;;) {
        ok = 1;
        a = conn(rb, m->from, err, errlen);
        for (size_t k = 0; a != NULL && k < rb->ntables; k++) {
            if (delete_slot_rows(rb, &rb->tables[k], m->slot, a, err, errlen) < 0) {
                ok = 0;
                break;
            }
        }
        if (a != NULL && ok) {
            break;
        }
        rb_error(rb, "slot %u: deleting the source rows: %s (retrying)", m->slot, err);
        if (flag(rb, &rb->stop_req)) {
            return 0;
        }
        nap_ms(1000);
    }
    rt_live_unexclude(rb->live, m->from, m->slot);
    return 0;
}

/* Abort: the failed slot's partial copy must go before its exclusion does. */
static void rollback_slot(struct rb *rb, size_t mi)
{
    const struct rb_move *m = &rb->moves[mi];
    char err[256];
    while (!flag(rb, &rb->stop_req)) {
        struct rb_conn *b = conn(rb, m->to, err, sizeof(err));
        int ok = b != NULL;
        for (size_t k = 0; ok && k < rb->ntables; k++) {
            ok = delete_slot_rows(rb, &rb->tables[k], m->slot, b, err, sizeof(err)) == 0;
        }
        ok = ok && slot_own(rb, m->to, m->slot, 0, err, sizeof(err)) == 0 &&
             slot_own(rb, m->from, m->slot, 1, err, sizeof(err)) == 0;
        if (ok) {
            rt_live_unexclude(rb->live, m->to, m->slot);
            return;
        }
        rb_error(rb, "slot %u: rolling back the copy: %s (retrying)", m->slot, err);
        nap_ms(1000);
    }
}

/* The map after an abort: the union's shards, version = the target's, and
 * overrides pinning each slot whose owner now differs from the one the ring
 * of those shards gives (as ranges of one owner; a range may span slots the
 * ring already gives that owner).  Adding a shard, that is the slots not
 * moved yet; removing one, the slots moved so far.  *npinned: slots pinned. */
static struct json_object *materialized_doc(struct rb *rb, int use_ring, size_t *npinned)
{
    struct json_object *doc = json_object_new_object();
    json_object_object_add(doc, "version", json_object_new_int64(rb->to_version));
    json_object_object_add(doc, "slots", json_object_new_int64(rt_live_nslots(rb->live)));
    json_object_object_add(doc, "vnodes",
                           json_object_get(json_object_object_get(rb->to_doc, "vnodes")));
    json_object_object_add(doc, "shards",
                           json_object_get(json_object_object_get(rb->union_doc, "shards")));
    char merr[256];
    struct rt_shardmap *ring = use_ring ? rt_shardmap_from_json(doc, merr, sizeof(merr)) : NULL;
    uint32_t n = rt_live_nslots(rb->live);
    struct json_object *ov = json_object_new_object();
    *npinned = 0;
    for (uint32_t s = 0; s < n;) {
        int o = rt_live_owner(rb->live, s);
        if (ring != NULL && rt_shardmap_slot_owner(ring, s) == o) {
            s++;
            continue;
        }
        uint32_t e = s, last = s; /* last: the last slot of the run the ring gives elsewhere */
        while (e + 1 < n && rt_live_owner(rb->live, e + 1) == o) {
            e++;
            if (ring == NULL || rt_shardmap_slot_owner(ring, e) != o) {
                last = e;
            }
        }
        char range[32];
        snprintf(range, sizeof(range), s == last ? "%u" : "%u-%u", s, last);
        json_object_object_add(ov, range, json_object_new_string(rb->names[o]));
        for (uint32_t k = s; k <= last; k++) {
            *npinned += ring == NULL || rt_shardmap_slot_owner(ring, k) != o;
        }
        s = last + 1;
    }
    rt_shardmap_unref(ring);
    json_object_object_add(doc, "overrides", ov);
    return doc;
}

/* 1 when the map document gives every slot the owner it has now. */
static int owners_match(struct rb *rb, struct json_object *doc)
{
    char merr[256];
    struct rt_shardmap *m = rt_shardmap_from_json(doc, merr, sizeof(merr));
    int ok = m != NULL && rt_shardmap_nslots(m) == rt_live_nslots(rb->live);
    for (uint32_t s = 0; ok && s < rt_live_nslots(rb->live); s++) {
        int o = rt_live_owner(rb->live, s);
        ok = strcmp(rt_shardmap_shard_name(m, (size_t)rt_shardmap_slot_owner(m, s)),
                    rb->names[o]) == 0;
    }
    rt_shardmap_unref(m);
    return ok;
}

/* The final map file: readable YAML, a header saying what happened, the
 * previous file kept as <map>.prev. */
static int write_final_map(struct rb *rb, int aborted, char *err, size_t errlen)
{
    char when[32] = "?";
    time_t t = time(NULL);
    struct tm tm;
    if (gmtime_r(&t, &tm) != NULL) {
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    pthread_mutex_lock(&g_mu);
    size_t done = rb->slots_done;
    pthread_mutex_unlock(&g_mu);
    const char *base = strrchr(rb->map_path, '/');
    base = base != NULL ? base + 1 : rb->map_path;
    size_t npinned = 0;
    struct json_object *final = NULL;
    if (aborted) {
        final = materialized_doc(rb, 1, &npinned);
        if (!owners_match(rb, final)) { /* never expected: pin every slot instead */
            lb_warn("rebalance of '%s': the ring-relative map does not match the owners; "
                    "pinning every slot",
                    rb->backend);
            json_object_put(final);
            final = materialized_doc(rb, 0, &npinned);
        }
    } else {
        final = json_object_get(rb->to_doc);
    }
    char *head = NULL;
    int hl;
    if (aborted) {
        hl = asprintf(&head,
                      "Written by polygate at %s: the rebalance of backend '%s'\n"
                      "from map version %" PRId64 " to %" PRId64
                      " was ABORTED after %zu of %zu slot move(s).\n"
                      "The slots moved stay on their new shard, the others where they were:\n"
                      "the shards are both maps' shards, and the overrides pin the %zu slot(s)\n"
                      "whose owner differs from what the ring of these shards gives.  Apply\n"
                      "the intended map again (with a higher version) to move the rest\n"
                      "(docs/rebalancing.md).  This file before the rebalance: %s.prev",
                      when, rb->backend, rb->from_version, rb->to_version, done, rb->nmoves,
                      npinned, base);
    } else {
        hl = asprintf(&head,
                      "Written by polygate at %s: the rebalance of backend '%s'\n"
                      "from map version %" PRId64 " to %" PRId64 " is done (%zu slot move(s)).\n"
                      "This file before the rebalance: %s.prev",
                      when, rb->backend, rb->from_version, rb->to_version, rb->nmoves, base);
    }
    int rc = -1;
    if (hl < 0) {
        snprintf(err, errlen, "cannot write '%s': out of memory", rb->map_path);
    } else {
        rc = rb_mapfile_replace(rb->map_path, final, head, err, errlen);
        free(head);
    }
    json_object_put(final);
    return rc;
}

static const struct cf_backend *backend_of(const struct cf_config *cf, const char *name);

static void *mover_main(void *arg)
{
    struct rb *rb = arg;
    char err[512];
    size_t failed_at = (size_t)-1;
    lb_info("rebalance of '%s': %zu of %zu slot(s) to move (map version %" PRId64 " → %" PRId64 ")",
            rb->backend, rb->nmoves - rb->done_at_start, rb->nmoves, rb->from_version,
            rb->to_version);
    /* requests routed by the old map carry no ticket: wait until every
     * worker runs on the live table and those requests have finished */
    set_phase(rb, -1, "waiting for workers");
    while (!flag(rb, &rb->stop_req) && rt_live_ndrained(rb->live) < rb->nworkers) {
        nap_ms(2);
    }
    for (size_t i = 0; i < rb->nmoves; i++) {
        if (rb->done[i]) {
            continue;
        }
        wait_paused(rb, -1, NULL);
        if (flag(rb, &rb->stop_req) || flag(rb, &rb->abort_req)) {
            break;
        }
        if (move_slot(rb, i, err, sizeof(err)) < 0) {
            if (flag(rb, &rb->stop_req) || flag(rb, &rb->abort_req)) {
                failed_at = i;
                break;
            }
            rb_error(rb, "slot %u ('%s' → '%s'): %s; retrying", rb->moves[i].slot,
                     rb->names[rb->moves[i].from], rb->names[rb->moves[i].to], err);
            failed_at = i;
            nap_ms(1000);
            i--; /* the same slot again */
            continue;
        }
        failed_at = (size_t)-1;
    }
    if (flag(rb, &rb->stop_req)) {
        pthread_mutex_lock(&g_mu);
        rb->state = "stopped";
        rb->finished = 1;
        pthread_mutex_unlock(&g_mu);
        lb_info("rebalance of '%s' stopped; a restart resumes it", rb->backend);
        return NULL;
    }
    int aborted = flag(rb, &rb->abort_req);
    if (aborted && failed_at != (size_t)-1) {
        rollback_slot(rb, failed_at);
    }
    set_phase(rb, -1, "finishing");
    int rc;
    while ((rc = write_final_map(rb, aborted, err, sizeof(err))) < 0 && !flag(rb, &rb->stop_req)) {
        rb_error(rb, "writing the final map: %s (retrying)", err);
        nap_ms(1000);
    }
    if (rc == 0) {
        unlink(rb->state_path);
    }
    pthread_mutex_lock(&g_mu);
    rb->state = rc < 0 ? "stopped" : aborted ? "aborted" : "done";
    rb->phase = NULL;
    rb->finished = 1;
    pthread_mutex_unlock(&g_mu);
    lb_info("rebalance of '%s' %s: %zu of %zu slot(s) moved", rb->backend,
            aborted ? "aborted" : "done", rb->slots_done, rb->nmoves);
    if (rc == 0) {
        rb->cb(rb->cb_arg);
    }
    return NULL;
}

/* ---- set-up ------------------------------------------------------------------------ */

static const struct cf_backend *backend_of(const struct cf_config *cf, const char *name)
{
    for (size_t i = 0; i < cf->nbackends; i++) {
        if (strcmp(cf->backends[i].name, name) == 0) {
            return &cf->backends[i];
        }
    }
    return NULL;
}

static int union_index(struct rb *rb, const char *name)
{
    for (size_t i = 0; i < rb->nshards; i++) {
        if (strcmp(rb->names[i], name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* Build the rebalance from the two map documents; done[0..ndone): slots
 * already moved (a resumed one). */
static struct rb *rb_build(const struct cf_config *cf, const char *backend,
                           struct json_object *from_doc, struct json_object *to_doc,
                           const uint32_t *done, size_t ndone, char *err, size_t errlen)
{
    const struct cf_backend *be = backend_of(cf, backend);
    if (be == NULL || be->shard_map_path == NULL) {
        snprintf(err, errlen, "backend '%s' has no shard_map file", backend);
        return NULL;
    }
    const struct rb_mover_ops *ops = rb_mover_for(be->type);
    if (ops == NULL) {
        snprintf(err, errlen,
                 "backend '%s' (type %s) cannot be rebalanced online (available for: %s)", backend,
                 be->type, RB_MOVER_TYPES);
        return NULL;
    }
    char merr[256];
    struct rt_shardmap *from = rt_shardmap_from_json(from_doc, merr, sizeof(merr));
    struct rt_shardmap *to =
        from != NULL ? rt_shardmap_from_json(to_doc, merr, sizeof(merr)) : NULL;
    if (to == NULL) {
        rt_shardmap_unref(from);
        snprintf(err, errlen, "backend '%s': %s", backend, merr);
        return NULL;
    }
    struct rb *rb = lb_xcalloc(1, sizeof(*rb));
    rb->ops = ops;
    rb->backend = lb_xstrdup(backend);
    rb->map_path = lb_xstrdup(be->shard_map_path);
    rb->state_path = rb_state_path(be->shard_map_path);
    rb->from_doc = json_object_get(from_doc);
    rb->to_doc = json_object_get(to_doc);
    rb->from_version = rt_shardmap_version(from);
    rb->to_version = rt_shardmap_version(to);
    /* the union: the old shards in order, then the new ones */
    size_t nf = rt_shardmap_nshards(from), nt = rt_shardmap_nshards(to);
    rb->names = lb_xcalloc(nf + nt, sizeof(char *));
    rb->dsns = lb_xcalloc(nf + nt, sizeof(char *));
    struct json_object *ushards = json_object_new_array();
    for (size_t pass = 0; pass < 2; pass++) {
        const struct rt_shardmap *m = pass == 0 ? from : to;
        for (size_t i = 0; i < rt_shardmap_nshards(m); i++) {
            const char *name = rt_shardmap_shard_name(m, i);
            if (union_index(rb, name) >= 0) {
                continue;
            }
            rb->names[rb->nshards] = lb_xstrdup(name);
            rb->dsns[rb->nshards] = lb_xstrdup(rt_shardmap_shard_dsn(m, i));
            rb->nshards++;
            struct json_object *so = json_object_new_object();
            json_object_object_add(so, "name", json_object_new_string(name));
            json_object_object_add(so, "dsn", json_object_new_string(rt_shardmap_shard_dsn(m, i)));
            json_object_object_add(so, "weight",
                                   json_object_new_int64(rt_shardmap_shard_weight(m, i)));
            json_object_array_add(ushards, so);
        }
    }
    rb->conns = lb_xcalloc(rb->nshards, sizeof(*rb->conns));
    /* the union document: the old map with every shard listed (its slot
     * table is never used: routing reads the live table) */
    rb->union_doc = json_object_new_object();
    json_object_object_foreach(from_doc, fkey, fval)
    {
        json_object_object_add(rb->union_doc, fkey, json_object_get(fval));
    }
    json_object_object_add(rb->union_doc, "shards", ushards);
    /* moves and owners */
    struct rt_slot_move *mv = NULL;
    size_t nmv = 0;
    if (rt_shardmap_diff(from, to, &mv, &nmv, merr, sizeof(merr)) < 0) {
        snprintf(err, errlen, "backend '%s': %s", backend, merr);
        rt_shardmap_unref(from);
        rt_shardmap_unref(to);
        rb_free(rb);
        return NULL;
    }
    rb->moves = lb_xcalloc(nmv + 1, sizeof(*rb->moves));
    rb->done = lb_xcalloc(nmv + 1, 1);
    rb->nmoves = nmv;
    uint32_t nslots = rt_shardmap_nslots(from);
    int32_t *owner = lb_xcalloc(nslots, sizeof(*owner));
    for (uint32_t s = 0; s < nslots; s++) {
        owner[s] =
            union_index(rb, rt_shardmap_shard_name(from, (size_t)rt_shardmap_slot_owner(from, s)));
    }
    for (size_t i = 0; i < nmv; i++) {
        rb->moves[i].slot = mv[i].slot;
        rb->moves[i].from = union_index(rb, mv[i].from);
        rb->moves[i].to = union_index(rb, mv[i].to);
        for (size_t k = 0; k < ndone; k++) {
            if (done[k] == mv[i].slot) {
                rb->done[i] = 1;
                owner[mv[i].slot] = rb->moves[i].to;
                rb->done_at_start++;
            }
        }
    }
    free(mv);
    rb->live = rt_live_new(nslots, owner);
    free(owner);
    rt_shardmap_unref(from);
    rt_shardmap_unref(to);
    /* the tables: every sharded domain on the backend */
    for (size_t i = 0; i < cf->ndomains; i++) {
        const struct cf_domain *d = &cf->domains[i];
        rb->ntables += strcmp(d->backend_name, backend) == 0 && d->shard_key != NULL;
    }
    rb->tables = lb_xcalloc(rb->ntables + 1, sizeof(*rb->tables));
    for (size_t i = 0, k = 0; i < cf->ndomains; i++) {
        const struct cf_domain *d = &cf->domains[i];
        if (strcmp(d->backend_name, backend) != 0 || d->shard_key == NULL) {
            continue;
        }
        struct rb_table *t = &rb->tables[k++];
        t->name = lb_xstrdup(d->table);
        t->key = lb_xstrdup(d->key);
        struct sql_stmt st;
        sql_stmt_init(&st, ops->dialect);
        if (sql_build_migrate(&st, d, merr, sizeof(merr)) == 0) {
            t->ddl = lb_xstrdup(st.text);
        }
        sql_stmt_free(&st);
    }
    rb->state = "running";
    rb->throttle = DEFAULT_THROTTLE;
    rb->slots_done = rb->done_at_start;
    rb->current_slot = -1;
    rb->started_ms = now_ms();
    rb->tokens_at = now_ms();
    return rb;
}

/* The tables exist on every shard (the mover writes before any worker has
 * migrated a new shard). */
static int ensure_tables(struct rb *rb, char *err, size_t errlen)
{
    for (size_t s = 0; s < rb->nshards; s++) {
        struct rb_conn *c = conn(rb, (int)s, err, errlen);
        if (c == NULL) {
            return -1;
        }
        for (size_t k = 0; k < rb->ntables; k++) {
            if ((rb->tables[k].ddl != NULL &&
                 rb->ops->exec_ddl(c, rb->tables[k].ddl, err, errlen) < 0) ||
                rb_slots_ensure(rb->ops, c, &rb->tables[k], err, errlen) < 0) {
                return -1;
            }
        }
    }
    return 0;
}

static struct cf_config *union_config(struct rb *rb, const char *cfg_path, char *err, size_t errlen)
{
    struct cf_config *cf =
        cf_config_load_with_map(cfg_path, rb->backend, rb->union_doc, err, errlen);
    if (cf == NULL) {
        return NULL;
    }
    struct cf_backend *be = NULL;
    for (size_t i = 0; i < cf->nbackends; i++) {
        if (strcmp(cf->backends[i].name, rb->backend) == 0) {
            be = &cf->backends[i];
        }
    }
    if (be == NULL || be->nshards != rb->nshards) {
        snprintf(err, errlen, "backend '%s' changed in the config file", rb->backend);
        cf_config_unref(cf);
        return NULL;
    }
    be->live = rt_live_ref(rb->live);
    return cf;
}

static int start(struct rb *rb, rb_rebalance_done_cb done, void *arg, char *err, size_t errlen)
{
    rb->cb = done;
    rb->cb_arg = arg;
    if (pthread_create(&rb->thread, NULL, mover_main, rb) != 0) {
        snprintf(err, errlen, "cannot start the mover thread: %s", strerror(errno));
        return -1;
    }
    rb->thread_started = 1;
    pthread_mutex_lock(&g_mu);
    struct rb *old = cur;
    cur = rb;
    pthread_mutex_unlock(&g_mu);
    rb_free(old);
    return 0;
}

struct cf_config *rb_rebalance_begin(const char *cfg_path, const struct cf_config *active,
                                     const struct cf_config *next, const char *backend,
                                     int nworkers, rb_rebalance_done_cb done, void *arg,
                                     struct md_error *e)
{
    char err[512];
    const struct cf_backend *ob = backend_of(active, backend), *nb = backend_of(next, backend);
    if (rb_rebalance_active()) {
        md_error_set(e, MD_E_CONFLICT, NULL, "a rebalance is already running");
        return NULL;
    }
    struct json_object *from_doc = rb_mapfile_doc(ob->map), *to_doc = rb_mapfile_doc(nb->map);
    struct rb *rb = rb_build(active, backend, from_doc, to_doc, NULL, 0, err, sizeof(err));
    json_object_put(from_doc);
    json_object_put(to_doc);
    if (rb == NULL) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "%s", err);
        return NULL;
    }
    /* a shard the map adds must not hold rows already: they would show */
    for (size_t s = 0; s < rb->nshards; s++) {
        if (rt_shardmap_shard_index(ob->map, rb->names[s]) >= 0) {
            continue;
        }
        struct rb_conn *c = conn(rb, (int)s, err, sizeof(err));
        for (size_t k = 0; c != NULL && k < rb->ntables; k++) {
            int rows = rb->ops->has_rows(c, rb->tables[k].name, err, sizeof(err));
            if (rows < 0) {
                c = NULL; /* err names the shard */
            } else if (rows > 0) {
                md_error_set(e, MD_E_CONFLICT, "shards",
                             "shard '%s' is new to the map but its table '%s' already holds "
                             "rows; empty it first",
                             rb->names[s], rb->tables[k].name);
                e->shard = NULL;
                rb_free(rb);
                return NULL;
            }
        }
        if (c == NULL) {
            md_error_set(e, MD_E_UNAVAILABLE, "dsn", "%s", err);
            rb_free(rb);
            return NULL;
        }
    }
    struct cf_config *cf = union_config(rb, cfg_path, err, sizeof(err));
    if (cf == NULL || ensure_tables(rb, err, sizeof(err)) < 0 ||
        save_state(rb, err, sizeof(err)) < 0) {
        md_error_set(e, MD_E_UNAVAILABLE, NULL, "rebalance not started: %s", err);
        cf_config_unref(cf);
        rb_free(rb);
        return NULL;
    }
    rb->nworkers = nworkers;
    if (start(rb, done, arg, err, sizeof(err)) < 0) {
        unlink(rb->state_path);
        md_error_set(e, MD_E_INTERNAL, NULL, "%s", err);
        cf_config_unref(cf);
        rb_free(rb);
        return NULL;
    }
    return cf;
}

/* Start-up clean-up of a resumed rebalance: the target rows of slots not
 * switched (a partial copy), the source rows of slots switched (maybe not yet
 * deleted).  One DELETE per (shard, table). */
static int recover_cleanup(struct rb *rb, char *err, size_t errlen)
{
    uint32_t *slots = calloc(rb->nmoves + 1, sizeof(*slots));
    if (slots == NULL) {
        snprintf(err, errlen, "out of memory listing the slots to clean up");
        return -1;
    }
    int rc = 0;
    for (size_t s = 0; rc == 0 && s < rb->nshards; s++) {
        size_t n = 0;
        for (size_t i = 0; i < rb->nmoves; i++) {
            const struct rb_move *m = &rb->moves[i];
            if ((!rb->done[i] && m->to == (int)s) || (rb->done[i] && m->from == (int)s)) {
                slots[n++] = m->slot;
            }
        }
        if (n == 0) {
            continue;
        }
        struct rb_conn *c = conn(rb, (int)s, err, errlen);
        rc = c != NULL ? 0 : -1;
        for (size_t k = 0; rc == 0 && k < rb->ntables; k++) {
            rc = rb->ops->delete_slots(c, &rb->tables[k], slots, n, err, errlen);
        }
    }
    free(slots);
    return rc;
}

/* The ownership tables of one backend agree with its map (fence_sync);
 * 0 when it has no fenced domain.  A shard that cannot be reached is left as
 * it is (warned: its writes answer what its table says until the next sync);
 * a conflict is -1 with err. */
static int fence_backend(const struct cf_config *cf, const struct cf_backend *be, char *err,
                         size_t errlen)
{
    if (be->shard_map_path == NULL || be->map == NULL || be->live != NULL ||
        rb_mover_for(be->type) == NULL) {
        return 0;
    }
    struct json_object *doc = rb_mapfile_doc(be->map);
    char berr[512];
    struct rb *rb = rb_build(cf, be->name, doc, doc, NULL, 0, berr, sizeof(berr));
    json_object_put(doc);
    if (rb == NULL) {
        snprintf(err, errlen, "%s", berr);
        return -1;
    }
    int rc = rb->ntables > 0 ? fence_sync(rb, berr, sizeof(berr)) : 0;
    if (rc < 0) {
        if (rc == -2) {
            snprintf(err, errlen, "%s", berr);
            rc = -1;
        } else {
            rc = 0;
            lb_warn("slot ownership of backend '%s' not checked: %s (its writes follow what "
                    "each shard's table lists until the next start or map change)",
                    be->name, berr);
        }
    }
    rb_free(rb);
    return rc;
}

void rb_rebalance_fence(const struct cf_config *cf)
{
    char err[512];
    for (size_t i = 0; i < cf->nbackends; i++) {
        if (fence_backend(cf, &cf->backends[i], err, sizeof(err)) < 0) {
            lb_error("%s (left as they are: writes of those slots answer slot_moved)", err);
        }
    }
}

struct cf_config *rb_rebalance_recover(const char *cfg_path, struct cf_config *cf, int nworkers,
                                       rb_rebalance_done_cb done, void *arg, char *err,
                                       size_t errlen)
{
    for (size_t i = 0; i < cf->nbackends; i++) { /* the backends without a rebalance to resume */
        const struct cf_backend *be = &cf->backends[i];
        char *path = be->shard_map_path != NULL ? rb_state_path(be->shard_map_path) : NULL;
        int resume = path != NULL && access(path, F_OK) == 0;
        free(path);
        if (!resume && fence_backend(cf, be, err, errlen) < 0) {
            cf_config_unref(cf);
            return NULL;
        }
    }
    for (size_t i = 0; i < cf->nbackends; i++) {
        const struct cf_backend *be = &cf->backends[i];
        if (be->shard_map_path == NULL) {
            continue;
        }
        char *path = rb_state_path(be->shard_map_path);
        struct rb_state st;
        char lerr[400];
        int found = rb_state_load(path, &st, err, errlen);
        if (found < 0) {
            free(path);
            cf_config_unref(cf);
            return NULL;
        }
        if (found == 0) {
            free(path);
            continue;
        }
        struct rb *rb =
            rb_build(cf, be->name, st.from, st.to, st.done, st.ndone, lerr, sizeof(lerr));
        if (rb != NULL) {
            rb->nworkers = nworkers;
            rb->rows_moved = rb->rows_at_start = st.rows_moved;
        }
        rb_state_clear(&st);
        if (rb == NULL) {
            snprintf(err, errlen, "rebalance state '%s': %s", path, lerr);
            free(path);
            cf_config_unref(cf);
            return NULL;
        }
        free(path);
        lb_info("resuming the rebalance of '%s' (version %" PRId64 " → %" PRId64
                "): %zu of %zu slot(s) were moved",
                rb->backend, rb->from_version, rb->to_version, rb->done_at_start, rb->nmoves);
        struct cf_config *ncf = union_config(rb, cfg_path, lerr, sizeof(lerr));
        if (ncf == NULL || ensure_tables(rb, lerr, sizeof(lerr)) < 0 ||
            fence_sync(rb, lerr, sizeof(lerr)) < 0 || recover_cleanup(rb, lerr, sizeof(lerr)) < 0 ||
            start(rb, done, arg, lerr, sizeof(lerr)) < 0) {
            snprintf(err, errlen, "resuming the rebalance of '%s': %s", rb->backend, lerr);
            cf_config_unref(ncf);
            cf_config_unref(cf);
            rb_free(rb);
            return NULL;
        }
        cf_config_unref(cf);
        return ncf; /* one rebalance at a time */
    }
    return cf;
}

int rb_rebalance_active(void)
{
    pthread_mutex_lock(&g_mu);
    int a = cur != NULL && !cur->finished;
    pthread_mutex_unlock(&g_mu);
    return a;
}

struct cf_config *rb_rebalance_reload(const char *cfg_path, char *err, size_t errlen)
{
    return union_config(cur, cfg_path, err, errlen);
}

struct cf_config *rb_rebalance_finish(const char *cfg_path, char *err, size_t errlen)
{
    if (cur != NULL && cur->thread_started) {
        pthread_join(cur->thread, NULL);
        cur->thread_started = 0;
    }
    return cf_config_load(cfg_path, err, errlen);
}

void rb_rebalance_shutdown(void)
{
    pthread_mutex_lock(&g_mu);
    struct rb *rb = cur;
    cur = NULL;
    if (rb != NULL) {
        rb->stop_req = 1;
    }
    pthread_mutex_unlock(&g_mu);
    if (rb != NULL && rb->thread_started) {
        pthread_join(rb->thread, NULL);
    }
    rb_free(rb);
}

/* ---- status and control -------------------------------------------------------------- */

static struct json_object *status_locked(const struct rb *rb)
{
    struct json_object *o = json_object_new_object();
    const char *state = rb->state;
    if (!rb->finished && rb->pause_req) {
        state = "paused";
    }
    json_object_object_add(o, "state", json_object_new_string(state));
    json_object_object_add(o, "backend", json_object_new_string(rb->backend));
    json_object_object_add(o, "from_version", json_object_new_int64(rb->from_version));
    json_object_object_add(o, "to_version", json_object_new_int64(rb->to_version));
    json_object_object_add(o, "slots_total", json_object_new_int64((int64_t)rb->nmoves));
    json_object_object_add(o, "slots_done", json_object_new_int64((int64_t)rb->slots_done));
    json_object_object_add(o, "rows_moved", json_object_new_int64((int64_t)rb->rows_moved));
    double secs = (double)(now_ms() - rb->started_ms) / 1000.0;
    double rate = secs > 0 ? (double)(rb->rows_moved - rb->rows_at_start) / secs : 0;
    json_object_object_add(o, "rate_rows_per_s", json_object_new_double((double)(int64_t)rate));
    size_t run_done = rb->slots_done - rb->done_at_start;
    if (!rb->finished && run_done > 0) {
        double eta = secs / (double)run_done * (double)(rb->nmoves - rb->slots_done);
        json_object_object_add(o, "eta_s", json_object_new_int64((int64_t)(eta + 0.5)));
    } else {
        json_object_object_add(o, "eta_s", rb->finished ? json_object_new_int64(0) : NULL);
    }
    json_object_object_add(o, "current_slot",
                           rb->current_slot >= 0 ? json_object_new_int64(rb->current_slot) : NULL);
    json_object_object_add(o, "phase",
                           rb->phase != NULL ? json_object_new_string(rb->phase) : NULL);
    json_object_object_add(o, "throttle_rows_per_s", json_object_new_int64(rb->throttle));
    struct json_object *errs = json_object_new_array();
    unsigned first = rb->nerrors > NERRORS ? rb->nerrors - NERRORS : 0;
    for (unsigned i = first; i < rb->nerrors; i++) {
        json_object_array_add(errs, json_object_new_string(rb->errors[i % NERRORS]));
    }
    json_object_object_add(o, "errors", errs);
    json_object_object_add(o, "error_count", json_object_new_int64(rb->nerrors));
    return o;
}

struct json_object *rb_rebalance_status(void)
{
    pthread_mutex_lock(&g_mu);
    struct json_object *o = NULL;
    if (cur != NULL) {
        o = status_locked(cur);
    } else {
        o = json_object_new_object();
        json_object_object_add(o, "state", json_object_new_string("idle"));
    }
    pthread_mutex_unlock(&g_mu);
    return o;
}

struct json_object *rb_rebalance_status_of(const char *backend)
{
    pthread_mutex_lock(&g_mu);
    struct json_object *o = NULL;
    if (cur != NULL && !cur->finished && strcmp(cur->backend, backend) == 0) {
        o = status_locked(cur);
    }
    pthread_mutex_unlock(&g_mu);
    return o;
}

int rb_rebalance_control(const char *action, struct json_object *body, struct md_error *e)
{
    pthread_mutex_lock(&g_mu);
    struct rb *rb = cur != NULL && !cur->finished ? cur : NULL;
    int rc = 0;
    if (strcmp(action, "throttle") == 0) {
        struct json_object *v = NULL;
        if (!json_object_is_type(body, json_type_object) ||
            !json_object_object_get_ex(body, "throttle_rows_per_s", &v) ||
            !json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0) {
            md_error_set(e, MD_E_BAD_REQUEST, "throttle_rows_per_s",
                         "give {\"throttle_rows_per_s\": n} with n >= 0 (0: no limit)");
            rc = -1;
        } else if (rb == NULL) {
            md_error_set(e, MD_E_CONFLICT, NULL, "no rebalance is running");
            rc = -1;
        } else {
            rb->throttle = json_object_get_int64(v);
        }
    } else if (rb == NULL) {
        md_error_set(e, MD_E_CONFLICT, NULL, "no rebalance is running");
        rc = -1;
    } else if (strcmp(action, "pause") == 0) {
        rb->pause_req = 1;
    } else if (strcmp(action, "resume") == 0) {
        rb->pause_req = 0;
    } else if (strcmp(action, "abort") == 0) {
        rb->abort_req = 1;
    } else {
        md_error_set(e, MD_E_NOT_FOUND, NULL, "no rebalance action '%.32s' (pause, resume, abort)",
                     action);
        rc = -1;
    }
    pthread_mutex_unlock(&g_mu);
    return rc;
}
