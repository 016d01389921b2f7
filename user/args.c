#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include <pwd.h>
#include "args.h"
#include "config_value.h"

void args_usage(FILE *out)
{
	fputs("usage: wsplice --listen ADDR:PORT --upstream ADDR:PORT [options]\n"
	      "       wsplice -c FILE [options]\n"
	      "       wsplice -t (-c FILE | --listen ... --upstream ...)\n"
	      "\n"
	      "A WebSocket reverse proxy: the handshake is checked in userspace, then the\n"
	      "two TCP sockets are spliced in the kernel by an eBPF sockmap program.\n"
	      "\n"
	      "  -l, --listen ADDR:PORT      address to accept clients on (IPv4, [IPv6]:port, host name)\n"
	      "  -u, --upstream ADDR:PORT    server every request is forwarded to\n"
	      "  -c, --config FILE           listeners, routes and pools from an INI file (docs/CONFIG.md)\n"
	      "  -t, --test-config           check the configuration, print the result, exit 0 or 1\n"
	      "  -m, --mode MODE             sockmap (eBPF splice in the kernel) | splice | copy |\n"
	      "                              tcsplice (the express lane: copy, then a tc program\n"
	      "                              carries the quiet tunnel; Linux 6.1+, root);\n"
	      "                              auto (default) = sockmap where it loads (Linux 6.2+,\n"
	      "                              BPF privileges), else copy; one log line says which\n"
	      "      --bpffs DIR             where maps are pinned (default /sys/fs/bpf/wsplice)\n"
	      "      --tunnel-buffer SIZE    in-kernel bytes in flight per direction before the\n"
	      "                              sender is paused (default 4M; k, M, G suffixes)\n"
	      "      --metrics ADDR:PORT     serve Prometheus metrics at http://ADDR:PORT/metrics\n"
	      "      --access-log PATH       one line per request and per tunnel, to a file or stderr;\n"
	      "                              SIGUSR1 reopens it\n"
	      "      --access-log-format F   logfmt (default) or json\n"
	      "      --control PATH          the control socket (default /run/wsplice/NAME.sock,\n"
	      "                              NAME the last part of --bpffs)\n"
	      "      --workers N|auto        worker processes sharing the listeners (SO_REUSEPORT)\n"
	      "                              and the data plane (default auto: one per CPU)\n"
	      "      --user NAME             the workers run as this user once the BPF data plane\n"
	      "                              is loaded and the listeners are bound\n"
	      "      --shutdown-timeout T    SIGTERM drains: no new connections, tunnels run on\n"
	      "                              for up to T (default off: close at once)\n"
	      "      --xdp IFACE[,IFACE]     guard the listener ports with XDP on these interfaces\n"
	      "      --xdp-deny CIDR         drop this source at XDP (wsplice deny changes it live)\n"
	      "      --xdp-syn-rate N|off    SYNs a second per source (default 200)\n"
	      "      --xdp-syn-burst N       SYNs a source may send at once (default 400)\n"
	      "\n"
	      "       wsplice status|conns [--json] [--bpffs DIR | --control PATH | -c FILE]\n"
	      "                              ask a running daemon: its state, or its open tunnels\n"
	      "       wsplice upgrade [--bpffs DIR | --control PATH | -c FILE]\n"
	      "                              a binary upgrade that keeps every tunnel (as SIGUSR2)\n"
	      "       wsplice deny add|del CIDR | deny list  [--bpffs DIR | -c FILE]\n"
	      "                              the XDP guard's deny list, live\n"
	      "  -v, --verbose               debug logging\n"
	      "  -h, --help                  this text\n"
	      "  -V, --version               print the version\n",
	      out);
}

enum args_result args_parse(int argc, char **argv, struct cli_options *opt, char *err, size_t errlen)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "upstream", required_argument, NULL, 'u' },
		{ "mode", required_argument, NULL, 'm' },
		{ "bpffs", required_argument, NULL, 'B' },
		{ "tunnel-buffer", required_argument, NULL, 'T' },
		{ "metrics", required_argument, NULL, 'M' },
		{ "control", required_argument, NULL, 'C' },
		{ "access-log", required_argument, NULL, 'A' },
		{ "access-log-format", required_argument, NULL, 'F' },
		{ "workers", required_argument, NULL, 'W' },
		{ "user", required_argument, NULL, 'U' },
		{ "shutdown-timeout", required_argument, NULL, 'G' },
		{ "xdp", required_argument, NULL, 'X' },
		{ "xdp-deny", required_argument, NULL, 'D' },
		{ "xdp-syn-rate", required_argument, NULL, 'R' },
		{ "xdp-syn-burst", required_argument, NULL, 'S' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "config", required_argument, NULL, 'c' },
		{ "test-config", no_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	struct config defaults;
	int c;

	memset(opt, 0, sizeof(*opt));
	config_defaults(&defaults);
	opt->mode = defaults.mode;
	opt->tunnel_buffer = defaults.tunnel_buffer;
	snprintf(opt->bpffs, sizeof(opt->bpffs), "%s", defaults.bpffs);
	err[0] = '\0';
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":l:u:m:c:tvhV", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			if (endpoint_split(optarg, &opt->listen, err, errlen))
				goto bad;
			opt->have_listen = true;
			break;
		case 'u':
			if (endpoint_split(optarg, &opt->upstream, err, errlen))
				goto bad;
			opt->have_upstream = true;
			break;
		case 'm':
			if (parse_mode(optarg, &opt->mode)) {
				snprintf(err, errlen, "--mode '%s': expected auto, sockmap, splice, copy or tcsplice", optarg);
				goto bad;
			}
			opt->have_mode = true;
			break;
		case 'B':
			if (optarg[0] != '/' || strlen(optarg) >= sizeof(opt->bpffs)) {
				snprintf(err, errlen, "--bpffs '%s': expected an absolute path", optarg);
				goto bad;
			}
			snprintf(opt->bpffs, sizeof(opt->bpffs), "%s", optarg);
			opt->have_bpffs = true;
			break;
		case 'T':
			if (parse_size(optarg, &opt->tunnel_buffer) || opt->tunnel_buffer < 65536) {
				snprintf(err, errlen, "--tunnel-buffer '%s': expected a size of at least 64k", optarg);
				goto bad;
			}
			opt->have_tunnel_buffer = true;
			break;
		case 'A':
			if ((optarg[0] != '/' && strcmp(optarg, "stderr")) || strlen(optarg) >= sizeof(opt->access_log)) {
				snprintf(err, errlen, "--access-log '%s': expected an absolute path or stderr", optarg);
				goto bad;
			}
			snprintf(opt->access_log, sizeof(opt->access_log), "%s", optarg);
			opt->have_access_log = true;
			break;
		case 'F':
			if (strcmp(optarg, "logfmt") && strcmp(optarg, "json")) {
				snprintf(err, errlen, "--access-log-format '%s': expected logfmt or json", optarg);
				goto bad;
			}
			opt->access_log_json = !strcmp(optarg, "json");
			opt->have_access_log_format = true;
			break;
		case 'C':
			if (optarg[0] != '/' || strlen(optarg) >= sizeof(opt->control)) {
				snprintf(err, errlen, "--control '%s': expected an absolute path of at most %zu characters",
					 optarg, sizeof(opt->control) - 1);
				goto bad;
			}
			snprintf(opt->control, sizeof(opt->control), "%s", optarg);
			opt->have_control = true;
			break;
		case 'M':
			if (endpoint_split(optarg, &opt->metrics, err, errlen))
				goto bad;
			opt->have_metrics = true;
			break;
		case 'v':
			opt->verbose = 1;
			break;
		case 'c':
			opt->config_path = optarg;
			break;
		case 'W': {
			uint64_t n;

			if (!strcmp(optarg, "auto")) {
				opt->workers = 0;
			} else if (parse_size(optarg, &n) || n < 1 || n > WORKERS_MAX) {
				snprintf(err, errlen, "--workers '%s': expected auto or a number from 1 to %d", optarg,
					 WORKERS_MAX);
				goto bad;
			} else {
				opt->workers = (uint32_t)n;
			}
			opt->have_workers = true;
			break;
		}
		case 'U':
			if (!getpwnam(optarg) || strlen(optarg) >= sizeof(opt->user)) {
				snprintf(err, errlen, "--user '%s': no such user", optarg);
				goto bad;
			}
			snprintf(opt->user, sizeof(opt->user), "%s", optarg);
			opt->have_user = true;
			break;
		case 'G':
			if (parse_duration_ms(optarg, &opt->shutdown_ms)) {
				snprintf(err, errlen, "--shutdown-timeout '%s': expected a duration such as 30s, or off", optarg);
				goto bad;
			}
			opt->have_shutdown = true;
			break;
		case 'X': {
			char list[256], *save = NULL;

			snprintf(list, sizeof(list), "%s", optarg);
			for (char *i = strtok_r(list, ",", &save); i; i = strtok_r(NULL, ",", &save)) {
				if (opt->n_xdp == XDP_IFACES_MAX) {
					snprintf(err, errlen, "--xdp: at most %d interfaces", XDP_IFACES_MAX);
					goto bad;
				}
				if (strlen(i) >= sizeof(opt->xdp[0]) || !if_nametoindex(i)) {
					snprintf(err, errlen, "--xdp '%s': no such network interface", i);
					goto bad;
				}
				snprintf(opt->xdp[opt->n_xdp++], sizeof(opt->xdp[0]), "%s", i);
			}
			break;
		}
		case 'D':
			if (opt->n_xdp_deny == sizeof(opt->xdp_deny) / sizeof(opt->xdp_deny[0]) ||
			    parse_cidr(optarg, &opt->xdp_deny[opt->n_xdp_deny])) {
				snprintf(err, errlen, "--xdp-deny '%s': expected an address or CIDR block (at most %zu; "
						      "a file's xdp_deny takes more)", optarg,
					 sizeof(opt->xdp_deny) / sizeof(opt->xdp_deny[0]));
				goto bad;
			}
			opt->n_xdp_deny++;
			break;
		case 'R':
		case 'S': {
			uint64_t n = 0;

			if ((c == 'S' || strcmp(optarg, "off")) && (parse_size(optarg, &n) || n < 1 || n > 1000000)) {
				snprintf(err, errlen, "--xdp-syn-%s '%s': expected a number from 1 to 1000000%s",
					 c == 'R' ? "rate" : "burst", optarg, c == 'R' ? " or off" : "");
				goto bad;
			}
			if (c == 'R') {
				opt->xdp_syn_rate = (uint32_t)n;
				opt->have_xdp_syn_rate = true;
			} else {
				opt->xdp_syn_burst = (uint32_t)n;
				opt->have_xdp_syn_burst = true;
			}
			break;
		}
		case 't':
			opt->test_only = true;
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
	if (opt->config_path && (opt->have_listen || opt->have_upstream)) {
		snprintf(err, errlen, "--listen and --upstream cannot be combined with -c (the file names them)");
		goto bad;
	}
	if (!opt->config_path && (!opt->have_listen || !opt->have_upstream)) {
		snprintf(err, errlen, "--listen and --upstream are required, or -c FILE (see --help)");
		goto bad;
	}
	return ARGS_RUN;
bad:
	return ARGS_ERROR;
}

void args_apply_globals(const struct cli_options *opt, struct config *cfg)
{
	if (opt->have_mode || !opt->config_path)
		cfg->mode = opt->mode;
	if (opt->have_bpffs || !opt->config_path)
		snprintf(cfg->bpffs, sizeof(cfg->bpffs), "%s", opt->bpffs);
	if (opt->have_tunnel_buffer || !opt->config_path)
		cfg->tunnel_buffer = opt->tunnel_buffer;
	if (opt->have_metrics)
		cfg->metrics = opt->metrics;
	if (opt->have_access_log)
		snprintf(cfg->access_log, sizeof(cfg->access_log), "%s", opt->access_log);
	if (opt->have_access_log_format)
		cfg->access_log_json = opt->access_log_json;
	if (opt->have_control)
		snprintf(cfg->control, sizeof(cfg->control), "%s", opt->control);
	if (opt->have_workers)
		cfg->workers = opt->workers;
	if (opt->have_user)
		snprintf(cfg->user, sizeof(cfg->user), "%s", opt->user);
	if (opt->verbose)
		cfg->verbose = 1;
	for (size_t i = 0; i < opt->n_xdp && cfg->xdp.n_ifaces < XDP_IFACES_MAX; i++)
		memcpy(cfg->xdp.ifaces[cfg->xdp.n_ifaces++], opt->xdp[i], sizeof(opt->xdp[i]));
	for (size_t i = 0; i < opt->n_xdp_deny && CONFIG_GROW(cfg->xdp.deny, cfg->xdp.n_deny); i++)
		cfg->xdp.deny[cfg->xdp.n_deny - 1] = opt->xdp_deny[i];
	if (opt->have_shutdown)
		cfg->timeouts.shutdown_ms = opt->shutdown_ms;
	if (opt->have_xdp_syn_rate)
		cfg->xdp.syn_rate = opt->xdp_syn_rate;
	if (opt->have_xdp_syn_burst)
		cfg->xdp.syn_burst = opt->xdp_syn_burst;
}
