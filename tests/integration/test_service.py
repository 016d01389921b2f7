"""Running wsplice as a service: make install (PREFIX, DESTDIR), the systemd
unit as systemd-analyze reads it, the man page as man renders it, the
Kubernetes example as yamllint reads it, and the sd_notify protocol (READY,
RELOADING, STOPPING) over a real notification socket."""
import os
import shutil
import signal
import socket
import subprocess

import pytest

from conftest import ROOT, WSPLICE, free_port
from wsutil import one_route_config, wait_for


def make_install(**env):
    args = ["make", "--no-print-directory", "install"] + ["%s=%s" % kv for kv in env.items()]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_make_install_stages_everything(tmp_path):
    stage = tmp_path / "stage"
    make_install(DESTDIR=stage, PREFIX="/usr")
    for f in ("usr/sbin/wsplice", "lib/systemd/system/wsplice.service", "usr/share/man/man8/wsplice.8",
              "etc/wsplice/wsplice.conf", "usr/share/doc/wsplice/CONFIG.md", "usr/share/doc/wsplice/DEPLOY.md"):
        assert (stage / f).is_file(), f
    assert os.access(stage / "usr/sbin/wsplice", os.X_OK)
    unit = (stage / "lib/systemd/system/wsplice.service").read_text()
    assert "ExecStart=/usr/sbin/wsplice -c /etc/wsplice/wsplice.conf" in unit and "@" not in unit
    r = subprocess.run([str(stage / "usr/sbin/wsplice"), "-t", "-c", str(stage / "etc/wsplice/wsplice.conf")],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "is ok" in r.stdout, r.stdout + r.stderr
    # An operator's configuration survives a reinstall.
    (stage / "etc/wsplice/wsplice.conf").write_text("; mine\n")
    make_install(DESTDIR=stage, PREFIX="/usr")
    assert (stage / "etc/wsplice/wsplice.conf").read_text() == "; mine\n"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze missing (make deps)")
def test_systemd_accepts_the_unit(tmp_path):
    """Installed with a real prefix, so systemd-analyze finds what the unit runs and documents."""
    prefix = tmp_path / "usr"
    make_install(PREFIX=prefix)
    unit = prefix / "lib/systemd/system/wsplice.service"
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, MANPATH="%s:" % (prefix / "share/man")))
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_the_man_page_renders_without_warnings():
    r = subprocess.run(["make", "--no-print-directory", "man"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["man", "--warnings", "-l", os.path.join(ROOT, "build", "wsplice.8")], capture_output=True,
                       text=True, timeout=30, env=dict(os.environ, MANWIDTH="80"))
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    for section in ("SYNOPSIS", "SUBCOMMANDS", "SIGNALS", "CAPABILITIES", "EXIT STATUS"):
        assert section in r.stdout, section


@pytest.mark.skipif(not shutil.which("yamllint"), reason="yamllint missing (make deps)")
def test_the_kubernetes_example_passes_yamllint():
    r = subprocess.run(["yamllint", "--strict", "-d", "{extends: default, rules: {line-length: {max: 120}}}",
                        os.path.join(ROOT, "packaging", "k8s")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_sd_notify_ready_reloading_and_stopping(upstream, tmp_path):
    """Type=notify: READY=1 once it serves, RELOADING=1 then READY=1 around
    SIGHUP (a refused reload too), STOPPING=1 at SIGTERM."""
    up = upstream(lambda conn, head, rest: None)
    sock_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    notify.settimeout(10)
    conf = tmp_path / "w.conf"
    port = free_port()
    conf.write_text(one_route_config(up.port).replace("{port}", str(port)) + "\n[global]\nmode = copy\n")

    def message():
        return notify.recv(4096).decode()

    p = subprocess.Popen([WSPLICE, "-c", str(conf), "--bpffs", "/sys/fs/bpf/wsplice-notify-%d" % os.getpid()],
                         env=dict(os.environ, NOTIFY_SOCKET=sock_path), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        ready = message()
        assert "READY=1" in ready and "MAINPID=%d" % p.pid in ready, ready
        # READY means serving: the listener accepts right away.
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        p.send_signal(signal.SIGHUP)
        reloading, done = message(), message()
        assert "RELOADING=1" in reloading and "MONOTONIC_USEC=" in reloading, reloading
        assert "READY=1" in done and "generation 2" in done, done
        conf.write_text("[global]\nnonsense = 1\n")
        p.send_signal(signal.SIGHUP)
        assert "RELOADING=1" in message()
        refused = message()
        assert "READY=1" in refused and "reload refused" in refused, refused
        p.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in message()
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        notify.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sd_notify_follows_an_upgrade_to_the_new_process(upstream, tmp_path, workers):
    """What systemd sees of `wsplice upgrade` under the shipped unit
    (NotifyAccess=main: only the main process is heard): the old process
    names the new one MAINPID, never says STOPPING=1, and the new one says
    READY=1 once it serves alone, and STOPPING=1 at its own stop."""
    up = upstream(lambda conn, head, rest: None)
    sock_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notify.bind(sock_path)
    notify.settimeout(10)
    conf = tmp_path / "w.conf"
    port = free_port()
    conf.write_text(one_route_config(up.port).replace("{port}", str(port)) +
                    "\n[global]\nmode = copy\nworkers = %d\n" % workers)
    bpffs = "/sys/fs/bpf/wsplice-notify-up-%d" % os.getpid()
    main = {"pid": None}
    heard = []

    def message():
        """The next message systemd would act on: one from the main process."""
        while True:
            data, anc, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(12))
            pid = int.from_bytes([a for a in anc if a[1] == socket.SCM_CREDENTIALS][0][2][:4], "little")
            text = data.decode()
            heard.append((pid, text))
            if pid == main["pid"]:
                for field in text.split("\n"):
                    if field.startswith("MAINPID="):
                        main["pid"] = int(field[8:])
                return text

    p = subprocess.Popen([WSPLICE, "-c", str(conf), "--bpffs", bpffs],
                         env=dict(os.environ, NOTIFY_SOCKET=sock_path), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    main["pid"] = p.pid
    new = None
    try:
        assert "READY=1" in message()
        p.send_signal(signal.SIGUSR2)
        handed = message()
        new = main["pid"]
        assert new != p.pid and "MAINPID=%d" % new in handed, handed
        ready = message()
        assert "READY=1" in ready and "MAINPID=%d" % new in ready, heard
        assert p.wait(10) == 0
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        os.kill(new, signal.SIGTERM)
        assert "STOPPING=1" in message(), heard
        assert not any("STOPPING=1" in text for pid, text in heard if pid == p.pid), heard
        assert wait_for(lambda: not os.path.exists("/proc/%d/exe" % new), timeout=10)
        new = None
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        if new:
            try:
                os.kill(new, signal.SIGKILL)
            except ProcessLookupError:
                pass
        notify.close()
