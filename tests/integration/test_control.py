"""`wsplice status` and `wsplice conns` against a running daemon, through
its control socket: tunnels in every engine, bytes that agree with the
kernel's own map, answers while a transfer is running, and the socket's
ownership rules."""
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

from conftest import WSPLICE, Proxy, free_port
from wsutil import bpf_tunnels, key_of, open_tunnel, recv_exact, recv_until_eof, switching_protocols, wait_for

BENCH = os.path.join(os.path.dirname(WSPLICE), "bench")


def control_path(px):
    return "/run/wsplice/%s.sock" % os.path.basename(px.pin_dir)


def ask(px, what, *extra):
    r = subprocess.run([WSPLICE, what, "--bpffs", px.pin_dir, *extra], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return r.stdout


def echo_upstream(conn, head, rest):
    conn.sendall(switching_protocols(key_of(head)))
    data = rest
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        conn.sendall(chunk)
        data += chunk
    conn.shutdown(socket.SHUT_WR)


def test_conns_lists_every_tunnel_with_its_bytes(upstream, start_proxy, mode):
    up = upstream(echo_upstream)
    px = start_proxy(up.port, mode)
    sizes = [1000, 70_000]
    socks = []
    for n in sizes:
        s, rest = open_tunnel(px.port)
        assert rest == b""
        s.sendall(os.urandom(n))
        recv_exact(s, n)
        socks.append(s)
    listing = json.loads(ask(px, "conns", "--json"))["tunnels"]
    engine = "sockmap" if px.kernel else "copy" if mode == "auto" else mode
    assert [t["engine"] for t in listing] == [engine, engine]
    assert sorted((t["bytes_client_to_upstream"], t["bytes_upstream_to_client"]) for t in listing) == \
        [(n, n) for n in sizes]
    # Each worker lists its own tunnels: match them by client address.
    by_client = {t["client"]: t for t in listing}
    for n, s in zip(sizes, socks):
        t = by_client["127.0.0.1:%d" % s.getsockname()[1]]
        assert (t["bytes_client_to_upstream"], t["bytes_upstream_to_client"]) == (n, n)
        assert t["upstream"] == "127.0.0.1:%d" % up.port
        assert t["age_seconds"] >= 0 and t["idle_ms"] >= 0
    if px.kernel:
        # Every payload byte went through the verdict: the daemon's figures
        # are the kernel's, as bpftool shows them.
        kernel = sorted((d["dir"][0]["bytes"], d["dir"][1]["bytes"]) for d in bpf_tunnels(px.pin_dir))
        assert kernel == [(n, n) for n in sizes]
        assert all(t["detail"].startswith("id ") for t in listing)
    table = ask(px, "conns").splitlines()
    assert table[0].split() == ["ID", "ENGINE", "CLIENT", "UPSTREAM", "AGE_S", "BYTES_C2U", "BYTES_U2C", "IDLE_MS"]
    assert len(table) == 3
    for s in socks:
        s.close()
    assert wait_for(lambda: json.loads(ask(px, "conns", "--json"))["tunnels"] == [], timeout=5)


def test_status_says_what_runs(upstream, start_proxy, kmode):
    up = upstream(echo_upstream)
    px = start_proxy(up.port, kmode)
    s, _ = open_tunnel(px.port)
    st = json.loads(ask(px, "status", "--json"))
    assert st["pid"] == px.proc.pid and st["engine"] == "sockmap" and st["generation"] == 1
    assert st["listeners"] == [{"name": "default", "address": "127.0.0.1:%d" % px.port}]
    assert st["tunnels_open"] == 1 and st["tunnels_by_engine"]["sockmap"] == 1
    text = ask(px, "status")
    assert "engine: sockmap" in text and "tunnels open: 1 (sockmap 1, splice 0, copy 0, tcsplice 0)" in text
    s.close()


def test_conns_answers_during_a_bulk_transfer(start_proxy, kmode):
    echo_port = free_port()
    echo = subprocess.Popen([os.path.join(BENCH, "ws_echo"), str(echo_port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        assert echo.stdout.readline().strip() == b"ready"
        px = start_proxy(echo_port, kmode)
        load = subprocess.Popen([os.path.join(BENCH, "ws_load"), "127.0.0.1", str(px.port), "tput", "1024"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []
        while load.poll() is None and len(seen) < 20:
            t0 = time.monotonic()
            listing = json.loads(ask(px, "conns", "--json"))["tunnels"]
            seen.append((time.monotonic() - t0, sum(t["bytes_client_to_upstream"] for t in listing)))
        out, err = load.communicate(timeout=120)
        assert load.returncode == 0 and "verified=1" in out, err
        # It answers while the kernel moves a GiB (the limit leaves room for qemu, where the VM tests run it).
        assert seen and max(t for t, _ in seen) < 5.0, seen
        assert any(b > 0 for _, b in seen), "no answer saw the transfer's bytes: %s" % seen
    finally:
        echo.terminate()
        echo.wait(5)


def test_the_control_socket_is_private_and_owned_once():
    px = Proxy(free_port(), "copy")
    path = control_path(px)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        # A second daemon on the same socket refuses to start, with one line.
        r = subprocess.run([WSPLICE, "--listen", "127.0.0.1:%d" % free_port(), "--upstream", "127.0.0.1:1",
                            "--mode", "copy", "--control", path], capture_output=True, text=True, timeout=10)
        assert r.returncode == 1 and "in use by another wsplice" in r.stderr, r.stderr
        assert ask(px, "status").startswith("wsplice ")
    finally:
        px.stop()
    assert not os.path.exists(path), "the daemon left its control socket behind"


def test_a_killed_daemons_socket_is_taken_over(start_proxy):
    path = "/run/wsplice/test-stale-%d.sock" % os.getpid()
    first = Proxy(free_port(), "copy", extra=("--control", path))
    first.proc.kill()
    first.proc.wait(5)
    os.unlink(first.log.name)
    assert os.path.exists(path)
    second = start_proxy(free_port(), "copy", extra=("--control", path))
    r = subprocess.run([WSPLICE, "status", "--control", path], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "pid %d" % second.proc.pid in r.stdout, r.stdout + r.stderr


def test_no_daemon_is_a_clear_error():
    r = subprocess.run([WSPLICE, "status", "--control", "/run/wsplice/nobody-%d.sock" % os.getpid()],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "no daemon answers on" in r.stderr, r.stderr
    r = subprocess.run([WSPLICE, "conns", "--bogus"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "unexpected '--bogus'" in r.stderr, r.stderr


def test_a_second_instance_on_the_same_bpffs_serves_without_status(upstream, start_proxy):
    """The default socket is derived from --bpffs: a second instance on the
    same one (auto runs the copy relay there) still serves, and says why
    status cannot reach it; a socket the configuration names must work."""
    up = upstream(lambda conn, head, rest: (conn.sendall(switching_protocols(key_of(head)) + b"hi"),
                                            recv_until_eof(conn)))
    first = start_proxy(up.port, "copy")
    second = start_proxy(up.port, "copy", pin_dir=first.pin_dir)
    s, rest = open_tunnel(second.port)
    assert rest + recv_exact(s, 2 - len(rest)) == b"hi"
    s.close()
    assert "wsplice status and conns cannot reach this instance" in second.read_log()
    assert "pid %d" % first.proc.pid in ask(first, "status")


def test_a_file_that_is_not_a_socket_is_never_removed(tmp_path):
    path = "/run/wsplice/not-a-socket-%d.sock" % os.getpid()
    os.makedirs("/run/wsplice", exist_ok=True)
    with open(path, "w") as f:
        f.write("precious")
    try:
        r = subprocess.run([WSPLICE, "--listen", "127.0.0.1:%d" % free_port(), "--upstream", "127.0.0.1:1",
                            "--mode", "copy", "--control", path], capture_output=True, text=True, timeout=10)
        assert r.returncode == 1 and "not a socket" in r.stderr, r.stderr
        assert open(path).read() == "precious"
    finally:
        os.unlink(path)
