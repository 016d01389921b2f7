#include <errno.h>
#include <fcntl.h>
#include <mntent.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cgroup.h"
#include "log.h"

#define OWN_MOUNT "/run/wsplice-cgroup2"

static int find_cgroup2(char *out, size_t len)
{
	FILE *f = setmntent("/proc/self/mounts", "r");
	struct mntent *m;
	int found = -1;

	if (!f)
		return -1;
	while (found < 0 && (m = getmntent(f))) {
		if (!strcmp(m->mnt_type, "cgroup2")) {
			snprintf(out, len, "%s", m->mnt_dir);
			found = 0;
		}
	}
	endmntent(f);
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
	char root[256], rel[4096], path[4400];

	cg->fd = -1;
	cg->mounted[0] = '\0';
	if (find_cgroup2(root, sizeof(root)) < 0) {
		if ((mkdir(OWN_MOUNT, 0700) < 0 && errno != EEXIST) || mount("cgroup2", OWN_MOUNT, "cgroup2", 0, NULL)) {
			snprintf(why, whylen, "no cgroup2 mount, and mounting one on %s failed: %s", OWN_MOUNT,
				 strerror(errno));
			return -1;
		}
		snprintf(root, sizeof(root), "%s", OWN_MOUNT);
		snprintf(cg->mounted, sizeof(cg->mounted), "%s", OWN_MOUNT);
		log_info("mounted cgroup2 on %s", OWN_MOUNT);
	}
	if (own_path(rel, sizeof(rel)) < 0) {
		snprintf(why, whylen, "/proc/self/cgroup names no cgroup v2 path");
		cgroup_close(cg);
		return -1;
	}
	snprintf(path, sizeof(path), "%s%s", root, rel);
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
