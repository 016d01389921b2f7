/* The boundary between the tunnel lifecycle (tunnel.c) and the ways of
 * moving a tunnel's bytes. An engine is one file that defines one struct
 * engine_ops; engines.c lists them. An engine never calls the tunnel layer:
 * every call returns what it wants next in a struct engine_io (interest on
 * each end, a 1 ms tick, or an end of the tunnel), and tunnel.c carries it
 * out. Engine state is the engine's own, opaque to tunnel.c. An engine may
 * run another as its first stage through that engine's ops (the express
 * lane starts each tunnel on the copy relay), never through its state. */
#ifndef WSPLICE_ENGINE_H
#define WSPLICE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "config.h"
#include "event_loop.h"
#include "tunnel.h"

static inline int dir_src(int d) { return d == WS_DIR_C2U ? TUNNEL_END_CLIENT : TUNNEL_END_UPSTREAM; }
static inline int dir_dst(int d) { return d == WS_DIR_C2U ? TUNNEL_END_UPSTREAM : TUNNEL_END_CLIENT; }
/* The direction an end is the source of. */
static inline int end_dir(int e) { return e == TUNNEL_END_CLIENT ? WS_DIR_C2U : WS_DIR_U2C; }

enum engine_verdict {
	ENGINE_RUN,      /* keep going with want[] and tick */
	ENGINE_CLOSE,    /* both directions closed: close both sockets */
	ENGINE_RESET,    /* reset_end saw an RST: reset the other end too */
	ENGINE_ABORT,    /* the rest cannot be delivered intact: reset both ends */
	ENGINE_FALLBACK, /* cannot carry this tunnel: hand it to the copy relay */
};

/* Filled in by tunnel.c with the current state before each call; the
 * engine changes what it needs. */
struct engine_io {
	uint32_t want[2];  /* epoll interest per end; 0 takes the end out of epoll */
	bool tick;         /* call tick() every millisecond */
	bool half_closed;  /* a FIN was seen or sent: tunnel_fin_timeout applies */
	enum engine_verdict verdict;
	int reset_end;     /* ENGINE_RESET */
};

struct tunnel_stats {
	uint64_t bytes[2];       /* per direction, delivered since the 101 */
	uint64_t last_active_ms; /* ev_now_ms() time of the last byte moved */
};

/* tunnel.c's side of an asynchronous event inside an engine (a pause that
 * completed): run tick() for the tunnel the engine was given as owner. */
typedef void (*engine_kick_fn)(void *owner);

struct engine_ops {
	const char *name;
	/* Daemon-wide set-up, once, before the workers start (the sockmap's
	 * BPF data plane), or NULL when the engine needs none. Returns what
	 * every worker's open() gets, or NULL with a one-line reason. Only the
	 * process that prepared releases. */
	void *(*prepare)(const struct config *cfg, char *why, size_t whylen);
	void (*release)(void *shared);
	/* An upgrade, in the process that prepared: the descriptors the new
	 * process adopts the shared part from (-1 when more than cap); once it
	 * has them, disown(), and release() then leaves the kernel's part in
	 * place. In the new process, adopt() is prepare() from them (it owns
	 * them, even on failure). NULL when there is no shared part. */
	int (*export_shared)(void *shared, int *fds, size_t cap);
	void (*disown)(void *shared);
	void (*own)(void *shared); /* the new process serves: the adopted part is its own now */
	void *(*adopt)(const struct config *cfg, const int *fds, size_t n, char *why, size_t whylen);
	/* In the process that prepared: a worker died, and what it left in
	 * the shared part goes. NULL when nothing is left. */
	void (*worker_gone)(void *shared, uint32_t worker);
	/* In the process that prepared, once its event loop runs (the master's,
	 * or the only worker's): what the engine watches daemon-wide (the
	 * express lane: devices made later). loop NULL, in a worker forked
	 * after it: the worker's copy of the watch goes. NULL: nothing. */
	void (*watch)(void *shared, struct ev_loop *loop);
	/* The largest packet a client's segments may make, when this engine
	 * carries them unchanged onto devices of smaller MTUs (the express
	 * lane): the listeners advertise an MSS that fits it. NULL or 0: any. */
	unsigned (*listen_mtu)(void *shared);
	/* One worker's set-up (of worker_count), or NULL when the engine
	 * needs none. Returns the context every start() gets, or NULL with a
	 * one-line reason. */
	void *(*open)(const struct config *cfg, void *shared, uint32_t worker, struct ev_loop *loop, engine_kick_fn kick,
		      char *why, size_t whylen);
	void (*close)(void *ctx);
	/* A new configuration (SIGHUP) for new tunnels; NULL when nothing changes. */
	void (*reload)(void *ctx, const struct config *cfg);
	/* Takes over h's queues and counts (the fds stay the tunnel layer's).
	 * Returns the engine's per-tunnel state, or NULL (out of memory) with h
	 * untouched. owner is what kick() is called with. */
	void *(*start)(void *ctx, struct tunnel_handoff *h, void *owner, struct engine_io *io);
	void (*event)(void *st, int end, uint32_t events, struct engine_io *io);
	void (*tick)(void *st, struct engine_io *io); /* NULL: never asks for one */
	/* Frees the state while both sockets are still open. h non-NULL (a
	 * fallback): hand back the queues and counts. */
	void (*stop)(void *st, struct tunnel_handoff *h);
	/* The daemon is stopping (before stop): end the tunnel with a
	 * WebSocket close frame, 1001 "going away", to both ends, where each
	 * stream stands between frames. NULL: the engine cannot see frames
	 * (splice, sockmap), and the peers see the TCP close only. */
	void (*going_away)(void *st);
	/* An upgrade: hands the tunnel to the new process. Fills h as stop()
	 * does and saved with the rest, then frees st; what the kernel holds
	 * for it (the sockmap's entries) stays. NULL: stop(st, h) is enough. */
	void (*hand_over)(void *st, struct tunnel_handoff *h, struct engine_saved *saved);
	/* In the new process: start() from what hand_over gave, which it
	 * takes (saved's descriptors too, even on failure). NULL: start(). */
	void *(*take_over)(void *ctx, struct tunnel_handoff *h, struct engine_saved *saved, void *owner,
			   struct engine_io *io);
	void (*upgrade)(void *ctx, enum engine_upgrade phase); /* NULL: nothing to do */
	void (*stats)(void *st, struct tunnel_stats *out);
	/* No byte held and no FIN seen: the tunnel could leave this engine
	 * without a byte left behind (the express lane asks). NULL: never. */
	bool (*quiet)(void *st);
	/* One line for wsplice conns: what the engine knows of the tunnel. */
	void (*describe)(void *st, char *out, size_t len);
};

/* engines.c: the table, indexed by enum tunnel_mode (MODE_AUTO: none). */
extern const struct engine_ops *const engine_table[MODE_COUNT];
/* Where a tunnel goes when its engine returns ENGINE_FALLBACK. */
extern const struct engine_ops *const engine_fallback;

/* Of n bytes written to a destination whose lifetime count went from w to
 * w + n, how many are tunnel payload (at or past payload_from). */
static inline uint64_t payload_part(uint64_t w, uint64_t n, uint64_t payload_from)
{
	uint64_t end = w + n;

	return end <= payload_from ? 0 : end - (w > payload_from ? w : payload_from);
}

/* Shared by engines: the socket error pending on fd, 0 when none. */
int sock_error(int fd);
/* A BPF program's activity stamp (bpf_ktime_get_coarse_ns) as an
 * ev_now_ms() time. */
uint64_t kernel_stamp_ms(uint64_t stamp_ns);

#endif
