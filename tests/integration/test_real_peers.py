"""Real WebSocket peers through wsplice, in every mode: node `ws` on both
ends, and Debian's python3-websockets as a client."""
import asyncio
import hashlib
import os
import subprocess
import time

import pytest
import websockets

from conftest import PEERS, free_port


@pytest.fixture
def node_server():
    procs = []

    def start(script, **env):
        port = free_port()
        p = subprocess.Popen(["node", os.path.join(PEERS, script)], cwd=PEERS,
                             env={**os.environ, "PORT": str(port), **env},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(p)
        line = p.stdout.readline()
        assert "listening" in line or "ready" in line, line
        return port, p

    yield start
    for p in procs:
        p.terminate()
        p.wait(5)


def node_client(*args):
    return subprocess.run(["node", os.path.join(PEERS, args[0]), *args[1:]], cwd=PEERS,
                          capture_output=True, text=True, timeout=90)


def test_demo_backend_greets_and_logs(node_server, start_proxy, mode):
    port, server = node_server("demo_server.js")
    px = start_proxy(port, mode)
    r = node_client("ws_client.js", "ws://127.0.0.1:%d/" % px.port, "hello-from-client")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "example"
    server.terminate()
    out, _ = server.communicate(timeout=5)
    assert "received: hello-from-client" in out
    px.assert_kernel_path(at_least=2)


@pytest.mark.parametrize("check", ["bulk", "frames"])
def test_node_client_and_server(node_server, start_proxy, mode, check):
    port, _ = node_server("echo_server.js")
    px = start_proxy(port, mode)
    r = node_client("check_client.js", "ws://127.0.0.1:%d/" % px.port, check)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok " + check)
    px.assert_kernel_path(at_least=2)


async def python_client(url):
    async with websockets.connect(url, max_size=None) as ws:
        payload = os.urandom(4 << 20)
        await ws.send(payload)
        echoed = await ws.recv()
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        for i in range(10000):
            await ws.send("frame-%d" % i)
        for i in range(10000):
            assert await ws.recv() == "frame-%d" % i


def test_python_websockets_client(node_server, start_proxy, mode):
    port, _ = node_server("echo_server.js")
    px = start_proxy(port, mode)
    asyncio.run(asyncio.wait_for(python_client("ws://127.0.0.1:%d/" % px.port), 60))
    px.assert_kernel_path(at_least=2)
