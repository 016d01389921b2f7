/* wsplice: accept -> parse -> upstream -> 101 check -> hand-off -> engine -> close.
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
#include <systemd/sd-daemon.h>
#include "access_log.h"
#include "args.h"
#include "config_file.h"
#include "control.h"
#include "listener.h"
#include "log.h"
#include "metrics_server.h"
#include "pool.h"
#include "proxy.h"
#include "route.h"
#include "session.h"
#include "timeouts.h"
#include "tunnel.h"
#include "upstream.h"


struct signal_watch {
	struct ev_handler h;
	struct ev_loop *loop;
	struct proxy *px;
};


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

/* A file's configuration with the command line's settings over it; what
 * they name is resolved here (the file's own was, at load). NULL with the
 * reason in errors. */
static struct config *load_file_with_cli(const char *path, char *errors, size_t errlen)
{
	struct config *cfg = config_load_file(path, errors, errlen);
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
	cfg = load_file_with_cli(old->path, errors, sizeof(errors));
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
	    cfg->access_log_json != old->access_log_json || cfg->max_tunnels != old->max_tunnels)
		log_warn("reload: mode, bpffs, tunnel_buffer, max_tunnels, metrics, control and access_log apply at the "
			 "next restart");
	cfg->max_tunnels = old->max_tunnels;
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
	tunnel_set_reload(px->tunnels, cfg);
	snprintf(cfg->control, sizeof(cfg->control), "%s", old->control);
	px->cfg = cfg;
	px->generation++;
	config_put(old);
	log_info("reloaded %s: %zu routes, %zu pools", cfg->path, cfg->n_routes, cfg->n_pools);
	sd_notifyf(0, "READY=1\nSTATUS=generation %u: %zu routes, %zu pools", px->generation, cfg->n_routes,
		   cfg->n_pools);
}

static void on_signal(struct ev_handler *h, uint32_t events)
{
	struct signal_watch *sw = container_of(h, struct signal_watch, h);
	struct signalfd_siginfo si;

	(void)events;
	if (read(h->fd, &si, sizeof(si)) != sizeof(si))
		return;
	if (si.ssi_signo == SIGUSR1) {
		/* logrotate's: the open tunnels are `wsplice conns` now. */
		if (access_log_enabled()) {
			log_info("SIGUSR1: reopening the access log");
			access_log_reopen();
		}
		return;
	}
	if (si.ssi_signo == SIGHUP) {
		reload(sw->px);
		return;
	}
	log_info("signal %s: shutting down", strsignal(si.ssi_signo));
	ev_loop_stop(sw->loop);
}

/* Every tunnel holds two descriptors (six in the splice engine, once it
 * carried data): raise the limit to what max_tunnels needs (the hard one
 * too, with CAP_SYS_RESOURCE), else as far as the hard one allows, and say
 * so when that is not enough. */
static void raise_fd_limit(const struct config *cfg)
{
	/* Sessions in progress and pooled upstream connections: the headroom. */
	rlim_t want = (cfg->mode == MODE_SPLICE ? 6 : 2) * (rlim_t)cfg->max_tunnels + 4096;
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
			 (unsigned long long)(rl.rlim_max > 4096 ? rl.rlim_max - 4096 : 0) / (cfg->mode == MODE_SPLICE ? 6 : 2),
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

int main(int argc, char **argv)
{
	struct cli_options opt;
	struct proxy px = { 0 };
	struct signal_watch sw = { 0 };
	struct listener **listeners = NULL;
	struct timeouts_watch *tw = NULL;
	struct reply_server *ms = NULL, *ctl = NULL;
	bool control_named;
	struct config *cfg;
	char err[512];
	sigset_t mask;
	int rc = 1;

	if (argc >= 2 && (!strcmp(argv[1], "status") || !strcmp(argv[1], "conns")))
		return ask_daemon(argc, argv);
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
	if (!cfg)
		return opt.config_path ? 1 : 2;
	px.cfg = cfg;
	if (cfg->verbose)
		log_threshold = LOG_DEBUG;
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit(cfg);
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);

	px.sessions.next = px.sessions.prev = &px.sessions;
	px.started_ms = ev_now_ms();
	px.generation = 1;
	control_named = cfg->control[0] != '\0';
	if (!control_named)
		control_default_path(cfg->bpffs, cfg->control, sizeof(cfg->control));
	if (cfg->access_log[0] &&
	    access_log_open(cfg->access_log, cfg->access_log_json ? ACCESS_JSON : ACCESS_LOGFMT, err, sizeof(err))) {
		log_error("%s", err);
		config_put(cfg);
		return 1;
	}
	px.loop = ev_loop_new();
	if (!px.loop || route_bind_states(&px, cfg) || pool_bind_states(&px, cfg))
		goto out;
	px.tunnels = tunnel_set_open(cfg, px.loop, err, sizeof(err));
	if (!px.tunnels) {
		log_error("%s", err);
		goto out;
	}
	sw.loop = px.loop;
	sw.px = &px;
	sw.h.fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	sw.h.on_event = on_signal;
	ev_watch(px.loop, &sw.h, EPOLLIN);
	tw = timeouts_start(&px);
	listeners = calloc(cfg->n_listeners, sizeof(*listeners));
	if (!tw || !listeners)
		goto out;
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		listeners[i] = listener_open(&px, &cfg->listeners[i], err, sizeof(err));
		if (!listeners[i]) {
			log_error("%s", err);
			goto out;
		}
		if (cfg->path[0])
			log_info("listener %s on %s:%s", cfg->listeners[i].name, cfg->listeners[i].ep.host,
				 cfg->listeners[i].ep.port);
	}
	/* A socket the configuration names must work; the default one is
	 * derived from bpffs, and a second instance on the same bpffs (auto
	 * then runs the copy relay) still serves, without status and conns. */
	ctl = control_open(&px, cfg->control, err, sizeof(err));
	if (!ctl && control_named) {
		log_error("%s", err);
		goto out;
	}
	if (!ctl)
		log_warn("%s: wsplice status and conns cannot reach this instance (give it --control)", err);
	if (cfg->metrics.host[0]) {
		ms = metrics_server_open(px.loop, &cfg->metrics, err, sizeof(err));
		if (!ms) {
			log_error("%s", err);
			goto out;
		}
		log_info("metrics on http://%s:%s/metrics", cfg->metrics.host, cfg->metrics.port);
	}
	if (cfg->path[0])
		log_info("configuration %s: %zu routes, %zu pools, mode %s", cfg->path, cfg->n_routes, cfg->n_pools,
			 tunnel_set_engine(px.tunnels));
	else
		log_info("listening on %s:%s, upstream %s:%s, mode %s", cfg->listeners[0].ep.host,
			 cfg->listeners[0].ep.port, cfg->pools[0].servers[0].ep.host, cfg->pools[0].servers[0].ep.port,
			 tunnel_set_engine(px.tunnels));
	/* Type=notify: systemd starts what depends on wsplice once it serves. */
	sd_notifyf(0, "READY=1\nSTATUS=serving on %zu listeners, mode %s\nMAINPID=%lu", cfg->n_listeners,
		   tunnel_set_engine(px.tunnels), (unsigned long)getpid());
	ev_loop_run(px.loop);
	sd_notify(0, "STOPPING=1");
	rc = 0;
out:
	reply_server_close(ms);
	if (ctl) {
		reply_server_close(ctl);
		control_unlink(px.cfg->control);
	}
	for (size_t i = 0; listeners && i < px.cfg->n_listeners; i++)
		listener_close(listeners[i]);
	free(listeners);
	timeouts_stop(tw);
	session_close_all(&px);
	if (px.loop)
		ev_run_deferred(px.loop);
	/* Tunnels die with the process; so do the engines' maps and pins. */
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
