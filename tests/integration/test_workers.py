"""workers = N and user = NAME: worker processes that share the listeners
(SO_REUSEPORT), the BPF data plane and the figures, under a master that
passes its signals on and starts a worker again when one dies; workers that
run as an unprivileged user and still splice in the kernel."""
import os
import pwd
import signal
import socket
import subprocess
import time

import pytest

from conftest import WSPLICE, free_port, need_sockmap
from test_metrics import scrape, tunnel_bytes
from wsutil import (bpf_tunnels, connects, echo_after_101, one_route_config, open_tunnel, recv_exact, recv_head,
                    status_of, upgrade_request, wait_for)

WORKERS = ("--workers", "2")


def conns(px):
    return px.ask("conns")["tunnels"]


def status(px):
    return px.ask("status")


def proc_status(pid):
    with open("/proc/%d/status" % pid) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def open_until_both_workers(px, n_workers=2, at_least=8, limit=64):
    """Tunnels until every worker holds one: the kernel spreads connections
    by a hash of their addresses, so a few more may be needed."""
    socks = []
    while len(socks) < limit:
        s, _ = open_tunnel(px.port)
        s.sendall(b"%d" % len(socks))
        recv_exact(s, len(b"%d" % len(socks)))
        socks.append(s)
        if len(socks) >= at_least and len({(t["id"] - 1) % n_workers for t in conns(px)}) == n_workers:
            return socks
    raise AssertionError("%d tunnels and not every worker got one: %s" % (len(socks), conns(px)))


def test_workers_share_the_port_the_maps_and_the_figures(upstream, start_proxy, mode):
    up = upstream(echo_after_101)
    mport = free_port()
    px = start_proxy(up.port, mode, extra=WORKERS + ("--metrics", "127.0.0.1:%d" % mport))
    assert len(px.pids()) == 3, "a master and two workers: %s" % px.pids()
    st = status(px)
    assert st["workers"] == 2 and st["pid"] == px.proc.pid
    socks = open_until_both_workers(px)
    sent = 0
    for i, s in enumerate(socks):
        payload = os.urandom(1000 + 997 * i)
        s.sendall(payload)
        assert recv_exact(s, len(payload)) == payload
        sent += len(payload) + len(b"%d" % i)
    listing = conns(px)
    assert len(listing) == len(socks)
    assert sum(t["bytes_client_to_upstream"] for t in listing) == sent
    m = scrape(mport)
    # Every worker counts into the same figures, exactly.
    assert tunnel_bytes(m, "client_to_upstream") == sent and tunnel_bytes(m, "upstream_to_client") == sent
    assert sum(v for k, v in m.items() if k.startswith("wsplice_tunnels_active")) == len(socks)
    assert m["wsplice_upgrades_succeeded_total"] == len(socks)
    if px.kernel:
        # One data plane: both workers' tunnels in the one pinned map, each
        # worker in its own id range (worker * max_tunnels + index).
        assert len(bpf_tunnels(px.pin_dir)) == len(socks)
        ranges = {int(t["detail"].split()[1]) // 262144 for t in listing}
        assert ranges == {0, 1}, listing
    for s in socks:
        s.close()
    assert wait_for(lambda: sum(v for k, v in scrape(mport).items()
                                if k.startswith("wsplice_tunnels_active")) == 0, timeout=5)
    if px.kernel:
        assert wait_for(lambda: bpf_tunnels(px.pin_dir) == [], timeout=5)


def test_sighup_reaches_every_worker(upstream, start_proxy):
    old = upstream(echo_after_101)
    new = upstream(lambda c, h, r: echo_after_101(c, h, r, greeting=b"new"))
    px = start_proxy(0, "copy", extra=WORKERS, config=one_route_config(old.port))
    newer = upstream(lambda c, h, r: echo_after_101(c, h, r, greeting=b"NEW"))
    before = px.read_log().count("reloaded")
    px.rewrite_config(one_route_config(new.port))
    px.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: px.read_log().count("reloaded") >= before + 2, timeout=5), px.read_log()
    # Two reloads back to back: each worker applies the copy of its own
    # reload, and ends on the second.
    px.rewrite_config(one_route_config(newer.port))
    px.proc.send_signal(signal.SIGHUP)
    px.rewrite_config(one_route_config(new.port))
    px.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: px.read_log().count("reloaded") >= before + 6, timeout=5), px.read_log()
    # A worker is told by its master, never by a signal of its own.
    os.kill(px.pids()[1], signal.SIGHUP)
    time.sleep(0.2)
    assert px.read_log().count("reloaded") == before + 6, px.read_log()
    # Forty connections from forty source ports: both workers route them anew.
    for _ in range(40):
        s, rest = open_tunnel(px.port)
        if len(rest) < 3:
            rest += recv_exact(s, 3 - len(rest))
        assert rest == b"new"
        s.close()
    assert status(px)["generation"] == 4


def test_a_worker_that_dies_is_started_again_and_the_others_keep_theirs(upstream, start_proxy, kmode):
    up = upstream(echo_after_101)
    px = start_proxy(up.port, kmode, extra=WORKERS)
    socks = open_until_both_workers(px)
    victim = px.pids()[1]
    os.kill(victim, signal.SIGKILL)
    # One look at the children per try: two could see the zombie, then the
    # gap between the master's reap and its respawn.
    def replaced():
        pids = px.pids()
        return len(pids) == 3 and victim not in pids
    assert wait_for(replaced, timeout=10), px.read_log()
    assert wait_for(lambda: "was killed by signal" in px.read_log(), timeout=5), px.read_log()
    survivors = 0
    for s in socks:
        try:
            s.sendall(b"still")
            if recv_exact(s, 5, timeout=2) == b"still":
                survivors += 1
        except (OSError, AssertionError):
            pass
    # The dead worker's tunnels are gone (their sockets died with it), the
    # other's all carry on.
    assert 0 < survivors < len(socks)
    # Nothing of the dead worker stays in the kernel's maps, or in the gauges.
    assert wait_for(lambda: len(bpf_tunnels(px.pin_dir)) == survivors, timeout=5), bpf_tunnels(px.pin_dir)
    assert wait_for(lambda: status(px)["tunnels_open"] == survivors, timeout=5), status(px)
    for i in range(20):  # the new worker serves
        s, _ = open_tunnel(px.port)
        s.sendall(b"again")
        try:
            got = recv_exact(s, 5)
        except TimeoutError:
            got = None
        assert got == b"again", "tunnel %d after the respawn got %r\n%s\n%s" % (i, got, conns(px), px.read_log())
        s.close()
    for s in socks:
        s.close()


def test_max_tunnels_counts_every_worker(upstream, start_proxy):
    up = upstream(echo_after_101)
    px = start_proxy(0, "copy", extra=WORKERS, config=one_route_config(up.port, global_="max_tunnels = 6"))
    held = [open_tunnel(px.port)[0] for _ in range(6)]
    # Twenty more from twenty source ports reach both workers: a per-worker
    # cap would let some through.
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", px.port), timeout=5) as s:
            s.sendall(upgrade_request()[0])
            assert status_of(recv_head(s)[0]) == 503
    held.pop().close()
    assert wait_for(lambda: status(px)["tunnels_open"] == 5, timeout=5)
    for _ in range(10):  # the free slot is found by whichever worker gets the next one
        try:
            s, _ = open_tunnel(px.port)
            held.append(s)
            break
        except AssertionError:
            time.sleep(0.05)
    assert len(held) == 6
    for s in held:
        s.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_user_runs_unprivileged_sockmap_workers(upstream, start_proxy, workers):
    need_sockmap()
    nobody = pwd.getpwnam("nobody")
    up = upstream(echo_after_101)
    px = start_proxy(up.port, "sockmap", extra=("--workers", workers, "--user", "nobody"))
    master, *worker_pids = px.pids()
    assert len(worker_pids) == int(workers)
    assert proc_status(master)["Uid"].split()[0] == "0"
    for pid in worker_pids:
        st = proc_status(pid)
        assert st["Uid"].split() == [str(nobody.pw_uid)] * 4, st["Uid"]
        assert st["Gid"].split() == [str(nobody.pw_gid)] * 4, st["Gid"]
        # No capability at all: the maps' descriptors are enough (docs/CONFIG.md, user).
        for s in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
            assert int(st[s], 16) == 0, (s, st[s])
    socks = open_until_both_workers(px, n_workers=int(workers), at_least=4)
    for s in socks:
        s.sendall(b"k" * 100_000)
        assert recv_exact(s, 100_000) == b"k" * 100_000
    px.assert_kernel_path(at_least=len(socks))
    assert len(bpf_tunnels(px.pin_dir)) == len(socks)
    for s in socks:
        s.close()
    # Stopping (the Proxy fixture) checks that the root master removed every pin.


def test_workers_and_user_are_checked_at_start(tmp_path):
    def run(*argv):
        return subprocess.run([WSPLICE, *argv], capture_output=True, text=True, timeout=10)

    base = ["--listen", "127.0.0.1:%d" % free_port(), "--upstream", "127.0.0.1:1", "--mode", "copy"]
    r = run(*base, "--workers", "0")
    assert r.returncode == 2 and "--workers '0': expected auto or a number from 1 to 64" in r.stderr, r.stderr
    r = run(*base, "--user", "no-such-user-here")
    assert r.returncode == 2 and "--user 'no-such-user-here': no such user" in r.stderr, r.stderr
    conf = tmp_path / "w.conf"
    conf.write_text("[global]\nworkers = 65\nuser = no-such-user-here\n" +
                    one_route_config(1).replace("{port}", str(free_port())))
    r = run("-t", "-c", str(conf))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "%s:2: workers '65': expected a number from 1 to 64" % conf in r.stderr, r.stderr
    assert "%s:3: user 'no-such-user-here': no such user" % conf in r.stderr, r.stderr
    conf.write_text("[global]\nuser = root\n" + one_route_config(1).replace("{port}", str(free_port())))
    r = run("-c", str(conf), "--mode", "copy", "--bpffs", "/sys/fs/bpf/wsplice-user-root-%d" % os.getpid())
    assert r.returncode == 1 and "is root: name the user the workers should run as" in r.stderr, r.stderr
    assert "did not start" in r.stderr, r.stderr


def test_a_second_daemon_on_the_port_is_refused_not_joined(upstream, start_proxy):
    """SO_REUSEPORT would let a second process into the first one's group;
    the start checks the port first, as with one worker."""
    up = upstream(echo_after_101)
    px = start_proxy(up.port, "copy", extra=WORKERS)
    r = subprocess.run([WSPLICE, "--listen", "127.0.0.1:%d" % px.port, "--upstream", "127.0.0.1:%d" % up.port,
                        "--mode", "copy", "--workers", "2", "--bpffs", "/sys/fs/bpf/wsplice-second-%d" % os.getpid()],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "cannot listen on 127.0.0.1:%d: Address already in use" % px.port in r.stderr, \
        r.stderr


def test_a_worker_that_keeps_dying_is_left_out_and_the_others_serve(upstream, start_proxy):
    """Past ten deaths a minute the master stops starting a worker again, and
    closes its listening sockets: the kernel gives its share of the new
    connections to the others instead of queueing them for nobody."""
    up = upstream(echo_after_101)
    px = start_proxy(up.port, "copy", extra=WORKERS)
    for _ in range(11):
        victim = px.pids()[1]
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: victim not in px.pids(), timeout=5)
        assert wait_for(lambda: "not starting it again" in px.read_log() or len(px.pids()) == 3, timeout=5)
    assert "not starting it again" in px.read_log(), px.read_log()
    assert len(px.pids()) == 2
    for _ in range(30):  # thirty source ports: none lands on a socket nobody accepts
        s, _ = open_tunnel(px.port, timeout=2)
        s.sendall(b"on")
        assert recv_exact(s, 2, timeout=2) == b"on"
        s.close()


def test_a_master_that_is_pid_1_starts_its_workers(upstream):
    """In a container the daemon is PID 1: its workers' parent is still it."""
    up = upstream(echo_after_101)
    port = free_port()
    p = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", WSPLICE, "--listen", "127.0.0.1:%d" % port,
                          "--upstream", "127.0.0.1:%d" % up.port, "--mode", "copy", "--workers", "2",
                          "--control", "/run/wsplice/pid1-%d.sock" % os.getpid()],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: connects(port), timeout=10), p.stderr.read() if p.poll() is not None else ""
        s, _ = open_tunnel(port)
        s.sendall(b"pid1")
        assert recv_exact(s, 4) == b"pid1"
        s.close()
    finally:
        # unshare waits on, ignoring SIGTERM: the master (its child) gets it.
        subprocess.run(["pkill", "-TERM", "-P", str(p.pid)])
        _, err = p.communicate(timeout=10)
    assert "did not start" not in err and "stopping 2 workers" in err, err
