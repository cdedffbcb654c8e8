/*
 * gw_req_fanout.c — parents and their children: a request on a sharded
 * domain fanned out to several shards (scatter), the uniqueness check before
 * a write that names its key (guard), how a parent (scatter, guard, _batch,
 * /ready) counts and finishes its children, and the gate a request passes on
 * a backend whose slots are being moved (live_gate).
 */
#include "gateway/gw_req_private.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "config/cf_config.h"
#include "gateway/gw_control.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_route.h"
#include "gateway/gw_scatter.h"
#include "gateway/gw_worker.h"
#include "lib/lb_json.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "model/md_error.h"
#include "model/md_query.h"
#include "routing/rt_live.h"

static void req_scatter_finish(struct gw_req *p);
static void req_guard_finish(struct gw_req *g);

void req_parent_finish(struct gw_req *p)
{
    if (p->kind == REQ_SCATTER) {
        req_scatter_finish(p);
        return;
    }
    if (p->kind == REQ_GUARD) {
        req_guard_finish(p);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (p->kind == REQ_BATCH) {
        struct json_object *doc = json_object_new_object();
        json_object_object_add(doc, "results", json_object_get(p->results));
        lb_json_write(b, doc);
        json_object_put(doc);
        req_respond(p, 200, b, NULL);
    } else {
        req_ready_verdict(p);
        struct json_object *doc = json_object_new_object();
        json_object_object_add(doc, "ready", json_object_new_boolean(p->nfail == 0));
        if (p->detailed) { /* backends, shards, errors: the admin listener only */
            json_object_object_add(doc, "backends", json_object_get(p->results));
            /* the control store never fails /ready: instances serve their last maps */
            json_object_object_add(doc, "control", gw_control_status_json(p->cf));
        }
        lb_json_write(b, doc);
        json_object_put(doc);
        req_respond(p, p->nfail == 0 ? 200 : 503, b, NULL);
    }
    evbuffer_free(b);
    req_mark_answered(p);
}

/* A parent counts one more child than it has while it starts them, so that
 * children completing synchronously cannot finish (and free) it mid-loop;
 * the starter then takes that extra step itself. */
void req_parent_step(struct gw_req *p)
{
    p->ndone++;
    if (p->ndone == p->nchild) {
        /* a /ready answered at READY_WAIT_MS is done; a guard always hands
         * its write back */
        int answered_ready = p->kind == REQ_READY && req_is_answered(p);
        if (!answered_ready && (!req_is_abandoned(p) || p->kind == REQ_GUARD)) {
            req_parent_finish(p);
        }
        req_release(p);
    }
}

void req_parent_child_done(struct gw_req *child, int status, struct json_object *entry)
{
    struct gw_req *p = child->parent;
    if (p->kind == REQ_READY) {
        if (req_is_answered(p)) { /* judged already; this outcome updated the breaker */
            json_object_put(entry);
            req_parent_step(p);
            return;
        }
        struct json_object *slot = json_object_array_get_idx(p->results, (size_t)child->index);
        json_object_object_add(slot, "ok", json_object_new_boolean(status < 300));
        struct json_object *err = NULL;
        if (status >= 300 && json_object_object_get_ex(entry, "error", &err)) {
            struct json_object *m = NULL;
            json_object_object_get_ex(err, "message", &m);
            json_object_object_add(slot, "error", json_object_get(m));
        }
        json_object_put(entry);
        if (status >= 300) {
            p->nfail++;
        }
        if (p->ready_late && p->ndone + 1 < p->nchild && !req_is_abandoned(p) &&
            !req_ready_unknown_pending(p)) {
            req_parent_finish(p); /* the rest is known: do not wait for their pings */
        }
    } else {
        req_batch_entry(p, child, status, entry);
    }
    req_parent_step(p);
}

/* A request on a sharded domain that no single shard can serve: a _query /
 * _aggregate (scatter-gather, merged by gw_scatter.c), or a get / patch /
 * delete by id without the shard key.  The latter asks every shard in
 * parallel — N round trips, the latency of the slowest shard — and the shard
 * holding the id answers; pass ?<shard_key>= to make it one round trip.
 * Each child is an ordinary request on one shard with its own deadline. */
void req_scatter_start(struct gw_req *p)
{
    const struct cf_domain *d = p->ad.domain;
    size_t n = d->backend->nshards;
    unsigned char *mask = lb_xmalloc(n + 1);
    size_t k = n;
    if (p->query != NULL) {
        k = gw_route_where(d, p->query->where, mask);
        p->sg = gw_scatter_new(d, p->query, k); /* the plan owns the query from now on */
        p->query = NULL;
    } else {
        memset(mask, 1, n);
    }
    p->kind = REQ_SCATTER;
    p->nqueried = (int)k;
    p->nchild = (int)k + 1;
    for (size_t i = 0; i < n; i++) {
        if (!mask[i]) {
            continue;
        }
        struct gw_req *c = req_new(p->w, REQ_ONE);
        c->parent = p;
        c->index = (int)i;
        c->caller = p->caller;
        c->ad.op = p->ad.op;
        c->ad.domain = d;
        c->ad.shard = (int)i;
        c->ad.slot = -1;
        c->ad.if_match = p->ad.if_match;
        if (p->key != NULL) {
            c->key = lb_xstrdup(p->key);
            c->ad.key = c->key;
            c->ad.keylen = p->ad.keylen;
        }
        c->body = json_object_get(p->body);
        c->ad.body = c->body;
        if (p->sg != NULL) { /* the child holds the plan its query lives in */
            c->sg = gw_scatter_ref(p->sg);
            c->ad.query = gw_scatter_query(p->sg);
        }
        for (size_t x = 0; x < p->nexcl; x++) { /* rows this shard holds but does not own */
            if (p->excl[x].shard == (int32_t)i) {
                c->excl_slots[c->scope.nexcl++] = p->excl[x].slot;
            }
        }
        c->scope.excl_slots = c->excl_slots;
        c->ad.scope = c->scope.nexcl > 0 ? &c->scope : NULL;
        c->rt = p->rt;
        if (c->rt != NULL) {
            c->rt->refs++;
        }
        req_submit(c);
    }
    free(mask);
    req_parent_step(p);
}

/* A child's answer as a tree (a reference to release), or NULL. */
static struct json_object *res_doc(const struct ad_res *res)
{
    struct json_object *doc = NULL;
    char msg[64];
    if (res->raw == NULL) {
        return json_object_get(res->item);
    }
    if (lb_json_parse_stored(res->raw, res->rawlen, 1000, &doc, msg, sizeof(msg)) != LB_JSON_OK) {
        return NULL;
    }
    return doc;
}

static int is_server_error(enum md_err e)
{
    return md_err_status(e) >= 500;
}

void req_scatter_child_done(struct gw_req *c, const struct ad_res *res, const struct md_error *ge)
{
    struct gw_req *p = c->parent;
    const struct cf_domain *d = p->ad.domain;
    const char *shard = d->backend->shards[c->index].name; /* alive with p's config */
    if (ge == NULL && res->status == AD_DONE) {
        struct json_object *doc = p->sg == NULL ? res_doc(res) : NULL;
        struct gw_route rt;
        struct md_error ignored = {0};
        if (p->sg == NULL && p->nexcl > 0 && doc != NULL &&
            gw_route_item(d, doc, &rt, &ignored) == 0 &&
            rt_live_excluded(p->excl, p->nexcl, c->index, (int32_t)rt.slot)) {
            /* a copy on a shard that does not own its slot (rt_live.h): not the item */
        } else if (p->sg != NULL) {
            gw_scatter_add(p->sg, (size_t)c->index, res->rows, res->last != NULL);
        } else if (p->nfound++ == 0) {
            p->found = json_object_get(doc);
            p->found_status = req_ok_status(c, res);
            p->found_version = res->version;
        } else {
            lb_warn("request %s: %s '%s' exists on more than one shard of '%s'", p->rid, d->key,
                    p->key != NULL ? p->key : "?", d->name);
        }
        json_object_put(doc);
    } else {
        struct md_error e = {0};
        if (ge != NULL) {
            e = *ge;
        } else {
            const struct cf_field *f = res->field != NULL ? cf_field_find(d, res->field) : NULL;
            req_res_error(c, res, f != NULL ? f->name : NULL, &e);
        }
        e.domain = d->name;
        e.shard = is_server_error(e.err) ? shard : NULL;
        if (p->sg != NULL) {
            gw_scatter_fail(p->sg, (size_t)c->index, &e);
        } else if (e.err != MD_E_NOT_FOUND &&
                   (!p->have_ferr || (is_server_error(p->ferr.err) && !is_server_error(e.err)))) {
            p->ferr = e; /* a 412/409 of the shard holding the id beats a 503 */
            p->have_ferr = 1;
        }
    }
    req_parent_step(p);
}

static void req_scatter_finish(struct gw_req *p)
{
    const struct cf_domain *d = p->ad.domain;
    char hdr[96];
    snprintf(hdr, sizeof(hdr), "X-Shards-Queried: %d\r\n", p->nqueried);
    struct json_object *doc = NULL;
    struct md_error e = {0};
    int failed = 0, status = 200;
    int64_t version = -1;
    if (p->sg == NULL) { /* an item looked up on every shard */
        gw_metrics_scatter(p->w->id, gw_metrics_domain_lookup(d->name), p->nqueried, 0);
    }
    if (p->sg != NULL) {
        failed = gw_scatter_finish(p->sg, &doc, &e) < 0;
        struct json_object *pv = NULL;
        gw_metrics_scatter(p->w->id, gw_metrics_domain_lookup(d->name), p->nqueried,
                           !failed && json_object_object_get_ex(doc, "partial", &pv) &&
                               json_object_get_boolean(pv));
    } else if (p->nfound > 0) {
        status = p->found_status;
        doc = json_object_get(p->found);
        version = p->found_version;
    } else if (p->have_ferr) {
        failed = 1;
        e = p->ferr;
    } else {
        failed = 1;
        md_error_set(&e, MD_E_NOT_FOUND, NULL, "no %s item with %s '%s' (on any of %d shards)",
                     d->name, d->key, p->key != NULL ? p->key : "?", p->nqueried);
    }
    e.domain = d->name;
    req_mark_answered(p);
    if (p->parent != NULL) { /* a batch item */
        struct json_object *entry = json_object_new_object();
        if (failed) {
            status = md_err_status(e.err);
            json_object_object_add(entry, "error", md_error_json(&e, p->parent->rid));
        } else if (doc != NULL && status != 204) {
            json_object_object_add(entry, "item", json_object_get(doc));
        }
        json_object_put(doc);
        req_parent_child_done(p, status, entry);
        return;
    }
    if (failed) {
        req_respond_error(p, &e, hdr);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (status != 204) {
        if (doc != NULL) {
            lb_json_write(b, doc);
        } else {
            evbuffer_add(b, "{}", 2);
        }
    }
    json_object_put(doc);
    if (req_response_too_large(p, b)) {
        evbuffer_free(b);
        return;
    }
    if (version >= 0) {
        size_t l = strlen(hdr);
        snprintf(hdr + l, sizeof(hdr) - l, "ETag: \"%" PRId64 "\"\r\n", version);
    }
    req_respond(p, status, b, hdr);
    evbuffer_free(b);
}

/* A PUT, or a create naming its key, on a sharded domain goes to the shard
 * of its shard key — but the key must be unique in the whole domain, and
 * another shard may hold it under another shard key (a PUT that changes an
 * order's customer_id, or a client reusing an id).  Before the write, every
 * shard is asked for the key (in parallel, by primary key; the write's own
 * shard too, since a shard holds several shard keys): found under a
 * different shard key → 409 naming the shard (a write never changes an
 * item's shard key, as a PATCH cannot); found under the same shard key →
 * the same item (on another shard: a copy while its slot moves, rt_live.h),
 * not a conflict; a shard that cannot answer → its 503/504, since the key
 * cannot be proven unused.  Two writers racing with the same new key on two
 * shards can both pass (no cross-shard lock); keys generated by polygate
 * never collide, which is why a create without a key skips all this. */
void req_guard_start(struct gw_req *r)
{
    const struct cf_domain *d = r->ad.domain;
    size_t n = d->backend->nshards;
    struct gw_req *g = req_new(r->w, REQ_GUARD);
    if (g == NULL) {
        req_submit(r);
        return;
    }
    snprintf(g->rid, sizeof(g->rid), "%s", req_top_rid(r));
    g->guarded = r;
    g->ad.domain = d;
    g->found_shard = -1;
    req_set_state(r, REQ_SUBMITTED); /* r waits for its guard */
    g->nchild = (int)n + 1;          /* n children, + 1 while starting them (req_parent_step) */
    for (size_t i = 0; i < n; i++) {
        struct gw_req *c = req_new(r->w, REQ_ONE);
        c->parent = g;
        c->index = (int)i;
        c->caller = r->caller;
        c->ad.op = AD_GET;
        c->ad.domain = d;
        c->ad.shard = (int)i;
        c->ad.slot = -1;
        c->key = lb_xstrdup(r->key);
        c->ad.key = c->key;
        c->ad.keylen = r->ad.keylen;
        c->rt = r->rt;
        if (c->rt != NULL) {
            c->rt->refs++;
        }
        req_submit(c);
    }
    req_parent_step(g);
}

static int same_value(struct json_object *a, struct json_object *b)
{
    return a != NULL && b != NULL &&
           strcmp(json_object_get_string(a), json_object_get_string(b)) == 0;
}

void req_guard_child_done(struct gw_req *c, const struct ad_res *res, const struct md_error *ge)
{
    struct gw_req *g = c->parent;
    const struct cf_domain *d = g->ad.domain;
    if (ge == NULL && res->status == AD_DONE) {
        struct json_object *doc = res_doc(res);
        struct json_object *theirs = doc != NULL ? json_object_object_get(doc, d->shard_key) : NULL;
        struct json_object *mine = json_object_object_get(g->guarded->body, d->shard_key);
        if (!same_value(theirs, mine) && g->found == NULL) {
            g->found = theirs != NULL ? json_object_get(theirs) : json_object_new_null();
            g->found_shard = c->index;
        }
        json_object_put(doc);
    } else if (ge != NULL || res->status != AD_NOT_FOUND) {
        struct md_error e = {0};
        if (ge != NULL) {
            e = *ge;
        } else {
            req_res_error(c, res, NULL, &e);
        }
        if (!g->have_ferr) {
            g->ferr = e;
            g->ferr.shard = d->backend->shards[c->index].name;
            g->have_ferr = 1;
            g->retry_after_s = c->retry_after_s;
        }
    }
    req_parent_step(g);
}

static void req_guard_finish(struct gw_req *g)
{
    struct gw_req *r = g->guarded;
    const struct cf_domain *d = r->ad.domain;
    req_mark_answered(g);
    req_mark_completed(r);
    if (!req_is_open(r)) {
        req_release(r);
        return;
    }
    struct md_error e = {0};
    e.domain = d->name;
    if (g->found != NULL) {
        md_error_set(&e, MD_E_CONFLICT, d->key,
                     "%s '%.128s' already exists on shard '%s' under %s '%.128s': a write cannot "
                     "change an item's %s (delete it and create it again)",
                     d->key, r->key, d->backend->shards[g->found_shard].name, d->shard_key,
                     json_object_get_string(g->found), d->shard_key);
    } else if (g->have_ferr) {
        md_error_set(&e, g->ferr.err, NULL,
                     "cannot check that %s '%.128s' is not used on shard '%s': %s", d->key, r->key,
                     g->ferr.shard, g->ferr.message);
        e.shard = g->ferr.shard;
        r->retry_after_s = g->retry_after_s;
    } else {
        req_submit(r);
        return;
    }
    req_deliver(r, NULL, &e);
    req_release(r);
}

static void hold_cb(evutil_socket_t fd, short what, void *arg)
{
    struct gw_req *r = arg;
    (void)fd;
    (void)what;
    if (req_is_abandoned(r)) {
        req_release(r);
        return;
    }
    req_start(r);
}

/* Take the request's ticket on the live slot table (rt_live.h): the owner of
 * its slot now, the exclusions for a fan-out, the epoch.  A write to a frozen
 * slot waits (re-tried every 2 ms) up to the request deadline, then 503.
 * 0: go on; -1: held or answered. */
static int live_gate(struct gw_req *r)
{
    const struct cf_domain *d = r->ad.domain;
    struct rt_live *l = d != NULL && d->backend != NULL ? d->backend->live : NULL;
    if (l == NULL || r->ticket.active) {
        return 0;
    }
    enum ad_op op = r->ad.op;
    int write = op == AD_PUT || op == AD_INSERT || op == AD_PATCH || op == AD_DELETE;
    int32_t slot = r->fanout ? -1 : r->ad.slot;
    int shard = r->ad.shard;
    if (rt_live_begin(l, slot, write, &shard, r->excl, &r->nexcl, &r->ticket) == 0) {
        r->live = rt_live_ref(l);
        r->ad.shard = shard;
        return 0;
    }
    uint64_t now = lb_now_ms();
    if (r->hold_ev == NULL) {
        int64_t tmo = d->timeout_ms > 0 ? d->timeout_ms : r->cf->limits.request_timeout_ms;
        r->hold_deadline_ms = now + (uint64_t)tmo;
        r->hold_ev = evtimer_new(r->w->base, hold_cb, r);
    }
    if (now >= r->hold_deadline_ms) {
        struct md_error e = {0};
        md_error_set(&e, MD_E_UNAVAILABLE, NULL,
                     "slot %d of domain '%s' is being moved to another shard; retry", (int)slot,
                     d->name);
        e.domain = d->name;
        req_deliver(r, NULL, &e);
        req_release(r);
        return -1;
    }
    struct timeval tv = {0, 2000};
    evtimer_add(r->hold_ev, &tv);
    return -1;
}

/* Start a prepared request: one shard, or a fan-out. */
void req_start(struct gw_req *r)
{
    if (live_gate(r) < 0) {
        return;
    }
    if (r->fanout) {
        req_scatter_start(r);
    } else if (r->guard) {
        req_guard_start(r);
    } else {
        req_submit(r);
    }
}
