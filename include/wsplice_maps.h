/* Types shared by the BPF data plane (bpf/splice.bpf.c) and the daemon.
 * Everything here is plain fixed-width data: the same layout is read by
 * libbpf in userspace, written by the verdict program, and pretty-printed by
 * `bpftool map dump` through BTF. */
#ifndef WSPLICE_MAPS_H
#define WSPLICE_MAPS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Map sizes as compiled: one tunnel uses two sockets. The daemon sizes
 * tunnels, sock_links, target_map and verdict_map from max_tunnels at load
 * time; pause_requests keeps this size (its entries live for microseconds). */
#define WSPLICE_MAX_TUNNELS 65536
#define WSPLICE_MAX_SOCKETS (2 * WSPLICE_MAX_TUNNELS)
/* Bytes of each worker's event ring (worker_events' inner maps). */
#define WS_EVENT_RING_BYTES (256 * 1024)

/* Direction index inside struct ws_tunnel. */
enum ws_dir {
	WS_DIR_C2U = 0, /* client -> upstream */
	WS_DIR_U2C = 1, /* upstream -> client */
};

/* One direction of a tunnel. Counters are only written by the verdict
 * program running for the source socket (serialised by that socket's lock),
 * so plain adds are safe; userspace only reads them. */
struct ws_dir_stats {
	__u64 bytes;          /* bytes redirected to the peer's egress */
	__u64 packets;        /* skbs redirected (includes the zero-length FIN skb) */
	/* Bytes the peer socket has accepted into its send queue since the
	 * first redirect, accumulated from its tcp write_seq. bytes - peer_sent
	 * is exactly what waits in the peer's psock queue (KERNEL.md). */
	__u64 peer_sent;
	__u64 peak_inflight;  /* most bytes seen waiting in the peer's psock queue */
	__u32 peer_seq_last;  /* peer write_seq at the previous verdict */
	__u32 seq_valid;      /* peer_seq_last has been sampled */
	__u32 over_budget;    /* in-flight was above the budget at the last verdict */
	__u32 pause_requests; /* pauses the verdict asked for */
	__u32 pauses;         /* pauses carried out (the source left verdict_map) */
	__u32 pad;
};

/* Value of the `tunnels` map, keyed by tunnel id (__u32). */
struct ws_tunnel {
	__u64 client_cookie;   /* SO_COOKIE of the client-side socket */
	__u64 upstream_cookie; /* SO_COOKIE of the upstream-side socket */
	struct ws_dir_stats dir[2];
	__u64 last_active_ns;  /* bpf_ktime_get_ns() of the last redirect */
};

/* Value of the `sock_links` map, keyed by socket cookie (__u64): which
 * tunnel and direction a source socket feeds, and where its bytes go. */
struct ws_sock_link {
	__u64 peer_cookie;
	__u32 tunnel_id;
	__u32 dir;          /* enum ws_dir */
	__u32 verdict_rcv_nxt; /* the socket's rcv_nxt when the verdict last ran */
	/* enum ws_broken: a trim failed, so this source's stream can no longer
	 * be delivered intact; the verdict drops all it receives from then on
	 * and the daemon resets the tunnel (bpf/splice.bpf.c, "the trim"). */
	__u32 broken;
};

enum ws_broken {
	WS_BROKEN_NO = 0,
	WS_BROKEN_UNTOLD = 1, /* the daemon has not been told yet (set by a failed trim) */
	WS_BROKEN_TOLD = 2,   /* a WS_EV_BROKEN event is in the ring */
};

/* Value of the `pause_requests` map, keyed by the source's cookie: the
 * verdict found the direction over budget; the socket's next safe header
 * callback takes it out of verdict_map (bpf/splice.bpf.c, "the pause"). */
struct ws_pause_request {
	__u64 since_ns;  /* bpf_ktime_get_ns() of the request */
	__u64 inflight;
};

/* Ring buffer record: something the daemon must act on. */
enum ws_event_kind {
	WS_EV_PAUSED = 0, /* a direction was paused (its source left verdict_map) */
	WS_EV_BROKEN = 1, /* a direction's stream broke (a failed trim): reset the tunnel */
};

struct ws_event {
	__u64 cookie;    /* of the source socket */
	__u32 tunnel_id;
	__u32 dir;
	__u64 inflight;  /* WS_EV_PAUSED: when the verdict asked */
	__u64 waited_ns; /* WS_EV_PAUSED: from the request to the pause */
	__u32 kind;      /* enum ws_event_kind */
	__s32 err;       /* WS_EV_BROKEN: the helper's error, 0 when unknown */
};

/* Keys of the `flag_ports` map: the ports whose sockets get the header
 * callback the pause runs in (listeners: local port; upstreams: remote). */
#define WS_PORT_LISTENER 0u
#define WS_PORT_UPSTREAM (1u << 16)

/* Indexes of the `counters` array map: events that are not per tunnel. */
enum ws_counter {
	WS_CNT_NO_LINK = 0,   /* skb on a socket with no sock_links entry */
	WS_CNT_NO_PEER = 1,   /* peer missing from target_map: passed, not dropped */
	WS_CNT_REDIRECTED = 2,
	WS_CNT_PAUSE_REQUESTS = 3,
	WS_CNT_OVERLAP_SKBS = 4,  /* skbs whose head had already been delivered: trimmed */
	WS_CNT_OVERLAP_BYTES = 5, /* bytes cut off those heads (never sent twice) */
	WS_CNT_TRIM_FAILED = 6,   /* a trim that could not complete (must stay 0) */
	WS_CNT_PAUSES = 7,        /* pauses carried out by the header callback */
	WS_CNT_PAUSE_DEFERRED = 8, /* header callbacks inside a verdict loop: pause left for the next one */
	WS_CNT_UNFLAGGED = 9,     /* pause requests on a socket without the header callback (must stay 0) */
	WS_CNT_OVERLAP_MAX = 10,  /* the largest overlap cut off one skb (per CPU: a maximum, not a sum) */
	WS_CNT_OVERLAP_FIRST = 11, /* overlaps on a direction's first skb: the part userspace read before insertion */
	WS_CNT_TRIM_ERRNO = 12,   /* the largest -errno of a helper call that failed a trim */
	WS_CNT_BROKEN_DROPS = 13, /* skbs dropped because their direction broke (must stay 0) */
	WS_CNT_BYTES_C2U = 14,    /* bytes redirected, per direction (WS_CNT_BYTES_C2U + enum ws_dir) */
	WS_CNT_BYTES_U2C = 15,
	WS_CNT_PACKETS_C2U = 16,  /* skbs redirected, per direction */
	WS_CNT_PACKETS_U2C = 17,
	WS_CNT_MAX = 32,
};

#endif
