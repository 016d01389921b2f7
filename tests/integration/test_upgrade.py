"""Binary upgrades (issue #12): `wsplice upgrade` (or SIGUSR2) starts the new
binary, which takes over the listening sockets and every tunnel of the old
process (sockets through SCM_RIGHTS, each tunnel with its engine's state and
the bytes userspace holds), keeps the pinned data plane as it is, and only
then lets the old process exit. Tunnels on every engine stream verified
bytes both ways through three upgrades in a row while a client connects in
a loop: nothing may be lost, duplicated, closed or refused. A new process
that fails (it cannot run, it crashes, its configuration is bad or differs
in what it cannot adopt) leaves the old one serving, with one line saying why."""
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

import conftest
from conftest import NO_BPF, free_port, report
from wsutil import (exited, open_tunnel, recv_exact, recv_head, reading_echo, status_of,
                    upgrade_request, wait_for)

# The binary the commands run; the daemon runs from a copy of it, which a
# test may replace as a package manager would.
CLI = conftest.WSPLICE
TUNNELS = 200
CHUNK = 512
# Bytes a tunnel may have sent and not yet seen echoed: the streams keep moving
# without queueing megabytes anywhere...
WINDOW = 16384
# ...except the first HELD tunnels (two per engine), whose client stops
# reading around each upgrade while it goes on sending, until the proxy
# holds bytes for it: a full relay buffer, a full splice pipe, a paused
# sockmap direction. The handover must carry them. The most a held
# client has unechoed: more than its own receive buffer can take
# (tcp_rmem's maximum, 32 MiB on the CI host) plus the proxy's send buffer
# to it (4 MiB), so the proxy must hold the rest; the echo server keeps it
# all in memory (reading_echo), six times at most.
HELD = 6
HELD_WINDOW = 64 << 20
# Every tunnel sends PATTERN from an offset of its own, round and round; the
# period is prime, so no loss or repeat of whole 64 KiB reads lines up with it.
PERIOD = 1000003
_BASE = os.urandom(PERIOD)
PATTERN = _BASE + _BASE[:1 << 17]
# How long the tunnels may take to give every byte back once the clients
# read again. A finish over 10 s is reported with the TCP drop counters.
FINISH_TIMEOUT = 60
# Connections accepted before an upgrade whose request comes after it.
PENDING = 10


def plain_ok(conn, head, rest):
    """A keep-alive upstream for plain requests: 200 "ok" to each."""
    conn.settimeout(None)
    while True:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        data = rest
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        rest = data.split(b"\r\n\r\n", 1)[1]


def engines():
    return ["copy", "splice"] + ([] if NO_BPF else ["sockmap"])


def mixed_config(echo_port, plain_port, workers, global_=""):
    """One route per engine, all to the echoing upstream, and /plain to an
    upstream that answers plain requests."""
    text = "[global]\nworkers = %d\nmax_tunnels = 2048\n%s\n" % (workers, global_)
    text += "[listener main]\nlisten = 127.0.0.1:{port}\n[pool p]\nserver = 127.0.0.1:%d\n" % echo_port
    text += "[pool q]\nserver = 127.0.0.1:%d\n[route plain]\npath = /plain\npool = q\n" % plain_port
    for e in engines():
        text += "[route %s]\npath = /%s\npool = p\nmode = %s\n" % (e, e, e)
    return text


def status(pin_dir):
    r = subprocess.run([CLI, "status", "--json", "--bpffs", pin_dir], capture_output=True, text=True,
                       timeout=10)
    return json.loads(r.stdout) if r.returncode == 0 else None


def conns(pin_dir):
    r = subprocess.run([CLI, "conns", "--json", "--bpffs", pin_dir], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["tunnels"]


class Streams(threading.Thread):
    """TUNNELS tunnels, each sending its own byte sequence (PATTERN from its
    own offset) and checking that exactly that sequence comes back: a byte
    lost, duplicated or reordered in either direction breaks the comparison
    or the final count; an EOF or a reset is a closed tunnel. The HELD ones
    stop reading while `hold` is set and send on, so that their bytes pile
    up in the proxy."""

    def __init__(self, port, echo_port):
        super().__init__(daemon=True)
        self.echo_port = echo_port     # the upstream's, for where_stuck
        self.drops = tcp_drops()       # the kernel's TCP drop counts at the start
        self.stuck = []                # set by finish(): the tunnels that did not finish
        self.sel = selectors.DefaultSelector()
        self.failures = []
        self.sent = self.echoed = 0
        self.stop_sending = threading.Event()
        self.done = threading.Event()
        self.hold = threading.Event()
        self.holding = False
        self.fin_sent = False  # half_close_held: the thread shuts the held tunnels' sending side
        self.tunnels = []
        names = engines()
        for i in range(TUNNELS):
            s, rest = open_tunnel(port, "/" + names[i % len(names)])
            assert not rest
            s.setblocking(False)
            t = {"i": i, "sock": s, "sent": 0, "recv": 0, "off": (i * 7919) % PERIOD, "held": i < HELD,
                 "engine": names[i % len(names)], "port": s.getsockname()[1]}
            self.tunnels.append(t)
            self.sel.register(s, selectors.EVENT_READ, t)

    @staticmethod
    def expected(t, pos, n):
        start = (t["off"] + pos) % PERIOD
        return PATTERN[start:start + n]

    def set_holding(self, on):
        """The held tunnels stop (or go back to) reading."""
        for t in self.tunnels:
            if t["held"] and t["sock"]:
                if on:
                    self.sel.unregister(t["sock"])
                else:
                    self.sel.register(t["sock"], selectors.EVENT_READ, t)
        self.holding = on

    def send_some(self, t):
        held = t["held"] and self.holding
        window = HELD_WINDOW if held else WINDOW
        for _ in range(32 if held else 1):
            n = min(window - (t["sent"] - t["recv"]), CHUNK if not held else 65536)
            if n <= 0:
                return
            try:
                n = t["sock"].send(self.expected(t, t["sent"], n))
            except BlockingIOError:
                return
            except OSError as e:
                self.fail(t, "send: %s" % e)
                return
            t["sent"] += n
            self.sent += n

    def run(self):
        last_send = 0.0
        while not self.done.is_set():
            if self.hold.is_set() != self.holding:
                self.set_holding(self.hold.is_set())
            if self.fin_sent:
                for t in self.tunnels:
                    if t["held"] and t["sock"] and not t.get("fin"):
                        t["out_done"] = True
                        try:
                            t["sock"].shutdown(socket.SHUT_WR)
                            t["fin"] = True
                        except OSError as e:
                            self.fail(t, "shutdown: %s" % e)
                self.hold.clear()  # they read again only now, their FIN sent behind the backlog
                if self.holding:
                    self.set_holding(False)
            now = time.monotonic()
            if not self.stop_sending.is_set() and now - last_send >= 0.02:
                last_send = now
                for t in self.tunnels:
                    if t["sock"] is not None and not t.get("fin"):
                        self.send_some(t)
            for key, _ in self.sel.select(timeout=0.005):
                t = key.data
                try:
                    data = t["sock"].recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    self.fail(t, "recv: %s" % e)
                    continue
                if not data:
                    if t.get("fin") and t["recv"] == t["sent"]:  # the echo's FIN, after every byte
                        self.sel.unregister(t["sock"])
                        t["sock"].close()
                        t["sock"] = None
                        t["eof"] = True
                    else:
                        self.fail(t, "closed (EOF) at byte %d of %d sent" % (t["recv"], t["sent"]))
                    continue
                if t["recv"] + len(data) > t["sent"] or data != self.expected(t, t["recv"], len(data)):
                    self.fail(t, "got %d bytes that are not the next ones sent (at byte %d of %d sent)"
                              % (len(data), t["recv"], t["sent"]))
                    continue
                t["recv"] += len(data)
                self.echoed += len(data)

    def half_close_held(self):
        """The held tunnels send FIN (and nothing more); they then read all
        their echo, and the echo's FIN after it."""
        self.fin_sent = True

    def fail(self, t, what):
        self.failures.append("tunnel %d (%s): %s" % (t["i"], t["engine"], what))
        if not (t["held"] and self.holding):
            self.sel.unregister(t["sock"])
        t["sock"].close()
        t["sock"] = None

    def finish(self, timeout=FINISH_TIMEOUT):
        """Stops sending and waits for every byte to come back."""
        self.hold.clear()
        self.stop_sending.set()
        time.sleep(0.1)
        t0 = time.monotonic()
        ok = wait_for(lambda: all(t["recv"] == t["sent"] for t in self.tunnels if t["sock"]) and
                      all(t.get("eof") for t in self.tunnels if t.get("fin") and t["sock"] is not None),
                      timeout=timeout)
        self.finish_seconds = time.monotonic() - t0
        self.done.set()
        self.join(5)
        if not ok:
            self.failures.append("%d tunnels still wait for their echo, %d for the FIN after it" % (
                sum(1 for t in self.tunnels if t["sock"] and t["recv"] != t["sent"]),
                sum(1 for t in self.tunnels if t.get("fin") and t["sock"] is not None)))
        self.failures += ["tunnel %d: half-closed, never saw the FIN back" % t["i"]
                          for t in self.tunnels if t.get("fin") and not t.get("eof")]
        self.stuck = [t for t in self.tunnels if t["sock"] and (t["recv"] != t["sent"] or t.get("fin"))]

    def close(self):
        self.done.set()
        if self.ident is not None:
            self.join(5)  # its epoll loop stops before the sockets go
        for t in self.tunnels:
            if t["sock"]:
                t["sock"].close()


class Connector(threading.Thread):
    """New connections in a loop: each upgrades on the next engine's route
    and echoes one message. Any that is refused or fails is counted."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.ok = 0
        self.failures = []
        self.done = threading.Event()

    def run(self):
        names = engines()
        while not self.done.is_set():
            try:
                s, _ = open_tunnel(self.port, "/" + names[self.ok % len(names)])
                try:
                    s.sendall(b"hello %d" % self.ok)
                    assert recv_exact(s, len(b"hello %d" % self.ok)) == b"hello %d" % self.ok
                finally:
                    s.close()
                self.ok += 1
            except (OSError, AssertionError) as e:
                self.failures.append("connection %d: %r" % (self.ok + len(self.failures), e))
            time.sleep(0.005)


def pending_connections(port):
    """Connections accepted before an upgrade, their request still to come."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(PENDING)]
    time.sleep(0.2)  # accepted, and idle in a session
    return socks


def finish_pending(socks, failures):
    names = engines()
    for n, s in enumerate(socks):
        try:
            req, _ = upgrade_request("/" + names[n % len(names)])
            s.sendall(req)
            head, rest = recv_head(s, 5)
            assert status_of(head) == 101, head
            s.sendall(b"late %d" % n)
            assert rest + recv_exact(s, len(b"late %d" % n) - len(rest)) == b"late %d" % n
        except (OSError, AssertionError) as e:
            failures.append("a connection accepted before the upgrade: %r" % e)
        finally:
            s.close()


def proxy_holds_bytes(px, streams):
    """Every held tunnel has bytes in the proxy: its relay buffer or pipe
    (copy, splice), or a direction paused in the kernel (sockmap)."""
    details = {int(t["client"].rsplit(":", 1)[1]): t["detail"] for t in conns(px.pin_dir)}
    for t in streams.tunnels:
        if not t["held"] or not t["sock"]:
            continue
        d = details.get(t["port"], "")
        if t["engine"] == "sockmap":
            if "paused=1" not in d:
                return False
        elif not any(int(p.split()[0]) for p in d.split("pending=")[1:]):
            return False
    return True


def pid_of(px):
    return (status(px.pin_dir) or {}).get("pid")


def keepalive_request(s):
    """One plain request on a kept-alive connection: its answer, whole."""
    s.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
    head, rest = recv_head(s, 5)
    assert status_of(head) == 200 and b"connection: close" not in head.lower(), head
    return rest + recv_exact(s, 2 - len(rest))


def upgrade(px, how, n, streams=None, keep_holding=False):
    """Runs one upgrade and waits until the new master serves alone; with
    streams, the held tunnels stop reading around it (and after it, with
    keep_holding), and connections accepted before it send their request
    after it."""
    old = pid_of(px)
    before = px.read_log().count("the old process is gone")
    pending = pending_connections(px.port) if streams else []
    if streams:
        streams.hold.set()
        assert wait_for(lambda: proxy_holds_bytes(px, streams), timeout=30, interval=0.2), \
            "the held tunnels' bytes did not pile up in the proxy: %s" % conns(px.pin_dir)
    if how == "signal":
        os.kill(old, signal.SIGUSR2)
    else:
        r = subprocess.run([CLI, "upgrade", "--bpffs", px.pin_dir], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0 and "upgrade" in r.stdout, (r.stdout, r.stderr)
    assert wait_for(lambda: px.read_log().count("the old process is gone") > before and exited(old), timeout=90), \
        "upgrade %d did not complete:\n%s" % (n, px.read_log())
    st = status(px.pin_dir)
    assert st and st["pid"] != old, st
    if streams:
        if not keep_holding:
            streams.hold.clear()
        finish_pending(pending, streams.failures)
    return st["pid"]


def stop_master(pid):
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: exited(pid), timeout=30), "the last master (pid %d) did not stop" % pid


def engines_by_port(px):
    """Each tunnel's engine, by its client's port."""
    return {int(t["client"].rsplit(":", 1)[1]): t["engine"] for t in conns(px.pin_dir)}


@pytest.fixture
def streaming(upstream, start_proxy, request, monkeypatch, tmp_path):
    """A daemon with a route per engine, TUNNELS streaming tunnels spread
    over them, and the connect loop; yields (px, streams, connector)."""
    workers = request.param
    echo = upstream(reading_echo)
    plain = upstream(plain_ok)
    exe = str(tmp_path / "wsplice")
    shutil.copy(CLI, exe)
    monkeypatch.setattr(conftest, "WSPLICE", exe)
    px = start_proxy(0, "auto", config=mixed_config(echo.port, plain.port, workers))
    streams = Streams(px.port, echo.port)
    connector = Connector(px.port)
    streams.start()
    connector.start()
    time.sleep(0.5)
    by_engine = {}
    for t in conns(px.pin_dir):
        by_engine[t["engine"]] = by_engine.get(t["engine"], 0) + 1
    assert set(by_engine) >= set(engines()), by_engine
    try:
        yield px, streams, connector
    finally:
        connector.done.set()
        streams.close()
        # A test that failed after an upgrade leaves a master the fixture does not know.
        pid = pid_of(px)
        if pid and pid != px.proc.pid:
            stop_master(pid)


def run_quietly(argv):
    """A diagnostic command: its output, or none where it is missing."""
    try:
        return subprocess.run(argv, capture_output=True, text=True)
    except OSError as e:
        return subprocess.CompletedProcess(argv, 127, "", str(e))


def tcp_drops():
    """The kernel's counts of segments a receiver dropped or pruned."""
    out = run_quietly(["nstat", "-az"]).stdout.split("\n")
    return {l.split()[0]: int(l.split()[1]) for l in out if l.split() and
            any(k in l for k in ("Drop", "Prune", "Memory", "Collapsed", "Retrans", "BeyondWindow"))}


def tcp_drops_since(start):
    """The counts of tcp_drops() that moved since start, as "name +n" text."""
    return ", ".join("%s +%d" % (k, v - start.get(k, 0)) for k, v in sorted(tcp_drops().items())
                     if v != start.get(k, 0))


def where_stuck(px, streams):
    """For a failure: what the proxy and the kernel hold of each tunnel
    that did not finish (its relay's detail, both sockets' queues)."""
    lines = []
    by_port = {int(t["client"].rsplit(":", 1)[1]): t for t in conns(px.pin_dir)}
    for t in streams.stuck[:5]:
        lines.append("tunnel %d (%s): sent %d, received %d; proxy: %s" % (
            t["i"], t["engine"], t["sent"], t["recv"], json.dumps(by_port.get(t["port"]))))
        ss = run_quietly(["ss", "-tnoieH", "sport = :%d or dport = :%d" % (t["port"], t["port"])])
        lines.append(ss.stdout)
    if streams.stuck:
        # The upstream side: the echo server's connections with bytes
        # queued, and which of them the workers' epoll sets watch, and for
        # what (fdinfo's tfd lines, matched by socket inode).
        ss = run_quietly(["ss", "-tnoiemH", "state", "established", "( sport = :%d or dport = :%d )"
                          % (streams.echo_port, streams.echo_port)])
        queued = False
        for l in ss.stdout.splitlines():
            if not l.startswith("\t"):
                queued = l.split()[:2] != ["0", "0"]
            if queued:
                lines.append(l)
        lines.append("TCP drops since the test began: " + tcp_drops_since(streams.drops))
        inodes = set(re.findall(r"ino:(\d+)", "\n".join(lines)))
        for pid in run_quietly(["pgrep", "-f", conftest.WSPLICE]).stdout.split():
            lines += epoll_watches(pid, inodes)
    return "\n".join(lines)


def epoll_watches(pid, inodes):
    """Which of these sockets (by inode) each epoll set of pid watches,
    and for what events (fdinfo's tfd lines)."""
    try:
        fds = {f: os.readlink("/proc/%s/fd/%s" % (pid, f)) for f in os.listdir("/proc/%s/fd" % pid)}
        out = []
        for f in (f for f, target in fds.items() if target == "anon_inode:[eventpoll]"):
            with open("/proc/%s/fdinfo/%s" % (pid, f)) as fi:
                watched = [l.split() for l in fi if l.startswith("tfd:")]
            out.append("pid %s epoll fd %s: %s" % (pid, f, "; ".join(
                "%s=%s events %s" % (w[1], fds[w[1]], w[3]) for w in watched
                if fds.get(w[1], "")[8:-1] in inodes)))
        return out
    except OSError as e:
        return ["pid %s: %s" % (pid, e)]


def check_intact(px, streams, connector, what):
    connector.done.set()
    connector.join(10)
    streams.finish()
    if streams.finish_seconds > 10:
        report("%s: the held tunnels took %.0f s to finish (TCP since the test began: %s)"
               % (what, streams.finish_seconds, tcp_drops_since(streams.drops)))
    assert not streams.failures, "%s: %d failures:\n%s\n%s\n%s" % (what, len(streams.failures),
                                                                    "\n".join(streams.failures[:20]),
                                                                    where_stuck(px, streams), px.read_log())
    assert not connector.failures, "%s: refused or failed connections:\n%s\n%s" % (
        what, "\n".join(connector.failures[:20]), px.read_log())
    assert connector.ok > 0 and streams.echoed == streams.sent > 0
    still_open = sum(1 for t in streams.tunnels if not t.get("eof"))  # the half-closed ones ended
    assert wait_for(lambda: status(px.pin_dir)["tunnels_open"] == still_open, timeout=10), status(px.pin_dir)


@pytest.mark.parametrize("streaming", [1, 2], indirect=True, ids=["1worker", "2workers"])
def test_three_upgrades_keep_every_tunnel_and_connection(streaming):
    px, streams, connector = streaming
    ports = {t["port"]: t["i"] for t in streams.tunnels}
    before = {p: e for p, e in engines_by_port(px).items() if p in ports}
    assert len(before) == TUNNELS, before
    # A connection kept alive between requests goes over too, and goes on.
    kept = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    assert keepalive_request(kept) == b"ok"
    t0 = time.monotonic()
    pids = [pid_of(px)]
    for n, how in enumerate(["command", "signal", "command"]):
        pids.append(upgrade(px, how, n + 1, streams, keep_holding=n == 2))
        assert keepalive_request(kept) == b"ok"
        time.sleep(0.5)  # bytes keep moving under the new process
    elapsed = time.monotonic() - t0
    after = {p: e for p, e in engines_by_port(px).items() if p in ports}
    # The held tunnels' clients half-close while their directions are still
    # backed up (paused, in the sockmap): the FIN passes only after every byte.
    streams.half_close_held()
    check_intact(px, streams, connector, "after three upgrades")
    kept.close()
    # Every tunnel is still there, on the engine it started on.
    assert after == before, {p: (before.get(p), after.get(p)) for p in set(before) | set(after)
                             if before.get(p) != after.get(p)}
    assert px.proc.wait(10) == 0  # the first one ended of itself, cleanly
    log = px.read_log()
    assert "wsplice error:" not in log, log
    # Each worker of each old process handed its share over, all of it.
    handed = [int(l.split("upgrade: ")[1].split()[0]) for l in log.splitlines() if "idle connections handed over" in l]
    assert len(handed) == 3 * status(px.pin_dir)["workers"] and all(handed), handed
    report("3 upgrades with %d tunnels (%s), %d workers: %.1f s; %d bytes echoed, %d new connections, "
           "none lost or refused" % (TUNNELS, "/".join(engines()), status(px.pin_dir)["workers"], elapsed,
                                     streams.echoed, connector.ok))
    stop_master(pids[-1])
    # Under SAN=1: every process of every generation exited clean (their
    # exit statuses are nobody's to see, their reports are in the log).
    assert "Sanitizer" not in px.read_log() and "runtime error" not in px.read_log(), px.read_log()


def broken_binary(path, how):
    """Replaces the binary at path, as a package manager would (rename)."""
    script = {"exits": "#!/bin/sh\necho 'wsplice: a broken build' >&2\nexit 1\n",
              "crashes": "#!/bin/sh\nkill -SEGV $$\n"}[how]
    with open(path + ".new", "w") as f:
        f.write(script)
    os.chmod(path + ".new", 0o755)
    os.rename(path + ".new", path)


@pytest.mark.parametrize("streaming", [2], indirect=True, ids=["2workers"])
@pytest.mark.parametrize("failure", ["exits", "crashes", "bad config", "other listeners", "other workers",
                                     "no access log"])
def test_a_failed_upgrade_keeps_everything_on_the_old_process(streaming, failure, monkeypatch):
    px, streams, connector = streaming
    master = status(px.pin_dir)["pid"]
    good = tempfile.mktemp(prefix="wsplice-good-")
    exe = os.readlink("/proc/%d/exe" % master)
    shutil.copy(exe, good)
    config = open(px.config_path).read()
    try:
        if failure in ("exits", "crashes"):
            broken_binary(exe, failure)
        elif failure == "bad config":
            px.rewrite_config(config + "[route broken]\npool = nowhere\n")
        elif failure == "other listeners":
            px.rewrite_config(config.replace("[pool p]", "[listener other]\nlisten = 127.0.0.1:%d\n[pool p]"
                                             % free_port()))
        elif failure == "other workers":
            px.rewrite_config(config.replace("workers = 2", "workers = 3"))
        else:  # found only after the data plane was adopted, when the workers start
            px.rewrite_config(config.replace("[global]\n", "[global]\naccess_log = /nonexistent/wsplice.log\n"))
        r = subprocess.run([CLI, "upgrade", "--bpffs", px.pin_dir], capture_output=True,
                           text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        assert wait_for(lambda: "upgrade failed:" in px.read_log(), timeout=30), px.read_log()
    finally:
        os.rename(good, exe) if failure in ("exits", "crashes") else os.unlink(good)
        px.rewrite_config(config)
    line = [l for l in px.read_log().splitlines() if "upgrade failed:" in l]
    why = {"exits": "ended before it served", "crashes": "ended before it served",
           "bad config": "cannot load its configuration", "other listeners": "listeners differ",
           "other workers": "workers, max_tunnels and tunnel_buffer", "no access log": "could not start serving"}
    assert len(line) == 1 and "keeps serving" in line[0] and why[failure] in line[0], line
    time.sleep(0.5)
    st = status(px.pin_dir)
    assert st["pid"] == master and px.proc.poll() is None, st
    # The data plane is as it was: pinned, and new tunnels go on splicing.
    assert os.path.exists(os.path.join(px.pin_dir, "tunnels")) or NO_BPF
    before = conftest.bpf_counter(px.pin_dir, conftest.WS_CNT_REDIRECTED) if not NO_BPF else 0
    s, _ = open_tunnel(px.port, "/" + engines()[-1])
    s.sendall(b"still spliced")
    assert recv_exact(s, 13) == b"still spliced"
    s.close()
    assert NO_BPF or conftest.bpf_counter(px.pin_dir, conftest.WS_CNT_REDIRECTED) > before
    report("a failed upgrade (%s): %s" % (failure, line[0].split("upgrade failed: ", 1)[1]))
    # The old process still has everything, and the next upgrade works.
    new = upgrade(px, "command", 1)
    check_intact(px, streams, connector, "after a failed upgrade (%s) and a good one" % failure)
    stop_master(new)
    assert "Sanitizer" not in px.read_log() and "runtime error" not in px.read_log(), px.read_log()
