/* Which route a request takes, and the route's admission policy: upgrades
 * allowed or not, the Origin allow-list, the cap on concurrent tunnels. */
#ifndef WSPLICE_ROUTE_H
#define WSPLICE_ROUTE_H

#include "config.h"
#include "http_parse.h"

struct proxy;

/* Lives as long as the process, so a count survives a reload: tunnels
 * opened under the old routes still count against the new cap. The count
 * is shared by the workers (shared.c), so the cap is the daemon's. */
struct route_state {
	struct route_state *next;
	char name[CFG_NAME_MAX];
	int64_t *tunnels; /* open, plus upgrades waiting for their 101 */
};

/* Attaches every route of cfg to its state (made on first sight). */
int route_bind_states(struct proxy *px, struct config *cfg);
void route_free_states(struct proxy *px);
/* Host (exact beats *.suffix beats any), then the longest path prefix;
 * NULL when none matches (404). */
const struct route *route_match(const struct config *cfg, const char *listener, const struct http_head *req);
/* 0 if the upgrade may proceed, else the status to answer (403, 503). */
int route_admit_websocket(const struct route *r, const struct http_head *req);
/* Takes a tunnel slot of the route and of the daemon's max_tunnels, every
 * worker counted: 0, or -1 (a 503) with *daemon_full saying whose cap. */
int route_take_slot(const struct route *r, uint32_t max_tunnels, bool *daemon_full);
/* A tunnel (or an upgrade that did not become one) gives its slot back; NULL: none. */
void route_tunnel_done(struct route_state *st);
/* A tunnel an upgrade brought, under the route of that name: it takes its
 * slot (whatever the cap: it is open already). NULL when no such route. */
struct route_state *route_state_adopt(struct proxy *px, const char *name);

#endif
