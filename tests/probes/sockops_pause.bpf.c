// SPDX-License-Identifier: GPL-2.0
/* Probe (docs/KERNEL-LOG.md, "pausing from userspace loses bytes"): can a sock_ops program pause a spliced socket
 * under its lock? It sets PARSE_ALL_HDR_OPT on every established socket of
 * its cgroup and deletes a socket from vmap when asked, at the next header
 * callback. Built and run by tests/probes/sockops_pause.c. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 16);
	__type(key, __u64);
	__type(value, __u64);
} vmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u64);
	__type(value, __u32);
} pause_req SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static void bump(__u32 i, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &i);
	if (v)
		__sync_fetch_and_add(v, n);
}

SEC("sockops")
int pause_ops(struct bpf_sock_ops *ops)
{
	__u64 cookie;

	switch (ops->op) {
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		bump(0, 1);
		cookie = bpf_get_socket_cookie(ops);
		if (!bpf_map_lookup_elem(&pause_req, &cookie))
			return 1;
		bpf_map_delete_elem(&vmap, &cookie);
		bpf_map_delete_elem(&pause_req, &cookie);
		bump(1, 1);
		return 1;
	}
	return 1;
}

SEC("sk_skb")
int drop_verdict(struct __sk_buff *skb)
{
	bump(2, skb->len);
	return SK_DROP;
}
char LICENSE[] SEC("license") = "GPL";
