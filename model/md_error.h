/*
 * md_error.h — the one JSON error shape, and honest HTTP statuses.
 *
 *   {"error":{"code":"…","message":"…","domain":"…","shard":"…","field":"…",
 *             "request_id":"…"}}
 *
 * domain/shard/field appear only when known.
 */
#ifndef GW_ERROR_H
#define GW_ERROR_H

struct evbuffer;

enum gw_err {
    GW_E_BAD_REQUEST,        /* 400 bad_request */
    GW_E_UNSUPPORTED,        /* 400 unsupported_operation: the store cannot serve it */
    GW_E_UNKNOWN_DOMAIN,     /* 404 unknown_domain */
    GW_E_NOT_FOUND,          /* 404 not_found */
    GW_E_UNAUTHORIZED,       /* 401 unauthorized */
    GW_E_FORBIDDEN,          /* 403 forbidden */
    GW_E_RATE_LIMITED,       /* 429 rate_limited */
    GW_E_METHOD,             /* 405 method_not_allowed */
    GW_E_REQ_TIMEOUT,        /* 408 request_timeout (client too slow) */
    GW_E_CONFLICT,           /* 409 conflict */
    GW_E_PRECONDITION,       /* 412 precondition_failed */
    GW_E_TOO_LARGE,          /* 413 payload_too_large */
    GW_E_URI_TOO_LONG,       /* 414 uri_too_long */
    GW_E_HEADERS_TOO_LARGE,  /* 431 headers_too_large */
    GW_E_INTERNAL,           /* 500 internal */
    GW_E_UNAVAILABLE,        /* 503 backend_unavailable */
    GW_E_SHUTTING_DOWN,      /* 503 shutting_down */
    GW_E_TIMEOUT,            /* 504 timeout */
    GW_E_IDEM_REUSED,        /* 422 idempotency_key_reused (gw_idempotency.h) */
    GW_E_IDEM_BUSY,          /* 409 idempotency_in_progress */
    GW_E_RESPONSE_TOO_LARGE, /* 400 response_too_large: limits.max_response_bytes */
    GW_E_HTTP_VERSION,       /* 505 http_version_not_supported */
};

int gw_err_status(enum gw_err e);
const char *gw_err_code(enum gw_err e);

struct gw_error {
    enum gw_err err;
    const char *domain; /* borrowed, may be NULL */
    const char *shard;
    const char *field;
    char message[320];
};

void gw_error_set(struct gw_error *e, enum gw_err code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The inner error object {"code","message",…} as a json-c value (batches). */
struct json_object *gw_error_json(const struct gw_error *e, const char *request_id);

/* Append the JSON error body to `out`. */
void gw_error_write(struct evbuffer *out, const struct gw_error *e, const char *request_id);

#endif
