/* One client connection while it speaks HTTP: read a request head, connect
 * to the upstream, forward the request, relay the response, and either go
 * back for the next request (keep-alive) or hand both sockets to a tunnel
 * after a verified 101. */
#ifndef WSPLICE_SESSION_H
#define WSPLICE_SESSION_H

#include <netinet/in.h>
#include <arpa/inet.h>
#include "buf.h"
#include "event_loop.h"
#include "http_body.h"
#include "proxy.h"
#include "ws_handshake.h"

enum session_state {
	S_REQ_HEAD,   /* waiting for a complete request head */
	S_CONNECTING, /* upstream connect() in progress */
	S_EXCHANGE,   /* request body out, response head and body back */
	S_HANDOFF,    /* 101 accepted: flushing and draining before the tunnel */
	S_CLOSING,    /* flushing a final response, then close */
};

struct session {
	struct conn_link link; /* first: the list entry is the session */
	struct proxy *px;
	struct config *cfg;       /* the generation the current request runs under */
	const char *listener;     /* the name of the listener that accepted it */
	struct sockaddr_storage peer;
	const struct route *route;
	struct server *server;    /* of the upstream connection; counts in its `active` */
	struct route_state *tunnel_slot; /* an upgrade holds one of the route's tunnel slots */
	uint64_t tried;           /* servers of the pool tried for this request */
	struct buf replay;        /* the request head, while a reused connection may need a retry */
	bool upstream_reused, upstream_keepalive, trusted_peer;
	unsigned requests;        /* answered so far */
	uint64_t deadline_ms;     /* 0 = none */
	int deadline_action;      /* what happens then: see session_timeouts() */
	struct ev_handler client, upstream; /* upstream.fd < 0 when none */
	enum session_state state;
	bool closed, client_eof, upstream_eof, upstream_connected;
	bool websocket, head_request, keepalive, close_after, resp_head_done;
	struct buf cin, uin, cout, uout;
	struct http_body req_body, resp_body;
	/* Bytes userspace moved on each socket: the sockmap FIN check compares
	 * them with the kernel's own counts. */
	uint64_t client_read, client_written, upstream_read, upstream_written;
	char ws_accept[WS_ACCEPT_LEN + 1];
	char client_ip[INET6_ADDRSTRLEN];
};

/* peer: the client's address, as accept4() returned it. */
void session_start(struct proxy *px, int client_fd, const char *listener,
		   const struct sockaddr_storage *peer);
/* Acts on every session whose deadline has passed. */
void session_timeouts(struct proxy *px, uint64_t now_ms);
/* Sends an error response and closes once it has left. */
void session_reply_error(struct session *s, int status);
/* Tears the session down; the memory is freed after the current batch. */
void session_close(struct session *s);
/* Closes every session (at shutdown). */
void session_close_all(struct proxy *px);

#endif
