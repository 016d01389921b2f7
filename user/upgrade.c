#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fdpass.h"
#include "log.h"
#include "upgrade.h"

#define UPGRADE_ENV "WSPLICE_UPGRADE_FD"
#define OFFER_MAGIC 0x77737570u /* "wsup" */
/* A new process that has not answered by then is stuck: it is killed. */
#define UPGRADE_ANSWER_S 60

/* What the new process must match to adopt the running sockets and maps. */
struct offer {
	uint32_t magic, version; /* UPGRADE_PROTOCOL: the handover's records and engine states */
	char bpffs[256];
	uint32_t workers, max_tunnels;
	uint64_t tunnel_buffer;
	uint32_t n_listen_fds, n_engine_fds, n_guard_fds;
	uint32_t guard_made_bpffs;
	char engine[16];
	char listeners[4096]; /* "name host port\n" each, in order */
};

struct upgrade {
	struct ev_handler h;
	struct ev_handler timer; /* a timerfd: UPGRADE_ANSWER_S */
	struct ev_loop *loop;
	pid_t pid;
	int *socks; /* ours of each worker's handover socket, until ready */
	uint32_t workers;
	bool ready;
	upgrade_ready_fn on_ready;
	void *ctx;
};

static char exe[PATH_MAX];
static char **saved_argv;

void upgrade_remember(char **argv)
{
	/* The path, not /proc/self/exe: that stays the old binary once a
	 * package replaced the file. */
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	exe[n > 0 ? n : 0] = '\0';
	if (n > 10 && !strcmp(exe + n - 10, " (deleted)"))
		exe[n - 10] = '\0';
	saved_argv = argv;
}

static void listeners_text(const struct config *cfg, char *out, size_t len)
{
	size_t n = 0;

	out[0] = '\0';
	for (size_t i = 0; i < cfg->n_listeners && n < len; i++)
		n += snprintf(out + n, len - n, "%s %s %s\n", cfg->listeners[i].name, cfg->listeners[i].ep.host,
			      cfg->listeners[i].ep.port);
}

/* Descriptors in messages of at most FDPASS_MAX. */
static int send_fds(int sock, const int *fds, size_t n)
{
	for (size_t i = 0; i < n; i += FDPASS_MAX) {
		size_t k = n - i < FDPASS_MAX ? n - i : FDPASS_MAX;

		if (fdpass_send(sock, "F", 1, fds + i, k))
			return -1;
	}
	return 0;
}

static void close_all(int *fds, size_t n)
{
	for (size_t i = 0; fds && i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

static void stop_timer(struct upgrade *up)
{
	if (up->timer.fd < 0)
		return;
	ev_watch(up->loop, &up->timer, 0);
	close(up->timer.fd);
	up->timer.fd = -1;
}

static void failed(struct upgrade *up, const char *why);

static void on_timeout(struct ev_handler *h, uint32_t events)
{
	struct upgrade *up = container_of(h, struct upgrade, timer);
	char why[128];

	(void)events;
	if (up->ready || up->pid <= 0)
		return;
	kill(up->pid, SIGKILL);
	snprintf(why, sizeof(why), "the new process (pid %d) did not answer within %d s, and was killed", (int)up->pid,
		 UPGRADE_ANSWER_S);
	failed(up, why);
}

static void failed(struct upgrade *up, const char *why)
{
	int status;

	if (up->h.fd < 0) /* failed already (an answer and the timeout in one batch) */
		return;
	log_error("upgrade failed: %s; this process keeps serving", why);
	stop_timer(up);
	ev_watch(up->loop, &up->h, 0);
	close(up->h.fd);
	up->h.fd = -1;
	close_all(up->socks, up->workers);
	free(up->socks);
	up->socks = NULL;
	/* It exits right after its answer (the master may have reaped it). */
	if (up->pid > 0)
		waitpid(up->pid, &status, 0);
	up->pid = 0;
}

static void on_answer(struct ev_handler *h, uint32_t events)
{
	struct upgrade *up = container_of(h, struct upgrade, h);
	char msg[1024];
	size_t nfds;
	ssize_t n;

	(void)events;
	if (h->fd < 0)
		return;
	if (up->ready) { /* nothing more comes: only its end, once it fails later */
		ev_watch(up->loop, &up->h, 0);
		return;
	}
	n = fdpass_recv(h->fd, msg, sizeof(msg) - 1, NULL, 0, &nfds);
	/* A new process that fails leaves part of the offer unread: its close
	 * then reports ECONNRESET once, ahead of its answer. */
	if (n < 0 && errno == ECONNRESET)
		n = fdpass_recv(h->fd, msg, sizeof(msg) - 1, NULL, 0, &nfds);
	if (n < 0 && errno == EAGAIN)
		return;
	if (n <= 0) {
		failed(up, "the new process ended before it served (its own log says why)");
		return;
	}
	msg[n] = '\0';
	if (strcmp(msg, "ready")) {
		failed(up, msg);
		return;
	}
	up->ready = true;
	stop_timer(up);
	ev_watch(up->loop, &up->h, 0);
	log_info("upgrade: the new process (pid %d) serves; the tunnels go over to it", (int)up->pid);
	up->on_ready(up->ctx, up->pid, up->socks);
	free(up->socks);
	up->socks = NULL;
}

struct upgrade *upgrade_start(struct ev_loop *loop, const struct upgrade_offer *o, upgrade_ready_fn ready, void *ctx,
			      char *err, size_t errlen)
{
	struct upgrade *up = calloc(1, sizeof(*up));
	struct offer *of = calloc(1, sizeof(*of));
	int sp[2] = { -1, -1 }, *theirs = malloc(o->workers * sizeof(int));

	if (up && (up->socks = malloc(o->workers * sizeof(int))))
		for (uint32_t w = 0; w < o->workers; w++)
			up->socks[w] = -1;
	for (uint32_t w = 0; theirs && w < o->workers; w++)
		theirs[w] = -1;
	if (!up || !of || !theirs || !up->socks || !exe[0]) {
		snprintf(err, errlen, exe[0] ? "out of memory" : "cannot tell this binary's path");
		goto fail;
	}
	up->loop = loop;
	up->timer.fd = -1;
	up->workers = o->workers;
	up->on_ready = ready;
	up->ctx = ctx;
	for (uint32_t w = 0; w < o->workers; w++) {
		int pair[2];

		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair)) {
			snprintf(err, errlen, "socketpair: %s", strerror(errno));
			goto fail;
		}
		up->socks[w] = pair[0];
		theirs[w] = pair[1];
	}
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp)) {
		snprintf(err, errlen, "socketpair: %s", strerror(errno));
		goto fail;
	}
	*of = (struct offer){ .magic = OFFER_MAGIC, .version = UPGRADE_PROTOCOL, .workers = o->workers, .max_tunnels = o->cfg->max_tunnels,
			      .tunnel_buffer = o->cfg->tunnel_buffer, .n_listen_fds = (uint32_t)o->n_listen_fds,
			      .n_engine_fds = (uint32_t)o->n_engine_fds, .n_guard_fds = (uint32_t)o->n_guard_fds,
			      .guard_made_bpffs = o->guard_made_bpffs };
	snprintf(of->engine, sizeof(of->engine), "%s", o->engine);
	snprintf(of->bpffs, sizeof(of->bpffs), "%s", o->cfg->bpffs);
	listeners_text(o->cfg, of->listeners, sizeof(of->listeners));
	/* All of it is queued before the new process runs: a socket's buffer
	 * holds a few hundred descriptors' worth of messages. */
	if (fdpass_send(sp[0], of, sizeof(*of), NULL, 0) || send_fds(sp[0], o->listen_fds, o->n_listen_fds) ||
	    send_fds(sp[0], o->engine_fds, o->n_engine_fds) || send_fds(sp[0], o->guard_fds, o->n_guard_fds) ||
	    send_fds(sp[0], theirs, o->workers)) {
		snprintf(err, errlen, "cannot pass the sockets on: %s", strerror(errno));
		goto fail;
	}
	up->pid = fork();
	if (up->pid < 0) {
		snprintf(err, errlen, "fork: %s", strerror(errno));
		goto fail;
	}
	if (up->pid == 0) {
		char num[16];
		sigset_t none;

		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		fcntl(sp[1], F_SETFD, 0);
		snprintf(num, sizeof(num), "%d", sp[1]);
		setenv(UPGRADE_ENV, num, 1);
		execv(exe, saved_argv);
		fprintf(stderr, "wsplice: upgrade: cannot run %s: %s\n", exe, strerror(errno));
		_exit(127);
	}
	close(sp[1]);
	close_all(theirs, o->workers);
	free(theirs);
	free(of);
	up->h.fd = sp[0];
	up->h.on_event = on_answer;
	ev_watch(loop, &up->h, EPOLLIN);
	up->timer.on_event = on_timeout;
	up->timer.fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (up->timer.fd >= 0 &&
	    (timerfd_settime(up->timer.fd, 0, &(struct itimerspec){ .it_value = { UPGRADE_ANSWER_S, 0 } }, NULL) ||
	     ev_watch(loop, &up->timer, EPOLLIN)))
		log_warn("upgrade: no time limit on the new process's answer: %s", strerror(errno));
	log_info("upgrade: started %s (pid %d)", exe, (int)up->pid);
	return up;
fail:
	if (sp[0] >= 0)
		close(sp[0]);
	if (sp[1] >= 0)
		close(sp[1]);
	if (up && up->socks)
		close_all(up->socks, o->workers);
	if (theirs)
		close_all(theirs, o->workers);
	free(theirs);
	free(of);
	if (up)
		free(up->socks);
	free(up);
	return NULL;
}

void upgrade_forget(struct upgrade *up)
{
	if (!up)
		return;
	if (up->timer.fd >= 0)
		close(up->timer.fd);
	if (up->h.fd >= 0)
		close(up->h.fd);
	close_all(up->socks, up->workers);
	free(up->socks);
	free(up);
}

void upgrade_free(struct upgrade *up)
{
	int status;

	if (!up)
		return;
	/* A new process that did not answer yet adopted what this one is
	 * about to tear down: it goes first. */
	if (!up->ready && up->pid > 0) {
		kill(up->pid, SIGKILL);
		waitpid(up->pid, &status, 0);
		log_info("upgrade: stopping, so the new process (pid %d) was stopped too", (int)up->pid);
	}
	stop_timer(up);
	if (up->h.fd >= 0) {
		ev_watch(up->loop, &up->h, 0);
		close(up->h.fd);
	}
	close_all(up->socks, up->workers);
	free(up->socks);
	free(up);
}

void upgrade_servers_free(struct upgrade *up)
{
	if (up && up->h.fd >= 0 && fdpass_send(up->h.fd, "servers", 7, NULL, 0))
		log_warn("upgrade: cannot tell the new process the control socket is free: %s", strerror(errno));
}

bool upgrade_running(const struct upgrade *up)
{
	return up && up->h.fd >= 0;
}

/* The new process's side. */

static int recv_fds(int sock, int *fds, size_t n)
{
	size_t got = 0;

	while (got < n) {
		char c;
		size_t k;

		if (fdpass_recv(sock, &c, 1, fds + got, n - got, &k) != 1 || !k)
			return -1;
		got += k;
	}
	return 0;
}

void upgrade_arrival_open(struct upgrade_arrival *ua)
{
	const char *env = getenv(UPGRADE_ENV);

	memset(ua, 0, sizeof(*ua));
	ua->sock = env ? atoi(env) : -1;
	if (ua->sock <= 2 || fcntl(ua->sock, F_SETFD, FD_CLOEXEC))
		ua->sock = -1;
	unsetenv(UPGRADE_ENV);
}

int upgrade_receive(struct upgrade_arrival *ua, const struct config *cfg, char *why, size_t whylen)
{
	struct offer *of;
	char mine[sizeof(of->listeners)];
	size_t nfds;
	int rc = -1;

	if (ua->sock < 0)
		return 0;
	of = calloc(1, sizeof(*of));
	if (!of || fdpass_recv(ua->sock, of, sizeof(*of), NULL, 0, &nfds) != (ssize_t)sizeof(*of) ||
	    of->magic != OFFER_MAGIC || of->version != UPGRADE_PROTOCOL) {
		snprintf(why, whylen, "the old process speaks another upgrade protocol (%u, this one %u): a restart "
				      "applies this binary", of->magic == OFFER_MAGIC ? of->version : 0, UPGRADE_PROTOCOL);
		goto out;
	}
	of->bpffs[sizeof(of->bpffs) - 1] = '\0';
	if (strcmp(of->bpffs, cfg->bpffs)) {
		snprintf(why, whylen, "bpffs %s, where the running one is %s: a restart applies that", cfg->bpffs,
			 of->bpffs);
		goto out;
	}
	listeners_text(cfg, mine, sizeof(mine));
	if (of->workers != cfg->workers || of->max_tunnels != cfg->max_tunnels ||
	    of->tunnel_buffer != cfg->tunnel_buffer) {
		snprintf(why, whylen,
			 "the running workers, max_tunnels and tunnel_buffer (%u, %u, %llu) differ from the new "
			 "configuration's (%u, %u, %llu): a restart applies those",
			 of->workers, of->max_tunnels, (unsigned long long)of->tunnel_buffer, cfg->workers,
			 cfg->max_tunnels, (unsigned long long)cfg->tunnel_buffer);
		goto out;
	}
	if (strcmp(mine, of->listeners)) {
		snprintf(why, whylen, "the listeners differ from the running ones: a restart applies that");
		goto out;
	}
	of->engine[sizeof(of->engine) - 1] = '\0';
	if (cfg->mode != MODE_AUTO && strcmp(mode_name(cfg->mode), of->engine)) {
		snprintf(why, whylen, "mode %s, where the running engine is %s: a restart applies that",
			 mode_name(cfg->mode), of->engine);
		goto out;
	}
	snprintf(ua->engine, sizeof(ua->engine), "%s", of->engine);
	ua->n_listen_fds = of->n_listen_fds;
	ua->n_engine_fds = of->n_engine_fds;
	ua->n_guard_fds = of->n_guard_fds;
	ua->guard_made_bpffs = of->guard_made_bpffs != 0;
	ua->n_worker_socks = of->workers;
	ua->listen_fds = calloc(ua->n_listen_fds + 1, sizeof(int));
	ua->engine_fds = calloc(ua->n_engine_fds + 1, sizeof(int));
	ua->guard_fds = calloc(ua->n_guard_fds + 1, sizeof(int));
	ua->worker_socks = calloc(ua->n_worker_socks + 1, sizeof(int));
	if (!ua->listen_fds || !ua->engine_fds || !ua->guard_fds || !ua->worker_socks ||
	    recv_fds(ua->sock, ua->listen_fds, ua->n_listen_fds) ||
	    recv_fds(ua->sock, ua->engine_fds, ua->n_engine_fds) ||
	    recv_fds(ua->sock, ua->guard_fds, ua->n_guard_fds) ||
	    recv_fds(ua->sock, ua->worker_socks, ua->n_worker_socks)) {
		snprintf(why, whylen, "the old process's sockets did not come: %s", strerror(errno));
		goto out;
	}
	rc = 0;
out:
	free(of);
	return rc;
}

void upgrade_answer(struct upgrade_arrival *ua, const char *failure)
{
	const char *msg = failure ? failure : "ready";

	if (ua->sock < 0 || ua->answered)
		return;
	ua->answered = true;
	if (fdpass_send(ua->sock, msg, strlen(msg), NULL, 0))
		log_error("upgrade: cannot answer the old process: %s", strerror(errno));
}
