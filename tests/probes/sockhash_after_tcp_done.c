/* Does a socket stay in a SOCKHASH once TCP has moved it to CLOSE by
 * itself (our FIN, then the peer's data and FIN: FIN_WAIT2 -> TIME_WAIT),
 * before close()? wsplice's FIN logic needs it to (the peer's last bytes
 * still go through the verdict). Run as root:
 *   cc -o /tmp/sockhash_probe tests/probes/sockhash_after_tcp_done.c -lbpf && /tmp/sockhash_probe */
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

static int tcp_state(int fd)
{
	struct tcp_info ti = { 0 };
	socklen_t len = sizeof(ti);

	getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len);
	return ti.tcpi_state;
}

static void show(const char *when, int map, int fd)
{
	unsigned long long key = 1, cookie;

	printf("%-26s tcpi_state=%-2d in map: %s\n", when, fd < 0 ? -1 : tcp_state(fd),
	       bpf_map_lookup_elem(map, &key, &cookie) ? "no" : "yes");
}

int main(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	int map = bpf_map_create(BPF_MAP_TYPE_SOCKHASH, "probe", 8, 8, 4, NULL);
	int lst = socket(AF_INET, SOCK_STREAM, 0), cli = socket(AF_INET, SOCK_STREAM, 0), acc;
	unsigned long long key = 1, val;

	if (map < 0 || bind(lst, (void *)&sa, sizeof(sa)) || listen(lst, 1) || getsockname(lst, (void *)&sa, &sl) ||
	    connect(cli, (void *)&sa, sizeof(sa))) {
		perror("setup");
		return 1;
	}
	acc = accept(lst, NULL, NULL);
	val = acc;
	if (bpf_map_update_elem(map, &key, &val, BPF_NOEXIST)) {
		perror("insert");
		return 1;
	}
	show("inserted", map, acc);
	shutdown(acc, SHUT_WR);
	usleep(100000);
	show("after our FIN", map, acc);
	if (write(cli, "abc", 3) != 3)
		return 1;
	shutdown(cli, SHUT_WR);
	usleep(100000);
	show("after the peer's data+FIN", map, acc);
	close(acc);
	show("after close()", map, -1);
	return 0;
}
