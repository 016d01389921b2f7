/* wsplice: accept -> parse -> upstream -> 101 check -> hand-off -> engine -> close.
 * This file wires the pieces together and owns the process lifecycle. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>
#include "access_log.h"
#include "args.h"
#include "config_file.h"
#include "control.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "metrics_server.h"
#include "pool.h"
#include "proxy.h"
#include "route.h"
#include "session.h"
#include "timeouts.h"
#include "tunnel.h"
#include "upstream.h"
#include "privileges.h"
#include "shared.h"
#include "workers.h"
#include "xdp_guard.h"
#include "deny_cli.h"
#include "drain.h"
#include "handover.h"
#include "upgrade.h"


struct signal_watch {
	struct ev_handler h;
	struct ev_loop *loop;
	struct proxy *px;
	/* SIGTERM in a serving process: true when a drain began instead of
	 * the stop (shutdown_timeout; a second signal stops at once). */
	bool (*on_stop)(void *ctx);
	void *ctx;
};

/* A worker's (or the single process's) listeners, for a drain to close. */
struct serving {
	struct proxy *px;
	struct listener **listeners;
	int *pending;              /* listening sockets not accepted on yet (-1: none) */
	size_t n_listeners;
	bool log_listeners;
	struct drain *drain;
	struct handover *handover; /* an upgrade's: what leaves, or what arrives */
	bool leaving;              /* its tunnels went to a new process */
	bool forked; /* a worker: its master says when a drain ends early */
};

/* How long the old process of an upgrade waits for its requests in flight
 * at most (shutdown_timeout, if longer). */
#define UPGRADE_DRAIN_MS 60000


static void log_lines(const char *text)
{
	while (*text) {
		const char *nl = strchr(text, '\n');
		int len = nl ? (int)(nl - text) : (int)strlen(text);

		log_error("%.*s", len, text);
		text += len + (nl != NULL);
	}
}

/* Can the running listeners serve cfg? They are not reopened on reload. */
static bool same_listeners(const struct config *a, const struct config *b)
{
	if (a->n_listeners != b->n_listeners)
		return false;
	for (size_t i = 0; i < a->n_listeners; i++) {
		const struct listener_cfg *l = config_listener(b, a->listeners[i].name);

		if (!l || strcmp(l->ep.host, a->listeners[i].ep.host) || strcmp(l->ep.port, a->listeners[i].ep.port))
			return false;
	}
	return true;
}

/* The command line's settings, for reloads: they override the file's. */
static struct cli_options cli;
/* The XDP guard, in the master or the single process (NULL elsewhere). */
static struct xdp_guard *guard;

/* A file's configuration with the command line's settings over it; what
 * they name is resolved here (the file's own was, at load). NULL with the
 * reason in errors. */
/* With workers, a reload's file is read once, by the master, into a sealed
 * memfd that every worker gets over its channel: the workers may run as a
 * user who cannot read the file, and each reload has its own copy. The
 * master's current one (-1: none; a single process reads the file). */
static int snapshot_fd = -1;

/* The master: the file into a new sealed snapshot, which it parses too. */
static int snapshot_take(const char *path, char *errors, size_t errlen)
{
	char buf[65536];
	ssize_t n = -1;
	int fd = open(path, O_RDONLY | O_CLOEXEC),
	    snap = memfd_create("wsplice.conf", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	while (fd >= 0 && snap >= 0 && (n = read(fd, buf, sizeof(buf))) > 0)
		if (write(snap, buf, (size_t)n) != n) {
			n = -1;
			break;
		}
	if (n != 0 || fcntl(snap, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) {
		snprintf(errors, errlen, "%s: %s\n", path, strerror(errno));
		if (snap >= 0)
			close(snap);
		snap = -1;
	}
	if (fd >= 0)
		close(fd);
	if (snap < 0)
		return -1;
	if (snapshot_fd >= 0)
		close(snapshot_fd);
	snapshot_fd = snap;
	return 0;
}

static struct config *snapshot_load(const char *path, char *errors, size_t errlen)
{
	struct stat st;
	struct config *cfg = NULL;
	char *text;
	FILE *f;

	if (fstat(snapshot_fd, &st) || !(text = malloc((size_t)st.st_size + 1))) {
		snprintf(errors, errlen, "%s: cannot read the master's copy: %s\n", path, strerror(errno));
		return NULL;
	}
	if (pread(snapshot_fd, text, (size_t)st.st_size, 0) == st.st_size &&
	    (f = fmemopen(text, (size_t)st.st_size + 1, "r"))) {
		text[st.st_size] = '\0';
		cfg = config_load_stream(path, f, errors, errlen);
		fclose(f);
	} else {
		snprintf(errors, errlen, "%s: cannot read the master's copy: %s\n", path, strerror(errno));
	}
	free(text);
	return cfg;
}

static struct config *load_file_with_cli(const char *path, char *errors, size_t errlen)
{
	struct config *cfg = snapshot_fd >= 0 ? snapshot_load(path, errors, errlen)
					      : config_load_file(path, errors, errlen);
	char why[300];

	if (!cfg)
		return NULL;
	args_apply_globals(&cli, cfg);
	if (cli.have_metrics && endpoint_resolve(&cfg->metrics, true, why, sizeof(why))) {
		snprintf(errors, errlen, "--metrics: %s\n", why);
		config_put(cfg);
		return NULL;
	}
	return cfg;
}

/* SIGHUP: new routes, pools, timeouts and limits. Established tunnels and
 * requests in flight keep the generation they started with. */
static void reload(struct proxy *px)
{
	static char errors[8192];
	struct config *old = px->cfg, *cfg;

	if (!old->path[0]) {
		log_warn("SIGHUP: nothing to reload (started without -c)");
		return;
	}
	/* systemd's reload protocol: RELOADING=1 now, READY=1 when done,
	 * whether the new configuration was taken or refused. */
	sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu", (unsigned long long)ev_now_ms() * 1000);
	cfg = px->workers && snapshot_take(old->path, errors, sizeof(errors))
		      ? NULL
		      : load_file_with_cli(old->path, errors, sizeof(errors));
	/* A worker's copy is for this reload only. */
	if (px->tunnels && snapshot_fd >= 0) {
		close(snapshot_fd);
		snapshot_fd = -1;
	}
	if (!cfg) {
		log_lines(errors);
		log_error("reload refused: the running configuration stays");
		sd_notify(0, "READY=1\nSTATUS=reload refused: the running configuration stays");
		return;
	}
	if (!same_listeners(old, cfg)) {
		log_error("reload refused: listeners changed (a restart applies that); the running configuration stays");
		sd_notify(0, "READY=1\nSTATUS=reload refused: listeners changed");
		config_put(cfg);
		return;
	}
	if (!cfg->control[0])
		control_default_path(cfg->bpffs, cfg->control, sizeof(cfg->control));
	if (cfg->mode != old->mode || strcmp(cfg->bpffs, old->bpffs) || cfg->tunnel_buffer != old->tunnel_buffer ||
	    strcmp(cfg->metrics.host, old->metrics.host) || strcmp(cfg->metrics.port, old->metrics.port) ||
	    strcmp(cfg->control, old->control) || strcmp(cfg->access_log, old->access_log) ||
	    cfg->access_log_json != old->access_log_json || cfg->max_tunnels != old->max_tunnels ||
	    config_workers(cfg) != old->workers || strcmp(cfg->user, old->user))
		log_warn("reload: mode, bpffs, tunnel_buffer, max_tunnels, workers, user, metrics, control and access_log "
			 "apply at the next restart");
	if (cfg->xdp.n_ifaces != old->xdp.n_ifaces || memcmp(cfg->xdp.ifaces, old->xdp.ifaces, sizeof(old->xdp.ifaces)))
		log_warn("reload: xdp interfaces apply at the next restart (xdp_deny and the SYN rate apply now)");
	memcpy(cfg->xdp.ifaces, old->xdp.ifaces, sizeof(old->xdp.ifaces));
	cfg->xdp.n_ifaces = old->xdp.n_ifaces;
	cfg->max_tunnels = old->max_tunnels;
	cfg->workers = old->workers;
	snprintf(cfg->user, sizeof(cfg->user), "%s", old->user);
	snprintf(cfg->access_log, sizeof(cfg->access_log), "%s", old->access_log);
	cfg->access_log_json = old->access_log_json;
	cfg->mode = old->mode;
	snprintf(cfg->bpffs, sizeof(cfg->bpffs), "%s", old->bpffs);
	cfg->tunnel_buffer = old->tunnel_buffer;
	cfg->metrics = old->metrics;
	if (route_bind_states(px, cfg) || pool_bind_states(px, cfg)) {
		log_error("reload refused: out of memory");
		sd_notify(0, "READY=1\nSTATUS=reload refused: out of memory");
		config_put(cfg);
		return;
	}
	log_threshold = cfg->verbose ? LOG_DEBUG : LOG_INFO;
	if (guard) {
		char why[300];

		if (xdp_guard_apply(guard, cfg, why, sizeof(why)))
			log_error("reload: %s (the guard may hold part of the new deny list)", why);
	}
	if (px->tunnels)
		tunnel_set_reload(px->tunnels, cfg);
	snprintf(cfg->control, sizeof(cfg->control), "%s", old->control);
	px->cfg = cfg;
	px->generation++;
	config_put(old);
	if (px->workers) /* each applies the copy this reload read */
		workers_tell(px->workers, "reload", snapshot_fd);
	else
		log_info("reloaded %s: %zu routes, %zu pools", cfg->path, cfg->n_routes, cfg->n_pools);
	sd_notifyf(0, "READY=1\nSTATUS=generation %u: %zu routes, %zu pools", px->generation, cfg->n_routes,
		   cfg->n_pools);
}

static void start_upgrade(struct proxy *px);

static void on_signal(struct ev_handler *h, uint32_t events)
{
	struct signal_watch *sw = container_of(h, struct signal_watch, h);
	struct signalfd_siginfo si;

	(void)events;
	if (read(h->fd, &si, sizeof(si)) != sizeof(si))
		return;
	if (si.ssi_signo == SIGCHLD) {
		if (sw->px->workers)
			workers_reap(sw->px->workers);
		return;
	}
	if (si.ssi_signo == SIGUSR1) {
		/* logrotate's: the open tunnels are `wsplice conns` now. */
		if (sw->px->workers) {
			if (sw->px->cfg->access_log[0])
				log_info("SIGUSR1: reopening the access log (every worker)");
			workers_tell(sw->px->workers, "reopen", -1);
		} else if (access_log_enabled()) {
			log_info("SIGUSR1: reopening the access log");
			access_log_reopen();
		}
		return;
	}
	if (si.ssi_signo == SIGUSR2) {
		start_upgrade(sw->px);
		return;
	}
	if (si.ssi_signo == SIGHUP) {
		if (sw->px->draining)
			log_info("SIGHUP: draining, no reload");
		else
			reload(sw->px);
		return;
	}
	/* One line per daemon: the master's, or the single process's. */
	if (!sw->px->tunnels || sw->px->n_workers == 1)
		log_info("signal %s: shutting down", strsignal(si.ssi_signo));
	if (!sw->on_stop || !sw->on_stop(sw->ctx))
		ev_loop_stop(sw->loop);
}


static void close_listener(void *l)
{
	listener_close(l);
}

/* After the current batch of events: one of them may be a listener's. */
static void close_listeners(void *ctx)
{
	struct serving *sv = ctx;

	for (size_t i = 0; i < sv->n_listeners; i++) {
		if (sv->pending[i] >= 0)
			close(sv->pending[i]);
		sv->pending[i] = -1;
		if (sv->listeners[i])
			ev_defer(sv->px->loop, close_listener, sv->listeners[i]);
		sv->listeners[i] = NULL;
	}
}

/* Accepts on the listening sockets: at the start, or in an upgrade's new
 * process once the old one began to hand over (before that, a failure of
 * the new process would drop what it accepted). -1 when one fails (logged). */
static int open_listeners(struct serving *sv)
{
	const struct config *cfg = sv->px->cfg;
	char err[512];

	for (size_t i = 0; i < sv->n_listeners; i++) {
		if (sv->pending[i] < 0)
			continue;
		sv->listeners[i] = listener_open(sv->px, &cfg->listeners[i], sv->pending[i], err, sizeof(err));
		sv->pending[i] = -1; /* the listener's now */
		if (!sv->listeners[i]) {
			log_error("%s", err);
			return -1;
		}
		if (sv->log_listeners)
			log_info("listener %s on %s:%s", cfg->listeners[i].name, cfg->listeners[i].ep.host,
				 cfg->listeners[i].ep.port);
	}
	return 0;
}

static void begin_serving(void *ctx)
{
	struct serving *sv = ctx;

	if (open_listeners(sv))
		ev_loop_stop(sv->px->loop);
}

/* An upgrade's new process serves: this one's tunnels and idle
 * connections go to it through sock, its requests in flight finish here,
 * and then it ends (a drain). */
static void serving_hand_over(struct serving *sv, int sock)
{
	uint64_t ms = sv->px->cfg->timeouts.shutdown_ms;

	/* This process came by an upgrade itself: that handover ended (no
	 * upgrade starts before the old process is gone). */
	handover_free(sv->handover);
	sv->handover = handover_leave(sv->px, sock);
	if (!sv->handover) {
		log_error("upgrade: out of memory: this process keeps its tunnels");
		close(sock);
		return;
	}
	sv->leaving = true;
	drain_free(sv->drain);
	sv->drain = drain_start(sv->px, ms > UPGRADE_DRAIN_MS ? ms : UPGRADE_DRAIN_MS, close_listeners, sv);
	if (!sv->drain)
		ev_loop_stop(sv->px->loop);
}

/* SIGTERM, or the master's stop: with shutdown_timeout, a drain. */
static bool begin_drain(void *ctx)
{
	struct serving *sv = ctx;
	uint64_t ms = sv->px->cfg->timeouts.shutdown_ms;

	if (sv->drain || !ms)
		return false;
	sv->drain = drain_start(sv->px, ms, close_listeners, sv);
	if (sv->drain) {
		log_info("draining: no new connections; %llu tunnels run on for up to %llu ms",
			 (unsigned long long)tunnel_set_count(sv->px->tunnels), (unsigned long long)ms);
		if (!sv->forked)
			sd_notify(0, "STOPPING=1");
	}
	return sv->drain != NULL;
}

/* A stop signal in a serving process: a drain begins (true), or it stops
 * (false). systemd and Ctrl-C signal every process of the daemon, and the
 * master tells its workers too: a worker that drains already ignores more
 * signals (its master's "now" ends the drain early); a single process
 * stops at the second. */
static bool on_stop_signal(void *ctx)
{
	struct serving *sv = ctx;

	if (sv->leaving) /* it ends once its requests did */
		return true;
	if (sv->drain)
		return sv->forked;
	return begin_drain(sv);
}

static int watch_signals(struct signal_watch *sw, struct proxy *px, const sigset_t *mask)
{
	sw->loop = px->loop;
	sw->px = px;
	sw->h.fd = signalfd(-1, mask, SFD_NONBLOCK | SFD_CLOEXEC);
	sw->h.on_event = on_signal;
	return sw->h.fd < 0 ? -1 : ev_watch(px->loop, &sw->h, EPOLLIN);
}

/* Every tunnel holds two descriptors (six in the splice engine, once it
 * carried data): raise the limit to what max_tunnels needs (the hard one
 * too, with CAP_SYS_RESOURCE), else as far as the hard one allows, and say
 * so when that is not enough. */
static void raise_fd_limit(const struct config *cfg)
{
	bool splice = cfg->mode == MODE_SPLICE;

	for (size_t i = 0; i < cfg->n_routes; i++)
		splice |= cfg->routes[i].mode == MODE_SPLICE;
	/* Sessions in progress and pooled upstream connections: the headroom. */
	rlim_t want = (splice ? 6 : 2) * (rlim_t)cfg->max_tunnels + 4096;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl))
		return;
	if (rl.rlim_max < want && setrlimit(RLIMIT_NOFILE, &(struct rlimit){ want, want }) == 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_max < want)
		log_warn("RLIMIT_NOFILE allows %llu descriptors: about %llu tunnels, not max_tunnels %u "
			 "(raise LimitNOFILE, or lower max_tunnels)",
			 (unsigned long long)rl.rlim_max,
			 (unsigned long long)(rl.rlim_max > 4096 ? rl.rlim_max - 4096 : 0) / (splice ? 6 : 2),
			 cfg->max_tunnels);
}

/* `wsplice status|conns [--json] [--bpffs DIR | --control PATH | -c FILE]`:
 * asks the daemon those would name. */
static int ask_daemon(int argc, char **argv)
{
	const char *request = argv[1], *config_path = NULL;
	char path[108] = "", bpffs[256] = "/sys/fs/bpf/wsplice", errors[8192], line[64];
	bool json = false;

	for (int i = 2; i < argc; i++) {
		bool has_value = i + 1 < argc;

		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "--control") && has_value)
			snprintf(path, sizeof(path), "%s", argv[++i]);
		else if (!strcmp(argv[i], "--bpffs") && has_value)
			snprintf(bpffs, sizeof(bpffs), "%s", argv[++i]);
		else if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && has_value)
			config_path = argv[++i];
		else {
			fprintf(stderr, "wsplice %s: unexpected '%s' (see --help)\n", request, argv[i]);
			return 2;
		}
	}
	if (config_path && !path[0]) {
		struct config *cfg = config_load_file(config_path, errors, sizeof(errors));

		if (!cfg) {
			fputs(errors, stderr);
			return 1;
		}
		snprintf(path, sizeof(path), "%s", cfg->control);
		snprintf(bpffs, sizeof(bpffs), "%s", cfg->bpffs);
		config_put(cfg);
	}
	if (!path[0])
		control_default_path(bpffs, path, sizeof(path));
	snprintf(line, sizeof(line), "%s%s", request, json ? " json" : "");
	return control_client(path, line);
}

/* The configuration from -c FILE or the --listen/--upstream shortcut.
 * Prints what is wrong and returns NULL. */
static struct config *load_config(const struct cli_options *opt)
{
	static char errors[8192];
	struct config *cfg;

	if (opt->config_path) {
		cfg = load_file_with_cli(opt->config_path, errors, sizeof(errors));
		if (!cfg) {
			fputs(errors, stderr);
			return NULL;
		}
	} else {
		struct config globals;

		config_defaults(&globals);
		args_apply_globals(opt, &globals);
		cfg = config_from_endpoints(&globals, &opt->listen, &opt->upstream);
		if (!cfg || config_finish(cfg, errors, sizeof(errors))) {
			fprintf(stderr, "wsplice: %s\n", cfg ? errors : "out of memory");
			config_put(cfg);
			return NULL;
		}
	}
	return cfg;
}

/* What the master (or the single process) holds for the workers it starts. */
struct daemon {
	struct proxy master;        /* cfg, generation, engine; its loop, in a master */
	struct tunnel_shared *sh;   /* the engines' daemon-wide parts */
	int *listen_fds;            /* [listener * workers + worker] */
	size_t n_listen_fds;
	uint32_t workers;
	bool forked;                /* a master and worker processes, else one process */
	bool control_named;
	sigset_t signals;
	struct signal_watch sw;
	struct reply_server *ms, *ctl;
	/* An upgrade. The old process: the one running, and whether the new
	 * process took over (the data plane is its own then). */
	struct upgrade *upgrade;
	bool handed_over;
	struct serving *single;     /* a single process's listeners and handover */
	/* The new process: what the old one offered; its end of the socket
	 * closes when it is gone, and the control socket, the metrics and the
	 * XDP guard are this one's from then on. */
	struct upgrade_arrival arrival;
	struct ev_handler old_gone;
	bool servers_open;          /* the control socket and metrics, after an upgrade */
	struct proxy *serving_px;   /* the master's, or the single process's */
};

static struct daemon *daemon_of; /* main's, for the signal handler */

/* Opens what a single process or a master answers on: the control socket
 * and the metrics endpoint. */
static int open_servers(struct daemon *d, struct proxy *px)
{
	struct config *cfg = px->cfg;
	char err[512];

	/* A socket the configuration names must work; the default one is
	 * derived from bpffs, and a second instance on the same bpffs (auto
	 * then runs the copy relay) still serves, without status and conns. */
	d->ctl = control_open(px, cfg->control, err, sizeof(err));
	if (!d->ctl && d->control_named) {
		log_error("%s", err);
		return -1;
	}
	if (!d->ctl)
		log_warn("%s: wsplice status and conns cannot reach this instance (give it --control)", err);
	if (cfg->metrics.host[0]) {
		d->ms = metrics_server_open(px->loop, &cfg->metrics, err, sizeof(err));
		if (!d->ms) {
			log_error("%s", err);
			return -1;
		}
		log_info("metrics on http://%s:%s/metrics", cfg->metrics.host, cfg->metrics.port);
	}
	return 0;
}

static void close_servers(struct daemon *d, struct proxy *px)
{
	reply_server_close(d->ms);
	if (d->ctl) {
		reply_server_close(d->ctl);
		control_unlink(px->cfg->control);
	}
	d->ms = d->ctl = NULL;
}

static void announce(struct daemon *d, const struct config *cfg)
{
	if (cfg->path[0])
		log_info("configuration %s: %zu routes, %zu pools, mode %s, %u worker%s%s%s", cfg->path, cfg->n_routes,
			 cfg->n_pools, d->master.engine, d->workers, d->workers == 1 ? "" : "s",
			 cfg->user[0] ? " as user " : "", cfg->user);
	else
		log_info("listening on %s:%s, upstream %s:%s, mode %s, %u worker%s%s%s", cfg->listeners[0].ep.host,
			 cfg->listeners[0].ep.port, cfg->pools[0].servers[0].ep.host, cfg->pools[0].servers[0].ep.port,
			 d->master.engine, d->workers, d->workers == 1 ? "" : "s", cfg->user[0] ? " as user " : "",
			 cfg->user);
	/* Type=notify: systemd starts what depends on wsplice once it serves. */
	sd_notifyf(0, "READY=1\nSTATUS=serving on %zu listeners, mode %s, %u workers\nMAINPID=%lu", cfg->n_listeners,
		   d->master.engine, d->workers, (unsigned long)getpid());
}

/* The master's requests to a worker: its tunnels (answered), and what the
 * master's signals ask of it. */
static bool on_master_request(void *ctx, const char *request, int fd, FILE *out)
{
	struct serving *sv = ctx;
	struct proxy *px = sv->px;

	if (!strcmp(request, "conns json") || !strcmp(request, "conns")) {
		tunnel_list(px->tunnels, out, !strcmp(request, "conns json"));
		return true;
	}
	if (!strcmp(request, "handover") && fd >= 0) {
		serving_hand_over(sv, fd);
		return false;
	}
	if (sv->leaving) /* a stop changes nothing: it ends once its requests did */
		request = "";
	if (!strcmp(request, "reload") && fd >= 0) {
		snapshot_fd = fd; /* reload() parses and closes it */
		reload(px);
		return false;
	}
	if (!strcmp(request, "reopen")) {
		if (access_log_enabled())
			access_log_reopen();
	} else if (!strcmp(request, "stop")) {
		if (!sv->drain && !begin_drain(sv))
			ev_loop_stop(px->loop);
	} else if (!strcmp(request, "now")) {
		ev_loop_stop(px->loop);
	}
	if (fd >= 0)
		close(fd);
	return false;
}

/* In a new worker: what only the master uses goes, without touching the
 * epoll instance the master still watches through. */
static void forget_master(void *ctx)
{
	struct daemon *d = ctx;

	reply_server_forget(d->ms);
	reply_server_forget(d->ctl);
	d->ms = d->ctl = NULL;
	if (d->sw.h.fd > 0)
		close(d->sw.h.fd);
	d->sw.h.fd = -1;
	ev_loop_free(d->master.loop);
	d->master.loop = NULL;
	if (snapshot_fd >= 0) /* the master's last reload's; its own come over the channel */
		close(snapshot_fd);
	snapshot_fd = -1;
	xdp_guard_forget(guard);
	guard = NULL;
	tunnel_shared_watch(d->sh, NULL);
	upgrade_forget(d->upgrade);
	d->upgrade = NULL;
	if (d->arrival.sock >= 0) /* the master's: it answers, and learns the old process left */
		close(d->arrival.sock);
	d->arrival.sock = -1;
}

/* In the master: worker w died. Its entries leave the data plane; and when
 * it is not started again, its listening sockets close, so the kernel
 * hands new connections to the other workers. */
static void worker_gone(void *ctx, uint32_t w, bool for_good)
{
	struct daemon *d = ctx;

	if (!for_good) {
		/* After an upgrade its tunnels, map entries and all, are the new
		 * process's. */
		if (!d->handed_over)
			tunnel_worker_gone(d->sh, w);
		return;
	}
	for (size_t i = 0; i < d->master.cfg->n_listeners; i++) {
		int *fd = &d->listen_fds[i * d->workers + w];

		if (*fd >= 0)
			close(*fd);
		*fd = -1;
	}
}

/* The old process: the new one serves. The data plane is its now; the
 * workers (or this process) hand their tunnels over and end. */
static void on_upgrade_ready(void *ctx, int pid, int *socks)
{
	struct daemon *d = ctx;

	/* systemd follows the daemon to the new process before this one
	 * exits (from the main process, as NotifyAccess=main wants). */
	sd_notifyf(0, "MAINPID=%d\nSTATUS=upgraded: pid %d serves; this one hands its tunnels over", pid, pid);
	d->handed_over = true;
	tunnel_shared_disown(d->sh);
	xdp_guard_disown(guard);
	/* wsplice status and the scrapes reach the new process from now on,
	 * not once this one's requests in flight have ended. */
	close_servers(d, d->forked ? &d->master : d->single->px);
	upgrade_servers_free(d->upgrade);
	if (!d->forked) {
		serving_hand_over(d->single, socks[0]);
		return;
	}
	workers_hand_over(d->master.workers, "handover", socks);
	for (uint32_t w = 0; w < d->workers; w++)
		close(socks[w]);
	/* supervise() then waits for the workers; no listener stays here. */
	ev_loop_stop(d->master.loop);
}

/* SIGUSR2 or `wsplice upgrade`, in the master or the single process. */
static void start_upgrade(struct proxy *px)
{
	struct daemon *d = daemon_of;
	int engine_fds[512], guard_fds[XDP_IFACES_MAX + 1], *listen = d->listen_fds;
	size_t n_listen = d->n_listen_fds;
	char err[512];
	int n, n_guard;

	if (upgrade_running(d->upgrade) || d->handed_over || d->arrival.sock >= 0) {
		log_warn("SIGUSR2: an upgrade is in progress already (or the last one's old process is still here)");
		return;
	}
	if (px->draining) {
		log_warn("SIGUSR2: draining, no upgrade");
		return;
	}
	upgrade_free(d->upgrade);
	d->upgrade = NULL;
	/* A single process's listeners hold their sockets themselves. */
	int single[d->single ? d->single->n_listeners + 1 : 1];

	if (!d->forked) {
		for (size_t i = 0; i < d->single->n_listeners; i++)
			single[i] = listener_fd(d->single->listeners[i]);
		listen = single;
		n_listen = d->single->n_listeners;
	}
	for (size_t i = 0; i < n_listen; i++)
		if (listen[i] < 0) {
			log_error("upgrade failed: worker %zu was left out after crashing, and its listening sockets "
				  "closed: a restart is needed; this process keeps serving", i % d->workers);
			return;
		}
	n = tunnel_shared_export(d->sh, engine_fds, sizeof(engine_fds) / sizeof(engine_fds[0]));
	n_guard = xdp_guard_export(guard, guard_fds, sizeof(guard_fds) / sizeof(guard_fds[0]));
	if (n < 0 || n_guard < 0) {
		log_error("upgrade failed: cannot list the data plane's descriptors; this process keeps serving");
		return;
	}
	log_info("SIGUSR2: upgrading");
	d->upgrade = upgrade_start(px->loop,
				   &(struct upgrade_offer){ .cfg = px->cfg, .engine = d->master.engine,
							    .workers = d->workers, .listen_fds = listen,
							    .n_listen_fds = n_listen, .engine_fds = engine_fds,
							    .n_engine_fds = (size_t)n, .guard_fds = guard_fds,
							    .n_guard_fds = (size_t)n_guard,
							    .guard_made_bpffs = xdp_guard_made_bpffs(guard) },
				   on_upgrade_ready, d, err, sizeof(err));
	if (!d->upgrade)
		log_error("upgrade failed: %s; this process keeps serving", err);
}

/* The new process: the old one is gone (its end of the socket closed).
 * What only one process can hold is this one's now. */
static void servers_here(struct daemon *d, struct proxy *px)
{
	if (d->servers_open)
		return;
	d->servers_open = true;
	if (open_servers(d, px))
		log_error("upgrade: the control socket or the metrics could not be opened");
	announce(d, px->cfg);
}

static void on_old_gone(struct ev_handler *h, uint32_t events)
{
	struct daemon *d = container_of(h, struct daemon, old_gone);
	struct proxy *px = d->serving_px;
	char msg[16], err[512];
	ssize_t n;

	(void)events;
	n = recv(h->fd, msg, sizeof(msg), MSG_DONTWAIT);
	if (n < 0 && errno == EAGAIN)
		return;
	if (n > 0) { /* "servers": it closed its control socket and metrics */
		servers_here(d, px);
		return;
	}
	ev_watch(px->loop, h, 0);
	close(h->fd);
	h->fd = d->arrival.sock = -1;
	log_info("upgrade: the old process is gone; this one (pid %d) serves alone", (int)getpid());
	/* Not there before: the configuration named no interface then. */
	if (!guard && px->cfg->xdp.n_ifaces && !(guard = xdp_guard_open(px->cfg, err, sizeof(err))))
		log_error("%s (the listeners go unguarded)", err);
	servers_here(d, px);
}

/* The new process serves: it says so, and waits for the old one to go. */
static void serving_after_upgrade(struct daemon *d, struct proxy *px)
{
	char err[512];

	d->serving_px = px;
	upgrade_answer(&d->arrival, NULL);
	/* What was adopted is this process's from now on. */
	tunnel_shared_own(d->sh);
	if (guard && xdp_guard_take(guard, px->cfg, err, sizeof(err)))
		log_error("upgrade: %s (the old guard's program stays on the interfaces)", err);
	d->old_gone = (struct ev_handler){ .fd = d->arrival.sock, .on_event = on_old_gone };
	if (ev_watch(px->loop, &d->old_gone, EPOLLIN))
		log_error("upgrade: cannot watch the old process: %s", strerror(errno));
}

/* One worker, or the single process: accept, proxy, tunnel. channel is
 * the worker's end of the master's socketpair, -1 in a single process. */
static int serve(void *ctx, uint32_t w, int channel)
{
	struct daemon *d = ctx;
	struct proxy px = { 0 };
	struct signal_watch sw = { 0 };
	struct serving sv = { .px = &px };
	struct listener **listeners = NULL;
	struct timeouts_watch *tw = NULL;
	struct worker_channel *ch = NULL;
	struct config *cfg = config_get(d->master.cfg);
	char err[512];
	int rc = 1;

	/* The other workers' listening sockets: a copy held here would keep
	 * one of a worker that is not started again in its SO_REUSEPORT group,
	 * taking connections nobody accepts. */
	for (size_t i = 0; d->forked && i < d->n_listen_fds; i++)
		if (i % d->workers != w && d->listen_fds[i] >= 0) {
			close(d->listen_fds[i]);
			d->listen_fds[i] = -1;
		}
	/* The same for the other workers' ends of an upgrade's handover. */
	for (size_t i = 0; d->forked && i < d->arrival.n_worker_socks; i++)
		if (i != w && d->arrival.worker_socks[i] >= 0) {
			close(d->arrival.worker_socks[i]);
			d->arrival.worker_socks[i] = -1;
		}
	px.cfg = cfg;
	px.sessions.next = px.sessions.prev = &px.sessions;
	px.started_ms = d->master.started_ms;
	px.generation = d->master.generation;
	px.engine = d->master.engine;
	px.n_workers = d->workers;
	if (cfg->access_log[0] &&
	    access_log_open(cfg->access_log, cfg->access_log_json ? ACCESS_JSON : ACCESS_LOGFMT, err, sizeof(err))) {
		log_error("%s", err);
		goto out;
	}
	px.loop = ev_loop_new();
	if (!px.loop || route_bind_states(&px, cfg) || pool_bind_states(&px, cfg))
		goto out;
	px.tunnels = tunnel_set_open(d->sh, cfg, w, d->workers, px.loop, err, sizeof(err));
	if (!px.tunnels) {
		log_error("%s", err);
		goto out;
	}
	if (!d->forked) /* the process that prepared */
		tunnel_shared_watch(d->sh, px.loop);
	if (d->forked) {
		/* SIGHUP and SIGUSR1 are the master's (systemctl kill sends to
		 * every process of the unit): they come over the channel. */
		sigset_t mask = d->signals;

		sigdelset(&mask, SIGHUP);
		sigdelset(&mask, SIGUSR1);
		sigdelset(&mask, SIGUSR2);
		if (watch_signals(&sw, &px, &mask))
			goto out;
	} else if (watch_signals(&sw, &px, &d->signals)) {
		goto out;
	}
	tw = timeouts_start(&px);
	listeners = calloc(cfg->n_listeners, sizeof(*listeners));
	sv.pending = malloc(cfg->n_listeners * sizeof(int));
	if (!tw || !listeners || !sv.pending)
		goto out;
	sv.listeners = listeners;
	sv.n_listeners = cfg->n_listeners;
	sv.log_listeners = cfg->path[0] && !d->forked;
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		sv.pending[i] = d->listen_fds[i * d->workers + w];
		d->listen_fds[i * d->workers + w] = -1;
	}
	sv.forked = d->forked;
	if (!d->forked)
		d->single = &sv;
	sw.on_stop = on_stop_signal;
	sw.ctx = &sv;
	if (w < d->arrival.n_worker_socks && d->arrival.worker_socks[w] >= 0) {
		sv.handover = handover_arrive(&px, d->arrival.worker_socks[w], begin_serving, &sv);
		if (!sv.handover)
			goto out;
		d->arrival.worker_socks[w] = -1;
	} else if (open_listeners(&sv)) {
		goto out;
	}
	/* Everything that needs root is open: the maps, the listeners, the
	 * log file. */
	if (cfg->user[0] && privileges_drop(cfg->user, err, sizeof(err))) {
		log_error("worker %u: %s", w, err);
		goto out;
	}
	/* A new uid cleared the parent-death signal: the master's again. */
	if (d->forked && workers_parent_death())
		goto out;
	if (channel >= 0) {
		ch = worker_channel_open(px.loop, channel, on_master_request, &sv);
		if (!ch || write(channel, "R", 1) != 1) /* the master waits for it */
			goto out;
		channel = -1;
		log_debug("worker %u (pid %d) serving", w, (int)getpid());
	} else if (d->arrival.sock >= 0) {
		serving_after_upgrade(d, &px);
	} else {
		if (open_servers(d, &px))
			goto out;
		announce(d, cfg);
	}
	ev_loop_run(px.loop);
	if (sv.leaving)
		handover_end(sv.handover); /* "done": everything it had is the new process's */
	else
		handover_free(sv.handover);
	sv.handover = NULL;
	if (!d->forked && !sv.leaving) /* after an upgrade the daemon goes on, in the new process */
		sd_notify(0, "STOPPING=1");
	rc = 0;
out:
	if (channel >= 0)
		close(channel);
	worker_channel_close(ch);
	if (!d->forked) {
		close_servers(d, &px);
		/* The new process learns this one is gone once the control
		 * socket's name is free; one not serving yet is stopped. */
		upgrade_free(d->upgrade);
		d->upgrade = NULL;
	}
	for (size_t i = 0; listeners && i < px.cfg->n_listeners; i++)
		if (listeners[i])
			listener_close(listeners[i]);
	free(listeners);
	for (size_t i = 0; sv.pending && i < sv.n_listeners; i++)
		if (sv.pending[i] >= 0)
			close(sv.pending[i]);
	free(sv.pending);
	handover_free(sv.handover);
	d->single = NULL;
	drain_free(sv.drain);
	timeouts_stop(tw);
	session_close_all(&px);
	if (px.loop)
		ev_run_deferred(px.loop);
	tunnel_set_close(px.tunnels);
	if (sw.h.fd > 0)
		close(sw.h.fd);
	/* After the tunnels: each wrote its line at close. */
	access_log_close();
	ev_loop_free(px.loop);
	pool_free_states(&px);
	route_free_states(&px);
	config_put(px.cfg);
	return rc;
}

/* The master of forked workers: signals, metrics, control, respawns. */
static int supervise(struct daemon *d)
{
	struct proxy *px = &d->master;
	char err[512];
	int rc = 1;

	sigaddset(&d->signals, SIGCHLD);
	sigprocmask(SIG_BLOCK, &d->signals, NULL);
	px->loop = ev_loop_new();
	if (!px->loop || route_bind_states(px, px->cfg) || pool_bind_states(px, px->cfg) ||
	    watch_signals(&d->sw, px, &d->signals) || (d->arrival.sock < 0 && open_servers(d, px)))
		goto out;
	tunnel_shared_watch(d->sh, px->loop);
	sigdelset(&d->signals, SIGCHLD); /* the workers' signalfd */
	/* Each worker writes its own lines; a path that cannot work is said
	 * once, here. */
	if (px->cfg->access_log[0]) {
		if (access_log_open(px->cfg->access_log, ACCESS_LOGFMT, err, sizeof(err))) {
			log_error("%s", err);
			goto out;
		}
		access_log_close();
	}
	px->workers = workers_start(d->workers, serve, forget_master, worker_gone, d, err, sizeof(err));
	if (!px->workers) {
		log_error("%s", err);
		goto out;
	}
	for (size_t i = 0; i < px->cfg->n_listeners; i++)
		if (px->cfg->path[0])
			log_info("listener %s on %s:%s", px->cfg->listeners[i].name, px->cfg->listeners[i].ep.host,
				 px->cfg->listeners[i].ep.port);
	for (size_t i = 0; i < d->arrival.n_worker_socks; i++) /* the workers' now */
		if (d->arrival.worker_socks[i] >= 0) {
			close(d->arrival.worker_socks[i]);
			d->arrival.worker_socks[i] = -1;
		}
	if (d->arrival.sock >= 0)
		serving_after_upgrade(d, px);
	else
		announce(d, px->cfg);
	ev_loop_run(px->loop);
	if (!d->handed_over) {
		sd_notify(0, "STOPPING=1");
		log_info("stopping %u workers", d->workers);
	}
	rc = 0;
out:
	/* No worker is started again: the listening sockets go now, or the
	 * kernel would queue connections in them while the workers drain. */
	for (size_t i = 0; i < d->n_listen_fds; i++)
		if (d->listen_fds[i] >= 0) {
			close(d->listen_fds[i]);
			d->listen_fds[i] = -1;
		}
	/* Their tunnels close with them (after their drain, with
	 * shutdown_timeout); then the data plane may go. */
	{
		sigset_t again;

		sigemptyset(&again);
		sigaddset(&again, SIGTERM);
		sigaddset(&again, SIGINT);
		uint64_t ms = px->cfg->timeouts.shutdown_ms;

		/* After an upgrade they wait for their requests in flight. */
		if (d->handed_over && ms < UPGRADE_DRAIN_MS)
			ms = UPGRADE_DRAIN_MS;
		workers_stop(px->workers, ms + 10000, &again);
	}
	px->workers = NULL;
	close_servers(d, px);
	upgrade_free(d->upgrade);
	d->upgrade = NULL;
	if (d->sw.h.fd > 0)
		close(d->sw.h.fd);
	ev_loop_free(px->loop);
	pool_free_states(px);
	route_free_states(px);
	return rc;
}

int main(int argc, char **argv)
{
	static struct daemon d;
	struct cli_options opt;
	struct config *cfg;
	char err[512] = "";
	int rc = 1;

	if (argc >= 2 && (!strcmp(argv[1], "status") || !strcmp(argv[1], "conns") || !strcmp(argv[1], "upgrade")))
		return ask_daemon(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "deny"))
		return deny_command(argc, argv);
	switch (args_parse(argc, argv, &opt, err, sizeof(err))) {
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
	cli = opt;
	upgrade_remember(argv);
	upgrade_arrival_open(&d.arrival);
	daemon_of = &d;
	cfg = load_config(&opt);
	if (opt.test_only) {
		if (!cfg) {
			fprintf(stderr, "wsplice: configuration %s test failed\n", opt.config_path ? opt.config_path : "");
			return 1;
		}
		printf("wsplice: configuration %s is ok: %zu listeners, %zu routes, %zu pools\n",
		       opt.config_path ? opt.config_path : "(command line)", cfg->n_listeners, cfg->n_routes,
		       cfg->n_pools);
		config_put(cfg);
		return 0;
	}
	if (!cfg) {
		upgrade_answer(&d.arrival, "the new process cannot load its configuration (the lines above say why)");
		return opt.config_path ? 1 : 2;
	}
	cfg->workers = config_workers(cfg);
	d.workers = cfg->workers;
	d.forked = d.workers > 1 || cfg->user[0];
	d.master.cfg = cfg;
	d.master.started_ms = ev_now_ms();
	d.master.generation = 1;
	d.master.n_workers = d.workers;
	d.master.sessions.next = d.master.sessions.prev = &d.master.sessions;
	if (cfg->verbose)
		log_threshold = LOG_DEBUG;
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit(cfg);
	sigemptyset(&d.signals);
	sigaddset(&d.signals, SIGINT);
	sigaddset(&d.signals, SIGTERM);
	sigaddset(&d.signals, SIGUSR1);
	sigaddset(&d.signals, SIGHUP);
	sigaddset(&d.signals, SIGUSR2);
	sigprocmask(SIG_BLOCK, &d.signals, NULL);
	d.control_named = cfg->control[0] != '\0';
	if (!d.control_named)
		control_default_path(cfg->bpffs, cfg->control, sizeof(cfg->control));
	/* Before any fork: the workers count into the same figures. */
	if (shared_init() || metrics_share()) {
		log_error("cannot map memory the workers share: %s", strerror(errno));
		goto out;
	}
	/* An upgrade's new process adopts what the old one runs. */
	if (upgrade_receive(&d.arrival, cfg, err, sizeof(err)))
		goto out;
	d.sh = d.arrival.sock >= 0 ? tunnel_adopt(cfg, d.arrival.engine, d.arrival.engine_fds, d.arrival.n_engine_fds,
						   err, sizeof(err))
				   : tunnel_prepare(cfg, err, sizeof(err));
	d.arrival.n_engine_fds = 0; /* adopted, or closed */
	if (!d.sh)
		goto out;
	d.master.engine = tunnel_shared_engine(d.sh);
	d.listen_fds = calloc(cfg->n_listeners * d.workers, sizeof(*d.listen_fds));
	if (!d.listen_fds)
		goto out;
	d.n_listen_fds = cfg->n_listeners * d.workers;
	for (size_t i = 0; i < d.n_listen_fds; i++)
		d.listen_fds[i] = -1;
	if (d.arrival.sock >= 0) {
		/* The running listening sockets: no SYN goes unanswered. */
		if (d.arrival.n_listen_fds != d.n_listen_fds) {
			snprintf(err, sizeof(err), "%zu listening sockets came for %zu", d.arrival.n_listen_fds,
				 d.n_listen_fds);
			goto out;
		}
		memcpy(d.listen_fds, d.arrival.listen_fds, d.n_listen_fds * sizeof(int));
		d.arrival.n_listen_fds = 0;
	} else {
		for (size_t i = 0; i < cfg->n_listeners; i++)
			if (listener_bind(&cfg->listeners[i], d.workers, tunnel_shared_listen_mtu(d.sh),
					  &d.listen_fds[i * d.workers], err, sizeof(err)))
				goto out;
	}
	/* In front of the bound listeners, before anything is served (after
	 * an upgrade, once the old process let go of the interfaces). */
	if (d.arrival.n_guard_fds) {
		guard = xdp_guard_adopt(cfg, d.arrival.guard_fds, d.arrival.n_guard_fds, d.arrival.guard_made_bpffs, err,
					sizeof(err));
		d.arrival.n_guard_fds = 0;
		if (!guard)
			goto out;
	} else if (cfg->xdp.n_ifaces && d.arrival.sock < 0 && !(guard = xdp_guard_open(cfg, err, sizeof(err)))) {
		goto out;
	}
	err[0] = '\0';
	rc = d.forked ? supervise(&d) : serve(&d, 0, -1);
out:
	if (rc && err[0])
		log_error("%s", err);
	/* An upgrade that did not come as far as serving: the old process
	 * goes on, and logs why. */
	if (!d.arrival.answered)
		upgrade_answer(&d.arrival, err[0] ? err : "the new process could not start serving (its log says why)");
	/* cfg may be gone: a reload replaced it (with as many listeners). */
	for (size_t i = 0; d.listen_fds && i < d.n_listen_fds; i++)
		if (d.listen_fds[i] >= 0)
			close(d.listen_fds[i]);
	free(d.listen_fds);
	/* The workers are gone: the maps, their pins and the programs go. */
	xdp_guard_close(guard);
	tunnel_release(d.sh);
	config_put(d.master.cfg);
	return rc;
}
