/* wsplice: accept -> parse -> upstream -> 101 check -> splice -> close.
 * This file wires the pieces together and owns the process lifecycle. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include "args.h"
#include "dataplane.h"
#include "listener.h"
#include "log.h"
#include "proxy.h"
#include "session.h"
#include "tunnel.h"
#include "upstream.h"

#ifndef WSPLICE_VERSION
#define WSPLICE_VERSION "0.1.0"
#endif

struct signal_watch {
	struct ev_handler h;
	struct ev_loop *loop;
	struct proxy *px;
};

struct ring_watch {
	struct ev_handler h;
	struct dataplane *dp;
};

static void on_signal(struct ev_handler *h, uint32_t events)
{
	struct signal_watch *sw = container_of(h, struct signal_watch, h);
	struct signalfd_siginfo si;

	(void)events;
	if (read(h->fd, &si, sizeof(si)) != sizeof(si))
		return;
	if (si.ssi_signo == SIGUSR1) {
		tunnel_dump_all(sw->px);
		return;
	}
	log_info("signal %s: shutting down", strsignal(si.ssi_signo));
	ev_loop_stop(sw->loop);
}

static void on_ring(struct ev_handler *h, uint32_t events)
{
	(void)events;
	dataplane_poll(container_of(h, struct ring_watch, h)->dp);
}

static void on_pause(void *ctx, const struct ws_pause_event *ev)
{
	struct proxy *px = ctx;
	struct tunnel *t = ev->tunnel_id < WSPLICE_MAX_TUNNELS ? px->tunnel_by_id[ev->tunnel_id] : NULL;

	if (t)
		tunnel_sockmap_pause(t, ev->dir & 1);
}

static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Resolves --mode auto and opens the data plane when sockmap is wanted. */
static int choose_mode(struct proxy *px, struct config *cfg)
{
	char why[256];

	px->mode = cfg->mode;
	if (cfg->mode != MODE_AUTO && cfg->mode != MODE_SOCKMAP)
		return 0;
	px->dp = dataplane_open(cfg->bpffs, cfg->tunnel_buffer, on_pause, px, why, sizeof(why));
	if (px->dp) {
		px->mode = MODE_SOCKMAP;
		px->tunnel_by_id = calloc(WSPLICE_MAX_TUNNELS, sizeof(*px->tunnel_by_id));
		return px->tunnel_by_id ? 0 : -1;
	}
	if (cfg->mode == MODE_SOCKMAP) {
		log_error("--mode sockmap: %s", why);
		return -1;
	}
	log_warn("sockmap unavailable (%s): using the splice relay", why);
	px->mode = MODE_SPLICE;
	return 0;
}

int main(int argc, char **argv)
{
	struct config cfg;
	struct proxy px = { .cfg = &cfg };
	struct signal_watch sw = { 0 };
	struct ring_watch rw = { 0 };
	struct listener *l = NULL;
	char err[512];
	sigset_t mask;
	int rc = 1;

	switch (args_parse(argc, argv, &cfg, err, sizeof(err))) {
	case ARGS_HELP:
		args_usage(stdout);
		return 0;
	case ARGS_VERSION:
		printf("wsplice %s\n", WSPLICE_VERSION);
		return 0;
	case ARGS_ERROR:
		fprintf(stderr, "wsplice: %s\n", err);
		return 2;
	case ARGS_RUN:
		break;
	}
	if (cfg.verbose)
		log_threshold = LOG_DEBUG;
	if (endpoint_resolve(&cfg.listen, true, err, sizeof(err)) ||
	    endpoint_resolve(&cfg.upstream, false, err, sizeof(err))) {
		fprintf(stderr, "wsplice: %s\n", err);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit();
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGUSR1);
	sigprocmask(SIG_BLOCK, &mask, NULL);

	px.sessions.next = px.sessions.prev = &px.sessions;
	px.tunnels.next = px.tunnels.prev = &px.tunnels;
	px.loop = ev_loop_new();
	if (!px.loop || choose_mode(&px, &cfg))
		goto out;
	sw.loop = px.loop;
	sw.px = &px;
	sw.h.fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	sw.h.on_event = on_signal;
	ev_watch(px.loop, &sw.h, EPOLLIN);
	if (px.dp) {
		rw.dp = px.dp;
		rw.h.fd = dataplane_event_fd(px.dp);
		rw.h.on_event = on_ring;
		ev_watch(px.loop, &rw.h, EPOLLIN);
	}
	l = listener_open(&px, &cfg.listen, err, sizeof(err));
	if (!l) {
		log_error("%s", err);
		goto out;
	}
	log_info("listening on %s:%s, upstream %s:%s, mode %s%s%s", cfg.listen.host, cfg.listen.port,
		 cfg.upstream.host, cfg.upstream.port, mode_name(px.mode), px.dp ? ", maps pinned in " : "",
		 px.dp ? cfg.bpffs : "");
	ev_loop_run(px.loop);
	rc = 0;
out:
	listener_close(l);
	session_close_all(&px);
	tunnel_close_all(&px);
	if (px.loop)
		ev_run_deferred(px.loop);
	if (sw.h.fd > 0)
		close(sw.h.fd);
	/* Tunnels die with the process; closing the maps' owner detaches the
	 * verdict and removes the pins. */
	dataplane_close(px.dp);
	free(px.tunnel_by_id);
	ev_loop_free(px.loop);
	return rc;
}
