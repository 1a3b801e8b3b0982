/*
 * The command table: every wire command, where it may run, what it needs.
 * Described as data so that the dispatcher checks everything in one place
 * and docs/PROTOCOL.md can be compared against it by a test.
 */
#include "hsm/dispatch.h"
#include "hsm/cmds.h"

#include <string.h>

#define P(x) KH_PERM(KH_P_##x)
#define PA (KH_CF_PROD | KH_CF_ADMIN)
#define EX (KH_CF_EXCRYPT)
#define AD (KH_CF_ADMIN)

const struct kh_cmd kh_cmd_table[] = {
	/* PKCS#11 communication commands (Excrypt) */
	{"ECHO", kh_cmd_echo, PA | EX | KH_CF_PREADMIN, 0, "Communication test / retrieve version"},
	{"PRMD", kh_cmd_prmd, PA | EX, 0, "Retrieve HSM restrictions"},
	{"RAND", kh_cmd_rand, PA | EX, 0, "Generate random data"},
	{"HASH", kh_cmd_hash, PA | EX, 0, "Retrieve device serial"},
	{"STAT", kh_cmd_stat, PA | EX, 0, "HSM statistics"},
	{"TIME", kh_cmd_time, PA | EX, 0, "Read or set the clock"},
	{"GPKM", kh_cmd_gpkm, PA | EX, P(KEYS), "Retrieve key table information"},
	{"GPKS", kh_cmd_gpks, PA | EX | KH_CF_SLOT, P(KEYS), "General-purpose key settings get/change"},
	{"GPKR", kh_cmd_gpkr, PA | EX | KH_CF_SLOT, P(KEYS), "General-purpose key settings get (read-only)"},
	/* The rest of the reference's Excrypt catalogue. Roles can enable these
	 * now (the reference's application partition lists them); they have no
	 * handler until the crypto service lands, and the dispatcher answers
	 * UNKNOWN_COMMAND "not implemented by this firmware". */
	{"APFP", NULL, KH_CF_PROD | EX, P(KEYS), "Generate PKI public key from private key"},
	{"ASYL", NULL, KH_CF_PROD | EX, P(KEYS), "Load asymmetric key into the key table"},
	{"GECC", NULL, KH_CF_PROD | EX, P(KEYS), "Generate an ECC key pair"},
	{"GPCA", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose add certificate to key table"},
	{"GPGS", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose generate symmetric key"},
	{"GPKA", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose key add"},
	{"GPKD", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose key slot delete/clear"},
	{"GRSA", NULL, KH_CF_PROD | EX, P(KEYS), "Generate RSA private and public key"},
	{"LRSA", NULL, KH_CF_PROD | EX, P(KEYS), "Load key into RSA key table"},
	{"RPFP", NULL, KH_CF_PROD | EX, P(KEYS), "Get public components from the RSA private key"},
	{"GPKU", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose key unwrap (unrestricted)"},
	{"GPUK", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose key unwrap (preserves key usage)"},
	{"GPKW", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose key wrap (unrestricted)"},
	{"GPWK", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose key wrap (preserves key usage)"},
	{"ADPK", NULL, KH_CF_PROD | EX, P(KEYS), "PKI decrypt trusted public key"},
	{"GHSH", NULL, KH_CF_PROD | EX, 0, "Generate a hash (message digest)"},
	{"GPSE", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose symmetric encrypt"},
	{"GPSD", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose symmetric decrypt"},
	{"GPGC", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose generate cryptogram from key slot"},
	{"GPMC", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose MAC"},
	{"GPSR", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose RSA encrypt/decrypt or sign/verify with recovery"},
	{"HMAC", NULL, KH_CF_PROD | EX, P(KEYS), "Generate a hash-based message authentication code"},
	{"RDPK", NULL, KH_CF_PROD | EX, P(KEYS), "Get clear public key from cryptogram"},
	{"ASYS", NULL, KH_CF_PROD | EX, P(KEYS), "Generate a signature using a PKI private key"},
	{"ASYV", NULL, KH_CF_PROD | EX, P(KEYS), "Verify a signature using a public key"},
	{"GPSV", NULL, KH_CF_PROD | EX, P(KEYS), "General-purpose data sign and verify"},
	{"RSAS", NULL, KH_CF_PROD | EX, P(KEYS), "Generate a signature using an RSA private key"},
	/* session */
	{"LOGN", kh_cmd_logn, PA | KH_CF_SESSION, 0, "Log in an identity"},
	{"LOGO", kh_cmd_logo, PA | KH_CF_SESSION, 0, "Log out"},
	{"CHPW", kh_cmd_chpw, PA | KH_CF_SESSION, 0, "Change own password"},
	/* roles and identities */
	{"RLAD", kh_cmd_rlad, AD, P(ROLE_ADD), "Role add"},
	{"RLMD", kh_cmd_rlmd, AD, P(ROLE_MODIFY), "Role modify"},
	{"RLLS", kh_cmd_rlls, AD, P(ROLE_MODIFY), "Role list"},
	{"RLSH", kh_cmd_rlsh, AD, P(ROLE_MODIFY), "Role show"},
	{"RLDL", kh_cmd_rldl, AD, P(ROLE_DELETE), "Role delete"},
	{"IDAD", kh_cmd_idad, AD, P(IDENTITY_ADD), "Identity add"},
	{"IDMD", kh_cmd_idmd, AD, P(IDENTITY_MODIFY), "Identity modify"},
	{"IDDL", kh_cmd_iddl, AD, P(IDENTITY_DELETE), "Identity delete"},
	{"IDLS", kh_cmd_idls, AD, P(IDENTITY_MODIFY), "Identity list"},
	/* major keys */
	{"MKST", kh_cmd_mkst, AD, 0, "Major key status"},
	{"MKLB", kh_cmd_mklb, AD, P(MAJOR_KEYS_LOAD), "Begin loading a major key"},
	{"MKLC", kh_cmd_mklc, AD, P(MAJOR_KEYS_LOAD), "Enter one key part"},
	{"MKLA", kh_cmd_mkla, AD, P(MAJOR_KEYS_LOAD), "Abort a ceremony"},
	{"MKGN", kh_cmd_mkgn, AD, P(MAJOR_KEYS_LOAD), "Generate a major key as M-of-N fragments"},
	{"MKER", kh_cmd_mker, AD, P(MAJOR_KEYS_ERASE), "Erase a major key"},
	/* TLS */
	{"TCAG", kh_cmd_tcag, AD, P(MGMT_CERTIFICATES) | P(MGMT_KEYS), "Generate the HSM's TLS CA"},
	{"TCAI", kh_cmd_tcai, AD, P(TLS_UPLOAD_KEY), "Import a CA certificate"},
	{"TCAX", kh_cmd_tcax, AD, P(MGMT_CERTIFICATES), "Export CA certificates"},
	{"TSRV", kh_cmd_tsrv, AD, P(SECURITY_TLS_SIGN) | P(TLS_UPLOAD_KEY), "Issue and install the HSM's server certificate"},
	{"TCSR", kh_cmd_tcsr, AD, P(MGMT_KEYS), "Make a server key and CSR"},
	{"TSCI", kh_cmd_tsci, AD, P(TLS_UPLOAD_KEY), "Install a server certificate"},
	{"TSGN", kh_cmd_tsgn, AD, P(SECURITY_TLS_SIGN), "Sign a client CSR"},
	{"TRVK", kh_cmd_trvk, AD, P(SECURITY_TLS_SIGN), "Revoke a client certificate"},
	{"TCRL", kh_cmd_tcrl, AD, P(MGMT_CERTIFICATES), "Get or import the CRL"},
	{"TPRT", kh_cmd_tprt, AD, P(TLS_SETTINGS), "Set a port's TLS options"},
	{"TPRS", kh_cmd_tprs, AD, P(TLS_SETTINGS), "Show TLS port settings"},
	/* backup, audit, settings */
	{"BKUP", kh_cmd_bkup, AD, P(BACKUP), "Back up configuration and keys"},
	{"BKRS", kh_cmd_bkrs, AD, P(RESTORE), "Restore a backup"},
	{"AUDS", kh_cmd_auds, AD, P(AUDIT_VIEW), "Show the audit log"},
	{"AUDV", kh_cmd_audv, AD, P(AUDIT_VIEW), "Verify the audit log"},
	{"SETG", kh_cmd_setg, AD, P(SECURITY_SETTINGS), "Get device settings"},
	{"SETS", kh_cmd_sets, AD, P(SECURITY_SETTINGS), "Change device settings"},
};

const size_t kh_cmd_count = sizeof(kh_cmd_table) / sizeof(kh_cmd_table[0]);
_Static_assert(sizeof(kh_cmd_table) / sizeof(kh_cmd_table[0]) <= KH_MAX_COMMANDS,
	       "command table exceeds the role bitmap");

int kh_cmd_index(const char *name)
{
	for (size_t i = 0; i < kh_cmd_count; i++)
		if (strncmp(kh_cmd_table[i].name, name, 4) == 0 && strlen(name) == 4)
			return (int)i;
	return -1;
}

const struct kh_cmd *kh_cmd_find(const char *name)
{
	int i = kh_cmd_index(name);
	return i < 0 ? NULL : &kh_cmd_table[i];
}
