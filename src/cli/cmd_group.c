/*
 * keyhold-guardian's device groups: add, modify, show, list, remove, the
 * table check and the replication state. Values are checked here first
 * (on/off, the three connection types, ports) so that a typing error never
 * reaches the guardian; the guardian's own refusals are shown as it words them.
 */
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define GROUP_FIELD_OPTS                                                                           \
	{"name", 0, CLI_VALUE, "NAME", "group name"},                                             \
	{"description", 0, CLI_VALUE, "TEXT", "description"},                                      \
	{"owner", 0, CLI_VALUE, "USER", "owner (default: the logged-in user)"},                    \
	{"type", 0, CLI_VALUE, "HSM", "group type: HSM ('Hardware Security Module')"},             \
	{"port", 0, CLI_VALUE, "N", "the group's Excrypt endpoint port on the guardian"},         \
	{"enabled", 0, CLI_VALUE, "on|off", "group enabled"},                                      \
	{"option-configuration", 0, CLI_VALUE, "on|off", "remote configuration of the members"},   \
	{"option-monitoring", 0, CLI_VALUE, "on|off", "monitoring of the members"},                \
	{"option-balancing", 0, CLI_VALUE, "on|off", "load balancing between the members"},        \
	{"excrypt-allow", 0, CLI_VALUE, "on|off", "allow the Excrypt/Standard connection pair"},    \
	{"excrypt-conn", 0, CLI_VALUE, "TYPE", "its connection: Clear, SSL or 'Anonymous TLS'"},   \
	{"http-allow", 0, CLI_VALUE, "on|off", "allow the HTTP connection pair"},                  \
	{"http-conn", 0, CLI_VALUE, "TYPE", "its connection: Clear, SSL or 'Anonymous TLS'"},      \
	{"international-allow", 0, CLI_VALUE, "on|off", "allow the International connection pair"}, \
	{"international-conn", 0, CLI_VALUE, "TYPE", "its connection: Clear, SSL or 'Anonymous TLS'"}

static const struct cli_optdef group_add_opts[] = {
	GROUP_FIELD_OPTS,
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef group_modify_opts[] = {
	{"group", 0, CLI_VALUE, "G", "the group: its id or name"},
	GROUP_FIELD_OPTS,
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef group_id_opts[] = {
	{"group", 0, CLI_VALUE, "G", "the group: its id or name"},
	{NULL, 0, 0, NULL, NULL},
};

static const char *const pair_keys[] = {"excrypt", "http", "international"};
static const char *const pair_labels[] = {"Excrypt/Standard", "HTTP", "International"};

bool gd_onoff_arg(struct cli *cli, struct cli_args *a, const char *name, int *v)
{
	const char *s = cli_arg(a, name);
	*v = -1;
	if (s == NULL)
		return true;
	if (strcasecmp(s, "on") == 0 || strcasecmp(s, "yes") == 0 || strcasecmp(s, "true") == 0)
		*v = 1;
	else if (strcasecmp(s, "off") == 0 || strcasecmp(s, "no") == 0 ||
		 strcasecmp(s, "false") == 0)
		*v = 0;
	else {
		KH_IGNORE(cli_usage(cli, "--%s must be on or off, not '%s'", name, s));
		return false;
	}
	return true;
}

/* Clear, SSL or Anonymous TLS (any case; "anonymous-tls" too): the
 * guardian's spelling, NULL when absent; false after a usage error. */
static bool conn_arg(struct cli *cli, struct cli_args *a, const char *name, const char **v)
{
	const char *s = cli_arg(a, name);
	*v = NULL;
	if (s == NULL)
		return true;
	if (strcasecmp(s, "clear") == 0)
		*v = "Clear";
	else if (strcasecmp(s, "ssl") == 0)
		*v = "SSL";
	else if (strcasecmp(s, "anonymous tls") == 0 || strcasecmp(s, "anonymous-tls") == 0)
		*v = "Anonymous TLS";
	else {
		KH_IGNORE(cli_usage(cli, "--%s must be Clear, SSL or 'Anonymous TLS', not '%s'", name,
				    s));
		return false;
	}
	return true;
}

/* The request body of add (all given fields) or modify (given fields; the
 * options and pairs objects whole, from cur, so that a change of one member
 * never depends on how the server merges nested objects). */
static int group_body(struct cli *cli, struct cli_args *a, json_t *cur, json_t **out)
{
	static const char *const optnames[] = {"configuration", "monitoring", "balancing"};
	json_t *b = json_object(), *opts = NULL, *pairs = NULL;
	uint64_t port = 0;
	int on;
	bool any = false;

	*out = NULL;
	if (b == NULL)
		return cli_fail(cli, KH_ERR_NOMEM, "out of memory");
	if (!cli_arg_u64(cli, a, "port", 1, 65535, &port))
		goto usage;
	if (cli_arg(a, "name")) {
		if (*cli_arg(a, "name") == '\0') {
			KH_IGNORE(cli_usage(cli, "--name: empty name"));
			goto usage;
		}
		json_object_set_new(b, "name", json_string(cli_arg(a, "name")));
	}
	if (cli_arg(a, "description"))
		json_object_set_new(b, "description", json_string(cli_arg(a, "description")));
	if (cli_arg(a, "owner"))
		json_object_set_new(b, "owner", json_string(cli_arg(a, "owner")));
	if (cli_arg(a, "type")) {
		const char *t = cli_arg(a, "type");
		if (strcasecmp(t, "hsm") != 0 && strcasecmp(t, "Hardware Security Module") != 0) {
			KH_IGNORE(cli_usage(cli, "--type must be HSM ('Hardware Security Module'), "
					    "not '%s'", t));
			goto usage;
		}
		json_object_set_new(b, "type", json_string("Hardware Security Module"));
	}
	if (cli_arg(a, "port"))
		json_object_set_new(b, "port", json_integer((json_int_t)port));
	if (!gd_onoff_arg(cli, a, "enabled", &on))
		goto usage;
	if (on >= 0)
		json_object_set_new(b, "enabled", json_boolean(on));
	for (size_t i = 0; i < 3; i++) {
		char name[48];
		snprintf(name, sizeof(name), "option-%s", optnames[i]);
		if (!gd_onoff_arg(cli, a, name, &on))
			goto usage;
		if (on < 0)
			continue;
		if (opts == NULL) {
			json_t *c = json_object_get(cur, "options");
			opts = json_is_object(c) ? json_deep_copy(c) : json_object();
		}
		json_object_set_new(opts, optnames[i], json_boolean(on));
	}
	for (size_t i = 0; i < 3; i++) {
		char an[48], cn[48];
		const char *conn;
		snprintf(an, sizeof(an), "%s-allow", pair_keys[i]);
		snprintf(cn, sizeof(cn), "%s-conn", pair_keys[i]);
		if (!gd_onoff_arg(cli, a, an, &on) || !conn_arg(cli, a, cn, &conn))
			goto usage;
		if (on < 0 && conn == NULL)
			continue;
		if (pairs == NULL) {
			json_t *c = json_object_get(cur, "pairs");
			pairs = json_is_object(c) ? json_deep_copy(c) : json_object();
		}
		json_t *p = json_object_get(pairs, pair_keys[i]);
		if (!json_is_object(p)) {
			p = json_object();
			json_object_set_new(pairs, pair_keys[i], p);
		}
		if (on >= 0)
			json_object_set_new(p, "allow", json_boolean(on));
		if (conn)
			json_object_set_new(p, "conn", json_string(conn));
	}
	if (opts)
		json_object_set_new(b, "options", opts);
	if (pairs)
		json_object_set_new(b, "pairs", pairs);
	any = json_object_size(b) > 0;
	if (!any && cur) {
		KH_IGNORE(cli_usage(cli, "nothing to change: give a field option (see --help)"));
		goto usage_b;
	}
	*out = b;
	return CLI_OK;
usage:
	json_decref(opts);
	json_decref(pairs);
usage_b:
	json_decref(b);
	return CLI_USAGE;
}

static void pair_text(json_t *g, size_t i, char *out, size_t outsz)
{
	json_t *p = json_object_get(json_object_get(g, "pairs"), pair_keys[i]);
	snprintf(out, outsz, "%s", gd_jbool(p, "allow") ? gd_jstr(p, "conn", "?") : "off");
}

static void options_text(json_t *g, char *out, size_t outsz)
{
	json_t *o = json_object_get(g, "options");
	snprintf(out, outsz, "%s%s%s", gd_jbool(o, "configuration") ? "config " : "",
		 gd_jbool(o, "monitoring") ? "monitor " : "", gd_jbool(o, "balancing") ? "balance " : "");
	size_t n = strlen(out);
	if (n)
		out[n - 1] = '\0';
	else
		snprintf(out, outsz, "-");
}

static void print_group(struct cli *cli, json_t *g)
{
	char t[96];
	json_t *o = json_object_get(g, "options");

	out_text(cli, "%-24s %lld", "Id:", gd_jint(g, "id", 0));
	out_text(cli, "%-24s %s", "Name:", gd_jstr(g, "name", ""));
	out_text(cli, "%-24s %s", "Description:", gd_jstr(g, "description", ""));
	out_text(cli, "%-24s %s", "Owner:", gd_jstr(g, "owner", ""));
	out_text(cli, "%-24s %s", "Type:", gd_jstr(g, "type", ""));
	out_text(cli, "%-24s configuration %s, monitoring %s, balancing %s", "Options:",
		 gd_jbool(o, "configuration") ? "on" : "off", gd_jbool(o, "monitoring") ? "on" : "off",
		 gd_jbool(o, "balancing") ? "on" : "off");
	for (size_t i = 0; i < 3; i++) {
		json_t *p = json_object_get(json_object_get(g, "pairs"), pair_keys[i]);
		snprintf(t, sizeof(t), "%s:", pair_labels[i]);
		out_text(cli, "%-24s %s, %s", t, gd_jbool(p, "allow") ? "allowed" : "not allowed",
			 gd_jstr(p, "conn", "?"));
	}
	out_text(cli, "%-24s %lld", "Port:", gd_jint(g, "port", 0));
	out_text(cli, "%-24s %s", "Enabled:", gd_jbool(g, "enabled") ? "yes" : "no");
	out_text(cli, "%-24s %lld", "Journal head:", gd_jint(g, "journal_head", 0));
	gd_time_text(gd_jint(g, "changed_ms", 0), t, sizeof(t));
	out_text(cli, "%-24s %s UTC", "Changed:", t);
}

/* Warnings of an add or modify: stderr (text) or "warnings" (JSON). */
static void warnings(struct cli *cli, json_t *ans)
{
	json_t *w = json_object_get(ans, "warnings");
	if (!json_is_array(w) || json_array_size(w) == 0)
		return;
	if (cli->json) {
		out_json(cli, "warnings", json_incref(w));
		return;
	}
	fflush(stdout);
	for (size_t i = 0; i < json_array_size(w); i++)
		fprintf(stderr, "keyhold: %s: warning: %s\n", cli->cmdname,
			json_string_value(json_array_get(w, i)) ? json_string_value(json_array_get(w, i))
								 : "?");
}

/* The group object of an answer (the answer itself, or its "group"). */
static json_t *group_of(json_t *ans)
{
	json_t *g = json_object_get(ans, "group");
	return json_is_object(g) ? g : ans;
}

static int cmd_group_add(struct cli *cli, struct cli_args *a)
{
	json_t *body = NULL, *ans = NULL;
	int rc;

	if (!cli_arg(a, "name") || !cli_arg(a, "port"))
		return cli_usage(cli, "needs --name NAME and --port N");
	/* nested objects go whole, from kh_gstore_group_defaults' values */
	json_t *dflt = json_pack("{s:{s:b,s:b,s:b}, s:{s:{s:b,s:s}, s:{s:b,s:s}, s:{s:b,s:s}}}",
				 "options", "configuration", 1, "monitoring", 1, "balancing", 1,
				 "pairs", "excrypt", "allow", 1, "conn", "SSL", "http", "allow", 0,
				 "conn", "SSL", "international", "allow", 0, "conn", "SSL");
	rc = group_body(cli, a, dflt, &body);
	json_decref(dflt);
	if (rc != CLI_OK)
		return rc;
	if ((rc = gd_begin(cli)) == CLI_OK &&
	    (rc = gd_call(cli, "POST", "/api/groups", body, &ans)) == CLI_OK) {
		json_t *g = group_of(ans);
		out_json(cli, "group", json_incref(g));
		warnings(cli, ans);
		out_text(cli, "Group %lld (%s) added, port %lld.", gd_jint(g, "id", 0),
			 gd_jstr(g, "name", ""), gd_jint(g, "port", 0));
	}
	json_decref(body);
	json_decref(ans);
	return rc;
}

static int need_group(struct cli *cli, struct cli_args *a, long long *id)
{
	if (!cli_arg(a, "group"))
		return cli_usage(cli, "needs --group G (an id or a name)");
	return gd_group_id(cli, cli_arg(a, "group"), id);
}

static int cmd_group_modify(struct cli *cli, struct cli_args *a)
{
	json_t *body = NULL, *ans = NULL, *cur = NULL;
	char target[64];
	long long id;
	int rc;

	if (!cli_arg(a, "group"))
		return cli_usage(cli, "needs --group G (an id or a name)");
	/* check every value before anything goes to the guardian */
	cur = json_object();
	rc = group_body(cli, a, cur, &body);
	json_decref(cur);
	cur = NULL;
	if (rc != CLI_OK)
		return rc;
	json_decref(body);
	body = NULL;
	if ((rc = need_group(cli, a, &id)) != CLI_OK)
		return rc;
	snprintf(target, sizeof(target), "/api/groups/%lld", id);
	if ((rc = gd_call(cli, "GET", target, NULL, &cur)) != CLI_OK)
		return rc;
	if ((rc = group_body(cli, a, group_of(cur), &body)) != CLI_OK)
		goto out;
	if ((rc = gd_call(cli, "PUT", target, body, &ans)) != CLI_OK)
		goto out;
	out_json(cli, "group", json_incref(group_of(ans)));
	warnings(cli, ans);
	out_text(cli, "Group %lld (%s) modified.", id, gd_jstr(group_of(ans), "name", ""));
out:
	json_decref(cur);
	json_decref(body);
	json_decref(ans);
	return rc;
}

static int cmd_group_show(struct cli *cli, struct cli_args *a)
{
	json_t *ans = NULL;
	char target[64];
	long long id;
	int rc;

	if ((rc = need_group(cli, a, &id)) != CLI_OK)
		return rc;
	snprintf(target, sizeof(target), "/api/groups/%lld", id);
	if ((rc = gd_call(cli, "GET", target, NULL, &ans)) != CLI_OK)
		return rc;
	json_t *g = group_of(ans);
	out_json(cli, "group", json_incref(g));
	print_group(cli, g);
	if (!cli->json) {
		json_t *d = json_object_get(g, "devices");
		out_text(cli, "%-24s %zu", "Devices:", json_array_size(d));
		if (json_array_size(d))
			gd_print_devices(cli, d);
	}
	json_decref(ans);
	return CLI_OK;
}

static int cmd_group_list(struct cli *cli, struct cli_args *a)
{
	json_t *ans = NULL, *arr;
	int rc;

	if ((rc = gd_call(cli, "GET", "/api/groups", NULL, &ans)) != CLI_OK)
		return rc;
	arr = json_object_get(ans, "groups");
	out_json(cli, "groups", json_is_array(arr) ? json_incref(arr) : json_array());
	if (json_array_size(arr) == 0)
		out_text(cli, "No groups.");
	else
		out_text(cli, "%-5s %-20s %-6s %-8s %-22s %-14s %-14s %s", "ID", "NAME", "PORT",
			 "ENABLED", "OPTIONS", "EXCRYPT", "HTTP", "INTERNATIONAL");
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *g = json_array_get(arr, i);
		char opts[64], p0[32], p1[32], p2[32];
		options_text(g, opts, sizeof(opts));
		pair_text(g, 0, p0, sizeof(p0));
		pair_text(g, 1, p1, sizeof(p1));
		pair_text(g, 2, p2, sizeof(p2));
		out_text(cli, "%-5lld %-20s %-6lld %-8s %-22s %-14s %-14s %s", gd_jint(g, "id", 0),
			 gd_jstr(g, "name", ""), gd_jint(g, "port", 0),
			 gd_jbool(g, "enabled") ? "yes" : "no", opts, p0, p1, p2);
	}
	json_decref(ans);
	return CLI_OK;
}

static int cmd_group_remove(struct cli *cli, struct cli_args *a)
{
	char target[64];
	long long id;
	int rc;

	if ((rc = need_group(cli, a, &id)) != CLI_OK)
		return rc;
	snprintf(target, sizeof(target), "/api/groups/%lld", id);
	if ((rc = gd_call(cli, "DELETE", target, NULL, NULL)) != CLI_OK)
		return rc;
	out_int(cli, "group_id", NULL, id);
	out_text(cli, "Group %lld removed.", id);
	return CLI_OK;
}

static int cmd_group_check(struct cli *cli, struct cli_args *a)
{
	json_t *ans = NULL, *m;
	char target[64];
	long long id;
	int rc;
	bool agree;

	if ((rc = need_group(cli, a, &id)) != CLI_OK)
		return rc;
	snprintf(target, sizeof(target), "/api/groups/%lld/check", id);
	if ((rc = gd_call(cli, "POST", target, NULL, &ans)) != CLI_OK)
		return rc;
	agree = gd_jbool(ans, "all_agree");
	m = json_object_get(ans, "members");
	out_int(cli, "group_id", NULL, id);
	out_bool(cli, "all_agree", NULL, agree);
	out_json(cli, "members", json_is_array(m) ? json_incref(m) : json_array());
	out_text(cli, "%-7s %-8s %-7s %-8s %-10s %s", "DEVICE", "REACHED", "AGREES", "ROWS", "CHECK",
		 "MESSAGE");
	for (size_t i = 0; i < json_array_size(m); i++) {
		json_t *d = json_array_get(m, i);
		out_text(cli, "%-7lld %-8s %-7s %-8lld %-10s %s", gd_jint(d, "device_id", 0),
			 gd_jbool(d, "reached") ? "yes" : "no", gd_jbool(d, "agrees") ? "yes" : "no",
			 gd_jint(d, "rows", 0), gd_jstr(d, "ck", "-"), gd_jstr(d, "message", ""));
	}
	json_decref(ans);
	if (!agree)
		return out_end_error(cli, KH_ERR_STATE, "the members of group %lld do not agree", id);
	out_text(cli, "All members of group %lld agree.", id);
	return CLI_OK;
}

static int cmd_group_replication(struct cli *cli, struct cli_args *a)
{
	json_t *ans = NULL, *m;
	char target[64];
	long long id, head;
	int rc;

	if ((rc = need_group(cli, a, &id)) != CLI_OK)
		return rc;
	snprintf(target, sizeof(target), "/api/groups/%lld/replication", id);
	if ((rc = gd_call(cli, "GET", target, NULL, &ans)) != CLI_OK)
		return rc;
	head = gd_jint(ans, "journal_head", 0);
	m = json_object_get(ans, "members");
	out_int(cli, "group_id", NULL, id);
	out_int(cli, "journal_head", "Journal head", head);
	out_json(cli, "members", json_is_array(m) ? json_incref(m) : json_array());
	out_text(cli, "%-7s %-11s %-9s %-8s %-7s %s", "DEVICE", "ROLE", "VERSION", "PENDING",
		 "SYNCED", "BEHIND");
	for (size_t i = 0; i < json_array_size(m); i++) {
		json_t *d = json_array_get(m, i);
		long long v = gd_jint(d, "repl_version", 0);
		out_text(cli, "%-7lld %-11s %-9lld %-8lld %-7s %lld", gd_jint(d, "device_id", 0),
			 gd_jstr(d, "role", "?"), v, gd_jint(d, "pending", 0),
			 gd_jbool(d, "synced") ? "yes" : "no", head > v ? head - v : 0);
	}
	json_decref(ans);
	return CLI_OK;
}

#define GROUP_FIELDS_USAGE                                                                         \
	"[--description TEXT] [--owner USER] [--type HSM] [--enabled on|off] "                      \
	"[--option-configuration on|off] [--option-monitoring on|off] [--option-balancing on|off] " \
	"[--excrypt-allow on|off] [--excrypt-conn Clear|SSL|'Anonymous TLS'] [--http-allow on|off] " \
	"[--http-conn TYPE] [--international-allow on|off] [--international-conn TYPE]"

const struct cli_cmd cli_group_cmds[] = {
	{"add", cmd_group_add, group_add_opts, "--name NAME --port N " GROUP_FIELDS_USAGE,
	 "create a device group (defaults: options on, Excrypt/Standard allowed, HTTP and "
	 "International not, every pair SSL, enabled)", NULL, 0},
	{"modify", cmd_group_modify, group_modify_opts,
	 "--group G [--name NEW] [--port N] " GROUP_FIELDS_USAGE,
	 "change a group: only the given fields change", NULL, 0},
	{"show", cmd_group_show, group_id_opts, "--group G", "a group, its settings and devices",
	 NULL, 0},
	{"list", cmd_group_list, cli_none_opts, "", "every group", NULL, 0},
	{"remove", cmd_group_remove, group_id_opts, "--group G",
	 "remove a group (its devices first, the Primary last)", NULL, 0},
	{"check", cmd_group_check, group_id_opts, "--group G",
	 "compare the members' key tables (exit 1 when they disagree)", NULL, 0},
	{"replication", cmd_group_replication, group_id_opts, "--group G",
	 "the journal head and each member's replication version", NULL, 0},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
