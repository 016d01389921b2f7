/* A listening socket: accepts clients and starts a session for each. */
#ifndef WSPLICE_LISTENER_H
#define WSPLICE_LISTENER_H

#include "proxy.h"

struct listener;

struct listener *listener_open(struct proxy *px, const struct listener_cfg *lc, char *err, size_t errlen);
void listener_close(struct listener *l);

#endif
