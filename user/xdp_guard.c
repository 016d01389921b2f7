#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>
#include "bpffs.h"
#include "log.h"
#include "metrics.h"
#include "percpu.h"
#include "xdp_guard.h"
#include "xdp_guard.skel.h"

struct xdp_guard {
	struct xdp_guard_bpf *skel;
	int link[XDP_IFACES_MAX]; /* bpf_link per interface; closing one detaches */
	size_t n_links;
	int lock_fd;
	bool made_bpffs; /* --bpffs did not exist: the guard made it, and removes it */
	bool disowned;   /* an upgrade's new process has it: closing leaves it in place */
	char pin_dir[300];
};

void xdp_guard_pin_dir(const char *bpffs, char *out, size_t outlen)
{
	snprintf(out, outlen, "%s/xdp", bpffs);
}

struct guard_key xdp_guard_key(const struct cidr *c)
{
	struct guard_key k = { 0 };

	k.family = c->family == AF_INET ? 4 : 6;
	memcpy(k.addr, c->addr, c->family == AF_INET ? 4 : 16);
	k.prefixlen = GUARD_FAMILY_BITS + c->prefix;
	/* The trie matches on prefixlen bits only; cleared, the host bits
	 * cannot make two keys of one block. */
	for (unsigned bit = c->prefix; bit < 128; bit++)
		k.addr[bit / 8] &= (uint8_t)~(0x80 >> (bit % 8));
	return k;
}

void xdp_guard_key_format(const struct guard_key *k, char *out, size_t outlen)
{
	char a[INET6_ADDRSTRLEN];

	inet_ntop(k->family == 4 ? AF_INET : AF_INET6, k->addr, a, sizeof(a));
	snprintf(out, outlen, "%s/%u", a, k->prefixlen - GUARD_FAMILY_BITS);
}

static void unpin_all(struct xdp_guard *g)
{
	struct bpf_map *m;

	bpf_object__for_each_map(m, g->skel->obj)
		if (bpf_map__pin_path(m))
			unlink(bpf_map__pin_path(m));
}

/* Whether cfg's deny list has k: sorted keys, searched. */
static int key_cmp(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(struct guard_key));
}

/* The configuration's entries leave only once the new ones are in: a
 * source denied before and after is never let through in between. One walk
 * finds the stale ones, then they go. */
static int apply_deny(struct xdp_guard *g, const struct config *cfg, char *why, size_t whylen)
{
	int fd = bpf_map__fd(g->skel->maps.guard_deny);
	struct guard_key k, next, *prev = NULL, *want = calloc(cfg->xdp.n_deny + 1, sizeof(*want)), *stale = NULL;
	size_t n_stale = 0, cap = 0;
	uint8_t origin = GUARD_FROM_CONFIG;
	int rc = -1;

	if (!want) {
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < cfg->xdp.n_deny; i++)
		want[i] = xdp_guard_key(&cfg->xdp.deny[i]);
	qsort(want, cfg->xdp.n_deny, sizeof(*want), key_cmp);
	while (!bpf_map_get_next_key(fd, prev, &next)) {
		uint8_t v;

		if (!bpf_map_lookup_elem(fd, &next, &v) && v == GUARD_FROM_CONFIG &&
		    !bsearch(&next, want, cfg->xdp.n_deny, sizeof(*want), key_cmp)) {
			if (n_stale == cap) {
				struct guard_key *more = realloc(stale, (cap = cap ? 2 * cap : 64) * sizeof(*stale));

				if (!more) {
					snprintf(why, whylen, "out of memory");
					goto out;
				}
				stale = more;
			}
			stale[n_stale++] = next;
		}
		k = next;
		prev = &k;
	}
	for (size_t i = 0; i < cfg->xdp.n_deny; i++)
		if (bpf_map_update_elem(fd, &want[i], &origin, BPF_NOEXIST) && errno != EEXIST) {
			char c[64];

			xdp_guard_key_format(&want[i], c, sizeof(c));
			snprintf(why, whylen, "xdp_deny %s: %s", c, strerror(errno));
			goto out;
		}
	for (size_t i = 0; i < n_stale; i++)
		bpf_map_delete_elem(fd, &stale[i]);
	rc = 0;
out:
	free(want);
	free(stale);
	return rc;
}

/* Listeners do not change on reload (a restart applies that): filled once. */
static int fill_ports(struct xdp_guard *g, const struct config *cfg, char *why, size_t whylen)
{
	int fd = bpf_map__fd(g->skel->maps.guard_ports);
	uint8_t one = 1;

	for (size_t i = 0; i < cfg->n_listeners; i++) {
		const struct sockaddr *sa = (const struct sockaddr *)&cfg->listeners[i].ep.addr;
		uint16_t port = ntohs(sa->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
								: ((const struct sockaddr_in *)sa)->sin_port);

		if (bpf_map_update_elem(fd, &port, &one, BPF_ANY)) {
			snprintf(why, whylen, "xdp: cannot guard port %u: %s", port, strerror(errno));
			return -1;
		}
	}
	return 0;
}

int xdp_guard_apply(struct xdp_guard *g, const struct config *cfg, char *why, size_t whylen)
{
	if (!g->skel) { /* an upgrade's guard that could not be taken over: the old program's maps */
		snprintf(why, whylen, "the XDP guard was not taken over at the upgrade: a restart applies xdp_deny and "
				      "the SYN rate");
		return -1;
	}
	struct guard_config gc = { 0 };
	uint32_t zero = 0;

	if (cfg->xdp.syn_rate) {
		gc.interval_ns = 1000000000ull / cfg->xdp.syn_rate;
		gc.tolerance_ns = (uint64_t)(cfg->xdp.syn_burst ? cfg->xdp.syn_burst - 1 : 0) * gc.interval_ns;
	}
	if (bpf_map_update_elem(bpf_map__fd(g->skel->maps.guard_config), &zero, &gc, BPF_ANY)) {
		snprintf(why, whylen, "xdp: cannot set the SYN rate: %s", strerror(errno));
		return -1;
	}
	return apply_deny(g, cfg, why, whylen);
}

static void guard_metrics(void *ctx, FILE *out)
{
	static const char *const names[GUARD_COUNTERS] = { "passed", "denied", "rate_limited", "other" };
	struct xdp_guard *g = ctx;
	int fd = bpf_map__fd(g->skel->maps.guard_stats);

	fputs("# HELP wsplice_xdp_packets_total Packets the XDP guard saw, by verdict (other: not TCP to a "
	      "listener port, passed untouched).\n"
	      "# TYPE wsplice_xdp_packets_total counter\n",
	      out);
	for (uint32_t i = 0; i < GUARD_COUNTERS; i++) {
		uint64_t sum;

		if (percpu_counter(fd, i, &sum, NULL))
			continue;
		fprintf(out, "wsplice_xdp_packets_total{verdict=\"%s\"} %llu\n", names[i], (unsigned long long)sum);
	}
}

/* Native where the driver has XDP, generic otherwise. A bpf_link, never
 * the netlink attach: the kernel then refuses a second program on the
 * interface (another wsplice's, or `ip link set xdp`), and the link goes
 * with the last descriptor, a crash included. */
static int attach(struct xdp_guard *g, const char *iface, char *why, size_t whylen)
{
	int prog = bpf_program__fd(g->skel->progs.xdp_guard), ifindex = (int)if_nametoindex(iface), fd;
	const char *mode = "native";

	if (!ifindex) {
		snprintf(why, whylen, "xdp %s: no such network interface", iface);
		return -1;
	}
	for (size_t i = 0; i < g->n_links; i++) {
		struct bpf_link_info info = { 0 };
		uint32_t len = sizeof(info);

		if (!bpf_obj_get_info_by_fd(g->link[i], &info, &len) && (int)info.xdp.ifindex == ifindex)
			return 0; /* named twice */
	}
	fd = bpf_link_create(prog, ifindex, BPF_XDP, &(struct bpf_link_create_opts){
		.sz = sizeof(struct bpf_link_create_opts), .flags = XDP_FLAGS_DRV_MODE });
	/* The driver says no in its own words (EOPNOTSUPP: no native XDP;
	 * virtio_net's EINVAL, an MTU too large; veth's ERANGE): generic
	 * works wherever native does not, unless another program is there. */
	if (fd < 0 && errno != EBUSY && errno != EEXIST && errno != EPERM) {
		log_debug("xdp %s: native mode refused (%s)", iface, strerror(errno));
		mode = "generic (the driver refused native XDP)";
		fd = bpf_link_create(prog, ifindex, BPF_XDP, &(struct bpf_link_create_opts){
			.sz = sizeof(struct bpf_link_create_opts), .flags = XDP_FLAGS_SKB_MODE });
	}
	if (fd < 0) {
		snprintf(why, whylen, "xdp %s: cannot attach the guard: %s%s", iface, strerror(errno),
			 errno == EBUSY || errno == EEXIST ? " (the interface has an XDP program already: another "
							     "wsplice's, or one `ip link set xdp` attached)"
							   : "");
		return -1;
	}
	g->link[g->n_links++] = fd;
	log_info("xdp guard on %s: %s mode", iface, mode);
	return 0;
}

struct xdp_guard *xdp_guard_open(const struct config *cfg, char *why, size_t whylen)
{
	struct xdp_guard *g = calloc(1, sizeof(*g));
	int err;

	if (!g) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	xdp_guard_pin_dir(cfg->bpffs, g->pin_dir, sizeof(g->pin_dir));
	g->made_bpffs = access(cfg->bpffs, F_OK) != 0;
	/* A second instance on this bpffs would share (and unpin) the maps. */
	g->lock_fd = bpffs_lock_dir(g->pin_dir, true, why, whylen);
	if (g->lock_fd < 0)
		goto fail;
	g->skel = xdp_guard_bpf__open_opts(&(struct bpf_object_open_opts){ .sz = sizeof(struct bpf_object_open_opts),
									  .pin_root_path = g->pin_dir });
	if (!g->skel) {
		snprintf(why, whylen, "cannot open the XDP guard: %s", strerror(errno));
		goto fail;
	}
	/* Pins a killed instance left are stale: fresh maps, fresh figures. */
	unpin_all(g);
	err = xdp_guard_bpf__load(g->skel);
	if (err) {
		snprintf(why, whylen, "cannot load the XDP guard: %s%s", strerror(-err),
			 -err == EPERM ? " (needs root, or CAP_BPF + CAP_NET_ADMIN)" : "");
		goto fail;
	}
	if (fill_ports(g, cfg, why, whylen) || xdp_guard_apply(g, cfg, why, whylen))
		goto fail;
	for (size_t i = 0; i < cfg->xdp.n_ifaces; i++)
		if (attach(g, cfg->xdp.ifaces[i], why, whylen))
			goto fail;
	metrics_collector_add(guard_metrics, g);
	return g;
fail:
	xdp_guard_close(g);
	return NULL;
}

bool xdp_guard_made_bpffs(const struct xdp_guard *g)
{
	return g && g->made_bpffs;
}

int xdp_guard_export(struct xdp_guard *g, int *fds, size_t cap)
{
	if (!g)
		return 0;
	if (cap < 1 + g->n_links) {
		errno = ENOBUFS;
		return -1;
	}
	fds[0] = g->lock_fd;
	memcpy(fds + 1, g->link, g->n_links * sizeof(int));
	return 1 + (int)g->n_links;
}

void xdp_guard_disown(struct xdp_guard *g)
{
	if (g)
		g->disowned = true;
}

struct xdp_guard *xdp_guard_adopt(const struct config *cfg, const int *fds, size_t n, bool made_bpffs, char *why,
				  size_t whylen)
{
	struct xdp_guard *g = calloc(1, sizeof(*g));

	if (!g) {
		snprintf(why, whylen, "out of memory");
		for (size_t i = 0; i < n; i++)
			close(fds[i]);
		return NULL;
	}
	/* The old process's until xdp_guard_take: a new process that fails
	 * before leaves it as it found it. */
	g->disowned = true;
	g->made_bpffs = made_bpffs;
	xdp_guard_pin_dir(cfg->bpffs, g->pin_dir, sizeof(g->pin_dir));
	g->lock_fd = n ? fds[0] : -1;
	for (size_t i = 1; i < n; i++) {
		if (g->n_links < XDP_IFACES_MAX)
			g->link[g->n_links++] = fds[i];
		else
			close(fds[i]);
	}
	if (n < 1 || n - 1 != cfg->xdp.n_ifaces) {
		snprintf(why, whylen, "the running XDP guard is on %zu interfaces, the new configuration names %zu: a "
				      "restart applies that", n ? n - 1 : 0, cfg->xdp.n_ifaces);
		goto fail;
	}
	for (size_t i = 0; i < g->n_links; i++) {
		struct bpf_link_info info = { 0 };
		uint32_t len = sizeof(info);

		if (bpf_obj_get_info_by_fd(g->link[i], &info, &len) ||
		    info.xdp.ifindex != if_nametoindex(cfg->xdp.ifaces[i])) {
			snprintf(why, whylen, "the running XDP guard is not on %s: a restart applies that",
				 cfg->xdp.ifaces[i]);
			goto fail;
		}
	}
	return g;
fail:
	xdp_guard_close(g);
	return NULL;
}

int xdp_guard_take(struct xdp_guard *g, const struct config *cfg, char *why, size_t whylen)
{
	int err;

	/* The pinned maps are reused as they are (the deny list, `wsplice
	 * deny`'s entries included, and the counters); libbpf refuses maps of
	 * another layout. */
	g->skel = xdp_guard_bpf__open_opts(&(struct bpf_object_open_opts){ .sz = sizeof(struct bpf_object_open_opts),
									  .pin_root_path = g->pin_dir });
	if (!g->skel) {
		snprintf(why, whylen, "cannot open the XDP guard: %s", strerror(errno));
		return -1;
	}
	err = xdp_guard_bpf__load(g->skel);
	if (err) {
		snprintf(why, whylen, "cannot adopt the running XDP guard's maps: %s", strerror(-err));
		return -1;
	}
	if (fill_ports(g, cfg, why, whylen) || xdp_guard_apply(g, cfg, why, whylen))
		return -1;
	/* This binary's program takes over each link at once: no packet goes
	 * unguarded. */
	for (size_t i = 0; i < g->n_links; i++)
		if (bpf_link_update(g->link[i], bpf_program__fd(g->skel->progs.xdp_guard), NULL)) {
			snprintf(why, whylen, "xdp %s: cannot replace the running guard's program: %s", cfg->xdp.ifaces[i],
				 strerror(errno));
			return -1;
		}
	g->disowned = false;
	metrics_collector_add(guard_metrics, g);
	log_info("xdp guard: the running one taken over on %zu interfaces (its pinned maps kept)", g->n_links);
	return 0;
}

void xdp_guard_forget(struct xdp_guard *g)
{
	if (!g)
		return;
	metrics_collector_del(guard_metrics, g);
	for (size_t i = 0; i < g->n_links; i++)
		close(g->link[i]);
	if (g->lock_fd >= 0)
		close(g->lock_fd);
	/* The skeleton's maps and program: closed, not unpinned. */
	xdp_guard_bpf__destroy(g->skel);
	free(g);
}

void xdp_guard_close(struct xdp_guard *g)
{
	if (!g)
		return;
	if (g->lock_fd >= 0 && !g->disowned) {
		if (g->skel)
			unpin_all(g);
		rmdir(g->pin_dir);
		/* --bpffs too, when the guard made it (the copy relay pins
		 * nothing); the data plane, when it runs, goes after. */
		if (g->made_bpffs) {
			*strrchr(g->pin_dir, '/') = '\0';
			rmdir(g->pin_dir);
		}
	}
	for (size_t i = 0; i < g->n_links; i++)
		close(g->link[i]);
	g->n_links = 0;
	xdp_guard_forget(g);
}
