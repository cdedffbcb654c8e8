/*
 * gw_req_ready.c — /ready: one ping per shard of every backend, answered
 * within READY_WAIT_MS from what is known.
 */
#include "gateway/gw_req_private.h"

#include <inttypes.h>
#include <stdio.h>

#include <event2/event.h>

#include "config/cf_config.h"
#include "gateway/gw_breaker.h"
#include "gateway/gw_metrics.h"
#include "gateway/gw_shard.h"
#include "gateway/gw_worker.h"
#include "lib/lb_util.h"

/* /ready waits this long for the shards' pings; a shard that has not
 * answered by then is judged from what is known (gw_breaker_healthy), so a
 * backend that is down (a connect that hangs, a server selection that waits)
 * cannot hold the answer.  Only a shard nothing is known about yet (no
 * outcome since start) is waited for, up to its ping's deadline. */
#define READY_WAIT_MS 100

/* Judge the shards whose pings are still out from their known state. */
void req_ready_verdict(struct gw_req *p)
{
    size_t n = json_object_array_length(p->results);
    for (size_t i = 0; i < n; i++) {
        struct json_object *slot = json_object_array_get_idx(p->results, i);
        if (json_object_object_get_ex(slot, "ok", NULL)) {
            continue;
        }
        struct json_object *mid = json_object_object_get(slot, "_mid");
        int id = mid != NULL ? json_object_get_int(mid) : -1;
        int ok = gw_breaker_healthy(id);
        json_object_object_add(slot, "ok", json_object_new_boolean(ok));
        if (!ok) {
            char msg[128];
            /* the time it really waited: READY_WAIT_MS, or longer when a
             * shard nothing was known about held the answer (ready_late) */
            snprintf(msg, sizeof(msg), "no answer to a ping within %" PRIu64 " ms, and %s",
                     lb_now_ms() - p->ping_ms,
                     gw_breaker_state(id) == GW_BRK_OPEN ? "its circuit is open"
                     : gw_breaker_failures(id) > 0       ? "its last request failed"
                                                         : "no earlier success is known");
            json_object_object_add(slot, "error", json_object_new_string(msg));
            p->nfail++;
        }
    }
    for (size_t i = 0; i < n; i++) {
        json_object_object_del(json_object_array_get_idx(p->results, i), "_mid");
    }
}

/* 1 when a shard whose ping is still out has no known state. */
int req_ready_unknown_pending(struct gw_req *p)
{
    size_t n = json_object_array_length(p->results);
    for (size_t i = 0; i < n; i++) {
        struct json_object *slot = json_object_array_get_idx(p->results, i);
        struct json_object *mid = json_object_object_get(slot, "_mid");
        if (!json_object_object_get_ex(slot, "ok", NULL) &&
            !gw_breaker_known(mid != NULL ? json_object_get_int(mid) : -1)) {
            return 1;
        }
    }
    return 0;
}

static void ready_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct gw_req *p = arg;
    (void)fd;
    (void)what;
    p->timer_set = 0;
    if (req_is_answered(p) || req_is_abandoned(p)) {
        return;
    }
    if (req_ready_unknown_pending(p)) {
        p->ready_late = 1; /* req_parent_child_done() answers once every such shard is known */
        return;
    }
    req_parent_finish(p); /* the pings still out complete later, unanswered */
}

void req_handle_ready(struct gw_req *r, int detailed)
{
    r->kind = REQ_READY;
    r->detailed = detailed;
    r->mop = GW_MOP_READY;
    r->results = json_object_new_array();
    int n = 0;
    for (size_t i = 0; i < r->cf->nbackends; i++) {
        n += (int)r->cf->backends[i].nshards;
    }
    r->nchild = n + 1;
    int k = 0;
    for (size_t i = 0; i < r->cf->nbackends; i++) {
        const struct cf_backend *be = &r->cf->backends[i];
        for (size_t s = 0; s < be->nshards; s++) {
            struct json_object *slot = json_object_new_object();
            json_object_object_add(slot, "backend", json_object_new_string(be->name));
            json_object_object_add(slot, "type", json_object_new_string(be->type));
            json_object_object_add(slot, "shard", json_object_new_string(be->shards[s].name));
            int mid = gw_shard_id(be->name, be->shards[s].name);
            json_object_object_add(
                slot, "circuit",
                json_object_new_string(gw_breaker_state_name(gw_breaker_state(mid))));
            json_object_object_add(slot, "_mid", json_object_new_int(mid)); /* req_ready_verdict */
            json_object_array_add(r->results, slot);
        }
    }
    r->ping_ms = lb_now_ms();
    for (size_t i = 0; i < r->cf->nbackends; i++) {
        const struct cf_backend *be = &r->cf->backends[i];
        for (size_t s = 0; s < be->nshards; s++) {
            struct gw_req *c = req_new(r->w, REQ_ONE);
            c->parent = r;
            c->index = k++;
            c->ad.op = AD_PING;
            c->ad.shard = (int)s;
            c->rt = gw_worker_backend(c->w, be);
            if (c->rt != NULL) {
                c->rt->refs++;
            }
            req_submit(c);
        }
    }
    if (r->ndone + 1 < r->nchild) { /* pings are out: answer by READY_WAIT_MS at the latest */
        event_assign(&r->timer, r->w->base, -1, 0, ready_timeout, r);
        struct timeval tv = {0, READY_WAIT_MS * 1000};
        event_add(&r->timer, &tv);
        r->timer_set = 1;
    }
    req_parent_step(r);
}
