/* What the upstream and the client receive after rewriting. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "header_rewrite.h"

static char *rewrite_req(const char *raw, bool websocket, char *out, size_t outlen)
{
	struct request_rewrite rw = { .websocket = websocket, .upstream_close = !websocket, .client_ip = "10.0.0.9" };
	struct http_head h;
	struct buf b;

	buf_init(&b, 8192);
	assert_true(http_parse_request(raw, strlen(raw), &h, NULL) > 0);
	assert_int_equal(rewrite_request(&h, &rw, &b), 0);
	assert_true(buf_len(&b) < outlen);
	memcpy(out, buf_head(&b), buf_len(&b));
	out[buf_len(&b)] = '\0';
	buf_release(&b);
	return out;
}

static void websocket_request(void **state)
{
	char out[4096];

	(void)state;
	rewrite_req("GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: websocket, h2c\r\nConnection: keep-alive, Upgrade\r\n"
		    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
		    "Sec-WebSocket-Protocol: chat\r\nX-Forwarded-For: 6.6.6.6\r\nKeep-Alive: 5\r\n\r\n",
		    true, out, sizeof(out));
	assert_string_equal(out, "GET /ws HTTP/1.1\r\nHost: app\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
				 "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n"
				 "X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: app\r\n"
				 "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
}

static void connection_listed_fields_are_dropped_but_not_protected_ones(void **state)
{
	char out[4096];

	(void)state;
	rewrite_req("POST / HTTP/1.1\r\nHost: app\r\nConnection: X-Secret, Host, Content-Length, X-Forwarded-For\r\n"
		    "X-Secret: s\r\nContent-Length: 0\r\nTE: trailers\r\nProxy-Connection: x\r\nTrailer: Y\r\n\r\n",
		    false, out, sizeof(out));
	assert_string_equal(out, "POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n"
				 "X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: app\r\n"
				 "Connection: close\r\n\r\n");
}

/* RFC 9112 §3.2.2: the target's authority replaces Host, and the upstream
 * gets the origin form. */
static void absolute_form_target_replaces_host(void **state)
{
	char out[4096];

	(void)state;
	rewrite_req("GET http://evil.example/abs?q=1 HTTP/1.1\r\nHost: good.example\r\nX-A: 1\r\n\r\n", false, out,
		    sizeof(out));
	assert_string_equal(out, "GET /abs?q=1 HTTP/1.1\r\nHost: evil.example\r\nX-A: 1\r\n"
				 "X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: evil.example\r\n"
				 "Connection: close\r\n\r\n");
	rewrite_req("GET HTTPS://evil.example:8443?q HTTP/1.1\r\nHost: good.example\r\n\r\n", false, out, sizeof(out));
	assert_string_equal(out, "GET /?q HTTP/1.1\r\nHost: evil.example:8443\r\n"
				 "X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\n"
				 "X-Forwarded-Host: evil.example:8443\r\nConnection: close\r\n\r\n");
	rewrite_req("OPTIONS http://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n", false, out, sizeof(out));
	assert_string_equal(out, "OPTIONS / HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 10.0.0.9\r\n"
				 "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a.example\r\nConnection: close\r\n\r\n");
}

static void response_for_the_client(void **state)
{
	static const char raw[] = "HTTP/1.1 200 OK\r\nConnection: X-A, close\r\nX-A: 1\r\nKeep-Alive: t\r\n"
				  "Transfer-Encoding: chunked\r\nX-B: 2\r\n\r\n";
	struct http_head h;
	struct buf b;

	(void)state;
	buf_init(&b, 4096);
	assert_true(http_parse_response(raw, strlen(raw), &h, NULL) > 0);
	assert_int_equal(rewrite_response(&h, false, false, &b), 0);
	assert_int_equal(buf_len(&b), strlen("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-B: 2\r\n\r\n"));
	assert_memory_equal(buf_head(&b), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-B: 2\r\n\r\n", buf_len(&b));
	buf_release(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(websocket_request),
		cmocka_unit_test(connection_listed_fields_are_dropped_but_not_protected_ones),
		cmocka_unit_test(absolute_form_target_replaces_host),
		cmocka_unit_test(response_for_the_client),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
