/* The process-wide state every connection reaches through: settings, the
 * event loop, the resolved tunnel mode and, in sockmap mode, the BPF data
 * plane. */
#ifndef WSPLICE_PROXY_H
#define WSPLICE_PROXY_H

#include <stdint.h>
#include "config.h"
#include "event_loop.h"

struct dataplane;
struct tunnel;

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

struct proxy {
	struct config *cfg;    /* the current generation; SIGHUP swaps it */
	struct ev_loop *loop;
	enum tunnel_mode mode; /* never MODE_AUTO once running */
	struct dataplane *dp;  /* sockmap mode only */
	struct tunnel **tunnel_by_id;
	uint32_t next_tunnel_id;
	struct conn_link sessions, tunnels; /* list heads */
	uint64_t sessions_open, tunnels_open;
	struct route_state *route_states;
	struct server_state *server_states;
};

#endif
