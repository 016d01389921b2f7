#include <errno.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include "ifroute.h"

struct addr {
	int family;
	size_t len;
	unsigned char bytes[16];
};

/* An IPv4-mapped address routes as IPv4: the segments on the wire are. */
static void addr_of(const struct sockaddr_storage *a, struct addr *out)
{
	if (a->ss_family == AF_INET) {
		out->family = AF_INET;
		out->len = 4;
		memcpy(out->bytes, &((const struct sockaddr_in *)a)->sin_addr, 4);
		return;
	}
	const struct in6_addr *x = &((const struct sockaddr_in6 *)a)->sin6_addr;

	if (IN6_IS_ADDR_V4MAPPED(x)) {
		out->family = AF_INET;
		out->len = 4;
		memcpy(out->bytes, &x->s6_addr[12], 4);
	} else {
		out->family = AF_INET6;
		out->len = 16;
		memcpy(out->bytes, x, 16);
	}
}

static void put_attr(struct nlmsghdr *n, unsigned short type, const void *data, size_t len)
{
	struct rtattr *rta = (struct rtattr *)((char *)n + NLMSG_ALIGN(n->nlmsg_len));

	rta->rta_type = type;
	rta->rta_len = (unsigned short)RTA_LENGTH(len);
	memcpy(RTA_DATA(rta), data, len);
	n->nlmsg_len = NLMSG_ALIGN(n->nlmsg_len) + RTA_ALIGN(rta->rta_len);
}

int ifroute_oif(const struct sockaddr_storage *me, const struct sockaddr_storage *peer, unsigned *ifindex)
{
	struct {
		struct nlmsghdr n;
		struct rtmsg r;
		char attrs[64];
	} req;
	union {
		struct nlmsghdr n;
		char buf[4096];
	} ans;
	struct addr src, dst;
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	int fd, err = 0;
	ssize_t got;
	int len;

	if ((me->ss_family != AF_INET && me->ss_family != AF_INET6) ||
	    (peer->ss_family != AF_INET && peer->ss_family != AF_INET6)) {
		errno = EAFNOSUPPORT;
		return -1;
	}
	addr_of(me, &src);
	addr_of(peer, &dst);
	if (src.family != dst.family) {
		errno = EAFNOSUPPORT;
		return -1;
	}
	memset(&req, 0, sizeof(req));
	req.n.nlmsg_len = NLMSG_LENGTH(sizeof(req.r));
	req.n.nlmsg_type = RTM_GETROUTE;
	req.n.nlmsg_flags = NLM_F_REQUEST;
	req.n.nlmsg_seq = 1;
	req.r.rtm_family = (unsigned char)dst.family;
	req.r.rtm_dst_len = (unsigned char)(8 * dst.len);
	req.r.rtm_src_len = (unsigned char)(8 * src.len);
	put_attr(&req.n, RTA_DST, dst.bytes, dst.len);
	put_attr(&req.n, RTA_SRC, src.bytes, src.len);
	/* A link-local peer is reached through its scope's device, which
	 * the address alone does not name. */
	if (peer->ss_family == AF_INET6 && ((const struct sockaddr_in6 *)peer)->sin6_scope_id) {
		int oif = (int)((const struct sockaddr_in6 *)peer)->sin6_scope_id;

		put_attr(&req.n, RTA_OIF, &oif, sizeof(oif));
	}

	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		return -1;
	if (sendto(fd, &req, req.n.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) {
		err = errno;
		goto out;
	}
	got = recv(fd, &ans, sizeof(ans), 0);
	if (got < 0) {
		err = errno;
		goto out;
	}
	err = ENOENT;
	len = (int)got;
	/* NLMSG_OK by hand: the macro compares the unsigned nlmsg_len with
	 * len, which must stay signed for its own len >= header test. */
	for (struct nlmsghdr *n = &ans.n;
	     len >= (int)sizeof(*n) && n->nlmsg_len >= sizeof(*n) && n->nlmsg_len <= (unsigned)len;
	     n = NLMSG_NEXT(n, len)) {
		if (n->nlmsg_type == NLMSG_ERROR) {
			const struct nlmsgerr *e = NLMSG_DATA(n);

			if (n->nlmsg_len >= NLMSG_LENGTH(sizeof(*e)))
				err = e->error ? -e->error : ENOENT;
			break;
		}
		if (n->nlmsg_type != RTM_NEWROUTE)
			continue;
		int left = (int)RTM_PAYLOAD(n);

		for (struct rtattr *a = RTM_RTA(NLMSG_DATA(n)); RTA_OK(a, left); a = RTA_NEXT(a, left)) {
			if (a->rta_type == RTA_OIF && RTA_PAYLOAD(a) >= sizeof(int)) {
				int oif;

				memcpy(&oif, RTA_DATA(a), sizeof(oif));
				*ifindex = (unsigned)oif;
				err = 0;
			}
		}
		break;
	}
out:
	close(fd);
	if (err) {
		errno = err;
		return -1;
	}
	return 0;
}

/* One or two interface ioctls on a throwaway socket, in order; false when
 * one fails. */
static bool if_ioctl(unsigned long req, struct ifreq *ifr, unsigned long then)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	bool ok;

	if (fd < 0)
		return false;
	ok = !ioctl(fd, req, ifr) && (!then || !ioctl(fd, then, ifr));
	close(fd);
	return ok;
}

bool ifroute_is_ethernet(const char *name)
{
	struct ifreq ifr = { 0 };

	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	return if_ioctl(SIOCGIFHWADDR, &ifr, 0) && ifr.ifr_hwaddr.sa_family == ARPHRD_ETHER;
}

unsigned ifroute_mtu(unsigned ifindex)
{
	struct ifreq ifr = { .ifr_ifindex = (int)ifindex };

	/* The name from the index, then the MTU by name: one socket, where
	 * if_indextoname would open its own (a hand-over asks twice). */
	if (!if_ioctl(SIOCGIFNAME, &ifr, SIOCGIFMTU) || ifr.ifr_mtu < 0)
		return 0;
	return (unsigned)ifr.ifr_mtu;
}
