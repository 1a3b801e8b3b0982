/*
 * Session commands: login (with the forced change of a default password),
 * logout and password change. Passwords come only from a no-echo prompt, a
 * descriptor or a file, live on the secure heap, and are wiped after use.
 */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

const struct cli_optdef cli_login_opts[] = {
	{"user", 'u', CLI_VALUE, "NAME", "identity name (asked on the terminal if absent)"},
	{"password-fd", 0, CLI_VALUE, "N", "read the password from descriptor N (one line)"},
	{"password-file", 0, CLI_VALUE, "FILE", "read the password from FILE"},
	{"new-password-fd", 0, CLI_VALUE, "N",
	 "new password from descriptor N, if a change is required"},
	{"new-password-file", 0, CLI_VALUE, "FILE", "new password from FILE, if a change is required"},
	{NULL, 0, 0, NULL, NULL},
};

const struct cli_optdef cli_logout_opts[] = {
	{"user", 'u', CLI_VALUE, "NAME", "identity to log out (default: all)"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef password_change_opts[] = {
	{"user", 'u', CLI_VALUE, "NAME", "identity name"},
	{"password-fd", 0, CLI_VALUE, "N", "current password from descriptor N (one line)"},
	{"password-file", 0, CLI_VALUE, "FILE", "current password from FILE"},
	{"new-password-fd", 0, CLI_VALUE, "N", "new password from descriptor N (one line)"},
	{"new-password-file", 0, CLI_VALUE, "FILE", "new password from FILE"},
	{NULL, 0, 0, NULL, NULL},
};

static int get_user(struct cli *cli, struct cli_args *a, char *user, size_t sz)
{
	const char *u = cli_arg(a, "user");
	if (u) {
		if (strlen(u) >= sz || *u == '\0')
			return cli_usage(cli, "bad identity name");
		snprintf(user, sz, "%s", u);
		return CLI_OK;
	}
	return cli_prompt_line(cli, "Identity: ", user, sz);
}

static void login_request(struct cli *cli, const char *user, const struct cli_secret *pw,
			  const struct cli_secret *np)
{
	cli_req(cli, "LOGN");
	cli_put(cli, "ID", user);
	cli_put_hex(cli, "PW", (const uint8_t *)pw->p, pw->len);
	if (np)
		cli_put_hex(cli, "NP", (const uint8_t *)np->p, np->len);
}

int cmd_login(struct cli *cli, struct cli_args *a)
{
	struct cli_secret pw = {0}, np = {0};
	char user[128], prompt[192];
	bool changed = false;
	int rc, r;

	if ((rc = get_user(cli, a, user, sizeof(user))) != CLI_OK)
		return rc;
	/* connect before asking for the password */
	if ((rc = cli_ensure_connected(cli)) != CLI_OK)
		return rc;
	snprintf(prompt, sizeof(prompt), "Password for %s: ", user);
	if ((rc = secret_get(cli, &pw, cli_arg(a, "password-fd"), cli_arg(a, "password-file"),
			     prompt, false)) != CLI_OK)
		goto out;
	login_request(cli, user, &pw, NULL);
	r = cli_call_quiet(cli);
	if (r == KH_ERR_PASSWORD_CHANGE_REQUIRED) {
		if (!cli->json)
			fprintf(stderr, "The password of %s must be changed now.\n", user);
		snprintf(prompt, sizeof(prompt), "New password for %s: ", user);
		if ((rc = secret_get(cli, &np, cli_arg(a, "new-password-fd"),
				     cli_arg(a, "new-password-file"), prompt, true)) != CLI_OK)
			goto out;
		login_request(cli, user, &pw, &np);
		r = cli_call_quiet(cli);
		changed = r == KH_OK;
	}
	if (r == KH_ERR_BAD_FIELD && cli->req_err == KH_ERR_BAD_FIELD) {
		rc = cli_usage(cli, "identity name may not contain ';', '[' or ']'");
		goto out;
	}
	if (r != KH_OK) {
		rc = cli_client_fail(cli, r);
		goto out;
	}
	char role[128];
	long long lc = cli_fnum(cli, "LC", 0), lq = cli_fnum(cli, "LQ", 0);
	bool active = cli_fyes(cli, "AC");
	cli_fstr(cli, "RO", role, sizeof(role));
	out_str(cli, "identity", NULL, user);
	out_str(cli, "role", NULL, role);
	out_int(cli, "logins", NULL, lc);
	out_int(cli, "required", NULL, lq);
	out_bool(cli, "active", NULL, active);
	out_bool(cli, "password_changed", NULL, changed || cli_fyes(cli, "MC"));
	if (changed)
		out_text(cli, "Password of %s changed.", user);
	out_text(cli, "Logged in %s: role %s, %lld of %lld login%s, role %s.", user, role, lc, lq,
		 lq == 1 ? "" : "s", active ? "active" : "not active yet");
	rc = CLI_OK;
out:
	secret_free(&pw);
	secret_free(&np);
	return rc;
}

int cmd_logout(struct cli *cli, struct cli_args *a)
{
	int rc;

	cli_req(cli, "LOGO");
	if (cli_arg(a, "user"))
		cli_put(cli, "ID", cli_arg(a, "user"));
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	long long lc = cli_fnum(cli, "LC", 0);
	out_int(cli, "logins", NULL, lc);
	out_text(cli, "Logged out%s%s; %lld identit%s still logged in.",
		 cli_arg(a, "user") ? " " : "", cli_arg(a, "user") ? cli_arg(a, "user") : "", lc,
		 lc == 1 ? "y" : "ies");
	return CLI_OK;
}

static int cmd_password_change(struct cli *cli, struct cli_args *a)
{
	struct cli_secret pw = {0}, np = {0};
	char prompt[192];
	const char *user = cli_arg(a, "user");
	int rc;

	if (user == NULL)
		return cli_usage(cli, "password change needs --user NAME");
	snprintf(prompt, sizeof(prompt), "Current password for %s: ", user);
	if ((rc = secret_get(cli, &pw, cli_arg(a, "password-fd"), cli_arg(a, "password-file"),
			     prompt, false)) != CLI_OK)
		goto out;
	snprintf(prompt, sizeof(prompt), "New password for %s: ", user);
	if ((rc = secret_get(cli, &np, cli_arg(a, "new-password-fd"),
			     cli_arg(a, "new-password-file"), prompt, true)) != CLI_OK)
		goto out;
	cli_req(cli, "CHPW");
	cli_put(cli, "ID", user);
	cli_put_hex(cli, "PW", (const uint8_t *)pw.p, pw.len);
	cli_put_hex(cli, "NP", (const uint8_t *)np.p, np.len);
	if ((rc = cli_call(cli)) != CLI_OK)
		goto out;
	out_str(cli, "identity", NULL, user);
	out_text(cli, "Password of %s changed.", user);
out:
	secret_free(&pw);
	secret_free(&np);
	return rc;
}

const struct cli_cmd cli_password_cmds[] = {
	{"change", cmd_password_change, password_change_opts,
	 "--user NAME [--password-fd N | --password-file F] [--new-password-fd N | "
	 "--new-password-file F]",
	 "change an identity's own password (CHPW)", NULL, CLI_F_CONN},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
