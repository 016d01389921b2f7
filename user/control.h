/* The control socket: a unix socket (mode 0600) that `wsplice status` and
 * `wsplice conns` read a running daemon through. One request line
 * ("status" or "conns", then " json" for JSON), one answer, close. */
#ifndef WSPLICE_CONTROL_H
#define WSPLICE_CONTROL_H

#include <stddef.h>
#include "proxy.h"
#include "reply_server.h"

/* Where a daemon whose maps are pinned in bpffs listens, when the
 * configuration names no control socket: /run/wsplice/<last part of bpffs>.sock. */
void control_default_path(const char *bpffs, char *out, size_t len);
/* NULL with a one-line reason in err (another daemon uses the path, ...);
 * reply_server_close() closes it, and control_unlink() removes the path. */
struct reply_server *control_open(struct proxy *px, const char *path, char *err, size_t errlen);
void control_unlink(const char *path);
/* The client side: sends the request, copies the answer to stdout.
 * Returns the process's exit status (0, or 1 with a line on stderr). */
int control_client(const char *path, const char *request);

#endif
