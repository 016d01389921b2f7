/* A strict HTTP/1.1 message-head parser (RFC 9112 §2-5). It never copies:
 * every field points into the caller's buffer, which must stay untouched
 * while the result is used. Fuzzed by tests/fuzz. */
#ifndef WSPLICE_HTTP_PARSE_H
#define WSPLICE_HTTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>

/* Defaults of the configurable limits, and the hard caps they may be raised to. */
#define HTTP_DEFAULT_HEADERS 100
#define HTTP_DEFAULT_REQUEST_LINE 8192
#define HTTP_DEFAULT_HEAD 32768
#define HTTP_MAX_HEADERS 256
#define HTTP_MAX_HEAD 61440

struct http_limits {
	unsigned max_request_line; /* 414 beyond */
	unsigned max_header_size;  /* 431 beyond (the whole head) */
	unsigned max_headers;      /* 431 beyond */
};

struct http_str {
	const char *p;
	size_t len;
};

struct http_header {
	struct http_str name, value;
};

struct http_head {
	struct http_str method, target; /* request */
	int status;                      /* response */
	struct http_str reason;
	int version_minor;               /* HTTP/1.<minor> */
	size_t n_headers;
	struct http_header headers[HTTP_MAX_HEADERS];
};

/* Results: > 0 is the head length (through the blank line); 0 means more
 * bytes are needed; < 0 is minus the HTTP status to answer (400, 414, 431,
 * 505); lim NULL means the defaults. For responses any error is -502: the client gets a Bad Gateway. */
long http_parse_request(const char *buf, size_t len, struct http_head *h, const struct http_limits *lim);
long http_parse_response(const char *buf, size_t len, struct http_head *h, const struct http_limits *lim);
/* An absolute-form target's authority and the rest of it, the path and query
 * (RFC 9112 §3.2.2); origin is empty when the target has neither, and
 * starts with '?' when it has only a query. False for origin-form and
 * asterisk-form targets. The parser only accepts an absolute-form target
 * whose authority is a non-empty host and an optional port, without
 * userinfo. */
bool http_target_absolute(struct http_str target, struct http_str *authority, struct http_str *origin);
/* The limits used when lim is NULL. */
extern const struct http_limits http_default_limits;

bool http_str_ieq(struct http_str s, const char *lit);
/* The reason phrase of the statuses wsplice answers itself. */
const char *http_reason(int status);
/* Index of the first header with that name (case-insensitive) or -1. */
int http_header_find(const struct http_head *h, const char *name, int from);
int http_header_count(const struct http_head *h, const char *name);
/* Does any instance of the comma-separated list header contain token? */
bool http_header_has_token(const struct http_head *h, const char *name, const char *token);
/* Is `name` one of the tokens listed in any Connection header? */
bool http_connection_lists(const struct http_head *h, struct http_str name);

#endif
