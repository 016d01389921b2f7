/* Per-CPU array counters, summed the way every reader of them needs. */
#ifndef WSPLICE_PERCPU_H
#define WSPLICE_PERCPU_H

#include <stdint.h>

/* Sums slot idx of the BPF_MAP_TYPE_PERCPU_ARRAY map_fd over the possible
 * CPUs into *sum, and (when max is not NULL) the largest CPU's share into
 * *max. 0, or -1 with errno set (the lookup's, or ENOMEM). */
int percpu_counter(int map_fd, uint32_t idx, uint64_t *sum, uint64_t *max);

#endif
