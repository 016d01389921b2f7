"""Prometheus metrics (--metrics ADDR:PORT): exact byte counts in every
engine, the tunnel gauges, upgrade outcomes by reason, counters that survive
a reload, the text format as promtool and a real Prometheus read it."""
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import json

import pytest

from conftest import WSPLICE, free_port
from wsutil import (key_of, one_route_config, open_tunnel, recv_exact, recv_head, recv_until_eof, status_of,
                    switching_protocols, upgrade_request, wait_for)

SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$')


def scrape_text(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def scrape(port):
    """Every series as {'name{labels}': value}."""
    out = {}
    for line in scrape_text(port).splitlines():
        if line.startswith("#") or not line:
            continue
        m = SERIES.match(line)
        assert m, "not a series line: %r" % line
        out[m.group(1)] = float(m.group(2))
    return out


def tunnel_bytes(m, direction):
    """Everything delivered in a direction: what the daemon wrote plus what the verdict redirected."""
    d = 'direction="%s"' % direction
    return (m["wsplice_tunnel_userspace_bytes_total{%s}" % d] +
            m.get("wsplice_tunnel_kernel_bytes_total{%s}" % d, 0))


def engine_of(px):
    return "sockmap" if px.kernel else "copy" if px.mode == "auto" else px.mode


def test_byte_counters_are_exact_during_and_after_a_transfer(upstream, start_proxy, mode):
    c2u, u2c = os.urandom(300_000), os.urandom(500_000)
    h1, h2 = 100_000, 200_000
    got = {}

    def handler(conn, head, rest):
        conn.sendall(switching_protocols(key_of(head)))
        data = rest + recv_exact(conn, h1 - len(rest))
        conn.sendall(u2c[:h2])
        data += recv_exact(conn, len(c2u) - h1)
        conn.sendall(u2c[h2:])
        conn.shutdown(socket.SHUT_WR)
        got["up"] = data + recv_until_eof(conn)

    up = upstream(handler)
    mport = free_port()
    px = start_proxy(up.port, mode, extra=("--metrics", "127.0.0.1:%d" % mport))
    eng = 'wsplice_tunnels_active{engine="%s"}' % engine_of(px)
    s, rest = open_tunnel(px.port)
    assert rest == b""
    # A worker counts its tunnel right after it sent the 101; the master
    # answering the scrape may be a moment ahead of it.
    assert wait_for(lambda: scrape(mport)[eng] == 1, timeout=2), "after open: %s" % scrape(mport)[eng]
    m = scrape(mport)
    assert sum(v for k, v in m.items() if k.startswith("wsplice_tunnels_active")) == 1
    assert m["wsplice_upgrades_attempted_total"] == 1 and m["wsplice_upgrades_succeeded_total"] == 1
    assert m['wsplice_requests_total{class="1xx"}'] == 1
    # Half way: each peer has every byte sent so far, so the counters must say exactly that.
    s.sendall(c2u[:h1])
    assert recv_exact(s, h2) == u2c[:h2]
    # An express tunnel (tcsplice may hand it over already, on a slow
    # machine) counts what the receiver acknowledged: exact once its
    # delayed ACK came.
    def counts():
        m = scrape(mport)
        return tunnel_bytes(m, "client_to_upstream"), tunnel_bytes(m, "upstream_to_client")
    assert wait_for(lambda: counts() == (h1, h2), timeout=2), counts()
    # In tcsplice the rest goes through the tc program, and its bytes
    # are the kernel's.
    px.wait_express()
    s.sendall(c2u[h1:])
    assert recv_exact(s, len(u2c) - h2) == u2c[h2:]
    assert recv_until_eof(s) == b""
    s.close()
    assert wait_for(lambda: got.get("up") is not None, timeout=10) and got["up"] == c2u
    assert wait_for(lambda: scrape(mport)[eng] == 0, timeout=5), "the tunnel gauge did not drop after close"
    m = scrape(mport)
    assert (tunnel_bytes(m, "client_to_upstream"), tunnel_bytes(m, "upstream_to_client")) == (len(c2u), len(u2c))
    assert m['wsplice_tunnels_closed_total{cause="fin"}'] == 1
    assert m["wsplice_handshake_seconds_count"] == 1
    # The fixture's readiness probe and the tunnel.
    assert m["wsplice_connections_accepted_total"] == 2
    if mode == "tcsplice":
        # The hand-over comes at a quiet moment: after the half-way
        # exchange, or on a slow machine (make vmtest's emulated one,
        # where 20 ms pass while the test scrapes or the upstream's
        # handler wakes) already after the 101, or after the client's
        # first part before the upstream answered it. Each is exact.
        kernel = (m['wsplice_tunnel_kernel_bytes_total{direction="client_to_upstream"}'],
                  m['wsplice_tunnel_kernel_bytes_total{direction="upstream_to_client"}'])
        assert kernel in ((len(c2u) - h1, len(u2c) - h2), (len(c2u), len(u2c)), (len(c2u) - h1, len(u2c))), \
            "the express lane's bytes are not the kernel's: %s" % (kernel,)
        assert m['wsplice_tunnel_kernel_packets_total{direction="upstream_to_client"}'] > 0
        assert m['wsplice_express_handovers_total'] == 1
    if px.kernel:
        k = m['wsplice_tunnel_kernel_bytes_total{direction="client_to_upstream"}']
        assert k > 0, "the kernel moved none of it"
        assert m['wsplice_tunnel_kernel_packets_total{direction="client_to_upstream"}'] > 0
        assert m["wsplice_sockmap_insertions_total"] == 1


def _answer(status_line, extra=b""):
    def handler(conn, head, rest):
        conn.sendall(b"HTTP/1.1 " + status_line + b"\r\nContent-Length: 0\r\n" + extra + b"\r\n")
        recv_until_eof(conn, timeout=2)
    return handler


def _request(port, req):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req)
        head, _ = recv_head(s)
        return status_of(head)


def test_upgrade_outcomes_and_statuses_are_counted_once_each(upstream, start_proxy):
    """Every refusal reason the shortcut configuration can meet, each once."""
    declines = upstream(_answer(b"426 Upgrade Required", b"Connection: close\r\n"))
    mport = free_port()
    px = start_proxy(declines.port, "copy", extra=("--metrics", "127.0.0.1:%d" % mport))
    ws, _ = upgrade_request()
    assert _request(px.port, ws) == 426  # the upstream declines: upstream_declined, 4xx
    no_key = ws.replace(b"Sec-WebSocket-Key", b"X-Not-A-Key")
    assert _request(px.port, no_key) == 400  # not a valid upgrade: invalid_request, 4xx
    m = scrape(mport)
    assert m["wsplice_upgrades_attempted_total"] == 2
    assert m['wsplice_upgrades_refused_total{reason="upstream_declined"}'] == 1
    assert m['wsplice_upgrades_refused_total{reason="invalid_request"}'] == 1
    assert m['wsplice_requests_total{class="4xx"}'] == 2
    assert m["wsplice_upgrades_succeeded_total"] == 0

    bad_accept = upstream(lambda conn, head, rest: conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"))
    mport2 = free_port()
    px2 = start_proxy(bad_accept.port, "copy", extra=("--metrics", "127.0.0.1:%d" % mport2))
    assert _request(px2.port, ws) == 502
    dead = free_port()  # nothing listens there
    mport3 = free_port()
    px3 = start_proxy(dead, "copy", extra=("--metrics", "127.0.0.1:%d" % mport3))
    assert _request(px3.port, ws) == 502
    m2, m3 = scrape(mport2), scrape(mport3)
    assert m2['wsplice_upgrades_refused_total{reason="bad_accept"}'] == 1
    assert m2['wsplice_requests_total{class="5xx"}'] == 1
    assert m3['wsplice_upgrades_refused_total{reason="upstream_unavailable"}'] == 1
    assert m3['wsplice_upstream_connect_failures_total{server="127.0.0.1:%d"}' % dead] == 1
    for m in (m2, m3):
        refused = sum(v for k, v in m.items() if k.startswith("wsplice_upgrades_refused_total"))
        assert refused == 1 and m["wsplice_upgrades_attempted_total"] == 1


def test_counters_survive_a_reload(upstream, start_proxy):
    up = upstream(lambda conn, head, rest: (conn.sendall(switching_protocols(key_of(head))), recv_until_eof(conn)))
    mport = free_port()
    config = one_route_config(up.port, global_="mode = copy\nmetrics = 127.0.0.1:%d" % mport)
    px = start_proxy(0, "copy", config=config)
    s, _ = open_tunnel(px.port)
    s.close()
    assert wait_for(lambda: scrape(mport)['wsplice_tunnels_closed_total{cause="fin"}'] == 1)
    px.reload()
    m = scrape(mport)
    assert m["wsplice_upgrades_succeeded_total"] == 1 and m['wsplice_tunnels_closed_total{cause="fin"}'] == 1


@pytest.mark.parametrize("value, expect", [("nowhere", "expected"), ("127.0.0.1:99999", "port")])
def test_a_bad_metrics_address_is_a_clear_error(value, expect):
    r = subprocess.run([WSPLICE, "--listen", "127.0.0.1:%d" % free_port(), "--upstream", "127.0.0.1:1",
                        "--metrics", value], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "wsplice: " in r.stderr and expect in r.stderr, r.stderr


def test_a_metrics_port_in_use_stops_the_start_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run([WSPLICE, "--listen", "127.0.0.1:%d" % free_port(), "--upstream", "127.0.0.1:1",
                            "--mode", "copy", "--metrics", "127.0.0.1:%d" % port],
                           capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "metrics: cannot listen on 127.0.0.1:%d" % port in r.stderr, r.stderr


def test_the_endpoint_answers_only_get_on_metrics(start_proxy):
    mport = free_port()
    start_proxy(free_port(), "copy", extra=("--metrics", "127.0.0.1:%d" % mport))
    assert _request(mport, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n") == 404
    assert _request(mport, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n") == 405
    assert _request(mport, b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n") == 400
    assert _request(mport, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n") == 200


PROMTOOL, PROMETHEUS = shutil.which("promtool"), shutil.which("prometheus")


@pytest.mark.skipif(not PROMTOOL, reason="promtool missing (make deps installs Debian's prometheus)")
def test_promtool_accepts_the_exposition(upstream, start_proxy, kmode):
    up = upstream(lambda conn, head, rest: (conn.sendall(switching_protocols(key_of(head)) + b"x"),
                                            recv_until_eof(conn)))
    mport = free_port()
    px = start_proxy(up.port, kmode, extra=("--metrics", "127.0.0.1:%d" % mport))
    s, rest = open_tunnel(px.port)
    if not rest:
        recv_exact(s, 1)
    s.sendall(b"y")  # the first byte from the client puts the tunnel in the kernel
    text = scrape_text(mport)
    s.close()
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "wsplice_tunnel_kernel_bytes_total" in text and "wsplice_bpf_events_total" in text


@pytest.mark.skipif(not PROMETHEUS, reason="prometheus missing (make deps installs Debian's prometheus)")
def test_a_real_prometheus_scrapes_it(upstream, start_proxy):
    up = upstream(lambda conn, head, rest: (conn.sendall(switching_protocols(key_of(head))), recv_until_eof(conn)))
    mport, pport = free_port(), free_port()
    px = start_proxy(up.port, "copy", extra=("--metrics", "127.0.0.1:%d" % mport))
    s, _ = open_tunnel(px.port)
    work = tempfile.mkdtemp(prefix="wsplice-prometheus-")
    with open(os.path.join(work, "prometheus.yml"), "w") as f:
        f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: wsplice\n"
                "    static_configs:\n      - targets: ['127.0.0.1:%d']\n" % mport)
    prom = subprocess.Popen([PROMETHEUS, "--config.file", os.path.join(work, "prometheus.yml"),
                             "--storage.tsdb.path", os.path.join(work, "data"),
                             "--web.listen-address", "127.0.0.1:%d" % pport],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def query(q):
        url = "http://127.0.0.1:%d/api/v1/query?query=%s" % (pport, urllib.parse.quote(q))
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                res = json.load(r)["data"]["result"]
            return float(res[0]["value"][1]) if res else None
        except OSError:
            return None

    try:
        assert wait_for(lambda: query('up{job="wsplice"}') == 1, timeout=60), prom.stderr
        assert wait_for(lambda: query('wsplice_tunnels_active{engine="copy"}') == 1, timeout=20)
        assert query("wsplice_upgrades_succeeded_total") == 1
    finally:
        s.close()
        prom.terminate()
        prom.wait(20)
        shutil.rmtree(work, ignore_errors=True)


def test_an_upgrade_whose_client_resets_is_counted_once(upstream, start_proxy):
    seen = []

    def silent(conn, head, rest):
        seen.append(True)
        recv_until_eof(conn, timeout=5)

    up = upstream(silent)
    mport = free_port()
    px = start_proxy(up.port, "copy", extra=("--metrics", "127.0.0.1:%d" % mport))
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    s.sendall(upgrade_request()[0])
    assert wait_for(lambda: seen, timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    assert wait_for(lambda: scrape(mport)['wsplice_upgrades_refused_total{reason="client_gone"}'] == 1, timeout=5)
    m = scrape(mport)
    refused = sum(v for k, v in m.items() if k.startswith("wsplice_upgrades_refused_total"))
    assert (m["wsplice_upgrades_attempted_total"], m["wsplice_upgrades_succeeded_total"], refused) == (1, 0, 1)


def test_metrics_from_the_command_line_over_a_file(upstream, start_proxy):
    """-c FILE --metrics ADDR: the command line's address is resolved too."""
    up = upstream(lambda conn, head, rest: recv_until_eof(conn))
    mport = free_port()
    start_proxy(0, "copy", config=one_route_config(up.port), extra=("--metrics", "127.0.0.1:%d" % mport))
    assert "wsplice_connections_accepted_total" in scrape_text(mport)


def test_idle_connections_cannot_starve_a_scrape(start_proxy):
    """At most 16 scrape connections stay open; the oldest give way."""
    mport = free_port()
    px = start_proxy(free_port(), "copy", extra=("--metrics", "127.0.0.1:%d" % mport))
    idle = [socket.create_connection(("127.0.0.1", mport), timeout=5) for _ in range(40)]
    try:
        assert "wsplice_connections_accepted_total" in scrape_text(mport)
        assert px.proc.poll() is None
    finally:
        for s in idle:
            s.close()
