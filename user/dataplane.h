/* The BPF data plane's lifecycle: load the verdict program, attach it to
 * verdict_map and the pause program to the daemon's cgroup, pin the maps
 * for bpftool, insert and remove tunnels, and clean everything up on exit. */
#ifndef WSPLICE_DATAPLANE_H
#define WSPLICE_DATAPLANE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "wsplice_maps.h"

struct dataplane;

/* The kernel's news of a tunnel (enum ws_event_kind): a direction was
 * paused, its source out of verdict_map over budget (resuming is the
 * daemon's: dataplane_resume), or a direction broke (reset the tunnel). */
typedef void (*event_fn)(void *ctx, const struct ws_event *ev);

/* Loads, attaches and pins it, once per daemon, before the workers start
 * (they share it: fork keeps the maps' descriptors). Returns NULL with a
 * one-line reason in why (e.g. missing CAP_BPF). max_tunnels sizes the
 * maps; worker w's tunnel ids are w * max_tunnels + [0, max_tunnels). Only
 * the process that opened it closes it: that detaches and unpins. */
struct dataplane *dataplane_open(const char *pin_dir, uint64_t budget, uint32_t max_tunnels, uint32_t workers,
				 char *why, size_t whylen);
void dataplane_close(struct dataplane *dp);
/* An upgrade. The old process lists the descriptors the new one adopts
 * the data plane from (-1 when more than cap), and disowns it: its close
 * then leaves the programs attached and the maps pinned. The new one
 * checks the maps are what it was built for (a different layout cannot be
 * adopted: NULL with the reason) and owns them from then on. */
int dataplane_export(struct dataplane *dp, int *fds, size_t cap);
void dataplane_disown(struct dataplane *dp);
/* The new process serves: closing it removes it from now on. */
void dataplane_own(struct dataplane *dp);
struct dataplane *dataplane_adopt(const char *pin_dir, uint64_t budget, uint32_t max_tunnels, uint32_t workers,
				  const int *fds, size_t n, char *why, size_t whylen);
/* Worker w's reader of the events about its tunnels: watch the fd, call
 * dataplane_events_poll when it is readable. */
struct dataplane_events;
struct dataplane_events *dataplane_events_open(struct dataplane *dp, uint32_t worker, event_fn on_event, void *ctx,
					       char *why, size_t whylen);
void dataplane_events_close(struct dataplane_events *de);
int dataplane_events_fd(struct dataplane_events *de);
void dataplane_events_poll(struct dataplane_events *de);
/* Sockets that established on this port (a listener's local port, an
 * upstream's remote one) can be paused; others are never spliced. */
int dataplane_flag_port(struct dataplane *dp, uint16_t port, bool upstream);

/* Inserts both sockets of a tunnel with the gate/kick procedure. Returns -1
 * with nothing left in the maps when a socket could not become a redirect
 * target (errno EOPNOTSUPP: no longer ESTABLISHED). Otherwise 0, and
 * flowing[e] says whether socket e also entered verdict_map; one that did
 * not has received FIN and must be finished in userspace. */
int dataplane_tunnel_add(struct dataplane *dp, uint32_t id, const int fd[2], const uint64_t cookie[2],
			 bool flowing[2]);
/* Forgets a tunnel whose sockets the caller closes right after (a closed
 * socket leaves the SOCKHASHes by itself). */
void dataplane_tunnel_del(struct dataplane *dp, uint32_t id, const uint64_t cookie[2]);
/* Forgets every tunnel with an id in [first, first + count): what a worker
 * that died left in the maps (its sockets closed with it, and left the
 * SOCKHASHes by themselves). Returns how many. */
int dataplane_forget_range(struct dataplane *dp, uint32_t first, uint32_t count);
/* The same for every id of a worker. */
int dataplane_forget_worker(struct dataplane *dp, uint32_t worker);
int dataplane_tunnel_read(struct dataplane *dp, uint32_t id, struct ws_tunnel *out);
/* One index of the per-CPU counters map (enum ws_counter) over every CPU:
 * the sum, and the largest (for the counters that keep a maximum). */
int dataplane_counter(struct dataplane *dp, uint32_t idx, uint64_t *sum, uint64_t *max);
/* Whether the verdict marked this source broken (a failed trim): its
 * stream can no longer be delivered intact, and nobody may read it. */
bool dataplane_link_broken(struct dataplane *dp, uint64_t cookie);
/* Backpressure: restart the verdict for a paused source socket. */
int dataplane_resume(struct dataplane *dp, int fd, uint64_t cookie);
uint64_t socket_cookie(int fd);

#endif
