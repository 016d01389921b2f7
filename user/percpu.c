#include <errno.h>
#include <stdlib.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "percpu.h"

int percpu_counter(int map_fd, uint32_t idx, uint64_t *sum, uint64_t *max)
{
	int ncpus = libbpf_num_possible_cpus();
	uint64_t *vals, top = 0;

	*sum = 0;
	if (max)
		*max = 0;
	if (ncpus <= 0) {
		errno = -ncpus;
		return -1;
	}
	/* The kernel copies a value for every possible CPU, not only the
	 * online ones: a buffer sized by the online count would overflow. */
	if (!(vals = calloc((size_t)ncpus, sizeof(*vals))))
		return -1;
	if (bpf_map_lookup_elem(map_fd, &idx, vals)) {
		int e = errno;

		free(vals);
		errno = e;
		return -1;
	}
	for (int cpu = 0; cpu < ncpus; cpu++) {
		*sum += vals[cpu];
		if (vals[cpu] > top)
			top = vals[cpu];
	}
	if (max)
		*max = top;
	free(vals);
	return 0;
}
