/* Message-body framing (RFC 9112 §6-7): decides where a body ends, and
 * follows a body as it streams past without buffering it. Chunked bodies are
 * relayed byte for byte; the decoder only tracks where they end. */
#ifndef WSPLICE_HTTP_BODY_H
#define WSPLICE_HTTP_BODY_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include "http_parse.h"

enum body_kind { BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_UNTIL_CLOSE };

struct http_body {
	enum body_kind kind;
	bool done;
	uint8_t state;      /* chunked decoder state */
	uint16_t line_len;  /* bytes of the current chunk-size or trailer line */
	uint8_t digits;
	uint64_t remaining; /* BODY_LENGTH: bytes left; BODY_CHUNKED: bytes left in this chunk */
};

/* Framing of a request body; returns 0 or -400. */
int http_request_body(const struct http_head *req, struct http_body *b);
/* Framing of a response body to a request with that method; 0 or -502. */
int http_response_body(const struct http_head *resp, bool head_request, struct http_body *b);
/* Feeds body bytes; returns how many of the len bytes belong to the body
 * (the rest is the next message), or -1 if a chunked body is malformed. */
long http_body_advance(struct http_body *b, const char *data, size_t len);

#endif
