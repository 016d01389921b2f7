/* The control socket's daemon and client sides. The daemon answers from
 * the event loop with what it holds: the tunnel list comes from tunnel.c
 * (each engine's byte counts, the sockmap's read from its BPF map). */
#include <errno.h>
#include <signal.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "control.h"
#include "event_loop.h"
#include "json_out.h"
#include "log.h"
#include "metrics.h"
#include "tunnel.h"
#include "workers.h"

void control_default_path(const char *bpffs, char *out, size_t len)
{
	const char *base = strrchr(bpffs, '/');

	base = base && base[1] ? base + 1 : "wsplice";
	snprintf(out, len, "/run/wsplice/%s.sock", base);
}

static int unix_addr(const char *path, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa->sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(sa->sun_path, path, strlen(path));
	return 0;
}

static int64_t tunnels_open(void)
{
	return metrics_value(M_ACTIVE_SOCKMAP) + metrics_value(M_ACTIVE_SPLICE) + metrics_value(M_ACTIVE_COPY) +
	       metrics_value(M_ACTIVE_TCSPLICE);
}

/* Every figure here is the daemon's: the workers count into shared memory. */
static void status_text(struct proxy *px, FILE *f, bool json)
{
	const struct config *cfg = px->cfg;
	double up = (ev_now_ms() - px->started_ms) / 1000.0;

	if (json) {
		fprintf(f, "{\"version\":\"%s\",\"pid\":%d,\"uptime_seconds\":%.3f,\"engine\":\"%s\",\"workers\":%u,",
			WSPLICE_VERSION, (int)getpid(), up, px->engine, px->n_workers);
		fputs("\"configuration\":", f);
		json_string(f, cfg->path[0] ? cfg->path : "");
		fprintf(f, ",\"generation\":%u,\"listeners\":[", px->generation);
		for (size_t i = 0; i < cfg->n_listeners; i++) {
			fputs(i ? ",{\"name\":" : "{\"name\":", f);
			json_string(f, cfg->listeners[i].name);
			fprintf(f, strchr(cfg->listeners[i].ep.host, ':') ? ",\"address\":\"[%s]:%s\"}" : ",\"address\":\"%s:%s\"}",
				cfg->listeners[i].ep.host, cfg->listeners[i].ep.port);
		}
		fprintf(f, "],\"sessions_open\":%lld,\"tunnels_open\":%lld,\"tunnels_by_engine\":{\"sockmap\":%lld,"
			   "\"splice\":%lld,\"copy\":%lld,\"tcsplice\":%lld},\"express_handovers\":%lld}\n",
			(long long)metrics_value(M_SESSIONS_OPEN), (long long)tunnels_open(),
			(long long)metrics_value(M_ACTIVE_SOCKMAP), (long long)metrics_value(M_ACTIVE_SPLICE),
			(long long)metrics_value(M_ACTIVE_COPY), (long long)metrics_value(M_ACTIVE_TCSPLICE),
			(long long)metrics_value(M_EXPRESS_HANDOVERS));
		return;
	}
	fprintf(f, "wsplice %s, pid %d, up %.1f s\nengine: %s\nworkers: %u\n", WSPLICE_VERSION, (int)getpid(), up,
		px->engine, px->n_workers);
	fprintf(f, "configuration: %s, generation %u\n", cfg->path[0] ? cfg->path : "(command line)", px->generation);
	for (size_t i = 0; i < cfg->n_listeners; i++)
		fprintf(f, "listener %s: %s:%s\n", cfg->listeners[i].name, cfg->listeners[i].ep.host,
			cfg->listeners[i].ep.port);
	fprintf(f, "sessions open: %lld\ntunnels open: %lld (sockmap %lld, splice %lld, copy %lld, tcsplice %lld)\n",
		(long long)metrics_value(M_SESSIONS_OPEN), (long long)tunnels_open(),
		(long long)metrics_value(M_ACTIVE_SOCKMAP), (long long)metrics_value(M_ACTIVE_SPLICE),
		(long long)metrics_value(M_ACTIVE_COPY), (long long)metrics_value(M_ACTIVE_TCSPLICE));
}

static int answer(void *ctx, const char *in, size_t len, bool full, char **out, size_t *out_len)
{
	struct proxy *px = ctx;
	const char *nl = memchr(in, '\n', len);
	char req[64];
	bool json;
	FILE *f;

	if (!nl)
		return full ? (*out = NULL, 1) : 0;
	snprintf(req, sizeof(req), "%.*s", (int)(nl - in), in);
	json = strlen(req) > 5 && !strcmp(req + strlen(req) - 5, " json");
	if (json)
		req[strlen(req) - 5] = '\0';
	f = open_memstream(out, out_len);
	if (!f) {
		*out = NULL;
		return 1;
	}
	if (!strcmp(req, "status"))
		status_text(px, f, json);
	else if (!strcmp(req, "conns"))
		px->workers ? workers_conns(px->workers, f, json) : tunnel_list(px->tunnels, f, json);
	else if (!strcmp(req, "upgrade")) { /* the signal's path: one way to start it */
		int failed = kill(getpid(), SIGUSR2);

		fprintf(f, failed ? "error: %s\n" : "upgrade: started; this daemon's log says how it ends\n",
			failed ? strerror(errno) : "");
	}
	else
		fprintf(f, "error: unknown request '%s' (status, conns or upgrade)\n", req);
	if (ferror(f) | fclose(f)) {
		free(*out);
		*out = NULL;
	}
	return 1;
}

/* The socket this process bound, so it removes its own file only. */
static struct stat bound;

/* A socket file left by a daemon that was killed is removed; one that
 * answers (or whose queue is full: a busy daemon) belongs to a running
 * daemon; anything that is not a socket is never touched. */
static int claim(const char *path, const struct sockaddr_un *sa, char *err, size_t errlen)
{
	char dir[sizeof(sa->sun_path)];
	struct stat st;
	int fd, r, e;

	snprintf(dir, sizeof(dir), "%s", path);
	if (mkdir(dirname(dir), 0755) && errno != EEXIST) {
		snprintf(err, errlen, "control socket %s: cannot make its directory: %s", path, strerror(errno));
		return -1;
	}
	if (lstat(path, &st))
		return 0;
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "control socket %s: something that is not a socket is there", path);
		return -1;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	r = fd >= 0 ? connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) : -1;
	e = errno;
	if (fd >= 0)
		close(fd);
	if (r == 0 || e == EAGAIN) {
		snprintf(err, errlen, "control socket %s is in use by another wsplice (choose another --control)", path);
		return -1;
	}
	unlink(path);
	return 0;
}

struct reply_server *control_open(struct proxy *px, const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sa;
	struct reply_server *rs;
	int fd, r = -1;

	if (unix_addr(path, &sa)) {
		snprintf(err, errlen, "control socket %s: path too long", path);
		return NULL;
	}
	if (claim(path, &sa, err, errlen))
		return NULL;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd >= 0) {
		/* Made 0600 by bind itself: no moment when others may connect. */
		mode_t mask = umask(0177);

		r = bind(fd, (const struct sockaddr *)&sa, sizeof(sa));
		umask(mask);
	}
	if (fd < 0 || r) {
		snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	if (lstat(path, &bound) || listen(fd, 16)) {
		snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
		close(fd);
		unlink(path);
		return NULL;
	}
	rs = reply_server_open(px->loop, fd, answer, px);
	if (!rs) {
		snprintf(err, errlen, "control socket %s: out of memory", path);
		close(fd);
		unlink(path);
	}
	return rs;
}

void control_unlink(const char *path)
{
	struct stat st;

	/* Only the file this process made: another daemon may own the path now. */
	if (!lstat(path, &st) && st.st_dev == bound.st_dev && st.st_ino == bound.st_ino)
		unlink(path);
}

int control_client(const char *path, const char *request)
{
	struct sockaddr_un sa;
	char buf[65536];
	ssize_t n;
	int fd;

	if (unix_addr(path, &sa)) {
		fprintf(stderr, "wsplice: control socket %s: path too long\n", path);
		return 1;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (const struct sockaddr *)&sa, sizeof(sa))) {
		fprintf(stderr, "wsplice: no daemon answers on %s: %s (is it running, with this --bpffs or --control?)\n",
			path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return 1;
	}
	snprintf(buf, sizeof(buf), "%s\n", request);
	if (write(fd, buf, strlen(buf)) < 0) {
		fprintf(stderr, "wsplice: %s: %s\n", path, strerror(errno));
		close(fd);
		return 1;
	}
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, n, stdout);
	close(fd);
	return n < 0 ? 1 : 0;
}
