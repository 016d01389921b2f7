#!/usr/bin/env bash
# The XDP guard's figures (`make bench` runs this after its tables): a
# well-behaved client's handshakes through wsplice (connect, upgrade, close,
# one at a time, XDP_PACE a second: p50, p99, max), with and without a SYN flood from another
# host, with and without the guard. Three network namespaces: the client and
# the flooder each on a veth to the proxy's, where wsplice and the echo
# upstream run; the guard is native XDP on the proxy's two veths. The flood
# comes from 10.79.2.3, an address nobody holds: its SYN-ACKs go unanswered,
# as a real flood's do, so it fills the SYN queue. Unpinned:
# the flood needs a CPU of its own. Each figure is the median of XDP_REPS
# runs, the four cases interleaved in every repetition.
#
#   XDP_SECS=5   seconds per measurement      XDP_REPS=3
#   XDP_PACE=100 the client's handshakes a second (below the guard's rate:
#                a client above it would be limited too, by design)
#   XDP_RATE=200 the guard's xdp_syn_rate (per source)
#   XDP_FLOOD_PPS=300000  the flood's SYNs a second, the same with and without
#                the guard (0: as fast as one raw socket sends; the guard's cheap
#                drops then let it send more than the stack lets through)
#   OUT=build/bench/results
set -euo pipefail
cd "$(dirname "$0")/.."
XDP_SECS=${XDP_SECS:-5}
XDP_PACE=${XDP_PACE:-100}
XDP_REPS=${XDP_REPS:-3}
XDP_RATE=${XDP_RATE:-200}
XDP_FLOOD_PPS=${XDP_FLOOD_PPS:-300000}
OUT=${OUT:-build/bench/results}
. scripts/netns_lib.sh
FLOOD=$(pwd)/build/bench/syn_flood
tag=$$
C=wbc-$tag F=wbf-$tag P=wbp-$tag PIN_DIR=/sys/fs/bpf/wsbx-$tag
mkdir -p "$OUT"
# nsenter execs the command: in the background, $! is its pid.
ns() { echo --net=/run/netns/"$1"; }

netns_add $C $F $P
net=1
for n in $C $F; do
	ip link add v$tag netns "$n" type veth peer name p$net-$tag netns $P
	ip -n "$n" link set v$tag name eth0
	ip -n $P link set p$net-$tag name p$net
	ip -n "$n" addr add 10.79.$net.2/24 dev eth0
	ip -n $P addr add 10.79.$net.1/24 dev p$net
	ip -n "$n" link set eth0 up
	ip -n $P link set p$net up
	net=$((net + 1))
done

nsenter "$(ns $P)" "$ECHO" 9000 127.0.0.1 > "$OUT/xdp-echo.log" &
sleep 0.3

# What reaches the TCP stack: the proxy namespace's SYN cookies (the SYN
# queue overflowed), and the host's softirq time, where both the guard's
# drop and the stack's SYN handling run.
cookies() { nsenter "$(ns $P)" cat /proc/net/netstat | awk '/^TcpExt:/{ if (!c) { for (i = 1; i <= NF; i++) if ($i == "SyncookiesSent") c = i } else print $c }'; }
softirq() { awk '/^cpu /{print $8}' /proc/stat; }
HZ=$(getconf CLK_TCK) NCPU=$(nproc)

declare -A R
run_case() { # guard(on|off) flood(yes|no)
	local guard=$1 flood=$2 args=() out fpid="" syns="-" limited="-"
	[ "$guard" = on ] && args=(--xdp p1,p2 --xdp-syn-rate "$XDP_RATE")
	local log=$OUT/xdp-wsplice-$guard-$flood.log
	nsenter "$(ns $P)" "$WSPLICE" --listen 0.0.0.0:8080 --upstream 127.0.0.1:9000 --workers 1 --bpffs $PIN_DIR \
		--control /run/wsbx-$tag.sock "${args[@]}" 2> "$log" &
	local px=$! ready=0
	for _ in $(seq 100); do
		nsenter "$(ns $C)" "$LOAD" 10.79.1.1 8080 hs 0.05 >/dev/null 2>&1 && { ready=1; break; }
		kill -0 $px 2>/dev/null || break
		sleep 0.05
	done
	if [ $ready = 0 ]; then
		echo "bench xdp: wsplice did not serve (guard $guard):" >&2
		cat "$log" >&2
		kill $px 2>/dev/null || true
		exit 1
	fi
	if [ "$flood" = yes ]; then
		nsenter "$(ns $F)" "$FLOOD" 10.79.2.3 10.79.2.1 8080 "$((XDP_SECS + 1))" 100000000 "$XDP_FLOOD_PPS" > "$OUT/xdp-flood.out" &
		fpid=$!
		sleep 0.5
	fi
	local c0 s0 t0
	c0=$(cookies) s0=$(softirq) t0=$(date +%s.%N)
	out=$(nsenter "$(ns $C)" "$LOAD" 10.79.1.1 8080 hs "$XDP_SECS" "$XDP_PACE")
	R[$guard.$flood.cookies]+=" $(( $(cookies) - c0 ))"
	R[$guard.$flood.softirq]+=" $(awk -v d="$(( $(softirq) - s0 ))" -v t0="$t0" -v t1="$(date +%s.%N)" -v hz="$HZ" -v n="$NCPU" 'BEGIN{printf "%.0f", d/hz/(t1-t0)/n*100}')"
	if [ -n "$fpid" ]; then
		wait "$fpid"
		syns=$(sed -n 's/syns=//p' "$OUT/xdp-flood.out")
	fi
	if [ "$guard" = on ]; then
		limited=$(bpftool -j map dump pinned $PIN_DIR/xdp/guard_stats |
			python3 -c 'import json,sys; print(sum(v["value"] for e in json.load(sys.stdin) for v in e.get("formatted", e)["values"] if e.get("formatted", e)["key"] == 2))')
	fi
	kill -TERM $px
	wait $px || true
	# Gone: a pid left in the list could be someone else's by cleanup.
	local k=$guard.$flood
	R[$k.hs]+=" $(echo "$out" | sed -n 's/.*hs_per_s=\([0-9.]*\).*/\1/p')"
	R[$k.p50]+=" $(echo "$out" | sed -n 's/.*hs_p50_us=\([0-9.]*\).*/\1/p')"
	R[$k.p99]+=" $(echo "$out" | sed -n 's/.*hs_p99_us=\([0-9.]*\).*/\1/p')"
	R[$k.max]+=" $(echo "$out" | sed -n 's/.*hs_max_us=\([0-9.]*\).*/\1/p')"
	R[$k.syns]+=" $syns"
	R[$k.limited]+=" $limited"
}

for rep in $(seq "$XDP_REPS"); do
	for guard in off on; do
		for flood in no yes; do
			echo "bench xdp: rep $rep, guard $guard, flood $flood" >&2
			run_case $guard $flood
		done
	done
done

med() { echo "${R[$1]:-}" | tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{a[NR]=$1} END{ if (!NR) print "-"; else if (a[1]=="-") print "-"; else print a[int((NR+1)/2)] }'; }
{
	echo
	echo "XDP guard: one client's handshakes through wsplice (mode auto, 1 worker), $XDP_PACE a second for $XDP_SECS s,"
	echo "median of $XDP_REPS; the flood: SYNs from another namespace (an address nobody holds), one raw socket,"
	echo "$XDP_FLOOD_PPS a second (0: as fast as it sends);"
	echo "guard: native XDP on the proxy's veths, xdp_syn_rate $XDP_RATE"
	echo "(SYN cookies: sent by the proxy's stack while the client ran; softirq: the host's, % of all CPUs)"
	printf "%-22s %12s %10s %10s %10s %13s %13s %12s %8s\n" "case" "handshakes/s" "p50 (µs)" "p99 (µs)" "max (µs)" \
		"flood SYNs/s" "XDP dropped" "SYN cookies" "softirq"
	for guard in off on; do
		for flood in no yes; do
			k=$guard.$flood
			syns=$(med $k.syns)
			[ "$syns" != "-" ] && syns=$(awk -v s="$syns" -v t="$((XDP_SECS + 1))" 'BEGIN{printf "%.0f", s/t}')
			printf "%-22s %12s %10s %10s %10s %13s %13s %12s %7s%%\n" "guard $guard, flood $flood" "$(med $k.hs)" \
				"$(med $k.p50)" "$(med $k.p99)" "$(med $k.max)" "$syns" "$(med $k.limited)" "$(med $k.cookies)" \
				"$(med $k.softirq)"
		done
	done
} | tee "$OUT/xdp.txt"
