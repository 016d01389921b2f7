/* The XDP guard (bpf/xdp_guard.bpf.c): loaded and attached by the daemon
 * (the master, with workers) on the interfaces `xdp =` names, with its maps
 * pinned under BPFFS/xdp for `wsplice deny` and bpftool. */
#ifndef WSPLICE_XDP_GUARD_H
#define WSPLICE_XDP_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include "config.h"
#include "wsplice_guard.h"

struct xdp_guard;

/* Loads, fills from cfg and attaches: native XDP where the driver has it,
 * generic otherwise (one line says which). NULL with the reason in why. */
struct xdp_guard *xdp_guard_open(const struct config *cfg, char *why, size_t whylen);
/* A reload: the listener ports, the SYN rate, and the configuration's deny
 * entries (`wsplice deny add`'s stay). */
int xdp_guard_apply(struct xdp_guard *g, const struct config *cfg, char *why, size_t whylen);
/* Detaches from every interface and removes the pins. */
void xdp_guard_close(struct xdp_guard *g);
/* An upgrade. The old process: the guard's descriptors (its lock, then a
 * link per interface; -1 when more than cap), and once the new process
 * has them, disown: closing then leaves it attached and pinned. The new
 * process adopts them (the same interfaces, in order): its program takes
 * over each link atomically, over the same pinned maps, the deny list
 * included. NULL with the reason (the descriptors closed). */
int xdp_guard_export(struct xdp_guard *g, int *fds, size_t cap);
void xdp_guard_disown(struct xdp_guard *g);
struct xdp_guard *xdp_guard_adopt(const struct config *cfg, const int *fds, size_t n, bool made_bpffs, char *why,
				  size_t whylen);
/* Whether the guard made --bpffs (and removes it at the end): the new
 * process of an upgrade inherits that. */
bool xdp_guard_made_bpffs(const struct xdp_guard *g);
/* Once the new process serves: its program on the links, its ports and
 * deny entries in the maps. Until then (and when this fails, with the
 * reason) the old program guards, and closing leaves it all in place. */
int xdp_guard_take(struct xdp_guard *g, const struct config *cfg, char *why, size_t whylen);
/* In a worker: its copies of the guard's descriptors go, nothing else. */
void xdp_guard_forget(struct xdp_guard *g);

/* Where BPFFS's guard pins its maps. */
void xdp_guard_pin_dir(const char *bpffs, char *out, size_t outlen);
/* A CIDR as guard_deny's key (IPv4 as IPv4-mapped IPv6, host bits cleared),
 * and back. */
struct guard_key xdp_guard_key(const struct cidr *c);
void xdp_guard_key_format(const struct guard_key *k, char *out, size_t outlen);

#endif
