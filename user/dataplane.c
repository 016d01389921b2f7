#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <sys/utsname.h>
#include "bpffs.h"
#include "cgroup.h"
#include "dataplane.h"
#include "log.h"
#include "percpu.h"
#include "splice.skel.h"

struct dataplane {
	struct splice_bpf *skel;  /* NULL when adopted from the process before an upgrade */
	int *ring_fd;             /* each worker's event ring, in worker_events */
	uint32_t workers, ids_per_worker;
	struct bpf_link *sockops; /* on the daemon's cgroup */
	struct cgroup_dir cg;
	int target_fd, verdict_fd, tunnels_fd, links_fd, ports_fd, prog_fd, counters_fd, events_fd;
	int sockops_fd;           /* adopted: the sock_ops link (else in sockops) */
	int lock_fd;
	bool disowned;            /* another process's (an upgrade's): closing leaves it all in place */
	bool adopted;             /* from descriptors, without the object */
	int rcvbuf; /* SO_RCVBUF for spliced sockets */
	bool attached, owns_pin_dir;
	char pin_dir[256];
};

/* One worker's reader of its event ring. */
struct dataplane_events {
	struct ring_buffer *rb;
	event_fn on_event;
	void *ctx;
};

/* bpftool users find the maps marked LIBBPF_PIN_BY_NAME in bpf/splice.bpf.c
 * under the pin directory (libbpf pins them at load), and this program. */
#define VERDICT_PIN "verdict"

static int libbpf_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	char line[512];
	size_t n;

	if (level == LIBBPF_DEBUG && log_threshold < LOG_DEBUG)
		return 0;
	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	if (n && line[n - 1] == '\n')
		line[n - 1] = '\0';
	log_debug("libbpf: %s", line);
	return 0;
}

uint64_t socket_cookie(int fd)
{
	uint64_t cookie = 0;
	socklen_t len = sizeof(cookie);

	getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len);
	return cookie;
}

/* Pins left behind by an instance that was killed are ours now; unpinned,
 * libbpf pins fresh maps instead of reusing stale ones. */
static void unpin_all(struct dataplane *dp)
{
	/* An adopted data plane has no object to list them: the maps marked
	 * LIBBPF_PIN_BY_NAME in bpf/splice.bpf.c. */
	static const char *const pinned[] = { "target_map", "verdict_map", "tunnels", "sock_links",
					      "pause_requests", "worker_events", "counters" };
	char path[512];
	struct bpf_map *m;

	if (dp->skel) {
		bpf_object__for_each_map(m, dp->skel->obj) {
			if (bpf_map__pin_path(m))
				unlink(bpf_map__pin_path(m));
		}
	} else {
		for (size_t i = 0; i < sizeof(pinned) / sizeof(pinned[0]); i++) {
			snprintf(path, sizeof(path), "%s/%s", dp->pin_dir, pinned[i]);
			unlink(path);
		}
	}
	snprintf(path, sizeof(path), "%s/%s", dp->pin_dir, VERDICT_PIN);
	unlink(path);
}

static int on_ring_event(void *ctx, void *data, size_t size)
{
	struct dataplane_events *de = ctx;

	if (size >= sizeof(struct ws_event))
		de->on_event(de->ctx, data);
	return 0;
}

/* A ring per worker, each as big as the map's template in splice.bpf.c. */
static int make_rings(struct dataplane *dp, char *why, size_t whylen)
{
	int outer = dp->events_fd;

	dp->ring_fd = calloc(dp->workers, sizeof(*dp->ring_fd));
	if (!dp->ring_fd) {
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	for (uint32_t w = 0; w < dp->workers; w++) {
		char name[16];

		snprintf(name, sizeof(name), "wsplice_ev%u", w % 100000);
		dp->ring_fd[w] = bpf_map_create(BPF_MAP_TYPE_RINGBUF, name, 0, 0, WS_EVENT_RING_BYTES, NULL);
		if (dp->ring_fd[w] < 0 || bpf_map_update_elem(outer, &w, &dp->ring_fd[w], BPF_ANY)) {
			snprintf(why, whylen, "cannot make the event ring of worker %u: %s", w, strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* Kernels before 6.9 call psock->saved_data_ready() unchecked after a
 * verdict loop (fixed with sk_psock_data_ready(), syzbot's "NULL pointer
 * dereference in sk_psock_verdict_data_ready"): a pause must not end a
 * loop there, only happen outside one. */
static bool kernel_at_least(int major, int minor)
{
	struct utsname u;
	int ma = 0, mi = 0;

	if (uname(&u) || sscanf(u.release, "%d.%d", &ma, &mi) != 2)
		return false;
	return ma > major || (ma == major && mi >= minor);
}

/* The verdict calls kfuncs of Linux 6.2+; libbpf reports their absence
 * only as EINVAL, so look them up in the kernel's BTF first. */
static bool kernel_has_kfuncs(void)
{
	static const char *const kfuncs[] = { "bpf_cast_to_kern_ctx", "bpf_rdonly_cast" };
	struct btf *vmlinux = btf__load_vmlinux_btf();
	bool ok = vmlinux != NULL;

	for (size_t i = 0; ok && i < sizeof(kfuncs) / sizeof(kfuncs[0]); i++)
		ok = btf__find_by_name_kind(vmlinux, kfuncs[i], BTF_KIND_FUNC) > 0;
	btf__free(vmlinux);
	return ok;
}

/* SO_RCVBUF of spliced sockets: half the budget (the kernel doubles it), so
 * a resume releases at most one budget's worth at once (docs/KERNEL.md, the
 * bound), within [512 KiB, 4 MiB]. The floor: the advertised window is half
 * the buffer, and a receiver only announces it in whole segments (SWS
 * avoidance); loopback's MSS is 64 KiB, so a 256 KiB buffer let a
 * sender see less than one segment of window and wait for its probe timer.
 * That made bulk fall to 89 MB/s at --tunnel-buffer 512k and 7 MB/s at
 * 256k, against 600 at 1M and more (KERNEL-LOG.md, "A small budget starves
 * the window"); 512 KiB set is 1 MiB, sixteen loopback segments. */
static int spliced_rcvbuf(uint64_t budget)
{
	uint64_t half = budget / 2;

	return half > (4u << 20) ? 4 << 20 : half < (512u << 10) ? 512 << 10 : (int)half;
}

struct dataplane *dataplane_open(const char *pin_dir, uint64_t budget, uint32_t max_tunnels, uint32_t workers,
				 char *why, size_t whylen)
{
	struct dataplane *dp = calloc(1, sizeof(*dp));
	char path[512];
	int err;

	if (!dp) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	dp->lock_fd = -1;
	dp->cg.fd = -1;
	dp->rcvbuf = spliced_rcvbuf(budget);
	dp->workers = workers;
	snprintf(dp->pin_dir, sizeof(dp->pin_dir), "%s", pin_dir);
	libbpf_set_print(libbpf_log);
	/* One instance per pin directory: a second one with the same --bpffs
	 * would unpin the first one's maps. */
	dp->lock_fd = bpffs_lock_dir(pin_dir, false, why, whylen);
	if (dp->lock_fd < 0)
		goto fail;
	dp->owns_pin_dir = true;
	dp->skel = splice_bpf__open_opts(&(struct bpf_object_open_opts){ .sz = sizeof(struct bpf_object_open_opts),
									  .pin_root_path = dp->pin_dir });
	if (!dp->skel) {
		snprintf(why, whylen, "cannot open the BPF object: %s", strerror(errno));
		goto fail;
	}
	unpin_all(dp);
	dp->skel->rodata->tunnel_budget = budget;
	dp->skel->rodata->pause_at_loop_end = kernel_at_least(6, 9);
	dp->skel->rodata->spliced_rcvbuf = dp->rcvbuf;
	dp->skel->rodata->ids_per_worker = dp->ids_per_worker = max_tunnels;
	if (bpf_map__set_max_entries(dp->skel->maps.worker_events, workers) ||
	    bpf_map__set_max_entries(dp->skel->maps.tunnels, max_tunnels) ||
	    bpf_map__set_max_entries(dp->skel->maps.sock_links, 2 * max_tunnels) ||
	    bpf_map__set_max_entries(dp->skel->maps.target_map, 2 * max_tunnels) ||
	    bpf_map__set_max_entries(dp->skel->maps.verdict_map, 2 * max_tunnels)) {
		snprintf(why, whylen, "cannot size the maps for max_tunnels %u: %s", max_tunnels, strerror(errno));
		goto fail;
	}
	/* libbpf 1.1 has no SEC("sk_skb/verdict"): set the attach type by hand. */
	bpf_program__set_expected_attach_type(dp->skel->progs.wsplice_verdict, BPF_SK_SKB_VERDICT);
	if (!kernel_has_kfuncs()) {
		snprintf(why, whylen, "this kernel lacks the kfuncs bpf_cast_to_kern_ctx/bpf_rdonly_cast (Linux 6.2+) "
				      "that the verdict needs to send a partly delivered skb once (docs/KERNEL.md, the trim)");
		goto fail;
	}
	err = splice_bpf__load(dp->skel);
	if (err) {
		snprintf(why, whylen, "cannot load the BPF programs: %s%s", strerror(-err),
			 -err == EPERM ? " (needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON)" : "");
		goto fail;
	}
	dp->target_fd = bpf_map__fd(dp->skel->maps.target_map);
	dp->verdict_fd = bpf_map__fd(dp->skel->maps.verdict_map);
	dp->tunnels_fd = bpf_map__fd(dp->skel->maps.tunnels);
	dp->links_fd = bpf_map__fd(dp->skel->maps.sock_links);
	dp->ports_fd = bpf_map__fd(dp->skel->maps.flag_ports);
	dp->prog_fd = bpf_program__fd(dp->skel->progs.wsplice_verdict);
	dp->counters_fd = bpf_map__fd(dp->skel->maps.counters);
	dp->events_fd = bpf_map__fd(dp->skel->maps.worker_events);
	if (bpf_prog_attach(dp->prog_fd, dp->verdict_fd, BPF_SK_SKB_VERDICT, 0)) {
		snprintf(why, whylen, "cannot attach the sk_skb verdict: %s", strerror(errno));
		goto fail;
	}
	dp->attached = true;
	snprintf(path, sizeof(path), "%s/%s", dp->pin_dir, VERDICT_PIN);
	if (bpf_program__pin(dp->skel->progs.wsplice_verdict, path)) {
		snprintf(why, whylen, "cannot pin the verdict under %s: %s", pin_dir, strerror(errno));
		goto fail;
	}
	if (cgroup_open_self(&dp->cg, why, whylen))
		goto fail;
	dp->sockops = bpf_program__attach_cgroup(dp->skel->progs.wsplice_sockops, dp->cg.fd);
	if (!dp->sockops) {
		snprintf(why, whylen, "cannot attach the sock_ops pause program to the daemon's cgroup: %s",
			 strerror(errno));
		goto fail;
	}
	if (make_rings(dp, why, whylen))
		goto fail;
	return dp;
fail:
	dataplane_close(dp);
	return NULL;
}

/* The descriptors of an adopted data plane, in dataplane_export's order. */
enum { XFD_LOCK, XFD_TARGET, XFD_VERDICT, XFD_TUNNELS, XFD_LINKS, XFD_PORTS, XFD_COUNTERS, XFD_EVENTS, XFD_PROG,
       XFD_SOCKOPS, XFD_CGROUP, XFD_RINGS };

int dataplane_export(struct dataplane *dp, int *fds, size_t cap)
{
	int fixed[XFD_RINGS] = { dp->lock_fd, dp->target_fd, dp->verdict_fd, dp->tunnels_fd, dp->links_fd,
				 dp->ports_fd, dp->counters_fd, dp->events_fd, dp->prog_fd,
				 dp->sockops ? bpf_link__fd(dp->sockops) : dp->sockops_fd, dp->cg.fd };

	if (cap < XFD_RINGS + dp->workers) {
		errno = ENOBUFS;
		return -1;
	}
	memcpy(fds, fixed, sizeof(fixed));
	for (uint32_t w = 0; w < dp->workers; w++)
		fds[XFD_RINGS + w] = dp->ring_fd[w];
	return XFD_RINGS + (int)dp->workers;
}

/* Is fd the map this binary expects? A new binary whose maps differ from
 * the running ones cannot adopt them. */
static int check_map(int fd, const char *name, uint32_t type, uint32_t key, uint32_t value, uint32_t entries,
		     char *why, size_t whylen)
{
	struct bpf_map_info info = { 0 };
	uint32_t len = sizeof(info);

	if (bpf_obj_get_info_by_fd(fd, &info, &len)) {
		snprintf(why, whylen, "the running data plane's %s: %s", name, strerror(errno));
		return -1;
	}
	if (info.type != type || info.key_size != key || info.value_size != value ||
	    (entries && info.max_entries != entries)) {
		snprintf(why, whylen,
			 "the running data plane's %s differs from this binary's (type %u, key %u, value %u, %u entries; "
			 "this binary's: %u, %u, %u, %u): a restart applies the new layout",
			 name, info.type, info.key_size, info.value_size, info.max_entries, type, key, value, entries);
		return -1;
	}
	return 0;
}

struct dataplane *dataplane_adopt(const char *pin_dir, uint64_t budget, uint32_t max_tunnels, uint32_t workers,
				  const int *fds, size_t n, char *why, size_t whylen)
{
	struct dataplane *dp;

	if (n != XFD_RINGS + (size_t)workers) {
		snprintf(why, whylen, "the running data plane came with %zu descriptors, not %u", n, XFD_RINGS + workers);
		return NULL;
	}
	if (check_map(fds[XFD_TUNNELS], "tunnels map", BPF_MAP_TYPE_HASH, sizeof(uint32_t), sizeof(struct ws_tunnel),
		      max_tunnels, why, whylen) ||
	    check_map(fds[XFD_LINKS], "sock_links map", BPF_MAP_TYPE_HASH, sizeof(uint64_t),
		      sizeof(struct ws_sock_link), 2 * max_tunnels, why, whylen) ||
	    check_map(fds[XFD_VERDICT], "verdict_map", BPF_MAP_TYPE_SOCKHASH, sizeof(uint64_t), sizeof(uint64_t),
		      2 * max_tunnels, why, whylen) ||
	    check_map(fds[XFD_TARGET], "target_map", BPF_MAP_TYPE_SOCKHASH, sizeof(uint64_t), sizeof(uint64_t),
		      2 * max_tunnels, why, whylen) ||
	    check_map(fds[XFD_EVENTS], "worker_events map", BPF_MAP_TYPE_ARRAY_OF_MAPS, sizeof(uint32_t),
		      sizeof(uint32_t), workers, why, whylen))
		return NULL;
	dp = calloc(1, sizeof(*dp));
	if (!dp || !(dp->ring_fd = calloc(workers, sizeof(*dp->ring_fd)))) {
		free(dp);
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	dp->lock_fd = fds[XFD_LOCK];
	dp->target_fd = fds[XFD_TARGET];
	dp->verdict_fd = fds[XFD_VERDICT];
	dp->tunnels_fd = fds[XFD_TUNNELS];
	dp->links_fd = fds[XFD_LINKS];
	dp->ports_fd = fds[XFD_PORTS];
	dp->counters_fd = fds[XFD_COUNTERS];
	dp->events_fd = fds[XFD_EVENTS];
	dp->prog_fd = fds[XFD_PROG];
	dp->sockops_fd = fds[XFD_SOCKOPS];
	dp->cg.fd = fds[XFD_CGROUP];
	for (uint32_t w = 0; w < workers; w++)
		dp->ring_fd[w] = fds[XFD_RINGS + w];
	dp->workers = workers;
	dp->ids_per_worker = max_tunnels;
	dp->rcvbuf = spliced_rcvbuf(budget);
	dp->attached = dp->owns_pin_dir = dp->adopted = true;
	/* The old process's until this one serves (dataplane_own): a new
	 * process that fails before leaves it as it found it. */
	dp->disowned = true;
	snprintf(dp->pin_dir, sizeof(dp->pin_dir), "%s", pin_dir);
	libbpf_set_print(libbpf_log);
	return dp;
}

void dataplane_own(struct dataplane *dp)
{
	if (dp)
		dp->disowned = false;
}

void dataplane_disown(struct dataplane *dp)
{
	if (!dp)
		return;
	dp->disowned = true;
	/* Closing the link's descriptor then leaves it attached for the new
	 * process, which holds another one. */
	if (dp->sockops)
		bpf_link__disconnect(dp->sockops);
	dp->cg.mounted[0] = '\0';
}

void dataplane_close(struct dataplane *dp)
{
	if (!dp)
		return;
	for (uint32_t w = 0; dp->ring_fd && w < dp->workers; w++)
		if (dp->ring_fd[w] > 0)
			close(dp->ring_fd[w]);
	free(dp->ring_fd);
	bpf_link__destroy(dp->sockops);
	cgroup_close(&dp->cg);
	if (dp->attached && !dp->disowned)
		bpf_prog_detach2(dp->prog_fd, dp->verdict_fd, BPF_SK_SKB_VERDICT);
	if (dp->adopted) { /* the descriptors are ours alone */
		int own[] = { dp->target_fd, dp->verdict_fd, dp->tunnels_fd, dp->links_fd, dp->ports_fd,
			      dp->counters_fd, dp->events_fd, dp->prog_fd, dp->sockops_fd };

		for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++)
			if (own[i] >= 0)
				close(own[i]);
	}
	if (dp->owns_pin_dir && !dp->disowned) {
		unpin_all(dp);
		rmdir(dp->pin_dir);
	}
	if (dp->lock_fd >= 0)
		close(dp->lock_fd);
	splice_bpf__destroy(dp->skel);
	free(dp);
}

struct dataplane_events *dataplane_events_open(struct dataplane *dp, uint32_t worker, event_fn on_event, void *ctx,
					       char *why, size_t whylen)
{
	struct dataplane_events *de = calloc(1, sizeof(*de));

	if (!de || worker >= dp->workers) {
		snprintf(why, whylen, de ? "no event ring for worker %u" : "out of memory", worker);
		free(de);
		return NULL;
	}
	de->on_event = on_event;
	de->ctx = ctx;
	de->rb = ring_buffer__new(dp->ring_fd[worker], on_ring_event, de, NULL);
	if (!de->rb) {
		snprintf(why, whylen, "cannot read the event ring of worker %u: %s", worker, strerror(errno));
		free(de);
		return NULL;
	}
	return de;
}

void dataplane_events_close(struct dataplane_events *de)
{
	if (!de)
		return;
	ring_buffer__free(de->rb);
	free(de);
}

int dataplane_events_fd(struct dataplane_events *de)
{
	return ring_buffer__epoll_fd(de->rb);
}

void dataplane_events_poll(struct dataplane_events *de)
{
	ring_buffer__consume(de->rb);
}

int dataplane_flag_port(struct dataplane *dp, uint16_t port, bool upstream)
{
	uint32_t key = port | (upstream ? WS_PORT_UPSTREAM : WS_PORT_LISTENER);
	uint8_t one = 1;

	return bpf_map_update_elem(dp->ports_fd, &key, &one, BPF_ANY);
}

static void set_lowat(int fd, int v)
{
	setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof(v));
}

int dataplane_tunnel_add(struct dataplane *dp, uint32_t id, const int fd[2], const uint64_t cookie[2],
			 bool flowing[2])
{
	struct ws_tunnel tv = { .client_cookie = cookie[0], .upstream_cookie = cookie[1] };
	struct ws_sock_link links[2] = {
		{ .peer_cookie = cookie[1], .tunnel_id = id, .dir = WS_DIR_C2U },
		{ .peer_cookie = cookie[0], .tunnel_id = id, .dir = WS_DIR_U2C },
	};
	uint32_t n = 2;
	int e, targeted = 0, err;

	/* Targets first: target_map has no program, so nothing is redirected
	 * yet and a failure can still be undone without loss. It is also
	 * where a FIN that arrived since the drain shows (EOPNOTSUPP, most
	 * often a client that closes right after the 101), after one system
	 * call: on that path every call counts against handshakes/s. The
	 * buffer sizes the spliced sockets need were set at establishment by
	 * the sock_ops program (bpf/splice.bpf.c, "buffers"). */
	for (e = 0; e < 2; e++, targeted++) {
		uint64_t v = fd[e];

		if (bpf_map_update_elem(dp->target_fd, &cookie[e], &v, BPF_NOEXIST))
			goto undo;
	}
	if (bpf_map_update_elem(dp->tunnels_fd, &id, &tv, BPF_ANY))
		goto undo;
	if (bpf_map_update_batch(dp->links_fd, cookie, links, &n, NULL) || n != 2) {
		bpf_map_delete_elem(dp->tunnels_fd, &id);
		goto undo;
	}
	/* Gate: keep the verdict from running while the pair is half in
	 * verdict_map; the kick below replays what queued meanwhile. */
	for (e = 0; e < 2; e++)
		set_lowat(fd[e], INT_MAX);
	/* From here on a verdict may already have run (the gate does not hold
	 * back a FIN), so nothing is undone: a socket that cannot enter
	 * verdict_map (it received FIN meanwhile) is finished by the caller in
	 * userspace once the kernel delivered what it took. */
	for (e = 0; e < 2; e++) {
		uint64_t v = fd[e];

		flowing[e] = !bpf_map_update_elem(dp->verdict_fd, &cookie[e], &v, BPF_NOEXIST);
	}
	for (e = 0; e < 2; e++)
		set_lowat(fd[e], 1);
	return 0;
undo:
	/* Take back only what went in. */
	err = errno;
	for (e = 0; e < targeted; e++)
		bpf_map_delete_elem(dp->target_fd, &cookie[e]);
	for (e = 0; n != 2 && e < 2; e++)
		bpf_map_delete_elem(dp->links_fd, &cookie[e]);
	errno = err;
	return -1;
}

void dataplane_tunnel_del(struct dataplane *dp, uint32_t id, const uint64_t cookie[2])
{
	/* The sockets leave target_map and verdict_map when they are closed,
	 * right after this (sock_map_close); a pause request left behind is
	 * forgotten by its LRU map. Only the plain hashes need deleting. */
	uint32_t n = 2;

	bpf_map_delete_batch(dp->links_fd, cookie, &n, NULL);
	bpf_map_delete_elem(dp->tunnels_fd, &id);
}

int dataplane_forget_worker(struct dataplane *dp, uint32_t worker)
{
	return dataplane_forget_range(dp, worker * dp->ids_per_worker, dp->ids_per_worker);
}

int dataplane_forget_range(struct dataplane *dp, uint32_t first, uint32_t count)
{
	uint32_t key, *prev = NULL, *ids = NULL;
	size_t n = 0, cap = 0;

	/* The ids first, then the deletes: get_next_key restarts from the
	 * first key when the one it was given has gone. */
	while (!bpf_map_get_next_key(dp->tunnels_fd, prev, &key)) {
		if (key - first < count) {
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
		struct ws_tunnel tv;

		if (!bpf_map_lookup_elem(dp->tunnels_fd, &ids[i], &tv))
			dataplane_tunnel_del(dp, ids[i], (uint64_t[2]){ tv.client_cookie, tv.upstream_cookie });
	}
	free(ids);
	return (int)n;
}

int dataplane_tunnel_read(struct dataplane *dp, uint32_t id, struct ws_tunnel *out)
{
	return bpf_map_lookup_elem(dp->tunnels_fd, &id, out);
}

int dataplane_counter(struct dataplane *dp, uint32_t idx, uint64_t *sum, uint64_t *max)
{
	return percpu_counter(dp->counters_fd, idx, sum, max);
}

bool dataplane_link_broken(struct dataplane *dp, uint64_t cookie)
{
	struct ws_sock_link link;

	return !bpf_map_lookup_elem(dp->links_fd, &cookie, &link) && link.broken;
}

int dataplane_resume(struct dataplane *dp, int fd, uint64_t cookie)
{
	uint64_t v = fd;

	if (bpf_map_update_elem(dp->verdict_fd, &cookie, &v, BPF_NOEXIST))
		return -1;
	set_lowat(fd, 1); /* kick: the verdict takes what queued while paused, in order */
	return 0;
}
