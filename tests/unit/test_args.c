/* The command-line contract of issue #2. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "args.h"
#include "config_value.h"

#define ARGV(...) ((char *[]){ "wsplice", __VA_ARGS__, NULL })
#define ARGC(...) ((int)(sizeof((char *[]){ "wsplice", __VA_ARGS__ }) / sizeof(char *)))
#define PARSE(cfg, err, ...) args_parse(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), cfg, err, sizeof(err))

static void defaults_and_addresses(void **state)
{
	struct cli_options cfg;
	char err[256];

	(void)state;
	assert_int_equal(PARSE(&cfg, err, "--listen", "127.0.0.1:8080", "--upstream", "[::1]:3000"), ARGS_RUN);
	assert_string_equal(cfg.listen.host, "127.0.0.1");
	assert_string_equal(cfg.listen.port, "8080");
	assert_string_equal(cfg.upstream.host, "::1");
	assert_string_equal(cfg.upstream.port, "3000");
	assert_int_equal(cfg.mode, MODE_AUTO);
	assert_string_equal(cfg.bpffs, "/sys/fs/bpf/wsplice");
	assert_int_equal(cfg.tunnel_buffer, 4 << 20);
}

static void every_option(void **state)
{
	struct cli_options cfg;
	char err[256];

	(void)state;
	assert_int_equal(PARSE(&cfg, err, "-l", "localhost:1", "-u", "example.com:65535", "--mode", "copy",
			       "--bpffs", "/sys/fs/bpf/other", "--tunnel-buffer", "64k", "-v"),
			 ARGS_RUN);
	assert_string_equal(cfg.upstream.host, "example.com");
	assert_int_equal(cfg.mode, MODE_COPY);
	assert_string_equal(cfg.bpffs, "/sys/fs/bpf/other");
	assert_int_equal(cfg.tunnel_buffer, 65536);
	assert_int_equal(cfg.verbose, 1);
	assert_int_equal(PARSE(&cfg, err, "--help"), ARGS_HELP);
	assert_int_equal(PARSE(&cfg, err, "--version"), ARGS_VERSION);
}

static void errors_say_what_is_wrong(void **state)
{
	struct cli_options cfg;
	char err[256];

	(void)state;
	assert_int_equal(PARSE(&cfg, err, "--listen", "127.0.0.1:8080"), ARGS_ERROR);
	assert_non_null(strstr(err, "required"));
	assert_int_equal(PARSE(&cfg, err, "--listen", "1.2.3.4:http", "--upstream", "a:1"), ARGS_ERROR);
	assert_non_null(strstr(err, "port"));
	assert_int_equal(PARSE(&cfg, err, "--listen", "[::1:80", "--upstream", "a:1"), ARGS_ERROR);
	assert_non_null(strstr(err, "[IPv6]:port"));
	assert_int_equal(PARSE(&cfg, err, "--listen", "a:1", "--upstream", "a:1", "--mode", "x"), ARGS_ERROR);
	assert_non_null(strstr(err, "--mode"));
	assert_int_equal(PARSE(&cfg, err, "--listen", "a:1", "--upstream", "a:1", "--bpffs", "rel"), ARGS_ERROR);
	assert_int_equal(PARSE(&cfg, err, "--listen", "a:1", "--upstream", "a:1", "extra"), ARGS_ERROR);
	assert_non_null(strstr(err, "unexpected argument 'extra'"));
}

static void sizes(void **state)
{
	uint64_t v;

	(void)state;
	assert_int_equal(parse_size("4M", &v), 0);
	assert_int_equal(v, 4 << 20);
	assert_int_equal(parse_size("1GiB", &v), 0);
	assert_int_equal(v, 1u << 30);
	assert_int_equal(parse_size("123", &v), 0);
	assert_int_equal(v, 123);
	assert_int_equal(parse_size("-1", &v), -1);
	assert_int_equal(parse_size("1T", &v), -1);
	assert_int_equal(parse_size("", &v), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(defaults_and_addresses),
		cmocka_unit_test(every_option),
		cmocka_unit_test(errors_say_what_is_wrong),
		cmocka_unit_test(sizes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
