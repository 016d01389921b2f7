#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <time.h>
#include "dataplane.h"
#include "log.h"
#include "pool.h"
#include "route.h"
#include "session.h"
#include "tunnel.h"

int tunnel_sock_error(int fd)
{
	int err = 0;
	socklen_t len = sizeof(err);

	getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
	return err;
}

void tunnel_close(struct tunnel *t, int reset_end)
{
	bool spliced = t->in_kernel;

	if (t->closed)
		return;
	t->closed = true;
	ev_ticker_stop(t->px->loop, &t->ticker);
	if (t->in_kernel)
		tunnel_sockmap_release(t);
	for (int e = 0; e < 2; e++) {
		if (reset_end >= 0 && e != reset_end) {
			/* Pass the reset on: close with an RST, not a FIN. */
			struct linger lg = { .l_onoff = 1, .l_linger = 0 };

			setsockopt(t->ep[e].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		}
		ev_watch(t->px->loop, &t->ep[e], 0);
		close(t->ep[e].fd);
	}
	for (int d = 0; d < 2; d++) {
		buf_release(&t->dir[d].buf); /* now, not deferred: see session_close */
		if (t->dir[d].pipe_rd >= 0) {
			close(t->dir[d].pipe_rd);
			close(t->dir[d].pipe_wr);
		}
	}
	if (t->route_st)
		t->route_st->tunnels--;
	if (t->server_st)
		t->server_st->active--;
	t->px->tunnels_open--;
	conn_link_del(&t->link);
	log_debug("tunnel %u (%s) closed%s", t->id, spliced ? "sockmap" : mode_name(t->mode),
		  reset_end >= 0 ? " by reset" : "");
	ev_defer(t->px->loop, free, t); /* buffers went back at close */
}

static bool half_closed(const struct tunnel *t)
{
	return t->dir[0].src_eof || t->dir[1].src_eof || t->dir[0].dst_shut || t->dir[1].dst_shut;
}

/* The kernel stamps last_active with the coarse monotonic clock. */
static uint64_t kernel_last_active_ms(struct tunnel *t)
{
	struct ws_tunnel wt;
	struct timespec now;
	uint64_t age_ms, now_ns;

	if (dataplane_tunnel_read(t->px->dp, t->id, &wt) || !wt.last_active_ns)
		return t->last_active_ms;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
	now_ns = (uint64_t)now.tv_sec * 1000000000ull + now.tv_nsec;
	/* The vDSO's coarse clock can trail the kernel's by a tick: a stamp
	 * "from the future" is activity just now, not 584 years ago. */
	if (wt.last_active_ns >= now_ns)
		return ev_now_ms();
	age_ms = (now_ns - wt.last_active_ns) / 1000000;
	return ev_now_ms() > age_ms ? ev_now_ms() - age_ms : 0;
}

void tunnel_timeouts(struct proxy *px, uint64_t now_ms)
{
	const struct timeouts *to = &px->cfg->timeouts;
	struct conn_link *l, *next;

	if (!to->tunnel_idle_ms && !to->tunnel_fin_ms)
		return;
	for (l = px->tunnels.next; l != &px->tunnels; l = next) {
		struct tunnel *t = (struct tunnel *)l;
		uint64_t limit = half_closed(t) && to->tunnel_fin_ms ? to->tunnel_fin_ms : to->tunnel_idle_ms;
		uint64_t last;

		next = l->next;
		if (t->closed || !limit || now_ms < t->next_check_ms)
			continue;
		last = t->last_active_ms;
		if (t->in_kernel) {
			uint64_t k = kernel_last_active_ms(t);

			last = k > last ? k : last;
		}
		/* now_ms was read before this sweep started: a tunnel handed off
		 * by session_timeouts just now, or a kernel stamp taken as "now",
		 * is later than it. Unclamped, now_ms - last wrapped to 2^64 - 1
		 * and closed a tunnel right after its first FIN (KERNEL.md §12). */
		if (last > now_ms)
			last = now_ms;
		if (now_ms - last < limit) {
			/* Not idle long enough: look again when it could be. */
			t->next_check_ms = last + limit;
			continue;
		}
		log_info("tunnel %u: %s for %llu ms: closing", t->id, half_closed(t) ? "half-closed and idle" : "idle",
			 (unsigned long long)(now_ms - last));
		tunnel_close(t, -1);
	}
}

void tunnel_describe(struct tunnel *t, char *out, size_t len)
{
	if (t->in_kernel) {
		tunnel_sockmap_describe(t, out, len);
		return;
	}
	snprintf(out, len, "tunnel %s relay | c2u: eof=%d shut=%d pending=%zu | u2c: eof=%d shut=%d pending=%zu",
		 mode_name(t->mode), t->dir[0].src_eof, t->dir[0].dst_shut, buf_len(&t->dir[0].buf) + t->dir[0].in_pipe,
		 t->dir[1].src_eof, t->dir[1].dst_shut, buf_len(&t->dir[1].buf) + t->dir[1].in_pipe);
}

/* The client's port and the upstream connection's local port: what ss shows
 * for the two sockets, so a dumped tunnel can be matched to its queues. */
static void tunnel_ports(struct tunnel *t, char *out, size_t len)
{
	struct sockaddr_storage a, b;
	socklen_t la = sizeof(a), lb = sizeof(b);
	unsigned pa = 0, pb = 0;

	if (!getpeername(t->ep[TUNNEL_END_CLIENT].fd, (struct sockaddr *)&a, &la) && a.ss_family != AF_UNIX)
		pa = ntohs(((struct sockaddr_in *)&a)->sin_port); /* same offset in sockaddr_in6 */
	if (!getsockname(t->ep[TUNNEL_END_UPSTREAM].fd, (struct sockaddr *)&b, &lb) && b.ss_family != AF_UNIX)
		pb = ntohs(((struct sockaddr_in *)&b)->sin_port);
	snprintf(out, len, "client port %u, upstream local port %u", pa, pb);
}

void tunnel_dump_all(struct proxy *px)
{
	char line[512], ports[64];

	log_info("%llu sessions, %llu tunnels open", (unsigned long long)px->sessions_open,
		 (unsigned long long)px->tunnels_open);
	for (struct conn_link *l = px->tunnels.next; l != &px->tunnels; l = l->next) {
		tunnel_describe((struct tunnel *)l, line, sizeof(line));
		tunnel_ports((struct tunnel *)l, ports, sizeof(ports));
		log_info("%s (%s)", line, ports);
	}
}

void tunnel_close_all(struct proxy *px)
{
	while (px->tunnels.next != &px->tunnels)
		tunnel_close((struct tunnel *)px->tunnels.next, -1);
}

/* Moves whatever the session still holds so the tunnel starts with two
 * per-direction queues: client->upstream and upstream->client. */
static bool move_leftovers(struct session *s)
{
	size_t n;

	n = buf_len(&s->cin) < buf_room(&s->uout) ? buf_len(&s->cin) : buf_room(&s->uout);
	buf_append(&s->uout, buf_head(&s->cin), n);
	buf_consume(&s->cin, n);
	n = buf_len(&s->uin) < buf_room(&s->cout) ? buf_len(&s->uin) : buf_room(&s->cout);
	buf_append(&s->cout, buf_head(&s->uin), n);
	buf_consume(&s->uin, n);
	return !buf_len(&s->cin) && !buf_len(&s->uin);
}

enum drain_result { DRAIN_WAIT, DRAIN_READY, DRAIN_ERROR };

static int flush(int fd, struct buf *q, uint64_t *count)
{
	while (buf_len(q)) {
		ssize_t n = buf_write_fd(q, fd);

		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		*count += n;
	}
	return 1;
}

/* The sockmap precondition: every byte userspace read is written out, or
 * the verdict would overtake it. What is still in the receive queues, an skb
 * read in part included, is left to the kernel: the kick verdicts it and the
 * verdict cuts off the part already read (docs/KERNEL.md §14). Reading on
 * until both queues were empty at once never converged against a peer that
 * sends right after the 101: the whole transfer went through this loop
 * (KERNEL.md §17). */
static enum drain_result drain_for_sockmap(struct session *s)
{
	int wc, wu;

	if (!move_leftovers(s))
		return DRAIN_WAIT;
	wc = flush(s->client.fd, &s->cout, &s->client_written);
	wu = flush(s->upstream.fd, &s->uout, &s->upstream_written);
	if (wc < 0 || wu < 0)
		return DRAIN_ERROR;
	return wc == 1 && wu == 1 ? DRAIN_READY : DRAIN_WAIT;
}

static struct tunnel *tunnel_from_session(struct session *s, enum tunnel_mode mode)
{
	struct tunnel *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->px = s->px;
	t->mode = mode;
	t->ep[TUNNEL_END_CLIENT] = (struct ev_handler){ .fd = s->client.fd, .owner = t };
	t->ep[TUNNEL_END_UPSTREAM] = (struct ev_handler){ .fd = s->upstream.fd, .owner = t };
	/* The session's epoll registrations carry its own pointers: drop them. */
	ev_watch(s->px->loop, &s->client, 0);
	ev_watch(s->px->loop, &s->upstream, 0);
	s->client.fd = s->upstream.fd = -1;
	for (int d = 0; d < 2; d++) {
		t->dir[d].pipe_rd = t->dir[d].pipe_wr = -1;
		buf_init(&t->dir[d].buf, 65536);
	}
	/* Hand the queues over without copying. */
	t->dir[WS_DIR_C2U].buf = s->uout;
	t->dir[WS_DIR_U2C].buf = s->cout;
	t->dir[WS_DIR_C2U].buf.cap = t->dir[WS_DIR_U2C].buf.cap = 65536;
	buf_init(&s->uout, 0);
	buf_init(&s->cout, 0);
	for (int d = 0; d < 2; d++)
		if (!buf_len(&t->dir[d].buf))
			buf_release(&t->dir[d].buf); /* an idle tunnel holds no block */
	t->dir[WS_DIR_C2U].user_read = s->client_read;
	t->dir[WS_DIR_C2U].user_written = s->upstream_written;
	t->dir[WS_DIR_U2C].user_read = s->upstream_read;
	t->dir[WS_DIR_U2C].user_written = s->client_written;
	t->route_st = s->tunnel_slot;
	s->tunnel_slot = NULL;
	t->server_st = s->server ? s->server->st : NULL;
	s->server = NULL;
	t->last_active_ms = ev_now_ms();
	s->px->tunnels_open++;
	conn_link_add(&s->px->tunnels, &t->link);
	return t;
}

static void start_relay(struct session *s, enum tunnel_mode mode)
{
	struct tunnel *t = tunnel_from_session(s, mode);

	if (!t) {
		session_close(s);
		return;
	}
	session_close(s);
	tunnel_relay_start(t);
}

void tunnel_handoff(struct session *s)
{
	struct tunnel *t;
	uint32_t ce = 0, ue = 0;

	if (s->px->mode != MODE_SOCKMAP) {
		if (move_leftovers(s)) {
			start_relay(s, s->px->mode);
			return;
		}
	} else {
		switch (drain_for_sockmap(s)) {
		case DRAIN_READY:
			t = tunnel_from_session(s, MODE_SOCKMAP);
			if (!t) {
				session_close(s);
				return;
			}
			session_close(s);
			if (tunnel_sockmap_start(t) < 0) {
				/* EOPNOTSUPP: a FIN arrived since the drain (a client
				 * that closes right after the 101), not worth a line. */
				if (errno == EOPNOTSUPP)
					log_debug("tunnel falls back to the copy relay: %s", strerror(errno));
				else
					log_warn("tunnel falls back to the copy relay: %s", strerror(errno));
				t->mode = MODE_COPY;
				tunnel_relay_start(t);
			}
			return;
		case DRAIN_ERROR: {
			/* A reset during the handoff: deliver the 101 and what came
			 * with it if we can, then pass the reset on. */
			struct linger lg = { .l_onoff = 1, .l_linger = 0 };

			flush(s->client.fd, &s->cout, &s->client_written);
			setsockopt(s->client.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
			session_close(s);
			return;
		}
		case DRAIN_WAIT:
			break;
		}
	}
	/* Nobody reads during the handoff: what arrives waits in the kernel. */
	if (buf_len(&s->cout))
		ce |= EPOLLOUT;
	if (buf_len(&s->uout))
		ue |= EPOLLOUT;
	ev_watch(s->px->loop, &s->client, ce ? ce : EPOLLERR);
	ev_watch(s->px->loop, &s->upstream, ue ? ue : EPOLLERR);
}
