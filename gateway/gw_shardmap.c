/*
 * gw_shardmap.c — checks of a live shard map change; the admin view.
 */
#include "gateway/gw_shardmap.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "config/cf_yaml.h"
#include "lib/lb_log.h"
#include "lib/lb_util.h"
#include "rebalance/rb_mapfile.h"
#include "rebalance/rb_registry.h"
#include "routing/rt_live.h"
#include "routing/rt_shardmap.h"

#define PROBE_TIMEOUT_MAX_MS 3000

static const struct cf_backend *backend_named(const struct cf_config *cf, const char *name)
{
    for (size_t i = 0; i < cf->nbackends; i++) {
        if (strcmp(cf->backends[i].name, name) == 0) {
            return &cf->backends[i];
        }
    }
    return NULL;
}

/* Shards of `a` that `b` does not name: their count, and *list (malloc'd,
 * "'x', 'y'"; NULL when out of memory) when list is not NULL. */
static size_t missing_names(const struct rt_shardmap *a, const struct rt_shardmap *b, char **list)
{
    size_t k = 0, need = 1;
    for (size_t i = 0; i < rt_shardmap_nshards(a); i++) {
        const char *name = rt_shardmap_shard_name(a, i);
        if (rt_shardmap_shard_index(b, name) < 0) {
            need += strlen(name) + 4;
            k++;
        }
    }
    char *buf = list != NULL ? malloc(need) : NULL;
    if (buf != NULL) {
        size_t off = 0, j = 0;
        buf[0] = '\0';
        for (size_t i = 0; i < rt_shardmap_nshards(a); i++) {
            const char *name = rt_shardmap_shard_name(a, i);
            if (rt_shardmap_shard_index(b, name) < 0) {
                off += (size_t)snprintf(buf + off, need - off, "%s'%s'", j++ ? ", " : "", name);
            }
        }
    }
    if (list != NULL) {
        *list = buf;
    }
    return k;
}

static int check_backend(const struct cf_backend *old, const struct cf_backend *nb, int put,
                         const char **moving, struct md_error *e)
{
    const struct rt_shardmap *a = old->map, *b = nb->map;
    int64_t va = rt_shardmap_version(a), vb = rt_shardmap_version(b);
    int same = rt_shardmap_nslots(a) == rt_shardmap_nslots(b) && rb_mapfile_same(a, b);
    if (!put && same && va == vb) {
        return 0; /* a reload that leaves this map as it is */
    }
    if (vb <= va) {
        md_error_set(e, MD_E_CONFLICT, "version",
                     "backend '%s': shard map version %" PRId64 " is not higher than the active "
                     "version %" PRId64 "%s",
                     nb->name, vb, va, same ? "" : " (a changed map must carry a higher version)");
        return -1;
    }
    if (rt_shardmap_nslots(a) != rt_shardmap_nslots(b)) {
        md_error_set(e, MD_E_BAD_REQUEST, "slots",
                     "backend '%s': the map has %u slots, the active one %u: rows store their "
                     "slot, the slot count cannot change",
                     nb->name, rt_shardmap_nslots(b), rt_shardmap_nslots(a));
        return -1;
    }
    if (missing_names(b, a, NULL) > 0 && missing_names(a, b, NULL) > 0) {
        char *added = NULL, *removed = NULL;
        missing_names(b, a, &added);
        missing_names(a, b, &removed);
        md_error_set(e, MD_E_BAD_REQUEST, "shards",
                     "backend '%s': the map adds shard(s) %s and removes %s in one change; add "
                     "or remove shards in separate maps",
                     nb->name, added != NULL ? added : "(out of memory)",
                     removed != NULL ? removed : "(out of memory)");
        free(added);
        free(removed);
        return -1;
    }
    /* new shards, and shards that moved to another DSN, must answer */
    const struct ad_ops *ops = ad_lookup(nb->type); /* set-up, on the main thread */
    for (size_t i = 0; ops != NULL && i < rt_shardmap_nshards(b); i++) {
        const char *name = rt_shardmap_shard_name(b, i);
        const char *dsn = rt_shardmap_shard_dsn(b, i);
        int j = rt_shardmap_shard_index(a, name);
        if (j >= 0 && strcmp(rt_shardmap_shard_dsn(a, (size_t)j), dsn) == 0) {
            continue;
        }
        int64_t tmo = nb->pool.connect_timeout_ms < PROBE_TIMEOUT_MAX_MS
                          ? nb->pool.connect_timeout_ms
                          : PROBE_TIMEOUT_MAX_MS;
        char perr[240];
        if (AD_OPTIONAL(ops, probe, 0, dsn, tmo, perr, sizeof(perr)) < 0) {
            md_error_set(e, MD_E_UNAVAILABLE, "dsn",
                         "backend '%s': shard '%s' is not reachable: %s", nb->name, name, perr);
            e->shard = name; /* borrowed from the new config, which the caller holds */
            return -1;
        }
    }
    struct rt_slot_move *moves = NULL;
    size_t nmoves = 0;
    char derr[200];
    if (rt_shardmap_diff(a, b, &moves, &nmoves, derr, sizeof(derr)) < 0) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL, "backend '%s': %s", nb->name, derr);
        return -1;
    }
    if (nmoves > 0 && moving != NULL && *moving == NULL && rb_mover_for(nb->type) != NULL) {
        *moving = nb->name; /* the caller rebalances (rebalance/rb_rebalance.h) */
        free(moves);
        return 0;
    }
    if (nmoves > 0 && moving != NULL && *moving != NULL) {
        md_error_set(e, MD_E_CONFLICT, "shards",
                     "backend '%s': the map moves %zu slot(s); only one backend can be "
                     "rebalanced at a time",
                     nb->name, nmoves);
        free(moves);
        return -1;
    }
    if (nmoves > 0 && moving != NULL) {
        md_error_set(e, MD_E_CONFLICT, "shards",
                     "backend '%s': the map moves %zu slot(s); online rebalancing is not "
                     "available for %s backends (only for: " RB_MOVER_TYPES ")",
                     nb->name, nmoves, nb->type);
        free(moves);
        return -1;
    }
    if (nmoves > 0) {
        md_error_set(e, MD_E_CONFLICT, "shards",
                     "backend '%s': the map moves %zu slot(s) (first: slot %u from '%s' to '%s'); "
                     "a rebalance is in progress: wait for it to finish (GET /admin/rebalance) "
                     "before the next map change moves slots (docs/rebalancing.md)",
                     nb->name, nmoves, moves[0].slot, moves[0].from, moves[0].to);
        free(moves);
        return -1;
    }
    free(moves);
    return 0;
}

int gw_shardmap_check(const struct cf_config *active, const struct cf_config *next,
                      const char *put_backend, const char **moving, struct md_error *e)
{
    if (moving != NULL) {
        *moving = NULL;
    }
    for (size_t i = 0; i < next->nbackends; i++) {
        const struct cf_backend *nb = &next->backends[i];
        const struct cf_backend *old = backend_named(active, nb->name);
        if (nb->map == NULL || old == NULL || old->map == NULL) {
            continue; /* a backend added, or not sharded: nothing to compare */
        }
        int put = put_backend != NULL && strcmp(put_backend, nb->name) == 0;
        if (check_backend(old, nb, put, moving, e) < 0) {
            return -1;
        }
    }
    return 0;
}

const char *gw_shardmap_backend(const struct cf_config *cf, const char *name, size_t len,
                                struct md_error *e)
{
    const char *found = NULL;
    size_t n = 0;
    for (size_t i = 0; i < cf->nbackends; i++) {
        const struct cf_backend *be = &cf->backends[i];
        if (name != NULL && len > 0) {
            if (strlen(be->name) == len && memcmp(be->name, name, len) == 0) {
                if (be->shard_map_path == NULL) {
                    md_error_set(e, MD_E_BAD_REQUEST, NULL,
                                 "backend '%s' has no shard_map file: its shards come from the "
                                 "config",
                                 be->name);
                    return NULL;
                }
                return be->name;
            }
        } else if (be->shard_map_path != NULL) {
            found = be->name;
            n++;
        }
    }
    if (name != NULL && len > 0) {
        md_error_set(e, MD_E_NOT_FOUND, NULL, "no backend named '%.*s'", (int)(len > 64 ? 64 : len),
                     name);
        return NULL;
    }
    if (n != 1) {
        md_error_set(e, MD_E_BAD_REQUEST, NULL,
                     n == 0 ? "no backend has a shard_map file"
                            : "several backends have a shard_map file: use "
                              "/admin/shardmap/{backend}");
        return NULL;
    }
    return found;
}

/* A DSN with its password replaced by "***". */
static struct json_object *redacted_dsn(const char *dsn)
{
    const char *scheme = strstr(dsn, "://");
    const char *start = scheme != NULL ? scheme + 3 : dsn;
    const char *slash = strchr(start, '/');
    const char *at = strrchr(start, '@');
    if (at == NULL || (slash != NULL && at > slash)) {
        return json_object_new_string(dsn);
    }
    const char *colon = memchr(start, ':', (size_t)(at - start));
    if (colon == NULL) {
        return json_object_new_string(dsn);
    }
    size_t len = strlen(dsn) + 4;
    char *buf = lb_xmalloc(len);
    snprintf(buf, len, "%.*s***%s", (int)(colon + 1 - dsn), dsn, at);
    struct json_object *o = json_object_new_string(buf);
    free(buf);
    return o;
}

struct json_object *gw_shardmap_json(const struct cf_config *cf,
                                     struct json_object *(*migration_of)(const char *backend))
{
    struct json_object *doc = json_object_new_object();
    struct json_object *arr = json_object_new_array();
    for (size_t i = 0; i < cf->nbackends; i++) {
        const struct cf_backend *be = &cf->backends[i];
        const struct rt_shardmap *m = be->map;
        if (m == NULL) {
            continue;
        }
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "backend", json_object_new_string(be->name));
        json_object_object_add(
            o, "path",
            be->shard_map_path != NULL ? json_object_new_string(be->shard_map_path) : NULL);
        json_object_object_add(o, "version", json_object_new_int64(rt_shardmap_version(m)));
        json_object_object_add(o, "slots", json_object_new_int64(rt_shardmap_nslots(m)));
        json_object_object_add(o, "vnodes", json_object_new_int64(rt_shardmap_vnodes(m)));
        /* Being rebalanced: the live owners, each slot read once so that a
         * slot switched while this runs is counted for one shard only. */
        uint32_t *live_owned = NULL;
        if (be->live != NULL) {
            live_owned = lb_xcalloc(rt_shardmap_nshards(m) + 1, sizeof(*live_owned));
            for (uint32_t k = 0; k < rt_live_nslots(be->live); k++) {
                int owner = rt_live_owner(be->live, k);
                if (owner >= 0 && (size_t)owner < rt_shardmap_nshards(m)) {
                    live_owned[owner]++;
                }
            }
        }
        struct json_object *sh = json_object_new_array();
        for (size_t s = 0; s < rt_shardmap_nshards(m); s++) {
            struct json_object *so = json_object_new_object();
            json_object_object_add(so, "name",
                                   json_object_new_string(rt_shardmap_shard_name(m, s)));
            json_object_object_add(so, "dsn", redacted_dsn(rt_shardmap_shard_dsn(m, s)));
            json_object_object_add(so, "weight",
                                   json_object_new_int64(rt_shardmap_shard_weight(m, s)));
            uint32_t owned = live_owned != NULL ? live_owned[s] : rt_shardmap_shard_nslots(m, s);
            json_object_object_add(so, "slots", json_object_new_int64(owned));
            json_object_array_add(sh, so);
        }
        free(live_owned);
        json_object_object_add(o, "shards", sh);
        struct json_object *ov = json_object_new_object();
        for (size_t k = 0; k < rt_shardmap_noverrides(m); k++) {
            uint32_t first, last;
            int owner = rt_shardmap_override(m, k, &first, &last);
            char range[32];
            if (first == last) {
                snprintf(range, sizeof(range), "%u", first);
            } else {
                snprintf(range, sizeof(range), "%u-%u", first, last);
            }
            json_object_object_add(
                ov, range, json_object_new_string(rt_shardmap_shard_name(m, (size_t)owner)));
        }
        json_object_object_add(o, "overrides", ov);
        json_object_object_add(o, "migration", migration_of(be->name));
        json_object_array_add(arr, o);
    }
    json_object_object_add(doc, "backends", arr);
    return doc;
}

const char *gw_shardmap_changed(const struct cf_config *active, const struct cf_config *next)
{
    for (size_t i = 0; i < next->nbackends; i++) {
        const struct cf_backend *nb = &next->backends[i];
        const struct cf_backend *old = backend_named(active, nb->name);
        if (nb->map == NULL || old == NULL || old->map == NULL) {
            continue;
        }
        if (rt_shardmap_version(old->map) != rt_shardmap_version(nb->map) ||
            rt_shardmap_nslots(old->map) != rt_shardmap_nslots(nb->map) ||
            !rb_mapfile_same(old->map, nb->map)) {
            return nb->name;
        }
    }
    return NULL;
}

const char *gw_shardmap_path(const struct cf_config *cf, const char *backend)
{
    const struct cf_backend *be = backend_named(cf, backend);
    return be != NULL ? be->shard_map_path : NULL;
}

int gw_shardmap_write(const char *path, struct json_object *doc, const char *how, char *err,
                      size_t errlen)
{
    char when[32] = "?";
    time_t t = time(NULL);
    struct tm tm;
    if (gmtime_r(&t, &tm) != NULL) {
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    const char *base = strrchr(path, '/');
    base = base != NULL ? base + 1 : path;
    char *head = NULL;
    if (asprintf(&head,
                 "Written by polygate at %s: map version %" PRId64 " %s.\n"
                 "This file before: %s.prev",
                 when, json_object_get_int64(json_object_object_get(doc, "version")), how,
                 base) < 0) {
        snprintf(err, errlen, "cannot write '%s': out of memory", path);
        return -1;
    }
    int rc = rb_mapfile_replace(path, doc, head, err, errlen);
    free(head);
    return rc;
}
