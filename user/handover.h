/* An upgrade, one worker's part: its tunnels and its connections between
 * requests go from the old process to the new one over a unix
 * SOCK_SEQPACKET socket (one per worker), sockets through SCM_RIGHTS, in
 * batches, each tunnel with its state and the bytes userspace holds for it.
 * HTTP requests in flight finish in the old process; a tunnel one of them
 * becomes leaves right away. */
#ifndef WSPLICE_HANDOVER_H
#define WSPLICE_HANDOVER_H

#include "proxy.h"

struct handover;

/* The old process: everything leaves through sock now, and every tunnel
 * that starts from now on. The caller then waits for its requests in
 * flight to end (a drain), and handover_end says the new process has all. */
struct handover *handover_leave(struct proxy *px, int sock);
void handover_end(struct handover *ho);
/* The new process: takes what comes on sock, in px's loop, until the old
 * one says it is done (or is gone). on_begin(ctx) runs at its first word:
 * this process is the one serving from then on (it opens its listeners). */
struct handover *handover_arrive(struct proxy *px, int sock, void (*on_begin)(void *ctx), void *ctx);
void handover_free(struct handover *ho);

#endif
