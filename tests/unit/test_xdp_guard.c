/* The XDP guard's deny keys: one LPM trie for both families, IPv4 as
 * IPv4-mapped IPv6, host bits cleared (so add and del of 10.1.2.3/8 name
 * one entry), and the way back for `wsplice deny list`. */
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

static void ipv4_is_mapped_and_host_bits_go(void **state)
{
	struct guard_key a = key_of("10.1.2.3/8"), b = key_of("10.0.0.0/8");
	static const unsigned char mapped[16] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 0 };

	(void)state;
	assert_memory_equal(a.addr, mapped, 16);
	assert_memory_equal(&a, &b, sizeof(a));
	round_trip("10.1.2.3/8", "10.0.0.0/8", 104);
	round_trip("192.0.2.7", "192.0.2.7/32", 128);
	round_trip("192.0.2.255/25", "192.0.2.128/25", 121);
	round_trip("0.0.0.0/0", "0.0.0.0/0", 96);
}

static void ipv6_keeps_its_prefix(void **state)
{
	(void)state;
	round_trip("2001:db8::1/32", "2001:db8::/32", 32);
	round_trip("fd78:1::2", "fd78:1::2/128", 128);
	round_trip("fd78:1::2/63", "fd78:1::/63", 63);
	round_trip("fd78:1::2/12", "fd70::/12", 12);
	round_trip("::/0", "::/0", 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(ipv4_is_mapped_and_host_bits_go),
		cmocka_unit_test(ipv6_keeps_its_prefix),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
