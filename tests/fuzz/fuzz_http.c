/*
 * fuzz_http.c — bytes from a client → the HTTP server (parser, limits,
 * pipelining, error answers).  The input is written into one end of a
 * socketpair whose other end the server adopts; the handler answers every
 * request, so the whole request/response cycle runs.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "gateway/gw_http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void handler(struct gw_http_req *req, void *arg)
{
    (void)arg;
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, req->path, req->path_len);
    (void)gw_http_header(req, "x-request-id", NULL);
    gw_http_respond(req, 200, "text/plain", b, NULL);
    evbuffer_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
        return 0;
    }
    struct event_base *base = event_base_new();
    struct gw_http_limits lim = {
        .max_body = 4096, .max_headers = 2048, .max_url = 512, .idle_timeout_s = 5};
    struct gw_http_server *s = gw_http_server_new(base, NULL, &lim, handler, NULL);
    gw_http_server_adopt(s, sv[0]);
    /* small inputs fit the socket buffer; larger ones are cut (bounded work) */
    size_t n = size > 65536 ? 65536 : size;
    ssize_t w = write(sv[1], data, n);
    (void)w;
    shutdown(sv[1], SHUT_WR);
    for (int i = 0; i < 64; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        char drain[4096];
        while (recv(sv[1], drain, sizeof(drain), MSG_DONTWAIT) > 0) {
        }
        if (gw_http_server_nconns(s) == 0) {
            break;
        }
    }
    gw_http_server_free(s);
    event_base_free(base);
    close(sv[1]);
    return 0;
}
