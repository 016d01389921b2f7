#!/bin/bash
# What one sockmap pause costs with N idle TCP sockets on the host, half of
# them established and half in TIME_WAIT. A pause is filed by the verdict
# and carried out by the source socket's next safe sock_ops header callback
# (bpf/splice.bpf.c, "the pause"); the daemon's debug log says how long that
# took for each one. It must not depend on N (docs/KERNEL.md, "the pause").
# Drives bulk echo through wsplice in sockmap mode until pauses happen and
# prints the count, median, 99th percentile and max of the pause times.
#   scripts/trace/pause_cost.sh [N ...]     (default: 0 10000 50000; needs root)
set -euo pipefail
cd "$(dirname "$0")/../.."
B=build
[ -x $B/wsplice ] && [ -x $B/bench/ws_load ] || { echo "make && make bench-tools first" >&2; exit 2; }
for n in "${@:-0 10000 50000}"; do
	log=$(mktemp) ready=$(mktemp -u)
	scripts/idle_sockets.py "$n" "$ready" &
	idle=$!
	for _ in $(seq 600); do [ -e "$ready" ] || ! kill -0 $idle 2>/dev/null && break; sleep 0.5; done
	[ -e "$ready" ] || { echo "idle sockets not ready" >&2; kill $idle; exit 1; }
	have=$(ss -Htan state established '( sport >= :1 )' | wc -l)
	tw=$(ss -Htan state time-wait | wc -l)
	$B/bench/ws_echo 19401 >/dev/null 2>&1 & echo_pid=$!
	$B/wsplice --listen 127.0.0.1:19400 --upstream 127.0.0.1:19401 --mode sockmap \
		--bpffs /sys/fs/bpf/wsplice-pausecost -v 2>"$log" & px=$!
	sleep 1
	for i in 1 2 3; do $B/bench/ws_load 127.0.0.1 19400 tput 256 >/dev/null; done
	kill $px $echo_pid $idle; wait $px $echo_pid $idle 2>/dev/null || true
	rm -f "$ready"
	grep -o 'paused in [0-9]* us' "$log" | awk '{print $3}' | sort -n | awk -v n="$n" -v e="$have" -v t="$tw" '
		{ v[NR] = $1 } END { if (!NR) { printf "%6d idle sockets: no pauses\n", n; exit }
		  i = int(NR * 0.99); if (i < 1) i = 1
		  printf "%6d idle sockets (ss: %d established, %d time-wait): %d pauses, median %d us, p99 %d us, max %d us\n",
		         n, e, t, NR, v[int((NR + 1) / 2)], v[i], v[NR] }'
	rm -f "$log"
done
