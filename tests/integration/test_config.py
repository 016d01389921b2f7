"""The -c file: checking it (-t), routing by host and path to pools,
balancing, passive health and retry, per-route WebSocket policy, trusted
X-Forwarded-*, and SIGHUP reload without dropping anything."""
import os
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import ONE_WORKER, WSPLICE, free_port
from wsutil import (HttpReader, echo_after_101, one_route_config, open_tunnel, parse_head, recv_exact, recv_head,
                    upgrade_request, status_of, wait_for)


def named(name):
    """An upstream that answers every request on a connection with its name,
    and that echoes on a WebSocket upgrade."""
    def handler(conn, head, rest):
        while True:
            if parse_head(head)[1].get("upgrade"):
                return echo_after_101(conn, head, rest)
            body = name.encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            try:
                head, rest = recv_head(conn, timeout=30)
            except (ConnectionError, OSError, AssertionError):
                return
    return handler


def get(port, path="/", host="h", extra=b""):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n" % (path.encode(), host.encode(), extra))
        status, fields, body = HttpReader(s).response()
        return status, body.decode(errors="replace")


def check(text):
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(text)
    try:
        r = subprocess.run([WSPLICE, "-t", "-c", f.name], capture_output=True, text=True, timeout=30)
    finally:
        os.unlink(f.name)
    return r, f.name


GOOD = """
; comment
[global]
client_header_timeout = 10s
tunnel_idle_timeout = off

[listener main]
listen = 127.0.0.1:%d
trusted_proxies = 10.0.0.0/8, ::1

[pool app]
server = 127.0.0.1:3000
server = 127.0.0.1:3001
balance = leastconn

[route all]
pool = app
origin = https://app.example
"""


def test_check_accepts_a_good_file():
    r, _ = check(GOOD % free_port())
    assert r.returncode == 0, r.stderr
    assert "is ok: 1 listeners, 1 routes, 1 pools" in r.stdout


def test_check_names_file_and_line_of_every_error():
    r, path = check("""[global]
client_header_timeout = soon
bogus = 1

[listener main]
listen = 127.0.0.1

[pool app]
balance = random
server = 127.0.0.1:70000

[wat]
x = 1

[route r]
pool = app
max_tunnels = lots
host = a*b
path = nope
mode = kernel
""")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    expect = [(2, "client_header_timeout 'soon'"), (3, "unknown directive 'bogus'"), (6, "expected host:port"),
              (9, "balance 'random'"), (10, "port must be 1-65535"), (12, "unknown section [wat]"),
              (17, "max_tunnels 'lots'"), (18, "host 'a*b'"), (19, "path 'nope'"),
              (20, "mode 'kernel': expected auto, sockmap, splice, copy or tcsplice")]
    for line, what in expect:
        assert any(l.startswith("%s:%d: " % (path, line)) and what in l for l in lines), (line, what, lines)
    assert lines[-1] == "wsplice: configuration %s test failed" % path


@pytest.mark.parametrize("text,line,what", [
    ("[listener a]\nlisten = 127.0.0.1:1\n[route r]\npool = nowhere\n", 3, "no [pool nowhere]"),
    ("[listener a]\nlisten = 127.0.0.1:1\n[pool p]\nbalance = leastconn\n[route r]\npool = p\n", 3, "has no 'server'"),
    ("[listener a]\nlisten = 127.0.0.1:1\n[pool p]\nserver = 127.0.0.1:2\n[pool p]\nserver = 127.0.0.1:3\n"
     "[route r]\npool = p\n", 5, "defined twice"),
    ("[listener a]\nlisten = 127.0.0.1:1\n[pool p]\nserver = 127.0.0.1:2\n[route r]\npool = p\nthis is not ini\n",
     7, "syntax error"),
    ("[listener a]\nlisten = 127.0.0.1:1\n[pool p]\nserver = 127.0.0.1:2\n[route r]\npool = p\norigin = " +
     "x" * 5000 + "\n", 7, "line longer than"),
    ("[listener a]\nlisten = no-such-host.invalid:1\n[pool p]\nserver = 127.0.0.1:2\n[route r]\npool = p\n",
     1, "cannot resolve"),
    ("[listener a]\nlisten = 127.0.0.1:1\n[pool p]\nserver = 127.0.0.1:2\n[route r]\npool = p\nlistener = b\n",
     5, "no [listener b]"),
    ("[global]\nmode = sockmap\nexpress = on\n[listener a]\nlisten = 127.0.0.1:1\n[pool p]\nserver = 127.0.0.1:2\n"
     "[route r]\npool = p\n", 3, "express = on: a sockmap tunnel cannot go express"),
    ("[listener a]\nlisten = 127.0.0.1:1\n[pool p]\nserver = 127.0.0.1:2\n[route r]\npool = p\nexpress = fast\n",
     7, "express 'fast': expected on or off"),
], ids=["missing-pool", "empty-pool", "duplicate", "syntax", "long-line", "unresolvable", "missing-listener",
        "express-on-sockmap", "express-value"])
def test_check_rejects_inconsistent_files(text, line, what):
    r, path = check(text)
    assert r.returncode == 1
    first = r.stderr.splitlines()[0]
    assert first.startswith("%s:%d: " % (path, line)) and what in first, r.stderr


def test_command_line_shortcut_still_checks_and_a_missing_file_is_one_line():
    r = subprocess.run([WSPLICE, "-t", "--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "(command line) is ok" in r.stdout
    r = subprocess.run([WSPLICE, "-c", "/nonexistent/wsplice.conf"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "/nonexistent/wsplice.conf: No such file or directory" in r.stderr
    r = subprocess.run([WSPLICE, "-c", "/x", "--listen", "127.0.0.1:1"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "cannot be combined with -c" in r.stderr


def routing_config(a, b, c, second_port):
    return """
[listener main]
listen = 127.0.0.1:{port}
[listener admin]
listen = 127.0.0.1:%d
[pool a]
server = 127.0.0.1:%d
[pool b]
server = 127.0.0.1:%d
[pool c]
server = 127.0.0.1:%d
[route default]
host = app.test
pool = a
[route api]
host = app.test
path = /api
pool = b
[route api-v2]
host = app.test
path = /api/v2
pool = c
[route wildcard]
host = *.example.com
pool = b
[route exact]
host = www.example.com
pool = c
[route admin-only]
listener = admin
path = /
pool = c
""" % (second_port, a, b, c)


def test_routes_by_host_and_longest_path_prefix(upstream, start_proxy):
    a, b, c = upstream(named("a")), upstream(named("b")), upstream(named("c"))
    admin = free_port()
    px = start_proxy(0, "copy", config=routing_config(a.port, b.port, c.port, admin))
    assert get(px.port, "/", "app.test") == (200, "a")
    assert get(px.port, "/apix", "APP.test:8080") == (200, "b")  # prefix as in nginx; host case and port ignored
    assert get(px.port, "/api/users?x=1", "app.test") == (200, "b")
    assert get(px.port, "/api/v2/users", "app.test") == (200, "c")
    assert get(px.port, "/", "www.example.com") == (200, "c")   # exact beats *.example.com
    assert get(px.port, "/", "cdn.example.com") == (200, "b")
    assert get(px.port, "/", "example.com")[0] == 404           # *.example.com needs a label
    assert get(px.port, "/", "other.test")[0] == 404
    assert get(admin, "/", "other.test") == (200, "c")           # the second listener has its own route
    # Absolute-form targets route by their own authority.
    with socket.create_connection(("127.0.0.1", px.port), timeout=5) as s:
        s.sendall(b"GET http://app.test/api/v2/x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        assert HttpReader(s).response()[2] == b"c"


def test_absolute_form_target_replaces_host(upstream, start_proxy):
    """RFC 9112 §3.2.2: a proxy ignores Host when the target is absolute-form
    and replaces it with the target's authority. The request is routed on that
    authority, and the upstream sees only that name, in origin form."""
    a, b, c = upstream(named("a")), upstream(named("b")), upstream(named("c"))
    px = start_proxy(0, "copy", config=routing_config(a.port, b.port, c.port, free_port()))
    with socket.create_connection(("127.0.0.1", px.port), timeout=5) as s:
        s.sendall(b"GET http://www.example.com/abs?x=1 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        assert HttpReader(s).response()[2] == b"c"  # www.example.com's route, not app.test's
    (head,) = c.requests
    line, fields = head.split(b"\r\n")[0], head.lower().split(b"\r\n")[1:]
    assert line == b"GET /abs?x=1 HTTP/1.1", head
    assert [f for f in fields if f.startswith(b"host:")] == [b"host: www.example.com"], head
    assert b"x-forwarded-host: www.example.com" in fields, head
    assert b"app.test" not in head.lower(), head
    assert not a.requests and not b.requests
    for bad in (b"http:///abs", b"http://user@www.example.com/abs"):
        with socket.create_connection(("127.0.0.1", px.port), timeout=5) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n" % bad)
            assert HttpReader(s).response()[0] == 400, bad
    assert len(c.requests) == 1


def pool_config(servers, balance="roundrobin", fail_timeout="10s"):
    return one_route_config(*servers, pool="balance = %s\nfail_timeout = %s\nkeepalive = 0" % (balance, fail_timeout))


def test_round_robin_spreads_requests(upstream, start_proxy):
    ups = [upstream(named(n)) for n in "abc"]
    px = start_proxy(0, "copy", extra=ONE_WORKER, config=pool_config([u.port for u in ups]))
    seen = [get(px.port)[1] for _ in range(6)]
    assert sorted(seen) == ["a", "a", "b", "b", "c", "c"]
    assert seen[:3] != [seen[0]] * 3


@pytest.mark.parametrize("mode", ["sockmap", "auto", "copy"])
def test_least_connections_counts_open_tunnels(upstream, start_proxy, mode):
    a, b = upstream(named("a")), upstream(named("b"))
    px = start_proxy(0, mode, extra=ONE_WORKER, config=pool_config([a.port, b.port], balance="leastconn"))
    # Two tunnels: one lands on each server; then a third goes to either.
    t1, _ = open_tunnel(px.port)
    t2, _ = open_tunnel(px.port)
    assert len(a.requests) == 1 and len(b.requests) == 1
    t1.close()
    # With t1 gone, its server has fewer connections: every new request goes
    # there (round-robin would alternate).
    time.sleep(0.5)
    names = [get(px.port)[1] for _ in range(4)]
    assert len(set(names)) == 1, names
    t2.sendall(b"ping")
    assert recv_exact(t2, 4) == b"ping"
    t2.close()


def test_a_dead_server_is_retried_elsewhere_then_skipped(upstream, start_proxy):
    live = upstream(named("live"))
    dead = free_port()
    px = start_proxy(0, "copy", extra=ONE_WORKER, config=pool_config([dead, live.port]))
    for _ in range(6):
        assert get(px.port) == (200, "live")
    log = px.read_log()
    # Marked down once; while down it is not tried again.
    assert log.count("marked down") == 1, log
    assert log.count("127.0.0.1:%d: Connection refused" % dead) == 1, log


def test_passive_health_expires_and_all_dead_is_502(upstream, start_proxy):
    d1, d2 = free_port(), free_port()
    px = start_proxy(0, "copy", config=pool_config([d1, d2], fail_timeout="1s"))
    assert get(px.port)[0] == 502
    assert px.read_log().count("marked down") == 2
    time.sleep(1.3)
    assert get(px.port)[0] == 502
    assert px.read_log().count("marked down") == 4  # tried again after fail_timeout


def ws_config(server, extra):
    return one_route_config(server, route=extra, extra="[route plain]\npath = /plain\npool = p\nwebsocket = off\n")


def upgrade(port, path="/", origin=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    extra = b"Origin: %s\r\n" % origin.encode() if origin else b""
    req, _ = upgrade_request(path, extra=extra)
    s.sendall(req)
    head, _ = recv_head(s)
    return s, status_of(head)


def test_websocket_off_and_origin_allow_list(upstream, start_proxy):
    up = upstream(named("a"))
    px = start_proxy(0, "sockmap", config=ws_config(up.port, "origin = https://app.example, http://localhost:5173"))
    assert upgrade(px.port, "/plain", "https://app.example")[1] == 403
    assert upgrade(px.port, "/", None)[1] == 403
    assert upgrade(px.port, "/", "https://evil.example")[1] == 403
    assert upgrade(px.port, "/", "https://app.example.evil")[1] == 403
    s, status = upgrade(px.port, "/", "http://localhost:5173")
    assert status == 101
    s.sendall(b"hi")
    assert recv_exact(s, 2) == b"hi"
    s.close()
    assert len(up.requests) == 1  # refused upgrades never reached the upstream
    assert get(px.port, "/plain") == (200, "a")  # plain HTTP on that route still works


@pytest.mark.parametrize("mode", ["sockmap", "auto", "splice"])
def test_max_tunnels_per_route(upstream, start_proxy, mode):
    up = upstream(named("a"))
    px = start_proxy(0, mode, config=ws_config(up.port, "max_tunnels = 2"))
    t1, s1 = upgrade(px.port)
    t2, s2 = upgrade(px.port)
    assert (s1, s2) == (101, 101)
    assert upgrade(px.port)[1] == 503
    t1.close()
    assert wait_for(lambda: upgrade(px.port)[1] == 101, timeout=5)
    t2.close()


def trusting(cidr, server):
    return one_route_config(server, listener="trusted_proxies = %s" % cidr)


def test_x_forwarded_from_a_trusted_proxy_is_extended(upstream, start_proxy):
    up = upstream(named("a"))
    px = start_proxy(0, "copy", config=trusting("127.0.0.0/8", up.port))
    get(px.port, extra=b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: public.example\r\n")
    fields = parse_head(up.requests[-1])[1]
    assert fields["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    assert fields["x-forwarded-proto"] == ["https"] and fields["x-forwarded-host"] == ["public.example"]


def test_x_forwarded_from_an_untrusted_peer_is_replaced(upstream, start_proxy):
    up = upstream(named("a"))
    px = start_proxy(0, "copy", config=trusting("10.0.0.0/8", up.port))
    get(px.port, extra=b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n")
    fields = parse_head(up.requests[-1])[1]
    assert fields["x-forwarded-for"] == ["127.0.0.1"] and fields["x-forwarded-proto"] == ["http"]


@pytest.mark.parametrize("mode", ["sockmap", "auto", "splice", "copy"])
def test_sighup_reload_keeps_tunnels_and_requests_in_flight(upstream, start_proxy, mode):
    release = threading.Event()

    def slow(conn, head, rest):
        release.wait(10)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")

    a, b, slow_up = upstream(named("a")), upstream(named("b")), upstream(slow)
    px = start_proxy(0, mode, config=one_route_config(a.port) + "[route slow]\npath = /slow\npool = s\n"
                     "[pool s]\nserver = 127.0.0.1:%d\n" % slow_up.port)
    tunnel, _ = open_tunnel(px.port)
    tunnel.sendall(b"before")
    assert recv_exact(tunnel, 6) == b"before"
    pending = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    pending.sendall(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
    assert wait_for(lambda: len(slow_up.requests) == 1)
    px.rewrite_config(one_route_config(b.port))
    px.reload()
    assert get(px.port) == (200, "b")          # new requests follow the new routes
    release.set()
    assert HttpReader(pending).response()[2] == b"slow"  # the request in flight finished
    pending.close()
    tunnel.sendall(b"after")                    # the tunnel through the old pool lives on
    assert recv_exact(tunnel, 5) == b"after"
    # A bad file is refused and the running configuration stays.
    px.rewrite_config("[listener main]\nlisten = 127.0.0.1:{port}\n[route r]\npool = gone\n")
    px.reload(expect="reload refused")
    assert ":3: [route r]: no [pool gone]" in px.read_log()
    assert get(px.port) == (200, "b")
    tunnel.close()


def test_limits_are_configurable(upstream, start_proxy):
    up = upstream(named("a"))
    px = start_proxy(0, "copy", config=one_route_config(
        up.port, global_="max_request_line = 100\nmax_headers = 5\nmax_header_size = 600"))
    assert get(px.port, "/" + "x" * 120)[0] == 414
    assert get(px.port, extra=b"".join(b"X-%d: y\r\n" % i for i in range(5)))[0] == 431
    assert get(px.port, extra=b"X: " + b"y" * 700 + b"\r\n")[0] == 431
    assert get(px.port, extra=b"X: y\r\n") == (200, "a")
    assert len(up.requests) == 1


def test_the_documented_example_is_valid():
    from conftest import ROOT
    example = os.path.join(ROOT, "docs", "wsplice.example.conf")
    r = subprocess.run([WSPLICE, "-t", "-c", example], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(ROOT, "docs", "CONFIG.md")) as f:
        doc = f.read()
    # Every directive the example uses is documented.
    for line in open(example):
        key = line.split(";")[0].split("=")[0].strip()
        if key and not key.startswith("[") and not line.lstrip().startswith(";"):
            assert "`%s`" % key in doc, key


def test_no_retry_once_the_request_was_sent(upstream, start_proxy):
    """A server that took the request and then died may have acted on it:
    the request is not replayed on another server (502 instead)."""
    def dies(conn, head, rest):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    bad, good = upstream(dies), upstream(named("good"))
    px = start_proxy(0, "copy", config=pool_config([bad.port, good.port]))
    status, _ = get(px.port)
    assert status == 502
    assert len(bad.requests) == 1 and good.requests == []
    assert "marked down" not in px.read_log()  # it connected fine: not a health failure
