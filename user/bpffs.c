#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include "bpffs.h"
#include "log.h"

static bool on_bpffs(const char *path)
{
	struct statfs st;

	return !statfs(path, &st) && st.f_type == BPF_FS_MAGIC;
}

/* The pin directory must sit on a bpf filesystem; mount the standard one if
 * nothing is mounted there yet, as Cilium does. */
static int ensure_bpffs(const char *dir, bool inner, char *why, size_t whylen)
{
	char parent[256];
	char *slash;

	snprintf(parent, sizeof(parent), "%s", dir);
	slash = strrchr(parent, '/');
	if (slash == parent)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	if (on_bpffs(parent))
		return 0;
	if (!strcmp(parent, "/sys/fs/bpf")) {
		if (!mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700")) {
			log_info("mounted a bpf filesystem on /sys/fs/bpf");
			return 0;
		}
		snprintf(why, whylen, "cannot mount bpffs on /sys/fs/bpf: %s", strerror(errno));
		return -1;
	}
	/* A directory inside an instance's pin directory (one level: the
	 * guard's BPFFS/xdp): make that first. */
	if (inner && slash && slash != parent && !ensure_bpffs(parent, false, why, whylen)) {
		if (mkdir(parent, 0700) < 0 && errno != EEXIST) {
			snprintf(why, whylen, "cannot create %s: %s", parent, strerror(errno));
			return -1;
		}
		return 0;
	}
	snprintf(why, whylen, "%s is not on a bpf filesystem (mount -t bpf bpf %s)", dir, parent);
	return -1;
}

#define LOCK_WAIT_MS 2000

int bpffs_lock_dir(const char *dir, bool inner, char *why, size_t whylen)
{
	int fd;

	if (ensure_bpffs(dir, inner, why, whylen))
		return -1;
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		snprintf(why, whylen, "cannot create %s: %s", dir, strerror(errno));
		return -1;
	}
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	for (int i = 0; fd >= 0 && i < LOCK_WAIT_MS / 20 && flock(fd, LOCK_EX | LOCK_NB) < 0; i++)
		usleep(20000);
	if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
		snprintf(why, whylen, "%s is in use by another wsplice (choose another --bpffs)", dir);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}
