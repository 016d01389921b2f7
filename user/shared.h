/* Memory the worker processes share: made once, before they are forked,
 * and counted into with atomic adds. The metrics' counters live here, and
 * so do the counts a cap is checked against across workers (max_tunnels,
 * a route's max_tunnels). A leaf like log.c: it calls nobody. */
#ifndef WSPLICE_SHARED_H
#define WSPLICE_SHARED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Maps the region; before the first fork. Without it (unit tests) the
 * region is the process's own. 0, or -1 with errno. */
int shared_init(void);
/* size zeroed bytes of the region, before the first fork; NULL when full. */
void *shared_alloc(size_t size);
/* This process's worker index (0 in a master or a single process), set in
 * each worker right after the fork. */
void shared_set_worker(uint32_t w);
uint32_t shared_worker(void);
/* The master, when worker w died: what it held is held no more. */
void shared_worker_gone(uint32_t w);
/* This worker's part of the counter of that name (found, or made on first
 * use, under a lock the workers share); NULL when the table is full. Add to
 * it with shared_add, read the daemon's total with shared_counter_sum. held:
 * it counts what a worker holds (slots), which goes when the worker dies;
 * else it counts events, which stay counted. */
int64_t *shared_counter(const char *name, bool held);
int64_t shared_counter_sum(const int64_t *c);

/* Calls fn for every named counter whose name starts with prefix, with
 * the rest of the name, in the order they were made. */
void shared_counters_each(const char *prefix, void (*fn)(void *ctx, const char *rest, int64_t value), void *ctx);

static inline int64_t shared_add(int64_t *c, int64_t n)
{
	return __atomic_add_fetch(c, n, __ATOMIC_RELAXED);
}

static inline int64_t shared_get(const int64_t *c)
{
	return __atomic_load_n(c, __ATOMIC_RELAXED);
}

#endif
