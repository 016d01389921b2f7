/* Writing JSON by hand, for the few documents the daemon emits. */
#ifndef WSPLICE_JSON_OUT_H
#define WSPLICE_JSON_OUT_H

#include <stdio.h>

/* s as a JSON string: quoted, with ", \ and control characters escaped. */
void json_string(FILE *f, const char *s);

#endif
