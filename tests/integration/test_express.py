"""The express lane (--mode tcsplice): a tunnel starts on the copy relay,
and once both directions are quiet the tc program carries it; the proxy's
sockets are frozen and see no byte. Each test waits until its tunnel really
went express (wsplice conns says so, and the bytes are the tc program's
count) before the step it is about."""
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

import urllib.request

from conftest import NO_BPF, Proxy, free_port, report
from wsutil import (echo_until_reset, one_route_config, open_tunnel, reading_echo, recv_exact, recv_head, status_of,
                    switching_protocols, key_of, upgrade_request, wait_for, TIME_SCALE)

pytestmark = pytest.mark.skipif(NO_BPF, reason="WSPLICE_TEST_NO_BPF=1")


def conns(px):
    return px.ask("conns")["tunnels"]


def status(px):
    return px.ask("status")


def bpf_handovers(px):
    """The hand-over counters as bpftool shows them: the program's .bss,
    whose map id the daemon logs at start."""
    m = re.search(r"id (\d+) \(hand-overs", px.read_log())
    assert m, px.read_log()
    out = subprocess.run(["bpftool", "-j", "map", "dump", "id", m.group(1)], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    return json.loads(out)[0]["formatted"]["value"][".bss"][0]["tc_handovers"]


def wait_express(px, n=1, timeout=5):
    """Until n tunnels are carried by the tc program."""
    ok = wait_for(lambda: sum(t["detail"].startswith("express") for t in conns(px)) >= n, timeout=timeout)
    assert ok, "%s\n%s" % (conns(px), px.read_log())


def proxy_queues(px):
    """Bytes queued on the proxy's sockets, from ss (Recv-Q + Send-Q of every
    socket of the proxy's port and of its upstream connections)."""
    out = subprocess.run(["ss", "-tnH", "-p"], capture_output=True, text=True).stdout
    pids = set(str(p) for p in px.pids())
    total = 0
    for line in out.splitlines():
        if any("pid=%s," % p in line for p in pids):
            f = line.split()
            total += int(f[1]) + int(f[2])
    return total


def pump(s, total, seed):
    """Sends total bytes of a pattern on s and reads as many back, at once;
    returns the sha256 of what was sent and of what came back."""
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    sent, back = hashlib.sha256(), hashlib.sha256()
    got = [0]

    def reader():
        s.settimeout(30)
        while got[0] < total:
            data = s.recv(1 << 20)
            if not data:
                break
            back.update(data)
            got[0] += len(data)

    th = threading.Thread(target=reader)
    th.start()
    left = total
    while left:
        chunk = block[:min(left, len(block))]
        s.sendall(chunk)
        sent.update(chunk)
        left -= len(chunk)
    th.join(60)
    assert got[0] == total, "%d of %d bytes came back" % (got[0], total)
    return sent.hexdigest(), back.hexdigest()


def stream_until(s, done, seed, then=0, timeout=30):
    """Sends a pattern on s without a pause, and reads it back at once,
    until done() (asked from a third thread every 20 ms, so that asking
    never pauses the stream) or the timeout; then `then` bytes more.
    Returns the sha256 of what was sent and of what came back, how many
    bytes went each way, and the longest wait between two reads (s)."""
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    sent, back = hashlib.sha256(), hashlib.sha256()
    n = {"sent": 0, "got": 0, "final": None, "gap": 0.0}
    stop = threading.Event()

    def reader():
        s.settimeout(30)
        last = time.monotonic()
        while n["final"] is None or n["got"] < n["final"]:
            # Not blocked in recv when the total becomes known: all may be back already.
            if not select.select([s], [], [], 0.05)[0]:
                assert time.monotonic() - last < 30, "nothing came back for 30 s"
                continue
            data = s.recv(1 << 20)
            if not data:
                break
            now = time.monotonic()
            n["gap"] = max(n["gap"], now - last)
            last = now
            back.update(data)
            n["got"] += len(data)

    def watcher():
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()

    threads = [threading.Thread(target=reader), threading.Thread(target=watcher)]
    for th in threads:
        th.start()
    left = None
    while left is None or left > 0:
        s.sendall(block)
        sent.update(block)
        n["sent"] += len(block)
        if left is not None:
            left -= len(block)
        elif stop.is_set():
            left = then
    n["final"] = n["sent"]
    for th in threads:
        th.join(60)
    assert n["got"] == n["final"], "%d of %d bytes came back" % (n["got"], n["final"])
    return sent.hexdigest(), back.hexdigest(), n["sent"], n["gap"]


def test_a_busy_tunnel_drains_into_the_express_lane(upstream, start_proxy):
    """Strip-freeze: peers that never pause leave no quiet moment. After a
    while busy, the tunnel's entries go in as DRAIN: the program cuts the
    peers' payload off their ACKs while the relay empties the proxy's
    queues, the tunnel freezes, and the peers send the cut-off bytes again,
    through the program. Every byte comes back, in order."""
    mport = free_port()
    up = upstream(reading_echo)
    px = start_proxy(up.port, "tcsplice", extra=("--workers", "1", "--metrics", "127.0.0.1:%d" % mport))
    s, _ = open_tunnel(px.port)
    went = []

    def express():
        if any(t["detail"].startswith("express") for t in conns(px)):
            went.append(time.monotonic())
        return bool(went)
    t0 = time.monotonic()
    sent, back, total, gap = stream_until(s, express, b"busy", then=64 << 20)
    assert sent == back
    assert express(), (conns(px), px.read_log())
    h = bpf_handovers(px)
    # Under qemu's emulation (TIME_SCALE > 1) the Python sender may pause
    # for the 20 ms of a quiet moment, and the tunnel then goes without a
    # drain (seen once in `make vmtest` on 6.12): only reported there.
    assert h["done"] == 1 and (h["drains"] >= 1 or TIME_SCALE > 1), h
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
    # What the drain cut off: none when the queues happened to be empty as
    # it began (a slow machine's sender), so only reported.
    stripped = re.search(r'wsplice_express_events_total\{event="stripped"\} (\d+)', text)
    assert stripped, text
    # The 64 MiB after the hand-over crossed the program, each way.
    kernel = [int(v) for v in re.findall(r'wsplice_tunnel_kernel_bytes_total\{direction="[^"]+"\} (\d+)', text)]
    report("busy tunnel [tcsplice]: express after %.0f ms and %d MiB each way; %d drains (%d timed out), %s "
           "segments stripped; the stream's longest pause %.0f ms"
           % ((went[0] - t0) * 1000, (total - (64 << 20)) >> 20, h["drains"], h["drains_timed_out"],
              stripped.group(1), gap * 1000))
    assert len(kernel) == 2 and min(kernel) >= 64 << 20, text
    s.shutdown(socket.SHUT_WR)
    s.settimeout(5)
    assert s.recv(1) == b""
    s.close()


def test_a_worker_that_cannot_freeze_drains_no_busy_tunnel(upstream, start_proxy):
    """With user = the workers lack CAP_NET_ADMIN, which TCP_REPAIR needs: a
    busy tunnel is refused (no_repair) without a drain first, which would
    cost its peers a retransmission timeout for nothing."""
    mport = free_port()
    px = start_proxy(upstream(reading_echo).port, "tcsplice",
                     extra=("--workers", "1", "--user", "nobody", "--metrics", "127.0.0.1:%d" % mport))
    s, _ = open_tunnel(px.port)

    def refused():
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
        return 'wsplice_express_refused_total{reason="no_repair"} 1' in text
    sent, back, _, _ = stream_until(s, refused, b"nobody", timeout=10)
    assert sent == back and refused(), px.read_log()
    h = bpf_handovers(px)
    assert h["drains"] == 0 and h["refused_no_repair"] == 1 and h["tried"] == 0, h
    assert px.read_log().count("may not freeze sockets") == 1, px.read_log()
    assert conns(px)[0]["detail"].startswith("relay"), conns(px)
    s.close()


def test_express_on_in_the_file_and_a_route_with_express_off(upstream, start_proxy):
    """express = on in [global], with no --mode, is the express lane; a
    route with express = off keeps its tunnels on the copy relay however
    quiet they are."""
    up = upstream(reading_echo)
    config = one_route_config(up.port, global_="express = on\nworkers = 1",
                              extra="[route plain]\npool = p\npath = /plain\nexpress = off\n")
    px = start_proxy(0, None, config=config)
    assert re.search(r", mode tcsplice, 1 worker", px.read_log()), px.read_log()
    tunnels = [open_tunnel(px.port, path)[0] for path in ("/", "/plain/x")]
    for s in tunnels:
        s.sendall(b"hello")
        assert recv_exact(s, 5) == b"hello"
    wait_express(px)
    # Ten times the quiet moment the express one needed.
    time.sleep(0.3)
    by_engine = sorted((t["engine"], t["detail"].startswith("express")) for t in conns(px))
    assert by_engine == [("copy", False), ("tcsplice", True)], conns(px)
    for s in tunnels:
        s.sendall(b"again")
        assert recv_exact(s, 5) == b"again"
        s.close()


def test_a_quiet_tunnel_goes_express_and_every_byte_passes_the_proxy_by(upstream, start_proxy):
    up = upstream(reading_echo)
    px = start_proxy(up.port, "tcsplice", extra=("--workers", "1"))
    s, _ = open_tunnel(px.port)
    s.sendall(b"hello")
    assert recv_exact(s, 5) == b"hello"
    wait_express(px)
    h = bpf_handovers(px)
    assert h["done"] == 1 and h["tried"] >= 1 and not any(v for k, v in h.items() if k.startswith("refused")), h
    before = conns(px)[0]
    total = 64 << 20
    sent, back = pump(s, total, b"express")
    assert sent == back
    t = conns(px)[0]
    assert t["engine"] == "tcsplice" and t["detail"].startswith("express"), t
    # Counted by the tc program, after what the relay moved, as the
    # receiver acknowledges them (its last ACK may be a delayed one).
    want = (before["bytes_client_to_upstream"] + total, before["bytes_upstream_to_client"] + total)

    def counted():
        t = conns(px)[0]
        return (t["bytes_client_to_upstream"], t["bytes_upstream_to_client"]) == want
    assert wait_for(counted, timeout=2), (want, conns(px))
    assert status(px)["tunnels_by_engine"]["tcsplice"] == 1
    # Half-close end to end: the upstream answers with its own FIN, and
    # the daemon closes the tunnel once the program saw both acknowledged.
    s.shutdown(socket.SHUT_WR)
    s.settimeout(5)
    assert s.recv(1) == b""
    assert wait_for(lambda: status(px)["tunnels_open"] == 0, timeout=5), (conns(px), px.read_log())
    s.close()


def test_a_reset_goes_end_to_end(upstream, start_proxy):
    seen = []
    up = upstream(lambda conn, head, rest: echo_until_reset(conn, head, seen))
    px = start_proxy(up.port, "tcsplice", extra=("--workers", "1"))
    s, _ = open_tunnel(px.port)
    s.sendall(b"x")
    assert recv_exact(s, 1) == b"x"
    wait_express(px)
    assert status(px)["tunnels_open"] == 1
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    assert wait_for(lambda: seen, timeout=5) and seen == ["reset"], seen
    assert wait_for(lambda: status(px)["tunnels_open"] == 0, timeout=5), (conns(px), px.read_log())


def test_an_idle_express_tunnel_times_out_and_both_peers_are_reset(upstream, start_proxy):
    seen = []
    up = upstream(lambda conn, head, rest: echo_until_reset(conn, head, seen))
    px = start_proxy(0, "tcsplice", config=one_route_config(up.port, global_="tunnel_idle_timeout = 1s\nworkers = 1"))
    s, _ = open_tunnel(px.port)
    s.sendall(b"x")
    assert recv_exact(s, 1) == b"x"
    wait_express(px)
    s.settimeout(5)
    with pytest.raises(ConnectionResetError):
        s.recv(1)
    assert wait_for(lambda: seen, timeout=5) and seen == ["reset"], seen
    assert "idle" in px.read_log()
    s.close()


def test_a_stalled_reader_blocks_its_sender_with_nothing_held_in_the_proxy(upstream, start_proxy):
    release = threading.Event()
    got = [0]

    def handler(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)))
        conn.settimeout(30)
        data = conn.recv(16)  # the first message, then a stall
        got[0] += len(data)
        release.wait(30)
        while True:
            data = conn.recv(1 << 20)
            if not data:
                break
            got[0] += len(data)

    up = upstream(handler)
    px = start_proxy(up.port, "tcsplice", extra=("--workers", "1"))
    s, _ = open_tunnel(px.port)
    s.sendall(b"first")
    assert wait_for(lambda: got[0] == 5, timeout=5)
    wait_express(px)
    s.setblocking(False)
    sent = 5
    block = b"z" * 65536
    stalled_for = 0.0
    while stalled_for < 1.0:
        try:
            sent += s.send(block)
            stalled_for = 0.0
        except BlockingIOError:
            time.sleep(0.05)
            stalled_for += 0.05
        assert sent < (256 << 20), "the sender never blocked"
    # The window closed end to end: what is in flight sits in the client's
    # send queue and the upstream's receive queue, not in the proxy.
    assert proxy_queues(px) == 0
    held = sent - got[0]
    release.set()
    s.setblocking(True)
    s.shutdown(socket.SHUT_WR)
    assert wait_for(lambda: got[0] == sent, timeout=10), (got[0], sent)
    print("stalled reader: the sender blocked after %d KiB, none of it in the proxy" % (held // 1024))
    s.close()


def test_a_stop_resets_the_peers_of_express_tunnels(upstream, start_proxy):
    """An express tunnel's frozen sockets cannot send a FIN: at the end of
    shutdown_timeout both peers get a reset, and the daemon exits 0."""
    seen = []
    up = upstream(lambda conn, head, rest: echo_until_reset(conn, head, seen))
    px = start_proxy(up.port, "tcsplice", extra=("--workers", "1", "--shutdown-timeout", "1s"))
    s, _ = open_tunnel(px.port)
    s.sendall(b"x")
    assert recv_exact(s, 1) == b"x"
    wait_express(px)
    px.proc.send_signal(signal.SIGTERM)
    s.settimeout(10)
    with pytest.raises(ConnectionResetError):
        while s.recv(1):
            pass
    assert wait_for(lambda: seen, timeout=5) and seen == ["reset"], seen
    assert px.proc.wait(10) == 0, px.read_log()
    s.close()


def test_a_worker_that_dies_leaves_no_express_flow_behind(upstream, start_proxy):
    """Its frozen sockets close without a word; the master removes its
    entries, so the client's next segment meets a closed socket and a reset
    instead of being carried on for nobody."""
    seen = []
    up = upstream(lambda conn, head, rest: echo_until_reset(conn, head, seen))
    px = start_proxy(up.port, "tcsplice", extra=("--workers", "2"))
    s, _ = open_tunnel(px.port)
    s.sendall(b"x")
    assert recv_exact(s, 1) == b"x"
    wait_express(px)
    for victim in px.pids()[1:]:
        os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: "express tunnels are gone with it" in px.read_log(), timeout=10), px.read_log()
    s.settimeout(5)
    with pytest.raises(ConnectionResetError):
        s.sendall(b"y")
        s.recv(1)
    s.close()


def test_two_instances_on_lo_each_carry_their_own(upstream, start_proxy):
    """Each daemon's program lets the other's segments through (tcx runs
    them in turn): the one attached last still carries its tunnels."""
    first = start_proxy(upstream(reading_echo).port, "tcsplice", extra=("--workers", "1"))
    second = start_proxy(upstream(reading_echo).port, "tcsplice", extra=("--workers", "1"))
    socks = []
    for px in (first, second):
        s, _ = open_tunnel(px.port)
        s.sendall(b"x")
        assert recv_exact(s, 1) == b"x"
        wait_express(px)
        socks.append(s)
    for s in reversed(socks):
        sent, back = pump(s, 4 << 20, b"two")
        assert sent == back
    for px, s in zip((first, second), socks):
        t = conns(px)[0]
        assert t["detail"].startswith("express"), t
        s.close()


def test_a_peer_whose_window_cannot_take_the_other_peers_segments_stays_on_the_relay(upstream, start_proxy):
    """A client with an 8 KiB receive buffer: the upstream's segments (up to
    half the proxy's window, 32 KiB and more) would not fit its window, and
    after a hand-over only window probes would carry them. The largest
    window it ever advertised says so (a stale last one would not): the
    tunnel is refused, counted once, and still carries every byte."""
    mport = free_port()
    px = start_proxy(upstream(reading_echo).port, "tcsplice",
                     extra=("--workers", "1", "--metrics", "127.0.0.1:%d" % mport))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    s.settimeout(5)
    s.connect(("127.0.0.1", px.port))
    req, _ = upgrade_request("/")
    s.sendall(req)
    head, rest = recv_head(s, 5)
    assert status_of(head) == 101 and rest == b"", head

    def refused():
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
        return 'wsplice_express_refused_total{reason="window"} 1' in text
    s.sendall(b"x")
    assert recv_exact(s, 1) == b"x"
    assert wait_for(refused, timeout=5), px.read_log()
    assert status(px)["express_handovers"] == 0
    h = bpf_handovers(px)
    assert h["refused_window"] == 1 and h["tried"] == 0 and h["done"] == 0, h
    sent, back = pump(s, 4 << 20, b"small window")
    assert sent == back
    assert conns(px)[0]["detail"].startswith("relay"), conns(px)
    s.close()


def test_an_ipv6_tunnel_goes_express(upstream, start_proxy):
    """Both legs on ::1: the program's IPv6 path, 16 MiB each way, then a
    half-close. Where bpf_l4_csum_replace lacks BPF_F_IPV6 (before Linux
    6.16) the daemon loads the program without it."""
    up = upstream(reading_echo, host="::1")
    px = start_proxy(up.port, "tcsplice", listen_host="::1", upstream_host="::1", extra=("--workers", "1"))
    s = socket.create_connection(("::1", px.port), timeout=5)
    req, _ = upgrade_request("/")
    s.sendall(req)
    head, rest = recv_head(s, 5)
    assert status_of(head) == 101 and rest == b"", head
    s.sendall(b"six")
    assert recv_exact(s, 3) == b"six"
    wait_express(px)
    sent, back = pump(s, 16 << 20, b"ipv6")
    assert sent == back
    assert conns(px)[0]["detail"].startswith("express"), conns(px)
    s.shutdown(socket.SHUT_WR)
    s.settimeout(5)
    assert s.recv(1) == b""
    assert wait_for(lambda: status(px)["tunnels_open"] == 0, timeout=5), (conns(px), px.read_log())
    s.close()


def lo_filters():
    """The programs of the express lane's netlink filters on lo's ingress, by id."""
    out = subprocess.run(["tc", "filter", "show", "dev", "lo", "ingress"], capture_output=True, text=True).stdout
    return set(re.findall(r" id (\d+) name tcsplice_ingres", out))


def program_id(px):
    return re.search(r"tc program id (\d+)", px.read_log()).group(1)


def test_before_tcx_a_killed_daemons_filter_goes_at_the_next_start(upstream, monkeypatch):
    """Before Linux 6.6 (forced here: WSPLICE_TC_ATTACH=netlink) the program
    hangs on lo as a netlink tc filter, which outlives a SIGKILLed daemon and
    would translate a new connection that reused an old flow's ports. The
    next start removes it; a clean stop removes its own."""
    monkeypatch.setenv("WSPLICE_TC_ATTACH", "netlink")
    up = upstream(reading_echo)
    first = Proxy(up.port, "tcsplice", extra=("--workers", "1"))
    try:
        assert "attached as a netlink tc filter" in first.read_log(), first.read_log()
        stale = program_id(first)
        assert stale in lo_filters()
        for p in first.pids():
            os.kill(p, signal.SIGKILL)
        first.proc.wait(5)
        assert stale in lo_filters(), "the filter went with the process"
    finally:
        shutil.rmtree(first.pin_dir, ignore_errors=True)
        os.unlink(first.log.name)
    second = Proxy(up.port, "tcsplice", extra=("--workers", "1"))
    try:
        assert "removed the tc filter process %d left" % first.proc.pid in second.read_log(), second.read_log()
        mine = program_id(second)
        assert stale not in lo_filters() and mine in lo_filters()
        s, _ = open_tunnel(second.port)
        s.sendall(b"x")
        assert recv_exact(s, 1) == b"x"
        wait_express(second)
        sent, back = pump(s, 4 << 20, b"netlink")
        assert sent == back
        s.close()
    finally:
        second.stop()
    assert mine not in lo_filters()
