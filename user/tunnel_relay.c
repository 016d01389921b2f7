/* The userspace relays: the copy engine moves bytes through a 64 KiB buffer
 * per direction, the splice engine through a 64 KiB pipe per direction (the
 * bytes stay in kernel pages). Both stop reading a source while its buffer
 * is full, so the sender's TCP window closes: bounded memory, no loss. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>
#include "engine.h"
#include "log.h"
#include "metrics.h"

#define RELAY_PIPE_SIZE 65536
#define RELAY_BUF_SIZE 65536

/* Where a direction's stream stands in its WebSocket frames (RFC 6455
 * section 5.2), as its destination has received it: a close frame may go
 * in only between two frames. The copy relay sees every byte; the splice
 * relay does not, and keeps none. */
struct ws_frames {
	uint64_t left;     /* payload bytes of the current frame still to come */
	uint8_t head[14];  /* the header so far */
	uint8_t have, need;
	bool closed;       /* a close frame went by: nothing may follow it */
};

struct relay_dir {
	struct ws_frames frames;
	bool frames_known;    /* copy, and every payload byte went through frames_feed */
	struct buf buf;       /* copy: the relay buffer; splice: the hand-off's leftovers */
	int pipe_rd, pipe_wr; /* splice, made on first use */
	uint32_t in_pipe;
	bool src_eof;         /* FIN received from the source */
	bool dst_shut;        /* FIN sent to the destination */
	uint64_t read, written, payload_from; /* written: the destination's lifetime count */
};

struct relay {
	int fd[2];
	bool splice;
	struct relay_dir dir[2];
	uint64_t last_active_ms;
};

static bool dir_has_room(const struct relay *r, const struct relay_dir *dd)
{
	if (r->splice)
		return !buf_len(&dd->buf) && dd->in_pipe < RELAY_PIPE_SIZE;
	return buf_room(&dd->buf) > 0;
}

static bool dir_pending(const struct relay_dir *dd)
{
	return buf_len(&dd->buf) || dd->in_pipe;
}

/* Pipes are made on first use: an idle tunnel holds two sockets, not six
 * fds (8 000 idle splice tunnels would not fit in a 20 000 fd limit). */
static int relay_open_pipe(struct relay *r, struct relay_dir *dd)
{
	int p[2];

	if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) {
		log_warn("pipe2: %s; copy relay instead", strerror(errno));
		r->splice = false;
		return -1;
	}
	fcntl(p[1], F_SETPIPE_SZ, RELAY_PIPE_SIZE);
	dd->pipe_rd = p[0];
	dd->pipe_wr = p[1];
	return 0;
}

/* Reads from the source: 1 progress, 0 nothing, -1 the source reset. */
static int relay_fill(struct relay *r, int d)
{
	struct relay_dir *dd = &r->dir[d];
	int src = r->fd[dir_src(d)];
	ssize_t n;

	if (dd->src_eof || !dir_has_room(r, dd))
		return 0;
	if (r->splice && dd->pipe_rd < 0) {
		char c;

		/* Only a source with bytes (or EOF) waiting gets its pipe. */
		n = recv(src, &c, 1, MSG_PEEK | MSG_DONTWAIT);
		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		if (n == 0) {
			dd->src_eof = true;
			return 1;
		}
		if (relay_open_pipe(r, dd) < 0)
			return 0; /* now in copy mode: the next round reads into buf */
	}
	if (r->splice)
		n = splice(src, NULL, dd->pipe_wr, NULL, RELAY_PIPE_SIZE - dd->in_pipe, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
	else
		n = buf_read_fd(&dd->buf, src);
	if (n > 0) {
		if (r->splice)
			dd->in_pipe += n;
		dd->read += n;
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

static void frames_feed(struct ws_frames *f, const uint8_t *p, size_t n)
{
	while (n) {
		if (f->left) {
			size_t k = n < f->left ? n : (size_t)f->left;

			f->left -= k;
			p += k;
			n -= k;
			continue;
		}
		f->head[f->have++] = *p++;
		n--;
		if (f->have == 2) {
			uint8_t len7 = f->head[1] & 0x7f;

			f->need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (f->head[1] & 0x80 ? 4 : 0);
		}
		if (f->have >= 2 && f->have == f->need) {
			uint8_t len7 = f->head[1] & 0x7f;
			uint64_t len = len7;

			if (len7 >= 126) {
				len = 0;
				for (int i = 0; i < (len7 == 126 ? 2 : 8); i++)
					len = len << 8 | f->head[2 + i];
			}
			f->left = len;
			f->closed |= (f->head[0] & 0x0f) == 0x8;
			f->have = f->need = 0;
		}
	}
}

/* n bytes the destination took, from p; those before the 101's end (the
 * response head) are not frames. */
static void frames_written(struct relay_dir *dd, const char *p, size_t n)
{
	uint64_t skip = dd->written < dd->payload_from ? dd->payload_from - dd->written : 0;

	if (skip < n)
		frames_feed(&dd->frames, (const uint8_t *)p + skip, n - (size_t)skip);
}

/* Writes to the destination: 1 progress, 0 nothing, -1 it is gone. */
static int relay_drain(struct relay *r, int d)
{
	struct relay_dir *dd = &r->dir[d];
	int dst = r->fd[dir_dst(d)];
	ssize_t n;

	if (buf_len(&dd->buf)) {
		const char *head = buf_head(&dd->buf);

		n = buf_write_fd(&dd->buf, dst);
		if (n > 0 && dd->frames_known)
			frames_written(dd, head, (size_t)n);
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
		metrics_add(d == WS_DIR_C2U ? M_USER_BYTES_C2U : M_USER_BYTES_U2C,
			    payload_part(dd->written, n, dd->payload_from));
		dd->written += n;
		return 1;
	}
	return n < 0 && errno != EAGAIN ? -1 : 0;
}

static void relay_want(const struct relay *r, struct engine_io *io)
{
	for (int e = 0; e < 2; e++) {
		/* End e is the source of one direction and the destination of the other. */
		const struct relay_dir *in = &r->dir[end_dir(e)], *out = &r->dir[1 - end_dir(e)];
		uint32_t ev = 0;

		if (!in->src_eof && dir_has_room(r, in))
			ev |= EPOLLIN;
		if (dir_pending(out))
			ev |= EPOLLOUT;
		/* With nothing left to do on an end, leave epoll entirely: its
		 * EPOLLHUP is level-triggered and cannot be masked. */
		io->want[e] = ev;
	}
	io->half_closed = r->dir[0].src_eof || r->dir[1].src_eof;
}

static void relay_run(struct relay *r, struct engine_io *io)
{
	bool moved = false;

	for (int rounds = 0; rounds < 64; rounds++) {
		bool progress = false;

		for (int d = 0; d < 2; d++) {
			int n = relay_fill(r, d);

			if (n < 0) {
				/* Pass on what arrived before the reset, then the reset. */
				relay_drain(r, d);
				io->verdict = ENGINE_RESET;
				io->reset_end = dir_src(d);
				return;
			}
			progress |= n;
			n = relay_drain(r, d);
			if (n < 0) {
				io->verdict = ENGINE_RESET;
				io->reset_end = dir_dst(d);
				return;
			}
			progress |= n;
		}
		if (r->dir[0].dst_shut && r->dir[1].dst_shut) {
			io->verdict = ENGINE_CLOSE;
			return;
		}
		if (!progress)
			break;
		moved = true;
	}
	if (moved)
		r->last_active_ms = ev_now_ms(); /* once per wakeup: the timeout sweep reads it */
	relay_want(r, io);
}

static void relay_event(void *st, int end, uint32_t events, struct engine_io *io)
{
	struct relay *r = st;

	if ((events & EPOLLERR) && sock_error(r->fd[end])) {
		io->verdict = ENGINE_RESET;
		io->reset_end = end;
		return;
	}
	relay_run(r, io);
}

/* The relay of a hand-off's sockets, queues and counts. */
static struct relay *relay_new(struct tunnel_handoff *h, bool splice)
{
	struct relay *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->splice = splice;
	r->last_active_ms = ev_now_ms();
	for (int e = 0; e < 2; e++)
		r->fd[e] = h->fd[e];
	for (int d = 0; d < 2; d++) {
		struct relay_dir *dd = &r->dir[d];

		dd->pipe_rd = dd->pipe_wr = -1;
		dd->buf = h->queue[d];
		dd->buf.cap = RELAY_BUF_SIZE;
		buf_init(&h->queue[d], 0);
		if (!buf_len(&dd->buf))
			buf_release(&dd->buf); /* an idle tunnel holds no block */
		dd->read = h->read[d];
		dd->written = h->written[d];
		dd->payload_from = h->payload_from[d];
		/* Payload the session (or an engine before) wrote went past
		 * no frame count: where it left the stream is unknown. */
		dd->frames_known = !splice && dd->written <= dd->payload_from;
	}
	return r;
}

static void *relay_start(struct tunnel_handoff *h, bool splice, struct engine_io *io)
{
	struct relay *r = relay_new(h, splice);

	if (r)
		relay_run(r, io);
	return r;
}

static void *copy_start(void *ctx, struct tunnel_handoff *h, void *owner, struct engine_io *io)
{
	(void)ctx, (void)owner;
	return relay_start(h, false, io);
}

static void *splice_start(void *ctx, struct tunnel_handoff *h, void *owner, struct engine_io *io)
{
	(void)ctx, (void)owner;
	return relay_start(h, true, io);
}

/* With h (an upgrade's, through relay_hand_over, which takes the pipes
 * first): the queues and counts go back. */
static void relay_stop(void *st, struct tunnel_handoff *h)
{
	struct relay *r = st;

	for (int d = 0; d < 2; d++) {
		struct relay_dir *dd = &r->dir[d];

		if (h) {
			h->queue[d] = dd->buf;
			h->read[d] = dd->read;
			h->written[d] = dd->written;
			h->payload_from[d] = dd->payload_from;
		} else {
			buf_release(&dd->buf); /* now, not deferred: see session_close */
		}
		if (dd->pipe_rd >= 0) {
			close(dd->pipe_rd);
			close(dd->pipe_wr);
		}
	}
	free(r);
}

/* An upgrade: what relay_stop() hands back, plus each direction's flags,
 * frame position and pipe (its bytes stay in it, in the kernel). */
struct relay_saved_dir {
	struct ws_frames frames;
	uint32_t in_pipe;
	bool frames_known, src_eof, dst_shut, has_pipe;
};

static void relay_hand_over(void *st, struct tunnel_handoff *h, struct engine_saved *saved)
{
	struct relay *r = st;
	struct relay_saved_dir sd[2];

	memset(sd, 0, sizeof(sd));
	saved->nfds = 0;
	for (int d = 0; d < 2; d++) {
		struct relay_dir *dd = &r->dir[d];

		sd[d] = (struct relay_saved_dir){ .frames = dd->frames, .in_pipe = dd->in_pipe,
						  .frames_known = dd->frames_known, .src_eof = dd->src_eof,
						  .dst_shut = dd->dst_shut, .has_pipe = dd->pipe_rd >= 0 };
		if (dd->pipe_rd >= 0) {
			saved->fd[saved->nfds++] = dd->pipe_rd;
			saved->fd[saved->nfds++] = dd->pipe_wr;
			dd->pipe_rd = dd->pipe_wr = -1;
		}
	}
	memcpy(saved->state, sd, sizeof(sd));
	saved->len = sizeof(sd);
	relay_stop(r, h);
}

static void *relay_take_over(struct tunnel_handoff *h, bool splice, struct engine_saved *saved,
			     struct engine_io *io)
{
	struct relay_saved_dir sd[2];
	struct relay *r;
	uint32_t next_fd = 0;

	if (saved->len != sizeof(sd) || !(r = relay_new(h, splice))) {
		for (uint32_t i = 0; i < saved->nfds; i++)
			close(saved->fd[i]);
		return NULL;
	}
	memcpy(sd, saved->state, sizeof(sd));
	for (int d = 0; d < 2; d++) {
		struct relay_dir *dd = &r->dir[d];

		dd->frames = sd[d].frames;
		dd->frames_known = sd[d].frames_known;
		dd->src_eof = sd[d].src_eof;
		dd->dst_shut = sd[d].dst_shut;
		dd->in_pipe = sd[d].in_pipe;
		if (sd[d].has_pipe && next_fd + 2 <= saved->nfds) {
			dd->pipe_rd = saved->fd[next_fd++];
			dd->pipe_wr = saved->fd[next_fd++];
		}
	}
	relay_run(r, io);
	return r;
}

static void *copy_take_over(void *ctx, struct tunnel_handoff *h, struct engine_saved *saved, void *owner,
			    struct engine_io *io)
{
	(void)ctx, (void)owner;
	return relay_take_over(h, false, saved, io);
}

static void *splice_take_over(void *ctx, struct tunnel_handoff *h, struct engine_saved *saved, void *owner,
			      struct engine_io *io)
{
	(void)ctx, (void)owner;
	return relay_take_over(h, true, saved, io);
}

/* 1001 "going away": unmasked to the client, masked (RFC 6455 section
 * 5.3, as a client's must be) to the server. */
static void relay_going_away(void *st)
{
	struct relay *r = st;

	for (int d = 0; d < 2; d++) {
		struct relay_dir *dd = &r->dir[d];
		int dst = r->fd[dir_dst(d)];

		if (!dd->frames_known)
			continue;
		/* What the destination may still take goes first. */
		while (buf_len(&dd->buf) && relay_drain(r, d) > 0)
			;
		if (buf_len(&dd->buf) || dd->frames.left || dd->frames.have || dd->frames.closed || dd->dst_shut ||
		    dd->written < dd->payload_from) {
			log_debug("shutdown: no close frame %s (mid-frame, its queue full, or closed already)",
				  d == WS_DIR_U2C ? "to the client" : "to the upstream");
			continue;
		}
		if (d == WS_DIR_U2C) {
			static const uint8_t frame[4] = { 0x88, 0x02, 0x03, 0xe9 };

			send(dst, frame, sizeof(frame), MSG_DONTWAIT | MSG_NOSIGNAL);
		} else {
			uint8_t frame[8] = { 0x88, 0x82 };

			/* RFC 6455 section 5.3: a mask the server cannot predict. */
			if (getrandom(frame + 2, 4, GRND_NONBLOCK) != 4)
				memcpy(frame + 2, &(uint32_t){ (uint32_t)ev_now_ms() * 2654435761u }, 4);
			frame[6] = 0x03 ^ frame[2];
			frame[7] = 0xe9 ^ frame[3];
			send(dst, frame, sizeof(frame), MSG_DONTWAIT | MSG_NOSIGNAL);
		}
		shutdown(dst, SHUT_WR);
		dd->dst_shut = true;
	}
}

static void relay_stats(void *st, struct tunnel_stats *out)
{
	struct relay *r = st;

	for (int d = 0; d < 2; d++)
		out->bytes[d] = payload_part(0, r->dir[d].written, r->dir[d].payload_from);
	out->last_active_ms = r->last_active_ms;
}

/* Nothing held in userspace or in a pipe, and no FIN either way: the
 * express lane may take the tunnel over from here. */
static bool relay_quiet(void *st)
{
	struct relay *r = st;

	for (int d = 0; d < 2; d++)
		if (dir_pending(&r->dir[d]) || r->dir[d].src_eof || r->dir[d].dst_shut)
			return false;
	return true;
}

static void relay_describe(void *st, char *out, size_t len)
{
	struct relay *r = st;
	const struct relay_dir *c = &r->dir[WS_DIR_C2U], *u = &r->dir[WS_DIR_U2C];

	snprintf(out, len, "c2u: eof=%d shut=%d pending=%zu | u2c: eof=%d shut=%d pending=%zu", c->src_eof,
		 c->dst_shut, buf_len(&c->buf) + c->in_pipe, u->src_eof, u->dst_shut, buf_len(&u->buf) + u->in_pipe);
}

const struct engine_ops engine_copy = {
	.name = "copy",
	.start = copy_start,
	.event = relay_event,
	.stop = relay_stop,
	.going_away = relay_going_away,
	.hand_over = relay_hand_over,
	.take_over = copy_take_over,
	.stats = relay_stats,
	.quiet = relay_quiet,
	.describe = relay_describe,
};

const struct engine_ops engine_splice = {
	.name = "splice",
	.start = splice_start,
	.event = relay_event,
	.stop = relay_stop,
	.hand_over = relay_hand_over,
	.take_over = splice_take_over,
	.stats = relay_stats,
	.quiet = relay_quiet,
	.describe = relay_describe,
};
