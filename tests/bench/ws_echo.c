/* The benchmark's upstream: answers a WebSocket upgrade with a 101, then
 * echoes every byte back. It does not unmask frames: the proxies under test
 * never look inside them either, so the bytes on the wire are what counts.
 *   ws_echo PORT [ADDRESS]   (default 127.0.0.1; one thread, epoll) */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "bench_common.h"

#define BUF_SIZE (256 * 1024)

struct conn {
	int fd;
	int upgraded;
	size_t len, off; /* pending echo bytes in buf[off..len) */
	char buf[BUF_SIZE];
};

static const char resp101[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
			      "Sec-WebSocket-Accept: " BENCH_WS_ACCEPT "\r\n\r\n";

/* Closed connections are kept for reuse. A calloc and free of 256 KiB per
 * connection made glibc trim and refault the heap whenever two connections
 * overlapped: page faults that the handshake figure then charged to how
 * late a proxy closes the upstream, not to the proxy's own work. */
#define FREE_MAX 256
static struct conn *free_conns[FREE_MAX];
static int n_free;

static struct conn *conn_new(int fd)
{
	struct conn *c = n_free ? free_conns[--n_free] : malloc(sizeof(*c));

	if (!c)
		die("out of memory");
	c->fd = fd;
	c->upgraded = 0;
	c->len = c->off = 0;
	return c;
}

static void drop(int ep, struct conn *c)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (n_free < FREE_MAX)
		free_conns[n_free++] = c;
	else
		free(c);
}

static void watch(int ep, struct conn *c, uint32_t ev)
{
	struct epoll_event e = { .events = ev, .data.ptr = c };

	epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

/* Handshake: read the request head (its bytes are not echoed). */
static int handshake(struct conn *c)
{
	ssize_t n = read(c->fd, c->buf + c->len, BUF_SIZE - c->len - 1);
	char *end;

	if (n <= 0)
		return n == 0 || errno != EAGAIN ? -1 : 0;
	c->len += n;
	c->buf[c->len] = '\0';
	end = strstr(c->buf, "\r\n\r\n");
	if (!end)
		return c->len >= BUF_SIZE - 1 ? -1 : 0;
	end += 4;
	c->len -= end - c->buf;
	memmove(c->buf, end, c->len); /* pipelined bytes get echoed */
	if (write_all(c->fd, resp101, sizeof(resp101) - 1))
		return -1;
	c->upgraded = 1;
	return 0;
}

static int pump(int ep, struct conn *c)
{
	for (;;) {
		if (c->off < c->len) {
			ssize_t w = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);

			if (w < 0) {
				if (errno != EAGAIN)
					return -1;
				watch(ep, c, EPOLLOUT);
				return 0;
			}
			c->off += w;
			continue;
		}
		c->off = c->len = 0;
		ssize_t n = read(c->fd, c->buf, BUF_SIZE);

		if (n == 0)
			return -1;
		if (n < 0) {
			if (errno != EAGAIN)
				return -1;
			watch(ep, c, EPOLLIN);
			return 0;
		}
		c->len = n;
	}
}

int main(int argc, char **argv)
{
	struct epoll_event events[256];
	int lfd, ep;

	if (argc < 2 || argc > 3)
		die("usage: ws_echo PORT [ADDRESS]");
	signal(SIGPIPE, SIG_IGN);
	lfd = tcp_listen(argc == 3 ? argv[2] : "127.0.0.1", atoi(argv[1]));
	set_nonblock(lfd, 1);
	ep = epoll_create1(0);
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &(struct epoll_event){ .events = EPOLLIN, .data.ptr = NULL });
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int n = epoll_wait(ep, events, 256, -1);

		for (int i = 0; i < n; i++) {
			struct conn *c = events[i].data.ptr;

			if (!c) {
				int fd;

				while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					c = conn_new(fd);
					set_nodelay(fd);
					epoll_ctl(ep, EPOLL_CTL_ADD, fd, &(struct epoll_event){ .events = EPOLLIN, .data.ptr = c });
				}
				continue;
			}
			if (!c->upgraded) {
				if (handshake(c) < 0) {
					drop(ep, c);
					continue;
				}
				if (!c->upgraded)
					continue;
			}
			if (pump(ep, c) < 0)
				drop(ep, c);
		}
	}
}
