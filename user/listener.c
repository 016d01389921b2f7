#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "session.h"
#include "upstream.h"

/* How long a listener stops accepting when the process is out of file
 * descriptors or memory (nginx waits accept_mutex_delay, 500 ms, and
 * HAProxy until a connection closes). The connection stays in the accept
 * queue meanwhile; nothing is refused. */
#define ACCEPT_PAUSE_MS 100
#define ACCEPT_PAUSE_LOG_MS 1000

struct listener {
	struct proxy *px;
	struct ev_handler h;
	struct ev_handler resume; /* a one-shot timer, made at open: no fd is free when it is needed */
	uint64_t unlogged_pauses, last_log_ms;
	char name[CFG_NAME_MAX]; /* routes name the listener they serve */
	char where[256 + 8 + 3]; /* host:port, for the log */
};

/* A listener is level-triggered: without the pause, a queued connection
 * that cannot be accepted woke the loop at once, forever, with a log line
 * each time. */
static void pause_accepting(struct listener *l, int err)
{
	struct itimerspec its = { .it_value = { 0, ACCEPT_PAUSE_MS * 1000000L } };
	uint64_t now = ev_now_ms();

	l->unlogged_pauses++;
	if (!l->last_log_ms || now - l->last_log_ms >= ACCEPT_PAUSE_LOG_MS) {
		log_warn("accept on %s: %s: not accepting for %d ms (%llu such pauses since the last line)", l->where,
			 strerror(err), ACCEPT_PAUSE_MS, (unsigned long long)l->unlogged_pauses);
		l->unlogged_pauses = 0;
		l->last_log_ms = now;
	}
	if (timerfd_settime(l->resume.fd, 0, &its, NULL) == 0)
		ev_watch(l->px->loop, &l->h, 0);
}

static void on_resume(struct ev_handler *h, uint32_t events)
{
	struct listener *l = container_of(h, struct listener, resume);
	uint64_t expirations;

	(void)events;
	if (read(h->fd, &expirations, sizeof(expirations)) < 0 && errno == EAGAIN)
		return;
	ev_watch(l->px->loop, &l->h, EPOLLIN);
}

static void on_accept(struct ev_handler *h, uint32_t events)
{
	struct listener *l = container_of(h, struct listener, h);

	(void)events;
	/* A drain began in this batch: its close is deferred, not its effect. */
	if (l->px->draining)
		return;
	/* Bounded so one busy listener cannot starve established tunnels. */
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage peer = { .ss_family = AF_UNSPEC };
		socklen_t len = sizeof(peer);
		int fd = accept4(h->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
				pause_accepting(l, errno);
			else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				log_warn("accept on %s: %s", l->where, strerror(errno));
			return;
		}
		socket_tune(fd);
		metrics_inc(M_CONNECTIONS_ACCEPTED);
		session_start(l->px, fd, l->name, &peer);
	}
}

/* The MSS fd's SYN-ACKs advertise, so that a client's packets are at most
 * mtu bytes: the MSS, or 0 when fd is left as it was (mtu 0, a loopback
 * address, or an error). Before listen(): a SYN answered earlier would be
 * told more than its socket's tcpi_advmss then says. */
static unsigned clamp_mss(int fd, unsigned mtu)
{
	struct sockaddr_storage a;
	socklen_t len = sizeof(a);
	int mss;

	if (!mtu || getsockname(fd, (struct sockaddr *)&a, &len))
		return 0;
	/* Bound to a loopback address, its clients come over lo, where every
	 * leg is lo's. */
	if (addr_is_loopback(&a))
		return 0;
	/* The IPv4 and TCP headers, or IPv6's (a dual-stack socket's IPv4
	 * clients get 20 bytes less than they could). */
	mss = (int)mtu - (a.ss_family == AF_INET ? 40 : 60);
	if (mss < 536 || setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof(mss)))
		return 0;
	return (unsigned)mss;
}

static int bind_one(const struct sockaddr_storage *addr, socklen_t addrlen, bool reuseport, unsigned mtu,
		    unsigned *mss)
{
	int one = 1, fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one))) ||
	    bind(fd, (const struct sockaddr *)addr, addrlen))
		goto fail;
	*mss = clamp_mss(fd, mtu);
	if (listen(fd, 4096))
		goto fail;
	return fd;
fail:
	if (fd >= 0) {
		int err = errno;

		close(fd);
		errno = err;
	}
	return -1;
}

int listener_bind(const struct listener_cfg *lc, unsigned n, unsigned mtu, int *fds, char *err, size_t errlen)
{
	const struct endpoint *ep = &lc->ep;
	struct sockaddr_storage addr = ep->addr;
	socklen_t addrlen = ep->addrlen;
	unsigned i = 0, mss = 0;
	int probe;

	/* SO_REUSEPORT would let us join a group another process holds
	 * (another wsplice, an old one on the port): a plain bind first says
	 * whether the port is free, as it does with one worker. */
	if (n > 1) {
		probe = bind_one(&addr, addrlen, false, 0, &mss);
		if (probe < 0)
			goto fail;
		close(probe);
	}
	for (; i < n; i++) {
		fds[i] = bind_one(&addr, addrlen, n > 1, mtu, &mss);
		if (fds[i] < 0)
			goto fail;
		/* Port 0: the others join the port the first one got. */
		if (!i)
			getsockname(fds[0], (struct sockaddr *)&addr, &addrlen);
	}
	if (mss)
		log_info("listener %s:%s: advertises MSS %u, so a client's segments fit the smallest device's MTU, %u "
			 "(the express lane's devices differ)", ep->host, ep->port, mss, mtu);
	return 0;
fail:
	snprintf(err, errlen, "cannot listen on %s:%s: %s", ep->host, ep->port, strerror(errno));
	while (i-- > 0)
		close(fds[i]);
	return -1;
}

struct listener *listener_open(struct proxy *px, const struct listener_cfg *lc, int fd, char *err, size_t errlen)
{
	const struct endpoint *ep = &lc->ep;
	struct listener *l = calloc(1, sizeof(*l));

	if (!l)
		return NULL;
	l->resume.fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (l->resume.fd < 0) {
		snprintf(err, errlen, "listener %s:%s: timerfd: %s", ep->host, ep->port, strerror(errno));
		close(fd);
		free(l);
		return NULL;
	}
	l->px = px;
	snprintf(l->name, sizeof(l->name), "%s", lc->name);
	snprintf(l->where, sizeof(l->where), "%s:%s", ep->host, ep->port);
	l->h.fd = fd;
	l->h.on_event = on_accept;
	l->resume.on_event = on_resume;
	ev_watch(px->loop, &l->h, EPOLLIN);
	ev_watch(px->loop, &l->resume, EPOLLIN);
	return l;
}

int listener_fd(const struct listener *l)
{
	return l ? l->h.fd : -1;
}

void listener_close(struct listener *l)
{
	if (!l)
		return;
	ev_watch(l->px->loop, &l->h, 0);
	ev_watch(l->px->loop, &l->resume, 0);
	close(l->h.fd);
	close(l->resume.fd);
	free(l);
}
