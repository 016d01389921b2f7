/* `user = NAME`: a worker gives up root once the data plane is loaded and
 * the listeners are bound. */
#ifndef WSPLICE_PRIVILEGES_H
#define WSPLICE_PRIVILEGES_H

#include <stddef.h>

/* Becomes user (its uid, gid and groups), keeping CAP_BPF alone: the
 * workers' map updates (sockmap insertions, resumes) are bpf() calls, which
 * kernels before 6.5 refuse to any caller without it while
 * kernel.unprivileged_bpf_disabled is set (Debian's default). -1 with the
 * reason in err; the caller must not go on serving. */
int privileges_drop(const char *user, char *err, size_t errlen);

#endif
