/*
 * Output: human-readable lines, or with --json exactly one JSON object per
 * command on one line. Errors go to stderr in text mode and to stdout as a
 * JSON object in JSON mode. Nothing printed here may hold a secret.
 */
#include "cli/cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define LABEL_WIDTH 24

void out_begin(struct cli *cli, const char *name)
{
	snprintf(cli->cmdname, sizeof(cli->cmdname), "%s", name);
	if (cli->out)
		json_decref(cli->out);
	cli->out = cli->json ? json_object() : NULL;
	if (cli->out)
		json_object_set_new(cli->out, "command", json_string(name));
	cli->out_done = false;
}

static void text_kv(const char *label, const char *val)
{
	char l[64];
	snprintf(l, sizeof(l), "%s:", label);
	printf("%-*s %s\n", LABEL_WIDTH, l, val);
}

void out_strn(struct cli *cli, const char *key, const char *label, const char *val, size_t n)
{
	if (cli->json) {
		if (cli->out && key)
			json_object_set_new(cli->out, key, json_stringn(val, n));
		return;
	}
	if (label) {
		char l[64];
		snprintf(l, sizeof(l), "%s:", label);
		printf("%-*s %.*s\n", LABEL_WIDTH, l, (int)n, val);
	}
}

void out_str(struct cli *cli, const char *key, const char *label, const char *val)
{
	if (cli->json) {
		if (cli->out && key)
			json_object_set_new(cli->out, key, json_string(val));
		return;
	}
	if (label)
		text_kv(label, val);
}

void out_int(struct cli *cli, const char *key, const char *label, long long v)
{
	char tmp[32];
	if (cli->json) {
		if (cli->out && key)
			json_object_set_new(cli->out, key, json_integer(v));
		return;
	}
	snprintf(tmp, sizeof(tmp), "%lld", v);
	if (label)
		text_kv(label, tmp);
}

void out_bool(struct cli *cli, const char *key, const char *label, bool v)
{
	if (cli->json) {
		if (cli->out && key)
			json_object_set_new(cli->out, key, json_boolean(v));
		return;
	}
	if (label)
		text_kv(label, v ? "yes" : "no");
}

void out_null(struct cli *cli, const char *key, const char *label, const char *text)
{
	if (cli->json) {
		if (cli->out && key)
			json_object_set_new(cli->out, key, json_null());
		return;
	}
	if (label)
		text_kv(label, text);
}

void out_text(struct cli *cli, const char *fmt, ...)
{
	va_list ap;
	if (cli->json)
		return;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

void out_append(struct cli *cli, const char *key, json_t *v)
{
	if (v == NULL)
		return;
	if (!cli->json || cli->out == NULL) {
		json_decref(v);
		return;
	}
	json_t *arr = json_object_get(cli->out, key);
	if (arr == NULL) {
		arr = json_array();
		json_object_set_new(cli->out, key, arr);
	}
	json_array_append_new(arr, v);
}

static void print_json(json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_malloc_t m;
	json_free_t f;
	if (s) {
		puts(s);
		/* jansson's own allocator (gd_json_init sets one), not free() */
		json_get_alloc_funcs(&m, &f);
		f(s);
	}
	fflush(stdout);
}

void out_end(struct cli *cli)
{
	if (cli->out_done)
		return;
	cli->out_done = true;
	if (cli->json && cli->out) {
		json_object_set_new(cli->out, "ok", json_true());
		/* "command" then "ok" first: rebuild in a friendly order */
		json_t *o = json_object();
		json_object_set(o, "command", json_object_get(cli->out, "command"));
		json_object_set_new(o, "ok", json_true());
		json_object_update(o, cli->out);
		print_json(o);
		json_decref(o);
	}
	fflush(stdout);
}

int cli_rc_of(int err)
{
	if (err == 0)
		return CLI_USAGE;
	if (err <= KH_ERR_IO && err >= KH_ERR_PROTOCOL)
		return CLI_CONN;
	return CLI_REFUSED;
}

static int report(struct cli *cli, int err, const char *msg)
{
	int rc = cli_rc_of(err);

	if (cli->out_done)
		return rc;
	cli->out_done = true;
	if (cli->json) {
		json_t *o = json_object();
		json_object_set_new(o, "command", json_string(cli->cmdname));
		json_object_set_new(o, "ok", json_false());
		json_object_set_new(o, "code", json_integer(err ? kh_err_to_wire(err) : 0));
		json_object_set_new(o, "error", json_string(err ? kh_errname(err) : "USAGE"));
		json_object_set_new(o, "message", json_string(msg));
		if (cli->lineno)
			json_object_set_new(o, "line", json_integer(cli->lineno));
		print_json(o);
		json_decref(o);
	} else {
		fflush(stdout);
		if (cli->lineno)
			fprintf(stderr, "keyhold: line %u: ", cli->lineno);
		else
			fprintf(stderr, "keyhold: ");
		if (cli->cmdname[0])
			fprintf(stderr, "%s: ", cli->cmdname);
		if (err && cli_rc_of(err) == CLI_REFUSED)
			fprintf(stderr, "%s: ", kh_errname(err));
		fprintf(stderr, "%s\n", msg);
	}
	return rc;
}

int cli_fail(struct cli *cli, int err, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return report(cli, err, msg);
}

int cli_usage(struct cli *cli, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return report(cli, 0, msg);
}

int cli_client_fail(struct cli *cli, int err)
{
	const char *m = cli->client ? kh_client_error(cli->client) : "";
	if (m == NULL || *m == '\0')
		m = kh_strerror(err);
	return report(cli, err, m);
}

void out_json(struct cli *cli, const char *key, json_t *v)
{
	if (v == NULL)
		return;
	if (!cli->json || cli->out == NULL) {
		json_decref(v);
		return;
	}
	json_object_set_new(cli->out, key, v);
}

int cli_fail_guardian(struct cli *cli, int err, const char *name, int status, const char *reason,
		      const char *admit)
{
	int rc = cli_rc_of(err);

	if (cli->out_done)
		return rc;
	cli->out_done = true;
	if (cli->json) {
		json_t *o = json_object();
		json_object_set_new(o, "command", json_string(cli->cmdname));
		json_object_set_new(o, "ok", json_false());
		json_object_set_new(o, "code", json_integer(kh_err_to_wire(err)));
		json_object_set_new(o, "error", json_string(name));
		json_object_set_new(o, "message", json_string(reason));
		json_object_set_new(o, "http_status", json_integer(status));
		if (admit && *admit)
			json_object_set_new(o, "admit", json_string(admit));
		if (cli->lineno)
			json_object_set_new(o, "line", json_integer(cli->lineno));
		print_json(o);
		json_decref(o);
	} else {
		fflush(stdout);
		if (cli->lineno)
			fprintf(stderr, "keyhold: line %u: ", cli->lineno);
		else
			fprintf(stderr, "keyhold: ");
		if (cli->cmdname[0])
			fprintf(stderr, "%s: ", cli->cmdname);
		fprintf(stderr, "%s: %s", name, reason);
		if (admit && *admit)
			fprintf(stderr, " (admit %s)", admit);
		fprintf(stderr, "\n");
	}
	return rc;
}

int out_end_error(struct cli *cli, int err, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!cli->json || cli->out == NULL || cli->out_done)
		return report(cli, err, msg);
	cli->out_done = true;
	json_t *o = json_object();
	json_object_set(o, "command", json_object_get(cli->out, "command"));
	json_object_set_new(o, "ok", json_false());
	json_object_set_new(o, "code", json_integer(kh_err_to_wire(err)));
	json_object_set_new(o, "error", json_string(kh_errname(err)));
	json_object_set_new(o, "message", json_string(msg));
	if (cli->lineno)
		json_object_set_new(o, "line", json_integer(cli->lineno));
	json_object_update_missing(o, cli->out);
	print_json(o);
	json_decref(o);
	return cli_rc_of(err);
}
