#include <errno.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/ethtool.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/sockios.h>
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

/* A request's header: a single get (no dump) of type, with a body of
 * body bytes after it (zeroed by the caller). */
static void nl_request(struct nlmsghdr *n, size_t body, unsigned short type)
{
	n->nlmsg_len = NLMSG_LENGTH(body);
	n->nlmsg_type = type;
	n->nlmsg_flags = NLM_F_REQUEST;
	n->nlmsg_seq = 1;
}

/* One request to the kernel's rtnetlink, its answer into ans; the bytes
 * received, or -1 with errno. */
static ssize_t nl_ask(const struct nlmsghdr *req, void *ans, size_t cap)
{
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	ssize_t got = -1;
	int err;

	if (fd < 0)
		return -1;
	if (sendto(fd, req, req->nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) >= 0)
		got = recv(fd, ans, cap, 0);
	err = errno;
	close(fd);
	errno = err;
	return got;
}

/* The route from me to peer: its output interface, and the next hop (the
 * gateway, or peer itself on a link route). */
static int route_of(const struct sockaddr_storage *me, const struct sockaddr_storage *peer, unsigned *ifindex,
		    struct addr *next)
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
	bool odd_hop = false;
	int err;
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
	nl_request(&req.n, sizeof(req.r), RTM_GETROUTE);
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

	got = nl_ask(&req.n, &ans, sizeof(ans));
	if (got < 0)
		return -1;
	if (next)
		*next = dst;
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
			} else if (a->rta_type == RTA_GATEWAY && next && RTA_PAYLOAD(a) == dst.len) {
				memcpy(next->bytes, RTA_DATA(a), dst.len);
			} else if ((a->rta_type == RTA_GATEWAY || a->rta_type == RTA_VIA) && next) {
				odd_hop = true; /* another family's next hop: not followed */
			}
		}
		break;
	}
	if (!err && odd_hop)
		err = ENODEV;
	if (err) {
		errno = err;
		return -1;
	}
	return 0;
}

int ifroute_oif(const struct sockaddr_storage *me, const struct sockaddr_storage *peer, unsigned *ifindex)
{
	return route_of(me, peer, ifindex, NULL);
}

/* The link-layer address of next's neighbour entry on ifindex, when the
 * entry is valid (resolved, or static). */
static int neighbour_of(unsigned ifindex, const struct addr *next, uint8_t mac[6])
{
	struct {
		struct nlmsghdr n;
		struct ndmsg nd;
		char attrs[32];
	} req;
	union {
		struct nlmsghdr n;
		char buf[1024];
	} ans;
	ssize_t got;
	int len;

	memset(&req, 0, sizeof(req));
	nl_request(&req.n, sizeof(req.nd), RTM_GETNEIGH);
	req.nd.ndm_family = (unsigned char)next->family;
	req.nd.ndm_ifindex = (int)ifindex;
	put_attr(&req.n, NDA_DST, next->bytes, next->len);
	got = nl_ask(&req.n, &ans, sizeof(ans));
	if (got < 0)
		return -1;
	len = (int)got;
	for (struct nlmsghdr *n = &ans.n;
	     len >= (int)sizeof(*n) && n->nlmsg_len >= sizeof(*n) && n->nlmsg_len <= (unsigned)len;
	     n = NLMSG_NEXT(n, len)) {
		const struct ndmsg *nd = NLMSG_DATA(n);
		int left;

		if (n->nlmsg_type != RTM_NEWNEIGH || n->nlmsg_len < NLMSG_LENGTH(sizeof(*nd)))
			break;
		if (!(nd->ndm_state & (NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT)))
			break;
		left = (int)(n->nlmsg_len - NLMSG_LENGTH(sizeof(*nd)));
		for (struct rtattr *a = (struct rtattr *)((char *)nd + NLMSG_ALIGN(sizeof(*nd))); RTA_OK(a, left);
		     a = RTA_NEXT(a, left)) {
			if (a->rta_type == NDA_LLADDR && RTA_PAYLOAD(a) == 6) {
				memcpy(mac, RTA_DATA(a), 6);
				return 0;
			}
		}
		break;
	}
	errno = ENOENT;
	return -1;
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

/* Whether ifindex's link peer lives in another network namespace (a veth
 * whose other end was moved: rtnetlink names the peer's namespace). */
static bool peer_elsewhere(unsigned ifindex)
{
	struct {
		struct nlmsghdr n;
		struct ifinfomsg i;
	} req;
	union {
		struct nlmsghdr n;
		char buf[8192];
	} ans;
	ssize_t got;
	int left;

	memset(&req, 0, sizeof(req));
	nl_request(&req.n, sizeof(req.i), RTM_GETLINK);
	req.i.ifi_family = AF_UNSPEC;
	req.i.ifi_index = (int)ifindex;
	got = nl_ask(&req.n, &ans, sizeof(ans));
	if (got < (ssize_t)NLMSG_LENGTH(sizeof(struct ifinfomsg)) || ans.n.nlmsg_type != RTM_NEWLINK ||
	    ans.n.nlmsg_len > (unsigned)got)
		return false;
	left = (int)(ans.n.nlmsg_len - NLMSG_LENGTH(sizeof(struct ifinfomsg)));
	for (struct rtattr *a = IFLA_RTA(NLMSG_DATA(&ans.n)); RTA_OK(a, left); a = RTA_NEXT(a, left))
		if (a->rta_type == IFLA_LINK_NETNSID)
			return true;
	return false;
}

int ifroute_veth_frame(const struct sockaddr_storage *me, const struct sockaddr_storage *peer, unsigned dev,
		       uint8_t eth[12])
{
	struct ifreq ifr;
	struct ethtool_drvinfo info = { .cmd = ETHTOOL_GDRVINFO };
	struct addr next;
	unsigned ifindex;

	if (route_of(me, peer, &ifindex, &next))
		return -1;
	if (ifindex != dev) { /* the route changed since the caller asked */
		errno = ENODEV;
		return -1;
	}
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_ifindex = (int)ifindex;
	if (!if_ioctl(SIOCGIFNAME, &ifr, 0))
		return -1;
	ifr.ifr_data = (void *)&info; /* the index's union member: the name stays */
	/* bpf_redirect_peer drops a frame whose peer is in this namespace. */
	if (!if_ioctl(SIOCETHTOOL, &ifr, 0) || strcmp(info.driver, "veth") || !peer_elsewhere(ifindex)) {
		errno = ENODEV;
		return -1;
	}
	if (!if_ioctl(SIOCGIFHWADDR, &ifr, 0) || ifr.ifr_hwaddr.sa_family != ARPHRD_ETHER)
		return -1;
	memcpy(eth + 6, ifr.ifr_hwaddr.sa_data, 6);
	return neighbour_of(ifindex, &next, eth);
}
