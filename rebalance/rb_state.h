/*
 * rb_state.h — the persisted state of a rebalance: `<shard_map file>.rebalance`.
 *
 * The file holds the backend, the old and new map documents, the slots
 * already switched and the rows moved so far (JSON, which is YAML).  It is
 * written atomically (rebalance/rb_mapfile.h) before the rebalance starts
 * and at every slot switch — before the switch is visible — and removed
 * when the final map is written.  A start-up that finds it resumes the
 * rebalance (rb_rebalance_recover).
 */
#ifndef RB_STATE_H
#define RB_STATE_H

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

struct rb_state {
    const char *backend;
    struct json_object *from, *to; /* map documents (a reference each once loaded) */
    uint32_t *done;                /* slots switched */
    size_t ndone;
    uint64_t rows_moved;
};

/* "<map_path>.rebalance", malloc'd (a config-bounded string: lb_xmalloc). */
char *rb_state_path(const char *map_path);

/* Write the state to path atomically.  0, or -1 with err. */
int rb_state_save(const char *path, const struct rb_state *st, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Read the state at path: 1 read (free it with rb_state_clear), 0 no file,
 * -1 with err naming the file (unreadable).  The maps are not checked here:
 * the caller builds them (a missing map is refused there). */
int rb_state_load(const char *path, struct rb_state *st, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Free what rb_state_load read. */
void rb_state_clear(struct rb_state *st);

#endif
