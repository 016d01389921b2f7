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
	enum tunnel_mode mode;   /* its route's engine; MODE_AUTO: the daemon's */
};

/* What an engine needs besides the hand-off to go on with a tunnel in
 * another process (an upgrade, handover.c): its own state, opaque bytes,
 * and descriptors of its own (the splice relay's pipes). */
#define ENGINE_SAVED_MAX 256
#define ENGINE_SAVED_FDS 4
struct engine_saved {
	uint32_t len, nfds;
	int fd[ENGINE_SAVED_FDS];
	uint8_t state[ENGINE_SAVED_MAX];
};

/* An upgrade's phases, as one engine context sees them. */
enum engine_upgrade {
	ENGINE_UPGRADE_LEAVING,  /* the old process: its tunnels go (the sockmap stops reading its events) */
	ENGINE_UPGRADE_ARRIVING, /* the new one, before it serves: tunnels are coming */
	ENGINE_UPGRADE_ARRIVED,  /* every tunnel came */
};

/* A tunnel on its way from the old process to the new one (handover.c):
 * the hand-off's sockets, queues and counts, what its engine keeps, and
 * what it counts against (each process keeps its own counts: names, not
 * pointers). */
struct tunnel_transfer {
	struct tunnel_handoff h; /* route_st and server_st: unused */
	struct engine_saved saved;
	char engine[16];
	char route[CFG_NAME_MAX];
	char server[CFG_NAME_MAX + 300]; /* a server_state's key, "" for none */
	uint64_t serial;                 /* its id in the access log and wsplice conns */
	uint64_t age_ms;
};
typedef void (*tunnel_transfer_fn)(void *ctx, struct tunnel_transfer *x);

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
/* An upgrade. The old process: the descriptors of the engines' shared
 * part, for the new process (-1 when more than cap), and once it took
 * them, disown: tunnel_release leaves the kernel's part in place. */
int tunnel_shared_export(struct tunnel_shared *sh, int *fds, size_t cap);
void tunnel_shared_disown(struct tunnel_shared *sh);
/* In the process that prepared, its loop: what the engines watch
 * daemon-wide (engine.h, watch). */
void tunnel_shared_watch(struct tunnel_shared *sh, struct ev_loop *loop);
/* The largest packet a client's segment may make, or 0: any (engine.h,
 * listen_mtu). */
unsigned tunnel_shared_listen_mtu(const struct tunnel_shared *sh);
/* The new process's tunnel_prepare: the old one's engine (its name), its
 * shared part adopted from fds (the descriptors are its own from now on,
 * even on failure). What they hold stays the old process's (tunnel_release
 * leaves it in place) until tunnel_shared_own, once this process serves. */
void tunnel_shared_own(struct tunnel_shared *sh);
struct tunnel_shared *tunnel_adopt(const struct config *cfg, const char *engine, const int *fds, size_t n,
				   char *why, size_t whylen);
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
/* An upgrade, in the old process: every tunnel leaves through fn (which
 * owns what it is given), and so does every one that starts from now on. */
void tunnel_set_hand_over(struct tunnel_set *ts, tunnel_transfer_fn fn, void *ctx);
/* The ids: the old process's last one, and in the new process, a series
 * that goes on far past it (the old one may still start a few). */
uint64_t tunnel_set_last_id(const struct tunnel_set *ts);
void tunnel_set_ids_after(struct tunnel_set *ts, uint64_t id);
/* In the new process: the engines learn of the phase (tunnels arriving,
 * all arrived), and each tunnel goes on here. Takes everything in x, the
 * route and server slots (rs, ss: NULL for none) too; 0 on failure, with
 * the sockets closed. */
void tunnel_set_upgrade(struct tunnel_set *ts, enum engine_upgrade phase);
uint64_t tunnel_take_over(struct tunnel_set *ts, struct tunnel_transfer *x, struct route_state *rs,
			  struct server_state *ss);
/* Closes tunnels idle past tunnel_idle_timeout, or half-closed and idle past
 * tunnel_fin_timeout. An engine's activity stamp is read at most once per
 * timeout period (the sockmap's is a BPF map lookup). */
void tunnel_timeouts(struct tunnel_set *ts, const struct timeouts *to, uint64_t now_ms);
/* Every open tunnel for `wsplice conns`: its client and upstream, engine,
 * age, bytes each way since the 101 and idle time; as a table, or JSON
 * with the engine's own view of it (the sockmap's tunnel id). */
void tunnel_list(struct tunnel_set *ts, FILE *f, bool json);

#endif
