/* What the proxy sends on: the request head for the upstream and the
 * response head for the client, with hop-by-hop fields removed (RFC 9110
 * §7.6.1), including those the Connection header names. */
#ifndef WSPLICE_HEADER_REWRITE_H
#define WSPLICE_HEADER_REWRITE_H

#include <stdbool.h>
#include "buf.h"
#include "http_parse.h"

struct request_rewrite {
	bool websocket;        /* a validated upgrade: ask the upstream to switch */
	bool upstream_close;   /* ask the upstream to close after this response */
	bool trust_forwarded;  /* the peer is a trusted proxy: extend its X-Forwarded-* */
	const char *client_ip; /* for X-Forwarded-For */
};

/* Appends the rewritten head to out; -1 when it does not fit. */
int rewrite_request(const struct http_head *req, const struct request_rewrite *rw, struct buf *out);
/* websocket: this is the accepted 101; close: tell the client we close. */
int rewrite_response(const struct http_head *resp, bool websocket, bool close, struct buf *out);
/* Is this field dropped when forwarding a message with these headers? */
bool header_is_hop_by_hop(const struct http_head *h, struct http_str name);

#endif
