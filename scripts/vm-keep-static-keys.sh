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
for o in "$obj" build/keep_tcx_key.bpf.o; do
	[ -f "$o" ] || { echo "vm-keep-static-keys: $o is missing (make all)" >&2; exit 1; }
done
mnt=$(mktemp -d /tmp/vm-cgroup2.XXXXXX)
mount -t cgroup2 none "$mnt"
mkdir -p "$mnt/wsplice-vm-keep-key"
bpftool prog load "$obj" /sys/fs/bpf/wsplice_vm_keep_key type sockops
bpftool cgroup attach "$mnt/wsplice-vm-keep-key" sock_ops pinned /sys/fs/bpf/wsplice_vm_keep_key
rm -f /sys/fs/bpf/wsplice_vm_keep_key # the attachment holds the program
umount "$mnt" && rmdir "$mnt"
echo "vm-keep-static-keys: sock_ops key held by an empty cgroup"

# The tc hooks' keys (bpf/keep_tcx_key.bpf.c): a clsact qdisc and, where
# the kernel has tcx (6.6+), a tcx program on each hook of a veth device
# in a namespace no test uses. bpftool 7.1 cannot attach tcx: BPF_PROG_ATTACH
# (not a link, so it needs no process to hold it) from python.
ip netns add wsvmkeep
ip -n wsvmkeep link add wsvmkeep type veth peer name wsvmkeep1
ip -n wsvmkeep link set wsvmkeep up
ip netns exec wsvmkeep tc qdisc add dev wsvmkeep clsact
bpftool prog load build/keep_tcx_key.bpf.o /sys/fs/bpf/wsplice_vm_keep_tcx type tc
if nsenter --net=/run/netns/wsvmkeep python3 - <<'PY'
import ctypes, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 64)
    if libc.syscall(321, cmd, buf, len(buf)) < 0:  # SYS_bpf on x86-64
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
path = ctypes.create_string_buffer(b"/sys/fs/bpf/wsplice_vm_keep_tcx")
fd = libc.syscall(321, 7, ctypes.create_string_buffer(struct.pack("QII", ctypes.addressof(path), 0, 0), 64), 64)
if fd < 0:
    sys.exit("BPF_OBJ_GET: " + os.strerror(ctypes.get_errno()))
try:
    for attach_type in (46, 47):  # BPF_TCX_INGRESS, BPF_TCX_EGRESS
        bpf(8, struct.pack("IIIII", socket.if_nametoindex("wsvmkeep"), fd, attach_type, 0, 0))
except OSError as e:
    sys.exit("no tcx: %s" % e)
PY
then
	echo "vm-keep-static-keys: tc and tcx keys held by a veth device (namespace wsvmkeep)"
else
	echo "vm-keep-static-keys: tc keys held by a veth device's clsact (namespace wsvmkeep)"
fi
rm -f /sys/fs/bpf/wsplice_vm_keep_tcx # the attachments hold the program
