#include <time.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include "event_loop.h"
#include "log.h"

#define TICK_NS 1000000L

struct deferred {
	void (*fn)(void *);
	void *arg;
};

struct ev_loop {
	int epfd;
	bool stop;
	struct ev_handler timer;
	struct ev_ticker tickers; /* list head */
	bool timer_armed;
	struct deferred *deferred;
	size_t n_deferred, cap_deferred;
};

static void arm_timer(struct ev_loop *loop, bool on)
{
	struct itimerspec its = { 0 };

	if (loop->timer_armed == on)
		return;
	if (on) {
		its.it_interval.tv_nsec = TICK_NS;
		its.it_value.tv_nsec = TICK_NS;
	}
	timerfd_settime(loop->timer.fd, 0, &its, NULL);
	loop->timer_armed = on;
}

static void on_timer(struct ev_handler *h, uint32_t events)
{
	struct ev_loop *loop = container_of(h, struct ev_loop, timer);
	struct ev_ticker *t, *next;
	uint64_t expirations;

	(void)events;
	if (read(h->fd, &expirations, sizeof(expirations)) < 0)
		return;
	for (t = loop->tickers.next; t != &loop->tickers; t = next) {
		next = t->next;
		t->on_tick(t);
	}
	if (loop->tickers.next == &loop->tickers)
		arm_timer(loop, false);
}

struct ev_loop *ev_loop_new(void)
{
	struct ev_loop *loop = calloc(1, sizeof(*loop));

	if (!loop)
		return NULL;
	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	loop->timer.fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (loop->epfd < 0 || loop->timer.fd < 0) {
		ev_loop_free(loop);
		return NULL;
	}
	loop->timer.on_event = on_timer;
	loop->tickers.next = loop->tickers.prev = &loop->tickers;
	ev_watch(loop, &loop->timer, EPOLLIN);
	return loop;
}

void ev_loop_free(struct ev_loop *loop)
{
	if (!loop)
		return;
	if (loop->epfd >= 0)
		close(loop->epfd);
	if (loop->timer.fd >= 0)
		close(loop->timer.fd);
	free(loop->deferred);
	free(loop);
}

int ev_watch(struct ev_loop *loop, struct ev_handler *h, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = h };
	int op;

	if (events == h->events)
		return 0;
	op = !h->events ? EPOLL_CTL_ADD : events ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;
	if (epoll_ctl(loop->epfd, op, h->fd, &ev) < 0) {
		log_warn("epoll_ctl(fd %d): %s", h->fd, strerror(errno));
		return -1;
	}
	h->events = events;
	return 0;
}

void ev_ticker_start(struct ev_loop *loop, struct ev_ticker *t)
{
	if (t->active)
		return;
	t->next = &loop->tickers;
	t->prev = loop->tickers.prev;
	t->prev->next = t;
	loop->tickers.prev = t;
	t->active = true;
	arm_timer(loop, true);
}

void ev_ticker_stop(struct ev_loop *loop, struct ev_ticker *t)
{
	(void)loop;
	if (!t->active)
		return;
	t->prev->next = t->next;
	t->next->prev = t->prev;
	t->next = t->prev = NULL;
	t->active = false;
}

void ev_defer(struct ev_loop *loop, void (*fn)(void *), void *arg)
{
	if (loop->n_deferred == loop->cap_deferred) {
		size_t cap = loop->cap_deferred ? 2 * loop->cap_deferred : 64;
		struct deferred *d = realloc(loop->deferred, cap * sizeof(*d));

		if (!d) {
			/* Leaking beats a use-after-free; this only happens under ENOMEM. */
			log_error("out of memory deferring a free");
			return;
		}
		loop->deferred = d;
		loop->cap_deferred = cap;
	}
	loop->deferred[loop->n_deferred++] = (struct deferred){ fn, arg };
}

void ev_run_deferred(struct ev_loop *loop)
{
	for (size_t i = 0; i < loop->n_deferred; i++)
		loop->deferred[i].fn(loop->deferred[i].arg);
	loop->n_deferred = 0;
}

void ev_loop_run(struct ev_loop *loop)
{
	struct epoll_event events[128];

	while (!loop->stop) {
		int n = epoll_wait(loop->epfd, events, 128, -1);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_error("epoll_wait: %s", strerror(errno));
			break;
		}
		for (int i = 0; i < n; i++) {
			struct ev_handler *h = events[i].data.ptr;

			/* Stale: its handler stopped watching earlier in this
			 * batch. A tunnel's end that left epoll has nothing to
			 * do, and an event ring an upgrade stopped reading is
			 * the next process's: a pause read here would be lost. */
			if (!h->events)
				continue;
			h->on_event(h, events[i].events);
		}
		ev_run_deferred(loop);
	}
	ev_run_deferred(loop);
}

void ev_loop_stop(struct ev_loop *loop)
{
	loop->stop = true;
}

uint64_t ev_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
