/* The express lane (--mode tcsplice; docs/DESIGN-TC-SPLICE.md). A tunnel
 * starts on the copy relay, which this engine drives as its first stage.
 * Once both directions have been quiet for a moment, and every
 * precondition holds, it is handed to the tc program: the flow entries go
 * in FROZEN, the proxy's two sockets are frozen in TCP_REPAIR, their
 * sequence numbers give the deltas, and the tunnel goes ACTIVE. From then
 * on the peers' segments are rewritten into each other's and pass the
 * proxy's stack by; this process only looks at the program's state now and
 * then, for the end and for the timeouts. A tunnel that is never quiet
 * drains into it instead: the program cuts the peers' payload off while
 * the relay empties the proxy's queues (strip-freeze). A tunnel that
 * cannot go express stays on the relay for its life, with one debug line
 * saying why. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include "engine.h"
#include "ifroute.h"
#include "log.h"
#include "metrics.h"
#include "tc_dataplane.h"

extern const struct engine_ops engine_copy;

#define EXPRESS_QUIET_MS 20  /* both directions this long without a byte before a hand-over */
#define EXPRESS_SCAN_MS 10   /* how often a worker looks at its tunnels */
#define EXPRESS_STATE_MS 100 /* how often it reads an express tunnel's state */
/* Strip-freeze: a tunnel busy this long from its start drains into the
 * hand-over; the queues get this long to empty; a drain that timed out
 * waits this long for the next, twice as long each time, up to the max. */
#define EXPRESS_BUSY_MS 200
#define EXPRESS_DRAIN_MS 500
#define EXPRESS_DRAIN_BACKOFF_MS 1000
#define EXPRESS_DRAIN_BACKOFF_MAX_MS 60000
#define TCPI_OPT_USEC_TS_BIT 64 /* Linux 6.7's microsecond timestamps; not in 6.1's headers */
#define TCP_ST_ESTABLISHED 1

struct tcs_tunnel;

struct tcs_ctx {
	struct tc_dataplane *tp;
	struct ev_loop *loop;
	engine_kick_fn kick;
	struct ev_handler timer;
	TAILQ_HEAD(, tcs_tunnel) all;
	uint32_t worker, next;
	uint64_t next_state_ms;
	int raw[2]; /* IPv4, IPv6: for the resets a live express tunnel ends with */
	bool told_no_repair, told_localnet;
	int8_t can_repair; /* -1: not asked yet */
};

struct tcs_tunnel {
	TAILQ_ENTRY(tcs_tunnel) link;
	struct tcs_ctx *c;
	void *owner;
	void *relay; /* the copy relay's state, until the hand-over */
	int fd[2];
	bool express;
	bool told_window; /* counted once among the refusals */
	uint8_t seen_flags[2]; /* the program's flags at the last look */
	uint32_t id;
	struct tc_keys keys;
	uint64_t relay_bytes[2]; /* what the relay delivered before */
	uint64_t relay_last_ms;
	uint64_t next_try_ms;
	uint64_t backoff_ms;
	uint64_t next_drain_ms; /* a busy tunnel's next drain, no sooner */
	uint64_t drain_backoff_ms;
	struct tcs_drain *drain; /* while the entries are in as DRAIN */
};

/* A drain under way: the entries as they went in, for the freeze. */
struct tcs_drain {
	struct ws_tc_tunnel v;
	uint64_t until_ms;
};

/* ---- the worker's look at its tunnels -------------------------------- */

static void on_timer(struct ev_handler *h, uint32_t events)
{
	struct tcs_ctx *c = container_of(h, struct tcs_ctx, timer);
	uint64_t now = ev_now_ms(), expirations;
	bool states = now >= c->next_state_ms;
	struct tcs_tunnel *t, *next;

	(void)events;
	if (read(h->fd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
		return;
	if (states)
		c->next_state_ms = now + EXPRESS_STATE_MS;
	/* kick() may close the tunnel, whose stop() takes it off the list
	 * and frees it: the next one is read first. */
	for (t = TAILQ_FIRST(&c->all); t; t = next) {
		next = TAILQ_NEXT(t, link);
		if (t->express) {
			struct ws_tc_tunnel v;

			if (states && !tc_express_read(c->tp, t->id, &v) &&
			    (v.state == WS_TC_ENDED || v.dir[0].flags != t->seen_flags[0] ||
			     v.dir[1].flags != t->seen_flags[1]))
				c->kick(t->owner);
		} else if (now >= t->next_try_ms) {
			c->kick(t->owner);
		}
	}
}

/* ---- the figures, read at scrape time ------------------------------------ */

static int tcs_carried(void *shared, uint64_t bytes[2], uint64_t packets[2])
{
	for (int d = 0; d < 2; d++)
		if (tc_dataplane_counter(shared, WS_TCC_DELIVERED_C2U + d, &bytes[d]) ||
		    tc_dataplane_counter(shared, WS_TCC_PACKETS_C2U + d, &packets[d]))
			return -1;
	return 0;
}

static void tcs_metrics(void *shared, FILE *out)
{
	static const struct {
		enum ws_tc_counter idx;
		const char *name;
	} events[] = {
		{ WS_TCC_SEGMENTS, "segments" },	  { WS_TCC_FROZEN_DROPS, "frozen_drops" },
		{ WS_TCC_GUARD_DROPS, "guard_drops" },	  { WS_TCC_OPTION_DROPS, "option_drops" },
		{ WS_TCC_ENDED, "ended" },		  { WS_TCC_ARM_FAILS, "arm_fails" },
		{ WS_TCC_REWRITE_FAILS, "rewrite_fails" }, { WS_TCC_STRIPPED, "stripped" },
	};
	uint64_t v;

	fputs("# HELP wsplice_express_events_total What the express lane's tc program counts (docs/DESIGN-TC-SPLICE.md).\n"
	      "# TYPE wsplice_express_events_total counter\n",
	      out);
	for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++)
		if (!tc_dataplane_counter(shared, events[i].idx, &v))
			fprintf(out, "wsplice_express_events_total{event=\"%s\"} %llu\n", events[i].name,
				(unsigned long long)v);
}

static void *tcs_prepare(const struct config *cfg, char *why, size_t whylen)
{
	struct tc_dataplane *tp = tc_dataplane_open(cfg->max_tunnels, why, whylen);

	/* Scrapes are answered by this process. */
	if (tp) {
		metrics_collector_add(tcs_metrics, tp);
		metrics_kernel_add(tcs_carried, tp);
	}
	return tp;
}

static unsigned tcs_listen_mtu(void *shared)
{
	return tc_dataplane_listen_mtu(shared);
}

static void tcs_watch(void *shared, struct ev_loop *loop)
{
	tc_dataplane_watch(shared, loop);
}

static void tcs_release(void *shared)
{
	metrics_collector_del(tcs_metrics, shared);
	metrics_kernel_del(tcs_carried, shared);
	tc_dataplane_close(shared);
}

/* A worker died: its frozen sockets closed silently, and its entries
 * would go on translating (and the guard dropping) for nobody. Once they
 * are gone the peers' next segments meet closed sockets and a reset. */
static void tcs_worker_gone(void *shared, uint32_t worker)
{
	int n = tc_dataplane_forget(shared, worker, 63);

	if (n > 0)
		log_info("express lane: worker %u's %d express tunnels are gone with it", worker, n);
}

/* An upgrade cannot take express tunnels yet: their sockets are frozen, and
 * the new process's relay could not go on with them. */
static int tcs_export(void *shared, int *fds, size_t cap)
{
	(void)shared;
	(void)fds;
	(void)cap;
	log_error("upgrade: the express lane (tcsplice) cannot hand its tunnels to a new process yet; restart instead");
	return -1;
}

static void *tcs_open(const struct config *cfg, void *shared, uint32_t worker, struct ev_loop *loop,
		      engine_kick_fn kick, char *why, size_t whylen)
{
	struct tcs_ctx *c = calloc(1, sizeof(*c));
	struct itimerspec its = { .it_interval = { 0, EXPRESS_SCAN_MS * 1000000L },
				  .it_value = { 0, EXPRESS_SCAN_MS * 1000000L } };

	(void)cfg;
	if (!c) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	c->tp = shared;
	c->loop = loop;
	c->kick = kick;
	c->worker = worker;
	c->raw[0] = c->raw[1] = -1;
	c->can_repair = -1;
	TAILQ_INIT(&c->all);
	c->timer = (struct ev_handler){ .on_event = on_timer };
	c->timer.fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (c->timer.fd < 0 || timerfd_settime(c->timer.fd, 0, &its, NULL) || ev_watch(loop, &c->timer, EPOLLIN)) {
		snprintf(why, whylen, "cannot start the express lane's timer: %s", strerror(errno));
		if (c->timer.fd >= 0)
			close(c->timer.fd);
		free(c);
		return NULL;
	}
	return c;
}

static void tcs_close(void *ctx)
{
	struct tcs_ctx *c = ctx;

	ev_watch(c->loop, &c->timer, 0);
	close(c->timer.fd);
	for (int i = 0; i < 2; i++)
		if (c->raw[i] >= 0)
			close(c->raw[i]);
	free(c);
}

/* ---- the hand-over ----------------------------------------------------- */

/* An IPv4-mapped address is IPv4 on the wire: the key is IPv4's. */
static int wire_family(const struct sockaddr_storage *a)
{
	if (a->ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)a)->sin6_addr))
		return 4;
	return a->ss_family == AF_INET ? 4 : 6;
}

static void addr_words(const struct sockaddr_storage *a, uint32_t w[4], uint16_t *port)
{
	memset(w, 0, 16);
	if (a->ss_family == AF_INET) {
		w[0] = ((const struct sockaddr_in *)a)->sin_addr.s_addr;
		*port = ((const struct sockaddr_in *)a)->sin_port;
	} else {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)a;

		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
			memcpy(&w[0], &s6->sin6_addr.s6_addr[12], 4);
		else
			memcpy(w, &s6->sin6_addr, 16);
		*port = s6->sin6_port;
	}
}

/* The out leg through fd (me -> peer), and the device its segments leave
 * by; the keys follow from it (tc_keys_of). */
static int leg_of(const struct tc_dataplane *tp, int fd, struct ws_tc_dir *out, int *family, const char **why)
{
	struct sockaddr_storage me, peer;
	socklen_t a = sizeof(me), b = sizeof(peer);
	unsigned dev;

	if (getsockname(fd, (struct sockaddr *)&me, &a) || getpeername(fd, (struct sockaddr *)&peer, &b)) {
		*why = "no peer";
		return -1;
	}
	if (ifroute_oif(&me, &peer, &dev)) {
		*why = "no route to a peer";
		return -1;
	}
	if (!tc_dataplane_covers(tp, dev)) {
		*why = "a leg's device has no express program (no tcx, no Ethernet header, or past 64 devices)";
		return -1;
	}
	*family = wire_family(&peer);
	addr_words(&me, out->saddr, &out->sport);
	addr_words(&peer, out->daddr, &out->dport);
	out->ifindex = dev;
	/* A veth into another namespace: straight into its peer's ingress,
	 * past the veth's transmit and the backlog (legs_route). */
	if (dev != WS_LOOPBACK_IFINDEX && !ifroute_veth_frame(&me, &peer, dev, out->eth))
		out->redirect = WS_TC_TO_PEER;
	return 0;
}

/* How each direction leaves. Both legs on lo: up the stack where it came
 * in (a local destination). Both on devices: out of the out leg's device,
 * with the link-layer header its neighbour entry gives, or, where that
 * device is a veth into another namespace (leg_of), into its peer's
 * ingress with that header written by the program (not from lo: a
 * segment from lo carries this namespace's route, which before Linux 6.15
 * bpf_redirect_peer would take along). One on each: into
 * lo's ingress where the out leg is lo's, out of the device where it is
 * the device's (the local peer's segments come in on lo). */
static void legs_route(struct ws_tc_tunnel *v, unsigned lo)
{
	bool c_lo = v->dir[WS_DIR_U2C].ifindex == lo, u_lo = v->dir[WS_DIR_C2U].ifindex == lo;

	for (int d = 0; d < 2; d++) {
		bool out_lo = v->dir[d].ifindex == lo, to_peer = v->dir[d].redirect == WS_TC_TO_PEER;

		if (c_lo && u_lo)
			v->dir[d].redirect = WS_TC_INPLACE;
		else if (out_lo)
			v->dir[d].redirect = WS_TC_LO_INGRESS;
		else
			v->dir[d].redirect = to_peer && !c_lo && !u_lo ? WS_TC_TO_PEER : WS_TC_NEIGH;
	}
}

/* A sysctl of lo or of all (the kernel takes either, IN_DEV_ORCONF). */
static bool lo_or_all(const char *name)
{
	const char *dev[] = { "lo", "all" };

	for (int i = 0; i < 2; i++) {
		char path[96];
		int v = 0;
		FILE *f;

		snprintf(path, sizeof(path), "/proc/sys/net/ipv4/conf/%s/%s", dev[i], name);
		f = fopen(path, "re");
		if (!f)
			continue;
		if (fscanf(f, "%d", &v) != 1)
			v = 0;
		fclose(f);
		if (v)
			return true;
	}
	return false;
}

/* Whether lo's IPv4 input takes a segment redirected into it from a device
 * (WS_TC_LO_INGRESS), or NULL. It comes without the route a locally sent
 * one carries, so the input route is looked up: its source is a local
 * address (the proxy's), a martian unless accept_local, and a destination
 * in 127.0.0.0/8 is one unless route_localnet. Only the receiving socket's
 * cached route (early demux) would let it in otherwise, until any route or
 * link change in the namespace drops that cache: the tunnel would then stall
 * for good. IPv6 has no such rule for lo. */
static const char *lo_takes_ipv4(const struct ws_tc_tunnel *v)
{
	for (int d = 0; d < 2; d++) {
		const uint8_t *dst = (const uint8_t *)v->dir[d].daddr;

		if (v->dir[d].redirect != WS_TC_LO_INGRESS)
			continue;
		if (!lo_or_all("accept_local"))
			return "IPv4 from a device to a local peer needs net.ipv4.conf.lo.accept_local=1";
		if (dst[0] == 127 && !lo_or_all("route_localnet"))
			return "IPv4 from a device to 127.0.0.0/8 needs net.ipv4.conf.lo.route_localnet=1";
	}
	return NULL;
}

static int queued(int fd, unsigned long req)
{
	int n = 1;

	return ioctl(fd, req, &n) ? 1 : n;
}

/* The socket's receive memory (SO_MEMINFO): every skb it holds, the
 * out-of-order queue's too; 1 when it cannot be read. */
static uint32_t rmem_of(int fd)
{
	uint32_t mem[SK_MEMINFO_VARS] = { 0 };
	socklen_t len = sizeof(mem);

	return getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) ? 1 : mem[SK_MEMINFO_RMEM_ALLOC];
}

/* Nothing unacknowledged, nothing queued either way. SIOCINQ leaves out
 * the out-of-order queue: bytes past a hole, which the peer saw
 * acknowledged selectively and will not send again soon, would be lost
 * to the other peer with the frozen socket. Its memory is in the receive
 * allocation, which is 0 only when no skb waits anywhere in the socket. */
static bool socket_quiet(int fd, const struct tcp_info *ti)
{
	return ti->tcpi_state == TCP_ST_ESTABLISHED && !ti->tcpi_unacked && !queued(fd, SIOCINQ) &&
	       !queued(fd, SIOCOUTQ) && !rmem_of(fd);
}

static int repair(int fd, int on)
{
	return setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &on, sizeof(on));
}

static int queue_seq(int fd, int queue, uint32_t *seq)
{
	socklen_t len = sizeof(*seq);

	if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof(queue)))
		return -1;
	return seq ? getsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, seq, &len) : 0;
}

/* TCP_INFO, and how large the segments the peer sends this socket can
 * be: its MSS, and at most half the largest window it saw from us
 * (tcp_bound_to_half_wnd), which at a quiet moment is the window this
 * socket advertised last. That is Linux 6.2's tcpi_rcv_wnd, right after
 * the tcpi_snd_wnd Debian 12's headers end with; before 6.2, the window's
 * ceiling, tcpi_rcv_ssthresh (the advertised window is at most that). */
static int tcp_info_of(int fd, struct tcp_info *ti, uint32_t *seg)
{
	union {
		struct tcp_info ti;
		uint8_t raw[sizeof(struct tcp_info) + 16];
	} u;
	size_t at = offsetof(struct tcp_info, tcpi_snd_wnd) + sizeof(u.ti.tcpi_snd_wnd);
	socklen_t len = sizeof(u);
	uint32_t adv;

	memset(&u, 0, sizeof(u));
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &u, &len))
		return -1;
	*ti = u.ti;
	*seg = ti->tcpi_advmss;
	if (len >= at + sizeof(adv))
		memcpy(&adv, u.raw + at, sizeof(adv));
	else
		adv = ti->tcpi_rcv_ssthresh;
	if (adv > 536 && adv / 2 < *seg)
		*seg = adv / 2;
	return 0;
}

/* Why a direction's segments would not fit where the program sends them,
 * or NULL: they fit. A sender's segments carry at most the MSS this proxy
 * advertised on its leg (the route's MTU, the listener's clamp,
 * upstream_mss_for), and with their headers and the timestamps option
 * they must pass the other leg's device and, off lo, carry no more than
 * that receiver's own MSS (our send MSS there). tcpi_advmss and
 * tcpi_snd_mss both leave out the timestamps option, the same on both
 * legs. Segments are never split here: a misfit stays on the relay
 * (docs/DESIGN-TC-SPLICE.md, "The MSS clamp"). */
static const char *segments_misfit(const struct ws_tc_tunnel *v, const struct tcp_info ti[2], int family)
{
	unsigned hdr = (family == 4 ? 40 : 60) + (ti[0].tcpi_options & TCPI_OPT_TIMESTAMPS ? 12 : 0);

	for (int d = 0; d < 2; d++) {
		const struct tcp_info *in = &ti[dir_src(d)], *out = &ti[dir_dst(d)];
		unsigned mtu = ifroute_mtu(v->dir[d].ifindex);

		if (in->tcpi_advmss + hdr > mtu)
			return d == WS_DIR_C2U ? "the client's segments exceed the upstream device's MTU"
					       : "the upstream's segments exceed the client device's MTU";
		if (v->dir[d].ifindex != WS_LOOPBACK_IFINDEX && in->tcpi_advmss > out->tcpi_snd_mss)
			return d == WS_DIR_C2U ? "the client's MSS is above the upstream's"
					       : "the upstream's MSS is above the client's";
	}
	return NULL;
}

/* Each peer's window must take the other peer's segments, or that
 * direction moves by window probes only (docs/KERNEL-LOG.md, "The tc
 * splice"). What a peer's buffer takes is the largest window it ever
 * advertised: the last one may be stale, since a reader that emptied its
 * buffer sends no update until more comes (tcp_cleanup_rbuf), and a quiet
 * tunnel has nothing coming. TCP_REPAIR_WINDOW tells it, in repair mode
 * only: on and off again (no window probe), which sends nothing. 1: they
 * fit, 0: not, -1: not asked (errno). */
static int windows_fit(const struct tcs_tunnel *t, const uint32_t seg[2])
{
	struct tcp_repair_window w[2];

	for (int e = 0; e < 2; e++) {
		socklen_t len = sizeof(w[e]);
		int r, err;

		if (repair(t->fd[e], 1))
			return -1;
		r = getsockopt(t->fd[e], IPPROTO_TCP, TCP_REPAIR_WINDOW, &w[e], &len);
		err = errno;
		repair(t->fd[e], TCP_REPAIR_OFF_NO_WP);
		if (r) {
			errno = err;
			return -1;
		}
	}
	return w[0].max_window >= seg[1] && w[1].max_window >= seg[0];
}

/* Both sockets as quiet as before, looked at again. The state counts as
 * much as the queues: a FIN that reached a socket meanwhile is in no
 * queue SIOCINQ counts, yet it moved rcv_nxt and left the socket in
 * CLOSE_WAIT, and the program would then translate every later segment
 * one byte off while the peer waits for that FIN forever. */
static bool still_quiet(const struct tcs_tunnel *t, struct tcp_info ti[2], uint32_t seg[2])
{
	for (int e = 0; e < 2; e++)
		if (tcp_info_of(t->fd[e], &ti[e], &seg[e]) || !socket_quiet(t->fd[e], &ti[e]))
			return false;
	return true;
}

/* TCP_INFO of both ends (tcp_info_of), or -1. */
static int tcp_infos(const struct tcs_tunnel *t, struct tcp_info ti[2], uint32_t seg[2])
{
	for (int e = 0; e < 2; e++)
		if (tcp_info_of(t->fd[e], &ti[e], &seg[e]))
			return -1;
	return 0;
}

/* Not yet: looks again after retry_ms. */
static void later(struct tcs_tunnel *t, const char *why, uint64_t retry_ms)
{
	log_debug("tunnel: stays on the copy relay for now: %s", why);
	t->next_try_ms = ev_now_ms() + retry_ms;
}

/* One more in the program's .bss too, for bpftool. */
static void note(__u64 *counter)
{
	__atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

/* Refused: stays on the relay for its life. */
static void refuse(struct tcs_tunnel *t, const char *why, enum metric reason)
{
	struct ws_tc_handovers *n = tc_dataplane_handovers(t->c->tp);

	log_debug("tunnel: stays on the copy relay: express refused (%s)", why);
	metrics_inc(reason);
	note(reason == M_EXPRESS_REFUSED_DEVICE	      ? &n->refused_device
	     : reason == M_EXPRESS_REFUSED_MISMATCH  ? &n->refused_legs_differ
	     : reason == M_EXPRESS_REFUSED_WINDOW    ? &n->refused_window
	     : reason == M_EXPRESS_REFUSED_NO_REPAIR ? &n->refused_no_repair
						     : &n->refused_error);
	t->next_try_ms = UINT64_MAX;
}

/* The next look at a tunnel not ready yet: 20 ms, doubling to 1 s. */
static uint64_t backoff(struct tcs_tunnel *t)
{
	t->backoff_ms = t->backoff_ms ? (t->backoff_ms < 1000 ? 2 * t->backoff_ms : 1000) : EXPRESS_QUIET_MS;
	return t->backoff_ms;
}

/* Whether a peer's window is short of the other's segments: with why, the
 * tunnel tries again later, less and less often (a buffer can grow), and
 * the refusal counts once. Checked at a quiet moment, when nothing in
 * flight shuts a window (at a drain's start the bytes in flight may). */
static bool windows_short(struct tcs_tunnel *t, const uint32_t seg[2], const char *why)
{
	struct ws_tc_handovers *n = tc_dataplane_handovers(t->c->tp);
	int fit = windows_fit(t, seg);

	if (fit > 0)
		return false;
	if (fit < 0) {
		/* A FIN came (repair wants ESTABLISHED): quiet no longer. */
		if (why)
			later(t, "cannot read the peers' windows", EXPRESS_QUIET_MS);
		return true;
	}
	if (!t->told_window) {
		t->told_window = true;
		metrics_inc(M_EXPRESS_REFUSED_WINDOW);
		note(&n->refused_window);
	}
	if (why) {
		later(t, why, backoff(t));
	}
	return true;
}

/* TCP_REPAIR failed with err: EPERM is a worker without CAP_NET_ADMIN
 * (one warning each), anything else an error. */
static void refuse_no_repair(struct tcs_tunnel *t, int err)
{
	if (err == EPERM && !t->c->told_no_repair) {
		t->c->told_no_repair = true;
		log_warn("express lane: the worker may not freeze sockets (TCP_REPAIR needs CAP_NET_ADMIN; "
			 "a worker with user = drops it): its tunnels stay on the copy relay");
	}
	refuse(t, strerror(err), err == EPERM ? M_EXPRESS_REFUSED_NO_REPAIR : M_EXPRESS_REFUSED_ERROR);
}

/* Whether this worker may freeze sockets (TCP_REPAIR needs CAP_NET_ADMIN,
 * which a worker with user = drops), asked once with a socket never
 * connected, which asks for the same capability: a tunnel that would be
 * refused at the freeze goes in neither FROZEN nor DRAIN (a drain costs
 * the peers a retransmission timeout). false with errno: EPERM, or the
 * question could not be asked (asked again next time). */
static bool may_repair(struct tcs_ctx *c)
{
	int fd;

	if (c->can_repair >= 0) {
		errno = EPERM;
		return c->can_repair;
	}
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	if (repair(fd, 1)) {
		int err = errno;

		close(fd);
		if (err == EPERM)
			c->can_repair = 0;
		errno = err;
		return false;
	}
	close(fd);
	c->can_repair = 1;
	return true;
}

/* The tunnel's entries as they would go in (legs, keys, cookies), or -1
 * when a precondition does not hold: refused, for its life. The windows
 * are the caller's (windows_short). */
static int express_plan(struct tcs_tunnel *t, struct ws_tc_tunnel *v, const struct tcp_info ti[2])
{
	struct tcs_ctx *c = t->c;
	const char *why = NULL;
	int family[2];

	/* Direction d leaves through the other end's socket, so its out leg
	 * is that end's. */
	if (leg_of(c->tp, t->fd[TUNNEL_END_CLIENT], &v->dir[WS_DIR_U2C], &family[0], &why) ||
	    leg_of(c->tp, t->fd[TUNNEL_END_UPSTREAM], &v->dir[WS_DIR_C2U], &family[1], &why)) {
		refuse(t, why, M_EXPRESS_REFUSED_DEVICE);
		return -1;
	}
	legs_route(v, WS_LOOPBACK_IFINDEX);
	if (family[0] == 4 && (why = lo_takes_ipv4(v))) {
		if (!c->told_localnet) {
			c->told_localnet = true;
			log_info("express lane: %s (lo's input takes the segments of such a tunnel for martians): its "
				 "tunnels stay on the relay (docs/DESIGN-TC-SPLICE.md, \"One leg on lo\")", why);
		}
		refuse(t, why, M_EXPRESS_REFUSED_DEVICE);
		return -1;
	}
	if (family[0] != family[1])
		why = "IPv4 on one leg, IPv6 on the other";
	else if ((ti[0].tcpi_options ^ ti[1].tcpi_options) & TCPI_OPT_TIMESTAMPS)
		why = "timestamps on one leg only";
	else if ((ti[0].tcpi_options | ti[1].tcpi_options) & TCPI_OPT_USEC_TS_BIT)
		why = "microsecond timestamps";
	else
		why = segments_misfit(v, ti, family[0]);
	if (why) {
		refuse(t, why, M_EXPRESS_REFUSED_MISMATCH);
		return -1;
	}
	v->family = (uint32_t)family[0];
	tc_keys_of(v, &t->keys);
	for (int e = 0; e < 2; e++) {
		socklen_t len = sizeof(t->keys.cookie[e]);

		if (getsockopt(t->fd[e == 0 ? TUNNEL_END_CLIENT : TUNNEL_END_UPSTREAM], SOL_SOCKET, SO_COOKIE,
			       &t->keys.cookie[e], &len)) {
			refuse(t, "no SO_COOKIE", M_EXPRESS_REFUSED_ERROR);
			return -1;
		}
	}
	return 0;
}

/* The entries in, under a fresh id (v's state: FROZEN or DRAIN). */
static int express_enter(struct tcs_tunnel *t, const struct ws_tc_tunnel *v)
{
	struct tcs_ctx *c = t->c;

	for (int tries = 0;; tries++) {
		t->id = ++c->next << 6 | c->worker;
		if (!tc_express_add(c->tp, t->id, v, &t->keys))
			return 0;
		if (errno != EEXIST || tries == 8) {
			refuse(t, "the flow tables refused it", M_EXPRESS_REFUSED_ERROR);
			return -1;
		}
	}
}

/* An ACK the proxy owes goes now: once the guard drops what the frozen
 * sockets send, it never would. */
static void ack_now(struct tcs_tunnel *t)
{
	int one = 1;

	for (int e = 0; e < 2; e++)
		setsockopt(t->fd[e], IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}

/* The entries are in, FROZEN: payload to the proxy is dropped from here
 * on, so its queues can only stay empty. The sockets freeze, their
 * sequence numbers give the deltas, and the tunnel goes ACTIVE. */
static void freeze(struct tcs_tunnel *t, struct ws_tc_tunnel *v, const struct tcp_info ti[2],
		   const struct tunnel_stats *rs, struct engine_io *io)
{
	struct tcs_ctx *c = t->c;
	struct tunnel_handoff h = { .fd = { t->fd[0], t->fd[1] } };
	struct tcp_info now[2];
	uint32_t snd[2], rcv[2], seg[2];
	int off = 0, err;

	note(&tc_dataplane_handovers(c->tp)->tried);
	if (!still_quiet(t, now, seg)) {
		tc_express_del(c->tp, t->id, &t->keys);
		later(t, "a byte or a FIN came meanwhile", EXPRESS_QUIET_MS);
		return;
	}
	for (int e = 0; e < 2; e++)
		setsockopt(t->fd[e], SOL_SOCKET, SO_KEEPALIVE, &off, sizeof(off));
	if (repair(t->fd[0], 1) || repair(t->fd[1], 1)) {
		err = errno;
		repair(t->fd[0], TCP_REPAIR_OFF_NO_WP);
		tc_express_del(c->tp, t->id, &t->keys);
		refuse_no_repair(t, err);
		return;
	}
	/* Then no queue: in repair mode a send() on a socket whose repair
	 * queue is the receive queue lands in its own receive queue, which a
	 * stray write would turn into an echo; with none it fails (EINVAL). */
	for (int e = 0; e < 2; e++)
		if (queue_seq(t->fd[e], TCP_SEND_QUEUE, &snd[e]) || queue_seq(t->fd[e], TCP_RECV_QUEUE, &rcv[e]) ||
		    queue_seq(t->fd[e], TCP_NO_QUEUE, NULL))
			goto undo;
	/* A segment that passed the program before the FROZEN entry went in
	 * can reach a socket late (its backlog runs when the lock goes): then
	 * rcv_nxt counts a byte nobody would deliver. Looked at once more,
	 * now that the numbers are read. */
	if (!still_quiet(t, now, seg)) {
		errno = EAGAIN;
		goto undo;
	}
	/* Pa = the client end's socket, Pb = the upstream end's
	 * (docs/DESIGN-TC-SPLICE.md, "The sequence spaces"). */
	v->dir[WS_DIR_C2U].seq_delta = snd[1] - rcv[0];
	v->dir[WS_DIR_C2U].ack_delta = rcv[1] - snd[0];
	v->dir[WS_DIR_U2C].seq_delta = snd[0] - rcv[1];
	v->dir[WS_DIR_U2C].ack_delta = rcv[0] - snd[1];
	v->dir[WS_DIR_C2U].nxt = v->dir[WS_DIR_C2U].acked = snd[1];
	v->dir[WS_DIR_U2C].nxt = v->dir[WS_DIR_U2C].acked = snd[0];
	v->dir[WS_DIR_C2U].wscale_in = ti[0].tcpi_snd_wscale;
	v->dir[WS_DIR_C2U].wscale_out = ti[1].tcpi_rcv_wscale;
	v->dir[WS_DIR_U2C].wscale_in = ti[1].tcpi_snd_wscale;
	v->dir[WS_DIR_U2C].wscale_out = ti[0].tcpi_rcv_wscale;
	v->dir[0].ts = v->dir[1].ts = !!(ti[0].tcpi_options & TCPI_OPT_TIMESTAMPS);
	v->armed = !v->dir[0].ts;
	v->state = WS_TC_ACTIVE;
	if (tc_express_update(c->tp, t->id, v))
		goto undo;
	for (int d = 0; d < 2; d++)
		t->relay_bytes[d] = rs->bytes[d];
	t->relay_last_ms = rs->last_active_ms;
	engine_copy.stop(t->relay, &h);
	for (int d = 0; d < 2; d++)
		buf_release(&h.queue[d]);
	t->relay = NULL;
	t->express = true;
	/* The frozen sockets get nothing to wake this process for. */
	io->want[0] = io->want[1] = 0;
	io->tick = false;
	metrics_inc(M_EXPRESS_HANDOVERS);
	note(&tc_dataplane_handovers(c->tp)->done);
	if (v->dir[0].redirect == WS_TC_TO_PEER || v->dir[1].redirect == WS_TC_TO_PEER)
		note(&tc_dataplane_handovers(c->tp)->to_peer);
	log_debug("tunnel: went express (id %u): the tc program carries it from here", t->id);
	return;
undo:
	/* Nothing passed yet (still FROZEN): thawed, the relay goes on, and
	 * what was dropped meanwhile comes again. */
	err = errno;
	repair(t->fd[0], TCP_REPAIR_OFF_NO_WP);
	repair(t->fd[1], TCP_REPAIR_OFF_NO_WP);
	tc_express_del(c->tp, t->id, &t->keys);
	if (err == EAGAIN)
		later(t, "a byte or a FIN came while the sockets froze", EXPRESS_QUIET_MS);
	else
		refuse(t, strerror(err), M_EXPRESS_REFUSED_ERROR);
}

/* ---- strip-freeze: a busy tunnel drains into the hand-over ------------- */

/* A tunnel busy since it began gets no quiet moment: its entries go in as
 * DRAIN, where the program passes the peers' ACKs to the proxy's sockets
 * and cuts off their payload and FINs. The relay writes out what it holds;
 * once every queue is empty the tunnel freezes as at a quiet moment. The
 * peers send what was cut off again, at their retransmission timeout,
 * and then it goes end to end (docs/DESIGN-TC-SPLICE.md, "A busy tunnel:
 * strip-freeze"). */
static void drain_start(struct tcs_tunnel *t, uint64_t now)
{
	struct tcs_drain *d;
	struct tcp_info ti[2];
	uint32_t seg[2];

	/* The next drain, should this one not end express, waits longer. */
	t->drain_backoff_ms = t->drain_backoff_ms ? (t->drain_backoff_ms < EXPRESS_DRAIN_BACKOFF_MAX_MS
							     ? 2 * t->drain_backoff_ms
							     : EXPRESS_DRAIN_BACKOFF_MAX_MS)
						  : EXPRESS_DRAIN_BACKOFF_MS;
	t->next_drain_ms = now + t->drain_backoff_ms;
	d = calloc(1, sizeof(*d));
	if (!d) {
		later(t, "out of memory", EXPRESS_DRAIN_BACKOFF_MS);
		return;
	}
	d->v.state = WS_TC_DRAIN;
	if (tcp_infos(t, ti, seg)) {
		free(d);
		refuse(t, "no TCP_INFO", M_EXPRESS_REFUSED_ERROR);
		return;
	}
	if (express_plan(t, &d->v, ti))
		return (void)free(d);
	d->v.dir[WS_DIR_C2U].flags = WS_TC_STRIP;
	if (express_enter(t, &d->v))
		return (void)free(d);
	d->until_ms = now + EXPRESS_DRAIN_MS;
	t->drain = d;
	t->next_try_ms = now + EXPRESS_SCAN_MS;
	note(&tc_dataplane_handovers(t->c->tp)->drains);
	log_debug("tunnel: busy since it began: draining into the express lane (id %u; %d and %d bytes to send)", t->id,
		  queued(t->fd[TUNNEL_END_CLIENT], SIOCOUTQ), queued(t->fd[TUNNEL_END_UPSTREAM], SIOCOUTQ));
}

/* Back on the relay: the entries go, and the peers' retransmissions reach
 * the proxy's sockets again (the next drain waits: drain_start). */
static void drain_thaw(struct tcs_tunnel *t, const char *why)
{
	tc_express_del(t->c->tp, t->id, &t->keys);
	free(t->drain);
	t->drain = NULL;
	later(t, why, EXPRESS_QUIET_MS);
}

/* What a drain that timed out left, for the debug log. */
static void drain_left(const struct tcs_tunnel *t)
{
	char what[256], rel[128];
	size_t n = 0;

	engine_copy.describe(t->relay, rel, sizeof(rel));
	for (int e = 0; e < 2; e++) {
		struct tcp_info ti;
		uint32_t seg;

		memset(&ti, 0, sizeof(ti));
		tcp_info_of(t->fd[e], &ti, &seg);
		n += (size_t)snprintf(what + n, sizeof(what) - n, "%s: state %u unacked %u inq %d outq %d rmem %u; ",
				      e == TUNNEL_END_CLIENT ? "client" : "upstream", ti.tcpi_state, ti.tcpi_unacked,
				      queued(t->fd[e], SIOCINQ), queued(t->fd[e], SIOCOUTQ), rmem_of(t->fd[e]));
		if (n >= sizeof(what))
			break;
	}
	log_debug("tunnel: a drain left %srelay %s", what, rel);
}

/* Not there yet: looked at again at the next scan, or, past the drain's
 * time, thawed for why. */
static void drain_wait(struct tcs_tunnel *t, uint64_t now, const char *why)
{
	if (now < t->drain->until_ms) {
		t->next_try_ms = now + EXPRESS_SCAN_MS;
		return;
	}
	note(&tc_dataplane_handovers(t->c->tp)->drains_timed_out);
	drain_left(t);
	drain_thaw(t, why);
}

static void drain_step(struct tcs_tunnel *t, struct engine_io *io, const struct tunnel_stats *rs, uint64_t now)
{
	struct tcs_drain *d = t->drain;
	struct ws_tc_tunnel v;
	struct tcp_info ti[2];
	uint32_t seg[2];

	if (io->half_closed) {
		drain_thaw(t, "a FIN while draining");
		return;
	}
	if (!(d->v.dir[WS_DIR_U2C].flags & WS_TC_STRIP)) {
		/* First the client's payload alone is cut off, until all it
		 * sent before reached the upstream: the upstream still reads
		 * while its own writes go on. Then the upstream's too: what
		 * it must still take is the relay's buffer at most, and the
		 * client reads what is on its way to it. An upstream that
		 * stops reading while its writes block (an echo loop) would
		 * otherwise leave the proxy's queue to it full for good. */
		if (queued(t->fd[TUNNEL_END_CLIENT], SIOCINQ) || queued(t->fd[TUNNEL_END_UPSTREAM], SIOCOUTQ)) {
			drain_wait(t, now, "what the client sent did not reach the upstream while draining");
			return;
		}
		d->v.dir[WS_DIR_U2C].flags |= WS_TC_STRIP;
		if (tc_express_update(t->c->tp, t->id, &d->v)) {
			drain_thaw(t, "the flow tables refused it");
			return;
		}
		d->until_ms = now + EXPRESS_DRAIN_MS;
	}
	if (!engine_copy.quiet(t->relay) || !still_quiet(t, ti, seg)) {
		drain_wait(t, now, "the queues did not empty while draining");
		return;
	}
	if (windows_short(t, seg, NULL)) {
		drain_thaw(t, "a peer's window is below the other's segments");
		return;
	}
	ack_now(t);
	v = d->v;
	v.state = WS_TC_FROZEN;
	v.dir[0].flags = v.dir[1].flags = 0;
	if (tc_express_update(t->c->tp, t->id, &v)) {
		drain_thaw(t, "the flow tables refused it");
		return;
	}
	free(d);
	t->drain = NULL;
	freeze(t, &v, ti, rs, io);
}

static void try_hand_over(struct tcs_tunnel *t, struct engine_io *io)
{
	struct ws_tc_tunnel v = { .state = WS_TC_FROZEN };
	struct tcp_info ti[2];
	uint32_t seg[2];
	struct tunnel_stats rs;
	uint64_t now = ev_now_ms();
	bool quiet;

	engine_copy.stats(t->relay, &rs);
	if (t->drain) {
		drain_step(t, io, &rs, now);
		return;
	}
	if (!may_repair(t->c)) {
		if (errno == EPERM)
			refuse_no_repair(t, EPERM);
		else
			later(t, "cannot ask for TCP_REPAIR", EXPRESS_DRAIN_BACKOFF_MS);
		return;
	}
	quiet = now >= rs.last_active_ms + EXPRESS_QUIET_MS && engine_copy.quiet(t->relay);
	if (!quiet && !io->half_closed && now >= t->next_drain_ms) {
		drain_start(t, now);
		return;
	}
	if (now < rs.last_active_ms + EXPRESS_QUIET_MS) {
		t->next_try_ms = rs.last_active_ms + EXPRESS_QUIET_MS;
		return;
	}
	if (!quiet) {
		/* A FIN seen, or bytes held for a reader that does not read
		 * yet: looked at less and less often. */
		later(t, "not quiet: a FIN, or bytes held", backoff(t));
		return;
	}
	if (tcp_infos(t, ti, seg)) {
		refuse(t, "no TCP_INFO", M_EXPRESS_REFUSED_ERROR);
		return;
	}
	if (!socket_quiet(t->fd[0], &ti[0]) || !socket_quiet(t->fd[1], &ti[1])) {
		later(t, "bytes in flight", EXPRESS_QUIET_MS);
		return;
	}
	if (express_plan(t, &v, ti) || windows_short(t, seg, "a peer's window is below the other's segments"))
		return;
	ack_now(t);
	if (express_enter(t, &v))
		return;
	freeze(t, &v, ti, &rs, io);
}

/* ---- an express tunnel's end ------------------------------------------- */

static uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static uint32_t sum_bytes(uint32_t sum, const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i + 1 < n; i += 2)
		sum += (uint32_t)b[i] << 8 | b[i + 1];
	if (n & 1)
		sum += (uint32_t)b[n - 1] << 8;
	return sum;
}

/* A reset from the proxy's frozen socket on out leg o, at sequence number
 * at. Repair sockets send nothing of their own, so a raw one does. */
static void send_reset(struct tcs_ctx *c, int family, const struct ws_tc_dir *o, uint32_t at)
{
	uint8_t pkt[60] = { 0 }, *th;
	struct sockaddr_storage to = { 0 };
	socklen_t tolen;
	uint32_t seq = htonl(at), sum;
	size_t l4 = family == 4 ? 20 : 40;
	int *raw = &c->raw[family == 6];
	uint16_t v;

	if (*raw < 0)
		*raw = socket(family == 4 ? AF_INET : AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
	if (*raw < 0) {
		log_warn("express lane: cannot reset a tunnel's peers (a raw socket: %s)", strerror(errno));
		return;
	}
	th = pkt + l4;
	memcpy(th, &o->sport, 2);
	memcpy(th + 2, &o->dport, 2);
	memcpy(th + 4, &seq, 4);
	th[12] = 5 << 4;
	th[13] = 0x04; /* RST */
	if (family == 4) {
		pkt[0] = 0x45;
		v = htons((uint16_t)(l4 + 20));
		memcpy(pkt + 2, &v, 2);
		pkt[8] = 64;
		pkt[9] = IPPROTO_TCP;
		memcpy(pkt + 12, &o->saddr[0], 4);
		memcpy(pkt + 16, &o->daddr[0], 4);
		sum = sum_bytes(0, pkt + 12, 8);
		((struct sockaddr_in *)&to)->sin_family = AF_INET;
		memcpy(&((struct sockaddr_in *)&to)->sin_addr, &o->daddr[0], 4);
		tolen = sizeof(struct sockaddr_in);
	} else {
		pkt[0] = 0x60;
		v = htons(20);
		memcpy(pkt + 4, &v, 2);
		pkt[6] = IPPROTO_TCP;
		pkt[7] = 64;
		memcpy(pkt + 8, o->saddr, 16);
		memcpy(pkt + 24, o->daddr, 16);
		sum = sum_bytes(0, pkt + 8, 32);
		((struct sockaddr_in6 *)&to)->sin6_family = AF_INET6;
		memcpy(&((struct sockaddr_in6 *)&to)->sin6_addr, o->daddr, 16);
		tolen = sizeof(struct sockaddr_in6);
	}
	sum += IPPROTO_TCP + 20;
	v = htons(csum_fold(sum_bytes(sum, th, 20)));
	memcpy(th + 16, &v, 2);
	if (sendto(*raw, pkt, l4 + 20, 0, (struct sockaddr *)&to, tolen) < 0)
		log_warn("express lane: cannot reset a tunnel's peer: %s", strerror(errno));
}

/* The program says how it stands: ended, half-closed, or on. */
static void express_state(struct tcs_tunnel *t, struct engine_io *io)
{
	struct ws_tc_tunnel v;

	if (tc_express_read(t->c->tp, t->id, &v))
		return;
	for (int d = 0; d < 2; d++)
		t->seen_flags[d] = v.dir[d].flags;
	io->half_closed = (v.dir[0].flags | v.dir[1].flags) & WS_TC_FIN_SEEN;
	if (v.state != WS_TC_ENDED)
		return;
	for (int d = 0; d < 2; d++) {
		if (v.dir[d].flags & WS_TC_RST) {
			/* The reset went through to the other peer already; the
			 * frozen sockets close without a word. */
			io->verdict = ENGINE_RESET;
			io->reset_end = dir_src(d);
			return;
		}
	}
	io->verdict = ENGINE_CLOSE;
}

/* Out of the tables; a tunnel still on (a timeout, a stop) resets both
 * peers, which no longer hear from the frozen sockets. */
static void express_end(struct tcs_tunnel *t)
{
	struct ws_tc_tunnel v;
	bool live = !tc_express_read(t->c->tp, t->id, &v) && v.state != WS_TC_ENDED;

	tc_express_del(t->c->tp, t->id, &t->keys);
	/* RFC 5961 takes a reset at exactly the next sequence number the
	 * peer expects: what the program sent on, or, when the last of it is
	 * still on its way, what the peer acknowledged. */
	for (int d = 0; live && d < 2; d++) {
		send_reset(t->c, (int)v.family, &v.dir[d], (uint32_t)v.dir[d].nxt);
		if ((uint32_t)v.dir[d].acked != (uint32_t)v.dir[d].nxt)
			send_reset(t->c, (int)v.family, &v.dir[d], (uint32_t)v.dir[d].acked);
	}
}

/* ---- the engine ---------------------------------------------------------- */

static void *tcs_start(void *ctx, struct tunnel_handoff *h, void *owner, struct engine_io *io)
{
	struct tcs_ctx *c = ctx;
	struct tcs_tunnel *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->relay = engine_copy.start(NULL, h, owner, io);
	if (!t->relay) {
		free(t);
		return NULL;
	}
	t->c = c;
	t->owner = owner;
	t->fd[0] = h->fd[0];
	t->fd[1] = h->fd[1];
	t->next_try_ms = ev_now_ms() + EXPRESS_QUIET_MS;
	t->next_drain_ms = ev_now_ms() + EXPRESS_BUSY_MS;
	TAILQ_INSERT_TAIL(&c->all, t, link);
	return t;
}

static void tcs_event(void *st, int end, uint32_t events, struct engine_io *io)
{
	struct tcs_tunnel *t = st;

	if (!t->express)
		engine_copy.event(t->relay, end, events, io);
}

static void tcs_tick(void *st, struct engine_io *io)
{
	struct tcs_tunnel *t = st;

	if (t->express)
		express_state(t, io);
	else
		try_hand_over(t, io);
}

static void tcs_stop(void *st, struct tunnel_handoff *h)
{
	struct tcs_tunnel *t = st;

	TAILQ_REMOVE(&t->c->all, t, link);
	if (t->drain) {
		tc_express_del(t->c->tp, t->id, &t->keys);
		free(t->drain);
	}
	if (t->express)
		express_end(t);
	else
		engine_copy.stop(t->relay, h);
	free(t);
}

static void tcs_going_away(void *st)
{
	struct tcs_tunnel *t = st;

	if (!t->express)
		engine_copy.going_away(t->relay);
}

static void tcs_stats(void *st, struct tunnel_stats *out)
{
	struct tcs_tunnel *t = st;
	struct ws_tunnel f = { 0 };

	if (!t->express) {
		engine_copy.stats(t->relay, out);
		return;
	}
	out->last_active_ms = t->relay_last_ms;
	if (!tc_express_figures(t->c->tp, t->id, &f) && f.last_active_ns) {
		uint64_t k = kernel_stamp_ms(f.last_active_ns);

		if (k > out->last_active_ms)
			out->last_active_ms = k;
	}
	for (int d = 0; d < 2; d++)
		out->bytes[d] = t->relay_bytes[d] + f.dir[d].bytes;
}

static void tcs_describe(void *st, char *out, size_t len)
{
	struct tcs_tunnel *t = st;
	struct ws_tc_tunnel v;
	size_t n;

	if (!t->express) {
		n = t->drain ? (size_t)snprintf(out, len, "relay, draining (id %u): ", t->id)
			     : (size_t)snprintf(out, len, "relay: ");
		if (n < len)
			engine_copy.describe(t->relay, out + n, len - n);
		return;
	}
	if (tc_express_read(t->c->tp, t->id, &v)) {
		snprintf(out, len, "express id %u: gone", t->id);
		return;
	}
	snprintf(out, len, "express id %u: state %s | c2u: flags=%u | u2c: flags=%u", t->id,
		 v.state == WS_TC_ACTIVE ? "active" : v.state == WS_TC_ENDED ? "ended" : "frozen", v.dir[0].flags,
		 v.dir[1].flags);
}

const struct engine_ops engine_tcsplice = {
	.name = "tcsplice",
	.prepare = tcs_prepare,
	.listen_mtu = tcs_listen_mtu,
	.watch = tcs_watch,
	.release = tcs_release,
	.export_shared = tcs_export,
	.worker_gone = tcs_worker_gone,
	.open = tcs_open,
	.close = tcs_close,
	.start = tcs_start,
	.event = tcs_event,
	.tick = tcs_tick,
	.stop = tcs_stop,
	.going_away = tcs_going_away,
	.stats = tcs_stats,
	.describe = tcs_describe,
};
