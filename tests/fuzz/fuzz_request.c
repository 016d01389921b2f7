/* libFuzzer target: the request-head parser and the request framing rules.
 * Beyond "no crash": every field must point inside the input, a complete
 * head must parse the same when cut right after it, no shorter prefix
 * of a complete head may be taken for a complete one, and what goes on to
 * the upstream parses again, in origin form, with the absolute-form
 * target's authority as its only Host. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "header_rewrite.h"
#include "http_body.h"
#include "http_parse.h"
#include "ws_handshake.h"

static void inside(const struct http_str *s, const char *buf, size_t len)
{
	if (s->len && (s->p < buf || s->p + s->len > buf + len))
		abort();
}

static const struct http_limits widest = { HTTP_MAX_HEAD, HTTP_MAX_HEAD, HTTP_MAX_HEADERS };

static void rewritten_parses_again(const struct http_head *req)
{
	static struct http_head up;
	struct request_rewrite rw = { .upstream_close = true, .client_ip = "192.0.2.1" };
	struct http_str authority, origin;
	bool absolute = http_target_absolute(req->target, &authority, &origin);
	struct buf b;
	int host;

	buf_init(&b, HTTP_MAX_HEAD);
	if (rewrite_request(req, &rw, &b) == 0) {
		if (http_parse_request(buf_head(&b), buf_len(&b), &up, &widest) != (long)buf_len(&b))
			abort();
		if (http_target_absolute(up.target, &authority, &origin))
			abort(); /* never absolute-form to an origin server */
		host = http_header_find(&up, "Host", 0);
		if (absolute && (http_header_count(&up, "Host") != 1 || up.headers[host].value.len != authority.len ||
				 memcmp(up.headers[host].value.p, authority.p, authority.len)))
			abort();
	}
	buf_release(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct http_head h, h2;
	const char *buf = (const char *)data;
	struct http_body body;
	char accept[WS_ACCEPT_LEN + 1];
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
	rewritten_parses_again(&h);
	if (http_parse_request(buf, r, &h2, NULL) != r)
		abort();
	if (r > 4 && http_parse_request(buf, r - 1, &h2, NULL) > 0)
		abort();
	http_request_body(&h, &body);
	ws_request_check(&h, accept);
	return 0;
}
