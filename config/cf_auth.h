/*
 * cf_auth.h — the `auth:` section: API keys per calling service, their grants
 * (domain → read/write/admin) and their rate limits.
 *
 *   auth:
 *     enabled: true               # default; `false` must be written out
 *     keys:
 *       - name: cart-service
 *         key_sha256: 5e88…      # or `key: "${CART_KEY}"` (hashed at load)
 *         grants: {carts: [read, write], catalog: [read]}
 *         rate: {per_second: 200, burst: 400}
 *         max_inflight: 32        # default: limits.max_inflight_per_key
 *       - name: ops
 *         key: "${POLYGATE_ADMIN_KEY}"
 *         grants: {"*": [read, write, admin]}
 *
 * Keys are kept only as SHA-256 digests.
 */
#ifndef CF_AUTH_H
#define CF_AUTH_H

#include <stddef.h>

#include <json-c/json.h>

#define CF_PERM_READ 1u
#define CF_PERM_WRITE 2u
#define CF_PERM_ADMIN 4u

struct cf_grant {
    char *domain; /* "*" = every domain */
    unsigned perms;
};

struct cf_key {
    char *name;
    unsigned char sha256[32];
    struct cf_grant *grants;
    size_t ngrants;
    double rate_per_s; /* 0 = unlimited */
    double burst;
    int max_inflight; /* requests in flight; -1: limits.max_inflight_per_key */
};

struct cf_auth {
    int enabled;
    struct cf_key *keys;
    size_t nkeys;
};

/* Parse the section (doc may be NULL: auth on, no keys).  0 or -1 + err. */
int cf_auth_parse(struct cf_auth *a, struct json_object *doc, char *err, size_t errlen);
void cf_auth_free(struct cf_auth *a);

/* The permissions key k holds on a domain ("*" grants apply to all). */
unsigned cf_auth_perms(const struct cf_key *k, const char *domain);

#endif
