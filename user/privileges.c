/* Dropping from root to a configured user: set the groups and ids, clear
 * every capability set with libcap (the ambient ones systemd may have
 * given too), and check that root cannot be taken back. */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/capability.h>
#include <unistd.h>
#include "privileges.h"

int privileges_drop(const char *user, char *err, size_t errlen)
{
	struct passwd *pw = getpwnam(user);
	cap_t caps;
	int rc;

	if (!pw) {
		snprintf(err, errlen, "user '%s': no such user", user);
		return -1;
	}
	if (!pw->pw_uid) {
		snprintf(err, errlen, "user '%s' is root: name the user the workers should run as", user);
		return -1;
	}
	if (initgroups(user, pw->pw_gid) || setgid(pw->pw_gid) || setuid(pw->pw_uid)) {
		snprintf(err, errlen, "cannot become user '%s': %s", user, strerror(errno));
		return -1;
	}
	/* setuid() cleared the permitted and effective sets, not the ambient
	 * and inheritable ones a unit's AmbientCapabilities= filled. */
	caps = cap_init();
	rc = !caps || cap_set_proc(caps) || cap_reset_ambient();
	cap_free(caps);
	if (rc) {
		snprintf(err, errlen, "user '%s': cannot clear the capabilities: %s", user, strerror(errno));
		return -1;
	}
	if (setuid(0) == 0 || geteuid() != pw->pw_uid) {
		snprintf(err, errlen, "user '%s': root could be taken back", user);
		return -1;
	}
	return 0;
}
