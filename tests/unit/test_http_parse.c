/* The strict head parser and body framing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "http_body.h"
#include "http_parse.h"

static long req(const char *raw, struct http_head *h)
{
	return http_parse_request(raw, strlen(raw), h, NULL);
}

static void parses_a_request(void **state)
{
	static const char raw[] = "GET /a?b=c HTTP/1.1\r\nHost: example\r\nX-Empty:\r\nX-Pad: \t v \t\r\n\r\nNEXT";
	struct http_head h;

	(void)state;
	assert_int_equal(req(raw, &h), (long)(strlen(raw) - 4));
	assert_true(http_str_ieq(h.method, "GET"));
	assert_int_equal(h.target.len, 6);
	assert_int_equal(h.version_minor, 1);
	assert_int_equal(h.n_headers, 3);
	assert_int_equal(h.headers[1].value.len, 0);
	assert_int_equal(h.headers[2].value.len, 1); /* OWS trimmed both sides */
	assert_int_equal(http_header_find(&h, "host", 0), 0);
}

static void absolute_form_targets(void **state)
{
	static const char *const good[] = {
		"GET http://a.example HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET https://a.example:8443/p?q HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://[::1]:8080/x HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://%61.example/ HTTP/1.1\r\nHost: x\r\n\r\n",
	};
	struct http_str authority, origin;
	struct http_head h;

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		assert_true(req(good[i], &h) > 0);
	assert_true(req(good[2], &h) > 0);
	assert_true(http_target_absolute(h.target, &authority, &origin));
	assert_int_equal(authority.len, strlen("[::1]:8080"));
	assert_memory_equal(authority.p, "[::1]:8080", authority.len);
	assert_int_equal(origin.len, 2);
	assert_true(req("GET /p HTTP/1.1\r\nHost: x\r\n\r\n", &h) > 0);
	assert_false(http_target_absolute(h.target, &authority, &origin));
}

static void incomplete_needs_more(void **state)
{
	struct http_head h;

	(void)state;
	assert_int_equal(req("GET / HTTP/1.1\r\nHost: a\r\n", &h), 0);
	assert_int_equal(req("GET / HTTP/1.1\r", &h), 0);
	assert_int_equal(req("", &h), 0);
}

static void rejects_smuggling_shapes(void **state)
{
	static const char *const bad[] = {
		"GET / HTTP/1.1\r\nHost : a\r\n\r\n",     /* space before colon */
		"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", /* obs-fold */
		"GET / HTTP/1.1\nHost: a\r\n\r\n",         /* bare LF */
		"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",    /* bare CR */
		"GET / HTTP/1.1\r\nHo\x01st: a\r\n\r\n",   /* CTL in name */
		"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",  /* NUL in value (length covers it) */
		"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",      /* double space */
		"GET foo HTTP/1.1\r\nHost: a\r\n\r\n",     /* invalid target */
		"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",      /* trailing space */
		"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",       /* method not a token */
		"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",             /* absolute form without a host */
		"GET http://?q HTTP/1.1\r\nHost: a\r\n\r\n",             /* the same, with a query */
		"GET http://a@evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n", /* userinfo */
		"GET http://:80/x HTTP/1.1\r\nHost: a\r\n\r\n",          /* a port but no host */
		"GET http://h#x/ HTTP/1.1\r\nHost: a\r\n\r\n",           /* not a host character */
		"GET http://[::1/ HTTP/1.1\r\nHost: a\r\n\r\n",          /* an IP literal left open */
		"GET http://[]/ HTTP/1.1\r\nHost: a\r\n\r\n",            /* an empty IP literal */
		"GET http://[::1]x/ HTTP/1.1\r\nHost: a\r\n\r\n",        /* junk after the literal */
	};
	struct http_head h;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		size_t len = strlen(bad[i]);

		if (i == 5)
			len = sizeof("GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n") - 1;
		assert_int_equal(http_parse_request(bad[i], len, &h, NULL), -400);
	}
	assert_int_equal(req("GET / HTTP/2.0\r\n\r\n", &h), -505);
}

static void limits(void **state)
{
	static char big[HTTP_DEFAULT_HEAD + 200];
	struct http_head h;
	size_t n;

	(void)state;
	memset(big, 'a', sizeof(big));
	memcpy(big, "GET /", 5);
	assert_int_equal(http_parse_request(big, HTTP_DEFAULT_REQUEST_LINE + 10, &h, NULL), -414);
	n = (size_t)snprintf(big, sizeof(big), "GET / HTTP/1.1\r\n");
	while (n + 8 < sizeof(big))
		n += (size_t)snprintf(big + n, sizeof(big) - n, "X: y\r\n");
	assert_int_equal(http_parse_request(big, n, &h, NULL), -431);
}

static void parses_responses(void **state)
{
	static const char ok[] = "HTTP/1.1 204 No Content\r\nX: y\r\n\r\n";
	static const char noreason[] = "HTTP/1.1 200\r\n\r\n";
	struct http_head h;

	(void)state;
	assert_int_equal(http_parse_response(ok, strlen(ok), &h, NULL), (long)strlen(ok));
	assert_int_equal(h.status, 204);
	assert_int_equal(http_parse_response(noreason, strlen(noreason), &h, NULL), (long)strlen(noreason));
	assert_int_equal(http_parse_response("SSH-2.0-x\r\n", 11, &h, NULL), -502);
	assert_int_equal(http_parse_response("HTTP/1.1 2000 x\r\n\r\n", 19, &h, NULL), -502);
}

static void connection_tokens(void **state)
{
	static const char raw[] = "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive , Upgrade\r\nConnection: X-A\r\n\r\n";
	struct http_head h;

	(void)state;
	assert_true(req(raw, &h) > 0);
	assert_true(http_header_has_token(&h, "Connection", "upgrade"));
	assert_true(http_connection_lists(&h, (struct http_str){ "x-a", 3 }));
	assert_false(http_header_has_token(&h, "Connection", "close"));
}

static void framing_decisions(void **state)
{
	struct http_head h;
	struct http_body b;

	(void)state;
	assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n", &h) > 0);
	assert_int_equal(http_request_body(&h, &b), 0);
	assert_int_equal(b.kind, BODY_LENGTH);
	assert_int_equal(b.remaining, 5);
	assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", &h) > 0);
	assert_int_equal(http_request_body(&h, &b), -400);
	assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", &h) > 0);
	assert_int_equal(http_request_body(&h, &b), -400);
	assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", &h) > 0);
	assert_int_equal(http_request_body(&h, &b), -400);
	assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n", &h) > 0);
	assert_int_equal(http_request_body(&h, &b), -400);
	assert_true(req("GET / HTTP/1.1\r\nHost: h\r\n\r\n", &h) > 0);
	assert_int_equal(http_request_body(&h, &b), 0);
	assert_true(b.done);
}

static void chunked_decoder(void **state)
{
	static const char body[] = "4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
	struct http_body b = { .kind = BODY_CHUNKED };
	size_t total = 0, len = strlen(body);

	(void)state;
	/* Byte by byte: the decoder keeps its state across calls. */
	while (!b.done && total < len) {
		long n = http_body_advance(&b, body + total, 1);

		assert_true(n >= 0);
		total += (size_t)n;
	}
	assert_true(b.done);
	assert_int_equal(total, len - 4);

	struct http_body bad = { .kind = BODY_CHUNKED };
	assert_int_equal(http_body_advance(&bad, "zz\r\n", 4), -1);
	struct http_body huge = { .kind = BODY_CHUNKED };
	assert_int_equal(http_body_advance(&huge, "ffffffffffffffffff\r\n", 20), -1);
	struct http_body nocrlf = { .kind = BODY_CHUNKED };
	assert_int_equal(http_body_advance(&nocrlf, "1\r\naXY", 6), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(parses_a_request),    cmocka_unit_test(incomplete_needs_more),
		cmocka_unit_test(absolute_form_targets),
		cmocka_unit_test(rejects_smuggling_shapes), cmocka_unit_test(limits),
		cmocka_unit_test(parses_responses),    cmocka_unit_test(connection_tokens),
		cmocka_unit_test(framing_decisions),   cmocka_unit_test(chunked_decoder),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
