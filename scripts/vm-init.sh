#!/bin/busybox sh
# PID 1 of the vmtest initramfs (scripts/vmtest.sh builds it): mount the
# host's root read-only and the work tree read-write over 9p, chroot, run the
# command from the kernel command line, print its exit status as a marker.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_pci 9pnet_virtio 9p veth sch_ingress cls_bpf; do modprobe "$m" 2>/dev/null; done

arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p"; }
work=$(arg wsplice.work)
cmd=$(arg wsplice.cmd | base64 -d)

opts=trans=virtio,version=9p2000.L,msize=524288
r=/mnt/root
if ! mount -t 9p -o "$opts,ro" hostroot $r; then
	echo "WSPLICE-VMTEST-EXIT=125 (9p mount of / failed)"
	poweroff -f
fi
for d in tmp run root; do mount -t tmpfs tmpfs "$r/$d"; done
# After the tmpfs mounts: a work tree under /tmp must not be hidden by them.
mkdir -p "$r$work" 2>/dev/null
if ! mount -t 9p -o "$opts" work "$r$work"; then
	echo "WSPLICE-VMTEST-EXIT=125 (9p mount of the work tree failed)"
	poweroff -f
fi
mount -t proc proc $r/proc
mount -t sysfs sys $r/sys
mount -t devtmpfs dev $r/dev
mkdir -p $r/dev/pts $r/dev/shm 2>/dev/null
mount -t devpts devpts $r/dev/pts 2>/dev/null
mount -t tmpfs tmpfs $r/dev/shm 2>/dev/null
mount -t bpf bpf $r/sys/fs/bpf
ip link set lo up
echo "vmtest: kernel $(uname -r), running: $cmd"
# Hold the sock_ops and tc static keys on, so no daemon start or stop
# patches kernel text under TCG (scripts/vm-keep-static-keys.sh says why).
chroot $r /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	/bin/bash "$work/scripts/vm-keep-static-keys.sh" ||
	echo "vmtest: warning: the static keys are not all held; a daemon start may patch kernel text"
# Under TCG every instruction is emulated: the suite's liveness bounds
# (wait_for) stretch threefold, its figures do not change.
chroot $r /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	TERM=dumb CI="${CI:-}" WSPLICE_TEST_TIME_SCALE=3 /bin/bash -c "$cmd"
echo "WSPLICE-VMTEST-EXIT=$?"
poweroff -f
