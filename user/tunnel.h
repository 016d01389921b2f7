/* A tunnel: the two sockets of an upgraded connection, relayed byte for
 * byte until both directions have closed. Three ways to move the bytes:
 * sockmap (the kernel redirects them, tunnel_sockmap.c), splice and copy
 * (userspace relays, tunnel_relay.c). Every mode forwards a half-close as a
 * half-close, an RST as an RST, and buffers a bounded amount. */
#ifndef WSPLICE_TUNNEL_H
#define WSPLICE_TUNNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "buf.h"
#include "event_loop.h"
#include "proxy.h"
#include "wsplice_maps.h"

struct session;

#define TUNNEL_END_CLIENT 0
#define TUNNEL_END_UPSTREAM 1

/* One direction: bytes read from ep[src] are written to ep[dst], where for
 * WS_DIR_C2U src is the client and for WS_DIR_U2C it is the upstream. */
struct tunnel_dir {
	struct buf buf;        /* copy mode: the relay buffer; otherwise leftovers */
	int pipe_rd, pipe_wr;  /* splice mode */
	uint32_t in_pipe;
	bool src_eof;          /* FIN received from the source */
	bool dst_shut;         /* FIN sent to the destination */
	bool pausing;          /* sockmap: a pause was asked for and is under way */
	bool paused;           /* sockmap: removed from verdict_map by backpressure */
	bool user_finish;      /* sockmap: finishing this direction in userspace */
	uint64_t user_read;    /* bytes userspace ever read from the source */
	uint64_t user_written; /* bytes userspace ever wrote to the destination */
};

struct tunnel {
	struct conn_link link; /* first: the list entry is the tunnel */
	struct proxy *px;
	enum tunnel_mode mode;
	struct ev_handler ep[2]; /* [TUNNEL_END_CLIENT], [TUNNEL_END_UPSTREAM] */
	struct tunnel_dir dir[2];
	struct ev_ticker ticker;
	uint32_t id;
	uint64_t cookie[2];
	/* sockmap: bytes each socket had queued for sending when the kernel
	 * took over; what it queued since is what the redirects delivered. */
	uint64_t queued_base[2];
	bool closed, in_kernel;
	/* Held for the tunnel's life: a slot of its route's max_tunnels, and a
	 * connection counted against its server for leastconn. */
	struct route_state *route_st;
	struct server_state *server_st;
	uint64_t last_active_ms;  /* relays: last byte moved; sockmap: see tunnel_timeouts */
	uint64_t next_check_ms;   /* sockmap: when the BPF activity stamp is read next */
};

static inline int dir_src(int d) { return d == WS_DIR_C2U ? TUNNEL_END_CLIENT : TUNNEL_END_UPSTREAM; }
static inline int dir_dst(int d) { return d == WS_DIR_C2U ? TUNNEL_END_UPSTREAM : TUNNEL_END_CLIENT; }

/* Called by the session once the accepted 101 is queued for the client. */
void tunnel_handoff(struct session *s);
/* Ends the tunnel. reset_end >= 0: that end saw an RST, so the other end is
 * reset too (SO_LINGER 0) instead of closed gracefully. */
void tunnel_close(struct tunnel *t, int reset_end);
void tunnel_close_all(struct proxy *px);
/* The socket error pending on an end, 0 when none. */
int tunnel_sock_error(int fd);

int tunnel_relay_start(struct tunnel *t);
int tunnel_sockmap_start(struct tunnel *t);
/* Called for a ring-buffer pause request from the verdict program. */
void tunnel_sockmap_pause(struct tunnel *t, int dir);
/* The pause asked for by tunnel_sockmap_pause has been carried out (ok) or
 * found no socket; cookie tells a reused tunnel id from the one that asked. */
void tunnel_sockmap_paused(struct tunnel *t, int dir, uint64_t cookie, bool ok, uint64_t waited_us);
/* One line about a tunnel's state, for the SIGUSR1 dump. */
void tunnel_describe(struct tunnel *t, char *out, size_t len);
void tunnel_sockmap_describe(struct tunnel *t, char *out, size_t len);
/* Closes tunnels idle past tunnel_idle_timeout, or half-closed and idle
 * past tunnel_fin_timeout. Sockmap tunnels are judged by the activity
 * stamp the BPF program keeps, read at most once per timeout period. */
void tunnel_timeouts(struct proxy *px, uint64_t now_ms);
/* Logs every open tunnel (SIGUSR1). */
void tunnel_dump_all(struct proxy *px);
/* Removes the tunnel from the BPF maps; called by tunnel_close. */
void tunnel_sockmap_release(struct tunnel *t);

#endif
