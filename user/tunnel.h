/* A tunnel: the two sockets of an upgraded connection, moved byte for byte
 * until both directions have closed. The session hands them over as one
 * value (struct tunnel_handoff); from then on the tunnel layer (tunnel.c)
 * runs the lifecycle, timeouts and close, and an engine moves the bytes:
 * copy and splice (tunnel_relay.c) or sockmap (tunnel_sockmap.c). Every
 * engine forwards a half-close as a half-close, an RST as an RST, and holds
 * a bounded amount. */
#ifndef WSPLICE_TUNNEL_H
#define WSPLICE_TUNNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "buf.h"
#include "config.h"
#include "event_loop.h"
#include "wsplice_maps.h"

/* Ends, as indexes of fd[]: a direction's source and destination are ends. */
#define TUNNEL_END_CLIENT 0
#define TUNNEL_END_UPSTREAM 1

struct route_state;
struct server_state;

/* What the session gives the tunnel layer once the 101 is queued: all of
 * it changes owner. Directions index queue, read and written (WS_DIR_C2U:
 * client to upstream; WS_DIR_U2C: upstream to client). */
struct tunnel_handoff {
	int fd[2];               /* [TUNNEL_END_CLIENT], [TUNNEL_END_UPSTREAM] */
	struct buf queue[2];     /* bytes read from the source, not yet written to the destination */
	/* Lifetime counts of each socket (a pooled upstream connection's too):
	 * bytes userspace read from the direction's source and wrote to its
	 * destination. The sockmap FIN check compares them with TCP's. */
	uint64_t read[2], written[2];
	/* Where the tunnel's payload starts, as a value of written[d]: what is
	 * queued before it is the handshake (the request, the 101), not
	 * tunnel bytes. The metrics and the tunnel's byte counts start there. */
	uint64_t payload_from[2];
	/* Held for the tunnel's life: a slot of its route's max_tunnels, and a
	 * connection counted against its server for leastconn. */
	struct route_state *route_st;
	struct server_state *server_st;
};

/* The engines' daemon-wide parts (the BPF data plane), shared by the workers. */
struct tunnel_shared;
/* Every tunnel of one worker and the engines they run on. */
struct tunnel_set;

/* Once, before the workers start: prepares the engine cfg->mode names
 * (auto: chosen here, with one log line saying which and why) and the copy
 * relay it falls back to. NULL with a one-line reason in why. */
struct tunnel_shared *tunnel_prepare(const struct config *cfg, char *why, size_t whylen);
/* In the process that prepared, after every worker's tunnel set closed. */
void tunnel_release(struct tunnel_shared *sh);
const char *tunnel_shared_engine(const struct tunnel_shared *sh);
/* In the process that prepared: worker `worker` died; what it left in the
 * engines' shared state goes (the sockmap's map entries). */
void tunnel_worker_gone(struct tunnel_shared *sh, uint32_t worker);
/* Worker `worker` of `workers` opens its side of the engines. NULL with a
 * one-line reason in why. */
struct tunnel_set *tunnel_set_open(const struct tunnel_shared *sh, const struct config *cfg, uint32_t worker,
				   uint32_t workers, struct ev_loop *loop, char *why, size_t whylen);
/* A reloaded configuration: the engines learn of new upstream servers. */
void tunnel_set_reload(struct tunnel_set *ts, const struct config *cfg);
/* Closes every tunnel, then the engines. */
void tunnel_set_close(struct tunnel_set *ts);
/* The engine new tunnels start on ("sockmap", "splice", "copy"). */
const char *tunnel_set_engine(const struct tunnel_set *ts);
uint64_t tunnel_set_count(const struct tunnel_set *ts);

/* Takes everything in h, whatever happens (on failure the sockets are
 * closed and the slots given back). Returns the tunnel's id (what the
 * access log and `wsplice conns` call it), 0 on failure. */
uint64_t tunnel_start(struct tunnel_set *ts, struct tunnel_handoff *h);
/* The id the next tunnel_start() will give, so its 101 can be logged first. */
uint64_t tunnel_set_next_id(const struct tunnel_set *ts);
/* Closes tunnels idle past tunnel_idle_timeout, or half-closed and idle past
 * tunnel_fin_timeout. An engine's activity stamp is read at most once per
 * timeout period (the sockmap's is a BPF map lookup). */
void tunnel_timeouts(struct tunnel_set *ts, const struct timeouts *to, uint64_t now_ms);
/* Every open tunnel for `wsplice conns`: its client and upstream, engine,
 * age, bytes each way since the 101 and idle time; as a table, or JSON
 * with the engine's own view of it (the sockmap's tunnel id). */
void tunnel_list(struct tunnel_set *ts, FILE *f, bool json);

#endif
