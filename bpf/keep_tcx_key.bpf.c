// SPDX-License-Identifier: GPL-2.0
/* The test VM's guard against live kernel-text patching, for tc
 * (docs/KERNEL-LOG.md, "A static-key flip under TCG"): the first tcx
 * attachment on the machine and the last detachment flip the static keys
 * that guard the ingress and egress hooks in __netif_receive_skb_core()
 * and __dev_queue_xmit(), which rewrites those jumps while other CPUs run
 * them; the express lane attaches and detaches at every daemon start and
 * stop. The VM harness attaches this program, which only passes each
 * packet on, to both hooks of a veth device in a namespace of its own
 * (scripts/vm-keep-static-keys.sh), so the keys stay on. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define TCX_NEXT (-1)

SEC("tc")
int keep_tcx_key(struct __sk_buff *skb)
{
	(void)skb;
	return TCX_NEXT;
}

char LICENSE[] SEC("license") = "GPL";
