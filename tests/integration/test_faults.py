"""Integrity under faults: bulk echo through wsplice inside a network
namespace whose loopback drops about 1 % of TCP segments and sends about
0.5 % twice (bpf/fault_inject.bpf.c, a tc program: this kernel has no
netem). Retransmissions and duplicates reach the verdict as skbs that overlap
bytes already delivered, which the trim must cut (docs/KERNEL.md, the trim);
ws_load compares every byte it gets back. The copy relay runs the same as a
control."""
import json
import os
import subprocess

import pytest

from conftest import NO_BPF, WS_CNT_PAUSES, WS_CNT_REDIRECTED, WSPLICE, need_sockmap, report, trim_figures
from wsutil import percpu_sums, wait_for

BENCH = os.path.join(os.path.dirname(WSPLICE), "bench")
SETTLE_LOSSY_MS = "600"
INJECTOR = os.path.join(os.path.dirname(WSPLICE), "fault_inject.bpf.o")
pytestmark = pytest.mark.skipif(NO_BPF, reason="WSPLICE_TEST_NO_BPF=1 (the injector is BPF too)")


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, text=True, check=check)


@pytest.fixture
def lossy_ns():
    ns = "wsf-%d" % os.getpid()
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "clsact")
        sh("ip", "netns", "exec", ns, "tc", "filter", "add", "dev", "lo", "egress", "bpf", "direct-action", "obj",
           INJECTOR, "sec", "tc")
        shown = sh("ip", "netns", "exec", ns, "tc", "filter", "show", "dev", "lo", "egress").stdout
        prog_id = int(shown.split(" id ")[1].split()[0])
        (map_id,) = json.loads(sh("bpftool", "-j", "prog", "show", "id", str(prog_id)).stdout)["map_ids"]
        yield ns, map_id
    finally:
        sh("ip", "netns", "del", ns, check=False)


@pytest.mark.parametrize("mode", ["sockmap", "auto", "tcsplice", "tcsplice-busy", "copy"])
def test_bulk_echo_across_a_lossy_duplicating_loopback(lossy_ns, mode, tmp_path):
    """tcsplice-busy: the loads start their bulk at once, so their tunnels
    reach the express lane through a drain (strip-freeze), under loss."""
    if mode in ("sockmap", "auto"):
        need_sockmap()
    busy = mode == "tcsplice-busy"
    mode = "tcsplice" if busy else mode
    ns, map_id = lossy_ns
    # nsenter changes only the network namespace: the host's bpffs stays.
    run = ["nsenter", "--net=/run/netns/" + ns]
    pin = "/sys/fs/bpf/wsplice-faults-%d" % os.getpid()
    log = tmp_path / "wsplice.log"  # debug: a tunnel that stayed on the relay says why
    echo = subprocess.Popen(run + [os.path.join(BENCH, "ws_echo"), "9000"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # The echo server first: a proxy without BPF to load (copy) listens at
    # once, and a load that came before ws_echo would get a 502.
    listening = lambda port: sh(*run, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/%d" % port,
                                check=False).returncode == 0
    assert wait_for(lambda: listening(9000), timeout=10), "ws_echo did not listen in the namespace"
    proxy = subprocess.Popen(run + [WSPLICE, "--listen", "127.0.0.1:9100", "--upstream", "127.0.0.1:9000", "--mode",
                                    mode, "--bpffs", pin, "--metrics", "127.0.0.1:9200", "-v"],
                             stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True)
    try:
        assert wait_for(lambda: listening(9100), timeout=10), "wsplice did not listen in the namespace"
        failures = []
        # In tcsplice each load is quiet for a moment after its upgrade, so
        # that the express lane (on the namespace's lo, after the injector
        # on its egress) carries the bulk and its retransmissions. 600 ms,
        # not 200: a request or 101 the injector dropped comes again after
        # an RTO (200 ms at least), and only then is the tunnel quiet (make
        # vmtest's 6.12 run saw 9 of 10 with 200).
        env = dict(os.environ, WS_LOAD_SETTLE_MS=SETTLE_LOSSY_MS if mode == "tcsplice" and not busy else "0")
        # Busy: long enough that each tunnel is still running when its drain
        # may begin (200 ms on the relay), however fast this machine is.
        mib = "512" if busy else "128"
        for rep in range(5):
            loads = [subprocess.Popen(run + [os.path.join(BENCH, "ws_load"), "127.0.0.1", "9100", "tput", mib],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                     for _ in range(2)]
            for p in loads:
                out, err = p.communicate(timeout=300)
                if p.returncode != 0 or "verified=1" not in out:
                    failures.append("rep %d: %s %s" % (rep, out.strip(), err.strip()))
        faults = percpu_sums(map_id)
        line = "faults [%s]: %d segments seen, %d dropped, %d duplicated" % (mode, faults[0], faults[1], faults[2])
        if mode == "tcsplice":
            st = json.loads(sh(*run, WSPLICE, "status", "--json", "--bpffs", pin).stdout)
            line += "; %d of 10 tunnels went express" % st["express_handovers"]
            failures += ["only %d of 10 tunnels went express" % st["express_handovers"]] \
                if st["express_handovers"] < 10 else []
            if busy:
                metrics = sh(*run, "python3", "-c", "import urllib.request as u; print(u.urlopen("
                             "'http://127.0.0.1:9200/metrics', timeout=5).read().decode())").stdout
                stripped = int(metrics.split('wsplice_express_events_total{event="stripped"} ')[1].split()[0])
                line = line.replace("[tcsplice]", "[tcsplice, busy]") + ", %d segments stripped" % stripped
                failures += ["no drain: nothing stripped"] if not stripped else []
        elif mode != "copy":
            from wsutil import bpf_counter
            redirects, pauses = bpf_counter(pin, WS_CNT_REDIRECTED), bpf_counter(pin, WS_CNT_PAUSES)
            trims, trim_failures = trim_figures(pin)
            line += "; kernel: %d redirects, %d pauses, %s" % (redirects, pauses, trims)
            failures += ["the kernel moved nothing"] if redirects < 1000 else []
            failures += trim_failures
        report(line)
        # The faults must really have happened, at about the rates asked for.
        assert faults[1] > 0.002 * faults[0] and faults[2] > 0.001 * faults[0], line
        why = [ln for ln in log.read_text().splitlines() if "copy relay" in ln or "drain" in ln or "went express" in ln]
        assert not failures, "\n".join(failures + why[-40:])
    finally:
        proxy.terminate()
        echo.terminate()
        proxy.wait(10)
        echo.wait(10)
    assert proxy.returncode == 0, log.read_text()[-3000:]
    assert not os.path.exists(pin)
