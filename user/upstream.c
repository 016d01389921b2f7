#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "upstream.h"

int endpoint_resolve(struct endpoint *ep, bool passive, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = passive ? AI_PASSIVE : 0 };
	struct addrinfo *res;
	int rc = getaddrinfo(ep->host, ep->port, &hints, &res);

	if (rc) {
		snprintf(err, errlen, "cannot resolve '%s': %s", ep->host, gai_strerror(rc));
		return -1;
	}
	memcpy(&ep->addr, res->ai_addr, res->ai_addrlen);
	ep->addrlen = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

void socket_tune(int fd)
{
	int one = 1;

	/* Small WebSocket frames must not wait for Nagle. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

bool addr_is_loopback(const struct sockaddr_storage *a)
{
	const struct in6_addr *x = &((const struct sockaddr_in6 *)a)->sin6_addr;

	if (a->ss_family == AF_INET)
		return ntohl(((const struct sockaddr_in *)a)->sin_addr.s_addr) >> 24 == 127;
	return IN6_IS_ADDR_LOOPBACK(x) || (IN6_IS_ADDR_V4MAPPED(x) && x->s6_addr[12] == 127);
}

/* Whether a and b are the same address: a connection to oneself, which
 * the kernel routes over lo. */
static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET)
		return ((const struct sockaddr_in *)a)->sin_addr.s_addr == ((const struct sockaddr_in *)b)->sin_addr.s_addr;
	return IN6_ARE_ADDR_EQUAL(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr);
}

unsigned upstream_mss_for(int client_fd)
{
	struct sockaddr_storage me, peer;
	socklen_t a = sizeof(me), b = sizeof(peer);
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	unsigned takes;

	/* Over lo any segment fits (and lo's send MSS is only half the
	 * client's first window, tcp_bound_to_half_wnd: no clamp to take). */
	if (getsockname(client_fd, (struct sockaddr *)&me, &a) || getpeername(client_fd, (struct sockaddr *)&peer, &b) ||
	    same_addr(&me, &peer) || addr_is_loopback(&peer))
		return 0;
	memset(&ti, 0, sizeof(ti));
	if (getsockopt(client_fd, IPPROTO_TCP, TCP_INFO, &ti, &len))
		return 0;
	/* What the client takes: its MSS (our send MSS) and what our device's
	 * MTU let us tell it (our advertised MSS, the listener's clamp
	 * included). Both are the payload a segment carries, the timestamps
	 * option left out once it was agreed; the SYN's MSS counts it. */
	takes = ti.tcpi_snd_mss < ti.tcpi_advmss ? ti.tcpi_snd_mss : ti.tcpi_advmss;
	return takes + (ti.tcpi_options & TCPI_OPT_TIMESTAMPS ? 12 : 0);
}

int upstream_connect(const struct endpoint *ep, unsigned mss)
{
	int fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int m = (int)mss;

	if (fd < 0)
		return -1;
	socket_tune(fd);
	/* Before the SYN: its MSS option says it. */
	if (mss >= 536)
		setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &m, sizeof(m));
	if (connect(fd, (const struct sockaddr *)&ep->addr, ep->addrlen) < 0 && errno != EINPROGRESS) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

int upstream_connect_result(int fd)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		return errno;
	return err;
}
