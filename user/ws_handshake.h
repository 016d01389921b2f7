/* RFC 6455 §4: which requests are WebSocket upgrades, whether they are
 * valid, and whether the upstream's 101 really accepted this key (the
 * WebSocket-smuggling defence: no tunnel without a matching accept). */
#ifndef WSPLICE_WS_HANDSHAKE_H
#define WSPLICE_WS_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>
#include "http_parse.h"

#define WS_ACCEPT_LEN 28

/* Returns 0 when req is not a WebSocket upgrade, 1 when it is a valid one
 * (accept_out then holds the Sec-WebSocket-Accept the upstream must send),
 * -400 for an invalid handshake, -426 for an unsupported version. */
int ws_request_check(const struct http_head *req, char accept_out[WS_ACCEPT_LEN + 1]);
/* Is this a 101 that switches to websocket with exactly the expected accept? */
bool ws_response_accepts(const struct http_head *resp, const char *expected_accept);
void ws_accept_for_key(const char *key, size_t len, char out[WS_ACCEPT_LEN + 1]);

#endif
