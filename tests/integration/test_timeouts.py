"""Every timeout with the status it must produce: slow request heads (408),
silent upstreams (504), idle keep-alive clients, idle and half-closed
tunnels (judged in sockmap mode by the BPF program's activity stamp)."""
import socket
import threading
import time

import pytest

from conftest import free_port
from wsutil import HttpReader, echo_after_101, one_route_config, key_of, open_tunnel, recv_exact, switching_protocols


def config(server, globals_=""):
    return one_route_config(server, global_=globals_)


def ok_handler(conn, head, rest):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def eof_within(sock, seconds):
    """Seconds until the peer closed (recv returned b''), or None."""
    sock.settimeout(seconds)
    t0 = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except socket.timeout:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


def test_slow_request_head_gets_408(upstream, start_proxy):
    up = upstream(ok_handler)
    px = start_proxy(0, "copy", config=config(up.port, "client_header_timeout = 1s"))
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    t0 = time.monotonic()
    s.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n")  # the blank line never comes
    for _ in range(3):
        time.sleep(0.2)
        s.sendall(b"X-Drip: 1\r\n")  # dripping bytes does not extend the deadline
    status, fields, _ = HttpReader(s).response()
    took = time.monotonic() - t0
    assert status == 408 and fields["connection"] == ["close"]
    assert 0.9 <= took < 2.5, took
    assert up.requests == []


def test_idle_keep_alive_connection_is_closed_quietly(upstream, start_proxy):
    up = upstream(ok_handler)
    px = start_proxy(0, "copy", config=config(up.port, "keepalive_timeout = 1s\nclient_header_timeout = 5s"))
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    r = HttpReader(s)
    assert r.response()[0] == 200
    took = eof_within(s, 5)
    assert took is not None and 0.8 <= took < 2.5, took
    assert r.buf == b""  # no 408 for a client that simply went quiet between requests


def test_silent_upstream_gets_504(upstream, start_proxy):
    hold = threading.Event()
    up = upstream(lambda conn, head, rest: hold.wait(10))
    px = start_proxy(0, "copy", config=config(up.port, "upstream_response_timeout = 1s"))
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    t0 = time.monotonic()
    s.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    status = HttpReader(s).response()[0]
    hold.set()
    assert status == 504 and 0.9 <= time.monotonic() - t0 < 2.5


def test_client_that_stops_sending_its_body_gets_408(upstream, start_proxy):
    hold = threading.Event()
    up = upstream(lambda conn, head, rest: hold.wait(10))
    px = start_proxy(0, "copy", config=config(up.port, "upstream_response_timeout = 1s"))
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    s.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    status = HttpReader(s).response()[0]
    hold.set()
    assert status == 408


def test_unreachable_upstream_is_502_at_once(start_proxy):
    px = start_proxy(0, "copy", config=config(free_port(), "upstream_connect_timeout = 30s"))
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    t0 = time.monotonic()
    s.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert HttpReader(s).response()[0] == 502
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("mode", ["sockmap", "auto", "splice", "copy"])
def test_idle_tunnel_timeout_counts_traffic_the_kernel_moved(upstream, start_proxy, mode):
    up = upstream(echo_after_101)
    px = start_proxy(0, mode, config=config(up.port, "tunnel_idle_timeout = 1s"))
    s, _ = open_tunnel(px.port)
    # 2 s of traffic, a message every 0.3 s: never idle for 1 s.
    t_end = time.monotonic() + 2.0
    while True:
        s.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"
        last = time.monotonic()
        if last > t_end:
            break
        time.sleep(0.3)
    assert eof_within(s, 5) is not None
    took = time.monotonic() - last
    assert 0.9 <= took < 2.5, took
    assert "idle for" in px.read_log()
    px.assert_kernel_path()


@pytest.mark.parametrize("mode", ["sockmap", "auto", "copy"])
def test_tunnels_never_time_out_by_default(upstream, start_proxy, mode):
    up = upstream(echo_after_101)
    px = start_proxy(0, mode, config=config(up.port))
    s, _ = open_tunnel(px.port)
    assert eof_within(s, 2.5) is None  # nginx would have cut it after its 60 s default
    s.sendall(b"still here")
    assert recv_exact(s, 10) == b"still here"
    s.close()


@pytest.mark.parametrize("mode", ["sockmap", "auto", "splice"])
def test_half_closed_tunnel_has_its_own_timeout(upstream, start_proxy, mode):
    got_fin = threading.Event()

    def quiet(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)))
        while conn.recv(65536):
            pass
        got_fin.set()
        time.sleep(10)  # keeps its side open, silent

    up = upstream(quiet)
    px = start_proxy(0, mode, config=config(up.port, "tunnel_fin_timeout = 1s"))
    s, _ = open_tunnel(px.port)
    time.sleep(1.5)  # idle but not half-closed: no timeout applies
    s.shutdown(socket.SHUT_WR)
    assert got_fin.wait(5)
    took = eof_within(s, 5)
    assert took is not None and took < 2.5, took
    assert "half-closed and idle" in px.read_log()
