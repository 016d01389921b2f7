/* Pausing a direction runs the TCP iterator program, which walks and locks
 * every TCP socket of the network namespace (docs/KERNEL.md §13):
 * milliseconds with thousands of sockets. A thread of its own runs it, so
 * the event loop never waits; completions come back through an eventfd. */
#ifndef WSPLICE_DATAPLANE_PAUSE_H
#define WSPLICE_DATAPLANE_PAUSE_H

#include <stdbool.h>
#include <stdint.h>

struct pauser;

/* ok: the socket left verdict_map. tag: what the requester passed. */
typedef void (*paused_fn)(void *ctx, uint64_t cookie, uint64_t tag, bool ok, uint64_t waited_us);

struct pauser *pauser_start(int iter_link_fd, int requests_map_fd);
void pauser_stop(struct pauser *p);
/* Readable when an iteration has finished: then call pauser_collect. */
int pauser_fd(const struct pauser *p);
int pauser_request(struct pauser *p, uint64_t cookie, uint64_t tag);
void pauser_collect(struct pauser *p, paused_fn done, void *ctx);
/* Forgets a request whose socket is going away. */
void pauser_cancel(struct pauser *p, uint64_t cookie);

#endif
