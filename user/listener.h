/* A listening socket: accepts clients and starts a session for each. */
#ifndef WSPLICE_LISTENER_H
#define WSPLICE_LISTENER_H

#include "proxy.h"

struct listener;

/* n listening sockets on lc's address, before any worker starts (and
 * before privileges are dropped): more than one share the port through
 * SO_REUSEPORT, one per worker. -1 with the reason in err. */
int listener_bind(const struct listener_cfg *lc, unsigned n, int *fds, char *err, size_t errlen);
/* The MSS fd's SYN-ACKs advertise, so that a client's packets are at most
 * mtu bytes (the express lane's devices differ): the MSS, or 0 when fd is
 * left as it was (mtu 0, a loopback address, or an error). */
unsigned listener_clamp_mss(int fd, unsigned mtu);
/* Accepts on fd (listener_bind's) in px's loop; the listener owns fd. */
struct listener *listener_open(struct proxy *px, const struct listener_cfg *lc, int fd, char *err, size_t errlen);
void listener_close(struct listener *l);
/* Its listening socket (an upgrade passes it on), -1 for none. */
int listener_fd(const struct listener *l);

#endif
