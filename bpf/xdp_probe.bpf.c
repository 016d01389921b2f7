// SPDX-License-Identifier: GPL-2.0
/* A pass-through XDP program: the netns test attaches it in native mode to a
 * veth to show the interface takes XDP (groundwork for the XDP guard). It
 * counts packets so the test can see it ran. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} xdp_seen SEC(".maps");

SEC("xdp")
int xdp_probe(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&xdp_seen, &key);

	(void)ctx;
	if (n)
		(*n)++;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
