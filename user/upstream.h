/* Connecting to the upstream server and resolving addresses. */
#ifndef WSPLICE_UPSTREAM_H
#define WSPLICE_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include "config.h"

/* Resolves ep->host:port into ep->addr; passive for a listening address. */
int endpoint_resolve(struct endpoint *ep, bool passive, char *err, size_t errlen);
/* The largest segment the client on client_fd takes, when an upstream's
 * segments are to reach it unchanged (the express lane): the MSS
 * upstream_connect then advertises. 0 over lo, where any fits. */
unsigned upstream_mss_for(int client_fd);
/* Starts a non-blocking connect, its SYN advertising mss unless 0; returns
 * the fd (connect may be in progress: wait for EPOLLOUT, then
 * upstream_connect_result) or -1. */
int upstream_connect(const struct endpoint *ep, unsigned mss);
/* 0 once connected, else the errno of the failed connect. */
int upstream_connect_result(int fd);
void socket_tune(int fd);
/* 127.0.0.0/8, ::1, or IPv4-mapped 127/8. */
bool addr_is_loopback(const struct sockaddr_storage *a);

#endif
