/* The -c file: INI sections [global], [listener NAME], [pool NAME] and
 * [route NAME], parsed with libinih. docs/CONFIG.md lists every directive. */
#ifndef WSPLICE_CONFIG_FILE_H
#define WSPLICE_CONFIG_FILE_H

#include <stddef.h>
#include <stdio.h>
#include "config.h"

/* Returns a finished configuration (addresses resolved, routes linked) or
 * NULL; then errors holds one "FILE:LINE: what is wrong" line per problem. */
struct config *config_load_file(const char *path, char *errors, size_t errlen);
/* The same from text already read (f), named path in the messages. */
struct config *config_load_stream(const char *path, FILE *f, char *errors, size_t errlen);

#endif
