#!/usr/bin/env bash
# `make bench`: wsplice beside nginx and HAProxy in one run, on loopback.
# Targets: direct (no proxy), wsplice --mode tcsplice|sockmap|splice|copy, nginx
# (1 worker, the usual WebSocket config) and HAProxy (1 thread, timeout tunnel).
# Figures: 64-byte ping-pong RTT at 1 and 64 connections, 64 KiB echo
# throughput (every byte verified), handshakes/s, userspace RSS per idle
# tunnel, CPU seconds per GiB (the proxy's own and the whole system's).
# Each figure is the median of REPS runs, with the spread (min-max).
#
#   PIN=0       pin client, upstream and proxy to this CPU (default 0); PIN=none: no pinning
#   REPS=3      repetitions per figure
#   TARGETS="direct tcsplice sockmap splice copy nginx haproxy"
#   SETTLE_MS=200  a quiet moment after a client opens its tunnels, before
#               the first timed byte, for every target: the express lane
#               (tcsplice) takes a tunnel over once it has been quiet for
#               20 ms, and its figures are then the tc program's
#   IDLE=3000   idle tunnels for the RSS figure (0 skips it); a splice tunnel
#               that carried a message holds six descriptors (two sockets, two
#               pipes), and a container's hard limit can be 20 000
#   IDLE_SOCKETS=0  extra idle TCP sockets held on the host during the run
#               (half established, half TIME_WAIT: scripts/idle_sockets.py)
#   RPS_CPUS=   steer loopback's receive processing (softirq, and with it the
#               sockmap verdict and its redirect worker) to these CPUs, e.g. 1,
#               for every target; restored at exit. Default: unchanged.
#   BENCH_QUICK=1  fewer messages (for the VM, where only ratios mean anything)
#   WTARGETS="sockmap-w1 sockmap-w2 nginx-w2"  the workers table: unpinned,
#               handshakes/s from HS_CLIENTS=4 clients at once and the p50/p99
#               at 64 connections, wsplice with 1 and 2 workers beside nginx
#               with 2 (WTARGETS= skips it). The main table runs one worker
#               each, pinned.
#   XDP_BENCH=0 skips the XDP guard's table (scripts/bench_xdp.sh), run after the others
#   NETNS_BENCH=0 skips the namespaces table (scripts/bench_netns.sh): the express
#               lane across veth, beside direct and copy
#   OUT=build/bench/results   where samples, logs and the table go
set -euo pipefail
cd "$(dirname "$0")/.."
PIN=${PIN:-0}
REPS=${REPS:-3}
TARGETS=${TARGETS:-"direct tcsplice sockmap splice copy nginx haproxy"}
export WS_LOAD_SETTLE_MS=${SETTLE_MS:-200}
IDLE=${IDLE:-3000}
IDLE_SOCKETS=${IDLE_SOCKETS:-0}
OUT=${OUT:-build/bench/results}
RTT1_MSGS=20000 RTT64_MSGS=500 TPUT_MIB=1024 HS_SECS=3
if [ -n "${BENCH_QUICK:-}" ]; then
	RTT1_MSGS=2000 RTT64_MSGS=50 TPUT_MIB=128 HS_SECS=2 IDLE=${IDLE_QUICK:-500}
fi
# The sockmap verdict needs Linux 6.2+ (docs/KERNEL.md, the trim); wsplice refuses
# sockmap mode on older kernels, so the bench leaves that target out there.
if [[ " $TARGETS " == *" sockmap "* ]] && ! grep -qw bpf_cast_to_kern_ctx /proc/kallsyms; then
	echo "bench: leaving out sockmap: kernel $(uname -r) lacks the kfuncs its verdict needs (Linux 6.2+)" >&2
	TARGETS=$(echo " $TARGETS " | sed 's/ sockmap / /; s/^ *//; s/ *$//')
fi
LOAD=build/bench/ws_load
ECHO=build/bench/ws_echo
# Below the ephemeral range, so no client connection can be holding them.
ECHO_PORT=21100
mkdir -p "$OUT"
rm -f "$OUT"/*.samples "$OUT"/*.log

for tool in nginx haproxy gnuplot taskset; do
	command -v $tool >/dev/null && continue
	pkg=$tool; [ $tool = taskset ] && pkg=util-linux; [ $tool = gnuplot ] && pkg=gnuplot-nox
	echo "bench: installing $pkg"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkg >/dev/null 2>&1 ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkg >/dev/null; }
done
ulimit -n "$(ulimit -Hn)"

pin() { if [ "$PIN" = none ]; then "$@"; else taskset -c "$PIN" "$@"; fi; }
# Starts a pinned program in the background; $! is the program itself.
spawn() {
	local out=$1
	shift
	if [ "$PIN" = none ]; then "$@" >"$out" 2>&1 & else taskset -c "$PIN" "$@" >"$out" 2>&1 & fi
}
placement() { [ "$PIN" = none ] && echo "unpinned" || echo "client, upstream and proxy pinned to CPU $PIN (taskset)"; }

wait_port() {
	for _ in $(seq 100); do
		(exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
		sleep 0.05
	done
	echo "bench: nothing listens on $1" >&2
	return 1
}

cpu_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
proc_jiffies() { awk '{print $14+$15}' "/proc/$1/stat"; }
proc_user_sys() { awk '{print $14, $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
# jiffies spent over N handshakes, as µs per handshake
us_per_hs() { awk -v j="$1" -v n="$2" -v hz="$HZ" 'BEGIN{ if (n>0) printf "%.1f", j/hz*1e6/n; else print 0 }'; }

# Sets TP (the port the client connects to) and PROXY_PID (the process
# whose CPU and RSS are measured; empty for direct).
PROXY_PID=
TP=
start_target() {
	local t=$1 port=$2
	TP=$port
	case $t in
	direct) PROXY_PID= TP=$ECHO_PORT; return ;;
	tcsplice | sockmap | splice | copy | sockmap-w* | copy-w* | tcsplice-w*)
		# One worker, as nginx and HAProxy get, unless the name says (-wN).
		local workers=1
		[[ $t == *-w* ]] && workers=${t##*-w}
		spawn "$OUT/$t.log" build/wsplice --listen 127.0.0.1:$port --upstream 127.0.0.1:$ECHO_PORT \
			--mode "${t%-w*}" --workers "$workers" --bpffs /sys/fs/bpf/wsplice-bench
		PROXY_PID=$! ;;
	nginx | nginx-w*)
		local workers=1 reuse=
		[[ $t == *-w* ]] && workers=${t##*-w} reuse=" reuseport"
		sed "s/@PORT@/$port$reuse/; s/@UPSTREAM@/$ECHO_PORT/; s|@DIR@|$PWD/$OUT|; s/^worker_processes 1;/worker_processes $workers;/" \
			scripts/bench/nginx.conf > "$OUT/nginx.conf"
		spawn "$OUT/nginx.log" nginx -c "$PWD/$OUT/nginx.conf" -p "$PWD/$OUT"
		local master=$!
		wait_port "$port"
		PROXY_PID=$(pgrep -P "$master" | head -n 1) ;;
	haproxy)
		sed "s/@PORT@/$port/; s/@UPSTREAM@/$ECHO_PORT/" scripts/bench/haproxy.cfg > "$OUT/haproxy.cfg"
		spawn "$OUT/haproxy.log" haproxy -db -f "$OUT/haproxy.cfg"
		PROXY_PID=$! ;;
	esac
	wait_port "$port"
}

stop_target() {
	local t=$1
	case $t in
	direct) ;;
	nginx*) pkill -f "nginx -c $PWD/$OUT/nginx.conf" || true ;;
	*) [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null || true ;;
	esac
	[ -n "$PROXY_PID" ] && while kill -0 "$PROXY_PID" 2>/dev/null; do sleep 0.05; done
	sleep 0.2
}

# idle_batch PORT N FILE: N more idle tunnels, held by a client that reads
# the fifo $OUT/hold until the bench closes it; waits for its "ready".
idle_batch() {
	pin $LOAD 127.0.0.1 "$1" idle "$2" <"$OUT/hold" >"$3" 2>&1 {HOLD}>&- &
	IDLE_PIDS+=($!)
	for _ in $(seq 600); do
		grep -q '^ready' "$3" && return 0
		kill -0 $! 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

# median and spread of a list of numbers: "median (min-max)"
stat3() { tr ' ' '\n' | sort -g | awk 'NF{v[++n]=$1} END{if(!n){print "-";exit} printf "%s %s %s\n", v[int((n+1)/2)], v[1], v[n]}'; }
field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p"; }

HOLDER_PID=
if [ "$IDLE_SOCKETS" -gt 0 ]; then
	rm -f "$OUT/idle.ready"
	scripts/idle_sockets.py "$IDLE_SOCKETS" "$OUT/idle.ready" &
	HOLDER_PID=$!
	for _ in $(seq 600); do [ -e "$OUT/idle.ready" ] || ! kill -0 $HOLDER_PID 2>/dev/null && break; sleep 0.5; done
	[ -e "$OUT/idle.ready" ] || { echo "bench: $IDLE_SOCKETS idle sockets not ready" >&2; exit 1; }
	echo "bench: $IDLE_SOCKETS idle TCP sockets on the host ($(ss -Htan state time-wait | wc -l) in TIME_WAIT)" >&2
fi
spawn /dev/null $ECHO $ECHO_PORT
ECHO_PID=$!
trap 'rc=$?; set +e; kill $ECHO_PID ${PROXY_PID:-} ${HOLDER_PID:-} 2>/dev/null; pkill -f "nginx -c $PWD/$OUT"; pkill -f "haproxy -db -f $OUT"; [ -n "$RPS_WAS" ] && echo "$RPS_WAS" >$RPS_FILE; exit $rc' EXIT
RPS_FILE=/sys/class/net/lo/queues/rx-0/rps_cpus
RPS_WAS=
if [ -n "${RPS_CPUS:-}" ]; then
	[[ "$RPS_CPUS" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "bench: RPS_CPUS=$RPS_CPUS: a comma-separated list of CPU numbers" >&2; exit 2; }
	mask=0
	for c in ${RPS_CPUS//,/ }; do
		[ "$c" -lt "$(nproc)" ] && [ "$c" -lt 32 ] || { echo "bench: RPS_CPUS: no CPU $c here (0-$(($(nproc) - 1)), at most 31)" >&2; exit 2; }
		mask=$((mask | (1 << c)))
	done
	RPS_WAS=$(cat $RPS_FILE) # the EXIT trap above puts it back
	printf '%x\n' $mask >$RPS_FILE
	echo "bench: loopback receive processing steered to CPU ${RPS_CPUS} (rps_cpus=$(cat $RPS_FILE))" >&2
fi
wait_port $ECHO_PORT

declare -A R
# Repetitions are interleaved (every target once, then again), so a drift of
# the host during the run spreads over all targets instead of one.
declare -A A PORT
port=21200
for t in $TARGETS; do
	port=$((port + 1))
	PORT[$t]=$port
done
# add KEY VALUE: one more sample of a figure
add() { [ -n "$2" ] && A[$1]="${A[$1]:-} $2"; return 0; }
for rep in $(seq "$REPS"); do
	for t in $TARGETS; do
		echo "bench: $t (run $rep of $REPS)" >&2
		start_target "$t" "${PORT[$t]}"
		tp=$TP
		samples=
		[ "$rep" = 1 ] && samples="$OUT/$t.samples"
		line=$(pin $LOAD 127.0.0.1 "$tp" rtt 1 $RTT1_MSGS $samples)
		add $t.p50 "$(field p50_us <<<"$line")"; add $t.p99 "$(field p99_us <<<"$line")"
		add $t.p999 "$(field p999_us <<<"$line")"; add $t.max "$(field max_us <<<"$line")"
		line=$(pin $LOAD 127.0.0.1 "$tp" rtt 64 $RTT64_MSGS)
		add $t.r64 "$(field p50_us <<<"$line")"; add $t.r64_99 "$(field p99_us <<<"$line")"
		s0=$(cpu_jiffies); p0=0; [ -n "$PROXY_PID" ] && p0=$(proc_jiffies "$PROXY_PID")
		line=$(pin $LOAD 127.0.0.1 "$tp" tput $TPUT_MIB)
		s1=$(cpu_jiffies); p1=0; [ -n "$PROXY_PID" ] && p1=$(proc_jiffies "$PROXY_PID")
		add $t.mbps "$(field mbps <<<"$line")"
		bytes=$(field bytes <<<"$line")
		add $t.cpu_s "$(awk -v d=$((s1 - s0)) -v b="$bytes" -v hz="$HZ" 'BEGIN{printf "%.2f", d/hz/(b/1073741824)}')"
		[ -n "$PROXY_PID" ] && add $t.cpu_p "$(awk -v d=$((p1 - p0)) -v b="$bytes" -v hz="$HZ" 'BEGIN{printf "%.2f", d/hz/(b/1073741824)}')"
		# CPU per handshake: the proxy's user and system time, and the
		# whole system's (two TCP connections per proxied handshake).
		s0=$(cpu_jiffies); read -r u0 k0 <<<"0 0"; [ -n "$PROXY_PID" ] && read -r u0 k0 <<<"$(proc_user_sys "$PROXY_PID")"
		line=$(pin $LOAD 127.0.0.1 "$tp" hs $HS_SECS)
		s1=$(cpu_jiffies); read -r u1 k1 <<<"0 0"; [ -n "$PROXY_PID" ] && read -r u1 k1 <<<"$(proc_user_sys "$PROXY_PID")"
		add $t.hs "$(field hs_per_s <<<"$line")"
		# The 1 + 64 + 1 tunnels timed above: how many the tc program carried.
		[ "$t" = tcsplice ] && add $t.express \
			"$(build/wsplice status --json --bpffs /sys/fs/bpf/wsplice-bench | sed -n 's/.*"express_handovers":\([0-9]*\).*/\1/p')"
		n=$(field handshakes <<<"$line")
		add $t.hs_s "$(us_per_hs $((s1 - s0)) "$n")"
		[ -n "$PROXY_PID" ] && add $t.hs_u "$(us_per_hs $((u1 - u0)) "$n")" && add $t.hs_k "$(us_per_hs $((k1 - k0)) "$n")"
		stop_target "$t"
	done
done

# The workers table: every CPU in use (nothing pinned), several clients
# handshaking at once, and the 64-connection round trips.
WTARGETS=${WTARGETS-"sockmap-w1 sockmap-w2 nginx-w2"}
HS_CLIENTS=${HS_CLIENTS:-4}
PIN_MAIN=$PIN
PIN=none
for rep in $(seq "$REPS"); do
	for t in $WTARGETS; do
		echo "bench: $t, unpinned (run $rep of $REPS)" >&2
		port=$((port + 1))
		start_target "$t" $port
		pids=()
		for i in $(seq "$HS_CLIENTS"); do
			$LOAD 127.0.0.1 "$TP" hs $HS_SECS >"$OUT/$t.hs$i" &
			pids+=($!)
		done
		wait "${pids[@]}"
		add $t.whs "$(cat "$OUT/$t".hs* | field hs_per_s | awk '{s+=$1} END{printf "%.0f", s}')"
		line=$($LOAD 127.0.0.1 "$TP" rtt 64 $RTT64_MSGS)
		add $t.w64 "$(field p50_us <<<"$line")"; add $t.w64_99 "$(field p99_us <<<"$line")"
		stop_target "$t"
	done
done
PIN=$PIN_MAIN
for t in $WTARGETS; do
	for k in whs w64 w64_99; do
		R[$t.$k]=$(echo "${A[$t.$k]:-}" | stat3)
	done
done

for t in $TARGETS; do
	port=${PORT[$t]}
	for k in p50 p99 p999 max r64 r64_99 mbps hs cpu_s cpu_p hs_u hs_k hs_s express; do
		R[$t.$k]=$(echo "${A[$t.$k]:-}" | stat3)
	done
	R[$t.rss]="-"
	if [ "$IDLE" -gt 0 ] && [ "$t" != direct ]; then
		start_target "$t" $port
		tp=$TP
		sleep 0.2
		# The slope from a third of the tunnels to all of them: what one
		# more idle tunnel costs, without the one-off growth the first
		# ones cause (malloc arenas, tables that double).
		first=$((IDLE / 3))
		rm -f "$OUT/hold" && mkfifo "$OUT/hold"
		IDLE_PIDS=()
		exec {HOLD}<>"$OUT/hold"
		if idle_batch "$tp" $first "$OUT/$t.idle1" && sleep 0.5 && r1=$(rss_kib "$PROXY_PID") &&
			idle_batch "$tp" $((IDLE - first)) "$OUT/$t.idle2"; then
			sleep 0.5
			r2=$(rss_kib "$PROXY_PID")
			R[$t.rss]=$(awk -v a="$r2" -v b="$r1" -v n="$((IDLE - first))" 'BEGIN{printf "%.0f", (a-b)*1024/n}')
		else
			echo "bench: $IDLE idle tunnels failed for $t (see $OUT/$t.log and $OUT/$t.idle*)" >&2
			R[$t.rss]="failed"
			kill "${IDLE_PIDS[@]}" 2>/dev/null || true
		fi
		exec {HOLD}>&- # EOF: the idle clients close their tunnels and exit
		wait "${IDLE_PIDS[@]}" 2>/dev/null || true
		stop_target "$t"
	fi
done

med() { echo "${R[$1]:--}" | awk '{print $1}'; }
fmt() { echo "${R[$1]}" | awk '{ if ($1=="-") print "-"; else if ($2==$3) print $1; else printf "%s (%s-%s)\n", $1, $2, $3 }'; }
ratio() { # value of target / value of nginx
	awk -v a="$(med "$1")" -v b="$(med "nginx.${1#*.}")" 'BEGIN{ if (b>0 && a!="-") printf "%.2f", a/b; else print "-" }'
}

{
	echo "wsplice bench: $(date -u +%Y-%m-%dT%H:%MZ), kernel $(uname -r), $(nproc) CPUs, $(placement), $IDLE_SOCKETS extra idle TCP sockets, loopback rps_cpus=$(cat $RPS_FILE)"
	echo "median of $REPS runs (min-max); ×nginx = this target's median over nginx's"
	echo "RTT: 64-byte frames, strict ping-pong ($RTT1_MSGS msgs at 1 conn, $RTT64_MSGS per conn at 64); MB/s: 64 KiB frames echoed, ${TPUT_MIB} MiB, verified"
	echo
	printf "%-8s | %-22s | %-22s | %-20s | %-20s | %-24s | %-22s | %-20s | %-9s | %-14s | %-14s\n" \
		target "1 conn p50 µs" "1 conn p99 µs" "1 conn p99.9 µs" "1 conn max µs" "64 conns p50 µs" "64 conns p99 µs" "MB/s" "×nginx" \
		"handshakes/s" "RSS/idle B"
	for t in $TARGETS; do
		printf "%-8s | %-22s | %-22s | %-20s | %-20s | %-24s | %-22s | %-20s | %-9s | %-14s | %-14s\n" "$t" \
			"$(fmt $t.p50)" "$(fmt $t.p99)" "$(fmt $t.p999)" "$(fmt $t.max)" "$(fmt $t.r64)" "$(fmt $t.r64_99)" \
			"$(fmt $t.mbps)" "$(ratio $t.mbps)" "$(fmt $t.hs)" "${R[$t.rss]}"
	done
	echo
	printf "%-8s | %-24s | %-24s | %-10s | %-10s | %-10s\n" target "CPU s/GiB, proxy" "CPU s/GiB, whole system" "p50 ×nginx" "hs ×nginx" "64c ×nginx"
	for t in $TARGETS; do
		printf "%-8s | %-24s | %-24s | %-10s | %-10s | %-10s\n" "$t" "$(fmt $t.cpu_p)" "$(fmt $t.cpu_s)" \
			"$(ratio $t.p50)" "$(ratio $t.hs)" "$(ratio $t.r64)"
	done
	echo
	printf "%-8s | %-26s | %-26s | %-26s\n" target "proxy user µs/handshake" "proxy system µs/handshake" "whole system µs/handshake"
	for t in $TARGETS; do
		printf "%-8s | %-26s | %-26s | %-26s\n" "$t" "$(fmt $t.hs_u)" "$(fmt $t.hs_k)" "$(fmt $t.hs_s)"
	done
	if [ -n "$WTARGETS" ]; then
		echo
		echo "workers: unpinned on $(nproc) CPUs, clients included; handshakes/s summed over $HS_CLIENTS clients at once"
		printf "%-11s | %-24s | %-24s | %-24s\n" target "handshakes/s" "64 conns p50 µs" "64 conns p99 µs"
		for t in $WTARGETS; do
			printf "%-11s | %-24s | %-24s | %-24s\n" "$t" "$(fmt $t.whs)" "$(fmt $t.w64)" "$(fmt $t.w64_99)"
		done
	fi
	cmp() { awk -v a="$2" -v b="$3" -v k="${4:-1}" -v op="$5" 'BEGIN{
		if (a == "-" || b == "-") { printf "  %-44s not measured\n", "'"$1"'"; exit }
		ok = (op == ">=") ? a >= k*b : a <= k*b
		printf "  %-44s %s vs %s -> %s\n", "'"$1"'", a, (k == 1 ? b : sprintf("%.2f", k*b)), ok ? "met" : "NOT met" }'; }
	if [[ " $TARGETS " == *" tcsplice "* && " $TARGETS " == *" direct "* ]]; then
		echo
		carried=${A[tcsplice.express]:-}
		echo "express-lane targets (tcsplice vs direct, this run; tunnels the tc program carried per run: ${carried:- none read} of 66):"
		awk -v d="$(med direct.p50)" -v s="$(med tcsplice.p50)" 'BEGIN{ if (d == "-" || s == "-") { print "  added p50 at 1 conn: not measured"; exit }
			lim = (0.1*d > 0.5) ? 0.1*d : 0.5
			printf "  %-44s +%.1f µs (direct %.1f) -> %s\n", "added p50 at 1 conn <= 0.5 µs or 10% of direct:", s-d, d, (s-d <= lim) ? "met" : "NOT met" }'
		cmp "p50 at 64 conns <= 1.1x direct (µs):" "$(med tcsplice.r64)" "$(med direct.r64)" 1.1 "<="
		cmp "MB/s >= 0.9x direct:" "$(med tcsplice.mbps)" "$(med direct.mbps)" 0.9 ">="
		cmp "system CPU s/GiB <= 1.1x direct:" "$(med tcsplice.cpu_s)" "$(med direct.cpu_s)" 1.1 "<="
		cmp "proxy CPU s/GiB <= 0.1x direct's system:" "$(med tcsplice.cpu_p)" "$(med direct.cpu_s)" 0.1 "<="
	fi
	if [[ " $TARGETS " == *" sockmap "* && " $TARGETS " == *" copy "* && " $TARGETS " == *" nginx "* && " $TARGETS " == *" direct "* ]]; then
		echo
		echo "kernel-path targets (sockmap vs copy and nginx, this run):"
		cmp "MB/s >= copy:" "$(med sockmap.mbps)" "$(med copy.mbps)" 1 ">="
		cmp "proxy CPU s/GiB <= copy:" "$(med sockmap.cpu_p)" "$(med copy.cpu_p)" 1 "<="
		cmp "system CPU s/GiB <= copy:" "$(med sockmap.cpu_s)" "$(med copy.cpu_s)" 1 "<="
		cmp "handshakes/s >= 0.95x copy:" "$(med sockmap.hs)" "$(med copy.hs)" 0.95 ">="
		cmp "handshakes/s >= nginx:" "$(med sockmap.hs)" "$(med nginx.hs)" 1 ">="
		awk -v d="$(med direct.p50)" -v s="$(med sockmap.p50)" -v n="$(med nginx.p50)" 'BEGIN{
			printf "  %-44s %.1f vs %.1f µs -> %s\n", "added p50 at 1 conn <= nginx'\''s added:", s-d, n-d, (s-d <= n-d) ? "met" : "NOT met" }'
		cmp "p50 at 64 conns <= nginx (µs):" "$(med sockmap.r64)" "$(med nginx.r64)" 1 "<="
		awk -v s="${R[sockmap.rss]}" 'BEGIN{ if (s=="-") print "  RSS per idle tunnel <= 1 KB: not measured"; else printf "  %-44s %s B -> %s\n", "RSS per idle tunnel <= 1 KB:", s, (s<=1024)?"met":"NOT met" }'
	fi
} | tee "$OUT/table.txt"

if command -v gnuplot >/dev/null; then
	plot="plot "
	for t in $TARGETS; do
		[ -s "$OUT/$t.samples" ] || continue
		sort -g "$OUT/$t.samples" | awk -v n="$(wc -l < "$OUT/$t.samples")" '{print $1, NR/n}' > "$OUT/$t.cdf"
		plot+="'$OUT/$t.cdf' using 1:2 with lines lw 2 title '$t',"
	done
	gnuplot <<EOF
set terminal pngcairo size 1000,600
set output '$OUT/latency.png'
set title "64-byte ping-pong RTT, 1 connection, $(placement)"
set xlabel "RTT (µs, log scale)"
set ylabel "fraction of messages"
set logscale x
set key bottom right
set grid
${plot%,}
EOF
	echo "plot: $OUT/latency.png"
fi

# The XDP guard: a client's handshakes with and without a SYN flood, with
# and without the guard (XDP_BENCH=0 skips it).
if [ "${XDP_BENCH:-1}" != 0 ]; then
	[ -n "${BENCH_QUICK:-}" ] && export XDP_SECS=${XDP_SECS:-2} XDP_REPS=${XDP_REPS:-1}
	OUT=$OUT bash scripts/bench_xdp.sh
fi

# The express lane where the legs are different devices: three namespaces
# joined by veth, direct (forwarded) beside tcsplice and copy
# (NETNS_BENCH=0 skips it).
if [ "${NETNS_BENCH:-1}" != 0 ]; then
	[ -n "${BENCH_QUICK:-}" ] && export NS_REPS=${NS_REPS:-1}
	OUT=$OUT PIN=$PIN_MAIN bash scripts/bench_netns.sh
fi
