// SPDX-License-Identifier: GPL-2.0
/* The data plane: an sk_skb verdict that redirects every skb a spliced
 * socket receives to its peer's egress, counts it per tunnel, and asks the
 * daemon to pause a direction whose bytes pile up in the peer's psock queue
 * (the kernel bounds that queue by nothing; see docs/KERNEL.md). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "wsplice_maps.h"

/* Pause threshold in bytes per direction; 0 disables backpressure. */
const volatile __u64 tunnel_budget = 4 << 20;

/* Every spliced socket, keyed by its cookie: the redirect target. No program
 * is attached to it, so removing a socket from verdict_map (a pause) keeps
 * it reachable as a target. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, WSPLICE_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u64);
} target_map SEC(".maps");

/* Sockets whose direction is flowing; the verdict is attached here. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, WSPLICE_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u64);
} verdict_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WSPLICE_MAX_TUNNELS);
	__type(key, __u32);
	__type(value, struct ws_tunnel);
} tunnels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WSPLICE_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct ws_sock_link);
} sock_links SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} pause_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WS_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		(*v)++;
}

/* Reads the peer's write_seq and folds its advance into ds->peer_sent.
 * Only this verdict (for the one source socket, under its lock) writes ds. */
static __always_inline void track_peer_sent(struct ws_dir_stats *ds, __u64 peer_key)
{
	struct bpf_sock *peer = bpf_map_lookup_elem(&target_map, &peer_key);
	struct tcp_sock *tp;
	__u32 seq;

	if (!peer)
		return;
	tp = bpf_skc_to_tcp_sock(peer);
	if (tp) {
		seq = tp->write_seq;
		if (ds->seq_valid)
			ds->peer_sent += (__u32)(seq - ds->peer_seq_last);
		ds->peer_seq_last = seq;
		ds->seq_valid = 1;
	}
	bpf_sk_release(peer);
}

/* Asks the daemon to pause this direction while in-flight exceeds the
 * budget. Requests repeat every budget/4 redirected bytes rather than once,
 * so one that reaches the daemon while it still has the direction paused
 * (verdicts already running on another CPU) is never the last word. */
static __always_inline void check_budget(struct ws_dir_stats *ds, __u32 tunnel_id, __u32 dir)
{
	__u64 inflight = ds->bytes - ds->peer_sent;
	struct ws_pause_event ev;

	if (inflight > ds->peak_inflight)
		ds->peak_inflight = inflight;
	ds->over_budget = tunnel_budget && inflight > tunnel_budget;
	if (!ds->over_budget)
		return;
	if (ds->pause_requests && ds->bytes - ds->last_request < tunnel_budget / 4)
		return;
	ds->last_request = ds->bytes;
	ds->pause_requests++;
	ev.tunnel_id = tunnel_id;
	ev.dir = dir;
	ev.inflight = inflight;
	bpf_ringbuf_output(&pause_events, &ev, sizeof(ev), BPF_RB_FORCE_WAKEUP);
	count(WS_CNT_PAUSE_EVENTS);
}

SEC("sk_skb")
int wsplice_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct ws_sock_link *link;
	struct ws_dir_stats *ds;
	struct ws_tunnel *t;
	__u64 peer_key;
	__u32 tid, dir, len = skb->len;

	link = bpf_map_lookup_elem(&sock_links, &cookie);
	if (!link) {
		count(WS_CNT_NO_LINK);
		return SK_PASS;
	}
	peer_key = link->peer_cookie;
	tid = link->tunnel_id;
	dir = link->dir & 1;
	t = bpf_map_lookup_elem(&tunnels, &tid);
	if (!t) {
		count(WS_CNT_NO_LINK);
		return SK_PASS;
	}
	ds = &t->dir[dir];
	/* Sample the peer before queueing this skb, so in-flight counts what
	 * was already waiting plus this one. */
	track_peer_sent(ds, peer_key);

	/* A missing peer would make the redirect a drop: pass it instead so
	 * the daemon, which is tearing the tunnel down, can still read it. */
	if (bpf_sk_redirect_hash(skb, &target_map, &peer_key, 0) != SK_PASS) {
		count(WS_CNT_NO_PEER);
		return SK_PASS;
	}
	ds->bytes += len;
	ds->packets++;
	t->last_active_ns = bpf_ktime_get_coarse_ns();
	count(WS_CNT_REDIRECTED);
	check_budget(ds, tid, dir);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
