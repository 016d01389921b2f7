/* RFC 6455 handshake rules: the accept computation and request checks. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "ws_handshake.h"

static long parse(const char *raw, struct http_head *h)
{
	return http_parse_request(raw, strlen(raw), h, NULL);
}

static void rfc6455_example_accept(void **state)
{
	char out[WS_ACCEPT_LEN + 1];

	(void)state;
	/* RFC 6455 §1.3 */
	ws_accept_for_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out);
	assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#define UPGRADE(extra) \
	"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n" \
	"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" extra "\r\n"

static void valid_upgrade(void **state)
{
	struct http_head h;
	char accept[WS_ACCEPT_LEN + 1];

	(void)state;
	assert_true(parse(UPGRADE("Sec-WebSocket-Version: 13\r\n"), &h) > 0);
	assert_int_equal(ws_request_check(&h, accept), 1);
	assert_string_equal(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void wrong_version_is_426(void **state)
{
	struct http_head h;
	char accept[WS_ACCEPT_LEN + 1];

	(void)state;
	assert_true(parse(UPGRADE("Sec-WebSocket-Version: 8\r\n"), &h) > 0);
	assert_int_equal(ws_request_check(&h, accept), -426);
	assert_true(parse(UPGRADE(""), &h) > 0);
	assert_int_equal(ws_request_check(&h, accept), -400);
}

static void bad_keys_are_400(void **state)
{
	static const char *const keys[] = {
		"dGhlIHNhbXBsZSBub25jZQ",       /* no padding */
		"dGhlIHNhbXBsZSBub25jZR==",     /* non-zero trailing bits */
		"dGhlIHNhbXBsZSBub25j!Q==",     /* not base64 */
		"dGhlIHNhbXBsZSBub25jZQ==AAAA", /* 19 bytes */
	};
	char raw[512], accept[WS_ACCEPT_LEN + 1];
	struct http_head h;

	(void)state;
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		snprintf(raw, sizeof(raw),
			 "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
			 "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", keys[i]);
		assert_true(parse(raw, &h) > 0);
		assert_int_equal(ws_request_check(&h, accept), -400);
	}
}

static void h2c_is_not_a_websocket_upgrade(void **state)
{
	struct http_head h;
	char accept[WS_ACCEPT_LEN + 1];

	(void)state;
	assert_true(parse("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", &h) > 0);
	assert_int_equal(ws_request_check(&h, accept), 0);
}

static void response_must_carry_the_matching_accept(void **state)
{
	static const char ok[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
				 "Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
	static const char bad[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
				  "Connection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n";
	static const char h2c[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
				  "Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
	struct http_head h;

	(void)state;
	assert_true(http_parse_response(ok, strlen(ok), &h, NULL) > 0);
	assert_true(ws_response_accepts(&h, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
	assert_true(http_parse_response(bad, strlen(bad), &h, NULL) > 0);
	assert_false(ws_response_accepts(&h, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
	assert_true(http_parse_response(h2c, strlen(h2c), &h, NULL) > 0);
	assert_false(ws_response_accepts(&h, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(rfc6455_example_accept),
		cmocka_unit_test(valid_upgrade),
		cmocka_unit_test(wrong_version_is_426),
		cmocka_unit_test(bad_keys_are_400),
		cmocka_unit_test(h2c_is_not_a_websocket_upgrade),
		cmocka_unit_test(response_must_carry_the_matching_accept),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
