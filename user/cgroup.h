/* The daemon's own cgroup (v2), where the sock_ops program that pauses
 * spliced sockets is attached: it then sees the daemon's sockets only. */
#ifndef WSPLICE_CGROUP_H
#define WSPLICE_CGROUP_H

#include <stddef.h>

struct cgroup_dir {
	int fd;             /* O_RDONLY on the cgroup's directory */
	char mounted[256];  /* a cgroup2 mount made for this, "" when one existed */
};

/* Opens the calling process's cgroup v2 directory, mounting cgroup2 under
 * /run when no such mount exists (as on a host with cgroup v1 only).
 * Returns -1 with a one-line reason. */
int cgroup_open_self(struct cgroup_dir *cg, char *why, size_t whylen);
void cgroup_close(struct cgroup_dir *cg);

#endif
