#!/bin/bash
# What one sockmap pause costs with N idle TCP sockets in the namespace: the
# pause iterator (bpf/splice.bpf.c) locks every TCP socket in turn. Opens
# N/2 idle loopback connections, drives bulk echo through wsplice in sockmap
# mode until pauses happen, and prints the median and max pause time from
# the daemon's debug log (docs/KERNEL.md §13).
#   scripts/trace/pause_cost.sh [N ...]     (default: 0 2000 20000; needs root)
set -euo pipefail
cd "$(dirname "$0")/../.."
B=build
[ -x $B/wsplice ] && [ -x $B/bench/ws_load ] || { echo "make && make bench-tools first" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)"  # 20 000 here (KERNEL-FACTS); N must stay below it
for n in "${@:-0 2000 20000}"; do
	log=$(mktemp)
	/usr/bin/python3 - "$n" <<'PY' &
import socket, sys, time
n = int(sys.argv[1]) // 2
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(4096)
keep = []
for i in range(n):
    c = socket.create_connection(l.getsockname()); s, _ = l.accept(); keep += [c, s]
print("idle sockets: %d" % (2 * n), file=sys.stderr, flush=True)
time.sleep(3600)
PY
	idle=$!
	sleep $((n / 4000 + 2))
	$B/bench/ws_echo 19401 >/dev/null 2>&1 & echo_pid=$!
	$B/wsplice --listen 127.0.0.1:19400 --upstream 127.0.0.1:19401 --mode sockmap \
		--bpffs /sys/fs/bpf/wsplice-pausecost -v 2>"$log" & px=$!
	sleep 1
	for i in 1 2 3; do $B/bench/ws_load 127.0.0.1 19400 tput 256 >/dev/null; done
	kill $px $echo_pid $idle; wait $px $echo_pid $idle 2>/dev/null || true
	grep -o 'paused in [0-9]* us' "$log" | awk -v n="$n" '{print $3}' | sort -n | awk -v n="$n" '
		{ v[NR] = $1 } END { if (!NR) { printf "%6d idle sockets: no pauses\n", n; exit }
		  printf "%6d idle sockets: %d pauses, median %d us, max %d us\n", n, NR, v[int((NR + 1) / 2)], v[NR] }'
	rm -f "$log"
done
