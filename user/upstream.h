/* Connecting to the upstream server and resolving addresses. */
#ifndef WSPLICE_UPSTREAM_H
#define WSPLICE_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include "config.h"

/* Resolves ep->host:port into ep->addr; passive for a listening address. */
int endpoint_resolve(struct endpoint *ep, bool passive, char *err, size_t errlen);
/* Starts a non-blocking connect; returns the fd (connect may be in
 * progress: wait for EPOLLOUT, then upstream_connect_result) or -1. */
int upstream_connect(const struct endpoint *ep);
/* 0 once connected, else the errno of the failed connect. */
int upstream_connect_result(int fd);
void socket_tune(int fd);

#endif
