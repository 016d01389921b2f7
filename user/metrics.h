/* The daemon's figures for Prometheus: process-lifetime counters and gauges
 * that any layer adds to (a leaf like log.c: it calls nobody), never reset
 * by a reload, shared by the worker processes, and rendered in the text exposition format on a scrape
 * (metrics_server.c). What the kernel keeps (the sockmap verdict's and the
 * express lane's bytes, packets and events) is read at scrape time through
 * what its engine registers, from per-CPU counters: a scrape costs the same at 10 tunnels
 * as at 100 000. */
#ifndef WSPLICE_METRICS_H
#define WSPLICE_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum metric {
	M_CONNECTIONS_ACCEPTED,
	M_REQUESTS_1XX, /* responses sent to clients, by status class */
	M_REQUESTS_2XX,
	M_REQUESTS_3XX,
	M_REQUESTS_4XX,
	M_REQUESTS_5XX,
	M_UPGRADES_ATTEMPTED, /* WebSocket upgrade requests, valid or not */
	M_UPGRADES_SUCCEEDED, /* tunnels handed off after a matching 101 */
	M_REFUSED_INVALID,    /* upgrades refused, by reason: a malformed upgrade request */
	M_REFUSED_NO_ROUTE,
	M_REFUSED_WEBSOCKET_OFF,
	M_REFUSED_ORIGIN,
	M_REFUSED_MAX_TUNNELS,
	M_REFUSED_UPSTREAM_UNAVAILABLE, /* no server answered: 502 or 504 */
	M_REFUSED_UPSTREAM_DECLINED,    /* the server answered something other than 101 */
	M_REFUSED_BAD_ACCEPT,           /* a 101 without the matching Sec-WebSocket-Accept */
	M_REFUSED_CLIENT_GONE,          /* the client left before its answer */
	M_REFUSED_INTERNAL_ERROR,       /* the tunnel could not start (out of memory) */
	M_ACTIVE_COPY,                  /* gauges: open tunnels by engine */
	M_ACTIVE_SPLICE,
	M_ACTIVE_SOCKMAP,
	M_ACTIVE_TCSPLICE,
	M_CLOSED_FIN,                   /* tunnels closed, by cause */
	M_CLOSED_RESET,
	M_CLOSED_IDLE_TIMEOUT,
	M_CLOSED_FIN_TIMEOUT,
	M_CLOSED_ERROR,
	M_CLOSED_SHUTDOWN,
	M_USER_BYTES_C2U,               /* tunnel bytes userspace wrote, per direction */
	M_USER_BYTES_U2C,
	M_SOCKMAP_INSERTIONS,
	M_FALLBACK_FIN_BEFORE_PAYLOAD,  /* sockmap tunnels finished by the copy relay, by reason */
	M_FALLBACK_FIN_DURING_INSERTION,
	M_FALLBACK_NO_TUNNEL_ID,
	M_FALLBACK_UPGRADE,
	M_FALLBACK_ERROR,
	M_EXPRESS_HANDOVERS,            /* tunnels the tc express lane took over */
	M_EXPRESS_REFUSED_DEVICE,       /* ... and refused, by reason */
	M_EXPRESS_REFUSED_MISMATCH,     /* the legs differ: family, timestamps, MSS */
	M_EXPRESS_REFUSED_WINDOW,
	M_EXPRESS_REFUSED_NO_REPAIR,
	M_EXPRESS_REFUSED_ERROR,
	M_ACCESS_LOG_DROPPED,           /* access log lines dropped: its queue was full */
	M_SESSIONS_OPEN,                /* gauge: client connections not (yet) tunnels */
	M_COUNT
};

/* Moves the figures to memory the workers share (shared.c), before the
 * first fork. */
int metrics_share(void);
void metrics_add(enum metric m, int64_t n);
int64_t metrics_value(enum metric m);
/* The master, when worker w died: its gauges (open tunnels, sessions) go. */
void metrics_worker_gone(uint32_t w);
static inline void metrics_inc(enum metric m) { metrics_add(m, 1); }
/* A response's status, as the client got it. */
void metrics_status(int status);
/* A tunnel opened (+1) or closed (-1) on the engine of that name. */
void metrics_engine_tunnels(const char *engine, int delta);
/* From the request head to the hand-off of its tunnel. */
void metrics_handshake_seconds(double seconds);
/* A connect to this upstream server failed (refused, timed out). */
void metrics_upstream_failure(const char *host, const char *port);

/* Something that writes its own series at scrape time (with # HELP and
 * # TYPE lines). */
typedef void (*metrics_collector_fn)(void *ctx, FILE *out);
int metrics_collector_add(metrics_collector_fn fn, void *ctx);
void metrics_collector_del(metrics_collector_fn fn, void *ctx);

/* What an engine's kernel part carried (bytes, packets; per direction),
 * read at scrape time: every engine's figures go into one series each,
 * wsplice_tunnel_kernel_bytes_total and _packets_total, whichever engines
 * a configuration loads. Returns 0, or -1 when it cannot read them. */
typedef int (*metrics_kernel_fn)(void *ctx, uint64_t bytes[2], uint64_t packets[2]);
int metrics_kernel_add(metrics_kernel_fn fn, void *ctx);
void metrics_kernel_del(metrics_kernel_fn fn, void *ctx);

/* The whole exposition; the caller frees it. NULL when out of memory. */
char *metrics_render(size_t *len);

#endif
