#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "header_rewrite.h"
#include "log.h"
#include "session.h"
#include "tunnel.h"
#include "upstream.h"

/* cin holds a whole request head; the others only need to stream. */
#define CIN_CAP (HTTP_MAX_HEAD + 4096)
#define UIN_CAP (HTTP_MAX_HEAD + 4096)
#define OUT_CAP 65536

static void on_client(struct ev_handler *h, uint32_t events);
static void on_upstream(struct ev_handler *h, uint32_t events);
static void drive(struct session *s);

static const char *reason_phrase(int status)
{
	switch (status) {
	case 400: return "Bad Request";
	case 403: return "Forbidden";
	case 408: return "Request Timeout";
	case 414: return "URI Too Long";
	case 426: return "Upgrade Required";
	case 431: return "Request Header Fields Too Large";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default: return "Error";
	}
}

void session_start(struct proxy *px, int fd)
{
	struct session *s = calloc(1, sizeof(*s));
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (!s) {
		close(fd);
		return;
	}
	s->px = px;
	s->client.fd = fd;
	s->client.on_event = on_client;
	s->upstream.fd = -1;
	s->upstream.on_event = on_upstream;
	buf_init(&s->cin, CIN_CAP);
	buf_init(&s->uin, UIN_CAP);
	buf_init(&s->cout, OUT_CAP);
	buf_init(&s->uout, OUT_CAP);
	snprintf(s->client_ip, sizeof(s->client_ip), "unknown");
	if (!getpeername(fd, (struct sockaddr *)&ss, &len)) {
		if (ss.ss_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, s->client_ip, sizeof(s->client_ip));
		else if (ss.ss_family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, s->client_ip, sizeof(s->client_ip));
	}
	px->sessions_open++;
	conn_link_add(&px->sessions, &s->link);
	drive(s);
}

static void session_free(void *arg)
{
	struct session *s = arg;

	buf_release(&s->cin);
	buf_release(&s->uin);
	buf_release(&s->cout);
	buf_release(&s->uout);
	free(s);
}

static void close_upstream(struct session *s)
{
	if (s->upstream.fd < 0)
		return;
	ev_watch(s->px->loop, &s->upstream, 0);
	close(s->upstream.fd);
	s->upstream.fd = -1;
	s->upstream.events = 0;
	s->upstream_connected = false;
	s->upstream_eof = false;
	buf_release(&s->uin);
	buf_release(&s->uout);
}

void session_close(struct session *s)
{
	if (s->closed)
		return;
	s->closed = true;
	close_upstream(s);
	ev_watch(s->px->loop, &s->client, 0);
	if (s->client.fd >= 0)
		close(s->client.fd);
	s->px->sessions_open--;
	conn_link_del(&s->link);
	ev_defer(s->px->loop, session_free, s);
}

void session_close_all(struct proxy *px)
{
	while (px->sessions.next != &px->sessions)
		session_close((struct session *)px->sessions.next);
}

void session_reply_error(struct session *s, int status)
{
	char resp[256];
	int n;

	n = snprintf(resp, sizeof(resp),
		     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%sConnection: close\r\n\r\n%d %s\n",
		     status, reason_phrase(status), strlen(reason_phrase(status)) + 5,
		     status == 426 ? "Sec-WebSocket-Version: 13\r\n" : "", status, reason_phrase(status));
	log_info("client %s: %d %s", s->client_ip, status, reason_phrase(status));
	close_upstream(s);
	/* Whatever else was queued for the client is superseded. */
	buf_consume(&s->cout, buf_len(&s->cout));
	buf_append(&s->cout, resp, n);
	s->state = S_CLOSING;
}

/* Parses a complete request head and starts forwarding it. */
static bool start_request(struct session *s)
{
	struct request_rewrite rw = { .client_ip = s->client_ip };
	struct http_head head, *h = &head;
	long r;
	int ws;

	r = http_parse_request(buf_head(&s->cin), buf_len(&s->cin), h);
	if (r == 0) {
		if (s->client_eof)
			session_close(s);
		return false;
	}
	if (r < 0) {
		session_reply_error(s, (int)-r);
		goto done;
	}
	if (h->version_minor == 1 && http_header_count(h, "Host") != 1) {
		session_reply_error(s, 400);
		goto done;
	}
	ws = ws_request_check(h, s->ws_accept);
	if (ws < 0 || http_request_body(h, &s->req_body) < 0 || (ws && !s->req_body.done)) {
		session_reply_error(s, ws < 0 ? -ws : 400);
		goto done;
	}
	s->websocket = ws == 1;
	s->head_request = http_str_ieq(h->method, "HEAD");
	s->keepalive = h->version_minor == 1 && !http_header_has_token(h, "Connection", "close");
	s->close_after = !s->keepalive;
	s->resp_head_done = false;
	rw.websocket = s->websocket;
	rw.upstream_close = true; /* one upstream connection per request */
	if (rewrite_request(h, &rw, &s->uout)) {
		session_reply_error(s, 431);
		goto done;
	}
	buf_consume(&s->cin, r);
	s->upstream.fd = upstream_connect(&s->px->cfg->upstream);
	if (s->upstream.fd < 0) {
		log_warn("upstream %s:%s: %s", s->px->cfg->upstream.host, s->px->cfg->upstream.port, strerror(errno));
		session_reply_error(s, 502);
		goto done;
	}
	s->state = S_CONNECTING;
	log_debug("client %s: %.*s %.*s%s", s->client_ip, (int)h->method.len, h->method.p, (int)h->target.len,
		  h->target.p, s->websocket ? " (websocket)" : "");
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

	r = http_parse_response(buf_head(&s->uin), buf_len(&s->uin), h);
	if (r == 0) {
		progress = false;
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
			session_reply_error(s, 502);
			goto done;
		}
		if (rewrite_response(h, true, false, &s->cout)) {
			session_reply_error(s, 502);
			goto done;
		}
		buf_consume(&s->uin, r);
		s->state = S_HANDOFF;
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
	if (rewrite_response(h, false, s->close_after, &s->cout)) {
		session_reply_error(s, 502);
		goto done;
	}
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
			close_upstream(s);
			return true;
		}
		return adv > 0;
	}
	close_upstream(s);
	if (s->close_after) {
		s->state = S_CLOSING;
	} else {
		s->state = S_REQ_HEAD;
		s->websocket = false;
	}
	return true;
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
	if (s->upstream_connected && buf_len(&s->uout)) {
		n = buf_write_fd(&s->uout, s->upstream.fd);
		if (n > 0) {
			s->upstream_written += n;
			*progress = true;
		} else if (n < 0 && errno != EAGAIN) {
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
	for (int rounds = 0; rounds < 1024; rounds++) {
		bool progress = false;

		if (!do_io(s, &progress) || s->closed)
			return;
		progress |= step(s);
		if (s->closed)
			return;
		if (s->state == S_HANDOFF) {
			tunnel_handoff(s); /* owns the sockets and their interest from here */
			return;
		}
		if (!progress)
			break;
	}
	update_interest(s);
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

		if (err) {
			log_warn("upstream %s:%s: %s", s->px->cfg->upstream.host, s->px->cfg->upstream.port,
				 strerror(err));
			session_reply_error(s, 502);
		} else {
			s->upstream_connected = true;
			s->state = S_EXCHANGE;
		}
	}
	drive(s);
}
