/* The daemon's settings: global options, listeners, routes and upstream
 * pools. One `struct config` is one generation: built by config_file.c (the
 * -c file) or config.c (the --listen/--upstream shortcut), swapped whole on
 * SIGHUP, and reference-counted so a request started under the old
 * generation finishes with the routes it started with. */
#ifndef WSPLICE_CONFIG_H
#define WSPLICE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include "http_parse.h"

/* The tunnel engines by name; engines.c maps each to its implementation. */
enum tunnel_mode { MODE_AUTO, MODE_SOCKMAP, MODE_SPLICE, MODE_COPY, MODE_TCSPLICE, MODE_COUNT };
enum lb_algo { LB_ROUND_ROBIN, LB_LEAST_CONN };

#define CFG_NAME_MAX 64

struct endpoint {
	char host[256];
	char port[8];
	struct sockaddr_storage addr; /* resolved */
	socklen_t addrlen;
};

struct cidr {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned prefix;
};

struct server_state; /* pool.c: survives reloads */
struct route_state;  /* route.c: survives reloads */

struct server {
	struct endpoint ep;
	struct server_state *st;
};

struct pool {
	char name[CFG_NAME_MAX];
	enum lb_algo balance;
	struct server *servers;
	size_t n_servers;
	uint64_t fail_timeout_ms; /* a server that failed to connect is skipped this long */
	unsigned keepalive;       /* idle upstream connections kept per server */
	int line;
};

struct route {
	char name[CFG_NAME_MAX];
	char listener[CFG_NAME_MAX]; /* "" = every listener */
	char host[256];              /* "" any, "example.com" exact, "*.example.com" suffix */
	char path[1024];             /* prefix, "/" by default */
	char pool_name[CFG_NAME_MAX];
	struct pool *pool;
	bool websocket;              /* upgrades allowed */
	char **origins;              /* allowed Origin values; none = any */
	size_t n_origins;
	unsigned max_tunnels;        /* 0 = unlimited */
	enum tunnel_mode mode;       /* the engine of its tunnels; MODE_AUTO: the daemon's */
	struct route_state *st;
	int line;
	bool no_express;             /* express = off: stays on the relay where the daemon's tunnels go express */
};

struct listener_cfg {
	char name[CFG_NAME_MAX];
	struct endpoint ep;
	struct cidr *trusted;        /* peers whose X-Forwarded-* are kept and extended */
	size_t n_trusted;
	int line;
};

/* The XDP guard in front of the listener ports (xdp_guard.c). */
#define XDP_IFACES_MAX 8
struct xdp_cfg {
	char ifaces[XDP_IFACES_MAX][16]; /* "" beyond n_ifaces; none = no guard */
	size_t n_ifaces;
	struct cidr *deny;  /* sources dropped before the TCP stack */
	size_t n_deny;
	uint32_t syn_rate;  /* SYNs a second per source to the listener ports; 0 = no limit */
	uint32_t syn_burst; /* SYNs a source may send at once */
};

struct timeouts {
	uint64_t client_header_ms;    /* a request head must arrive within this: 408 */
	uint64_t upstream_connect_ms; /* then 502 */
	uint64_t upstream_response_ms;/* response head after the request: 504 */
	uint64_t keepalive_ms;        /* idle client connection between requests */
	uint64_t upstream_idle_ms;    /* idle pooled upstream connection */
	uint64_t tunnel_idle_ms;      /* 0 = off: no traffic either way */
	uint64_t tunnel_fin_ms;       /* 0 = off: one direction closed, the other idle */
	uint64_t shutdown_ms;         /* 0 = off: SIGTERM closes at once; else it drains this long */
};

struct config {
	unsigned refs;
	char path[512]; /* the file, or "" for the command-line shortcut */
	enum tunnel_mode mode;
	char bpffs[256];
	uint64_t tunnel_buffer;
	uint32_t max_tunnels;    /* open tunnels at most; the kernel's maps are this big */
	uint32_t workers;        /* worker processes; 0 = one per CPU (config_workers) */
	char user[64];           /* the workers drop to this user; "" = stay */
	struct endpoint metrics; /* the scrape endpoint; host "" = none */
	char control[108];       /* the control socket; "" = control_default_path(bpffs) */
	char access_log[512];    /* a file, "stderr", or "" for none */
	bool access_log_json;    /* JSON lines instead of logfmt */
	int verbose;
	struct timeouts timeouts;
	struct http_limits limits;
	struct xdp_cfg xdp;
	struct listener_cfg *listeners;
	size_t n_listeners;
	struct route *routes;
	size_t n_routes;
	struct pool *pools;
	size_t n_pools;
};

const char *mode_name(enum tunnel_mode m);
/* The mode a route's tunnel is handed to the tunnel layer with, where the
 * daemon's is daemon: the route's own (MODE_AUTO: the daemon's), or the
 * copy relay for a route with express = off in an express daemon. */
enum tunnel_mode route_mode(const struct route *r, enum tunnel_mode daemon);
/* cfg->workers, with 0 (auto) resolved to the CPUs this process may run on. */
uint32_t config_workers(const struct config *cfg);
#define WORKERS_MAX 64

/* Defaults for everything a file or the command line leaves out. */
void config_defaults(struct config *cfg);
/* The --listen/--upstream shortcut: one listener, one pool, one route. */
struct config *config_from_endpoints(const struct config *globals, const struct endpoint *listen,
				     const struct endpoint *upstream);
/* Links routes to pools and resolves every address. Errors go to err. */
int config_finish(struct config *cfg, char *err, size_t errlen);
struct config *config_get(struct config *cfg);
void config_put(struct config *cfg);
const struct listener_cfg *config_listener(const struct config *cfg, const char *name);
/* Appends one zeroed element to a realloc'd array; false (and the array
 * untouched) when out of memory. */
bool config_grow(void **array, size_t *n, size_t size);
#define CONFIG_GROW(array, n) config_grow((void **)&(array), &(n), sizeof(*(array)))

#endif
