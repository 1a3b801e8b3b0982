/*
 * TLS set-up on the HSM: its CA, its server certificate, signing client CSRs,
 * revocation and the CRL, and the per-port TLS settings (tls-ports). Only
 * public material passes here: private keys stay on the HSM.
 */
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PEM_MAX (1024 * 1024)

static const struct cli_optdef ca_generate_opts[] = {
	{"type", 0, CLI_VALUE, "rsa|ec", "key type"},
	{"bits", 0, CLI_VALUE, "N", "RSA modulus bits: 2048, 3072, 4096 (default 2048)"},
	{"curve", 0, CLI_VALUE, "P-256|P-384", "EC curve (default P-256)"},
	{"cn", 0, CLI_VALUE, "NAME", "subject common name"},
	{"days", 0, CLI_VALUE, "N", "validity in days (default 3650)"},
	{"out", 'o', CLI_VALUE, "FILE", "write the CA certificate here (default: print it)"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef ca_import_opts[] = {
	{"cert", 0, CLI_VALUE, "FILE", "PEM CA certificate"},
	{"replace", 0, CLI_FLAG, NULL, "replace the trust anchors instead of adding"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef out_opts[] = {
	{"out", 'o', CLI_VALUE, "FILE", "write here (default: print)"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef server_issue_opts[] = {
	{"cn", 0, CLI_VALUE, "NAME", "subject common name"},
	{"san", 0, CLI_VALUE, "LIST", "subject alternative names, e.g. IP:127.0.0.1,DNS:hsm"},
	{"type", 0, CLI_VALUE, "rsa|ec", "key type (default: the CA's)"},
	{"days", 0, CLI_VALUE, "N", "validity in days (default 825)"},
	{"out", 'o', CLI_VALUE, "FILE", "write the certificate here (default: print it)"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef server_csr_opts[] = {
	{"cn", 0, CLI_VALUE, "NAME", "subject common name"},
	{"san", 0, CLI_VALUE, "LIST", "subject alternative names, e.g. IP:127.0.0.1,DNS:hsm"},
	{"type", 0, CLI_VALUE, "rsa|ec", "key type"},
	{"out", 'o', CLI_VALUE, "FILE", "write the CSR here"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef cert_in_opts[] = {
	{"cert", 0, CLI_VALUE, "FILE", "PEM certificate (may be followed by its chain)"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef sign_opts[] = {
	{"csr", 0, CLI_VALUE, "FILE", "PEM client CSR (e.g. from openssl req)"},
	{"out", 'o', CLI_VALUE, "FILE", "write the client certificate here"},
	{"days", 0, CLI_VALUE, "N", "validity in days (default 365)"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef revoke_opts[] = {
	{"serial", 0, CLI_VALUE, "HEX", "serial number of the client certificate"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef crl_opts[] = {
	{"import", 0, CLI_VALUE, "FILE", "install this PEM CRL"},
	{"out", 'o', CLI_VALUE, "FILE", "write the CRL in force here (default: print it)"},
	{NULL, 0, 0, NULL, NULL},
};

static const struct cli_optdef ports_set_opts[] = {
	{"port", 0, CLI_VALUE, "excrypt|admin", "which port"},
	{"mode", 0, CLI_VALUE, "mutual|anonymous|clear", "client certificates required, "
	 "server-only TLS, or no TLS"},
	{"allow-anonymous", 0, CLI_FLAG, NULL, "the same as --mode anonymous"},
	{"min-version", 0, CLI_VALUE, "1.2|1.3", "minimum TLS version"},
	{NULL, 0, 0, NULL, NULL},
};

/* Put a PEM file's contents as hex under tag. */
static int put_pem_file(struct cli *cli, const char *tag, const char *path)
{
	uint8_t *d;
	size_t n;
	int rc = cli_read_file(cli, path, PEM_MAX, &d, &n);
	if (rc != CLI_OK)
		return rc;
	cli_put_hex(cli, tag, d, n);
	cli_free_bytes(d, n);
	return CLI_OK;
}

/* A PEM (hex on the wire) to a file or to the output. */
static int pem_out(struct cli *cli, const char *tag, const char *path, const char *key,
		   const char *what)
{
	uint8_t *d;
	size_t n;
	int rc = cli_fhex(cli, tag, &d, &n);
	if (rc != CLI_OK)
		return rc;
	if (path) {
		rc = cli_write_file(cli, path, d, n, 0644, false);
		if (rc == CLI_OK) {
			out_str(cli, "file", NULL, path);
			out_text(cli, "%s written to %s", what, path);
		}
	} else {
		out_strn(cli, key, NULL, (const char *)d, n);
		if (!cli->json) {
			if (n == 0)
				printf("(no %s)\n", what);
			else
				fwrite(d, 1, n, stdout);
		}
	}
	cli_free_bytes(d, n);
	return rc;
}

static int key_type(struct cli *cli, const char *t, const char **out)
{
	*out = NULL;
	if (t == NULL)
		return CLI_OK;
	if (strcasecmp(t, "rsa") == 0)
		*out = "RSA";
	else if (strcasecmp(t, "ec") == 0 || strcasecmp(t, "ecc") == 0)
		*out = "EC";
	else
		return cli_usage(cli, "--type takes rsa or ec");
	return CLI_OK;
}

static int cmd_ca_generate(struct cli *cli, struct cli_args *a)
{
	const char *kt, *cn = cli_arg(a, "cn");
	uint64_t days = 0, bits = 0;
	int rc;

	if ((rc = key_type(cli, cli_arg(a, "type"), &kt)) != CLI_OK)
		return rc;
	if (kt == NULL || cn == NULL)
		return cli_usage(cli, "tls ca generate needs --type rsa|ec --cn NAME");
	if (!cli_arg_u64(cli, a, "days", 1, 36500, &days) ||
	    !cli_arg_u64(cli, a, "bits", 2048, 4096, &bits))
		return CLI_USAGE;
	if (cli_arg(a, "bits") && strcmp(kt, "RSA") != 0)
		return cli_usage(cli, "--bits is for RSA; use --curve for EC");
	if (cli_arg(a, "curve") && strcmp(kt, "EC") != 0)
		return cli_usage(cli, "--curve is for EC");
	cli_req(cli, "TCAG");
	cli_put(cli, "KT", kt);
	if (cli_arg(a, "bits"))
		cli_put_u64(cli, "KB", bits);
	if (cli_arg(a, "curve"))
		cli_put(cli, "KB", cli_arg(a, "curve"));
	cli_put_texthex(cli, "CN", cn);
	if (cli_arg(a, "days"))
		cli_put_u64(cli, "DY", days);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	return pem_out(cli, "CE", cli_arg(a, "out"), "certificate", "CA certificate");
}

static int cmd_ca_import(struct cli *cli, struct cli_args *a)
{
	int rc;

	if (!cli_arg(a, "cert"))
		return cli_usage(cli, "tls ca import needs --cert FILE");
	cli_req(cli, "TCAI");
	if ((rc = put_pem_file(cli, "CE", cli_arg(a, "cert"))) != CLI_OK)
		return rc;
	if (cli_flag(a, "replace"))
		cli_put(cli, "RP", "Y");
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	cli_out_field(cli, "FP", "fingerprint", "SHA-256 fingerprint");
	return CLI_OK;
}

static int cmd_ca_export(struct cli *cli, struct cli_args *a)
{
	int rc;
	cli_req(cli, "TCAX");
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	return pem_out(cli, "CE", cli_arg(a, "out"), "certificates", "CA certificates");
}

static int server_subject(struct cli *cli, struct cli_args *a, const char *cmd)
{
	const char *kt, *cn = cli_arg(a, "cn");
	int rc;

	if ((rc = key_type(cli, cli_arg(a, "type"), &kt)) != CLI_OK)
		return rc;
	if (cn == NULL)
		return cli_usage(cli, "needs --cn NAME");
	cli_req(cli, cmd);
	cli_put_texthex(cli, "CN", cn);
	if (cli_arg(a, "san"))
		cli_put_texthex(cli, "SA", cli_arg(a, "san"));
	if (kt)
		cli_put(cli, "KT", kt);
	return CLI_OK;
}

static int cmd_server_issue(struct cli *cli, struct cli_args *a)
{
	uint64_t days = 0;
	int rc;

	if (!cli_arg_u64(cli, a, "days", 1, 36500, &days))
		return CLI_USAGE;
	if ((rc = server_subject(cli, a, "TSRV")) != CLI_OK)
		return rc;
	if (cli_arg(a, "days"))
		cli_put_u64(cli, "DY", days);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_text(cli, "Server certificate issued and installed.");
	return pem_out(cli, "CE", cli_arg(a, "out"), "certificate", "Server certificate");
}

static int cmd_server_csr(struct cli *cli, struct cli_args *a)
{
	int rc;

	if (!cli_arg(a, "out"))
		return cli_usage(cli, "tls server csr needs --out FILE");
	if ((rc = server_subject(cli, a, "TCSR")) != CLI_OK || (rc = cli_call(cli)) != CLI_OK)
		return rc;
	return pem_out(cli, "CR", cli_arg(a, "out"), "csr", "CSR");
}

static int cmd_server_install(struct cli *cli, struct cli_args *a)
{
	int rc;

	if (!cli_arg(a, "cert"))
		return cli_usage(cli, "tls server install needs --cert FILE");
	cli_req(cli, "TSCI");
	if ((rc = put_pem_file(cli, "CE", cli_arg(a, "cert"))) != CLI_OK ||
	    (rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_text(cli, "Server certificate installed.");
	return CLI_OK;
}

static int cmd_sign(struct cli *cli, struct cli_args *a)
{
	uint64_t days = 0;
	int rc;

	if (!cli_arg(a, "csr") || !cli_arg(a, "out"))
		return cli_usage(cli, "tls sign needs --csr FILE --out FILE");
	if (!cli_arg_u64(cli, a, "days", 1, 36500, &days))
		return CLI_USAGE;
	cli_req(cli, "TSGN");
	if ((rc = put_pem_file(cli, "CR", cli_arg(a, "csr"))) != CLI_OK)
		return rc;
	if (cli_arg(a, "days"))
		cli_put_u64(cli, "DY", days);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	cli_out_field(cli, "SN", "serial", "Serial");
	return pem_out(cli, "CE", cli_arg(a, "out"), "certificate", "Client certificate");
}

static int cmd_revoke(struct cli *cli, struct cli_args *a)
{
	const char *sn = cli_arg(a, "serial");
	int rc;

	if (sn == NULL || *sn == '\0' || strspn(sn, "0123456789abcdefABCDEF:") != strlen(sn))
		return cli_usage(cli, "tls revoke needs --serial HEX");
	char clean[256];
	size_t o = 0;
	for (const char *p = sn; *p && o + 1 < sizeof(clean); p++)
		if (*p != ':')
			clean[o++] = (char)((*p >= 'a' && *p <= 'f') ? *p - 32 : *p);
	clean[o] = '\0';
	cli_req(cli, "TRVK");
	cli_put(cli, "SN", clean);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_str(cli, "serial", NULL, clean);
	out_text(cli, "Certificate %s revoked.", clean);
	return CLI_OK;
}

static int cmd_crl(struct cli *cli, struct cli_args *a)
{
	int rc;

	cli_req(cli, "TCRL");
	if (cli_arg(a, "import") && (rc = put_pem_file(cli, "CL", cli_arg(a, "import"))) != CLI_OK)
		return rc;
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	if (cli_arg(a, "import"))
		out_text(cli, "CRL installed.");
	if (cli_arg(a, "import") && !cli_arg(a, "out"))
		return CLI_OK;
	return pem_out(cli, "CL", cli_arg(a, "out"), "crl", "CRL");
}

static int cmd_ports_show(struct cli *cli, struct cli_args *a);

/* "mode/version/cert" of TPRS into JSON and text. */
static void out_port(struct cli *cli, const char *tag, const char *key, const char *label)
{
	char v[64], *ver, *cert;
	cli_fstr(cli, tag, v, sizeof(v));
	ver = strchr(v, '/');
	cert = ver ? strchr(ver + 1, '/') : NULL;
	if (ver)
		*ver++ = '\0';
	if (cert)
		*cert++ = '\0';
	json_t *o = json_object();
	json_object_set_new(o, "mode", json_string(v));
	json_object_set_new(o, "min_version", json_string(ver ? ver : ""));
	json_object_set_new(o, "certificate", json_boolean(cert && *cert == 'Y'));
	if (cli->json && cli->out)
		json_object_set_new(cli->out, key, o);
	else
		json_decref(o);
	out_text(cli, "%-10s mode %-10s min TLS %-4s server certificate %s", label, v,
		 ver ? ver : "-", cert && *cert == 'Y' ? "installed" : "missing");
}

static int cmd_ports_show(struct cli *cli, struct cli_args *a)
{
	int rc;
	cli_req(cli, "TPRS");
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_port(cli, "EX", "excrypt", "Excrypt");
	out_port(cli, "AD", "admin", "Admin");
	return CLI_OK;
}

static int cmd_ports_set(struct cli *cli, struct cli_args *a)
{
	const char *port = cli_arg(a, "port"), *mode = cli_arg(a, "mode"),
		   *ver = cli_arg(a, "min-version");
	char cur[64] = "";
	int rc;

	if (port == NULL || (strcmp(port, "excrypt") != 0 && strcmp(port, "admin") != 0))
		return cli_usage(cli, "tls-ports set needs --port excrypt|admin");
	if (cli_flag(a, "allow-anonymous")) {
		if (mode && strcmp(mode, "anonymous") != 0)
			return cli_usage(cli, "--allow-anonymous contradicts --mode %s", mode);
		mode = "anonymous";
	}
	if (mode && strcmp(mode, "mutual") != 0 && strcmp(mode, "anonymous") != 0 &&
	    strcmp(mode, "clear") != 0)
		return cli_usage(cli, "--mode takes mutual, anonymous or clear");
	if (ver && strcmp(ver, "1.2") != 0 && strcmp(ver, "1.3") != 0)
		return cli_usage(cli, "--min-version takes 1.2 or 1.3");
	if (mode == NULL && ver == NULL)
		return cli_usage(cli, "tls-ports set needs --mode, --allow-anonymous or --min-version");
	if (mode == NULL) {
		/* TPRT needs a mode: keep the current one */
		cli_req(cli, "TPRS");
		if ((rc = cli_call(cli)) != CLI_OK)
			return rc;
		cli_fstr(cli, strcmp(port, "excrypt") == 0 ? "EX" : "AD", cur, sizeof(cur));
		char *slash = strchr(cur, '/');
		if (slash)
			*slash = '\0';
		if (cur[0] == '\0')
			return cli_fail(cli, KH_ERR_PROTOCOL, "the HSM did not report the port's mode");
		mode = cur;
	}
	cli_req(cli, "TPRT");
	cli_put(cli, "PT", port);
	cli_put(cli, "MO", mode);
	if (ver)
		cli_put(cli, "TV", ver);
	if ((rc = cli_call(cli)) != CLI_OK)
		return rc;
	out_str(cli, "port", NULL, port);
	out_str(cli, "mode", NULL, mode);
	if (ver)
		out_str(cli, "min_version", NULL, ver);
	out_text(cli, "Port %s: mode %s%s%s (applies to new connections).", port, mode,
		 ver ? ", minimum TLS " : "", ver ? ver : "");
	return CLI_OK;
}

static const struct cli_cmd ca_cmds[] = {
	{"generate", cmd_ca_generate, ca_generate_opts,
	 "--type rsa|ec [--bits N | --curve P-256|P-384] --cn NAME [--days N] [--out FILE]",
	 "generate the HSM's TLS CA (TCAG; needs the PMK)", NULL, CLI_F_CONN},
	{"import", cmd_ca_import, ca_import_opts, "--cert FILE [--replace]",
	 "trust a CA certificate (TCAI)", NULL, CLI_F_CONN},
	{"export", cmd_ca_export, out_opts, "[--out FILE]", "export the trusted CA certificates (TCAX)",
	 NULL, CLI_F_CONN},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};

static const struct cli_cmd server_cmds[] = {
	{"issue", cmd_server_issue, server_issue_opts,
	 "--cn NAME [--san LIST] [--type rsa|ec] [--days N] [--out FILE]",
	 "issue and install the HSM's server certificate from its CA (TSRV)", NULL, CLI_F_CONN},
	{"csr", cmd_server_csr, server_csr_opts, "--cn NAME [--san LIST] [--type rsa|ec] --out FILE",
	 "make a server key on the HSM and a CSR for an outside CA (TCSR)", NULL, CLI_F_CONN},
	{"install", cmd_server_install, cert_in_opts, "--cert FILE",
	 "install a server certificate for the pending key (TSCI)", NULL, CLI_F_CONN},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};

const struct cli_cmd cli_tls_cmds[] = {
	{"ca", NULL, NULL, NULL, "the HSM's CA: generate, import, export", ca_cmds, 0},
	{"server", NULL, NULL, NULL, "the HSM's server certificate: issue, csr, install",
	 server_cmds, 0},
	{"sign", cmd_sign, sign_opts, "--csr FILE --out FILE [--days N]",
	 "sign a client CSR with the HSM's CA (TSGN); prints the serial", NULL, CLI_F_CONN},
	{"revoke", cmd_revoke, revoke_opts, "--serial HEX", "revoke a client certificate (TRVK)",
	 NULL, CLI_F_CONN},
	{"crl", cmd_crl, crl_opts, "[--import FILE] [--out FILE]", "get or install the CRL (TCRL)",
	 NULL, CLI_F_CONN},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};

const struct cli_cmd cli_tlsports_cmds[] = {
	{"set", cmd_ports_set, ports_set_opts,
	 "--port excrypt|admin [--mode mutual|anonymous|clear | --allow-anonymous] "
	 "[--min-version 1.2|1.3]",
	 "set a port's TLS options (TPRT); applies to new connections", NULL, CLI_F_CONN},
	{"show", cmd_ports_show, cli_none_opts, "", "show the ports' TLS settings (TPRS)", NULL,
	 CLI_F_CONN},
	{NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
