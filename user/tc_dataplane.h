/* The express lane's kernel part (bpf/tcsplice.bpf.c): loaded once by the
 * master, its program on lo's tc ingress and on every other device's
 * ingress (with the guard on its egress) through tcx links, which go with
 * the process: a crash leaves no filter behind to translate segments for a
 * daemon that is gone. Before tcx (Linux 6.6), lo's netlink filter only.
 * Its maps every worker writes for its own tunnels. */
#ifndef WSPLICE_TC_DATAPLANE_H
#define WSPLICE_TC_DATAPLANE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "wsplice_tc.h"

struct tc_dataplane;

/* Loads and attaches; NULL with one line of why. */
struct tc_dataplane *tc_dataplane_open(uint32_t max_tunnels, char *why, size_t whylen);
void tc_dataplane_close(struct tc_dataplane *tp);

/* lo's, in every network namespace (the kernel's LOOPBACK_IFINDEX). */
#define WS_LOOPBACK_IFINDEX 1u

/* Whether the program is on ifindex: lo always; other devices with tcx
 * (Linux 6.6+), as the process that attached them last published (any
 * process: the list is in the .bss they all map). */
bool tc_dataplane_covers(const struct tc_dataplane *tp, unsigned ifindex);
struct ev_loop;
/* In the process that loaded, its loop: devices made later get the program
 * too (rtnetlink's link group). 0, or -1 with a warning; nothing without
 * tcx. loop NULL (a forked worker): closes this process's copy. */
int tc_dataplane_watch(struct tc_dataplane *tp, struct ev_loop *loop);
/* The smallest MTU of the devices covered, when their MTUs differ, or 0:
 * a client's segments cross to the upstream's device unchanged, so the
 * listeners advertise an MSS every device carries. */
unsigned tc_dataplane_listen_mtu(const struct tc_dataplane *tp);

/* A tunnel's keys: the client's and the upstream's segments to the proxy,
 * then the proxy sockets' own (the guard). */
struct tc_keys {
	struct ws_tc_key key[4];
	uint64_t cookie[2]; /* the guards' sockets: the client end's, the upstream end's */
};

/* Writes the tunnel, its keys and a zeroed figures entry; -1 with errno
 * (EEXIST: the id is taken). */
int tc_express_add(struct tc_dataplane *tp, uint32_t id, const struct ws_tc_tunnel *t, const struct tc_keys *k);
int tc_express_update(struct tc_dataplane *tp, uint32_t id, const struct ws_tc_tunnel *t);
int tc_express_read(struct tc_dataplane *tp, uint32_t id, struct ws_tc_tunnel *t);
int tc_express_figures(struct tc_dataplane *tp, uint32_t id, struct ws_tunnel *out);
void tc_express_del(struct tc_dataplane *tp, uint32_t id, const struct tc_keys *k);
/* Removes every tunnel whose id has (id & mask) == worker, with its keys;
 * returns how many. */
int tc_dataplane_forget(struct tc_dataplane *tp, uint32_t worker, uint32_t mask);
/* The hand-over counters in the program's .bss, shared with every worker
 * forked after the load (add with __atomic_fetch_add). */
struct ws_tc_handovers *tc_dataplane_handovers(struct tc_dataplane *tp);
/* tc_counters[idx] summed over the CPUs; -1 with errno. */
int tc_dataplane_counter(struct tc_dataplane *tp, uint32_t idx, uint64_t *sum);
/* A tunnel's four keys, as its value's out legs give them. */
void tc_keys_of(const struct ws_tc_tunnel *t, struct tc_keys *k);

#endif
