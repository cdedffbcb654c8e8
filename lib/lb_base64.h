/*
 * lb_base64.h — standard base64 (RFC 4648, alphabet "+/", '=' padding): the
 * encoding of keys and values in etcd's v3 JSON API (lib/lb_etcd.h).
 */
#ifndef LB_BASE64_H
#define LB_BASE64_H

#include <stddef.h>

/* The encoded length of n bytes, without the NUL. */
static inline size_t lb_base64_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

/* Encode n bytes of src into out (room for lb_base64_len(n) + 1), NUL-
 * terminated; returns the length written. */
size_t lb_base64_encode(const void *src, size_t n, char *out);

/* Decode len characters of src (padding optional; no whitespace) into out
 * (room for len / 4 * 3 + 3 bytes); *outlen gets the byte count and out is
 * NUL-terminated past it.  0, or -1 when src is not base64. */
int lb_base64_decode(const char *src, size_t len, unsigned char *out, size_t *outlen)
    __attribute__((warn_unused_result));

#endif
