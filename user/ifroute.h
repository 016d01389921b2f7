/* Which network interface a socket's segments to its peer leave by, as the
 * kernel's routing table says (what `ip route get` asks, over rtnetlink). */
#ifndef WSPLICE_IFROUTE_H
#define WSPLICE_IFROUTE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

/* The output interface of the route from me to peer (AF_INET, AF_INET6 or
 * IPv4-mapped AF_INET6); a local destination's is lo. 0 with *ifindex set,
 * or -1 with errno. */
int ifroute_oif(const struct sockaddr_storage *me, const struct sockaddr_storage *peer, unsigned *ifindex);

/* Whether name's frames have an Ethernet header (veth, a NIC, a bridge),
 * unlike a tun, a WireGuard or an ip tunnel device. */
bool ifroute_is_ethernet(const char *name);

/* Where the route from me to peer leaves by dev, a veth: the Ethernet header
 * its frames carry, the next hop's address from the neighbour entry
 * (destination) then the veth's own (source). 0, or -1 with errno (not a
 * veth, or the route now leaves by another device: ENODEV; no valid
 * neighbour entry: ENOENT). */
int ifroute_veth_frame(const struct sockaddr_storage *me, const struct sockaddr_storage *peer, unsigned dev,
		       uint8_t eth[12]);

/* The device's MTU now, or 0 when it cannot be read (gone). */
unsigned ifroute_mtu(unsigned ifindex);

#endif
