/*
 * sql_row.c — a result row → the item's JSON text (see sql_row.h).
 */
#include "adapters/sql/sql_row.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "config/cf_config.h"
#include "lib/lb_json.h"

size_t sql_ts_rfc3339(const char *v, size_t len, char *buf, size_t buflen)
{
    /* room for ".000000Z" and the NUL after the text */
    if (buflen < 10) {
        if (buflen > 0) {
            buf[0] = '\0';
        }
        return 0;
    }
    size_t n = len + 9 <= buflen ? len : buflen - 9;
    memcpy(buf, v, n);
    if (n > 10 && buf[10] == ' ') {
        buf[10] = 'T';
    }
    if (n > 3 && memcmp(buf + n - 3, "+00", 3) == 0) {
        n -= 3; /* PostgreSQL, TimeZone=UTC */
    }
    /* exactly six fraction digits (PostgreSQL trims trailing zeros and the
     * point, MySQL prints the column's precision): text that sorts in time
     * order, the width the gateway writes (md_item.c) */
    const char *dot = memchr(buf, '.', n);
    size_t frac = dot != NULL ? n - (size_t)(dot + 1 - buf) : 0;
    if (dot == NULL) {
        buf[n++] = '.';
    }
    if (frac > 6) {
        n -= frac - 6;
    }
    for (; frac < 6; frac++) {
        buf[n++] = '0';
    }
    buf[n++] = 'Z';
    buf[n] = '\0';
    return n;
}

void sql_row_write(struct evbuffer *out, const struct sql_stmt *st, const char *const *vals,
                   const unsigned long *lens, size_t nvals, int64_t *version)
{
    int first = 1;
    evbuffer_add(out, "{", 1);
    for (size_t i = 0; i < st->ncols && i < nvals; i++) {
        const struct sql_col *sc = &st->cols[i];
        const char *v = vals[i];
        if (sc->hidden || v == NULL || (sc->kind != SQL_COL_VERSION && sc->kind != SQL_COL_FIELD)) {
            continue; /* SQL NULL: the field is absent */
        }
        size_t len = lens[i];
        if (!first) {
            evbuffer_add(out, ",", 1);
        }
        first = 0;
        if (sc->kind == SQL_COL_VERSION) {
            *version = strtoll(v, NULL, 10);
            evbuffer_add(out, "\"version\":", 10);
            evbuffer_add(out, v, len);
            continue;
        }
        lb_json_write_string(out, sc->field->name, strlen(sc->field->name));
        evbuffer_add(out, ":", 1);
        switch (sc->field->type) {
        case CF_T_INT:
        case CF_T_DECIMAL:
            evbuffer_add(out, v, len); /* canonical text: exact digits, valid JSON */
            break;
        case CF_T_OBJECT:
        case CF_T_ARRAY:
        case CF_T_JSON:
        case CF_T_COUNTERS: {
            char msg[8];
            if (st->dialect == SQL_PG ||
                lb_json_validate(v, len, 1000, msg, sizeof(msg)) == LB_JSON_OK) {
                evbuffer_add(out, v, len);
            } else {
                lb_json_write_string(out, v, len); /* not JSON: a hand-edited row */
            }
            break;
        }
        case CF_T_BOOL: {
            int t = st->dialect == SQL_PG ? v[0] == 't' : v[0] != '0';
            evbuffer_add(out, t ? "true" : "false", t ? 4 : 5);
            break;
        }
        case CF_T_TIMESTAMP: {
            char buf[64];
            lb_json_write_string(out, buf, sql_ts_rfc3339(v, len, buf, sizeof(buf)));
            break;
        }
        default:
            lb_json_write_string(out, v, len);
        }
    }
    evbuffer_add(out, "}", 1);
}
