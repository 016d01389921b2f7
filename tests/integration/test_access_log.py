"""The access log (--access-log FILE): one line per request and one per
tunnel at its close, in every engine, with exact byte counts; logfmt and
JSON; a logrotate-style rename followed by SIGUSR1."""
import json
import os
import re
import signal
import socket
import struct
import subprocess
import time

from conftest import WSPLICE, free_port
from wsutil import (key_of, one_route_config, recv_exact, recv_head, recv_until_eof, switching_protocols,
                    upgrade_request, wait_for)

C2U, U2C = 70_000, 123_456


def scripted(conn, head, rest):
    if b"upgrade: websocket" not in head.lower():
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        return
    conn.sendall(switching_protocols(key_of(head)))
    got = rest + recv_exact(conn, C2U - len(rest))
    conn.sendall(os.urandom(U2C))
    conn.shutdown(socket.SHUT_WR)
    recv_until_eof(conn)
    assert len(got) == C2U


def one_request(port):
    """A plain GET; returns (bytes sent, bytes received)."""
    req = b"GET /plain?q=1 HTTP/1.1\r\nHost: plain.example\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req)
        got = recv_until_eof(s)
    assert got.endswith(b"hello"), got
    return len(req), len(got)


def one_tunnel(port):
    """An upgrade, C2U bytes up, U2C down, then close; returns (request bytes, 101 bytes)."""
    req, _ = upgrade_request("/ws/chat")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req)
        head, rest = recv_head(s)
        s.sendall(os.urandom(C2U))
        assert len(rest) + len(recv_exact(s, U2C - len(rest))) == U2C
        assert recv_until_eof(s) == b""
    return len(req), len(head)


def read_lines(path, parse):
    with open(path) as f:
        return [parse(line) for line in f if line.strip()]


def logfmt(line):
    return {k: (v[1:-1].replace('\\"', '"') if v.startswith('"') else v)
            for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)}


def test_one_line_per_request_and_per_tunnel_with_exact_bytes(upstream, start_proxy, mode, tmp_path):
    up = upstream(scripted)
    path = str(tmp_path / "access.log")
    px = start_proxy(up.port, mode, extra=("--access-log", path, "--access-log-format", "json"))
    plain_in, plain_out = one_request(px.port)
    ws_in, ws_out = one_tunnel(px.port)
    assert wait_for(lambda: len(read_lines(path, json.loads)) == 3, timeout=10), open(path).read()
    plain, upgrade, tunnel = read_lines(path, json.loads)
    assert [plain["kind"], upgrade["kind"], tunnel["kind"]] == ["request", "request", "tunnel"]
    assert (plain["method"], plain["path"], plain["host"], plain["status"]) == ("GET", "/plain?q=1", "plain.example",
                                                                                200)
    assert (plain["bytes_in"], plain["bytes_out"]) == (plain_in, plain_out)
    assert plain["upstream"] == "127.0.0.1:%d" % up.port and plain["client"].startswith("127.0.0.1:")
    assert (upgrade["path"], upgrade["status"], upgrade["bytes_in"], upgrade["bytes_out"]) == ("/ws/chat", 101, ws_in,
                                                                                             ws_out)
    assert tunnel["tunnel"] == upgrade["tunnel"] > 0
    assert (tunnel["bytes_client_to_upstream"], tunnel["bytes_upstream_to_client"]) == (C2U, U2C)
    assert tunnel["cause"] == "fin" and tunnel["client"] == upgrade["client"]
    assert tunnel["upstream"] == "127.0.0.1:%d" % up.port
    assert tunnel["engine"] == ("sockmap" if px.kernel else "copy" if mode == "auto" else mode)
    assert tunnel["duration_ms"] >= 0 and plain["duration_ms"] >= 0
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", plain["time"])


def test_logfmt_survives_a_rename_and_sigusr1(upstream, start_proxy, tmp_path):
    up = upstream(scripted)
    path = str(tmp_path / "access.log")
    px = start_proxy(up.port, "copy", extra=("--access-log", path))
    one_request(px.port)
    assert wait_for(lambda: len(read_lines(path, logfmt)) == 1)
    os.rename(path, path + ".1")
    px.proc.send_signal(signal.SIGUSR1)
    assert wait_for(lambda: "reopening the access log" in px.read_log()), px.read_log()
    assert wait_for(lambda: os.path.exists(path), timeout=5), "SIGUSR1 did not make a new file"
    one_tunnel(px.port)
    assert wait_for(lambda: len(read_lines(path, logfmt)) == 2, timeout=10)
    both = open(path + ".1").read() + "--- after the rename:\n" + open(path).read()
    (old,) = read_lines(path + ".1", logfmt)
    lines = read_lines(path, logfmt)
    assert [l.get("kind") for l in lines] == ["request", "tunnel"], both
    new_request, new_tunnel = lines
    assert (old.get("kind"), old.get("path"), old.get("status")) == ("request", "/plain?q=1", "200"), both
    assert new_request.get("status") == "101" and new_tunnel["tunnel"] == new_request["tunnel"], both
    assert (new_tunnel["bytes_client_to_upstream"], new_tunnel["bytes_upstream_to_client"]) == (str(C2U), str(U2C))
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_a_client_that_leaves_before_the_answer_is_a_499(upstream, start_proxy, tmp_path):
    """A reset before the answer (a FIN alone is a half-close: the answer still goes out)."""
    gone = []

    def slow(conn, head, rest):
        wait_for(lambda: gone, timeout=5)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    up = upstream(slow)
    path = str(tmp_path / "access.log")
    px = start_proxy(up.port, "copy", extra=("--access-log", path))
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: up.requests, timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    gone.append(True)
    assert wait_for(lambda: read_lines(path, logfmt), timeout=5)
    (line,) = read_lines(path, logfmt)
    assert (line["path"], line["status"]) == ("/slow", "499"), line


def test_bad_access_log_paths_are_clear_errors(tmp_path):
    base = [WSPLICE, "--listen", "127.0.0.1:%d" % free_port(), "--upstream", "127.0.0.1:1", "--mode", "copy"]
    r = subprocess.run(base + ["--access-log", "relative.log"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "expected an absolute path or stderr" in r.stderr, r.stderr
    missing = str(tmp_path / "no" / "such" / "dir.log")
    r = subprocess.run(base + ["--access-log", missing], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "access_log %s: No such file or directory" % missing in r.stderr, r.stderr
    r = subprocess.run(base + ["--access-log-format", "xml"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "expected logfmt or json" in r.stderr, r.stderr


def test_a_half_sent_head_is_one_408_and_an_empty_connection_none(upstream, start_proxy, tmp_path):
    up = upstream(scripted)
    path = str(tmp_path / "access.log")
    px = start_proxy(0, "copy", config=one_route_config(up.port, global_="client_header_timeout = 1s"),
                     extra=("--access-log", path))
    empty = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    half = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    half.sendall(b"GET /never-finished HTTP/1.1\r\nHo")
    for s in (empty, half):
        recv_until_eof(s, timeout=5)
        s.close()
    assert wait_for(lambda: read_lines(path, logfmt), timeout=5)
    time.sleep(0.5)
    (line,) = read_lines(path, logfmt)
    assert line["status"] == "408" and line["bytes_in"] == "0", line


def test_a_502_names_the_server_it_tried(start_proxy, tmp_path):
    dead = free_port()
    path = str(tmp_path / "access.log")
    px = start_proxy(dead, "copy", extra=("--access-log", path, "--access-log-format", "json"))
    with socket.create_connection(("127.0.0.1", px.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _ = recv_head(s)
    assert b" 502 " in head.split(b"\r\n")[0]
    assert wait_for(lambda: read_lines(path, json.loads), timeout=5)
    (line,) = read_lines(path, json.loads)
    assert (line["status"], line["upstream"]) == (502, "127.0.0.1:%d" % dead), line


def test_json_lines_stay_valid_with_bytes_that_are_not_utf8(upstream, start_proxy, tmp_path):
    up = upstream(scripted)
    path = str(tmp_path / "access.log")
    px = start_proxy(up.port, "copy", extra=("--access-log", path, "--access-log-format", "json"))
    with socket.create_connection(("127.0.0.1", px.port), timeout=5) as s:
        s.sendall(b"GET /caf%C3%A9 HTTP/1.1\r\nHost: caf\xe9.example\r\nConnection: close\r\n\r\n")
        recv_until_eof(s)
    assert wait_for(lambda: os.path.exists(path) and open(path, "rb").read().endswith(b"\n"), timeout=5)
    raw = open(path, "rb").read()
    line = json.loads(raw.decode("utf-8"))  # strict UTF-8: a raw 0xe9 would fail here
    assert line["host"] == "caf\u00e9.example" and line["status"] == 200, line


def test_an_error_on_a_pipelined_request_keeps_the_answer_before_it(upstream, start_proxy, tmp_path):
    big = os.urandom(200_000)

    def handler(conn, head, rest):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
        recv_until_eof(conn, timeout=2)

    up = upstream(handler)
    px = start_proxy(up.port, "copy")
    with socket.create_connection(("127.0.0.1", px.port), timeout=5) as s:
        # The second request is malformed: its 400 must follow all of the first answer.
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\nGET /bad HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        got = recv_until_eof(s)
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and rest[:len(big)] == big, (head, len(rest))
    assert rest[len(big):].startswith(b"HTTP/1.1 400"), rest[len(big):len(big) + 40]
