/*
 * Roles (application partitions): add, modify, list, show, delete. The
 * reference's permission names ("Major Keys:Load") are mapped to the wire's
 * ids here; unknown words travel as given and the HSM decides.
 */
#include "cli/cli.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ROLE_FIELD_OPTS                                                                            \
	{"name", 0, CLI_VALUE, "NAME", "role name ('Anonymous' = Transaction Processing)"},       \
	{"permissions", 0, CLI_VALUE, "LIST|none", "permission ids or names, comma separated"},    \
	{"key-ranges", 0, CLI_VALUE, "LIST|none", "slot ranges K:LO-HI (K = S, A or M)"},          \
	{"commands", 0, CLI_VALUE, "LIST|none", "enabled Excrypt commands, e.g. ECHO,RAND"},       \
	{"logins-required", 0, CLI_VALUE, "N", "Logins Required (1-3)"},                          \
	{"ports", 0, CLI_VALUE, "prod,admin", "ports the role may use"},                           \
	{"sources", 0, CLI_VALUE, "ethernet,usb", "connection sources"},                           \
	{"dual-factor", 0, CLI_VALUE, "never", "Use Dual Factor"}

static const struct cli_optdef role_add_opts[] = {
	ROLE_FIELD_OPTS,
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef role_modify_opts[] = {
	ROLE_FIELD_OPTS,
	{"new-name", 0, CLI_VALUE, "NAME", "rename the role"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef role_name_opts[] = {
	{"name", 0, CLI_VALUE, "NAME", "role name"},
	{NULL, 0, 0, NULL, NULL},
};

/* The reference's names and their ids (docs/PROTOCOL.md, Permissions). */
static const struct {
	const char *name, *id;
} perm_names[] = {
	{"Keys", "keys"},
	{"Keys:All Slots", "keys.all_slots"},
	{"All Slots", "keys.all_slots"},
	{"Keys:Authorized", "keys.authorized"},
	{"Authorized", "keys.authorized"},
	{"Keys:Import PKI", "keys.import_pki"},
	{"Import PKI", "keys.import_pki"},
	{"Keys:No Usage Wrap", "keys.no_usage_wrap"},
	{"No Usage Wrap", "keys.no_usage_wrap"},
	{"Keys:PKCS#1 v1.5 Decrypt", "keys.pkcs1_decrypt"},
	{"Major Keys:Load", "major_keys.load"},
	{"Major Keys:Erase", "major_keys.erase"},
	{"Role:Add", "role.add"},
	{"Role:Modify", "role.modify"},
	{"Role:Delete", "role.delete"},
	{"Role:Assign All Permissions", "role.assign_all"},
	{"Command Settings:Excrypt", "command_settings.excrypt"},
	{"Identity:Add", "identity.add"},
	{"Identity:Modify", "identity.modify"},
	{"Identity:Delete", "identity.delete"},
	{"Security:TLS Sign", "security.tls_sign"},
	{"TLS Settings:Upload Key", "tls_settings.upload_key"},
	{"TLS Settings:Ports", "tls_settings.ports"},
	{"Management Commands:Certificates", "mgmt.certificates"},
	{"Management Commands:Keys", "mgmt.keys"},
	{"Backup:Create", "backup.create"},
	{"Backup:Restore", "backup.restore"},
	{"Audit:View", "audit.view"},
	{"Security:Settings", "security.settings"},
	{"Time:Set", "time.set"},
	{"Replication", "replication"},
};

static bool is_none(const char *v)
{
	return strcasecmp(v, "none") == 0 || *v == '\0';
}

/* Trimmed item [b, e) of a comma list, mapped through perm_names. */
static int map_permissions(struct cli *cli, const char *in, char *out, size_t outsz)
{
	size_t o = 0;
	const char *p = in;

	out[0] = '\0';
	while (*p) {
		const char *e = strchr(p, ',');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		const char *b = p;
		while (n && isspace((unsigned char)*b)) {
			b++;
			n--;
		}
		while (n && isspace((unsigned char)b[n - 1]))
			n--;
		if (n) {
			const char *id = NULL;
			for (size_t i = 0; i < sizeof(perm_names) / sizeof(perm_names[0]); i++)
				if (strlen(perm_names[i].name) == n &&
				    strncasecmp(perm_names[i].name, b, n) == 0)
					id = perm_names[i].id;
			int w = id ? snprintf(out + o, outsz - o, "%s%s", o ? "," : "", id)
				   : snprintf(out + o, outsz - o, "%s%.*s", o ? "," : "", (int)n, b);
			if (w < 0 || (size_t)w >= outsz - o)
				return cli_usage(cli, "permission list too long");
			o += (size_t)w;
		}
		if (e == NULL)
			break;
		p = e + 1;
	}
	return CLI_OK;
}

static void put_list(struct cli *cli, struct cli_args *a, const char *opt, const char *tag)
{
	const char *v = cli_arg(a, opt);
	if (v)
		cli_put(cli, tag, is_none(v) ? "" : v);
}

static int role_fields(struct cli *cli, struct cli_args *a, bool modify)
{
	uint64_t lq = 0;
	int rc;

	if (!cli_arg(a, "name"))
		return cli_usage(cli, "needs --name NAME");
	if (!cli_arg_u64(cli, a, "logins-required", 1, 3, &lq))
		return CLI_USAGE;
	cli_req(cli, modify ? "RLMD" : "RLAD");
	cli_put(cli, "RN", cli_arg(a, "name"));
	if (cli_arg(a, "permissions")) {
		char perms[4096];
		if (is_none(cli_arg(a, "permissions")))
			perms[0] = '\0';
		else if ((rc = map_permissions(cli, cli_arg(a, "permissions"), perms,
					       sizeof(perms))) != CLI_OK)
			return rc;
		cli_put(cli, "PM", perms);
	}
	put_list(cli, a, "key-ranges", "KR");
	put_list(cli, a, "commands", "CM");
	if (cli_arg(a, "logins-required"))
		cli_put_u64(cli, "LQ", lq);
	put_list(cli, a, "ports", "PT");
	put_list(cli, a, "sources", "CS");
	if (cli_arg(a, "dual-factor"))
		cli_put(cli, "DF", cli_arg(a, "dual-factor"));
	if (modify && cli_arg(a, "new-name"))
		cli_put(cli, "NN", cli_arg(a, "new-name"));
	return CLI_OK;
}

static int cmd_role_add(struct cli *cli, struct cli_args *a)
{
	int rc;
	if ((rc = role_fields(cli, a, false)) != CLI_OK || (rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_str(cli, "role", NULL, cli_arg(a, "name"));
	out_text(cli, "Role %s added.", cli_arg(a, "name"));
	return CLI_OK;
}

static int cmd_role_modify(struct cli *cli, struct cli_args *a)
{
	int rc;
	if ((rc = role_fields(cli, a, true)) != CLI_OK || (rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_str(cli, "role", NULL,
		cli_arg(a, "new-name") ? cli_arg(a, "new-name") : cli_arg(a, "name"));
	out_text(cli, "Role %s modified.", cli_arg(a, "name"));
	return CLI_OK;
}

/* A comma list field as a JSON array of strings (and one text line). */
static void out_list(struct cli *cli, const char *tag, const char *key, const char *label)
{
	const struct kh_field *f = cli_field(cli, tag);
	json_t *arr = json_array();
	size_t i = 0;

	while (f && i < f->len) {
		size_t e = i;
		while (e < f->len && f->val[e] != ',')
			e++;
		if (e > i)
			json_array_append_new(arr, json_stringn(f->val + i, e - i));
		i = e + 1;
	}
	if (cli->json && cli->out)
		json_object_set_new(cli->out, key, arr);
	else
		json_decref(arr);
	if (label) {
		if (f && f->len)
			out_text(cli, "%-24s %.*s", label, (int)f->len, f->val);
		else
			out_text(cli, "%-24s (none)", label);
	}
}

static int cmd_role_list(struct cli *cli, struct cli_args *a)
{
	const struct kh_field *f;
	int rc;

	cli_req(cli, "RLLS");
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_list(cli, "RL", "roles", NULL);
	f = cli_field(cli, "RL");
	for (size_t i = 0; f && i < f->len;) {
		size_t e = i;
		while (e < f->len && f->val[e] != ',')
			e++;
		out_text(cli, "%.*s", (int)(e - i), f->val + i);
		i = e + 1;
	}
	return CLI_OK;
}

static int cmd_role_show(struct cli *cli, struct cli_args *a)
{
	int rc;

	if (!cli_arg(a, "name"))
		return cli_usage(cli, "needs --name NAME");
	cli_req(cli, "RLSH");
	cli_put(cli, "RN", cli_arg(a, "name"));
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	cli_out_field(cli, "RN", "role", "Name");
	out_list(cli, "PM", "permissions", "Permissions:");
	out_list(cli, "KR", "key_ranges", "Key ranges:");
	out_list(cli, "CM", "commands", "Commands:");
	cli_out_fnum(cli, "LQ", "logins_required", "Logins required");
	out_list(cli, "PT", "ports", "Ports:");
	out_list(cli, "CS", "sources", "Connection sources:");
	cli_out_field(cli, "DF", "dual_factor", "Use dual factor");
	cli_out_fyn(cli, "BI", "builtin", "Built-in");
	cli_out_fnum(cli, "IC", "identities", "Identities");
	return CLI_OK;
}

static int cmd_role_delete(struct cli *cli, struct cli_args *a)
{
	int rc;

	if (!cli_arg(a, "name"))
		return cli_usage(cli, "needs --name NAME");
	cli_req(cli, "RLDL");
	cli_put(cli, "RN", cli_arg(a, "name"));
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_str(cli, "role", NULL, cli_arg(a, "name"));
	out_text(cli, "Role %s deleted.", cli_arg(a, "name"));
	return CLI_OK;
}

const struct cli_cmd cli_role_cmds[] = {
	{"add", cmd_role_add, role_add_opts,
	 "--name NAME [--permissions LIST|none] [--key-ranges LIST|none] [--commands LIST|none] "
	 "[--logins-required N] [--ports prod,admin] [--sources ethernet,usb] [--dual-factor never]",
	 "create a role (RLAD)", NULL, CLI_F_CONN},
	{"modify", cmd_role_modify, role_modify_opts,
	 "--name NAME [--permissions LIST|none] [--key-ranges LIST|none] [--commands LIST|none] "
	 "[--logins-required N] [--ports prod,admin] [--sources ethernet,usb] [--dual-factor never] "
	 "[--new-name NAME]",
	 "change a role; given fields replace the stored ones (RLMD)", NULL, CLI_F_CONN},
	{"list", cmd_role_list, cli_none_opts, "", "list roles (RLLS)", NULL, CLI_F_CONN},
	{"show", cmd_role_show, role_name_opts, "--name NAME", "show a role (RLSH)", NULL,
	 CLI_F_CONN},
	{"delete", cmd_role_delete, role_name_opts, "--name NAME", "delete a role (RLDL)", NULL,
	 CLI_F_CONN},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
