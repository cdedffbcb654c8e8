/*
 * fuzz_http.c — bytes from a client → the HTTP server (parser, limits,
 * pipelining, error answers).  The input is written into one end of a
 * socketpair whose other end the server adopts; the handler answers every
 * request, so the whole request/response cycle runs.  The client side is
 * half-closed after the input (answers still go out), paths under /async
 * are answered on the next loop turn (a request in flight when the FIN
 * arrives) and paths under /big answer more than the output bound (reading
 * stops until the answers drain).
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

static struct event_base *base;
static int pending; /* answers scheduled for the next loop turn */

static void answer(struct gw_http_req *req)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, req->path, req->path_len);
    if (strncmp(req->path, "/big", 4) == 0) {
        static const char filler[1024];
        for (int i = 0; i < 8; i++) {
            evbuffer_add(b, filler, sizeof(filler));
        }
    }
    (void)gw_http_header(req, "x-request-id", NULL);
    (void)gw_http_header(req, "authorization", NULL);
    gw_http_respond(req, 200, "text/plain", b, NULL);
    evbuffer_free(b);
}

static void answer_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pending--;
    answer(arg);
}

static void handler(struct gw_http_req *req, void *arg)
{
    (void)arg;
    if (strncmp(req->path, "/async", 6) == 0 &&
        event_base_once(base, -1, EV_TIMEOUT, answer_later, req, NULL) == 0) {
        pending++;
        return;
    }
    answer(req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
        return 0;
    }
    base = event_base_new();
    struct gw_http_limits lim = {.max_body = 4096,
                                 .max_headers = 2048,
                                 .max_url = 512,
                                 .max_nheaders = 32,
                                 .idle_timeout_s = 5,
                                 .request_read_timeout_s = 5,
                                 .max_output = 4096,
                                 .output_drain_timeout_s = 5};
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
        if (gw_http_server_nconns(s) == 0 && pending == 0) {
            break;
        }
    }
    gw_http_server_free(s);
    while (pending > 0) { /* answers to connections that are gone */
        event_base_loop(base, EVLOOP_NONBLOCK);
    }
    event_base_free(base);
    close(sv[1]);
    return 0;
}
