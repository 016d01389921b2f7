"""A real Vite 7 dev server behind wsplice in sockmap mode: headless Chromium
loads the page through wsplice, sees "[vite] connected.", and an edit on
disk reaches the page over the HMR socket without a reload. The browser is
told to open the HMR socket on wsplice's port (server.hmr.clientPort), so
the test cannot pass by talking to Vite directly."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.request

import pytest

from conftest import NO_BPF, ROOT, free_port
from wsutil import wait_for

HMR = os.path.join(ROOT, "tests", "hmr")


def plain(text):
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.fixture
def vite():
    work = tempfile.mkdtemp(prefix="wsplice-vite-")
    app = os.path.join(work, "app")
    shutil.copytree(os.path.join(HMR, "app"), app)  # the test edits msg.js
    port = free_port()
    proxy_port = free_port()
    log_path = os.path.join(work, "vite.log")
    # No colours: with CI=true Vite would colour its log, splitting the words checked below.
    env = dict(os.environ, VITE_PORT=str(port), WSPLICE_PORT=str(proxy_port), NO_COLOR="1")
    env.pop("FORCE_COLOR", None)
    # Vite appends through a file description of its own: one shared with
    # the reader below moved Vite's write offset on every seek(0), and its
    # next line overwrote "ready in" (a CI failure).
    with open(log_path, "a") as out:
        proc = subprocess.Popen(["node", os.path.join(HMR, "node_modules", "vite", "bin", "vite.js"),
                                 "--config", os.path.join(app, "vite.config.js")],
                                cwd=app, env=env, stdout=out, stderr=subprocess.STDOUT)

    def ready():
        with open(log_path) as f:
            return "ready in" in plain(f.read())

    try:
        assert wait_for(ready, timeout=30), open(log_path).read()
        yield {"port": port, "proxy_port": proxy_port, "app": app, "log": log_path}
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def run_check(px, vite, quiet_ms=0):
    """The browser: loads the page through px, waits for "[vite] connected.",
    stays quiet quiet_ms, edits msg.js, and waits for the new text."""
    r = subprocess.run(["node", os.path.join(HMR, "hmr_check.js"), "http://127.0.0.1:%d/" % px.port,
                        os.path.join(vite["app"], "msg.js")], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, HMR_QUIET_MS=str(quiet_ms)))
    out = r.stdout.strip().splitlines()
    result = json.loads(out[-1]) if out else {}
    assert r.returncode == 0, (result, r.stderr[-2000:], open(vite["log"]).read()[-2000:], px.read_log())
    assert result["connected"] and result["updated"] and not result["reloaded"]


def test_vite_hmr_through_wsplice_sockmap(vite, start_proxy, kmode):
    px = start_proxy(vite["port"], kmode, listen_port=vite["proxy_port"])
    run_check(px, vite)
    # The HMR update crossed the kernel splice, not a userspace relay.
    px.assert_kernel_path()
    assert "hmr update /main.js" in plain(open(vite["log"]).read())  # main.js accepts msg.js


@pytest.mark.skipif(NO_BPF, reason="WSPLICE_TEST_NO_BPF=1")
def test_vite_hmr_through_the_express_lane(vite, start_proxy):
    """--mode tcsplice: the HMR socket is quiet after "[vite] connected.",
    goes express, and the update after the edit is carried by the tc
    program (its bytes are the kernel's, counted upstream to client)."""
    mport = free_port()
    px = start_proxy(vite["port"], "tcsplice", listen_port=vite["proxy_port"],
                     extra=("--metrics", "127.0.0.1:%d" % mport))
    run_check(px, vite, quiet_ms=1000)
    px.wait_express()
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5).read().decode()
    m = re.search(r'wsplice_tunnel_kernel_bytes_total\{direction="upstream_to_client"\} (\d+)', text)
    assert m and int(m.group(1)) > 0, "the update did not cross the express lane:\n" + text
    assert "hmr update /main.js" in plain(open(vite["log"]).read())
