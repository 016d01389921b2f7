#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>
#include "log.h"
#include "reply_server.h"

struct reply_conn {
	TAILQ_ENTRY(reply_conn) link;
	struct reply_server *rs;
	struct ev_handler h;
	char in[REPLY_REQUEST_MAX];
	size_t in_len;
	bool answered, closed;
	char *out;
	size_t out_len, out_off;
};

struct reply_server {
	struct ev_loop *loop;
	struct ev_handler h;
	reply_fn fn;
	void *ctx;
	TAILQ_HEAD(, reply_conn) conns;
	unsigned n_conns;
};

static void conn_close(struct reply_conn *c)
{
	struct reply_server *rs = c->rs;

	c->closed = true;
	ev_watch(rs->loop, &c->h, 0);
	close(c->h.fd);
	TAILQ_REMOVE(&rs->conns, c, link);
	rs->n_conns--;
	free(c->out);
	c->out = NULL;
	/* Freed after the batch: another event of it may name this connection
	 * (one evicted by an accept of the same batch), and on_conn ignores it. */
	ev_defer(rs->loop, free, c);
}

static void on_conn(struct ev_handler *h, uint32_t events)
{
	struct reply_conn *c = container_of(h, struct reply_conn, h);

	if (c->closed)
		return;
	if (events & EPOLLERR) {
		conn_close(c);
		return;
	}
	if (!c->answered) {
		ssize_t n = recv(h->fd, c->in + c->in_len, sizeof(c->in) - c->in_len, 0);

		if (n <= 0) {
			if (n == 0 || (errno != EAGAIN && errno != EINTR))
				conn_close(c);
			return;
		}
		c->in_len += n;
		if (!c->rs->fn(c->rs->ctx, c->in, c->in_len, c->in_len == sizeof(c->in), &c->out, &c->out_len))
			return;
		c->answered = true;
		if (!c->out) {
			conn_close(c);
			return;
		}
		ev_watch(c->rs->loop, h, EPOLLOUT);
	}
	while (c->out_off < c->out_len) {
		ssize_t n = send(h->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR)
				conn_close(c);
			return;
		}
		c->out_off += n;
	}
	conn_close(c);
}

static void on_accept(struct ev_handler *h, uint32_t events)
{
	struct reply_server *rs = container_of(h, struct reply_server, h);

	(void)events;
	for (int i = 0; i < REPLY_CONNS_MAX; i++) {
		int fd = accept4(h->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct reply_conn *c;

		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				log_warn("accept: %s", strerror(errno));
			return;
		}
		c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			return;
		}
		if (rs->n_conns == REPLY_CONNS_MAX)
			conn_close(TAILQ_FIRST(&rs->conns));
		c->rs = rs;
		c->h.fd = fd;
		c->h.on_event = on_conn;
		TAILQ_INSERT_TAIL(&rs->conns, c, link);
		rs->n_conns++;
		ev_watch(rs->loop, &c->h, EPOLLIN);
	}
}

struct reply_server *reply_server_open(struct ev_loop *loop, int listen_fd, reply_fn fn, void *ctx)
{
	struct reply_server *rs = calloc(1, sizeof(*rs));

	if (!rs)
		return NULL;
	rs->loop = loop;
	rs->fn = fn;
	rs->ctx = ctx;
	TAILQ_INIT(&rs->conns);
	rs->h.fd = listen_fd;
	rs->h.on_event = on_accept;
	ev_watch(loop, &rs->h, EPOLLIN);
	return rs;
}

void reply_server_close(struct reply_server *rs)
{
	if (!rs)
		return;
	while (!TAILQ_EMPTY(&rs->conns))
		conn_close(TAILQ_FIRST(&rs->conns));
	ev_watch(rs->loop, &rs->h, 0);
	close(rs->h.fd);
	free(rs);
}

void reply_server_forget(struct reply_server *rs)
{
	struct reply_conn *c;

	if (!rs)
		return;
	while ((c = TAILQ_FIRST(&rs->conns))) {
		TAILQ_REMOVE(&rs->conns, c, link);
		close(c->h.fd);
		free(c->out);
		free(c);
	}
	close(rs->h.fd);
	free(rs);
}
