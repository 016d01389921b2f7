/* The tc express lane's program against the real kernel (needs root):
 * crafted segments through BPF_PROG_TEST_RUN, each field and both
 * checksums checked from scratch; then real hand-overs on a private
 * network namespace's lo, with the proxy's two sockets frozen in
 * TCP_REPAIR and every byte checked on both peers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>
#include <unistd.h>
#include <cmocka.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "percpu.h"
#include "wsplice_tc.h"
#include "fault_inject.skel.h"
#include "tcsplice.skel.h"

#define TC_ACT_UNSPEC (-1) /* not its own: on to the next program */
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2

/* skel is the instance under test; bystander, another wsplice's, runs
 * first on lo and must let every segment of skel's flows through. */
static struct tcsplice_bpf *skel, *bystander;

/* ---- segments by hand ---------------------------------------------- */

struct spec {
	struct ws_tc_key k;
	uint32_t seq, ack, tsval, tsecr, sack[8];
	uint16_t win;
	uint8_t flags;
	bool ts;
	bool odd; /* the timestamps at an odd offset: NOP, TS, NOP */
	int nsack; /* SACK edges */
	size_t payload;
};

static uint32_t sum16(uint32_t sum, const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i + 1 < n; i += 2)
		sum += (uint32_t)b[i] << 8 | b[i + 1];
	if (n & 1)
		sum += (uint32_t)b[n - 1] << 8;
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)sum;
}

/* The TCP checksum over the pseudo-header and the segment at l4 (whose
 * own checksum field counts as it is): 0xffff when the field is right. */
static uint16_t tcp_sum(const uint8_t *pkt, int family, size_t l4, size_t len)
{
	uint32_t sum = 0;
	size_t tcplen = len - l4;

	if (family == 4)
		sum = sum16(sum, pkt + 14 + 12, 8);
	else
		sum = sum16(sum, pkt + 14 + 8, 32);
	sum += 6 + (uint32_t)tcplen;
	return fold(sum16(sum, pkt + l4, tcplen));
}

static size_t build(uint8_t *pkt, const struct spec *s, size_t *l4out)
{
	size_t l3 = 14, l4, opt, len;
	uint8_t *th;

	memset(pkt, 0, 2048);
	pkt[12] = s->k.family == 4 ? 0x08 : 0x86;
	pkt[13] = s->k.family == 4 ? 0x00 : 0xdd;
	l4 = l3 + (s->k.family == 4 ? 20 : 40);
	th = pkt + l4;
	opt = 0;
	if (s->ts) {
		uint32_t v = htonl(s->tsval), e = htonl(s->tsecr);

		th[20 + opt++] = 1;
		if (!s->odd)
			th[20 + opt++] = 1;
		th[20 + opt++] = 8;
		th[20 + opt++] = 10;
		memcpy(th + 20 + opt, &v, 4);
		memcpy(th + 20 + opt + 4, &e, 4);
		opt += 8;
		if (s->odd)
			th[20 + opt++] = 1;
	}
	if (s->nsack) {
		th[20 + opt++] = 1;
		th[20 + opt++] = 1;
		th[20 + opt++] = 5;
		th[20 + opt++] = 2 + 4 * s->nsack;
		for (int i = 0; i < s->nsack; i++) {
			uint32_t v = htonl(s->sack[i]);

			memcpy(th + 20 + opt, &v, 4);
			opt += 4;
		}
	}
	len = l4 + 20 + opt + s->payload;
	for (size_t i = l4 + 20 + opt; i < len; i++)
		pkt[i] = (uint8_t)(i * 7);
	if (s->k.family == 4) {
		uint8_t *ip = pkt + l3;
		uint16_t tot = htons((uint16_t)(len - l3)), c;

		ip[0] = 0x45;
		memcpy(ip + 2, &tot, 2);
		ip[6] = 0x40; /* DF */
		ip[8] = 64;
		ip[9] = 6;
		memcpy(ip + 12, &s->k.saddr[0], 4);
		memcpy(ip + 16, &s->k.daddr[0], 4);
		c = htons((uint16_t)~fold(sum16(0, ip, 20)));
		memcpy(ip + 10, &c, 2);
	} else {
		uint8_t *ip = pkt + l3;
		uint16_t pl = htons((uint16_t)(len - l4));

		ip[0] = 0x60;
		memcpy(ip + 4, &pl, 2);
		ip[6] = 6;
		ip[7] = 64;
		memcpy(ip + 8, s->k.saddr, 16);
		memcpy(ip + 24, s->k.daddr, 16);
	}
	{
		uint32_t seq = htonl(s->seq), ack = htonl(s->ack);
		uint16_t win = htons(s->win), c;

		memcpy(th, &s->k.sport, 2);
		memcpy(th + 2, &s->k.dport, 2);
		memcpy(th + 4, &seq, 4);
		memcpy(th + 8, &ack, 4);
		th[12] = (uint8_t)(((20 + opt) / 4) << 4);
		th[13] = s->flags;
		memcpy(th + 14, &win, 2);
		c = htons((uint16_t)~tcp_sum(pkt, s->k.family, l4, len));
		memcpy(th + 16, &c, 2);
	}
	*l4out = l4;
	return len;
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return ntohl(v);
}

static int run_prog(struct bpf_program *prog, const uint8_t *in, size_t len, uint8_t *out, uint32_t *out_len)
{
	LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = in, .data_size_in = (uint32_t)len, .data_out = out,
		    .data_size_out = 2048, .repeat = 1);

	assert_int_equal(bpf_prog_test_run_opts(bpf_program__fd(prog), &o), 0);
	*out_len = o.data_size_out;
	return (int)o.retval;
}

static int run(const uint8_t *in, size_t len, uint8_t *out, uint32_t *out_len)
{
	return run_prog(skel->progs.tcsplice_ingress, in, len, out, out_len);
}

static const uint32_t C_ADDR = 0x0300007f, PA_ADDR = 0x0100007f, PB_ADDR = 0x0400007f, U_ADDR = 0x0200007f;

static void v6(uint32_t a[4], uint8_t last)
{
	memset(a, 0, 16);
	((uint8_t *)a)[0] = 0xfd;
	((uint8_t *)a)[15] = last;
}

/* A client leg (C -> Pa) and an upstream leg (Pb -> U), tunnel 7. */
static void put_tunnel(int family, uint32_t state, struct ws_tc_key *ck)
{
	struct ws_tc_tunnel t = { .state = state, .family = (uint32_t)family, .armed = 1 };
	struct ws_tc_flow f = { .tunnel_id = 7, .dir = WS_DIR_C2U, .role = WS_TC_PEER };
	struct ws_tc_key uk = { .family = (uint8_t)family, .sport = htons(2000), .dport = htons(4000) };
	struct ws_tunnel st = { 0 };
	uint32_t id = 7;

	memset(ck, 0, sizeof(*ck));
	ck->family = (uint8_t)family;
	ck->sport = htons(3000);
	ck->dport = htons(1000);
	if (family == 4) {
		ck->saddr[0] = C_ADDR;
		ck->daddr[0] = PA_ADDR;
		uk.saddr[0] = U_ADDR;
		uk.daddr[0] = PB_ADDR;
	} else {
		v6(ck->saddr, 3);
		v6(ck->daddr, 1);
		v6(uk.saddr, 2);
		v6(uk.daddr, 4);
	}
	/* c2u leaves as Pb -> U, u2c as Pa -> C. */
	memcpy(t.dir[0].saddr, uk.daddr, 16);
	memcpy(t.dir[0].daddr, uk.saddr, 16);
	t.dir[0].sport = uk.dport;
	t.dir[0].dport = uk.sport;
	memcpy(t.dir[1].saddr, ck->daddr, 16);
	memcpy(t.dir[1].daddr, ck->saddr, 16);
	t.dir[1].sport = ck->dport;
	t.dir[1].dport = ck->sport;
	t.dir[0].seq_delta = 0x10000000;
	t.dir[0].ack_delta = 0x20000000;
	t.dir[1].seq_delta = -0x20000000u;
	t.dir[1].ack_delta = -0x10000000u;
	t.dir[0].tsval_delta = 5000;
	t.dir[1].tsecr_delta = -5000u;
	t.dir[1].tsval_delta = 777;
	t.dir[0].tsecr_delta = -777u;
	t.dir[0].wscale_in = 7; /* the client scales by 128, the upstream reads by 2 */
	t.dir[0].wscale_out = 1;
	t.dir[1].wscale_in = 1;
	t.dir[1].wscale_out = 7;
	t.dir[0].nxt = t.dir[0].acked = 0x10000000 + 200;
	t.dir[1].nxt = t.dir[1].acked = 500;
	t.dir[0].ts = t.dir[1].ts = 1;
	assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.tc_tunnels), &id, &t, BPF_ANY), 0);
	assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.tc_flows), ck, &f, BPF_ANY), 0);
	f.dir = WS_DIR_U2C;
	assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.tc_flows), &uk, &f, BPF_ANY), 0);
	assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.tunnels), &id, &st, BPF_ANY), 0);
}

static void clear_maps(void)
{
	int fds[] = { bpf_map__fd(skel->maps.tc_flows), bpf_map__fd(skel->maps.tc_tunnels),
		      bpf_map__fd(skel->maps.tunnels) };
	uint8_t key[64];

	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		while (!bpf_map_get_next_key(fds[i], NULL, key))
			bpf_map_delete_elem(fds[i], key);
}

static void translates(int family)
{
	struct spec s = { .seq = 100, .ack = 500, .win = 2000, .flags = 0x18, .ts = true, .tsval = 1000,
			  .tsecr = 9000, .nsack = 4, .sack = { 600, 700, 800, 900 }, .payload = 1000 };
	uint8_t in[2048], out[2048];
	size_t l4, len;
	uint32_t out_len, id = 7;
	struct ws_tunnel st;
	const uint8_t *th;

	put_tunnel(family, WS_TC_ACTIVE, &s.k);
	len = build(in, &s, &l4);
	assert_int_equal(tcp_sum(in, family, l4, len), 0xffff);
	assert_int_equal(run(in, len, out, &out_len), TC_ACT_OK);
	assert_int_equal(out_len, len);
	th = out + l4;
	if (family == 4) {
		assert_memory_equal(out + 14 + 12, &PB_ADDR, 4);
		assert_memory_equal(out + 14 + 16, &U_ADDR, 4);
		assert_int_equal(fold(sum16(0, out + 14, 20)), 0xffff);
	} else {
		uint32_t pb[4], u[4];

		v6(pb, 4);
		v6(u, 2);
		assert_memory_equal(out + 14 + 8, pb, 16);
		assert_memory_equal(out + 14 + 24, u, 16);
	}
	assert_int_equal(th[0] << 8 | th[1], 4000);
	assert_int_equal(th[2] << 8 | th[3], 2000);
	assert_int_equal(get32(th + 4), 100 + 0x10000000);
	assert_int_equal(get32(th + 8), 500 + 0x20000000);
	assert_int_equal(th[14] << 8 | th[15], 0xffff); /* 2000 * 128 / 2 does not fit */
	/* NOP NOP TS: TSval onto the upstream leg's clock, TSecr back onto
	 * the upstream's. */
	assert_int_equal(get32(th + 24), 1000 + 5000);
	assert_int_equal(get32(th + 28), 9000 - 777);
	for (int i = 0; i < 4; i++)
		assert_int_equal(get32(th + 36 + 4 * i), s.sack[i] + 0x20000000);
	assert_memory_equal(out + l4 + 52, in + l4 + 52, len - l4 - 52); /* the payload */
	assert_int_equal(tcp_sum(out, family, l4, len), 0xffff);
	assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.tunnels), &id, &st), 0);
	assert_int_equal(st.dir[WS_DIR_C2U].bytes, 0); /* sent, not yet acknowledged */
	assert_int_equal(st.dir[WS_DIR_C2U].packets, 1);
	assert_true(st.last_active_ns > 0);

	/* The other way, the timestamps at an odd offset. */
	{
		struct spec u = { .seq = 0x20000000 + 10, .ack = 0x10000000 + 1100, .win = 40000, .flags = 0x10,
				  .ts = true, .odd = true, .tsval = 50, .tsecr = 6000 };
		struct ws_tc_tunnel t;

		u.k.family = (uint8_t)family;
		u.k.sport = htons(2000);
		u.k.dport = htons(4000);
		if (family == 4) {
			u.k.saddr[0] = U_ADDR;
			u.k.daddr[0] = PB_ADDR;
		} else {
			v6(u.k.saddr, 2);
			v6(u.k.daddr, 4);
		}
		len = build(in, &u, &l4);
		assert_int_equal(run(in, len, out, &out_len), TC_ACT_OK);
		th = out + l4;
		assert_int_equal(th[0] << 8 | th[1], 1000);
		assert_int_equal(th[2] << 8 | th[3], 3000);
		assert_int_equal(get32(th + 4), 10);
		assert_int_equal(get32(th + 8), 1100);
		assert_int_equal(th[14] << 8 | th[15], 40000 * 2 / 128);
		assert_int_equal(get32(th + 23), 50 + 777);
		assert_int_equal(get32(th + 27), 6000 - 5000);
		assert_int_equal(tcp_sum(out, family, l4, len), 0xffff);
		assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.tc_tunnels), &id, &t), 0);
		assert_int_equal(t.state, WS_TC_ACTIVE);
		/* Its ack delivers the client's bytes past the last one acknowledged. */
		assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.tunnels), &id, &st), 0);
		assert_int_equal(st.dir[WS_DIR_C2U].bytes, 1100 - 200);
	}
	clear_maps();
}

static void translates_ipv4(void **state)
{
	(void)state;
	translates(4);
}

static void translates_ipv6(void **state)
{
	(void)state;
	translates(6);
}

/* The most options a header has room for: timestamps at an odd offset
 * and three SACK blocks (40 bytes), and four SACK blocks alone (36). */
static void translates_the_longest_options(void **state)
{
	struct spec specs[2] = {
		{ .seq = 100, .ack = 500, .win = 2000, .flags = 0x10, .ts = true, .odd = true, .tsval = 1000,
		  .tsecr = 9000, .nsack = 6, .sack = { 600, 700, 800, 900, 1000, 1100 }, .payload = 7 },
		{ .seq = 100, .ack = 500, .win = 2000, .flags = 0x10, .nsack = 8,
		  .sack = { 600, 700, 800, 900, 1000, 1100, 1200, 1300 } },
	};
	uint8_t in[2048], out[2048];
	size_t l4, len;
	uint32_t out_len;

	(void)state;
	for (int family = 4; family <= 6; family += 2) {
		for (int k = 0; k < 2; k++) {
			struct spec *sp = &specs[k];
			const uint8_t *th;
			size_t edges = k == 0 ? 36 : 24;

			put_tunnel(family, WS_TC_ACTIVE, &sp->k);
			len = build(in, sp, &l4);
			assert_int_equal((in[l4 + 12] >> 4) * 4, k == 0 ? 60 : 56);
			assert_int_equal(run(in, len, out, &out_len), TC_ACT_OK);
			th = out + l4;
			assert_int_equal(get32(th + 4), 100 + 0x10000000);
			if (k == 0) {
				assert_int_equal(get32(th + 23), 1000 + 5000);
				assert_int_equal(get32(th + 27), 9000 - 777);
			}
			for (int i = 0; i < sp->nsack; i++)
				assert_int_equal(get32(th + edges + 4 * i), sp->sack[i] + 0x20000000);
			assert_int_equal(tcp_sum(out, family, l4, len), 0xffff);
			if (family == 4)
				assert_int_equal(fold(sum16(0, out + 14, 20)), 0xffff);
			clear_maps();
		}
	}
}

/* Not an express flow's: the bytes come out as they went in. */
static void passes_what_is_not_its_own(void **state)
{
	struct spec s = { .seq = 1, .ack = 2, .win = 3, .flags = 0x10, .payload = 10 };
	uint8_t in[2048], out[2048];
	uint32_t out_len;
	size_t l4, len;
	struct ws_tc_key ck;

	(void)state;
	put_tunnel(4, WS_TC_ACTIVE, &ck);
	s.k = ck;
	s.k.sport = htons(3001);
	len = build(in, &s, &l4);
	assert_int_equal(run(in, len, out, &out_len), TC_ACT_UNSPEC);
	assert_memory_equal(out, in, len);
	/* A SYN on a flow's addresses is a new connection. */
	s.k = ck;
	s.flags = 0x02;
	len = build(in, &s, &l4);
	assert_int_equal(run(in, len, out, &out_len), TC_ACT_UNSPEC);
	assert_memory_equal(out, in, len);
	clear_maps();
}

/* While the daemon reads the frozen sockets, payload and FIN to them are
 * dropped and pure ACKs pass; the proxy's own segments are dropped by the
 * guard. */
static void frozen_drops_payload_and_guard_drops_the_proxy(void **state)
{
	struct spec s = { .seq = 1, .ack = 2, .win = 3, .flags = 0x10 };
	struct ws_tc_flow g = { .tunnel_id = 7, .role = WS_TC_GUARD };
	uint8_t in[2048], out[2048];
	uint32_t out_len;
	size_t l4, len;

	(void)state;
	put_tunnel(4, WS_TC_FROZEN, &s.k);
	len = build(in, &s, &l4);
	assert_int_equal(run(in, len, out, &out_len), TC_ACT_UNSPEC);
	assert_memory_equal(out, in, len);
	/* An Ethernet frame's padding after a pure ACK is no payload. */
	assert_int_equal(run(in, len + 6, out, &out_len), TC_ACT_UNSPEC);
	s.payload = 5;
	len = build(in, &s, &l4);
	assert_int_equal(run(in, len, out, &out_len), TC_ACT_SHOT);
	s.payload = 0;
	s.flags = 0x11;
	len = build(in, &s, &l4);
	assert_int_equal(run(in, len, out, &out_len), TC_ACT_SHOT);
	/* Pa -> C: the proxy's socket on the client leg. */
	{
		struct ws_tc_key gk = { .family = 4, .sport = s.k.dport, .dport = s.k.sport };

		gk.saddr[0] = s.k.daddr[0];
		gk.daddr[0] = s.k.saddr[0];
		assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.tc_flows), &gk, &g, BPF_ANY), 0);
		s.k = gk;
		s.flags = 0x10;
		len = build(in, &s, &l4);
		assert_int_equal(run(in, len, out, &out_len), TC_ACT_SHOT);
	}
	clear_maps();
}

/* A busy tunnel draining into the hand-over (strip-freeze): in a direction
 * marked to strip, a peer's segment reaches the proxy's socket as a pure
 * ACK, its payload cut off
 * and its FIN cleared, with lengths and checksums right; a reset is
 * dropped; the proxy's own segments pass (its relay still writes). */
static void draining(int family)
{
	struct spec s = { .seq = 100, .ack = 500, .win = 3000, .flags = 0x18, .ts = true, .tsval = 9, .tsecr = 8,
			  .nsack = 2, .sack = { 600, 700 } };
	struct ws_tc_flow g = { .tunnel_id = 7, .role = WS_TC_GUARD };
	uint8_t in[2048], out[2048];
	uint32_t out_len;
	uint64_t before, after;
	size_t l4, len, hdr;
	struct {
		uint8_t flags;
		size_t payload;
		int verdict;
	} cases[] = { { 0x10, 0, TC_ACT_UNSPEC }, { 0x18, 1000, TC_ACT_UNSPEC }, { 0x19, 1400, TC_ACT_UNSPEC },
		      { 0x11, 0, TC_ACT_UNSPEC }, { 0x14, 0, TC_ACT_SHOT } };

	struct ws_tc_tunnel t;
	uint32_t id = 7;
	int tunnels = bpf_map__fd(skel->maps.tc_tunnels);

	put_tunnel(family, WS_TC_DRAIN, &s.k);
	/* Not marked yet: the client's payload passes whole. */
	s.payload = 700;
	len = build(in, &s, &l4);
	assert_int_equal(run(in, len, out, &out_len), TC_ACT_UNSPEC);
	assert_int_equal(out_len, len);
	assert_memory_equal(out, in, len);
	assert_int_equal(bpf_map_lookup_elem(tunnels, &id, &t), 0);
	t.dir[WS_DIR_C2U].flags |= WS_TC_STRIP;
	assert_int_equal(bpf_map_update_elem(tunnels, &id, &t, BPF_EXIST), 0);
	assert_int_equal(percpu_counter(bpf_map__fd(skel->maps.tc_counters), WS_TCC_STRIPPED, &before, NULL), 0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		s.flags = cases[i].flags;
		s.payload = cases[i].payload;
		len = build(in, &s, &l4);
		hdr = len - s.payload;
		assert_int_equal(run(in, len, out, &out_len), cases[i].verdict);
		if (cases[i].verdict != TC_ACT_UNSPEC)
			continue;
		/* Untouched but for the length, the FIN and the checksums. */
		assert_int_equal(out_len, hdr);
		assert_int_equal(out[l4 + 13], cases[i].flags & ~0x01);
		assert_memory_equal(out + l4, in + l4, 13);
		assert_memory_equal(out + l4 + 14, in + l4 + 14, 2);
		assert_memory_equal(out + l4 + 18, in + l4 + 18, hdr - l4 - 18);
		assert_int_equal(tcp_sum(out, family, l4, out_len), 0xffff);
		if (family == 4) {
			assert_int_equal(out[16] << 8 | out[17], out_len - 14);
			assert_int_equal(fold(sum16(0, out + 14, 20)), 0xffff);
		} else {
			assert_int_equal(out[18] << 8 | out[19], out_len - l4);
		}
	}
	assert_int_equal(percpu_counter(bpf_map__fd(skel->maps.tc_counters), WS_TCC_STRIPPED, &after, NULL), 0);
	assert_int_equal(after - before, 3);
	/* Pa -> C: the proxy's socket on the client leg speaks, payload and all. */
	{
		struct ws_tc_key gk = { .family = (uint8_t)family, .sport = s.k.dport, .dport = s.k.sport };

		memcpy(gk.saddr, s.k.daddr, 16);
		memcpy(gk.daddr, s.k.saddr, 16);
		assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.tc_flows), &gk, &g, BPF_ANY), 0);
		s.k = gk;
		s.flags = 0x18;
		s.payload = 100;
		len = build(in, &s, &l4);
		assert_int_equal(run(in, len, out, &out_len), TC_ACT_UNSPEC);
		assert_int_equal(out_len, len);
		assert_memory_equal(out, in, len);
	}
	clear_maps();
}

static void draining_strips_ipv4(void **state)
{
	(void)state;
	draining(4);
}

static void draining_strips_ipv6(void **state)
{
	(void)state;
	draining(6);
}

/* On a device's egress the guard drops only the frozen socket's own
 * segments: one the program redirected there has the same addresses and
 * another socket (BPF_PROG_TEST_RUN gives every run a socket of its own,
 * whose cookie is none of the frozen sockets'). */
static void the_egress_guard_knows_the_frozen_socket(void **state)
{
	struct spec s = { .seq = 1, .ack = 2, .win = 3, .flags = 0x10, .payload = 100 };
	struct ws_tc_flow g = { .tunnel_id = 7, .role = WS_TC_GUARD, .cookie = 1 };
	uint8_t in[2048], out[2048];
	uint32_t out_len;
	uint64_t dropped, after;
	size_t l4, len;

	(void)state;
	put_tunnel(4, WS_TC_ACTIVE, &s.k);
	assert_int_equal(bpf_map_update_elem(bpf_map__fd(skel->maps.tc_flows), &s.k, &g, BPF_ANY), 0);
	skel->bss->guard_keys = 1; /* as the daemon counts it: the guard looks */
	len = build(in, &s, &l4);
	assert_int_equal(percpu_counter(bpf_map__fd(skel->maps.tc_counters), WS_TCC_GUARD_DROPS, &dropped, NULL), 0);
	assert_int_equal(run_prog(skel->progs.tcsplice_egress, in, len, out, &out_len), TC_ACT_UNSPEC);
	assert_memory_equal(out, in, len);
	assert_int_equal(percpu_counter(bpf_map__fd(skel->maps.tc_counters), WS_TCC_GUARD_DROPS, &after, NULL), 0);
	assert_int_equal(after, dropped);
	skel->bss->guard_keys = 0;
	clear_maps();
}

/* FIN each way, each acknowledged: the tunnel has ended in the program. A
 * reset ends it at once. */
static void fins_and_resets_end_it(void **state)
{
	struct spec c = { .seq = 100, .ack = 500, .win = 3, .flags = 0x11 }, u;
	uint8_t in[2048], out[2048];
	struct ws_tc_tunnel t;
	uint32_t out_len, id = 7;
	size_t l4, len;

	(void)state;
	put_tunnel(4, WS_TC_ACTIVE, &c.k);
	u = c;
	u.k.sport = htons(2000);
	u.k.dport = htons(4000);
	u.k.saddr[0] = U_ADDR;
	u.k.daddr[0] = PB_ADDR;
	len = build(in, &c, &l4); /* the client's FIN: seq 100 + delta, ends at +1 */
	assert_int_equal(run(in, len, out, &out_len), TC_ACT_OK);
	u.seq = 500 + 0x20000000;
	u.ack = 100 + 0x10000000; /* not past the FIN yet */
	u.flags = 0x10;
	len = build(in, &u, &l4);
	assert_int_equal(run(in, len, out, &out_len), TC_ACT_OK);
	assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.tc_tunnels), &id, &t), 0);
	assert_int_equal(t.dir[0].flags, WS_TC_FIN_SEEN);
	u.ack++;
	u.flags = 0x11; /* acknowledges it, and the upstream's own FIN */
	len = build(in, &u, &l4);
	assert_int_equal(run(in, len, out, &out_len), TC_ACT_OK);
	assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.tc_tunnels), &id, &t), 0);
	assert_int_equal(t.dir[0].flags, WS_TC_FIN_SEEN | WS_TC_FIN_ACKED);
	assert_int_equal(t.state, WS_TC_ACTIVE);
	c.seq = 101;
	c.ack = 501;
	c.flags = 0x10;
	len = build(in, &c, &l4);
	assert_int_equal(run(in, len, out, &out_len), TC_ACT_OK);
	assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.tc_tunnels), &id, &t), 0);
	assert_int_equal(t.state, WS_TC_ENDED);
	/* The last ACK again, after the end: still translated. */
	assert_int_equal(run(in, len, out, &out_len), TC_ACT_OK);
	assert_int_equal(get32(out + l4 + 4), 101 + 0x10000000);
	clear_maps();

	put_tunnel(4, WS_TC_ACTIVE, &c.k);
	c.flags = 0x14;
	len = build(in, &c, &l4);
	assert_int_equal(run(in, len, out, &out_len), TC_ACT_OK);
	assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.tc_tunnels), &id, &t), 0);
	assert_int_equal(t.state, WS_TC_ENDED);
	assert_int_equal(t.dir[0].flags & WS_TC_RST, WS_TC_RST);
	clear_maps();
}

/* An IPv4 header with options cannot be translated: dropped, counted. */
static void ip_options_are_dropped(void **state)
{
	struct spec s = { .seq = 1, .ack = 2, .win = 3, .flags = 0x10, .payload = 4 };
	uint8_t in[2048], opt[2048], out[2048];
	uint32_t out_len;
	size_t l4, len;

	(void)state;
	put_tunnel(4, WS_TC_ACTIVE, &s.k);
	len = build(in, &s, &l4);
	/* Four bytes of NOP options after the IP header. */
	memcpy(opt, in, 34);
	memset(opt + 34, 1, 4);
	memcpy(opt + 38, in + 34, len - 34);
	opt[14] = 0x46;
	assert_int_equal(run(opt, len + 4, out, &out_len), TC_ACT_SHOT);
	clear_maps();
}

/* ---- real hand-overs on lo ----------------------------------------- */

static void set_nonblock(int fd)
{
	assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
}

static socklen_t addr_of(int family, const char *ip, uint16_t port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (family == 4) {
		struct sockaddr_in *a = (struct sockaddr_in *)ss;

		a->sin_family = AF_INET;
		a->sin_port = htons(port);
		assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
		return sizeof(*a);
	}
	struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;

	a->sin6_family = AF_INET6;
	a->sin6_port = htons(port);
	assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
	return sizeof(*a);
}

static int listener(int family, const char *ip, uint16_t port)
{
	struct sockaddr_storage ss;
	socklen_t len = addr_of(family, ip, port, &ss);
	int one = 1, l = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM, 0);

	assert_true(l >= 0);
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	assert_int_equal(bind(l, (struct sockaddr *)&ss, len), 0);
	assert_int_equal(listen(l, 4), 0);
	return l;
}

static int connect_from(int family, const char *from, const char *to, uint16_t port, int rcvbuf)
{
	struct sockaddr_storage ss;
	socklen_t len = addr_of(family, from, 0, &ss);
	int s = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM, 0);

	assert_true(s >= 0);
	if (rcvbuf)
		assert_int_equal(setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
	assert_int_equal(bind(s, (struct sockaddr *)&ss, len), 0);
	len = addr_of(family, to, port, &ss);
	assert_int_equal(connect(s, (struct sockaddr *)&ss, len), 0);
	return s;
}

/* The flow key of segments that reach socket fd from its peer. */
static struct ws_tc_key key_to(int fd, int family)
{
	struct sockaddr_storage me, peer;
	socklen_t a = sizeof(me), b = sizeof(peer);
	struct ws_tc_key k = { .family = (uint8_t)family };

	assert_int_equal(getsockname(fd, (struct sockaddr *)&me, &a), 0);
	assert_int_equal(getpeername(fd, (struct sockaddr *)&peer, &b), 0);
	if (family == 4) {
		k.saddr[0] = ((struct sockaddr_in *)&peer)->sin_addr.s_addr;
		k.daddr[0] = ((struct sockaddr_in *)&me)->sin_addr.s_addr;
		k.sport = ((struct sockaddr_in *)&peer)->sin_port;
		k.dport = ((struct sockaddr_in *)&me)->sin_port;
	} else {
		memcpy(k.saddr, &((struct sockaddr_in6 *)&peer)->sin6_addr, 16);
		memcpy(k.daddr, &((struct sockaddr_in6 *)&me)->sin6_addr, 16);
		k.sport = ((struct sockaddr_in6 *)&peer)->sin6_port;
		k.dport = ((struct sockaddr_in6 *)&me)->sin6_port;
	}
	return k;
}

static struct ws_tc_key reversed(const struct ws_tc_key *k)
{
	struct ws_tc_key r = *k;

	memcpy(r.saddr, k->daddr, 16);
	memcpy(r.daddr, k->saddr, 16);
	r.sport = k->dport;
	r.dport = k->sport;
	return r;
}

static int queued(int fd, unsigned long req)
{
	int n = -1;

	assert_int_equal(ioctl(fd, req, &n), 0);
	return n;
}

static void say(int fd, const char *msg)
{
	size_t n = strlen(msg);

	assert_int_equal(write(fd, msg, n), (ssize_t)n);
}

static void hear(int fd, size_t n)
{
	char buf[64];
	struct pollfd p = { .fd = fd, .events = POLLIN };

	assert_int_equal(poll(&p, 1, 2000), 1);
	assert_int_equal(read(fd, buf, n), (ssize_t)n);
}

static void move_one(int from, int to, size_t n)
{
	char buf[64];
	struct pollfd p = { .fd = from, .events = POLLIN };

	assert_int_equal(poll(&p, 1, 2000), 1);
	assert_int_equal(read(from, buf, n), (ssize_t)n);
	assert_int_equal(write(to, buf, n), (ssize_t)n);
}

static uint32_t repair_seq(int fd, int queue)
{
	uint32_t seq;
	socklen_t len = sizeof(seq);

	assert_int_equal(setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof(queue)), 0);
	assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq, &len), 0);
	return seq;
}

static struct tcp_info info_of(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len), 0);
	return ti;
}

static uint8_t pattern(uint64_t i, int d)
{
	return (uint8_t)((i * 2654435761u >> 13) + (uint64_t)d * 97 + i / 4093);
}

static uint64_t counter(uint32_t k)
{
	uint64_t v[512] = { 0 }, sum = 0;

	bpf_map_lookup_elem(bpf_map__fd(skel->maps.tc_counters), &k, v);
	for (int i = 0; i < libbpf_num_possible_cpus() && i < 512; i++)
		sum += v[i];
	return sum;
}

/* Both ways at once, every byte checked; then a half-close each way. */
static void stream(int c, int u, size_t total)
{
	int fd[2] = { c, u };
	size_t sent[2] = { 0, 0 }, got[2] = { 0, 0 };
	bool shut[2] = { false, false }, eof[2] = { false, false };
	static uint8_t buf[1 << 16];

	set_nonblock(c);
	set_nonblock(u);
	while (!(eof[0] && eof[1])) {
		struct pollfd p[2];

		for (int e = 0; e < 2; e++) {
			p[e].fd = fd[e];
			p[e].events = (eof[1 - e] ? 0 : POLLIN) | (sent[e] < total ? POLLOUT : 0);
		}
		if (poll(p, 2, 10000) <= 0)
			break; /* ten seconds without progress either way */
		for (int e = 0; e < 2; e++) {
			/* e sends direction e (0: client to upstream). */
			if ((p[e].revents & POLLOUT) && sent[e] < total) {
				size_t n = total - sent[e] < sizeof(buf) ? total - sent[e] : sizeof(buf);
				ssize_t w;

				for (size_t i = 0; i < n; i++)
					buf[i] = pattern(sent[e] + i, e);
				w = write(fd[e], buf, n);
				if (w > 0)
					sent[e] += (size_t)w;
			}
			if (sent[e] == total && !shut[e]) {
				assert_int_equal(shutdown(fd[e], SHUT_WR), 0);
				shut[e] = true;
			}
			if (p[e].revents & (POLLIN | POLLHUP)) {
				/* fd[e] receives direction 1 - e. */
				ssize_t r = read(fd[e], buf, sizeof(buf));

				if (r == 0) {
					eof[1 - e] = true;
				} else if (r > 0) {
					for (ssize_t i = 0; i < r; i++)
						if (buf[i] != pattern(got[1 - e] + (size_t)i, 1 - e))
							fail_msg("direction %d: byte %zu is %u, not %u", 1 - e,
								 got[1 - e] + (size_t)i, buf[i],
								 pattern(got[1 - e] + (size_t)i, 1 - e));
					got[1 - e] += (size_t)r;
				}
			}
		}
	}
	if (got[0] != total || got[1] != total || !eof[0] || !eof[1])
		fail_msg("stream: sent %zu/%zu, received %zu/%zu, eof %d/%d; segments %llu, frozen drops %llu, "
			 "guard drops %llu, option drops %llu, arm fails %llu, rewrite fails %llu",
			 sent[0], sent[1], got[0], got[1], eof[0], eof[1], (unsigned long long)counter(WS_TCC_SEGMENTS),
			 (unsigned long long)counter(WS_TCC_FROZEN_DROPS), (unsigned long long)counter(WS_TCC_GUARD_DROPS),
			 (unsigned long long)counter(WS_TCC_OPTION_DROPS), (unsigned long long)counter(WS_TCC_ARM_FAILS),
			 (unsigned long long)counter(WS_TCC_REWRITE_FAILS));
}

static void put(int map, const void *k, const void *v)
{
	assert_int_equal(bpf_map_update_elem(map, k, v, BPF_ANY), 0);
}

/* client c -- pa [proxy] pb -- upstream u, on addresses of their own for
 * IPv4 (IPv6's lo has only ::1: there the ports change); the proxy relays a greeting each way, then
 * hands the pair over and streams `total` bytes each way. */
static void hand_over(int family, int client_rcvbuf, size_t total, uint16_t port)
{
	const char *c_ip = family == 4 ? "127.0.0.3" : "::1", *pa_ip = family == 4 ? "127.0.0.1" : "::1",
		   *pb_ip = family == 4 ? "127.0.0.4" : "::1", *u_ip = family == 4 ? "127.0.0.2" : "::1";
	int la = listener(family, pa_ip, port), lu = listener(family, u_ip, port + 1);
	int c = connect_from(family, c_ip, pa_ip, port, client_rcvbuf), pa = accept(la, NULL, NULL);
	int pb = connect_from(family, pb_ip, u_ip, port + 1, 0), u = accept(lu, NULL, NULL);
	int flows = bpf_map__fd(skel->maps.tc_flows), tunnels = bpf_map__fd(skel->maps.tc_tunnels);
	struct ws_tc_key ck = key_to(pa, family), uk = key_to(pb, family), gc = reversed(&ck), gu = reversed(&uk);
	struct ws_tc_flow f = { .tunnel_id = 9, .dir = WS_DIR_C2U };
	struct ws_tc_tunnel t = { .state = WS_TC_FROZEN, .family = (uint32_t)family };
	struct ws_tunnel st = { 0 };
	struct tcp_info ia, ib, after;
	uint32_t id = 9, a_snd, a_rcv, b_snd, b_rcv;
	int one = 1, on = 1, off = 0;
	uint64_t guard_before, delivered_before[2];

	assert_true(pa >= 0 && u >= 0);
	close(la);
	close(lu);
	/* The proxy at work: a request and a reply. */
	say(c, "GET /chat");
	move_one(pa, pb, 9);
	hear(u, 9);
	say(u, "101 done");
	move_one(pb, pa, 8);
	hear(c, 8);
	/* Quiet: nothing queued anywhere, every byte acknowledged. */
	setsockopt(pa, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
	setsockopt(pb, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
	for (int i = 0; i < 200; i++) {
		if (!queued(pa, SIOCOUTQ) && !queued(pb, SIOCOUTQ) && !queued(c, SIOCOUTQ) && !queued(u, SIOCOUTQ))
			break;
		usleep(1000);
	}
	assert_int_equal(queued(pa, SIOCINQ) + queued(pb, SIOCINQ), 0);
	assert_int_equal(queued(pa, SIOCOUTQ) + queued(pb, SIOCOUTQ) + queued(c, SIOCOUTQ) + queued(u, SIOCOUTQ), 0);
	ia = info_of(pa);
	ib = info_of(pb);
	if (client_rcvbuf) /* the window's translation is exercised */
		assert_int_not_equal(ia.tcpi_snd_wscale, ib.tcpi_rcv_wscale);
	/* Frozen, then repaired: the sequence numbers cannot move any more. */
	put(tunnels, &id, &t);
	put(flows, &ck, &f);
	f.dir = WS_DIR_U2C;
	put(flows, &uk, &f);
	f.role = WS_TC_GUARD;
	put(flows, &gc, &f);
	put(flows, &gu, &f);
	assert_int_equal(setsockopt(pa, SOL_SOCKET, SO_KEEPALIVE, &off, sizeof(off)), 0);
	assert_int_equal(setsockopt(pb, SOL_SOCKET, SO_KEEPALIVE, &off, sizeof(off)), 0);
	assert_int_equal(setsockopt(pa, IPPROTO_TCP, TCP_REPAIR, &on, sizeof(on)), 0);
	assert_int_equal(setsockopt(pb, IPPROTO_TCP, TCP_REPAIR, &on, sizeof(on)), 0);
	a_snd = repair_seq(pa, TCP_SEND_QUEUE);
	a_rcv = repair_seq(pa, TCP_RECV_QUEUE);
	b_snd = repair_seq(pb, TCP_SEND_QUEUE);
	b_rcv = repair_seq(pb, TCP_RECV_QUEUE);
	/* c2u leaves as pb's, u2c as pa's. */
	t.dir[0].seq_delta = b_snd - a_rcv;
	t.dir[0].ack_delta = b_rcv - a_snd;
	t.dir[1].seq_delta = a_snd - b_rcv;
	t.dir[1].ack_delta = a_rcv - b_snd;
	t.dir[0].nxt = t.dir[0].acked = b_snd;
	t.dir[1].nxt = t.dir[1].acked = a_snd;
	t.dir[0].wscale_in = ia.tcpi_snd_wscale;
	t.dir[0].wscale_out = ib.tcpi_rcv_wscale;
	t.dir[1].wscale_in = ib.tcpi_snd_wscale;
	t.dir[1].wscale_out = ia.tcpi_rcv_wscale;
	t.dir[0].ts = t.dir[1].ts = !!(ia.tcpi_options & TCPI_OPT_TIMESTAMPS);
	assert_int_equal(!!(ia.tcpi_options & TCPI_OPT_TIMESTAMPS), !!(ib.tcpi_options & TCPI_OPT_TIMESTAMPS));
	t.armed = !t.dir[0].ts;
	memcpy(t.dir[0].saddr, gu.saddr, 16);
	memcpy(t.dir[0].daddr, gu.daddr, 16);
	t.dir[0].sport = gu.sport;
	t.dir[0].dport = gu.dport;
	memcpy(t.dir[1].saddr, gc.saddr, 16);
	memcpy(t.dir[1].daddr, gc.daddr, 16);
	t.dir[1].sport = gc.sport;
	t.dir[1].dport = gc.dport;
	t.state = WS_TC_ACTIVE;
	put(bpf_map__fd(skel->maps.tunnels), &id, &st);
	put(tunnels, &id, &t);
	guard_before = counter(WS_TCC_GUARD_DROPS);
	for (int d = 0; d < 2; d++)
		delivered_before[d] = counter(WS_TCC_DELIVERED_C2U + d);
	stream(c, u, total);
	/* The proxy's sockets took no byte after the hand-over. */
	after = info_of(pa);
	assert_int_equal(after.tcpi_bytes_received, ia.tcpi_bytes_received);
	after = info_of(pb);
	assert_int_equal(after.tcpi_bytes_received, ib.tcpi_bytes_received);
	assert_int_equal(bpf_map_lookup_elem(tunnels, &id, &t), 0);
	assert_int_equal(t.state, WS_TC_ENDED);
	assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(skel->maps.tunnels), &id, &st), 0);
	assert_int_equal(st.dir[0].bytes, total);
	assert_int_equal(st.dir[1].bytes, total);
	/* The daemon-wide counters (the metrics' kernel bytes) agree. */
	for (int d = 0; d < 2; d++)
		assert_int_equal(counter(WS_TCC_DELIVERED_C2U + d) - delivered_before[d], total);
	print_message("hand-over IPv%d, client rcvbuf %d, timestamps %s (wscale %u/%u and %u/%u): %zu bytes each way, "
		      "%llu and %llu segments; %llu segments from the frozen proxy sockets dropped\n",
		      family, client_rcvbuf, t.dir[0].ts ? "on" : "off", ia.tcpi_snd_wscale, ia.tcpi_rcv_wscale,
		      ib.tcpi_snd_wscale, ib.tcpi_rcv_wscale, total, (unsigned long long)st.dir[0].packets,
		      (unsigned long long)st.dir[1].packets,
		      (unsigned long long)(counter(WS_TCC_GUARD_DROPS) - guard_before));
	/* Closed in repair mode, the proxy's sockets send nothing. */
	close(pa);
	close(pb);
	close(c);
	close(u);
	clear_maps();
}

static void hands_over_ipv4_with_timestamps(void **state)
{
	(void)state;
	hand_over(4, 0, 16 << 20, 7001);
}

static void hands_over_ipv4_with_other_window_scales(void **state)
{
	(void)state;
	hand_over(4, 262144, 16 << 20, 7011);
}

static void hands_over_ipv6(void **state)
{
	(void)state;
	hand_over(6, 0, 16 << 20, 7021);
}

static void hands_over_without_timestamps(void **state)
{
	int fd = open("/proc/sys/net/ipv4/tcp_timestamps", O_WRONLY);

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "0", 1), 1);
	hand_over(4, 0, 16 << 20, 7031);
	assert_int_equal(pwrite(fd, "1", 1, 0), 1);
	close(fd);
}

/* 1 % of the segments lost and 0.5 % sent twice, at lo's egress: before the
 * program translates them, so retransmissions, SACK blocks and D-SACKs
 * all go through it. */
static void hands_over_under_loss_and_duplication(void **state)
{
	struct fault_inject_bpf *fi = fault_inject_bpf__open_and_load();
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = (int)if_nametoindex("lo"), .attach_point = BPF_TC_EGRESS);
	LIBBPF_OPTS(bpf_tc_opts, opts);
	uint64_t v[512] = { 0 }, dropped = 0, twice = 0;
	uint32_t k;

	(void)state;
	assert_non_null(fi);
	opts.prog_fd = bpf_program__fd(fi->progs.fault_inject);
	assert_int_equal(bpf_tc_attach(&hook, &opts), 0);
	hand_over(4, 0, 64 << 20, 7041);
	opts.prog_fd = opts.prog_id = opts.flags = 0;
	assert_int_equal(bpf_tc_detach(&hook, &opts), 0);
	for (k = 1; k <= 2; k++) {
		assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(fi->maps.fault_counts), &k, v), 0);
		for (int i = 0; i < libbpf_num_possible_cpus() && i < 512; i++)
			*(k == 1 ? &dropped : &twice) += v[i];
	}
	print_message("faults: %llu segments dropped, %llu sent twice\n", (unsigned long long)dropped,
		      (unsigned long long)twice);
	assert_true(dropped > 0 && twice > 0);
	fault_inject_bpf__destroy(fi);
}

/* A network namespace of our own, its lo up, the program on lo's ingress. */
static int setup(void **state)
{
	struct ifreq ifr = { .ifr_name = "lo" };
	int s;

	(void)state;
	if (geteuid() != 0) {
		/* make test runs as root: there, this is a failure. */
		print_message("needs root\n");
		return -1;
	}
	assert_int_equal(unshare(CLONE_NEWNET), 0);
	s = socket(AF_INET, SOCK_DGRAM, 0);
	assert_int_equal(ioctl(s, SIOCGIFFLAGS, &ifr), 0);
	ifr.ifr_flags |= IFF_UP;
	assert_int_equal(ioctl(s, SIOCSIFFLAGS, &ifr), 0);
	close(s);
	skel = tcsplice_bpf__open_and_load();
	bystander = tcsplice_bpf__open_and_load();
	if (!skel || !bystander) {
		print_message("the program does not load: %s\n", strerror(errno));
		return -1;
	}
	{
		LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = (int)if_nametoindex("lo"), .attach_point = BPF_TC_INGRESS);
		LIBBPF_OPTS(bpf_tc_opts, first, .prog_fd = bpf_program__fd(bystander->progs.tcsplice_ingress),
			    .priority = 1);
		LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = bpf_program__fd(skel->progs.tcsplice_ingress), .priority = 2);
		int err = bpf_tc_hook_create(&hook);

		if (err && err != -EEXIST)
			return -1;
		if (bpf_tc_attach(&hook, &first) || bpf_tc_attach(&hook, &opts))
			return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	tcsplice_bpf__destroy(skel);
	tcsplice_bpf__destroy(bystander);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(translates_ipv4),
		cmocka_unit_test(translates_ipv6),
		cmocka_unit_test(translates_the_longest_options),
		cmocka_unit_test(passes_what_is_not_its_own),
		cmocka_unit_test(frozen_drops_payload_and_guard_drops_the_proxy),
		cmocka_unit_test(draining_strips_ipv4),
		cmocka_unit_test(draining_strips_ipv6),
		cmocka_unit_test(the_egress_guard_knows_the_frozen_socket),
		cmocka_unit_test(fins_and_resets_end_it),
		cmocka_unit_test(ip_options_are_dropped),
		cmocka_unit_test(hands_over_ipv4_with_timestamps),
		cmocka_unit_test(hands_over_ipv4_with_other_window_scales),
		cmocka_unit_test(hands_over_ipv6),
		cmocka_unit_test(hands_over_under_loss_and_duplication),
		cmocka_unit_test(hands_over_without_timestamps),
	};

	if (getenv("TEST_FILTER")) /* one case: TEST_FILTER='*ipv6*' */
		cmocka_set_test_filter(getenv("TEST_FILTER"));
	return cmocka_run_group_tests(tests, setup, teardown);
}
