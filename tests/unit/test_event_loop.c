/* The event loop's contract with its handlers, on a real epoll. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <cmocka.h>
#include "event_loop.h"

static struct ev_loop *loop;
static struct ev_handler ends[2];
static int calls[2];

/* Each handler, called, stops the other from watching: what a tunnel's
 * end does to its peer, or an upgrade to the event ring. */
static void unwatch_the_other(struct ev_handler *h, uint32_t events)
{
	int me = h == &ends[1];

	(void)events;
	calls[me]++;
	ev_watch(loop, &ends[1 - me], 0);
	ev_loop_stop(loop);
}

/* Both are ready before the loop runs, so both come in one batch; the
 * second one's event is stale by the time its turn comes, and must not
 * reach it (an upgrade's event ring: a pause read after the tunnels left
 * was lost). */
static void a_handler_that_stopped_watching_gets_no_stale_event(void **state)
{
	(void)state;
	loop = ev_loop_new();
	assert_non_null(loop);
	for (int i = 0; i < 2; i++) {
		ends[i] = (struct ev_handler){ .fd = eventfd(1, EFD_NONBLOCK), .on_event = unwatch_the_other };
		assert_true(ends[i].fd >= 0);
		assert_int_equal(ev_watch(loop, &ends[i], EPOLLIN), 0);
	}
	ev_loop_run(loop);
	assert_int_equal(calls[0] + calls[1], 1);
	for (int i = 0; i < 2; i++)
		close(ends[i].fd);
	ev_loop_free(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(a_handler_that_stopped_watching_gets_no_stale_event),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
