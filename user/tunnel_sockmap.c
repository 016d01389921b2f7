/* The in-kernel splice engine: both sockets go into the SOCKHASH maps and
 * the verdict program moves every byte. Before that, what userspace still
 * holds is written out (the drain), and the first byte either end sends
 * inserts the tunnel; afterwards userspace only watches for FIN, RST and
 * pauses. Byte accounting compares the verdict's
 * per-direction count with each socket's TCP counters (docs/KERNEL.md, "FIN
 * and the byte equation"). Everything sockmap-only lives here: tunnel ids,
 * pause state, the kernel's activity stamp, the FIN byte bases. */
#include <errno.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "dataplane.h"
#include "engine.h"
#include "log.h"
#include "metrics.h"

/* tcpi_state values are the kernel's TCP_* states (include/net/tcp_states.h). */
#define TCPI_STATE_CLOSE 7

struct sm_dir {
	struct buf buf;        /* the hand-off's leftovers; bytes finished in userspace */
	bool src_eof;          /* FIN received from the source */
	bool dst_shut;         /* FIN sent to the destination */
	bool paused;           /* out of verdict_map by backpressure (the kernel's pause) */
	bool user_finish;      /* finishing this direction in userspace */
	uint64_t user_read;    /* bytes userspace ever read from the source */
	uint64_t user_written; /* bytes userspace ever wrote to the destination */
	uint64_t payload_from;  /* the value of user_written where the tunnel's payload starts */
};

struct sockmap;

struct sm_tunnel {
	struct sockmap *sm;
	void *owner;           /* the tunnel layer's, for kick() */
	int fd[2];
	uint32_t id;           /* key of the tunnels map */
	bool in_kernel;        /* inserted; until then the drain runs */
	bool broken;           /* the kernel could not deliver a direction intact */
	uint64_t cookie[2];
	/* Bytes each socket had queued for sending when the kernel took over;
	 * what it queued since is what the redirects delivered. */
	uint64_t queued_base[2];
	struct sm_dir dir[2];
	uint64_t last_active_ms; /* userspace's own; the kernel stamps the rest */
};

/* The engine's state in one worker; the data plane is the daemon's. */
struct sockmap {
	struct dataplane *dp;
	struct dataplane_events *de;
	struct ev_loop *loop;
	struct ev_handler events; /* pause requests and completions */
	engine_kick_fn kick;
	uint64_t budget;
	struct sm_tunnel **by_id; /* max_tunnels slots, indexed by id - id_base */
	uint32_t max_tunnels;
	uint32_t id_base;         /* worker * max_tunnels: the ids are the worker's own */
	uint32_t next_id;
	/* An upgrade brings tunnels the old process inserted: until they all
	 * came, an id may be held in the kernel's map by one still on its way,
	 * and the old process may still read the event ring (an event about a
	 * tunnel of this one would be lost). */
	bool arriving;
};

static const char *dir_name(int d)
{
	return d == WS_DIR_C2U ? "client->upstream" : "upstream->client";
}

/* Userspace wrote n bytes of direction d (the drain, or a finish after FIN). */
static void user_wrote(struct sm_dir *dd, int d, ssize_t n)
{
	metrics_add(d == WS_DIR_C2U ? M_USER_BYTES_C2U : M_USER_BYTES_U2C,
		    payload_part(dd->user_written, n, dd->payload_from));
	dd->user_written += n;
}

static void tcp_info_of(int fd, struct tcp_info *ti)
{
	socklen_t len = sizeof(*ti);

	memset(ti, 0, sizeof(*ti));
	getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &len);
}

static uint64_t bytes_acked(int fd)
{
	struct tcp_info ti;

	tcp_info_of(fd, &ti);
	return ti.tcpi_bytes_acked;
}

/* Every byte ever queued for sending on fd (acknowledged or not). The two
 * reads are not atomic: an ACK between them moves bytes from the queue to
 * the acked count unseen, and a low base would later declare bytes sent
 * that still sit in the psock queue (a FIN sent ahead of them). So read
 * until no ACK came in between. */
static uint64_t bytes_queued(int fd)
{
	uint64_t acked = bytes_acked(fd), again;
	int outq = 0;

	for (int i = 0; i < 16; i++, acked = again) {
		ioctl(fd, SIOCOUTQ, &outq);
		again = bytes_acked(fd);
		if (again == acked)
			break;
	}
	return acked + (uint64_t)outq;
}

static int tcp_state(int fd)
{
	struct tcp_info ti;

	tcp_info_of(fd, &ti);
	return ti.tcpi_state;
}

static uint64_t bytes_received(int fd)
{
	struct tcp_info ti;

	tcp_info_of(fd, &ti);
	return ti.tcpi_bytes_received;
}

/* Redirected bytes of direction d that have not yet reached the
 * destination socket's send queue: they sit in its psock queue. */
static uint64_t inflight(struct sm_tunnel *t, int d, const struct ws_tunnel *tv)
{
	int dst = dir_dst(d);
	uint64_t sent = bytes_queued(t->fd[dst]) - t->queued_base[dst];

	return tv->dir[d].bytes > sent ? tv->dir[d].bytes - sent : 0;
}

static bool needs_ticks(const struct sm_tunnel *t)
{
	for (int d = 0; d < 2; d++)
		if (!t->dir[d].dst_shut && (t->dir[d].src_eof || t->dir[d].paused))
			return true;
	return false;
}

static bool half_closed(const struct sm_tunnel *t)
{
	return t->dir[0].src_eof || t->dir[1].src_eof || t->dir[0].dst_shut || t->dir[1].dst_shut;
}

static void set_reset(struct engine_io *io, int end)
{
	io->verdict = ENGINE_RESET;
	io->reset_end = end;
}

/* After FIN on a paused source: the kernel delivered everything it took,
 * so copy what is left in the source's receive queue ourselves. */
static int finish_in_userspace(struct sm_tunnel *t, int d)
{
	struct sm_dir *dd = &t->dir[d];
	int src = t->fd[dir_src(d)], dst = t->fd[dir_dst(d)];

	for (;;) {
		ssize_t n;

		if (buf_len(&dd->buf)) {
			n = buf_write_fd(&dd->buf, dst);
			if (n < 0)
				return errno == EAGAIN ? 0 : -1;
			user_wrote(dd, d, n);
			continue;
		}
		if (!dd->user_finish)
			break;
		n = buf_read_fd(&dd->buf, src);
		if (n > 0) {
			dd->user_read += n;
			continue;
		}
		if (n == 0) {
			dd->user_finish = false; /* source fully read */
			continue;
		}
		return errno == EAGAIN ? 0 : -1;
	}
	buf_release(&dd->buf);
	shutdown(dst, SHUT_WR);
	dd->dst_shut = true;
	log_debug("tunnel %u: %s FIN passed on from userspace (%llu bytes read there, %llu written)", t->id,
		  dir_name(d), (unsigned long long)dd->user_read, (unsigned long long)dd->user_written);
	return 1;
}

/* Returns 1 on progress, 0 on none, -1 when the destination must be
 * reset, -2 when the direction broke in the kernel (reset both ends). */
static int progress_dir(struct sm_tunnel *t, int d, const struct ws_tunnel *tv)
{
	struct sm_dir *dd = &t->dir[d];
	int src = dir_src(d), dst = dir_dst(d);
	uint64_t pending;

	/* A direction that is flowing needs nothing from us: skip the three
	 * system calls of inflight() on this per-event path. */
	if (dd->dst_shut || (!dd->paused && !dd->src_eof && !dd->user_finish && !buf_len(&dd->buf)))
		return 0;
	/* Paused, half-closed or about to be read here: a break the ring could
	 * not report (it was full) is found now, before userspace reads a byte
	 * of a stream with a hole in it. */
	if (dataplane_link_broken(t->sm->dp, t->cookie[src])) {
		t->broken = true;
		log_error("tunnel %u: %s broke in the kernel (a failed trim): resetting both ends", t->id,
			  dir_name(d));
		return -2;
	}
	pending = inflight(t, d, tv);
	if (dd->paused && pending <= t->sm->budget / 2) {
		dd->paused = false;
		log_debug("tunnel %u: resumed at %llu bytes in flight", t->id, (unsigned long long)pending);
		if (dataplane_resume(t->sm->dp, t->fd[src], t->cookie[src]) < 0) {
			/* Not ESTABLISHED any more: the source sent FIN while paused. */
			log_debug("tunnel %u: resume failed (%s): finishing in userspace", t->id, strerror(errno));
			dd->src_eof = true;
			dd->user_finish = true;
		}
	}
	if (dd->paused)
		return 0;
	if (dd->user_finish || buf_len(&dd->buf))
		return pending ? 0 : finish_in_userspace(t, d);
	if (!dd->src_eof || pending)
		return 0;
	/* FIN seen: shut the destination only once the verdict has taken every
	 * byte before the FIN and all of them left the psock queue. */
	if (tv->dir[d].bytes + dd->user_read + 1 != bytes_received(t->fd[src]))
		return 0;
	shutdown(t->fd[dst], SHUT_WR);
	dd->dst_shut = true;
	log_debug("tunnel %u: %s FIN passed on after %llu bytes redirected, %llu read in userspace", t->id,
		  dir_name(d), (unsigned long long)tv->dir[d].bytes, (unsigned long long)dd->user_read);
	return 1;
}

static void sockmap_progress(struct sm_tunnel *t, struct engine_io *io)
{
	struct ws_tunnel tv;

	if (t->broken) {
		io->verdict = ENGINE_ABORT;
		return;
	}
	if (dataplane_tunnel_read(t->sm->dp, t->id, &tv) < 0) {
		log_warn("tunnel %u: map entry missing: %s", t->id, strerror(errno));
		io->verdict = ENGINE_CLOSE;
		return;
	}
	for (int d = 0; d < 2; d++) {
		int r = progress_dir(t, d, &tv);

		if (r == -2) {
			io->verdict = ENGINE_ABORT;
			return;
		}
		if (r < 0) {
			set_reset(io, dir_dst(d));
			return;
		}
	}
	if (t->dir[0].dst_shut && t->dir[1].dst_shut) {
		io->verdict = ENGINE_CLOSE;
		return;
	}
	io->tick = needs_ticks(t);
	io->half_closed = half_closed(t);
}

static struct sm_tunnel **slot(struct sockmap *sm, uint32_t id)
{
	return id - sm->id_base < sm->max_tunnels ? &sm->by_id[id - sm->id_base] : NULL;
}

static int alloc_id(struct sockmap *sm, uint32_t *id)
{
	for (uint32_t i = 0; i < sm->max_tunnels; i++) {
		uint32_t cand = (sm->next_id + i) % sm->max_tunnels;

		if (!sm->by_id[cand]) {
			*id = sm->id_base + cand;
			sm->next_id = cand + 1;
			return 0;
		}
	}
	errno = ENOSPC;
	return -1;
}

/* The kick of the gate/insert/kick procedure is inside dataplane_tunnel_add. */
static void insert(struct sm_tunnel *t, struct engine_io *io)
{
	struct sockmap *sm = t->sm;
	bool flowing[2];

	if (sm->arriving) { /* the copy relay carries it: an upgrade is bringing the old process's tunnels */
		errno = EAGAIN;
		goto fallback;
	}
	if (alloc_id(sm, &t->id) < 0)
		goto fallback;
	for (int e = 0; e < 2; e++) {
		t->cookie[e] = socket_cookie(t->fd[e]);
		/* Every byte queued on the socket so far is one userspace wrote
		 * (the drain flushed them all), and tcpi_bytes_acked counts the
		 * SYN of a connected socket (KERNEL-LOG.md, "TCP's byte counters"):
		 * no need to ask the kernel (six system calls per handshake).
		 * Checked against bytes_queued() on every insertion of the
		 * suite, pooled upstream connections included. */
		t->queued_base[e] = t->dir[1 - end_dir(e)].user_written + (e == TUNNEL_END_UPSTREAM);
	}
	if (dataplane_tunnel_add(sm->dp, t->id, t->fd, t->cookie, flowing) < 0)
		goto fallback;
	*slot(sm, t->id) = t;
	t->in_kernel = true;
	metrics_inc(M_SOCKMAP_INSERTIONS);
	for (int e = 0; e < 2; e++) {
		int d = end_dir(e);

		if (!flowing[e]) {
			log_debug("tunnel %u: %s sent FIN during insertion: finishing it in userspace", t->id,
				  e == TUNNEL_END_CLIENT ? "client" : "upstream");
			t->dir[d].src_eof = t->dir[d].user_finish = true;
		}
		io->want[e] = flowing[e] ? EPOLLRDHUP : EPOLLERR;
	}
	log_debug("tunnel %u spliced in the kernel (userspace moved %llu bytes client->upstream, %llu upstream->client)",
		  t->id, (unsigned long long)t->dir[WS_DIR_C2U].user_read, (unsigned long long)t->dir[WS_DIR_U2C].user_read);
	sockmap_progress(t, io);
	return;
fallback:
	/* EOPNOTSUPP: a FIN arrived since the drain (a client that closes
	 * right after the 101), not worth a line. */
	metrics_inc(errno == EOPNOTSUPP ? M_FALLBACK_FIN_DURING_INSERTION
				: errno == ENOSPC ? M_FALLBACK_NO_TUNNEL_ID
				: errno == EAGAIN ? M_FALLBACK_UPGRADE : M_FALLBACK_ERROR);
	if (errno == EAGAIN)
		log_info("tunnel falls back to the copy relay: an upgrade is taking the old process's tunnels over");
	else if (errno == EOPNOTSUPP)
		log_debug("tunnel falls back to the copy relay: %s", strerror(errno));
	else
		log_warn("tunnel falls back to the copy relay: %s", strerror(errno));
	io->verdict = ENGINE_FALLBACK;
}

/* The sockmap precondition: every byte userspace read is written out, or
 * the verdict would overtake it. What is still in the receive queues, an skb
 * read in part included, is left to the kernel: the kick verdicts it and the
 * verdict cuts off the part already read (docs/KERNEL.md, "the trim").
 * Reading on until both queues were empty at once never converged against a
 * peer that sends right after the 101: the whole transfer went through this
 * loop (KERNEL-LOG.md, "the drain reads nothing"). */
static void drain(struct sm_tunnel *t, struct engine_io *io)
{
	bool flushed = true;
	int reset_end = -1;

	/* Upstream to client first: on a reset of either end the client still
	 * gets the 101 and what came with it, if it can take them. */
	for (int d = WS_DIR_U2C; d >= WS_DIR_C2U; d--) {
		struct sm_dir *dd = &t->dir[d];
		int dst = dir_dst(d);

		while (buf_len(&dd->buf)) {
			ssize_t n = buf_write_fd(&dd->buf, t->fd[dst]);

			if (n < 0) {
				if (errno != EAGAIN && reset_end < 0)
					reset_end = dst;
				break;
			}
			user_wrote(dd, d, n);
		}
		/* Nobody reads during the drain: what arrives waits in the kernel. */
		io->want[dst] = buf_len(&dd->buf) ? EPOLLOUT : EPOLLERR;
		flushed &= !buf_len(&dd->buf);
	}
	if (reset_end >= 0) {
		set_reset(io, reset_end);
		return;
	}
	if (!flushed)
		return;
	for (int d = 0; d < 2; d++)
		buf_release(&t->dir[d].buf);
	/* Armed: the first byte from either end inserts the tunnel, a FIN
	 * before any byte hands it to the copy relay (docs/KERNEL.md,
	 * "Insertion on the first byte"). Level-triggered, so a byte that came
	 * during the drain fires at once. */
	for (int e = 0; e < 2; e++)
		io->want[e] = EPOLLIN | EPOLLRDHUP;
}

/* Drained, not yet inserted: waiting for a first byte. */
static bool armed(const struct sm_tunnel *t)
{
	return !t->in_kernel && !buf_len(&t->dir[0].buf) && !buf_len(&t->dir[1].buf);
}

/* An event before insertion. A tunnel that closes without carrying a byte
 * (a connect, upgrade and close) never pays for a psock: the kernel's
 * set-up and teardown cost more than the copy relay's whole life of it. */
static void before_insertion(struct sm_tunnel *t, int end, uint32_t events, struct engine_io *io)
{
	if ((events & (EPOLLERR | EPOLLHUP)) && sock_error(t->fd[end])) {
		set_reset(io, end);
		return;
	}
	if (!armed(t)) {
		drain(t, io);
		return;
	}
	if (events & (EPOLLRDHUP | EPOLLHUP)) {
		log_debug("tunnel: %s FIN before any payload: the copy relay finishes the tunnel",
			  end == TUNNEL_END_CLIENT ? "client" : "upstream");
		metrics_inc(M_FALLBACK_FIN_BEFORE_PAYLOAD);
		io->verdict = ENGINE_FALLBACK;
		return;
	}
	insert(t, io);
}

static void sockmap_event(void *st, int end, uint32_t events, struct engine_io *io)
{
	struct sm_tunnel *t = st;
	int d = end_dir(end);

	if (!t->in_kernel) {
		before_insertion(t, end, events, io);
		return;
	}
	if (events & (EPOLLERR | EPOLLHUP)) {
		int err = sock_error(t->fd[end]);

		/* EPIPE alone is the verdict "forwarding" a zero-length FIN skb
		 * to this socket after its peer's FIN: not a reset. But an RST
		 * on a socket in CLOSE_WAIT also reads as EPIPE, so the state
		 * decides: CLOSED before we sent our FIN on it means a reset
		 * (after our FIN it is the normal LAST_ACK -> CLOSE). */
		bool sent_fin = t->dir[1 - d].dst_shut;

		if ((err && err != EPIPE) || (!sent_fin && tcp_state(t->fd[end]) == TCPI_STATE_CLOSE)) {
			log_debug("tunnel %u: %s end reset (%s)", t->id, end == TUNNEL_END_CLIENT ? "client" : "upstream",
				  strerror(err ? err : ECONNRESET));
			set_reset(io, end);
			return;
		}
	}
	if (events & (EPOLLRDHUP | EPOLLHUP))
		t->dir[d].src_eof = true;
	/* RDHUP stays readable; HUP cannot be masked at all. */
	io->want[end] = (events & EPOLLHUP) ? 0 : t->dir[d].src_eof ? EPOLLERR : EPOLLRDHUP;
	sockmap_progress(t, io);
}

static void sockmap_tick(void *st, struct engine_io *io)
{
	struct sm_tunnel *t = st;

	if (t->in_kernel)
		sockmap_progress(t, io);
}

static void *sockmap_start(void *ctx, struct tunnel_handoff *h, void *owner, struct engine_io *io)
{
	struct sm_tunnel *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->sm = ctx;
	t->owner = owner;
	t->last_active_ms = ev_now_ms();
	for (int e = 0; e < 2; e++)
		t->fd[e] = h->fd[e];
	for (int d = 0; d < 2; d++) {
		struct sm_dir *dd = &t->dir[d];

		dd->buf = h->queue[d];
		buf_init(&h->queue[d], 0);
		dd->user_read = h->read[d];
		dd->user_written = h->written[d];
		dd->payload_from = h->payload_from[d];
	}
	drain(t, io);
	return t;
}

static void sockmap_stop(void *st, struct tunnel_handoff *h)
{
	struct sm_tunnel *t = st;

	if (t->in_kernel) {
		dataplane_tunnel_del(t->sm->dp, t->id, t->cookie);
		*slot(t->sm, t->id) = NULL;
	}
	for (int d = 0; d < 2; d++) {
		if (h) {
			h->queue[d] = t->dir[d].buf;
			h->read[d] = t->dir[d].user_read;
			h->written[d] = t->dir[d].user_written;
			h->payload_from[d] = t->dir[d].payload_from;
		} else {
			buf_release(&t->dir[d].buf);
		}
	}
	free(t);
}

/* An upgrade: what the new process needs besides the hand-off. */
struct sm_saved {
	uint32_t id;
	bool in_kernel, broken;
	uint64_t cookie[2], queued_base[2];
	bool src_eof[2], dst_shut[2], paused[2], user_finish[2];
};

/* The tunnel leaves this process; its map entries stay, and so does the
 * kernel's work on it. */
static void sockmap_hand_over(void *st, struct tunnel_handoff *h, struct engine_saved *saved)
{
	struct sm_tunnel *t = st;
	struct sm_saved ss = { .id = t->id, .in_kernel = t->in_kernel, .broken = t->broken };

	saved->nfds = 0;
	saved->len = 0;
	if (t->in_kernel) {
		for (int i = 0; i < 2; i++) {
			ss.cookie[i] = t->cookie[i];
			ss.queued_base[i] = t->queued_base[i];
			ss.src_eof[i] = t->dir[i].src_eof;
			ss.dst_shut[i] = t->dir[i].dst_shut;
			ss.paused[i] = t->dir[i].paused;
			ss.user_finish[i] = t->dir[i].user_finish;
		}
		memcpy(saved->state, &ss, sizeof(ss));
		saved->len = sizeof(ss);
		*slot(t->sm, t->id) = NULL;
		t->in_kernel = false; /* so stop() leaves the maps alone */
	}
	sockmap_stop(t, h);
}

/* Not inserted yet: it starts here as a new one (the drain, then the first
 * byte inserts it). Inserted: it goes on where it stood. */
static void *sockmap_take_over(void *ctx, struct tunnel_handoff *h, struct engine_saved *saved, void *owner,
			       struct engine_io *io)
{
	struct sockmap *sm = ctx;
	struct sm_tunnel *t, **at;
	struct sm_saved ss;

	if (!saved->len)
		return sockmap_start(ctx, h, owner, io);
	memcpy(&ss, saved->state, sizeof(ss));
	at = saved->len == sizeof(ss) ? slot(sm, ss.id) : NULL;
	if (!at || *at) {
		log_error("sockmap: a tunnel came with id %u, %s", ss.id, at ? "which is in use" : "not this worker's");
		return NULL;
	}
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->sm = sm;
	t->owner = owner;
	t->id = ss.id;
	t->in_kernel = true;
	t->broken = ss.broken;
	t->last_active_ms = ev_now_ms();
	for (int i = 0; i < 2; i++) {
		struct sm_dir *dd = &t->dir[i];

		t->fd[i] = h->fd[i];
		t->cookie[i] = ss.cookie[i];
		t->queued_base[i] = ss.queued_base[i];
		dd->buf = h->queue[i];
		buf_init(&h->queue[i], 0);
		dd->user_read = h->read[i];
		dd->user_written = h->written[i];
		dd->payload_from = h->payload_from[i];
		dd->src_eof = ss.src_eof[i];
		dd->dst_shut = ss.dst_shut[i];
		dd->paused = ss.paused[i];
		dd->user_finish = ss.user_finish[i];
	}
	*at = t;
	for (int e = 0; e < 2; e++)
		io->want[e] = t->dir[end_dir(e)].src_eof ? EPOLLERR : EPOLLRDHUP;
	sockmap_progress(t, io);
	return t;
}

static void sockmap_upgrade(void *ctx, enum engine_upgrade phase)
{
	struct sockmap *sm = ctx;

	sm->arriving = phase == ENGINE_UPGRADE_ARRIVING;
	/* One reader of the ring at a time: the old process until its
	 * tunnels leave, then the new one, which finds what came meanwhile. */
	ev_watch(sm->loop, &sm->events, phase == ENGINE_UPGRADE_ARRIVED ? EPOLLIN : 0);
	if (phase == ENGINE_UPGRADE_ARRIVED)
		dataplane_events_poll(sm->de);
}

static void sockmap_stats(void *st, struct tunnel_stats *out)
{
	struct sm_tunnel *t = st;
	struct ws_tunnel tv = { 0 };

	out->last_active_ms = t->last_active_ms;
	if (t->in_kernel && !dataplane_tunnel_read(t->sm->dp, t->id, &tv) && tv.last_active_ns) {
		uint64_t k = kernel_stamp_ms(tv.last_active_ns);

		if (k > out->last_active_ms)
			out->last_active_ms = k;
	}
	for (int d = 0; d < 2; d++)
		out->bytes[d] = tv.dir[d].bytes + payload_part(0, t->dir[d].user_written, t->dir[d].payload_from);
}

static void sockmap_describe(void *st, char *out, size_t len)
{
	struct sm_tunnel *t = st;
	struct ws_tunnel tv = { 0 };
	size_t n;

	if (t->in_kernel)
		dataplane_tunnel_read(t->sm->dp, t->id, &tv);
	/* An id is given at insertion: before it, there is none to show. */
	if (t->in_kernel)
		n = snprintf(out, len, "id %u", t->id);
	else
		n = snprintf(out, len, "%s", armed(t) ? "armed: no byte yet" : "draining");
	for (int d = 0; d < 2 && n < len; d++) {
		const struct sm_dir *dd = &t->dir[d];

		n += snprintf(out + n, len - n,
			      " | %s: eof=%d shut=%d paused=%d user=%d kernel=%llu user_read=%llu rx=%llu inflight=%llu",
			      d == WS_DIR_C2U ? "c2u" : "u2c", dd->src_eof, dd->dst_shut, dd->paused,
			      dd->user_finish, (unsigned long long)tv.dir[d].bytes, (unsigned long long)dd->user_read,
			      (unsigned long long)bytes_received(t->fd[dir_src(d)]),
			      (unsigned long long)(t->in_kernel ? inflight(t, d, &tv) : 0));
	}
}

/* The kernel paused a direction: its bytes piled up in the destination's
 * psock queue, and its source left verdict_map at a safe point (bpf/
 * splice.bpf.c, "the pause"). */
static void on_paused(struct sm_tunnel *t, const struct ws_event *ev)
{
	struct sm_dir *dd = &t->dir[ev->dir & 1];

	if (dd->dst_shut)
		return;
	dd->paused = true;
	log_debug("tunnel %u: %s paused in %llu us (%llu bytes in flight when asked)", t->id, dir_name(ev->dir & 1),
		  (unsigned long long)(ev->waited_ns / 1000), (unsigned long long)ev->inflight);
}

/* The cookie tells a reused tunnel id from the tunnel the event is about. */
static void on_event(void *ctx, const struct ws_event *ev)
{
	struct sockmap *sm = ctx;
	struct sm_tunnel **at = slot(sm, ev->tunnel_id);
	struct sm_tunnel *t = at ? *at : NULL;

	if (!t || t->cookie[dir_src(ev->dir & 1)] != ev->cookie)
		return;
	if (ev->kind == WS_EV_PAUSED) {
		on_paused(t, ev);
	} else if (ev->kind == WS_EV_BROKEN && !t->broken) {
		/* The verdict drops the rest of that direction: a reset is the
		 * honest end, where the stream goes on with a hole or bytes
		 * twice (bpf/splice.bpf.c, "the trim"). */
		t->broken = true;
		log_error("tunnel %u: the kernel could not cut already-delivered bytes off a segment %s (%s): "
			  "resetting both ends rather than deliver a byte twice",
			  t->id, dir_name(ev->dir & 1), ev->err ? strerror(-ev->err) : "error unknown");
	} else {
		return;
	}
	sm->kick(t->owner);
}

/* Only sockets of these ports get the kernel's header callback, so only
 * they can be paused: the listeners' (local) and the servers' (remote). */
static int flag_ports(struct dataplane *dp, const struct config *cfg)
{
	int err = 0;

	for (size_t i = 0; i < cfg->n_listeners; i++)
		err |= dataplane_flag_port(dp, (uint16_t)atoi(cfg->listeners[i].ep.port), false);
	for (size_t p = 0; p < cfg->n_pools; p++)
		for (size_t i = 0; i < cfg->pools[p].n_servers; i++)
			err |= dataplane_flag_port(dp, (uint16_t)atoi(cfg->pools[p].servers[i].ep.port), true);
	return err ? -1 : 0;
}

static void sockmap_reload(void *ctx, const struct config *cfg)
{
	if (flag_ports(((struct sockmap *)ctx)->dp, cfg))
		log_error("sockmap: cannot add the new upstream ports to flag_ports: %s", strerror(errno));
}

/* The bytes and skbs the verdict redirected, summed with other engines'. */
static int sockmap_carried(void *ctx, uint64_t bytes[2], uint64_t packets[2])
{
	uint64_t max;

	for (int d = 0; d < 2; d++)
		if (dataplane_counter(ctx, WS_CNT_BYTES_C2U + d, &bytes[d], &max) ||
		    dataplane_counter(ctx, WS_CNT_PACKETS_C2U + d, &packets[d], &max))
			return -1;
	return 0;
}

/* The kernel's figures, read at scrape time: per-CPU sums, so one read
 * counts every tunnel the verdict ever carried, closed ones included. */
static void sockmap_metrics(void *ctx, FILE *out)
{
	struct dataplane *dp = ctx;
	static const struct {
		enum ws_counter idx;
		const char *name;
	} events[] = {
		{ WS_CNT_PAUSE_REQUESTS, "pause_requests" }, { WS_CNT_PAUSES, "pauses" },
		{ WS_CNT_PAUSE_DEFERRED, "pause_deferred" }, { WS_CNT_OVERLAP_SKBS, "overlap_skbs" },
		{ WS_CNT_OVERLAP_BYTES, "overlap_bytes" },   { WS_CNT_TRIM_FAILED, "trim_failed" },
		{ WS_CNT_BROKEN_DROPS, "broken_drops" },     { WS_CNT_NO_LINK, "no_link" },
		{ WS_CNT_NO_PEER, "no_peer" },               { WS_CNT_UNFLAGGED, "unflagged" },
	};
	uint64_t v, max;

	fputs("# HELP wsplice_bpf_events_total Events the data plane counts (docs/KERNEL.md).\n"
	      "# TYPE wsplice_bpf_events_total counter\n",
	      out);
	for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++)
		if (!dataplane_counter(dp, events[i].idx, &v, &max))
			fprintf(out, "wsplice_bpf_events_total{event=\"%s\"} %llu\n", events[i].name, (unsigned long long)v);
	fputs("# HELP wsplice_bpf_overlap_max_bytes The largest overlap the verdict cut off one skb.\n"
	      "# TYPE wsplice_bpf_overlap_max_bytes gauge\n",
	      out);
	if (!dataplane_counter(dp, WS_CNT_OVERLAP_MAX, &v, &max))
		fprintf(out, "wsplice_bpf_overlap_max_bytes %llu\n", (unsigned long long)max);
}

static void on_dataplane_event(struct ev_handler *h, uint32_t events)
{
	(void)events;
	dataplane_events_poll(container_of(h, struct sockmap, events)->de);
}

/* The daemon's: load, attach and pin the data plane for every worker. */
static void *sockmap_prepare(const struct config *cfg, char *why, size_t whylen)
{
	struct dataplane *dp =
		dataplane_open(cfg->bpffs, cfg->tunnel_buffer, cfg->max_tunnels, cfg->workers, why, whylen);

	if (!dp)
		return NULL;
	if (flag_ports(dp, cfg)) {
		snprintf(why, whylen, "cannot fill flag_ports: %s", strerror(errno));
		dataplane_close(dp);
		return NULL;
	}
	/* Scrapes are answered by this process. */
	metrics_collector_add(sockmap_metrics, dp);
	metrics_kernel_add(sockmap_carried, dp);
	log_info("sockmap: BPF maps pinned in %s", cfg->bpffs);
	return dp;
}

static int sockmap_export(void *shared, int *fds, size_t cap)
{
	return dataplane_export(shared, fds, cap);
}

static void sockmap_disown(void *shared)
{
	dataplane_disown(shared);
}

static void sockmap_own(void *shared)
{
	dataplane_own(shared);
}

/* The new process of an upgrade: the running data plane, as it is. */
static void *sockmap_adopt(const struct config *cfg, const int *fds, size_t n, char *why, size_t whylen)
{
	struct dataplane *dp =
		dataplane_adopt(cfg->bpffs, cfg->tunnel_buffer, cfg->max_tunnels, cfg->workers, fds, n, why, whylen);

	if (!dp) {
		for (size_t i = 0; i < n; i++)
			close(fds[i]);
		return NULL;
	}
	if (flag_ports(dp, cfg))
		log_error("sockmap: cannot add the new upstream ports to flag_ports: %s", strerror(errno));
	metrics_collector_add(sockmap_metrics, dp);
	metrics_kernel_add(sockmap_carried, dp);
	log_info("sockmap: the running data plane adopted (maps pinned in %s)", cfg->bpffs);
	return dp;
}

static void sockmap_release(void *shared)
{
	metrics_collector_del(sockmap_metrics, shared);
	metrics_kernel_del(sockmap_carried, shared);
	/* Closing the maps' owner detaches the verdict and removes the pins. */
	dataplane_close(shared);
}

/* Its sockets closed with it and left the SOCKHASHes; its entries in the
 * plain hashes are still there. */
static void sockmap_worker_gone(void *shared, uint32_t worker)
{
	int n = dataplane_forget_worker(shared, worker);

	if (n)
		log_info("sockmap: %d tunnels of worker %u left the maps", n, worker);
}

static void sockmap_close(void *ctx)
{
	struct sockmap *sm = ctx;

	if (sm->events.fd > 0)
		ev_watch(sm->loop, &sm->events, 0);
	dataplane_events_close(sm->de);
	free(sm->by_id);
	free(sm);
}

static void *sockmap_open(const struct config *cfg, void *shared, uint32_t worker, struct ev_loop *loop,
			  engine_kick_fn kick, char *why, size_t whylen)
{
	struct sockmap *sm = calloc(1, sizeof(*sm));

	if (!sm || !(sm->by_id = calloc(cfg->max_tunnels, sizeof(*sm->by_id)))) {
		free(sm);
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	sm->dp = shared;
	sm->max_tunnels = cfg->max_tunnels;
	sm->id_base = worker * cfg->max_tunnels;
	sm->loop = loop;
	sm->kick = kick;
	sm->budget = cfg->tunnel_buffer;
	sm->de = dataplane_events_open(sm->dp, worker, on_event, sm, why, whylen);
	if (!sm->de) {
		sockmap_close(sm);
		return NULL;
	}
	sm->events.fd = dataplane_events_fd(sm->de);
	sm->events.on_event = on_dataplane_event;
	if (ev_watch(loop, &sm->events, EPOLLIN)) {
		snprintf(why, whylen, "cannot watch the data plane's events: %s", strerror(errno));
		sockmap_close(sm);
		return NULL;
	}
	return sm;
}

const struct engine_ops engine_sockmap = {
	.name = "sockmap",
	.prepare = sockmap_prepare,
	.release = sockmap_release,
	.export_shared = sockmap_export,
	.disown = sockmap_disown,
	.own = sockmap_own,
	.adopt = sockmap_adopt,
	.worker_gone = sockmap_worker_gone,
	.open = sockmap_open,
	.close = sockmap_close,
	.reload = sockmap_reload,
	.start = sockmap_start,
	.event = sockmap_event,
	.tick = sockmap_tick,
	.stop = sockmap_stop,
	.hand_over = sockmap_hand_over,
	.take_over = sockmap_take_over,
	.upgrade = sockmap_upgrade,
	.stats = sockmap_stats,
	.describe = sockmap_describe,
};
