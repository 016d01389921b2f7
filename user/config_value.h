/* Parsing one setting's value, shared by the command line and the config
 * file: addresses, sizes, durations, switches and CIDR blocks. Each returns
 * 0 or -1 and, on error, says what was expected in err. */
#ifndef WSPLICE_CONFIG_VALUE_H
#define WSPLICE_CONFIG_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "config.h"

/* "host:port" or "[v6]:port" into ep->host/ep->port, without resolving. */
int endpoint_split(const char *spec, struct endpoint *ep, char *err, size_t errlen);
/* "4194304", "64k", "4M", "1G" (binary multiples). */
int parse_size(const char *s, uint64_t *out);
/* "250ms", "15s", "2m", "1h", a bare number of seconds, or "off" / "0". */
int parse_duration_ms(const char *s, uint64_t *out_ms);
/* on/off, yes/no, true/false, 1/0. */
int parse_bool(const char *s, bool *out);
/* "10.0.0.0/8", "::1", "fd00::/8"; a bare address is a /32 or /128. */
int parse_cidr(const char *s, struct cidr *out);
bool cidr_contains(const struct cidr *c, const struct sockaddr *sa);
int parse_mode(const char *s, enum tunnel_mode *m);

#endif
