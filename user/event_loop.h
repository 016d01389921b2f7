/* The epoll loop every socket of the daemon is driven by. Objects embed a
 * struct ev_handler and recover themselves with container_of. A ticker is a
 * periodic 1 ms callback, armed only while some tunnel needs polling (a FIN
 * waiting for its data to leave, a paused direction). */
#ifndef WSPLICE_EVENT_LOOP_H
#define WSPLICE_EVENT_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

struct ev_handler {
	int fd;
	uint32_t events; /* the mask currently registered; 0 = not registered */
	void *owner;     /* for objects with several handlers (a tunnel's two ends) */
	void (*on_event)(struct ev_handler *h, uint32_t events);
};

struct ev_ticker {
	struct ev_ticker *prev, *next;
	bool active;
	void (*on_tick)(struct ev_ticker *t);
};

struct ev_loop;

struct ev_loop *ev_loop_new(void);
void ev_loop_free(struct ev_loop *loop);
/* Registers, changes or (events == 0) removes the handler's interest. */
int ev_watch(struct ev_loop *loop, struct ev_handler *h, uint32_t events);
void ev_ticker_start(struct ev_loop *loop, struct ev_ticker *t);
void ev_ticker_stop(struct ev_loop *loop, struct ev_ticker *t);
/* Runs callbacks queued with ev_defer after the current batch of events, so
 * an object closed by one event is not freed under another of the batch. */
void ev_defer(struct ev_loop *loop, void (*fn)(void *), void *arg);
void ev_loop_run(struct ev_loop *loop);
/* Runs what ev_defer queued (the loop does this after every batch). */
void ev_run_deferred(struct ev_loop *loop);
void ev_loop_stop(struct ev_loop *loop);
/* CLOCK_MONOTONIC in milliseconds: what every deadline is measured in. */
uint64_t ev_now_ms(void);

#endif
