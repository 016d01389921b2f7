#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include "dataplane_pause.h"

struct pending {
	uint64_t cookie, tag, gen, since_us;
};

struct pauser {
	int link_fd, map_fd, efd;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	/* Under lock. A request numbered g is carried out once an iteration
	 * that started after it has finished: done >= g. */
	uint64_t requested, done;
	bool stop;
	/* Event-loop thread only. */
	struct pending *pending;
	size_t n_pending, cap_pending;
};

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void run_iterator(int link_fd)
{
	char buf[64];
	int it = bpf_iter_create(link_fd);

	if (it < 0)
		return;
	while (read(it, buf, sizeof(buf)) > 0)
		;
	close(it);
}

static void *pauser_main(void *arg)
{
	struct pauser *p = arg;
	uint64_t one = 1, g;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (!p->stop && p->done >= p->requested)
			pthread_cond_wait(&p->wake, &p->lock);
		if (p->stop)
			break;
		g = p->requested;
		pthread_mutex_unlock(&p->lock);
		run_iterator(p->link_fd);
		pthread_mutex_lock(&p->lock);
		p->done = g;
		if (write(p->efd, &one, sizeof(one)) < 0)
			break;
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

struct pauser *pauser_start(int iter_link_fd, int requests_map_fd)
{
	struct pauser *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->link_fd = iter_link_fd;
	p->map_fd = requests_map_fd;
	p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->wake, NULL);
	if (p->efd < 0 || pthread_create(&p->thread, NULL, pauser_main, p)) {
		if (p->efd >= 0)
			close(p->efd);
		free(p);
		return NULL;
	}
	return p;
}

void pauser_stop(struct pauser *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_signal(&p->wake);
	pthread_mutex_unlock(&p->lock);
	pthread_join(p->thread, NULL);
	close(p->efd);
	free(p->pending);
	free(p);
}

int pauser_fd(const struct pauser *p)
{
	return p->efd;
}

int pauser_request(struct pauser *p, uint64_t cookie, uint64_t tag)
{
	uint32_t one = 1;
	uint64_t g;

	if (p->n_pending == p->cap_pending) {
		size_t cap = p->cap_pending ? 2 * p->cap_pending : 16;
		struct pending *n = realloc(p->pending, cap * sizeof(*n));

		if (!n)
			return -1;
		p->pending = n;
		p->cap_pending = cap;
	}
	if (bpf_map_update_elem(p->map_fd, &cookie, &one, BPF_ANY))
		return -1;
	pthread_mutex_lock(&p->lock);
	g = ++p->requested;
	pthread_cond_signal(&p->wake);
	pthread_mutex_unlock(&p->lock);
	p->pending[p->n_pending++] = (struct pending){ cookie, tag, g, now_us() };
	return 0;
}

void pauser_collect(struct pauser *p, paused_fn done_fn, void *ctx)
{
	uint64_t n, done;
	uint32_t v;
	size_t i = 0;

	if (read(p->efd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		return;
	pthread_mutex_lock(&p->lock);
	done = p->done;
	pthread_mutex_unlock(&p->lock);
	while (i < p->n_pending) {
		struct pending r = p->pending[i];
		bool ok;

		if (r.gen > done) {
			i++;
			continue;
		}
		p->pending[i] = p->pending[--p->n_pending];
		/* The iterator deletes the request once carried out; one still
		 * there found no such socket. */
		ok = bpf_map_lookup_elem(p->map_fd, &r.cookie, &v) && errno == ENOENT;
		if (!ok)
			bpf_map_delete_elem(p->map_fd, &r.cookie);
		done_fn(ctx, r.cookie, r.tag, ok, now_us() - r.since_us);
	}
}

void pauser_cancel(struct pauser *p, uint64_t cookie)
{
	/* The map holds a request only while it is pending here: a tunnel
	 * that never paused costs no system call. */
	for (size_t i = 0; i < p->n_pending; i++) {
		if (p->pending[i].cookie == cookie) {
			p->pending[i] = p->pending[--p->n_pending];
			bpf_map_delete_elem(p->map_fd, &cookie);
			return;
		}
	}
}
