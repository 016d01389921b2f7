#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "log.h"
#include "pool.h"
#include "proxy.h"

int pool_bind_states(struct proxy *px, struct config *cfg)
{
	for (size_t i = 0; i < cfg->n_pools; i++) {
		struct pool *p = &cfg->pools[i];

		for (size_t j = 0; j < p->n_servers; j++) {
			struct server *s = &p->servers[j];
			char key[sizeof(s->st->key)];
			struct server_state *st;

			snprintf(key, sizeof(key), "%s/%s:%s", p->name, s->ep.host, s->ep.port);
			for (st = px->server_states; st && strcmp(st->key, key); st = st->next)
				;
			if (!st) {
				st = calloc(1, sizeof(*st));
				if (!st)
					return -1;
				memcpy(st->key, key, sizeof(key));
				st->next = px->server_states;
				px->server_states = st;
			}
			s->st = st;
		}
	}
	return 0;
}

void pool_free_states(struct proxy *px)
{
	while (px->server_states) {
		struct server_state *next = px->server_states->next;

		for (unsigned i = 0; i < px->server_states->n_idle; i++)
			close(px->server_states->idle[i].fd);
		free(px->server_states->idle);
		free(px->server_states);
		px->server_states = next;
	}
}

struct server *pool_pick(struct pool *p, uint64_t tried, uint64_t now_ms)
{
	struct server *best = NULL, *fallback = NULL;
	/* The first server's state carries the pool's round-robin position. */
	uint64_t start = p->servers[0].st->rr_seq++;

	for (size_t k = 0; k < p->n_servers; k++) {
		size_t i = (start + k) % p->n_servers;
		struct server *s = &p->servers[i];

		if (i < 64 && (tried >> i) & 1)
			continue;
		if (s->st->down_until_ms > now_ms) {
			if (!fallback || s->st->down_until_ms < fallback->st->down_until_ms)
				fallback = s;
			continue;
		}
		if (p->balance == LB_ROUND_ROBIN)
			return s;
		if (!best || s->st->active < best->st->active)
			best = s;
	}
	return best ? best : tried ? NULL : fallback;
}

void pool_mark_failed(struct pool *p, struct server *s, uint64_t now_ms)
{
	if (p->n_servers > 1 && p->fail_timeout_ms) {
		s->st->down_until_ms = now_ms + p->fail_timeout_ms;
		log_warn("pool %s: server %s:%s marked down for %llu ms", p->name, s->ep.host, s->ep.port,
			 (unsigned long long)p->fail_timeout_ms);
	}
}

int pool_take_idle(struct server *s, uint64_t *read, uint64_t *written)
{
	struct server_state *st = s->st;

	while (st->n_idle) {
		/* Newest first: the least likely to have been closed by the server. */
		struct idle_conn *ic = &st->idle[--st->n_idle];
		int fd = ic->fd;
		char c;
		ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);

		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			*read = ic->read;
			*written = ic->written;
			return fd;
		}
		close(fd); /* closed, reset, or it sent bytes nobody asked for */
	}
	return -1;
}

void pool_put_idle(struct pool *p, struct server *s, int fd, uint64_t read, uint64_t written, uint64_t now_ms)
{
	struct server_state *st = s->st;

	if (st->n_idle >= p->keepalive) {
		close(fd);
		return;
	}
	if (st->n_idle == st->cap_idle) {
		unsigned cap = st->cap_idle ? st->cap_idle * 2 : 4;
		struct idle_conn *n = realloc(st->idle, cap * sizeof(*n));

		if (!n) {
			close(fd);
			return;
		}
		st->idle = n;
		st->cap_idle = cap;
	}
	st->idle[st->n_idle++] = (struct idle_conn){ fd, now_ms, read, written };
}

void pool_expire_idle(struct proxy *px, uint64_t now_ms, uint64_t max_idle_ms)
{
	for (struct server_state *st = px->server_states; st; st = st->next) {
		unsigned keep = 0;

		for (unsigned i = 0; i < st->n_idle; i++) {
			/* since_ms can be later than now_ms (pooled during this sweep). */
			if (now_ms > st->idle[i].since_ms && now_ms - st->idle[i].since_ms >= max_idle_ms)
				close(st->idle[i].fd);
			else
				st->idle[keep++] = st->idle[i];
		}
		st->n_idle = keep;
	}
}

void pool_server_done(struct server_state *st)
{
	if (st)
		st->active--;
}

struct server_state *pool_server_adopt(struct proxy *px, const char *key)
{
	struct server_state *st;

	for (st = px->server_states; st && strcmp(st->key, key); st = st->next)
		;
	if (st)
		st->active++;
	return st;
}
