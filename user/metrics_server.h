/* The scrape endpoint: GET /metrics on its own listening socket, served
 * from the event loop (metrics.c renders the text). */
#ifndef WSPLICE_METRICS_SERVER_H
#define WSPLICE_METRICS_SERVER_H

#include <stddef.h>
#include "config.h"
#include "event_loop.h"
#include "reply_server.h"

/* NULL with a one-line reason in err (the address is in use, ...);
 * reply_server_close() closes it. */
struct reply_server *metrics_server_open(struct ev_loop *loop, const struct endpoint *ep, char *err, size_t errlen);

#endif
