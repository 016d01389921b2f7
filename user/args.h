/* Command-line parsing. The spellings are a contract (issue #2). */
#ifndef WSPLICE_ARGS_H
#define WSPLICE_ARGS_H

#include <stddef.h>
#include <stdio.h>
#include "config.h"

enum args_result { ARGS_RUN, ARGS_HELP, ARGS_VERSION, ARGS_ERROR };

/* Fills cfg; on ARGS_ERROR, err holds one line saying what is wrong. */
enum args_result args_parse(int argc, char **argv, struct config *cfg, char *err, size_t errlen);
/* "host:port" or "[v6]:port" into ep->host/ep->port, without resolving. */
int endpoint_split(const char *spec, struct endpoint *ep, char *err, size_t errlen);
/* "4194304", "64k", "4M", "1G" (binary multiples). */
int parse_size(const char *s, uint64_t *out);
void args_usage(FILE *out);

#endif
