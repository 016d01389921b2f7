/* libFuzzer target: the response-head parser (anything not HTTP/1.x must
 * be refused, never relayed), the response framing rules, and the 101
 * accept check. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "http_body.h"
#include "http_parse.h"
#include "ws_handshake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct http_head h, h2;
	const char *buf = (const char *)data;
	struct http_body body;
	long r = http_parse_response(buf, size, &h, NULL);

	if (r > (long)size || (r < 0 && r != -502))
		abort();
	if (r <= 0)
		return 0;
	if (memcmp(buf, "HTTP/1.", 7))
		abort();
	for (size_t i = 0; i < h.n_headers; i++)
		if (h.headers[i].name.p < buf || h.headers[i].value.p + h.headers[i].value.len > buf + r)
			abort();
	if (http_parse_response(buf, r, &h2, NULL) != r)
		abort();
	for (int head = 0; head < 2; head++)
		if (http_response_body(&h, head, &body) == 0 && (head || h.status == 204 || h.status == 304) &&
		    !body.done)
			abort(); /* HEAD, 204 and 304 answers have no body */
	ws_response_accepts(&h, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
	return 0;
}
