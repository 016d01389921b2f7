/* The access log: one line per request and one per tunnel at its close, as
 * logfmt or JSON lines. Lines are made on the event loop and written by a
 * thread of its own, so the loop never waits on the disk; a full queue
 * drops lines and counts them (wsplice_access_log_dropped_total). SIGUSR1
 * reopens the file, for logrotate. A leaf like metrics.c: when no log is
 * open, the calls do nothing. */
#ifndef WSPLICE_ACCESS_LOG_H
#define WSPLICE_ACCESS_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum access_format { ACCESS_LOGFMT, ACCESS_JSON };

struct access_request {
	const char *client, *host, *method, *path, *upstream;
	int status;
	double duration_ms;
	uint64_t bytes_in, bytes_out; /* from the client, and to it */
	uint64_t tunnel;              /* a 101: the id of the tunnel it opened, else 0 */
};

struct access_tunnel {
	uint64_t id;
	const char *client, *upstream, *engine, *cause;
	double duration_ms;
	uint64_t bytes_c2u, bytes_u2c; /* payload since the 101 */
};

/* path: a file (appended to, made 0640 when missing) or "stderr". Returns 0,
 * or -1 with a one-line reason in err. */
int access_log_open(const char *path, enum access_format fmt, char *err, size_t errlen);
bool access_log_enabled(void);
void access_log_request(const struct access_request *r);
void access_log_tunnel(const struct access_tunnel *t);
/* Reopens the file at the next write (SIGUSR1). */
void access_log_reopen(void);
/* Writes what is queued, then stops the writer. */
void access_log_close(void);

#endif
