/*
 * gw_req_batch.c — POST /v1/_batch: one child request per envelope, the
 * answers collected in order within limits.max_response_bytes.
 */
#include "gateway/gw_req_private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "config/cf_config.h"
#include "gateway/gw_auth.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_route.h"
#include "lib/lb_json.h"
#include "lib/lb_util.h"
#include "model/md_error.h"

/* A batch keeps each item's answer as the JSON text it will send, counted
 * against limits.max_response_bytes as it arrives: a read whose answer
 * would carry the batch past the bound is answered response_too_large in
 * its slot instead, so the batch never holds more than the bound (plus the
 * short answers of writes, which are always reported: they were applied). */
void req_batch_entry(struct gw_req *p, struct gw_req *child, int status, struct json_object *entry)
{
    json_object_object_add(entry, "status", json_object_new_int(status));
    struct evbuffer *tmp = evbuffer_new();
    lb_json_write(tmp, entry);
    size_t len = evbuffer_get_length(tmp);
    size_t max = p->cf->limits.max_response_bytes;
    enum ad_op op = child->ad.op;
    int read = op == AD_GET || op == AD_QUERY || op == AD_AGGREGATE;
    if (read && p->resp_bytes + len > max) {
        struct md_error e = {0};
        md_error_set(&e, MD_E_RESPONSE_TOO_LARGE, NULL,
                     "batch item %d: its answer (%zu bytes) would carry the batch past "
                     "limits.max_response_bytes (%zu); ask for it in another request",
                     child->index, len, max);
        e.domain = child->ad.domain != NULL ? child->ad.domain->name : NULL;
        json_object_put(entry);
        entry = json_object_new_object();
        json_object_object_add(entry, "error", md_error_json(&e, p->rid));
        json_object_object_add(entry, "status", json_object_new_int(md_err_status(e.err)));
        evbuffer_drain(tmp, len);
        lb_json_write(tmp, entry);
        len = evbuffer_get_length(tmp);
    }
    p->resp_bytes += len;
    json_object_put(entry);
    json_object_array_put_idx(p->results, (size_t)child->index,
                              lb_json_raw((const char *)evbuffer_pullup(tmp, -1), len));
    evbuffer_free(tmp);
}

static enum ad_op op_by_name(const char *s, int *ok)
{
    static const struct {
        const char *name;
        enum ad_op op;
    } ops[] = {
        {"get", AD_GET},       {"put", AD_PUT},     {"insert", AD_INSERT},      {"patch", AD_PATCH},
        {"delete", AD_DELETE}, {"query", AD_QUERY}, {"aggregate", AD_AGGREGATE}};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        if (strcmp(ops[i].name, s) == 0) {
            *ok = 1;
            return ops[i].op;
        }
    }
    *ok = 0;
    return AD_GET;
}

static void batch_child(struct gw_req *p, int index, struct json_object *env)
{
    struct gw_req *c = req_new(p->w, REQ_ONE);
    c->parent = p;
    c->index = index;
    c->caller = p->caller;
    struct md_error e = {0};
    struct json_object *v;
    const char *opname = NULL, *dname = NULL, *id = NULL;
    size_t idlen = 0;
    if (!json_object_is_type(env, json_type_object)) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL, "batch item %d must be an object", index);
        goto fail;
    }
    json_object_object_foreach(env, k, val)
    {
        (void)val;
        if (strcmp(k, "op") != 0 && strcmp(k, "domain") != 0 && strcmp(k, "id") != 0 &&
            strcmp(k, "body") != 0 && strcmp(k, "if_match") != 0 && strcmp(k, "shard_key") != 0) {
            md_error_set(&e, MD_E_BAD_REQUEST, NULL,
                         "batch item %d: unknown member '%s' (op, domain, id, body, if_match, "
                         "shard_key)",
                         index, k);
            goto fail;
        }
    }
    if (json_object_object_get_ex(env, "op", &v) && json_object_is_type(v, json_type_string)) {
        opname = json_object_get_string(v);
    }
    if (json_object_object_get_ex(env, "domain", &v) && json_object_is_type(v, json_type_string)) {
        dname = json_object_get_string(v);
    }
    if (json_object_object_get_ex(env, "id", &v)) {
        if (!json_object_is_type(v, json_type_string)) {
            md_error_set(&e, MD_E_BAD_REQUEST, NULL, "batch item %d: 'id' must be a string", index);
            goto fail;
        }
        id = json_object_get_string(v);
        idlen = (size_t)json_object_get_string_len(v);
    }
    if (json_object_object_get_ex(env, "shard_key", &v)) {
        if (!json_object_is_type(v, json_type_string) && !json_object_is_type(v, json_type_int)) {
            md_error_set(&e, MD_E_BAD_REQUEST, NULL,
                         "batch item %d: 'shard_key' must be the shard key's value", index);
            goto fail;
        }
        /* by its length: a string may hold \u0000 (gw_route_text refuses it) */
        const char *sk = json_object_get_string(v);
        c->skeylen = json_object_is_type(v, json_type_string)
                         ? (size_t)json_object_get_string_len(v)
                         : strlen(sk);
        c->skey = lb_xmalloc(c->skeylen + 1);
        memcpy(c->skey, sk, c->skeylen + 1);
    }
    if (json_object_object_get_ex(env, "if_match", &v)) {
        if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0) {
            md_error_set(&e, MD_E_BAD_REQUEST, NULL,
                         "batch item %d: 'if_match' must be a version number", index);
            goto fail;
        }
        c->ad.if_match = json_object_get_int64(v);
    }
    int ok;
    enum ad_op op = opname != NULL ? op_by_name(opname, &ok) : (ok = 0, AD_GET);
    if (!ok) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL,
                     "batch item %d: 'op' must be one of get, put, insert, patch, delete, query, "
                     "aggregate",
                     index);
        goto fail;
    }
    const struct cf_domain *d = dname != NULL ? cf_domain_find(c->cf, dname, strlen(dname)) : NULL;
    unsigned perm =
        op == AD_GET || op == AD_QUERY || op == AD_AGGREGATE ? CF_PERM_READ : CF_PERM_WRITE;
    if (dname != NULL && !gw_auth_allows(c->caller, dname, perm, d != NULL, &e)) {
        goto fail;
    }
    if (d == NULL) {
        md_error_set(&e, dname == NULL ? MD_E_BAD_REQUEST : MD_E_UNKNOWN_DOMAIN, NULL,
                     dname == NULL ? "batch item %d: 'domain' is required"
                                   : "batch item %d: unknown domain",
                     index);
        goto fail;
    }
    int needs_id = op == AD_GET || op == AD_PUT || op == AD_PATCH || op == AD_DELETE;
    if (needs_id && id == NULL) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL, "batch item %d: 'id' is required for %s", index,
                     opname);
        goto fail;
    }
    char hdr[96];
    if (!req_method_allowed(c, d, op, needs_id, &e, hdr, sizeof(hdr))) {
        goto fail;
    }
    struct json_object *body = NULL;
    if (json_object_object_get_ex(env, "body", &v)) {
        body = json_object_get(v);
    }
    if (req_env_prepare(c, op, d, needs_id ? id : NULL, idlen, body, &e) < 0) {
        goto fail;
    }
    req_start(c);
    return;
fail:
    req_deliver(c, NULL, &e);
    req_release(c);
}

static void batch_run(struct gw_req *r);

/* The envelopes of a batch document, and whether that many may run. */
static size_t batch_len(const struct gw_req *r, struct json_object *doc, int *valid)
{
    size_t n = json_object_is_type(doc, json_type_array) ? json_object_array_length(doc) : 0;
    *valid = n > 0 && n <= (size_t)r->cf->limits.max_batch;
    return n;
}

/* A _batch pays its rate-limit tokens here (req_authenticate() took none): one
 * per operation, or one for a batch refused before it ran (req_charge: the
 * batch runs once they are taken, in batch_run). */
void req_handle_batch(struct gw_req *r, struct json_object *doc)
{
    int valid;
    size_t n = batch_len(r, doc, &valid);
    r->body = doc; /* kept while the charge is decided */
    req_charge(r, (double)(valid ? n : 1), batch_run);
}

static void batch_run(struct gw_req *r)
{
    struct md_error e = {0};
    struct json_object *doc = r->body;
    r->body = NULL;
    int valid;
    size_t n = batch_len(r, doc, &valid);
    if (!json_object_is_type(doc, json_type_array)) {
        md_error_set(&e, MD_E_BAD_REQUEST, NULL, "_batch expects a JSON array of envelopes");
        json_object_put(doc);
        req_fail_now(r, &e, NULL);
        return;
    }
    if (!valid) {
        md_error_set(&e, n == 0 ? MD_E_BAD_REQUEST : MD_E_TOO_LARGE, NULL,
                     "_batch takes 1 to %d envelopes, got %zu", r->cf->limits.max_batch, n);
        json_object_put(doc);
        req_fail_now(r, &e, NULL);
        return;
    }
    if (r->held != NULL && n > 1) { /* one operation in flight each, all or nothing */
        struct gw_inflight *more = NULL;
        gw_auth_inflight_release(r->held, r->nheld);
        r->held = NULL;
        r->nheld = 0;
        if (gw_auth_inflight_acquire(r->caller, r->cf->limits.max_inflight_per_key, (int)n, &more,
                                     &e) < 0) {
            json_object_put(doc);
            req_fail_now(r, &e, "Retry-After: 1\r\n");
            return;
        }
        r->held = more;
        r->nheld = (int)n;
    }
    r->kind = REQ_BATCH;
    r->mop = GW_MOP_BATCH;
    r->results = json_object_new_array_ext((int)n);
    r->nchild = (int)n + 1;
    r->body = doc;
    for (size_t i = 0; i < n; i++) {
        batch_child(r, (int)i, json_object_array_get_idx(doc, i));
    }
    req_parent_step(r);
}
