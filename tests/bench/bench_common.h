/* Shared by the benchmark's load client and echo upstream: sockets,
 * clocks, and the fixed WebSocket handshake they speak. */
#ifndef WSPLICE_BENCH_COMMON_H
#define WSPLICE_BENCH_COMMON_H

#include <stdint.h>
#include <stddef.h>

/* RFC 6455 §1.3's example key and its accept: the bench checks the 101. */
#define BENCH_WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define BENCH_WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

uint64_t now_ns(void);
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
int set_nonblock(int fd, int on);
void set_nodelay(int fd);
int tcp_listen(const char *host, int port);
int tcp_connect(const char *host, int port);
/* Sends the upgrade request and waits for a 101 with the expected accept;
 * blocking. Returns 0 or -1. */
int ws_client_handshake(int fd, const char *host);
/* Blocking full write / read; -1 on error or EOF. */
int write_all(int fd, const void *p, size_t n);
int read_all(int fd, void *p, size_t n);

#endif
