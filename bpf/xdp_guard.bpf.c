// SPDX-License-Identifier: GPL-2.0
/* The XDP guard: in front of the listener ports, before the TCP stack
 * spends anything on a packet, it drops what comes from a denied source and
 * the SYNs of a source over its rate. Everything else passes untouched:
 * traffic for other ports, non-TCP, frames the parser does not know (VLAN
 * tags), and fragments, except a denied source's that show no port. The established tunnels'
 * client legs are TCP to a listener port too: from an allowed source they
 * pass, and a source denied later loses them, as behind a firewall. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "wsplice_guard.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, GUARD_MAX_DENY);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* the kernel requires it of a trie */
	__type(key, struct guard_key);
	__type(value, __u8); /* enum guard_origin */
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* wsplice deny and bpftool find it */
} guard_deny SEC(".maps");

/* The listener ports, host order. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GUARD_MAX_PORTS);
	__type(key, __u16);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} guard_ports SEC(".maps");

/* Each source's theoretical arrival time (GCRA), the least recent forgotten
 * first: a flood of spoofed sources evicts old entries, never fails. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, GUARD_MAX_SOURCES);
	__type(key, struct guard_key);
	__type(value, __u64);
} guard_rates SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct guard_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} guard_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GUARD_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} guard_stats SEC(".maps");

static __always_inline int count(__u32 idx, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&guard_stats, &idx);

	if (n)
		(*n)++;
	return verdict;
}

/* GCRA: a SYN passes when the source is at most tolerance ahead of its
 * schedule. Two CPUs may race on one source's stamp; the loser's SYN is
 * then not charged, an error of one SYN per race. */
static __always_inline bool syn_allowed(const struct guard_key *src)
{
	__u32 zero = 0;
	struct guard_config *c = bpf_map_lookup_elem(&guard_config, &zero);
	__u64 now, tat, *stamp;

	if (!c || !c->interval_ns)
		return true;
	now = bpf_ktime_get_ns();
	stamp = bpf_map_lookup_elem(&guard_rates, src);
	if (!stamp) {
		tat = now + c->interval_ns;
		bpf_map_update_elem(&guard_rates, src, &tat, BPF_ANY);
		return true;
	}
	tat = *stamp > now ? *stamp : now;
	if (tat - now > c->tolerance_ns)
		return false;
	*stamp = tat + c->interval_ns;
	return true;
}

/* IPv6 extension headers walked before giving up on finding TCP. */
#define IPV6_EXT_MAX 4
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60

/* Where the packet's TCP header is, or NULL: not TCP (passes), or a
 * fragment without the TCP header (*fragment set: a later fragment, or a
 * first one cut before the header ends). */
static __always_inline struct tcphdr *find_tcp(void *data, void *end, struct guard_key *src, bool *fragment)
{
	struct ethhdr *eth = data;
	struct tcphdr *tcp;

	if ((void *)(eth + 1) > end)
		return NULL;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return NULL;
		src->family = 4;
		__builtin_memcpy(src->addr, &ip->saddr, 4);
		if (ip->protocol != IPPROTO_TCP || ip->ihl < 5)
			return NULL;
		*fragment = ip->frag_off & bpf_htons(IP_MF | IP_OFFSET);
		if (ip->frag_off & bpf_htons(IP_OFFSET))
			return NULL;
		tcp = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		void *p;
		__u8 nh;

		if ((void *)(ip6 + 1) > end)
			return NULL;
		src->family = 6;
		__builtin_memcpy(src->addr, &ip6->saddr, 16);
		nh = ip6->nexthdr;
		p = ip6 + 1;
		/* A SYN behind a destination-options header reaches TCP as
		 * surely as a bare one: walk the headers the stack walks. */
		for (int i = 0; i < IPV6_EXT_MAX && nh != IPPROTO_TCP; i++) {
			if (nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST) {
				struct ipv6_opt_hdr *h = p;

				if ((void *)(h + 1) > end)
					return NULL;
				nh = h->nexthdr;
				p += (h->hdrlen + 1) * 8;
			} else if (nh == NEXTHDR_FRAGMENT) {
				struct frag_hdr *f = p;

				if ((void *)(f + 1) > end)
					return NULL;
				*fragment = true;
				if (f->frag_off & bpf_htons(0xFFF8))
					return NULL;
				nh = f->nexthdr;
				p += sizeof(*f);
			} else {
				return NULL;
			}
		}
		if (nh != IPPROTO_TCP)
			return NULL;
		tcp = p;
	} else {
		return NULL;
	}
	if ((void *)(tcp + 1) > end) {
		*fragment = true;
		return NULL;
	}
	return tcp;
}

SEC("xdp")
int xdp_guard(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct guard_key src = { .prefixlen = GUARD_FAMILY_BITS + 128 };
	bool fragment = false;
	struct tcphdr *tcp = find_tcp(data, end, &src, &fragment);
	__u16 port;

	if (!tcp) {
		/* A fragment whose port cannot be seen: dropped when its
		 * source is denied (the first fragment to a listener port
		 * would have been), else passed for the stack to reassemble. */
		if (fragment && src.family && bpf_map_lookup_elem(&guard_deny, &src))
			return count(GUARD_DENIED, XDP_DROP);
		return count(GUARD_OTHER, XDP_PASS);
	}
	port = bpf_ntohs(tcp->dest);
	if (!bpf_map_lookup_elem(&guard_ports, &port))
		return count(GUARD_OTHER, XDP_PASS);
	if (bpf_map_lookup_elem(&guard_deny, &src))
		return count(GUARD_DENIED, XDP_DROP);
	if (tcp->syn && !tcp->ack) {
		/* One bucket per IPv6 /64: a host holds a whole one. */
		if (src.family == 6)
			__builtin_memset(&src.addr[8], 0, 8);
		if (!syn_allowed(&src))
			return count(GUARD_RATE_LIMITED, XDP_DROP);
	}
	return count(GUARD_PASSED, XDP_PASS);
}

char LICENSE[] SEC("license") = "GPL";
