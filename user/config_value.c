#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "config_value.h"

const char *mode_name(enum tunnel_mode m)
{
	static const char *const names[MODE_COUNT] = { "auto", "sockmap", "splice", "copy", "tcsplice" };

	return names[m];
}

enum tunnel_mode route_mode(const struct route *r, enum tunnel_mode daemon)
{
	if (r->no_express && (r->mode == MODE_AUTO ? daemon : r->mode) == MODE_TCSPLICE)
		return MODE_COPY;
	return r->mode;
}

int parse_mode(const char *s, enum tunnel_mode *m)
{
	for (int i = MODE_AUTO; i < MODE_COUNT; i++) {
		if (!strcmp(s, mode_name(i))) {
			*m = i;
			return 0;
		}
	}
	return -1;
}

int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	int shift = 0;

	if (!*s || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -1;
	switch (tolower((unsigned char)*end)) {
	case '\0': break;
	case 'k': shift = 10; end++; break;
	case 'm': shift = 20; end++; break;
	case 'g': shift = 30; end++; break;
	default: return -1;
	}
	if (*end == 'i' || *end == 'I')
		end++;
	if (*end == 'b' || *end == 'B')
		end++;
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -1;
	*out = (uint64_t)v << shift;
	return 0;
}

int parse_duration_ms(const char *s, uint64_t *out_ms)
{
	static const struct { const char *unit; uint64_t ms; } units[] = {
		{ "", 1000 }, { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 },
	};
	char *end;
	unsigned long long v;

	if (!strcasecmp(s, "off")) {
		*out_ms = 0;
		return 0;
	}
	if (!isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || v > 1000000000ULL)
		return -1;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (!strcmp(end, units[i].unit)) {
			*out_ms = v * units[i].ms;
			return 0;
		}
	}
	return -1;
}

int parse_bool(const char *s, bool *out)
{
	static const char *yes[] = { "on", "yes", "true", "1" }, *no[] = { "off", "no", "false", "0" };

	for (int i = 0; i < 4; i++) {
		if (!strcasecmp(s, yes[i]) || !strcasecmp(s, no[i])) {
			*out = !strcasecmp(s, yes[i]);
			return 0;
		}
	}
	return -1;
}

int parse_cidr(const char *s, struct cidr *out)
{
	char addr[INET6_ADDRSTRLEN + 1];
	const char *slash = strchr(s, '/');
	size_t len = slash ? (size_t)(slash - s) : strlen(s);
	unsigned max;

	if (!len || len >= sizeof(addr))
		return -1;
	memcpy(addr, s, len);
	addr[len] = '\0';
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, addr, out->addr) == 1) {
		out->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, addr, out->addr) == 1) {
		out->family = AF_INET6;
		max = 128;
	} else {
		return -1;
	}
	out->prefix = max;
	if (slash) {
		char *end;
		long p;

		errno = 0;
		p = strtol(slash + 1, &end, 10);
		if (!slash[1] || *end || errno || p < 0 || (unsigned long)p > max)
			return -1;
		out->prefix = (unsigned)p;
	}
	return 0;
}

static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
	unsigned bytes = bits / 8, rest = bits % 8;

	if (memcmp(a, b, bytes))
		return false;
	return !rest || !((a[bytes] ^ b[bytes]) & (uint8_t)(0xff << (8 - rest)));
}

bool cidr_contains(const struct cidr *c, const struct sockaddr *sa)
{
	static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		return c->family == AF_INET && prefix_equal(c->addr, (const uint8_t *)&in->sin_addr, c->prefix);
	}
	if (sa->sa_family == AF_INET6) {
		const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;

		if (c->family == AF_INET6)
			return prefix_equal(c->addr, a, c->prefix);
		/* A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d. */
		return !memcmp(a, v4mapped, 12) && prefix_equal(c->addr, a + 12, c->prefix);
	}
	return false;
}

int endpoint_split(const char *spec, struct endpoint *ep, char *err, size_t errlen)
{
	const char *colon, *host = spec;
	size_t hostlen;
	char *end;
	long port;

	if (spec[0] == '[') {
		const char *close = strchr(spec, ']');

		if (!close || close[1] != ':') {
			snprintf(err, errlen, "'%s': expected [IPv6]:port", spec);
			return -1;
		}
		host = spec + 1;
		hostlen = close - host;
		colon = close + 1;
	} else {
		colon = strrchr(spec, ':');
		if (!colon || colon == spec) {
			snprintf(err, errlen, "'%s': expected host:port", spec);
			return -1;
		}
		if (memchr(spec, ':', colon - spec)) {
			snprintf(err, errlen, "'%s': an IPv6 address needs brackets, as in [::1]:8080", spec);
			return -1;
		}
		hostlen = colon - spec;
	}
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (!colon[1] || *end || errno || port < 1 || port > 65535) {
		snprintf(err, errlen, "'%s': port must be 1-65535", spec);
		return -1;
	}
	if (hostlen == 0 || hostlen >= sizeof(ep->host)) {
		snprintf(err, errlen, "'%s': bad host", spec);
		return -1;
	}
	memset(ep, 0, sizeof(*ep));
	memcpy(ep->host, host, hostlen);
	ep->host[hostlen] = '\0';
	snprintf(ep->port, sizeof(ep->port), "%ld", port);
	return 0;
}
