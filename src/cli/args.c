/*
 * Option parsing for subcommands (a table per command, "--name value" or
 * "--name=value"), shell-like line splitting for scripts and the interactive
 * prompt, and generated help. No option may carry a secret: there are none.
 */
#include "cli/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int find_def(const struct cli_optdef *defs, const char *name, size_t n, char shortopt)
{
	for (int i = 0; defs && defs[i].name; i++) {
		if (shortopt ? defs[i].shortopt == shortopt
			     : strlen(defs[i].name) == n && strncmp(defs[i].name, name, n) == 0)
			return i;
	}
	return -1;
}

int cli_parse(struct cli *cli, const struct cli_cmd *cmd, int argc, char **argv,
	      struct cli_args *a)
{
	bool only_pos = false;

	memset(a, 0, sizeof(*a));
	a->defs = cmd->opts;
	for (int i = 0; i < argc; i++) {
		const char *s = argv[i], *eq = NULL, *name;
		size_t nlen;
		int d;

		if (only_pos || s[0] != '-' || s[1] == '\0') {
			if (!(cmd->flags & CLI_F_POS))
				return cli_usage(cli, "unexpected argument '%s' (see '%s --help')", s,
						 cli->cmdname);
			if (a->npos == CLI_MAXPOS)
				return cli_usage(cli, "too many arguments");
			a->pos[a->npos++] = s;
			if (cmd->flags & CLI_F_REST)
				only_pos = true; /* the rest is another command's */
			continue;
		}
		if (strcmp(s, "--") == 0) {
			only_pos = true;
			continue;
		}
		if (s[1] == '-') {
			name = s + 2;
			eq = strchr(name, '=');
			nlen = eq ? (size_t)(eq - name) : strlen(name);
			d = find_def(cmd->opts, name, nlen, 0);
		} else {
			if (s[2] != '\0')
				return cli_usage(cli, "unknown option '%s' (see '%s --help')", s,
						 cli->cmdname);
			name = s + 1;
			nlen = 1;
			d = find_def(cmd->opts, NULL, 0, s[1]);
		}
		if (d < 0)
			return cli_usage(cli, "unknown option '%s' (see '%s --help')", s, cli->cmdname);
		if (d >= CLI_MAXOPTS)
			return cli_usage(cli, "internal: option table too long");
		const struct cli_optdef *od = &cmd->opts[d];
		const char *v = "";
		if (od->kind == CLI_FLAG) {
			if (eq)
				return cli_usage(cli, "option --%s takes no value", od->name);
		} else if (eq) {
			v = eq + 1;
		} else {
			if (i + 1 >= argc)
				return cli_usage(cli, "option --%s needs a value (%s)", od->name,
						 od->arg ? od->arg : "VALUE");
			v = argv[++i];
		}
		if (od->kind == CLI_MULTI) {
			if (a->nmulti == CLI_MAXMULTI)
				return cli_usage(cli, "option --%s given too often", od->name);
			a->multi[a->nmulti].opt = d;
			a->multi[a->nmulti].v = v;
			a->nmulti++;
		} else {
			if (a->val[d] != NULL)
				return cli_usage(cli, "option --%s given twice", od->name);
			a->val[d] = v;
		}
	}
	return CLI_OK;
}

const char *cli_arg(const struct cli_args *a, const char *name)
{
	int d = find_def(a->defs, name, strlen(name), 0);
	return d >= 0 && d < CLI_MAXOPTS ? a->val[d] : NULL;
}

bool cli_flag(const struct cli_args *a, const char *name)
{
	return cli_arg(a, name) != NULL;
}

size_t cli_arg_count(const struct cli_args *a, const char *name)
{
	int d = find_def(a->defs, name, strlen(name), 0);
	size_t n = 0;
	for (size_t i = 0; i < a->nmulti; i++)
		if (a->multi[i].opt == d)
			n++;
	return n;
}

const char *cli_arg_multi(const struct cli_args *a, const char *name, size_t i)
{
	int d = find_def(a->defs, name, strlen(name), 0);
	for (size_t k = 0; k < a->nmulti; k++)
		if (a->multi[k].opt == d && i-- == 0)
			return a->multi[k].v;
	return NULL;
}

bool cli_arg_u64(struct cli *cli, const struct cli_args *a, const char *name, uint64_t min,
		 uint64_t max, uint64_t *v)
{
	const char *s = cli_arg(a, name);
	char *end = NULL;
	unsigned long long x;

	if (s == NULL)
		return true; /* absent: caller's default stays */
	errno = 0;
	x = strtoull(s, &end, 10);
	if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno || x < min || x > max) {
		KH_IGNORE(cli_usage(cli, "--%s must be a number from %llu to %llu", name,
				    (unsigned long long)min, (unsigned long long)max));
		return false;
	}
	*v = x;
	return true;
}

int cli_split(const char *line, char *storage, size_t storagesz, char **argv, int maxargs)
{
	size_t o = 0;
	int argc = 0;
	const char *p = line;

	for (;;) {
		while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
			p++;
		if (*p == '\0' || *p == '#')
			break;
		if (argc + 1 >= maxargs)
			return -1;
		argv[argc++] = storage + o;
		char q = 0;
		while (*p && (q || (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r'))) {
			char ch = *p++;
			if (q == '\'' ) {
				if (ch == '\'') {
					q = 0;
					continue;
				}
			} else if (q == '"') {
				if (ch == '"') {
					q = 0;
					continue;
				}
				if (ch == '\\' && (*p == '"' || *p == '\\' || *p == '$')) {
					ch = *p++;
				}
			} else if (ch == '\'' || ch == '"') {
				q = ch;
				continue;
			} else if (ch == '\\') {
				if (*p == '\0')
					break;
				ch = *p++;
			}
			if (o + 1 >= storagesz)
				return -1;
			storage[o++] = ch;
		}
		if (q)
			return -1;
		if (o + 1 >= storagesz)
			return -1;
		storage[o++] = '\0';
	}
	argv[argc] = NULL;
	return argc;
}

void cli_print_help(const struct cli_cmd *cmd, const char *path)
{
	printf("usage: keyhold %s%s%s\n", path, cmd->usage && *cmd->usage ? " " : "",
	       cmd->usage ? cmd->usage : "");
	if (cmd->summary)
		printf("\n%s\n", cmd->summary);
	if (cmd->opts && cmd->opts[0].name) {
		printf("\noptions:\n");
		for (const struct cli_optdef *o = cmd->opts; o->name; o++) {
			char left[64];
			if (o->shortopt)
				snprintf(left, sizeof(left), "-%c, --%s%s%s", o->shortopt, o->name,
					 o->kind == CLI_FLAG ? "" : " ", o->kind == CLI_FLAG ? "" : o->arg);
			else
				snprintf(left, sizeof(left), "    --%s%s%s", o->name,
					 o->kind == CLI_FLAG ? "" : " ", o->kind == CLI_FLAG ? "" : o->arg);
			printf("  %-30s %s%s\n", left, o->help,
			       o->kind == CLI_MULTI ? " (repeatable)" : "");
		}
	}
}

void cli_print_group_help(const struct cli_cmd *table, const char *path)
{
	if (path && *path)
		printf("usage: keyhold %s <command> [options]\n\ncommands:\n", path);
	else
		printf("usage: keyhold [global options] <command> [options]\n\ncommands:\n");
	for (const struct cli_cmd *c = table; c->name; c++) {
		char left[96];
		snprintf(left, sizeof(left), "%s%s%s", path ? path : "", path && *path ? " " : "",
			 c->name);
		printf("  %-26s %s\n", left, c->summary ? c->summary : "");
	}
	printf("\nRun 'keyhold %s%s<command> --help' for a command's options.\n", path ? path : "",
	       path && *path ? " " : "");
}
