/*
 * The audit log: page through it, and verify its hash chain. Entry details
 * arrive hex-encoded and are shown with non-printable bytes escaped, so that
 * a crafted entry cannot drive the terminal.
 */
#include "cli/cli.h"
#include "common/kh_mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct cli_optdef show_opts[] = {
	{"from", 0, CLI_VALUE, "N", "first sequence number (default 1)"},
	{"count", 0, CLI_VALUE, "N", "entries per request, 1-500 (default 100)"},
	{"all", 0, CLI_FLAG, NULL, "follow pages to the end of the log"},
	{NULL, 0, 0, NULL, NULL},
};

/* Hex detail into printable text (others as \xNN). */
static void detail_text(const char *hex, size_t n, char *out, size_t outsz)
{
	uint8_t raw[512];
	size_t o = 0;
	int len;

	if (n / 2 > sizeof(raw))
		n = 2 * sizeof(raw);
	len = kh_hex_decode(hex, n, raw, sizeof(raw));
	if (len < 0) {
		snprintf(out, outsz, "%.*s", (int)(n < outsz ? n : outsz - 1), hex);
		return;
	}
	for (int i = 0; i < len && o + 5 < outsz; i++) {
		if (raw[i] >= 0x20 && raw[i] < 0x7f && raw[i] != '\\')
			out[o++] = (char)raw[i];
		else
			o += (size_t)snprintf(out + o, outsz - o, "\\x%02X", raw[i]);
	}
	out[o] = '\0';
}

/* One "seq/time/actor/event/detail" entry. */
static void out_entry(struct cli *cli, const char *s, size_t n)
{
	const char *f[5] = {s, NULL, NULL, NULL, NULL};
	size_t len[5] = {0}, k = 0, b = 0;
	char seq[32], tm[32], actor[96], event[96], detail[2048];

	for (size_t i = 0; i <= n && k < 5; i++) {
		if (i == n || (s[i] == '/' && k < 4)) {
			f[k] = s + b;
			len[k] = i - b;
			k++;
			b = i + 1;
		}
	}
	if (k < 5)
		return;
	snprintf(seq, sizeof(seq), "%.*s", (int)len[0], f[0]);
	snprintf(tm, sizeof(tm), "%.*s", (int)len[1], f[1]);
	snprintf(actor, sizeof(actor), "%.*s", (int)len[2], f[2]);
	snprintf(event, sizeof(event), "%.*s", (int)len[3], f[3]);
	detail_text(f[4], len[4], detail, sizeof(detail));
	json_t *o = json_object();
	json_object_set_new(o, "seq", json_integer(strtoll(seq, NULL, 10)));
	json_object_set_new(o, "time", json_string(tm));
	json_object_set_new(o, "actor", json_string(actor));
	json_object_set_new(o, "event", json_string(event));
	json_object_set_new(o, "detail", json_string(detail));
	out_append(cli, "entries", o);
	out_text(cli, "%6s  %-15s %-16s %-20s %s", seq, tm, actor, event, detail);
}

static int cmd_audit_show(struct cli *cli, struct cli_args *a)
{
	uint64_t from = 1, count = 100;
	bool first = true;
	int rc;

	if (!cli_arg_u64(cli, a, "from", 1, UINT32_MAX, &from) ||
	    !cli_arg_u64(cli, a, "count", 1, 500, &count))
		return CLI_USAGE;
	for (;;) {
		cli_req(cli, "AUDS");
		cli_put_u64(cli, "SQ", from);
		cli_put_u64(cli, "NM", count);
		if ((rc = cli_call(cli)) != CLI_OK)
			return rc;
		if (first) {
			cli_out_fnum(cli, "AN", "total", "Entries");
			out_text(cli, "%6s  %-15s %-16s %-20s %s", "SEQ", "TIME", "ACTOR", "EVENT",
				 "DETAIL");
			if (cli->json && cli->out)
				json_object_set_new(cli->out, "entries", json_array());
			first = false;
		}
		const struct kh_field *f = cli_field(cli, "AL");
		for (size_t i = 0; f && i < f->len;) {
			size_t e = i;
			while (e < f->len && f->val[e] != ',')
				e++;
			out_entry(cli, f->val + i, e - i);
			i = e + 1;
		}
		long long nx = cli_fnum(cli, "NX", -1);
		if (nx < 0 || !cli_flag(a, "all")) {
			if (nx >= 0) {
				out_int(cli, "next", NULL, nx);
				out_text(cli, "(more: audit show --from %lld)", nx);
			}
			break;
		}
		if ((uint64_t)nx <= from)
			return cli_fail(cli, KH_ERR_PROTOCOL, "the HSM's next entry does not advance");
		from = (uint64_t)nx;
	}
	return CLI_OK;
}

static int cmd_audit_verify(struct cli *cli, struct cli_args *a)
{
	char reason[64];
	int rc;

	cli_req(cli, "AUDV");
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	long long n = cli_fnum(cli, "AN", 0);
	if (cli_fyes(cli, "BB")) {
		out_bool(cli, "intact", NULL, true);
		out_int(cli, "entries", NULL, n);
		out_text(cli, "Audit log intact: %lld entries verified.", n);
		return CLI_OK;
	}
	cli_fstr(cli, "ET", reason, sizeof(reason));
	return cli_fail(cli, KH_ERR_STATE, "audit log broken at entry %lld: %s (%lld entries checked)",
			cli_fnum(cli, "BS", 0), reason[0] ? reason : "unknown reason", n);
}

const struct cli_cmd cli_audit_cmds[] = {
	{"show", cmd_audit_show, show_opts, "[--from N] [--count N] [--all]",
	 "show audit entries (AUDS)", NULL, CLI_F_CONN},
	{"verify", cmd_audit_verify, cli_none_opts, "", "verify the audit log's hash chain (AUDV); "
	 "exit 1 if broken", NULL, CLI_F_CONN},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
