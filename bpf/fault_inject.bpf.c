// SPDX-License-Identifier: GPL-2.0
/* A loss and duplication injector for tests (this kernel has no netem): a
 * tc program on a namespace's loopback that drops about 1 % of TCP
 * segments and sends about 0.5 % twice. SYNs pass untouched, so connects
 * do not wait out a SYN retransmission. Attached with tc's own loader:
 *   tc qdisc add dev lo clsact
 *   tc filter add dev lo egress bpf direct-action obj build/fault_inject.bpf.o sec tc
 * Its counters: bpftool prog show name fault_inject, then map dump id. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define DROP_PER_MILLE 10
#define DUP_PER_MILLE 5
#define CLONE_MARK 0x77f1
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2

enum { FAULT_SEEN, FAULT_DROPPED, FAULT_DUPLICATED, FAULT_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FAULT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} fault_counts SEC(".maps");

static __always_inline void bump(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&fault_counts, &i);

	if (v)
		*v += 1;
}

/* The TCP flags byte of the segment, or -1 when it is not TCP. */
static __always_inline int tcp_flags(struct __sk_buff *skb)
{
	__u8 proto, flags;
	__u32 off;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 vihl;

		if (bpf_skb_load_bytes(skb, 14, &vihl, 1) || bpf_skb_load_bytes(skb, 14 + 9, &proto, 1))
			return -1;
		off = 14 + (vihl & 0xf) * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, 14 + 6, &proto, 1))
			return -1;
		off = 14 + 40; /* no extension headers on loopback TCP */
	} else {
		return -1;
	}
	if (proto != 6 || bpf_skb_load_bytes(skb, off + 13, &flags, 1))
		return -1;
	return flags;
}

SEC("tc")
int fault_inject(struct __sk_buff *skb)
{
	int flags;
	__u32 r;

	if (skb->mark == CLONE_MARK) {
		skb->mark = 0; /* the duplicate itself: send it as it is */
		return TC_ACT_OK;
	}
	flags = tcp_flags(skb);
	if (flags < 0 || (flags & 0x02)) /* not TCP, or a SYN */
		return TC_ACT_OK;
	bump(FAULT_SEEN);
	r = bpf_get_prandom_u32() % 1000;
	if (r < DROP_PER_MILLE) {
		bump(FAULT_DROPPED);
		return TC_ACT_SHOT;
	}
	if (r < DROP_PER_MILLE + DUP_PER_MILLE) {
		skb->mark = CLONE_MARK;
		if (!bpf_clone_redirect(skb, skb->ifindex, 0))
			bump(FAULT_DUPLICATED);
		skb->mark = 0;
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
