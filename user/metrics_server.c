/* The scrape endpoint: one short HTTP exchange per connection (our strict
 * parser reads the request head), GET or HEAD /metrics answered with the
 * exposition, anything else with an error status, then close. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "http_parse.h"
#include "metrics.h"
#include "metrics_server.h"
#include "reply_server.h"

static void respond(char **out, size_t *out_len, int status, const char *type, const char *body, size_t body_len)
{
	FILE *f = open_memstream(out, out_len);

	if (!f) {
		*out = NULL;
		return;
	}
	fprintf(f, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sConnection: close\r\n\r\n", status,
		status == 200 ? "OK" : http_reason(status), type, body_len, status == 405 ? "Allow: GET, HEAD\r\n" : "");
	fwrite(body, 1, body_len, f);
	if (ferror(f) | fclose(f)) {
		free(*out);
		*out = NULL;
	}
}

static void respond_text(char **out, size_t *out_len, int status, const char *text)
{
	respond(out, out_len, status, "text/plain", text, strlen(text));
}

static int answer(void *ctx, const char *in, size_t len, bool full, char **out, size_t *out_len)
{
	static struct http_head h; /* 8 KiB: not on the stack, and one loop runs */
	long r = http_parse_request(in, len, &h, NULL);
	size_t path_len, body_len = 0;
	const char *q;
	char err[64], *body;

	(void)ctx;
	if (r == 0 && !full)
		return 0;
	if (r <= 0) {
		r = r ? r : -431;
		snprintf(err, sizeof(err), "%ld\n", -r);
		respond_text(out, out_len, (int)-r, err);
		return 1;
	}
	q = memchr(h.target.p, '?', h.target.len);
	path_len = q ? (size_t)(q - h.target.p) : h.target.len;
	if (path_len != strlen("/metrics") || memcmp(h.target.p, "/metrics", path_len)) {
		respond_text(out, out_len, 404, "404 Not Found: the metrics are at /metrics\n");
		return 1;
	}
	if (!http_str_ieq(h.method, "GET") && !http_str_ieq(h.method, "HEAD")) {
		respond_text(out, out_len, 405, "405 Method Not Allowed\n");
		return 1;
	}
	body = metrics_render(&body_len);
	if (!body) {
		respond_text(out, out_len, 500, "500 out of memory\n");
		return 1;
	}
	respond(out, out_len, 200, "text/plain; version=0.0.4; charset=utf-8", body, body_len);
	if (*out && http_str_ieq(h.method, "HEAD"))
		*out_len -= body_len;
	free(body);
	return 1;
}

struct reply_server *metrics_server_open(struct ev_loop *loop, const struct endpoint *ep, char *err, size_t errlen)
{
	struct reply_server *rs;
	int one = 1, fd;

	fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(fd, (const struct sockaddr *)&ep->addr, ep->addrlen) || listen(fd, 64)) {
		snprintf(err, errlen, "metrics: cannot listen on %s:%s: %s", ep->host, ep->port, strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	rs = reply_server_open(loop, fd, answer, NULL);
	if (!rs) {
		snprintf(err, errlen, "metrics: out of memory");
		close(fd);
	}
	return rs;
}
