#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "access_log.h"
#include "log.h"
#include "metrics.h"

/* Queued bytes at most: about 10 000 lines. */
#define QUEUE_SIZE (4u << 20)
#define LINE_MAX_LEN 4096

struct access_log {
	char path[512];
	enum access_format fmt;
	int fd;
	pthread_t writer;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	char *queue; /* a ring of QUEUE_SIZE bytes */
	size_t head, len;
	bool reopen, stopping;
	int reopen_errno; /* a reopen that failed, for the loop to report */
};

static struct access_log *al;

static int open_file(const char *path)
{
	return strcmp(path, "stderr") ? open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640) : dup(2);
}

static void write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return; /* a full disk loses lines, not the daemon */
		}
		p += w;
		n -= (size_t)w;
	}
}

/* The ring's bytes [from, from + n) into out, and out's n bytes into it. */
static void ring_read(size_t from, char *out, size_t n)
{
	size_t first = QUEUE_SIZE - from < n ? QUEUE_SIZE - from : n;

	memcpy(out, al->queue + from, first);
	memcpy(out + first, al->queue, n - first);
}

static void ring_write(size_t at, const char *in, size_t n)
{
	size_t first = QUEUE_SIZE - at < n ? QUEUE_SIZE - at : n;

	memcpy(al->queue + at, in, first);
	memcpy(al->queue, in + first, n - first);
}

static void *writer_main(void *arg)
{
	static char chunk[65536];

	(void)arg;
	pthread_mutex_lock(&al->lock);
	for (;;) {
		size_t n;

		while (!al->len && !al->reopen && !al->stopping)
			pthread_cond_wait(&al->wake, &al->lock);
		if (al->reopen) {
			int fd;

			/* The filesystem is waited on without the lock: the loop
			 * never blocks on it. A failure keeps the old file and is
			 * reported by the loop (access_log_request). */
			al->reopen = false;
			pthread_mutex_unlock(&al->lock);
			fd = open_file(al->path);
			pthread_mutex_lock(&al->lock);
			if (fd >= 0) {
				close(al->fd);
				al->fd = fd;
			} else {
				al->reopen_errno = errno;
			}
		}
		if (!al->len && al->stopping)
			break;
		if (!al->len)
			continue;
		n = al->len < sizeof(chunk) ? al->len : sizeof(chunk);
		ring_read(al->head, chunk, n);
		/* Whole lines only: another writer on the same fd (stderr) must
		 * not land inside one. A line is at most 4 KiB, so one fits. */
		while (n > 1 && chunk[n - 1] != '\n')
			n--;
		al->head = (al->head + n) % QUEUE_SIZE;
		al->len -= n;
		pthread_mutex_unlock(&al->lock);
		write_all(al->fd, chunk, n);
		pthread_mutex_lock(&al->lock);
	}
	pthread_mutex_unlock(&al->lock);
	return NULL;
}

int access_log_open(const char *path, enum access_format fmt, char *err, size_t errlen)
{
	al = calloc(1, sizeof(*al));
	if (!al || !(al->queue = malloc(QUEUE_SIZE))) {
		snprintf(err, errlen, "access_log: out of memory");
		goto fail;
	}
	snprintf(al->path, sizeof(al->path), "%s", path);
	al->fmt = fmt;
	al->fd = open_file(path);
	if (al->fd < 0) {
		snprintf(err, errlen, "access_log %s: %s", path, strerror(errno));
		goto fail;
	}
	pthread_mutex_init(&al->lock, NULL);
	pthread_cond_init(&al->wake, NULL);
	if (pthread_create(&al->writer, NULL, writer_main, NULL)) {
		snprintf(err, errlen, "access_log: cannot start its writer thread");
		close(al->fd);
		goto fail;
	}
	return 0;
fail:
	if (al)
		free(al->queue);
	free(al);
	al = NULL;
	return -1;
}

bool access_log_enabled(void)
{
	return al != NULL;
}

static void enqueue(const char *line, size_t n)
{
	pthread_mutex_lock(&al->lock);
	if (al->reopen_errno) {
		log_error("access_log %s: cannot reopen it (%s): still writing to the file it had open", al->path,
			  strerror(al->reopen_errno));
		al->reopen_errno = 0;
	}
	if (QUEUE_SIZE - al->len < n) {
		pthread_mutex_unlock(&al->lock);
		metrics_inc(M_ACCESS_LOG_DROPPED);
		return;
	}
	ring_write((al->head + al->len) % QUEUE_SIZE, line, n);
	al->len += n;
	pthread_cond_signal(&al->wake);
	pthread_mutex_unlock(&al->lock);
}

/* One line, field by field: a small writer over a fixed buffer. */
struct line {
	char buf[LINE_MAX_LEN];
	size_t n;
	bool json;
};

static void put(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct line *l, const char *fmt, ...)
{
	va_list ap;
	int w;

	if (l->n >= sizeof(l->buf))
		return;
	va_start(ap, fmt);
	w = vsnprintf(l->buf + l->n, sizeof(l->buf) - l->n, fmt, ap);
	va_end(ap);
	l->n = w < 0 ? l->n : l->n + (size_t)w > sizeof(l->buf) - 1 ? sizeof(l->buf) - 1 : l->n + (size_t)w;
}

static void field_sep(struct line *l, const char *key)
{
	bool first = l->n == (l->json ? 1u : 0u);

	put(l, l->json ? "%s\"%s\":" : "%s%s=", first ? "" : l->json ? "," : " ", key);
}

/* A string value: JSON-escaped, or in logfmt bare when it can be, else quoted. */
static void field_str(struct line *l, const char *key, const char *v)
{
	bool quote = l->json || !*v || strpbrk(v, " \"=\\") != NULL;

	field_sep(l, key);
	if (quote)
		put(l, "\"");
	for (const unsigned char *c = (const unsigned char *)v; *c && l->n < sizeof(l->buf) - 8; c++) {
		if (*c == '"' || *c == '\\')
			put(l, "\\%c", *c);
		else if (*c < 0x20 || *c == 0x7f || (l->json && *c >= 0x80))
			put(l, l->json ? "\\u%04x" : "\\x%02x", *c); /* JSON stays UTF-8: a raw byte is escaped */
		else
			put(l, "%c", *c);
	}
	if (quote)
		put(l, "\"");
}

static void field_u64(struct line *l, const char *key, uint64_t v)
{
	field_sep(l, key);
	put(l, "%llu", (unsigned long long)v);
}

static void field_ms(struct line *l, const char *key, double v)
{
	field_sep(l, key);
	put(l, "%.3f", v);
}

static void line_start(struct line *l, const char *kind)
{
	struct timespec ts;
	struct tm tm;
	char when[40];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(when + strlen(when), sizeof(when) - strlen(when), ".%03ldZ", ts.tv_nsec / 1000000);
	l->n = 0;
	l->json = al->fmt == ACCESS_JSON;
	if (l->json)
		put(l, "{");
	field_str(l, "time", when);
	field_str(l, "kind", kind);
}

static void line_end(struct line *l)
{
	/* Room for the closing brace and the newline is kept by put()'s clamp. */
	if (l->n > sizeof(l->buf) - 3)
		l->n = sizeof(l->buf) - 3;
	if (l->json)
		l->buf[l->n++] = '}';
	l->buf[l->n++] = '\n';
	enqueue(l->buf, l->n);
}

void access_log_request(const struct access_request *r)
{
	static struct line l;

	if (!al)
		return;
	line_start(&l, "request");
	field_str(&l, "client", r->client);
	field_str(&l, "host", r->host);
	field_str(&l, "method", r->method);
	field_str(&l, "path", r->path);
	field_u64(&l, "status", (uint64_t)r->status);
	field_str(&l, "upstream", r->upstream);
	field_ms(&l, "duration_ms", r->duration_ms);
	field_u64(&l, "bytes_in", r->bytes_in);
	field_u64(&l, "bytes_out", r->bytes_out);
	if (r->tunnel)
		field_u64(&l, "tunnel", r->tunnel);
	line_end(&l);
}

void access_log_tunnel(const struct access_tunnel *t)
{
	static struct line l;

	if (!al)
		return;
	line_start(&l, "tunnel");
	field_u64(&l, "tunnel", t->id);
	field_str(&l, "client", t->client);
	field_str(&l, "upstream", t->upstream);
	field_str(&l, "engine", t->engine);
	field_ms(&l, "duration_ms", t->duration_ms);
	field_u64(&l, "bytes_client_to_upstream", t->bytes_c2u);
	field_u64(&l, "bytes_upstream_to_client", t->bytes_u2c);
	field_str(&l, "cause", t->cause);
	line_end(&l);
}

void access_log_reopen(void)
{
	if (!al)
		return;
	pthread_mutex_lock(&al->lock);
	al->reopen = true;
	pthread_cond_signal(&al->wake);
	pthread_mutex_unlock(&al->lock);
}

void access_log_close(void)
{
	if (!al)
		return;
	pthread_mutex_lock(&al->lock);
	al->stopping = true;
	pthread_cond_signal(&al->wake);
	pthread_mutex_unlock(&al->lock);
	pthread_join(al->writer, NULL);
	close(al->fd);
	pthread_mutex_destroy(&al->lock);
	pthread_cond_destroy(&al->wake);
	free(al->queue);
	free(al);
	al = NULL;
}
