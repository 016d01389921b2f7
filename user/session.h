/* One client connection while it speaks HTTP: read a request head, connect
 * to the upstream, forward the request, relay the response, and either go
 * back for the next request (keep-alive) or hand both sockets to the tunnel
 * layer after a verified 101 (struct tunnel_handoff). */
#ifndef WSPLICE_SESSION_H
#define WSPLICE_SESSION_H

#include <stdint.h>
#include <sys/socket.h>
#include "proxy.h"

struct session; /* session.c's own */

/* peer: the client's address, as accept4() returned it. */
void session_start(struct proxy *px, int client_fd, const char *listener,
		   const struct sockaddr_storage *peer);
/* A connection an upgrade brought, which had `answered` requests answered
 * by the old process (its keep-alive timeout applies then). */
void session_resume(struct proxy *px, int fd, const char *listener, const struct sockaddr_storage *peer,
		    unsigned answered);
/* Acts on every session whose deadline has passed. */
void session_timeouts(struct proxy *px, uint64_t now_ms);
/* Sends an error response and closes once it has left. */
void session_reply_error(struct session *s, int status);
/* Tears the session down; the memory is freed after the current batch. */
void session_close(struct session *s);
/* Closes every session (at shutdown). */
void session_close_all(struct proxy *px);
/* A graceful stop: idle connections close now, the others after their
 * current answer. */
void session_drain(struct proxy *px);

/* An upgrade: each connection between requests (or before its first)
 * goes to fn, which passes its socket on before it is closed here; the
 * others finish here and close after their answer. */
typedef void (*session_leave_fn)(void *ctx, int fd, const char *listener, const struct sockaddr_storage *peer,
				 unsigned answered);
void session_hand_over(struct proxy *px, session_leave_fn fn, void *ctx);

#endif
