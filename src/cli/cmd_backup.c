/*
 * Backup and restore. A backup is encrypted by the HSM under its BEK; the
 * CLI only moves the bytes, writing them to a new file of mode 0600 that is
 * never overwritten.
 */
#include "cli/cli.h"

#include <string.h>
#include <unistd.h>

#define BACKUP_MAX (KH_FRAME_MAX / 2 - 4096)

const struct cli_optdef cli_backup_opts[] = {
	{"out", 'o', CLI_VALUE, "FILE", "the backup file to create (mode 0600, never overwritten)"},
	{"scope", 0, CLI_VALUE, "config|keys|all", "what to back up (default all)"},
	{NULL, 0, 0, NULL, NULL},
};

const struct cli_optdef cli_restore_opts[] = {
	{"in", 'i', CLI_VALUE, "FILE", "the backup file"},
	{NULL, 0, 0, NULL, NULL},
};

int cmd_backup(struct cli *cli, struct cli_args *a)
{
	const char *out = cli_arg(a, "out"), *scope = cli_arg(a, "scope");
	uint8_t *d;
	size_t n;
	int rc;

	if (out == NULL)
		return cli_usage(cli, "backup needs --out FILE");
	if (scope && strcmp(scope, "config") != 0 && strcmp(scope, "keys") != 0 &&
	    strcmp(scope, "all") != 0)
		return cli_usage(cli, "--scope takes config, keys or all");
	if (access(out, F_OK) == 0)
		return cli_usage(cli, "%s exists (backups are never overwritten)", out);
	cli_req(cli, "BKUP");
	if (scope)
		cli_put(cli, "SC", scope);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	if ((rc = cli_fhex(cli, "BD", &d, &n)) != CLI_OK)
		return rc;
	rc = cli_write_file(cli, out, d, n, 0600, true);
	cli_free_bytes(d, n);
	if (rc != CLI_OK)
		return rc;
	out_str(cli, "file", NULL, out);
	out_int(cli, "bytes", NULL, (long long)n);
	out_text(cli, "Backup (%s, %zu bytes) written to %s", scope ? scope : "all", n, out);
	cli_out_field(cli, "KV", "bek_kcv", "BEK check value");
	return CLI_OK;
}

int cmd_restore(struct cli *cli, struct cli_args *a)
{
	const char *in = cli_arg(a, "in");
	uint8_t *d;
	size_t n;
	int rc;

	if (in == NULL)
		return cli_usage(cli, "restore needs --in FILE");
	if ((rc = cli_read_file(cli, in, BACKUP_MAX, &d, &n)) != CLI_OK)
		return rc;
	cli_req(cli, "BKRS");
	cli_put_hex(cli, "BD", d, n);
	cli_free_bytes(d, n);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	cli_out_fnum(cli, "RC", "roles", "Roles restored");
	cli_out_fnum(cli, "IC", "identities", "Identities restored");
	cli_out_fnum(cli, "KC", "keys", "Keys restored");
	return CLI_OK;
}
