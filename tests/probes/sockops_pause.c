/* Probe (docs/KERNEL-LOG.md, "pausing from userspace loses bytes"): is sock_ops' parse-all-headers callback called
 * for every received segment (so that it could pause a spliced socket in
 * O(1))? Root, cgroup v2 at /sys/fs/cgroup/unified, from the project root:
 *   make && clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -Ibuild -c tests/probes/sockops_pause.bpf.c -o /tmp/skops.bpf.o
 *   cc -o /tmp/skops_probe tests/probes/sockops_pause.c -lbpf && /tmp/skops_probe
 * Measured on 6.18: 1 callback for 10 data segments; the pause never happens. */
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static unsigned long long stat_of(int fd, unsigned k) { unsigned long long v = 0; bpf_map_lookup_elem(fd, &k, &v); return v; }

int main(void)
{
	const char *cg = "/sys/fs/cgroup/unified/skops-probe";
	char pid[32];
	int cgfd, procs;
	mkdir(cg, 0755);
	procs = open("/sys/fs/cgroup/unified/skops-probe/cgroup.procs", O_WRONLY);
	snprintf(pid, sizeof pid, "%d", getpid());
	if (procs < 0 || write(procs, pid, strlen(pid)) < 0) { perror("cgroup"); return 1; }
	close(procs);
	cgfd = open(cg, O_RDONLY | O_DIRECTORY);

	struct bpf_object *obj = bpf_object__open_file("/tmp/skops.bpf.o", NULL);
	if (!obj || bpf_object__load(obj)) { fprintf(stderr, "load failed\n"); return 1; }
	int ops = bpf_program__fd(bpf_object__find_program_by_name(obj, "pause_ops"));
	int verdict = bpf_program__fd(bpf_object__find_program_by_name(obj, "drop_verdict"));
	int vmap = bpf_map__fd(bpf_object__find_map_by_name(obj, "vmap"));
	int req = bpf_map__fd(bpf_object__find_map_by_name(obj, "pause_req"));
	int st = bpf_map__fd(bpf_object__find_map_by_name(obj, "stats"));
	if (bpf_prog_attach(ops, cgfd, BPF_CGROUP_SOCK_OPS, 0)) { perror("attach sockops"); return 1; }
	if (bpf_prog_attach(verdict, vmap, BPF_SK_SKB_VERDICT, 0)) { perror("attach verdict"); return 1; }

	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof sa;
	int l = socket(AF_INET, SOCK_STREAM, 0), c = socket(AF_INET, SOCK_STREAM, 0), a;
	bind(l, (void *)&sa, sizeof sa); listen(l, 1); getsockname(l, (void *)&sa, &sl);
	connect(c, (void *)&sa, sizeof sa); a = accept(l, NULL, NULL);
	unsigned long long key, val = a;
	socklen_t kl = sizeof key;
	getsockopt(a, SOL_SOCKET, SO_COOKIE, &key, &kl);
	if (bpf_map_update_elem(vmap, &key, &val, BPF_NOEXIST)) { perror("insert"); return 1; }
	char buf[4096] = { 0 };
	for (int i = 0; i < 10; i++) { write(c, buf, 100); usleep(20000); }
	printf("before pause: parse_hdr calls %llu, verdict bytes %llu\n", stat_of(st, 0), stat_of(st, 2));
	unsigned one = 1;
	bpf_map_update_elem(req, &key, &one, BPF_ANY);
	write(c, buf, 1000); usleep(50000);
	unsigned long long dummy;
	printf("after pause request + 1000 bytes: pauses %llu, verdict bytes %llu, still in vmap: %s, recv: %zd\n",
	       stat_of(st, 1), stat_of(st, 2), bpf_map_lookup_elem(vmap, &key, &dummy) ? "no" : "yes",
	       recv(a, buf, sizeof buf, MSG_DONTWAIT));
	bpf_prog_detach2(ops, cgfd, BPF_CGROUP_SOCK_OPS);
	procs = open("/sys/fs/cgroup/unified/cgroup.procs", O_WRONLY);
	if (procs >= 0 && write(procs, pid, strlen(pid)) > 0)
		rmdir(cg);
	return 0;
}
