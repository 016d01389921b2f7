"""A graceful stop (issue #12, "plain stops"): SIGTERM with shutdown_timeout
drains. No new connection is accepted, an idle keep-alive connection is
closed, and the open tunnels carry on until they end or the timeout closes
them; then the daemon exits 0. Without shutdown_timeout SIGTERM closes at
once, as before. In every engine, with one worker and with two. The copy
relay ends each tunnel with a WebSocket close frame, 1001 "going away", to
both ends, wherever the stream stands between frames."""
import os
import signal
import socket
import struct
import time

import pytest

from wsutil import (echo_after_101, key_of, open_tunnel, recv_exact, recv_until_eof, switching_protocols,
                    wait_for)

GOING_AWAY = b"\x88\x02\x03\xe9"  # a server's close frame, code 1001


def masked(payload, opcode=0x1):
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ending(sock):
    """What a client gets once its tunnel is closed at a stop."""
    sock.settimeout(5)
    out = bytearray()
    try:
        while True:
            chunk = sock.recv(100)
            if not chunk:
                break
            out += chunk
    except ConnectionResetError:
        pass  # closed with data unread on its way: a reset is an end too
    return bytes(out)


def refused(port):
    """Nothing listens: refused. A connection the closing listener still
    queued is reset instead: not yet."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False


def echoed(s, data):
    s.sendall(data)
    return recv_exact(s, len(data), timeout=5) == data


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_drains_until_shutdown_timeout(upstream, start_proxy, mode, workers):
    if mode == "tcsplice":
        pytest.skip("an express tunnel's frozen sockets cannot send a FIN: shutdown_timeout resets both "
                    "peers (test_express.py)")
    up = upstream(echo_after_101)
    px = start_proxy(up.port, mode, extra=("--shutdown-timeout", "4s", "--workers", workers))
    tunnels = [open_tunnel(px.port)[0] for _ in range(4)]
    for t in tunnels:
        assert echoed(t, b"before")
    idle = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    t0 = time.monotonic()
    px.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: refused(px.port), timeout=3), px.read_log()
    # The idle connection is closed; the tunnels carry on.
    idle.settimeout(3)
    assert idle.recv(1) == b""
    for t in tunnels:
        assert echoed(t, b"draining"), px.read_log()
    # A tunnel that ends is not waited for; the others are, until the timeout.
    tunnels[0].shutdown(socket.SHUT_WR)
    assert recv_until_eof(tunnels[0]) == b""
    time.sleep(1)
    assert px.proc.poll() is None, px.read_log()
    assert echoed(tunnels[1], b"still")
    px.proc.wait(10)
    waited = time.monotonic() - t0
    assert 3.5 < waited < 10, (waited, px.read_log())
    assert px.proc.returncode == 0, px.read_log()
    # Their bytes are not WebSocket frames ("be" reads as the head of a
    # 101-byte frame, never finished): mid-frame, no engine may put a close
    # frame into them.
    for t in tunnels[1:]:
        assert ending(t) == b""
    assert "shutdown_timeout: closing" in px.read_log()


def test_a_drain_ends_when_the_last_tunnel_does(upstream, start_proxy):
    up = upstream(echo_after_101)
    px = start_proxy(up.port, "copy", extra=("--shutdown-timeout", "30s"))
    t, _ = open_tunnel(px.port)
    assert echoed(t, b"x")
    px.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: refused(px.port), timeout=3)
    t.shutdown(socket.SHUT_WR)
    assert recv_until_eof(t) == b""
    px.proc.wait(5)
    assert px.proc.returncode == 0
    assert "drained: every request and tunnel has ended" in px.read_log(), px.read_log()


def test_a_second_sigterm_stops_at_once(upstream, start_proxy):
    up = upstream(echo_after_101)
    px = start_proxy(up.port, "copy", extra=("--shutdown-timeout", "60s", "--workers", "1"))
    t, _ = open_tunnel(px.port)
    px.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: refused(px.port), timeout=3)
    px.proc.send_signal(signal.SIGTERM)
    px.proc.wait(5)
    assert px.proc.returncode == 0
    assert ending(t) == GOING_AWAY


def test_without_shutdown_timeout_sigterm_closes_at_once(upstream, start_proxy):
    up = upstream(echo_after_101)
    px = start_proxy(up.port, "copy")
    t, _ = open_tunnel(px.port)
    t0 = time.monotonic()
    px.proc.send_signal(signal.SIGTERM)
    px.proc.wait(5)
    assert time.monotonic() - t0 < 2 and px.proc.returncode == 0
    assert ending(t) == GOING_AWAY


def test_the_close_frames_go_between_frames_only(upstream, start_proxy):
    """Both ways at a frame boundary: each end gets its close frame, the
    server's masked as a client's must be. A frame half sent: that end gets
    none (a close frame in the middle would corrupt the stream), the other
    still does."""
    got = []

    def server(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)) + b"\x81\x02yo")
        got.append(rest + recv_until_eof(conn))

    up = upstream(server)
    px = start_proxy(up.port, "copy", extra=("--shutdown-timeout", "1s", "--workers", "1"))
    t, rest = open_tunnel(px.port)
    t.sendall(masked(b"hi"))
    assert rest + recv_exact(t, 4 - len(rest)) == b"\x81\x02yo"
    px.proc.send_signal(signal.SIGTERM)
    px.proc.wait(10)
    assert px.proc.returncode == 0
    assert ending(t) == GOING_AWAY
    assert wait_for(lambda: got, timeout=5)
    close = got[0][-8:]
    assert got[0][:-8][:2] == b"\x81\x82" and close[:2] == b"\x88\x82", got
    assert bytes(b ^ close[2 + i] for i, b in enumerate(close[6:])) == struct.pack("!H", 1001)

    got.clear()
    px = start_proxy(up.port, "copy", extra=("--shutdown-timeout", "1s", "--workers", "1"))
    t, rest = open_tunnel(px.port)
    half = masked(b"0123456789")[:9]  # the header and 3 of 10 payload bytes
    t.sendall(half)
    assert rest + recv_exact(t, 4 - len(rest)) == b"\x81\x02yo"
    px.proc.send_signal(signal.SIGTERM)
    px.proc.wait(10)
    assert ending(t) == GOING_AWAY
    assert wait_for(lambda: got, timeout=5)
    assert got[0] == half, got


def test_every_process_signalled_as_systemd_does_keeps_draining(upstream, start_proxy):
    """systemd's SIGTERM reaches the master and each worker; the workers
    also hear "stop" from the master. The drain runs on all the same."""
    up = upstream(echo_after_101)
    px = start_proxy(up.port, "copy", extra=("--shutdown-timeout", "4s", "--workers", "2"))
    tunnels = [open_tunnel(px.port)[0] for _ in range(6)]
    pids = px.pids()
    assert len(pids) == 3
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    time.sleep(1.5)
    assert px.proc.poll() is None, px.read_log()
    for t in tunnels:
        assert echoed(t, b"\x81\x00"), px.read_log()  # an empty text frame: at a boundary after it
    px.proc.wait(10)
    assert px.proc.returncode == 0
    for t in tunnels:
        assert ending(t) == GOING_AWAY


def test_a_second_sigint_to_the_master_stops_the_workers_at_once(upstream, start_proxy):
    up = upstream(echo_after_101)
    px = start_proxy(up.port, "copy", extra=("--shutdown-timeout", "60s", "--workers", "2"))
    tunnels = [open_tunnel(px.port)[0] for _ in range(6)]
    px.proc.send_signal(signal.SIGINT)
    assert wait_for(lambda: refused(px.port), timeout=3)
    t0 = time.monotonic()
    px.proc.send_signal(signal.SIGINT)
    px.proc.wait(5)
    assert time.monotonic() - t0 < 3 and px.proc.returncode == 0, px.read_log()
    assert "the workers stop now" in px.read_log()
    for t in tunnels:
        assert ending(t) == GOING_AWAY

