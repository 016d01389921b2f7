/* libFuzzer target: the request-head parser and the request framing rules.
 * Beyond "no crash": every field must point inside the input, a complete
 * head must parse the same when cut right after it, no shorter prefix
 * of a complete head may be taken for a complete one, and an accepted
 * absolute-form target splits into a host and the rest of the target,
 * with no userinfo. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "http_body.h"
#include "http_parse.h"
#include "ws_handshake.h"

static void inside(const struct http_str *s, const char *buf, size_t len)
{
	if (s->len && (s->p < buf || s->p + s->len > buf + len))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct http_head h, h2;
	const char *buf = (const char *)data;
	struct http_body body;
	char accept[WS_ACCEPT_LEN + 1];
	struct http_str authority, origin;
	long r = http_parse_request(buf, size, &h, NULL);

	if (r > (long)size || (r < 0 && r != -400 && r != -414 && r != -431 && r != -505))
		abort();
	if (r <= 0)
		return 0;
	inside(&h.method, buf, r);
	inside(&h.target, buf, r);
	for (size_t i = 0; i < h.n_headers; i++) {
		inside(&h.headers[i].name, buf, r);
		inside(&h.headers[i].value, buf, r);
	}
	if (http_target_absolute(h.target, &authority, &origin) &&
	    (!authority.len || memchr(authority.p, '@', authority.len) || memchr(authority.p, '/', authority.len) ||
	     (origin.len && origin.p[0] != '/' && origin.p[0] != '?') ||
	     authority.p + authority.len != origin.p || origin.p + origin.len != h.target.p + h.target.len))
		abort();
	if (http_parse_request(buf, r, &h2, NULL) != r)
		abort();
	if (r > 4 && http_parse_request(buf, r - 1, &h2, NULL) > 0)
		abort();
	http_request_body(&h, &body);
	ws_request_check(&h, accept);
	return 0;
}
