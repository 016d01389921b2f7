"""The capabilities the kernel path needs, exactly (README, "Least
privilege"): with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN alone the daemon
splices in the kernel; without any one of them it does not load, and auto
says so and runs the copy relay. uid 0 throughout, as the unit runs it:
setpriv narrows the bounding set, so no other capability is there."""
import os
import shutil
import subprocess

import pytest

from conftest import NO_BPF, WSPLICE, free_port, need_sockmap
from wsutil import bpf_counter, echo_after_101, echoes_through, wait_for

NEEDED = ["bpf", "perfmon", "net_admin"]
pytestmark = [pytest.mark.skipif(NO_BPF, reason="WSPLICE_TEST_NO_BPF=1"),
              pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv missing")]


def start(caps, up_port, mode, extra=()):
    port = free_port()
    pin = "/sys/fs/bpf/wsplice-caps-%d-%s" % (os.getpid(), "-".join(caps) or "none")
    argv = ["setpriv", "--bounding-set=-all" + "".join(",+" + c for c in caps), "--inh-caps=-all",
            WSPLICE, "--listen", "127.0.0.1:%d" % port, "--upstream", "127.0.0.1:%d" % up_port, "--mode", mode,
            "--bpffs", pin, "--control", "/run/wsplice/caps-%d.sock" % os.getpid(), *extra]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), port, pin


def stop(p):
    p.terminate()
    _, err = p.communicate(timeout=10)
    return err


def splices_with(caps, up_port, extra=()):
    """The daemon with only these capabilities moves bytes in the kernel and removes its pins at exit."""
    p, port, pin = start(caps, up_port, "sockmap", extra)
    try:
        assert echoes_through(port, b"caps"), stop(p)
        assert wait_for(lambda: bpf_counter(pin, 2) >= 2), "the kernel did not move the bytes"
    finally:
        err = stop(p)
    assert p.returncode == 0, err
    assert not os.path.exists(pin), "pins left behind"


def test_the_three_capabilities_are_enough_for_the_kernel_path(upstream):
    need_sockmap()
    splices_with(NEEDED, upstream(echo_after_101).port)


@pytest.mark.parametrize("missing", NEEDED)
def test_without_one_of_them_the_kernel_path_does_not_load(upstream, missing):
    need_sockmap()
    up = upstream(echo_after_101)
    caps = [c for c in NEEDED if c != missing]
    p, _, pin = start(caps, up.port, "sockmap")
    err = p.communicate(timeout=10)[1]
    assert p.returncode == 1, "sockmap ran without CAP_%s:\n%s" % (missing.upper(), err)
    assert len([l for l in err.splitlines() if "error" in l]) == 1, err
    p, port, pin = start(caps, up.port, "auto")
    try:
        assert echoes_through(port, b"caps")
    finally:
        err = stop(p)
    assert "mode auto: the copy relay (sockmap cannot run here" in err, err
    assert not os.path.exists(pin)


def test_the_units_capabilities_run_sockmap_workers_as_a_user(upstream):
    """packaging/wsplice.service's set: the three, the port's, and setuid and
    setgid for `user =`; the workers then splice as nobody."""
    need_sockmap()
    splices_with(NEEDED + ["net_bind_service", "setuid", "setgid"], upstream(echo_after_101).port,
                 ("--workers", "2", "--user", "nobody"))
