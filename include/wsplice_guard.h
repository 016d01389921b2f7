/* Types shared by the XDP guard (bpf/xdp_guard.bpf.c), the daemon that
 * loads it (user/xdp_guard.c) and `wsplice deny` (user/deny_cli.c). Plain
 * fixed-width data: bpftool prints every map through BTF. */
#ifndef WSPLICE_GUARD_H
#define WSPLICE_GUARD_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Key of `guard_deny`, an LPM trie: one trie for both families, the
 * family first (4 or 6), so no IPv6 block can cover IPv4 sources (as
 * ::ffff:0:0/96 would, were IPv4 kept IPv4-mapped). prefixlen counts the
 * family byte: 8 + the block's prefix. Also the key of `guard_rates`
 * (prefixlen unused there; IPv6 sources by their /64, which one host holds
 * whole). */
struct guard_key {
	__u32 prefixlen;
	__u8 family;
	__u8 addr[16];
};
#define GUARD_FAMILY_BITS 8

/* Value of `guard_deny`: who put the entry there. A reload replaces the
 * configuration's entries and leaves `wsplice deny add`'s alone. */
enum guard_origin {
	GUARD_FROM_CONFIG = 1,
	GUARD_FROM_CLI = 2,
};

/* `guard_config`, an array of one: the SYN rate limit per source, as a
 * GCRA (a token bucket kept as one timestamp per source). A SYN passes
 * when the source's theoretical arrival time is at most tolerance_ns ahead
 * of now, and moves it interval_ns on. interval_ns 0: no limit. */
struct guard_config {
	__u64 interval_ns;  /* 1 s / rate */
	__u64 tolerance_ns; /* (burst - 1) * interval_ns */
};

/* Indexes of `guard_stats` (per CPU): one counter per verdict. */
enum guard_counter {
	GUARD_PASSED = 0,       /* TCP to a listener port, passed */
	GUARD_DENIED = 1,       /* dropped: the source is in guard_deny */
	GUARD_RATE_LIMITED = 2, /* a SYN dropped: its source was over the SYN rate */
	GUARD_OTHER = 3,        /* not TCP to a listener port (or a fragment): passed untouched */
	GUARD_COUNTERS = 4,
};

/* Map sizes. */
#define GUARD_MAX_DENY 65536
#define GUARD_MAX_PORTS 256
#define GUARD_MAX_SOURCES 65536

#endif
