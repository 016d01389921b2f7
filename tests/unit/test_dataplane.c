/* The BPF data plane against the real kernel (needs root): an skb whose
 * head was already consumed must leave once, not whole (docs/KERNEL.md, the trim).
 * A partial read before insertion leaves the receive queue in exactly the
 * state a partly overlapping retransmission does: copied_seq inside the
 * head skb. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "dataplane.h"

static void tcp_pair(int *a, int *b)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int l = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(l >= 0);
	assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&sa, &len), 0);
	*a = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(connect(*a, (struct sockaddr *)&sa, sizeof(sa)), 0);
	*b = accept(l, NULL, NULL);
	assert_true(*b >= 0);
	close(l);
}

static void wait_queued(int fd, int want)
{
	int n = 0;

	for (int i = 0; i < 200 && n < want; i++) {
		ioctl(fd, FIONREAD, &n);
		if (n < want)
			usleep(5000);
	}
	assert_int_equal(n, want);
}

/* Reads until want bytes came or 1 s passed without any; returns the count. */
static size_t read_for(int fd, unsigned char *buf, size_t cap)
{
	size_t got = 0;
	struct pollfd p = { .fd = fd, .events = POLLIN };

	while (got < cap && poll(&p, 1, 1000) == 1) {
		ssize_t n = read(fd, buf + got, cap - got);

		if (n <= 0)
			break;
		got += n;
	}
	return got;
}

static uint64_t counter(const char *pin_dir, uint32_t idx)
{
	char path[256];
	uint64_t vals[512] = { 0 }, sum = 0;
	int fd;

	snprintf(path, sizeof(path), "%s/counters", pin_dir);
	fd = bpf_obj_get(path);
	assert_true(fd >= 0);
	assert_int_equal(bpf_map_lookup_elem(fd, &idx, vals), 0);
	for (int cpu = 0; cpu < libbpf_num_possible_cpus(); cpu++)
		sum += vals[cpu];
	close(fd);
	return sum;
}

static void partly_read_head_skb_is_sent_once(void **state)
{
	unsigned char out[1000], in[2048];
	char why[256], pin_dir[64];
	struct dataplane *dp;
	int client, px_client, px_upstream, upstream, fds[2];
	uint64_t cookies[2];
	bool flowing[2];

	(void)state;
	/* The contract of the integration suite: the kernel path fails loudly
	 * where it cannot run, unless the run says it has no BPF. */
	if (getenv("WSPLICE_TEST_NO_BPF") && !strcmp(getenv("WSPLICE_TEST_NO_BPF"), "1"))
		skip();
	if (geteuid() != 0)
		fail_msg("needs root for BPF (or set WSPLICE_TEST_NO_BPF=1)");
	snprintf(pin_dir, sizeof(pin_dir), "/sys/fs/bpf/wsplice-unit-%d", (int)getpid());
	dp = dataplane_open(pin_dir, 4 << 20, 1024, 1, why, sizeof(why));
	if (!dp)
		fail_msg("dataplane_open: %s", why);
	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (unsigned char)(i * 7 + 3);
	tcp_pair(&client, &px_client);
	tcp_pair(&px_upstream, &upstream);

	/* One skb of 1000 bytes, of which 10 are read: copied_seq is now 10
	 * bytes into the skb that stays at the head of the receive queue. */
	assert_int_equal(write(client, out, sizeof(out)), sizeof(out));
	wait_queued(px_client, sizeof(out));
	assert_int_equal(read(px_client, in, 10), 10);

	fds[0] = px_client;
	fds[1] = px_upstream;
	cookies[0] = socket_cookie(px_client);
	cookies[1] = socket_cookie(px_upstream);
	assert_int_equal(dataplane_tunnel_add(dp, 1, fds, cookies, flowing), 0);
	assert_true(flowing[0] && flowing[1]);

	/* The 990 unread bytes arrive once; the 10 read ones never. */
	assert_int_equal(read_for(upstream, in, sizeof(in)), sizeof(out) - 10);
	assert_memory_equal(in, out + 10, sizeof(out) - 10);
	assert_int_equal(counter(pin_dir, WS_CNT_OVERLAP_SKBS), 1);
	assert_int_equal(counter(pin_dir, WS_CNT_OVERLAP_BYTES), 10);
	assert_int_equal(counter(pin_dir, WS_CNT_TRIM_FAILED), 0);

	/* And the splice goes on in both directions. */
	assert_int_equal(write(client, out, 100), 100);
	assert_int_equal(read_for(upstream, in, sizeof(in)), 100);
	assert_memory_equal(in, out, 100);
	assert_int_equal(write(upstream, out, 200), 200);
	assert_int_equal(read_for(client, in, sizeof(in)), 200);
	assert_memory_equal(in, out, 200);

	dataplane_tunnel_del(dp, 1, cookies);
	dataplane_close(dp);
	close(client);
	close(px_client);
	close(px_upstream);
	close(upstream);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(partly_read_head_skb_is_sent_once),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
