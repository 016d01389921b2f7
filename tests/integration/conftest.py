"""Fixtures: a real wsplice process per test, in each tunnel mode, with its
own pin directory so tests never share BPF maps."""
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from wsutil import ScriptedUpstream, bpf_counter, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WSPLICE = os.environ.get("WSPLICE_BIN", os.path.join(ROOT, "build", "wsplice"))
NO_BPF = os.environ.get("WSPLICE_TEST_NO_BPF") == "1"
# WSPLICE_TEST_NO_SOCKMAP=1: the kernel cannot run the sockmap verdict
# (before 6.2), but other BPF (the express lane's tc program) runs.
NO_SOCKMAP = NO_BPF or os.environ.get("WSPLICE_TEST_NO_SOCKMAP") == "1"
MODES = ["sockmap", "auto", "splice", "copy", "tcsplice"]
# For what is each worker's own, as in nginx: an upstream connection pool,
# a balancer's turn, a server's failure count, a process's descriptors.
ONE_WORKER = ("--workers", "1")
PEERS = os.path.join(ROOT, "tests", "peers")
_seq = itertools.count()

# Indexes of the counters map (include/wsplice_maps.h).
WS_CNT_REDIRECTED = 2
WS_CNT_OVERLAP_SKBS, WS_CNT_OVERLAP_BYTES, WS_CNT_TRIM_FAILED = 4, 5, 6
WS_CNT_PAUSES = 7
WS_CNT_PAUSE_DEFERRED = 8
WS_CNT_UNFLAGGED = 9
WS_CNT_OVERLAP_MAX, WS_CNT_OVERLAP_FIRST, WS_CNT_TRIM_ERRNO, WS_CNT_BROKEN_DROPS = 10, 11, 12, 13


def trim_figures(pin_dir):
    """The trim's counters as one line, and what in them is a failure: a
    trim that could not complete, or an skb dropped because one did."""
    k = {i: bpf_counter(pin_dir, i) for i in (WS_CNT_OVERLAP_SKBS, WS_CNT_OVERLAP_FIRST, WS_CNT_OVERLAP_BYTES,
                                              WS_CNT_TRIM_FAILED, WS_CNT_BROKEN_DROPS)}
    largest = bpf_counter(pin_dir, WS_CNT_OVERLAP_MAX, max)
    line = ("%d skbs came partly delivered (%d of them a direction's first), %d bytes trimmed, largest %d; "
            "%d trims failed, %d skbs dropped for it" % (k[WS_CNT_OVERLAP_SKBS], k[WS_CNT_OVERLAP_FIRST],
                                                          k[WS_CNT_OVERLAP_BYTES], largest, k[WS_CNT_TRIM_FAILED],
                                                          k[WS_CNT_BROKEN_DROPS]))
    failures = []
    if k[WS_CNT_TRIM_FAILED] or k[WS_CNT_BROKEN_DROPS]:
        failures.append("a trim failed (largest helper errno %d)" % bpf_counter(pin_dir, WS_CNT_TRIM_ERRNO, max))
    return line, failures


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_sockmap():
    """Skips the calling test when the run was told not to use BPF, or
    not the sockmap verdict."""
    if NO_BPF:
        pytest.skip("WSPLICE_TEST_NO_BPF=1")
    if NO_SOCKMAP:
        pytest.skip("WSPLICE_TEST_NO_SOCKMAP=1")


def need_bpf():
    """Skips the calling test when the run was told not to use BPF."""
    if NO_BPF:
        pytest.skip("WSPLICE_TEST_NO_BPF=1")


class Proxy:
    def __init__(self, upstream_port, mode, extra=(), listen_host="127.0.0.1", upstream_host="127.0.0.1", config=None,
                 listen_port=None, pin_dir=None):
        """config: the text of a -c file; "{port}" in it is this proxy's
        listening port (self.port), and upstream_port is then unused."""
        if mode == "sockmap":
            need_sockmap()
        self.mode = mode
        self.kernel = mode == "sockmap"
        self.waited_express = False
        self.port = listen_port or free_port()
        self.pin_dir = pin_dir or "/sys/fs/bpf/wsplice-test-%d-%d" % (os.getpid(), next(_seq))
        self.log = tempfile.NamedTemporaryFile(prefix="wsplice-", suffix=".log", delete=False)
        self.config_path = None
        if config is not None:
            with tempfile.NamedTemporaryFile("w", prefix="wsplice-", suffix=".conf", delete=False) as f:
                f.write(config.replace("{port}", str(self.port)))
            self.config_path = f.name
            where = ["-c", self.config_path]
        else:
            listen = "%s:%d" % (listen_host if ":" not in listen_host else "[%s]" % listen_host, self.port)
            up = upstream_host if ":" not in upstream_host else "[%s]" % upstream_host
            where = ["--listen", listen, "--upstream", "%s:%d" % (up, upstream_port)]
        # WSPLICE_TEST_USER=nobody: the suite again with workers that gave up root.
        as_user = ["--user", os.environ["WSPLICE_TEST_USER"]] if os.environ.get("WSPLICE_TEST_USER") else []
        # mode None: no --mode, the file's mode (and express) rule.
        self.argv = [WSPLICE, *where, *(["--mode", mode] if mode else []), "--bpffs", self.pin_dir, *as_user, *extra] + \
            (["-v"] if os.environ.get("WSPLICE_TEST_VERBOSE") else [])
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("wsplice exited %s:\n%s" % (self.proc.returncode, self.read_log()))
            try:
                socket.create_connection((listen_host, self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("wsplice did not listen:\n" + self.read_log())
                time.sleep(0.02)
        # The listening sockets take connections from the moment they are
        # bound, before every worker runs: the daemon serves once it says so
        # (announce(): all workers started). Under emulation the second
        # worker came after the first connection (CI, 6.12 VM).
        assert wait_for(lambda: re.search(r"(listening on|configuration) .*, mode \w+, \d+ workers?", self.read_log())
                        or self.proc.poll() is not None, timeout=20), "wsplice did not say it serves:\n" + self.read_log()
        if mode == "auto":
            # What auto chose decides what the test may assert; a run that
            # can use BPF must have got the kernel path.
            chose = [l for l in self.read_log().splitlines() if "mode auto:" in l]
            assert len(chose) == 1, "auto said nothing, or more than once:\n" + self.read_log()
            self.kernel = "mode auto: sockmap" in chose[0]
            assert self.kernel or NO_BPF, "auto chose the copy relay:\n" + self.read_log()
        # Let the probe connection's session close before anyone counts fds.
        wait_for(lambda: self.fd_count() == self.fd_count_after(0.05), timeout=2)

    def fd_count_after(self, delay):
        time.sleep(delay)
        return self.fd_count()

    def rewrite_config(self, config):
        """Whole or not at all, as an editor saves it: a reload never reads half a file."""
        with open(self.config_path + ".new", "w") as f:
            f.write(config.replace("{port}", str(self.port)))
        os.rename(self.config_path + ".new", self.config_path)

    def reload(self, expect="reloaded"):
        """SIGHUP, then waits for the log line that says how it went."""
        before = self.read_log().count(expect)
        self.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: self.read_log().count(expect) > before, timeout=5), self.read_log()

    def read_log(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def ask(self, what):
        """`wsplice status|conns --json`, parsed."""
        r = subprocess.run([WSPLICE, what, "--json", "--bpffs", self.pin_dir], capture_output=True, text=True,
                           timeout=10)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def conns(self):
        """Every open tunnel as the daemon sees it (`wsplice conns --json`), for a failure's report."""
        r = subprocess.run([WSPLICE, "conns", "--json", "--bpffs", self.pin_dir], capture_output=True, text=True,
                           timeout=10)
        return r.stdout if r.returncode == 0 else "wsplice conns failed: " + r.stderr

    def pids(self):
        """The daemon's processes: the master (or the single process) and its workers."""
        try:
            with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
                return [self.proc.pid] + [int(p) for p in f.read().split()]
        except OSError:
            return [self.proc.pid]

    def fd_count(self):
        n = 0
        for pid in self.pids():
            try:
                n += len(os.listdir("/proc/%d/fd" % pid))
            except OSError:
                pass
        return n

    def rss_kib(self):
        total = 0
        for pid in self.pids():
            try:
                with open("/proc/%d/status" % pid) as f:
                    total += sum(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            except OSError:
                pass
        return total

    def redirected(self):
        return bpf_counter(self.pin_dir, WS_CNT_REDIRECTED)

    def assert_kernel_path(self, at_least=1):
        """In sockmap mode the bytes must really have been moved by BPF; in
        tcsplice mode, where the test made a quiet moment and waited for it
        (wait_express), a tunnel must still count as gone express. A test
        whose peers never pause may finish on the relay: whether one of its
        tunnels went express is timing, and is not asserted."""
        if self.kernel:
            n = self.redirected()
            assert n >= at_least, "BPF verdict redirected only %d skbs" % n
        if self.mode == "tcsplice" and self.waited_express:
            assert self.express_handovers() >= 1, "no tunnel went express:\n" + self.read_log()

    def wait_express(self, n=1, timeout=5):
        """In tcsplice mode, until n tunnels went express (the test's next
        step then happens in the tc program); in other modes nothing."""
        self.waited_express = True
        if self.mode == "tcsplice":
            assert wait_for(lambda: self.express_handovers() >= n, timeout=timeout), \
                "%d tunnels went express, not %d:\n%s" % (self.express_handovers(), n, self.read_log())

    def express_handovers(self):
        """Tunnels the tc express lane took over (`wsplice status --json`)."""
        return self.ask("status")["express_handovers"]

    def stop(self):
        if self.mode == "tcsplice" and self.proc.poll() is None:
            try:  # a figure: whatever it says, the daemon is stopped below
                _EXPRESS.append((os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0],
                                 self.express_handovers()))
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise AssertionError("wsplice ignored SIGTERM:\n" + self.read_log())
        log = self.read_log()
        os.unlink(self.log.name)
        if self.config_path:
            os.unlink(self.config_path)
        assert self.proc.returncode == 0, "wsplice exited %d:\n%s" % (self.proc.returncode, log)
        assert "ERROR: AddressSanitizer" not in log and "runtime error" not in log, log
        assert not os.path.exists(self.pin_dir), "pins left behind in " + self.pin_dir


@pytest.fixture(params=MODES)
def mode(request):
    if request.param == "sockmap":
        need_sockmap()
    if request.param == "tcsplice":
        need_bpf()
    if request.param == "tcsplice" and os.environ.get("WSPLICE_TEST_USER"):
        pytest.skip("tcsplice freezes sockets with TCP_REPAIR: root workers only")
    return request.param


@pytest.fixture(params=["sockmap", "auto"])
def kmode(request):
    """The kernel-path modes, for tests about the kernel path itself."""
    need_sockmap()
    return request.param


@pytest.fixture
def start_proxy():
    started = []

    def start(upstream_port, mode, extra=(), **kw):
        p = Proxy(upstream_port, mode, extra, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def upstream():
    servers = []

    def make(handler, **kw):
        s = ScriptedUpstream(handler, **kw)
        servers.append(s)
        return s

    yield make
    # Every server stops before any assertion: one left accepting would
    # take a later test's connections (ScriptedUpstream.close).
    for s in servers:
        s.close()
    for s in servers:
        assert not s.errors, s.errors


def pytest_sessionstart(session):
    if not os.path.exists(WSPLICE):
        raise pytest.UsageError("build wsplice first (make): %s missing" % WSPLICE)
    if NO_BPF:
        return
    # Fail loudly when the kernel path cannot run, instead of skipping it.
    if os.geteuid() != 0:
        raise pytest.UsageError("sockmap tests need root (or set WSPLICE_TEST_NO_BPF=1)")
    # Also where the kernel is too old for the verdict (before 6.2, docs/KERNEL.md
    # the trim): wsplice says so, and the message ends up here.
    try:
        Proxy(1, "tcsplice" if NO_SOCKMAP else "sockmap").stop()
    except AssertionError as e:
        raise pytest.UsageError("BPF cannot be used here (set WSPLICE_TEST_NO_BPF=1 to skip "
                                "the sockmap tests):\n%s" % e)


_REPORT = []
_EXPRESS = []  # (test, handovers) of every tcsplice proxy


def report(line):
    """A figure worth seeing in CI output (peaks, fallbacks): printed at the end."""
    _REPORT.append(line)


def pytest_terminal_summary(terminalreporter):
    if _EXPRESS:
        express = sum(1 for _, n in _EXPRESS if n)
        report("tcsplice: %d of %d proxies handed tunnels to the express lane (%d tunnels)" %
               (express, len(_EXPRESS), sum(n for _, n in _EXPRESS)))
        # Where a tunnel test's tunnels all stayed on the relay (too short
        # for a quiet moment or a drain): the suite's tunnel tests by name.
        none = sorted(set(t.split("::")[-1] for t, n in _EXPRESS
                          if not n and t.split("::")[0] in ("test_tunnel.py", "test_stress.py", "test_integrity.py")))
        if none:
            report("tcsplice: no tunnel went express in %s" % ", ".join(none))
    if _REPORT:
        terminalreporter.section("wsplice figures")
        for line in _REPORT:
            terminalreporter.write_line(line)
