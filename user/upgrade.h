/* A binary upgrade (`wsplice upgrade`, SIGUSR2), the process's part: the
 * old process starts the new binary with the command line it was started
 * with and offers it, over a unix SOCK_SEQPACKET socket, its listening
 * sockets, the descriptors of the engines' shared part (the BPF data plane,
 * kept loaded and pinned) and one socket per worker for its tunnels
 * (handover.c). The new one checks it can adopt them (same listeners,
 * workers, max_tunnels, tunnel_buffer and engine; maps of the layout it was
 * built for), serves, and says "ready"; only then do the old workers hand
 * their tunnels over and the old process exit. Whatever fails before that
 * leaves the old process serving, with one line saying why. */
#ifndef WSPLICE_UPGRADE_H
#define WSPLICE_UPGRADE_H

#include <stddef.h>
#include <stdint.h>
#include "config.h"
#include "event_loop.h"

/* At start-up: how this binary was started, for the upgrade to repeat. */
void upgrade_remember(char **argv);

/* The old process. */
struct upgrade_offer {
	const struct config *cfg;
	const char *engine;
	uint32_t workers;
	const int *listen_fds; /* [listener * workers + worker] */
	size_t n_listen_fds;
	const int *engine_fds; /* tunnel_shared_export's */
	size_t n_engine_fds;
	const int *guard_fds;  /* xdp_guard_export's */
	size_t n_guard_fds;
	bool guard_made_bpffs; /* xdp_guard_made_bpffs */
};
/* The offer's and the handover's format (handover.c's records, each
 * engine's saved state): a new binary with another one cannot adopt. */
#define UPGRADE_PROTOCOL 1

/* ready(ctx, pid, socks) once the new process (pid) serves: socks[w] is
 * worker w's end of its handover socket (the callee's to close). On
 * failure nothing is called: the line is logged, and this process goes on. */
typedef void (*upgrade_ready_fn)(void *ctx, int pid, int *socks);
struct upgrade;
struct upgrade *upgrade_start(struct ev_loop *loop, const struct upgrade_offer *o, upgrade_ready_fn ready, void *ctx,
			      char *err, size_t errlen);
/* Its end of the socket stays open until this process exits: the new one
 * then knows it is gone. NULL while none runs or after a failure. */
bool upgrade_running(const struct upgrade *up);
/* After ready: this process closed its control socket and metrics, and
 * the new one opens its own. */
void upgrade_servers_free(struct upgrade *up);
/* This process stops: a new process that has not answered yet is killed
 * (it may hold the data plane this one is about to remove). */
void upgrade_free(struct upgrade *up);
/* In a worker forked meanwhile: the descriptors go, nothing else. */
void upgrade_forget(struct upgrade *up);

/* The new process. */
struct upgrade_arrival {
	int sock;
	char engine[16];
	int *listen_fds, *engine_fds, *guard_fds, *worker_socks;
	size_t n_listen_fds, n_engine_fds, n_guard_fds, n_worker_socks;
	bool guard_made_bpffs;
	bool answered;
};
/* First thing at start-up: whether an upgrade started this process
 * (ua->sock >= 0 then). */
void upgrade_arrival_open(struct upgrade_arrival *ua);
/* The offer, checked against cfg: 0 when everything came, else -1 with
 * the reason (for upgrade_answer). */
int upgrade_receive(struct upgrade_arrival *ua, const struct config *cfg, char *why, size_t whylen);
/* "ready" (failure NULL), or why not, to the old process. */
void upgrade_answer(struct upgrade_arrival *ua, const char *failure);

#endif
