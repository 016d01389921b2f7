#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "fdpass.h"

int fdpass_send(int sock, const void *data, size_t len, const int *fds, size_t nfds)
{
	char cbuf[CMSG_SPACE(FDPASS_MAX * sizeof(int))];
	struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (nfds > FDPASS_MAX) {
		errno = EINVAL;
		return -1;
	}
	if (nfds) {
		struct cmsghdr *c;

		memset(cbuf, 0, sizeof(cbuf));
		msg.msg_control = cbuf;
		msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	/* ETOOMANYREFS: the sender has as many descriptors in flight as its
	 * RLIMIT_NOFILE; they leave as the peer reads. A few seconds at most. */
	for (int tries = 0;; tries++) {
		n = sendmsg(sock, &msg, MSG_NOSIGNAL);
		if (n >= 0 || (errno != EINTR && ((errno != ETOOMANYREFS && errno != EAGAIN) || tries >= 5000)))
			break;
		if (errno != EINTR)
			usleep(1000);
	}
	return n == (ssize_t)len ? 0 : -1;
}

ssize_t fdpass_recv(int sock, void *data, size_t cap, int *fds, size_t max_fds, size_t *nfds)
{
	char cbuf[CMSG_SPACE(FDPASS_MAX * sizeof(int))];
	struct iovec iov = { .iov_base = data, .iov_len = cap };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	ssize_t n;

	*nfds = 0;
	do
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		size_t k;
		int *in;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		in = (int *)CMSG_DATA(c);
		for (size_t i = 0; i < k; i++) {
			if (*nfds < max_fds)
				memcpy(&fds[(*nfds)++], &in[i], sizeof(int));
			else
				close(in[i]);
		}
	}
	if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
		for (size_t i = 0; i < *nfds; i++)
			close(fds[i]);
		*nfds = 0;
		errno = EMSGSIZE;
		return -1;
	}
	return n;
}
