// SPDX-License-Identifier: GPL-2.0
/* The data plane: an sk_skb verdict that redirects every skb a spliced
 * socket receives to its peer's egress and counts it per tunnel, and a
 * sock_ops program that pauses a direction whose bytes pile up in the peer's
 * psock queue (the kernel bounds that queue by nothing; docs/KERNEL.md,
 * "the pause"). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "wsplice_maps.h"

/* Linux 6.2+: the kernel skb behind the context and its socket as a
 * tcp_sock, for the skb's sequence number and the socket's copied_seq. */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/* Pause threshold in bytes per direction; 0 disables backpressure. */
const volatile __u64 tunnel_budget = 4 << 20;
/* Whether a pause may be carried out from inside a verdict loop once it
 * has consumed the whole receive queue. Kernels before 6.9 call
 * psock->saved_data_ready() unchecked after the loop, which the delete has
 * cleared; the daemon sets this only where sk_psock_data_ready() checks. */
const volatile bool pause_at_loop_end = false;
/* Buffers: SO_RCVBUF and SO_SNDBUF of every socket that may be spliced,
 * set at establishment so the 101 costs no system call for them. A locked
 * receive buffer bounds the burst a resume releases (the whole receive
 * queue is verdicted at once) and keeps the gate from growing the buffer to
 * tcp_rmem[2]/2 (docs/KERNEL-LOG.md, "the gate grows the receive buffer").
 * The kworker that sends redirected skbs backs off for a jiffy when the
 * target's send buffer is full; a send buffer at the autotuning maximum
 * from the start keeps it from stalling (+20 % bulk throughput on one
 * vCPU). The daemon sets the receive buffer to half the budget. */
const volatile __u32 spliced_rcvbuf = 2 << 20;
const volatile __u32 spliced_sndbuf = 4 << 20;
/* Tunnel ids are worker * ids_per_worker + the worker's own index. */
const volatile __u32 ids_per_worker = 0xffffffff;
#define WS_SOL_SOCKET 1
#define WS_SO_SNDBUF 7
#define WS_SO_RCVBUF 8

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

/* Sized by max_tunnels at load, and not preallocated: an idle daemon
 * does not hold 262 144 tunnels' worth of kernel memory. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WSPLICE_MAX_TUNNELS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct ws_tunnel);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* bpftool finds it under the pin directory */
} tunnels SEC(".maps");

/* Not preallocated: the verdict writes through its pointer to a link
 * (rcv_nxt, broken) while the daemon may delete it; a preallocated element
 * would be reused by the next insertion at once, an allocated one is freed
 * after an RCU grace period. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WSPLICE_MAX_SOCKETS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct ws_sock_link);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* bpftool finds it under the pin directory */
} sock_links SEC(".maps");

/* Sources the verdict wants out of verdict_map, by cookie; their next safe
 * header callback carries it out. LRU: a request left by a socket that
 * closed first is forgotten by itself (cookies are never reused). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WSPLICE_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct ws_pause_request);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* bpftool finds it under the pin directory */
} pause_requests SEC(".maps");

/* Ports whose sockets get the header callback (WS_PORT_* keys); the
 * daemon fills it with its listeners and upstream servers. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} flag_ports SEC(".maps");

/* Each worker process reads its own ring (the daemon creates one per
 * worker and puts it in this array at load): a tunnel's events go to the
 * worker that owns its id, ids_per_worker ids each. */
struct event_ring {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WS_EVENT_RING_BYTES);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1); /* the number of workers, set at load */
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* bpftool finds it under the pin directory */
	__array(values, struct event_ring);
} worker_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WS_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* bpftool finds it under the pin directory */
} counters SEC(".maps");

/* The ring of the worker that owns the tunnel, for an event about it. */
static __always_inline struct ws_event *event_reserve(__u32 tunnel_id)
{
	__u32 worker = tunnel_id / ids_per_worker;
	void *ring = bpf_map_lookup_elem(&worker_events, &worker);

	return ring ? bpf_ringbuf_reserve(ring, sizeof(struct ws_event), 0) : NULL;
}

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

/* Over budget: ask for a pause of this source. The request stays until a
 * header callback of the source carries it out, so none is lost; the
 * verdict goes on redirecting meanwhile (at most two segments: TCP acks at
 * least every second full segment, and each ack is a callback). */
static __always_inline void check_budget(struct ws_dir_stats *ds, __u64 cookie, const struct tcp_sock *tp)
{
	__u64 inflight = ds->bytes - ds->peer_sent;
	struct ws_pause_request req;

	if (inflight > ds->peak_inflight)
		ds->peak_inflight = inflight;
	ds->over_budget = tunnel_budget && inflight > tunnel_budget;
	if (!ds->over_budget)
		return;
	/* Looked up first: an LRU insert takes a node (and may evict another
	 * socket's request) before it finds the key exists. */
	if (bpf_map_lookup_elem(&pause_requests, &cookie))
		return; /* already asked */
	req.since_ns = bpf_ktime_get_ns();
	req.inflight = inflight;
	if (bpf_map_update_elem(&pause_requests, &cookie, &req, BPF_NOEXIST))
		return;
	ds->pause_requests++;
	count(WS_CNT_PAUSE_REQUESTS);
	if (tp && !(tp->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG))
		count(WS_CNT_UNFLAGGED);
}

/* TCP_SKB_CB(skb)->seq: the first 4 bytes of skb->cb (host order). */
static __always_inline __u32 tcp_skb_seq(const struct sk_buff *kskb)
{
	return (__u32)(__u8)kskb->cb[0] | (__u32)(__u8)kskb->cb[1] << 8 | (__u32)(__u8)kskb->cb[2] << 16 |
	       (__u32)(__u8)kskb->cb[3] << 24;
}

static __always_inline void set_max(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v && *v < n)
		*v = n;
}

/* The most sk_skb's adjust_room cuts in one call, and enough calls for any
 * skb a receive queue holds (the trim below): 1 024 x 4 095 is 4 MiB. */
#define TRIM_STEP 4095
#define TRIM_STEPS 1024

struct trim_ctx {
	struct __sk_buff *skb;
	__u32 left;
	long err;
};

static long trim_step(__u32 i, struct trim_ctx *c)
{
	__u32 n = c->left > TRIM_STEP ? TRIM_STEP : c->left;

	(void)i;
	c->err = bpf_skb_adjust_room(c->skb, -(__s32)n, 0, 0);
	if (c->err)
		return 1;
	c->left -= n;
	return c->left ? 0 : 1;
}

enum trim_result { TRIM_FAILED = -1, TRIM_EMPTY = 0, TRIM_KEEP = 1 };

/* The trim. tcp_read_skb() hands the verdict whole skbs, but an skb may
 * begin with bytes already delivered: the part userspace read before
 * insertion (the drain), or the part of a retransmitted segment that
 * overlaps bytes already received, which TCP queues as it came (only its
 * other readers skip the overlap, by copied_seq - seq). Redirected whole,
 * those bytes reach the peer twice, and tcp_eat_skb() pushes copied_seq
 * past rcv_nxt, after which pruning discards real data (docs/KERNEL.md,
 * "the trim"). So cut off the head before copied_seq; tcp_eat_skb() then
 * advances copied_seq by exactly what is left.
 *
 * sk_skb's adjust_room cuts at most 4 095 bytes a call, and each call first
 * pulls that many bytes into the linear part. On a paged skb as it comes,
 * each call reallocates the head and keeps what the call before cut as
 * headroom: an overlap of n bytes cost n / 4 KiB GFP_ATOMIC allocations
 * growing to n, and a failed one delivered 62 018 bytes twice in CI. So
 * the whole overlap is pulled first, in one allocation, and the cuts only
 * move skb->data. Returns TRIM_EMPTY when nothing is left (drop it: the
 * drop of an empty skb eats nothing), TRIM_FAILED when the head could not
 * be cut (*err: the helper's error). */
static __always_inline enum trim_result trim_delivered_head(struct __sk_buff *skb, struct sk_buff *kskb,
							    const struct tcp_sock *tp, bool first, long *err)
{
	struct trim_ctx c = { .skb = skb };
	__u32 len = skb->len, over;

	if (!tp)
		return TRIM_KEEP;
	over = tp->copied_seq - tcp_skb_seq(kskb);
	if ((__s32)over <= 0)
		return TRIM_KEEP;
	if (over > len)
		over = len;
	count(WS_CNT_OVERLAP_SKBS);
	if (first)
		count(WS_CNT_OVERLAP_FIRST);
	set_max(WS_CNT_OVERLAP_MAX, over);
	c.left = over;
	c.err = over > TRIM_STEP ? bpf_skb_pull_data(skb, over) : 0;
	if (!c.err)
		bpf_loop(TRIM_STEPS, trim_step, &c, 0);
	add(WS_CNT_OVERLAP_BYTES, over - c.left);
	if (c.left) {
		*err = c.err;
		return TRIM_FAILED;
	}
	return skb->len ? TRIM_KEEP : TRIM_EMPTY;
}

/* A direction whose stream can no longer be delivered intact (a failed
 * trim): the daemon must reset the tunnel. It is told once, through the
 * ring; a full ring leaves the link untold and the next skb tries again. */
static __always_inline void tell_broken(struct ws_sock_link *link, __u64 cookie, long err)
{
	struct ws_event *ev = event_reserve(link->tunnel_id);

	link->broken = WS_BROKEN_UNTOLD;
	if (!ev)
		return;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->kind = WS_EV_BROKEN;
	ev->cookie = cookie;
	ev->tunnel_id = link->tunnel_id;
	ev->dir = link->dir & 1;
	ev->err = (__s32)err;
	link->broken = WS_BROKEN_TOLD;
	bpf_ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP);
}

SEC("sk_skb")
int wsplice_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
	struct ws_dir_stats *ds = NULL;
	struct tcp_sock *tp = NULL;
	struct ws_sock_link *link;
	struct ws_tunnel *t = NULL;
	__u64 peer_key = 0;
	__u32 tid;
	long err = 0;

	/* Only TCP sockets enter the maps. */
	if (kskb->sk)
		tp = bpf_rdonly_cast(kskb->sk, bpf_core_type_id_kernel(struct tcp_sock));
	link = bpf_map_lookup_elem(&sock_links, &cookie);
	if (link) {
		/* First, before any return: rcv_nxt cannot move while this loop
		 * runs (the socket is locked), and the pause tells a callback
		 * inside the loop from one outside by it. */
		if (tp)
			link->verdict_rcv_nxt = tp->rcv_nxt;
		/* Broken: nothing more of this source reaches the peer, so never
		 * a byte out of order; the daemon resets the tunnel. */
		if (link->broken) {
			if (link->broken == WS_BROKEN_UNTOLD)
				tell_broken(link, cookie, 0);
			count(WS_CNT_BROKEN_DROPS);
			return SK_DROP;
		}
		peer_key = link->peer_cookie;
		tid = link->tunnel_id;
		t = bpf_map_lookup_elem(&tunnels, &tid);
		if (t)
			ds = &t->dir[link->dir & 1];
	}
	switch (trim_delivered_head(skb, kskb, tp, ds && !ds->packets, &err)) {
	case TRIM_KEEP:
		break;
	case TRIM_EMPTY:
		return SK_DROP;
	case TRIM_FAILED:
		count(WS_CNT_TRIM_FAILED);
		set_max(WS_CNT_TRIM_ERRNO, -err);
		if (link)
			tell_broken(link, cookie, err);
		count(WS_CNT_BROKEN_DROPS);
		return SK_DROP;
	}
	if (!ds) {
		count(WS_CNT_NO_LINK);
		return SK_PASS;
	}
	/* Sample the peer before queueing this skb, so in-flight counts what
	 * was already waiting plus this one. */
	track_peer_sent(ds, peer_key);

	/* A missing peer would make the redirect a drop: pass it instead so
	 * the daemon, which is tearing the tunnel down, can still read it. */
	if (bpf_sk_redirect_hash(skb, &target_map, &peer_key, 0) != SK_PASS) {
		count(WS_CNT_NO_PEER);
		return SK_PASS;
	}
	ds->bytes += skb->len;
	ds->packets++;
	t->last_active_ns = bpf_ktime_get_coarse_ns();
	count(WS_CNT_REDIRECTED);
	/* The same per CPU, for the metrics: one map read sums every tunnel,
	 * closed ones included. */
	add(WS_CNT_BYTES_C2U + (link->dir & 1), skb->len);
	count(WS_CNT_PACKETS_C2U + (link->dir & 1));
	check_budget(ds, cookie, tp);
	return SK_PASS;
}

/* The pause: take the source socket out of verdict_map, so new bytes stay
 * in its receive queue, charged to its buffer, and its window closes.
 *
 * The delete must not happen while a verdict loop (tcp_read_skb) has skbs
 * of this socket left: the loop reads the program again for each skb, and
 * one met with none is dropped and counted read (docs/KERNEL-LOG.md, "pausing
 * from userspace loses bytes"). A delete from userspace takes no socket
 * lock, so it cannot know. A sock_ops header callback runs with the socket
 * locked, in O(1), for every segment the socket sends, and TCP sends an ack
 * at least every second full segment it receives. Inside a verdict loop it
 * runs only through tcp_eat_skb -> cleanup_rbuf -> ack, after an skb was
 * consumed; the loop has recorded rcv_nxt, which cannot move while it runs.
 * So a callback is outside any loop when rcv_nxt moved since the verdict
 * last ran (new bytes wait for data_ready), and at the end of one when the
 * queue is consumed (copied_seq == rcv_nxt). Anything else is mid-loop:
 * leave the request for the next callback. */
static __always_inline void pause_if_safe(struct bpf_sock_ops *ops)
{
	__u64 cookie = bpf_get_socket_cookie(ops);
	struct ws_pause_request *req = bpf_map_lookup_elem(&pause_requests, &cookie);
	struct ws_sock_link *link;
	struct ws_event *ev;
	struct ws_tunnel *t;
	struct tcp_sock *tp;
	struct bpf_sock *sk;
	__u32 rcv_nxt;

	if (!req)
		return;
	link = bpf_map_lookup_elem(&sock_links, &cookie);
	sk = ops->sk;
	/* A broken source stays in verdict_map: the verdict drops the rest of
	 * it there, and out of it, bytes would wait for a reader (the daemon)
	 * that must never read them. */
	if (!link || !sk || link->broken) {
		bpf_map_delete_elem(&pause_requests, &cookie);
		return;
	}
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	rcv_nxt = tp->rcv_nxt;
	if (rcv_nxt == link->verdict_rcv_nxt && (!pause_at_loop_end || tp->copied_seq != rcv_nxt)) {
		count(WS_CNT_PAUSE_DEFERRED);
		return;
	}
	/* The daemon must hear of every pause, or nothing resumes it: room
	 * for the event first, or leave the request for the next callback. */
	ev = event_reserve(link->tunnel_id);
	if (!ev) {
		count(WS_CNT_PAUSE_DEFERRED);
		return;
	}
	bpf_map_delete_elem(&verdict_map, &cookie);
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->kind = WS_EV_PAUSED;
	ev->cookie = cookie;
	ev->tunnel_id = link->tunnel_id;
	ev->dir = link->dir & 1;
	ev->inflight = req->inflight;
	ev->waited_ns = bpf_ktime_get_ns() - req->since_ns;
	t = bpf_map_lookup_elem(&tunnels, &link->tunnel_id);
	if (t) {
		if (link->dir & 1)
			t->dir[1].pauses++;
		else
			t->dir[0].pauses++;
	}
	bpf_map_delete_elem(&pause_requests, &cookie);
	count(WS_CNT_PAUSES);
	bpf_ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP);
}

/* Attached to the daemon's cgroup: gives the sockets of its listeners and
 * of its upstream connections the header callback and their buffers
 * ("buffers" above), and pauses there. */
SEC("sockops")
int wsplice_sockops(struct bpf_sock_ops *ops)
{
	__u32 key;

	switch (ops->op) {
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		key = ops->local_port | WS_PORT_LISTENER;
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		key = bpf_ntohl(ops->remote_port) | WS_PORT_UPSTREAM;
		break;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		if (ops->is_fullsock)
			pause_if_safe(ops);
		return 1;
	default:
		return 1;
	}
	if (bpf_map_lookup_elem(&flag_ports, &key)) {
		int rcv = spliced_rcvbuf, snd = spliced_sndbuf;

		bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		bpf_setsockopt(ops, WS_SOL_SOCKET, WS_SO_RCVBUF, &rcv, sizeof(rcv));
		bpf_setsockopt(ops, WS_SOL_SOCKET, WS_SO_SNDBUF, &snd, sizeof(snd));
	}
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
