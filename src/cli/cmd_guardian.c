/*
 * keyhold-guardian's events, metrics, users and roles, and Remote Manage:
 * any Admin-port command run on a device through the guardian's relay, with
 * the CLI's own TLS to the HSM inside it (the guardian relays ciphertext).
 * New passwords come only from a prompt, a descriptor or a file.
 */
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const struct cli_optdef cli_events_opts[] = {
	{"group", 0, CLI_VALUE, "G", "only this group (an id or a name)"},
	{"device", 0, CLI_VALUE, "ID", "only this device"},
	{"max", 0, CLI_VALUE, "N", "at most N events (1-1000, default 100)"},
	{"skip", 0, CLI_VALUE, "N", "skip the N newest"},
	{NULL, 0, 0, NULL, NULL},
};

const struct cli_optdef cli_metrics_opts[] = {
	{"device", 0, CLI_VALUE, "ID", "the device"},
	{"res", 0, CLI_VALUE, "10s|1m", "bucket size (default 10s)"},
	{"from", 0, CLI_VALUE, "MS", "start, ms since the epoch (default: an hour ago)"},
	{"to", 0, CLI_VALUE, "MS", "end, ms since the epoch (default: now)"},
	{NULL, 0, 0, NULL, NULL},
};

const struct cli_optdef cli_remote_opts[] = {
	{"device", 0, CLI_VALUE, "ID", "the device whose Admin port to reach"},
	{"help", 'h', CLI_FLAG, NULL, "this help"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef user_add_opts[] = {
	{"name", 0, CLI_VALUE, "NAME", "the new user"},
	{"role", 0, CLI_VALUE, "ROLE", "Administrator, Operator or Auditor"},
	{"new-password-fd", 0, CLI_VALUE, "N", "the new user's password from descriptor N"},
	{"new-password-file", 0, CLI_VALUE, "FILE", "the new user's password from FILE"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef user_name_opts[] = {
	{"name", 0, CLI_VALUE, "NAME", "the user"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef user_passwd_opts[] = {
	{"name", 0, CLI_VALUE, "NAME", "the user (default: the one logged in)"},
	{"new-password-fd", 0, CLI_VALUE, "N", "the new password from descriptor N"},
	{"new-password-file", 0, CLI_VALUE, "FILE", "the new password from FILE"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef user_role_opts[] = {
	{"role", 0, CLI_VALUE, "ROLE", "the role, e.g. Administrator"},
	{"logins-required", 0, CLI_VALUE, "N", "users who must log in together (1 or 2)"},
	{NULL, 0, 0, NULL, NULL},
};

/* A path segment, percent-encoded (RFC 3986 unreserved characters stay). */
static int path_segment(struct cli *cli, const char *in, char *out, size_t outsz)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	if (*in == '\0')
		return cli_usage(cli, "empty name");
	for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
		bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			     (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' ||
			     *p == '~';
		if (o + (plain ? 1 : 3) >= outsz)
			return cli_usage(cli, "name too long");
		if (plain) {
			out[o++] = (char)*p;
		} else {
			out[o++] = '%';
			out[o++] = hex[*p >> 4];
			out[o++] = hex[*p & 15];
		}
	}
	out[o] = '\0';
	return CLI_OK;
}

/* ---- events and metrics ---- */

int cmd_events(struct cli *cli, struct cli_args *a)
{
	json_t *ans = NULL, *arr;
	char target[160], q[128] = "";
	uint64_t max = 100, skip = 0;
	long long gid = 0, did = 0;
	int rc;

	if (!cli_arg_u64(cli, a, "max", 1, 1000, &max) ||
	    !cli_arg_u64(cli, a, "skip", 0, (uint64_t)1 << 53, &skip) ||
	    (cli_arg(a, "device") && !gd_id_arg(cli, a, "device", &did)))
		return CLI_USAGE;
	if (cli_arg(a, "group") && (rc = gd_group_id(cli, cli_arg(a, "group"), &gid)) != CLI_OK)
		return rc;
	if (gid)
		snprintf(q + strlen(q), sizeof(q) - strlen(q), "group=%lld&", gid);
	if (did)
		snprintf(q + strlen(q), sizeof(q) - strlen(q), "device=%lld&", did);
	if (skip)
		snprintf(q + strlen(q), sizeof(q) - strlen(q), "skip=%llu&", (unsigned long long)skip);
	snprintf(target, sizeof(target), "/api/events?%smax=%llu", q, (unsigned long long)max);
	if ((rc = gd_call(cli, "GET", target, NULL, &ans)) != CLI_OK)
		return rc;
	arr = json_object_get(ans, "events");
	out_json(cli, "events", json_is_array(arr) ? json_incref(arr) : json_array());
	if (json_array_size(arr) == 0)
		out_text(cli, "No events.");
	else
		out_text(cli, "%-19s %-6s %-6s %-12s %s", "TIME (UTC)", "GROUP", "DEVICE", "KIND",
			 "TEXT");
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *e = json_array_get(arr, i);
		char t[32], g[24], d[24];
		gd_time_text(gd_jint(e, "t_ms", 0), t, sizeof(t));
		if (gd_jint(e, "group_id", 0) > 0)
			snprintf(g, sizeof(g), "%lld", gd_jint(e, "group_id", 0));
		else
			snprintf(g, sizeof(g), "-");
		if (gd_jint(e, "device_id", 0) > 0)
			snprintf(d, sizeof(d), "%lld", gd_jint(e, "device_id", 0));
		else
			snprintf(d, sizeof(d), "-");
		out_text(cli, "%-19s %-6s %-6s %-12s %s", t, g, d, gd_jstr(e, "kind", "?"),
			 gd_jstr(e, "text", ""));
	}
	json_decref(ans);
	return CLI_OK;
}

int cmd_metrics(struct cli *cli, struct cli_args *a)
{
	json_t *ans = NULL, *arr;
	char target[192];
	const char *res = cli_arg(a, "res") ? cli_arg(a, "res") : "10s";
	uint64_t from = 0, to = 0;
	long long id;
	int rc, n;

	if (!cli_arg(a, "device"))
		return cli_usage(cli, "needs --device ID");
	if (!gd_id_arg(cli, a, "device", &id) ||
	    !cli_arg_u64(cli, a, "from", 0, (uint64_t)1 << 53, &from) ||
	    !cli_arg_u64(cli, a, "to", 0, (uint64_t)1 << 53, &to))
		return CLI_USAGE;
	if (strcmp(res, "10s") != 0 && strcmp(res, "1m") != 0)
		return cli_usage(cli, "--res must be 10s or 1m, not '%s'", res);
	if (cli_arg(a, "from") && cli_arg(a, "to") && from > to)
		return cli_usage(cli, "--from is after --to");
	n = snprintf(target, sizeof(target), "/api/devices/%lld/metrics?res=%s", id, res);
	if (cli_arg(a, "from"))
		n += snprintf(target + n, sizeof(target) - (size_t)n, "&from=%llu",
			      (unsigned long long)from);
	if (cli_arg(a, "to"))
		snprintf(target + n, sizeof(target) - (size_t)n, "&to=%llu", (unsigned long long)to);
	if ((rc = gd_call(cli, "GET", target, NULL, &ans)) != CLI_OK)
		return rc;
	arr = json_object_get(ans, "buckets");
	out_int(cli, "device_id", NULL, gd_jint(ans, "device_id", id));
	out_str(cli, "res", NULL, gd_jstr(ans, "res", res));
	out_json(cli, "buckets", json_is_array(arr) ? json_incref(arr) : json_array());
	out_text(cli, "Device %lld, %s buckets:", id, gd_jstr(ans, "res", res));
	out_text(cli, "%-19s %-9s %-7s %-11s %s", "TIME (UTC)", "REQUESTS", "ERRORS", "LAT_AVG_MS",
		 "LAT_MAX_MS");
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *b = json_array_get(arr, i), *avg = json_object_get(b, "lat_avg_ms"),
		       *mx = json_object_get(b, "lat_max_ms");
		char t[32];
		gd_time_text(gd_jint(b, "t_ms", 0), t, sizeof(t));
		out_text(cli, "%-19s %-9lld %-7lld %-11.2f %.2f", t, gd_jint(b, "requests", 0),
			 gd_jint(b, "errors", 0), json_is_number(avg) ? json_number_value(avg) : 0.0,
			 json_is_number(mx) ? json_number_value(mx) : 0.0);
	}
	json_decref(ans);
	return CLI_OK;
}

/* ---- users and roles ---- */

static int new_password(struct cli *cli, struct cli_args *a, const char *user,
			struct cli_secret *pw)
{
	char prompt[192];
	int rc;

	snprintf(prompt, sizeof(prompt), "New guardian password for %s: ", user);
	if ((rc = secret_get(cli, pw, cli_arg(a, "new-password-fd"), cli_arg(a, "new-password-file"),
			     prompt, true)) != CLI_OK)
		return rc;
	if (pw->len < 8 || pw->len > 256) {
		secret_free(pw);
		return cli_usage(cli, "a guardian password has 8 to 256 bytes");
	}
	return CLI_OK;
}

static int cmd_user_list(struct cli *cli, struct cli_args *a)
{
	json_t *ans = NULL, *arr;
	int rc;

	if ((rc = gd_call(cli, "GET", "/api/users", NULL, &ans)) != CLI_OK)
		return rc;
	arr = json_object_get(ans, "users");
	out_json(cli, "users", json_is_array(arr) ? json_incref(arr) : json_array());
	out_text(cli, "%-24s %-16s %-7s %s", "NAME", "ROLE", "LOCKED", "MUST_CHANGE");
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *u = json_array_get(arr, i);
		out_text(cli, "%-24s %-16s %-7s %s", gd_jstr(u, "name", "?"), gd_jstr(u, "role", "?"),
			 gd_jbool(u, "locked") ? "yes" : "no", gd_jbool(u, "must_change") ? "yes" : "no");
	}
	json_decref(ans);
	return CLI_OK;
}

static int cmd_user_add(struct cli *cli, struct cli_args *a)
{
	struct cli_secret pw = {0};
	json_t *body = NULL;
	const char *name = cli_arg(a, "name"), *role = cli_arg(a, "role");
	int rc;

	if (name == NULL || role == NULL || *name == '\0' || *role == '\0')
		return cli_usage(cli, "needs --name NAME and --role ROLE");
	if (cli_arg(a, "new-password-fd") && cli_arg(a, "new-password-file"))
		return cli_usage(cli, "give --new-password-fd or --new-password-file, not both");
	/* the login's passwords are read before this one */
	if ((rc = gd_begin(cli)) != CLI_OK || (rc = new_password(cli, a, name, &pw)) != CLI_OK)
		return rc;
	body = json_pack("{s:s, s:s, s:s%}", "name", name, "role", role, "password", pw.p, pw.len);
	if (body == NULL)
		rc = cli_usage(cli, "the name, role or password is not valid UTF-8");
	else if ((rc = gd_call(cli, "POST", "/api/users", body, NULL)) == CLI_OK) {
		out_str(cli, "user", NULL, name);
		out_str(cli, "role", NULL, role);
		out_text(cli, "Guardian user %s added with role %s.", name, role);
	}
	json_decref(body);
	secret_free(&pw);
	return rc;
}

static int cmd_user_remove(struct cli *cli, struct cli_args *a)
{
	char seg[400], target[440];
	int rc;

	if (!cli_arg(a, "name"))
		return cli_usage(cli, "needs --name NAME");
	if ((rc = path_segment(cli, cli_arg(a, "name"), seg, sizeof(seg))) != CLI_OK)
		return rc;
	snprintf(target, sizeof(target), "/api/users/%s", seg);
	if ((rc = gd_call(cli, "DELETE", target, NULL, NULL)) != CLI_OK)
		return rc;
	out_str(cli, "user", NULL, cli_arg(a, "name"));
	out_text(cli, "Guardian user %s removed.", cli_arg(a, "name"));
	return CLI_OK;
}

static int cmd_user_passwd(struct cli *cli, struct cli_args *a)
{
	struct cli_secret pw = {0};
	char seg[400], target[460], name[128];
	json_t *body = NULL;
	int rc;

	if (cli_arg(a, "new-password-fd") && cli_arg(a, "new-password-file"))
		return cli_usage(cli, "give --new-password-fd or --new-password-file, not both");
	if ((rc = gd_begin(cli)) != CLI_OK)
		return rc;
	snprintf(name, sizeof(name), "%s", cli_arg(a, "name") ? cli_arg(a, "name") : cli->g.login_user);
	if ((rc = path_segment(cli, name, seg, sizeof(seg))) != CLI_OK ||
	    (rc = new_password(cli, a, name, &pw)) != CLI_OK)
		return rc;
	snprintf(target, sizeof(target), "/api/users/%s/password", seg);
	body = json_pack("{s:s%}", "password", pw.p, pw.len);
	if (body == NULL)
		rc = cli_usage(cli, "the password is not valid UTF-8");
	else if ((rc = gd_call(cli, "POST", target, body, NULL)) == CLI_OK) {
		out_str(cli, "user", NULL, name);
		out_text(cli, "Guardian password of %s changed.", name);
	}
	json_decref(body);
	secret_free(&pw);
	return rc;
}

static int cmd_user_roles(struct cli *cli, struct cli_args *a)
{
	json_t *ans = NULL, *arr;
	int rc;

	if ((rc = gd_call(cli, "GET", "/api/roles", NULL, &ans)) != CLI_OK)
		return rc;
	arr = json_object_get(ans, "roles");
	out_json(cli, "roles", json_is_array(arr) ? json_incref(arr) : json_array());
	out_text(cli, "%-16s %-7s %s", "ROLE", "LOGINS", "PERMISSIONS");
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *r = json_array_get(arr, i), *p = json_object_get(r, "permissions");
		char perms[512] = "";
		for (size_t k = 0; k < json_array_size(p); k++) {
			const char *s = json_string_value(json_array_get(p, k));
			size_t l = strlen(perms);
			snprintf(perms + l, sizeof(perms) - l, "%s%s", l ? "," : "", s ? s : "?");
		}
		out_text(cli, "%-16s %-7lld %s", gd_jstr(r, "name", "?"),
			 gd_jint(r, "logins_required", 0), perms);
	}
	json_decref(ans);
	return CLI_OK;
}

static int cmd_user_role(struct cli *cli, struct cli_args *a)
{
	char seg[400], target[440];
	uint64_t n = 0;
	json_t *body;
	int rc;

	if (!cli_arg(a, "role") || !cli_arg(a, "logins-required"))
		return cli_usage(cli, "needs --role ROLE and --logins-required N");
	if (!cli_arg_u64(cli, a, "logins-required", 1, 2, &n))
		return CLI_USAGE;
	if ((rc = path_segment(cli, cli_arg(a, "role"), seg, sizeof(seg))) != CLI_OK)
		return rc;
	snprintf(target, sizeof(target), "/api/roles/%s", seg);
	body = json_pack("{s:I}", "logins_required", (json_int_t)n);
	rc = gd_call(cli, "PUT", target, body, NULL);
	json_decref(body);
	if (rc != CLI_OK)
		return rc;
	out_str(cli, "role", NULL, cli_arg(a, "role"));
	out_int(cli, "logins_required", NULL, (long long)n);
	out_text(cli, "Guardian role %s now needs %llu login%s.", cli_arg(a, "role"),
		 (unsigned long long)n, n == 1 ? "" : "s");
	return CLI_OK;
}

static int cmd_user_whoami(struct cli *cli, struct cli_args *a)
{
	json_t *ans = NULL, *logins;
	char names[512] = "";
	int rc;

	if ((rc = gd_call(cli, "GET", "/api/session", NULL, &ans)) != CLI_OK)
		return rc;
	logins = json_object_get(ans, "logins");
	for (size_t k = 0; k < json_array_size(logins); k++) {
		const char *s = json_string_value(json_array_get(logins, k));
		size_t l = strlen(names);
		snprintf(names + l, sizeof(names) - l, "%s%s", l ? ", " : "", s ? s : "?");
	}
	out_str(cli, "role", "Role", gd_jstr(ans, "role", ""));
	out_json(cli, "logins", json_is_array(logins) ? json_incref(logins) : json_array());
	out_text(cli, "%-24s %s", "Logged in:", names);
	out_int(cli, "needed", "Logins required", gd_jint(ans, "needed", 0));
	out_bool(cli, "authorized", "Authorized", gd_jbool(ans, "authorized"));
	out_int(cli, "expires_s", "Expires in (s)", gd_jint(ans, "expires_s", 0));
	json_decref(ans);
	return CLI_OK;
}

const struct cli_cmd cli_user_cmds[] = {
	{"list", cmd_user_list, cli_none_opts, "", "the guardian's users", NULL, 0},
	{"add", cmd_user_add, user_add_opts,
	 "--name NAME --role ROLE [--new-password-fd N | --new-password-file F]",
	 "add a guardian user (password: 8-256 bytes, asked twice without an option)", NULL, 0},
	{"remove", cmd_user_remove, user_name_opts, "--name NAME", "remove a guardian user", NULL,
	 0},
	{"passwd", cmd_user_passwd, user_passwd_opts,
	 "[--name NAME] [--new-password-fd N | --new-password-file F]",
	 "change a guardian user's password (default: your own)", NULL, 0},
	{"roles", cmd_user_roles, cli_none_opts, "", "the guardian's roles and their permissions",
	 NULL, 0},
	{"role", cmd_user_role, user_role_opts, "--role ROLE --logins-required 1|2",
	 "set how many users of a role must log in together", NULL, 0},
	{"whoami", cmd_user_whoami, cli_none_opts, "", "the guardian session: role, users logged in",
	 NULL, 0},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};

/* ---- Remote Manage ---- */

int cmd_remote(struct cli *cli, struct cli_args *a)
{
	json_t *ans = NULL;
	char target[64], host[300];
	long long id, aport;
	const struct cli_cmd *c = NULL;
	int rc;

	if (cli_flag(a, "help")) {
		if (!cli->json)
			for (c = cli_commands; c->name; c++)
				if (strcmp(c->name, "remote") == 0)
					cli_print_help(c, "remote");
		cli->out_done = true;
		return CLI_OK;
	}
	if (!cli_arg(a, "device"))
		return cli_usage(cli, "needs --device ID");
	if (!gd_id_arg(cli, a, "device", &id))
		return CLI_USAGE;
	if (a->npos > 0) {
		for (c = cli_commands; c->name; c++)
			if (strcmp(c->name, a->pos[0]) == 0)
				break;
		if (c->name == NULL)
			return cli_usage(cli, "no command '%s' (try 'help')", a->pos[0]);
		if (strcmp(c->name, "remote") == 0 || strcmp(c->name, "connect") == 0)
			return cli_usage(cli, "'%s' cannot run through remote", c->name);
	}
	snprintf(target, sizeof(target), "/api/devices/%lld", id);
	if ((rc = gd_call(cli, "GET", target, NULL, &ans)) != CLI_OK)
		return rc;
	json_t *d = json_object_get(ans, "device");
	if (!json_is_object(d))
		d = ans;
	snprintf(host, sizeof(host), "%s", gd_jstr(d, "host", ""));
	aport = gd_jint(d, "admin_port", 9009);
	json_decref(ans);
	if (host[0] == '\0' || aport < 1 || aport > 65535)
		return cli_fail(cli, KH_ERR_PROTOCOL, "the guardian's answer lacks device %lld's "
			       "host or Admin port", id);
	if ((rc = gd_relay(cli, id, host, (unsigned)aport)) != CLI_OK)
		return rc;
	if (a->npos > 0)
		return cli_run_argv(cli, (int)a->npos, (char **)(uintptr_t)a->pos);
	out_int(cli, "device_id", NULL, id);
	out_str(cli, "peer", "Connected to", kh_client_peer(cli->client));
	out_text(cli, "Device %lld (%s) through the guardian: the next commands go to it.", id, host);
	return CLI_OK;
}
