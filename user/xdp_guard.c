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
#include "xdp_guard.h"
#include "xdp_guard.skel.h"

struct xdp_guard {
	struct xdp_guard_bpf *skel;
	int link[XDP_IFACES_MAX]; /* bpf_link per interface; closing one detaches */
	size_t n_links;
	int lock_fd;
	char pin_dir[300];
};

static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

void xdp_guard_pin_dir(const char *bpffs, char *out, size_t outlen)
{
	snprintf(out, outlen, "%s/xdp", bpffs);
}

struct guard_key xdp_guard_key(const struct cidr *c)
{
	struct guard_key k = { 0 };
	unsigned off = c->family == AF_INET ? 96 : 0;

	if (off) {
		memcpy(k.addr, v4mapped, sizeof(v4mapped));
		memcpy(k.addr + 12, c->addr, 4);
	} else {
		memcpy(k.addr, c->addr, 16);
	}
	k.prefixlen = off + c->prefix;
	/* The trie matches on prefixlen bits only; cleared, the host bits
	 * cannot make two keys of one block. */
	for (unsigned bit = k.prefixlen; bit < 128; bit++)
		k.addr[bit / 8] &= (uint8_t)~(0x80 >> (bit % 8));
	return k;
}

void xdp_guard_key_format(const struct guard_key *k, char *out, size_t outlen)
{
	char a[INET6_ADDRSTRLEN];

	if (k->prefixlen >= 96 && !memcmp(k->addr, v4mapped, sizeof(v4mapped))) {
		inet_ntop(AF_INET, k->addr + 12, a, sizeof(a));
		snprintf(out, outlen, "%s/%u", a, k->prefixlen - 96);
	} else {
		inet_ntop(AF_INET6, k->addr, a, sizeof(a));
		snprintf(out, outlen, "%s/%u", a, k->prefixlen);
	}
}

static void unpin_all(struct xdp_guard *g)
{
	struct bpf_map *m;

	bpf_object__for_each_map(m, g->skel->obj)
		if (bpf_map__pin_path(m))
			unlink(bpf_map__pin_path(m));
}

static bool in_config(const struct config *cfg, const struct guard_key *k)
{
	for (size_t i = 0; i < cfg->xdp.n_deny; i++) {
		struct guard_key c = xdp_guard_key(&cfg->xdp.deny[i]);

		if (!memcmp(&c, k, sizeof(c)))
			return true;
	}
	return false;
}

/* The configuration's entries leave only once the new ones are in: a
 * source denied before and after is never let through in between. */
static int apply_deny(struct xdp_guard *g, const struct config *cfg, char *why, size_t whylen)
{
	int fd = bpf_map__fd(g->skel->maps.guard_deny);
	struct guard_key k, next, *prev = NULL;
	uint8_t origin = GUARD_FROM_CONFIG;

	for (size_t i = 0; i < cfg->xdp.n_deny; i++) {
		k = xdp_guard_key(&cfg->xdp.deny[i]);
		if (bpf_map_update_elem(fd, &k, &origin, BPF_NOEXIST) && errno != EEXIST) {
			char c[64];

			xdp_guard_key_format(&k, c, sizeof(c));
			snprintf(why, whylen, "xdp_deny %s: %s", c, strerror(errno));
			return -1;
		}
	}
	/* A deleted key restarts the walk: the trie's next key after a key
	 * that is gone is its first. */
	while (!bpf_map_get_next_key(fd, prev, &next)) {
		uint8_t v;

		if (!bpf_map_lookup_elem(fd, &next, &v) && v == GUARD_FROM_CONFIG && !in_config(cfg, &next) &&
		    !bpf_map_delete_elem(fd, &next)) {
			prev = NULL;
			continue;
		}
		k = next;
		prev = &k;
	}
	return 0;
}

static uint16_t listener_port(const struct listener_cfg *l)
{
	const struct sockaddr *sa = (const struct sockaddr *)&l->ep.addr;

	return ntohs(sa->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
					       : ((const struct sockaddr_in *)sa)->sin_port);
}

static bool is_listener_port(const struct config *cfg, uint16_t port)
{
	for (size_t i = 0; i < cfg->n_listeners; i++)
		if (listener_port(&cfg->listeners[i]) == port)
			return true;
	return false;
}

/* The new ports in before the old ones out: a port kept across a reload is
 * guarded throughout. */
static int apply_ports(struct xdp_guard *g, const struct config *cfg, char *why, size_t whylen)
{
	int fd = bpf_map__fd(g->skel->maps.guard_ports);
	uint16_t port, next, *prev = NULL;
	uint8_t one = 1;

	for (size_t i = 0; i < cfg->n_listeners; i++) {
		port = listener_port(&cfg->listeners[i]);
		if (bpf_map_update_elem(fd, &port, &one, BPF_ANY)) {
			snprintf(why, whylen, "xdp: cannot guard port %u: %s", port, strerror(errno));
			return -1;
		}
	}
	while (!bpf_map_get_next_key(fd, prev, &next)) {
		if (!is_listener_port(cfg, next) && !bpf_map_delete_elem(fd, &next)) {
			prev = NULL;
			continue;
		}
		port = next;
		prev = &port;
	}
	return 0;
}

int xdp_guard_apply(struct xdp_guard *g, const struct config *cfg, char *why, size_t whylen)
{
	struct guard_config gc = { 0 };
	uint32_t zero = 0;

	if (apply_ports(g, cfg, why, whylen))
		return -1;
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
	int fd = bpf_map__fd(g->skel->maps.guard_stats), ncpu = libbpf_num_possible_cpus();
	uint64_t per_cpu[ncpu > 0 ? ncpu : 1];

	fputs("# HELP wsplice_xdp_packets_total Packets the XDP guard saw, by verdict (other: not TCP to a "
	      "listener port, passed untouched).\n"
	      "# TYPE wsplice_xdp_packets_total counter\n",
	      out);
	for (uint32_t i = 0; ncpu > 0 && i < GUARD_COUNTERS; i++) {
		uint64_t sum = 0;

		if (bpf_map_lookup_elem(fd, &i, per_cpu))
			continue;
		for (int c = 0; c < ncpu; c++)
			sum += per_cpu[c];
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
	if (fd < 0 && errno == EOPNOTSUPP) {
		mode = "generic (the driver has no native XDP)";
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
	/* A second instance on this bpffs would share (and unpin) the maps. */
	g->lock_fd = bpffs_lock_dir(g->pin_dir, why, whylen);
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
	if (xdp_guard_apply(g, cfg, why, whylen))
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
	if (g->skel && g->lock_fd >= 0) {
		char *slash = strrchr(g->pin_dir, '/');

		unpin_all(g);
		rmdir(g->pin_dir);
		/* --bpffs too, when the guard made it (the copy relay pins nothing) */
		*slash = '\0';
		rmdir(g->pin_dir);
	}
	for (size_t i = 0; i < g->n_links; i++)
		close(g->link[i]);
	g->n_links = 0;
	xdp_guard_forget(g);
}
