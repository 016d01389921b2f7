#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "fdpass.h"
#include "handover.h"
#include "log.h"
#include "pool.h"
#include "route.h"
#include "session.h"
#include "tunnel.h"

/* HO_KERNEL_DONE: every tunnel this process held went, and it reads no
 * more kernel events: the new process may insert tunnels of its own and
 * read the event ring. HO_DONE: the requests in flight ended too. */
enum { HO_SESSION = 1, HO_TUNNELS, HO_QUEUES, HO_KERNEL_DONE, HO_DONE, HO_IDS };

/* The new process waits this long for a message the old one is in the
 * middle of sending (a batch's queues). */
#define HO_RECV_TIMEOUT_S 5

/* Tunnels a batch carries: its records and at most FDPASS_MAX descriptors. */
#define HO_BATCH 32

struct wire_session {
	uint32_t type;
	uint32_t answered; /* requests the old process answered on it */
	char listener[CFG_NAME_MAX];
	struct sockaddr_storage peer;
};

struct wire_tunnel {
	char engine[16];
	char route[CFG_NAME_MAX];
	char server[CFG_NAME_MAX + 300];
	uint64_t serial, age_ms;
	uint64_t read[2], written[2], payload_from[2];
	uint32_t qlen[2];
	uint32_t mode; /* not begun here (engine ""): its route's */
	uint32_t saved_len, saved_nfds;
	uint8_t state[ENGINE_SAVED_MAX];
};

struct wire_batch {
	uint32_t type, count;
	struct wire_tunnel t[HO_BATCH];
};

struct handover {
	struct ev_handler h; /* the new process: the socket */
	struct proxy *px;
	int sock;
	bool failed;
	bool kernel_done;
	void (*begin)(void *ctx); /* the new process: at the old one's first word */
	void *begin_ctx;
	/* The old process: the batch being filled and what it sends. */
	struct wire_batch batch;
	struct buf queues[HO_BATCH][2];
	int fds[FDPASS_MAX];
	size_t nfds;
	uint64_t tunnels, sessions;
};

/* The new process cannot be reached: it sees the end at once (it goes on
 * without waiting for this one's drain), and nothing more is sent. */
static void broke(struct handover *ho, const char *what)
{
	log_error("upgrade: cannot %s: %s", what, strerror(errno));
	ho->failed = true;
	shutdown(ho->sock, SHUT_RDWR);
}

/* Sends the batch; its descriptors are closed here once the new process
 * holds them. When the send fails (the new process is gone), the batch's
 * tunnels are lost: nobody serves them here any more. One line says so. */
static void flush(struct handover *ho)
{
	struct wire_batch *b = &ho->batch;

	if (!b->count)
		return;
	b->type = HO_TUNNELS;
	if (!ho->failed && fdpass_send(ho->sock, b, offsetof(struct wire_batch, t) + b->count * sizeof(b->t[0]),
				       ho->fds, ho->nfds))
		broke(ho, "hand tunnels over");
	for (uint32_t i = 0; i < b->count; i++) {
		for (int d = 0; d < 2; d++) {
			size_t n = buf_len(&ho->queues[i][d]);

			/* Each queue is at most one 64 KiB block: one message. */
			if (n && !ho->failed) {
				char *msg = malloc(sizeof(uint32_t) + n);

				if (!msg || (memcpy(msg, &(uint32_t){ HO_QUEUES }, sizeof(uint32_t)),
					     memcpy(msg + sizeof(uint32_t), buf_head(&ho->queues[i][d]), n),
					     fdpass_send(ho->sock, msg, sizeof(uint32_t) + n, NULL, 0))) {
					broke(ho, "hand a tunnel's queue over");
				}
				free(msg);
			}
			buf_release(&ho->queues[i][d]);
		}
	}
	for (size_t i = 0; i < ho->nfds; i++)
		close(ho->fds[i]);
	ho->tunnels += b->count;
	b->count = 0;
	ho->nfds = 0;
}

static void leave_tunnel(void *ctx, struct tunnel_transfer *x)
{
	struct handover *ho = ctx;
	struct wire_tunnel *w;

	if (ho->batch.count == HO_BATCH || ho->nfds + 2 + x->saved.nfds > FDPASS_MAX)
		flush(ho);
	w = &ho->batch.t[ho->batch.count];
	memset(w, 0, sizeof(*w));
	memcpy(w->engine, x->engine, sizeof(w->engine));
	memcpy(w->route, x->route, sizeof(w->route));
	memcpy(w->server, x->server, sizeof(w->server));
	w->serial = x->serial;
	w->age_ms = x->age_ms;
	w->mode = x->h.mode;
	for (int d = 0; d < 2; d++) {
		w->read[d] = x->h.read[d];
		w->written[d] = x->h.written[d];
		w->payload_from[d] = x->h.payload_from[d];
		w->qlen[d] = (uint32_t)buf_len(&x->h.queue[d]);
		ho->queues[ho->batch.count][d] = x->h.queue[d];
	}
	w->saved_len = x->saved.len;
	w->saved_nfds = x->saved.nfds;
	memcpy(w->state, x->saved.state, sizeof(w->state));
	ho->fds[ho->nfds++] = x->h.fd[0];
	ho->fds[ho->nfds++] = x->h.fd[1];
	for (uint32_t i = 0; i < x->saved.nfds; i++)
		ho->fds[ho->nfds++] = x->saved.fd[i];
	ho->batch.count++;
}

/* A tunnel that starts while the old process waits for its requests:
 * it leaves at once. */
static void leave_one(void *ctx, struct tunnel_transfer *x)
{
	leave_tunnel(ctx, x);
	flush(ctx);
}

static void leave_session(void *ctx, int fd, const char *listener, const struct sockaddr_storage *peer,
			  unsigned answered)
{
	struct handover *ho = ctx;
	struct wire_session w = { .type = HO_SESSION, .answered = answered, .peer = *peer };

	snprintf(w.listener, sizeof(w.listener), "%s", listener);
	if (!ho->failed && fdpass_send(ho->sock, &w, sizeof(w), &fd, 1)) {
		broke(ho, "hand a connection over");
	}
	ho->sessions++;
}

struct handover *handover_leave(struct proxy *px, int sock)
{
	struct handover *ho = calloc(1, sizeof(*ho));

	if (!ho)
		return NULL;
	ho->px = px;
	ho->sock = sock;
	/* First the ids this worker gave: the new one's go on past them. */
	if (fdpass_send(sock, &(uint64_t[2]){ HO_IDS, tunnel_set_last_id(px->tunnels) }, 2 * sizeof(uint64_t), NULL, 0))
		broke(ho, "pass the tunnel ids on");
	session_hand_over(px, leave_session, ho);
	tunnel_set_hand_over(px->tunnels, leave_tunnel, ho);
	flush(ho);
	if (!ho->failed && fdpass_send(sock, &(uint32_t){ HO_KERNEL_DONE }, sizeof(uint32_t), NULL, 0))
		broke(ho, "say the tunnels have gone");
	log_info("upgrade: %llu tunnels and %llu idle connections handed over%s", (unsigned long long)ho->tunnels,
		 (unsigned long long)ho->sessions, px->sessions_open ? "; requests in flight finish here" : "");
	/* From now on one at a time. */
	tunnel_set_hand_over(px->tunnels, leave_one, ho);
	return ho;
}

void handover_end(struct handover *ho)
{
	if (!ho)
		return;
	flush(ho);
	if (!ho->failed && fdpass_send(ho->sock, &(uint32_t){ HO_DONE }, sizeof(uint32_t), NULL, 0))
		log_error("upgrade: cannot say the handover is done: %s", strerror(errno));
	close(ho->sock);
	free(ho);
}

/* The new process's side. */

static void begin(struct handover *ho)
{
	if (ho->begin)
		ho->begin(ho->begin_ctx);
	ho->begin = NULL;
}

/* Every tunnel of the old process is here: the engines go on as usual. */
static void kernel_done(struct handover *ho)
{
	if (ho->kernel_done)
		return;
	ho->kernel_done = true;
	tunnel_set_upgrade(ho->px->tunnels, ENGINE_UPGRADE_ARRIVED);
	log_info("upgrade: %llu tunnels and %llu connections taken over", (unsigned long long)ho->tunnels,
		 (unsigned long long)ho->sessions);
}

static void arrived(struct handover *ho)
{
	begin(ho);
	kernel_done(ho);
	ev_watch(ho->px->loop, &ho->h, 0);
	close(ho->sock);
	ho->sock = -1;
}

/* The next message, which the old process sent right after the last. */
static ssize_t next_message(struct handover *ho, void *data, size_t cap)
{
	size_t nfds;

	return fdpass_recv(ho->sock, data, cap, NULL, 0, &nfds);
}

static void arrive_tunnels(struct handover *ho, const struct wire_batch *b, size_t len, int *fds, size_t nfds)
{
	static char qbuf[sizeof(uint32_t) + 65536];
	size_t next = 0;

	if (len < offsetof(struct wire_batch, t) || b->count > HO_BATCH ||
	    len != offsetof(struct wire_batch, t) + b->count * sizeof(b->t[0])) {
		log_error("upgrade: a malformed batch of tunnels (%zu bytes)", len);
		for (size_t i = 0; i < nfds; i++)
			close(fds[i]);
		return;
	}
	for (uint32_t i = 0; i < b->count; i++) {
		const struct wire_tunnel *w = &b->t[i];
		struct tunnel_transfer x = { .serial = w->serial, .age_ms = w->age_ms,
					     .h.mode = w->mode < MODE_COUNT ? w->mode : MODE_AUTO };
		bool ok = next + 2 + w->saved_nfds <= nfds && w->saved_nfds <= ENGINE_SAVED_FDS &&
			  w->saved_len <= ENGINE_SAVED_MAX;

		memcpy(x.engine, w->engine, sizeof(x.engine));
		x.engine[sizeof(x.engine) - 1] = '\0';
		memcpy(x.route, w->route, sizeof(x.route));
		x.route[sizeof(x.route) - 1] = '\0';
		memcpy(x.server, w->server, sizeof(x.server));
		x.server[sizeof(x.server) - 1] = '\0';
		for (int d = 0; d < 2; d++) {
			x.h.read[d] = w->read[d];
			x.h.written[d] = w->written[d];
			x.h.payload_from[d] = w->payload_from[d];
			/* A queue as the session's: the sockmap finishes a direction
			 * in userspace through it, empty or not. */
			buf_init(&x.h.queue[d], 65536);
			if (w->qlen[d]) {
				ssize_t n = next_message(ho, qbuf, sizeof(qbuf));
				uint32_t type;

				memcpy(&type, qbuf, sizeof(type));
				if (n != (ssize_t)(sizeof(uint32_t) + w->qlen[d]) || type != HO_QUEUES ||
				    buf_append(&x.h.queue[d], qbuf + sizeof(uint32_t), w->qlen[d])) {
					log_error("upgrade: tunnel %llu: its queue did not come whole",
						  (unsigned long long)w->serial);
					ok = false;
				}
			}
		}
		if (!ok) { /* its sockets close: the one tunnel this cannot carry */
			for (int d = 0; d < 2; d++)
				buf_release(&x.h.queue[d]);
			for (uint32_t k = 0; k < 2 + w->saved_nfds && next < nfds; k++)
				close(fds[next++]);
			continue;
		}
		x.h.fd[0] = fds[next++];
		x.h.fd[1] = fds[next++];
		x.saved.len = w->saved_len;
		x.saved.nfds = w->saved_nfds;
		memcpy(x.saved.state, w->state, sizeof(x.saved.state));
		for (uint32_t k = 0; k < w->saved_nfds; k++)
			x.saved.fd[k] = fds[next++];
		if (tunnel_take_over(ho->px->tunnels, &x, route_state_adopt(ho->px, x.route),
				     x.server[0] ? pool_server_adopt(ho->px, x.server) : NULL))
			ho->tunnels++;
	}
	for (; next < nfds; next++)
		close(fds[next]);
}

static void on_message(struct ev_handler *h, uint32_t events)
{
	struct handover *ho = container_of(h, struct handover, h);
	static struct wire_batch msg;
	int fds[FDPASS_MAX];
	size_t nfds;
	ssize_t n;

	(void)events;
	n = fdpass_recv(ho->sock, &msg, sizeof(msg), fds, FDPASS_MAX, &nfds);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	begin(ho);
	if (n < (ssize_t)sizeof(uint32_t)) {
		if (n != 0)
			log_error("upgrade: the old process's handover broke off: %s", n < 0 ? strerror(errno) : "short");
		for (size_t i = 0; i < nfds; i++)
			close(fds[i]);
		arrived(ho);
		return;
	}
	switch (msg.type) {
	case HO_SESSION: {
		struct wire_session *w = (struct wire_session *)&msg;
		const struct listener_cfg *lc;

		w->listener[sizeof(w->listener) - 1] = '\0';
		lc = config_listener(ho->px->cfg, w->listener);
		if ((size_t)n != sizeof(*w) || nfds != 1 || !lc) {
			for (size_t i = 0; i < nfds; i++)
				close(fds[i]);
			log_error("upgrade: a connection came for listener '%s', which this configuration lacks",
				  w->listener);
			return;
		}
		session_resume(ho->px, fds[0], lc->name, &w->peer, w->answered);
		ho->sessions++;
		return;
	}
	case HO_TUNNELS:
		arrive_tunnels(ho, &msg, (size_t)n, fds, nfds);
		return;
	case HO_KERNEL_DONE:
		kernel_done(ho);
		return;
	case HO_IDS:
		if ((size_t)n == 2 * sizeof(uint64_t)) {
			uint64_t ids[2];

			memcpy(ids, &msg, sizeof(ids));
			tunnel_set_ids_after(ho->px->tunnels, ids[1]);
		}
		return;
	case HO_DONE:
		arrived(ho);
		return;
	default:
		log_error("upgrade: an unknown message (type %u) in the handover", msg.type);
		for (size_t i = 0; i < nfds; i++)
			close(fds[i]);
	}
}

struct handover *handover_arrive(struct proxy *px, int sock, void (*on_begin)(void *ctx), void *ctx)
{
	struct handover *ho = calloc(1, sizeof(*ho));
	struct timeval tv = { .tv_sec = HO_RECV_TIMEOUT_S };

	if (!ho)
		return NULL;
	ho->px = px;
	ho->sock = sock;
	ho->begin = on_begin;
	ho->begin_ctx = ctx;
	setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	ho->h.fd = sock;
	ho->h.on_event = on_message;
	tunnel_set_upgrade(px->tunnels, ENGINE_UPGRADE_ARRIVING);
	if (ev_watch(px->loop, &ho->h, EPOLLIN)) {
		free(ho);
		return NULL;
	}
	return ho;
}

void handover_free(struct handover *ho)
{
	if (!ho)
		return;
	if (ho->sock >= 0) {
		ev_watch(ho->px->loop, &ho->h, 0);
		close(ho->sock);
	}
	free(ho);
}
