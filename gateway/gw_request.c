/*
 * gw_request.c — where a request enters: gw_request_handle (the data
 * listener), the checks every request passes first (limits, draining,
 * authentication), and the worker's shutdown and drain hooks.
 *
 * The rest of the request path is split by concern, sharing
 * gw_req_private.h: gw_req_life.c (lifecycle, submit, deadline, answers),
 * gw_req_rest.c (REST routes and envelopes), gw_req_fanout.c (scatter,
 * guard, parents, the rebalance gate), gw_req_batch.c (_batch),
 * gw_req_ready.c (/ready) and gw_admin.c (the admin listener).
 */
#include "gateway/gw_request.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/cf_config.h"
#include "gateway/gw_auth.h"
#include "gateway/gw_http.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_req_private.h"
#include "gateway/gw_worker.h"
#include "lib/lb_util.h"
#include "model/md_error.h"
#include "routing/rt_live.h"

static void set_request_id(struct gw_req *r, const struct gw_http_req *hr)
{
    size_t len = 0;
    const char *v = gw_http_header(hr, "x-request-id", &len);
    if (v != NULL && len > 0 && len <= 128) {
        size_t i;
        for (i = 0; i < len; i++) {
            unsigned char c = (unsigned char)v[i];
            if (!isalnum(c) && c != '-' && c != '_' && c != '.' && c != ':') {
                break;
            }
        }
        if (i == len) {
            memcpy(r->rid, v, len);
            r->rid[len] = '\0';
            return;
        }
    }
    lb_gen_id(r->rid);
}

struct gw_req *req_begin(struct gw_worker *w, struct gw_http_req *hr)
{
    struct gw_req *r = req_new(w, REQ_ONE);
    if (r == NULL) {
        gw_http_respond(hr, 503, "application/json", NULL, NULL);
        return NULL;
    }
    r->http = hr;
    r->counted = 1;
    r->t0_us = gw_metrics_now_us();
    set_request_id(r, hr);
    int n = __atomic_add_fetch(&req_inflight_total, 1, __ATOMIC_RELAXED);
    if (n > r->cf->limits.max_inflight) {
        struct md_error e = {0};
        md_error_set(&e, MD_E_UNAVAILABLE, NULL,
                     "polygate is at its limit of %d requests in flight; retry shortly",
                     r->cf->limits.max_inflight);
        req_fail_now(r, &e, "Retry-After: 1\r\n");
        return NULL;
    }
    if (w->draining) {
        struct md_error e = {0};
        md_error_set(&e, MD_E_SHUTTING_DOWN, NULL, "polygate is shutting down");
        req_fail_now(r, &e, NULL);
        return NULL;
    }
    return r;
}

/* A 429 of the rate limit. */
static void rate_limited(struct gw_req *r, const struct md_error *e, int64_t retry)
{
    char hdr[48];
    snprintf(hdr, sizeof(hdr), "Retry-After: %lld\r\n", (long long)retry);
    req_fail_now(r, e, hdr);
}

/* Who is calling, and `cost` tokens of its rate limit taken in this
 * instance's bucket; answers and returns -1 when refused. */
static int identify(struct gw_req *r, struct gw_http_req *hr, double cost)
{
    struct md_error e = {0};
    int64_t retry = 0;
    if (gw_auth_check(r->cf, hr, cost, &r->caller, &e, &retry) < 0) {
        if (e.err == MD_E_RATE_LIMITED) {
            rate_limited(r, &e, retry);
        } else {
            req_fail_now(r, &e, "WWW-Authenticate: Bearer realm=\"polygate\"\r\n");
        }
        return -1;
    }
    return 0;
}

/* After the rate limit: the admin permission, and the key's operations in
 * flight (need_perm 0: the data listener). */
static int admit(struct gw_req *r, unsigned need_perm)
{
    struct md_error e = {0};
    if (need_perm != 0 && r->caller != NULL && !(cf_auth_perms(r->caller, "*") & need_perm)) {
        md_error_set(&e, MD_E_FORBIDDEN, NULL, "key '%s' is not an admin key", r->caller->name);
        req_fail_now(r, &e, NULL);
        return -1;
    }
    if (need_perm == 0 && gw_auth_inflight_acquire(r->caller, r->cf->limits.max_inflight_per_key, 1,
                                                   &r->held, &e) < 0) {
        req_fail_now(r, &e, "Retry-After: 1\r\n");
        return -1;
    }
    r->nheld = 1;
    return 0;
}

/* Authenticate (and rate-limit) the caller now, in this instance's bucket
 * (the admin listener: operators' calls do not depend on the fleet's
 * store); answers and returns -1 when refused. */
int req_authenticate(struct gw_req *r, struct gw_http_req *hr, unsigned need_perm)
{
    /* a _batch pays one token per operation once its size is known */
    double cost = need_perm == 0 && strcmp(hr->path, "/v1/_batch") == 0 ? 0 : 1;
    if (identify(r, hr, cost) < 0) {
        return -1;
    }
    return admit(r, need_perm);
}

/* How long a rate-limit decision waits for the shared store before the
 * instance's own bucket decides instead: the check must not cost a request
 * its deadline. */
#define SHARED_RATE_WAIT_MS 250

static void charged(void *arg, int rc, const struct md_error *e, int64_t retry,
                    enum gw_rate_source src)
{
    struct gw_req *r = arg;
    req_mark_completed(r);
    gw_metrics_shared_rate(r->w->id, src == GW_RATE_LOCAL, rc == 0);
    if (!req_is_open(r)) { /* shutting down */
        req_release(r);
    } else if (rc < 0) {
        rate_limited(r, e, retry);
    } else {
        r->next(r);
    }
}

void req_charge(struct gw_req *r, double cost, void (*next)(struct gw_req *r))
{
    struct md_error e = {0};
    int64_t retry = 0;
    int rc;
    if (cost <= 0) {
        rc = 0;
    } else if (r->w->shared == NULL) {
        rc = gw_auth_charge(r->caller, cost, &e, &retry);
    } else {
        enum gw_rate_source src;
        int64_t wait = r->cf->limits.request_timeout_ms;
        r->next = next;
        rc = gw_auth_charge_shared(r->w->shared, r->caller, cost,
                                   wait < SHARED_RATE_WAIT_MS ? wait : SHARED_RATE_WAIT_MS, charged,
                                   r, &e, &retry, &src);
        if (rc == 1) {
            req_set_state(r, REQ_SUBMITTED); /* the shared store owes the answer */
            return;
        }
        if (src != GW_RATE_NONE) {
            gw_metrics_shared_rate(r->w->id, src == GW_RATE_LOCAL, rc == 0);
        }
    }
    if (rc < 0) {
        rate_limited(r, &e, retry);
        return;
    }
    next(r);
}

void req_not_found(struct gw_req *r, struct gw_http_req *hr)
{
    struct md_error e = {0};
    md_error_set(&e, MD_E_NOT_FOUND, NULL, "no route for %s %.200s", hr->method_name, hr->path);
    req_fail_now(r, &e, NULL);
}

/* A caller known, charged and admitted: its route. */
static void dispatch(struct gw_req *r)
{
    struct gw_http_req *hr = r->http;
    if (admit(r, 0) < 0) {
        return;
    }
    if (strncmp(hr->path, "/v1/", 4) == 0) {
        req_handle_data(r, hr);
    } else if (strcmp(hr->path, "/ready") == 0) {
        req_handle_ready(r, 0);
    } else {
        req_not_found(r, hr);
    }
}

void gw_request_handle(struct gw_http_req *hr, void *arg)
{
    struct gw_worker *w = arg;
    struct gw_req *r = req_begin(w, hr);
    if (r == NULL) {
        return;
    }
    if (strcmp(hr->path, "/health") == 0) {
        r->mop = GW_MOP_HEALTH;
        req_simple_json(r, 200, "{\"status\":\"ok\"}");
        return;
    }
    /* a _batch pays one token per operation once its size is known */
    if (identify(r, hr, 0) == 0) {
        req_charge(r, strcmp(hr->path, "/v1/_batch") == 0 ? 0 : 1, dispatch);
    }
}

void gw_requests_abandon(struct gw_worker *w)
{
    /* Mark every request and take its backend reference away, so that the
     * worker's own unref in finish() is the last one and shuts the adapter
     * down: its pending completions then free the abandoned requests.  The
     * references are dropped after the walk, since dropping one may complete
     * (and free) requests. */
    size_t n = 0, cap = w->ninflight;
    struct gw_backend_rt **rts = cap ? lb_xcalloc(cap, sizeof(*rts)) : NULL;
    struct gw_req *r;
    TAILQ_FOREACH(r, &w->inflight, link)
    {
        req_mark_abandoned(r);
        if (r->rt != NULL && rts != NULL && n < cap) {
            rts[n++] = r->rt;
            r->rt = NULL;
        }
    }
    for (size_t i = 0; i < n; i++) {
        gw_backend_rt_unref(rts[i]);
    }
    free(rts);
}

void gw_requests_check_drained(struct gw_worker *w)
{
    /* requests are in creation order: the head is the oldest */
    struct gw_req *head = TAILQ_FIRST(&w->inflight);
    if (w->join_pending && (head == NULL || head->ad.id >= w->join_id)) {
        w->join_pending = 0;
        rt_live_worker_drained(w->join_live);
    }
}

void gw_requests_free_all(struct gw_worker *w)
{
    while (!TAILQ_EMPTY(&w->inflight)) {
        struct gw_req *r = TAILQ_FIRST(&w->inflight);
        if (r->http != NULL) {
            gw_http_respond(r->http, 503, "application/json", NULL, NULL);
            r->http = NULL;
        }
        req_free(r);
    }
}

const struct gw_worker_hooks gw_request_hooks = {
    .handle = gw_request_handle,
    .admin = gw_admin_handle,
    .abandon = gw_requests_abandon,
    .free_all = gw_requests_free_all,
    .check_drained = gw_requests_check_drained,
};
