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
#define CR (KH_CF_CRYPTO)
#define XP (KH_CF_PROD | EX | CR) /* an Excrypt crypto command: production port */

const struct kh_cmd kh_cmd_table[] = {
	/* PKCS#11 communication commands (Excrypt) */
	{"ECHO", kh_cmd_echo, PA | EX | KH_CF_PREADMIN, 0, "Communication test / retrieve version", NULL},
	{"PRMD", kh_cmd_prmd, PA | EX, 0, "Retrieve HSM restrictions", NULL},
	{"RAND", kh_cmd_rand, PA | EX | CR, 0, "Generate random data", NULL},
	{"HASH", kh_cmd_hash, PA | EX, 0, "Retrieve device serial", NULL},
	{"STAT", kh_cmd_stat, PA | EX, 0, "HSM statistics", NULL},
	{"TIME", kh_cmd_time, PA | EX, 0, "Read or set the clock", NULL},
	{"GPKM", kh_cmd_gpkm, PA | EX, P(KEYS), "Retrieve key table information", NULL},
	/* GPKS and GPKR name a slot or a cryptogram: their plans check it */
	{"GPKS", kh_cmd_gpks, PA | EX, P(KEYS), "General-purpose key settings get/change", kh_plan_gpks},
	{"GPKR", kh_cmd_gpkr, PA | EX, P(KEYS), "General-purpose key settings get (read-only)", kh_plan_gpkr},
	/* The crypto service (keyobj.h). A plan names the keys a request uses;
	 * the dispatcher resolves and checks them before the handler runs. */
	{"GPGS", kh_cmd_gpgs, XP, P(KEYS), "General-purpose generate symmetric key", kh_plan_gpgs},
	{"GPKA", kh_cmd_gpka, XP, P(KEYS), "General-purpose key add", kh_plan_gpka},
	{"GPKD", kh_cmd_gpkd, XP | KH_CF_SLOT, P(KEYS), "General-purpose key slot delete/clear", NULL},
	{"GPGC", kh_cmd_gpgc, XP, P(KEYS), "General-purpose generate cryptogram from key slot", kh_plan_gpgc},
	/* key pairs, asymmetric keys, certificates */
	{"GRSA", kh_cmd_grsa, XP, P(KEYS), "Generate RSA private and public key", kh_plan_grsa},
	{"GECC", kh_cmd_gecc, XP, P(KEYS), "Generate an ECC key pair", kh_plan_gecc},
	{"ASYL", kh_cmd_asyl, XP, P(KEYS), "Load asymmetric key into the key table", kh_plan_asyl},
	{"LRSA", kh_cmd_lrsa, XP, P(KEYS), "Load key into RSA key table", kh_plan_lrsa},
	{"APFP", kh_cmd_apfp, XP, P(KEYS), "Generate PKI public key from private key", kh_plan_apfp},
	{"RPFP", kh_cmd_rpfp, XP, P(KEYS), "Get public components from the RSA private key", kh_plan_rpfp},
	{"GPCA", kh_cmd_gpca, XP, P(KEYS) | P(KEYS_IMPORT_PKI), "General-purpose add certificate to key table", kh_plan_gpca},
	{"RDPK", kh_cmd_rdpk, XP, P(KEYS), "Get clear public key from cryptogram", kh_plan_rdpk},
	{"ADPK", kh_cmd_adpk, XP, P(KEYS), "PKI decrypt trusted public key", kh_plan_adpk},

	/* interoperable key wrapping, derivation */
	{"GPKW", kh_cmd_gpkw, XP, P(KEYS) | P(KEYS_NO_USAGE_WRAP), "General-purpose key wrap (unrestricted)", kh_plan_gpkw},
	{"GPWK", kh_cmd_gpwk, XP, P(KEYS), "General-purpose key wrap (preserves key usage)", kh_plan_gpwk},
	{"GPKU", kh_cmd_gpku, XP, P(KEYS) | P(KEYS_NO_USAGE_WRAP), "General-purpose key unwrap (unrestricted)", kh_plan_gpku},
	{"GPUK", kh_cmd_gpuk, XP, P(KEYS), "General-purpose key unwrap (preserves key usage)", kh_plan_gpuk},
	{"GPDK", kh_cmd_gpdk, XP, P(KEYS), "General-purpose derive key", kh_plan_gpdk},

	/* data */
	{"GPSE", kh_cmd_gpse, XP, P(KEYS), "General-purpose symmetric encrypt", kh_plan_gpse},
	{"GPSD", kh_cmd_gpsd, XP, P(KEYS), "General-purpose symmetric decrypt", kh_plan_gpsd},
	{"GPMC", kh_cmd_gpmc, XP, P(KEYS), "General-purpose MAC", kh_plan_gpmc},
	{"HMAC", kh_cmd_hmac, XP, P(KEYS), "Generate a hash-based message authentication code", kh_plan_hmac},
	{"GHSH", kh_cmd_ghsh, XP, 0, "Generate a hash (message digest)", NULL},
	{"GPSR", kh_cmd_gpsr, XP, P(KEYS), "General-purpose RSA encrypt/decrypt or sign/verify with recovery", kh_plan_gpsr},

	/* signing */
	{"ASYS", kh_cmd_asys, XP, P(KEYS), "Generate a signature using a PKI private key", kh_plan_asys},
	{"RSAS", kh_cmd_rsas, XP, P(KEYS), "Generate a signature using an RSA private key", kh_plan_rsas},
	{"ASYV", kh_cmd_asyv, XP, P(KEYS), "Verify a signature using a public key", kh_plan_asyv},
	{"GPSV", kh_cmd_gpsv, XP, P(KEYS), "General-purpose data sign and verify", kh_plan_gpsv},

	/* replication between group members holding the same major keys: the
	 * whole key table, whatever the role's ranges (replication grants it),
	 * and never a key in clear */
	{"KTEX", kh_cmd_ktex, XP, P(REPLICATION), "Export key-table rows in their wrapped form", NULL},
	{"KTIM", kh_cmd_ktim, XP, P(REPLICATION), "Import or delete replicated key-table rows", NULL},
	{"KTCK", kh_cmd_ktck, XP, P(REPLICATION), "Key-table check value over a slot range", NULL},
	{"CFEX", kh_cmd_cfex, XP, P(REPLICATION), "Export the configuration sealed under the PMK", NULL},
	{"CFIM", kh_cmd_cfim, XP, P(REPLICATION), "Import a configuration sealed under the PMK", NULL},

	/* session */
	{"LOGN", kh_cmd_logn, PA | KH_CF_SESSION, 0, "Log in an identity", NULL},
	{"LOGO", kh_cmd_logo, PA | KH_CF_SESSION, 0, "Log out", NULL},
	{"CHPW", kh_cmd_chpw, PA | KH_CF_SESSION, 0, "Change own password", NULL},
	/* roles and identities */
	{"RLAD", kh_cmd_rlad, AD, P(ROLE_ADD), "Role add", NULL},
	{"RLMD", kh_cmd_rlmd, AD, P(ROLE_MODIFY), "Role modify", NULL},
	{"RLLS", kh_cmd_rlls, AD, P(ROLE_MODIFY), "Role list", NULL},
	{"RLSH", kh_cmd_rlsh, AD, P(ROLE_MODIFY), "Role show", NULL},
	{"RLDL", kh_cmd_rldl, AD, P(ROLE_DELETE), "Role delete", NULL},
	{"IDAD", kh_cmd_idad, AD, P(IDENTITY_ADD), "Identity add", NULL},
	{"IDMD", kh_cmd_idmd, AD, P(IDENTITY_MODIFY), "Identity modify", NULL},
	{"IDDL", kh_cmd_iddl, AD, P(IDENTITY_DELETE), "Identity delete", NULL},
	{"IDLS", kh_cmd_idls, AD, P(IDENTITY_MODIFY), "Identity list", NULL},
	/* major keys */
	{"MKST", kh_cmd_mkst, AD, 0, "Major key status", NULL},
	{"MKLB", kh_cmd_mklb, AD, P(MAJOR_KEYS_LOAD), "Begin loading a major key", NULL},
	{"MKLC", kh_cmd_mklc, AD, P(MAJOR_KEYS_LOAD), "Enter one key part", NULL},
	{"MKLA", kh_cmd_mkla, AD, P(MAJOR_KEYS_LOAD), "Abort a ceremony", NULL},
	{"MKGN", kh_cmd_mkgn, AD, P(MAJOR_KEYS_LOAD), "Generate a major key as M-of-N fragments", NULL},
	{"MKER", kh_cmd_mker, AD, P(MAJOR_KEYS_ERASE), "Erase a major key", NULL},
	/* TLS */
	{"TCAG", kh_cmd_tcag, AD, P(MGMT_CERTIFICATES) | P(MGMT_KEYS), "Generate the HSM's TLS CA", NULL},
	{"TCAI", kh_cmd_tcai, AD, P(TLS_UPLOAD_KEY), "Import a CA certificate", NULL},
	{"TCAX", kh_cmd_tcax, AD, P(MGMT_CERTIFICATES), "Export CA certificates", NULL},
	{"TSRV", kh_cmd_tsrv, AD, P(SECURITY_TLS_SIGN) | P(TLS_UPLOAD_KEY), "Issue and install the HSM's server certificate", NULL},
	{"TCSR", kh_cmd_tcsr, AD, P(MGMT_KEYS), "Make a server key and CSR", NULL},
	{"TSCI", kh_cmd_tsci, AD, P(TLS_UPLOAD_KEY), "Install a server certificate", NULL},
	{"TSGN", kh_cmd_tsgn, AD, P(SECURITY_TLS_SIGN), "Sign a client CSR", NULL},
	{"TRVK", kh_cmd_trvk, AD, P(SECURITY_TLS_SIGN), "Revoke a client certificate", NULL},
	{"TCRL", kh_cmd_tcrl, AD, P(MGMT_CERTIFICATES), "Get or import the CRL", NULL},
	{"TPRT", kh_cmd_tprt, AD, P(TLS_SETTINGS), "Set a port's TLS options", NULL},
	{"TPRS", kh_cmd_tprs, AD, P(TLS_SETTINGS), "Show TLS port settings", NULL},
	/* backup, audit, settings */
	{"BKUP", kh_cmd_bkup, AD, P(BACKUP), "Back up configuration and keys", NULL},
	{"BKRS", kh_cmd_bkrs, AD, P(RESTORE), "Restore a backup", NULL},
	{"AUDS", kh_cmd_auds, AD, P(AUDIT_VIEW), "Show the audit log", NULL},
	{"AUDV", kh_cmd_audv, AD, P(AUDIT_VIEW), "Verify the audit log", NULL},
	{"SETG", kh_cmd_setg, AD, P(SECURITY_SETTINGS), "Get device settings", NULL},
	{"SETS", kh_cmd_sets, AD, P(SECURITY_SETTINGS), "Change device settings", NULL},
	{"SLFT", kh_cmd_slft, AD, P(SECURITY_SETTINGS), "Run the self-tests", NULL},
	/* the sealed admin channel (remote.h): session commands, so that a
	 * console's logins travel sealed too; Admin port and console only */
	{"RMKX", kh_cmd_rmkx, AD | KH_CF_SESSION | CR, 0, "Open a sealed admin channel", NULL},
	{"RMSG", kh_cmd_rmsg, AD | KH_CF_SESSION | CR, 0, "One request over the sealed admin channel", NULL},
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
