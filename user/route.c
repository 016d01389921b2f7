#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "proxy.h"
#include "route.h"
#include "shared.h"

/* Open tunnels and upgrades waiting for their 101, in every worker. */
static int64_t *daemon_tunnels(void)
{
	static int64_t *count;
	static uint32_t of_worker;

	/* This worker's column: a worker forked from a master that looked it
	 * up already must not count into the master's. */
	if (!count || of_worker != shared_worker()) {
		count = shared_counter("tunnels", true);
		of_worker = shared_worker();
	}
	return count;
}

int route_bind_states(struct proxy *px, struct config *cfg)
{
	for (size_t i = 0; i < cfg->n_routes; i++) {
		struct route *r = &cfg->routes[i];
		struct route_state *st;

		for (st = px->route_states; st && strcmp(st->name, r->name); st = st->next)
			;
		if (!st) {
			st = calloc(1, sizeof(*st));
			if (!st)
				return -1;
			char name[CFG_NAME_MAX + 8];

			memcpy(st->name, r->name, sizeof(st->name));
			snprintf(name, sizeof(name), "route %s", r->name);
			st->tunnels = shared_counter(name, true);
			if (!st->tunnels || !daemon_tunnels()) {
				free(st);
				return -1;
			}
			st->next = px->route_states;
			px->route_states = st;
		}
		r->st = st;
	}
	return 0;
}

void route_free_states(struct proxy *px)
{
	while (px->route_states) {
		struct route_state *next = px->route_states->next;

		free(px->route_states);
		px->route_states = next;
	}
}

/* The authority the request names: the absolute-form target's, else Host,
 * without the port. */
static struct http_str request_host(const struct http_head *req, struct http_str *path)
{
	struct http_str host = { "", 0 }, origin;
	int i;

	*path = req->target;
	if (http_target_absolute(req->target, &host, &origin)) {
		/* "http://h" and "http://h?q" ask for "/" (RFC 9112 §3.2.1). */
		*path = origin.len && origin.p[0] == '/' ? origin : (struct http_str){ "/", 1 };
	} else if ((i = http_header_find(req, "Host", 0)) >= 0) {
		host = req->headers[i].value;
	}
	if (host.len && host.p[0] == '[') {
		const char *close = memchr(host.p, ']', host.len);

		if (close)
			host.len = close + 1 - host.p;
	} else {
		const char *colon = memchr(host.p, ':', host.len);

		if (colon)
			host.len = colon - host.p;
	}
	while (host.len && host.p[host.len - 1] == '.')
		host.len--; /* "example.com." is example.com */
	return host;
}

/* 0 no match; else a rank: exact host 3 + 256, suffix by its length, any 1. */
static size_t host_rank(const char *pattern, struct http_str host)
{
	size_t plen = strlen(pattern);

	if (!plen)
		return 1;
	if (pattern[0] == '*' && pattern[1] == '.') {
		size_t slen = plen - 1; /* ".example.com" */

		return host.len > slen && !strncasecmp(host.p + host.len - slen, pattern + 1, slen) ? 1 + slen : 0;
	}
	return plen == host.len && !strncasecmp(pattern, host.p, plen) ? 1 + 256 + plen : 0;
}

const struct route *route_match(const struct config *cfg, const char *listener, const struct http_head *req)
{
	const struct route *best = NULL;
	size_t best_host = 0, best_path = 0;
	struct http_str path;
	struct http_str host = request_host(req, &path);
	const char *q = memchr(path.p, '?', path.len);

	if (q)
		path.len = q - path.p;
	for (size_t i = 0; i < cfg->n_routes; i++) {
		const struct route *r = &cfg->routes[i];
		size_t hr, plen = strlen(r->path);

		if (r->listener[0] && strcmp(r->listener, listener))
			continue;
		hr = host_rank(r->host, host);
		if (!hr || plen > path.len || memcmp(r->path, path.p, plen))
			continue;
		if (hr > best_host || (hr == best_host && plen > best_path)) {
			best = r;
			best_host = hr;
			best_path = plen;
		}
	}
	return best;
}

int route_admit_websocket(const struct route *r, const struct http_head *req)
{
	if (!r->websocket)
		return 403;
	if (r->n_origins) {
		int i = http_header_find(req, "Origin", 0);
		bool ok = false;

		/* One Origin, equal to an allowed one: a page on another site
		 * cannot ride the user's cookies into a WebSocket (CSWSH). */
		if (i >= 0 && http_header_count(req, "Origin") == 1)
			for (size_t j = 0; j < r->n_origins && !ok; j++)
				ok = http_str_ieq(req->headers[i].value, r->origins[j]);
		if (!ok)
			return 403;
	}
	return 0;
}

int route_take_slot(const struct route *r, uint32_t max_tunnels, bool *daemon_full)
{
	int64_t route;

	/* Taken, then counted over the workers: two at the cap cannot both
	 * get it (both may be refused, which is the safe side). */
	shared_add(r->st->tunnels, 1);
	shared_add(daemon_tunnels(), 1);
	route = shared_counter_sum(r->st->tunnels);
	*daemon_full = shared_counter_sum(daemon_tunnels()) > max_tunnels;
	if (*daemon_full || (r->max_tunnels && route > r->max_tunnels)) {
		shared_add(r->st->tunnels, -1);
		shared_add(daemon_tunnels(), -1);
		return -1;
	}
	return 0;
}

void route_tunnel_done(struct route_state *st)
{
	if (!st)
		return;
	shared_add(daemon_tunnels(), -1);
	shared_add(st->tunnels, -1);
}

struct route_state *route_state_adopt(struct proxy *px, const char *name)
{
	struct route_state *st;

	for (st = px->route_states; st && strcmp(st->name, name); st = st->next)
		;
	if (st) {
		shared_add(st->tunnels, 1);
		shared_add(daemon_tunnels(), 1);
	}
	return st;
}
