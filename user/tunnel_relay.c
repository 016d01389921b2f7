/* The userspace relays: --mode copy moves bytes through a 64 KiB buffer per
 * direction, --mode splice through a 64 KiB pipe per direction (the bytes
 * stay in kernel pages). Both stop reading a source while its buffer is
 * full, so the sender's TCP window closes: bounded memory, no loss. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "log.h"
#include "tunnel.h"

#define RELAY_PIPE_SIZE 65536

static void on_relay_event(struct ev_handler *h, uint32_t events);

static bool dir_has_room(const struct tunnel *t, const struct tunnel_dir *dd)
{
	if (t->mode == MODE_SPLICE)
		return !buf_len(&dd->buf) && dd->in_pipe < RELAY_PIPE_SIZE;
	return buf_room(&dd->buf) > 0;
}

static bool dir_pending(const struct tunnel_dir *dd)
{
	return buf_len(&dd->buf) || dd->in_pipe;
}

/* Pipes are made on first use: an idle tunnel holds two sockets, not six
 * fds (8 000 idle splice tunnels would not fit in a 20 000 fd limit). */
static int relay_open_pipe(struct tunnel *t, struct tunnel_dir *dd)
{
	int p[2];

	if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) {
		log_warn("pipe2: %s; copy relay instead", strerror(errno));
		t->mode = MODE_COPY;
		return -1;
	}
	fcntl(p[1], F_SETPIPE_SZ, RELAY_PIPE_SIZE);
	dd->pipe_rd = p[0];
	dd->pipe_wr = p[1];
	return 0;
}

/* Reads from the source: 1 progress, 0 nothing, -1 the source reset. */
static int relay_fill(struct tunnel *t, int d)
{
	struct tunnel_dir *dd = &t->dir[d];
	int src = t->ep[dir_src(d)].fd;
	ssize_t n;

	if (dd->src_eof || !dir_has_room(t, dd))
		return 0;
	if (t->mode == MODE_SPLICE && dd->pipe_rd < 0) {
		char c;

		/* Only a source with bytes (or EOF) waiting gets its pipe. */
		n = recv(src, &c, 1, MSG_PEEK | MSG_DONTWAIT);
		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		if (n == 0) {
			dd->src_eof = true;
			return 1;
		}
		if (relay_open_pipe(t, dd) < 0)
			return 0; /* now in copy mode: the next round reads into buf */
	}
	if (t->mode == MODE_SPLICE)
		n = splice(src, NULL, dd->pipe_wr, NULL, RELAY_PIPE_SIZE - dd->in_pipe,
			   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
	else
		n = buf_read_fd(&dd->buf, src);
	if (n > 0) {
		if (t->mode == MODE_SPLICE)
			dd->in_pipe += n;
		dd->user_read += n;
		return 1;
	}
	if (n == 0) {
		dd->src_eof = true;
		return 1;
	}
	if (!buf_len(&dd->buf))
		buf_release(&dd->buf); /* nothing came: do not hold a block while idle */
	return errno == EAGAIN ? 0 : -1;
}

/* Writes to the destination: 1 progress, 0 nothing, -1 it is gone. */
static int relay_drain(struct tunnel *t, int d)
{
	struct tunnel_dir *dd = &t->dir[d];
	int dst = t->ep[dir_dst(d)].fd;
	ssize_t n;

	if (buf_len(&dd->buf)) {
		n = buf_write_fd(&dd->buf, dst);
		/* An idle tunnel keeps no buffer: it goes back to the pool. */
		if (!buf_len(&dd->buf))
			buf_release(&dd->buf);
	} else if (dd->in_pipe) {
		n = splice(dd->pipe_rd, NULL, dst, NULL, dd->in_pipe, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
		if (n > 0)
			dd->in_pipe -= n;
	} else {
		if (dd->src_eof && !dd->dst_shut) {
			shutdown(dst, SHUT_WR);
			dd->dst_shut = true;
			return 1;
		}
		return 0;
	}
	if (n > 0) {
		dd->user_written += n;
		return 1;
	}
	return n < 0 && errno != EAGAIN ? -1 : 0;
}

static void relay_update_interest(struct tunnel *t)
{
	for (int e = 0; e < 2; e++) {
		/* End e is the source of direction e and the destination of 1-e. */
		const struct tunnel_dir *in = &t->dir[e == TUNNEL_END_CLIENT ? WS_DIR_C2U : WS_DIR_U2C];
		const struct tunnel_dir *out = &t->dir[e == TUNNEL_END_CLIENT ? WS_DIR_U2C : WS_DIR_C2U];
		uint32_t ev = 0;

		if (!in->src_eof && dir_has_room(t, in))
			ev |= EPOLLIN;
		if (dir_pending(out))
			ev |= EPOLLOUT;
		/* With nothing left to do on an end, leave epoll entirely: its
		 * EPOLLHUP is level-triggered and cannot be masked. */
		ev_watch(t->px->loop, &t->ep[e], ev);
	}
}

static void relay_run(struct tunnel *t)
{
	bool moved = false;

	for (int rounds = 0; rounds < 64; rounds++) {
		bool progress = false;

		for (int d = 0; d < 2; d++) {
			int r = relay_fill(t, d);

			if (r < 0) {
				/* Pass on what arrived before the reset, then the reset. */
				relay_drain(t, d);
				tunnel_close(t, dir_src(d));
				return;
			}
			progress |= r;
			r = relay_drain(t, d);
			if (r < 0) {
				tunnel_close(t, dir_dst(d));
				return;
			}
			progress |= r;
		}
		if (t->dir[0].dst_shut && t->dir[1].dst_shut) {
			tunnel_close(t, -1);
			return;
		}
		if (!progress)
			break;
		moved = true;
	}
	if (moved)
		t->last_active_ms = ev_now_ms(); /* once per wakeup: tunnel_timeouts reads it */
	relay_update_interest(t);
}

static void on_relay_event(struct ev_handler *h, uint32_t events)
{
	struct tunnel *t = h->owner;

	if (t->closed)
		return;
	if (events & EPOLLERR) {
		int end = h == &t->ep[TUNNEL_END_CLIENT] ? TUNNEL_END_CLIENT : TUNNEL_END_UPSTREAM;

		if (tunnel_sock_error(h->fd)) {
			tunnel_close(t, end);
			return;
		}
	}
	relay_run(t);
}

int tunnel_relay_start(struct tunnel *t)
{
	for (int e = 0; e < 2; e++) {
		t->ep[e].on_event = on_relay_event;
		t->ep[e].owner = t;
	}
	relay_run(t);
	return 0;
}
