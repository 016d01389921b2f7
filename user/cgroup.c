#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cgroup.h"
#include "log.h"

#define OWN_MOUNT "/run/wsplice-cgroup2"

/* The directory of the cgroup rel (a path from the v2 hierarchy's root)
 * under a cgroup2 mount that contains it: a container's mount may show only
 * a subtree (mountinfo's root field), which rel then starts with. */
static int find_in_mounts(const char *rel, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "r");
	char line[4096];
	int found = -1;

	if (!f)
		return -1;
	while (found < 0 && fgets(line, sizeof(line), f)) {
		char root[1024], point[1024];
		const char *sep = strstr(line, " - ");
		size_t rl;

		if (!sep || strncmp(sep + 3, "cgroup2 ", 8) || sscanf(line, "%*s %*s %*s %1023s %1023s", root, point) != 2)
			continue;
		rl = strcmp(root, "/") ? strlen(root) : 0;
		if (strncmp(rel, root, rl) || (rel[rl] && rel[rl] != '/'))
			continue;
		snprintf(out, len, "%s%s", point, rel + rl);
		found = 0;
	}
	fclose(f);
	return found;
}

/* The "0::/path" line of /proc/self/cgroup: the v2 hierarchy's path. */
static int own_path(char *out, size_t len)
{
	FILE *f = fopen("/proc/self/cgroup", "r");
	char line[4096];
	int found = -1;

	if (!f)
		return -1;
	while (found < 0 && fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "0::", 3)) {
			line[strcspn(line, "\n")] = '\0';
			snprintf(out, len, "%s", line + 3);
			found = 0;
		}
	}
	fclose(f);
	return found;
}

int cgroup_open_self(struct cgroup_dir *cg, char *why, size_t whylen)
{
	char rel[4096], path[5200];

	cg->fd = -1;
	cg->mounted[0] = '\0';
	/* /proc/self/cgroup shows the v2 line only once a cgroup2 hierarchy has
	 * been mounted somewhere (seen on Debian's 6.12 in the VM). */
	if (own_path(rel, sizeof(rel)) < 0 || find_in_mounts(rel, path, sizeof(path)) < 0) {
		/* A host with cgroup v1 only: the process is in the v2 root. */
		if ((mkdir(OWN_MOUNT, 0700) < 0 && errno != EEXIST) || mount("cgroup2", OWN_MOUNT, "cgroup2", 0, NULL)) {
			snprintf(why, whylen, "no cgroup2 mount, and mounting one on %s failed: %s", OWN_MOUNT,
				 strerror(errno));
			return -1;
		}
		snprintf(cg->mounted, sizeof(cg->mounted), "%s", OWN_MOUNT);
		if (own_path(rel, sizeof(rel)) < 0) {
			snprintf(why, whylen, "/proc/self/cgroup names no cgroup v2 path");
			cgroup_close(cg);
			return -1;
		}
		snprintf(path, sizeof(path), "%s%s", OWN_MOUNT, rel);
		log_info("mounted cgroup2 on %s: the pause program sees every socket of the host's root cgroup "
			 "(it flags only the configured ports' sockets)", OWN_MOUNT);
	}
	cg->fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cg->fd < 0) {
		snprintf(why, whylen, "cannot open the cgroup %s: %s", path, strerror(errno));
		cgroup_close(cg);
		return -1;
	}
	log_debug("sock_ops attaches to the cgroup %s", path);
	return 0;
}

void cgroup_close(struct cgroup_dir *cg)
{
	if (cg->fd >= 0)
		close(cg->fd);
	cg->fd = -1;
	if (cg->mounted[0]) {
		umount2(cg->mounted, MNT_DETACH);
		rmdir(cg->mounted);
		cg->mounted[0] = '\0';
	}
}
