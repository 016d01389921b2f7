"""Many tunnels, many close patterns, and a stalled reader: nothing lost,
duplicated or reordered, nothing leaked, and bounded kernel memory."""
import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import ONE_WORKER, WS_CNT_PAUSE_DEFERRED, WS_CNT_PAUSES, WS_CNT_UNFLAGGED, report
from wsutil import (bpf_counter, bpf_tunnels, bpftool_dump, echo_after_101, key_of, mem_available, open_tunnel, recv_exact,
                    recv_until_eof, switching_protocols, wait_for)

PATTERNS = ["client-fin", "upstream-fin", "both-fin", "client-rst", "upstream-rst", "client-close-unread"]


def payload(seed, side):
    rnd = random.Random("%s-%s" % (seed, side))
    return rnd.randbytes(rnd.randint(1, 48 * 1024))


def _rst(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _drain_quietly(sock, timeout=3.0):
    try:
        recv_until_eof(sock, timeout)
    except (ConnectionResetError, socket.timeout, OSError):
        pass


# A warm cycle trades a ping, a pong and the client's ack of the pong before its pattern, so the tunnel
# is in the kernel when the pattern's FINs and RSTs come (a sockmap tunnel enters it with its first
# byte), and the upstream's pattern (an RST, say) cannot overtake the pong. A cold one starts its pattern
# at once: its first byte and its FIN may come together, and the copy relay may finish it.
PING, PONG, ACK = b"ping", b"pong", b"!"


def _take(conn, rest, n):
    """n bytes: first from what came with the head, then from the socket; returns them and the rest."""
    got = rest[:n] + (recv_exact(conn, n - len(rest)) if len(rest) < n else b"")
    return got, rest[n:]


def cycle_upstream(conn, head, rest):
    _, pattern, seed, warmth = head.split(b" ")[1].decode().strip("/").split("/")
    to_client, from_client = payload(seed, "up"), payload(seed, "client")
    conn.sendall(switching_protocols(key_of(head)))
    if warmth == "warm":
        got, rest = _take(conn, rest, len(PING))
        assert got == PING, "warm %s: ping %r" % (seed, got)
        conn.sendall(PONG)
        try:
            got, rest = _take(conn, rest, len(ACK))
        except ConnectionError:
            # The client's reset may overtake its ack (still queued for the redirect worker): an RST
            # discards what is in flight, and that is all these patterns expect of the upstream.
            if pattern in ("client-rst", "client-close-unread"):
                return
            raise
        assert got == ACK, "warm %s: ack %r" % (seed, got)
    if pattern == "client-fin":
        got = rest + recv_until_eof(conn)
        assert got == from_client, "client-fin %s: %d != %d" % (seed, len(got), len(from_client))
        conn.sendall(to_client)
        conn.shutdown(socket.SHUT_WR)
    elif pattern in ("upstream-fin", "both-fin"):
        conn.sendall(to_client)
        conn.shutdown(socket.SHUT_WR)
        got = rest + recv_until_eof(conn)
        assert got == from_client, "%s %s: %d != %d" % (pattern, seed, len(got), len(from_client))
    elif pattern == "upstream-rst":
        conn.sendall(to_client[: len(to_client) // 2])
        _rst(conn)
    else:  # client-rst, client-close-unread
        if pattern == "client-close-unread":
            conn.sendall(to_client)
        _drain_quietly(conn)


def run_cycle(port, pattern, seed, warm, before_ack=None):
    """before_ack: run between the pong and the ack (the upstream waits for
    the ack before its pattern): tcsplice waits there for the hand-over."""
    to_client, from_client = payload(seed, "up"), payload(seed, "client")
    s, rest = open_tunnel(port, "/cycle/%s/%d/%s" % (pattern, seed, "warm" if warm else "cold"))
    if warm:
        assert rest == b"", "warm %d: %d bytes before the ping" % (seed, len(rest))
        s.sendall(PING)
        assert recv_exact(s, len(PONG)) == PONG, "warm %d: no pong" % seed
        if before_ack:
            before_ack()
        s.sendall(ACK)
    if pattern in ("client-fin", "both-fin"):  # the upstream sends FIN first or at the same time
        s.sendall(from_client)
        s.shutdown(socket.SHUT_WR)
        got = rest + recv_until_eof(s)
        assert got == to_client, "%s %d" % (pattern, seed)
        s.close()
    elif pattern == "upstream-fin":
        got = rest + recv_until_eof(s)
        assert got == to_client, "upstream-fin %d" % seed
        s.sendall(from_client)
        s.shutdown(socket.SHUT_WR)
        _drain_quietly(s)
        s.close()
    elif pattern == "client-rst":
        s.sendall(from_client)
        time.sleep(random.random() * 0.002)
        _rst(s)
    elif pattern == "upstream-rst":
        _drain_quietly(s)
        s.close()
    else:  # close with unread data: the kernel answers with an RST
        time.sleep(0.001)
        s.close()


def maps_empty(pin_dir):
    return all(not bpftool_dump(pin_dir, m) for m in ("tunnels", "sock_links", "target_map", "verdict_map"))


def what_the_proxy_saw(px, up, mode):
    """The upstream's errors, the BPF counters, the daemon's open tunnels, state and last log lines."""
    tunnels = px.conns() if px.proc.poll() is None else "-"
    counters = ""
    try:  # no_link, no_peer, redirected, pauses, trimmed skbs, trimmed bytes, failed trims
        if px.kernel:
            counters = " ".join(str(bpf_counter(px.pin_dir, k)) for k in range(7))
    except Exception as e:
        counters = repr(e)
    state = "running" if px.proc.poll() is None else "exited %s" % px.proc.returncode
    log = [ln for ln in px.read_log().splitlines() if "libbpf:" not in ln]
    return "upstream errors: %s\nBPF counters: %s\ntunnels: %s\ndaemon %s, log:\n%s" % (
        up.errors[-3:], counters, tunnels, state, "\n".join(log[-40:]))


def test_1000_cycles_leave_nothing_behind(upstream, start_proxy, mode):
    up = upstream(cycle_upstream)
    # Debug logging: a cycle that fails in CI must say which path it took.
    px = start_proxy(up.port, mode, extra=["-v"])
    base_fds = px.fd_count()
    rnd = random.Random(1)
    warm_ones = [0]

    def express():  # every warm tunnel goes express before its pattern
        warm_ones[0] += 1
        px.wait_express(warm_ones[0])

    for i in range(1000):
        pattern = rnd.choice(PATTERNS)
        started = time.monotonic()
        try:
            run_cycle(px.port, pattern, i, warm=i % 2 == 0, before_ack=express if mode == "tcsplice" else None)
        except (AssertionError, OSError) as e:
            took = time.monotonic() - started
            # Not chained, and the cause cut short: a bytes diff would push the rest out of CI's excerpt.
            raise AssertionError("cycle %d (%s, %s) failed after %.3f s: %s\n%s"
                                 % (i, pattern, "warm" if i % 2 == 0 else "cold", took, repr(e)[:300],
                                    what_the_proxy_saw(px, up, mode))) from None
    if not wait_for(lambda: px.fd_count() == base_fds, timeout=10):
        raise AssertionError("fds: %d, baseline %d\n%s" % (px.fd_count(), base_fds, what_the_proxy_saw(px, up, mode)))
    if px.kernel:
        assert wait_for(lambda: maps_empty(px.pin_dir), timeout=5), "map entries leaked"
        log = px.read_log()
        spliced = log.count(" spliced in the kernel")
        report("1000 cycles [%s]: %d kernel redirects, %d tunnels spliced, %d finished by the copy relay after a "
               "FIN before the first byte, %d insertions fell back to it"
               % (mode, px.redirected(), spliced, log.count("FIN before any payload"),
                  log.count("falls back to the copy relay")))
        # Every warm cycle's tunnel is spliced: its ping comes alone, long before any FIN.
        assert spliced >= 500, "only %d of 1000 tunnels were spliced" % spliced
    if mode == "tcsplice":
        express = px.express_handovers()
        report("1000 cycles [tcsplice]: %d tunnels went express" % express)
        assert express >= 500, "only %d of 1000 tunnels went express" % express
    px.assert_kernel_path(at_least=1000)


def stuck_sockets(*ports):
    """ss's view of every socket on these ports that still holds bytes: where a stalled tunnel's bytes sit."""
    flt = " or ".join("sport = :%d or dport = :%d" % (p, p) for p in ports)
    out = subprocess.run(["ss", "-tnieOH", "state", "all", "( %s )" % flt], capture_output=True, text=True).stdout
    keep = ("timer:", "bytes_sent:", "bytes_acked:", "bytes_received:", "notsent:", "snd_wnd:", "rcv_space:",
            "lastsnd:", "lastrcv:")
    rows = [" ".join(f for i, f in enumerate(ln.split()) if i < 5 or f.startswith(keep))
            for ln in out.splitlines() if ln.split()[1:3] != ["0", "0"]]
    return "%d sockets hold bytes:\n%s" % (len(rows), "\n".join(rows[:40]))


def test_200_tunnels_with_random_stalls(upstream, start_proxy, mode):
    size = 256 * 1024
    n = 200
    # What a stuck tunnel looked like when its first reader gave up; taken
    # then, because closing the reader's socket resets the tunnel.
    first_stall = {}
    snapshot_lock = threading.Lock()

    def stream(seed, side):
        return random.Random("%s/%s" % (seed, side)).randbytes(size)

    def snapshot(who, got, expected):
        with snapshot_lock:
            if first_stall:
                return
            first_stall["who"] = "%s read %d of %d bytes, then nothing for 30 s" % (who, got, expected)
            first_stall["sockets"] = stuck_sockets(px.port, up.port)
            first_stall["daemon"] = what_the_proxy_saw(px, up, mode)

    def stalled_reader(sock, expected, rnd, out, key, who):
        got = bytearray()
        sock.settimeout(30)
        try:
            while len(got) < len(expected):
                if rnd.random() < 0.05:
                    time.sleep(rnd.random() * 0.05)
                chunk = sock.recv(rnd.choice([1, 100, 4096, 65536]))
                if not chunk:
                    break
                got += chunk
        except socket.timeout:
            snapshot("%s %s" % (who, key), len(got), len(expected))
            raise
        out[key] = bytes(got) == expected

    up_ok = {}
    up_eof = {}

    def handler(conn, head, rest):
        seed = head.split(b" ")[1].decode().strip("/").split("/")[1]
        handler_at[seed] = time.monotonic()
        conn.sendall(switching_protocols(key_of(head)))
        w = threading.Thread(target=conn.sendall, args=(stream(seed, "down"),))
        w.start()
        expected = stream(seed, "up")
        assert expected.startswith(rest)
        stalled_reader(conn, expected[len(rest):], random.Random(seed + "u"), up_ok, seed, "upstream")
        w.join()
        recv_until_eof(conn, 60)  # tcsplice: the client waits for all 200 hand-overs first
        up_eof[seed] = time.monotonic()

    up = upstream(handler)
    px = start_proxy(up.port, mode)
    client_ok = {}

    client_errors = {}
    handshake_s = {}
    # tcsplice: each client, its streams done, waits here until every
    # tunnel went express, so the 200 FINs go through the tc program.
    streamed = threading.Semaphore(0)
    all_express = threading.Event()
    connect_at, handler_at = {}, {}

    def client(i):
        s = None
        released = False
        try:
            # 200 handshakes at once: under qemu some took over 5 s (the
            # Python upstream starts a thread per connection), which is
            # not what this test is about (KERNEL-LOG.md, "200 stalled tunnels under qemu").
            t0 = connect_at[str(i)] = time.monotonic()
            s, rest = open_tunnel(px.port, "/stall/%d" % i, timeout=30)
            handshake_s[i] = time.monotonic() - t0
            expected = stream(str(i), "down")
            w = threading.Thread(target=s.sendall, args=(stream(str(i), "up"),))
            w.start()
            assert expected.startswith(rest)
            stalled_reader(s, expected[len(rest):], random.Random(i), client_ok, str(i), "client")
            w.join()
            streamed.release()
            released = True
            all_express.wait(60)
            s.shutdown(socket.SHUT_WR)
        except Exception as e:
            # Said in the failure, not left to a thread warning that holds the socket open.
            client_errors[str(i)] = "%s at %.1f s" % (repr(e)[:200], time.monotonic() - started)
            if not released:
                streamed.release()
        finally:
            if s:
                s.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    if mode != "tcsplice":
        all_express.set()
    for t in threads:
        t.start()
    express = express_wait = 0
    if mode == "tcsplice":
        for _ in range(n):
            streamed.acquire(timeout=120)
        # A quiet tunnel goes express at once; all of these are quiet now.
        express_wait = time.monotonic()
        wait_for(lambda: px.express_handovers() >= n, timeout=30)
        express_wait = time.monotonic() - express_wait
        express = px.express_handovers()
        all_express.set()
    for t in threads:
        t.join(120)
    done = wait_for(lambda: len(up_ok) == n, timeout=30)
    bad = sorted(set(str(i) for i in range(n)) - set(k for k, v in client_ok.items() if v))
    bad_up = sorted(set(str(i) for i in range(n)) - set(k for k, v in up_ok.items() if v))
    if not done or bad or bad_up:
        raise AssertionError("clients short or wrong: %s; upstream readers short or wrong: %s\nclient errors: %s\n"
                             "first stall: %s\n%s\n%s"
                             % (bad[:20], bad_up[:20], sorted(client_errors.items())[:10], first_stall.get("who"),
                                first_stall.get("sockets", ""), first_stall.get("daemon", "")))
    # Every client's FIN reaches its upstream, whatever engine carried the
    # tunnel when it came: a FIN that met the express lane's hand-over once
    # stuck in the proxy's frozen socket.
    if not wait_for(lambda: len(up_eof) == n, timeout=10):
        missing = sorted(set(str(i) for i in range(n)) - set(up_eof))
        raise AssertionError("the client's FIN never reached the upstream for %s\n%s"
                             % (missing[:20], what_the_proxy_saw(px, up, mode)))
    px.assert_kernel_path(at_least=n)
    # tcsplice: each tunnel went express, mid-stream (a stall is a quiet
    # moment; 200 ms busy, a drain) or once its streams were done, and its
    # FIN went through the tc program.
    if mode == "tcsplice":
        assert express == n, "%d of %d went express in %.1f s:\n%s" % (express, n, express_wait,
                                                                    what_the_proxy_saw(px, up, mode))
    express = ", all went express (the last %.2f s after the streams)" % express_wait if mode == "tcsplice" else ""
    # How much of the slowest handshake passed before the upstream's handler
    # had the request: the proxy's part and the Python server's accept.
    report("200 tunnels with stalls [%s]: slowest handshake %.2f s (request at the upstream's handler after "
           "%.2f s at most), test %.1f s%s" % (mode, max(handshake_s.values()),
                                                 max(handler_at[k] - connect_at[k] for k in connect_at),
                                                 time.monotonic() - started, express))


def test_1gib_to_a_stalled_reader_is_bounded(upstream, start_proxy, mode):
    chunk = 1 << 20
    total = 1024
    block = os.urandom(chunk - 8)
    stall = 5.0
    state = {"sent": 0, "ok": None, "stall_start": None, "stall_end": None}

    def handler(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)))
        buf = bytearray(rest)
        conn.settimeout(60)
        received, ok = 0, True
        stalled = False
        while received < total:
            while len(buf) < chunk:
                data = conn.recv(chunk)
                if not data:
                    state["ok"] = False
                    return
                buf += data
            got = bytes(buf[:chunk])
            del buf[:chunk]
            ok &= got[:8] == struct.pack("!Q", received) and got[8:] == block
            received += 1
            if received == 16 and not stalled:
                stalled = True
                state["stall_start"] = time.monotonic()
                time.sleep(stall)
                state["stall_end"] = time.monotonic()
        state["ok"] = ok and not buf

    up = upstream(handler)
    px = start_proxy(up.port, mode)
    s, _ = open_tunnel(px.port)
    px.wait_express()  # tcsplice: the tc program carries the stream, and the stall
    # sendall's timeout covers the whole call, and one call spans the 5 s
    # stall: the connect timeout (5 s) would abort it on a slow machine.
    s.settimeout(120)
    mem_before = mem_available()
    samples = []

    def sender():
        try:
            for i in range(total):
                s.sendall(struct.pack("!Q", i) + block)
                state["sent"] += 1
        except OSError as e:
            state["sender_error"] = repr(e)

    w = threading.Thread(target=sender)
    w.start()
    peak_inflight = 0
    while w.is_alive():
        samples.append((time.monotonic(), state["sent"], mem_available()))
        if px.kernel:
            for t in bpf_tunnels(px.pin_dir):
                peak_inflight = max(peak_inflight, t["dir"][0]["peak_inflight"])
        time.sleep(0.1)
    w.join()
    assert "sender_error" not in state, "the sender failed after %d MiB: %s" % (state["sent"], state["sender_error"])
    if not wait_for(lambda: state["ok"] is not None, timeout=30):
        raise AssertionError("the reader did not finish; received state %s\ntunnels: %s\n%s" % (
            state, px.conns(), "\n".join(px.read_log().splitlines()[-6:])))
    assert state["ok"], "payload corrupted"
    # The sender must have been blocked during the stall: flat for its whole
    # second half. The buffers take a while to fill first: about a second on
    # the host, 2-3 s under qemu (6.12 CI: 25, 25, then 30 MiB to the end).
    t0, t1 = (state["stall_start"] + state["stall_end"]) / 2, state["stall_end"]
    during = [sent for t, sent, _ in samples if t0 <= t <= t1]
    assert during and during[-1] - during[0] <= 1, "sender kept sending during the stall: %s" % [
        sent for t, sent, _ in samples if state["stall_start"] <= t <= t1]
    held_mib = during[-1] - 16
    mem_drop = (mem_before - min(m for _, _, m in samples)) / (1 << 20)
    report("1 GiB, reader stalled %.0f s [%s]: sender blocked after %d MiB; peak BPF in-flight %.1f MiB; "
           "MemAvailable drop %.1f MiB" % (stall, mode, held_mib, peak_inflight / (1 << 20), mem_drop))
    if px.kernel:
        # The hard bound of the kernel's pause (docs/KERNEL.md, "the pause"):
        # the default 4 MiB budget plus the spliced sockets' receive buffer,
        # which a resume releases at once: SO_RCVBUF 2 MiB, which the kernel
        # doubles to 4 MiB (test_sockmap_sockets_get_their_buffers_...).
        pauses = bpf_counter(px.pin_dir, WS_CNT_PAUSES)
        unflagged = bpf_counter(px.pin_dir, WS_CNT_UNFLAGGED)
        report("1 GiB, reader stalled [sockmap]: %d pauses carried out by sock_ops, %d header callbacks "
               "deferred inside a verdict loop" % (pauses, bpf_counter(px.pin_dir, WS_CNT_PAUSE_DEFERRED)))
        assert pauses > 0 and unflagged == 0, "pauses %d, requests on unflagged sockets %d" % (pauses, unflagged)
        assert peak_inflight <= (4 << 20) + (4 << 20), "in-flight grew to %d" % peak_inflight
    assert held_mib < 200, "%d MiB accepted from the sender during the stall" % held_mib
    assert mem_drop < 256, "MemAvailable fell by %.0f MiB" % mem_drop
    s.close()
    px.assert_kernel_path(at_least=100)


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_file_descriptors_pauses_accepting(upstream, start_proxy):
    """With its file descriptors used up, the daemon stops accepting for a
    moment instead of spinning on a listener it cannot drain (a log line and a
    wake-up per try, at full CPU), and it serves again once descriptors are
    free. The connections waiting meanwhile stay queued, not refused."""
    up = upstream(echo_after_101)
    px = start_proxy(up.port, "copy", extra=ONE_WORKER)
    limit = px.fd_count() + 20
    subprocess.run(["prlimit", "--pid", str(px.proc.pid), "--nofile=%d:%d" % (limit, limit)], check=True)
    held = [socket.create_connection(("127.0.0.1", px.port), timeout=5) for _ in range(40)]
    assert wait_for(lambda: px.fd_count() >= limit - 1, timeout=5), "the daemon did not use up its descriptors"
    cpu0 = _cpu_seconds(px.proc.pid)
    time.sleep(1.5)
    burnt = _cpu_seconds(px.proc.pid) - cpu0
    pauses = px.read_log().count("Too many open files")
    assert burnt < 0.5, "the daemon spun on accept: %.2f s of CPU in 1.5 s" % burnt
    assert 1 <= pauses <= 5, "%d lines about the exhausted descriptors in 1.5 s" % pauses
    for s in held:
        s.close()
    s, rest = open_tunnel(px.port)  # accepted once descriptors are free again
    s.sendall(b"again")
    assert rest + recv_exact(s, 5 - len(rest)) == b"again"
    s.close()
