"""The command line contract, the process lifecycle, and what bpftool shows."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import NO_BPF, WSPLICE, Proxy, free_port, need_sockmap
from wsutil import bpf_tunnels, connects, echo_after_101, echo_until_reset, echoes_through, open_tunnel, recv_exact, wait_for

needs_bpf = pytest.mark.skipif(NO_BPF, reason="WSPLICE_TEST_NO_BPF=1")


def run(*args, timeout=5):
    return subprocess.run([WSPLICE, *args], capture_output=True, text=True, timeout=timeout)


def test_help_and_version():
    r = run("--help")
    assert r.returncode == 0 and "--listen" in r.stdout and "--mode" in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("wsplice ")


@pytest.mark.parametrize("args,needle", [
    ([], "--listen and --upstream are required"),
    (["--listen", "127.0.0.1:8080"], "required"),
    (["--listen", "127.0.0.1", "--upstream", "127.0.0.1:3000"], "expected host:port"),
    (["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:3000"], "port must be 1-65535"),
    (["--listen", "127.0.0.1:99999", "--upstream", "127.0.0.1:3000"], "port must be 1-65535"),
    (["--listen", "::1:8080", "--upstream", "127.0.0.1:3000"], "needs brackets"),
    (["--listen", "127.0.0.1:8080", "--upstream", "127.0.0.1:3000", "--mode", "fast"], "--mode 'fast'"),
    (["--listen", "127.0.0.1:8080", "--upstream", "127.0.0.1:3000", "--bogus"], "unknown option '--bogus'"),
    (["--listen", "127.0.0.1:8080", "--upstream", "127.0.0.1:3000", "--tunnel-buffer", "1x"], "--tunnel-buffer"),
    (["--listen", "127.0.0.1:8080", "--upstream", "no-such-host.invalid:3000"], "cannot resolve"),
    (["--listen", "127.0.0.1:8080", "--upstream"], "needs a value"),
])
def test_invalid_arguments_exit_2_with_one_line(args, needle):
    r = run(*args, timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsplice: ") and needle in lines[0], r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_exits_cleanly_and_unpins(upstream, mode, sig):
    """In tcsplice mode the signal comes once the tunnel went express, so
    the end is the one that lane gives at a stop, a reset for both peers
    (test_express), and not whichever of that and the relay's close frame
    the hand-over's timing picked."""
    seen = []
    if mode == "tcsplice":
        up = upstream(lambda conn, head, rest: echo_until_reset(conn, head, seen))
    else:
        up = upstream(echo_after_101)
    px = Proxy(up.port, mode)
    s, _ = open_tunnel(px.port)
    px.wait_express()
    px.proc.send_signal(sig)
    assert px.proc.wait(5) == 0
    px.stop()  # asserts exit 0, no sanitizer report, pin directory removed
    if mode == "tcsplice":
        assert wait_for(lambda: seen, timeout=5) and seen == ["reset"], seen
    s.close()


def test_ipv6_listen_and_hostname_upstream(upstream, mode):
    up = upstream(echo_after_101)
    px = Proxy(up.port, mode, listen_host="::1")
    try:
        s = socket.create_connection(("::1", px.port), timeout=5)
        from wsutil import upgrade_request, recv_head, status_of
        req, _ = upgrade_request()
        s.sendall(req)
        head, _ = recv_head(s)
        assert status_of(head) == 101
        s.sendall(b"v6")
        assert recv_exact(s, 2) == b"v6"
        s.close()
    finally:
        px.stop()
    # Host names resolve at start-up.
    port = free_port()
    p = subprocess.Popen([WSPLICE, "--listen", "localhost:%d" % port, "--upstream", "localhost:%d" % up.port,
                          "--mode", "copy"], stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: connects(port), timeout=5)
    finally:
        p.terminate()
        assert p.wait(5) == 0


@needs_bpf
def test_bpftool_shows_the_tunnel_and_its_bytes(upstream, start_proxy, kmode):
    up = upstream(echo_after_101)
    px = start_proxy(up.port, kmode)
    s, _ = open_tunnel(px.port)
    s.sendall(b"x" * 1000)
    recv_exact(s, 1000)
    (t1,) = wait_for(lambda: bpf_tunnels(px.pin_dir))
    s.sendall(b"y" * 5000)
    recv_exact(s, 5000)
    (t2,) = bpf_tunnels(px.pin_dir)
    c2u, u2c = t2["dir"]
    assert c2u["bytes"] == 6000 and u2c["bytes"] == 6000, t2
    assert t2["dir"][0]["bytes"] > t1["dir"][0]["bytes"]
    assert c2u["packets"] >= 2 and t2["last_active_ns"] >= t1["last_active_ns"] > 0
    # The plain dump, as a user would type it, pretty-prints through BTF.
    out = subprocess.run(["bpftool", "map", "dump", "pinned", px.pin_dir + "/tunnels"],
                         capture_output=True, text=True, check=True).stdout
    for field in ("client_cookie", "upstream_cookie", "bytes", "packets", "last_active_ns"):
        assert field in out
    s.close()
    assert wait_for(lambda: bpf_tunnels(px.pin_dir) == [], timeout=5), "tunnel entry left after close"


@needs_bpf
def test_two_instances_with_different_pin_dirs(upstream, kmode):
    up = upstream(echo_after_101)
    a, b = Proxy(up.port, kmode), Proxy(up.port, "sockmap")
    try:
        for px in (a, b):
            s, _ = open_tunnel(px.port)
            s.sendall(b"both")
            assert recv_exact(s, 4) == b"both"
            s.close()
            px.assert_kernel_path()
    finally:
        a.stop()
        b.stop()


@needs_bpf
def test_same_pin_dir_is_refused(upstream):
    need_sockmap()
    up = upstream(echo_after_101)
    a = Proxy(up.port, "sockmap")
    try:
        r = run("--listen", "127.0.0.1:%d" % free_port(), "--upstream", "127.0.0.1:%d" % up.port,
                "--mode", "sockmap", "--bpffs", a.pin_dir)
        assert r.returncode == 1 and "in use by another wsplice" in r.stderr, r.stderr
        assert os.path.exists(a.pin_dir + "/tunnels"), "the second instance removed the first one's pins"
    finally:
        a.stop()


@needs_bpf
def test_pin_dir_outside_bpffs_is_a_clear_error(tmp_path):
    need_sockmap()
    r = run("--listen", "127.0.0.1:%d" % free_port(), "--upstream", "127.0.0.1:1",
            "--mode", "sockmap", "--bpffs", str(tmp_path / "pins"))
    assert r.returncode == 1 and "is not on a bpf filesystem" in r.stderr, r.stderr


@needs_bpf
def test_mounts_bpffs_when_missing():
    """In a private mount namespace where /sys/fs/bpf is not bpffs."""
    need_sockmap()
    port = free_port()
    script = ("mount -t tmpfs none /sys/fs/bpf && "
              "{ %s --listen 127.0.0.1:%d --upstream 127.0.0.1:1 --mode sockmap & pid=$!; sleep 1; "
              "ls /sys/fs/bpf/wsplice; kill -INT $pid; wait $pid; }" % (WSPLICE, port))
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "mounted a bpf filesystem on /sys/fs/bpf" in r.stderr
    assert "tunnels" in r.stdout


def test_auto_mode_is_the_kernel_path_and_says_so(upstream, start_proxy):
    """auto = sockmap wherever it loads, with one line saying so (the Proxy
    fixture checks that line for every auto test); the bytes go through BPF."""
    need_sockmap()
    up = upstream(echo_after_101)
    px = start_proxy(up.port, "auto")
    s, _ = open_tunnel(px.port)
    s.sendall(b"auto")
    assert recv_exact(s, 4) == b"auto"
    s.close()
    lines = [l for l in px.read_log().splitlines() if "mode auto" in l]
    assert len(lines) == 1 and "mode auto: sockmap" in lines[0], px.read_log()
    px.assert_kernel_path()


@needs_bpf
@pytest.mark.parametrize("why", ["no capabilities", "pin directory outside bpffs", "pin directory in use"])
def test_auto_falls_back_to_copy_with_one_line_saying_why(upstream, tmp_path, why):
    """Where sockmap cannot run, auto is the copy relay, says why in one
    line, and serves; nothing is left pinned."""
    up = upstream(echo_after_101)
    port = free_port()
    pin, prefix, holder = "/sys/fs/bpf/wsplice-auto-%d" % os.getpid(), [], None
    if why == "no capabilities":
        prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    elif why == "pin directory outside bpffs":
        pin = str(tmp_path / "pins")
    else:
        need_sockmap()
        holder = Proxy(up.port, "sockmap")
        pin = holder.pin_dir
    p = subprocess.Popen(prefix + [WSPLICE, "--listen", "127.0.0.1:%d" % port, "--upstream", "127.0.0.1:%d" % up.port,
                                   "--bpffs", pin], stderr=subprocess.PIPE, text=True)
    try:
        assert echoes_through(port, b"copy")
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=10)
        if holder:
            holder.stop()
    lines = [l for l in err.splitlines() if "mode auto" in l]
    assert len(lines) == 1 and "mode auto: the copy relay (sockmap cannot run here: " in lines[0], err
    assert {"no capabilities": "CAP_BPF", "pin directory outside bpffs": "not on a bpf filesystem",
            "pin directory in use": "in use by another wsplice"}[why] in lines[0], lines[0]
    assert p.returncode == 0, err
    if why != "pin directory in use":
        assert not os.path.exists(pin)


def test_sockmap_without_capabilities_fails_with_one_line(upstream, tmp_path):
    """Root without CAP_BPF & co (an empty bounding set): --mode sockmap says why and exits 1."""
    need_sockmap()
    r = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", WSPLICE,
                        "--listen", "127.0.0.1:%d" % free_port(), "--upstream", "127.0.0.1:1", "--mode", "sockmap",
                        "--bpffs", "/sys/fs/bpf/wsplice-nocap-%d" % os.getpid()],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1, r.stderr
    lines = [l for l in r.stderr.splitlines() if "--mode sockmap" in l]
    assert len(lines) == 1, r.stderr
    assert "Operation not permitted" in lines[0] and "CAP_BPF" in lines[0], lines[0]


@needs_bpf
def test_pins_of_a_killed_instance_are_replaced(upstream, kmode):
    """SIGKILL leaves the pins behind; the next instance on that directory
    pins fresh maps (libbpf would otherwise reuse the stale ones) and splices."""
    need_sockmap()
    up = upstream(echo_after_101)
    a = Proxy(up.port, kmode)
    stale = bpftool_map_id(a.pin_dir + "/tunnels")
    a.proc.kill()
    a.proc.wait(5)
    assert os.path.exists(a.pin_dir + "/tunnels")
    b = Proxy(up.port, kmode, pin_dir=a.pin_dir)
    try:
        assert bpftool_map_id(b.pin_dir + "/tunnels") != stale
        s, _ = open_tunnel(b.port)
        s.sendall(b"fresh")
        assert recv_exact(s, 5) == b"fresh"
        (t,) = wait_for(lambda: bpf_tunnels(b.pin_dir))
        assert t["dir"][0]["bytes"] == 5, t
        s.close()
        b.assert_kernel_path()
    finally:
        b.stop()  # asserts the pin directory is gone


def bpftool_map_id(path):
    out = subprocess.run(["bpftool", "-j", "map", "show", "pinned", path], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)["id"]
