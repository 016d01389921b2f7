#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include "pool.h"
#include "session.h"
#include "timeouts.h"
#include "tunnel.h"

#define SWEEP_MS 100

struct timeouts_watch {
	struct ev_handler h;
	struct proxy *px;
};

static void on_sweep(struct ev_handler *h, uint32_t events)
{
	struct timeouts_watch *tw = container_of(h, struct timeouts_watch, h);
	uint64_t expirations, now = ev_now_ms();

	(void)events;
	if (read(h->fd, &expirations, sizeof(expirations)) != sizeof(expirations))
		return;
	session_timeouts(tw->px, now);
	tunnel_timeouts(tw->px->tunnels, &tw->px->cfg->timeouts, now);
	pool_expire_idle(tw->px, now, tw->px->cfg->timeouts.upstream_idle_ms);
}

struct timeouts_watch *timeouts_start(struct proxy *px)
{
	struct itimerspec its = { .it_interval = { 0, SWEEP_MS * 1000000L }, .it_value = { 0, SWEEP_MS * 1000000L } };
	struct timeouts_watch *tw = calloc(1, sizeof(*tw));

	if (!tw)
		return NULL;
	tw->px = px;
	tw->h.fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	tw->h.on_event = on_sweep;
	if (tw->h.fd < 0 || timerfd_settime(tw->h.fd, 0, &its, NULL) || ev_watch(px->loop, &tw->h, EPOLLIN)) {
		if (tw->h.fd >= 0)
			close(tw->h.fd);
		free(tw);
		return NULL;
	}
	return tw;
}

void timeouts_stop(struct timeouts_watch *tw)
{
	if (!tw)
		return;
	ev_watch(tw->px->loop, &tw->h, 0);
	close(tw->h.fd);
	free(tw);
}
