# shellcheck shell=bash disable=SC2034
# Sourced by the namespaces benches (bench_netns.sh, bench_xdp.sh), from the
# project's root: the build's tools, and network namespaces that go when the
# script exits, with its background jobs.
WSPLICE=$(pwd)/build/wsplice LOAD=$(pwd)/build/bench/ws_load ECHO=$(pwd)/build/bench/ws_echo
NETNS_MADE=()

netns_cleanup() {
	# shellcheck disable=SC2046 # one word per pid
	kill $(jobs -p) 2>/dev/null || true
	wait 2>/dev/null || true
	for n in "${NETNS_MADE[@]}"; do ip netns del "$n" 2>/dev/null || true; done
}
trap netns_cleanup EXIT

# netns_add NS...: each namespace, with lo up.
netns_add() {
	for n in "$@"; do
		ip netns add "$n"
		NETNS_MADE+=("$n")
		ip -n "$n" link set lo up
	done
}
