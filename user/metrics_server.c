/* One short HTTP exchange per scrape: read a request head (our strict
 * parser), answer GET /metrics with the exposition or an error status, and
 * close. A scrape is rendered at once into memory and written as the socket
 * takes it, so a slow scraper never blocks the loop; at most SCRAPES_MAX
 * connections are open, and a new one closes the oldest. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>
#include "http_parse.h"
#include "log.h"
#include "metrics.h"
#include "metrics_server.h"

#define SCRAPES_MAX 16
#define REQUEST_MAX 4096

struct scrape {
	TAILQ_ENTRY(scrape) link;
	struct metrics_server *ms;
	struct ev_handler h;
	char in[REQUEST_MAX];
	size_t in_len;
	char *out; /* the whole response, once the request is read */
	size_t out_len, out_off;
};

struct metrics_server {
	struct ev_loop *loop;
	struct ev_handler h;
	TAILQ_HEAD(, scrape) scrapes;
	unsigned n_scrapes;
};

static void scrape_close(struct scrape *sc)
{
	struct metrics_server *ms = sc->ms;

	ev_watch(ms->loop, &sc->h, 0);
	close(sc->h.fd);
	TAILQ_REMOVE(&ms->scrapes, sc, link);
	ms->n_scrapes--;
	free(sc->out);
	/* Freed after the batch: another event of it may name this scrape. */
	ev_defer(ms->loop, free, sc);
}

static void respond(struct scrape *sc, int status, const char *type, const char *body, size_t body_len)
{
	FILE *f = open_memstream(&sc->out, &sc->out_len);

	if (!f)
		return;
	fprintf(f, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sConnection: close\r\n\r\n", status,
		status == 200 ? "OK" : http_reason(status), type, body_len, status == 405 ? "Allow: GET, HEAD\r\n" : "");
	fwrite(body, 1, body_len, f);
	if (fclose(f)) {
		free(sc->out);
		sc->out = NULL;
	}
}

static void respond_text(struct scrape *sc, int status, const char *text)
{
	respond(sc, status, "text/plain", text, strlen(text));
}

/* A complete head (or the status its error asks for): the response goes to sc->out. */
static void answer(struct scrape *sc, long head_len, const struct http_head *h)
{
	char err[64];
	const char *q;
	size_t path_len, body_len = 0;
	char *body;

	if (head_len < 0) {
		snprintf(err, sizeof(err), "%ld\n", -head_len);
		respond_text(sc, (int)-head_len, err);
		return;
	}
	q = memchr(h->target.p, '?', h->target.len);
	path_len = q ? (size_t)(q - h->target.p) : h->target.len;
	if (path_len != strlen("/metrics") || memcmp(h->target.p, "/metrics", path_len)) {
		respond_text(sc, 404, "404 Not Found: the metrics are at /metrics\n");
		return;
	}
	if (!http_str_ieq(h->method, "GET") && !http_str_ieq(h->method, "HEAD")) {
		respond_text(sc, 405, "405 Method Not Allowed\n");
		return;
	}
	body = metrics_render(&body_len);
	if (!body) {
		respond_text(sc, 500, "500 out of memory\n");
		return;
	}
	respond(sc, 200, "text/plain; version=0.0.4; charset=utf-8", body, body_len);
	if (sc->out && http_str_ieq(h->method, "HEAD"))
		sc->out_len -= body_len;
	free(body);
}

static void on_scrape(struct ev_handler *h, uint32_t events)
{
	static struct http_head head; /* 8 KiB: not on the stack, and one loop runs */
	struct scrape *sc = container_of(h, struct scrape, h);

	if (events & EPOLLERR) {
		scrape_close(sc);
		return;
	}
	if (!sc->out) {
		ssize_t n = recv(h->fd, sc->in + sc->in_len, sizeof(sc->in) - sc->in_len, 0);
		long r;

		if (n <= 0) {
			if (n == 0 || (errno != EAGAIN && errno != EINTR))
				scrape_close(sc);
			return;
		}
		sc->in_len += n;
		r = http_parse_request(sc->in, sc->in_len, &head, NULL);
		if (r == 0 && sc->in_len == sizeof(sc->in))
			r = -431;
		if (r == 0)
			return;
		answer(sc, r, &head);
		if (!sc->out) {
			scrape_close(sc);
			return;
		}
		ev_watch(sc->ms->loop, h, EPOLLOUT);
	}
	while (sc->out_off < sc->out_len) {
		ssize_t n = send(h->fd, sc->out + sc->out_off, sc->out_len - sc->out_off, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR)
				scrape_close(sc);
			return;
		}
		sc->out_off += n;
	}
	scrape_close(sc);
}

static void on_accept(struct ev_handler *h, uint32_t events)
{
	struct metrics_server *ms = container_of(h, struct metrics_server, h);

	(void)events;
	for (int i = 0; i < SCRAPES_MAX; i++) {
		int fd = accept4(h->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct scrape *sc;

		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				log_warn("metrics: accept: %s", strerror(errno));
			return;
		}
		sc = calloc(1, sizeof(*sc));
		if (!sc) {
			close(fd);
			return;
		}
		if (ms->n_scrapes == SCRAPES_MAX)
			scrape_close(TAILQ_FIRST(&ms->scrapes));
		sc->ms = ms;
		sc->h.fd = fd;
		sc->h.on_event = on_scrape;
		TAILQ_INSERT_TAIL(&ms->scrapes, sc, link);
		ms->n_scrapes++;
		ev_watch(ms->loop, &sc->h, EPOLLIN);
	}
}

struct metrics_server *metrics_server_open(struct ev_loop *loop, const struct endpoint *ep, char *err, size_t errlen)
{
	struct metrics_server *ms = calloc(1, sizeof(*ms));
	int one = 1, fd;

	if (!ms) {
		snprintf(err, errlen, "metrics: out of memory");
		return NULL;
	}
	fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(fd, (const struct sockaddr *)&ep->addr, ep->addrlen) || listen(fd, 64)) {
		snprintf(err, errlen, "metrics: cannot listen on %s:%s: %s", ep->host, ep->port, strerror(errno));
		if (fd >= 0)
			close(fd);
		free(ms);
		return NULL;
	}
	ms->loop = loop;
	TAILQ_INIT(&ms->scrapes);
	ms->h.fd = fd;
	ms->h.on_event = on_accept;
	ev_watch(loop, &ms->h, EPOLLIN);
	return ms;
}

void metrics_server_close(struct metrics_server *ms)
{
	if (!ms)
		return;
	while (!TAILQ_EMPTY(&ms->scrapes))
		scrape_close(TAILQ_FIRST(&ms->scrapes));
	ev_watch(ms->loop, &ms->h, 0);
	close(ms->h.fd);
	free(ms);
}
