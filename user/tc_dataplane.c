#include <errno.h>
#include <stdbool.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "log.h"
#include "tc_dataplane.h"
#include "tcsplice.skel.h"

/* Linux 6.6's tcx attach point; Debian 12's headers are 6.1's. */
#define WS_BPF_TCX_INGRESS 46

struct tc_dataplane {
	struct tcsplice_bpf *skel;
	int link_fd;
	int flows_fd, tunnels_fd, figures_fd;
};

/* Whether bpf_l4_csum_replace takes BPF_F_IPV6 (Linux 6.16, and the
 * stable kernels it went back to): without it the helper fixes a
 * CHECKSUM_COMPLETE skb's csum for an IPv6 pseudo-header as if it were
 * IPv4's; where the flag is unknown it fails the call (EINVAL), and every
 * IPv6 segment of an express tunnel would be dropped. Asked of the kernel
 * with a three-instruction program run once on a dummy packet. */
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

	if (fd < 0)
		return false;
	ok = !bpf_prog_test_run_opts(fd, &run) && run.retval == 0;
	close(fd);
	return ok;
}

/* A program's or a map's id, for bpftool (0 when it cannot be read). */
static unsigned obj_id(int fd)
{
	struct bpf_map_info info; /* a program's info starts with its type and id too */
	uint32_t len = sizeof(info);

	memset(&info, 0, sizeof(info));
	return bpf_obj_get_info_by_fd(fd, &info, &len) ? 0 : info.id;
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
	tp->link_fd = bpf_link_create(bpf_program__fd(tp->skel->progs.tcsplice_ingress), (int)lo, WS_BPF_TCX_INGRESS,
				      NULL);
	if (tp->link_fd < 0) {
		snprintf(why, whylen, "cannot attach the tc program to lo's ingress: %s (a tcx link needs Linux 6.6+)",
			 strerror(errno));
		goto fail;
	}
	tp->flows_fd = bpf_map__fd(tp->skel->maps.tc_flows);
	tp->tunnels_fd = bpf_map__fd(tp->skel->maps.tc_tunnels);
	tp->figures_fd = bpf_map__fd(tp->skel->maps.tunnels);
	/* The maps are not pinned: where bpftool finds this daemon's. */
	log_info("express lane: tc program id %u on lo's ingress; bpftool map dump id %u (tc_tunnels), id %u "
		 "(tc_counters), id %u (hand-overs, tcsplice.bss)",
		 obj_id(bpf_program__fd(tp->skel->progs.tcsplice_ingress)), obj_id(tp->tunnels_fd),
		 obj_id(bpf_map__fd(tp->skel->maps.tc_counters)), obj_id(bpf_map__fd(tp->skel->maps.bss)));
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
		struct ws_tc_flow f = { .tunnel_id = id, .dir = i & 1, .role = i < 2 ? WS_TC_PEER : WS_TC_GUARD };

		if (bpf_map_update_elem(tp->flows_fd, &k->key[i], &f, BPF_NOEXIST))
			goto undo;
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
	int ncpu = libbpf_num_possible_cpus();
	uint64_t *v;

	if (ncpu <= 0 || !(v = calloc((size_t)ncpu, sizeof(*v))))
		return -1;
	*sum = 0;
	if (bpf_map_lookup_elem(bpf_map__fd(tp->skel->maps.tc_counters), &idx, v)) {
		free(v);
		return -1;
	}
	for (int i = 0; i < ncpu; i++)
		*sum += v[i];
	free(v);
	return 0;
}

/* Keys first: once they are gone no segment reaches the tunnel's entry. A
 * key that belongs to another tunnel (an insertion that failed on it) is
 * left alone. */
void tc_express_del(struct tc_dataplane *tp, uint32_t id, const struct tc_keys *k)
{
	for (int i = 0; i < 4; i++) {
		struct ws_tc_flow f;

		if (!bpf_map_lookup_elem(tp->flows_fd, &k->key[i], &f) && f.tunnel_id == id)
			bpf_map_delete_elem(tp->flows_fd, &k->key[i]);
	}
	bpf_map_delete_elem(tp->tunnels_fd, &id);
	bpf_map_delete_elem(tp->figures_fd, &id);
}
