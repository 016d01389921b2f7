#include <string.h>
#include <strings.h>
#include "http_body.h"

enum {
	CH_SIZE, CH_EXT, CH_SIZE_LF, CH_DATA, CH_DATA_CR, CH_DATA_LF,
	CH_TRAILER, CH_TRAILER_LINE, CH_TRAILER_LF, CH_FINAL_LF,
};

#define CHUNK_LINE_MAX 4096

static void body_set(struct http_body *b, enum body_kind kind, uint64_t len)
{
	memset(b, 0, sizeof(*b));
	b->kind = kind;
	b->remaining = len;
	b->done = kind == BODY_NONE || (kind == BODY_LENGTH && len == 0);
}

/* Content-Length: every instance and list element must be the same number. */
static int content_length(const struct http_head *h, uint64_t *out)
{
	bool seen = false;

	for (int i = http_header_find(h, "Content-Length", 0); i >= 0;
	     i = http_header_find(h, "Content-Length", i + 1)) {
		const char *p = h->headers[i].value.p, *end = p + h->headers[i].value.len;

		while (p <= end) {
			uint64_t v = 0;
			int digits = 0;

			while (p < end && (*p == ' ' || *p == '\t'))
				p++;
			for (; p < end && *p >= '0' && *p <= '9'; p++, digits++) {
				if (v > (UINT64_MAX - 9) / 10)
					return -1;
				v = v * 10 + (*p - '0');
			}
			while (p < end && (*p == ' ' || *p == '\t'))
				p++;
			if (!digits || (p < end && *p != ',') || (seen && v != *out))
				return -1;
			*out = v;
			seen = true;
			p++;
		}
	}
	return seen ? 1 : 0;
}

/* Transfer-Encoding: 1 if the final coding is chunked (and chunked appears
 * once), 0 if some other coding is final, -1 if chunked is repeated or a
 * coding is empty. */
static int te_final_chunked(const struct http_head *h)
{
	int chunked = 0, last_chunked = 0;

	for (int i = http_header_find(h, "Transfer-Encoding", 0); i >= 0;
	     i = http_header_find(h, "Transfer-Encoding", i + 1)) {
		const char *p = h->headers[i].value.p, *end = p + h->headers[i].value.len;

		while (p <= end) {
			const char *q = memchr(p, ',', end - p), *e = q ? q : end;
			struct http_str item;

			while (p < e && (*p == ' ' || *p == '\t'))
				p++;
			while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
				e--;
			item = (struct http_str){ p, e - p };
			if (!item.len)
				return -1;
			last_chunked = http_str_ieq(item, "chunked");
			chunked += last_chunked;
			p = (q ? q : end) + 1;
		}
	}
	if (chunked > 1)
		return -1;
	return last_chunked;
}

int http_request_body(const struct http_head *req, struct http_body *b)
{
	bool has_te = http_header_find(req, "Transfer-Encoding", 0) >= 0;
	uint64_t len = 0;
	int cl = content_length(req, &len);

	if (cl < 0)
		return -400;
	if (has_te) {
		/* TE with CL is the classic smuggling pair; TE in 1.0 is faulty. */
		if (cl || req->version_minor == 0 || te_final_chunked(req) != 1)
			return -400;
		body_set(b, BODY_CHUNKED, 0);
	} else {
		body_set(b, cl ? BODY_LENGTH : BODY_NONE, len);
	}
	return 0;
}

int http_response_body(const struct http_head *resp, bool head_request, struct http_body *b)
{
	bool has_te = http_header_find(resp, "Transfer-Encoding", 0) >= 0;
	uint64_t len = 0;
	int cl = content_length(resp, &len), te;

	if (cl < 0)
		return -502;
	if (head_request || resp->status < 200 || resp->status == 204 || resp->status == 304) {
		body_set(b, BODY_NONE, 0);
		return 0;
	}
	if (has_te) {
		te = te_final_chunked(resp);
		if (cl || te < 0)
			return -502;
		body_set(b, te ? BODY_CHUNKED : BODY_UNTIL_CLOSE, 0);
	} else {
		body_set(b, cl ? BODY_LENGTH : BODY_UNTIL_CLOSE, len);
	}
	return 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static long chunked_advance(struct http_body *b, const char *d, size_t len)
{
	size_t i = 0;

	while (i < len && !b->done) {
		char c = d[i];

		if (b->state == CH_DATA) {
			size_t n = len - i < b->remaining ? len - i : b->remaining;

			b->remaining -= n;
			i += n;
			if (!b->remaining)
				b->state = CH_DATA_CR;
			continue;
		}
		i++;
		if (++b->line_len > CHUNK_LINE_MAX)
			return -1;
		switch (b->state) {
		case CH_SIZE:
			if (hexval(c) >= 0) {
				if (++b->digits > 15)
					return -1;
				b->remaining = b->remaining * 16 + hexval(c);
			} else if (!b->digits) {
				return -1;
			} else if (c == '\r') {
				b->state = CH_SIZE_LF;
			} else if (c == ';' || c == ' ' || c == '\t') {
				b->state = CH_EXT;
			} else {
				return -1;
			}
			break;
		case CH_EXT:
			if (c == '\r')
				b->state = CH_SIZE_LF;
			else if (c != '\t' && ((unsigned char)c < 0x20 || c == 0x7f))
				return -1;
			break;
		case CH_SIZE_LF:
			if (c != '\n')
				return -1;
			b->line_len = 0;
			b->digits = 0;
			b->state = b->remaining ? CH_DATA : CH_TRAILER;
			break;
		case CH_DATA_CR:
			if (c != '\r')
				return -1;
			b->state = CH_DATA_LF;
			break;
		case CH_DATA_LF:
			if (c != '\n')
				return -1;
			b->line_len = 0;
			b->state = CH_SIZE;
			break;
		case CH_TRAILER:
			if (c == '\r') {
				b->state = CH_FINAL_LF;
				break;
			}
			b->state = CH_TRAILER_LINE;
			/* fall through */
		case CH_TRAILER_LINE:
			if (c == '\r')
				b->state = CH_TRAILER_LF;
			else if (c == '\n' || (c != '\t' && ((unsigned char)c < 0x20 || c == 0x7f)))
				return -1;
			break;
		case CH_TRAILER_LF:
			if (c != '\n')
				return -1;
			b->line_len = 0;
			b->state = CH_TRAILER;
			break;
		case CH_FINAL_LF:
			if (c != '\n')
				return -1;
			b->done = true;
			break;
		}
	}
	return (long)i;
}

long http_body_advance(struct http_body *b, const char *data, size_t len)
{
	size_t n;

	if (b->done)
		return 0;
	switch (b->kind) {
	case BODY_NONE:
		b->done = true;
		return 0;
	case BODY_LENGTH:
		n = len < b->remaining ? len : b->remaining;
		b->remaining -= n;
		b->done = !b->remaining;
		return (long)n;
	case BODY_UNTIL_CLOSE:
		return (long)len;
	case BODY_CHUNKED:
		return chunked_advance(b, data, len);
	}
	return -1;
}
