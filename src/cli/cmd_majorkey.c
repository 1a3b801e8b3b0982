/*
 * Major-key ceremonies: status, load from XOR'd components, generate as
 * M-of-N fragments, recombine fragments, erase; each way of loading can
 * instead rotate a loaded FTK or PMK (--rotate: RO=Y, --grace: GP). Components and passphrases
 * are secrets (secure heap, wiped, never echoed); an interrupted ceremony is
 * aborted on the HSM (MKLA) so that no entered part lingers there.
 */
#include "cli/cli.h"
#include "common/kh_mem.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MK_MAX_PARTS 9
#define FRAGMENT_MAX (64 * 1024)
#define MK_GRACE_MAX (30 * 86400)

#define KEY_OPTS                                                                                   \
	{"ftk", 0, CLI_FLAG, NULL, "the Futurex Token Key (wraps PKCS#11 keys)"},                  \
	{"pmk", 0, CLI_FLAG, NULL, "the Platform Master Key"},                                     \
	{"bek", 0, CLI_FLAG, NULL, "the Backup Encryption Key"}

#define ROTATE_OPTS                                                                                \
	{"rotate", 0, CLI_FLAG, NULL, "replace the loaded FTK or PMK, re-wrapping its keys"},      \
	{"grace", 0, CLI_VALUE, "SECONDS",                                                         \
	 "with --rotate: the old key still opens its cryptograms this long (default 0)"}

static const struct cli_optdef load_opts[] = {
	KEY_OPTS,
	{"alg", 0, CLI_VALUE, "AES", "algorithm (AES)"},
	{"bits", 0, CLI_VALUE, "128|192|256", "key length (default 256)"},
	{"parts", 0, CLI_VALUE, "N", "number of components, 2-9 (default: lines in the file, or 2)"},
	{"component-file", 0, CLI_VALUE, "FILE", "components in hex, one per line"},
	{"component-fd", 0, CLI_VALUE, "N", "components in hex from descriptor N, one per line"},
	{"kcv", 0, CLI_VALUE, "KCV,KCV..", "expected check value of each component"},
	ROTATE_OPTS,
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef random_opts[] = {
	KEY_OPTS,
	{"alg", 0, CLI_VALUE, "AES", "algorithm (AES)"},
	{"bits", 0, CLI_VALUE, "128|192|256", "key length (default 256)"},
	{"m", 'm', CLI_VALUE, "M", "fragments needed to recombine (2-9)"},
	{"n", 'n', CLI_VALUE, "N", "fragments made (M-9)"},
	{"out", 'o', CLI_VALUE, "DIR", "directory for the fragment files"},
	{"passphrase-file", 0, CLI_MULTI, "FILE", "custodian i's passphrase (give N, in order)"},
	ROTATE_OPTS,
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef recombine_opts[] = {
	KEY_OPTS,
	{"fragment", 0, CLI_MULTI, "FILE", "a fragment file"},
	{"passphrase-file", 0, CLI_MULTI, "FILE", "passphrase of the fragment at the same position"},
	ROTATE_OPTS,
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef key_only_opts[] = {
	KEY_OPTS,
	{NULL, 0, 0, NULL, NULL},
};

static const char *key_name(struct cli *cli, struct cli_args *a)
{
	int n = cli_flag(a, "ftk") + cli_flag(a, "pmk") + cli_flag(a, "bek");
	if (n != 1) {
		KH_IGNORE(cli_usage(cli, "name exactly one key: --ftk, --pmk or --bek"));
		return NULL;
	}
	return cli_flag(a, "ftk") ? "FTK" : cli_flag(a, "pmk") ? "PMK" : "BEK";
}

static int alg_bits(struct cli *cli, struct cli_args *a, uint64_t *bits)
{
	const char *alg = cli_arg(a, "alg");
	if (alg && strcasecmp(alg, "AES") != 0)
		return cli_usage(cli, "--alg: only AES is supported");
	*bits = 256;
	if (!cli_arg_u64(cli, a, "bits", 128, 256, bits))
		return CLI_USAGE;
	if (*bits != 128 && *bits != 192 && *bits != 256)
		return cli_usage(cli, "--bits must be 128, 192 or 256");
	return CLI_OK;
}

/* --rotate and --grace: *grace is -1 for a plain load. */
static int rotation_args(struct cli *cli, struct cli_args *a, const char *kn, long long *grace)
{
	uint64_t g = 0;
	*grace = -1;
	if (!cli_flag(a, "rotate")) {
		if (cli_arg(a, "grace"))
			return cli_usage(cli, "--grace needs --rotate");
		return CLI_OK;
	}
	if (strcmp(kn, "BEK") == 0)
		return cli_usage(cli, "--rotate: only the FTK and the PMK are rotated");
	if (!cli_arg_u64(cli, a, "grace", 0, MK_GRACE_MAX, &g))
		return CLI_USAGE;
	*grace = (long long)g;
	return CLI_OK;
}

static void put_rotation(struct cli *cli, long long grace)
{
	if (grace < 0)
		return;
	cli_put(cli, "RO", "Y");
	cli_put_u64(cli, "GP", (uint64_t)grace);
}

/* After the last part: the final check value, and what a rotation did. */
static void out_result(struct cli *cli, const char *kn, long long grace)
{
	cli_out_field(cli, "KV", "kcv", "Final Key Checksum");
	if (grace < 0)
		return;
	cli_out_field(cli, "OV", "previous_kcv", "Replaced key KCV");
	cli_out_fnum(cli, "RW", "rewrapped", "Keys re-wrapped");
	if (cli_field(cli, "GU"))
		cli_out_field(cli, "GU", "grace_until", "Grace period ends");
	else
		out_text(cli, "Cryptograms made under the replaced %s are refused from now on.",
			 kn);
}

/* Abort the ceremony on the HSM after a failure was reported. */
static void ceremony_abort(struct cli *cli)
{
	if (cli->client == NULL || !kh_client_connected(cli->client))
		return;
	cli_req(cli, "MKLA");
	KH_IGNORE(cli_call_quiet(cli));
}

static int cmd_mk_status(struct cli *cli, struct cli_args *a)
{
	static const struct {
		const char *tag, *prev, *key, *label;
	} keys[] = {{"FT", "FR", "ftk", "FTK"},
		    {"PM", "PR", "pmk", "PMK"},
		    {"BK", "BR", "bek", "BEK"}};
	int rc;

	cli_req(cli, "MKST");
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	for (size_t i = 0; i < 3; i++) {
		char v[128], alg[32] = "", kcv[64] = "";
		long bits = 0;
		cli_fstr(cli, keys[i].tag, v, sizeof(v));
		json_t *o = json_object();
		if (v[0] == 'Y') {
			/* Y/<alg>-<bits>/<KCV> */
			char *s1 = strchr(v, '/'), *s2 = s1 ? strchr(s1 + 1, '/') : NULL;
			if (s1 && s2) {
				*s2 = '\0';
				snprintf(kcv, sizeof(kcv), "%s", s2 + 1);
				char *dash = strchr(s1 + 1, '-');
				if (dash) {
					*dash = '\0';
					bits = strtol(dash + 1, NULL, 10);
				}
				snprintf(alg, sizeof(alg), "%s", s1 + 1);
			}
			json_object_set_new(o, "loaded", json_true());
			json_object_set_new(o, "algorithm", json_string(alg));
			json_object_set_new(o, "bits", json_integer(bits));
			json_object_set_new(o, "kcv", json_string(kcv));
			out_text(cli, "%s: loaded, %s-%ld, KCV %s", keys[i].label, alg, bits, kcv);
			/* <KCV>/<YYYYMMDDhhmmss>: the key a rotation replaced */
			cli_fstr(cli, keys[i].prev, v, sizeof(v));
			char *slash = strchr(v, '/');
			if (slash) {
				*slash = '\0';
				json_object_set_new(o, "previous_kcv", json_string(v));
				json_object_set_new(o, "previous_until", json_string(slash + 1));
				out_text(cli,
					 "%s: replaced key KCV %s opens its cryptograms until %s UTC",
					 keys[i].label, v, slash + 1);
			}
		} else {
			json_object_set_new(o, "loaded", json_false());
			out_text(cli, "%s: not loaded", keys[i].label);
		}
		if (cli->json && cli->out)
			json_object_set_new(cli->out, keys[i].key, o);
		else
			json_decref(o);
	}
	return CLI_OK;
}

/* Split "A,B,C" into at most max pointers into buf. */
static int split_list(char *buf, char **items, int max)
{
	int n = 0;
	char *save = NULL;
	for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (n == max)
			return -1;
		items[n++] = t;
	}
	return n;
}

/* Hex component text into secure bytes of exactly keylen. */
static int component_bytes(struct cli *cli, const char *hex, size_t hexlen, size_t keylen,
			   uint8_t *out, unsigned part)
{
	if (hexlen != 2 * keylen || kh_hex_decode(hex, hexlen, out, keylen) != (int)keylen)
		return cli_usage(cli, "component %u must be %zu hex digits", part, 2 * keylen);
	return CLI_OK;
}

static int cmd_mk_load(struct cli *cli, struct cli_args *a)
{
	struct cli_secret file = {0}, line = {0};
	char kcvbuf[512] = "", *kcvs[MK_MAX_PARTS + 1];
	uint8_t *comp = NULL;
	uint64_t bits, parts = 0;
	size_t pos = 0, keylen;
	int nkcv = 0, rc;
	bool begun = false;
	long long grace;
	const char *kn = key_name(cli, a);

	if (kn == NULL)
		return CLI_USAGE;
	if ((rc = alg_bits(cli, a, &bits)) != CLI_OK ||
	    (rc = rotation_args(cli, a, kn, &grace)) != CLI_OK)
		return rc;
	keylen = bits / 8;
	if (cli_arg(a, "component-file") && cli_arg(a, "component-fd"))
		return cli_usage(cli, "give --component-file or --component-fd, not both");
	if (!cli_arg_u64(cli, a, "parts", 2, MK_MAX_PARTS, &parts))
		return CLI_USAGE;
	if (cli_arg(a, "kcv")) {
		snprintf(kcvbuf, sizeof(kcvbuf), "%s", cli_arg(a, "kcv"));
		nkcv = split_list(kcvbuf, kcvs, MK_MAX_PARTS);
		if (nkcv < 0)
			return cli_usage(cli, "--kcv: at most %d check values", MK_MAX_PARTS);
	}
	if (cli_arg(a, "component-file")) {
		const char *l;
		size_t ll, count = 0, p = 0;
		if ((rc = secret_read_whole(cli, &file, cli_arg(a, "component-file"))) != CLI_OK)
			goto out;
		while (secret_next_line(&file, &p, &l, &ll))
			count++;
		if (parts == 0)
			parts = count;
		if (count != parts || parts < 2 || parts > MK_MAX_PARTS) {
			rc = cli_usage(cli, "%s holds %zu components, %llu needed (2-%d)",
				       cli_arg(a, "component-file"), count, (unsigned long long)parts,
				       MK_MAX_PARTS);
			goto out;
		}
	}
	if (parts == 0)
		parts = 2;
	if (nkcv && (uint64_t)nkcv != parts) {
		rc = cli_usage(cli, "--kcv lists %d check values for %llu components", nkcv,
			       (unsigned long long)parts);
		goto out;
	}
	if ((comp = kh_secure_alloc(keylen)) == NULL) {
		rc = cli_fail(cli, KH_ERR_NOMEM, "out of secure memory");
		goto out;
	}
	cli_req(cli, "MKLB");
	cli_put(cli, "KN", kn);
	cli_put(cli, "MO", "C");
	cli_put(cli, "AL", "AES");
	cli_put_u64(cli, "KL", bits);
	cli_put_u64(cli, "NP", parts);
	put_rotation(cli, grace);
	if ((rc = cli_call(cli)) != CLI_OK)
		goto out;
	begun = true;
	out_str(cli, "key", NULL, kn);
	out_text(cli, "%s %s: AES-%llu from %llu components.", grace < 0 ? "Loading" : "Rotating",
		 kn, (unsigned long long)bits, (unsigned long long)parts);
	for (unsigned i = 1; i <= parts; i++) {
		const char *hex;
		size_t hexlen;
		if (file.p) {
			if (!secret_next_line(&file, &pos, &hex, &hexlen)) {
				rc = cli_usage(cli, "component %u missing", i);
				goto out;
			}
		} else {
			char prompt[96];
			snprintf(prompt, sizeof(prompt), "Component %u of %llu (%zu hex digits): ", i,
				 (unsigned long long)parts, 2 * keylen);
			secret_free(&line);
			if ((rc = secret_get(cli, &line, cli_arg(a, "component-fd"), NULL, prompt,
					     false)) != CLI_OK)
				goto out;
			hex = line.p;
			hexlen = line.len;
		}
		if ((rc = component_bytes(cli, hex, hexlen, keylen, comp, i)) != CLI_OK)
			goto out;
		cli_req(cli, "MKLC");
		cli_put_hex(cli, "CM", comp, keylen);
		kh_wipe(comp, keylen);
		if (nkcv)
			cli_put(cli, "CV", kcvs[i - 1]);
		secret_free(&line);
		if ((rc = cli_call(cli)) != CLI_OK)
			goto out;
		char ae[64];
		cli_fstr(cli, "AE", ae, sizeof(ae));
		json_t *o = json_object();
		json_object_set_new(o, "part", json_integer(i));
		json_object_set_new(o, "kcv", json_string(ae));
		out_append(cli, "components", o);
		out_text(cli, "Component %u of %llu loaded, check value %s", i,
			 (unsigned long long)parts, ae);
	}
	if (!cli_field(cli, "KV")) {
		rc = cli_fail(cli, KH_ERR_INCOMPLETE, "%s needs %lld components, %llu given; nothing "
			      "loaded", kn, cli_fnum(cli, "LN", 0), (unsigned long long)parts);
		goto out;
	}
	begun = false;
	out_result(cli, kn, grace);
	rc = CLI_OK;
out:
	if (rc != CLI_OK && begun)
		ceremony_abort(cli);
	if (comp)
		kh_secure_free(comp, keylen);
	secret_free(&file);
	secret_free(&line);
	return rc;
}

static void fragment_path(char *out, size_t sz, const char *dir, const char *kn, unsigned i,
			  unsigned n)
{
	snprintf(out, sz, "%s/%s-fragment-%u-of-%u.khf", dir, kn, i, n);
}

static int cmd_mk_random(struct cli *cli, struct cli_args *a)
{
	struct cli_secret pp[MK_MAX_PARTS] = {{0}};
	uint64_t bits, m = 0, n = 0;
	const char *dir = cli_arg(a, "out"), *kn = key_name(cli, a);
	size_t nfiles = cli_arg_count(a, "passphrase-file");
	struct stat st;
	char path[4096];
	long long grace;
	int rc;

	if (kn == NULL)
		return CLI_USAGE;
	if ((rc = alg_bits(cli, a, &bits)) != CLI_OK ||
	    (rc = rotation_args(cli, a, kn, &grace)) != CLI_OK)
		return rc;
	if (!cli_arg(a, "m") || !cli_arg(a, "n") || dir == NULL)
		return cli_usage(cli, "majorkey random needs -m M -n N --out DIR");
	if (!cli_arg_u64(cli, a, "m", 2, MK_MAX_PARTS, &m) ||
	    !cli_arg_u64(cli, a, "n", 2, MK_MAX_PARTS, &n))
		return CLI_USAGE;
	if (m > n)
		return cli_usage(cli, "M must not exceed N");
	if (nfiles && nfiles != n)
		return cli_usage(cli, "give %llu --passphrase-file options (one per custodian), or "
				 "none to be asked", (unsigned long long)n);
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return cli_usage(cli, "--out %s is not a directory", dir);
	/* refuse before the HSM makes a key whose fragments could not be kept */
	for (unsigned i = 1; i <= n; i++) {
		fragment_path(path, sizeof(path), dir, kn, i, (unsigned)n);
		if (access(path, F_OK) == 0)
			return cli_usage(cli, "%s exists (fragments are never overwritten)", path);
	}
	for (unsigned i = 0; i < n; i++) {
		char prompt[96];
		snprintf(prompt, sizeof(prompt), "Passphrase of custodian %u of %llu: ", i + 1,
			 (unsigned long long)n);
		if ((rc = secret_get(cli, &pp[i], NULL,
				     nfiles ? cli_arg_multi(a, "passphrase-file", i) : NULL, prompt,
				     nfiles == 0)) != CLI_OK)
			goto out;
		if (pp[i].len < 8 || pp[i].len > 256) {
			rc = cli_usage(cli, "passphrase %u must be 8-256 bytes", i + 1);
			goto out;
		}
	}
	cli_req(cli, "MKGN");
	cli_put(cli, "KN", kn);
	cli_put(cli, "AL", "AES");
	cli_put_u64(cli, "KL", bits);
	cli_put_u64(cli, "FM", m);
	cli_put_u64(cli, "FN", n);
	put_rotation(cli, grace);
	for (unsigned i = 0; i < n; i++) {
		char tag[3] = {'P', (char)('1' + i), '\0'};
		cli_put_hex(cli, tag, (const uint8_t *)pp[i].p, pp[i].len);
		secret_free(&pp[i]);
	}
	if ((rc = cli_call(cli)) != CLI_OK)
		goto out;
	out_str(cli, "key", NULL, kn);
	for (unsigned i = 1; i <= n; i++) {
		char tag[3] = {'F', (char)('0' + i), '\0'};
		uint8_t *frag;
		size_t flen;
		if ((rc = cli_fhex(cli, tag, &frag, &flen)) != CLI_OK)
			goto out;
		fragment_path(path, sizeof(path), dir, kn, i, (unsigned)n);
		rc = cli_write_file(cli, path, frag, flen, 0600, true);
		cli_free_bytes(frag, flen);
		if (rc != CLI_OK)
			goto out;
		out_append(cli, "fragments", json_string(path));
		out_text(cli, "Fragment %u of %llu written to %s", i, (unsigned long long)n, path);
	}
	out_int(cli, "m", NULL, (long long)m);
	out_int(cli, "n", NULL, (long long)n);
	out_text(cli, "%s generated and %s: any %llu of the %llu fragments recombine it.", kn,
		 grace < 0 ? "loaded" : "rotated to", (unsigned long long)m, (unsigned long long)n);
	out_result(cli, kn, grace);
	rc = CLI_OK;
out:
	for (unsigned i = 0; i < MK_MAX_PARTS; i++)
		secret_free(&pp[i]);
	return rc;
}

static int cmd_mk_recombine(struct cli *cli, struct cli_args *a)
{
	struct cli_secret pp = {0};
	size_t nfrag = cli_arg_count(a, "fragment"), npp = cli_arg_count(a, "passphrase-file");
	const char *kn = key_name(cli, a);
	uint8_t *frag = NULL;
	size_t flen = 0;
	bool begun = false;
	long long grace;
	int rc;

	if (kn == NULL)
		return CLI_USAGE;
	if ((rc = rotation_args(cli, a, kn, &grace)) != CLI_OK)
		return rc;
	if (nfrag == 0)
		return cli_usage(cli, "majorkey recombine needs --fragment FILE (one per fragment)");
	if (nfrag > MK_MAX_PARTS)
		return cli_usage(cli, "at most %d fragments", MK_MAX_PARTS);
	if (npp && npp != nfrag)
		return cli_usage(cli, "give one --passphrase-file per --fragment, or none to be asked");
	cli_req(cli, "MKLB");
	cli_put(cli, "KN", kn);
	cli_put(cli, "MO", "F");
	put_rotation(cli, grace);
	if ((rc = cli_call(cli)) != CLI_OK)
		goto out;
	begun = true;
	out_str(cli, "key", NULL, kn);
	for (size_t i = 0; i < nfrag; i++) {
		const char *fpath = cli_arg_multi(a, "fragment", i);
		char prompt[4200];
		if ((rc = cli_read_file(cli, fpath, FRAGMENT_MAX, &frag, &flen)) != CLI_OK)
			goto out;
		snprintf(prompt, sizeof(prompt), "Passphrase for %s: ", fpath);
		if ((rc = secret_get(cli, &pp, NULL, npp ? cli_arg_multi(a, "passphrase-file", i) : NULL,
				     prompt, false)) != CLI_OK)
			goto out;
		cli_req(cli, "MKLC");
		cli_put_hex(cli, "FB", frag, flen);
		cli_put_hex(cli, "PP", (const uint8_t *)pp.p, pp.len);
		secret_free(&pp);
		cli_free_bytes(frag, flen);
		frag = NULL;
		if ((rc = cli_call(cli)) != CLI_OK)
			goto out;
		long long fx = cli_fnum(cli, "FX", 0), ld = cli_fnum(cli, "LD", 0),
			  ln = cli_fnum(cli, "LN", 0);
		json_t *o = json_object();
		json_object_set_new(o, "file", json_string(fpath));
		json_object_set_new(o, "fragment", json_integer(fx));
		out_append(cli, "fragments", o);
		out_text(cli, "Fragment %lld accepted (%s): %lld of %lld entered", fx, fpath, ld, ln);
	}
	if (!cli_field(cli, "KV")) {
		long long ln = cli_fnum(cli, "LN", 0);
		rc = cli_fail(cli, KH_ERR_INCOMPLETE, "%s needs %lld fragments, %zu given; nothing "
			      "loaded", kn, ln, nfrag);
		goto out;
	}
	begun = false;
	out_result(cli, kn, grace);
	rc = CLI_OK;
out:
	if (rc != CLI_OK && begun)
		ceremony_abort(cli);
	cli_free_bytes(frag, flen);
	secret_free(&pp);
	return rc;
}

static int cmd_mk_erase(struct cli *cli, struct cli_args *a)
{
	const char *kn = key_name(cli, a);
	int rc;

	if (kn == NULL)
		return CLI_USAGE;
	cli_req(cli, "MKER");
	cli_put(cli, "KN", kn);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_str(cli, "key", NULL, kn);
	out_text(cli, "%s erased.", kn);
	return CLI_OK;
}

const struct cli_cmd cli_majorkey_cmds[] = {
	{"status", cmd_mk_status, cli_none_opts, "", "major keys and their check values (MKST)",
	 NULL, CLI_F_CONN},
	{"load", cmd_mk_load, load_opts,
	 "--ftk|--pmk|--bek [--alg AES] [--bits 128|192|256] [--parts N] [--component-file F | "
	 "--component-fd N] [--kcv KCV,KCV..] [--rotate [--grace SECONDS]]",
	 "load (or rotate to) a major key from XOR'd components (MKLB, MKLC)", NULL, CLI_F_CONN},
	{"random", cmd_mk_random, random_opts,
	 "--ftk|--pmk|--bek [--bits N] -m M -n N --out DIR [--passphrase-file F]... "
	 "[--rotate [--grace SECONDS]]",
	 "generate a major key and write it as M-of-N fragments (MKGN)", NULL, CLI_F_CONN},
	{"recombine", cmd_mk_recombine, recombine_opts,
	 "--ftk|--pmk|--bek --fragment FILE [--fragment FILE]... [--passphrase-file F]... "
	 "[--rotate [--grace SECONDS]]",
	 "load (or rotate to) a major key from M-of-N fragments (MKLB, MKLC)", NULL, CLI_F_CONN},
	{"erase", cmd_mk_erase, key_only_opts, "--ftk|--pmk|--bek", "erase a major key (MKER)", NULL,
	 CLI_F_CONN},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
