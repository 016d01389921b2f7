/* The tc express lane's contract: what bpf/tcsplice.bpf.c and the daemon
 * share (docs/DESIGN-TC-SPLICE.md). A spliced tunnel's two TCP connections
 * stop going through the proxy's stack: a tc ingress program rewrites each
 * segment a peer sends to the proxy into the segment the proxy would have
 * sent on the other leg, and passes it on. Plain fixed-width data, so
 * `bpftool map dump` prints it through BTF. */
#ifndef WSPLICE_TC_H
#define WSPLICE_TC_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif
#include "wsplice_maps.h"

#define WS_TC_MAX_TUNNELS WSPLICE_MAX_TUNNELS
/* Two peer keys and two guard keys a tunnel. */
#define WS_TC_MAX_FLOWS (4 * WS_TC_MAX_TUNNELS)

/* Key of tc_flows: a segment's addresses and ports as they come in, in
 * network order; IPv4 addresses in saddr[0]/daddr[0], the rest zero. */
struct ws_tc_key {
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__u16 sport, dport;
	__u32 saddr[4];
	__u32 daddr[4];
};

/* What a key is: a peer's segment to the proxy (translated and passed on
 * in direction dir), or a segment the proxy's own frozen socket sent (the
 * guard drops it: after the hand-over only the peers speak). */
enum ws_tc_role {
	WS_TC_PEER = 0,
	WS_TC_GUARD = 1,
};

struct ws_tc_flow {
	__u32 tunnel_id;
	__u16 dir;  /* enum ws_dir: C2U for the client's segments */
	__u16 role; /* enum ws_tc_role */
	/* WS_TC_GUARD: the frozen socket's SO_COOKIE. On a device's egress a
	 * segment the program redirected there has the same addresses, and
	 * may carry its sender's socket from the peer's namespace (a veth
	 * keeps it): only the frozen socket's own are dropped. */
	__u64 cookie;
};

enum ws_tc_state {
	/* Payload or FIN to the proxy is dropped (the peer sends it again),
	 * pure ACKs pass: the proxy's queues can only drain while the
	 * daemon reads their sequence numbers. */
	WS_TC_FROZEN = 1,
	/* Translated; the first segment of each direction sets its
	 * timestamp deltas. */
	WS_TC_ACTIVE = 2,
	/* Both FINs acknowledged, or a reset passed: still translated (a
	 * last ACK, a retransmitted FIN) until the daemon removes it. */
	WS_TC_ENDED = 3,
	/* A busy tunnel on its way to FROZEN ("strip-freeze"): in a
	 * direction marked WS_TC_STRIP, a peer's segment reaches the proxy's
	 * socket with its payload and FIN cut off, so its ACK still drains
	 * the socket's send queue while nothing new fills the receive queue;
	 * the peer sends the rest again, after the hand-over, to the other
	 * peer. Resets are dropped. A direction not marked yet passes
	 * untouched, and so do the proxy sockets' own segments (the relay is
	 * still writing). */
	WS_TC_DRAIN = 4,
};

/* How a translated segment leaves. */
enum ws_tc_redirect {
	/* Passed up this host's stack: on lo both peers are local, and the
	 * route the sender attached delivers locally, so one trip through lo
	 * is enough. */
	WS_TC_INPLACE = 0,
	WS_TC_EGRESS = 1, /* bpf_redirect to out.ifindex's egress */
	WS_TC_TO_PEER = 2, /* bpf_redirect_peer: into a veth's peer namespace */
	/* bpf_redirect_neigh to out.ifindex's egress: the kernel's route and
	 * neighbour entry for the new destination give the link-layer
	 * header, as for a segment the proxy's own socket would send there. */
	WS_TC_NEIGH = 3,
	/* Into lo's ingress (bpf_redirect with BPF_F_INGRESS), from a device:
	 * the other peer is local, and a loopback destination arriving on a
	 * device would be a martian. The link-layer destination is zeroed (lo's
	 * own address: anything else is another host's frame) and the segment
	 * carries WS_TC_MARK, so the program on lo lets it pass instead of
	 * taking it for the frozen socket's own (same addresses). */
	WS_TC_LO_INGRESS = 4,
};

/* skb->mark of a segment redirected into lo's ingress; cleared there. */
#define WS_TC_MARK 0x77737031u

/* Flags of struct ws_tc_dir. */
#define WS_TC_FIN_SEEN 0x1  /* this direction's FIN went through */
#define WS_TC_FIN_ACKED 0x2 /* ... and the other peer acknowledged it */
#define WS_TC_RST 0x4       /* a reset went through */
#define WS_TC_STRIP 0x8     /* DRAIN: this direction's payload and FIN are cut off (set by the daemon) */

/* One direction: segments from its source peer, rewritten into the other
 * leg's. Sequence numbers are the other leg's: what the proxy's socket
 * there had sent (seq) and received (ack) at the hand-over. */
struct ws_tc_dir {
	/* Highest end seq sent on (out leg's space), in the low 32 bits:
	 * 64 for the compare-and-exchange of BPF's first instruction set. */
	__u64 nxt;
	/* The destination's cumulative ACK (out leg's space), low 32 bits:
	 * what it acknowledged is what the tunnel counts as delivered, so a
	 * retransmission or a reordered segment counts once. */
	__u64 acked;
	__u32 seq_delta;   /* added to seq */
	__u32 ack_delta;   /* added to ack and to SACK edges */
	__u32 tsval_delta; /* added to TSval: the source's clock onto the out leg's proxy clock */
	__u32 tsecr_delta; /* added to TSecr: the other direction's -tsval_delta */
	__u8 wscale_in;  /* the source's window is scaled by this ... */
	__u8 wscale_out; /* ... and the destination reads it scaled by this */
	__u8 ts;         /* both legs carry timestamps */
	__u8 flags;      /* WS_TC_* above */
	__u32 fin_end;   /* the seq after this direction's FIN (out leg's space) */
	__u32 pad;
	/* The out leg: the proxy's socket on it is the source, its peer the
	 * destination. Network order. */
	__u32 saddr[4], daddr[4];
	__u16 sport, dport;
	__u32 ifindex;  /* for WS_TC_EGRESS, WS_TC_TO_PEER and WS_TC_NEIGH */
	__u32 redirect; /* enum ws_tc_redirect */
	/* WS_TC_TO_PEER: the Ethernet destination then source the segment
	 * gets (no neighbour lookup on that path). */
	__u8 eth[12];
	__u32 pad2;
};

/* Value of tc_tunnels, keyed by tunnel id. The daemon writes it whole, and
 * only before it is ACTIVE (a whole write swaps the element, and what the
 * program wrote to the old one would be lost); the program changes state,
 * flags, nxt, fin_end, armed and the timestamp deltas. */
struct ws_tc_tunnel {
	__u32 state;  /* enum ws_tc_state */
	__u32 family; /* 4 or 6 */
	/* The timestamp deltas are set (by the first segment, from the
	 * proxy sockets' clocks); without timestamps, always 1. */
	__u32 armed;
	__u32 pad;
	struct ws_tc_dir dir[2]; /* enum ws_dir */
};

/* The daemon's hand-overs, kept in the program's .bss (the global
 * tc_handovers) so that `bpftool map dump name tcsplice.bss` shows them by
 * name beside the program's own counters. The master maps it at load, and
 * every worker it forks adds to the same pages. */
struct ws_tc_handovers {
	__u64 tried;               /* hand-overs that froze a tunnel (a retry counts again) */
	__u64 done;                /* ... that went ACTIVE */
	__u64 refused_device;      /* left on the relay for their life, by reason */
	__u64 refused_legs_differ;
	__u64 refused_window;
	__u64 refused_no_repair;
	__u64 refused_error;
	__u64 drains;              /* busy tunnels that began a drain (WS_TC_DRAIN) */
	__u64 drains_timed_out;    /* ... whose queues did not empty in time: thawed */
	__u64 to_peer;             /* went ACTIVE with a leg into a veth's peer (WS_TC_TO_PEER) */
};

/* Value of tc_owner (one entry), written by the daemon when it attached
 * the program as a netlink tc filter (Linux before 6.6): a tcx link goes
 * with its process, a filter stays. The next start removes a filter whose
 * owner is gone, in its own network namespace. */
struct ws_tc_owner {
	__u32 pid;
	__u32 handle;
	__u32 priority;
	__u32 pad;
	__u64 netns; /* the inode of the owner's /proc/self/ns/net */
	__u64 pidns; /* ... of its /proc/self/ns/pid: pid means something only there */
	__u64 start; /* its start time (/proc/PID/stat, field 22): a reused pid is another process */
};

/* tc_counters (per CPU), for bpftool and the metrics. */
enum ws_tc_counter {
	WS_TCC_SEGMENTS = 0,    /* translated and passed on */
	WS_TCC_BYTES,           /* payload bytes among them, retransmissions included */
	WS_TCC_FROZEN_DROPS,    /* payload or FIN dropped while FROZEN */
	WS_TCC_GUARD_DROPS,     /* sent by a frozen proxy socket, dropped */
	WS_TCC_OPTION_DROPS,    /* IP options or IPv6 extension headers: not translatable */
	WS_TCC_ENDED,           /* tunnels that ended in the program */
	WS_TCC_ARM_FAILS,       /* a proxy socket was not found to read its clock */
	WS_TCC_REWRITE_FAILS,   /* a helper failed mid-rewrite: dropped, sent again */
	/* Per direction (enum ws_dir added): bytes as the destination
	 * acknowledged them, as in each tunnel's figures, and segments. */
	WS_TCC_DELIVERED_C2U,
	WS_TCC_DELIVERED_U2C,
	WS_TCC_PACKETS_C2U,
	WS_TCC_PACKETS_U2C,
	WS_TCC_STRIPPED, /* payload or FIN cut off while DRAIN: the ACK went on */
	WS_TCC_MAX,
};

#endif
