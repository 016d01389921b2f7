/* A listening socket: accepts clients and starts a session for each. */
#ifndef WSPLICE_LISTENER_H
#define WSPLICE_LISTENER_H

#include "proxy.h"

struct listener;

/* n listening sockets on lc's address, before any worker starts (and
 * before privileges are dropped): more than one share the port through
 * SO_REUSEPORT, one per worker. mtu: unless 0, the largest packet a
 * client's segments may make (tunnel_shared_listen_mtu), which the SYN-ACKs'
 * MSS then fits (but on a loopback address). -1 with the reason in err. */
int listener_bind(const struct listener_cfg *lc, unsigned n, unsigned mtu, int *fds, char *err, size_t errlen);
/* Accepts on fd (listener_bind's) in px's loop; the listener owns fd. */
struct listener *listener_open(struct proxy *px, const struct listener_cfg *lc, int fd, char *err, size_t errlen);
void listener_close(struct listener *l);
/* Its listening socket (an upgrade passes it on), -1 for none. */
int listener_fd(const struct listener *l);

#endif
