/* The tunnel lifecycle, whatever engine moves the bytes: start from the
 * session's hand-off, dispatch socket events and ticks to the engine, carry
 * out what it answers (interest, ticks, close, reset, fall back to the copy
 * relay), time tunnels out, and close both sockets at the end. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "access_log.h"
#include "engine.h"
#include "json_out.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"
#include "route.h"
#include "tunnel.h"

struct tunnel {
	TAILQ_ENTRY(tunnel) link;
	struct tunnel_set *ts;
	const struct engine_ops *eng;
	void *st;                /* the engine's */
	struct ev_handler ep[2]; /* [TUNNEL_END_CLIENT], [TUNNEL_END_UPSTREAM] */
	struct ev_ticker ticker;
	struct route_state *route_st;
	struct server_state *server_st;
	uint64_t serial;         /* for log lines */
	uint64_t next_check_ms;  /* when tunnel_timeouts reads the activity stamp next */
	uint64_t started_ms;     /* ev_now_ms() at the hand-off */
	/* Both peers' addresses, taken at the hand-off for the access log (a
	 * socket that was reset has none any more); NULL while it is off. */
	char (*peers)[INET6_ADDRSTRLEN + 9];
	bool closed, half_closed;
};

struct tunnel_set {
	TAILQ_HEAD(, tunnel) all;
	uint64_t count, serial, serial_step;
	struct ev_loop *loop;
	const struct engine_ops *eng; /* new tunnels start here */
	void *ctx[MODE_COUNT];        /* each open engine's context */
	bool running[MODE_COUNT];     /* the engines tunnels may start on */
	tunnel_transfer_fn leave;     /* an upgrade: tunnels go to the new process */
	void *leave_ctx;
};

/* tunnel_close's reset_end when no end saw an RST but both get one. */
#define RESET_BOTH 2

static void tunnel_close(struct tunnel *t, int reset_end, enum metric cause);
static void tunnel_switch(struct tunnel *t, const struct engine_ops *to);

int sock_error(int fd)
{
	int err = 0;
	socklen_t len = sizeof(err);

	getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
	return err;
}

/* The kernel stamps last_active with the coarse monotonic clock. */
uint64_t kernel_stamp_ms(uint64_t stamp_ns)
{
	struct timespec now;
	uint64_t age_ms, now_ns;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
	now_ns = (uint64_t)now.tv_sec * 1000000000ull + now.tv_nsec;
	/* The vDSO's coarse clock can trail the kernel's by a tick: a stamp
	 * "from the future" is activity just now, not 584 years ago. */
	if (stamp_ns >= now_ns)
		return ev_now_ms();
	age_ms = (now_ns - stamp_ns) / 1000000;
	return ev_now_ms() > age_ms ? ev_now_ms() - age_ms : 0;
}

static void *engine_ctx(const struct tunnel_set *ts, const struct engine_ops *eng)
{
	for (int m = 0; m < MODE_COUNT; m++)
		if (engine_table[m] == eng)
			return ts->ctx[m];
	return NULL;
}

static struct engine_io io_now(const struct tunnel *t)
{
	return (struct engine_io){
		.want = { t->ep[0].events, t->ep[1].events },
		.tick = t->ticker.active,
		.half_closed = t->half_closed,
		.verdict = ENGINE_RUN,
	};
}

/* Carries out what the engine answered. */
static void apply(struct tunnel *t, const struct engine_io *io)
{
	switch (io->verdict) {
	case ENGINE_RUN:
		break;
	case ENGINE_CLOSE:
		tunnel_close(t, -1, M_CLOSED_FIN);
		return;
	case ENGINE_RESET:
		tunnel_close(t, io->reset_end, M_CLOSED_RESET);
		return;
	case ENGINE_ABORT:
		tunnel_close(t, RESET_BOTH, M_CLOSED_ERROR);
		return;
	case ENGINE_FALLBACK:
		tunnel_switch(t, engine_fallback);
		return;
	}
	for (int e = 0; e < 2; e++)
		ev_watch(t->ts->loop, &t->ep[e], io->want[e]);
	if (io->tick && t->eng->tick)
		ev_ticker_start(t->ts->loop, &t->ticker);
	else
		ev_ticker_stop(t->ts->loop, &t->ticker);
	/* Half-closed: tunnel_fin_timeout applies from now, not at the next
	 * check the idle timeout scheduled. */
	if (io->half_closed && !t->half_closed)
		t->next_check_ms = 0;
	t->half_closed = io->half_closed;
}

static void on_end_event(struct ev_handler *h, uint32_t events)
{
	struct tunnel *t = h->owner;
	struct engine_io io;

	if (t->closed)
		return;
	io = io_now(t);
	t->eng->event(t->st, h == &t->ep[TUNNEL_END_CLIENT] ? TUNNEL_END_CLIENT : TUNNEL_END_UPSTREAM, events, &io);
	apply(t, &io);
}

static void on_tick(struct ev_ticker *tk)
{
	struct tunnel *t = container_of(tk, struct tunnel, ticker);
	struct engine_io io = io_now(t);

	if (t->closed || !t->eng->tick)
		return;
	t->eng->tick(t->st, &io);
	apply(t, &io);
}

/* An engine's asynchronous event for this tunnel: same as a tick. */
static void kick(void *owner)
{
	on_tick(&((struct tunnel *)owner)->ticker);
}

/* The engine could not carry the tunnel: it hands back what it holds and
 * the fallback engine starts from there. */
static void tunnel_switch(struct tunnel *t, const struct engine_ops *to)
{
	struct tunnel_handoff h = { .fd = { t->ep[0].fd, t->ep[1].fd } };
	struct engine_io io;

	log_debug("tunnel %llu: %s hands over to %s", (unsigned long long)t->serial, t->eng->name, to->name);
	t->eng->stop(t->st, &h);
	metrics_engine_tunnels(t->eng->name, -1);
	t->eng = to;
	io = io_now(t);
	io.tick = false; /* the new engine asks for its own */
	t->st = to->start(engine_ctx(t->ts, to), &h, t, &io);
	if (!t->st) {
		for (int d = 0; d < 2; d++)
			buf_release(&h.queue[d]);
		t->eng = NULL;
		tunnel_close(t, -1, M_CLOSED_ERROR);
		return;
	}
	metrics_engine_tunnels(to->name, 1);
	apply(t, &io);
}

/* "ip:port" or "[ip6]:port" of a socket's peer. */
static void peer_address(int fd, char *out, size_t len)
{
	struct sockaddr_storage a;
	socklen_t alen = sizeof(a);
	char ip[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	a.ss_family = AF_UNSPEC;
	if (getpeername(fd, (struct sockaddr *)&a, &alen) == 0) {
		if (a.ss_family == AF_INET6) {
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&a)->sin6_addr, ip, sizeof(ip));
			port = ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
		} else if (a.ss_family == AF_INET) {
			inet_ntop(AF_INET, &((struct sockaddr_in *)&a)->sin_addr, ip, sizeof(ip));
			port = ntohs(((struct sockaddr_in *)&a)->sin_port);
		}
	}
	snprintf(out, len, a.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, port);
}

static const char *cause_name(enum metric cause)
{
	switch (cause) {
	case M_CLOSED_FIN: return "fin";
	case M_CLOSED_RESET: return "reset";
	case M_CLOSED_IDLE_TIMEOUT: return "idle_timeout";
	case M_CLOSED_FIN_TIMEOUT: return "fin_timeout";
	case M_CLOSED_SHUTDOWN: return "shutdown";
	default: return "error";
	}
}

/* The tunnel's access log line, while its engine still holds its counts. */
static void log_close(struct tunnel *t, enum metric cause)
{
	struct tunnel_stats st = { 0 };

	if (!t->peers)
		return;
	if (t->eng)
		t->eng->stats(t->st, &st);
	access_log_tunnel(&(struct access_tunnel){
		.id = t->serial,
		.client = t->peers[TUNNEL_END_CLIENT],
		.upstream = t->peers[TUNNEL_END_UPSTREAM],
		.engine = t->eng ? t->eng->name : "-",
		.cause = cause_name(cause),
		.duration_ms = (double)(ev_now_ms() - t->started_ms),
		.bytes_c2u = st.bytes[WS_DIR_C2U],
		.bytes_u2c = st.bytes[WS_DIR_U2C],
	});
}

static void tunnel_close(struct tunnel *t, int reset_end, enum metric cause)
{
	struct tunnel_set *ts = t->ts;

	if (t->closed)
		return;
	t->closed = true;
	metrics_inc(cause);
	log_close(t, cause);
	free(t->peers);
	t->peers = NULL;
	ev_ticker_stop(ts->loop, &t->ticker);
	/* While both sockets are open: the sockmap takes them out of its maps. */
	if (t->eng) {
		if (cause == M_CLOSED_SHUTDOWN && t->eng->going_away)
			t->eng->going_away(t->st);
		t->eng->stop(t->st, NULL);
		metrics_engine_tunnels(t->eng->name, -1);
	}
	for (int e = 0; e < 2; e++) {
		if (reset_end >= 0 && e != reset_end) {
			/* Pass the reset on: close with an RST, not a FIN. */
			struct linger lg = { .l_onoff = 1, .l_linger = 0 };

			setsockopt(t->ep[e].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		}
		ev_watch(ts->loop, &t->ep[e], 0);
		close(t->ep[e].fd);
	}
	route_tunnel_done(t->route_st);
	pool_server_done(t->server_st);
	ts->count--;
	TAILQ_REMOVE(&ts->all, t, link);
	log_debug("tunnel %llu (%s) closed%s", (unsigned long long)t->serial, t->eng ? t->eng->name : "-",
		  reset_end >= 0 ? " by reset" : "");
	/* Freed after the batch: another event of it may name this tunnel. */
	ev_defer(ts->loop, free, t);
}

/* Where a new tunnel of a route with this mode starts. */
static const struct engine_ops *engine_for(const struct tunnel_set *ts, enum tunnel_mode mode)
{
	return mode != MODE_AUTO && mode < MODE_COUNT && ts->running[mode] ? engine_table[mode] : ts->eng;
}

/* The transfer's names of what the tunnel counts against. */
static void transfer_names(struct tunnel_transfer *x, const struct route_state *rs, const struct server_state *ss)
{
	snprintf(x->route, sizeof(x->route), "%s", rs ? rs->name : "");
	snprintf(x->server, sizeof(x->server), "%s", ss ? ss->key : "");
}

/* An upgrade: the tunnel leaves this process with what its engine keeps;
 * its sockets, not closed here, go with it. */
static void tunnel_leave(struct tunnel *t)
{
	struct tunnel_set *ts = t->ts;
	struct tunnel_transfer x = { .h.fd = { t->ep[0].fd, t->ep[1].fd } };

	if (t->eng->hand_over)
		t->eng->hand_over(t->st, &x.h, &x.saved);
	else
		t->eng->stop(t->st, &x.h);
	metrics_engine_tunnels(t->eng->name, -1);
	snprintf(x.engine, sizeof(x.engine), "%s", t->eng->name);
	transfer_names(&x, t->route_st, t->server_st);
	x.serial = t->serial;
	x.age_ms = ev_now_ms() - t->started_ms;
	t->closed = true;
	ev_ticker_stop(ts->loop, &t->ticker);
	for (int e = 0; e < 2; e++)
		ev_watch(ts->loop, &t->ep[e], 0);
	route_tunnel_done(t->route_st);
	pool_server_done(t->server_st);
	free(t->peers);
	t->peers = NULL;
	ts->count--;
	TAILQ_REMOVE(&ts->all, t, link);
	ev_defer(ts->loop, free, t);
	ts->leave(ts->leave_ctx, &x);
}

void tunnel_set_hand_over(struct tunnel_set *ts, tunnel_transfer_fn fn, void *ctx)
{
	ts->leave = fn;
	ts->leave_ctx = ctx;
	for (int m = 0; m < MODE_COUNT; m++)
		if (ts->ctx[m] && engine_table[m]->upgrade)
			engine_table[m]->upgrade(ts->ctx[m], ENGINE_UPGRADE_LEAVING);
	while (!TAILQ_EMPTY(&ts->all))
		tunnel_leave(TAILQ_FIRST(&ts->all));
}

void tunnel_set_upgrade(struct tunnel_set *ts, enum engine_upgrade phase)
{
	for (int m = 0; m < MODE_COUNT; m++)
		if (ts->ctx[m] && engine_table[m]->upgrade)
			engine_table[m]->upgrade(ts->ctx[m], phase);
}

/* Both kinds of start: a hand-off from the session (x NULL), or a tunnel
 * the old process handed over. */
static uint64_t tunnel_begin(struct tunnel_set *ts, const struct engine_ops *eng, struct tunnel_handoff *h,
			     struct tunnel_transfer *x)
{
	struct tunnel *t = calloc(1, sizeof(*t));
	struct engine_io io;

	if (t) {
		t->ts = ts;
		t->eng = eng;
		if (x && x->serial > ts->serial) /* the same worker's series: this one goes on after it */
			ts->serial = x->serial;
		t->serial = x ? x->serial : (ts->serial += ts->serial_step);
		t->started_ms = ev_now_ms() - (x ? x->age_ms : 0);
		if (access_log_enabled() && (t->peers = calloc(2, sizeof(*t->peers))))
			for (int e = 0; e < 2; e++)
				peer_address(h->fd[e], t->peers[e], sizeof(t->peers[e]));
		for (int e = 0; e < 2; e++)
			t->ep[e] = (struct ev_handler){ .fd = h->fd[e], .owner = t, .on_event = on_end_event };
		t->ticker.on_tick = on_tick;
		t->route_st = h->route_st;
		t->server_st = h->server_st;
		io = io_now(t);
		/* A tunnel that began in the old process while it left has no
		 * engine state yet: it starts here. */
		if (x && eng->take_over && (x->saved.len || x->saved.nfds))
			t->st = eng->take_over(engine_ctx(ts, eng), h, &x->saved, t, &io);
		else
			t->st = eng->start(engine_ctx(ts, eng), h, t, &io);
	}
	if (!t || !t->st) {
		log_warn("tunnel: %s: closing the connection", x ? "cannot take it over" : "out of memory");
		if (t)
			free(t->peers);
		free(t);
		for (int e = 0; e < 2; e++)
			close(h->fd[e]);
		for (int d = 0; d < 2; d++)
			buf_release(&h->queue[d]);
		route_tunnel_done(h->route_st);
		pool_server_done(h->server_st);
		return 0;
	}
	ts->count++;
	TAILQ_INSERT_TAIL(&ts->all, t, link);
	metrics_engine_tunnels(t->eng->name, 1);
	apply(t, &io);
	return t->serial;
}

uint64_t tunnel_take_over(struct tunnel_set *ts, struct tunnel_transfer *x, struct route_state *rs,
			  struct server_state *ss)
{
	const struct engine_ops *eng = x->engine[0] ? NULL : engine_for(ts, x->h.mode);

	for (int m = 0; !eng && m < MODE_COUNT; m++)
		if (ts->running[m] && !strcmp(engine_table[m]->name, x->engine))
			eng = engine_table[m];
	if (!eng || (x->saved.len && !eng->take_over)) {
		log_error("tunnel %llu came on engine %s, which this process does not run: closing it",
			  (unsigned long long)x->serial, x->engine);
		for (uint32_t i = 0; i < x->saved.nfds; i++)
			close(x->saved.fd[i]);
		for (int e = 0; e < 2; e++)
			close(x->h.fd[e]);
		for (int d = 0; d < 2; d++)
			buf_release(&x->h.queue[d]);
		route_tunnel_done(rs);
		pool_server_done(ss);
		return 0;
	}
	x->h.route_st = rs;
	x->h.server_st = ss;
	return tunnel_begin(ts, eng, &x->h, x);
}

uint64_t tunnel_start(struct tunnel_set *ts, struct tunnel_handoff *h)
{
	if (ts->leave) {
		/* Upgrading: it starts in the new process, as a new tunnel there. */
		struct tunnel_transfer x = { .h = *h, .serial = (ts->serial += ts->serial_step) };

		transfer_names(&x, h->route_st, h->server_st);
		route_tunnel_done(h->route_st);
		pool_server_done(h->server_st);
		x.h.route_st = NULL;
		x.h.server_st = NULL;
		ts->leave(ts->leave_ctx, &x);
		return x.serial;
	}
	return tunnel_begin(ts, engine_for(ts, h->mode), h, NULL);
}

void tunnel_timeouts(struct tunnel_set *ts, const struct timeouts *to, uint64_t now_ms)
{
	struct tunnel *t, *next;

	if (!to->tunnel_idle_ms && !to->tunnel_fin_ms)
		return;
	for (t = TAILQ_FIRST(&ts->all); t; t = next) {
		uint64_t limit = t->half_closed && to->tunnel_fin_ms ? to->tunnel_fin_ms : to->tunnel_idle_ms;
		struct tunnel_stats s;
		uint64_t last;

		next = TAILQ_NEXT(t, link);
		if (t->closed || !limit || now_ms < t->next_check_ms)
			continue;
		t->eng->stats(t->st, &s);
		last = s.last_active_ms;
		/* now_ms was read before this sweep started: a tunnel handed off
		 * by session_timeouts just now, or a kernel stamp taken as "now",
		 * is later than it. Unclamped, now_ms - last wrapped to 2^64 - 1
		 * and closed a tunnel right after its first FIN (KERNEL-LOG.md, "the
		 * BPF coarse clock can be ahead of the vDSO's"). */
		if (last > now_ms)
			last = now_ms;
		if (now_ms - last < limit) {
			/* Not idle long enough: look again when it could be. */
			t->next_check_ms = last + limit;
			continue;
		}
		log_info("tunnel %llu: %s for %llu ms: closing", (unsigned long long)t->serial,
			 t->half_closed ? "half-closed and idle" : "idle", (unsigned long long)(now_ms - last));
		tunnel_close(t, -1, t->half_closed ? M_CLOSED_FIN_TIMEOUT : M_CLOSED_IDLE_TIMEOUT);
	}
}

void tunnel_list(struct tunnel_set *ts, FILE *f, bool json)
{
	uint64_t now = ev_now_ms();
	char client[INET6_ADDRSTRLEN + 9], upstream[INET6_ADDRSTRLEN + 9], detail[512];
	struct tunnel *t;
	bool first = true;

	if (json)
		fputs("{\"tunnels\":[", f);
	else
		fprintf(f, "%-8s %-8s %-24s %-24s %9s %15s %15s %9s\n", "ID", "ENGINE", "CLIENT", "UPSTREAM", "AGE_S",
			"BYTES_C2U", "BYTES_U2C", "IDLE_MS");
	TAILQ_FOREACH(t, &ts->all, link) {
		struct tunnel_stats st;
		uint64_t idle;

		if (t->closed)
			continue;
		t->eng->stats(t->st, &st);
		idle = now > st.last_active_ms ? now - st.last_active_ms : 0;
		peer_address(t->ep[TUNNEL_END_CLIENT].fd, client, sizeof(client));
		peer_address(t->ep[TUNNEL_END_UPSTREAM].fd, upstream, sizeof(upstream));
		if (!json) {
			fprintf(f, "%-8llu %-8s %-24s %-24s %9.1f %15llu %15llu %9llu\n", (unsigned long long)t->serial,
				t->eng->name, client, upstream, (now - t->started_ms) / 1000.0,
				(unsigned long long)st.bytes[WS_DIR_C2U], (unsigned long long)st.bytes[WS_DIR_U2C],
				(unsigned long long)idle);
			continue;
		}
		t->eng->describe(t->st, detail, sizeof(detail));
		fprintf(f, "%s{\"id\":%llu,\"engine\":\"%s\",\"client\":\"%s\",\"upstream\":\"%s\",\"age_seconds\":%.3f,"
			   "\"bytes_client_to_upstream\":%llu,\"bytes_upstream_to_client\":%llu,\"idle_ms\":%llu,\"detail\":",
			first ? "" : ",", (unsigned long long)t->serial, t->eng->name, client, upstream,
			(now - t->started_ms) / 1000.0, (unsigned long long)st.bytes[WS_DIR_C2U],
			(unsigned long long)st.bytes[WS_DIR_U2C], (unsigned long long)idle);
		json_string(f, detail);
		fputc('}', f);
		first = false;
	}
	if (json)
		fputs("]}\n", f);
}

/* The engines every worker opens: the one new tunnels start on, and the
 * copy relay it falls back to. */
struct tunnel_shared {
	enum tunnel_mode mode;
	void *shared[MODE_COUNT]; /* each prepared engine's */
	bool prepared[MODE_COUNT];
	bool routes[MODE_COUNT];  /* a route's own mode */
};

static bool engine_used(const struct tunnel_shared *sh, enum tunnel_mode m)
{
	/* An engine without a daemon-wide part costs nothing to have ready:
	 * an upgrade may bring tunnels on it whatever this configuration says. */
	return engine_table[m] && (m == sh->mode || engine_table[m] == engine_fallback || sh->routes[m] ||
				   sh->prepared[m] || !engine_table[m]->prepare);
}

static void route_modes(struct tunnel_shared *sh, const struct config *cfg)
{
	for (size_t i = 0; i < cfg->n_routes; i++)
		sh->routes[cfg->routes[i].mode] = cfg->routes[i].mode != MODE_AUTO;
}

static int prepare_engine(struct tunnel_shared *sh, enum tunnel_mode m, const struct config *cfg, char *why,
			  size_t len)
{
	const struct engine_ops *e = engine_table[m];

	if (sh->prepared[m] || !e->prepare)
		return 0;
	sh->shared[m] = e->prepare(cfg, why, len);
	sh->prepared[m] = sh->shared[m] != NULL;
	return sh->prepared[m] ? 0 : -1;
}

/* --mode auto is the kernel path wherever it loads (Linux 6.2+ with the
 * verdict's kfuncs, BPF privileges, a cgroup v2 hierarchy), the copy
 * relay elsewhere; one line says which and why. */
static enum tunnel_mode resolve_auto(struct tunnel_shared *sh, const struct config *cfg)
{
	char why[256];

	if (!prepare_engine(sh, MODE_SOCKMAP, cfg, why, sizeof(why))) {
		log_info("mode auto: sockmap (the kernel splices each tunnel after the 101; a tunnel whose "
			 "insertion fails takes the copy relay)");
		return MODE_SOCKMAP;
	}
	log_info("mode auto: the copy relay (sockmap cannot run here: %s)", why);
	return MODE_COPY;
}

struct tunnel_shared *tunnel_prepare(const struct config *cfg, char *why, size_t whylen)
{
	struct tunnel_shared *sh = calloc(1, sizeof(*sh));
	char reason[256];

	if (!sh) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	sh->mode = cfg->mode == MODE_AUTO ? resolve_auto(sh, cfg) : cfg->mode;
	route_modes(sh, cfg);
	for (int m = 0; m < MODE_COUNT; m++) {
		if (!engine_used(sh, m))
			continue;
		if (prepare_engine(sh, m, cfg, reason, sizeof(reason))) {
			snprintf(why, whylen, "--mode %s: %s", engine_table[m]->name, reason);
			tunnel_release(sh);
			return NULL;
		}
	}
	return sh;
}

/* One engine at most has descriptors to pass (the sockmap's data plane);
 * another may refuse the upgrade (the express lane), and then nothing
 * goes. The descriptors are the engine's own, not copies. */
int tunnel_shared_export(struct tunnel_shared *sh, int *fds, size_t cap)
{
	int n = 0;

	for (int m = 0; m < MODE_COUNT; m++) {
		int r;

		if (!sh->prepared[m] || !engine_table[m]->export_shared)
			continue;
		r = engine_table[m]->export_shared(sh->shared[m], fds, cap);
		if (r < 0)
			return -1;
		if (r > 0)
			n = r;
	}
	return n;
}

void tunnel_shared_watch(struct tunnel_shared *sh, struct ev_loop *loop)
{
	for (int m = 0; m < MODE_COUNT; m++)
		if (sh->prepared[m] && engine_table[m]->watch)
			engine_table[m]->watch(sh->shared[m], loop);
}

unsigned tunnel_shared_listen_mtu(const struct tunnel_shared *sh)
{
	unsigned mtu = 0;

	for (int m = 0; m < MODE_COUNT; m++) {
		unsigned u = sh->prepared[m] && engine_table[m]->listen_mtu ? engine_table[m]->listen_mtu(sh->shared[m]) : 0;

		if (u && (!mtu || u < mtu))
			mtu = u;
	}
	return mtu;
}

void tunnel_shared_disown(struct tunnel_shared *sh)
{
	for (int m = 0; m < MODE_COUNT; m++)
		if (sh->prepared[m] && engine_table[m]->disown)
			engine_table[m]->disown(sh->shared[m]);
}

void tunnel_shared_own(struct tunnel_shared *sh)
{
	for (int m = 0; m < MODE_COUNT; m++)
		if (sh->prepared[m] && engine_table[m]->own)
			engine_table[m]->own(sh->shared[m]);
}

struct tunnel_shared *tunnel_adopt(const struct config *cfg, const char *engine, const int *fds, size_t n,
				   char *why, size_t whylen)
{
	struct tunnel_shared *sh = calloc(1, sizeof(*sh));
	const struct engine_ops *e = NULL;
	char reason[300];
	int m;

	int owner = -1; /* the engine whose shared part the descriptors are */

	for (m = 0; m < MODE_COUNT && !e; m++)
		if (engine_table[m] && !strcmp(engine_table[m]->name, engine))
			e = engine_table[m];
	for (int k = 0; k < MODE_COUNT && n && owner < 0; k++)
		if (engine_table[k] && engine_table[k]->adopt)
			owner = k;
	if (!sh || !e || (n && owner < 0)) {
		snprintf(why, whylen, !sh ? "out of memory" : "the running engine %s cannot be adopted", engine);
		for (size_t i = 0; i < n; i++)
			close(fds[i]);
		free(sh);
		return NULL;
	}
	sh->mode = m - 1;
	route_modes(sh, cfg);
	/* Whatever this configuration says, a running data plane is adopted:
	 * its tunnels are coming. */
	if (owner >= 0) {
		sh->shared[owner] = engine_table[owner]->adopt(cfg, fds, n, reason, sizeof(reason));
		if (!sh->shared[owner]) {
			snprintf(why, whylen, "%s: %s", engine_table[owner]->name, reason);
			free(sh);
			return NULL;
		}
		sh->prepared[owner] = true;
	}
	for (m = 0; m < MODE_COUNT; m++)
		if (engine_used(sh, m) && prepare_engine(sh, m, cfg, reason, sizeof(reason))) {
			snprintf(why, whylen, "--mode %s: %s", engine_table[m]->name, reason);
			tunnel_release(sh);
			return NULL;
		}
	return sh;
}

void tunnel_release(struct tunnel_shared *sh)
{
	if (!sh)
		return;
	for (int m = 0; m < MODE_COUNT; m++)
		if (sh->prepared[m] && engine_table[m]->release)
			engine_table[m]->release(sh->shared[m]);
	free(sh);
}

void tunnel_worker_gone(struct tunnel_shared *sh, uint32_t worker)
{
	for (int m = 0; m < MODE_COUNT; m++)
		if (sh->prepared[m] && engine_table[m]->worker_gone)
			engine_table[m]->worker_gone(sh->shared[m], worker);
}

const char *tunnel_shared_engine(const struct tunnel_shared *sh)
{
	return engine_table[sh->mode]->name;
}

struct tunnel_set *tunnel_set_open(const struct tunnel_shared *sh, const struct config *cfg, uint32_t worker,
				   uint32_t workers, struct ev_loop *loop, char *why, size_t whylen)
{
	struct tunnel_set *ts = calloc(1, sizeof(*ts));
	char reason[256];

	if (!ts) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	TAILQ_INIT(&ts->all);
	ts->loop = loop;
	ts->eng = engine_table[sh->mode];
	/* Ids unique across the workers: this one's are worker + 1 + k * workers. */
	ts->serial = worker;
	ts->serial_step = workers;
	for (int m = 0; m < MODE_COUNT; m++) {
		const struct engine_ops *e = engine_table[m];

		if (!engine_used(sh, m))
			continue;
		ts->running[m] = true;
		if (!e->open)
			continue;
		ts->ctx[m] = e->open(cfg, sh->shared[m], worker, loop, kick, reason, sizeof(reason));
		if (!ts->ctx[m]) {
			snprintf(why, whylen, "--mode %s: %s", e->name, reason);
			tunnel_set_close(ts);
			return NULL;
		}
	}
	return ts;
}

void tunnel_set_reload(struct tunnel_set *ts, const struct config *cfg)
{
	for (size_t i = 0; i < cfg->n_routes; i++)
		if (cfg->routes[i].mode != MODE_AUTO && !ts->running[cfg->routes[i].mode])
			log_warn("reload: route %s: mode %s applies at the next restart (its tunnels take %s until then)",
				 cfg->routes[i].name, mode_name(cfg->routes[i].mode), ts->eng->name);
	for (int m = 0; m < MODE_COUNT; m++)
		if (ts->ctx[m] && engine_table[m]->reload)
			engine_table[m]->reload(ts->ctx[m], cfg);
}

void tunnel_set_close(struct tunnel_set *ts)
{
	if (!ts)
		return;
	while (!TAILQ_EMPTY(&ts->all))
		tunnel_close(TAILQ_FIRST(&ts->all), -1, M_CLOSED_SHUTDOWN);
	/* The tunnels' memory goes with the loop's deferred frees. */
	ev_run_deferred(ts->loop);
	for (int m = 0; m < MODE_COUNT; m++)
		if (ts->ctx[m])
			engine_table[m]->close(ts->ctx[m]);
	free(ts);
}

const char *tunnel_set_engine(const struct tunnel_set *ts)
{
	return ts->eng->name;
}

uint64_t tunnel_set_last_id(const struct tunnel_set *ts)
{
	return ts->serial;
}

void tunnel_set_ids_after(struct tunnel_set *ts, uint64_t id)
{
	/* The same worker's series (congruent), 65 536 ids on: the old
	 * process's tunnels that begin while it drains take those. */
	uint64_t next = id + 65536 * ts->serial_step;

	if (next > ts->serial)
		ts->serial = next;
}

uint64_t tunnel_set_next_id(const struct tunnel_set *ts)
{
	return ts->serial + ts->serial_step;
}

uint64_t tunnel_set_count(const struct tunnel_set *ts)
{
	return ts->count;
}
