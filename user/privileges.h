/* `user = NAME`: a worker gives up root once the data plane is loaded and
 * the listeners are bound. */
#ifndef WSPLICE_PRIVILEGES_H
#define WSPLICE_PRIVILEGES_H

#include <stddef.h>

/* Becomes user (its uid, gid and groups) with no capability left. The
 * workers' bpf() calls (map updates for insertions and resumes, lookups,
 * the event ring) use descriptors the master opened, and since Linux 5.19
 * kernel.unprivileged_bpf_disabled only refuses BPF_MAP_CREATE and
 * BPF_PROG_LOAD to a caller without CAP_BPF ("bpf: refine
 * kernel.unprivileged_bpf_disabled behaviour"); the kernel path needs 6.2.
 * -1 with the reason in err; the caller must not go on serving. */
int privileges_drop(const char *user, char *err, size_t errlen);

#endif
