/*
 * rb_state.c — the persisted state of a rebalance (rebalance/rb_state.h).
 */
#include "rebalance/rb_state.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config/cf_yaml.h"
#include "lib/lb_util.h"
#include "rebalance/rb_mapfile.h"

char *rb_state_path(const char *map_path)
{
    size_t len = strlen(map_path) + sizeof(".rebalance");
    char *p = lb_xmalloc(len);
    snprintf(p, len, "%s.rebalance", map_path);
    return p;
}

int rb_state_save(const char *path, const struct rb_state *st, char *err, size_t errlen)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "backend", json_object_new_string(st->backend));
    json_object_object_add(o, "from", json_object_get(st->from));
    json_object_object_add(o, "to", json_object_get(st->to));
    struct json_object *done = json_object_new_array();
    for (size_t i = 0; i < st->ndone; i++) {
        json_object_array_add(done, json_object_new_int64(st->done[i]));
    }
    json_object_object_add(o, "done", done);
    json_object_object_add(o, "rows_moved", json_object_new_int64((int64_t)st->rows_moved));
    int rc = rb_mapfile_write_json(path, o, err, errlen);
    json_object_put(o);
    return rc;
}

int rb_state_load(const char *path, struct rb_state *st, char *err, size_t errlen)
{
    memset(st, 0, sizeof(*st));
    struct stat sb;
    if (stat(path, &sb) < 0 && errno == ENOENT) {
        return 0;
    }
    char lerr[400];
    struct json_object *o = cf_yaml_load_file(path, lerr, sizeof(lerr));
    if (o == NULL) {
        snprintf(err, errlen, "rebalance state '%s' is unreadable: %s", path, lerr);
        return -1;
    }
    st->from = json_object_get(json_object_object_get(o, "from"));
    st->to = json_object_get(json_object_object_get(o, "to"));
    struct json_object *done = json_object_object_get(o, "done");
    size_t n = json_object_is_type(done, json_type_array) ? json_object_array_length(done) : 0;
    st->done = calloc(n + 1, sizeof(*st->done));
    for (size_t k = 0; st->done != NULL && k < n; k++) {
        int64_t s = json_object_get_int64(json_object_array_get_idx(done, k));
        if (s >= 0 && s <= UINT32_MAX) {
            st->done[st->ndone++] = (uint32_t)s;
        }
    }
    st->rows_moved = (uint64_t)json_object_get_int64(json_object_object_get(o, "rows_moved"));
    json_object_put(o);
    if (st->done == NULL) {
        rb_state_clear(st);
        snprintf(err, errlen, "rebalance state '%s': out of memory", path);
        return -1;
    }
    return 1;
}

void rb_state_clear(struct rb_state *st)
{
    json_object_put(st->from);
    json_object_put(st->to);
    free(st->done);
    memset(st, 0, sizeof(*st));
}
