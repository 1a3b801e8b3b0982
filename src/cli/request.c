/*
 * Building one request with a sticky error (so commands read like the
 * protocol's tag lists), calling the HSM, and reading response fields, plus
 * the CLI's file input and output. Request buffers are wiped kh_bufs: they may
 * hold passwords and key components.
 */
#include "cli/cli.h"
#include "common/kh_buf.h"
#include "common/kh_mem.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void cli_req(struct cli *cli, const char *cmd)
{
	kh_buf_reset(cli->req);
	cli->req_err = kh_msg_begin(cli->req, cmd);
	cli->req_errtag[0] = '\0';
}

static void note(struct cli *cli, int r, const char *tag)
{
	if (r != KH_OK && cli->req_err == KH_OK) {
		cli->req_err = r;
		snprintf(cli->req_errtag, sizeof(cli->req_errtag), "%s", tag);
	}
}

void cli_put(struct cli *cli, const char *tag, const char *val)
{
	if (cli->req_err != KH_OK)
		return;
	if (!kh_frame_text_ok(val, strlen(val))) {
		note(cli, KH_ERR_BAD_FIELD, tag);
		return;
	}
	note(cli, kh_msg_put(cli->req, tag, val), tag);
}

void cli_put_u64(struct cli *cli, const char *tag, uint64_t v)
{
	if (cli->req_err == KH_OK)
		note(cli, kh_msg_put_u64(cli->req, tag, v), tag);
}

void cli_put_hex(struct cli *cli, const char *tag, const uint8_t *d, size_t n)
{
	if (cli->req_err == KH_OK)
		note(cli, kh_msg_put_hex(cli->req, tag, d, n), tag);
}

void cli_put_texthex(struct cli *cli, const char *tag, const char *s)
{
	cli_put_hex(cli, tag, (const uint8_t *)s, strlen(s));
}

static int finish(struct cli *cli)
{
	if (cli->req_err == KH_OK)
		cli->req_err = kh_msg_end(cli->req);
	return cli->req_err;
}

int cli_call_quiet(struct cli *cli)
{
	int r = finish(cli);
	if (r != KH_OK)
		return r;
	if (cli->client == NULL || !kh_client_connected(cli->client)) {
		if (cli->ever_connected)
			return KH_ERR_CLOSED;
		kh_client_free(cli->client);
		cli->client = kh_client_new(&cli->copts);
		if (cli->client == NULL)
			return KH_ERR_NOMEM;
		if ((r = kh_client_connect(cli->client)) != KH_OK)
			return r;
		cli->ever_connected = true;
	}
	r = kh_client_call(cli->client, cli->req, cli->resp, cli->frame);
	kh_buf_reset(cli->req);
	return r;
}

int cli_call(struct cli *cli)
{
	int r = finish(cli);
	if (r == KH_ERR_BAD_FIELD)
		return cli_usage(cli, "a value for tag %s may not contain ';', '[', ']' or control "
			       "characters", cli->req_errtag);
	if (r == KH_ERR_TOO_LARGE)
		return cli_usage(cli, "request too large");
	if (r != KH_OK)
		return cli_fail(cli, r, "cannot build the request");
	if ((r = cli_ensure_connected(cli)) != CLI_OK)
		return r;
	r = kh_client_call(cli->client, cli->req, cli->resp, cli->frame);
	kh_buf_reset(cli->req);
	if (r != KH_OK)
		return cli_client_fail(cli, r);
	return CLI_OK;
}

const struct kh_field *cli_field(struct cli *cli, const char *tag)
{
	return kh_frame_get(cli->frame, tag);
}

const char *cli_fstr(struct cli *cli, const char *tag, char *buf, size_t sz)
{
	const struct kh_field *f = cli_field(cli, tag);
	size_t n = 0;
	if (f) {
		n = f->len < sz - 1 ? f->len : sz - 1;
		memcpy(buf, f->val, n);
	}
	buf[n] = '\0';
	return buf;
}

bool cli_fyes(struct cli *cli, const char *tag)
{
	const struct kh_field *f = cli_field(cli, tag);
	return f && f->len == 1 && f->val[0] == 'Y';
}

long long cli_fnum(struct cli *cli, const char *tag, long long dflt)
{
	uint64_t v;
	if (kh_frame_u64(cli->frame, tag, 0, UINT64_MAX / 2, &v) != KH_OK)
		return dflt;
	return (long long)v;
}

void cli_out_field(struct cli *cli, const char *tag, const char *key, const char *label)
{
	const struct kh_field *f = cli_field(cli, tag);
	if (f)
		out_strn(cli, key, label, f->val, f->len);
	else
		out_null(cli, key, label, "-");
}

void cli_out_fnum(struct cli *cli, const char *tag, const char *key, const char *label)
{
	uint64_t v;
	if (kh_frame_u64(cli->frame, tag, 0, UINT64_MAX / 2, &v) == KH_OK)
		out_int(cli, key, label, (long long)v);
	else
		cli_out_field(cli, tag, key, label);
}

void cli_out_fyn(struct cli *cli, const char *tag, const char *key, const char *label)
{
	if (cli_field(cli, tag))
		out_bool(cli, key, label, cli_fyes(cli, tag));
	else
		out_null(cli, key, label, "-");
}

int cli_fhex(struct cli *cli, const char *tag, uint8_t **out, size_t *n)
{
	const struct kh_field *f = cli_field(cli, tag);
	uint8_t *p;
	int r;

	*out = NULL;
	*n = 0;
	if (f == NULL)
		return cli_fail(cli, KH_ERR_PROTOCOL, "the HSM's answer lacks %s", tag);
	p = malloc(f->len / 2 + 1);
	if (p == NULL)
		return cli_fail(cli, KH_ERR_NOMEM, "out of memory");
	r = kh_hex_decode(f->val, f->len, p, f->len / 2);
	if (r < 0) {
		free(p);
		return cli_fail(cli, KH_ERR_PROTOCOL, "the HSM's %s is not valid hex", tag);
	}
	*out = p;
	*n = (size_t)r;
	return CLI_OK;
}

void cli_free_bytes(uint8_t *p, size_t n)
{
	if (p == NULL)
		return;
	kh_wipe(p, n);
	free(p);
}

int cli_read_file(struct cli *cli, const char *path, size_t max, uint8_t **out, size_t *n)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	uint8_t *p = NULL;
	size_t len = 0, cap = 0;
	int rc = CLI_OK;

	*out = NULL;
	*n = 0;
	if (fd < 0)
		return cli_fail(cli, KH_ERR_LOCAL_FILE, "cannot open %s: %s", path, strerror(errno));
	for (;;) {
		if (len == cap) {
			size_t ncap = cap ? cap * 2 : 4096;
			if (ncap > max + 1)
				ncap = max + 1;
			if (ncap == cap) {
				rc = cli_fail(cli, KH_ERR_TOO_LARGE, "%s is larger than %zu bytes", path,
					      max);
				goto out;
			}
			uint8_t *np = malloc(ncap);
			if (np == NULL) {
				rc = cli_fail(cli, KH_ERR_NOMEM, "out of memory");
				goto out;
			}
			if (p) {
				memcpy(np, p, len);
				cli_free_bytes(p, cap);
			}
			p = np;
			cap = ncap;
		}
		ssize_t r = read(fd, p + len, cap - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = cli_fail(cli, KH_ERR_LOCAL_FILE, "cannot read %s: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	if (len > max) {
		rc = cli_fail(cli, KH_ERR_TOO_LARGE, "%s is larger than %zu bytes", path, max);
		goto out;
	}
	*out = p;
	*n = len;
	p = NULL;
out:
	cli_free_bytes(p, cap);
	close(fd);
	return rc;
}

int cli_write_file(struct cli *cli, const char *path, const uint8_t *d, size_t n, int mode,
		   bool excl)
{
	int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (excl ? O_EXCL : O_TRUNC);
	int fd = open(path, flags, mode);
	int rc = CLI_OK;

	if (fd < 0)
		return cli_fail(cli, KH_ERR_LOCAL_FILE, "cannot create %s: %s%s", path, strerror(errno),
				excl && errno == EEXIST ? " (never overwritten)" : "");
	/* an existing file keeps its old mode with O_TRUNC: enforce ours */
	if (fchmod(fd, (mode_t)mode) < 0) {
		rc = cli_fail(cli, KH_ERR_LOCAL_FILE, "cannot set the mode of %s: %s", path, strerror(errno));
		goto out;
	}
	while (n > 0) {
		ssize_t w = write(fd, d, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			rc = cli_fail(cli, KH_ERR_LOCAL_FILE, "cannot write %s: %s", path, strerror(errno));
			goto out;
		}
		d += w;
		n -= (size_t)w;
	}
	if (fsync(fd) < 0 && errno != EINVAL)
		rc = cli_fail(cli, KH_ERR_LOCAL_FILE, "cannot write %s: %s", path, strerror(errno));
out:
	if (close(fd) < 0 && rc == CLI_OK)
		rc = cli_fail(cli, KH_ERR_LOCAL_FILE, "cannot write %s: %s", path, strerror(errno));
	return rc;
}
