/*
 * The keyhold CLI's guardian commands without a guardian: every value is
 * checked before anything is sent (bad values, unknown or missing options
 * exit 2 with the reason on stderr, or one JSON error object), and an
 * unreachable guardian is a connection failure (exit 3) naming its port.
 * The commands against the real keyhold-guardian are the integration tests'.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kh_testutil.h"

static char keyhold_bin[PATH_MAX];
static char tmpdir[64];

static bool find_keyhold(void)
{
	return kh_test_built_bin("keyhold", "KEYHOLD_BIN", keyhold_bin, sizeof(keyhold_bin));
}

/* Run keyhold with args (NULL-terminated), no terminal, no KEYHOLD_GUARDIAN. */
static void run_cli(struct kh_test_run *r, const char *const *args)
{
	kh_test_run(r, keyhold_bin, tmpdir, args);
}

#define NEED_CLI()                                                                                 \
	do {                                                                                       \
		if (keyhold_bin[0] == '\0') {                                                      \
			print_message("keyhold binary not built: skipped\n");                      \
			skip();                                                                    \
		}                                                                                  \
	} while (0)

/* A port nothing listens on: the guardian is never reached by a test that
 * must fail before connecting, and a test that connects gets a refusal. */
static char dead_guardian[32];

struct usage_case {
	const char *args[24];
	const char *message;
};

static void expect_usage(const struct usage_case *c)
{
	struct kh_test_run r;
	const char *args[32];
	size_t n = 0;

	args[n++] = "--guardian";
	args[n++] = dead_guardian;
	args[n++] = "--user";
	args[n++] = "admin";
	args[n++] = "--password-file";
	args[n++] = "/nonexistent/pw";
	for (size_t i = 0; c->args[i]; i++)
		args[n++] = c->args[i];
	args[n] = NULL;
	run_cli(&r, args);
	if (r.rc != 2 || strstr(r.err, c->message) == NULL)
		print_message("%s %s: rc %d, stderr: %s\n", c->args[0], c->args[1], r.rc, r.err);
	assert_int_equal(r.rc, 2);
	assert_non_null(strstr(r.err, c->message));
	assert_string_equal(r.out, "");
}

static void test_bad_values_exit_2(void **state)
{
	static const struct usage_case cases[] = {
		{{"group", "add", "--name", "P", NULL}, "needs --name NAME and --port N"},
		{{"group", "add", "--name", "P", "--port", "70000", NULL},
		 "--port must be a number from 1 to 65535"},
		{{"group", "add", "--name", "P", "--port", "9200", "--option-balancing", "maybe", NULL},
		 "--option-balancing must be on or off, not 'maybe'"},
		{{"group", "add", "--name", "P", "--port", "9200", "--excrypt-conn", "TLS", NULL},
		 "--excrypt-conn must be Clear, SSL or 'Anonymous TLS', not 'TLS'"},
		{{"group", "add", "--name", "P", "--port", "9200", "--http-allow", "1", NULL},
		 "--http-allow must be on or off, not '1'"},
		{{"group", "add", "--name", "P", "--port", "9200", "--type", "KMS", NULL},
		 "--type must be HSM"},
		{{"group", "add", "--name", "P", "--port", "9200", "--frobnicate", NULL},
		 "unknown option '--frobnicate' (see 'group add --help')"},
		{{"group", "modify", "--name", "Q", NULL}, "needs --group G"},
		{{"group", "modify", "--group", "1", NULL}, "nothing to change"},
		{{"group", "modify", "--group", "1", "--international-conn", "anonymous", NULL},
		 "--international-conn must be Clear, SSL or 'Anonymous TLS'"},
		{{"group", "show", NULL}, "needs --group G"},
		{{"group", "check", NULL}, "needs --group G"},
		{{"group", "frobnicate", NULL}, "no command 'group frobnicate'"},
		{{"device", "add", "--group", "1", NULL}, "needs --group G and --host HOST"},
		{{"device", "add", "--group", "1", "--host", "h", "--role", "Secondary", NULL},
		 "--role must be Primary, Production or Backup, not 'Secondary'"},
		{{"device", "add", "--group", "1", "--host", "h", "--ping-timeout", "61", NULL},
		 "--ping-timeout must be 0.1 to 60 seconds"},
		{{"device", "add", "--group", "1", "--host", "h", "--ping-timeout", "5x", NULL},
		 "--ping-timeout must be 0.1 to 60 seconds"},
		{{"device", "add", "--group", "1", "--host", "h", "--admin-port", "0", NULL},
		 "--admin-port must be a number from 1 to 65535"},
		{{"device", "modify", "--device", "3", "--role", "Primary", NULL},
		 "--role must be Production or Backup, not 'Primary'"},
		{{"device", "modify", "--device", "3", NULL}, "nothing to change"},
		{{"device", "enable", NULL}, "needs --device ID"},
		{{"device", "disable", "--device", "x", NULL}, "--device must be a number"},
		{{"device", "promote", "--device", "3", "--old-primary-role", "Primary", NULL},
		 "--old-primary-role must be Production or Backup"},
		{{"device", "diagnose", "--device", "0", NULL}, "--device must be a number from 1"},
		{{"events", "--max", "1001", NULL}, "--max must be a number from 1 to 1000"},
		{{"events", "--device", "-1", NULL}, "--device must be a number"},
		{{"metrics", NULL}, "needs --device ID"},
		{{"metrics", "--device", "3", "--res", "5m", NULL}, "--res must be 10s or 1m, not '5m'"},
		{{"metrics", "--device", "3", "--from", "10", "--to", "5", NULL}, "--from is after --to"},
		{{"user", "add", "--name", "op", NULL}, "needs --name NAME and --role ROLE"},
		{{"user", "add", "--name", "op", "--role", "Operator", "--password", "x", NULL},
		 "unknown option '--password'"},
		{{"user", "role", "--role", "Administrator", "--logins-required", "3", NULL},
		 "--logins-required must be a number from 1 to 2"},
		{{"remote", NULL}, "needs --device ID"},
		{{"remote", "--device", "3", "frobnicate", NULL}, "no command 'frobnicate'"},
		{{"remote", "--device", "3", "connect", "--host", "x", NULL},
		 "'connect' cannot run through remote"},
	};
	(void)state;
	NEED_CLI();
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		expect_usage(&cases[i]);
}

static void test_guardian_address_and_connection(void **state)
{
	struct kh_test_run r;
	(void)state;
	NEED_CLI();

	const char *none[] = {"group", "list", NULL};
	run_cli(&r, none);
	assert_int_equal(r.rc, 2);
	assert_non_null(strstr(r.err, "no guardian: give --guardian HOST[:PORT]"));

	const char *badport[] = {"--guardian", "127.0.0.1:0", "group", "list", NULL};
	run_cli(&r, badport);
	assert_int_equal(r.rc, 2);
	assert_non_null(strstr(r.err, "--guardian: port must be a number from 1 to 65535"));

	const char *v6[] = {"--guardian", "::1:8080", "group", "list", NULL};
	run_cli(&r, v6);
	assert_int_equal(r.rc, 2);
	assert_non_null(strstr(r.err, "[ADDR]:PORT"));

	const char *both[] = {"--guardian", "h", "--password-fd", "3", "--password-file", "f",
			      "group", "list", NULL};
	run_cli(&r, both);
	assert_int_equal(r.rc, 2);

	/* nobody listens: exit 3, the guardian's port and the step named */
	const char *down[] = {"--guardian", dead_guardian, "--user", "admin", "--password-file",
			      "/nonexistent/pw", "group", "list", NULL};
	run_cli(&r, down);
	assert_int_equal(r.rc, 3);
	assert_non_null(strstr(r.err, "keyhold: group list: port "));
	assert_non_null(strstr(r.err, " (guardian): TCP connect: Connection refused"));

	const char *down_json[] = {"--json", "--guardian", dead_guardian, "--user", "admin",
				   "device", "list", NULL};
	run_cli(&r, down_json);
	assert_int_equal(r.rc, 3);
	assert_non_null(strstr(r.out, "{\"command\":\"device list\",\"ok\":false,\"code\":35,"
				      "\"error\":\"CONNECT\",\"message\":\"port "));

	/* a usage error in JSON mode: one object on stdout */
	const char *usage_json[] = {"--json", "--guardian", dead_guardian, "group", "add", "--name",
				    "P", "--port", "9200", "--excrypt-allow", "perhaps", NULL};
	run_cli(&r, usage_json);
	assert_int_equal(r.rc, 2);
	assert_string_equal(r.out, "{\"command\":\"group add\",\"ok\":false,\"code\":0,\"error\":"
				   "\"USAGE\",\"message\":\"--excrypt-allow must be on or off, not "
				   "'perhaps'\"}\n");
}

static void test_help(void **state)
{
	struct kh_test_run r;
	(void)state;
	NEED_CLI();

	const char *top[] = {"--help", NULL};
	run_cli(&r, top);
	assert_int_equal(r.rc, 0);
	assert_non_null(strstr(r.out, "--guardian HOST[:PORT]"));
	assert_non_null(strstr(r.out, "  remote "));

	const char *grp[] = {"group", "help", NULL};
	run_cli(&r, grp);
	assert_int_equal(r.rc, 0);
	for (const char *const *w = (const char *const[]){"add", "modify", "show", "list", "remove",
							   "check", "replication", NULL};
	     *w; w++) {
		char line[64];
		snprintf(line, sizeof(line), "  group %s ", *w);
		assert_non_null(strstr(r.out, line));
	}

	const char *dev[] = {"device", "--help", NULL};
	run_cli(&r, dev);
	assert_int_equal(r.rc, 0);
	for (const char *const *w = (const char *const[]){"add", "modify", "enable", "disable",
							   "remove", "promote", "sync", "diagnose",
							   "list", "show", NULL};
	     *w; w++) {
		char line[64];
		snprintf(line, sizeof(line), "  device %s ", *w);
		assert_non_null(strstr(r.out, line));
	}

	/* remote's own help, and the carried command's options left alone */
	const char *rem[] = {"remote", "--help", NULL};
	run_cli(&r, rem);
	assert_int_equal(r.rc, 0);
	assert_non_null(strstr(r.out, "usage: keyhold remote --device ID [COMMAND [OPTIONS...]]"));

	const char *add[] = {"help", "device", "add", NULL};
	run_cli(&r, add);
	assert_int_equal(r.rc, 0);
	assert_non_null(strstr(r.out, "--ping-timeout T"));
}

static int setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/kh_cligd_XXXXXX");
	if (mkdtemp(tmpdir) == NULL)
		return -1;
	snprintf(dead_guardian, sizeof(dead_guardian), "127.0.0.1:%u", kh_test_free_port());
	if (!find_keyhold())
		keyhold_bin[0] = '\0';
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];
	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bad_values_exit_2),
		cmocka_unit_test(test_guardian_address_and_connection),
		cmocka_unit_test(test_help),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
