#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include "drain.h"
#include "log.h"
#include "session.h"
#include "tunnel.h"

/* How often the drain looks whether everything has ended. */
#define DRAIN_CHECK_MS 50

struct drain {
	struct ev_handler h; /* a timerfd */
	struct proxy *px;
	uint64_t deadline_ms;
};

static void on_check(struct ev_handler *h, uint32_t events)
{
	struct drain *d = container_of(h, struct drain, h);
	uint64_t expirations, tunnels = tunnel_set_count(d->px->tunnels);

	(void)events;
	if (read(h->fd, &expirations, sizeof(expirations)) < 0)
		return;
	if (!d->px->sessions_open && !tunnels) {
		log_info("drained: every request and tunnel has ended");
		ev_loop_stop(d->px->loop);
	} else if (ev_now_ms() >= d->deadline_ms) {
		log_info("shutdown_timeout: closing %llu tunnels and %llu connections", (unsigned long long)tunnels,
			 (unsigned long long)d->px->sessions_open);
		ev_loop_stop(d->px->loop);
	}
}

struct drain *drain_start(struct proxy *px, uint64_t timeout_ms, void (*stop_accepting)(void *ctx), void *ctx)
{
	struct itimerspec its = { { 0, DRAIN_CHECK_MS * 1000000L }, { 0, DRAIN_CHECK_MS * 1000000L } };
	struct drain *d = calloc(1, sizeof(*d));

	if (!d)
		return NULL;
	d->px = px;
	d->deadline_ms = ev_now_ms() + timeout_ms;
	d->h.on_event = on_check;
	d->h.fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (d->h.fd < 0 || timerfd_settime(d->h.fd, 0, &its, NULL) || ev_watch(px->loop, &d->h, EPOLLIN)) {
		if (d->h.fd >= 0)
			close(d->h.fd);
		free(d);
		return NULL;
	}
	px->draining = true;
	stop_accepting(ctx);
	session_drain(px);
	return d;
}

void drain_free(struct drain *d)
{
	if (!d)
		return;
	ev_watch(d->px->loop, &d->h, 0);
	close(d->h.fd);
	free(d);
}
