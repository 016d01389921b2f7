/* The process-wide state every connection reaches through: settings, the
 * event loop, the open sessions and the tunnel layer. */
#ifndef WSPLICE_PROXY_H
#define WSPLICE_PROXY_H

#include <stdbool.h>
#include <stdint.h>
#include "config.h"
#include "event_loop.h"

struct tunnel_set;
struct workers;

/* Intrusive list membership, so shutdown can close every connection. */
struct conn_link {
	struct conn_link *prev, *next;
};

static inline void conn_link_add(struct conn_link *head, struct conn_link *l)
{
	l->next = head->next;
	l->prev = head;
	head->next->prev = l;
	head->next = l;
}

static inline void conn_link_del(struct conn_link *l)
{
	l->prev->next = l->next;
	l->next->prev = l->prev;
	l->next = l->prev = l;
}

struct route_state;
struct server_state;

#ifndef WSPLICE_VERSION
#define WSPLICE_VERSION "0.1.0"
#endif

struct proxy {
	struct config *cfg;    /* the current generation; SIGHUP swaps it */
	struct ev_loop *loop;
	struct tunnel_set *tunnels; /* tunnel.c's: this worker's tunnels and engines; NULL in a master */
	struct workers *workers;    /* a master's (workers.c); NULL in a worker or a single process */
	const char *engine;         /* what new tunnels start on */
	uint32_t n_workers;
	struct conn_link sessions;  /* list head; session.c's */
	uint64_t sessions_open;
	uint64_t upgrades_admitted; /* upgrades waiting for their 101: they count against max_tunnels */
	uint64_t started_ms;     /* ev_now_ms() at start */
	unsigned generation;     /* configurations loaded: 1, then one more per reload */
	bool draining;           /* a graceful stop (drain.c): answers close their connection */
	struct route_state *route_states;
	struct server_state *server_states;
};

#endif
