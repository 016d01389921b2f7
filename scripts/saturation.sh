#!/usr/bin/env bash
# The worst tunnel stall under CPU saturation, sockmap beside copy in one run
# (docs/PERFORMANCE.md, "Saturation"). BUSY busy loops (`yes`, unpinned) keep
# every vCPU busy while TUNNELS tunnels do strict 64-byte ping-pong through
# each mode; the repetitions interleave the modes. The worst stall is the
# largest round trip any tunnel saw: every message is answered before the
# next one is sent, so a tunnel that stalls shows as one long round trip.
# Two shapes of traffic (GAPS, in µs): back to back (0), and sparse, each
# tunnel waiting after every answer, where a redirect's work item is queued
# alone behind the busy loops (docs/KERNEL-LOG.md, "The redirect worker
# under CPU saturation").
#
#   MODES="sockmap copy"  REPS=3  TUNNELS=200  MSGS=200  GAPS="0 20000"  BUSY=2
set -euo pipefail
cd "$(dirname "$0")/.."
MODES=${MODES:-"sockmap copy"}
REPS=${REPS:-3}
TUNNELS=${TUNNELS:-200}
MSGS=${MSGS:-200}
GAPS=${GAPS:-"0 20000"}
BUSY=${BUSY:-2}
LOAD=build/bench/ws_load ECHO=build/bench/ws_echo WSPLICE=build/wsplice
ECHO_PORT=21200 PROXY_PORT=21201
OUT=${OUT:-build/bench/saturation}
mkdir -p "$OUT"
[ -x $LOAD ] && [ -x $ECHO ] && [ -x $WSPLICE ] || { echo "saturation: run 'make all bench-tools' first" >&2; exit 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

listening() {
	for _ in $(seq 200); do
		(exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
		sleep 0.05
	done
	echo "saturation: nothing listens on $1" >&2
	return 1
}

$ECHO $ECHO_PORT >/dev/null 2>&1 &
pids+=($!)
listening $ECHO_PORT
for _ in $(seq "$BUSY"); do
	yes >/dev/null &
	pids+=($!)
done
echo "# $(uname -r), $(nproc) vCPUs, $BUSY busy loops, $TUNNELS tunnels x $MSGS round trips of 64 bytes, unpinned"
printf '%-8s %8s %4s %9s %9s %10s %10s\n' mode gap_us rep p50_us p99_us p999_us max_us
for rep in $(seq "$REPS"); do
	for gap in $GAPS; do
	for mode in $MODES; do
		pin="/sys/fs/bpf/wsplice-saturation-$$"
		$WSPLICE --listen 127.0.0.1:$PROXY_PORT --upstream 127.0.0.1:$ECHO_PORT --mode "$mode" --bpffs "$pin" \
			>"$OUT/$mode-$rep.log" 2>&1 &
		px=$!
		listening $PROXY_PORT
		line=$($LOAD 127.0.0.1 $PROXY_PORT rtt "$TUNNELS" "$MSGS" - "$gap")
		kill "$px"
		wait "$px" || true
		eval "${line// /;}"
		printf '%-8s %8s %4s %9s %9s %10s %10s\n' "$mode" "$gap" "$rep" "$p50_us" "$p99_us" "$p999_us" "$max_us"
	done
	done
done
