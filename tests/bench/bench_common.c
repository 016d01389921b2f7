#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "bench_common.h"

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

int set_nonblock(int fd, int on)
{
	int fl = fcntl(fd, F_GETFL);

	return fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

void set_nodelay(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static struct addrinfo *resolve(const char *host, int port, int passive)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = passive ? AI_PASSIVE : 0 };
	struct addrinfo *res;
	char portstr[16];

	snprintf(portstr, sizeof(portstr), "%d", port);
	if (getaddrinfo(host, portstr, &hints, &res))
		die("cannot resolve %s", host);
	return res;
}

int tcp_listen(const char *host, int port)
{
	struct addrinfo *ai = resolve(host, port, 1);
	int fd = socket(ai->ai_family, SOCK_STREAM, 0), one = 1;

	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 4096))
		die("listen %s:%d: %s", host, port, strerror(errno));
	freeaddrinfo(ai);
	return fd;
}

/* WS_LOAD_SRC=ADDR: connect from that address (a loopback address of its
 * own gives a client its own ephemeral ports, for more than 28 000
 * connections to one port). The port is picked at connect time. */
static int bind_source(int fd)
{
	const char *src = getenv("WS_LOAD_SRC");
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int one = 1;

	if (!src || !*src)
		return 0;
	if (inet_pton(AF_INET, src, &sa.sin_addr) != 1)
		die("WS_LOAD_SRC=%s: not an IPv4 address", src);
	setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
	return bind(fd, (struct sockaddr *)&sa, sizeof(sa));
}

int tcp_connect(const char *host, int port)
{
	struct addrinfo *ai = resolve(host, port, 0);
	int fd = socket(ai->ai_family, SOCK_STREAM, 0);

	if (fd < 0 || bind_source(fd) || connect(fd, ai->ai_addr, ai->ai_addrlen)) {
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return -1;
	}
	freeaddrinfo(ai);
	set_nodelay(fd);
	return fd;
}

int write_all(int fd, const void *p, size_t n)
{
	const char *c = p;

	while (n) {
		ssize_t w = write(fd, c, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		c += w;
		n -= w;
	}
	return 0;
}

int read_all(int fd, void *p, size_t n)
{
	char *c = p;

	while (n) {
		ssize_t r = read(fd, c, n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		c += r;
		n -= r;
	}
	return 0;
}

int ws_client_handshake(int fd, const char *host)
{
	char req[512], resp[2048];
	size_t got = 0;
	int n = snprintf(req, sizeof(req),
			 "GET /bench HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
			 "Sec-WebSocket-Key: " BENCH_WS_KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n", host);

	if (write_all(fd, req, n))
		return -1;
	/* Byte by byte: nothing after the 101 may be swallowed. */
	while (got < sizeof(resp) - 1) {
		if (read(fd, resp + got, 1) != 1)
			return -1;
		got++;
		if (got >= 4 && !memcmp(resp + got - 4, "\r\n\r\n", 4))
			break;
	}
	resp[got] = '\0';
	return strncmp(resp, "HTTP/1.1 101", 12) || !strstr(resp, BENCH_WS_ACCEPT) ? -1 : 0;
}
