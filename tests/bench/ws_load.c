/* The benchmark's load client. Every mode upgrades first (and checks the
 * 101's accept), then measures; output is one line of key=value figures.
 *   ws_load HOST PORT rtt  CONNS MSGS [SAMPLES_FILE|- [GAP_US]]
 *                                                     64-byte frames, strict ping-pong per connection;
 *                                                     GAP_US: each connection waits that long after an
 *                                                     answer before it sends again (sparse traffic)
 *   ws_load HOST PORT tput MIB                        64 KiB frames echoed back, every byte verified
 *   ws_load HOST PORT hs   SECONDS [PER_SECOND]       connect, upgrade, close, one at a time
 *                                                     (at most PER_SECOND a second)
 *   ws_load HOST PORT idle CONNS                      open tunnels, one echoed frame each, then hold them
 *                                                     idle: print "ready", hold until stdin closes */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include "bench_common.h"

#define RTT_MSG 64
#define TPUT_PAYLOAD (64 * 1024)
#define TPUT_FRAME (TPUT_PAYLOAD + 14)

static const char *host;
static int port;

static int open_tunnel(void)
{
	int fd = tcp_connect(host, port);

	if (fd < 0 || ws_client_handshake(fd, host) < 0)
		die("upgrade through %s:%d failed", host, port);
	return fd;
}

/* A masked binary frame of exactly 64 bytes: 2 header + 4 mask + 58 payload. */
static void rtt_frame(unsigned char *f, uint32_t seq)
{
	memset(f, 0, RTT_MSG);
	f[0] = 0x82;
	f[1] = 0x80 | (RTT_MSG - 6);
	memcpy(f + 6, &seq, sizeof(seq));
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

struct rtt_conn {
	int fd;
	uint32_t sent, got_bytes;
	uint64_t t0, due; /* due: when the next frame goes (0: none waits) */
	unsigned char in[RTT_MSG];
};

static void rtt_send(struct rtt_conn *x)
{
	unsigned char frame[RTT_MSG];

	rtt_frame(frame, x->sent++);
	x->due = 0;
	x->t0 = now_ns();
	if (write_all(x->fd, frame, RTT_MSG))
		die("write");
}

/* Sends the frames that are due; returns the epoll timeout (ms) until the
 * next one, or the 10 s no-answer limit when none waits. */
static int rtt_send_due(struct rtt_conn *c, int conns)
{
	uint64_t now = now_ns(), next = 0;

	for (int i = 0; i < conns; i++) {
		if (!c[i].due)
			continue;
		if (c[i].due <= now)
			rtt_send(&c[i]);
		else if (!next || c[i].due < next)
			next = c[i].due;
	}
	return next ? (int)((next - now + 999999) / 1000000) : 10000;
}

/* WS_LOAD_SETTLE_MS: a quiet moment between opening the tunnels and the
 * first timed byte. The express lane (--mode tcsplice) takes a tunnel
 * over once it has been quiet for a moment, as a real one is between
 * messages; the bench gives every target the same pause, so the figures
 * are the steady state's, not the hand-over's. */
static void settle(void)
{
	const char *v = getenv("WS_LOAD_SETTLE_MS");
	long ms = v ? strtol(v, NULL, 10) : 0;

	if (ms > 0)
		nanosleep(&(struct timespec){ .tv_sec = ms / 1000, .tv_nsec = ms % 1000 * 1000000L }, NULL);
}

static void mode_rtt(int conns, int msgs, const char *samples_file, uint64_t gap_ns)
{
	struct rtt_conn *c = calloc(conns, sizeof(*c));
	uint64_t *rtt = malloc(sizeof(*rtt) * (size_t)conns * msgs), n = 0, total = (uint64_t)conns * msgs;
	struct epoll_event evs[256];
	int ep = epoll_create1(0);

	for (int i = 0; i < conns; i++) {
		c[i].fd = open_tunnel();
		set_nonblock(c[i].fd, 1);
		epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &(struct epoll_event){ .events = EPOLLIN, .data.u32 = i });
	}
	settle();
	for (int i = 0; i < conns; i++)
		rtt_send(&c[i]);
	while (n < total) {
		int timeout = rtt_send_due(c, conns), k = epoll_wait(ep, evs, 256, timeout);

		if (k < 0 || (k == 0 && timeout == 10000))
			die("rtt: no answer for 10 s");
		for (int j = 0; j < k; j++) {
			struct rtt_conn *x = &c[evs[j].data.u32];
			ssize_t r = read(x->fd, x->in + x->got_bytes, RTT_MSG - x->got_bytes);

			if (r <= 0) {
				if (r < 0 && errno == EAGAIN)
					continue;
				die("rtt: connection closed");
			}
			x->got_bytes += r;
			if (x->got_bytes < RTT_MSG)
				continue;
			rtt[n++] = now_ns() - x->t0;
			x->got_bytes = 0;
			if (x->sent < (uint32_t)msgs) {
				if (gap_ns)
					x->due = now_ns() + gap_ns;
				else
					rtt_send(x);
			}
		}
	}
	if (samples_file) {
		FILE *f = fopen(samples_file, "w");

		for (uint64_t i = 0; f && i < n; i++)
			fprintf(f, "%.3f\n", rtt[i] / 1000.0);
		if (f)
			fclose(f);
	}
	qsort(rtt, n, sizeof(*rtt), cmp_u64);
	printf("p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f samples=%llu\n", rtt[n / 2] / 1000.0,
	       rtt[n * 99 / 100] / 1000.0, rtt[n * 999 / 1000] / 1000.0, rtt[n - 1] / 1000.0, (unsigned long long)n);
}

/* 16 distinct frames, precomputed, so the client spends its CPU on moving
 * bytes, not making them; frame i carries pattern i % 16, so a lost,
 * duplicated or reordered frame still shows up as a mismatch. */
#define TPUT_PATTERNS 16
static unsigned char *tput_frames[TPUT_PATTERNS];

static void tput_prepare(void)
{
	for (int i = 0; i < TPUT_PATTERNS; i++) {
		unsigned char *f = malloc(TPUT_FRAME);

		f[0] = 0x82;
		f[1] = 0x80 | 127;
		for (int b = 0; b < 8; b++)
			f[2 + b] = (uint64_t)TPUT_PAYLOAD >> (56 - 8 * b);
		memset(f + 10, 0, 4);
		for (size_t j = 0; j < TPUT_PAYLOAD; j++)
			f[14 + j] = (unsigned char)(i * 31 + j * 7 + (j >> 8));
		tput_frames[i] = f;
	}
}

/* On a mismatch, says where in the sent stream the received bytes do come
 * from: a negative shift is a duplicate, a positive one a loss (modulo the
 * 16-frame period of the patterns). */
static void tput_explain(const unsigned char *got, size_t n, uint64_t pos)
{
	const uint64_t period = (uint64_t)TPUT_PATTERNS * TPUT_FRAME;
	size_t cmp = n < 64 ? n : 64;

	for (uint64_t q = 0; q < period; q++) {
		size_t k;

		for (k = 0; k < cmp; k++) {
			uint64_t at = q + k;

			if (tput_frames[(at / TPUT_FRAME) % TPUT_PATTERNS][at % TPUT_FRAME] != got[k])
				break;
		}
		if (k == cmp) {
			int64_t shift = (int64_t)q - (int64_t)(pos % period);

			if (shift > (int64_t)period / 2)
				shift -= period;
			if (shift < -(int64_t)period / 2)
				shift += period;
			fprintf(stderr, "tput: at stream byte %llu came the bytes of stream byte %llu (shift %+lld, mod %llu)\n",
				(unsigned long long)pos, (unsigned long long)(pos + shift), (long long)shift,
				(unsigned long long)period);
			return;
		}
	}
	fprintf(stderr, "tput: at stream byte %llu came bytes that were never sent\n", (unsigned long long)pos);
}

/* A stalled socket's TCP state, so a stall says whether the peer stopped
 * (no window, nothing to read) or TCP itself waits (retransmission backoff). */
static void tcp_explain(int fd, const char *what)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	int inq = 0, outq = 0;

	memset(&ti, 0, sizeof(ti));
	getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len);
	ioctl(fd, SIOCINQ, &inq);
	ioctl(fd, SIOCOUTQ, &outq);
	fprintf(stderr,
		"%s: tcp state=%u rto_us=%u backoff=%u probes=%u retransmits=%u unacked=%u lost=%u total_retrans=%u "
		"snd_cwnd=%u bytes_acked=%llu bytes_received=%llu inq=%d outq=%d\n",
		what, ti.tcpi_state, ti.tcpi_rto, ti.tcpi_backoff, ti.tcpi_probes, ti.tcpi_retransmits, ti.tcpi_unacked,
		ti.tcpi_lost, ti.tcpi_total_retrans, ti.tcpi_snd_cwnd, (unsigned long long)ti.tcpi_bytes_acked,
		(unsigned long long)ti.tcpi_bytes_received, inq, outq);
}

/* Writer and reader interleave on one non-blocking socket so neither side's
 * buffers fill up; every echoed byte is compared with what was sent. */
static void mode_tput(int mib)
{
	uint64_t frames = ((uint64_t)mib << 20) / TPUT_FRAME, sent = 0, recvd = 0, total;
	unsigned char *out = NULL, *exp, *in = malloc(TPUT_FRAME);
	size_t out_off = TPUT_FRAME, in_off = 0;
	uint64_t frame_out = 0, frame_in = 0, t0;
	int fd = open_tunnel();
	int ep = epoll_create1(0);

	total = frames * TPUT_FRAME;
	settle();
	set_nonblock(fd, 1);
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &(struct epoll_event){ .events = EPOLLIN | EPOLLOUT });
	tput_prepare();
	exp = tput_frames[0];
	t0 = now_ns();
	while (recvd < total) {
		struct epoll_event ev;

		if (epoll_wait(ep, &ev, 1, 10000) <= 0) {
			tcp_explain(fd, "tput");
			die("tput: stalled for 10 s at %llu bytes", (unsigned long long)recvd);
		}
		while (sent < total) {
			ssize_t w;

			if (out_off == TPUT_FRAME) {
				out = tput_frames[frame_out++ % TPUT_PATTERNS];
				out_off = 0;
			}
			w = send(fd, out + out_off, TPUT_FRAME - out_off, MSG_NOSIGNAL);
			if (w <= 0)
				break;
			out_off += w;
			sent += w;
		}
		for (;;) {
			ssize_t r = read(fd, in + in_off, TPUT_FRAME - in_off);

			if (r <= 0) {
				if (r == 0 || errno != EAGAIN)
					die("tput: connection closed");
				break;
			}
			if (memcmp(in + in_off, exp + in_off, r)) {
				size_t k = 0;

				while (in[in_off + k] == exp[in_off + k])
					k++;
				tput_explain(in + in_off + k, r - k, recvd + k);
				fprintf(stderr, "tput: mismatch seen at monotonic %llu ns\n", (unsigned long long)now_ns());
				die("tput: payload mismatch in frame %llu", (unsigned long long)frame_in);
			}
			in_off += r;
			recvd += r;
			if (in_off == TPUT_FRAME) {
				exp = tput_frames[++frame_in % TPUT_PATTERNS];
				in_off = 0;
			}
		}
		if (sent == total)
			epoll_ctl(ep, EPOLL_CTL_MOD, fd, &(struct epoll_event){ .events = EPOLLIN });
	}
	double secs = (now_ns() - t0) / 1e9;

	printf("mbps=%.1f bytes=%llu seconds=%.3f verified=1\n", total / secs / 1e6, (unsigned long long)total, secs);
	close(fd);
}

/* Each handshake's time too (connect to the 101): the XDP bench compares
 * a well-behaved client's with and without a flood. */
#define HS_SAMPLES (1 << 20)

static void mode_hs(double seconds, double per_second)
{
	uint64_t t0 = now_ns(), end = t0 + (uint64_t)(seconds * 1e9), n = 0, *lat = malloc(HS_SAMPLES * sizeof(*lat));
	uint64_t gap = per_second > 0 ? (uint64_t)(1e9 / per_second) : 0;

	if (!lat)
		die("out of memory");
	/* At least one: the tests and the benches wait for a proxy to serve by
	 * running this until it succeeds, and a start slower than SECONDS (a
	 * loaded or emulated machine) must not succeed with none. */
	do {
		uint64_t t = now_ns();
		int fd;

		/* Paced, a well-behaved client: one handshake every gap. */
		while (gap && t < t0 + n * gap) {
			uint64_t wait = t0 + n * gap - t;
			struct timespec ts = { (time_t)(wait / 1000000000u), (long)(wait % 1000000000u) };

			nanosleep(&ts, NULL);
			t = now_ns();
		}
		fd = open_tunnel();

		if (n < HS_SAMPLES)
			lat[n] = now_ns() - t;
		close(fd);
		n++;
	} while (now_ns() < end);
	printf("hs_per_s=%.1f handshakes=%llu ", n / ((now_ns() - t0) / 1e9), (unsigned long long)n);
	if (n > HS_SAMPLES)
		n = HS_SAMPLES;
	qsort(lat, n, sizeof(*lat), cmp_u64);
	printf("hs_p50_us=%.1f hs_p99_us=%.1f hs_max_us=%.1f\n", n ? lat[n / 2] / 1000.0 : 0,
	       n ? lat[n * 99 / 100] / 1000.0 : 0, n ? lat[n - 1] / 1000.0 : 0);
	free(lat);
}

static void mode_idle(int conns)
{
	int *fds = malloc(sizeof(int) * conns);
	char c;

	/* One echoed frame each: an idle tunnel is one that carried a message
	 * and went quiet, which puts it in the kernel path's maps (a sockmap
	 * tunnel enters them with its first byte). */
	for (int i = 0; i < conns; i++) {
		unsigned char f[RTT_MSG], back[RTT_MSG];

		fds[i] = open_tunnel();
		rtt_frame(f, (uint32_t)i);
		if (write_all(fds[i], f, sizeof(f)) < 0 || read_all(fds[i], back, sizeof(back)) < 0 ||
		    memcmp(f, back, sizeof(f)))
			die("idle tunnel %d: the echo failed", i);
	}
	printf("ready conns=%d\n", conns);
	fflush(stdout);
	while (read(0, &c, 1) > 0)
		;
	for (int i = 0; i < conns; i++)
		close(fds[i]);
}

int main(int argc, char **argv)
{
	if (argc < 5)
		die("usage: ws_load HOST PORT rtt CONNS MSGS [SAMPLES] | tput MIB | hs SECONDS [PER_SECOND] | idle CONNS");
	signal(SIGPIPE, SIG_IGN);
	host = argv[1];
	port = atoi(argv[2]);
	if (!strcmp(argv[3], "rtt") && argc >= 6)
		mode_rtt(atoi(argv[4]), atoi(argv[5]), argc > 6 && strcmp(argv[6], "-") ? argv[6] : NULL,
			 argc > 7 ? strtoull(argv[7], NULL, 10) * 1000 : 0);
	else if (!strcmp(argv[3], "tput"))
		mode_tput(atoi(argv[4]));
	else if (!strcmp(argv[3], "hs"))
		mode_hs(atof(argv[4]), argc > 5 ? atof(argv[5]) : 0);
	else if (!strcmp(argv[3], "idle"))
		mode_idle(atoi(argv[4]));
	else
		die("unknown mode %s", argv[3]);
	return 0;
}
