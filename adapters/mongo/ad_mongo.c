/*
 * ad_mongo.c — MongoDB adapter: mongo-c-driver calls on a thread pool.
 *
 * Threading: everything json-c (request bodies, results) is touched on the
 * loop thread only.  submit() translates the request into BSON (filter and
 * document/update) and queues a call; a pool thread runs the driver calls
 * with a client popped from the shard's mongoc_client_pool_t and leaves a
 * BSON result in the call; done() converts it back to JSON on the loop and
 * calls the gateway's callback.  Config strings the call points to stay
 * valid: the gateway holds a config reference until the completion.
 *
 * Operations (one document per item, `version` managed here):
 *   GET     find {key}
 *   INSERT  insertOne {…item, version: 1}; duplicate key → 409
 *   PUT     findAndModify {key[, version]} {$set, $unset (fields absent from
 *           the item), $inc {version: 1}}, upsert unless If-Match; created
 *           when the reply says no existing document was updated → 201
 *   PATCH   findAndModify {key[, version][, guard]} {$set, $unset,
 *           $inc {…, version: 1}}: atomic; the guard (`where`) is part of the
 *           filter.  No match → one more read tells 404 / 412 / 409 apart;
 *           a refused $inc → one more read tells whether a sum leaves the
 *           int64 range (409 naming the field).
 *   DELETE  deleteOne {key[, version]}
 *   QUERY, AGGREGATE  the parsed md_query → finds / pipelines (mg_query.c)
 *   PING    {ping: 1}
 *
 * Injection: every key of a stored object is checked at any depth — a name
 * starting with '$', containing '.', or empty (json-c cuts a key at a NUL,
 * so "\u0000…" arrives empty) is a 400; the filter and the update are built
 * here from schema fields and an allow-list of operators only (JSON ↔ BSON
 * in mg_bson.c).
 */
#include "adapters/mongo/ad_mongo.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mongoc/mongoc.h>

#include "adapters/mongo/mg_bson.h"
#include "adapters/mongo/mg_query.h"
#include "config/cf_config.h"
#include "lib/lb_json.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "lib/lb_workq.h"
#include "model/md_item.h"
#include "model/md_query.h"

/* ---- driver-wide set-up ------------------------------------------------------ */

static void log_handler(mongoc_log_level_t level, const char *domain, const char *message, void *ud)
{
    (void)ud;
    switch (level) {
    case MONGOC_LOG_LEVEL_ERROR:
    case MONGOC_LOG_LEVEL_CRITICAL:
        lb_error("mongo driver [%s]: %s", domain, message);
        break;
    case MONGOC_LOG_LEVEL_WARNING:
        if (strstr(message, "endSessions") != NULL) { /* FerretDB 1.x has no sessions */
            lb_debug("mongo driver [%s]: %s", domain, message);
            break;
        }
        lb_warn("mongo driver [%s]: %s", domain, message);
        break;
    default:
        lb_debug("mongo driver [%s]: %s", domain, message);
        break;
    }
}

static void driver_cleanup(void)
{
    mongoc_cleanup(); /* at exit, after every worker freed its clients */
}

static void driver_init(void)
{
    mongoc_log_set_handler(log_handler, NULL);
    mongoc_init();
    atexit(driver_cleanup);
}

static pthread_once_t driver_once = PTHREAD_ONCE_INIT;

/* On FerretDB, writes to one document are serialised inside the process
 * (striped by a hash of database, collection and key).  FerretDB 1.x (the
 * local stack's server) applies findAndModify/updateOne as an unisolated
 * read-modify-write: 50 concurrent guarded decrements of a stock of 20 all
 * "succeed" there, and even a version compare-and-set loses updates.  The
 * stripes are process-wide, not per adapter state: every worker has its own
 * state and client pool, and the writes to serialise come from all of them.
 * They do not protect against other processes writing to FerretDB.
 * MongoDB itself is atomic per document, so a shard whose server is known to
 * be MongoDB (server_kind) takes no lock. */
#define KEY_LOCKS 256
static pthread_mutex_t key_locks[KEY_LOCKS] = {[0 ... KEY_LOCKS - 1] = PTHREAD_MUTEX_INITIALIZER};

/* ---- state ------------------------------------------------------------------------ */

enum mg_server { MG_SERVER_UNKNOWN = 0, MG_SERVER_MONGODB, MG_SERVER_FERRETDB };

struct mg_shard {
    const struct cf_shard *cfs;
    mongoc_client_pool_t *clients;
    char db[128];
    int up;     /* atomic: last known state, for up/down log lines */
    int server; /* atomic enum mg_server: what serves the shard, asked once */
};

/* Collections whose indexes this state created (auto_migrate). */
struct mg_migrated {
    struct mg_migrated *next;
    int shard;
    char table[];
};

struct mg_state {
    struct event_base *base;
    const struct cf_backend *be;
    struct lb_workq *pool;
    struct mg_shard *shards;
    int nshards;
    int closing;
    struct mg_migrated *migrated;
};

struct mg_call {
    struct lb_job job; /* first: the pool hands us back &job */
    struct mg_state *st;
    struct mg_shard *sh;
    const struct ad_req *req;
    const struct cf_domain *d;
    ad_done_cb cb;
    void *arg;
    /* prepared on the loop thread, read by the pool thread */
    enum ad_op op;
    const char *keyname;
    char *key;
    int64_t if_match;
    int upsert;
    bson_t *filter;
    bson_t *doc;          /* INSERT: the document; PUT/PATCH: the update */
    bson_t *indexes;      /* createIndexes command to run first, or NULL */
    struct mg_plan *plan; /* _query/_aggregate */
    /* written by the pool thread */
    enum ad_status status;
    const char *field; /* config string named by a 400/409 */
    int created;
    int migrated_ok;
    bson_t *result; /* the document after the operation */
    char message[256];
};

/* {key: "…"} plus {version: N} when If-Match. */
/* The largest magnitude a decimal field holds, in its scaled units: the
 * catalog stores decimals as int64 counts of 10^-scale (at most 18 digits). */
static int64_t decimal_max(const struct cf_field *f)
{
    int digits = f->precision > 0 && f->precision < 18 ? f->precision : 18;
    int64_t m = 1;
    for (int i = 0; i < digits; i++) {
        m *= 10;
    }
    return m - 1;
}

/* An $inc of a decimal field must leave it within its digits, as the SQL
 * stores' DECIMAL columns do: the filter gets, per such field, "absent, or
 * small enough that the sum fits" ({$and: [{$or: [...]}, …]}, a key that the
 * key filter and the guard never use).  A miss is explained by classify_miss. */
static void append_decimal_ranges(bson_t *filter, const struct cf_domain *d, const bson_t *update)
{
    bson_iter_t it, inc;
    if (!bson_iter_init_find(&it, update, "$inc") || !bson_iter_recurse(&it, &inc)) {
        return;
    }
    bson_t all;
    uint32_t n = 0;
    while (bson_iter_next(&inc)) {
        const struct cf_field *f = cf_field_find(d, bson_iter_key(&inc));
        if (f == NULL || f->type != CF_T_DECIMAL || !BSON_ITER_HOLDS_INT(&inc)) {
            continue;
        }
        int64_t max = decimal_max(f), delta = bson_iter_as_int64(&inc);
        if (delta > max || delta < -max) {
            delta = delta > 0 ? max : -max; /* refused on write already; keep the bound sane */
        }
        if (n == 0) {
            bson_append_array_begin(filter, "$and", -1, &all);
        }
        char idx[16];
        const char *key;
        bson_uint32_to_string(n++, &key, idx, sizeof(idx));
        bson_t one, alt, absent, fits, cmp;
        bson_append_document_begin(&all, key, -1, &one);
        bson_append_array_begin(&one, "$or", -1, &alt);
        bson_append_document_begin(&alt, "0", -1, &absent);
        bson_append_document_begin(&absent, f->name, -1, &cmp);
        bson_append_bool(&cmp, "$exists", -1, false);
        bson_append_document_end(&absent, &cmp);
        bson_append_document_end(&alt, &absent);
        bson_append_document_begin(&alt, "1", -1, &fits);
        bson_append_document_begin(&fits, f->name, -1, &cmp);
        if (delta >= 0) {
            bson_append_int64(&cmp, "$lte", -1, max - delta);
        } else {
            bson_append_int64(&cmp, "$gte", -1, -max - delta);
        }
        bson_append_document_end(&fits, &cmp);
        bson_append_document_end(&alt, &fits);
        bson_append_array_end(&one, &alt);
        bson_append_document_end(&all, &one);
    }
    if (n > 0) {
        bson_append_array_end(filter, &all);
    }
}

/* After a PATCH missed an existing item: the decimal field an $inc would
 * take past its digits, or NULL. */
static const struct cf_field *decimal_past_digits(const struct mg_call *c, const bson_t *doc)
{
    bson_iter_t it, inc, cur;
    if (c->op != AD_PATCH || c->doc == NULL || !bson_iter_init_find(&it, c->doc, "$inc") ||
        !bson_iter_recurse(&it, &inc)) {
        return NULL;
    }
    while (bson_iter_next(&inc)) {
        const struct cf_field *f = cf_field_find(c->d, bson_iter_key(&inc));
        if (f == NULL || f->type != CF_T_DECIMAL || !BSON_ITER_HOLDS_INT(&inc) ||
            !bson_iter_init_find(&cur, doc, f->name) || !BSON_ITER_HOLDS_INT(&cur)) {
            continue;
        }
        int64_t sum, max = decimal_max(f);
        if (__builtin_add_overflow(bson_iter_as_int64(&cur), bson_iter_as_int64(&inc), &sum) ||
            sum > max || sum < -max) {
            return f;
        }
    }
    return NULL;
}

static bson_t *key_filter(const struct mg_call *c)
{
    bson_t *f = bson_new();
    bson_append_utf8(f, c->keyname, -1, c->key, -1);
    if (c->if_match >= 0) {
        bson_append_int64(f, "version", -1, c->if_match);
    }
    return f;
}

static const struct {
    const char *name;
    const char *op;
} guard_ops[] = {{"eq", "$eq"},   {"ne", "$ne"}, {"gt", "$gt"},
                 {"gte", "$gte"}, {"lt", "$lt"}, {"lte", "$lte"}};

/* The PATCH guard {"field": v | {"gte": v, …}} (validated by md_patch_check)
 * into the filter; operators from the allow-list only. */
static int append_guard(bson_t *filter, const struct cf_domain *d, struct json_object *where,
                        struct mg_xerr *x)
{
    json_object_object_foreach(where, name, cond)
    {
        const struct cf_field *f = cf_field_find(d, name);
        if (f == NULL) {
            snprintf(x->msg, sizeof(x->msg), "where: unknown field '%s'", name);
            return -1;
        }
        bson_t child;
        bson_append_document_begin(filter, f->name, -1, &child);
        int rc = 0;
        if (json_object_is_type(cond, json_type_object)) {
            json_object_object_foreach(cond, opname, v)
            {
                const char *op = NULL;
                for (size_t i = 0; i < sizeof(guard_ops) / sizeof(guard_ops[0]); i++) {
                    if (strcmp(guard_ops[i].name, opname) == 0) {
                        op = guard_ops[i].op;
                    }
                }
                if (op == NULL) {
                    snprintf(x->msg, sizeof(x->msg),
                             "where.%s: unknown operator '%s' (eq ne gt gte lt lte)", name, opname);
                    rc = -1;
                    break;
                }
                if ((rc = mg_append_field(&child, op, f, v, x)) < 0) {
                    break;
                }
            }
        } else {
            rc = mg_append_field(&child, "$eq", f, cond, x);
        }
        bson_append_document_end(filter, &child);
        if (rc < 0) {
            return -1;
        }
    }
    return 0;
}

/* Build filter/doc for the call; -1 with x filled on invalid input (400). */
static int prepare(struct mg_call *c, struct mg_xerr *x)
{
    const struct cf_domain *d = c->d;
    struct json_object *body = c->req->body;
    switch (c->op) {
    case AD_PING:
        return 0;
    case AD_GET:
    case AD_DELETE:
        c->filter = key_filter(c);
        return 0;
    case AD_INSERT: {
        c->doc = bson_new();
        json_object_object_foreach(body, k, v)
        {
            const struct cf_field *f = cf_field_find(d, k);
            if (f != NULL && mg_append_field(c->doc, k, f, v, x) < 0) {
                return -1;
            }
        }
        bson_append_int64(c->doc, "version", -1, 1);
        return 0;
    }
    case AD_PUT: {
        c->filter = key_filter(c);
        c->upsert = c->if_match < 0;
        c->doc = bson_new();
        bson_t set, unset;
        int nset = 0, nunset = 0;
        bson_append_document_begin(c->doc, "$set", -1, &set);
        for (size_t i = 0; i < d->nfields; i++) {
            const struct cf_field *f = &d->fields[i];
            struct json_object *v;
            if (strcmp(f->name, d->key) == 0 || !json_object_object_get_ex(body, f->name, &v)) {
                continue;
            }
            if (mg_append_field(&set, f->name, f, v, x) < 0) {
                bson_append_document_end(c->doc, &set);
                return -1;
            }
            nset++;
        }
        bson_append_document_end(c->doc, &set);
        if (nset == 0) { /* an empty $set is an error for the server */
            bson_destroy(c->doc);
            c->doc = bson_new();
        }
        bson_append_document_begin(c->doc, "$unset", -1, &unset);
        for (size_t i = 0; i < d->nfields; i++) {
            const struct cf_field *f = &d->fields[i];
            if (strcmp(f->name, d->key) != 0 && !json_object_object_get_ex(body, f->name, NULL)) {
                bson_append_utf8(&unset, f->name, -1, "", 0);
                nunset++;
            }
        }
        bson_append_document_end(c->doc, &unset);
        if (nunset == 0) {
            bson_t *tmp = bson_new();
            bson_copy_to_excluding_noinit(c->doc, tmp, "$unset", NULL);
            bson_destroy(c->doc);
            c->doc = tmp;
        }
        bson_t inc;
        bson_append_document_begin(c->doc, "$inc", -1, &inc);
        bson_append_int64(&inc, "version", -1, 1);
        bson_append_document_end(c->doc, &inc);
        return 0;
    }
    case AD_PATCH: {
        c->filter = key_filter(c);
        struct json_object *where = NULL;
        if (json_object_object_get_ex(body, "where", &where) &&
            append_guard(c->filter, d, where, x) < 0) {
            return -1;
        }
        c->doc = bson_new();
        struct json_object *ops;
        if (json_object_object_get_ex(body, "set", &ops) && json_object_object_length(ops) > 0) {
            bson_t set;
            bson_append_document_begin(c->doc, "$set", -1, &set);
            json_object_object_foreach(ops, k, v)
            {
                if (mg_append_field(&set, k, cf_field_find(d, k), v, x) < 0) {
                    bson_append_document_end(c->doc, &set);
                    return -1;
                }
            }
            bson_append_document_end(c->doc, &set);
        }
        if (json_object_object_get_ex(body, "unset", &ops) && json_object_array_length(ops) > 0) {
            bson_t unset;
            bson_append_document_begin(c->doc, "$unset", -1, &unset);
            for (size_t i = 0; i < json_object_array_length(ops); i++) {
                const struct cf_field *f =
                    cf_field_find(d, json_object_get_string(json_object_array_get_idx(ops, i)));
                if (f != NULL) {
                    bson_append_utf8(&unset, f->name, -1, "", 0);
                }
            }
            bson_append_document_end(c->doc, &unset);
        }
        bson_t inc;
        bson_append_document_begin(c->doc, "$inc", -1, &inc);
        if (json_object_object_get_ex(body, "inc", &ops)) {
            json_object_object_foreach(ops, k, v)
            {
                if (mg_append_field(&inc, k, cf_field_find(d, k), v, x) < 0) {
                    bson_append_document_end(c->doc, &inc);
                    return -1;
                }
            }
        }
        bson_append_int64(&inc, "version", -1, 1);
        bson_append_document_end(c->doc, &inc);
        append_decimal_ranges(c->filter, d, c->doc);
        return 0;
    }
    case AD_QUERY:
    case AD_AGGREGATE: {
        const struct md_query *q = c->req->query;
        if (q == NULL || q->aggregate != (c->op == AD_AGGREGATE)) {
            snprintf(x->msg, sizeof(x->msg), "the query was not parsed by the gateway");
            return -1;
        }
        return mg_plan_new(d, q, &c->plan, x);
    }
    default:
        snprintf(x->msg, sizeof(x->msg), "%s is not supported by the mongo adapter",
                 ad_op_name(c->op));
        return -1;
    }
}

/* createIndexes for the key (unique) and the fields marked unique/index. */
static bson_t *index_command(const struct cf_domain *d)
{
    bson_t *cmd = bson_new();
    bson_t arr;
    bson_append_utf8(cmd, "createIndexes", -1, d->table, -1);
    bson_append_array_begin(cmd, "indexes", -1, &arr);
    int n = 0;
    for (size_t i = 0; i < d->nfields; i++) {
        const struct cf_field *f = &d->fields[i];
        int is_key = strcmp(f->name, d->key) == 0;
        if (!is_key && !f->unique && !f->indexed) {
            continue;
        }
        char idx[24];
        snprintf(idx, sizeof(idx), "%d", n++);
        char *name = bson_strdup_printf("%s_1", f->name); /* whole: a cut name could repeat */
        bson_t ix, keys;
        bson_append_document_begin(&arr, idx, -1, &ix);
        bson_append_document_begin(&ix, "key", -1, &keys);
        bson_append_int32(&keys, f->name, -1, 1);
        bson_append_document_end(&ix, &keys);
        bson_append_utf8(&ix, "name", -1, name, -1);
        bson_free(name);
        if (is_key || f->unique) {
            bson_append_bool(&ix, "unique", -1, true);
        }
        bson_append_document_end(&arr, &ix);
    }
    bson_append_array_end(cmd, &arr);
    return cmd;
}

/* ---- the pool thread's side ----------------------------------------------------------- */

static int is_unavailable(const bson_error_t *e)
{
    return e->domain == MONGOC_ERROR_STREAM || e->domain == MONGOC_ERROR_SERVER_SELECTION ||
           (e->domain == MONGOC_ERROR_CLIENT && e->code == MONGOC_ERROR_CLIENT_AUTHENTICATE);
}

static void note_state(struct mg_call *c, int up, const char *why)
{
    int was = __atomic_exchange_n(&c->sh->up, up, __ATOMIC_RELAXED);
    if (was && !up) {
        lb_warn("mongo shard '%s' of backend '%s' is down: %s", c->sh->cfs->name, c->st->be->name,
                why);
    } else if (!was && up) {
        lb_info("mongo shard '%s' of backend '%s' is up", c->sh->cfs->name, c->st->be->name);
    }
}

/* The store's message fit for one log line: FerretDB quotes a document's
 * _id as raw bytes, not always UTF-8; those bytes and control characters are
 * written as \xNN, so the log stays text. */
static const char *loggable(const char *msg, char *buf, size_t buflen)
{
    size_t o = 0, len = strlen(msg);
    for (size_t i = 0; i < len;) {
        unsigned char ch = (unsigned char)msg[i];
        size_t n = ch < 0x80 ? 1 : ch >= 0xf0 ? 4 : ch >= 0xe0 ? 3 : 2;
        if (n > len - i || (n > 1 && lb_utf8_check(msg + i, n) != n) || ch < 0x20 || ch == 0x7f) {
            if (o + 5 > buflen) {
                break;
            }
            o += (size_t)snprintf(buf + o, buflen - o, "\\x%02x", ch);
            i++;
            continue;
        }
        if (o + n + 1 > buflen) {
            break;
        }
        memcpy(buf + o, msg + i, n);
        o += n;
        i += n;
    }
    buf[o] = '\0';
    return buf;
}

static void fail(struct mg_call *c, const bson_error_t *e)
{
    const char *be = c->st->be->name, *sh = c->sh->cfs->name;
    if (is_unavailable(e)) {
        note_state(c, 0, e->message);
        c->status = AD_UNAVAILABLE;
        snprintf(c->message, sizeof(c->message),
                 "mongo backend '%s' (shard '%s') is unavailable: %.150s", be, sh, e->message);
        return;
    }
    note_state(c, 1, "");
    unsigned long long id = c->req != NULL ? (unsigned long long)c->req->id : 0;
    const char *what = "failed";
    switch (e->code) {
    case 11000: /* duplicate key */
        c->status = AD_CONFLICT;
        c->field = c->keyname;
        snprintf(c->message, sizeof(c->message), "a %s item with this %s already exists",
                 c->d != NULL ? c->d->name : "", c->keyname);
        return;
    case 50: /* MaxTimeMSExpired */
        c->status = AD_TIMEOUT;
        what = "ran out of time for";
        break;
    case 2:  /* BadValue */
    case 9:  /* FailedToParse */
    case 14: /* TypeMismatch */
    case 40: /* ConflictingUpdateOperators */
    case 52: /* DollarPrefixedFieldName */
    case 56: /* EmptyFieldName */
    case 57: /* DottedFieldName */
        c->status = AD_BAD_REQUEST;
        what = "refused";
        break;
    default:
        c->status = AD_INTERNAL;
        break;
    }
    /* the store's own words (FerretDB adds stack frames, and quotes the
     * document's raw _id bytes, not always UTF-8) stay in the log: the client
     * learns which shard answered what and the call id to find them by */
    char text[1024];
    lb_warn("mongo backend '%s' shard '%s' call %llu (%s): %s (domain %u, code %u)", be, sh, id,
            ad_op_name(c->op), loggable(e->message, text, sizeof(text)), e->domain, e->code);
    snprintf(c->message, sizeof(c->message),
             "backend '%s' shard '%s' %s the %s (the store's error is logged as call %llu)", be, sh,
             what, ad_op_name(c->op), id);
}

/* Read the item by key alone (after a write matched nothing). 1 found, 0 not, -1 error. */
static int read_by_key(struct mg_call *c, mongoc_collection_t *coll, bson_t **out)
{
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER;
    bson_append_utf8(&filter, c->keyname, -1, c->key, -1);
    bson_append_int64(&opts, "limit", -1, 1);
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, &filter, &opts, NULL);
    const bson_t *doc;
    bson_error_t err;
    int rc = 0;
    if (mongoc_cursor_next(cur, &doc)) {
        *out = bson_copy(doc);
        rc = 1;
    } else if (mongoc_cursor_error(cur, &err)) {
        fail(c, &err);
        rc = -1;
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(&filter);
    bson_destroy(&opts);
    return rc;
}

/* A conditional write matched nothing: 404, 412 or 409 (guard). */
static void classify_miss(struct mg_call *c, mongoc_collection_t *coll)
{
    bson_t *doc = NULL;
    int rc = read_by_key(c, coll, &doc);
    if (rc < 0) {
        return;
    }
    const char *dn = c->d->name;
    if (rc == 0) {
        if (c->if_match >= 0 && c->op != AD_DELETE) {
            c->status = AD_PRECONDITION;
            snprintf(c->message, sizeof(c->message), "If-Match: the %s item does not exist", dn);
        } else {
            c->status = AD_NOT_FOUND;
            snprintf(c->message, sizeof(c->message), "no %s item with this key", dn);
        }
        return;
    }
    bson_iter_t it;
    int64_t cur = -1;
    if (bson_iter_init_find(&it, doc, "version") && BSON_ITER_HOLDS_INT(&it)) {
        cur = bson_iter_as_int64(&it);
    }
    const struct cf_field *past = decimal_past_digits(c, doc);
    bson_destroy(doc);
    if (c->if_match >= 0 && cur != c->if_match) {
        c->status = AD_PRECONDITION;
        snprintf(c->message, sizeof(c->message),
                 "If-Match: version %lld does not match the current version %lld",
                 (long long)c->if_match, (long long)cur);
    } else if (past != NULL) {
        /* a 400, as the SQL stores answer a DECIMAL column pushed past its digits */
        c->status = AD_BAD_REQUEST;
        snprintf(c->message, sizeof(c->message),
                 "cannot increment '%s': the result would not fit in %d digits with %d decimal "
                 "places; nothing was changed",
                 past->name, past->precision > 0 && past->precision < 18 ? past->precision : 18,
                 past->scale);
    } else {
        c->status = AD_CONFLICT;
        snprintf(c->message, sizeof(c->message),
                 "the condition in 'where' does not hold for this %s item; nothing was changed",
                 dn);
    }
}

/* A PATCH's $inc failed: would one of its int fields leave the int64 range?
 * (A decimal past its digits is a 400, as on the SQL stores.)  The server's words are not parsed
 * (MongoDB and FerretDB say BadValue and quote the _id, each in its own
 * notation): the item is read back, under the same key lock, and the sums
 * are checked here.  The answer is the gateway's own 409, the one the stores
 * it increments itself give.  1 when c now holds it. */
static int inc_out_of_range(struct mg_call *c, mongoc_collection_t *coll, const bson_error_t *e)
{
    bson_iter_t it, inc;
    if (c->op != AD_PATCH || !bson_iter_init_find(&it, c->doc, "$inc") ||
        !bson_iter_recurse(&it, &inc)) {
        return 0;
    }
    bson_t *doc = NULL;
    if (read_by_key(c, coll, &doc) != 1) {
        c->status = AD_DONE; /* a failed read says nothing about the sums */
        return 0;
    }
    const struct cf_field *hit = NULL;
    while (hit == NULL && bson_iter_next(&inc)) {
        const struct cf_field *f = cf_field_find(c->d, bson_iter_key(&inc));
        bson_iter_t cur;
        int64_t sum;
        if (f != NULL && f->type == CF_T_INT && BSON_ITER_HOLDS_INT(&inc) &&
            bson_iter_init_find(&cur, doc, f->name) && BSON_ITER_HOLDS_INT(&cur) &&
            __builtin_add_overflow(bson_iter_as_int64(&cur), bson_iter_as_int64(&inc), &sum)) {
            hit = f;
        }
    }
    bson_destroy(doc);
    if (hit == NULL) {
        return 0;
    }
    char text[1024];
    lb_info("mongo backend '%s' shard '%s' call %llu: increment of '%s' out of range: %s (code %u)",
            c->st->be->name, c->sh->cfs->name, (unsigned long long)c->req->id, hit->name,
            loggable(e->message, text, sizeof(text)), e->code);
    c->status = AD_CONFLICT;
    c->field = hit->name;
    snprintf(c->message, sizeof(c->message), "cannot increment '%s': the result is out of range",
             hit->name);
    return 1;
}

static void do_find_and_modify(struct mg_call *c, mongoc_collection_t *coll)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        mongoc_find_and_modify_opts_t *o = mongoc_find_and_modify_opts_new();
        mongoc_find_and_modify_opts_set_update(o, c->doc);
        mongoc_find_and_modify_opts_set_flags(
            o, MONGOC_FIND_AND_MODIFY_RETURN_NEW | (c->upsert ? MONGOC_FIND_AND_MODIFY_UPSERT : 0));
        bson_t reply;
        bson_error_t err;
        bool ok = mongoc_collection_find_and_modify_with_opts(coll, c->filter, o, &reply, &err);
        mongoc_find_and_modify_opts_destroy(o);
        if (!ok) {
            bson_destroy(&reply);
            if (err.code == 11000 && c->upsert && attempt == 0) {
                continue; /* two upserts raced to create it: the second one updates */
            }
            if (!is_unavailable(&err) && inc_out_of_range(c, coll, &err)) {
                note_state(c, 1, "");
                return;
            }
            fail(c, &err);
            return;
        }
        note_state(c, 1, "");
        bson_iter_t it, sub;
        if (bson_iter_init_find(&it, &reply, "value") && BSON_ITER_HOLDS_DOCUMENT(&it)) {
            uint32_t len;
            const uint8_t *data;
            bson_iter_document(&it, &len, &data);
            c->result = bson_new_from_data(data, len);
            c->created = 0;
            if (c->upsert && bson_iter_init_find(&it, &reply, "lastErrorObject") &&
                bson_iter_recurse(&it, &sub) && bson_iter_find(&sub, "updatedExisting")) {
                c->created = !bson_iter_as_bool(&sub);
            }
            bson_destroy(&reply);
            return;
        }
        bson_destroy(&reply);
        classify_miss(c, coll);
        return;
    }
}

static pthread_mutex_t *key_lock(const struct mg_call *c)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    const char *parts[3] = {c->sh->db, c->d->table, c->key};
    for (int i = 0; i < 3; i++) {
        for (const char *p = parts[i]; *p != '\0'; p++) {
            h = (h ^ (unsigned char)*p) * 1099511628211ULL;
        }
        h = (h ^ 0xff) * 1099511628211ULL;
    }
    return &key_locks[h % KEY_LOCKS];
}

/* Pool thread: what serves the shard, from its buildInfo reply (FerretDB
 * adds `ferretdbVersion`).  Asked once per shard; while no answer came (the
 * server unreachable), MG_SERVER_UNKNOWN, which writes treat as FerretDB. */
static enum mg_server server_kind(struct mg_shard *sh, mongoc_client_t *cl)
{
    int kind = __atomic_load_n(&sh->server, __ATOMIC_ACQUIRE);
    if (kind != MG_SERVER_UNKNOWN) {
        return (enum mg_server)kind;
    }
    bson_t cmd = BSON_INITIALIZER, reply;
    bson_error_t err;
    bson_append_int32(&cmd, "buildInfo", -1, 1);
    if (mongoc_client_command_simple(cl, "admin", &cmd, NULL, &reply, &err)) {
        bson_iter_t it;
        kind = bson_iter_init_find(&it, &reply, "ferretdbVersion") ? MG_SERVER_FERRETDB
                                                                   : MG_SERVER_MONGODB;
        int unknown = MG_SERVER_UNKNOWN;
        if (__atomic_compare_exchange_n(&sh->server, &unknown, kind, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            lb_info("mongo shard '%s' is %s: writes to one document %s", sh->cfs->name,
                    kind == MG_SERVER_FERRETDB ? "FerretDB" : "MongoDB",
                    kind == MG_SERVER_FERRETDB ? "are serialised in the gateway"
                                               : "take no gateway lock");
        }
    }
    bson_destroy(&reply);
    bson_destroy(&cmd);
    return (enum mg_server)kind;
}

static void call_work(struct lb_job *job)
{
    struct mg_call *c = (struct mg_call *)job;
    mongoc_client_t *cl = mongoc_client_pool_pop(c->sh->clients);
    bson_error_t err;
    c->status = AD_DONE;
    if (c->op == AD_PING) {
        bson_t cmd = BSON_INITIALIZER;
        bson_append_int32(&cmd, "ping", -1, 1);
        if (!mongoc_client_command_simple(cl, "admin", &cmd, NULL, NULL, &err)) {
            fail(c, &err);
        } else {
            note_state(c, 1, "");
        }
        bson_destroy(&cmd);
        mongoc_client_pool_push(c->sh->clients, cl);
        return;
    }
    mongoc_collection_t *coll = mongoc_client_get_collection(cl, c->sh->db, c->d->table);
    if (c->indexes != NULL) {
        bson_t reply;
        if (mongoc_collection_write_command_with_opts(coll, c->indexes, NULL, &reply, &err)) {
            c->migrated_ok = 1;
        } else if (!is_unavailable(&err)) {
            char text[1024];
            lb_error("mongo shard '%s': auto_migrate of collection '%s' failed: %s",
                     c->sh->cfs->name, c->d->table, loggable(err.message, text, sizeof(text)));
        }
        bson_destroy(&reply);
    }
    pthread_mutex_t *lock =
        c->op != AD_GET && c->key != NULL && server_kind(c->sh, cl) != MG_SERVER_MONGODB
            ? key_lock(c)
            : NULL;
    if (lock != NULL) {
        pthread_mutex_lock(lock);
    }
    switch (c->op) {
    case AD_GET: {
        bson_t opts = BSON_INITIALIZER;
        bson_append_int64(&opts, "limit", -1, 1);
        mongoc_cursor_t *cur = mongoc_collection_find_with_opts(coll, c->filter, &opts, NULL);
        const bson_t *doc;
        if (mongoc_cursor_next(cur, &doc)) {
            c->result = bson_copy(doc);
            note_state(c, 1, "");
        } else if (mongoc_cursor_error(cur, &err)) {
            fail(c, &err);
        } else {
            note_state(c, 1, "");
            c->status = AD_NOT_FOUND;
            snprintf(c->message, sizeof(c->message), "no %s item with this key", c->d->name);
        }
        mongoc_cursor_destroy(cur);
        bson_destroy(&opts);
        break;
    }
    case AD_INSERT: {
        bson_t reply;
        if (mongoc_collection_insert_one(coll, c->doc, NULL, &reply, &err)) {
            note_state(c, 1, "");
            c->result = bson_copy(c->doc);
            c->created = 1;
        } else {
            fail(c, &err);
        }
        bson_destroy(&reply);
        break;
    }
    case AD_PUT:
    case AD_PATCH:
        do_find_and_modify(c, coll);
        break;
    case AD_QUERY:
    case AD_AGGREGATE:
        switch (mg_plan_run(c->plan, coll, c->job.deadline_ms, &c->result, &err, c->message,
                            sizeof(c->message))) {
        case MG_PLAN_OK:
            note_state(c, 1, "");
            break;
        case MG_PLAN_DRIVER:
            fail(c, &err);
            break;
        case MG_PLAN_BAD:
            c->status = AD_BAD_REQUEST;
            break;
        default:
            c->status = AD_TIMEOUT;
            snprintf(c->message, sizeof(c->message),
                     "mongo backend '%s' (shard '%s'): the deadline passed during the query",
                     c->st->be->name, c->sh->cfs->name);
        }
        break;
    case AD_DELETE: {
        bson_t reply;
        if (!mongoc_collection_delete_one(coll, c->filter, NULL, &reply, &err)) {
            fail(c, &err);
        } else {
            note_state(c, 1, "");
            bson_iter_t it;
            if (bson_iter_init_find(&it, &reply, "deletedCount") && bson_iter_as_int64(&it) == 0) {
                classify_miss(c, coll);
            }
        }
        bson_destroy(&reply);
        break;
    }
    default:
        c->status = AD_BAD_REQUEST;
        snprintf(c->message, sizeof(c->message), "unsupported operation");
    }
    if (lock != NULL) {
        pthread_mutex_unlock(lock);
    }
    mongoc_collection_destroy(coll);
    mongoc_client_pool_push(c->sh->clients, cl);
}

/* ---- the loop's side ---------------------------------------------------------------------- */

static void call_free(struct mg_call *c)
{
    free(c->key);
    if (c->filter != NULL) {
        bson_destroy(c->filter);
    }
    if (c->doc != NULL) {
        bson_destroy(c->doc);
    }
    if (c->indexes != NULL) {
        bson_destroy(c->indexes);
    }
    if (c->result != NULL) {
        bson_destroy(c->result);
    }
    mg_plan_free(c->plan);
    free(c);
}

static int is_migrated(const struct mg_state *st, int shard, const char *table)
{
    for (const struct mg_migrated *m = st->migrated; m != NULL; m = m->next) {
        if (m->shard == shard && strcmp(m->table, table) == 0) {
            return 1;
        }
    }
    return 0;
}

static void mark_migrated(struct mg_state *st, int shard, const char *table)
{
    if (is_migrated(st, shard, table)) {
        return;
    }
    size_t n = strlen(table);
    struct mg_migrated *m = malloc(sizeof(*m) + n + 1);
    if (m == NULL) {
        return;
    }
    m->shard = shard;
    memcpy(m->table, table, n + 1);
    m->next = st->migrated;
    st->migrated = m;
}

static void call_done(struct lb_job *job)
{
    struct mg_call *c = (struct mg_call *)job;
    struct ad_res res;
    struct json_object *item = NULL, *rows = NULL, *last = NULL;
    ad_res_init(&res);
    res.shard = c->sh->cfs->name;
    switch (job->outcome) {
    case LB_JOB_EXPIRED:
        ad_res_error(&res, AD_TIMEOUT, res.shard,
                     "mongo backend '%s' (shard '%s'): no thread was free before the deadline",
                     c->st->be->name, res.shard);
        break;
    case LB_JOB_CANCELED:
        ad_res_error(&res, AD_CANCELED, res.shard, "canceled");
        break;
    case LB_JOB_STOPPED:
        ad_res_error(&res, AD_UNAVAILABLE, res.shard,
                     "mongo backend '%s' (shard '%s') is shutting down", c->st->be->name,
                     res.shard);
        break;
    case LB_JOB_RAN:
        if (c->migrated_ok) {
            mark_migrated(c->st, c->req->shard, c->d->table);
        }
        if (c->status != AD_DONE) {
            ad_res_error(&res, c->status, res.shard, "%s", c->message);
            res.field = c->field;
        } else if (c->result != NULL && c->plan != NULL) {
            mg_plan_result(c->plan, c->result, &rows, &last);
            res.rows = rows;
            res.last = last;
        } else if (c->result != NULL) {
            item = mg_item_of(c->result, c->d, &res.version);
            res.item = item;
            res.created = c->created;
        }
        break;
    }
    c->cb(&res, c->arg); /* may shut the adapter down: touch nothing of st after it */
    json_object_put(item);
    json_object_put(rows);
    json_object_put(last);
    call_free(c);
}

static int mg_submit(void *state, const struct ad_req *req, ad_done_cb cb, void *arg)
{
    struct mg_state *st = state;
    if (st->closing) {
        return AD_EDOWN;
    }
    if (req->shard < 0 || req->shard >= st->nshards) {
        return AD_EINVAL;
    }
    if (req->op != AD_PING && (req->domain == NULL || req->domain->kind != CF_KIND_RECORD)) {
        return AD_EINVAL;
    }
    struct mg_call *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return AD_EFULL;
    }
    c->job.id = req->id;
    c->job.deadline_ms = req->deadline_ms;
    c->job.work = call_work;
    c->job.done = call_done;
    c->st = st;
    c->sh = &st->shards[req->shard];
    c->req = req;
    c->d = req->domain;
    c->cb = cb;
    c->arg = arg;
    c->op = req->op;
    c->if_match = req->if_match;
    if (c->d != NULL) {
        c->keyname = c->d->key;
        if (req->key != NULL) {
            c->key = strndup(req->key, req->keylen);
        }
        if ((req->op == AD_GET || req->op == AD_PUT || req->op == AD_PATCH ||
             req->op == AD_DELETE) &&
            c->key == NULL) {
            call_free(c);
            return AD_EINVAL;
        }
    }
    struct mg_xerr x = {0};
    if (prepare(c, &x) < 0) {
        /* accepted, then refused: the 400 still completes on the loop, later */
        c->status = AD_BAD_REQUEST;
        c->field = x.field;
        snprintf(c->message, sizeof(c->message), "%s", x.msg);
        lb_workq_defer(st->pool, &c->job);
        return 0;
    }
    if (c->d != NULL && c->d->auto_migrate && !is_migrated(st, req->shard, c->d->table)) {
        c->indexes = index_command(c->d);
    }
    int rc = lb_workq_submit(st->pool, &c->job);
    if (rc != 0) {
        call_free(c);
        return rc == LB_WORKQ_EFULL ? AD_EFULL : AD_EDOWN;
    }
    return 0;
}

static void mg_cancel(void *state, uint64_t req_id)
{
    struct mg_state *st = state;
    /* a call still waiting for a thread is dropped (completes as canceled);
     * a running driver call cannot be interrupted */
    (void)lb_workq_cancel(st->pool, req_id);
}

static int mg_supports(const struct cf_domain *d, enum ad_op op)
{
    (void)d;
    switch (op) {
    case AD_GET:
    case AD_PUT:
    case AD_INSERT:
    case AD_PATCH:
    case AD_DELETE:
    case AD_PING:
    case AD_QUERY:
    case AD_AGGREGATE:
        return 1;
    default:
        return 0;
    }
}

static int mg_check_domain(const struct cf_backend *be, const struct cf_domain *d, char *err,
                           size_t errlen)
{
    (void)be;
    if (d->kind != CF_KIND_RECORD) {
        snprintf(err, errlen, "kind: mongo serves `record` domains only");
        return -1;
    }
    if (d->table[0] == '\0' || d->table[0] == '$' || strchr(d->table, '$') != NULL ||
        strlen(d->table) > 120 || strstr(d->table, "system.") == d->table) {
        snprintf(err, errlen, "table: '%s' is not a usable collection name", d->table);
        return -1;
    }
    for (size_t i = 0; i < d->nfields; i++) {
        const struct cf_field *f = &d->fields[i];
        if (strcmp(f->name, "_id") == 0) {
            snprintf(err, errlen, "fields._id: reserved by MongoDB");
            return -1;
        }
        if (f->type == CF_T_DECIMAL && (f->scale < 0 || f->precision > 18)) {
            snprintf(err, errlen,
                     "fields.%s: mongo stores decimals as scaled 64-bit integers: give a fixed "
                     "`scale` and a `precision` of at most 18",
                     f->name);
            return -1;
        }
    }
    return 0;
}

/* serverSelectionTimeoutMS & co from `options`, else the DSN, else defaults. */
static int apply_options(mongoc_uri_t *uri, const struct cf_backend *be, char *err, size_t errlen)
{
    static const char *const known[] = {MONGOC_URI_SERVERSELECTIONTIMEOUTMS,
                                        MONGOC_URI_SOCKETTIMEOUTMS, MONGOC_URI_CONNECTTIMEOUTMS,
                                        MONGOC_URI_HEARTBEATFREQUENCYMS, NULL};
    if (be->options != NULL) {
        json_object_object_foreach(be->options, k, v)
        {
            const char *const *o = known;
            while (*o != NULL && strcasecmp(*o, k) != 0) {
                o++;
            }
            if (*o == NULL || !json_object_is_type(v, json_type_int) ||
                json_object_get_int64(v) < 1 || json_object_get_int64(v) > 3600000) {
                snprintf(err, errlen,
                         "options.%s: unknown option or not a number of milliseconds "
                         "(serverSelectionTimeoutMS, socketTimeoutMS, connectTimeoutMS, "
                         "heartbeatFrequencyMS)",
                         k);
                return -1;
            }
            mongoc_uri_set_option_as_int32(uri, *o, (int32_t)json_object_get_int64(v));
        }
    }
    /* the driver's 30 s default selection timeout would outlive every deadline */
    if (!mongoc_uri_has_option(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, 2000);
    }
    if (!mongoc_uri_has_option(uri, MONGOC_URI_CONNECTTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_CONNECTTIMEOUTMS,
                                       (int32_t)be->pool.connect_timeout_ms);
    }
    if (!mongoc_uri_has_option(uri, MONGOC_URI_SOCKETTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SOCKETTIMEOUTMS, 10000);
    }
    return 0;
}

static void state_free(struct mg_state *st)
{
    lb_workq_free(st->pool); /* joins the threads; pending calls complete here */
    for (int i = 0; i < st->nshards; i++) {
        if (st->shards[i].clients != NULL) {
            mongoc_client_pool_destroy(st->shards[i].clients);
        }
    }
    while (st->migrated != NULL) {
        struct mg_migrated *m = st->migrated;
        st->migrated = m->next;
        free(m);
    }
    free(st->shards);
    free(st);
}

static int mg_init(struct event_base *base, const struct cf_backend *be, void **state, char *err,
                   size_t errlen)
{
    pthread_once(&driver_once, driver_init);
    if (be->nshards == 0) {
        snprintf(err, errlen, "backend '%s': mongo needs `shards`", be->name);
        return -1;
    }
    struct mg_state *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    st->base = base;
    st->be = be;
    st->nshards = (int)be->nshards;
    st->shards = calloc(be->nshards, sizeof(*st->shards));
    int nthreads = be->pool.max;
    for (int i = 0; st->shards != NULL && i < st->nshards; i++) {
        struct mg_shard *sh = &st->shards[i];
        sh->cfs = &be->shards[i];
        sh->up = 1; /* so that a first failure is logged */
        bson_error_t berr;
        mongoc_uri_t *uri = mongoc_uri_new_with_error(sh->cfs->dsn, &berr);
        if (uri == NULL) {
            snprintf(err, errlen, "shard '%s': bad dsn: %s", sh->cfs->name, berr.message);
            state_free(st);
            return -1;
        }
        if (apply_options(uri, be, err, errlen) < 0) {
            mongoc_uri_destroy(uri);
            state_free(st);
            return -1;
        }
        const char *db = mongoc_uri_get_database(uri);
        snprintf(sh->db, sizeof(sh->db), "%s", db != NULL && db[0] != '\0' ? db : "polygate");
        sh->clients = mongoc_client_pool_new_with_error(uri, &berr);
        mongoc_uri_destroy(uri);
        if (sh->clients == NULL) {
            snprintf(err, errlen, "shard '%s': %s", sh->cfs->name, berr.message);
            state_free(st);
            return -1;
        }
        mongoc_client_pool_set_error_api(sh->clients, MONGOC_ERROR_API_VERSION_2);
        mongoc_client_pool_max_size(sh->clients, (uint32_t)nthreads); /* pop never waits */
        mongoc_client_pool_set_appname(sh->clients, "polygate");
    }
    if (st->shards == NULL) {
        snprintf(err, errlen, "out of memory");
        free(st);
        return -1;
    }
    st->pool = lb_workq_new(base, nthreads, be->pool.queue_max, err, errlen);
    if (st->pool == NULL) {
        state_free(st);
        return -1;
    }
    *state = st;
    return 0;
}

static void mg_shutdown(void *state)
{
    struct mg_state *st = state;
    st->closing = 1;
    state_free(st);
}

const struct ad_ops ad_mongo_ops = {
    .name = "mongo",
    .abi = AD_ABI,
    .caps = AD_CAP_PATCH_GUARDED | AD_CAP_GROUP_BY_PATH,
    .init = mg_init,
    .check_domain = mg_check_domain,
    .supports = mg_supports,
    .submit = mg_submit,
    .cancel = mg_cancel,
    .shutdown = mg_shutdown,
};
