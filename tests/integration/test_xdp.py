"""The XDP guard in front of the listener ports (issue #12): two client
hosts (network namespaces) joined by veth to the proxy's, native XDP on the
proxy's veths. A denied source cannot connect while the other can; a
flooding source's SYNs are cut to its rate while the other's handshakes go
through; IPv6 as IPv4; other traffic passes untouched; the interfaces are
left clean, and a second instance cannot take them over."""
import json
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import WSPLICE
from wsutil import exited, wait_for

BENCH = os.path.join(os.path.dirname(WSPLICE), "bench")

# One upgrade through the proxy from inside a client namespace; prints the
# status line. Bounded: a dropped SYN is a timeout, not a hang.
UPGRADE = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
if len(sys.argv) > 4:  # a destination-options header before TCP (PadN)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, b"\0\0\x01\x04\0\0\0\0")
s.settimeout(float(sys.argv[3]))
s.connect((sys.argv[1], int(sys.argv[2])))
# ws_echo answers the RFC 6455 example key only.
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
print(s.recv(12).decode())
"""

# A bounded SYN flood from one source: N non-blocking connects at once (each
# a SYN from its own port), then how many were answered within the window.
FLOOD = r"""
import select, socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
socks = []
for _ in range(int(sys.argv[3])):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setblocking(False)
    s.connect_ex((sys.argv[1], int(sys.argv[2])))
    socks.append(s)
time.sleep(float(sys.argv[4]))
_, w, _ = select.select([], socks, [], 0)
print(sum(1 for s in w if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0))
"""


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=60)


def in_ns(ns, *args):
    return ["nsenter", "--net=/run/netns/" + ns, *args]


@pytest.fixture
def hosts():
    """Clients a (10.78.1.2, fd78:1::2) and b (10.78.2.2, fd78:2::2), each
    on a veth to the proxy (pa, pb)."""
    tag = "%d" % os.getpid()
    ns = {"a": "wxa-" + tag, "b": "wxb-" + tag, "proxy": "wxp-" + tag}
    try:
        for n in ns.values():
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        for c, net in (("a", 1), ("b", 2)):
            sh("ip", "link", "add", "c" + tag, "netns", ns[c], "type", "veth", "peer", "name", "p" + c + tag,
               "netns", ns["proxy"])
            for host, tmp, ifname, last in ((c, "c" + tag, "eth0", 2), ("proxy", "p" + c + tag, "p" + c, 1)):
                sh("ip", "-n", ns[host], "link", "set", tmp, "name", ifname)
                sh("ip", "-n", ns[host], "addr", "add", "10.78.%d.%d/24" % (net, last), "dev", ifname)
                sh("ip", "-n", ns[host], "addr", "add", "fd78:%d::%d/64" % (net, last), "dev", ifname, "nodad")
                sh("ip", "-n", ns[host], "link", "set", ifname, "up")
        yield ns
    finally:
        for n in ns.values():
            sh("ip", "netns", "del", n, check=False)


class Guarded:
    """wsplice in the proxy namespace on [::]:8080 (both families), an echo
    server behind it on 9000 (reachable directly too: not a listener port)."""

    def __init__(self, hosts, tmp_path, extra_global="", args=()):
        self.hosts = hosts
        self.pin = "/sys/fs/bpf/wsx-%d" % os.getpid()
        self.conf = tmp_path / "wsplice.conf"
        self.metrics_port = 9100
        self.extra = extra_global
        self.write_config(extra_global)
        self.echo = subprocess.Popen(in_ns(hosts["proxy"], os.path.join(BENCH, "ws_echo"), "9000", "0.0.0.0"),
                                     stdout=subprocess.PIPE, text=True)
        assert self.echo.stdout.readline().strip() == "ready"
        self.log = open(tmp_path / "wsplice.log", "w+")
        self.proc = subprocess.Popen(in_ns(hosts["proxy"], WSPLICE, "-c", str(self.conf), *args),
                                     stderr=self.log)

    def write_config(self, extra_global):
        self.conf.write_text("[global]\nbpffs = %s\nmetrics = 127.0.0.1:%d\nworkers = 2\n%s\n"
                             "[listener main]\nlisten = [::]:8080\n[pool p]\nserver = 127.0.0.1:9000\n"
                             "[route r]\npool = p\n" % (self.pin, self.metrics_port, extra_global))

    def read_log(self):
        with open(self.log.name) as f:
            return f.read()

    def started(self):
        return wait_for(lambda: "listening" in self.read_log() or "configuration" in self.read_log()
                        or self.proc.poll() is not None, timeout=10) and self.proc.poll() is None

    def upgrade(self, client, addr, timeout=1.5, *extra):
        r = sh(*in_ns(self.hosts[client], "python3", "-c", UPGRADE, addr, "8080", str(timeout), *extra),
               check=False)
        return r.returncode == 0 and r.stdout.startswith("HTTP/1.1 101")

    def refused(self, client, addr, *extra):
        """No upgrade, and because the guard dropped it (its counter rose),
        not for any other reason."""
        before = self.stats()["denied"]
        return not self.upgrade(client, addr, 1.5, *extra) and self.stats()["denied"] > before

    def deny(self, *args):
        return sh(WSPLICE, "deny", *args, "--bpffs", self.pin, check=False)

    def scrape(self):
        return sh(*in_ns(self.hosts["proxy"], "python3", "-c",
                         "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1]).read().decode(), end='')",
                         "http://127.0.0.1:%d/metrics" % self.metrics_port)).stdout

    def stats(self):
        stats = {}
        for line in self.scrape().splitlines():
            if line.startswith("wsplice_xdp_packets_total{"):
                stats[line.split('"')[1]] = int(line.split()[-1])
        return stats

    def stop(self):
        """The exit status; whatever happens, nothing is left running."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            return "still running after SIGTERM"
        finally:
            for p in (self.proc, self.echo):
                if p.poll() is None:
                    p.kill()
                p.wait(5)


UDP_ECHO = r"""
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 8080))
s.settimeout(5)
s.sendto(*s.recvfrom(100))
"""

UDP_SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"udp", (sys.argv[1], 8080))
print(s.recv(100).decode())
"""


def udp_echoed(hosts, addr):
    """UDP to the listener's port number, from client a: not TCP, so the
    guard passes it whatever a's standing."""
    echo = subprocess.Popen(in_ns(hosts["proxy"], "python3", "-c", UDP_ECHO))
    try:
        for _ in range(20):
            r = sh(*in_ns(hosts["a"], "python3", "-c", UDP_SEND, addr), check=False)
            if r.stdout.strip() == "udp":
                return True
        return False
    finally:
        echo.kill()
        echo.wait()


def xdp_attached(hosts, ifname):
    return "prog/xdp" in sh("ip", "-n", hosts["proxy"], "-d", "link", "show", "dev", ifname).stdout


def test_denied_sources_are_dropped_and_the_list_changes_live(hosts, tmp_path):
    g = Guarded(hosts, tmp_path, "xdp = pa, pb\nxdp_deny = 10.78.1.2, fd78:1::/64\nxdp_syn_rate = off")
    try:
        assert g.started(), g.read_log()
        log = g.read_log()
        assert "xdp guard on pa: native mode" in log and "xdp guard on pb: native mode" in log, log
        assert xdp_attached(hosts, "pa") and xdp_attached(hosts, "pb")
        # The configuration's entries, both families: a is out, b is in.
        assert g.refused("a", "10.78.1.1")
        assert g.refused("a", "fd78:1::1")
        # A SYN behind an IPv6 extension header is seen as well.
        assert g.refused("a", "fd78:1::1", "dstopts")
        assert g.upgrade("b", "10.78.2.1") and g.upgrade("b", "fd78:2::1")
        assert g.upgrade("b", "fd78:2::1", 1.5, "dstopts")
        # What is not TCP to a listener port passes, even from a denied source.
        assert udp_echoed(hosts, "10.78.1.1") and udp_echoed(hosts, "fd78:1::1")
        direct = sh(*in_ns(hosts["a"], os.path.join(BENCH, "ws_load"), "10.78.1.1", "9000", "hs", "0.1"),
                    check=False)
        assert direct.returncode == 0, direct.stdout + direct.stderr
        st = g.stats()
        assert st["denied"] >= 2 and st["passed"] > 0 and st["other"] > 0, st
        if shutil.which("promtool"):
            r = subprocess.run(["promtool", "check", "metrics"], input=g.scrape(), capture_output=True, text=True,
                               timeout=30)
            assert r.returncode == 0, r.stdout + r.stderr
        # Live: b's network in, a's IPv4 address out.
        r = g.deny("add", "10.78.2.0/24")
        assert r.returncode == 0 and "denied 10.78.2.0/24" in r.stdout, r.stdout + r.stderr
        assert g.refused("b", "10.78.2.1")
        assert g.upgrade("b", "fd78:2::1")
        r = g.deny("del", "10.78.1.2")
        assert r.returncode == 0, r.stderr
        assert g.upgrade("a", "10.78.1.1")
        assert g.refused("a", "fd78:1::1")
        # Every IPv6 source, and no IPv4 one.
        assert g.deny("add", "::/0").returncode == 0
        assert g.refused("b", "fd78:2::1") and g.upgrade("a", "10.78.1.1")
        assert g.deny("del", "::/0").returncode == 0
        listed = sorted(g.deny("list").stdout.splitlines())
        assert listed == ["10.78.2.0/24 cli", "fd78:1::/64 config"], listed
        # Host bits are cleared; an entry that is not there says so.
        r = g.deny("del", "10.78.1.99")
        assert r.returncode == 1 and "not in the deny list" in r.stderr, r.stderr
        r = g.deny("add", "fd78:1::2/64")
        assert r.returncode == 0 and "fd78:1::/64" in r.stdout
        assert g.deny("add", "10.78.1.300").returncode == 2
        # A reload replaces the configuration's entries and keeps the
        # command line's: b's network stays denied.
        g.write_config("xdp = pa, pb\nxdp_deny = 10.78.1.0/24\nxdp_syn_rate = off")
        g.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reloaded" in g.read_log(), timeout=5), g.read_log()
        listed = sorted(g.deny("list").stdout.splitlines())
        assert listed == ["10.78.1.0/24 config", "10.78.2.0/24 cli", "fd78:1::/64 cli"], listed
        assert g.refused("a", "10.78.1.1")
        assert g.refused("b", "10.78.2.1")
        # bpftool reads the same figures.
        dump = json.loads(sh("bpftool", "-j", "map", "dump", "pinned", g.pin + "/xdp/guard_stats").stdout)
        denied = [e for e in dump if e.get("formatted", e)["key"] == 1][0]
        assert sum(v["value"] for v in denied.get("formatted", denied)["values"]) >= g.stats()["denied"] - 2
    finally:
        rc = g.stop()
    assert rc == 0, g.read_log()
    # Detached: the interfaces are as they were, the pins are gone.
    assert not xdp_attached(hosts, "pa") and not xdp_attached(hosts, "pb")
    assert not os.path.exists(g.pin)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_syn_flood_is_cut_to_its_rate_and_other_sources_still_connect(hosts, tmp_path, family):
    g = Guarded(hosts, tmp_path, "xdp = pa, pb\nxdp_syn_rate = 20\nxdp_syn_burst = 10")
    a, b = ("10.78.1.1", "10.78.2.1") if family == "ipv4" else ("fd78:1::1", "fd78:2::1")
    try:
        assert g.started(), g.read_log()
        # One handshake first: a is let in, and its neighbour entry for the
        # proxy is resolved (unresolved, the kernel would drop most of the
        # burst itself, IPv6's neighbour discovery queueing a few packets).
        assert g.upgrade("a", a)
        flood = subprocess.Popen(in_ns(hosts["a"], "python3", "-c", FLOOD, a, "8080", "400", "1.5"),
                                 stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        # b's handshakes, during a's flood: every one goes through.
        for _ in range(10):
            assert g.upgrade("b", b), g.read_log()
        answered = int(flood.communicate(timeout=30)[0])
        # 400 SYNs at once: the burst (10) and the rate (20/s over 1.5 s,
        # with the kernel's retransmissions) get through, the rest do not.
        assert 5 <= answered <= 10 + 20 * 2, answered
        st = g.stats()
        assert st["rate_limited"] >= 300, st
        # a's bucket fills again: a is not shut out for good.
        time.sleep(1)
        assert wait_for(lambda: g.upgrade("a", a), timeout=5)
    finally:
        rc = g.stop()
    assert rc == 0, g.read_log()


def test_the_interfaces_are_left_clean_and_a_second_instance_cannot_take_them(hosts, tmp_path):
    g = Guarded(hosts, tmp_path, "xdp = pa\nxdp_deny = 10.78.1.2\nxdp_syn_rate = off")
    try:
        assert g.started(), g.read_log()
        assert xdp_attached(hosts, "pa")
        # Another wsplice on another port and bpffs: refused, with one line.
        other = sh(*in_ns(hosts["proxy"], "timeout", "10", WSPLICE, "--listen", "0.0.0.0:8090", "--upstream",
                          "127.0.0.1:9000", "--mode", "copy", "--bpffs", g.pin + "-2", "--xdp", "pa"),
                   check=False)
        assert other.returncode == 1, other.stderr
        assert "xdp pa: cannot attach the guard" in other.stderr and "another" in other.stderr, other.stderr
        assert not os.path.exists(g.pin + "-2")
        # The first one's guard is still the one in place.
        assert g.refused("a", "10.78.1.1") and g.upgrade("b", "10.78.2.1")
        # A crash: the links go with the last descriptor.
        os.kill(g.proc.pid, signal.SIGKILL)
        g.proc.wait(5)
        assert wait_for(lambda: not xdp_attached(hosts, "pa"), timeout=10)
    finally:
        g.stop()
    # The next start cleans up the pins the crash left, and guards again.
    g2 = Guarded(hosts, tmp_path, "xdp = pa\nxdp_syn_rate = off")
    try:
        assert g2.started(), g2.read_log()
        assert g2.deny("list").stdout == ""
        assert g2.upgrade("a", "10.78.1.1")
    finally:
        rc = g2.stop()
    assert rc == 0, g2.read_log()
    assert not xdp_attached(hosts, "pa")


def test_xdp_configuration_errors_name_the_line(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[global]\nxdp = nosuch0\nxdp_deny = 10.0.0.0/33\nxdp_syn_rate = fast\n"
                    "[listener l]\nlisten = 127.0.0.1:8080\n[pool p]\nserver = 127.0.0.1:9000\n[route r]\npool = p\n")
    r = sh(WSPLICE, "-t", "-c", str(conf), check=False)
    assert r.returncode == 1
    assert "%s:2: xdp 'nosuch0': no such network interface" % conf in r.stderr, r.stderr
    assert "%s:3: xdp_deny '10.0.0.0/33'" % conf in r.stderr, r.stderr
    assert "%s:4: xdp_syn_rate 'fast'" % conf in r.stderr, r.stderr
    r = sh(WSPLICE, "--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2", "--xdp", "nosuch0", check=False)
    assert r.returncode == 2 and "--xdp 'nosuch0': no such network interface" in r.stderr, r.stderr
    r = sh(WSPLICE, "deny", "list", "--bpffs", "/sys/fs/bpf/wsplice-none-%d" % os.getpid(), check=False)
    assert r.returncode == 1 and "is a wsplice with xdp = running" in r.stderr, r.stderr


def xdp_prog_id(hosts, ifname):
    link = json.loads(sh("ip", "-n", hosts["proxy"], "-d", "-j", "link", "show", "dev", ifname).stdout)[0]
    return link.get("xdp", {}).get("prog", {}).get("id")


@pytest.mark.parametrize("mode", ["auto", "copy"])
def test_an_upgrade_keeps_the_guard_its_deny_list_and_its_figures(hosts, tmp_path, mode):
    """`wsplice upgrade`: the new process's program takes over the running
    links (never a moment unguarded: a denied source keeps trying throughout),
    over the same pinned maps, `wsplice deny`'s entries and the counters
    included."""
    # In copy mode nothing else pins under --bpffs: the guard made it, and
    # the new process removes it at the end.
    g = Guarded(hosts, tmp_path, "xdp = pa, pb\nxdp_deny = 10.78.1.2\nxdp_syn_rate = off\nmode = %s" % mode)
    new_pid = None
    try:
        assert g.started(), g.read_log()
        assert g.deny("add", "fd78:1::/64").returncode == 0
        assert g.refused("a", "10.78.1.1") and g.upgrade("b", "10.78.2.1")
        before = {i: xdp_prog_id(hosts, i) for i in ("pa", "pb")}
        denied = g.stats()["denied"]
        got_through = []
        stop = threading.Event()

        def knock():
            while not stop.is_set():
                if g.upgrade("a", "10.78.1.1", 0.3):
                    got_through.append(time.monotonic())

        knocker = threading.Thread(target=knock, daemon=True)
        knocker.start()
        time.sleep(0.5)
        r = sh(WSPLICE, "upgrade", "--bpffs", g.pin, check=False)
        assert r.returncode == 0, r.stderr
        assert wait_for(lambda: "the old process is gone" in g.read_log(), timeout=30), g.read_log()
        time.sleep(0.5)
        stop.set()
        knocker.join(10)
        new_pid = json.loads(sh(WSPLICE, "status", "--json", "--bpffs", g.pin).stdout)["pid"]
        assert new_pid != g.proc.pid and g.proc.wait(10) == 0
        assert not got_through, "a denied source connected during the upgrade"
        after = {i: xdp_prog_id(hosts, i) for i in ("pa", "pb")}
        assert all(after.values()) and all(after[i] != before[i] for i in after), (before, after)
        assert "xdp guard: the running one taken over on 2 interfaces" in g.read_log(), g.read_log()
        assert sorted(g.deny("list").stdout.splitlines()) == ["10.78.1.2/32 config", "fd78:1::/64 cli"]
        assert g.stats()["denied"] > denied  # the same counters, and the knocks went on being counted
        assert g.refused("a", "10.78.1.1") and g.refused("a", "fd78:1::1")
        assert g.upgrade("b", "10.78.2.1") and g.upgrade("b", "fd78:2::1")
        assert "wsplice error:" not in g.read_log(), g.read_log()
    finally:
        if new_pid:
            os.kill(new_pid, signal.SIGTERM)
            wait_for(lambda: exited(new_pid), timeout=15)
        g.stop()
    assert not xdp_attached(hosts, "pa") and not xdp_attached(hosts, "pb")
    assert not os.path.exists(g.pin)
