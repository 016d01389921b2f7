"""Plain HTTP on the tunnel's listener, and the handshake rules: what the
upstream sees, what the client gets back."""
import socket

import pytest

from conftest import free_port
from wsutil import HttpReader, parse_head, recv_exact, upgrade_request


def reply(body=b"hello", extra=b""):
    def handler(conn, head, rest):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body))
    return handler


def ask(port, raw):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(raw)
    return s, HttpReader(s)


def upstream_fields(up, i=-1):
    return parse_head(up.requests[i])


def test_keep_alive_requests_and_what_upstream_sees(upstream, start_proxy, mode):
    up = upstream(reply(b"page"))
    px = start_proxy(up.port, mode)
    s, r = ask(px.port, b"GET /a HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
                        b"GET /b HTTP/1.1\r\nHost: app.test\r\n\r\n")
    for _ in range(2):
        status, fields, body = r.response()
        assert (status, body) == (200, b"page")
        assert "connection" not in fields  # keep-alive is the HTTP/1.1 default
    line, fields = upstream_fields(up, 0)
    assert line == "GET /a HTTP/1.1"
    assert fields["x-forwarded-for"] == ["127.0.0.1"]  # replaced, not trusted
    assert fields["x-forwarded-proto"] == ["http"] and fields["x-forwarded-host"] == ["app.test"]
    assert fields["host"] == ["app.test"]
    assert upstream_fields(up, 1)[0] == "GET /b HTTP/1.1"
    s.close()


def test_request_bodies_content_length_and_chunked(upstream, start_proxy, mode):
    seen = []

    def handler(conn, head, rest):
        fields = parse_head(head)[1]
        if "content-length" in fields:
            body = rest + recv_exact(conn, int(fields["content-length"][0]) - len(rest))
        else:
            body = rest
            while not body.endswith(b"T: v\r\n\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    raise ConnectionError("EOF before the trailers: %r" % body)
                body += chunk
        seen.append(body)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n")

    up = upstream(handler)
    px = start_proxy(up.port, mode)
    big = b"z" * 300000
    s, r = ask(px.port, b"POST /cl HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big) +
               b"POST /ch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: v\r\n\r\n")
    for _ in range(2):
        status, fields, body = r.response()
        assert (status, body) == (200, b"hello world")
    assert seen == [big, b"3\r\nabc\r\n0\r\nT: v\r\n\r\n"]
    s.close()


def test_head_and_close_delimited_responses(upstream, start_proxy, mode):
    def handler(conn, head, rest):
        if head.startswith(b"HEAD"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nuntil close")

    up = upstream(handler)
    px = start_proxy(up.port, mode)
    s, r = ask(px.port, b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
    status, fields, body = r.response(head_request=True)
    assert status == 200 and fields["content-length"] == ["1234"] and body == b""
    status, fields, body = r.response()
    assert (status, body) == (200, b"until close") and fields["connection"] == ["close"]
    s.close()


def test_hop_by_hop_fields_are_stripped_both_ways(upstream, start_proxy, mode):
    up = upstream(reply(extra=b"Connection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\n"))
    px = start_proxy(up.port, mode)
    s, r = ask(px.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Private\r\nX-Private: p\r\n"
                        b"Keep-Alive: 300\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X\r\n"
                        b"X-End: e\r\n\r\n")
    status, fields, _ = r.response()
    assert status == 200 and fields["x-kept"] == ["yes"]
    assert not {"x-secret", "keep-alive"} & set(fields)
    _, seen = upstream_fields(up)
    assert not {"x-private", "keep-alive", "proxy-connection", "te", "trailer"} & set(seen)
    # Persistent by default (HTTP/1.1): no Connection field towards the pool.
    assert seen["x-end"] == ["e"] and "connection" not in seen
    s.close()


def test_h2c_upgrade_is_never_forwarded(upstream, start_proxy, mode):
    up = upstream(reply())
    px = start_proxy(up.port, mode)
    s, r = ask(px.port, b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    assert r.response()[0] == 200
    _, seen = upstream_fields(up)
    assert not {"upgrade", "http2-settings"} & set(seen)
    s.close()


def test_websocket_request_as_the_upstream_sees_it(upstream, start_proxy, mode):
    up = upstream(lambda conn, head, rest: conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"))
    px = start_proxy(up.port, mode)
    req, key = upgrade_request(extra=b"Sec-WebSocket-Protocol: chat\r\nConnection: X-Drop\r\nX-Drop: 1\r\n")
    s, r = ask(px.port, req)
    assert r.response()[0] == 403
    line, seen = upstream_fields(up)
    assert line == "GET / HTTP/1.1"
    assert seen["upgrade"] == ["websocket"] and seen["connection"] == ["Upgrade"]
    assert seen["sec-websocket-key"] == [key.decode()] and seen["sec-websocket-version"] == ["13"]
    assert seen["sec-websocket-protocol"] == ["chat"] and "x-drop" not in seen
    s.close()


@pytest.mark.parametrize("raw,status", [
    (b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\n"
     b"Sec-WebSocket-Version: 13\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", 426),
    (b"POST / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\nX: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX\x7fY: a\r\n\r\n", 400),
    (b"GET foo HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505),
    (b"GET / HTTX/1.1\r\nHost: h\r\n\r\n", 400),
], ids=["no-key", "short-key", "version-8", "post", "http-1.0", "no-connection-upgrade", "bare-lf",
        "space-before-colon", "obs-fold", "no-host", "two-hosts", "cl-and-te", "http-2", "long-line",
        "too-many-fields", "two-content-lengths", "content-length-list", "content-length-sign", "te-gzip",
        "te-chunked-not-last", "te-chunked-twice", "te-repeated", "nul-in-value", "ctl-in-value", "bare-cr",
        "del-in-name", "target-not-a-path", "ctl-in-target", "asterisk-not-options", "http-1.2", "not-http"])
def test_bad_requests_get_a_status_and_never_reach_upstream(upstream, start_proxy, mode, raw, status):
    up = upstream(reply())
    px = start_proxy(up.port, mode)
    s, r = ask(px.port, raw)
    got, fields, _ = r.response()
    assert got == status
    if status == 426:
        assert fields["sec-websocket-version"] == ["13"]
    assert fields["connection"] == ["close"]
    assert up.requests == []
    s.close()


def test_unreachable_upstream_is_502(start_proxy, mode):
    px = start_proxy(free_port(), mode)
    s, r = ask(px.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert r.response()[0] == 502
    s.close()


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.1 200 OK\r\nBad Field\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"])
def test_invalid_upstream_answer_is_502_never_relayed(upstream, start_proxy, mode, answer):
    up = upstream(lambda conn, head, rest: conn.sendall(answer))
    px = start_proxy(up.port, mode)
    s, r = ask(px.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    status, _, body = r.response()
    assert status == 502 and answer not in body
    s.close()
