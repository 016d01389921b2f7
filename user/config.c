/* Building, checking and releasing configuration generations. */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "config.h"
#include "http_parse.h"
#include "upstream.h"

void config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->refs = 1;
	cfg->mode = MODE_AUTO;
	snprintf(cfg->bpffs, sizeof(cfg->bpffs), "/sys/fs/bpf/wsplice");
	cfg->tunnel_buffer = 4u << 20;
	cfg->max_tunnels = 262144;
	cfg->timeouts = (struct timeouts){
		.client_header_ms = 15000,
		.upstream_connect_ms = 5000,
		.upstream_response_ms = 60000,
		.keepalive_ms = 75000,
		.upstream_idle_ms = 30000,
		.tunnel_idle_ms = 0,
		.tunnel_fin_ms = 60000,
	};
	cfg->xdp.syn_rate = 200;
	cfg->xdp.syn_burst = 400;
	cfg->limits = (struct http_limits){
		.max_request_line = HTTP_DEFAULT_REQUEST_LINE,
		.max_header_size = HTTP_DEFAULT_HEAD,
		.max_headers = HTTP_DEFAULT_HEADERS,
	};
}

uint32_t config_workers(const struct config *cfg)
{
	cpu_set_t set;
	int n;

	if (cfg->workers)
		return cfg->workers;
	n = sched_getaffinity(0, sizeof(set), &set) ? 1 : CPU_COUNT(&set);
	return n < 1 ? 1 : n > WORKERS_MAX ? WORKERS_MAX : (uint32_t)n;
}

bool config_grow(void **array, size_t *n, size_t size)
{
	char *p = realloc(*array, (*n + 1) * size);

	if (!p)
		return false;
	memset(p + *n * size, 0, size);
	*array = p;
	(*n)++;
	return true;
}

struct config *config_from_endpoints(const struct config *globals, const struct endpoint *listen,
				     const struct endpoint *upstream)
{
	struct config *cfg = malloc(sizeof(*cfg));

	if (!cfg)
		return NULL;
	*cfg = *globals;
	cfg->refs = 1;
	cfg->listeners = NULL;
	cfg->routes = NULL;
	cfg->pools = NULL;
	cfg->n_listeners = cfg->n_routes = cfg->n_pools = 0;
	if (!CONFIG_GROW(cfg->listeners, cfg->n_listeners) || !CONFIG_GROW(cfg->pools, cfg->n_pools) ||
	    !CONFIG_GROW(cfg->routes, cfg->n_routes) || !CONFIG_GROW(cfg->pools[0].servers, cfg->pools[0].n_servers)) {
		config_put(cfg);
		return NULL;
	}
	snprintf(cfg->listeners[0].name, CFG_NAME_MAX, "default");
	cfg->listeners[0].ep = *listen;
	snprintf(cfg->pools[0].name, CFG_NAME_MAX, "default");
	cfg->pools[0].servers[0].ep = *upstream;
	cfg->pools[0].fail_timeout_ms = 0; /* one server: never skip it */
	cfg->pools[0].keepalive = 16;
	snprintf(cfg->routes[0].name, CFG_NAME_MAX, "default");
	snprintf(cfg->routes[0].path, sizeof(cfg->routes[0].path), "/");
	snprintf(cfg->routes[0].pool_name, CFG_NAME_MAX, "default");
	cfg->routes[0].websocket = true;
	return cfg;
}

static struct pool *find_pool(struct config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_pools; i++)
		if (!strcmp(cfg->pools[i].name, name))
			return &cfg->pools[i];
	return NULL;
}

const struct listener_cfg *config_listener(const struct config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_listeners; i++)
		if (!strcmp(cfg->listeners[i].name, name))
			return &cfg->listeners[i];
	return NULL;
}

#define FAIL(line, ...)                                                                       \
	do {                                                                                  \
		int o_ = line ? snprintf(err, errlen, "%s:%d: ", cfg->path, line) : 0;        \
		snprintf(err + o_, errlen - o_, __VA_ARGS__);                                 \
		return -1;                                                                    \
	} while (0)

int config_finish(struct config *cfg, char *err, size_t errlen)
{
	char why[512];

	if (!cfg->n_listeners)
		FAIL(0, "%s: no [listener] section", cfg->path[0] ? cfg->path : "configuration");
	if (!cfg->n_routes)
		FAIL(0, "%s: no [route] section", cfg->path[0] ? cfg->path : "configuration");
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		struct listener_cfg *l = &cfg->listeners[i];

		if (!l->ep.host[0])
			FAIL(l->line, "[listener %s] has no 'listen' address", l->name);
		if (endpoint_resolve(&l->ep, true, why, sizeof(why)))
			FAIL(l->line, "[listener %s]: %s", l->name, why);
	}
	if (cfg->metrics.host[0] && endpoint_resolve(&cfg->metrics, true, why, sizeof(why)))
		FAIL(0, "metrics: %s", why);
	/* The kernel's tunnel ids are 32 bits: worker * max_tunnels + index. */
	if ((uint64_t)config_workers(cfg) * cfg->max_tunnels > UINT32_MAX)
		FAIL(0, "workers (%u) times max_tunnels (%u) must stay below 2^32", config_workers(cfg), cfg->max_tunnels);
	for (size_t i = 0; i < cfg->n_pools; i++) {
		struct pool *p = &cfg->pools[i];

		if (!p->n_servers)
			FAIL(p->line, "[pool %s] has no 'server'", p->name);
		for (size_t j = 0; j < p->n_servers; j++)
			if (endpoint_resolve(&p->servers[j].ep, false, why, sizeof(why)))
				FAIL(p->line, "[pool %s]: %s", p->name, why);
	}
	for (size_t i = 0; i < cfg->n_routes; i++) {
		struct route *r = &cfg->routes[i];

		if (!r->pool_name[0])
			FAIL(r->line, "[route %s] has no 'pool'", r->name);
		r->pool = find_pool(cfg, r->pool_name);
		if (!r->pool)
			FAIL(r->line, "[route %s]: no [pool %s]", r->name, r->pool_name);
		if (r->listener[0] && !config_listener(cfg, r->listener))
			FAIL(r->line, "[route %s]: no [listener %s]", r->name, r->listener);
		if (!r->path[0])
			snprintf(r->path, sizeof(r->path), "/");
	}
	return 0;
}

struct config *config_get(struct config *cfg)
{
	cfg->refs++;
	return cfg;
}

void config_put(struct config *cfg)
{
	if (!cfg || --cfg->refs)
		return;
	for (size_t i = 0; i < cfg->n_listeners; i++)
		free(cfg->listeners[i].trusted);
	for (size_t i = 0; i < cfg->n_pools; i++)
		free(cfg->pools[i].servers);
	for (size_t i = 0; i < cfg->n_routes; i++) {
		for (size_t j = 0; j < cfg->routes[i].n_origins; j++)
			free(cfg->routes[i].origins[j]);
		free(cfg->routes[i].origins);
	}
	free(cfg->xdp.deny);
	free(cfg->listeners);
	free(cfg->pools);
	free(cfg->routes);
	free(cfg);
}
