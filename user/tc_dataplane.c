#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdbool.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "event_loop.h"
#include "ifroute.h"
#include "log.h"
#include "percpu.h"
#include "tc_dataplane.h"
#include "tcsplice.skel.h"

/* Linux 6.6's tcx attach point; Debian 12's headers are 6.1's. */
#define WS_BPF_TCX_INGRESS 46
#define WS_BPF_TCX_EGRESS 47
#define TC_MAX_DEVICES 64

/* A device other than lo: the program on its ingress translates, the
 * guard on its egress keeps the frozen sockets quiet. */
struct tc_device {
	unsigned ifindex;
	int in_fd, out_fd;
};

struct tc_dataplane {
	struct tcsplice_bpf *skel;
	int link_fd;           /* lo's tcx link (Linux 6.6+), or -1 */
	size_t n_devs;
	struct tc_device dev[TC_MAX_DEVICES];
	struct ws_tc_owner nl; /* a netlink filter (before 6.6): nl.handle != 0 */
	int flows_fd, tunnels_fd, figures_fd;
	struct ev_handler links;  /* RTM_NEWLINK and RTM_DELLINK, in the process that loaded (tc_dataplane_watch) */
	bool told_full;
};

/* dev[] mirrored into the .bss every process maps (covered_ifindex). */
static void publish(struct tc_dataplane *tp)
{
	__u32 *out = tp->skel->bss->covered_ifindex;
	size_t cap = sizeof(tp->skel->bss->covered_ifindex) / sizeof(*out);

	for (size_t i = 0; i < cap; i++)
		__atomic_store_n(&out[i], i < tp->n_devs ? tp->dev[i].ifindex : 0, __ATOMIC_RELEASE);
}

/* The program on one more device: 0, or -1 with a warning (its tunnels stay
 * on the relay). */
static int attach_device(struct tc_dataplane *tp, unsigned ifindex, const char *name)
{
	struct tc_device *d = &tp->dev[tp->n_devs];

	if (tp->n_devs == TC_MAX_DEVICES) {
		if (!tp->told_full)
			log_warn("express lane: more than %d devices: not on %s, nor on any made later", TC_MAX_DEVICES,
				 name);
		tp->told_full = true;
		return -1;
	}
	d->ifindex = ifindex;
	d->in_fd = bpf_link_create(bpf_program__fd(tp->skel->progs.tcsplice_ingress), (int)ifindex, WS_BPF_TCX_INGRESS,
				   NULL);
	d->out_fd = d->in_fd < 0 ? -1
				 : bpf_link_create(bpf_program__fd(tp->skel->progs.tcsplice_egress), (int)ifindex,
						   WS_BPF_TCX_EGRESS, NULL);
	if (d->out_fd < 0) {
		log_warn("express lane: cannot attach to %s: %s; its tunnels stay on the relay", name, strerror(errno));
		if (d->in_fd >= 0)
			close(d->in_fd);
		return -1;
	}
	tp->n_devs++;
	publish(tp);
	return 0;
}

static void detach_device(struct tc_dataplane *tp, struct tc_device *d)
{
	close(d->in_fd);
	close(d->out_fd);
	*d = tp->dev[--tp->n_devs];
	publish(tp);
}

static void not_ethernet(const char *name)
{
	log_info("express lane: not on %s: no Ethernet header there (the program parses one, and bpf_redirect_neigh "
		 "writes one)", name);
}

static struct tc_device *device_of(struct tc_dataplane *tp, unsigned ifindex)
{
	for (size_t i = 0; i < tp->n_devs; i++)
		if (tp->dev[i].ifindex == ifindex)
			return &tp->dev[i];
	return NULL;
}

/* A device came or went. A new Ethernet device gets the program; one that
 * went took its links' attachment with it, and its descriptors go here.
 * RTM_NEWLINK also says a known device changed (up, down, its MTU); a
 * bridge's own messages about its ports (AF_BRIDGE) are not about devices
 * coming or going. */
static void on_link(struct tc_dataplane *tp, const struct nlmsghdr *n)
{
	const struct ifinfomsg *ifi = NLMSG_DATA(n);
	char name[IF_NAMESIZE] = "?", now[IF_NAMESIZE];
	struct tc_device *d;
	unsigned ifindex;
	int left;

	if (n->nlmsg_len < NLMSG_LENGTH(sizeof(*ifi)) || ifi->ifi_family != AF_UNSPEC)
		return;
	ifindex = (unsigned)ifi->ifi_index;
	if (ifindex == WS_LOOPBACK_IFINDEX)
		return;
	d = device_of(tp, ifindex);
	left = (int)IFLA_PAYLOAD(n);
	for (const struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, left); a = RTA_NEXT(a, left))
		if (a->rta_type == IFLA_IFNAME)
			snprintf(name, sizeof(name), "%.*s", (int)RTA_PAYLOAD(a), (const char *)RTA_DATA(a));
	if (n->nlmsg_type == RTM_DELLINK && d && !if_indextoname(ifindex, now)) {
		detach_device(tp, d);
		log_info("express lane: %s (ifindex %u) is gone, and the program with it", name, ifindex);
	} else if (n->nlmsg_type == RTM_NEWLINK && !d && ifi->ifi_type == ARPHRD_ETHER) {
		if (!attach_device(tp, ifindex, name))
			log_info("express lane: now also on %s (a device made after the start)", name);
	}
}

/* Every device of the network namespace but lo not covered yet, through
 * tcx links. At the start one line lists them; later (the subscription,
 * lost messages) each has its own line. */
static void attach_present(struct tc_dataplane *tp, bool at_start)
{
	struct if_nameindex *all = if_nameindex();
	char names[512] = "";
	size_t at = 0;

	for (struct if_nameindex *i = all; i && i->if_index; i++) {
		if (i->if_index == WS_LOOPBACK_IFINDEX || device_of(tp, i->if_index))
			continue;
		if (!ifroute_is_ethernet(i->if_name)) {
			if (at_start)
				not_ethernet(i->if_name);
		} else if (attach_device(tp, i->if_index, i->if_name)) {
			continue;
		} else if (!at_start) {
			log_info("express lane: now also on %s (a device made after the start)", i->if_name);
		} else if (at < sizeof(names)) {
			at += (size_t)snprintf(names + at, sizeof(names) - at, "%s%s", at ? ", " : "", i->if_name);
		}
	}
	if (all)
		if_freenameindex(all);
	if (at)
		log_info("express lane: also on %s (tcx ingress, and the guard on egress)", names);
}

/* After messages were lost (ENOBUFS), and once at the subscription: the
 * devices as they are now. Those gone leave, those new come. */
static void resync(struct tc_dataplane *tp)
{
	char now[IF_NAMESIZE];

	for (size_t i = tp->n_devs; i-- > 0;)
		if (!if_indextoname(tp->dev[i].ifindex, now)) {
			log_info("express lane: ifindex %u is gone, and the program with it", tp->dev[i].ifindex);
			detach_device(tp, &tp->dev[i]);
		}
	attach_present(tp, false);
}

static void on_links(struct ev_handler *h, uint32_t events)
{
	struct tc_dataplane *tp = container_of(h, struct tc_dataplane, links);
	char buf[16384] __attribute__((aligned(NLMSG_ALIGNTO)));
	ssize_t got;

	(void)events;
	while ((got = recv(h->fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
		int left = (int)got;

		for (const struct nlmsghdr *n = (const struct nlmsghdr *)buf;
		     left >= (int)sizeof(*n) && n->nlmsg_len >= sizeof(*n) && (int)n->nlmsg_len <= left;
		     left -= (int)NLMSG_ALIGN(n->nlmsg_len), n = (const struct nlmsghdr *)((const char *)n + NLMSG_ALIGN(n->nlmsg_len)))
			on_link(tp, n);
	}
	/* ENOBUFS: the kernel dropped messages; what exists now is looked at. */
	if (got < 0 && errno == ENOBUFS)
		resync(tp);
}

int tc_dataplane_watch(struct tc_dataplane *tp, struct ev_loop *loop)
{
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK };

	if (!loop) {
		/* A worker: the devices' links are the master's alone, or a
		 * device moved to another namespace (which is no RTM_DELLINK to
		 * tcx) would keep the programs through the worker's copies. */
		if (tp->links.fd >= 0)
			close(tp->links.fd);
		tp->links.fd = -1;
		for (size_t i = 0; i < tp->n_devs; i++) {
			close(tp->dev[i].in_fd);
			close(tp->dev[i].out_fd);
		}
		tp->n_devs = 0;
		return 0;
	}
	if (tp->link_fd < 0)
		return 0; /* no tcx: lo only */
	tp->links.fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
	tp->links.on_event = on_links;
	if (tp->links.fd < 0 || bind(tp->links.fd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    ev_watch(loop, &tp->links, EPOLLIN)) {
		log_warn("express lane: cannot watch for new devices (%s): only those present at the start are covered",
			 strerror(errno));
		if (tp->links.fd >= 0)
			close(tp->links.fd);
		tp->links.fd = -1;
		return -1;
	}
	/* One made or gone between the start's walk and the subscription. */
	resync(tp);
	return 0;
}

bool tc_dataplane_covers(const struct tc_dataplane *tp, unsigned ifindex)
{
	const __u32 *c = tp->skel->bss->covered_ifindex;

	if (ifindex == WS_LOOPBACK_IFINDEX)
		return true;
	for (size_t i = 0; i < sizeof(tp->skel->bss->covered_ifindex) / sizeof(*c); i++)
		if (__atomic_load_n(&c[i], __ATOMIC_ACQUIRE) == ifindex)
			return true;
	return false;
}

unsigned tc_dataplane_listen_mtu(const struct tc_dataplane *tp)
{
	unsigned lo = 0, hi = 0;

	for (size_t i = 0; i < tp->n_devs; i++) {
		unsigned mtu = ifroute_mtu(tp->dev[i].ifindex);

		if (!mtu)
			continue;
		lo = lo && lo < mtu ? lo : mtu;
		hi = hi > mtu ? hi : mtu;
	}
	return lo < hi ? lo : 0;
}

/* The inode of one of this process's namespaces ("net", "pid"). */
static uint64_t ns_ino(const char *which)
{
	char path[32];
	struct stat st;

	snprintf(path, sizeof(path), "/proc/self/ns/%s", which);
	return stat(path, &st) ? 0 : (uint64_t)st.st_ino;
}

/* A process's state letter and start time (/proc/PID/stat fields 3 and
 * 22); -1 when there is no such process. */
static int proc_stat(uint32_t pid, char *state, uint64_t *start)
{
	char path[32], buf[1024], *p, *save = NULL;
	FILE *f;
	int field = 3;

	snprintf(path, sizeof(path), "/proc/%u/stat", pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	p = fgets(buf, sizeof(buf), f) ? strrchr(buf, ')') : NULL;
	fclose(f);
	if (!p)
		return -1;
	*state = '?';
	*start = 0;
	for (p = strtok_r(p + 1, " ", &save); p; p = strtok_r(NULL, " ", &save), field++) {
		if (field == 3)
			*state = *p;
		if (field == 22) {
			*start = strtoull(p, NULL, 10);
			break;
		}
	}
	return 0;
}

/* The owner a filter names is gone: its pid is free, a zombie, or
 * another process's now. Only judged in this pid namespace (a daemon in a
 * container sharing this network namespace has pids of its own). */
static bool owner_gone(const struct ws_tc_owner *o)
{
	char state;
	uint64_t start;

	if (o->pidns != ns_ino("pid"))
		return false;
	if (proc_stat(o->pid, &state, &start))
		return true;
	return state == 'Z' || state == 'X' || start != o->start;
}

/* A netlink filter left by a daemon that died (a crash, a SIGKILL) in
 * this network namespace goes: its entries would translate the segments
 * of a new connection that happened to reuse an old flow's ports. Found
 * through the programs the kernel holds, and the owner each one's
 * tc_owner names; removed only if the filter at that handle and priority
 * is still that program (another daemon starting meanwhile may have taken
 * the place). */
static void remove_stale_filters(unsigned lo)
{
	uint32_t id = 0, me = (uint32_t)getpid();
	uint64_t ns = ns_ino("net");

	for (;;) {
		struct bpf_prog_info info;
		uint32_t len = sizeof(info), maps[16], n;
		int fd;

		if (bpf_prog_get_next_id(id, &id)) {
			if (errno != ENOENT)
				log_warn("express lane: cannot look for filters a dead daemon left on lo: %s "
					 "(walking the programs needs CAP_SYS_ADMIN)", strerror(errno));
			return;
		}
		fd = bpf_prog_get_fd_by_id(id);
		if (fd < 0)
			continue;
		memset(&info, 0, sizeof(info));
		info.nr_map_ids = 16;
		info.map_ids = (uint64_t)(uintptr_t)maps;
		if (bpf_obj_get_info_by_fd(fd, &info, &len) || info.type != BPF_PROG_TYPE_SCHED_CLS ||
		    strncmp(info.name, "tcsplice_ingress", sizeof(info.name) - 1)) {
			close(fd);
			continue;
		}
		close(fd);
		n = info.nr_map_ids < 16 ? info.nr_map_ids : 16;
		for (uint32_t i = 0; i < n; i++) {
			struct bpf_map_info mi;
			struct ws_tc_owner o;
			uint32_t mlen = sizeof(mi), zero = 0;
			int mfd = bpf_map_get_fd_by_id(maps[i]);

			if (mfd < 0)
				continue;
			memset(&mi, 0, sizeof(mi));
			if (!bpf_obj_get_info_by_fd(mfd, &mi, &mlen) && !strcmp(mi.name, "tc_owner") &&
			    mi.value_size == sizeof(o) && !bpf_map_lookup_elem(mfd, &zero, &o) && o.handle &&
			    o.netns == ns && o.pid != me && owner_gone(&o)) {
				LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = (int)lo, .attach_point = BPF_TC_INGRESS);
				LIBBPF_OPTS(bpf_tc_opts, q, .handle = o.handle, .priority = o.priority);
				LIBBPF_OPTS(bpf_tc_opts, del, .handle = o.handle, .priority = o.priority);

				if (!bpf_tc_query(&hook, &q) && q.prog_id == id && !bpf_tc_detach(&hook, &del))
					log_warn("express lane: removed the tc filter process %u left on lo's ingress "
						 "(program id %u)", o.pid, id);
			}
			close(mfd);
		}
	}
}

/* Before Linux 6.6: a netlink filter on lo's clsact ingress, in front of
 * any other (the kernel numbers it). The clsact qdisc stays when the
 * daemon goes: another daemon's filter may hang on it by then. */
static int attach_netlink(struct tc_dataplane *tp, unsigned lo, char *why, size_t whylen)
{
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = (int)lo, .attach_point = BPF_TC_INGRESS);
	LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = bpf_program__fd(tp->skel->progs.tcsplice_ingress));
	uint32_t zero = 0;
	int err;

	remove_stale_filters(lo);
	err = bpf_tc_hook_create(&hook);
	if (err && err != -EEXIST) {
		snprintf(why, whylen, "cannot add a clsact qdisc to lo: %s", strerror(-err));
		return -1;
	}
	err = bpf_tc_attach(&hook, &opts);
	if (err) {
		snprintf(why, whylen, "cannot attach the tc program to lo's ingress: %s", strerror(-err));
		return -1;
	}
	tp->nl = (struct ws_tc_owner){ .pid = (uint32_t)getpid(), .handle = opts.handle, .priority = opts.priority,
				       .netns = ns_ino("net"), .pidns = ns_ino("pid") };
	{
		char state;
		uint64_t start = 0;

		proc_stat(tp->nl.pid, &state, &start);
		tp->nl.start = start;
	}
	/* The program does not use tc_owner: bound to it, so that the next
	 * start finds it through the program. */
	if (bpf_prog_bind_map(opts.prog_fd, bpf_map__fd(tp->skel->maps.tc_owner), NULL) ||
	    bpf_map_update_elem(bpf_map__fd(tp->skel->maps.tc_owner), &zero, &tp->nl, BPF_ANY))
		log_warn("express lane: cannot record this process as the tc filter's owner: %s", strerror(errno));
	log_info("express lane: attached as a netlink tc filter (handle %u, priority %u): no tcx before Linux 6.6",
		 opts.handle, opts.priority);
	return 0;
}

/* Whether bpf_l4_csum_replace takes BPF_F_IPV6 (Linux 6.16, and the
 * stable kernels it went back to): without it the helper fixes a
 * CHECKSUM_COMPLETE skb's csum for an IPv6 pseudo-header as if it were
 * IPv4's; where the flag is unknown it fails the call (EINVAL), and every
 * IPv6 segment of an express tunnel would be dropped. Asked of the kernel
 * with a six-instruction program run once on a dummy packet. */
static bool csum_takes_ipv6_flag(void)
{
	const struct bpf_insn insns[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_2, .imm = 0 },
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_3, .imm = 0 },
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_4, .imm = 0 },
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_5, .imm = BPF_F_PSEUDO_HDR | 1 << 7 },
		{ .code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_l4_csum_replace },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	uint8_t pkt[64] = { 0 };
	LIBBPF_OPTS(bpf_test_run_opts, run, .data_in = pkt, .data_size_in = sizeof(pkt), .repeat = 1);
	int fd = bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, "wsplice_probe", "GPL", insns, sizeof(insns) / sizeof(insns[0]),
			       NULL);
	bool ok;

	if (fd < 0) {
		log_warn("express lane: cannot ask the kernel about BPF_F_IPV6 (%s): loading without it", strerror(errno));
		return false;
	}
	ok = !bpf_prog_test_run_opts(fd, &run) && run.retval == 0;
	close(fd);
	return ok;
}

/* A program's or a map's id, for bpftool (0 when it cannot be read). */
static unsigned obj_id(int fd, bool prog)
{
	union {
		struct bpf_prog_info p;
		struct bpf_map_info m;
	} info;
	uint32_t len = prog ? sizeof(info.p) : sizeof(info.m);

	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(fd, &info, &len))
		return 0;
	return prog ? info.p.id : info.m.id;
}

struct tc_dataplane *tc_dataplane_open(uint32_t max_tunnels, char *why, size_t whylen)
{
	struct tc_dataplane *tp = calloc(1, sizeof(*tp));
	unsigned lo = if_nametoindex("lo");
	int err;

	if (!tp) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	tp->link_fd = -1;
	tp->links.fd = -1;
	tp->skel = tcsplice_bpf__open();
	if (!tp->skel) {
		snprintf(why, whylen, "cannot open the tc program: %s", strerror(errno));
		goto fail;
	}
	if (bpf_map__set_max_entries(tp->skel->maps.tc_tunnels, max_tunnels) ||
	    bpf_map__set_max_entries(tp->skel->maps.tunnels, max_tunnels) ||
	    bpf_map__set_max_entries(tp->skel->maps.tc_flows, 4 * max_tunnels)) {
		snprintf(why, whylen, "cannot size the tc maps for max_tunnels %u: %s", max_tunnels, strerror(errno));
		goto fail;
	}
	if (!csum_takes_ipv6_flag()) {
		tp->skel->rodata->l4_ipv6_flag = 0;
		log_info("express lane: bpf_l4_csum_replace has no BPF_F_IPV6 here (Linux 6.16+): IPv6 checksums are "
			 "fixed as before it, right for lo's and veth's CHECKSUM_PARTIAL");
	}
	err = tcsplice_bpf__load(tp->skel);
	if (err) {
		snprintf(why, whylen, "cannot load the tc program: %s%s", strerror(-err),
			 -err == EPERM ? " (needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON)" : "");
		goto fail;
	}
	/* WSPLICE_TC_ATTACH=netlink: the attach of kernels before 6.6 on a
	 * newer one, for the tests of that path. */
	if (getenv("WSPLICE_TC_ATTACH") && !strcmp(getenv("WSPLICE_TC_ATTACH"), "netlink"))
		errno = EINVAL;
	else
		tp->link_fd = bpf_link_create(bpf_program__fd(tp->skel->progs.tcsplice_ingress), (int)lo,
					      WS_BPF_TCX_INGRESS, NULL);
	if (tp->link_fd < 0) {
		if (errno != EINVAL && errno != EOPNOTSUPP && errno != ENOTSUP) {
			snprintf(why, whylen, "cannot attach the tc program to lo's ingress: %s", strerror(errno));
			goto fail;
		}
		if (attach_netlink(tp, lo, why, whylen))
			goto fail;
		log_info("express lane: no tcx here (Linux 6.6+): only tunnels on lo go express");
	} else {
		attach_present(tp, true);
	}
	tp->flows_fd = bpf_map__fd(tp->skel->maps.tc_flows);
	tp->tunnels_fd = bpf_map__fd(tp->skel->maps.tc_tunnels);
	tp->figures_fd = bpf_map__fd(tp->skel->maps.tunnels);
	/* The maps are not pinned: where bpftool finds this daemon's. */
	log_info("express lane: tc program id %u on lo's ingress; bpftool map dump id %u (tc_tunnels), id %u "
		 "(tc_counters), id %u (hand-overs, tcsplice.bss)",
		 obj_id(bpf_program__fd(tp->skel->progs.tcsplice_ingress), true), obj_id(tp->tunnels_fd, false),
		 obj_id(bpf_map__fd(tp->skel->maps.tc_counters), false), obj_id(bpf_map__fd(tp->skel->maps.bss), false));
	return tp;
fail:
	tc_dataplane_close(tp);
	return NULL;
}

void tc_dataplane_close(struct tc_dataplane *tp)
{
	if (!tp)
		return;
	if (tp->link_fd >= 0)
		close(tp->link_fd);
	if (tp->links.fd >= 0)
		close(tp->links.fd);
	for (size_t i = 0; i < tp->n_devs; i++) {
		close(tp->dev[i].in_fd);
		close(tp->dev[i].out_fd);
	}
	if (tp->nl.handle) {
		LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = (int)if_nametoindex("lo"), .attach_point = BPF_TC_INGRESS);
		LIBBPF_OPTS(bpf_tc_opts, opts, .handle = tp->nl.handle, .priority = tp->nl.priority);

		if (bpf_tc_detach(&hook, &opts))
			log_warn("express lane: cannot detach the tc filter from lo (handle %u): tc filter del dev lo "
				 "ingress removes it", tp->nl.handle);
	}
	tcsplice_bpf__destroy(tp->skel);
	free(tp);
}

int tc_express_add(struct tc_dataplane *tp, uint32_t id, const struct ws_tc_tunnel *t, const struct tc_keys *k)
{
	struct ws_tunnel zero = { 0 };
	int i, err;

	if (bpf_map_update_elem(tp->tunnels_fd, &id, t, BPF_NOEXIST))
		return -1;
	if (bpf_map_update_elem(tp->figures_fd, &id, &zero, BPF_ANY))
		goto undo;
	for (i = 0; i < 4; i++) {
		struct ws_tc_flow f = { .tunnel_id = id, .dir = i & 1, .role = i < 2 ? WS_TC_PEER : WS_TC_GUARD,
					.cookie = i < 2 ? 0 : k->cookie[i - 2] };

		if (f.role == WS_TC_GUARD)
			__atomic_add_fetch(&tp->skel->bss->guard_keys, 1, __ATOMIC_SEQ_CST);
		if (bpf_map_update_elem(tp->flows_fd, &k->key[i], &f, BPF_NOEXIST)) {
			if (f.role == WS_TC_GUARD)
				__atomic_sub_fetch(&tp->skel->bss->guard_keys, 1, __ATOMIC_SEQ_CST);
			goto undo;
		}
	}
	return 0;
undo:
	err = errno;
	tc_express_del(tp, id, k);
	errno = err;
	return -1;
}

int tc_express_update(struct tc_dataplane *tp, uint32_t id, const struct ws_tc_tunnel *t)
{
	return bpf_map_update_elem(tp->tunnels_fd, &id, t, BPF_EXIST);
}

int tc_express_read(struct tc_dataplane *tp, uint32_t id, struct ws_tc_tunnel *t)
{
	return bpf_map_lookup_elem(tp->tunnels_fd, &id, t);
}

int tc_express_figures(struct tc_dataplane *tp, uint32_t id, struct ws_tunnel *out)
{
	return bpf_map_lookup_elem(tp->figures_fd, &id, out);
}

void tc_keys_of(const struct ws_tc_tunnel *t, struct tc_keys *k)
{
	/* key[0]: the client's segments (reversed u2c out leg), key[1] the
	 * upstream's (reversed c2u), then the out legs: the guard's. */
	for (int i = 0; i < 2; i++) {
		const struct ws_tc_dir *o = &t->dir[i == 0 ? WS_DIR_U2C : WS_DIR_C2U];
		struct ws_tc_key *in = &k->key[i], *guard = &k->key[2 + i];

		memset(in, 0, sizeof(*in));
		memset(guard, 0, sizeof(*guard));
		in->family = guard->family = (uint8_t)t->family;
		memcpy(in->saddr, o->daddr, 16);
		memcpy(in->daddr, o->saddr, 16);
		in->sport = o->dport;
		in->dport = o->sport;
		memcpy(guard->saddr, o->saddr, 16);
		memcpy(guard->daddr, o->daddr, 16);
		guard->sport = o->sport;
		guard->dport = o->dport;
	}
}

int tc_dataplane_forget(struct tc_dataplane *tp, uint32_t worker, uint32_t mask)
{
	uint32_t key, *prev = NULL, *ids = NULL;
	size_t n = 0, cap = 0;

	/* The ids first, then the deletes: get_next_key restarts from the
	 * first key when the one it was given has gone. */
	while (!bpf_map_get_next_key(tp->tunnels_fd, prev, &key)) {
		if ((key & mask) == worker) {
			if (n == cap) {
				uint32_t *grown = realloc(ids, (cap = cap ? 2 * cap : 64) * sizeof(*ids));

				if (!grown)
					break;
				ids = grown;
			}
			ids[n++] = key;
		}
		prev = &key;
	}
	for (size_t i = 0; i < n; i++) {
		struct ws_tc_tunnel t;
		struct tc_keys k;

		if (bpf_map_lookup_elem(tp->tunnels_fd, &ids[i], &t))
			continue;
		tc_keys_of(&t, &k);
		tc_express_del(tp, ids[i], &k);
	}
	free(ids);
	return (int)n;
}

struct ws_tc_handovers *tc_dataplane_handovers(struct tc_dataplane *tp)
{
	return &tp->skel->bss->tc_handovers;
}

int tc_dataplane_counter(struct tc_dataplane *tp, uint32_t idx, uint64_t *sum)
{
	return percpu_counter(bpf_map__fd(tp->skel->maps.tc_counters), idx, sum, NULL);
}

/* Keys first: once they are gone no segment reaches the tunnel's entry. A
 * key that belongs to another tunnel (an insertion that failed on it) is
 * left alone. */
void tc_express_del(struct tc_dataplane *tp, uint32_t id, const struct tc_keys *k)
{
	for (int i = 0; i < 4; i++) {
		struct ws_tc_flow f;

		if (!bpf_map_lookup_elem(tp->flows_fd, &k->key[i], &f) && f.tunnel_id == id &&
		    !bpf_map_delete_elem(tp->flows_fd, &k->key[i]) && f.role == WS_TC_GUARD)
			__atomic_sub_fetch(&tp->skel->bss->guard_keys, 1, __ATOMIC_SEQ_CST);
	}
	bpf_map_delete_elem(tp->tunnels_fd, &id);
	bpf_map_delete_elem(tp->figures_fd, &id);
}
