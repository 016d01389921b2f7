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

void session_start(struct proxy *px, int client_fd);
/* Sends an error response and closes once it has left. */
void session_reply_error(struct session *s, int status);
/* Tears the session down; the memory is freed after the current batch. */
void session_close(struct session *s);
/* Closes every session (at shutdown). */
void session_close_all(struct proxy *px);

#endif
