/* libFuzzer target: the chunked-body decoder. The first byte picks how the
 * rest is split into reads; the decoder must find the same end of body
 * whether it gets the bytes at once or in pieces (a relay sees arbitrary
 * TCP segment boundaries), and never claim more bytes than it was given. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "http_body.h"

static long feed(const char *data, size_t size, size_t step, bool *done)
{
	struct http_body b = { .kind = BODY_CHUNKED };
	size_t off = 0;

	while (off < size && !b.done) {
		size_t n = size - off < step ? size - off : step;
		long adv = http_body_advance(&b, data + off, n);

		if (adv < 0)
			return -1;
		if ((size_t)adv > n || (adv < (long)n && !b.done))
			abort(); /* short of done, every byte given is body */
		off += adv;
	}
	*done = b.done;
	return (long)off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t step;
	bool done_all, done_step;
	long all, stepped;

	if (!size)
		return 0;
	step = 1 + data[0] % 17;
	all = feed((const char *)data + 1, size - 1, size, &done_all);
	stepped = feed((const char *)data + 1, size - 1, step, &done_step);
	if (all != stepped || (all >= 0 && done_all != done_step))
		abort();
	return 0;
}
