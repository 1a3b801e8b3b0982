/*
 * Error texts and wire mapping. The table is the single place where an error
 * gets its words; clients and the daemon both use it.
 */
#include "common/kh_err.h"

struct kh_errdesc {
	const char *name;
	const char *text;
};

static const struct kh_errdesc errtab[] = {
	[0] = {"OK", "success"},
	[1] = {"INTERNAL", "internal error"},
	[2] = {"NOMEM", "out of memory"},
	[3] = {"MALFORMED", "malformed request"},
	[4] = {"TOO_LARGE", "request exceeds a size limit"},
	[5] = {"UNKNOWN_COMMAND", "unknown command"},
	[6] = {"MISSING_FIELD", "a required field is missing"},
	[7] = {"BAD_FIELD", "a field has an invalid value"},
	[8] = {"NOT_LOGGED_IN", "login required"},
	[9] = {"COMMAND_NOT_ALLOWED", "command not enabled for this role"},
	[10] = {"PERMISSION_DENIED", "role lacks a required permission"},
	[11] = {"SLOT_OUT_OF_RANGE", "key slot outside the role's ranges"},
	[12] = {"AUTH_FAILED", "invalid identity or password"},
	[13] = {"LOCKED", "identity is locked after too many failed logins"},
	[14] = {"PASSWORD_CHANGE_REQUIRED", "password must be changed before first use"},
	[15] = {"WEAK_PASSWORD", "new password does not meet the password policy"},
	[16] = {"ROLE_MISMATCH", "identity belongs to another role than the one logged in"},
	[17] = {"PORT_NOT_ALLOWED", "role may not log in on this port or connection source"},
	[18] = {"NOT_FOUND", "not found"},
	[19] = {"EXISTS", "already exists"},
	[20] = {"IN_USE", "still in use"},
	[21] = {"BAD_KCV", "check value does not match"},
	[22] = {"CEREMONY_STATE", "no key-loading ceremony in this state"},
	[23] = {"FRAGMENT_INVALID", "fragment is invalid or the passphrase is wrong"},
	[24] = {"FRAGMENT_DUPLICATE", "fragment already entered"},
	[25] = {"INCOMPLETE", "not enough parts entered"},
	[26] = {"MAJOR_KEY_NOT_LOADED", "required major key is not loaded"},
	[27] = {"TLS", "TLS configuration error"},
	[28] = {"CRYPTO", "cryptographic operation failed"},
	[29] = {"BACKUP_INVALID", "backup is invalid or was made under another BEK"},
	[30] = {"STORAGE", "storage error"},
	[31] = {"BUSY", "busy, try again"},
	[32] = {"FIPS", "refused in FIPS mode"},
	[33] = {"STATE", "not allowed in the current state"},
	[34] = {"IO", "input/output error"},
	[35] = {"CONNECT", "TCP connection failed"},
	[36] = {"TLS_HANDSHAKE", "TLS handshake failed"},
	[37] = {"TLS_CERT_REQUIRED", "server requires a client certificate"},
	[38] = {"TLS_CERT_UNKNOWN_CA", "certificate is from another CA tree"},
	[39] = {"TLS_CERT_EXPIRED", "certificate has expired or is not yet valid"},
	[40] = {"TLS_CERT_REVOKED", "certificate has been revoked"},
	[41] = {"CLOSED", "connection closed by peer"},
	[42] = {"TIMEOUT", "timed out"},
	[43] = {"PROTOCOL", "protocol error"},
	[44] = {"KEY_USAGE", "key usage does not allow the operation"},
	[45] = {"UNSUPPORTED", "not supported"},
	[46] = {"LOCAL_FILE", "a local file or the terminal could not be used"},
	[47] = {"VERIFY_FAILED", "signature or MAC does not verify"},
	[48] = {"DECRYPT_FAILED", "decryption failed"},
};

_Static_assert(sizeof(errtab) / sizeof(errtab[0]) == (unsigned)-KH_ERR_LAST,
	       "error table out of sync with enum kh_err");

static const struct kh_errdesc *lookup(int err)
{
	if (err > 0 || err <= KH_ERR_LAST)
		return &errtab[1];
	return &errtab[-err];
}

const char *kh_strerror(int err)
{
	return lookup(err)->text;
}

const char *kh_errname(int err)
{
	return lookup(err)->name;
}

int kh_err_to_wire(int err)
{
	if (err > 0 || err <= KH_ERR_LAST)
		return -KH_ERR_INTERNAL;
	return -err;
}

int kh_err_from_wire(long code)
{
	if (code <= 0 || code >= -(long)KH_ERR_LAST)
		return KH_ERR_PROTOCOL;
	return (int)-code;
}
