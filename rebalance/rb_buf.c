/*
 * rb_buf.c — a growing statement text for the slot movers.
 */
#include "rebalance/rb_buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rb_buf_fail(struct rb_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->failed = 1;
}

int rb_buf_grow(struct rb_buf *b, size_t need)
{
    if (b->failed) {
        return -1;
    }
    if (need <= b->cap) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < need) {
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        rb_buf_fail(b);
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void rb_buf_put(struct rb_buf *b, const char *s, size_t n)
{
    if (rb_buf_grow(b, b->len + n + 1) < 0) {
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void rb_buf_putf(struct rb_buf *b, const char *fmt, ...)
{
    if (b->failed) {
        return;
    }
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    size_t room = b->cap - b->len;
    int n = vsnprintf(b->p != NULL ? b->p + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n >= room) { /* did not fit: grow to the exact size, format again */
        if (rb_buf_grow(b, b->len + (size_t)n + 1) == 0) {
            n = vsnprintf(b->p + b->len, (size_t)n + 1, fmt, again);
        }
    }
    va_end(again);
    if (b->failed) {
        return;
    }
    if (n < 0) { /* an encoding error: no statement rather than a wrong one */
        rb_buf_fail(b);
        return;
    }
    b->len += (size_t)n;
}

void rb_buf_ident(struct rb_buf *b, enum sql_dialect dialect, const char *name)
{
    if (rb_buf_grow(b, b->len + 2 * strlen(name) + 3) < 0) {
        return;
    }
    b->len += sql_quote_ident(dialect, name, b->p + b->len);
}
