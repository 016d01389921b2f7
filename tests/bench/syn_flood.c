/* A bounded SYN flood for the XDP guard's bench: SYNs from this host's
 * address (random source ports and sequence numbers) to HOST:PORT, as fast
 * as one raw socket sends them, for SECONDS or COUNT packets, whichever
 * comes first, at most PPS a second (0: as fast as it can). IPv4 only;
 * needs CAP_NET_RAW. Prints what it sent.
 *
 *   syn_flood SRC DST PORT SECONDS COUNT [PPS]
 */
#include <arpa/inet.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include "bench_common.h"

#define BATCH 64

struct syn {
	struct iphdr ip;
	struct tcphdr tcp;
} __attribute__((packed));

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* memcpy, not a uint16_t pointer: the headers are other types, and -O2's
 * aliasing rules would let the compiler read them before they are written. */
static uint32_t add16(uint32_t sum, const void *p, size_t n)
{
	for (size_t i = 0; i < n / 2; i++) {
		uint16_t w;

		memcpy(&w, (const char *)p + 2 * i, 2);
		sum += w;
	}
	return sum;
}

static void make_syn(struct syn *s, uint32_t src, uint32_t dst, uint16_t port, uint32_t rnd)
{
	struct {
		uint32_t src, dst;
		uint8_t zero, proto;
		uint16_t len;
	} __attribute__((packed)) pseudo = { src, dst, 0, IPPROTO_TCP, htons(sizeof(s->tcp)) };

	memset(s, 0, sizeof(*s));
	s->ip = (struct iphdr){ .version = 4, .ihl = 5, .ttl = 64, .protocol = IPPROTO_TCP, .saddr = src,
				.daddr = dst, .tot_len = htons(sizeof(*s)), .id = (uint16_t)rnd };
	s->ip.check = fold(add16(0, &s->ip, sizeof(s->ip)));
	s->tcp.source = htons((uint16_t)(1024 + rnd % 60000));
	s->tcp.dest = htons(port);
	s->tcp.seq = rnd * 2654435761u;
	s->tcp.doff = 5;
	s->tcp.syn = 1;
	s->tcp.window = htons(65535);
	s->tcp.check = fold(add16(add16(0, &pseudo, sizeof(pseudo)), &s->tcp, sizeof(s->tcp)));
}

int main(int argc, char **argv)
{
	struct syn pkts[BATCH];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	struct sockaddr_in to = { .sin_family = AF_INET };
	uint32_t src, rnd = 12345;
	uint64_t t0, end, sent = 0, limit;
	double pps;
	int fd, one = 1;

	if ((argc != 6 && argc != 7) || inet_pton(AF_INET, argv[1], &src) != 1 || inet_pton(AF_INET, argv[2], &to.sin_addr) != 1)
		die("usage: syn_flood SRC DST PORT SECONDS COUNT [PPS]");
	t0 = now_ns();
	end = t0 + (uint64_t)(atof(argv[4]) * 1e9);
	pps = argc == 7 ? atof(argv[6]) : 0;
	limit = strtoull(argv[5], NULL, 10);
	fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
	if (fd < 0 || setsockopt(fd, IPPROTO_IP, IP_HDRINCL, &one, sizeof(one)))
		die("raw socket: needs CAP_NET_RAW");
	memset(msgs, 0, sizeof(msgs));
	while (sent < limit && now_ns() < end) {
		int n;

		/* A fixed rate, so that two runs compare: ahead of it, wait. */
		while (pps > 0 && sent > (now_ns() - t0) / 1e9 * pps)
			;
		for (int i = 0; i < BATCH; i++) {
			rnd = rnd * 1103515245u + 12345u;
			make_syn(&pkts[i], src, to.sin_addr.s_addr, (uint16_t)atoi(argv[3]), rnd >> 1);
			iov[i] = (struct iovec){ &pkts[i], sizeof(pkts[i]) };
			msgs[i].msg_hdr = (struct msghdr){ .msg_name = &to, .msg_namelen = sizeof(to), .msg_iov = &iov[i],
							   .msg_iovlen = 1 };
		}
		n = sendmmsg(fd, msgs, BATCH, 0);
		if (n > 0)
			sent += (uint64_t)n;
	}
	printf("syns=%llu\n", (unsigned long long)sent);
	return 0;
}
