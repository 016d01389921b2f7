#include <stdio.h>
#include <string.h>
#include "header_rewrite.h"

static const char *const hop_by_hop[] = {
	"Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade", NULL,
};

/* Fields a client may not remove by listing them in Connection: the proxy's
 * own framing and the handshake depend on them (hop-by-hop abuse). */
static const char *const protected_fields[] = {
	"Host", "Content-Length", "Transfer-Encoding", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
	"Sec-WebSocket-Accept", NULL,
};

static bool in_list(const char *const *list, struct http_str name)
{
	for (; *list; list++)
		if (http_str_ieq(name, *list))
			return true;
	return false;
}

bool header_is_hop_by_hop(const struct http_head *h, struct http_str name)
{
	return in_list(hop_by_hop, name) ||
	       (!in_list(protected_fields, name) && http_connection_lists(h, name));
}

static int put(struct buf *out, const char *s, size_t n)
{
	return buf_append(out, s, n);
}

static int put_field(struct buf *out, const char *name, struct http_str value)
{
	return put(out, name, strlen(name)) || put(out, ": ", 2) || put(out, value.p, value.len) ||
	       put(out, "\r\n", 2);
}

static int put_str(struct buf *out, const char *s)
{
	return put(out, s, strlen(s));
}

static int copy_fields(const struct http_head *h, struct buf *out, const char *const *also_drop)
{
	for (size_t i = 0; i < h->n_headers; i++) {
		const struct http_header *f = &h->headers[i];

		if (header_is_hop_by_hop(h, f->name) || (also_drop && in_list(also_drop, f->name)))
			continue;
		if (put(out, f->name.p, f->name.len) || put(out, ": ", 2) || put(out, f->value.p, f->value.len) ||
		    put(out, "\r\n", 2))
			return -1;
	}
	return 0;
}

int rewrite_request(const struct http_head *req, const struct request_rewrite *rw, struct buf *out)
{
	/* What the proxy writes itself; Host too, for an absolute-form target. */
	static const char *const own[] = { "Host", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", NULL };
	const char *const *forwarded = own + 1;
	int host_field = http_header_find(req, "Host", 0);
	struct http_str ip = { rw->client_ip, strlen(rw->client_ip) }, target = req->target, authority;
	bool absolute = http_target_absolute(req->target, &authority, &target);
	struct http_str host = absolute	      ? authority
			       : host_field >= 0 ? req->headers[host_field].value
						 : (struct http_str){ "", 0 };

	/* An absolute-form target goes on in origin form, and its authority
	 * replaces whatever Host the client sent (RFC 9112 §3.2.2): the
	 * upstream must see the one name the request was routed on. */
	if (put(out, req->method.p, req->method.len) || put(out, " ", 1) ||
	    (absolute && (!target.len || target.p[0] != '/') && put(out, "/", 1)) || put(out, target.p, target.len) ||
	    /* An HTTP/1.0 client cannot read chunked: ask as it asked, so the
	     * upstream answers with a body it can read (RFC 9112 §7.1). */
	    put_str(out, req->version_minor == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n"))
		return -1;
	if (absolute && put_field(out, "Host", authority))
		return -1;
	if (copy_fields(req, out, absolute ? own : forwarded))
		return -1;
	/* From a trusted proxy the chain is kept and extended; from anyone else
	 * client-supplied X-Forwarded-* are replaced, never trusted. */
	if (put_str(out, "X-Forwarded-For: "))
		return -1;
	if (rw->trust_forwarded) {
		for (int i = http_header_find(req, "X-Forwarded-For", 0); i >= 0;
		     i = http_header_find(req, "X-Forwarded-For", i + 1))
			if (req->headers[i].value.len &&
			    (put(out, req->headers[i].value.p, req->headers[i].value.len) || put(out, ", ", 2)))
				return -1;
	}
	if (put(out, ip.p, ip.len) || put(out, "\r\n", 2))
		return -1;
	for (int k = 1; forwarded[k]; k++) {
		int i = rw->trust_forwarded ? http_header_find(req, forwarded[k], 0) : -1;

		if (i >= 0) {
			if (put_field(out, forwarded[k], req->headers[i].value))
				return -1;
		} else if (k == 1) {
			if (put_str(out, "X-Forwarded-Proto: http\r\n"))
				return -1;
		} else if (host.len && put_field(out, "X-Forwarded-Host", host)) {
			return -1;
		}
	}
	if (rw->websocket)
		return put_str(out, "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
	return put_str(out, rw->upstream_close ? "Connection: close\r\n\r\n" : "\r\n");
}

int rewrite_response(const struct http_head *resp, bool websocket, bool close, struct buf *out)
{
	char status[32];

	snprintf(status, sizeof(status), "HTTP/1.1 %03d ", resp->status);
	if (put_str(out, status) || put(out, resp->reason.p, resp->reason.len) || put(out, "\r\n", 2) ||
	    copy_fields(resp, out, NULL))
		return -1;
	if (websocket)
		return put_str(out, "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
	return put_str(out, close ? "Connection: close\r\n\r\n" : "\r\n");
}
