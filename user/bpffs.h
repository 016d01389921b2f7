/* Pin directories on a bpf filesystem, one instance each. */
#ifndef WSPLICE_BPFFS_H
#define WSPLICE_BPFFS_H

#include <stdbool.h>
#include <stddef.h>

/* Creates dir (and, when inner, its parent: the instance's --bpffs) on a
 * bpf filesystem, mounting the standard one on /sys/fs/bpf if nothing is
 * there yet, and locks it for this instance. The lock's descriptor, or -1
 * with the reason in why. A dir another instance holds is waited for a
 * little: the workers of a daemon that was just killed still hold it. */
int bpffs_lock_dir(const char *dir, bool inner, char *why, size_t whylen);

#endif
