"""max_tunnels: the process-wide cap on open tunnels. An upgrade beyond it is
a 503 and everything else keeps serving; the kernel's maps are sized to it."""
import json
import os
import socket
import subprocess

from conftest import free_port
from test_metrics import scrape
from wsutil import echo_after_101, one_route_config, open_tunnel, recv_exact, recv_head, status_of, upgrade_request
from wsutil import wait_for


def test_beyond_max_tunnels_is_a_503_and_the_rest_keeps_serving(upstream, start_proxy, mode):
    up = upstream(echo_after_101)
    mport = free_port()
    px = start_proxy(0, mode, config=one_route_config(
        up.port, global_="max_tunnels = 3\nmetrics = 127.0.0.1:%d" % mport))
    open_ones = []
    for _ in range(3):
        s, _ = open_tunnel(px.port)
        s.sendall(b"x")  # a first byte: a sockmap tunnel enters the kernel's maps
        assert recv_exact(s, 1) == b"x"
        open_ones.append(s)
    with socket.create_connection(("127.0.0.1", px.port), timeout=5) as s:
        s.sendall(upgrade_request()[0])
        head, _ = recv_head(s)
    assert status_of(head) == 503, head
    for s in open_ones:  # the open ones are untouched
        s.sendall(b"y")
        assert recv_exact(s, 1) == b"y"
    open_ones.pop().close()
    active = lambda: sum(v for k, v in scrape(mport).items() if k.startswith("wsplice_tunnels_active"))
    assert wait_for(lambda: active() == 2, timeout=5)
    s, _ = open_tunnel(px.port)  # room again
    open_ones.append(s)
    m = scrape(mport)
    assert m['wsplice_upgrades_refused_total{reason="max_tunnels"}'] == 1
    assert m['wsplice_requests_total{class="5xx"}'] == 1
    if px.kernel:
        sizes = {}
        for name in ("tunnels", "sock_links", "target_map", "verdict_map"):
            out = subprocess.run(["bpftool", "-j", "map", "show", "pinned", os.path.join(px.pin_dir, name)],
                                 capture_output=True, text=True, check=True).stdout
            sizes[name] = json.loads(out)["max_entries"]
        assert sizes == {"tunnels": 3, "sock_links": 6, "target_map": 6, "verdict_map": 6}, sizes
    for s in open_ones:
        s.close()
