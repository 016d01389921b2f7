"""Client, wsplice and upstream on three hosts: network namespaces this test
creates, joined by veth pairs, so the sockmap path runs over real (virtual)
NICs instead of loopback. Addresses exist only inside these namespaces.
Also probes native XDP on the proxy's veth (for the XDP guard to come)."""
import contextlib
import json
import os
import re
import subprocess
import time

import pytest

from conftest import NO_BPF, ROOT, WSPLICE, need_bpf, need_sockmap, report
from wsutil import bpf_counter, percpu_sums, wait_for

BENCH = os.path.join(os.path.dirname(WSPLICE), "bench")
INJECTOR = os.path.join(os.path.dirname(WSPLICE), "fault_inject.bpf.o")
XDP_OBJ = os.path.join(os.path.dirname(WSPLICE), "xdp_probe.bpf.o")
pytestmark = pytest.mark.skipif(NO_BPF, reason="WSPLICE_TEST_NO_BPF=1")


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, text=True, check=check)


@pytest.fixture
def hosts():
    tag = "%d" % os.getpid()
    ns = {"client": "wsc-" + tag, "proxy": "wsp-" + tag, "upstream": "wsu-" + tag}
    links = [("client", "c0", "10.77.1.2/24", "fd77:1::2/64", "proxy", "p0", "10.77.1.1/24", "fd77:1::1/64"),
             ("proxy", "p1", "10.77.2.1/24", "fd77:2::1/64", "upstream", "u0", "10.77.2.2/24", "fd77:2::2/64")]
    try:
        for n in ns.values():
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        for a, ifa, addra, addra6, b, ifb, addrb, addrb6 in links:
            sh("ip", "link", "add", ifa + tag, "netns", ns[a], "type", "veth", "peer", "name", ifb + tag,
               "netns", ns[b])
            for host, ifname, addr, addr6 in ((a, ifa, addra, addra6), (b, ifb, addrb, addrb6)):
                sh("ip", "-n", ns[host], "link", "set", ifname + tag, "name", ifname)
                sh("ip", "-n", ns[host], "addr", "add", addr, "dev", ifname)
                # nodad: usable at once, not tentative for a second or two.
                sh("ip", "-n", ns[host], "addr", "add", addr6, "dev", ifname, "nodad")
                sh("ip", "-n", ns[host], "link", "set", ifname, "up")
        sh("ip", "-n", ns["client"], "route", "add", "default", "via", "10.77.1.1")
        sh("ip", "-n", ns["upstream"], "route", "add", "default", "via", "10.77.2.1")
        sh("ip", "-n", ns["client"], "-6", "route", "add", "default", "via", "fd77:1::1")
        sh("ip", "-n", ns["upstream"], "-6", "route", "add", "default", "via", "fd77:2::1")
        yield ns
    finally:
        for n in ns.values():
            sh("ip", "netns", "del", n, check=False)


def in_ns(ns, *args):
    # nsenter switches only the network namespace: the bpffs mounted on
    # the host's /sys/fs/bpf stays visible (ip netns exec remounts /sys).
    return ["nsenter", "--net=/run/netns/" + ns, *args]


@pytest.mark.parametrize("mode", ["sockmap", "auto"])
def test_sockmap_splice_across_veth_hosts_and_native_xdp(hosts, mode):
    need_sockmap()
    pin = "/sys/fs/bpf/wsplice-netns-%d" % os.getpid()
    echo = subprocess.Popen(in_ns(hosts["upstream"], os.path.join(BENCH, "ws_echo"), "9000", "10.77.2.2"),
                            stdout=subprocess.PIPE, text=True)
    proxy = None
    try:
        assert echo.stdout.readline().strip() == "ready"
        proxy = subprocess.Popen(in_ns(hosts["proxy"], WSPLICE, "--listen", "10.77.1.1:8080",
                                       "--upstream", "10.77.2.2:9000", "--mode", mode, "--bpffs", pin),
                                 stderr=subprocess.PIPE, text=True)
        load = os.path.join(BENCH, "ws_load")

        def run_load(*args):
            return sh(*in_ns(hosts["client"], load, "10.77.1.1", "8080", *args)).stdout

        assert wait_for(lambda: sh(*in_ns(hosts["client"], load, "10.77.1.1", "8080", "hs", "0.1"),
                                   check=False).returncode == 0, timeout=5)
        out = run_load("tput", "64")
        assert "verified=1" in out, out
        out = run_load("rtt", "4", "200")
        assert "samples=800" in out, out
        assert bpf_counter(pin, 2) > 100, "the verdict did not carry the veth traffic"

        # Native (driver) XDP on the proxy's client-facing veth.
        r = sh("ip", "-n", hosts["proxy"], "link", "set", "dev", "p0", "xdpdrv", "obj", XDP_OBJ, "sec", "xdp",
               check=False)
        assert r.returncode == 0, "native XDP attach failed: " + r.stderr
        link = sh("ip", "-n", hosts["proxy"], "-d", "link", "show", "dev", "p0").stdout
        assert "xdp " in link or "prog/xdp" in link, link
        out = run_load("tput", "16")
        assert "verified=1" in out, out
        sh("ip", "-n", hosts["proxy"], "link", "set", "dev", "p0", "xdpdrv", "off")
    finally:
        if proxy:
            proxy.terminate()
            assert proxy.wait(5) == 0, proxy.stderr.read()
        echo.terminate()
        echo.wait(5)
    assert not os.path.exists(pin)


def handovers(log):
    """The program's hand-over counters (its .bss, named in the log), as bpftool shows them."""
    m = re.search(r"id (\d+) \(hand-overs", log.read_text())
    assert m, log.read_text()
    out = sh("bpftool", "-j", "map", "dump", "id", m.group(1)).stdout
    return json.loads(out)[0]["formatted"]["value"][".bss"][0]["tc_handovers"]


def express_handovers(pin):
    return json.loads(sh(WSPLICE, "status", "--json", "--bpffs", pin).stdout)["express_handovers"]


# The proxy's listener and the upstream, by family.
ADDRS = {4: ("10.77.1.1", "10.77.1.1:8080", "10.77.2.2", "10.77.2.2:9000"),
         6: ("fd77:1::1", "[fd77:1::1]:8080", "fd77:2::2", "[fd77:2::2]:9000")}


@contextlib.contextmanager
def express_proxy(hosts, tmp_path, family=4, timeout=60, settle_ms="200", local_upstream=False):
    """ws_echo on the upstream host (local_upstream: on the proxy host's
    loopback address), wsplice --mode tcsplice on the proxy host; yields
    run_load(*args) (ws_load on the client host, each tunnel quiet for
    settle_ms after its upgrade so that it goes express), the pin directory
    and the tc_counters map's id."""
    need_bpf()
    listen_host, listen, up_host, up = ADDRS[family]
    if local_upstream:
        up_host, up = {4: ("127.0.0.1", "127.0.0.1:9000"), 6: ("::1", "[::1]:9000")}[family]
    pin = "/sys/fs/bpf/wsplice-netns-x%d" % os.getpid()
    log = tmp_path / "wsplice.log"
    echo = subprocess.Popen(in_ns(hosts["proxy" if local_upstream else "upstream"], os.path.join(BENCH, "ws_echo"),
                                  "9000", up_host), stdout=subprocess.PIPE, text=True)
    proxy = None
    try:
        assert echo.stdout.readline().strip() == "ready"
        with open(log, "w") as f:
            proxy = subprocess.Popen(in_ns(hosts["proxy"], WSPLICE, "--listen", listen, "--upstream", up, "--mode",
                                           "tcsplice", "--bpffs", pin), stderr=f)
        load = os.path.join(BENCH, "ws_load")
        env = dict(os.environ, WS_LOAD_SETTLE_MS=settle_ms)

        def run_load(*args, check=True, wait=False):
            cmd = in_ns(hosts["client"], load, listen_host, "8080", *args)
            if wait:
                return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            return subprocess.run(cmd, capture_output=True, text=True, env=env, check=check, timeout=timeout)

        assert wait_for(lambda: run_load("hs", "0.1", check=False).returncode == 0, timeout=5), log.read_text()
        text = log.read_text()
        if "express lane: no tcx here" in text:
            pytest.skip("no tcx (Linux 6.6+): the express lane covers lo only")
        assert re.search(r"express lane: also on (p0, p1|p1, p0) ", text), text
        counters = int(re.search(r"id (\d+) \(tc_counters\)", text).group(1))
        yield run_load, pin, counters
    finally:
        if proxy:
            proxy.terminate()
            assert proxy.wait(5) == 0, log.read_text()
        echo.terminate()
        echo.wait(5)
    assert not os.path.exists(pin)


def test_express_lane_across_veth_hosts(hosts, tmp_path):
    """The express lane where the legs are devices: the client's segments
    come in on p0 and go into p1's peer, the upstream's the other way
    (bpf_redirect_peer: both are veths into other namespaces), and the guard on each egress keeps the frozen
    sockets quiet. Every tunnel goes express, the tc program counts their
    bytes, and the streams arrive intact."""
    with express_proxy(hosts, tmp_path) as (run_load, pin, counters):
        before = express_handovers(pin)
        out = run_load("tput", "64").stdout
        assert "verified=1" in out, out
        out = run_load("rtt", "4", "200").stdout
        assert "samples=800" in out, out
        # tput's tunnel and rtt's 4, each express after its settle.
        assert express_handovers(pin) - before >= 5, sh(WSPLICE, "status", "--bpffs", pin).stdout
        # The bytes crossed the tc program: nearly all of tput's 64 MiB each
        # way (a tunnel whose hand-over came after its first frame moved
        # that frame on the relay).
        sums = percpu_sums(counters)
        assert sums[1] >= 2 * 60 << 20, "tc_counters %s; %s" % (sums, sh(WSPLICE, "status", "--bpffs", pin).stdout)
        # Both legs are veths into other namespaces: every hand-over sends
        # straight into the peers' ingress (bpf_redirect_peer).
        h = handovers(tmp_path / "wsplice.log")
        assert h["to_peer"] == h["done"] and h["done"] >= 5, h


@pytest.mark.parametrize("family,localnet", [(4, True), (6, False), (4, False)],
                         ids=["4", "6", "4-lo-refuses-martians"])
def test_express_lane_from_a_device_to_a_local_upstream(hosts, tmp_path, family, localnet):
    """The usual deployment: clients come in on a device, the application
    listens on the proxy host's loopback address. The client's segments go
    from p0's ingress into lo's (their link-layer destination zeroed, and
    marked so that the program on lo passes them), the upstream's from lo's
    ingress out of p0 (bpf_redirect_neigh); the upstream connection's SYN
    told the upstream the client's MSS, so its segments fit p0.

    IPv4's input takes such a segment on lo for a martian (a local source,
    a 127/8 destination) unless lo has accept_local and route_localnet: the
    tunnel then stays on the relay, intact, and one line says why."""
    if localnet:
        sh("ip", "netns", "exec", hosts["proxy"], "sysctl", "-qw", "net.ipv4.conf.lo.route_localnet=1",
           "net.ipv4.conf.lo.accept_local=1")
    with express_proxy(hosts, tmp_path, family, local_upstream=True) as (run_load, pin, counters):
        before = express_handovers(pin)
        out = run_load("tput", "64").stdout
        assert "verified=1" in out, out
        out = run_load("rtt", "4", "200").stdout
        assert "samples=800" in out, out
        status = sh(WSPLICE, "status", "--bpffs", pin).stdout
        if family == 4 and not localnet:
            assert express_handovers(pin) == before, status
            assert "needs net.ipv4.conf.lo.accept_local=1" in (tmp_path / "wsplice.log").read_text()
            return
        assert express_handovers(pin) - before >= 5, status
        sums = percpu_sums(counters)
        assert sums[1] >= 2 * 60 << 20, "tc_counters %s; %s" % (sums, status)


def test_express_lane_on_a_device_made_after_the_start(hosts, tmp_path):
    """A device made while the daemon runs (a container's veth) gets the
    program too: the upstream's link is deleted and made again after the
    start, with a new ifindex, and its tunnels still go express. The
    client's device goes into a bridge and out again meanwhile, which
    must not take its programs."""
    with express_proxy(hosts, tmp_path) as (run_load, pin, counters):
        log = tmp_path / "wsplice.log"
        sh("ip", "-n", hosts["proxy"], "link", "del", "p1")
        assert wait_for(lambda: "express lane: p1 (ifindex" in log.read_text(), timeout=5), log.read_text()
        # Made in the namespaces themselves, with the names they keep.
        sh("ip", "-n", hosts["proxy"], "link", "add", "p1", "type", "veth", "peer", "name", "u0", "netns",
           hosts["upstream"])
        for host, dev, addr in (("proxy", "p1", "10.77.2.1/24"), ("upstream", "u0", "10.77.2.2/24")):
            sh("ip", "-n", hosts[host], "addr", "add", addr, "dev", dev)
            sh("ip", "-n", hosts[host], "link", "set", dev, "up")
        sh("ip", "-n", hosts["upstream"], "route", "add", "default", "via", "10.77.2.1")
        assert wait_for(lambda: "express lane: now also on p1 (a device made after the start)" in log.read_text(),
                        timeout=5), log.read_text()
        # A port leaving a bridge is an RTM_DELLINK too, from the bridge
        # (AF_BRIDGE), about a device that stays: p0 keeps its programs.
        # A kernel without the bridge module (make vmtest's 6.12 guest)
        # skips this step, and says so.
        if sh("ip", "-n", hosts["proxy"], "link", "add", "brt", "type", "bridge", check=False).returncode == 0:
            sh("ip", "-n", hosts["proxy"], "link", "set", "p0", "master", "brt")
            sh("ip", "-n", hosts["proxy"], "link", "set", "p0", "nomaster")
            sh("ip", "-n", hosts["proxy"], "link", "del", "brt")
            assert wait_for(lambda: "express lane: brt (ifindex" in log.read_text(), timeout=5), log.read_text()
            assert "express lane: p0 (ifindex" not in log.read_text(), log.read_text()
        else:
            report("device made after the start: no bridge devices on this kernel, the bridge-port step skipped")
        before, bytes_before = express_handovers(pin), percpu_sums(counters)[1]
        assert wait_for(lambda: run_load("hs", "0.1", check=False).returncode == 0, timeout=5), log.read_text()
        out = run_load("tput", "64").stdout
        assert "verified=1" in out, out
        out = run_load("rtt", "4", "200").stdout
        assert "samples=800" in out, out
        assert express_handovers(pin) - before >= 5, sh(WSPLICE, "status", "--bpffs", pin).stdout + log.read_text()
        assert percpu_sums(counters)[1] - bytes_before >= 2 * 60 << 20


# Links whose MTU is 1280 instead of 1500: "client" is c0-p0, "upstream"
# p1-u0. Each side's peers then advertise MSS 1240 (IPv4) or 1220 (IPv6),
# the other side's 1460 or 1440.
SMALL_LINK = {"client": (("client", "c0"), ("proxy", "p0")), "upstream": (("proxy", "p1"), ("upstream", "u0"))}


@pytest.mark.parametrize("family,small", [(4, None), (6, None), (4, "upstream"), (6, "client"), (4, "local"),
                                          (6, "busy")],
                         ids=["4", "6", "4-mss-upstream-1280", "6-mss-client-1280", "4-local-upstream", "6-busy"])
def test_express_lane_across_lossy_veth_hosts(hosts, tmp_path, family, small):
    """Integrity under faults where the legs are devices: the client's and
    the upstream's veth egress drop about 1 % of TCP segments and send
    about 0.5 % twice (bpf/fault_inject.bpf.c), so the express lane
    translates retransmissions, duplicates and SACKs both ways. 10 tunnels
    of 128 MiB each way, every byte compared, all 10 express.

    With one link's MTU at 1280, the legs' MSS differ, and the segments
    cross unchanged: the hand-over needs both legs clamped. A small
    upstream link takes the listener's clamp (the client is told 1240);
    a small client link takes the upstream connection's (the upstream is
    told the client's). Without them every tunnel stays on the relay.

    "local": the upstream on the proxy host's 127.0.0.1, the injector on the
    client's c0 and the proxy host's lo (what the upstream sends).

    "busy": no quiet moment after the upgrade, and 512 MiB each way: each
    tunnel drains into the express lane (strip-freeze), on devices, where
    the guard on each egress lets the draining sockets' own segments by."""
    local, busy = small == "local", small == "busy"
    for host, dev in SMALL_LINK.get(small, ()):
        sh("ip", "-n", hosts[host], "link", "set", "dev", dev, "mtu", "1280")
    if local:
        sh("ip", "netns", "exec", hosts["proxy"], "sysctl", "-qw", "net.ipv4.conf.lo.route_localnet=1",
           "net.ipv4.conf.lo.accept_local=1")
    injector_maps = []
    for host, dev in (("client", "c0"), ("proxy", "lo") if local else ("upstream", "u0")):
        sh("ip", "netns", "exec", hosts[host], "tc", "qdisc", "add", "dev", dev, "clsact")
        sh("ip", "netns", "exec", hosts[host], "tc", "filter", "add", "dev", dev, "egress", "bpf", "direct-action",
           "obj", INJECTOR, "sec", "tc")
        shown = sh("ip", "netns", "exec", hosts[host], "tc", "filter", "show", "dev", dev, "egress").stdout
        prog_id = int(shown.split(" id ")[1].split()[0])
        injector_maps += json.loads(sh("bpftool", "-j", "prog", "show", "id", str(prog_id)).stdout)["map_ids"]
    # A lost request or 101 comes again after an RTO: a longer quiet
    # moment (test_faults.py, SETTLE_LOSSY_MS).
    with express_proxy(hosts, tmp_path, family, timeout=300, settle_ms="0" if busy else "600",
                       local_upstream=local) as (run_load, pin, counters):
        before = express_handovers(pin)
        failures = []
        for rep in range(5):
            loads = [run_load("tput", "512" if busy else "128", wait=True) for _ in range(2)]
            for p in loads:
                out, err = p.communicate(timeout=300)
                if p.returncode != 0 or "verified=1" not in out:
                    failures.append("rep %d: %s %s" % (rep, out.strip(), err.strip()))
        express = express_handovers(pin) - before
        if small in SMALL_LINK:
            want = "advertises MSS %d, so a client's segments fit the smallest device's MTU, 1280" % {4: 1240, 6: 1220}[family]
            assert want in (tmp_path / "wsplice.log").read_text()
        faults = [sum(percpu_sums(m)[k] for m in injector_maps) for k in range(3)]
        events = percpu_sums(counters)
        line = ("faults [tcsplice, veth, IPv%d]: %d segments seen, %d dropped, %d duplicated; %d of 10 tunnels "
                "went express%s; the tc program translated %d segments (%d payload bytes), dropped %d from frozen "
                "sockets" % (family, faults[0], faults[1], faults[2], express,
                             ", the upstream on the proxy's lo" if local else
                             ", each through a drain (%d segments stripped)" % events[12] if busy else
                             ", the %s link's MTU 1280" % small if small else "", events[0], events[1], events[3]))
        report(line)
        assert faults[1] > 0.002 * faults[0] and faults[2] > 0.001 * faults[0], line
        failures += ["only %d of 10 tunnels went express" % express] if express < 10 else []
        failures += ["no drain: nothing stripped"] if busy and not events[12] else []
        assert not failures, "\n".join(failures)
