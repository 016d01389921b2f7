/* The tunnel engines. Adding one: its file defines a struct engine_ops,
 * and it gets an entry here (and a name in enum tunnel_mode). */
#include "engine.h"

extern const struct engine_ops engine_sockmap, engine_splice, engine_copy, engine_tcsplice;

const struct engine_ops *const engine_table[MODE_COUNT] = {
	[MODE_SOCKMAP] = &engine_sockmap,
	[MODE_SPLICE] = &engine_splice,
	[MODE_COPY] = &engine_copy,
	[MODE_TCSPLICE] = &engine_tcsplice,
};

const struct engine_ops *const engine_fallback = &engine_copy;
