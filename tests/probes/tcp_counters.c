/* Probe for docs/KERNEL-LOG.md, "TCP's byte counters": what tcpi_bytes_acked and tcpi_bytes_received
 * count on a connected and an accepted loopback socket (SYN, FIN).
 * Build and run: cc -o /tmp/tcp_counters tests/probes/tcp_counters.c && /tmp/tcp_counters */
#include <arpa/inet.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static void show(const char *name, int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	int outq = 0;

	getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len);
	ioctl(fd, SIOCOUTQ, &outq);
	printf("%-24s bytes_acked=%llu outq=%d bytes_received=%llu\n", name,
	       (unsigned long long)ti.tcpi_bytes_acked, outq, (unsigned long long)ti.tcpi_bytes_received);
}

int main(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM, 0), c, s;

	if (bind(l, (void *)&a, sizeof(a)) || listen(l, 1) || getsockname(l, (void *)&a, &alen))
		return 1;
	c = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(c, (void *)&a, sizeof(a)))
		return 1;
	s = accept(l, NULL, NULL);
	usleep(100000);
	show("connected, idle", c);
	show("accepted, idle", s);
	if (write(c, "hello", 5) != 5 || write(s, "hi", 2) != 2)
		return 1;
	usleep(100000);
	show("connected, 5 out 2 in", c);
	show("accepted, 2 out 5 in", s);
	shutdown(c, SHUT_WR);
	usleep(100000);
	show("accepted, after peer FIN", s);
	return 0;
}
