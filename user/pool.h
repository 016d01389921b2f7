/* Upstream pools: picking a server (round-robin or least connections),
 * passive health (a server that failed to connect is skipped for
 * fail_timeout), and idle keep-alive connections kept per server. */
#ifndef WSPLICE_POOL_H
#define WSPLICE_POOL_H

#include <stdbool.h>
#include <stdint.h>
#include "config.h"

struct proxy;

struct idle_conn {
	int fd;
	uint64_t since_ms;
	uint64_t read, written; /* the socket's lifetime byte counts (the sockmap FIN check needs them) */
};

/* Per server address and pool name; lives as long as the process, so a
 * reload keeps the health, the connection counts and the idle connections. */
struct server_state {
	struct server_state *next;
	char key[CFG_NAME_MAX + 300]; /* "pool/host:port" */
	uint64_t down_until_ms;
	unsigned active;              /* requests and tunnels on this server */
	uint64_t rr_seq;              /* round-robin position of the pool */
	struct idle_conn *idle;
	unsigned n_idle, cap_idle;
};

int pool_bind_states(struct proxy *px, struct config *cfg);
void pool_free_states(struct proxy *px);
/* The next server to try, skipping those in the `tried` bit set and those
 * marked down (unless every server is down and none was tried: one is
 * still tried rather than answering 502 for a whole fail_timeout). */
struct server *pool_pick(struct pool *p, uint64_t tried, uint64_t now_ms);
void pool_mark_failed(struct pool *p, struct server *s, uint64_t now_ms);
/* An idle connection to the server that still looks alive (and its byte
 * counts), or -1. */
int pool_take_idle(struct server *s, uint64_t *read, uint64_t *written);
/* Keeps fd for reuse when the pool allows it; otherwise closes it. */
void pool_put_idle(struct pool *p, struct server *s, int fd, uint64_t read, uint64_t written, uint64_t now_ms);
/* A request or tunnel on the server ended (leastconn's count); NULL: none. */
void pool_server_done(struct server_state *st);
/* A tunnel an upgrade brought, on the server of that key: counted on it.
 * NULL when no such server. */
struct server_state *pool_server_adopt(struct proxy *px, const char *key);
/* Closes idle connections older than max_idle_ms. */
void pool_expire_idle(struct proxy *px, uint64_t now_ms, uint64_t max_idle_ms);

#endif
