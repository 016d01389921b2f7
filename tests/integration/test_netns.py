"""Client, wsplice and upstream on three hosts: network namespaces this test
creates, joined by veth pairs, so the sockmap path runs over real (virtual)
NICs instead of loopback. Addresses exist only inside these namespaces.
Also probes native XDP on the proxy's veth (for the XDP guard to come)."""
import os
import subprocess
import time

import pytest

from conftest import NO_BPF, ROOT, WSPLICE, need_sockmap
from wsutil import bpf_counter, wait_for

BENCH = os.path.join(os.path.dirname(WSPLICE), "bench")
XDP_OBJ = os.path.join(os.path.dirname(WSPLICE), "xdp_probe.bpf.o")
pytestmark = pytest.mark.skipif(NO_BPF, reason="WSPLICE_TEST_NO_BPF=1")


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, text=True, check=check)


@pytest.fixture
def hosts():
    tag = "%d" % os.getpid()
    ns = {"client": "wsc-" + tag, "proxy": "wsp-" + tag, "upstream": "wsu-" + tag}
    links = [("client", "c0", "10.77.1.2/24", "proxy", "p0", "10.77.1.1/24"),
             ("proxy", "p1", "10.77.2.1/24", "upstream", "u0", "10.77.2.2/24")]
    try:
        for n in ns.values():
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        for a, ifa, addra, b, ifb, addrb in links:
            sh("ip", "link", "add", ifa + tag, "netns", ns[a], "type", "veth", "peer", "name", ifb + tag,
               "netns", ns[b])
            for host, ifname, addr in ((a, ifa, addra), (b, ifb, addrb)):
                sh("ip", "-n", ns[host], "link", "set", ifname + tag, "name", ifname)
                sh("ip", "-n", ns[host], "addr", "add", addr, "dev", ifname)
                sh("ip", "-n", ns[host], "link", "set", ifname, "up")
        sh("ip", "-n", ns["client"], "route", "add", "default", "via", "10.77.1.1")
        sh("ip", "-n", ns["upstream"], "route", "add", "default", "via", "10.77.2.1")
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
