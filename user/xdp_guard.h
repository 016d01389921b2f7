/* The XDP guard (bpf/xdp_guard.bpf.c): loaded and attached by the daemon
 * (the master, with workers) on the interfaces `xdp =` names, with its maps
 * pinned under BPFFS/xdp for `wsplice deny` and bpftool. */
#ifndef WSPLICE_XDP_GUARD_H
#define WSPLICE_XDP_GUARD_H

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
/* In a worker: its copies of the guard's descriptors go, nothing else. */
void xdp_guard_forget(struct xdp_guard *g);

/* Where BPFFS's guard pins its maps. */
void xdp_guard_pin_dir(const char *bpffs, char *out, size_t outlen);
/* A CIDR as guard_deny's key (IPv4 as IPv4-mapped IPv6, host bits cleared),
 * and back. */
struct guard_key xdp_guard_key(const struct cidr *c);
void xdp_guard_key_format(const struct guard_key *k, char *out, size_t outlen);

#endif
