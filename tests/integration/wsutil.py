"""Helpers for wsplice's integration tests: raw WebSocket handshakes, a
scripted upstream that controls every byte it sends, and bpftool readers.

After the 101 the proxy is a byte pipe, so the tunnel tests move raw bytes
(not frames) and compare them exactly; the real-peer tests use node `ws` and
python3-websockets for framing."""
import errno
import base64
import collections
import hashlib
import json
import os
import selectors
import socket
import subprocess
import threading
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def new_key():
    return base64.b64encode(os.urandom(16))


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def upgrade_request(path="/", key=None, host=b"localhost", extra=b""):
    key = key or new_key()
    req = (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host +
           b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n")
    return req, key


def recv_head(sock, timeout=5.0):
    """Reads up to the blank line; returns (head, bytes read past it)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a complete head: %r" % data)
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


def parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            fields.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], fields


def status_of(head):
    return int(head.split(b" ", 2)[1])


def recv_exact(sock, n, timeout=10.0):
    sock.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(1 << 20, n - len(out)))
        if not chunk:
            raise ConnectionError("EOF after %d of %d bytes" % (len(out), n))
        out += chunk
    return bytes(out)


def recv_until_eof(sock, timeout=10.0):
    sock.settimeout(timeout)
    out = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(out)
        out += chunk


def switching_protocols(key, extra=b""):
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_for(key) + b"\r\n" + extra + b"\r\n")


class ScriptedUpstream:
    """A TCP server on 127.0.0.1 (or host) that runs `handler(conn, request_head,
    leftover)` in a thread per connection: the test decides every byte."""

    def __init__(self, handler, host="127.0.0.1"):
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.requests = []
        self.errors = []
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            head, rest = recv_head(conn)
            self.requests.append(head)
            self.handler(conn, head, rest)
        except Exception as e:  # surfaced by the test through .errors
            self.errors.append(repr(e))
        finally:
            conn.close()

    def close(self):
        """Wakes the accept thread and waits for it before the descriptor
        goes. Closed under a thread blocked in accept(), the descriptor kept
        that thread waiting on the old socket; when its call was restarted,
        the kernel looked the number up again and found a later test's
        listener there: one of that test's connections went to this echo
        handler, and the client read its own bytes back."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # a listener's accept() returns EINVAL
        except OSError:
            pass
        self.thread.join(10)
        assert not self.thread.is_alive(), "the upstream's accept thread did not stop"
        self.sock.close()


def echo_after_101(conn, head, rest, greeting=b""):
    """Upstream handler: accepts the upgrade, echoes every byte, and
    half-closes back once the client has half-closed. A stop's close frame
    (1001, masked, from the copy relay) comes with the proxy's close: what
    is echoed after it meets a reset, which is then no error."""
    conn.sendall(switching_protocols(key_of(head)) + greeting)
    if rest:
        conn.sendall(rest)
    last = b""
    try:
        while True:
            data = conn.recv(1 << 20)
            if not data:
                break
            last = (last + data)[-8:]
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
    except OSError as e:
        if not _reset_after_close_frame(e, last):
            raise


def echo_until_reset(conn, head, seen):
    """Upstream handler: echoes, and says in seen how its stream ended
    ("fin" or "reset"; a reset is what these tests expect, not an error)."""
    conn.sendall(switching_protocols(key_of(head)))
    conn.settimeout(10)
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                seen.append("fin")
                return
            conn.sendall(data)
    except (ConnectionResetError, socket.timeout):
        seen.append("reset")


def _reset_after_close_frame(e, last):
    """Whether OSError e came right after a stop's masked 1001 close frame
    (the last 8 bytes received): the proxy closed behind it."""
    return e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN) and len(last) == 8 and \
        last[:2] == b"\x88\x82" and bytes(b ^ last[2 + i] for i, b in enumerate(last[6:])) == b"\x03\xe9"


def reading_echo(conn, head, rest):
    """echo_after_101 that reads on while its send is blocked, keeping what
    it has not sent yet, and sets no limit on a send. A server that stops
    reading while a send of its blocks can overfill its own receive buffer;
    Linux then takes back the window it had advertised and drops its peer's
    answers to its window probes, and the connection wedges for minutes with
    no byte lost (docs/KERNEL-LOG.md, "A held tunnel's echo server wedges").
    What it keeps is bounded by what its client sends before it reads."""
    conn.sendall(switching_protocols(key_of(head)))
    conn.setblocking(False)
    out = collections.deque([memoryview(rest)] if rest else [])
    sel = selectors.DefaultSelector()
    sel.register(conn, selectors.EVENT_READ)
    eof = False
    last = b""
    try:
        while not eof or out:
            want = (0 if eof else selectors.EVENT_READ) | (selectors.EVENT_WRITE if out else 0)
            sel.modify(conn, want)
            for _, ready in sel.select():
                if ready & selectors.EVENT_READ:
                    try:
                        data = conn.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    if data:
                        last = (last + data)[-8:]
                        out.append(memoryview(data))
                    else:
                        eof = True
                if ready & selectors.EVENT_WRITE:
                    try:
                        n = conn.send(out[0])
                    except BlockingIOError:
                        continue
                    out[0] = out[0][n:]
                    if not out[0]:
                        out.popleft()
        conn.shutdown(socket.SHUT_WR)
    except OSError as e:
        if not _reset_after_close_frame(e, last):
            raise
    finally:
        sel.close()


def one_route_config(*servers, global_="", listener="", pool="", route="", extra=""):
    """The text of a -c file: one listener on "{port}" (the Proxy fixture
    fills it in), pool p of these servers, catch-all route r to it; each
    keyword's lines go into that section, extra after them all."""
    text = "[global]\n%s\n" % global_ if global_ else ""
    text += "[listener main]\nlisten = 127.0.0.1:{port}\n%s\n" % listener
    text += "[pool p]\n%s\n%s\n" % ("\n".join("server = 127.0.0.1:%d" % s for s in servers), pool)
    return text + "[route r]\npool = p\n%s\n%s" % (route, extra)


def key_of(head):
    return parse_head(head)[1]["sec-websocket-key"][0].encode()


def open_tunnel(port, path="/", with_request=b"", extra=b"", timeout=5.0):
    """Connects through the proxy and upgrades; returns (sock, bytes that
    came with or right after the 101)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    req, _ = upgrade_request(path, extra=extra)
    s.sendall(req + with_request)
    head, rest = recv_head(s, timeout)
    assert status_of(head) == 101, head
    return s, rest


def echoes_through(port, data=b"ping", timeout=10.0):
    """True once a tunnel through the proxy on port carries data to an
    echoing upstream and back (the proxy may still be starting)."""
    def once():
        try:
            s, _ = open_tunnel(port, timeout=1)
        except OSError:
            return False
        try:
            s.sendall(data)
            return recv_exact(s, len(data)) == data
        finally:
            s.close()
    return wait_for(once, timeout=timeout)


def bpftool_dump(pin_dir, name):
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", os.path.join(pin_dir, name)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def bpf_counter(pin_dir, index, over_cpus=sum):
    """A per-CPU counter, summed (over_cpus=max for the ones that keep a maximum)."""
    for entry in bpftool_dump(pin_dir, "counters"):
        entry = entry.get("formatted", entry)
        if entry["key"] == index:
            return over_cpus(v["value"] for v in entry["values"])
    return 0


def bpf_tunnels(pin_dir):
    """The tunnels map as a list of BTF-formatted values."""
    return [e.get("formatted", e)["value"] for e in bpftool_dump(pin_dir, "tunnels")]


def connects(port, host="127.0.0.1"):
    """Whether something accepts on port now."""
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


# A liveness bound, not a speed test: under emulation (make vmtest sets 3)
# everything takes longer, and a bound that fits this machine would fail
# there for no fault of the code.
TIME_SCALE = float(os.environ.get("WSPLICE_TEST_TIME_SCALE", "1"))


def wait_for(pred, timeout=5.0, interval=0.01):
    deadline = time.monotonic() + timeout * TIME_SCALE
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def exited(pid):
    """The process has exited (a zombie counts: its parent has not reaped it yet)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


class HttpReader:
    """Reads HTTP/1.1 responses off a socket, keeping what follows."""

    def __init__(self, sock, timeout=5.0):
        self.sock = sock
        self.buf = b""
        sock.settimeout(timeout)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("EOF")
        self.buf += chunk

    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head_request=False):
        """Returns (status, {lower-name: [values]}, body)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, fields = parse_head(head + b"\r\n\r\n")
        status = int(status_line.split(" ")[1])
        if head_request or status < 200 or status in (204, 304):
            return status, fields, b""
        if "chunked" in ",".join(fields.get("transfer-encoding", [])).lower():
            body = b""
            while True:
                size = int(self.line().split(b";")[0], 16)
                if size == 0:
                    while self.line():
                        pass
                    return status, fields, body
                body += self.exact(size)
                assert self.exact(2) == b"\r\n"
        if "content-length" in fields:
            return status, fields, self.exact(int(fields["content-length"][0]))
        body = self.buf
        self.buf = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return status, fields, body
            body += chunk


def percpu_sums(map_id):
    """A per-CPU array's values summed over the CPUs, by key, as bpftool
    dumps the map with this id."""
    out = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)], capture_output=True,
                                    text=True, check=True, timeout=10).stdout)
    sums = {}
    for e in out:
        e = e.get("formatted", e)
        sums[e["key"]] = sum(v["value"] for v in e["values"])
    return sums
