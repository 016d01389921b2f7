/* A listening socket whose connections each carry one request and get one
 * response, then close: the metrics endpoint and the control socket. Served
 * from the event loop: a response is built at once in memory and written as
 * the socket takes it, so a slow reader never blocks the loop; at most
 * REPLY_CONNS_MAX connections are open, and a new one closes the oldest. */
#ifndef WSPLICE_REPLY_SERVER_H
#define WSPLICE_REPLY_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include "event_loop.h"

#define REPLY_CONNS_MAX 16
#define REPLY_REQUEST_MAX 4096

/* Looks at the request so far (full: no more room for it). Returns 0 to
 * wait for more bytes; otherwise 1 with *out (malloc'd; NULL closes the
 * connection without an answer) and *out_len. */
typedef int (*reply_fn)(void *ctx, const char *in, size_t len, bool full, char **out, size_t *out_len);

struct reply_server;

/* Takes listen_fd (non-blocking, listening). NULL when out of memory. */
struct reply_server *reply_server_open(struct ev_loop *loop, int listen_fd, reply_fn fn, void *ctx);
/* Closes every connection and the listening socket. */
void reply_server_close(struct reply_server *rs);
/* In a forked child: frees it and closes its descriptors without touching
 * the epoll instance it shares with the parent. */
void reply_server_forget(struct reply_server *rs);

#endif
