#!/usr/bin/python3
"""Holds N idle TCP sockets on this host's loopback, half of them established
(N/4 connected pairs) and half in TIME_WAIT, so a measurement can show
whether a cost grows with the host's sockets. The established ones are
spread over child processes, each within the hard fd limit. Creates the
file READY when they all exist, then sleeps until killed (at most an hour).
    idle_sockets.py N READY"""
import os
import resource
import signal
import socket
import sys
import time

n, ready = int(sys.argv[1]), sys.argv[2]
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
per_proc = (hard - 256) // 2  # connected pairs one process can hold

est = socket.socket()
est.bind(("127.0.0.1", 0))
est.listen(4096)
children = []
pairs = n // 4
while pairs > 0:
    k = min(pairs, per_proc)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        keep = []
        for _ in range(k):
            c = socket.create_connection(est.getsockname())
            s, _ = est.accept()
            keep += [c, s]
        os.write(w, b"1")
        time.sleep(3600)
        os._exit(0)
    if os.read(r, 1) != b"1":
        sys.exit("a holder process failed")
    children.append(pid)
    pairs -= k
tw = socket.socket()
tw.bind(("127.0.0.2", 0))
tw.listen(4096)
for i in range(n // 2):
    # The client closes first, so its end waits in TIME_WAIT (it has no fd);
    # each from its own source address, so the ephemeral ports last.
    src = "127.0.%d.%d" % (1 + i // 250 % 250, 1 + i % 250)
    c = socket.create_connection(tw.getsockname(), source_address=(src, 0))
    s, _ = tw.accept()
    c.close()
    s.close()


def stop(*_):
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
open(ready, "w").close()
time.sleep(3600)
stop()
