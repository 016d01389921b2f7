/* The in-kernel splice: both sockets go into the SOCKHASH maps and the
 * verdict program moves every byte. Userspace only watches for FIN, RST and
 * pause requests. Byte accounting compares the verdict's per-direction count
 * with each socket's TCP counters (docs/KERNEL.md §3). */
#include <errno.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include "dataplane.h"
#include "log.h"
#include "tunnel.h"

/* tcpi_state values are the kernel's TCP_* states (include/net/tcp_states.h). */
#define TCPI_STATE_CLOSE 7

static void sockmap_progress(struct tunnel *t);

static const char *dir_name(int d)
{
	return d == WS_DIR_C2U ? "client->upstream" : "upstream->client";
}

static uint64_t bytes_acked(int fd)
{
	struct tcp_info ti = { 0 };
	socklen_t len = sizeof(ti);

	getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len);
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
	struct tcp_info ti = { 0 };
	socklen_t len = sizeof(ti);

	getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len);
	return ti.tcpi_state;
}

static uint64_t bytes_received(int fd)
{
	struct tcp_info ti = { 0 };
	socklen_t len = sizeof(ti);

	getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len);
	return ti.tcpi_bytes_received;
}

/* Redirected bytes of direction d that have not yet reached the
 * destination socket's send queue: they sit in its psock queue. */
static uint64_t inflight(struct tunnel *t, int d, const struct ws_tunnel *tv)
{
	int dst = dir_dst(d);
	uint64_t sent = bytes_queued(t->ep[dst].fd) - t->queued_base[dst];

	return tv->dir[d].bytes > sent ? tv->dir[d].bytes - sent : 0;
}

static bool needs_ticks(const struct tunnel *t)
{
	for (int d = 0; d < 2; d++)
		if (!t->dir[d].dst_shut && (t->dir[d].src_eof || t->dir[d].paused))
			return true;
	return false;
}

/* After FIN on a paused source: the kernel delivered everything it took,
 * so copy what is left in the source's receive queue ourselves. */
static int finish_in_userspace(struct tunnel *t, int d)
{
	struct tunnel_dir *dd = &t->dir[d];
	int src = t->ep[dir_src(d)].fd, dst = t->ep[dir_dst(d)].fd;

	for (;;) {
		ssize_t n;

		if (buf_len(&dd->buf)) {
			n = buf_write_fd(&dd->buf, dst);
			if (n < 0)
				return errno == EAGAIN ? 0 : -1;
			dd->user_written += n;
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

static int progress_dir(struct tunnel *t, int d, const struct ws_tunnel *tv)
{
	struct tunnel_dir *dd = &t->dir[d];
	int src = dir_src(d), dst = dir_dst(d);
	uint64_t pending;

	/* A direction that is flowing needs nothing from us: skip the three
	 * system calls of inflight() on this per-event path. */
	if (dd->dst_shut || (!dd->paused && !dd->src_eof && !dd->user_finish && !buf_len(&dd->buf)))
		return 0;
	pending = inflight(t, d, tv);
	if (dd->paused && pending <= t->px->cfg->tunnel_buffer / 2) {
		dd->paused = false;
		log_debug("tunnel %u: resumed at %llu bytes in flight", t->id, (unsigned long long)pending);
		if (dataplane_resume(t->px->dp, t->ep[src].fd, t->cookie[src]) < 0) {
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
	if (tv->dir[d].bytes + dd->user_read + 1 != bytes_received(t->ep[src].fd))
		return 0;
	shutdown(t->ep[dst].fd, SHUT_WR);
	dd->dst_shut = true;
	log_debug("tunnel %u: %s FIN passed on after %llu bytes redirected, %llu read in userspace", t->id,
		  dir_name(d), (unsigned long long)tv->dir[d].bytes, (unsigned long long)dd->user_read);
	return 1;
}

static void sockmap_progress(struct tunnel *t)
{
	struct ws_tunnel tv;

	if (dataplane_tunnel_read(t->px->dp, t->id, &tv) < 0) {
		log_warn("tunnel %u: map entry missing: %s", t->id, strerror(errno));
		tunnel_close(t, -1);
		return;
	}
	for (int d = 0; d < 2; d++) {
		if (progress_dir(t, d, &tv) < 0) {
			tunnel_close(t, dir_dst(d));
			return;
		}
	}
	if (t->dir[0].dst_shut && t->dir[1].dst_shut) {
		tunnel_close(t, -1);
		return;
	}
	if (needs_ticks(t))
		ev_ticker_start(t->px->loop, &t->ticker);
	else
		ev_ticker_stop(t->px->loop, &t->ticker);
}

static void on_tick(struct ev_ticker *tk)
{
	sockmap_progress(container_of(tk, struct tunnel, ticker));
}

static void on_sockmap_event(struct ev_handler *h, uint32_t events)
{
	struct tunnel *t = h->owner;
	int end = h == &t->ep[TUNNEL_END_CLIENT] ? TUNNEL_END_CLIENT : TUNNEL_END_UPSTREAM;
	int d = end == TUNNEL_END_CLIENT ? WS_DIR_C2U : WS_DIR_U2C;

	if (t->closed)
		return;
	if (events & (EPOLLERR | EPOLLHUP)) {
		int err = tunnel_sock_error(h->fd);

		/* EPIPE alone is the verdict "forwarding" a zero-length FIN skb
		 * to this socket after its peer's FIN: not a reset. But an RST
		 * on a socket in CLOSE_WAIT also reads as EPIPE, so the state
		 * decides: CLOSED before we sent our FIN on it means a reset
		 * (after our FIN it is the normal LAST_ACK -> CLOSE). */
		bool sent_fin = t->dir[end == TUNNEL_END_CLIENT ? WS_DIR_U2C : WS_DIR_C2U].dst_shut;

		if ((err && err != EPIPE) || (!sent_fin && tcp_state(h->fd) == TCPI_STATE_CLOSE)) {
			log_debug("tunnel %u: %s end reset (%s)", t->id, end == TUNNEL_END_CLIENT ? "client" : "upstream",
				  strerror(err ? err : ECONNRESET));
			tunnel_close(t, end);
			return;
		}
	}
	if (events & (EPOLLRDHUP | EPOLLHUP))
		t->dir[d].src_eof = true;
	/* RDHUP stays readable; HUP cannot be masked at all. */
	ev_watch(t->px->loop, h, (events & EPOLLHUP) ? 0 : t->dir[d].src_eof ? EPOLLERR : EPOLLRDHUP);
	sockmap_progress(t);
}

static int alloc_id(struct proxy *px, uint32_t *id)
{
	for (uint32_t i = 0; i < WSPLICE_MAX_TUNNELS; i++) {
		uint32_t cand = (px->next_tunnel_id + i) % WSPLICE_MAX_TUNNELS;

		if (!px->tunnel_by_id[cand]) {
			*id = cand;
			px->next_tunnel_id = cand + 1;
			return 0;
		}
	}
	errno = ENOSPC;
	return -1;
}

int tunnel_sockmap_start(struct tunnel *t)
{
	struct proxy *px = t->px;
	bool flowing[2];
	int fds[2];

	/* Leftovers must have been flushed by the drain; keep no buffers. */
	for (int d = 0; d < 2; d++)
		buf_release(&t->dir[d].buf);
	if (alloc_id(px, &t->id) < 0)
		return -1;
	for (int e = 0; e < 2; e++) {
		fds[e] = t->ep[e].fd;
		t->cookie[e] = socket_cookie(fds[e]);
		t->queued_base[e] = bytes_queued(fds[e]);
	}
	if (dataplane_tunnel_add(px->dp, t->id, fds, t->cookie, flowing) < 0)
		return -1;
	px->tunnel_by_id[t->id] = t;
	t->in_kernel = true;
	t->ticker.on_tick = on_tick;
	for (int e = 0; e < 2; e++) {
		int d = e == TUNNEL_END_CLIENT ? WS_DIR_C2U : WS_DIR_U2C;

		t->ep[e].on_event = on_sockmap_event;
		t->ep[e].owner = t;
		if (!flowing[e]) {
			log_debug("tunnel %u: %s sent FIN during insertion: finishing it in userspace", t->id,
				  e == TUNNEL_END_CLIENT ? "client" : "upstream");
			t->dir[d].src_eof = t->dir[d].user_finish = true;
		}
		ev_watch(px->loop, &t->ep[e], flowing[e] ? EPOLLRDHUP : EPOLLERR);
	}
	log_debug("tunnel %u spliced in the kernel (userspace moved %llu bytes client->upstream, %llu upstream->client)",
		  t->id, (unsigned long long)t->dir[WS_DIR_C2U].user_read, (unsigned long long)t->dir[WS_DIR_U2C].user_read);
	sockmap_progress(t);
	return 0;
}

void tunnel_sockmap_pause(struct tunnel *t, int d)
{
	struct tunnel_dir *dd = &t->dir[d];
	int src = dir_src(d);

	if (t->closed || dd->pausing || dd->paused || dd->src_eof || dd->dst_shut)
		return;
	/* Until it is carried out the verdict keeps redirecting: that delay
	 * is the reaction-time term of the bound (docs/KERNEL.md §4). */
	if (dataplane_pause(t->px->dp, t->cookie[src], (uint64_t)t->id << 1 | d) == 0)
		dd->pausing = true;
}

void tunnel_sockmap_paused(struct tunnel *t, int d, uint64_t cookie, bool ok, uint64_t waited_us)
{
	struct tunnel_dir *dd = &t->dir[d];

	if (t->closed || !dd->pausing || t->cookie[dir_src(d)] != cookie)
		return;
	dd->pausing = false;
	if (!ok)
		return;
	dd->paused = true;
	/* The pause walks every TCP socket of the namespace: say what it cost. */
	log_debug("tunnel %u: %s paused in %llu us", t->id, dir_name(d), (unsigned long long)waited_us);
	sockmap_progress(t);
}

void tunnel_sockmap_release(struct tunnel *t)
{
	dataplane_tunnel_del(t->px->dp, t->id, t->cookie);
	t->px->tunnel_by_id[t->id] = NULL;
	t->in_kernel = false;
}

void tunnel_sockmap_describe(struct tunnel *t, char *out, size_t len)
{
	struct ws_tunnel tv = { 0 };
	size_t n;

	dataplane_tunnel_read(t->px->dp, t->id, &tv);
	n = snprintf(out, len, "tunnel %u sockmap", t->id);
	for (int d = 0; d < 2 && n < len; d++) {
		const struct tunnel_dir *dd = &t->dir[d];
		int src = t->ep[dir_src(d)].fd;

		n += snprintf(out + n, len - n,
			      " | %s: eof=%d shut=%d pausing=%d paused=%d user=%d kernel=%llu user_read=%llu rx=%llu inflight=%llu",
			      d == WS_DIR_C2U ? "c2u" : "u2c", dd->src_eof, dd->dst_shut, dd->pausing, dd->paused,
			      dd->user_finish,
			      (unsigned long long)tv.dir[d].bytes, (unsigned long long)dd->user_read,
			      (unsigned long long)bytes_received(src), (unsigned long long)inflight(t, d, &tv));
	}
}
