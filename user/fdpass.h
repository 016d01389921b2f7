/* Messages with descriptors over a unix SOCK_SEQPACKET socket (SCM_RIGHTS):
 * what an upgrade moves from the old process to the new one. */
#ifndef WSPLICE_FDPASS_H
#define WSPLICE_FDPASS_H

#include <stddef.h>
#include <sys/types.h>

/* The kernel's SCM_MAX_FD is 253 descriptors a message. */
#define FDPASS_MAX 250

/* One message of len bytes with nfds descriptors (duplicated for the
 * receiver; the caller keeps its own). 0, or -1 with errno. */
int fdpass_send(int sock, const void *data, size_t len, const int *fds, size_t nfds);
/* One message into data (at most cap bytes) and up to max_fds descriptors
 * (close-on-exec) into fds, *nfds saying how many. Returns the message's
 * length, 0 when the peer closed, -1 with errno (EMSGSIZE: it was cut,
 * descriptors closed). */
ssize_t fdpass_recv(int sock, void *data, size_t cap, int *fds, size_t max_fds, size_t *nfds);

#endif
