#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include "access_log.h"
#include "buf.h"
#include "config_value.h"
#include "http_body.h"
#include "header_rewrite.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"
#include "route.h"
#include "session.h"
#include "tunnel.h"
#include "upstream.h"
#include "ws_handshake.h"

enum session_state {
	S_REQ_HEAD,   /* waiting for a complete request head */
	S_CONNECTING, /* upstream connect() in progress */
	S_EXCHANGE,   /* request body out, response head and body back */
	S_HANDOFF,    /* 101 accepted: queueing what was read before the hand-off */
	S_CLOSING,    /* flushing a final response, then close */
};

struct session {
	struct conn_link link; /* first: the list entry is the session */
	struct proxy *px;
	struct config *cfg;       /* the generation the current request runs under */
	/* The name of the listener that accepted it: a copy, as the listener
	 * closes before its connections at a drain or an upgrade. */
	char listener[CFG_NAME_MAX];
	struct sockaddr_storage peer;
	const struct route *route;
	struct server *server;    /* of the upstream connection; counts in its `active` */
	struct route_state *tunnel_slot; /* an upgrade holds one of the route's tunnel slots */
	uint64_t tried;           /* servers of the pool tried for this request */
	struct buf replay;        /* the request head, while a reused connection may need a retry */
	bool upstream_reused, upstream_keepalive, trusted_peer;
	unsigned requests;        /* answered so far */
	uint64_t deadline_ms;     /* 0 = none */
	int deadline_action;      /* what happens then: see session_timeouts() */
	struct ev_handler client, upstream; /* upstream.fd < 0 when none */
	enum session_state state;
	bool closed, client_eof, upstream_eof, upstream_connected;
	bool websocket, head_request, keepalive, close_after, resp_head_done;
	/* An upgrade request not yet counted as succeeded or refused (the
	 * metrics count each once). */
	bool upgrade_pending;
	bool upgrade_admitted; /* counted in px->upgrades_admitted until its tunnel starts or it ends */
	char last_upstream[256 + 10]; /* the server last tried, for a 502's log line */
	/* The current request, for the metrics and the access log: when its
	 * head was complete, where it starts in each byte count, its status. */
	uint64_t req_start_ns, req_in_base, req_out_base, req_in_end;
	int resp_status;
	bool req_logged;
	char req_method[16], req_host[256], req_path[1024];
	struct buf cin, uin, cout, uout;
	struct http_body req_body, resp_body;
	/* Bytes userspace moved on each socket: the sockmap FIN check compares
	 * them with the kernel's own counts. */
	uint64_t client_read, client_written, upstream_read, upstream_written;
	/* Set at the 101: where the tunnel's payload starts in upstream_written
	 * and client_written (struct tunnel_handoff). */
	uint64_t payload_from[2];
	char ws_accept[WS_ACCEPT_LEN + 1];
	char client_ip[INET6_ADDRSTRLEN];
};


/* What happens when a session's deadline passes. */
enum deadline_action {
	DL_NONE,
	DL_IDLE_CLOSE,      /* keep-alive idle: close quietly */
	DL_HEADER,          /* request head too slow: 408 */
	DL_CONNECT,         /* upstream connect too slow: next server or 502 */
	DL_EXCHANGE,        /* no progress: 408 (client body) or 504 (upstream) */
	DL_LINGER,          /* a final answer the client does not read */
};

/* cin holds a whole request head; the others only need to stream. */
#define CIN_CAP (HTTP_MAX_HEAD + 4096)
#define UIN_CAP (HTTP_MAX_HEAD + 4096)
#define OUT_CAP 65536

static void on_client(struct ev_handler *h, uint32_t events);
static void on_upstream(struct ev_handler *h, uint32_t events);
static void drive(struct session *s);

static void set_deadline(struct session *s, enum deadline_action action, uint64_t after_ms)
{
	s->deadline_action = action;
	s->deadline_ms = action == DL_NONE ? 0 : ev_now_ms() + after_ms;
}

/* Waiting for the next request: the first one gets the header timeout,
 * later ones the keep-alive timeout until their first byte. */
static void await_request(struct session *s)
{
	s->state = S_REQ_HEAD;
	if (s->requests && !buf_len(&s->cin))
		set_deadline(s, DL_IDLE_CLOSE, s->cfg->timeouts.keepalive_ms);
	else
		set_deadline(s, DL_HEADER, s->cfg->timeouts.client_header_ms);
}

void session_start(struct proxy *px, int fd, const char *listener, const struct sockaddr_storage *peer)
{
	session_resume(px, fd, listener, peer, 0);
}

void session_resume(struct proxy *px, int fd, const char *listener, const struct sockaddr_storage *peer,
		    unsigned answered)
{
	struct session *s = calloc(1, sizeof(*s));

	if (!s) {
		close(fd);
		return;
	}
	s->px = px;
	s->cfg = config_get(px->cfg);
	snprintf(s->listener, sizeof(s->listener), "%s", listener);
	s->client.fd = fd;
	s->client.on_event = on_client;
	s->upstream.fd = -1;
	s->upstream.on_event = on_upstream;
	buf_init(&s->cin, CIN_CAP);
	buf_init(&s->uin, UIN_CAP);
	buf_init(&s->cout, OUT_CAP);
	buf_init(&s->uout, OUT_CAP);
	buf_init(&s->replay, HTTP_MAX_HEAD + 4096);
	snprintf(s->client_ip, sizeof(s->client_ip), "unknown");
	s->peer = *peer;
	if (peer->ss_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)peer)->sin_addr, s->client_ip, sizeof(s->client_ip));
	else if (peer->ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)peer)->sin6_addr, s->client_ip, sizeof(s->client_ip));
	px->sessions_open++;
	metrics_inc(M_SESSIONS_OPEN);
	conn_link_add(&px->sessions, &s->link);
	s->requests = answered; /* past its first request: the keep-alive timeout */
	await_request(s);
	drive(s);
}

static void session_free(void *arg)
{
	struct session *s = arg;

	config_put(s->cfg);
	free(s);
}

/* Ends the request's claim on its upstream connection; the connection goes
 * back to the pool when it is clean and both ends agreed to keep it. */
static void release_upstream(struct session *s, bool reusable)
{
	if (s->upstream.fd < 0)
		return;
	ev_watch(s->px->loop, &s->upstream, 0);
	if (s->server) {
		pool_server_done(s->server->st);
		if (reusable)
			pool_put_idle(s->route->pool, s->server, s->upstream.fd, s->upstream_read, s->upstream_written,
				      ev_now_ms());
		else
			close(s->upstream.fd);
		s->server = NULL;
	} else {
		close(s->upstream.fd);
	}
	s->upstream.fd = -1;
	s->upstream.events = 0;
	s->upstream_connected = false;
	s->upstream_eof = false;
	s->upstream_reused = false;
	s->upstream_read = s->upstream_written = 0;
}

static void close_upstream(struct session *s)
{
	release_upstream(s, false);
	buf_release(&s->uin);
	buf_release(&s->uout);
	buf_release(&s->replay);
}

/* An upgrade that did not become a tunnel gives its slot back. */
static void release_tunnel_slot(struct session *s)
{
	route_tunnel_done(s->tunnel_slot);
	s->tunnel_slot = NULL;
	if (s->upgrade_admitted) {
		s->upgrade_admitted = false;
		s->px->upgrades_admitted--;
	}
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void copy_str(char *out, size_t len, struct http_str v)
{
	snprintf(out, len, "%.*s", (int)(v.len < len ? v.len : len - 1), v.p);
}

/* The current request's access log line, once: its status is final. */
static void log_request(struct session *s, int status, uint64_t tunnel)
{
	char client[INET6_ADDRSTRLEN + 8], upstream[sizeof(s->last_upstream)];
	/* A 101's bytes end where the tunnel's start (set at the 101). An error
	 * reply supersedes what was queued for the client: never below zero. */
	uint64_t in_end = tunnel ? s->req_in_end : s->client_read - buf_len(&s->cin);
	uint64_t out_end = tunnel ? s->payload_from[WS_DIR_U2C] : s->client_written + buf_len(&s->cout);

	if (s->req_logged || !access_log_enabled())
		return;
	s->req_logged = true;
	snprintf(client, sizeof(client), s->peer.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", s->client_ip,
		 ntohs(((struct sockaddr_in *)&s->peer)->sin_port)); /* same offset in sockaddr_in6 */
	snprintf(upstream, sizeof(upstream), "%s", s->last_upstream[0] ? s->last_upstream : "-");
	access_log_request(&(struct access_request){
		.client = client,
		.host = s->req_host,
		.method = s->req_method,
		.path = s->req_path,
		.upstream = upstream,
		.status = status,
		.duration_ms = s->req_start_ns ? (double)(mono_ns() - s->req_start_ns) / 1e6 : 0,
		.bytes_in = in_end > s->req_in_base ? in_end - s->req_in_base : 0,
		.bytes_out = out_end > s->req_out_base ? out_end - s->req_out_base : 0,
		.tunnel = tunnel,
	});
}

/* Counts a pending upgrade as refused, for this reason. */
static void upgrade_refused(struct session *s, enum metric reason)
{
	if (!s->upgrade_pending)
		return;
	s->upgrade_pending = false;
	metrics_inc(reason);
}

void session_close(struct session *s)
{
	if (s->closed)
		return;
	s->closed = true;
	/* A request still open: the client left before its answer (nginx's
	 * 499), or the answer stopped midway (its status, as the client got it). */
	if (s->req_start_ns && !s->req_logged)
		log_request(s, s->resp_head_done ? s->resp_status : 499, 0);
	upgrade_refused(s, M_REFUSED_CLIENT_GONE);
	close_upstream(s);
	/* Blocks go back to the pool now, not with the deferred free: an
	 * accept batch of handshakes would otherwise empty the pool (mmap)
	 * and then overflow it (munmap) every time. */
	buf_release(&s->cin);
	buf_release(&s->cout);
	release_tunnel_slot(s);
	ev_watch(s->px->loop, &s->client, 0);
	if (s->client.fd >= 0)
		close(s->client.fd);
	s->px->sessions_open--;
	metrics_add(M_SESSIONS_OPEN, -1);
	conn_link_del(&s->link);
	ev_defer(s->px->loop, session_free, s);
}

void session_drain(struct proxy *px)
{
	struct conn_link *l = px->sessions.next;

	while (l != &px->sessions) {
		struct session *s = (struct session *)l;

		l = l->next;
		/* Idle between requests (or not begun): closed, as nginx does
		 * at a graceful stop. A request in progress gets its answer,
		 * with Connection: close when its head is still to come. */
		if (s->state == S_REQ_HEAD && !buf_len(&s->cin) && !buf_len(&s->cout))
			session_close(s);
		else
			s->close_after = true;
	}
}

void session_hand_over(struct proxy *px, session_leave_fn fn, void *ctx)
{
	struct conn_link *l = px->sessions.next;

	px->draining = true;
	while (l != &px->sessions) {
		struct session *s = (struct session *)l;

		l = l->next;
		/* Between requests, or not begun: nothing of it is in this
		 * process but the socket, so the new one goes on with it. The
		 * others finish here, and close after their answer (or become
		 * tunnels, which leave then). */
		if (s->state == S_REQ_HEAD && !buf_len(&s->cin) && !buf_len(&s->cout)) {
			fn(ctx, s->client.fd, s->listener, &s->peer, s->requests);
			session_close(s);
		} else {
			s->close_after = true;
		}
	}
}

void session_close_all(struct proxy *px)
{
	while (px->sessions.next != &px->sessions)
		session_close((struct session *)px->sessions.next);
}


/* A head that is still arriving (a 408, or a head too large to parse) is
 * a request of its own for the log; nothing at all is not a request. */
static void request_begins(struct session *s)
{
	s->req_start_ns = mono_ns();
	s->req_in_base = s->client_read - buf_len(&s->cin);
	s->req_out_base = s->client_written + buf_len(&s->cout);
	s->req_logged = false;
	s->resp_status = 0;
	s->req_method[0] = s->req_host[0] = s->req_path[0] = s->last_upstream[0] = '\0';
}

void session_reply_error(struct session *s, int status)
{
	char resp[256];
	int n;

	n = snprintf(resp, sizeof(resp),
		     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%sConnection: close\r\n\r\n%d %s\n",
		     status, http_reason(status), strlen(http_reason(status)) + 5,
		     status == 426 ? "Sec-WebSocket-Version: 13\r\n" : "", status, http_reason(status));
	log_info("client %s: %d %s", s->client_ip, status, http_reason(status));
	metrics_status(status);
	if (s->state == S_REQ_HEAD && s->req_logged)
		request_begins(s);
	if (s->state == S_REQ_HEAD && !buf_len(&s->cin))
		s->req_logged = true; /* nothing was sent: no line */
	/* The sites that know better named their reason already. */
	upgrade_refused(s, status >= 500 ? M_REFUSED_UPSTREAM_UNAVAILABLE : M_REFUSED_INVALID);
	/* What this request queued for the client is superseded; while a head
	 * is read, the queue holds earlier answers, complete: they go first. */
	if (s->state != S_REQ_HEAD)
		buf_consume(&s->cout, buf_len(&s->cout));
	buf_append(&s->cout, resp, n);
	log_request(s, status, 0); /* while the server it tried is known */
	close_upstream(s);
	release_tunnel_slot(s);
	set_deadline(s, DL_LINGER, s->cfg->timeouts.client_header_ms);
	s->state = S_CLOSING;
}

/* Whether this route's tunnels may go express: the upstream leg is then
 * clamped to the client's (the express lane's MSS clamp). */
static bool express_lane(const struct session *s)
{
	enum tunnel_mode m = route_mode(s->route, s->cfg->mode);

	return (m == MODE_AUTO ? s->cfg->mode : m) == MODE_TCSPLICE;
}

/* Gives the request an upstream connection: an idle one to the next server
 * of the pool when there is one, else a new connect. Servers that refuse at
 * once are marked down and the next one is tried; nothing of the request
 * has left yet, so that is always safe. */
static void connect_upstream(struct session *s)
{
	struct pool *p = s->route->pool;
	uint64_t now = ev_now_ms();

	for (;;) {
		struct server *srv = pool_pick(p, s->tried, now);
		int fd;

		if (srv)
			snprintf(s->last_upstream, sizeof(s->last_upstream), strchr(srv->ep.host, ':') ? "[%s]:%s" : "%s:%s",
				 srv->ep.host, srv->ep.port);
		if (!srv) {
			log_warn("pool %s: no server left to try", p->name);
			session_reply_error(s, 502);
			return;
		}
		/* A server may close an idle connection just as we reuse it. A
		 * bodiless request is then sent again (its head is kept in
		 * replay); one with a body could not be, so it never takes an
		 * idle connection. */
		fd = s->req_body.kind == BODY_NONE ? pool_take_idle(srv, &s->upstream_read, &s->upstream_written) : -1;
		if (fd >= 0) {
			s->upstream.fd = fd;
			s->server = srv;
			srv->st->active++;
			s->upstream_reused = s->upstream_connected = true;
			buf_consume(&s->replay, buf_len(&s->replay));
			buf_append(&s->replay, buf_head(&s->uout), buf_len(&s->uout));
			s->state = S_EXCHANGE;
			set_deadline(s, DL_EXCHANGE, s->cfg->timeouts.upstream_response_ms);
			return;
		}
		s->tried |= 1ull << (srv - p->servers);
		fd = upstream_connect(&srv->ep, express_lane(s) ? upstream_mss_for(s->client.fd) : 0);
		if (fd < 0) {
			log_warn("upstream %s:%s: %s", srv->ep.host, srv->ep.port, strerror(errno));
			metrics_upstream_failure(srv->ep.host, srv->ep.port);
			pool_mark_failed(p, srv, now);
			continue;
		}
		s->upstream.fd = fd;
		s->server = srv;
		srv->st->active++;
		s->upstream_read = s->upstream_written = 0;
		s->state = S_CONNECTING;
		set_deadline(s, DL_CONNECT, s->cfg->timeouts.upstream_connect_ms);
		return;
	}
}

static void upstream_established(struct session *s)
{
	s->upstream_connected = true;
	s->state = S_EXCHANGE;
	set_deadline(s, DL_EXCHANGE, s->cfg->timeouts.upstream_response_ms);
}

/* The connect failed or timed out: next server, or 502. */
static void upstream_failed(struct session *s, const char *why)
{
	struct server *srv = s->server;

	log_warn("upstream %s:%s: %s", srv->ep.host, srv->ep.port, why);
	metrics_upstream_failure(srv->ep.host, srv->ep.port);
	pool_mark_failed(s->route->pool, srv, ev_now_ms());
	release_upstream(s, false);
	connect_upstream(s);
}

/* A reused connection ended before a byte of the answer: send the saved
 * request on another connection. false when that is not safe. */
static bool retry_reused(struct session *s)
{
	if (!s->upstream_reused || !buf_len(&s->replay) || s->resp_head_done || buf_len(&s->uin))
		return false;
	log_debug("reused upstream connection closed before answering: sending the request again");
	release_upstream(s, false);
	buf_consume(&s->uout, buf_len(&s->uout));
	buf_append(&s->uout, buf_head(&s->replay), buf_len(&s->replay));
	buf_consume(&s->replay, buf_len(&s->replay));
	connect_upstream(s);
	return true;
}

/* Parses a complete request head, picks its route and starts forwarding it. */
static bool start_request(struct session *s)
{
	struct request_rewrite rw = { .client_ip = s->client_ip };
	struct http_head head, *h = &head;
	const struct listener_cfg *lc;
	long r;
	int ws, status;

	if (s->cfg != s->px->cfg) {
		/* A reload happened: this request follows the new routes. */
		config_put(s->cfg);
		s->cfg = config_get(s->px->cfg);
	}
	r = http_parse_request(buf_head(&s->cin), buf_len(&s->cin), h, &s->cfg->limits);
	if (r == 0) {
		if (s->client_eof)
			session_close(s);
		else if (s->deadline_action == DL_IDLE_CLOSE)
			set_deadline(s, DL_HEADER, s->cfg->timeouts.client_header_ms); /* its first byte came */
		return false;
	}
	/* A request begins: where it starts in each byte count, for its line. */
	request_begins(s);
	if (r < 0) {
		session_reply_error(s, (int)-r);
		goto done;
	}
	copy_str(s->req_method, sizeof(s->req_method), h->method);
	copy_str(s->req_path, sizeof(s->req_path), h->target);
	if (http_header_find(h, "Host", 0) >= 0)
		copy_str(s->req_host, sizeof(s->req_host), h->headers[http_header_find(h, "Host", 0)].value);
	if (h->version_minor == 1 && http_header_count(h, "Host") != 1) {
		session_reply_error(s, 400);
		goto done;
	}
	if (h->version_minor == 0 && http_header_count(h, "Host") > 1) {
		session_reply_error(s, 400);
		goto done;
	}
	ws = ws_request_check(h, s->ws_accept);
	if (ws) {
		metrics_inc(M_UPGRADES_ATTEMPTED);
		s->upgrade_pending = true;
	}
	if (ws < 0 || http_request_body(h, &s->req_body) < 0 || (ws && !s->req_body.done)) {
		session_reply_error(s, ws < 0 ? -ws : 400);
		goto done;
	}
	s->route = route_match(s->cfg, s->listener, h);
	if (!s->route) {
		upgrade_refused(s, M_REFUSED_NO_ROUTE);
		session_reply_error(s, 404);
		goto done;
	}
	if (ws == 1 && (status = route_admit_websocket(s->route, h))) {
		log_info("route %s refuses the upgrade (%s)", s->route->name,
			 !s->route->websocket ? "websocket off" : "origin");
		upgrade_refused(s, !s->route->websocket ? M_REFUSED_WEBSOCKET_OFF : M_REFUSED_ORIGIN);
		session_reply_error(s, status);
		goto done;
	}
	/* The caps: the daemon's (the kernel's maps hold max_tunnels tunnels,
	 * and the upgrades waiting for their 101 will be tunnels) and the
	 * route's, counted across the workers. */
	if (ws == 1) {
		bool daemon_full;

		if (route_take_slot(s->route, s->cfg->max_tunnels, &daemon_full)) {
			static uint64_t last_ms;

			if (!daemon_full)
				log_info("route %s refuses the upgrade (max_tunnels reached)", s->route->name);
			else if (ev_now_ms() - last_ms >= 1000) {
				log_warn("max_tunnels (%u) reached: upgrades get 503", s->cfg->max_tunnels);
				last_ms = ev_now_ms();
			}
			upgrade_refused(s, M_REFUSED_MAX_TUNNELS);
			session_reply_error(s, 503);
			goto done;
		}
		s->tunnel_slot = s->route->st;
		s->upgrade_admitted = true;
		s->px->upgrades_admitted++;
	}
	s->websocket = ws == 1;
	s->head_request = http_str_ieq(h->method, "HEAD");
	s->keepalive = h->version_minor == 1 && !http_header_has_token(h, "Connection", "close");
	s->close_after = !s->keepalive || s->px->draining;
	s->resp_head_done = false;
	s->upstream_keepalive = false;
	lc = config_listener(s->cfg, s->listener);
	rw.trust_forwarded = false;
	for (size_t i = 0; lc && i < lc->n_trusted && !rw.trust_forwarded; i++)
		rw.trust_forwarded = cidr_contains(&lc->trusted[i], (const struct sockaddr *)&s->peer);
	rw.websocket = s->websocket;
	rw.upstream_close = !s->route->pool->keepalive;
	if (rewrite_request(h, &rw, &s->uout)) {
		session_reply_error(s, 431);
		goto done;
	}
	buf_consume(&s->cin, r);
	log_debug("client %s: %.*s %.*s%s -> route %s", s->client_ip, (int)h->method.len, h->method.p,
		  (int)h->target.len, h->target.p, s->websocket ? " (websocket)" : "", s->route->name);
	s->tried = 0;
	connect_upstream(s);
done:
	return true;
}

/* Streams request-body bytes from the client to the upstream. */
static bool forward_request_body(struct session *s)
{
	size_t n = buf_len(&s->cin) < buf_room(&s->uout) ? buf_len(&s->cin) : buf_room(&s->uout);
	long adv;

	if (s->req_body.done || !n)
		return false;
	adv = http_body_advance(&s->req_body, buf_head(&s->cin), n);
	if (adv < 0) {
		if (s->resp_head_done)
			session_close(s);
		else
			session_reply_error(s, 400);
		return true;
	}
	buf_append(&s->uout, buf_head(&s->cin), adv);
	buf_consume(&s->cin, adv);
	return adv > 0;
}

/* Handles one response head from the upstream. */
static bool handle_response_head(struct session *s)
{
	struct http_head head, *h = &head;
	long r;
	bool progress = true;

	r = http_parse_response(buf_head(&s->uin), buf_len(&s->uin), h, NULL);
	if (r == 0) {
		progress = false;
		if (s->upstream_eof && retry_reused(s))
			return true;
		if (s->upstream_eof || !buf_room(&s->uin)) {
			log_warn("upstream closed or overflowed before a complete response head");
			session_reply_error(s, 502);
			progress = true;
		}
		goto done;
	}
	if (r < 0) {
		log_warn("upstream sent an invalid HTTP/1.x response head");
		session_reply_error(s, 502);
		goto done;
	}
	if (h->status == 101) {
		if (!s->websocket || !ws_response_accepts(h, s->ws_accept)) {
			log_warn("upstream 101 without a matching websocket accept: no tunnel");
			upgrade_refused(s, M_REFUSED_BAD_ACCEPT);
			session_reply_error(s, 502);
			goto done;
		}
		if (rewrite_response(h, true, false, &s->cout)) {
			session_reply_error(s, 502);
			goto done;
		}
		metrics_status(101);
		/* Everything queued so far is the handshake; what comes after
		 * it (move_leftovers) is the tunnel's. */
		s->payload_from[WS_DIR_C2U] = s->upstream_written + buf_len(&s->uout);
		s->payload_from[WS_DIR_U2C] = s->client_written + buf_len(&s->cout);
		s->req_in_end = s->client_read - buf_len(&s->cin);
		buf_consume(&s->uin, r);
		s->state = S_HANDOFF;
		set_deadline(s, DL_NONE, 0);
		goto done;
	}
	if (h->status < 200) {
		/* 100 Continue and friends: relay and wait for the final one. */
		if (buf_room(&s->cout) < (size_t)r + 64) {
			progress = false;
			goto done;
		}
		rewrite_response(h, false, false, &s->cout);
		buf_consume(&s->uin, r);
		goto done;
	}
	if (http_response_body(h, s->head_request, &s->resp_body) < 0) {
		log_warn("upstream response has conflicting framing");
		session_reply_error(s, 502);
		goto done;
	}
	/* An upstream that answers before the request body is complete, or a
	 * body delimited by close, ends the client connection too. */
	s->close_after |= s->resp_body.kind == BODY_UNTIL_CLOSE || !s->req_body.done;
	s->upstream_keepalive = s->route->pool->keepalive && h->version_minor == 1 &&
				!http_header_has_token(h, "Connection", "close");
	if (rewrite_response(h, false, s->close_after, &s->cout)) {
		session_reply_error(s, 502);
		goto done;
	}
	metrics_status(h->status);
	upgrade_refused(s, M_REFUSED_UPSTREAM_DECLINED);
	s->resp_status = h->status;
	buf_consume(&s->uin, r);
	s->resp_head_done = true;
done:
	return progress;
}

static bool forward_response_body(struct session *s)
{
	size_t n = buf_len(&s->uin) < buf_room(&s->cout) ? buf_len(&s->uin) : buf_room(&s->cout);
	long adv = 0;

	if (n) {
		adv = http_body_advance(&s->resp_body, buf_head(&s->uin), n);
		if (adv < 0) {
			log_warn("upstream sent a malformed chunked body");
			session_close(s);
			return true;
		}
		buf_append(&s->cout, buf_head(&s->uin), adv);
		buf_consume(&s->uin, adv);
	}
	if (s->resp_body.kind == BODY_UNTIL_CLOSE && s->upstream_eof && !buf_len(&s->uin))
		s->resp_body.done = true;
	if (!s->resp_body.done) {
		if (s->upstream_eof && !buf_len(&s->uin)) {
			/* Truncated by the upstream: the client must see it truncated too. */
			s->close_after = true;
			s->state = S_CLOSING;
			set_deadline(s, DL_LINGER, s->cfg->timeouts.client_header_ms);
			log_request(s, s->resp_status, 0);
			close_upstream(s);
			release_tunnel_slot(s);
			return true;
		}
		return adv > 0;
	}
	/* Clean end of a response: the connection can serve another request. */
	log_request(s, s->resp_status, 0);
	release_upstream(s, s->upstream_keepalive && s->req_body.done && !buf_len(&s->uout) && !buf_len(&s->uin) &&
				    !s->upstream_eof && s->resp_body.kind != BODY_UNTIL_CLOSE);
	buf_release(&s->uin);
	buf_release(&s->uout);
	buf_release(&s->replay);
	release_tunnel_slot(s);
	s->requests++;
	s->websocket = false;
	if (s->close_after) {
		s->state = S_CLOSING;
		set_deadline(s, DL_LINGER, s->cfg->timeouts.client_header_ms);
	} else {
		await_request(s);
	}
	return true;
}

/* Queues what the session read but did not forward, so the tunnel starts
 * with one queue per direction. false while an output buffer is too full. */
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

/* The 101 and everything read since are queued: the sockets, the queues,
 * the byte counts and the route and server slots go to the tunnel layer,
 * and the session ends. */
static void hand_off(struct session *s)
{
	struct tunnel_handoff h = {
		.fd = { [TUNNEL_END_CLIENT] = s->client.fd, [TUNNEL_END_UPSTREAM] = s->upstream.fd },
		.queue = { [WS_DIR_C2U] = s->uout, [WS_DIR_U2C] = s->cout },
		.read = { [WS_DIR_C2U] = s->client_read, [WS_DIR_U2C] = s->upstream_read },
		.written = { [WS_DIR_C2U] = s->upstream_written, [WS_DIR_U2C] = s->client_written },
		.payload_from = { s->payload_from[WS_DIR_C2U], s->payload_from[WS_DIR_U2C] },
		.route_st = s->tunnel_slot,
		.server_st = s->server ? s->server->st : NULL,
		.mode = route_mode(s->route, s->cfg->mode),
	};

	uint64_t tunnel;

	/* The session's epoll registrations carry its own pointers: drop them. */
	ev_watch(s->px->loop, &s->client, 0);
	ev_watch(s->px->loop, &s->upstream, 0);
	s->client.fd = s->upstream.fd = -1;
	buf_init(&s->uout, 0);
	buf_init(&s->cout, 0);
	s->tunnel_slot = NULL;
	/* Started before the session closes: the 101's line names its tunnel
	 * and its server. */
	if (s->upgrade_admitted) {
		s->upgrade_admitted = false; /* a tunnel now, counted as one */
		s->px->upgrades_admitted--;
	}
	/* The 101's line first, so it always precedes its tunnel's (a tunnel
	 * may end within tunnel_start); it names the id the tunnel will get. */
	log_request(s, 101, tunnel_set_next_id(s->px->tunnels));
	tunnel = tunnel_start(s->px->tunnels, &h);
	if (!tunnel)
		log_warn("client %s: the tunnel could not start (out of memory): both sockets closed", s->client_ip);
	if (tunnel && s->upgrade_pending) {
		s->upgrade_pending = false;
		metrics_inc(M_UPGRADES_SUCCEEDED);
		metrics_handshake_seconds((double)(mono_ns() - s->req_start_ns) / 1e9);
	}
	upgrade_refused(s, M_REFUSED_INTERNAL_ERROR); /* the tunnel could not start (out of memory) */
	s->server = NULL; /* its count is the tunnel's now */
	session_close(s);
}

static bool step(struct session *s)
{
	switch (s->state) {
	case S_REQ_HEAD:
		if (!buf_len(&s->cin)) {
			if (s->client_eof)
				session_close(s);
			return false;
		}
		return start_request(s);
	case S_CONNECTING:
		return false;
	case S_EXCHANGE: {
		bool progress = forward_request_body(s);

		if (s->closed || s->state != S_EXCHANGE)
			return true;
		if (!s->req_body.done && s->client_eof && !buf_len(&s->cin)) {
			session_close(s); /* client gave up mid-body */
			return true;
		}
		if (!s->resp_head_done)
			progress |= handle_response_head(s);
		if (!s->closed && s->state == S_EXCHANGE && s->resp_head_done)
			progress |= forward_response_body(s);
		return progress;
	}
	case S_HANDOFF:
		return false;
	case S_CLOSING:
		if (!buf_len(&s->cout)) {
			/* Half-close first so the client reads the whole answer
			 * instead of an RST caused by unread request bytes. */
			shutdown(s->client.fd, SHUT_WR);
			session_close(s);
			return true;
		}
		return false;
	}
	return false;
}

static bool wants_client_read(const struct session *s)
{
	return !s->client_eof && buf_room(&s->cin) &&
	       (s->state == S_REQ_HEAD || s->state == S_CONNECTING || s->state == S_EXCHANGE);
}

static bool wants_upstream_read(const struct session *s)
{
	return s->upstream_connected && !s->upstream_eof && buf_room(&s->uin) && s->state == S_EXCHANGE;
}

/* Moves bytes between sockets and buffers; false means the session died. */
static bool do_io(struct session *s, bool *progress)
{
	ssize_t n;

	if (buf_len(&s->cout)) {
		n = buf_write_fd(&s->cout, s->client.fd);
		if (n > 0) {
			s->client_written += n;
			*progress = true;
		} else if (n < 0 && errno != EAGAIN) {
			session_close(s);
			return false;
		}
	}
	/* A connect to a local upstream has usually completed by the time
	 * connect() returns EINPROGRESS: send at once instead of waiting for
	 * EPOLLOUT (one epoll round trip less per upstream connection). */
	if ((s->upstream_connected || s->state == S_CONNECTING) && buf_len(&s->uout)) {
		n = buf_write_fd(&s->uout, s->upstream.fd);
		if (n > 0) {
			if (!s->upstream_connected)
				upstream_established(s);
			s->upstream_written += n;
			*progress = true;
		} else if (n < 0 && errno != EAGAIN) {
			if (!s->upstream_connected) {
				/* Refused (or the like) before a byte left: next server. */
				upstream_failed(s, strerror(errno));
				return !s->closed;
			}
			if (retry_reused(s))
				return true;
			if (s->resp_head_done)
				session_close(s);
			else
				session_reply_error(s, 502);
			return !s->closed;
		}
	}
	if (wants_client_read(s)) {
		n = buf_read_fd(&s->cin, s->client.fd);
		if (n > 0) {
			s->client_read += n;
			*progress = true;
		} else if (n == 0) {
			s->client_eof = true;
			*progress = true;
		} else if (errno != EAGAIN) {
			session_close(s);
			return false;
		}
	}
	if (wants_upstream_read(s)) {
		n = buf_read_fd(&s->uin, s->upstream.fd);
		if (n > 0) {
			s->upstream_read += n;
			*progress = true;
		} else if (n == 0 || errno != EAGAIN) {
			s->upstream_eof = true;
			*progress = true;
		}
	}
	return true;
}

static void update_interest(struct session *s)
{
	uint32_t ce = 0, ue = 0;

	if (wants_client_read(s))
		ce |= EPOLLIN;
	if (buf_len(&s->cout))
		ce |= EPOLLOUT;
	/* Nothing to wait for on the client: leave epoll so a level-triggered
	 * EPOLLHUP cannot spin while we wait on the upstream. */
	ev_watch(s->px->loop, &s->client, ce);
	if (s->upstream.fd >= 0) {
		if (s->state == S_CONNECTING || buf_len(&s->uout))
			ue |= EPOLLOUT;
		if (wants_upstream_read(s))
			ue |= EPOLLIN;
		ev_watch(s->px->loop, &s->upstream, ue ? ue : EPOLLERR);
	}
}

static void drive(struct session *s)
{
	bool moved = false;

	for (int rounds = 0; rounds < 1024; rounds++) {
		bool progress = false;

		if (!do_io(s, &progress) || s->closed)
			return;
		progress |= step(s);
		if (s->closed)
			return;
		if (s->state == S_HANDOFF && move_leftovers(s)) {
			hand_off(s);
			return;
		}
		if (!progress)
			break;
		moved = true;
	}
	/* One clock read per wakeup, not per round: an exchange that moves is alive. */
	if (moved && s->state == S_EXCHANGE)
		set_deadline(s, DL_EXCHANGE, s->cfg->timeouts.upstream_response_ms);
	update_interest(s);
}

void session_timeouts(struct proxy *px, uint64_t now_ms)
{
	struct conn_link *l, *next;

	for (l = px->sessions.next; l != &px->sessions; l = next) {
		struct session *s = (struct session *)l;

		next = l->next;
		if (s->closed || !s->deadline_ms || now_ms < s->deadline_ms)
			continue;
		switch (s->deadline_action) {
		case DL_IDLE_CLOSE:
		case DL_LINGER:
			session_close(s);
			continue;
		case DL_HEADER:
			session_reply_error(s, 408);
			break;
		case DL_CONNECT:
			upstream_failed(s, "connect timed out");
			break;
		case DL_EXCHANGE:
			if (s->resp_head_done) {
				log_warn("client %s: upstream stalled mid-response: closing", s->client_ip);
				session_close(s);
				continue;
			}
			/* Waiting on the client's body is the client's fault. */
			session_reply_error(s, !s->req_body.done && !buf_len(&s->uout) ? 408 : 504);
			break;
		default:
			s->deadline_ms = 0;
			continue;
		}
		if (!s->closed)
			drive(s);
	}
}

static void on_client(struct ev_handler *h, uint32_t events)
{
	struct session *s = container_of(h, struct session, client);

	(void)events;
	if (!s->closed)
		drive(s);
}

static void on_upstream(struct ev_handler *h, uint32_t events)
{
	struct session *s = container_of(h, struct session, upstream);

	if (s->closed || s->upstream.fd < 0)
		return;
	if (s->state == S_CONNECTING && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
		int err = upstream_connect_result(s->upstream.fd);

		if (err)
			upstream_failed(s, strerror(err));
		else
			upstream_established(s);
	}
	drive(s);
}
