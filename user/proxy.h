/* The process-wide state every connection reaches through: settings, the
 * event loop, the resolved tunnel mode and, in sockmap mode, the BPF data
 * plane. */
#ifndef WSPLICE_PROXY_H
#define WSPLICE_PROXY_H

#include <stdint.h>
#include "config.h"
#include "event_loop.h"

struct dataplane;
struct tunnel;

struct proxy {
	const struct config *cfg;
	struct ev_loop *loop;
	enum tunnel_mode mode; /* never MODE_AUTO once running */
	struct dataplane *dp;  /* sockmap mode only */
	struct tunnel **tunnel_by_id;
	uint32_t next_tunnel_id;
	uint64_t sessions_open, tunnels_open;
};

#endif
