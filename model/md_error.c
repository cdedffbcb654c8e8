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
    [GW_E_BAD_REQUEST] = {400, "bad_request"},
    [GW_E_UNSUPPORTED] = {400, "unsupported_operation"},
    [GW_E_UNKNOWN_DOMAIN] = {404, "unknown_domain"},
    [GW_E_NOT_FOUND] = {404, "not_found"},
    [GW_E_UNAUTHORIZED] = {401, "unauthorized"},
    [GW_E_FORBIDDEN] = {403, "forbidden"},
    [GW_E_RATE_LIMITED] = {429, "rate_limited"},
    [GW_E_METHOD] = {405, "method_not_allowed"},
    [GW_E_REQ_TIMEOUT] = {408, "request_timeout"},
    [GW_E_CONFLICT] = {409, "conflict"},
    [GW_E_PRECONDITION] = {412, "precondition_failed"},
    [GW_E_TOO_LARGE] = {413, "payload_too_large"},
    [GW_E_URI_TOO_LONG] = {414, "uri_too_long"},
    [GW_E_HEADERS_TOO_LARGE] = {431, "headers_too_large"},
    [GW_E_INTERNAL] = {500, "internal"},
    [GW_E_UNAVAILABLE] = {503, "backend_unavailable"},
    [GW_E_SHUTTING_DOWN] = {503, "shutting_down"},
    [GW_E_TIMEOUT] = {504, "timeout"},
    [GW_E_IDEM_REUSED] = {422, "idempotency_key_reused"},
    [GW_E_IDEM_BUSY] = {409, "idempotency_in_progress"},
    [GW_E_HTTP_VERSION] = {505, "http_version_not_supported"},
    [GW_E_RESPONSE_TOO_LARGE] = {400, "response_too_large"},
};

int gw_err_status(enum gw_err e)
{
    return errs[e].status;
}

const char *gw_err_code(enum gw_err e)
{
    return errs[e].code;
}

void gw_error_set(struct gw_error *e, enum gw_err code, const char *field, const char *fmt, ...)
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
    gw_json_write_string(out, val, strlen(val));
}

static void jmember(struct json_object *o, const char *name, const char *val)
{
    if (val != NULL) {
        json_object_object_add(o, name, json_object_new_string(val));
    }
}

struct json_object *gw_error_json(const struct gw_error *e, const char *request_id)
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

void gw_error_write(struct evbuffer *out, const struct gw_error *e, const char *request_id)
{
    evbuffer_add_printf(out, "{\"error\":{\"code\":\"%s\",\"message\":", errs[e->err].code);
    gw_json_write_string(out, e->message, strlen(e->message));
    member(out, "domain", e->domain);
    member(out, "shard", e->shard);
    member(out, "field", e->field);
    member(out, "request_id", request_id);
    evbuffer_add(out, "}}", 2);
}
