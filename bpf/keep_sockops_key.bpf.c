// SPDX-License-Identifier: GPL-2.0
/* The test VM's guard against live kernel-text patching (docs/KERNEL-LOG.md,
 * "A static-key flip under TCG"). Every cgroup sock_ops attachment on the
 * machine counts in one static key; the first attachment and the last
 * detachment rewrite a jump in tcp_connect() and its siblings while other
 * CPUs run them. Under qemu's TCG that rewrite once left a CPU at an int3
 * the kernel no longer recognised, and the VM panicked. The VM harness
 * attaches this program, which does nothing, to an empty cgroup of its own
 * before the tests, so the key stays on and wsplice's own attach and detach
 * (once per daemon start) never patch text. No socket ever runs it. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("sockops")
int keep_sockops_key(struct bpf_sock_ops *ctx)
{
	(void)ctx;
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
