/* The master's side of the worker processes, and the channel a worker
 * answers the master's requests on. The master serves no connection: it
 * holds the data plane, the listening sockets (so a worker started again
 * takes over its predecessor's queue, and nothing is refused meanwhile),
 * the metrics and control sockets, and the signals. It talks to a worker
 * only through its channel: a master without CAP_KILL cannot signal
 * workers that run as a user. */
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
	worker_gone_fn gone;
	void *ctx;
	bool stopping;
	uint64_t seq;       /* of the last request that wants an answer */
	uint64_t window_ms; /* the minute respawns are counted in */
	unsigned respawns;
};

/* The master, as a worker knows it. */
static pid_t master_pid;

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Reads exactly len bytes, each wait bounded: a worker stuck for
 * timeout_ms is left out of the answer rather than hang the master. */
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

/* A request line, with fd (or -1) riding along (SCM_RIGHTS). */
static int send_request(int channel, const char *line, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec iov = { .iov_base = (void *)line, .iov_len = strlen(line) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (fd >= 0) {
		struct cmsghdr *c;

		msg.msg_control = cbuf;
		msg.msg_controllen = sizeof(cbuf);
		c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	/* One short line: a stream socket takes it whole or not at all. */
	return sendmsg(channel, &msg, MSG_NOSIGNAL) == (ssize_t)iov.iov_len ? 0 : -1;
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
		master_pid = master;
		shared_set_worker(i);
		/* A master that is killed takes its workers along; the master
		 * alone tells systemd (NotifyAccess=main). */
		if (workers_parent_death())
			exit(1);
		unsetenv("NOTIFY_SOCKET");
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

int workers_parent_death(void)
{
	return prctl(PR_SET_PDEATHSIG, SIGTERM) || getppid() != master_pid ? -1 : 0;
}

struct workers *workers_start(uint32_t n, worker_main_fn run, worker_forget_fn forget, worker_gone_fn gone,
			      void *ctx, char *err, size_t errlen)
{
	struct workers *ws = calloc(1, sizeof(*ws));

	if (!ws) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	ws->n = n > WORKERS_MAX ? WORKERS_MAX : n;
	ws->run = run;
	ws->forget = forget;
	ws->gone = gone;
	ws->ctx = ctx;
	for (uint32_t i = 0; i < ws->n; i++)
		ws->w[i] = (struct worker){ 0, -1 };
	for (uint32_t i = 0; i < ws->n; i++)
		if (spawn(ws, i, err, errlen)) {
			workers_stop(ws, 5000, NULL); /* frees ws */
			return NULL;
		}
	return ws;
}

uint32_t workers_count(const struct workers *ws)
{
	return ws->n;
}

void workers_tell(struct workers *ws, const char *request, int fd)
{
	char line[64];

	snprintf(line, sizeof(line), "%s\n", request);
	for (uint32_t i = 0; i < ws->n; i++)
		if (ws->w[i].channel >= 0 && send_request(ws->w[i].channel, line, fd))
			log_warn("worker %u: cannot pass on '%s': %s", i, request, strerror(errno));
}

void workers_hand_over(struct workers *ws, const char *request, const int *fds)
{
	char line[64];

	ws->stopping = true; /* they end when their tunnels have left: none is started again */
	snprintf(line, sizeof(line), "%s\n", request);
	for (uint32_t i = 0; i < ws->n; i++)
		if (ws->w[i].channel >= 0 && send_request(ws->w[i].channel, line, fds[i]))
			log_warn("worker %u: cannot pass on '%s': %s", i, request, strerror(errno));
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

/* systemd's SIGTERM reaches every process of the unit, and Ctrl-C the
 * whole process group: a worker that stopped cleanly while the master's
 * own stop signal waits is not started again. */
static bool stop_pending(void)
{
	sigset_t pending;

	return !sigpending(&pending) && (sigismember(&pending, SIGTERM) || sigismember(&pending, SIGINT));
}

void workers_reap(struct workers *ws)
{
	char err[256];
	pid_t pid;
	int status;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		int i = forget_pid(ws, pid);
		bool again;

		if (i < 0)
			continue;
		/* What it held is gone with it: its tunnels, slots and gauges. */
		shared_worker_gone((uint32_t)i);
		metrics_worker_gone((uint32_t)i);
		ws->gone(ws->ctx, (uint32_t)i, false);
		if (ws->stopping || stop_pending())
			continue;
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
		again = ++ws->respawns <= RESPAWNS_PER_MINUTE;
		if (!again)
			log_error("worker %d: more than %d workers died this minute: not starting it again", i,
				  RESPAWNS_PER_MINUTE);
		else if (spawn(ws, (uint32_t)i, err, sizeof(err)))
			log_error("%s: not starting it again", err);
		else
			log_info("worker %d started again (pid %d)", i, (int)ws->w[i].pid);
		/* Its listening sockets would queue connections nobody takes:
		 * closed, the kernel gives them to the other workers. */
		if (!ws->w[i].pid)
			ws->gone(ws->ctx, (uint32_t)i, true);
	}
}

void workers_stop(struct workers *ws, uint64_t timeout_ms, const sigset_t *again)
{
	uint64_t deadline = mono_ms() + timeout_ms;
	bool killed = false, told_now = false;

	if (!ws)
		return;
	ws->stopping = true;
	/* "stop": a worker drains (shutdown_timeout) or stops; a channel that
	 * cannot take it is ended, which stops the worker too. */
	for (uint32_t i = 0; i < ws->n; i++)
		if (ws->w[i].channel >= 0 && send_request(ws->w[i].channel, "stop\n", -1))
			shutdown(ws->w[i].channel, SHUT_WR);
	for (;;) {
		struct timespec tick = { 0, 10 * 1000000L };
		bool left = false;
		pid_t pid = waitpid(-1, NULL, WNOHANG);

		if (pid > 0) {
			forget_pid(ws, pid);
			continue;
		}
		for (uint32_t i = 0; i < ws->n; i++)
			left |= ws->w[i].pid != 0;
		if (!left || pid < 0)
			break;
		if (mono_ms() > deadline) {
			if (killed) /* not ours to kill (a user's, without CAP_KILL): their parent-death signal ends them */
				break;
			log_error("workers did not stop within %llu ms: killing them", (unsigned long long)timeout_ms);
			for (uint32_t i = 0; i < ws->n; i++)
				if (ws->w[i].pid)
					kill(ws->w[i].pid, SIGKILL);
			killed = true;
			deadline = mono_ms() + 1000;
		}
		/* A second stop signal to the master (Ctrl-C again): now. */
		if (!again) {
			poll(NULL, 0, 10);
		} else if (sigtimedwait(again, NULL, &tick) > 0 && !told_now) {
			log_info("stop signal again: the workers stop now");
			for (uint32_t i = 0; i < ws->n; i++)
				if (ws->w[i].channel >= 0)
					send_request(ws->w[i].channel, "now\n", -1);
			told_now = true;
		}
	}
	for (uint32_t i = 0; i < ws->n; i++)
		if (ws->w[i].channel >= 0)
			close(ws->w[i].channel);
	free(ws);
}

/* One worker's answer to the request numbered seq; malloc'd, NULL when it
 * gave none in time. Answers to earlier requests that came too late are
 * read and dropped first. */
static char *ask(struct worker *w, const char *request, uint64_t seq)
{
	char line[64];

	snprintf(line, sizeof(line), "%s %llu\n", request, (unsigned long long)seq);
	if (w->channel < 0 || send_request(w->channel, line, -1))
		return NULL;
	for (;;) {
		uint64_t head[2]; /* the length, the request's number */
		char *text;

		if (read_full(w->channel, head, sizeof(head), CHANNEL_TIMEOUT_MS) || head[0] > (1ull << 32) ||
		    !(text = malloc(head[0] + 1)))
			return NULL;
		if (read_full(w->channel, text, head[0], CHANNEL_TIMEOUT_MS)) {
			free(text);
			return NULL;
		}
		text[head[0]] = '\0';
		if (head[1] == seq)
			return text;
		free(text);
	}
}

/* The workers' tables under one header; their JSON arrays in one array. */
void workers_conns(struct workers *ws, FILE *out, bool json)
{
	bool header = false, any = false;

	if (json)
		fputs("{\"tunnels\":[", out);
	for (uint32_t i = 0; i < ws->n; i++) {
		char *text = ask(&ws->w[i], json ? "conns json" : "conns", ++ws->seq);
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
	int fd; /* the descriptor the next line came with, or -1 */
};

/* One request: "NAME [SEQ]". An answer is its length and SEQ (8 bytes
 * each) and its text, written before the loop goes on (the master reads
 * it at once). */
static void serve_request(struct worker_channel *ch, char *req)
{
	char *text = NULL, *sp = strrchr(req, ' ');
	size_t len = 0;
	uint64_t head[2] = { 0, 0 };
	bool answer;
	FILE *f;
	int fd = ch->fd;

	ch->fd = -1;
	if (sp && sp[1] >= '0' && sp[1] <= '9') {
		head[1] = strtoull(sp + 1, NULL, 10);
		*sp = '\0';
	}
	f = open_memstream(&text, &len);
	if (!f) {
		if (fd >= 0)
			close(fd);
		return;
	}
	answer = ch->on_request(ch->ctx, req, fd, f);
	if (ferror(f) | fclose(f))
		len = 0;
	head[0] = text ? len : 0;
	if (answer && write_full(ch->h.fd, head, sizeof(head)) == 0 && head[0])
		write_full(ch->h.fd, text, len);
	free(text);
}

static void on_channel(struct ev_handler *h, uint32_t events)
{
	struct worker_channel *ch = container_of(h, struct worker_channel, h);
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = ch->in + ch->len, .iov_len = sizeof(ch->in) - 1 - ch->len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c;
	ssize_t n;
	char *nl;

	(void)events;
	n = recvmsg(h->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
		/* The master closed its end: stop (or it is gone). */
		ev_watch(ch->loop, h, 0);
		ch->on_request(ch->ctx, "stop", -1, NULL);
		return;
	}
	if (n < 0)
		return;
	for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			if (ch->fd >= 0)
				close(ch->fd);
			memcpy(&ch->fd, CMSG_DATA(c), sizeof(int));
		}
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
	ch->fd = -1;
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
	if (ch->fd >= 0)
		close(ch->fd);
	free(ch);
}
