/* Dropping from root to a configured user with libcap: set the groups and
 * ids with PR_SET_KEEPCAPS on, then cut the capability sets down to CAP_BPF
 * (see privileges.h for why that one stays), and check that root cannot be
 * taken back. */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <unistd.h>
#include "privileges.h"

int privileges_drop(const char *user, char *err, size_t errlen)
{
	static const cap_value_t keep[] = { CAP_BPF };
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
	if (prctl(PR_SET_KEEPCAPS, 1) || initgroups(user, pw->pw_gid) || setgid(pw->pw_gid) ||
	    setuid(pw->pw_uid)) {
		snprintf(err, errlen, "cannot become user '%s': %s", user, strerror(errno));
		return -1;
	}
	prctl(PR_SET_KEEPCAPS, 0);
	caps = cap_init();
	rc = !caps || cap_set_flag(caps, CAP_PERMITTED, 1, keep, CAP_SET) ||
	     cap_set_flag(caps, CAP_EFFECTIVE, 1, keep, CAP_SET) || cap_set_proc(caps);
	cap_free(caps);
	if (rc) {
		snprintf(err, errlen, "user '%s': cannot keep CAP_BPF: %s", user, strerror(errno));
		return -1;
	}
	if (setuid(0) == 0 || geteuid() != pw->pw_uid) {
		snprintf(err, errlen, "user '%s': root could be taken back", user);
		return -1;
	}
	return 0;
}
