/* Command-line parsing. The spellings are a contract (issue #2). */
#ifndef WSPLICE_ARGS_H
#define WSPLICE_ARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include "config.h"

enum args_result { ARGS_RUN, ARGS_HELP, ARGS_VERSION, ARGS_ERROR };

struct cli_options {
	struct endpoint listen, upstream; /* the one-listener shortcut */
	bool have_listen, have_upstream;
	const char *config_path;          /* -c */
	bool test_only;                   /* -t: check the configuration and exit */
	/* Global settings; with -c they override the file's when given. */
	enum tunnel_mode mode;
	char bpffs[256];
	uint64_t tunnel_buffer;
	struct endpoint metrics;
	char control[108];
	char access_log[512];
	bool access_log_json;
	uint32_t workers;
	char user[64];
	int verbose;
	/* The XDP guard: interfaces and denied sources add to the file's. */
	char xdp[XDP_IFACES_MAX][16];
	size_t n_xdp;
	struct cidr xdp_deny[32];
	size_t n_xdp_deny;
	uint32_t xdp_syn_rate, xdp_syn_burst;
	bool have_xdp_syn_rate, have_xdp_syn_burst;
	uint64_t shutdown_ms;
	bool have_shutdown;
	bool have_mode, have_bpffs, have_tunnel_buffer, have_metrics, have_control, have_access_log,
		have_access_log_format, have_workers, have_user;
};

/* Fills opt; on ARGS_ERROR, err holds one line saying what is wrong. */
enum args_result args_parse(int argc, char **argv, struct cli_options *opt, char *err, size_t errlen);
/* Applies the global options given on the command line to cfg. */
void args_apply_globals(const struct cli_options *opt, struct config *cfg);
void args_usage(FILE *out);

#endif
