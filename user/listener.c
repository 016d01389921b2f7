#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "listener.h"
#include "log.h"
#include "session.h"
#include "upstream.h"

struct listener {
	struct proxy *px;
	struct ev_handler h;
	char name[CFG_NAME_MAX]; /* routes name the listener they serve */
};

static void on_accept(struct ev_handler *h, uint32_t events)
{
	struct listener *l = container_of(h, struct listener, h);

	(void)events;
	/* Bounded so one busy listener cannot starve established tunnels. */
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage peer = { .ss_family = AF_UNSPEC };
		socklen_t len = sizeof(peer);
		int fd = accept4(h->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				log_warn("accept: %s", strerror(errno));
			return;
		}
		socket_tune(fd);
		session_start(l->px, fd, l->name, &peer);
	}
}

struct listener *listener_open(struct proxy *px, const struct listener_cfg *lc, char *err, size_t errlen)
{
	const struct endpoint *ep = &lc->ep;
	struct listener *l = calloc(1, sizeof(*l));
	int one = 1, fd;

	if (!l)
		return NULL;
	fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(fd, (const struct sockaddr *)&ep->addr, ep->addrlen) || listen(fd, 4096)) {
		snprintf(err, errlen, "cannot listen on %s:%s: %s", ep->host, ep->port, strerror(errno));
		if (fd >= 0)
			close(fd);
		free(l);
		return NULL;
	}
	l->px = px;
	snprintf(l->name, sizeof(l->name), "%s", lc->name);
	l->h.fd = fd;
	l->h.on_event = on_accept;
	ev_watch(px->loop, &l->h, EPOLLIN);
	return l;
}

void listener_close(struct listener *l)
{
	if (!l)
		return;
	ev_watch(l->px->loop, &l->h, 0);
	close(l->h.fd);
	free(l);
}
