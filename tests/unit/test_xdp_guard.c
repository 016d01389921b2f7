/* The XDP guard's deny keys: one LPM trie for both families, the family
 * byte first (so no IPv6 block covers IPv4), host bits cleared (so add and
 * del of 10.1.2.3/8 name one entry), and the way back for `wsplice deny
 * list`. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "config_value.h"
#include "xdp_guard.h"

static struct guard_key key_of(const char *s)
{
	struct cidr c;

	assert_int_equal(parse_cidr(s, &c), 0);
	return xdp_guard_key(&c);
}

static void round_trip(const char *in, const char *out, unsigned prefixlen)
{
	struct guard_key k = key_of(in);
	char text[64];

	assert_int_equal(k.prefixlen, prefixlen);
	xdp_guard_key_format(&k, text, sizeof(text));
	assert_string_equal(text, out);
}

static void ipv4_has_its_family_and_host_bits_go(void **state)
{
	struct guard_key a = key_of("10.1.2.3/8"), b = key_of("10.0.0.0/8"), v6 = key_of("::/0");
	static const unsigned char ten[16] = { 10 };

	(void)state;
	assert_int_equal(a.family, 4);
	assert_memory_equal(a.addr, ten, 16);
	assert_memory_equal(&a, &b, sizeof(a));
	/* ::/0 is every IPv6 source, and no IPv4 one: the family differs
	 * within the key's first 8 bits, which every entry matches on. */
	assert_int_equal(v6.family, 6);
	assert_int_equal(v6.prefixlen, 8);
	round_trip("10.1.2.3/8", "10.0.0.0/8", 16);
	round_trip("192.0.2.7", "192.0.2.7/32", 40);
	round_trip("192.0.2.255/25", "192.0.2.128/25", 33);
	round_trip("0.0.0.0/0", "0.0.0.0/0", 8);
}

static void ipv6_keeps_its_prefix(void **state)
{
	(void)state;
	round_trip("2001:db8::1/32", "2001:db8::/32", 40);
	round_trip("fd78:1::2", "fd78:1::2/128", 136);
	round_trip("fd78:1::2/63", "fd78:1::/63", 71);
	round_trip("fd78:1::2/12", "fd70::/12", 20);
	round_trip("::/0", "::/0", 8);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(ipv4_has_its_family_and_host_bits_go),
		cmocka_unit_test(ipv6_keeps_its_prefix),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
