/*
 * Informational and device commands: status, echo, rand, time, hash,
 * restrictions, keytable, settings, and the raw 'send' for debugging. None of
 * these handles a secret, except 'send', whose line is kept out of history.
 */
#include "cli/cli.h"
#include "common/kh_buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const struct cli_optdef cli_none_opts[] = {
	{NULL, 0, 0, NULL, NULL},
};

const struct cli_optdef cli_echo_opts[] = {
	{NULL, 0, 0, NULL, NULL},
};

const struct cli_optdef cli_rand_opts[] = {
	{"bytes", 'n', CLI_VALUE, "N", "number of random bytes, 1-4096"},
	{NULL, 0, 0, NULL, NULL},
};

const struct cli_optdef cli_time_opts[] = {
	{"set", 0, CLI_VALUE, "YYYYMMDDhhmmss", "set the HSM clock (UTC; needs Time:Set)"},
	{NULL, 0, 0, NULL, NULL},
};

const struct cli_optdef cli_keytable_opts[] = {
	{"from", 0, CLI_VALUE, "SLOT", "first slot (default 0)"},
	{"count", 0, CLI_VALUE, "N", "page size 1-1000 (default 100)"},
	{"all", 0, CLI_FLAG, NULL, "follow pages to the end of the table"},
	{"class", 0, CLI_VALUE, "CLASS", "only keys of this class (secret, private, public, cert)"},
	{"type", 0, CLI_VALUE, "TYPE", "only keys of this type (AES, GENERIC, RSA, EC, ...)"},
	{"label", 0, CLI_VALUE, "TEXT", "only keys with exactly this label"},
	{NULL, 0, 0, NULL, NULL},
};

const struct cli_optdef cli_send_opts[] = {
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef settings_set_opts[] = {
	{"fips", 0, CLI_VALUE, "on|off", "FIPS mode"},
	{"pkcs11", 0, CLI_VALUE, "on|off", "PKCS#11 enabled"},
	{"lockout-threshold", 0, CLI_VALUE, "N", "failed logins before an identity locks (1-100)"},
	{"lockout-seconds", 0, CLI_VALUE, "N", "lockout duration (1-86400)"},
	{NULL, 0, 0, NULL, NULL},
};

/* A major-key status value of STAT: "N" or a check value. */
static void out_mk(struct cli *cli, const char *tag, const char *key, const char *label)
{
	const struct kh_field *f = cli_field(cli, tag);
	if (f == NULL || (f->len == 1 && f->val[0] == 'N'))
		out_null(cli, key, label, "not loaded");
	else
		out_strn(cli, key, label, f->val, f->len);
}

int cmd_status(struct cli *cli, struct cli_args *a)
{
	int rc;

	cli_req(cli, "STAT");
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	cli_out_field(cli, "MD", "model", "Model");
	cli_out_field(cli, "VN", "version", "Version");
	cli_out_field(cli, "SN", "serial", "Serial");
	cli_out_field(cli, "ST", "state", "State");
	cli_out_fyn(cli, "FI", "fips", "FIPS mode");
	cli_out_fyn(cli, "PK", "pkcs11", "PKCS#11");
	out_mk(cli, "FT", "ftk", "FTK (KCV)");
	out_mk(cli, "PM", "pmk", "PMK (KCV)");
	out_mk(cli, "BK", "bek", "BEK (KCV)");
	cli_out_field(cli, "FS", "features", "Feature set");
	cli_out_fnum(cli, "UP", "uptime", "Uptime (s)");
	cli_out_fnum(cli, "RQ", "requests", "Requests served");
	cli_out_fnum(cli, "ER", "errors", "Errors answered");
	cli_out_fnum(cli, "CN", "connections", "Open connections");
	cli_out_fnum(cli, "KC", "keys", "Keys in table");
	return CLI_OK;
}

int cmd_echo(struct cli *cli, struct cli_args *a)
{
	char text[2048] = "";
	size_t o = 0;
	int rc;

	for (size_t i = 0; i < a->npos; i++) {
		int n = snprintf(text + o, sizeof(text) - o, "%s%s", i ? " " : "", a->pos[i]);
		if (n < 0 || (size_t)n >= sizeof(text) - o)
			return cli_usage(cli, "text too long");
		o += (size_t)n;
	}
	cli_req(cli, "ECHO");
	if (o)
		cli_put(cli, "AG", text);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	cli_out_field(cli, "AG", "text", "Echo");
	cli_out_field(cli, "BC", "version", "Firmware version");
	return CLI_OK;
}

int cmd_selftest(struct cli *cli, struct cli_args *a)
{
	int rc;
	cli_req(cli, "SLFT");
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	cli_out_field(cli, "ST", "state", "State");
	cli_out_fnum(cli, "TN", "tests", "Tests run");
	if (cli_field(cli, "TF"))
		cli_out_field(cli, "TF", "first_failed", "First failed");
	return CLI_OK;
}

int cmd_rand(struct cli *cli, struct cli_args *a)
{
	uint64_t n = 0;
	int rc;

	if (!cli_arg(a, "bytes"))
		return cli_usage(cli, "rand needs --bytes N");
	if (!cli_arg_u64(cli, a, "bytes", 1, 4096, &n))
		return CLI_USAGE;
	cli_req(cli, "RAND");
	cli_put_u64(cli, "NB", n);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	const struct kh_field *f = cli_field(cli, "RN");
	if (f == NULL)
		return cli_fail(cli, KH_ERR_PROTOCOL, "the HSM's answer lacks RN");
	out_strn(cli, "random", NULL, f->val, f->len);
	out_text(cli, "%.*s", (int)f->len, f->val);
	return CLI_OK;
}

static bool valid_time(const char *s)
{
	if (strlen(s) != 14)
		return false;
	for (int i = 0; i < 14; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

int cmd_time(struct cli *cli, struct cli_args *a)
{
	const char *set = cli_arg(a, "set");
	char tm[32];
	int rc;

	if (set && !valid_time(set))
		return cli_usage(cli, "--set takes YYYYMMDDhhmmss (UTC)");
	cli_req(cli, "TIME");
	if (set)
		cli_put(cli, "TM", set);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	cli_fstr(cli, "TM", tm, sizeof(tm));
	out_str(cli, "time", NULL, tm);
	if (strlen(tm) == 14)
		out_text(cli, "%.4s-%.2s-%.2s %.2s:%.2s:%.2s UTC%s", tm, tm + 4, tm + 6, tm + 8,
			 tm + 10, tm + 12, set ? " (set)" : "");
	else
		out_text(cli, "%s", tm);
	return CLI_OK;
}

int cmd_hash(struct cli *cli, struct cli_args *a)
{
	int rc;
	cli_req(cli, "HASH");
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	cli_out_field(cli, "SN", "serial", "Serial");
	return CLI_OK;
}

int cmd_restrictions(struct cli *cli, struct cli_args *a)
{
	int rc;
	cli_req(cli, "PRMD");
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	cli_out_field(cli, "MD", "model", "Model");
	cli_out_field(cli, "VN", "version", "Version");
	cli_out_fyn(cli, "FI", "fips", "FIPS mode");
	cli_out_fyn(cli, "PK", "pkcs11", "PKCS#11");
	cli_out_fnum(cli, "MR", "min_rsa_bits", "Minimum RSA bits");
	cli_out_fyn(cli, "P1", "pkcs1_decrypt", "PKCS#1 v1.5 decrypt");
	cli_out_fnum(cli, "MF", "max_frame", "Max frame bytes");
	cli_out_fnum(cli, "LT", "lockout_threshold", "Lockout threshold");
	return CLI_OK;
}

/* "slot:class:type:bits,..." into rows. */
static void out_keylist(struct cli *cli, const struct kh_field *f)
{
	size_t i = 0;
	while (f && i < f->len) {
		size_t e = i;
		while (e < f->len && f->val[e] != ',')
			e++;
		char item[128], *parts[5] = {NULL, NULL, NULL, NULL, NULL};
		size_t n = e - i < sizeof(item) - 1 ? e - i : sizeof(item) - 1;
		memcpy(item, f->val + i, n);
		item[n] = '\0';
		char *save = NULL, *tok = strtok_r(item, ":", &save);
		for (int k = 0; tok && k < 5; k++, tok = strtok_r(NULL, ":", &save))
			parts[k] = tok;
		if (parts[0]) {
			json_t *o = json_object();
			json_object_set_new(o, "slot", json_integer(strtoll(parts[0], NULL, 10)));
			json_object_set_new(o, "class", json_string(parts[1] ? parts[1] : ""));
			json_object_set_new(o, "type", json_string(parts[2] ? parts[2] : ""));
			json_object_set_new(o, "bits",
					    json_integer(parts[3] ? strtoll(parts[3], NULL, 10) : 0));
			json_object_set_new(o, "id", json_string(parts[4] ? parts[4] : ""));
			out_append(cli, "keys", o);
			out_text(cli, "%8s  %-12s %-10s %-6s %s", parts[0], parts[1] ? parts[1] : "",
				 parts[2] ? parts[2] : "", parts[3] ? parts[3] : "",
				 parts[4] ? parts[4] : "");
		}
		i = e + 1;
	}
}

int cmd_keytable(struct cli *cli, struct cli_args *a)
{
	uint64_t from = 0, count = 100;
	bool all = cli_flag(a, "all"), first = true;
	int rc;

	if (!cli_arg_u64(cli, a, "from", 0, 999999999, &from) ||
	    !cli_arg_u64(cli, a, "count", 1, 1000, &count))
		return CLI_USAGE;
	for (;;) {
		cli_req(cli, "GPKM");
		cli_put_u64(cli, "SL", from);
		cli_put_u64(cli, "NM", count);
		if (cli_arg(a, "class"))
			cli_put(cli, "CL", cli_arg(a, "class"));
		if (cli_arg(a, "type"))
			cli_put(cli, "TY", cli_arg(a, "type"));
		if (cli_arg(a, "label"))
			cli_put_hex(cli, "LB", (const uint8_t *)cli_arg(a, "label"),
				    strlen(cli_arg(a, "label")));
		if ((rc = cli_call(cli)) != CLI_OK)
			return rc;
		if (first) {
			cli_out_fnum(cli, "KC", "count", "Keys");
			out_text(cli, "%8s  %-12s %-10s %-6s %s", "SLOT", "CLASS", "TYPE", "BITS", "KEY ID");
			first = false;
		}
		out_keylist(cli, cli_field(cli, "KL"));
		long long nx = cli_fnum(cli, "NX", -1);
		if (nx < 0 || !all) {
			if (nx >= 0) {
				out_int(cli, "next", NULL, nx);
				out_text(cli, "(more from slot %lld: keytable --from %lld)", nx, nx);
			}
			break;
		}
		if ((uint64_t)nx <= from)
			return cli_fail(cli, KH_ERR_PROTOCOL, "the HSM's next slot does not advance");
		from = (uint64_t)nx;
	}
	return CLI_OK;
}

static int cmd_settings_show(struct cli *cli, struct cli_args *a)
{
	int rc;
	cli_req(cli, "SETG");
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	cli_out_fyn(cli, "FI", "fips", "FIPS mode");
	cli_out_fyn(cli, "PK", "pkcs11", "PKCS#11");
	cli_out_fnum(cli, "LT", "lockout_threshold", "Lockout threshold");
	cli_out_fnum(cli, "LS", "lockout_seconds", "Lockout seconds");
	return CLI_OK;
}

static int on_off(struct cli *cli, struct cli_args *a, const char *name, const char *tag)
{
	const char *v = cli_arg(a, name);
	if (v == NULL)
		return CLI_OK;
	if (strcmp(v, "on") == 0 || strcmp(v, "yes") == 0)
		cli_put(cli, tag, "Y");
	else if (strcmp(v, "off") == 0 || strcmp(v, "no") == 0)
		cli_put(cli, tag, "N");
	else
		return cli_usage(cli, "--%s takes on or off", name);
	return CLI_OK;
}

static int cmd_settings_set(struct cli *cli, struct cli_args *a)
{
	uint64_t lt = 0, ls = 0;
	int rc;

	if (!cli_arg(a, "fips") && !cli_arg(a, "pkcs11") && !cli_arg(a, "lockout-threshold") &&
	    !cli_arg(a, "lockout-seconds"))
		return cli_usage(cli, "settings set needs at least one setting (see --help)");
	if (!cli_arg_u64(cli, a, "lockout-threshold", 1, 100, &lt) ||
	    !cli_arg_u64(cli, a, "lockout-seconds", 1, 86400, &ls))
		return CLI_USAGE;
	cli_req(cli, "SETS");
	if ((rc = on_off(cli, a, "fips", "FI")) != CLI_OK ||
	    (rc = on_off(cli, a, "pkcs11", "PK")) != CLI_OK)
		return rc;
	if (cli_arg(a, "lockout-threshold"))
		cli_put_u64(cli, "LT", lt);
	if (cli_arg(a, "lockout-seconds"))
		cli_put_u64(cli, "LS", ls);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_text(cli, "Settings changed.");
	return CLI_OK;
}

int cmd_send(struct cli *cli, struct cli_args *a)
{
	struct kh_buf *req;
	int rc, r;

	if (a->npos != 1)
		return cli_usage(cli, "send takes exactly one raw frame (quote it)");
	if ((rc = cli_ensure_connected(cli)) != CLI_OK)
		return rc;
	req = kh_buf_new(KH_FRAME_MAX);
	if (req == NULL)
		return cli_fail(cli, KH_ERR_NOMEM, "out of memory");
	if (kh_buf_put_str(req, a->pos[0]) != KH_OK) {
		rc = cli_usage(cli, "frame too large");
		goto out;
	}
	r = kh_client_call(cli->client, req, cli->resp, cli->frame);
	if (r != KH_OK && cli_rc_of(r) == CLI_CONN) {
		rc = cli_client_fail(cli, r);
		goto out;
	}
	out_strn(cli, "response", NULL, (const char *)kh_buf_ptr(cli->resp), kh_buf_len(cli->resp));
	if (r != KH_OK) {
		/* the raw answer first, then the error as usual */
		if (!cli->json)
			printf("%.*s\n", (int)kh_buf_len(cli->resp), (const char *)kh_buf_ptr(cli->resp));
		rc = cli_client_fail(cli, r);
		goto out;
	}
	out_text(cli, "%.*s", (int)kh_buf_len(cli->resp), (const char *)kh_buf_ptr(cli->resp));
	rc = CLI_OK;
out:
	kh_buf_free(req);
	return rc;
}

const struct cli_cmd cli_settings_cmds[] = {
	{"show", cmd_settings_show, cli_none_opts, "", "show device settings (SETG)", NULL,
	 CLI_F_CONN},
	{"set", cmd_settings_set, settings_set_opts,
	 "[--fips on|off] [--pkcs11 on|off] [--lockout-threshold N] [--lockout-seconds N]",
	 "change device settings (SETS)", NULL, CLI_F_CONN},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
