#include <ctype.h>
#include <string.h>
#include <strings.h>
#include "http_parse.h"

const struct http_limits http_default_limits = {
	.max_request_line = HTTP_DEFAULT_REQUEST_LINE,
	.max_header_size = HTTP_DEFAULT_HEAD,
	.max_headers = HTTP_DEFAULT_HEADERS,
};

static size_t cap(unsigned v, size_t hard) { return v && v < hard ? v : hard; }

/* tchar per RFC 9110 §5.6.2 */
static bool is_tchar(unsigned char c)
{
	if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
		return true;
	return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* field-vchar / SP / HTAB; obs-text (0x80-0xff) is allowed as opaque data. */
static bool is_field_byte(unsigned char c)
{
	return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* Finds the CRLF ending the line that starts at off. Returns the offset of
 * the CR, -1 if no line end is buffered yet, -2 on a bare LF or bare CR. */
static long line_end(const char *buf, size_t len, size_t off)
{
	for (size_t i = off; i < len; i++) {
		if (buf[i] == '\n')
			return -2;
		if (buf[i] == '\r') {
			if (i + 1 == len)
				return -1;
			return buf[i + 1] == '\n' ? (long)i : -2;
		}
	}
	return -1;
}

/* "HTTP/1.x" at p: returns minor version, -1 if not HTTP/1.x but HTTP/d.d
 * (-> 505), -2 if not an HTTP-version at all. */
static int parse_version(const char *p, size_t len)
{
	if (len != 8 || memcmp(p, "HTTP/", 5) || p[6] != '.' ||
	    p[5] < '0' || p[5] > '9' || p[7] < '0' || p[7] > '9')
		return -2;
	if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
		return -1;
	return p[7] - '0';
}

/* Parses header lines from off to the blank line. */
static long parse_fields(const char *buf, size_t len, size_t off, struct http_head *h, int err_status,
			 bool request, const struct http_limits *lim)
{
	size_t max_head = cap(lim->max_header_size, HTTP_MAX_HEAD);
	size_t max_fields = cap(lim->max_headers, HTTP_MAX_HEADERS);

	h->n_headers = 0;
	for (;;) {
		long e = line_end(buf, len, off);
		size_t i, name_end;
		struct http_header *f;

		if (e == -2)
			return -err_status;
		if (e == -1)
			return len >= max_head ? -(request ? 431 : err_status) : 0;
		if ((size_t)e + 2 > max_head)
			return -(request ? 431 : err_status);
		if ((size_t)e == off)
			return e + 2; /* blank line: end of head */
		if (h->n_headers == max_fields)
			return -(request ? 431 : err_status);
		/* obs-fold, and whitespace before the colon, are smuggling vectors. */
		for (i = off; i < (size_t)e && is_tchar(buf[i]); i++)
			;
		if (i == off || i == (size_t)e || buf[i] != ':')
			return -err_status;
		name_end = i++;
		while (i < (size_t)e && (buf[i] == ' ' || buf[i] == '\t'))
			i++;
		f = &h->headers[h->n_headers++];
		f->name.p = buf + off;
		f->name.len = name_end - off;
		f->value.p = buf + i;
		for (; i < (size_t)e; i++)
			if (!is_field_byte(buf[i]))
				return -err_status;
		f->value.len = buf + e - f->value.p;
		while (f->value.len && (f->value.p[f->value.len - 1] == ' ' || f->value.p[f->value.len - 1] == '\t'))
			f->value.len--;
		off = e + 2;
	}
}

/* The scheme's length with its "://", or 0 when the target is not absolute-form. */
static size_t scheme_len(struct http_str t)
{
	if (t.len > 7 && !strncasecmp(t.p, "http://", 7))
		return 7;
	if (t.len > 8 && !strncasecmp(t.p, "https://", 8))
		return 8;
	return 0;
}

bool http_target_absolute(struct http_str target, struct http_str *authority, struct http_str *origin)
{
	size_t a = scheme_len(target), end = a;

	if (!a)
		return false;
	while (end < target.len && target.p[end] != '/' && target.p[end] != '?')
		end++;
	*authority = (struct http_str){ target.p + a, end - a };
	*origin = (struct http_str){ target.p + end, target.len - end };
	return true;
}

/* RFC 3986 §3.2: authority = host [ ":" port ], host a reg-name (unreserved,
 * pct-encoded, sub-delims) or an IP literal in brackets, with no userinfo
 * (RFC 9110 §4.2.4: an error, and a way to show one host and reach
 * another) and a host that is not empty (RFC 9110 §4.2.1). */
static bool valid_authority(struct http_str a)
{
	const char *host_end = a.p + a.len;

	for (size_t i = 0; i < a.len; i++)
		if (!isalnum((unsigned char)a.p[i]) && !strchr("-._~%!$&'()*+,;=:[]", a.p[i]))
			return false;
	if (a.len && a.p[0] == '[') {
		const char *close = memchr(a.p, ']', a.len);

		if (!close || close == a.p + 1)
			return false;
		host_end = close + 1;
		if (host_end < a.p + a.len && *host_end != ':')
			return false;
	} else {
		const char *colon = memchr(a.p, ':', a.len);

		if (colon)
			host_end = colon;
		if (memchr(a.p, '[', a.len) || memchr(a.p, ']', a.len))
			return false;
	}
	return host_end > a.p;
}

static bool valid_target(const char *p, size_t len, struct http_str method)
{
	struct http_str authority, origin;

	for (size_t i = 0; i < len; i++)
		if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] >= 0x7f)
			return false;
	if (p[0] == '/')
		return true;
	if (len == 1 && p[0] == '*')
		return http_str_ieq(method, "OPTIONS");
	return http_target_absolute((struct http_str){ p, len }, &authority, &origin) && valid_authority(authority);
}

long http_parse_request(const char *buf, size_t len, struct http_head *h, const struct http_limits *lim)
{
	long e = line_end(buf, len, 0);
	size_t max_line;
	const char *sp1, *sp2, *end;
	int minor;

	memset(h, 0, offsetof(struct http_head, headers));
	if (!lim)
		lim = &http_default_limits;
	max_line = cap(lim->max_request_line, HTTP_MAX_HEAD);
	if (e == -2)
		return -400;
	if (e == -1)
		return len > max_line ? -414 : 0;
	if ((size_t)e > max_line)
		return -414;
	end = buf + e;
	for (sp1 = buf; sp1 < end && is_tchar(*sp1); sp1++)
		;
	if (sp1 == buf || sp1 == end || *sp1 != ' ')
		return -400;
	sp2 = memchr(sp1 + 1, ' ', end - sp1 - 1);
	if (!sp2 || sp2 == sp1 + 1)
		return -400;
	h->method = (struct http_str){ buf, sp1 - buf };
	h->target = (struct http_str){ sp1 + 1, sp2 - sp1 - 1 };
	if (!valid_target(h->target.p, h->target.len, h->method))
		return -400;
	minor = parse_version(sp2 + 1, end - sp2 - 1);
	if (minor < 0)
		return minor == -1 ? -505 : -400;
	h->version_minor = minor;
	return parse_fields(buf, len, e + 2, h, 400, true, lim);
}

long http_parse_response(const char *buf, size_t len, struct http_head *h, const struct http_limits *lim)
{
	long e = line_end(buf, len, 0);
	const char *p = buf;
	int minor;

	memset(h, 0, offsetof(struct http_head, headers));
	if (!lim)
		lim = &http_default_limits;
	/* Anything that is not an HTTP/1.x status line is never relayed. */
	if (len >= 5 && memcmp(buf, "HTTP/", 5))
		return -502;
	if (e == -2)
		return -502;
	if (e == -1)
		return len > HTTP_DEFAULT_REQUEST_LINE ? -502 : 0;
	if (e < 12)
		return -502;
	minor = parse_version(p, 8);
	if (minor < 0 || p[8] != ' ')
		return -502;
	for (int i = 9; i < 12; i++)
		if (p[i] < '0' || p[i] > '9')
			return -502;
	if (p[9] == '0')
		return -502;
	h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
	if (e > 12) {
		if (p[12] != ' ')
			return -502;
		h->reason = (struct http_str){ p + 13, e - 13 };
		for (size_t i = 0; i < h->reason.len; i++)
			if (!is_field_byte(h->reason.p[i]))
				return -502;
	}
	h->version_minor = minor;
	return parse_fields(buf, len, e + 2, h, 502, false, lim);
}

bool http_str_ieq(struct http_str s, const char *lit)
{
	return strlen(lit) == s.len && !strncasecmp(s.p, lit, s.len);
}

int http_header_find(const struct http_head *h, const char *name, int from)
{
	for (size_t i = from; i < h->n_headers; i++)
		if (http_str_ieq(h->headers[i].name, name))
			return (int)i;
	return -1;
}

int http_header_count(const struct http_head *h, const char *name)
{
	int n = 0;

	for (int i = http_header_find(h, name, 0); i >= 0; i = http_header_find(h, name, i + 1))
		n++;
	return n;
}

/* Is token one of the trimmed elements of a comma-separated list? */
static bool list_contains(struct http_str list, struct http_str token)
{
	const char *p = list.p, *end = list.p + list.len;

	while (p < end) {
		const char *q = memchr(p, ',', end - p);
		const char *e = q ? q : end;
		struct http_str item;

		while (p < e && (*p == ' ' || *p == '\t'))
			p++;
		item.p = p;
		while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		item.len = e - p;
		if (item.len == token.len && !strncasecmp(item.p, token.p, token.len))
			return true;
		p = q ? q + 1 : end;
	}
	return false;
}

bool http_header_has_token(const struct http_head *h, const char *name, const char *token)
{
	struct http_str t = { token, strlen(token) };

	for (int i = http_header_find(h, name, 0); i >= 0; i = http_header_find(h, name, i + 1))
		if (list_contains(h->headers[i].value, t))
			return true;
	return false;
}

bool http_connection_lists(const struct http_head *h, struct http_str name)
{
	for (int i = http_header_find(h, "Connection", 0); i >= 0; i = http_header_find(h, "Connection", i + 1))
		if (list_contains(h->headers[i].value, name))
			return true;
	return false;
}

const char *http_reason(int status)
{
	switch (status) {
	case 400: return "Bad Request";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 414: return "URI Too Long";
	case 426: return "Upgrade Required";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default: return "Error";
	}
}
