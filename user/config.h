/* The daemon's settings, filled by args.c from the command line. */
#ifndef WSPLICE_CONFIG_H
#define WSPLICE_CONFIG_H

#include <stdint.h>
#include <sys/socket.h>

enum tunnel_mode { MODE_AUTO, MODE_SOCKMAP, MODE_SPLICE, MODE_COPY };

struct endpoint {
	char host[256];
	char port[8];
	struct sockaddr_storage addr; /* resolved */
	socklen_t addrlen;
};

struct config {
	struct endpoint listen;
	struct endpoint upstream;
	enum tunnel_mode mode;
	char bpffs[256];          /* pin directory */
	uint64_t tunnel_buffer;   /* per-direction in-flight budget, bytes */
	int verbose;
};

const char *mode_name(enum tunnel_mode m);

#endif
