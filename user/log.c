#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include "log.h"

enum log_level log_threshold = LOG_INFO;

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	static const char *names[] = { "error", "warn", "info", "debug" };
	struct timespec ts;
	char line[1024];
	va_list ap;

	if (lvl > log_threshold)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	/* One fprintf per line keeps lines whole when stderr is shared. */
	fprintf(stderr, "%lld.%03ld wsplice %s: %s\n", (long long)ts.tv_sec, ts.tv_nsec / 1000000,
		names[lvl], line);
}
