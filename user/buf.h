/* A bounded byte queue: bytes are appended at the end and consumed from the
 * front. Storage is allocated on first use and can be released when empty,
 * so an idle tunnel holds no buffer memory. */
#ifndef WSPLICE_BUF_H
#define WSPLICE_BUF_H

#include <stddef.h>
#include <sys/types.h>

struct buf {
	char *data;
	size_t start, end, cap;
};

static inline size_t buf_len(const struct buf *b) { return b->end - b->start; }
static inline const char *buf_head(const struct buf *b) { return b->data + b->start; }
static inline size_t buf_room(const struct buf *b) { return b->cap - b->end + b->start; }

/* cap is at most 64 KiB (one pool block). */
void buf_init(struct buf *b, size_t cap);
void buf_release(struct buf *b);
void buf_consume(struct buf *b, size_t n);
/* Appends n bytes; returns -1 (and appends nothing) when they do not fit. */
int buf_append(struct buf *b, const void *p, size_t n);
/* recv() into the free space; returns what recv returned (0 = EOF). */
ssize_t buf_read_fd(struct buf *b, int fd);
/* send() from the front; returns bytes sent or -1 with errno. */
ssize_t buf_write_fd(struct buf *b, int fd);

#endif
