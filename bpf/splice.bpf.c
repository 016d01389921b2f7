// SPDX-License-Identifier: GPL-2.0
/* The data plane: an sk_skb verdict that redirects every skb a spliced
 * socket receives to its peer's egress, counts it per tunnel, and asks the
 * daemon to pause a direction whose bytes pile up in the peer's psock queue
 * (the kernel bounds that queue by nothing; see docs/KERNEL.md). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "wsplice_maps.h"

/* Linux 6.2+: the kernel skb behind the context and its socket as a
 * tcp_sock, for the skb's sequence number and the socket's copied_seq. */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

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
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* bpftool finds it under the pin directory */
} target_map SEC(".maps");

/* Sockets whose direction is flowing; the verdict is attached here. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, WSPLICE_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* bpftool finds it under the pin directory */
} verdict_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WSPLICE_MAX_TUNNELS);
	__type(key, __u32);
	__type(value, struct ws_tunnel);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* bpftool finds it under the pin directory */
} tunnels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WSPLICE_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct ws_sock_link);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* bpftool finds it under the pin directory */
} sock_links SEC(".maps");

/* Sockets the daemon wants out of verdict_map (a pause), by cookie; the
 * pause iterator below carries the requests out. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WSPLICE_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u32);
} pause_requests SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* bpftool finds it under the pin directory */
} pause_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WS_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* bpftool finds it under the pin directory */
} counters SEC(".maps");

static __always_inline void add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += n;
}

static __always_inline void count(__u32 idx)
{
	add(idx, 1);
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

/* TCP_SKB_CB(skb)->seq: the first 4 bytes of skb->cb (host order). */
static __always_inline __u32 tcp_skb_seq(const struct sk_buff *kskb)
{
	return (__u32)(__u8)kskb->cb[0] | (__u32)(__u8)kskb->cb[1] << 8 | (__u32)(__u8)kskb->cb[2] << 16 |
	       (__u32)(__u8)kskb->cb[3] << 24;
}

/* tcp_read_skb() hands the verdict whole skbs, but TCP queues a
 * retransmitted segment that partly overlaps bytes already received as it
 * came, and only its other readers skip the overlap (by copied_seq - seq).
 * Redirected whole, those bytes reach the peer twice, and tcp_eat_skb()
 * pushes copied_seq past rcv_nxt, after which pruning discards real data
 * (docs/KERNEL.md §14). So cut off the head before copied_seq; tcp_eat_skb()
 * then advances copied_seq by exactly what is left. Returns false when
 * nothing is left (an skb of old bytes only, now empty: drop it). sk_skb
 * may shrink 4095 bytes per call: 64 calls cover 256 KiB. */
static __always_inline bool trim_delivered_head(struct __sk_buff *skb)
{
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
	struct sock *sk = kskb->sk;
	struct tcp_sock *tp;
	__u32 len = skb->len, over, left;

	if (!sk)
		return true;
	/* Only TCP sockets enter the maps. */
	tp = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock));
	over = tp->copied_seq - tcp_skb_seq(kskb);
	if ((__s32)over <= 0)
		return true;
	if (over > len)
		over = len;
	left = over;
	for (int i = 0; i < 64 && left; i++) {
		__u32 n = left > 4095 ? 4095 : left;

		if (bpf_skb_adjust_room(skb, -(__s32)n, 0, 0))
			break;
		left -= n;
	}
	count(WS_CNT_OVERLAP_SKBS);
	add(WS_CNT_OVERLAP_BYTES, over - left);
	if (left)
		count(WS_CNT_TRIM_FAILED);
	return skb->len != 0;
}

SEC("sk_skb")
int wsplice_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct ws_sock_link *link;
	struct ws_dir_stats *ds;
	struct ws_tunnel *t;
	__u64 peer_key;
	__u32 tid, dir, len;

	/* A drop of the emptied skb eats nothing: copied_seq stays right. */
	if (!trim_delivered_head(skb))
		return SK_DROP;
	len = skb->len;
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

/* Pauses a direction by taking its source socket out of verdict_map. A
 * delete from userspace takes no socket lock, so a verdict loop running in
 * softirq on the other CPU can see its program vanish between two skbs and
 * drop the rest (docs/KERNEL.md §13). The TCP iterator runs this with each
 * socket locked, when no verdict loop can be running on it. */
SEC("iter/tcp")
int wsplice_pause(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	__u64 cookie;

	if (!skc)
		return 0;
	cookie = skc->skc_cookie.counter;
	if (!cookie || !bpf_map_lookup_elem(&pause_requests, &cookie))
		return 0;
	bpf_map_delete_elem(&verdict_map, &cookie);
	bpf_map_delete_elem(&pause_requests, &cookie);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
