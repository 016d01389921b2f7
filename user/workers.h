/* `workers = N`: the master process forks N workers after the data plane
 * is loaded and the listeners are bound (one SO_REUSEPORT socket each),
 * passes SIGHUP, SIGUSR1 and SIGTERM on to them (over their channels), starts a worker again when
 * one dies, and collects `wsplice conns` from all of them. The worker's
 * side of that is a channel: a socketpair its loop answers requests on. */
#ifndef WSPLICE_WORKERS_H
#define WSPLICE_WORKERS_H

#include <stdbool.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include "event_loop.h"

/* Runs in the child for worker `index`; channel is its end of the
 * socketpair. Returns the child's exit status. */
typedef int (*worker_main_fn)(void *ctx, uint32_t index, int channel);
/* Runs in every child first: closes what only the master uses, without
 * touching what the master still watches (its epoll instance is shared). */
typedef void (*worker_forget_fn)(void *ctx);
/* In the master, when worker index died: what it left in shared state is
 * cleared (for_good false), and when it is not started again, what still
 * routes connections to it is closed (for_good true). */
typedef void (*worker_gone_fn)(void *ctx, uint32_t index, bool for_good);

struct workers;

/* Forks n workers. NULL with the reason in err (nothing left running). */
struct workers *workers_start(uint32_t n, worker_main_fn run, worker_forget_fn forget, worker_gone_fn gone,
			      void *ctx, char *err, size_t errlen);
/* A request line every worker's channel gets ("reload", "reopen"), with fd
 * (or -1) passed along. */
void workers_tell(struct workers *ws, const char *request, int fd);
/* An upgrade: worker i gets request with fds[i], and none is started
 * again from now on. */
void workers_hand_over(struct workers *ws, const char *request, const int *fds);
/* In a worker: re-arms the parent-death signal (a new uid clears it);
 * -1 when the master is gone already. */
int workers_parent_death(void);
/* SIGCHLD: reaps, logs how each one ended, and forks it again unless the
 * daemon is stopping (more than 10 deaths a minute stop the respawning). */
void workers_reap(struct workers *ws);
/* Tells every worker "stop" (it drains, with shutdown_timeout, or stops),
 * then waits for them, SIGKILL after timeout_ms. A signal of again (the
 * master's stop signals, blocked) meanwhile tells them "now". */
void workers_stop(struct workers *ws, uint64_t timeout_ms, const sigset_t *again);
uint32_t workers_count(const struct workers *ws);
/* `wsplice conns [json]` from every worker, merged into one answer. */
void workers_conns(struct workers *ws, FILE *out, bool json);

/* The worker's side: on_request(ctx, line, fd, out) for each request line,
 * with the descriptor that came with it (the callee's to close) or -1;
 * true sends what it wrote to out as the answer. "stop" (out NULL) when the
 * master closed its end. */
typedef bool (*channel_fn)(void *ctx, const char *request, int fd, FILE *out);
struct worker_channel;
struct worker_channel *worker_channel_open(struct ev_loop *loop, int fd, channel_fn on_request, void *ctx);
void worker_channel_close(struct worker_channel *ch);

#endif
