/*
 * gw_route.c — shard-key routing: which shard(s) a request goes to.
 */
#include "gateway/gw_route.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/cf_config.h"
#include "lib/lb_json.h"
#include "lib/lb_util.h"
#include "model/md_query.h"
#include "routing/rt_live.h"
#include "routing/rt_shardmap.h"

static void route_bytes(const struct cf_domain *d, const char *v, size_t len, struct gw_route *out)
{
    out->shard = rt_shardmap_route(d->backend->map, v, len, &out->hash, &out->slot);
    if (d->backend->live != NULL) { /* being rebalanced: the live owner (rt_live.h) */
        out->shard = rt_live_owner(d->backend->live, out->slot);
    }
}

/* Ints route by their canonical decimal text. */
static int int_text(const char *v, size_t len, char *buf, size_t buflen)
{
    char tmp[32];
    if (len == 0 || len >= sizeof(tmp)) {
        return -1;
    }
    memcpy(tmp, v, len);
    tmp[len] = '\0';
    char *end;
    errno = 0;
    long long n = strtoll(tmp, &end, 10);
    if (errno != 0 || *end != '\0' || tmp[0] == '+' || tmp[0] == ' ') {
        return -1;
    }
    snprintf(buf, buflen, "%lld", n);
    return 0;
}

int gw_route_text(const struct cf_domain *d, const char *v, size_t len, struct gw_route *out,
                  struct md_error *e)
{
    const struct cf_field *f = cf_field_find(d, d->shard_key);
    if (f->type == CF_T_INT) {
        char buf[32];
        if (int_text(v, len, buf, sizeof(buf)) < 0) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "shard key '%s' must be an integer",
                         f->name);
            return -1;
        }
        route_bytes(d, buf, strlen(buf), out);
        return 0;
    }
    if (len == 0) {
        md_error_set(e, MD_E_BAD_REQUEST, f->name, "shard key '%s' is empty", f->name);
        return -1;
    }
    /* what a string in a body may hold (md_item.c): a query-string value is
     * percent-decoded bytes, checked here as the body's value would be */
    if (memchr(v, '\0', len) != NULL) {
        md_error_set(e, MD_E_BAD_REQUEST, f->name, "shard key '%s' contains a NUL character",
                     f->name);
        return -1;
    }
    size_t ok = lb_utf8_check(v, len);
    if (ok != len) {
        md_error_set(e, MD_E_BAD_REQUEST, f->name, "shard key '%s' is not valid UTF-8 (byte %zu)",
                     f->name, ok);
        return -1;
    }
    route_bytes(d, v, len, out);
    return 0;
}

int gw_route_item(const struct cf_domain *d, struct json_object *item, struct gw_route *out,
                  struct md_error *e)
{
    const struct cf_field *f = cf_field_find(d, d->shard_key);
    struct json_object *v = NULL;
    if (!json_object_object_get_ex(item, f->name, &v) || v == NULL) {
        md_error_set(e, MD_E_BAD_REQUEST, f->name,
                     "field '%s' is required: it is the shard key of domain '%s'", f->name,
                     d->name);
        return -1;
    }
    if (f->type == CF_T_INT) {
        if (!json_object_is_type(v, json_type_int)) {
            md_error_set(e, MD_E_BAD_REQUEST, f->name, "shard key '%s' must be an integer",
                         f->name);
            return -1;
        }
        char buf[32];
        snprintf(buf, sizeof(buf), "%" PRId64, json_object_get_int64(v));
        route_bytes(d, buf, strlen(buf), out);
        return 0;
    }
    if (!json_object_is_type(v, json_type_string)) {
        md_error_set(e, MD_E_BAD_REQUEST, f->name, "shard key '%s' must be a string", f->name);
        return -1;
    }
    return gw_route_text(d, json_object_get_string(v), (size_t)json_object_get_string_len(v), out,
                         e);
}

/* The shard of one filter value (a string, or an int for int keys); -1 when
 * it cannot be a stored shard key (such a leaf matches no row). */
static int value_shard(const struct cf_domain *d, const struct cf_field *f, struct json_object *v)
{
    struct gw_route rt;
    char buf[32];
    if (f->type == CF_T_INT && json_object_is_type(v, json_type_int)) {
        snprintf(buf, sizeof(buf), "%" PRId64, json_object_get_int64(v));
        route_bytes(d, buf, strlen(buf), &rt);
        return rt.shard;
    }
    if (f->type == CF_T_STRING && json_object_is_type(v, json_type_string)) {
        route_bytes(d, json_object_get_string(v), (size_t)json_object_get_string_len(v), &rt);
        return rt.shard;
    }
    return -1;
}

/* 1 and mask filled when the node pins the shard key to a set of shards
 * (possibly empty); 0 when it does not (every shard). */
static int pin(const struct cf_domain *d, const struct md_qnode *n, unsigned char *mask,
               size_t nshards)
{
    switch (n->op) {
    case MD_QOP_EQ:
    case MD_QOP_IN: {
        if (n->npath != 0 || strcmp(n->field->name, d->shard_key) != 0 || n->value == NULL) {
            return 0;
        }
        memset(mask, 0, nshards);
        if (n->op == MD_QOP_EQ) {
            int s = value_shard(d, n->field, n->value);
            if (s >= 0) {
                mask[s] = 1;
            }
            return 1;
        }
        for (size_t i = 0; i < json_object_array_length(n->value); i++) {
            int s = value_shard(d, n->field, json_object_array_get_idx(n->value, i));
            if (s >= 0) {
                mask[s] = 1;
            }
        }
        return 1;
    }
    case MD_QOP_AND: { /* the intersection of the kids that pin */
        unsigned char *k = lb_xmalloc(nshards);
        int pinned = 0;
        memset(mask, 1, nshards);
        for (size_t i = 0; i < n->nkids; i++) {
            if (pin(d, n->kids[i], k, nshards)) {
                pinned = 1;
                for (size_t s = 0; s < nshards; s++) {
                    mask[s] &= k[s];
                }
            }
        }
        free(k);
        return pinned;
    }
    case MD_QOP_OR: { /* the union, only if every branch pins */
        unsigned char *k = lb_xmalloc(nshards);
        memset(mask, 0, nshards);
        for (size_t i = 0; i < n->nkids; i++) {
            if (!pin(d, n->kids[i], k, nshards)) {
                free(k);
                return 0;
            }
            for (size_t s = 0; s < nshards; s++) {
                mask[s] |= k[s];
            }
        }
        free(k);
        return 1;
    }
    default:
        return 0;
    }
}

size_t gw_route_where(const struct cf_domain *d, const struct md_qnode *where, unsigned char *mask)
{
    size_t n = d->backend->nshards;
    /* while slots move, a pinned key's owner may change before the request
     * takes its snapshot (rt_live_begin): ask every shard, the exclusions of
     * the snapshot keep each row counted once */
    if (where == NULL || d->backend->live != NULL || !pin(d, where, mask, n)) {
        memset(mask, 1, n);
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        k += mask[i] != 0;
    }
    return k;
}
