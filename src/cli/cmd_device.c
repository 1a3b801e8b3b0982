/*
 * keyhold-guardian's devices: add to a group, modify, enable, disable,
 * remove, promote to Primary, synchronize, diagnose, list and show. Values
 * are checked here first; the guardian's refusals (a second Primary, a
 * device of another model...) are shown as it words them, with the admit code.
 */
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEVICE_FIELD_OPTS                                                                          \
	{"host", 0, CLI_VALUE, "HOST", "the HSM's host name or IP address"},                      \
	{"port", 0, CLI_VALUE, "N", "its Excrypt port (default 9100)"},                           \
	{"admin-port", 0, CLI_VALUE, "N", "its Admin port (default 9009)"},                       \
	{"balancing", 0, CLI_VALUE, "on|off", "take part in load balancing"},                     \
	{"ping-timeout", 0, CLI_VALUE, "T", "ping timeout: seconds, or N s / N ms (0.1-60 s)"},   \
	{"enabled", 0, CLI_VALUE, "on|off", "device enabled"}

static const struct cli_optdef device_add_opts[] = {
	{"group", 0, CLI_VALUE, "G", "the group: its id or name"},
	DEVICE_FIELD_OPTS,
	{"role", 0, CLI_VALUE, "ROLE", "Primary (the first device), Production or Backup"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef device_modify_opts[] = {
	{"device", 0, CLI_VALUE, "ID", "the device's id"},
	DEVICE_FIELD_OPTS,
	{"role", 0, CLI_VALUE, "ROLE", "Production or Backup (to Primary: promote)"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef device_id_opts[] = {
	{"device", 0, CLI_VALUE, "ID", "the device's id"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef device_promote_opts[] = {
	{"device", 0, CLI_VALUE, "ID", "the device to become the Primary"},
	{"old-primary-role", 0, CLI_VALUE, "ROLE",
	 "what the old Primary becomes: Production (default) or Backup"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef device_list_opts[] = {
	{"group", 0, CLI_VALUE, "G", "only this group (an id or a name)"},
	{NULL, 0, 0, NULL, NULL},
};

/* Primary, Production, Backup (any case): the guardian's spelling. */
static bool role_arg(struct cli *cli, struct cli_args *a, const char *name, bool primary_ok,
		     const char **v)
{
	const char *s = cli_arg(a, name);
	*v = NULL;
	if (s == NULL)
		return true;
	if (primary_ok && strcasecmp(s, "primary") == 0)
		*v = "Primary";
	else if (strcasecmp(s, "production") == 0)
		*v = "Production";
	else if (strcasecmp(s, "backup") == 0)
		*v = "Backup";
	else {
		KH_IGNORE(cli_usage(cli, "--%s must be %sProduction or Backup, not '%s'", name,
				    primary_ok ? "Primary, " : "", s));
		return false;
	}
	return true;
}

/* "5", "5s", "2.5s", "500ms" into ms, within the guardian's 100 ms-60 s. */
static bool ping_arg(struct cli *cli, struct cli_args *a, long long *ms)
{
	const char *s = cli_arg(a, "ping-timeout");
	char *end = NULL;
	double v;

	*ms = -1;
	if (s == NULL)
		return true;
	if (s[0] >= '0' && s[0] <= '9') {
		v = strtod(s, &end);
		if (strcmp(end, "ms") == 0)
			*ms = (long long)v;
		else if (*end == '\0' || strcmp(end, "s") == 0)
			*ms = (long long)(v * 1000.0 + 0.5);
	}
	if (*ms < 100 || *ms > 60000) {
		KH_IGNORE(cli_usage(cli, "--ping-timeout must be 0.1 to 60 seconds ('5', '5s' or "
				    "'500ms'), not '%s'", s));
		return false;
	}
	return true;
}

static int device_body(struct cli *cli, struct cli_args *a, bool add, json_t **out)
{
	json_t *b = json_object();
	uint64_t port = 0, aport = 0;
	long long ping;
	const char *role;
	int bal, en;

	*out = NULL;
	if (!cli_arg_u64(cli, a, "port", 1, 65535, &port) ||
	    !cli_arg_u64(cli, a, "admin-port", 1, 65535, &aport) ||
	    !role_arg(cli, a, "role", add, &role) || !gd_onoff_arg(cli, a, "balancing", &bal) ||
	    !gd_onoff_arg(cli, a, "enabled", &en) || !ping_arg(cli, a, &ping)) {
		json_decref(b);
		return CLI_USAGE;
	}
	if (cli_arg(a, "host")) {
		if (*cli_arg(a, "host") == '\0') {
			json_decref(b);
			return cli_usage(cli, "--host: empty host");
		}
		json_object_set_new(b, "host", json_string(cli_arg(a, "host")));
	}
	if (cli_arg(a, "port"))
		json_object_set_new(b, "port", json_integer((json_int_t)port));
	if (cli_arg(a, "admin-port"))
		json_object_set_new(b, "admin_port", json_integer((json_int_t)aport));
	if (role)
		json_object_set_new(b, "role", json_string(role));
	if (bal >= 0)
		json_object_set_new(b, "balancing", json_boolean(bal));
	if (ping >= 0)
		json_object_set_new(b, "ping_timeout_ms", json_integer(ping));
	if (en >= 0)
		json_object_set_new(b, "enabled", json_boolean(en));
	if (!add && json_object_size(b) == 0) {
		json_decref(b);
		return cli_usage(cli, "nothing to change: give a field option (see --help)");
	}
	*out = b;
	return CLI_OK;
}

static json_t *device_of(json_t *ans)
{
	json_t *d = json_object_get(ans, "device");
	return json_is_object(d) ? d : ans;
}

void gd_print_devices(struct cli *cli, json_t *arr)
{
	out_text(cli, "%-5s %-6s %-28s %-6s %-11s %-9s %-8s %-7s %-8s %-11s %s", "ID", "GROUP",
		 "HOST:PORT", "ADMIN", "ROLE", "STATE", "SERVING", "SYNCED", "PENDING", "LATENCY_MS",
		 "ENABLED");
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *d = json_array_get(arr, i), *lat = json_object_get(d, "latency_ms");
		char hp[300], l[32];
		const char *h = gd_jstr(d, "host", "?");
		bool v6 = strchr(h, ':') != NULL;
		snprintf(hp, sizeof(hp), "%s%s%s:%lld", v6 ? "[" : "", h, v6 ? "]" : "",
			 gd_jint(d, "port", 0));
		if (json_is_number(lat))
			snprintf(l, sizeof(l), "%.2f", json_number_value(lat));
		else
			snprintf(l, sizeof(l), "-");
		out_text(cli, "%-5lld %-6lld %-28s %-6lld %-11s %-9s %-8s %-7s %-8lld %-11s %s",
			 gd_jint(d, "id", 0), gd_jint(d, "group_id", 0), hp, gd_jint(d, "admin_port", 0),
			 gd_jstr(d, "role", "?"), gd_jstr(d, "state", "?"),
			 gd_jbool(d, "serving") ? "yes" : "no", gd_jbool(d, "synced") ? "yes" : "no",
			 gd_jint(d, "pending", 0), l, gd_jbool(d, "enabled") ? "yes" : "no");
	}
}

static void print_device(struct cli *cli, json_t *d)
{
	json_t *f = json_object_get(d, "facts"), *k = json_object_get(f, "kcv"),
	       *lat = json_object_get(d, "latency_ms");
	char t[64];

	out_text(cli, "%-24s %lld", "Id:", gd_jint(d, "id", 0));
	out_text(cli, "%-24s %lld", "Group:", gd_jint(d, "group_id", 0));
	out_text(cli, "%-24s %s", "Host:", gd_jstr(d, "host", ""));
	out_text(cli, "%-24s %lld", "Port:", gd_jint(d, "port", 0));
	out_text(cli, "%-24s %lld", "Admin port:", gd_jint(d, "admin_port", 0));
	out_text(cli, "%-24s %s", "Role:", gd_jstr(d, "role", ""));
	out_text(cli, "%-24s %s", "Balancing:", gd_jbool(d, "balancing") ? "on" : "off");
	out_text(cli, "%-24s %lld ms", "Ping timeout:", gd_jint(d, "ping_timeout_ms", 0));
	out_text(cli, "%-24s %s", "Enabled:", gd_jbool(d, "enabled") ? "yes" : "no");
	out_text(cli, "%-24s %s", "State:", gd_jstr(d, "state", ""));
	out_text(cli, "%-24s %s", "Serving:", gd_jbool(d, "serving") ? "yes" : "no");
	out_text(cli, "%-24s %s", "Synced:", gd_jbool(d, "synced") ? "yes" : "no");
	out_text(cli, "%-24s %lld", "Replication version:", gd_jint(d, "repl_version", 0));
	out_text(cli, "%-24s %lld", "Pending:", gd_jint(d, "pending", 0));
	out_text(cli, "%-24s %lld", "In flight:", gd_jint(d, "in_flight", 0));
	if (json_is_number(lat))
		out_text(cli, "%-24s %.2f ms", "Latency:", json_number_value(lat));
	gd_time_text(gd_jint(d, "last_ping_ms", 0), t, sizeof(t));
	out_text(cli, "%-24s %s", "Last ping (UTC):", t);
	out_text(cli, "%-24s %lld requests, %lld errors", "Requests:", gd_jint(d, "requests", 0),
		 gd_jint(d, "errors", 0));
	out_text(cli, "%-24s %s", "Last error:", gd_jstr(d, "last_error", ""));
	out_text(cli, "%-24s %s", "Model:", gd_jstr(f, "model", ""));
	out_text(cli, "%-24s %s", "Version:", gd_jstr(f, "version", ""));
	out_text(cli, "%-24s %s", "Features:", gd_jstr(f, "features", ""));
	out_text(cli, "%-24s FTK %s, PMK %s, BEK %s", "Major key KCVs:", *gd_jstr(k, "ftk", "") ? gd_jstr(k, "ftk", "") : "-",
		 *gd_jstr(k, "pmk", "") ? gd_jstr(k, "pmk", "") : "-",
		 *gd_jstr(k, "bek", "") ? gd_jstr(k, "bek", "") : "-");
}

static int need_device(struct cli *cli, struct cli_args *a, long long *id)
{
	if (!cli_arg(a, "device"))
		return cli_usage(cli, "needs --device ID");
	return gd_id_arg(cli, a, "device", id) ? CLI_OK : CLI_USAGE;
}

static int cmd_device_add(struct cli *cli, struct cli_args *a)
{
	json_t *body = NULL, *ans = NULL;
	char target[64];
	long long gid;
	int rc;

	if (!cli_arg(a, "group") || !cli_arg(a, "host"))
		return cli_usage(cli, "needs --group G and --host HOST");
	if ((rc = device_body(cli, a, true, &body)) != CLI_OK)
		return rc;
	if ((rc = gd_begin(cli)) != CLI_OK || (rc = gd_group_id(cli, cli_arg(a, "group"), &gid)) != CLI_OK)
		goto out;
	snprintf(target, sizeof(target), "/api/groups/%lld/devices", gid);
	if ((rc = gd_call(cli, "POST", target, body, &ans)) != CLI_OK)
		goto out;
	json_t *d = device_of(ans);
	out_json(cli, "device", json_incref(d));
	out_text(cli, "Device %lld (%s:%lld) added to group %lld as %s, state %s.", gd_jint(d, "id", 0),
		 gd_jstr(d, "host", ""), gd_jint(d, "port", 0), gid, gd_jstr(d, "role", "?"),
		 gd_jstr(d, "state", "?"));
out:
	json_decref(body);
	json_decref(ans);
	return rc;
}

static int cmd_device_modify(struct cli *cli, struct cli_args *a)
{
	json_t *body = NULL, *ans = NULL;
	char target[64];
	long long id;
	int rc;

	if ((rc = need_device(cli, a, &id)) != CLI_OK ||
	    (rc = device_body(cli, a, false, &body)) != CLI_OK)
		return rc;
	snprintf(target, sizeof(target), "/api/devices/%lld", id);
	if ((rc = gd_call(cli, "PUT", target, body, &ans)) == CLI_OK) {
		out_json(cli, "device", json_incref(device_of(ans)));
		out_text(cli, "Device %lld modified.", id);
	}
	json_decref(body);
	json_decref(ans);
	return rc;
}

/* POST /api/devices/{id}/<action> answering the device. */
static int device_action(struct cli *cli, struct cli_args *a, const char *action, json_t *body,
			 const char *done)
{
	json_t *ans = NULL;
	char target[96];
	long long id;
	int rc;

	if ((rc = need_device(cli, a, &id)) != CLI_OK)
		return rc;
	snprintf(target, sizeof(target), "/api/devices/%lld/%s", id, action);
	if ((rc = gd_call(cli, "POST", target, body, &ans)) != CLI_OK)
		return rc;
	json_t *d = device_of(ans);
	out_json(cli, "device", json_incref(d));
	out_text(cli, "Device %lld %s: role %s, state %s.", id, done, gd_jstr(d, "role", "?"),
		 gd_jstr(d, "state", "?"));
	json_decref(ans);
	return CLI_OK;
}

static int cmd_device_enable(struct cli *cli, struct cli_args *a)
{
	return device_action(cli, a, "enable", NULL, "enabled");
}

static int cmd_device_disable(struct cli *cli, struct cli_args *a)
{
	return device_action(cli, a, "disable", NULL, "disabled");
}

static int cmd_device_sync(struct cli *cli, struct cli_args *a)
{
	return device_action(cli, a, "sync", NULL, "synchronized");
}

static int cmd_device_promote(struct cli *cli, struct cli_args *a)
{
	const char *old;
	json_t *body;
	int rc;

	if (!role_arg(cli, a, "old-primary-role", false, &old))
		return CLI_USAGE;
	body = json_object();
	if (old)
		json_object_set_new(body, "old_primary_role", json_string(old));
	rc = device_action(cli, a, "promote", body, "promoted");
	json_decref(body);
	return rc;
}

static int cmd_device_remove(struct cli *cli, struct cli_args *a)
{
	char target[64];
	long long id;
	int rc;

	if ((rc = need_device(cli, a, &id)) != CLI_OK)
		return rc;
	snprintf(target, sizeof(target), "/api/devices/%lld", id);
	if ((rc = gd_call(cli, "DELETE", target, NULL, NULL)) != CLI_OK)
		return rc;
	out_int(cli, "device_id", NULL, id);
	out_text(cli, "Device %lld removed.", id);
	return CLI_OK;
}

static int cmd_device_diagnose(struct cli *cli, struct cli_args *a)
{
	json_t *ans = NULL, *steps, *failed;
	char target[96];
	long long id;
	int rc;
	bool ok;

	if ((rc = need_device(cli, a, &id)) != CLI_OK)
		return rc;
	snprintf(target, sizeof(target), "/api/devices/%lld/diagnose", id);
	if ((rc = gd_call(cli, "POST", target, NULL, &ans)) != CLI_OK)
		return rc;
	ok = gd_jbool(ans, "ok");
	steps = json_object_get(ans, "steps");
	failed = json_object_get(ans, "failed");
	out_int(cli, "device_id", NULL, id);
	out_bool(cli, "passed", NULL, ok);
	out_json(cli, "failed", json_is_string(failed) ? json_incref(failed) : json_null());
	out_json(cli, "steps", json_is_array(steps) ? json_incref(steps) : json_array());
	out_text(cli, "%-28s %-8s %s", "STEP", "STATE", "MESSAGE");
	for (size_t i = 0; i < json_array_size(steps); i++) {
		json_t *s = json_array_get(steps, i);
		out_text(cli, "%-28s %-8s %s", gd_jstr(s, "step", "?"), gd_jstr(s, "state", "?"),
			 gd_jstr(s, "message", ""));
	}
	if (!ok) {
		char f[128];
		snprintf(f, sizeof(f), "%s", json_is_string(failed) ? json_string_value(failed) : "?");
		json_decref(ans);
		return out_end_error(cli, KH_ERR_STATE, "device %lld: the step '%s' failed", id, f);
	}
	json_decref(ans);
	out_text(cli, "Device %lld: every step passed.", id);
	return CLI_OK;
}

static int cmd_device_list(struct cli *cli, struct cli_args *a)
{
	json_t *ans = NULL, *arr;
	char target[64] = "/api/devices";
	long long gid;
	int rc;

	if ((rc = gd_begin(cli)) != CLI_OK)
		return rc;
	if (cli_arg(a, "group")) {
		if ((rc = gd_group_id(cli, cli_arg(a, "group"), &gid)) != CLI_OK)
			return rc;
		snprintf(target, sizeof(target), "/api/groups/%lld/devices", gid);
	}
	if ((rc = gd_call(cli, "GET", target, NULL, &ans)) != CLI_OK)
		return rc;
	arr = json_object_get(ans, "devices");
	out_json(cli, "devices", json_is_array(arr) ? json_incref(arr) : json_array());
	if (json_array_size(arr) == 0)
		out_text(cli, "No devices.");
	else
		gd_print_devices(cli, arr);
	json_decref(ans);
	return CLI_OK;
}

static int cmd_device_show(struct cli *cli, struct cli_args *a)
{
	json_t *ans = NULL;
	char target[64];
	long long id;
	int rc;

	if ((rc = need_device(cli, a, &id)) != CLI_OK)
		return rc;
	snprintf(target, sizeof(target), "/api/devices/%lld", id);
	if ((rc = gd_call(cli, "GET", target, NULL, &ans)) != CLI_OK)
		return rc;
	out_json(cli, "device", json_incref(device_of(ans)));
	print_device(cli, device_of(ans));
	json_decref(ans);
	return CLI_OK;
}

#define DEVICE_FIELDS_USAGE                                                                        \
	"[--port N] [--admin-port N] [--balancing on|off] [--ping-timeout T] [--enabled on|off]"

const struct cli_cmd cli_device_cmds[] = {
	{"add", cmd_device_add, device_add_opts,
	 "--group G --host HOST [--role Primary|Production|Backup] " DEVICE_FIELDS_USAGE,
	 "add an HSM to a group (the guardian probes it and copies the Primary to it; the first "
	 "device is the Primary)", NULL, 0},
	{"modify", cmd_device_modify, device_modify_opts,
	 "--device ID [--host HOST] [--role Production|Backup] " DEVICE_FIELDS_USAGE,
	 "change a device: only the given fields change", NULL, 0},
	{"enable", cmd_device_enable, device_id_opts, "--device ID", "enable a device", NULL, 0},
	{"disable", cmd_device_disable, device_id_opts, "--device ID",
	 "disable a device (it leaves the rotation)", NULL, 0},
	{"remove", cmd_device_remove, device_id_opts, "--device ID",
	 "remove a device from its group (the Primary last)", NULL, 0},
	{"promote", cmd_device_promote, device_promote_opts,
	 "--device ID [--old-primary-role Production|Backup]", "make a device the group's Primary",
	 NULL, 0},
	{"sync", cmd_device_sync, device_id_opts, "--device ID",
	 "synchronize a device with its group (a full copy from the Primary)", NULL, 0},
	{"diagnose", cmd_device_diagnose, device_id_opts, "--device ID",
	 "troubleshoot a failed connection step by step (exit 1 when a step fails)", NULL, 0},
	{"list", cmd_device_list, device_list_opts, "[--group G]",
	 "devices, their role, state and replication", NULL, 0},
	{"show", cmd_device_show, device_id_opts, "--device ID",
	 "one device: settings, state, facts learned from it", NULL, 0},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
