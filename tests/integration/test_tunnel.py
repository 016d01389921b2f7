"""The tunnel after a 101, in every mode: bytes exactly once and in order,
half-close, reset, and the handshake edge cases of the drain (docs/KERNEL.md, invariant 1)."""
import hashlib
import os
import re
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import ONE_WORKER, WS_CNT_BROKEN_DROPS
from wsutil import (bpf_counter, bpf_tunnels, bpftool_dump, echo_after_101, key_of, one_route_config, open_tunnel, recv_exact, recv_until_eof,
                    switching_protocols,
                    upgrade_request, recv_head, status_of, HttpReader, wait_for)


def roundtrip_upstream(conn, rest):
    """Upstream half of a ping/pong that makes sure the tunnel is
    established (spliced, in sockmap mode) before a test goes on."""
    assert rest + recv_exact(conn, 4 - len(rest)) == b"ping"
    conn.sendall(b"pong")


def roundtrip_client(sock, rest):
    assert not rest
    sock.sendall(b"ping")
    assert recv_exact(sock, 4) == b"pong"


def test_random_4mib_both_ways(upstream, start_proxy, mode):
    size = 4 << 20
    up_payload = os.urandom(size)
    got = {}

    def handler(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)))
        roundtrip_upstream(conn, rest)
        first = recv_exact(conn, 1)  # both ways at once, from the client's first byte on
        t = threading.Thread(target=conn.sendall, args=(up_payload,))
        t.start()
        got["up"] = hashlib.sha256(first + recv_exact(conn, size - 1)).hexdigest()
        t.join()

    up = upstream(handler)
    px = start_proxy(up.port, mode)
    s, rest = open_tunnel(px.port)
    roundtrip_client(s, rest)
    rest = b""
    px.wait_express()
    payload = os.urandom(size)
    t = threading.Thread(target=s.sendall, args=(payload,))
    t.start()
    received = rest + recv_exact(s, size - len(rest), timeout=20)
    t.join()
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(up_payload).hexdigest()
    assert wait_for(lambda: "up" in got, timeout=20), "upstream did not receive 4 MiB"
    assert got["up"] == hashlib.sha256(payload).hexdigest()
    s.close()
    px.assert_kernel_path(at_least=2)


def test_sockmap_splices_peers_streaming_from_the_101_on(upstream, start_proxy, kmode):
    """The upstream writes the 101 and 4 MiB in one call and the client
    streams 4 MiB as soon as it has the 101: the handshake must still hand the
    sockets to the kernel, not relay the transfer while it waits for the
    queues to go quiet (KERNEL-LOG.md, "the drain reads nothing"). Userspace may move at most its
    64 KiB buffers' worth each way."""
    size = 4 << 20
    up_payload, payload = os.urandom(size), os.urandom(size)
    got = {}

    def handler(conn, head, rest):
        t = threading.Thread(target=conn.sendall, args=(switching_protocols(key_of(head)) + up_payload,))
        t.start()
        got["up"] = rest + recv_exact(conn, size - len(rest), timeout=20)
        t.join()
        recv_until_eof(conn)

    up = upstream(handler)
    px = start_proxy(up.port, kmode)
    s, rest = open_tunnel(px.port)
    t = threading.Thread(target=s.sendall, args=(payload,))
    t.start()
    received = rest + recv_exact(s, size - len(rest), timeout=20)
    t.join()
    assert wait_for(lambda: "up" in got, timeout=20), "upstream did not receive 4 MiB"
    (tunnel,) = bpf_tunnels(px.pin_dir)
    s.close()
    assert received == up_payload and got["up"] == payload
    c2u, u2c = (d["bytes"] for d in tunnel["dir"])
    assert c2u >= size - (64 << 10) and u2c >= size - (64 << 10), \
        "the kernel moved only %d bytes client->upstream and %d upstream->client of %d" % (c2u, u2c, size)


@pytest.mark.parametrize("speaker", ["client", "upstream"])
def test_a_tunnel_enters_the_kernel_with_its_first_byte(upstream, start_proxy, kmode, speaker):
    """After the 101 a sockmap tunnel waits outside the kernel (no map entry)
    until either end sends a byte; that byte inserts it, and the kernel moves
    it and every later one (docs/KERNEL.md, "Insertion on the first byte")."""
    go, done = threading.Event(), threading.Event()
    to_client, to_upstream = os.urandom(3000), os.urandom(2000)
    got = {}

    def handler(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)))
        assert go.wait(10)
        if speaker == "upstream":
            conn.sendall(to_client)
        got["up"] = rest + recv_exact(conn, len(to_upstream) - len(rest))
        if speaker == "client":
            conn.sendall(to_client)
        recv_until_eof(conn)
        done.set()

    up = upstream(handler)
    px = start_proxy(up.port, kmode, extra=("-v",))
    s, rest = open_tunnel(px.port)
    assert rest == b""
    time.sleep(0.2)
    assert bpf_tunnels(px.pin_dir) == [], "an idle tunnel entered the kernel before its first byte"
    assert px.redirected() == 0
    go.set()
    if speaker == "client":
        s.sendall(to_upstream)
    assert recv_exact(s, len(to_client)) == to_client
    if speaker == "upstream":
        s.sendall(to_upstream)
    assert wait_for(lambda: "up" in got, timeout=10) and got["up"] == to_upstream
    (tunnel,) = bpf_tunnels(px.pin_dir)
    c2u, u2c = (d["bytes"] for d in tunnel["dir"])
    assert (c2u, u2c) == (len(to_upstream), len(to_client)), "the kernel did not move every byte"
    s.close()
    assert done.wait(10) and wait_for(lambda: not bpf_tunnels(px.pin_dir), timeout=5)
    assert px.read_log().count(" spliced in the kernel") == 1
    px.assert_kernel_path(at_least=2)


@pytest.mark.parametrize("closer", ["client", "upstream"])
def test_a_tunnel_closed_before_its_first_byte_never_enters_the_kernel(upstream, start_proxy, kmode, closer):
    """Connect, upgrade, close: the FIN comes before any byte, so the copy
    relay passes it on and the kernel never gets the sockets (no psock to set
    up and tear down for a tunnel that carries nothing)."""
    closed = threading.Event()

    def handler(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)))
        if closer == "upstream":
            conn.shutdown(socket.SHUT_WR)
        assert rest + recv_until_eof(conn) == b""
        closed.set()

    up = upstream(handler)
    px = start_proxy(up.port, kmode, extra=("-v",))
    base_fds = px.fd_count()
    for _ in range(3):
        closed.clear()
        s, rest = open_tunnel(px.port)
        if closer == "client":
            s.shutdown(socket.SHUT_WR)
        assert rest + recv_until_eof(s) == b""
        s.close()
        assert closed.wait(10), "the upstream did not see the tunnel close"
    assert wait_for(lambda: px.fd_count() == base_fds, timeout=5)
    log = px.read_log()
    assert log.count("%s FIN before any payload" % closer) == 3, log
    assert " spliced in the kernel" not in log
    assert px.redirected() == 0 and bpf_tunnels(px.pin_dir) == []


def test_10000_small_messages_in_order(upstream, start_proxy, mode):
    up = upstream(echo_after_101)
    px = start_proxy(up.port, mode)
    s, rest = open_tunnel(px.port)
    if px.mode == "tcsplice":  # the messages go through the tc program
        s.sendall(b"w")
        assert rest + recv_exact(s, 1 - len(rest)) == b"w"
        rest = b""
        px.wait_express()
    msgs = [struct.pack("!I", i) + os.urandom(60) for i in range(10000)]
    received = bytearray(rest)

    def reader():
        while len(received) < 64 * 10000:
            received.extend(s.recv(1 << 16))

    t = threading.Thread(target=reader)
    t.start()
    for m in msgs:
        s.send(m)  # one write per message: many small segments
    t.join(20)
    assert bytes(received) == b"".join(msgs)
    s.close()
    px.assert_kernel_path(at_least=2)


@pytest.mark.parametrize("gap", [0, 0.05], ids=["same-segment", "right-after"])
def test_server_speaks_first(upstream, start_proxy, mode, gap):
    def handler(conn, head, rest):
        if gap:
            conn.sendall(switching_protocols(key_of(head)))
            time.sleep(gap)
            conn.sendall(b"greeting")
        else:
            conn.sendall(switching_protocols(key_of(head)) + b"greeting")
        data = recv_exact(conn, 4)
        conn.sendall(b"pong:" + data)
        conn.shutdown(socket.SHUT_WR)
        recv_until_eof(conn)

    up = upstream(handler)
    px = start_proxy(up.port, mode)
    s, rest = open_tunnel(px.port)
    greeting = rest + recv_exact(s, len(b"greeting") - len(rest))
    assert greeting == b"greeting"
    px.wait_express()
    s.sendall(b"ping")
    # Exactly once: nothing duplicated after the greeting.
    assert recv_until_eof(s) == b"pong:ping"
    s.close()
    px.assert_kernel_path()


def test_client_frame_in_same_write_as_request(upstream, start_proxy, mode):
    seen = {}

    def handler(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)))
        data = rest + recv_exact(conn, 10 - len(rest))
        seen["first"] = data
        conn.sendall(b"ack")
        seen["after"] = recv_until_eof(conn)

    up = upstream(handler)
    px = start_proxy(up.port, mode)
    s, rest = open_tunnel(px.port, with_request=b"0123456789")
    assert rest + recv_exact(s, 3 - len(rest)) == b"ack"
    px.wait_express()  # tcsplice: "more" and the FINs cross the tc program
    s.sendall(b"more")
    s.shutdown(socket.SHUT_WR)
    assert recv_until_eof(s) == b""
    s.close()
    assert wait_for(lambda: "after" in seen, timeout=5)
    assert seen == {"first": b"0123456789", "after": b"more"}
    px.assert_kernel_path()


def test_half_close_client_first(upstream, start_proxy, mode):
    """Client sends FIN; the upstream still talks, then closes."""
    result = {}

    def handler(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)))
        roundtrip_upstream(conn, rest)
        result["from_client"] = recv_until_eof(conn)
        # The client's FIN arrived; this direction must still work.
        conn.sendall(b"after-your-fin" * 1000)
        conn.shutdown(socket.SHUT_WR)

    up = upstream(handler)
    px = start_proxy(up.port, mode)
    s, rest = open_tunnel(px.port)
    roundtrip_client(s, rest)
    px.wait_express()
    s.sendall(b"client-data" * 1000)
    s.shutdown(socket.SHUT_WR)
    assert recv_until_eof(s) == b"after-your-fin" * 1000
    assert result["from_client"] == b"client-data" * 1000
    s.close()
    px.assert_kernel_path()


def test_half_close_upstream_first(upstream, start_proxy, mode):
    """Upstream sends FIN; the client still talks, then closes."""
    result = {}
    done, go = threading.Event(), threading.Event()

    def handler(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)))
        roundtrip_upstream(conn, rest)
        go.wait(10)
        conn.sendall(b"bye" * 1000)
        conn.shutdown(socket.SHUT_WR)
        result["from_client"] = recv_until_eof(conn)
        done.set()

    up = upstream(handler)
    px = start_proxy(up.port, mode)
    s, rest = open_tunnel(px.port)
    roundtrip_client(s, rest)
    px.wait_express()
    go.set()
    assert recv_until_eof(s) == b"bye" * 1000
    s.sendall(b"still-here" * 1000)
    s.shutdown(socket.SHUT_WR)
    assert done.wait(5)
    assert result["from_client"] == b"still-here" * 1000
    s.close()
    px.assert_kernel_path()


def _reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _sees_close_within(sock, seconds):
    """True when the socket reports reset or EOF within the time."""
    sock.settimeout(seconds)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_client_reset_reaches_upstream(upstream, start_proxy, mode):
    outcome = {}

    def handler(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)))
        recv_exact(conn, 5 - len(rest))
        t0 = time.monotonic()
        outcome["closed"] = _sees_close_within(conn, 1.0)
        outcome["after"] = time.monotonic() - t0

    up = upstream(handler)
    px = start_proxy(up.port, mode)
    s, _ = open_tunnel(px.port)
    s.sendall(b"hello")
    time.sleep(0.05)
    px.wait_express()  # tcsplice: the reset crosses the tc program
    _reset(s)
    deadline = time.monotonic() + 3
    while "closed" not in outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcome.get("closed"), outcome
    px.assert_kernel_path()


def test_upstream_reset_reaches_client(upstream, start_proxy, mode):
    go = threading.Event()

    def handler(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)) + b"x")
        go.wait(10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    up = upstream(handler)
    px = start_proxy(up.port, mode)
    s, rest = open_tunnel(px.port)
    if not rest:
        recv_exact(s, 1)
    time.sleep(0.05)
    px.wait_express()  # tcsplice: the reset crosses the tc program
    go.set()
    assert _sees_close_within(s, 1.0)
    s.close()
    px.assert_kernel_path(at_least=0)  # sockmap: no byte after the 101's, only the reset


def _mark_broken(pin_dir, direction, state=1):
    """Marks a direction's source broken in the pinned sock_links map, as a
    failed trim does (bpf/splice.bpf.c, "the trim"); state 2 is "the
    daemon was told", which the verdict takes as done, so no event comes."""
    (link,) = [e.get("formatted", e) for e in bpftool_dump(pin_dir, "sock_links")
               if e.get("formatted", e)["value"]["dir"] == direction]
    v = link["value"]
    value = struct.pack("<QIIII", v["peer_cookie"], v["tunnel_id"], v["dir"], v["verdict_rcv_nxt"], state)
    subprocess.run(["bpftool", "map", "update", "pinned", os.path.join(pin_dir, "sock_links"),
                    "key", "hex", *("%02x" % b for b in struct.pack("<Q", link["key"])),
                    "value", "hex", *("%02x" % b for b in value)], check=True)


@pytest.mark.parametrize("source", ["client", "upstream"])
def test_a_broken_direction_resets_both_ends_and_delivers_nothing_more(upstream, start_proxy, kmode, source):
    """Where the kernel cannot deliver a direction intact (a trim that
    failed), the verdict drops the rest of it and the daemon resets both
    ends: the peers see a reset, never a byte twice or a hole."""
    outcome = {}

    def read_to_the_end(sock):
        data = b""
        sock.settimeout(5)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return data, "eof"
                data += chunk
        except ConnectionResetError:
            return data, "reset"
        except socket.timeout:
            return data, "timeout"

    def handler(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)))
        roundtrip_upstream(conn, rest)
        outcome["armed"] = True
        if source == "upstream":
            assert recv_exact(conn, 2) == b"go"
            conn.sendall(b"after the break")
        outcome["upstream"] = read_to_the_end(conn)

    up = upstream(handler)
    px = start_proxy(up.port, kmode)
    s, rest = open_tunnel(px.port)
    roundtrip_client(s, rest)
    assert wait_for(lambda: "armed" in outcome)
    _mark_broken(px.pin_dir, 0 if source == "client" else 1)
    s.sendall(b"after the break" if source == "client" else b"go")
    client = read_to_the_end(s)
    assert wait_for(lambda: "upstream" in outcome, timeout=10)
    assert client == (b"", "reset") and outcome["upstream"] == (b"", "reset"), (client, outcome)
    assert "resetting both ends rather than deliver a byte twice" in px.read_log()
    assert bpf_counter(px.pin_dir, WS_CNT_BROKEN_DROPS) == 1
    s.close()


def test_a_break_whose_event_was_lost_is_found_at_the_fin(upstream, start_proxy, kmode):
    """The ring that tells the daemon of a break can be full. A source
    marked broken without an event, which then half-closes, must not be
    read or have its FIN passed on: both ends are reset."""
    outcome = {}

    def handler(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)))
        roundtrip_upstream(conn, rest)
        outcome["armed"] = True
        conn.settimeout(5)
        try:
            outcome["upstream"] = ("eof", conn.recv(65536))
        except ConnectionResetError:
            outcome["upstream"] = ("reset", b"")
        except socket.timeout:
            outcome["upstream"] = ("timeout", b"")

    up = upstream(handler)
    px = start_proxy(up.port, kmode)
    s, rest = open_tunnel(px.port)
    roundtrip_client(s, rest)
    assert wait_for(lambda: "armed" in outcome)
    _mark_broken(px.pin_dir, 0, state=2)
    s.shutdown(socket.SHUT_WR)
    assert wait_for(lambda: "upstream" in outcome, timeout=10)
    assert outcome["upstream"] == ("reset", b""), outcome
    assert "broke in the kernel (a failed trim): resetting both ends" in px.read_log()


@pytest.mark.parametrize("status", [426, 200, 404])
def test_non_101_answer_opens_no_tunnel(upstream, start_proxy, mode, status):
    def handler(conn, head, rest):
        body = b"no websocket here"
        conn.sendall(b"HTTP/1.1 %d Nope\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))

    up = upstream(handler)
    px = start_proxy(up.port, mode)
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    req, _ = upgrade_request()
    # The bytes after the request are parsed as the next HTTP request,
    # not tunnelled, because no 101 came back.
    s.sendall(req + b"GET /next HTTP/1.1\r\nHost: localhost\r\n\r\n")
    r = HttpReader(s)
    for _ in range(2):
        st, fields, body = r.response()
        assert (st, body) == (status, b"no websocket here")
        assert "upgrade" not in fields
    assert len(up.requests) == 2
    assert up.requests[1].startswith(b"GET /next HTTP/1.1\r\n")
    s.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
], ids=["wrong-accept", "h2c", "bare-101"])
def test_101_without_matching_accept_is_refused(upstream, start_proxy, mode, answer):
    def handler(conn, head, rest):
        conn.sendall(answer + b"smuggled")
        recv_until_eof(conn, timeout=2)

    up = upstream(handler)
    px = start_proxy(up.port, mode)
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    req, _ = upgrade_request()
    s.sendall(req)
    head, rest = recv_head(s)
    assert status_of(head) == 502
    assert b"smuggled" not in rest + recv_until_eof(s)
    s.close()


def test_upgrade_on_a_reused_upstream_connection(upstream, start_proxy, mode):
    """A pooled keep-alive connection that already carried a request takes
    the upgrade: its byte counts start before the tunnel (the sockmap FIN
    check and in-flight figure count from them), so half-closes both ways
    must still pass every byte and end the tunnel."""
    served = []

    def handler(conn, head, rest):
        body = b"plain"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        head, rest = recv_head(conn, timeout=10)
        served.append(head.split(b"\r\n", 1)[0])
        conn.sendall(switching_protocols(key_of(head)))
        # One round trip first, so the client's FIN comes after the splice
        # (a FIN before the insertion sends the tunnel to the copy relay).
        if len(rest) < 4:
            rest += recv_exact(conn, 4 - len(rest))
        conn.sendall(b"pong")
        got = rest[4:] + recv_until_eof(conn)
        conn.sendall(got[::-1])
        conn.shutdown(socket.SHUT_WR)

    up = upstream(handler)
    px = start_proxy(up.port, mode, extra=ONE_WORKER, config=one_route_config(up.port, pool="keepalive = 4"))
    with socket.create_connection(("127.0.0.1", px.port), timeout=5) as c:
        c.sendall(b"GET /first HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert recv_until_eof(c).endswith(b"plain")
    s, rest = open_tunnel(px.port)
    assert served == [b"GET / HTTP/1.1"], "the upgrade did not take the pooled connection: %s" % served
    s.sendall(b"ping")
    assert rest + recv_exact(s, 4 - len(rest)) == b"pong"
    px.wait_express()
    payload = os.urandom(300000)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    assert recv_until_eof(s, timeout=10) == payload[::-1]
    s.close()
    px.assert_kernel_path()
    assert wait_for(lambda: not bpf_tunnels(px.pin_dir) if px.kernel else True, timeout=5)


def test_sockmap_sockets_get_their_buffers_at_establishment(upstream, start_proxy, kmode):
    """The sock_ops program sizes both spliced sockets at establishment (no
    system call at the 101): the receive buffer locked at half the budget,
    which the in-flight bound counts on, the send buffer at 4 MiB. The
    kernel doubles what SO_RCVBUF/SO_SNDBUF ask for; ss shows the result."""
    up = upstream(echo_after_101)
    px = start_proxy(up.port, kmode)
    s, _ = open_tunnel(px.port)
    s.sendall(b"sized")
    assert recv_exact(s, 5) == b"sized"
    out = subprocess.run(["ss", "-tmnH", "( sport = :%d or dport = :%d )" % (px.port, up.port)],
                         capture_output=True, text=True, check=True).stdout
    # Exactly the proxy's two sockets match: the accepted one (source port =
    # the listener's) and its connection to the upstream. ss puts each one's
    # skmem on a line of its own or not, depending on the terminal.
    mems = re.findall(r"skmem:\(([^)]*)\)", out)
    if not mems and out.count("ESTAB") == 2:
        # No inet_diag (the VM's initramfs): ss read /proc/net/tcp, which
        # has no socket memory. The host runs this in every CI run.
        pytest.skip("ss shows no skmem here (no inet_diag)")
    assert len(mems) == 2, out
    for m in mems:
        assert "rb%d," % (4 << 20) in m and "tb%d," % (8 << 20) in m, out
    s.close()
    px.assert_kernel_path()
