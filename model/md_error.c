/*
 * md_error.c — the JSON error shape.
 */
#include "model/md_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "lib/lb_json.h"

static const struct {
    int status;
    const char *code;
} errs[] = {
    [MD_E_BAD_REQUEST] = {400, "bad_request"},
    [MD_E_UNSUPPORTED] = {400, "unsupported_operation"},
    [MD_E_UNKNOWN_DOMAIN] = {404, "unknown_domain"},
    [MD_E_NOT_FOUND] = {404, "not_found"},
    [MD_E_UNAUTHORIZED] = {401, "unauthorized"},
    [MD_E_FORBIDDEN] = {403, "forbidden"},
    [MD_E_RATE_LIMITED] = {429, "rate_limited"},
    [MD_E_METHOD] = {405, "method_not_allowed"},
    [MD_E_REQ_TIMEOUT] = {408, "request_timeout"},
    [MD_E_CONFLICT] = {409, "conflict"},
    [MD_E_PRECONDITION] = {412, "precondition_failed"},
    [MD_E_TOO_LARGE] = {413, "payload_too_large"},
    [MD_E_URI_TOO_LONG] = {414, "uri_too_long"},
    [MD_E_HEADERS_TOO_LARGE] = {431, "headers_too_large"},
    [MD_E_INTERNAL] = {500, "internal"},
    [MD_E_UNAVAILABLE] = {503, "backend_unavailable"},
    [MD_E_SHUTTING_DOWN] = {503, "shutting_down"},
    [MD_E_TIMEOUT] = {504, "timeout"},
    [MD_E_IDEM_REUSED] = {422, "idempotency_key_reused"},
    [MD_E_IDEM_BUSY] = {409, "idempotency_in_progress"},
    [MD_E_HTTP_VERSION] = {505, "http_version_not_supported"},
    [MD_E_RESPONSE_TOO_LARGE] = {400, "response_too_large"},
    [MD_E_SLOT_MOVED] = {503, "slot_moved"},
};

int md_err_status(enum md_err e)
{
    return errs[e].status;
}

const char *md_err_code(enum md_err e)
{
    return errs[e].code;
}

void md_error_set(struct md_error *e, enum md_err code, const char *field, const char *fmt, ...)
{
    e->err = code;
    e->field = field;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof(e->message)) {
        /* cut at a character boundary, never inside a UTF-8 sequence */
        size_t len = sizeof(e->message) - 1, i = len;
        while (i > 0 && ((unsigned char)e->message[i - 1] & 0xc0) == 0x80) {
            i--;
        }
        if (i > 0) {
            unsigned char lead = (unsigned char)e->message[i - 1];
            size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
            if (i - 1 + need > len) {
                e->message[i - 1] = '\0'; /* drop the incomplete last character */
            }
        }
    }
}

static void member(struct evbuffer *out, const char *name, const char *val)
{
    if (val == NULL) {
        return;
    }
    evbuffer_add_printf(out, ",\"%s\":", name);
    lb_json_write_string(out, val, strlen(val));
}

static void jmember(struct json_object *o, const char *name, const char *val)
{
    if (val != NULL) {
        json_object_object_add(o, name, json_object_new_string(val));
    }
}

struct json_object *md_error_json(const struct md_error *e, const char *request_id)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "code", json_object_new_string(errs[e->err].code));
    json_object_object_add(o, "message", json_object_new_string(e->message));
    jmember(o, "domain", e->domain);
    jmember(o, "shard", e->shard);
    jmember(o, "field", e->field);
    jmember(o, "request_id", request_id);
    return o;
}

void md_error_write(struct evbuffer *out, const struct md_error *e, const char *request_id)
{
    evbuffer_add_printf(out, "{\"error\":{\"code\":\"%s\",\"message\":", errs[e->err].code);
    lb_json_write_string(out, e->message, strlen(e->message));
    member(out, "domain", e->domain);
    member(out, "shard", e->shard);
    member(out, "field", e->field);
    member(out, "request_id", request_id);
    evbuffer_add(out, "}}", 2);
}
