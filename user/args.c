#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include "args.h"

const char *mode_name(enum tunnel_mode m)
{
	static const char *names[] = { "auto", "sockmap", "splice", "copy" };

	return names[m];
}

void args_usage(FILE *out)
{
	fputs("usage: wsplice --listen ADDR:PORT --upstream ADDR:PORT [options]\n"
	      "\n"
	      "A WebSocket reverse proxy: the handshake is checked in userspace, then the\n"
	      "two TCP sockets are spliced in the kernel by an eBPF sockmap program.\n"
	      "\n"
	      "  -l, --listen ADDR:PORT      address to accept clients on (IPv4, [IPv6]:port, host name)\n"
	      "  -u, --upstream ADDR:PORT    server every request is forwarded to\n"
	      "  -m, --mode MODE             auto (default) | sockmap | splice | copy\n"
	      "      --bpffs DIR             where maps are pinned (default /sys/fs/bpf/wsplice)\n"
	      "      --tunnel-buffer SIZE    in-kernel bytes in flight per direction before the\n"
	      "                              sender is paused (default 4M; k, M, G suffixes)\n"
	      "  -v, --verbose               debug logging\n"
	      "  -h, --help                  this text\n"
	      "  -V, --version               print the version\n",
	      out);
}

int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	int shift = 0;

	if (!*s || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -1;
	switch (tolower((unsigned char)*end)) {
	case '\0': break;
	case 'k': shift = 10; end++; break;
	case 'm': shift = 20; end++; break;
	case 'g': shift = 30; end++; break;
	default: return -1;
	}
	if (*end == 'i' || *end == 'I')
		end++;
	if (*end == 'b' || *end == 'B')
		end++;
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -1;
	*out = (uint64_t)v << shift;
	return 0;
}

int endpoint_split(const char *spec, struct endpoint *ep, char *err, size_t errlen)
{
	const char *colon, *host = spec;
	size_t hostlen;
	char *end;
	long port;

	if (spec[0] == '[') {
		const char *close = strchr(spec, ']');

		if (!close || close[1] != ':') {
			snprintf(err, errlen, "'%s': expected [IPv6]:port", spec);
			return -1;
		}
		host = spec + 1;
		hostlen = close - host;
		colon = close + 1;
	} else {
		colon = strrchr(spec, ':');
		if (!colon || colon == spec) {
			snprintf(err, errlen, "'%s': expected host:port", spec);
			return -1;
		}
		if (memchr(spec, ':', colon - spec)) {
			snprintf(err, errlen, "'%s': an IPv6 address needs brackets, as in [::1]:8080", spec);
			return -1;
		}
		hostlen = colon - spec;
	}
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (!colon[1] || *end || errno || port < 1 || port > 65535) {
		snprintf(err, errlen, "'%s': port must be 1-65535", spec);
		return -1;
	}
	if (hostlen == 0 || hostlen >= sizeof(ep->host)) {
		snprintf(err, errlen, "'%s': bad host", spec);
		return -1;
	}
	memcpy(ep->host, host, hostlen);
	ep->host[hostlen] = '\0';
	snprintf(ep->port, sizeof(ep->port), "%ld", port);
	return 0;
}

static int parse_mode(const char *s, enum tunnel_mode *m)
{
	for (int i = MODE_AUTO; i <= MODE_COPY; i++) {
		if (!strcmp(s, mode_name(i))) {
			*m = i;
			return 0;
		}
	}
	return -1;
}

enum args_result args_parse(int argc, char **argv, struct config *cfg, char *err, size_t errlen)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "upstream", required_argument, NULL, 'u' },
		{ "mode", required_argument, NULL, 'm' },
		{ "bpffs", required_argument, NULL, 'B' },
		{ "tunnel-buffer", required_argument, NULL, 'T' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	bool have_listen = false, have_upstream = false;
	int c;

	memset(cfg, 0, sizeof(*cfg));
	cfg->mode = MODE_AUTO;
	cfg->tunnel_buffer = 4u << 20;
	snprintf(cfg->bpffs, sizeof(cfg->bpffs), "/sys/fs/bpf/wsplice");
	err[0] = '\0';
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":l:u:m:vhV", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			if (endpoint_split(optarg, &cfg->listen, err, errlen))
				goto bad;
			have_listen = true;
			break;
		case 'u':
			if (endpoint_split(optarg, &cfg->upstream, err, errlen))
				goto bad;
			have_upstream = true;
			break;
		case 'm':
			if (parse_mode(optarg, &cfg->mode)) {
				snprintf(err, errlen, "--mode '%s': expected auto, sockmap, splice or copy", optarg);
				goto bad;
			}
			break;
		case 'B':
			if (optarg[0] != '/' || strlen(optarg) >= sizeof(cfg->bpffs)) {
				snprintf(err, errlen, "--bpffs '%s': expected an absolute path", optarg);
				goto bad;
			}
			snprintf(cfg->bpffs, sizeof(cfg->bpffs), "%s", optarg);
			break;
		case 'T':
			if (parse_size(optarg, &cfg->tunnel_buffer) || cfg->tunnel_buffer < 65536) {
				snprintf(err, errlen, "--tunnel-buffer '%s': expected a size of at least 64k", optarg);
				goto bad;
			}
			break;
		case 'v':
			cfg->verbose = 1;
			break;
		case 'h':
			return ARGS_HELP;
		case 'V':
			return ARGS_VERSION;
		case ':':
			snprintf(err, errlen, "option '%s' needs a value", argv[optind - 1]);
			goto bad;
		default:
			snprintf(err, errlen, "unknown option '%s'", argv[optind - 1]);
			goto bad;
		}
	}
	if (optind < argc) {
		snprintf(err, errlen, "unexpected argument '%s'", argv[optind]);
		goto bad;
	}
	if (!have_listen || !have_upstream) {
		snprintf(err, errlen, "--listen and --upstream are required (see --help)");
		goto bad;
	}
	return ARGS_RUN;
bad:
	return ARGS_ERROR;
}
