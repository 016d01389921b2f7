#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include "config_file.h"
#include "config_value.h"
#include "deny_cli.h"
#include "xdp_guard.h"

static const char *const origins[] = { [GUARD_FROM_CONFIG] = "config", [GUARD_FROM_CLI] = "cli" };

static int list(int fd)
{
	struct guard_key k, next, *prev = NULL;

	while (!bpf_map_get_next_key(fd, prev, &next)) {
		char cidr[64];
		uint8_t v = 0;

		if (!bpf_map_lookup_elem(fd, &next, &v)) {
			xdp_guard_key_format(&next, cidr, sizeof(cidr));
			printf("%s %s\n", cidr, v < sizeof(origins) / sizeof(origins[0]) && origins[v] ? origins[v] : "?");
		}
		k = next;
		prev = &k;
	}
	return 0;
}

static int change(int fd, bool add, const char *arg)
{
	uint8_t origin = GUARD_FROM_CLI;
	struct guard_key k;
	struct cidr c;
	char cidr[64];

	if (parse_cidr(arg, &c)) {
		fprintf(stderr, "wsplice deny: '%s': expected an address or CIDR block (192.0.2.0/24, 2001:db8::/32)\n",
			arg);
		return 2;
	}
	k = xdp_guard_key(&c);
	xdp_guard_key_format(&k, cidr, sizeof(cidr));
	if (add ? bpf_map_update_elem(fd, &k, &origin, BPF_ANY) : bpf_map_delete_elem(fd, &k)) {
		fprintf(stderr, "wsplice deny: %s %s: %s\n", add ? "add" : "del", cidr,
			errno == ENOENT ? "not in the deny list" : strerror(errno));
		return 1;
	}
	printf("%s %s\n", add ? "denied" : "allowed again", cidr);
	return 0;
}

int deny_command(int argc, char **argv)
{
	const char *verb = argc > 2 ? argv[2] : "", *arg = NULL, *config_path = NULL;
	char bpffs[256] = "/sys/fs/bpf/wsplice", dir[300], path[400], errors[8192];
	int i = 3, fd, rc;

	if (strcmp(verb, "list") && strcmp(verb, "add") && strcmp(verb, "del")) {
		fprintf(stderr, "usage: wsplice deny add|del CIDR | deny list  [--bpffs DIR | -c FILE]\n");
		return 2;
	}
	if (strcmp(verb, "list")) {
		if (argc <= 3) {
			fprintf(stderr, "wsplice deny %s: which address or CIDR block?\n", verb);
			return 2;
		}
		arg = argv[i++];
	}
	for (; i < argc; i++) {
		if (!strcmp(argv[i], "--bpffs") && i + 1 < argc) {
			snprintf(bpffs, sizeof(bpffs), "%s", argv[++i]);
		} else if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
			config_path = argv[++i];
		} else {
			fprintf(stderr, "wsplice deny: unexpected '%s' (see --help)\n", argv[i]);
			return 2;
		}
	}
	if (config_path) {
		struct config *cfg = config_load_file(config_path, errors, sizeof(errors));

		if (!cfg) {
			fputs(errors, stderr);
			return 1;
		}
		snprintf(bpffs, sizeof(bpffs), "%s", cfg->bpffs);
		config_put(cfg);
	}
	xdp_guard_pin_dir(bpffs, dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/guard_deny", dir);
	fd = bpf_obj_get(path);
	if (fd < 0) {
		fprintf(stderr, "wsplice deny: %s: %s (is a wsplice with xdp = running on bpffs %s?)\n", path,
			strerror(errno), bpffs);
		return 1;
	}
	rc = arg ? change(fd, !strcmp(verb, "add"), arg) : list(fd);
	close(fd);
	return rc;
}
