/* A graceful stop (SIGTERM with shutdown_timeout): no new connections,
 * requests in flight finish, idle keep-alive connections close, tunnels
 * run on until they end or the timeout, then the loop stops and whatever
 * is left closes as at any stop. */
#ifndef WSPLICE_DRAIN_H
#define WSPLICE_DRAIN_H

#include <stdint.h>
#include "proxy.h"

struct drain;

/* stop_accepting(ctx) runs first (the caller closes its listeners). NULL
 * when the timer cannot be made: the caller then stops at once. */
struct drain *drain_start(struct proxy *px, uint64_t timeout_ms, void (*stop_accepting)(void *ctx), void *ctx);
void drain_free(struct drain *d);

#endif
