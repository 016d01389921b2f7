/* Counters in memory the workers share, rendered in the Prometheus text format
 * (version 0.0.4). Series of one family are contiguous in enum metric, so
 * rendering prints a family's # HELP and # TYPE once, where it starts. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include "config.h"
#include "metrics.h"
#include "shared.h"

struct series {
	const char *family, *type, *help, *labels;
};

#define REFUSED "wsplice_upgrades_refused_total", "counter", "WebSocket upgrades refused, by reason."
#define ACTIVE "wsplice_tunnels_active", "gauge", "Open tunnels, by the engine that moves their bytes."
#define CLOSED "wsplice_tunnels_closed_total", "counter", "Tunnels closed, by cause."
#define REQUESTS "wsplice_requests_total", "counter", "Responses sent to clients, by status class."
#define USER_BYTES "wsplice_tunnel_userspace_bytes_total", "counter", \
	"Tunnel bytes written by the daemon (the relays, and the sockmap drain), per direction."
#define FALLBACKS "wsplice_sockmap_fallbacks_total", "counter", \
	"Tunnels the sockmap engine handed to the copy relay, by reason."
#define EXPRESS_REFUSED "wsplice_express_refused_total", "counter", \
	"Tunnels the tc express lane left on the copy relay, by reason."

static const struct series series[M_COUNT] = {
	[M_CONNECTIONS_ACCEPTED] = { "wsplice_connections_accepted_total", "counter", "Client connections accepted.", "" },
	[M_REQUESTS_1XX] = { REQUESTS, "class=\"1xx\"" },
	[M_REQUESTS_2XX] = { REQUESTS, "class=\"2xx\"" },
	[M_REQUESTS_3XX] = { REQUESTS, "class=\"3xx\"" },
	[M_REQUESTS_4XX] = { REQUESTS, "class=\"4xx\"" },
	[M_REQUESTS_5XX] = { REQUESTS, "class=\"5xx\"" },
	[M_UPGRADES_ATTEMPTED] = { "wsplice_upgrades_attempted_total", "counter",
				   "WebSocket upgrade requests, valid or not: each ends as succeeded or refused.", "" },
	[M_UPGRADES_SUCCEEDED] = { "wsplice_upgrades_succeeded_total", "counter",
				   "Upgrades whose 101 carried the matching accept: tunnels opened.", "" },
	[M_REFUSED_INVALID] = { REFUSED, "reason=\"invalid_request\"" },
	[M_REFUSED_NO_ROUTE] = { REFUSED, "reason=\"no_route\"" },
	[M_REFUSED_WEBSOCKET_OFF] = { REFUSED, "reason=\"websocket_off\"" },
	[M_REFUSED_ORIGIN] = { REFUSED, "reason=\"origin\"" },
	[M_REFUSED_MAX_TUNNELS] = { REFUSED, "reason=\"max_tunnels\"" },
	[M_REFUSED_UPSTREAM_UNAVAILABLE] = { REFUSED, "reason=\"upstream_unavailable\"" },
	[M_REFUSED_UPSTREAM_DECLINED] = { REFUSED, "reason=\"upstream_declined\"" },
	[M_REFUSED_BAD_ACCEPT] = { REFUSED, "reason=\"bad_accept\"" },
	[M_REFUSED_CLIENT_GONE] = { REFUSED, "reason=\"client_gone\"" },
	[M_REFUSED_INTERNAL_ERROR] = { REFUSED, "reason=\"internal_error\"" },
	[M_ACTIVE_COPY] = { ACTIVE, "engine=\"copy\"" },
	[M_ACTIVE_SPLICE] = { ACTIVE, "engine=\"splice\"" },
	[M_ACTIVE_SOCKMAP] = { ACTIVE, "engine=\"sockmap\"" },
	[M_ACTIVE_TCSPLICE] = { ACTIVE, "engine=\"tcsplice\"" },
	[M_CLOSED_FIN] = { CLOSED, "cause=\"fin\"" },
	[M_CLOSED_RESET] = { CLOSED, "cause=\"reset\"" },
	[M_CLOSED_IDLE_TIMEOUT] = { CLOSED, "cause=\"idle_timeout\"" },
	[M_CLOSED_FIN_TIMEOUT] = { CLOSED, "cause=\"fin_timeout\"" },
	[M_CLOSED_ERROR] = { CLOSED, "cause=\"error\"" },
	[M_CLOSED_SHUTDOWN] = { CLOSED, "cause=\"shutdown\"" },
	[M_USER_BYTES_C2U] = { USER_BYTES, "direction=\"client_to_upstream\"" },
	[M_USER_BYTES_U2C] = { USER_BYTES, "direction=\"upstream_to_client\"" },
	[M_SOCKMAP_INSERTIONS] = { "wsplice_sockmap_insertions_total", "counter",
				   "Tunnels whose sockets entered the kernel's maps.", "" },
	[M_FALLBACK_FIN_BEFORE_PAYLOAD] = { FALLBACKS, "reason=\"fin_before_payload\"" },
	[M_FALLBACK_FIN_DURING_INSERTION] = { FALLBACKS, "reason=\"fin_during_insertion\"" },
	[M_FALLBACK_NO_TUNNEL_ID] = { FALLBACKS, "reason=\"no_tunnel_id\"" },
	[M_FALLBACK_UPGRADE] = { FALLBACKS, "reason=\"upgrade\"" },
	[M_FALLBACK_ERROR] = { FALLBACKS, "reason=\"error\"" },
	[M_EXPRESS_HANDOVERS] = { "wsplice_express_handovers_total", "counter",
				  "Tunnels the tc express lane took over from the copy relay.", "" },
	[M_EXPRESS_REFUSED_DEVICE] = { EXPRESS_REFUSED, "reason=\"device\"" },
	[M_EXPRESS_REFUSED_MISMATCH] = { EXPRESS_REFUSED, "reason=\"legs_differ\"" },
	[M_EXPRESS_REFUSED_WINDOW] = { EXPRESS_REFUSED, "reason=\"window\"" },
	[M_EXPRESS_REFUSED_NO_REPAIR] = { EXPRESS_REFUSED, "reason=\"no_repair\"" },
	[M_EXPRESS_REFUSED_ERROR] = { EXPRESS_REFUSED, "reason=\"error\"" },
	[M_ACCESS_LOG_DROPPED] = { "wsplice_access_log_dropped_total", "counter",
				   "Access log lines dropped because the writer fell 4 MiB behind.", "" },
	[M_SESSIONS_OPEN] = { "wsplice_sessions_open", "gauge",
			      "Client connections open that are not tunnels (requests, keep-alive, handshakes).", "" },
};

/* The handshake histogram's upper bounds, in seconds (the last is +Inf). */
static const double hs_bounds[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5 };
#define HS_BUCKETS (sizeof(hs_bounds) / sizeof(hs_bounds[0]))

/* Every worker adds to the same figures (shared.c); the master renders
 * them. Before metrics_share() (unit tests), the process's own. */
struct figures {
	int64_t values[M_COUNT];
	/* Gauges by worker, so a worker that dies can be subtracted. */
	int64_t gauges[WORKERS_MAX][M_COUNT];
	int64_t hs_counts[HS_BUCKETS + 1];
	int64_t hs_sum_ns;
};
static struct figures own, *fig = &own;

/* Per-server connect failures are shared counters named by this prefix. */
#define FAILURE_PREFIX "upstream_connect_failure "

int metrics_share(void)
{
	struct figures *f = shared_alloc(sizeof(*f));

	if (!f)
		return -1;
	*f = *fig;
	fig = f;
	return 0;
}

/* What the engines register: series they write themselves (text), or
 * what their kernel part carried (carried), one of the two a slot. */
struct source {
	metrics_collector_fn text;
	metrics_kernel_fn carried;
	void *ctx;
};
#define SOURCES_MAX 16
static struct source sources[SOURCES_MAX];

/* On every add: one byte, not a strcmp (the types are "counter", "gauge"
 * and "histogram"). */
static bool is_gauge(enum metric m)
{
	return series[m].type[0] == 'g';
}

void metrics_add(enum metric m, int64_t n)
{
	shared_add(is_gauge(m) ? &fig->gauges[shared_worker()][m] : &fig->values[m], n);
}

int64_t metrics_value(enum metric m)
{
	int64_t sum = 0;

	if (!is_gauge(m))
		return shared_get(&fig->values[m]);
	for (int w = 0; w < WORKERS_MAX; w++)
		sum += shared_get(&fig->gauges[w][m]);
	return sum;
}

void metrics_worker_gone(uint32_t w)
{
	for (int m = 0; w < WORKERS_MAX && m < M_COUNT; m++)
		__atomic_store_n(&fig->gauges[w][m], 0, __ATOMIC_RELAXED);
}

void metrics_status(int status)
{
	if (status >= 100 && status < 600)
		metrics_inc(M_REQUESTS_1XX + status / 100 - 1);
}

void metrics_engine_tunnels(const char *engine, int delta)
{
	if (!strcmp(engine, "copy"))
		metrics_add(M_ACTIVE_COPY, delta);
	else if (!strcmp(engine, "splice"))
		metrics_add(M_ACTIVE_SPLICE, delta);
	else if (!strcmp(engine, "sockmap"))
		metrics_add(M_ACTIVE_SOCKMAP, delta);
	else if (!strcmp(engine, "tcsplice"))
		metrics_add(M_ACTIVE_TCSPLICE, delta);
}

void metrics_handshake_seconds(double seconds)
{
	size_t b = 0;

	while (b < HS_BUCKETS && seconds > hs_bounds[b])
		b++;
	shared_add(&fig->hs_counts[b], 1);
	shared_add(&fig->hs_sum_ns, (int64_t)(seconds * 1e9));
}

void metrics_upstream_failure(const char *host, const char *port)
{
	char name[sizeof(FAILURE_PREFIX) + 256 + 8];
	int64_t *c;

	snprintf(name, sizeof(name), FAILURE_PREFIX "%s:%s", host, port);
	c = shared_counter(name, false);
	if (c)
		shared_add(c, 1);
}

static int source_add(struct source src)
{
	for (int i = 0; i < SOURCES_MAX; i++)
		if (!sources[i].text && !sources[i].carried) {
			sources[i] = src;
			return 0;
		}
	return -1;
}

static void source_del(struct source src)
{
	for (int i = 0; i < SOURCES_MAX; i++)
		if (sources[i].text == src.text && sources[i].carried == src.carried && sources[i].ctx == src.ctx)
			sources[i] = (struct source){ 0 };
}

int metrics_collector_add(metrics_collector_fn fn, void *ctx)
{
	return source_add((struct source){ .text = fn, .ctx = ctx });
}

void metrics_collector_del(metrics_collector_fn fn, void *ctx)
{
	source_del((struct source){ .text = fn, .ctx = ctx });
}

int metrics_kernel_add(metrics_kernel_fn fn, void *ctx)
{
	return source_add((struct source){ .carried = fn, .ctx = ctx });
}

void metrics_kernel_del(metrics_kernel_fn fn, void *ctx)
{
	source_del((struct source){ .carried = fn, .ctx = ctx });
}

/* One family each, summed over the engines loaded; absent with none. */
static void render_kernel(FILE *out)
{
	static const char *const dirs[2] = { "client_to_upstream", "upstream_to_client" };
	uint64_t bytes[2] = { 0 }, packets[2] = { 0 }, b[2], p[2];
	bool any = false;

	for (int i = 0; i < SOURCES_MAX; i++) {
		if (!sources[i].carried || sources[i].carried(sources[i].ctx, b, p))
			continue;
		any = true;
		for (int d = 0; d < 2; d++) {
			bytes[d] += b[d];
			packets[d] += p[d];
		}
	}
	if (!any)
		return;
	fputs("# HELP wsplice_tunnel_kernel_bytes_total Tunnel bytes the kernel carried (the sockmap verdict, the "
	      "express lane), per direction.\n"
	      "# TYPE wsplice_tunnel_kernel_bytes_total counter\n",
	      out);
	for (int d = 0; d < 2; d++)
		fprintf(out, "wsplice_tunnel_kernel_bytes_total{direction=\"%s\"} %llu\n", dirs[d],
			(unsigned long long)bytes[d]);
	fputs("# HELP wsplice_tunnel_kernel_packets_total Skbs or segments the kernel carried, per direction.\n"
	      "# TYPE wsplice_tunnel_kernel_packets_total counter\n",
	      out);
	for (int d = 0; d < 2; d++)
		fprintf(out, "wsplice_tunnel_kernel_packets_total{direction=\"%s\"} %llu\n", dirs[d],
			(unsigned long long)packets[d]);
}

/* A label value as the exposition format wants it: \, " and newline escaped. */
static void put_label_value(FILE *out, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			fputc('\\', out);
		if (*s == '\n')
			fputs("\\n", out);
		else
			fputc(*s, out);
	}
}

static void render_failure(void *ctx, const char *server, int64_t count)
{
	FILE *out = ctx;

	fputs("wsplice_upstream_connect_failures_total{server=\"", out);
	put_label_value(out, server);
	fprintf(out, "\"} %lld\n", (long long)count);
}

static void render_histogram(FILE *out)
{
	uint64_t cumulative = 0;

	fputs("# HELP wsplice_handshake_seconds From a WebSocket request head to the hand-off of its tunnel.\n"
	      "# TYPE wsplice_handshake_seconds histogram\n",
	      out);
	for (size_t b = 0; b <= HS_BUCKETS; b++) {
		cumulative += (uint64_t)shared_get(&fig->hs_counts[b]);
		if (b < HS_BUCKETS)
			fprintf(out, "wsplice_handshake_seconds_bucket{le=\"%g\"} %llu\n", hs_bounds[b],
				(unsigned long long)cumulative);
		else
			fprintf(out, "wsplice_handshake_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cumulative);
	}
	fprintf(out, "wsplice_handshake_seconds_sum %.9f\nwsplice_handshake_seconds_count %llu\n",
		shared_get(&fig->hs_sum_ns) / 1e9,
		(unsigned long long)cumulative);
}

char *metrics_render(size_t *len)
{
	char *text = NULL;
	FILE *out = open_memstream(&text, len);

	if (!out)
		return NULL;
	for (int m = 0; m < M_COUNT; m++) {
		const struct series *s = &series[m];

		if (!m || strcmp(series[m - 1].family, s->family))
			fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", s->family, s->help, s->family, s->type);
		fprintf(out, s->labels[0] ? "%s{%s} %lld\n" : "%s%s %lld\n", s->family, s->labels, (long long)metrics_value(m));
	}
	render_histogram(out);
	fputs("# HELP wsplice_upstream_connect_failures_total Connects to an upstream server that failed or timed out.\n"
	      "# TYPE wsplice_upstream_connect_failures_total counter\n",
	      out);
	shared_counters_each(FAILURE_PREFIX, render_failure, out);
	render_kernel(out);
	for (int i = 0; i < SOURCES_MAX; i++)
		if (sources[i].text)
			sources[i].text(sources[i].ctx, out);
	/* A memstream that could not grow may still close cleanly. */
	if (ferror(out) | fclose(out)) {
		free(text);
		return NULL;
	}
	return text;
}
