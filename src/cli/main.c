/*
 * keyhold, the administration CLI (the FXCLI role): global options, the
 * command table, and the three ways to run (one command, a script on one
 * connection, an interactive prompt). Secrets are never taken from argv and
 * never written to the history file.
 */
#include "cli/cli.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <editline/readline.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LINE_MAX_BYTES 65536
#define LINE_MAX_ARGS 128

static const struct cli_optdef global_opts[] = {
	{"console", 0, CLI_VALUE, "PATH", "the HSM's local console socket (env KEYHOLD_CONSOLE)"},
	{"host", 0, CLI_VALUE, "HOST", "the HSM's host name or address (default 127.0.0.1)"},
	{"port", 0, CLI_VALUE, "N", "the HSM's port (default 9009, Admin)"},
	{"ca", 0, CLI_VALUE, "FILE", "PEM CA certificate(s) to verify the HSM with"},
	{"cert", 0, CLI_VALUE, "FILE", "PEM client certificate"},
	{"key", 0, CLI_VALUE, "FILE", "PEM client key"},
	{"no-tls", 0, CLI_FLAG, NULL, "plain TCP (a port in clear mode)"},
	{"json", 0, CLI_FLAG, NULL, "one JSON object per command"},
	{"file", 'f', CLI_VALUE, "FILE", "run commands from FILE, one per line"},
	{"keep-going", 0, CLI_FLAG, NULL, "in a script, go on after a failed command"},
	{"timeout", 0, CLI_VALUE, "SEC", "connect timeout and I/O timeout (default 10 s connect, 30 s I/O)"},
	{"guardian", 0, CLI_VALUE, "HOST[:PORT]",
	 "keyhold-guardian's API (default port 8080; env KEYHOLD_GUARDIAN)"},
	{"guardian-ca", 0, CLI_VALUE, "FILE", "PEM CA to verify the guardian with (default: --ca)"},
	{"user", 0, CLI_VALUE, "NAME", "guardian user (asked on the terminal if absent)"},
	{"password-fd", 0, CLI_VALUE, "N", "the guardian user's password from descriptor N"},
	{"password-file", 0, CLI_VALUE, "FILE", "the guardian user's password from FILE"},
	{"user2", 0, CLI_VALUE, "NAME", "second guardian user, for a role that needs 2 logins"},
	{"password2-fd", 0, CLI_VALUE, "N", "the second user's password from descriptor N"},
	{"password2-file", 0, CLI_VALUE, "FILE", "the second user's password from FILE"},
	{"help", 'h', CLI_FLAG, NULL, "this help"},
	{"version", 0, CLI_FLAG, NULL, "print the version"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef connect_opts[] = {
	{"console", 0, CLI_VALUE, "PATH", "the HSM's local console socket"},
	{"host", 0, CLI_VALUE, "HOST", "the HSM's host name or address"},
	{"port", 0, CLI_VALUE, "N", "the HSM's port (default 9009)"},
	{"ca", 0, CLI_VALUE, "FILE", "PEM CA certificate(s) to verify the HSM with"},
	{"cert", 0, CLI_VALUE, "FILE", "PEM client certificate"},
	{"key", 0, CLI_VALUE, "FILE", "PEM client key"},
	{"no-tls", 0, CLI_FLAG, NULL, "plain TCP"},
	{"timeout", 0, CLI_VALUE, "SEC", "connect and I/O timeout"},
	{NULL, 0, 0, NULL, NULL},
};

static int cmd_connect(struct cli *cli, struct cli_args *a);
static int cmd_help(struct cli *cli, struct cli_args *a);

const struct cli_cmd cli_commands[] = {
	{"connect", cmd_connect, connect_opts,
	 "--console PATH | --host HOST [--port N] [--ca F --cert F --key F] [--no-tls]",
	 "connect (again) to an HSM; login state is per connection", NULL, 0},
	{"login", cmd_login, cli_login_opts,
	 "[--user NAME] [--password-fd N | --password-file F] [--new-password-fd N | "
	 "--new-password-file F]",
	 "log an identity in (run twice for a role that needs two logins)", NULL, CLI_F_CONN},
	{"logout", cmd_logout, cli_logout_opts, "[--user NAME]", "log one or all identities out",
	 NULL, CLI_F_CONN},
	{"password", NULL, NULL, NULL, "change an identity's own password", cli_password_cmds, 0},
	{"status", cmd_status, cli_none_opts, "", "HSM status, major keys and counters (STAT)", NULL,
	 CLI_F_CONN},
	{"echo", cmd_echo, cli_echo_opts, "[TEXT...]", "communication test (ECHO)", NULL,
	 CLI_F_CONN | CLI_F_POS},
	{"rand", cmd_rand, cli_rand_opts, "--bytes N", "random bytes from the HSM (RAND)", NULL,
	 CLI_F_CONN},
	{"time", cmd_time, cli_time_opts, "[--set YYYYMMDDhhmmss]", "read or set the HSM clock (UTC)",
	 NULL, CLI_F_CONN},
	{"hash", cmd_hash, cli_none_opts, "", "the device serial (HASH)", NULL, CLI_F_CONN},
	{"restrictions", cmd_restrictions, cli_none_opts, "", "the HSM's restrictions (PRMD)", NULL,
	 CLI_F_CONN},
	{"keytable", cmd_keytable, cli_keytable_opts,
	 "[--from SLOT] [--count N] [--all] [--class C] [--type T] [--label TEXT]",
	 "key table information (GPKM)", NULL, CLI_F_CONN},
	{"selftest", cmd_selftest, cli_none_opts, "", "run the known-answer self-tests (SLFT)", NULL,
	 CLI_F_CONN},
	{"settings", NULL, NULL, NULL, "device settings (FIPS mode, PKCS#11, lockout)",
	 cli_settings_cmds, 0},
	{"majorkey", NULL, NULL, NULL, "major keys: status, load, random, recombine, erase",
	 cli_majorkey_cmds, 0},
	{"role", NULL, NULL, NULL, "roles (application partitions)", cli_role_cmds, 0},
	{"identity", NULL, NULL, NULL, "identities", cli_identity_cmds, 0},
	{"tls", NULL, NULL, NULL, "TLS CA, server certificate, client certificates, CRL",
	 cli_tls_cmds, 0},
	{"tls-ports", NULL, NULL, NULL, "per-port TLS settings (Allow Anonymous)",
	 cli_tlsports_cmds, 0},
	{"backup", cmd_backup, cli_backup_opts, "--out FILE [--scope config|keys|all]",
	 "back up configuration and keys under the BEK", NULL, CLI_F_CONN},
	{"restore", cmd_restore, cli_restore_opts, "--in FILE", "restore a backup", NULL, CLI_F_CONN},
	{"audit", NULL, NULL, NULL, "the audit log: show, verify", cli_audit_cmds, 0},
	{"group", NULL, NULL, NULL, "keyhold-guardian: device groups", cli_group_cmds, 0},
	{"device", NULL, NULL, NULL, "keyhold-guardian: the devices of a group", cli_device_cmds,
	 0},
	{"events", cmd_events, cli_events_opts,
	 "[--group G] [--device ID] [--max N] [--skip N]",
	 "keyhold-guardian: events, newest first", NULL, 0},
	{"metrics", cmd_metrics, cli_metrics_opts,
	 "--device ID [--res 10s|1m] [--from MS] [--to MS]",
	 "keyhold-guardian: a device's request and latency metrics", NULL, 0},
	{"user", NULL, NULL, NULL, "keyhold-guardian: its users and roles (the HSM's are 'identity')",
	 cli_user_cmds, 0},
	{"remote", cmd_remote, cli_remote_opts, "--device ID [COMMAND [OPTIONS...]]",
	 "keyhold-guardian: reach a device's Admin port through the guardian (Remote Manage)",
	 NULL, CLI_F_POS | CLI_F_REST},
	{"send", cmd_send, cli_send_opts, "RAW_FRAME",
	 "debugging: send a raw frame, print the raw answer", NULL, CLI_F_CONN | CLI_F_POS},
	{"help", cmd_help, cli_none_opts, "[COMMAND...]", "help on commands", NULL, CLI_F_POS},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};

static void replace_str(char **slot, const char *v)
{
	free(*slot);
	*slot = v ? strdup(v) : NULL;
}

int cli_set_conn_opts(struct cli *cli, struct cli_args *a)
{
	const char *console = cli_arg(a, "console"), *host = cli_arg(a, "host");
	uint64_t port = 9009, timeout = 0;

	if (console && host)
		return cli_usage(cli, "--console and --host exclude each other");
	if (!cli_arg_u64(cli, a, "port", 1, 65535, &port) ||
	    !cli_arg_u64(cli, a, "timeout", 1, 3600, &timeout))
		return CLI_USAGE;
	if (console) {
		replace_str(&cli->console, console);
		replace_str(&cli->host, NULL);
	} else if (host) {
		replace_str(&cli->host, host);
		replace_str(&cli->console, NULL);
	}
	if (cli_arg(a, "port"))
		cli->copts.port = (unsigned)port;
	if (cli_arg(a, "ca"))
		replace_str(&cli->ca, cli_arg(a, "ca"));
	if (cli_arg(a, "cert"))
		replace_str(&cli->cert, cli_arg(a, "cert"));
	if (cli_arg(a, "key"))
		replace_str(&cli->key, cli_arg(a, "key"));
	if (cli_flag(a, "no-tls"))
		cli->copts.tls = false;
	else if (host || console)
		cli->copts.tls = true;
	if (timeout) {
		cli->copts.connect_timeout_ms = (int)timeout * 1000;
		cli->copts.io_timeout_ms = (int)timeout * 1000;
	}
	cli->copts.unix_path = cli->console;
	cli->copts.host = cli->host ? cli->host : "127.0.0.1";
	cli->copts.ca_file = cli->ca;
	cli->copts.cert_file = cli->cert;
	cli->copts.key_file = cli->key;
	return CLI_OK;
}

int cli_connect(struct cli *cli)
{
	int r;

	kh_client_free(cli->client);
	cli->client = kh_client_new(&cli->copts);
	if (cli->client == NULL)
		return cli_fail(cli, KH_ERR_NOMEM, "out of memory");
	if ((r = kh_client_connect(cli->client)) != KH_OK)
		return cli_client_fail(cli, r);
	cli->ever_connected = true;
	return CLI_OK;
}

static int cmd_connect(struct cli *cli, struct cli_args *a)
{
	int rc;

	if (!cli_arg(a, "console") && !cli_arg(a, "host"))
		return cli_usage(cli, "connect needs --console PATH or --host HOST");
	if ((rc = cli_set_conn_opts(cli, a)) != CLI_OK)
		return rc;
	if ((rc = cli_connect(cli)) != CLI_OK)
		return rc;
	out_str(cli, "peer", "Connected to", kh_client_peer(cli->client));
	out_bool(cli, "tls", "TLS", cli->console == NULL && cli->copts.tls);
	return CLI_OK;
}

static void print_global_help(void)
{
	printf("keyhold %s, the Keyhold HSM administration CLI\n\n", KH_VERSION);
	cli_print_group_help(cli_commands, "");
	printf("\nglobal options:\n");
	for (const struct cli_optdef *o = global_opts; o->name; o++) {
		char left[64];
		if (o->shortopt)
			snprintf(left, sizeof(left), "-%c, --%s%s%s", o->shortopt, o->name,
				 o->arg ? " " : "", o->arg ? o->arg : "");
		else
			snprintf(left, sizeof(left), "    --%s%s%s", o->name, o->arg ? " " : "",
				 o->arg ? o->arg : "");
		printf("  %-30s %s\n", left, o->help);
	}
	printf("\nWith a command, run it; with -f FILE, or commands on a non-terminal stdin, run\n"
	       "one command per line on one connection; otherwise prompt interactively.\n"
	       "The group, device, events, metrics, user and remote commands talk to\n"
	       "keyhold-guardian (--guardian): the CLI logs in once, runs the commands, logs out.\n"
	       "Exit codes: 0 ok, 1 refused by the HSM or the guardian, 2 usage error,\n"
	       "3 connection/TLS error.\n");
}

/* Find a (sub)command by words; *used gets the words consumed. */
static const struct cli_cmd *lookup(const struct cli_cmd *table, int argc, char **argv,
				    int *used, char *path, size_t pathsz)
{
	const struct cli_cmd *c = NULL;
	*used = 0;
	path[0] = '\0';
	while (*used < argc && table) {
		const struct cli_cmd *hit = NULL;
		for (const struct cli_cmd *t = table; t->name; t++)
			if (strcmp(t->name, argv[*used]) == 0)
				hit = t;
		if (hit == NULL)
			break;
		size_t l = strlen(path);
		snprintf(path + l, pathsz - l, "%s%s", l ? " " : "", hit->name);
		c = hit;
		(*used)++;
		table = hit->sub;
	}
	return c;
}

static int cmd_help(struct cli *cli, struct cli_args *a)
{
	char path[128];
	int used;
	const struct cli_cmd *c = lookup(cli_commands, (int)a->npos, (char **)(uintptr_t)a->pos,
					 &used, path, sizeof(path));
	if (cli->json)
		return cli_usage(cli, "help is text only");
	if (c == NULL) {
		if (a->npos > 0)
			return cli_usage(cli, "no command '%s'", a->pos[0]);
		print_global_help();
	} else if (c->sub) {
		cli_print_group_help(c->sub, path);
	} else {
		cli_print_help(c, path);
	}
	cli->out_done = true;
	return CLI_OK;
}

static bool is_help_word(const char *s)
{
	return strcmp(s, "help") == 0 || strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0;
}

int cli_ensure_connected(struct cli *cli)
{
	if (cli->client && kh_client_connected(cli->client))
		return CLI_OK;
	if (cli->ever_connected && cli->client)
		return cli_fail(cli, KH_ERR_CLOSED,
				"the connection is lost (login state with it): use 'connect'");
	return cli_connect(cli);
}

int cli_run_argv(struct cli *cli, int argc, char **argv)
{
	char path[128];
	int used, rc;
	const struct cli_cmd *c;
	struct cli_args a;

	cli->cmdname[0] = '\0';
	if (argc == 0)
		return CLI_OK;
	c = lookup(cli_commands, argc, argv, &used, path, sizeof(path));
	out_begin(cli, c ? path : argv[0]);
	if (c == NULL)
		return cli_usage(cli, "no command '%s' (try 'help')", argv[0]);
	if (c->sub) {
		if (used < argc && !is_help_word(argv[used]))
			return cli_usage(cli, "no command '%s %s' (try '%s help')", path, argv[used],
					 path);
		if (used == argc && !cli->interactive && cli->json)
			return cli_usage(cli, "'%s' needs a subcommand", path);
		if (!cli->json)
			cli_print_group_help(c->sub, path);
		cli->out_done = true;
		return used == argc ? CLI_USAGE : CLI_OK;
	}
	/* a command that carries another (remote) looks at its own options only */
	for (int i = used; i < argc && !(c->flags & CLI_F_REST); i++) {
		if (strcmp(argv[i], "--") == 0)
			break;
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			if (!cli->json)
				cli_print_help(c, path);
			cli->out_done = true;
			return CLI_OK;
		}
	}
	if ((rc = cli_parse(cli, c, argc - used, argv + used, &a)) != CLI_OK)
		return rc;
	rc = c->run(cli, &a);
	if (rc == CLI_OK)
		out_end(cli);
	else if (!cli->out_done)
		rc = cli_fail(cli, KH_ERR_INTERNAL, "failed");
	return rc;
}

/* Run one line; returns its exit code (blank lines and comments: 0). */
static int run_line(struct cli *cli, const char *line)
{
	char *storage = malloc(LINE_MAX_BYTES), *argv[LINE_MAX_ARGS];
	int argc, rc;

	if (storage == NULL)
		return cli_fail(cli, KH_ERR_NOMEM, "out of memory");
	argc = cli_split(line, storage, LINE_MAX_BYTES, argv, LINE_MAX_ARGS);
	if (argc < 0) {
		out_begin(cli, "");
		rc = cli_usage(cli, "unterminated quote or line too long");
	} else {
		rc = cli_run_argv(cli, argc, argv);
	}
	kh_wipe(storage, LINE_MAX_BYTES);
	free(storage);
	return rc;
}

static int run_script(struct cli *cli, FILE *in)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int worst = CLI_OK;

	while ((n = getline(&line, &cap, in)) >= 0) {
		cli->lineno++;
		int rc = run_line(cli, line);
		if (rc != CLI_OK) {
			if (worst == CLI_OK || rc == CLI_CONN)
				worst = rc;
			if (!cli->keep_going)
				break;
		}
	}
	if (line) {
		kh_wipe(line, cap);
		free(line);
	}
	return worst;
}

/* First word of a line, to keep raw frames (which may carry a password)
 * out of the history. */
static bool history_ok(const char *line)
{
	while (*line == ' ' || *line == '\t')
		line++;
	if (*line == '\0')
		return false;
	return strncmp(line, "send", 4) != 0 || (line[4] != ' ' && line[4] != '\0');
}

static int run_interactive(struct cli *cli)
{
	char hist[4096] = "";
	const char *home = getenv("HOME");
	int last = CLI_OK;

	cli->interactive = true;
	if (home && *home) {
		snprintf(hist, sizeof(hist), "%s/.keyhold_history", home);
		using_history();
		read_history(hist);
		stifle_history(1000);
	}
	printf("keyhold %s. Type 'help' for commands, 'quit' to leave.\n", KH_VERSION);
	for (;;) {
		char *line = readline("keyhold> ");
		if (line == NULL) {
			putchar('\n');
			break;
		}
		if (strcmp(line, "quit") == 0 || strcmp(line, "exit") == 0) {
			free(line);
			break;
		}
		if (history_ok(line))
			add_history(line);
		last = run_line(cli, line);
		free(line);
	}
	if (hist[0]) {
		write_history(hist);
		(void)chmod(hist, 0600);
	}
	return last;
}

static void cli_cleanup(struct cli *cli)
{
	kh_client_free(cli->client);
	gd_end(cli);
	kh_buf_free(cli->req);
	kh_buf_free(cli->resp);
	free(cli->frame);
	if (cli->out)
		json_decref(cli->out);
	free(cli->console);
	free(cli->host);
	free(cli->ca);
	free(cli->cert);
	free(cli->key);
}

int main(int argc, char **argv)
{
	static const struct cli_cmd global = {"keyhold", NULL, global_opts, NULL, NULL, NULL,
					      CLI_F_POS};
	struct cli cli;
	struct cli_args a;
	int first = 1, nglobal, rc = CLI_OK;
	const char *script;
	uint64_t timeout = 0;

	signal(SIGPIPE, SIG_IGN);
	gd_json_init();
	kh_mem_init(1 << 16);
	kh_mem_harden_process();
	memset(&cli, 0, sizeof(cli));
	kh_client_opts_init(&cli.copts);
	cli.req = kh_buf_new(KH_FRAME_MAX);
	cli.resp = kh_buf_new(KH_FRAME_MAX);
	cli.frame = malloc(sizeof(*cli.frame));
	if (cli.req == NULL || cli.resp == NULL || cli.frame == NULL) {
		fprintf(stderr, "keyhold: out of memory\n");
		rc = CLI_REFUSED;
		goto out;
	}
	/* global options stop at the first word that is not an option */
	while (first < argc && argv[first][0] == '-' && argv[first][1] != '\0') {
		const char *s = argv[first];
		bool takes_value = false;
		if (strcmp(s, "--") == 0)
			break;
		for (const struct cli_optdef *o = global_opts; o->name; o++) {
			if (s[1] == '-' ? strcmp(s + 2, o->name) == 0
					 : (o->shortopt == s[1] && s[2] == '\0'))
				takes_value = o->kind != CLI_FLAG;
		}
		first += takes_value ? 2 : 1;
	}
	if (first > argc)
		first = argc + 1; /* a value is missing: cli_parse reports it */
	nglobal = first - 1;
	if (first <= argc && first < argc && strcmp(argv[first], "--") == 0)
		first++;
	if (first > argc)
		first = argc;
	cli.cmdname[0] = '\0';
	if ((rc = cli_parse(&cli, &global, nglobal > argc - 1 ? argc - 1 : nglobal, argv + 1, &a)) != CLI_OK)
		goto out;
	cli.json = cli_flag(&a, "json");
	cli.keep_going = cli_flag(&a, "keep-going");
	cli.cmdname[0] = '\0';
	if (cli_flag(&a, "help")) {
		print_global_help();
		goto out;
	}
	if (cli_flag(&a, "version")) {
		printf("keyhold %s\n", KH_VERSION);
		goto out;
	}
	if (!cli_arg(&a, "console") && !cli_arg(&a, "host") && getenv("KEYHOLD_CONSOLE") &&
	    *getenv("KEYHOLD_CONSOLE"))
		replace_str(&cli.console, getenv("KEYHOLD_CONSOLE"));
	if (!cli_arg_u64(&cli, &a, "timeout", 1, 3600, &timeout)) {
		rc = CLI_USAGE;
		goto out;
	}
	if ((rc = cli_set_conn_opts(&cli, &a)) != CLI_OK || (rc = gd_set_opts(&cli, &a)) != CLI_OK)
		goto out;
	if (cli.console)
		cli.copts.unix_path = cli.console;
	script = cli_arg(&a, "file");
	if (script && first < argc) {
		rc = cli_usage(&cli, "give either -f FILE or a command, not both");
		goto out;
	}
	if (script) {
		FILE *in = strcmp(script, "-") == 0 ? stdin : fopen(script, "r");
		if (in == NULL) {
			rc = cli_usage(&cli, "cannot open %s: %s", script, strerror(errno));
			goto out;
		}
		rc = run_script(&cli, in);
		if (in != stdin)
			fclose(in);
	} else if (first < argc) {
		rc = cli_run_argv(&cli, argc - first, argv + first);
	} else if (!isatty(STDIN_FILENO)) {
		rc = run_script(&cli, stdin);
	} else {
		rc = run_interactive(&cli);
	}
out:
	fflush(stdout);
	cli_cleanup(&cli);
	return rc;
}
