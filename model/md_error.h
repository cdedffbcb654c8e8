/*
 * md_error.h — the one JSON error shape, and honest HTTP statuses.
 *
 *   {"error":{"code":"…","message":"…","domain":"…","shard":"…","field":"…",
 *             "request_id":"…"}}
 *
 * domain/shard/field appear only when known.
 */
#ifndef MD_ERROR_H
#define MD_ERROR_H

struct evbuffer;

enum md_err {
    MD_E_BAD_REQUEST,        /* 400 bad_request */
    MD_E_UNSUPPORTED,        /* 400 unsupported_operation: the store cannot serve it */
    MD_E_UNKNOWN_DOMAIN,     /* 404 unknown_domain */
    MD_E_NOT_FOUND,          /* 404 not_found */
    MD_E_UNAUTHORIZED,       /* 401 unauthorized */
    MD_E_FORBIDDEN,          /* 403 forbidden */
    MD_E_RATE_LIMITED,       /* 429 rate_limited */
    MD_E_METHOD,             /* 405 method_not_allowed */
    MD_E_REQ_TIMEOUT,        /* 408 request_timeout (client too slow) */
    MD_E_CONFLICT,           /* 409 conflict */
    MD_E_PRECONDITION,       /* 412 precondition_failed */
    MD_E_TOO_LARGE,          /* 413 payload_too_large */
    MD_E_URI_TOO_LONG,       /* 414 uri_too_long */
    MD_E_HEADERS_TOO_LARGE,  /* 431 headers_too_large */
    MD_E_INTERNAL,           /* 500 internal */
    MD_E_UNAVAILABLE,        /* 503 backend_unavailable */
    MD_E_SHUTTING_DOWN,      /* 503 shutting_down */
    MD_E_TIMEOUT,            /* 504 timeout */
    MD_E_IDEM_REUSED,        /* 422 idempotency_key_reused (gw_idempotency.h) */
    MD_E_IDEM_BUSY,          /* 409 idempotency_in_progress */
    MD_E_RESPONSE_TOO_LARGE, /* 400 response_too_large: limits.max_response_bytes */
    MD_E_HTTP_VERSION,       /* 505 http_version_not_supported */
    MD_E_SLOT_MOVED,         /* 503 slot_moved: the shard no longer owns the write's slot; retry */
};

int md_err_status(enum md_err e);
const char *md_err_code(enum md_err e);

struct md_error {
    enum md_err err;
    const char *domain; /* borrowed, may be NULL */
    const char *shard;
    const char *field;
    char message[320];
};

void md_error_set(struct md_error *e, enum md_err code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The inner error object {"code","message",…} as a json-c value (batches). */
struct json_object *md_error_json(const struct md_error *e, const char *request_id);

/* Append the JSON error body to `out`. */
void md_error_write(struct evbuffer *out, const struct md_error *e, const char *request_id);

#endif
