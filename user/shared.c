/* One anonymous MAP_SHARED region, mapped before the workers are forked
 * so all of them (and the master that renders metrics) see the same bytes:
 * a bump allocator for fixed blocks, and a table of named counters. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include "config.h"
#include "shared.h"

#define REGION_BYTES (2u << 20)
#define NAMED_MAX 512
#define NAME_MAX_LEN 280

/* A count of what a worker holds (open tunnels, taken slots): a column
 * per worker, so a worker that dies can be subtracted (shared_worker_gone). */
struct named {
	char name[NAME_MAX_LEN];
	bool held;            /* what a worker holds (slots): cleared when it dies */
	int64_t value[WORKERS_MAX];
};

struct region {
	pthread_mutex_t lock; /* PTHREAD_PROCESS_SHARED: guards the names */
	size_t used;          /* of heap[] */
	uint32_t n_named;
	struct named named[NAMED_MAX];
	_Alignas(64) unsigned char heap[];
};

static struct region *region;
static uint32_t worker; /* this process's column */

/* Bounded: the workers can write the region too. */
static uint32_t named_count(void)
{
	uint32_t n = __atomic_load_n(&region->n_named, __ATOMIC_ACQUIRE);

	return n < NAMED_MAX ? n : NAMED_MAX;
}

void shared_set_worker(uint32_t w)
{
	worker = w < WORKERS_MAX ? w : 0;
}

uint32_t shared_worker(void)
{
	return worker;
}

void shared_worker_gone(uint32_t w)
{
	uint32_t n;

	if (!region || w >= WORKERS_MAX)
		return;
	n = named_count();
	for (uint32_t i = 0; i < n; i++)
		if (region->named[i].held) /* a counter keeps what the worker counted */
			__atomic_store_n(&region->named[i].value[w], 0, __ATOMIC_RELAXED);
}

int64_t shared_counter_sum(const int64_t *c)
{
	const struct named *n;
	int64_t sum = 0;

	if (!region || (const char *)c < (const char *)region->named ||
	    (const char *)c >= (const char *)(region->named + NAMED_MAX))
		return shared_get(c);
	n = &region->named[((const char *)c - (const char *)region->named) / sizeof(struct named)];
	for (int w = 0; w < WORKERS_MAX; w++)
		sum += shared_get(&n->value[w]);
	return sum;
}

int shared_init(void)
{
	pthread_mutexattr_t attr;
	void *p;

	if (region)
		return 0;
	p = mmap(NULL, REGION_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	region = p;
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
	/* A worker that dies holding the lock must not stop the others. */
	pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&region->lock, &attr);
	pthread_mutexattr_destroy(&attr);
	return 0;
}

void *shared_alloc(size_t size)
{
	size_t at;

	if (!region && shared_init())
		return NULL;
	at = (region->used + 63) & ~(size_t)63;
	if (at + size > REGION_BYTES - sizeof(*region)) {
		errno = ENOMEM;
		return NULL;
	}
	region->used = at + size;
	return region->heap + at;
}

int64_t *shared_counter(const char *name, bool held)
{
	int64_t *found = NULL;

	if (!region && shared_init())
		return NULL;
	if (pthread_mutex_lock(&region->lock) == EOWNERDEAD)
		pthread_mutex_consistent(&region->lock);
	for (uint32_t i = 0; i < named_count() && !found; i++)
		if (!strncmp(region->named[i].name, name, NAME_MAX_LEN - 1))
			found = &region->named[i].value[worker];
	if (!found && region->n_named < NAMED_MAX) {
		struct named *n = &region->named[region->n_named];

		snprintf(n->name, sizeof(n->name), "%s", name);
		n->held = held;
		memset(n->value, 0, sizeof(n->value));
		found = &n->value[worker];
		/* Published last: a reader sees the name before the count. */
		__atomic_store_n(&region->n_named, region->n_named + 1, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&region->lock);
	return found;
}

void shared_counters_each(const char *prefix, void (*fn)(void *ctx, const char *rest, int64_t value), void *ctx)
{
	size_t plen = strlen(prefix);
	uint32_t n;

	if (!region)
		return;
	n = named_count();
	for (uint32_t i = 0; i < n; i++)
		if (!strncmp(region->named[i].name, prefix, plen))
			fn(ctx, region->named[i].name + plen, shared_counter_sum(&region->named[i].value[0]));
}
