/*
 * Backup and restore. A backup is encrypted by the HSM under its BEK; the
 * CLI only moves the bytes, in pages when they exceed one frame, writing
 * them to a new file of mode 0600 that is never overwritten.
 */
#include "cli/cli.h"
#include "common/kh_mem.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Largest backup file (the HSM's limit too), what still travels in one
 * frame, and the page size asked for: its hex stays well inside a frame. */
#define BACKUP_MAX (1024u * 1024 * 1024)
#define BACKUP_FRAME_MAX (KH_FRAME_MAX / 2 - 4096)
#define PAGE (2u * 1024 * 1024)

const struct cli_optdef cli_backup_opts[] = {
	{"out", 'o', CLI_VALUE, "FILE", "the backup file to create (mode 0600, never overwritten)"},
	{"scope", 0, CLI_VALUE, "config|keys|all", "what to back up (default all)"},
	{NULL, 0, 0, NULL, NULL},
};

const struct cli_optdef cli_restore_opts[] = {
	{"in", 'i', CLI_VALUE, "FILE", "the backup file"},
	{NULL, 0, 0, NULL, NULL},
};

/* The page in the last answer, copied to d at its offset OF, which must be
 * want; *next gets NX (0 after the last page). */
static int take_page(struct cli *cli, uint8_t *d, size_t total, size_t want, size_t *next)
{
	uint8_t *p;
	size_t n;
	int rc;

	if ((size_t)cli_fnum(cli, "BZ", -1) != total || (size_t)cli_fnum(cli, "OF", -1) != want)
		return cli_fail(cli, KH_ERR_PROTOCOL, "the HSM answered another page than asked for");
	if ((rc = cli_fhex(cli, "BD", &p, &n)) != CLI_OK)
		return rc;
	if (n == 0 || n > total - want) {
		cli_free_bytes(p, n);
		return cli_fail(cli, KH_ERR_PROTOCOL, "the HSM's page does not fit the backup");
	}
	memcpy(d + want, p, n);
	cli_free_bytes(p, n);
	*next = (size_t)cli_fnum(cli, "NX", 0);
	if (*next != 0 && *next != want + n)
		return cli_fail(cli, KH_ERR_PROTOCOL, "the HSM's next page is not where this one ends");
	if (*next == 0 && want + n != total)
		return cli_fail(cli, KH_ERR_PROTOCOL, "the HSM ended the backup early");
	return CLI_OK;
}

/* BKUP in pages (the answer to the first request is in hand): every page
 * of the export XI, checked against the SHA-256 HS of the whole file. */
static int fetch_pages(struct cli *cli, uint8_t **out, size_t *outlen)
{
	char xi[32], hs[65], got[65];
	uint8_t md[32], *d = NULL;
	long long bz = cli_fnum(cli, "BZ", -1);
	size_t total, at = 0, next = 0;
	int rc;

	cli_fstr(cli, "XI", xi, sizeof(xi));
	cli_fstr(cli, "HS", hs, sizeof(hs));
	if (bz <= 0 || (unsigned long long)bz > BACKUP_MAX || strlen(hs) != 64)
		return cli_fail(cli, KH_ERR_PROTOCOL, "the HSM's backup size or hash is invalid");
	total = (size_t)bz;
	if ((d = malloc(total)) == NULL)
		return cli_fail(cli, KH_ERR_NOMEM, "out of memory");
	for (;;) {
		if ((rc = take_page(cli, d, total, at, &next)) != CLI_OK)
			goto fail;
		if (next == 0)
			break;
		at = next;
		cli_req(cli, "BKUP");
		cli_put(cli, "XI", xi);
		cli_put_u64(cli, "OF", at);
		if ((rc = cli_call(cli)) != CLI_OK)
			goto fail;
	}
	if (EVP_Digest(d, total, md, NULL, EVP_sha256(), NULL) != 1) {
		rc = cli_fail(cli, KH_ERR_CRYPTO, "SHA-256 failed");
		goto fail;
	}
	kh_hex_encode(md, sizeof(md), got);
	for (char *q = hs; *q; q++)
		if (*q >= 'a' && *q <= 'f')
			*q = (char)(*q - 'a' + 'A');
	if (strcmp(got, hs) != 0) {
		rc = cli_fail(cli, KH_ERR_PROTOCOL, "the pages do not add up to the HSM's backup");
		goto fail;
	}
	*out = d;
	*outlen = total;
	return CLI_OK;
fail:
	free(d);
	return rc;
}

int cmd_backup(struct cli *cli, struct cli_args *a)
{
	const char *out = cli_arg(a, "out"), *scope = cli_arg(a, "scope");
	uint8_t *d;
	size_t n;
	int rc;

	if (out == NULL)
		return cli_usage(cli, "backup needs --out FILE");
	if (scope && strcmp(scope, "config") != 0 && strcmp(scope, "keys") != 0 &&
	    strcmp(scope, "all") != 0)
		return cli_usage(cli, "--scope takes config, keys or all");
	if (access(out, F_OK) == 0)
		return cli_usage(cli, "%s exists (backups are never overwritten)", out);
	cli_req(cli, "BKUP");
	if (scope)
		cli_put(cli, "SC", scope);
	cli_put_u64(cli, "PS", PAGE);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	if (cli_field(cli, "XI") != NULL)
		rc = fetch_pages(cli, &d, &n);
	else /* an HSM from before paging: the whole backup in BD */
		rc = cli_fhex(cli, "BD", &d, &n);
	if (rc != CLI_OK)
		return rc;
	rc = cli_write_file(cli, out, d, n, 0600, true);
	free(d); /* ciphertext */
	if (rc != CLI_OK)
		return rc;
	out_str(cli, "file", NULL, out);
	out_int(cli, "bytes", NULL, (long long)n);
	out_text(cli, "Backup (%s, %zu bytes) written to %s", scope ? scope : "all", n, out);
	cli_out_field(cli, "KV", "bek_kcv", "BEK check value");
	return CLI_OK;
}

/* BKRS in pages: OF0 with BZ, then each page where the last ended; the
 * answer to the last page is the restore's. */
static int send_pages(struct cli *cli, const uint8_t *d, size_t n)
{
	int rc;

	for (size_t at = 0; at < n;) {
		size_t len = n - at < PAGE ? n - at : PAGE;
		cli_req(cli, "BKRS");
		if (at == 0)
			cli_put_u64(cli, "BZ", n);
		cli_put_u64(cli, "OF", at);
		cli_put_hex(cli, "BD", d + at, len);
		if ((rc = cli_call(cli)) != CLI_OK)
			return rc;
		at += len;
		if (at < n && (size_t)cli_fnum(cli, "NX", -1) != at)
			return cli_fail(cli, KH_ERR_PROTOCOL, "the HSM expects another page");
	}
	return CLI_OK;
}

int cmd_restore(struct cli *cli, struct cli_args *a)
{
	const char *in = cli_arg(a, "in");
	uint8_t *d;
	size_t n;
	int rc;

	if (in == NULL)
		return cli_usage(cli, "restore needs --in FILE");
	if ((rc = cli_read_file(cli, in, BACKUP_MAX, &d, &n)) != CLI_OK)
		return rc;
	if (n > BACKUP_FRAME_MAX) {
		rc = send_pages(cli, d, n);
	} else { /* one frame: also what an HSM from before paging takes */
		cli_req(cli, "BKRS");
		cli_put_hex(cli, "BD", d, n);
		rc = cli_call(cli);
	}
	cli_free_bytes(d, n);
	if (rc != CLI_OK)
		return rc;
	cli_out_fnum(cli, "RC", "roles", "Roles restored");
	cli_out_fnum(cli, "IC", "identities", "Identities restored");
	cli_out_fnum(cli, "KC", "keys", "Keys restored");
	return CLI_OK;
}
