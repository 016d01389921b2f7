#include <errno.h>
#include <ini.h>
#include <net/if.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "config_file.h"
#include "config_value.h"

#define MAX_LINE 4096
#define MAX_SERVERS 64 /* pool_pick's tried-set is a 64-bit mask */

enum section_kind { SEC_NONE, SEC_GLOBAL, SEC_LISTENER, SEC_POOL, SEC_ROUTE, SEC_BAD };

struct load {
	struct config *cfg;
	FILE *f;
	int line;                /* of the line inih is handling */
	int section_line;
	bool new_section;        /* a [header] was read since the last key */
	char section[MAX_LINE];  /* the header inih reported last */
	enum section_kind kind;
	void *obj;               /* the listener, pool or route being filled */
	char *errors;
	size_t errlen, used;
	int n_errors;
};

static void error_at(struct load *ld, int line, const char *fmt, ...)
{
	va_list ap;
	int n;

	ld->n_errors++;
	if (ld->used + 1 >= ld->errlen)
		return;
	n = snprintf(ld->errors + ld->used, ld->errlen - ld->used, "%s:%d: ", ld->cfg->path, line);
	if (n > 0 && ld->used + n < ld->errlen)
		ld->used += n;
	va_start(ap, fmt);
	n = vsnprintf(ld->errors + ld->used, ld->errlen - ld->used, fmt, ap);
	va_end(ap);
	if (n > 0)
		ld->used = ld->used + n < ld->errlen ? ld->used + n : ld->errlen - 1;
	if (ld->used + 1 < ld->errlen) {
		ld->errors[ld->used++] = '\n';
		ld->errors[ld->used] = '\0';
	}
}

/* fgets that counts lines and refuses lines inih would split. */
static char *read_line(char *str, int num, void *stream)
{
	struct load *ld = stream;
	char *s = fgets(str, num, ld->f);
	size_t n;

	if (!s)
		return NULL;
	ld->line++;
	n = strlen(s);
	if (n && s[n - 1] != '\n' && !feof(ld->f)) {
		int c;

		error_at(ld, ld->line, "line longer than %d characters", MAX_LINE - 3);
		while ((c = fgetc(ld->f)) != EOF && c != '\n')
			;
		s[0] = '\0'; /* a blank line to inih */
		return s;
	}
	if (s[strspn(s, " \t")] == '[') {
		ld->section_line = ld->line;
		ld->new_section = true;
	}
	return s;
}

static bool valid_name(const char *s)
{
	if (!*s || strlen(s) >= CFG_NAME_MAX)
		return false;
	for (; *s; s++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", *s))
			return false;
	return true;
}

/* A new [kind name] header: creates the object its keys will fill. */
static void open_section(struct load *ld, const char *section)
{
	static const struct { const char *word; enum section_kind kind; } kinds[] = {
		{ "listener", SEC_LISTENER }, { "pool", SEC_POOL }, { "route", SEC_ROUTE },
	};
	struct config *cfg = ld->cfg;
	const char *sp = strchr(section, ' ');
	const char *name = sp ? sp + strspn(sp, " \t") : "";
	size_t wlen = sp ? (size_t)(sp - section) : strlen(section);

	snprintf(ld->section, sizeof(ld->section), "%s", section);
	ld->kind = SEC_BAD;
	ld->obj = NULL;
	if (!strcmp(section, "global")) {
		ld->kind = SEC_GLOBAL;
		return;
	}
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (wlen == strlen(kinds[i].word) && !strncmp(section, kinds[i].word, wlen))
			ld->kind = kinds[i].kind;
	if (ld->kind == SEC_BAD) {
		error_at(ld, ld->section_line, "unknown section [%s] (expected [global], [listener NAME], "
			 "[pool NAME] or [route NAME])", section);
		return;
	}
	if (!valid_name(name)) {
		error_at(ld, ld->section_line, "[%s]: a %.*s needs a name of letters, digits, '_', '.' or '-'",
			 section, (int)wlen, section);
		ld->kind = SEC_BAD;
		return;
	}
	switch (ld->kind) {
	case SEC_LISTENER:
		if (config_listener(cfg, name))
			break;
		if (!CONFIG_GROW(cfg->listeners, cfg->n_listeners))
			goto oom;
		ld->obj = &cfg->listeners[cfg->n_listeners - 1];
		snprintf(cfg->listeners[cfg->n_listeners - 1].name, CFG_NAME_MAX, "%s", name);
		cfg->listeners[cfg->n_listeners - 1].line = ld->section_line;
		return;
	case SEC_POOL:
		for (size_t i = 0; i < cfg->n_pools; i++)
			if (!strcmp(cfg->pools[i].name, name))
				goto duplicate;
		if (!CONFIG_GROW(cfg->pools, cfg->n_pools))
			goto oom;
		ld->obj = &cfg->pools[cfg->n_pools - 1];
		snprintf(cfg->pools[cfg->n_pools - 1].name, CFG_NAME_MAX, "%s", name);
		cfg->pools[cfg->n_pools - 1].line = ld->section_line;
		cfg->pools[cfg->n_pools - 1].fail_timeout_ms = 10000;
		cfg->pools[cfg->n_pools - 1].keepalive = 16;
		return;
	case SEC_ROUTE:
		for (size_t i = 0; i < cfg->n_routes; i++)
			if (!strcmp(cfg->routes[i].name, name))
				goto duplicate;
		if (!CONFIG_GROW(cfg->routes, cfg->n_routes))
			goto oom;
		ld->obj = &cfg->routes[cfg->n_routes - 1];
		snprintf(cfg->routes[cfg->n_routes - 1].name, CFG_NAME_MAX, "%s", name);
		snprintf(cfg->routes[cfg->n_routes - 1].path, 2, "/");
		cfg->routes[cfg->n_routes - 1].websocket = true;
		cfg->routes[cfg->n_routes - 1].line = ld->section_line;
		return;
	default:
		return;
	}
duplicate:
	error_at(ld, ld->section_line, "[%s] is defined twice", section);
	ld->kind = SEC_BAD;
	return;
oom:
	error_at(ld, ld->section_line, "out of memory");
	ld->kind = SEC_BAD;
}

/* Calls fn on each comma-separated, trimmed item of value. */
static void each_item(struct load *ld, const char *key, const char *value,
		      void (*fn)(struct load *ld, const char *key, const char *item))
{
	char buf[MAX_LINE];
	char *save = NULL;

	snprintf(buf, sizeof(buf), "%s", value);
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *end;

		tok += strspn(tok, " \t");
		end = tok + strlen(tok);
		while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
			*--end = '\0';
		if (*tok)
			fn(ld, key, tok);
		else
			error_at(ld, ld->line, "%s: empty item in the list", key);
	}
}

static void add_trusted(struct load *ld, const char *key, const char *item)
{
	struct listener_cfg *l = ld->obj;

	if (!CONFIG_GROW(l->trusted, l->n_trusted)) {
		error_at(ld, ld->line, "out of memory");
		return;
	}
	if (parse_cidr(item, &l->trusted[l->n_trusted - 1])) {
		error_at(ld, ld->line, "%s '%s': expected an address or CIDR block (10.0.0.0/8, fd00::/8)", key, item);
		l->n_trusted--;
	}
}

static void add_xdp_iface(struct load *ld, const char *key, const char *item)
{
	struct xdp_cfg *x = &ld->cfg->xdp;

	if (x->n_ifaces == XDP_IFACES_MAX)
		error_at(ld, ld->line, "%s: at most %d interfaces", key, XDP_IFACES_MAX);
	else if (strlen(item) >= sizeof(x->ifaces[0]) || !if_nametoindex(item))
		error_at(ld, ld->line, "%s '%s': no such network interface", key, item);
	else
		snprintf(x->ifaces[x->n_ifaces++], sizeof(x->ifaces[0]), "%s", item);
}

static void add_xdp_deny(struct load *ld, const char *key, const char *item)
{
	struct xdp_cfg *x = &ld->cfg->xdp;

	if (!CONFIG_GROW(x->deny, x->n_deny)) {
		error_at(ld, ld->line, "out of memory");
		return;
	}
	if (parse_cidr(item, &x->deny[x->n_deny - 1])) {
		error_at(ld, ld->line, "%s '%s': expected an address or CIDR block (192.0.2.0/24, 2001:db8::/32)", key,
			 item);
		x->n_deny--;
	}
}

static void add_server(struct load *ld, const char *key, const char *item)
{
	struct pool *p = ld->obj;
	char why[300];

	if (p->n_servers == MAX_SERVERS) {
		error_at(ld, ld->line, "%s: at most %d servers per pool", key, MAX_SERVERS);
		return;
	}
	if (!CONFIG_GROW(p->servers, p->n_servers)) {
		error_at(ld, ld->line, "out of memory");
		return;
	}
	if (endpoint_split(item, &p->servers[p->n_servers - 1].ep, why, sizeof(why))) {
		error_at(ld, ld->line, "%s %s", key, why);
		p->n_servers--;
	}
}

static void add_origin(struct load *ld, const char *key, const char *item)
{
	struct route *r = ld->obj;
	char *copy = strdup(item);

	(void)key;
	if (!copy || !CONFIG_GROW(r->origins, r->n_origins)) {
		free(copy);
		error_at(ld, ld->line, "out of memory");
		return;
	}
	r->origins[r->n_origins - 1] = copy;
}

static bool set_duration(struct load *ld, const char *key, const char *value, uint64_t *out, bool off_ok)
{
	if (parse_duration_ms(value, out) || (!off_ok && !*out)) {
		error_at(ld, ld->line, "%s '%s': expected a duration such as 500ms, 15s, 2m, 1h%s", key, value,
			 off_ok ? " or off" : "");
		return false;
	}
	return true;
}

static bool set_count(struct load *ld, const char *key, const char *value, uint64_t min, uint64_t max,
		      uint64_t *out)
{
	if (parse_size(value, out) || *out < min || *out > max) {
		error_at(ld, ld->line, "%s '%s': expected a number from %llu to %llu (k suffix allowed)", key, value,
			 (unsigned long long)min, (unsigned long long)max);
		return false;
	}
	return true;
}

/* express = on: the tunnels start on the copy relay and go express (mode
 * tcsplice); a hand-over from sockmap or splice is not built, so on after
 * those modes is an error. express = off: no express lane here ([global]'s
 * mode back to auto where it was tcsplice; a route's tunnels stay on the
 * relay where the daemon's go express: route_mode). The later of mode and
 * express in a section rules. */
static void set_express(struct load *ld, const char *value, enum tunnel_mode *mode, bool *no_express)
{
	bool on;

	if (parse_bool(value, &on)) {
		error_at(ld, ld->line, "express '%s': expected on or off", value);
	} else if (on && (*mode == MODE_SOCKMAP || *mode == MODE_SPLICE)) {
		error_at(ld, ld->line, "express = on: a %s tunnel cannot go express (the hand-over starts from the "
			 "copy relay): say mode = copy, tcsplice or auto", mode_name(*mode));
	} else {
		if (on || *mode == MODE_TCSPLICE)
			*mode = on ? MODE_TCSPLICE : MODE_AUTO;
		if (no_express)
			*no_express = !on;
	}
}

static void global_key(struct load *ld, const char *key, const char *value)
{
	struct config *cfg = ld->cfg;
	struct timeouts *t = &cfg->timeouts;
	uint64_t v;
	bool b;

	if (!strcmp(key, "mode")) {
		if (parse_mode(value, &cfg->mode))
			error_at(ld, ld->line, "mode '%s': expected auto, sockmap, splice, copy or tcsplice", value);
	} else if (!strcmp(key, "express")) {
		set_express(ld, value, &cfg->mode, NULL);
	} else if (!strcmp(key, "bpffs")) {
		if (value[0] != '/' || strlen(value) >= sizeof(cfg->bpffs))
			error_at(ld, ld->line, "bpffs '%s': expected an absolute path", value);
		else
			snprintf(cfg->bpffs, sizeof(cfg->bpffs), "%s", value);
	} else if (!strcmp(key, "tunnel_buffer")) {
		if (parse_size(value, &cfg->tunnel_buffer) || cfg->tunnel_buffer < 65536)
			error_at(ld, ld->line, "tunnel_buffer '%s': expected a size of at least 64k", value);
	} else if (!strcmp(key, "max_tunnels")) {
		if (set_count(ld, key, value, 1, 1u << 24, &v))
			cfg->max_tunnels = (uint32_t)v;
	} else if (!strcmp(key, "workers")) {
		if (!strcmp(value, "auto"))
			cfg->workers = 0;
		else if (set_count(ld, key, value, 1, WORKERS_MAX, &v))
			cfg->workers = (uint32_t)v;
	} else if (!strcmp(key, "user")) {
		if (!getpwnam(value) || strlen(value) >= sizeof(cfg->user))
			error_at(ld, ld->line, "user '%s': no such user", value);
		else
			snprintf(cfg->user, sizeof(cfg->user), "%s", value);
	} else if (!strcmp(key, "access_log")) {
		if ((value[0] != '/' && strcmp(value, "stderr")) || strlen(value) >= sizeof(cfg->access_log))
			error_at(ld, ld->line, "access_log '%s': expected an absolute path or stderr", value);
		else
			snprintf(cfg->access_log, sizeof(cfg->access_log), "%s", value);
	} else if (!strcmp(key, "access_log_format")) {
		if (strcmp(value, "logfmt") && strcmp(value, "json"))
			error_at(ld, ld->line, "access_log_format '%s': expected logfmt or json", value);
		else
			cfg->access_log_json = !strcmp(value, "json");
	} else if (!strcmp(key, "control")) {
		if (value[0] != '/' || strlen(value) >= sizeof(cfg->control))
			error_at(ld, ld->line, "control '%s': expected an absolute path of at most %zu characters", value,
				 sizeof(cfg->control) - 1);
		else
			snprintf(cfg->control, sizeof(cfg->control), "%s", value);
	} else if (!strcmp(key, "metrics")) {
		char why[300];

		if (endpoint_split(value, &cfg->metrics, why, sizeof(why)))
			error_at(ld, ld->line, "metrics: %s", why);
	} else if (!strcmp(key, "verbose")) {
		if (parse_bool(value, &b))
			error_at(ld, ld->line, "verbose '%s': expected on or off", value);
		else
			cfg->verbose = b;
	} else if (!strcmp(key, "client_header_timeout")) {
		set_duration(ld, key, value, &t->client_header_ms, false);
	} else if (!strcmp(key, "upstream_connect_timeout")) {
		set_duration(ld, key, value, &t->upstream_connect_ms, false);
	} else if (!strcmp(key, "upstream_response_timeout")) {
		set_duration(ld, key, value, &t->upstream_response_ms, false);
	} else if (!strcmp(key, "keepalive_timeout")) {
		set_duration(ld, key, value, &t->keepalive_ms, false);
	} else if (!strcmp(key, "upstream_keepalive_timeout")) {
		set_duration(ld, key, value, &t->upstream_idle_ms, false);
	} else if (!strcmp(key, "tunnel_idle_timeout")) {
		set_duration(ld, key, value, &t->tunnel_idle_ms, true);
	} else if (!strcmp(key, "tunnel_fin_timeout")) {
		set_duration(ld, key, value, &t->tunnel_fin_ms, true);
	} else if (!strcmp(key, "shutdown_timeout")) {
		set_duration(ld, key, value, &t->shutdown_ms, true);
	} else if (!strcmp(key, "xdp")) {
		each_item(ld, key, value, add_xdp_iface);
	} else if (!strcmp(key, "xdp_deny")) {
		each_item(ld, key, value, add_xdp_deny);
	} else if (!strcmp(key, "xdp_syn_rate")) {
		if (!strcmp(value, "off"))
			cfg->xdp.syn_rate = 0;
		else if (set_count(ld, key, value, 1, 1000000, &v))
			cfg->xdp.syn_rate = (uint32_t)v;
	} else if (!strcmp(key, "xdp_syn_burst")) {
		if (set_count(ld, key, value, 1, 1000000, &v))
			cfg->xdp.syn_burst = (uint32_t)v;
	} else if (!strcmp(key, "max_request_line")) {
		if (set_count(ld, key, value, 64, HTTP_MAX_HEAD, &v))
			cfg->limits.max_request_line = (unsigned)v;
	} else if (!strcmp(key, "max_header_size")) {
		if (set_count(ld, key, value, 256, HTTP_MAX_HEAD, &v))
			cfg->limits.max_header_size = (unsigned)v;
	} else if (!strcmp(key, "max_headers")) {
		if (set_count(ld, key, value, 1, HTTP_MAX_HEADERS, &v))
			cfg->limits.max_headers = (unsigned)v;
	} else {
		error_at(ld, ld->line, "unknown directive '%s' in [global]", key);
	}
}

static void listener_key(struct load *ld, const char *key, const char *value)
{
	struct listener_cfg *l = ld->obj;
	char why[300];

	if (!strcmp(key, "listen")) {
		if (l->ep.host[0])
			error_at(ld, ld->line, "listen: [%s] already listens on %s:%s (one address per listener)",
				 ld->section, l->ep.host, l->ep.port);
		else if (endpoint_split(value, &l->ep, why, sizeof(why)))
			error_at(ld, ld->line, "listen %s", why);
	} else if (!strcmp(key, "trusted_proxies")) {
		each_item(ld, key, value, add_trusted);
	} else {
		error_at(ld, ld->line, "unknown directive '%s' in [%s]", key, ld->section);
	}
}

static void pool_key(struct load *ld, const char *key, const char *value)
{
	struct pool *p = ld->obj;
	uint64_t v;

	if (!strcmp(key, "server")) {
		each_item(ld, key, value, add_server);
	} else if (!strcmp(key, "balance")) {
		if (!strcmp(value, "roundrobin"))
			p->balance = LB_ROUND_ROBIN;
		else if (!strcmp(value, "leastconn"))
			p->balance = LB_LEAST_CONN;
		else
			error_at(ld, ld->line, "balance '%s': expected roundrobin or leastconn", value);
	} else if (!strcmp(key, "fail_timeout")) {
		set_duration(ld, key, value, &p->fail_timeout_ms, true);
	} else if (!strcmp(key, "keepalive")) {
		if (set_count(ld, key, value, 0, 10000, &v))
			p->keepalive = (unsigned)v;
	} else {
		error_at(ld, ld->line, "unknown directive '%s' in [%s]", key, ld->section);
	}
}

static void route_key(struct load *ld, const char *key, const char *value)
{
	struct route *r = ld->obj;
	uint64_t v;

	if (!strcmp(key, "host")) {
		bool wild = value[0] == '*';
		const char *h = wild ? value + 1 : value;

		if (strlen(value) >= sizeof(r->host) || (wild && (h[0] != '.' || !h[1])) || strpbrk(h, "*/: \t") ||
		    (!wild && !*h))
			error_at(ld, ld->line, "host '%s': expected a name (example.com) or a suffix (*.example.com)",
				 value);
		else
			snprintf(r->host, sizeof(r->host), "%s", value);
	} else if (!strcmp(key, "path")) {
		if (value[0] != '/' || strlen(value) >= sizeof(r->path) || strpbrk(value, " \t?#"))
			error_at(ld, ld->line, "path '%s': expected a prefix starting with '/'", value);
		else
			snprintf(r->path, sizeof(r->path), "%s", value);
	} else if (!strcmp(key, "pool")) {
		if (!valid_name(value))
			error_at(ld, ld->line, "pool '%s': expected the name of a [pool]", value);
		else
			snprintf(r->pool_name, sizeof(r->pool_name), "%s", value);
	} else if (!strcmp(key, "listener")) {
		if (!valid_name(value))
			error_at(ld, ld->line, "listener '%s': expected the name of a [listener]", value);
		else
			snprintf(r->listener, sizeof(r->listener), "%s", value);
	} else if (!strcmp(key, "websocket")) {
		if (parse_bool(value, &r->websocket))
			error_at(ld, ld->line, "websocket '%s': expected on or off", value);
	} else if (!strcmp(key, "origin")) {
		each_item(ld, key, value, add_origin);
	} else if (!strcmp(key, "max_tunnels")) {
		if (set_count(ld, key, value, 0, 10000000, &v))
			r->max_tunnels = (unsigned)v;
	} else if (!strcmp(key, "mode")) {
		if (parse_mode(value, &r->mode))
			error_at(ld, ld->line, "mode '%s': expected auto, sockmap, splice, copy or tcsplice", value);
		else
			r->no_express = false;
	} else if (!strcmp(key, "express")) {
		set_express(ld, value, &r->mode, &r->no_express);
	} else {
		error_at(ld, ld->line, "unknown directive '%s' in [%s]", key, ld->section);
	}
}

static int on_key(void *user, const char *section, const char *key, const char *value)
{
	struct load *ld = user;

	if (ld->new_section || strcmp(section, ld->section))
		open_section(ld, section);
	ld->new_section = false;
	switch (ld->kind) {
	case SEC_NONE:
		error_at(ld, ld->line, "'%s' outside any section", key);
		break;
	case SEC_GLOBAL:
		global_key(ld, key, value);
		break;
	case SEC_LISTENER:
		if (ld->obj)
			listener_key(ld, key, value);
		else
			error_at(ld, ld->section_line, "[%s] is defined twice", section);
		break;
	case SEC_POOL:
		pool_key(ld, key, value);
		break;
	case SEC_ROUTE:
		route_key(ld, key, value);
		break;
	case SEC_BAD:
		break; /* reported once, at the header */
	}
	return 1;
}

struct config *config_load_file(const char *path, char *errors, size_t errlen)
{
	FILE *f = fopen(path, "r");
	struct config *cfg;

	if (!f) {
		snprintf(errors, errlen, "%s: %s\n", path, strerror(errno));
		return NULL;
	}
	cfg = config_load_stream(path, f, errors, errlen);
	fclose(f);
	return cfg;
}

struct config *config_load_stream(const char *path, FILE *f, char *errors, size_t errlen)
{
	struct config *cfg = malloc(sizeof(*cfg));
	struct load ld = { .cfg = cfg, .errors = errors, .errlen = errlen };
	int r;

	errors[0] = '\0';
	if (!cfg) {
		snprintf(errors, errlen, "%s: out of memory\n", path);
		return NULL;
	}
	config_defaults(cfg);
	snprintf(cfg->path, sizeof(cfg->path), "%s", path);
	ld.f = f;
	ini_use_stack = false;
	ini_max_line = MAX_LINE;
	ini_initial_alloc = MAX_LINE;
	ini_allow_realloc = false;
	ini_allow_multiline = false;
	ini_allow_no_value = false;
	ld.section[0] = '\0';
	ld.kind = SEC_NONE;
	r = ini_parse_stream(read_line, &ld, on_key, &ld);
	if (r > 0)
		error_at(&ld, r, "syntax error (expected [section], 'key = value' or a ; comment)");
	if (!ld.n_errors) {
		char why[1024];

		if (config_finish(cfg, why, sizeof(why)))
			snprintf(errors, errlen, "%s\n", why);
		else
			return cfg;
	}
	config_put(cfg);
	return NULL;
}
