#!/usr/bin/env bash
# Run inside the test VM before the suite (scripts/vm-init.sh calls it):
# attaches build/keep_sockops_key.bpf.o to an empty cgroup, so the kernel's
# sock_ops static key stays enabled for the whole boot and wsplice's
# attach/detach at each daemon start and stop never rewrites kernel text
# (the reason: bpf/keep_sockops_key.bpf.c). The cgroup2 hierarchy is
# mounted at a private path and unmounted again, so the daemon still finds
# no cgroup2 mount and mounts its own; /proc/self/cgroup has its 0:: line
# from here on, so the never-mounted case is the host's to cover.
set -euo pipefail
cd "$(dirname "$0")/.."
obj=build/keep_sockops_key.bpf.o
[ -f "$obj" ] || { echo "vm-keep-static-keys: $obj is missing (make all)" >&2; exit 1; }
mnt=$(mktemp -d /tmp/vm-cgroup2.XXXXXX)
mount -t cgroup2 none "$mnt"
mkdir -p "$mnt/wsplice-vm-keep-key"
bpftool prog load "$obj" /sys/fs/bpf/wsplice_vm_keep_key type sockops
bpftool cgroup attach "$mnt/wsplice-vm-keep-key" sock_ops pinned /sys/fs/bpf/wsplice_vm_keep_key
rm -f /sys/fs/bpf/wsplice_vm_keep_key # the attachment holds the program
umount "$mnt" && rmdir "$mnt"
echo "vm-keep-static-keys: sock_ops key held by an empty cgroup"
