// SPDX-License-Identifier: GPL-2.0
/* The tc express lane (docs/DESIGN-TC-SPLICE.md). Attached at tc ingress of
 * the interfaces a tunnel's two legs use. A segment a peer sends to one of
 * the proxy's frozen sockets is rewritten into the segment the proxy would
 * have sent on the other leg: addresses and ports, seq and ack (SACK edges
 * too), the timestamps, the window across both legs' scales; checksums are
 * fixed by difference. Then it goes on, without the proxy's stack, its
 * queues or its worker: retransmission and flow control run end to end, and
 * the proxy holds no byte. Everything else passes untouched. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "wsplice_tc.h"

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define PROTO_TCP 6
/* What is not an express flow's goes on to the next program: with tcx,
 * TC_ACT_OK would end the chain, and a second wsplice (or any program
 * attached after this one) would never see its own segments. */
#define TC_ACT_UNSPEC (-1)
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define PACKET_HOST 0 /* linux/if_packet.h: a frame for this host */
#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_SACK 5
#define TCPOPT_TIMESTAMP 8
#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10
/* Offsets inside the TCP header. */
#define TH_SEQ 4
#define TH_ACK_SEQ 8
#define TH_FLAGS 13
#define TH_WIN 14
#define TH_CSUM 16
#define TCP_ESTABLISHED 1
#define TCP_CLOSE_WAIT 8

/* BPF_F_IPV6 for bpf_l4_csum_replace: without it the helper adjusts a
 * CHECKSUM_COMPLETE skb's csum for an IPv6 pseudo-header as if it were
 * IPv4's. Kernels from before the flag reject it (EINVAL): the loader
 * asks the kernel first and sets this to 0 there (user/tc_dataplane.c). */
const volatile __u64 l4_ipv6_flag = 1ULL << 7;

/* Written by the daemon only (include/wsplice_tc.h). */
struct ws_tc_handovers tc_handovers = {};
/* The guard keys in tc_flows, kept by the daemon: raised before a key goes
 * in and lowered after it went, so the egress guard, which sees every
 * locally sent segment on every device, looks nothing up while no tunnel
 * is express. */
__u32 guard_keys = 0;
/* The devices besides lo the programs are on, by ifindex (0: a free slot),
 * kept by the process that attached them: its workers, forked before a
 * device came, read here whether a leg's device is covered. Not read by
 * the programs; bpftool shows it. */
__u32 covered_ifindex[64] = {};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ws_tc_owner);
} tc_owner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WS_TC_MAX_FLOWS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ws_tc_key);
	__type(value, struct ws_tc_flow);
} tc_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WS_TC_MAX_TUNNELS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct ws_tc_tunnel);
} tc_tunnels SEC(".maps");

/* The same per-tunnel figures as the sockmap path's (bpf/splice.bpf.c), so
 * `wsplice conns`, the metrics and bpftool read a spliced tunnel the same
 * way in either engine; the daemon shares one map between both programs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WSPLICE_MAX_TUNNELS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct ws_tunnel);
} tunnels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WS_TCC_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tc_counters SEC(".maps");

/* A CPU's copy of the IP and TCP headers being rewritten, as they came
 * and as they go (in a map rather than on the stack: the verifier follows
 * every stack byte an option writes). busy: a second run on this CPU
 * while the first holds the copy (tc ingress runs with bottom halves off,
 * so only a kernel that lets softirqs preempt each other, PREEMPT_RT
 * without its BH lock, could) drops its segment, which comes again. */
struct tcp_scratch {
	__u8 old[128];
	__u8 h[128];
	__u32 busy;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tcp_scratch);
} tc_scratch SEC(".maps");

static __always_inline void count(__u32 i, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&tc_counters, &i);

	if (v)
		*v += n;
}

/* Where the headers are, and what the segment is. */
struct seg {
	__u32 l3, l4;      /* offsets of the IP and TCP headers */
	__u32 optlen;      /* TCP options' bytes */
	__u32 payload;     /* bytes after the TCP header (a GSO skb's whole) */
	__u32 ip_end;      /* where the IP packet ends (a NIC's frame may have padding after it) */
	__u32 seq, ack;    /* host order */
	__u16 win;         /* host order */
	__u8 flags;
	__u8 family;
};

/* n bytes at off into to: read in place where the skb's linear part has
 * them (a TCP segment's headers always are, on lo and veth), else by the
 * helper. This runs for every packet on the device. */
#define HEADER_AT(skb, off, to)                                                                      \
	({                                                                                           \
		void *_d = (void *)(long)(skb)->data, *_e = (void *)(long)(skb)->data_end;           \
		int _r = 0;                                                                          \
		if (_d + (off) + sizeof(*(to)) <= _e)                                                \
			__builtin_memcpy((to), _d + (off), sizeof(*(to)));                           \
		else                                                                                 \
			_r = bpf_skb_load_bytes((skb), (off), (to), sizeof(*(to)));                  \
		_r;                                                                                  \
	})

/* Reads the headers into key and s; 0 for a TCP segment the program may
 * look up, -1 for anything else (which passes untouched), 1 for a TCP
 * segment with IP options or IPv6 extension headers. */
static __always_inline int parse(struct __sk_buff *skb, struct ws_tc_key *key, struct seg *s)
{
	struct tcphdr th;
	__u32 hdr_end;
	int options = 0;

	s->l3 = ETH_HLEN;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (HEADER_AT(skb, ETH_HLEN, &ip) || ip.protocol != PROTO_TCP)
			return -1;
		if (ip.frag_off & bpf_htons(0x3fff))
			return -1; /* a fragment: TCP segments never are (DF, PMTU) */
		key->family = s->family = 4;
		key->saddr[0] = ip.saddr;
		key->daddr[0] = ip.daddr;
		s->ip_end = s->l3 + bpf_ntohs(ip.tot_len);
		s->l4 = s->l3 + ip.ihl * 4;
		options = ip.ihl != 5;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (HEADER_AT(skb, ETH_HLEN, &ip6))
			return -1;
		if (ip6.nexthdr != PROTO_TCP)
			return -1; /* extension headers: not an express flow's */
		key->family = s->family = 6;
		__builtin_memcpy(key->saddr, &ip6.saddr, 16);
		__builtin_memcpy(key->daddr, &ip6.daddr, 16);
		s->l4 = s->l3 + sizeof(ip6);
		s->ip_end = s->l4 + bpf_ntohs(ip6.payload_len);
	} else {
		return -1;
	}
	if (options) {
		/* At a variable offset: the ports only, for the lookup (the
		 * segment is dropped once its flow is known). */
		if (bpf_skb_load_bytes(skb, s->l4, &th, sizeof(th)))
			return -1;
		key->sport = th.source;
		key->dport = th.dest;
		s->flags = ((__u8 *)&th)[TH_FLAGS]; /* a SYN still starts a new connection */
		return 1;
	}
	if (s->family == 4 ? HEADER_AT(skb, ETH_HLEN + sizeof(struct iphdr), &th)
			   : HEADER_AT(skb, ETH_HLEN + sizeof(struct ipv6hdr), &th))
		return -1;
	key->sport = th.source;
	key->dport = th.dest;
	s->seq = bpf_ntohl(th.seq);
	s->ack = bpf_ntohl(th.ack_seq);
	s->win = bpf_ntohs(th.window);
	s->flags = ((__u8 *)&th)[TH_FLAGS];
	if (th.doff < 5)
		return -1;
	s->optlen = th.doff * 4 - sizeof(th);
	hdr_end = s->l4 + th.doff * 4;
	/* A length of 0 is a BIG TCP packet's: its skb is the packet. */
	if (s->ip_end <= s->l4 || s->ip_end > skb->len)
		s->ip_end = skb->len;
	s->payload = s->ip_end > hdr_end ? s->ip_end - hdr_end : 0;
	return options;
}

/* A 32-bit field in network order, in the header copy (a byte at a time:
 * an option's fields may sit at any offset). */
static __always_inline __u32 idx(__u32 at)
{
	/* Masked where the verifier sees it: clang would drop a mask it
	 * can prove redundant, and the verifier cannot. */
	asm volatile("" : "+r"(at));
	return at & 127;
}

static __always_inline __u32 get_be32(const __u8 *h, __u32 at)
{
	return (__u32)h[idx(at)] << 24 | (__u32)h[idx(at + 1)] << 16 | (__u32)h[idx(at + 2)] << 8 |
	       (__u32)h[idx(at + 3)];
}

static __always_inline void add_be32(__u8 *h, __u32 at, __u32 delta)
{
	__u32 v = get_be32(h, at) + delta;

	h[idx(at)] = v >> 24;
	h[idx(at + 1)] = v >> 16;
	h[idx(at + 2)] = v >> 8;
	h[idx(at + 3)] = v;
}

/* The socket a segment from saddr:sport to daddr:dport (network order)
 * reaches: a proxy's, or the listener on its address (the caller looks
 * at the state). To be released. */
static __always_inline struct bpf_sock *proxy_sock(struct __sk_buff *skb, __u32 family, const __u32 *saddr,
						   const __u32 *daddr, __u16 sport, __u16 dport)
{
	struct bpf_sock_tuple tuple = {};
	__u32 len;

	if (family == 4) {
		tuple.ipv4.saddr = saddr[0];
		tuple.ipv4.daddr = daddr[0];
		tuple.ipv4.sport = sport;
		tuple.ipv4.dport = dport;
		len = sizeof(tuple.ipv4);
	} else {
		__builtin_memcpy(tuple.ipv6.saddr, saddr, 16);
		__builtin_memcpy(tuple.ipv6.daddr, daddr, 16);
		tuple.ipv6.sport = sport;
		tuple.ipv6.dport = dport;
		len = sizeof(tuple.ipv6);
	}
	return bpf_skc_lookup_tcp(skb, &tuple, len, BPF_F_CURRENT_NETNS, 0);
}

/* The timestamps' deltas, set at a tunnel's first segment with the clocks
 * of the proxy's two frozen sockets: a peer's TSval moves onto the clock of
 * the proxy's socket on the other leg, past the last TSval that socket sent
 * (so PAWS takes it), and a TSecr comes back onto the clock it echoes. The
 * daemon cannot read ts_recent, the peer's last TSval, so this is done
 * here. Returns 0, or -1 when a proxy socket is gone. */
static __always_inline int arm_timestamps(struct __sk_buff *skb, struct ws_tc_tunnel *t)
{
	__u32 now_ms = (__u32)(bpf_ktime_get_ns() / 1000000);
	__u32 recent[2], offset[2];

	for (int d = 0; d < 2; d++) {
		/* The proxy's socket that receives direction d, looked up
		 * from the other direction's out leg: a segment its peer
		 * would send it. */
		struct ws_tc_dir *o = &t->dir[1 - d];
		struct bpf_sock *sk;
		struct tcp_sock *tp;

		sk = proxy_sock(skb, t->family, o->daddr, o->saddr, o->dport, o->sport);
		if (!sk)
			return -1;
		/* The lookup falls back to a listener on the same address
		 * and port (the daemon's own): only the frozen socket has
		 * the clocks. */
		if (sk->state != TCP_ESTABLISHED && sk->state != TCP_CLOSE_WAIT) {
			bpf_sk_release(sk);
			return -1;
		}
		tp = bpf_skc_to_tcp_sock(sk);
		if (tp) {
			recent[d] = tp->rx_opt.ts_recent;
			offset[d] = tp->tsoffset;
		}
		bpf_sk_release(sk);
		if (!tp)
			return -1;
	}
	/* Direction d leaves through the socket that receives 1 - d. */
	for (int d = 0; d < 2; d++) {
		__u32 delta = now_ms + offset[1 - d] + 1 - recent[d];

		t->dir[d].tsval_delta = delta;
		t->dir[1 - d].tsecr_delta = -delta;
	}
	t->armed = 1;
	return 0;
}

/* The options: TSval/TSecr and SACK edges, in the scratch copy, one
 * option per bpf_loop step (the verifier then checks a step once, not
 * every path through 40 bytes of options). */
struct opt_walk {
	__u32 i, optlen, base; /* base: where the options start in the copy */
	__u32 tsval_delta, tsecr_delta, ack_delta;
	int err;
};

static long opt_step(__u32 n, void *ctx)
{
	struct opt_walk *w = ctx;
	__u32 zero = 0, i = w->i, at = w->base + i;
	struct tcp_scratch *sc = bpf_map_lookup_elem(&tc_scratch, &zero);
	__u8 kind, len, *h;

	(void)n;
	if (!sc || i >= w->optlen || i >= 40)
		return 1;
	h = sc->h;
	kind = h[idx(at)];
	if (kind == TCPOPT_EOL)
		return 1;
	if (kind == TCPOPT_NOP) {
		w->i = i + 1;
		return 0;
	}
	len = h[idx(at + 1)];
	if (i + 2 > w->optlen || len < 2 || i + len > w->optlen) {
		w->err = 1;
		return 1;
	}
	if (kind == TCPOPT_TIMESTAMP && len == 10) {
		add_be32(h, at + 2, w->tsval_delta);
		add_be32(h, at + 6, w->tsecr_delta);
	} else if (kind == TCPOPT_SACK) {
		for (__u32 e = 0; e < 8; e++) {
			if (2 + 4 * (e + 1) > len)
				break;
			add_be32(h, at + 2 + 4 * e, w->ack_delta);
		}
	}
	w->i = i + len;
	return 0;
}

static __always_inline int rewrite_options(__u32 base, __u32 optlen, const struct ws_tc_dir *o)
{
	struct opt_walk w = { .optlen = optlen, .base = base, .tsval_delta = o->tsval_delta, .tsecr_delta = o->tsecr_delta,
			      .ack_delta = o->ack_delta };

	bpf_loop(40, opt_step, &w, 0);
	return w.err ? -1 : 0;
}

/* The one's complement sum of n bytes at at in h, 16-bit words in
 * network order (n even, at most 32). */
static __always_inline __u32 sum_words(const __u8 *h, __u32 at, __u32 n)
{
	__u32 sum = 0;

	for (__u32 k = 0; k < 32; k += 2) {
		if (k >= n)
			break;
		sum += (__u32)h[idx(at + k)] << 8 | h[idx(at + k + 1)];
	}
	return sum;
}

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* The segment rewritten into the out leg's, in a copy of its IP and TCP
 * headers (options included): addresses, ports, seq, ack, the window, the
 * timestamps and SACK edges. It goes back with one store; the IPv4
 * header's checksum is fixed in the copy, the TCP checksum by two
 * differences: the pseudo-header's (with CHECKSUM_PARTIAL, lo's and
 * veth's, only it is in the field; the helper knows) and the header's. A
 * helper call per field cost a microsecond a segment (docs/KERNEL-LOG.md,
 * "The tc splice's cost per segment"). */
static __always_inline int rewrite_in(struct __sk_buff *skb, const struct seg *s, const struct ws_tc_dir *o,
				      struct tcp_scratch *sc)
{
	__u32 optlen = s->optlen, ipl = s->family == 4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	__u32 alen = s->family == 4 ? 4 : 16, aat = s->family == 4 ? 12 : 8;
	__u32 len, hlen, win, before, after;
	__u8 *h;
	__u16 new_win, pdiff;
	__s64 diff;

	if (optlen > 40)
		return -1;
	/* 40 <= len <= 103 by arithmetic, not by a compare: clang may spill
	 * the value before a compare, and 6.1's verifier does not carry a
	 * bound learnt on a register to its spilled copy. */
	len = ipl - sizeof(struct iphdr) + optlen;
	asm volatile("" : "+r"(len));
	len = (len & 0x3f) + sizeof(struct iphdr) + sizeof(struct tcphdr);
	if (bpf_skb_load_bytes(skb, s->l3, sc->old, len))
		return -1;
	h = sc->h;
	__builtin_memcpy(h, sc->old, sizeof(sc->h));
	/* Addresses: the pseudo-header's difference, and the IPv4 header's
	 * own checksum, by RFC 1624. */
	before = sum_words(h, aat, 2 * alen);
	if (s->family == 4) {
		__builtin_memcpy(h + 12, o->saddr, 4);
		__builtin_memcpy(h + 16, o->daddr, 4);
	} else {
		__builtin_memcpy(h + 8, o->saddr, 16);
		__builtin_memcpy(h + 24, o->daddr, 16);
	}
	after = sum_words(h, aat, 2 * alen);
	pdiff = fold(fold(~before & 0xffffffff) + (__u32)fold(after));
	if (s->family == 4) {
		__u16 check = fold((__u16)~((__u32)h[10] << 8 | h[11]) + (__u32)pdiff);

		check = ~check;
		h[10] = check >> 8;
		h[11] = check;
	}
	/* TCP. */
	__builtin_memcpy(h + ipl, &o->sport, 2);
	__builtin_memcpy(h + ipl + 2, &o->dport, 2);
	add_be32(h, ipl + TH_SEQ, o->seq_delta);
	if (s->flags & TH_ACK)
		add_be32(h, ipl + TH_ACK_SEQ, o->ack_delta);
	win = ((__u32)s->win << (o->wscale_in & 15)) >> (o->wscale_out & 15);
	new_win = win > 0xffff ? 0xffff : win;
	h[idx(ipl + TH_WIN)] = new_win >> 8;
	h[idx(ipl + TH_WIN + 1)] = new_win;
	if (optlen && rewrite_options(ipl + sizeof(struct tcphdr), optlen, o))
		return -1;
	hlen = len - ipl;
	if (s->family == 4)
		diff = bpf_csum_diff((__be32 *)(sc->old + 20), hlen & 0x3c, (__be32 *)(h + 20), hlen & 0x3c, 0);
	else
		diff = bpf_csum_diff((__be32 *)(sc->old + 40), hlen & 0x3c, (__be32 *)(h + 40), hlen & 0x3c, 0);
	if (diff < 0 || bpf_skb_store_bytes(skb, s->l3, h, len, 0))
		return -1;
	if (bpf_l4_csum_replace(skb, s->l4 + TH_CSUM, 0, bpf_htons(pdiff),
				BPF_F_PSEUDO_HDR | (s->family == 6 ? l4_ipv6_flag : 0)))
		return -1;
	return bpf_l4_csum_replace(skb, s->l4 + TH_CSUM, 0, diff, 0);
}

/* DRAIN: whether the segment fills the hole before the proxy's socket's
 * out-of-order queue, and must go in whole. Bytes past a hole are
 * acknowledged selectively, so the peer sends only the hole again; cut
 * off, it would never be filled, the queue never empty, and the drain
 * never end. The key is the segment's own tuple: the proxy's socket. */
static __always_inline bool fills_hole(struct __sk_buff *skb, const struct ws_tc_key *key, const struct seg *s)
{
	struct bpf_sock *sk = proxy_sock(skb, key->family, key->saddr, key->daddr, key->sport, key->dport);
	struct tcp_sock *tp;
	bool fills = false;

	if (!sk)
		return false;
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp && tp->out_of_order_queue.rb_node) {
		__u32 nxt = tp->rcv_nxt;

		fills = (__s32)(s->seq - nxt) <= 0 && (__s32)(s->seq + s->payload - nxt) > 0;
	}
	bpf_sk_release(sk);
	return fills;
}

/* DRAIN: the segment reaches the proxy's socket as a pure ACK. Its payload
 * is cut off the tail and its FIN cleared; the IP length follows, and the
 * TCP checksum is summed again over the header alone (a difference would
 * need the payload's sum). A trimmed skb's CHECKSUM_COMPLETE turns into
 * CHECKSUM_NONE, which the full sum satisfies; CHECKSUM_PARTIAL (lo,
 * veth) and UNNECESSARY are not verified on local delivery. A FIN without
 * payload keeps its length: only the flags change, by difference. */
static __always_inline int strip_in(struct __sk_buff *skb, const struct seg *s, struct tcp_scratch *sc)
{
	__u32 optlen = s->optlen, ipl = s->family == 4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	__u32 alen = s->family == 4 ? 4 : 16, aat = s->family == 4 ? 12 : 8;
	__u32 len, hlen, sum;
	__u16 check;
	__u8 *h;

	if (optlen > 40)
		return -1;
	if (!s->payload) {
		/* The flags are the low byte of the 16-bit word at 12. */
		__u8 flags = s->flags & ~TH_FIN;

		if (bpf_l4_csum_replace(skb, s->l4 + TH_CSUM, bpf_htons(s->flags), bpf_htons(flags), 2))
			return -1;
		return bpf_skb_store_bytes(skb, s->l4 + TH_FLAGS, &flags, 1, 0);
	}
	/* As in rewrite_in: 40 <= len <= 103 by arithmetic. */
	len = ipl - sizeof(struct iphdr) + optlen;
	asm volatile("" : "+r"(len));
	len = (len & 0x3f) + sizeof(struct iphdr) + sizeof(struct tcphdr);
	hlen = len - ipl;
	if (bpf_skb_load_bytes(skb, s->l3, sc->h, len))
		return -1;
	h = sc->h;
	if (s->family == 4) {
		__u32 was = (__u32)h[2] << 8 | h[3];

		check = ~fold((__u16)~((__u32)h[10] << 8 | h[11]) + (__u16)~was + len);
		h[2] = len >> 8;
		h[3] = len;
		h[10] = check >> 8;
		h[11] = check;
	} else {
		h[4] = hlen >> 8;
		h[5] = hlen;
	}
	h[idx(ipl + TH_FLAGS)] &= ~TH_FIN;
	h[idx(ipl + TH_CSUM)] = 0;
	h[idx(ipl + TH_CSUM + 1)] = 0;
	sum = sum_words(h, aat, 2 * alen) + PROTO_TCP + hlen + sum_words(h, ipl, hlen < 32 ? hlen : 32);
	if (hlen > 32)
		sum += sum_words(h, ipl + 32, hlen - 32);
	check = ~fold(sum);
	h[idx(ipl + TH_CSUM)] = check >> 8;
	h[idx(ipl + TH_CSUM + 1)] = check;
	if (bpf_skb_change_tail(skb, s->l3 + len, 0))
		return -1;
	return bpf_skb_store_bytes(skb, s->l3, h, len, 0);
}

/* The segment rewritten into out leg o's, or, without o, stripped
 * (DRAIN), in this CPU's scratch copy. */
static __always_inline int edit(struct __sk_buff *skb, const struct seg *s, const struct ws_tc_dir *o)
{
	__u32 zero = 0;
	struct tcp_scratch *sc = bpf_map_lookup_elem(&tc_scratch, &zero);
	int r;

	if (!sc || sc->busy)
		return -1;
	sc->busy = 1;
	r = o ? rewrite_in(skb, s, o, sc) : strip_in(skb, s, sc);
	sc->busy = 0;
	return r;
}

/* Moves a 32-bit sequence number kept in 64 bits forward to to; returns
 * by how much (0 when it was there already). A timer's retransmission can
 * run on another CPU at the same time, hence the exchange. */
static __always_inline __u32 advance(__u64 *at, __u32 to)
{
	for (int tries = 0; tries < 4; tries++) {
		__u64 was = *at;

		if ((__s32)(to - (__u32)was) <= 0)
			return 0;
		if (__sync_val_compare_and_swap(at, was, (__u64)to) == was)
			return to - (__u32)was;
	}
	return 0;
}

/* FINs and their acknowledgements, resets, the bytes delivered. */
static __always_inline void track(struct ws_tc_tunnel *t, __u32 id, __u32 d, const struct seg *s)
{
	struct ws_tc_dir *o = &t->dir[d & 1], *other = &t->dir[(d & 1) ^ 1];
	__u32 seq = s->seq + o->seq_delta, end = seq + s->payload;
	struct ws_tunnel *st = bpf_map_lookup_elem(&tunnels, &id);
	__u32 delivered = 0;

	advance(&o->nxt, end + !!(s->flags & TH_FIN));
	/* This segment's raw ack is in the other direction's out leg space:
	 * it acknowledges what the other direction delivered. Its FIN takes
	 * a sequence number but is no byte. */
	if (s->flags & TH_ACK) {
		__u32 from = (__u32)other->acked;

		delivered = advance(&other->acked, s->ack);
		if (delivered && (other->flags & WS_TC_FIN_SEEN) && (__s32)(s->ack - other->fin_end) >= 0 &&
		    (__s32)(from - other->fin_end) < 0)
			delivered--;
	}
	count(WS_TCC_DELIVERED_C2U + ((d & 1) ^ 1), delivered);
	count(WS_TCC_PACKETS_C2U + (d & 1), 1);
	if (st) {
		if (delivered)
			__sync_fetch_and_add(&st->dir[(d & 1) ^ 1].bytes, delivered);
		__sync_fetch_and_add(&st->dir[d & 1].packets, 1);
		st->last_active_ns = bpf_ktime_get_coarse_ns();
	}
	if (s->flags & TH_FIN) {
		o->fin_end = end + 1;
		o->flags |= WS_TC_FIN_SEEN;
	}
	if ((s->flags & TH_ACK) && (other->flags & WS_TC_FIN_SEEN) && (__s32)(s->ack - other->fin_end) >= 0)
		other->flags |= WS_TC_FIN_ACKED;
	if (s->flags & TH_RST)
		o->flags |= WS_TC_RST;
	if (t->state == WS_TC_ACTIVE &&
	    ((s->flags & TH_RST) || ((o->flags & WS_TC_FIN_ACKED) && (other->flags & WS_TC_FIN_ACKED)))) {
		t->state = WS_TC_ENDED;
		count(WS_TCC_ENDED, 1);
	}
}

/* A guard key's tunnel is draining: its proxy socket still speaks. */
static __always_inline bool draining(const struct ws_tc_flow *f)
{
	__u32 id = f->tunnel_id;
	struct ws_tc_tunnel *t = bpf_map_lookup_elem(&tc_tunnels, &id);

	return t && t->state == WS_TC_DRAIN;
}

/* The link-layer header where the segment's way out takes none from a
 * neighbour entry, written before the segment counts as gone on. Into lo's
 * ingress: a zero destination, lo's own address (eth_type_trans on lo
 * takes any other for another host's frame). Into a veth's peer: the next
 * hop's and the veth's addresses, and the packet type of a frame for this
 * host, which before Linux 6.15 bpf_redirect_peer does not set again: a
 * segment that came in on a bridge port (another host's frame there)
 * would be dropped by the peer's IP input. */
static __always_inline int link_header(struct __sk_buff *skb, const struct ws_tc_dir *o)
{
	if (o->redirect == WS_TC_TO_PEER)
		return bpf_skb_store_bytes(skb, 0, o->eth, sizeof(o->eth), 0) ||
		       bpf_skb_change_type(skb, PACKET_HOST);
	if (o->redirect == WS_TC_LO_INGRESS) {
		__u8 lo_mac[6] = {};

		return bpf_skb_store_bytes(skb, 0, lo_mac, sizeof(lo_mac), 0);
	}
	return 0;
}

SEC("tc")
int tcsplice_ingress(struct __sk_buff *skb)
{
	struct ws_tc_key key = {};
	struct ws_tc_flow *f;
	struct ws_tc_tunnel *t;
	struct ws_tc_dir *o;
	struct seg s = {};
	__u32 id, d;
	int r;

	/* Translated already, on a device (WS_TC_LO_INGRESS). */
	if (skb->mark == WS_TC_MARK) {
		skb->mark = 0;
		return TC_ACT_UNSPEC;
	}
	r = parse(skb, &key, &s);
	if (r < 0)
		return TC_ACT_UNSPEC;
	f = bpf_map_lookup_elem(&tc_flows, &key);
	if (!f)
		return TC_ACT_UNSPEC;
	if (f->role == WS_TC_GUARD) {
		/* A frozen proxy socket spoke (a delayed ACK, a probe): its
		 * peer hears only the other peer now. While the tunnel drains,
		 * the relay still writes through it. */
		if (draining(f))
			return TC_ACT_UNSPEC;
		count(WS_TCC_GUARD_DROPS, 1);
		return TC_ACT_SHOT;
	}
	/* A SYN on a flow's addresses is a new connection: the old one is
	 * over. */
	if (s.flags & TH_SYN)
		return TC_ACT_UNSPEC;
	id = f->tunnel_id;
	d = f->dir & 1;
	t = bpf_map_lookup_elem(&tc_tunnels, &id);
	if (!t)
		return TC_ACT_UNSPEC;
	if (r > 0) {
		count(WS_TCC_OPTION_DROPS, 1);
		return TC_ACT_SHOT;
	}
	if (t->state == WS_TC_FROZEN || t->state == WS_TC_DRAIN) {
		/* A reset is not sent again: the daemon sees the peer gone
		 * when it thaws, or times the tunnel out. Pure ACKs pass. */
		if (s.flags & TH_RST) {
			count(WS_TCC_FROZEN_DROPS, 1);
			return TC_ACT_SHOT;
		}
		if (!s.payload && !(s.flags & TH_FIN))
			return TC_ACT_UNSPEC;
		if (t->state == WS_TC_FROZEN) {
			count(WS_TCC_FROZEN_DROPS, 1);
			return TC_ACT_SHOT;
		}
		if (!(t->dir[d].flags & WS_TC_STRIP) || (s.payload && fills_hole(skb, &key, &s)))
			return TC_ACT_UNSPEC;
		if (edit(skb, &s, NULL)) {
			count(WS_TCC_REWRITE_FAILS, 1);
			return TC_ACT_SHOT;
		}
		count(WS_TCC_STRIPPED, 1);
		return TC_ACT_UNSPEC;
	}
	if (t->state != WS_TC_ACTIVE && t->state != WS_TC_ENDED)
		return TC_ACT_UNSPEC;
	if (!t->armed && arm_timestamps(skb, t)) {
		count(WS_TCC_ARM_FAILS, 1);
		return TC_ACT_SHOT;
	}
	o = &t->dir[d];
	if (edit(skb, &s, o) || link_header(skb, o)) {
		count(WS_TCC_REWRITE_FAILS, 1);
		return TC_ACT_SHOT;
	}
	/* Only what goes on counts: a dropped FIN or reset comes again, or
	 * (a reset) ends the tunnel through the daemon's timeouts. */
	track(t, id, d, &s);
	count(WS_TCC_SEGMENTS, 1);
	count(WS_TCC_BYTES, s.payload);
	if (o->redirect == WS_TC_EGRESS)
		return bpf_redirect(o->ifindex, 0);
	if (o->redirect == WS_TC_TO_PEER)
		return bpf_redirect_peer(o->ifindex, 0);
	if (o->redirect == WS_TC_NEIGH)
		return bpf_redirect_neigh(o->ifindex, NULL, 0, 0);
	if (o->redirect == WS_TC_LO_INGRESS) {
		skb->mark = WS_TC_MARK;
		return bpf_redirect(o->ifindex, BPF_F_INGRESS);
	}
	return TC_ACT_OK;
}

/* The guard where a proxy socket's segments do not come back in: on a
 * device other than lo they leave by its egress, never its ingress. A
 * segment the ingress program redirected here has the same addresses, so
 * the socket tells them apart (struct ws_tc_flow, cookie). */
SEC("tc")
int tcsplice_egress(struct __sk_buff *skb)
{
	struct ws_tc_key key = {};
	struct ws_tc_flow *f;
	struct seg s = {};

	if (!guard_keys || !skb->sk || parse(skb, &key, &s) < 0)
		return TC_ACT_UNSPEC;
	f = bpf_map_lookup_elem(&tc_flows, &key);
	if (!f || f->role != WS_TC_GUARD || bpf_get_socket_cookie(skb) != f->cookie || draining(f))
		return TC_ACT_UNSPEC;
	count(WS_TCC_GUARD_DROPS, 1);
	return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "GPL";
