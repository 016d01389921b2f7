"""Bulk echo streams through each mode, unpinned so the relay (or, in
sockmap mode, the verdict, the redirect worker and the daemon) runs on both
CPUs, with backpressure engaging all the time; ws_load compares every byte.
In sockmap mode the pauses make loopback TCP retransmit, and retransmitted
segments that partly overlap delivered bytes reach the verdict whole: before
the verdict trimmed them (docs/KERNEL.md, "the trim") most runs got bytes
twice or lost some."""
import os
import subprocess


from conftest import WS_CNT_PAUSES, WS_CNT_UNFLAGGED, WSPLICE, free_port, report, trim_figures
from wsutil import bpf_counter, wait_for

BENCH = os.path.join(os.path.dirname(WSPLICE), "bench")


def test_bulk_streams_under_backpressure_arrive_intact(start_proxy, mode):
    echo_port = free_port()
    echo = subprocess.Popen([os.path.join(BENCH, "ws_echo"), str(echo_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket

        def up():
            try:
                socket.create_connection(("127.0.0.1", echo_port), timeout=1).close()
                return True
            except OSError:
                return False

        assert wait_for(up, timeout=5)
        px = start_proxy(echo_port, mode)
        failures = []
        # In tcsplice each load is quiet for a moment after its upgrade, so
        # the express lane carries the bulk.
        env = dict(os.environ, WS_LOAD_SETTLE_MS="200" if mode == "tcsplice" else "0")
        for rep in range(10):
            loads = [subprocess.Popen([os.path.join(BENCH, "ws_load"), "127.0.0.1", str(px.port), "tput", "256"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                     for _ in range(2)]
            for p in loads:
                out, err = p.communicate(timeout=120)
                if p.returncode != 0 or "verified=1" not in out:
                    failures.append("rep %d: %s" % (rep, err.strip()))
        if mode == "tcsplice":
            express = px.express_handovers()
            report("bulk echo [tcsplice]: %d of 20 tunnels went express" % express)
            failures += ["only %d of 20 tunnels went express" % express] if express < 20 else []
        if px.kernel:
            trims, trim_failures = trim_figures(px.pin_dir)
            pauses = bpf_counter(px.pin_dir, WS_CNT_PAUSES)
            report("bulk echo [%s]: %s; %d pauses" % (mode, trims, pauses))
            failures += trim_failures
            # Pausing is what this test is about: it must have happened, in the kernel.
            failures += ["no pause happened"] if not pauses else []
            failures += ["a pause was asked of an unflagged socket"] if bpf_counter(px.pin_dir, WS_CNT_UNFLAGGED) else []
        assert not failures, "\n".join(failures)
    finally:
        echo.terminate()
        echo.wait(5)


def test_a_small_tunnel_buffer_keeps_bulk_moving(start_proxy, kmode):
    """A budget far below the default still moves bulk at full speed. The
    spliced sockets' receive buffer was half the budget: at 256k that is a
    window of about two 64 KiB loopback segments, the peers stalled on their
    probe timers after every pause, and 256 MiB took 36 s (KERNEL-LOG.md, "A
    small budget starves the window"). A liveness bound, not a speed test."""
    echo_port = free_port()
    echo = subprocess.Popen([os.path.join(BENCH, "ws_echo"), str(echo_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: subprocess.run(["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/%d" % echo_port],
                                               capture_output=True).returncode == 0, timeout=5)
        px = start_proxy(echo_port, kmode, extra=("--tunnel-buffer", "256k"))
        load = subprocess.run([os.path.join(BENCH, "ws_load"), "127.0.0.1", str(px.port), "tput", "256"],
                              capture_output=True, text=True, timeout=30)
        assert load.returncode == 0 and "verified=1" in load.stdout, load.stderr
        pauses = bpf_counter(px.pin_dir, WS_CNT_PAUSES)
        report("256 MiB through --tunnel-buffer 256k [%s]: %s, %d pauses" % (kmode, load.stdout.strip(), pauses))
        assert pauses, "the small budget never paused: the test did not test it"
    finally:
        echo.terminate()
        echo.wait(5)
