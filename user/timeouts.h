/* One periodic timer enforces every deadline: request heads (408), upstream
 * connects and answers (502/504), keep-alive idle, idle pooled upstream
 * connections, and idle or half-closed tunnels. A 100 ms sweep means no
 * timer per connection and no wakeup per message. */
#ifndef WSPLICE_TIMEOUTS_H
#define WSPLICE_TIMEOUTS_H

#include "proxy.h"

struct timeouts_watch;

struct timeouts_watch *timeouts_start(struct proxy *px);
void timeouts_stop(struct timeouts_watch *tw);

#endif
