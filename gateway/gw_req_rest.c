/*
 * gw_req_rest.c — the REST routes of /v1/ onto an envelope: method and
 * route checks (Allow), If-Match, ?<shard_key>=, Idempotency-Key, the
 * envelope validated against the domain's schema and routed to a shard.
 */
#include "gateway/gw_req_private.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "gateway/gw_auth.h"
#include "gateway/gw_http.h"
#include "gateway/gw_idempotency.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_route.h"
#include "gateway/gw_worker.h"
#include "lib/lb_json.h"
#include "lib/lb_util.h"
#include "model/md_error.h"
#include "model/md_item.h"
#include "model/md_query.h"

static int parse_if_match(const char *v, size_t len, int64_t *out)
{
    if (len >= 2 && v[0] == 'W' && v[1] == '/') {
        v += 2;
        len -= 2;
    }
    if (len >= 2 && v[0] == '"' && v[len - 1] == '"') {
        v++;
        len -= 2;
    }
    if (len == 0 || len > 18) {
        return -1;
    }
    int64_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)v[i])) {
            return -1;
        }
        n = n * 10 + (v[i] - '0');
    }
    *out = n;
    return 0;
}

/* Sharded domains: choose the shard (gw_route.h), or mark the request for a
 * fan-out to several. */
static int route(struct gw_req *r, enum ad_op op, struct md_error *e)
{
    const struct cf_domain *d = r->ad.domain;
    struct gw_route rt;
    switch (op) {
    case AD_INSERT:
    case AD_PUT:
        if (gw_route_item(d, r->body, &rt, e) < 0) {
            return -1;
        }
        if (r->skey != NULL) { /* ?<shard_key>= must agree with the item */
            struct gw_route q;
            if (gw_route_text(d, r->skey, r->skeylen, &q, e) < 0) {
                return -1;
            }
            if (q.hash != rt.hash) {
                md_error_set(e, MD_E_BAD_REQUEST, d->shard_key,
                             "'%s' in the query string differs from the item's", d->shard_key);
                return -1;
            }
        }
        break;
    case AD_GET:
    case AD_PATCH:
    case AD_DELETE:
        if (r->skey == NULL) {
            r->fanout = 1; /* a lookup by id alone: every shard is asked */
            return 0;
        }
        if (gw_route_text(d, r->skey, r->skeylen, &rt, e) < 0) {
            return -1;
        }
        break;
    case AD_QUERY:
    case AD_AGGREGATE:
        r->fanout = 1; /* req_scatter_start() picks the shards the filter pins */
        return 0;
    default:
        return 0;
    }
    r->ad.shard = rt.shard;
    r->ad.slot = (int32_t)rt.slot;
    return 0;
}

/* Fill r->ad from an envelope and validate it.  Takes the body reference. */
int req_env_prepare(struct gw_req *r, enum ad_op op, const struct cf_domain *d, const char *key,
                    size_t keylen, struct json_object *body, struct md_error *e)
{
    r->body = body;
    r->ad.op = op;
    r->mop = (int)op; /* enum gw_mop starts with the adapter ops */
    r->ad.domain = d;
    r->ad.shard = 0;
    e->domain = d->name;
    const struct cf_limits *lim = &r->cf->limits;
    if (key != NULL) {
        if (md_key_check(key, keylen, e) < 0) {
            return -1;
        }
        r->key = strndup(key, keylen);
        r->ad.key = r->key;
        r->ad.keylen = keylen;
    }
    if (r->ad.if_match >= 0 && !d->versioned) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL,
                     "domain '%s' has no versions: If-Match cannot apply", d->name);
        return -1;
    }
    if (r->ad.if_match >= 0 && (op == AD_GET || op == AD_INSERT)) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "If-Match applies to PUT, PATCH and DELETE only");
        return -1;
    }
    switch (op) {
    case AD_PUT:
    case AD_INSERT:
        if (body == NULL) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL, "a JSON item is required");
            return -1;
        }
        /* the key is unique in the domain, but each shard only knows its
         * own rows: a key the client chose is checked on every shard first
         * (req_guard_start; a generated one cannot collide) */
        r->guard =
            d->shard_key != NULL && (op == AD_PUT || json_object_object_get_ex(body, d->key, NULL));
        if (md_item_check(d, lim, op == AD_PUT ? MD_ITEM_PUT : MD_ITEM_INSERT, r->key, body, e) <
            0) {
            return -1;
        }
        if (op == AD_INSERT) {
            struct json_object *kv = json_object_object_get(body, d->key);
            r->key = lb_xstrdup(json_object_get_string(kv));
            r->ad.key = r->key;
            r->ad.keylen = (size_t)json_object_get_string_len(kv);
        }
        break;
    case AD_PATCH:
        if (body == NULL) {
            md_error_set(e, MD_E_BAD_REQUEST, NULL, "a JSON patch is required");
            return -1;
        }
        if (md_patch_check(d, lim, body, e) < 0) {
            return -1;
        }
        if (json_object_object_get_ex(body, "where", NULL) &&
            !ad_has_cap(gw_worker_adapter(r->w, d->backend), AD_CAP_PATCH_GUARDED)) {
            md_error_set(e, MD_E_UNSUPPORTED, NULL,
                         "domain '%s' is stored in %s, which cannot apply a guarded patch "
                         "('where')",
                         d->name, d->backend->type);
            return -1;
        }
        break;
    case AD_QUERY:
    case AD_AGGREGATE: {
        /* parsed and checked once here (limits, cursor secret); the adapter
         * gets it in ad_req.query */
        struct md_query *q;
        if (md_query_parse(d, lim, r->cf->cursor_secret, op == AD_AGGREGATE, body, &q, e) < 0) {
            return -1;
        }
        for (size_t i = 0; i < q->ngroup; i++) {
            if (strchr(q->group_names[i], '.') != NULL &&
                !ad_has_cap(gw_worker_adapter(r->w, d->backend), AD_CAP_GROUP_BY_PATH)) {
                md_error_set(e, MD_E_UNSUPPORTED, q->group_by[i]->name,
                             "group_by '%.128s': domain '%s' is stored in %s, which groups by "
                             "top-level fields only",
                             q->group_names[i], d->name, d->backend->type);
                md_query_free(q);
                return -1;
            }
        }
        r->query = q;
        r->ad.query = q;
        break;
    }
    default:
        break;
    }
    r->ad.slot = -1;
    if (d->shard_key != NULL && route(r, op, e) < 0) {
        return -1;
    }
    r->ad.body = r->body;
    r->rt = gw_worker_backend(r->w, d->backend);
    if (r->rt != NULL) {
        r->rt->refs++;
    }
    return 0;
}

/* The methods a route allows, into the caller's buf (each worker thread
 * answers on its own: no shared buffer). */
#define ALLOW_MAX 40 /* "GET, PUT, PATCH, DELETE" and a NUL */

static const char *allow_for(const struct ad_ops *ops, const struct cf_domain *d, int item,
                             char buf[ALLOW_MAX])
{
    buf[0] = '\0';
    if (item) {
        if (ops->supports(d, AD_GET)) {
            strcat(buf, "GET, ");
        }
        if (ops->supports(d, AD_PUT)) {
            strcat(buf, "PUT, ");
        }
        if (ops->supports(d, AD_PATCH)) {
            strcat(buf, "PATCH, ");
        }
        if (ops->supports(d, AD_DELETE)) {
            strcat(buf, "DELETE, ");
        }
    } else if (ops->supports(d, AD_INSERT)) {
        strcat(buf, "POST, ");
    }
    size_t n = strlen(buf);
    if (n >= 2) {
        buf[n - 2] = '\0';
    }
    return buf;
}

int req_method_allowed(struct gw_req *r, const struct cf_domain *d, enum ad_op op, int item,
                       struct md_error *e, char *hdr, size_t hdrlen)
{
    const struct ad_ops *ops = gw_worker_adapter(r->w, d->backend);
    if (ops->supports(d, op)) {
        return 1;
    }
    e->domain = d->name;
    if (op == AD_QUERY || op == AD_AGGREGATE) {
        md_error_set(e, MD_E_UNSUPPORTED, NULL,
                     "domain '%s' is stored in %s, which cannot serve %s: read items by key "
                     "with GET /v1/%s/{%s}",
                     d->name, d->backend->type, op == AD_QUERY ? "_query" : "_aggregate", d->name,
                     d->key);
        return 0;
    }
    char abuf[ALLOW_MAX];
    const char *allow = allow_for(ops, d, item, abuf);
    if (!item && ops->supports(d, AD_PUT)) {
        md_error_set(e, MD_E_METHOD, NULL,
                     "domain '%s' has no insert; create or replace with PUT /v1/%s/{%s}", d->name,
                     d->name, d->key);
    } else {
        md_error_set(e, MD_E_METHOD, NULL, "%s is not supported on domain '%s'%s%s", ad_op_name(op),
                     d->name, allow[0] ? "; allowed: " : "", allow);
    }
    snprintf(hdr, hdrlen, "Allow: %s\r\n", allow);
    return 0;
}

int req_parse_body(struct gw_req *r, struct gw_http_req *hr, struct json_object **out,
                   struct md_error *e)
{
    size_t len = evbuffer_get_length(hr->body);
    const char *buf = (const char *)evbuffer_pullup(hr->body, -1);
    char msg[200];
    enum lb_json_status st = lb_json_parse(buf != NULL ? buf : "", len,
                                           r->cf->limits.max_json_depth, out, msg, sizeof(msg));
    if (st != LB_JSON_OK) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "%s", msg);
        return -1;
    }
    return 0;
}

/* The value of `name` in a query string, percent-decoded (and '+' as a
 * space) into a new string; NULL when absent. */
char *req_query_param(const char *query, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (const char *p = query; p != NULL && *p != '\0';) {
        const char *amp = strchr(p, '&');
        size_t plen = amp != NULL ? (size_t)(amp - p) : strlen(p);
        if (plen > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            const char *v = p + nl + 1;
            size_t vlen = plen - nl - 1, o = 0;
            char *out = lb_xmalloc(vlen + 1);
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] == '%' && i + 2 < vlen && isxdigit((unsigned char)v[i + 1]) &&
                    isxdigit((unsigned char)v[i + 2])) {
                    char hex[3] = {v[i + 1], v[i + 2], '\0'};
                    out[o++] = (char)strtol(hex, NULL, 16);
                    i += 2;
                } else {
                    out[o++] = v[i] == '+' ? ' ' : v[i];
                }
            }
            out[o] = '\0';
            *len = o;
            return out;
        }
        p = amp != NULL ? amp + 1 : NULL;
    }
    return NULL;
}

/* ?<shard_key>=… on a sharded domain's item routes. */
static int shard_key_param(struct gw_req *r, const struct gw_http_req *hr,
                           const struct cf_domain *d, struct md_error *e)
{
    if (hr->query == NULL) {
        return 0;
    }
    r->skey = req_query_param(hr->query, d->shard_key, &r->skeylen);
    if (r->skey != NULL && memchr(r->skey, '\0', r->skeylen) != NULL) {
        md_error_set(e, MD_E_BAD_REQUEST, d->shard_key, "'%s' contains a NUL byte", d->shard_key);
        return -1;
    }
    return 0;
}

static const char *idem_scope(const struct gw_req *r)
{
    return r->caller != NULL ? r->caller->name : "";
}

static void data_run(struct gw_req *r);

/* Answer a key the store did not let run (idem_begin); -1. */
static int idem_refused(struct gw_req *r, enum gw_idem_rc rc, struct gw_idem_replay *rp,
                        const char *k, size_t klen)
{
    struct md_error e = {0};
    e.domain = r->next_domain->name;
    switch (rc) {
    case GW_IDEM_REPLAY: {
        struct evbuffer *out = evbuffer_new();
        evbuffer_add(out, rp->body, rp->bodylen);
        char hdr[256];
        snprintf(hdr, sizeof(hdr), "%sIdempotent-Replayed: true\r\n", rp->headers);
        req_respond(r, rp->status, out, hdr);
        evbuffer_free(out);
        free(rp->body);
        req_mark_answered(r);
        req_release(r);
        return -1;
    }
    case GW_IDEM_MISMATCH:
        md_error_set(&e, MD_E_IDEM_REUSED, NULL,
                     "Idempotency-Key '%.*s' was already used with a different request "
                     "(method, path, query or body); use a new key for a new request",
                     (int)(klen > 64 ? 64 : klen), k);
        req_fail_now(r, &e, NULL);
        return -1;
    case GW_IDEM_BUSY:
        md_error_set(&e, MD_E_IDEM_BUSY, NULL,
                     "a request with Idempotency-Key '%.*s' is still in progress; retry shortly",
                     (int)(klen > 64 ? 64 : klen), k);
        req_fail_now(r, &e, "Retry-After: 1\r\n");
        return -1;
    case GW_IDEM_UNAVAILABLE:
        md_error_set(&e, MD_E_UNAVAILABLE, NULL,
                     "the shared Idempotency-Key store (control.redis) is unavailable: the write "
                     "was not run; retry shortly");
        req_fail_now(r, &e, "Retry-After: 1\r\n");
        return -1;
    default:
        md_error_set(&e, MD_E_UNAVAILABLE, NULL,
                     "the Idempotency-Key store is full of requests in progress "
                     "(idempotency.max_entries); retry shortly");
        req_fail_now(r, &e, "Retry-After: 1\r\n");
        return -1;
    }
}

static enum gw_msi msi_of(enum gw_idem_rc rc)
{
    switch (rc) {
    case GW_IDEM_NEW:
        return GW_MSI_CLAIMED;
    case GW_IDEM_REPLAY:
        return GW_MSI_REPLAYED;
    case GW_IDEM_MISMATCH:
        return GW_MSI_MISMATCH;
    case GW_IDEM_BUSY:
        return GW_MSI_BUSY;
    default:
        return GW_MSI_UNAVAILABLE;
    }
}

/* The shared store's answer to a claim (gw_idem_begin_shared). */
static void idem_claimed(void *arg, enum gw_idem_rc rc, struct gw_idem *held,
                         struct gw_idem_replay *rp)
{
    struct gw_req *r = arg;
    req_mark_completed(r);
    gw_metrics_shared_idem(r->w->id, msi_of(rc));
    r->idem = held;        /* released with the request if it goes no further */
    if (!req_is_open(r)) { /* shutting down */
        free(rp->body);
        req_release(r);
        return;
    }
    if (rc == GW_IDEM_NEW) {
        data_run(r);
        return;
    }
    size_t klen = 0;
    const char *k = gw_http_header(r->http, "idempotency-key", &klen);
    (void)idem_refused(r, rc, rp, k, klen);
}

/* The deadline of a request on domain d (req_submit's). */
static int64_t request_timeout(const struct gw_req *r, const struct cf_domain *d)
{
    return d->timeout_ms > 0 ? d->timeout_ms : r->cf->limits.request_timeout_ms;
}

/* Idempotency-Key on a write (gw_idempotency.h): 0 to run the request (the
 * key is held in r->idem, or there is none), 1 when the fleet's shared
 * store was asked (idem_claimed goes on), -1 when answered here. */
static int idem_begin(struct gw_req *r, struct gw_http_req *hr, const struct cf_domain *d)
{
    size_t klen = 0;
    const char *k = gw_http_header(hr, "idempotency-key", &klen);
    if (k == NULL) {
        return 0;
    }
    struct md_error e = {0};
    e.domain = d->name;
    if (gw_idem_key_valid(k, klen) < 0) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL,
                     "Idempotency-Key must be 1 to 255 visible ASCII characters");
        req_fail_now(r, &e, NULL);
        return -1;
    }
    uint64_t fp[2];
    size_t blen = evbuffer_get_length(hr->body);
    const char *b = blen > 0 ? (const char *)evbuffer_pullup(hr->body, -1) : "";
    gw_idem_fingerprint(hr->method_name, hr->path, hr->query, b, blen, fp);
    struct gw_idem_replay rp = {0};
    enum gw_idem_rc rc;
    if (r->w->shared != NULL) {
        /* the wait is bounded by the request's deadline; a claim outlives
         * every deadline the request can still meet (a guard's lookups, the
         * write, a slot frozen by a rebalance) */
        int64_t tmo = request_timeout(r, d);
        if (gw_idem_begin_shared(r->w->shared, idem_scope(r), k, klen, fp, tmo, 4 * tmo + 10000,
                                 idem_claimed, r) == 0) {
            req_set_state(r, REQ_SUBMITTED); /* the shared store owes the answer */
            return 1;
        }
        rc = GW_IDEM_UNAVAILABLE;
        gw_metrics_shared_idem(r->w->id, GW_MSI_UNAVAILABLE);
    } else {
        rc = gw_idem_begin(idem_scope(r), k, klen, fp, lb_now_ms(), &r->idem, &rp);
    }
    return rc == GW_IDEM_NEW ? 0 : idem_refused(r, rc, &rp, k, klen);
}

/* A create without an id under an Idempotency-Key gets an id derived from
 * the key: a retry of a create that landed cannot create a second item. */
static void idem_derive_key(struct gw_req *r, struct gw_http_req *hr, const struct cf_domain *d,
                            struct json_object *body)
{
    struct json_object *kv = NULL;
    if (!json_object_is_type(body, json_type_object) ||
        (json_object_object_get_ex(body, d->key, &kv) && kv != NULL)) {
        return;
    }
    size_t klen = 0;
    const char *k = gw_http_header(hr, "idempotency-key", &klen);
    char id[33];
    gw_idem_derive_id(idem_scope(r), d->name, k, klen, id);
    json_object_object_add(body, d->key, json_object_new_string(id));
}

/* A _batch that is not a POST of JSON, once its token is taken. */
static void batch_refused(struct gw_req *r)
{
    struct md_error e = {0};
    struct json_object *doc;
    if (r->http->method != GW_POST) {
        md_error_set(&e, MD_E_METHOD, NULL, "_batch takes POST");
        req_fail_now(r, &e, "Allow: POST\r\n");
    } else if (req_parse_body(r, r->http, &doc, &e) < 0) {
        req_fail_now(r, &e, NULL);
    } else { /* parsed before; cannot differ */
        req_handle_batch(r, doc);
    }
}

void req_handle_data(struct gw_req *r, struct gw_http_req *hr)
{
    struct md_error e = {0};
    char hdr[128] = "";
    const char *rest = hr->path + 4; /* after "/v1/" */
    if (strcmp(rest, "_batch") == 0) {
        struct json_object *doc;
        if (hr->method != GW_POST || req_parse_body(r, hr, &doc, &e) < 0) {
            req_charge(r, 1, batch_refused); /* a refused batch pays one token */
            return;
        }
        req_handle_batch(r, doc);
        return;
    }
    const char *slash = strchr(rest, '/');
    size_t dlen = slash != NULL ? (size_t)(slash - rest) : strlen(rest);
    const struct cf_domain *d = cf_domain_find(r->cf, rest, dlen);
    if (r->caller != NULL) {
        /* before any check that depends on the domain (methods, routes):
         * a caller without a grant on it learns nothing about it */
        char dn[72]; /* an unknown name, only for the message (cut there anyway) */
        snprintf(dn, sizeof(dn), "%.*s", (int)(dlen > 64 ? 64 : dlen), rest);
        if (!gw_auth_sees(r->caller, d != NULL ? d->name : dn, d != NULL, &e)) {
            req_fail_now(r, &e, NULL);
            return;
        }
    }
    if (d == NULL) {
        md_error_set(&e, MD_E_UNKNOWN_DOMAIN, NULL, "unknown domain '%.*s'",
                     (int)(dlen > 64 ? 64 : dlen), rest);
        req_fail_now(r, &e, NULL);
        return;
    }
    e.domain = d->name;
    enum ad_op op;
    const char *key = NULL;
    size_t keylen = 0;
    int item = 0;
    if (slash == NULL) {
        if (hr->method != GW_POST) {
            md_error_set(&e, MD_E_METHOD, NULL,
                         "%s /v1/%s is not a route: use POST to insert, or /v1/%s/{%s}",
                         hr->method_name, d->name, d->name, d->key);
            req_fail_now(r, &e, "Allow: POST\r\n");
            return;
        }
        op = AD_INSERT;
    } else if (strcmp(slash + 1, "_query") == 0 || strcmp(slash + 1, "_aggregate") == 0) {
        op = slash[2] == 'q' ? AD_QUERY : AD_AGGREGATE;
        if (hr->method != GW_POST) {
            md_error_set(&e, MD_E_METHOD, NULL, "%s takes POST", slash + 1);
            req_fail_now(r, &e, "Allow: POST\r\n");
            return;
        }
    } else {
        item = 1;
        key = slash + 1;
        keylen = hr->path_len - (size_t)(key - hr->path);
        switch (hr->method) {
        case GW_GET:
        case GW_HEAD:
            op = AD_GET;
            break;
        case GW_PUT:
            op = AD_PUT;
            break;
        case GW_PATCH:
            op = AD_PATCH;
            break;
        case GW_DELETE:
            op = AD_DELETE;
            break;
        default: {
            char abuf[ALLOW_MAX];
            const char *allow = allow_for(gw_worker_adapter(r->w, d->backend), d, 1, abuf);
            snprintf(hdr, sizeof(hdr), "Allow: %s\r\n", allow);
            md_error_set(&e, MD_E_METHOD, NULL, "%s is not supported on /v1/%s/{%s}; allowed: %s",
                         hr->method_name, d->name, d->key, allow);
            req_fail_now(r, &e, hdr);
            return;
        }
        }
    }
    unsigned perm =
        op == AD_GET || op == AD_QUERY || op == AD_AGGREGATE ? CF_PERM_READ : CF_PERM_WRITE;
    if (!gw_auth_allows(r->caller, d->name, perm, 1, &e)) {
        req_fail_now(r, &e, NULL);
        return;
    }
    if (!req_method_allowed(r, d, op, item, &e, hdr, sizeof(hdr))) {
        req_fail_now(r, &e, hdr[0] ? hdr : NULL);
        return;
    }
    size_t imlen;
    const char *im = gw_http_header(hr, "if-match", &imlen);
    if (im != NULL && parse_if_match(im, imlen, &r->ad.if_match) < 0) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL,
                     "If-Match must be a version number as returned in ETag (e.g. \"3\")");
        req_fail_now(r, &e, NULL);
        return;
    }
    r->next_op = (int)op;
    r->next_domain = d;
    r->next_key = key;
    r->next_keylen = keylen;
    if (op != AD_GET && op != AD_QUERY && op != AD_AGGREGATE && idem_begin(r, hr, d) != 0) {
        return; /* answered (replayed, or refused), or the shared store was asked */
    }
    data_run(r);
}

/* The rest of a data request, once its Idempotency-Key (if any) is held. */
static void data_run(struct gw_req *r)
{
    struct gw_http_req *hr = r->http;
    const struct cf_domain *d = r->next_domain;
    enum ad_op op = (enum ad_op)r->next_op;
    struct md_error e = {0};
    e.domain = d->name;
    struct json_object *body = NULL;
    if (op == AD_PUT || op == AD_INSERT || op == AD_PATCH || op == AD_QUERY || op == AD_AGGREGATE) {
        if (req_parse_body(r, hr, &body, &e) < 0) {
            req_fail_now(r, &e, NULL);
            return;
        }
    }
    if (r->idem != NULL && op == AD_INSERT && d->key_generated) {
        idem_derive_key(r, hr, d, body);
    }
    if (d->shard_key != NULL && shard_key_param(r, hr, d, &e) < 0) {
        json_object_put(body);
        req_fail_now(r, &e, NULL);
        return;
    }
    if (req_env_prepare(r, op, d, r->next_key, r->next_keylen, body, &e) < 0) {
        req_fail_now(r, &e, NULL);
        return;
    }
    req_start(r);
}
