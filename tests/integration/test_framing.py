"""Message framing on both sides (RFC 9112): pooled keep-alive upstream
connections, pipelined requests answered in order, 100-continue, bodiless
responses, HTTP/1.0 clients."""
import socket
import threading
import time

import pytest

from conftest import ONE_WORKER
from wsutil import (HttpReader, bpf_tunnels, echo_after_101, one_route_config, open_tunnel, parse_head, recv_exact, recv_head,
                    wait_for)


def config(server, keepalive=16):
    return one_route_config(server, pool="keepalive = %d" % keepalive)


class CountingUpstream:
    """Serves many requests per connection (Content-Length bodies), counts
    connections, and answers with the path it was asked for."""

    def __init__(self, close_after=None):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests = []
        self.close_after = close_after
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        rest = b""
        served = 0
        try:
            while True:
                head, rest = recv_head(conn, timeout=30) if not rest else self._head(conn, rest)
                line, fields = parse_head(head)
                n = int(fields.get("content-length", ["0"])[0])
                body = rest[:n] + (recv_exact(conn, n - len(rest)) if n > len(rest) else b"")
                rest = rest[n:]
                self.requests.append((line, fields, body))
                path = line.split(" ")[1].encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
                served += 1
                if self.close_after and served >= self.close_after:
                    return
        except Exception:
            return
        finally:
            conn.close()

    @staticmethod
    def _head(conn, rest):
        while b"\r\n\r\n" not in rest:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError
            rest += chunk
        head, rest = rest.split(b"\r\n\r\n", 1)
        return head + b"\r\n\r\n", rest

    def close(self):
        # As ScriptedUpstream.close: the accept thread stops before the
        # descriptor, whose number a later socket may take, goes.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(10)
        assert not self.thread.is_alive(), "the upstream's accept thread did not stop"
        self.sock.close()


@pytest.fixture
def counting_upstream():
    """CountingUpstream(**kw), closed after the test even when it fails."""
    made = []

    def make(**kw):
        made.append(CountingUpstream(**kw))
        return made[-1]
    yield make
    for up in made:
        up.close()


def get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path.encode())
        return HttpReader(s).response()


def test_upstream_connections_are_pooled_and_reused(counting_upstream, start_proxy):
    up = counting_upstream()
    px = start_proxy(0, "copy", extra=ONE_WORKER, config=config(up.port))
    for i in range(5):
        status, _, body = get(px.port, "/r%d" % i)  # five clients, one after another
        assert (status, body) == (200, b"/r%d" % i)
    assert up.connections == 1
    assert all("connection" not in f for _, f, _ in up.requests)


def test_keepalive_0_closes_every_upstream_connection(counting_upstream, start_proxy):
    up = counting_upstream()
    px = start_proxy(0, "copy", config=config(up.port, keepalive=0))
    for i in range(3):
        assert get(px.port, "/r%d" % i)[0] == 200
    assert up.connections == 3
    assert all(f["connection"] == ["close"] for _, f, _ in up.requests)


def test_a_pooled_connection_the_server_closed_is_not_used(counting_upstream, start_proxy):
    up = counting_upstream(close_after=1)  # like a server with a short keep-alive timeout
    px = start_proxy(0, "copy", config=config(up.port))
    for i in range(4):
        assert get(px.port, "/r%d" % i)[2] == b"/r%d" % i
        time.sleep(0.05)
    assert up.connections == 4


def test_pipelined_requests_are_answered_in_order(counting_upstream, start_proxy):
    up = counting_upstream()
    px = start_proxy(0, "copy", config=config(up.port))
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    s.sendall(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n"
              b"POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
              b"GET /three HTTP/1.1\r\nHost: h\r\n\r\n")
    r = HttpReader(s)
    assert [r.response()[2] for _ in range(3)] == [b"/one", b"/two", b"/three"]
    assert up.requests[1][2] == b"hello"
    s.close()


def test_expect_100_continue(upstream, start_proxy):
    def handler(conn, head, rest):
        fields = parse_head(head)[1]
        assert fields["expect"] == ["100-continue"]
        assert rest == b""  # the client waits for the 100
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = recv_exact(conn, 6)
        conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 6\r\n\r\n" + body)

    up = upstream(handler)
    px = start_proxy(0, "copy", config=config(up.port))
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    s.sendall(b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n")
    r = HttpReader(s)
    assert r.response()[0] == 100
    s.sendall(b"upload")
    assert r.response()[0::2] == (201, b"upload")
    s.close()


def test_bodiless_responses_keep_the_connection_in_step(upstream, start_proxy):
    answers = [b"HTTP/1.1 204 No Content\r\nContent-Length: 99\r\n\r\n",
               b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast"]

    def handler(conn, head, rest):
        for i, a in enumerate(answers):
            if i:
                recv_head(conn)
            conn.sendall(a)

    up = upstream(handler)
    px = start_proxy(0, "copy", config=config(up.port))
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    r = HttpReader(s)
    for status in (204, 304):
        s.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert r.response()[0] == status
    s.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert r.response()[0::2] == (200, b"last")
    s.close()


def test_http_1_0_client_never_gets_chunked(upstream, start_proxy):
    def handler(conn, head, rest):
        line = parse_head(head)[0]
        if line.endswith("HTTP/1.0"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nplain body")
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nplain\r\n0\r\n\r\n")

    up = upstream(handler)
    px = start_proxy(0, "copy", config=config(up.port))
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    s.sendall(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert body == b"plain body" and b"chunked" not in head.lower()
    assert parse_head(up.requests[0])[0] == "GET / HTTP/1.0"


@pytest.mark.parametrize("mode", ["sockmap", "auto", "splice", "copy"])
def test_upgrade_on_a_reused_upstream_connection(upstream, start_proxy, mode):
    """The pooled connection has carried a request before the upgrade: the
    tunnel's byte accounting (the sockmap FIN check) must count from the
    socket's birth, not from the upgrade."""
    def handler(conn, head, rest):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npage")
        head, rest = recv_head(conn, timeout=10)
        echo_after_101(conn, head, rest)

    up = upstream(handler)
    px = start_proxy(0, mode, extra=ONE_WORKER, config=config(up.port))
    assert get(px.port, "/")[2] == b"page"
    s, _ = open_tunnel(px.port)
    s.sendall(b"x" * 100000)
    assert recv_exact(s, 100000) == b"x" * 100000
    s.shutdown(socket.SHUT_WR)
    s.settimeout(5)
    assert s.recv(10) == b""  # the upstream's FIN came through: both directions closed
    s.close()
    assert len(up.requests) == 1  # one upstream connection carried both
    assert wait_for(lambda: px.read_log() is not None and not bpf_tunnels_or_empty(px), timeout=5)
    px.assert_kernel_path()


def bpf_tunnels_or_empty(px):
    return bpf_tunnels(px.pin_dir) if px.kernel else []
