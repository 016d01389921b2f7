"""100 000 idle tunnels through one daemon, in the kernel path (issue #11):
each carries one echoed message, then all stay open; the daemon's RSS and
the kernel's memory (slab, TCP buffers) per tunnel are reported; closing
them all leaves no descriptor, map entry or memory behind.

WSPLICE_TEST_TUNNELS=100000 runs it (0 or unset: skipped; it needs about
2 GiB and 2 minutes). The host's per-process descriptor limit (a container's
hard RLIMIT_NOFILE can be 20 000) is met the way production meets it: enough
worker processes for two descriptors per tunnel, clients and echo servers
each holding their share, and loopback addresses of their own (127.0.0.x
clients, 127.0.1.x servers) so no address pair runs out of ephemeral ports."""
import json
import os
import resource
import subprocess
import time

import pytest

from conftest import WSPLICE, free_port, need_sockmap, report
from wsutil import bpftool_dump, wait_for

TUNNELS = int(os.environ.get("WSPLICE_TEST_TUNNELS", "0") or 0)
BENCH = os.path.join(os.path.dirname(WSPLICE), "bench")
pytestmark = pytest.mark.skipif(TUNNELS <= 0, reason="WSPLICE_TEST_TUNNELS unset")


def meminfo_kib(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def slab_kib():
    """The kernel's slab in two parts: "unreclaimable" holds what a tunnel
    really costs (sockets, psocks, epoll items, map entries, TIME_WAIT
    sockets); "reclaimable" is mostly the /proc inodes and dentries that
    listing /proc/PID/fd creates, this test's own or any monitor's on the
    host, which the kernel gives back under pressure. A leak check on the
    sum once failed in CI on 270 MB of those."""
    return {"slab": meminfo_kib("SUnreclaim"), "reclaimable": meminfo_kib("SReclaimable")}


def settled_slab_kib(base_tw):
    """slab_kib() once the kernel has freed what it frees late, so that what
    is left is what the tunnels left: TIME_WAIT sockets (kept 60 s), objects
    freed after an RCU grace period (sockets, psocks), and the free objects
    and empty slabs each cache keeps per CPU (writing to a cache's "shrink"
    file gives them back). Without this, a second round once left 300 MB
    more than the first, and the next run did not."""
    wait_for(lambda: sockstat("tw") <= base_tw + 16, timeout=90)
    for _ in range(2):
        time.sleep(1)  # RCU callbacks (kfree_rcu, the psock's destroy work)
        for name in os.listdir("/sys/kernel/slab"):
            try:
                with open(os.path.join("/sys/kernel/slab", name, "shrink"), "w") as f:
                    f.write("1")
            except OSError:
                pass
    return slab_kib()


def sockstat(field):
    """From /proc/net/sockstat's TCP line: inuse (open sockets, TIME_WAIT not counted), tw (TIME_WAIT) or mem (pages)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index(field) + 1])
    return 0


def tcp_mem_kib():
    return sockstat("mem") * os.sysconf("SC_PAGE_SIZE") // 1024


def tcp_mem_slack_kib():
    """How far sockstat's "mem" may stand from the buffers really held:
    each CPU keeps up to net.core.mem_pcpu_rsv pages of its changes before
    it folds them into the global count (1 MiB a CPU by default), at the
    start and at the end alike. CI saw 1 892 KiB left over on 2 CPUs with
    one TCP socket open."""
    try:
        with open("/proc/sys/net/core/mem_pcpu_rsv") as f:
            pages = int(f.read())
    except OSError:
        pages = 256
    return 2 * os.cpu_count() * pages * os.sysconf("SC_PAGE_SIZE") // 1024


def status(px):
    r = subprocess.run([WSPLICE, "status", "--json", "--bpffs", px.pin_dir], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def one_round(px, base, groups, per_process, workers, clients, n_round):
    """Opens TUNNELS idle tunnels, checks and reports them, closes them all;
    returns the daemon's RSS and the slab size once they are gone."""
    t0 = time.monotonic()
    left = TUNNELS
    for g in range(groups):
        n = min(per_process, left)
        left -= n
        clients.append(subprocess.Popen(
            [os.path.join(BENCH, "ws_load"), "127.0.0.1", str(px.port), "idle", str(n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, WS_LOAD_SRC="127.0.0.%d" % (g + 2)), preexec_fn=raise_nofile))
    for c in clients:
        line = c.stdout.readline()
        assert line.startswith("ready"), "a client failed: %s %s" % (line, c.stderr.read() if c.poll() else "")
    opened_s = time.monotonic() - t0
    st = status(px)
    assert st["tunnels_open"] == TUNNELS and st["tunnels_by_engine"]["sockmap"] == TUNNELS, st
    time.sleep(1)
    full = dict(slab_kib(), fds=px.fd_count(), rss=px.rss_kib(), tcp=tcp_mem_kib())
    per = {k: (full[k] - base[k]) * 1024 / TUNNELS for k in ("rss", "slab", "reclaimable", "tcp")}
    assert full["fds"] - base["fds"] >= 2 * TUNNELS
    assert sockstat("inuse") - base["inuse"] >= 4 * TUNNELS
    entries = len(bpftool_dump(px.pin_dir, "tunnels"))
    assert entries == TUNNELS, "%d tunnels in the kernel's map" % entries
    report("round %d: %d idle tunnels (sockmap, %d workers) opened with one echoed message each in %.1f s; "
           "per tunnel: daemon RSS %.0f B, unreclaimable slab %.0f B, TCP buffers %.0f B (4 sockets: client, the "
           "proxy's two, upstream); reclaimable slab %.0f B (socket inodes, and the /proc entries listing descriptors creates)"
           % (n_round, TUNNELS, workers, opened_s, per["rss"], per["slab"], per["tcp"], per["reclaimable"]))
    t1 = time.monotonic()
    for c in clients:
        c.stdin.close()
    for c in clients:
        assert c.wait(120) == 0, c.stderr.read()
    clients.clear()
    assert wait_for(lambda: status(px)["tunnels_open"] == 0, timeout=120), status(px)
    closed_s = time.monotonic() - t1
    assert wait_for(lambda: px.fd_count() == base["fds"], timeout=30), (px.fd_count(), base["fds"])
    assert bpftool_dump(px.pin_dir, "tunnels") == [] and bpftool_dump(px.pin_dir, "sock_links") == []
    # Every socket is gone (TIME_WAIT ones are not counted in inuse: the
    # kernel keeps those 60 s, without a socket or its buffers), and with
    # them their buffers.
    assert wait_for(lambda: sockstat("inuse") <= base["inuse"] + 16, timeout=30), \
        "%d TCP sockets more than at the start" % (sockstat("inuse") - base["inuse"])
    assert wait_for(lambda: tcp_mem_kib() <= base["tcp"] + tcp_mem_slack_kib(), timeout=30), \
        "TCP buffers still %d KiB above the start" % (tcp_mem_kib() - base["tcp"])
    unsettled = slab_kib()["slab"]
    after = dict(settled_slab_kib(base["tw"]), rss=px.rss_kib())
    report("round %d: closed in %.1f s: descriptors back to %d, maps empty, TCP sockets and buffers back; "
           "left: daemon RSS %+d KiB (freed memory malloc keeps), unreclaimable slab %+d KiB once TIME_WAIT "
           "sockets expired and the caches shrank (%+d KiB before), reclaimable %+d KiB"
           % (n_round, closed_s, base["fds"], after["rss"] - base["rss"], after["slab"] - base["slab"],
              unsettled - base["slab"], after["reclaimable"] - base["reclaimable"]))
    return after


def test_100k_idle_tunnels_carry_a_message_and_leave_nothing_behind(start_proxy):
    need_sockmap()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    per_process = min(hard - 500, 15000)  # tunnels one client or echo process holds
    groups = -(-TUNNELS // per_process)
    # Two descriptors per tunnel in a worker, and room for the spread of the
    # kernel's SO_REUSEPORT hash.
    workers = min(64, -(-2 * TUNNELS // (hard - 3000)) + 2)
    port = free_port()
    echoes = [subprocess.Popen([os.path.join(BENCH, "ws_echo"), str(port), "127.0.1.%d" % (g + 1)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=raise_nofile)
              for g in range(groups)]
    servers = "\n".join("server = 127.0.1.%d:%d" % (g + 1, port) for g in range(groups))
    config = ("[global]\nmax_tunnels = %d\nworkers = %d\n[listener main]\nlisten = 127.0.0.1:{port}\n"
              "[pool p]\n%s\n[route r]\npool = p\n" % (TUNNELS + 1000, workers, servers))
    clients = []
    try:
        time.sleep(0.3)
        px = start_proxy(0, "sockmap", config=config)
        assert len(px.pids()) == workers + 1
        time.sleep(0.5)
        tw = sockstat("tw")
        base = dict(settled_slab_kib(tw), fds=px.fd_count(), rss=px.rss_kib(), tcp=tcp_mem_kib(),
                    inuse=sockstat("inuse"), tw=tw)
        # Twice: what the first round leaves is what malloc and the slab
        # caches keep for reuse; the second must not grow past it (a leak would).
        first = one_round(px, base, groups, per_process, workers, clients, 1)
        second = one_round(px, base, groups, per_process, workers, clients, 2)
        assert second["rss"] <= first["rss"] + 2048, "the daemon grew by %d KiB in the second round" % (
            second["rss"] - first["rss"])
        # 256 B a tunnel: a leaked socket (about 2 KB), psock or map element
        # on each would exceed it; settled, the rounds differed by 3 MB.
        assert second["slab"] <= first["slab"] + TUNNELS * 256 // 1024, \
            "unreclaimable slab grew by %d KiB in the second round" % (second["slab"] - first["slab"])
        report("after the second round: daemon RSS %+d KiB, unreclaimable slab %+d KiB against the first" % (
            second["rss"] - first["rss"], second["slab"] - first["slab"]))
    finally:
        for c in clients:
            c.kill()
        for e in echoes:
            e.kill()
            e.wait()
