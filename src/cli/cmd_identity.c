/*
 * Identities: add (with an initial password), modify (role, password reset,
 * must-change flag, unlock), delete, list. Passwords come from a no-echo
 * prompt (asked twice), a descriptor or a file; never from argv.
 */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define SECRET_OPTS                                                                                \
	{"password-fd", 0, CLI_VALUE, "N", "read the password from descriptor N (one line)"},      \
	{"password-file", 0, CLI_VALUE, "FILE", "read the password from FILE"}

static const struct cli_optdef id_add_opts[] = {
	{"name", 0, CLI_VALUE, "NAME", "identity name (A-Z a-z 0-9 _ . -)"},
	{"role", 0, CLI_VALUE, "ROLE", "the role it belongs to"},
	{"must-change", 0, CLI_FLAG, NULL, "must change the password at first login"},
	SECRET_OPTS,
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef id_modify_opts[] = {
	{"name", 0, CLI_VALUE, "NAME", "identity name"},
	{"role", 0, CLI_VALUE, "ROLE", "move it to another role"},
	{"reset-password", 0, CLI_FLAG, NULL, "set a new password"},
	{"must-change", 0, CLI_VALUE, "yes|no", "must change the password at next login"},
	{"unlock", 0, CLI_FLAG, NULL, "unlock after too many failed logins"},
	SECRET_OPTS,
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef id_name_opts[] = {
	{"name", 0, CLI_VALUE, "NAME", "identity name"},
	{NULL, 0, 0, NULL, NULL},
};

static int cmd_id_add(struct cli *cli, struct cli_args *a)
{
	struct cli_secret pw = {0};
	const char *name = cli_arg(a, "name"), *role = cli_arg(a, "role");
	char prompt[160];
	int rc;

	if (name == NULL || role == NULL)
		return cli_usage(cli, "identity add needs --name NAME --role ROLE");
	snprintf(prompt, sizeof(prompt), "Initial password for %.100s: ", name);
	if ((rc = secret_get(cli, &pw, cli_arg(a, "password-fd"), cli_arg(a, "password-file"),
			     prompt, true)) != CLI_OK)
		return rc;
	cli_req(cli, "IDAD");
	cli_put(cli, "ID", name);
	cli_put(cli, "RN", role);
	cli_put_hex(cli, "PW", (const uint8_t *)pw.p, pw.len);
	if (cli_flag(a, "must-change"))
		cli_put(cli, "MC", "Y");
	secret_free(&pw);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_str(cli, "identity", NULL, name);
	out_str(cli, "role", NULL, role);
	out_text(cli, "Identity %s added to role %s.", name, role);
	return CLI_OK;
}

static int cmd_id_modify(struct cli *cli, struct cli_args *a)
{
	struct cli_secret pw = {0};
	const char *name = cli_arg(a, "name"), *mc = cli_arg(a, "must-change");
	char prompt[160];
	int rc;

	if (name == NULL)
		return cli_usage(cli, "identity modify needs --name NAME");
	if (mc && strcasecmp(mc, "yes") != 0 && strcasecmp(mc, "no") != 0)
		return cli_usage(cli, "--must-change takes yes or no");
	if (!cli_flag(a, "reset-password") && (cli_arg(a, "password-fd") || cli_arg(a, "password-file")))
		return cli_usage(cli, "a password option needs --reset-password");
	if (!cli_arg(a, "role") && !cli_flag(a, "reset-password") && !mc && !cli_flag(a, "unlock"))
		return cli_usage(cli, "nothing to change (see --help)");
	if (cli_flag(a, "reset-password")) {
		snprintf(prompt, sizeof(prompt), "New password for %.100s: ", name);
		if ((rc = secret_get(cli, &pw, cli_arg(a, "password-fd"),
				     cli_arg(a, "password-file"), prompt, true)) != CLI_OK)
			return rc;
	}
	cli_req(cli, "IDMD");
	cli_put(cli, "ID", name);
	if (cli_arg(a, "role"))
		cli_put(cli, "RN", cli_arg(a, "role"));
	if (pw.p)
		cli_put_hex(cli, "PW", (const uint8_t *)pw.p, pw.len);
	if (mc)
		cli_put(cli, "MC", strcasecmp(mc, "yes") == 0 ? "Y" : "N");
	if (cli_flag(a, "unlock"))
		cli_put(cli, "UL", "Y");
	secret_free(&pw);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_str(cli, "identity", NULL, name);
	out_text(cli, "Identity %s modified.", name);
	return CLI_OK;
}

static int cmd_id_delete(struct cli *cli, struct cli_args *a)
{
	const char *name = cli_arg(a, "name");
	int rc;

	if (name == NULL)
		return cli_usage(cli, "identity delete needs --name NAME");
	cli_req(cli, "IDDL");
	cli_put(cli, "ID", name);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_str(cli, "identity", NULL, name);
	out_text(cli, "Identity %s deleted.", name);
	return CLI_OK;
}

static int cmd_id_list(struct cli *cli, struct cli_args *a)
{
	const struct kh_field *f;
	int rc;

	cli_req(cli, "IDLS");
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	f = cli_field(cli, "IL");
	out_text(cli, "%-24s %-28s %s", "IDENTITY", "ROLE", "STATE");
	if (cli->json && cli->out)
		json_object_set_new(cli->out, "identities", json_array());
	for (size_t i = 0; f && i < f->len;) {
		size_t e = i;
		while (e < f->len && f->val[e] != ',')
			e++;
		/* name:role:state; role names have '_' for ' ' */
		char item[256], *c1, *c2;
		size_t n = e - i < sizeof(item) - 1 ? e - i : sizeof(item) - 1;
		memcpy(item, f->val + i, n);
		item[n] = '\0';
		c1 = strchr(item, ':');
		c2 = c1 ? strrchr(c1 + 1, ':') : NULL;
		if (c1 && c2) {
			*c1 = *c2 = '\0';
			for (char *p = c1 + 1; *p; p++)
				if (*p == '_')
					*p = ' ';
			json_t *o = json_object();
			json_object_set_new(o, "name", json_string(item));
			json_object_set_new(o, "role", json_string(c1 + 1));
			json_object_set_new(o, "state", json_string(c2 + 1));
			out_append(cli, "identities", o);
			out_text(cli, "%-24s %-28s %s", item, c1 + 1, c2 + 1);
		}
		i = e + 1;
	}
	return CLI_OK;
}

const struct cli_cmd cli_identity_cmds[] = {
	{"add", cmd_id_add, id_add_opts,
	 "--name NAME --role ROLE [--must-change] [--password-fd N | --password-file F]",
	 "create an identity (IDAD)", NULL, CLI_F_CONN},
	{"modify", cmd_id_modify, id_modify_opts,
	 "--name NAME [--role ROLE] [--reset-password [--password-fd N | --password-file F]] "
	 "[--must-change yes|no] [--unlock]",
	 "change an identity (IDMD)", NULL, CLI_F_CONN},
	{"delete", cmd_id_delete, id_name_opts, "--name NAME", "delete an identity (IDDL)", NULL,
	 CLI_F_CONN},
	{"list", cmd_id_list, cli_none_opts, "", "list identities (IDLS)", NULL, CLI_F_CONN},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
