#!/usr/bin/env bash
# The namespaces bench (`make bench` runs it after its tables): the express
# lane where the legs are different devices. Three network namespaces joined
# by veth, client -- proxy -- upstream, as three hosts would be:
#   direct    the client connects to the upstream's address; the proxy's
#             namespace forwards (ip_forward), over the same two veths
#   tcsplice  wsplice --mode tcsplice in the proxy's namespace: each tunnel
#             goes express after its quiet moment, the tc program on one veth's
#             ingress sends each segment out of the other (bpf_redirect_neigh)
#   copy      wsplice --mode copy there (the relay the express lane starts on)
# Figures as `make bench`'s: 64-byte ping-pong p50 at 1 and 64 connections,
# 64 KiB echo MB/s (every byte verified), and the whole system's CPU seconds
# per GiB; everything pinned to one CPU (PIN), medians of NS_REPS runs, the
# targets interleaved in every repetition.
#
#   NS_REPS=3  PIN=0 (none: unpinned)  NS_TARGETS="direct tcsplice copy"
#   BENCH_QUICK=1  fewer messages       OUT=build/bench/results
set -euo pipefail
cd "$(dirname "$0")/.."
NS_REPS=${NS_REPS:-3}
PIN=${PIN:-0}
NS_TARGETS=${NS_TARGETS:-"direct tcsplice copy"}
OUT=${OUT:-build/bench/results}
export WS_LOAD_SETTLE_MS=${SETTLE_MS:-200}
RTT1_MSGS=20000 RTT64_MSGS=500 TPUT_MIB=1024
[ -n "${BENCH_QUICK:-}" ] && RTT1_MSGS=2000 RTT64_MSGS=50 TPUT_MIB=128
. scripts/netns_lib.sh
tag=$$
C=wnc-$tag P=wnp-$tag U=wnu-$tag PIN_DIR=/sys/fs/bpf/wsbn-$tag
mkdir -p "$OUT"
# in_ns NS CMD...: CMD in that namespace, pinned. It execs, so call it in a
# subshell: $(...), (...), or in the background, where $! is then CMD's pid.
in_ns() {
	local n=$1
	shift
	[ "$PIN" = none ] && exec nsenter --net=/run/netns/"$n" "$@"
	exec nsenter --net=/run/netns/"$n" taskset -c "$PIN" "$@"
}

netns_add $C $P $U
ip link add c0-$tag netns $C type veth peer name p0-$tag netns $P
ip link add p1-$tag netns $P type veth peer name u0-$tag netns $U
for x in "$C c0 10.80.1.2" "$P p0 10.80.1.1" "$P p1 10.80.2.1" "$U u0 10.80.2.2"; do
	read -r n dev addr <<<"$x"
	ip -n "$n" link set "$dev-$tag" name "$dev"
	ip -n "$n" addr add "$addr/24" dev "$dev"
	ip -n "$n" link set "$dev" up
done
ip -n $C route add default via 10.80.1.1
ip -n $U route add default via 10.80.2.1
ip netns exec $P sysctl -qw net.ipv4.ip_forward=1

in_ns $U "$ECHO" 9000 10.80.2.2 > "$OUT/netns-echo.log" &
for _ in $(seq 50); do grep -q ready "$OUT/netns-echo.log" && break; sleep 0.1; done
grep -q ready "$OUT/netns-echo.log" || { echo "bench netns: ws_echo did not start" >&2; exit 1; }

cpu_jiffies() { awk '/^cpu /{print $2+$3+$4+$6+$7+$8}' /proc/stat; }
field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p"; }
HZ=$(getconf CLK_TCK)
declare -A A
add() { [ -n "$2" ] && A[$1]="${A[$1]:-} $2"; return 0; }

run_target() { # target
	local t=$1 host=10.80.2.2 port=9000 px="" line s0 s1 bytes
	if [ "$t" != direct ]; then
		host=10.80.1.1 port=8080
		in_ns $P "$WSPLICE" --listen 10.80.1.1:8080 --upstream 10.80.2.2:9000 --mode "$t" --workers 1 \
			--bpffs $PIN_DIR --control /run/wsbn-$tag.sock 2> "$OUT/netns-$t.log" &
		px=$!
		local ready=0
		for _ in $(seq 100); do
			(in_ns $C "$LOAD" $host $port hs 0.05 >/dev/null 2>&1) && { ready=1; break; }
			kill -0 $px 2>/dev/null || break
			sleep 0.05
		done
		if [ $ready = 0 ]; then
			echo "bench netns: wsplice --mode $t did not serve:" >&2
			cat "$OUT/netns-$t.log" >&2
			exit 1
		fi
	fi
	line=$(in_ns $C "$LOAD" $host $port rtt 1 $RTT1_MSGS)
	add $t.p50 "$(field p50_us <<<"$line")"
	line=$(in_ns $C "$LOAD" $host $port rtt 64 $RTT64_MSGS)
	add $t.r64 "$(field p50_us <<<"$line")"
	s0=$(cpu_jiffies)
	line=$(in_ns $C "$LOAD" $host $port tput $TPUT_MIB)
	s1=$(cpu_jiffies)
	add $t.mbps "$(field mbps <<<"$line")"
	bytes=$(field bytes <<<"$line")
	add $t.cpu_s "$(awk -v d=$((s1 - s0)) -v b="$bytes" -v hz="$HZ" 'BEGIN{printf "%.2f", d/hz/(b/1073741824)}')"
	if [ "$t" = tcsplice ]; then
		add $t.express "$("$WSPLICE" status --json --control /run/wsbn-$tag.sock |
			sed -n 's/.*"express_handovers":\([0-9]*\).*/\1/p')"
	fi
	if [ -n "$px" ]; then
		kill -TERM $px
		wait $px || true
	fi
}

for rep in $(seq "$NS_REPS"); do
	for t in $NS_TARGETS; do
		echo "bench netns: $t (run $rep of $NS_REPS)" >&2
		run_target "$t"
	done
done

med() { echo "${A[$1]:-}" | tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{a[NR]=$1} END{ if (!NR) print "-"; else print a[int((NR+1)/2)] }'; }
{
	echo
	echo "Namespaces bench: client, proxy and upstream in three network namespaces joined by veth; direct is"
	echo "forwarded by the proxy's namespace over the same veths. Pinned to CPU $PIN, median of $NS_REPS;"
	echo "rtt: 64-byte ping-pong ($RTT1_MSGS at 1 connection, $RTT64_MSGS each at 64), tput: $TPUT_MIB MiB of 64 KiB frames each way."
	printf "%-10s %16s %17s %10s %19s\n" target "1 conn p50 (µs)" "64 conns p50 (µs)" "MB/s" "system CPU (s/GiB)"
	for t in $NS_TARGETS; do
		printf "%-10s %16s %17s %10s %19s\n" "$t" "$(med $t.p50)" "$(med $t.r64)" "$(med $t.mbps)" "$(med $t.cpu_s)"
	done
	if [[ " $NS_TARGETS " == *" tcsplice "* && " $NS_TARGETS " == *" direct "* ]]; then
		echo "tunnels the tc program carried per run (of 66): $(med tcsplice.express)"
		# A figure that is missing ("-") prints as not measured.
		awk -v d1="$(med direct.p50)" -v t1="$(med tcsplice.p50)" -v d64="$(med direct.r64)" -v t64="$(med tcsplice.r64)" \
			-v dm="$(med direct.mbps)" -v tm="$(med tcsplice.mbps)" -v dc="$(med direct.cpu_s)" -v tc="$(med tcsplice.cpu_s)" 'BEGIN{
			if (d1 == "-" || t1 == "-" || d64 == "-" || t64 == "-" || dm == "-" || tm == "-" || dc == "-" || tc == "-" || d1 == 0 || d64 == 0 || dm == 0 || dc == 0) {
				print "express lane vs direct: not measured (a figure is missing)"; exit }
			printf "express lane vs direct: 1 conn p50 %+.1f µs (%+.0f %%), 64 conns p50 %+.0f %%, MB/s %.0f %%, system CPU %+.0f %%\n",
				t1 - d1, (t1 - d1) / d1 * 100, (t64 - d64) / d64 * 100, tm / dm * 100, (tc - dc) / dc * 100 }'
	fi
} | tee "$OUT/netns.txt"
