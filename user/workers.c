/* The master's side of the worker processes, and the channel a worker
 * answers the master's requests on. The master serves no connection: it
 * holds the data plane, the listening sockets (so a worker started again
 * takes over its predecessor's queue, and nothing is refused meanwhile),
 * the metrics and control sockets, and the signals. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "shared.h"
#include "workers.h"

#define CHANNEL_TIMEOUT_MS 5000
#define START_TIMEOUT_MS 30000
#define RESPAWNS_PER_MINUTE 10

struct worker {
	pid_t pid;   /* 0: not running */
	int channel; /* the master's end; -1 when none */
};

struct workers {
	uint32_t n;
	struct worker w[WORKERS_MAX];
	worker_main_fn run;
	worker_forget_fn forget;
	void *ctx;
	bool stopping;
	uint64_t window_ms; /* the minute respawns are counted in */
	unsigned respawns;
};

/* Reads exactly len bytes, each wait bounded: a worker stuck for
 * CHANNEL_TIMEOUT_MS is left out of the answer rather than hang the master. */
static int read_full(int fd, void *p, size_t len, int timeout_ms)
{
	size_t got = 0;

	while (got < len) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&pfd, 1, timeout_ms) <= 0)
			return -1;
		n = read(fd, (char *)p + got, len - got);
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

static int write_full(int fd, const void *p, size_t len)
{
	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p = (const char *)p + n;
		len -= (size_t)n;
	}
	return 0;
}

static int spawn(struct workers *ws, uint32_t i, char *err, size_t errlen)
{
	pid_t master = getpid(), pid;
	char ready;
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
		snprintf(err, errlen, "worker %u: socketpair: %s", i, strerror(errno));
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		snprintf(err, errlen, "worker %u: fork: %s", i, strerror(errno));
		close(sv[0]);
		close(sv[1]);
		return -1;
	}
	if (!pid) {
		close(sv[0]);
		for (uint32_t j = 0; j < ws->n; j++)
			if (ws->w[j].channel >= 0)
				close(ws->w[j].channel);
		/* A master that is killed takes its workers along; the master
		 * alone tells systemd (NotifyAccess=main). */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != master)
			exit(1);
		unsetenv("NOTIFY_SOCKET");
		shared_set_worker(i);
		ws->forget(ws->ctx);
		exit(ws->run(ws->ctx, i, sv[1]));
	}
	close(sv[1]);
	ws->w[i].pid = pid;
	ws->w[i].channel = sv[0];
	/* Serving, or it said why not on stderr and exited. */
	if (read_full(sv[0], &ready, 1, START_TIMEOUT_MS) || ready != 'R') {
		snprintf(err, errlen, "worker %u (pid %d) did not start", i, (int)pid);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		close(sv[0]);
		ws->w[i] = (struct worker){ 0, -1 };
		return -1;
	}
	return 0;
}

struct workers *workers_start(uint32_t n, worker_main_fn run, worker_forget_fn forget, void *ctx, char *err,
			      size_t errlen)
{
	struct workers *ws = calloc(1, sizeof(*ws));

	if (!ws) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	ws->n = n > WORKERS_MAX ? WORKERS_MAX : n;
	ws->run = run;
	ws->forget = forget;
	ws->ctx = ctx;
	for (uint32_t i = 0; i < ws->n; i++)
		ws->w[i] = (struct worker){ 0, -1 };
	for (uint32_t i = 0; i < ws->n; i++)
		if (spawn(ws, i, err, errlen)) {
			workers_stop(ws, 5000); /* frees ws */
			return NULL;
		}
	return ws;
}

uint32_t workers_count(const struct workers *ws)
{
	return ws->n;
}

void workers_signal(struct workers *ws, int sig)
{
	for (uint32_t i = 0; i < ws->n; i++)
		if (ws->w[i].pid)
			kill(ws->w[i].pid, sig);
}

void workers_tell(struct workers *ws, const char *request)
{
	char line[64];

	snprintf(line, sizeof(line), "%s\n", request);
	for (uint32_t i = 0; i < ws->n; i++)
		if (ws->w[i].channel >= 0 && write_full(ws->w[i].channel, line, strlen(line)))
			log_warn("worker %u: cannot pass on '%s': %s", i, request, strerror(errno));
}

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The worker that was pid: its slot is free again. */
static int forget_pid(struct workers *ws, pid_t pid)
{
	for (uint32_t i = 0; i < ws->n; i++)
		if (ws->w[i].pid == pid) {
			ws->w[i].pid = 0;
			if (ws->w[i].channel >= 0)
				close(ws->w[i].channel);
			ws->w[i].channel = -1;
			return (int)i;
		}
	return -1;
}

void workers_reap(struct workers *ws)
{
	char err[256];
	pid_t pid;
	int status;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		int i = forget_pid(ws, pid);

		if (i < 0)
			continue;
		/* What it held is gone with it: its tunnels and its slots. */
		shared_worker_gone((uint32_t)i);
		metrics_worker_gone((uint32_t)i);
		if (ws->stopping)
			continue;
		/* A clean exit is a worker that was told to stop (systemd's
		 * SIGTERM reaches every process of the unit; Ctrl-C the whole
		 * process group): the master's own signal follows. */
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
			log_info("worker %d (pid %d) stopped", i, (int)pid);
			continue;
		}
		if (WIFSIGNALED(status))
			log_error("worker %d (pid %d) was killed by signal %s: its tunnels are gone", i, (int)pid,
				  strsignal(WTERMSIG(status)));
		else
			log_error("worker %d (pid %d) exited with status %d: its tunnels are gone", i, (int)pid,
				  WEXITSTATUS(status));
		if (mono_ms() - ws->window_ms > 60000) {
			ws->window_ms = mono_ms();
			ws->respawns = 0;
		}
		if (++ws->respawns > RESPAWNS_PER_MINUTE) {
			log_error("worker %d: more than %d workers died this minute: not starting it again", i,
				  RESPAWNS_PER_MINUTE);
			continue;
		}
		if (spawn(ws, (uint32_t)i, err, sizeof(err)))
			log_error("%s", err);
		else
			log_info("worker %d started again (pid %d)", i, (int)ws->w[i].pid);
	}
}

void workers_stop(struct workers *ws, int timeout_ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
	bool left = true;

	if (!ws)
		return;
	ws->stopping = true;
	/* The end of its channel stops a worker: no signal, which a master
	 * without CAP_KILL could not send to workers running as a user. */
	for (uint32_t i = 0; i < ws->n; i++)
		if (ws->w[i].channel >= 0)
			shutdown(ws->w[i].channel, SHUT_WR);
	while (left) {
		pid_t pid = waitpid(-1, NULL, WNOHANG);

		if (pid > 0) {
			forget_pid(ws, pid);
			continue;
		}
		left = false;
		for (uint32_t i = 0; i < ws->n; i++)
			left |= ws->w[i].pid != 0;
		if (!left || pid < 0)
			break;
		if (mono_ms() > deadline && deadline != UINT64_MAX) {
			log_error("workers did not stop within %d ms: killing them", timeout_ms);
			workers_signal(ws, SIGKILL);
			deadline = mono_ms() + 1000;
		} else if (mono_ms() > deadline) {
			break; /* not ours to kill (a user's, and no CAP_KILL): their parent-death signal ends them */
		}
		poll(NULL, 0, 10);
	}
	for (uint32_t i = 0; i < ws->n; i++)
		if (ws->w[i].channel >= 0)
			close(ws->w[i].channel);
	free(ws);
}

/* One worker's answer to request; malloc'd, NULL when it gave none. */
static char *ask(struct worker *w, const char *request, size_t *len)
{
	uint64_t n;
	char *text;

	if (w->channel < 0 || write_full(w->channel, request, strlen(request)) || read_full(w->channel, &n, sizeof(n), CHANNEL_TIMEOUT_MS) ||
	    n > (1ull << 32) || !(text = malloc(n + 1)))
		return NULL;
	if (read_full(w->channel, text, n, CHANNEL_TIMEOUT_MS)) {
		free(text);
		return NULL;
	}
	text[n] = '\0';
	*len = n;
	return text;
}

/* The workers' tables under one header; their JSON arrays in one array. */
void workers_conns(struct workers *ws, FILE *out, bool json)
{
	bool header = false, any = false;

	if (json)
		fputs("{\"tunnels\":[", out);
	for (uint32_t i = 0; i < ws->n; i++) {
		size_t len = 0;
		char *text = ask(&ws->w[i], json ? "conns json\n" : "conns\n", &len);
		const char *from, *to;

		if (!text) {
			if (ws->w[i].pid)
				log_warn("worker %u did not answer conns within %d ms", i, CHANNEL_TIMEOUT_MS);
			continue;
		}
		if (json) {
			from = strchr(text, '[');
			to = strrchr(text, ']');
			if (from && to && to > from + 1) {
				fprintf(out, "%s%.*s", any ? "," : "", (int)(to - from - 1), from + 1);
				any = true;
			}
		} else {
			from = header ? strchr(text, '\n') : text;
			if (from)
				fputs(header ? from + 1 : from, out);
			header = true;
		}
		free(text);
	}
	if (json)
		fputs("]}\n", out);
}

struct worker_channel {
	struct ev_loop *loop;
	struct ev_handler h;
	channel_fn on_request;
	void *ctx;
	char in[256];
	size_t len;
};

/* One request: its answer, when it has one, is its length (8 bytes) and
 * its text, written before the loop goes on (the master reads it at once). */
static void serve_request(struct worker_channel *ch, const char *req)
{
	char *text = NULL;
	size_t len = 0;
	bool answer;
	FILE *f = open_memstream(&text, &len);
	uint64_t n64;

	if (!f)
		return;
	answer = ch->on_request(ch->ctx, req, f);
	if (ferror(f) | fclose(f))
		len = 0;
	n64 = text ? len : 0;
	if (answer && write_full(ch->h.fd, &n64, sizeof(n64)) == 0 && n64)
		write_full(ch->h.fd, text, len);
	free(text);
}

static void on_channel(struct ev_handler *h, uint32_t events)
{
	struct worker_channel *ch = container_of(h, struct worker_channel, h);
	ssize_t n;
	char *nl;

	(void)events;
	n = recv(h->fd, ch->in + ch->len, sizeof(ch->in) - 1 - ch->len, MSG_DONTWAIT);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
		/* The master closed its end: stop (or it is gone). */
		ev_watch(ch->loop, h, 0);
		ch->on_request(ch->ctx, "stop", NULL);
		return;
	}
	if (n < 0)
		return;
	ch->len += (size_t)n;
	ch->in[ch->len] = '\0';
	while ((nl = strchr(ch->in, '\n'))) {
		*nl = '\0';
		serve_request(ch, ch->in);
		ch->len -= (size_t)(nl + 1 - ch->in);
		memmove(ch->in, nl + 1, ch->len + 1);
	}
	if (ch->len == sizeof(ch->in) - 1)
		ch->len = 0; /* no line: not the master's */
}

struct worker_channel *worker_channel_open(struct ev_loop *loop, int fd, channel_fn on_request, void *ctx)
{
	struct worker_channel *ch = calloc(1, sizeof(*ch));

	if (!ch)
		return NULL;
	ch->loop = loop;
	ch->on_request = on_request;
	ch->ctx = ctx;
	ch->h.fd = fd;
	ch->h.on_event = on_channel;
	if (ev_watch(loop, &ch->h, EPOLLIN)) {
		free(ch);
		return NULL;
	}
	return ch;
}

void worker_channel_close(struct worker_channel *ch)
{
	if (!ch)
		return;
	ev_watch(ch->loop, &ch->h, 0);
	close(ch->h.fd);
	free(ch);
}
